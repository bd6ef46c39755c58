"""Which shared libraries a program needs, read from its ELF headers (PT_INTERP, DT_NEEDED,
DT_RPATH/DT_RUNPATH) without running it, the way ld.so would resolve them. The mini-initramfs
has no ld.so.cache, so each library is placed at the path it was found at on the build host,
in a directory ld.so searches by default."""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29
FALLBACK_DIRS = ("/lib64", "/usr/lib64", "/lib", "/usr/lib")


class NotElf(ValueError):
    pass


@dataclass(frozen=True)
class ElfInfo:
    elfclass: int  # 1: 32-bit, 2: 64-bit
    machine: int
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def parse(data: bytes) -> ElfInfo:
    """The dynamic-linking facts of an ELF file (pure: bytes in, facts out)."""
    if not is_elf(data) or len(data) < 52:
        raise NotElf("not an ELF file")
    elfclass, order = data[4], data[5]
    if elfclass not in (1, 2) or order not in (1, 2):
        raise NotElf("unknown ELF class or byte order")
    end = "<" if order == 1 else ">"
    wide = elfclass == 2
    try:
        if wide:
            machine, = struct.unpack_from(end + "H", data, 18)
            phoff, = struct.unpack_from(end + "Q", data, 32)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
        else:
            machine, = struct.unpack_from(end + "H", data, 18)
            phoff, = struct.unpack_from(end + "I", data, 28)
            phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
        loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        interp = None
        dynamic = None
        for i in range(phnum):
            at = phoff + i * phentsize
            if wide:
                p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                    end + "IIQQQQ", data, at)
            else:
                p_type, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                    end + "IIIII", data, at)
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_INTERP:
                interp = data[p_offset:p_offset + p_filesz].split(b"\0", 1)[0].decode()
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        tags: list[tuple[int, int]] = []
        if dynamic is not None:
            size = 16 if wide else 8
            fmt = end + ("qQ" if wide else "iI")
            for at in range(dynamic[0], dynamic[0] + dynamic[1] - size + 1, size):
                tag, value = struct.unpack_from(fmt, data, at)
                if tag == DT_NULL:
                    break
                tags.append((tag, value))
    except struct.error:
        raise NotElf("truncated ELF headers") from None

    strtab = next((v for t, v in tags if t == DT_STRTAB), None)
    strtab_off = None
    if strtab is not None:
        strtab_off = next((off + strtab - vaddr for vaddr, off, size in loads
                           if vaddr <= strtab < vaddr + size), None)

    def string(offset: int) -> str:
        if strtab_off is None:
            raise NotElf("dynamic section without a string table")
        start = strtab_off + offset
        return data[start:data.index(b"\0", start)].decode()

    def paths(tag: int) -> tuple[str, ...]:
        return tuple(p for t, v in tags if t == tag for p in string(v).split(":") if p)

    return ElfInfo(elfclass, machine, interp,
                   tuple(string(v) for t, v in tags if t == DT_NEEDED),
                   paths(DT_RPATH), paths(DT_RUNPATH))


def search_dirs(root: Path = Path("/")) -> list[str]:
    """ld.so's directories on the build host: /etc/ld.so.conf (with its includes), then the
    built-in defaults. Returned as absolute paths on the host."""
    dirs: list[str] = []

    def read_conf(path: Path) -> None:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line.startswith("include "):
                pattern = line.split(None, 1)[1]
                if not pattern.startswith("/"):
                    pattern = str(path.parent / pattern)
                for name in sorted(glob.glob(str(root) + pattern)):
                    read_conf(Path(name))
            elif line.startswith("/"):
                dirs.append(line)

    read_conf(root / "etc/ld.so.conf")
    for d in FALLBACK_DIRS:
        if d not in dirs:
            dirs.append(d)
    return dirs


@dataclass(frozen=True)
class Library:
    path: str  # where ld.so finds it on the target (and where it goes in the initramfs)
    source: Path  # the real file to copy


def resolve_in(root: Path, path: str) -> Path:
    """The file `path` names in the tree `root` (a Debian tree of another CPU), its symlinks
    followed inside the tree: an absolute link there (Debian's /lib/ld-linux-aarch64.so.1)
    means the tree's file, not this machine's."""
    if root == Path("/"):
        return Path(path).resolve()
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current: list[str] = []
    for _ in range(256):  # bounded, as the kernel bounds a path's links (ELOOP)
        if not parts:
            return root.joinpath(*current)
        part = parts.pop(0)
        if part == "..":
            current = current[:-1]
            continue
        candidate = root.joinpath(*current, part)
        if not candidate.is_symlink():
            current.append(part)
            continue
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    raise FileNotFoundError(f"{path} in {root}: too many levels of symbolic links")


def closure(programs: Iterable[Path], dirs: list[str], *,
            provided: Iterable[Path] = (), root: Path = Path("/")) -> list[Library]:
    """Every library (and the interpreter) the programs need, transitively. Libraries found
    next to a program through $ORIGIN in `provided` folders are not repeated. `dirs` and the
    interpreter are paths on the target, looked up in the tree `root` (/: this machine)."""
    found: dict[str, Library] = {}
    provided_dirs = {p.resolve() for p in provided}
    # (the path ld.so knows a file by, the file here, its headers); a program of the frozen
    # folder is known by its path here, which its $ORIGIN expands to
    queue = [(str(p), Path(p), parse(Path(p).read_bytes())) for p in programs]
    seen_files: set[Path] = {file.resolve() for _, file, _ in queue}
    # Libraries that name ld.so in DT_NEEDED get the interpreter already loaded as such.
    interpreters = {Path(info.interp).name for _, _, info in queue if info.interp}
    while queue:
        path, file, info = queue.pop()
        if info.interp and info.interp not in found:
            found[info.interp] = Library(info.interp, resolve_in(root, info.interp))
        here = file.resolve().parent in provided_dirs  # the frozen folder: $ORIGIN is here
        origin = str(Path(path).parent)
        # A program's own $ORIGIN is read from /proc/self/exe, which PID 1 of an initramfs
        # does not have when ld.so loads it: what the program itself needs must be in ld.so's
        # default directories (Debian's arm64 storage-init needs libexpat.so.1, which the
        # freeze also put in its folder, and stopped at "cannot open shared object file").
        # A library's $ORIGIN is its own path, known to ld.so.
        own = [] if info.interp else [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
                                      for d in (info.runpath or info.rpath)]
        for name in info.needed:
            if name in interpreters:
                continue
            located = (_locate(name, own, info, Path("/") if here else root)
                       or _locate(name, dirs, info, root))
            if located is None:
                raise FileNotFoundError(f"{name} (needed by {path}) not found in "
                                        f"{', '.join([*own, *dirs])}"
                                        + ("" if root == Path("/") else f" under {root}"))
            location, real = located
            if real.parent in provided_dirs:
                pass  # shipped inside the frozen folder already
            elif location not in found:
                found[location] = Library(location, real)
            if real not in seen_files:
                seen_files.add(real)
                queue.append((location, real, parse(real.read_bytes())))
    return sorted(found.values(), key=lambda lib: lib.path)


def _locate(name: str, dirs: list[str], want: ElfInfo,
            root: Path) -> tuple[str, Path] | None:
    """(the path on the target, the real file here) of the first library `name` in `dirs`
    that is of the program's ELF class and machine."""
    if "/" in name:
        real = resolve_in(root, name)
        return (name, real) if real.exists() else None
    for d in dirs:
        real = resolve_in(root, f"{d}/{name}")
        if not real.is_file():
            continue
        with real.open("rb") as f:
            head = f.read(20)
        if is_elf(head) and (head[4], _machine(head)) == (want.elfclass, want.machine):
            return f"{d}/{name}", real
    return None


def _machine(head: bytes) -> int:
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
