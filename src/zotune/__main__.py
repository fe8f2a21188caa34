"""``python -m zotune``: the command line, as the ``zotune`` script runs it."""

import sys

from .cli import main

sys.exit(main())
