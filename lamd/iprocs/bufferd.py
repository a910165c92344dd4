"""bufferd: buffering of network messages for local delivery
(LAM's ``otb/sys/bufferd/bufferd.c``).

Every local ``nsend`` is a kernel send to ``EVBUFFERD`` (type DLUSR/DLSYS,
``struct nmsg`` + body). bufferd passes the packet on at once with a KTRY
send if its receiver is already blocked on the destination event, and keeps
it otherwise. Every ``nrecv`` is a ``dsfr``: a ``BFQRECV`` control message
(type DLCTL, ``struct bfreq`` in ``nh_data``, an optional ``struct bfsync``
list as body for ``bfselect``) followed, in the same kernel call, by a
receive on the destination event; bufferd answers it with the first kept
packet that matches. Multi-packet messages (``NMORE``/``N2ND``, split by the
client's ``nsend``) are just packets in order on the same event.
``BFQPROBE`` answers ``nprobe``/``ntry_recv`` with a ``struct bfreply`` in
``nh_data`` (``bfr_index`` 0 if something matches, -1 if not).

Every packet and request is handled at once, as LAM's bufferd (a function
the C kernel calls per message) handles it: its deliveries are KTRY sends
that never block (``dtry_send``), so none needs a coroutine turn. A message
a client sends is taken by :meth:`BufferDaemon.take` the moment its body has
been read (``IProc.take``), straight from the bytes the kernel read: a
packet whose receiver is already blocked on its event (``nrecv``'s
``BFQRECV`` came first) goes on to it with one copy and is never kept. An
``nrecv`` whose packet is kept is answered when its ``dsfr`` meets bufferd,
one round trip before its ``BFQRECV`` is read (:meth:`BufferDaemon.peek`).

Memory is bounded as LAM bounds it: when less than one more frame fits in
``maxspace`` (``BFDEFSPACE``, 8 MiB, or ``config["bufferd_space"]``), bufferd
receives only control messages (type DLCTL), so senders block in the kernel
until receivers drain the buffer; a warning says so. A packet that still
arrives while full (a client typing its data DLCTL) is dropped with an
error instead of growing memory.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from .._dataclasses import dataclass, field

from ..kernel.constants import (
    EVBFORWARD, EVBUFFERD, KNMSG, KPROBE, KSYNCSQL, KTRACE, KTRY, MAXNMSGLEN,
)
from ..kernel.kiproc import IProc
from ..kernel.kinner import ksync_type, ksync_type_sql
from ..kernel.wire import NMSG_SIZE, KMsg, NMsg
from .nreq import (
    BFDEFSPACE, BFQLOOK, BFQPROBE, BFQRECV, BFQSPACE, BFQSTATE, BFQSWEEP,
    BFQSWEEP1, BFQWIPE, BFSTATUS, BFSYNC, DDLI, DINT4MSG, DLCTL,
    DMSKDATA, DMSKMSG, LOCAL, NMORE, Identity, data_words, dtry_send, received,
    route_local,
)

log = logging.getLogger("lamd.iprocs.bufferd")

BFNOTSEQ = -1


@dataclass(slots=True)
class BfBuf:
    """``struct bfbuf``: one kept packet."""

    head: NMsg
    body: bytes
    seq: int = BFNOTSEQ

    @property
    def size(self) -> int:
        return NMSG_SIZE + len(self.body)


@dataclass(slots=True)
class Buffers:
    """The kept packets, per destination event, in arrival order."""

    maxspace: int = BFDEFSPACE
    nspace: int = 0
    events: dict[int, deque[BfBuf]] = field(default_factory=dict)
    _seq_used: set[int] = field(default_factory=set)
    _seq_next: int = 0

    def count(self) -> int:
        return sum(len(q) for q in self.events.values())

    def keep(self, head: NMsg, body: bytes) -> BfBuf:
        b = BfBuf(head, body)
        self.events.setdefault(head.dl_event, deque()).append(b)
        self.nspace += b.size
        return b

    def remove(self, event: int, b: BfBuf) -> None:
        q = self.events[event]
        q.remove(b)
        self.nspace -= b.size
        self._seq_used.discard(b.seq)
        if not q:
            del self.events[event]

    def sweep(self, event: int | None = None) -> None:
        for ev in [event] if event is not None else list(self.events):
            for b in list(self.events.get(ev, ())):
                self.remove(ev, b)
        if event is None:
            self._seq_used.clear()
            self._seq_next = 0

    def seq_of(self, b: BfBuf) -> int:
        """LAM's ``seqnext``: a sequence number that no kept packet holds."""
        if b.seq == BFNOTSEQ:
            while self._seq_next in self._seq_used:
                self._seq_next += 1
            b.seq = self._seq_next
            self._seq_used.add(b.seq)
            self._seq_next += 1
        return b.seq

    def find(self, syncs: list[tuple[int, int]], flags: int) -> tuple[int, int, BfBuf] | None:
        """The first kept packet matching any (event, type) sync point.

        Returns (index of the sync point, event, packet).
        """
        same = ksync_type_sql if flags & KSYNCSQL else ksync_type
        for i, (event, type_) in enumerate(syncs):
            for b in self.events.get(event, ()):
                if same(type_, b.head.type):
                    return i, event, b
        return None

    def full(self) -> bool:
        """LAM's ``bfchkspace``: no room left for one more full frame."""
        return self.maxspace < self.nspace + MAXNMSGLEN + NMSG_SIZE


def sync_points(body: "bytes | memoryview", event: int, type_: int) -> list[tuple[int, int]]:
    """The request's synchronization points: the body's bfsync list, if any."""
    n = len(body) // BFSYNC.size
    if n == 0:
        return [(event, type_)]
    return [(v[0], v[1]) for v in (BFSYNC.unpack_from(body, i * BFSYNC.size) for i in range(n))]


class BufferDaemon:
    """bufferd's state and request handlers (``bfq[]`` in LAM)."""

    def __init__(self, k: IProc) -> None:
        self.k = k
        self.ident: Identity = k.config.get("identity") or Identity(
            int(k.config.get("node_id", 0)))
        self.buf = Buffers(maxspace=int(k.config.get("bufferd_space") or BFDEFSPACE))
        #: what a client may raise the space to with rbfparms (LAM: what malloc gives)
        self.space_limit = max(self.buf.maxspace,
                               int(k.config.get("bufferd_space_limit") or 8 * BFDEFSPACE))
        self.filter = 0
        self.dropped = 0
        self.peek_misses = 0

    # -- the main loop ------------------------------------------------------
    async def run(self) -> None:
        """Wait for messages forever. Those clients send are taken by
        :meth:`take` without resuming this loop; those of other internal
        processes (dli, nsend inside the daemon) come here."""
        k = self.k
        k.take = self.take
        k.peek = self.peek
        while True:
            m = self.next_recv()
            got = await k.recv(m.event, m.type, m.length, m.flags)
            msg = received(got)
            self.handle(msg.head, msg.body)

    def next_recv(self) -> KMsg:
        """The receive bufferd waits in: every message, or only control
        messages while the space is full (LAM's ``filter``)."""
        self.check_space()
        return KMsg(EVBUFFERD, self.filter, MAXNMSGLEN, KNMSG)

    def take(self, head: NMsg | None, body: "bytes | memoryview", ktype: int,
             peeked: tuple[int, int, int] | None = None) -> KMsg:
        """``IProc.take``: one message from a client, handled at once. An
        ``nrecv`` that :meth:`peek` has served already is done."""
        if head is None:
            head = NMsg()
        if peeked is not None:
            d = head.data
            if (len(body) == 0 and d[2] == BFQRECV and head.event == EVBUFFERD
                    and head.node in (LOCAL, self.ident.node_id)
                    and (d[4], d[5], d[7] & ~KNMSG) == peeked):
                return self.next_recv()
            self.peek_misses += 1
            if self.peek_misses == 1:
                log.warning("bufferd: a client's receive half (event %d type %d) did not "
                            "match the request it sent after it; it may have had a "
                            "kept packet its request did not ask for", peeked[0], peeked[1])
        self.handle(head, body)
        return self.next_recv()

    def peek(self, smsg: KMsg, rmsg: KMsg, pid: int) -> tuple[int, int, int] | None:
        """``IProc.peek``: a client's ``dsfr`` has just met bufferd's receive
        and waits in its receive half, its request not read yet. When it is
        what ``bfrecv`` sends (a header-only control message, then a receive
        for one point on an event of its own that is no reply event), its
        ``BFQRECV`` will ask for exactly that receive half's point: answer
        it now, as that request will find it (the first kept packet that
        matches), one round trip early. :meth:`take` then checks that the
        request was that one. Returns the point answered, or None."""
        if (smsg.event != EVBUFFERD or smsg.type != DLCTL or smsg.length != 0
                or not smsg.flags & KNMSG or not rmsg.flags & KNMSG
                or rmsg.flags & (KPROBE | KTRY) or rmsg.length <= 0 or rmsg.event == -pid):
            return None
        point = (rmsg.event, rmsg.type, rmsg.flags & ~KNMSG)
        if self.buf.events:
            self.bfqrecv(b"", point[0], point[1], point[2])
        return point

    def handle(self, head: NMsg, body: "bytes | memoryview") -> None:
        """One message: a request to bufferd, or a packet to pass on or keep."""
        if head.event == EVBUFFERD and head.node in (LOCAL, self.ident.node_id):
            self.request(head, body)
        elif route_local(head, self.ident.node_id):
            self.buffer(head, body)
        else:
            # another node's (a frame passing through): kept for
            # bforward, which sends it to dlo (bufferd never blocks there)
            head.dl_event = EVBFORWARD
            self.buffer(head, body)

    def check_space(self) -> None:
        was = self.filter
        self.filter = DLCTL if self.buf.full() else 0
        if self.filter and not was:
            log.warning("bufferd: buffer space full (%d of %d bytes in %d packets); "
                        "network senders now block until receivers drain it",
                        self.buf.nspace, self.buf.maxspace, self.buf.count())
        elif was and not self.filter:
            log.info("bufferd: buffer space available again (%d of %d bytes)",
                     self.buf.nspace, self.buf.maxspace)

    # -- delivery -------------------------------------------------------------
    def try_send(self, head: NMsg, body: "bytes | memoryview") -> bool:
        """``dtry_send``: deliver now if the receiver waits; True if delivered."""
        out = NMsg(head.dl_event, head.dl_link, head.node, head.event, head.type,
                   len(body), head.flags | KTRY, head.data, head.msg)
        rep = dtry_send(self.k, out, body, node_id=self.ident.node_id)
        return rep.reply != errno.EWOULDBLOCK

    def buffer(self, head: NMsg, body: "bytes | memoryview") -> None:
        """LAM's ``buffer``: pass the packet on, or keep it."""
        head.flags &= ~(KTRY | DDLI | KTRACE)
        if self.try_send(head, body):
            return
        if self.buf.nspace + NMSG_SIZE + len(body) > self.buf.maxspace + MAXNMSGLEN + NMSG_SIZE:
            self.dropped += 1
            log.error("bufferd: out of buffer space (%d of %d bytes): dropped a "
                      "%d-byte packet for event %d (%d dropped so far)",
                      self.buf.nspace, self.buf.maxspace, len(body), head.event, self.dropped)
            return
        head.flags &= ~KTRY
        self.buf.keep(head, bytes(body))

    def send_msg(self, head: NMsg, body: bytes = b"") -> None:
        """LAM's ``send_msg``: a reply, delivered or kept like any packet;
        one for another node kept for bforward."""
        head.dl_event = head.event if head.node in (LOCAL, self.ident.node_id) else EVBFORWARD
        self.buffer(head, body)

    # -- requests ---------------------------------------------------------------
    def request(self, head: NMsg, body: "bytes | memoryview") -> None:
        d = head.data
        src_node, src_event, req = d[0], d[1], d[2]
        event, type_, maxtbl, flags = d[4], d[5], d[6], d[7]
        if req == BFQRECV:
            self.bfqrecv(body, event, type_, flags)
        elif req == BFQPROBE:
            self.bfqprobe(body, src_event, event, type_, flags)
        elif req in (BFQWIPE, BFQSWEEP):
            self.buf.sweep()
        elif req == BFQSWEEP1:
            self.buf.sweep(event)
        elif req == BFQSPACE:
            self.bfqspace(src_node, src_event, maxspace=d[3])
        elif req == BFQSTATE:
            self.bfqstate(src_node, src_event, maxtbl)
        elif req == BFQLOOK:
            self.bfqlook(src_node, src_event, seq=event)
        else:
            log.warning("bufferd: unknown request %d from event %d ignored", req, src_event)

    def bfqspace(self, src_node: int, src_event: int, maxspace: int) -> None:
        """``rbfparms``: a new space limit, refused (ENOMEM) above the ceiling."""
        code = 0
        if maxspace < 0 or maxspace > self.space_limit:
            code = errno.ENOMEM
            log.warning("bufferd: refused a buffer space of %d bytes (limit %d)",
                        maxspace, self.space_limit)
        else:
            self.buf.maxspace = maxspace
        self.send_msg(NMsg(node=src_node, event=src_event, data=data_words(code)))

    def bfqrecv(self, body: "bytes | memoryview", event: int, type_: int, flags: int) -> None:
        if not self.buf.events:
            return  # nothing kept: the receiver stays blocked; the packet will come to it
        hit = self.buf.find(sync_points(body, event, type_), flags)
        if hit is None:
            return
        _, ev, b = hit
        if self.try_send(b.head, b.body):
            self.buf.remove(ev, b)

    def bfqprobe(self, body: "bytes | memoryview", src_event: int, event: int, type_: int,
                 flags: int) -> None:
        hit = self.buf.find(sync_points(body, event, type_), flags)
        if hit is None:
            words = data_words(0, 0, 0, 0, 0, 0, 0, -1)
        else:
            i, _, b = hit
            h = b.head
            length = h.data[0] if h.flags & NMORE else h.length
            words = data_words(0, h.type, 0, length, h.flags, h.data[0], h.data[1], i)
        reply = NMsg(dl_event=src_event, node=LOCAL, event=src_event, type=0,
                     flags=KTRY, data=words)
        dtry_send(self.k, reply, b"", node_id=self.ident.node_id)

    def bfqstate(self, src_node: int, src_event: int, maxtbl: int) -> None:
        """``rbfstate``: a summary reply, then the status table in packets."""
        nbf = self.buf.count()
        words = data_words(0, 0, self.buf.maxspace, 0, 0, self.buf.nspace, nbf, 0)
        self.send_msg(NMsg(node=src_node, event=src_event, flags=DINT4MSG, data=words))
        rows: list[bytes] = []
        for q in list(self.buf.events.values()):
            for b in q:
                if len(rows) >= max(0, min(nbf, maxtbl)):
                    break
                h = b.head
                rows.append(BFSTATUS.pack(h.node, h.event, h.type, h.length, h.flags,
                                          self.buf.seq_of(b), *tuple(h.data)))
        per = MAXNMSGLEN // BFSTATUS.size
        for i in range(0, len(rows), per):
            self.send_msg(NMsg(node=src_node, event=src_event, flags=DINT4MSG),
                          b"".join(rows[i:i + per]))

    def bfqlook(self, src_node: int, src_event: int, seq: int) -> None:
        """``rbflook``: the header, then the body, of the packet with *seq*."""
        found = next((b for q in self.buf.events.values() for b in q if b.seq == seq), None)
        if found is None:
            self.send_msg(NMsg(node=src_node, event=src_event,
                               data=data_words(errno.EWOULDBLOCK)))
            return
        self.send_msg(NMsg(node=src_node, event=src_event,
                           data=data_words(0, found.head.type)))
        h = found.head
        self.send_msg(NMsg(node=src_node, event=src_event,
                           flags=h.flags & (DMSKDATA | DMSKMSG), data=h.data), found.body)


async def bufferd(k: IProc) -> None:
    """bufferd's main: keep and deliver local network messages forever."""
    await BufferDaemon(k).run()


__all__ = ["bufferd", "BufferDaemon", "Buffers", "BfBuf"]
