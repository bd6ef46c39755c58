"""Targeted trigger: replay `add` uevents for the storage subsystems only.

Devices that appeared before storage-init started listening announced themselves to nobody;
writing `add` to their sysfs `uevent` file makes the kernel send the event again, with its
MODALIAS, so the same event loop that handles hotplug also does coldplug (in both modes: the
mini-initramfs runs no udevd).

pyudev enumerates (through the syscall boundary, see Kernel.udev_devices), imported here by
`import_pyudev` with stand-ins for what it imports and storage-init never uses. If libudev
cannot be loaded at all, the same subsystems are listed from sysfs, so that a missing library
costs a warning, not the boot.
"""

from __future__ import annotations

import _collections_abc  # loaded with os anyway: the ABCs, without collections
import _functools  # type: ignore[import-not-found]  # partial, without functools
import errno
import sys

from . import TYPE_CHECKING, standins

if TYPE_CHECKING:
    from typing import Protocol

    from .kernelapi import KernelApi

    class _Log(Protocol):
        def warning(self, message: str) -> None: ...
        def debug(self, message: str) -> None: ...

    import types
    from collections.abc import Callable


LIBUDEV_SONAME = "libudev.so.1"


def _no_subprocess(*args: object, **kwargs: object) -> bytes:
    raise OSError(errno.ENOSYS, "storage-init runs no programs through pyudev")


def _no_timedelta(*args: object, **kwargs: object) -> object:
    raise OSError(errno.ENOSYS, "storage-init does not ask pyudev for device ages")


def _wraps(wrapped: Callable[..., object]) -> Callable[[Callable[..., object]], object]:
    """functools.wraps for pyudev's one decorator: the wrapper takes the wrapped function's
    name, qualified name, module and docstring, and __wrapped__."""
    def decorate(wrapper: Callable[..., object]) -> object:
        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
            if hasattr(wrapped, attribute):
                setattr(wrapper, attribute, getattr(wrapped, attribute))
        wrapper.__wrapped__ = wrapped  # type: ignore[attr-defined]
        return wrapper
    return decorate


class _NoThread:
    """pyudev.monitor subclasses threading.Thread for MonitorObserver, which storage-init
    never starts (it reads uevents from its own socket)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSYS, "storage-init starts no threads through pyudev")


def import_pyudev() -> types.ModuleType:
    """pyudev, imported with stand-ins for seven stdlib modules it imports but storage-init
    never uses through it (or, for re, uses later if ever).

    - ctypes.util: pyudev finds libudev with its find_library, which needs ldconfig or a
      compiler (an initramfs has neither), and importing it imports tempfile, shutil and
      random, which the frozen binary leaves out (a real boot showed pyudev failing to import
      over it);
    - subprocess and datetime: they were 135 of the 366 ms that pyudev cost a boot under QEMU
      TCG, for `udevadm --version` (monitor features) and device ages;
    - threading: for MonitorObserver, a background thread; over a third of what is left of
      pyudev's import (natively, -X importtime);
    - re, lazily: pyudev compiles regexes only inside functions storage-init does not call
      (device numbers from strings), and importing re with enum was 15 million instructions
      (callgrind, natively); the stand-in imports the real re if one of them ever runs,
      which in the frozen binary (without re since storage_init/cli.py) is an ImportError
      naming re, not a wrong answer;
    - collections and functools: pyudev subclasses collections.abc's ABCs, which live in
      _collections_abc (loaded with os), and uses functools.wraps once and partial (from the
      built-in _functools); the packages around them (namedtuple, OrderedDict, lru_cache...)
      were 2.6 of the 18.2 million instructions of pyudev's import and enumeration
      (callgrind, natively).

    (storage_init.standins says how stand-ins are put in place and taken out again.)
    """
    def importer() -> types.ModuleType:
        if not hasattr(sys.modules["collections"], "abc"):  # the real one, loaded before
            import collections.abc  # noqa: F401  (pyudev uses it without importing it)
        import pyudev
        module: types.ModuleType = pyudev
        return module

    return standins.import_with({
        # the soname, which the dynamic loader resolves by itself
        "ctypes.util": standins.module("ctypes.util", find_library=(
            lambda name: LIBUDEV_SONAME if name == "udev" else None)),
        "subprocess": standins.module("subprocess", check_output=_no_subprocess),
        "datetime": standins.module("datetime", timedelta=_no_timedelta),
        "threading": standins.module("threading", Thread=_NoThread),
        "re": standins.lazy("re"),
        "collections": standins.module("collections", abc=_collections_abc),
        "functools": standins.module("functools", wraps=_wraps, partial=_functools.partial),
    }, importer)


def _sysfs_devices(kernel: KernelApi, subsystems: tuple[str, ...], sysfs: str) -> list[str]:
    paths: list[str] = []
    for subsystem in subsystems:
        for base in (f"{sysfs}/bus/{subsystem}/devices", f"{sysfs}/class/{subsystem}"):
            if kernel.exists(base):
                paths += [kernel.realpath(f"{base}/{n}") for n in kernel.listdir(base)]
        if subsystem == "module" and kernel.exists(f"{sysfs}/module"):
            paths += [f"{sysfs}/module/{n}" for n in kernel.listdir(f"{sysfs}/module")]
    return list(dict.fromkeys(paths))


def storage_devices(kernel: KernelApi, log: _Log, subsystems: tuple[str, ...],
                    sysfs: str = "/sys") -> list[str]:
    """sysfs paths of the devices in these subsystems."""
    try:
        return kernel.udev_devices(subsystems)
    except OSError as exc:
        log.warning(f"pyudev could not enumerate devices ({exc}); listing them from {sysfs}")
        return _sysfs_devices(kernel, subsystems, sysfs)


def trigger(kernel: KernelApi, log: _Log, subsystems: tuple[str, ...],
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
