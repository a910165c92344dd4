"""sd_notify: readiness, status, stopping and the watchdog."""

from __future__ import annotations

import _socket  # not socket, whose enums cost the first reply (issue 13)
import os
import struct
import time

from .. import lazylog

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Protocol

    class FdStore(Protocol):
        """What :class:`lamd.kernelio.fdstore.CrashKeeper` needs of sd_notify
        (:class:`Notifier`, or a test's stand-in)."""

        def fdstore(self, name: str, fd: int) -> bool: ...
        def fdstore_remove(self, name: str) -> None: ...


class Notifier:
    """sd_notify: READY, STATUS, STOPPING, WATCHDOG (via sdnotify).

    Every method is a no-op when ``NOTIFY_SOCKET`` is unset (run by hand).
    Notification failures are logged once and never raised: a daemon must
    not die because its supervisor went away.
    """

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sender = None
        self._sender_made = False  # sdnotify (and socket with it): at the first message
        self._last_status: str | None = None
        self._warned = False
        self._fd_warned = False
        self.sent: list[str] = []   # last few messages, for tests/debugging
        # WATCHDOG_USEC is honoured only if WATCHDOG_PID is absent or ours.
        self._watchdog_usec = _watchdog_usec()

    def _notify(self, msg: str) -> None:
        if not self.enabled:
            return
        self.sent = (self.sent + [msg])[-16:]
        if not self._sender_made:
            self._sender_made = True
            try:
                import sdnotify
                # debug=True: raise on failure instead of silently dropping.
                self._sender = sdnotify.SystemdNotifier(debug=True)
                self._sender.socket.settimeout(SEND_TIMEOUT)
            except Exception:  # ImportError, or the socket is not there (yet)
                self._sender = None
        try:
            if self._sender is not None:
                self._sender.notify(msg)
            else:
                _raw_notify(msg)
        except OSError as e:
            if not self._warned:
                self._warned = True
                lazylog.getLogger("lamd.service").warning(
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

    def reloading(self) -> None:
        """RELOADING=1 (re-exec in place): READY=1 from the new image ends it."""
        self._notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))

    def fdstore(self, name: str, fd: int) -> bool:
        """``FDSTORE=1`` with ``FDNAME=`` *name*: systemd keeps a duplicate of
        *fd* for the next start of the service (``FileDescriptorStoreMax=``)."""
        if not self.enabled:
            return False
        try:
            _raw_notify(f"FDSTORE=1\nFDNAME={name}", [fd])
        except OSError as e:
            self._fd_warn(e)
            return False
        return True

    def fdstore_remove(self, name: str) -> None:
        """``FDSTOREREMOVE=1``: systemd closes what it keeps as *name*."""
        if not self.enabled:
            return
        try:
            _raw_notify(f"FDSTOREREMOVE=1\nFDNAME={name}")
        except OSError as e:
            self._fd_warn(e)

    def _fd_warn(self, e: OSError) -> None:
        if not self._fd_warned:
            self._fd_warned = True
            lazylog.getLogger("lamd.service").warning(
                "sd_notify(FDSTORE) failed: %s: a crash would lose the clients", e)

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


_raw_sock: _socket.socket | None = None
#: The longest one notification may hold the daemon (seconds): a datagram
#: socket blocks the sender while the receiver's queue is full
#: (``net.unix.max_dgram_qlen``, 10 by default), and a manager slow to read
#: (or a test's socket nobody reads) must not stall every client. A send
#: that times out fails like any other (``STATUS=`` is dropped, an
#: ``FDSTORE=1`` warns that a crash would lose that client).
SEND_TIMEOUT = 0.1


def _raw_notify(msg: str, fds: list[int] | None = None) -> None:
    global _raw_sock
    if _raw_sock is None:
        _raw_sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        _raw_sock.settimeout(SEND_TIMEOUT)
    if fds:
        _raw_sock.sendmsg([msg.encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                            struct.pack(f"{len(fds)}i", *fds))],
                          0, _notify_address())
    else:
        _raw_sock.sendto(msg.encode(), _notify_address())
