"""The ``lamd`` command (``lamd-kernel`` in the Debian package) and ``python3 -m lamd``.

Started by hboot (``-H -P -n``), the daemon calls lamboot back before it
imports anything else (:mod:`lamd.boot.early`): lamboot waits for that
callback before it boots the next node. Then :func:`lamd.daemon.main`.

LAM's prefix tree (``/usr/lib/lamd/lam/bin/lamd``) starts it as
``python3 -I -S -c ...``: without :mod:`site` (about 6 ms, and the
``re`` a console script imports: 5 ms more) until the callback is made;
:func:`main` then runs :func:`site.main`, so the daemon finds what the
Debian packages installed (python3-systemd, setproctitle) as usual.

``lamd@.service`` starts it the same way, through ``/usr/lib/lamd/lamd-start``
(``packaging/lamd-start``: ``#!/usr/bin/python3 -IS``), which puts the Debian
package's directory on ``sys.path`` itself and passes ``site=False``: the
first client of a socket activation waits for the whole start (issue 13).
"""

import sys


def main(site: bool = True) -> int:
    """*site*: under ``python3 -S``, run :func:`site.main` once the boot
    callback is made (False: the caller has set ``sys.path`` up)."""
    import gc

    # start-up allocates thousands of objects and frees few: no cyclic
    # collection passes (about 3 ms) until lamd.daemon has booted, just
    # before READY=1 (it enables the collector again)
    gc.disable()
    if "-H" in sys.argv[1:]:  # hboot's arguments (the rest is main_early's to check)
        from .boot.early import main_early

        main_early(sys.argv[1:])
    if sys.flags.no_site and site:
        import site as site_module

        site_module.main()
    from .daemon import main as daemon_main

    return daemon_main()


__all__ = ["main"]
