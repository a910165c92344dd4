"""Handing the running daemon over to its successor in place (issue 12).

LAM has no counterpart: the C lamd cannot be replaced under its clients.
``lamd`` re-executes itself on :data:`REEXEC_SIGNAL` (``docs/restart.md``):

1. :meth:`KernelIO.begin_handover` stops accepting clients and reading new
   requests, and lets every message body in flight finish;
2. once at a safe point (:func:`safe_point`: no body moving or being
   collected, no internal process running, no connection closing) the loop
   ends and :func:`write_handover` puts the snapshot
   (:mod:`lamd.kernel.ksnapshot`: the kernel, and per connection the request
   bytes read but not parsed and the reply bytes not yet written) in a
   memfd, and clears ``FD_CLOEXEC`` on it, the listener, every client socket
   and every client's pidfd;
3. :func:`exec_successor` ``execv``'s the same command line with
   ``--restore-fd N``; the new image reads the snapshot
   (:func:`read_handover`), takes the descriptors back
   (:func:`adopt_connections`) and carries on with the restored kernel.

A snapshot that is refused leaves the new image to start clean:
:func:`close_inherited` closes every descriptor it was handed, so clients see
their kernel go, as after a crash today.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import struct
import sys

import _signal  # type: ignore[import]  # the C module: signal's makes enums (issue 13)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Sequence

from .. import lazylog
from ..kernel.wire import KREQ_SIZE
from .transfer import BodyMove, Connection

if TYPE_CHECKING:  # pragma: no cover
    from ..kernel.ksnapshot import ConnState, Snapshot
    from .kernelio import KernelIO

# lamd.kernel.ksnapshot is imported by the functions that use it: every
# daemon installs the re-exec signal at start, few ever re-exec (issue 13)

log = lazylog.getLogger("lamd.kernelio")

#: The signal that makes ``lamd`` re-execute itself: LAM's clients use
#: SIGUSR2 (``LAM_SIGUSR``), ``tkill``/``lamwipe`` SIGHUP as "stop".
REEXEC_SIGNAL = _signal.SIGUSR1
#: How long to wait for bodies in flight before giving the re-exec up.
DRAIN_TIMEOUT = 5.0
RESTORE_OPTION = "--restore-fd"


def safe_point(io: "KernelIO") -> str:
    """Why *io* cannot be handed over yet ("" when it can)."""
    k = io.kernel
    if k._runq or io._resume_due:
        return "internal processes are running"
    if k._collects:
        return "bodies are being collected for internal processes"
    for c in io.conns.values():
        if c.move is not None:
            return f"a body from pid {c.pid} is in flight"
        if c.closing:
            return f"the connection of pid {c.pid} is closing"
        for item in c.out:
            if type(item) is BodyMove and not item.src_done:
                return f"a body to pid {c.pid} is in flight"
    return ""


def conn_states(io: "KernelIO") -> list[ConnState]:
    """Each connection's descriptors and the bytes it is owed or has sent."""
    from ..kernel.ksnapshot import ConnState
    out = []
    for c in io.conns.values():
        pending = bytearray()
        for item in c.out:
            if type(item) is BodyMove:
                if item.pr >= 0:
                    item.unpipe(0)  # the end of a spliced body: out of its pipe
                pending += item.buf[item.rpos:item.wpos]  # the end of a finished body
            else:
                pending += item
        out.append(ConnState(fd=c.fd, pid=c.pid, uid=c.uid, pidfd=c.pidfd,
                             starttime=c.starttime, inbuf=bytes(c.inbuf),
                             outbuf=bytes(pending)))
    return out


def write_handover(io: "KernelIO", *, uid: int, session: str,
                   extra: dict[str, Any] | None = None) -> int:
    """The snapshot of *io* in an inheritable memfd, whose descriptor is
    returned; the listener, the client sockets and their pidfds are made
    inheritable. Raises :class:`~lamd.kernel.ksnapshot.NotAtRest` if the
    kernel is not at rest (nothing is changed then)."""
    from ..kernel import ksnapshot
    state = ksnapshot.capture(io.kernel, lambda c: c.fd)
    conns = conn_states(io)
    data = ksnapshot.encode(state, uid=uid, session=session, conns=conns,
                            extra=dict(extra or {}, listener=io.listener.fileno()))
    fd = os.memfd_create("lamd-snapshot", 0)  # no MFD_CLOEXEC: for the successor
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    os.set_inheritable(io.listener.fileno(), True)
    for c in conns:
        os.set_inheritable(c.fd, True)
        if c.pidfd is not None:
            os.set_inheritable(c.pidfd, True)
    return fd


def successor_argv(argv: Sequence[str], fd: int) -> list[str]:
    """*argv* (``sys.orig_argv``) with ``--restore-fd FD`` in place of any earlier one."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == RESTORE_OPTION:
            skip = True
            continue
        if a.startswith(RESTORE_OPTION + "="):
            continue
        out.append(a)
    return out + [RESTORE_OPTION, str(fd)]


def exec_successor(fd: int, argv: Sequence[str] | None = None) -> None:
    """Replace this process with the same command and the snapshot in *fd*."""
    args = successor_argv(list(argv if argv is not None else sys.orig_argv), fd)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    # a second SIGUSR1 before the new image handles it must not kill it: it
    # stays pending (the mask is inherited) until unblock_reexec_signal()
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {REEXEC_SIGNAL})
    try:
        os.execv(sys.executable, args)
    finally:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {REEXEC_SIGNAL})


def unblock_reexec_signal() -> None:
    """Take a re-exec signal that came during the last re-exec (once the
    handler is installed)."""
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {REEXEC_SIGNAL})


def uninherit(io: "KernelIO") -> None:
    """A re-exec failed: the descriptors are this process's own again."""
    for fd in [io.listener.fileno(), *io.conns]:
        os.set_inheritable(fd, False)
    for c in io.conns.values():
        if c.pidfd is not None:
            os.set_inheritable(c.pidfd, False)


def read_handover(fd: int, *, uid: int, session: str) -> Snapshot:
    """The snapshot in memfd *fd* (closed afterwards), checked for *uid* and
    *session*; raises :class:`~lamd.kernel.ksnapshot.SnapshotError`."""
    from ..kernel import ksnapshot
    from ..kernel.ksnapshot import SnapshotError
    try:
        chunks = []
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
    except OSError as e:
        raise SnapshotError(f"cannot read the snapshot (descriptor {fd}): {e.strerror}") from None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    return ksnapshot.decode(b"".join(chunks), uid=uid, session=session)


def close_inherited() -> None:
    """Close every inheritable descriptor but stdin, stdout and stderr: what
    a predecessor handed over (a refused snapshot: the clients it named must
    see their kernel go, not hang). This image's own are all close-on-exec."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3:
            continue
        try:
            if os.get_inheritable(fd):
                os.close(fd)
        except OSError:
            pass


def abandon(listener: _socket.socket, conns: dict[int, Connection]) -> None:
    """A snapshot refused after its descriptors were taken: let go of
    every wrapper (without closing twice), then close what was handed over."""
    listener.detach()
    for c in conns.values():
        c.sock.detach()
        c.pidfd = None
    close_inherited()


def keep(listener: _socket.socket, conns: dict[int, Connection]) -> None:
    """The snapshot is restored: the descriptors are this image's own
    (close-on-exec again)."""
    os.set_inheritable(listener.fileno(), False)
    for c in conns.values():
        os.set_inheritable(c.fd, False)
        if c.pidfd is not None:
            os.set_inheritable(c.pidfd, False)


def _inherited(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False


def adopt_listener(snap: Snapshot, socket_path: str) -> _socket.socket:
    """The listening socket the snapshot names, checked to be the session's."""
    from ..kernel.ksnapshot import SnapshotError
    fd = snap.extra.get("listener")
    if type(fd) is not int or fd < 3 or not _inherited(fd):
        raise SnapshotError("snapshot names no listening socket that was handed over")
    try:
        s = _socket.socket(fileno=fd)
    except OSError as e:
        raise SnapshotError(f"listening socket {fd}: {e.strerror}") from None
    if (s.family != _socket.AF_UNIX or s.type != _socket.SOCK_STREAM
            or s.getsockname() != socket_path
            or not s.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN)):
        s.detach()
        raise SnapshotError(f"descriptor {fd} is not the session's listening socket")
    return s


def connections(snap: Snapshot, uid: int) -> dict[int, Connection]:
    """The client connections the snapshot names, checked, not yet registered."""
    from ..kernel.ksnapshot import SnapshotError
    conns: dict[int, Connection] = {}
    for cs in snap.conns:
        if cs.fd < 3 or not _inherited(cs.fd) or (cs.pidfd is not None and (
                cs.pidfd < 3 or not _inherited(cs.pidfd))):
            for c in conns.values():
                c.sock.detach()
            raise SnapshotError(f"connection {cs.fd} (pidfd {cs.pidfd}) was not handed over")
        try:
            sock = _socket.socket(fileno=cs.fd)
            pid, s_uid, _gid = struct.unpack(
                "3i", sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12))
        except OSError as e:
            for c in conns.values():
                c.sock.detach()
            raise SnapshotError(f"connection {cs.fd}: {e.strerror}") from None
        if (pid, s_uid) != (cs.pid, cs.uid) or s_uid != uid:
            sock.detach()
            for c in conns.values():
                c.sock.detach()
            raise SnapshotError(f"descriptor {cs.fd} is not the connection of pid {cs.pid}")
        sock.setblocking(False)
        c = Connection(sock, cs.pid, cs.uid)
        c.pidfd = cs.pidfd
        c.starttime = cs.starttime
        c.inbuf = bytearray(cs.inbuf)
        if cs.outbuf:
            c.out.append(bytearray(cs.outbuf))
            c.queued = len(cs.outbuf)
        conns[cs.fd] = c
    return conns


def adopt_connections(io: "KernelIO", conns: dict[int, Connection]) -> None:
    """Serve *conns* (restored into *io*'s kernel) as if just accepted."""
    for c in conns.values():
        io.conns[c.fd] = c
        c.mask = select.EPOLLIN
        io.loop.add_reader(c.fd, lambda ev, c=c: io._on_client(c, ev))
        if c.starttime is None:
            io._starttime_due.append(c)
        if c.out:
            io._dirty[c] = None
        if len(c.inbuf) >= KREQ_SIZE:
            io._mark_pending(c)


class AdoptedChild:
    """A child process inherited across ``execve`` (the jobs process), with
    the part of :class:`subprocess.Popen` that :class:`~lamd.jobs.process.JobsChild` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reaped(self, status: int) -> int:
        self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0
                return 0
            if pid:
                self._reaped(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signo: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signo)

    def kill(self) -> None:
        self.send_signal(_signal.SIGKILL)


def adopt_jobs_child(jobs: Any, pid: int) -> bool:
    """Make *jobs* (a :class:`~lamd.jobs.process.JobsChild` not started)
    watch the jobs process *pid* its predecessor started; False if it is gone."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        if e.errno != errno.ESRCH:
            log.warning("jobs: cannot watch the jobs process %d: %s", pid, e.strerror)
        return False
    jobs.proc = AdoptedChild(pid)
    jobs.pidfd = pidfd
    jobs.loop.add_reader(pidfd, lambda _ev: jobs._exited())
    return True


__all__ = ["REEXEC_SIGNAL", "DRAIN_TIMEOUT", "RESTORE_OPTION", "safe_point", "conn_states",
           "write_handover", "successor_argv", "exec_successor", "read_handover",
           "close_inherited", "abandon", "keep", "unblock_reexec_signal", "uninherit",
           "adopt_listener", "connections", "adopt_connections",
           "AdoptedChild", "adopt_jobs_child"]
