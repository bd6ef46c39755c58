"""Installed for real on Debian 13 with systemd-boot on UEFI (OVMF) and dracut, booted from
the disk by the firmware, never QEMU's -kernel. As a user: `apt-get install
./initoverlayfs_*.deb`, then the kernel reinstalled with apt (Debian's hook hands it to
kernel-install: dracut's plugin stages the classic initrd, ours builds the pair from it and
adds its own Boot Loader Specification entry with boot counting), then:

1. systemd-boot's default entry is initoverlayfs's: it boots to multi-user.target, and after
   systemd-bless-boot the entry has its try back;
2. a byte of the image flipped on the disk: that boot fails (dm-verity), storage-init
   restarts the machine, systemd-boot finds the entry's tries used up and boots the classic
   entry by itself, and the journal says why;
3. `apt-get remove initoverlayfs` in the machine: the next boot is the classic one, with
   none of our entries or files left on the ESP or /boot.

One machine, one disk that its boots write to, in that order."""

from __future__ import annotations

import re

import pytest
from initoverlayfs_build import pair

from .bootloader_system import SYSTEMD_BOOT
from .machines import RUNNER, MachineRun, reports
from .test_bootloader import STORAGE_INIT_FAILED

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def machine_run() -> MachineRun:
    """The machine's whole run (machines.py: in the background since the session began)."""
    return RUNNER.result(SYSTEMD_BOOT)


def test_apt_install_adds_a_counted_entry_before_the_classic_one(
        machine_run: MachineRun) -> None:
    installed = machine_run.need(machine_run.installed, "install")
    kver, found, log = installed.kver, installed.entries, installed.log
    ours = [name for name in found if "-initoverlayfs" in name]
    classic = [name for name in found if "-initoverlayfs" not in name]
    assert len(ours) == 1 and ours[0].endswith(f"-{kver}-initoverlayfs+1.conf"), (found, log)
    assert len(classic) == 1 and classic[0].endswith(f"-{kver}.conf"), found
    token = classic[0].removesuffix(f"-{kver}.conf")
    body, classic_body = found[ours[0]], found[classic[0]]
    initrds = re.findall(r"^initrd\s+(\S+)", body, re.M)
    assert initrds == [f"/{token}/{kver}/initoverlayfs.img"], body
    # the classic entry keeps dracut's initrd (Debian's 55-initrd.install adds its copy too)
    assert f"/{token}/{kver}/initrd" in re.findall(r"^initrd\s+(\S+)", classic_body, re.M)
    # the same kernel, command line and sort order as the classic entry; only the title differs
    for key in ("linux", "options", "sort-key", "machine-id"):
        assert re.findall(rf"^{key}\s.*", body, re.M) == re.findall(rf"^{key}\s.*",
                                                                     classic_body, re.M), key
    assert f"version {kver} (initoverlayfs)" in body.splitlines(), body
    assert re.search(r"^title .* \(initoverlayfs\)$", body, re.M), body
    modules = installed.mini_modules  # the ESP's initoverlayfs.img
    assert {"virtio_blk", "ahci", "nvme"} <= modules, modules  # built in a chroot
    names = installed.boot_files
    assert len([n for n in names if pair.is_image_of(n, kver)]) == 1, names


def test_systemd_boot_boots_through_initoverlayfs_and_gives_the_try_back(
        machine_run: MachineRun) -> None:
    first = machine_run.need(machine_run.first, "the first boot")
    (report,) = reports(first, 1)
    assert report["state"] == ["running"], first.describe()
    assert report["storage-init"] == ["1"], first.describe()
    assert "-initoverlayfs" in report["loader-selected"][0], (report, first.describe())
    assert any("marked good" in line for line in report.get("good-unit", [])), report
    listed = report["loader-entries"][0].split()
    assert [n for n in listed if n.endswith("-initoverlayfs+1.conf")], listed  # rearmed
    assert report["boot"][0].split()[1].startswith("rw"), report


def test_a_corrupt_image_falls_back_to_the_classic_entry_by_itself(
        machine_run: MachineRun) -> None:
    fallback = machine_run.need(machine_run.fallback, "the fallback boot")
    failed = re.search(STORAGE_INIT_FAILED, fallback.console)
    assert failed, fallback.describe()
    assert "rebooting in" in fallback.console[failed.end():], fallback.describe()
    (report,) = reports(fallback, 1)
    assert report["state"] == ["running"], fallback.describe()
    assert report["storage-init"] == ["0"], fallback.describe()
    selected = report["loader-selected"][0]  # read from systemd-boot's EFI variable
    assert selected and "-initoverlayfs" not in selected, report
    listed = report["loader-entries"][0].split()
    assert [n for n in listed if n.endswith("-initoverlayfs+0-1.conf")], listed
    said = " ".join(report.get("good-unit", []))
    assert "did not come up" in said and "systemd-boot booted" in said, report
    assert "next boot: the classic initramfs" in report["boot-status"][0], report


def test_apt_remove_leaves_nothing_on_the_esp_or_boot(machine_run: MachineRun) -> None:
    removed = machine_run.need(machine_run.removed, "the boot after apt-get remove")
    before, after = reports(removed, 2)
    assert before["action-exit"] == ["0"], removed.describe()
    assert after["state"] == ["running"], removed.describe()
    assert after["storage-init"] == ["0"]
    listed = after["loader-entries"][0].split()
    assert listed and not [n for n in listed if "initoverlayfs" in n], listed
    assert before["esp-ours"] == ["1"] and after["esp-ours"] == ["0"], (before, after)
    files = after["boot-files"][0].split()
    assert not [f for f in files if f.startswith(("initramfs-", "initoverlayfs-"))], files
