"""Compressing the mini-initramfs in a format the kernel unpacks, with flags that give the same
bytes every time."""

from __future__ import annotations

from .run import need, run
from .ui import Ui

COMMANDS: dict[str, list[str]] = {
    "zstd": ["zstd", "-19", "-T1", "-q", "-c"],
    # the kernel reads only the legacy lz4 frame
    "lz4": ["lz4", "-l", "-12", "-q", "-c"],
    "gzip": ["gzip", "-n", "-9", "-c"],  # -n: no name or timestamp in the header
    # the kernel's xz decoder checks CRC32 only, and large dictionaries cost it memory
    "xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-T1", "-c"],
    "none": [],
}
# Chosen by measurement (scripts/measure-builder, Debian cloud kernel, README "Choices"):
# lz4 -12 made 9.6 MB that decompressed in 19 ms; zstd -19 6.7 MB in 62 ms; gzip 8.4 MB in
# 195 ms; xz 6.3 MB in 557 ms. lz4's 2.9 MB more cost less than its 43 ms saved whenever the
# bootloader reads faster than ~68 MB/s (eMMC, NVMe, SATA SSDs, and QEMU's -initrd), which is
# where boot time matters here; on slower media, pass --compress zstd.
DEFAULT = "lz4"


def compress(ui: Ui, method: str, data: bytes) -> bytes:
    command = COMMANDS[method]
    if not command:
        return data
    tool = need(command[0], f"to compress the mini-initramfs with {method}")
    return run(ui, [tool, *command[1:]], stdin=data)
