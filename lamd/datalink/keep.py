"""What the datalink process keeps across its own crash (issue 11).

Under systemd the datalink (:mod:`lamd.datalink.process`) is a process of
its own. If it dies (a bug, ``SIGKILL``, the OOM killer), systemd starts it
again (``Restart=on-failure`` in ``lamd-dl@.service``) and the node must go
on as the same member of its universe, with nothing the protocol acked lost.
The peers know the node by its dli UDP port and go on resending what it had
not acked; the kernel's router keeps the universe (the kernel did not
crash). What only the dead process knew is kept in systemd's descriptor
store (``FileDescriptorStoreMax=``), where the next start finds it:

* ``dl-in`` and ``dl-out``: dli's UDP socket (the port lamboot told every
  node) and dlo's (acks for frames sent before the crash still arrive);
* ``dl-state-GEN``: a memfd, mapped, holding the universe (this node's id,
  the origin, the routes and links, as lamgrow and lamshrink left them),
  each link's next sequence number out and the next frame not yet handed on
  in, and every frame given to a link and not yet acked. The hot changes
  (a frame given, acked, handed on) are stores into the mapping, no system
  call; a change of the universe writes a whole new memfd, stored under the
  next generation before the old one is removed, so a crash between the two
  leaves one whole state (the newest is taken).

Nothing is lost and nothing goes out twice. A frame handed on whose
handing was not yet kept comes again from its sender, and the kernel's
:mod:`~lamd.iprocs.diforward`, which dli gives its frames to, knows it. A
packet dlo took from the kernel and had not yet kept comes again from the
kernel's :mod:`~lamd.iprocs.doforward`, tagged with a counter that dlo
keeps in the frame's slot (and in the head once taken), so a packet it
took is not taken again.

Layout of ``dl-state`` (native byte order; it never leaves the host)::

    head     magic "LAMDDLK2", generation, universe length, links, slots, slot size,
             doforward's epoch and the highest counter taken in it
    universe node id, origin, dli port, fault tolerant, routes, links;
             then each route (struct route), each link (struct dolink)
    links    per link: link id, next sequence number out, next not handed on in
    slots    per slot: used, link id, sequence number, length, the epoch and
             counter of the packet it was made of; the datagram
"""

from __future__ import annotations

import mmap
import os
import struct
from .._dataclasses import dataclass, field

from ..iprocs.router import ROUTE, Route
from .early import DLI_SOCKET, DLO_SOCKET, STATE_PREFIX  # the store's names
from .frame import DLMINFRAMELEN, DOSLOTCNT
from .link import DLIn, DLOut, Keeper
from .linkreq import DOLINK, DoLink
from ..kernel.constants import MAXNMSGLEN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable
    from ..service.notify import FdStore

MAGIC = b"LAMDDLK2"
#: magic, generation, universe length, links, slots, slot size; doforward's
#: epoch last taken from and the highest counter taken in it
HEAD = struct.Struct("=8sIIIIIQQ")
#: where the epoch and the counter are in the head
HEAD_TAKEN = HEAD.size - 16
UNIVERSE = struct.Struct("=iiiiII")
LINKREC = struct.Struct("=iii")
#: used, link, sequence number, length; the epoch and counter of the packet
#: from doforward the frame was made of (0, 0: none)
SLOTHEAD = struct.Struct("=iiiiQQ")
#: the longest datagram dlo sends: a frame's header and a whole packet
SLOT_DATA = DLMINFRAMELEN + MAXNMSGLEN
SLOT_SIZE = SLOTHEAD.size + SLOT_DATA
#: slots of a new state: twice dlo's (a dead link's frame to itself comes on top)
MIN_SLOTS = 2 * DOSLOTCNT


class KeepError(ValueError):
    """A kept state that cannot be used (the message says why)."""


def _align(n: int) -> int:
    return (n + 7) & ~7


@dataclass(slots=True)
class Universe:
    """What the boot gave this node, as lamgrow and lamshrink changed it."""

    node_id: int
    origin: int
    dli_port: int
    fault_tolerant: bool
    routes: list[Route]
    links: list[DoLink]

    def pack(self) -> bytes:
        return b"".join([UNIVERSE.pack(self.node_id, self.origin, self.dli_port,
                                       int(self.fault_tolerant), len(self.routes),
                                       len(self.links))]
                        + [r.pack() for r in self.routes] + [l.pack() for l in self.links])

    @classmethod
    def unpack(cls, buf: bytes) -> "Universe":
        try:
            node_id, origin, port, ft, nr, nl = UNIVERSE.unpack_from(buf)
            if len(buf) != UNIVERSE.size + nr * ROUTE.size + nl * DOLINK.size:
                raise KeepError("the universe's length does not match its counts")
            off = UNIVERSE.size
            routes = [Route.unpack(buf[off + i * ROUTE.size:off + (i + 1) * ROUTE.size])
                      for i in range(nr)]
            off += nr * ROUTE.size
            links = [DoLink.unpack(buf, off + i * DOLINK.size) for i in range(nl)]
        except (struct.error, OSError, ValueError) as e:
            raise KeepError(f"the universe: {e}") from None
        return cls(node_id, origin, port, bool(ft), routes, links)


@dataclass(slots=True)
class Kept:
    """A state read back: the universe, and per link the next sequence
    number out, the next not handed on in, and the frames not acked; the
    epoch and highest counter taken from doforward."""

    generation: int
    universe: Universe
    epoch: int = 0
    high: int = 0
    seqgive: dict[int, int] = field(default_factory=dict)
    handed: dict[int, int] = field(default_factory=dict)
    slots: dict[int, dict[int, bytes]] = field(default_factory=dict)
    #: (link, seq) -> the epoch and counter of the packet the frame was made of
    tags: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)


def load(fd: int) -> Kept:
    """The state in memfd *fd* (:class:`KeepError` if it is not one whole)."""
    try:
        size = os.fstat(fd).st_size
        buf = os.pread(fd, size, 0)
    except OSError as e:
        raise KeepError(f"cannot read it: {e.strerror}") from None
    if len(buf) < HEAD.size:
        raise KeepError(f"{len(buf)} bytes, shorter than its head")
    magic, gen, ulen, nlinks, nslots, slotsize, epoch, high = HEAD.unpack_from(buf)
    if magic != MAGIC or slotsize != SLOT_SIZE:
        raise KeepError("not a datalink state of this version")
    off_links = _align(HEAD.size + ulen)
    off_slots = _align(off_links + nlinks * LINKREC.size)
    if len(buf) != off_slots + nslots * SLOT_SIZE:
        raise KeepError(f"{len(buf)} bytes where its head says "
                        f"{off_slots + nslots * SLOT_SIZE}")
    kept = Kept(gen, Universe.unpack(buf[HEAD.size:HEAD.size + ulen]), epoch, high)
    for i in range(nlinks):
        link, give, handed = LINKREC.unpack_from(buf, off_links + i * LINKREC.size)
        kept.seqgive[link] = give
        kept.handed[link] = handed
    for i in range(nslots):
        off = off_slots + i * SLOT_SIZE
        used, link, seq, n, s_epoch, counter = SLOTHEAD.unpack_from(buf, off)
        if not used:
            continue
        if not 0 <= n <= SLOT_DATA:
            raise KeepError(f"slot {i}: length {n}")
        data = buf[off + SLOTHEAD.size:off + SLOTHEAD.size + n]
        kept.slots.setdefault(link, {})[seq] = data
        kept.tags[(link, seq)] = (s_epoch, counter)
        if s_epoch == epoch and counter > kept.high:
            # the packet was kept as this frame, the crash came before the head
            kept.high = counter
    return kept


def newest(stored: dict[str, int]) -> tuple[str, int] | None:
    """The newest ``dl-state-GEN`` of the descriptors systemd passed (name -> fd)."""
    gens = []
    for name in stored:
        if name.startswith(STATE_PREFIX) and name[len(STATE_PREFIX):].isdigit():
            gens.append((int(name[len(STATE_PREFIX):]), name))
    if not gens:
        return None
    name = max(gens)[1]
    return name, stored[name]


class LinkKeep(Keeper):
    """The state in systemd's descriptor store, kept current.

    :class:`~lamd.datalink.link.DLOut` and :class:`~lamd.datalink.link.DLIn`
    tell it each change (it is their ``keep``); it keeps a copy in memory
    and writes each change into the mapped memfd. :meth:`rewrite` writes a
    new generation (the universe changed, or the slots ran out).
    """

    def __init__(self, store: "FdStore", universe: Universe, kept: Kept | None = None) -> None:
        self.store = store
        self.universe = universe
        self.generation = kept.generation if kept is not None else 0
        self.seqgive: dict[int, int] = dict(kept.seqgive) if kept else {}
        self.handed_in: dict[int, int] = dict(kept.handed) if kept else {}
        self.frames: dict[tuple[int, int], bytes] = {
            (link, seq): d for link, s in (kept.slots.items() if kept else ())
            for seq, d in s.items()}
        #: doforward's epoch and the highest counter taken in it; the
        #: counter of the packet being taken (0: none), kept in its frame's slot
        self.epoch = kept.epoch if kept else 0
        self.high = kept.high if kept else 0
        self.taking = 0
        self.tags: dict[tuple[int, int], tuple[int, int]] = dict(kept.tags) if kept else {}
        self.fd = -1
        self.mm: mmap.mmap | None = None
        self._rec: dict[int, int] = {}            # link -> record offset
        self._slot: dict[tuple[int, int], int] = {}  # (link, seq) -> slot offset
        self._free: list[int] = []
        self.rewrite()

    # -- a whole generation ------------------------------------------------
    def rewrite(self, routes: "Iterable[Route] | None" = None,
                links: "Iterable[DoLink] | None" = None) -> None:
        """A new memfd with the whole state (*routes* and *links*, if given,
        the universe's new tables), stored before the old one is removed."""
        if routes is not None:
            self.universe.routes = list(routes)
        if links is not None:
            self.universe.links = list(links)
        uni = self.universe.pack()
        ids = sorted({l.link for l in self.universe.links} | set(self.seqgive)
                     | set(self.handed_in))
        nslots = max(MIN_SLOTS, 2 * len(self.frames))
        off_links = _align(HEAD.size + len(uni))
        off_slots = _align(off_links + len(ids) * LINKREC.size)
        size = off_slots + nslots * SLOT_SIZE
        fd = os.memfd_create("lamd-datalink-state", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        gen = self.generation + 1
        HEAD.pack_into(mm, 0, MAGIC, gen, len(uni), len(ids), nslots, SLOT_SIZE,
                       self.epoch, self.high)
        mm[HEAD.size:HEAD.size + len(uni)] = uni
        rec = {}
        for i, link in enumerate(ids):
            rec[link] = off_links + i * LINKREC.size
            LINKREC.pack_into(mm, rec[link], link, self.seqgive.get(link, 0),
                              self.handed_in.get(link, 0))
        slot = {}
        for i, (key, d) in enumerate(self.frames.items()):
            off = off_slots + i * SLOT_SIZE
            mm[off + SLOTHEAD.size:off + SLOTHEAD.size + len(d)] = d
            SLOTHEAD.pack_into(mm, off, 1, key[0], key[1], len(d), *self._tag(key))
            slot[key] = off
        free = [off_slots + i * SLOT_SIZE for i in range(nslots - 1, len(self.frames) - 1, -1)]
        self.store.fdstore(f"{STATE_PREFIX}{gen}", fd)
        if self.generation:
            self.store.fdstore_remove(f"{STATE_PREFIX}{self.generation}")
        self.close()
        self.fd, self.mm, self.generation = fd, mm, gen
        self._rec, self._slot, self._free = rec, slot, free

    def close(self) -> None:
        """Let go of this process's copy (the store keeps its own)."""
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def forget(self) -> None:
        """The universe is over: the store lets go of what a start after a
        crash would have needed (``lamd-dl@.service`` starts again after a
        clean end too, and must not find a universe there)."""
        for name in (f"{STATE_PREFIX}{self.generation}", DLI_SOCKET, DLO_SOCKET):
            self.store.fdstore_remove(name)
        self.close()

    def keep_socket(self, name: str, sock_fd: int) -> None:
        """A socket the next start must have again (dli's, dlo's)."""
        self.store.fdstore(name, sock_fd)

    # -- seeding the state machines after a crash ------------------------
    def attach_in(self, din: DLIn) -> None:
        """*din*'s links take up where the dead process's stopped; it tells
        this keeper of every change from now on."""
        for link, l in din.links.items():
            n = self.handed_in.get(link, 0)
            l.seqrecv = l.handed = n
        din.keep = self

    def attach_out(self, out: DLOut) -> list[tuple[tuple[str, int], bytes]]:
        """*out*'s links take up where the dead process's stopped: the
        datagrams to send again now; it tells this keeper of every change
        from now on."""
        sends = []
        for link, l in out.links.items():
            frames = {seq: d for (k, seq), d in self.frames.items() if k == link}
            for d in l.restore(self.seqgive.get(link, 0), frames):
                sends.append((l.addr, d))
        # frames of links no longer in the table go
        for key in [k for k in self.frames if k[0] not in out.links]:
            self.slot_gone(*key)
        out.keep = self
        return sends

    # -- Keeper: the hot changes -------------------------------------------
    def slot_put(self, link: int, seq: int, datagram: bytes, seqgive: int) -> None:
        self.frames[(link, seq)] = datagram
        self.seqgive[link] = seqgive
        if self.taking:
            self.tags[(link, seq)] = (self.epoch, self.taking)
        if not self._free or link not in self._rec:   # (a frame is at most SLOT_DATA)
            self.rewrite()
            return
        mm = self.mm
        assert mm is not None
        off = self._free.pop()
        mm[off + SLOTHEAD.size:off + SLOTHEAD.size + len(datagram)] = datagram
        SLOTHEAD.pack_into(mm, off, 1, link, seq, len(datagram), *self._tag((link, seq)))
        self._slot[(link, seq)] = off
        struct.pack_into("=i", mm, self._rec[link] + 4, seqgive)

    def slot_gone(self, link: int, seq: int) -> None:
        self.frames.pop((link, seq), None)
        self.tags.pop((link, seq), None)
        off = self._slot.pop((link, seq), None)
        if off is not None and self.mm is not None:
            struct.pack_into("=i", self.mm, off, 0)
            self._free.append(off)

    def link_gone(self, link: int) -> None:
        for key in [k for k in self.frames if k[0] == link]:
            self.slot_gone(*key)
        self.seqgive.pop(link, None)
        self.handed_in.pop(link, None)
        off = self._rec.get(link)
        if off is not None and self.mm is not None:
            LINKREC.pack_into(self.mm, off, link, 0, 0)

    def handed(self, link: int, seq: int) -> None:
        self.handed_in[link] = seq
        off = self._rec.get(link)
        if off is None:
            self.rewrite()
        elif self.mm is not None:
            struct.pack_into("=i", self.mm, off + 8, seq)

    # -- doforward's counters (lamd.iprocs.doforward.Taker) ----------------
    def _tag(self, key: tuple[int, int]) -> tuple[int, int]:
        """The epoch and counter of the packet frame *key* was made of (0, 0: none)."""
        return self.tags.get(key, (0, 0))

    def new_epoch(self, epoch: int) -> None:
        """Packets of a new epoch come: kept before the first is taken."""
        self.epoch, self.high = epoch, 0
        if self.mm is not None:
            struct.pack_into("=QQ", self.mm, HEAD_TAKEN, epoch, 0)

    def took(self, counter: int) -> None:
        """Packet *counter* is taken (a frame's slot holds it already, if it
        became one)."""
        self.high = counter
        self.taking = 0
        if self.mm is not None:
            struct.pack_into("=Q", self.mm, HEAD_TAKEN + 8, counter)


__all__ = ["LinkKeep", "Kept", "Universe", "KeepError", "load", "newest", "STATE_PREFIX",
           "DLI_SOCKET", "DLO_SOCKET"]
