"""`python -m storage_init`, and the script Nuitka freezes (absolute import, so it also works
when compiled as a top-level script)."""

import sys

from storage_init.main import main

sys.exit(main())
