"""Every external tool runs through `run()`: logged exactly as run in debug mode, and a failure
names the command, its exit status and the end of what it printed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO

from . import workdirs
from .errors import BuildError
from .ui import Ui

# Where each tool comes from on Debian, for the hint when it is missing.
PACKAGES = {
    "mkfs.erofs": "erofs-utils",
    "zstd": "zstd",
    "lz4": "lz4",
    "xz": "xz-utils",
    "gzip": "gzip",
    "bzip2": "bzip2",
    "dracut": "dracut",
    "patchelf": "patchelf",
    "strip": "binutils",
}
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def which(tool: str) -> str | None:
    """A tool on PATH, or in the sbin directories a non-login root shell may lack."""
    return shutil.which(tool) or shutil.which(tool, path=SBIN)


def need(tool: str, why: str) -> str:
    path = which(tool)
    if path is None:
        package = PACKAGES.get(tool, tool)
        raise BuildError(f"{tool} is not installed; it is needed {why}",
                         f"install it (Debian/Ubuntu: apt-get install {package}; "
                         f"Fedora: dnf install {package})")
    return path


def run(ui: Ui, argv: Sequence[str], *, stdin: bytes | IO[bytes] | None = None,
        stdout: IO[bytes] | None = None, cwd: str | None = None,
        env: Mapping[str, str] | None = None, merge_stderr: bool = False) -> bytes:
    """Run a command; return its stdout (with stderr when `merge_stderr`, for tools that
    print their help there) unless `stdout` is a file it writes to instead."""
    ui.command(argv, cwd)
    data, stream = (stdin, None) if isinstance(stdin, bytes) else (None, stdin)
    try:
        result = subprocess.run(
            list(argv), input=data, stdin=stream, stdout=stdout or subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, cwd=cwd,
            env=None if env is None else {**os.environ, **env}, check=False)
    except FileNotFoundError:
        raise _not_installed(argv) from None
    if result.returncode != 0:
        raise _failed(argv, result.returncode,
                      result.stdout if merge_stderr else result.stderr)
    return result.stdout if stdout is None else b""


def _not_installed(argv: Sequence[str]) -> BuildError:
    return BuildError(f"{argv[0]} is not installed",
                      f"install {PACKAGES.get(os.path.basename(argv[0]), argv[0])}")


def _failed(argv: Sequence[str], returncode: int, printed: bytes | None) -> BuildError:
    """The command, its exit status and the end of what it printed."""
    tail = (printed or b"").decode(errors="replace").strip().splitlines()[-8:]
    return BuildError(f"{shlex.join(argv)} failed with exit status {returncode}"
                      + "".join(f"\n  | {line}" for line in tail))


def run_bounded(ui: Ui, argv: Sequence[str], data: bytes, limit: int) -> bytes | None:
    """Run a filter on `data`; its stdout, or None (the tool killed) once it passes `limit`
    bytes: a decompressor fed hostile input must not fill the memory before it is stopped."""
    ui.command(argv, None)
    scratch = workdirs.base()  # not tempfile's default: see workdirs.base
    with tempfile.TemporaryFile(dir=scratch) as source, \
            tempfile.TemporaryFile(dir=scratch) as errors:
        source.write(data)
        source.seek(0)
        try:
            proc = subprocess.Popen(list(argv), stdin=source, stdout=subprocess.PIPE,
                                    stderr=errors)
        except FileNotFoundError:
            raise _not_installed(argv) from None
        assert proc.stdout is not None
        out = bytearray()
        with proc:
            while chunk := proc.stdout.read(1 << 20):
                out += chunk
                if len(out) > limit:
                    proc.kill()
                    return None
        if proc.returncode != 0:
            errors.seek(0)
            raise _failed(argv, proc.returncode, errors.read())
    return bytes(out)
