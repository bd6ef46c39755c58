"""The syscall boundary: the only module of storage-init that changes or reads the system.

Every wrapper raises ``OSError(errno, strerror, path)`` so a failure message can always name the
object it was about, and reports each call to an optional tracer (``rd.initoverlayfs.debug``)
with its arguments, result and duration. Everything above this module is plain Python that the
unit tests drive against a recording fake with the same methods.
"""

from __future__ import annotations

import _socket  # not socket: its enum conversion of every constant is start time
import ctypes
import errno
import fcntl
import os
import select
import stat
import time

from . import TYPE_CHECKING
from .udev import LIBUDEV_SONAME, import_pyudev

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

# Names of ioctl requests for the debug trace; the modules that send them add theirs
# (their numbers live with them: storage_init/loop.py, storage_init/dm.py).
IOCTL_NAMES: dict[int, str] = {}


def name_ioctls(names: dict[str, int]) -> None:
    IOCTL_NAMES.update({number: name for name, number in names.items()})


# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

MOUNT_FLAG_NAMES = {
    MS_RDONLY: "MS_RDONLY",
    MS_NOSUID: "MS_NOSUID",
    MS_NODEV: "MS_NODEV",
    MS_NOEXEC: "MS_NOEXEC",
    MS_MOVE: "MS_MOVE",
    MS_REC: "MS_REC",
    MS_PRIVATE: "MS_PRIVATE",
}

# <linux/module.h>
MODULE_INIT_COMPRESSED_FILE = 4

# <linux/reboot.h>
RB_AUTOBOOT = 0x01234567
RB_HALT_SYSTEM = 0xCDEF0123
RB_POWER_OFF = 0x4321FEDC

# statfs f_type values of the filesystems an initramfs can live on.
RAMFS_MAGIC = 0x858458F6
TMPFS_MAGIC = 0x01021994

NETLINK_KOBJECT_UEVENT = 15
UEVENT_BUFFER = 16 * 1024 * 1024  # large enough for a coldplug burst; udevd uses 128 MiB
SO_RCVBUFFORCE = 33

# finit_module(2) has no libc wrapper; its number differs per CPU (x86_64's table, and the
# generic one arm64 uses, include/uapi/asm-generic/unistd.h)
_SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}

if TYPE_CHECKING:
    Tracer = Callable[[str], None]


class _StatFs(ctypes.Structure):
    _fields_ = [
        ("f_type", ctypes.c_long),
        ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_ulong),
        ("f_bfree", ctypes.c_ulong),
        ("f_bavail", ctypes.c_ulong),
        ("f_files", ctypes.c_ulong),
        ("f_ffree", ctypes.c_ulong),
        ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long),
        ("f_frsize", ctypes.c_long),
        ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


def flag_names(flags: int) -> str:
    """MS_* flags as names, for logs that a person reads."""
    names = [name for bit, name in MOUNT_FLAG_NAMES.items() if flags & bit]
    rest = flags & ~sum(MOUNT_FLAG_NAMES)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


def _fmt(value: object) -> str:
    if isinstance(value, bytes) and len(value) > 32:
        return f"<{len(value)} bytes>"
    return repr(value)


class Kernel:
    """Typed wrappers over the syscalls storage-init makes."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self.tracer = tracer
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._finit_number: int | None = None  # this CPU's, at the first module

    # --- plumbing -------------------------------------------------------------------------

    def _trace(self, call: str, started: float, result: object, error: OSError | None) -> None:
        if self.tracer is None:
            return
        took = (time.monotonic() - started) * 1000
        outcome = f"-> {error.strerror} (errno {error.errno})" if error else f"= {_fmt(result)}"
        self.tracer(f"{call} {outcome} [{took:.3f} ms]")

    def _libc_call(self, call: str, path: str | None, fn: Callable[[], int]) -> int:
        started = time.monotonic()
        result = fn()
        error = None
        if result < 0:
            err = ctypes.get_errno()
            error = OSError(err, os.strerror(err), path)
        self._trace(call, started, result, error)
        if error:
            raise error
        return result

    def _os_call(self, call: str, path: str | None, fn: Callable[[], object]) -> object:
        started = time.monotonic()
        try:
            result = fn()
        except OSError as exc:
            if exc.filename is None and path is not None:
                exc = OSError(exc.errno, exc.strerror, path)
            self._trace(call, started, None, exc)
            raise exc from None
        self._trace(call, started, result, None)
        return result

    # --- mounts ---------------------------------------------------------------------------

    def mount(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        call = f"mount({source!r}, {target!r}, {fstype!r}, {flag_names(flags)}, {data!r})"
        self._libc_call(
            call,
            target,
            lambda: self._libc.mount(
                None if source is None else source.encode(),
                target.encode(),
                None if fstype is None else fstype.encode(),
                ctypes.c_ulong(flags),
                None if data is None else data.encode(),
            ),
        )

    def umount(self, target: str, flags: int = 0) -> None:
        self._libc_call(
            f"umount2({target!r}, {flags})",
            target,
            lambda: self._libc.umount2(target.encode(), ctypes.c_int(flags)),
        )

    def chroot(self, path: str) -> None:
        self._os_call(f"chroot({path!r})", path, lambda: os.chroot(path))

    def chdir(self, path: str) -> None:
        self._os_call(f"chdir({path!r})", path, lambda: os.chdir(path))

    def statfs_type(self, path: str) -> int:
        buf = _StatFs()
        self._libc_call(
            f"statfs({path!r})", path, lambda: self._libc.statfs(path.encode(), ctypes.byref(buf))
        )
        return int(buf.f_type)

    # --- files ----------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        """mkdir that accepts an existing directory (mount points are created idempotently)."""
        try:
            self._os_call(f"mkdir({path!r}, {mode:#o})", path, lambda: os.mkdir(path, mode))
        except FileExistsError:
            if not os.path.isdir(path):
                raise

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)  # reads are not traced: they would drown the mutations

    def ensure_stdio(self, console: str) -> bool:
        """Open the console on fds 0-2 if the kernel could not (no /dev/console node in the
        initramfs): our messages need it, and init inherits it. True if it had to."""
        try:
            os.fstat(2)
            return False
        except OSError:
            pass
        fd = self._os_call(f"open({console!r}, O_RDWR|O_NOCTTY)", console,
                           lambda: os.open(console, os.O_RDWR | os.O_NOCTTY))
        assert isinstance(fd, int)
        for target in (0, 1, 2):
            if fd != target:
                os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
        return True

    def device_of(self, path: str) -> int:
        return os.stat(path).st_dev

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def read_file(self, path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        def write() -> int:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)

        self._os_call(f"write({path!r}, {_fmt(data)})", path, write)

    def copy_file(self, source: str, target: str, mode: int) -> None:
        """A new file `target` (refused if it exists) with `source`'s bytes, copied by the
        kernel (sendfile: no pass through Python's memory), and `mode`."""
        def copy() -> int:
            src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            try:
                dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
                try:
                    size, done = os.fstat(src).st_size, 0
                    while done < size:
                        sent = os.sendfile(dst, src, done, size - done)
                        if sent == 0:
                            raise OSError(errno.EIO, "the file shrank while it was copied",
                                          source)
                        done += sent
                    os.fchmod(dst, mode)  # what the umask took off
                    return done
                finally:
                    os.close(dst)
            finally:
                os.close(src)

        self._os_call(f"copy({source!r}, {target!r}, {mode:#o})", target, copy)

    def open(self, path: str, flags: int) -> int:
        result = self._os_call(
            f"open({path!r}, {flags:#o})", path, lambda: os.open(path, flags | os.O_CLOEXEC)
        )
        assert isinstance(result, int)
        return result

    def close(self, fd: int) -> None:
        os.close(fd)

    def pread(self, fd: int, offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    def write_fd(self, fd: int, data: bytes) -> None:
        os.write(fd, data)

    def ioctl(self, fd: int, request: int, arg: int | bytes) -> int | bytes:
        call = f"ioctl({fd}, {IOCTL_NAMES.get(request, hex(request))}, {_fmt(arg)})"
        result = self._os_call(call, None, lambda: fcntl.ioctl(fd, request, arg))
        assert isinstance(result, (int, bytes))
        return result

    def remove_tree_contents(self, dir_fd: int, device: int) -> int:
        """Delete everything below an open directory without leaving its filesystem.

        Used on the old initramfs after switch root: entries on another device (mount points
        that were not moved) are left alone, like systemd's rm_rf with REMOVE_PHYSICAL.
        Returns the number of entries removed; errors on single entries are skipped.
        """
        removed = 0
        for entry in os.scandir(dir_fd):
            try:
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != device:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
                    try:
                        removed += self.remove_tree_contents(sub, device)
                    finally:
                        os.close(sub)
                    os.rmdir(entry.name, dir_fd=dir_fd)
                else:
                    os.unlink(entry.name, dir_fd=dir_fd)
                removed += 1
            except OSError:
                continue
        return removed

    # --- modules --------------------------------------------------------------------------

    @property
    def _finit_module(self) -> int:
        if self._finit_number is None:
            machine = os.uname().machine
            if machine not in _SYS_FINIT_MODULE:
                raise OSError(errno.ENOSYS, f"finit_module's number on {machine} is not known "
                                            "to storage-init")
            self._finit_number = _SYS_FINIT_MODULE[machine]
        return self._finit_number

    def finit_module(self, fd: int, params: str, flags: int, path: str) -> None:
        self._libc_call(
            f"finit_module({path!r}, {params!r}, {flags})",
            path,
            lambda: self._libc.syscall(
                self._finit_module, ctypes.c_int(fd), params.encode(), ctypes.c_int(flags)
            ),
        )

    def uevent_open(self) -> _socket.socket:
        sock = _socket.socket(
            _socket.AF_NETLINK, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT
        )
        try:
            sock.setsockopt(_socket.SOL_SOCKET, SO_RCVBUFFORCE, UEVENT_BUFFER)
        except OSError:  # needs CAP_NET_ADMIN; the default buffer still works, just smaller
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, UEVENT_BUFFER)
        sock.bind((0, 1))  # multicast group 1: events straight from the kernel
        if self.tracer:
            self.tracer("socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT) bound to group 1")
        return sock

    def uevent_recv(self, sock: _socket.socket, timeout: float) -> bytes | None:
        """One kernel uevent, or None when `timeout` seconds passed without one.

        Raises OSError(ENOBUFS) when the kernel dropped events because the buffer overflowed;
        the caller then rescans sysfs instead of trusting the event stream.
        """
        ready, _, _ = select.select([sock], [], [], max(timeout, 0.0))
        if not ready:
            return None
        data, sender = sock.recvfrom(65536)
        if sender[0] != 0:  # only the kernel (port id 0) speaks for devices
            return b""
        return data

    # --- network (only for a bootfs on the network: storage_init/network.py) -------------

    def netlink_open(self, protocol: int, groups: int = 0) -> _socket.socket:
        """A netlink socket (NETLINK_ROUTE, NETLINK_GENERIC), bound to these multicast groups."""
        def open_() -> _socket.socket:
            sock = _socket.socket(_socket.AF_NETLINK,
                                  _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, protocol)
            sock.bind((0, groups))
            return sock
        return self._os_call(f"socket(AF_NETLINK, {protocol}) groups {groups:#x}", None,
                             open_)  # type: ignore[return-value]

    def netlink_send(self, sock: _socket.socket, data: bytes) -> None:
        self._os_call(f"netlink send ({len(data)} bytes)", None, lambda: sock.send(data))

    def netlink_recv(self, sock: _socket.socket, timeout: float) -> bytes | None:
        """One datagram (one or more netlink messages), or None after `timeout` seconds."""
        ready, _, _ = select.select([sock], [], [], max(timeout, 0.0))
        if not ready:
            return None
        return self._os_call("netlink recv", None,
                             lambda: sock.recv(1 << 16))  # type: ignore[return-value]

    def tcp_connect(self, host: str, port: int, timeout: float) -> _socket.socket:
        """A TCP connection to an IPv4 address; OSError names host:port."""
        where = f"{host}:{port}"

        def connect() -> _socket.socket:
            sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(max(timeout, 0.001))
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                sock.connect((host, port))
            except _socket.timeout:
                sock.close()
                raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT), where) from None
            except BaseException:
                sock.close()
                raise
            return sock
        return self._os_call(f"connect({where})", where, connect)  # type: ignore[return-value]

    def sock_send(self, sock: _socket.socket, data: bytes, deadline: float) -> None:
        """All of `data` by `deadline` (monotonic), or ETIMEDOUT."""
        def send() -> None:
            _until(sock, deadline)
            try:
                sock.sendall(data)
            except _socket.timeout:
                raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
        self._os_call(f"send ({len(data)} bytes)", None, send)

    def sock_recv(self, sock: _socket.socket, length: int, deadline: float) -> bytes:
        """Exactly `length` bytes by `deadline` (monotonic), or ETIMEDOUT; EOFError when the
        peer closes first. The deadline is the whole exchange's: a peer that sends a byte
        at a time, or answers forever, cannot stretch it."""
        def recv() -> bytes:
            chunks, missing = [], length
            while missing:
                try:
                    _until(sock, deadline)
                    chunk = sock.recv(missing)
                except _socket.timeout:
                    raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
                if not chunk:
                    raise EOFError(f"the peer closed the connection after "
                                   f"{length - missing} of {length} bytes")
                chunks.append(chunk)
                missing -= len(chunk)
            return b"".join(chunks)
        return self._os_call(f"recv ({length} bytes)", None, recv)  # type: ignore[return-value]

    # --- udev -----------------------------------------------------------------------------

    def udev_devices(self, subsystems: tuple[str, ...]) -> list[str]:
        """sysfs paths of the devices in any of these subsystems, enumerated by pyudev
        (imported by udev.import_pyudev, which says how and why)."""
        started = time.monotonic()
        try:
            context = import_pyudev().Context()
        except ImportError as exc:
            error = OSError(errno.ENOENT, str(exc), LIBUDEV_SONAME)
            self._trace("udev_new()", started, None, error)
            raise error from None
        enumerator = context.list_devices()
        for subsystem in subsystems:
            enumerator.match_subsystem(subsystem)  # several subsystems: any of them matches
        paths = [str(device.sys_path) for device in enumerator]
        self._trace(f"udev_enumerate({', '.join(subsystems)})", started, len(paths), None)
        return paths

    # --- processes ------------------------------------------------------------------------

    def getpid(self) -> int:
        return os.getpid()

    def uname_release(self) -> str:
        return os.uname().release

    def uname_machine(self) -> str:
        return os.uname().machine

    def monotonic(self) -> float:
        return time.monotonic()

    def boottime(self) -> float:
        """Seconds since the kernel started (CLOCK_BOOTTIME): when the boot reached us."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def fork(self) -> int:
        pid = self._os_call("fork()", None, os.fork)
        assert isinstance(pid, int)
        return pid

    def waitpid(self, pid: int) -> int:
        return os.waitpid(pid, 0)[1]

    def exit_child(self, code: int) -> NoReturn:
        os._exit(code)

    def execve(self, path: str, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
        started = time.monotonic()
        if self.tracer:
            self.tracer(f"execve({path!r}, {list(argv)!r})")
        try:
            os.execve(path, list(argv), dict(env))
        except OSError as exc:
            error = OSError(exc.errno, exc.strerror, path)
            self._trace(f"execve({path!r})", started, None, error)
            raise error from None

    def reboot(self, how: int) -> None:
        """Sync and reboot/halt/power off. Returns only if the kernel refused."""
        os.sync()
        self._libc_call(f"reboot({how:#x})", None, lambda: self._libc.reboot(ctypes.c_int(how)))

    def pause(self) -> None:
        """Block this process for good (PID 1 must never return)."""
        time.sleep(3600)


def _until(sock: _socket.socket, deadline: float) -> None:
    """The socket's timeout for its next call: what is left until `deadline`."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
    sock.settimeout(left)
