"""dlo: the datalink output's link table (LAM's ``otb/sys/dlo_inet/``).

With one node there is nothing to send over UDP, but ``lamnodes``,
``tping`` and ``lamhalt`` read the link table to name the nodes:
``ldogetlinks`` (``share/nreq/ldolinks.c``) ``nsend``s a ``DOQGETLINKS``
request (type DLCTL, ``NOBUF``) straight to ``EVDL0`` with ``struct doreq``
in ``nh_data``, and ``nrecv``s one ``MAXNMSGLEN`` reply per segment on
``doq_src_event``: ``struct doreply`` in ``nh_data`` and as many
``struct dolink`` as fit in the body. ``DOQSETLINK``/``DOQREMLINK``/valve
requests are accepted and ignored: this daemon has no other node.

Wire formats (``dl_inet.h``, native int4; ``sockaddr_in`` in network order)::

    struct doreq   in nh_data: doq_req, doq_src_node, doq_src_event, doq_link, doq_extra
    struct doreply in nh_data: dor_reply, dor_nlinks
    struct dolink  (36 B):     dol_link, dol_seqgive, dol_seqsend, dol_npending,
                               dol_idle, struct sockaddr_in dol_addr
"""

from __future__ import annotations

import logging
import socket
import struct
from dataclasses import dataclass

from ..kernel.constants import EVDL0, MAXNMSGLEN
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from .netaddr import node_address
from .nreq import DLCTL, LOCAL, NOBUF, data_words, nrecv, nsend

log = logging.getLogger("lamd.iprocs.dlo")

DOQSETLINK, DOQREMLINK, DOQGETLINKS, DOQVOPEN, DOQVCLOSE = 0, 1, 2, 3, 4

#: ``struct dolink``: five int4 then ``struct sockaddr_in`` (family, port, addr, zero).
DOLINK = struct.Struct("<5iH2s4s8x")
#: entries per reply segment (``eps`` in LAM)
EPS = MAXNMSGLEN // DOLINK.size


@dataclass(slots=True, frozen=True)
class DoLink:
    """One link: a node id and its dli address."""

    link: int
    addr: str
    port: int = 0

    def pack(self) -> bytes:
        return DOLINK.pack(self.link, 0, 0, 0, 0, socket.AF_INET,
                           struct.pack("!H", self.port), socket.inet_aton(self.addr))


def local_links(config: dict) -> list[DoLink]:
    """The one-node link table: node 0 at this host's address."""
    addr = str(config.get("node_addr") or node_address())
    return [DoLink(0, addr, int(config.get("dli_port") or 0))]


def links_segment(links: list[DoLink], seg: int) -> bytes:
    """Segment *seg* of the table, zero-padded to ``MAXNMSGLEN`` as LAM sends it."""
    part = b"".join(l.pack() for l in links[seg * EPS:(seg + 1) * EPS])
    return part + bytes(MAXNMSGLEN - len(part))


async def dlo(k: IProc) -> None:
    """Answer link-table requests on ``EVDL0``."""
    node_id = int(k.config.get("node_id", 0))
    links = list(k.config.get("links") or local_links(k.config))
    k.config.setdefault("node_addr", links[0].addr)
    while True:
        msg = await nrecv(k, EVDL0, 0, MAXNMSGLEN, NOBUF)
        h = msg.head
        req, src_event, extra = h.data[0], h.data[2], h.data[4]
        if msg.ktype & DLCTL and req == DOQGETLINKS:
            reply = NMsg(node=LOCAL, event=src_event, type=0, flags=0,
                         data=data_words(0, len(links)))
            await nsend(k, reply, links_segment(links, max(0, extra)), node_id=node_id)
        elif msg.ktype & DLCTL and req in (DOQSETLINK, DOQREMLINK, DOQVOPEN, DOQVCLOSE):
            log.info("dlo: request %d ignored (one-node universe)", req)
        else:
            log.warning("dlo: packet for node %d event %d dropped: no other node",
                        h.node, h.event)
