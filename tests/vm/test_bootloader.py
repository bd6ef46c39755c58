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

import pytest
from initoverlayfs_build import pair

from .bootloader_system import SUITES
from .debian_system import BOOT_UUID
from .machines import RUNNER, MachineRun, reports

pytestmark = pytest.mark.vm
STORAGE_INIT_FAILED = (r"storage-init: setup-verity: Failed to verify /boot/initoverlayfs-\S+: "
                       r"dm-verity rejects it")


@pytest.fixture(scope="module", params=list(SUITES))
def machine_run(request: pytest.FixtureRequest) -> MachineRun:
    """The machine's whole run (machines.py: in the background since the session began)."""
    return RUNNER.result(request.param)


def test_apt_install_builds_the_pair_and_grub_boots_it_by_default(
        machine_run: MachineRun) -> None:
    installed = machine_run.need(machine_run.installed, "install")
    kver, names, log = installed.kver, installed.boot_files, installed.log
    assert f"initramfs-{kver}.img" in names, log
    assert len([n for n in names if pair.is_image_of(n, kver)]) == 1, (names, log)
    assert f"initrd.img-{kver}" in names  # the classic initramfs stays
    # built in a chroot, where the target's disk cannot be seen: the common drivers
    modules = installed.mini_modules
    assert {"virtio_blk", "ahci", "nvme"} <= modules, (modules, log)
    grub = installed.grub_cfg
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
        machine_run: MachineRun) -> None:
    first = machine_run.need(machine_run.first, "the first boot")
    (report,) = reports(first, 1)
    assert report["state"] == ["running"], first.describe()
    assert report["storage-init"] == ["1"], first.describe()
    assert report["grubenv"] == [""], first.describe()  # "trying" cleared
    assert any("marked good" in line for line in report.get("good-unit", [])), report
    assert "Loading Linux" in first.console and "through initoverlayfs" in first.console
    assert "run-init" not in first.console, first.describe()  # ours pivoted, no complaint
    assert report["boot"][0].split()[1].startswith("rw"), report  # /boot released, rw


def test_a_corrupt_image_falls_back_to_the_classic_initramfs_by_itself(
        machine_run: MachineRun) -> None:
    fallback = machine_run.need(machine_run.fallback, "the fallback boot")
    failed = re.search(STORAGE_INIT_FAILED, fallback.console)
    assert failed, fallback.describe()
    assert "rebooting in" in fallback.console[failed.end():], fallback.describe()
    (report,) = reports(fallback, 1)  # the failed boot reached no report; the classic one did
    assert report["state"] == ["running"], fallback.describe()
    assert report["storage-init"] == ["0"], fallback.describe()
    assert report["grubenv"] == ["initoverlayfs_boot=failed"], report
    said = " ".join(report.get("good-unit", []))
    assert "did not come up" in said and "initoverlayfs-boot on" in said, report
    assert "next boot: the classic initramfs" in report["boot-status"][0], report


def test_apt_remove_gives_the_classic_boot_back(machine_run: MachineRun) -> None:
    removed = machine_run.need(machine_run.removed, "the boot after apt-get remove")
    before, after = reports(removed, 2)
    assert before["action-exit"] == ["0"], removed.describe()
    assert after["state"] == ["running"], removed.describe()
    assert after["storage-init"] == ["0"]
    assert after["our-entries"] == ["0"], after
    files = after["boot-files"][0].split()
    assert not [f for f in files if f.startswith(("initramfs-", "initoverlayfs-"))], files
    assert after["grubenv"] == [""], after
