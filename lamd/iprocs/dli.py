"""dli_inet: the datalink's input (LAM's ``otb/sys/dli_inet/dli_inet.c``,
``di_forward``).

Frames from other nodes arrive on the UDP socket the boot callback opened
(``config["dli_sock"]``, the port lamboot told every node). The protocol is
:class:`lamd.datalink.link.DLIn`'s: frames handed on in order per sending
node, each acked to its source address once handed on, duplicates acked
again; frames only from the booted nodes' addresses; a bounded number kept
from ahead. Outside the kernel under systemd, what was handed on is kept
(``config["link_keep"]``, :mod:`lamd.datalink.keep`) for a start after a
crash (``config["resumed"]``: the kernel's router has the universe
already), and each packet is handed on through the kernel's
:mod:`.diforward`, so that a frame resent after a crash is not handed on
twice. Drops are logged once a minute per kind, with a count.

A frame handed on becomes a network message as LAM's ``di_forward`` makes
it: the header in host order, ``DDLI`` set, the user part converted back
(``DTBO`` cleared) when it is for this node; then to bufferd, or with
``NOBUF`` straight where the router says (this node's event, or dlo for a
packet passing through to another node). ``EVDLI`` requests for this node
are dli's own (:mod:`lamd.datalink.linkreq`): ``DIQSETLINK`` of lamgrow
(frames from the new node taken, a route to it through dlo, dlo told with
``DOQSETLINK``, ``struct direply`` back to the tool), ``DIQREMLINK`` of
lamshrink or of dlo finding a link dead under ``-x`` (the node out of
dli's, the router's and dlo's tables, the reply unless the source is
``NOTNODEID``), ``DIQSANITY`` (dlo's heartbeat: nothing to do). Unlike
LAM's, a ``DIQ*`` request is taken only from a node of the universe (the
frame's checks) and a ``DIQSETLINK`` only for an id below
:data:`lamd.datalink.linkreq.MAXLINK` and an IPv4 address.

Without a datalink socket (a daemon not booted by lamboot) dli waits on
``EVDLI`` and drops what comes, as before.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

from ..datalink.frame import DLFrame
from ..datalink.link import DLIn, Drop
from ..datalink.linkreq import (
    DIQREMLINK, DIQSANITY, DIQSETLINK, DOQREMLINK, DOQSETLINK, MAXLINK, NOTNODEID, NT_JONES,
    DiLink, DiReq, LinkReqError,
)
from ..kernel.constants import (
    EVBUFFERD, EVDL0, EVDLI, EVKENYAD, KNMSG, MAXNMSGLEN, NHDSIZE, NOTEVENT, SIGSHRINK,
)
from ..kernel.kiproc import Event, IProc
from ..kernel.wire import NMsg
from ..ratelog import RateLog
from .nreq import (
    BFQRECV, DDLI, DLCTL, LOCAL, NMORE, NOBUF, NoRoute, data_words, nrecv, nsend,
)
from .diforward import EVDIFORWARD, frame_key, handon
from .router import Route, initrouter, rrgetnodes, rrremrent, rrsetrents

log = logging.getLogger("lamd.iprocs.dli")

#: datagrams read per readiness before other processes get a turn
DRAIN = 64
#: seconds between two log lines of one kind of dropped input
LOG_INTERVAL = 60.0
#: receive buffer (bytes): room for a few windows of every link
DLI_RCVBUF = 1 << 20


class DropLog(RateLog):
    """:class:`lamd.ratelog.RateLog` with a line for a datagram the
    datalink's state machines dropped (one per kind a minute)."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        super().__init__(logger, interval)

    def drop(self, who: str, d: Drop) -> None:
        self.warn(d.why.split(":")[0].split(" from ")[0], "%s: dropped %s (from %s:%d)",
                  who, d.why, d.src[0], d.src[1])


def incoming(fr: DLFrame, node_id: int) -> tuple[NMsg, bytes]:
    """``di_forward``'s network message for frame *fr* (route not yet set)."""
    if fr.dlh_node in (LOCAL, node_id):
        head, body = fr.to_nmsg()
    else:  # passing through: the user part stays in Trollius order, DTBO set
        head = NMsg(node=fr.dlh_node, event=fr.dlh_event, type=fr.dlh_type,
                    length=fr.dlh_length, flags=fr.dlh_flags,
                    data=struct.unpack(f"={NHDSIZE}i", fr.dlh_data))
        body = fr.dlf_msg
    head.flags |= DDLI
    head.length = len(body)
    return head, body


async def forward(k: IProc, fr: DLFrame, node_id: int, badlog: DropLog,
                  din: DLIn | None = None, src: tuple[str, int] | None = None) -> None:
    """Hand frame *fr* on (LAM's ``di_forward`` after the sequence check).

    With *src* (the address the frame came from: a dli outside the kernel,
    keeping its state) the packet is sent to the kernel's
    :mod:`.diforward`, which hands each frame on once, even when a crash of
    this process makes its sender send it again; it returns once the body
    is written (a send outside the kernel returns with it still to write),
    so the caller may ack the frame."""
    head, body = incoming(fr, node_id)
    if head.event == EVDLI and head.node in (LOCAL, node_id):
        if din is not None:
            await diq(k, DiReq.from_words(head.data), body, node_id, din, badlog)
        return
    if src is not None:
        await k.send(EVDIFORWARD, 0, frame_key(src, fr.dlf_src_node, fr.dlf_seqnum) + body,
                     KNMSG, nmsg=head)
        await k.flush()   # once written, the kernel has it
        return
    try:
        await handon(k, head, body, node_id)
    except NoRoute:
        badlog.warn("route", "dli: a frame for node %d event %d dropped: no route",
                    head.node, head.event)


async def diq(k: IProc, q: DiReq, body: bytes, node_id: int, din: DLIn,
              badlog: DropLog) -> None:
    """A request to dli (``diqsetlink``, ``diqremlink``; ``DIQSANITY`` needs
    nothing but the frame's ack)."""
    table = k.config.get("route_table")
    if q.req == DIQSANITY:
        return
    if q.req == DIQSETLINK:
        try:
            dil = DiLink.decode(body)
            if dil.link >= MAXLINK:
                raise LinkReqError(f"link {dil.link} out of range")
        except LinkReqError as e:
            badlog.warn("diq", "dli: DIQSETLINK from node %d refused: %s", q.src_node, e)
            return
        if dil.link == node_id:
            badlog.warn("diq", "dli: DIQSETLINK for this node (n%d) refused", node_id)
            return
        din.set_link(dil.link, dil.addr)
        route = Route(nodeid=dil.link, event=EVDL0, link=dil.link, event2=EVDL0,
                      link2=dil.link, nodetype=NT_JONES | q.type, ncpus=q.ncpus)
        if table is not None:
            table.set(route)
        if k.config.get("router_remote"):  # outside the kernel: its router too
            await rrsetrents(k, [route])
        await _to_dlo(k, DOQSETLINK, dil.link, dil.dolink().pack(), node_id)
        log.info("dli: node n%d at %s:%d added (from node %d)", dil.link, dil.addr, dil.port,
                 q.src_node)
    elif q.req == DIQREMLINK:
        if q.link == node_id or q.link < 0:
            badlog.warn("diq", "dli: DIQREMLINK of node %d refused", q.link)
            return
        din.rem_link(q.link)
        if table is not None:
            table.remove(q.link)
        if k.config.get("router_remote"):
            await rrremrent(k, q.link)
        await _to_dlo(k, DOQREMLINK, q.link, b"", node_id)
        log.info("dli: node n%d removed (%s)", q.link,
                 "its link is dead" if q.src_node == NOTNODEID else f"from node {q.src_node}")
        await shrink_signal(k, node_id, badlog)
        if q.src_node == NOTNODEID:
            return
    else:
        badlog.warn("diq", "dli: request %d to dli from node %d dropped", q.req, q.src_node)
        return
    reply = NMsg(node=q.src_node, event=q.src_event, type=0, flags=NOBUF,
                 data=data_words(0))
    try:
        await nsend(k, reply, b"", node_id=node_id)
    except NoRoute:
        badlog.warn("route", "dli: no route to node %d for a reply", q.src_node)


#: seconds dli waits for kenyad to answer the SIGSHRINK doom
DOOM_TIMEOUT = 5.0


async def shrink_signal(k: IProc, node_id: int, badlog: DropLog) -> None:
    """``rpdoom(LOCAL, SELECT_APPL, 0, SIGSHRINK)``: the application processes
    on this node learn that the universe shrank (kenyad's answer awaited,
    within :data:`DOOM_TIMEOUT`)."""
    from ..jobs.wire import PQDOOM, SELECT_APPL, PReq  # a shrink only: off the start-up path
    me = -k.pid
    pq = PReq(src_node=LOCAL, src_event=me, req=PQDOOM, sel_method=SELECT_APPL,
              signal=SIGSHRINK)
    await nsend(k, NMsg(node=LOCAL, event=EVKENYAD, type=0, flags=0), pq.pack(),
                node_id=node_id)
    bf = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
              data=data_words(0, 0, BFQRECV, 0, me, 0, 0, 0))
    t = k.timer(DOOM_TIMEOUT)
    try:
        got = await k.wait(k.sr(EVBUFFERD, DLCTL, b"", KNMSG, me, 0, MAXNMSGLEN, KNMSG,
                                nmsg=bf), t)
    finally:
        t.cancel()
    if isinstance(got, Event):
        badlog.warn("doom", "dli: kenyad did not answer the SIGSHRINK doom in %.0f s",
                    DOOM_TIMEOUT)


async def _to_dlo(k: IProc, req: int, link: int, body: bytes, node_id: int) -> None:
    """``ldosetlink``/``ldoremlink``: a ``struct doreq`` to this node's dlo."""
    head = NMsg(node=LOCAL, event=EVDL0, type=DLCTL, flags=NOBUF,
                data=data_words(req, node_id, NOTEVENT, link, 0))
    await nsend(k, head, body, node_id=node_id)


async def dli(k: IProc) -> None:
    """Take frames from the datalink socket and hand them on, forever."""
    sock: socket.socket | None = k.config.get("dli_sock")
    node_id = int(k.config.get("node_id", 0))
    if sock is None:
        while True:  # one node: nothing arrives over the network
            msg = await nrecv(k, EVDLI, 0, MAXNMSGLEN, NOBUF)
            log.warning("dli: dropped a packet (event %d type %d): no datalink",
                        msg.head.event, msg.head.type)
    keep = k.config.get("link_keep")
    if k.config.get("router_remote"):
        routes = list(k.config.get("routes") or ())
        if not k.config.get("resumed"):
            # outside the kernel (lamd.datalink), as LAM's separate dli_inet's
            # di_init: the universe to the kernel's router (initrouter)
            await initrouter(k, routes)
            log.info("dli: the kernel's router has the universe (this node n%d)", node_id)
        else:
            # after a crash of this process the kernel's router has it still;
            # a kernel without it is a new one (tkill, lamhalt): no universe
            have = set(await rrgetnodes(k))
            if have != {r.nodeid for r in routes}:
                why = (f"the kernel's router has nodes {sorted(have)}, not the universe "
                       f"this node served ({len(routes)} nodes): a new kernel")
                log.error("dli: %s; not serving again", why)
                refused = k.config.get("on_resume_refused")
                if refused is not None:
                    refused(why)
                return
        ready = k.config.get("on_router_ready")
        if ready is not None:
            ready()
    din = DLIn(node_id, {l.link: l.addr for l in k.config.get("links") or ()})
    if keep is not None:
        keep.attach_in(din)
    badlog = DropLog(log)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DLI_RCVBUF)
    except OSError:
        pass
    w = k.watch_readable(sock.fileno())
    log.info("dli: datalink input on UDP port %d, frames from %s", sock.getsockname()[1],
             ", ".join(f"n{l.link} {l.ip}" for l in din.links.values()))
    while True:
        await k.next_event(w)
        for _ in range(DRAIN):
            try:
                data, src = sock.recvfrom(MAXNMSGLEN + 4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # an ICMP error for an ack sent earlier
                if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            r = din.datagram(src, data)
            for addr, a in r.acks:
                _ack(sock, a, addr, badlog)
            for d in r.drops:
                badlog.drop("dli", d)
            for fr in r.deliver:
                # acked before it is handed on (LAM's di_forward acks first)
                # when this process keeps nothing and more packets of the
                # message follow: the sender's window moves on while this one
                # is handed on; the last or only packet of a message is handed
                # on first (the receiver waits for it, nobody for its ack)
                early = keep is None and fr.dlh_flags & NMORE
                if early:
                    _ack(sock, din.handed_on(fr), r.src, badlog)
                try:
                    await forward(k, fr, node_id, badlog, din,
                                  src=r.src if keep is not None else None)
                except ValueError as e:  # the kernel refused it: that frame only
                    badlog.warn("refused", "dli: a frame from node %d for node %d event %d "
                                "refused by the kernel: %s", fr.dlf_src_node, fr.dlh_node,
                                fr.dlh_event, e)
                if not early:
                    # the last or only packet of a message, and every frame
                    # of a process that keeps its state (under systemd): acked
                    # once handed on; kept, a crash of this process before
                    # that makes its sender send it again
                    _ack(sock, din.handed_on(fr), r.src, badlog)
            if r.deliver and not r.deliver[-1].dlh_flags & NMORE:
                # the last or only packet of a message was handed on: read on
                # at the next readiness (the socket stays watched level-
                # triggered), not now, where a read that finds nothing (as
                # after most such packets) would delay what it is handed to
                break


def _ack(sock: socket.socket, ack: bytes, to: tuple[str, int], badlog: DropLog) -> None:
    try:
        sock.sendto(ack, to)
    except OSError as e:  # lost like a datagram: the sender resends
        badlog.warn("sendto", "dli: ack to %s:%d not sent: %s", to[0], to[1], e.strerror)


__all__ = ["dli", "incoming", "forward", "diq", "DropLog"]
