"""What this boot will do: the config file overridden by the kernel command line.

`resolve` is pure. A bad value of an optional argument (a timeout that is not a number, an
unknown emergency action) is a warning and the default applies, because refusing to boot over
it would be worse; a bad or missing bootfs is an error, because nothing can be found without it.
"""

from __future__ import annotations

from . import TYPE_CHECKING
from .cmdline import Param, flag, last_value
from .config import DEFAULT_FS, Config, ConfigError, parse_fstype, parse_image_path, verity_of
from .devspec import DeviceSpec, SpecError, parse_spec
from .emergency import ACTIONS
from .netconf import STATIC_FORM, IpConfig, parse_ip
from .record import record
from .verity import Verity

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_TIMEOUT = 30.0
NEW_ROOT = "/initoverlayfs"
SCRATCH = "/run/initoverlayfs"  # tmpfs for upper/work/lower; moves into the new root with /run
IGNORED_SUBSYSTEM = "module"
VERITY = "rd.initoverlayfs.verity"


@record(frozen=True)
class Settings:
    bootfs: DeviceSpec
    bootfs_hint: str | None
    bootfstype: str | None  # None: use what the superblock says
    image: str  # path of the image inside the bootfs
    fstype: str
    subsystems: tuple[str, ...]
    timeout: float
    init: str | None
    kver: str
    verity: Verity | None = None  # None: the image is mounted unverified
    network: IpConfig | None = None  # set only for a bootfs on the network (nbd:)
    warnings: tuple[str, ...] = ()

    @property
    def image_path(self) -> str:
        return "/boot" + self.image


def resolve(config: Config, params: tuple[Param, ...], kver: str,
            default_subsystems: tuple[str, ...]) -> Settings:
    warnings = list(config.warnings)

    def arg(name: str) -> str | None:
        return last_value(params, "rd.initoverlayfs." + name)

    bootfs = config.bootfs
    if (value := arg("bootfs")) is not None:
        try:
            bootfs = parse_spec(value)
        except SpecError as exc:
            raise ConfigError(f"rd.initoverlayfs.bootfs=: {exc}") from None
    if bootfs is None:
        raise ConfigError(
            "no bootfs configured: set `bootfs UUID=...` in /etc/initoverlayfs.conf "
            "or rd.initoverlayfs.bootfs= on the kernel command line"
        )

    def checked(name: str, parse: Callable[[str], str], current: str | None) -> str | None:
        value = arg(name)
        if value is None:
            return current
        try:
            return parse(value)
        except ValueError as exc:
            raise ConfigError(f"rd.initoverlayfs.{name}=: {exc}") from None

    timeout = DEFAULT_TIMEOUT
    if (value := arg("timeout")) is not None:
        try:
            timeout = float(value)
            if not 0 < timeout < 1e6:
                raise ValueError
        except ValueError:
            timeout = DEFAULT_TIMEOUT
            warnings.append(f"rd.initoverlayfs.timeout={value!r} is not a positive number of "
                            f"seconds; using {DEFAULT_TIMEOUT:g}")

    # The failure policy itself is emergency.Policy, read straight from the command line so it
    # works even when this resolution fails; here a bad value only gets its warning.
    emergency = last_value(params, "rd.emergency")
    if emergency is not None and emergency not in ACTIONS:
        warnings.append(f"rd.emergency={emergency!r} is not one of {', '.join(ACTIONS)}"
                        "; using reboot")

    network = config.ip
    if (value := last_value(params, "ip")) is not None:
        try:
            network = parse_ip(value)
        except ValueError as exc:
            if bootfs.kind == "NBD":
                raise ConfigError(str(exc)) from None
            warnings.append(f"{exc}; ignored, the bootfs {bootfs} is not on the network")
            network = None
    if bootfs.kind == "NBD" and network is None:
        raise ConfigError(f"the bootfs {bootfs} is on the network: say which link to bring up "
                          f"with {STATIC_FORM} (on the kernel command line or as `ip` in "
                          "/etc/initoverlayfs.conf)")
    if bootfs.kind != "NBD" and network is not None:
        # a local bootfs never waits for a link: the network is the real root's business
        warnings.append(f"ip= ({network}) is ignored: the bootfs {bootfs} is local")
        network = None

    init = arg("init") or last_value(params, "init") or None
    image = (checked("fs", parse_image_path, config.fs)
             or DEFAULT_FS).replace("$kver", kver)
    tree = verity_of(config)
    wanted = flag(params, VERITY)
    if wanted and tree is None:
        raise ConfigError("rd.initoverlayfs.verity=1 asks for a verified image, and the config "
                          "has no verity_roothash (the images were built with --no-verity)")
    if wanted is False and tree is not None:
        warnings.append(f"rd.initoverlayfs.verity=0: /boot{image} is mounted WITHOUT "
                        "verification, on purpose")
        tree = None
    return Settings(
        bootfs=bootfs,
        bootfs_hint=config.bootfs_hint,
        bootfstype=checked("bootfstype", parse_fstype, config.bootfstype),
        # `$kver` lets one config serve every kernel when the image path is not the default
        # (e.g. /boot is a directory of the root filesystem: `fs /boot/initoverlayfs-$kver.img`)
        image=image,
        fstype=checked("fstype", parse_fstype, config.fstype) or "erofs",
        # "module" (in every config of the C original) is dropped: a module's uevent carries
        # no MODALIAS, so replaying one for each of the kernel's ~100 modules only costs time
        subsystems=tuple(s for s in config.udev_trigger or default_subsystems
                         if s != IGNORED_SUBSYSTEM) or default_subsystems,
        timeout=timeout,
        init=init,
        kver=kver,
        verity=tree,
        network=network,
        warnings=tuple(warnings),
    )
