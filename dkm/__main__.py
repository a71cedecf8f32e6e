"""`python -m dkm …`: the command line (see dkm.cli)."""

import sys

from .cli import main

sys.exit(main())
