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

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from initoverlayfs_build import pair

from .bootloader_system import ACTION, ESP, SYSTEMD_BOOT, edit_disk, installed_disk
from .qemu import BootResult, VmSpec, boot, uefi_vars
from .test_bootloader import (
    RUN_TIMEOUT,
    STORAGE_INIT_FAILED,
    deb,
    kver_of,
    module_names,
    reports,
    work,
)

pytestmark = pytest.mark.vm
__all__ = ["deb", "work"]  # the fixtures, shared with test_bootloader


@pytest.fixture(scope="module")
def machine(work: Path, deb: Path) -> Iterator[tuple[Path, str]]:
    disk, log = installed_disk(work, deb, SYSTEMD_BOOT)
    try:
        yield disk, log
    finally:
        disk.unlink()


def power_on(disk: Path, work: Path) -> BootResult:
    """Boot through OVMF until the machine powers off; a reboot starts it again."""
    spec = VmSpec(None, None, disk, memory_mb=1024, timeout=RUN_TIMEOUT, snapshot=False,
                  reboot=True, uefi_vars=uefi_vars(work))
    return boot(spec)


def entries(disk: Path) -> dict[str, str]:
    """The ESP's loader entries: file name -> content."""
    out = edit_disk(disk, f"cd $ROOT{ESP}/loader/entries && for f in *.conf; do "
                          "echo \"=== $f\"; cat \"$f\"; done")
    return {name: body for name, body in re.findall(r"^=== (\S+)\n(.*?)(?=^=== |\Z)", out,
                                                    re.M | re.S)}


@pytest.fixture(scope="module")
def first(machine: tuple[Path, str], work: Path) -> BootResult:
    return power_on(machine[0], work)


@pytest.fixture(scope="module")
def fallback(machine: tuple[Path, str], work: Path, first: BootResult) -> BootResult:
    disk = machine[0]
    kver = kver_of(disk)
    (image,) = [n for n in edit_disk(disk, "ls $ROOT/boot").split() if pair.is_image_of(n, kver)]
    edit_disk(disk, f"printf '\\377' | dd of=$ROOT/boot/{image} bs=1 seek=1024 "
                    "conv=notrunc status=none")
    return power_on(disk, work)


@pytest.fixture(scope="module")
def removed(machine: tuple[Path, str], work: Path, fallback: BootResult) -> BootResult:
    disk = machine[0]
    edit_disk(disk, f"echo 'apt-get remove -y initoverlayfs' > $ROOT{ACTION}")
    return power_on(disk, work)


def test_apt_install_adds_a_counted_entry_before_the_classic_one(
        machine: tuple[Path, str]) -> None:
    disk, log = machine
    kver = kver_of(disk)
    found = entries(disk)
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
    mini = edit_disk(disk, f"cat $ROOT{ESP}/{token}/{kver}/initoverlayfs.img | base64 -w0")
    modules = module_names(base64.b64decode(mini))
    assert {"virtio_blk", "ahci", "nvme"} <= modules, modules  # built in a chroot
    names = edit_disk(disk, "ls $ROOT/boot").split()
    assert len([n for n in names if pair.is_image_of(n, kver)]) == 1, names


def test_systemd_boot_boots_through_initoverlayfs_and_gives_the_try_back(
        first: BootResult) -> None:
    (report,) = reports(first)
    assert report["state"] == ["running"], first.describe()
    assert report["storage-init"] == ["1"], first.describe()
    assert "-initoverlayfs" in report["loader-selected"][0], (report, first.describe())
    assert any("marked good" in line for line in report.get("good-unit", [])), report
    listed = report["loader-entries"][0].split()
    assert [n for n in listed if n.endswith("-initoverlayfs+1.conf")], listed  # rearmed
    assert report["boot"][0].split()[1].startswith("rw"), report


def test_a_corrupt_image_falls_back_to_the_classic_entry_by_itself(
        fallback: BootResult) -> None:
    failed = re.search(STORAGE_INIT_FAILED, fallback.console)
    assert failed, fallback.describe()
    assert "rebooting in" in fallback.console[failed.end():], fallback.describe()
    (report,) = reports(fallback)
    assert report["state"] == ["running"], fallback.describe()
    assert report["storage-init"] == ["0"], fallback.describe()
    selected = report["loader-selected"][0]  # read from systemd-boot's EFI variable
    assert selected and "-initoverlayfs" not in selected, report
    listed = report["loader-entries"][0].split()
    assert [n for n in listed if n.endswith("-initoverlayfs+0-1.conf")], listed
    said = " ".join(report.get("good-unit", []))
    assert "did not come up" in said and "systemd-boot booted" in said, report
    assert "next boot: the classic initramfs" in report["boot-status"][0], report


def test_apt_remove_leaves_nothing_on_the_esp_or_boot(removed: BootResult) -> None:
    before, after = reports(removed)
    assert before["action-exit"] == ["0"], removed.describe()
    assert after["state"] == ["running"], removed.describe()
    assert after["storage-init"] == ["0"]
    listed = after["loader-entries"][0].split()
    assert listed and not [n for n in listed if "initoverlayfs" in n], listed
    assert before["esp-ours"] == ["1"] and after["esp-ours"] == ["0"], (before, after)
    files = after["boot-files"][0].split()
    assert not [f for f in files if f.startswith(("initramfs-", "initoverlayfs-"))], files
