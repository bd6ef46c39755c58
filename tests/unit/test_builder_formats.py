"""The builder's own formats against the real tools: our cpio writer read back by GNU cpio and
by our reader, initramfs segments in every compression the kernel reads, ELF dependencies
against readelf and ldd."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from initoverlayfs_build import compress, cpio, elf, erofs, initramfs
from initoverlayfs_build.errors import BuildError
from initoverlayfs_build.ui import Ui

UI = Ui("test", quiet=True)
COMPRESSORS = {
    "gzip": ["gzip", "-n", "-c"],
    "zstd": ["zstd", "-q", "-c"],
    "xz": ["xz", "--check=crc32", "-c"],
    "lz4": ["lz4", "-l", "-q", "-c"],
    "bzip2": ["bzip2", "-c"],
}


def sample() -> list[cpio.Entry]:
    return [
        cpio.Entry("usr/bin/tool", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
        cpio.Entry("usr", stat.S_IFDIR | 0o755),
        cpio.Entry("usr/bin", stat.S_IFDIR | 0o755),
        cpio.Entry("bin", stat.S_IFLNK | 0o777, b"usr/bin"),
        cpio.Entry("dev", stat.S_IFDIR | 0o755),
        cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        cpio.Entry("odd", stat.S_IFREG | 0o644, b"x" * 5),  # data needing padding
    ]


def test_cpio_roundtrip_is_sorted_reproducible_and_read_by_gnu_cpio(tmp_path: Path) -> None:
    data = cpio.write(sample(), mtime=1700000000)
    assert data == cpio.write(list(reversed(sample())), mtime=1700000000)
    assert len(data) % 512 == 0
    entries, end = cpio.read(data)
    assert [e.name for e in entries] == sorted(e.name for e in sample())
    assert {e.name: e.data for e in entries}["usr/bin/tool"] == b"#!/bin/sh\necho hi\n"
    assert {e.name: e.rdev for e in entries}["dev/console"] == (5, 1)
    assert all(e.mtime == 1700000000 and e.uid == 0 for e in entries)
    assert data[end:].strip(b"\0") == b""

    listing = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=data, capture_output=True,
                             check=True).stdout.decode()
    names = [line.split()[-1] if "->" not in line else line.split()[-3]
             for line in listing.splitlines()]
    assert names == sorted(e.name for e in sample())
    assert re.search(r"^crw-------.*5,\s+1.*dev/console$", listing, re.M)
    (tmp_path / "x").mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=data,
                   cwd=tmp_path / "x", check=True)
    assert (tmp_path / "x/usr/bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.readlink(tmp_path / "x/bin") == "usr/bin"


def test_cpio_reader_handles_gnu_archives_with_hard_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("shared\n")
    os.link(tmp_path / "a", tmp_path / "b")
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"a\nb\n",
                             cwd=tmp_path, capture_output=True, check=True).stdout
    entries = list(cpio.read_all(archive + b"\0" * 100 + archive))  # two concatenated
    assert [(e.name, e.data) for e in entries] == [("a", b"shared\n"), ("b", b"shared\n")] * 2


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/../../b", ""])
def test_cpio_writer_refuses_unsafe_paths(bad: str) -> None:
    with pytest.raises(cpio.CpioError):
        cpio.write([cpio.Entry(bad, stat.S_IFREG | 0o644)], 0)


def test_cpio_reader_names_the_offset_of_garbage() -> None:
    with pytest.raises(cpio.CpioError, match="offset 0"):
        cpio.read(b"garbage" * 20)


@pytest.mark.parametrize("kind", [*COMPRESSORS, "none"])
def test_initramfs_with_early_microcode_and_any_compression(tmp_path: Path, kind: str) -> None:
    early = cpio.write([cpio.Entry("kernel", stat.S_IFDIR | 0o755),
                        cpio.Entry("kernel/x86/microcode/GenuineIntel.bin",
                                   stat.S_IFREG | 0o644, b"ucode")], 0)
    main = cpio.write(sample(), 0)
    packed = main if kind == "none" else subprocess.run(
        COMPRESSORS[kind], input=main, capture_output=True, check=True).stdout
    path = tmp_path / "initrd.img"
    path.write_bytes(early + packed)
    assert [s.kind for s in initramfs.split(path.read_bytes())] == (
        ["cpio", "cpio"] if kind == "none" else ["cpio", kind])
    loaded = initramfs.load(UI, path)
    assert loaded.early == early  # kept verbatim for the mini-initramfs
    assert sorted(e.name for e in loaded.entries) == sorted(e.name for e in sample())
    initramfs.extract(UI, loaded.entries, tmp_path / "tree")
    assert (tmp_path / "tree/usr/bin/tool").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "tree/dev/console").is_char_device()


def test_an_lz4_mini_initramfs_ends_with_a_mark_after_which_appended_cpios_are_read() -> None:
    """What a bootloader appends (GRUB's next initrd, systemd-stub's cpios) after the lz4
    stream: the kernel from 6.1 stops at the zero word and reads on, and so does our reader."""
    main = cpio.write(sample(), 0)
    finished = compress.finish("lz4", "6.1.0-57-cloud-amd64", compress.compress(UI, "lz4", main))
    assert finished.endswith(compress.LZ4_END_MARK) and len(finished) % 4 == 0
    appended = cpio.write([cpio.Entry("etc/extra.conf", stat.S_IFREG | 0o644, b"x=1\n")], 0)
    whole = finished + appended
    assert [s.kind for s in initramfs.split(whole)] == ["lz4", "cpio"]
    names = [e.name for e in cpio.read_all(initramfs.unpacked_archive(UI, whole))]
    assert names == [e.name for e in cpio.read_all(main)] + ["etc/extra.conf"]
    # a stream without the mark runs to the end, as the kernel reads it
    bare = compress.compress(UI, "lz4", main)
    assert initramfs.lz4_legacy_end(bare, 0) == len(bare)
    assert compress.finish("lz4", "5.10.0-28-amd64", bare) == bare  # the zero word would fail
    assert compress.finish("zstd", "6.1.0-57-cloud-amd64", b"zstd data") == b"zstd data"


def test_the_default_compression_follows_the_target_kernel(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("CONFIG_RD_ZSTD=y\nCONFIG_RD_LZ4=y\n")
    assert compress.default_method("6.1.0-57-cloud-amd64", config) == "lz4"
    assert compress.default_method("6.12.9+bpo-amd64", config) == "lz4"
    assert compress.default_method("5.10.0-28-amd64", config) == "zstd"  # no end mark yet
    assert compress.default_method("6.1.0-57-cloud-amd64", tmp_path / "none") == "zstd"
    config.write_text("CONFIG_RD_ZSTD=y\n# CONFIG_RD_LZ4 is not set\n")
    assert compress.default_method("6.1.0-57-cloud-amd64", config) == "zstd"
    assert compress.kernel_version("6.10.3-arch1") == (6, 10)
    assert compress.kernel_version("custom") is None


def test_an_image_for_a_kernel_without_compressed_erofs_is_left_uncompressed(
        tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("CONFIG_EROFS_FS=y\n# CONFIG_EROFS_FS_ZIP is not set\n")
    assert erofs.choose_compression(UI, "mkfs.erofs", None, config) is None
    assert erofs.choose_compression(UI, "mkfs.erofs", "lz4", config) == "lz4"  # as asked


def test_initramfs_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot read the source initramfs"):
        initramfs.load(UI, tmp_path / "missing.img")
    (tmp_path / "junk.img").write_bytes(b"MZ this is no initramfs")
    with pytest.raises(BuildError, match="neither cpio nor a compression format"):
        initramfs.load(UI, tmp_path / "junk.img")
    (tmp_path / "trunc.img").write_bytes(subprocess.run(
        ["gzip", "-c"], input=cpio.write(sample(), 0), capture_output=True,
        check=True).stdout[:60])
    with pytest.raises(BuildError, match="corrupt gzip"):
        initramfs.load(UI, tmp_path / "trunc.img")


def test_extract_resolves_an_absolute_symlink_inside_the_tree(tmp_path: Path) -> None:
    """As the kernel unpacks into its rootfs: the link's target is a path of the tree."""
    entries = [cpio.Entry("escape", stat.S_IFLNK | 0o777, str(tmp_path / "outside").encode()),
               cpio.Entry("escape/file", stat.S_IFREG | 0o644, b"x")]
    (tmp_path / "outside").mkdir()
    initramfs.extract(UI, entries, tmp_path / "tree")
    assert not (tmp_path / "outside/file").exists()
    inside = tmp_path / "tree" / str(tmp_path / "outside/file").lstrip("/")
    assert inside.read_bytes() == b"x"


def test_elf_facts_match_readelf() -> None:
    ls = Path(shutil.which("ls") or "/bin/ls").resolve()
    info = elf.parse(ls.read_bytes())
    dynamic = subprocess.run(["readelf", "-d", "-l", str(ls)], capture_output=True, text=True,
                             check=True).stdout
    assert list(info.needed) == re.findall(r"\(NEEDED\).*\[(.+)\]", dynamic)
    assert info.interp == re.search(r"interpreter: (\S+?)\]", dynamic).group(1)  # type: ignore[union-attr]
    with pytest.raises(elf.NotElf):
        elf.parse(b"#!/bin/sh\n")


def test_elf_closure_matches_ldd() -> None:
    ls = Path(shutil.which("ls") or "/bin/ls").resolve()
    found = elf.closure([ls], elf.search_dirs())
    ldd = subprocess.run(["ldd", str(ls)], capture_output=True, text=True, check=True).stdout
    expected = {Path(m).name for m in re.findall(r"=> (\S+)", ldd)}
    interp = elf.parse(ls.read_bytes()).interp
    assert {Path(lib.path).name for lib in found if lib.path != interp} == expected
    assert interp in {lib.path for lib in found}
    assert all(lib.source.is_file() and not lib.source.is_symlink() for lib in found)


# mkfs.erofs --help, as erofs-utils 1.5 (Debian 12) and 1.8.6 (Debian 13) print it
HELP_1_5 = """usage: [options] FILE DIRECTORY
Available compressors are: lz4, lz4hc, lzma
"""
HELP_1_8 = """ -x#                   set xattr tolerance to # (< 0, disable xattrs; default 2)
 -zX[,level=Y]         X=compressor (Y=compression level, Z=dictionary size, optional)
    [,dictsize=Z]      alternative compressors can be separated by colons(:)
    [:...]             supported compressors and their option ranges are:
                         lz4
                         lz4hc
                           [,level=<0-12>]\t\t(default=9)
                         lzma
                           [,level=<0-9,100-109>]\t0-9=normal, 100-109=extreme (default=6)
                         zstd
                           [,level=<0-22>]\t\t(default=3)
 -C#                   specify the size of compress physical cluster in bytes
"""


def test_mkfs_erofs_compressors_are_read_from_both_help_formats() -> None:
    assert erofs.compressors_in(HELP_1_5) == ["lz4", "lz4hc", "lzma"]
    # 1.8's list was missed before: Debian 13's images were built uncompressed
    assert erofs.compressors_in(HELP_1_8) == ["lz4", "lz4hc", "lzma", "zstd"]
    assert erofs.compressors_in("usage: mkfs.erofs\n -C# cluster size\n") == []
