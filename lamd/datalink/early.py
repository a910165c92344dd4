"""The first steps of ``python3 -m lamd.datalink`` started by
``lamd-dl@.socket``, before it imports the rest (:mod:`.process`, about
40 ms of imports): the boot request read from the first connection or
from the socket unit's FIFO (:func:`take_request`), the
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
import select
import stat
import time

from ..boot.early import call_back_now
from ..session import LAM_SOCKET, LAMD_DATALINK
from ..session.kkill import read_proc_stat
from .handoff import FIFO_MAX, REQUEST_TIMEOUT, read_request, split_fifo_request

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
    """What :func:`start` did: the first request (*argv*, or *error* if it
    could not be read) and the connection it came on (*conn*; None if it
    came through the FIFO, which has nobody to answer), the announcement
    (``(path, fd)``, or None if it could not be written) and the kernel's
    connection (*kernel*, or None). *later*: how many bytes followed it in
    the FIFO (other requests, dropped: this process boots one universe)."""

    __slots__ = ("conn", "argv", "error", "later", "announced", "kernel")

    def __init__(self, conn: _socket.socket | None) -> None:
        #: ``_socket``'s (:mod:`socket` is not imported here: 4.4 ms before
        #: the callback); :meth:`connection` gives it as a :class:`socket.socket`
        self.conn: _socket.socket | socket.socket | None = conn
        self.argv: list[str] = []
        self.error = ""
        self.later = 0
        #: None once the datalink process has taken it for its own
        self.announced: tuple[str, int] | None = None
        self.kernel: _socket.socket | None = None

    def connection(self) -> socket.socket | None:
        """The first connection, as the :class:`socket.socket` :mod:`.process`
        works with (the same descriptor; :meth:`close` still closes it);
        None for a request through the FIFO."""
        import socket

        if self.conn is not None and not isinstance(self.conn, socket.socket):
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
        if self.conn is not None:
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


def sockets_and_fifos(fds: list[int]) -> tuple[list[int], list[int]]:
    """lamd-dl@.socket's descriptors among *fds*: (its sockets, its FIFOs)."""
    socks, fifos = [], []
    for fd in fds:
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        (fifos if stat.S_ISFIFO(mode) else socks).append(fd)
    return socks, fifos


def passed() -> tuple[int, int | None] | None:
    """The socket and the FIFO (if any) lamd-dl@.socket passed, for a
    boot; None for a start after a crash (a state in the store) or anything
    unexpected. The environment is left for
    :func:`lamd.service.activation._listen_fds`."""
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
    socks, fifos = sockets_and_fifos([SD_LISTEN_FDS_START + i for i in range(n)
                                      if names[i] not in (DLI_SOCKET, DLO_SOCKET)])
    if len(socks) != 1 or len(fifos) > 1:
        return None
    return socks[0], fifos[0] if fifos else None


def drain(fifo: int) -> int:
    """Read what is left in *fifo* (the unit starts this service again while
    it holds anything); how many bytes."""
    n = 0
    while True:
        try:
            data = os.read(fifo, 65536)
        except OSError:   # EAGAIN: empty
            return n
        if not data:
            return n
        n += len(data)


def read_fifo(fifo: int, deadline: float) -> tuple[list[str], bytes]:
    """The first request in the FIFO, and the bytes after it; ValueError
    if there is none by *deadline* or it is malformed (then the FIFO is
    drained)."""
    os.set_blocking(fifo, False)   # systemd opens it so; a test's may not
    buf = b""
    try:
        while True:
            try:
                data = os.read(fifo, FIFO_MAX)
            except BlockingIOError:
                data = b""
            buf += data
            argv, rest = split_fifo_request(buf)
            if argv is not None:
                return argv, rest
            if not data:   # a writer's request comes in one write: this is not one
                left = deadline - time.monotonic()
                p = select.poll()
                p.register(fifo, select.POLLIN)
                if left <= 0 or not p.poll(left * 1000):
                    raise ValueError("an incomplete request in the FIFO")
    except ValueError:
        drain(fifo)
        raise


def take_request(lst: _socket.socket, fifo: int | None,
                 timeout: float | None = REQUEST_TIMEOUT) -> Early | None:
    """The first boot request to come: a connection on *lst* (its request
    read from it) or a request in *fifo*. None if none comes in *timeout*
    seconds (None: no limit; a request that has begun has
    :data:`REQUEST_TIMEOUT` to be whole), or *lst* fails."""
    deadline = None if timeout is None else time.monotonic() + timeout
    p = select.poll()
    p.register(lst.fileno(), select.POLLIN)
    if fifo is not None:
        p.register(fifo, select.POLLIN)
    while True:
        if deadline is None:
            ready = [fd for fd, _ in p.poll()]
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready = [fd for fd, _ in p.poll(left * 1000)]
        # a request that has begun has until then to be whole
        whole_by = deadline if deadline is not None else time.monotonic() + REQUEST_TIMEOUT
        if fifo is not None and fifo in ready:
            early = Early(None)
            try:
                early.argv, rest = read_fifo(fifo, whole_by)
                early.later = len(rest) + drain(fifo)
            except ValueError as e:
                early.error = str(e)
            return early
        if lst.fileno() in ready:
            try:
                cfd, _ = lst._accept()  # accept4(SOCK_CLOEXEC): blocking, as socket.accept's
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return None
            try:
                conn = _socket.socket(fileno=cfd)
            except OSError:
                os.close(cfd)
                return None
            early = Early(conn)
            try:
                early.argv = read_request(conn, max(0.001, whole_by - time.monotonic()))
            except ValueError as e:
                early.error = str(e)
            return early


def idle(got: tuple[int, int | None] | None) -> bool:
    """Under ``lamd-dl@.socket`` (*got*: :func:`passed`'s), started with no
    request waiting and no universe to resume: after a universe
    (``Restart=always``), or by ``systemctl start``. Then the service
    imports everything a boot needs and waits (:func:`start` with *wait*):
    the next lamboot's request is answered by a process already running,
    its callback about a millisecond after the tree's ``bin/lamd`` wrote it."""
    if got is None:
        return False
    p = select.poll()
    for fd in got:
        if fd is not None:
            p.register(fd, select.POLLIN)
    try:
        return not p.poll(0)
    except OSError:
        return False


def start(got: tuple[int, int | None] | None, wait: bool = False) -> Early | None:
    """Under ``lamd-dl@.socket`` (*got*: :func:`passed`'s), for a boot: take
    the first request, from a connection or the FIFO (*wait*: however long
    it takes to come); announce, connect to the kernel's socket, call
    lamboot back. None: nothing was done (see the module's docstring)."""
    if got is None:
        return None
    fd, fifo = got
    try:
        lst = _socket.socket(fileno=os.dup(fd))  # the unit's socket stays open
    except OSError:
        return None
    try:
        if lst.family != _socket.AF_UNIX:
            return None
        directory = os.path.dirname(lst.getsockname())
        lst.setblocking(False)
        early = take_request(lst, fifo, None if wait else REQUEST_TIMEOUT)
    except OSError:
        return None
    finally:
        lst.close()
    if early is None or early.error:
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


__all__ = ["Early", "idle", "start", "take_request", "passed", "sockets_and_fifos", "drain",
           "announce", "withdraw", "STATE_PREFIX", "DLI_SOCKET", "DLO_SOCKET"]
