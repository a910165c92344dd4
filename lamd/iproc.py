"""Internal processes: LAM's KIPROC clients, as coroutines inside the daemon.

In the C lamd, internal processes (router, bufferd, echod, ...) are state
machines booted by ``kboot()`` (``otb/sys/lamd/kiproc.c``) that queue the same
kernel requests an external client writes. Here each one is an ``async def``
function taking an :class:`IProc` handle; every ``await`` on it issues one
kernel request to :class:`lamd.kernel.Kernel`, which resumes the coroutine
when the request completes (a rendezvous, a reply, a timeout or a readable
fd). No asyncio is involved: the kernel drives the coroutines itself, so
internal processes are as deterministic as the kernel and are tested without
sockets.

An internal process looks like this::

    async def echod(k: IProc) -> None:
        while True:
            got = await k.recv(EVECHOD, 0, MAXNMSGLEN, KNMSG)
            ...
            await k.send(reply_event, 0, got.body, KNMSG, nmsg=reply_header)

Message bodies are Python bytes. For KNMSG messages the network header is an
:class:`~lamd.wire.NMsg` passed (and received) beside the body, exactly as the
C kernel moves ``struct nmsg`` plus ``nh_msg`` for an internal process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generator

from .wire import KMsg, KReply, KReq, NMsg

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Kernel, KProc


@dataclass(slots=True)
class KCall:
    """One request an internal process yields to the kernel (awaitable).

    ``kind`` is a kernel request code (``KQSEND``...) or one of the I/O
    waits below; ``body``/``nmsg`` carry an outgoing message.
    """

    kind: int | str
    req: KReq | None = None
    body: bytes = b""
    nmsg: NMsg | None = None
    arg: Any = None

    def __await__(self) -> Generator["KCall", Any, Any]:
        result = yield self
        if isinstance(result, BaseException):
            raise result
        return result


# I/O waits an internal process can make (LAM's kio_to() and kio_intr())
WAIT_TIMEOUT = "timeout"
WAIT_READABLE = "readable"
WAIT_HALT = "halt"


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
    """

    name: str
    kernel: "Kernel | None" = None
    proc: "KProc | None" = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- kernel requests ---------------------------------------------------
    def send(self, event: int, type: int, body: bytes = b"", flags: int = 0,
             nmsg: NMsg | None = None, length: int | None = None) -> Awaitable[KReply]:
        """ksend(): blocks until a receiver takes the message; returns the reply.

        With KTRY the reply's ``reply`` field is EWOULDBLOCK if nobody waits.
        """
        n = len(body) if length is None else length
        req = KReq(req=0, msg=KMsg(event, type, n, flags))
        return KCall(0, req, body, nmsg)

    def recv(self, event: int, type: int, length: int, flags: int = 0) -> Awaitable[Received]:
        """krecv(): blocks until a sender matches; returns body and header."""
        req = KReq(req=1, msg=KMsg(event, type, length, flags))
        return KCall(1, req)

    def sr(self, event: int, type: int, body: bytes, flags: int,
           event2: int, type2: int, length2: int, flags2: int = 0,
           nmsg: NMsg | None = None) -> Awaitable[Received]:
        """ksr(): send, then receive in the same kernel call."""
        req = KReq(req=4, msg=KMsg(event, type, len(body), flags),
                   msg2=KMsg(event2, type2, length2, flags2))
        return KCall(4, req, body, nmsg)

    def state(self, pid: int) -> Awaitable[KReply]:
        """kstate(): the reply carries state, priority, event, type, length."""
        return KCall(2, KReq(req=2, pid=pid))

    def doom(self, pid: int, sigbits: int) -> Awaitable[KReply]:
        """kdoom(): deliver LAM signal bits to an attached process."""
        return KCall(3, KReq(req=3, pid=pid, signal=sigbits))

    # -- kio_to() / kio_intr() ----------------------------------------------
    def sleep(self, seconds: float) -> Awaitable[None]:
        """Resume after *seconds* (LAM's kio_to timeout)."""
        return KCall(WAIT_TIMEOUT, arg=float(seconds))

    def readable(self, fd: int) -> Awaitable[None]:
        """Resume when *fd* is readable (LAM's kio_intr interrupt)."""
        return KCall(WAIT_READABLE, arg=fd)

    def halt(self, status: int = 0) -> Awaitable[None]:
        """Ask the daemon to shut down (what haltd does); never resumes."""
        return KCall(WAIT_HALT, arg=status)

    def ksync(self, msg: KMsg, req: int) -> bool:
        """LAM's ksync(): would *msg* synchronize right now without blocking?"""
        assert self.kernel is not None
        return self.kernel.ksync(msg, req)


#: The type of an internal process body: ``async def name(k: IProc) -> None``.
IProcMain = Callable[[IProc], Awaitable[None]]


@dataclass(slots=True, frozen=True)
class KBoot:
    """One row of the boot table (LAM's ``kboottbl[]`` in ``kiproc.c``)."""

    name: str
    priority: int
    main: IProcMain
