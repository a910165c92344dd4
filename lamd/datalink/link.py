"""The datalink's protocol, sans-IO: one state machine per link and the two
tables that own them (LAM's ``otb/sys/dlo_inet/{dlo_inet,do_intr}.c`` and
``otb/sys/dli_inet/dli_inet.c``).

Nothing here touches a socket or a clock. :class:`DLOut` (dlo's side) is
fed messages to send, acks and timer ticks and returns the datagrams to send
(address, bytes); :class:`DLIn` (dli's side) is fed datagrams with their
source address and returns acks to send back and frames to hand on, in
order. The internal processes :mod:`lamd.iprocs.dlo` and
:mod:`lamd.iprocs.dli` carry those out.

LAM's rules, kept:

* sequence numbers per link from 0, modulo ``DLMAXSEQ``; every frame is
  acked alone (``struct dlack``: its sequence number, the acking node);
* at most ``DOMAXPENDING`` (3) unacked frames per link; more wait, in
  order, in dlo's ``DOSLOTCNT`` (8) slots, which all links share: with every
  slot full dlo takes nothing more from the kernel, so senders block there;
* a timer tick every ``LAM_TO_DLO_ACK`` (0.5 s) while a slot is full: a
  pending frame is marked at its first tick and resent, lowest sequence
  number first, at every tick after; with ``-x`` a frame resent more than
  ``DOMAXRESEND`` times makes its link dead;
* with ``-x`` a link with nothing pending counts idle ticks; at
  ``DOMAXSTALE`` (``LAM_TO_DLO_IDLE`` worth of ticks), or at the idle
  timeout when nothing at all is in flight, it is stale and gets a
  ``DIQSANITY`` frame (the caller makes it), whose resends find a dead node
  out;
* dli delivers in order per link; a frame already delivered is acked again
  (its ack was lost) and not delivered twice.

What can be lost when the datalink's process dies (issue 11: a process of
its own under systemd, started again with what it kept,
:mod:`lamd.datalink.keep`): nothing the protocol acked. A frame is acked
only once the caller has handed it on (:meth:`DLIn.handed_on`), not when it
arrives, and a frame dlo takes is kept (``keep``) before its first send. An
observer (``keep``, :class:`Keeper`) is told each change of what must
survive: the frames given to links and their acks, each link's next
sequence number out and the next frame not yet handed on in.

Beyond LAM (hostile input):

* a frame is taken only from the address of the node it claims to come
  from, an ack only from the address of the node it claims to ack for;
* a frame ahead of the next one expected is kept (unacked, as LAM leaves
  every frame ahead: acked once handed on) when it is fewer than
  :data:`DLI_WINDOW` frames ahead, so a lost frame costs no second trip of
  those after it: the resend that fills the gap hands them all on; farther
  ahead it is dropped. What any sender can make dli hold is so bounded by
  ``DLI_WINDOW - 1`` frames. Two
  different frames with one number ahead (a forged one and the real one)
  are both dropped unacked, so a forger cannot slip a frame in ahead: the
  real sender resends, and the frame is taken only when it is the next.
* malformed datagrams, unknown nodes and foreign addresses are reported
  (:class:`Drop`) for the caller to log at a bounded rate.
"""

from __future__ import annotations

from collections import deque
from .._dataclasses import dataclass, field
from .._static import mypyc_attr

from .frame import (
    DLACKLEN, DLMAXSEQ, DOMAXPENDING, DOMAXRESEND, DOSLOTCNT, DLAck, DLFrame,
    FrameError, seqinc,
)

#: dl_inet.h / lam_config.h: the ack timeout (LAM_TO_DLO_ACK, microseconds)
LAM_TO_DLO_ACK = 500000
#: the timer period of dlo, in seconds
TICK = LAM_TO_DLO_ACK / 1e6
#: lam_config.h: dlo's idle timeout under -x (seconds; Debian's lamd waits 120 s)
LAM_TO_DLO_IDLE = 120
#: the idle timer period of dlo, in seconds
IDLE = float(LAM_TO_DLO_IDLE)
#: dl_inet.h: idle ack-timer ticks that make a link stale
DOMAXSTALE = int(LAM_TO_DLO_IDLE / TICK)
#: frames dli keeps per sender: the next expected and those less than this far ahead
DLI_WINDOW = DOSLOTCNT

Addr = tuple[str, int]


def seqdiff(a: int, b: int) -> int:
    """How far *a* is after *b*, in ``(-DLMAXSEQ/2, DLMAXSEQ/2]``."""
    d = (a - b) % DLMAXSEQ
    return d - DLMAXSEQ if d > DLMAXSEQ // 2 else d


@mypyc_attr(allow_interpreted_subclasses=True)  # keep.LinkKeep
class Keeper:
    """What :class:`DLOut` and :class:`DLIn` tell of each change that must
    survive a crash of their process (:mod:`lamd.datalink.keep` keeps it);
    this base keeps nothing."""

    def slot_put(self, link: int, seq: int, datagram: bytes, seqgive: int) -> None:
        """Frame *seq* given to *link* (sent or waiting); the link's next is *seqgive*."""

    def slot_gone(self, link: int, seq: int) -> None:
        """Frame *seq* of *link* acked."""

    def link_gone(self, link: int) -> None:
        """*link* and its frames dropped (out), or its input state (in)."""

    def handed(self, link: int, seq: int) -> None:
        """Frames from *link* before *seq* are handed on."""


NO_KEEPER = Keeper()


# --------------------------------------------------------------------------
# dlo: the output side


@dataclass(slots=True)
class Slot:
    """``struct doslot``: one frame given to a link, sent or waiting."""

    seq: int
    datagram: bytes
    pending: bool = False      # DOPENDING: sent, unacked
    marked: bool = False       # DORESEND: a tick passed since it was sent
    resend: int = 0            # dos_resend


@dataclass(slots=True)
class OutLink:
    """One link of dlo (``struct dolink`` and its slots): where frames go,
    the next sequence number, the frames sent and those waiting."""

    link: int
    addr: Addr
    seqgive: int = 0                                       # dol_seqgive
    pending: dict[int, Slot] = field(default_factory=dict)  # by seq, unacked
    held: deque[Slot] = field(default_factory=deque)       # waiting for the window
    idle: int = 0                                          # dol_idle

    @property
    def npending(self) -> int:
        return len(self.pending)

    @property
    def nslots(self) -> int:
        return len(self.pending) + len(self.held)

    @property
    def seqsend(self) -> int:
        """``dol_seqsend``: the next sequence number to send."""
        return self.held[0].seq if self.held else self.seqgive

    def give(self, frame: DLFrame, keep: Keeper = NO_KEEPER) -> list[bytes]:
        """A frame for this link (its ``dlf_seqnum`` is replaced by the
        link's next): the datagrams to send now."""
        seq = self.seqgive
        self.seqgive = seqinc(seq)
        self.idle = 0
        fr = DLFrame(frame.dlf_src_node, seq, frame.dlh_node, frame.dlh_event,
                     frame.dlh_type, frame.dlh_length, frame.dlh_flags,
                     frame.dlh_data, frame.dlf_msg)
        slot = Slot(seq, fr.encode())
        keep.slot_put(self.link, seq, slot.datagram, self.seqgive)
        self.held.append(slot)
        return self._fill()

    def restore(self, seqgive: int, datagrams: dict[int, bytes]) -> list[bytes]:
        """The state a crashed process kept: the next sequence number and the
        frames not acked (by number), all sent again now (their acks may
        have gone to the dead process's socket)."""
        self.seqgive = seqgive
        for seq in sorted(datagrams, key=lambda q: seqdiff(q, seqgive)):
            self.held.append(Slot(seq, datagrams[seq]))
        return self._fill()

    def _fill(self) -> list[bytes]:
        out = []
        while self.held and len(self.pending) < DOMAXPENDING:
            s = self.held.popleft()
            s.pending = True
            self.pending[s.seq] = s
            out.append(s.datagram)
        return out

    def ack(self, seq: int) -> tuple[bool, list[bytes]]:
        """An ack of frame *seq*: (was it pending, datagrams to send now)."""
        if self.pending.pop(seq, None) is None:
            return False, []
        return True, self._fill()

    def tick(self) -> list[Slot]:
        """LAM's ``do_timeout_ack`` for this link: mark what is pending,
        and return the slots marked at an earlier tick (to resend, lowest
        sequence number first)."""
        due = []
        for s in self.pending.values():
            if s.marked:
                due.append(s)
            else:
                s.marked = True
        due.sort(key=lambda s: seqdiff(s.seq, self.seqgive))
        return due


@dataclass(slots=True, frozen=True)
class Drop:
    """A datagram not taken, and why (for one rate-limited log line)."""

    src: Addr
    why: str


@dataclass(slots=True)
class OutResult:
    """What :class:`DLOut` asks for: datagrams to send (address, bytes),
    links found dead and links gone stale (``-x``), datagrams dropped."""

    send: list[tuple[Addr, bytes]] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)


class DLOut:
    """dlo's link table and slots (sans-IO)."""

    def __init__(self, node_id: int, links: dict[int, Addr] | None = None,
                 fault_tolerant: bool = False, nslots: int = DOSLOTCNT) -> None:
        self.node_id = node_id
        self.links: dict[int, OutLink] = {}
        self.fault_tolerant = fault_tolerant
        self.nslots = nslots
        #: told of every frame given and acked (:class:`Keeper`)
        self.keep = NO_KEEPER
        for link, addr in (links or {}).items():
            self.set_link(link, addr)

    # -- the table ----------------------------------------------------------
    def set_link(self, link: int, addr: Addr) -> None:
        """``DOQSETLINK``: a link, fresh (sequence numbers from 0)."""
        if link in self.links:
            self.keep.link_gone(link)
        self.links[link] = OutLink(link, addr)

    def rem_link(self, link: int) -> None:
        """``DOQREMLINK``: the link and its frames go (``do_slotsweep``)."""
        if self.links.pop(link, None) is not None:
            self.keep.link_gone(link)

    # -- slots ----------------------------------------------------------------
    @property
    def nfull(self) -> int:
        """``dos_nfull``: slots holding a frame, over every link."""
        return sum(l.nslots for l in self.links.values())

    def room(self) -> bool:
        """Can dlo take one more message from the kernel?"""
        return self.nfull < self.nslots

    def busy(self) -> bool:
        """Is anything unacked (the ack timer must run)?"""
        return self.nfull > 0

    # -- events ---------------------------------------------------------------
    def outgoing(self, link: int, frame: DLFrame) -> OutResult:
        """``do_outgoing``: *frame* (any ``dlf_seqnum``) for *link*. A link
        that does not exist drops it silently, as LAM does."""
        r = OutResult()
        l = self.links.get(link)
        if l is None:
            r.drops.append(Drop(("", 0), f"no link n{link} for a frame to node "
                                          f"{frame.dlh_node} event {frame.dlh_event}"))
            return r
        for d in l.give(frame, self.keep):
            r.send.append((l.addr, d))
        return r

    def datagram(self, src: Addr, data: bytes) -> OutResult:
        """An ack arriving on dlo's socket from *src* (``do_ack``)."""
        r = OutResult()
        if len(data) != DLACKLEN:
            r.drops.append(Drop(src, f"a {len(data)}-byte datagram on dlo's socket "
                                     f"(acks are {DLACKLEN})"))
            return r
        a = DLAck.decode(data)
        l = self.links.get(a.dla_destid)
        if l is None:
            r.drops.append(Drop(src, f"an ack from unknown node {a.dla_destid}"))
            return r
        if src[0] != l.addr[0]:
            r.drops.append(Drop(src, f"an ack for node n{a.dla_destid} from another "
                                     f"address than its {l.addr[0]}"))
            return r
        was, sends = l.ack(a.dla_seqnum)   # an ack of nothing pending: a duplicate
        if was:
            self.keep.slot_gone(l.link, a.dla_seqnum)
        for d in sends:
            r.send.append((l.addr, d))
        return r

    def tick(self) -> OutResult:
        """``do_timeout_ack``: resend what waited a whole tick; with ``-x``
        links whose frames were resent more than ``DOMAXRESEND`` times die,
        and links idle ``DOMAXSTALE`` ticks are stale."""
        r = OutResult()
        for l in list(self.links.values()):
            for s in l.tick():
                if self.fault_tolerant and s.resend > DOMAXRESEND:
                    r.dead.append(l.link)
                    self.rem_link(l.link)
                    break
                s.resend += 1
                r.send.append((l.addr, s.datagram))
        if self.fault_tolerant:
            for l in self.links.values():
                if l.npending == 0 and l.link != self.node_id:
                    l.idle += 1
                    if l.idle == DOMAXSTALE:
                        r.stale.append(l.link)
        return r

    def idle_timeout(self) -> OutResult:
        """``do_timeout_idle`` (``-x``, nothing in flight for
        ``LAM_TO_DLO_IDLE`` seconds): every other link is stale."""
        r = OutResult()
        for l in self.links.values():
            if l.link != self.node_id:
                l.idle += DOMAXSTALE
                r.stale.append(l.link)
        return r


# --------------------------------------------------------------------------
# dli: the input side


@dataclass(slots=True)
class InLink:
    """One sender as dli sees it (``struct dilink``): its address, the next
    sequence number expected (``dil_seqrecv``), the next not yet handed on
    (``handed``: frames between the two are on their way to the kernel,
    unacked), frames kept from ahead."""

    link: int
    ip: str
    seqrecv: int = 0
    handed: int = 0
    ahead: dict[int, DLFrame] = field(default_factory=dict)
    conflicts: int = 0

    def receive(self, fr: DLFrame) -> tuple[bool, list[DLFrame]]:
        """A frame from this sender: (ack it now?, frames to hand on in order)."""
        d = seqdiff(fr.dlf_seqnum, self.seqrecv)
        if d < 0:   # taken before: acked again once handed on (its ack was lost)
            return seqdiff(fr.dlf_seqnum, self.handed) < 0, []
        if d >= DLI_WINDOW:
            return False, []                      # too far ahead: it will be resent
        if d > 0:
            kept = self.ahead.setdefault(fr.dlf_seqnum, fr)
            if kept != fr:  # two different frames claim one number: keep neither
                del self.ahead[fr.dlf_seqnum]
                self.conflicts += 1
            return False, []
        out = [fr]
        self.seqrecv = seqinc(self.seqrecv)
        while self.seqrecv in self.ahead:
            out.append(self.ahead.pop(self.seqrecv))
            self.seqrecv = seqinc(self.seqrecv)
        return False, out   # each acked once handed on (DLIn.handed_on)


@dataclass(slots=True)
class InResult:
    """What :class:`DLIn` asks for: acks to send now (to the frame's source
    address), frames to hand on (in order per sender; each acked to
    :attr:`src` once handed on: :meth:`DLIn.handed_on`), datagrams dropped."""

    src: Addr = ("", 0)
    acks: list[tuple[Addr, bytes]] = field(default_factory=list)
    deliver: list[DLFrame] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)


class DLIn:
    """dli's link table (sans-IO): node id -> the address frames from it
    must come from."""

    def __init__(self, node_id: int, links: dict[int, str] | None = None) -> None:
        self.node_id = node_id
        self.links: dict[int, InLink] = {}
        #: told of every frame handed on (:class:`Keeper`)
        self.keep = NO_KEEPER
        for link, ip in (links or {}).items():
            self.set_link(link, ip)

    def set_link(self, link: int, ip: str, seqrecv: int = 0) -> None:
        """``DIQSETLINK``: a sender, fresh (sequence numbers from 0, or from
        *seqrecv*: what a crashed process had handed on)."""
        if link in self.links:
            self.keep.link_gone(link)
        self.links[link] = InLink(link, ip, seqrecv, seqrecv)

    def rem_link(self, link: int) -> None:
        if self.links.pop(link, None) is not None:
            self.keep.link_gone(link)

    def handed_on(self, fr: DLFrame) -> bytes:
        """Frame *fr* of :attr:`InResult.deliver` is handed on: its ack, to
        send to :attr:`InResult.src` (the sender's resends of it are acked
        again from now on)."""
        l = self.links.get(fr.dlf_src_node)
        if l is not None and seqdiff(fr.dlf_seqnum, l.handed) >= 0:
            l.handed = seqinc(fr.dlf_seqnum)
            self.keep.handed(l.link, l.handed)
        return DLAck(fr.dlf_seqnum, self.node_id).encode()

    def held(self) -> int:
        """Frames kept from ahead, over every sender."""
        return sum(len(l.ahead) for l in self.links.values())

    def datagram(self, src: Addr, data: bytes) -> InResult:
        """A datagram on dli's port from *src* (``di_forward``)."""
        r = InResult(src)
        try:
            fr = DLFrame.decode(data)
        except FrameError as e:
            r.drops.append(Drop(src, f"malformed frame: {e}"))
            return r
        l = self.links.get(fr.dlf_src_node)
        if l is None:
            r.drops.append(Drop(src, f"a frame from unknown node {fr.dlf_src_node}"))
            return r
        if src[0] != l.ip:
            r.drops.append(Drop(src, f"a frame claiming node n{fr.dlf_src_node} from "
                                     f"another address than its {l.ip}"))
            return r
        if not 0 <= fr.dlf_seqnum < DLMAXSEQ:
            r.drops.append(Drop(src, f"sequence number {fr.dlf_seqnum} out of range"))
            return r
        conflicts = l.conflicts
        ack, out = l.receive(fr)
        if l.conflicts != conflicts:
            r.drops.append(Drop(src, f"frame {fr.dlf_seqnum} from node n{fr.dlf_src_node}: "
                                     "another frame with that number was kept"))
        if ack:
            r.acks.append((src, DLAck(fr.dlf_seqnum, self.node_id).encode()))
        r.deliver.extend(out)
        return r


__all__ = ["DLOut", "DLIn", "OutLink", "InLink", "Slot", "Drop", "OutResult", "Keeper",
           "InResult", "seqdiff", "TICK", "LAM_TO_DLO_ACK", "DLI_WINDOW", "IDLE",
           "LAM_TO_DLO_IDLE", "DOMAXSTALE"]
