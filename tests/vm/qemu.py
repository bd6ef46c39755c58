"""Booting a real kernel in QEMU and reading its serial console: no fixed sleeps, every boot
ends by itself (the guest powers off) or is killed at its timeout, and whatever the console
showed comes back either way, so a failure can show it."""

from __future__ import annotations

import functools
import os
import re
import shutil
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
# What the bootfs partition is called inside the guest on each, for the /dev path scenarios.
# -icount: while the guest computes, its clock runs on instructions executed (1 ns each), not
# on the host's time, so CPU work repeats to the millisecond; while it waits (the disk), the
# clock runs on the host's time (sleep=on: with sleep=off it jumps to the guest's next timer,
# which made a wait on the disk cost up to seconds). For VmSpec.devices.
ICOUNT = ("-icount", "shift=0,sleep=on")
DEVICE_NAMES = {"virtio-blk": "vda", "virtio-scsi": "sda", "nvme": "nvme0n1", "ahci": "sda"}


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


@dataclass(frozen=True)
class VmSpec:
    kernel: Path
    initrd: Path
    disk: Path | None  # None: no disk (a bootfs on the network)
    interface: str = "virtio-blk"
    append: str = ""
    memory_mb: int = 512
    timeout: float = 180.0
    devices: tuple[str, ...] = ()  # more QEMU arguments (a NIC and its netdev)
    cpu: str | None = None  # a TCG CPU model other than QEMU's default (ignored with KVM)

    def command(self) -> list[str]:
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise FileNotFoundError("qemu-system-x86_64 is missing: apt-get install "
                                    "qemu-system-x86 (scripts/setup does)")
        accel = (["-accel", "kvm", "-cpu", "host"] if kvm_works() else
                 ["-accel", "tcg", *(["-cpu", self.cpu] if self.cpu else [])])
        return [qemu, "-machine", "q35", *accel, "-m", str(self.memory_mb), "-smp", "1",
                "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                "-nodefaults", "-kernel", str(self.kernel), "-initrd", str(self.initrd),
                "-append", f"console=ttyS0 panic=-1 {self.append}".strip(),
                *self._disk(), *self.devices]

    def _disk(self) -> list[str]:
        if self.disk is None:
            return []
        return ["-drive", f"file={self.disk},format=raw,if=none,id=disk0,snapshot=on",
                *INTERFACES[self.interface]]


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


def boot(spec: VmSpec, interactions: Sequence[Interaction] = ()) -> BootResult:
    command = spec.command()
    started = time.monotonic()
    deadline = started + spec.timeout
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    console = Console(process)
    console.start()
    try:
        position = 0
        for pattern, reply in interactions:
            match = console.expect(pattern, deadline, position)
            if match is None:
                break
            position = match.end()
            console.send(reply)
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
