"""Rendezvous: matching, the blocked list, send/receive, state, doom and
transfer (LAM's ``kinner.c`` and the macros of ``kreq.h``).

The ``ksync_*`` functions are LAM's matching macros: a receive and a send
synchronize when their events are equal and their types share a bit (or
either is 0), or, for a process blocked with KSYNCSQL, by the SQL-like
wildcard rules. :class:`BlockedList` holds the blocked processes in LAM's
order with an index by state and event, so finding a partner never scans them all.
:class:`KInner` is the part of the kernel that uses them: ``kqsync``,
``kqstate``/``ksnap``, ``kqdoom`` and ``transfer``.

What differs from C on purpose: a KPROBE receive that meets an already
blocked sender answers the probe without consuming the message (the C
kernel would start a transfer that the probing client never reads).
"""

from __future__ import annotations

import bisect
import errno

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

from .. import lazylog
from .._static import trait
from .constants import (
    ENOTPROCESS, ESERVICE, KEVENTHI, KMSG2, KNMSG, KPROBE, KQRECV, KQSEND, KQSR, KSREADY, KSRECV,
    KSSEND, KSYNCSQL, KTRACE, KTRY, KTYPEHI, KTYPELO,
)
from .kactions import CollectBody, Reply, SendBody, Transfer
from .kbase import KBase
from .kiproc import Received
from .wire import NMSG_SIZE, KMsg, KReply, KReq, NMsg

if TYPE_CHECKING:  # pragma: no cover
    from .kouter import KProc

log = lazylog.getLogger("lamd.kernel")

#: ``kq_fyi[0]`` of a doom that names its target by index (see ``_kqdoom``): "lamd".
DOOM_INDEX_MAGIC = 0x6C616D64


def ksync_type(a: int, b: int) -> bool:
    """``ksync_type``: 0 matches anything, else the types must share a bit."""
    return a == 0 or b == 0 or (a & b) != 0


def ksync_type_sql(a: int, b: int) -> bool:
    """``ksync_type_sql``: each 16-bit half equal, or all-ones as a wildcard."""
    a &= 0xFFFFFFFF
    b &= 0xFFFFFFFF
    hi = ((a & KTYPEHI) == KTYPEHI or (b & KTYPEHI) == KTYPEHI
          or (a & KTYPEHI) == (b & KTYPEHI))
    lo = ((a & KTYPELO) == KTYPELO or (b & KTYPELO) == KTYPELO
          or (a & KTYPELO) == (b & KTYPELO))
    return hi and lo


def ksync_event_sql(a: int, b: int) -> bool:
    """``ksync_event_sql``: low bits equal; the KEVENTHI bits equal or wild."""
    if (a & ~KEVENTHI) != (b & ~KEVENTHI):
        return False
    return ((a & KEVENTHI) == KEVENTHI or (b & KEVENTHI) == KEVENTHI
            or (a & KEVENTHI) == (b & KEVENTHI))


def ksync_cmp(blocked: KProc, msg: KMsg) -> bool:
    """``ksync_cmp``: does *msg* meet the blocked process's message?

    The blocked process's own KSYNCSQL flag chooses the rules, as in LAM.
    """
    bm = blocked.msg
    if bm.flags & KSYNCSQL:
        return ksync_event_sql(bm.event, msg.event) and ksync_type_sql(bm.type, msg.type)
    return bm.event == msg.event and ksync_type(bm.type, msg.type)


class BlockedList:
    """LAM's blocked list (``pblock``), indexed so no request walks all of it.

    LAM keeps one list ordered by priority, then by time of blocking, and a
    request takes the first process in it that synchronizes. Here each
    process carries that position as ``bkey`` = (-priority, arrival), and the
    list is kept as one sorted list per state and event for the exact-match
    rules, plus one per state for processes blocked with KSYNCSQL (whose
    events match by pattern). Finding a partner looks at one event's list
    and the SQL list, in LAM's order.
    """

    def __init__(self) -> None:
        #: state -> event -> its processes (no tuple key made and hashed per lookup)
        self.by_event: dict[int, dict[int, list[KProc]]] = {KSSEND: {}, KSRECV: {}}
        self.sql: dict[int, list[KProc]] = {KSSEND: [], KSRECV: []}
        self.count = 0

    def find(self, syncstate: int, msg: KMsg) -> KProc | None:
        """The first blocked process in LAM order that *msg* synchronizes with."""
        best = None
        lst = self.by_event[syncstate].get(msg.event)
        if lst:
            t = msg.type
            for p in lst:
                pt = p.msg.type
                if pt == 0 or t == 0 or (pt & t):
                    best = p
                    break
        sql = self.sql[syncstate]
        if sql:
            for p in sql:
                if best is not None and p.bkey > best.bkey:
                    break
                if ksync_cmp(p, msg):
                    best = p
                    break
        return best

    def insert(self, p: KProc) -> None:
        """``kpinsert(&pblock, p)``: *p* (state and bkey set) joins the list."""
        if p.msg.flags & KSYNCSQL:
            lst = self.sql[p.state]
        else:
            events = self.by_event[p.state]
            got = events.get(p.msg.event)
            if got is None:
                events[p.msg.event] = [p]
                self.count += 1
                return
            lst = got
        if not lst or lst[-1].bkey < p.bkey:
            lst.append(p)
        else:
            bisect.insort(lst, p, key=_bkey)
        self.count += 1

    def delete(self, p: KProc) -> None:
        """``kpdelete(&pblock, p)``: *p* (state and msg unchanged) leaves it."""
        events: dict[int, list[KProc]] | None = None
        if p.msg.flags & KSYNCSQL:
            lst = self.sql[p.state]
        else:
            events = self.by_event[p.state]
            lst = events.get(p.msg.event) or []
        if lst and lst[0] is p:
            del lst[0]  # the first blocked is the first met, mostly
            self.count -= 1
        else:
            i = bisect.bisect_left(lst, p.bkey, key=_bkey)
            if i < len(lst) and lst[i] is p:
                del lst[i]
                self.count -= 1
            else:  # pragma: no cover - defensive
                try:
                    lst.remove(p)
                    self.count -= 1
                except ValueError:
                    pass
        if events is not None and not lst:
            events.pop(p.msg.event, None)

    def members(self) -> list[KProc]:
        return ([p for events in self.by_event.values() for lst in events.values() for p in lst]
                + [p for lst in self.sql.values() for p in lst])

    def check(self) -> None:
        """Assert the index is consistent (tests, fuzzing)."""
        members = self.members()
        assert len(members) == len(set(map(id, members))) == self.count, "blocked index"
        for state, events in self.by_event.items():
            for event, lst in events.items():
                assert lst, "empty list kept"
                for p in lst:
                    assert (p.state == state and p.msg.event == event
                            and not p.msg.flags & KSYNCSQL)
                assert [p.bkey for p in lst] == sorted(p.bkey for p in lst), "order"
        for state, lst in self.sql.items():
            for p in lst:
                assert p.state == state and p.msg.flags & KSYNCSQL
            assert [p.bkey for p in lst] == sorted(p.bkey for p in lst), "order"


@trait
class KInner(KBase):
    """The rendezvous half of :class:`~lamd.kernel.Kernel` (``kinner.c``):
    every method here works on the process table and the blocked list the
    kernel owns, and appends what must happen to ``self._out``."""

    def ksync(self, msg: KMsg, req: int) -> bool:
        """``ksync``: would *msg* (a KQSEND or KQRECV) meet a blocked process?"""
        p = self.pblock.find(KSSEND if req == KQRECV else KSRECV, msg)
        return p is not None and not (p.msg.flags & KPROBE)

    def kreceiver(self, msg: KMsg) -> int:
        """The pid of the process a send of *msg* would meet now, -1 if none
        (not in LAM: :mod:`lamd.iprocs.doforward`)."""
        p = self.pblock.find(KSRECV, msg)
        return p.pid if p is not None and not (p.msg.flags & KPROBE) else -1

    def _bad_lengths(self, req: KReq) -> str:
        for m in (req.msg, req.msg2) if req.req == KQSR else (req.msg,):
            if m.length < 0 or m.length > self.max_msg_len:
                return f"message length {m.length} outside 0..{self.max_msg_len}"
        return ""

    def _kqsync(self, pclient: KProc, req: KReq) -> None:
        """``kqsync``: a send, receive or send-receive meets its partner or blocks."""
        code = req.req
        if pclient.signal:
            sig, pclient.signal = pclient.signal, 0
            self._reply(pclient, KReply(reply=errno.EINTR, signal=sig))
            return
        msg = req.msg
        syncstate = KSSEND if code == KQRECV else KSRECV
        p = self.pblock.find(syncstate, msg)
        pclient.msg = msg  # each request is decoded afresh: the kernel may keep its parts

        if p is not None and p.msg.flags & KPROBE:
            # the blocked process only probes: tell it what is there, wake it
            rep = KReply(event=msg.event, type=msg.type, length=min(msg.length, p.msg.length))
            if p.msg.flags & KTRACE:
                rep.blktime = self.clock() - p.blktime
            self._unblock(p)
            p.state = KSREADY
            self._reply(p, rep)
            p = None
        elif p is not None and code == KQRECV and msg.flags & KPROBE:
            # a probe meeting a blocked sender: answer it, leave the sender be
            pm = p.msg
            self._reply(pclient, KReply(event=pm.event, type=pm.type,
                                        length=min(pm.length, msg.length)))
            return

        if p is not None:
            pclient.blktime = 0.0
            pmsg = p.msg
            t = p.blktime
            if pmsg.flags & KTRACE:
                p.blktime = 0.0 if p.flags & KMSG2 else self.clock() - p.blktime
            else:
                p.blktime = 0.0
            self._unblock(p)
            if code == KQRECV:
                self._transfer(p, pmsg, pclient, pclient.msg)
            else:
                self._transfer(pclient, pclient.msg, p, pmsg)
            if p.flags & KMSG2:
                # a blocked send-receive: its receive half keeps its place
                p.flags &= ~KMSG2
                p.msg, p.msg2 = p.msg2, KMsg()
                p.blktime = t
                self._block(p, KSRECV, keep_place=True)
            else:
                p.state = KSREADY
            if code == KQSR:
                pclient.fyi = tuple(req.fyi)
                m2 = req.msg2
                pclient.msg = m2
                if m2.flags & KTRACE:
                    pclient.blktime = self.clock()
                self._block(pclient, KSRECV)
        elif msg.flags & KTRY:
            if (code == KQSEND and self._collects and not pclient.internal
                    and self._taking(msg)):
                # LAM's kernel reads a body within the request that sent it,
                # so a KTRY send never finds an internal receiver (bufferd)
                # between two messages; ours reads bodies as they come:
                # the send waits for that receiver's next receive, which
                # takes it or refuses it (_settle_tries)
                pclient.fyi = tuple(req.fyi)
                self._block(pclient, KSSEND)
                if pclient not in self._tries:
                    self._tries.append(pclient)
            else:
                self._reply(pclient, KReply(reply=errno.EWOULDBLOCK))
        else:
            pclient.fyi = tuple(req.fyi)
            if code == KQSR:
                pclient.flags |= KMSG2
                m2 = req.msg2
                pclient.msg2 = m2
            if msg.flags & KTRACE:
                pclient.blktime = self.clock()
            self._block(pclient, KSRECV if code == KQRECV else KSSEND)

    def _kqstate(self, pclient: KProc, req: KReq) -> None:
        self._reply(pclient, self.ksnap(req.pid))

    def ksnap(self, pid: int) -> KReply:
        """``ksnap``: the state of the process with *pid*."""
        ps = self.kpfind(pid)
        if ps is None:
            return KReply(reply=ENOTPROCESS)
        m = ps.msg
        return KReply(state=ps.state, priority=ps.priority, sigs=ps.signal,
                      event=m.event, type=m.type, length=m.length, fyi=ps.fyi)

    def _kqdoom(self, pclient: KProc, req: KReq) -> None:
        """``kqdoom``: deliver LAM signal bits to a process.

        One extension, for processes with several connections (the service
        host, ``lamd.iprocs.host``): a doom of the caller's own pid whose
        ``kq_fyi`` starts with :data:`DOOM_INDEX_MAGIC` names the target by
        process index in ``kq_fyi[1]``, so one of its blocked connections can
        be interrupted (EINTR) without touching the others. The target must
        belong to the same pid; stock LAM never sends this (a doom of one's
        own pid only echoes the signal back).
        """
        pdoom = self.kpfind(req.pid)
        if req.pid == pclient.pid and req.fyi[0] == DOOM_INDEX_MAGIC:
            target = self.procs.get(req.fyi[1])
            pdoom = target if (target is not None and target.pid == pclient.pid
                               and not target.internal) else None
        rep = KReply()
        if pdoom is None:
            rep.reply = ENOTPROCESS
        elif pdoom.internal:
            rep.reply = ESERVICE
        elif pdoom is pclient:
            rep.signal = req.signal
        elif pdoom.state == KSREADY:
            pdoom.signal |= req.signal
            self._kpreempt(pdoom)
        else:
            wake = KReply(reply=errno.EINTR, signal=req.signal)
            if pdoom.msg.flags & KTRACE:
                pdoom.blktime = self.clock() - pdoom.blktime
                wake.blktime = pdoom.blktime
            self._unblock(pdoom)
            pdoom.state = KSREADY
            pdoom.flags &= ~KMSG2
            self._reply(pdoom, wake)
        log.debug("kernel (kqdoom): pid=%d target=%d signal=%#x -> %d", pclient.pid,
                  req.pid, req.signal, rep.reply,
                  extra={"LAM_PID": pclient.pid, "LAM_REQUEST": "DOOM"})
        if pclient.internal:
            self._resume(pclient, rep)
        else:
            self._out.append(Reply(pclient.conn, rep))

    def _transfer(self, pfrom: KProc, smsg: KMsg, pto: KProc, rmsg: KMsg) -> None:
        """``transfer``: the rendezvous happened; move the body from *pfrom* to *pto*.

        *smsg*/*rmsg* are the sender's and receiver's message descriptors.
        """
        n = min(smsg.length, rmsg.length)
        s_hdr = NMSG_SIZE if smsg.flags & KNMSG else 0
        r_hdr = NMSG_SIZE if rmsg.flags & KNMSG else 0
        to_rep = KReply(type=smsg.type, length=n, blktime=pto.blktime)
        from_rep = KReply(length=n, blktime=pfrom.blktime)
        if pfrom.internal:
            # an internal sender learns who took its message (no LAM
            # counterpart: doforward tells a new dlo by it)
            from_rep.index = pto.pid
            hdr = pfrom.nmsg
            body = pfrom.body[:n]  # bytes, or a read-only view (IProc.try_send)
            if len(body) < n:
                body = bytes(body) + bytes(n - len(body))
            pfrom.body, pfrom.nmsg = b"", None
            self.stats.messages += 1
            self.stats.bytes += n
            if pto.internal:
                if r_hdr and hdr is None:
                    hdr = NMsg()
                self._resume(pto, Received(to_rep, bytes(body), hdr if (r_hdr or s_hdr) else None))
            else:
                self._out.append(Reply(pto.conn, to_rep))
                data = ((hdr or NMsg()).pack() + body) if r_hdr else bytes(body)
                if data:
                    self._out.append(SendBody(pto.conn, data))
            if pfrom.call != KQSR:  # a send-receive resumes after its receive half
                self._resume(pfrom, from_rep)
        elif pto.internal:
            self._out.append(Reply(pfrom.conn, from_rep))
            token = self._next_collect()
            self._collects[token] = (pto, pfrom, smsg)
            self._out.append(CollectBody(pfrom.conn, s_hdr + n, token))
            self._collect_started(pto, pfrom, token)
        else:
            self.stats.messages += 1
            self.stats.bytes += n
            self._out.append(Reply(pfrom.conn, from_rep))
            self._out.append(Reply(pto.conn, to_rep))
            skip = s_hdr if not r_hdr else 0
            pad = r_hdr if not s_hdr else 0
            length = n + (s_hdr if (s_hdr and r_hdr) else 0)
            if length or skip or pad:
                self._out.append(Transfer(pfrom.conn, pto.conn, length, skip, pad))

    def _taking(self, msg: KMsg) -> bool:
        """Is an internal process that *msg* would meet taking a body now
        (its receive met a client's send, the body not read yet: only an
        internal receiver has its bodies collected)?"""
        for pto, _pfrom, _smsg in self._collects.values():
            if ksync_cmp(pto, msg):
                return True
        return False

    def _settle_tries(self) -> None:
        """KTRY sends that waited for a body to be taken (``_kqsync``): one
        the receiver's next receive did not meet is refused now, as LAM
        refuses it (EWOULDBLOCK), unless a receiver is taking a body again."""
        keep: list[KProc] = []
        for p in self._tries:
            if (self.procs.get(p.index) is not p or p.state != KSSEND
                    or not p.msg.flags & KTRY):
                continue  # met its receiver (and maybe blocked again since), or gone
            if self._taking(p.msg):
                keep.append(p)
                continue
            self._unblock(p)
            p.state = KSREADY
            self._reply(p, KReply(reply=errno.EWOULDBLOCK))
        self._tries = keep

    def _block(self, p: KProc, state: int, keep_place: bool = False) -> None:
        """*p* blocks in *state*; a KQSR turning into its receive keeps its place."""
        if not keep_place:
            p.bkey = (-p.priority, next(self._seq))
        p.state = state
        self.pblock.insert(p)

    def _unblock(self, p: KProc) -> None:
        self.pblock.delete(p)

    # ------------------------------------------------------------------
    # replies, refusals, internal processes
    # ------------------------------------------------------------------
    def _reply(self, p: KProc, rep: KReply) -> None:
        if p.internal:
            self._resume(p, Received(rep) if p.call in (KQRECV, KQSR) else rep)
        else:
            self._out.append(Reply(p.conn, rep))



def _bkey(p: KProc) -> tuple[int, int]:
    return p.bkey
