"""The ``lamd`` command (``lamd-kernel`` in the Debian package) and ``python3 -m lamd``.

Started by hboot (``-H -P -n``), the daemon calls lamboot back before it
imports anything else (:mod:`lamd.boot.early`): lamboot waits for that
callback before it boots the next node. Then :func:`lamd.daemon.main`.

LAM's prefix tree (``/usr/lib/lamd/lam/bin/lamd``) starts it as
``python3 -I -S -c ...``: without :mod:`site` (about 6 ms, and the
``re`` a console script imports: 5 ms more) until the callback is made;
:func:`main` then runs :func:`site.main`, so the daemon finds what the
Debian packages installed (python3-systemd, setproctitle) as usual.
"""

import sys


def main() -> int:
    from .boot.early import main_early

    main_early(sys.argv[1:])
    if sys.flags.no_site:
        import site

        site.main()
    from .daemon import main as daemon_main

    return daemon_main()


__all__ = ["main"]
