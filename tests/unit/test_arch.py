"""Which CPU a kernel or a program is for, and libraries looked up in another CPU's tree."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from initoverlayfs_build import arch, elf, foreign, kmods
from initoverlayfs_build.errors import BuildError
from initoverlayfs_build.ui import Ui


def elf_head(machine: int, order: str = "little") -> bytes:
    return (b"\x7fELF\x02" + (b"\x01" if order == "little" else b"\x02") + b"\x01" + b"\0" * 9
            + (2).to_bytes(2, order) + machine.to_bytes(2, order))  # type: ignore[arg-type]


def test_names_are_debians_and_the_kernels() -> None:
    assert arch.named("arm64") is arch.ARM64 and arch.named("aarch64") is arch.ARM64
    assert arch.named("amd64") is arch.AMD64 and arch.named("x86_64") is arch.AMD64
    with pytest.raises(BuildError, match="unknown architecture 'riscv64'") as caught:
        arch.named("riscv64")
    assert caught.value.hint == "one of: amd64 (x86_64), arm64 (aarch64)"


def test_an_elf_header_says_its_cpu() -> None:
    assert arch.of_elf(elf_head(183)) is arch.ARM64
    assert arch.of_elf(elf_head(62)) is arch.AMD64
    assert arch.of_elf(elf_head(183, "big")) is arch.ARM64
    assert arch.of_elf(elf_head(243)) is None  # RISC-V: not built for
    assert arch.of_elf(b"#!/bin/sh\n" + b"\0" * 10) is None
    with open("/bin/sh", "rb") as f:
        assert arch.of_elf(f.read(20)) is arch.host()


def test_a_kernel_config_says_its_cpu(tmp_path: Path) -> None:
    config = tmp_path / "config-6.1.0-test"
    assert arch.of_kernel_config(config) is None  # no file to say
    for text, expected in (("CONFIG_64BIT=y\nCONFIG_ARM64=y\n", arch.ARM64),
                           ("CONFIG_X86_64=y\nCONFIG_X86=y\n", arch.AMD64),
                           # only a set symbol counts, not one that is off or merely mentioned
                           ("# CONFIG_ARM64 is not set\nCONFIG_ARM64_4K_PAGES=y\n", None)):
        config.write_text(text)
        assert arch.of_kernel_config(config) is expected, text


def test_modules_say_their_cpu_when_the_config_is_missing(tmp_path: Path) -> None:
    (tmp_path / "kernel").mkdir()  # kernel/missing.ko, listed first, is absent: skipped
    (tmp_path / "kernel/loop.ko").write_bytes(elf_head(183) + b"\0" * 100)
    (tmp_path / "modules.dep").write_text("kernel/missing.ko:\nkernel/loop.ko:\n")
    assert kmods.modules_arch(Ui("t", quiet=True), tmp_path) is arch.ARM64


def test_each_cpu_has_its_generic_storage_drivers() -> None:
    x86, arm = kmods.generic_drivers("amd64"), kmods.generic_drivers("arm64")
    assert "sdhci_acpi" in x86 and "sdhci_acpi" not in arm
    # the Raspberry Pi class: SD card controllers, USB storage behind xHCI, virtio on MMIO
    for module in ("sdhci_pci", "sdhci_iproc", "bcm2835", "mmc_block", "xhci_pci",
                   "xhci_plat_hcd", "usb_storage", "uas", "virtio_mmio", "virtio_blk", "nvme"):
        assert module in arm, module
    assert len(arm) == len(set(arm))


def test_a_tree_resolves_its_absolute_links_inside_itself(tmp_path: Path) -> None:
    """Debian's /lib/ld-linux-aarch64.so.1 is an absolute link: in another CPU's tree it
    means the tree's file, never this machine's."""
    tree = tmp_path / "tree"
    (tree / "usr/lib/aarch64-linux-gnu").mkdir(parents=True)
    (tree / "lib").symlink_to("usr/lib")
    real = tree / "usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"
    real.write_bytes(b"loader")
    (tree / "usr/lib/ld-linux-aarch64.so.1").symlink_to("/lib/aarch64-linux-gnu/"
                                                         "ld-linux-aarch64.so.1")
    assert elf.resolve_in(tree, "/lib/ld-linux-aarch64.so.1") == real
    assert elf.resolve_in(tree, "/lib/../lib/./aarch64-linux-gnu/ld-linux-aarch64.so.1") == real
    (tree / "loop").symlink_to("/loop")
    with pytest.raises(FileNotFoundError, match="too many levels"):
        elf.resolve_in(tree, "/loop")


def test_the_closure_in_a_tree_keeps_the_targets_paths(tmp_path: Path) -> None:
    """This machine's /bin/ls and its libraries copied into a tree whose loader is an
    absolute link: the closure names each file by its path on the target and copies it from
    the tree."""
    tree = tmp_path / "tree"
    host = elf.closure([Path("/bin/ls")], elf.search_dirs())
    for library in host:
        target = tree / library.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(library.source, target)
    interp = next(lib.path for lib in host if "ld-linux" in lib.path)
    moved = tree / "opt/loader"
    moved.parent.mkdir()
    os.replace(tree / interp.lstrip("/"), moved)
    (tree / interp.lstrip("/")).symlink_to("/opt/loader")
    found = elf.closure([Path("/bin/ls")], [str(Path(lib.path).parent) for lib in host],
                        root=tree)
    assert [lib.path for lib in found] == [lib.path for lib in host]
    for library in found:
        assert library.source.is_relative_to(tree), library
    assert next(lib.source for lib in found if lib.path == interp) == moved


def test_a_foreign_freeze_says_what_this_machine_lacks_before_making_anything(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(BuildError, match="needs root"):
        foreign.check_host(arch.ARM64)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(foreign, "BINFMT", tmp_path)  # no qemu-aarch64 entry there
    with pytest.raises(BuildError, match="arm64 programs do not run on this machine") as caught:
        foreign.check_host(arch.ARM64)
    assert "qemu-user-static" in str(caught.value.hint)
    (tmp_path / "qemu-aarch64").write_text("disabled\ninterpreter /x\n")
    with pytest.raises(BuildError, match="is disabled"):
        foreign.check_host(arch.ARM64)
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /x\n")
    foreign.check_host(arch.ARM64)
