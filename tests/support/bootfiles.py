"""A built pair read back the way the tests check it: the config inside a mini-initramfs,
cryptsetup's verdict on an image against that config, and an ext4 /boot read as a bootloader
reads it (without the journal) or as the kernel does (after replaying it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from initoverlayfs_build import cpio, initramfs
from initoverlayfs_build.run import need
from initoverlayfs_build.ui import Ui

from storage_init.config import Config, parse_config

CONFIG = "etc/initoverlayfs.conf"


def mini_config_text(mini: bytes) -> str:
    """The config file inside a mini-initramfs (any compression the kernel reads)."""
    archive = initramfs.unpacked_archive(Ui("tests", quiet=True), mini)
    return {e.name: e for e in cpio.read_all(archive)}[CONFIG].data.decode()


def mini_config(mini: bytes) -> Config:
    return parse_config(mini_config_text(mini))


def verity_refusal(image: Path, config: Config) -> str | None:
    """None when `veritysetup verify` (cryptsetup's own code, reading every block) accepts
    the image against the config's root hash; else what it said."""
    assert config.verity_hash_offset and config.verity_roothash, config
    out = subprocess.run([need("veritysetup", "to verify an image"), "verify",
                          f"--hash-offset={config.verity_hash_offset}", str(image), str(image),
                          config.verity_roothash], capture_output=True, text=True)
    return None if out.returncode == 0 else out.stdout + out.stderr


def ext4_file(fs: Path, name: str) -> bytes | None:
    """A file of an ext4 filesystem image as debugfs reads it: without replaying the
    journal, as GRUB reads /boot. None when it is not there."""
    out = subprocess.run(["debugfs", "-R", f"cat /{name}", str(fs)], capture_output=True,
                         check=True)
    return None if b"File not found" in out.stderr else out.stdout


def replay_journal(fs: Path) -> None:
    """What the kernel does when it mounts the filesystem: replay its journal (only)."""
    out = subprocess.run(["e2fsck", "-f", "-y", "-E", "journal_only", str(fs)],
                         capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stdout + out.stderr  # 1: corrected (replayed)
