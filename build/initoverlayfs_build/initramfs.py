"""Reading an existing initramfs of any kind, the way the kernel does: uncompressed cpio
segments (an early-microcode one, typically) followed by a compressed one, in gzip, zstd, xz,
lz4, bzip2, or none; then unpacking its entries into a directory for mkfs.erofs."""

from __future__ import annotations

import bz2
import lzma
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cpio
from .errors import BuildError
from .run import need, run_bounded
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


# An initramfs unpacks to tens of MB, a large one with firmware to a few hundred: past this
# the input is a decompression bomb (or not an initramfs), and it is refused before it fills
# the build host's memory.
MAX_UNPACKED = 2 << 30
_CHUNK = 1 << 20


def decompress(ui: Ui, kind: str, data: bytes, limit: int = MAX_UNPACKED) -> bytes:
    try:
        if kind == "gzip":
            return _bounded(lambda: zlib.decompressobj(31), data, limit, kind)
        if kind == "xz":
            return _bounded(lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), data, limit, kind)
        if kind == "lzma":
            return _bounded(lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE), data, limit, kind)
        if kind == "bzip2":
            return _bounded(bz2.BZ2Decompressor, data, limit, kind)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise BuildError(f"corrupt {kind} data in the initramfs: {exc}") from None
    if kind in ("zstd", "lz4"):
        tool = need(kind, f"to read a {kind}-compressed initramfs")
        out = run_bounded(ui, [tool, "-d", "-c", "-q"], data, limit)
        if out is None:
            raise _too_large(kind, limit)
        return out
    raise BuildError(f"{kind}-compressed initramfs images are not supported",
                     "recompress it with zstd, xz, gzip, lz4 or bzip2")


def _bounded(make: Callable[[], Any], data: bytes, limit: int, kind: str) -> bytes:
    """Every concatenated stream (gzip members, xz streams), ignoring the zero padding the
    kernel also ignores, never holding more than `limit` bytes of output."""
    out = bytearray()
    while data.strip(b"\0"):
        engine = make()
        is_zlib = not hasattr(engine, "needs_input")  # zlib keeps unread input in its tail
        pending = data
        while not engine.eof:
            chunk = engine.decompress(pending, min(limit + 1 - len(out), _CHUNK))
            pending = engine.unconsumed_tail if is_zlib else b""
            out += chunk
            if len(out) > limit:
                raise _too_large(kind, limit)
            if not chunk and not pending and (is_zlib or engine.needs_input):
                raise EOFError("truncated stream")
        data = engine.unused_data
    return bytes(out)


def _too_large(kind: str, limit: int) -> BuildError:
    return BuildError(f"the {kind} data of the initramfs unpacks to more than "
                      f"{limit / (1 << 20):g} MiB: refused as a decompression bomb",
                      "pass a real initramfs, or unpack it yourself and pass the tree "
                      "with --from-dir")


@dataclass(frozen=True)
class Unpacked:
    early: bytes  # the leading uncompressed cpio segments (early microcode), kept verbatim
    entries: list[cpio.Entry]


def read_segments(ui: Ui, path: Path, data: bytes) -> list[tuple[Segment, list[cpio.Entry]]]:
    """Each segment of the initramfs file `path` (its bytes, `data`) with its entries, read
    as the kernel reads them."""
    try:
        segments = split(data)
    except BuildError as exc:
        raise BuildError(f"{path}: {exc.message}", exc.hint) from None
    out = []
    for index, segment in enumerate(segments):
        raw = segment.data if segment.kind == "cpio" else decompress(ui, segment.kind,
                                                                     segment.data)
        try:
            out.append((segment, list(cpio.read_all(raw))))
        except cpio.CpioError as exc:
            raise BuildError(f"{path}: segment {index + 1} ({segment.kind}) is not a cpio "
                             f"archive: {exc}") from None
    return out


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
    for segment, found in read_segments(ui, path, data):
        # The kernel only looks for microcode in the first, uncompressed segments; keep them
        # as they are so the mini-initramfs still updates microcode early.
        if segment.kind == "cpio" and not entries and all(
                _early_name(e.name) for e in found):
            early += segment.data
            continue
        entries.extend(found)
    return Unpacked(early, entries)


def _early_name(name: str) -> bool:
    """A path an early-microcode segment may hold; it is copied as it is into the
    mini-initramfs, so nothing else (no `..`) gets through that way."""
    parts = name.split("/")
    return (parts[0] in ("kernel", "early_cpio") and ".." not in parts
            and (parts[0] == "kernel" or len(parts) == 1))


def extract(ui: Ui, entries: list[cpio.Entry], dest: Path) -> int:
    """Write entries under `dest` as the kernel unpacks them into its rootfs (later entries
    replace earlier ones of another type; parents are created). Returns the number of device
    nodes skipped because we are not root.

    The archive is input from anywhere, and the builder runs as root: every path is resolved
    inside `dest` as if `dest` were `/` (a symlink the archive made is followed within the
    tree, an absolute one from `dest`, `..` stops at `dest`), and the entry's own name is never
    followed, so nothing outside `dest` is ever created, written or chmod'ed."""
    skipped = 0
    dest.mkdir(parents=True, exist_ok=True)
    with _Tree(dest) as tree:
        for entry in entries:
            if ".." in entry.name.split("/"):
                raise BuildError(f"unsafe path {entry.name!r} in the source initramfs")
            try:
                skipped += tree.put(entry)
            except OSError as exc:
                raise BuildError(f"cannot unpack {entry.name!r} of the source initramfs into "
                                 f"{dest}: {exc.strerror or exc}") from None
    if skipped:
        ui.warning(f"{skipped} device node(s) of the source initramfs were left out: creating "
                   "them needs root (devtmpfs provides /dev at boot anyway)")
    return skipped


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's path walk: more is a loop
_NODES = (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK)


class _Tree:
    """A directory that entries are written into through file descriptors, never by path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root_fd = -1

    def __enter__(self) -> _Tree:
        self.root_fd = os.open(self.root, _DIR_FLAGS)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.root_fd)

    def put(self, entry: cpio.Entry) -> int:
        parts = [p for p in entry.name.split("/") if p not in ("", ".")]
        if not parts:
            return 0  # the root itself: it is `dest`
        *parents, name = parts
        parent = self._directory(parents, entry.name)
        try:
            return self._create(parent, name, entry)
        finally:
            os.close(parent)

    def _directory(self, parts: list[str], entry: str) -> int:
        """An fd on the directory `parts` names inside the tree, made where missing."""
        stack = [os.dup(self.root_fd)]
        pending, links = list(parts), 0
        try:
            while pending:
                part = pending.pop(0)
                if part in ("", "."):
                    continue
                if part == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                here = stack[-1]
                found = _lstat(part, here)
                if found is None:
                    os.mkdir(part, 0o755, dir_fd=here)
                elif stat.S_ISLNK(found.st_mode):
                    links += 1
                    if links > _MAX_LINKS:
                        raise BuildError(f"{entry!r} of the source initramfs goes through "
                                         "a loop of symlinks")
                    target = os.readlink(part, dir_fd=here)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    pending[:0] = target.split("/")
                    continue
                elif not stat.S_ISDIR(found.st_mode):
                    raise BuildError(f"{entry!r} of the source initramfs needs {part!r} to be a "
                                     "directory, and an earlier entry made it a file")
                stack.append(os.open(part, _DIR_FLAGS, dir_fd=here))
            result = stack.pop()
        finally:
            for fd in stack:
                os.close(fd)
        return result

    def _create(self, parent: int, name: str, entry: cpio.Entry) -> int:
        kind, mode = entry.kind, stat.S_IMODE(entry.mode)
        found = _lstat(name, parent)
        if found is not None and (stat.S_IFMT(found.st_mode) != kind or kind != stat.S_IFDIR):
            if stat.S_ISDIR(found.st_mode):
                try:
                    os.rmdir(name, dir_fd=parent)
                except OSError:
                    raise BuildError(f"{entry.name!r} of the source initramfs is a "
                                     f"{_KINDS.get(kind, 'special file')} where an earlier "
                                     "entry made a directory with content") from None
            else:
                os.unlink(name, dir_fd=parent)
            found = None
        if kind == stat.S_IFDIR:
            if found is None:
                os.mkdir(name, 0o700, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        elif kind == stat.S_IFREG:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=parent)
            with os.fdopen(fd, "wb") as f:
                f.write(entry.data)
                os.fchmod(f.fileno(), mode)
        elif kind == stat.S_IFLNK:
            os.symlink(entry.data.decode(errors="surrogateescape"), name, dir_fd=parent)
        elif kind in _NODES:
            try:
                os.mknod(name, entry.mode, os.makedev(*entry.rdev), dir_fd=parent)
            except PermissionError:
                return 1
        return 0


_KINDS = {stat.S_IFDIR: "directory", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
