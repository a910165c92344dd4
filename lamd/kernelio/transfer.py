"""A client connection and a message body in flight (LAM's ``kio_transfer``).

The C kernel moves a body with a blocking loop of reads from the sender and
writes to the receiver through one 8 KiB buffer. Here a :class:`BodyMove`
holds a bounded buffer between two non-blocking sockets: the connection I/O
(:mod:`lamd.kernelio.kio`) fills it from the sender while there is room and drains
it to the receiver while it accepts, so neither side can hold the kernel up.
A :class:`Connection` is one client socket with what it owes and is owed.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any


class BodyMove:
    """One message body in flight from a sender's socket (LAM's ``kio_transfer``).

    ``dst`` is the receiving :class:`Connection`, or None while collecting a
    body for an internal process (``token`` set) or dropping the rest of a body
    whose receiver has gone.
    """

    __slots__ = ("src", "dst", "skip", "remaining", "buf", "rpos", "wpos",
                 "token", "collected", "src_paused", "total", "sent")

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

    @property
    def src_done(self) -> bool:
        return self.remaining == 0 and self.skip == 0

    def space(self) -> int:
        """How many more body bytes may be read from the sender now."""
        if self.skip:
            return self.skip
        if self.dst is None:
            return self.remaining
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
                 "mask", "closing", "closed", "read_paused", "pending", "starttime", "slot")

    def __init__(self, sock: "socket.socket | _socket.socket", pid: int, uid: int) -> None:
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

    def __repr__(self) -> str:
        return f"<conn fd={self.fd} pid={self.pid}>"
