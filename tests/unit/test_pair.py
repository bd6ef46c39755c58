"""The image and mini-initramfs pair in /boot: each build's image under its own name, named by
its mini-initramfs, renamed before it, the previous image removed after; what killed runs
left is cleaned at the next; the config the builder writes is the one storage-init reads.
Failing syscalls are simulated here (unit tier); the crash tier kills real runs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from initoverlayfs_build import fstab, install, output, pair, workdirs
from initoverlayfs_build.errors import BuildError

from storage_init.config import config_lines, parse_config

from .test_builder_install import KVER, args, mini_config, sysroot, the_image  # noqa: F401
from .test_builder_modules import moddir  # noqa: F401


def images(boot: Path) -> list[str]:
    return pair.images_of(boot, KVER)


def test_a_rebuild_replaces_the_pair_and_removes_the_previous_image(sysroot: Path) -> None:  # noqa: F811
    assert install.main(args(sysroot, "--compress", "none")) == 0
    first = the_image(sysroot).name
    (sysroot / "content/sbin/init").write_text("#!/bin/sh\necho another init\n")
    assert install.main(args(sysroot, "--compress", "none", "-f")) == 0
    second = the_image(sysroot).name
    assert first != second
    assert parse_config(mini_config(sysroot)).fs == f"/{second}"
    assert sorted(os.listdir(sysroot / "boot")) == sorted([f"initramfs-{KVER}.img", second])


def test_a_legacy_image_of_the_kernel_is_removed_and_others_are_kept(sysroot: Path) -> None:  # noqa: F811
    boot = sysroot / "boot"
    (boot / f"initoverlayfs-{KVER}.img").write_bytes(b"an earlier build's")
    (boot / "initoverlayfs-6.1.0-other.img").write_bytes(b"another kernel's")
    (boot / f"initoverlayfs-{KVER}-notanid.img").write_bytes(b"not ours")
    assert install.main(args(sysroot, "--compress", "none", "-f")) == 0
    assert sorted(os.listdir(boot)) == sorted([
        f"initramfs-{KVER}.img", the_image(sysroot).name, "initoverlayfs-6.1.0-other.img",
        f"initoverlayfs-{KVER}-notanid.img"])


def fail_rename(monkeypatch: pytest.MonkeyPatch, at: int, error: int) -> None:
    """os.replace fails at its `at`-th call (1-based), as a full or read-only /boot would."""
    real, calls = os.replace, [0]

    def replace(src: str | Path, dst: str | Path) -> None:
        calls[0] += 1
        if calls[0] == at:
            raise OSError(error, os.strerror(error), str(dst))
        real(src, dst)
    monkeypatch.setattr(os, "replace", replace)


def test_a_failed_second_rename_leaves_the_previous_pair_and_says_so(
        sysroot: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    """The audit's finding: the image was replaced, then the mini-initramfs's rename failed,
    and the build said the previous files were untouched."""
    assert install.main(args(sysroot, "--compress", "none")) == 0
    before = {p.name: p.read_bytes() for p in (sysroot / "boot").iterdir()}
    (sysroot / "content/sbin/init").write_text("#!/bin/sh\necho another init\n")
    fail_rename(monkeypatch, 2, errno.EIO)
    assert install.main(args(sysroot, "--compress", "none", "-f")) == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (sysroot / "boot").iterdir()} == before


def test_a_read_only_boot_is_one_clear_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def open_(path: str | Path, flags: int, *rest: int, **kw: int) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *rest, **kw)
    monkeypatch.setattr(os, "open", open_)
    with pytest.raises(BuildError, match="mounted read-only; nothing was changed") as caught:
        output.install(tmp_path, [output.Output("a.img", b"a")])
    assert "mount -o remount,rw" in str(caught.value)


def test_temporaries_and_work_dirs_of_killed_runs_are_cleaned(
        sysroot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    boot = sysroot / "boot"
    stale = [f".initramfs-{KVER}.img.tmp4242", f".initoverlayfs-{KVER}-0123456789abcdef.img.tmp7",
             ".initramfs-6.1.0-other.img.tmp1"]
    for name in stale:
        (boot / name).write_bytes(b"x" * 1000)
    (boot / ".unrelated.tmp1").write_bytes(b"someone else's")
    work = tmp_path / "tmpdir"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(work))
    monkeypatch.setattr("tempfile.tempdir", None)
    dead = 2 ** 22 + 17  # above pid_max's default: no such process
    (work / f"{workdirs.PREFIX}{dead}-abc").mkdir()
    (work / f"{workdirs.PREFIX}{dead}-abc/tree").mkdir()
    (work / f"{workdirs.PREFIX}{os.getppid()}-def").mkdir()  # a live run's: kept
    assert install.main(args(sysroot, "--compress", "none", "-f")) == 0
    assert sorted(p.name for p in boot.iterdir() if p.name.startswith(".")) == [
        ".unrelated.tmp1"]
    assert sorted(p.name for p in work.iterdir()) == [f"{workdirs.PREFIX}{os.getppid()}-def"]


def test_a_config_with_tabs_is_read_the_same_by_both_sides(sysroot: Path) -> None:  # noqa: F811
    (sysroot / "etc/initoverlayfs.conf").write_text(
        "bootfs\tLABEL=boot\nbootfstype\t \text4\nerofs_compression\tlz4\n")
    assert install.main(args(sysroot, "--compress", "none", "--erofs-compression",
                             "none")) == 0
    assert [(k, v) for _, k, v in config_lines("a\tb c\n  d  \n#x\ne\t\tf")] == [
        ("a", "b c"), ("d", ""), ("e", "f")]
    parsed = parse_config(mini_config(sysroot))
    assert parsed.bootfstype == "ext4"
    assert parsed.fs == f"/{the_image(sysroot).name}"


def test_an_fstab_type_list_ships_each_type_and_names_none(sysroot: Path) -> None:  # noqa: F811
    """`ext4,ext3` in fstab became `bootfstype ext4,ext3`, which storage-init refuses."""
    (sysroot / "etc/fstab").write_text("LABEL=b /boot ext4,ext3 defaults 0 2\n")
    boot = fstab.boot_filesystem(fstab.parse_fstab((sysroot / "etc/fstab").read_text()))
    assert boot.fstype is None and boot.fstypes == ("ext4", "ext3")
    assert parse_config(fstab.config_text(boot, None)).bootfstype is None
    assert install.main(args(sysroot, "--compress", "none")) == 0
    assert "bootfstype" not in (sysroot / "etc/initoverlayfs.conf").read_text()


@pytest.mark.parametrize("where", ["etc/fstab", "etc/initoverlayfs.conf"])
def test_undecodable_bytes_are_one_clear_error(sysroot: Path, where: str,  # noqa: F811
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (sysroot / where).write_bytes(b"bootfs LABEL=\xff\xfe /boot ext4 defaults\n")
    assert install.main(args(sysroot)) == 1
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_an_absolute_boot_link_in_the_sysroot_is_refused(
        sysroot: Path, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    host_boot = tmp_path_factory.mktemp("host-boot")
    (sysroot / "boot").rmdir()
    (sysroot / "boot").symlink_to(host_boot)
    assert install.main(args(sysroot)) == 1
    assert "leads out of the sysroot" in capsys.readouterr().err
    assert not list(host_boot.iterdir())
    (sysroot / "boot").unlink()
    (sysroot / "real-boot").mkdir()
    (sysroot / "boot").symlink_to("real-boot")  # a relative link inside it is fine
    assert install.main(args(sysroot)) == 0
    assert (sysroot / f"real-boot/initramfs-{KVER}.img").exists()


def test_a_config_with_a_dir_in_fs_keeps_the_dir_for_each_builds_name() -> None:
    text = "bootfs LABEL=root\nfs /boot/initoverlayfs-$kver.img\nverity_salt 00\n"
    built = install.build_config(text, "initoverlayfs-6.1-0123456789abcdef.img", None)
    assert parse_config(built).fs == "/boot/initoverlayfs-6.1-0123456789abcdef.img"
    assert "verity_salt" not in built and built.count("\nfs ") == 1
