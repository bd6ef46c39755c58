"""The standard fake machine: a virtio disk whose driver must be loaded from its modalias,
with a GPT partition holding an ext4 /boot. The superblock and partition table bytes are made
by the real mkfs.ext4 and sgdisk, so probing runs on real on-disk formats."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from storage_init.boot import Paths
from storage_init.main import boot_pid1

from .fakekernel import Event, Executed, FakeKernel, Paused, Rebooted

BOOT_UUID = "3f1d2c4b-5a69-4788-9e0a-b1c2d3e4f506"
BOOT_LABEL = "BOOT"
PARTUUID = "6a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9"
PARTLABEL = "bootpart"
KVER = "6.1.0-test"
IMAGE = f"/initoverlayfs-{KVER}.img"
MODDIR = f"/lib/modules/{KVER}"
PROBE_BYTES = 128 * 1024  # enough for every superblock the probe reads

MODULES_DEP = """\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: {virtio}
kernel/drivers/block/virtio_blk.ko: {virtio}
kernel/drivers/block/loop.ko:
kernel/fs/erofs/erofs.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/arch/x86/crypto/sha256-ssse3.ko:
""".format(virtio="kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko")
MODULES_ALIAS = """\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias devname:loop-control loop
alias fs-erofs erofs
alias fs-overlay overlay
alias fs-ext4 ext4
alias fs-ext3 ext4
alias crypto-sha256 sha256_ssse3
alias cpu:type:x86,ven*fam*mod*:feature:*0089* sha256_ssse3
"""
PCI_MODALIAS = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"
VIRTIO_MODALIAS = "virtio:d00000002v00001AF4"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's {package} (.ci/run does)")
    return path


@pytest.fixture(scope="session")
def disk_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """First bytes of a real GPT disk and of a real ext4 filesystem, keyed by kind."""
    tmp = tmp_path_factory.mktemp("disks")
    ext4, disk = tmp / "boot.ext4", tmp / "disk.img"
    subprocess.run([_tool("mkfs.ext4", "e2fsprogs"), "-q", "-F", "-U", BOOT_UUID, "-L",
                    BOOT_LABEL, str(ext4), "4M"], check=True)
    with disk.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
    subprocess.run([_tool("sgdisk", "gdisk"), "-n", "1:2048:0", "-c", f"1:{PARTLABEL}",
                    "-u", f"1:{PARTUUID}", str(disk)], check=True, capture_output=True)
    return {"ext4": ext4.read_bytes()[:PROBE_BYTES], "gpt": disk.read_bytes()[:PROBE_BYTES]}


def add_disk(k: FakeKernel, disk: str, table: bytes, parts: dict[int, bytes]) -> None:
    """A block device with its sysfs entries and devtmpfs nodes, as the kernel makes them."""
    k.add_file(f"/sys/block/{disk}/size", b"16384\n")
    k.add_file(f"/sys/block/{disk}/queue/logical_block_size", b"512\n")
    k.add_file(f"/dev/{disk}", table)
    for number, data in parts.items():
        name = f"{disk}{number}"
        k.add_file(f"/sys/block/{disk}/{name}/partition", f"{number}\n".encode())
        k.add_file(f"/dev/{name}", data)


def block_event(name: str, at: float, then: Callable[[FakeKernel], None] | None = None
                ) -> Event:
    return Event(at, {"ACTION": "add", "SUBSYSTEM": "block", "DEVNAME": name,
                      "DEVPATH": f"/devices/virtual/block/{name}"}, then)


class Machine:
    """A fake machine plus the runner that boots storage-init on it as PID 1."""

    def __init__(self, disks: dict[str, bytes]) -> None:
        self.disks = disks
        self.k = k = FakeKernel(release=KVER)
        self.config(f"bootfs UUID={BOOT_UUID}\nbootfstype ext4\n")
        k.add_file("/proc/cmdline", b"console=ttyS0 quiet\n")
        k.add_file("/proc/sys/kernel/printk", b"4\t4\t1\t7\n")
        k.add_file("/dev/kmsg")
        k.add_file("/dev/loop-control")
        k.add_file(f"{MODDIR}/modules.dep", MODULES_DEP.encode())
        k.add_file(f"{MODDIR}/modules.alias", MODULES_ALIAS.encode())
        for line in MODULES_DEP.splitlines():
            k.add_file(f"{MODDIR}/{line.split(':')[0]}", b"\x7fELF")
        k.dirs.add("/sys/block")
        k.udev_paths = ["/sys/devices/pci0000:00/0000:00:04.0"]
        k.filesystems["/dev/vda1"] = {IMAGE: b"erofs image"}
        # The disk shows up only once its driver is loaded, as on a generic kernel.
        k.events = [
            Event(0.010, {"ACTION": "add", "SUBSYSTEM": "pci", "MODALIAS": PCI_MODALIAS,
                          "DEVPATH": "/devices/pci0000:00/0000:00:04.0"}),
            Event(0.020, {"ACTION": "add", "SUBSYSTEM": "virtio", "MODALIAS": VIRTIO_MODALIAS,
                          "DEVPATH": "/devices/pci0000:00/0000:00:04.0/virtio0"}),
            block_event("vda", 0.030, lambda k: add_disk(k, "vda", disks["gpt"],
                                                         {1: disks["ext4"]})),
        ]
        self.result: BaseException | None = None

    def cmdline(self, text: str) -> None:
        self.k.files["/proc/cmdline"] = text.encode()

    def config(self, text: str) -> None:
        self.k.files["/etc/initoverlayfs.conf"] = text.encode()

    def boot(self, argv: list[str] | None = None) -> BaseException:
        """Run storage-init as PID 1 until it execs, reboots or blocks for good."""
        try:
            boot_pid1(self.k, argv or ["/init"], {"TERM": "linux"}, Paths())
        except (Executed, Rebooted, Paused) as exc:
            self.result = exc
            return exc
        raise AssertionError("storage-init returned as PID 1")

    def direct(self) -> str:
        """What storage-init wrote to the console itself (fd 2)."""
        return b"".join(self.k.written.get("fd2", [])).decode()

    def console(self) -> str:
        """What a person sees: direct writes, and the kmsg lines the kernel prints because
        their level is below the console log level (the first field of printk)."""
        level = int(self.k.files["/proc/sys/kernel/printk"].split()[0])
        shown = [line[3:] for line in self.kmsg().splitlines(keepends=True)
                 if int(line[1]) < level]
        return "".join(shown) + self.direct()

    def kmsg(self) -> str:
        return b"".join(self.k.written.get("/dev/kmsg", [])).decode()


@pytest.fixture
def machine(disk_bytes: dict[str, bytes]) -> Iterator[Machine]:
    yield Machine(disk_bytes)


__all__ = ["BOOT_LABEL", "BOOT_UUID", "IMAGE", "KVER", "PARTLABEL", "PARTUUID", "Machine",
           "add_disk", "block_event"]
