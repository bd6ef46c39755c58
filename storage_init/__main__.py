"""`python -m storage_init`, and the script Nuitka freezes (absolute import, so it also works
when compiled as a top-level script)."""

import time

# The clock is read here, before any module of storage-init is imported, so that the timings
# can split the start into the runtime's own (exec to this line) and our imports (this line
# to the first step). time is built into the interpreter: reading it costs no import.
ENTERED = time.clock_gettime(time.CLOCK_BOOTTIME)

import sys  # noqa: E402

from storage_init.main import main  # noqa: E402

sys.exit(main(entered=ENTERED))
