"""`python -m minmo.cli …` (torchrun and `ray job submit` start the command this way)."""

import sys

from minmo.cli import main

sys.exit(main())
