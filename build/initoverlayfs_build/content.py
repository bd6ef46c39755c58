"""What the initoverlayfs content needs changed to run on the overlay instead of the rootfs.

initramfs-tools' /init ends with klibc's `run-init`, which refuses any root that is not a
ramfs or tmpfs ("run-init: rootfs not a ramfs or tmpfs"), and on initoverlayfs the root is the
overlay: the boot stopped at "No init found". Its place takes a small script with the same
arguments that does what systemd's switch-root does for a root that is not the rootfs:
pivot_root onto the real root and detach the overlay, so that the image, its loop and
dm-verity devices and the read-only /boot mount under it are released (the real root then
mounts /boot read-write from its fstab). dracut's content switches root with systemd, which
already does this.
"""

from __future__ import annotations

import os
from pathlib import Path

from .ui import Ui

# The places initramfs-tools' klibc hook installs run-init to (bin and sbin are often links
# to usr/bin and usr/sbin, which is why each directory is checked to be a real one).
RUN_INIT_PLACES = ("usr/bin/run-init", "usr/sbin/run-init", "bin/run-init", "sbin/run-init")
KEPT_AS = "run-init.klibc"
# klibc's (or busybox's) sh, chroot, pivot_root and umount, which initramfs-tools ships.
RUN_INIT = r"""#!/bin/sh
# run-init for an initramfs-tools initrd booted through initoverlayfs (installed by
# initoverlayfs-install; klibc's own is kept as run-init.klibc). Same arguments:
#   run-init [-d CAPS] [-c CONSOLE] [-n] NEWROOT INIT [ARGS...]
# klibc's refuses a root that is not a ramfs or tmpfs, and here the root is initoverlayfs's
# overlay: pivot onto NEWROOT and detach the overlay instead, so the image, its devices and
# the read-only /boot under it are released once nothing uses them.
check=
while [ $# -gt 0 ]; do
    case "$1" in
        -n) check=1; shift ;;
        -c|-d) shift 2 ;;  # the console is already set by the caller; capabilities stay
        --) shift; break ;;
        *) break ;;
    esac
done
if [ $# -lt 2 ]; then
    echo "run-init: usage: run-init [-d caps] [-c console] [-n] newroot init [args]" >&2
    exit 1
fi
root=$1
init=$2
shift 2
# -n: only say whether INIT can run inside NEWROOT (symbolic links resolved there)
if [ -n "$check" ]; then
    exec chroot "$root" /bin/sh -c '[ -x "$1" ]' run-init "$init"
fi
cd "$root" || exit 1
if pivot_root . .; then
    # the overlay now sits on top of NEWROOT at /: detach it
    umount -l . || echo "run-init: could not detach initoverlayfs's overlay" >&2
else
    echo "run-init: pivot_root failed; moving $root onto / (the overlay stays mounted)" >&2
    mount -o move . / || exit 1
fi
exec chroot . "$init" "$@"
"""


def adapt(ui: Ui, tree: Path) -> list[str]:
    """Change the unpacked content where it cannot run on the overlay; the changes made."""
    changes = []
    for place in RUN_INIT_PLACES:
        path = tree / place
        if not _real_directory(tree, path.parent) or not path.is_file() or path.is_symlink():
            continue
        if path.read_bytes().startswith(b"#!/bin/sh\n# run-init for an initramfs-tools"):
            continue  # already ours (content taken from an image of ours)
        os.rename(path, path.with_name(KEPT_AS))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
        with os.fdopen(fd, "w") as out:
            out.write(RUN_INIT)
        changes.append(f"/{place}: klibc's refuses the overlay as the root; replaced by "
                       f"one that pivots (kept as {KEPT_AS})")
    for change in changes:
        ui.info(f"initramfs-tools content: {change}")
    return changes


def _real_directory(tree: Path, directory: Path) -> bool:
    """`directory` and every directory above it up to `tree` are directories, not links."""
    current = directory
    while current != tree:
        if current.is_symlink() or not current.is_dir():
            return False
        current = current.parent
    return True
