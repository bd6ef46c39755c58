"""Benchmark through the bootloader (not a test): the installed Debian machine of
tests/vm/test_bootloader.py (SeaBIOS, GRUB from the disk, initramfs-tools), booted to
multi-user.target through initoverlayfs's GRUB entry and through the distribution's own
(`initoverlayfs-boot off`: GRUB's default becomes the classic initramfs), interleaved, each
boot from the same disk (a snapshot), timed by guest instructions (-icount) unless --tcg.
GRUB reads each initrd from the disk here, so a larger initrd costs its load as on hardware.

    scripts/benchmark-bootloader [--boots 5] [--suite bookworm|trixie] [--tcg] [--cpu MODEL]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from . import bootloader_system
from .debian_system import parse_report
from .qemu import ICOUNT, BootResult, VmSpec, boot

REPO = Path(__file__).resolve().parents[2]
WAYS = ("initoverlayfs", "classic")


def multi_user_s(run: BootResult) -> float | None:
    value = parse_report(run.console).get("multi-user-us", [""])[0]
    return int(value) / 1e6 if value.isdigit() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/benchmark-bootloader",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=5, help="boots of each way (default 5)")
    parser.add_argument("--suite", choices=list(bootloader_system.SUITES), default="bookworm",
                        help="the Debian version (default bookworm, Debian 12)")
    parser.add_argument("--tcg", action="store_true",
                        help="plain TCG time instead of instructions (noisier)")
    parser.add_argument("--cpu", default=None,
                        help="QEMU CPU model (default: QEMU's qemu64, which has no SSSE3, so "
                             "the kernel hashes each module's signature with generic code)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="initoverlayfs-bench-", dir="/dev/shm"))
    try:
        out = subprocess.run([str(REPO / "scripts/package"), "--out", str(work / "dist")],
                             capture_output=True, text=True, check=True)
        deb = Path(out.stdout.split()[0])
        disk, _ = bootloader_system.installed_disk(work, deb, args.suite)
        classic = work / "classic.img"
        subprocess.run(["cp", "--sparse=always", str(disk), str(classic)], check=True)
        bootloader_system.in_chroot(classic, "initoverlayfs-boot off")
        disks = {"initoverlayfs": disk, "classic": classic}
        kver = bootloader_system.edit_disk(disk, "ls $ROOT/lib/modules").split()[0]
        sizes = {way: len(bootloader_system.read_boot_file(disk, name)) for way, name in (
            ("initoverlayfs", f"initramfs-{kver}.img"), ("classic", f"initrd.img-{kver}"))}
        clock = () if args.tcg else ICOUNT
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        for round_ in range(args.boots):
            for way in WAYS if round_ % 2 == 0 else tuple(reversed(WAYS)):
                run = boot(VmSpec(None, None, disks[way], memory_mb=1024, timeout=600,
                                  devices=clock, cpu=args.cpu))
                seconds = multi_user_s(run)
                if seconds is None:
                    print(run.describe(), file=sys.stderr)
                    return 1
                times[way].append(seconds)
                print(f"round {round_ + 1} {way}: multi-user.target at {seconds:.2f} s",
                      flush=True)
        medians = {way: statistics.median(values) for way, values in times.items()}
        print(f"\n{bootloader_system.SUITES[args.suite]}, kernel {kver}, SeaBIOS + GRUB "
              "from the disk, "
              f"{'plain TCG' if args.tcg else 'by instructions (' + ' '.join(ICOUNT) + ')'}, "
              f"CPU {args.cpu or 'qemu64'}, "
              f"{args.boots} interleaved boots each\n")
        print("| way | initrd GRUB loads (bytes) | multi-user.target, median (min-max) |")
        print("|---|---:|---:|")
        for way in WAYS:
            print(f"| {way} | {sizes[way]:,} | {medians[way]:.2f} s "
                  f"({min(times[way]):.2f}-{max(times[way]):.2f}) |")
        print(f"\ninitoverlayfs / classic: {medians['initoverlayfs'] / medians['classic']:.2f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
