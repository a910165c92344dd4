"""dlo_inet: the datalink's output and its link table (LAM's
``otb/sys/dlo_inet/``).

Packets for other nodes reach dlo on ``EVDL0``: a client's ``nsend``
(``getroute`` gives ``EVDL0`` and the link), bforward's forwarding of what
bufferd kept, dli's ``NOBUF`` frames passing through. dlo makes each a frame
(``struct dlframe``: ``DTBO`` set, the user part converted once) and sends
it from its own UDP socket to the link's dli port; the protocol is
:class:`lamd.datalink.link.DLOut`'s (window of 3 unacked frames per link in
8 shared slots, the 0.5 s ack timer, acks on this socket). With every slot
full dlo takes nothing more from the kernel, so senders block there.

Link-table requests (``ldogetlinks``, ``share/nreq/ldolinks.c``): a
``DOQGETLINKS`` request (type DLCTL, ``NOBUF``) to ``EVDL0`` for this node
with ``struct doreq`` in ``nh_data`` is answered with one ``MAXNMSGLEN``
reply per segment on ``doq_src_event``: ``struct doreply`` in ``nh_data``
and as many ``struct dolink`` as fit in the body. ``DOQSETLINK``,
``DOQREMLINK`` and the valve requests are logged and ignored (lamgrow,
lamshrink: not yet).

Wire formats (``dl_inet.h``, native int4; ``sockaddr_in`` in network order)::

    struct doreq   in nh_data: doq_req, doq_src_node, doq_src_event, doq_link, doq_extra
    struct doreply in nh_data: dor_reply, dor_nlinks
    struct dolink  (36 B):     dol_link, dol_seqgive, dol_seqsend, dol_npending,
                               dol_idle, struct sockaddr_in dol_addr
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Iterable

from ..datalink.frame import DOMAXRESEND, DLFrame
from ..datalink.link import TICK, DLOut
from ..kernel.constants import EVDL0, KNMSG, KTRACE, KTRY, MAXNMSGLEN
from ..kernel.kiproc import Event, IProc
from ..kernel.wire import NMsg
from .dli import DropLog
from .netaddr import node_address
from .nreq import DDLI, DLCTL, LOCAL, NetMsg, data_words, nsend, received

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


def _send(sock: socket.socket | None, sends: Iterable[tuple[tuple[str, int], bytes]],
          badlog: DropLog) -> None:
    for addr, d in sends:
        if sock is None:
            continue
        try:
            sock.sendto(d, addr)
        except OSError as e:  # lost like a datagram: resent from the timer
            badlog.warn("sendto", "dlo: frame to %s:%d not sent: %s", addr[0], addr[1],
                        e.strerror)


async def dlo(k: IProc) -> None:
    """Send packets for other nodes over UDP and answer link-table requests."""
    node_id = int(k.config.get("node_id", 0))
    links = list(k.config.get("links") or local_links(k.config))
    k.config.setdefault("node_addr", links[0].addr)
    badlog = DropLog(log)
    out = DLOut(node_id, {l.link: (l.addr, l.port) for l in links},
                fault_tolerant=bool(k.config.get("fault_tolerant")))
    sock: socket.socket | None = None
    w = None
    if len(links) > 1:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.set_inheritable(False)
        sock.bind(("0.0.0.0", 0))
        w = k.watch_readable(sock.fileno())
        log.info("dlo: datalink output from UDP port %d to %s", sock.getsockname()[1],
                 ", ".join(f"n{l.link} {l.addr}:{l.port}" for l in links if l.link != node_id))
    timer = None
    try:
        while True:
            if out.busy() and timer is None:
                timer = k.timer(TICK)
            watches = tuple(x for x in (w, timer) if x is not None)
            if out.room() and not watches:
                # one node, nothing in flight: a plain receive, no event
                # sources (what lets a re-exec find dlo at rest)
                got = await k.recv(EVDL0, 0, MAXNMSGLEN, KNMSG)
            elif out.room():
                got = await k.wait(k.recv(EVDL0, 0, MAXNMSGLEN, KNMSG), *watches)
            else:
                got = await k.next_event(*watches)
            if isinstance(got, Event):
                if got.watch is timer:
                    timer = None
                    r = out.tick()
                    _send(sock, r.send, badlog)
                    for link in r.dead:
                        log.error("dlo: node %d does not answer (a frame resent %d times): "
                                  "its link is dead", link, DOMAXRESEND)
                        table = k.config.get("route_table")
                        if table is not None:
                            table.remove(link)
                elif got.watch is w and sock is not None:
                    _acks(sock, out, badlog)
                continue
            msg = received(got)
            h = msg.head
            if h.event == EVDL0 and h.node in (LOCAL, node_id):
                await _request(k, msg, links, node_id)
                continue
            h.flags &= ~(KTRY | DDLI | KTRACE)
            try:
                fr = DLFrame.from_nmsg(node_id, 0, h, msg.body)
            except ValueError as e:
                badlog.warn("frame", "dlo: a packet for node %d event %d dropped: %s",
                            h.node, h.event, e)
                continue
            r = out.outgoing(h.dl_link, fr)
            for d in r.drops:
                badlog.warn("nolink", "dlo: dropped %s", d.why)
            _send(sock, r.send, badlog)
    finally:
        if sock is not None:
            sock.close()


def _acks(sock: socket.socket, out: DLOut, badlog: DropLog) -> None:
    """Read the acks waiting on dlo's socket (``do_ack``)."""
    for _ in range(256):
        try:
            data, src = sock.recvfrom(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # ICMP: a dli port not (yet, or any more) open
            if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                continue
            raise
        r = out.datagram(src, data)
        for d in r.drops:
            badlog.drop("dlo", d)
        _send(sock, r.send, badlog)


async def _request(k: IProc, msg: NetMsg, links: list[DoLink], node_id: int) -> None:
    """A request to dlo itself (``request``): the link table."""
    h = msg.head
    req, src_event, extra = h.data[0], h.data[2], h.data[4]
    if msg.ktype & DLCTL and req == DOQGETLINKS:
        reply = NMsg(node=LOCAL, event=src_event, type=0, flags=0,
                     data=data_words(0, len(links)))
        await nsend(k, reply, links_segment(links, max(0, extra)), node_id=node_id)
    elif msg.ktype & DLCTL and req in (DOQSETLINK, DOQREMLINK, DOQVOPEN, DOQVCLOSE):
        log.warning("dlo: request %d ignored (lamgrow, lamshrink: not supported yet)", req)
    else:
        log.warning("dlo: request %d to dlo dropped", req)
