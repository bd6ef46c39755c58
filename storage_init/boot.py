"""One run of storage-init: its state, the step runner, timings, and the failure path."""

from __future__ import annotations

import sys

from . import TYPE_CHECKING, blockstat, jsonout
from .cmdline import DEBUG, Param, flag
from .config import CONFIG_PATH
from .emergency import Policy, emergency
from .errors import BootError
from .log import Log
from .record import field, record
from .settings import NEW_ROOT, SCRATCH, Settings
from .shared import LIST as SHARED_LIST

if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

    from .devices import BlockDevice
    from .kernelapi import KernelApi
    from .modules import Loader
    from .veritydev import Mapped


# The two ways storage-init runs: PID 1 of the mini-initramfs, or its systemd's service.
RDINIT, SYSTEMD = "rdinit", "systemd"
BOTH = frozenset({RDINIT, SYSTEMD})


@record(frozen=True)
class Step:
    """One step of the boot sequence (storage_init/steps.py lists them)."""

    name: str
    run: Callable[[Boot], None]
    plan: Callable[[Boot], str]  # what it does, for --dry-run
    hint: Callable[[Boot], str]  # the config key or kernel argument to look at on failure
    modes: frozenset[str] = BOTH


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
    # The boot report's place: on /run itself, which the real root keeps (the scratch tmpfs
    # goes with initoverlayfs-release.service); packaging/report/release-image reads it.
    report: str = "/run/log/initoverlayfs"
    # the builder's list of the mini-initramfs's files that the image has byte for byte
    shared: str = SHARED_LIST

    @property
    def timings(self) -> str:
        return f"{self.scratch}/timings.json"


@record
class Boot:
    kernel: KernelApi
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
    shared_layer: str | None = None  # the mini's files the image has too (share-files)
    timings: list[tuple[str, float]] = field(default_factory=list)
    finished: bool = False

    # --- state set by the steps -----------------------------------------------------------

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
            "module_load_ms": {name: round(ms, 3) for name, ms in self.loader.load_ms.items()}
            if self.loader else {},
            "python_modules_at_start": sorted(self.modules_at_start),
            # and what the steps imported after it (pyudev, in the trigger step)
            "python_modules_later": sorted(set(sys.modules) - set(self.modules_at_start)),
            # set by the freeze's C shim when Nuitka's start-up patch came precompiled
            # (build/initoverlayfs_build/nuitka_precompiled.py): no compiler ran at boot
            "runtime_patch_precompiled": getattr(sys, "_storage_init_precompiled", False),
        }
        return (jsonout.dumps(report) + "\n").encode()

    def finish(self) -> None:
        """The summary line and the timings file, written just before init takes over; and
        the boot report's files where the real root keeps them: the timings again, the
        summary line and the image's device (for release-image: one line each, which a
        shell reads without a program)."""
        self.finished = True
        summary = self.summary()
        self.log.info(summary)
        timings = self.timings_json()
        try:
            self.kernel.write_file(self.paths.timings, timings)
        except OSError as exc:
            self.log.warning(f"cannot write {self.paths.timings}: {exc.strerror}")
        report = self.paths.report
        device = (self.image_device or "").rsplit("/", 1)[-1]
        try:
            self.kernel.mkdir(report.rsplit("/", 1)[0])
            self.kernel.mkdir(report)
            self.kernel.write_file(f"{report}/timings.json", timings)
            self.kernel.write_file(f"{report}/summary", f"storage-init: {summary}\n".encode())
            self.kernel.write_file(f"{report}/image-device", f"{device}\n".encode())
        except OSError as exc:
            self.log.warning(f"cannot write the boot report in {report}: {exc.strerror}")

    # --- running --------------------------------------------------------------------------

    def run_step(self, step: Step) -> None:
        started = self.kernel.monotonic()
        error = None
        try:
            step.run(self)
        except BootError as exc:
            error = str(exc)
        except OSError as exc:
            error = str(BootError(step.name, step.hint(self), exc))
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
        if self.mode != RDINIT and policy.shell:
            # a service: OnFailure=emergency.target gives systemd's emergency shell
            raise SystemExit(1)
        # Without rd.shell a service applies rd.emergency= itself, as PID 1 would: the
        # mini-initramfs's emergency.target may have no shell, and then it waits forever with
        # nothing on the console. Nothing here is written (the bootfs is read-only), so the
        # reboot(2) loses nothing that an orderly shutdown would save.
        emergency(self.kernel, self.log, policy, self.env)
