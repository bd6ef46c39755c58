"""systemd mode: the files of the mini-initramfs that the image holds byte for byte (systemd
and its libraries are in both), so that storage-init serves them from the mini-initramfs
after the switch root instead of the image reading and hashing them a second time
(storage_init/shared.py). dracut makes the mini-initramfs and resolves the libraries only at
its end, so the builder compares the finished mini-initramfs with the image's content and
appends the list as a small uncompressed cpio segment of its own, which the kernel unpacks
after dracut's archive."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from storage_init.shared import LIST

from . import cpio


def _plain(path: Path) -> os.stat_result | None:
    """lstat of a regular file without extended attributes (a copy would not carry them)."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or os.listxattr(path, follow_symlinks=False):
            return None
    except OSError:
        return None
    return st


def _real_folders(content: Path, name: str) -> bool:
    """Every folder on the way to `name` in the content is a folder, not a symlink: the
    layer's folder would hide the image's symlink (a /usr/lib64 -> lib, say) and all it
    leads to."""
    folder = content
    for part in name.split("/")[:-1]:
        folder = folder / part
        if folder.is_symlink() or not folder.is_dir():
            return False
    return True


def listing(entries: Iterable[cpio.Entry], content: Path) -> list[str]:
    """The mini-initramfs's regular files below usr/ that the image's content has at the same
    path with the same bytes, mode and owner. Not storage-init's own folder, nor the kernel's
    modules: storage-init has loaded most of those already, the image loads the rest only on
    hardware that needs them, and copying them all (10 MB in a generic build) would cost the
    boot more than the reads it saves."""
    found: list[str] = []
    for entry in entries:
        if (entry.kind != stat.S_IFREG or not entry.name.startswith("usr/")
                or entry.name.startswith(("usr/lib/initoverlayfs/", "usr/lib/modules/"))):
            continue
        theirs = content / entry.name
        st = _plain(theirs)
        if (st is not None and _real_folders(content, entry.name)
                and st.st_size == len(entry.data)
                and stat.S_IMODE(st.st_mode) == stat.S_IMODE(entry.mode)
                and (st.st_uid, st.st_gid) == (entry.uid, entry.gid)
                and theirs.read_bytes() == entry.data):
            found.append("/" + entry.name)
    return sorted(found)


def segment(paths: list[str], mtime: int) -> bytes:
    """The uncompressed cpio archive that adds the list to the mini-initramfs."""
    text = "".join(f"{path}\n" for path in paths).encode()
    return cpio.write([cpio.Entry(LIST.lstrip("/"), stat.S_IFREG | 0o644, text)], mtime)
