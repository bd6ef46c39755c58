"""initoverlayfs-install(8), made from the same argparse parser as --help, so the two cannot
disagree: `python -m initoverlayfs_build.manpage > initoverlayfs-install.8` (scripts/package
does it)."""

from __future__ import annotations

import argparse
import sys

from . import install

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


def render(parser: argparse.ArgumentParser) -> str:
    lines = [f'.TH {parser.prog.upper()} 8 "" "initoverlayfs" "System Administration"',
             ".SH NAME", f"{roff(parser.prog)} \\- build the initoverlayfs pair for a kernel",
             ".SH SYNOPSIS", f".B {roff(parser.prog)}", "[\\fIOPTIONS\\fR]",
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
    return "\n".join(lines) + "\n" + FILES


def main() -> int:
    sys.stdout.write(render(install.parser()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
