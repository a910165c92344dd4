"""haltd: stops the daemon for ``lamhalt`` (LAM's ``otb/sys/haltd/haltd.c``).

``lamhalt`` calls ``rhreq`` (``share/etc/rhreq.c``): an ``nsend`` to
``EVHALTD`` of type ``LAM_HALT_PING`` with ``struct hreq`` in ``nh_data``,
then (``ntry_recv`` polling) the ACK on ``hq_event``, then a message of type
``LAM_HALT_DIE``. haltd ACKs the ping with ``struct hreq`` {this node, 0,
hq_index}; on the die message the daemon halts: every attached client is
killed (the kill-file cleanup, ``kkillall``), the session files go, and the
daemon exits 0. LAM forks ``tkill`` for that; here ``k.halt(0)`` asks the
daemon to do it.

Wire format (``hreq.h``, native int4)::

    struct hreq in nh_data: hq_node, hq_event, hq_index, hq_pid
"""

from __future__ import annotations

import logging

from ..kernel.constants import EVHALTD, MAXNMSGLEN
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from .nreq import data_words, my_nodeid, nrecv, nsend

log = logging.getLogger("lamd.iprocs.haltd")

LAM_HALT_PING = 1
LAM_HALT_DIE = 2


async def haltd(k: IProc) -> None:
    """ACK halt pings; halt the daemon on a halt-die message."""
    while True:
        msg = await nrecv(k, EVHALTD, 0, MAXNMSGLEN)
        node_id = my_nodeid(k)
        h = msg.head
        hq_node, hq_event, hq_index, hq_pid = h.data[0], h.data[1], h.data[2], h.data[3]
        if h.type == LAM_HALT_PING:
            ack = NMsg(node=hq_node, event=hq_event, type=0, flags=0,
                       data=data_words(node_id, 0, hq_index))
            await nsend(k, ack, node_id=node_id)
        elif h.type == LAM_HALT_DIE:
            log.info("haltd: halt requested by pid %d (node %d); halting the daemon",
                     hq_pid, hq_node)
            await k.halt(0)
            return
        else:
            log.warning("haltd: ignored message of unknown type %d", h.type)
