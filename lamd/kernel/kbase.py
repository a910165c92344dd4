"""What the kernel's halves share: the state and the calls each makes of the others.

:class:`~lamd.kernel.Kernel` is LAM's kernel split as LAM splits it:
``kouter.c`` (:mod:`.kouter`: the table and dispatch), ``kinner.c``
(:mod:`.kinner`: rendezvous) and ``kiproc.c`` (:mod:`.kidriver`: internal
processes). Each half calls into the others; :class:`KBase` declares those
calls and the state they share, so each half is checked (and compiled, see
``setup.py``) on its own. The declarations here come last in the kernel's
method resolution order: the halves' definitions always win.

``trait`` (from ``mypy_extensions``) does nothing at run time; mypyc
compiles a trait into a native base that a class may inherit beside others.
Compiled, the kernel's methods cannot be replaced on an instance nor
overridden by an interpreted subclass: tests observe what it does, they do
not spy on its calls.
"""

from __future__ import annotations

import itertools
from collections import deque

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Callable

from .._static import trait
from .wire import KMsg, KReply, KReq

if TYPE_CHECKING:  # pragma: no cover
    from .kactions import Conn
    from .kinner import BlockedList
    from .kouter import KernelStats, KProc


@trait
class KBase:
    """The kernel's shared state and cross-half calls (declarations only)."""

    # the table (kouter)
    procs: dict[int, KProc]
    stats: KernelStats
    max_msg_len: int
    clock: Callable[[], float]
    _seq: itertools.count[int]
    # the blocked list (kinner)
    pblock: BlockedList
    # actions for the I/O layer, appended by every half
    _out: list[Any]
    # internal processes (kidriver)
    _runq: deque[tuple[KProc, Any]]
    _collects: dict[int, tuple[KProc, KProc, KMsg]]
    #: KTRY sends waiting for an internal receiver that is taking a body (kinner)
    _tries: list[KProc]

    # kouter.c
    def kpfind(self, pid: int) -> KProc | None:
        raise NotImplementedError

    def _alloc(self, pid: int, priority: int, conn: Conn | None) -> KProc:
        raise NotImplementedError

    def _knuke(self, p: KProc) -> None:
        raise NotImplementedError

    def _kpreempt(self, p: KProc) -> None:
        raise NotImplementedError

    # kinner.c
    def ksnap(self, pid: int) -> KReply:
        raise NotImplementedError

    def _kqsync(self, pclient: KProc, req: KReq) -> None:
        raise NotImplementedError

    def _kqdoom(self, pclient: KProc, req: KReq) -> None:
        raise NotImplementedError

    def _bad_lengths(self, req: KReq) -> str:
        raise NotImplementedError

    def _block(self, p: KProc, state: int, keep_place: bool = False) -> None:
        raise NotImplementedError

    def _unblock(self, p: KProc) -> None:
        raise NotImplementedError

    def _settle_tries(self) -> None:
        raise NotImplementedError

    # kiproc.c
    def _resume(self, p: KProc, value: Any) -> None:
        raise NotImplementedError

    def _next_collect(self) -> int:
        raise NotImplementedError

    def _collect_started(self, pto: KProc, pfrom: KProc, token: int) -> None:
        raise NotImplementedError

    def _run_iprocs(self) -> None:
        raise NotImplementedError

    def _end_watches(self, p: KProc) -> None:
        raise NotImplementedError
