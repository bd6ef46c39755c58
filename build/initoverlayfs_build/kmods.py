"""Which kernel modules go into the mini-initramfs, and their files and index there.

The closure is computed with storage-init's own parsers (storage_init.modules), so the builder
ships exactly what the loader at boot will look for: every module, its modules.dep dependencies
and its modules.softdep `pre:` modules. Modules are stored decompressed (the kernel then needs
no in-kernel decompression, and storage-init needs no zstd), with modules.dep, modules.alias
and modules.softdep trimmed to what is shipped."""

from __future__ import annotations

import gzip
import lzma
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from storage_init.modules import COMPRESSED_SUFFIXES, ModuleIndex, module_name, parse_index
from storage_init.mounts import parse_mountinfo

from .arch import Arch, of_elf
from .errors import BuildError
from .run import need, run
from .ui import Ui

# Always needed: the loop device, the image's filesystem and the overlay.
CORE = ("loop", "erofs", "overlay")
# The common storage families of a generic (not host-only) mini-initramfs, by what they drive.
GENERIC = {
    "virtio-blk": ("virtio_pci", "virtio_blk"),
    "virtio-scsi": ("virtio_pci", "virtio_scsi", "sd_mod"),
    "nvme": ("nvme",),
    "ahci": ("ahci", "sd_mod"),
    "scsi-disk": ("sd_mod",),
    "usb-storage": ("xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd", "usb_storage", "uas",
                    "sd_mod"),
    "mmc": ("mmc_block", "sdhci_pci", "sdhci_acpi"),
}
# The same on arm64 boards: virtio also on MMIO (QEMU's virt machine, cloud VMs); SD cards
# on PCI or the SoC's own controllers (the Raspberry Pi 4's emmc2 is sdhci-iproc, earlier
# Pis' is bcm2835); USB storage behind PCI xHCI (the Pi 4's VL805, which needs its firmware
# loaded through reset-raspberrypi) or the SoC's platform xHCI; NVMe and AHCI on PCIe.
GENERIC_ARM64 = {
    "virtio-blk": ("virtio_pci", "virtio_mmio", "virtio_blk"),
    "virtio-scsi": ("virtio_pci", "virtio_mmio", "virtio_scsi", "sd_mod"),
    "nvme": ("nvme",),
    "ahci": ("ahci", "ahci_platform", "sd_mod"),
    "scsi-disk": ("sd_mod",),
    "usb-storage": ("xhci_pci", "xhci_plat_hcd", "reset_raspberrypi", "dwc2", "usb_storage",
                    "uas", "sd_mod"),
    "mmc": ("mmc_block", "sdhci_pci", "sdhci_iproc", "bcm2835", "sdhci_of_arasan",
            "sdhci_of_dwcmshc"),
}
GENERIC_BY_ARCH = {"amd64": GENERIC, "arm64": GENERIC_ARM64}
# A bootfs on the network (--network): the NBD client and the common NICs, by what they drive.
NETWORK = {
    "nbd": ("nbd",),
    "virtio-net": ("virtio_pci", "virtio_net"),
    "e1000": ("e1000",),
    "e1000e": ("e1000e",),
    "igb": ("igb",),
}
# A bootfs filesystem and what its mount asks modprobe for (which the initramfs does not have).
FS_EXTRAS = {"vfat": ("nls_cp437", "nls_iso8859_1", "nls_utf8"), "msdos": ("nls_cp437",)}
GENERIC_FS = ("ext4", "xfs", "btrfs", "vfat")


def modules_dir(sysroot: Path, kver: str) -> Path:
    for base in ("lib/modules", "usr/lib/modules"):
        candidate = sysroot / base / kver
        if candidate.is_dir():
            if not (candidate / "modules.dep").is_file():
                raise BuildError(f"{candidate}/modules.dep is missing",
                                 f"run `depmod -b {sysroot} {kver}` (the kernel package's "
                                 "post-install step) and try again")
            return candidate
    raise BuildError(f"no modules for kernel {kver} under {sysroot}: neither "
                     f"{sysroot}/lib/modules/{kver} nor {sysroot}/usr/lib/modules/{kver} exists",
                     "install that kernel's modules, or pass the right --kver")


def load_index(directory: Path) -> ModuleIndex:
    def text(name: str) -> str:
        path = directory / name
        return path.read_text(errors="replace") if path.is_file() else ""

    return parse_index(text("modules.dep"), text("modules.alias"), text("modules.builtin"),
                       text("modules.softdep"))


@dataclass(frozen=True)
class Selection:
    modules: tuple[str, ...]  # in load order
    builtin: tuple[str, ...]  # wanted, and built into the kernel
    missing: tuple[str, ...]  # wanted, and neither a module nor built in


def select(index: ModuleIndex, wanted: Iterable[str]) -> Selection:
    names: list[str] = []
    builtin: list[str] = []
    missing: list[str] = []
    for item in dict.fromkeys(wanted):
        resolved = index.resolve(item)
        if not resolved and item.startswith("fs-") and module_name(item[3:]) in index.builtin:
            builtin.append(module_name(item[3:]))  # built-in filesystems have no fs- alias file
        elif not resolved:
            missing.append(item)
        for name in resolved:
            (builtin if name in index.builtin and name not in index.paths else names).append(
                name)
    return Selection(tuple(index.load_order(names)), tuple(dict.fromkeys(builtin)),
                     tuple(missing))


def wanted_modules(drivers: Iterable[str], fstypes: Iterable[str]) -> list[str]:
    wanted = list(CORE)
    for fstype in fstypes:
        wanted.append(f"fs-{fstype}")
        wanted.extend(FS_EXTRAS.get(fstype, ()))
    wanted.extend(drivers)
    return wanted


def generic_drivers(arch: str = "amd64") -> list[str]:
    """The common storage drivers of `arch` (Debian's name), in their families' order."""
    return list(dict.fromkeys(m for family in GENERIC_BY_ARCH[arch].values() for m in family))


def network_drivers() -> list[str]:
    return list(dict.fromkeys(m for family in NETWORK.values() for m in family))


# --- host-only: the drivers of the device that holds /boot ------------------------------------

def boot_device(mountinfo: str, target: str = "/boot") -> tuple[str, str] | None:
    """(major:minor, fstype) of the filesystem mounted at `target`, else of `/`."""
    found = {entry.target: (entry.device, entry.fstype) for entry in parse_mountinfo(mountinfo)}
    return found.get(target) or found.get("/")


def device_drivers(sysfs: Path, devnum: str) -> tuple[list[str], list[str]]:
    """The driver modules and modaliases of a block device and every parent up its sysfs path:
    the disk's own driver, its controller's, the bus bridge's... (host-only selection)."""
    try:
        node = (sysfs / "dev/block" / devnum).resolve(strict=True)
    except OSError:
        raise BuildError(f"no {sysfs}/dev/block/{devnum} for the /boot device",
                         "use --no-hostonly to include the common storage drivers") from None
    drivers: list[str] = []
    aliases: list[str] = []
    devices_root = (sysfs / "devices").resolve()
    while node != devices_root and devices_root in node.parents:
        module_link = node / "driver" / "module"
        if module_link.exists():
            drivers.append(module_link.resolve().name)
        elif (node / "driver").exists():
            drivers.append((node / "driver").resolve().name)
        modalias = node / "modalias"
        if modalias.is_file():
            value = modalias.read_text().strip()
            if value:
                aliases.append(value)
        node = node.parent
    return list(dict.fromkeys(drivers)), list(dict.fromkeys(aliases))


# --- module signatures ------------------------------------------------------------------------

SIGNATURE_MAGIC = b"~Module signature appended~\n"
# struct module_signature (include/linux/module_signature.h), just before the magic: algo,
# hash, id_type, signer_len, key_id_len, 3 pad bytes, the signature's length (big-endian).
SIGNATURE_INFO = struct.Struct(">BBBBB3xI")
PKCS7 = 2  # id_type; the hash is then named inside the PKCS#7 message, not in `hash`
# The DER of each digest algorithm's OID (NIST's 2.16.840.1.101.3.4.2.x, and SHA-1's), as the
# message's digestAlgorithms and signerInfo name it.
DIGEST_OIDS = {
    bytes.fromhex("0609608648016503040201"): "sha256",
    bytes.fromhex("0609608648016503040202"): "sha384",
    bytes.fromhex("0609608648016503040203"): "sha512",
    bytes.fromhex("0609608648016503040204"): "sha224",
    bytes.fromhex("06052b0e03021a"): "sha1",
}


def signature_hash(module: bytes) -> str | None:
    """The hash a signed module's appended PKCS#7 signature names (the kernel's
    CONFIG_MODULE_SIG_HASH), or None for an unsigned module or another signature format."""
    if not module.endswith(SIGNATURE_MAGIC):
        return None
    end = len(module) - len(SIGNATURE_MAGIC) - SIGNATURE_INFO.size
    if end < 0:
        return None
    *_, id_type, _, _, length = SIGNATURE_INFO.unpack_from(module, end)
    if id_type != PKCS7 or not 0 < length <= end:
        return None
    message = module[end - length:end]
    found = [(message.find(oid), name) for oid, name in DIGEST_OIDS.items() if oid in message]
    return min(found)[1] if found else None


def signature_hash_module(ui: Ui, directory: Path, index: ModuleIndex,
                          names: Iterable[str]) -> str | None:
    """`crypto-HASH` for the hash the first signed one of these modules is signed with (a
    kernel's modules are signed in its build, with one hash), for storage-init to load before
    every other module; None when none is signed."""
    for name in names:
        found = signature_hash(_decompress(ui, directory / index.paths[name]))
        if found:
            return f"crypto-{found}"
    return None


def modules_arch(ui: Ui, directory: Path) -> Arch | None:
    """The CPU a kernel's modules are for, from the first one modules.dep lists."""
    for line in (directory / "modules.dep").read_text(errors="replace").splitlines():
        name = line.split(":", 1)[0].strip()
        if name and (directory / name).is_file():
            return of_elf(_decompress(ui, directory / name)[:20])
    return None


# --- the files ---------------------------------------------------------------------------------

def module_files(ui: Ui, directory: Path, index: ModuleIndex,
                 names: Iterable[str]) -> dict[str, bytes]:
    """Relative path -> decompressed content of each module, plus the trimmed index files."""
    files: dict[str, bytes] = {}
    shipped: dict[str, str] = {}
    for name in names:
        source = index.paths[name]
        target = source
        for suffix in COMPRESSED_SUFFIXES:
            if source.endswith(suffix):
                target = source[: -len(suffix)] + ".ko"
        files[target] = _decompress(ui, directory / source)
        shipped[name] = target
    dep_lines = [f"{shipped[n]}: " + " ".join(shipped[d] for d in index.deps.get(n, ())
                                              if d in shipped) for n in shipped]
    files["modules.dep"] = "".join(line.rstrip() + "\n" for line in dep_lines).encode()
    files["modules.alias"] = _trimmed(directory / "modules.alias", shipped, r"alias \S+ (\S+)")
    files["modules.softdep"] = _trimmed(directory / "modules.softdep", shipped,
                                        r"softdep (\S+) ")
    builtin = directory / "modules.builtin"
    files["modules.builtin"] = builtin.read_bytes() if builtin.is_file() else b""
    return files


def _trimmed(path: Path, shipped: dict[str, str], pattern: str) -> bytes:
    if not path.is_file():
        return b""
    rule = re.compile(pattern)
    keep = []
    for line in path.read_text(errors="replace").splitlines():
        match = rule.match(line)
        if match and module_name(match.group(1)) in shipped:
            keep.append(line + "\n")
    return "".join(keep).encode()


def _decompress(ui: Ui, path: Path) -> bytes:
    data = path.read_bytes()
    name = path.name
    try:
        if name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if name.endswith(".ko.gz"):
            return gzip.decompress(data)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise BuildError(f"cannot decompress module {path}: {exc}") from None
    if name.endswith(".ko.zst"):
        return run(ui, [need("zstd", "to decompress .ko.zst modules"), "-d", "-c", "-q",
                        os.fspath(path)])
    return data


# --- why each module is there ------------------------------------------------------------------

_ROLES = {"loop": "the image's loop device", "erofs": "the image's filesystem (EROFS)",
          "overlay": "the overlay over the image", "dm_verity": "dm-verity over the image",
          "nbd": "the bootfs on the network (NBD)"}
_HASHES = ("sha256", "sha512", "sha384", "sha224", "sha1")
_FILESYSTEMS = frozenset({"ext4", "ext2", "ext3", "xfs", "btrfs", "vfat", "fat", "msdos",
                          "f2fs", "exfat"})


def reasons(index: ModuleIndex, shipped: Iterable[str]) -> dict[str, str]:
    """Why each shipped module is in the mini-initramfs, in words: its own role (the image's
    stack, a storage or network family, the bootfs's filesystem, a hash), else what needs it
    (modules.dep) or loads it first (modules.softdep), else a driver named for this machine
    (host-only, --drivers or --add-drivers). Computed from the index alone, so the same for a
    build's plan and for an inspected mini-initramfs."""
    names = list(shipped)
    families: dict[str, str] = {}
    # (an arm64-only driver, such as virtio_mmio, gets its words from GENERIC_ARM64)
    for kind, table in (("storage", GENERIC), ("storage", GENERIC_ARM64),
                        ("network", NETWORK)):
        members: dict[str, list[str]] = {}
        for family, modules in table.items():
            for module in modules:
                members.setdefault(module, []).append(family)
        for module, found in members.items():  # storage's word first: virtio_pci is both
            families.setdefault(module, f"{kind} driver ({', '.join(found)})")
    needed_by: dict[str, list[str]] = {}
    softdep_of: dict[str, list[str]] = {}
    for name in names:
        for dep in index.deps.get(name, ()):
            needed_by.setdefault(dep, []).append(name)
        for soft in index.softdeps.get(name, ()):
            for resolved in index.resolve(soft):
                softdep_of.setdefault(resolved, []).append(name)
    out: dict[str, str] = {}
    for name in names:
        base = name.split("_", 1)[0]
        if name in _ROLES:
            out[name] = _ROLES[name]
        elif name in families:
            out[name] = families[name]
        elif name in _FILESYSTEMS:
            out[name] = "the bootfs's filesystem"
        elif name.startswith("nls_"):
            out[name] = "a code page the FAT bootfs's mount asks for"
        elif base in _HASHES and name not in needed_by:
            out[name] = (f"{base} at its CPU's speed, for the modules' signatures and "
                         "dm-verity")
        elif name in needed_by:
            out[name] = f"needed by {', '.join(needed_by[name])}"
        elif name in softdep_of:
            out[name] = f"loaded before {', '.join(softdep_of[name])} (softdep)"
        else:
            out[name] = "a driver of this machine's boot disk (host-only, or --drivers)"
    return out
