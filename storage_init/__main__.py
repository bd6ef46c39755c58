"""`python -m storage_init`, and the script Nuitka freezes (absolute import, so it also works
when compiled as a top-level script)."""

import time

# The clock is read here, before any module of storage-init is imported, so that the timings
# can split the start into the runtime's own (exec to this line) and our imports (this line
# to the first step). time is built into the interpreter: reading it costs no import.
ENTERED = time.clock_gettime(time.CLOCK_BOOTTIME)

import gc  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

# No cyclic garbage collection: storage-init runs for well under a second, creates few
# cycles, and the collector's passes over every allocation during the imports were about 4%
# of their instructions (callgrind, natively). Memory freed by reference counting is unchanged.
gc.disable()

from storage_init.main import main  # noqa: E402

code = main(entered=ENTERED)
# Out without the interpreter's finalization, which tears down every module for nobody: in
# systemd mode the switch root waits for this process to end. The log went out unbuffered;
# what print() buffered (--help, --dry-run) is flushed first.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
