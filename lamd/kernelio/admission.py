"""Admitting clients: accept, identity, pidfds, running out of descriptors
(the accept branch of LAM's ``kio_req``).

Identity comes from the socket, never from what a client writes:
SO_PEERCRED gives the pid and uid (a connection from another uid is refused)
and a pidfd pins the process, so every signal later goes to the process
that connected and never to a process that reused its pid. A client that
died before it was accepted, or that cannot be pinned (no descriptor left
for its pidfd), is refused with a log line; none is ever admitted without a
pidfd. How the pidfd is had (:meth:`Admission._pin`):

* Linux >= 6.5: ``SO_PEERPIDFD``, the socket's own pidfd. Exact: the socket
  holds a reference to the process that called ``connect()`` (the one whose
  credentials SO_PEERCRED reports), so the pidfd names that process and no
  other, whatever happened to its pid since. Newer kernels hand one out even
  for a peer that has exited (or been reaped), so a pidfd that already polls
  readable (its process exited) is refused: its pid may name another
  process by now, and the kill file and ``lamd-clients`` list pids.
* Older kernels: ``pidfd_open`` of SO_PEERCRED's pid, then a check that the
  peer's end of the socket is still open (no POLLHUP/POLLRDHUP). Exact
  whenever the connecting process is alive at ``pidfd_open``: a living (or
  zombie) process's pid cannot be reused, so the pidfd is that process's.
  If it died before, and its end of the socket was its alone, its end is
  closed by then and the client is refused; a zombie is refused the same
  way. This is issue 9's start-time check done another way: instead of
  comparing the pinned process's start time with the connection's, it
  proves the connecting process was alive when pinned.

  What remains, on these kernels only: the connecting process forks (or
  passes the socket with SCM_RIGHTS) while its connection still waits in
  the listen backlog, dies and is reaped, and its pid is reused by a new
  process before the daemon accepts; the other holder keeps the peer's end
  open, so the check passes and the pidfd pins the new process. A start-time
  check cannot close this: the impostor started after the connection was
  made but may well have started before the accept, and the kernel records
  no connect time for a Unix socket (comparing with the accept time only
  catches a reuse in the microseconds between accept and ``pidfd_open``).
  Closing it needs the peer's identity from the socket, which is what
  SO_PEERPIDFD added. It is accepted because it needs a client that forks
  before it is accepted (liblam writes its attach at once, from the process
  that connected), the whole pid space (``kernel.pid_max``) to wrap round
  within the milliseconds a connection waits (the daemon accepts one client
  every turn), and because the daemon runs as the user: a wrong pidfd can
  only ever signal one of that user's own processes, never another user's.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import struct
from functools import partial

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Final

from .. import lazylog
from .._static import trait
from .kiobase import KIOBase
from .transfer import Connection

log = lazylog.getLogger("lamd.kernelio")

# Final: compiled, a plain module global is a dict lookup at every use
_UCRED: Final = struct.Struct("3i")
_UCRED_SIZE: Final[int] = _UCRED.size
_AF_UNIX: Final[int] = _socket.AF_UNIX
_SOCK_STREAM: Final[int] = _socket.SOCK_STREAM
_SOL_SOCKET: Final[int] = _socket.SOL_SOCKET
_SO_PEERCRED: Final[int] = _socket.SO_PEERCRED
_EPOLLIN: Final[int] = select.EPOLLIN
_POLLIN: Final[int] = select.POLLIN
#: ``SO_PEERPIDFD`` (asm-generic/socket.h; Linux 6.5)
SO_PEERPIDFD = getattr(_socket, "SO_PEERPIDFD", 77)
_NO_DESCRIPTORS: Final = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_HUNG_UP = select.POLLHUP | select.POLLRDHUP | select.POLLERR


@trait
class Admission(KIOBase):
    """The part of :class:`~lamd.kernelio.KernelIO` that takes new clients."""

    def _on_accept(self, _ev: int) -> None:
        """One client per event: epoll is level-triggered, the next comes next turn."""
        try:
            # a bare fd: no getsockname, no ioctl (socket.socket's own accept
            # calls it too; typeshed does not list it)
            fd, _addr = getattr(self.listener, "_accept")()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in _NO_DESCRIPTORS:
                self._out_of_descriptors(e)
            elif e.errno not in (errno.ECONNABORTED, errno.EPROTO):
                raise
            return
        # the C socket type, not socket.socket: no Python-level __init__ or close
        # per client (measured: a raw accept4(SOCK_NONBLOCK) through ctypes and
        # getsockopt through ctypes cost more CPU than they save in system calls)
        self._admit(_socket.socket(_AF_UNIX, _SOCK_STREAM, 0, fd))

    def _out_of_descriptors(self, e: OSError, spare_used: bool = True) -> None:
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
        if not spare_used:
            return  # the client was accepted (and closed): the listener is fine
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                fd, _addr = getattr(self.listener, "_accept")()
                os.close(fd)
            except OSError:
                pass
            self._spare_fd = _spare()
            return
        # not even that: stop watching the listener for a moment
        self.loop.remove(self.listener.fileno())
        self.loop.call_later(0.1, self._relisten)

    def _relisten(self) -> None:
        fd = self.listener.fileno()
        if fd not in self.loop.handlers:
            try:
                self.loop.add_reader(fd, self._on_accept)
            except OSError:
                pass

    def _accepting_again(self) -> None:
        """A client left while we were refusing: take new ones again."""
        self._refusing = False
        log.info("a client left: accepting clients again (%d attached)", len(self.conns))
        if self._spare_fd is None:
            self._spare_fd = _spare()
        self._relisten()

    def _admit(self, sock: _socket.socket) -> None:
        # blocking, as accept4 gave it: every receive and send passes
        # MSG_DONTWAIT (no ioctl per client; splice sets O_NONBLOCK first)
        try:
            pid, uid, _gid = _UCRED.unpack(
                sock.getsockopt(_SOL_SOCKET, _SO_PEERCRED, _UCRED_SIZE))
        except OSError:
            sock.close()
            return
        if uid != self.uid:
            self.refused_uid += 1
            log.warning("refused a connection from pid %d uid %d (this daemon serves uid %d)",
                        pid, uid, self.uid, extra={"LAM_PID": pid, "LAM_UID": uid})
            sock.close()
            return
        try:
            pidfd, why = self._pin(sock, pid)
        except OSError as e:  # EMFILE, ENFILE, ENOMEM: no descriptor for its pidfd
            # counted and logged before the client can see its refusal
            self.refused_unpinned += 1
            self._out_of_descriptors(e, spare_used=False)
            sock.close()
            return
        if pidfd is None:
            self.refused_unpinned += 1
            log.warning("refused a connection from pid %d: %s", pid, why,
                        extra={"LAM_PID": pid, "LAM_UID": uid})
            sock.close()
            return
        if self._refusing:
            self._accepting_again()  # descriptors came back (a pidfd could be had)
        c = Connection(sock, pid, uid)
        c.pidfd = pidfd
        self.conns[c.fd] = c
        c.mask = _EPOLLIN
        # a partial, not a lambda: one Python frame less per event, and smaller
        self.loop.add_reader(c.fd, partial(self._on_client, c))
        self.kernel.connect(c, pid, uid)
        if self.crash is not None:
            self.crash.add(c)  # systemd keeps it across a crash
        self._read(c)  # a client writes its attach right after connecting: it may be here

    def _pin(self, sock: _socket.socket, pid: int) -> tuple[int | None, str]:
        """A pidfd for the process that connected on *sock*, or (None, why).

        *pid* is SO_PEERCRED's. With SO_PEERPIDFD the pidfd is exact; with
        ``pidfd_open`` it is exact unless the connecting process handed its
        end of the socket on before dying in the backlog and its pid was
        reused (the module's docstring says why that is left open on kernels
        older than 6.5). Raises OSError when no descriptor is left for the
        pidfd."""
        if self._peerpidfd:
            try:
                pidfd = sock.getsockopt(_SOL_SOCKET, SO_PEERPIDFD)
            except OSError as e:
                if e.errno in (errno.ENOPROTOOPT, errno.EINVAL):
                    self._peerpidfd = False  # an older kernel: pidfd_open below
                elif e.errno == errno.ESRCH:
                    return None, "it exited before it was accepted"
                elif e.errno in _NO_DESCRIPTORS:
                    raise
                else:
                    return None, f"cannot pin it with a pidfd ({e.strerror})"
            else:
                # the socket's pidfd pins the peer even once it has exited
                # (newer kernels hand one out for a reaped peer too): one that
                # died in the backlog must not be listed, its pid may be reused
                p = select.poll()
                p.register(pidfd, _POLLIN)  # a pidfd polls readable once its process exited
                if p.poll(0):
                    os.close(pidfd)
                    return None, "it exited before it was accepted"
                return pidfd, ""
        if pid <= 0:
            return None, "no peer pid"
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None, "it exited before it was accepted"
        except OSError as e:
            if e.errno in _NO_DESCRIPTORS:
                raise
            return None, f"cannot pin it with a pidfd ({e.strerror})"
        # the pid is the peer's only while the peer lives: its end still open
        p = select.poll()
        p.register(sock.fileno(), select.POLLIN | select.POLLRDHUP)
        for _fd, ev in p.poll(0):
            if ev & _HUNG_UP:
                os.close(pidfd)
                return None, "it exited before it was accepted (its pid may be reused)"
        return pidfd, ""


def _spare() -> int | None:
    try:
        return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
