"""The two files one build makes for a kernel, and how they replace the previous two.

The mini-initramfs keeps the name the bootloader loads (`initramfs-KVER.img`); the image gets
a name of its own for each build (`initoverlayfs-KVER-ID.img`, ID from its verity root hash or
its content), which the mini-initramfs's config names in `fs`. The new image is renamed into
place beside the old one, then the mini-initramfs over the old one, then the old image is
removed: at every instant /boot holds a mini-initramfs and the image it names and was built
with, so a crash or a power loss anywhere leaves a machine that boots, the old pair or the new.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from storage_init.config import IMAGE_PREFIX, image_name

from . import output
from .ui import Ui

MINI_PREFIX = "initramfs-"
ID_LENGTH = 16
_HEX = frozenset("0123456789abcdef")


def mini_name(kver: str) -> str:
    return f"{MINI_PREFIX}{kver}.img"


def is_image_of(name: str, kver: str) -> bool:
    if name == image_name(kver):  # earlier builds' and the C original's one name
        return True
    head, tail = f"{IMAGE_PREFIX}{kver}-", ".img"
    middle = name[len(head):-len(tail)]
    return (name.startswith(head) and name.endswith(tail) and len(middle) == ID_LENGTH
            and set(middle) <= _HEX)


def images_of(directory: Path, kver: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(directory) if is_image_of(n, kver))
    except FileNotFoundError:
        return []


def image_id(image: Path, root_hash: str | None) -> str:
    """The verity root hash already covers every byte; without verity, the content's hash."""
    if root_hash is None:
        digest = hashlib.sha256()
        with image.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        root_hash = digest.hexdigest()
    return root_hash[:ID_LENGTH]


def replace(ui: Ui, boot_dir: Path, kver: str, image: Path, name: str, mini: bytes) -> None:
    """The new image, then the mini-initramfs that names it; then every other image of
    this kernel (older builds', under the lock, so also one a concurrent build replaced)."""
    done = output.install(boot_dir, [output.Output(name, image),
                                     output.Output(mini_name(kver), mini)],
                          obsolete=lambda: images_of(boot_dir, kver),
                          temp_prefixes=(MINI_PREFIX, IMAGE_PREFIX))
    if done.cleaned:
        ui.info(f"removed what a killed run left in {boot_dir}: {', '.join(done.cleaned)}")
    for left in done.left:
        ui.warning(f"the new pair is in place; the previous image {left} was not removed")
