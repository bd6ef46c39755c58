"""Device-mapper through its ioctls on /dev/mapper/control (linux/dm-ioctl.h), no dmsetup.

Every command sends a `struct dm_ioctl` header naming the device; DM_TABLE_LOAD appends one
`struct dm_target_spec` and its NUL-terminated parameter string. A loaded table is inactive
until DM_DEV_SUSPEND without DM_SUSPEND_FLAG ("resume"), which also swaps a newly loaded
table in place of a live one (suspending the device for the swap), as `dmsetup reload` and
`dmsetup resume` do.
"""

from __future__ import annotations

import os
import struct

from . import TYPE_CHECKING
from .kernel import name_ioctls

# _IOWR(0xfd, nr, struct dm_ioctl of 312 bytes)
_DM_IOWR = (3 << 30) | (312 << 16) | (0xFD << 8)
DM_DEV_CREATE = _DM_IOWR | 3
DM_DEV_REMOVE = _DM_IOWR | 4
DM_DEV_SUSPEND = _DM_IOWR | 6
DM_TABLE_LOAD = _DM_IOWR | 9
name_ioctls({"DM_DEV_CREATE": DM_DEV_CREATE, "DM_DEV_REMOVE": DM_DEV_REMOVE,
             "DM_DEV_SUSPEND": DM_DEV_SUSPEND, "DM_TABLE_LOAD": DM_TABLE_LOAD})

CONTROL = "/dev/mapper/control"
VERSION = (4, 0, 0)  # the kernel accepts any minor up to its own under major 4
DM_READONLY_FLAG = 1 << 0
DM_DEFERRED_REMOVE = 1 << 17
# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags,
# event_nr, padding, dev, name[128], uuid[129], data[7]: 312 bytes.
HEADER = struct.Struct("=3IIIIiIIIQ128s129s7x")
# struct dm_target_spec: sector_start, length, status, next, target_type[16]: 40 bytes.
TARGET = struct.Struct("=QQiI16s")
NAME_LEN = 128


def header(name: str, *, size: int = HEADER.size, targets: int = 0, flags: int = 0) -> bytes:
    encoded = name.encode()
    if not 0 < len(encoded) < NAME_LEN or "/" in name:
        raise ValueError(f"not a device-mapper name: {name!r}")
    return HEADER.pack(*VERSION, size, HEADER.size, targets, 0, flags, 0, 0, 0, encoded, b"")


def table_load(name: str, sectors: int, target: str, params: str) -> bytes:
    """DM_TABLE_LOAD's argument: the header, one target spanning `sectors`, its parameters."""
    text = params.encode() + b"\0"
    text += bytes(-(TARGET.size + len(text)) % 8)  # the next spec would start 8-aligned
    spec = TARGET.pack(0, sectors, 0, TARGET.size + len(text), target.encode())
    size = HEADER.size + len(spec) + len(text)
    return header(name, size=size, targets=1, flags=DM_READONLY_FLAG) + spec + text


def device_number(reply: bytes) -> tuple[int, int]:
    """(major, minor) from the header the kernel wrote back (the kernel's huge encoding)."""
    dev = HEADER.unpack_from(reply)[10]
    return os.major(dev), os.minor(dev)


if TYPE_CHECKING:
    from typing import Protocol

    class _Kernel(Protocol):
        def ioctl(self, fd: int, request: int, arg: int | bytes) -> int | bytes: ...


def create(kernel: _Kernel, control: int, name: str) -> tuple[int, int]:
    reply = kernel.ioctl(control, DM_DEV_CREATE, header(name))
    assert isinstance(reply, bytes)
    return device_number(reply)


def load(kernel: _Kernel, control: int, name: str, sectors: int, target: str,
         params: str) -> None:
    kernel.ioctl(control, DM_TABLE_LOAD, table_load(name, sectors, target, params))


def resume(kernel: _Kernel, control: int, name: str) -> None:
    """Activate the loaded table (swapping out a live one)."""
    kernel.ioctl(control, DM_DEV_SUSPEND, header(name))


def remove(kernel: _Kernel, control: int, name: str, *, deferred: bool = False) -> None:
    """Remove the device; deferred: now if nothing holds it open, else at its last close."""
    kernel.ioctl(control, DM_DEV_REMOVE,
                 header(name, flags=DM_DEFERRED_REMOVE if deferred else 0))
