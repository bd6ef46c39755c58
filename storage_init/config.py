"""/etc/initoverlayfs.conf: the upstream `key value` format, parsed without touching the system,
and the rest of what initoverlayfs-install and storage-init must agree on (the image's name,
the verity keys): one definition for both halves.

The file is shared with the installer, so its keys are accepted here and ignored. A key this
program does not know is a warning naming the line; a known key with an unusable value is a
`ConfigError`, because guessing where /boot is would be worse than saying so.
"""

from __future__ import annotations

from . import TYPE_CHECKING
from .devspec import DeviceSpec, SpecError, parse_spec
from .netconf import IpConfig, parse_ip
from .record import field, record
from .verity import BLOCK, DIGEST, Verity, parse_hex

if TYPE_CHECKING:
    from collections.abc import Callable

# The contract between initoverlayfs-install and storage-init: where the config is, what the
# image's file is called, and (KEYS, below) every key of the config: its parser, its default
# and its meaning, from which storage-init parses, the builder writes and checks, and README's
# table is made (tests/unit/test_config_table.py keeps README equal to it).
CONFIG_PATH = "/etc/initoverlayfs.conf"
IMAGE_PREFIX = "initoverlayfs-"
DEFAULT_SUBSYSTEMS = ("block", "virtio", "pci", "nvme", "scsi")
# arm64 boards attach their SD, USB and virtio controllers from the device tree, as platform
# devices the kernel registered before storage-init ran (the Raspberry Pi 4's sdhci-iproc,
# QEMU virt's virtio-mmio): their modules load only when those are triggered too
BOARD_SUBSYSTEMS = (*DEFAULT_SUBSYSTEMS, "platform")


def default_subsystems(machine: str) -> tuple[str, ...]:
    """The subsystems to trigger on this CPU (uname -m) when the config names none."""
    return BOARD_SUBSYSTEMS if machine == "aarch64" else DEFAULT_SUBSYSTEMS


def image_name(kver: str, image_id: str | None = None) -> str:
    """`initoverlayfs-KVER-ID.img`, one build's image (ID from its root hash or content);
    without an ID `initoverlayfs-KVER.img`, the C original's name and storage-init's default."""
    return f"{IMAGE_PREFIX}{kver}-{image_id}.img" if image_id else f"{IMAGE_PREFIX}{kver}.img"


DEFAULT_FS = "/" + image_name("$kver")


def image_in_bootfs(fs: str | None, kver: str) -> str:
    """The image's path inside the bootfs for kernel `kver`: `fs` (or the default), with
    `$kver` standing for the kernel's release, which lets one config serve every kernel when
    the path is not the default (/boot a directory of the root filesystem:
    `fs /boot/initoverlayfs-$kver.img`)."""
    return (fs or DEFAULT_FS).replace("$kver", kver)

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
        known = BY_NAME.get(key)
        if known is None:
            warnings.append(f"line {number}: unknown key {key!r} ignored")
            continue
        if known.parse is None:  # the installer's
            continue
        if not value:
            raise ConfigError(f"{where}: no value")
        if key in values:
            warnings.append(f"line {number}: {key} given again; the last one wins")
        try:
            values[key] = known.parse(value)
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


@record(frozen=True)
class Key:
    """One key of the config."""

    name: str
    parse: Callable[[str], object] | None  # None: the installer's, accepted and ignored here
    meaning: str
    default: str  # in words
    per_build: bool = False  # written by initoverlayfs-install into the mini-initramfs's copy
    override: bool = False  # rd.initoverlayfs.NAME= on the kernel command line replaces it


_VERITY_WORDS = ("the image's dm-verity root hash (64 hex digits), salt (hex), size in 4 KiB "
                 "blocks and the byte where its hash tree's superblock starts; written into "
                 "the mini-initramfs's copy by `initoverlayfs-install` for each build, never "
                 "into the sysroot's file")
_INSTALLER = "read by `initoverlayfs-install` (the C original's installer keys are accepted)"
KEYS = (
    Key("bootfs", parse_spec,
        "the device holding the image: `UUID=`, `LABEL=`, `PARTUUID=`, `PARTLABEL=`, a `/dev` "
        "path, or an NBD export `nbd:HOST[:PORT]/EXPORT`",
        "required (here or on the command line)", override=True),
    Key("bootfs_hint", _hint, "a `/dev` path tried first", "none"),
    Key("bootfstype", parse_fstype,
        "filesystem of the bootfs; the builder ships only its module (without it, and without "
        "an fstab entry for /boot, those of ext4, xfs, btrfs and vfat)",
        "what its superblock says", override=True),
    Key("ip", parse_ip,
        "for an `nbd:` bootfs, the one link to bring up, in `ip=`'s static form (below)", "none"),
    Key("fs", parse_image_path,
        "image path inside the bootfs (no `..`); `$kver` stands for the running kernel's "
        "release. The builder writes each build's own file name into the mini-initramfs's "
        "copy, keeping this key's directory", f"`{DEFAULT_FS}`", per_build=True,
        override=True),
    Key("fstype", parse_fstype, "filesystem of the image", "`erofs`", override=True),
    Key("udev_trigger", parse_subsystems,
        "subsystems to trigger: a list, or the original's `udevadm trigger ... "
        "--subsystem-match=X`; `module` is accepted and skipped (a module's uevent has no "
        "modalias)", f"`{' '.join(DEFAULT_SUBSYSTEMS)}`; on arm64 also `platform`"),
    Key("verity_roothash", lambda v: parse_hex(v, "the root hash", 2 * DIGEST), _VERITY_WORDS,
        "none: the image is mounted unverified", per_build=True),
    Key("verity_salt", lambda v: parse_hex(v, "the salt"), _VERITY_WORDS,
        "none: the image is mounted unverified", per_build=True),
    Key("verity_data_blocks", _count, _VERITY_WORDS,
        "none: the image is mounted unverified", per_build=True),
    Key("verity_hash_offset", _count, _VERITY_WORDS,
        "none: the image is mounted unverified", per_build=True),
    Key("erofs_compression", None, "the image's compression, as mkfs.erofs -z takes it; "
        + _INSTALLER, "the best the tools and the kernel allow"),
    Key("initoverlayfs_builder", None, _INSTALLER, "-"),
    Key("initrd_builder", None, _INSTALLER, "-"),
    Key("initoverlayfs_init", None, _INSTALLER, "-"),
)
BY_NAME = {key.name: key for key in KEYS}
OVERRIDDEN = tuple(key.name for key in KEYS if key.override)  # by rd.initoverlayfs.NAME=
PER_BUILD = frozenset(key.name for key in KEYS if key.per_build)


def verity_lines(tree: Verity) -> str:
    """The verity keys of one build, as the builder writes them (`verity_of` reads them)."""
    return (f"verity_roothash {tree.root_hash}\n"
            f"verity_salt {tree.salt}\n"
            f"verity_data_blocks {tree.data_blocks}\n"
            f"verity_hash_offset {tree.hash_offset}\n")


def verity_of(config: Config) -> Verity | None:
    if config.verity_roothash is None:
        return None
    if config.verity_data_blocks is None:
        raise ConfigError("verity_roothash without verity_data_blocks: rerun "
                          "initoverlayfs-install, which writes both")
    offset = config.verity_hash_offset
    if offset is None:
        offset = config.verity_data_blocks * BLOCK
    if offset % BLOCK or offset < config.verity_data_blocks * BLOCK:
        raise ConfigError(f"verity_hash_offset {offset} must be a multiple of {BLOCK} past the "
                          f"{config.verity_data_blocks} data blocks")
    return Verity(config.verity_roothash, config.verity_salt or "", config.verity_data_blocks,
                  offset)
