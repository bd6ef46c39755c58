"""What the builder tells its user: progress of the long steps on stderr, and in debug mode
every external command exactly as run (shell-quoted, so it can be pasted)."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Ui:
    program: str
    debug: bool = False
    quiet: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stderr)

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"{self.program}: {message}", file=self.stream, flush=True)

    def warning(self, message: str) -> None:
        print(f"{self.program}: warning: {message}", file=self.stream, flush=True)

    def command(self, argv: Sequence[str], cwd: str | None = None) -> None:
        if self.debug:
            where = f"(cd {shlex.quote(cwd)} && " if cwd else ""
            print(f"+ {where}{shlex.join(argv)}{')' if cwd else ''}", file=self.stream,
                  flush=True)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """A long step: announced before it starts, timed when it ends."""
        self.info(f"{what}...")
        started = time.monotonic()
        yield
        self.info(f"{what}: done in {time.monotonic() - started:.1f} s")
