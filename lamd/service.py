"""systemd integration: socket activation, sd_notify, journal logging, proctitle.

Everything here degrades gracefully when not running under systemd, so the
daemon behaves the same by hand (stderr logging, its own socket) as under
``lamd@USER.service`` (journal logging, the socket passed by ``lamd@USER.socket``).

Public interface used by the daemon: :class:`ServiceError`,
:func:`adopt_listen_socket`, :func:`setup_logging`, :class:`Notifier`,
:func:`set_proctitle`.  :func:`prepare_session_dir` (also ``python3 -m
lamd.service prepare-session USER``) is the socket unit's ``ExecStartPre=``.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import socket
import stat
import sys

from .session import Session

#: sysexits.h EX_CONFIG: a configuration problem that restarting cannot fix.
#: The unit lists it in ``RestartPreventExitStatus=`` so it never crash-loops.
EX_CONFIG = 78

SD_LISTEN_FDS_START = 3

#: journald field names: upper-case ASCII, digits, underscore; not leading
#: underscore (those are trusted fields only journald may set); at most 64.
_JOURNAL_FIELD = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,63}$")

#: Fields journal logging already sets itself; an ``extra=`` may not override.
_RESERVED_FIELDS = frozenset({
    "MESSAGE", "PRIORITY", "LOGGER", "THREAD_NAME", "PROCESS_NAME",
    "CODE_FILE", "CODE_LINE", "CODE_FUNC", "SYSLOG_IDENTIFIER",
})

SYSLOG_IDENTIFIER = "lamd"


class ServiceError(Exception):
    """A setup problem that must end the daemon with one clear message.

    ``exit_code`` is what the daemon should exit with; it defaults to
    :data:`EX_CONFIG` (78), which ``lamd@.service`` will not restart on.
    """

    def __init__(self, message: str, exit_code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------
# socket activation

def under_systemd() -> bool:
    """True when started by systemd (as a service, not by hand)."""
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


def _listen_fds() -> list[int]:
    """The descriptors systemd passed, honouring LISTEN_PID; unsets the env."""
    try:
        from systemd import daemon as sd_daemon
    except ImportError:  # pragma: no cover - python3-systemd is a Depends
        sd_daemon = None
    if sd_daemon is not None:
        return list(sd_daemon.listen_fds(True))
    # Fallback: sd_listen_fds(3) by hand.
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        n = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
    if pid != os.getpid() or n <= 0:
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))


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


def check_listen_socket(fd: int) -> socket.socket:
    """Wrap *fd* as a socket if it is a listening AF_UNIX stream socket.

    Raises :class:`ServiceError` naming what is wrong otherwise. The
    descriptor is not closed on error (it belongs to systemd's socket unit).
    """
    problem = _describe_fd(fd)
    if problem:
        raise ServiceError(f"socket activation: {problem}; "
                           "lamd@.socket must pass one ListenStream= AF_UNIX socket")
    s = socket.socket(fileno=fd)
    try:
        family, stype = s.family, s.type
        listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as e:
        s.detach()
        raise ServiceError(f"socket activation: cannot inspect descriptor {fd}: {e}") from None
    if family != socket.AF_UNIX:
        s.detach()
        name = getattr(family, "name", str(family))
        raise ServiceError(f"socket activation: descriptor {fd} is an {name} socket, "
                           "not AF_UNIX; lamd serves a local LAM session socket only")
    if stype != socket.SOCK_STREAM:
        s.detach()
        name = getattr(stype, "name", str(stype))
        raise ServiceError(f"socket activation: descriptor {fd} is a {name} socket, "
                           "not SOCK_STREAM (use ListenStream=, not ListenDatagram=)")
    if not listening:
        s.detach()
        raise ServiceError(f"socket activation: descriptor {fd} is not listening "
                           "(Accept=no is required)")
    return s


def adopt_listen_socket() -> socket.socket | None:
    """The listening socket passed by systemd (LISTEN_FDS), or None.

    None means "not socket-activated": the daemon binds its own socket. The
    returned socket belongs to systemd: the daemon must never unlink its path.
    Anything but exactly one listening AF_UNIX stream socket raises
    :class:`ServiceError` with a message saying what was passed instead.
    """
    fds = _listen_fds()
    if not fds:
        return None
    if len(fds) != 1:
        raise ServiceError(f"socket activation: expected exactly 1 socket from systemd, "
                           f"got {len(fds)} (descriptors {fds[0]}..{fds[-1]}); "
                           "lamd@.socket must have a single ListenStream=")
    s = check_listen_socket(fds[0])
    os.set_inheritable(s.fileno(), False)
    return s


# --------------------------------------------------------------------------
# logging

def journal_fields(record: logging.LogRecord) -> dict[str, object]:
    """Structured journal fields carried by a record's ``extra=``.

    Every record attribute whose name is a valid journal field name (upper
    case, e.g. ``LAM_PID``, ``LAM_REQUEST``, ``LAM_ERROR``) becomes a field;
    ``None`` values are dropped.
    """
    out: dict[str, object] = {}
    for key, value in record.__dict__.items():
        if value is None or key in _RESERVED_FIELDS or not _JOURNAL_FIELD.match(key):
            continue
        out[key] = value
    return out


class LamJournalHandler(logging.Handler):
    """Native journal logging with the ``extra=`` fields as journal fields.

    Unlike ``systemd.journal.JournalHandler`` this sends only valid field
    names (never the LogRecord's own lower-case attributes) and tags every
    entry ``SYSLOG_IDENTIFIER=lamd``.
    """

    def __init__(self, level: int = logging.NOTSET, sender=None,
                 identifier: str = SYSLOG_IDENTIFIER) -> None:
        super().__init__(level)
        if sender is None:
            from systemd import journal
            sender = journal.send
        self._send = sender
        self.identifier = identifier

    @staticmethod
    def map_priority(levelno: int) -> int:
        if levelno <= logging.DEBUG:
            return 7
        if levelno <= logging.INFO:
            return 6
        if levelno <= logging.WARNING:
            return 4
        if levelno <= logging.ERROR:
            return 3
        return 2

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            fields = {k: str(v) for k, v in journal_fields(record).items()}
            self._send(msg,
                       PRIORITY=str(self.map_priority(record.levelno)),
                       SYSLOG_IDENTIFIER=self.identifier,
                       LOGGER=record.name,
                       CODE_FILE=record.pathname,
                       CODE_LINE=record.lineno,   # journal.send wants an int
                       CODE_FUNC=record.funcName,
                       **fields)
        except Exception:
            self.handleError(record)


class StderrFormatter(logging.Formatter):
    """By-hand format: ``lamd[PID]: LEVEL message [LAM_PID=.. LAM_REQUEST=..]``."""

    def __init__(self) -> None:
        super().__init__("lamd[%(process)d]: %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = journal_fields(record)
        if fields:
            text += " [" + " ".join(f"{k}={v}" for k, v in sorted(fields.items())) + "]"
        return text


def parse_level(level: str | int | None) -> int:
    """A logging level from a name (``debug``, ``INFO``...) or a number.

    None means ``$LAMD_LOG_LEVEL`` (the unit's environment file), else info.
    Raises :class:`ServiceError` on an unknown name.
    """
    if level is None or level == "":
        level = os.environ.get("LAMD_LOG_LEVEL") or "info"
    if isinstance(level, int):
        return level
    text = str(level).strip()
    if text.isdigit():
        return int(text)
    names = {"debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO,
             "warning": logging.WARNING, "warn": logging.WARNING,
             "error": logging.ERROR, "err": logging.ERROR,
             "critical": logging.CRITICAL, "crit": logging.CRITICAL}
    try:
        return names[text.lower()]
    except KeyError:
        raise ServiceError(f"unknown log level {text!r} "
                           f"(one of: {', '.join(sorted(names))})") from None


def setup_logging(level: str | int | None = "info", *, journal: bool | None = None) -> None:
    """Configure the root logger: journal under systemd, else stderr.

    *journal* forces the choice (tests); by default the journal is used when
    ``JOURNAL_STREAM`` or ``INVOCATION_ID`` is set and python3-systemd works.
    """
    lvl = parse_level(level)
    if journal is None:
        journal = under_systemd()
    handler: logging.Handler | None = None
    if journal:
        try:
            handler = LamJournalHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
        except ImportError:  # pragma: no cover - python3-systemd is a Depends
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)


# --------------------------------------------------------------------------
# sd_notify

class Notifier:
    """sd_notify: READY, STATUS, STOPPING, WATCHDOG (via sdnotify).

    Every method is a no-op when ``NOTIFY_SOCKET`` is unset (run by hand).
    Notification failures are logged once and never raised: a daemon must
    not die because its supervisor went away.
    """

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sender = None
        self._last_status: str | None = None
        self._warned = False
        self.sent: list[str] = []   # last few messages, for tests/debugging
        if self.enabled:
            try:
                import sdnotify
                # debug=True: raise on failure instead of silently dropping.
                self._sender = sdnotify.SystemdNotifier(debug=True)
            except Exception:  # ImportError, or the socket is not there (yet)
                self._sender = None
        # WATCHDOG_USEC is honoured only if WATCHDOG_PID is absent or ours.
        self._watchdog_usec = _watchdog_usec()

    def _notify(self, msg: str) -> None:
        if not self.enabled:
            return
        self.sent = (self.sent + [msg])[-16:]
        try:
            if self._sender is not None:
                self._sender.notify(msg)
            else:
                _raw_notify(msg)
        except OSError as e:
            if not self._warned:
                self._warned = True
                logging.getLogger("lamd.service").warning(
                    "sd_notify(%s) failed: %s", msg.split("=", 1)[0], e)

    def ready(self) -> None:
        self._notify("READY=1\nMAINPID=%d" % os.getpid())

    def status(self, text: str) -> None:
        text = " ".join(str(text).split())   # one line
        if text == self._last_status:
            return
        self._last_status = text
        self._notify("STATUS=" + text)

    def stopping(self) -> None:
        self._notify("STOPPING=1")

    def watchdog(self) -> None:
        if self._watchdog_usec:
            self._notify("WATCHDOG=1")

    def watchdog_period(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
        if not self.enabled or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2e6


def _watchdog_usec() -> int | None:
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = os.environ.get("WATCHDOG_PID")
    if wpid and wpid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value if value > 0 else None


def _notify_address() -> str:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    return addr


_raw_sock: socket.socket | None = None


def _raw_notify(msg: str) -> None:
    global _raw_sock
    if _raw_sock is None:
        _raw_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    _raw_sock.sendto(msg.encode(), _notify_address())


# --------------------------------------------------------------------------
# process title

def set_proctitle(text: str) -> None:
    """Set what ``ps`` shows, e.g. ``lamd: alice, 3 clients``."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - python3-setproctitle is a Depends
        return
    setproctitle.setproctitle(text)


def proctitle(user: str | None = None, clients: int = 0) -> str:
    """The standard title: ``lamd: USER, N client(s)``."""
    if user is None:
        user = current_user()
    return f"lamd: {user}, {clients} client{'' if clients == 1 else 's'}"


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


# --------------------------------------------------------------------------
# session directory (the socket unit's ExecStartPre=, run as root)

def session_dir(user: str, host: str | None = None, prefix: str | None = None,
                suffix: str | None = None) -> str:
    """LAM's ``<prefix>/lam-<user>@<host>[-<suffix>]`` (share/etc/kill.c)."""
    return Session.for_user(prefix=prefix, suffix=suffix, user=user, host=host).directory


def prepare_session_dir(user: str, path: str | None = None) -> str:
    """Create *user*'s session directory 0700 owned by them, or check it.

    Must run as root (it chowns). Never follows symlinks: an existing entry
    must be a real directory already owned by *user* with mode 0700, else
    :class:`ServiceError` (someone else may have planted it in /tmp).
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ServiceError(f"user {user!r} does not exist (lamd@{user} names a user)") from None
    if pw.pw_uid == 0:
        raise ServiceError("LAM refuses to run as root: lamd@root is not supported")
    if path is None:
        path = session_dir(user)
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    except OSError as e:
        raise ServiceError(f"cannot create session directory {path}: {e.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise ServiceError(f"session directory {path} is not a directory "
                           f"(or is a symlink): {e.strerror}; remove it") from None
    try:
        st = os.fstat(fd)
        if created:
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
            os.fchmod(fd, 0o700)
            st = os.fstat(fd)
        if st.st_uid != pw.pw_uid:
            try:
                owner = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                owner = str(st.st_uid)
            raise ServiceError(f"session directory {path} is owned by {owner}, not {user}; "
                               "LAM clients would reject it: remove it")
        if stat.S_IMODE(st.st_mode) != 0o700:
            raise ServiceError(f"session directory {path} has mode "
                               f"{stat.S_IMODE(st.st_mode):04o}, not 0700; "
                               "LAM clients would reject it: fix or remove it")
    finally:
        os.close(fd)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python3 -m lamd.service prepare-session USER [PATH]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3) or args[0] != "prepare-session":
        print("usage: python3 -m lamd.service prepare-session USER [PATH]", file=sys.stderr)
        return 2
    try:
        path = prepare_session_dir(args[1], args[2] if len(args) == 3 else None)
    except ServiceError as e:
        print(f"lamd: {e}", file=sys.stderr)
        return e.exit_code
    print(f"lamd: session directory {path} ready", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
