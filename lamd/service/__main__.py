"""``python3 -m lamd.service prepare-session USER [PATH]``."""

import sys

from .prepare import main

sys.exit(main())
