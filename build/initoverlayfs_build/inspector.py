"""`initoverlayfs-inspect`: look into a built pair, check it belongs together, show storage-init's
plan for it, and report what this boot did (`--boot`, `--plot`)."""

from __future__ import annotations

import argparse
import json
import stat
import sys
from pathlib import Path
from typing import Any

from storage_init.boot import RDINIT, SYSTEMD
from storage_init.config import CONFIG_PATH

from . import __version__, bootreport, builtpair, svgplot
from .errors import BuildError
from .ui import Ui

PROG = "initoverlayfs-inspect"
KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link",
         stat.S_IFCHR: "char", stat.S_IFBLK: "block"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Look into an initoverlayfs pair: the mini-initramfs MINI (its files, "
                    "modules and why each is there, compression, embedded config) and the "
                    "image it names (EROFS facts, verity). --verify checks that the image is "
                    "the one built with MINI; --plan shows storage-init's plan of steps for "
                    "MINI's own config; --boot reports what this boot did.")
    p.add_argument("mini", nargs="?", type=Path, metavar="MINI",
                   help="a mini-initramfs, e.g. /boot/initramfs-$(uname -r).img")
    p.add_argument("image", nargs="?", type=Path, metavar="IMAGE",
                   help="the image (default: the one MINI's config names, next to MINI)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--verify", action="store_true",
                      help="check that IMAGE is the one built with MINI: verity superblock, "
                           "sizes and salt, root hash over every data block, the stored tree "
                           "(without verity: the content hash in the image's name); exit 0, "
                           "else one line saying what differs and exit 1")
    what.add_argument("--plan", action="store_true",
                      help="storage-init's plan of steps for MINI's config and kernel, as "
                           "`storage-init --dry-run` shows it")
    what.add_argument("--boot", action="store_true",
                      help="this boot's report: the timeline (kernel, storage-init's steps, "
                           "systemd in the initrd, the real root to multi-user.target) and "
                           "the bytes read from the image against its size and content")
    p.add_argument("--cmdline", metavar="TEXT",
                   help="with --plan: this kernel command line (default: /proc/cmdline)")
    p.add_argument("--plot", type=Path, metavar="FILE",
                   help="with --boot: also draw the timeline into FILE (SVG)")
    p.add_argument("--report-dir", type=Path, default=bootreport.REPORT_DIR, metavar="DIR",
                   help="with --boot: where the release unit kept the report "
                        f"(default: {bootreport.REPORT_DIR})")
    p.add_argument("--files", action="store_true",
                   help="also list every file of the image (one dump.erofs per directory)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def describe(ui: Ui, mini: builtpair.Mini, image_path: Path, files: bool) -> dict[str, Any]:
    entries = [{"path": "/" + e.name, "type": KINDS.get(e.kind, "other"), "bytes": len(e.data),
                **({"target": e.data.decode(errors="replace")}
                   if e.kind == stat.S_IFLNK else {})}
               for e in mini.entries if e.name not in (".", "TRAILER!!!")]
    out: dict[str, Any] = {
        "mini": {"path": str(mini.path), "bytes": mini.size,
                 "segments": [{"kind": k, "bytes": n} for k, n in mini.segments],
                 "unpacked_bytes": mini.unpacked_bytes, "mode": mini.mode, "kver": mini.kver,
                 "config": mini.config,
                 "modules": [{"name": m.name, "path": "/" + m.path, "bytes": m.size,
                              "why": m.why} for m in mini.modules],
                 "files": entries}}
    try:
        verity = mini.verity()
    except ValueError as exc:
        verity, out["verity_error"] = None, str(exc)
    image: dict[str, Any] = {"path": str(image_path)}
    if image_path.exists():
        facts = builtpair.read_image(ui, image_path)
        image.update({"bytes": facts.size, "content_bytes": facts.content_bytes,
                      "erofs": facts.erofs})
        if files:
            image["files"] = builtpair.image_files(ui, image_path)
    else:
        image["missing"] = True
    image["verity"] = None if verity is None else {
        "root_hash": verity.root_hash, "salt": verity.salt, "data_blocks": verity.data_blocks,
        "hash_offset": verity.hash_offset, "file_bytes_at_least": verity.file_size}
    out["image"] = image
    return out


def print_description(d: dict[str, Any]) -> None:
    mini, image = d["mini"], d["image"]
    segments = " + ".join(f"{s['kind']} {s['bytes']}" for s in mini["segments"])
    print(f"{mini['path']}: {mini['bytes']} bytes ({segments}), {mini['unpacked_bytes']} "
          f"bytes of files unpacked; {mini['mode']} mode; kernel {mini['kver'] or '?'}")
    print(f"files ({len(mini['files'])}):")
    for e in mini["files"]:
        extra = f" -> {e['target']}" if "target" in e else ""
        size = f"{e['bytes']:>10}" if e["type"] == "file" else f"{e['type']:>10}"
        print(f"  {size}  {e['path']}{extra}")
    print(f"modules ({len(mini['modules'])}, in load order):")
    for m in mini["modules"]:
        print(f"  {m['name']:<24} {m['bytes']:>9}  {m['why']}")
    print(f"config ({CONFIG_PATH} inside):")
    for line in mini["config"].splitlines():
        print(f"  {line}")
    print(f"image {image['path']}:")
    if image.get("missing"):
        print("  missing (pass its path as the second argument)")
    else:
        erofs = image["erofs"]
        content = image["content_bytes"]
        print(f"  {image['bytes']} bytes; EROFS {erofs.get('Filesystem blocks', '?')} blocks, "
              f"{erofs.get('Filesystem total file count', '?')} files, "
              f"{erofs.get('Filesystem compressed files', '?')} of them compressed; "
              f"files unpacked {content if content is not None else '?'} bytes "
              f"(on disk {erofs.get('Filesystem total file size', '?')})")
        print(f"  features: {erofs.get('Filesystem features', '?')}")
    verity = image["verity"]
    if verity:
        print(f"  verity: root hash {verity['root_hash']}, salt {verity['salt'][:16]}..., "
              f"{verity['data_blocks']} data blocks, tree at byte {verity['hash_offset']}")
    else:
        print("  verity: none (built with --no-verity): mounted unverified")
    for path in image.get("files", []):
        print(f"  {path}")


def boot_report(args: argparse.Namespace, ui: Ui) -> int:
    report = bootreport.collect(args.report_dir)
    image = (report.timings or {}).get("image")
    if image:
        for candidate in (Path("/boot") / image.lstrip("/"), Path(image)):
            if candidate.is_file():
                report.image_file = str(candidate)
                try:
                    report.content_bytes = builtpair.read_image(ui, candidate).content_bytes
                except BuildError as exc:
                    report.notes.append(f"the image's content size is unknown: {exc.message}")
                break
        else:
            report.notes.append(f"the booted image {image} is no longer in /boot (rebuilt "
                                "since?): its content size is unknown")
    if args.json:
        print(json.dumps(report.as_json(), indent=1))
    else:
        print(report.text())
    if args.plot:
        title = f"initoverlayfs boot ({(report.timings or {}).get('mode', '?')} mode)"
        args.plot.write_text(svgplot.svg(report.spans(), title))
        if not args.json:
            print(f"timeline drawn in {args.plot}")
    return 0 if report.timings is not None else 1


def plan(args: argparse.Namespace, mini: builtpair.Mini) -> int:
    # storage-init's own dry run, imported here: --boot and the listing need none of it
    from storage_init.boot import Paths
    from storage_init.kernel import Kernel
    from storage_init.main import dry_run

    paths = Paths(config=f"{args.mini}:{CONFIG_PATH}")
    return dry_run(Kernel(), mini.mode, paths, args.cmdline, mini.config, mini.kver)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    ui = Ui(PROG, quiet=True)
    if args.boot:
        return boot_report(args, ui)
    if args.plot:
        p.error("--plot goes with --boot")
    if args.mini is None:
        p.error("MINI is required (or --boot)")
    try:
        mini = builtpair.read_mini(ui, args.mini)
        image = args.image or builtpair.default_image(mini)
        if args.verify:
            problem = builtpair.check_image(mini, image)
            if problem:
                print(f"{PROG}: {problem}", file=sys.stderr)
                return 1
            print(f"{image} is the image {args.mini} was built with"
                  + (" (verity root hash and tree checked)" if mini.verity() else
                     " (content hash checked; the pair is unverified)"))
            return 0
        if args.plan:
            if mini.mode not in (RDINIT, SYSTEMD):
                raise BuildError(f"{args.mini} runs no storage-init (neither /init nor its "
                                 "service): not a mini-initramfs of initoverlayfs")
            return plan(args, mini)
        description = describe(ui, mini, image, args.files)
    except BuildError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(description, indent=1))
    else:
        print_description(description)
    return 0


if __name__ == "__main__":
    sys.exit(main())
