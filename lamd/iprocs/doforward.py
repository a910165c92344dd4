"""doforward: the kernel's side of a dlo outside the kernel (issue 11; no
LAM counterpart).

Packets for other nodes reach dlo on ``EVDL0``. Inside the kernel dlo
takes them itself. Outside it (the datalink process), a packet the kernel
has written to dlo's connection is the kernel's no more: if the process dies
before it has read and kept the packet (:mod:`lamd.datalink.keep`), the
packet is lost, and a sender waiting for an answer (a ``tping``) waits on.
So when dlo is outside, the kernel boots this internal process in its
place on ``EVDL0``. It gives the packets to dlo on :data:`EVDOFORWARD`,
tagged, and keeps those it does not know taken:

* dlo takes one message at a time and keeps what it took before it asks
  for the next. So when the process that took the last message (the
  send's reply names it) waits for the next one, or takes it, everything
  before is kept; only the packets since then are in doubt (*unsure*):
  the last one given, and one more for each dlo that died with a message
  it had not kept;
* a message carries the unsure packets again before its own (the tag,
  then each one's header and body, then its body) unless the process that
  took the last one is the one waiting for it, so the next packet brings a
  lost one to the next dlo;
* :data:`REPEAT` seconds after a message, unless the process that took it
  waits for more, the unsure packets are given again: a packet lost at the
  end of a burst reaches the next dlo without waiting for more traffic
  (and when the same process takes them, nothing is unsure any more);
* the tag holds an *epoch* (random, one per boot of this process: a kernel
  started again after a crash counts anew) and the packet's counter. dlo
  takes a packet only if its counter is above the highest it took in that
  epoch (:class:`Taker`), and keeps that counter with what the packet
  became (the frame's slot) in the same store, so a packet given again is
  taken once.

At most :data:`MAXUNSURE` packets are unsure (each a dlo that died with a
message unread); at that bound they are given again at once, until one
process has taken them twice, before any new packet is taken.
Nothing waits in both directions (dlo never sends to this process), so
neither can block on the other; when dlo's window is full and it takes
nothing, this process waits in its send and senders wait on ``EVDL0``, as
with dlo inside. The epoch, the counter and the unsure packets cross a
re-exec of the daemon (``IProc.carry``).
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from .._dataclasses import dataclass

from ..kernel.constants import EVDL0, KNMSG, LAM_BASE_EVENT, MAXNMSGLEN
from ..kernel.kiproc import Event, IProc, Watch
from ..kernel.wire import NMSG_SIZE, NMsg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..datalink.keep import LinkKeep

log = logging.getLogger("lamd.iprocs.doforward")

#: dlo outside the kernel receives here (diforward's is LAM_BASE_EVENT + 40)
EVDOFORWARD = LAM_BASE_EVENT + 41
#: a message's tag: epoch, the packet's counter, how many unsure packets
#: come before it (their counters the ones just below); then each of those
#: (:data:`PREV`, header, body), then the packet's body
TAG = struct.Struct("=QQi4x")
#: an unsure packet's body length and kernel type
PREV = struct.Struct("=ii")
#: the most packets in doubt at once
MAXUNSURE = 8
#: the longest message to dlo
LONGEST = TAG.size + MAXUNSURE * (PREV.size + NMSG_SIZE + MAXNMSGLEN)
#: seconds after a message until the unsure packets are given again
REPEAT = 0.2


@dataclass(slots=True)
class Packet:
    """A packet as doforward took it from ``EVDL0``."""

    head: NMsg
    body: bytes
    ktype: int


@dataclass(slots=True)
class Given:
    """One message from doforward, read by dlo: the packet (counter
    *counter*) and the unsure ones before it (counters below)."""

    epoch: int
    counter: int
    prevs: list[Packet]
    packet: Packet


def _pack_packet(p: Packet) -> bytes:
    return PREV.pack(len(p.body), p.ktype) + p.head.pack() + p.body


def _unpack_packet(buf: bytes, off: int) -> tuple[Packet, int]:
    n, ktype = PREV.unpack_from(buf, off)
    off += PREV.size
    if not 0 <= n <= MAXNMSGLEN or len(buf) < off + NMSG_SIZE + n:
        raise ValueError(f"a packet of {n} bytes at {off} of {len(buf)}")
    return (Packet(NMsg.unpack(buf, off), bytes(buf[off + NMSG_SIZE:off + NMSG_SIZE + n]), ktype),
            off + NMSG_SIZE + n)


def pack(epoch: int, counter: int, prevs: list[Packet], body: bytes) -> bytes:
    """The body of the message giving packet *counter* (its body *body*)
    after the unsure packets *prevs*."""
    return b"".join([TAG.pack(epoch, counter, len(prevs))] + [_pack_packet(p) for p in prevs]
                    + [body])


def _unpack_packets(buf: bytes, n: int) -> tuple[list[Packet], int]:
    """The *n* packets after the tag, and where they end."""
    off = TAG.size
    out = []
    for _ in range(n):
        p, off = _unpack_packet(buf, off)
        out.append(p)
    return out, off


def unpack(head: NMsg, body: bytes, ktype: int) -> Given:
    """What :func:`pack` made (ValueError if it is not that)."""
    if len(body) < TAG.size:
        raise ValueError(f"{len(body)} bytes, shorter than a tag")
    epoch, counter, nprev = TAG.unpack_from(body)
    if not 0 <= nprev <= MAXUNSURE or nprev >= counter:
        raise ValueError(f"{nprev} packets before packet {counter}")
    prevs, off = _unpack_packets(body, nprev)
    return Given(epoch, counter, prevs, Packet(head, bytes(body[off:]), ktype))


class Taker:
    """dlo's side: which packets of a message are new.

    *epoch* and *high* are the epoch last taken from and the highest counter
    taken in it (from the kept state after a crash; 0 and 0 at first).
    A packet is new if its counter is above *high* in the same epoch; in an
    epoch not seen before (a new dlo, or a kernel started again) every packet
    is new, the unsure ones included. With a *keep*, the epoch is kept
    before anything of a new one is taken, and each counter with what its
    packet became (:meth:`begin`, :meth:`took`)."""

    __slots__ = ("epoch", "high", "keep")

    def __init__(self, epoch: int = 0, high: int = 0, keep: "LinkKeep | None" = None) -> None:
        self.epoch = epoch
        self.high = high
        self.keep = keep

    def new(self, g: Given) -> list[tuple[int, Packet]]:
        """The packets of *g* to take, in order, each with its counter."""
        if g.epoch != self.epoch:
            self.epoch, self.high = g.epoch, 0
            if self.keep is not None:
                self.keep.new_epoch(g.epoch)
        first = g.counter - len(g.prevs)
        return [(c, p) for c, p in enumerate(g.prevs + [g.packet], first) if c > self.high]

    def begin(self, counter: int) -> None:
        """Packet *counter* is being taken: a frame given now keeps it."""
        if self.keep is not None:
            self.keep.taking = counter

    def took(self, counter: int) -> None:
        """Packet *counter* is taken (whatever it became)."""
        self.high = counter
        if self.keep is not None:
            self.keep.took(counter)


class Giver:
    """doforward's side, without I/O: what to give, and what is unsure."""

    __slots__ = ("epoch", "counter", "unsure", "taker")

    def __init__(self, epoch: int, counter: int = 0, unsure: list[Packet] | None = None) -> None:
        self.epoch = epoch
        self.counter = counter
        self.unsure: list[Packet] = unsure or []
        self.taker = -1   # pid of the process that took the last message (-1: not known)

    def give(self, p: Packet) -> bytes:
        """The message giving new packet *p*."""
        self.counter += 1
        body = pack(self.epoch, self.counter, self.unsure, p.body)
        self.unsure.append(p)
        return body

    def again(self) -> tuple[Packet, bytes]:
        """The message giving the unsure packets again: the last one's header and it."""
        last = self.unsure[-1]
        return last, pack(self.epoch, self.counter, self.unsure[:-1], last.body)

    def waiting(self, pid: int) -> None:
        """Process *pid* waits for the next message (-1: none waits): if it
        took the last one, it has kept everything."""
        if pid == self.taker and pid != -1:
            self.unsure = []

    def taken(self, pid: int, new: bool) -> None:
        """Process *pid* took the message (*new*: a new packet's, else
        :meth:`again`'s)."""
        if pid == self.taker:   # it took the one before first: only this one is unsure
            self.unsure = self.unsure[-1:] if new else []
        self.taker = pid

    def full(self) -> bool:
        return len(self.unsure) >= MAXUNSURE


def pack_carry(g: Giver) -> bytes:
    """What crosses a re-exec: a message's layout, the unsure packets, no body."""
    return pack(g.epoch, g.counter, g.unsure, b"")


def unpack_carry(data: bytes) -> Giver:
    epoch, counter, n = TAG.unpack_from(data)
    return Giver(epoch, counter, _unpack_packets(data, n)[0])


async def doforward(k: IProc) -> None:
    """Give dlo every packet for another node; the unsure ones again."""
    g = unpack_carry(k.restored) if k.restored else \
        Giver(int.from_bytes(os.urandom(8), "little") or 1)
    k.carry = functools.partial(pack_carry, g)
    timer: Watch | None = None
    while True:
        if g.full():
            got = None
        elif timer is None:
            # nothing unsure: a plain receive (at rest for a re-exec)
            got = await k.recv(EVDL0, 0, MAXNMSGLEN, KNMSG)
        else:
            got = await k.wait(k.recv(EVDL0, 0, MAXNMSGLEN, KNMSG), timer)
        if got is None or isinstance(got, Event):
            if got is None and timer is not None:
                timer.cancel()   # (at the bound: given again at once)
            timer = None
            g.waiting(k.receiver(EVDOFORWARD, 0))
            if not g.unsure:   # the dlo that took them asks for more: all kept
                continue
            last, body = g.again()
            rep = await k.send(EVDOFORWARD, last.ktype, body, KNMSG,
                               nmsg=last.head)
            if rep.index != g.taker and g.taker != -1:
                log.info("doforward: dlo is a new process (pid %d): given again what the "
                         "one before may not have kept (%d packets)", rep.index, len(g.unsure))
            g.taken(rep.index, False)
        else:
            # (the header is this process's: the kernel packs it for dlo)
            head = got.nmsg if got.nmsg is not None else NMsg()
            g.waiting(k.receiver(EVDOFORWARD, got.type))
            rep = await k.send(EVDOFORWARD, got.type,
                               g.give(Packet(head, got.body, got.type)), KNMSG, nmsg=head)
            g.taken(rep.index, True)
        if g.unsure and timer is None:
            timer = k.timer(REPEAT)
        elif not g.unsure and timer is not None:
            timer.cancel()
            timer = None


__all__ = ["EVDOFORWARD", "TAG", "LONGEST", "REPEAT", "MAXUNSURE", "Packet", "Given", "Taker",
           "Giver", "pack", "unpack", "doforward", "pack_carry", "unpack_carry"]
