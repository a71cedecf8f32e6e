"""`python -m dkm …`: the command line (see dkm.app.cli)."""

import sys

from dkm.app.cli import main

sys.exit(main())
