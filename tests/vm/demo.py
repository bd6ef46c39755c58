"""README's first command: build everything for the current Debian cloud kernel, boot the
default scenario in QEMU, and print a short boot report. Run through scripts/demo."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from . import scenarios
from .qemu import boot, kvm_works

OUT = Path(__file__).resolve().parents[2] / ".cache" / "demo"


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    print("building: frozen storage-init, Debian cloud kernel images, the disk ...", flush=True)
    artifacts = scenarios.build(OUT, ("cloud",), network=False)
    spec = artifacts.spec(scenarios.DEFAULT)
    assert spec.kernel is not None  # QEMU loads the kernel (scenarios.py)
    print(f"booting {spec.kernel.name} in QEMU ({'KVM' if kvm_works() else 'TCG, no KVM'}), "
          f"{spec.interface} disk ...", flush=True)
    run = boot(spec)
    (OUT / "console.log").write_text(run.console)
    try:
        result = scenarios.result_of(run)
        timings = scenarios.timings_of(run)
    except (AssertionError, StopIteration):
        print(run.describe())
        print("demo: the boot did not reach the test init", file=sys.stderr)
        return 1
    built = artifacts.kernels["cloud"]
    print()
    print(f"kernel          {built.kernel.kver} (Debian), command line: {spec.append}")
    print(f"mini-initramfs  {built.initramfs.stat().st_size:>12,} bytes "
          f"({built.unpacked_bytes:,} unpacked)  {built.initramfs}")
    print(f"EROFS image     {built.image.stat().st_size:>12,} bytes  {built.image}")
    print(f"storage-init    started {timings['started_boottime_s']:.3f} s after kernel start; "
          "its steps:")
    for step in timings["steps"]:  # type: ignore[attr-defined]
        print(f"  {step['name']:<16}{step['ms']:>10.1f} ms")
    print(f"  {'total':<16}{timings['total_ms']:>10.1f} ms")
    print(f"image read      {timings['image_read_bytes']:,} of {timings['image_bytes']:,} bytes "
          f"of {timings['image_device']} when init took over (the rest is read as used)")
    print(f"time to init    {result['uptime']} s (guest uptime when /sbin/init started as "
          f"PID {result['pid']})")
    print(f"root            {str(result['root']).split()[0]} over {result['lower']}")
    print(f"/boot           {result['boot']}; old initramfs freed: {result['freed']}; "
          f"/ writable: {result['writable']}")
    print(f"QEMU            powered off after {run.seconds:.1f} s; console in "
          f"{OUT / 'console.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
