"""bforward: sends out what bufferd kept for other nodes (LAM's
``otb/sys/bforward/bforward.c``).

bufferd never blocks on the datalink: a packet it takes for another node
(a reply of its own to a remote client, a frame passing through) it keeps
under ``EVBFORWARD``. bforward receives those through bufferd (``bfrecv``
of ``EVBFORWARD``), asks the router for the route (``getroute``: dlo,
``EVDL0``, and the link) and sends each on with a blocking ``dsend``: while
dlo's slots are full, bforward waits, not bufferd.
"""

from __future__ import annotations

import logging

from ..kernel.constants import EVBFORWARD, KTRACE, KTRY, MAXNMSGLEN
from ..kernel.kiproc import IProc
from .dli import DropLog
from .nreq import DDLI, NoRoute, dsend, getroute, nrecv

log = logging.getLogger("lamd.iprocs.bforward")


async def bforward(k: IProc) -> None:
    """Forward bufferd's packets for other nodes to the datalink, forever."""
    node_id = int(k.config.get("node_id", 0))
    badlog = DropLog(log)
    while True:
        msg = await nrecv(k, EVBFORWARD, 0, MAXNMSGLEN)
        head = msg.head
        head.flags &= ~(KTRY | DDLI | KTRACE)
        try:
            await getroute(k, head, node_id)
        except NoRoute:
            badlog.warn("route", "bforward: a packet for node %d event %d dropped: no route",
                        head.node, head.event)
            continue
        await dsend(k, head, msg.body, node_id=node_id)


__all__ = ["bforward"]
