"""Reading an existing initramfs of any kind, the way the kernel does: uncompressed cpio
segments (an early-microcode one, typically) followed by a compressed one, in gzip, zstd, xz,
lz4, bzip2, or none; then unpacking its entries into a directory for mkfs.erofs."""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import cpio
from .errors import BuildError
from .run import need, run
from .ui import Ui

LZ4_LEGACY = b"\x02\x21\x4c\x18"  # the legacy frame `lz4 -l` writes, which the kernel reads
# Leading bytes of each compressed format the kernel can unpack (lib/decompress.c).
MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (LZ4_LEGACY, "lz4"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x89LZO", "lzo"),
)


@dataclass(frozen=True)
class Segment:
    kind: str  # "cpio" or a compression name
    data: bytes  # the raw bytes of this segment, as found in the file


def detect(data: bytes) -> str | None:
    if data[:6] in (cpio.MAGIC, cpio.MAGIC_CRC):
        return "cpio"
    return next((kind for magic, kind in MAGICS if data.startswith(magic)), None)


def lz4_legacy_end(data: bytes, offset: int) -> int:
    """Where the legacy lz4 stream at `offset` ends, read as the kernel reads it
    (lib/decompress_unlz4.c): the magic, then chunks (a little-endian 32-bit size, that many
    bytes; the magic again starts another stream) until the data ends or a zero size, the end
    mark after which the kernel goes on with what follows (build's compress.finish)."""
    position = offset + len(LZ4_LEGACY)
    while len(data) - position >= 4:
        size = int.from_bytes(data[position:position + 4], "little")
        if size == 0:
            return position
        position += 4 if size == int.from_bytes(LZ4_LEGACY, "little") else 4 + size
    return min(position, len(data))


def split(data: bytes) -> list[Segment]:
    """Uncompressed cpio archives in order; a compressed stream runs to the end of the file,
    except a legacy lz4 stream with an end mark, after which the kernel reads on."""
    segments = []
    offset = 0
    while offset < len(data):
        while offset < len(data) and data[offset] == 0:
            offset += 1
        if offset >= len(data):
            break
        kind = detect(data[offset:offset + 8])
        if kind is None:
            raise BuildError(f"unknown data at offset {offset}: {data[offset:offset + 8]!r} is "
                             "neither cpio nor a compression format the kernel reads")
        if kind == "cpio":
            try:
                _, end = cpio.read(data, offset)
            except cpio.CpioError as exc:
                raise BuildError(f"corrupt cpio archive: {exc}") from None
            while end < len(data) and data[end] == 0:  # its padding belongs to it
                end += 1
            segments.append(Segment("cpio", data[offset:end]))
            offset = end
        elif data.startswith(LZ4_LEGACY, offset):
            end = lz4_legacy_end(data, offset)
            segments.append(Segment(kind, data[offset:end]))
            offset = end
        else:
            segments.append(Segment(kind, data[offset:]))
            break
    return segments


def unpacked_archive(ui: Ui, data: bytes) -> bytes:
    """What the kernel unpacks from an initramfs file: every segment's cpio, decompressed."""
    return b"".join(segment.data if segment.kind == "cpio" else
                    decompress(ui, segment.kind, segment.data) for segment in split(data))


def decompress(ui: Ui, kind: str, data: bytes) -> bytes:
    try:
        if kind == "gzip":
            return gzip.decompress(data)
        if kind == "xz":
            return _lzma_all(data, lzma.FORMAT_XZ)
        if kind == "lzma":
            return _lzma_all(data, lzma.FORMAT_ALONE)
        if kind == "bzip2":
            return bz2.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise BuildError(f"corrupt {kind} data in the initramfs: {exc}") from None
    if kind in ("zstd", "lz4"):
        tool = need(kind, f"to read a {kind}-compressed initramfs")
        return run(ui, [tool, "-d", "-c", "-q"], stdin=data)
    raise BuildError(f"{kind}-compressed initramfs images are not supported",
                     "recompress it with zstd, xz, gzip, lz4 or bzip2")


def _lzma_all(data: bytes, fmt: int) -> bytes:
    """All concatenated streams, ignoring the zero padding the kernel also ignores."""
    out = []
    while data.strip(b"\0"):
        engine = lzma.LZMADecompressor(fmt)
        out.append(engine.decompress(data))
        if not engine.eof:
            raise EOFError("truncated stream")
        data = engine.unused_data
    return b"".join(out)


@dataclass(frozen=True)
class Unpacked:
    early: bytes  # the leading uncompressed cpio segments (early microcode), kept verbatim
    entries: list[cpio.Entry]


def load(ui: Ui, path: Path) -> Unpacked:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read the source initramfs {path}: {exc.strerror}",
                         "pass an existing, readable file to --from-initramfs") from None
    if not data:
        raise BuildError(f"the source initramfs {path} is empty")
    early = b""
    entries: list[cpio.Entry] = []
    segments = split(data)
    for index, segment in enumerate(segments):
        raw = segment.data if segment.kind == "cpio" else decompress(ui, segment.kind,
                                                                     segment.data)
        try:
            found = list(cpio.read_all(raw))
        except cpio.CpioError as exc:
            raise BuildError(f"{path}: segment {index + 1} ({segment.kind}) is not a cpio "
                             f"archive: {exc}") from None
        # The kernel only looks for microcode in the first, uncompressed segments; keep them
        # as they are so the mini-initramfs still updates microcode early.
        if segment.kind == "cpio" and not entries and all(
                e.name == "kernel" or e.name.startswith("kernel/") or e.name == "early_cpio"
                for e in found):
            early += segment.data
            continue
        entries.extend(found)
    return Unpacked(early, entries)


def extract(ui: Ui, entries: list[cpio.Entry], dest: Path) -> int:
    """Write entries under `dest` as the kernel would (later entries replace earlier ones).
    Returns the number of device nodes skipped because we are not root."""
    skipped = 0
    for entry in entries:
        target = dest / entry.name
        if ".." in Path(entry.name).parts:
            raise BuildError(f"unsafe path {entry.name!r} in the source initramfs")
        _ensure_parent(dest, target)
        kind = entry.kind
        if kind != stat.S_IFDIR and (target.is_symlink() or target.exists()):
            if target.is_dir() and not target.is_symlink():
                continue
            target.unlink()
        if kind == stat.S_IFDIR:
            target.mkdir(exist_ok=True)
            os.chmod(target, stat.S_IMODE(entry.mode))
        elif kind == stat.S_IFREG:
            target.write_bytes(entry.data)
            os.chmod(target, stat.S_IMODE(entry.mode))
        elif kind == stat.S_IFLNK:
            os.symlink(entry.data.decode(errors="surrogateescape"), target)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            try:
                os.mknod(target, entry.mode, os.makedev(*entry.rdev))
            except PermissionError:
                skipped += 1
            except OSError as exc:
                if exc.errno != errno.EPERM:
                    raise
                skipped += 1
    if skipped:
        ui.warning(f"{skipped} device node(s) of the source initramfs were left out: creating "
                   "them needs root (devtmpfs provides /dev at boot anyway)")
    return skipped


def _ensure_parent(root: Path, target: Path) -> None:
    """Parents must be real directories inside `root`, never symlinks leading out of it."""
    parent = target.parent
    resolved = parent.resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise BuildError(f"the source initramfs writes through a symlink out of the tree: "
                         f"{target.relative_to(root)}")
    parent.mkdir(parents=True, exist_ok=True)
