"""Entry point. As PID 1 (rdinit=) it boots and never returns; otherwise it is a command.

As PID 1, every argument is a kernel command line word that the kernel did not know and
handed to init; they are passed on to the real init untouched and never change what
storage-init does (the C original flipped into systemd mode on any argument).
"""

from __future__ import annotations

import os
import sys

from . import TYPE_CHECKING, __version__
from .boot import RDINIT, SYSTEMD, Boot, Paths
from .cmdline import DEBUG, flag, parse_cmdline
from .config import ConfigError, default_subsystems, parse_config
from .emergency import Policy, emergency
from .kernel import Kernel
from .log import Log
from .settings import resolve
from .steps import steps_for

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

    from .kernelapi import KernelApi


def boot_pid1(kernel: KernelApi, argv: Sequence[str], env: Mapping[str, str],
              paths: Paths | None = None, entered: float | None = None) -> NoReturn:
    log = Log(kernel)
    boot = Boot(kernel, log, RDINIT, argv, env, paths or Paths(), started=kernel.boottime(),
                entered=entered, modules_at_start=tuple(sys.modules))
    try:
        boot.run(steps_for(RDINIT))
        boot.fail("exec-init", "init returned without an error")
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        log.error(f"storage-init crashed: {type(exc).__name__}: {exc}")
        try:  # noqa: SIM105  (no contextlib at boot: see errors.failing)
            emergency(kernel, log, Policy.from_params(boot.params), env)
        except (Exception, SystemExit, KeyboardInterrupt):
            pass  # the loop below still keeps PID 1 from returning
    while True:  # even a broken emergency path must not let PID 1 return
        kernel.pause()


def run_service(kernel: KernelApi, argv: Sequence[str], paths: Paths,
                entered: float | None = None) -> int:
    boot = Boot(kernel, Log(kernel), SYSTEMD, argv, os.environ, paths,
                started=kernel.boottime(), entered=entered, modules_at_start=tuple(sys.modules))
    boot.run(steps_for(SYSTEMD), after=boot.finish)
    return 0


def dry_run(kernel: KernelApi, mode: str, paths: Paths, cmdline: str | None,
            config: str | None = None, kver: str | None = None) -> int:
    """The plan, for the config at paths.config (or `config`, a mini-initramfs's own, which
    initoverlayfs-inspect --plan passes with its kernel version `kver`)."""
    text = config
    if text is None:
        try:
            text = kernel.read_file(paths.config).decode(errors="replace")
        except OSError as exc:
            print(f"storage-init: warning: cannot read {paths.config}: {exc.strerror}",
                  file=sys.stderr)
            text = ""
    if cmdline is None:
        cmdline = kernel.read_file(paths.cmdline).decode(errors="replace")
    params = parse_cmdline(cmdline)
    boot = Boot(kernel, Log(kernel), mode, [], {}, paths)
    try:
        boot.settings = resolve(parse_config(text), params, kver or kernel.uname_release(),
                                default_subsystems(kernel.uname_machine()))
    except ConfigError as exc:
        print(f"storage-init: {exc}", file=sys.stderr)
        return 1
    s, policy = boot.settings, Policy.from_params(params)
    print(f"storage-init {__version__}: dry run in {mode} mode; nothing is touched")
    rows = [
        ("config", paths.config), ("bootfs", str(s.bootfs)),
        ("bootfs_hint", s.bootfs_hint or "(none)"),
        ("network", str(s.network) if s.network else "(none: the bootfs is local)"),
        ("bootfstype", s.bootfstype or "(from the superblock)"),
        ("image", s.image_path), ("fstype", s.fstype), ("udev_trigger", " ".join(s.subsystems)),
        ("timeout", f"{s.timeout:g} s"), ("init", s.init or "/init, else /sbin/init"),
        ("verity", f"root hash {s.verity.root_hash}" if s.verity else "off: unverified image"),
        ("debug", "on" if flag(params, DEBUG) else "off"),
        ("on failure", f"rd.shell={'yes' if policy.shell else 'no'}, "
                       f"rd.emergency={policy.action}"),
    ]
    for key, value in rows:
        print(f"  {key:<13} {value}")
    for warning in s.warnings:
        print(f"  warning: {warning}")
    print("plan:")
    for number, step in enumerate(steps_for(mode), start=1):
        print(f"  {number:2}. {step.name:<16} {step.plan(boot)}")
    return 0


def main(argv: Sequence[str] | None = None, entered: float | None = None) -> int:
    """`entered`: CLOCK_BOOTTIME when the program's first line ran (__main__.py)."""
    argv = list(sys.argv if argv is None else argv)
    kernel = Kernel()
    if kernel.getpid() == 1:
        boot_pid1(kernel, argv, os.environ, entered=entered)
    from . import cli  # here: PID 1 never parses its command line, and imports are boot time

    try:
        args = cli.parse(argv[1:], Paths.config)
    except cli.UsageError as exc:
        print(cli.error_text(exc), file=sys.stderr)
        return 2
    if args.help:
        print(cli.help_text(Paths.config))
        return 0
    if args.version:
        print(f"storage-init {__version__}")
        return 0
    paths = Paths(config=args.config)
    mode = SYSTEMD if args.systemd else RDINIT
    if args.dry_run:
        return dry_run(kernel, mode, paths, args.cmdline)
    if args.systemd:
        return run_service(kernel, argv, paths, entered)
    print("storage-init: not PID 1. It runs from the initramfs as rdinit=/init, or as a "
          "service with --systemd; --dry-run shows what it would do.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
