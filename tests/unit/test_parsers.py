"""Pure parsers: config, kernel command line, settings, device specs, mountinfo, uevents."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage_init.cmdline import flag, last_value, parse_cmdline
from storage_init.config import DEFAULT_SUBSYSTEMS, Config, ConfigError, parse_config
from storage_init.devspec import DeviceSpec, SpecError, parse_spec
from storage_init.mounts import parse_mountinfo
from storage_init.settings import resolve
from storage_init.uevent import parse_uevent

# --- kernel command line ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("", ()),
    ("quiet", (("quiet", None),)),
    ("  a=1\tb  c=\n", (("a", "1"), ("b", None), ("c", ""))),
    ('a="x y" b', (("a", "x y"), ("b", None))),
    ('"a=x y" b', (("a", "x y"), ("b", None))),
    ('"quoted word" z', (("quoted word", None), ("z", None))),
    ('a=x"y z"w b', (("a", 'x"y z"w'), ("b", None))),
    ('a="unterminated value', (("a", "unterminated value"),)),
    ("k=v=w", (("k", "v=w"),)),
    ("root=UUID=abc -- single", (("root", "UUID=abc"), ("--", None), ("single", None))),
    ('init="/sbin/my init"', (("init", "/sbin/my init"),)),
])
def test_cmdline_follows_the_kernel_quoting_rules(text: str, expected: tuple[object]) -> None:
    assert parse_cmdline(text) == expected


def test_later_words_win_and_flags_follow_dracut() -> None:
    params = parse_cmdline("x=1 rd.shell=0 x=2 rd.shell rd.debug=0")
    assert last_value(params, "x") == "2"
    assert flag(params, "rd.shell") is True
    assert flag(params, "rd.debug") is False
    assert flag(params, "absent") is None


@given(st.text())
def test_cmdline_parser_never_fails(text: str) -> None:
    for key, value in parse_cmdline(text):
        assert isinstance(key, str) and (value is None or isinstance(value, str))


@given(st.text().map(lambda t: t.replace('"', "")))
def test_without_quotes_words_are_split_on_kernel_whitespace_only(text: str) -> None:
    # The kernel's isspace() is ASCII only: \x1f or \x85 are part of a word, unlike str.split().
    words = [w for w in re.split("[ \t\n\v\f\r]+", text) if w]
    expected = tuple((w.partition("=")[0], w.partition("=")[2] if "=" in w else None)
                     for w in words)
    assert parse_cmdline(text) == expected


@given(st.text(alphabet=st.characters(blacklist_characters='" \t\n\v\f\r'), min_size=1),
       st.text(alphabet=st.characters(blacklist_characters='"'), min_size=0))
def test_a_quoted_value_round_trips(key: str, value: str) -> None:
    key = key.replace("=", "")
    if not key:
        return
    assert parse_cmdline(f'{key}="{value}" tail') == ((key, value), ("tail", None))


# --- config file --------------------------------------------------------------------------

UPSTREAM = """\
# written by initoverlayfs-install
bootfs UUID=6bdb4f2c-0a7a-4d1a-8a3c-0e6f4c9b1d2e
bootfstype ext4
initoverlayfs_builder dracut -M -o "initoverlayfs fcoe"
initrd_builder dracut -M
udev_trigger udevadm trigger --type=devices --action=add --subsystem-match=module \
--subsystem-match=block --subsystem-match=virtio --subsystem-match=pci --subsystem-match=nvme
"""


def test_upstream_config_is_understood() -> None:
    config = parse_config(UPSTREAM)
    assert config.bootfs == DeviceSpec("UUID", "6bdb4f2c-0a7a-4d1a-8a3c-0e6f4c9b1d2e")
    assert config.bootfstype == "ext4"
    assert config.udev_trigger == ("module", "block", "virtio", "pci", "nvme")
    assert config.warnings == ()
    # module uevents carry no MODALIAS: the config keeps the word, the trigger skips it
    settings = resolve(config, (), "6.1.0-18-amd64", DEFAULT_SUBSYSTEMS)
    assert settings.subsystems == ("block", "virtio", "pci", "nvme")
    only = resolve(parse_config("bootfs LABEL=x\nudev_trigger module"), (), "6.1", ("block",))
    assert only.subsystems == ("block",)  # nothing left: the defaults


def test_config_whitespace_comments_and_tabs() -> None:
    config = parse_config("\n   # c\n\tbootfs\tLABEL=boot  \n  fs   /images/x.img \n"
                          "bootfs_hint /dev/vda2\nfstype erofs\nudev_trigger block, nvme\n")
    assert config == Config(bootfs=DeviceSpec("LABEL", "boot"), bootfs_hint="/dev/vda2",
                            fs="/images/x.img", fstype="erofs", udev_trigger=("block", "nvme"))


def test_unknown_and_repeated_keys_are_warnings_naming_the_line() -> None:
    config = parse_config("bootfs LABEL=a\nwhat ever\nbootfs LABEL=b\n")
    assert config.bootfs == DeviceSpec("LABEL", "b")
    assert config.warnings == ("line 2: unknown key 'what' ignored",
                               "line 3: bootfs given again; the last one wins")


@pytest.mark.parametrize(("text", "message"), [
    ("bootfs\n", "line 1 (bootfs): no value"),
    ("\nbootfs FOO=bar\n", "line 2 (bootfs): 'FOO=bar' is not a device"),
    ("bootfs_hint sda1\n", "line 1 (bootfs_hint): bootfs_hint must be a /dev path"),
    ("fstype ext4;rm\n", "line 1 (fstype): not a filesystem type"),
    ("udev_trigger blo$ck\n", "line 1 (udev_trigger): not a list of subsystem names"),
    ("fs /\n", "line 1 (fs): not a file path"),
    # what the audit found accepted
    ("fs /../etc/shadow\n", "line 1 (fs): the image path must stay inside the bootfs"),
    ("fs a/..\n", "line 1 (fs): the image path must stay inside the bootfs"),
    ("bootfs LABEL=a\0b\n", "line 1 (bootfs): 'LABEL=a"),
    ("bootfs /dev/vda\0\n", "has a NUL byte: no device is named so"),
    ("verity_data_blocks \u0663\n", "line 1 (verity_data_blocks): not a positive number"),
    ("verity_hash_offset 99999999999999999999999\n",
     "line 1 (verity_hash_offset): 99999999999999999999999 is larger than any image"),
    (f"verity_data_blocks {(1 << 52) + 1}\n", "line 1 (verity_data_blocks): "),
    ("ip 10.0.2.\u0661\u0665::10.0.2.2:255.255.255.0::eth0:none\n",
     "line 1 (ip): client address '10.0.2.\u0661\u0665' is not an IPv4 address"),
])
def test_unusable_values_are_errors_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(text)


@given(st.text())
def test_config_parser_raises_only_its_own_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text)


@given(st.lists(st.sampled_from(["bootfs", "fs", "fstype", "bootfstype", "udev_trigger",
                                 "bootfs_hint", "erofs_compression", "x"]), max_size=6),
       st.lists(st.text(max_size=20), min_size=6, max_size=6))
def test_config_with_known_keys_raises_only_its_own_error(keys: list[str],
                                                          values: list[str]) -> None:
    text = "\n".join(f"{k} {v}" for k, v in zip(keys, values, strict=False))
    with contextlib.suppress(ConfigError):
        parse_config(text)


# --- settings -----------------------------------------------------------------------------

def test_cmdline_overrides_config_and_defaults_apply() -> None:
    config = parse_config("bootfs LABEL=boot\nfs /a.img\nbootfstype ext4\n")
    settings = resolve(config, parse_cmdline("rd.initoverlayfs.fs=b.img rd.emergency=halt"),
                       "6.1", DEFAULT_SUBSYSTEMS)
    assert settings.image == "/b.img" and settings.image_path == "/boot/b.img"
    assert settings.bootfstype == "ext4" and settings.fstype == "erofs"
    assert settings.timeout == 30 and settings.warnings == ()
    assert settings.subsystems == DEFAULT_SUBSYSTEMS
    default = resolve(config, (), "6.1.0-18-amd64", DEFAULT_SUBSYSTEMS)
    assert default.image == "/a.img"
    nofs = resolve(parse_config("bootfs LABEL=x"), (), "6.1.0-18-amd64", DEFAULT_SUBSYSTEMS)
    assert nofs.image == "/initoverlayfs-6.1.0-18-amd64.img"
    onroot = resolve(parse_config("bootfs LABEL=x\nfs /boot/initoverlayfs-$kver.img"), (),
                     "6.1.0-18-amd64", DEFAULT_SUBSYSTEMS)
    assert onroot.image_path == "/boot/boot/initoverlayfs-6.1.0-18-amd64.img"


def test_bad_cmdline_bootfs_is_an_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("rd.initoverlayfs.bootfs=")):
        resolve(Config(), parse_cmdline("rd.initoverlayfs.bootfs=sda1"), "6.1", ())


@given(st.text())
def test_any_cmdline_with_a_configured_bootfs_resolves(text: str) -> None:
    """Whatever the command line holds, the boot goes on or fails with ConfigError only."""
    try:
        resolve(parse_config("bootfs LABEL=boot"), parse_cmdline(text), "6.1",
                DEFAULT_SUBSYSTEMS)
    except ConfigError as exc:
        assert "rd.initoverlayfs." in str(exc)


# --- device specs -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "spec"), [
    ("UUID=abc", DeviceSpec("UUID", "abc")),
    ("uuid=abc", DeviceSpec("UUID", "abc")),
    ('LABEL="my boot"', DeviceSpec("LABEL", "my boot")),
    ("PARTUUID=1234abcd-01", DeviceSpec("PARTUUID", "1234abcd-01")),
    ("PARTLABEL=boot", DeviceSpec("PARTLABEL", "boot")),
    ("/dev/disk/by-label/x", DeviceSpec("PATH", "/dev/disk/by-label/x")),
])
def test_specs(text: str, spec: DeviceSpec) -> None:
    assert parse_spec(text) == spec


@pytest.mark.parametrize("text", ["", "UUID=", "/dev/", "sda1", "ROOT=x"])
def test_bad_specs(text: str) -> None:
    with pytest.raises(SpecError):
        parse_spec(text)


# --- mountinfo and uevents ----------------------------------------------------------------

MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
30 1 253:1 / /boot ro shared:1 - ext4 /dev/vda1 ro
31 1 0:40 / /mnt/with\\040space rw - tmpfs none rw,mode=755
garbage line
"""


def test_mountinfo_parsing_unescapes_and_skips_garbage() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert [e.target for e in entries] == ["/proc", "/boot", "/mnt/with space"]
    assert entries[1].fstype == "ext4" and entries[1].source == "/dev/vda1"
    assert entries[1].mount_options == "ro" and entries[2].options == "rw,mode=755"


@given(st.text())
def test_mountinfo_parser_never_fails(text: str) -> None:
    parse_mountinfo(text)


def test_uevent_parsing() -> None:
    message = b"add@/devices/virtual/block/loop0\0ACTION=add\0DEVNAME=loop0\0SUBSYSTEM=block\0"
    assert parse_uevent(message) == {"ACTION": "add", "DEVNAME": "loop0", "SUBSYSTEM": "block"}
    assert parse_uevent(b"libudev\0\xfe\xed") == {}


@given(st.binary())
def test_uevent_parser_never_fails(data: bytes) -> None:
    parse_uevent(data)
