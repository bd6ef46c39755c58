"""One run of storage-init: its state, the step runner, timings, and the failure path."""

from __future__ import annotations

import os
import sys

from . import TYPE_CHECKING, blockstat, jsonout
from .cmdline import DEBUG, Param, flag
from .config import CONFIG_PATH
from .emergency import Policy, emergency
from .errors import BootError
from .log import Log
from .record import field, record
from .settings import NEW_ROOT, SCRATCH, Settings

if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

    from .devices import BlockDevice
    from .kernel import Kernel
    from .modules import Loader
    from .steps import Step
    from .veritydev import Mapped


@record(frozen=True)
class Paths:
    """Where things are; tests point these elsewhere, a real boot never does."""

    config: str = CONFIG_PATH
    cmdline: str = "/proc/cmdline"
    sysfs: str = "/sys"
    dev: str = "/dev"
    modules: tuple[str, ...] = ("/lib/modules", "/usr/lib/modules")
    new_root: str = NEW_ROOT
    scratch: str = SCRATCH

    @property
    def timings(self) -> str:
        return f"{self.scratch}/timings.json"


@record
class Boot:
    kernel: Kernel
    log: Log
    mode: str
    argv: Sequence[str]
    env: Mapping[str, str]
    paths: Paths = field(default_factory=Paths)
    started: float = 0.0  # CLOCK_BOOTTIME when storage-init started (its imports done)
    entered: float | None = None  # CLOCK_BOOTTIME at its first line, before its imports
    # sys.modules when the first step starts: the imports every boot pays before doing
    # anything, in the timings file so that a test can pin them (tests/unit/test_start_cost.py)
    modules_at_start: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    settings: Settings | None = None
    loader: Loader | None = None
    uevents: _socket.socket | None = None
    bootfs: BlockDevice | None = None
    loop_device: str | None = None
    loop_fd: int | None = None  # held open until the image is mounted (autoclear)
    image_device: str | None = None  # what the image is mounted from: loop or dm-verity
    verified: Mapped | None = None  # the dm-verity device, until seal-verity
    timings: list[tuple[str, float]] = field(default_factory=list)
    finished: bool = False

    # --- state set by the steps -----------------------------------------------------------

    def open_log(self) -> None:
        kernel, log = self.kernel, self.log
        if self.mode != "rdinit":
            return  # a service's stderr already goes to the journal
        try:
            log.kmsg_fd = kernel.open(f"{self.paths.dev}/kmsg", os.O_WRONLY)
        except OSError as exc:
            log.warning(f"cannot open {self.paths.dev}/kmsg ({exc.strerror}); console only")
        try:
            printk = kernel.read_file("/proc/sys/kernel/printk").split()
            log.console_loglevel = int(printk[0])
        except (OSError, ValueError, IndexError):
            pass
        # Like systemd: our lines must not be eaten by the kmsg rate limit. (try, not
        # contextlib.suppress: storage-init does not import contextlib, see errors.failing)
        try:  # noqa: SIM105
            kernel.write_file("/proc/sys/kernel/printk_devkmsg", b"on\n")
        except OSError:
            pass

    def set_params(self, params: tuple[Param, ...]) -> None:
        self.params = params
        if flag(params, DEBUG):
            self.log.debug_enabled = True
            self.kernel.tracer = self.log.debug

    def set_settings(self, settings: Settings) -> None:
        self.settings = settings
        for warning in settings.warnings:
            self.log.warning(warning)
        self.log.info(f"bootfs {settings.bootfs}, image {settings.image} ({settings.fstype}), "
                      f"timeout {settings.timeout:g} s, kernel {settings.kver}")

    def need_settings(self) -> Settings:
        if self.settings is None:
            raise BootError("run a step before the configuration was read", "the step order")
        return self.settings

    def modules_dir(self) -> str:
        kver = self.kernel.uname_release()
        dirs = [f"{base}/{kver}" for base in self.paths.modules]
        return next((d for d in dirs if self.kernel.exists(f"{d}/modules.dep")), dirs[0])

    # --- timings --------------------------------------------------------------------------

    def summary(self) -> str:
        total = sum(ms for _, ms in self.timings)
        steps = ", ".join(f"{name} {ms:.1f}" for name, ms in self.timings)
        return (f"{len(self.timings)} steps in {total:.1f} ms, started {self.started:.3f} s "
                f"after kernel start: {steps} (ms)")

    def image_counters(self) -> tuple[int | None, int | None]:
        """(bytes read, size) of the device the image is mounted from, or Nones: the claim
        that a boot pays only for what it reads, measured on each boot."""
        if self.image_device is None:
            return None, None
        block = f"{self.paths.sysfs}/class/block/{self.image_device.rsplit('/', 1)[-1]}"
        try:
            return (blockstat.read_bytes(self.kernel.read_file(f"{block}/stat").decode()),
                    blockstat.size_bytes(self.kernel.read_file(f"{block}/size").decode()))
        except (OSError, ValueError, UnicodeDecodeError):
            return None, None

    def timings_json(self) -> bytes:
        read, size = self.image_counters()
        report = {
            "version": 1,
            "mode": self.mode,
            "entered_boottime_s": None if self.entered is None else round(self.entered, 6),
            "started_boottime_s": round(self.started, 6),
            "finished_boottime_s": round(self.kernel.boottime(), 6),
            "steps": [{"name": n, "ms": round(ms, 3)} for n, ms in self.timings],
            "total_ms": round(sum(ms for _, ms in self.timings), 3),
            "bootfs": self.bootfs.describe() if self.bootfs else None,
            "loop_device": self.loop_device,
            "image_device": self.image_device,
            "image_read_bytes": read,  # by everything before init, through the image's device
            "image_bytes": size,  # the device's size: the EROFS data, without a hash tree
            "image": self.settings.image if self.settings else None,
            "modules_loaded": list(self.loader.loaded) if self.loader else [],
            "python_modules_at_start": sorted(self.modules_at_start),
            # and what the steps imported after it (pyudev, in the trigger step)
            "python_modules_later": sorted(set(sys.modules) - set(self.modules_at_start)),
            # set by the freeze's C shim when Nuitka's start-up patch came precompiled
            # (build/initoverlayfs_build/nuitka_precompiled.py): no compiler ran at boot
            "runtime_patch_precompiled": getattr(sys, "_storage_init_precompiled", False),
        }
        return (jsonout.dumps(report) + "\n").encode()

    def finish(self) -> None:
        """The summary line and the timings file, written just before init takes over."""
        self.finished = True
        self.log.info(self.summary())
        try:
            self.kernel.write_file(self.paths.timings, self.timings_json())
        except OSError as exc:
            self.log.warning(f"cannot write {self.paths.timings}: {exc.strerror}")

    # --- running --------------------------------------------------------------------------

    def plan_values(self) -> dict[str, object]:
        s = self.settings
        hint = (s.bootfs_hint if s else None) or "none"
        return {
            "cmdline": self.paths.cmdline, "config": self.paths.config,
            "modules": f"{self.paths.modules[0]}/"
                       f"{s.kver if s else self.kernel.uname_release()}",
            "scratch": self.paths.scratch,
            "new_root": self.paths.new_root, "moves": "/boot /proc /dev /sys /run"
            if self.mode == "rdinit" else "/boot",
            "fstype": s.fstype if s else "erofs",
            "subsystems": " ".join(s.subsystems) if s else "?",
            "timeout": s.timeout if s else 30.0, "bootfs": s.bootfs if s else "?",
            "hint": hint,
            "bootfstype": (s.bootfstype or "probed type") if s else "?",
            "image": s.image if s else "?",
            "verity": (f"root hash {s.verity.root_hash[:16]}..." if s.verity else
                       "off (no verity_roothash, or rd.initoverlayfs.verity=0)") if s else "?",
            "network": (f"wait up to {s.timeout:g} s for {s.network.interface}, set it up, "
                        f"wait for carrier, add {s.network.address}/{s.network.prefix}"
                        + (f" and the default route via {s.network.gateway}"
                           if s.network.gateway else "") + " (rtnetlink, pyroute2)"
                        if s and s.network else "nothing: the bootfs is local (ip= is for an "
                        "nbd: bootfs)"),
            "wait_bootfs": (f"load nbd; negotiate {s.bootfs} over TCP; hand it to the kernel "
                            "(NBD_CMD_CONNECT); probe the nbd device" if s and s.bootfs.nbd
                            else f"wait up to {s.timeout if s else 30.0:g} s for "
                            f"{s.bootfs if s else '?'} (hint: {hint}), "
                            "loading drivers by modalias (--systemd: udevd does)"),
            "init": " then ".join(filter(None, (s.init if s else None, "/init", "/sbin/init"))),
        }

    def run_step(self, step: Step) -> None:
        started = self.kernel.monotonic()
        error = None
        try:
            step.run(self)
        except BootError as exc:
            error = str(exc)
        except OSError as exc:
            error = str(BootError(step.name, step.hint.format(**self.plan_values()), exc))
        except Exception as exc:  # a bug must still end in a message, not a kernel panic
            error = f"{step.name} crashed: {type(exc).__name__}: {exc}"
        self.timings.append((step.name, (self.kernel.monotonic() - started) * 1000))
        if error is not None:
            self.fail(step.name, error)

    def run(self, steps: Sequence[Step], after: Callable[[], None] | None = None) -> None:
        for step in steps:
            self.log.debug(f"step {step.name}")
            self.run_step(step)
        if after:
            after()

    def fail(self, step: str, message: str) -> NoReturn:
        self.log.error(f"{step}: {message}")
        if not self.finished:  # exec-init fails after finish() printed it: one line per run
            self.log.info(self.summary())
        policy = Policy.from_params(self.params)
        if self.mode != "rdinit" and policy.shell:
            # a service: OnFailure=emergency.target gives systemd's emergency shell
            raise SystemExit(1)
        # Without rd.shell a service applies rd.emergency= itself, as PID 1 would: the
        # mini-initramfs's emergency.target may have no shell, and then it waits forever with
        # nothing on the console. Nothing here is written (the bootfs is read-only), so the
        # reboot(2) loses nothing that an orderly shutdown would save.
        emergency(self.kernel, self.log, policy, self.env)
