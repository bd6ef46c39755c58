"""dracut, for the two things the builder asks of it: the initoverlayfs content (the initrd
dracut would make for this kernel) and, on request, the mini-initramfs itself, made with
our dracut module "initoverlayfs" (packaging/dracut) the way the C original made it."""

from __future__ import annotations

import os
from pathlib import Path

from storage_init.config import CONFIG_PATH

from .errors import BuildError
from .run import need, run
from .ui import Ui

MODULE = "initoverlayfs"
MODULES_D = Path("/usr/lib/dracut/modules.d")
# systemd mode: the initrd runs systemd, and storage-init as initoverlayfs.service, which
# triggers and loads the storage drivers itself: no udevd (see initoverlayfs.service).
SYSTEMD_MODULES = ("systemd",)
# Our compression names -> dracut's. dracut's lz4 also writes the legacy frame.
COMPRESS = {"zstd": "zstd", "lz4": "lz4", "gzip": "gzip", "xz": "xz"}


def need_module() -> Path:
    """The installed initoverlayfs dracut module (dracut only looks in its own directory)."""
    found = next(iter(sorted(MODULES_D.glob(f"[0-9][0-9]{MODULE}"))), None)
    if found is None or not (found / "module-setup.sh").is_file():
        raise BuildError(f"the dracut module {MODULE} is not installed in {MODULES_D}",
                         "install the initoverlayfs package, or copy packaging/dracut/"
                         f"90{MODULE} there")
    return found


def _base(dracut: str, sysroot: Path, kver: str) -> list[str]:
    argv = [dracut, "--force", "--kver", kver]
    if sysroot != Path("/"):
        argv += ["--sysroot", os.fspath(sysroot)]
    return argv


def content(ui: Ui, sysroot: Path, kver: str, hostonly: bool, target: Path) -> Path:
    """The initrd dracut makes for this kernel: the initoverlayfs image's content."""
    dracut = need("dracut", "to make the initoverlayfs content (or pass --from-dir or "
                         "--from-initramfs)")
    argv = [*_base(dracut, sysroot, kver), "--hostonly" if hostonly else "--no-hostonly",
            "--omit", MODULE, os.fspath(target)]
    with ui.step(f"running dracut for {kver}"):
        run(ui, argv)
    return target


def mini_initramfs(ui: Ui, *, sysroot: Path, kver: str, systemd: bool, frozen: Path,
                   drivers: list[str], config: Path, compress: str, target: Path) -> Path:
    """The mini-initramfs made by dracut with only our module (plus systemd in systemd
    mode). The drivers are the builder's own selection, host-only or generic, so
    both ways of making the mini-initramfs carry the same modules."""
    dracut = need("dracut", "to make the mini-initramfs with dracut")
    modules = [*(SYSTEMD_MODULES if systemd else ()), MODULE]
    argv = [*_base(dracut, sysroot, kver), "--no-hostonly", "--no-hostonly-cmdline",
            "--modules", " ".join(modules), "--add-drivers", " ".join(drivers),
            "--include", os.fspath(config), CONFIG_PATH]
    argv += ["--compress", COMPRESS[compress]] if compress in COMPRESS else ["--no-compress"]
    argv.append(os.fspath(target))
    what = "systemd" if systemd else "rdinit"
    with ui.step(f"running dracut for the mini-initramfs ({what} mode)"):
        # INITOVERLAYFS_CONFIG_INCLUDED: the module must not install the system's
        # /etc/initoverlayfs.conf over this build's (which names its image and verity keys)
        run(ui, argv, env={"INITOVERLAYFS_FROZEN": os.fspath(frozen),
                           "INITOVERLAYFS_CONFIG_INCLUDED": "1"})
    return target
