"""The target kernel's build configuration (`/boot/config-KVER`), for the choices that depend on
what that kernel was built with: compressed EROFS, the initramfs formats it unpacks."""

from __future__ import annotations

from pathlib import Path


def enabled(kernel_config: Path, option: str) -> bool | None:
    """Whether `option` (CONFIG_...) is built in (`=y`); None when the config file is not there
    to say."""
    try:
        lines = kernel_config.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return f"{option}=y" in lines
