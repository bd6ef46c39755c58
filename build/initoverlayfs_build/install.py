"""`initoverlayfs-install`: the mini-initramfs and the initoverlayfs image for one kernel.

Invoked like the C original (`initoverlayfs-install [--kver KVER] [-f]`), plus --sysroot for
staging trees and image builds: every path is read and written under it. Every check that can
refuse runs before anything is written, and /boot only changes by atomic renames."""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from storage_init.config import (
    CONFIG_PATH,
    PER_BUILD,
    ConfigError,
    config_lines,
    default_subsystems,
    image_name,
    parse_config,
    verity_lines,
)
from storage_init.modules import SIGNATURE_HASHES, ModuleIndex
from storage_init.verity import HASH_MODULE, Verity

from . import (
    __version__,
    arch,
    builtpair,
    compress,
    content,
    cpio,
    dracut,
    elf,
    erofs,
    freeze,
    fstab,
    initramfs,
    installconf,
    kmods,
    mini,
    output,
    pair,
    sharedfiles,
    verity,
    workdirs,
)
from .errors import BuildError
from .run import need
from .ui import Ui

PROG = "initoverlayfs-install"
CONFIG_NAME = Path(CONFIG_PATH).name  # under the sysroot's etc/


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def parser() -> argparse.ArgumentParser:
    """The command line, for --help and initoverlayfs-install(8) alike."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Build /boot/initramfs-KVER.img (the mini-initramfs: storage-init, storage "
                    "drivers, config) and /boot/initoverlayfs-KVER-ID.img (EROFS: everything "
                    "else; ID is this build's, and the mini-initramfs names it) for one "
                    "kernel, replacing the previous pair atomically.")
    p.add_argument("--kver", help="kernel version (default: the running kernel when the "
                                  "sysroot is /, else the only one installed there)")
    p.add_argument("-f", "--force", action="store_true",
                   help="replace existing images (without it, existing ones are kept and the "
                        "build stops, as with dracut)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--initoverlayfs-init", action="store_true",
                      help="storage-init is the mini-initramfs's /init (rdinit mode, the "
                           "default; the flag is accepted for compatibility with the C "
                           "original's installer)")
    mode.add_argument("--systemd", action="store_true",
                      help="systemd mode: the mini-initramfs is a systemd initrd made by "
                           "dracut with the initoverlayfs module; storage-init runs in it as "
                           "initoverlayfs.service and systemd switches root. Implies "
                           "--mini-with dracut")
    p.add_argument("--mini-with", choices=("cpio", "dracut"), default="cpio",
                   help="make the mini-initramfs with our own cpio writer (default: smaller, "
                        "no dracut needed) or with dracut and the initoverlayfs dracut module")
    p.add_argument("--no-config", action="store_true",
                   help="ignore /etc/initoverlayfs/install.conf and install.conf.d/*.conf "
                        "(shell words read before these arguments, for every build)")
    p.add_argument("--sysroot", type=Path, default=Path("/"),
                   help="read modules, fstab and config and write the images under this "
                        "directory (default: /)")
    p.add_argument("--storage-init", type=Path, metavar="DIR",
                   help="frozen storage-init folder (default: the installed one; in a source "
                        "checkout, frozen once and reused while the sources are unchanged; "
                        "for another CPU than this machine's, the one frozen for it, "
                        "initoverlayfs-freeze --arch)")
    p.add_argument("--arch", metavar="ARCH",
                   help="the CPU the kernel is for: amd64 (x86_64) or arm64 (aarch64) "
                        "(default: read from the kernel's config, /boot/config-KVER, else "
                        "from its modules). For another CPU than this machine's, the content "
                        "must come from --from-dir or --from-initramfs")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-initramfs", type=Path, metavar="FILE",
                        help="take the initoverlayfs content from an existing initramfs "
                             "(cpio, optionally after early-microcode segments; gzip, zstd, "
                             "xz, lz4, bzip2 or uncompressed)")
    source.add_argument("--from-dir", type=Path, metavar="DIR",
                        help="take the initoverlayfs content from this tree")
    host = p.add_mutually_exclusive_group()
    host.add_argument("--hostonly", dest="hostonly", action="store_true", default=None,
                      help="only the drivers of the device holding /boot (default when the "
                           "sysroot is /)")
    host.add_argument("--no-hostonly", dest="hostonly", action="store_false",
                      help="the common storage drivers: virtio-blk, virtio-scsi, NVMe, AHCI, "
                           "SCSI disk, USB storage, MMC/SD (default under another sysroot)")
    host.add_argument("--drivers", metavar='"A B"',
                      help="exactly these storage drivers (module names or aliases) for the "
                           "device holding /boot, instead of the host's or the common ones: "
                           "for an image built elsewhere for known hardware (e.g. "
                           '"virtio_pci virtio_blk" or "nvme")')
    p.add_argument("--add-drivers", default="", metavar='"A B"',
                   help="more kernel modules (names or aliases) for the mini-initramfs")
    p.add_argument("--network", action="store_true",
                   help="the bootfs is an NBD export (`bootfs nbd:HOST:PORT/EXPORT` and `ip` in "
                        "/etc/initoverlayfs.conf, or rd.initoverlayfs.bootfs=nbd:... and ip= at "
                        "boot): add pyroute2 to storage-init and the nbd and NIC drivers "
                        f"({', '.join(kmods.NETWORK)}); implied by an nbd: bootfs in the config")
    p.add_argument("--compress", choices=sorted(compress.COMMANDS),
                   help="mini-initramfs compression (default: lz4, which the kernel unpacks "
                        "fastest, for a kernel from 6.1 built with CONFIG_RD_LZ4; else "
                        f"{compress.FALLBACK}, 1 MB smaller, for a boot disk the firmware "
                        "reads slowly)")
    p.add_argument("--erofs-compression", metavar="ALGO[,LEVEL]",
                   help="mkfs.erofs -z argument, or none (default: erofs_compression from the "
                        f"config, else {erofs.PREFERRED} when mkfs.erofs and the kernel "
                        "support it)")
    p.add_argument("--no-verity", dest="verity", action="store_false",
                   help="do not append a dm-verity hash tree to the image nor put its root "
                        "hash in the mini-initramfs (default: verified; storage-init then "
                        "refuses an image that is not the one built with it)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and print what would be written (paths, modules and "
                        "why, compression, verity, the mini-initramfs's size, the image's "
                        "content), then stop: nothing is written")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show each external command as run")
    p.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    return p


@dataclass(frozen=True)
class Result:
    initramfs: Path
    image: Path
    initramfs_size: int
    image_size: int
    modules: tuple[str, ...]
    seconds: float


VERITY_MODULE = "dm-verity"  # with dm-mod and dm-bufio, through modules.dep


def build_config(config_text: str, image: str, tree: Verity | None) -> str:
    """The mini-initramfs config: the user's lines without the keys that belong to one build
    (they never go into the sysroot's file), then this build's: the image's own name in the
    directory the user's `fs` names (the bootfs's root by default), and the verity keys."""
    directory = image_directory(config_text)
    kept = [line for line in config_text.splitlines() if _key(line) not in PER_BUILD]
    text = "\n".join(kept).rstrip("\n") + "\n"
    text += f"fs {directory}/{image}\n"
    return text + verity_lines(tree) if tree else text


def image_directory(config_text: str) -> str:
    """Where the image sits inside the bootfs: the directory of the user's `fs` ("" for the
    bootfs's root, "/boot" when /boot is a directory of the root filesystem)."""
    fs = parse_config(config_text).fs or "/"
    return fs.rsplit("/", 1)[0]


def _key(line: str) -> str:
    found = config_lines(line)
    return found[0][1] if found else ""


def checked_config(text: str, what: str) -> str:
    """`text` as storage-init will read it: a config it refuses would stop the boot."""
    try:
        parse_config(text)
    except ConfigError as exc:
        raise BuildError(f"{what} would be refused by storage-init: {exc}",
                         "this is a bug of initoverlayfs-install; report it with the "
                         "config") from None
    return text


def verity_salt(image_uuid: str) -> bytes:
    """Reproducible like the image's UUID; different for every kernel and build time."""
    return hashlib.sha256(f"initoverlayfs verity salt {image_uuid}".encode()).digest()


def pick_kver(sysroot: Path, requested: str | None) -> str:
    if requested:
        return requested
    if sysroot == Path("/"):
        return os.uname().release
    found = sorted({p.name for base in ("lib/modules", "usr/lib/modules")
                    if (sysroot / base).is_dir() for p in (sysroot / base).iterdir()})
    if len(found) == 1:
        return found[0]
    raise BuildError(f"{len(found)} kernels under {sysroot}: "
                     f"{', '.join(found) or 'none'}", "pass --kver")


def read_config(ui: Ui, etc_dir: Path) -> tuple[str | None, dict[str, str]]:
    """The user's config text (None when missing or blank) and its raw key/values, after
    checking storage-init would accept it: a config it rejects would fail the boot."""
    path = etc_dir / CONFIG_NAME
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        return None, {}
    except UnicodeDecodeError as exc:
        raise BuildError(f"{path} is not UTF-8 text (byte {exc.start})",
                         "fix or rewrite the file") from None
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}") from None
    if not text.strip():
        return None, {}
    try:
        parsed = parse_config(text)
    except ConfigError as exc:
        raise BuildError(f"{path}: {exc}", "storage-init would stop the boot on it; fix "
                                           "the line") from None
    for warning in parsed.warnings:
        ui.warning(f"{path}: {warning}")
    return text, {key: value for _, key, value in config_lines(text)}


def in_chroot() -> bool:
    """Whether this process's / is not PID 1's (a chroot, an image builder), as Debian's
    ischroot decides: the disks seen here are then the build machine's, not the target's.
    Also when PID 1's root cannot be looked at (no /proc; or, as root, EACCES: PID 1 is in
    another mount namespace, seen here from a chroot in a private one): a chroot cannot be
    ruled out, and the common drivers are the choice that cannot miss the disk."""
    try:
        ours, init = os.stat("/"), os.stat("/proc/1/root")
    except OSError:
        return True
    return (ours.st_dev, ours.st_ino) != (init.st_dev, init.st_ino)


def host_modules(ui: Ui, index: ModuleIndex) -> list[str] | None:
    """Drivers of the device under /boot on this machine, or None when it cannot be told:
    in a chroot, or when /boot is on a device with no disk under it (a loop device, as in an
    image builder). None means the common storage drivers: a choice that cannot miss the
    disk, where the host-only one would have shipped no driver and stopped the boot at
    "block devices seen: none"."""
    common = "; including the common storage drivers (--drivers names them for known hardware)"
    if in_chroot():  # expected in an image builder: said, not warned
        ui.info("host-only: running in a chroot, where the target's boot disk cannot be seen"
                + common)
        return None
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError as exc:
        ui.warning(f"host-only: cannot read /proc/self/mountinfo ({exc.strerror})" + common)
        return None
    found = kmods.boot_device(mountinfo)
    if found is None:
        ui.warning("host-only: neither /boot nor / is in /proc/self/mountinfo" + common)
        return None
    devnum, _ = found
    try:
        drivers, aliases = kmods.device_drivers(Path("/sys"), devnum)
    except BuildError as exc:
        ui.warning(f"host-only: {exc.message}" + common)
        return None
    if not drivers and not aliases:
        ui.info(f"host-only: /boot is on {devnum}, a device with no disk under it (a loop "
                "or device-mapper device, as in an image builder)" + common)
        return None
    names = [*drivers]
    for alias in aliases:
        names.extend(index.resolve(alias))
    ui.info(f"host-only: /boot is on {devnum}; its drivers: {', '.join(names) or 'built in'}")
    return names


@dataclass(frozen=True)
class Plan:
    """Everything a build decides before it writes anything."""

    args: argparse.Namespace
    sysroot: Path
    kver: str
    boot_dir: Path
    etc_dir: Path
    moddir: Path
    existing: list[str]  # this kernel's files in /boot that the build replaces
    with_dracut: bool  # the mini-initramfs made by dracut (--systemd, --mini-with dracut)
    unpacked: initramfs.Unpacked | None  # --from-initramfs, read
    config_text: str
    from_fstab: bool  # the config was made from /etc/fstab (and is written to /etc after)
    listed: tuple[str, ...]  # the bootfs's filesystem types, when known
    network: bool
    arch: arch.Arch  # the kernel's CPU
    frozen: Path
    libraries: Path  # the tree the frozen binary's libraries come from (/: this machine)
    compression: str | None  # the image's
    method: str  # the mini-initramfs's


@dataclass(frozen=True)
class Modules:
    """The mini-initramfs's modules: which, why, and their files (none: dracut ships them)."""

    names: tuple[str, ...]  # in load order
    reasons: dict[str, str]
    files: dict[str, bytes]
    hostonly: bool


@dataclass(frozen=True)
class Image:
    path: Path  # in the work directory
    name: str  # its name in /boot
    tree: Verity | None
    content: Path  # the folder it was made from (still there while the build runs)


def build(ui: Ui, args: argparse.Namespace) -> Result | None:
    """The pair for one kernel, in /boot; None after a dry run (nothing written). Every
    refusal comes first (plan, modules); then the image, the mini-initramfs that names it,
    and the atomic replacement of the pair."""
    started = time.monotonic()
    plan = make_plan(ui, args)
    modules = choose_modules(ui, plan)
    if args.dry_run:
        print_plan(plan, modules)
        return None
    workdirs.remove_stale(ui)
    with tempfile.TemporaryDirectory(prefix=workdirs.prefix(), dir=workdirs.base()) as work:
        workdir = Path(work)
        unpacked = plan.unpacked
        if args.from_dir is None and unpacked is None:
            unpacked = initramfs.load(ui, dracut.content(ui, plan.sysroot, plan.kver,
                                                         modules.hostonly,
                                                         workdir / "dracut.img"))
        image = make_image(ui, plan, workdir, unpacked)
        mini = make_mini_initramfs(ui, plan, modules, image, workdir, unpacked)
        install_pair(ui, plan, image, mini)
        return Result(plan.boot_dir / pair.mini_name(plan.kver), plan.boot_dir / image.name,
                      len(mini), image.path.stat().st_size, modules.names,
                      time.monotonic() - started)


def make_plan(ui: Ui, args: argparse.Namespace) -> Plan:
    """Every check that can refuse the build, before anything is written."""
    sysroot = args.sysroot.resolve()
    if not sysroot.is_dir():
        raise BuildError(f"the sysroot {sysroot} is not a directory")
    kver = pick_kver(sysroot, args.kver)
    boot_dir = within(sysroot, "boot")
    etc_dir = within(sysroot, "etc")
    moddir = kmods.modules_dir(sysroot, kver)
    mkfs = need("mkfs.erofs", "to make the initoverlayfs image")
    if not boot_dir.is_dir():
        raise BuildError(f"{boot_dir} does not exist", "create it, or mount /boot")
    existing = pair.images_of(boot_dir, kver)
    if (boot_dir / pair.mini_name(kver)).exists():
        existing.insert(0, pair.mini_name(kver))
    if existing and not args.force:
        raise BuildError(f"{', '.join(str(boot_dir / n) for n in existing)} already exist(s); "
                         "nothing was changed", "pass -f to replace them")
    with_dracut = args.systemd or args.mini_with == "dracut"
    kernel_config = boot_dir / f"config-{kver}"
    cpu = kernel_arch(ui, args.arch, kernel_config, moddir)
    if cpu is None:  # (only a hand-made tree's modules are not ELF, and it has no config)
        given = freeze.folder_arch(args.storage_init) if args.storage_init else None
        cpu = given or arch.host()
        ui.info(f"kernel {kver}'s CPU is named neither by {kernel_config} nor by its modules: "
                f"building for {cpu} (--arch names another)")
    if cpu != arch.host():
        refuse_foreign(args, with_dracut, cpu)
    if with_dracut:
        need("dracut", "to make the mini-initramfs with dracut")
        dracut.need_module()
    if args.from_dir is not None and not args.from_dir.is_dir():
        raise BuildError(f"--from-dir {args.from_dir} is not a directory")
    unpacked = initramfs.load(ui, args.from_initramfs) if args.from_initramfs else None
    user_config, raw = read_config(ui, etc_dir)
    if user_config is None:
        entries = fstab.parse_fstab(_read(etc_dir / "fstab", "the /boot entry"))
        bootfs = fstab.boot_filesystem(entries)
        config_text = checked_config(
            fstab.config_text(bootfs, args.erofs_compression, default_subsystems(cpu.machine)),
            "the config made from /etc/fstab")
        listed = bootfs.fstypes
    else:
        config_text = user_config
        listed = (raw["bootfstype"],) if raw.get("bootfstype") else ()
    network = args.network or raw.get("bootfs", "").startswith("nbd:")
    if network and not args.network:
        ui.info(f"the bootfs {raw['bootfs']} is on the network: building as with --network")
    frozen = (freeze.check_folder(args.storage_init) if args.storage_init
              else freeze.default_frozen(ui, network=network, arch=cpu).folder)
    frozen_cpu = freeze.folder_arch(frozen)
    if frozen_cpu != cpu:
        raise BuildError(f"the frozen storage-init {frozen} is for "
                         f"{frozen_cpu or 'another CPU'}, and kernel {kver} is for {cpu}",
                         f"pass --storage-init DIR frozen for {cpu} (initoverlayfs-freeze "
                         f"--arch {cpu}), or --arch if {kver}'s CPU was misread")
    libraries = freeze.library_root(frozen)
    if network and not freeze.has_network(frozen):
        raise BuildError(f"the frozen storage-init {frozen} has no pyroute2, and the bootfs is "
                         "on the network", "freeze it with `initoverlayfs-freeze --network`")
    if with_dracut and not frozen.resolve().is_relative_to(sysroot):
        raise BuildError(f"dracut reads every file from the sysroot {sysroot}, and the frozen "
                         f"storage-init {frozen} is outside it",
                         "put it inside the sysroot, or pass --mini-with cpio")
    compression = erofs.choose_compression(
        ui, mkfs, args.erofs_compression or raw.get("erofs_compression"), kernel_config)
    method = args.compress or compress.default_method(kver, kernel_config)
    if method == "lz4" and not compress.reads_lz4_end_mark(kver):
        ui.warning(f"lz4 for {kver}: kernels before 6.1 read no end mark after an lz4 "
                   "initramfs, so nothing a bootloader appends to it will be unpacked")
    return Plan(args, sysroot, kver, boot_dir, etc_dir, moddir, existing, with_dracut,
                unpacked, config_text, user_config is None, tuple(listed), network, cpu,
                frozen, libraries, compression, method)


def kernel_arch(ui: Ui, requested: str | None, config: Path,
                moddir: Path) -> arch.Arch | None:
    """--arch, else what the kernel's config says, else what its modules are; None when
    neither tells."""
    if requested:
        return arch.named(requested)
    return arch.of_kernel_config(config) or kmods.modules_arch(ui, moddir)


def refuse_foreign(args: argparse.Namespace, with_dracut: bool, cpu: arch.Arch) -> None:
    """What this machine cannot make for another CPU: dracut would put this machine's own
    programs into the mini-initramfs or the content."""
    if with_dracut:
        raise BuildError(f"dracut makes a mini-initramfs of this {arch.host()} machine's "
                         f"programs, and the kernel is for {cpu}",
                         "use --mini-with cpio (the default), or build on a machine of "
                         "that CPU")
    if args.from_dir is None and args.from_initramfs is None:
        raise BuildError(f"the content would come from dracut, with this {arch.host()} "
                         f"machine's programs, and the kernel is for {cpu}",
                         f"pass --from-dir or --from-initramfs with {cpu} content (the "
                         "distribution's classic initramfs for that kernel)")


def choose_modules(ui: Ui, plan: Plan) -> Modules:
    """The drivers (host-only, --drivers, or the common ones), the filesystems, the image's
    stack and verity, with their dependencies; refused when a named one is missing."""
    args, kver = plan.args, plan.kver
    index = kmods.load_index(plan.moddir)
    named = args.drivers.split() if args.drivers is not None else None
    if named is not None:  # --drivers: for known hardware, whatever this host has
        hostonly, drivers = False, named
    else:
        hostonly = args.hostonly if args.hostonly is not None else plan.sysroot == Path("/")
        drivers = host_modules(ui, index) if hostonly else None
    if drivers is None:
        drivers = kmods.generic_drivers(plan.arch.name)
    extra = args.add_drivers.split()
    if plan.network:
        drivers = [*drivers, *kmods.network_drivers()]
    fstypes = list(plan.listed) or list(kmods.GENERIC_FS)
    if not plan.listed:
        # (a bootfs on the network, or a config without it: its fstab entry is not read)
        ui.info(f"no bootfstype in the config: the mini-initramfs gets the modules of "
                f"{', '.join(fstypes)} (xfs and btrfs are 8 MB unpacked); name the bootfs's "
                "filesystem as `bootfstype` in /etc/initoverlayfs.conf to ship only its own")
    wanted = kmods.wanted_modules([*drivers, *extra], fstypes)
    if args.verity:
        wanted += [VERITY_MODULE, HASH_MODULE]
    selection = kmods.select(index, wanted)
    # and the accelerated hash the kernel checks each module's signature with, which
    # storage-init loads first (storage_init.modules.SIGNATURE_HASHES)
    signature = kmods.signature_hash_module(ui, plan.moddir, index, selection.modules)
    if signature in SIGNATURE_HASHES and signature not in wanted:
        wanted.append(signature)
        selection = kmods.select(index, wanted)
    if args.verity and VERITY_MODULE in selection.missing:
        raise BuildError(f"{kver} has no dm-verity (CONFIG_DM_VERITY), built in or as a module",
                         "use a kernel with it, or pass --no-verity to boot the image "
                         "unverified")
    if plan.network and "nbd" in selection.missing:
        raise BuildError(f"{kver} has no nbd driver (CONFIG_BLK_DEV_NBD), built in or as a "
                         "module", "use a kernel with it for a bootfs on the network")
    for option, given in (("--drivers", named or []), ("--add-drivers", extra)):
        unknown = [name for name in given if name in selection.missing]
        if unknown:
            raise BuildError(f"{option}: {', '.join(unknown)} is neither a module of {kver} "
                             f"nor built into it")
    if selection.missing:
        ui.info(f"not in {kver} (built in under another name, or absent): "
                f"{', '.join(selection.missing)}")
    # (dracut installs the modules itself when it makes the mini-initramfs)
    files = ({} if plan.with_dracut
             else kmods.module_files(ui, plan.moddir, index, selection.modules))
    return Modules(selection.modules, kmods.reasons(index, selection.modules), files, hostonly)


def make_image(ui: Ui, plan: Plan, workdir: Path,
               unpacked: initramfs.Unpacked | None) -> Image:
    """The EROFS image of the content (--from-dir's tree, or the initramfs unpacked and
    adapted), with its dm-verity tree appended; its name carries its root hash."""
    tree = plan.args.from_dir
    if tree is None:
        assert unpacked is not None
        tree = workdir / "tree"
        tree.mkdir()
        with ui.step(f"unpacking {len(unpacked.entries)} entries of the source initramfs"):
            initramfs.extract(ui, unpacked.entries, tree)
        content.adapt(ui, tree)
    image = workdir / "image.erofs"
    epoch = source_date_epoch()
    erofs.make_image(ui, tree, image, compression=plan.compression, kver=plan.kver,
                     epoch=epoch)
    tree_info = None
    if plan.args.verity:
        uuid = erofs.image_uuid(plan.kver, epoch)
        with ui.step("appending the dm-verity hash tree"):
            tree_info = verity.append(image, verity_salt(uuid),
                                      bytes.fromhex(uuid.replace("-", "")))
        ui.info(f"verity root hash {tree_info.root_hash} "
                f"(+{tree_info.file_size - tree_info.hash_offset} bytes of hash tree)")
    name = image_name(plan.kver, pair.image_id(
        image, tree_info.root_hash if tree_info else None))
    return Image(image, name, tree_info, tree)


def make_mini_initramfs(ui: Ui, plan: Plan, modules: Modules, image: Image, workdir: Path,
                        unpacked: initramfs.Unpacked | None) -> bytes:
    """The mini-initramfs whose config names `image` (and carries its verity keys)."""
    mini_config = checked_config(build_config(plan.config_text, image.name, image.tree),
                                 "the mini-initramfs's config")
    if plan.with_dracut:
        config_file = workdir / CONFIG_NAME
        config_file.write_text(mini_config)
        inside = "/" / plan.frozen.resolve().relative_to(plan.sysroot)
        made = dracut.mini_initramfs(
            ui, sysroot=plan.sysroot, kver=plan.kver, systemd=plan.args.systemd,
            frozen=inside, drivers=list(modules.names), config=config_file,
            compress=plan.method, target=workdir / "mini.img")
        mini = made.read_bytes()  # dracut adds early microcode itself
        if plan.args.systemd:
            return compress.finish(plan.method, plan.kver, mini) + shared_segment(
                ui, plan, made, image)
    else:
        mini = cpio_mini_initramfs(ui, plan.method, plan.frozen, plan.libraries,
                                   modules.files, plan.kver, mini_config, unpacked)
    return compress.finish(plan.method, plan.kver, mini)


def shared_segment(ui: Ui, plan: Plan, made: Path, image: Image) -> bytes:
    """systemd mode: the list of the mini-initramfs's files that the image holds byte for
    byte (systemd and its libraries), as a cpio segment to append (sharedfiles). Nothing
    where the kernel would not unpack what follows dracut's archive: lz4 on a kernel that
    does not read lz4's end mark (compress.finish)."""
    if plan.method == "lz4" and not compress.reads_lz4_end_mark(plan.kver):
        ui.info("no shared files: this kernel reads nothing after an lz4 archive")
        return b""
    with ui.step("listing the files the mini-initramfs and the image share"):
        paths = sharedfiles.listing(builtpair.read_mini(ui, made).entries, image.content)
    ui.info(f"{len(paths)} files of the mini-initramfs serve as the image's after the switch "
            "root")
    return sharedfiles.segment(paths, source_date_epoch()) if paths else b""


def install_pair(ui: Ui, plan: Plan, image: Image, mini: bytes) -> None:
    """The pair into /boot, atomically; then the config made from fstab into /etc."""
    pair.replace(ui, plan.boot_dir, plan.kver, image.path, image.name, mini)
    if plan.from_fstab:
        # The mini-initramfs carries its own copy: this file only spares the next build
        # the reading of fstab, so failing to write it is no reason to fail this one.
        target = plan.etc_dir / CONFIG_NAME
        try:
            output.write_file_atomically(target, plan.config_text.encode())
            ui.info(f"wrote {target} from /etc/fstab")
        except BuildError as exc:
            ui.warning(f"the new pair is in place, but {target} was not written: "
                       f"{exc.message}")


def content_summary(plan: Plan, hostonly: bool) -> str:
    """Where the image's content comes from, and how large it is when that is known now."""
    args = plan.args
    if args.from_dir is not None:
        files = [p for p in args.from_dir.rglob("*") if p.is_file() and not p.is_symlink()]
        return (f"the tree {args.from_dir}: {len(files)} files, "
                f"{sum(p.stat().st_size for p in files)} bytes")
    if plan.unpacked is not None:
        size = sum(len(e.data) for e in plan.unpacked.entries)
        return (f"the initramfs {args.from_initramfs}: {len(plan.unpacked.entries)} entries, "
                f"{size} bytes unpacked")
    return (f"dracut's {'host-only' if hostonly else 'generic'} initramfs for {plan.kver}, "
            "made during the build (its size is known then)")


def print_plan(plan: Plan, modules: Modules) -> None:
    """--dry-run: what the build would write. Our cpio writer's mini-initramfs is made in
    memory, so its size is the real one (but for the verity keys, made with the image)."""
    mini = None if plan.with_dracut else cpio_mini_initramfs(
        Ui(PROG, quiet=True), plan.method, plan.frozen, plan.libraries, modules.files,
        plan.kver,
        build_config(plan.config_text, image_name(plan.kver, "0" * pair.ID_LENGTH), None),
        plan.unpacked)
    frozen_bytes = sum(p.stat().st_size for p in plan.frozen.rglob("*") if p.is_file())
    verified = plan.args.verity
    print(f"{PROG} {__version__}: dry run for kernel {plan.kver} ({plan.arch}); nothing is "
          "written")
    print("would write:")
    size = (f"{len(mini)} bytes (within a few hundred: the config's verity keys are "
            "made with the image)" if mini is not None else "made by dracut")
    kind = "systemd initrd made by dracut" if plan.args.systemd else (
        "made by dracut" if plan.with_dracut else "our cpio writer")
    print(f"  {plan.boot_dir / pair.mini_name(plan.kver)}: the mini-initramfs ({kind}, "
          f"{plan.method}), {size}")
    print(f"    storage-init from {plan.frozen} ({frozen_bytes} bytes unpacked), "
          f"{len(modules.names)} modules ({sum(map(len, modules.files.values()))} bytes "
          "unpacked)")
    if plan.libraries != Path("/"):
        print(f"    its {plan.arch} libraries from {plan.libraries}")
    print(f"  {plan.boot_dir / image_name(plan.kver, 'ID')}: the image, EROFS "
          f"{plan.compression or 'uncompressed'}; ID from its "
          + ("verity root hash" if verified else "content's sha256"))
    print(f"    content: {content_summary(plan, modules.hostonly)}")
    print("    verity: " + ("sha256 hash tree appended to the image (about 1/128 of its size), "
                            "root hash in the mini-initramfs's config" if verified else
                            "off (--no-verity): the image is mounted unverified"))
    if plan.from_fstab:
        print(f"  {plan.etc_dir / CONFIG_NAME}: the config, from /etc/fstab")
    if plan.existing:
        print(f"replacing: {', '.join(plan.existing)}")
    print(f"modules ({len(modules.names)}, in load order):")
    for name in modules.names:
        print(f"  {name:<24} {modules.reasons[name]}")
    print("config for storage-init (then this build's image name and verity keys):")
    for line in plan.config_text.splitlines():
        print(f"  {line}")


def cpio_mini_initramfs(ui: Ui, method: str, frozen: Path, root: Path,
                        module_files: dict[str, bytes], kver: str, config_text: str,
                        unpacked: initramfs.Unpacked | None) -> bytes:
    """The mini-initramfs from our own cpio writer, after the source's early microcode; the
    frozen binary's libraries and locale from the tree `root` (/: this machine)."""
    try:
        libraries = elf.closure(mini.frozen_programs(frozen), elf.search_dirs(root),
                                provided=[frozen], root=root)
    except FileNotFoundError as exc:
        raise BuildError(f"a library of the frozen storage-init is missing: {exc}",
                         "refreeze it on this machine (initoverlayfs-freeze)") from None
    locale = mini.find_locale(root)
    if locale is None:
        ui.warning(f"no C.UTF-8 locale in {root} (/usr/lib/locale/C.utf8): "
                   "a LANG= on the kernel command line will stop storage-init")
    content = mini.build_tree(frozen, libraries, module_files, kver, config_text.encode(),
                              locale)
    archive = cpio.write(content.entries.values(), source_date_epoch())
    with ui.step(f"compressing the mini-initramfs ({method})"):
        packed = compress.compress(ui, method, archive)
    early = unpacked.early if unpacked is not None else b""
    return early + packed


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return int(time.time())
    try:
        return int(value)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds") from None


def within(sysroot: Path, name: str) -> Path:
    """A directory of the sysroot, which must stay inside it: an absolute symlink such as
    /boot -> /mnt/boot in an image build's tree would write the host's /boot."""
    path = sysroot / name
    resolved = path.resolve()
    if not resolved.is_relative_to(sysroot):
        raise BuildError(f"{path} leads out of the sysroot, to {resolved}",
                         f"make {path} a directory or a relative link inside {sysroot}, or "
                         "pass the sysroot that holds it")
    return resolved


def _read(path: Path, why: str) -> str:
    try:
        return path.read_bytes().decode()
    except UnicodeDecodeError as exc:
        raise BuildError(f"{path} is not UTF-8 text (byte {exc.start}), needed for {why}",
                         "fix the file, or write /etc/initoverlayfs.conf yourself (see "
                         "README)") from None
    except OSError as exc:
        raise BuildError(f"cannot read {path} for {why}: {exc.strerror}",
                         "write /etc/initoverlayfs.conf yourself (see README)") from None


def with_config(argv: list[str]) -> tuple[list[str], list[tuple[Path, list[str]]]]:
    """argv after the words of the install config files under the sysroot it names (none
    with --no-config), and those files with their words."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--sysroot", type=Path, default=Path("/"))
    early.add_argument("--no-config", action="store_true")
    known, _ = early.parse_known_args(argv)
    if known.no_config:
        return argv, []
    found = installconf.arguments(known.sysroot)
    return [word for _, words in found for word in words] + argv, found


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    try:
        full, found = with_config(given)
    except BuildError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    args = parse_args(full)
    ui = Ui(PROG, debug=args.debug, quiet=args.quiet)
    for path, words in found:
        ui.info(f"arguments from {path}: {shlex.join(words)}")
    try:
        result = build(ui, args)
    except BuildError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; /boot was not changed", file=sys.stderr)
        return 130
    if result is None:
        return 0
    ui.info(f"{result.initramfs}: {result.initramfs_size} bytes "
            f"({len(result.modules)} modules)")
    ui.info(f"{result.image}: {result.image_size} bytes")
    ui.info(f"done in {result.seconds:.1f} s")
    return 0
