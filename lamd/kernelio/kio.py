"""Connection I/O: reading requests and bodies, writing replies (the
per-client half of LAM's ``kernelio.c``: ``kio_req``, ``kio_reply``,
``kio_transfer``).

Every socket is non-blocking and nothing here waits on one peer:

* requests are read into one buffer and decoded; a client is served at most
  ``requests_per_turn`` requests before the next client's turn;
* a message body moves between two clients through a
  :class:`~lamd.kernelio.transfer.BodyMove`, a bounded buffer (or, for a
  large body, a pipe the sender's socket is spliced into and the receiver's
  socket from, bounded the same way): when it is full the sender is no longer read, when
  it is empty the receiver is no longer written, and every other client
  keeps being served;
* replies are written straight through and queued when the socket is full;
  a client that stops reading its replies stops being read (``max_queued``);
* a peer that disappears mid-transfer is cleaned up on both sides: a
  receiver that vanishes has the rest of its body read and dropped so the
  sender carries on; a sender that vanishes leaves its receiver holding a
  reply whose body can never come, so that receiver is closed too.
"""

from __future__ import annotations

import errno
import fcntl
import _socket
import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Final

from .. import lazylog
from .._static import trait
from ..kernel.wire import KREQ_SIZE, KReq
from .fdstore import CrashKeeper
from .kiobase import KIOBase
from .loop import EPOLLERR, EPOLLIN, EPOLLOUT
from .transfer import SPLICE_FLAGS, BodyMove, Connection

#: every receive and send on a client's socket: it never blocks, whatever
#: the socket's mode (O_NONBLOCK is set only for splice)
_DONTWAIT: Final[int] = _socket.MSG_DONTWAIT

log = lazylog.getLogger("lamd.kernelio")

#: what ``splice`` says where it cannot be used (an old kernel, a socket
#: family without it): bodies are copied from then on
_NO_SPLICE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
#: empty pipes kept for the next spliced body (two descriptors each)
_SPARE_PIPES = 4


@trait
class ConnIO(KIOBase):
    """The part of :class:`~lamd.kernelio.KernelIO` that talks to clients."""

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
        if self.handing_over:
            # a re-exec is coming: what the client writes stays in its socket
            self._pause_read(c, True)
            return
        if c.pending:
            # requests are already buffered for its next turn: leave the rest in
            # the socket, so a flooder's backlog stays bounded and it is slowed
            return
        crash = self.crash
        if crash is not None and crash.idle(c):
            self._read_into_record(c, crash)
            return
        try:
            n = c.sock.recv_into(self._rbuf, 0, _DONTWAIT)
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

    def _read_into_record(self, c: Connection, crash: CrashKeeper) -> None:
        """An idle client's next request, received straight into its crash
        record (:mod:`.fdstore`): a SIGKILL at any moment finds it there."""
        view = crash.arm(c)
        try:
            n = c.sock.recv_into(view, KREQ_SIZE, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c, "connection error")
            return
        if not n:
            self._drop(c, "closed by client")
            return
        if n == KREQ_SIZE and not c.closing:
            self._handle(c, KReq.unpack(view), True)
            return
        c.inbuf = bytearray(view[:n])
        crash.settle_one(c)  # part of a request: in this process only, and said so
        self._parse(c)

    def _parse(self, c: Connection) -> None:
        """Serve complete requests buffered for *c*, a bounded number per turn."""
        budget = self.limits.requests_per_turn
        buf = c.inbuf
        while (len(buf) >= KREQ_SIZE and budget > 0 and not c.closed
               and not c.closing and c.move is None and not c.read_paused
               and not self.handing_over):
            req = KReq.unpack(buf)
            del buf[:KREQ_SIZE]
            budget -= 1
            self._handle(c, req)
        if c.closed:
            return
        if (c.move is None and len(c.inbuf) >= KREQ_SIZE and not c.closing
                and not c.read_paused and not self.handing_over):
            self._mark_pending(c)

    def _mark_pending(self, c: Connection) -> None:
        """*c* has requests buffered: serve them this turn, once (the budget of
        ``requests_per_turn`` holds because a connection is queued at most once)."""
        if not c.pending:
            c.pending = True
            self._pending.append(c)

    def _serve_pending(self) -> None:
        pending = self._pending
        for _ in range(len(pending)):
            c = pending.popleft()
            c.pending = False
            if not c.closed and c.move is None:
                self._parse(c)

    def _handle(self, c: Connection, req: KReq, in_record: bool = False) -> None:
        crash = self.crash
        if crash is not None:
            crash.pending(c, req, in_record)  # a crash from now on: made again for it
        self._apply(self.kernel.request(c, req))
        if self._dirty:
            self._flush_dirty()
        if crash is not None and crash.due:
            crash.settle()

    def _read_body(self, c: Connection, m: BodyMove) -> None:
        """Read body bytes from sender *c* into its :class:`BodyMove`."""
        space = m.space()
        if space <= 0:
            self._pause_read(c, True)
            return
        if self.crash is not None and m.dst is not None:
            self.crash.reading(m)
        try:
            if m.pr >= 0 and m.dst is not None and not m.skip:
                # a spliced body: into its pipe, no further than it may hold
                c.make_nonblocking()
                try:
                    n = os.splice(  # type: ignore[attr-defined]
                        c.fd, m.pw, space, None, None, SPLICE_FLAGS)
                except BlockingIOError:
                    if m.piped > 0:
                        # the pipe may be full (a pipe holds a bounded number
                        # of pieces, however small): wait until it is emptied,
                        # not for the sender, who may be readable all along
                        self._pause_read(c, True)
                        m.src_paused = True
                    raise
                except OSError as e:
                    if e.errno not in _NO_SPLICE:
                        raise
                    self._cannot_splice(m, e)
                    self._read_body(c, m)  # copied this time
                    return
                if n:
                    m.piped += n
                    m.remaining -= n
            elif m.dst is not None and not m.skip and len(m.buf) - m.wpos < m.remaining:
                # a large body: straight into its buffer, no further than it holds
                view = memoryview(m.buf)[m.wpos:m.wpos + space]
                n = c.sock.recv_into(view, 0, _DONTWAIT)
                if n:
                    m.wpos += n
                    m.remaining -= n
            else:
                # the rest of the body fits: read it and whatever the client wrote
                # after it (its next request, usually) in one go
                n = c.sock.recv_into(self._rbuf, 0, _DONTWAIT)
                if n:
                    used = m.feed(self._rview[:n])
                    if used < n:
                        c.inbuf += self._rview[used:n]
        except (BlockingIOError, InterruptedError):
            if self.crash is not None and m.dst is not None:
                self.crash.consumed(m)  # nothing read after all
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
        if self.crash is not None and m.dst is not None:
            self.crash.consumed(m)
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
            self._collect_deadlines.pop(m, None)
            data = bytes(m.collected or b"")
            m.collected = None
            self._apply(self.kernel.body_arrived(m.token, data))
        if self.crash is not None:
            self.crash.settle_one(c)
        if c.inbuf and not c.closed:
            self._mark_pending(c)

    def _start_move(self, src: Connection, dst: Connection | None, length: int,
                    skip: int, token: Any = None) -> BodyMove:
        bufsize = self.limits.move_buffer
        # body bytes that came with the request: the buffer takes them all (they
        # are in memory already; a buffer smaller than them would leave the
        # rest in inbuf, behind what is read next), then shrinks to bufsize
        inbody = min(length, max(0, len(src.inbuf) - skip))
        pipe = None
        if (dst is not None and not skip and length >= self.limits.splice_min
                and self._splice_ok and length > inbody):
            pipe = self._take_pipe()
        if pipe is not None:
            # spliced: the buffer holds only the body bytes that came with the request
            m = BodyMove(src, dst, length, skip, max(1, inbody), token)
            m.pr, m.pw = pipe
        else:
            m = BodyMove(src, dst, length, skip, max(bufsize, inbody), token)
        m.cap = bufsize
        src.move = m
        crash = self.crash
        if dst is None:
            crash = None  # a body to an internal process: in this process only
        elif crash is not None:
            crash.moving(src, dst, m)  # before a byte of it moves
        if src.inbuf:
            used = m.feed(memoryview(src.inbuf))
            del src.inbuf[:used]
            if crash is not None and used:
                crash.consumed(m)
        if dst is not None:
            dst.out.append(m)
            self._dirty[dst] = None
        if m.src_done:
            self._src_finished(m)
        elif m.space() <= 0:
            self._pause_read(src, True)
            m.src_paused = True
        elif inbody:
            # the sender wrote body bytes with its request, not waiting for
            # the reply: the rest may be here too
            self._read_body(src, m)
        # else the sender writes its body once it has the reply just queued
        # (liblam's nsend waits for it): epoll reports the body when it comes;
        # a read now finds nothing (a receive and an exception per nsend)
        if token is not None and not m.src_done and not src.closed:
            # an internal receiver (bufferd, ...) waits for this body and
            # nothing else: a sender that stops half-way is given a deadline
            timeout = self.limits.collect_timeout
            deadline = time.monotonic() + timeout
            self._collect_deadlines[m] = deadline
            t = self._collect_timer
            if t is None or t.cancelled or t.when > deadline:
                if t is not None:
                    self.loop.cancel(t)
                self._collect_timer = self.loop.call_later(timeout, self._collect_check)
        return m

    def _collect_check(self) -> None:
        """The one timer of all collect deadlines (not one per body: a routed
        message would make and cancel one each) fired: drop the senders whose
        deadline has passed, then wait for the next deadline."""
        deadlines = self._collect_deadlines
        now = time.monotonic()
        for m in [m for m, d in deadlines.items() if d <= now]:
            self._collect_overdue(m)  # may start the next collect (and a timer)
        t = self._collect_timer
        if t is not None and t.cancelled:  # the one firing now (a fired timer is cancelled)
            t = self._collect_timer = None
        if deadlines:
            first = min(deadlines.values())
            if t is None or t.when > first:
                if t is not None:
                    self.loop.cancel(t)
                self._collect_timer = self.loop.call_later(max(0.0, first - now),
                                                           self._collect_check)

    def _collect_overdue(self, m: BodyMove) -> None:
        """A sender did not finish a body an internal process waits for within
        ``collect_timeout``: it is dropped (its connection closed: liblam's
        ENOKERNEL, never silence), so that the internal process, which serves
        every client of the session, receives again."""
        self._collect_deadlines.pop(m, None)
        c = m.src
        if c.closed or c.move is not m:
            return
        log.warning("pid %d did not write the message body an internal process waits for "
                    "within %g s (%d bytes missing): dropping it", c.pid,
                    self.limits.collect_timeout, m.remaining + m.skip,
                    extra={"LAM_PID": c.pid})
        self._drop(c, "stalled mid-body to an internal process")

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
                n = c.sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._dirty[c] = None  # the flush will find the error and drop it
                n = 0
            if n == len(data):
                return
            data = data[n:]
        if out and type(out[-1]) is bytearray:
            out[-1] += data
        else:
            out.append(bytearray(data))
        c.queued += len(data)
        self._dirty[c] = None
        if c.queued > self.limits.max_queued and not c.read_paused:
            log.warning("pid %d does not read its replies (%d bytes queued, limit %d): "
                        "not reading its requests until it does", c.pid, c.queued,
                        self.limits.max_queued, extra={"LAM_PID": c.pid})
            self._pause_read(c, True)

    def _flush_dirty(self) -> None:
        dirty = self._dirty
        while dirty:
            batch = list(dirty)  # in order: first come, first served
            dirty.clear()
            for c in batch:
                if not c.closed:
                    self._flush(c)

    def _flush(self, c: Connection) -> None:
        """Write what is queued for *c* until the socket would block.

        A reply followed by its body leaves with the body's first bytes in one
        ``sendmsg``; until the body's first bytes are here the reply is held.
        """
        out = c.out
        sock = c.sock
        held = False
        try:
            while out:
                item = out[0]
                if type(item) is BodyMove:
                    m = item
                    if m.rpos < m.wpos:
                        n = sock.send(memoryview(m.buf)[m.rpos:m.wpos], _DONTWAIT)
                        m.rpos += n
                        m.sent += n
                        if self.crash is not None:
                            self.crash.sent(m, c)
                        if m.rpos < m.wpos:
                            break
                    m.rpos = m.wpos = 0
                    if len(m.buf) > m.cap or (m.pr >= 0 and m.buf):
                        # it took more than it may hold (body bytes that came with
                        # the request), or those were a spliced body's: no longer
                        m.buf = bytearray(0 if m.pr >= 0 else max(1, min(m.cap, m.remaining)))
                    if m.piped > 0:
                        c.make_nonblocking()
                        try:
                            n = os.splice(  # type: ignore[attr-defined]
                                m.pr, c.fd, m.piped, None, None, SPLICE_FLAGS)
                        except OSError as e:  # EAGAIN included: the outer handler's
                            if e.errno not in _NO_SPLICE:
                                raise
                            self._cannot_splice(m, e)
                            continue  # copied this time
                        m.piped -= n
                        m.sent += n
                        if self.crash is not None:
                            self.crash.sent(m, c)
                        if m.piped > 0:
                            break
                    if m.src_done:
                        del out[0]
                        if m.pr >= 0:
                            self._give_pipe(m)
                        if self.crash is not None:
                            self.crash.delivered(m)
                        continue
                    if m.src_paused and m.src.move is m:
                        m.src_paused = False
                        self._pause_read(m.src, False)
                    break
                if len(out) > 1 and type(out[1]) is BodyMove:
                    m = out[1]
                    if m.rpos < m.wpos:
                        # the reply and the body's first bytes: one sendmsg
                        k = len(item)
                        n = sock.sendmsg([item, memoryview(m.buf)[m.rpos:m.wpos]], [], _DONTWAIT)
                        if n < k:
                            c.queued -= n
                            out[0] = memoryview(item)[n:] if type(item) is bytearray else item[n:]
                            break
                        c.queued -= k
                        del out[0]
                        m.rpos += n - k
                        m.sent += n - k
                        if self.crash is not None:
                            self.crash.sent(m, c)
                        continue  # the rest of the body, as above
                    if m.remaining > 0 and m.src.move is m and m.piped == 0:
                        held = True  # no body byte yet: the reply waits for it
                        break
                n = sock.send(item, _DONTWAIT)
                c.queued -= n
                if n < len(item):
                    out[0] = memoryview(item)[n:] if type(item) is bytearray else item[n:]
                    break
                del out[0]
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
        if not out and self.crash is not None:
            self.crash.settle_one(c)
        want_out = bool(out) and not held and not (type(out[0]) is BodyMove
                                                   and out[0].rpos >= out[0].wpos
                                                   and out[0].piped == 0)
        if c.read_paused and c.queued <= self.limits.max_queued // 2 and c.move is None:
            self._pause_read(c, False)
            if c.inbuf:
                self._mark_pending(c)
        self._set_mask(c, want_out=want_out)

    def _set_mask(self, c: Connection, *, want_out: bool) -> None:
        """Listen for what *c* needs; nothing at all while it is paused, so a
        hung-up peer (EPOLLHUP is always reported) cannot make the loop spin."""
        mask = (0 if c.read_paused or c.closing else EPOLLIN) | (EPOLLOUT if want_out else 0)
        if mask == c.mask:
            return
        try:
            if mask == 0:
                self.loop.ep.unregister(c.fd)
            elif c.mask == 0:
                self.loop.ep.register(c.fd, mask)
            else:
                self.loop.ep.modify(c.fd, mask)
        except OSError:
            pass
        c.mask = mask

    def _pause_read(self, c: Connection, paused: bool) -> None:
        if c.read_paused != paused:
            c.read_paused = paused
            want_out = bool(c.mask & EPOLLOUT)
            self._set_mask(c, want_out=want_out)

    # ------------------------------------------------------------------
    # pipes of spliced bodies
    # ------------------------------------------------------------------
    def _take_pipe(self) -> tuple[int, int] | None:
        """An empty pipe holding ``move_buffer`` bytes, or None (then the body
        is copied: out of descriptors, or over the user's allowance of pipe
        pages, ``/proc/sys/fs/pipe-user-pages-soft``, where a new pipe gets
        two pages and cannot grow)."""
        spare = self._pipes
        if spare:
            return spare.pop()
        try:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.limits.move_buffer)
        except OSError:
            os.close(r)
            os.close(w)
            return None
        return r, w

    def _give_pipe(self, m: BodyMove) -> None:
        """*m* is all written: keep its (empty) pipe for the next body."""
        if m.piped == 0 and len(self._pipes) < _SPARE_PIPES:
            self._pipes.append((m.pr, m.pw))
            m.pr = m.pw = -1
        else:
            m.close_pipe()

    def _cannot_splice(self, m: BodyMove, e: OSError) -> None:
        """``splice`` is refused here: copy *m* and every body after it."""
        if self._splice_ok:
            log.warning("cannot splice message bodies (%s): copying them instead", e.strerror)
        self._splice_ok = False
        m.unpipe(self.limits.move_buffer)
        self._close_spare_pipes()

    def _close_spare_pipes(self) -> None:
        """Close the empty pipes kept for the next spliced bodies."""
        for r, w in self._pipes:
            os.close(r)
            os.close(w)
        self._pipes.clear()

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
        if self.crash is not None:
            self.crash.drop(c)
        if self._refusing:
            self._accepting_again()
        self.loop.handlers.pop(c.fd, None)  # closing the socket takes it out of epoll
        m = c.move
        c.move = None
        victims: list[Connection] = []
        if m is not None:
            if m.dst is not None and not m.dst.closed:
                victims.append(m.dst)  # its body can never be completed
            elif m.token is not None:
                # the kernel's disconnect below ends the collect: after it has
                # forgotten this sender, so that the receive the internal
                # process makes again cannot meet one more send of it
                self._collect_deadlines.pop(m, None)
        for item in c.out:
            if type(item) is BodyMove and item.pr >= 0:
                item.close_pipe()  # what it holds has nowhere to go
            if type(item) is BodyMove and self.crash is not None:
                self.crash.delivered(item)  # nobody to write the rest to
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
