"""echod: echoes a network message back (LAM's ``otb/sys/echod/echod.c``).

``tping`` calls ``recho`` (``share/etc/recho.c``): an ``nsend`` to
``EVECHOD`` with ``struct ereq`` in ``nh_data`` and the bytes to echo as the
body, then an ``nrecv`` on ``-pid``. echod sends the same body and type back
to ``eq_event`` on ``eq_node`` with ``NREEL`` set, as LAM does.

Wire format (``ereq.h``, native int4)::

    struct ereq in nh_data: eq_node, eq_event
"""

from __future__ import annotations

from ..kernel.constants import EVECHOD, MAXNMSGLEN
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from .nreq import NREEL, my_nodeid, nrecv, nsend


async def echod(k: IProc) -> None:
    """Echo every message received on ``EVECHOD`` to its sender."""
    while True:
        msg = await nrecv(k, EVECHOD, 0, MAXNMSGLEN)
        h = msg.head
        eq_node, eq_event = h.data[0], h.data[1]
        reply = NMsg(node=eq_node, event=eq_event, type=h.type, flags=NREEL, data=h.data)
        await nsend(k, reply, msg.body, node_id=my_nodeid(k))
