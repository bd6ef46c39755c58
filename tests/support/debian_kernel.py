"""Real Debian kernels for the tests and the demo: `apt-get download` of the current
linux-image-*-cloud-amd64 or generic linux-image-*-amd64 package, unpacked and depmod'ed the way
its post-install script would, cached under .cache/debian-kernels between runs."""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "debian-kernels"
FLAVOURS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}


@dataclass(frozen=True)
class DebianKernel:
    root: Path  # the unpacked package: boot/vmlinuz-KVER, lib/modules/KVER
    kver: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.kver}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.kver


def _apt(*args: str) -> str:
    return subprocess.run(["apt-get", *args], check=True, capture_output=True, text=True,
                          cwd=CACHE).stdout


def package_for(flavour: str) -> str:
    """The versioned package the metapackage points at, e.g. linux-image-6.1.0-56-cloud-amd64."""
    meta = FLAVOURS[flavour]
    out = subprocess.run(["apt-cache", "depends", meta], capture_output=True, text=True,
                         check=False).stdout
    match = re.search(r"Depends: (linux-image-\S+)", out)
    if match is None:  # stale or missing package lists
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        out = subprocess.run(["apt-cache", "depends", meta], capture_output=True, text=True,
                             check=True).stdout
        match = re.search(r"Depends: (linux-image-\S+)", out)
    if match is None:
        raise RuntimeError(f"apt-cache cannot resolve {meta}: {out}")
    return match.group(1)


def fetch(flavour: str) -> DebianKernel:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers share one download
        package = package_for(flavour)
        kver = package.removeprefix("linux-image-")
        root = CACHE / package
        if (root / "lib/modules" / kver / "modules.dep").is_file():
            return DebianKernel(root, kver)
        debs = sorted(CACHE.glob(f"{package}_*.deb"))
        if not debs:
            _apt("download", package)
            debs = sorted(CACHE.glob(f"{package}_*.deb"))
        partial = CACHE / f".{package}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(partial)], check=True)
        depmod = shutil.which("depmod") or "/usr/sbin/depmod"
        subprocess.run([depmod, "-b", str(partial), kver], check=True)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        return DebianKernel(root, kver)
