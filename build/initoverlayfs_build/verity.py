"""dm-verity for the initoverlayfs image: the hash tree appended to the image file itself.

One file on /boot holds the EROFS data, a veritysetup-compatible superblock and the hash
tree, so the image and its tree are replaced together by one rename (output.install) and can
never be out of step with each other; the root hash goes into the mini-initramfs's config,
which the bootloader loads (and Secure Boot can sign) with the kernel.

The layout is the kernel's format version 1 with sha256 and 4 KiB blocks, as `veritysetup
format --hash-offset=<data bytes> image image` writes it (tests/unit/test_verity.py checks
that byte for byte): data blocks | superblock block | top level | ... | level 0. Each digest is
sha256(salt + block); a level is padded with zero bytes to whole blocks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from storage_init.verity import ALGORITHM, BLOCK, SIGNATURE, SUPERBLOCK, Verity, level_sizes


def _digests(blocks: list[bytes], salt: bytes) -> bytes:
    out = bytearray()
    for block in blocks:
        h = hashlib.sha256(salt)
        h.update(block)
        out += h.digest()
    return bytes(out)


def _blocks(data: bytes) -> list[bytes]:
    padded = data + bytes(-len(data) % BLOCK)
    return [padded[i:i + BLOCK] for i in range(0, len(padded), BLOCK)]


def hash_tree(image: Path, salt: bytes, data_blocks: int | None = None
              ) -> tuple[bytes, list[bytes]]:
    """(root digest, levels top first, each padded to whole blocks) of a block-aligned file,
    or of its first `data_blocks` blocks (an image with its tree appended, checked again)."""
    size = image.stat().st_size
    if size % BLOCK or size == 0:
        raise ValueError(f"{image} is {size} bytes, not a positive multiple of {BLOCK}")
    blocks = size // BLOCK if data_blocks is None else data_blocks
    digests = bytearray()
    left = blocks
    with image.open("rb") as f:
        while left and (chunk := f.read(BLOCK * min(256, left))):
            digests += _digests(_blocks(chunk), salt)
            left -= len(chunk) // BLOCK
    levels: list[bytes] = []
    for _ in level_sizes(blocks):
        levels.append(bytes(digests) + bytes(-len(digests) % BLOCK))
        digests = bytearray(_digests(_blocks(levels[-1]), salt))
    # the digest of the top block (or of the only data block) is the root
    return bytes(digests), levels[::-1]


def superblock(data_blocks: int, salt: bytes, uuid: bytes) -> bytes:
    packed = SUPERBLOCK.pack(SIGNATURE, 1, 1, uuid, ALGORITHM.encode(), BLOCK, BLOCK,
                             data_blocks, len(salt), salt)
    return packed + bytes(BLOCK - len(packed))


def append(image: Path, salt: bytes, uuid: bytes) -> Verity:
    """Pad the image to whole blocks, append superblock and tree, return what the boot needs
    (the config's verity keys: storage_init.config.verity_lines)."""
    if not 0 < len(salt) <= 256 or len(uuid) != 16:
        raise ValueError("verity: salt must be 1-256 bytes and the uuid 16")
    size = image.stat().st_size
    with image.open("ab") as f:
        f.write(bytes(-size % BLOCK))
    data_blocks = image.stat().st_size // BLOCK
    root, levels = hash_tree(image, salt)
    with image.open("ab") as f:
        f.write(superblock(data_blocks, salt, uuid))
        for level in levels:
            f.write(level)
    return Verity(root.hex(), salt.hex(), data_blocks, data_blocks * BLOCK)
