"""/etc/initoverlayfs.conf: the upstream `key value` format, parsed without touching the system.

The file is shared with the installer, so its keys are accepted here and ignored. A key this
program does not know is a warning naming the line; a known key with an unusable value is a
`ConfigError`, because guessing where /boot is would be worse than saying so.
"""

from __future__ import annotations

from .devspec import DeviceSpec, SpecError, parse_spec
from .netconf import IpConfig, parse_ip
from .record import field, record
from .verity import DIGEST, parse_hex

CONFIG_PATH = "/etc/initoverlayfs.conf"
DEFAULT_SUBSYSTEMS = ("block", "virtio", "pci", "nvme", "scsi")
INSTALLER_KEYS = frozenset(
    {"initoverlayfs_builder", "initrd_builder", "erofs_compression", "initoverlayfs_init"}
)
# Character sets, not regexes: storage-init does not import re (see storage_init/globs.py).
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_SUBSYSTEM_CHARS = _NAME_CHARS | {":"}


def _made_of(word: str, chars: frozenset[str]) -> bool:
    return bool(word) and all(c in chars for c in word)


class ConfigError(ValueError):
    """A config line that cannot be used; the message names the line and the key."""


@record(frozen=True)
class Config:
    bootfs: DeviceSpec | None = None
    bootfs_hint: str | None = None
    bootfstype: str | None = None
    fs: str | None = None
    fstype: str | None = None
    udev_trigger: tuple[str, ...] | None = None
    ip: IpConfig | None = None  # the link to bring up for a bootfs on the network
    # written by initoverlayfs-install for each build (storage_init/verity.py)
    verity_roothash: str | None = None
    verity_salt: str | None = None
    verity_data_blocks: int | None = None
    verity_hash_offset: int | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)


def parse_subsystems(value: str) -> tuple[str, ...]:
    """Subsystems to trigger: a plain list, or upstream's whole `udevadm trigger ...` command."""
    words = value.replace(",", " ").split()
    if words and words[0].endswith("udevadm"):
        words = [w.split("=", 1)[1] for w in words if w.startswith("--subsystem-match=")]
    bad = [w for w in words if not _made_of(w, _SUBSYSTEM_CHARS)]
    if bad or not words:
        raise ValueError(f"not a list of subsystem names: {value!r}")
    return tuple(dict.fromkeys(words))


def parse_fstype(value: str) -> str:
    if not _made_of(value, _NAME_CHARS):
        raise ValueError(f"not a filesystem type: {value!r}")
    return value


def parse_image_path(value: str) -> str:
    """The image path inside the bootfs; always absolute so it can be joined under /boot,
    and never out of it (no `..`)."""
    if "\0" in value or not value.strip("/"):
        raise ValueError(f"not a file path: {value!r}")
    if ".." in value.split("/"):
        raise ValueError(f"the image path must stay inside the bootfs, without '..': {value!r}")
    return "/" + value.lstrip("/")


def config_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, key, value) of each setting: the one reading of the format, shared by
    storage-init and the builder. The key ends at the first space or tab."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        end = next((i for i, c in enumerate(line) if c in " \t"), len(line))
        lines.append((number, line[:end], line[end:].strip()))
    return lines


def parse_config(text: str) -> Config:
    values: dict[str, object] = {}
    warnings: list[str] = []
    for number, key, value in config_lines(text):
        where = f"line {number} ({key})"
        if key in INSTALLER_KEYS:
            continue
        if key not in _PARSERS:
            warnings.append(f"line {number}: unknown key {key!r} ignored")
            continue
        if not value:
            raise ConfigError(f"{where}: no value")
        if key in values:
            warnings.append(f"line {number}: {key} given again; the last one wins")
        try:
            values[key] = _PARSERS[key](value)
        except (ValueError, SpecError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return Config(**values, warnings=tuple(warnings))  # type: ignore[arg-type]


# A verity size or offset past this is no image on any disk (2^52 bytes, 4 PiB); bounding
# them keeps every later product (the table's sector count, pread offsets) a plain int.
MAX_BYTES = 1 << 52


def _count(value: str) -> int:
    """A positive decimal count in ASCII digits (str.isdigit() alone takes any script's)."""
    if not (value.isascii() and value.isdigit()) or int(value) == 0:
        raise ValueError(f"not a positive number: {value!r}")
    if len(value) > 16 or int(value) > MAX_BYTES:
        raise ValueError(f"{value} is larger than any image ({MAX_BYTES} bytes)")
    return int(value)


def _hint(value: str) -> str:
    if not value.startswith("/dev/"):
        raise ValueError(f"bootfs_hint must be a /dev path, got {value!r}")
    return value


_PARSERS = {
    "bootfs": parse_spec,
    "bootfs_hint": _hint,
    "bootfstype": parse_fstype,
    "fs": parse_image_path,
    "fstype": parse_fstype,
    "udev_trigger": parse_subsystems,
    "ip": parse_ip,
    "verity_roothash": lambda v: parse_hex(v, "the root hash", 2 * DIGEST),
    "verity_salt": lambda v: parse_hex(v, "the salt"),
    "verity_data_blocks": _count,
    "verity_hash_offset": _count,
}
