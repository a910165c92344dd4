"""filed: LAM descriptors for a tool's stdio (LAM's ``otb/sys/filed/``).

What the stock tools use of filed on one node:

``FQOPENFD``  (``lam_lfopenfd``, the first thing ``mpirun``/``lamexec`` do)
    The body names a Unix server socket ``<session>/lam-<pid>`` the tool made
    and now blocks on in ``accept()``.  filed connects, takes the tool's
    stdin, stdout and stderr (``sfh_recv_fd``: one byte with ``SCM_RIGHTS``
    each, a one-byte handshake back), writes ``int4 tfds[3]`` (native order)
    on the socket, closes it and replies ``freply {0, 0}``.  The new LAM
    descriptors are *locked* (kept open), ``WRONLY | 1WAY | ACTIVE``, named
    ``stdout.<pid>`` (or the tty's name); a stdin that is a tty is closed and
    its tfd is 0.  The tool puts them in ``TROLLIUSFD`` for its processes.
``FQCLOSE``   at the tool's exit (``lam_rfatexit``) for its tfds above 2,
    and from iod at the end of a forwarded stream: decrements the use count
    (``FQINCR``), closes at the last.
``FQRMFD``    ``lamclean``: ``NOTFD`` closes every descriptor above 2 (of
    every client, as LAM), a tfd closes that one whatever its count.
``FQINCR``    ``asc_run`` counts the remote processes that will write to the
    tool's stdout/stderr through iod (a big-endian ``int4`` body).
``FQWRITE``   iod forwarding a remote process's output (``_lam_rfwrite``
    with ``LAM_O_1WAY``: no reply for the tool's descriptors).
``FQSTATE``   ``fstate`` (not shipped by Debian): ``struct fstate`` records,
    big-endian, in packets, the last one with ``fr_errno = EEOF``.

And liblam's remote file calls (``share/freq``: ``lam_rfopen``, ``lam_rfread``,
``lam_rfwrite``, ``lam_rflseek``, ``lam_rfclose``, ``lam_rfdup``/``dup2``,
``lam_rfstat``/``fstat``, ``lam_rfaccess``, ``lam_rfmkdir``, ``lam_rfrmdir``,
``lam_rfunlink``, ``lam_rftruncate``/``ftruncate``, ``lam_rfrename``,
``lam_rfchdir``, ``lam_rfgetwd``, ``lam_rfsystem``), on the file names a
program gives (``N:`` before a name picks the node): ``FQOPEN`` (LAM's open
flags, ``LAM_O_REUSE`` shares a descriptor of the same name and flags, a
``/dev/`` name only for writing), ``FQREAD`` (replies of at most MAXNMSGLEN,
a short one last), ``FQWRITE``, ``FQLSEEK``, ``FQDUP`` (the same file at the
same position, moving on its own after, as LAM's reopen by name), ``FQSTAT``
and ``FQFSTAT`` (``conv_stat``: ten words, native order, in a body of
``sizeof(struct stat)``), the calls on a name, ``FQRENAME``
(``struct fqrename``), ``FQCHDIR``/``FQGETWD`` (this process's working
directory: relative names follow it, so do kenyad's processes started
without one, as in LAM's one-process lamd) and ``FQSYSTEM`` (``/bin/sh -c``,
answered with the wait status) and ``FQPATHFIND`` (``lam_rfpathfind``: a
file found as kenyad finds a program). Like LAM's lamd the jobs process works under
umask 077 (:mod:`lamd.jobs.process`): what filed creates is the user's alone.

On one node, with ``RTF_PFDIO``, kenyad hands the tool's own descriptors to
the child: its output never passes through filed.  FQWRITE matters for
processes whose tool is on another node (``RTF_IO`` without ``RTF_PFDIO``:
``kcreatev`` attaches their stdout/stderr to iod with ``liosattach``).

Where it differs from LAM (each a way LAM's filed can hang or leak):

* No fixed table (LAM: ``ACTIVEMAX`` 64 open, 63 locked): any number of
  descriptors per client, bounded in total (``config["filed_max_fds"]``,
  default :data:`MAX_FDS`, counting every descriptor filed holds); past it
  FQOPENFD still takes the tool's descriptors (so the tool is not left in
  ``accept()``), closes them and answers ``ENFILE``, as LAM's ``fdlock``.
* A tool that dies without FQCLOSE (killed, crashed) loses its descriptors
  when it exits: filed watches each owner through a pidfd and gives back the
  owner's reference then (LAM keeps them, and the tool's terminal or pipe
  open, until ``lamclean``).  References iod took with ``FQINCR`` stay.
* The descriptor exchange never blocks filed: it is waited for through the
  wait API, at most :data:`INLINE_WAIT` while other requests wait, then in
  the background while filed serves others, and gives up after
  ``lamd.jobs.srfd.FD_SERVER_TIMEOUT`` with an error reply (LAM blocks in
  ``sfh_recv_fd`` for ever, and replies nothing when the exchange fails).
* Writes never block: a tool's descriptor is shared with the tool, so its
  flags cannot change; filed writes to pipes and sockets with
  ``RWF_NOWAIT``/``MSG_DONTWAIT`` and to terminals through a non-blocking
  description of its own (reopened through ``/proc/self/fd``); regular files
  are written plainly.  Output that does not fit now waits in a bounded
  backlog retried on a timer; beyond the bound it is dropped, with one log
  line per descriptor and episode.  A write LAM replies to gets the count
  written, or ``EAGAIN``.
* The daemon's own stdio (tfds 0, 1, 2) are never closed by a client
  (LAM's FQCLOSE/FQRMFD of them closes the daemon's stdout for everyone).
* ``FQWRITE`` uses at most the bytes that arrived (LAM writes ``fq_length``
  bytes of its buffer whatever came), an unknown request code is answered
  ``EBADREQUEST`` (LAM does not answer: the client hangs), and the requests
  only Fortran's formatted remote I/O uses (``FQF77READ``, ``FQF77BACK``)
  are answered ``ENOT_IMPLEMENTED``.
* An opened file never makes filed wait: it is opened non-blocking (a FIFO
  opens at once), and a read or write that would wait on a FIFO, pipe or
  terminal is answered ``EAGAIN`` (LAM's filed, and every service of its
  lamd with it, waits). An ``FQREAD`` gives at most :data:`READ_MAX` less
  one byte (a short read, which liblam returns as it is): LAM sends any
  length at once, more than bufferd keeps for a client that reads slowly.
  ``FQSYSTEM`` runs while filed serves others (LAM's lamd waits in
  ``system()``), at most :data:`MAX_PARKED` at once, each in a session of
  its own that filed's end kills. An opened file stays open,
  counted against the descriptor bound, until it is closed or ``lamclean``
  (as in LAM; LAM also closes and reopens files past 64 open, ours stay
  open).

Paths are the user's own: filed runs with the user's rights in the jobs
process, and connects only to ``lam-*`` sockets right inside the session
directory (:func:`lamd.jobs.srfd.fd_server_allowed`).
"""

from __future__ import annotations

import array
import errno
import logging
import os
import select
import signal
import socket
import stat
import struct
import subprocess
from typing import Any, Awaitable, Callable

from .._dataclasses import dataclass, field

from ..iprocs.nreq import DINT4MSG, NOTNODEID
from ..kernel.constants import (
    EBADREQUEST, EEOF, ENOT_IMPLEMENTED, EVFILED, EVIOD, MAXNMSGLEN, NOTEVENT,
)
from ..kernel.kiproc import ChildExit, Event, IProc, Watch
from . import srfd
from .common import SHELL, Owners, mark_reaped, next_request, owner_of, reply, wait_status
from .srfd import fd_server_allowed
from .wire import (
    FQACCESS, FQCHDIR, FQCLOSE, FQDUP, FQFSTAT, FQFTRUNC, FQGETWD, FQINCR, FQLSEEK, FQMAX,
    FQMKDIR, FQOPEN, FQOPENFD, FQPATHFIND, FQREAD, FQRENAME, FQRMDIR, FQRMFD, FQSTAT, FQSTATE,
    FQSYSTEM, FQTRUNC, FQUNLINK, FQWRITE, LAM_O_1WAY, LAM_O_ACTIVE, LAM_O_APPEND,
    LAM_O_CREAT, LAM_O_DFLT4, LAM_O_DFLT8, LAM_O_DINT4, LAM_O_EXCL, LAM_O_LOCK, LAM_O_RDONLY, LAM_O_RDWR, LAM_O_REUSE, LAM_O_TRUNC,
    LAM_O_WRONLY, MAXPATHLEN, NOTFD, FReply, FReq, FState, OpenFdTfds,
)

log = logging.getLogger("lamd.jobs.filed")

#: Descriptors filed may hold in all (passed ones, its own copies, sockets
#: of exchanges in progress); ``config["filed_max_fds"]`` overrides.
MAX_FDS = 1024
#: How long other requests wait for a descriptor exchange before it goes on
#: in the background (a tool accepts within microseconds).
INLINE_WAIT = 0.05
#: Exchanges going on in the background at once; more are refused at once.
MAX_PARKED = 64
#: Output kept for a descriptor that cannot take it now, per descriptor and in all.
BACKLOG_PER_FD = 64 * 1024
BACKLOG_TOTAL = 1024 * 1024
#: Retry delays for that output: doubling from the first to the last.
RETRY_FIRST, RETRY_LAST = 0.01, 0.5

FNAMELEN = 32  # fqopenfd.c: a passed descriptor's name, NUL included
FS_NAME = 24  # struct fstate's fs_name
PASSED_TFLAGS = LAM_O_WRONLY | LAM_O_1WAY | LAM_O_ACTIVE | LAM_O_LOCK
FSTATE_PER_PACKET = MAXNMSGLEN // FState.SIZE
I4BE = struct.Struct(">i")
#: the data-type flags of a descriptor's replies (freq.h's LAM_O_DMSG)
LAM_O_DMSG = LAM_O_DINT4 | LAM_O_DFLT4 | LAM_O_DFLT8
#: ``conv_stat``: the ten words of a stat reply (native order, each cut to
#: 32 bits), in a body of ``sizeof(struct stat)`` as LAM sends it (amd64)
STAT_WORDS = struct.Struct("=10I")
STAT_SIZE = 144
#: FQREAD answers at most this less one byte a request (whole replies of
#: MAXNMSGLEN and a short last one): LAM answers any length, all at once
READ_MAX = 128 * MAXNMSGLEN


@dataclass(eq=False)
class FDesc:
    """``struct fdesc``: one LAM descriptor."""

    tfd: int
    fd: int  # the Unix descriptor (ours), -1 when closed
    tflags: int
    name: str
    count: int = 1  # f_count: references (FQINCR adds, FQCLOSE takes one)
    flow: int = 0  # f_flow: bytes moved
    src_node: int = 0  # last client
    src_event: int = 0
    owner: int | None = None  # pid of the tool that passed it, if watched
    owner_ref: bool = False  # the owner's reference not yet given back
    stdio: bool = False  # the daemon's own 0, 1, 2: never closed by a client
    # writing without blocking
    wmode: str = ""  # "", "plain", "sock", "nowait", "reopen", "none"
    wfd: int = -1  # a non-blocking description of our own ("reopen")
    wsock: socket.socket | None = None  # a socket object on our own copy ("sock")
    backlog: bytearray = field(default_factory=bytearray)
    dropped: int = 0  # bytes dropped in the current overflow episode
    broken: int = 0  # errno of a write that failed for good

    def os_fds(self) -> int:
        return (self.fd >= 0) + (self.wfd >= 0) + (self.wsock is not None)


class Exchange:
    """``sfh_recv_fd`` x3 as a state machine on a non-blocking socket."""

    def __init__(self, k: IProc, path: str, q: FReq) -> None:
        self.k, self.path, self.q = k, path, q
        self.fds: list[int] = []
        self.sock: socket.socket | None = None
        self.readable: Watch | None = None
        self.deadline: Watch | None = None
        self.error = ""

    def start(self, timeout: float) -> None:
        """Connect (a full backlog fails at once); raises OSError."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                          | socket.SOCK_CLOEXEC)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s
        self.readable = self.k.watch_readable(s.fileno())
        self.deadline = self.k.timer(timeout)

    def step(self) -> bool:
        """Take what the socket has; True once three descriptors are in.
        Raises :class:`srfd.FdPassError` when the client breaks the protocol."""
        s = self.sock
        assert s is not None
        while len(self.fds) < 3:
            try:
                data, anc, _f, _a = s.recvmsg(1, socket.CMSG_SPACE(4 * 3))
            except BlockingIOError:
                return False
            except OSError as e:
                raise srfd.FdPassError(f"reading descriptors: {e.strerror}") from None
            got = 0
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    part = array.array("i")
                    part.frombytes(cdata[:len(cdata) - len(cdata) % part.itemsize])
                    self.fds.extend(part)
                    got += len(part)
            if not data:
                raise srfd.FdPassError(f"closed after {len(self.fds)} of 3 descriptors")
            if not got:
                raise srfd.FdPassError("sent a byte without a descriptor")
            try:
                s.send(b"\0")  # the handshake sfh_send_fd waits for
            except OSError as e:
                raise srfd.FdPassError(f"handshake: {e.strerror}") from None
        if len(self.fds) > 3:
            raise srfd.FdPassError(f"passed {len(self.fds)} descriptors, not 3")
        return True

    def watches(self) -> list[Watch]:
        return [w for w in (self.readable, self.deadline) if w is not None]

    def os_fds(self) -> int:
        return len(self.fds) + (self.sock is not None)

    def close(self, keep_fds: bool = False) -> None:
        for w in self.watches():
            w.cancel()
        self.readable = self.deadline = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if not keep_fds:
            for fd in self.fds:
                os.close(fd)
        self.fds = []


class Filed:
    """filed's state and requests (``fqfunc[]`` in LAM)."""

    def __init__(self, k: IProc) -> None:
        self.k = k
        self.session = k.config.get("session")
        self.max_fds = int(k.config.get("filed_max_fds") or MAX_FDS)
        self.table: dict[int, FDesc] = {}
        self.owned: dict[int, set[int]] = {}  # owner pid -> its tfds
        self.owners = Owners(k)
        self.parked: list[Exchange] = []
        self.next_tfd = 3
        self.backlog_bytes = 0
        self.retry: Watch | None = None
        self.retry_delay = RETRY_FIRST
        self.systems: list[SystemRun] = []  # FQSYSTEM commands still running
        #: LAM's fqfunc[]: each request's handler, (request, body)
        self.fqfunc: dict[int, Callable[[FReq, bytes], Awaitable[None]]] = {
            FQOPENFD: self.fqopenfd, FQCLOSE: self.fqclose, FQRMFD: self.fqrmfd,
            FQINCR: self.fqincr, FQWRITE: self.fqwrite, FQSTATE: self.fqstate,
            FQOPEN: self.fqopen, FQREAD: self.fqread, FQLSEEK: self.fqlseek,
            FQDUP: self.fqdup, FQFSTAT: self.fqfstat, FQFTRUNC: self.fqftrunc,
            FQSTAT: self.fqstat, FQRENAME: self.fqrename, FQGETWD: self.fqgetwd,
            FQSYSTEM: self.fqsystem, FQPATHFIND: self.fqpathfind,
            **dict.fromkeys((FQACCESS, FQMKDIR, FQUNLINK, FQCHDIR, FQRMDIR, FQTRUNC),
                            self.fqpath),
        }

    # -- the loop -------------------------------------------------------------------
    async def run(self) -> None:
        self.stdio()
        try:
            while True:
                got = await next_request(self.k, EVFILED, self.watches())
                if got is None:
                    continue
                if isinstance(got, Event):
                    await self.event(got)
                    continue
                # a packet is a request: liblam never splits one (NMORE), and
                # waiting here for the rest a client announces would let it
                # stall filed; a continuation is taken as the request it repeats
                await self.request(FReq.from_data(got.data), got.body)
        finally:
            self.close()

    def watches(self) -> list[Watch]:
        ws = self.owners.watches()
        for ex in self.parked:
            ws.extend(ex.watches())
        if self.retry is not None:
            ws.append(self.retry)
        ws.extend(r.watch for r in self.systems)
        return ws

    async def event(self, ev: Event) -> None:
        if self.retry is not None and ev.watch is self.retry:
            self.retry = None
            self.flush_backlogs()
            return
        for run in self.systems:
            if ev.watch is run.watch:
                await self.system_done(run, ev)
                return
        pid = self.owners.gone(ev)
        if pid is not None:
            self.owner_gone(pid)
            return
        for ex in list(self.parked):
            if ev.watch is ex.readable or ev.watch is ex.deadline:
                await self.exchange_event(ex, ev, parked=True)
                return

    # -- descriptors ------------------------------------------------------------------
    def stdio(self) -> None:
        """``fdstdio``: 0 is /dev/null, 1 and 2 the daemon's own (copies)."""
        nobody = dict(count=0, src_node=NOTNODEID, src_event=NOTEVENT, stdio=True)  # fdinit
        try:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            self.table[0] = FDesc(0, fd, LAM_O_RDONLY | LAM_O_LOCK | LAM_O_ACTIVE,
                                  os.devnull, **nobody)
        except OSError as e:
            log.warning("filed: no stdin descriptor (%s)", e.strerror)
        for tfd, flags in ((1, LAM_O_WRONLY), (2, LAM_O_RDWR)):
            try:
                fd = os.dup(tfd)
                os.set_inheritable(fd, False)
            except OSError:
                continue  # the daemon runs without it
            name = _ttyname(fd) or "/dev/tty"
            self.table[tfd] = FDesc(tfd, fd, flags | LAM_O_LOCK | LAM_O_ACTIVE, name,
                                    **nobody)

    def os_fds(self) -> int:
        return (sum(f.os_fds() for f in self.table.values())
                + sum(ex.os_fds() for ex in self.parked))

    def new_tfd(self) -> int:
        while self.next_tfd in self.table:
            self.next_tfd = self.next_tfd + 1 if self.next_tfd < 0x7FFFFFFF else 3
        tfd = self.next_tfd
        self.next_tfd = tfd + 1 if tfd < 0x7FFFFFFF else 3
        return tfd

    def drop(self, f: FDesc) -> None:
        """``fdcut`` after closing: the descriptor goes for good."""
        self.table.pop(f.tfd, None)
        if f.backlog:
            log.warning("filed: tfd %d (%s) closed with %d bytes of output not "
                        "written", f.tfd, f.name, len(f.backlog))
            self.backlog_bytes -= len(f.backlog)
            f.backlog.clear()
        for fd in (f.fd, f.wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        f.fd = f.wfd = -1
        if f.wsock is not None:
            f.wsock.close()
            f.wsock = None
        if f.owner is not None:
            mine = self.owned.get(f.owner)
            if mine is not None:
                mine.discard(f.tfd)
                if not mine:
                    del self.owned[f.owner]
                    self.owners.forget(f.owner)

    def release(self, f: FDesc) -> None:
        """Give back one reference (FQCLOSE): the last one closes."""
        if f.count > 1:
            f.count -= 1
        else:
            self.drop(f)

    def owner_gone(self, pid: int) -> None:
        tfds = sorted(self.owned.get(pid, ()))
        closed = 0
        for tfd in tfds:
            f = self.table.get(tfd)
            if f is None or not f.owner_ref:
                continue
            f.owner_ref = False
            self.release(f)
            closed += tfd not in self.table
        mine = self.owned.pop(pid, None)
        if mine:  # references others hold keep these open, no longer owned
            for tfd in mine:
                if tfd in self.table:
                    self.table[tfd].owner = None
        self.owners.forget(pid)
        if tfds:
            log.info("filed: pid %d exited without closing tfds %s; %d closed",
                     pid, ",".join(map(str, tfds)), closed)

    def close(self) -> None:
        for ex in self.parked:
            ex.close()
        self.parked.clear()
        for run in self.systems:  # nothing of filed's is left running
            run.kill()
        self.systems.clear()
        for f in list(self.table.values()):
            self.drop(f)
        self.owners.close()
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None

    # -- requests ---------------------------------------------------------------------
    async def send(self, q: FReq, err: int, ret: int, body: bytes = b"",
                   flags: int = 0) -> None:
        """``fsendr``."""
        await reply(self.k, q.src_node, q.src_event, FReply(err, ret).data(), body,
                    flags, what=f"request {q.req}")

    async def request(self, q: FReq, body: bytes) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("filed: request %d tfd %d from node %d event %d, %d bytes", q.req,
                      q.param0, q.src_node, q.src_event, len(body))
        handler = self.fqfunc.get(q.req)
        if handler is not None:
            await handler(q, body)
        elif 0 <= q.req < FQMAX:
            log.warning("filed: request %d from pid %d is not implemented here "
                        "(FQF77READ, FQF77BACK)", q.req, -q.src_event)
            await self.send(q, ENOT_IMPLEMENTED, -1)
        else:
            log.warning("filed: unknown request %d from pid %d", q.req, -q.src_event)
            await self.send(q, EBADREQUEST, -1)

    async def fqclose(self, q: FReq, _body: bytes = b"") -> None:
        f = self.table.get(q.tfd)
        if f is None:
            await self.send(q, errno.EBADF, -1)
            return
        f.src_node, f.src_event = q.src_node, q.src_event
        if f.owner is not None and f.owner_ref and q.src_event == -f.owner:
            f.owner_ref = False
        if not f.stdio:
            if f.count <= 1:
                self.flush(f)
            self.release(f)
        await self.send(q, 0, 0)

    async def fqrmfd(self, q: FReq, _body: bytes = b"") -> None:
        if q.tfd == NOTFD:
            gone = [f for f in self.table.values() if not f.stdio]
            for f in gone:
                self.drop(f)
            if gone:
                log.info("filed: pid %d closed every descriptor (%d)", -q.src_event, len(gone))
        else:
            f = self.table.get(q.tfd)
            if f is None:
                await self.send(q, errno.EBADF, -1)
                return
            if not f.stdio:
                self.drop(f)
        await self.send(q, 0, 0)

    async def fqincr(self, q: FReq, body: bytes) -> None:
        f = self.table.get(q.tfd)
        if f is None:
            await self.send(q, errno.EBADF, -1)
            return
        if len(body) >= 4:
            f.count += I4BE.unpack_from(body)[0]
        await self.send(q, 0, 0)

    async def fqstate(self, q: FReq, _body: bytes = b"") -> None:
        recs = [FState(f.tfd, f.tflags, f.flow, f.count, f.src_node, f.src_event,
                       _cut(f.name, FS_NAME - 1)).pack()
                for _, f in sorted(self.table.items())]
        while len(recs) > FSTATE_PER_PACKET:
            await self.send(q, 0, 0, b"".join(recs[:FSTATE_PER_PACKET]))
            del recs[:FSTATE_PER_PACKET]
        await self.send(q, EEOF, 0, b"".join(recs))

    # -- remote file access (fqopen.c, fqread.c, fqlseek.c, fqsimplex.c) ---------------
    async def fqopen(self, q: FReq, body: bytes) -> None:
        """``FQOPEN``: open the named file for the client (a LAM descriptor)."""
        path = _path(body)
        flags = q.flags
        if path.startswith(b"/dev/") and (flags & LAM_O_RDWR or
                                          (flags & LAM_O_WRONLY) != LAM_O_WRONLY):
            await self.send(q, errno.EINVAL, -1)  # a device only for writing, as LAM
            return
        name = path.decode("utf-8", "surrogateescape")
        if flags & LAM_O_REUSE:
            same = self.find_name(name, flags & ~LAM_O_REUSE)
            if same is not None:
                same.count += 1
                same.src_node, same.src_event = q.src_node, q.src_event
                await self.send(q, 0, same.tfd)
                return
            flags &= ~LAM_O_REUSE
        if self.os_fds() + 1 > self.max_fds:
            log.warning("filed: FQOPEN of %r refused: filed holds %d descriptors (limit %d)",
                        name, self.os_fds(), self.max_fds)
            await self.send(q, errno.ENFILE, -1)
            return
        try:
            # never blocks: a FIFO or device opens at once, and a read or write
            # that would wait is answered EAGAIN (LAM's filed would hang)
            fd = os.open(path, _unix_flags(flags) | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK,
                         q.mode & 0o7777)
        except OSError as e:
            await self.send(q, e.errno or errno.EIO, -1)
            return
        # fdinit, fdactivate and (LAM_O_LOCK) fdlock: open for as long as it is held
        f = FDesc(self.new_tfd(), fd, flags | LAM_O_ACTIVE, name, src_node=q.src_node,
                  src_event=q.src_event)
        self.table[f.tfd] = f
        await self.send(q, 0, f.tfd)

    async def named(self, q: FReq) -> FDesc | None:
        """The descriptor *q* names (its last client noted), else None with
        ``EBADF`` answered."""
        f = self.table.get(q.tfd)
        if f is None:
            await self.send(q, errno.EBADF, -1)
            return None
        f.src_node, f.src_event = q.src_node, q.src_event
        return f

    def find_name(self, name: str, tflags: int) -> FDesc | None:
        """``fdfindname``: a descriptor of *name* opened with *tflags* (LAM_O_LOCK
        compared only when asked for, ``LAM_O_ACTIVE`` never)."""
        tflags &= ~LAM_O_ACTIVE
        lock = (tflags & LAM_O_LOCK) | ~LAM_O_LOCK
        for _, f in sorted(self.table.items()):
            if f.name == name and (f.tflags & ~LAM_O_ACTIVE) & lock == tflags:
                return f
        return None

    async def fqread(self, q: FReq, _body: bytes = b"") -> None:
        """``FQREAD``: up to ``fq_length`` bytes, in replies of at most
        MAXNMSGLEN each; a short one (or an error) is the last."""
        f = await self.named(q)
        if f is None:
            return
        # at most READ_MAX - 1 bytes a request: the last reply then comes
        # short, and liblam returns what came (a short read); what bufferd
        # holds for a client that reads slowly stays bounded
        left = min(q.length, READ_MAX - 1)
        try:
            waits = _may_wait(f.fd)
        except OSError as e:
            await self.send(q, e.errno or errno.EIO, -1, b"", f.tflags & LAM_O_DMSG)
            return
        while True:
            n = min(max(left, 0), MAXNMSGLEN)
            try:
                data = _read_now(f.fd, n, waits)
            except OSError as e:
                await self.send(q, e.errno or errno.EIO, -1, b"", f.tflags & LAM_O_DMSG)
                return
            f.flow += len(data)
            await self.send(q, 0, len(data), data, f.tflags & LAM_O_DMSG)
            left -= n
            if len(data) < n or left <= 0:
                return

    async def fqlseek(self, q: FReq, _body: bytes = b"") -> None:
        f = await self.named(q)
        if f is None:
            return
        try:
            pos = os.lseek(f.fd, q.offset, q.whence)
        except OSError as e:
            await self.send(q, e.errno or errno.EIO, -1)
            return
        await self.send(q, 0, _int4(pos))

    async def fqdup(self, q: FReq, _body: bytes = b"") -> None:
        """``FQDUP``: a new descriptor of the same file, flags, count and
        position, moving on its own from now (LAM opens the name again)."""
        of = await self.named(q)
        if of is None:
            return
        if self.os_fds() + 1 > self.max_fds:
            await self.send(q, errno.ENFILE, -1)
            return
        try:
            fd = _reopen(of.fd, of.tflags)
        except OSError as e:
            await self.send(q, e.errno or errno.EIO, -1)
            return
        nf = FDesc(self.new_tfd(), fd, of.tflags & ~LAM_O_LOCK, of.name, count=of.count,
                   src_node=q.src_node, src_event=q.src_event)
        self.table[nf.tfd] = nf
        await self.send(q, 0, nf.tfd)

    async def fqfstat(self, q: FReq, _body: bytes = b"") -> None:
        f = await self.named(q)
        if f is not None:
            await self.stat_reply(q, os.fstat, f.fd)

    async def fqftrunc(self, q: FReq, body: bytes) -> None:
        """``FQFTRUNC``: the length is a big-endian int4 body."""
        f = await self.named(q)
        if f is None:
            return
        try:
            os.ftruncate(f.fd, I4BE.unpack_from(body)[0] if len(body) >= 4 else 0)
        except OSError as e:
            await self.send(q, e.errno or errno.EIO, -1)
            return
        await self.send(q, 0, 0)

    async def stat_reply(self, q: FReq, call: Callable[[Any], os.stat_result],
                         what: Any) -> None:
        """``FQSTAT``/``FQFSTAT``'s answer: ``conv_stat``'s words, or the
        error with a body of zeros (LAM's: whatever its buffer held)."""
        try:
            words = _stat_words(call(what))
        except OSError as e:
            await self.send(q, e.errno or errno.EIO, -1, bytes(STAT_SIZE), DINT4MSG)
            return
        await self.send(q, 0, 0, words, DINT4MSG)

    async def fqpath(self, q: FReq, body: bytes) -> None:
        """``FQACCESS``, ``FQMKDIR``, ``FQUNLINK``, ``FQCHDIR``, ``FQRMDIR``,
        ``FQTRUNC``: a call on the named path (relative to this process's
        working directory, which ``FQCHDIR`` moves, as LAM's lamd's)."""
        path = _path(body)
        try:
            if q.req == FQACCESS:
                if not os.access(path, q.param0 & 0o7):
                    os.stat(path)  # access() says only no: this says why, if it is not there
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            elif q.req == FQMKDIR:
                os.mkdir(path, q.param0 & 0o7777)
            elif q.req == FQUNLINK:
                os.unlink(path)
            elif q.req == FQCHDIR:
                os.chdir(path)
            elif q.req == FQRMDIR:
                os.rmdir(path)
            else:  # FQTRUNC
                os.truncate(path, q.param0)
        except OSError as e:
            await self.send(q, e.errno or errno.EIO, -1)
            return
        await self.send(q, 0, 0)

    async def fqstat(self, q: FReq, body: bytes) -> None:
        await self.stat_reply(q, os.stat, _path(body))

    async def fqrename(self, q: FReq, body: bytes) -> None:
        """``FQRENAME``: ``struct fqrename``, two MAXPATHLEN fields."""
        src = _path(body[:MAXPATHLEN])
        dst = _path(body[MAXPATHLEN:2 * MAXPATHLEN])
        try:
            os.rename(src, dst)
        except OSError as e:
            await self.send(q, e.errno or errno.EIO, -1)
            return
        await self.send(q, 0, 0)

    async def fqgetwd(self, q: FReq, _body: bytes = b"") -> None:
        try:
            cwd = os.getcwdb()
        except OSError as e:  # the directory was removed under us
            await self.send(q, e.errno or errno.EIO, -1)
            return
        await self.send(q, 0, 0, cwd[:MAXNMSGLEN - 1] + b"\0")

    async def fqpathfind(self, q: FReq, body: bytes) -> None:
        """``FQPATHFIND`` (``lam_rfpathfind``, TotalView's): a readable file
        of the name, searched as kenyad searches a program
        (``sfh_path_env_findv``: the working directory the body gives
        after the name, then ``$PATH``); answered with its full path."""
        from .kenyad import find_program  # kenyad's rule; imported when asked

        raw = bytes(body)
        name, _, rest = raw.partition(b"\0")
        wrkdir = rest.split(b"\0", 1)[0]
        if not name:
            await self.send(q, errno.ENOENT, -1)
            return
        found, err = find_program(name.decode("utf-8", "surrogateescape"), os.R_OK, (),
                                  wrkdir.decode("utf-8", "surrogateescape") or None)
        if found is None:
            await self.send(q, err or errno.ENOENT, -1)
            return
        path = found.encode("utf-8", "surrogateescape")[:MAXNMSGLEN - 1]
        await self.send(q, 0, 0, path + b"\0")

    async def fqsystem(self, q: FReq, body: bytes) -> None:
        """``FQSYSTEM``: ``system(cmd)`` here, answered with its wait status.
        The command runs while filed serves others (LAM's lamd waits in
        ``system()``, every service with it), in a session of its own that
        filed's end kills."""
        cmd = _path(body)
        if len(self.systems) >= MAX_PARKED:
            log.warning("filed: FQSYSTEM from pid %d refused: %d commands already running",
                        -q.src_event, len(self.systems))
            await self.send(q, errno.EAGAIN, -1)
            return
        try:
            p = subprocess.Popen([SHELL, "-c", cmd], executable=SHELL, stdin=subprocess.DEVNULL,
                                 close_fds=True, start_new_session=True)
        except OSError as e:
            await self.send(q, e.errno or errno.EAGAIN, -1)
            return
        self.systems.append(SystemRun(q, p, self.k.watch_child(p.pid)))

    async def system_done(self, run: SystemRun, ev: Event) -> None:
        self.systems.remove(run)
        run.watch.cancel()
        ws = wait_status(ev.value) if isinstance(ev.value, ChildExit) else None
        mark_reaped(run.popen, ws)
        if ws is None:
            await self.send(run.q, errno.ECHILD, -1)
        else:
            await self.send(run.q, 0, ws)

    # -- FQOPENFD ------------------------------------------------------------------------
    async def fqopenfd(self, q: FReq, body: bytes) -> None:
        path = body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        pid = -q.src_event
        if not fd_server_allowed(path, self.session):
            log.warning("filed: FQOPENFD from pid %d names %r, not a lam-* socket in the "
                        "session directory: refused", pid, path)
            await self.send(q, errno.EACCES, 0)
            return
        ex = Exchange(self.k, path, q)
        if len(self.parked) >= MAX_PARKED:
            # unblock the tool's accept() and refuse (kenyad's exit_protocol)
            log.warning("filed: FQOPENFD from pid %d refused: %d descriptor exchanges "
                        "already waiting", pid, len(self.parked))
            try:
                with socket.socket(socket.AF_UNIX,
                                   socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as s:
                    s.connect(path)
            except OSError:
                pass
            await self.send(q, errno.EAGAIN, 0)
            return
        try:
            ex.start(srfd.FD_SERVER_TIMEOUT)
        except OSError as e:
            log.warning("filed: FQOPENFD from pid %d: cannot connect to %s: %s", pid, path,
                        e.strerror)
            await self.send(q, e.errno or errno.ECONNREFUSED, 0)
            return
        inline = self.k.timer(INLINE_WAIT)
        try:
            while ex.sock is not None:
                ev = await self.k.next_event(*ex.watches(), inline)
                if ev.watch is inline:
                    log.info("filed: pid %d has not passed its descriptors in %g s: waiting "
                             "for them while serving others", pid, INLINE_WAIT)
                    self.parked.append(ex)
                    return
                await self.exchange_event(ex, ev, parked=False)
        finally:
            inline.cancel()

    async def exchange_event(self, ex: Exchange, ev: Event, parked: bool) -> None:
        pid = -ex.q.src_event
        try:
            if ev.watch is ex.deadline:
                raise srfd.FdPassError(f"passed {len(ex.fds)} of 3 descriptors in "
                                       f"{srfd.FD_SERVER_TIMEOUT:g} s")
            if not ex.step():
                return
        except srfd.FdPassError as e:
            log.warning("filed: FQOPENFD from pid %d: %s %s; refused", pid, ex.path, e)
            code = errno.ETIMEDOUT if ev.watch is ex.deadline else errno.EPROTO
            self.unpark(ex)
            ex.close()
            await self.send(ex.q, code, 0)
            return
        self.unpark(ex)
        await self.opened(ex)

    def unpark(self, ex: Exchange) -> None:
        if ex in self.parked:
            self.parked.remove(ex)

    async def opened(self, ex: Exchange) -> None:
        """The three descriptors are in: make LAM descriptors of them."""
        q, fds = ex.q, ex.fds
        pid = -q.src_event
        if self.os_fds() + len(fds) > self.max_fds:
            log.warning("filed: FQOPENFD from pid %d refused: filed holds %d descriptors "
                        "(limit %d)", pid, self.os_fds(), self.max_fds)
            ex.close()
            await self.send(q, errno.ENFILE, 0)
            return
        owner = owner_of(q.src_node, q.src_event, self.k)
        made: list[FDesc] = []
        for i, fd in enumerate(fds):
            tty = _ttyname(fd)
            if i == 0 and tty is not None:
                os.close(fd)  # stdin on a tty stays the tool's own
                made.append(None)  # type: ignore[arg-type]
                continue
            name = _cut(tty, FNAMELEN - 1) if tty else f"{('stdin', 'stdout', 'stderr')[i]}.{pid}"
            f = FDesc(self.new_tfd(), fd, PASSED_TFLAGS, name, src_node=q.src_node,
                      src_event=q.src_event)
            self.table[f.tfd] = f
            made.append(f)
        tfds = OpenFdTfds(*(f.tfd if f is not None else 0 for f in made))
        ex.fds = []  # ours now, in the table
        try:
            assert ex.sock is not None
            n = ex.sock.send(tfds.pack())
            if n != OpenFdTfds.SIZE:
                raise OSError(errno.EIO, "short write")
        except OSError as e:
            log.warning("filed: FQOPENFD from pid %d: writing the tfds back: %s", pid,
                        e.strerror)
            ex.close()
            for f in made:
                if f is not None:
                    self.drop(f)
            await self.send(q, e.errno or errno.EIO, 0)
            return
        ex.close()
        if owner is not None and self.owners.track(owner):
            mine = self.owned.setdefault(owner, set())
            for f in made:
                if f is not None:
                    f.owner, f.owner_ref = owner, True
                    mine.add(f.tfd)
        log.debug("filed: pid %d passed its stdio as tfds %d %d %d", pid, tfds.stdin,
                  tfds.stdout, tfds.stderr)
        await self.send(q, 0, 0)

    # -- FQWRITE --------------------------------------------------------------------------
    async def fqwrite(self, q: FReq, body: bytes) -> None:
        f = self.table.get(q.tfd)
        if f is None:
            if q.src_event != EVIOD:  # iod's writes are one-way: it reads no reply
                await self.send(q, errno.EBADF, -1)
            return
        f.src_node, f.src_event = q.src_node, q.src_event
        data = body[:max(0, min(q.length, len(body)))]
        oneway = bool(f.tflags & LAM_O_1WAY)
        if not f.tflags & (LAM_O_WRONLY | LAM_O_RDWR):
            err, ret = errno.EBADF, -1
        elif oneway:
            self.write_oneway(f, data)
            return
        else:
            err, ret = self.write_now(f, data)
        await self.send(q, err, ret)

    def write_now(self, f: FDesc, data: bytes) -> tuple[int, int]:
        """A write LAM replies to: what went at once, or EAGAIN."""
        if f.backlog:
            self.flush(f)
            if f.backlog:
                return errno.EAGAIN, -1
        try:
            n = self.write_some(f, data)
        except OSError as e:
            return e.errno or errno.EIO, -1
        if n == 0 and data:
            return errno.EAGAIN, -1
        f.flow += n
        return 0, n

    def write_oneway(self, f: FDesc, data: bytes) -> None:
        if f.broken:
            return
        if not f.backlog:
            try:
                n = self.write_some(f, data)
            except OSError as e:
                self.broke(f, e)
                return
            f.flow += n
            data = data[n:]
            if not data:
                return
        room = min(BACKLOG_PER_FD - len(f.backlog), BACKLOG_TOTAL - self.backlog_bytes)
        keep = data[:max(0, room)]
        f.backlog += keep
        self.backlog_bytes += len(keep)
        if len(keep) < len(data):
            if not f.dropped:
                log.warning("filed: tfd %d (%s) is not taking output: dropping what does "
                            "not fit in its %d-byte backlog", f.tfd, f.name, BACKLOG_PER_FD)
            f.dropped += len(data) - len(keep)
        if self.retry is None:
            self.retry_delay = RETRY_FIRST
            self.retry = self.k.timer(self.retry_delay)

    def flush(self, f: FDesc) -> None:
        """Write as much of the backlog as goes now."""
        while f.backlog and not f.broken:
            try:
                n = self.write_some(f, bytes(f.backlog[:MAXNMSGLEN * 8]))
            except OSError as e:
                self.broke(f, e)
                break
            if n == 0:
                return
            del f.backlog[:n]
            self.backlog_bytes -= n
            f.flow += n
        if not f.backlog and f.dropped:
            log.warning("filed: tfd %d (%s) takes output again; %d bytes were dropped",
                        f.tfd, f.name, f.dropped)
            f.dropped = 0

    def flush_backlogs(self) -> None:
        for f in list(self.table.values()):
            if f.backlog:
                self.flush(f)
        if self.backlog_bytes > 0:
            self.retry_delay = min(RETRY_LAST, self.retry_delay * 2)
            self.retry = self.k.timer(self.retry_delay)

    def broke(self, f: FDesc, e: OSError) -> None:
        f.broken = e.errno or errno.EIO
        log.warning("filed: tfd %d (%s): %s; its output is dropped from now on", f.tfd,
                    f.name, e.strerror or e)
        self.backlog_bytes -= len(f.backlog)
        f.backlog.clear()

    def write_some(self, f: FDesc, data: bytes) -> int:
        """Write without blocking: bytes written (0: it would block).
        Raises OSError for a descriptor that fails for good."""
        if not data:
            return 0
        if not f.wmode:
            f.wmode = _write_mode(f.fd)
            if f.wmode == "sock":
                f.wsock = socket.socket(fileno=os.dup(f.fd))
        try:
            if f.wmode == "plain":
                return os.write(f.fd, data)
            if f.wmode == "sock":
                assert f.wsock is not None
                return f.wsock.send(data, socket.MSG_DONTWAIT)
            if f.wmode == "nowait":
                try:
                    return os.pwritev(f.fd, [data], -1, os.RWF_NOWAIT)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                f.wmode = "reopen"  # a terminal: a non-blocking description of our own
                try:
                    f.wfd = os.open(f"/proc/self/fd/{f.fd}",
                                    os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
                except OSError as e:
                    f.wmode = "none"
                    raise OSError(errno.EAGAIN, f"cannot write to it without blocking "
                                  f"({e.strerror})") from None
            if f.wmode == "reopen":
                return os.write(f.wfd, data)
        except BlockingIOError:
            return 0
        raise OSError(errno.EAGAIN, "cannot write to it without blocking")



class SystemRun:
    """An FQSYSTEM command running: its request, process and exit watch."""

    def __init__(self, q: FReq, popen: subprocess.Popen, watch: Watch) -> None:
        self.q, self.popen, self.watch = q, popen, watch

    def kill(self) -> None:
        self.watch.cancel()
        if self.popen.returncode is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.popen.wait(timeout=1)
            except (OSError, subprocess.TimeoutExpired):
                pass


def _path(body: bytes) -> bytes:
    """A NUL-terminated name from a request's body."""
    return bytes(body).split(b"\0", 1)[0]


def _unix_flags(tflags: int) -> int:
    """``conv_flags``: LAM's open flags as the system's."""
    uflags = 0
    if tflags & LAM_O_WRONLY:
        uflags |= os.O_WRONLY
    if tflags & LAM_O_RDWR:
        uflags |= os.O_RDWR
    for lam, unix in ((LAM_O_APPEND, os.O_APPEND), (LAM_O_CREAT, os.O_CREAT),
                      (LAM_O_EXCL, os.O_EXCL), (LAM_O_TRUNC, os.O_TRUNC)):
        if tflags & lam:
            uflags |= unix
    return uflags


def _reopen(fd: int, tflags: int) -> int:
    """A new open file description of what *fd* is, at *fd*'s position
    (``fdactivate`` of a dup opens the name again, at the old pointer)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return os.dup(fd)  # a pipe, a terminal: no position of its own
    nfd = os.open(f"/proc/self/fd/{fd}", _unix_flags(tflags & ~(LAM_O_CREAT | LAM_O_TRUNC
                                                              | LAM_O_EXCL))
                  | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.lseek(nfd, os.lseek(fd, 0, os.SEEK_CUR), os.SEEK_SET)
    except OSError:
        os.close(nfd)
        raise
    return nfd


def _may_wait(fd: int) -> bool:
    """Could a read of *fd* wait (a pipe, a terminal: not a file)?"""
    mode = os.fstat(fd).st_mode
    return not (stat.S_ISREG(mode) or stat.S_ISBLK(mode))


def _read_now(fd: int, n: int, may_wait: bool) -> bytes:
    """Read up to *n* bytes without waiting: a file reads at once; anything
    that may wait (:func:`_may_wait`) only what is there now, else EAGAIN."""
    if n <= 0:
        return b""
    if may_wait:
        p = select.poll()
        p.register(fd, select.POLLIN)
        if not p.poll(0):
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return os.read(fd, n)


def _stat_words(st: os.stat_result) -> bytes:
    """``conv_stat``: ten words, padded to ``sizeof(struct stat)``."""
    m = 0xFFFFFFFF
    words = STAT_WORDS.pack(st.st_dev & m, st.st_ino & m, st.st_mode & m, st.st_nlink & m,
                            st.st_uid & m, st.st_gid & m, st.st_size & m,
                            int(st.st_atime) & m, int(st.st_mtime) & m, int(st.st_ctime) & m)
    return words + bytes(STAT_SIZE - len(words))


def _int4(v: int) -> int:
    """A C ``int4`` cast of *v*."""
    return (v + 0x80000000) % 0x100000000 - 0x80000000


def _write_mode(fd: int) -> str:
    try:
        st = os.fstat(fd)
    except OSError:
        return "none"
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "plain"  # a file: a write never waits on a reader
    if stat.S_ISSOCK(st.st_mode):
        return "sock"
    return "nowait"  # pipes, terminals, other devices


def _ttyname(fd: int) -> str | None:
    try:
        return os.ttyname(fd) if os.isatty(fd) else None
    except OSError:
        return None


def _cut(s: str, n: int) -> str:
    b = s.encode("utf-8", "surrogateescape")[:n]
    return b.decode("utf-8", "ignore")


async def filed(k: IProc) -> None:
    """filed: LAM descriptors for passed stdio (see :mod:`lamd.jobs.filed`)."""
    await Filed(k).run()


__all__ = ["filed", "Filed", "FDesc", "Exchange", "MAX_FDS", "INLINE_WAIT", "MAX_PARKED",
           "BACKLOG_PER_FD", "BACKLOG_TOTAL"]
