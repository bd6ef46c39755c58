"""dm-verity over the image's loop device: the checks before, the table, and the seal after.

The builder appends a veritysetup-format superblock and hash tree to the image file and puts
the root hash, salt and sizes into the mini-initramfs's config (build/.../verity.py). Here:

1. `check_superblock`: the file's own superblock must describe the tree this config expects.
   A file too short for it means the tree is missing; another salt or size means the image
   comes from another build (each build has its own salt), named as such.
2. the table is loaded with no corruption option, so that a bad block is an I/O error for the
   reader, and storage-init reads the device's first block: a root hash that the tree does not
   give fails right there with a message and the rd.emergency policy, instead of somewhere in
   the mount.
3. `seal`, just before init takes over: the same table with restart_on_corruption
   (rd.emergency=reboot, the default) or panic_on_corruption (poweroff or halt: the kernel
   stops with the reason on the console), so no later reader ever sees a wrong block or
   carries on past a corrupted one.
"""

from __future__ import annotations

import struct

from .record import record

BLOCK = 4096
SECTORS_PER_BLOCK = BLOCK // 512
ALGORITHM = "sha256"
# This CPU's fastest ALGORITHM (sha256_ssse3: SSSE3, AVX, AVX2 or SHA-NI code), loaded before
# the table: dm-verity takes the best one registered when its table is loaded and keeps it for
# the mapping's life, and in the real root udev would load it only after that, leaving every
# read of the image hashed by sha256-generic. A CPU without those features skips it (its cpu:
# aliases), as QEMU's default one does.
HASH_MODULE = f"crypto-{ALGORITHM}"
DIGEST = 32
PER_BLOCK = BLOCK // DIGEST
# struct verity_sb (cryptsetup lib/verity/verity.c): signature, version, hash_type, uuid,
# algorithm, data and hash block sizes, data blocks, salt size, pad, salt, pad: 512 bytes.
SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6x256s168x")
SIGNATURE = b"verity\0\0"
DM_NAME = "initoverlayfs"
ON_CORRUPTION = {"reboot": "restart_on_corruption", "poweroff": "panic_on_corruption",
                 "halt": "panic_on_corruption"}
_HEX = frozenset("0123456789abcdef")


def level_sizes(data_blocks: int) -> list[int]:
    """Hash blocks of each level, level 0 (over the data) first, as the kernel counts them
    (dm-verity-target.c: levels until one block holds every digest of the level below)."""
    sizes: list[int] = []
    count = data_blocks
    while count > 1:  # one data block has no tree: its own digest is the root
        count = -(-count // PER_BLOCK)
        sizes.append(count)
    return sizes


def parse_hex(value: str, what: str, length: int | None = None) -> str:
    value = value.lower()
    if not value or len(value) % 2 or not set(value) <= _HEX or (
            length is not None and len(value) != length):
        size = f"{length} hex digits" if length else "an even number of hex digits"
        raise ValueError(f"{what} must be {size}, got {value!r}")
    return value


@record(frozen=True)
class Verity:
    root_hash: str
    salt: str  # hex; "" for none
    data_blocks: int
    hash_offset: int  # bytes into the image file where the superblock is

    @property
    def sectors(self) -> int:
        return self.data_blocks * SECTORS_PER_BLOCK

    @property
    def file_size(self) -> int:
        """The smallest image file that holds the data, the superblock and the whole tree."""
        return self.hash_offset + (1 + sum(level_sizes(self.data_blocks))) * BLOCK

    def table(self, device: str, on_corruption: str | None = None) -> str:
        """The verity target's parameters: data and hash tree on the same device, the tree
        one block (the superblock) after `hash_offset`."""
        words = ["1", device, device, str(BLOCK), str(BLOCK), str(self.data_blocks),
                 str(self.hash_offset // BLOCK + 1), ALGORITHM, self.root_hash,
                 self.salt or "-"]
        if on_corruption:
            words += ["1", on_corruption]
        return " ".join(words)


def check_superblock(expected: Verity, block: bytes, file_size: int) -> str | None:
    """What is wrong with the image's verity superblock and size, or None."""
    if len(block) < SUPERBLOCK.size:
        return (f"it has no verity hash tree: it is {file_size} bytes and the tree should "
                f"start at byte {expected.hash_offset}")
    (signature, version, hash_type, _uuid, algorithm, data_size, hash_size, data_blocks,
     salt_size, salt) = SUPERBLOCK.unpack_from(block)
    if signature != SIGNATURE:
        return f"it has no verity hash tree (no verity superblock at byte {expected.hash_offset})"
    found = (version, hash_type, algorithm.rstrip(b"\0").decode(errors="replace"), data_size,
             hash_size)
    if found != (1, 1, ALGORITHM, BLOCK, BLOCK):
        return (f"its verity superblock is of a format storage-init does not read: version, "
                f"hash type, algorithm, block sizes = {found}")
    salt_hex = salt[:salt_size].hex()
    if (data_blocks, salt_hex) != (expected.data_blocks, expected.salt):
        return (f"it is not the image this mini-initramfs was built with: its hash tree is for "
                f"{data_blocks} blocks with salt {salt_hex[:16]}..., the config expects "
                f"{expected.data_blocks} blocks with salt {expected.salt[:16]}...")
    if file_size < expected.file_size:
        return (f"its verity hash tree is cut short: the file is {file_size} bytes, the tree "
                f"ends at byte {expected.file_size}")
    return None
