"""The C original (github.com/containers/initoverlayfs) as the benchmark's third column, built
from its source: its storage-init, compiled as its build script does (gcc -O2, libblkid), in a
mini-initramfs of its own that boots the same EROFS image from the same disk.

The C original cannot load kernel modules, so its /init is a small static wrapper
(c_original_init.c) that loads the same modules our storage-init loads on this disk,
dependencies first, and then execs it. Its config is ours (the keys it reads, bootfs,
bootfstype and fstype, mean the same), and it finds the image at its default path,
/boot/initoverlayfs-KVER.img, where the benchmark's disk has a copy of ours (whose
mini-initramfs names the build's own file name instead).

The source is not fetched here (the benchmark runs without network): pass a checkout or a
git directory of it, or clone it into .cache/c-original/src."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from initoverlayfs_build import compress, cpio, elf, kmods
from initoverlayfs_build.mini import CONSOLE, Tree
from initoverlayfs_build.ui import Ui

from storage_init import modules
from tests.support.debian_kernel import DebianKernel

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_SOURCE = REPO / ".cache" / "c-original" / "src"
UPSTREAM = "https://github.com/containers/initoverlayfs"
# What our storage-init loads on the benchmark's virtio-blk disk (its timings' modules_loaded
# on the cloud kernel); the wrapper loads these with their dependencies.
MODULES = ("loop", "erofs", "overlay", "virtio_pci", "virtio_blk")
STORAGE_INIT = "usr/sbin/initoverlayfs"
MODULE_LIST = "etc/c-original-modules"
# Directories its code mounts on or moves into: the loop-mounted image, the new root, the
# overlay's upper and work directories on the initramfs itself.
DIRECTORIES = ("dev", "proc", "sys", "run", "boot", "etc", "initrofs", "initoverlayfs",
               "overlay/upper", "overlay/work")


class SourceMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class Built:
    initramfs: Path
    unpacked_bytes: int
    commit: str  # of the source built, or "unknown" for a plain folder
    modules: tuple[str, ...]


def checkout(source: Path, work: Path) -> tuple[Path, str]:
    """A folder with initoverlayfs.c: `source` itself, or HEAD of a (bare) git directory."""
    if (source / "initoverlayfs.c").is_file():
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=False)
        return source, head.stdout.strip() if head.returncode == 0 else "unknown"
    if (source / "HEAD").is_file() and (source / "objects").is_dir():
        commit = subprocess.run(["git", "--git-dir", str(source), "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        tree = work / "c-original-src"
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "--git-dir", str(source), "archive", "HEAD"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        return tree, commit
    raise SourceMissing(
        f"the C original's source is not at {source} (no initoverlayfs.c, not a git "
        f"directory): `git clone {UPSTREAM} {DEFAULT_SOURCE}` on a machine with network, "
        "or pass --c-original DIR")


def compile_programs(src: Path, work: Path) -> tuple[Path, Path]:
    """Its storage-init as its scripts/build-bin-only.sh builds it with gcc, and the wrapper."""
    work.mkdir(parents=True, exist_ok=True)
    binary, wrapper = work / "initoverlayfs", work / "c-original-init"
    for command in (["gcc", "-O2", "-o", str(binary), str(src / "initoverlayfs.c"), "-lblkid"],
                    ["gcc", "-O2", "-static", "-o", str(wrapper),
                     str(HERE / "c_original_init.c")]):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}"
                               "\n(the C original needs Debian's libblkid-dev; scripts/setup "
                               "installs it)")
    return binary, wrapper


def build(source: Path, work: Path, kernel: DebianKernel, config: Path) -> Built:
    src, commit = checkout(source, work)
    binary, wrapper = compile_programs(src, work / "c-original-bin")
    index = kmods.load_index(kernel.modules)
    names = index.load_order(MODULES)
    tree = Tree()
    for d in DIRECTORIES:
        tree.directory(d)
    tree.node("dev/console", 0o020000, CONSOLE)
    tree.file("init", wrapper.read_bytes(), 0o755)
    tree.file(STORAGE_INIT, binary.read_bytes(), 0o755)
    for lib in elf.closure([binary], elf.search_dirs()):
        tree.file(lib.path, lib.source.read_bytes(), 0o755)
    listed = []
    cpu = modules.cpu_patterns(index.aliases)
    for name in names:
        relative = index.paths[name]
        if not relative.endswith(".ko"):
            raise RuntimeError(f"{relative}: the wrapper loads uncompressed modules only")
        path = f"lib/modules/{kernel.kver}/{relative}"
        tree.file(path, (kernel.modules / relative).read_bytes())
        listed.append("\t".join(("/" + path, *cpu.get(name, ()))))
    tree.file(MODULE_LIST, ("\n".join(listed) + "\n").encode())
    tree.file("etc/initoverlayfs.conf", config.read_bytes())
    archive = cpio.write(tree.entries.values(), 0)
    out = work / "c-original-initramfs.img"
    # compressed as initoverlayfs-install compresses ours for this kernel: like for like
    method = compress.default_method(kernel.kver, kernel.root / "boot" / f"config-{kernel.kver}")
    out.write_bytes(compress.finish(method, kernel.kver,
                                    compress.compress(Ui("benchmark", quiet=True), method,
                                                      archive)))
    os.chmod(out, 0o644)
    return Built(out, len(archive), commit, tuple(names))
