"""storage-init frozen for another CPU (`initoverlayfs-freeze --arch arm64` on x86_64): Nuitka
run by that CPU's own Python, in a Debian tree of that CPU, through qemu-user.

Why so: the frozen binary is linked with the target's static libpython, extension modules and
glibc, and Nuitka takes all of them from the Python that runs it; a cross compiler would still
need that Python's build and would change nothing else. Under qemu-user the freeze took 128 s
here (8 s natively: storage-init is mostly bytecode), and the tree, made once and cached, 3 min.
The tree is also where the builder takes the libraries of a foreign frozen storage-init from
(LIBRARIES_MARK in the frozen folder names it): those it was linked with."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from importlib import metadata
from pathlib import Path

from .arch import Arch
from .errors import BuildError
from .run import need, run
from .ui import Ui

SUITE = "bookworm"  # Debian 12: its Python 3.11 is the one the project is tested with
PACKAGES = ("python3", "python3-dev", "gcc", "libc6-dev", "binutils", "patchelf", "libudev1")
# Pure Python, copied from this machine's own installs: the same versions as a native freeze,
# and no network needed inside the tree (no pip, no CA bundle there)
DISTRIBUTIONS = ("nuitka", "pyudev", "pyroute2")
SITE = "opt/initoverlayfs-freeze"  # in the tree: DISTRIBUTIONS
TREE_KEY = ".initoverlayfs-tree"  # in the tree: tree_key() of what made it
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def tree_key(arch: Arch) -> str:
    """What the tree is made of: the suite, the packages, the distributions' versions, this
    file. A change of any makes a new tree."""
    digest = hashlib.sha256(f"{arch.name}\0{SUITE}\0{' '.join(PACKAGES)}\0".encode())
    for name in DISTRIBUTIONS:
        digest.update(f"{name}={_version(name)}\0".encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        raise BuildError(f"{name} is not installed for this Python; a freeze for another "
                         "CPU copies it into that CPU's tree",
                         "pip install '.[freeze]' in the source checkout") from None


def check_host(arch: Arch) -> None:
    """What a freeze for `arch` needs of this machine, checked before the tree is made: root
    (mmdebstrap's root mode, the chroot) and qemu-user through binfmt_misc."""
    if os.geteuid() != 0:
        raise BuildError(f"a freeze for {arch.name} makes a Debian {arch.name} tree and runs "
                         "Nuitka in a chroot of it, which needs root", "run it as root")
    check_emulation(arch)


def check_emulation(arch: Arch) -> None:
    """The tree's programs run here only through binfmt_misc's qemu-user entry."""
    entry = BINFMT / f"qemu-{arch.machine}"
    try:
        enabled = entry.read_text().splitlines()[:1] == ["enabled"]
    except OSError:
        enabled = False
    if not enabled:
        raise BuildError(
            f"{arch.name} programs do not run on this machine: {entry} is "
            f"{'disabled' if entry.exists() else 'missing'}",
            "apt-get install qemu-user-static (it registers the entry); where no systemd did "
            f"so: mount -t binfmt_misc binfmt_misc {BINFMT}; "
            f"cat /usr/lib/binfmt.d/qemu-{arch.machine}.conf > {BINFMT}/register")


def make_tree(ui: Ui, arch: Arch, root: Path) -> Path:
    """The Debian tree of `arch` at `root` that freezes storage-init (mmdebstrap, then this
    machine's DISTRIBUTIONS); kept while tree_key() is unchanged."""
    key = tree_key(arch)
    stamp = root / TREE_KEY
    if stamp.is_file() and stamp.read_text().strip() == key:
        ui.info(f"reusing the {arch.name} tree {root}")
        return root
    mmdebstrap = need("mmdebstrap", f"to make the Debian {arch.name} tree that freezes "
                                    "storage-init for it")
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    with ui.step(f"making a Debian {SUITE} {arch.name} tree in {root} (once; a few minutes)"):
        # without a mirror, mmdebstrap takes this machine's apt sources
        run(ui, [mmdebstrap, "--quiet", "--variant=apt", f"--architectures={arch.name}",
                 f"--include={','.join(PACKAGES)}", SUITE, os.fspath(partial)])
    copy_distributions(partial / SITE)
    (partial / TREE_KEY).write_text(key + "\n")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)
    return root


def copy_distributions(site: Path) -> None:
    """DISTRIBUTIONS' files as installed here (pure Python), without their scripts and
    bytecode caches."""
    for name in DISTRIBUTIONS:
        _version(name)
        dist = metadata.distribution(name)
        for file in dist.files or ():
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                target = site / str(file)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)


def freeze_in_tree(ui: Ui, arch: Arch, tree: Path, sources: list[Path], out: Path,
                   network: bool) -> Path:
    """initoverlayfs-freeze run by the tree's Python, in a chroot of it in a private mount
    namespace (the binds vanish with it): `sources` (storage_init, initoverlayfs_build) are
    bound under /src, `out` at /out (check_host first). Returns the frozen folder in `out`."""
    binds = [(source, f"src/{source.name}") for source in sources] + [(out, "out")]
    lines = ["set -e"]
    for source, inside in binds:
        target = shlex.quote(os.fspath(tree / inside))
        lines += [f"mkdir -p {target}",
                  f"mount --bind {shlex.quote(os.fspath(source))} {target}"]
    lines += [f"mount -t proc proc {shlex.quote(os.fspath(tree / 'proc'))}",
              f"mount --rbind /dev {shlex.quote(os.fspath(tree / 'dev'))}"]
    command = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
               f"PYTHONPATH=/src:/{SITE}", "python3", "-m", "initoverlayfs_build.freeze",
               "--output", "/out/storage-init", *(["--network"] if network else [])]
    lines.append(f"exec chroot {shlex.quote(os.fspath(tree))} {shlex.join(command)}")
    with ui.step(f"compiling storage-init for {arch.name} with Nuitka under qemu-user "
                 "(a few minutes)"):
        run(ui, [need("unshare", "to bind the sources into the tree privately"), "--mount",
                 "--propagation", "private", "sh", "-c", "\n".join(lines)])
    return out / "storage-init"
