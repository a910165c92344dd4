"""``python3 -m lamd.datalink``: :mod:`lamd.datalink.process`, after
:mod:`lamd.datalink.early` (under ``lamd-dl@.socket``, the kernel's start
set going and lamboot called back before the imports).
``lamd-dl@.service`` runs :func:`main` through ``/usr/lib/lamd/lamd-dl-start``
(``packaging/lamd-dl-start``: ``python3 -IS``, no site.py or runpy)."""

import sys


def main() -> int:
    from .early import start

    early = start()
    from .process import main as process_main  # after the kernel's start was set going

    return process_main(early=early)


if __name__ == "__main__":
    sys.exit(main())
