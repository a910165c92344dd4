"""testecho: a tiny internal process for the kernel's tests (no LAM counterpart).

It proves the client <-> internal process path through the kernel
rendezvous without bufferd or the router. Protocol:

* receive on :data:`EVTESTECHO` (any type, up to ``config["testecho_max"]``
  bytes, 1 MiB by default) with ``KNMSG``, so a ``struct nmsg`` header sent
  with the message arrives beside the body (a plain message gets a zero one);
* send the body back, with ``KNMSG`` and the same header, to event
  ``nh_data[0]`` with type ``nh_data[1]``; a plain message (no header, so
  ``nh_data[0] == 0``) is answered on the event given by its kernel type;
* ``nh_data[2] != 0`` asks for a KTRY reply (dropped if nobody waits).

It is not in the boot table; tests boot it with
``Kernel.boot([KBoot("testecho", PRDAEMON, testecho)])``.
"""

from __future__ import annotations

from ..kernel.constants import KNMSG, KTRY, LAM_BASE_EVENT
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg

#: The test event (unused by LAM: its events stop at LAM_BASE_EVENT + 24).
EVTESTECHO = LAM_BASE_EVENT + 100
TESTECHO_MAX = 1 << 20


async def testecho(k: IProc) -> None:
    """Echo each message to the event its header (or type) names."""
    maxlen = int(k.config.get("testecho_max") or TESTECHO_MAX)
    while True:
        got = await k.recv(EVTESTECHO, 0, maxlen, KNMSG)
        head = got.nmsg or NMsg()
        event, type_ = (head.data[0], head.data[1]) if head.data[0] else (got.type, 0)
        flags = KNMSG | (KTRY if head.data[2] else 0)
        await k.send(event, type_, got.body, flags, nmsg=head)
