"""storage_init.probe against images made by the real mkfs and partitioning tools.

Every expectation comes from blkid, partx (libblkid's partition view), sfdisk or sgdisk run
on the same image, so the probe is held to what those tools print, not to constants.
A missing tool fails the test with the Debian package to install; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage_init.probe import (
    Filesystem,
    Partition,
    probe_filesystem,
    probe_partitions,
)

if TYPE_CHECKING:
    from storage_init.probe import Reader

DEBIAN_PACKAGE = {
    "mkfs.ext2": "e2fsprogs",
    "mkfs.ext3": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mkfs.xfs": "xfsprogs",
    "mkfs.btrfs": "btrfs-progs",
    "mkfs.erofs": "erofs-utils",
    "sgdisk": "gdisk",
    "sfdisk": "fdisk",
    "fdisk": "fdisk",
    "blkid": "util-linux",
    "partx": "util-linux",
}
MiB = 1 << 20


# Helpers -------------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} not found: apt-get install {DEBIAN_PACKAGE[name]}", pytrace=False)
    return path


def run(name: str, *args: object, stdin: str | None = None, ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run([tool(name), *map(str, args)], input=stdin, capture_output=True,
                          text=True, errors="replace", check=False)
    assert proc.returncode in ok, f"{name} {args} failed: {proc.stderr}"
    return proc.stdout


def sparse_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def bytes_reader(data: bytes) -> Reader:
    return lambda off, n: data[off:off + n]


@contextmanager
def pread_reader(path: Path, base: int = 0) -> Iterator[Reader]:
    """For images too large to load; `base` makes a partition look like a device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        yield lambda off, n: os.pread(fd, n, base + off)
    finally:
        os.close(fd)


def blkid(path: Path, *extra: object) -> dict[str, str]:
    """`blkid -p -o export` as a dict; -d keeps UTF-8 labels as bytes rather than M- escapes."""
    out = run("blkid", "-p", "-d", "-o", "export", *extra, path, ok=(0, 2))
    pairs = (line.partition("=") for line in out.splitlines())
    return {key: re.sub(r"\\(.)", r"\1", value) for key, _, value in pairs}


def blkid_filesystem(path: Path, *extra: object) -> Filesystem:
    info = blkid(path, *extra)
    return Filesystem(info["TYPE"], info.get("UUID"), info.get("LABEL"))


def partx(path: Path, *extra: object) -> dict[int, dict[str, str]]:
    """libblkid's view of the partitions, keyed by partition number."""
    out = run("partx", "-P", "-o", "NR,START,SECTORS,UUID,NAME", *extra, path, ok=(0, 1))
    result = {}
    for line in out.splitlines():
        fields = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line))
        # partx writes non-ASCII bytes as \xNN.
        raw = re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]),
                     fields["NAME"].encode())
        fields["NAME"] = raw.decode()
        result[int(fields["NR"])] = fields
    return result


def partx_partitions(path: Path, *extra: object) -> dict[int, Partition]:
    return {nr: Partition(nr, f["UUID"], f["NAME"] or None)
            for nr, f in partx(path, *extra).items()}


def sfdisk_json(path: Path, *extra: object) -> dict[int, dict[str, str]]:
    table = json.loads(run("sfdisk", "--json", *extra, path))["partitiontable"]
    return {int(p["node"][len(str(path)):]): p for p in table["partitions"]}


def crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """Unfinalised CRC32C, as erofs-utils seeds and stores it."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


# Filesystems ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mkfs", "options"),
    [
        ("mkfs.ext2", ["-L", "boot"]),
        ("mkfs.ext3", ["-L", "my boot"]),
        ("mkfs.ext4", ["-L", "bööt ☃"]),  # UTF-8 fills all 16 bytes: no NUL terminator
        ("mkfs.ext4", ["-O", "^has_journal"]),  # no label; ext4 by its features alone
        ("mkfs.ext3", ["-O", "extents", "-L", "x"]),  # blkid calls this ext4
        ("mkfs.ext2", ["-O", "huge_file"]),  # and this
    ],
)
def test_ext_matches_blkid(tmp_path: Path, mkfs: str, options: list[str]) -> None:
    image = sparse_file(tmp_path / "ext.img", 4 * MiB)
    run(mkfs, "-q", "-F", "-U", "0a1b2c3d-0000-4000-8000-00000000abcd", *options, image)
    expected = blkid_filesystem(image)
    assert expected.uuid == "0a1b2c3d-0000-4000-8000-00000000abcd"
    assert probe_filesystem(bytes_reader(image.read_bytes())) == expected


@pytest.mark.parametrize(
    ("fat", "size", "options"),
    [
        ("12", 4 * MiB, ["-i", "00ab00cd"]),  # no -n: neither tool reports a label
        ("16", 32 * MiB, ["-i", "1a2b3c4d", "-n", "MY BOOT"]),
        ("16", 32 * MiB, ["-i", "deadbeef", "-n", "NO NAME"]),
        ("32", 40 * MiB, ["-i", "deadbeef", "-n", "ESP"]),
        ("32", 40 * MiB, ["-i", "0"]),  # a zero serial gives no UUID at all
    ],
)
def test_vfat_matches_blkid(tmp_path: Path, fat: str, size: int, options: list[str]) -> None:
    image = sparse_file(tmp_path / "fat.img", size)
    run("mkfs.vfat", "-F", fat, *options, image)
    info = blkid(image)
    assert info["VERSION"] == f"FAT{fat}"
    assert probe_filesystem(bytes_reader(image.read_bytes())) == blkid_filesystem(image)


@pytest.mark.parametrize("fat", ["16", "32"])
@pytest.mark.parametrize("relabel", [b"WINDOWS    ", b"\xe5"])
def test_vfat_label_comes_from_root_directory(tmp_path: Path, fat: str, relabel: bytes) -> None:
    """Windows relabels only the root-directory entry, and that is what blkid reports."""
    image = sparse_file(tmp_path / "fat.img", 40 * MiB)
    run("mkfs.vfat", "-F", fat, "-n", "BOOTSECTOR", image)
    data = bytearray(image.read_bytes())
    entry = data.index(b"BOOTSECTOR \x08")  # the directory entry, attribute "volume label"
    data[entry:entry + len(relabel)] = relabel  # a new name, or 0xE5: entry deleted
    image.write_bytes(data)
    info = blkid(image)
    assert info["LABEL_FATBOOT"] == "BOOTSECTOR"
    assert info.get("LABEL") == ("WINDOWS" if len(relabel) > 1 else None)
    assert probe_filesystem(bytes_reader(bytes(data))) == blkid_filesystem(image)


def test_xfs_matches_blkid(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "xfs.img", 300 * MiB)  # mkfs.xfs's minimum
    run("mkfs.xfs", "-q", "-L", "xfsboot", "-m", "uuid=11111111-2222-3333-4444-555555555555",
        image)
    with pread_reader(image) as read:
        assert probe_filesystem(read) == blkid_filesystem(image)


def test_btrfs_matches_blkid(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "btrfs.img", 120 * MiB)  # mkfs.btrfs's minimum is ~110
    run("mkfs.btrfs", "-q", "-L", "btrfs boot", "-U", "22222222-2222-3333-4444-555555555555",
        image)
    with pread_reader(image) as read:
        assert probe_filesystem(read) == blkid_filesystem(image)


def test_erofs_matches_blkid(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "vmlinuz").write_bytes(b"kernel")
    image = tmp_path / "erofs.img"
    uuid = "01234567-89ab-cdef-0123-456789abcdef"
    label_opts = ["-L", "erofsboot"] if " -L" in run("mkfs.erofs", "--help", ok=(0, 1)) else []
    run("mkfs.erofs", "-U", uuid, *label_opts, image, tmp_path / "tree")
    if not label_opts:
        # mkfs.erofs < 1.6 has no -L; set volume_name as newer versions do, keeping the
        # superblock checksum (over the rest of the 4 KiB block) valid.
        data = bytearray(image.read_bytes())
        block = bytearray(data[1024:4096])
        block[4:8] = bytes(4)
        assert crc32c(bytes(block)) == struct.unpack_from("<I", data, 1028)[0]
        block[0x40:0x50] = b"erofsboot".ljust(16, b"\0")
        block[4:8] = struct.pack("<I", crc32c(bytes(block)))
        data[1024:4096] = block
        image.write_bytes(data)
    expected = blkid_filesystem(image)
    assert expected == Filesystem("erofs", uuid, "erofsboot")
    assert probe_filesystem(bytes_reader(image.read_bytes())) == expected


# Partition tables ----------------------------------------------------------------------------


def test_gpt_matches_partx_sfdisk_and_sgdisk(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "gpt.img", 8 * MiB)
    run("sgdisk", "-o",
        "-n", "1:2048:+1M", "-t", "1:ef00", "-c", "1:EFI System",
        "-u", "1:11111111-2222-3333-4444-555555555555",
        "-n", "3:0:+1M", "-c", "3:bööt ☃ 😀",  # non-BMP: a surrogate pair in UTF-16
        "-n", "4:0:+1M", "-c", "4:padded   ",  # blkid trims trailing whitespace
        "-n", "7:0:+1M",  # no name; 2, 5 and 6 stay unused but keep their numbers
        image)
    expected = partx_partitions(image)
    assert sorted(expected) == [1, 3, 4, 7]
    got = probe_partitions(bytes_reader(image.read_bytes()))
    assert got == expected
    for number, entry in sfdisk_json(image).items():
        assert got[number].partuuid == entry["uuid"].lower()
        assert got[number].partlabel == (entry.get("name", "").rstrip() or None)
        info = run("sgdisk", "-i", number, image)
        guid = re.search(r"Partition unique GUID: (\S+)", info)
        name = re.search(r"Partition name: '(.*)'", info)
        assert guid is not None and name is not None
        assert got[number].partuuid == guid[1].lower()
        if "\ufffd" not in name[1]:  # sgdisk 1.0.9 prints non-BMP characters as bad UTF-8
            assert got[number].partlabel == (name[1].rstrip() or None)


def test_gpt_needs_a_protective_mbr(tmp_path: Path) -> None:
    """Like the kernel, libblkid ignores a GPT header unless the MBR declares it (type 0xEE)."""
    image = sparse_file(tmp_path / "gpt.img", 4 * MiB)
    run("sgdisk", "-o", "-n", "1:2048:+1M", image)
    data = bytearray(image.read_bytes())
    assert probe_partitions(bytes_reader(bytes(data))) == partx_partitions(image) != {}
    data[:512] = bytes(512)
    image.write_bytes(data)
    assert partx(image) == {}
    assert probe_partitions(bytes_reader(bytes(data))) == {}


def test_gpt_with_4096_byte_sectors(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "gpt4k.img", 16 * MiB)
    script = tmp_path / "layout.sfdisk"
    script.write_text('label: gpt\n'
                      'start=256, size=512, name="ESP 4k",'
                      ' uuid=aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee\n'
                      'start=1024, size=256, name="second"\n')
    # sgdisk and sfdisk take the sector size from the device; fdisk -b overrides it.
    run("fdisk", "-b", "4096", image, stdin=f"I\n{script}\nw\n")
    expected = partx_partitions(image, "--sector-size", 4096)
    assert [p.partlabel for p in expected.values()] == ["ESP 4k", "second"]
    data = image.read_bytes()
    assert probe_partitions(bytes_reader(data), sector_size=4096) == expected
    # Read with the wrong sector size there is no header at LBA 1, as for partx.
    assert partx(image) == {}
    assert probe_partitions(bytes_reader(data)) == {}


def make_mbr(path: Path, label_id: str = "0x1234abcd") -> Path:
    """Primaries 1 and 4, extended 2 holding logicals 5 and 6; slot 3 empty."""
    sparse_file(path, 8 * MiB)
    run("sfdisk", "-q", path, stdin=(
        f"label: dos\nlabel-id: {label_id}\n"
        f"{path}1 : start=2048, size=2048, type=83, bootable\n"
        f"{path}2 : start=4096, size=8192, type=5\n"
        f"{path}4 : start=12288, size=2048, type=c\n"
        f"{path}5 : start=6144, size=2048, type=83\n"
        f"{path}6 : start=10240, size=1024, type=82\n"))
    return path


def test_mbr_with_logical_partitions_matches_partx_and_sfdisk(tmp_path: Path) -> None:
    image = make_mbr(tmp_path / "mbr.img")
    expected = partx_partitions(image)
    assert sorted(expected) == sorted(sfdisk_json(image)) == [1, 2, 4, 5, 6]
    assert blkid(image)["PTUUID"] == "1234abcd"
    assert expected[5].partuuid == "1234abcd-05"
    assert probe_partitions(bytes_reader(image.read_bytes())) == expected


def test_mbr_ebr_loop_terminates(tmp_path: Path) -> None:
    image = make_mbr(tmp_path / "loop.img")
    data = bytearray(image.read_bytes())
    ex_start = 4096
    # The first EBR's link slot points at the second EBR; make that one link to itself.
    link = struct.unpack_from("<II", data, ex_start * 512 + 446 + 16 + 8)
    second_ebr = (ex_start + link[0]) * 512
    struct.pack_into("<B3xB3xII", data, second_ebr + 446 + 16, 0, 0x05, *link)
    image.write_bytes(data)
    expected = partx_partitions(image)
    assert sorted(expected) == [1, 2, 4, 5, 6]
    assert probe_partitions(bytes_reader(bytes(data))) == expected


def test_mbr_zero_signature_keeps_kernel_format(tmp_path: Path) -> None:
    """blkid prints no PARTUUID for signature 0; the kernel's root=PARTUUID= uses 00000000-NN."""
    image = make_mbr(tmp_path / "nosig.img", label_id="0")
    expected = partx(image)
    assert all(entry["UUID"] == "" for entry in expected.values())
    got = probe_partitions(bytes_reader(image.read_bytes()))
    assert sorted(got) == sorted(expected)
    assert {p.partuuid for p in got.values()} == {f"00000000-{n:02x}" for n in expected}


def test_filesystems_inside_partitions(tmp_path: Path) -> None:
    image = sparse_file(tmp_path / "disk.img", 24 * MiB)
    run("sgdisk", "-o", "-n", "1:2048:+8M", "-c", "1:esp", "-n", "2:0:+8M", "-c", "2:boot",
        image)
    starts = {nr: int(f["START"]) * 512 for nr, f in partx(image).items()}
    run("mkfs.vfat", "--offset", starts[1] // 512, "-n", "INPART", image, 8 * 1024)
    run("mkfs.ext4", "-q", "-E", f"offset={starts[2]}", "-L", "inext4", image, "8M")
    with pread_reader(image) as read:
        assert set(probe_partitions(read)) == {1, 2}
    for start in starts.values():
        with pread_reader(image, base=start) as read:
            assert probe_filesystem(read) == blkid_filesystem(image, "--offset", start)


def test_whole_disk_fat_is_not_a_partition_table(tmp_path: Path) -> None:
    """A FAT boot sector ends in 0x55AA too; blkid and the probe must not read it as an MBR."""
    image = sparse_file(tmp_path / "superfloppy.img", 4 * MiB)
    run("mkfs.vfat", image)
    assert "PTTYPE" not in blkid(image)
    assert partx(image) == {}
    assert probe_partitions(bytes_reader(image.read_bytes())) == {}


# Hostile input -------------------------------------------------------------------------------


def test_empty_device() -> None:
    assert probe_filesystem(bytes_reader(b"")) is None
    assert probe_partitions(bytes_reader(b"")) == {}


@given(st.binary(max_size=4096))
def test_garbage_never_raises(data: bytes) -> None:
    result = probe_filesystem(bytes_reader(data))
    assert result is None or isinstance(result, Filesystem)
    assert isinstance(probe_partitions(bytes_reader(data)), dict)


@given(st.binary(min_size=1, max_size=4096), st.sampled_from([0, 512, 1024, 4096, 0x10000]))
def test_garbage_at_signature_offsets_never_raises(chunk: bytes, offset: int) -> None:
    data = bytes(offset) + chunk
    probe_filesystem(bytes_reader(data))
    for sector_size in (512, 4096):
        probe_partitions(bytes_reader(data), sector_size)


@pytest.fixture(scope="module")
def real_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, list[int]]]:
    """Small real images and the offsets of their metadata, for mutation tests."""
    base = tmp_path_factory.mktemp("images")
    images: dict[str, tuple[bytes, list[int]]] = {}
    for fat in ("12", "16", "32"):
        path = sparse_file(base / f"fat{fat}.img", 40 * MiB if fat == "32" else 16 * MiB)
        run("mkfs.vfat", "-F", fat, "-n", "LBL", path)
        data = path.read_bytes()
        images[f"fat{fat}"] = (data, [0, 512, data.index(b"LBL        ", 512) & ~511])
    ext4 = sparse_file(base / "ext4.img", 2 * MiB)
    run("mkfs.ext4", "-q", "-L", "lbl", ext4)
    images["ext4"] = (ext4.read_bytes(), [1024])
    gpt = sparse_file(base / "gpt.img", 4 * MiB)
    run("sgdisk", "-o", "-n", "1:2048:+1M", "-c", "1:name", gpt)
    images["gpt"] = (gpt.read_bytes(), [0, 512, 1024, 1536])
    data = make_mbr(base / "mbr.img").read_bytes()
    second_ebr = (4096 + struct.unpack_from("<I", data, 4096 * 512 + 446 + 16 + 8)[0]) * 512
    images["mbr"] = (data, [0, 4096 * 512, second_ebr])
    return images


def patched_reader(image: bytes, patches: dict[int, int], length: int) -> Reader:
    """The first `length` bytes of `image` with single bytes replaced, without copying it."""

    def read(off: int, n: int) -> bytes:
        chunk = bytearray(image[off:min(off + n, length)])
        for pos, value in patches.items():
            if off <= pos < off + len(chunk):
                chunk[pos - off] = value
        return bytes(chunk)

    return read


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_real_images_never_raise(
    real_images: dict[str, tuple[bytes, list[int]]], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(real_images)))
    image, hot = real_images[name]
    patches = {}
    for _ in range(data.draw(st.integers(1, 8))):
        offset = data.draw(st.sampled_from(hot)) + data.draw(st.integers(0, 511))
        patches[offset] = data.draw(st.integers(0, 255))
    length = data.draw(st.sampled_from([len(image), *hot, *(h + 300 for h in hot)]))
    read = patched_reader(image, patches, length)
    result = probe_filesystem(read)
    assert result is None or isinstance(result, Filesystem)
    for number, partition in probe_partitions(read).items():
        assert number == partition.number >= 1


@pytest.mark.parametrize("cut", [1, 446, 511, 512, 1024, 1100, 1536, 2048, 4096, 65536 + 0x100])
def test_truncated_images_never_raise(real_images: dict[str, tuple[bytes, list[int]]],
                                      cut: int) -> None:
    for image, _ in real_images.values():
        read = bytes_reader(image[:cut])
        probe_filesystem(read)
        probe_partitions(read)
