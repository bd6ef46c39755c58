"""A real Debian system for the systemd boot: debootstrap (systemd, dracut, the generic kernel),
cached between runs; our .deb installed into it with dpkg in a chroot; its images built there
by the kernel-install plugin and initoverlayfs-install; one GPT disk with a separate ext4
/boot and ext4 root, both named in its fstab. A unit in the real root reports the boot on the
console and powers off."""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from initoverlayfs_build import pair

from .images import content_tree

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "debian-system"
# the last run's medians and ratios to dracut, which scripts/benchmark's goals table shows
COMPARISON = CACHE / "comparison.json"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# debootstrap's resolver would pick initramfs-tools for the kernel, so dracut and the
# kernel come after it, from apt in the chroot.
BASE = ("systemd", "systemd-sysv", "udev", "e2fsprogs", "kmod")
EXTRA = ("dracut", "linux-image-amd64", "erofs-utils", "lz4", "zstd", "python3")
ROOT_UUID = "3c8e9a5f-1b2d-4e6f-8a7b-9c0d1e2f3a4b"
BOOT_UUID = "7d4b2e1a-6c5f-4a3b-9e8d-0f1a2b3c4d5e"
ESP_UUID = "2E1D-0C0B"  # a FAT volume id
SYSTEMD_IMAGE = "initoverlayfs-systemd-mode.img"  # on /boot, next to the plugin's image
REPORT = "/usr/local/sbin/initoverlayfs-test-report"
REPORT_SCRIPT = r"""#!/bin/sh
# What the test checks, once the system is up: then power off. With initoverlayfs.test-rebuild
# on the command line, it rebuilds the pair instead (from the small busybox tree of the VM
# tier, which TCG builds in a minute, where Debian's initrd took minutes), saying on the
# console when the mini-initramfs's temporary appears in /boot: the image's is written and
# fsync'ed by then, and the renames, the checkpoint and the removal follow within a second
# (the test cuts the power in that window).
state=$(systemctl is-system-running --wait)
say() { echo "REPORT $*" > /dev/console; }
if grep -qw initoverlayfs.test-rebuild /proc/cmdline; then
    kver=$(uname -r)
    ( until [ -e "$(echo /boot/.initramfs-*.tmp*)" ]; do sleep 0.02; done
      say "rebuild-window" ) &
    initoverlayfs-install -f -q --no-hostonly --kver "$kver" --from-dir TEST_CONTENT \
        > /dev/console 2>&1
    say "rebuild-done=$?"
    sync
    systemctl poweroff
    exit 0
fi
say "state=$state"
say "cmdline=$(cat /proc/cmdline)"
say "root=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS /)"
say "boot=$(findmnt -n -o SOURCE,FSTYPE,OPTIONS /boot)"
say "boot-uuid=$(findmnt -n -o UUID /boot)"
say "root-uuid=$(findmnt -n -o UUID /)"
say "multi-user-us=$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)"
say "initrd-release=$([ -e /etc/initrd-release ] && echo yes || echo no)"
say "release-ran=$(systemctl show -P ConditionResult initoverlayfs-release.service)"
say "release-result=$(systemctl show -P Result initoverlayfs-release.service)"
# the boot report, as a user gets it (the release unit kept it; inspect reads it back), on
# one line, and its picture
if [ -d /run/log/initoverlayfs ]; then
    say "inspect=$(initoverlayfs-inspect --boot --json --plot /run/log/initoverlayfs/boot.svg |
        tr -d '\n')"
    say "plot-bytes=$(wc -c < /run/log/initoverlayfs/boot.svg)"
    journalctl -b -o cat |
        grep -c '^initoverlayfs: storage-init: [0-9]* steps in .*; the initrd phase read ' |
        while read -r count; do say "journal-report=$count"; done
fi
systemctl --failed --no-legend --plain | while read -r unit _; do say "failed=$unit"; done
systemd-analyze | head -1 | while read -r line; do say "analyze=$line"; done
say "END"
systemctl poweroff
"""
TEST_CONTENT = "/usr/local/share/initoverlayfs-test-content"  # the rebuild's content
REPORT_SCRIPT = REPORT_SCRIPT.replace("TEST_CONTENT", TEST_CONTENT)


def report_unit(script: str, after: str = "") -> str:
    """The unit that runs a test's report script once the system is up."""
    return f"""[Unit]
Description=initoverlayfs test: report the boot on the console and power off
{f"After={after}" if after else ""}

[Service]
# simple, not oneshot: its own job must not hold back `is-system-running --wait`
Type=simple
ExecStart={script}

[Install]
WantedBy=multi-user.target
"""


REPORT_UNIT = report_unit(REPORT)


@dataclass(frozen=True)
class System:
    root: Path  # the installed tree, after the package and the builds
    kver: str
    vmlinuz: Path
    images: dict[str, Path]  # "dracut", "rdinit", "systemd" -> initrd
    disk: Path
    log: str  # what the package install and the systemd-mode build printed
    plugin_output: str  # what `kernel-install add` printed


def base_key() -> str:
    text = "\n".join([SUITE, MIRROR, *BASE, *EXTRA, "v1"])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def chroot(root: Path, command: str, env: dict[str, str] | None = None) -> str:
    """Run a shell command in the tree, with /proc /sys /dev mounted in a private mount
    namespace (gone when it ends, even on failure)."""
    script = (f"mount -t proc proc {root}/proc && mount -t sysfs sysfs {root}/sys && "
              f"mount --rbind /dev {root}/dev && exec chroot {root} /bin/sh -c \"$0\"")
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, command],
        capture_output=True, text=True, check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
             "DEBIAN_FRONTEND": "noninteractive", **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"in the chroot: {command}\nexit {result.returncode}\n"
                           f"{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def base_root() -> Path:
    """debootstrap + dracut + the kernel, built once and kept in .cache/debian-system."""
    CACHE.mkdir(parents=True, exist_ok=True)
    done = CACHE / base_key()
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_dir():
            return done
        for stale in CACHE.iterdir():
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="base-", dir=CACHE))
        root = work / "root"
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE)}",
                        SUITE, str(root), MIRROR], check=True, capture_output=True)
        # The kernel's postinst runs dracut: that initrd is the plain-dracut baseline.
        chroot(root, "apt-get install -y -q --no-install-recommends " + " ".join(EXTRA)
               + " && apt-get clean")
        root.rename(done)
        work.rmdir()
        return done


def kernel_version(root: Path) -> str:
    found = sorted(p.name for p in (root / "lib/modules").iterdir())
    if len(found) != 1:
        raise RuntimeError(f"expected one kernel in the Debian root, found {found}")
    return found[0]


def prepare(work: Path, package: Path) -> System:
    """Copy the cached base, install the package, build all three initrds, make the disk."""
    root = work / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(base_root()), str(root)], check=True)
    kver = kernel_version(root)
    (root / "etc/fstab").write_text(f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"
                                    f"UUID={BOOT_UUID} /boot ext4 defaults 0 2\n")
    (root / "etc/hostname").write_text("initoverlayfs-test\n")
    script = root / REPORT.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(REPORT_SCRIPT)
    script.chmod(0o755)
    (root / "etc/systemd/system/initoverlayfs-test-report.service").write_text(REPORT_UNIT)
    content_tree(root / TEST_CONTENT.lstrip("/"))
    shutil.copy(package, root / "tmp" / package.name)
    log = chroot(root, f"dpkg -i /tmp/{package.name} && rm /tmp/{package.name} && "
                       "systemctl enable initoverlayfs-test-report.service")
    # (the builds below run in a chroot, where the builder picks the common storage drivers
    # by itself: it cannot see the target's boot disk there)
    keep = work / "images"
    keep.mkdir()
    images = {"dracut": root / "boot" / f"initrd.img-{kver}"}
    # systemd mode: a dracut-made mini-initramfs with storage-init as a service; the
    # initoverlayfs content is Debian's own dracut initrd
    log += chroot(root, f"initoverlayfs-install --systemd --no-hostonly -f --kver {kver} "
                        f"--from-initramfs /boot/initrd.img-{kver}")
    images["systemd"] = Path(shutil.copy(root / "boot" / f"initramfs-{kver}.img",
                                         keep / "initramfs-systemd.img"))
    # Its EROFS image stays on /boot under another name: the plugin's build below removes
    # the kernel's previous image, and this mini-initramfs's verity root hash is for its own
    # (dm-verity refuses any other). The systemd-mode boots name it with rd.initoverlayfs.fs=.
    (built,) = pair.images_of(root / "boot", kver)
    shutil.copy(root / "boot" / built, root / "boot" / SYSTEMD_IMAGE)
    # rdinit mode through the kernel-install plugin, as on every kernel update
    plugin = chroot(root, f"kernel-install add {kver} /boot/vmlinuz-{kver}")
    images["rdinit"] = Path(shutil.copy(root / "boot" / f"initramfs-{kver}.img",
                                        keep / "initramfs-rdinit.img"))
    vmlinuz = Path(shutil.copy(root / "boot" / f"vmlinuz-{kver}", keep / "vmlinuz"))
    return System(root, kver, vmlinuz, images, make_disk(work, root), log, plugin)


def make_disk(work: Path, root: Path, *, bios_boot_mb: int = 0, esp_mb: int = 0,
              boot_mb: int | None = None, root_spare_mb: int = 256) -> Path:
    """GPT: the ext4 /boot (the tree's /boot), then the ext4 root; with `bios_boot_mb`, a BIOS
    boot partition (GRUB's core) first, or with `esp_mb` an empty FAT EFI system partition
    (ESP_UUID). `boot_mb`: /boot's size (default: its files + 64)."""
    boot_tree = work / "boot-tree"
    shutil.move(root / "boot", boot_tree)
    (root / "boot").mkdir()
    try:
        boot_mb = boot_mb or _size_mb(boot_tree) + 64
        root_mb = _size_mb(root) * 5 // 4 + root_spare_mb
        images = []
        for name, tree, uuid, size in (("boot", boot_tree, BOOT_UUID, boot_mb),
                                       ("root", root, ROOT_UUID, root_mb)):
            image = work / f"{name}.ext4"
            subprocess.run(["mkfs.ext4", "-q", "-F", "-U", uuid, "-L", name, "-d", str(tree),
                            str(image), f"{size}M"], check=True, capture_output=True)
            images.append(image)
    finally:
        (root / "boot").rmdir()
        shutil.move(boot_tree, root / "boot")
    disk = work / "disk.img"
    with disk.open("wb") as f:
        f.truncate((bios_boot_mb + esp_mb + boot_mb + root_mb + 4) << 20)
    table = [("bios", "ef02", bios_boot_mb)] if bios_boot_mb else []
    if esp_mb:
        esp = work / "esp.vfat"
        subprocess.run(["mkfs.vfat", "-C", "-F", "32", "-i", ESP_UUID.replace("-", ""),
                        "-n", "ESP", str(esp), str(esp_mb << 10)],
                       check=True, capture_output=True)
        table.append(("esp", "ef00", esp_mb))
        images.insert(0, esp)
    table += [("boot", "8300", boot_mb), ("root", "8300", root_mb)]
    argv = ["sgdisk", "-o"]
    for number, (name, code, size) in enumerate(table, 1):
        argv += ["-n", f"{number}:{'2048' if number == 1 else '0'}:+{size}M",
                 "-t", f"{number}:{code}", "-c", f"{number}:{name}"]
    subprocess.run([*argv, str(disk)], check=True, capture_output=True)
    for number, image in enumerate(images, len(table) - len(images) + 1):
        offset, _ = partition_span(disk, number)
        subprocess.run(["dd", f"if={image}", f"of={disk}", "bs=1M", "oflag=seek_bytes",
                        f"seek={offset}", "conv=notrunc,sparse", "status=none"], check=True)
        image.unlink()
    return disk


def partition_span(disk: Path, number: int) -> tuple[int, int]:
    """(offset, size) in bytes of partition `number` of the GPT disk."""
    info = subprocess.run(["sgdisk", "-i", str(number), str(disk)], check=True,
                          capture_output=True, text=True).stdout
    first = re.search(r"First sector: (\d+)", info)
    last = re.search(r"Last sector: (\d+)", info)
    assert first and last, info
    start, end = int(first.group(1)), int(last.group(1))
    return start * 512, (end - start + 1) * 512


def partition(disk: Path, number: int, out: Path) -> Path:
    """Partition `number` of the GPT disk, copied out as a file."""
    offset, size = partition_span(disk, number)
    subprocess.run(["dd", f"if={disk}", f"of={out}", "bs=512", f"skip={offset // 512}",
                    f"count={size // 512}", "conv=sparse", "status=none"], check=True)
    return out


def _size_mb(tree: Path) -> int:
    out = subprocess.run(["du", "-sm", "--apparent-size", str(tree)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


def parse_report(console: str) -> dict[str, list[str]]:
    """REPORT key=value lines -> key -> values (failed= can repeat)."""
    report: dict[str, list[str]] = {}
    # not anchored: a line can start after a login prompt or a status line on the console
    for match in re.finditer(r"REPORT ([\w-]+)(?:=(.*))?", console):
        report.setdefault(match.group(1), []).append((match.group(2) or "").strip())
    return report
