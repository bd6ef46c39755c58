"""Find the bootfs: probe block devices as they appear, driven by kernel uevents, bounded.

Block devices are found in /sys/block (disks, and their partitions as subdirectories) and
probed through their devtmpfs nodes: filesystem UUID/LABEL from the superblock, PARTUUID and
PARTLABEL from the disk's partition table (no udevd runs in either mode, so no
/dev/disk/by-* links exist). Uevents do two jobs while waiting: a MODALIAS means a driver to
load, a block add/change means something new to probe.

Drivers are loaded one at a time, only while no uevent is queued, deepest device first: every
block device the last load made is probed before the next driver is loaded, and the chain
already started (a virtio controller's disk, a SATA port's disk) is finished before another
controller is. Once the bootfs is there, the drivers still queued are left to init's udev. On
QEMU's q35 machine with its disk on virtio, a generic mini-initramfs otherwise loaded the
SATA controller's chain (scsi_mod, libata, libahci, ahci) and waited for its six empty ports
before the disk's own driver: 718 ms of a real Debian boot, by instructions.
"""

from __future__ import annotations

import errno
import os

from . import TYPE_CHECKING
from .devspec import DeviceSpec
from .errors import BootError
from .modules import Loader
from .probe import Filesystem, Partition, probe_filesystem, probe_partitions
from .record import record
from .uevent import parse_uevent

BOOTFS_HINT = ("bootfs in /etc/initoverlayfs.conf or rd.initoverlayfs.bootfs=, "
               "rd.initoverlayfs.timeout=, and that the disk's driver is in the initramfs")


@record(frozen=True)
class BlockDevice:
    name: str
    node: str
    fs: Filesystem | None
    partition: Partition | None

    def describe(self) -> str:
        ids = []
        if self.fs:
            ids.append(self.fs.fstype)
            ids += [f"{k}={v}" for k, v in (("UUID", self.fs.uuid), ("LABEL", self.fs.label)) if v]
        else:
            ids.append("no filesystem")
        if self.partition:
            ids.append(f"PARTUUID={self.partition.partuuid}")
            if self.partition.partlabel:
                ids.append(f"PARTLABEL={self.partition.partlabel}")
        return f"{self.name} ({' '.join(ids)})"

    def matches(self, spec: DeviceSpec) -> bool:
        if spec.kind == "PATH":
            return spec.value == self.node
        fs, part = self.fs, self.partition
        return spec.matches(fs.uuid if fs else None, fs.label if fs else None,
                            part.partuuid if part else None, part.partlabel if part else None)


if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable
    from typing import Protocol

    from .kernelapi import KernelApi

    class _Log(Protocol):
        def info(self, message: str) -> None: ...
        def warning(self, message: str) -> None: ...
        def debug(self, message: str) -> None: ...


class Finder:
    def __init__(self, kernel: KernelApi, log: _Log, loader: Loader, spec: DeviceSpec,
                 sysfs: str = "/sys", dev: str = "/dev", load_drivers: bool = True) -> None:
        self.kernel, self.log, self.loader, self.spec = kernel, log, loader, spec
        self.sysfs, self.dev = sysfs, dev
        self.load_drivers = load_drivers  # for each add uevent's MODALIAS (not for NBD)
        self.seen: dict[str, BlockDevice] = {}
        self._tables: dict[str, dict[int, Partition]] = {}
        # (-depth of the device in sysfs, arrival, MODALIAS) of the drivers still to load
        self._drivers: list[tuple[int, int, str]] = []
        self._queued: set[str] = set()

    # --- probing --------------------------------------------------------------------------

    def _read_text(self, path: str) -> str:
        try:
            return self.kernel.read_file(path).decode(errors="replace").strip()
        except OSError:
            return ""

    def _with_device(self, name: str, use: Callable[[Callable[[int, int], bytes]], object]
                     ) -> object:
        try:
            fd = self.kernel.open(f"{self.dev}/{name}", os.O_RDONLY)
        except OSError as exc:  # no medium, node not made yet, ...: nothing to see there
            self.log.debug(f"cannot open {self.dev}/{name}: {exc.strerror}")
            return None
        try:
            return use(lambda offset, length: self.kernel.pread(fd, offset, length))
        except OSError as exc:
            self.log.debug(f"cannot read {self.dev}/{name}: {exc.strerror}")
            return None
        finally:
            self.kernel.close(fd)

    def _partition(self, disk: str, name: str) -> Partition | None:
        number = self._read_text(f"{self.sysfs}/block/{disk}/{name}/partition")
        if not number.isdigit():
            return None
        if disk not in self._tables:
            sector = self._read_text(f"{self.sysfs}/block/{disk}/queue/logical_block_size")
            size = int(sector) if sector.isdigit() else 512
            table = self._with_device(disk, lambda read: probe_partitions(read, size))
            self._tables[disk] = table if isinstance(table, dict) else {}
        return self._tables[disk].get(int(number))

    def probe(self, disk: str, name: str) -> BlockDevice:
        fs = self._with_device(name, probe_filesystem)
        part = self._partition(disk, name) if name != disk else None
        device = BlockDevice(name, f"{self.dev}/{name}",
                             fs if isinstance(fs, Filesystem) else None, part)
        self.log.debug(f"probed {device.describe()}")
        return device

    def block_devices(self) -> list[tuple[str, str]]:
        """(disk, name) of every block device with media, disks before their partitions."""
        found = []
        try:
            disks = self.kernel.listdir(f"{self.sysfs}/block")
        except OSError:
            return []
        for disk in disks:
            if self._read_text(f"{self.sysfs}/block/{disk}/size") in ("", "0"):
                continue  # unbound loop devices, empty drives
            found.append((disk, disk))
            try:
                entries = self.kernel.listdir(f"{self.sysfs}/block/{disk}")
            except OSError:
                continue
            found += [(disk, e) for e in entries
                      if e.startswith(disk) and self.kernel.exists(
                          f"{self.sysfs}/block/{disk}/{e}/partition")]
        return found

    def scan(self) -> BlockDevice | None:
        # A /dev path names the device directly.
        link = self.spec.value if self.spec.kind == "PATH" else None
        target = None
        if link and self.kernel.exists(link):
            target = self.kernel.realpath(link).rsplit("/", 1)[-1]
        for disk, name in self.block_devices():
            if target is not None and name != target:
                continue
            if target is not None:
                self.seen.pop(name, None)
            if name not in self.seen:
                self.seen[name] = self.probe(disk, name)
            if target is not None or self.seen[name].matches(self.spec):
                return self.seen[name]
        return None

    def forget(self, name: str) -> None:
        """A change event: probe this device (and its partition table) again."""
        self.seen.pop(name, None)
        self._tables.pop(name, None)

    # --- waiting --------------------------------------------------------------------------

    def try_hint(self, hint: str) -> BlockDevice | None:
        name = hint.removeprefix(f"{self.dev}/")
        disk = next((d for d, n in self.block_devices() if n == name), None)
        if disk is None:
            self.log.info(f"bootfs_hint {hint} is not there (yet); searching for {self.spec}")
            return None
        device = self.probe(disk, name)
        self.seen[name] = device
        if device.matches(self.spec):
            return device
        self.log.warning(f"bootfs_hint {hint} is {device.describe()}, not {self.spec}; "
                         "searching all block devices")
        return None

    def wait(self, sock: _socket.socket, timeout: float, hint: str | None,
             retrigger: Callable[[], None]) -> BlockDevice:
        started = self.kernel.monotonic()
        deadline = started + timeout
        found = self.try_hint(hint) if hint else None
        while found is None:
            found = self.scan()
            if found:
                break
            while True:
                remaining = deadline - self.kernel.monotonic()
                if remaining <= 0:
                    raise self._timeout(timeout)
                try:
                    # with drivers to load, only what is queued already: the next load waits
                    message = self.kernel.uevent_recv(sock, 0.0 if self._drivers else remaining)
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.log.warning("uevent buffer overflowed; rescanning devices")
                    self.seen.clear()
                    self._tables.clear()
                    retrigger()
                    break
                if message is None:
                    if self._drivers:
                        self.loader.load_modalias(self._next_driver())
                        continue
                    break  # one last scan, then the deadline check above ends it
                if self._handle(parse_uevent(message)):
                    break
        took = self.kernel.monotonic() - started
        self.log.info(f"found bootfs {self.spec}: {found.describe()} after {took:.3f} s")
        if self._drivers:
            self.log.debug(f"drivers not loaded, for init's udev: {len(self._drivers)} "
                           "devices' modaliases")
        return found

    def _handle(self, event: dict[str, str]) -> bool:
        """Act on one uevent; True when a block device appeared or changed."""
        action = event.get("ACTION")
        if action not in ("add", "change", "bind"):
            return False
        modalias = event.get("MODALIAS")
        if self.load_drivers and action == "add" and modalias and modalias not in self._queued:
            self._queued.add(modalias)
            depth = event.get("DEVPATH", "").count("/")
            self._drivers.append((-depth, len(self._queued), modalias))
        if event.get("SUBSYSTEM") == "block" and action in ("add", "change"):
            self.forget(event.get("DEVNAME", "").rsplit("/", 1)[-1])
            return True
        return False

    def _next_driver(self) -> str:
        """The deepest device's, the earliest among equals (a handful queue at a time)."""
        chosen = min(self._drivers)
        self._drivers.remove(chosen)
        return chosen[2]

    def _timeout(self, timeout: float) -> BootError:
        seen = ", ".join(d.describe() for d in self.seen.values()) or "none"
        drivers = " ".join(self.loader.loaded) or "none"
        failed = "".join(f"; module {m} failed: {why}" for m, why in self.loader.failed.items())
        return BootError(
            f"find bootfs {self.spec} within {timeout:g} s (block devices seen: {seen}; "
            f"drivers loaded: {drivers}{failed})",
            BOOTFS_HINT,
            OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)),
        )
