"""traced: the trace store and MPI name service (LAM's ``otb/sys/traced/``:
``tr_main.c``, ``traced.c``, ``trbuf.c``), an internal process of the kernel.

Requests arrive as network messages on ``EVTRACED`` (``struct trreq`` in
``nh_data``, :class:`lamd.jobs.wire.TrReq`; body = data); replies go to
``trq_src_node``/``trq_src_event`` as ``struct trreply`` in ``nh_data``
(:class:`lamd.jobs.wire.TrReply`), exactly as ``trsendr`` sends them:

=================  =============================================  ==================
request            what                                           reply
=================  =============================================  ==================
``TRQSTORE``       keep the body (one ``lam_rtrstore`` packet,    none
                   at most MAXNMSGLEN) in list ``trq_lnum``
                   under ``trq_pid``
``TRQGET``         the traces of list ``trq_lnum`` (TRANYLIST:    ``{0, total}``, then
``TRQFORGET``      every list) and pid ``trq_pid`` (TRANYPID:     one message per trace
                   any); FORGET drops them once sent              (same nh_data)
``TRQSWEEP``       drop those traces (``lamclean``, lamtrace -R,  none
                   ``lam_rtrnamesweep`` on TRNAMELIST)
``TRQUDIE``        drop every trace of ``trq_pid``                none
``TRQWIPE``        reset traced                                   none
``TRQNAMEPUB``     publish ``name\\0data\\0`` under ``trq_pid``     ``{0}``/``{EPUBLISHED}``
``TRQNAMEDEL``     unpublish ``name``                             ``{0}``/``{ENOTPUBLISHED}``
``TRQNAMEGET``     look ``name`` up                               ``{0, len}`` + ``data\\0``
                                                                  / ``{ENOTPUBLISHED}``
``TRQCLEANOBJS``   ``lam_cleanup_objects``: the SysV objects and  none
                   files in ``<session>/lam-registry``
=================  =============================================  ==================

The lists live in a hash table that :class:`TrHash` models on LAM's
``all_hash.c`` (open addressing from ``abs(lnum) % size``, linear probing,
grown by TRHASHSIZE when full): a TRANYLIST unload walks the slots in order,
so ``lamtrace`` writes the traces in the C daemon's order, published names
(list TRNAMELIST, slot 99) included, as LAM does.

Where this traced differs from LAM's (each logged once per kind and minute):

* **Bounded memory.** LAM's only bound is to drop the oldest trace of a
  list (``trq_lnum >= 0``) when the total reaches TRMAXSPACE (2 MiB), one per
  store, so negative lists, names and stores larger than what they evict
  grow without end. Here the same rule applies, and past a hard limit
  (``traced_space_limit``, default :data:`SPACE_LIMIT`) older traces of the
  list go until the new one fits; if it still cannot, the store is dropped.
  A publish past the limit is answered ``ENOMEM``; lists are at most
  ``traced_max_lists`` (:data:`MAX_LISTS`).
* A request code out of range is refused with a log line (LAM panics), so
  is a store into TRANYLIST (LAM's ``ah_insert`` fails and it panics).
* ``trq_length`` above the bytes that arrived stores what arrived (LAM copies
  ``trq_length`` bytes of its receive buffer); names are read up to their
  NUL or the end of the body, never beyond.
* ``TRQWIPE`` leaves an empty name list in place (LAM frees it and keeps
  using the freed list).
* Each reply has ``send_timeout`` to leave: a client that asks for traces and
  never reads them cannot hold traced up; the unsent rest of a TRQFORGET is
  kept.
* ``TRQCLEANOBJS`` runs LAM's ``lam_cleanup_objects`` in the kernel's
  process. Under systemd the kernel's unit has a private IPC namespace, so
  there it only removes registered files; the SysV objects are kenyad's to
  remove, which it does for ``lamclean``'s ``PQDOOM`` (sent before this).
"""

from __future__ import annotations

import errno
import logging
from .._dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from ..ratelog import RateLog
from ..kernel.constants import EVBUFFERD, EVTRACED, MAXNMSGLEN, LamErrno
from ..kernel.kiproc import Event, IProc
from ..kernel.wire import NMsg
from ..jobs.trreq import (
    TRANYLIST, TRANYPID, TRMAXSPACE, TRNAMELIST, TRQCLEANOBJS, TRQFORGET, TRQGET, TRQMAX,
    TRQNAMEDEL, TRQNAMEGET, TRQNAMEPUB, TRQSTORE, TRQSWEEP, TRQUDIE, TRQWIPE,
)
from .nreq import LOCAL, NMORE, NetMsg, data_words, dsend, my_nodeid, nrecv

if TYPE_CHECKING:  # pragma: no cover
    from ..jobs.wire import TrReply, TrReq

# The struct codecs (lamd.jobs.wire: every job service's structs) are loaded
# with the first request, not at boot (issue 13: start-up).

log = logging.getLogger("lamd.iprocs.traced")

EPUBLISHED = LamErrno.EPUBLISHED
ENOTPUBLISHED = LamErrno.ENOTPUBLISHED

#: trreq.h: initial size (and growth) of the list hash table
TRHASHSIZE = 100
#: The hard limit on the bytes traced keeps (traces and names); LAM has none.
SPACE_LIMIT = 2 * TRMAXSPACE
#: The most trace lists traced keeps (LAM: as many as the hash table grows to).
MAX_LISTS = 10_000
#: How long one reply may take to leave (bufferd full, nobody reading).
SEND_TIMEOUT = 10.0
#: One log line per kind of trouble per this many seconds.
LOG_INTERVAL = 60.0

REQUEST_NAMES = {TRQSTORE: "TRQSTORE", TRQGET: "TRQGET", TRQFORGET: "TRQFORGET",
                 TRQSWEEP: "TRQSWEEP", TRQUDIE: "TRQUDIE", TRQWIPE: "TRQWIPE",
                 TRQNAMEPUB: "TRQNAMEPUB", TRQNAMEDEL: "TRQNAMEDEL",
                 TRQNAMEGET: "TRQNAMEGET", TRQCLEANOBJS: "TRQCLEANOBJS"}


@dataclass(slots=True)
class TrBuffer:
    """``struct trbuffer``: one stored trace (or one published name)."""

    pid: int
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)


@dataclass(slots=True)
class TrBList:
    """``struct trblist``: one trace list, its buffers in arrival order."""

    lnum: int
    bufs: list[TrBuffer] = field(default_factory=list)


class TrHash:
    """The lists by number, in LAM's ``all_hash.c`` slot order.

    Only what traced uses: insert (first free slot from ``abs(key) %
    size``), find, expand (re-insert in slot order into a larger table),
    delete, and the walk of ``ah_top``/``ah_next``.
    """

    def __init__(self, size: int = TRHASHSIZE) -> None:
        self.slots: list[TrBList | None] = [None] * size

    @property
    def size(self) -> int:
        return len(self.slots)

    def __len__(self) -> int:
        return sum(1 for s in self.slots if s is not None)

    def _start(self, key: int) -> int:
        return abs(key) % self.size

    def _probe(self, key: int) -> Iterator[int]:
        start = self._start(key)
        for i in range(self.size):
            yield (start + i) % self.size

    def find(self, key: int) -> TrBList | None:
        for i in self._probe(key):
            s = self.slots[i]
            if s is not None and s.lnum == key:
                return s
        return None

    def insert(self, lst: TrBList) -> bool:
        """False when the table is full (LAM's EFULL)."""
        for i in self._probe(lst.lnum):
            if self.slots[i] is None:
                self.slots[i] = lst
                return True
        return False

    def expand(self, newsize: int) -> None:
        old = [s for s in self.slots if s is not None]
        self.slots = [None] * max(newsize, self.size)
        for s in old:
            self.insert(s)

    def delete(self, key: int) -> None:
        for i in self._probe(key):
            s = self.slots[i]
            if s is not None and s.lnum == key:
                self.slots[i] = None
                return

    def __iter__(self) -> Iterator[TrBList]:
        return iter([s for s in self.slots if s is not None])


def _cstr(body: bytes) -> bytes:
    """The NUL-terminated string at the start of *body* (all of it without a NUL)."""
    return body.split(b"\0", 1)[0]


class TraceStore:
    """traced's state (``trbuf.c``), sans I/O: every request is a method
    returning what to send back, if anything."""

    def __init__(self, space_limit: int = SPACE_LIMIT, max_lists: int = MAX_LISTS) -> None:
        self.space_limit = max(int(space_limit), MAXNMSGLEN)
        self.max_lists = max(int(max_lists), 2)
        self.totalspace = 0
        self.hash = TrHash()
        self.names = TrBList(TRNAMELIST)
        self.hash.insert(self.names)
        self.dropped = 0
        self.badlog = RateLog(log, LOG_INTERVAL)

    # -- selection -----------------------------------------------------------------
    def lists(self, lnum: int) -> list[TrBList]:
        """The lists a request names: all of them (TRANYLIST) in slot order, or one."""
        if lnum == TRANYLIST:
            return list(self.hash)
        lst = self.hash.find(lnum)
        return [lst] if lst is not None else []

    def select(self, lnum: int, pid: int) -> list[tuple[TrBList, TrBuffer]]:
        """The traces of list *lnum* and *pid*, in the order LAM sends them."""
        return [(lst, b) for lst in self.lists(lnum) for b in lst.bufs
                if pid == TRANYPID or b.pid == pid]

    def remove(self, lst: TrBList, b: TrBuffer) -> None:
        lst.bufs.remove(b)
        self.totalspace -= b.length

    # -- TRQSTORE --------------------------------------------------------------------
    def store(self, lnum: int, pid: int, data: bytes) -> bool:
        """``trqstore``: keep *data* in list *lnum*; False (logged) if dropped."""
        if not data:
            return False
        if lnum == TRANYLIST:
            self.badlog.warn("anylist", "traced: a store into list %d (TRANYLIST) from pid %d "
                             "refused (LAM's traced panics)", lnum, pid)
            return False
        if len(data) > self.space_limit:
            return self._drop(lnum, pid, len(data), "larger than the limit")
        lst = self.hash.find(lnum)
        if lst is None:
            if len(self.hash) >= self.max_lists:
                return self._drop(lnum, pid, len(data), f"{self.max_lists} lists already")
            lst = TrBList(lnum)
            if not self.hash.insert(lst):
                if self.totalspace >= TRMAXSPACE:  # LAM: no new list when full
                    return self._drop(lnum, pid, len(data),
                                      "hash table full and trace space used up")
                self.hash.expand(self.hash.size + TRHASHSIZE)
                self.hash.insert(lst)
        # LAM: once the space is used up, the oldest trace of a list goes
        if self.totalspace >= TRMAXSPACE and lst.bufs and lnum >= 0:
            self.remove(lst, lst.bufs[0])
        # beyond LAM: never past the hard limit
        while self.totalspace + len(data) > self.space_limit and lst.bufs and lnum >= 0:
            self.remove(lst, lst.bufs[0])
        if self.totalspace + len(data) > self.space_limit:
            return self._drop(lnum, pid, len(data), "no older traces of that list to drop")
        lst.bufs.append(TrBuffer(pid, data))
        self.totalspace += len(data)
        return True

    def _drop(self, lnum: int, pid: int, n: int, why: str) -> bool:
        self.dropped += 1
        self.badlog.warn("full", "traced: trace space limit hit (%d of %d bytes kept): dropped "
                         "%d bytes for list %d from pid %d: %s (%d dropped so far)",
                         self.totalspace, self.space_limit, n, lnum, pid, why, self.dropped)
        return False

    # -- TRQSWEEP, TRQUDIE, TRQWIPE -------------------------------------------------------
    def sweep(self, lnum: int, pid: int) -> int:
        """``trqsweep``: drop the selected traces; how many went."""
        sel = self.select(lnum, pid)
        for lst, b in sel:
            self.remove(lst, b)
        return len(sel)

    def udie(self, pid: int) -> int:
        """``trqudie``: every trace of *pid*, in every list."""
        return self.sweep(TRANYLIST, pid)

    def wipe(self) -> None:
        """``trqwipe``: nothing left; the table keeps its size, with an
        empty name list in its place."""
        self.hash = TrHash(self.hash.size)
        self.names = TrBList(TRNAMELIST)
        self.hash.insert(self.names)
        self.totalspace = 0

    # -- names ------------------------------------------------------------------------
    def _find_name(self, body: bytes) -> TrBuffer | None:
        name = _cstr(body)
        return next((b for b in self.names.bufs if _cstr(b.data) == name), None)

    def namepub(self, pid: int, body: bytes) -> int:
        """``trqnamepub``: the reply's errno (0, EPUBLISHED; ENOMEM past the limit)."""
        if self._find_name(body) is not None:
            return int(EPUBLISHED)
        if self.totalspace + len(body) > self.space_limit:
            self._drop(TRNAMELIST, pid, len(body), "publish refused (ENOMEM)")
            return errno.ENOMEM
        if self.hash.find(TRNAMELIST) is not self.names:  # never: wipe puts it back
            self.hash.insert(self.names)
        self.names.bufs.append(TrBuffer(pid, body))
        self.totalspace += len(body)
        return 0

    def namedel(self, body: bytes) -> int:
        """``trqnamedel``: 0 or ENOTPUBLISHED."""
        b = self._find_name(body)
        if b is None:
            return int(ENOTPUBLISHED)
        self.remove(self.names, b)
        return 0

    def nameget(self, body: bytes) -> tuple[int, bytes]:
        """``trqnameget``: (errno, the data with its NUL)."""
        b = self._find_name(body)
        if b is None:
            return int(ENOTPUBLISHED), b""
        rest = b.data.split(b"\0", 1)
        return 0, (_cstr(rest[1]) if len(rest) > 1 else b"") + b"\0"


class TraceDaemon:
    """traced's loop (``traced.c``): receive a request, serve it, reply."""

    def __init__(self, k: IProc) -> None:
        self.k = k
        cfg = k.config
        self.session: str | None = cfg.get("session")
        self.send_timeout = float(cfg.get("traced_send_timeout", SEND_TIMEOUT))
        self.store = TraceStore(int(cfg.get("traced_space_limit") or SPACE_LIMIT),
                                int(cfg.get("traced_max_lists") or MAX_LISTS))

    async def run(self) -> None:
        while True:
            msg = await nrecv(self.k, EVTRACED, 0, MAXNMSGLEN)
            if log.isEnabledFor(logging.DEBUG):  # the raw packet, as the stubs log it
                log.debug("traced: packet nmsg=%s body=%s", msg.head.pack().hex(),
                          msg.body.hex())
            if msg.head.flags & NMORE:
                await self.drop_long(msg)
                continue
            await self.request(msg)

    async def drop_long(self, msg: NetMsg) -> None:
        """A request longer than one packet: no client of traced sends one
        (``lam_rtrstore`` splits, names are at most MAXNMSGLEN) and its
        first ``nh_data`` word is the total length, not the trreq's: drain
        its packets and drop it."""
        total, n = msg.head.data[0], 1
        while msg.head.flags & NMORE:
            msg = await nrecv(self.k, EVTRACED, 0, MAXNMSGLEN)
            n += 1
        self.store.badlog.warn("long", "traced: a %d-packet request of %d bytes dropped "
                               "(traced's requests fit in one packet)", n, total)

    async def request(self, msg: NetMsg) -> None:
        from ..jobs.wire import TrReply, TrReq
        q = TrReq.from_data(msg.head.data)
        st = self.store
        body = msg.body
        log.debug("traced: %s list=%d pid=%d length=%d body=%d from event %d",
                  REQUEST_NAMES.get(q.req, q.req), q.lnum, q.pid, q.length, len(body),
                  q.src_event)
        if q.req == TRQSTORE:
            if q.length <= 0:
                return
            if q.length != len(body):
                st.badlog.warn("length", "traced: store of %d bytes announced, %d arrived "
                               "(list %d, pid %d); keeping what arrived", q.length, len(body),
                               q.lnum, q.pid)
            st.store(q.lnum, q.pid, body[:q.length])
        elif q.req in (TRQGET, TRQFORGET):
            await self.trqget(q)
        elif q.req == TRQSWEEP:
            st.sweep(q.lnum, q.pid)
        elif q.req == TRQUDIE:
            st.udie(q.pid)
        elif q.req == TRQWIPE:
            st.wipe()
        elif q.req == TRQNAMEPUB:
            await self.trsendr(q, TrReply(st.namepub(q.pid, body[:max(q.length, 0)] or body)))
        elif q.req == TRQNAMEDEL:
            await self.trsendr(q, TrReply(st.namedel(body)))
        elif q.req == TRQNAMEGET:
            err, data = st.nameget(body)
            await self.trsendr(q, TrReply(err, len(data)), data)
        elif q.req == TRQCLEANOBJS:
            self.cleanobjs()
        else:
            st.badlog.warn("badreq", "traced: unknown request %d (0..%d) from event %d node %d "
                           "refused", q.req, TRQMAX - 1, q.src_event, q.src_node)

    async def trqget(self, q: TrReq) -> None:
        """``trqget``: the total, then each selected trace; FORGET drops each sent one."""
        from ..jobs.wire import TrReply
        sel = self.store.select(q.lnum, q.pid)
        reply = TrReply(0, sum(b.length for _, b in sel))
        if not await self.trsendr(q, reply):
            return
        for lst, b in sel:
            if not await self.trsendr(q, reply, b.data):
                return  # the rest stays (LAM's would be gone)
            if q.req == TRQFORGET and b in lst.bufs:
                self.store.remove(lst, b)

    def cleanobjs(self) -> None:
        from ..jobs.kenyad import cleanup_objects
        cleanup_objects(self.session)

    async def trsendr(self, q: TrReq, r: TrReply, body: bytes = b"") -> bool:
        """``trsendr``: one reply (``struct trreply`` in nh_data) through
        bufferd, given ``send_timeout``; False (logged) if it did not leave."""
        st = self.store
        if q.src_node not in (LOCAL, my_nodeid(self.k)):
            st.badlog.warn("node", "traced: no reply to node %d event %d: this universe "
                           "has only node %d", q.src_node, q.src_event, my_nodeid(self.k))
            return False
        head = NMsg(dl_event=EVBUFFERD, node=q.src_node, event=q.src_event, type=0,
                    flags=0, length=len(body), data=data_words(*r.data()))
        k = self.k
        t = k.timer(self.send_timeout)
        try:
            got = await k.wait(dsend(k, head, body, node_id=my_nodeid(self.k)), t)
        finally:
            t.cancel()
        if isinstance(got, Event) or got.reply:
            st.badlog.warn("send", "traced: a reply to event %d could not leave%s; dropped",
                           q.src_event, f" in {self.send_timeout:g} s" if isinstance(got, Event)
                           else f" ({got.reply})")
            return False
        return True


async def traced(k: IProc) -> None:
    """traced's main: serve EVTRACED forever."""
    await TraceDaemon(k).run()


__all__ = ["traced", "TraceDaemon", "TraceStore", "TrHash", "TrBList", "TrBuffer",
           "TRHASHSIZE", "SPACE_LIMIT", "MAX_LISTS", "SEND_TIMEOUT"]
