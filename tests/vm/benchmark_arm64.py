"""The benchmark on arm64 (`scripts/benchmark --arch arm64`): Debian 12's arm64 kernel on QEMU's
virt machine with a Cortex-A72 (the Raspberry Pi 4's core), the guests' CPU work timed by
instructions (-icount, 1 ns each), booting four ways interleaved with the same payload:

- classic-zstd, classic-lz4: one initramfs holding the payload and the final init, as
  tests/vm/benchmark.py makes them;
- ours: the mini-initramfs of initoverlayfs-install for an SD card on a PCI SD host controller
  (`--drivers sdhci_pci`), the payload in the EROFS image on the card, verified;
- ours-unverified: the same, booted with rd.initoverlayfs.verity=0.

(The C original is built for this machine only, so it has no arm64 column.) The payload is
arm64 content: the kernel's own modules and the freeze tree's shared libraries. Writes
results.json, results.md and plot.png into the output folder."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from initoverlayfs_build.arch import ARM64
from initoverlayfs_build.freeze import default_frozen, library_root
from initoverlayfs_build.ui import Ui

from tests.support.debian_kernel import fetch_foreign

from . import images
from .arm64 import arm64_busybox
from .benchmark import (
    COMPRESS,
    LOAD_MB_S,
    MEMORY_MB,
    Sample,
    Target,
    boot_interleaved,
    breakdown,
    classic_initramfs,
    curves,
    loaded_rows,
    make_tree,
    payload_files,
    plot,
    steps_and_targets,
)
from .qemu import ARM64_CPU, ICOUNT, VmSpec

REPO = Path(__file__).resolve().parents[2]
PATHS = ("classic-zstd", "classic-lz4", "ours", "ours-unverified")
EXTRA_APPEND = {"ours-unverified": " rd.initoverlayfs.verity=0"}
APPEND = "quiet rdinit=/init rd.emergency=poweroff"
DRIVERS = "sdhci_pci"  # the SD host controller the card is on (mmc_block is built in)
INTERFACE = "sd"


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/benchmark --arch arm64", description=__doc__)
    parser.add_argument("--sizes", default="0,25,50,100,200",
                        help="payload sizes in MB (default: 0,25,50,100,200)")
    parser.add_argument("--boots", type=int, default=3, help="boots per size and path")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "benchmark-arm64")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    work = out / "work"
    work.mkdir(parents=True)
    started = time.monotonic()
    frozen = default_frozen(Ui("benchmark"), arch=ARM64)
    kernel = fetch_foreign("bookworm")
    busybox = arm64_busybox(work)
    libdir = library_root(frozen.folder) / "usr/lib" / ARM64.triplet
    files = payload_files(kernel, max(sizes) << 20, libdir)
    built: dict[int, dict[str, Path]] = {}
    sizes_of: dict[int, dict[str, int]] = {}
    payload_bytes: dict[int, int] = {}
    unpacked = 0
    for size in sizes:
        print(f"building the {size} MB payload images ...", flush=True)
        tree = work / f"tree-{size}"
        payload_bytes[size] = make_tree(tree, files, size << 20, busybox)
        paths: dict[str, Path] = {}
        for name, command in COMPRESS.items():
            paths[name] = work / f"{name}-{size}.img"
            classic_initramfs(tree, paths[name], command)
        ours = images.build_kernel_images(work / f"ours-{size}", kernel, tree, frozen.folder,
                                          drivers=DRIVERS)
        disk_dir = work / f"disk-{size}"
        disk_dir.mkdir()
        disk = images.make_disk(disk_dir, {ours.image.name: ours.image}, power_of_two=True)
        paths["ours"] = paths["ours-unverified"] = ours.initramfs
        paths["disk"] = disk.path
        built[size] = paths
        unpacked = ours.unpacked_bytes
        sizes_of[size] = {"classic-zstd": paths["classic-zstd"].stat().st_size,
                          "classic-lz4": paths["classic-lz4"].stat().st_size,
                          "mini-initramfs": ours.initramfs.stat().st_size,
                          "erofs-image": ours.image.stat().st_size}
    print(f"booting {len(sizes) * len(PATHS) * args.boots} times, interleaved "
          f"(TCG -cpu {ARM64_CPU} -icount) ...", flush=True)

    def spec(size: int, path: str) -> VmSpec:
        return VmSpec(kernel.vmlinuz, built[size][path], built[size]["disk"], INTERFACE,
                      APPEND + EXTRA_APPEND.get(path, ""), memory_mb=MEMORY_MB, timeout=900,
                      devices=ICOUNT, arch="arm64")

    samples = boot_interleaved(out, sizes, PATHS, args.boots, spec)
    report(out, sizes, samples, sizes_of, payload_bytes, kernel.kver, unpacked,
           frozen.seconds, time.monotonic() - started)
    return 0 if all(s.init_s is not None for s in samples) else 1


def report(out: Path, sizes: list[int], samples: list[Sample],
           sizes_of: dict[int, dict[str, int]], payload_bytes: dict[int, int], kver: str,
           unpacked: int, freeze_s: float, run_s: float) -> None:
    lines_of = curves(samples, sizes, payload_bytes, PATHS)
    summary = lines_of.summary
    to_zstd, to_lz4 = lines_of.ratio_to("classic-zstd"), lines_of.ratio_to("classic-lz4")
    crossover = lines_of.crossing("classic-zstd")
    crossover_lz4 = lines_of.crossing("classic-lz4")
    steps = breakdown([s for s in samples if s.path == "ours"])
    mini = max(v["mini-initramfs"] for v in sizes_of.values())
    targets: list[Target] = [
        ("ours at 100 MB <= 0.70x classic zstd", to_zstd.get(100), 0.70,
         f"{to_zstd[100]:.2f}x" if 100 in to_zstd else "not measured"),
        ("crossover with classic zstd <= 35 MB", crossover, 35.0,
         f"{crossover:.1f} MB" if crossover is not None else "no crossover"),
    ]
    accelerator = f"TCG -cpu {ARM64_CPU} -icount shift=0 (CPU time = guest instructions)"
    result = {"kernel": kver, "machine": "virt", "accelerator": accelerator,
              "disk": "SD card (sdhci-pci + sd-card)", "memory_mb": MEMORY_MB,
              "append": APPEND, "payload_bytes": payload_bytes, "file_bytes": sizes_of,
              "summary": summary, "ratio_ours_to_classic_zstd": to_zstd,
              "ratio_ours_to_classic_lz4": to_lz4, "crossover_mb": crossover,
              "crossover_classic_lz4_mb": crossover_lz4, "our_breakdown_ms": steps,
              "mini_initramfs_unpacked_bytes": unpacked, "freeze_s": freeze_s,
              "run_s": run_s,
              "targets": [{"target": t, "value": v, "limit": lim, "shown": shown,
                           "met": v is not None and v <= lim} for t, v, lim, shown in targets],
              "samples": [s.__dict__ for s in samples]}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    boots = max((int(v["boots"]) for p in summary.values() for v in p.values()), default=0)
    lines = [f"Benchmark, arm64: Debian {kver} on QEMU virt, {accelerator}, {MEMORY_MB} MB, "
             f"from an SD card; time to init in ms (median, min-max of {boots} boots)", "",
             "| payload MB | " + " | ".join(PATHS) + " | ours/classic-zstd | ours/classic-lz4 |",
             "|---:|" + "---:|" * len(PATHS) + "---:|---:|"]
    for size in sizes:
        cells = [f"{v['median_ms']:.0f} ({v['min_ms']:.0f}-{v['max_ms']:.0f})"
                 if (v := summary.get(path, {}).get(size)) else "failed" for path in PATHS]
        lines.append(f"| {size} | " + " | ".join(cells) + " | " + " | ".join(
            f"{r[size]:.2f}" if size in r else "n/a" for r in (to_zstd, to_lz4)) + " |")
    lines += ["", "crossover with classic zstd: "
              + (f"{crossover:.1f} MB" if crossover is not None else "none")
              + "; with classic lz4: "
              + (f"{crossover_lz4:.1f} MB" if crossover_lz4 is not None else "none"), "",
              "| payload MB | classic zstd bytes | classic lz4 bytes | our mini-initramfs bytes "
              "| EROFS image bytes |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {size} | {b['classic-zstd']:,} | {b['classic-lz4']:,} | "
              f"{b['mini-initramfs']:,} | {b['erofs-image']:,} |"
              for size, b in sizes_of.items()]
    lines += ["", f"With the bootloader's read of the initramfs file at {LOAD_MB_S} MB/s added "
              "(a model; QEMU's -initrd costs the guest nothing), ms:", "",
              *loaded_rows(sizes, summary, sizes_of, PATHS)]
    lines += ["", f"Mini-initramfs: {mini:,} bytes as built, {unpacked:,} unpacked. The arm64 "
              f"freeze: {freeze_s:.0f} s in this run (0: reused). The whole run: "
              f"{run_s / 60:.0f} min."]
    lines += steps_and_targets(steps, targets)
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print("\n" + text)
    plot(out / "plot.png", sizes, summary, payload_bytes, f"TCG {ARM64_CPU}", True, PATHS,
         "initoverlayfs vs a classic initramfs on arm64, SD card")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'plot.png'}")


if __name__ == "__main__":
    sys.exit(main())
