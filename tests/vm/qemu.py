"""Booting a real kernel in QEMU and reading its serial console: no fixed sleeps, every boot
ends by itself (the guest powers off) or is killed at its timeout, and whatever the console
showed comes back either way, so a failure can show it."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# How each storage family is attached. q35's built-in AHCI controller has the ide.N buses.
INTERFACES = {
    "virtio-blk": ["-device", "virtio-blk-pci,drive=disk0"],
    "virtio-scsi": ["-device", "virtio-scsi-pci,id=scsi0",
                    "-device", "scsi-hd,bus=scsi0.0,drive=disk0"],
    "nvme": ["-device", "nvme,serial=initoverlayfs0,drive=disk0"],
    "ahci": ["-device", "ide-hd,bus=ide.0,drive=disk0"],
}
# On arm64 (QEMU's virt machine, PCIe): virtio, an SD card on a PCI SD host controller, a
# USB stick behind xHCI: the families of the seed's Raspberry Pi class.
INTERFACES_ARM64 = {
    "virtio-blk": ["-device", "virtio-blk-pci,drive=disk0"],
    "sd": ["-device", "sdhci-pci", "-device", "sd-card,drive=disk0"],
    "usb-storage": ["-device", "qemu-xhci", "-device", "usb-storage,drive=disk0"],
    # virtio on MMIO: a device-tree platform device, as a board's SoC controllers are
    "virtio-mmio": ["-device", "virtio-blk-device,drive=disk0"],
}
# What the bootfs partition is called inside the guest on each, for the /dev path scenarios.
# -icount: while the guest computes, its clock runs on instructions executed (1 ns each), not
# on the host's time, so CPU work repeats to the millisecond; while it waits (the disk), the
# clock runs on the host's time (sleep=on: with sleep=off it jumps to the guest's next timer,
# which made a wait on the disk cost up to seconds). For VmSpec.devices.
ICOUNT = ("-icount", "shift=0,sleep=on")
DEVICE_NAMES = {"virtio-blk": "vda", "virtio-scsi": "sda", "nvme": "nvme0n1", "ahci": "sda",
                "sd": "mmcblk0", "usb-storage": "sda", "virtio-mmio": "vda"}
ARM64_CPU = "cortex-a72"  # the Raspberry Pi 4's core


def partition(interface: str, number: int) -> str:
    """The kernel's name of partition `number` of the disk on `interface`."""
    device = DEVICE_NAMES[interface]
    return f"{device}p{number}" if device[-1].isdigit() else f"{device}{number}"


@functools.cache
def kvm_works() -> bool:
    """KVM only when it really works: /dev/kvm can open yet QEMU abort on setting up the vCPU
    (seen here: "failed to set MSR 0x10a"), so ask QEMU itself, with the CPU stopped."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None or not os.path.exists("/dev/kvm"):
        return False
    probe = subprocess.run([qemu, "-machine", "q35", "-accel", "kvm", "-cpu", "host",
                            "-display", "none", "-nodefaults", "-S", "-monitor", "stdio"],
                           input=b"quit\n", capture_output=True, timeout=30, check=False)
    return probe.returncode == 0 and b"error" not in probe.stdout + probe.stderr


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")  # Debian's ovmf package
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def uefi_vars(directory: Path) -> Path:
    """A fresh, writable copy of OVMF's empty variable store, for VmSpec.uefi_vars."""
    if not OVMF_CODE.exists():
        raise FileNotFoundError(f"{OVMF_CODE} is missing: apt-get install ovmf "
                                "(scripts/setup does)")
    return Path(shutil.copy(OVMF_VARS, directory / "OVMF_VARS.fd"))


@dataclass(frozen=True)
class VmSpec:
    kernel: Path | None  # None: the firmware boots the disk (its bootloader), as a machine does
    initrd: Path | None
    disk: Path | None  # None: no disk (a bootfs on the network)
    interface: str = "virtio-blk"
    append: str = ""
    memory_mb: int = 512
    timeout: float = 180.0
    devices: tuple[str, ...] = ()  # more QEMU arguments (a NIC and its netdev)
    cpu: str | None = None  # a TCG CPU model other than QEMU's default (ignored with KVM)
    blkdebug: Path | None = None  # a blkdebug config: the disk fails the reads it names
    # the disk is hot-plugged (virtio-scsi, through QMP) this many seconds after the console
    # shows LATE_DISK_AFTER, instead of being there at power-on
    late_disk: float | None = None
    qmp: Path | None = None  # the QMP socket, for late_disk
    snapshot: bool = True  # False: the guest's writes reach the disk file (a power-cut test)
    reboot: bool = False  # True: a reboot restarts the machine (only a power-off ends QEMU)
    # UEFI firmware (OVMF) instead of SeaBIOS: a writable copy of OVMF's variable store, which
    # the boot may change (make one with uefi_vars())
    uefi_vars: Path | None = None
    arch: str = "amd64"  # or "arm64": QEMU's virt machine with a Cortex-A72, always TCG
    smp: int = 1  # virtual CPUs

    def command(self) -> list[str]:
        qemu, machine, console = self._machine()
        direct = [] if self.kernel is None else [
            "-kernel", str(self.kernel), *(["-initrd", str(self.initrd)] if self.initrd else []),
            "-append", f"console={console} panic=-1 {self.append}".strip()]
        firmware = [] if self.uefi_vars is None else [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.uefi_vars}"]
        return [qemu, *machine, "-m", str(self.memory_mb), "-smp", str(self.smp), *firmware,
                "-display", "none", "-serial", "stdio", "-monitor", "none",
                *([] if self.reboot else ["-no-reboot"]), "-nodefaults", *direct,
                *self._disk(), *self.devices]

    def _machine(self) -> tuple[str, list[str], str]:
        """QEMU's binary, its machine, accelerator and CPU, and the serial console's name."""
        if self.arch == "arm64":  # always TCG; booted by -kernel (no firmware here)
            assert self.kernel is not None and self.uefi_vars is None, "arm64: -kernel only"
            return (_binary("qemu-system-aarch64", "qemu-system-arm"),
                    ["-machine", "virt", "-accel", "tcg", "-cpu", self.cpu or ARM64_CPU],
                    "ttyAMA0")
        accel = (["-accel", "kvm", "-cpu", "host"] if kvm_works() else
                 ["-accel", "tcg", *(["-cpu", self.cpu] if self.cpu else [])])
        return (_binary("qemu-system-x86_64", "qemu-system-x86"),
                ["-machine", "q35", *accel], "ttyS0")

    def _disk(self) -> list[str]:
        if self.disk is None:
            return []
        file = f"blkdebug:{self.blkdebug}:{self.disk}" if self.blkdebug else str(self.disk)
        drive = ["-drive", f"file={file},format=raw,if=none,id=disk0,"
                           f"snapshot={'on' if self.snapshot else 'off'}"]
        if self.late_disk is not None:
            assert self.qmp is not None, "a late disk is added through QMP"
            return [*drive, "-device", "virtio-scsi-pci,id=scsi0",
                    "-qmp", f"unix:{self.qmp},server=on,wait=off"]
        table = INTERFACES_ARM64 if self.arch == "arm64" else INTERFACES
        return [*drive, *table[self.interface]]


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is missing: apt-get install {package} "
                                "(scripts/setup does)")
    return found


@dataclass
class Console:
    """The serial console as it arrives; `expect` waits for a pattern, bounded."""

    process: subprocess.Popen[bytes]
    text: str = ""
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _done: bool = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while chunk := os.read(fd, 4096):
            with self._changed:
                self.text += chunk.decode(errors="replace").replace("\r\n", "\n")
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def expect(self, pattern: str, deadline: float, start: int = 0) -> re.Match[str] | None:
        rule = re.compile(pattern, re.M)
        with self._changed:
            while True:
                match = rule.search(self.text, start)
                if match or self._done:
                    return match
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def wait_closed(self, deadline: float) -> None:
        with self._changed:
            while not self._done and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())


@dataclass(frozen=True)
class BootResult:
    console: str
    returncode: int | None  # None: killed at the timeout
    seconds: float
    command: Sequence[str]

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def describe(self) -> str:
        state = "killed at its timeout" if self.timed_out else f"exit {self.returncode}"
        return (f"QEMU {state} after {self.seconds:.1f} s\n$ {' '.join(self.command)}\n"
                f"----- console -----\n{self.console}\n----- end of console -----")


Interaction = tuple[str, str]  # (pattern to wait for, text to send once it appears)
LATE_DISK_AFTER = r"storage-init: triggered \d+ devices"
LATE_DISK = {"driver": "scsi-hd", "bus": "scsi0.0", "drive": "disk0", "id": "late0"}


def qmp_command(path: Path, execute: str, arguments: dict[str, str]) -> dict[str, object]:
    """One QMP command on a fresh connection (greeting, capabilities, the command)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        stream = sock.makefile("rw")
        json.loads(stream.readline())  # the greeting
        for message in ({"execute": "qmp_capabilities"},
                        {"execute": execute, "arguments": arguments}):
            stream.write(json.dumps(message) + "\n")
            stream.flush()
            reply: dict[str, object] = json.loads(stream.readline())
            while "event" in reply:
                reply = json.loads(stream.readline())
            if "error" in reply:
                raise RuntimeError(f"QMP {message['execute']}: {reply['error']}")
        return reply


def _plug_late(spec: VmSpec, console: Console, deadline: float) -> None:
    if console.expect(LATE_DISK_AFTER, deadline) is None or spec.late_disk is None:
        return
    time.sleep(spec.late_disk)
    assert spec.qmp is not None
    qmp_command(spec.qmp, "device_add", LATE_DISK)


def boot(spec: VmSpec, interactions: Sequence[Interaction] = (),
         cut_power: tuple[str, float] | None = None) -> BootResult:
    """`cut_power`: (pattern, seconds): that long after the console shows the pattern,
    QEMU is killed (SIGKILL), as a power cut: what the guest had not written to its disk is
    lost, what it had written stays (QEMU's writes are in the host's page cache)."""
    command = spec.command()
    started = time.monotonic()
    deadline = started + spec.timeout
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    console = Console(process)
    console.start()
    if spec.late_disk is not None:
        threading.Thread(target=_plug_late, args=(spec, console, deadline), daemon=True).start()
    try:
        position = 0
        for pattern, reply in interactions:
            match = console.expect(pattern, deadline, position)
            if match is None:
                break
            position = match.end()
            console.send(reply)
        if cut_power is not None and console.expect(cut_power[0], deadline):
            time.sleep(cut_power[1])
            process.kill()
        try:
            returncode: int | None = process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            returncode = None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        console.wait_closed(time.monotonic() + 5)
    return BootResult(console.text, returncode, time.monotonic() - started, command)
