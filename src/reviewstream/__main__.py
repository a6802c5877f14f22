"""``python -m reviewstream``: the same as the ``reviewstream`` command."""

import sys

from .cli import main

sys.exit(main())
