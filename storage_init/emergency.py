"""What PID 1 does after a failure, since it must never return (the kernel would panic and,
with `quiet`, say nothing about why).

The failure line has already been printed. `rd.shell` opens a shell on the console when the
current root has one; after it exits, or without one, `rd.emergency=` decides: reboot (the
default, after a visible countdown so the message can be read), poweroff, or halt. If even
that is refused, the process blocks forever with the message on screen.
"""

from __future__ import annotations

from . import TYPE_CHECKING
from .cmdline import Param, flag, last_value
from .kernel import RB_AUTOBOOT, RB_HALT_SYSTEM, RB_POWER_OFF
from .record import record

SHELLS = ("/bin/sh", "/usr/bin/sh", "/bin/bash", "/usr/bin/bash")
COUNTDOWN = 10
ACTIONS = {"reboot": RB_AUTOBOOT, "poweroff": RB_POWER_OFF, "halt": RB_HALT_SYSTEM}


@record(frozen=True)
class Policy:
    shell: bool = False
    action: str = "reboot"

    @classmethod
    def from_params(cls, params: tuple[Param, ...]) -> Policy:
        action = last_value(params, "rd.emergency") or "reboot"
        return cls(bool(flag(params, "rd.shell")), action if action in ACTIONS else "reboot")


if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn, Protocol

    from .kernelapi import KernelApi

    class _Log(Protocol):
        def error(self, message: str) -> None: ...
        def console(self, message: str) -> None: ...


def run_shell(kernel: KernelApi, log: _Log, env: Mapping[str, str]) -> bool:
    shell = next((s for s in SHELLS if kernel.exists(s)), None)
    if shell is None:
        log.error(f"rd.shell: no shell in this root (looked for {', '.join(SHELLS)})")
        return False
    log.console(f"rd.shell: starting {shell}; exit it to continue with the emergency action")
    pid = kernel.fork()
    if pid == 0:
        try:
            kernel.execve(shell, [shell], {**env, "PS1": "initoverlayfs# "})
        finally:
            kernel.exit_child(127)
    kernel.waitpid(pid)
    return True


def emergency(kernel: KernelApi, log: _Log, policy: Policy, env: Mapping[str, str]) -> NoReturn:
    if policy.shell:
        run_shell(kernel, log, env)
    if policy.action == "reboot":
        log.console(f"rebooting in {COUNTDOWN} s (rd.emergency=poweroff|halt to stop instead, "
                    "rd.shell for a shell)")
        for left in range(COUNTDOWN, 0, -1):
            log.console(f"rebooting in {left}...")
            kernel.sleep(1)
    else:
        log.console(f"rd.emergency={policy.action}: {policy.action} now")
    try:
        kernel.reboot(ACTIONS[policy.action])
    except OSError as exc:
        log.error(f"Failed to {policy.action}: {exc.strerror}; halting here")
    while True:
        kernel.pause()
