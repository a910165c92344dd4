"""Carrying out internal processes' event sources on an :class:`EventLoop`
(LAM's ``kio_to``/``kio_intr``, plus child exits and signals).

The kernel (:mod:`lamd.kernel.kiproc`) decides which process waits for what;
a :class:`WatchSet` only makes the sources real and reports each firing to
one callback, ``fire(watch_id, value)``:

* ``timer``: a cancellable loop timer, fired once;
* ``readable``: a private duplicate of the descriptor, reported once until
  its readiness is taken (:meth:`WatchSet.rearm`), so an unread descriptor
  is reported once, not in a spin (:class:`~.loop.Readable`);
* ``child``: a pidfd, fired once with the :class:`ChildExit` status
  (``waitid``) for a child of this process; a child whose watch is stopped
  before it exits is still reaped when it does, never left a zombie;
* ``signal``: the loop's signal handling, fired with the signal number.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Callable

from .. import lazylog
from ..kernel.kiproc import CHILD, READABLE, SIGNAL, TIMER, ChildExit
from .loop import EventLoop, Readable, Timer

log = lazylog.getLogger("lamd.kernelio")


def reap_child(pid: int, pidfd: int | None) -> ChildExit:
    """Collect a child's status (``waitid``); unknown for a non-child."""
    try:
        if pidfd is not None:
            r = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        else:
            r = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
    except (ChildProcessError, OSError):
        return ChildExit(pid)
    if r is None:
        return ChildExit(pid)
    return ChildExit(pid, r.si_code, r.si_status)


class _ChildWatch:
    __slots__ = ("pid", "pidfd")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd


class _SignalWatch:
    __slots__ = ("signo",)

    def __init__(self, signo: int) -> None:
        self.signo = signo


class WatchSet:
    """The live event sources of one process's internal processes, by id."""

    def __init__(self, loop: EventLoop, fire: Callable[[int, Any], None]) -> None:
        self.loop = loop
        self.fire = fire
        self._res: dict[int, Any] = {}
        self._by_signal: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self._res)

    def __contains__(self, wid: int) -> bool:
        return wid in self._res

    def start(self, wid: int, kind: str, arg: Any) -> None:
        """Make source *wid* real: *kind* with *arg* (see the module doc)."""
        loop = self.loop
        if kind == TIMER:
            self._res[wid] = loop.call_later(arg, lambda: self._once(wid))
        elif kind == READABLE:
            try:
                r = Readable.duplicate(loop, arg, lambda: self.fire(wid, None))
            except OSError as e:
                log.warning("cannot watch descriptor %d: %s", arg, e.strerror)
                loop.call_later(0.0, lambda: self.fire(wid, None))  # report it: a read fails
                return
            self._res[wid] = r
        elif kind == CHILD:
            try:
                pidfd = os.pidfd_open(arg)
            except OSError:
                loop.call_later(0.0, lambda: self.fire(wid, reap_child(arg, None)))
                return
            self._res[wid] = _ChildWatch(arg, pidfd)
            loop.add_reader(pidfd, lambda _ev: self._child_exited(wid))
        elif kind == SIGNAL:
            ids = self._by_signal.setdefault(arg, [])
            if not ids:
                try:
                    loop.add_signal(arg, self._signalled)
                except (ValueError, OSError) as e:  # not the main thread
                    log.warning("cannot watch signal %d: %s", arg, e)
            ids.append(wid)
            self._res[wid] = _SignalWatch(arg)
        else:
            raise ValueError(f"unknown event source {kind!r}")

    def rearm(self, wid: int) -> None:
        """The readiness of readable source *wid* was taken: report the next one."""
        w = self._res.get(wid)
        if type(w) is Readable:
            try:
                w.taken()
            except OSError:
                pass

    def stop(self, wid: int) -> None:
        """End source *wid* (cancelled, or its process ended). Idempotent."""
        w = self._res.pop(wid, None)
        if w is None:
            return
        t = type(w)
        if t is Timer:
            self.loop.cancel(w)
        elif t is Readable:
            w.close()
        elif t is _ChildWatch:
            # nobody waits for it any more, but a child of ours must still be
            # reaped when it ends: never leave a zombie behind
            self.loop.remove(w.pidfd)
            self.loop.add_reader(w.pidfd, lambda _ev, w=w: self._reap_quietly(w))
        elif t is _SignalWatch:
            ids = self._by_signal.get(w.signo, [])
            if wid in ids:
                ids.remove(wid)
            if not ids:
                self._by_signal.pop(w.signo, None)
                try:
                    self.loop.remove_signal(w.signo)
                except (ValueError, OSError):
                    pass

    def close(self) -> None:
        for wid in list(self._res):
            self.stop(wid)

    def _once(self, wid: int) -> None:
        self._res.pop(wid, None)
        self.fire(wid, None)

    def _child_exited(self, wid: int) -> None:
        w = self._res.pop(wid, None)
        if type(w) is not _ChildWatch:
            return
        self.loop.remove(w.pidfd)
        status = reap_child(w.pid, w.pidfd)
        os.close(w.pidfd)
        self.fire(wid, status)

    def _reap_quietly(self, w: _ChildWatch) -> None:
        self.loop.remove(w.pidfd)
        reap_child(w.pid, w.pidfd)
        os.close(w.pidfd)

    def _signalled(self, signo: int) -> None:
        for wid in list(self._by_signal.get(signo, ())):
            self.fire(wid, signo)
