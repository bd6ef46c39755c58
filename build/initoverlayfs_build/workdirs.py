"""The builder's work directories in TMPDIR carry the PID of the run that made them, so that
a later run can tell and remove those of runs that were killed (SIGKILL, power loss) instead
of leaving their unpacked trees and images to fill /tmp build after build."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .ui import Ui

PREFIX = "initoverlayfs-build-"


def prefix() -> str:
    return f"{PREFIX}{os.getpid()}-"


def base() -> Path:
    """TMPDIR as tempfile reads it, without tempfile.gettempdir(): that one writes a probe
    file under a random name into it first, which a run killed at the wrong moment leaves
    behind, with nothing in its name to tell whose it was."""
    for variable in ("TMPDIR", "TEMP", "TMP"):
        value = os.environ.get(variable)
        if value and os.path.isdir(value):
            return Path(value)
    return Path("/tmp")


def owner(name: str) -> int | None:
    """The PID in a work directory's name, or None when the name is not one of ours."""
    if not name.startswith(PREFIX):
        return None
    pid, dash, _ = name[len(PREFIX):].partition("-")
    return int(pid) if dash and pid.isascii() and pid.isdigit() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale(ui: Ui) -> list[str]:
    """Remove the work directories of runs that are no longer running."""
    where = base()
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return []
    removed = []
    for name in names:
        pid = owner(name)
        if pid is None or pid == os.getpid() or alive(pid):
            continue
        path = where / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    if removed:
        ui.info(f"removed the work directories of killed runs in {where}: {', '.join(removed)}")
    return removed
