"""Compressing the mini-initramfs in a format the kernel unpacks, with flags that give the same
bytes every time, and choosing that format for the target kernel.

Chosen by what a boot pays, the kernel's unpack, measured by instructions (QEMU -icount) on the
11.5 MB mini-initramfs (docs/choices.md): lz4 -l -12 4.78 MB in 90 ms, zstd -15
3.77 MB in 193 ms (-19: 3.40 MB in 223 ms), gzip and xz slower still. lz4 is the default for a
kernel that unpacks it and reads its end mark (below); zstd, the smallest of the fast ones and
self-terminating, for any other. lz4's extra megabyte is what the bootloader reads more: natively
on this machine lz4 decodes the mini-initramfs in 4 ms and zstd in 16, so lz4 is the sooner boot
wherever firmware reads the boot disk faster than about 80 MB/s on a server CPU, or about 20 MB/s
on a CPU four times slower (an edge board's), which covers eMMC, UFS, NVMe and most SD cards.
"""

from __future__ import annotations

from pathlib import Path

from . import kconfig
from .run import need, run
from .ui import Ui

COMMANDS: dict[str, list[str]] = {
    "zstd": ["zstd", "-15", "-T1", "-q", "-c"],  # -15: -19's 0.37 MB less cost 30 ms more
    # the kernel reads only the legacy lz4 frame
    "lz4": ["lz4", "-l", "-12", "-q", "-c"],
    "gzip": ["gzip", "-n", "-9", "-c"],  # -n: no name or timestamp in the header
    # the kernel's xz decoder checks CRC32 only, and large dictionaries cost it memory
    "xz": ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-T1", "-c"],
    "none": [],
}
FALLBACK = "zstd"
# The legacy lz4 frame has no end: the kernel decodes chunks until its input ends, so anything a
# bootloader appends after it (GRUB's second initrd, systemd-stub's credential and sysext cpios)
# was read as one more chunk: "Initramfs unpacking failed: Decoding failed", and that part lost.
# Since 2c484419efc0 ("lib/decompress_unlz4.c: correctly handle zero-padding around initrds",
# 2021) the kernel takes a zero chunk size as the end and goes on with what follows, skipping
# zeros. So an lz4 mini-initramfs ends with a zero word, padded to 4 bytes as cpio offsets are.
# Only for kernels that have it (before it, the zero word fails the unpack), counted from 6.1:
# the oldest kernel whose boot with an appended cpio this project tests.
LZ4_END_MARK_SINCE = (6, 1)
LZ4_END_MARK = b"\0\0\0\0"


def kernel_version(kver: str) -> tuple[int, int] | None:
    """`6.1.0-57-cloud-amd64` -> (6, 1); None for a name that does not start like that."""
    parts = kver.split(".", 2)
    if len(parts) < 2:
        return None
    minor = ""
    for char in parts[1]:
        if not char.isdigit():
            break
        minor += char
    if not parts[0].isdigit() or not minor:
        return None
    return int(parts[0]), int(minor)


def reads_lz4_end_mark(kver: str) -> bool:
    version = kernel_version(kver)
    return version is not None and version >= LZ4_END_MARK_SINCE


def default_method(kver: str, kernel_config: Path) -> str:
    """lz4 when the target kernel unpacks it (CONFIG_RD_LZ4=y in its config file) and reads
    its end mark; otherwise zstd, as when the config file is not there to say."""
    if kconfig.enabled(kernel_config, "CONFIG_RD_LZ4") and reads_lz4_end_mark(kver):
        return "lz4"
    return FALLBACK


def compress(ui: Ui, method: str, data: bytes) -> bytes:
    command = COMMANDS[method]
    if not command:
        return data
    tool = need(command[0], f"to compress the mini-initramfs with {method}")
    return run(ui, [tool, *command[1:]], stdin=data)


def finish(method: str, kver: str, initramfs: bytes) -> bytes:
    """The whole mini-initramfs file, with lz4's end mark where the kernel reads it, so that
    what a bootloader appends is unpacked too."""
    if method != "lz4" or not reads_lz4_end_mark(kver):
        return initramfs
    marked = initramfs + LZ4_END_MARK
    return marked + b"\0" * (-len(marked) % 4)
