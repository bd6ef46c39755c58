"""The boot scenarios as data, the shared artifacts they boot, and the runner that boots them
(in parallel, two at a time on this 2-core machine). The demo boots only DEFAULT."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from initoverlayfs_build.freeze import default_frozen
from initoverlayfs_build.ui import Ui

from tests.support import nbd
from tests.support.debian_kernel import fetch

from . import images
from .qemu import BootResult, Interaction, VmSpec, boot

BASE_APPEND = "rdinit=/init rd.emergency=poweroff"
NO_SUCH_UUID = "00000000-dead-4bad-8bad-000000000000"
SHELL_APPLETS = ("sh", "echo", "poweroff")
# A bootfs on the network: QEMU's user network, where 10.0.2.2 is this machine's loopback and
# the test's qemu-nbd listens (127.0.0.1 only). The guest reaches nothing else: it connects
# only where its command line or config says. {nbd_port} and {closed_port} are filled in at
# boot; nothing listens on the closed one.
NBD_HOST = "10.0.2.2"
NET_IP = f"10.0.2.15::{NBD_HOST}:255.255.255.0:initoverlayfs:eth0:none"
NBD_EXPORT = "bootfs"
NICS = {"virtio-net": "virtio-net-pci", "e1000": "e1000"}


@dataclass(frozen=True)
class Scenario:
    name: str
    kernel: str = "cloud"  # or "generic": storage drivers and ext4 as modules
    interface: str = "virtio-blk"
    append: str = ""
    initrd: str = "plain"  # "bad-config": a broken config; "shell": busybox added;
    #                         "network": built for an nbd: bootfs (config) with --network
    interactions: tuple[Interaction, ...] = ()
    timeout: float = 300.0
    nic: str | None = None  # a NIC (NICS) on QEMU's user network, and then no disk
    cpu: str | None = None  # QEMU's -cpu under TCG; None: its default (no SSSE3, no SSE4.2)
    io_error: str | None = None  # a bootfs file ($kver) whose first block the disk fails
    late_disk: float | None = None  # the disk is hot-plugged this long after the trigger


DEFAULT = Scenario("default")
SCENARIOS = {s.name: s for s in (
    DEFAULT,
    Scenario("label", append=f"rd.initoverlayfs.bootfs=LABEL={images.FS_LABEL}"),
    Scenario("partuuid", append=f"rd.initoverlayfs.bootfs=PARTUUID={images.PART_UUID}"),
    # (on a CPU with SSSE3/AVX2, as real ones have: the CPU-feature modules are loaded)
    Scenario("partlabel", append=f"rd.initoverlayfs.bootfs=PARTLABEL={images.PART_LABEL}",
             cpu="max"),
    Scenario("devpath", append="rd.initoverlayfs.bootfs=/dev/vda2"),
    Scenario("cloud-virtio-scsi", interface="virtio-scsi"),
    Scenario("cloud-nvme", interface="nvme"),
    Scenario("generic-virtio-blk", kernel="generic"),
    Scenario("generic-virtio-scsi", kernel="generic", interface="virtio-scsi"),
    Scenario("generic-nvme", kernel="generic", interface="nvme"),
    Scenario("generic-ahci", kernel="generic", interface="ahci"),
    # (and a module parameter on the command line, which storage-init passes as modprobe would)
    Scenario("debug", append="rd.initoverlayfs.debug loop.max_loop=3"),
    Scenario("quiet", append="quiet"),
    # (alt.img, corrupt.img and noinit.img come from plain mkfs.erofs: no hash tree)
    Scenario("fs-override", append="rd.initoverlayfs.fs=/alt.img rd.initoverlayfs.verity=0"),
    Scenario("init-elsewhere", append="init=/sbin/otherinit"),
    Scenario("fail-no-bootfs", append=f"rd.initoverlayfs.bootfs=UUID={NO_SUCH_UUID} "
                                      "rd.initoverlayfs.timeout=5 quiet"),
    # the disk's driver blacklisted as udev and dracut honour it: never loaded, and named
    Scenario("fail-blacklisted-driver",
             append="modprobe.blacklist=virtio_blk rd.initoverlayfs.timeout=5 quiet"),
    Scenario("fail-no-image", append="rd.initoverlayfs.fs=/missing.img quiet"),
    # a FIFO blocked the boot for ever in open(): no line, no rd.emergency=
    Scenario("fail-fifo-image", append="rd.initoverlayfs.fs=/fifo.img quiet"),
    # the disk fails the image's first block (QEMU's blkdebug): the disk's error, not a build's
    Scenario("fail-io-error", append="rd.initoverlayfs.fs=/ioerror-$kver.img quiet",
             io_error="ioerror-$kver.img"),
    # the bootfs's disk appears 4 s after storage-init has triggered: it waits on uevents
    Scenario("late-disk", interface="virtio-scsi", late_disk=4.0,
             append="rd.initoverlayfs.timeout=60"),
    Scenario("fail-corrupt-image",
             append="rd.initoverlayfs.fs=/corrupt.img rd.initoverlayfs.verity=0 quiet"),
    Scenario("fail-wrong-fstype", append="rd.initoverlayfs.bootfstype=xfs quiet"),
    Scenario("fail-no-init",
             append="rd.initoverlayfs.fs=/noinit.img rd.initoverlayfs.verity=0 quiet"),
    # verified boot: each is a copy of this kernel's own image ($kver in fs= is its version)
    Scenario("fail-verity-flipped-block", append="rd.initoverlayfs.fs=/flipped-$kver.img quiet"),
    Scenario("fail-verity-other-build", append="rd.initoverlayfs.fs=/other-build.img quiet"),
    Scenario("fail-verity-no-tree", append="rd.initoverlayfs.fs=/notree-$kver.img quiet"),
    # a byte that only init reads: the sealed table stops the machine, by rd.emergency
    Scenario("verity-corrupt-halt",
             append="rd.initoverlayfs.fs=/canary-$kver.img rd.emergency=halt panic=1"),
    Scenario("verity-corrupt-reboot", kernel="generic",
             append="rd.initoverlayfs.fs=/canary-$kver.img rd.emergency=reboot"),
    Scenario("fail-bad-config", initrd="bad-config", append="quiet"),
    # the bootfs on NBD: bootfs and ip from the mini-initramfs's config, on both kernels
    Scenario("nbd-cloud-virtio-net", nic="virtio-net", initrd="network"),
    Scenario("nbd-generic-e1000", kernel="generic", nic="e1000", initrd="network"),
    Scenario("fail-nbd-no-interface", nic="virtio-net", initrd="network",
             append=f"ip={NET_IP.replace(':eth0:', ':eth7:')} rd.initoverlayfs.timeout=5 quiet"),
    Scenario("fail-nbd-server-down", nic="virtio-net", initrd="network",
             append=f"rd.initoverlayfs.bootfs=nbd:{NBD_HOST}:{{closed_port}}/{NBD_EXPORT} quiet"),
    Scenario("fail-nbd-no-export", kernel="generic", nic="e1000", initrd="network",
             append=f"rd.initoverlayfs.bootfs=nbd:{NBD_HOST}:{{nbd_port}}/nope quiet"),
    Scenario("fail-nbd-local-build", nic="virtio-net",
             append=f"rd.initoverlayfs.bootfs=nbd:{NBD_HOST}:{{nbd_port}}/{NBD_EXPORT} "
                    f"ip={NET_IP} quiet"),
    Scenario("fail-shell", initrd="shell",
             append=f"rd.shell rd.initoverlayfs.bootfs=UUID={NO_SUCH_UUID} "
                    "rd.initoverlayfs.timeout=3 quiet",
             interactions=((r"initoverlayfs# ", "echo SHELL-$((6*7))\n"),
                           (r"SHELL-42", "exit\n"))),
)}


@dataclass
class Artifacts:
    work: Path
    kernels: dict[str, images.KernelImages]
    disk: images.Disk
    nbd: nbd.NbdServer | None = None  # serving the network builds' bootfs
    initrds: dict[tuple[str, str], Path] = field(default_factory=dict)

    def spec(self, scenario: Scenario) -> VmSpec:
        built = self.kernels[scenario.kernel]
        append = f"{BASE_APPEND} {scenario.append}".strip()
        if "{nbd_port}" in append:
            assert self.nbd is not None, "built without the NBD server"
            append = append.replace("{nbd_port}", str(self.nbd.port))
        append = append.replace("{closed_port}", str(nbd.free_port()))
        initrd = self.initrds[(scenario.kernel, scenario.initrd)]
        if scenario.nic is None:
            return VmSpec(built.kernel.vmlinuz, initrd, self.disk.path, scenario.interface,
                          append, timeout=scenario.timeout, cpu=scenario.cpu,
                          blkdebug=self._blkdebug(scenario, built.kernel.kver),
                          late_disk=scenario.late_disk,
                          qmp=self.work / f"qmp-{scenario.name}.sock")
        # ipv6=off: the guest's link-local chatter stays out of the way
        devices = ("-netdev", "user,id=net0,ipv6=off",
                   "-device", f"{NICS[scenario.nic]},netdev=net0")
        return VmSpec(built.kernel.vmlinuz, initrd, None, append=append,
                      timeout=scenario.timeout, devices=devices)

    def _blkdebug(self, scenario: Scenario, kver: str) -> Path | None:
        if scenario.io_error is None:
            return None
        sector = self.disk.sector_of(scenario.io_error.replace("$kver", kver))
        config = self.work / f"blkdebug-{scenario.name}.conf"
        config.write_text(f'[inject-error]\nevent = "read_aio"\nerrno = "5"\n'
                          f'sector = "{sector}"\nonce = "off"\n')
        return config

    def close(self) -> None:
        if self.nbd is not None:
            self.nbd.close()


def network_config(port: int) -> str:
    """The /etc/initoverlayfs.conf of the network builds: what a user writes for NBD (with
    the bootfs's filesystem, which no fstab entry tells the builder)."""
    return f"bootfs nbd:{NBD_HOST}:{port}/{NBD_EXPORT}\nbootfstype ext4\nip {NET_IP}\n"


def build_network(artifacts: Artifacts, content: Path, flavours: tuple[str, ...]) -> None:
    """The network builds (initoverlayfs-install on a config naming an nbd: bootfs) and the
    qemu-nbd that serves their images in an ext4 bootfs of their own."""
    frozen = default_frozen(Ui("vm"), network=True).folder
    port = nbd.free_port()
    bootfs = {}
    for flavour in flavours:
        kernel = artifacts.kernels[flavour].kernel
        built = images.build_kernel_images(artifacts.work, kernel, content, frozen,
                                           config=network_config(port))
        artifacts.initrds[(flavour, "network")] = built.initramfs
        bootfs[built.image.name] = built.image
    export = images.make_bootfs(artifacts.work, "nbd-bootfs", bootfs)
    artifacts.nbd = nbd.serve(export, NBD_EXPORT, port=port)


def build(work: Path, flavours: tuple[str, ...] = ("cloud", "generic"),
          network: bool = True) -> Artifacts:
    """Everything the scenarios boot; `network`: also the NBD builds and their server
    (close() the result to stop it)."""
    ui = Ui("vm")
    frozen = default_frozen(ui).folder
    content = images.content_tree(work / "content")
    alt = images.content_tree(work / "content-alt")
    (alt / "etc/marker").write_text("from-the-alt-image\n")
    noinit = images.content_tree(work / "content-noinit", with_init=False)
    kernels = {f: images.build_kernel_images(work, fetch(f), content, frozen) for f in flavours}
    extra = {}
    for name, tree in (("alt.img", alt), ("noinit.img", noinit)):
        extra[name] = work / name
        subprocess.run(["mkfs.erofs", "-zlz4hc", str(extra[name]), str(tree)], check=True,
                       capture_output=True)
    corrupt = work / "corrupt.img"
    corrupt.write_bytes(os.urandom(256 * 1024))
    bootfs = {k.image.name: k.image for k in kernels.values()}
    for built in kernels.values():
        kver, image = built.kernel.kver, built.image
        for name, made in (
                (f"flipped-{kver}.img", images.flipped(image, work / f"flipped-{kver}.img", 2048)),
                (f"canary-{kver}.img", images.flipped(image, work / f"canary-{kver}.img",
                                                      images.canary_offset(image))),
                (f"notree-{kver}.img", images.without_tree(image, work / f"notree-{kver}.img")),
                (f"ioerror-{kver}.img", image)):
            extra[name] = made
    # the other kernel's image: what a stale or foreign image looks like to this build
    extra["other-build.img"] = kernels[flavours[-1]].image
    disk = images.make_disk(work, {**bootfs, **extra, "corrupt.img": corrupt},
                            fifos=("fifo.img",))
    artifacts = Artifacts(work, kernels, disk)
    busybox = (content / "bin/busybox").read_bytes()
    for flavour, built in kernels.items():
        base = built.initramfs
        artifacts.initrds[(flavour, "plain")] = base
        artifacts.initrds[(flavour, "bad-config")] = images.with_extra_files(
            base, work / f"bad-config-{flavour}.img",
            {"etc/initoverlayfs.conf": (stat.S_IFREG | 0o644, b"bootfs sda1\n")})
        shell = {"bin/busybox": (stat.S_IFREG | 0o755, busybox)}
        shell |= {f"bin/{a}": (stat.S_IFLNK | 0o777, b"busybox") for a in SHELL_APPLETS}
        artifacts.initrds[(flavour, "shell")] = images.with_extra_files(
            base, work / f"shell-{flavour}.img", shell)
    if network:
        build_network(artifacts, content, flavours)
    return artifacts


def run_all(artifacts: Artifacts, scenarios: list[Scenario],
            parallel: int = 2) -> dict[str, BootResult]:
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {s.name: pool.submit(boot, artifacts.spec(s), s.interactions)
                   for s in scenarios}
        return {name: future.result() for name, future in futures.items()}


# A kernel message printed while the test init writes its report lands inside the report's
# line on the serial console (seen: "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready"
# in the middle of the JSON); the kernel's line ends with its own newline, so taking every
# timestamped kernel line out rejoins the report.
KERNEL_LINE = re.compile(r"\[\s*\d+\.\d+\] [^\n]*\n")


def report_line(run: BootResult, prefix: str) -> str | None:
    """The JSON after `prefix` on the line the test init printed, kernel messages taken out."""
    text = KERNEL_LINE.sub("", run.console)
    return next((ln.split(" ", 1)[1] for ln in text.splitlines() if ln.startswith(prefix)),
                None)


def result_of(run: BootResult) -> dict[str, object]:
    """The test init's one-line report, parsed."""
    line = report_line(run, "INITOVERLAYFS-RESULT ")
    if line is None:
        raise AssertionError("no INITOVERLAYFS-RESULT line\n" + run.describe())
    result: dict[str, object] = json.loads(line)
    return result


def timings_of(run: BootResult) -> dict[str, object]:
    line = report_line(run, "INITOVERLAYFS-TIMINGS ")
    if line is None:
        raise AssertionError("no INITOVERLAYFS-TIMINGS line\n" + run.describe())
    timings: dict[str, object] = json.loads(line)
    return timings


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="initoverlayfs-vm-"))
