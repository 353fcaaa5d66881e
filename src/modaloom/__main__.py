"""``python -m modaloom``: the same command line as the ``modaloom`` script (used to run steps in subprocesses)."""

import sys

from modaloom.cli.main import main

sys.exit(main())
