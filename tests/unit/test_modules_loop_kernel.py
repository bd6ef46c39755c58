"""Module index and load order, loop structures, the real Kernel's error and trace format."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from storage_init.cmdline import parse_cmdline
from storage_init.kernel import MS_MOVE, MS_RDONLY, Kernel, flag_names
from storage_init.log import Log
from storage_init.loop import LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY, loop_config, loop_info64
from storage_init.modules import (
    CPU_MODALIAS,
    SIGNATURE_HASHES,
    Loader,
    cpu_patterns,
    fits_cpu,
    module_blacklist,
    module_name,
    module_params,
    parse_index,
)

from .fakekernel import FakeKernel

DEP = """\
kernel/a.ko: kernel/b.ko kernel/c.ko.xz
kernel/b.ko: kernel/c.ko.xz
kernel/c.ko.xz:
kernel/d-e.ko:
"""
ALIAS = "alias pci:v00001AF4d* a\nalias fs-thing d-e\nalias scsi:t-0x00* b\nnot an alias\n"


def test_module_names_are_normalised() -> None:
    assert module_name("kernel/drivers/block/virtio_blk.ko.xz") == "virtio_blk"
    assert module_name("d-e") == "d_e"
    assert module_name("nvme.ko.zst") == "nvme"


def test_dependencies_load_first_and_once() -> None:
    index = parse_index(DEP, ALIAS, "kernel/builtin_one.ko\n")
    assert index.load_order(["a", "b", "a"]) == ["c", "b", "a"]
    assert index.resolve("pci:v00001AF4d00001001sv0sd0bc01sc00i00") == ["a"]
    assert index.resolve("fs-thing") == ["d_e"]
    assert index.resolve("builtin_one") == ["builtin_one"]
    assert index.load_order(["builtin_one"]) == []
    assert index.resolve("usb:nothing") == []


def test_aliases_match_by_glob_after_the_literal_head_check() -> None:
    index = parse_index("", "alias pci:v*d1001* x\nalias *:virtio* y\nalias [ab]c z\n"
                            "alias fs-ext? e\n", "")
    # patterns starting with a wildcard have an empty head and are still tried
    assert index.resolve("pci:v1AF4d1001sv0") == ["x"]
    assert index.resolve("mod:virtio1") == ["y"]
    assert index.resolve("bc") == ["z"]
    assert index.resolve("fs-ext4") == ["e"]
    assert index.resolve("fs-ext44") == []
    assert index.resolve("pcx:v1AF4d1001") == []


def test_softdep_pre_modules_load_before_the_module_through_their_aliases() -> None:
    dep = DEP + "kernel/fs/ext4.ko: kernel/jbd2.ko\nkernel/jbd2.ko:\nkernel/crc32c_generic.ko:\n"
    alias = ALIAS + "alias crypto-crc32c crc32c_generic\n"
    softdep = ("# comment\nsoftdep ext4 pre: crypto-crc32c post: b\n"
               "softdep cifs gcm\nsoftdep jbd2 pre: crypto-crc32c\n")
    index = parse_index(dep, alias, "", softdep)
    assert index.softdeps == {"ext4": ("crypto-crc32c",), "jbd2": ("crypto-crc32c",)}
    assert index.load_order(["ext4"]) == ["crc32c_generic", "jbd2", "ext4"]
    k = FakeKernel()
    for name in ("fs/ext4", "jbd2", "crc32c_generic"):
        k.add_file(f"/m/kernel/{name}.ko", b"\x7fELF")
    k.add_file("/m/modules.dep", dep.encode())
    k.add_file("/m/modules.alias", alias.encode())
    k.add_file("/m/modules.softdep", softdep.encode())
    loader = Loader.from_directory(k, Log(k), "/m")
    assert loader.load(["ext4"]) == ["crc32c_generic", "jbd2", "ext4"]
    assert [path for _, path, _ in k.recorded("finit_module")] == [
        "/m/kernel/crc32c_generic.ko", "/m/kernel/jbd2.ko", "/m/kernel/fs/ext4.ko"]


def test_module_params_from_the_command_line_as_modprobe_reads_them() -> None:
    words = parse_cmdline('ro loop.max_loop=4 dm-mod.use_blk_mq dm_mod.x-y=1 '
                          'virtio_blk.a=1 virtio_blk.a=2 nvme.p="x y" rd.shell .x=1 y.=2 '
                          'dm_mod.x_y=3')
    assert module_params(words) == {
        "loop": "max_loop=4", "dm_mod": "use_blk_mq x_y=3", "virtio_blk": "a=2",
        "nvme": 'p="x y"', "rd": "shell"}


def test_module_params_default_to_no_loop_devices_up_front() -> None:
    assert module_params(()) == {"loop": "max_loop=0"}
    assert module_params(parse_cmdline("loop.max_part=7")) == {
        "loop": "max_part=7 max_loop=0"}
    assert module_params(parse_cmdline("loop.max-loop=2")) == {"loop": "max-loop=2"}


def test_loader_passes_each_module_its_params() -> None:
    k = FakeKernel()
    for name in ("a", "b", "c"):
        k.add_file(f"/m/kernel/{name}.ko", b"\x7fELF")
    loader = Loader(k, Log(k), "/m", parse_index(DEP.replace(".xz", ""), ALIAS, ""),
                    {"a": "x=1"})
    loader.load(["a", "b"])
    assert k.module_params == {"/m/kernel/c.ko": "", "/m/kernel/b.ko": "",
                               "/m/kernel/a.ko": "x=1"}


def test_loader_uses_the_compressed_flag_and_says_when_the_kernel_cannot_use_it() -> None:
    k = FakeKernel()
    k.add_file("/m/kernel/c.ko.xz", b"xz data")
    k.errors[("finit_module", "/m/kernel/c.ko.xz")] = [errno.EINVAL]
    log = Log(k)
    log.console_fd = 2
    loader = Loader(k, log, "/m", parse_index(DEP, ALIAS, ""))
    assert loader.load(["c"]) == []
    assert k.recorded("finit_module") == [("finit_module", "/m/kernel/c.ko.xz", 4)]
    assert loader.failed == {"c": "compressed, and this kernel cannot decompress modules"}
    assert b"initoverlayfs-install" in b"".join(k.written["fd2"])
    assert loader.load(["c"]) == []  # once only
    assert len(k.recorded("finit_module")) == 1


def test_loader_reports_a_module_file_that_is_missing() -> None:
    k = FakeKernel()
    loader = Loader(k, Log(k), "/m", parse_index(DEP, ALIAS, ""))
    assert loader.load(["b"]) == []
    assert set(loader.failed) == {"c", "b"}


def test_blacklists_from_the_command_line_as_kmod_dracut_and_the_kernel_read_them() -> None:
    words = parse_cmdline("modprobe.blacklist=a,virtio-scsi, rd.driver.blacklist=b "
                          "rd.driver.blacklist=c,a module_blacklist=a,nvme modprobe.blacklist= "
                          "modprobe.blacklist dm_mod.blacklist=x")
    assert module_blacklist(words) == {
        "a": "module_blacklist", "virtio_scsi": "modprobe.blacklist",
        "b": "rd.driver.blacklist", "c": "rd.driver.blacklist", "nvme": "module_blacklist"}
    assert module_blacklist(parse_cmdline("ro quiet")) == {}


def test_a_blacklisted_module_is_not_loaded_for_a_device_but_is_by_name() -> None:
    """modprobe.blacklist= as udev's kmod applies it: no match of a device's modalias is loaded,
    a dependency of another match still is, and so is a module asked for by name."""
    k = FakeKernel()
    for name in ("a", "b", "c"):
        k.add_file(f"/m/kernel/{name}.ko", b"\x7fELF")
    dep = DEP.replace(".xz", "")
    alias = ALIAS + "alias pci:v00001AF4d* b\n"
    log = Log(k)
    log.console_fd = 2
    loader = Loader(k, log, "/m", parse_index(dep, alias, ""),
                    blacklist=module_blacklist(parse_cmdline("modprobe.blacklist=b")))
    assert loader.load_modalias("pci:v00001AF4d00001001") == ["c", "b", "a"]  # b: a's dep
    k2 = FakeKernel()
    for name in ("a", "b", "c"):
        k2.add_file(f"/m/kernel/{name}.ko", b"\x7fELF")
    loader = Loader(k2, Log(k2), "/m", parse_index(dep, ALIAS, ""),
                    blacklist=module_blacklist(parse_cmdline("rd.driver.blacklist=a")))
    assert loader.load_modalias("pci:v00001AF4d00001001") == []
    assert k2.recorded("finit_module") == []
    assert loader.failed == {"a": "rd.driver.blacklist= on the kernel command line"}
    assert loader.load(["a"]) == ["c", "b", "a"]  # by name, as `modprobe a`


def test_a_module_the_kernel_refuses_by_module_blacklist_is_not_even_opened() -> None:
    k = FakeKernel()
    for name in ("a", "b", "c"):
        k.add_file(f"/m/kernel/{name}.ko", b"\x7fELF")
    log = Log(k)
    log.console_fd = 2
    loader = Loader(k, log, "/m", parse_index(DEP.replace(".xz", ""), ALIAS, ""),
                    blacklist=module_blacklist(parse_cmdline("module_blacklist=b")))
    assert loader.load(["a"]) == ["c", "a"]  # a then fails in the real kernel: b's symbols
    assert [path for _, path, _ in k.recorded("finit_module")] == [
        "/m/kernel/c.ko", "/m/kernel/a.ko"]
    assert loader.failed == {"b": "module_blacklist= on the kernel command line"}
    console = b"".join(k.written["fd2"]).decode()
    assert "module b not loaded: module_blacklist= on the kernel command line" in console
    assert "Failed" not in console  # not a warning: the user asked for it


def test_loop_structures_match_the_kernel_abi() -> None:
    info = loop_info64("/boot/x.img", LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR)
    assert len(info) == 232  # sizeof(struct loop_info64) on every Linux architecture
    assert struct.unpack_from("=I", info, 52)[0] == 5  # lo_flags
    assert info[56:67] == b"/boot/x.img"
    config = loop_config(7, "/boot/x.img", LO_FLAGS_READ_ONLY)
    assert len(config) == 304  # sizeof(struct loop_config)
    assert struct.unpack_from("=II", config) == (7, 0)
    assert config[8:240] == loop_info64("/boot/x.img", LO_FLAGS_READ_ONLY)
    long_name = loop_info64("/" + "x" * 100, 0)
    assert long_name[56 + 63] == 0  # always NUL-terminated


def test_flag_names() -> None:
    assert flag_names(MS_RDONLY | MS_MOVE) == "MS_RDONLY|MS_MOVE"
    assert flag_names(0) == "0"
    assert flag_names(1 << 30) == hex(1 << 30)


def test_real_kernel_errors_name_the_path_and_traces_show_results(tmp_path: Path) -> None:
    lines: list[str] = []
    k = Kernel(tracer=lines.append)
    k.mkdir(str(tmp_path / "d"))
    k.mkdir(str(tmp_path / "d"))  # existing directory: fine
    assert "mkdir(" in lines[0] and "= None" in lines[0] and " ms]" in lines[0]
    with pytest.raises(OSError) as info:
        k.mount("none", str(tmp_path / "missing"), "tmpfs", 0, None)
    assert info.value.errno in (errno.ENOENT, errno.EPERM)
    assert info.value.filename == str(tmp_path / "missing")
    assert "mount('none'" in lines[-1] and "-> " in lines[-1] and "errno" in lines[-1]
    with pytest.raises(OSError) as info:
        k.execve(str(tmp_path / "no-init"), ["x"], {})
    assert info.value.errno == errno.ENOENT and info.value.filename == str(tmp_path / "no-init")


def test_real_kernel_removes_a_tree_without_crossing_devices(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "g").symlink_to("/etc")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        removed = Kernel().remove_tree_contents(fd, os.stat(tmp_path).st_dev)
    finally:
        os.close(fd)
    assert removed == 4 and list(tmp_path.iterdir()) == []
    assert os.path.isdir("/etc")  # the symlink was removed, not followed
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    (tmp_path / "keep").write_text("x")
    try:
        assert Kernel().remove_tree_contents(fd, -1) == 0  # other device: untouched
    finally:
        os.close(fd)
    assert (tmp_path / "keep").exists()


# /sys/devices/system/cpu/modalias of QEMU's default TCG CPU (no SSE4.2, feature 0094)
QEMU64 = ("cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0001,0002,0003,0004,0005,0006,"
          "0007,0008,0009,000B,000C,000D,000E,000F,0010,0011,0013,0017,0018,0019,001A,002B,"
          "0034,003A,003B,003D,0068,006F,0070,0072,0074,0075,0076,0080,0081,0089,008D,00C0")
SSE42 = QEMU64.replace(",0089,", ",0089,0094,")
CPU_DEP = "kernel/crc32c-intel.ko:\nkernel/crc32c_generic.ko:\nkernel/libcrc32c.ko:\n"
CPU_ALIAS = ("alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\n"
             "alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel\n")
CPU_SOFTDEP = "softdep libcrc32c pre: crypto-crc32c\n"


def test_cpu_aliases_say_which_cpus_a_module_is_for() -> None:
    patterns = cpu_patterns(parse_index(CPU_DEP, CPU_ALIAS, "").aliases)
    assert patterns == {"crc32c_intel": ("cpu:type:x86,ven*fam*mod*:feature:*0094*",)}
    assert fits_cpu(patterns["crc32c_intel"], SSE42)
    assert not fits_cpu(patterns["crc32c_intel"], QEMU64)
    assert fits_cpu((), QEMU64)  # no cpu: alias: for every CPU
    assert fits_cpu(patterns["crc32c_intel"], "")  # CPU unknown: load it, as modprobe would


@pytest.mark.parametrize(("modalias", "inserted"), [
    (QEMU64, ["crc32c_generic", "libcrc32c"]),
    (SSE42, ["crc32c_intel", "crc32c_generic", "libcrc32c"]),
    (None, ["crc32c_intel", "crc32c_generic", "libcrc32c"]),  # no such file in /sys
])
def test_loader_skips_a_module_made_for_cpu_features_this_cpu_lacks(
        modalias: str | None, inserted: list[str]) -> None:
    k = FakeKernel()
    for name in ("crc32c-intel", "crc32c_generic", "libcrc32c"):
        k.add_file(f"/m/kernel/{name}.ko", b"\x7fELF")
    if modalias is not None:
        k.add_file(CPU_MODALIAS, modalias.encode() + b"\n")
    log = Log(k)
    log.console_fd = 2
    loader = Loader(k, log, "/m", parse_index(CPU_DEP, CPU_ALIAS, "", CPU_SOFTDEP))
    assert loader.load(["libcrc32c"]) == inserted
    assert [path.rsplit("/", 1)[1] for _, path, _ in k.recorded("finit_module")] == [
        name.replace("crc32c_intel", "crc32c-intel") + ".ko" for name in inserted]
    assert loader.failed == {}
    assert b"".join(k.written.get("fd2", [])) == b""  # a debug line only, not a warning


def test_a_module_without_its_hardware_is_not_a_failure() -> None:
    """ENODEV (the module's hardware is absent) is expected, as for modprobe: no warning, and not
    listed among the failures a timeout message reports."""
    k = FakeKernel()
    k.add_file("/m/kernel/d-e.ko", b"\x7fELF")
    k.errors[("finit_module", "/m/kernel/d-e.ko")] = [errno.ENODEV]
    log = Log(k)
    log.console_fd = 2  # no kmsg: everything not debug would reach this console
    loader = Loader(k, log, "/m", parse_index(DEP, ALIAS, ""))
    assert loader.load(["d_e"]) == []
    assert loader.failed == {}
    assert b"".join(k.written.get("fd2", [])) == b""


def test_optional_names_the_mini_initramfs_does_not_ship_are_passed_over_in_silence() -> None:
    # load-modules asks for every SIGNATURE_HASHES alias first; the builder ships at most the
    # one the kernel's signatures use, and the others are no news, even in a debug boot
    k = FakeKernel()
    k.add_file("/m/kernel/sha256-ssse3.ko", b"\x7fELF")
    log = Log(k)
    log.debug_enabled = True
    index = parse_index("kernel/sha256-ssse3.ko:\n", "alias crypto-sha256 sha256_ssse3\n", "")
    loader = Loader(k, log, "/m", index)
    assert loader.load(SIGNATURE_HASHES, optional=True) == ["sha256_ssse3"]
    assert [line for line in log.lines if "not found" in line] == []
    assert loader.load(["crypto-sha512"]) == []  # later asked for by name: reported
    assert [line for line in log.lines if "not found" in line] == [
        "storage-init: module crypto-sha512 not found; assuming it is built in"]
