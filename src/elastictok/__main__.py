"""``python -m elastictok``: the command line (also the form torchrun launches)."""

import sys

from elastictok.app.cli import main

sys.exit(main())
