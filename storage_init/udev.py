"""Targeted trigger: replay `add` uevents for the storage subsystems only.

Devices that appeared before storage-init started listening announced themselves to nobody;
writing `add` to their sysfs `uevent` file makes the kernel send the event again, with its
MODALIAS, so the same event loop that handles hotplug also does coldplug. In --systemd mode
udevd hears the same events and makes the /dev/disk/by-* links.

pyudev enumerates (through the syscall boundary, see Kernel.udev_devices). If libudev cannot
be loaded at all, the same subsystems are listed from sysfs, so that a missing library costs a
warning, not the boot.
"""

from __future__ import annotations

from . import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Protocol

    class _Kernel(Protocol):
        def udev_devices(self, subsystems: tuple[str, ...]) -> list[str]: ...
        def listdir(self, path: str) -> list[str]: ...
        def exists(self, path: str) -> bool: ...
        def realpath(self, path: str) -> str: ...
        def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None: ...

    class _Log(Protocol):
        def warning(self, message: str) -> None: ...
        def debug(self, message: str) -> None: ...


def _sysfs_devices(kernel: _Kernel, subsystems: tuple[str, ...], sysfs: str) -> list[str]:
    paths: list[str] = []
    for subsystem in subsystems:
        for base in (f"{sysfs}/bus/{subsystem}/devices", f"{sysfs}/class/{subsystem}"):
            if kernel.exists(base):
                paths += [kernel.realpath(f"{base}/{n}") for n in kernel.listdir(base)]
        if subsystem == "module" and kernel.exists(f"{sysfs}/module"):
            paths += [f"{sysfs}/module/{n}" for n in kernel.listdir(f"{sysfs}/module")]
    return list(dict.fromkeys(paths))


def storage_devices(kernel: _Kernel, log: _Log, subsystems: tuple[str, ...],
                    sysfs: str = "/sys") -> list[str]:
    """sysfs paths of the devices in these subsystems."""
    try:
        return kernel.udev_devices(subsystems)
    except OSError as exc:
        log.warning(f"pyudev could not enumerate devices ({exc}); listing them from {sysfs}")
        return _sysfs_devices(kernel, subsystems, sysfs)


def trigger(kernel: _Kernel, log: _Log, subsystems: tuple[str, ...],
            sysfs: str = "/sys") -> int:
    """Ask the kernel to resend `add` for each device; returns how many were triggered."""
    count = 0
    for path in storage_devices(kernel, log, subsystems, sysfs):
        try:
            kernel.write_file(f"{path}/uevent", b"add")
            count += 1
        except OSError as exc:  # devices without a uevent file, or going away right now
            log.debug(f"cannot trigger {path}: {exc.strerror}")
    return count
