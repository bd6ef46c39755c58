"""The pieces that put the builder on a machine: the install config read as shell words, the
driver choice where the boot disk cannot be seen, the content change initramfs-tools needs,
and Debian's kernel hook (run for real, on a /boot in a temporary directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from initoverlayfs_build import content, install, installconf
from initoverlayfs_build.errors import BuildError
from initoverlayfs_build.ui import Ui
from pytest_mock import MockerFixture

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "packaging/debian-hooks/kernel-hook"
UI = Ui("test", quiet=True)


# --- /etc/initoverlayfs/install.conf ---------------------------------------------------------

def test_config_words_are_shell_words(tmp_path: Path) -> None:
    conf = tmp_path / "etc/initoverlayfs"
    conf.mkdir(parents=True)
    (conf / "install.conf").write_text('# the disk\n--drivers "virtio_pci virtio_blk"  # q\n'
                                       "--compress zstd\n")
    (conf / "install.conf.d").mkdir()
    (conf / "install.conf.d/20-b.conf").write_text("--no-verity\n")
    (conf / "install.conf.d/10-a.conf").write_text("--add-drivers 'nvme'\n")
    (conf / "install.conf.d/ignored.txt").write_text("--systemd\n")
    (conf / "install.args").write_text("--debug\n")  # earlier versions' file, read last
    words = [w for _, ws in installconf.arguments(tmp_path) for w in ws]
    assert words == ["--drivers", "virtio_pci virtio_blk", "--compress", "zstd",
                     "--add-drivers", "nvme", "--no-verity", "--debug"]


def test_config_with_an_open_quote_names_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "etc/initoverlayfs"
    conf.mkdir(parents=True)
    (conf / "install.conf").write_text('--drivers "virtio_blk\n')
    with pytest.raises(BuildError, match=r"install.conf: No closing quotation .*shell words"):
        installconf.arguments(tmp_path)


def test_command_line_comes_after_the_config_and_no_config_skips_it(tmp_path: Path) -> None:
    conf = tmp_path / "etc/initoverlayfs"
    conf.mkdir(parents=True)
    (conf / "install.conf").write_text("--compress zstd\n")
    argv = ["--sysroot", str(tmp_path), "--compress", "lz4"]
    full, found = install.with_config(argv)
    assert full == ["--compress", "zstd", *argv] and found[0][0] == conf / "install.conf"
    assert install.parse_args(full).compress == "lz4"  # the command line wins
    assert install.with_config(["--no-config", *argv]) == (["--no-config", *argv], [])


# --- the driver choice ----------------------------------------------------------------------

def stat_result(dev: int, ino: int) -> os.stat_result:
    return os.stat_result((0o40755, ino, dev, 2, 0, 0, 4096, 0, 0, 0))


def test_in_a_chroot_the_common_drivers_are_chosen(mocker: MockerFixture) -> None:
    # / and PID 1's root differ: the disks seen are the build machine's
    stats = {"/": stat_result(2049, 7), "/proc/1/root": stat_result(2049, 2)}
    mocker.patch("os.stat", side_effect=lambda p: stats[str(p)])
    assert install.in_chroot()
    assert install.host_modules(UI, mocker.Mock()) is None
    stats["/proc/1/root"] = stats["/"]
    assert not install.in_chroot()
    # PID 1 out of reach (its mount namespace, from a chroot in a private one): not ruled out
    mocker.patch("os.stat", side_effect=PermissionError(13, "Permission denied"))
    assert install.in_chroot()


def test_a_boot_on_a_loop_device_gets_the_common_drivers(tmp_path: Path,
                                                         mocker: MockerFixture) -> None:
    # sysfs as the kernel shows a loop device: a virtual device, no driver, no modalias
    sysfs = tmp_path / "sys"
    node = sysfs / "devices/virtual/block/loop3"
    node.mkdir(parents=True)
    (sysfs / "dev/block").mkdir(parents=True)
    (sysfs / "dev/block/7:3").symlink_to(node)
    mountinfo = "30 1 7:3 / /boot rw,relatime shared:1 - ext4 /dev/loop3 rw\n"
    mocker.patch.object(install, "in_chroot", return_value=False)
    mocker.patch.object(install, "Path", side_effect=lambda p: {
        "/proc/self/mountinfo": mocker.Mock(read_text=lambda: mountinfo),
        "/sys": sysfs}[p])
    assert install.host_modules(UI, mocker.Mock()) is None


# --- initramfs-tools content ----------------------------------------------------------------

def initramfs_tools_tree(root: Path) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/run-init").write_bytes(b"\x7fELF klibc")
    (root / "init").write_text("#!/bin/sh\nexec run-init ${drop_caps} ${rootmnt} ${init}\n")
    return root


def test_klibc_run_init_is_replaced_once(tmp_path: Path) -> None:
    tree = initramfs_tools_tree(tmp_path)
    changes = content.adapt(UI, tree)
    assert len(changes) == 1 and "/usr/bin/run-init" in changes[0]  # not again through bin/
    script = tree / "usr/bin/run-init"
    assert script.read_text() == content.RUN_INIT and os.access(script, os.X_OK)
    assert (tree / "usr/bin/run-init.klibc").read_bytes() == b"\x7fELF klibc"
    assert content.adapt(UI, tree) == []  # content taken from an image of ours


def test_dracut_content_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "init").symlink_to("usr/lib/systemd/systemd")
    assert content.adapt(UI, tmp_path) == []


def test_run_init_checks_the_init_inside_the_new_root(tmp_path: Path) -> None:
    """`run-init -n` (initramfs-tools' validate_init): chroot into NEWROOT, look there.
    Run as a user that cannot chroot, it must fail, never say yes without looking."""
    script = tmp_path / "run-init"
    script.write_text(content.RUN_INIT)
    bad = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "usage" in bad.stderr
    if os.geteuid() == 0:
        root = tmp_path / "root"
        (root / "bin").mkdir(parents=True)
        (root / "sbin").mkdir()
        shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin/busybox")
        (root / "bin/sh").symlink_to("busybox")
        # an absolute link, right only when resolved inside the new root
        (root / "sbin/init").symlink_to("/bin/busybox")
        ok = subprocess.run(["sh", str(script), "-n", str(root), "/sbin/init"], check=False)
        missing = subprocess.run(["sh", str(script), "-n", str(root), "/sbin/nothing"],
                                 check=False)
        assert (ok.returncode, missing.returncode) == (0, 1)


# --- Debian's kernel hook -------------------------------------------------------------------

def run_hook(boot: Path, *args: str, params: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "INITOVERLAYFS_BOOT_DIR": str(boot)}
    if params is not None:
        env["DEB_MAINT_PARAMS"] = params
    return subprocess.run(["sh", str(HOOK), *args], capture_output=True, text=True,
                          env=env, check=False)


def pair_files(boot: Path, kver: str) -> list[Path]:
    files = [boot / f"initramfs-{kver}.img", boot / f"initoverlayfs-{kver}-0123456789abcdef.img"]
    for f in files:
        f.write_bytes(b"x")
    return files


def test_postrm_removes_the_pair_on_remove_only(tmp_path: Path) -> None:
    files = pair_files(tmp_path, "6.1.0-9-amd64")
    other = pair_files(tmp_path, "6.1.0-10-amd64")
    (tmp_path / "initrd.img-6.1.0-9-amd64").write_bytes(b"classic")
    # an upgrade runs postrm with "upgrade": the new version's postinst follows, keep them
    assert run_hook(tmp_path, "postrm", "6.1.0-9-amd64", params="'upgrade' '6.1.0-9'"
                    ).returncode == 0
    assert all(f.exists() for f in files)
    done = run_hook(tmp_path, "postrm", "6.1.0-9-amd64", params="'remove'")
    assert done.returncode == 0 and done.stderr == ""
    assert not any(f.exists() for f in files)
    assert all(f.exists() for f in other)  # another kernel's pair stays
    assert (tmp_path / "initrd.img-6.1.0-9-amd64").exists()  # the classic one is not ours


def test_postrm_keeps_an_initramfs_that_is_not_ours(tmp_path: Path) -> None:
    # no initoverlayfs image beside it: initramfs-KVER.img is another generator's (Fedora)
    (tmp_path / "initramfs-6.1.0-9-amd64.img").write_bytes(b"dracut's")
    assert run_hook(tmp_path, "postrm", "6.1.0-9-amd64").returncode == 0
    assert (tmp_path / "initramfs-6.1.0-9-amd64.img").exists()


def test_postinst_without_a_classic_initramfs_says_so_and_leaves_the_kernel_alone(
        tmp_path: Path) -> None:
    done = run_hook(tmp_path, "postinst", "6.1.0-9-amd64", params="'configure' ''")
    assert done.returncode == 0
    assert f"no {tmp_path}/initrd.img-6.1.0-9-amd64 (made by initramfs-tools or dracut)" in (
        done.stderr)
    assert list(tmp_path.iterdir()) == []


def test_postinst_skips_what_is_not_a_configure(tmp_path: Path) -> None:
    (tmp_path / "initrd.img-6.1.0-9-amd64").write_bytes(b"classic")
    done = run_hook(tmp_path, "postinst", "6.1.0-9-amd64", params="'abort-upgrade' '1'")
    assert (done.returncode, done.stderr) == (0, "")


# --- systemd-boot: the kernel-install plugins and initoverlayfs-boot -----------------------

PLUGINS = REPO / "packaging" / "kernel-install"
BOOT_SWITCH = REPO / "packaging" / "grub" / "initoverlayfs-boot"
KVER = "6.12.57+deb13-amd64"
TOKEN = "0123456789abcdef0123456789abcdef"
CLASSIC_ENTRY = f"""# Boot Loader Specification type#1 entry
title      Debian GNU/Linux 13 (trixie)
version    {KVER}
sort-key   debian
machine-id {TOKEN}
options    root=UUID=abc ro systemd.machine_id={TOKEN}
linux      /{TOKEN}/{KVER}/linux
initrd     /{TOKEN}/{KVER}/microcode.cpio
initrd     /{TOKEN}/{KVER}/initrd
"""


def run_plugin(name: str, esp: Path, *args: str, **env: str,
               ) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "/usr/bin:/bin", "INITOVERLAYFS_BOOT_DIR": str(esp / "boot"),
               "KERNEL_INSTALL_BOOT_ROOT": str(esp), "KERNEL_INSTALL_ENTRY_TOKEN": TOKEN,
               "KERNEL_INSTALL_CONF_ROOT": str(esp / "conf"), **env}
    return subprocess.run(["sh", str(PLUGINS / name), *args], capture_output=True, text=True,
                          env=environ, check=False)


def bls_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(ESP, entry directory, staging area) with the classic entry 90-loaderentry wrote."""
    esp = tmp_path / "esp"
    entry_dir = esp / TOKEN / KVER
    staging = tmp_path / "staging"
    for d in (entry_dir, esp / "loader/entries", staging, esp / "boot", esp / "conf"):
        d.mkdir(parents=True)
    (esp / f"loader/entries/{TOKEN}-{KVER}.conf").write_text(CLASSIC_ENTRY)
    return esp, entry_dir, staging


def test_the_entry_plugin_copies_the_classic_entry_with_our_initrd_and_one_try(
        tmp_path: Path) -> None:
    esp, entry_dir, staging = bls_tree(tmp_path)
    (staging / "initoverlayfs.img").write_bytes(b"mini")
    done = run_plugin("91-initoverlayfs.install", esp, "add", KVER, str(entry_dir),
                      KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_STAGING_AREA=str(staging))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    ours = esp / f"loader/entries/{TOKEN}-{KVER}-initoverlayfs+1.conf"
    body = ours.read_text()
    assert body.splitlines()[:2] == [
        f"# initoverlayfs's entry, made by 91-initoverlayfs.install from {TOKEN}-{KVER}.conf",
        "title Debian GNU/Linux 13 (trixie) (initoverlayfs)"]
    # the path as seen from the root of the filesystem holding the ESP
    mount = esp
    while not os.path.ismount(mount):
        mount = mount.parent
    seen = "/" + str((entry_dir / "initoverlayfs.img").relative_to(mount))
    assert [line for line in body.splitlines() if line.startswith("initrd")] == [
        f"initrd     /{TOKEN}/{KVER}/microcode.cpio", f"initrd {seen}"]
    # a version that systemd-boot sorts just before the classic entry's
    assert f"version {KVER} (initoverlayfs)" in body.splitlines()
    for line in CLASSIC_ENTRY.splitlines():
        if not line.startswith(("title", "initrd", "version", "#")):
            assert line in body
    assert (entry_dir / "initoverlayfs.img").read_bytes() == b"mini"
    # with /etc/kernel/tries and the off flag absent: 3 tries; a rebuild starts again
    (esp / "conf/tries").write_text("3\n")
    run_plugin("91-initoverlayfs.install", esp, "add", KVER, str(entry_dir),
               KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_STAGING_AREA=str(staging))
    names = sorted(p.name for p in (esp / "loader/entries").iterdir())
    assert names == [f"{TOKEN}-{KVER}-initoverlayfs+3.conf", f"{TOKEN}-{KVER}.conf"]


def test_the_entry_plugin_does_nothing_without_a_staged_mini_initramfs_or_for_uki(
        tmp_path: Path) -> None:
    esp, entry_dir, staging = bls_tree(tmp_path)
    for layout in ("bls", "uki"):
        done = run_plugin("91-initoverlayfs.install", esp, "add", KVER, str(entry_dir),
                          KERNEL_INSTALL_LAYOUT=layout, KERNEL_INSTALL_STAGING_AREA=str(staging))
        assert (done.returncode, done.stderr) == (0, "")
    assert [p.name for p in (esp / "loader/entries").iterdir()] == [f"{TOKEN}-{KVER}.conf"]


def test_the_build_plugin_skips_uki_and_says_when_there_is_no_content(tmp_path: Path) -> None:
    esp, entry_dir, staging = bls_tree(tmp_path)
    uki = run_plugin("60-initoverlayfs.install", esp, "add", KVER, str(entry_dir), "linux",
                     KERNEL_INSTALL_LAYOUT="uki", KERNEL_INSTALL_STAGING_AREA=str(staging),
                     KERNEL_INSTALL_VERBOSE="1")
    assert uki.returncode == 0 and "unified kernel image" in uki.stdout
    none = run_plugin("60-initoverlayfs.install", esp, "add", KVER, str(entry_dir), "linux",
                      KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_STAGING_AREA=str(staging))
    assert none.returncode == 0
    assert f"no initrd made for {KVER} by the generator (none set)" in none.stderr
    assert list(staging.iterdir()) == []


def run_switch(tmp_path: Path, *args: str, selected: str | None = None,
               ) -> subprocess.CompletedProcess[str]:
    efivars = tmp_path / "efivars"
    efivars.mkdir(exist_ok=True)
    if selected is not None:  # 4 bytes of attributes, then the entry's id in UTF-16
        (efivars / "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f").write_bytes(
            b"\x06\0\0\0" + selected.encode("utf-16-le") + b"\0\0")
    env = {"PATH": "/usr/bin:/bin", "INITOVERLAYFS_LOADER_ENTRIES": str(tmp_path / "entries"),
           "INITOVERLAYFS_EFIVARS": str(efivars),
           "INITOVERLAYFS_BOOT_OFF": str(tmp_path / "boot-off")}
    return subprocess.run(["sh", str(BOOT_SWITCH), *args], capture_output=True, text=True,
                          env=env, check=False)


def entry_names(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "entries").iterdir())


def test_a_good_boot_through_our_entry_gives_it_its_try_back(tmp_path: Path) -> None:
    (tmp_path / "entries").mkdir()
    ours = f"{TOKEN}-{KVER}-initoverlayfs"
    (tmp_path / f"entries/{TOKEN}-{KVER}.conf").write_text("classic")
    (tmp_path / f"entries/{ours}.conf").write_text("ours")  # blessed by systemd-bless-boot
    done = run_switch(tmp_path, "good", selected=f"{ours}.conf")
    assert done.returncode == 0 and "marked good" in done.stdout, done.stderr
    assert entry_names(tmp_path) == [f"{ours}+1.conf", f"{TOKEN}-{KVER}.conf"]
    assert "through initoverlayfs" in run_switch(tmp_path, "status").stdout


def test_a_fallback_to_the_classic_entry_is_said_and_on_rearms(tmp_path: Path) -> None:
    (tmp_path / "entries").mkdir()
    ours = f"{TOKEN}-{KVER}-initoverlayfs"
    (tmp_path / f"entries/{TOKEN}-{KVER}.conf").write_text("classic")
    (tmp_path / f"entries/{ours}+0-1.conf").write_text("ours")  # its try spent, never blessed
    done = run_switch(tmp_path, "good", selected=f"{TOKEN}-{KVER}.conf")
    assert "did not come up" in done.stdout and "systemd-boot booted" in done.stdout
    assert "next boot: the classic initramfs" in run_switch(tmp_path, "status").stdout
    assert run_switch(tmp_path, "on").returncode == 0
    assert entry_names(tmp_path) == [f"{ours}+1.conf", f"{TOKEN}-{KVER}.conf"]


def test_off_keeps_our_entry_last_until_on_and_says_nothing_of_a_fallback(
        tmp_path: Path) -> None:
    (tmp_path / "entries").mkdir()
    ours = f"{TOKEN}-{KVER}-initoverlayfs"
    (tmp_path / f"entries/{ours}+1.conf").write_text("ours")
    assert run_switch(tmp_path, "off").returncode == 0
    assert entry_names(tmp_path) == [f"{ours}+0-1.conf"] and (tmp_path / "boot-off").exists()
    assert "(initoverlayfs-boot off)" in run_switch(tmp_path, "status").stdout
    assert run_switch(tmp_path, "good", selected=f"{TOKEN}-{KVER}.conf").stdout == ""
    run_switch(tmp_path, "rearm")  # a new build: still off
    assert entry_names(tmp_path) == [f"{ours}+0-1.conf"]
    run_switch(tmp_path, "on")
    assert entry_names(tmp_path) == [f"{ours}+1.conf"]
    assert not (tmp_path / "boot-off").exists()
