"""/proc/self/mountinfo, parsed; used to tell mount points from plain directories."""

from __future__ import annotations

from .record import record

_OCTAL_DIGITS = frozenset("01234567")


@record(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str
    target: str
    fstype: str
    source: str
    mount_options: str  # per mount point, e.g. "ro,relatime"
    options: str  # of the superblock, e.g. "rw,lowerdir=..." for an overlay


def unescape(field: str) -> str:
    """\\040 and the other octal escapes of mountinfo and fstab fields (by hand: storage-init
    does not import re)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1:i + 4]
        if field[i] == "\\" and len(digits) == 3 and set(digits) <= _OCTAL_DIGITS:
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        try:
            mount_id, parent_id = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        entries.append(MountEntry(mount_id, parent_id, fields[2], unescape(fields[3]),
                                  unescape(fields[4]), tail[0], unescape(tail[1]),
                                  fields[5], " ".join(tail[2:])))
    return entries


def mount_points(text: str) -> set[str]:
    return {entry.target for entry in parse_mountinfo(text)}
