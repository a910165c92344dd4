"""The ``lamd`` command (``lamd-kernel`` in the Debian package) and ``python3 -m lamd``.

Started by hboot (``-H -P -n``), the daemon calls lamboot back before it
imports anything else (:mod:`lamd.boot.early`): lamboot waits for that
callback before it boots the next node. Then :func:`lamd.daemon.main`.
"""

import sys


def main() -> int:
    from .boot.early import main_early

    main_early(sys.argv[1:])
    from .daemon import main as daemon_main

    return daemon_main()


__all__ = ["main"]
