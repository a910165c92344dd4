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

Link-table requests (``share/nreq/ldolinks.c``, :mod:`lamd.datalink.linkreq`):
a ``DOQGETLINKS`` request (type DLCTL, ``NOBUF``) to ``EVDL0`` for this node
with ``struct doreq`` in ``nh_data`` is answered with one ``MAXNMSGLEN``
reply per segment on ``doq_src_event``: ``struct doreply`` in ``nh_data``
and as many ``struct dolink`` as fit in the body, holes (``NOTLINKID``)
included. ``DOQSETLINK`` (a ``struct dolink`` body) and ``DOQREMLINK``
(``doq_link``) come from dli when lamgrow or lamshrink tell it of a node;
the valve requests are ignored.

Outside the kernel under systemd (``config["link_keep"]``,
:mod:`lamd.datalink.keep`) every frame given to a link is kept until acked,
with dlo's socket, and a start after a crash (``config["dlo_sock"]``) sends
again what the dead process had not seen acked. Outside the kernel
(``config["hosted"]``) dlo takes its packets from the kernel's
:mod:`.doforward` on ``EVDOFORWARD``, tagged, each counter once
(:class:`~.doforward.Taker`; kept with the frames under systemd), so that
a packet the kernel gave a dlo that died before keeping it comes to the
next one.

With ``-x`` (``fault_tolerant``) dlo watches its links as LAM's does: a
frame resent ``DOMAXRESEND`` times makes its link dead, and dlo tells its
own dli (a ``DIQREMLINK`` frame on the loopback link, source
``NOTNODEID``, LAM's ``linkdie``), which takes the node out of every
table; a link idle ``LAM_TO_DLO_IDLE`` seconds gets a ``DIQSANITY`` frame
(``linksanity``), so a node that died while nobody talked to it is found
out as well.

Wire formats (``dl_inet.h``, native int4; ``sockaddr_in`` in network order)::

    struct doreq   in nh_data: doq_req, doq_src_node, doq_src_event, doq_link, doq_extra
    struct doreply in nh_data: dor_reply, dor_nlinks
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from typing import Iterable

from ..datalink.frame import DOMAXRESEND, DLFrame
from ..datalink.link import IDLE, TICK, DLOut
from ..datalink.linkreq import (
    DIQREMLINK, DIQSANITY, DOLINK, DOQGETLINKS, DOQREMLINK, DOQSETLINK, DOQVCLOSE,
    DOQVOPEN, NOTNODEID, DiReq, DoLink, LinkReqError, LinkTable,
)
from ..kernel.constants import EVDL0, EVDLI, KNMSG, KTRACE, KTRY, MAXNMSGLEN
from ..kernel.kiproc import Event, IProc, Received, Watch
from ..kernel.wire import NMsg
from ..datalink.keep import DLO_SOCKET
from . import LOCALHOST
from .dli import DropLog
from .doforward import EVDOFORWARD, LONGEST, Taker, unpack
from .nreq import DDLI, DLCTL, LOCAL, NOBUF, NetMsg, data_words, nsend, received

log = logging.getLogger("lamd.iprocs.dlo")

#: entries per reply segment (``eps`` in LAM)
EPS = MAXNMSGLEN // DOLINK.size


def local_links(config: dict) -> list[DoLink]:
    """The one-node link table: node 0 at this host's address."""
    addr = str(config.get("node_addr") or LOCALHOST)
    return [DoLink(0, addr, int(config.get("dli_port") or 0))]


def links_segment(links: list[DoLink], seg: int) -> bytes:
    """Segment *seg* of the table, zero-padded to ``MAXNMSGLEN`` as LAM sends it."""
    return LinkTable(links).segment(seg, MAXNMSGLEN)


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


def diq_frame(node_id: int, to: int, req: DiReq, flags: int = 0) -> DLFrame:
    """A request frame for dli on node *to* (``linksanity``, ``linkdie``)."""
    head = NMsg(node=to, event=EVDLI, type=0, flags=flags, length=0, data=req.words())
    return DLFrame.from_nmsg(node_id, 0, head, b"")


async def dlo(k: IProc) -> None:
    """Send packets for other nodes over UDP and answer link-table requests."""
    node_id = int(k.config.get("node_id", 0))
    table = LinkTable(list(k.config.get("links") or local_links(k.config)))
    me = table.get(node_id) or table.valid()[0]
    k.config.setdefault("node_addr", me.addr)
    badlog = DropLog(log)
    ft = bool(k.config.get("fault_tolerant"))
    out = DLOut(node_id, {l.link: (l.addr, l.port) for l in table.valid()}, fault_tolerant=ft)
    keep = k.config.get("link_keep")
    sock: socket.socket | None = k.config.get("dlo_sock")   # kept across a crash
    w = None
    if sock is None and (len(table.valid()) > 1 or k.config.get("dli_sock") is not None):
        # booted by lamboot (a universe of one node may grow)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.set_inheritable(False)
        sock.bind(("0.0.0.0", 0))
        if keep is not None:
            keep.keep_socket(DLO_SOCKET, sock.fileno())
    if sock is not None:
        sock.setblocking(False)
        w = k.watch_readable(sock.fileno())
        log.info("dlo: datalink output from UDP port %d to %s%s", sock.getsockname()[1],
                 ", ".join(f"n{l.link} {l.addr}:{l.port}" for l in table.valid()
                           if l.link != node_id) or "no other node",
                 " (fault tolerant)" if ft else "")
    if keep is not None:   # what a crashed process had not seen acked: again
        _send(sock, keep.attach_out(out), badlog)
    timer: Watch | None = None
    idle: Watch | None = None

    def give(link: int, fr: DLFrame) -> None:
        r = out.outgoing(link, fr)
        for d in r.drops:
            badlog.warn("nolink", "dlo: dropped %s", d.why)
        _send(sock, r.send, badlog)

    def result(r) -> None:
        _send(sock, r.send, badlog)
        for link in r.dead:
            # linkdie: the link's frames are gone; dli (over the loopback
            # link) takes the node out of the router's, dli's and this table
            log.error("dlo: node %d does not answer (a frame resent %d times): "
                      "its link is dead", link, DOMAXRESEND)
            rt = k.config.get("route_table")
            if rt is not None:
                rt.remove(link)
            give(node_id, diq_frame(node_id, node_id,
                                    DiReq(DIQREMLINK, NOTNODEID, 0, link), NOBUF))
        for link in r.stale:  # linksanity, while a slot is free
            if out.room() and link in out.links:
                give(link, diq_frame(node_id, link, DiReq(DIQSANITY)))

    # outside the kernel the kernel's doforward gives dlo its packets, tagged
    hosted = bool(k.config.get("hosted"))
    event, length = (EVDOFORWARD, LONGEST) if hosted else (EVDL0, MAXNMSGLEN)
    taker = (Taker(keep.epoch, keep.high, keep) if keep is not None else Taker()) \
        if hosted else None

    async def take(msg: NetMsg) -> None:
        """One packet for another node, or a request to dlo."""
        h = msg.head
        if h.event == EVDL0 and h.node in (LOCAL, node_id):
            await _request(k, msg, table, out, node_id)
            return
        h.flags &= ~(KTRY | DDLI | KTRACE)
        try:
            fr = DLFrame.from_nmsg(node_id, 0, h, msg.body)
        except ValueError as e:
            badlog.warn("frame", "dlo: a packet for node %d event %d dropped: %s",
                        h.node, h.event, e)
            return
        give(h.dl_link, fr)

    try:
        while True:
            if out.busy():
                if idle is not None:
                    idle.cancel()
                    idle = None
                if timer is None:
                    timer = k.timer(TICK)
            elif ft and sock is not None and timer is None and idle is None:
                idle = k.timer(IDLE)
            watches = tuple(x for x in (w, timer, idle) if x is not None)
            got: Received | Event
            if out.room() and not watches:
                # one node, nothing in flight: a plain receive, no event
                # sources (what lets a re-exec find dlo at rest)
                got = await k.recv(event, 0, length, KNMSG)
            elif out.room():
                got = await k.wait(k.recv(event, 0, length, KNMSG), *watches)
            else:
                got = await k.next_event(*watches)
            if isinstance(got, Event):
                if got.watch is timer:
                    timer = None
                    result(out.tick())
                elif got.watch is idle:
                    idle = None
                    result(out.idle_timeout())
                elif got.watch is w and sock is not None:
                    _acks(sock, out, badlog)
                continue
            msg = received(got)
            if taker is None:
                await take(msg)
                continue
            try:
                given = unpack(msg.head, msg.body, msg.ktype)
            except ValueError as e:
                badlog.warn("tag", "dlo: a message from doforward dropped: %s", e)
                continue
            for counter, p in taker.new(given):
                taker.begin(counter)
                await take(NetMsg(p.head, p.body, p.ktype))
                taker.took(counter)
    finally:
        if idle is not None:
            idle.cancel()
        if sock is not None:
            sock.close()


def _universe_changed(k: IProc, table: LinkTable) -> None:
    """lamgrow or lamshrink (dli changed the routes, then told dlo): the
    kept state's universe too (under systemd, :mod:`lamd.datalink.keep`)."""
    keep = k.config.get("link_keep")
    if keep is not None:
        rt = k.config.get("route_table")
        keep.rewrite(list(rt.routes.values()) if rt is not None else None, table.valid())


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
        if not out.busy():
            # every frame acked: no ack is due, so no read that finds
            # nothing (a stray datagram left is read at the next readiness)
            return


async def _request(k: IProc, msg: NetMsg, table: LinkTable, out: DLOut,
                   node_id: int) -> None:
    """A request to dlo itself (``request``): the link table."""
    h = msg.head
    req, src_event, link, extra = h.data[0], h.data[2], h.data[3], h.data[4]
    if not msg.ktype & DLCTL:
        log.warning("dlo: request %d to dlo dropped", req)
    elif req == DOQGETLINKS:
        reply = NMsg(node=LOCAL, event=src_event, type=0, flags=0,
                     data=data_words(0, len(table)))
        await nsend(k, reply, table.segment(max(0, extra), MAXNMSGLEN), node_id=node_id)
    elif req == DOQSETLINK:
        try:
            l = DoLink.unpack(msg.body)
            table.set(l)
        except (LinkReqError, struct.error) as e:
            log.warning("dlo: DOQSETLINK refused: %s", e)
            return
        out.set_link(l.link, (l.addr, l.port))
        log.info("dlo: link to n%d at %s:%d", l.link, l.addr, l.port)
        _universe_changed(k, table)
    elif req == DOQREMLINK:
        table.remove(link)
        out.rem_link(link)
        log.info("dlo: link to n%d removed", link)
        _universe_changed(k, table)
    elif req in (DOQVOPEN, DOQVCLOSE):
        pass  # the valve: nothing in LAM 7.1.4 closes it
    else:
        log.warning("dlo: request %d to dlo dropped", req)
