"""initoverlayfs-install(8) and initoverlayfs-inspect(8), made from the same argparse parsers
as --help, so the two cannot disagree: `python -m initoverlayfs_build.manpage [inspect] >
FILE.8` (scripts/package and the RPM spec do it); and README's table of the config's keys
(`... manpage config-table`), from the keys' one definition."""

from __future__ import annotations

import argparse
import sys

from storage_init.config import KEYS

from . import inspector, install

INSPECT_FILES = """\
.SH FILES
.TP
.I /run/log/initoverlayfs/timings.json\\fR, \\fI/run/log/initoverlayfs/released.json
This boot's report: storage\\-init's timings, and the image device's read counters at the end
of the initrd phase, which initoverlayfs\\-release.service adds (\\fB\\-\\-boot\\fR reads them).
.SH SEE ALSO
.BR initoverlayfs\\-install (8),
.BR storage\\-init (8),
.BR systemd\\-analyze (1)
"""
FILES = """\
.SH FILES
.TP
.I /etc/initoverlayfs/install.conf\\fR, \\fI/etc/initoverlayfs/install.conf.d/*.conf
Arguments read before the command line, for every build (the kernel hooks' too): shell words,
\\fB#\\fR starts a comment. The command line comes last and wins.
.TP
.I /etc/initoverlayfs.conf
Where storage\\-init finds /boot (\\fBinitoverlayfs.conf\\fR(5)); written from /etc/fstab when
missing. The mini\\-initramfs gets a copy with the image's name and its verity keys.
.TP
.I /boot/initramfs\\-KVER.img\\fR, \\fI/boot/initoverlayfs\\-KVER\\-ID.img
The pair: the mini\\-initramfs and the EROFS image it names.
.SH SEE ALSO
.BR storage\\-init (8),
.BR initoverlayfs.conf (5),
.BR initoverlayfs\\-boot (8)
"""


def roff(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-").replace("'", "\\(aq")


def render(parser: argparse.ArgumentParser, summary: str = "build the initoverlayfs pair for "
           "a kernel", files: str = FILES) -> str:
    lines = [f'.TH {parser.prog.upper()} 8 "" "initoverlayfs" "System Administration"',
             ".SH NAME", f"{roff(parser.prog)} \\- {roff(summary)}",
             ".SH SYNOPSIS", f".B {roff(parser.prog)}", "[\\fIOPTIONS\\fR]",
             *(f"[\\fI{roff(str(a.metavar or a.dest))}\\fR]" for a in parser._actions
               if not a.option_strings),
             ".SH DESCRIPTION", roff(parser.description or ""), ".SH OPTIONS"]
    for action in parser._actions:  # argparse keeps no public list of them
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        names = ", ".join(f"\\fB{roff(o)}\\fR" for o in action.option_strings)
        if action.nargs != 0:
            metavar = action.metavar or (
                "{" + ",".join(action.choices) + "}" if action.choices
                else action.dest.upper())
            names += f" \\fI{roff(str(metavar))}\\fR"
        lines += [".TP", names, roff(action.help or "")]
    return "\n".join(lines) + "\n" + files


def config_table() -> str:
    """README's table of the config's keys, from storage_init.config.KEYS (the keys of one
    meaning share a row)."""
    rows: list[tuple[list[str], str, str]] = []
    for key in KEYS:
        if key.parse is None:
            continue  # the installer's: named in the sentence under the table
        meaning = key.meaning + (f"; `rd.initoverlayfs.{key.name}=` overrides it"
                                 if key.override else "")
        if rows and rows[-1][1:] == (meaning, key.default):
            rows[-1][0].append(key.name)
        else:
            rows.append(([key.name], meaning, key.default))
    lines = ["| key | meaning | default |", "|---|---|---|"]
    lines += [f"| {', '.join(f'`{n}`' for n in names)} | {meaning} | {default} |"
              for names, meaning, default in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    which = (sys.argv[1:] if argv is None else argv) or ["install"]
    if which == ["config-table"]:
        sys.stdout.write(config_table())
    elif which == ["inspect"]:
        sys.stdout.write(render(inspector.parser(), "look into a built pair, verify it, and "
                                "report a boot", INSPECT_FILES))
    else:
        sys.stdout.write(render(install.parser()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
