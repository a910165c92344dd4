"""Internal processes and their wait API (LAM's ``otb/sys/lamd/kiproc.c``).

In the C lamd, internal processes (router, bufferd, echod, ...) are state
machines booted by ``kboot()`` that queue the same kernel requests an
external client writes, and wait on descriptors and timeouts through
``kio_intr()``/``kio_to()``. Here each one is an ``async def`` function
taking an :class:`IProc` handle; every ``await`` on it issues one kernel
request or waits for events, and the kernel resumes the coroutine when that
completes. No asyncio is involved: the kernel drives the coroutines itself
(:class:`~lamd.kernel.kidriver.KIProcDriver`), so internal processes are as deterministic as the
kernel and are tested without sockets.

An internal process looks like this::

    async def echod(k: IProc) -> None:
        while True:
            got = await k.recv(EVECHOD, 0, MAXNMSGLEN, KNMSG)
            ...
            await k.send(reply_event, 0, got.body, KNMSG, nmsg=reply_header)

The wait API: a process asks for event sources, each a :class:`Watch` it
can cancel, and waits on any set of them, alone or together with a kernel
request:

* ``k.timer(seconds)``: fires once (LAM's ``kio_to``);
* ``k.watch_readable(fd)``: fires each time *fd* is readable, until
  cancelled (LAM's ``kio_intr``); a readiness not yet taken is not repeated;
* ``k.watch_child(pid)``: fires once when *pid* exits (a pidfd), with its
  :class:`ChildExit` status when it is the daemon's child;
* ``k.watch_signal(signo)``: fires for each delivery of a signal other than
  the daemon's stop signals;
* ``await k.next_event(*watches)``: the next :class:`Event` of those watches
  (of any, without arguments); events that fire while the process is busy
  are kept for it in order, never lost;
* ``await k.wait(k.recv(...), *watches)``: a kernel request that an event
  may interrupt: it returns the request's result, or the :class:`Event`, in
  which case the request was cancelled as ``kqdoom`` interrupts a blocked
  process (taken off the blocked list; nothing was transferred).

Three hooks make a process that only relays packets (bufferd) cost no
coroutine turn per message, as LAM's C internal processes are plain
functions called per message:

* ``k.try_send(...)``: a KTRY send completed at once (LAM's ``dtry_send``):
  the message is delivered if a receiver is blocked on its event, else the
  reply says EWOULDBLOCK; it never blocks, so it needs no ``await``;
* ``k.take``: a function the kernel calls with a message a client sent to
  the process's plain receive (``take(head, body, ktype, peeked)``, *body*
  a read-only view of the bytes read), instead of resuming the coroutine.
  It returns the :class:`~lamd.kernel.wire.KMsg` of the receive to wait in
  next (the coroutine stays suspended in its ``recv``), or None to have the
  coroutine resumed with the message as usual;
* ``k.peek``: with ``take``, a function the kernel calls the moment a
  client's send-receive has met that receive, before its body is read:
  ``peek(smsg, rmsg, pid)`` with the send half's and the receive half's
  descriptors (the client now waits in the receive half). What it returns
  is handed to ``take`` as *peeked* when the body has been read (None
  otherwise). bufferd uses it to answer an ``nrecv`` one round trip early.

Every watch of a process is cancelled when the process ends. Message bodies
are Python bytes; for KNMSG messages the network header is an
:class:`~lamd.kernel.wire.NMsg` passed (and received) beside the body, as the
C kernel moves ``struct nmsg`` plus ``nh_msg`` for an internal process.
"""

from __future__ import annotations

import _signal  # type: ignore[import]  # the C module: signal's makes enums (issue 13)
from collections import deque
from .._dataclasses import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Generator

from .. import lazylog
from .constants import KQDOOM, KQRECV, KQSEND, KQSR, KQSTATE, KTRY
from .wire import KMsg, KReply, KReq, NMsg

if TYPE_CHECKING:  # pragma: no cover
    from .kouter import Kernel, KProc

    #: what :attr:`IProc.take` is: (header, body, kernel type, what peek said) -> the
    #: receive to wait in next, or None to resume the coroutine with the message instead
    TakeFn = Callable[["NMsg | None", "bytes | memoryview", int, Any], "KMsg | None"]
    #: what :attr:`IProc.peek` is: (send half, receive half, pid) -> handed to take
    PeekFn = Callable[[KMsg, KMsg, int], Any]
    #: The type of an internal process body: ``async def name(k: IProc) -> None``.
    IProcMain = Callable[["IProc"], Awaitable[None]]

log = lazylog.getLogger("lamd.kernel")

#: Pids given to internal processes (LAM: 100000 + boot table row).
IPROC_PID_BASE = 100000
#: Internal-process steps run before the kernel returns to the I/O layer.
IPROC_TURN_BUDGET = 10000

# what an internal process can wait for besides kernel requests
TIMER = "timer"
READABLE = "readable"
CHILD = "child"
SIGNAL = "signal"
#: the kinds of watch that fire once
ONE_SHOT = (TIMER, CHILD)
#: The daemon's own stop signals (kio_shutdown): never an internal process's.
STOP_SIGNALS = frozenset({_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP})

# KCall kinds that are not kernel request codes
WAIT_EVENT = "event"
WAIT_HALT = "halt"
WAIT_FLUSH = "flush"


@dataclass(slots=True)
class KCall:
    """One request an internal process yields to the kernel (awaitable).

    ``kind`` is a kernel request code (``KQSEND``...) or :data:`WAIT_EVENT` /
    :data:`WAIT_HALT`; ``body``/``nmsg`` carry an outgoing message;
    ``watches`` (with ``interruptible``) are the events that may end the wait.
    """

    kind: int | str
    req: KReq | None = None
    body: bytes = b""
    nmsg: NMsg | None = None
    arg: Any = None
    watches: tuple["Watch", ...] = ()
    interruptible: bool = False

    def __await__(self) -> Generator["KCall", Any, Any]:
        result = yield self
        if isinstance(result, BaseException):
            raise result
        return result


@dataclass(slots=True, eq=False)
class Watch:
    """An event source of one internal process; :meth:`cancel` ends it."""

    id: int
    kind: str
    arg: Any
    proc: "KProc"
    active: bool = True

    def cancel(self) -> None:
        """Stop watching; events of it not yet taken are dropped. Idempotent."""
        if self.proc.iproc is not None and self.proc.iproc.kernel is not None:
            self.proc.iproc.kernel.unwatch(self)

    def __repr__(self) -> str:
        return f"<Watch {self.id} {self.kind} {self.arg!r}{'' if self.active else ' done'}>"


@dataclass(slots=True, frozen=True)
class ChildExit:
    """How a watched child ended (``waitid``): ``code`` is ``CLD_EXITED``,
    ``CLD_KILLED`` or ``CLD_DUMPED``; ``status`` the exit status or signal.
    Both are None when the process was not the daemon's child."""

    pid: int
    code: int | None = None
    status: int | None = None


@dataclass(slots=True, frozen=True)
class Event:
    """One firing of a :class:`Watch`: ``value`` is a :class:`ChildExit`
    (child), the signal number (signal), or None."""

    watch: Watch
    value: Any = None

    @property
    def kind(self) -> str:
        return self.watch.kind


@dataclass(slots=True)
class Received:
    """What a receive (or the second half of a send-receive) returns."""

    reply: KReply
    body: bytes = b""
    nmsg: NMsg | None = None

    @property
    def type(self) -> int:
        return self.reply.type

    @property
    def length(self) -> int:
        return self.reply.length


@dataclass(slots=True, eq=False)
class IProc:
    """The handle an internal process uses to talk to the kernel.

    ``kernel`` and ``proc`` are set when the kernel boots the process; the
    ``config`` mapping carries daemon settings (node address, ...).

    Across a daemon re-exec (:mod:`lamd.kernel.ksnapshot`) a process is
    booted afresh; what it wants kept it says by setting ``carry`` (called
    at the snapshot, returns bytes) and finds again in ``restored`` (None
    on a plain boot).
    """

    name: str
    kernel: "Kernel | None" = None
    proc: "KProc | None" = None
    config: dict[str, Any] = field(default_factory=dict)
    carry: "Callable[[], bytes] | None" = None
    restored: bytes | None = None
    #: takes messages from clients in place of the coroutine (see the module doc)
    take: "TakeFn | None" = None
    #: sees a client's send-receive before its body is read (see the module doc)
    peek: "PeekFn | None" = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- kernel requests ---------------------------------------------------
    def send(self, event: int, type: int, body: bytes = b"", flags: int = 0,
             nmsg: NMsg | None = None, length: int | None = None) -> Awaitable[KReply]:
        """ksend(): blocks until a receiver takes the message; returns the reply.

        With KTRY the reply's ``reply`` field is EWOULDBLOCK if nobody waits.
        Inside the kernel the reply's ``index`` is the pid of the process
        that took the message (not in LAM: :mod:`lamd.iprocs.doforward`).
        """
        n = len(body) if length is None else length
        return KCall(KQSEND, KReq(req=KQSEND, msg=KMsg(event, type, n, flags)), body, nmsg)

    def try_send(self, event: int, type: int, body: "bytes | memoryview" = b"", flags: int = 0,
                 nmsg: NMsg | None = None) -> KReply:
        """A KTRY send made at once, without a coroutine turn (``dtry_send``):
        delivered if a receiver is blocked on *event* (the reply's ``reply``
        is 0), else nothing happened (EWOULDBLOCK)."""
        assert self.kernel is not None and self.proc is not None
        req = KReq(req=KQSEND, msg=KMsg(event, type, len(body), flags | KTRY))
        return self.kernel.ksend_now(self.proc, req, body, nmsg)

    def recv(self, event: int, type: int, length: int, flags: int = 0) -> Awaitable[Received]:
        """krecv(): blocks until a sender matches; returns body and header."""
        return KCall(KQRECV, KReq(req=KQRECV, msg=KMsg(event, type, length, flags)))

    def sr(self, event: int, type: int, body: bytes, flags: int,
           event2: int, type2: int, length2: int, flags2: int = 0,
           nmsg: NMsg | None = None) -> Awaitable[Received]:
        """ksr(): send, then receive in the same kernel call."""
        req = KReq(req=KQSR, msg=KMsg(event, type, len(body), flags),
                   msg2=KMsg(event2, type2, length2, flags2))
        return KCall(KQSR, req, body, nmsg)

    def state(self, pid: int) -> Awaitable[KReply]:
        """kstate(): the reply carries state, priority, event, type, length."""
        return KCall(KQSTATE, KReq(req=KQSTATE, pid=pid))

    def doom(self, pid: int, sigbits: int) -> Awaitable[KReply]:
        """kdoom(): deliver LAM signal bits to an attached process."""
        return KCall(KQDOOM, KReq(req=KQDOOM, pid=pid, signal=sigbits))

    def ksync(self, msg: KMsg, req: int) -> bool:
        """LAM's ksync(): would *msg* synchronize right now without blocking?"""
        assert self.kernel is not None
        return self.kernel.ksync(msg, req)

    def receiver(self, event: int, type: int) -> int:
        """Inside the kernel: the pid of the process a send on *event* and
        *type* would meet now, -1 if none (not in LAM:
        :mod:`lamd.iprocs.doforward`)."""
        assert self.kernel is not None
        return self.kernel.kreceiver(KMsg(event, type, 0, 0))

    # -- event sources -----------------------------------------------------
    def timer(self, seconds: float) -> Watch:
        """A timer that fires once after *seconds* (LAM's kio_to)."""
        return self._watch(TIMER, max(0.0, float(seconds)))

    def watch_readable(self, fd: int) -> Watch:
        """Fire whenever *fd* is readable, until cancelled (LAM's kio_intr)."""
        return self._watch(READABLE, int(fd))

    def watch_child(self, pid: int) -> Watch:
        """Fire once when process *pid* exits (through a pidfd)."""
        return self._watch(CHILD, int(pid))

    def watch_signal(self, signo: int) -> Watch:
        """Fire on each delivery of *signo* (not one of the stop signals)."""
        if signo in STOP_SIGNALS:
            raise ValueError(f"signal {signo} stops the daemon; it cannot be watched")
        return self._watch(SIGNAL, int(signo))

    def _watch(self, kind: str, arg: Any) -> Watch:
        assert self.kernel is not None and self.proc is not None
        return self.kernel.watch(self.proc, kind, arg)

    # -- waiting -------------------------------------------------------------
    def next_event(self, *watches: Watch) -> Awaitable[Event]:
        """The next event of *watches* (of any watch when none is given)."""
        return KCall(WAIT_EVENT, watches=watches)

    def wait(self, call: Awaitable[Any], *watches: Watch) -> Awaitable[Any]:
        """Make kernel request *call*, interruptible by an event of *watches*
        (any, when none is given): its result, or the :class:`Event`."""
        assert isinstance(call, KCall) and isinstance(call.kind, int)
        call.watches = watches
        call.interruptible = True
        return call

    async def sleep(self, seconds: float) -> None:
        """Resume after *seconds*; other events stay queued."""
        await self.next_event(self.timer(seconds))

    async def readable(self, fd: int, timeout: float | None = None) -> bool:
        """Wait until *fd* is readable (True) or *timeout* seconds pass (False)."""
        w = self.watch_readable(fd)
        t = self.timer(timeout) if timeout is not None else None
        try:
            ev = await (self.next_event(w, t) if t is not None else self.next_event(w))
            return ev.watch is w
        finally:
            w.cancel()
            if t is not None:
                t.cancel()

    def flush(self) -> Awaitable[None]:
        """Resume once everything this process has sent is with the kernel.

        Inside the kernel a send is the kernel's own act: this resumes at
        once. The service host (:mod:`lamd.iprocs.host`) writes a send's
        body when the connection next waits, so a send returns before its
        body has left the process; a service that acts outside on a message
        having reached the kernel (dli acks a frame once it is handed on)
        awaits this first, or a crash in between loses the message. (Once
        written, it is the kernel's: a process that dies after its write
        leaves the bytes in the socket, and the kernel reads them.)"""
        return KCall(WAIT_FLUSH)

    def halt(self, status: int = 0) -> Awaitable[None]:
        """Ask the daemon to shut down (what haltd does); never resumes."""
        return KCall(WAIT_HALT, arg=status)


@dataclass(slots=True, frozen=True)
class KBoot:
    """One row of the boot table (LAM's ``kboottbl[]`` in ``kiproc.c``).

    ``row`` fixes the pid (100000 + row) when rows are left out of a boot;
    None means the position in the table given to :meth:`~lamd.kernel.kidriver.KIProcDriver.boot`.
    """

    name: str
    priority: int
    main: IProcMain
    row: int | None = None


def take_queued(mailbox: deque[Event], watches: tuple[Watch, ...]) -> Event | None:
    """Take the oldest queued event of *watches* (of any watch when empty)
    from *mailbox*; None if there is none. The kernel's driver and the
    service host (:mod:`lamd.iprocs.host`) keep their mailboxes alike."""
    if not mailbox:
        return None
    if not watches:
        return mailbox.popleft()
    for i, ev in enumerate(mailbox):
        if ev.watch in watches:
            del mailbox[i]
            return ev
    return None


__all__ = ["IPROC_PID_BASE", "IProc", "KBoot", "KCall", "Received", "Watch",
           "Event", "ChildExit", "TIMER", "READABLE", "CHILD", "SIGNAL", "ONE_SHOT",
           "STOP_SIGNALS", "WAIT_EVENT", "WAIT_FLUSH", "WAIT_HALT", "take_queued"]
