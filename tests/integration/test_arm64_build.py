"""The builder for arm64 on this x86_64 machine, on real Debian arm64 packages (Debian 12's and
13's kernels, apt-get download): the kernel's CPU read from its config and from its modules,
the Raspberry Pi class's drivers chosen from its modules, the arm64 frozen storage-init's
loader and libraries taken from the Debian arm64 tree it was frozen in, and the refusals that
keep this machine's programs out of an arm64 boot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from initoverlayfs_build import arch, cpio, install, kmods
from initoverlayfs_build.freeze import LIBRARIES_MARK, Frozen, default_frozen
from initoverlayfs_build.ui import Ui

from tests.support.debian_kernel import DebianKernel, fetch_foreign

from .test_builder_real import make_sysroot, unpack

pytestmark = pytest.mark.integration
UI = Ui("test", quiet=True)
FSTAB = "UUID=5b4a0c1e-7d51-4f0e-9a43-1f0e2d3c4b5a /boot ext4 defaults 0 2\n"


@pytest.fixture(scope="module")
def frozen() -> Frozen:
    return default_frozen(UI, arch=arch.ARM64)


@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def kernel(request: pytest.FixtureRequest) -> DebianKernel:
    return fetch_foreign(request.param)


@pytest.fixture
def content(tmp_path: Path) -> Path:
    tree = tmp_path / "content"
    (tree / "sbin").mkdir(parents=True)
    (tree / "sbin/init").write_text("#!/bin/sh\n")
    return tree


def test_the_kernels_cpu_comes_from_its_config_else_its_modules(
        kernel: DebianKernel) -> None:
    config = kernel.root / "boot" / f"config-{kernel.kver}"
    assert arch.of_kernel_config(config) is arch.ARM64
    # (Debian 13's modules are .ko.xz: read decompressed)
    assert kmods.modules_arch(UI, kernel.modules) is arch.ARM64
    assert install.kernel_arch(UI, None, config.with_name("none"), kernel.modules) is arch.ARM64


def test_the_dry_run_ships_the_pi_class_drivers_and_the_trees_libraries(
        tmp_path: Path, kernel: DebianKernel, frozen: Frozen, content: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    sysroot = make_sysroot(tmp_path / "root", kernel, FSTAB)
    assert install.main(["--sysroot", str(sysroot), "--kver", kernel.kver, "--dry-run",
                         "--from-dir", str(content)]) == 0
    out = capsys.readouterr().out
    assert f"dry run for kernel {kernel.kver} (arm64)" in out, out
    tree = (frozen.folder / LIBRARIES_MARK).read_text().strip()
    assert f"its arm64 libraries from {tree}" in out, out
    listed = {line.split()[0] for line in out.split("in load order):\n", 1)[1].splitlines()
              if line.startswith("  ")}
    # SD (PCI and the Pi 4's own controller), USB storage, virtio on MMIO, NVMe; and the
    # arm64 hash the kernel checks signatures with
    for module in ("sdhci_pci", "sdhci_iproc", "xhci_pci", "usb_storage", "uas",
                   "virtio_mmio", "nvme", "dm_verity", "erofs", "ext4"):
        assert module in listed, (module, out)
    assert listed & {"sha2_ce", "sha256_arm64"}, out
    assert "udev_trigger block virtio pci nvme scsi platform" in out, out


def test_the_mini_initramfs_carries_the_arm64_loader_and_libraries(
        tmp_path: Path, kernel: DebianKernel, frozen: Frozen, content: Path) -> None:
    sysroot = make_sysroot(tmp_path / "root", kernel, FSTAB)
    assert install.main(["--sysroot", str(sysroot), "--kver", kernel.kver, "-q",
                         "--from-dir", str(content)]) == 0
    entries = {e.name: e for e in cpio.read_all(unpack(sysroot / f"boot/initramfs-"
                                                                  f"{kernel.kver}.img"))}
    for name in ("lib/ld-linux-aarch64.so.1", "lib/aarch64-linux-gnu/libc.so.6",
                 "lib/aarch64-linux-gnu/libexpat.so.1", "usr/lib/initoverlayfs/storage-init",
                 "usr/lib/locale/C.utf8/LC_CTYPE"):
        assert name in entries, (name, sorted(entries))
    elves = [e for e in entries.values() if e.data[:4] == b"\x7fELF"]
    assert elves and all(arch.of_elf(e.data[:20]) is arch.ARM64 for e in elves), [
        e.name for e in elves if arch.of_elf(e.data[:20]) is not arch.ARM64]
    # the program needs libexpat when ld.so loads it, before /proc gives it its $ORIGIN: the
    # library is shipped where ld.so looks by default, and not twice
    assert "usr/lib/initoverlayfs/libexpat.so.1" not in entries
    assert "usr/lib/initoverlayfs/" + LIBRARIES_MARK not in entries


def test_this_machines_programs_are_refused_for_an_arm64_kernel(
        tmp_path: Path, kernel: DebianKernel, frozen: Frozen, content: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    sysroot = make_sysroot(tmp_path / "root", kernel, FSTAB)
    common = ["--sysroot", str(sysroot), "--kver", kernel.kver]
    native = default_frozen(UI).folder
    assert install.main([*common, "--from-dir", str(content), "--storage-init",
                         str(native)]) == 1
    assert (f"the frozen storage-init {native} is for amd64, and kernel {kernel.kver} is for "
            "arm64") in capsys.readouterr().err
    assert install.main(common) == 1  # the content would be dracut's, of this machine
    assert ("the content would come from dracut, with this amd64 machine's programs, and the "
            "kernel is for arm64") in capsys.readouterr().err
    assert install.main([*common, "--systemd", "--from-dir", str(content)]) == 1
    assert "dracut makes a mini-initramfs of this amd64 machine's programs" in (
        capsys.readouterr().err)
    assert not list((sysroot / "boot").glob("initramfs-*"))


def test_a_frozen_folder_whose_tree_is_gone_is_refused(
        tmp_path: Path, kernel: DebianKernel, frozen: Frozen, content: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    copy = Path(shutil.copytree(frozen.folder, tmp_path / "frozen"))
    (copy / LIBRARIES_MARK).write_text(str(tmp_path / "gone") + "\n")
    sysroot = make_sysroot(tmp_path / "root", kernel, FSTAB)
    assert install.main(["--sysroot", str(sysroot), "--kver", kernel.kver, "--from-dir",
                         str(content), "--storage-init", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "the arm64 libraries it was linked with are not on this machine" in err, err
    assert "initoverlayfs-freeze --arch arm64" in err, err
