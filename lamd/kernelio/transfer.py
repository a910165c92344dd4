"""A client connection and a message body in flight (LAM's ``kio_transfer``).

The C kernel moves a body with a blocking loop of reads from the sender and
writes to the receiver through one 8 KiB buffer. Here a :class:`BodyMove`
holds a bounded buffer between two non-blocking sockets: the connection I/O
(:mod:`lamd.kernelio.kio`) fills it from the sender while there is room and drains
it to the receiver while it accepts, so neither side can hold the kernel up.

A large body (``IOLimits.splice_min`` bytes or more) goes through a pipe
instead of the buffer: ``splice`` from the sender's socket into the pipe,
then from the pipe into the receiver's socket, so its bytes never pass
through this process (on Linux >= 6.5 the pipe's pages are handed to the
receiver's socket as they are). The pipe is bounded the same way as the
buffer: no more than ``move_buffer`` bytes are spliced into it before they
have left (``piped`` counts them).
A :class:`Connection` is one client socket with what it owes and is owed.
"""

from __future__ import annotations

import _socket
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

#: how a body is spliced: never waiting on the pipe (the sockets are non-blocking too)
#: (os.splice is Python 3.10's; this mypy's typeshed does not know it yet)
SPLICE_FLAGS: int = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK  # type: ignore[attr-defined]


class BodyMove:
    """One message body in flight from a sender's socket (LAM's ``kio_transfer``).

    ``dst`` is the receiving :class:`Connection`, or None while collecting a
    body for an internal process (``token`` set) or dropping the rest of a body
    whose receiver has gone.

    A spliced body has a pipe (``pr``, ``pw``; -1 otherwise) holding
    ``piped`` bytes; its ``buf`` holds only the body bytes that came with the
    request (written first), and ``cap`` bounds the two together.
    """

    __slots__ = ("src", "dst", "skip", "remaining", "buf", "rpos", "wpos",
                 "token", "collected", "src_paused", "total", "sent", "pr", "pw", "piped", "cap")

    def __init__(self, src: "Connection", dst: "Connection | None", length: int,
                 skip: int, bufsize: int, token: Any = None) -> None:
        self.src = src
        self.dst = dst
        self.skip = skip
        self.remaining = length
        self.token = token
        self.collected: bytearray | None = bytearray() if token is not None else None
        self.buf = bytearray(max(1, min(bufsize, length))) if dst is not None else bytearray()
        self.rpos = 0
        self.wpos = 0
        self.src_paused = False
        self.total = length + skip  # bytes to read from the sender
        self.sent = 0  # body bytes written to the receiver
        self.pr = -1  # the pipe of a spliced body: its read end,
        self.pw = -1  # its write end,
        self.piped = 0  # and the body bytes in it
        self.cap = bufsize  # body bytes held at most (buffer and pipe)

    def unpipe(self, bufsize: int) -> None:
        """Stop splicing: what the pipe holds moves into the buffer, after what
        the buffer holds, and the pipe is closed; the buffer keeps room for
        up to *bufsize* bytes held."""
        pending = bytearray(memoryview(self.buf)[self.rpos:self.wpos])
        left = self.piped
        while left > 0:
            try:
                data = os.read(self.pr, left)
            except (BlockingIOError, InterruptedError):
                break  # cannot happen: the bytes counted are in the pipe
            if not data:
                break
            pending += data
            left -= len(data)
        self.close_pipe()
        n = len(pending)
        self.buf = bytearray(max(1, n, min(bufsize, n + self.remaining)))
        self.buf[:n] = pending
        self.rpos = 0
        self.wpos = n

    def close_pipe(self) -> None:
        """Close the pipe, dropping what it holds."""
        for fd in (self.pr, self.pw):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pr = self.pw = -1
        self.piped = 0

    @property
    def src_done(self) -> bool:
        return self.remaining == 0 and self.skip == 0

    def space(self) -> int:
        """How many more body bytes may be read from the sender now."""
        if self.skip:
            return self.skip
        if self.dst is None:
            return self.remaining
        if self.pr >= 0:
            return min(self.cap - self.piped - (self.wpos - self.rpos), self.remaining)
        return min(len(self.buf) - self.wpos, self.remaining)

    def feed(self, data: memoryview) -> int:
        """Take body bytes already read from the sender; returns how many."""
        used = 0
        if self.skip:
            k = min(self.skip, len(data))
            self.skip -= k
            used += k
            data = data[k:]
        if not data or self.remaining == 0:
            return used
        if self.dst is None:
            k = min(self.remaining, len(data))
            if self.collected is not None:
                self.collected += data[:k]
            self.remaining -= k
            return used + k
        k = min(len(self.buf) - self.wpos, self.remaining, len(data))
        self.buf[self.wpos:self.wpos + k] = data[:k]
        self.wpos += k
        self.remaining -= k
        return used + k


class Connection:
    """One client socket and what is queued on it."""

    __slots__ = ("sock", "fd", "pid", "uid", "pidfd", "inbuf", "move", "out", "queued",
                 "mask", "closing", "closed", "read_paused", "pending", "starttime", "slot",
                 "nonblock")

    def __init__(self, sock: _socket.socket, pid: int, uid: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.uid = uid
        self.pidfd: int | None = None
        self.inbuf = bytearray()
        self.move: BodyMove | None = None  # body being read from this client
        # bytearray | memoryview | BodyMove; a list, not a deque: it holds one or
        # two items at a time (replies join the last bytearray), and an empty
        # deque costs 760 bytes per idle client where a list costs 56
        self.out: list[Any] = []
        self.queued = 0
        self.mask = 0
        self.closing = False
        self.closed = False
        self.read_paused = False
        self.pending = False  # in the I/O layer's queue of clients with requests to serve
        self.starttime: int | None = None  # from /proc, once read (for lamd-clients)
        self.slot = -1  # its name in systemd's descriptor store (lamd.kernelio.fdstore)
        #: O_NONBLOCK set on the socket: only for splice, which has no
        #: MSG_DONTWAIT (every receive and send passes that flag instead, so
        #: an accepted socket needs no ioctl: issue 13, one system call less
        #: per attach)
        self.nonblock = False

    def make_nonblocking(self) -> None:
        """O_NONBLOCK on the socket, before its first splice."""
        if not self.nonblock:
            self.sock.setblocking(False)
            self.nonblock = True

    def __repr__(self) -> str:
        return f"<conn fd={self.fd} pid={self.pid}>"
