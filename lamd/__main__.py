"""``python -m lamd``: the same as the ``lamd`` command."""

import sys

from .launch import main

sys.exit(main())
