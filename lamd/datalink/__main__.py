"""``python3 -m lamd.datalink``: :mod:`lamd.datalink.process`, after
:mod:`lamd.datalink.early` (under ``lamd-dl@.socket``, the kernel's start
set going and lamboot called back before the imports).
``lamd-dl@.service`` runs :func:`main` through ``/usr/lib/lamd/lamd-dl-start``
(``packaging/lamd-dl-start``: ``python3 -IS``, no site.py or runpy).

Started with no request waiting (``Restart=always`` after a universe, or
``systemctl start``), it imports everything first and then waits
(:func:`lamd.datalink.process.wait_warm`): the next boot's callback comes
from a process already running."""

import sys


def main() -> int:
    from .early import idle, passed, start

    got = passed()
    if idle(got):
        from .process import main as process_main, wait_warm

        wait_warm()
        early = start(got, wait=True)
    else:
        early = start(got)
        from .process import main as process_main  # after the kernel's start was set going

    return process_main(early=early)


if __name__ == "__main__":
    sys.exit(main())
