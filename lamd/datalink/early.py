"""The first steps of ``python3 -m lamd.datalink`` started by
``lamd-dl@.socket``, before it imports the rest (:mod:`.process`, about
40 ms of imports): the boot request read from the first connection, the
announcement written, the kernel's socket connected, and lamboot called
back (:func:`lamd.boot.early.call_back_now`, as the ``lamd`` command does
by hand).

Under systemd that connect starts ``lamd@USER.service``, which then starts
while this process imports, instead of after (a node whose services
systemd starts on demand boots about 150 ms slower than one booted by
hand: docs/multinode.md). The announcement must come first: a kernel that
starts from then on leaves the datalink to this process. lamboot boots the
next node once this one has called back, so the callback too comes before
the imports.

Nothing here decides anything. A start after a crash (a state in the
descriptor store), anything unexpected in what systemd passed, or a
request that does not come in time: :func:`start` does nothing and
:mod:`.process` does it all, as before. A request it reads is handed on as
read, still to be checked there. :meth:`Early.close` undoes what nobody
took over (:mod:`.process` calls it on every way out): the
announcement, unless the datalink process took it for its own, and the
kernel's connection, which it closes itself once the kernel answers.
"""

from __future__ import annotations

import _socket
import fcntl
import os

from ..boot.early import call_back_now
from ..session import LAM_SOCKET, LAMD_DATALINK
from ..session.kkill import read_proc_stat
from .handoff import REQUEST_TIMEOUT, read_request

#: names in lamd-dl@.service's descriptor store (:mod:`.keep`)
STATE_PREFIX = "dl-state-"
DLI_SOCKET = "dl-in"
DLO_SOCKET = "dl-out"
#: sd_listen_fds(3)
SD_LISTEN_FDS_START = 3

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


class Early:
    """What :func:`start` did: the first connection (*conn*) and its
    request (*argv*, or *error* if it could not be read), the announcement
    (``(path, fd)``, or None if it could not be written) and the kernel's
    connection (*kernel*, or None)."""

    __slots__ = ("conn", "argv", "error", "announced", "kernel")

    def __init__(self, conn: _socket.socket) -> None:
        #: ``_socket``'s (:mod:`socket` is not imported here: 4.4 ms before
        #: the callback); :meth:`connection` gives it as a :class:`socket.socket`
        self.conn: _socket.socket | socket.socket = conn
        self.argv: list[str] = []
        self.error = ""
        #: None once the datalink process has taken it for its own
        self.announced: tuple[str, int] | None = None
        self.kernel: _socket.socket | None = None

    def connection(self) -> socket.socket:
        """The first connection, as the :class:`socket.socket` :mod:`.process`
        works with (the same descriptor; :meth:`close` still closes it)."""
        import socket

        if not isinstance(self.conn, socket.socket):
            self.conn = socket.socket(fileno=self.conn.detach())
        return self.conn

    def close_kernel(self) -> None:
        """The kernel has been reached (or will not be): its early connection goes."""
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None

    def close(self) -> None:
        """Undo what nobody took over: the announcement withdrawn, the
        connections closed. Idempotent."""
        if self.announced is not None:
            withdraw(*self.announced)
            self.announced = None
        self.close_kernel()
        self.conn.close()


def announce(directory: str) -> tuple[str, int]:
    """Write the session's :data:`~lamd.session.LAMD_DATALINK` file ("PID
    STARTTIME") and lock it for this process's life (the lock is what says
    it runs: :func:`lamd.session.datalink_announced`); (its path, the
    descriptor holding the lock)."""
    st = read_proc_stat(os.getpid())
    path = os.path.join(directory, LAMD_DATALINK)
    tmp = f"{path}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()} {st[1] if st else 0}\n".encode())
        os.replace(tmp, path)
    except OSError:
        os.close(fd)
        raise
    return path, fd


def withdraw(path: str, fd: int) -> None:
    """Remove the announcement if it is still ours, and let go of its lock."""
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def _listener() -> int | None:
    """The one socket lamd-dl@.socket passed, for a boot; None for a start
    after a crash (a state in the store) or anything unexpected. The
    environment is left for :func:`lamd.service.activation._listen_fds`."""
    try:
        if int(os.environ.get("LISTEN_PID", "")) != os.getpid():
            return None
        n = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return None
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    names += ["unknown"] * (n - len(names))
    if any(name.startswith(STATE_PREFIX) for name in names[:n]):
        return None
    fds = [SD_LISTEN_FDS_START + i for i in range(n)
           if names[i] not in (DLI_SOCKET, DLO_SOCKET)]
    return fds[0] if len(fds) == 1 else None


def start() -> Early | None:
    """Under ``lamd-dl@.socket``, for a boot: take the first connection and
    its request, announce, connect to the kernel's socket. None: nothing
    was done (see the module's docstring)."""
    fd = _listener()
    if fd is None:
        return None
    try:
        lst = _socket.socket(fileno=os.dup(fd))  # the unit's socket stays open
    except OSError:
        return None
    try:
        if lst.family != _socket.AF_UNIX:
            return None
        lst.settimeout(REQUEST_TIMEOUT)
        directory = os.path.dirname(lst.getsockname())
        cfd, _ = lst._accept()  # accept4(SOCK_CLOEXEC): blocking, as socket.accept's
    except OSError:
        return None
    finally:
        lst.close()
    try:
        conn = _socket.socket(fileno=cfd)
    except OSError:
        os.close(cfd)
        return None
    early = Early(conn)
    try:
        early.argv = read_request(conn)
    except ValueError as e:
        early.error = str(e)
        return early
    try:
        early.announced = announce(directory)
    except OSError:
        return early  # process.py announces, and says why it cannot
    kernel = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    kernel.setblocking(False)
    try:
        kernel.connect(os.path.join(directory, LAM_SOCKET))
    except BlockingIOError:
        early.kernel = kernel  # the backlog is full: it is coming all the same
    except OSError:
        kernel.close()  # no kernel socket: process.py waits for one, as before
    else:
        early.kernel = kernel
    # lamboot waits for this node's callback before it boots the next: made
    # now, not after .process's imports (boot_agent finishes it). Another
    # session's request is refused there, and calls back nowhere.
    if not any(a in ("-sessionprefix", "-sessionsuffix") for a in early.argv):
        call_back_now(early.argv)
    return early


__all__ = ["Early", "start", "announce", "withdraw", "STATE_PREFIX", "DLI_SOCKET",
           "DLO_SOCKET"]
