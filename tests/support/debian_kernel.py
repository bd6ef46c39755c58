"""Real Debian kernels for the tests and the demo: `apt-get download` of the current
linux-image-*-cloud-amd64 or generic linux-image-*-amd64 package, unpacked and depmod'ed the way
its post-install script would, cached under .cache/debian-kernels between runs."""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import time
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


def _apt(*args: str, options: tuple[str, ...] = ()) -> str:
    return subprocess.run(["apt-get", *options, *args], check=True, capture_output=True,
                          text=True, cwd=CACHE).stdout


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
        return _unpacked(package_for(flavour), ())


# Another CPU's packages (arm64) and Debian 13's, through a private apt configuration: the
# machine's own sources and architectures stay as they are.
FOREIGN_SUITES = {"bookworm": ("bookworm", "bookworm-updates"),
                  "trixie": ("trixie", "trixie-updates")}


def foreign_apt(arch: str, suite: str) -> tuple[str, ...]:
    """apt-get/apt-cache options for `suite` of `arch` only, with package lists of its own
    (updated once a day)."""
    base = CACHE / f"apt-{suite}-{arch}"
    for sub in ("lists/partial", "archives/partial"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    sources = base / "sources.list"
    main, updates = FOREIGN_SUITES[suite]
    sources.write_text(f"deb [arch={arch}] http://deb.debian.org/debian {main} main\n"
                       f"deb [arch={arch}] http://deb.debian.org/debian {updates} main\n"
                       f"deb [arch={arch}] http://deb.debian.org/debian-security "
                       f"{main}-security main\n")
    options = (f"-oDir::Etc::sourcelist={sources}", "-oDir::Etc::sourceparts=-",
               f"-oDir::State::Lists={base / 'lists'}", f"-oDir::Cache={base}",
               f"-oAPT::Architectures::={arch}", "-oDebug::NoLocking=1")
    stamp = base / "lists" / ".updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400:
        _apt("update", "-qq", options=options)
        stamp.touch()
    return options


def fetch_foreign(suite: str, arch: str = "arm64") -> DebianKernel:
    """The current linux-image-ARCH of `suite` (Debian 12 or 13), unpacked and depmod'ed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        options = foreign_apt(arch, suite)
        out = subprocess.run(["apt-cache", *options, "depends", f"linux-image-{arch}"],
                             capture_output=True, text=True, check=True).stdout
        match = re.search(r"Depends: (linux-image-\S+?)(?::\S+)?$", out, re.M)
        if match is None:
            raise RuntimeError(f"apt-cache cannot resolve linux-image-{arch} in {suite}: {out}")
        return _unpacked(match.group(1), options)


def download(package: str, suite: str, arch: str = "arm64") -> Path:
    """One package of `suite` for `arch` (busybox-static for the arm64 content), cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        debs = sorted(CACHE.glob(f"{package}_*_{arch}.deb"))
        if not debs:
            _apt("download", f"{package}:{arch}", options=foreign_apt(arch, suite))
            debs = sorted(CACHE.glob(f"{package}_*_{arch}.deb"))
        return debs[-1]


def _unpacked(package: str, options: tuple[str, ...]) -> DebianKernel:
    """The kernel package unpacked and depmod'ed in the cache (the caller holds the lock)."""
    kver = package.removeprefix("linux-image-")
    root = CACHE / package
    if (root / "lib/modules" / kver / "modules.dep").is_file():
        return DebianKernel(root, kver)
    debs = sorted(CACHE.glob(f"{package}_*.deb"))
    if not debs:
        _apt("download", package, options=options)
        debs = sorted(CACHE.glob(f"{package}_*.deb"))
    partial = CACHE / f".{package}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(partial)], check=True)
    if not (partial / "lib").exists():  # Debian 13 ships its modules in /usr/lib (merged /usr)
        (partial / "lib").symlink_to("usr/lib")
    depmod = shutil.which("depmod") or "/usr/sbin/depmod"
    subprocess.run([depmod, "-b", str(partial), kver], check=True)
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return DebianKernel(root, kver)
