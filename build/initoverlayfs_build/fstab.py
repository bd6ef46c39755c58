"""/etc/fstab read without touching the system, and the config written from its /boot entry
(what the C original's installer did, minus its ext4-only grep)."""

from __future__ import annotations

from dataclasses import dataclass

from storage_init.config import DEFAULT_SUBSYSTEMS, image_name, parse_fstype
from storage_init.devspec import SpecError, parse_spec
from storage_init.mounts import unescape

from .errors import BuildError

# fstab types that name no filesystem a bootfs could be mounted as
_NOT_A_FS = {"swap", "none", "auto", "bind", "rbind"}


@dataclass(frozen=True)
class FstabEntry:
    spec: str
    target: str
    fstype: str
    options: str


def parse_fstab(text: str) -> list[FstabEntry]:
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3:
            continue
        spec, target, fstype = (unescape(w) for w in words[:3])
        entries.append(FstabEntry(spec, target.rstrip("/") or "/", fstype,
                                  words[3] if len(words) > 3 else "defaults"))
    return entries


@dataclass(frozen=True)
class BootFs:
    spec: str
    fstype: str | None  # the one type, for `bootfstype`; None when fstab gives none or several
    image_dir: str  # where /boot's files sit inside that filesystem: "" or "/boot"
    fstypes: tuple[str, ...] = ()  # every type fstab lists (mount tries each), for modules


def boot_filesystem(entries: list[FstabEntry]) -> BootFs:
    """The filesystem that holds /boot: its own entry, or the root's when /boot is part of /."""
    by_target = {e.target: e for e in entries}
    entry = by_target.get("/boot")
    image_dir = ""
    if entry is None:
        entry, image_dir = by_target.get("/"), "/boot"
    if entry is None:
        raise BuildError("/etc/fstab has neither a /boot nor a / entry, so the filesystem "
                         "holding the image is unknown",
                         "write /etc/initoverlayfs.conf yourself (bootfs UUID=..., bootfstype)")
    try:
        parse_spec(entry.spec)
    except SpecError as exc:
        raise BuildError(f"the fstab entry for {entry.target} has a device spec storage-init "
                         f"cannot find at boot: {exc}",
                         "use UUID=, LABEL=, PARTUUID=, PARTLABEL= or a /dev path") from None
    # `ext4,ext3`: mount(8) tries each; storage-init reads the superblock instead
    types = tuple(t for t in entry.fstype.split(",") if t and t not in _NOT_A_FS)
    for name in types:
        try:
            parse_fstype(name)
        except ValueError:
            raise BuildError(f"the fstab entry for {entry.target} has the type {name!r}, "
                             "which names no filesystem",
                             "fix /etc/fstab, or write /etc/initoverlayfs.conf yourself "
                             "(bootfs, bootfstype)") from None
    return BootFs(entry.spec, types[0] if len(types) == 1 else None, image_dir, types)


def config_text(boot: BootFs, erofs_compression: str | None,
                subsystems: tuple[str, ...] = DEFAULT_SUBSYSTEMS) -> str:
    lines = [
        "# Written by initoverlayfs-install from the /boot entry of /etc/fstab.",
        "# Edit freely: initoverlayfs-install never overwrites a non-blank file.",
        f"bootfs {boot.spec}",
    ]
    if boot.fstype:
        lines.append(f"bootfstype {boot.fstype}")
    if boot.image_dir:
        lines.append("# /boot is a directory of the root filesystem, not a filesystem of its own")
        lines.append(f"fs {boot.image_dir}/{image_name('$kver')}")
    lines.append("fstype erofs")
    lines.append("udev_trigger " + " ".join(subsystems))
    if erofs_compression:
        lines.append(f"erofs_compression {erofs_compression}")
    return "\n".join(lines) + "\n"
