"""A blocking Python client of the LAM kernel (LAM's ``share/kreq/``).

Speaks exactly what ``liblam`` speaks: a raw ``struct kreq`` per request, a
raw ``struct kreply`` back, then the body. Every call has a timeout, and a
LAM error in a reply is raised as :class:`LamError`. Used by the tests and by
the project's own tools::

    with KernelClient.connect(session.socket_path) as k:
        k.attach()
        k.send(event=7, type=0, body=b"hello")
"""

from __future__ import annotations

import errno
import os
import socket
from ._dataclasses import dataclass

from .kernel.constants import (
    KNMSG, KPROBE, KQATTACH, KQDETACH, KQDOOM, KQDUMP, KQRECV, KQSEND, KQSR,
    KQSTATE, KQSURRENDER, PRCMD, strerror,
)
from .kernel.wire import KREPLY_SIZE, NMSG_SIZE, KMsg, KReply, KReq, NMsg


class LamError(OSError):
    """A kernel reply carried an error (a Unix errno or a LAM error number)."""

    def __init__(self, code: int, what: str = "", reply: KReply | None = None) -> None:
        super().__init__(code, f"{what}: {strerror(code)}" if what else strerror(code))
        self.code = code
        self.reply = reply


class KernelGone(ConnectionError):
    """The kernel closed the connection (LAM's ENOKERNEL)."""


@dataclass(slots=True)
class Message:
    """What a receive returns."""

    reply: KReply
    body: bytes
    nmsg: NMsg | None = None

    @property
    def type(self) -> int:
        return self.reply.type

    @property
    def event(self) -> int:
        return self.reply.event

    @property
    def length(self) -> int:
        return self.reply.length


class KernelClient:
    """One connection to the kernel socket, attached as one process."""

    def __init__(self, sock: socket.socket, timeout: float | None = 10.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.index = -1
        self.pid = os.getpid()
        self.signals = 0  # LAM signal bits delivered in replies

    @classmethod
    def connect(cls, path: str, timeout: float | None = 10.0) -> "KernelClient":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise
        return cls(s, timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "KernelClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw I/O -----------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise KernelGone("kernel closed the connection") from e

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise KernelGone(f"kernel closed the connection ({len(buf)} of {n} bytes read)")
            buf += chunk
        return bytes(buf)

    def request(self, req: KReq) -> KReply:
        """Write one request and read its reply (no body handling)."""
        self._write(req.pack())
        return self.reply()

    def reply(self) -> KReply:
        rep = KReply.unpack(self._read(KREPLY_SIZE))
        self.signals |= rep.signal
        return rep

    def _check(self, rep: KReply, what: str) -> KReply:
        if rep.reply:
            raise LamError(rep.reply, what, rep)
        return rep

    # -- kernel calls --------------------------------------------------------
    def attach(self, priority: int = PRCMD, pid: int | None = None) -> int:
        """kattach(): returns the process index the kernel gave us."""
        rep = self._check(self.request(KReq(req=KQATTACH, index=-1,
                                            pid=self.pid if pid is None else pid,
                                            priority=priority)), "attach")
        self.index = rep.index
        return rep.index

    def detach(self, pid: int = 0) -> None:
        """kdetach(): no reply; the kernel closes the connection."""
        self._write(KReq(req=KQDETACH, index=self.index, pid=pid or self.pid).pack())

    def send(self, event: int, type: int, body: bytes = b"", flags: int = 0,
             nmsg: NMsg | None = None, length: int | None = None) -> int:
        """ksend(): returns how many bytes the receiver took."""
        n = len(body) if length is None else length
        rep = self._check(self.request(KReq(req=KQSEND, index=self.index,
                                            msg=KMsg(event, type, n, flags))), "send")
        self._send_body(rep.length, body, flags, nmsg)
        return rep.length

    def _send_body(self, n: int, body: bytes, flags: int, nmsg: NMsg | None) -> None:
        data = body[:n]
        if len(data) < n:
            data += bytes(n - len(data))
        if flags & KNMSG:
            data = (nmsg or NMsg()).pack() + data
        if data:
            self._write(data)

    def recv(self, event: int, type: int = 0, length: int = 1 << 20, flags: int = 0) -> Message:
        """krecv(): blocks until a sender matches."""
        rep = self._check(self.request(KReq(req=KQRECV, index=self.index,
                                            msg=KMsg(event, type, length, flags))), "recv")
        return self._recv_body(rep, flags)

    def _recv_body(self, rep: KReply, flags: int) -> Message:
        if flags & KPROBE:
            return Message(rep, b"")
        hdr = None
        if flags & KNMSG:
            hdr = NMsg.unpack(self._read(NMSG_SIZE))
        return Message(rep, self._read(rep.length) if rep.length else b"", hdr)

    def sr(self, event: int, type: int, body: bytes, event2: int, type2: int = 0,
           length2: int = 1 << 20, flags: int = 0, flags2: int = 0,
           nmsg: NMsg | None = None) -> Message:
        """ksr(): send, then receive."""
        rep = self._check(self.request(KReq(
            req=KQSR, index=self.index, msg=KMsg(event, type, len(body), flags),
            msg2=KMsg(event2, type2, length2, flags2))), "sr (send half)")
        self._send_body(rep.length, body, flags, nmsg)
        rep2 = self._check(self.reply(), "sr (receive half)")
        return self._recv_body(rep2, flags2)

    def state(self, pid: int) -> KReply:
        """kstate(): state, priority, event, type, length of process *pid*."""
        return self._check(self.request(KReq(req=KQSTATE, index=self.index, pid=pid)), "state")

    def doom(self, pid: int, sigbits: int) -> KReply:
        """kdoom(): deliver LAM signal bits to process *pid*."""
        return self._check(self.request(KReq(req=KQDOOM, index=self.index, pid=pid,
                                             signal=sigbits)), "doom")

    def surrender(self) -> int:
        """What liblam's LAM_SIGUSR handler does: collect pending signal bits."""
        rep = self._check(self.request(KReq(req=KQSURRENDER, index=self.index)), "surrender")
        return rep.signal

    def dump(self) -> None:
        """KQDUMP: the daemon logs its process table."""
        self._check(self.request(KReq(req=KQDUMP, index=self.index)), "dump")


__all__ = ["KernelClient", "LamError", "KernelGone", "Message", "errno"]
