"""A block device's I/O counters from sysfs: how much of the image a boot really read.

`/sys/class/block/NAME/stat` is the kernel's per-device counters (Documentation/block/stat.rst):
the third field is the sectors read, in 512-byte units whatever the device's block size;
`size` is the device's size in the same units. storage-init records both for the image's
device when init takes over, and the release unit again once the initrd phase is over."""

from __future__ import annotations

SECTOR = 512


def read_bytes(stat: str) -> int:
    """Bytes read from the device since it appeared, from its `stat` file's text."""
    fields = stat.split()
    if len(fields) < 3 or not (fields[2].isascii() and fields[2].isdigit()):
        raise ValueError(f"not a block device's stat line: {stat.strip()!r}")
    return int(fields[2]) * SECTOR


def size_bytes(size: str) -> int:
    """The device's size, from its `size` file's text (512-byte sectors)."""
    value = size.strip()
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"not a block device's size: {value!r}")
    return int(value) * SECTOR
