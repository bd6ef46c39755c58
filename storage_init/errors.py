"""The one error type a boot step raises: what failed, why, and what the user should check."""

from __future__ import annotations


class BootError(Exception):
    def __init__(self, what: str, hint: str, cause: OSError | None = None) -> None:
        self.what, self.hint, self.cause = what, hint, cause
        super().__init__(str(self))

    def __str__(self) -> str:
        why = ""
        if self.cause is not None:
            why = f": {self.cause.strerror or self.cause}"
            if self.cause.filename and str(self.cause.filename) not in self.what:
                why += f" ({self.cause.filename})"
        return f"Failed to {self.what}{why}; check {self.hint}"
