"""`python -m blockswap ...` (and `torchrun -m blockswap ...`) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
