"""What the kernel asks the I/O layer to do (LAM's ``kio_*`` calls, as values).

:class:`lamd.kernel.Kernel` returns lists of these; :mod:`lamd.kernelio`
carries them out in order. ``Reply`` is ``kio_reply``, ``Transfer`` is
``kio_transfer``, ``CollectBody``/``SendBody`` are ``kio_recv``/``kio_send``
for internal processes, ``Signal`` is the ``kill()`` in ``kpreempt`` and
``kkillall``, ``WatchTimeout``/``WatchReadable`` are ``kio_to``/``kio_intr``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from .wire import KReply

Conn = Hashable  # whatever the I/O layer uses to name a connection


@dataclass(slots=True, frozen=True)
class Reply:
    """Write ``struct kreply`` *reply* to *conn*."""

    conn: Conn
    reply: KReply


@dataclass(slots=True, frozen=True)
class SendBody:
    """Write *data* (a body from an internal process) to *conn*, after its reply."""

    conn: Conn
    data: bytes


@dataclass(slots=True, frozen=True)
class Transfer:
    """Move a message body from *src* to *dst* (LAM's ``kio_transfer``).

    Read ``skip`` bytes from *src* and drop them, queue ``pad`` zero bytes to
    *dst*, then stream ``length`` bytes from *src* to *dst*. ``skip`` and
    ``pad`` are only non-zero when one side set KNMSG and the other did not.
    """

    src: Conn
    dst: Conn
    length: int
    skip: int = 0
    pad: int = 0


@dataclass(slots=True, frozen=True)
class CollectBody:
    """Read *length* body bytes from *src* and hand them to
    :meth:`Kernel.body_arrived` (a body for an internal process, ``kio_recv``)."""

    src: Conn
    length: int
    token: Any


@dataclass(slots=True, frozen=True)
class Signal:
    """Send Unix signal *signo* to the process attached on *conn*."""

    conn: Conn
    pid: int
    signo: int


@dataclass(slots=True, frozen=True)
class Close:
    """Close *conn* once everything queued for it has been written."""

    conn: Conn
    reason: str = ""


@dataclass(slots=True, frozen=True)
class WatchTimeout:
    """Call :meth:`Kernel.wake` with *token* after *delay* seconds."""

    delay: float
    token: Any


@dataclass(slots=True, frozen=True)
class WatchReadable:
    """Call :meth:`Kernel.wake` with *token* once *fd* is readable (once)."""

    fd: int
    token: Any


@dataclass(slots=True, frozen=True)
class Halt:
    """Shut the daemon down (haltd): kkillall, remove session files, exit."""

    status: int = 0
    reason: str = ""


Action = Reply | SendBody | Transfer | CollectBody | Signal | Close | WatchTimeout | WatchReadable | Halt
