"""What the kernel asks the I/O layer to do (LAM's ``kio_*`` calls, as values).

:class:`lamd.kernel.Kernel` returns lists of these; :mod:`lamd.kernelio`
carries them out in order:

* ``Reply`` is ``kio_reply``, ``Transfer`` is ``kio_transfer``,
  ``CollectBody``/``SendBody`` are ``kio_recv``/``kio_send`` for internal
  processes, ``Signal`` is the ``kill()`` in ``kpreempt`` and ``kkillall``,
  ``Close`` ends a connection once its output is written;
* ``KillAppend``/``KillRemove``/``KillRewrite`` are ``kkillwrite`` and
  ``kkillrewrite``: the kill file follows the process table through these
  alone (the I/O layer owns the file, the kernel owns what it lists);
* ``Watch``/``Unwatch``/``Rearm`` carry out internal processes' event
  sources (``kio_to``, ``kio_intr``, child exits, signals) and ``Resume``
  asks to be called again next turn; ``Halt`` ends the daemon.

The four made for every message (``Reply``, ``SendBody``, ``Transfer``,
``CollectBody``) and the three made for every attach and detach (``Close``,
``KillAppend``, ``KillRemove``: still hashable, ``unsafe_hash``) are not
frozen and spell their ``__init__`` out: compiled (``setup.py``), a
dataclass's generated ``__init__`` runs as interpreted Python, ten times
slower than one mypyc compiles, and a frozen one cannot be written by hand
the same way compiled and pure. Nothing changes them once made. Their
decorators say ``init=False``: dataclasses would build an ``__init__`` to
throw away (about 0.1 ms each of the daemon's start, issue 13).
"""

from __future__ import annotations

from .._dataclasses import dataclass

from collections.abc import Hashable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

#: whatever the I/O layer uses to name a connection (a name at run time too:
#: mypyc looks the types of compiled dataclasses' fields up by name)
Conn = Hashable

from .wire import KReply


@dataclass(init=False)
class Reply:
    """Write ``struct kreply`` *reply* to *conn*."""

    conn: Conn
    reply: KReply

    def __init__(self, conn: Conn, reply: KReply) -> None:
        self.conn = conn
        self.reply = reply


@dataclass(init=False)
class SendBody:
    """Write *data* (a body from an internal process) to *conn*, after its reply."""

    conn: Conn
    data: bytes

    def __init__(self, conn: Conn, data: bytes) -> None:
        self.conn = conn
        self.data = data


@dataclass(init=False)
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

    def __init__(self, src: Conn, dst: Conn, length: int, skip: int = 0, pad: int = 0) -> None:
        self.src = src
        self.dst = dst
        self.length = length
        self.skip = skip
        self.pad = pad


@dataclass(init=False)
class CollectBody:
    """Read *length* body bytes from *src* and hand them to
    :meth:`Kernel.body_arrived` (a body for an internal process, ``kio_recv``).

    Made for every routed message (a client's ``nsend`` to bufferd): not
    frozen, ``__init__`` spelt out, as ``Reply`` is."""

    src: Conn
    length: int
    token: Any

    def __init__(self, src: Conn, length: int, token: Any) -> None:
        self.src = src
        self.length = length
        self.token = token


@dataclass(frozen=True)
class Signal:
    """Send Unix signal *signo* to the process attached on *conn*."""

    conn: Conn
    pid: int
    signo: int


@dataclass(init=False, unsafe_hash=True)
class Close:
    """Close *conn* once everything queued for it has been written."""

    conn: Conn
    reason: str = ""

    def __init__(self, conn: Conn, reason: str = "") -> None:
        self.conn = conn
        self.reason = reason


@dataclass(init=False, unsafe_hash=True)
class KillAppend:
    """``kkillwrite``: list client *pid* (on *conn*) in the kill file now,
    before the attach reply that follows this action is written."""

    conn: Conn
    pid: int

    def __init__(self, conn: Conn, pid: int) -> None:
        self.conn = conn
        self.pid = pid


@dataclass(init=False, unsafe_hash=True)
class KillRemove:
    """Client *pid*, listed in the kill file, has left: unlist it (this turn)."""

    pid: int

    def __init__(self, pid: int) -> None:
        self.pid = pid


@dataclass(frozen=True)
class KillRewrite:
    """``kkillrewrite``: write the kill file afresh from
    :meth:`Kernel.killfile_entries` (a priority moved a client in or out)."""


@dataclass(frozen=True)
class Watch:
    """Start event source *id* of an internal process: *kind* is ``timer``
    (*arg* seconds, once), ``readable`` (*arg* a descriptor, reported once
    until :class:`Rearm`), ``child`` (*arg* a pid, once) or ``signal`` (*arg*
    a signal number). Each firing is reported with :meth:`Kernel.event`."""

    id: int
    kind: str
    arg: Any


@dataclass(frozen=True)
class Unwatch:
    """Stop event source *id* (cancelled, or its process ended)."""

    id: int


@dataclass(frozen=True)
class Rearm:
    """The readiness of ``readable`` source *id* was taken: report the next one."""

    id: int


@dataclass(frozen=True)
class Resume:
    """Call :meth:`Kernel.wake` again after serving clients (internal
    processes still have work: a turn's budget ran out)."""


@dataclass(frozen=True)
class Halt:
    """Shut the daemon down (haltd): kkillall, remove session files, exit."""

    status: int = 0
    reason: str = ""


Action = (Reply | SendBody | Transfer | CollectBody | Signal | Close | KillAppend | KillRemove
          | KillRewrite | Watch | Unwatch | Rearm | Resume | Halt)

__all__ = ["Conn", "Reply", "SendBody", "Transfer", "CollectBody", "Signal", "Close",
           "KillAppend", "KillRemove", "KillRewrite", "Watch", "Unwatch", "Rearm", "Resume",
           "Halt", "Action"]
