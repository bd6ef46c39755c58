"""The fuzz tier: every parser of input from outside (the config, the kernel command line,
device specs, ip=, mountinfo, uevents, block device counters, kmsg records, fstab, NBD servers,
cpio archives, initramfs files) and the builder's extraction of hostile archives, under
hypothesis with a bounded number of examples each (FUZZ_EXAMPLES, default 1000), run by the
test command like every tier.

Properties: each parser raises only its own error, on any input; what the builder writes from
any fstab, storage-init accepts; extracting any archive writes nothing outside its tree."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from initoverlayfs_build import bootreport, cpio, fstab, initramfs
from initoverlayfs_build.errors import BuildError
from initoverlayfs_build.ui import Ui

from storage_init import blockstat, nbdproto
from storage_init.cmdline import parse_cmdline
from storage_init.config import DEFAULT_SUBSYSTEMS, ConfigError, config_lines, parse_config
from storage_init.devspec import SpecError, parse_spec
from storage_init.mounts import parse_mountinfo
from storage_init.netconf import parse_ip, parse_nbd
from storage_init.settings import resolve
from storage_init.uevent import parse_uevent
from storage_init.verity import Verity, check_superblock

pytestmark = pytest.mark.fuzz
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
UI = Ui("fuzz", quiet=True)

# Words that reach the interesting branches more often than random text does.
KEYS = ["bootfs", "bootfs_hint", "bootfstype", "fs", "fstype", "udev_trigger", "ip",
        "verity_roothash", "verity_salt", "verity_data_blocks", "verity_hash_offset",
        "erofs_compression", "x"]
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["UUID=1234-ABCD", "LABEL=boot", "/dev/vda2", "nbd:10.0.2.2/boot",
                     "nbd:h:99999/x", "/../x", "/boot/initoverlayfs-$kver.img", "ext4,ext3",
                     "0", "4096", "1" * 30, "\u0663", "a" * 64,
                     "10.0.2.15::10.0.2.2:255.255.255.0::eth0:none"]))


@FUZZ
@given(st.text())
def test_the_command_line_parser_takes_any_text(text: str) -> None:
    params = parse_cmdline(text)
    if '"' not in text:  # without quotes the words are the kernel's whitespace-split words
        words = re.split(r"[ \t\n\v\f\r]+", text.strip(" \t\n\v\f\r"))
        assert [k if v is None else f"{k}={v}" for k, v in params] == [w for w in words if w]


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=8),
       st.sampled_from([" ", "\t", "  \t "]))
def test_the_config_parser_raises_only_its_own_error(lines: list[tuple[str, str]],
                                                     gap: str) -> None:
    text = "\n".join(f"{k}{gap}{v}" for k, v in lines)
    # one reading of the format: the key is always the first word, whatever the gap
    assert all(" " not in k and "\t" not in k for _, k, _ in config_lines(text))
    with contextlib.suppress(ConfigError):
        config = parse_config(text)
        with contextlib.suppress(ConfigError):
            resolve(config, parse_cmdline("rd.initoverlayfs.timeout=1e400 ip=x"), "6.1",
                    DEFAULT_SUBSYSTEMS)


@FUZZ
@given(st.text(max_size=200))
def test_device_specs_and_network_forms_raise_only_value_errors(text: str) -> None:
    with contextlib.suppress(SpecError):
        parse_spec(text)
    with contextlib.suppress(ValueError):
        parse_ip(text)
    with contextlib.suppress(ValueError):
        parse_nbd(text)


@FUZZ
@given(st.text(max_size=400), st.binary(max_size=400))
def test_kernel_texts_parse_without_exceptions(mountinfo: str, uevent: bytes) -> None:
    parse_mountinfo(mountinfo)
    parse_uevent(uevent)


@FUZZ
@given(st.text(max_size=200), st.lists(st.text(max_size=80), max_size=6))
def test_the_boot_reports_kernel_texts_raise_only_value_errors(stat_text: str,
                                                                records: list[str]) -> None:
    # a block device's counters and size (storage-init's and the report's), /dev/kmsg records
    # and `systemctl show` lines (initoverlayfs-inspect --boot)
    for parse in (blockstat.read_bytes, blockstat.size_bytes):
        with contextlib.suppress(ValueError):
            assert parse(stat_text) >= 0
    assert all(value >= 0 for value in bootreport.kmsg_marks(records).values())
    joined = "\n".join(records)
    assert all(value > 0 for value in bootreport.systemd_marks(joined, joined).values())


@FUZZ
@given(st.binary(min_size=0, max_size=4096), st.integers(0, 1 << 40))
def test_a_verity_superblock_check_returns_a_reason_or_none(block: bytes, size: int) -> None:
    expected = Verity("a" * 64, "00", 3, 3 * 4096)
    reason = check_superblock(expected, block, size)
    assert reason is None or (isinstance(reason, str) and reason)


FSTAB_WORDS = st.sampled_from(["UUID=1-2", "LABEL=b", "/dev/sda1", "LABEL=a\\040b", "/boot",
                               "/", "/boot/", "ext4", "ext4,ext3", "auto", "swap", "none",
                               "xfs", "vfat", "defaults", "0", "2", "#", "nbd:1.2.3.4/x",
                               "PARTUUID=", "bad spec"])


@FUZZ
@given(st.lists(st.lists(st.one_of(FSTAB_WORDS, st.text(min_size=1, max_size=12)),
                         max_size=6), max_size=5),
       st.sampled_from([None, "lz4hc,11", "none"]))
def test_what_the_builder_writes_from_any_fstab_storage_init_accepts(
        table: list[list[str]], compression: str | None) -> None:
    text = "\n".join(" ".join(words) for words in table)
    try:
        boot = fstab.boot_filesystem(fstab.parse_fstab(text))
    except BuildError:
        return
    written = fstab.config_text(boot, compression)
    try:
        parse_config(written)
    except ConfigError as exc:
        raise AssertionError(f"storage-init refuses what the builder wrote from\n{text}\n"
                             f"---\n{written}\n: {exc}") from None


@FUZZ
@given(st.binary(max_size=600))
def test_an_nbd_server_saying_anything_gets_one_of_the_handshakes_errors(said: bytes) -> None:
    stream = bytearray(said)

    def recv(n: int) -> bytes:
        if len(stream) < n:
            raise EOFError("closed")
        out = bytes(stream[:n])
        del stream[:n]
        return out
    with contextlib.suppress(nbdproto.NbdError, EOFError):
        nbdproto.negotiate(recv, lambda data: None, "boot")


NAMES = st.lists(st.sampled_from(["a", "b", "..", ".", "", "kernel", "etc", "x y", "\xe9"]),
                 min_size=1, max_size=4).map("/".join)
MODES = st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFDIR | 0o777, stat.S_IFLNK | 0o777,
                         stat.S_IFIFO | 0o600, stat.S_IFREG | 0o4755, 0o644])
TARGETS = st.sampled_from([b"a", b"../../..", b"/", b"/etc", b"b/..", b"a/b", b"../outside",
                           b"x", b"/outside/secret"])


@st.composite
def entries(draw: st.DrawFn) -> list[cpio.Entry]:
    result = []
    for _ in range(draw(st.integers(1, 10))):
        name, mode = draw(NAMES).strip("/") or "a", draw(MODES)
        data = draw(TARGETS) if stat.S_ISLNK(mode) else draw(st.binary(max_size=8))
        result.append(cpio.Entry(name, mode, data))
    return result


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    found = {}
    for path in sorted(root.rglob("*")):
        st_ = path.lstat()
        found[str(path)] = (st_.st_mode, path.read_bytes() if stat.S_ISREG(st_.st_mode) else b"")
    return found


@FUZZ
@given(entries())
def test_extracting_any_archive_writes_nothing_outside_its_tree(
        tmp_path_factory: pytest.TempPathFactory, archive: list[cpio.Entry]) -> None:
    base = tmp_path_factory.mktemp("x")
    outside = base / "outside"
    outside.mkdir(mode=0o700)
    (outside / "secret").write_bytes(b"host")
    before = snapshot(outside), stat.S_IMODE(outside.stat().st_mode)
    tree = base / "tree"
    with contextlib.suppress(BuildError):
        initramfs.extract(UI, archive, tree)
    assert (snapshot(outside), stat.S_IMODE(outside.stat().st_mode)) == before
    assert sorted(p.name for p in base.iterdir()) == sorted(["outside", "tree"])


@FUZZ
@given(st.binary(max_size=2048), st.integers(0, 2000), st.binary(min_size=1, max_size=16))
def test_the_cpio_reader_and_the_splitter_raise_only_their_errors(
        noise: bytes, at: int, patch: bytes) -> None:
    real = bytearray(cpio.write([cpio.Entry("a", stat.S_IFDIR | 0o755),
                                 cpio.Entry("a/f", stat.S_IFREG | 0o644, b"data"),
                                 cpio.Entry("l", stat.S_IFLNK | 0o777, b"a/f")], 0))
    real[at % len(real):at % len(real) + len(patch)] = patch
    for data in (noise, bytes(real), cpio.MAGIC + noise):
        with contextlib.suppress(cpio.CpioError):
            list(cpio.read_all(data))
        with contextlib.suppress(BuildError):
            initramfs.split(data)


@FUZZ
@given(st.sampled_from(["gzip", "xz", "lzma", "bzip2", "zstd"]), st.binary(max_size=300))
def test_decompressing_garbage_is_one_build_error(kind: str, data: bytes) -> None:
    magic = {k: m for m, k in initramfs.MAGICS}
    with contextlib.suppress(BuildError):
        initramfs.decompress(UI, kind, magic[kind] + data, limit=1 << 20)


def test_the_tier_runs_a_real_number_of_examples() -> None:
    """FUZZ_EXAMPLES=0 or 1 would make every property above pass without looking."""
    assert EXAMPLES >= 50
