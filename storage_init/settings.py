"""What this boot will do: the config file overridden by the kernel command line.

`resolve` is pure. A bad value of an optional argument (a timeout that is not a number, an
unknown emergency action) is a warning and the default applies, because refusing to boot over
it would be worse; a bad or missing bootfs is an error, because nothing can be found without it.
"""

from __future__ import annotations

from .cmdline import Param, flag, last_value
from .config import BY_NAME, OVERRIDDEN, Config, ConfigError, image_in_bootfs, verity_of
from .devspec import DeviceSpec, SpecError
from .emergency import ACTIONS
from .netconf import STATIC_FORM, IpConfig, parse_ip
from .record import record
from .verity import Verity

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
    """The config's keys, each overridden by its rd.initoverlayfs.KEY= (parsed by the key's
    own parser, storage_init.config.KEYS), and the command line's own settings."""
    warnings = list(config.warnings)
    override = _Overrides(params)
    bootfs = override.spec("bootfs") or config.bootfs
    if bootfs is None:
        raise ConfigError(
            "no bootfs configured: set `bootfs UUID=...` in /etc/initoverlayfs.conf "
            "or rd.initoverlayfs.bootfs= on the kernel command line"
        )
    timeout = _timeout(override.raw("timeout"), warnings)
    # The failure policy itself is emergency.Policy, read straight from the command line so it
    # works even when this resolution fails; here a bad value only gets its warning.
    emergency = last_value(params, "rd.emergency")
    if emergency is not None and emergency not in ACTIONS:
        warnings.append(f"rd.emergency={emergency!r} is not one of {', '.join(ACTIONS)}"
                        "; using reboot")
    network = _network(config, params, bootfs, warnings)
    init = override.raw("init") or last_value(params, "init") or None
    image = image_in_bootfs(override.text("fs") or config.fs, kver)
    tree = _verity(config, params, image, warnings)
    return Settings(
        bootfs=bootfs,
        bootfs_hint=config.bootfs_hint,
        bootfstype=override.text("bootfstype") or config.bootfstype,
        image=image,
        fstype=override.text("fstype") or config.fstype or "erofs",
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


class _Overrides:
    """rd.initoverlayfs.KEY= of the command line, parsed as the config's KEY is."""

    def __init__(self, params: tuple[Param, ...]) -> None:
        self.params = params

    def raw(self, name: str) -> str | None:
        return last_value(self.params, "rd.initoverlayfs." + name)

    def parsed(self, name: str) -> object:
        value = self.raw(name)
        parse = BY_NAME[name].parse if name in OVERRIDDEN else None
        if value is None or parse is None:
            return None
        try:
            return parse(value)
        except (ValueError, SpecError) as exc:
            raise ConfigError(f"rd.initoverlayfs.{name}=: {exc}") from None

    def text(self, name: str) -> str | None:
        value = self.parsed(name)
        return value if isinstance(value, str) else None

    def spec(self, name: str) -> DeviceSpec | None:
        value = self.parsed(name)
        return value if isinstance(value, DeviceSpec) else None


def _timeout(value: str | None, warnings: list[str]) -> float:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        timeout = float(value)
        if 0 < timeout < 1e6:
            return timeout
    except ValueError:
        pass
    warnings.append(f"rd.initoverlayfs.timeout={value!r} is not a positive number of "
                    f"seconds; using {DEFAULT_TIMEOUT:g}")
    return DEFAULT_TIMEOUT


def _network(config: Config, params: tuple[Param, ...], bootfs: DeviceSpec,
             warnings: list[str]) -> IpConfig | None:
    """The link to bring up: only for a bootfs on the network, which cannot do without."""
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
    return network


def _verity(config: Config, params: tuple[Param, ...], image: str,
            warnings: list[str]) -> Verity | None:
    tree = verity_of(config)
    wanted = flag(params, VERITY)
    if wanted and tree is None:
        raise ConfigError("rd.initoverlayfs.verity=1 asks for a verified image, and the config "
                          "has no verity_roothash (the images were built with --no-verity)")
    if wanted is False and tree is not None:
        warnings.append(f"rd.initoverlayfs.verity=0: /boot{image} is mounted WITHOUT "
                        "verification, on purpose")
        tree = None
    return tree
