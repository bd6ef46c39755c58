"""arm64, as the seed's Raspberry Pi class: storage-init frozen for arm64 on this x86_64
machine, each Debian arm64 kernel (12 and 13) booted on a Cortex-A72 from virtio-blk, an SD
card and a USB stick, verified by dm-verity; and a missing image, with its message and
rd.emergency=poweroff."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest
from initoverlayfs_build.arch import ARM64
from initoverlayfs_build.freeze import folder_arch

from . import arm64, images
from .qemu import BootResult, partition
from .scenarios import result_of, timings_of, workdir

pytestmark = pytest.mark.vm
SUCCESS = [name for name in arm64.SCENARIOS if not name.startswith("fail-")]


@pytest.fixture(scope="module")
def artifacts() -> Iterator[arm64.Arm64Artifacts]:
    work = workdir()
    try:
        yield arm64.build(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def boots(artifacts: arm64.Arm64Artifacts) -> dict[str, BootResult]:
    return arm64.run_all(artifacts)


def booted(boots: dict[str, BootResult], name: str) -> BootResult:
    run = boots[name]
    assert run.returncode == 0, run.describe()  # the guest powered itself off
    return run


def test_the_frozen_storage_init_is_an_arm64_program(
        artifacts: arm64.Arm64Artifacts) -> None:
    assert folder_arch(artifacts.frozen) == ARM64


@pytest.mark.parametrize("name", SUCCESS)
def test_arm64_boot_reaches_init_verified_from_each_medium(
        boots: dict[str, BootResult], name: str) -> None:
    run = booted(boots, name)
    scenario = arm64.SCENARIOS[name]
    why = run.describe()
    assert "Machine model: linux,dummy-virt" in run.console, why
    r = result_of(run)
    assert r["pid"] == 1, why
    root, lower, boot = str(r["root"]).split(), str(r["lower"]).split(), str(r["boot"]).split()
    assert root[0] == "overlay" and "lowerdir=/run/initoverlayfs/lower" in root[2], why
    # verified: EROFS is mounted from the dm-verity device over the loop device
    assert lower[0] == "erofs" and re.fullmatch(r"/dev/dm-\d+", lower[1]), why
    assert "ro" in lower[2].split(","), why
    assert r["canary"] is True, why  # every byte of a file storage-init never read
    assert boot[:2] == ["ext4", f"/dev/{partition(scenario.interface, 2)}"], why
    assert r["marker"] == images.MARKER, why
    assert r["freed"] is True and r["writable"] is True, why
    assert "pyudev could not" not in run.console, why
    # storage-init's own timings made it to the booted system
    steps = [str(s["name"]) for s in timings_of(run)["steps"]]  # type: ignore[attr-defined]
    assert {"wait-bootfs", "setup-verity", "mount-image"} <= set(steps), (steps, why)


def test_arm64_missing_image_names_the_cause_and_powers_off(
        boots: dict[str, BootResult]) -> None:
    run = booted(boots, "fail-no-image")  # exit 0: the guest powered off
    assert re.search(r"storage-init: attach-loop: Failed to find the image /boot/missing.img "
                     rf"on UUID={images.FS_UUID}: No such file or directory; check fs in "
                     r"/etc/initoverlayfs.conf or rd.initoverlayfs.fs=", run.console), (
        run.describe())
    assert "storage-init: rd.emergency=poweroff: poweroff now" in run.console, run.describe()
    assert "reboot: Power down" in run.console, run.describe()
    assert "INITOVERLAYFS-RESULT" not in run.console
    assert "Kernel panic" not in run.console
