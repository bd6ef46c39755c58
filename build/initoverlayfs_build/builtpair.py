"""A built pair read back: what a mini-initramfs holds (files, modules and why, compression,
its config) and what the image it names holds (EROFS facts from dump.erofs, verity), and
whether that image is the one built with it. Reads only; `initoverlayfs-inspect` prints it."""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from storage_init.boot import RDINIT, SYSTEMD
from storage_init.config import (
    CONFIG_PATH,
    IMAGE_PREFIX,
    ConfigError,
    image_in_bootfs,
    parse_config,
    verity_of,
)
from storage_init.modules import parse_index
from storage_init.verity import BLOCK, SIGNATURE, SUPERBLOCK, Verity, check_superblock

from . import cpio, initramfs, kmods, pair, verity
from .errors import BuildError
from .run import need, run
from .ui import Ui

SERVICE = "usr/lib/systemd/system/initoverlayfs.service"


@dataclass(frozen=True)
class Module:
    name: str
    path: str  # in the mini-initramfs
    size: int
    why: str


@dataclass(frozen=True)
class Mini:
    path: Path
    size: int
    segments: tuple[tuple[str, int], ...]  # (kind, bytes in the file), in order
    entries: tuple[cpio.Entry, ...]
    config: str  # the embedded /etc/initoverlayfs.conf, "" without one
    mode: str  # RDINIT (storage-init is /init), SYSTEMD (its service) or "unknown"
    kver: str | None
    modules: tuple[Module, ...] = field(default=())

    @property
    def unpacked_bytes(self) -> int:
        return sum(len(e.data) for e in self.entries if e.kind == stat.S_IFREG)

    def image_path(self) -> str | None:
        """The image's path inside the bootfs, from the config's `fs` (None without one)."""
        try:
            return parse_config(self.config).fs
        except ConfigError:
            return None

    def verity(self) -> Verity | None:
        """The verity keys the config holds; ConfigError when they do not make sense."""
        return verity_of(parse_config(self.config))


def read_mini(ui: Ui, path: Path) -> Mini:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None
    try:
        segments = initramfs.read_segments(ui, path, data)
    except BuildError as exc:
        raise BuildError(f"{path} is not an initramfs: {exc.message}") from None
    entries = [entry for _, found in segments for entry in found]
    by_name = {e.name: e for e in entries}
    config_entry = by_name.get(CONFIG_PATH.lstrip("/"))
    config = config_entry.data.decode(errors="replace") if config_entry else ""
    init = by_name.get("init")
    if init is not None and init.kind == stat.S_IFLNK and init.data.endswith(b"storage-init"):
        mode = RDINIT
    elif SERVICE in by_name:
        mode = SYSTEMD
    else:
        mode = "unknown"
    kver, modules = _modules(by_name)
    return Mini(path, len(data), tuple((s.kind, len(s.data)) for s, _ in segments),
                tuple(entries), config, mode, kver, modules)


_MODDIR = re.compile(r"^(?:usr/)?lib/modules/([^/]+)/modules\.dep$")


def _modules(by_name: dict[str, cpio.Entry]) -> tuple[str | None, tuple[Module, ...]]:
    dep = next(((m.group(1), name) for name in by_name if (m := _MODDIR.match(name))), None)
    if dep is None:
        return None, ()
    kver, dep_name = dep
    base = dep_name.rsplit("/", 1)[0]

    def text(name: str) -> str:
        entry = by_name.get(f"{base}/{name}")
        return entry.data.decode(errors="replace") if entry else ""

    index = parse_index(text("modules.dep"), text("modules.alias"), text("modules.builtin"),
                        text("modules.softdep"))
    shipped = [name for name, rel in index.paths.items() if f"{base}/{rel}" in by_name]
    order = index.load_order(shipped)
    why = kmods.reasons(index, order)
    return kver, tuple(Module(name, f"{base}/{index.paths[name]}",
                              len(by_name[f"{base}/{index.paths[name]}"].data), why[name])
                       for name in order)


# --- the image --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    path: Path
    size: int
    erofs: dict[str, str]  # dump.erofs's superblock and statistics lines, by their label

    def number(self, label: str) -> int | None:
        found = re.match(r"\s*(\d+)", self.erofs.get(label, ""))
        return int(found.group(1)) if found else None

    @property
    def content_bytes(self) -> int | None:
        """The files' size before compression: what a classic initramfs would unpack."""
        return self.number("Filesystem total original file size")


def default_image(mini: Mini) -> Path:
    """The image the mini-initramfs names, next to it (both live in the bootfs's /boot)."""
    named = image_in_bootfs(mini.image_path(), mini.kver or "KVER")  # as storage-init does
    return mini.path.parent / named.rsplit("/", 1)[-1]


def read_image(ui: Ui, path: Path) -> Image:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BuildError(f"cannot read the image {path}: {exc.strerror}",
                         "pass the image as the second argument") from None
    dump = need("dump.erofs", "to read the EROFS image (erofs-utils)")
    text = run(ui, [dump, "-s", "-S", str(path)], merge_stderr=True).decode(errors="replace")
    facts = {}
    for line in text.splitlines():
        label, colon, value = line.partition(":")
        if colon and label.startswith("Filesystem "):
            facts[label.strip()] = value.strip()
    return Image(path, size, facts)


def image_files(ui: Ui, path: Path) -> list[str]:
    """Every path in the image, directories first, by dump.erofs --ls of each directory."""
    dump = need("dump.erofs", "to list the EROFS image (erofs-utils)")
    found: list[str] = []
    pending = ["/"]
    while pending:
        directory = pending.pop(0)
        text = run(ui, [dump, "--ls", f"--path={directory}", str(path)]).decode(
            errors="surrogateescape")
        rows = text.split("FILENAME", 1)[-1].splitlines()
        for row in rows:
            parts = row.split(None, 2)  # NID TYPE NAME
            if len(parts) != 3 or parts[2] in (".", ".."):
                continue
            child = directory.rstrip("/") + "/" + parts[2]
            found.append(child + ("/" if parts[1] == "2" else ""))
            if parts[1] == "2":  # EROFS_FT_DIR
                pending.append(child)
    return found


# --- does the image belong to the mini-initramfs ----------------------------------------------

def check_image(mini: Mini, image: Path) -> str | None:
    """What makes `image` not the one built with `mini`, or None: with verity keys, the
    superblock and sizes (storage-init's own check), then the root hash over every data block
    and the stored tree block by block; without them, the content hash the image's name
    carries (pair.image_id)."""
    try:
        expected = mini.verity()
    except ConfigError as exc:
        return f"the mini-initramfs's verity keys are unusable: {exc}"
    try:
        if expected is None:
            return _check_unverified(mini, image)
        size = image.stat().st_size
        with image.open("rb") as f:
            f.seek(expected.hash_offset)
            block = f.read(SUPERBLOCK.size)
    except OSError as exc:
        return f"cannot read {image}: {exc.strerror}"
    problem = check_superblock(expected, block, size)
    if problem:
        own = _own_tree(image)
        if own is not None and own != (expected.data_blocks, expected.salt):
            return (f"{image}: it is not the image this mini-initramfs was built with: it "
                    f"carries another build's hash tree ({own[0]} blocks, salt "
                    f"{own[1][:16]}...; the config expects {expected.data_blocks} blocks, "
                    f"salt {expected.salt[:16]}...)")
        return f"{image}: {problem}"
    salt = bytes.fromhex(expected.salt)
    root, levels = verity.hash_tree(image, salt, expected.data_blocks)
    if root.hex() != expected.root_hash:
        return (f"{image}: its data does not give the mini-initramfs's root hash "
                f"({root.hex()[:16]}... instead of {expected.root_hash[:16]}...): a byte of "
                "it changed since the build, and dm-verity would refuse the boot")
    with image.open("rb") as f:
        f.seek(expected.hash_offset + BLOCK)
        for number, level in enumerate(levels):
            stored = f.read(len(level))
            if stored != level:
                return (f"{image}: its stored hash tree differs from its data's at level "
                        f"{len(levels) - 1 - number} (counted from the data): dm-verity "
                        "would refuse the blocks under it")
    return None


EROFS_MAGIC = 0xE0F5E1E2
EROFS_SUPERBLOCK = 1024  # its offset; magic at +0, blkszbits at +12, blocks at +36


def _own_tree(image: Path) -> tuple[int, str] | None:
    """(data blocks, salt) of the verity tree the image itself carries right after its EROFS
    data (the builder appends it there), or None: tells another build's image from a cut
    one. (Two builds of a kernel in the same second share a salt; their sizes differ.)"""
    try:
        with image.open("rb") as f:
            head = f.read(EROFS_SUPERBLOCK + 40)[EROFS_SUPERBLOCK:]
            if len(head) < 40 or int.from_bytes(head[:4], "little") != EROFS_MAGIC:
                return None
            data = int.from_bytes(head[36:40], "little") << head[12]
            f.seek(-(-data // BLOCK) * BLOCK)
            block = f.read(SUPERBLOCK.size)
    except OSError:
        return None
    if len(block) < SUPERBLOCK.size or not block.startswith(SIGNATURE):
        return None
    fields = SUPERBLOCK.unpack_from(block)
    return fields[7], bytes(fields[9][:fields[8]]).hex()


def _check_unverified(mini: Mini, image: Path) -> str | None:
    named = (mini.image_path() or "").rsplit("/", 1)[-1]
    head = f"{IMAGE_PREFIX}{mini.kver}-"
    wanted = named[len(head):-len(".img")] if named.startswith(head) else ""
    if len(wanted) != pair.ID_LENGTH:
        return (f"the mini-initramfs has no verity keys and names {named or 'no image'}, "
                "which carries no content hash: nothing to check the image against")
    found = pair.image_id(image, None)
    if found != wanted:
        return (f"{image}: its content hash {found} is not the {wanted} its name promises: "
                "it changed since the build (the pair is unverified, so storage-init would "
                "boot it anyway)")
    return None
