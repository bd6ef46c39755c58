"""initoverlayfs-install end to end with real mkfs.erofs, zstd and cpio on a fixture sysroot
(a stand-in ELF program as the frozen folder, so no Nuitka here), every refusal leaving /boot
as it was, and the atomic pair."""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from initoverlayfs_build import cpio, install, output, pair
from initoverlayfs_build.errors import BuildError

from storage_init.config import image_name, parse_config
from tests.support import bootfiles

from .test_builder_modules import (
    SHA256_OID,
    moddir,  # noqa: F401 - the fixture tree of modules
    signed,
)

KVER = "6.1.0-test"


@pytest.fixture
def sysroot(tmp_path: Path, moddir: Path) -> Path:  # noqa: F811
    root = tmp_path
    (root / "boot").mkdir()
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text("UUID=0123-4567 /boot vfat defaults 0 2\n")
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    shutil.copy(shutil.which("true") or "/bin/true", frozen / "storage-init")
    content = tmp_path / "content"
    (content / "sbin").mkdir(parents=True)
    (content / "sbin/init").write_text("#!/bin/sh\necho real init\n")
    (content / "sbin/init").chmod(0o755)
    return root


def args(sysroot: Path, *extra: str) -> list[str]:
    return ["--sysroot", str(sysroot), "--kver", KVER, "--storage-init",
            str(sysroot / "frozen"), "--from-dir", str(sysroot / "content"), "-q", *extra]


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir())}


def the_image(sysroot: Path) -> Path:
    """The one image of KVER in the sysroot's /boot (its name is the build's own)."""
    found = pair.images_of(sysroot / "boot", KVER)
    assert len(found) == 1, found
    return sysroot / "boot" / found[0]


def mini_config(sysroot: Path) -> str:
    return bootfiles.mini_config_text((sysroot / f"boot/initramfs-{KVER}.img").read_bytes())


def test_install_builds_both_images_and_the_config(sysroot: Path) -> None:
    assert install.main(args(sysroot, "--compress", "zstd")) == 0
    initrd = sysroot / f"boot/initramfs-{KVER}.img"
    image = the_image(sysroot)
    assert stat.S_IMODE(initrd.stat().st_mode) == 0o600
    assert not [p for p in (sysroot / "boot").iterdir() if p.name.startswith(".")]
    config = (sysroot / "etc/initoverlayfs.conf").read_text()
    assert "bootfs UUID=0123-4567\nbootfstype vfat\n" in config

    archive = subprocess.run(["zstd", "-d", "-c"], stdin=initrd.open("rb"),
                             capture_output=True, check=True).stdout
    entries = {e.name: e for e in cpio.read_all(archive)}
    assert entries["init"].data == b"usr/lib/initoverlayfs/storage-init"
    assert entries["dev/console"].rdev == (5, 1)
    # the sysroot's config, then this build's image name and verity keys, which match the
    # image's tree; the image's name is the root hash's start
    shipped = entries["etc/initoverlayfs.conf"].data.decode()
    assert shipped.startswith(config)
    settings = parse_config(shipped)
    assert settings.fs == f"/{image.name}"
    assert settings.verity_roothash and image.name == image_name(
        KVER, settings.verity_roothash[:pair.ID_LENGTH])
    assert settings.verity_salt
    assert bootfiles.verity_refusal(image, settings) is None
    assert "verity_" not in config
    for point in ("proc", "sys", "dev", "run", "boot", "initoverlayfs"):
        assert stat.S_ISDIR(entries[point].mode)
    assert entries["usr/lib/initoverlayfs/storage-init"].mode & 0o111
    assert any(name.startswith("lib") and "libc.so" in name for name in entries)
    modules = {n.rsplit("/", 1)[1] for n in entries if n.endswith(".ko")}
    # generic (the sysroot is not /): the fixture kernel's virtio family; no vfat in it; with
    # verity, the CPU-specific sha256 (storage-init loads it only on a CPU it fits)
    assert modules == {"virtio.ko", "virtio_ring.ko", "virtio_pci.ko", "virtio_blk.ko",
                       "dm-mod.ko", "dm-bufio.ko", "dm-verity.ko", "sha256-ssse3.ko"}
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True,
                             check=True).stdout.decode().split()
    assert sorted(listing) == sorted(entries)

    fsck = subprocess.run(["fsck.erofs", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_no_verity_leaves_the_image_as_mkfs_made_it(sysroot: Path) -> None:
    assert install.main(args(sysroot, "--compress", "none", "--no-verity")) == 0
    image = the_image(sysroot).read_bytes()
    assert b"verity\0\0" not in image[-1024 * 1024:]
    assert the_image(sysroot).name == image_name(
        KVER, hashlib.sha256(image).hexdigest()[:pair.ID_LENGTH])
    archive = (sysroot / f"boot/initramfs-{KVER}.img").read_bytes()
    entries = {e.name: e for e in cpio.read_all(archive)}
    assert "verity_" not in entries["etc/initoverlayfs.conf"].data.decode()
    assert not [n for n in entries if "/md/dm-" in n]
    # the fixture's modules are unsigned: no hash module for their signatures either
    assert not [n for n in entries if "sha256" in n]


def test_signed_modules_bring_their_signatures_hash_without_verity(sysroot: Path) -> None:
    # storage-init loads it before every other module (storage_init.modules.SIGNATURE_HASHES)
    for path in (sysroot / f"lib/modules/{KVER}/kernel/drivers/virtio").glob("*.ko"):
        path.write_bytes(signed(path.read_bytes(), SHA256_OID))
    assert install.main(args(sysroot, "--compress", "none", "--no-verity")) == 0
    archive = (sysroot / f"boot/initramfs-{KVER}.img").read_bytes()
    modules = {e.name.rsplit("/", 1)[1] for e in cpio.read_all(archive)
               if e.name.endswith(".ko")}
    assert modules == {"virtio.ko", "virtio_ring.ko", "virtio_pci.ko", "virtio_blk.ko",
                       "sha256-ssse3.ko"}


def test_two_builds_with_the_same_epoch_are_identical(sysroot: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert install.main(args(sysroot)) == 0
    first = snapshot(sysroot / "boot")
    (sysroot / "content/sbin/init").touch()  # a new mtime must not change the bytes
    assert install.main(args(sysroot, "-f")) == 0
    assert snapshot(sysroot / "boot") == first


def test_generic_selection_ships_the_fixture_kernels_modules(sysroot: Path) -> None:
    (sysroot / "etc/fstab").write_text("LABEL=b /boot ext4 defaults 0 2\n")
    assert install.main(args(sysroot, "--compress", "none", "--add-drivers", "virtio_blk")) == 0
    archive = (sysroot / f"boot/initramfs-{KVER}.img").read_bytes()
    names = {e.name for e in cpio.read_all(archive)}
    base = f"lib/modules/{KVER}/kernel"
    assert {f"{base}/fs/ext4/ext4.ko", f"{base}/crypto/crc32c_generic.ko",
            f"{base}/drivers/block/virtio_blk.ko", f"{base}/drivers/virtio/virtio_pci.ko"} <= names
    assert f"{base}/drivers/unrelated.ko" not in names


def test_named_drivers_replace_the_common_ones(sysroot: Path) -> None:
    # --drivers: the image is for known hardware; only those drivers and their dependencies
    assert install.main(args(sysroot, "--compress", "none", "--no-verity",
                             "--drivers", "virtio_blk")) == 0
    archive = (sysroot / f"boot/initramfs-{KVER}.img").read_bytes()
    modules = {e.name.rsplit("/", 1)[1] for e in cpio.read_all(archive)
               if e.name.endswith(".ko")}
    assert modules == {"virtio.ko", "virtio_ring.ko", "virtio_blk.ko"}  # no virtio_pci
    with pytest.raises(SystemExit):  # one way of choosing the drivers at a time
        install.main(args(sysroot, "--drivers", "nvme", "--no-hostonly"))


def test_a_users_config_is_never_overwritten(sysroot: Path) -> None:
    mine = "# mine\nbootfs LABEL=mine\nbootfstype xfs\n"
    (sysroot / "etc/initoverlayfs.conf").write_text(mine)
    assert install.main(args(sysroot, "--compress", "none")) == 0
    assert (sysroot / "etc/initoverlayfs.conf").read_text() == mine
    archive = (sysroot / f"boot/initramfs-{KVER}.img").read_bytes()
    shipped = {e.name: e.data for e in cpio.read_all(archive)}["etc/initoverlayfs.conf"]
    assert shipped.decode().startswith(mine) and b"\nverity_roothash " in shipped


@pytest.mark.parametrize("case", ["no-modules", "no-mkfs", "bad-initramfs", "exists",
                                  "bad-config", "unknown-driver", "unknown-named-driver",
                                  "bad-frozen", "no-dm-verity"])
def test_refusals_change_nothing_and_say_what_to_do(
        sysroot: Path, case: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    (sysroot / f"boot/initramfs-{KVER}.img").write_bytes(b"previous initramfs")
    (sysroot / f"boot/initoverlayfs-{KVER}.img").write_bytes(b"previous image")
    before = snapshot(sysroot / "boot")
    argv = args(sysroot, "-f")
    expected = {
        "no-modules": "no modules for kernel 9.9",
        "no-mkfs": "mkfs.erofs is not installed",
        "bad-initramfs": "cannot read the source initramfs",
        "exists": "pass -f to replace them",
        "bad-config": "initoverlayfs.conf: line 1 (bootfs)",
        "unknown-driver": "--add-drivers: no_such_driver",
        "unknown-named-driver": "--drivers: nvme is neither a module of 6.1.0-test",
        "bad-frozen": "is not a frozen storage-init folder",
        "no-dm-verity": "has no dm-verity (CONFIG_DM_VERITY), built in or as a module",
    }[case]
    if case == "no-modules":
        argv[argv.index(KVER)] = "9.9"
    elif case == "no-mkfs":
        monkeypatch.setenv("PATH", str(sysroot / "content"))
        monkeypatch.setattr("initoverlayfs_build.run.SBIN", str(sysroot / "content"))
    elif case == "bad-initramfs":
        at = argv.index("--from-dir")
        argv[at:at + 2] = ["--from-initramfs", str(sysroot / "missing.img")]
    elif case == "exists":
        argv.remove("-f")
    elif case == "bad-config":
        (sysroot / "etc/initoverlayfs.conf").write_text("bootfs sda1\n")
    elif case == "unknown-driver":
        argv += ["--add-drivers", "no_such_driver"]
    elif case == "unknown-named-driver":
        argv += ["--drivers", "virtio_blk nvme"]
    elif case == "bad-frozen":
        (sysroot / "frozen/storage-init").unlink()
    elif case == "no-dm-verity":
        dep = sysroot / f"lib/modules/{KVER}/modules.dep"
        dep.write_text("".join(line for line in dep.read_text().splitlines(keepends=True)
                               if "dm-verity" not in line))
    assert install.main(argv) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    assert snapshot(sysroot / "boot") == before
    assert case == "bad-config" or not (sysroot / "etc/initoverlayfs.conf").exists()


def test_the_pair_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    (tmp_path / "a.img").write_bytes(b"old a")
    (tmp_path / "b.img").write_bytes(b"old b")
    (tmp_path / "unreadable").mkdir()  # stat() works, reading fails half-way through the pair
    with pytest.raises(BuildError, match="nothing was changed"):
        output.install(tmp_path, [output.Output("a.img", b"new a"),
                                  output.Output("b.img", tmp_path / "unreadable")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.img", "b.img", "unreadable"]
    assert (tmp_path / "a.img").read_bytes() == b"old a"
    output.install(tmp_path, [output.Output("a.img", b"new a"), output.Output("b.img", b"new b")])
    assert (tmp_path / "a.img").read_bytes() + (tmp_path / "b.img").read_bytes() == (
        b"new anew b")


def test_no_nuitka_is_one_error_saying_what_to_install(
        sysroot: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without Nuitka the freeze died in a traceback from loading its plugin."""
    import importlib.util

    from initoverlayfs_build import freeze

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nuitka" else real(name, *a))
    assert freeze.main(["--output", str(sysroot / "frozen-out")]) == 1
    err = capsys.readouterr().err
    assert "error: Nuitka is not installed for" in err and "-m pip install '.[freeze]'" in err, err
    assert "Traceback" not in err
    assert not (sysroot / "frozen-out").exists()
