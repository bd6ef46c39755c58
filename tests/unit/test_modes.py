"""--systemd mode, --dry-run and the command-line behaviour when not PID 1."""

from __future__ import annotations

import json
import re

import pytest

from storage_init import __version__, cli
from storage_init import kernel as real
from storage_init.boot import SYSTEMD, Boot, Paths
from storage_init.log import Log
from storage_init.main import dry_run, main
from storage_init.steps import steps_for

from .conftest import BOOT_UUID, Machine
from .fakekernel import Rebooted


def systemd_boot(m: Machine) -> Boot:
    boot = Boot(m.k, Log(m.k), SYSTEMD, ["storage-init", "--systemd"], {}, Paths())
    boot.run(steps_for(SYSTEMD), after=boot.finish)
    return boot


def test_systemd_mode_skips_early_mounts_switch_root_and_exec(machine: Machine) -> None:
    machine.k.pid = 412
    boot = systemd_boot(machine)
    calls = machine.k.recorded("mount", "chroot", "execve")
    assert [c[2] for c in calls] == ["/boot", "/run/initoverlayfs", "/run/initoverlayfs/lower",
                                     "/initoverlayfs", "/", "/initoverlayfs/boot"]
    assert boot.bootfs is not None and boot.bootfs.node == "/dev/vda1"
    assert "/run/initoverlayfs/timings.json" in machine.k.written
    assert json.loads(machine.k.written["/run/initoverlayfs/timings.json"][0])["mode"] == SYSTEMD
    # no journald in the mini-initramfs: its lines go to kmsg, as in rdinit mode
    assert "storage-init: found bootfs" in machine.kmsg()


def test_systemd_mode_triggers_and_loads_the_drivers_itself(machine: Machine) -> None:
    # The mini-initramfs runs no udevd: the disk appears through storage-init's own
    # targeted trigger, and storage-init loads its drivers, as in rdinit mode.
    machine.k.pid = 412
    boot = systemd_boot(machine)
    assert boot.bootfs is not None and boot.bootfs.node == "/dev/vda1"
    assert machine.k.recorded("udev_devices")
    assert [p for p in machine.k.written if p.endswith("/uevent")] != []
    loaded = [c[1].rsplit("/", 1)[-1] for c in machine.k.recorded("finit_module")]
    assert "virtio_pci.ko" in loaded and "virtio_blk.ko" in loaded, loaded
    assert re.search(r"triggered [1-9]\d* devices in block", machine.kmsg()), machine.kmsg()


def test_rdinit_mode_triggers_and_loads_the_drivers_itself(machine: Machine) -> None:
    machine.boot()
    assert machine.k.recorded("udev_devices")
    assert [p for p in machine.k.written if p.endswith("/uevent")] != []
    loaded = [c[1].rsplit("/", 1)[-1] for c in machine.k.recorded("finit_module")]
    assert "virtio_pci.ko" in loaded and "virtio_blk.ko" in loaded, loaded


def test_systemd_mode_failure_with_rd_shell_exits_nonzero_for_onfailure(
        machine: Machine) -> None:
    machine.k.pid = 412
    machine.cmdline("console=ttyS0 rd.shell")
    machine.k.filesystems["/dev/vda1"] = {}
    with pytest.raises(SystemExit) as info:
        systemd_boot(machine)
    assert info.value.code == 1
    assert not machine.k.recorded("reboot")
    assert "Failed to find the image" in machine.console()


def test_systemd_mode_failure_applies_rd_emergency_itself(machine: Machine) -> None:
    """No silent hang in an emergency.target without a shell: the policy, as in rdinit."""
    machine.k.pid = 412
    machine.cmdline("console=ttyS0 rd.emergency=poweroff")
    machine.k.filesystems["/dev/vda1"] = {}
    with pytest.raises(Rebooted):
        systemd_boot(machine)
    assert machine.k.recorded("reboot") == [("reboot", real.RB_POWER_OFF)]
    assert "Failed to find the image" in machine.console()
    assert "rd.emergency=poweroff: poweroff now" in machine.console()


def test_dry_run_prints_settings_and_plan_and_touches_nothing(
        machine: Machine, capsys: pytest.CaptureFixture[str]) -> None:
    machine.k.pid = 999
    rc = dry_run(machine.k, "rdinit", Paths(), "quiet rd.initoverlayfs.timeout=7")
    out = capsys.readouterr().out
    assert rc == 0
    assert f"bootfs        UUID={BOOT_UUID}" in out and "timeout       7 s" in out
    assert " 1. mount-api" in out and "18. exec-init" in out
    assert "network       (none: the bootfs is local)" in out
    assert " 7. bring-up-network nothing: the bootfs is local" in out
    assert machine.k.calls == []


def test_dry_run_reports_config_errors(machine: Machine,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    machine.config("bootfs nothing\n")
    assert dry_run(machine.k, "rdinit", Paths(), "") == 1
    assert "line 1 (bootfs)" in capsys.readouterr().err


def test_not_pid1_without_a_mode_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["storage-init"]) == 2
    assert "not PID 1" in capsys.readouterr().err


def test_help_describes_the_kernel_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["storage-init", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: storage-init [-h] [--dry-run]")
    assert "--dry-run" in out and "rd.initoverlayfs.bootfs=" in out and "rd.emergency" in out
    assert "config file (default: /etc/initoverlayfs.conf)" in out
    assert main(["storage-init", "-h"]) == 0 and capsys.readouterr().out == out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["storage-init", "--version"]) == 0
    assert capsys.readouterr().out == f"storage-init {__version__}\n"


@pytest.mark.parametrize(("args", "expected"), [
    ([], cli.Options(config="/etc/x.conf")),
    (["--dry-run", "--cmdline", "quiet rd.shell=0"],
     cli.Options(config="/etc/x.conf", cmdline="quiet rd.shell=0", dry_run=True)),
    (["--config=/a", "--cmdline=", "--systemd"],
     cli.Options(config="/a", cmdline="", systemd=True)),
    (["--config", "/a", "--config", "/b"], cli.Options(config="/b")),  # the last one wins
    (["--config", "-"], cli.Options(config="-")),
    (["--cmdline=-x rd.shell"], cli.Options(config="/etc/x.conf", cmdline="-x rd.shell")),
])
def test_command_line_options(args: list[str], expected: cli.Options) -> None:
    assert cli.parse(args, "/etc/x.conf") == expected


@pytest.mark.parametrize(("args", "message"), [
    (["--config"], "argument --config: expected one argument"),
    (["--cmdline", "--dry-run"], "argument --cmdline: expected one argument"),
    (["--dry"], "unrecognized arguments: --dry"),  # no abbreviations
    (["--dry-run", "x", "y"], "unrecognized arguments: x y"),
    (["--", "--dry-run"], "unrecognized arguments: --dry-run"),
    (["--systemd=yes"], "argument --systemd: ignored explicit argument 'yes'"),
])
def test_command_line_errors_give_usage_and_status_2(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(cli.UsageError, match=f"^{message}$"):
        cli.parse(args, "/etc/x.conf")
    assert main(["storage-init", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{cli.USAGE}\nstorage-init: error: {message}\n"


SHARED = "/usr/lib/initoverlayfs/shared-files"
LIBS = ("/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so",
        "/usr/lib/x86_64-linux-gnu/libc.so.6")


def with_shared_list(m: Machine, text: str) -> None:
    """The mini-initramfs holds LIBS and the builder's list; the image has their folders."""
    m.k.add_file(SHARED, text.encode())
    for path in LIBS:
        m.k.add_file(path, f"bytes of {path}".encode())
    for folder in ("/usr", "/usr/lib", "/usr/lib/x86_64-linux-gnu",
                   "/usr/lib/x86_64-linux-gnu/systemd"):
        m.k.dirs.add(f"/run/initoverlayfs/lower{folder}")


def overlay_options(m: Machine) -> str:
    (data,) = [c[5] for c in m.k.recorded("mount") if c[3] == "overlay"]
    return str(data)


def test_systemd_mode_serves_the_listed_files_from_the_mini_initramfs_above_the_image(
        machine: Machine) -> None:
    """The image's systemd maps its libraries from the mini's copies after the switch root,
    instead of reading them through dm-verity again."""
    machine.k.pid = 412
    with_shared_list(machine, "\n".join(LIBS) + "\n")
    systemd_boot(machine)
    copies = machine.k.recorded("copy")
    assert [(c[1], c[2]) for c in copies] == [
        (path, f"/run/initoverlayfs/shared{path}") for path in LIBS]
    assert overlay_options(machine).startswith(
        "lowerdir=/run/initoverlayfs/shared:/run/initoverlayfs/lower,")
    assert "2 files of the mini-initramfs serve as the image's" in machine.kmsg()


@pytest.mark.parametrize("trouble", ["a path outside /usr", "a failed copy",
                                     "a folder that is a symlink in the image"])
def test_a_list_that_makes_no_sense_or_a_failed_copy_leaves_the_images_own_files(
        machine: Machine, trouble: str) -> None:
    machine.k.pid = 412
    if trouble == "a failed copy":
        with_shared_list(machine, "\n".join(LIBS) + "\n")
        machine.k.errors[("copy", f"/run/initoverlayfs/shared{LIBS[1]}")] = [28]  # ENOSPC
    elif trouble == "a path outside /usr":
        with_shared_list(machine, f"{LIBS[0]}\n/etc/shadow\n")
    else:  # the layer's /usr/lib64 folder would hide the image's /usr/lib64 -> lib
        with_shared_list(machine, f"{LIBS[0]}\n/usr/lib64/libc.so.6\n")
        machine.k.add_file("/usr/lib64/libc.so.6", b"libc")
        machine.k.links["/run/initoverlayfs/lower/usr/lib64"] = "lib"
        machine.k.dirs.add("/run/initoverlayfs/lower/usr/lib64")  # stat follows the link
    boot = systemd_boot(machine)
    assert boot.finished and boot.shared_layer is None
    assert overlay_options(machine).startswith("lowerdir=/run/initoverlayfs/lower,")
    assert "the image's own copies serve instead of the mini-initramfs's" in machine.kmsg()


def test_rdinit_mode_shares_nothing_even_with_a_list(machine: Machine) -> None:
    with_shared_list(machine, "\n".join(LIBS) + "\n")
    machine.boot()
    assert not machine.k.recorded("copy")
    assert overlay_options(machine).startswith("lowerdir=/run/initoverlayfs/lower,")
