"""The release unit's release-image on this machine's kernel: a real mkfs.erofs image
loop-mounted read-only on a scratch tmpfs, a file of it read, storage-init's report files
beside it, then the script run as the release unit runs it: it must add the loop device's own
read counters and one journal line, which initoverlayfs-inspect --boot and a user read, and
then unmount the scratch, whatever the report found."""

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
SCRIPT = REPO / "packaging/report/release-image"


def test_release_image_adds_the_counters_and_the_journal_line_then_unmounts(
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
    scratch.mkdir()
    kept.mkdir()
    lower = scratch / "lower"
    # what storage-init left there (storage_init.boot.Boot.finish)
    timings = '{\n "version": 1,\n "mode": "rdinit",\n "steps": []\n}\n'
    (kept / "timings.json").write_text(timings)
    summary = "storage-init: 17 steps in 950.1 ms, started 1.831 s after kernel start: ... (ms)"
    (kept / "summary").write_text(summary + "\n")
    # in a private mount namespace, so nothing is left mounted whatever happens
    script = f"""set -e
mount -t tmpfs scratch {scratch}
mkdir {lower}
loop=$(losetup --find --show --read-only {image})
echo "${{loop#/dev/}}" > {kept}/image-device
# a loop device's counters outlive its attachments (on a booted machine, the image's device
# is new to the boot): what was read before this one is the baseline
awk '{{print $3 * 512}}' /sys/block/${{loop#/dev/}}/stat > {tmp_path}/baseline
mount -o ro -t erofs "$loop" {lower}
losetup -d "$loop"  # autoclear: detached with the unmount
cat {lower}/read > /dev/null
INITOVERLAYFS_SCRATCH={scratch} INITOVERLAYFS_REPORT_DIR={kept} {SCRIPT}
# released: nothing is mounted there any more
if grep -q " {scratch}" /proc/self/mountinfo; then echo "STILL-MOUNTED"; fi
"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    released = json.loads((kept / "released.json").read_text())
    read = released["image_read_bytes"] - int((tmp_path / "baseline").read_text())
    assert 300_000 <= read < released["image_bytes"], released
    assert released["image_bytes"] >= image.stat().st_size - 4096
    assert released["image_device"] == (kept / "image-device").read_text().strip()
    assert released["uptime_s"] > 0
    # the journal's line: storage-init's summary, the counters, and where the report is
    assert done.stdout == (f"initoverlayfs: {summary}; the initrd phase read "
                           f"{released['image_read_bytes']} of the image's "
                           f"{released['image_bytes']} bytes ({released['image_device']}); "
                           f"the boot report is in {kept}\n")
    assert (kept / "timings.json").read_text() == timings  # left as storage-init wrote it
    # and the report reads them back
    report = bootreport.collect(kept, live=False)
    assert report.timings is not None and report.timings["mode"] == "rdinit"
    assert report.released == released


def test_release_image_without_storage_inits_files_says_so_and_still_releases(
        tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = f"""set -e
mount -t tmpfs scratch {scratch}
INITOVERLAYFS_SCRATCH={scratch} INITOVERLAYFS_REPORT_DIR={tmp_path} {SCRIPT}
if grep -q " {scratch}" /proc/self/mountinfo; then echo "STILL-MOUNTED"; fi
"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"initoverlayfs: storage-init left no summary in {tmp_path}; the "
                           "image's device (unknown) has no counters\n")
    assert not (tmp_path / "released.json").exists()
