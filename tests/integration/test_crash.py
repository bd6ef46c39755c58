"""The crash tier: initoverlayfs-install killed (SIGKILL, through strace's syscall fault
injection) at each of its renames, fsyncs, unlinks and writes, and at random moments, while it
replaces a pair in /boot. After every kill /boot must hold a mini-initramfs and the image it
names, which veritysetup verifies against the mini-initramfs's root hash: the old pair or the
new one, never a mix. Then the next run must succeed and leave no temporaries, in /boot or in
TMPDIR. (A power loss is this plus the page cache: the fsyncs are the other half, checked by
their order in the same trace.)"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from initoverlayfs_build import pair
from initoverlayfs_build.run import need
from initoverlayfs_build.ui import Ui

from storage_init.config import image_name
from tests.support import bootfiles
from tests.unit.test_builder_install import KVER, args
from tests.unit.test_builder_install import sysroot as sysroot
from tests.unit.test_builder_modules import moddir as moddir

pytestmark = [pytest.mark.integration, pytest.mark.crash]
REPO = Path(__file__).resolve().parents[2]
POINTS = ("rename", "fsync", "unlink", "unlinkat", "write")


def command(root: Path) -> list[str]:
    return [sys.executable, "-c",
            "import sys; from initoverlayfs_build.install import main; sys.exit(main())",
            *args(root, "--compress", "none", "-f")]


def environment(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmpdir), "SOURCE_DATE_EPOCH": "1700000000",
            "PYTHONPATH": f"{REPO}:{REPO / 'build'}"}


def the_pair(boot: Path) -> tuple[str, str]:
    """(the mini-initramfs's sha256, the image it names), after checking that the image is
    there and verifies against the mini-initramfs's root hash."""
    mini = (boot / pair.mini_name(KVER)).read_bytes()
    config = bootfiles.mini_config(mini)
    assert config.fs
    image = boot / config.fs.lstrip("/")
    assert image.is_file(), f"the mini-initramfs names {image.name}, which is not in /boot"
    refusal = bootfiles.verity_refusal(image, config)
    assert refusal is None, f"{image.name} does not verify: {refusal}"
    return hashlib.sha256(mini).hexdigest(), image.name


def leftovers(boot: Path, tmpdir: Path) -> list[str]:
    return sorted([p.name for p in boot.iterdir() if p.name.startswith(".")]
                  + [p.name for p in tmpdir.iterdir()])


def restore(boot: Path, files: dict[str, bytes]) -> None:
    for path in boot.iterdir():
        if path.name not in files:
            path.unlink()
    for name, data in files.items():
        (boot / name).write_bytes(data)
        (boot / name).chmod(0o600)


def test_a_killed_build_always_leaves_a_pair_that_boots(sysroot: Path,
                                                        tmp_path: Path) -> None:
    strace = need("strace", "to kill the builder at chosen syscalls")
    boot, tmpdir = sysroot / "boot", tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = environment(tmpdir)
    subprocess.run(command(sysroot), env=env, check=True)
    old = the_pair(boot)
    old_files = {p.name: p.read_bytes() for p in boot.iterdir()}
    (sysroot / "content/sbin/init").write_text("#!/bin/sh\necho the new build's init\n")

    # the new build's own trace: how many of each syscall it makes, and their order
    log = tmp_path / "trace"
    started = time.monotonic()
    subprocess.run([strace, "-qq", "-o", str(log), "-e", "signal=none", "-e",
                    f"trace={','.join(POINTS)}",
                    *command(sysroot)], env=env, check=True)
    took = time.monotonic() - started
    new = the_pair(boot)
    assert new != old and new[1] != old[1]
    trace = log.read_text().splitlines()
    counts = Counter(line.split("(", 1)[0] for line in trace)
    assert counts["rename"] == 2 and counts["fsync"] >= 4, counts
    # each rename into /boot is followed by the directory's fsync before the next step
    renames = [i for i, line in enumerate(trace) if line.startswith("rename(")]
    assert all(trace[i + 1].startswith("fsync(") for i in renames), trace

    seen: Counter[tuple[str, str]] = Counter()
    for name in POINTS:
        for when in range(1, counts[name] + 1):
            restore(boot, old_files)
            run = subprocess.run([strace, "-qq", "-o", "/dev/null", "-e",
                                  f"inject={name}:signal=KILL:when={when}", *command(sysroot)],
                                 env=env, capture_output=True, text=True)
            assert run.returncode != 0, f"{name} #{when} was not reached"
            found = the_pair(boot)
            assert found in (old, new), f"killed at {name} #{when}: a pair of neither build"
            seen[("old" if found == old else "new", name)] += 1
            # the next run cleans up and succeeds
            subprocess.run(command(sysroot), env=env, check=True, capture_output=True)
            assert the_pair(boot) == new
            assert leftovers(boot, tmpdir) == [], f"after a kill at {name} #{when}"
    # both outcomes happen: before the mini-initramfs's rename the old pair, after it the new
    assert seen[("old", "rename")] == 2 and seen[("new", "unlink")] >= 1, seen
    print(f"kill points: {dict(counts)}; pairs found after them: {dict(seen)}")

    rng = random.Random(1700000000)
    for _ in range(12):  # and at random moments, as a power cut or an OOM kill would
        restore(boot, old_files)
        proc = subprocess.Popen(command(sysroot), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0, took))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert the_pair(boot) in (old, new)
        subprocess.run(command(sysroot), env=env, check=True, capture_output=True)
        assert leftovers(boot, tmpdir) == []


def test_trace_names_match_the_syscalls_python_makes() -> None:
    """os.replace and Path.unlink are rename(2) and unlink(2) on this libc: if a Python or
    glibc update moved them to renameat2/unlinkat, the kill points above would miss them."""
    strace = need("strace", "to trace")
    out = subprocess.run([strace, "-qq", "-f", "-e", "trace=rename,renameat,renameat2",
                          sys.executable, "-c",
                          "import os, tempfile; d = tempfile.mkdtemp(); "
                          "open(d + '/a', 'w').close(); os.replace(d + '/a', d + '/b')"],
                         capture_output=True, text=True, check=True)
    assert re.search(r"^rename\(", out.stderr, re.MULTILINE), out.stderr


@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_bootloader_that_skips_the_journal_sees_the_new_pair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpointed: bool) -> None:
    """After a replacement, a reader of the ext4 /boot that does not replay the journal
    (GRUB) must see the new mini-initramfs, since the kernel, which replays it, no longer
    finds the old image: the builder checkpoints the journal before removing it. Without
    the checkpoint (the other case) that reader still sees the old mini-initramfs."""
    fs = tmp_path / "boot.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs), "64M"], check=True)
    mnt = tmp_path / "boot"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(fs), str(mnt)], check=True)
    try:
        old_image, new_image = tmp_path / "old", tmp_path / "new"
        old_image.write_bytes(b"old image" * 1000)
        new_image.write_bytes(b"new image" * 1000)
        pair.replace(Ui("t", quiet=True), mnt, KVER, old_image, image_name(KVER, "0" * 16),
                     b"old mini")
        subprocess.run(["sync", "-f", str(mnt)], check=True)
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)  # everything home first
        subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
        if not checkpointed:
            monkeypatch.setattr("initoverlayfs_build.output._checkpoint", lambda d: None)
        pair.replace(Ui("t", quiet=True), mnt, KVER, new_image, image_name(KVER, "1" * 16),
                     b"new mini")
        seen = bootfiles.ext4_file(fs, pair.mini_name(KVER))
        assert seen == (b"new mini" if checkpointed else b"old mini")
        if checkpointed:
            new = bootfiles.ext4_file(fs, image_name(KVER, "1" * 16))
            assert new == new_image.read_bytes()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("where", ["boot", "etc"])
def test_a_read_only_boot_or_etc_is_one_clear_line(
        sysroot: Path, tmp_path: Path, where: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Real read-only mounts (an ext4 mounted ro over the sysroot's directory): /boot
    stops the build before anything changes; /etc only loses the config the builder would
    have written from fstab (the mini-initramfs carries its own copy)."""
    from initoverlayfs_build import install  # (the module under test, as in the unit tier)

    fs = tmp_path / f"{where}.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs), "16M"], check=True)
    target = sysroot / where
    content = {p.name: p.read_bytes() for p in target.iterdir()}
    setup = tmp_path / "setup"
    setup.mkdir()
    subprocess.run(["mount", "-o", "loop", str(fs), str(setup)], check=True)
    for name, data in content.items():
        (setup / name).write_bytes(data)
    subprocess.run(["umount", str(setup)], check=True)
    subprocess.run(["mount", "-o", "loop,ro", str(fs), str(target)], check=True)
    try:
        code = install.main(args(sysroot, "--compress", "none"))
        err = capsys.readouterr().err
        if where == "boot":
            assert code == 1
            assert "it is mounted read-only; nothing was changed" in err, err
            assert "Traceback" not in err
            assert sorted(p.name for p in target.iterdir()) == sorted([*content, "lost+found"])
        else:
            assert code == 0, err
            assert "the new pair is in place, but" in err and "mounted read-only" in err, err
            assert pair.images_of(sysroot / "boot", KVER)
    finally:
        subprocess.run(["umount", str(target)], check=True)
