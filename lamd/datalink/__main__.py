"""``python3 -m lamd.datalink``: :mod:`lamd.datalink.process`."""

import sys

from .process import main

sys.exit(main())
