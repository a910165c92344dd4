"""Services outside the kernel: LAM's separate daemons (``etc/lam-conf.separate``).

LAM can run its daemons as separate processes instead of inside ``lamd``:
``lamd_echod``, ``lamd_versiond``... each ``kinit(priority)`` (a kattach at
the daemon's priority; no version check, which only PRCMD clients make) and
then serve their event with ordinary kernel requests through liblam. This
module does that for the very coroutines the daemon boots inside
(:mod:`lamd.iprocs`), so a service has one implementation wherever it runs::

    lamd --external echod            # the kernel leaves echod's row out
    python3 -m lamd.iprocs.host echod

How it runs them: one single-threaded :class:`~lamd.kernelio.loop.EventLoop`
and one kernel connection per service (a request blocked in the kernel
occupies its connection, as in liblam), attached with LAM's priority for that
service. Each :class:`~lamd.kernel.kiproc.KCall` a coroutine yields becomes the
``struct kreq`` liblam writes on that connection; for sends the ``struct
nmsg`` (KNMSG) and the body follow the kernel's reply, as ``_cio_send``
writes them; replies, headers and bodies are read back as ``_cio_recv`` reads
them, and resume the coroutine with what the kernel would have handed an
internal process. What a connection writes is sent when it next waits for
the kernel (or at the end of the loop's turn), so a send's body and the
request after it leave in one ``send`` and the kernel reads them in one
receive. So a send returns before its body has left the process: a
service that acts outside on its message having reached the kernel awaits
``k.flush()`` first (dli, before it acks a frame as handed on). A read
stops at a short read (epoll is level-triggered), and a blocking request's
reply is not read for before epoll says it is there: no read that only
meets ``EAGAIN``. The wait API (``timer``, ``watch_readable``,
``watch_child``, ``watch_signal``, ``next_event``, ``wait``, ``flush``) is
served by the host's own loop with the kernel's semantics.

Where it differs from inside the kernel:

* ``k.wait(request, watches)`` interrupted by an event while the request is
  blocked in the kernel: a client cannot take back a blocked request. A
  blocked *receive* is ended by the host's own extra connection (the waker,
  attached on first use: one more kill-file line) with a KTRY send of a
  message the host recognises: either the kernel hands it to the receive
  (the interruption: the service sees the event, nothing was received) or
  the receive is no longer (or not yet) blocked and the kernel refuses it;
  the host then looks again shortly, and the event waits for the next wait
  if an answer came. Nothing is lost. Anything else (a blocked send, a
  receive the waker cannot match) is interrupted as before: the host closes
  that service's connection and attaches a fresh one (the kernel forgets a
  blocked request of a connection that goes; about 1 ms, two kill-file
  updates, a new kernel index), and if the kernel matched the request in the
  instant before it saw the close, the message is lost, as for any client
  that dies (measured with kenyad: 12 of 400 creates lost when every child
  exit interrupted this way). An event that arrives after the kernel has
  answered is kept for the next wait, as inside the kernel.
* ``k.ksync()`` (a direct look at the kernel's blocked list) and ``k.halt()``
  (a kernel action) do not exist outside the kernel: they raise
  :class:`KernelOnly` (no service in the table uses ksync; haltd, which
  halts, is kernel-side).
* ``k.pid`` is the host's process id, shared by its services.
* A LAM signal sent to the host (``kdoom``) interrupts a blocked request with
  EINTR: the host logs it and makes the request again (a daemon has no
  signal handlers to run; inside the kernel a doom of a service is refused).

The host is in the session's kill file like every attached client (one line
per service connection), so ``lamhalt``, ``tkill`` and the daemon's own stop
end it with SIGHUP; SIGTERM and SIGINT end it too. It exits when the kernel
goes away (end of file on a connection, LAM's ENOKERNEL), and before exiting
it kills and reaps every process a service started and watched
(``watch_child``) that is still running: it never leaves children behind.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections import deque
from typing import Any, Generator, Sequence

from ..kernel.constants import (
    KNMSG, KPROBE, KQATTACH, KQDETACH, KQDOOM, KQRECV, KQSEND, KQSR, KQSTATE, KSYNCSQL,
    KTRY, LAM_SIGUSR, PRCMD, strerror,
)
from ..kernel.kiproc import (
    CHILD, IPROC_PID_BASE, READABLE, SIGNAL, TIMER, WAIT_EVENT, WAIT_FLUSH, WAIT_HALT,
    Event, IProc, KBoot, KCall, Received, Watch, take_queued,
)
from ..kernel.wire import KREPLY_SIZE, NMSG_SIZE, KMsg, KReply, KReq, NMsg
from ..kernelio.watches import reap_child
from ..kernelio.loop import EPOLLIN, EPOLLOUT, BusyPoll, EventLoop, Readable, Timer
from . import BY_NAME, BootConfigError, boot_config, parse_external

log = logging.getLogger("lamd.host")

EXIT_OK = 0
EXIT_FAILED = 1  # no kernel, refused, a service failed
EXIT_USAGE = 2

#: Coroutine steps run before the loop looks at its descriptors again.
TURN_BUDGET = 10000

# what a protocol step asks of its connection
_WRITE = "write"
_READ = "read"  # bytes that follow at once (a reply to a non-blocking request, a body)
_BLOCK = "block"  # a reply that may wait for a rendezvous: the request can be interrupted

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class KernelOnly(RuntimeError):
    """A call only an internal process can make (``ksync``, ``halt``)."""


class HostError(RuntimeError):
    """The host cannot start (no kernel, refused, the kernel runs the service itself)."""


#: How long the waker waits on the kernel, and how long it keeps trying to
#: reach a receive that is not blocked yet before closing the connection.
WAKE_TIMEOUT = 5.0
WAKE_RETRY = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
_WAKE_MAGIC = (0x6C616D64, 0x77616B65)  # "lamd" "wake"


class _Waker:
    """The host's own kernel connection that interrupts a service blocked in
    a receive without losing anything: a KTRY send of a message the host
    recognises. Either the kernel matches it with the blocked receive (which
    then ends with it: the interruption) or, the receive having been matched
    with a real message or not being blocked yet, it refuses it
    (EWOULDBLOCK) and nothing changes. Closing the service's connection
    instead loses a message the kernel matched an instant before the close.
    Synchronous: a KTRY send is answered at once."""

    def __init__(self, path: str, timeout: float = WAKE_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.index = -1
        self.broken = False
        tok = os.urandom(8)
        self.words = _WAKE_MAGIC + (int.from_bytes(tok[:4], "little", signed=True),
                                    int.from_bytes(tok[4:], "little", signed=True))
        self.body = b"".join(w.to_bytes(4, "little", signed=True) for w in self.words)

    def _read(self, n: int) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the kernel closed the waker's connection")
            buf += chunk
        return bytes(buf)

    def _ensure(self) -> None:
        if self.sock is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # blocking, its timeout kept by the kernel (SO_RCVTIMEO, SO_SNDTIMEO:
        # the connect too): no poll before each send and receive, as a
        # Python socket with a timeout makes (three per wake)
        sec = int(self.timeout)
        tv = struct.pack("@ll", sec, int((self.timeout - sec) * 1e6))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        s.connect(self.path)
        self.sock = s
        s.sendall(KReq(req=KQATTACH, index=-1, pid=os.getpid(), priority=PRCMD).pack())
        rep = KReply.unpack(self._read(KREPLY_SIZE))
        if rep.reply:
            raise ConnectionError(f"the kernel refused the waker: {strerror(rep.reply)}")
        self.index = rep.index

    def wake(self, msg: KMsg) -> bool | None:
        """Try to end the receive *msg* blocked in the kernel: True if the
        kernel gave it the wake message, False if no such receive waits,
        None if this receive cannot be woken this way (or the waker broke)."""
        if self.broken or msg.flags & KSYNCSQL:
            return None
        knmsg = msg.flags & KNMSG
        if not knmsg and msg.length < len(self.body):
            return None
        try:
            self._ensure()
            assert self.sock is not None
            n = 0 if knmsg else len(self.body)
            self.sock.sendall(KReq(req=KQSEND, index=self.index,
                                   msg=KMsg(msg.event, msg.type or 1, n, KTRY | knmsg)).pack())
            rep = KReply.unpack(self._read(KREPLY_SIZE))
            if rep.reply:
                return False  # EWOULDBLOCK: nobody is blocked there
            head = NMsg(dl_event=msg.event, node=-2, event=msg.event, type=msg.type or 1,
                        data=self.words + (0,) * 4)
            data = _body_bytes(rep.length, self.body if not knmsg else b"", KNMSG if knmsg
                               else 0, head)
            if data:
                self.sock.sendall(data)
            return True
        except (OSError, ConnectionError, AssertionError) as e:
            log.warning("host: the waker failed (%s): interrupting by reconnecting from "
                        "now on", e)
            self.broken = True
            self.close()
            return None

    def is_wake(self, result: Any) -> bool:
        if not isinstance(result, Received) or result.reply.reply:
            return False
        if result.nmsg is not None and tuple(result.nmsg.data[:4]) == self.words:
            return True
        return result.nmsg is None and result.body == self.body

    def close(self) -> None:
        s, self.sock = self.sock, None
        if s is None:
            return
        try:
            if self.index >= 0:
                s.sendall(KReq(req=KQDETACH, index=self.index, pid=os.getpid()).pack())
        except OSError:
            pass
        s.close()


class ExternalProc:
    """What the kernel's ``KProc`` is to an internal process, for a hosted one:
    carries the pid, and the handle a :class:`Watch` cancels through."""

    __slots__ = ("pid", "iproc", "svc")

    def __init__(self, pid: int, svc: "_Service") -> None:
        self.pid = pid
        self.svc = svc
        self.iproc: IProc | None = None


class _Service:
    """One hosted service: its coroutine, its kernel connection, its waits."""

    def __init__(self, host: "ServiceHost", kb: KBoot, row: int | None,
                 config: dict[str, Any]) -> None:
        self.name = kb.name
        self.priority = kb.priority
        self.row = row
        self.main = kb.main
        self.proc = ExternalProc(os.getpid(), self)
        # "hosted": outside the kernel (dlo then takes its packets from the
        # kernel's doforward)
        self.handle = IProc(kb.name, host, self.proc,  # type: ignore[arg-type]
                            dict(config, hosted=True))
        self.proc.iproc = self.handle
        self.coro: Any = None
        # the connection
        self.sock: socket.socket | None = None
        self.index = -1
        self.wbuf = bytearray()
        self.rbuf = bytearray()
        self.waiting: str | None = None  # _WRITE, _READ, _BLOCK or None
        self.need = 0
        self.proto: Generator[tuple[str, Any], Any, Any] | None = None
        self.attaching = False
        # the coroutine's current call and waits
        self.call: KCall | None = None
        self.wanted: tuple[Watch, ...] | None = None
        self.waiting_event = False
        self.flushing = False  # in k.flush(): resumed once wbuf is written
        self.pending_event: Event | None = None  # handed over once re-attached
        self.waking: Event | None = None  # its wake message is on its way
        self.mailbox: deque[Event] = deque()
        self.watches: dict[int, Watch] = {}
        self.failed = False


# ---------------------------------------------------------------------------
# what liblam writes and reads for each request (share/kreq/, clientio.c)
# ---------------------------------------------------------------------------

def _body_bytes(n: int, body: bytes, flags: int, nmsg: NMsg | None) -> bytes:
    """``_cio_send``: the ``struct nmsg`` (KNMSG) then *n* bytes of body."""
    data = body[:n]
    if len(data) < n:
        data += bytes(n - len(data))
    if flags & KNMSG:
        data = (nmsg or NMsg()).pack() + data
    return data


def _recv_body(rep: KReply, flags: int) -> Generator[tuple[str, Any], Any, Received]:
    """``_cio_recv``: the ``struct nmsg`` (KNMSG) then the body; nothing for a probe."""
    if flags & KPROBE:
        return Received(rep)
    hdr = None
    if flags & KNMSG:
        hdr = NMsg.unpack((yield _READ, NMSG_SIZE))
    body = (yield _READ, rep.length) if rep.length else b""
    return Received(rep, bytes(body), hdr)


def _interrupted(name: str, rep: KReply) -> bool:
    """An EINTR reply carrying LAM signals (kdoom): logged, and made again."""
    if rep.reply == errno.EINTR and rep.signal:
        log.info("%s: request interrupted by LAM signals %#x; making it again", name, rep.signal)
        return True
    return False


def exchange(name: str, call: KCall, index: int) -> Generator[tuple[str, Any], Any, Any]:
    """One kernel request of a coroutine, as steps for its connection; returns
    what the kernel hands an internal process for it (a :class:`KReply` for
    send, state and doom, a :class:`Received` for receive and send-receive;
    a LAM error is in the reply, not raised)."""
    kind = call.kind
    assert call.req is not None
    req = call.req   # made for this call (IProc.send, recv...): its index is the connection's
    req.index = index
    if kind in (KQSTATE, KQDOOM):
        yield _WRITE, req.pack()
        return KReply.unpack((yield _READ, KREPLY_SIZE))
    while True:
        yield _WRITE, req.pack()
        rep = KReply.unpack((yield _BLOCK, KREPLY_SIZE))
        if not _interrupted(name, rep):
            break
    if kind == KQRECV:
        if rep.reply:
            return Received(rep)
        return (yield from _recv_body(rep, req.msg.flags))
    if rep.reply:
        return rep if kind == KQSEND else Received(rep)
    data = _body_bytes(rep.length, call.body, req.msg.flags, call.nmsg)
    if data:
        yield _WRITE, data
    if kind == KQSEND:
        return rep
    # KQSR: the send half is done; now its receive half
    while True:
        rep2 = KReply.unpack((yield _BLOCK, KREPLY_SIZE))
        if not _interrupted(name, rep2):
            break
        # the message went; only the receive is made again
        yield _WRITE, KReq(req=KQRECV, index=index, msg=req.msg2).pack()
    if rep2.reply:
        return Received(rep2)
    return (yield from _recv_body(rep2, req.msg2.flags))


def attach(svc: _Service, check: bool) -> Generator[tuple[str, Any], Any, tuple[str, Any]]:
    """``kinit(priority)``: attach at the service's priority; with *check*, make
    sure the kernel does not run the service itself (its LAM pid, 100000 +
    row, attached at its priority)."""
    yield _WRITE, KReq(req=KQATTACH, index=-1, pid=svc.proc.pid, priority=svc.priority).pack()
    rep = KReply.unpack((yield _READ, KREPLY_SIZE))
    if rep.reply:
        return "refused", rep
    if check and svc.row is not None:
        yield _WRITE, KReq(req=KQSTATE, index=rep.index, pid=IPROC_PID_BASE + svc.row).pack()
        st = KReply.unpack((yield _READ, KREPLY_SIZE))
        if st.reply == 0 and st.priority == svc.priority:
            return "internal", st
    return "ok", rep.index


# ---------------------------------------------------------------------------


class ServiceHost:
    """Runs services of the boot table as external processes of one kernel.

    ``ServiceHost(socket_path, ["echod"], config).run()`` serves until it is
    stopped (:meth:`stop`, :meth:`request_stop` from another thread, or a stop
    signal after :meth:`install_signal_handlers`), or the kernel goes away;
    returns the exit status. Usable in-process (tests run it in a thread).
    """

    def __init__(self, socket_path: str, names: Sequence[str | KBoot],
                 config: dict[str, Any] | None = None, *, check_internal: bool = True,
                 connect_timeout: float = 10.0, gone_status: int = EXIT_OK,
                 busy_poll: float | None = None) -> None:
        """*names*: services of the boot table (checked as ``--external`` is),
        or :class:`KBoot` rows of one's own (tests); a row with ``row`` None
        is not looked for among the kernel's internal processes.
        *gone_status*: the exit status when the kernel closes the connections
        without a stop signal first (a stop of the kernel hangs us up: that
        is :data:`EXIT_OK`)."""
        extra = [n for n in names if isinstance(n, KBoot)]
        listed = parse_external([n for n in names if isinstance(n, str)])
        if not listed and not extra:
            raise BootConfigError("no service named")
        self.socket_path = socket_path
        self.check_internal = check_internal
        self.connect_timeout = connect_timeout
        self.gone_status = gone_status
        self.loop = EventLoop()
        # *busy_poll* (seconds; 0: none) as ``lamd --busy-poll`` gives its jobs
        # child, else ``LAMD_BUSY_POLL`` (a unit's Environment=)
        self.loop.busy = (BusyPoll.from_env() if busy_poll is None
                          else BusyPoll.limited(busy_poll))
        rows = {name: row for row, name in enumerate(BY_NAME)}
        cfg = dict(config or {})
        self.services = ([_Service(self, BY_NAME[n], rows[n], cfg) for n in listed]
                         + [_Service(self, kb, kb.row, cfg) for kb in extra])
        self._runq: deque[tuple[_Service, Any]] = deque()
        self._watch_seq = 0
        self._watches: dict[int, Watch] = {}
        self._res: dict[int, Any] = {}  # watch id -> its loop resource
        self._sig_watches: dict[int, list[int]] = {}
        self._children: dict[int, int] = {}  # pidfd -> pid of every watched child not yet reaped
        self.waker = _Waker(socket_path)
        self.stopping = False
        self.status = EXIT_OK
        self.stop_reason = ""
        self._closed = False

    # ------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT, SIGHUP (what kkillall and tkill send) stop the host;
        LAM_SIGUSR (the kernel's kpreempt) is ignored: a pending LAM signal
        comes back as EINTR on the next request, which is made again."""
        signal.signal(LAM_SIGUSR, signal.SIG_IGN)
        for s in _STOP_SIGNALS:
            # ignored, not default, once the loop lets go of them at the end:
            # kkillall sends SIGHUP once per kill-file line, i.e. per service
            signal.signal(s, signal.SIG_IGN)
            self.loop.add_signal(s, lambda signo: self.stop(EXIT_OK, f"signal {signal.Signals(signo).name}"))

    def stop(self, status: int = EXIT_OK, reason: str = "") -> None:
        if not self.stopping:
            self.stopping = True
            self.status = status
            self.stop_reason = reason

    def request_stop(self, reason: str = "requested") -> None:
        """Stop from another thread."""
        self.stop(EXIT_OK, reason)
        self.loop.wakeup()

    def start(self) -> None:
        """Connect and attach every service (raises :class:`HostError`)."""
        for svc in self.services:
            self._connect(svc)
            self._start_attach(svc, self.check_internal)

    def run(self) -> int:
        """Serve until stopped or the kernel goes; returns the exit status."""
        try:
            if not any(svc.sock for svc in self.services):
                self.start()
        except HostError as e:
            log.error("%s", e)
            self.close()
            return EXIT_FAILED
        loop = self.loop
        busy = loop.busy
        while not self.stopping:
            if self._runq:
                timeout = 0.0
            else:
                t = loop.next_deadline()
                timeout = 1.0 if t is None else min(1.0, max(0.0, t - time.monotonic()))
            worked = loop.poll(timeout)
            loop.run_timers(time.monotonic())
            self._run()
            self._flush_all()
            if worked and busy is not None:
                busy.worked(time.monotonic())
        log.info("host: stopping (%s)", self.stop_reason or "stop")
        self.close()
        return self.status

    # ------------------------------------------------------------------
    # connections
    # ------------------------------------------------------------------
    def _connect(self, svc: _Service) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(self.connect_timeout)
        try:
            s.connect(self.socket_path)
        except OSError as e:
            s.close()
            raise HostError(f"no kernel at {self.socket_path}: {e.strerror or e} "
                            "(ENOKERNEL: is lamd running for this session?)") from e
        s.setblocking(False)
        svc.sock = s
        svc.wbuf.clear()
        svc.rbuf.clear()
        svc.waiting, svc.need = None, 0
        self.loop.add_reader(s.fileno(), lambda ev, s=s, svc=svc: self._on_io(svc, s, ev), EPOLLIN)

    def _disconnect(self, svc: _Service, *, detach: bool = False) -> None:
        s = svc.sock
        if s is None:
            return
        if detach and svc.wbuf:   # the end of the last request (a body) goes first
            try:
                del svc.wbuf[:s.send(svc.wbuf)]
            except OSError:
                pass
        idle = svc.proto is None and not svc.wbuf and not svc.rbuf
        svc.sock = None
        svc.proto = None
        svc.waiting, svc.need = None, 0
        self.loop.remove(s.fileno())
        # only between requests: in the middle of one the kernel may be
        # waiting for a body, and would read the detach as one
        if detach and idle and svc.index >= 0:
            try:  # kexit's kdetach: no reply; the kernel closes its end
                s.send(KReq(req=KQDETACH, index=svc.index, pid=svc.proc.pid).pack())
            except OSError:
                pass
        svc.wbuf.clear()
        svc.rbuf.clear()
        s.close()
        svc.flushing = False   # what it waited for was not written: never resumed as done

    def _kernel_gone(self, svc: _Service, why: str) -> None:
        if svc.attaching:  # refused (out of descriptors: a reply, then the close)
            if len(svc.rbuf) >= KREPLY_SIZE:
                why = strerror(KReply.unpack(svc.rbuf).reply)
            log.error("host: the kernel closed %s's connection while it attached (%s)",
                      svc.name, why)
            self.stop(EXIT_FAILED, "attach refused")
            return
        # a stop hangs us up before it closes (kkillall, tkill): that
        # signal, already delivered, comes first
        self.loop.dispatch_signals()
        log.info("host: the kernel closed %s's connection (%s): exiting", svc.name, why)
        self.stop(self.gone_status, "the kernel went away")

    def _on_io(self, svc: _Service, s: socket.socket, ev: int) -> None:
        if svc.sock is not s:
            return  # a connection this service has dropped
        if ev & EPOLLOUT:
            if not self._flush(svc):
                return
            if not svc.wbuf:
                self._set_mask(svc)
                if svc.flushing:
                    svc.flushing = False
                    self._resume(svc, None)
        if svc.sock is s and ev & ~EPOLLOUT:
            if not self._fill(svc):
                return
            if svc.waiting in (_READ, _BLOCK) and len(svc.rbuf) >= svc.need:
                self._advance(svc, self._take(svc))

    def _flush(self, svc: _Service) -> bool:
        """Write what is pending; False if the connection broke."""
        s = svc.sock
        assert s is not None
        while svc.wbuf:
            try:
                n = s.send(svc.wbuf)
            except BlockingIOError:
                break
            except OSError as e:
                self._kernel_gone(svc, e.strerror or str(e))
                self._disconnect(svc)
                return False
            del svc.wbuf[:n]
        return True

    def _push(self, svc: _Service) -> bool:
        """Write what is pending: True once all of it has left; else the rest
        waits for EPOLLOUT (or the connection broke: the host stops)."""
        if not self._flush(svc):
            return False
        if svc.wbuf:
            self._set_mask(svc)
            return False
        return True

    def _flush_all(self) -> None:
        """The end of a turn: what the connections still hold to write."""
        for svc in self.services:
            if svc.wbuf and svc.sock is not None:
                self._push(svc)

    def _fill(self, svc: _Service) -> bool:
        """Read what the kernel sent; False if it closed the connection."""
        s = svc.sock
        assert s is not None
        while True:
            try:
                data = s.recv(65536)
            except BlockingIOError:
                return True
            except OSError as e:
                self._kernel_gone(svc, e.strerror or str(e))
                self._disconnect(svc)
                return False
            if not data:
                self._kernel_gone(svc, "end of file")
                self._disconnect(svc)
                return False
            svc.rbuf += data
            if len(data) < 65536:
                # all there was (the next bytes wake the loop: epoll is
                # level-triggered); no second recv to meet EAGAIN
                return True

    def _take(self, svc: _Service) -> bytes:
        n = svc.need
        data = bytes(svc.rbuf[:n])
        del svc.rbuf[:n]
        svc.waiting, svc.need = None, 0
        return data

    def _set_mask(self, svc: _Service) -> None:
        if svc.sock is not None:
            try:
                self.loop.modify(svc.sock.fileno(), EPOLLIN | (EPOLLOUT if svc.wbuf else 0))
            except OSError:
                pass

    def _advance(self, svc: _Service, value: Any) -> None:
        """Run the connection's protocol steps as far as the socket allows."""
        while svc.proto is not None:
            try:
                op, arg = svc.proto.send(value)
            except StopIteration as stop:
                svc.proto = None
                self._proto_done(svc, stop.value)
                return
            if op == _WRITE:
                # written when the connection next waits for the kernel (or
                # at the end of the turn: _flush_all), so that a body and the
                # request after it go in one send, and the kernel reads them
                # in one receive
                svc.wbuf += arg
                value = None
            else:
                svc.waiting, svc.need = op, arg
                if svc.wbuf and not self._push(svc):
                    return   # the rest with EPOLLOUT, the reply after it
                if len(svc.rbuf) < arg:
                    # a blocking request's reply cannot be there yet: no
                    # read that would only meet EAGAIN (it comes with EPOLLIN)
                    if op != _BLOCK and not self._fill(svc):
                        return
                    if len(svc.rbuf) < arg:
                        if op == _BLOCK and not svc.rbuf:
                            # now blocked in the kernel: an event that came
                            # while the request was on its way interrupts it
                            ev = self._queued_wanted(svc)
                            if ev is not None:
                                self._interrupt(svc, ev)
                        return  # the rest comes with EPOLLIN
                value = self._take(svc)

    def _start_attach(self, svc: _Service, check: bool) -> None:
        svc.attaching = True
        svc.proto = attach(svc, check)
        self._advance(svc, None)

    def _proto_done(self, svc: _Service, result: Any) -> None:
        if svc.attaching:
            svc.attaching = False
            what, detail = result
            if what == "refused":
                log.error("host: the kernel refused %s's attach: %s", svc.name,
                          strerror(detail.reply))
                self._disconnect(svc)
                self.stop(EXIT_FAILED, "attach refused")
                return
            if what == "internal":
                log.error("host: this lamd runs %s itself (pid %d, priority %d): start it "
                          "with --external %s to serve it from here", svc.name,
                          IPROC_PID_BASE + svc.row, detail.priority, svc.name)
                self._disconnect(svc, detach=True)
                self.stop(EXIT_FAILED, f"{svc.name} is internal")
                return
            first = svc.index < 0
            svc.index = detail
            if first and svc.coro is None:
                log.info("host: serving %s (priority %d) as pid %d, kernel index %d",
                         svc.name, svc.priority, svc.proc.pid, svc.index)
                svc.coro = svc.main(svc.handle)
                self._resume(svc, None)
            elif svc.pending_event is not None:
                ev, svc.pending_event = svc.pending_event, None
                self._take_event(svc, ev)
            return
        svc.call = None
        svc.wanted = None
        if svc.waking is not None and self.waker.is_wake(result):
            ev, svc.waking = svc.waking, None
            self._take_event(svc, ev)  # the receive was interrupted: nothing came
            return
        if svc.waking is not None:  # cannot happen: a matched wake is what the receive gets
            svc.mailbox.appendleft(svc.waking)
            svc.waking = None
        self._resume(svc, result)

    # ------------------------------------------------------------------
    # the coroutines
    # ------------------------------------------------------------------
    def _resume(self, svc: _Service, value: Any) -> None:
        self._runq.append((svc, value))

    def _run(self) -> None:
        runq = self._runq
        budget = TURN_BUDGET
        while runq and budget > 0 and not self.stopping:
            budget -= 1
            svc, value = runq.popleft()
            if svc.coro is None:
                continue
            try:
                call = svc.coro.send(value)
            except StopIteration:
                log.info("host: service %s ended", svc.name)
                self._end_service(svc)
                continue
            except Exception:
                log.exception("host: service %s failed; detached", svc.name)
                svc.failed = True
                self._end_service(svc)
                continue
            self._call(svc, call)

    def _end_service(self, svc: _Service) -> None:
        coro, svc.coro = svc.coro, None
        if coro is not None:
            try:
                coro.close()
            except Exception:  # noqa: BLE001 - a finally that awaits; nothing to save
                pass
        for w in list(svc.watches.values()):
            self.unwatch(w)
        svc.mailbox.clear()
        self._disconnect(svc, detach=True)
        if all(s.coro is None for s in self.services):
            failed = [s.name for s in self.services if s.failed]
            self.stop(EXIT_FAILED if failed else EXIT_OK,
                      f"{', '.join(failed)} failed" if failed else "every service ended")

    def _call(self, svc: _Service, call: Any) -> None:
        if not isinstance(call, KCall):
            self._resume(svc, TypeError(f"a service awaits only its IProc's calls, not {call!r}"))
            return
        kind = call.kind
        if kind == WAIT_EVENT or call.interruptible:
            ev = self._queued_event(svc, call.watches)
            if ev is not None:
                self._take_event(svc, ev)
                return
            svc.wanted = call.watches
            if kind == WAIT_EVENT:
                svc.waiting_event = True
                return
        else:
            svc.wanted = None
        if kind == WAIT_FLUSH:
            if svc.wbuf and svc.sock is not None and not self._push(svc):
                # the rest with EPOLLOUT (_on_io resumes it); a broken
                # connection stops the host, and nothing resumes it
                svc.flushing = svc.sock is not None
                return
            self._resume(svc, None)
            return
        if kind == WAIT_HALT:
            svc.wanted = None
            self._resume(svc, KernelOnly(
                f"{svc.name} cannot halt the daemon from outside the kernel (haltd is kernel-side)"))
            return
        if kind not in (KQSEND, KQRECV, KQSR, KQSTATE, KQDOOM) or call.req is None:
            svc.wanted = None
            self._resume(svc, ValueError(f"services cannot make request {kind!r}"))
            return
        svc.call = call
        svc.proto = exchange(svc.name, call, svc.index)
        self._advance(svc, None)

    # ------------------------------------------------------------------
    # events (the wait API, as KIProcDriver serves it inside the kernel)
    # ------------------------------------------------------------------
    def _queued_event(self, svc: _Service, watches: tuple[Watch, ...]) -> Event | None:
        return take_queued(svc.mailbox, watches)

    def _take_event(self, svc: _Service, ev: Event) -> None:
        svc.wanted = None
        svc.waiting_event = False
        w = ev.watch
        if w.kind == READABLE and w.active:
            r = self._res.get(w.id)
            if isinstance(r, Readable):
                try:
                    r.taken()  # report the next one
                except OSError:
                    pass
        self._resume(svc, ev)

    def _deliver(self, svc: _Service, ev: Event) -> None:
        if svc.coro is None:
            return
        wanted = svc.wanted
        if wanted is not None and (not wanted or ev.watch in wanted):
            if svc.waiting_event:
                self._take_event(svc, ev)
                return
            if svc.call is not None and self._interruptible(svc):
                self._interrupt(svc, ev)
                return
        svc.mailbox.append(ev)
        # looking for an answer may have read it (or part of it): carry on
        # with the request, or nothing would read it again
        if (svc.sock is not None and svc.proto is not None and svc.waiting in (_READ, _BLOCK)
                and len(svc.rbuf) >= svc.need):
            self._advance(svc, self._take(svc))

    def _queued_wanted(self, svc: _Service) -> Event | None:
        """An event queued for the interruptible request *svc* is making."""
        if svc.call is None or svc.wanted is None or not svc.call.interruptible:
            return None
        return self._queued_event(svc, svc.wanted)

    def _interruptible(self, svc: _Service) -> bool:
        """Blocked in the kernel with nothing of the answer arrived yet."""
        if svc.waiting != _BLOCK or svc.sock is None:
            return False
        if not self._fill(svc):
            return False
        return not svc.rbuf

    def _receive_of(self, call: KCall) -> KMsg | None:
        assert call.req is not None
        if call.kind == KQRECV:
            return call.req.msg
        if call.kind == KQSR:
            return call.req.msg2
        return None

    def _interrupt(self, svc: _Service, ev: Event, attempt: int = 0) -> None:
        """End *svc*'s blocked interruptible request for *ev*: a receive with
        the waker's message, anything else (or if that cannot work) by
        dropping the connection and attaching again."""
        call = svc.call
        msg = self._receive_of(call) if call is not None else None
        if msg is not None and svc.waking is None:
            woke = self.waker.wake(msg)
            if woke:
                svc.waking = ev
                return
            if woke is False:
                # not blocked there (yet, or any more): an answer is on its way,
                # or the receive half is about to block: look again shortly
                svc.mailbox.appendleft(ev)
                if attempt < len(WAKE_RETRY):
                    self.loop.call_later(WAKE_RETRY[attempt],
                                         lambda: self._rewake(svc, call, ev, attempt + 1))
                    return
                svc.mailbox.remove(ev)
        elif svc.waking is not None:
            svc.mailbox.appendleft(ev)  # one interruption is on its way already
            return
        self._reconnect_interrupt(svc, ev)

    def _rewake(self, svc: _Service, call: KCall | None, ev: Event, attempt: int) -> None:
        if (svc.call is not call or svc.coro is None or ev not in svc.mailbox
                or svc.waiting != _BLOCK or svc.rbuf):
            return  # answered, or the event was taken some other way
        svc.mailbox.remove(ev)
        self._interrupt(svc, ev, attempt)

    def _reconnect_interrupt(self, svc: _Service, ev: Event) -> None:
        # a stop hangs us up before the kernel closes the waker's connection
        # (kkillall): a connect now would start the next kernel under socket
        # activation, so that signal, already delivered, is seen first
        self.loop.dispatch_signals()
        if self.stopping:
            return
        log.info("host: %s: blocked request interrupted by a %s event: dropping its "
                 "connection and attaching again", svc.name, ev.kind)
        self._disconnect(svc)
        svc.call = None
        svc.wanted = None
        svc.pending_event = ev
        try:
            self._connect(svc)
        except HostError as e:
            log.info("host: %s", e)
            self.stop(self.gone_status, "the kernel went away")
            return
        self._start_attach(svc, False)

    def _fire(self, w: Watch, value: Any = None) -> None:
        if not w.active:
            return
        if w.kind in (TIMER, CHILD):
            self._forget(w)
        self._deliver(w.proc.svc, Event(w, value))  # type: ignore[union-attr]

    # -- the kernel-like half of IProc: watch, unwatch, ksync ----------------
    def watch(self, proc: ExternalProc, kind: str, arg: Any) -> Watch:
        """A new event source for a hosted service (see :class:`IProc`)."""
        self._watch_seq += 1
        w = Watch(self._watch_seq, kind, arg, proc)  # type: ignore[arg-type]
        self._watches[w.id] = w
        proc.svc.watches[w.id] = w
        if kind == TIMER:
            self._res[w.id] = self.loop.call_later(arg, lambda: self._fire(w))
        elif kind == READABLE:
            try:
                self._res[w.id] = Readable.duplicate(self.loop, arg, lambda: self._fire(w))
            except OSError as e:
                log.warning("host: cannot watch descriptor %d: %s", arg, e.strerror)
                self._res[w.id] = self.loop.call_later(0.0, lambda: self._fire(w))
        elif kind == CHILD:
            try:
                pidfd = os.pidfd_open(arg)
            except OSError:
                self._res[w.id] = self.loop.call_later(
                    0.0, lambda: self._fire(w, reap_child(arg, None)))
            else:
                self._children[pidfd] = arg
                self._res[w.id] = ("child", pidfd)
                self.loop.add_reader(pidfd, lambda _ev: self._child_exited(w, pidfd))
        elif kind == SIGNAL:
            ids = self._sig_watches.setdefault(arg, [])
            if not ids:
                try:
                    self.loop.add_signal(arg, self._watched_signal)
                except (ValueError, OSError) as e:
                    log.warning("host: cannot watch signal %d: %s", arg, e)
            ids.append(w.id)
            self._res[w.id] = ("signal", arg)
        return w

    def unwatch(self, w: Watch) -> None:
        """Cancel *w*; its events not yet taken go."""
        if not w.active:
            return
        self._forget(w)
        svc = w.proc.svc  # type: ignore[union-attr]
        if svc.mailbox:
            svc.mailbox = deque(ev for ev in svc.mailbox if ev.watch is not w)

    def ksync(self, msg: KMsg, req: int) -> bool:
        raise KernelOnly("ksync() looks into the kernel's blocked list: it is not "
                         "available to a service running outside the kernel")

    def _forget(self, w: Watch) -> None:
        w.active = False
        self._watches.pop(w.id, None)
        w.proc.svc.watches.pop(w.id, None)  # type: ignore[union-attr]
        res = self._res.pop(w.id, None)
        if isinstance(res, Timer):
            self.loop.cancel(res)
        elif isinstance(res, Readable):
            res.close()
        elif isinstance(res, tuple) and res[0] == "child":
            self.loop.remove(res[1])  # the pidfd stays in _children until reaped
        elif isinstance(res, tuple) and res[0] == "signal":
            ids = self._sig_watches.get(res[1], [])
            if w.id in ids:
                ids.remove(w.id)
            if not ids:
                self._sig_watches.pop(res[1], None)
                try:
                    self.loop.remove_signal(res[1])
                except (ValueError, OSError):
                    pass

    def _child_exited(self, w: Watch, pidfd: int) -> None:
        pid = self._children.pop(pidfd, None)
        if pid is None:
            return
        self.loop.remove(pidfd)
        status = reap_child(pid, pidfd)
        os.close(pidfd)
        self._fire(w, status)

    def _watched_signal(self, signo: int) -> None:
        for wid in list(self._sig_watches.get(signo, ())):
            w = self._watches.get(wid)
            if w is not None:
                self._fire(w, signo)

    # ------------------------------------------------------------------
    # the end
    # ------------------------------------------------------------------
    def close(self) -> None:
        """Stop every service, detach, and kill and reap the children they
        watched that still run. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for svc in self.services:
            coro, svc.coro = svc.coro, None
            if coro is not None:
                try:
                    coro.close()
                except Exception:  # noqa: BLE001
                    pass
            for w in list(svc.watches.values()):
                self.unwatch(w)
            self._disconnect(svc, detach=True)
        self.waker.close()
        for pidfd, pid in list(self._children.items()):
            self.loop.remove(pidfd)
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                log.info("host: killed pid %d, started by a service and still running", pid)
            except OSError:
                pass  # already gone (or reaped by the service itself)
            try:
                os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            except (ChildProcessError, OSError):
                pass
            os.close(pidfd)
        self._children.clear()
        self.loop.close()


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m lamd.iprocs.host",
        description="Serve LAM services outside the kernel, as LAM's separate daemons "
                    "(lam-conf.separate): each attaches to this user's running lamd "
                    "with LAM's priority for it. Start lamd with --external NAME...")
    p.add_argument("names", nargs="+", metavar="NAME", help="services (e.g. echod versiond)")
    p.add_argument("--log-level", default=os.environ.get("LAMD_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("-sessionprefix", "--session-prefix", dest="prefix", metavar="DIR")
    p.add_argument("-sessionsuffix", "--session-suffix", dest="suffix", metavar="SUFFIX")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ..service import setup_logging
    from ..session import Session

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        names = parse_external(args.names)
    except BootConfigError as e:
        log.error("%s", e)
        return EXIT_USAGE
    if os.getuid() == 0:
        log.error("refusing to run as root (as LAM's daemons do): run as the session's user")
        return EXIT_FAILED
    session = Session.for_user(prefix=args.prefix, suffix=args.suffix)
    config = boot_config({"session": session.directory}, kernel_side=False)
    host = ServiceHost(session.socket_path, names, config)
    host.install_signal_handlers()
    return host.run()


__all__ = ["ServiceHost", "KernelOnly", "HostError", "ExternalProc", "exchange", "attach", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
