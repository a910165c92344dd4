"""traced's request numbers and limits (LAM's ``share/include/trreq.h``).

Kept apart from :mod:`lamd.jobs.wire` (which re-exports them with the
``struct trreq`` and ``struct trreply`` codecs) so that the daemon's traced,
booted before the first reply, reads them without loading every job
service's struct (issue 13: start-up).
"""

from __future__ import annotations

TRQSTORE, TRQGET, TRQFORGET, TRQSWEEP, TRQUDIE = 0, 1, 2, 3, 4
TRQWIPE, TRQNAMEPUB, TRQNAMEDEL, TRQNAMEGET, TRQCLEANOBJS = 5, 6, 7, 8, 9
TRQMAX = 10
TRSMAX = 100
TRMAXSPACE = 0x200000
TRANYLIST = -1
TRANYPID = -1
TRNAMELIST = -99
#: traced requests it answers; the others (STORE, SWEEP, UDIE, WIPE,
#: CLEANOBJS) are fire-and-forget and their senders read no reply.
TRQ_REPLIED = frozenset({TRQGET, TRQFORGET, TRQNAMEPUB, TRQNAMEDEL, TRQNAMEGET})

__all__ = ["TRQSTORE", "TRQGET", "TRQFORGET", "TRQSWEEP", "TRQUDIE", "TRQWIPE", "TRQNAMEPUB",
           "TRQNAMEDEL", "TRQNAMEGET", "TRQCLEANOBJS", "TRQMAX", "TRSMAX", "TRMAXSPACE",
           "TRANYLIST", "TRANYPID", "TRNAMELIST", "TRQ_REPLIED"]
