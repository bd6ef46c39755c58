"""The artifacts every VM boot shares, built once: for each Debian kernel, the mini-initramfs
and EROFS image made by `initoverlayfs-install --sysroot`; one GPT disk (an EFI system
partition and the ext4 bootfs holding every image) made with sgdisk, mkfs.vfat and
`mkfs.ext4 -d`, without mounting anything."""

from __future__ import annotations

import os
import random
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from initoverlayfs_build import cpio, install, pair
from initoverlayfs_build import initramfs as initramfs_reader
from initoverlayfs_build.ui import Ui

from tests.support.debian_kernel import DebianKernel

HERE = Path(__file__).resolve().parent
# Fixed identities of the bootfs, so every scenario can name it every way.
FS_UUID = "5b4a0c1e-7d51-4f0e-9a43-1f0e2d3c4b5a"
FS_LABEL = "IOFSBOOT"
PART_UUID = "0e9f7a52-3c1b-4d6e-8f20-6a5b4c3d2e1f"
PART_LABEL = "iofs-boot"
APPLETS = ("sh", "cat", "grep", "awk", "sed", "tr", "dmesg", "sleep", "poweroff", "ls", "echo")
MARKER = "from-the-erofs-image"
# Incompressible bytes that the test init reads after the handover: a byte flipped in them
# is a corruption that only dm-verity can catch, and only when init reads it.
CANARY = random.Random(20261202).randbytes(64 * 1024)


@dataclass(frozen=True)
class KernelImages:
    kernel: DebianKernel
    initramfs: Path  # the mini-initramfs
    image: Path  # the EROFS image
    unpacked_bytes: int  # the mini-initramfs's cpio size, what the kernel unpacks into RAM


@dataclass(frozen=True)
class Disk:
    path: Path
    bootfs_start: int  # byte offset of the bootfs partition
    bootfs: Path  # the ext4 filesystem written there

    def sector_of(self, name: str) -> int:
        """A disk sector holding the first 4 KiB block of the bootfs's file `name` (its first
        filesystem block that is not a hole: an EROFS image starts with 1 KiB of zeros, which
        mkfs.ext4 -d leaves unallocated when its blocks are 1 KiB)."""
        info = subprocess.run(["dumpe2fs", "-h", str(self.bootfs)], capture_output=True,
                              text=True, check=True).stdout
        found = re.search(r"^Block size:\s+(\d+)", info, re.M)
        assert found, info
        size = int(found.group(1))
        for block in range(max(1, 4096 // size)):
            mapped = subprocess.run(["debugfs", "-R", f"bmap /{name} {block}",
                                     str(self.bootfs)], capture_output=True, text=True,
                                    check=True).stdout.strip()
            if mapped.isdigit() and int(mapped):
                return (self.bootfs_start + int(mapped) * size) // 512
        raise AssertionError(f"{name}: its first 4 KiB are a hole on the bootfs")


def content_tree(root: Path, *, with_init: bool = True, busybox: Path | None = None) -> Path:
    """A busybox system (this machine's busybox, or `busybox`: another CPU's); /sbin/init is
    the test init (or, for the no-init case, nothing that storage-init would try: no /init,
    /sbin/init, /etc/init, /bin/init or /bin/sh)."""
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "boot", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(busybox or shutil.which("busybox") or "/bin/busybox", root / "bin/busybox")
    if with_init:
        for applet in APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        shutil.copy(HERE / "testinit.sh", root / "sbin/init")
        (root / "sbin/init").chmod(0o755)
        (root / "sbin/otherinit").write_text(
            "#!/bin/sh\necho INITOVERLAYFS-OTHER-INIT \"$@\"\nexec /sbin/init \"$@\"\n")
        (root / "sbin/otherinit").chmod(0o755)
    (root / "etc/marker").write_text(MARKER + "\n")
    (root / "etc/canary").write_bytes(CANARY)
    return root


def flipped(image: Path, out: Path, offset: int) -> Path:
    data = bytearray(image.read_bytes())
    data[offset] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def canary_offset(image: Path) -> int:
    """Where the canary's bytes lie in the image (stored as they are: incompressible)."""
    at = image.read_bytes().find(CANARY[:4096])
    if at < 0:
        raise RuntimeError(f"{image}: the canary's bytes are not stored plainly")
    return at + 2048


def tree_start(data: bytes) -> int:
    """Where the builder's verity superblock starts (the last block-aligned one)."""
    return next(at for at in range(len(data) - 4096, -1, -4096)
                if data[at:at + 8] == b"verity\0\0")


def without_tree(image: Path, out: Path) -> Path:
    """The image cut where its verity superblock starts: what mkfs.erofs alone writes."""
    data = image.read_bytes()
    out.write_bytes(data[:tree_start(data)])
    return out


def build_kernel_images(work: Path, kernel: DebianKernel, content: Path,
                        frozen: Path, config: str | None = None,
                        drivers: str | None = None) -> KernelImages:
    """Both images for `kernel`; the config from the sysroot's fstab, or `config` as the
    sysroot's /etc/initoverlayfs.conf (an nbd: bootfs there builds for the network);
    `drivers`: initoverlayfs-install --drivers (default: the common storage drivers)."""
    sysroot = work / f"sysroot-{kernel.kver}{'-config' if config else ''}"
    (sysroot / "boot").mkdir(parents=True)
    (sysroot / "etc").mkdir()
    (sysroot / "lib/modules").mkdir(parents=True)
    (sysroot / "lib/modules" / kernel.kver).symlink_to(kernel.modules)
    shutil.copy(kernel.root / "boot" / f"config-{kernel.kver}", sysroot / "boot")
    (sysroot / "etc/fstab").write_text(f"UUID={FS_UUID} /boot ext4 defaults 0 2\n")
    if config:
        (sysroot / "etc/initoverlayfs.conf").write_text(config)
    code = install.main(["--sysroot", str(sysroot), "--kver", kernel.kver, "-q",
                         "--storage-init", str(frozen), "--from-dir", str(content),
                         *(["--drivers", drivers] if drivers is not None else [])])
    if code != 0:
        raise RuntimeError(f"initoverlayfs-install failed for {kernel.kver}")
    initramfs = sysroot / "boot" / f"initramfs-{kernel.kver}.img"
    unpacked = unpacked_archive(initramfs)
    (image,) = pair.images_of(sysroot / "boot", kernel.kver)  # the build's own name
    return KernelImages(kernel, initramfs, sysroot / "boot" / image, len(unpacked))


def unpacked_archive(initramfs: Path) -> bytes:
    """The cpio the kernel unpacks from a mini-initramfs file (read as the builder reads one)."""
    return initramfs_reader.unpacked_archive(Ui("images", quiet=True), initramfs.read_bytes())


def with_extra_files(initramfs: Path, out: Path, files: dict[str, tuple[int, bytes]]) -> Path:
    """The mini-initramfs with an uncompressed cpio appended, as a bootloader appends a second
    initrd: the kernel unpacks both (after an lz4 stream, thanks to its end mark), later
    entries replacing earlier ones (how a scenario swaps the config or adds a shell)."""
    entries = []
    dirs: set[str] = set()
    for name, (mode, data) in files.items():
        parts = name.split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        entries.append(cpio.Entry(name, mode, data))
    entries += [cpio.Entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    base = initramfs.read_bytes()
    # The kernel only looks for a cpio magic at 4-byte aligned offsets after a compressed
    # segment (what bootloaders pad concatenated initrds to); zeros in between are skipped.
    out.write_bytes(base + b"\0" * (-len(base) % 4) + cpio.write(entries, 0))
    return out


def make_bootfs(work: Path, name: str, files: dict[str, Path],
                fifos: tuple[str, ...] = ()) -> Path:
    """An ext4 filesystem (the bootfs's UUID and label) holding `files` and named FIFOs,
    made without mounting: the bootfs partition of the disk, or on its own the NBD export."""
    bootdir = work / name
    bootdir.mkdir()
    for file_name, source in files.items():
        shutil.copy(source, bootdir / file_name)
    for fifo in fifos:
        os.mkfifo(bootdir / fifo)
    size_mb = max(64, sum(p.stat().st_size for p in files.values()) // (1 << 20) + 32)
    ext4 = work / f"{name}.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", FS_UUID, "-L", FS_LABEL, "-d", str(bootdir),
                    str(ext4), f"{size_mb}M"], check=True, capture_output=True)
    return ext4


def make_disk(work: Path, bootfs_files: dict[str, Path], fifos: tuple[str, ...] = (),
              power_of_two: bool = False) -> Disk:
    """`power_of_two`: a disk of 2^n bytes, the only sizes QEMU's SD card takes."""
    ext4 = make_bootfs(work, "bootfs", bootfs_files, fifos)
    size_mb = ext4.stat().st_size >> 20
    esp = work / "esp.vfat"
    subprocess.run(["mkfs.vfat", "-C", str(esp), str(8 * 1024)], check=True,
                   capture_output=True)
    disk = work / "disk.img"
    total = (size_mb + 8 + 2) << 20
    with disk.open("wb") as f:
        f.truncate(1 << (total - 1).bit_length() if power_of_two else total)
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:+8M", "-t", "1:ef00", "-c", "1:esp",
                    "-n", f"2:0:+{size_mb}M", "-t", "2:8300", "-c", f"2:{PART_LABEL}",
                    "-u", f"2:{PART_UUID}", str(disk)], check=True, capture_output=True)
    starts = {}
    for number in (1, 2):
        info = subprocess.run(["sgdisk", "-i", str(number), str(disk)], check=True,
                              capture_output=True, text=True).stdout
        match = re.search(r"First sector: (\d+)", info)
        assert match, info
        starts[number] = int(match.group(1)) * 512
    for number, image in ((1, esp), (2, ext4)):
        subprocess.run(["dd", f"if={image}", f"of={disk}", "bs=1M", "oflag=seek_bytes",
                        f"seek={starts[number]}", "conv=notrunc,fsync", "status=none"],
                       check=True)
    return Disk(disk, starts[2], ext4)
