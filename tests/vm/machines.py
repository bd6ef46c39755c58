"""The bootloader tests' three Debian machines (test_bootloader: Debian 12 and 13 with GRUB;
test_systemd_boot: Debian 13 with systemd-boot), each run whole in the background: our .deb
installed with apt, what the install left on the disk read back, then its three power-ons
(the first boot, the fallback from a corrupted image, the boot after `apt-get remove`).

Why in the background, two at a time, from the start of the session: a machine is one QEMU
(TCG: one host core) or one apt run at a time, and its boots and builds take minutes, most of
a cold run's time when they ran one after the other at the end. Started when the session
has collected its tests (tests/conftest.py), they use the second core while the unit and
integration tiers use one, and the downloads of a cold cache wait on the network, not on the
tiers. The tests then check what each stage left (MachineRun), in their own words.

The Debian system test's measured boots wait for these to end (`wait`), so that nothing else
runs beside them."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import traceback
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from initoverlayfs_build import cpio, initramfs, pair
from initoverlayfs_build.ui import Ui

from .bootloader_system import (
    ACTION,
    ESP,
    SUITES,
    SYSTEMD_BOOT,
    edit_disk,
    installed_disk,
    read_boot_file,
)
from .debian_system import REPO, parse_report
from .qemu import BootResult, VmSpec, boot, uefi_vars

# GRUB's Debian 12 first: it waits for the Debian system's base (debootstrap and dracut, the
# longest make); Debian 13's GRUB machine makes the Debian 13 tree its systemd-boot one reuses.
ORDER = (*SUITES, SYSTEMD_BOOT)
WORKERS = 2  # this machine's cores: two QEMUs, or a QEMU and an apt run
# A Debian boot takes 40-60 s here under TCG; a run holds up to two boots and an apt run,
# and in a cold run shares the two cores with the tiers and the other machine: 1800 s leaves
# room for that. (A cold run that once lost a run's second boot with 900 s was not this
# timeout: the unit tier's own runner had killed the session's QEMUs, see stop().)
RUN_TIMEOUT = 1800
# The test modules that read the machines' results (conftest puts their tests last)
MODULES = ("test_bootloader.py", "test_systemd_boot.py")
T = TypeVar("T")


@dataclass(frozen=True)
class Installed:
    """The disk right after `apt-get install` and the kernel's reinstall, before any boot."""
    log: str  # what apt printed
    kver: str
    boot_files: list[str]  # /boot's names
    mini_modules: set[str]  # the kernel modules in our mini-initramfs (GRUB's or the ESP's)
    grub_cfg: str  # "" on the systemd-boot machine
    entries: dict[str, str]  # the ESP's loader entries, file name -> text ({} with GRUB)


@dataclass
class MachineRun:
    """What each stage of one machine left; a stage not reached is None, and `error` says
    why (the traceback of the stage that raised)."""
    machine: str
    installed: Installed | None = None
    first: BootResult | None = None
    fallback: BootResult | None = None
    removed: BootResult | None = None
    error: str = ""

    def need(self, value: T | None, stage: str) -> T:
        """A stage's result; a test of a stage that never ran fails with the reason."""
        if value is None:
            pytest.fail(f"{self.machine}: {stage} did not run: "
                        f"{self.error or 'the session stopped first'}", pytrace=False)
        return value


def reports(run: BootResult, expected: int) -> list[dict[str, list[str]]]:
    """One report per boot that reached the report unit, in order: `expected` of them, or
    the test fails with the run's whole console (a boot that never reached its report)."""
    found = [parse_report(part) for part in run.console.split("REPORT END")[:-1]]
    assert len(found) == expected, f"{len(found)} reports, not {expected}: {run.describe()}"
    return found


def module_names(mini: bytes) -> set[str]:
    archive = initramfs.unpacked_archive(Ui("tests", quiet=True), mini)
    return {Path(e.name).name.split(".ko")[0] for e in cpio.read_all(archive)
            if ".ko" in e.name}


def kver_of(disk: Path) -> str:
    return edit_disk(disk, "ls $ROOT/lib/modules").split()[0]


def entries(disk: Path) -> dict[str, str]:
    """The ESP's loader entries: file name -> content."""
    out = edit_disk(disk, f"cd $ROOT{ESP}/loader/entries && for f in *.conf; do "
                          "echo \"=== $f\"; cat \"$f\"; done")
    return {name: body for name, body in re.findall(r"^=== (\S+)\n(.*?)(?=^=== |\Z)", out,
                                                    re.M | re.S)}


def _installed(machine: str, disk: Path, log: str) -> Installed:
    kver = kver_of(disk)
    files = edit_disk(disk, "ls $ROOT/boot").split()
    if machine != SYSTEMD_BOOT:
        mini = read_boot_file(disk, f"initramfs-{kver}.img")
        return Installed(log, kver, files, module_names(mini),
                         read_boot_file(disk, "grub/grub.cfg").decode(), {})
    found = entries(disk)
    # our entry's initrd on the ESP (the test checks the entry itself)
    ours = [re.findall(r"^initrd\s+(\S+)", body, re.M) for name, body in found.items()
            if "-initoverlayfs" in name]
    modules: set[str] = set()
    if len(ours) == 1 and len(ours[0]) == 1:
        encoded = edit_disk(disk, f"cat $ROOT{ESP}{ours[0][0]} | base64 -w0")
        modules = module_names(base64.b64decode(encoded))
    return Installed(log, kver, files, modules, "", found)


def _corrupt_image(disk: Path, kver: str) -> None:
    """A byte of the EROFS superblock (at 1024): dm-verity refuses its block, the mount
    fails."""
    (image,) = [n for n in edit_disk(disk, "ls $ROOT/boot").split() if pair.is_image_of(n, kver)]
    edit_disk(disk, f"printf '\\377' | dd of=$ROOT/boot/{image} bs=1 seek=1024 "
                    "conv=notrunc status=none")


class Stopped(Exception):
    """The session ended before this machine's next stage."""


class Machines:
    """The background runs: started once per session, for the machines its tests need."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._runs: dict[str, Future[MachineRun]] = {}
        self._stopping = threading.Event()
        self._work: Path | None = None
        self._deb: Path | None = None
        self._deb_lock = threading.Lock()

    def start(self, machines: Iterable[str]) -> None:
        """Once: later calls (and a call naming no machine) do nothing."""
        wanted = [m for m in ORDER if m in set(machines)]
        if self._pool is not None or not wanted:
            return
        self._work = Path(tempfile.mkdtemp(prefix="initoverlayfs-machines-", dir="/dev/shm"))
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="machine")
        for machine in wanted:
            self._runs[machine] = self._pool.submit(self._run, machine)

    def result(self, machine: str) -> MachineRun:
        """The machine's run, waited for (started here if the session started none)."""
        if self._pool is None:
            self.start([machine])
        if machine not in self._runs:
            pytest.fail(f"{machine} is not among the machines the session started "
                        f"({', '.join(self._runs)})", pytrace=False)
        return self._runs[machine].result()

    def wait(self) -> None:
        """Until every started machine has ended (the measured boots run alone)."""
        for run in self._runs.values():
            run.exception()

    def stop(self) -> None:
        """At the session's end: what has not started never does; a QEMU still running (a
        session cut short) is killed; the disks go."""
        if self._pool is None:
            return
        self._stopping.set()
        for run in self._runs.values():
            run.cancel()
        # only while one of this runner's own runs is under way: a QEMU of another runner
        # (the unit tier's) must live on
        if not all(run.done() for run in self._runs.values()):
            _kill_our_qemus()
        self._pool.shutdown(wait=True)
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)

    def _package(self) -> Path:
        """Our .deb, built once for all machines (by the first machine to need it)."""
        assert self._work is not None
        with self._deb_lock:
            if self._deb is None:
                out = subprocess.run([str(REPO / "scripts/package"), "--out",
                                      str(self._work / "dist")],
                                     capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    raise RuntimeError(f"scripts/package failed:\n{out.stdout}{out.stderr}")
                self._deb = Path(out.stdout.split()[0])
            return self._deb

    def _power_on(self, machine: str, disk: Path, work: Path) -> BootResult:
        if self._stopping.is_set():
            raise Stopped
        return _power_on(machine, disk, work)

    def _run(self, machine: str) -> MachineRun:
        assert self._work is not None
        run = MachineRun(machine)
        work = self._work / machine
        work.mkdir()
        try:
            disk, log = installed_disk(work, self._package(), machine)
            run.installed = _installed(machine, disk, log)
            run.first = self._power_on(machine, disk, work)
            _corrupt_image(disk, run.installed.kver)
            run.fallback = self._power_on(machine, disk, work)
            edit_disk(disk, f"echo 'apt-get remove -y initoverlayfs' > $ROOT{ACTION}")
            run.removed = self._power_on(machine, disk, work)
        except Stopped:
            pass  # need() says so
        except Exception:
            # the tests of the stages not reached fail with it
            run.error = traceback.format_exc()
        finally:
            shutil.rmtree(work, ignore_errors=True)  # 1-2 GB of RAM on the tmpfs
        return run


def _power_on(machine: str, disk: Path, work: Path) -> BootResult:
    """Boot the machine through its firmware until it powers off; a reboot starts it again,
    as on hardware. systemd-boot's machine boots through OVMF, each power-on with the empty
    variable store."""
    uefi = uefi_vars(work) if machine == SYSTEMD_BOOT else None
    spec = VmSpec(None, None, disk, memory_mb=1024, timeout=RUN_TIMEOUT, snapshot=False,
                  reboot=True, uefi_vars=uefi)
    return boot(spec)


def _kill_our_qemus() -> None:
    """SIGKILL this process's QEMU children: at the session's end only a background machine's
    can be left (a session cut short), and boot() then returns what its console showed."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            name = fields[0].split("(", 1)[1]
            parent = fields[1].split()[1]
        except (OSError, IndexError):
            continue
        if parent == me and name.startswith("qemu-system"):
            os.kill(int(stat.parent.name), signal.SIGKILL)


RUNNER = Machines()


def reads_a_machine(item: pytest.Item) -> bool:
    """The test checks what a background machine left (test_bootloader, test_systemd_boot)."""
    return item.nodeid.split("::", 1)[0].endswith(MODULES)


def machines_of(items: Iterable[pytest.Item]) -> set[str]:
    """The machines the collected tests need: test_bootloader's by their parameter."""
    needed: set[str] = set()
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module.endswith(MODULES[0]) and isinstance(item, pytest.Function):
            needed.add(str(item.callspec.params["machine_run"]))
        elif module.endswith(MODULES[1]):
            needed.add(SYSTEMD_BOOT)
    return needed
