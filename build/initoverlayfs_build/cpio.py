"""The newc ("070701") cpio format the kernel unpacks into its rootfs: a writer that makes the
same bytes for the same tree, and a reader for any initramfs segment, ours or another tool's.

Reproducibility: entries are sorted by path (so parents come first), inode numbers count up
from 1, owners are root, and every mtime is one given timestamp (SOURCE_DATE_EPOCH)."""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAGIC = b"070701"
MAGIC_CRC = b"070702"  # same layout with a checksum field; the kernel accepts both
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110


class CpioError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    name: str  # relative, no leading "/"
    mode: int  # file type bits and permissions
    data: bytes = b""  # file content, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    ino: int = 0
    nlink: int = 1

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: Entry, ino: int, name: bytes, mtime: int) -> bytes:
    nlink = 2 if entry.kind == stat.S_IFDIR else 1
    fields = (ino, entry.mode, 0, 0, nlink, mtime, len(entry.data), 0, 0,
              entry.rdev[0], entry.rdev[1], len(name) + 1, 0)
    return MAGIC + b"".join(b"%08X" % value for value in fields)


def write(entries: Iterable[Entry], mtime: int) -> bytes:
    """One archive: the entries in path order, then the trailer, padded to 512 bytes."""
    out = bytearray()
    ordered = sorted(entries, key=lambda e: e.name)
    names = [e.name for e in ordered]
    if len(set(names)) != len(names):
        raise CpioError("duplicate paths in archive")
    for ino, entry in enumerate(ordered, start=1):
        if not entry.name or entry.name.startswith("/") or ".." in entry.name.split("/"):
            raise CpioError(f"bad archive path {entry.name!r}")
        name = entry.name.encode()
        out += _header(entry, ino, name, mtime) + name + b"\0"
        out += _pad(HEADER_SIZE + len(name) + 1)
        out += entry.data + _pad(len(entry.data))
    trailer = TRAILER.encode()
    out += MAGIC + b"".join(b"%08X" % v for v in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
                                                  len(trailer) + 1, 0))
    out += trailer + b"\0" + _pad(HEADER_SIZE + len(trailer) + 1)
    out += b"\0" * (-len(out) % 512)
    return bytes(out)


def read(data: bytes, offset: int = 0) -> tuple[list[Entry], int]:
    """The entries of one archive starting at `offset`, and the offset just after its trailer.

    Hard links (same inode, nlink > 1, data only on the last one) come back as separate
    entries, each with the data, because that is what the kernel's unpacker makes of them."""
    entries: list[Entry] = []
    links: dict[tuple[int, int, int], list[int]] = {}
    while True:
        magic = data[offset:offset + 6]
        if magic not in (MAGIC, MAGIC_CRC):
            raise CpioError(f"no cpio header at offset {offset} (found {magic!r})")
        try:
            fields = [int(data[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise CpioError(f"corrupt cpio header at offset {offset}") from None
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, _ = fields
        name_start = offset + HEADER_SIZE
        raw_name = data[name_start:name_start + namesize]
        if len(raw_name) != namesize or not raw_name.endswith(b"\0"):
            raise CpioError(f"truncated cpio name at offset {offset}")
        name = raw_name[:-1].decode("utf-8", errors="surrogateescape")
        data_start = name_start + namesize + (-(HEADER_SIZE + namesize) % 4)
        body = data[data_start:data_start + size]
        if len(body) != size:
            raise CpioError(f"truncated cpio data for {name!r}")
        offset = data_start + size + (-size % 4)
        if name == TRAILER:
            return entries, offset
        name = name.lstrip("/")
        while name.startswith("./"):
            name = name[2:]
        if name in ("", "."):
            continue
        entry = Entry(name, mode, body, (rmaj, rmin), mtime, uid, gid, ino, nlink)
        entries.append(entry)
        if nlink > 1 and stat.S_IFMT(mode) == stat.S_IFREG:
            group = links.setdefault((dmaj, dmin, ino), [])
            group.append(len(entries) - 1)
            if size:  # the last link carries the data for all of them
                for index in group:
                    entries[index] = _with_data(entries[index], body)


def _with_data(entry: Entry, body: bytes) -> Entry:
    return Entry(entry.name, entry.mode, body, entry.rdev, entry.mtime, entry.uid, entry.gid,
                 entry.ino, entry.nlink)


def read_all(data: bytes) -> Iterator[Entry]:
    """Every entry of every archive in an uncompressed stream (archives may be concatenated,
    with zero padding between them, as the kernel allows)."""
    offset = 0
    while True:
        while offset < len(data) and data[offset] == 0:
            offset += 1
        if offset >= len(data):
            return
        entries, offset = read(data, offset)
        yield from entries
