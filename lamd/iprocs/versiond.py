"""versiond: tells clients which LAM this daemon is
(LAM's ``otb/sys/versiond/versiond.c``).

``kinit`` checks the daemon's version with ``rversion``
(``share/etc/rversion.c``): an ``nsend`` to ``EVVERSIOND`` with
``struct vreq`` in ``nh_data``, then an ``nrecv`` on ``vq_event``. The reply
carries ``struct vreply`` in ``nh_data`` and ``LAM_VERSION`` with its NUL as
the body; the client compares that string with its own and fails with
EFAULT when they differ, so we answer exactly as LAM 7.1.4.

Wire formats (``vreq.h``, native int4)::

    struct vreq   in nh_data: vq_node, vq_event
    struct vreply in nh_data: vrp_major, vrp_minor, vrp_release, vrp_alpha, vrp_beta
"""

from __future__ import annotations

from ..kernel.constants import EVVERSIOND
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from .nreq import my_nodeid, nrecv, nsend

LAM_VERSION = "7.1.4"
LAM_MAJOR_VERSION, LAM_MINOR_VERSION, LAM_RELEASE_VERSION = 7, 1, 4
LAM_ALPHA_VERSION, LAM_BETA_VERSION = 0, 0

#: The reply body: ``strlen(LAM_VERSION) + 1`` bytes.
VERSION_BODY = LAM_VERSION.encode() + b"\0"


def vreply(request_data: tuple[int, ...]) -> tuple[int, ...]:
    """``struct vreply`` written over the request's ``nh_data`` (as LAM does)."""
    return (LAM_MAJOR_VERSION, LAM_MINOR_VERSION, LAM_RELEASE_VERSION,
            LAM_ALPHA_VERSION, LAM_BETA_VERSION) + tuple(request_data[5:8])


async def versiond(k: IProc) -> None:
    """Answer every version request with LAM 7.1.4's version."""
    while True:
        msg = await nrecv(k, EVVERSIOND, 0, 0)
        h = msg.head
        vq_node, vq_event = h.data[0], h.data[1]
        reply = NMsg(node=vq_node, event=vq_event, type=h.type, flags=0,
                     data=vreply(h.data))
        await nsend(k, reply, VERSION_BODY, node_id=my_nodeid(k))
