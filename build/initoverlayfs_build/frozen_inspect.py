"""The `inspect` module of the frozen storage-init: only what the Nuitka runtime touches.

Nuitka's runtime imports `inspect` at every start of a compiled program, before any of the
program's code, to patch `getgeneratorstate`, `getcoroutinestate` and (Python 3.11)
`_get_code_position` for compiled generators. The real module imports ast, dis, tokenize,
enum, re and collections and compiles a dozen regexes: 58.6 of the 98.5 million instructions
of a frozen hello world (callgrind), and exec of /init to storage-init's first step went
1.05 -> 0.80 s without it (QEMU TCG, median of 3 interleaved boots).
storage-init never introspects anything, so the freeze replaces the module's source with
this file (freeze.py, through a Nuitka package configuration). Any other use fails loudly
instead of silently misbehaving.

This file is source text for Nuitka, not a module of the builder: importing it is only for
the tests that check it offers what the runtime patches.
"""

GEN_CREATED = "GEN_CREATED"
GEN_RUNNING = "GEN_RUNNING"
GEN_SUSPENDED = "GEN_SUSPENDED"
GEN_CLOSED = "GEN_CLOSED"
CORO_CREATED = "CORO_CREATED"
CORO_RUNNING = "CORO_RUNNING"
CORO_SUSPENDED = "CORO_SUSPENDED"
CORO_CLOSED = "CORO_CLOSED"


def getgeneratorstate(generator: object) -> str:
    # The runtime replaces this with its own version, which handles both kinds of generator.
    raise NotImplementedError("inspect.getgeneratorstate before the Nuitka runtime patched it")


def getcoroutinestate(coroutine: object) -> str:
    raise NotImplementedError("inspect.getcoroutinestate is not in storage-init's inspect")


def _get_code_position(code: object, instruction_index: int) -> tuple[None, None, None, None]:
    # Wrapped by the runtime; a traceback of a compiled frame has no bytecode position.
    return None, None, None, None


def __getattr__(name: str) -> object:
    raise AttributeError(
        f"inspect.{name}: storage-init is frozen with a minimal inspect module "
        "(initoverlayfs_build/frozen_inspect.py), which has only what the Nuitka runtime uses")
