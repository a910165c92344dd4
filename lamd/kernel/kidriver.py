"""Running internal processes inside the kernel (LAM's ``kiproc.c``: ``kboot``, ``kiproc``).

:class:`KIProcDriver` is the third part of :class:`~lamd.kernel.Kernel`: it
boots the internal processes of the boot table, resumes each coroutine
with the result of the request it made (or the event it waited for),
carries out what it asks next, and keeps its event sources. The API the
coroutines use (:class:`~lamd.kernel.kiproc.IProc`, its calls and events)
is :mod:`lamd.kernel.kiproc`; it stays interpreted, since the service host
(:mod:`lamd.iprocs.host`) serves the same coroutines outside the kernel.
"""

from __future__ import annotations

from collections import deque

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Iterable

from .. import lazylog
from .._static import trait
from .constants import (
    KIPROC, KMSG2, KNMSG, KQDOOM, KQRECV, KQSEND, KQSR, KQSTATE, KSRECV, KSREADY, KSSEND, KTRY,
)
from .kactions import Halt, Rearm, Resume, Unwatch, Watch as WatchAction
from .kbase import KBase
from .kiproc import (
    IPROC_PID_BASE, IPROC_TURN_BUDGET, ONE_SHOT, READABLE, WAIT_EVENT, WAIT_FLUSH, WAIT_HALT, Event,
    IProc, KBoot, KCall, Received, Watch, take_queued,
)
from .wire import NMSG_SIZE, KMsg, KReply, KReq, NMsg

if TYPE_CHECKING:  # pragma: no cover
    from .kiproc import TakeFn
    from .kouter import KProc

log = lazylog.getLogger("lamd.kernel")


class _Peek:
    """A run-queue entry: call the receiver's ``peek`` for body *token*."""

    token: int
    sender: KProc

    def __init__(self, token: int, sender: KProc) -> None:
        self.token = token
        self.sender = sender


@trait
class KIProcDriver(KBase):
    """The part of :class:`~lamd.kernel.Kernel` that runs internal processes
    (``kboot``, ``kiproc``): coroutines resumed with request results, bodies
    collected from clients, and events of their watches."""

    _watch_seq: int
    _watches: dict[int, Watch]
    _collect_seq: int
    _sync: KProc | None  # the process in a ksend_now
    _sync_result: Any  # what its send resumed it with
    _peeked: dict[int, Any]  # what peek said, by body token

    def _init_iprocs(self) -> None:
        self._runq = deque()
        self._watch_seq = 0
        self._watches = {}
        self._collect_seq = 0
        self._collects = {}
        self._tries = []
        self._sync = None
        self._sync_result = None
        self._peeked = {}

    # ------------------------------------------------------------------
    # entry points (the I/O layer calls these)
    # ------------------------------------------------------------------
    def boot(self, table: Iterable[KBoot], config: dict[str, Any] | None = None) -> list[Any]:
        """Boot internal processes (LAM's ``kboot``): pid 100000 + row."""
        for pos, kb in enumerate(table):
            row = pos if kb.row is None else kb.row
            p = self._alloc(IPROC_PID_BASE + row, kb.priority, None)
            p.flags = KIPROC
            h = IProc(kb.name, self, p, dict(config or {}))  # type: ignore[arg-type]
            p.iproc = h
            p.coro = kb.main(h)
            self._runq.append((p, None))
        self._run_iprocs()
        return self._take()

    def event(self, watch_id: int, value: Any = None) -> list[Any]:
        """A watch the I/O layer carries out fired (a timer, a readable fd, a
        child's exit, a signal)."""
        w = self._watches.get(watch_id)
        if w is not None and w.active:
            if w.kind in ONE_SHOT:
                self._forget(w)
            self._deliver(w.proc, Event(w, value))
        self._run_iprocs()
        return self._take()

    def wake(self) -> list[Any]:
        """Carry on with internal processes left runnable (after :class:`Resume`)."""
        self._run_iprocs()
        return self._take()

    def body_arrived(self, token: int, data: bytes) -> list[Any]:
        """The body a :class:`CollectBody` asked for has been read."""
        entry = self._collects.pop(token, None)
        peeked = self._peeked.pop(token, None) if self._peeked else None
        if entry is not None:
            pto, pfrom, smsg = entry
            hdr = None
            if smsg.flags & KNMSG:
                hdr = NMsg.unpack(data)
            elif pto.msg.flags & KNMSG:
                hdr = NMsg()
            ip = pto.iproc
            take = ip.take if ip is not None else None
            if (take is not None and pto.call == KQRECV and pto.wanted is None
                    and pto.index in self.procs and pto.coro is not None):
                # taken at once, the coroutine left waiting in its receive
                if self._take_body(pto, take, hdr, data, smsg, peeked):
                    self._run_iprocs()
                    return self._take()
            if smsg.flags & KNMSG:
                data = data[NMSG_SIZE:]
            rep = KReply(type=smsg.type, length=len(data), blktime=pto.blktime)
            self.stats.messages += 1
            self.stats.bytes += len(data)
            self._resume(pto, Received(rep, bytes(data), hdr))
        self._run_iprocs()
        return self._take()

    def _take_body(self, pto: KProc, take: TakeFn, hdr: NMsg | None, data: bytes,
                   smsg: KMsg, peeked: Any) -> bool:
        """Hand a client's message to *pto*'s ``take``: True if taken (or
        the process failed on it and is gone), False to resume the coroutine."""
        skip = NMSG_SIZE if smsg.flags & KNMSG else 0
        try:
            nxt = take(hdr, memoryview(data)[skip:], smsg.type, peeked)
        except Exception:  # an internal process must never take the kernel down
            log.exception("internal process %s (pid %d) failed on a message; detached",
                          pto.iproc.name if pto.iproc else "?", pto.pid)
            pto.coro = None
            self._knuke(pto)
            return True
        if nxt is None:
            return False
        self.stats.messages += 1
        self.stats.bytes += len(data) - skip
        if pto.index in self.procs and pto.call == KQRECV and pto.state == KSREADY:
            self._kqsync(pto, KReq(req=KQRECV, msg=nxt, index=pto.index))
        return True

    def end_iprocs(self) -> list[Any]:
        """The daemon stops: end every internal process, so that what each
        made (a socket, files in the session directory, descriptors) goes
        with it (its coroutine is closed: its ``finally`` blocks run)."""
        for p in [p for p in self.procs.values() if p.internal]:
            try:
                self._knuke(p)
            except Exception:  # a finally that awaits: nothing more to do for it
                log.exception("internal process %s (pid %d) did not end cleanly",
                              p.iproc.name if p.iproc else "?", p.pid)
        return self._take()

    def body_failed(self, token: int) -> list[Any]:
        """The sender of a :class:`CollectBody` vanished before finishing."""
        self._collect_lost(token)
        self._run_iprocs()
        return self._take()

    # ------------------------------------------------------------------
    # watches
    # ------------------------------------------------------------------
    def watch(self, p: KProc, kind: str, arg: Any) -> Watch:
        """A new event source for internal process *p* (see :class:`IProc`)."""
        self._watch_seq += 1
        w = Watch(self._watch_seq, kind, arg, p)
        self._watches[w.id] = w
        p.watches[w.id] = w
        self._out.append(WatchAction(w.id, kind, arg))
        return w

    def unwatch(self, w: Watch) -> None:
        """Cancel *w*: the I/O layer stops it, its queued events go (also
        those of a one-shot that has fired, and so is already inactive)."""
        if w.active:
            self._forget(w)
            self._out.append(Unwatch(w.id))
        mb = w.proc.mailbox
        if mb:
            w.proc.mailbox = deque(ev for ev in mb if ev.watch is not w)

    def _forget(self, w: Watch) -> None:
        w.active = False
        self._watches.pop(w.id, None)
        w.proc.watches.pop(w.id, None)

    def _end_watches(self, p: KProc) -> None:
        """A process ends: every watch it had ends with it."""
        for w in list(p.watches.values()):
            self.unwatch(w)
        p.mailbox.clear()

    def _deliver(self, p: KProc, ev: Event) -> None:
        """Hand *ev* to *p* if it waits for it, else keep it in its mailbox."""
        if p.coro is None:
            return
        wanted = p.wanted
        if wanted is not None and (not wanted or ev.watch in wanted):
            if p.call == WAIT_EVENT:
                self._take_event(p, ev)
                return
            if p.state in (KSSEND, KSRECV):
                # interrupt the blocked request, as kqdoom's EINTR path does
                self._unblock(p)
                p.state = KSREADY
                p.flags &= ~KMSG2
                p.body, p.nmsg = b"", None
                self._take_event(p, ev)
                return
        p.mailbox.append(ev)

    def _take_event(self, p: KProc, ev: Event) -> None:
        p.wanted = None
        p.call = -1
        if ev.watch.kind == READABLE and ev.watch.active:
            self._out.append(Rearm(ev.watch.id))  # taken: report the next readiness
        self._resume(p, ev)

    def _queued_event(self, p: KProc, watches: tuple[Watch, ...]) -> Event | None:
        return take_queued(p.mailbox, watches)

    # ------------------------------------------------------------------
    # running the coroutines
    # ------------------------------------------------------------------
    def _resume(self, p: KProc, value: Any) -> None:
        if p is self._sync:
            self._sync_result = value  # the outcome of a ksend_now: no turn needed
            return
        self._runq.append((p, value))

    def ksend_now(self, p: KProc, req: KReq, body: bytes | memoryview,
                  nmsg: NMsg | None) -> KReply:
        """A KTRY send by internal process *p*, completed before returning
        (:meth:`IProc.try_send`): a KTRY send never blocks, so its outcome (a
        transfer to a blocked receiver, or EWOULDBLOCK) is known at once."""
        if not req.msg.flags & KTRY or self._sync is not None:
            raise ValueError("ksend_now: only KTRY sends, one at a time")
        bad = self._bad_lengths(req)
        if bad:
            raise ValueError(bad)
        req.index = p.index
        call, msg = p.call, p.msg
        self._sync = p
        self._sync_result = None
        p.call = KQSEND
        p.body, p.nmsg = body, nmsg
        try:
            self._kqsync(p, req)
        finally:
            self._sync = None
            p.call, p.msg = call, msg
            p.body, p.nmsg = b"", None
        return self._sync_reply()

    def _sync_reply(self) -> KReply:
        """What a ksend_now's send resumed its process with (then forgotten).
        Read here, not in ksend_now: there mypyc would take ``_sync_result``
        for the None assigned to it before the send and check it is None."""
        res = self._sync_result
        self._sync_result = None
        if isinstance(res, Received):
            return res.reply
        if isinstance(res, KReply):
            return res
        raise AssertionError(f"ksend_now: the send ended with {res!r}")

    def _run_iprocs(self) -> None:
        """Run internal processes until none has a completed request pending."""
        runq = self._runq
        budget = IPROC_TURN_BUDGET
        while runq:
            budget -= 1
            if budget < 0:
                # an internal process that never blocks (a KTRY loop): let the
                # I/O layer serve clients, then carry on
                self._out.append(Resume())
                return
            p, value = runq.popleft()
            if p.coro is None or p.index not in self.procs:
                continue
            if type(value) is _Peek:
                self._peek(p, value)
                continue
            try:
                call = p.coro.send(value)
            except StopIteration:
                log.info("internal process %s (pid %d) ended", p.iproc.name if p.iproc else "?", p.pid)
                self._knuke(p)
                continue
            except Exception:  # an internal process must never take the kernel down
                log.exception("internal process %s (pid %d) failed; detached",
                              p.iproc.name if p.iproc else "?", p.pid)
                p.coro = None
                self._knuke(p)
                continue
            self._iproc_call(p, call)
        if self._tries:
            self._settle_tries()

    def _iproc_call(self, p: KProc, call: KCall) -> None:
        kind = call.kind
        if kind == WAIT_EVENT or call.interruptible:
            ev = self._queued_event(p, call.watches)
            if ev is not None:
                self._take_event(p, ev)
                return
            p.wanted = call.watches
            if kind == WAIT_EVENT:
                p.call = WAIT_EVENT
                return
        else:
            p.wanted = None
        if kind == WAIT_FLUSH:   # a send here is the kernel's own act: nothing waits
            self._resume(p, None)
            return
        if kind == WAIT_HALT:
            self._out.append(Halt(call.arg, f"halt requested by {p.iproc.name if p.iproc else p.pid}"))
            return
        req = call.req
        if req is None:
            self._resume(p, ValueError(f"unknown internal call {kind!r}"))
            return
        req.index = p.index
        p.call = kind
        if kind in (KQSEND, KQSR):
            p.body, p.nmsg = call.body, call.nmsg
        if kind == KQSTATE:
            p.wanted = None
            self._resume(p, self.ksnap(req.pid))
        elif kind == KQDOOM:
            p.wanted = None
            self._kqdoom(p, req)
        elif kind in (KQSEND, KQRECV, KQSR):
            bad = self._bad_lengths(req)
            if bad:
                p.wanted = None
                self._resume(p, ValueError(bad))
            else:
                self._kqsync(p, req)
                if p.state == KSREADY:
                    p.wanted = None  # it did not block: nothing left to interrupt
        else:
            p.wanted = None
            self._resume(p, ValueError(f"internal processes cannot make request {kind}"))

    # ------------------------------------------------------------------
    # bodies between clients and internal processes
    # ------------------------------------------------------------------
    def _next_collect(self) -> int:
        self._collect_seq += 1
        return self._collect_seq

    def _collect_started(self, pto: KProc, pfrom: KProc, token: int) -> None:
        """A client's send met internal receiver *pto*, its body to be read
        (*token*): a ``peek`` sees it once the send is done with (after
        ``kqsync``: a send-receive's receive half is blocked by then)."""
        ip = pto.iproc
        if ip is not None and ip.peek is not None and ip.take is not None:
            self._runq.append((pto, _Peek(token, pfrom)))

    def _peek(self, p: KProc, pk: _Peek) -> None:
        entry = self._collects.get(pk.token)
        sender = pk.sender
        ip = p.iproc
        if entry is None or ip is None or sender.state != KSRECV or sender.index not in self.procs \
                or p.call != KQRECV:
            return
        peek = ip.peek
        if peek is None:
            return
        try:
            self._peeked[pk.token] = peek(entry[2], sender.msg, sender.pid)
        except Exception:  # an internal process must never take the kernel down
            log.exception("internal process %s (pid %d) failed in peek", ip.name, p.pid)

    def _collect_lost(self, token: int) -> None:
        """A body for an internal receiver never came: it receives again,
        unharmed. Its receive is made anew, not only blocked again: a sender
        that blocked on its event while it waited for the lost body meets it
        now (bufferd stalled every later send of the session otherwise)."""
        self._peeked.pop(token, None)
        entry = self._collects.pop(token, None)
        if entry is None:
            return
        pto = entry[0]
        if pto.index in self.procs and pto.state == KSREADY:
            # an interruptible receive whose event fired meanwhile ends with it
            ev = self._queued_event(pto, pto.wanted) if pto.wanted is not None else None
            if ev is not None:
                self._take_event(pto, ev)
            else:
                self._kqsync(pto, KReq(req=KQRECV, index=pto.index, pid=pto.pid, msg=pto.msg))
                if pto.state == KSREADY:
                    pto.wanted = None  # it met a sender: nothing left to interrupt

    def _take(self) -> list[Any]:
        out, self._out = self._out, []
        return out
