"""``python3 -m lamd.datalink``: :mod:`lamd.datalink.process`, after
:mod:`lamd.datalink.early` (under ``lamd-dl@.socket``, the kernel's start
set going before the imports)."""

import sys

from .early import start

_early = start()

from .process import main  # noqa: E402  (after the kernel's start was set going)

sys.exit(main(early=_early))
