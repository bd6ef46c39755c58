"""The one error type a boot step raises: what failed, why, and what the user should check;
and `failing`, which turns a syscall's OSError into it."""

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


class failing:  # lower case: used as `with failing(...)`, like the function it was
    """`with failing(what, hint):` turns an OSError into a BootError naming `what` and `hint`.
    A class, not contextlib.contextmanager: contextlib was 4 million instructions of every
    boot's imports (callgrind, natively)."""

    def __init__(self, what: str, hint: str) -> None:
        self.what, self.hint = what, hint

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: object) -> None:
        if isinstance(exc, OSError):
            raise BootError(self.what, self.hint, exc) from exc
