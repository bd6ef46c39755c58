"""Installed for real, booted as a machine boots: Debian 12 and Debian 13 (6.12, xz modules,
merged /usr), each with initramfs-tools and GRUB on BIOS (SeaBIOS), never QEMU's -kernel.
As a user: `apt-get install ./initoverlayfs_*.deb`, then the kernel reinstalled with apt
(Debian's hooks build the pair, update-grub adds the entry), then boots through the firmware
and GRUB:

1. GRUB's default entry boots through initoverlayfs, up to multi-user.target, and the boot
   is marked good;
2. a byte of the image flipped on the disk: that boot fails (dm-verity), storage-init
   restarts the machine, and GRUB boots the classic initramfs by itself, which says why in
   the journal;
3. `apt-get remove initoverlayfs` in the machine: the next boot is the classic one, with
   nothing of ours left in /boot or grub.cfg.

One machine per Debian version, one disk that its boots write to, in that order."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from initoverlayfs_build import cpio, initramfs, pair
from initoverlayfs_build.ui import Ui

from .bootloader_system import ACTION, SUITES, edit_disk, installed_disk, read_boot_file
from .debian_system import BOOT_UUID, parse_report
from .qemu import BootResult, VmSpec, boot

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]
# A Debian boot takes 40-60 s here under TCG; a run holds up to three boots and an apt run.
RUN_TIMEOUT = 900
STORAGE_INIT_FAILED = (r"storage-init: setup-verity: Failed to verify /boot/initoverlayfs-\S+: "
                       r"dm-verity rejects it")


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="initoverlayfs-grub-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def deb(work: Path) -> Path:
    out = subprocess.run([str(REPO / "scripts/package"), "--out", str(work / "dist")],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return Path(out.stdout.split()[0])


@pytest.fixture(scope="module", params=list(SUITES))
def machine(request: pytest.FixtureRequest, work: Path, deb: Path) -> Iterator[tuple[Path, str]]:
    disk, log = installed_disk(work, deb, request.param)
    try:
        yield disk, log
    finally:
        disk.unlink()  # 1-2 GB of RAM on the tmpfs


def power_on(disk: Path) -> BootResult:
    """Boot the machine until it powers off; a reboot starts it again, as on hardware."""
    spec = VmSpec(None, None, disk, memory_mb=1024, timeout=RUN_TIMEOUT, snapshot=False,
                  reboot=True)
    return boot(spec)


def reports(run: BootResult) -> list[dict[str, list[str]]]:
    """One report per boot that reached the report unit, in order."""
    return [parse_report(part) for part in run.console.split("REPORT END")[:-1]]


def module_names(mini: bytes) -> set[str]:
    archive = initramfs.unpacked_archive(Ui("tests", quiet=True), mini)
    return {Path(e.name).name.split(".ko")[0] for e in cpio.read_all(archive)
            if ".ko" in e.name}


def kver_of(disk: Path) -> str:
    return edit_disk(disk, "ls $ROOT/lib/modules").split()[0]


@pytest.fixture(scope="module")
def first(machine: tuple[Path, str]) -> BootResult:
    return power_on(machine[0])


@pytest.fixture(scope="module")
def fallback(machine: tuple[Path, str], first: BootResult) -> BootResult:
    disk = machine[0]
    kver = kver_of(disk)
    (image,) = [n for n in edit_disk(disk, "ls $ROOT/boot").split() if pair.is_image_of(n, kver)]
    # a byte of the EROFS superblock (at 1024): dm-verity refuses its block, the mount fails
    edit_disk(disk, f"printf '\\377' | dd of=$ROOT/boot/{image} bs=1 seek=1024 "
                    "conv=notrunc status=none")
    return power_on(disk)


@pytest.fixture(scope="module")
def removed(machine: tuple[Path, str], fallback: BootResult) -> BootResult:
    disk = machine[0]
    edit_disk(disk, f"echo 'apt-get remove -y initoverlayfs' > $ROOT{ACTION}")
    return power_on(disk)


def test_apt_install_builds_the_pair_and_grub_boots_it_by_default(
        machine: tuple[Path, str]) -> None:
    disk, log = machine
    kver = kver_of(disk)
    names = edit_disk(disk, "ls $ROOT/boot").split()
    assert f"initramfs-{kver}.img" in names, log
    assert len([n for n in names if pair.is_image_of(n, kver)]) == 1, (names, log)
    assert f"initrd.img-{kver}" in names  # the classic initramfs stays
    # built in a chroot, where the target's disk cannot be seen: the common drivers
    modules = module_names(read_boot_file(disk, f"initramfs-{kver}.img"))
    assert {"virtio_blk", "ahci", "nvme"} <= modules, (modules, log)
    grub = read_boot_file(disk, "grub/grub.cfg").decode()
    entries = re.findall(r"^menuentry '([^']*)'.*?^}", grub, re.M | re.S)
    bodies = re.findall(r"^menuentry .*?^}", grub, re.M | re.S)
    assert "with initoverlayfs" in entries[0], entries
    assert f"initrd\t/initramfs-{kver}.img" in bodies[0]
    assert f"initrd\t/initrd.img-{kver}" in bodies[1]  # the classic one, next
    assert "set fallback=1" in grub
    # /boot found by its UUID, as on a machine (not through the image builder's loop device)
    assert f"search --no-floppy --fs-uuid --set=root {BOOT_UUID}" in bodies[0], bodies[0]
    assert "loopback" not in grub, grub


def test_the_default_entry_boots_through_initoverlayfs_and_is_marked_good(
        first: BootResult) -> None:
    (report,) = reports(first)
    assert report["state"] == ["running"], first.describe()
    assert report["storage-init"] == ["1"], first.describe()
    assert report["grubenv"] == [""], first.describe()  # "trying" cleared
    assert any("marked good" in line for line in report.get("good-unit", [])), report
    assert "Loading Linux" in first.console and "through initoverlayfs" in first.console
    assert "run-init" not in first.console, first.describe()  # ours pivoted, no complaint
    assert report["boot"][0].split()[1].startswith("rw"), report  # /boot released, rw


def test_a_corrupt_image_falls_back_to_the_classic_initramfs_by_itself(
        fallback: BootResult) -> None:
    failed = re.search(STORAGE_INIT_FAILED, fallback.console)
    assert failed, fallback.describe()
    assert "rebooting in" in fallback.console[failed.end():], fallback.describe()
    (report,) = reports(fallback)  # the failed boot reached no report; the classic one did
    assert report["state"] == ["running"], fallback.describe()
    assert report["storage-init"] == ["0"], fallback.describe()
    assert report["grubenv"] == ["initoverlayfs_boot=failed"], report
    said = " ".join(report.get("good-unit", []))
    assert "did not come up" in said and "initoverlayfs-boot on" in said, report
    assert "next boot: the classic initramfs" in report["boot-status"][0], report


def test_apt_remove_gives_the_classic_boot_back(removed: BootResult) -> None:
    before, after = reports(removed)
    assert before["action-exit"] == ["0"], removed.describe()
    assert after["state"] == ["running"], removed.describe()
    assert after["storage-init"] == ["0"]
    assert after["our-entries"] == ["0"], after
    files = after["boot-files"][0].split()
    assert not [f for f in files if f.startswith(("initramfs-", "initoverlayfs-"))], files
    assert after["grubenv"] == [""], after
