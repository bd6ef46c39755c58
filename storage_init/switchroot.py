"""Move the API filesystems into the new root and make it `/`, after systemd's switch-root.c.

`/` is made MS_REC|MS_PRIVATE first because MS_MOVE fails under shared propagation. Mounts
are moved from a table; a source that is not a mount point, or a target that already is one,
is skipped with a log line. The old initramfs is emptied only when it really is the initramfs
(ramfs or tmpfs, and another device than the new root), without crossing mount points, by
PID 1 itself before the exec, as busybox's switch_root does: the mini-initramfs is a few dozen
files, and a forked child (util-linux's way, for initramfs images with thousands) cost more
than the deletion: the fork, copy-on-write faults in both processes, and a second process
competing with init for the CPU. Under QEMU TCG (median of 5 interleaved boots) storage-init's
last step to init running went 226 -> 176 ms, for 5 ms more in the switch-root step.
"""

from __future__ import annotations

import os

from . import TYPE_CHECKING
from .kernel import MNT_DETACH, MS_MOVE, MS_PRIVATE, MS_REC, RAMFS_MAGIC, TMPFS_MAGIC
from .mounts import mount_points

RDINIT_MOVES = ("/boot", "/proc", "/dev", "/sys", "/run")
SYSTEMD_MOVES = ("/boot",)  # systemd's own switch-root moves /dev /proc /sys /run

if TYPE_CHECKING:
    from typing import Protocol

    from .kernelapi import KernelApi

    class _Log(Protocol):
        def info(self, message: str) -> None: ...


def move_mounts(kernel: KernelApi, log: _Log, new_root: str, moves: tuple[str, ...]) -> None:
    kernel.mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    mounted = mount_points(kernel.read_file("/proc/self/mountinfo").decode(errors="replace"))
    for source in moves:
        target = new_root + source
        if source not in mounted:
            log.info(f"{source} is not a mount point; not moving it")
            continue
        if target in mounted:
            log.info(f"{target} is already mounted; detaching {source} instead of moving it")
            kernel.umount(source, MNT_DETACH)
            continue
        if not kernel.exists(target):
            log.info(f"{target} is missing in the image; creating it in the overlay")
            kernel.mkdir(target)
        kernel.mount(source, target, None, MS_MOVE, None)


def switch_root(kernel: KernelApi, log: _Log, new_root: str) -> None:
    """Make new_root `/`, then free the old root's contents (files still open or mapped, such
    as storage-init's own binary, are freed by the kernel when the exec lets go of them)."""
    kernel.chdir(new_root)
    old_dev = kernel.device_of("/")
    magic = kernel.statfs_type("/")
    old_fd = None
    if magic not in (RAMFS_MAGIC, TMPFS_MAGIC):
        log.info(f"old root is not ramfs/tmpfs (f_type {magic:#x}); leaving its contents alone")
    elif old_dev == kernel.device_of(new_root):
        log.info("old root and new root are the same device; leaving the old root alone")
    else:
        old_fd = kernel.open("/", os.O_RDONLY | os.O_DIRECTORY)
    kernel.mount(new_root, "/", None, MS_MOVE, None)
    kernel.chroot(".")
    kernel.chdir("/")
    if old_fd is None:
        return
    try:
        removed = kernel.remove_tree_contents(old_fd, old_dev)
    finally:
        kernel.close(old_fd)
    log.info(f"freed the old initramfs ({removed} entries)")
