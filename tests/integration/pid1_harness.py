"""Run storage-init for real as PID 1 of a fresh PID and mount namespace.

Started by the integration tests as
`unshare --mount --pid --fork --propagation private python -m tests.integration.pid1_harness
CONFIG_TEXT CMDLINE_TEXT [ARG...]`. It builds an initramfs-like root on a tmpfs holding the
config, pivots into it (so `/` is a tmpfs on its own device, like the kernel's rootfs), and
hands over to `boot_pid1`, which mounts /proc /sys /dev /run, finds the bootfs loop device by
UUID, and ends by exec'ing the test init from the EROFS image, or in the emergency path.

Everything Python will need after the pivot is imported first: the tmpfs root has no Python.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile

from storage_init.boot import Paths
from storage_init.kernel import MNT_DETACH, Kernel
from storage_init.main import boot_pid1

CMDLINE_FILE = "/etc/test-cmdline"


def pivot_root(new_root: str, put_old: str) -> None:
    """The harness's own: storage-init never pivots (it moves the new root onto /)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(155, new_root.encode(), put_old.encode()) != 0:  # SYS_pivot_root, x86_64
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), new_root)


def main() -> None:
    config, cmdline, *args = sys.argv[1:]
    kernel = Kernel()
    if kernel.getpid() != 1:
        sys.exit("pid1_harness must run as PID 1 of a new PID namespace (unshare --pid --fork)")
    kernel.udev_devices(("block",))  # loads libudev while the host's /usr is still visible
    root = tempfile.mkdtemp(prefix="initramfs-")
    kernel.mount("initramfs", root, "tmpfs", 0, "mode=0755")
    os.makedirs(f"{root}/etc")
    os.makedirs(f"{root}/put_old")
    with open(f"{root}/etc/initoverlayfs.conf", "w") as f:
        f.write(config)
    with open(f"{root}{CMDLINE_FILE}", "w") as f:
        f.write(cmdline)
    pivot_root(root, f"{root}/put_old")
    kernel.chdir("/")
    kernel.umount("/put_old", MNT_DETACH)
    os.rmdir("/put_old")
    boot_pid1(kernel, ["/init", *args], dict(os.environ), Paths(cmdline=CMDLINE_FILE))


if __name__ == "__main__":
    main()
