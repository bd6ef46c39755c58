"""The whole rdinit boot against the recording fake: exact syscall sequences per branch."""

from __future__ import annotations

import errno
import json
import stat

import pytest
from pytest_mock import MockerFixture

from storage_init import kernel as real
from storage_init.emergency import COUNTDOWN

from .conftest import (
    BOOT_LABEL,
    BOOT_UUID,
    IMAGE,
    MODDIR,
    PARTUUID,
    Machine,
    add_disk,
    block_event,
)
from .fakekernel import Event, Executed, Paused, Rebooted

MOD = "/lib/modules/6.1.0-test/kernel"
OVERLAY = ("lowerdir=/run/initoverlayfs/lower,upperdir=/run/initoverlayfs/upper,"
           "workdir=/run/initoverlayfs/work")

HAPPY_MOUNTS = [
    ("mount", "proc", "/proc", "proc", "MS_NOSUID|MS_NODEV|MS_NOEXEC", None),
    ("mount", "sysfs", "/sys", "sysfs", "MS_NOSUID|MS_NODEV|MS_NOEXEC", None),
    ("mount", "devtmpfs", "/dev", "devtmpfs", "MS_NOSUID", "mode=0755"),
    ("mount", "tmpfs", "/run", "tmpfs", "MS_NOSUID|MS_NODEV", "mode=0755"),
    # first the hash every later module's signature is checked with (modules.SIGNATURE_HASHES;
    # the CPU's modalias is unknown here, so it is loaded, as modprobe would)
    ("finit_module", f"{MOD}/arch/x86/crypto/sha256-ssse3.ko", 0),
    ("finit_module", f"{MOD}/drivers/block/loop.ko", 0),
    ("finit_module", f"{MOD}/fs/erofs/erofs.ko", 0),
    ("finit_module", f"{MOD}/fs/overlayfs/overlay.ko", 0),
    ("finit_module", f"{MOD}/drivers/virtio/virtio.ko", 0),
    ("finit_module", f"{MOD}/drivers/virtio/virtio_ring.ko", 0),
    ("finit_module", f"{MOD}/drivers/virtio/virtio_pci.ko", 0),
    ("finit_module", f"{MOD}/drivers/block/virtio_blk.ko", 0),
    ("finit_module", f"{MOD}/fs/jbd2/jbd2.ko", 0),
    ("finit_module", f"{MOD}/fs/ext4/ext4.ko", 0),
    ("mount", "/dev/vda1", "/boot", "ext4", "MS_RDONLY", None),
    ("mount", "initoverlayfs", "/run/initoverlayfs", "tmpfs", "MS_NOSUID|MS_NODEV", "mode=0755"),
    ("ioctl", "/dev/loop-control", "LOOP_CTL_GET_FREE"),
    ("ioctl", "/dev/loop0", "LOOP_CONFIGURE"),
    ("mount", "/dev/loop0", "/run/initoverlayfs/lower", "erofs", "MS_RDONLY", None),
    ("close", "/dev/loop0"),  # only now: closing before the mount would detach it (autoclear)
    ("mount", "initoverlayfs", "/initoverlayfs", "overlay", "0", OVERLAY + ",volatile"),
    ("mount", None, "/", None, "MS_REC|MS_PRIVATE", None),
    ("mount", "/boot", "/initoverlayfs/boot", None, "MS_MOVE", None),
    ("mount", "/proc", "/initoverlayfs/proc", None, "MS_MOVE", None),
    ("mount", "/dev", "/initoverlayfs/dev", None, "MS_MOVE", None),
    ("mount", "/sys", "/initoverlayfs/sys", None, "MS_MOVE", None),
    ("mount", "/run", "/initoverlayfs/run", None, "MS_MOVE", None),
    ("chdir", "/initoverlayfs"),
    ("mount", "/initoverlayfs", "/", None, "MS_MOVE", None),
    ("chroot", "."),
    ("chdir", "/"),
    ("remove_tree_contents", 1),  # by PID 1 itself, before the exec: no child to fork
    ("execve", "/init", ["/init"]),
]
SEQUENCE_KINDS = ("mount", "umount", "finit_module", "ioctl", "chdir", "chroot", "fork",
                  "remove_tree_contents", "execve", "reboot", "close")


def sequence(m: Machine) -> list[tuple[object, ...]]:
    return m.k.recorded(*SEQUENCE_KINDS)


def failure_line(m: Machine) -> str:
    lines = [line for line in m.console().splitlines() if "Failed to" in line]
    assert len(lines) == 1, m.console()
    return lines[0]


def test_happy_path_exact_syscall_sequence(machine: Machine) -> None:
    result = machine.boot()
    assert isinstance(result, Executed)
    assert sequence(machine) == HAPPY_MOUNTS


def test_happy_path_writes_timings_and_one_summary_line(machine: Machine) -> None:
    machine.boot()
    timings = json.loads(machine.k.written["/run/initoverlayfs/timings.json"][-1])
    names = [s["name"] for s in timings["steps"]]
    assert names[0] == "mount-api" and names[-2:] == ["switch-root", "seal-verity"]
    assert timings["loop_device"] == "/dev/loop0"
    assert "virtio_blk" in timings["modules_loaded"]
    assert timings["steps"][names.index("wait-bootfs")]["ms"] == pytest.approx(30.0)
    summaries = [line for line in machine.kmsg().splitlines() if " steps in " in line]
    assert len(summaries) == 1 and "wait-bootfs 30.0" in summaries[0]


def test_timings_give_each_module_its_load_time(machine: Machine) -> None:
    machine.k.module_load_s = 0.004
    machine.boot()
    timings = json.loads(machine.k.written["/run/initoverlayfs/timings.json"][-1])
    load_ms = timings["module_load_ms"]
    assert list(load_ms) == timings["modules_loaded"] and "virtio_blk" in load_ms
    assert all(ms == pytest.approx(4.0) for ms in load_ms.values())


def test_loop_is_loaded_to_create_no_devices_up_front(machine: Machine) -> None:
    machine.boot()
    params = machine.k.module_params
    assert params[f"{MOD}/drivers/block/loop.ko"] == "max_loop=0"
    assert params[f"{MOD}/fs/erofs/erofs.ko"] == ""


def test_modules_get_their_kernel_command_line_parameters(machine: Machine) -> None:
    params = machine.k.module_params
    machine.cmdline('quiet loop.max_loop=16 virtio-blk.queue_depth=64 erofs.x="a b" rd.x=1')
    assert isinstance(machine.boot(), Executed)
    assert params[f"{MOD}/drivers/block/loop.ko"] == "max_loop=16"
    assert params[f"{MOD}/drivers/block/virtio_blk.ko"] == "queue_depth=64"
    assert params[f"{MOD}/fs/erofs/erofs.ko"] == 'x="a b"'


def test_a_module_refusing_its_parameters_is_named_with_them(machine: Machine) -> None:
    machine.cmdline("loop.max_loop=lots")
    machine.k.errors[("finit_module", f"{MOD}/drivers/block/loop.ko")] = [errno.EINVAL]
    machine.boot()
    assert f"Failed to load module loop ({MOD}/drivers/block/loop.ko) with 'max_loop=lots' " \
        "(check the kernel command line's loop.* parameters): Invalid argument" in machine.kmsg()


def test_unknown_cmdline_words_reach_init_untouched(machine: Machine) -> None:
    machine.cmdline("quiet splash single systemd.unit=rescue.target -- --weird")
    result = machine.boot(["/init", "single", "--weird", "--systemd"])
    assert isinstance(result, Executed)
    assert result.argv == ["/init", "single", "--weird", "--systemd"]
    assert result.env == {"TERM": "linux"}


def test_quiet_boot_prints_nothing_on_the_console(machine: Machine) -> None:
    machine.boot()
    assert machine.console() == ""
    assert "<6>storage-init: found bootfs" in machine.kmsg()


def test_volatile_refused_is_retried_without_it(machine: Machine) -> None:
    machine.k.errors[("mount", "/initoverlayfs")] = [errno.EINVAL]
    assert isinstance(machine.boot(), Executed)
    overlay = [c for c in sequence(machine) if c[0] == "mount" and c[2] == "/initoverlayfs"]
    assert [c[5] for c in overlay] == [OVERLAY + ",volatile", OVERLAY]
    assert "refused `volatile`" in machine.kmsg()


def test_overlay_failing_otherwise_is_not_retried(machine: Machine) -> None:
    machine.k.errors[("mount", "/initoverlayfs")] = [errno.ENODEV]
    machine.cmdline("rd.emergency=poweroff")
    assert isinstance(machine.boot(), Rebooted)
    assert "mount the overlay on /initoverlayfs: No such device" in failure_line(machine)


def test_right_hint_is_used_without_scanning_other_disks(machine: Machine) -> None:
    add_disk(machine.k, "vda", machine.disks["gpt"], {1: machine.disks["ext4"]})
    add_disk(machine.k, "sda", machine.disks["gpt"], {1: b"junk" * 1000})
    machine.k.events = []
    machine.config(f"bootfs UUID={BOOT_UUID}\nbootfs_hint /dev/vda1\n")
    machine.cmdline("rd.initoverlayfs.debug")  # shows each probe
    assert isinstance(machine.boot(), Executed)
    assert ("mount", "/dev/vda1", "/boot", "ext4", "MS_RDONLY", None) in sequence(machine)
    assert "bootfs_hint" not in machine.console()
    assert "probed vda1" in machine.console()
    assert "probed sda" not in machine.console() and "probed vda " not in machine.console()


def test_wrong_hint_is_reported_and_the_search_goes_on(machine: Machine) -> None:
    add_disk(machine.k, "sda", machine.disks["gpt"], {1: b"\0" * 4096})
    machine.config(f"bootfs UUID={BOOT_UUID}\nbootfs_hint /dev/sda1\n")
    assert isinstance(machine.boot(), Executed)
    assert "bootfs_hint /dev/sda1 is sda1 (no filesystem" in machine.kmsg()
    assert ("mount", "/dev/vda1", "/boot", "ext4", "MS_RDONLY", None) in sequence(machine)


def test_device_late_is_waited_for_by_events(machine: Machine) -> None:
    late = machine.k.events.pop()
    machine.k.events.append(block_event("vda", 12.5, late.then))
    assert isinstance(machine.boot(), Executed)
    assert machine.k.now == pytest.approx(12.5)
    assert "after 12.500 s" in machine.kmsg()


def with_a_sata_controller(machine: Machine) -> Event:
    """An AHCI driver in the mini-initramfs, and its controller's add uevent."""
    k = machine.k
    ahci = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
    k.files[f"{MODDIR}/modules.dep"] += b"kernel/drivers/ata/ahci.ko:\n"
    k.files[f"{MODDIR}/modules.alias"] += f"alias {ahci[:20]}* ahci\n".encode()
    k.add_file(f"{MODDIR}/kernel/drivers/ata/ahci.ko", b"\x7fELF")
    return Event(0.010, {"ACTION": "add", "SUBSYSTEM": "pci", "MODALIAS": ahci,
                         "DEVPATH": "/devices/pci0000:00/0000:00:1f.2"})


def test_the_started_chain_is_finished_first_and_the_rest_left_to_init(
        machine: Machine) -> None:
    """A SATA controller's uevent queued before the virtio disk's device exists: the disk's
    driver (a deeper device) is loaded first, and once the bootfs is found the controller's
    driver is not loaded at all (init's udev loads it)."""
    k = machine.k
    sata = with_a_sata_controller(machine)
    pci, virtio, disk = k.events
    k.events = [pci, sata]  # the controllers first, then what virtio_pci's probe makes
    k.made_by_module = {"virtio_pci.ko": [virtio], "virtio_blk.ko": [disk]}
    assert isinstance(machine.boot(), Executed)
    loaded = [path.rsplit("/", 1)[-1] for _, path, _ in k.recorded("finit_module")]
    assert loaded.index("virtio_blk.ko") > loaded.index("virtio_pci.ko")
    assert "ahci.ko" not in loaded


def test_a_queued_driver_is_still_loaded_when_the_bootfs_is_not_on_the_first_disk(
        machine: Machine) -> None:
    """The same machine with the bootfs on the SATA disk: the virtio chain still goes first
    (the deeper device), its disk is probed, and then the controller queued before it."""
    k = machine.k
    sata = with_a_sata_controller(machine)
    pci, virtio, _ = k.events
    k.events = [pci, sata]
    empty = block_event("vda", 0, lambda k: add_disk(k, "vda", machine.disks["gpt"], {}))
    sata_disk = block_event("sda", 0, lambda k: add_disk(k, "sda", machine.disks["gpt"],
                                                          {1: machine.disks["ext4"]}))
    k.made_by_module = {"virtio_pci.ko": [virtio], "virtio_blk.ko": [empty],
                        "ahci.ko": [sata_disk]}
    k.filesystems["/dev/sda1"] = k.filesystems.pop("/dev/vda1")
    assert isinstance(machine.boot(), Executed)
    loaded = [path.rsplit("/", 1)[-1] for _, path, _ in k.recorded("finit_module")]
    assert loaded.index("virtio_pci.ko") < loaded.index("virtio_blk.ko") < loaded.index("ahci.ko")
    assert ("mount", "/dev/sda1", "/boot", "ext4", "MS_RDONLY", None) in k.recorded("mount")


def test_timeout_names_the_spec_and_what_was_seen(machine: Machine) -> None:
    machine.k.events.pop()  # the disk never appears ...
    add_disk(machine.k, "sdb", machine.disks["gpt"], {})  # ... only an unrelated one
    machine.cmdline("quiet rd.initoverlayfs.timeout=5")
    result = machine.boot()
    line = failure_line(machine)
    assert f"find bootfs UUID={BOOT_UUID} within 5 s" in line
    assert "block devices seen: sdb (no filesystem)" in line
    assert ("drivers loaded: sha256_ssse3 loop erofs overlay virtio virtio_ring virtio_pci "
            "virtio_blk") in line
    assert "Connection timed out" in line
    assert "check bootfs in /etc/initoverlayfs.conf or rd.initoverlayfs.bootfs=" in line
    assert machine.k.now == pytest.approx(5 + COUNTDOWN)
    assert isinstance(result, Rebooted) and result.how == real.RB_AUTOBOOT


def test_default_emergency_is_a_visible_countdown_then_reboot(machine: Machine) -> None:
    machine.k.filesystems["/dev/vda1"] = {}
    machine.boot()
    sleeps = machine.k.recorded("sleep")
    assert sleeps == [("sleep", 1)] * COUNTDOWN
    assert machine.k.recorded()[-1] == ("reboot", real.RB_AUTOBOOT)
    assert "rebooting in 1..." in machine.console()


def test_image_missing_names_the_path(machine: Machine) -> None:
    machine.k.filesystems["/dev/vda1"] = {"/initoverlayfs-5.0.img": b"old"}
    machine.cmdline("quiet rd.emergency=poweroff")
    result = machine.boot()
    line = failure_line(machine)
    assert f"find the image /boot{IMAGE} on UUID={BOOT_UUID}: No such file or directory" in line
    assert "rd.initoverlayfs.fs=" in line and "initoverlayfs-install" in line
    assert isinstance(result, Rebooted) and result.how == real.RB_POWER_OFF
    assert not machine.k.recorded("sleep")


@pytest.mark.parametrize(("kind", "said"), [(stat.S_IFIFO, "a FIFO"),
                                            (stat.S_IFDIR, "a directory")])
def test_an_image_that_is_not_a_regular_file_is_refused_before_any_open(
        machine: Machine, kind: int, said: str) -> None:
    """The audit: a FIFO at the image's path blocked the boot for ever in open(), with no
    line and no rd.emergency= (anyone who can write /boot could do that)."""
    if kind == stat.S_IFDIR:
        machine.k.filesystems["/dev/vda1"] = {f"{IMAGE}/inside": b""}
    else:
        machine.k.kinds[f"/boot{IMAGE}"] = kind
    machine.cmdline("rd.emergency=poweroff")
    result = machine.boot()
    line = failure_line(machine)
    assert f"use /boot{IMAGE} on UUID={BOOT_UUID} as the image: it is {said}, not a regular " \
           "file; check fs in /etc/initoverlayfs.conf or rd.initoverlayfs.fs=" in line
    assert ("open", f"/boot{IMAGE}") not in machine.k.recorded()
    assert isinstance(result, Rebooted) and result.how == real.RB_POWER_OFF


def test_image_that_is_not_erofs(machine: Machine) -> None:
    machine.k.errors[("mount", "/run/initoverlayfs/lower")] = [errno.EINVAL]
    machine.cmdline("rd.emergency=halt")
    result = machine.boot()
    line = failure_line(machine)
    assert f"mount /boot{IMAGE} (/dev/loop0) as erofs" in line and "Invalid argument" in line
    assert "rd.initoverlayfs.fstype=" in line
    assert isinstance(result, Rebooted) and result.how == real.RB_HALT_SYSTEM


def test_loop_device_taken_by_another_process_is_retried(machine: Machine) -> None:
    machine.k.errors[("ioctl", "LOOP_CONFIGURE")] = [errno.EBUSY]
    assert isinstance(machine.boot(), Executed)
    loop_calls = [c for c in sequence(machine) if c[0] in ("ioctl", "close")]
    assert loop_calls == [
        ("ioctl", "/dev/loop-control", "LOOP_CTL_GET_FREE"),
        ("ioctl", "/dev/loop0", "LOOP_CONFIGURE"),
        ("close", "/dev/loop0"),
        ("ioctl", "/dev/loop-control", "LOOP_CTL_GET_FREE"),
        ("ioctl", "/dev/loop1", "LOOP_CONFIGURE"),
        ("close", "/dev/loop1"),
    ]
    assert ("mount", "/dev/loop1", "/run/initoverlayfs/lower", "erofs", "MS_RDONLY",
            None) in sequence(machine)


def test_kernel_without_loop_configure_falls_back(machine: Machine) -> None:
    machine.k.errors[("ioctl", "LOOP_CONFIGURE")] = [errno.EINVAL]
    assert isinstance(machine.boot(), Executed)
    assert [c[2] for c in sequence(machine) if c[0] == "ioctl"] == [
        "LOOP_CTL_GET_FREE", "LOOP_CONFIGURE", "LOOP_SET_FD", "LOOP_SET_STATUS64"]


def test_init_missing_tries_every_candidate(machine: Machine) -> None:
    machine.k.executables = set()
    machine.cmdline("rd.emergency=poweroff init=/usr/lib/systemd/systemd")
    result = machine.boot()
    execs = [c[1] for c in machine.k.recorded("execve")]
    assert execs == ["/usr/lib/systemd/systemd", "/init", "/sbin/init", "/etc/init", "/bin/init",
                     "/bin/sh"]
    assert "start init: tried /usr/lib/systemd/systemd (No such file or directory)" in (
        failure_line(machine))
    assert isinstance(result, Rebooted)


def test_init_from_the_command_line_comes_first(machine: Machine) -> None:
    machine.k.executables = {"/sbin/init", "/usr/lib/systemd/systemd"}
    machine.cmdline("init=/sbin/init rd.initoverlayfs.init=/usr/lib/systemd/systemd")
    result = machine.boot()
    assert isinstance(result, Executed) and result.path == "/usr/lib/systemd/systemd"


def test_cmdline_overrides_the_config(machine: Machine) -> None:
    machine.k.filesystems["/dev/vda1"] = {"/images/test.img": b"x"}
    machine.cmdline(f'rd.initoverlayfs.bootfs=PARTUUID={PARTUUID.upper()} '
                    'rd.initoverlayfs.bootfstype=ext3 "rd.initoverlayfs.fs=images/test.img" '
                    'rd.initoverlayfs.fstype=squashfs')
    assert isinstance(machine.boot(), Executed)
    calls = sequence(machine)
    assert ("mount", "/dev/vda1", "/boot", "ext3", "MS_RDONLY", None) in calls
    assert ("mount", "/dev/loop0", "/run/initoverlayfs/lower", "squashfs", "MS_RDONLY",
            None) in calls
    assert machine.k.recorded("open")[:2] == [
        ("open", "/lib/modules/6.1.0-test/kernel/arch/x86/crypto/sha256-ssse3.ko"),
        ("open", "/lib/modules/6.1.0-test/kernel/drivers/block/loop.ko")]
    assert ("open", "/boot/images/test.img") in machine.k.recorded("open")


@pytest.mark.parametrize("spec", [f"LABEL={BOOT_LABEL}", "PARTLABEL=bootpart", "/dev/vda1",
                                  f"UUID={BOOT_UUID.upper()}"])
def test_every_kind_of_bootfs_spec(machine: Machine, spec: str) -> None:
    machine.config(f"bootfs {spec}\n")
    assert isinstance(machine.boot(), Executed)
    assert ("mount", "/dev/vda1", "/boot", "ext4", "MS_RDONLY", None) in sequence(machine)


def test_rd_shell_runs_a_shell_then_the_emergency_action(machine: Machine) -> None:
    machine.k.add_file("/bin/sh")
    machine.k.filesystems["/dev/vda1"] = {}
    machine.cmdline("quiet rd.shell rd.emergency=poweroff")
    result = machine.boot()
    tail = machine.k.recorded("fork", "waitpid", "reboot")
    assert tail == [("fork",), ("waitpid", 4242), ("reboot", real.RB_POWER_OFF)]
    assert "rd.shell: starting /bin/sh" in machine.console()
    assert isinstance(result, Rebooted)


def test_rd_shell_without_a_shell_says_so(machine: Machine) -> None:
    machine.k.filesystems["/dev/vda1"] = {}
    machine.cmdline("rd.shell=1 rd.emergency=poweroff")
    assert isinstance(machine.boot(), Rebooted)
    assert "rd.shell: no shell in this root" in machine.console()
    assert not machine.k.recorded("fork")


def test_rd_shell_0_is_off(machine: Machine) -> None:
    machine.k.add_file("/bin/sh")
    machine.k.filesystems["/dev/vda1"] = {}
    machine.cmdline("rd.shell=0 rd.emergency=poweroff")
    machine.boot()
    assert not machine.k.recorded("fork")


def test_reboot_refused_blocks_forever_instead_of_returning(machine: Machine) -> None:
    machine.k.filesystems["/dev/vda1"] = {}
    machine.cmdline("rd.emergency=poweroff")

    def refuse(how: int) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    machine.k.reboot = refuse  # type: ignore[method-assign]
    assert isinstance(machine.boot(), Paused)
    assert "Failed to poweroff: Operation not permitted" in machine.console()


def test_malformed_config_line_stops_the_boot_with_its_line_number(machine: Machine) -> None:
    machine.config(f"# boot\nbootfs UUID={BOOT_UUID}\nbootfstype\n")
    machine.cmdline("rd.emergency=poweroff")
    assert isinstance(machine.boot(), Rebooted)
    line = failure_line(machine)
    assert "read-config: Failed to parse /etc/initoverlayfs.conf: line 3 (bootfstype): no value" \
        in line


def test_unknown_config_key_is_a_warning_and_the_boot_goes_on(machine: Machine) -> None:
    machine.config(f"bootfs UUID={BOOT_UUID}\ncolour blue\ninitrd_builder dracut\n")
    assert isinstance(machine.boot(), Executed)
    assert "<4>storage-init: line 2: unknown key 'colour' ignored" in machine.kmsg()
    assert "initrd_builder" not in machine.kmsg()
    assert machine.console() == ""  # a warning does not break `quiet`


def test_missing_config_with_bootfs_on_the_cmdline_boots(machine: Machine) -> None:
    del machine.k.files["/etc/initoverlayfs.conf"]
    machine.cmdline(f"rd.initoverlayfs.bootfs=LABEL={BOOT_LABEL}")
    assert isinstance(machine.boot(), Executed)
    assert "<4>storage-init: /etc/initoverlayfs.conf is missing" in machine.kmsg()


def test_no_bootfs_anywhere_is_a_clear_failure(machine: Machine) -> None:
    del machine.k.files["/etc/initoverlayfs.conf"]
    machine.cmdline("rd.emergency=poweroff")
    machine.boot()
    assert "no bootfs configured" in failure_line(machine)


def test_bad_optional_values_are_warnings_with_defaults(machine: Machine) -> None:
    machine.cmdline("rd.initoverlayfs.timeout=soon rd.emergency=explode")
    assert isinstance(machine.boot(), Executed)
    kmsg = machine.kmsg()
    assert "<4>storage-init: rd.initoverlayfs.timeout='soon'" in kmsg and "using 30" in kmsg
    assert "rd.emergency='explode'" in kmsg


def test_errors_reach_the_console_even_when_the_log_level_hides_them(machine: Machine) -> None:
    machine.k.files["/proc/sys/kernel/printk"] = b"1 4 1 7\n"  # loglevel=1: kernel prints <1 only
    machine.k.filesystems["/dev/vda1"] = {}
    machine.cmdline("loglevel=1 rd.emergency=poweroff")
    machine.boot()
    assert "attach-loop: Failed to find the image" in machine.direct()
    assert "<3>storage-init: attach-loop: Failed" in machine.kmsg()


def test_errors_are_not_printed_twice_when_the_kernel_shows_them(machine: Machine) -> None:
    machine.k.filesystems["/dev/vda1"] = {}
    machine.cmdline("quiet rd.emergency=poweroff")  # quiet: console_loglevel 4 shows <3>
    machine.boot()
    assert "Failed to" not in machine.direct()
    assert machine.console().count("Failed to find the image") == 1


def test_no_kmsg_means_everything_goes_to_the_console(machine: Machine) -> None:
    machine.k.errors[("open", "/dev/kmsg")] = [errno.ENOENT]
    assert isinstance(machine.boot(), Executed)
    assert "cannot open /dev/kmsg" in machine.console()
    assert "found bootfs" in machine.console()


def test_api_mount_failure_names_the_kernel_option(machine: Machine) -> None:
    machine.k.errors[("mount", "/dev")] = [errno.ENODEV]
    machine.cmdline("rd.emergency=poweroff")
    assert isinstance(machine.boot(), Rebooted)
    assert ("mount-api: Failed to mount devtmpfs on /dev: No such device; check that the "
            "kernel has CONFIG_DEVTMPFS") in machine.direct()  # no kmsg without /dev


def test_missing_stdio_gets_the_console_once_dev_is_mounted(machine: Machine) -> None:
    machine.k.stdio_missing = True
    assert isinstance(machine.boot(), Executed)
    calls = machine.k.recorded("mount", "ensure_stdio")
    assert calls[3][2] == "/run" and calls[4] == ("ensure_stdio", "/dev/console")
    assert "opened /dev/console" in machine.direct()  # kmsg is not open yet


def test_no_console_node_is_a_warning_not_a_failure(machine: Machine) -> None:
    machine.k.stdio_missing = True
    machine.k.errors[("open", "/dev/console")] = [errno.ENOENT]
    assert isinstance(machine.boot(), Executed)
    assert "cannot open /dev/console" in machine.direct()


def test_init_missing_prints_one_summary_line(machine: Machine) -> None:
    machine.k.executables = set()
    machine.cmdline("rd.emergency=poweroff")
    machine.boot()
    assert len([line for line in machine.kmsg().splitlines() if " steps in " in line]) == 1


def test_debug_0_means_off_as_for_every_dracut_flag(machine: Machine) -> None:
    machine.cmdline("quiet rd.initoverlayfs.debug=0")
    machine.boot()
    assert machine.console() == "" and machine.k.tracer is None


def test_debug_shows_every_line_on_the_console(machine: Machine) -> None:
    machine.cmdline("quiet rd.initoverlayfs.debug")
    machine.boot()
    console = machine.console()
    assert "step wait-bootfs" in console and "loaded module virtio_blk" in console
    assert machine.k.tracer is not None  # the real Kernel traces each syscall through it


def test_uevent_overflow_rescans_by_triggering_again(machine: Machine) -> None:
    machine.k.errors[("uevent_recv", "")] = [errno.ENOBUFS]
    assert isinstance(machine.boot(), Executed)
    assert len(machine.k.recorded("udev_devices")) == 2
    assert "<4>storage-init: uevent buffer overflowed" in machine.kmsg()


def test_libudev_missing_falls_back_to_sysfs(machine: Machine) -> None:
    machine.k.udev_error = OSError(errno.ENOENT, "No library named udev", "libudev.so.1")
    machine.k.add_file("/sys/bus/pci/devices/0000:00:04.0/uevent")
    assert isinstance(machine.boot(), Executed)
    assert ("write", "/sys/bus/pci/devices/0000:00:04.0/uevent", b"add") in machine.k.calls
    assert "listing them from /sys" in machine.kmsg()


def test_module_already_loaded_or_failing_does_not_stop_the_boot(machine: Machine) -> None:
    machine.k.errors[("finit_module", f"{MOD}/drivers/block/loop.ko")] = [errno.EEXIST]
    machine.k.errors[("finit_module", f"{MOD}/fs/erofs/erofs.ko")] = [errno.ENOEXEC]
    assert isinstance(machine.boot(), Executed)
    assert "<4>storage-init: Failed to load module erofs" in machine.kmsg()
    assert "loop" not in json.loads(
        machine.k.written["/run/initoverlayfs/timings.json"][-1])["modules_loaded"]


def test_drivers_built_in_without_modules_dir(machine: Machine) -> None:
    for path in [p for p in machine.k.files if p.startswith("/lib/modules")]:
        del machine.k.files[path]
    add_disk(machine.k, "vda", machine.disks["gpt"], {1: machine.disks["ext4"]})
    assert isinstance(machine.boot(), Executed)
    assert not machine.k.recorded("finit_module")


def test_old_root_that_is_not_ramfs_is_left_alone(machine: Machine) -> None:
    machine.k.root_magic = 0xEF53
    assert isinstance(machine.boot(), Executed)
    assert not machine.k.recorded("remove_tree_contents")
    assert "old root is not ramfs/tmpfs" in machine.kmsg()


def test_already_mounted_target_is_detached_not_moved(machine: Machine) -> None:
    original = machine.k.mount

    def mount_also_in_new_root(source: str | None, target: str, fstype: str | None,
                               flags: int, data: str | None) -> None:
        original(source, target, fstype, flags, data)
        if target == "/initoverlayfs" and fstype == "overlay":
            machine.k.mounted.append(("proc", "/initoverlayfs/proc"))

    machine.k.mount = mount_also_in_new_root  # type: ignore[method-assign]
    assert isinstance(machine.boot(), Executed)
    assert ("umount", "/proc", real.MNT_DETACH) in machine.k.calls
    assert ("mount", "/proc", "/initoverlayfs/proc", None, "MS_MOVE", None) not in machine.k.calls


def test_a_bug_in_a_step_still_ends_in_the_emergency_path(
        machine: Machine, mocker: MockerFixture) -> None:
    mocker.patch("storage_init.devices.Finder.wait", side_effect=KeyError("boom"))
    machine.cmdline("rd.emergency=poweroff")
    assert isinstance(machine.boot(), Rebooted)
    assert "wait-bootfs crashed: KeyError: 'boom'" in machine.console()


def test_failure_summary_includes_the_failed_step(machine: Machine) -> None:
    machine.k.events = [Event(99, {"ACTION": "add"})]
    machine.cmdline("rd.initoverlayfs.timeout=2 rd.emergency=poweroff")
    machine.boot()
    summary = [line for line in machine.kmsg().splitlines() if " steps in " in line]
    assert len(summary) == 1 and "wait-bootfs 2000.0" in summary[0]


def test_timings_carry_what_was_read_from_the_image_device(machine: Machine) -> None:
    # the kernel's counters as sysfs shows them: the third field is the sectors read
    stat = b"   12        0      96     3    0    0    0    0    0    4    3    0    0    0    0\n"
    for name in ("loop0", "dm-0"):
        machine.k.add_file(f"/sys/class/block/{name}/stat", stat)
        machine.k.add_file(f"/sys/class/block/{name}/size", b"2048\n")
    machine.boot()
    timings = json.loads(machine.k.written["/run/initoverlayfs/timings.json"][-1])
    assert timings["image_device"] in ("/dev/loop0", "/dev/dm-0"), timings
    assert (timings["image_read_bytes"], timings["image_bytes"]) == (96 * 512, 2048 * 512)


def test_timings_say_null_when_the_counters_cannot_be_read(machine: Machine) -> None:
    machine.boot()  # no sysfs counters in this machine: unknown, not zero, and the boot goes on
    timings = json.loads(machine.k.written["/run/initoverlayfs/timings.json"][-1])
    assert (timings["image_read_bytes"], timings["image_bytes"]) == (None, None)


def test_the_boot_report_is_also_written_where_the_real_root_keeps_it(machine: Machine) -> None:
    # /run itself, not the scratch tmpfs that the release unit unmounts: the timings, and one
    # line each for release-image (the summary for the journal, the image's device)
    machine.boot()
    written = machine.k.written
    report = "/run/log/initoverlayfs"
    assert written[f"{report}/timings.json"][-1] == written["/run/initoverlayfs/timings.json"][-1]
    summary = written[f"{report}/summary"][-1].decode()
    assert summary.startswith("storage-init: 17 steps in ") and summary.endswith(" (ms)\n")
    device = json.loads(written[f"{report}/timings.json"][-1])["image_device"]
    assert written[f"{report}/image-device"][-1] == device.rsplit("/", 1)[-1].encode() + b"\n"
