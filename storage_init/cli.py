"""storage-init's command line when it is not PID 1: --help, --version, --dry-run, --systemd.

Parsed here rather than by argparse: argparse imports gettext, locale, shutil, textwrap and re
(and with re enum, functools, collections...), and the frozen binary carries every module a
path of it can import. Those were 0.9 MB of the 6.7 MB binary, unpacked by the kernel at
every boot, for a command line that PID 1 never parses and the systemd service parses once.

The behaviour is argparse's for these options: `--opt VALUE` and `--opt=VALUE`; `--` ends
the options; a later repeat wins; an error is the usage line and `storage-init: error: ...` on
stderr with exit status 2. Not kept: abbreviations of long options (`--dry` for `--dry-run`).
"""

from __future__ import annotations

from . import TYPE_CHECKING
from .config import OVERRIDDEN
from .record import record

if TYPE_CHECKING:
    from collections.abc import Sequence

PROG = "storage-init"
USAGE = f"usage: {PROG} [-h] [--dry-run] [--systemd] [--config PATH] [--cmdline TEXT] [--version]"
DESCRIPTION = (
    "Early-boot storage shim of initoverlayfs. Run by the kernel as PID 1 (rdinit=/init) it\n"
    "finds /boot, mounts the EROFS image from it under a tmpfs-backed overlay, switches root\n"
    "and executes init. Run by hand it can only show its plan.")
# (option, metavar, help); help may hold {default}: the default config file
OPTIONS = (
    ("-h, --help", "", "show this help message and exit"),
    ("--dry-run", "", "print the resolved configuration and the plan of steps, then exit"),
    ("--systemd", "", "run as a systemd service in the mini-initramfs (udevd already up):\n"
                      "the same steps without the early mounts, switch root and exec; on a\n"
                      "failure rd.emergency= as PID 1 would, or with rd.shell an exit for\n"
                      "OnFailure="),
    ("--config", "PATH", "config file (default: {default})"),
    ("--cmdline", "TEXT", "with --dry-run: use this kernel command line instead of\n"
                          "/proc/cmdline"),
    ("--version", "", "show the version and exit"),
)
EPILOG = (
    # the config keys the command line overrides, from their one definition
    "Kernel command line: rd.initoverlayfs." + " .".join(f"{n}=" for n in OVERRIDDEN)
    + " .timeout=\n.init= .debug .verity=0|1, init=, rd.shell, "
    "rd.emergency=reboot|poweroff|halt; for a\n"
    "bootfs on NBD, rd.initoverlayfs.bootfs=nbd:HOST[:PORT]/EXPORT and\n"
    "ip=CLIENT::GATEWAY:NETMASK:HOSTNAME:INTERFACE:none (static IPv4 only).")
FLAGS = {"-h": "help", "--help": "help", "--dry-run": "dry_run", "--systemd": "systemd",
         "--version": "version"}
VALUED = {"--config": "config", "--cmdline": "cmdline"}


class UsageError(Exception):
    """A command line these options do not describe; str() says what is wrong."""


@record
class Options:
    config: str
    cmdline: str | None = None
    dry_run: bool = False
    systemd: bool = False
    help: bool = False
    version: bool = False


def parse(args: Sequence[str], default_config: str) -> Options:
    """The options in `args` (without the program name)."""
    options = Options(config=default_config)
    extra: list[str] = []
    words = iter(args)
    for word in words:
        if word == "--":
            extra.extend(words)
            break
        name, eq, value = word.partition("=")
        if name in VALUED:
            if not eq:
                following = next(words, None)
                if following is None or (following.startswith("-") and following != "-"):
                    raise UsageError(f"argument {name}: expected one argument")
                value = following
            setattr(options, VALUED[name], value)
        elif word in FLAGS:
            setattr(options, FLAGS[word], True)
        elif eq and name in FLAGS:
            raise UsageError(f"argument {name}: ignored explicit argument '{value}'")
        else:
            extra.append(word)
    if extra:
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    return options


def help_text(default_config: str) -> str:
    rows = []
    for option, metavar, text in OPTIONS:
        left = f"  {option} {metavar}".rstrip()
        lines = text.format(default=default_config).split("\n")
        rows.append(f"{left:<18}{lines[0]}")
        rows.extend(f"{'':<18}{line}" for line in lines[1:])
    return "\n".join([USAGE, "", DESCRIPTION, "", "options:", *rows, "", EPILOG])


def error_text(error: UsageError) -> str:
    return f"{USAGE}\n{PROG}: error: {error}"
