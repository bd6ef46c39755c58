"""An initramfs given to --from-initramfs is input from anywhere, unpacked by a builder that
runs as root: each class of hostile archive the audit found, against the real filesystem of a
temporary directory (the "outside" a hostile archive aims at)."""

from __future__ import annotations

import gzip
import lzma
import stat
import subprocess
from pathlib import Path

import pytest
from initoverlayfs_build import cpio, initramfs
from initoverlayfs_build.errors import BuildError
from initoverlayfs_build.ui import Ui

UI = Ui("test", quiet=True)


def link(name: str, target: str) -> cpio.Entry:
    return cpio.Entry(name, stat.S_IFLNK | 0o777, target.encode())


def directory(name: str, mode: int = 0o755) -> cpio.Entry:
    return cpio.Entry(name, stat.S_IFDIR | mode)


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> cpio.Entry:
    return cpio.Entry(name, stat.S_IFREG | mode, data)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory and a file of the build host that no archive may touch."""
    host = tmp_path / "host"
    host.mkdir(mode=0o700)
    (host / "secret").write_bytes(b"host data")
    (host / "secret").chmod(0o600)
    return host


def untouched(host: Path) -> None:
    assert stat.S_IMODE(host.stat().st_mode) == 0o700
    assert stat.S_IMODE((host / "secret").stat().st_mode) == 0o600
    assert (host / "secret").read_bytes() == b"host data"
    assert sorted(p.name for p in host.iterdir()) == ["secret"]


def test_a_directory_entry_over_a_symlink_does_not_chmod_its_target(
        tmp_path: Path, outside: Path) -> None:
    """The audit's high finding: `x -> /host`, then a directory `x` with mode 0777 changed the
    mode of /host on the build host."""
    tree = tmp_path / "tree"
    initramfs.extract(UI, [link("x", str(outside)), directory("x", 0o777)], tree)
    untouched(outside)
    assert (tree / "x").is_dir() and not (tree / "x").is_symlink()
    assert stat.S_IMODE((tree / "x").stat().st_mode) == 0o777


def test_a_file_entry_over_a_symlink_replaces_the_link_not_its_target(
        tmp_path: Path, outside: Path) -> None:
    tree = tmp_path / "tree"
    initramfs.extract(UI, [link("s", str(outside / "secret")), file("s", b"new", 0o4755)],
                      tree)
    untouched(outside)
    assert (tree / "s").read_bytes() == b"new" and not (tree / "s").is_symlink()


@pytest.mark.parametrize("target", ["../../../../../../..", "/", "a/../../..", "/.."])
def test_relative_and_absolute_links_stay_inside_the_tree(
        tmp_path: Path, outside: Path, target: str) -> None:
    tree = tmp_path / "tree"
    depth = "/".join([".."] * len(outside.parts))
    entries = [link("up", target), file(f"up/{outside.relative_to('/')}/secret", b"owned"),
               link("rel", f"{depth}{outside}"), file("rel/secret", b"owned"),
               directory(f"up/{outside.relative_to('/')}", 0o777)]
    initramfs.extract(UI, entries, tree)
    untouched(outside)
    assert (tree / outside.relative_to("/") / "secret").read_bytes() == b"owned"


def test_a_link_loop_is_refused_with_its_entry(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="loop of symlinks"):
        initramfs.extract(UI, [link("a", "b"), link("b", "a"), file("a/f")], tmp_path / "t")


def test_a_file_where_a_directory_is_needed_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="needs 'etc' to be a directory"):
        initramfs.extract(UI, [file("etc"), file("etc/passwd")], tmp_path / "t")


def test_a_file_over_a_directory_with_content_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="directory with content"):
        initramfs.extract(UI, [file("lib/x"), file("lib")], tmp_path / "t")
    # an empty one is replaced, as the kernel's unpacker does
    initramfs.extract(UI, [directory("bin"), link("bin", "usr/bin")], tmp_path / "u")
    assert (tmp_path / "u/bin").is_symlink()


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "a/.."])
def test_dot_dot_in_a_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BuildError, match="unsafe path"):
        initramfs.extract(UI, [file(name)], tmp_path / "t")
    assert not (tmp_path / "escape").exists()


def raw_entry(name: bytes, mode: int, body: bytes, fields: dict[int, bytes] | None = None
              ) -> bytes:
    """One newc header, its name and body, with any field replaced by raw bytes."""
    values = [b"%08X" % v for v in (1, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0,
                                     len(name) + 1, 0)]
    for index, value in (fields or {}).items():
        values[index] = value
    head = cpio.MAGIC + b"".join(values) + name + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + body + b"\0" * (-len(body) % 4)


def archive(*entries: bytes) -> bytes:
    return b"".join(entries) + raw_entry(cpio.TRAILER.encode(), 0, b"")


@pytest.mark.parametrize(("raw", "error"), [
    (raw_entry(b"a\0b", stat.S_IFREG | 0o644, b""), "NUL byte"),
    (raw_entry(b"l", stat.S_IFLNK | 0o777, b""), "empty target"),
    (raw_entry(b"l", stat.S_IFLNK | 0o777, b"a\0b"), "NUL byte"),
    (raw_entry(b"f", stat.S_IFREG | 0o644, b"", {6: b"-0000001"}), "not 8 hex digits"),
    (raw_entry(b"f", stat.S_IFREG | 0o644, b"", {6: b"+0000001"}), "not 8 hex digits"),
    (raw_entry(b"f", stat.S_IFREG | 0o644, b"", {6: b"  000001"}), "not 8 hex digits"),
    (raw_entry(b"f", stat.S_IFREG | 0o644, b"", {6: b"0000_001"}), "not 8 hex digits"),
    (raw_entry(b"f", stat.S_IFREG | 0o644, b"", {11: b"00000000"}), "truncated cpio name"),
])
def test_malformed_fields_are_one_cpio_error(raw: bytes, error: str) -> None:
    with pytest.raises(cpio.CpioError, match=error):
        cpio.read(archive(raw))


def test_a_malformed_archive_is_one_build_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "initrd.img"
    path.write_bytes(archive(raw_entry(b"l", stat.S_IFLNK | 0o777, b"")))
    with pytest.raises(BuildError, match=r"initrd.img: corrupt cpio archive: .*empty target"):
        initramfs.load(UI, path)


def test_hard_links_share_the_data_in_linear_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """8,000 links to one inode took 85 s: every link that carried data rewrote the entries
    of the whole group. Counted, not timed: each link's entry is rebuilt at most once."""
    count = 2_000
    links = [raw_entry(f"l{i}".encode(), stat.S_IFREG | 0o644, b"d" if i % 2 else b"",
                       {0: b"00000007", 4: b"%08X" % count}) for i in range(count)]
    data = archive(raw_entry(b"before", stat.S_IFREG | 0o644, b"", {0: b"00000007",
                                                                      4: b"00000002"}),
                   *links)
    real, rebuilt = cpio._with_data, [0]

    def counted(entry: cpio.Entry, body: bytes) -> cpio.Entry:
        rebuilt[0] += 1
        return real(entry, body)
    monkeypatch.setattr(cpio, "_with_data", counted)
    entries, _ = cpio.read(data)
    assert rebuilt[0] <= len(entries) == count + 1
    assert {e.data for e in entries} == {b"d"}  # the link before any data, and after, too


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "bzip2"])
def test_a_decompression_bomb_is_refused_at_the_limit(kind: str) -> None:
    bomb = b"\0" * (8 << 20)
    packed = {
        "gzip": lambda: gzip.compress(bomb),
        "xz": lambda: lzma.compress(bomb),
        "zstd": lambda: subprocess.run(["zstd", "-q", "-c"], input=bomb, check=True,
                                       capture_output=True).stdout,
        "bzip2": lambda: subprocess.run(["bzip2", "-c"], input=bomb, check=True,
                                        capture_output=True).stdout,
    }[kind]()
    assert len(packed) < 1 << 20
    with pytest.raises(BuildError, match="decompression bomb"):
        initramfs.decompress(UI, kind, packed, limit=4 << 20)
    assert initramfs.decompress(UI, kind, packed, limit=8 << 20) == bomb
    with pytest.raises(BuildError, match=r"truncated|failed"):
        initramfs.decompress(UI, kind, packed[: len(packed) // 2])


def test_an_early_segment_with_a_dot_dot_path_is_not_copied_verbatim(tmp_path: Path) -> None:
    early = cpio.write([directory("kernel"), file("kernel/x86/microcode/GenuineIntel.bin")], 0)
    sneaky = archive(raw_entry(b"kernel/../etc/shadow", stat.S_IFREG | 0o600, b"x"))
    path = tmp_path / "initrd.img"
    path.write_bytes(early + sneaky)
    loaded = initramfs.load(UI, path)
    assert loaded.early == early  # the microcode segment only
    with pytest.raises(BuildError, match="unsafe path"):
        initramfs.extract(UI, loaded.entries, tmp_path / "tree")
