"""storage-init's share-files and mount-overlay steps with the real kernel, in a private
mount namespace (`unshare --mount --propagation private python -m
tests.integration.shared_harness IMAGE LIST WORK`): the image (a real EROFS file) on a loop
device as the lower layer, this machine's own files as the mini-initramfs's, the layer copied
into a tmpfs scratch, and the overlay mounted. Prints the overlay's mountinfo options, then
stays in the namespace for the test's reads through /proc/PID/root."""

from __future__ import annotations

import subprocess
import sys

from storage_init.boot import SYSTEMD, Boot, Paths
from storage_init.kernel import MS_NODEV, MS_NOSUID, MS_RDONLY, Kernel
from storage_init.log import Log
from storage_init.steps import mount_overlay, share_files


def main() -> None:
    image, listing, work = sys.argv[1:]
    kernel = Kernel()
    paths = Paths(shared=listing, scratch=f"{work}/scratch", new_root=f"{work}/root")
    kernel.mkdir(paths.scratch)
    kernel.mount("initoverlayfs", paths.scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for sub in ("upper", "work", "lower"):
        kernel.mkdir(f"{paths.scratch}/{sub}")
    loop = subprocess.run(["losetup", "--find", "--show", "--read-only", image],
                          check=True, capture_output=True, text=True).stdout.strip()
    try:
        kernel.mount(loop, f"{paths.scratch}/lower", "erofs", MS_RDONLY, None)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)  # autoclear once unmounted
    boot = Boot(kernel, Log(kernel), SYSTEMD, ["storage-init", "--systemd"], {}, paths)
    share_files(boot)
    mount_overlay(boot)
    with open("/proc/self/mountinfo") as f:
        print(next(line for line in f if f" {paths.new_root} " in line), flush=True)
    sys.stdin.read()  # until the test has read what it needs


if __name__ == "__main__":
    main()
