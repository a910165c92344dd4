"""Socket activation: adopt the listening socket ``lamd@USER.socket`` passes
(``sd_listen_fds``), and refuse anything else with a clear message."""

from __future__ import annotations

import os
import _socket  # not socket, whose enums cost the first reply (issue 13)
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Callable

from .errors import ServiceError

SD_LISTEN_FDS_START = 3


def under_systemd() -> bool:
    """True when started by systemd (as a service, not by hand)."""
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


def _listen_fds() -> list[tuple[int, str]]:
    """The descriptors systemd passed and their names (``LISTEN_FDNAMES``),
    honouring LISTEN_PID; unsets the env."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        n = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        names = os.environ.get("LISTEN_FDNAMES", "").split(":")
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
    if pid != os.getpid() or n <= 0:
        return []
    names += ["unknown"] * (n - len(names))
    return [(SD_LISTEN_FDS_START + i, names[i]) for i in range(n)]


def _describe_fd(fd: int) -> str:
    try:
        st = os.fstat(fd)
    except OSError as e:
        return f"descriptor {fd} is not open ({e.strerror})"
    if not stat.S_ISSOCK(st.st_mode):
        kind = ("a regular file" if stat.S_ISREG(st.st_mode) else
                "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a character device" if stat.S_ISCHR(st.st_mode) else
                "a directory" if stat.S_ISDIR(st.st_mode) else "not a socket")
        return f"descriptor {fd} is {kind}, not a socket"
    return ""


def _kind_name(enum: str, value: int) -> str:
    """``AF_INET`` for 2: the name socket's *enum* gives *value* (imported
    only to word an error)."""
    import socket

    try:
        return getattr(socket, enum)(value).name
    except ValueError:
        return str(value)


def check_listen_socket(fd: int) -> _socket.socket:
    """Wrap *fd* as a socket if it is a listening AF_UNIX stream socket.

    Raises :class:`ServiceError` naming what is wrong otherwise. The
    descriptor is not closed on error (it belongs to systemd's socket unit).
    """
    problem = _describe_fd(fd)
    if problem:
        raise ServiceError(f"socket activation: {problem}; "
                           "lamd@.socket must pass one ListenStream= AF_UNIX socket")
    s = _socket.socket(fileno=fd)
    try:
        family, stype = s.family, s.type
        listening = s.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN)
    except OSError as e:
        s.detach()
        raise ServiceError(f"socket activation: cannot inspect descriptor {fd}: {e}") from None
    if family != _socket.AF_UNIX:
        s.detach()
        name = _kind_name("AddressFamily", family)
        raise ServiceError(f"socket activation: descriptor {fd} is an {name} socket, "
                           "not AF_UNIX; lamd serves a local LAM session socket only")
    if stype != _socket.SOCK_STREAM:
        s.detach()
        name = _kind_name("SocketKind", stype)
        raise ServiceError(f"socket activation: descriptor {fd} is a {name} socket, "
                           "not SOCK_STREAM (use ListenStream=, not ListenDatagram=)")
    if not listening:
        s.detach()
        raise ServiceError(f"socket activation: descriptor {fd} is not listening "
                           "(Accept=no is required)")
    return s


def adopt_listen_socket(stored: dict[str, int] | None = None,
                        is_stored: Callable[[str], bool] = lambda _name: False
                        ) -> _socket.socket | None:
    """The listening socket passed by systemd (LISTEN_FDS), or None.

    Descriptors whose name *is_stored* (what the daemon put in systemd's
    descriptor store before a crash, ``lamd.kernelio.fdstore``) are put in
    *stored* (name to descriptor), close-on-exec, and are not the listener.

    None means "not socket-activated": the daemon binds its own socket. The
    returned socket belongs to systemd: the daemon must never unlink its path.
    Anything but exactly one listening AF_UNIX stream socket raises
    :class:`ServiceError` with a message saying what was passed instead.
    """
    fds = []
    for fd, name in _listen_fds():
        if stored is not None and is_stored(name):
            os.set_inheritable(fd, False)
            stored[name] = fd
        else:
            fds.append(fd)
    if not fds:
        return None
    if len(fds) != 1:
        raise ServiceError(f"socket activation: expected exactly 1 socket from systemd, "
                           f"got {len(fds)} (descriptors {fds[0]}..{fds[-1]}); "
                           "lamd@.socket must have a single ListenStream=")
    s = check_listen_socket(fds[0])
    os.set_inheritable(s.fileno(), False)
    return s
