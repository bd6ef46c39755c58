"""The builder's side of the files the mini-initramfs and the image share (systemd mode)."""

from __future__ import annotations

import stat
from pathlib import Path

from initoverlayfs_build import cpio, sharedfiles

from storage_init.shared import LIST, parse


def tree(root: Path, files: dict[str, bytes], mode: int = 0o644) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    return root


def entry(name: str, data: bytes, mode: int = 0o644, kind: int = stat.S_IFREG) -> cpio.Entry:
    return cpio.Entry(name, kind | mode, data)


def test_the_list_names_the_minis_files_below_usr_the_image_has_byte_for_byte(
        tmp_path: Path) -> None:
    content = tree(tmp_path, {"usr/lib/libc.so.6": b"libc", "usr/lib/systemd/systemd": b"sd",
                              "usr/lib/other.so": b"THEIRS", "etc/passwd": b"p",
                              "usr/lib/initoverlayfs/x": b"x",
                              "usr/lib/modules/6.1.0/kernel/fs/ext4.ko": b"ko"})
    tree(content, {"usr/bin/tool": b"t"}, 0o700)
    (content / "usr/lib/link.so").symlink_to("libc.so.6")
    (content / "usr/lib64").symlink_to("lib")
    mini = [entry("usr/lib/systemd/systemd", b"sd"), entry("usr/lib/libc.so.6", b"libc"),
            entry("usr/lib/other.so", b"ours"),  # other bytes
            entry("usr/lib/only-here.so", b"x"),  # not in the image
            entry("etc/passwd", b"p"),  # not below usr/
            entry("usr/lib/initoverlayfs/x", b"x"),  # storage-init's own folder
            entry("usr/lib/modules/6.1.0/kernel/fs/ext4.ko", b"ko"),  # a module
            entry("usr/bin/tool", b"t", 0o755),  # another mode
            entry("usr/lib/link.so", b"libc"),  # the image's is a symlink
            entry("usr/lib64/libc.so.6", b"libc"),  # behind a symlinked folder in the image
            entry("usr/lib/dir", b"", 0o755, stat.S_IFDIR)]
    assert sharedfiles.listing(mini, content) == ["/usr/lib/libc.so.6",
                                                  "/usr/lib/systemd/systemd"]


def test_the_segment_is_a_cpio_archive_of_the_list_alone_that_storage_init_parses() -> None:
    paths = ["/usr/lib/libc.so.6", "/usr/lib/systemd/systemd"]
    data = sharedfiles.segment(paths, 1700000000)
    assert len(data) % 512 == 0
    (only,) = [e for e in cpio.read_all(data) if e.name != "TRAILER!!!"]
    assert only.name == LIST.lstrip("/") and stat.S_IMODE(only.mode) == 0o644
    assert parse(only.data.decode()) == tuple(paths)
