"""Messages to /dev/kmsg (so the journal keeps them) and to the console when a person must see.

Every line starts with `storage-init:`. Errors always reach the console, even with `quiet` or
a low `loglevel=`:
when the kernel's console log level would hide them, they are written to the console directly.
With `rd.initoverlayfs.debug` every line does. Before /dev exists, the console is fd 2, which
the kernel opens on /dev/console for init when the initramfs has that node.
"""

from __future__ import annotations

from . import TYPE_CHECKING

PREFIX = "storage-init: "
ERR, WARNING, INFO, DEBUG = 3, 4, 6, 7
DEFAULT_CONSOLE_LOGLEVEL = 7

if TYPE_CHECKING:
    from typing import Protocol

    class _Writer(Protocol):
        def write_fd(self, fd: int, data: bytes) -> None: ...


class Log:
    def __init__(self, kernel: _Writer, console_fd: int = 2) -> None:
        self._kernel = kernel
        self.console_fd: int | None = console_fd
        self.kmsg_fd: int | None = None
        self.console_loglevel = DEFAULT_CONSOLE_LOGLEVEL
        self.debug_enabled = False
        self.lines: list[str] = []  # kept for the tests and for --dry-run output

    def _emit(self, level: int, message: str) -> None:
        line = PREFIX + message
        self.lines.append(line)
        if level == DEBUG and not self.debug_enabled:
            return
        shown_by_kernel = False
        if self.kmsg_fd is not None:
            try:
                self._kernel.write_fd(self.kmsg_fd, f"<{level}>{line}\n".encode(errors="replace"))
                shown_by_kernel = level < self.console_loglevel
            except OSError:
                self.kmsg_fd = None
        must_show = level <= ERR or self.debug_enabled or self.kmsg_fd is None
        if must_show and not shown_by_kernel and self.console_fd is not None:
            try:
                self._kernel.write_fd(self.console_fd, (line + "\n").encode(errors="replace"))
            except OSError:
                self.console_fd = None

    def error(self, message: str) -> None:
        self._emit(ERR, message)

    def warning(self, message: str) -> None:
        self._emit(WARNING, message)

    def info(self, message: str) -> None:
        self._emit(INFO, message)

    def debug(self, message: str) -> None:
        self._emit(DEBUG, message)

    def console(self, message: str) -> None:
        """Straight to the console, e.g. the emergency countdown."""
        if self.console_fd is not None:
            try:
                self._kernel.write_fd(self.console_fd, (PREFIX + message + "\n").encode())
            except OSError:
                self.console_fd = None
