"""The benchmark (docs/benchmark.md): the same Debian kernel and the same payload booted five
ways under QEMU, interleaved, so that drift hits every path alike.

- classic-zstd: one initramfs (zstd -15 as dracut makes it) holding the payload and the final
  init;
- classic-lz4: the same initramfs as dracut's `--compress lz4` makes it: faster to unpack,
  larger to load (which QEMU's -initrd does not charge), the format ours uses by default;
- c-original: the C original's storage-init, built from its source (c_original.py), in its own
  mini-initramfs, booting the same EROFS image from the same disk;
- ours: the mini-initramfs of initoverlayfs-install for the VM's disk (`--drivers`, DRIVERS:
  the storage drivers the C original's wrapper loads), with the payload in the EROFS image on
  a virtio disk, verified by dm-verity (the default);
- ours-unverified: the same mini-initramfs and disk booted with rd.initoverlayfs.verity=0, so
  that the difference is what verification costs at boot.

The payload is realistic initramfs content (kernel modules and shared libraries) at several
sizes; the final init reads none of it and reports the guest's /proc/uptime when it starts.
Writes results.json, results.md and plot.png into the output folder."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from initoverlayfs_build import compress, cpio
from initoverlayfs_build.freeze import default_frozen
from initoverlayfs_build.mini import Tree
from initoverlayfs_build.ui import Ui

from storage_init.config import image_name
from tests.support.debian_kernel import DebianKernel, fetch

from . import c_original, debian_system, images
from .qemu import ICOUNT, VmSpec, boot, kvm_works

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PATHS = ("classic-zstd", "classic-lz4", "c-original", "ours", "ours-unverified")
EXTRA_APPEND = {"ours-unverified": " rd.initoverlayfs.verity=0"}
MEMORY_MB = 2048
APPEND = "quiet rdinit=/init rd.emergency=poweroff"
# The VM's disk controller and disk (virtio-blk on PCI): built for the hardware it boots on, as
# the C original's wrapper is (c_original.py), not with the common drivers of every bus
DRIVERS = "virtio_pci virtio_blk"
COMPRESS = {"classic-zstd": ["zstd", "-15", "-T0", "-q", "-c"],
            "classic-lz4": ["lz4", "-l", "-9", "-q", "-c"]}  # dracut's own lz4 command


@dataclass(frozen=True)
class Sample:
    size_mb: int
    path: str
    round: int
    init_s: float | None  # guest uptime when the final init started
    timings: dict[str, object] | None
    dmesg: dict[str, float]
    wall_s: float


def payload_files(generic: DebianKernel, limit: int,
                  libdir: Path = Path("/usr/lib/x86_64-linux-gnu")) -> list[tuple[Path, str]]:
    """Kernel modules and shared libraries, alternating, in a fixed order, up to `limit`
    bytes: what a real initramfs is made of."""
    def small(p: Path) -> bool:  # what an initramfs holds; no 100 MB LLVM in it
        return p.is_file() and not p.is_symlink() and p.stat().st_size <= 2 << 20

    modules = sorted(p for p in generic.modules.rglob("*.ko") if small(p))
    libs = sorted(p for p in libdir.glob("*.so*") if small(p))
    chosen: list[tuple[Path, str]] = []
    total = 0
    for i in range(max(len(modules), len(libs))):
        for source, prefix in ((modules, "lib/modules/payload"), (libs, "usr/lib/payload")):
            if i < len(source) and total < limit:
                path = source[i]
                chosen.append((path, f"{prefix}/{i:05d}-{path.name}"))
                total += path.stat().st_size
    return chosen


def make_tree(root: Path, files: list[tuple[Path, str]], limit: int,
              busybox: Path | None = None) -> int:
    (root / "bin").mkdir(parents=True)
    for d in ("sbin", "proc", "sys", "dev", "run", "etc", "boot"):
        (root / d).mkdir()
    shutil.copy(busybox or shutil.which("busybox") or "/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "mount", "dmesg", "grep", "sed", "tr", "poweroff"):
        (root / "bin" / applet).symlink_to("busybox")
    for name in ("init", "sbin/init"):  # classic runs /init, ours execs /sbin/init
        shutil.copy(HERE / "benchinit.sh", root / name)
        (root / name).chmod(0o755)
    total = 0
    for source, relative in files:
        if total >= limit:
            break
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        total += source.stat().st_size
    return total


def classic_initramfs(tree: Path, out: Path, command: list[str]) -> None:
    entries = Tree()
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree).as_posix()
        if path.is_symlink():
            entries.symlink(rel, os.readlink(path))
        elif path.is_dir():
            entries.directory(rel)
        else:
            entries.file(rel, path.read_bytes(), path.stat().st_mode & 0o777)
    entries.node("dev/console", 0o020000, (5, 1))
    archive = cpio.write(entries.entries.values(), 0)
    with out.open("wb") as f:
        subprocess.run(command, input=archive, stdout=f, check=True)


def parse(console: str) -> tuple[float | None, dict[str, object] | None, dict[str, float]]:
    init = re.search(r"^BENCH-INIT uptime=([\d.]+)", console, re.M)
    timings = re.search(r"^BENCH-TIMINGS (.*)$", console, re.M)
    dmesg: dict[str, float] = {}
    for key, pattern in (("unpack_start", "Trying to unpack rootfs"),
                         ("unpack_end", "Freeing initrd memory"),
                         ("run_init", "Run /init as init process")):
        found = re.search(rf"^BENCH-DMESG \[\s*([\d.]+)\] {pattern}", console, re.M)
        if found:
            dmesg[key] = float(found.group(1))
    return (float(init.group(1)) if init else None,
            json.loads(timings.group(1)) if timings else None, dmesg)


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = slope * x + intercept."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return slope, my - slope * mx


GROUPS = {"driver loading": ("load-modules",), "device wait": ("trigger", "wait-bootfs"),
          "mounts": ("mount-api", "mount-bootfs", "mount-scratch", "attach-loop",
                     "mount-image", "mount-overlay", "move-mounts"),
          "verity (dm modules, setup, seal)": ("setup-verity", "seal-verity"),
          "switch root": ("switch-root",),
          "log, cmdline, config": ("log", "read-cmdline", "read-config")}


def sample_parts(s: Sample) -> dict[str, float] | None:
    """One boot of ours, part by part, in ms; None without its timings and kernel messages."""
    if s.timings is None or s.init_s is None or len(s.dmesg) < 3:
        return None
    parts: dict[str, float] = {}
    steps = {st["name"]: st["ms"] for st in s.timings["steps"]}  # type: ignore[attr-defined]
    parts["kernel unpacks the mini-initramfs"] = (
        s.dmesg["unpack_end"] - s.dmesg["unpack_start"]) * 1000
    parts["kernel start to /init (unpack excluded)"] = (
        s.dmesg["run_init"] - (s.dmesg["unpack_end"] - s.dmesg["unpack_start"])) * 1000
    started = float(s.timings["started_boottime_s"])  # type: ignore[arg-type]
    parts["exec of /init to storage-init's first step (loading, imports)"] = (
        started - s.dmesg["run_init"]) * 1000
    entered = s.timings.get("entered_boottime_s")
    if isinstance(entered, float):
        parts["  of which: exec to the program's first line (loader, Python, Nuitka)"] = (
            entered - s.dmesg["run_init"]) * 1000
        parts["  of which: first line to first step (storage-init's imports)"] = (
            started - entered) * 1000
    for name, members in GROUPS.items():
        parts[name] = sum(float(steps.get(m, 0.0)) for m in members)
    parts["exec of init (from storage-init's last step to init running)"] = (
        s.init_s - float(s.timings["finished_boottime_s"])) * 1000  # type: ignore[arg-type]
    return parts


def breakdown(samples: list[Sample]) -> dict[str, float]:
    """Our path, step by step, in ms (medians over our boots)."""
    parts: dict[str, list[float]] = {}
    for s in samples:
        for name, value in (sample_parts(s) or {}).items():
            parts.setdefault(name, []).append(value)
    return {name: statistics.median(values) for name, values in parts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/benchmark", description=__doc__)
    parser.add_argument("--sizes", default="0,25,50,100,200",
                        help="payload sizes in MB (default: 0,25,50,100,200)")
    parser.add_argument("--boots", type=int, default=5, help="boots per size and path")
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "benchmark")
    parser.add_argument("--c-original", type=Path, default=c_original.DEFAULT_SOURCE,
                        help="the C original's source: a checkout or a git directory "
                             f"(default: {c_original.DEFAULT_SOURCE.relative_to(REPO)})")
    parser.add_argument("--icount", action="store_true",
                        help="time the guests' CPU work by instructions executed (QEMU "
                             "-icount shift=0, 1 ns each): repeatable, a stand-in for native "
                             "cost, without TCG's translation")
    parser.add_argument("--cpu", metavar="MODEL",
                        help="QEMU's CPU model under TCG, e.g. max (default: QEMU's qemu64, "
                             "which has no SSSE3, AVX or AVX2: the kernel then hashes with its "
                             "generic C code, where a real CPU has accelerated hashes)")
    parser.add_argument("--smp", type=int, default=1, metavar="N",
                        help="virtual CPUs (default 1); not with --icount, under which QEMU "
                             "runs the CPUs in turn on one thread, counts their instructions "
                             "together, and (QEMU 7.2) hangs bringing up the second one")
    args = parser.parse_args()
    if args.smp < 1 or (args.icount and args.smp > 1):
        parser.error("--smp takes 1 or more, and only 1 with --icount (see --help)")
    sizes = [int(s) for s in args.sizes.split(",")]
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    work = out / "work"
    work.mkdir(parents=True)
    ui = Ui("benchmark")
    kernel = fetch("cloud")
    files = payload_files(fetch("generic"), max(sizes) << 20)
    frozen = default_frozen(ui).folder
    built: dict[int, dict[str, Path]] = {}
    image_bytes: dict[int, dict[str, int]] = {}
    payload_bytes: dict[int, int] = {}
    unpacked: dict[str, int] = {}
    original: c_original.Built | None = None
    for size in sizes:
        print(f"building the {size} MB payload images ...", flush=True)
        tree = work / f"tree-{size}"
        payload_bytes[size] = make_tree(tree, files, size << 20)
        paths: dict[str, Path] = {}
        for name, command in COMPRESS.items():
            paths[name] = work / f"{name}-{size}.img"
            classic_initramfs(tree, paths[name], command)
        images_built = images.build_kernel_images(work / f"ours-{size}", kernel, tree, frozen,
                                                  drivers=DRIVERS)
        disk_dir = work / f"disk-{size}"
        disk_dir.mkdir()
        # our mini-initramfs names its image's own name; the C original, which reads no
        # fs key, looks for its one default name: the same image under both
        disk = images.make_disk(disk_dir, {
            images_built.image.name: images_built.image,
            image_name(kernel.kver): images_built.image})
        if original is None:  # one for every size, as our mini-initramfs, with our config
            config = work / f"ours-{size}" / f"sysroot-{kernel.kver}" / "etc/initoverlayfs.conf"
            try:
                original = c_original.build(args.c_original, work, kernel, config)
            except c_original.SourceMissing as exc:
                print(f"benchmark: error: {exc}", file=sys.stderr)
                return 2
        paths["c-original"] = original.initramfs
        paths["ours"] = paths["ours-unverified"] = images_built.initramfs
        paths["disk"] = disk.path
        built[size] = paths
        unpacked = {"ours": images_built.unpacked_bytes, "c-original": original.unpacked_bytes}
        image_bytes[size] = {"classic-zstd": paths["classic-zstd"].stat().st_size,
                             "classic-lz4": paths["classic-lz4"].stat().st_size,
                             "c-original-initramfs": original.initramfs.stat().st_size,
                             "mini-initramfs": images_built.initramfs.stat().st_size,
                             "mini-initramfs-as-zstd": zstd_bytes(images_built.initramfs),
                             "erofs-image": images_built.image.stat().st_size,
                             "verity-tree": verity_tree_bytes(images_built.image),
                             "dm-modules": dm_module_bytes(images_built.initramfs)}
    print(f"booting {len(sizes) * len(PATHS) * args.boots} times, interleaved "
          f"({'KVM' if kvm_works() else 'TCG, no KVM'}) ...", flush=True)

    def spec(size: int, path: str) -> VmSpec:
        return VmSpec(kernel.vmlinuz, built[size][path], built[size]["disk"], "virtio-blk",
                      APPEND + EXTRA_APPEND.get(path, ""), memory_mb=MEMORY_MB, timeout=600,
                      cpu=args.cpu, devices=ICOUNT if args.icount else (), smp=args.smp)

    samples = boot_interleaved(out, sizes, PATHS, args.boots, spec)
    assert original is not None
    report(out, sizes, samples, image_bytes, payload_bytes, kernel.kver, unpacked, original,
           args.icount, args.cpu, args.smp)
    return 0 if all(s.init_s is not None for s in samples) else 1


def boot_interleaved(out: Path, sizes: list[int], paths: tuple[str, ...], boots: int,
                     spec: Callable[[int, str], VmSpec]) -> list[Sample]:
    """Every size and path once per round, the order reversed every other round, so that
    drift hits every path alike; a boot that reports no init leaves its console in `out`."""
    samples: list[Sample] = []
    for round_ in range(boots):
        order = paths if round_ % 2 == 0 else tuple(reversed(paths))
        for size in sizes:
            for path in order:
                started = time.monotonic()
                run = boot(spec(size, path))
                init_s, timings, dmesg = parse(run.console)
                if init_s is None:
                    (out / f"failed-{path}-{size}-{round_}.log").write_text(run.describe())
                samples.append(Sample(size, path, round_, init_s, timings, dmesg,
                                      time.monotonic() - started))
                print(f"  round {round_ + 1}/{boots} {size:>4} MB {path:<15} "
                      f"init at {init_s if init_s is not None else 'FAILED'} s", flush=True)
    return samples


# A boot disk as firmware reads it: SD cards and eMMC below, NVMe through UEFI above.
LOAD_MB_S = 100
INITRAMFS_FILE = {"classic-zstd": "classic-zstd", "classic-lz4": "classic-lz4",
                  "c-original": "c-original-initramfs", "ours": "mini-initramfs",
                  "ours-unverified": "mini-initramfs"}


def load_ms(sizes_of: dict[str, int], path: str) -> float:
    """ms for a bootloader to read this path's initramfs file at LOAD_MB_S."""
    return sizes_of[INITRAMFS_FILE[path]] / (LOAD_MB_S * 1e6) * 1000


def verity_tree_bytes(image: Path) -> int:
    """The superblock and hash tree the builder appended to the image."""
    data = image.read_bytes()
    return len(data) - images.tree_start(data)


def dm_module_bytes(initramfs: Path) -> int:
    """The device-mapper modules in the mini-initramfs (unpacked)."""
    return sum(len(e.data) for e in cpio.read_all(images.unpacked_archive(initramfs))
               if "/drivers/md/dm-" in e.name)


def zstd_bytes(initramfs: Path) -> int:
    """The mini-initramfs's size had it been compressed with zstd -15 (the 4 MB goal's
    measure; lz4 is the default for its unpack time, see initoverlayfs_build.compress)."""
    return len(subprocess.run(compress.COMMANDS["zstd"], input=images.unpacked_archive(initramfs),
                              capture_output=True, check=True).stdout)


def exec_to_init(samples: list[Sample], path: str) -> float | None:
    """Median ms from the kernel's exec of /init to the final init running: all of a path's
    own work (the C original's includes its wrapper loading the modules)."""
    values = [(s.init_s - s.dmesg["run_init"]) * 1000 for s in samples
              if s.path == path and s.init_s is not None and "run_init" in s.dmesg]
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class Curves:
    """Each path's time to init by payload size (median, min, max, boots) and the least
    squares line through its medians (ms against MB)."""

    summary: dict[str, dict[int, dict[str, float]]]
    fits: dict[str, tuple[float, float]]

    def crossing(self, other: str) -> float | None:
        """The payload (MB) where ours and `other` take as long."""
        (m_c, b_c), (m_o, b_o) = self.fits[other], self.fits["ours"]
        return (b_o - b_c) / (m_c - m_o) if m_c != m_o else None

    def ratio_to(self, other: str) -> dict[int, float]:
        """Ours / `other`, size by size, where both booted."""
        ours, theirs = self.summary.get("ours", {}), self.summary.get(other, {})
        return {size: ours[size]["median_ms"] / theirs[size]["median_ms"]
                for size in ours if size in theirs}

    def with_reads(self, files_of: dict[int, dict[str, int]],
                   payload_bytes: dict[int, int]) -> Curves:
        """The same with the bootloader's read of each path's initramfs file added."""
        summary = read_added(self.summary, files_of)
        return Curves(summary, fits(summary, payload_bytes))


def read_added(summary: dict[str, dict[int, dict[str, float]]],
               files_of: dict[int, dict[str, int]]) -> dict[str, dict[int, dict[str, float]]]:
    """Each path's medians with the bootloader's read of its initramfs file added."""
    return {path: {size: {"median_ms": v["median_ms"] + load_ms(files_of[size], path)}
                   for size, v in by_size.items()}
            for path, by_size in summary.items()}


def fits(summary: dict[str, dict[int, dict[str, float]]],
         payload_bytes: dict[int, int]) -> dict[str, tuple[float, float]]:
    """Each path's least squares line through its medians, ms against MB of payload."""
    return {path: fit([(payload_bytes[size] / (1 << 20), v["median_ms"])
                       for size, v in by_size.items()])
            for path, by_size in summary.items()}


def curves(samples: list[Sample], sizes: list[int], payload_bytes: dict[int, int],
           paths: tuple[str, ...]) -> Curves:
    summary: dict[str, dict[int, dict[str, float]]] = {}
    for path in paths:
        for size in sizes:
            times = [s.init_s * 1000 for s in samples
                     if s.path == path and s.size_mb == size and s.init_s is not None]
            if times:
                summary.setdefault(path, {})[size] = {
                    "median_ms": statistics.median(times), "min_ms": min(times),
                    "max_ms": max(times), "boots": len(times)}
    return Curves(summary, fits(summary, payload_bytes))


def loaded_rows(sizes: list[int], summary: dict[str, dict[int, dict[str, float]]],
                files_of: dict[int, dict[str, int]], paths: tuple[str, ...]) -> list[str]:
    """A table of each path's median with the bootloader's read of its initramfs file."""
    read = read_added(summary, files_of)
    rows = ["| payload MB | " + " | ".join(paths) + " |", "|---:|" + "---:|" * len(paths)]
    for size in sizes:
        rows.append(f"| {size} | " + " | ".join(
            f"{read[path][size]['median_ms']:.0f}" if size in read.get(path, {}) else "n/a"
            for path in paths) + " |")
    return rows


Target = tuple[str, float | None, float, str]  # what, measured, limit, as shown


def steps_and_targets(steps: dict[str, float], targets: list[Target]) -> list[str]:
    """Our path step by step, then each target and whether it is met."""
    return ["", "Our path, step by step (median ms over our boots):", "", "| part | ms |",
            "|---|---:|", *(f"| {name} | {ms:.0f} |" for name, ms in steps.items()),
            "", "| target | measured | met |", "|---|---|---|",
            *(f"| {t} | {shown} | {'yes' if v is not None and v <= lim else 'NO'} |"
              for t, v, lim, shown in targets)]


def module_load_ms(samples: list[Sample], wanted: Callable[[str], bool]) -> float | None:
    """Median over boots of the summed load times (storage-init's module_load_ms) of the
    modules `wanted` picks; None when the boots did not record them."""
    sums = [sum(float(ms) for name, ms in loads.items() if wanted(name))
            for s in samples if s.timings is not None
            and isinstance(loads := s.timings.get("module_load_ms"), dict)]
    return statistics.median(sums) if sums else None


def systemd_ratio() -> tuple[float | None, str]:
    """systemd mode / Debian's dracut to multi-user.target, from the Debian system test's
    last run (tests/vm/test_debian_system.py), and where it comes from."""
    try:
        figures = json.loads(debian_system.COMPARISON.read_text())
        ratio = float(figures["ratio_to_dracut"]["systemd"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, ("not measured: run tests/vm/test_debian_system.py, which writes "
                      f"{debian_system.COMPARISON}")
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(debian_system.COMPARISON.stat().st_mtime))
    return ratio, (f"{ratio:.2f}x (tests/vm/test_debian_system.py, {when} UTC, "
                   f"kernel {figures.get('kernel')}, {figures.get('boots')} boots a way)")


def signature_hash_module(name: str) -> bool:
    """The CPU's own sha module (sha256_ssse3, sha2_ce, ...), which storage-init loads first
    so that every later signature check is cheaper (storage_init.modules.SIGNATURE_HASHES):
    part of what the loads it shares with the C original's wrapper cost it."""
    return name.startswith(("sha1_", "sha2_", "sha256_", "sha512_"))


@dataclass(frozen=True)
class Goals:
    """The start-up goals (ratios in one run, by instructions) and, for each, the bound set
    by the parts storage-init's own code does not choose."""

    targets: list[Target]
    lines: list[str]
    figures: dict[str, object]


def goals(samples: list[Sample], lines_of: Curves, files_of: dict[int, dict[str, int]],
          payload_bytes: dict[int, int], wrapper_modules: tuple[str, ...],
          systemd: tuple[float | None, str]) -> Goals:
    """`systemd`: systemd_ratio(), which this benchmark does not measure itself."""
    ours = [s for s in samples if s.path == "ours"]
    steps = breakdown(ours)
    unverified = breakdown([s for s in samples if s.path == "ours-unverified"])
    span = {path: exec_to_init(samples, path)
            for path in ("c-original", "ours-unverified", "ours")}
    ratio_span = (span["ours-unverified"] / span["c-original"]
                  if span["ours-unverified"] and span["c-original"] else None)

    def at_100(path: str) -> float | None:
        return lines_of.summary.get(path, {}).get(100, {}).get("median_ms")

    original_100, zstd_100 = at_100("c-original"), at_100("classic-zstd")
    to_original = lines_of.ratio_to("c-original").get(100)
    to_zstd = lines_of.ratio_to("classic-zstd").get(100)
    read = lines_of.with_reads(files_of, payload_bytes)
    # a crossing needs both lines, each through two sizes or more
    lz4_cross = read.crossing("classic-lz4") if all(
        len(read.summary.get(path, {})) > 1 for path in ("ours", "classic-lz4")) else None
    systemd_value, systemd_shown = systemd

    def x(value: float | None) -> str:
        return f"{value:.2f}x" if value is not None else "not measured"

    targets: list[Target] = [
        ("storage-init's span (exec of /init to init running), ours-unverified / the C "
         "original", ratio_span, 1.00, x(ratio_span) + (
             f" ({span['ours-unverified']:.0f} / {span['c-original']:.0f} ms)"
             if ratio_span else "")),
        ("time to init at 100 MB, ours / the C original", to_original, 1.05, x(to_original)),
        ("time to init at 100 MB, ours / classic zstd", to_zstd, 0.60, x(to_zstd)),
        (f"crossover with classic lz4, the bootloader's read at {LOAD_MB_S} MB/s added",
         lz4_cross, 30.0, f"{lz4_cross:.1f} MB" if lz4_cross is not None else "no crossover"),
        ("systemd mode / Debian's dracut, to multi-user.target", systemd_value, 0.90,
         systemd_shown),
    ]
    # The bound: what ours takes with storage-init's own work (its steps' Python, the trigger,
    # the mounts and the switch) at zero, leaving the kernel's start and unpack, the runtime's
    # start, the kernel's module loads and init's exec (its pages read through the image).
    # the runtime's start: the loader, CPython's and Nuitka's initialisation, to storage-init's
    # first line (its imports after that are storage-init's own work)
    python = steps.get("  of which: exec to the program's first line (loader, Python, Nuitka)",
                       steps.get("exec of /init to storage-init's first step (loading, imports)"))
    shared = module_load_ms(
        ours, lambda name: name in wrapper_modules or signature_hash_module(name))
    every = module_load_ms(ours, lambda name: True)
    exec_verified = steps.get("exec of init (from storage-init's last step to init running)")
    exec_unverified = unverified.get(
        "exec of init (from storage-init's last step to init running)")
    kernel, unpack = (steps.get("kernel start to /init (unpack excluded)"),
                      steps.get("kernel unpacks the mini-initramfs"))
    figures: dict[str, object] = {"span_ms": span, "module_loads_shared_ms": shared,
                                  "module_loads_ms": every}
    lines: list[str] = []
    parts = (python, shared, every, exec_verified, exec_unverified, kernel, unpack)
    if all(v is not None for v in parts) and span["c-original"]:
        assert python is not None and shared is not None and every is not None
        assert exec_verified is not None and exec_unverified is not None
        assert kernel is not None and unpack is not None
        span_floor = python + shared + exec_unverified
        floor = kernel + unpack + python + every + exec_verified
        bounds = {"span": span_floor / span["c-original"],
                  "c-original": floor / original_100 if original_100 else None,
                  "classic-zstd": floor / zstd_100 if zstd_100 else None,
                  # ours flat at the bound, with its file's read (the same file at any size)
                  "lz4-crossover": None if lz4_cross is None else Curves(read.summary, {
                      **read.fits, "ours": (0.0, floor + load_ms(next(iter(files_of.values())),
                                                                 "ours"))}).crossing("classic-lz4")}
        figures.update({"span_floor_ms": span_floor, "floor_ms": floor, "bounds": bounds})
        lines = [
            "", "What bounds the goals: ours with storage-init's own work at zero (its "
            "imports, its steps' Python, the trigger, the mounts, the switch), keeping what "
            "it does not choose: the kernel's start and unpack, the runtime's start to "
            "storage-init's first line, the kernel's loads of the modules and init's exec "
            "(its pages read through the image; from the timings' last stamp, so with the "
            "few ms of writing them):", "",
            "| part (median ms over our boots) | ms |", "|---|---:|",
            f"| exec of /init to storage-init's first line (loader, Python, Nuitka) "
            f"| {python:.0f} |",
            "| module loads the C original's wrapper makes too (the kernel reads, hashes "
            "twice, checks the signature, relocates, inits), with the CPU's own sha module "
            f"where ours loads it first | {shared:.0f} |",
            f"| all our module loads (with device-mapper's for verity) | {every:.0f} |",
            f"| exec of init unverified / verified | {exec_unverified:.0f} / "
            f"{exec_verified:.0f} |",
            f"| kernel start to /init, unpack of the mini-initramfs | {kernel:.0f}, "
            f"{unpack:.0f} |",
            "", f"- span, unverified: at least {span_floor:.0f} ms against the C original's "
            f"{span['c-original']:.0f}: ratio >= {bounds['span']:.2f}",
            f"- time to init at 100 MB, verified: at least {floor:.0f} ms: >= "
            + (f"{bounds['c-original']:.2f}x the C original" if bounds["c-original"] else "?")
            + ", >= " + (f"{bounds['classic-zstd']:.2f}x classic zstd"
                         if bounds["classic-zstd"] else "?")
            + "; crossover with classic lz4 (read added) >= "
            + (f"{bounds['lz4-crossover']:.1f} MB" if bounds["lz4-crossover"] is not None
               else "none")]
    lines = ["", "Goals (ratios in one run; by instructions with --icount):", "",
             "| goal | measured | target | met |", "|---|---|---:|---|",
             *(f"| {t} | {shown} | {f'{lim:g} MB' if 'crossover' in t else f'{lim:.2f}x'} | "
               f"{'yes' if v is not None and v <= lim else 'NO'} |"
               for t, v, lim, shown in targets), *lines]
    return Goals(targets, lines, figures)


def report(out: Path, sizes: list[int], samples: list[Sample],
           image_bytes: dict[int, dict[str, int]], payload_bytes: dict[int, int],
           kver: str, unpacked: dict[str, int], original: c_original.Built,
           icount: bool = False, cpu: str | None = None, smp: int = 1) -> None:
    lines_of = curves(samples, sizes, payload_bytes, PATHS)
    summary = lines_of.summary
    slopes = {path: lines_of.fits[path][0] * 100 for path in PATHS}  # ms per 100 MB
    crossover = lines_of.crossing("classic-zstd")
    crossover_lz4 = lines_of.crossing("classic-lz4")
    ratios, to_original = lines_of.ratio_to("classic-zstd"), lines_of.ratio_to("c-original")
    to_lz4 = lines_of.ratio_to("classic-lz4")
    verity_cost = {size: summary["ours"][size]["median_ms"]
                   - summary["ours-unverified"][size]["median_ms"]
                   for size in sizes if size in summary.get("ours", {})
                   and size in summary.get("ours-unverified", {})}
    ours = [s for s in samples if s.path == "ours"]
    steps = breakdown(ours)
    own_steps = statistics.median(float(s.timings["total_ms"])  # type: ignore[arg-type]
                                  for s in ours if s.timings is not None) if ours else None
    first_step = steps.get("exec of /init to storage-init's first step (loading, imports)")
    unpack = steps.get("kernel unpacks the mini-initramfs")
    mini = max(v["mini-initramfs"] for v in image_bytes.values())
    mini_zstd = max(v.get("mini-initramfs-as-zstd", v["mini-initramfs"])
                    for v in image_bytes.values())
    exec_init = {path: exec_to_init(samples, path) for path in ("c-original", "ours")}

    def shown_ms(value: float | None) -> str:
        return f"{value:.0f} ms" if value is not None else "not measured"

    # the start-up issue's goals that stand; its ratios and crossovers are restated in goals()
    targets: list[Target] = [
        ("our slope <= 5% of classic zstd's", slopes["ours"] / slopes["classic-zstd"]
         if slopes["classic-zstd"] else None, 0.05,
         f"{100 * slopes['ours'] / slopes['classic-zstd']:.1f}%"
         if slopes["classic-zstd"] else "n/a"),
        ("mini-initramfs <= 4 MB compressed with zstd", mini_zstd / 1e6, 4.0,
         f"{mini_zstd / 1e6:.2f} MB (as built: {mini / 1e6:.2f} MB)"),
        ("mini-initramfs <= 8 MB unpacked", unpacked["ours"] / 1e6, 8.0,
         f"{unpacked['ours'] / 1e6:.2f} MB"),
        ("kernel unpack of the mini-initramfs <= 200 ms", unpack, 200.0, shown_ms(unpack)),
        ("exec of /init to the first step <= 300 ms", first_step, 300.0, shown_ms(first_step)),
        ("storage-init's own steps <= 500 ms", own_steps, 500.0, shown_ms(own_steps)),
    ]
    goals_run = goals(samples, lines_of, image_bytes, payload_bytes, original.modules,
                      systemd_ratio())
    clock = "KVM" if kvm_works() else "TCG"
    if cpu and clock == "TCG":
        clock += f" -cpu {cpu}"
    if smp > 1:
        clock += f" -smp {smp}"
    if icount:
        clock += " -icount shift=0"
    accelerator = clock + (" (CPU time = guest instructions, 1 ns each)" if icount else "")
    result = {
        "kernel": kver, "accelerator": accelerator,
        "memory_mb": MEMORY_MB, "append": APPEND,
        "payload_bytes": payload_bytes, "image_bytes": image_bytes,
        "summary": summary, "slope_ms_per_100mb": slopes, "crossover_mb": crossover,
        "crossover_classic_lz4_mb": crossover_lz4,
        "ratio_ours_to_classic_zstd": ratios, "ratio_ours_to_c_original": to_original,
        "ratio_ours_to_classic_lz4": to_lz4,
        "verity_cost_ms": verity_cost,
        "our_breakdown_ms": steps, "exec_of_init_to_init_ms": exec_init,
        "unpacked_bytes": unpacked,
        "c_original": {"source": c_original.UPSTREAM, "commit": original.commit,
                       "modules_loaded_by_wrapper": list(original.modules)},
        "targets": [{"target": t, "value": v, "limit": lim, "shown": shown,
                     "met": v is not None and v <= lim} for t, v, lim, shown in targets],
        "goals": [{"goal": t, "value": v, "limit": lim, "shown": shown,
                   "met": v is not None and v <= lim} for t, v, lim, shown in goals_run.targets],
        "goal_bounds": goals_run.figures,
        "samples": [s.__dict__ for s in samples],
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    lines = [f"Benchmark: Debian {kver}, QEMU {accelerator}, "
             f"{MEMORY_MB} MB, time to init in ms (median, min-max of "
             f"{max(int(v['boots']) for p in summary.values() for v in p.values())} boots)", "",
             "| payload MB | " + " | ".join(PATHS)
             + " | ours/classic-zstd | ours/classic-lz4 | ours/c-original |",
             "|---:|" + "---:|" * len(PATHS) + "---:|---:|---:|"]
    for size in sizes:
        cells = []
        for path in PATHS:
            v = summary.get(path, {}).get(size)
            cells.append(f"{v['median_ms']:.0f} ({v['min_ms']:.0f}-{v['max_ms']:.0f})"
                         if v else "failed")
        lines.append(f"| {size} | " + " | ".join(cells) + " | " + " | ".join(
            f"{r[size]:.2f}" if size in r else "n/a" for r in (ratios, to_lz4, to_original))
            + " |")
    lines += ["", "| slope, ms per 100 MB | " + " | ".join(f"{slopes[p]:.0f}" for p in PATHS)
              + " |", "", "crossover (ours = classic zstd): "
              + (f"{crossover:.1f} MB" if crossover is not None else "none")
              + "; with classic lz4: "
              + (f"{crossover_lz4:.1f} MB" if crossover_lz4 is not None else "none"), "",
              "| payload MB | classic zstd bytes | classic lz4 bytes "
              "| C original's initramfs bytes "
              "| our mini-initramfs bytes | EROFS image bytes | of which verity tree "
              "| verity's cost at boot (ours - ours-unverified) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        b = image_bytes[size]
        cost = f"{verity_cost[size]:+.0f} ms" if size in verity_cost else "n/a"
        lines.append(f"| {size} | {b['classic-zstd']:,} | {b['classic-lz4']:,} | "
                     f"{b['c-original-initramfs']:,} | "
                     f"{b['mini-initramfs']:,} | {b['erofs-image']:,} | {b['verity-tree']:,} "
                     f"| {cost} |")
    lines += ["", f"With the bootloader's read of the initramfs file at {LOAD_MB_S} MB/s added "
              "(a model: file bytes / speed; QEMU's -initrd costs the guest nothing, the EROFS "
              "image's reads are real disk reads in every boot above), ms:", "",
              *loaded_rows(sizes, summary, image_bytes, PATHS)]
    lines += ["", f"The mini-initramfs carries {image_bytes[sizes[0]]['dm-modules']:,} bytes "
              "of device-mapper modules (dm-mod, dm-bufio, dm-verity) for verity; "
              "ours-unverified boots the same one."]
    lines += ["", f"Unpacked: our mini-initramfs {unpacked['ours']:,} bytes, the C original's "
              f"{unpacked['c-original']:,}. Exec of /init to the final init running (median, "
              "all sizes): " + ", ".join(f"{p} {shown_ms(v)}" for p, v in exec_init.items())
              + " (the C original's includes its wrapper loading "
              + ", ".join(original.modules) + "; a module made for CPU features the guest's "
              "CPU lacks is skipped there, as ours skips it"
              + f"). C original: {c_original.UPSTREAM} at "
              + original.commit[:12] + "."]
    lines += steps_and_targets(steps, targets)
    lines += goals_run.lines
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print("\n" + text)
    plot(out / "plot.png", sizes, summary, payload_bytes, clock, icount)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'plot.png'}")


def plot(path: Path, sizes: list[int], summary: dict[str, dict[int, dict[str, float]]],
         payload_bytes: dict[int, int], accel: str, icount: bool = False,
         paths: tuple[str, ...] = PATHS, title: str = "initoverlayfs vs a classic initramfs"
         ) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in paths:
        points = sorted(summary.get(name, {}).items())
        xs = [payload_bytes[s] / (1 << 20) for s, _ in points]
        ys = [v["median_ms"] / 1000 for _, v in points]
        low = [(v["median_ms"] - v["min_ms"]) / 1000 for _, v in points]
        high = [(v["max_ms"] - v["median_ms"]) / 1000 for _, v in points]
        ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=name)
    ax.set_xlabel("payload (MB, uncompressed)")
    ax.set_ylabel("time to init (s of guest uptime, 1 ns per instruction)" if icount
                  else "time to init (s, guest uptime)")
    ax.set_title(f"{title} (QEMU {accel})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
