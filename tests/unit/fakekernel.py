"""A recording fake of storage_init.kernel.Kernel: an in-memory machine for the unit tier.

It keeps files, sysfs, block devices and mounts in dicts, advances a virtual clock while
storage-init waits for uevents, and records every call that changes the system in `calls` so
tests can assert the exact syscall sequence. Calls that never return on a real machine
(a successful execve, reboot, pause) raise sentinel exceptions derived from BaseException,
so that storage-init's own `except Exception` cannot swallow them.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from storage_init import dm, loop
from storage_init import kernel as real
from storage_init.dm import DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_TABLE_LOAD
from storage_init.kernel import IOCTL_NAMES
from storage_init.loop import LOOP_CONFIGURE, LOOP_CTL_GET_FREE, LOOP_SET_FD

assert loop.LOOP_CLR_FD in IOCTL_NAMES  # named by loop.py and dm.py, as for the real trace
LOOP_MAJOR, DM_MAJOR = 7, 254


class Executed(BaseException):
    def __init__(self, path: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        super().__init__(path)
        self.path, self.argv, self.env = path, list(argv), dict(env)


class Rebooted(BaseException):
    def __init__(self, how: int) -> None:
        super().__init__(hex(how))
        self.how = how


class Paused(BaseException):
    pass


def oserror(code: int, path: str | None = None) -> OSError:
    return OSError(code, os.strerror(code), path)


@dataclass
class Event:
    at: float  # virtual seconds after the fake machine started
    fields: dict[str, str]
    then: Callable[[FakeKernel], None] | None = None  # what appears with the event

    def encode(self) -> bytes:
        head = f"{self.fields.get('ACTION', 'add')}@{self.fields.get('DEVPATH', '/devices/x')}"
        return b"\0".join([head.encode()] + [f"{k}={v}".encode() for k, v in self.fields.items()])


class FakeSocket:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeKernel:
    files: dict[str, bytes] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)  # S_IFMT of a file when not S_IFREG
    dirs: set[str] = field(default_factory=lambda: {"/"})
    links: dict[str, str] = field(default_factory=dict)
    executables: set[str] = field(default_factory=lambda: {"/init"})
    # contents that appear under a mount target when this source is mounted
    filesystems: dict[str, dict[str, bytes]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    # module file name -> uevents its load makes (the devices its probe creates), queued then
    made_by_module: dict[str, list[Event]] = field(default_factory=dict)
    udev_paths: list[str] = field(default_factory=list)
    udev_error: OSError | None = None
    free_loops: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    # errors to raise, by call key, e.g. ("mount", "/boot") or ("ioctl", "LOOP_CONFIGURE")
    errors: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    root_magic: int = real.RAMFS_MAGIC
    pid: int = 1
    release: str = "6.1.0-test"
    machine: str = "x86_64"
    now: float = 0.0
    module_load_s: float = 0.0  # how far each finit_module moves the clock
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    mounted: list[tuple[str, str]] = field(default_factory=list)  # (source, target)
    written: dict[str, list[bytes]] = field(default_factory=dict)
    module_params: dict[str, str] = field(default_factory=dict)  # module path -> finit params
    tracer: Callable[[str], None] | None = None
    # device-mapper: name -> [minor, loaded table (target, sectors, params) or None, live one]
    dm_devices: dict[str, list[Any]] = field(default_factory=dict)
    _fds: dict[int, str] = field(default_factory=dict)
    _next_fd: int = 10

    # --- helpers for tests ----------------------------------------------------------------

    def add_file(self, path: str, data: bytes = b"") -> None:
        self.files[path] = data
        parent = os.path.dirname(path)
        while parent not in self.dirs:
            self.dirs.add(parent)
            parent = os.path.dirname(parent)

    def _raise_if_planned(self, call: str, key: str) -> None:
        planned = self.errors.get((call, key))
        if planned:
            code = planned.pop(0)
            if code:
                raise oserror(code, key)

    def recorded(self, *kinds: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if not kinds or c[0] in kinds]

    # --- mounts ---------------------------------------------------------------------------

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int,
              data: str | None) -> None:
        self.calls.append(("mount", source, target, fstype, real.flag_names(flags), data))
        self._raise_if_planned("mount", target)
        if flags & real.MS_MOVE:
            assert source is not None
            self.mounted = [(s, target if t == source else t) for s, t in self.mounted]
            return
        if flags & real.MS_PRIVATE:
            return
        if target not in self.dirs:
            raise oserror(errno.ENOENT, target)
        self.mounted.append((source or "none", target))
        for rel, data_ in self.filesystems.get(source or "", {}).items():
            self.add_file(target + rel, data_)

    def umount(self, target: str, flags: int = 0) -> None:
        self.calls.append(("umount", target, flags))
        self.mounted = [(s, t) for s, t in self.mounted if t != target]

    def chroot(self, path: str) -> None:
        self.calls.append(("chroot", path))

    def chdir(self, path: str) -> None:
        self.calls.append(("chdir", path))

    def statfs_type(self, path: str) -> int:
        return self.root_magic

    stdio_missing: bool = False

    def ensure_stdio(self, console: str) -> bool:
        if not self.stdio_missing:
            return False
        self._raise_if_planned("open", console)
        self.calls.append(("ensure_stdio", console))
        return True

    def device_of(self, path: str) -> int:
        return 1 if path == "/" else 2

    # --- files ----------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self.calls.append(("mkdir", path))
        self._raise_if_planned("mkdir", path)
        self.dirs.add(path)

    def exists(self, path: str) -> bool:
        return path in self.files or path in self.dirs or path in self.links

    def listdir(self, path: str) -> list[str]:
        if path not in self.dirs:
            raise oserror(errno.ENOENT, path)
        prefix = path.rstrip("/") + "/"
        names = {p[len(prefix):].split("/", 1)[0]
                 for p in (*self.files, *self.dirs, *self.links)
                 if p.startswith(prefix) and p != prefix}
        return sorted(names)

    def realpath(self, path: str) -> str:
        target = self.links.get(path, path)
        return os.path.normpath(os.path.join(os.path.dirname(path), target))

    def read_file(self, path: str) -> bytes:
        if path == "/proc/self/mountinfo":
            lines = [f"{i} 1 0:{i} / {t} rw - fs {s} rw"
                     for i, (s, t) in enumerate(self.mounted, start=20)]
            return "\n".join(lines).encode()
        if path not in self.files:
            raise oserror(errno.ENOENT, path)
        return self.files[path]

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.calls.append(("write", path, data))
        self._raise_if_planned("write", path)
        self.written.setdefault(path, []).append(data)

    def copy_file(self, source: str, target: str, mode: int) -> None:
        self.calls.append(("copy", source, target, mode))
        self._raise_if_planned("copy", target)
        if source not in self.files:
            raise oserror(errno.ENOENT, source)
        self.files[target] = self.files[source]

    def open(self, path: str, flags: int) -> int:
        self._raise_if_planned("open", path)
        if not self.exists(path):
            raise oserror(errno.ENOENT, path)
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = path
        if path.startswith("/dev/loop") or not path.startswith(("/dev/", "/sys/")):
            self.calls.append(("open", path))
        return fd

    def close(self, fd: int) -> None:
        path = self._fds.pop(fd)
        if ((path.startswith("/dev/loop") and path != "/dev/loop-control")
                or path.endswith("/mapper/control")):
            # With autoclear, this close detaches an unmounted device: its place matters.
            self.calls.append(("close", path))

    def pread(self, fd: int, offset: int, length: int) -> bytes:
        self._raise_if_planned("pread", self._fds[fd])
        return self.files[self._fds[fd]][offset:offset + length]

    def stat(self, path: str) -> os.stat_result:
        if path in self.dirs:
            return os.stat_result((stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))
        if path not in self.files:
            raise oserror(errno.ENOENT, path)
        rdev, kind = 0, self.kinds.get(path, stat.S_IFREG)
        if path.startswith("/dev/loop") and path[9:].isdigit():
            rdev, kind = os.makedev(LOOP_MAJOR, int(path[9:])), stat.S_IFBLK
        elif path.startswith("/dev/dm-"):
            rdev, kind = os.makedev(DM_MAJOR, int(path[8:])), stat.S_IFBLK
        return os.stat_result((kind | 0o600, 0, 0, 1, 0, 0, len(self.files[path]), 0, 0, 0),
                              {"st_rdev": rdev})

    def write_fd(self, fd: int, data: bytes) -> None:
        self.written.setdefault(self._fds.get(fd, f"fd{fd}"), []).append(data)

    def ioctl(self, fd: int, request: int, arg: int | bytes) -> int | bytes:
        name = IOCTL_NAMES.get(request, hex(request))
        self.calls.append(("ioctl", self._fds[fd], name))
        self._raise_if_planned("ioctl", name)
        if request == LOOP_CTL_GET_FREE:
            number = self.free_loops.pop(0)
            self.add_file(f"/dev/loop{number}")
            return number
        if request in (LOOP_CONFIGURE, LOOP_SET_FD):  # the device now reads as the file
            backing = arg if isinstance(arg, int) else int.from_bytes(arg[:4], "little")
            self.files[self._fds[fd]] = self.files[self._fds[backing]]
        if isinstance(arg, bytes) and request in (DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND,
                                                  DM_TABLE_LOAD):
            return self._dm(request, arg)
        return 0

    def _dm(self, request: int, arg: bytes) -> bytes:
        fields = list(dm.HEADER.unpack_from(arg))
        name = fields[11].rstrip(b"\0").decode()
        if request == DM_DEV_CREATE:
            if name in self.dm_devices:
                raise oserror(errno.EBUSY, name)
            minor = len(self.dm_devices)
            self.dm_devices[name] = [minor, None, None]
            fields[10] = os.makedev(DM_MAJOR, minor)
            return dm.HEADER.pack(*fields) + arg[dm.HEADER.size:]
        device = self.dm_devices.get(name)
        if device is None:
            raise oserror(errno.ENXIO, name)
        if request == DM_TABLE_LOAD:
            assert fields[5] == 1 and fields[4] == dm.HEADER.size  # one target, after the header
            start, sectors, _, _, target = dm.TARGET.unpack_from(arg, dm.HEADER.size)
            params = arg[dm.HEADER.size + dm.TARGET.size:].split(b"\0")[0].decode()
            assert start == 0
            device[1] = (target.rstrip(b"\0").decode(), sectors, params)
            self.calls.append(("dm-table", name, *device[1]))
        elif request == DM_DEV_SUSPEND and device[1] is not None:
            device[2], device[1] = device[1], None
            _, sectors, params = device[2]
            major, minor = (int(n) for n in params.split()[1].split(":"))
            data = self.files[f"/dev/loop{minor}"] if major == LOOP_MAJOR else b""
            self.add_file(f"/dev/dm-{device[0]}", data[:sectors * 512])
        elif request == DM_DEV_REMOVE and fields[7] & dm.DM_DEFERRED_REMOVE:
            self.calls.append(("dm-remove", name, "deferred"))  # mounted: kept till unmounted
        elif request == DM_DEV_REMOVE:
            del self.dm_devices[name]
            self.files.pop(f"/dev/dm-{device[0]}", None)
        return arg

    def remove_tree_contents(self, dir_fd: int, device: int) -> int:
        self.calls.append(("remove_tree_contents", device))
        return 0

    # --- modules --------------------------------------------------------------------------

    def finit_module(self, fd: int, params: str, flags: int, path: str) -> None:
        self.calls.append(("finit_module", path, flags))
        self.module_params[path] = params
        self._raise_if_planned("finit_module", path)
        self.now += self.module_load_s  # what the kernel's load takes (signature check, init)
        for made in self.made_by_module.pop(path.rsplit("/", 1)[-1], []):
            self.events.append(Event(self.now, made.fields, made.then))

    def uevent_open(self) -> FakeSocket:
        self.calls.append(("uevent_open",))
        return FakeSocket()

    def uevent_recv(self, sock: object, timeout: float) -> bytes | None:
        self._raise_if_planned("uevent_recv", "")
        pending = sorted((e for e in self.events), key=lambda e: e.at)
        if pending and pending[0].at <= self.now + timeout:
            event = pending[0]
            self.events.remove(event)
            self.now = max(self.now, event.at)
            if event.then:
                event.then(self)
            return event.encode()
        self.now += timeout
        return None

    # The network's sockets: test_network.py's FakeNetKernel answers them like Linux; a
    # boot of this fake never reaches them (its bootfs is local).
    def netlink_open(self, protocol: int, groups: int = 0) -> FakeSocket:
        raise oserror(errno.ENOSYS, "netlink")

    def netlink_send(self, sock: object, data: bytes) -> None:
        raise oserror(errno.ENOSYS, "netlink")

    def netlink_recv(self, sock: object, timeout: float) -> bytes | None:
        raise oserror(errno.ENOSYS, "netlink")

    def tcp_connect(self, host: str, port: int, timeout: float) -> FakeSocket:
        raise oserror(errno.ENOSYS, f"{host}:{port}")

    def sock_send(self, sock: object, data: bytes, deadline: float) -> None:
        raise oserror(errno.ENOSYS, "socket")

    def sock_recv(self, sock: object, length: int, deadline: float) -> bytes:
        raise oserror(errno.ENOSYS, "socket")

    def udev_devices(self, subsystems: tuple[str, ...]) -> list[str]:
        self.calls.append(("udev_devices", subsystems))
        if self.udev_error:
            raise self.udev_error
        return list(self.udev_paths)

    # --- processes ------------------------------------------------------------------------

    def getpid(self) -> int:
        return self.pid

    def uname_release(self) -> str:
        return self.release

    def uname_machine(self) -> str:
        return self.machine

    def monotonic(self) -> float:
        return self.now

    def boottime(self) -> float:
        return 1.5 + self.now

    def sleep(self, seconds: float) -> None:
        self.calls.append(("sleep", seconds))
        self.now += seconds

    def fork(self) -> int:
        self.calls.append(("fork",))
        return 4242

    def waitpid(self, pid: int) -> int:
        self.calls.append(("waitpid", pid))
        return 0

    def exit_child(self, code: int) -> NoReturn:
        raise AssertionError("the fake fork only ever returns to the parent")

    def execve(self, path: str, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
        self.calls.append(("execve", path, list(argv)))
        if path in self.executables:
            raise Executed(path, argv, env)
        raise oserror(errno.ENOENT, path)

    def reboot(self, how: int) -> None:
        self.calls.append(("reboot", how))
        raise Rebooted(how)

    def pause(self) -> None:
        raise Paused()



if TYPE_CHECKING:
    from storage_init.kernelapi import KernelApi

    # mypy checks here that the fake and the syscall boundary have one interface
    # (storage_init.kernelapi), so the unit tier cannot drift from the real kernel
    _FAKE: KernelApi = FakeKernel()
    _REAL: KernelApi = real.Kernel()
