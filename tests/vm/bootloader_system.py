"""Debian 12 and 13 machines that boot as users' machines do, never QEMU's -kernel: SeaBIOS,
then GRUB from the disk's BIOS boot partition, with initramfs-tools making the classic
initramfs ("bookworm", "trixie"); or OVMF (UEFI), then systemd-boot from the EFI system
partition, with dracut making it ("trixie-systemd-boot").

Made in two stages, like an image builder makes a disk: the disk with GRUB installed
(grub-install and update-grub run in a chroot on loop devices over the disk's partitions,
cached by content), then per test our .deb installed with apt in that chroot and the kernel
reinstalled with apt, so Debian's own hooks build the pair. The chroot is where a build
cannot see the target's boot disk, which is what the builder's driver choice must survive.

The disk file lives on a tmpfs (/dev/shm): grub-probe follows a loop device to its backing
file and, for a file on a block device, to that device (the host's disk), and then gives up;
on a tmpfs there is no device to follow. Inside the chroot /dev/disk/by-uuid is made for the
loop devices (no udev runs there), so 10_linux names the root by UUID as on a machine.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import debian_system
from .debian_system import BOOT_UUID, ESP_UUID, ROOT_UUID

CACHE = debian_system.REPO / ".cache" / "bootloader-system"
# Debian 12 starts from debian_system's base (debootstrap, systemd, the kernel), Debian 13
# from its own debootstrap; both get initramfs-tools (in place of dracut) and GRUB for BIOS.
# The kernel's .deb stays in apt's cache, for the reinstall.
SUITES = {"bookworm": "Debian 12", "trixie": "Debian 13"}  # the GRUB machines
SYSTEMD_BOOT = "trixie-systemd-boot"  # Debian 13, UEFI, systemd-boot, dracut
MACHINES = (*SUITES, SYSTEMD_BOOT)
PACKAGES = ("initramfs-tools", "grub-pc")
# dracut there, as generic as Debian's initramfs-tools (the chroot is not the machine)
SYSTEMD_BOOT_PACKAGES = ("dracut", "systemd-boot")
DRACUT_GENERIC = 'hostonly="no"\n'
TRIXIE_PACKAGES = ("linux-image-amd64", "erofs-utils", "lz4", "zstd", "python3")
BIOS_MB, ESP_MB, BOOT_MB = 1, 128, 384
# systemd-boot's entries name the kernel's command line from /etc/kernel/cmdline
KERNEL_CMDLINE = f"root=UUID={ROOT_UUID} ro console=ttyS0\n"
ESP = "/boot/efi"
GRUB_DEFAULTS = """
# initoverlayfs tests: the menu and the kernel on the serial console
GRUB_TIMEOUT=1
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_CMDLINE_LINUX="console=ttyS0"
"""
REPORT = "/usr/local/sbin/initoverlayfs-test-report"
ACTION = "/root/initoverlayfs-test-action"  # what the report does after reporting, once
REPORT_SCRIPT = r"""#!/bin/sh
# What the test checks, once the system is up (after initoverlayfs-boot-good.service); then
# the action left in ACTION (once), and power off.
state=$(systemctl is-system-running --wait)
say() { echo "REPORT $*" > /dev/console; }
say "state=$state"
say "storage-init=$(dmesg | grep -c 'storage-init: [0-9]* steps in')"
say "storage-init-journal=$(journalctl -b -o cat | grep -c 'storage-init: [0-9]* steps in')"
grubenv=$(grub-editenv /boot/grub/grubenv list 2>/dev/null)
say "grubenv=$(echo "$grubenv" | grep initoverlayfs_boot | tr -d '\n')"
say "loader-entries=$(ls /boot/efi/loader/entries 2>/dev/null | tr '\n' ' ')"
efivars=/sys/firmware/efi/efivars
selected=$efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
say "loader-selected=$(cat $selected 2>/dev/null | tail -c +5 | tr -d '\0')"
say "esp-ours=$(find /boot/efi -name 'initoverlayfs*' 2>/dev/null | wc -l)"
say "loader-vars=$(ls $efivars 2>&1 | grep -o '^Loader[A-Za-z]*' | tr '\n' ' ')"
say "boot-status=$(initoverlayfs-boot status 2>&1 | tr '\n' ' ')"
journalctl -b -o cat -u initoverlayfs-boot-good.service | while read -r line; do
    say "good-unit=$line"; done
say "boot=$(findmnt -n -o SOURCE,OPTIONS /boot)"
say "boot-files=$(ls /boot | tr '\n' ' ')"
say "entries=$(grep -c '^menuentry' /boot/grub/grub.cfg 2>/dev/null)"
say "our-entries=$(grep -c 'with initoverlayfs' /boot/grub/grub.cfg 2>/dev/null)"
systemctl --failed --no-legend --plain | while read -r unit _; do say "failed=$unit"; done
say "multi-user-us=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"
if [ -e ACTION ]; then
    action=$(cat ACTION)
    rm -f ACTION
    say "action=$action"
    sh -c "$action" > /dev/console 2>&1
    say "action-exit=$?"
    sync
    say "END"
    systemctl reboot
    exit 0
fi
say "END"
systemctl poweroff
""".replace("ACTION", ACTION)
REPORT_UNIT = debian_system.report_unit(REPORT, "multi-user.target initoverlayfs-boot-good.service")


@dataclass(frozen=True)
class Layout:
    """Partition offsets and sizes in bytes."""
    boot: tuple[int, int]
    root: tuple[int, int]
    esp: tuple[int, int] | None  # the EFI system partition, on the systemd-boot machine


def suite_of(machine: str) -> str:
    return "trixie" if machine == SYSTEMD_BOOT else machine


def packages_of(machine: str) -> tuple[str, ...]:
    return SYSTEMD_BOOT_PACKAGES if machine == SYSTEMD_BOOT else PACKAGES


def base_key(machine: str) -> str:
    suite = suite_of(machine)
    start = (debian_system.base_key() if suite == "bookworm"
             else "\n".join([suite, debian_system.MIRROR, *debian_system.BASE, *TRIXIE_PACKAGES]))
    extra = ([DRACUT_GENERIC, KERNEL_CMDLINE, str(ESP_MB)] if machine == SYSTEMD_BOOT
             else [GRUB_DEFAULTS])
    text = "\n".join([start, *packages_of(machine), *extra, str(BOOT_MB), "v3"])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def debootstrapped(suite: str) -> Path:
    """debootstrap's tree of `suite` (minbase with systemd), made once for the machines that
    start from it (both Debian 13 machines: a cold cache debootstraps once, not twice, even
    when both machines are made at once: under a lock of its own)."""
    key = hashlib.sha256("\n".join([suite, debian_system.MIRROR, *debian_system.BASE,
                                     "v1"]).encode()).hexdigest()[:12]
    done = CACHE / f"debootstrap-{suite}-{key}"
    with _locked(f"debootstrap-{suite}"):
        if done.is_dir():
            return done
        for stale in CACHE.glob(f"debootstrap-{suite}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = CACHE / f"partial-debootstrap-{suite}"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase",
                        f"--include={','.join(debian_system.BASE)}", suite, str(partial),
                        debian_system.MIRROR], check=True, capture_output=True)
        partial.rename(done)
        return done


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One maker at a time of one cached thing (each machine's disk, each suite's tree): the
    machines are made two at a time (machines.py), and a second test run may share the
    cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".lock-{name}").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def base_tree(machine: str, root: Path) -> None:
    """Debian with systemd, its generic kernel, its initramfs generator and bootloader's
    package, at `root`."""
    suite = suite_of(machine)
    if suite == "bookworm":
        subprocess.run(["cp", "-a", str(debian_system.base_root()), str(root)], check=True)
        extra: tuple[str, ...] = ()
        update = "apt-get update -q && "
    else:
        subprocess.run(["cp", "-a", str(debootstrapped(suite)), str(root)], check=True)
        extra, update = TRIXIE_PACKAGES, ""
    if machine == SYSTEMD_BOOT:
        (root / "etc/dracut.conf.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/dracut.conf.d/10-generic.conf").write_text(DRACUT_GENERIC)
        (root / "etc/kernel").mkdir(parents=True, exist_ok=True)
        (root / "etc/kernel/cmdline").write_text(KERNEL_CMDLINE)
    # on Debian 12, initramfs-tools replaces dracut (they conflict); its trigger or the
    # kernel's hook makes the classic initrd.img-KVER. (systemd-boot's postinst finds no
    # ESP here: base_disk installs it into the ESP.)
    debian_system.chroot(root, update + "apt-get install -y -q --no-install-recommends "
                         + " ".join((*extra, *packages_of(machine))) + " && apt-get install "
                         "-y -q --reinstall --download-only linux-image-$(ls /lib/modules)")


def layout(disk: Path) -> Layout:
    """Partition 1 is GRUB's BIOS boot partition or the ESP; then /boot and the root."""
    info = subprocess.run(["sgdisk", "-i", "1", str(disk)], check=True, capture_output=True,
                          text=True).stdout
    esp = debian_system.partition_span(disk, 1) if "EFI system partition" in info else None
    return Layout(debian_system.partition_span(disk, 2), debian_system.partition_span(disk, 3),
                  esp)


LOOP_CTL_ADD = 0x4C80
FIRST_LOOP = 100


def _loop(disk: Path, span: tuple[int, int] | None = None) -> str:
    """A loop device numbered 100 or more over the disk (or one partition of it).

    grub-mkconfig's library takes /dev/loop0../dev/loop9 (one digit) for a disk image to be
    opened with GRUB's `loopback` at boot, and writes that into every entry; a machine's
    disk is never that, so the devices here are numbered out of that pattern. The kernel
    makes each (/dev/loop-control's LOOP_CTL_ADD; devtmpfs adds the node)."""
    extra = [] if span is None else ["-o", str(span[0]), "--sizelimit", str(span[1])]
    control = os.open("/dev/loop-control", os.O_RDWR)
    try:
        for number in range(FIRST_LOOP, FIRST_LOOP + 200):
            if Path(f"/sys/block/loop{number}/loop/backing_file").exists():
                continue  # in use
            try:
                fcntl.ioctl(control, LOOP_CTL_ADD, number)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
            device = f"/dev/loop{number}"
            done = subprocess.run(["losetup", *extra, device, str(disk)],
                                  capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return device
    finally:
        os.close(control)
    raise RuntimeError(f"no free loop device from /dev/loop{FIRST_LOOP} on")


@dataclass(frozen=True)
class Loops:
    whole: str
    boot: str
    root: str

    def mounts(self, mnt: str, esp: Path | None) -> str:
        """Shell commands mounting the root, /boot and the ESP's tree at mnt."""
        tree = "" if esp is None else f"; mount --bind {esp} {mnt}{ESP}"
        return f"mount {self.root} {mnt}; mount {self.boot} {mnt}/boot{tree}"

    def unmounts(self, mnt: str, esp: Path | None) -> str:
        """What to unmount, innermost first."""
        return f"{'' if esp is None else mnt + ESP} {mnt}/boot {mnt}"


@contextlib.contextmanager
def loops(disk: Path) -> Iterator[Loops]:
    """Loop devices over the whole disk, /boot and the root, detached at the end."""
    parts = layout(disk)
    made: list[str] = []
    try:
        for span in (None, parts.boot, parts.root):
            made.append(_loop(disk, span))
        yield Loops(made[0], made[1], made[2])
    finally:
        for device in made:
            subprocess.run(["losetup", "-d", device], check=False)


@contextlib.contextmanager
def esp_tree(disk: Path) -> Iterator[Path | None]:
    """The ESP's files as a directory, written back to the partition as a new FAT afterwards
    (None for a disk without an ESP). The kernel here has no vfat: mtools reads and writes
    the FAT, as a tool on any machine can."""
    span = layout(disk).esp
    if span is None:
        yield None
        return
    image = f"{disk}@@{span[0]}"
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        tree = Path(tmp) / "esp"
        tree.mkdir()
        listing = subprocess.run(["mdir", "-b", "-i", image, "::/"], capture_output=True,
                                 text=True, check=False).stdout
        if listing.strip():
            subprocess.run(["mcopy", "-s", "-m", "-n", "-i", image, "::/*", str(tree)],
                           check=True, capture_output=True)
        yield tree
        fat = Path(tmp) / "esp.vfat"
        subprocess.run(["mkfs.vfat", "-C", "-F", "32", "-i", ESP_UUID.replace("-", ""),
                        "-n", "ESP", str(fat), str(span[1] >> 10)],
                       check=True, capture_output=True)
        files = [str(p) for p in tree.iterdir()]
        if files:
            subprocess.run(["mcopy", "-s", "-m", "-i", str(fat), *files, "::/"],
                           check=True, capture_output=True)
        subprocess.run(["dd", f"if={fat}", f"of={disk}", "bs=1M", "oflag=seek_bytes",
                        f"seek={span[0]}", "conv=notrunc", "status=none"], check=True)


def in_chroot(disk: Path, command: str, timeout: float = 1200) -> str:
    """Run a shell command in the disk's root with its /boot (and ESP), /proc, /sys, /dev, and
    /dev/disk/by-uuid for its filesystems, in a private mount namespace. The ESP there is a
    directory (esp_tree), so bootctl and kernel-install are told where it is
    (SYSTEMD_ESP_PATH) and not to check it (SYSTEMD_RELAX_ESP_CHECKS): else /boot passes."""
    with (esp_tree(disk) as esp, loops(disk) as devices,
          tempfile.TemporaryDirectory() as mnt):
        script = f"""set -e
{devices.mounts(mnt, esp).replace("; ", chr(10))}
mount -t proc proc {mnt}/proc
mount -t sysfs sysfs {mnt}/sys
mount --rbind /dev {mnt}/dev
mkdir -p {mnt}/dev/disk/by-uuid 2>/dev/null || true
mount -t tmpfs tmpfs {mnt}/dev/disk/by-uuid
ln -s {devices.boot} {mnt}/dev/disk/by-uuid/{BOOT_UUID}
ln -s {devices.root} {mnt}/dev/disk/by-uuid/{ROOT_UUID}
exec chroot {mnt} /bin/sh -c "$0"
"""
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
             command.replace("@DISK@", devices.whole)],
            capture_output=True, text=True, check=False, timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 "DEBIAN_FRONTEND": "noninteractive", "SYSTEMD_ESP_PATH": ESP,
                 "SYSTEMD_RELAX_ESP_CHECKS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"in the disk's chroot: {command}\nexit {result.returncode}\n"
                           f"{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def base_disk(machine: str) -> Path:
    """The disk with Debian, its classic initramfs and its bootloader installed, cached by
    content."""
    done = CACHE / f"{machine}-{base_key(machine)}.img"
    with _locked(machine):
        if done.exists():
            return done
        for stale in CACHE.glob(f"{machine}-*.img"):
            if stale.name.removeprefix(f"{machine}-").count("-") == 0:  # not another machine's
                stale.unlink()
        work = Path(tempfile.mkdtemp(prefix="base-", dir="/dev/shm"))
        try:
            root = work / "root"
            base_tree(machine, root)
            fstab = (f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"
                     f"UUID={BOOT_UUID} /boot ext4 defaults 0 2\n")
            (root / "etc/hostname").write_text("initoverlayfs-machine\n")
            if machine == SYSTEMD_BOOT:
                (root / ESP.lstrip("/")).mkdir(parents=True, exist_ok=True)
                (root / "etc/fstab").write_text(
                    f"{fstab}UUID={ESP_UUID} {ESP} vfat umask=0077 0 1\n")
                disk = debian_system.make_disk(work, root, esp_mb=ESP_MB, boot_mb=BOOT_MB,
                                               root_spare_mb=768)
                # as systemd-boot's postinst does where it finds the ESP: bootctl install, then
                # kernel-install for each kernel (its 90-loaderentry writes the entry)
                in_chroot(disk, "bootctl install --no-variables --make-entry-directory=yes && "
                                "kver=$(ls /lib/modules) && "
                                "kernel-install add $kver /boot/vmlinuz-$kver")
            else:
                (root / "etc/fstab").write_text(fstab)
                with (root / "etc/default/grub").open("a") as grub:
                    grub.write(GRUB_DEFAULTS)
                disk = debian_system.make_disk(work, root, bios_boot_mb=BIOS_MB,
                                               boot_mb=BOOT_MB, root_spare_mb=768)
                in_chroot(disk, "grub-install --target=i386-pc --modules='part_gpt ext2' "
                                "@DISK@ && update-grub")
            partial = done.with_suffix(".partial")
            subprocess.run(["cp", "--sparse=always", str(disk), str(partial)], check=True)
            partial.rename(done)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return done


def installed_disk(work: Path, package: Path, machine: str) -> tuple[Path, str]:
    """A copy of the base disk in `work` (on a tmpfs) with the .deb installed by apt and the
    kernel reinstalled by apt; and what apt printed."""
    disk = work / f"{machine}.img"
    subprocess.run(["cp", "--sparse=always", str(base_disk(machine)), str(disk)], check=True)
    with loops(disk) as devices, tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", devices.root, mnt], check=True)
        try:
            shutil.copy(package, Path(mnt) / "tmp" / package.name)
            script = Path(mnt) / REPORT.lstrip("/")
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(REPORT_SCRIPT)
            script.chmod(0o755)
            unit = Path(mnt) / "etc/systemd/system/initoverlayfs-test-report.service"
            unit.write_text(REPORT_UNIT)
            wants = Path(mnt) / "etc/systemd/system/multi-user.target.wants"
            wants.mkdir(exist_ok=True)
            (wants / unit.name).symlink_to(f"../{unit.name}")
        finally:
            subprocess.run(["umount", mnt], check=True)
    log = in_chroot(disk, f"apt-get install -y /tmp/{package.name} && rm /tmp/{package.name}"
                          " && apt-get install -y --reinstall "
                          "linux-image-$(ls /lib/modules | head -1)")
    return disk, log


def read_boot_file(disk: Path, name: str) -> bytes:
    """A file of the disk's /boot, read through a read-only loop mount."""
    with loops(disk) as devices, tempfile.TemporaryDirectory() as mnt:
        subprocess.run(["mount", "-o", "ro", devices.boot, mnt], check=True)
        try:
            return (Path(mnt) / name).read_bytes()
        finally:
            subprocess.run(["umount", mnt], check=True)


def edit_disk(disk: Path, edit: str) -> str:
    """Run a shell command with the disk's root mounted at $ROOT, /boot at $ROOT/boot (and
    the ESP at $ROOT/boot/efi); in a subshell, so that its `cd` keeps nothing busy."""
    with (esp_tree(disk) as esp, loops(disk) as devices,
          tempfile.TemporaryDirectory() as mnt):
        script = (f"set -e; {devices.mounts(mnt, esp)}; "
                  f"ROOT={mnt}; trap 'umount {devices.unmounts(mnt, esp)}' EXIT; (\n{edit}\n)")
        # in a mount namespace of its own: whatever happens, the mounts go with it, and the
        # temporary directory is never a mount point when it is removed (removing it with
        # the disk still mounted there would empty the disk)
        result = subprocess.run(["unshare", "--mount", "--propagation", "private",
                                 "sh", "-c", script], capture_output=True, text=True,
                                check=False)
    if result.returncode != 0:
        raise RuntimeError(f"editing the disk: {edit}\n{result.stdout}\n{result.stderr}")
    return result.stdout
