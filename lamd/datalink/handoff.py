"""The LAM prefix tree's ``lamd`` under systemd: hboot's arguments to the
user's datalink socket (``lamd-dl@USER.socket``).

Stock hboot starts the prefix tree's ``bin/lamd`` with ``-H ADDR -P PORT -n
NODE -o ORIGIN [-x] [-d] [-sessionprefix DIR] [-sessionsuffix S]``. Where
the user's session directory holds :data:`~lamd.session.LAMD_DATALINK_SOCKET`
(a socket of that user: only ``lamd-dl@.socket`` makes it), the node's
daemon is systemd's: ``python3 -I -S -c ...handoff.main()... ARGS...`` writes
the arguments there (:func:`encode_request`), which starts
``lamd-dl@USER.service`` (:mod:`lamd.datalink.process`), and reports what
it answers: the callback made (:data:`CALLED_BACK`), then the universe
served (:data:`OK`) or why not (:data:`ERROR`). Exit status 0 if served,
1 if not (the reason on stderr), :data:`EXIT_NOT_HERE` if there is no such
socket here (then ``bin/lamd`` starts ``lamd-kernel`` by hand, as before).

Cheap on purpose: this module and :mod:`lamd.session` only, and ``_socket``
rather than :mod:`socket` (whose enums and selectors are 4.4 ms of the
hand-off's start, and of the datalink service's before its callback:
:mod:`.early` reads the request with :func:`read_request`). hboot waits for
nothing, but lamboot's nodes boot one after the other; every wait bounded.
"""

from __future__ import annotations

import _socket
import os
import stat
import sys
import time

TYPE_CHECKING = False  # no typing import on lamboot's path (mypy knows the name)
if TYPE_CHECKING:
    from typing import Sequence, Union

    import socket

    AnySocket = Union[socket.socket, _socket.socket]

from ..session import LAMD_DATALINK_SOCKET, Session, SessionError

#: What a request starts with.
MAGIC = b"LAMD-DATALINK 1\n"
#: Status words of the service's answer lines.
CALLED_BACK = "called-back"
OK = "ok"
ERROR = "error"
#: ``bin/lamd``: no systemd datalink here, start the daemon by hand.
EXIT_NOT_HERE = 100
EXIT_OK = 0
EXIT_FAILED = 1
#: Seconds for the service to start, reach the kernel and call lamboot back.
CALLBACK_TIMEOUT = 60.0
#: Seconds from the callback to the universe served (lamboot waits for
#: every node: the boot agent's own limit, and some).
BOOT_TIMEOUT = 330.0


def encode_request(argv: Sequence[str]) -> bytes:
    """hboot's arguments as the datalink socket takes them: NUL-terminated,
    then an empty one."""
    return MAGIC + b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in argv) + b"\0"


#: Longest request (hboot's arguments, NUL-terminated, then an empty one).
MAX_REQUEST = 16 * 1024
#: How long the service waits for the request on its first connection.
REQUEST_TIMEOUT = 10.0


def read_request(conn: "AnySocket", timeout: float = REQUEST_TIMEOUT) -> list[str]:
    """The service's side of :func:`encode_request`: the arguments of one
    request (ValueError if malformed, late or too long)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while not (buf.startswith(MAGIC) and (buf.endswith(b"\0\0") or buf == MAGIC + b"\0")):
        left = deadline - time.monotonic()
        if left <= 0:
            raise ValueError("no request in time")
        conn.settimeout(left)
        try:
            data = conn.recv(4096)
        except TimeoutError:
            raise ValueError("no request in time") from None
        if not data:
            raise ValueError("end of file before the whole request")
        buf += data
        if len(buf) > MAX_REQUEST or not MAGIC.startswith(bytes(buf[:len(MAGIC)])):
            raise ValueError("not a datalink request")
    body = bytes(buf[len(MAGIC):-1])
    return [a.decode("utf-8", "surrogateescape") for a in body.split(b"\0")[:-1]] if body else []


#: What a request through lamd-dl@.socket's FIFO starts with. The prefix
#: tree's ``bin/lamd`` writes it with one ``printf '%s\0' MAGIC ARGS... ''``
#: (a shell builtin: no Python, no fork): each field NUL-terminated, an
#: empty one last. No answer comes back: hboot waits for nothing, and the
#: service's log says what became of the request.
FIFO_MAGIC = b"LAMD-DATALINK 1\0"
#: PIPE_BUF: a write of at most this many bytes to a FIFO is never
#: interleaved with another writer's. ``bin/lamd`` writes requests well
#: below it (longer ones, empty arguments, newlines: the socket's way).
FIFO_MAX = 4096


def encode_fifo_request(argv: Sequence[str]) -> bytes:
    """A request as ``bin/lamd`` writes it to the FIFO (every argument non-empty)."""
    if any(not a for a in argv):
        raise ValueError("an empty argument cannot go through the FIFO")
    return FIFO_MAGIC + b"".join(a.encode("utf-8", "surrogateescape") + b"\0"
                                 for a in argv) + b"\0"


def split_fifo_request(buf: bytes) -> tuple[list[str] | None, bytes]:
    """The first request in *buf* (bytes read from the FIFO) and what
    follows it; (None, *buf*) while it is incomplete. ValueError if *buf*
    does not begin with a request (or one longer than :data:`FIFO_MAX`)."""
    if not buf.startswith(FIFO_MAGIC):
        if FIFO_MAGIC.startswith(buf):
            return None, buf
        raise ValueError("not a datalink request")
    end = buf.find(b"\0\0", len(FIFO_MAGIC) - 1)
    if end < 0 or end + 2 > FIFO_MAX:
        if len(buf) >= FIFO_MAX:
            raise ValueError(f"a request longer than {FIFO_MAX} bytes")
        return None, buf
    body = buf[len(FIFO_MAGIC):end + 1]
    argv = [a.decode("utf-8", "surrogateescape") for a in body.split(b"\0")[:-1]]
    return argv, buf[end + 2:]


def session_of(argv: Sequence[str]) -> Session:
    """The session hboot's ``-sessionprefix``/``-sessionsuffix`` (and the
    environment, as LAM's ``lam_tmpdir_init``) name."""
    opts: dict[str, str] = {}
    for i, a in enumerate(argv[:-1]):
        if a in ("-sessionprefix", "-sessionsuffix"):
            opts[a] = argv[i + 1]
    return Session.for_user(prefix=opts.get("-sessionprefix"),
                            suffix=opts.get("-sessionsuffix"))


def datalink_socket(session: Session) -> str | None:
    """The session's datalink socket if it is one, and ours; else None."""
    path = os.path.join(session.directory, LAMD_DATALINK_SOCKET)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.getuid():
        return None
    return path


def _lines(s: _socket.socket):
    """Answer lines, each within the deadline the caller sets on *s*."""
    buf = b""
    while True:
        while b"\n" not in buf:
            data = s.recv(4096)
            if not data:
                if buf:
                    yield buf.decode("utf-8", "replace")
                return
            buf += data
            if len(buf) > 4096:
                raise ValueError("answer line too long")
        line, buf = buf.split(b"\n", 1)
        yield line.decode("utf-8", "replace")


def handoff(path: str, argv: Sequence[str], *, callback_timeout: float = CALLBACK_TIMEOUT,
            boot_timeout: float = BOOT_TIMEOUT) -> tuple[int, str]:
    """Hand *argv* to the datalink socket *path*; (exit status, last answer).
    A socket nobody listens on is :data:`EXIT_NOT_HERE`."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(callback_timeout)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return EXIT_NOT_HERE, f"nobody listens on {path}"
        try:
            s.sendall(encode_request(argv))
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (refused) before the whole request: read why
        last = ""
        deadline = time.monotonic() + callback_timeout
        for line in _lines(s):
            last = line
            word = line.split(" ", 1)[0]
            if word == OK:
                return EXIT_OK, line
            if word == ERROR:
                return EXIT_FAILED, line
            if word == CALLED_BACK:
                deadline = time.monotonic() + boot_timeout
            s.settimeout(max(0.001, deadline - time.monotonic()))
        return EXIT_FAILED, f"the datalink service closed the connection ({last or 'no answer'})"
    except TimeoutError:
        return EXIT_FAILED, "no answer from the datalink service in time"
    except (OSError, ValueError) as e:
        return EXIT_FAILED, f"{path}: {e}"
    finally:
        s.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        path = datalink_socket(session_of(args))
    except SessionError:
        path = None
    if path is None:
        return EXIT_NOT_HERE
    rc, line = handoff(path, args)
    if rc == EXIT_OK:
        return rc
    if rc != EXIT_NOT_HERE:
        print(f"lamd (systemd datalink): {line}", file=sys.stderr)
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
