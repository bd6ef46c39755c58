"""Which shared libraries a program needs, read from its ELF headers (PT_INTERP, DT_NEEDED,
DT_RPATH/DT_RUNPATH) without running it, the way ld.so would resolve them. The mini-initramfs
has no ld.so.cache, so each library is placed at the path it was found at on the build host,
in a directory ld.so searches by default."""

from __future__ import annotations

import glob
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
    path: str  # where ld.so finds it on the host (and where it goes in the initramfs)
    source: Path  # the real file to copy


def closure(programs: Iterable[Path], dirs: list[str], *,
            provided: Iterable[Path] = ()) -> list[Library]:
    """Every library (and the interpreter) the programs need, transitively. Libraries found
    next to a program through $ORIGIN in `provided` folders are not repeated."""
    found: dict[str, Library] = {}
    provided_dirs = {p.resolve() for p in provided}
    queue = [(Path(p), parse(Path(p).read_bytes())) for p in programs]
    seen_files: set[Path] = {p.resolve() for p, _ in queue}
    # Libraries that name ld.so in DT_NEEDED get the interpreter already loaded as such.
    interpreters = {Path(info.interp).name for _, info in queue if info.interp}
    while queue:
        path, info = queue.pop()
        if info.interp and info.interp not in found:
            found[info.interp] = Library(info.interp, Path(info.interp).resolve())
        origin = str(path.parent)
        own = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
               for d in (info.runpath or info.rpath)]
        for name in info.needed:
            if name in interpreters:
                continue
            location = _locate(name, [*own, *dirs], info)
            if location is None:
                raise FileNotFoundError(f"{name} (needed by {path}) not found in "
                                        f"{', '.join([*own, *dirs])}")
            real = location.resolve()
            if real.parent in provided_dirs or location.parent.resolve() in provided_dirs:
                pass  # shipped inside the frozen folder already
            elif str(location) not in found:
                found[str(location)] = Library(str(location), real)
            if real not in seen_files:
                seen_files.add(real)
                queue.append((location, parse(real.read_bytes())))
    return sorted(found.values(), key=lambda lib: lib.path)


def _locate(name: str, dirs: list[str], want: ElfInfo) -> Path | None:
    if "/" in name:
        return Path(name) if Path(name).exists() else None
    for d in dirs:
        candidate = Path(d) / name
        if not candidate.is_file():
            continue
        with candidate.open("rb") as f:
            head = f.read(20)
        if is_elf(head) and (head[4], _machine(head)) == (want.elfclass, want.machine):
            return candidate
    return None


def _machine(head: bytes) -> int:
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
