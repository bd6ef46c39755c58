"""Compressing the mini-initramfs in a format the kernel unpacks, with flags that give the same
bytes every time."""

from __future__ import annotations

from .run import need, run
from .ui import Ui

COMMANDS: dict[str, list[str]] = {
    "zstd": ["zstd", "-15", "-T1", "-q", "-c"],
    # the kernel reads only the legacy lz4 frame
    "lz4": ["lz4", "-l", "-12", "-q", "-c"],
    "gzip": ["gzip", "-n", "-9", "-c"],  # -n: no name or timestamp in the header
    # the kernel's xz decoder checks CRC32 only, and large dictionaries cost it memory
    "xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-T1", "-c"],
    "none": [],
}
# Chosen by measurement (scripts/measure-builder and real boots; README "Choices"): zstd -19
# made 6.7 MB that decompressed in 62-77 ms; lz4 9.6 MB in 19-21 ms; gzip 8.4 MB in 195 ms;
# xz 6.3 MB in 557-602 ms. lz4 unpacks fastest, but the kernel reads its legacy frame to the
# end of the data: anything after it (a second initrd a bootloader concatenates, an appended
# cpio) makes a real Debian kernel report "Initramfs unpacking failed: Decoding failed". zstd
# is the smallest of the fast ones and ends where its frame ends. Its level is what the kernel's
# unpack costs, measured by instructions (QEMU -icount) on the 11.5 MB mini-initramfs: -19
# 3.40 MB in 223 ms, -17 3.54 MB in 211, -15 3.77 MB in 193, -12 3.79 MB in 195, -9 3.82 MB
# in 198. -15 (dracut's level too) is the fastest: 30 ms less for 0.37 MB more for the
# bootloader to read, a few ms at the disk speeds boots see.
DEFAULT = "zstd"


def compress(ui: Ui, method: str, data: bytes) -> bytes:
    command = COMMANDS[method]
    if not command:
        return data
    tool = need(command[0], f"to compress the mini-initramfs with {method}")
    return run(ui, [tool, *command[1:]], stdin=data)
