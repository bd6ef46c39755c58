"""The CPU architectures a mini-initramfs is built for: each one's names (Debian's, the
kernel's, ELF's), and which one a kernel, or a frozen storage-init, is for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import kconfig
from .errors import BuildError


@dataclass(frozen=True)
class Arch:
    name: str  # Debian's (dpkg --print-architecture), what --arch and the caches say
    machine: str  # the kernel's (uname -m)
    elf_machine: int  # the ELF header's e_machine
    kconfig: str  # the kernel config symbol only this architecture's kernels set
    triplet: str  # the multiarch library directory's name

    def __str__(self) -> str:
        return self.name


AMD64 = Arch("amd64", "x86_64", 62, "CONFIG_X86_64", "x86_64-linux-gnu")
ARM64 = Arch("arm64", "aarch64", 183, "CONFIG_ARM64", "aarch64-linux-gnu")
ARCHES = (AMD64, ARM64)


def named(name: str) -> Arch:
    """An architecture by Debian's or the kernel's name (arm64 or aarch64)."""
    for arch in ARCHES:
        if name in (arch.name, arch.machine):
            return arch
    known = ", ".join(f"{a.name} ({a.machine})" for a in ARCHES)
    raise BuildError(f"unknown architecture {name!r}", f"one of: {known}")


def host() -> Arch:
    return named(os.uname().machine)


def of_elf(head: bytes) -> Arch | None:
    """The architecture of an ELF file from its first 20 bytes; None if not ELF or other."""
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return next((a for a in ARCHES if a.elf_machine == machine), None)


def of_kernel_config(config: Path) -> Arch | None:
    """The architecture a kernel was configured for, from its config (/boot/config-KVER);
    None when the file is missing or names none."""
    return next((arch for arch in ARCHES if kconfig.enabled(config, arch.kconfig)), None)
