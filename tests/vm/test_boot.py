"""Real Debian kernels booting our images in QEMU: the spec forms, the storage families, both
kernels, the console modes, command line overrides, and every failure with its exact message
and its policy (rd.emergency=poweroff ends the VM; rd.shell answers over the serial line)."""

from __future__ import annotations

import re

import pytest

from . import images
from .qemu import BootResult, partition
from .scenarios import (
    NBD_EXPORT,
    NBD_HOST,
    NO_SUCH_UUID,
    SCENARIOS,
    Artifacts,
    result_of,
    timings_of,
)

pytestmark = pytest.mark.vm
SUCCESS = [name for name in SCENARIOS
           if not name.startswith(("fail-", "verity-corrupt-", "nbd-"))]
NBD = [name for name in SCENARIOS if name.startswith("nbd-")]


def booted(boots: dict[str, BootResult], name: str) -> BootResult:
    run = boots[name]
    assert run.returncode == 0, run.describe()  # the guest powered itself off
    return run


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_kernel_unpacks_every_mini_initramfs_whole(
        boots: dict[str, BootResult], name: str) -> None:
    """lz4 by default, with the end mark after which the kernel reads what a bootloader
    appends: fail-bad-config and fail-shell append a cpio, and it takes effect there."""
    assert "Initramfs unpacking failed" not in boots[name].console, boots[name].describe()


@pytest.mark.parametrize("name", SUCCESS)
def test_boot_reaches_init_on_an_erofs_backed_overlay(
        boots: dict[str, BootResult], artifacts: Artifacts, name: str) -> None:
    run = booted(boots, name)
    scenario = SCENARIOS[name]
    r = result_of(run)
    why = run.describe()
    assert r["pid"] == 1, why
    root, lower, boot = str(r["root"]).split(), str(r["lower"]).split(), str(r["boot"]).split()
    assert root[0] == "overlay" and "lowerdir=/run/initoverlayfs/lower" in root[2], why
    assert "upperdir=/run/initoverlayfs/upper" in root[2], why
    # verified by default: EROFS is mounted from the dm-verity device over the loop device
    unverified = "rd.initoverlayfs.verity=0" in scenario.append
    device_pattern = r"/dev/loop\d+" if unverified else r"/dev/dm-\d+"
    assert lower[0] == "erofs" and re.fullmatch(device_pattern, lower[1]), why
    if not unverified:
        assert "dm-verity: panic_on_corruption from here on (rd.emergency=poweroff)" in (
            run.console) or "quiet" in scenario.append, why
    assert r["canary"] is True, why
    assert "ro" in lower[2].split(","), why
    assert boot[:2] == ["ext4", f"/dev/{partition(scenario.interface, 2)}"], why
    assert "ro" in boot[2].split(","), why
    for key, fstype in (("proc", "proc"), ("sys", "sysfs"), ("dev", "devtmpfs"), ("run", "tmpfs")):
        assert str(r[key]).split()[0] == fstype, (key, why)
    assert r["writable"] is True, why
    assert r["timings"] is True, why
    # the old initramfs was freed: its log line, and less shared memory than its unpacked size
    assert r["freed"] is True, why
    unpacked = artifacts.kernels[scenario.kernel].unpacked_bytes
    assert int(str(r["shmem_kb"])) * 1024 < unpacked, (r["shmem_kb"], unpacked, why)
    expected_marker = "from-the-alt-image" if name == "fs-override" else images.MARKER
    assert r["marker"] == expected_marker, why
    # pyudev enumerates in the frozen binary (it once fell back to /sys on every boot, over
    # a module the freeze left out, and only a warning said so)
    assert "pyudev could not" not in run.console, why


def test_default_timings_name_every_step(boots: dict[str, BootResult]) -> None:
    timings = timings_of(booted(boots, "default"))
    steps = [s["name"] for s in timings["steps"]]  # type: ignore[attr-defined]
    assert steps == ["mount-api", "log", "read-cmdline", "read-config", "load-modules",
                     "trigger", "bring-up-network", "wait-bootfs", "mount-bootfs",
                     "mount-scratch", "attach-loop", "setup-verity", "mount-image",
                     "mount-overlay", "move-mounts", "switch-root", "seal-verity"]
    assert str(timings["image_device"]).startswith("/dev/dm-"), timings
    assert {"dm_mod", "dm_bufio", "dm_verity"} <= set(timings["modules_loaded"])  # type: ignore[call-overload]
    assert "virtio_blk" in timings["modules_loaded"]  # type: ignore[operator]
    # each load's time: the kernel's signature check alone is milliseconds on QEMU
    loads = timings["module_load_ms"]
    assert isinstance(loads, dict) and list(loads) == timings["modules_loaded"], timings
    assert all(0.1 < ms < 5000 for ms in loads.values()), loads
    # the image was read, lazily: some of it (the superblock, the root, init), never all of it
    read, size = timings["image_read_bytes"], timings["image_bytes"]
    assert isinstance(read, int) and isinstance(size, int), timings
    assert 0 < read < size, timings


def test_the_cpus_own_sha256_is_loaded_first_where_the_cpu_has_it(
        boots: dict[str, BootResult]) -> None:
    # QEMU's default CPU has no SSSE3: sha256_ssse3 is skipped by its cpu: aliases; on one
    # with SSSE3, AVX and AVX2 it is the first module loaded, so that the kernel checks every
    # later module's signature with it, and dm-verity then hashes with it (Debian signs its
    # modules with sha256, which the builder read from their signatures)
    default = timings_of(booted(boots, "default"))["modules_loaded"]
    assert isinstance(default, list) and default[0] == "loop", default
    assert "sha256_ssse3" not in default
    run = booted(boots, "partlabel")
    loaded = timings_of(run)["modules_loaded"]
    assert isinstance(loaded, list), run.describe()
    assert loaded[0] == "sha256_ssse3" and "dm_verity" in loaded, loaded


def test_a_disk_that_appears_late_is_waited_for_on_uevents(
        boots: dict[str, BootResult]) -> None:
    """Hot-plugged through QMP 4 s after storage-init triggered the storage subsystems:
    the wait sees its uevent and goes on, within rd.initoverlayfs.timeout=."""
    run = booted(boots, "late-disk")
    steps = {s["name"]: s for s in timings_of(run)["steps"]}  # type: ignore[attr-defined]
    assert steps["wait-bootfs"]["ms"] >= 4000, steps["wait-bootfs"]
    assert re.search(r"storage-init: found bootfs UUID=\S+: sda2 \(ext4 ", run.console), (
        run.describe())


def test_loop_creates_only_the_device_the_boot_takes(boots: dict[str, BootResult]) -> None:
    # max_loop=0: none of the kernel's 8 up-front loop devices, only the one storage-init
    # took from /dev/loop-control; a loop.max_loop= on the command line still wins
    r = result_of(booted(boots, "default"))
    assert (r["max_loop"], r["loops"]) == ("0", 1), r
    r = result_of(booted(boots, "debug"))
    assert (r["max_loop"], r["loops"]) == ("3", 3), r


def test_frozen_start_imports_only_what_the_boot_needs(boots: dict[str, BootResult]) -> None:
    # The frozen binary's sys.modules at its first step and what the steps imported after:
    # the Nuitka runtime imports inspect at every start, and only the freeze's
    # frozen_inspect.py keeps ast, dis and tokenize (the real inspect's imports) out; the rest
    # were taken out of storage-init's imports (test_start_cost.py pins them without a VM).
    timings = timings_of(booted(boots, "default"))
    at_start = set(timings["python_modules_at_start"])  # type: ignore[call-overload]
    later = set(timings["python_modules_later"])  # type: ignore[call-overload]
    assert {"inspect", "storage_init.boot", "storage_init.kernel"} <= at_start, sorted(at_start)
    assert "pyudev.discover" in later, sorted(later)  # imported by the trigger step
    removed = {"ast", "dis", "tokenize", "typing", "dataclasses", "socket", "argparse",
               "subprocess", "threading", "datetime", "json", "contextlib", "re", "enum",
               "fnmatch", "collections", "functools"}
    assert sorted((at_start | later) & removed) == []
    assert "pyudev" not in at_start
    # a local bootfs pays nothing for the network: its step imports none of it
    assert sorted(m for m in at_start | later if m.startswith("pyroute2") or m in {
        "storage_init.network", "storage_init.rtnl", "storage_init.nbdproto"}) == []
    entered, started = timings["entered_boottime_s"], timings["started_boottime_s"]
    assert isinstance(entered, float) and isinstance(started, float) and entered < started
    # Nuitka's start-up patch came precompiled: CPython's compiler never ran
    assert timings["runtime_patch_precompiled"] is True


@pytest.mark.parametrize("name", NBD)
def test_a_bootfs_on_nbd_boots_to_init_over_the_network(
        boots: dict[str, BootResult], name: str) -> None:
    run = booted(boots, name)
    scenario = SCENARIOS[name]
    r, why = result_of(run), run.describe()
    assert r["pid"] == 1 and r["marker"] == images.MARKER, why
    assert str(r["root"]).split()[0] == "overlay", why
    lower, boot = str(r["lower"]).split(), str(r["boot"]).split()
    # the image on the export, through its loop device, verified by dm-verity
    assert lower[0] == "erofs" and re.fullmatch(r"/dev/dm-\d+", lower[1]), why
    assert boot[:2] == ["ext4", "/dev/nbd0"] and "ro" in boot[2].split(","), why
    assert r["writable"] is True and r["canary"] is True and r["freed"] is True, why
    console = run.console
    assert re.search(r"storage-init: interface eth0 is there \(index \d+\)", console), why
    assert "storage-init: network: 10.0.2.15/24 on eth0 via 10.0.2.2" in console, why
    assert re.search(rf"storage-init: nbd:{NBD_HOST}:\d+/{NBD_EXPORT}: \d+ bytes, read-only",
                     console), why
    timings = timings_of(run)
    steps = {s["name"]: s["ms"] for s in timings["steps"]}  # type: ignore[attr-defined]
    assert steps["bring-up-network"] > 0 and steps["wait-bootfs"] > 0, timings
    driver = {"virtio-net": "virtio_net", "e1000": "e1000"}[str(scenario.nic)]
    loaded = timings["modules_loaded"]
    assert "nbd" in loaded and driver in loaded, loaded  # type: ignore[operator]
    later = timings["python_modules_later"]
    assert "pyroute2.netlink.rtnl.ifinfmsg" in later, later  # type: ignore[operator]
    # pyroute2's package __init__ (asyncio, ssl, sqlite3, ...) never ran, and what its message
    # modules import was stood in for (storage_init.rtnl)
    unwanted = {"asyncio", "ssl", "sqlite3", "pyroute2.iproute", "multiprocessing", "platform",
                "logging"}
    assert sorted(unwanted & set(later)) == [], later  # type: ignore[call-overload]


def test_generic_kernel_loads_ext4_and_its_softdep_from_the_mini_initramfs(
        boots: dict[str, BootResult]) -> None:
    for name in ("generic-virtio-blk", "generic-ahci", "generic-nvme", "generic-virtio-scsi"):
        loaded = timings_of(booted(boots, name))["modules_loaded"]
        assert "ext4" in loaded and "crc32c_generic" in loaded, (name, loaded)  # type: ignore[operator]
    ahci = timings_of(boots["generic-ahci"])["modules_loaded"]
    assert "ahci" in ahci and "sd_mod" in ahci  # type: ignore[operator]


def test_debug_traces_every_syscall_on_the_console(boots: dict[str, BootResult]) -> None:
    console = booted(boots, "debug").console
    # (the API mounts come before the command line is read, so they are not traced)
    for pattern in (r"finit_module\('/lib/modules/.*/virtio_blk\.ko', '', 0\) = 0 \[",
                    r"finit_module\('/lib/modules/.*/loop\.ko', 'max_loop=3', 0\) = 0 \[",
                    r"mount\('/dev/vda2', '/boot', 'ext4', MS_RDONLY, None\) = 0 \[",
                    r"ioctl\(\d+, LOOP_CONFIGURE, <\d+ bytes>\) = ",
                    r"ioctl\(\d+, DM_DEV_CREATE, <312 bytes>\) = ",
                    r"ioctl\(\d+, DM_TABLE_LOAD, <\d+ bytes>\) = ",
                    r"mount\('/dev/dm-\d+', '/run/initoverlayfs/lower', 'erofs', MS_RDONLY",
                    r"mount\('/initoverlayfs', '/', None, MS_MOVE, None\) = 0",
                    r"execve\('/sbin/init', \['/sbin/init'\]\)"):
        assert re.search("storage-init: " + pattern, console), (pattern, console)


def test_quiet_keeps_storage_init_off_the_console(boots: dict[str, BootResult]) -> None:
    console = booted(boots, "quiet").console
    assert "storage-init" not in console, console
    assert "INITOVERLAYFS-RESULT" in console


def test_init_on_the_command_line_runs_first(boots: dict[str, BootResult]) -> None:
    console = booted(boots, "init-elsewhere").console
    assert "INITOVERLAYFS-OTHER-INIT" in console
    assert console.index("INITOVERLAYFS-OTHER-INIT") < console.index("INITOVERLAYFS-RESULT")


FAILURES = {
    "fail-no-bootfs": rf"storage-init: wait-bootfs: Failed to find bootfs UUID={NO_SUCH_UUID} "
                      r"within 5 s \(block devices seen: vda .*vda2 \(ext4 "
                      rf"UUID={images.FS_UUID} LABEL={images.FS_LABEL}",
    "fail-blacklisted-driver":
        r"storage-init: wait-bootfs: Failed to find bootfs UUID=\S+ within 5 s \(block devices "
        r"seen: none; drivers loaded: [^;]*virtio_pci[^;]*; module virtio_blk failed: "
        r"modprobe.blacklist= on the kernel command line\)",
    "fail-no-image": r"storage-init: attach-loop: Failed to find the image /boot/missing.img "
                     rf"on UUID={images.FS_UUID}: No such file or directory; check fs in "
                     r"/etc/initoverlayfs.conf or rd.initoverlayfs.fs=",
    "fail-fifo-image": r"storage-init: attach-loop: Failed to use /boot/fifo.img on "
                       rf"UUID={images.FS_UUID} as the image: it is a FIFO, not a regular file; "
                       r"check fs in /etc/initoverlayfs.conf or rd.initoverlayfs.fs=",
    "fail-io-error": r"storage-init: setup-verity: Failed to read /boot/ioerror-[^ ]+\.img at "
                     r"byte 0 \(/dev/loop\d+\): Input/output error; check the disk holding the "
                     rf"bootfs UUID={images.FS_UUID}: the kernel log names the device and "
                     r"sector that failed",
    "fail-corrupt-image": r"storage-init: mount-image: Failed to mount /boot/corrupt.img "
                          r"\(/dev/loop\d+\) as erofs on /run/initoverlayfs/lower: Invalid "
                          r"argument; check that /boot/corrupt.img is a filesystem image of type "
                          r"erofs",
    "fail-wrong-fstype": r"storage-init: mount-bootfs: Failed to mount /dev/vda2 "
                         rf"\(UUID={images.FS_UUID}\) on /boot as xfs: No such device; check "
                         r"bootfstype in /etc/initoverlayfs.conf or rd.initoverlayfs.bootfstype=",
    "fail-no-init": r"storage-init: exec-init: Failed to start init: tried /init \(No such file "
                    r"or directory\), /sbin/init \(No such file or directory\), /etc/init .*"
                    r"/bin/sh \(No such file or directory\)",
    "fail-bad-config": r"storage-init: read-config: Failed to parse /etc/initoverlayfs.conf: "
                       r"line 1 \(bootfs\)",
    "fail-verity-flipped-block":
        r"storage-init: setup-verity: Failed to verify /boot/flipped-[^ ]+\.img: dm-verity "
        r"rejects it against the root hash [0-9a-f]{64} of /etc/initoverlayfs.conf: it is not "
        r"the image this mini-initramfs was built with, or it is corrupted; check that "
        r"/boot/flipped-[^ ]+\.img and the mini-initramfs come from the same "
        r"initoverlayfs-install run for .* \(rerun it; rd.initoverlayfs.verity=0 boots this "
        r"image unverified\)",
    "fail-verity-other-build":
        r"storage-init: setup-verity: Failed to verify /boot/other-build.img: it is not the "
        r"image this mini-initramfs was built with: its hash tree is for \d+ blocks with salt "
        r"[0-9a-f]{16}\.\.\., the config expects \d+ blocks with salt [0-9a-f]{16}\.\.\.; "
        r"check that /boot/other-build.img and the mini-initramfs come from the same",
    "fail-verity-no-tree":
        r"storage-init: setup-verity: Failed to verify /boot/notree-[^ ]+\.img: it has no "
        r"verity hash tree: it is \d+ bytes and the tree should start at byte \d+; check",
    "fail-nbd-no-interface":
        r"storage-init: bring-up-network: Failed to find the network interface eth7 "
        r"\(interfaces seen: eth0, lo; drivers loaded: .*virtio_net.*\): Connection timed out; "
        r"check the interface \(6th field of ip=",
    "fail-nbd-server-down":
        rf"storage-init: wait-bootfs: Failed to connect to the NBD server {NBD_HOST}:\d+: "
        rf"Connection refused; check that an NBD server listens on {NBD_HOST}:\d+ and that the "
        r"link's address and gateway \(ip=\) reach it",
    "fail-nbd-no-export":
        rf"storage-init: wait-bootfs: Failed to attach nbd:{NBD_HOST}:\d+/nope: export 'nope': "
        r"no such export on the server.*; check the export name",
    "fail-nbd-local-build":
        rf"storage-init: bring-up-network: Failed to bring up eth0 for the bootfs "
        rf"nbd:{NBD_HOST}:\d+/{NBD_EXPORT}: this storage-init has no pyroute2 \(it was frozen "
        r"for a local bootfs\); check the mini-initramfs: rebuild it with initoverlayfs-install "
        r"--network",
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_failure_names_the_cause_and_rd_emergency_poweroff_ends_the_vm(
        boots: dict[str, BootResult], name: str) -> None:
    run = booted(boots, name)  # exit 0: QEMU ended because the guest powered off
    assert re.search(FAILURES[name], run.console), run.describe()
    assert "storage-init: rd.emergency=poweroff: poweroff now" in run.console, run.describe()
    assert "reboot: Power down" in run.console
    assert "INITOVERLAYFS-RESULT" not in run.console
    assert "Kernel panic" not in run.console


def test_verity_found_the_flipped_block_in_the_kernel_log(boots: dict[str, BootResult]) -> None:
    console = boots["fail-verity-flipped-block"].console
    assert re.search(r"device-mapper: verity: \d+:\d+: data block 0 is corrupted", console)


@pytest.mark.parametrize(("name", "stop"), [
    # rd.emergency=halt: the kernel panics with the reason (panic=1 then resets the VM)
    ("verity-corrupt-halt", "Kernel panic - not syncing: dm-verity device corrupted"),
    # rd.emergency=reboot: the kernel restarts at once, saying why
    ("verity-corrupt-reboot", "reboot: Restarting system with command 'dm-verity device "
                              "corrupted'"),
])
def test_a_corrupted_block_read_after_the_handover_stops_the_machine(
        boots: dict[str, BootResult], name: str, stop: str) -> None:
    run = boots[name]
    assert run.returncode is not None, run.describe()  # QEMU ended: -no-reboot on the reset
    assert "INITOVERLAYFS-INIT-STARTED" in run.console, run.describe()  # init ran, then read
    assert re.search(r"device-mapper: verity: \d+:\d+: data block \d+ is corrupted",
                     run.console), run.describe()
    assert stop in run.console, run.describe()
    assert "INITOVERLAYFS-RESULT" not in run.console, run.describe()


def test_rd_shell_answers_over_the_serial_line(boots: dict[str, BootResult]) -> None:
    run = booted(boots, "fail-shell")
    assert "Failed to find bootfs" in run.console, run.describe()
    # the command went over the serial line, and only the shell's arithmetic makes 42
    assert "echo SHELL-$((6*7))" in run.console, run.describe()
    assert "SHELL-42" in run.console, run.describe()
    after = run.console[run.console.index("SHELL-42"):]
    assert "rd.emergency=poweroff: poweroff now" in after, run.describe()
