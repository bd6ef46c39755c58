"""The arm64 boots as data and the artifacts they share: storage-init frozen for arm64 (in a
Debian arm64 tree, through qemu-user), Debian 12's and 13's arm64 kernels with their pairs
built by `initoverlayfs-install` on this x86_64 machine, and one disk, booted on QEMU's virt
machine with the Raspberry Pi 4's core from the seed's media: virtio-blk, an SD card on a PCI
SD host controller, a USB stick behind xHCI."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from initoverlayfs_build.arch import ARM64
from initoverlayfs_build.freeze import default_frozen
from initoverlayfs_build.ui import Ui

from tests.support.debian_kernel import download, fetch_foreign

from . import images
from .qemu import BootResult, VmSpec, boot
from .scenarios import BASE_APPEND

SUITES = {"bookworm": "Debian 12", "trixie": "Debian 13"}
# the seed's media, and a disk behind a device-tree platform device (virtio-mmio: its driver
# loads only when storage-init triggers the platform subsystem, as a Pi's SD controller's)
MEDIA = ("virtio-blk", "sd", "usb-storage", "virtio-mmio")


@dataclass(frozen=True)
class Arm64Scenario:
    name: str
    suite: str
    interface: str
    append: str = ""
    timeout: float = 600.0  # TCG emulates every arm64 instruction: a boot takes a minute or two


SCENARIOS = {s.name: s for s in (
    *(Arm64Scenario(f"{suite}-{medium}", suite, medium) for suite in SUITES for medium in MEDIA),
    Arm64Scenario("fail-no-image", "bookworm", "sd",
                  append="rd.initoverlayfs.fs=/missing.img quiet"),
)}


@dataclass(frozen=True)
class Arm64Artifacts:
    work: Path
    frozen: Path
    kernels: dict[str, images.KernelImages]  # by suite
    disk: images.Disk

    def spec(self, scenario: Arm64Scenario) -> VmSpec:
        built = self.kernels[scenario.suite]
        return VmSpec(built.kernel.vmlinuz, built.initramfs, self.disk.path,
                      scenario.interface, f"{BASE_APPEND} {scenario.append}".strip(),
                      timeout=scenario.timeout, arch="arm64")


def arm64_busybox(work: Path) -> Path:
    """Debian 12's busybox-static for arm64: the test init's shell in the image."""
    unpacked = work / "busybox-static-arm64"
    subprocess.run(["dpkg-deb", "-x", str(download("busybox-static", "bookworm")),
                    str(unpacked)], check=True)
    return unpacked / "bin/busybox"


def build(work: Path) -> Arm64Artifacts:
    frozen = default_frozen(Ui("vm"), arch=ARM64).folder
    content = images.content_tree(work / "content", busybox=arm64_busybox(work))
    kernels = {suite: images.build_kernel_images(work, fetch_foreign(suite), content, frozen)
               for suite in SUITES}
    disk = images.make_disk(work, {k.image.name: k.image for k in kernels.values()},
                            power_of_two=True)
    return Arm64Artifacts(work, frozen, kernels, disk)


def run_all(artifacts: Arm64Artifacts, parallel: int = 2) -> dict[str, BootResult]:
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {s.name: pool.submit(boot, artifacts.spec(s)) for s in SCENARIOS.values()}
        return {name: future.result() for name, future in futures.items()}
