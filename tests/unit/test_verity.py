"""dm-verity: the ioctl structures byte for byte, the table, the superblock checks, and the
verified boot (and each way it refuses) against the recording fake."""

from __future__ import annotations

import errno
import struct
import subprocess
from pathlib import Path

import pytest
from initoverlayfs_build import verity as builder
from initoverlayfs_build.run import need

from storage_init import dm, kernel
from storage_init.config import ConfigError, parse_config, verity_lines
from storage_init.settings import resolve
from storage_init.verity import Verity, check_superblock, level_sizes

from .conftest import IMAGE, KVER, Machine
from .fakekernel import Executed, Rebooted

ROOT = "ab" * 32
SALT = "00112233"


# --- device-mapper structures --------------------------------------------------------------

def test_ioctl_numbers_are_the_kernels() -> None:
    # _IOWR(DM_IOCTL=0xfd, nr, struct dm_ioctl), as strace prints dmsetup's calls
    assert (dm.DM_DEV_CREATE, dm.DM_DEV_REMOVE, dm.DM_DEV_SUSPEND,
            dm.DM_TABLE_LOAD) == (0xC138FD03, 0xC138FD04, 0xC138FD06, 0xC138FD09)


def test_dm_ioctl_header_layout() -> None:
    raw = dm.header("initoverlayfs")
    assert len(raw) == dm.HEADER.size == 312  # sizeof(struct dm_ioctl) on every ABI
    assert struct.unpack_from("=3I", raw, 0) == (4, 0, 0)  # version
    assert struct.unpack_from("=IIIiIII", raw, 12) == (312, 312, 0, 0, 0, 0, 0)
    assert struct.unpack_from("=Q", raw, 40) == (0,)  # dev
    assert raw[48:48 + 14] == b"initoverlayfs\0" and raw[48 + 128:312] == bytes(136)
    with pytest.raises(ValueError):
        dm.header("a/b")
    with pytest.raises(ValueError):
        dm.header("x" * 128)


def test_table_load_has_one_read_only_target_and_its_parameters() -> None:
    params = "1 7:0 7:0 4096 4096 3 4 sha256 " + ROOT + " " + SALT
    raw = dm.table_load("initoverlayfs", 24, "verity", params)
    size, start, count, _, flags = struct.unpack_from("=IIIiI", raw, 12)
    assert (size, start, count, flags) == (len(raw), 312, 1, dm.DM_READONLY_FLAG)
    sector, length, status, following, target = struct.unpack_from("=QQiI16s", raw, 312)
    assert (sector, length, status, target) == (0, 24, 0, b"verity".ljust(16, b"\0"))
    text = raw[352:]
    assert text.split(b"\0")[0].decode() == params and len(raw) % 8 == 0
    assert following == 40 + len(text)  # where a next spec would start, 8-aligned


def test_deferred_remove_sets_the_kernels_flag() -> None:
    sent: list[tuple[int, bytes]] = []

    class Control:
        def ioctl(self, fd: int, request: int, arg: int | bytes) -> int | bytes:
            assert isinstance(arg, bytes)
            sent.append((request, arg))
            return arg

    dm.remove(Control(), 3, "initoverlayfs", deferred=True)
    dm.remove(Control(), 3, "initoverlayfs")
    flags = [struct.unpack_from("=I", arg, 28)[0] for _, arg in sent]
    assert flags == [1 << 17, 0]  # DM_DEFERRED_REMOVE in include/uapi/linux/dm-ioctl.h
    assert {request for request, _ in sent} == {dm.DM_DEV_REMOVE}


def test_device_number_reads_the_kernels_encoding() -> None:
    reply = bytearray(dm.header("x"))
    struct.pack_into("=Q", reply, 40, (254 << 8) | 3)  # huge_encode_dev(MKDEV(254, 3))
    assert dm.device_number(bytes(reply)) == (254, 3)
    struct.pack_into("=Q", reply, 40, (259 << 8) | (0x12 << 20) | 0x34)  # minor 0x1234
    assert dm.device_number(bytes(reply)) == (259, 0x1234)


# --- the table and the superblock -----------------------------------------------------------

def test_verity_table_string() -> None:
    tree = Verity(ROOT, SALT, 300, 300 * 4096)
    assert tree.sectors == 2400
    assert tree.table("7:0") == f"1 7:0 7:0 4096 4096 300 301 sha256 {ROOT} {SALT}"
    assert tree.table("7:0", "panic_on_corruption").endswith(f"{SALT} 1 panic_on_corruption")
    assert Verity(ROOT, "", 2, 8192).table("7:1").endswith(f"{ROOT} -")


def test_levels_are_counted_as_the_kernel_does() -> None:
    assert level_sizes(1) == [] and level_sizes(2) == [1] and level_sizes(128) == [1]
    assert level_sizes(129) == [2, 1] and level_sizes(16385) == [129, 2, 1]
    assert Verity(ROOT, SALT, 300, 300 * 4096).file_size == (300 + 1 + 3 + 1) * 4096


def _image(tmp_path: Path, blocks: int = 3, salt: bytes = bytes.fromhex(SALT)
           ) -> tuple[bytes, Verity]:
    path = tmp_path / "image"
    path.write_bytes(b"erofs".ljust(blocks * 4096 - 100, b"x"))
    made = builder.append(path, salt, bytes(range(16)))
    return path.read_bytes(), made


def test_superblock_check_names_each_problem(tmp_path: Path) -> None:
    data, made = _image(tmp_path)
    expected = made  # the builder's record is the one storage-init reads
    sb = data[made.hash_offset:made.hash_offset + 4096]
    assert check_superblock(expected, sb, len(data)) is None
    assert "has no verity hash tree: it is 12288 bytes" in str(
        check_superblock(expected, b"", 12288))
    assert "no verity superblock at byte 12288" in str(
        check_superblock(expected, bytes(4096), len(data)))
    other = Verity(made.root_hash, "ff" * 4, made.data_blocks, made.hash_offset)
    assert "not the image this mini-initramfs was built with" in str(
        check_superblock(other, sb, len(data)))
    assert "cut short: the file is 16384 bytes, the tree ends at byte 20480" in str(
        check_superblock(expected, sb, len(data) - 4096))


def test_config_reads_the_verity_keys_and_refuses_bad_ones() -> None:
    config = parse_config(f"bootfs LABEL=b\nverity_roothash {ROOT.upper()}\nverity_salt {SALT}\n"
                          "verity_data_blocks 300\nverity_hash_offset 1228800\n")
    settings = resolve(config, (), KVER, ("block",))
    assert settings.verity == Verity(ROOT, SALT, 300, 1228800)
    for line, why in (("verity_roothash abc", "64 hex digits"),
                      ("verity_salt 0g", "even number of hex digits"),
                      ("verity_data_blocks -1", "not a positive number")):
        with pytest.raises(ConfigError, match=why):
            parse_config(f"bootfs LABEL=b\n{line}\n")
    alone = parse_config(f"bootfs LABEL=b\nverity_roothash {ROOT}\n")
    with pytest.raises(ConfigError, match="without verity_data_blocks"):
        resolve(alone, (), KVER, ("block",))


def test_verity_on_the_command_line() -> None:
    config = parse_config(f"bootfs LABEL=b\nverity_roothash {ROOT}\nverity_data_blocks 3\n")
    off = resolve(config, (("rd.initoverlayfs.verity", "0"),), KVER, ("block",))
    assert off.verity is None and any("WITHOUT verification" in w for w in off.warnings)
    unverified = parse_config("bootfs LABEL=b\n")
    with pytest.raises(ConfigError, match="built with --no-verity"):
        resolve(unverified, (("rd.initoverlayfs.verity", "1"),), KVER, ("block",))


# --- the boot -------------------------------------------------------------------------------

def verified_machine(machine: Machine, tmp_path: Path, cmdline: str = "console=ttyS0"
                     ) -> tuple[Machine, Verity]:
    data, made = _image(tmp_path)
    machine.k.filesystems["/dev/vda1"] = {IMAGE: data}
    machine.k.add_file("/dev/mapper/control")
    machine.config(f"bootfs LABEL=BOOT\nbootfstype ext4\n{verity_lines(made)}")
    machine.cmdline(cmdline)
    return machine, made


def dm_calls(m: Machine) -> list[tuple[object, ...]]:
    return [c for c in m.k.calls if c[0] in ("dm-table", "dm-remove") or (
        c[0] == "ioctl" and str(c[2]).startswith("DM_")) or (c[0] == "mount" and c[3] == "erofs")]


def test_verified_boot_maps_mounts_and_seals(machine: Machine, tmp_path: Path) -> None:
    m, made = verified_machine(machine, tmp_path)
    assert isinstance(m.boot(), Executed)
    table = f"1 7:0 7:0 4096 4096 3 4 sha256 {made.root_hash} {made.salt}"
    assert dm_calls(m) == [
        ("ioctl", "/dev/mapper/control", "DM_DEV_CREATE"),
        ("ioctl", "/dev/mapper/control", "DM_TABLE_LOAD"),
        ("dm-table", "initoverlayfs", "verity", 24, table),
        ("ioctl", "/dev/mapper/control", "DM_DEV_SUSPEND"),
        ("mount", "/dev/dm-0", "/run/initoverlayfs/lower", "erofs", "MS_RDONLY", None),
        # after switch root, before init: the same table, restarting on corruption
        ("ioctl", "/dev/mapper/control", "DM_TABLE_LOAD"),
        ("dm-table", "initoverlayfs", "verity", 24, table + " 1 restart_on_corruption"),
        ("ioctl", "/dev/mapper/control", "DM_DEV_SUSPEND"),
        # and removed when the image is unmounted, so /boot can be mounted read-write
        ("ioctl", "/dev/mapper/control", "DM_DEV_REMOVE"),
        ("dm-remove", "initoverlayfs", "deferred"),
    ]
    loaded = [c[1].rsplit("/", 1)[1] for c in m.k.recorded("finit_module")]
    # this CPU's sha256 (its modalias is unknown here: loaded) before every module, so also
    # before dm-verity, which takes the best sha256 registered when its table is loaded
    assert loaded[0] == "sha256-ssse3.ko"
    assert loaded[-3:] == ["dm-mod.ko", "dm-bufio.ko", "dm-verity.ko"]
    assert ("close", "/dev/mapper/control") in m.k.calls
    assert "is verified by dm-verity as /dev/dm-0" in m.kmsg()


@pytest.mark.parametrize(("cpu", "loaded"), [
    ("cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0001,0089,00C0\n", True),
    ("cpu:type:x86,ven0000fam0006mod0006:feature:,0000,0001,0068,00C0\n", False)])
def test_the_cpus_own_sha256_is_loaded_first_only_where_it_fits(
        machine: Machine, tmp_path: Path, cpu: str, loaded: bool) -> None:
    m, _ = verified_machine(machine, tmp_path)
    m.k.add_file("/sys/devices/system/cpu/modalias", cpu.encode())
    assert isinstance(m.boot(), Executed)
    names = [c[1].rsplit("/", 1)[1] for c in m.k.recorded("finit_module")]
    assert names[0] == ("sha256-ssse3.ko" if loaded else "loop.ko")
    assert ("sha256-ssse3.ko" in names) is loaded
    assert names[-3:] == ["dm-mod.ko", "dm-bufio.ko", "dm-verity.ko"]


def test_halt_policy_seals_with_panic(machine: Machine, tmp_path: Path) -> None:
    m, _ = verified_machine(machine, tmp_path, "rd.emergency=halt")
    m.boot()
    seal = [c for c in m.k.calls if c[0] == "dm-table"][-1]
    assert seal[-1].endswith(" 1 panic_on_corruption")


def _failure(m: Machine) -> str:
    lines = [line for line in m.console().splitlines() if "Failed to" in line]
    assert len(lines) == 1, m.console()
    return lines[0]


def test_root_hash_mismatch_is_one_line_and_the_policy(machine: Machine,
                                                       tmp_path: Path) -> None:
    m, made = verified_machine(machine, tmp_path)
    m.k.errors[("pread", "/dev/dm-0")] = [errno.EIO]
    result = m.boot()
    line = _failure(m)
    assert f"Failed to verify /boot{IMAGE}: dm-verity rejects it against the root hash " \
           f"{made.root_hash} of /etc/initoverlayfs.conf" in line
    assert "rerun it; rd.initoverlayfs.verity=0 boots this image unverified" in line
    assert isinstance(result, Rebooted)  # rd.emergency's default, after the countdown
    assert "initoverlayfs" not in m.k.dm_devices  # not left half set up
    assert not [c for c in m.k.calls if c[0] == "mount" and c[3] == "erofs"]


@pytest.mark.parametrize("where", ["superblock", "first block"])
def test_a_disk_io_error_is_named_as_the_disks_not_as_another_build(
        machine: Machine, tmp_path: Path, where: str) -> None:
    """The disk fails under the image (QEMU's blkdebug in the VM tier): no rebuild mends
    that, so the line must not say the image is another build's."""
    m, made = verified_machine(machine, tmp_path, "rd.emergency=poweroff")
    if where == "superblock":
        m.k.errors[("pread", "/dev/loop0")] = [errno.EIO]
    else:  # the data block under dm-verity: its read fails, and the loop device's too
        m.k.errors[("pread", "/dev/dm-0")] = [errno.EIO]
        m.k.errors[("pread", "/dev/loop0")] = [0, errno.EIO]
    result = m.boot()
    line = _failure(m)
    offset = made.hash_offset if where == "superblock" else 0
    assert f"Failed to read /boot{IMAGE} at byte {offset} (/dev/loop0): Input/output error; " \
           "check the disk holding the bootfs LABEL=BOOT: the kernel log names the device " \
           "and sector that failed" in line
    assert "another build" not in line and "rerun" not in line
    assert isinstance(result, Rebooted) and result.how == kernel.RB_POWER_OFF
    assert "initoverlayfs" not in m.k.dm_devices


def test_missing_tree_and_other_build_are_refused_before_device_mapper(
        machine: Machine, tmp_path: Path) -> None:
    m, made = verified_machine(machine, tmp_path, "rd.emergency=halt")
    image = m.k.filesystems["/dev/vda1"][IMAGE]
    m.k.filesystems["/dev/vda1"][IMAGE] = image[:made.hash_offset]
    assert isinstance(m.boot(), Rebooted)
    assert f"Failed to verify /boot{IMAGE}: it has no verity hash tree: it is 12288 bytes" \
           in _failure(m)
    assert not [c for c in m.k.calls if c[0] == "ioctl" and str(c[2]).startswith("DM_")]


def test_an_image_from_another_build_is_named_so(machine: Machine, tmp_path: Path) -> None:
    m, _ = verified_machine(machine, tmp_path)
    other, _ = _image(tmp_path, salt=b"another build")
    m.k.filesystems["/dev/vda1"][IMAGE] = other
    m.boot()
    assert "is not the image this mini-initramfs was built with" in _failure(m)


def test_verity_off_on_purpose_mounts_the_loop_device(machine: Machine, tmp_path: Path) -> None:
    m, _ = verified_machine(machine, tmp_path, "rd.initoverlayfs.verity=0")
    assert isinstance(m.boot(), Executed)
    assert "mounted WITHOUT verification, on purpose" in m.kmsg()
    assert "the config has no verity_roothash" not in m.kmsg()  # one line says it, not two
    assert ("mount", "/dev/loop0", "/run/initoverlayfs/lower", "erofs", "MS_RDONLY",
            None) in m.k.calls
    assert not m.k.dm_devices


def test_an_unverified_build_says_so_and_maps_nothing(machine: Machine) -> None:
    assert isinstance(machine.boot(), Executed)  # the standard machine: no verity_ keys
    assert f"/boot{IMAGE} is not verified: the config has no verity_roothash" in machine.kmsg()
    assert not machine.k.dm_devices


def test_a_failed_seal_warns_and_boots(machine: Machine, tmp_path: Path) -> None:
    m, _ = verified_machine(machine, tmp_path)
    m.k.errors[("ioctl", "DM_TABLE_LOAD")] = [0, errno.ENOMEM]
    assert isinstance(m.boot(), Executed)
    assert "cannot switch dm-verity to restart_on_corruption (Cannot allocate memory)" \
           in m.kmsg()


def test_a_refused_deferred_removal_warns_and_boots(machine: Machine, tmp_path: Path) -> None:
    m, _ = verified_machine(machine, tmp_path)
    m.k.errors[("ioctl", "DM_DEV_REMOVE")] = [errno.EINVAL]
    assert isinstance(m.boot(), Executed)
    assert "cannot schedule the removal of /dev/mapper/initoverlayfs (Invalid argument)" \
           in m.kmsg()


def test_no_device_mapper_says_which_kernel_option(machine: Machine, tmp_path: Path) -> None:
    m, _ = verified_machine(machine, tmp_path)
    del m.k.files["/dev/mapper/control"]
    m.boot()
    assert "Failed to open /dev/mapper/control: No such file or directory; check that the " \
           "kernel has device-mapper (CONFIG_BLK_DEV_DM, module dm-mod)" in _failure(m)


@pytest.mark.parametrize("blocks", [1, 2, 128, 129, 300])
def test_the_builders_tree_is_veritysetups_byte_for_byte(tmp_path: Path, blocks: int) -> None:
    """At each edge of the level count: no tree, one block, one full block, two levels."""
    data = bytes((i * 7 + i // 4096) % 251 for i in range(blocks * 4096))
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.write_bytes(data)
    theirs.write_bytes(data)
    uuid = "12345678-9abc-4def-8123-456789abcdef"
    made = builder.append(ours, bytes.fromhex(SALT), bytes.fromhex(uuid.replace("-", "")))
    out = subprocess.run([need("veritysetup", "to check the hash tree"), "format",
                          f"--hash-offset={blocks * 4096}", f"--salt={SALT}", f"--uuid={uuid}",
                          str(theirs), str(theirs)], capture_output=True, text=True, check=True)
    assert f"Root hash:      \t{made.root_hash}" in out.stdout
    assert ours.read_bytes() == theirs.read_bytes()
