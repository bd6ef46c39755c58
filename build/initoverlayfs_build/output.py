"""Putting files into /boot without ever leaving it unbootable.

Under an exclusive lock on the directory: temporaries that a killed run left are removed
first, the room is checked, each new file is written to a temporary name in the same
directory and fsync'ed, then the files are renamed into place in the order given, the
directory fsync'ed after each rename (a later file may name an earlier one: that name must
be on disk before it), the journal checkpointed where the filesystem has one that a
bootloader skips (ext4), and last the files the new ones make obsolete are removed.

Any failure before the first rename leaves the previous files untouched. A failure between
renames removes the files it had added under new names; callers order their outputs so that
only the last one replaces a file under an existing name (see pair.py)."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

MARGIN = 1 << 20  # keep a little room free for the filesystem's own metadata
TEMP_MARK = ".tmp"  # a temporary is ".NAME.tmpPID"


@dataclass(frozen=True)
class Output:
    name: str  # file name in the target directory
    source: Path | bytes  # a finished file to copy, or the bytes themselves
    mode: int = 0o600  # images are readable by root only, like dracut's

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def check_room(directory: Path, outputs: Sequence[Output]) -> None:
    # Old files stay until the renames, so the new ones need all of their size free.
    needed = sum(o.size for o in outputs) + MARGIN
    free = free_bytes(directory)
    if free < needed:
        raise BuildError(f"not enough room in {directory}: the new images need "
                         f"{needed / 1e6:.1f} MB and {free / 1e6:.1f} MB is free; "
                         "nothing was changed",
                         "remove old kernels' images from /boot, or make it larger")


def _temp_name(name: str) -> str:
    return f".{name}{TEMP_MARK}{os.getpid()}"


def _is_temp_of(entry: str, prefixes: Sequence[str]) -> bool:
    """A temporary this module makes for a file whose name starts with one of `prefixes`."""
    base, mark, pid = entry.rpartition(TEMP_MARK)
    return (entry.startswith(".") and bool(mark) and pid.isdigit() and pid.isascii()
            and base[1:].startswith(tuple(prefixes)))


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One writer at a time in `directory` (flock on the directory itself: nothing is left
    behind by a killed run, the kernel drops the lock with the process)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise BuildError(f"cannot open {directory}: {exc.strerror}",
                         "create it (or mount /boot)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stale_temporaries(directory: Path, prefixes: Sequence[str]) -> list[str]:
    """Temporaries of killed runs; only called under the lock, so none is in use."""
    removed = []
    for entry in sorted(os.listdir(directory)):
        if _is_temp_of(entry, prefixes):
            try:
                os.unlink(directory / entry)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BuildError(f"cannot remove {directory / entry}, left by an earlier run "
                                 f"that was killed: {exc.strerror}") from None
            removed.append(entry)
    return removed


@dataclass(frozen=True)
class Installed:
    cleaned: list[str]  # temporaries of killed runs, removed first
    left: list[str]  # obsolete files that could not be removed (the new ones are in place)


def _nothing() -> list[str]:
    return []


def install(directory: Path, outputs: Sequence[Output],
            obsolete: Callable[[], Iterable[str]] = _nothing,
            temp_prefixes: Sequence[str] = ()) -> Installed:
    """`outputs` replace their namesakes in `directory` in the given order, then the names
    `obsolete()` gives, asked under the lock, are removed. Stale temporaries are those whose
    names start with one of `temp_prefixes` or an output's name."""
    if not directory.is_dir():
        raise BuildError(f"{directory} does not exist", "create it (or mount /boot)")
    prefixes = [*temp_prefixes, *(o.name for o in outputs)]
    with locked(directory):
        cleaned = _remove_stale_temporaries(directory, prefixes)
        check_room(directory, outputs)
        _replace(directory, outputs)
        gone = [n for n in obsolete() if n not in {o.name for o in outputs}]
        if gone:  # a journal to checkpoint only when something is about to go
            _checkpoint(directory)
        left = [f"{directory / name} ({problem})" for name in gone
                if (problem := _remove(directory / name))]
        _fsync_dir(directory)
    return Installed(cleaned, left)


def _replace(directory: Path, outputs: Sequence[Output]) -> None:
    temps = [(directory / _temp_name(out.name), directory / out.name) for out in outputs]
    added: list[Path] = []  # renamed under a name that did not exist before
    replaced: list[Path] = []
    try:
        for (temp, _), out in zip(temps, outputs, strict=True):
            _write(temp, out)
        for temp, final in temps:
            existed = final.exists()
            os.replace(temp, final)
            (replaced if existed else added).append(final)
            _fsync_dir(directory)  # durable before the next file may name it
    except OSError as exc:
        _discard([temp for temp, _ in temps] + added)
        state = ("nothing was changed" if not replaced else
                 f"{', '.join(str(p) for p in replaced)} already replaced")
        if exc.errno == errno.ENOSPC:
            raise BuildError(f"{directory} ran out of room while writing; {state}",
                             "remove old kernels' images from /boot, or make it larger"
                             ) from None
        if exc.errno == errno.EROFS:
            raise BuildError(f"cannot write into {directory}: it is mounted read-only; "
                             f"{state}", f"remount it read-write (mount -o remount,rw "
                             f"{directory}) and run again") from None
        raise BuildError(f"cannot write into {directory}: {exc.strerror or exc}; {state}"
                         ) from None
    except BaseException:
        _discard([temp for temp, _ in temps] + added)
        raise


def _discard(paths: list[Path]) -> None:
    """Best effort, on the way out of a failure: on a read-only filesystem even the unlink
    of a file that is not there fails (EROFS), and the failure to report is the first one."""
    for path in paths:
        with suppress(OSError):
            path.unlink(missing_ok=True)


# EXT4_IOC_CHECKPOINT (Linux 5.13): write the journal's committed metadata to its place on
# disk. A bootloader reads /boot without replaying the journal (GRUB's ext2/3/4 reader has no
# journal code), while the kernel replays it at mount: after a power loss between an fsync'ed
# rename and the journal's own checkpoint, the bootloader would load the previous
# mini-initramfs and the kernel would no longer find the image it names, once the removal
# below is replayed. Checkpointed first, both see the new pair before the old image goes.
EXT4_IOC_CHECKPOINT = 0x4004662B


def _checkpoint(directory: Path) -> None:
    """Nothing where there is no such journal or it is not allowed (another filesystem, an
    older kernel, no CAP_SYS_ADMIN): the removal then goes on as before."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with suppress(OSError):
            fcntl.ioctl(fd, EXT4_IOC_CHECKPOINT, struct.pack("I", 0))
    finally:
        os.close(fd)


def _remove(path: Path) -> str | None:
    """None when gone; else why not. Not a failure of the build: the new files are in
    place and name each other."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def write_file_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    install(path.parent, [Output(path.name, data, mode)])


def _write(temp: Path, out: Output) -> None:
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 out.mode)
    with os.fdopen(fd, "wb") as f:
        if isinstance(out.source, bytes):
            f.write(out.source)
        else:
            with out.source.open("rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        f.flush()
        os.fchmod(f.fileno(), out.mode)
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
