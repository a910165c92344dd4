"""dli_inet: the datalink's input (LAM's ``otb/sys/dli_inet/dli_inet.c``,
``di_forward``).

Frames from other nodes arrive on the UDP socket the boot callback opened
(``config["dli_sock"]``, the port lamboot told every node). The protocol is
:class:`lamd.datalink.link.DLIn`'s: each frame acked to its source address,
handed on in order per sending node, duplicates acked again; frames only
from the booted nodes' addresses; a bounded number kept from ahead. Drops are
logged once a minute per kind, with a count.

A frame handed on becomes a network message as LAM's ``di_forward`` makes
it: the header in host order, ``DDLI`` set, the user part converted back
(``DTBO`` cleared) when it is for this node; then to bufferd, or with
``NOBUF`` straight where the router says (this node's event, or dlo for a
packet passing through to another node). ``EVDLI`` requests for this node
(``DIQSETLINK``/``DIQREMLINK`` of lamgrow/lamshrink, ``DIQSANITY``
heartbeats of ``-x``) are logged and dropped: not supported yet.

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
from ..kernel.constants import EVBUFFERD, EVDLI, MAXNMSGLEN, NHDSIZE
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from ..ratelog import RateLog
from .nreq import DDLI, LOCAL, NOBUF, NoRoute, dsend, getroute, nrecv

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


async def forward(k: IProc, fr: DLFrame, node_id: int, badlog: DropLog) -> None:
    """Hand frame *fr* on (LAM's ``di_forward`` after the sequence check)."""
    head, body = incoming(fr, node_id)
    if head.event == EVDLI and head.node in (LOCAL, node_id):
        badlog.warn("diq", "dli: request %d to dli from node %d dropped (lamgrow, "
                    "lamshrink and -x heartbeats are not supported yet)",
                    head.data[0], fr.dlf_src_node)
        return
    if head.flags & NOBUF:
        try:
            await getroute(k, head, node_id)
        except NoRoute:
            badlog.warn("route", "dli: a frame for node %d event %d dropped: no route",
                        head.node, head.event)
            return
    else:
        head.dl_event = EVBUFFERD
    await dsend(k, head, body, node_id=node_id)


async def dli(k: IProc) -> None:
    """Take frames from the datalink socket and hand them on, forever."""
    sock: socket.socket | None = k.config.get("dli_sock")
    node_id = int(k.config.get("node_id", 0))
    if sock is None:
        while True:  # one node: nothing arrives over the network
            msg = await nrecv(k, EVDLI, 0, MAXNMSGLEN, NOBUF)
            log.warning("dli: dropped a packet (event %d type %d): no datalink",
                        msg.head.event, msg.head.type)
    din = DLIn(node_id, {l.link: l.addr for l in k.config.get("links") or ()})
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
                try:
                    sock.sendto(a, addr)
                except OSError as e:  # lost like a datagram: the sender resends
                    badlog.warn("sendto", "dli: ack to %s:%d not sent: %s", addr[0], addr[1],
                                e.strerror)
            for d in r.drops:
                badlog.drop("dli", d)
            for fr in r.deliver:
                try:
                    await forward(k, fr, node_id, badlog)
                except ValueError as e:  # the kernel refused it: that frame only
                    badlog.warn("refused", "dli: a frame from node %d for node %d event %d "
                                "refused by the kernel: %s", fr.dlf_src_node, fr.dlh_node,
                                fr.dlh_event, e)


__all__ = ["dli", "incoming", "forward", "DropLog"]
