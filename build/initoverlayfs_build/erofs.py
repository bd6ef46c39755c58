"""The initoverlayfs image: mkfs.erofs over a tree, reproducible (fixed timestamp and UUID,
files owned by root as in any initramfs), compressed when the tools and the kernel allow."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from . import kconfig
from .errors import BuildError
from .run import need, run
from .ui import Ui

PREFERRED = "lz4hc,11"


def available_compressors(ui: Ui, mkfs: str) -> list[str]:
    """What this mkfs.erofs can compress with, from its --help."""
    return compressors_in(run(ui, [mkfs, "--help"], merge_stderr=True).decode(errors="replace"))


def compressors_in(help_text: str) -> list[str]:
    """The compressors mkfs.erofs --help lists: erofs-utils 1.5 and 1.6 on one line
    ("Available compressors are: lz4, lz4hc, lzma"), 1.7 and later one per line under
    "supported compressors and their option ranges are:", each name alone on its line and
    its options ("[,level=...]") on the lines below, until the next option ("-C#")."""
    match = re.search(r"Available compressors are:\s*(.*)", help_text)
    if match:
        return [name for name in re.split(r"[ ,]+", match.group(1)) if name]
    lines = help_text.splitlines()
    start = next((n for n, line in enumerate(lines)
                  if re.search(r"supported compressors.*are:", line)), None)
    if start is None:
        return []
    names = []
    for line in lines[start + 1:]:
        item = line.strip()
        if item.startswith("-"):
            break
        if re.fullmatch(r"[a-z0-9_]+", item):
            names.append(item)
    return names


def choose_compression(ui: Ui, mkfs: str, requested: str | None,
                       kernel_config: Path) -> str | None:
    """`requested` as given (mkfs.erofs's -z argument, "none" for no compression), else
    lz4hc level 11 when both mkfs.erofs and the target kernel support it."""
    if requested is not None:
        requested = requested.removeprefix("-z")
        return None if requested in ("", "none") else requested
    if kconfig.enabled(kernel_config, "CONFIG_EROFS_FS_ZIP") is False:
        ui.warning(f"{kernel_config} has no CONFIG_EROFS_FS_ZIP=y: the image is left "
                   "uncompressed so this kernel can read it")
        return None
    have = available_compressors(ui, mkfs)
    if "lz4hc" in have:
        return PREFERRED
    if "lz4" in have:
        return "lz4"
    ui.warning("this mkfs.erofs has no lz4/lz4hc compressor; the image is uncompressed")
    return None


def image_uuid(kver: str, epoch: int) -> str:
    """Stable across rebuilds of the same kernel at the same SOURCE_DATE_EPOCH."""
    digest = bytearray(hashlib.sha256(f"initoverlayfs {kver} {epoch}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # a name-based UUID, version 5 layout
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def make_image(ui: Ui, tree: Path, output: Path, *, compression: str | None, kver: str,
               epoch: int) -> None:
    mkfs = need("mkfs.erofs", "to make the initoverlayfs image")
    if not tree.is_dir():
        raise BuildError(f"{tree} is not a directory")
    argv = [mkfs, f"-T{epoch}", f"-U{image_uuid(kver, epoch)}", "--all-root"]
    if compression:
        argv.append(f"-z{compression}")
    argv += [os.fspath(output), os.fspath(tree)]
    with ui.step(f"making the EROFS image ({compression or 'uncompressed'})"):
        run(ui, argv)
