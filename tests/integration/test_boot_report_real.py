"""The release unit's keep-boot-report on this machine's kernel: a real mkfs.erofs image
loop-mounted read-only where storage-init mounts it (SCRATCH/lower), a file of it read, then
the script run as the release unit runs it; the kept report must carry storage-init's timings
as they were and the loop device's own read counters, which initoverlayfs-inspect --boot reads."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from initoverlayfs_build import bootreport

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "packaging/report/keep-boot-report"


def test_keep_boot_report_keeps_the_timings_and_the_image_devices_counters(
        tmp_path: Path) -> None:
    mkfs = shutil.which("mkfs.erofs")
    if mkfs is None:
        pytest.fail("mkfs.erofs is missing: install Debian's erofs-utils (.ci/run does)")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "read").write_bytes(random.Random(2).randbytes(300_000))
    (tree / "unread").write_bytes(random.Random(3).randbytes(3_000_000))
    image = tmp_path / "image.erofs"
    subprocess.run([mkfs, str(image), str(tree)], check=True, capture_output=True)
    scratch, kept = tmp_path / "scratch", tmp_path / "kept"
    (scratch / "lower").mkdir(parents=True)
    timings = '{\n "version": 1,\n "mode": "rdinit",\n "steps": []\n}\n'
    (scratch / "timings.json").write_text(timings)
    # in a private mount namespace, so nothing is left mounted whatever happens
    script = f"""set -e
loop=$(losetup --find --show --read-only {image})
# a loop device's counters outlive its attachments (on a booted machine, the image's device
# is new to the boot): what was read before this one is the baseline
awk '{{print $3 * 512}}' /sys/block/${{loop#/dev/}}/stat > {tmp_path}/baseline
mount -o ro -t erofs "$loop" {scratch}/lower
losetup -d "$loop"  # autoclear: detached with the unmount
cat {scratch}/lower/read > /dev/null
INITOVERLAYFS_SCRATCH={scratch} INITOVERLAYFS_REPORT_DIR={kept} {SCRIPT}
"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (kept / "timings.json").read_text() == timings
    released = json.loads((kept / "released.json").read_text())
    read = released["image_read_bytes"] - int((tmp_path / "baseline").read_text())
    assert 300_000 <= read < released["image_bytes"], released
    assert released["image_bytes"] >= image.stat().st_size - 4096
    assert released["uptime_s"] > 0
    # the journal's line: the counters, and where the report is
    assert done.stdout == (f"initoverlayfs: the initrd phase read {released['image_read_bytes']} "
                           f"of the image's {released['image_bytes']} bytes (device "
                           f"{released['image_device']}); the boot report is in {kept}\n")
    # and the report reads them back
    report = bootreport.collect(kept, live=False)
    assert report.timings is not None and report.timings["mode"] == "rdinit"
    assert report.released == released


def test_keep_boot_report_without_a_mounted_image_says_so(tmp_path: Path) -> None:
    scratch, kept = tmp_path / "scratch", tmp_path / "kept"
    (scratch / "lower").mkdir(parents=True)
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, env={
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "INITOVERLAYFS_SCRATCH": str(scratch),
        "INITOVERLAYFS_REPORT_DIR": str(kept)})
    assert done.returncode == 0, done.stderr
    assert "timings.json is missing" in done.stdout
    assert "the image's counters are unknown" in done.stdout
    assert not (kept / "released.json").exists()
