"""``python -m lamd``: the same as the ``lamd`` command."""

import sys

from .daemon import main

sys.exit(main())
