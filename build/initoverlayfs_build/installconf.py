"""/etc/initoverlayfs/install.conf and install.conf.d/*.conf: initoverlayfs-install's own
arguments, for every build (the kernel hooks' included), parsed as shell words.

Shell words, so `--drivers "virtio_pci virtio_blk"` is one argument, as it would be typed;
`#` starts a comment. The files are read in this order, the command line last, so it wins
where an option takes one value: install.conf, then install.conf.d/*.conf sorted by name (a
package or an image builder drops one there without editing the admin's file), then the
one-line install.args of earlier versions.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .errors import BuildError

DIRECTORY = "etc/initoverlayfs"
FILE = "install.conf"
DROP_IN = "install.conf.d"
LEGACY = "install.args"


def parse(text: str, name: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError as exc:  # an unbalanced quote
        raise BuildError(f"{name}: {exc} (the file is read as shell words)",
                         "close the quote, or quote the word that holds it") from None


def files(sysroot: Path) -> list[Path]:
    """The config files that exist under the sysroot, in the order they are read."""
    base = sysroot / DIRECTORY
    found = [base / FILE]
    drop_in = base / DROP_IN
    if drop_in.is_dir():
        found += sorted(p for p in drop_in.iterdir() if p.name.endswith(".conf"))
    found.append(base / LEGACY)
    return [p for p in found if p.is_file()]


def arguments(sysroot: Path) -> list[tuple[Path, list[str]]]:
    """(file, its words) for each config file with any."""
    out = []
    for path in files(sysroot):
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BuildError(f"cannot read {path}: {exc}") from None
        words = parse(text, str(path))
        if words:
            out.append((path, words))
    return out
