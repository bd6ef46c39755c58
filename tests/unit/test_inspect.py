"""initoverlayfs-inspect against pairs built by initoverlayfs-install (real mkfs.erofs, zstd,
dump.erofs, on the fixture sysroot), initoverlayfs-install --dry-run, --version everywhere,
and the boot report and its picture from a kept report."""

from __future__ import annotations

import json
import random
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from initoverlayfs_build import bootreport, freeze, inspector, install, manpage

from storage_init.config import image_name
from storage_init.main import main as storage_init_main

from .test_builder_install import KVER, args, snapshot, sysroot, the_image  # noqa: F401
from .test_builder_modules import moddir  # noqa: F401 - the fixture tree of modules


def mini(root: Path) -> Path:
    return root / f"boot/initramfs-{KVER}.img"


def inspect(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = inspector.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def built(sysroot: Path) -> Path:  # noqa: F811
    assert install.main(args(sysroot, "--compress", "zstd")) == 0
    return sysroot


def test_lists_the_mini_initramfs_its_modules_and_why_and_the_image(
        built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = inspect(capsys, str(mini(built)), "--json")
    assert code == 0
    d = json.loads(out)
    assert d["mini"]["mode"] == "rdinit" and d["mini"]["kver"] == KVER
    assert [s["kind"] for s in d["mini"]["segments"]] == ["zstd"]
    files = {f["path"]: f for f in d["mini"]["files"]}
    assert files["/init"]["target"] == "usr/lib/initoverlayfs/storage-init"
    why = {m["name"]: m["why"] for m in d["mini"]["modules"]}
    assert why["virtio_blk"] == "storage driver (virtio-blk)"
    assert why["dm_verity"] == "dm-verity over the image"
    assert why["dm_mod"].startswith("needed by ") and "dm_verity" in why["dm_mod"]
    assert why["virtio_ring"].startswith("needed by ")
    assert f"fs /{the_image(built).name}" in d["mini"]["config"]
    image = d["image"]
    assert image["path"] == str(the_image(built)) and image["bytes"] == the_image(
        built).stat().st_size
    assert image["content_bytes"] > 0 and image["verity"]["data_blocks"] > 0
    # and the same as text
    code, out, _ = inspect(capsys, str(mini(built)))
    assert code == 0
    assert "rdinit mode" in out and "dm-verity over the image" in out
    assert f"verity: root hash {image['verity']['root_hash']}" in out


def test_files_lists_every_path_of_the_image(built: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = inspect(capsys, str(mini(built)), "--files", "--json")
    assert code == 0
    assert json.loads(out)["image"]["files"] == ["/sbin/", "/sbin/init"]


def test_verify_accepts_the_pair(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = inspect(capsys, "--verify", str(mini(built)))
    assert (code, err) == (0, "")
    assert "verity root hash and tree checked" in out


def test_verify_refuses_a_flipped_data_byte(built: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    image = the_image(built)
    data = bytearray(image.read_bytes())
    data[2000] ^= 0x01
    image.write_bytes(bytes(data))
    code, out, err = inspect(capsys, "--verify", str(mini(built)))
    assert (code, out) == (1, "")
    assert "its data does not give the mini-initramfs's root hash" in err
    assert err.count("\n") == 1


def test_verify_refuses_a_flipped_tree_byte(built: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # incompressible: over 128 blocks, so the tree has two levels
    (built / "content/sbin/big").write_bytes(random.Random(1).randbytes(600_000))
    assert install.main(args(built, "-f")) == 0
    image = the_image(built)
    offset = json.loads(inspect(capsys, str(mini(built)), "--json")[1])["image"]["verity"][
        "hash_offset"]
    data = bytearray(image.read_bytes())
    assert len(data) > offset + 2 * 4096
    data[offset + 4096 + 5] ^= 0x01  # the top level's first digest, after the superblock
    image.write_bytes(bytes(data))
    code, _, err = inspect(capsys, "--verify", str(mini(built)))
    assert code == 1 and "its stored hash tree differs from its data's at level 1" in err


def test_verify_refuses_an_image_without_its_hash_tree(
        built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = the_image(built)
    config = json.loads(inspect(capsys, str(mini(built)), "--json")[1])
    with image.open("r+b") as f:
        f.truncate(config["image"]["verity"]["hash_offset"])
    code, _, err = inspect(capsys, "--verify", str(mini(built)))
    assert code == 1 and "it has no verity hash tree" in err


def test_verify_refuses_another_builds_image(built: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    first = tmp_path / "first.img"
    shutil.copy(the_image(built), first)
    (built / "content/sbin/other").write_bytes(b"another build" * 5000)
    assert install.main(args(built, "-f")) == 0
    code, _, err = inspect(capsys, "--verify", str(mini(built)), str(first))
    assert code == 1
    assert "it is not the image this mini-initramfs was built with" in err


def test_verify_an_unverified_pair_by_its_content_hash(
        sysroot: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert install.main(args(sysroot, "--no-verity")) == 0
    code, out, _ = inspect(capsys, "--verify", str(mini(sysroot)))
    assert code == 0 and "content hash checked" in out
    image = the_image(sysroot)
    data = bytearray(image.read_bytes())
    data[2000] ^= 0x01
    image.write_bytes(bytes(data))
    code, _, err = inspect(capsys, "--verify", str(mini(sysroot)))
    assert code == 1 and "is not the" in err and "its name promises" in err


def test_plan_uses_the_mini_initramfs_config_and_kernel(
        built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = inspect(capsys, "--plan", str(mini(built)), "--cmdline",
                           "rd.initoverlayfs.timeout=7")
    assert code == 0
    assert "dry run in rdinit mode" in out
    assert f"/boot/{the_image(built).name}" in out
    assert "verity        root hash " in out  # the host's config never holds one
    assert f"/lib/modules/{KVER}" in out and "timeout       7 s" in out


def test_not_an_initramfs_is_one_clear_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"hello, not an archive")
    code, out, err = inspect(capsys, str(junk))
    assert (code, out) == (1, "")
    assert err.startswith("initoverlayfs-inspect: error: ") and "not an initramfs" in err


def test_install_dry_run_writes_nothing_and_says_what_it_would(
        sysroot: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    before = snapshot(sysroot / "boot")
    assert install.main(args(sysroot, "--dry-run", "--compress", "zstd")) == 0
    out = capsys.readouterr().out
    assert snapshot(sysroot / "boot") == before
    assert not (sysroot / "etc/initoverlayfs.conf").exists()
    assert f"dry run for kernel {KVER} (amd64); nothing is written" in out
    assert f"{sysroot}/boot/initramfs-{KVER}.img: the mini-initramfs (our cpio writer, zstd)" \
        in out
    assert f"{sysroot}/boot/{image_name(KVER, 'ID')}" in out
    assert "content: the tree " in out and "1 files" in out
    assert "dm_verity" in out and "dm-verity over the image" in out
    assert f"{sysroot}/etc/initoverlayfs.conf: the config, from /etc/fstab" in out
    # and the size it gives is the real build's, within the config's verity keys
    said = int(out.split("zstd), ")[1].split(" bytes")[0])
    assert install.main(args(sysroot, "--compress", "zstd")) == 0
    assert abs(mini(sysroot).stat().st_size - said) < 400


def test_every_command_has_version(capsys: pytest.CaptureFixture[str]) -> None:
    for main in (install.main, inspector.main, freeze.main):
        with pytest.raises(SystemExit) as done:
            main(["--version"])
        assert done.value.code == 0
        assert capsys.readouterr().out.strip().endswith(" 0.1.0")
    assert storage_init_main(["storage-init", "--version"]) == 0
    assert capsys.readouterr().out.strip() == "storage-init 0.1.0"


# --- the boot report --------------------------------------------------------------------------

TIMINGS = {"version": 1, "mode": "rdinit", "entered_boottime_s": 1.5,
           "started_boottime_s": 1.56, "finished_boottime_s": 1.9,
           "steps": [{"name": "mount-api", "ms": 10.0}, {"name": "wait-bootfs", "ms": 300.0}],
           "image": "/initoverlayfs-x.img", "image_device": "/dev/dm-0",
           "image_read_bytes": 4 << 20, "image_bytes": 40 << 20}


def test_report_timeline_from_every_source() -> None:
    report = bootreport.Report(timings=TIMINGS, released={"image_read_bytes": 10 << 20},
                               kernel=bootreport.kmsg_marks([
                                   "6,1,900000,-;Trying to unpack rootfs image as initramfs...",
                                   "6,2,1100000,-;Freeing initrd memory: 7000K",
                                   "6,3,1490000,-;Run /init as init process"]),
                               systemd=bootreport.systemd_marks(
                                   "InitRDTimestampMonotonic=2000000\n"
                                   "UserspaceTimestampMonotonic=3500000\n"
                                   "FinishTimestampMonotonic=0\n",
                                   "ActiveEnterTimestampMonotonic=6000000\n"))
    spans = {s.name: s for s in report.spans()}
    assert (spans["kernel"].start, spans["kernel"].end) == (0.0, 1.49)
    assert (spans["unpack the initramfs"].start, spans["unpack the initramfs"].end) == (0.9, 1.1)
    # in rdinit mode storage-init's part starts at the kernel's exec, before its first line
    assert (spans["storage-init"].start, spans["storage-init"].end) == (1.49, 1.9)
    assert spans["exec, until its first line"].ms == pytest.approx(10.0)
    assert (spans["exec init from the image"].start, spans["exec init from the image"].end
            ) == (1.9, 2.0)
    assert spans["start (Python, imports)"].ms == pytest.approx(60.0)
    assert spans["wait-bootfs"].start == pytest.approx(1.57)
    assert spans["wait-bootfs"].ms == pytest.approx(300)
    assert (spans["systemd in the initrd"].start, spans["systemd in the initrd"].end) == (2, 3.5)
    assert spans["real root: units to multi-user.target"].end == 6.0
    text = report.text()
    assert "read by init (storage-init's handover): 4.00 MiB (10.0%) of 40.00 MiB" in text
    assert "read by the end of the initrd phase: 10.00 MiB (25.0%) of 40.00 MiB" in text


def test_boot_report_and_its_picture_from_a_kept_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "timings.json").write_text(json.dumps(TIMINGS))
    plot = tmp_path / "boot.svg"
    code, out, _ = inspect(capsys, "--boot", "--report-dir", str(tmp_path), "--plot", str(plot))
    assert code == 0
    assert f"from {tmp_path}/timings.json" in out and "wait-bootfs" in out
    assert "no longer in /boot" in out  # the fixture's image name is nowhere
    svg = ElementTree.parse(plot).getroot()
    bars = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.find(
        "{http://www.w3.org/2000/svg}title") is not None]
    titles = [r.findtext("{http://www.w3.org/2000/svg}title") or "" for r in bars]
    assert "wait-bootfs: 300.0 ms" in titles
    assert any(t.startswith("storage-init: ") for t in titles)


def test_boot_report_without_a_report_says_so(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = inspect(capsys, "--boot", "--report-dir", str(tmp_path / "none"))
    if bootreport.SCRATCH_TIMINGS.exists():
        pytest.fail(f"this host has {bootreport.SCRATCH_TIMINGS}: the test needs a host that "
                    "did not boot through initoverlayfs")
    assert code == 1 and "no storage-init timings" in out


def test_man_pages_carry_every_option_and_no_control_characters(
        capsys: pytest.CaptureFixture[str]) -> None:
    for which, parser in (([], install.parser()), (["inspect"], inspector.parser())):
        assert manpage.main(which) == 0
        page = capsys.readouterr().out
        assert not [c for c in page if ord(c) < 0x20 and c != "\n"], which
        for action in parser._actions:
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, (which, option)
