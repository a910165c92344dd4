"""The kernel's I/O on an epoll loop (LAM's ``otb/sys/kernel/kernelio.c``).

:class:`KernelIO` accepts clients on the session's Unix stream socket, reads
fixed-size ``struct kreq`` requests, feeds them to the sans-IO
:class:`~lamd.kernel.Kernel` and carries out the actions it returns. Every
socket is non-blocking; nothing here ever waits on one peer:

* a message body moves between two clients through a :class:`BodyMove`, a
  bounded buffer (``move_buffer`` bytes): when it is full the sender is no
  longer read, when it is empty the receiver is no longer written, and every
  other client keeps being served (the C kernel blocks in ``kio_transfer``);
* replies are queued per connection and written as the socket accepts them;
  a client that stops reading its replies stops being read (``max_queued``);
* a peer that disappears mid-transfer is cleaned up on both sides: a
  receiver that vanishes has the rest of its body read and dropped so the
  sender carries on; a sender that vanishes leaves its receiver holding a
  reply whose body can never come, so that receiver is closed too.

Identity comes from the socket: SO_PEERCRED at accept gives the pid and uid
(a connection from another uid is refused), and a pidfd opened then is what
every signal goes through, so a pid reused after its client died is never
signalled.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import select
import signal
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from . import kernel as K
from .kernel import Kernel
from .kkill import KillFile, proc_starttime
from .transfer import BodyMove, Connection
from .wire import KREQ_SIZE, KReq

log = logging.getLogger("lamd.kernelio")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR | select.EPOLLHUP
_UCRED = struct.Struct("3i")
_RELISTEN = object()  # timer token: watch the listener again


@dataclass(slots=True)
class IOLimits:
    """Bounds that keep one client from costing the others."""

    move_buffer: int = 256 * 1024  # bytes held per body in flight
    max_queued: int = 1 << 20  # reply bytes queued to one client before we stop reading it
    requests_per_turn: int = 32  # requests served from one client before the next one's turn


class KernelIO:
    """The epoll loop around one :class:`Kernel` and one listening socket."""

    def __init__(self, kernel: Kernel, listener: socket.socket, *,
                 killfile: str | None = None, clients_file: str | None = None,
                 limits: IOLimits | None = None,
                 on_tick: Callable[["KernelIO"], None] | None = None,
                 tick_interval: float = 1.0) -> None:
        self.kernel = kernel
        self.listener = listener
        self.killfile = killfile
        self.clients_file = clients_file
        self.limits = limits or IOLimits()
        self.on_tick = on_tick
        self.tick_interval = tick_interval
        self.uid = os.getuid()
        self.ep = select.epoll()
        self.conns: dict[int, Connection] = {}
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.timers: list[tuple[float, int, Any]] = []
        self._timer_seq = itertools.count()
        self._fd_watches: dict[int, Any] = {}
        self._pending: deque[Connection] = deque()  # clients with unparsed requests
        self._dirty: set[Connection] = set()  # clients with output to flush
        self._killfile = (KillFile(killfile, clients_file or killfile + ".clients",
                                   kernel.kernel_pid or os.getpid())
                          if killfile else None)
        self.stopping = False
        self.exit_status = 0
        self.stop_reason = ""
        self.refused_uid = 0
        listener.setblocking(False)
        self.ep.register(listener.fileno(), EPOLLIN)
        self.handlers[listener.fileno()] = self._on_accept
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.ep.register(self._wake_r.fileno(), EPOLLIN)
        self.handlers[self._wake_r.fileno()] = self._on_wakeup
        self._signals: deque[int] = deque()
        self._starttime_due: list[Connection] = []  # attached, start time not yet read
        self._refusing = False  # out of descriptors, refusing clients
        self._spare_fd: int | None = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self._rbuf = bytearray(65536)  # requests are read into this, then decoded
        self._rview = memoryview(self._rbuf)

    # ------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP end the loop (kio_shutdown, kbbail); SIGPIPE is ignored."""
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        # SIGHUP too: LAM's tkill (lamwipe) hangs up the kill file's first pid,
        # the daemon, and the C lamd goes at once (kbbail)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)

    def _on_signal(self, signo: int, _frame: Any) -> None:
        self._signals.append(signo)

    def _on_wakeup(self, _ev: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._signals:
            signo = self._signals.popleft()
            self.stop(0, f"signal {signal.Signals(signo).name}")

    def request_stop(self, status: int = 0, reason: str = "requested") -> None:
        """Stop the loop from another thread (tests, embedding)."""
        self.stop(status, reason)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def stop(self, status: int = 0, reason: str = "") -> None:
        if not self.stopping:
            self.stopping = True
            self.exit_status = status
            self.stop_reason = reason

    def boot(self, table: Any, config: dict[str, Any] | None = None) -> None:
        self._apply(self.kernel.boot(table, config))
        self._flush_dirty()

    def run(self) -> int:
        """Serve until stopped (signal, haltd, or :meth:`stop`)."""
        self.write_killfile()
        next_tick = time.monotonic() + self.tick_interval
        poll = self.ep.poll
        handlers = self.handlers
        while not self.stopping:
            now = time.monotonic()
            if self._pending:
                timeout = 0.0
            else:
                deadline = next_tick
                if self.timers and self.timers[0][0] < deadline:
                    deadline = self.timers[0][0]
                timeout = max(0.0, deadline - now)
            try:
                events = poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in events:
                h = handlers.get(fd)
                if h is not None:
                    h(ev)
            if self._pending:
                self._serve_pending()
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, token = heapq.heappop(self.timers)
                if token is _RELISTEN:
                    self._relisten()
                else:
                    self._apply(self.kernel.wake(token))
            if self._dirty:
                self._flush_dirty()
            if self.kernel.killfile_dirty or self.kernel.killfile_removed:
                self.write_killfile()
            if now >= next_tick:
                next_tick = now + self.tick_interval
                if self._starttime_due:
                    self.record_starttimes()
                if self.on_tick is not None:
                    self.on_tick(self)
        return self.exit_status

    def shutdown(self, *, unlink_socket: str | None = None) -> None:
        """``kio_shutdown``: kkillall, close everything, remove session files."""
        for a in self.kernel.kkillall():
            self._signal(a, drop_on_failure=False)
        for c in list(self.conns.values()):
            self._close(c, notify_kernel=False)
        try:
            self.ep.unregister(self.listener.fileno())
        except (OSError, ValueError):
            pass
        self.listener.close()
        if self._killfile is not None:
            self._killfile.close()
        for path in (unlink_socket, self.killfile, self.clients_file):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("cannot remove %s: %s", path, e.strerror)
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        self.ep.close()

    # ------------------------------------------------------------------
    # kill file
    # ------------------------------------------------------------------
    def write_killfile(self, *, strict: bool = False) -> None:
        """``kkillrewrite``: the whole kill file from the process table.

        A failure is logged and the daemon carries on, unless *strict*
        (``kkillopen`` at start), where it is raised.
        """
        k = self.kernel
        removed = k.killfile_removed
        dirty = k.killfile_dirty
        k.killfile_dirty = False
        k.killfile_new.clear()
        k.killfile_removed = []
        if self._killfile is None:
            return
        try:
            if dirty or not removed:
                self._killfile.rewrite(k.killfile_entries())
            else:
                self._killfile.remove(removed, k.killfile_entries)
        except OSError as e:
            if strict:
                raise
            log.error("cannot write kill file %s: %s", self.killfile, e.strerror,
                      extra={"LAM_ERROR": e.errno})

    def append_killfile(self) -> None:
        """``kkillwrite``: list newly attached clients before they hear back."""
        k = self.kernel
        new, k.killfile_new = k.killfile_new, []
        if self._killfile is None or k.killfile_dirty:
            return  # the rewrite at the end of this turn lists them
        try:
            self._killfile.append(new)
        except OSError as e:
            log.error("cannot append to kill file %s: %s", self.killfile,
                      e.strerror or e, extra={"LAM_ERROR": e.errno})
            k.killfile_dirty = True

    # ------------------------------------------------------------------
    # accepting clients (kio_req's accept branch)
    # ------------------------------------------------------------------
    def _on_accept(self, _ev: int) -> None:
        """One client per event: epoll is level-triggered, the next comes next turn."""
        try:
            sock, _addr = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._out_of_descriptors(e)
            elif e.errno not in (errno.ECONNABORTED, errno.EPROTO):
                raise
            return
        self._admit(sock)

    def _out_of_descriptors(self, e: OSError) -> None:
        """No descriptor for a new client: refuse it at once, never spin.

        The spare descriptor kept for this is given up to accept the client
        and close it (liblam then reports ENOKERNEL instead of hanging in the
        backlog); if even that fails the listener is left alone for a moment.
        """
        if not self._refusing:
            log.error("out of file descriptors (%s) with %d clients attached: refusing new "
                      "clients (raise LimitNOFILE)", e.strerror, len(self.conns),
                      extra={"LAM_ERROR": e.errno})
        self._refusing = True
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                sock, _ = self.listener.accept()
                sock.close()
            except OSError:
                pass
            try:
                self._spare_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass
            return
        # not even that: stop watching the listener for a moment
        try:
            self.ep.unregister(self.listener.fileno())
        except OSError:
            pass
        self.handlers.pop(self.listener.fileno(), None)
        heapq.heappush(self.timers, (time.monotonic() + 0.1, next(self._timer_seq),
                                     _RELISTEN))

    def _relisten(self) -> None:
        fd = self.listener.fileno()
        if fd not in self.handlers:
            self.handlers[fd] = self._on_accept
            try:
                self.ep.register(fd, EPOLLIN)
            except OSError:
                pass

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            pid, uid, _gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        except OSError:
            sock.close()
            return
        if uid != self.uid:
            self.refused_uid += 1
            log.warning("refused a connection from pid %d uid %d (this daemon serves uid %d)",
                        pid, uid, self.uid, extra={"LAM_PID": pid, "LAM_UID": uid})
            sock.close()
            return
        c = Connection(sock, pid, uid)
        if pid > 0:
            try:
                c.pidfd = os.pidfd_open(pid)  # every signal to it goes through this
            except OSError:
                c.pidfd = None
        self.conns[c.fd] = c
        c.mask = EPOLLIN
        self.ep.register(c.fd, EPOLLIN)
        self.handlers[c.fd] = lambda ev, c=c: self._on_client(c, ev)
        self.kernel.connect(c, pid, uid)
        self._read(c)  # a client writes its attach right after connecting: it may be here

    # ------------------------------------------------------------------
    # reading: requests and bodies
    # ------------------------------------------------------------------
    def _on_client(self, c: Connection, ev: int) -> None:
        if c.closed:
            return
        if ev & EPOLLOUT:
            self._flush(c)
            if c.closed:
                return
        if ev & (EPOLLIN | EPOLLERR):
            self._read(c)

    def _read(self, c: Connection) -> None:
        m = c.move
        if m is not None:
            self._read_body(c, m)
            return
        try:
            n = c.sock.recv_into(self._rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c, "connection error")
            return
        if not n:
            if c.inbuf:
                log.warning("pid %d closed mid-request (%d of %d bytes)", c.pid,
                            len(c.inbuf), KREQ_SIZE, extra={"LAM_PID": c.pid})
            self._drop(c, "closed by client")
            return
        if c.inbuf:
            c.inbuf += self._rview[:n]
        elif n == KREQ_SIZE and not c.closing:
            # the common case: exactly one request
            self._handle(c, KReq.unpack(self._rbuf))
            return
        else:
            c.inbuf = bytearray(self._rview[:n])
        self._parse(c)

    def _parse(self, c: Connection) -> None:
        """Serve complete requests buffered for *c*, a bounded number per turn."""
        budget = self.limits.requests_per_turn
        buf = c.inbuf
        while (len(buf) >= KREQ_SIZE and budget > 0 and not c.closed
               and not c.closing and c.move is None and not c.read_paused):
            req = KReq.unpack(buf)
            del buf[:KREQ_SIZE]
            budget -= 1
            self._handle(c, req)
        if c.closed:
            return
        if c.move is None and len(c.inbuf) >= KREQ_SIZE and not c.closing and not c.read_paused:
            self._pending.append(c)

    def _serve_pending(self) -> None:
        for _ in range(len(self._pending)):
            c = self._pending.popleft()
            if not c.closed and c.move is None:
                self._parse(c)

    def _handle(self, c: Connection, req: KReq) -> None:
        k = self.kernel
        actions = k.request(c, req)
        new = k.killfile_new
        if new:
            # a new client is listed before it hears back (kkillwrite)
            if k.killfile_dirty:
                self.write_killfile()
            else:
                self.append_killfile()
        self._apply(actions)
        if new:
            self._starttime_due.append(c)
        if self._dirty:
            self._flush_dirty()

    def record_starttimes(self) -> None:
        """The start times of clients attached since the last tick, for lamd-clients.

        Off the attach path on purpose: a tool that attaches, works and
        detaches within a tick costs no /proc read at all. Until its line is
        written, tkill still refuses a pid that started after the kill file
        was last written (see :mod:`lamd.tkill`).
        """
        due, self._starttime_due = self._starttime_due, []
        rows = []
        for c in due:
            p = self.kernel.proc_of(c)
            if p is None or c.closed:
                continue
            p.ident = proc_starttime(c.pid)
            rows.append((c.pid, p.ident))
        if rows and self._killfile is not None:
            try:
                self._killfile.append_clients(rows)
            except OSError as e:
                log.error("cannot append to %s: %s", self.clients_file, e.strerror,
                          extra={"LAM_ERROR": e.errno})

    def _read_body(self, c: Connection, m: BodyMove) -> None:
        """Read body bytes from sender *c* into its :class:`BodyMove`."""
        space = m.space()
        if space <= 0:
            self._pause_read(c, True)
            return
        try:
            if m.dst is not None and not m.skip and len(m.buf) - m.wpos < m.remaining:
                # a large body: straight into its buffer, no further than it holds
                view = memoryview(m.buf)[m.wpos:m.wpos + space]
                n = c.sock.recv_into(view)
                if n:
                    m.wpos += n
                    m.remaining -= n
            else:
                # the rest of the body fits: read it and whatever the client wrote
                # after it (its next request, usually) in one go
                n = c.sock.recv_into(self._rbuf)
                if n:
                    used = m.feed(self._rview[:n])
                    if used < n:
                        c.inbuf += self._rview[used:n]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c, "connection error mid-body")
            return
        if n == 0:
            log.warning("pid %d closed in the middle of a message body (%d bytes missing)",
                        c.pid, m.remaining + m.skip, extra={"LAM_PID": c.pid})
            self._drop(c, "closed mid-body")
            return
        self._after_src_progress(m)

    def _after_src_progress(self, m: BodyMove) -> None:
        c = m.src
        if m.src_done:
            self._src_finished(m)
        elif m.dst is not None and m.space() <= 0:
            self._pause_read(c, True)
            m.src_paused = True
        if m.dst is not None:
            self._flush(m.dst)

    def _src_finished(self, m: BodyMove) -> None:
        c = m.src
        c.move = None
        if m.src_paused or c.read_paused:
            m.src_paused = False
            self._pause_read(c, False)
        if m.token is not None:
            data = bytes(m.collected or b"")
            m.collected = None
            self._apply(self.kernel.body_arrived(m.token, data))
        if c.inbuf and not c.closed:
            self._pending.append(c)

    def _start_move(self, src: Connection, dst: Connection | None, length: int,
                    skip: int, token: Any = None) -> BodyMove:
        m = BodyMove(src, dst, length, skip, self.limits.move_buffer, token)
        src.move = m
        if src.inbuf:
            used = m.feed(memoryview(src.inbuf))
            del src.inbuf[:used]
        if dst is not None:
            dst.out.append(m)
            self._dirty.add(dst)
        if m.src_done:
            self._src_finished(m)
        elif m.space() <= 0:
            self._pause_read(src, True)
            m.src_paused = True
        else:
            # the sender has had its reply for a moment: its body may be here
            self._read_body(src, m)
        return m

    # ------------------------------------------------------------------
    # writing
    # ------------------------------------------------------------------
    def _queue(self, c: Connection, data: bytes) -> None:
        if c.closed:
            return
        out = c.out
        if not out and not c.closing:
            # nothing ahead of it: write straight through (the common case)
            try:
                n = c.sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._dirty.add(c)  # the flush will find the error and drop it
                n = 0
            if n == len(data):
                return
            data = data[n:]
        if out and type(out[-1]) is bytearray:
            out[-1] += data
        else:
            out.append(bytearray(data))
        c.queued += len(data)
        self._dirty.add(c)
        if c.queued > self.limits.max_queued and not c.read_paused:
            log.warning("pid %d does not read its replies (%d bytes queued, limit %d): "
                        "not reading its requests until it does", c.pid, c.queued,
                        self.limits.max_queued, extra={"LAM_PID": c.pid})
            self._pause_read(c, True)

    def _flush_dirty(self) -> None:
        while self._dirty:
            c = self._dirty.pop()
            if not c.closed:
                self._flush(c)

    def _flush(self, c: Connection) -> None:
        """Write what is queued for *c* until the socket would block."""
        out = c.out
        send = c.sock.send
        try:
            while out:
                item = out[0]
                if type(item) is BodyMove:
                    m = item
                    if m.rpos < m.wpos:
                        n = send(memoryview(m.buf)[m.rpos:m.wpos])
                        m.rpos += n
                        if m.rpos < m.wpos:
                            break
                    m.rpos = m.wpos = 0
                    if m.src_done:
                        out.popleft()
                        continue
                    if m.src_paused and m.src.move is m:
                        m.src_paused = False
                        self._pause_read(m.src, False)
                    break
                n = send(item)
                c.queued -= n
                if n < len(item):
                    out[0] = memoryview(item)[n:] if type(item) is bytearray else item[n:]
                    break
                out.popleft()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(c, "connection error while writing")
            return
        if c.closed:
            return
        if c.closing and not out:
            self._close(c, notify_kernel=True)
            return
        want_out = bool(out) and not (type(out[0]) is BodyMove and out[0].rpos >= out[0].wpos)
        if c.read_paused and c.queued <= self.limits.max_queued // 2 and c.move is None:
            self._pause_read(c, False)
            if c.inbuf:
                self._pending.append(c)
        self._set_mask(c, want_out=want_out)

    def _set_mask(self, c: Connection, *, want_out: bool) -> None:
        """Listen for what *c* needs; nothing at all while it is paused, so a
        hung-up peer (EPOLLHUP is always reported) cannot make the loop spin."""
        mask = (0 if c.read_paused or c.closing else EPOLLIN) | (EPOLLOUT if want_out else 0)
        if mask == c.mask:
            return
        try:
            if mask == 0:
                self.ep.unregister(c.fd)
            elif c.mask == 0:
                self.ep.register(c.fd, mask)
            else:
                self.ep.modify(c.fd, mask)
        except OSError:
            pass
        c.mask = mask

    def _pause_read(self, c: Connection, paused: bool) -> None:
        if c.read_paused != paused:
            c.read_paused = paused
            want_out = bool(c.mask & EPOLLOUT)
            self._set_mask(c, want_out=want_out)

    # ------------------------------------------------------------------
    # carrying out the kernel's actions
    # ------------------------------------------------------------------
    def _apply(self, actions: list[Any]) -> None:
        for a in actions:
            t = type(a)
            if t is K.Reply:
                self._queue(a.conn, a.reply.pack())
            elif t is K.Transfer:
                src, dst = a.src, a.dst
                if dst.closed:
                    dst = None
                if a.pad and dst is not None:
                    self._queue(dst, bytes(a.pad))
                if src.closed:
                    if dst is not None:
                        self._drop(dst, "its sender vanished before the body")
                    continue
                self._start_move(src, dst, a.length, a.skip)
            elif t is K.SendBody:
                self._queue(a.conn, a.data)
            elif t is K.CollectBody:
                if a.src.closed:
                    self._apply(self.kernel.body_failed(a.token))
                else:
                    self._start_move(a.src, None, a.length, 0, a.token)
            elif t is K.Signal:
                self._signal(a)
            elif t is K.Close:
                c = a.conn
                if not c.closed:
                    c.closing = True
                    self._dirty.add(c)
            elif t is K.WatchTimeout:
                heapq.heappush(self.timers, (time.monotonic() + a.delay,
                                             next(self._timer_seq), a.token))
            elif t is K.WatchReadable:
                self._watch_fd(a.fd, a.token)
            elif t is K.Halt:
                self.stop(a.status, a.reason)

    def _signal(self, a: K.Signal, drop_on_failure: bool = True) -> None:
        c: Connection = a.conn
        if c.closed or c.pidfd is None or c.pid == os.getpid():
            return  # never signal ourselves (an embedded client, in tests)
        try:
            signal.pidfd_send_signal(c.pidfd, a.signo)
        except ProcessLookupError:
            if drop_on_failure:
                self._drop(c, "process gone")
        except OSError as e:
            log.warning("cannot signal pid %d: %s", c.pid, e.strerror,
                        extra={"LAM_PID": c.pid, "LAM_ERROR": e.errno})

    def _watch_fd(self, fd: int, token: Any) -> None:
        def fire(_ev: int) -> None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass
            self.handlers.pop(fd, None)
            self._apply(self.kernel.wake(token))
        self.handlers[fd] = fire
        try:
            self.ep.register(fd, EPOLLIN)
        except OSError:
            self.handlers.pop(fd, None)
            self._apply(self.kernel.wake(token))

    # ------------------------------------------------------------------
    # losing clients
    # ------------------------------------------------------------------
    def _drop(self, c: Connection, why: str) -> None:
        """*c* is gone or unusable: clean up both sides of what it was part of."""
        if c.closed:
            return
        log.debug("dropping pid %d: %s", c.pid, why, extra={"LAM_PID": c.pid})
        self._close(c, notify_kernel=True)

    def _close(self, c: Connection, *, notify_kernel: bool) -> None:
        if c.closed:
            return
        c.closed = True
        self.conns.pop(c.fd, None)
        if self._refusing:
            self._refusing = False
            log.info("a client left: accepting clients again (%d attached)", len(self.conns))
            if self._spare_fd is None:
                try:
                    self._spare_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    pass
            self._relisten()
        self.handlers.pop(c.fd, None)  # closing the socket takes it out of epoll
        m = c.move
        c.move = None
        victims: list[Connection] = []
        if m is not None:
            if m.dst is not None and not m.dst.closed:
                victims.append(m.dst)  # its body can never be completed
            elif m.token is not None and notify_kernel:
                self._apply(self.kernel.body_failed(m.token))
        for item in c.out:
            if type(item) is BodyMove and item.src.move is item:
                # we were the receiver: let the sender finish, dropping the rest
                item.dst = None
                item.buf = bytearray()
                item.rpos = item.wpos = 0
                if item.src_paused:
                    item.src_paused = False
                    self._pause_read(item.src, False)
        c.out.clear()
        try:
            c.sock.close()
        except OSError:
            pass
        if c.pidfd is not None:
            try:
                os.close(c.pidfd)
            except OSError:
                pass
            c.pidfd = None
        if notify_kernel:
            self._apply(self.kernel.disconnect(c))
        for v in victims:
            log.warning("closing pid %d: its sender pid %d vanished mid-body", v.pid, c.pid,
                        extra={"LAM_PID": v.pid})
            self._close(v, notify_kernel=notify_kernel)
