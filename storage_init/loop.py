"""Attach the image file to a free loop device, read-only, with autoclear.

LOOP_CONFIGURE (Linux 5.8) sets the backing file and flags in one ioctl. Between asking
/dev/loop-control for a free device and configuring it another process can take the same
device (EBUSY): then ask again. Kernels without LOOP_CONFIGURE answer EINVAL or ENOTTY, and
get LOOP_SET_FD + LOOP_SET_STATUS64 instead.
"""

from __future__ import annotations

import errno
import os
import struct

from . import TYPE_CHECKING
from .kernel import name_ioctls

# linux/loop.h
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
name_ioctls({"LOOP_SET_FD": LOOP_SET_FD, "LOOP_CLR_FD": LOOP_CLR_FD,
             "LOOP_SET_STATUS64": LOOP_SET_STATUS64, "LOOP_CONFIGURE": LOOP_CONFIGURE,
             "LOOP_CTL_GET_FREE": LOOP_CTL_GET_FREE})

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
ATTEMPTS = 16

# struct loop_info64: 5 x u64, 4 x u32, file name, crypt name, key, 2 x u64 init.
_INFO64 = struct.Struct("=QQQQQIIII64s64s32s2Q")
# struct loop_config: fd, block_size, loop_info64, 8 x u64 reserved.
_CONFIG = struct.Struct(f"=II{_INFO64.size}s64x")


def loop_info64(backing: str, flags: int) -> bytes:
    name = backing.encode()[: LO_NAME_SIZE - 1]
    return _INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)


def loop_config(backing_fd: int, backing: str, flags: int) -> bytes:
    return _CONFIG.pack(backing_fd, 0, loop_info64(backing, flags))


if TYPE_CHECKING:
    from typing import Protocol

    from .kernelapi import KernelApi

    class _Log(Protocol):
        def info(self, message: str) -> None: ...


def attach(kernel: KernelApi, log: _Log, image: str) -> tuple[str, int]:
    """Returns the loop device path and an open fd on it. The image must exist.

    With autoclear the kernel detaches the device when its last user goes away, so the fd
    must stay open until the filesystem is mounted on the device; then the caller closes it.
    """
    flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
    backing = kernel.open(image, os.O_RDONLY)
    try:
        control = kernel.open("/dev/loop-control", os.O_RDWR)
        try:
            for _ in range(ATTEMPTS):
                number = kernel.ioctl(control, LOOP_CTL_GET_FREE, 0)
                assert isinstance(number, int)
                device = f"/dev/loop{number}"
                fd = _configure(kernel, log, device, backing, image, flags)
                if fd is not None:
                    return device, fd
            raise OSError(errno.EBUSY, f"every free loop device was taken ({ATTEMPTS} tries)",
                          "/dev/loop-control")
        finally:
            kernel.close(control)
    finally:
        kernel.close(backing)  # the loop device holds its own reference


def _configure(kernel: KernelApi, log: _Log, device: str, backing: int, image: str,
               flags: int) -> int | None:
    """The open, configured device; None when another process took it first."""
    fd = kernel.open(device, os.O_RDONLY)
    try:
        if _set_backing(kernel, log, fd, device, backing, image, flags):
            return fd
    except BaseException:
        kernel.close(fd)
        raise
    kernel.close(fd)
    return None


def _set_backing(kernel: KernelApi, log: _Log, fd: int, device: str, backing: int, image: str,
                 flags: int) -> bool:
    try:
        kernel.ioctl(fd, LOOP_CONFIGURE, loop_config(backing, image, flags))
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            log.info(f"{device} was taken by another process; asking for another")
            return False
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    log.info(f"LOOP_CONFIGURE not supported on {device}; using LOOP_SET_FD")
    try:
        kernel.ioctl(fd, LOOP_SET_FD, backing)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    try:
        kernel.ioctl(fd, LOOP_SET_STATUS64, loop_info64(image, flags))
    except OSError:
        kernel.ioctl(fd, LOOP_CLR_FD, 0)
        raise
    return True
