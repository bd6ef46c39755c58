"""The builder on real parts: the current Debian cloud and generic kernels' modules (apt-get
download), the Nuitka-frozen storage-init, mkfs.erofs/fsck.erofs, GNU cpio, modprobe's own
dependency resolution, a size-limited tmpfs /boot, and the frozen binary run as PID 1 of a
private PID and mount namespace, chrooted into the mini-initramfs it was built into."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from initoverlayfs_build import compress, cpio, initramfs, install, kmods, pair
from initoverlayfs_build.freeze import Frozen, default_frozen
from initoverlayfs_build.ui import Ui

from storage_init import __version__
from tests.support.debian_kernel import DebianKernel, fetch

from .test_real_boot import TEST_INIT, Run, assert_reached_init, in_new_namespaces, tool

pytestmark = pytest.mark.integration
UI = Ui("test")
EPOCH = "1700000000"


@pytest.fixture(scope="module")
def frozen() -> Frozen:
    return default_frozen(UI)


@pytest.fixture(scope="module")
def cloud() -> DebianKernel:
    return fetch("cloud")


@pytest.fixture(scope="module")
def generic() -> DebianKernel:
    return fetch("generic")


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The initoverlayfs content: a busybox system whose /sbin/init reports what it sees."""
    tree = tmp_path_factory.mktemp("content")
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "boot", "tmp"):
        (tree / d).mkdir()
    shutil.copy(tool("busybox", "busybox-static"), tree / "bin/busybox")
    for applet in ("sh", "cat", "grep", "sleep", "ls"):
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "sbin/init").write_text(TEST_INIT + 'echo "LANG=$LANG"\n')
    (tree / "sbin/init").chmod(0o755)
    (tree / "etc/marker").write_text("from-the-erofs-image\n")
    return tree


def make_sysroot(root: Path, kernel: DebianKernel, fstab: str) -> Path:
    (root / "boot").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "lib/modules").mkdir(parents=True)
    (root / "lib/modules" / kernel.kver).symlink_to(kernel.modules)
    shutil.copy(kernel.root / "boot" / f"config-{kernel.kver}", root / "boot")
    (root / "etc/fstab").write_text(fstab)
    return root


def build(sysroot: Path, kver: str, frozen: Frozen, *extra: str) -> None:
    assert install.main(["--sysroot", str(sysroot), "--kver", kver,
                         "--storage-init", str(frozen.folder), "-q", *extra]) == 0


def unpack(path: Path) -> bytes:
    return initramfs.unpacked_archive(Ui("test", quiet=True), path.read_bytes())


def modprobe_closure(kernel: DebianKernel, module: str) -> set[str]:
    """What modprobe itself would insert for a module, softdeps included."""
    out = subprocess.run([tool("modprobe", "kmod"), "--show-depends", "-d", str(kernel.root),
                          "-S", kernel.kver, module], capture_output=True, text=True,
                         check=True).stdout
    return {Path(line.split()[1]).name for line in out.splitlines()
            if line.startswith("insmod ")}


def test_cloud_kernel_images(tmp_path: Path, cloud: DebianKernel, frozen: Frozen,
                             content: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's "done when": both images for the current Debian cloud kernel."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    sysroot = make_sysroot(tmp_path / "a", cloud, "LABEL=boot /boot ext4 defaults 0 2\n")
    build(sysroot, cloud.kver, frozen, "--from-dir", str(content))
    initrd = sysroot / f"boot/initramfs-{cloud.kver}.img"
    (name,) = pair.images_of(sysroot / "boot", cloud.kver)
    image = sysroot / "boot" / name

    archive = unpack(initrd)
    entries = {e.name: e for e in cpio.read_all(archive)}
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True,
                             check=True).stdout.decode().split()
    assert sorted(listing) == sorted(entries)
    shipped = {Path(n).name for n in entries if n.endswith(".ko")}
    for module in ("loop", "erofs", "overlay", "virtio_blk", "virtio_pci", "virtio_scsi",
                   "sd_mod"):
        assert modprobe_closure(cloud, module) <= shipped, module
    assert "ext4.ko" not in shipped  # built into the cloud kernel
    dep = entries[f"lib/modules/{cloud.kver}/modules.dep"].data.decode()
    listed = {line.split(":", 1)[0] for line in dep.splitlines()}
    prefix = f"lib/modules/{cloud.kver}/"
    assert listed == {n.removeprefix(prefix) for n in entries if n.endswith(".ko")}
    for name, entry in entries.items():
        if name.endswith(".ko"):
            assert entry.data[:4] == b"\x7fELF", name  # stored decompressed

    fsck = subprocess.run([tool("fsck.erofs", "erofs-utils"), f"--extract={tmp_path / 'x'}",
                           str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert (tmp_path / "x/etc/marker").read_text() == "from-the-erofs-image\n"
    # compressed (lz4hc): smaller than the busybox binary alone
    assert image.stat().st_size < (content / "bin/busybox").stat().st_size

    # reproducible: a second sysroot, the same inputs and epoch, the same bytes
    again = make_sysroot(tmp_path / "b", cloud, "LABEL=boot /boot ext4 defaults 0 2\n")
    build(again, cloud.kver, frozen, "--from-dir", str(content))
    for name in (initrd.name, image.name):
        assert (again / "boot" / name).read_bytes() == (sysroot / "boot" / name).read_bytes()


def test_signature_hash_as_kmod_reads_it_and_named_drivers_on_a_real_kernel(
        tmp_path: Path, cloud: DebianKernel, frozen: Frozen, content: Path) -> None:
    # the builder's reading of the modules' PKCS#7 signatures against kmod's (modinfo's
    # sig_hashalgo), on a sample of the real kernel's modules
    sample = sorted(cloud.modules.rglob("*.ko"))[::50]
    assert len(sample) > 10
    for path in sample:
        expected = subprocess.run([tool("modinfo", "kmod"), "-F", "sig_hashalgo", str(path)],
                                  capture_output=True, text=True, check=True).stdout.strip()
        assert kmods.signature_hash(path.read_bytes()) == (expected or None), path
    # unverified and for the VM's disk only: its drivers' closure and the signatures' hash
    sysroot = make_sysroot(tmp_path, cloud, "LABEL=boot /boot ext4 defaults 0 2\n")
    build(sysroot, cloud.kver, frozen, "--from-dir", str(content), "--no-verity",
          "--drivers", "virtio_pci virtio_blk")
    entries = cpio.read_all(unpack(sysroot / f"boot/initramfs-{cloud.kver}.img"))
    shipped = {Path(e.name).name for e in entries if e.name.endswith(".ko")}
    wanted = set().union(*(modprobe_closure(cloud, m) for m in (
        "loop", "erofs", "overlay", "virtio_pci", "virtio_blk", "sha256_ssse3")))
    assert shipped == wanted
    assert "sha256-ssse3.ko" in shipped and "virtio_scsi.ko" not in shipped


def test_generic_kernel_ships_modular_storage_and_ext4_with_its_softdeps(
        tmp_path: Path, generic: DebianKernel, frozen: Frozen, content: Path) -> None:
    sysroot = make_sysroot(tmp_path, generic, "UUID=1b2c /boot ext4 defaults 0 2\n")
    build(sysroot, generic.kver, frozen, "--from-dir", str(content), "--compress", "zstd")
    archive = unpack(sysroot / f"boot/initramfs-{generic.kver}.img")
    entries = {e.name: e for e in cpio.read_all(archive)}
    shipped = {Path(n).name for n in entries if n.endswith(".ko")}
    for module in ("ext4", "virtio_blk", "virtio_scsi", "nvme", "ahci", "sd_mod", "uas",
                   "mmc_block", "loop", "erofs", "overlay"):
        needed = modprobe_closure(generic, module)
        assert needed <= shipped, f"{module}: {needed - shipped} missing"
    assert {"crc32c_generic.ko", "crc32c-intel.ko"} & shipped  # ext4's softdep
    softdep = entries[f"lib/modules/{generic.kver}/modules.softdep"].data.decode()
    assert "softdep ext4 pre: crypto-crc32c" in softdep
    alias = entries[f"lib/modules/{generic.kver}/modules.alias"].data.decode()
    assert len(alias.splitlines()) < 3000  # trimmed from the kernel's ~26000 lines


def test_from_an_existing_initramfs_keeps_early_microcode(
        tmp_path: Path, cloud: DebianKernel, frozen: Frozen, content: Path) -> None:
    early = cpio.write([cpio.Entry("kernel", stat.S_IFDIR | 0o755),
                        cpio.Entry("kernel/x86", stat.S_IFDIR | 0o755),
                        cpio.Entry("kernel/x86/microcode", stat.S_IFDIR | 0o755),
                        cpio.Entry("kernel/x86/microcode/GenuineIntel.bin",
                                   stat.S_IFREG | 0o644, b"ucode")], 0)
    packed = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"],
                            input="\n".join(sorted(str(p.relative_to(content))
                                                   for p in content.rglob("*"))).encode(),
                            cwd=content, capture_output=True, check=True).stdout
    source = tmp_path / "dracut.img"
    source.write_bytes(early + subprocess.run(["xz", "--check=crc32", "-c"], input=packed,
                                              capture_output=True, check=True).stdout)
    sysroot = make_sysroot(tmp_path / "root", cloud, "LABEL=boot /boot ext4 defaults 0 2\n")
    build(sysroot, cloud.kver, frozen, "--from-initramfs", str(source))
    initrd = (sysroot / f"boot/initramfs-{cloud.kver}.img").read_bytes()
    assert initrd.startswith(early)
    segments = initramfs.split(initrd)
    # the default compression for this kernel (6.1, CONFIG_RD_LZ4=y), with its end mark
    assert [s.kind for s in segments] == ["cpio", "lz4"]
    assert initrd.endswith(compress.LZ4_END_MARK) and len(initrd) % 4 == 0
    fsck = subprocess.run([tool("fsck.erofs", "erofs-utils"), f"--extract={tmp_path / 'x'}",
                           str(sysroot / "boot" / pair.images_of(sysroot / "boot",
                                                                 cloud.kver)[0])],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert (tmp_path / "x/sbin/init").read_text().startswith("#!/bin/sh")
    assert not (tmp_path / "x/kernel").exists()  # microcode stays in the early segment


def test_a_full_boot_partition_is_refused_and_left_alone(
        tmp_path: Path, cloud: DebianKernel, frozen: Frozen, content: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    sysroot = make_sysroot(tmp_path, cloud, "LABEL=boot /boot ext4 defaults 0 2\n")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "smallboot",
                    str(sysroot / "boot")], check=True)
    try:
        (sysroot / f"boot/initramfs-{cloud.kver}.img").write_bytes(b"previous")
        argv = ["--sysroot", str(sysroot), "--kver", cloud.kver, "-f", "--storage-init",
                str(frozen.folder), "--from-dir", str(content)]
        assert install.main(argv) == 1
        assert "not enough room" in capsys.readouterr().err
        assert sorted(p.name for p in (sysroot / "boot").iterdir()) == [
            f"initramfs-{cloud.kver}.img"]
        assert (sysroot / f"boot/initramfs-{cloud.kver}.img").read_bytes() == b"previous"
    finally:
        subprocess.run(["umount", str(sysroot / "boot")], check=True)


# --- the frozen binary as PID 1 ------------------------------------------------------------------

@pytest.fixture
def mini_root(tmp_path: Path, frozen: Frozen, content: Path) -> Iterator[tuple[Path, str, str]]:
    """A mini-initramfs built for this machine's kernel (whose loop, erofs and overlay are
    built in), unpacked by our reader onto a tmpfs like the kernel's rootfs, and a bootfs
    holding its image on a loop device."""
    kver = os.uname().release
    boot_uuid = str(uuid.uuid4())
    sysroot = tmp_path / "sysroot"
    moddir = sysroot / "lib/modules" / kver
    moddir.mkdir(parents=True)
    (moddir / "modules.dep").write_text("")
    (moddir / "modules.builtin").write_text(
        "kernel/drivers/block/loop.ko\nkernel/fs/erofs/erofs.ko\nkernel/fs/overlayfs/overlay.ko\n"
        "kernel/fs/ext4/ext4.ko\n")
    (sysroot / "boot").mkdir()
    (sysroot / "etc").mkdir()
    (sysroot / "etc/initoverlayfs.conf").write_text(
        f"bootfs UUID={boot_uuid}\nbootfstype ext4\nudev_trigger block\n")
    # --no-verity: this machine's kernel has no device-mapper (no CONFIG_MD), so the image is
    # mounted from the loop device here; the VM tier boots verified images on Debian kernels
    build(sysroot, kver, frozen, "--from-dir", str(content), "--no-hostonly", "--no-verity")
    ext4 = tmp_path / "boot.ext4"
    subprocess.run([tool("mkfs.ext4", "e2fsprogs"), "-q", "-F", "-U", boot_uuid, "-d",
                    str(sysroot / "boot"), str(ext4), "64M"], check=True)
    loop = subprocess.run([tool("losetup", "mount"), "--find", "--show", "--read-only",
                           str(ext4)], check=True, capture_output=True, text=True).stdout.strip()
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "rootfs", str(root)], check=True)
    try:
        loaded = initramfs.load(UI, sysroot / f"boot/initramfs-{kver}.img")
        initramfs.extract(UI, loaded.entries, root)
        yield root, boot_uuid, loop
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)


def test_frozen_binary_dry_run_in_a_private_namespace(mini_root: tuple[Path, str, str]) -> None:
    root, boot_uuid, _ = mini_root
    # sh stays PID 1 (no exec): as PID 1, storage-init would boot whatever argv says
    done = subprocess.run(
        in_new_namespaces("/bin/sh", "-c",
                          f"chroot {root} /init --dry-run --cmdline 'quiet rd.shell=0'"),
        capture_output=True, text=True, timeout=60, env={"LANG": "C.UTF-8"})
    assert done.returncode == 0, done.stderr
    assert f"UUID={boot_uuid}" in done.stdout
    for step in ("mount-api", "wait-bootfs", "mount-image", "switch-root", "exec-init"):
        assert step in done.stdout, done.stdout


def test_frozen_binary_command_line_by_hand(mini_root: tuple[Path, str, str]) -> None:
    # The frozen binary has no argparse, re or locale (storage_init/cli.py parses its command
    # line): --help, --version and a usage error work in it as in the tests' interpreter.
    root, _, _ = mini_root
    results = {}
    for args in ("--help", "--version", "--dry-run --bogus"):
        done = subprocess.run(in_new_namespaces("/bin/sh", "-c", f"chroot {root} /init {args}"),
                              capture_output=True, text=True, timeout=60,
                              env={"LANG": "C.UTF-8"})
        results[args] = (done.returncode, done.stdout, done.stderr)
    assert results["--help"][0] == 0, results["--help"]
    assert results["--help"][1].startswith("usage: storage-init [-h] [--dry-run]")
    assert "rd.initoverlayfs.bootfs=" in results["--help"][1]
    assert results["--version"][:2] == (0, f"storage-init {__version__}\n")
    assert results["--dry-run --bogus"][0] == 2
    assert results["--dry-run --bogus"][2].endswith(
        "storage-init: error: unrecognized arguments: --bogus\n")


def test_frozen_binary_boots_as_pid1_from_its_mini_initramfs(
        mini_root: tuple[Path, str, str]) -> None:
    """The kernel's view: /init of the unpacked mini-initramfs is PID 1, with no /proc, no
    ld.so.cache, nothing of the host, and the kernel's LANG= in its environment."""
    root, boot_uuid, loop = mini_root
    done = subprocess.run(
        in_new_namespaces(tool("chroot", "coreutils"), str(root), "/init", "stray-word"),
        capture_output=True, text=True, timeout=90, env={"LANG": "C.UTF-8", "TERM": "linux"})
    run = Run(done.returncode, done.stdout, done.stderr)
    assert done.returncode == 0, f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    assert_reached_init(run, "stray-word")
    assert run.value("LANG") == "C.UTF-8"
    mounts = run.mounts()
    assert mounts["/"].fstype == "overlay"
    assert mounts["/run/initoverlayfs/lower"].fstype == "erofs"
    assert mounts["/boot"].source == loop
    # the old initramfs (this tmpfs) was emptied by storage-init's child before init went on
    assert sorted(os.listdir(root)) == [], sorted(os.listdir(root))
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    assert f"UUID={boot_uuid}" in log


def test_frozen_binary_failure_names_the_image_and_ends_pid1(
        mini_root: tuple[Path, str, str]) -> None:
    root, boot_uuid, _ = mini_root
    missing = f"/not-there-{uuid.uuid4()}.img"
    (root / "etc/initoverlayfs.conf").write_text(
        f"bootfs UUID={boot_uuid}\nfs {missing}\nudev_trigger block\n")
    done = subprocess.run(
        in_new_namespaces(tool("chroot", "coreutils"), str(root), "/init"),
        capture_output=True, text=True, timeout=90, env={})
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    assert f"Failed to find the image /boot{missing}" in log + done.stderr
    # no rd.emergency on this machine's command line: the default policy, reboot, which from
    # a PID namespace's init ends the namespace with SIGHUP
    assert done.returncode in (-signal.SIGHUP, 128 + signal.SIGHUP), (
        done.returncode, done.stderr)


def test_hostonly_finds_this_machines_disk_drivers_in_a_real_kernel(
        generic: DebianKernel) -> None:
    """The real /sys of this machine: the first disk that is not virtual, walked up to its
    controller, resolved against the generic kernel's modules.alias."""
    disks = [link for link in sorted(Path("/sys/dev/block").iterdir())
             if "/virtual/" not in os.path.realpath(link)]
    if not disks:
        pytest.fail("this machine has no non-virtual block device to walk (CI runs on one)")
    drivers, aliases = kmods.device_drivers(Path("/sys"), disks[0].name)
    index = kmods.load_index(generic.modules)
    resolved = {name for alias in aliases for name in index.resolve(alias)}
    resolved |= {name for driver in drivers for name in index.resolve(driver)}
    path = os.path.realpath(disks[0])
    if "/virtio" in path:
        assert {"virtio_blk", "virtio_pci"} <= resolved, (path, drivers, aliases)
    assert resolved, (path, drivers, aliases)
    assert kmods.select(index, resolved).modules  # loadable modules of the generic kernel
