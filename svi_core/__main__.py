"""``python -m svi_core``: see :mod:`svi_core.cli`."""

import sys

from .cli import main

sys.exit(main())
