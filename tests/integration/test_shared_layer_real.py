"""systemd mode's shared layer for real: storage-init copies the listed files of the
mini-initramfs (here: this machine's root) with the kernel's sendfile into the scratch tmpfs,
and mounts the overlay with that layer above a real EROFS image on a real loop device."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SHARED = "/usr/bin/true"  # a file every machine has: the "mini-initramfs's" copy


def test_the_listed_files_come_from_the_mini_initramfs_and_the_rest_from_the_image(
        tmp_path: Path) -> None:
    mkfs = shutil.which("mkfs.erofs", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if mkfs is None:
        pytest.fail("mkfs.erofs is missing: install Debian's erofs-utils (.ci/run does)")
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    # The image's copy differs here only so that the test can tell which layer served it
    # (the builder lists only files the image holds byte for byte).
    (tree / SHARED.lstrip("/")).write_bytes(b"the image's copy\n")
    (tree / "usr/bin/only-in-image").write_bytes(b"from the image\n")
    (tree / "usr/bin").chmod(0o750)  # the layer's folder takes the image's mode
    image = tmp_path / "image.erofs"
    subprocess.run([mkfs, str(image), str(tree)], check=True, capture_output=True)
    listing = tmp_path / "shared-files"
    listing.write_text(f"{SHARED}\n")
    work = tmp_path / "work"
    work.mkdir()
    harness = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-m",
         "tests.integration.shared_harness", str(image), str(listing), str(work)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert harness.stdout is not None
        mountinfo = harness.stdout.readline()
        assert f"lowerdir={work}/scratch/shared:{work}/scratch/lower" in mountinfo, (
            mountinfo, harness.stderr.read() if harness.stderr and harness.poll() is not None
            else "")
        # what the new root shows, read inside the harness's mount namespace
        root = Path(f"/proc/{harness.pid}/root") / str(work / "root").lstrip("/")
        assert (root / SHARED.lstrip("/")).read_bytes() == Path(SHARED).read_bytes()
        assert os.access(root / SHARED.lstrip("/"), os.X_OK)
        assert (root / "usr/bin/only-in-image").read_bytes() == b"from the image\n"
        assert (root / "usr/bin").stat().st_mode & 0o777 == 0o750
    finally:
        harness.communicate(input="", timeout=60)
    assert harness.returncode == 0
