"""systemd integration: socket activation, sd_notify, journal logging, proctitle.

STUB written by the kernel work so the daemon can call a stable interface;
the service issue fleshes it out. Every function degrades gracefully when not
running under systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import sys


class ServiceError(Exception):
    """A setup problem that must end the daemon with one clear message."""


def adopt_listen_socket() -> socket.socket | None:
    """The listening socket passed by systemd (LISTEN_FDS), or None."""
    if not os.environ.get("LISTEN_FDS"):
        return None
    n = int(os.environ["LISTEN_FDS"])
    if n != 1:
        raise ServiceError(f"expected 1 socket from systemd, got {n}")
    s = socket.socket(fileno=3)
    if s.family != socket.AF_UNIX or s.type != socket.SOCK_STREAM:
        raise ServiceError("the socket from systemd is not an AF_UNIX stream socket")
    return s


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        stream=sys.stderr,
                        format="lamd[%(process)d]: %(levelname)s %(message)s")


class Notifier:
    """sd_notify: READY, STATUS, STOPPING, WATCHDOG."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def ready(self) -> None: ...
    def status(self, text: str) -> None: ...
    def stopping(self) -> None: ...
    def watchdog(self) -> None: ...

    def watchdog_period(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
        usec = os.environ.get("WATCHDOG_USEC")
        return int(usec) / 2e6 if usec else None


def set_proctitle(text: str) -> None:
    try:
        import setproctitle
        setproctitle.setproctitle(text)
    except ImportError:  # pragma: no cover
        pass
