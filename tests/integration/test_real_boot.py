"""The real sequence on this machine's kernel: a real ext4 bootfs on a loop device, a real
mkfs.erofs image on it, a real loop attach, EROFS mount, overlay on tmpfs, MS_MOVE of the API
filesystems and switch root, all inside a private PID and mount namespace, ending in the exec
of a busybox init from the image that reports what it sees from inside the new root."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage_init.mounts import MountEntry, parse_mountinfo

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
KVER = os.uname().release
BOOT_UUID = str(uuid.uuid4())
CORRUPT = f"corrupt-{BOOT_UUID}.img"  # unique, so the kernel log lines of this run are ours

TEST_INIT = r"""#!/bin/sh
echo "PID=$$"
echo "ARGS=$*"
echo "MARKER=$(cat /etc/marker)"
echo written-after-boot > /written && echo "READBACK=$(cat /written)"
[ -s /run/initoverlayfs/timings.json ] && echo "TIMINGS=yes"
# (storage-init freed the old root itself before this exec: no process of it is left)
echo "MOUNTINFO-BEGIN"
cat /proc/self/mountinfo
echo "MOUNTINFO-END"
"""


def tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's {package} (.ci/run does)")
    return path


@dataclass
class Bootfs:
    loop: str
    image: Path


@pytest.fixture(scope="module")
def bootfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bootfs]:
    """An ext4 bootfs holding the EROFS image, attached read-only to a loop device."""
    tmp = tmp_path_factory.mktemp("real")
    tree = tmp / "tree"
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "boot", "tmp"):
        (tree / d).mkdir(parents=True)
    shutil.copy(tool("busybox", "busybox-static"), tree / "bin" / "busybox")
    for applet in ("sh", "cat", "grep", "sleep", "ls"):
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "sbin" / "init").write_text(TEST_INIT)
    (tree / "sbin" / "init").chmod(0o755)
    (tree / "etc" / "marker").write_text("from-the-erofs-image\n")
    bootdir = tmp / "bootdir"
    bootdir.mkdir()
    (bootdir / CORRUPT).write_bytes(b"\0" * 65536)
    image = bootdir / f"initoverlayfs-{KVER}.img"
    subprocess.run([tool("mkfs.erofs", "erofs-utils"), "-zlz4hc", str(image), str(tree)],
                   check=True, capture_output=True)
    ext4 = tmp / "boot.ext4"
    subprocess.run([tool("mkfs.ext4", "e2fsprogs"), "-q", "-F", "-U", BOOT_UUID, "-L", "ITBOOT",
                    "-d", str(bootdir), str(ext4), "32M"], check=True)
    loop = subprocess.run([tool("losetup", "mount"), "--find", "--show", "--read-only",
                           str(ext4)], check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield Bootfs(loop, image)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def value(self, key: str) -> str:
        match = re.search(rf"^{key}=(.*)$", self.stdout, re.M)
        assert match, f"{key} missing from the test init's output:\n{self.stdout}\n{self.stderr}"
        return match.group(1)

    def mounts(self) -> dict[str, MountEntry]:
        block = self.stdout.split("MOUNTINFO-BEGIN\n", 1)[1].split("MOUNTINFO-END", 1)[0]
        return {entry.target: entry for entry in parse_mountinfo(block)}


def in_new_namespaces(*command: str) -> list[str]:
    """`command` as PID 1 of a new PID namespace, with a private mount namespace."""
    return [tool("unshare", "util-linux"), "--mount", "--pid", "--fork",
            "--propagation", "private", *command]


def run_pid1(config: str, cmdline: str, *args: str, timeout: float = 60) -> Run:
    command = in_new_namespaces(sys.executable, "-m", "tests.integration.pid1_harness",
                                config, cmdline, *args)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return Run(done.returncode, done.stdout, done.stderr)


def assert_reached_init(run: Run, args: str) -> None:
    """What the test init reports from inside a finished boot."""
    assert run.value("PID") == "1"
    assert run.value("ARGS") == args
    assert run.value("MARKER") == "from-the-erofs-image"
    assert run.value("READBACK") == "written-after-boot"
    assert run.value("TIMINGS") == "yes"


def kernel_log_since(run: Run, marker: str) -> str:
    """The kernel log lines that mention `marker`: what the console shows with `quiet`."""
    log = subprocess.run([tool("dmesg", "util-linux")], capture_output=True, text=True).stdout
    return run.stderr + "".join(line + "\n" for line in log.splitlines() if marker in line)


def test_real_switch_root_into_an_erofs_backed_overlay(bootfs: Bootfs) -> None:
    run = run_pid1(f"bootfs UUID={BOOT_UUID}\nbootfstype ext4\nudev_trigger block\n",
                   "console=ttyS0 quiet rd.initoverlayfs.debug stray -- --weird",
                   "stray", "--weird")
    assert run.returncode == 0, run.stderr
    assert_reached_init(run, "stray --weird")

    mounts = run.mounts()
    root = mounts["/"]
    assert root.fstype == "overlay"
    assert "lowerdir=/run/initoverlayfs/lower" in root.options
    assert "upperdir=/run/initoverlayfs/upper" in root.options
    lower = mounts["/run/initoverlayfs/lower"]
    assert lower.fstype == "erofs" and re.fullmatch(r"/dev/loop\d+", lower.source)
    assert lower.source != bootfs.loop
    assert mounts["/run/initoverlayfs"].fstype == "tmpfs"
    assert mounts["/boot"].fstype == "ext4" and mounts["/boot"].source == bootfs.loop
    assert "ro" in mounts["/boot"].mount_options.split(",")  # storage-init only reads /boot
    assert "ro" in lower.mount_options.split(",")
    for target, fstype in (("/proc", "proc"), ("/sys", "sysfs"), ("/dev", "devtmpfs"),
                           ("/run", "tmpfs")):
        assert mounts[target].fstype == fstype, target
    assert "freed the old initramfs" in run.stderr
    assert re.search(r"\d+ steps in [\d.]+ ms", run.stderr)
    assert "mount(" in run.stderr and "[" in run.stderr  # the debug syscall trace


def test_real_failure_names_the_image_and_powers_off(bootfs: Bootfs) -> None:
    missing = f"/not-there-{uuid.uuid4()}.img"
    run = run_pid1(f"bootfs UUID={BOOT_UUID}\nfs {missing}\nudev_trigger block\n",
                   "quiet rd.emergency=poweroff")
    # Errors go to kmsg at KERN_ERR, which the kernel prints on the console even with quiet.
    assert f"Failed to find the image /boot{missing}" in kernel_log_since(run, missing)
    assert "rd.emergency=poweroff: poweroff now" in run.stderr
    # reboot(POWER_OFF) from a PID namespace's init ends that namespace with SIGINT.
    assert run.returncode in (-signal.SIGINT, 128 + signal.SIGINT), run.stderr


def test_real_timeout_names_the_spec_and_the_devices_seen(bootfs: Bootfs) -> None:
    missing = str(uuid.uuid4())
    run = run_pid1(f"bootfs UUID={missing}\nudev_trigger block\n",
                   "rd.initoverlayfs.timeout=1 rd.emergency=poweroff")
    log = kernel_log_since(run, missing)
    assert f"find bootfs UUID={missing} within 1 s" in log
    assert f"UUID={BOOT_UUID}" in log  # our loop device was seen and described
    assert run.returncode in (-signal.SIGINT, 128 + signal.SIGINT)


def test_real_image_that_is_not_erofs(bootfs: Bootfs) -> None:
    run = run_pid1(f"bootfs UUID={BOOT_UUID}\nfs /{CORRUPT}\nudev_trigger block\n",
                   "quiet rd.emergency=poweroff")
    log = kernel_log_since(run, CORRUPT)
    assert re.search(rf"Failed to mount /boot/{CORRUPT} \(/dev/loop\d+\) as erofs on "
                     r"/run/initoverlayfs/lower: Invalid argument", log), log
    assert "rd.initoverlayfs.fstype=" in log
    assert run.returncode in (-signal.SIGINT, 128 + signal.SIGINT)
