"""iod: remote stdio forwarding (LAM's ``otb/sys/iod/``).

A process whose tool is on another node gets ``RTF_IO`` without
``RTF_PFDIO``; before exec, ``kcreatev`` attaches its stdout and stderr to
iod with ``liosattach`` (``liofdattach`` for a pty master): connect to
``<session>/lam-io-socket``, write ``int4 finfo[3]`` = {node, tfd, passfd}
(native order), then either the connection itself carries the data or, with
``passfd``, one descriptor follows (``sfh_send_fd``: a byte with
``SCM_RIGHTS``, a one-byte handshake back) and the connection closes.  iod
reads each stream and forwards it to filed on ``node`` as ``FQWRITE`` to
``tfd`` (``_lam_rfwrite`` with ``LAM_O_1WAY``: no reply); at end of file it
sends ``FQCLOSE`` for a tfd above 2 (``src_event`` EVIOD, reply read and
ignored) and forgets the stream.

Here: the same, without ever blocking on a client.  Connections are
non-blocking and watched through the wait API; a client has
:data:`HEAD_TIMEOUT` seconds to send its ``finfo`` (and descriptor), then is
dropped; at most ``config["iod_max_streams"]`` (:data:`MAX_STREAMS`)
streams at once (more are accepted and closed at once, with a log line).
Output for another node is ``nsend`` through the router's datalink, as
``_lam_rfwrite`` does, and so is the FQCLOSE; for a node the router does
not know it is read and dropped with one log line per stream. On one node the stock tools never use iod
(local processes get the tool's descriptors: ``RTF_PFDIO``); a process
created with ``RTF_IO`` but not ``RTF_PFDIO`` (another client of kenyad)
writes through iod to this node's filed.

The socket is made when iod starts (a stale one, left by a crash, is
replaced) and removed when it ends, if it is still iod's.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import socket
from .._dataclasses import dataclass

from ..kernel.constants import EVFILED, EVIOD, MAXNMSGLEN
from ..kernel.kiproc import Event, IProc, Watch
from ..kernel.wire import NMsg
from ..iprocs.nreq import NoRoute, nsend
from .common import next_request, node_id, sweep_event
from .wire import FQCLOSE, FQWRITE, LAM_IOSOCKET, FReq, IodForward

log = logging.getLogger("lamd.jobs.iod")

#: Seconds a new connection has to send its forwarding information.
HEAD_TIMEOUT = 10.0
#: Streams forwarded at once.
MAX_STREAMS = 1024
#: Seconds iod waits for filed's answer to an FQCLOSE.
CLOSE_TIMEOUT = 10.0
LISTEN_BACKLOG = 128


@dataclass(eq=False)
class Stream:
    """One client connection, then the stream it forwards."""

    sock: socket.socket | None  # the connection (None once a passed fd replaces it)
    fd: int  # what iod reads: the connection, or the passed descriptor
    watch: Watch
    deadline: Watch | None
    head: bytes = b""
    info: IodForward | None = None
    waiting_fd: bool = False
    moved: int = 0
    dropping: bool = False


class Iod:
    def __init__(self, k: IProc) -> None:
        self.k = k
        self.session = k.config.get("session")
        self.max_streams = int(k.config.get("iod_max_streams") or MAX_STREAMS)
        self.listener: socket.socket | None = None
        self.lwatch: Watch | None = None
        self.path = ""
        self.ino = 0
        self.streams: dict[int, Stream] = {}  # watch id (data or deadline) -> stream
        self.live: set[Stream] = set()

    async def run(self) -> None:
        if not self.session:
            log.warning("iod: no session directory: no %s, nothing to forward", LAM_IOSOCKET)
            while True:
                await self.k.next_event(self.k.timer(3600.0))
        self.listen()
        try:
            while True:
                ev = await self.k.next_event()
                if ev.watch is self.lwatch:
                    self.accept()
                    continue
                st = self.streams.get(ev.watch.id)
                if st is None:
                    continue
                if ev.watch is st.deadline:
                    log.warning("iod: a client sent no forwarding information in %g s: "
                                "dropped", HEAD_TIMEOUT)
                    self.end(st)
                    continue
                await self.readable(st)
        finally:
            self.close()

    # -- the socket ------------------------------------------------------------------------
    def listen(self) -> None:
        self.path = os.path.join(self.session, LAM_IOSOCKET)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                          | socket.SOCK_CLOEXEC)
        try:
            try:
                s.bind(self.path)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                os.unlink(self.path)  # a crashed iod's (the kernel's socket guards the session)
                s.bind(self.path)
            s.listen(LISTEN_BACKLOG)
        except OSError:
            s.close()
            raise
        self.ino = os.stat(self.path).st_ino
        self.listener = s
        self.lwatch = self.k.watch_readable(s.fileno())
        log.info("iod: forwarding stdio from %s", self.path)

    def accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                c, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:  # out of descriptors: try again at the next client
                log.warning("iod: accept: %s", e.strerror)
                return
            if len(self.live) >= self.max_streams:
                log.warning("iod: %d streams already: a new client is refused",
                            self.max_streams)
                c.close()
                continue
            c.setblocking(False)
            w = self.k.watch_readable(c.fileno())
            d = self.k.timer(HEAD_TIMEOUT)
            st = Stream(c, c.fileno(), w, d)
            self.streams[w.id] = self.streams[d.id] = st
            self.live.add(st)

    # -- a stream -----------------------------------------------------------------------------
    async def readable(self, st: Stream) -> None:
        if st.info is None or st.waiting_fd:
            self.handshake(st)
            return
        try:
            data = os.read(st.fd, MAXNMSGLEN)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # an error ends the stream, as end of file does
        if not data:
            await self.finish(st)
            return
        st.moved += len(data)
        await self.forward(st, data)

    def handshake(self, st: Stream) -> None:
        """Read ``finfo[3]``, then the passed descriptor if there is one."""
        s = st.sock
        assert s is not None
        try:
            if st.info is None:
                more = s.recv(IodForward.SIZE - len(st.head))
                if not more:
                    self.end(st)
                    return
                st.head += more
                if len(st.head) < IodForward.SIZE:
                    return
                st.info = IodForward.unpack(st.head)
                if not st.info.passfd:
                    self.started(st)
                    return
                st.waiting_fd = True
            data, anc, _f, _a = s.recvmsg(1, socket.CMSG_SPACE(4))
        except BlockingIOError:
            return
        except OSError as e:
            log.warning("iod: a client broke off: %s", e.strerror)
            self.end(st)
            return
        fds = array.array("i")
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
        if not data or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            log.warning("iod: a client announced a descriptor and passed %d", len(fds))
            self.end(st)
            return
        try:
            s.send(b"\0")  # sfh_send_fd's handshake
        except OSError:
            pass
        # the passed descriptor replaces the connection
        self.drop_watches(st)
        s.close()
        st.sock, st.fd, st.waiting_fd = None, fds[0], False
        os.set_blocking(st.fd, False)  # ours alone: the sender closes its copy
        st.watch = self.k.watch_readable(st.fd)
        st.deadline = None
        self.streams[st.watch.id] = st
        self.started(st)

    def started(self, st: Stream) -> None:
        if st.deadline is not None:
            self.streams.pop(st.deadline.id, None)
            st.deadline.cancel()
            st.deadline = None
        info = st.info
        assert info is not None

    async def forward(self, st: Stream, data: bytes) -> None:
        info = st.info
        assert info is not None
        if st.dropping:
            return
        # _lam_rfwrite(node, tfd, LAM_O_1WAY): one FQWRITE per packet, no reply
        q = FReq(FQWRITE, node_id(self.k), EVIOD, info.tfd, len(data))
        try:
            await nsend(self.k, NMsg(node=info.node, event=EVFILED, data=q.data()), data,
                        node_id=node_id(self.k))
        except NoRoute:
            log.warning("iod: output for node %d tfd %d dropped: no route to that node",
                        info.node, info.tfd)
            st.dropping = True

    async def finish(self, st: Stream) -> None:
        """End of a stream: ``io_rfclose``, then forget it."""
        info = st.info
        self.end(st)
        if info is None or st.dropping or info.tfd <= 2:
            return
        k = self.k
        await sweep_event(k, EVIOD)  # a stale answer never passes for this one
        q = FReq(FQCLOSE, node_id(k), EVIOD, info.tfd)
        await nsend(k, NMsg(node=info.node, event=EVFILED, data=q.data()), b"",
                    node_id=node_id(k))
        t = k.timer(CLOSE_TIMEOUT)
        try:
            got = await next_request(k, EVIOD, (t,))
        finally:
            t.cancel()
        if isinstance(got, Event):
            log.warning("iod: filed did not answer FQCLOSE of tfd %d in %g s", info.tfd,
                        CLOSE_TIMEOUT)

    def drop_watches(self, st: Stream) -> None:
        for w in (st.watch, st.deadline):
            if w is not None:
                self.streams.pop(w.id, None)
                w.cancel()

    def end(self, st: Stream) -> None:
        self.live.discard(st)
        self.drop_watches(st)
        st.deadline = None
        if st.sock is not None:
            st.sock.close()
            st.sock = None
        elif st.fd >= 0:
            os.close(st.fd)
        st.fd = -1

    def close(self) -> None:
        for st in list(self.live):
            self.end(st)
        self.streams.clear()
        if self.listener is not None:
            if self.lwatch is not None:
                self.lwatch.cancel()
            self.listener.close()
            self.listener = None
            try:
                if os.stat(self.path).st_ino == self.ino:
                    os.unlink(self.path)
            except OSError:
                pass


async def iod(k: IProc) -> None:
    """iod: remote stdio forwarding (see :mod:`lamd.jobs.iod`)."""
    await Iod(k).run()


__all__ = ["iod", "Iod", "HEAD_TIMEOUT", "MAX_STREAMS", "CLOSE_TIMEOUT"]
