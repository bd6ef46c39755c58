"""Putting files into /boot without ever leaving it unbootable: check the room first, write
each file to a temporary name in the same directory, fsync it, and only when every new file is
complete rename them into place and fsync the directory. Any failure before the renames leaves
the previous files untouched and removes the temporaries."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

MARGIN = 1 << 20  # keep a little room free for the filesystem's own metadata


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


def install(directory: Path, outputs: Sequence[Output]) -> None:
    """All of `outputs` replace their namesakes in `directory`, or none does."""
    if not directory.is_dir():
        raise BuildError(f"{directory} does not exist", "create it (or mount /boot)")
    check_room(directory, outputs)
    temps: list[tuple[Path, Path]] = []
    try:
        for out in outputs:
            final = directory / out.name
            temp = directory / f".{out.name}.tmp{os.getpid()}"
            temps.append((temp, final))
            _write(temp, out)
        # Renamed in the order given: callers put the image the bootloader loads last, so a
        # crash between two renames pairs the old mini-initramfs with a new image of the same
        # kernel, which still boots.
        for temp, final in temps:
            os.replace(temp, final)
        _fsync_dir(directory)
    except OSError as exc:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise BuildError(f"{directory} ran out of room while writing; nothing was changed",
                             "remove old kernels' images from /boot, or make it larger"
                             ) from None
        raise BuildError(f"cannot write into {directory}: {exc.strerror or exc}; "
                         "the previous files are untouched") from None
    except BaseException:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        raise


def write_file_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    install(path.parent, [Output(path.name, data, mode)])


def _write(temp: Path, out: Output) -> None:
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, out.mode)
    with os.fdopen(fd, "wb") as f:
        if isinstance(out.source, bytes):
            f.write(out.source)
        else:
            with out.source.open("rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temp, out.mode)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
