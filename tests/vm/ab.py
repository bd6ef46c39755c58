"""A/B boots (not a test): frozen storage-init folders, each in a mini-initramfs built the same
way for the same Debian cloud kernel and payload, booted interleaved under QEMU on the
benchmark's disk and command line (the order reversed every other round, so that drift hits
every variant alike). Prints each variant's breakdown (medians), and for two variants the
paired differences per round: under TCG one boot varies by a second, and a change shows in how
many of the pairs it is lower, not in one median.

    scripts/ab FOLDER_A FOLDER_B [--rounds 10] [--size 0] [--icount] [--cpu MODEL] [--smp N]

A folder is what initoverlayfs-freeze makes (`.cache/storage-init`, or `--output DIR`); freeze
another commit from a `git worktree` to compare it with this one.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from tests.support.debian_kernel import fetch
from tests.vm import benchmark, images
from tests.vm.qemu import ICOUNT, VmSpec, boot


def parts(sample: benchmark.Sample) -> dict[str, float]:
    """The figures compared pair by pair, in ms: time to init and the benchmark's parts."""
    return {"time to init": (sample.init_s or 0.0) * 1000,
            **(benchmark.sample_parts(sample) or {})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="frozen storage-init folders")
    parser.add_argument("--rounds", type=int, default=10, help="boots of each variant")
    parser.add_argument("--size", type=int, default=0, help="payload in MB (default 0)")
    parser.add_argument("--icount", action="store_true",
                        help="the guest's CPU work timed by instructions executed (QEMU "
                             "-icount shift=0: 1 ns each; waits on the host's clock), not by "
                             "the host's clock: free of the host's noise, blind to TCG's "
                             "translation")
    parser.add_argument("--cpu", metavar="MODEL",
                        help="QEMU's CPU model under TCG, e.g. max (default: qemu64)")
    parser.add_argument("--smp", type=int, default=1, metavar="N",
                        help="virtual CPUs (default 1; only 1 with --icount, see "
                             "scripts/benchmark --help)")
    args = parser.parse_args(argv)
    if args.smp < 1 or (args.icount and args.smp > 1):
        parser.error("--smp takes 1 or more, and only 1 with --icount")
    missing = [f for f in args.folders if not (f / "storage-init").is_file()]
    if missing:
        parser.error(f"no storage-init in {', '.join(map(str, missing))}")
    work = Path(tempfile.mkdtemp(prefix="initoverlayfs-ab-"))
    try:
        kernel = fetch("cloud")
        files = benchmark.payload_files(fetch("generic"), max(args.size, 1) << 20)
        tree = work / "tree"
        benchmark.make_tree(tree, files, args.size << 20)
        built = []
        for i, folder in enumerate(args.folders):
            made = images.build_kernel_images(work / f"v{i}", kernel, tree, folder,
                                              drivers=benchmark.DRIVERS)
            (work / f"disk{i}").mkdir()
            disk = images.make_disk(work / f"disk{i}", {made.image.name: made.image})
            built.append((made.initramfs, disk.path))
            print(f"variant {i}: {folder}: mini-initramfs {made.initramfs.stat().st_size:,} "
                  f"bytes, {made.unpacked_bytes:,} unpacked", flush=True)
        samples: list[list[benchmark.Sample]] = [[] for _ in built]
        for round_ in range(args.rounds):
            order = list(range(len(built)))[:: 1 if round_ % 2 == 0 else -1]
            for i in order:
                initramfs, disk_path = built[i]
                run = boot(VmSpec(kernel.vmlinuz, initramfs, disk_path, "virtio-blk",
                                  benchmark.APPEND, memory_mb=benchmark.MEMORY_MB, timeout=600,
                                  cpu=args.cpu, devices=ICOUNT if args.icount else (),
                                  smp=args.smp))
                init_s, timings, dmesg = benchmark.parse(run.console)
                if init_s is None:
                    print(run.describe()[-3000:], file=sys.stderr)
                    return 1
                samples[i].append(benchmark.Sample(args.size, "ours", round_, init_s, timings,
                                                   dmesg, 0.0))
                print(f"  round {round_ + 1}/{args.rounds} variant {i}: init at {init_s} s",
                      flush=True)
        for i, folder in enumerate(args.folders):
            init_ms = statistics.median((s.init_s or 0.0) * 1000 for s in samples[i])
            print(f"== variant {i} ({folder}), medians over {len(samples[i])} boots:")
            print(f"   {'time to init':<70} {init_ms:8.0f}")
            for name, ms in benchmark.breakdown(samples[i]).items():
                print(f"   {name:<70} {ms:8.0f}")
        if len(built) == 2:
            print("== paired, variant 1 against variant 0 (same round), median differences:")
            pairs = [(parts(a), parts(b)) for a, b in zip(samples[0], samples[1], strict=True)]
            for name in pairs[0][0]:
                diffs = [b[name] - a[name] for a, b in pairs if name in a and name in b]
                lower = sum(d < 0 for d in diffs)
                print(f"   {name:<70} {statistics.median(diffs):+6.0f} ms, variant 1 lower "
                      f"in {lower} of {len(diffs)}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
