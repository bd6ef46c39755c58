"""The mini-initramfs's content: storage-init's frozen folder and the libraries it needs, the
storage and filesystem modules with their index, the config, the mount points and a console
node, and /init pointing at storage-init. Everything else is in the EROFS image."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from storage_init.config import CONFIG_PATH
from storage_init.settings import NEW_ROOT

from . import cpio, elf
from .freeze import BINARY, MARKS

FROZEN_DIR = "usr/lib/initoverlayfs"
MOUNT_POINTS = ("dev", "proc", "sys", "run", "boot", "etc", NEW_ROOT.strip("/"))
CONSOLE = (5, 1)  # /dev/console, so the kernel can give PID 1 its stdin/stdout/stderr
# glibc's C.UTF-8 locale. The kernel passes LANG= from its command line to PID 1, and with
# LANG set but no locale files at all the frozen binary aborts before Python starts (measured:
# SIGABRT with LANG=C.UTF-8 or LANG=de_DE in a chroot of the mini-initramfs). 46 KB with zstd.
LOCALE_DIRS = ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8")


@dataclass
class Tree:
    """Paths -> cpio entries; parent directories appear on their own."""

    entries: dict[str, cpio.Entry] = field(default_factory=dict)

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.directory("/".join(parts[:i]))

    def directory(self, path: str, mode: int = 0o755) -> None:
        path = path.strip("/")
        if path and path not in self.entries:
            self._parents(path)
            self.entries[path] = cpio.Entry(path, stat.S_IFDIR | mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = cpio.Entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = cpio.Entry(path, stat.S_IFLNK | 0o777, target.encode())

    def node(self, path: str, kind: int, rdev: tuple[int, int], mode: int = 0o600) -> None:
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = cpio.Entry(path, kind | mode, rdev=rdev)


def frozen_programs(folder: Path) -> list[Path]:
    """The ELF files of the frozen folder (the binary and its extension modules)."""
    programs = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if elf.is_elf(f.read(4)):
                    programs.append(path)
    return programs


@dataclass(frozen=True)
class Locale:
    path: str  # on the target, where glibc looks for it
    source: Path  # here


def find_locale(root: Path = Path("/")) -> Locale | None:
    """glibc's C.UTF-8 in the tree `root` whose glibc storage-init runs on."""
    for directory in LOCALE_DIRS:
        source = elf.resolve_in(root, directory)
        if (source / "LC_CTYPE").is_file():
            return Locale(directory, source)
    return None


def build_tree(frozen: Path, libraries: list[elf.Library], modules: Mapping[str, bytes],
               kver: str, config: bytes, locale: Locale | None) -> Tree:
    tree = Tree()
    for point in MOUNT_POINTS:
        tree.directory(point)
    tree.node("dev/console", stat.S_IFCHR, CONSOLE)
    # a library of the folder that also goes to ld.so's directories (the program needs it
    # at load time, see elf.closure) is loaded from there, by its soname, for every user
    elsewhere = {Path(library.path).name for library in libraries}
    for path in sorted(frozen.rglob("*")):
        relative = path.relative_to(frozen).as_posix()
        if relative in MARKS or relative in elsewhere:  # bookkeeping, or shipped elsewhere
            continue
        if path.is_dir():
            tree.directory(f"{FROZEN_DIR}/{relative}")
        elif path.is_file():
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tree.file(f"{FROZEN_DIR}/{relative}", path.read_bytes(), mode)
    if locale is not None:
        for path in sorted(locale.source.rglob("*")):
            if path.is_file():
                tree.file(f"{locale.path}/{path.relative_to(locale.source).as_posix()}",
                          path.read_bytes())
    for library in libraries:
        tree.file(library.path, library.source.read_bytes(), 0o755)
    for relative, data in modules.items():
        tree.file(f"lib/modules/{kver}/{relative}", data)
    tree.file(CONFIG_PATH.lstrip("/"), config)
    tree.symlink("init", f"{FROZEN_DIR}/{BINARY}")
    return tree
