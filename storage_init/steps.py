"""The boot sequence as data: named steps, each with what it does and what to check on failure.

A step reads and updates the `Boot` of this run; it raises `BootError` (or an `OSError` that the
runner turns into one with the step's hint). The list is printed by --dry-run, timed on every
boot, and filtered by mode: --systemd runs the same steps minus the early mounts, the switch
root and the exec, which systemd does itself.
"""

from __future__ import annotations

import errno
import os
import stat

from . import TYPE_CHECKING, loop, shared, switchroot, udev, verity, veritydev
from .boot import BOTH, RDINIT, SYSTEMD, Boot, Step
from .cmdline import flag, parse_cmdline
from .config import Config, ConfigError, default_subsystems, parse_config
from .devices import Finder
from .emergency import Policy
from .errors import BootError, failing
from .kernel import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY
from .modules import SIGNATURE_HASHES, Loader, module_blacklist, module_params
from .settings import VERITY, resolve

if TYPE_CHECKING:
    from collections.abc import Callable

API_MOUNTS = (
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None, "CONFIG_PROC_FS"),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None, "CONFIG_SYSFS"),
    ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", "CONFIG_DEVTMPFS"),
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", "CONFIG_TMPFS"),
)
# The image holds an initramfs's content, whose first program is /init (what the kernel runs
# from an initramfs: dracut's systemd, initramfs-tools' script); then the real root's places.
INIT_CANDIDATES = ("/init", "/sbin/init", "/etc/init", "/bin/init", "/bin/sh")


def mount_api(boot: Boot) -> None:
    for source, target, fstype, flags, data, option in API_MOUNTS:
        with failing(f"mount {fstype} on {target}", f"that the kernel has {option}"):
            boot.kernel.mkdir(target)
            try:
                boot.kernel.mount(source, target, fstype, flags, data)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                boot.log.info(f"{target} is already mounted")
    console = f"{boot.paths.dev}/console"
    try:
        if boot.kernel.ensure_stdio(console):
            boot.log.info(f"no console on fds 0-2 at start; opened {console}")
    except OSError as exc:
        boot.log.warning(f"cannot open {console} ({exc.strerror}); messages go to kmsg only")


def open_log(boot: Boot) -> None:
    kernel, log = boot.kernel, boot.log
    # Both modes: the mini-initramfs of systemd mode runs no journald (see
    # initoverlayfs.service); the journald of the initrd in the image reads kmsg from the
    # start, so these lines reach the journal as in rdinit mode.
    try:
        log.kmsg_fd = kernel.open(f"{boot.paths.dev}/kmsg", os.O_WRONLY)
    except OSError as exc:
        log.warning(f"cannot open {boot.paths.dev}/kmsg ({exc.strerror}); console only")
    try:
        printk = kernel.read_file("/proc/sys/kernel/printk").split()
        log.console_loglevel = int(printk[0])
    except (OSError, ValueError, IndexError):
        pass
    # Like systemd: our lines must not be eaten by the kmsg rate limit. (try, not
    # contextlib.suppress: storage-init does not import contextlib, see errors.failing)
    try:  # noqa: SIM105
        kernel.write_file("/proc/sys/kernel/printk_devkmsg", b"on\n")
    except OSError:
        pass


def read_cmdline(boot: Boot) -> None:
    with failing(f"read {boot.paths.cmdline}", "that /proc is mounted"):
        text = boot.kernel.read_file(boot.paths.cmdline).decode(errors="replace")
    boot.set_params(parse_cmdline(text))


def read_config(boot: Boot) -> None:
    path = boot.paths.config
    config = Config()
    if boot.kernel.exists(path):
        with failing(f"read {path}", "the mini-initramfs (rerun initoverlayfs-install)"):
            text = boot.kernel.read_file(path).decode(errors="replace")
        try:
            config = parse_config(text)
        except ConfigError as exc:
            raise BootError(f"parse {path}: {exc}", f"{path}") from None
    else:
        boot.log.warning(f"{path} is missing; only the kernel command line configures this boot")
    try:
        settings = resolve(config, boot.params, boot.kernel.uname_release(),
                           default_subsystems(boot.kernel.uname_machine()))
    except ConfigError as exc:
        raise BootError(f"configure the boot: {exc}", f"{path} and the kernel command line"
                        ) from None
    boot.set_settings(settings)


def load_modules(boot: Boot) -> None:
    s = boot.need_settings()
    boot.loader = Loader.from_directory(boot.kernel, boot.log, boot.modules_dir(),
                                        module_params(boot.params),
                                        module_blacklist(boot.params))
    boot.loader.load(SIGNATURE_HASHES, optional=True)  # first: see modules.SIGNATURE_HASHES
    boot.loader.load(["loop", f"fs-{s.fstype}", "fs-overlay"])


def trigger(boot: Boot) -> None:
    s = boot.need_settings()
    with failing("open the kernel uevent socket", "that the kernel has CONFIG_NET"):
        boot.uevents = boot.kernel.uevent_open()
    # Both modes: the mini-initramfs of systemd mode has no udevd either. udevd's coldplug
    # there processed every device of the machine and loaded every storage driver at once,
    # on the CPU storage-init needed, for a udevd that the initrd in the image starts afresh.
    count = udev.trigger(boot.kernel, boot.log, s.subsystems, boot.paths.sysfs)
    boot.log.info(f"triggered {count} devices in {', '.join(s.subsystems)}")


def _retrigger(boot: Boot) -> None:
    """After lost uevents: the kernel sends them again."""
    udev.trigger(boot.kernel, boot.log, boot.need_settings().subsystems, boot.paths.sysfs)


def bring_up_network(boot: Boot) -> None:
    s = boot.need_settings()
    if s.network is None:
        return  # a local bootfs: nothing of the network is imported or touched
    from . import network  # and with it pyroute2: only for a bootfs on the network

    network.check_support(s.network, s.bootfs)
    assert boot.loader is not None and boot.uevents is not None
    deadline = boot.kernel.monotonic() + s.timeout
    index = network.wait_interface(boot.kernel, boot.log, boot.loader, boot.uevents,
                                   s.network.interface, boot.paths.sysfs, deadline,
                                   lambda: _retrigger(boot))
    network.bring_up(boot.kernel, boot.log, s.network, index, deadline)


def wait_bootfs(boot: Boot) -> None:
    s = boot.need_settings()
    assert boot.loader is not None and boot.uevents is not None
    target = s.bootfs.nbd
    if target is not None:
        from . import network

        name = network.connect_nbd(boot.kernel, boot.log, boot.loader, target,
                                   boot.kernel.monotonic() + s.timeout)
        finder = Finder(boot.kernel, boot.log, boot.loader, s.bootfs, boot.paths.sysfs,
                        boot.paths.dev, load_drivers=False)
        boot.bootfs = finder.probe(name, name)
        boot.log.info(f"bootfs {s.bootfs} is {boot.bootfs.describe()}")
        boot.uevents.close()
        boot.uevents = None
        return
    finder = Finder(boot.kernel, boot.log, boot.loader, s.bootfs, boot.paths.sysfs,
                    boot.paths.dev)

    boot.bootfs = finder.wait(boot.uevents, s.timeout, s.bootfs_hint, lambda: _retrigger(boot))
    boot.uevents.close()
    boot.uevents = None


def mount_bootfs(boot: Boot) -> None:
    s, device = boot.need_settings(), boot.bootfs
    assert device is not None and boot.loader is not None
    fstype = s.bootfstype or (device.fs.fstype if device.fs else None)
    if fstype is None:
        raise BootError(f"tell the filesystem type of {device.node}",
                        "bootfstype in /etc/initoverlayfs.conf or rd.initoverlayfs.bootfstype=")
    boot.loader.load([f"fs-{fstype}"])
    with failing(f"mount {device.node} ({s.bootfs}) on /boot as {fstype}",
                 "bootfstype in /etc/initoverlayfs.conf or rd.initoverlayfs.bootfstype="):
        boot.kernel.mkdir("/boot")
        # Read-only: storage-init only reads the image, and a crash cannot dirty /boot.
        boot.kernel.mount(device.node, "/boot", fstype, MS_RDONLY, None)


def mount_scratch(boot: Boot) -> None:
    scratch = boot.paths.scratch
    with failing(f"mount tmpfs on {scratch}", "that /run is a writable tmpfs"):
        boot.kernel.mkdir(scratch)
        boot.kernel.mount("initoverlayfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for sub in ("upper", "work", "lower"):
            boot.kernel.mkdir(f"{scratch}/{sub}")


def attach_loop(boot: Boot) -> None:
    s = boot.need_settings()
    image = s.image_path
    hint = "fs in /etc/initoverlayfs.conf or rd.initoverlayfs.fs=, and rerun initoverlayfs-install"
    try:
        mode = boot.kernel.stat(image).st_mode
    except OSError as exc:
        raise BootError(f"find the image {image} on {s.bootfs}", hint,
                        OSError(exc.errno, exc.strerror)) from None
    if not stat.S_ISREG(mode):
        # opening a FIFO would block this boot for ever; a directory is no image either
        raise BootError(f"use {image} on {s.bootfs} as the image: it is "
                        f"{_KINDS.get(stat.S_IFMT(mode), 'not a file')}, not a regular file",
                        hint)
    with failing(f"attach {image} to a loop device", "that the kernel has loop devices"):
        boot.loop_device, boot.loop_fd = loop.attach(boot.kernel, boot.log, image)
    boot.log.info(f"{image} is on {boot.loop_device}")


_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def setup_verity(boot: Boot) -> None:
    s, kernel, log = boot.need_settings(), boot.kernel, boot.log
    assert boot.loop_device is not None and boot.loop_fd is not None and boot.loader
    boot.image_device = boot.loop_device
    tree = s.verity
    if tree is None:
        if flag(boot.params, VERITY) is None:  # verity=0 had its warning in read-config
            log.info(f"{s.image_path} is not verified: the config has no verity_roothash "
                     "(built with --no-verity)")
        return
    image = s.image_path
    rebuild = (f"that {image} and the mini-initramfs come from the same "
               f"initoverlayfs-install run for {s.kver} (rerun it; rd.initoverlayfs.verity=0 "
               "boots this image unverified)")
    with failing(f"read the verity superblock of {image}", rebuild):
        size = kernel.stat(image).st_size
        block = _read_image(boot, tree.hash_offset)
    problem = verity.check_superblock(tree, block, size)
    if problem:
        raise BootError(f"verify {image}: {problem}", rebuild)
    boot.loader.load([verity.HASH_MODULE, "dm-verity"])
    with failing(f"open {boot.paths.dev}/mapper/control",
                 "that the kernel has device-mapper (CONFIG_BLK_DEV_DM, module dm-mod)"):
        control = kernel.open(f"{boot.paths.dev}/mapper/control", os.O_RDWR)

    def refusal() -> BootError:
        return BootError(f"verify {image}: dm-verity rejects it against the root hash "
                         f"{tree.root_hash} of {boot.paths.config}: it is not the image "
                         "this mini-initramfs was built with, or it is corrupted", rebuild)

    try:
        boot.verified = veritydev.map_over(kernel, boot.paths.dev, control, tree,
                                           boot.loop_device, image, refusal,
                                           lambda offset: _read_image(boot, offset))
    except BaseException:
        kernel.close(control)
        raise
    boot.image_device = boot.verified.node
    log.info(f"{image} is verified by dm-verity as {boot.image_device} "
             f"(root hash {tree.root_hash[:16]}...)")


def _read_image(boot: Boot, offset: int) -> bytes:
    """A block of the image through its loop device; an I/O error there is the disk's (or
    the bootfs's), which no rebuild mends: said so, with where the kernel log has more."""
    assert boot.loop_fd is not None
    try:
        return boot.kernel.pread(boot.loop_fd, offset, verity.BLOCK)
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        s = boot.need_settings()
        raise BootError(f"read {s.image_path} at byte {offset} ({boot.loop_device})",
                        f"the disk holding the bootfs {s.bootfs}: the kernel log names the "
                        "device and sector that failed", exc) from None


def mount_image(boot: Boot) -> None:
    s = boot.need_settings()
    lower = f"{boot.paths.scratch}/lower"
    device = boot.image_device  # set by setup-verity: the dm-verity or the loop device
    with failing(f"mount {s.image_path} ({device}) as {s.fstype} on {lower}",
                 f"that {s.image_path} is a filesystem image of type {s.fstype} "
                 "(rerun initoverlayfs-install), "
                 "and fstype in /etc/initoverlayfs.conf or rd.initoverlayfs.fstype="):
        assert device is not None and boot.loop_fd is not None
        try:
            boot.kernel.mount(device, lower, s.fstype, MS_RDONLY, None)
        finally:
            # Now the mount holds the device; on failure autoclear detaches it.
            boot.kernel.close(boot.loop_fd)
            boot.loop_fd = None


def share_files(boot: Boot) -> None:
    """The mini-initramfs's copies of the files the image holds byte for byte (the builder's
    list: systemd and its libraries, in systemd mode) into a layer above the image. After the
    switch root the image's systemd then maps them from memory instead of reading them from
    the image and hashing them with dm-verity again. An optimisation only: a list that does
    not make sense, or a copy that fails, leaves the image's own copies to serve."""
    listing = boot.paths.shared
    if not boot.kernel.exists(listing):
        return
    scratch = boot.paths.scratch
    layer, lower = f"{scratch}/shared", f"{scratch}/lower"
    try:
        paths = shared.parse(boot.kernel.read_file(listing).decode())
        boot.kernel.mkdir(layer)
        for directory in shared.parents(paths):  # with the image's modes: the layer's win
            if boot.kernel.realpath(lower + directory) != lower + directory:
                # the layer's folder would hide the image's symlink and all behind it
                raise ValueError(f"{directory} is a symlink in the image")
            mode = stat.S_IMODE(boot.kernel.stat(lower + directory).st_mode)
            boot.kernel.mkdir(layer + directory, mode)
        for path in paths:
            boot.kernel.copy_file(path, layer + path,
                                  stat.S_IMODE(boot.kernel.stat(path).st_mode))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        boot.log.warning(f"the image's own copies serve instead of the mini-initramfs's "
                         f"({listing}): {exc}")
        return
    boot.shared_layer = layer
    boot.log.info(f"{len(paths)} files of the mini-initramfs serve as the image's ({layer})")


def mount_overlay(boot: Boot) -> None:
    scratch, new_root = boot.paths.scratch, boot.paths.new_root
    lower = f"{scratch}/lower"
    if boot.shared_layer is not None:  # above the image: overlay looks there first
        lower = f"{boot.shared_layer}:{lower}"
    layers = f"lowerdir={lower},upperdir={scratch}/upper,workdir={scratch}/work"
    with failing(f"mount the overlay on {new_root}", "that the kernel has CONFIG_OVERLAY_FS"):
        boot.kernel.mkdir(new_root)
        try:
            # volatile: no syncs to the throwaway upper layer (Linux 5.10+).
            boot.kernel.mount("initoverlayfs", new_root, "overlay", 0, layers + ",volatile")
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            boot.log.info("overlay refused `volatile`; mounting without it")
            boot.kernel.mount("initoverlayfs", new_root, "overlay", 0, layers)


def move_mounts(boot: Boot) -> None:
    moves = switchroot.RDINIT_MOVES if boot.mode == RDINIT else switchroot.SYSTEMD_MOVES
    with failing(f"move {', '.join(moves)} into {boot.paths.new_root}",
                 "that the image has those directories"):
        switchroot.move_mounts(boot.kernel, boot.log, boot.paths.new_root, moves)


def switch_root(boot: Boot) -> None:
    with failing(f"switch root to {boot.paths.new_root}", "the kernel log for overlay errors"):
        switchroot.switch_root(boot.kernel, boot.log, boot.paths.new_root)


def seal_verity(boot: Boot) -> None:
    """From here on a corrupted block is never an I/O error that init may step over."""
    s, verified = boot.need_settings(), boot.verified
    if verified is None or s.verity is None:
        return
    boot.verified = None
    veritydev.seal(boot.kernel, boot.log, verified, s.verity,
                   Policy.from_params(boot.params).action)


def exec_init(boot: Boot) -> None:
    s = boot.need_settings()
    boot.finish()
    candidates = [c for c in (s.init, *INIT_CANDIDATES) if c]
    tried = []
    for path in dict.fromkeys(candidates):
        try:
            boot.kernel.execve(path, [path, *boot.argv[1:]], boot.env)
        except OSError as exc:
            tried.append(f"{path} ({exc.strerror})")
            if path == s.init:
                boot.log.warning(f"init {path} cannot run: {exc.strerror}; trying the defaults")
    raise BootError(f"start init: tried {', '.join(tried)}",
                    "rd.initoverlayfs.init= or init=, and that the image has an init")


def plan_values(boot: Boot) -> dict[str, object]:
    """What the steps' plan and hint texts below are filled with: this run's paths and
    settings, or placeholders before the config is read."""
    s = boot.settings
    hint = (s.bootfs_hint if s else None) or "none"
    return {
        "cmdline": boot.paths.cmdline, "config": boot.paths.config,
        "modules": f"{boot.paths.modules[0]}/"
                   f"{s.kver if s else boot.kernel.uname_release()}",
        "scratch": boot.paths.scratch, "shared": boot.paths.shared,
        "new_root": boot.paths.new_root, "moves": "/boot /proc /dev /sys /run"
        if boot.mode == RDINIT else "/boot",
        "fstype": s.fstype if s else "erofs",
        "subsystems": " ".join(s.subsystems) if s else "?",
        "timeout": s.timeout if s else 30.0, "bootfs": s.bootfs if s else "?",
        "hint": hint,
        "bootfstype": (s.bootfstype or "probed type") if s else "?",
        "image": s.image if s else "?",
        "verity": (f"root hash {s.verity.root_hash[:16]}..." if s.verity else
                   "off (no verity_roothash, or rd.initoverlayfs.verity=0)") if s else "?",
        "network": (f"wait up to {s.timeout:g} s for {s.network.interface}, set it up, "
                    f"wait for carrier, add {s.network.address}/{s.network.prefix}"
                    + (f" and the default route via {s.network.gateway}"
                       if s.network.gateway else "") + " (rtnetlink, pyroute2)"
                    if s and s.network else "nothing: the bootfs is local (ip= is for an "
                    "nbd: bootfs)"),
        "wait_bootfs": (f"load nbd; negotiate {s.bootfs} over TCP; hand it to the kernel "
                        "(NBD_CMD_CONNECT); probe the nbd device" if s and s.bootfs.nbd
                        else f"wait up to {s.timeout if s else 30.0:g} s for "
                        f"{s.bootfs if s else '?'} (hint: {hint}), "
                        "loading drivers by modalias"),
        "init": " then ".join(filter(None, (s.init if s else None, "/init", "/sbin/init"))),
    }


def step(name: str, run: Callable[[Boot], None], plan: str, hint: str,
         modes: frozenset[str] = BOTH) -> Step:
    """A step whose plan and hint are texts with {placeholders} from plan_values."""
    return Step(name, run, lambda boot: plan.format(**plan_values(boot)),
                lambda boot: hint.format(**plan_values(boot)), modes)


STEPS = (
    step("mount-api", mount_api, "mount /proc /sys /dev (devtmpfs) /run",
         "the kernel's proc, sysfs, devtmpfs and tmpfs support", frozenset({RDINIT})),
    step("log", open_log, "log to /dev/kmsg with the storage-init: prefix", "/dev/kmsg"),
    step("read-cmdline", read_cmdline, "read {cmdline}", "/proc/cmdline"),
    step("read-config", read_config, "read {config} and apply the kernel command line",
         "{config}"),
    step("load-modules", load_modules,
         "load the module signatures' hash (when shipped), then loop, fs-{fstype} and "
         "overlay from {modules} (built-in is fine)", "{modules}"),
    step("trigger", trigger,
         "open the uevent socket; trigger add for {subsystems}",
         "udev_trigger in {config}"),
    step("bring-up-network", bring_up_network,
         "{network}", "ip= on the kernel command line or ip in {config}"),
    step("wait-bootfs", wait_bootfs,
         "{wait_bootfs}", "bootfs in {config} or rd.initoverlayfs.bootfs="),
    step("mount-bootfs", mount_bootfs, "mount {bootfs} read-only on /boot as {bootfstype}",
         "bootfstype in {config} or rd.initoverlayfs.bootfstype="),
    step("mount-scratch", mount_scratch, "mount tmpfs on {scratch} for upper/work/lower",
         "/run"),
    step("attach-loop", attach_loop, "attach /boot{image} to a free loop device (read-only)",
         "fs in {config} or rd.initoverlayfs.fs="),
    step("setup-verity", setup_verity,
         "check the image's hash tree ({verity}); load dm-verity; map it over the loop device",
         "that the image and the mini-initramfs come from one initoverlayfs-install run"),
    step("mount-image", mount_image,
         "mount the verity (or loop) device as {fstype} on {scratch}/lower",
         "fstype in {config} or rd.initoverlayfs.fstype="),
    step("share-files", share_files,
         "copy the files {shared} names (the image has them byte for byte) from the "
         "mini-initramfs into {scratch}/shared, a layer above the image (none without it)",
         "{shared}; rerun initoverlayfs-install", frozenset({SYSTEMD})),
    step("mount-overlay", mount_overlay, "mount overlay (volatile if supported) on {new_root}",
         "CONFIG_OVERLAY_FS"),
    step("move-mounts", move_mounts, "move {moves} into {new_root}", "the image's directories"),
    step("switch-root", switch_root,
         "make {new_root} the root; free the old initramfs", "kernel log",
         frozenset({RDINIT})),
    step("seal-verity", seal_verity,
         "reload dm-verity with restart_on_corruption (rd.emergency=reboot) or "
         "panic_on_corruption; remove it once the image is unmounted", "the kernel log"),
    step("exec-init", exec_init, "exec {init} with the original arguments",
         "rd.initoverlayfs.init= or init=", frozenset({RDINIT})),
)


def steps_for(mode: str) -> tuple[Step, ...]:
    return tuple(step for step in STEPS if mode in step.modes)
