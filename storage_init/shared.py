"""The builder's list of the mini-initramfs's files that the image holds byte for byte
(systemd mode: systemd and its libraries are in both). storage-init copies them into a layer
above the image, so that after the switch root they are not read from the image and hashed by
dm-verity a second time. The mini-initramfs is as trusted as the root hash it carries, and the
builder checked each file against the image's when it made the pair. Pure: no I/O here."""

from __future__ import annotations

import posixpath

# where the list is in the mini-initramfs (the builder appends it as a cpio segment of its own)
LIST = "/usr/lib/initoverlayfs/shared-files"


def parse(text: str) -> tuple[str, ...]:
    """The listed paths, one per line: absolute, normalised, below /usr/. ValueError names the
    first line that is not (a list that does not make sense is not used at all)."""
    paths: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        path = line.strip()
        if not path or path.startswith("#"):
            continue
        if posixpath.normpath(path) != path or not path.startswith("/usr/"):
            raise ValueError(f"line {number}: {path!r} is not a normalised path below /usr/")
        paths.append(path)
    return tuple(dict.fromkeys(paths))


def parents(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Every directory the layer needs for `paths`, each once, a parent before its children."""
    found: dict[str, None] = {}
    for path in paths:
        parts = path.split("/")[1:-1]
        for depth in range(1, len(parts) + 1):
            found.setdefault("/" + "/".join(parts[:depth]))
    return tuple(found)
