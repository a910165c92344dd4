"""What the parts of :class:`~lamd.kernelio.KernelIO` share.

``KernelIO`` is the loop (:mod:`.kernelio`), the connection I/O
(:mod:`.kio`, ``ConnIO``) and admission (:mod:`.admission`); each part
calls into the others. :class:`KIOBase` declares those calls and the state
they share, so each part is checked (and compiled, see ``setup.py``) on its
own; the declarations come last in ``KernelIO``'s method resolution order,
so the parts' definitions always win (as :mod:`lamd.kernel.kbase` does for
the kernel).
"""

from __future__ import annotations

import _socket
from collections import deque

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

from .._static import trait
from ..kernel.kouter import Kernel
from .fdstore import CrashKeeper
from .loop import EventLoop, Timer
from .transfer import BodyMove, Connection

if TYPE_CHECKING:  # pragma: no cover
    from .kernelio import IOLimits


@trait
class KIOBase:
    """The I/O layer's shared state and cross-part calls (declarations only)."""

    kernel: Kernel
    listener: _socket.socket
    loop: EventLoop
    limits: IOLimits
    uid: int
    conns: dict[int, Connection]
    _pending: deque[Connection]  # clients with unparsed requests
    _dirty: dict[Connection, None]  # clients with output to flush, first come first
    _collect_deadlines: dict[BodyMove, float]  # bodies internal processes wait for, by when
    _collect_timer: Timer | None  # the one timer of those deadlines (the earliest)
    _rbuf: bytearray  # requests are read into this, then decoded
    _rview: memoryview
    handing_over: bool
    _refusing: bool  # out of descriptors, refusing clients
    _spare_fd: int | None
    _peerpidfd: bool
    refused_uid: int
    refused_unpinned: int
    crash: CrashKeeper | None  # the crash state (:mod:`.fdstore`), under systemd
    _pipes: list[tuple[int, int]]  # empty pipes for the next spliced bodies
    _splice_ok: bool  # False once splice was refused: bodies are copied

    # the loop (kernelio)
    def _apply(self, actions: list[Any]) -> None:
        raise NotImplementedError

    # connections (kio)
    def _on_client(self, c: Connection, ev: int) -> None:
        raise NotImplementedError

    def _read(self, c: Connection) -> None:
        raise NotImplementedError

    # admission
    def _accepting_again(self) -> None:
        raise NotImplementedError
