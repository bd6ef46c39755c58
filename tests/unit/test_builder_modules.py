"""Module selection and files, host-only driver discovery, and the config from fstab, on
fixture trees (the real Debian kernel is in the integration tier)."""

from __future__ import annotations

import gzip
import lzma
import subprocess
from pathlib import Path

import pytest
from initoverlayfs_build import fstab, kmods
from initoverlayfs_build.errors import BuildError
from initoverlayfs_build.ui import Ui

from storage_init.config import parse_config
from storage_init.modules import parse_index

UI = Ui("test", quiet=True)
DEP = """\
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci.ko.zst: kernel/drivers/virtio/virtio.ko
kernel/fs/ext4/ext4.ko.gz: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/unrelated.ko:
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/arch/x86/crypto/sha256-ssse3.ko:
"""
ALIAS = """\
alias crypto-sha256 sha256_ssse3
alias cpu:type:x86,ven*fam*mod*:feature:*0089* sha256_ssse3
alias virtio:d00000002v* virtio_blk
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias fs-ext4 ext4
alias crypto-crc32c crc32c_generic
alias usb:v1234* unrelated
"""
SOFTDEP = "softdep ext4 pre: crypto-crc32c\nsoftdep unrelated pre: virtio\n"
BUILTIN = "kernel/drivers/block/loop.ko\nkernel/fs/erofs/erofs.ko\nkernel/fs/overlayfs/overlay.ko\n"


@pytest.fixture
def moddir(tmp_path: Path) -> Path:
    root = tmp_path / "lib/modules/6.1.0-test"
    for line in DEP.splitlines():
        path = root / line.split(":")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        body = b"\x7fELF " + path.name.encode()
        if path.name.endswith(".xz"):
            body = lzma.compress(body)
        elif path.name.endswith(".gz"):
            body = gzip.compress(body)
        elif path.name.endswith(".zst"):
            body = subprocess.run(["zstd", "-q", "-c"], input=body, capture_output=True,
                                  check=True).stdout
        path.write_bytes(body)
    for name, text in (("modules.dep", DEP), ("modules.alias", ALIAS),
                       ("modules.softdep", SOFTDEP), ("modules.builtin", BUILTIN)):
        (root / name).write_text(text)
    return root


def test_selection_is_the_closure_in_load_order_with_builtins_apart(moddir: Path) -> None:
    index = kmods.load_index(moddir)
    wanted = kmods.wanted_modules(["virtio_pci", "virtio-blk", "nvme"], ["ext4"])
    selection = kmods.select(index, wanted)
    assert selection.modules == ("crc32c_generic", "jbd2", "ext4", "virtio", "virtio_pci",
                                 "virtio_ring", "virtio_blk")
    assert selection.builtin == ("loop", "erofs", "overlay")
    assert selection.missing == ("nvme",)


def test_module_files_are_decompressed_and_the_index_trimmed(moddir: Path) -> None:
    index = kmods.load_index(moddir)
    names = kmods.select(index, ["virtio_blk", "fs-ext4"]).modules
    files = kmods.module_files(UI, moddir, index, names)
    assert files["kernel/drivers/block/virtio_blk.ko"] == b"\x7fELF virtio_blk.ko.xz"
    assert files["kernel/fs/ext4/ext4.ko"] == b"\x7fELF ext4.ko.gz"
    assert not any(name.endswith((".xz", ".gz", ".zst")) for name in files)
    shipped = parse_index(files["modules.dep"].decode(), files["modules.alias"].decode(),
                          files["modules.builtin"].decode(), files["modules.softdep"].decode())
    # storage-init's loader, reading the trimmed index, loads the same closure
    assert shipped.load_order(["virtio_blk", "ext4"]) == list(names)
    assert "unrelated" not in files["modules.alias"].decode()
    assert files["modules.softdep"] == b"softdep ext4 pre: crypto-crc32c\n"
    zst = kmods.module_files(UI, moddir, index, ["virtio_pci"])
    assert zst["kernel/drivers/virtio/virtio_pci.ko"] == b"\x7fELF virtio_pci.ko.zst"


def test_missing_modules_or_index_is_a_refusal_with_the_fix(tmp_path: Path,
                                                             moddir: Path) -> None:
    with pytest.raises(BuildError, match=r"no modules for kernel 9\.9"):
        kmods.modules_dir(tmp_path, "9.9")
    (moddir / "modules.dep").unlink()
    with pytest.raises(BuildError, match=r"depmod -b .* 6.1.0-test"):
        kmods.modules_dir(tmp_path, "6.1.0-test")


def test_hostonly_walks_the_sysfs_parents_of_the_boot_device(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    pci = sysfs / "devices/pci0000:00/0000:00:04.0"
    disk = pci / "virtio1/block/vda"
    part = disk / "vda2"
    part.mkdir(parents=True)
    (sysfs / "module/virtio_pci").mkdir(parents=True)
    (sysfs / "bus/pci/drivers/virtio-pci").mkdir(parents=True)
    (sysfs / "bus/pci/drivers/virtio-pci/module").symlink_to(sysfs / "module/virtio_pci")
    (pci / "driver").symlink_to(sysfs / "bus/pci/drivers/virtio-pci")
    (pci / "modalias").write_text("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n")
    (sysfs / "bus/virtio/drivers/virtio_blk").mkdir(parents=True)  # built-in: no module link
    (pci / "virtio1/driver").symlink_to(sysfs / "bus/virtio/drivers/virtio_blk")
    (pci / "virtio1/modalias").write_text("virtio:d00000002v00001AF4\n")
    (sysfs / "dev/block").mkdir(parents=True)
    (sysfs / "dev/block/254:2").symlink_to(part)
    drivers, aliases = kmods.device_drivers(sysfs, "254:2")
    assert drivers == ["virtio_blk", "virtio_pci"]
    assert aliases == ["virtio:d00000002v00001AF4",
                       "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"]
    with pytest.raises(BuildError, match="--no-hostonly"):
        kmods.device_drivers(sysfs, "8:1")


def test_boot_device_from_mountinfo() -> None:
    mountinfo = ("22 1 254:3 / / rw,relatime shared:1 - ext4 /dev/vda3 rw\n"
                 "23 22 254:2 / /boot rw,relatime shared:2 - ext4 /dev/vda2 rw\n")
    assert kmods.boot_device(mountinfo) == ("254:2", "ext4")
    assert kmods.boot_device(mountinfo.splitlines()[0]) == ("254:3", "ext4")


@pytest.mark.parametrize("spec", ["UUID=1234-ABCD", "LABEL=boot", "PARTUUID=0f3c-02",
                                  "PARTLABEL=boot\\040part", "/dev/vda2"])
def test_config_from_the_boot_entry_of_fstab(spec: str) -> None:
    text = f"# comment\n{spec} /boot/ vfat umask=0077 0 2\nUUID=r / ext4 defaults 0 1\n"
    boot = fstab.boot_filesystem(fstab.parse_fstab(text))
    assert boot.spec == spec.replace("\\040", " ")
    assert boot.fstype == "vfat" and boot.image_dir == ""
    config = parse_config(fstab.config_text(boot, "lz4hc,11"))
    assert config.bootfstype == "vfat" and config.fs is None and config.warnings == ()


def test_config_when_boot_is_a_directory_of_the_root_filesystem() -> None:
    boot = fstab.boot_filesystem(fstab.parse_fstab("LABEL=root / xfs defaults 0 1\n"))
    config = parse_config(fstab.config_text(boot, None))
    assert str(config.bootfs) == "LABEL=root" and config.bootfstype == "xfs"
    assert config.fs == "/boot/initoverlayfs-$kver.img"


def test_fstab_without_boot_or_root_or_with_an_unusable_spec_is_refused() -> None:
    with pytest.raises(BuildError, match="neither a /boot nor a / entry"):
        fstab.boot_filesystem(fstab.parse_fstab("tmpfs /tmp tmpfs defaults 0 0\n"))
    with pytest.raises(BuildError, match="device spec"):
        fstab.boot_filesystem(fstab.parse_fstab("sda1 /boot ext4 defaults 0 2\n"))


SHA256_OID = "0609608648016503040201"
SHA512_OID = "0609608648016503040203"


def signed(body: bytes, *oids: str, id_type: int = 2) -> bytes:
    """`body` as sign-file leaves it: a PKCS#7 message (here its head, the signedData OID and
    the digest algorithms' OIDs in that order, then padding), struct module_signature, the magic."""
    message = (bytes.fromhex("3082020006092a864886f70d010702a08201f1") +
               b"".join(bytes.fromhex(oid) + b"\x05\x00" for oid in oids) + b"\x00" * 64)
    return (body + message + kmods.SIGNATURE_INFO.pack(0, 0, id_type, 0, 0, len(message)) +
            kmods.SIGNATURE_MAGIC)


def test_signature_hash_is_the_first_digest_algorithm_the_signature_names() -> None:
    body = b"\x7fELF module"
    assert kmods.signature_hash(signed(body, SHA256_OID)) == "sha256"
    assert kmods.signature_hash(signed(body, SHA512_OID, SHA256_OID)) == "sha512"
    assert kmods.signature_hash(signed(body, "06052b0e03021a")) == "sha1"
    assert kmods.signature_hash(body) is None  # unsigned
    assert kmods.signature_hash(signed(body, SHA256_OID, id_type=1)) is None  # not PKCS#7
    assert kmods.signature_hash(signed(body)) is None  # no digest algorithm it knows
    # a length past the start of the file is not a signature
    assert kmods.signature_hash(kmods.SIGNATURE_INFO.pack(0, 0, 2, 0, 0, 99) +
                                kmods.SIGNATURE_MAGIC) is None
    assert kmods.signature_hash(kmods.SIGNATURE_MAGIC) is None


def test_the_signature_hash_module_is_read_from_a_selected_modules_file(moddir: Path) -> None:
    index = kmods.load_index(moddir)
    first = moddir / "kernel/drivers/virtio/virtio.ko"
    assert kmods.signature_hash_module(UI, moddir, index, ["virtio"]) is None  # unsigned
    first.write_bytes(signed(first.read_bytes(), SHA256_OID))
    assert kmods.signature_hash_module(UI, moddir, index, ["virtio", "ext4"]) == "crypto-sha256"
    # an unsigned one first (an out-of-tree module) does not hide the kernel's own
    assert kmods.signature_hash_module(UI, moddir, index, ["jbd2", "virtio"]) == "crypto-sha256"
    # compressed modules are signed before compression: read decompressed
    xz = moddir / "kernel/drivers/block/virtio_blk.ko.xz"
    xz.write_bytes(lzma.compress(signed(b"\x7fELF", SHA512_OID)))
    assert kmods.signature_hash_module(UI, moddir, index, ["virtio_blk"]) == "crypto-sha512"
    assert kmods.signature_hash_module(UI, moddir, index, []) is None
