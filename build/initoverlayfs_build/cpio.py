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


_HEX = b"0123456789abcdefABCDEF"


def _fields(data: bytes, offset: int) -> list[int]:
    """The 13 header fields, each exactly 8 hex digits: int() alone would also take a sign,
    spaces or underscores, which no cpio writer makes and the kernel does not read."""
    header = data[offset + 6:offset + HEADER_SIZE]
    if len(header) != HEADER_SIZE - 6:
        raise CpioError(f"truncated cpio header at offset {offset}")
    if header.strip(_HEX):
        raise CpioError(f"corrupt cpio header at offset {offset}: a field is not 8 hex digits")
    return [int(header[8 * i:8 * i + 8], 16) for i in range(13)]


def read(data: bytes, offset: int = 0) -> tuple[list[Entry], int]:
    """The entries of one archive starting at `offset`, and the offset just after its trailer.

    Hard links (same inode, device and mode, nlink > 1) come back as separate entries, each
    with the data, because that is what the kernel's unpacker makes of them: one inode that
    every link's body is written into (in practice only the last link carries it)."""
    entries: list[Entry] = []
    links: dict[tuple[int, int, int, int], list[int]] = {}
    while True:
        magic = data[offset:offset + 6]
        if magic not in (MAGIC, MAGIC_CRC):
            raise CpioError(f"no cpio header at offset {offset} (found {magic!r})")
        fields = _fields(data, offset)
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, _ = fields
        name_start = offset + HEADER_SIZE
        raw_name = data[name_start:name_start + namesize]
        if namesize == 0 or len(raw_name) != namesize or not raw_name.endswith(b"\0"):
            raise CpioError(f"truncated cpio name at offset {offset}")
        if b"\0" in raw_name[:-1]:
            raise CpioError(f"cpio name with a NUL byte at offset {offset}: {raw_name!r}")
        name = raw_name[:-1].decode("utf-8", errors="surrogateescape")
        data_start = name_start + namesize + (-(HEADER_SIZE + namesize) % 4)
        body = data[data_start:data_start + size]
        if len(body) != size:
            raise CpioError(f"truncated cpio data for {name!r}")
        offset = data_start + size + (-size % 4)
        if name == TRAILER:
            _share_link_data(entries, links.values())
            return entries, offset
        name = name.lstrip("/")
        while name.startswith("./"):
            name = name[2:]
        if name in ("", "."):
            continue
        if stat.S_ISLNK(mode) and (not body or b"\0" in body):
            raise CpioError(f"symlink {name!r} has an empty target or one with a NUL byte")
        entries.append(Entry(name, mode, body, (rmaj, rmin), mtime, uid, gid, ino, nlink))
        if nlink > 1 and stat.S_ISREG(mode):
            links.setdefault((ino, dmaj, dmin, mode), []).append(len(entries) - 1)


def _share_link_data(entries: list[Entry], links: Iterable[list[int]]) -> None:
    """Every link of an inode gets the body its links carried (the last non-empty one):
    once per group at the archive's end, so 8,000 links cost 8,000 steps, not 8,000^2."""
    for group in links:
        body = next((entries[i].data for i in reversed(group) if entries[i].data), b"")
        for index in group:
            if entries[index].data is not body:
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
