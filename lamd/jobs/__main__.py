"""``python3 -m lamd.jobs``: the jobs process (see :mod:`lamd.jobs.process`)."""

import sys

from .process import main

sys.exit(main())
