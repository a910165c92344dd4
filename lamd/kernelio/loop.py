"""The event loop under the kernel's I/O: epoll, timers, signals.

LAM's ``kernelio.c`` waits in ``select()`` on the listener, the clients and
the descriptors internal processes asked for (``kio_intr``), with the
nearest ``kio_to`` timeout. :class:`EventLoop` is that wait, without
``select``'s limits: level-triggered epoll, a heap of cancellable timers,
and signals turned into ordinary events through a wakeup socket (so a
handler never runs inside a system call of the daemon's).
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import time

# the C modules, not signal and socket: those make enums of every constant
# (with enum and selectors, about 5 ms of the socket-activated first reply)
import _signal  # type: ignore[import]  # (no stub)
import _socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Callable, Final, Iterable, Mapping

# Final: compiled, a plain module global is a dict lookup at every use
EPOLLIN: Final[int] = select.EPOLLIN
EPOLLOUT: Final[int] = select.EPOLLOUT
EPOLLERR: Final[int] = select.EPOLLERR | select.EPOLLHUP


class Timer:
    """A pending :meth:`EventLoop.call_later`; :meth:`cancel` it at will."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


#: default :class:`BusyPoll` limit, seconds (``lamd --busy-poll``)
BUSY_POLL: Final[float] = 50e-6


class BusyPoll:
    """How long a loop keeps polling (``epoll_wait`` without sleeping) after
    its last event before it sleeps: the rule of Linux's guest ``haltpoll``
    cpuidle governor, applied to one process.

    A ping-pong through the daemon is four hand-offs between three
    processes; every one that finds the daemon asleep costs a wake-up and a
    context switch, and on a virtual machine a wake-up across vCPUs costs an
    interrupt to a halted vCPU (15-17 µs here, ``docs/profile.md``). A daemon
    that is still polling when the next request arrives needs neither. The
    window adapts as haltpoll's does: an event that came after the window
    closed but within :attr:`limit` of the last one grows it (doubling from
    :attr:`start`, up to :attr:`limit`); one later than :attr:`limit` halves
    it; an idle daemon does not poll at all (the window only follows
    events), and a limit of 0 never polls.

    Pure bookkeeping, no I/O: the loop asks :meth:`timeout` before it waits
    and reports with :meth:`woke` (a wait returned events) and
    :meth:`worked` (the turn that served them ended). A loop that polled and
    found nothing calls ``sched_yield``: a client woken on the same CPU then
    runs at once instead of waiting for the poller's time slice."""

    __slots__ = ("limit", "start", "window", "last")

    def __init__(self, limit: float = BUSY_POLL, start: float = 10e-6) -> None:
        self.limit = max(0.0, limit)
        self.start = min(start, self.limit)
        self.window = 0.0
        #: end of the last turn that served events
        self.last = -1e18

    @staticmethod
    def limited(limit: float) -> BusyPoll | None:
        """The governor for a limit of *limit* seconds; None for 0 (no polling)."""
        return BusyPoll(limit) if limit > 0.0 else None

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> BusyPoll | None:
        """The governor ``LAMD_BUSY_POLL`` (microseconds, the default if unset
        or not a number) asks for; None for 0: the separate processes' rule,
        as ``lamd --busy-poll`` is the kernel's."""
        value = (os.environ if environ is None else environ).get("LAMD_BUSY_POLL", "")
        try:
            limit = int(value) / 1e6
        except ValueError:
            limit = BUSY_POLL
        return BusyPoll.limited(limit)

    def timeout(self, now: float, timeout: float) -> float:
        """The wait to use instead of *timeout* at *now*: 0 inside the window."""
        return 0.0 if now - self.last < self.window else timeout

    def woke(self, now: float) -> None:
        """A wait returned events at *now*: adjust the window by the gap."""
        gap = now - self.last
        if gap <= self.window:
            return
        if gap <= self.limit:
            self.window = min(self.limit, max(self.window * 2.0, self.start))
        else:
            self.window *= 0.5

    def worked(self, now: float) -> None:
        self.last = now


class Readable:
    """A descriptor whose readiness is reported once until it is taken: what
    a one-shot epoll registration re-armed after each report gives, without
    the ``epoll_ctl`` per report.

    The descriptor is registered level-triggered. A report calls *callback*;
    a second report before :meth:`taken` (nobody read it yet) takes the
    descriptor out of epoll, and :meth:`taken` puts it back. In the usual
    turn (reported, taken, read before the loop waits again: dli and dlo on
    their sockets, one frame each) no ``epoll_ctl`` is made at all."""

    __slots__ = ("loop", "fd", "callback", "fired", "out", "owned")

    def __init__(self, loop: EventLoop, fd: int, callback: Callable[[], None]) -> None:
        self.loop = loop
        self.fd = fd
        self.callback = callback
        self.fired = False  # reported, not yet taken
        self.out = False  # taken out of epoll until taken
        self.owned = False  # fd is ours to close (duplicate)
        loop.add_reader(fd, self._ready)

    @staticmethod
    def duplicate(loop: EventLoop, fd: int, callback: Callable[[], None]) -> Readable:
        """One on a private duplicate of *fd* (:meth:`close` closes it); if
        epoll refuses it (a regular file: EPERM) the duplicate is closed
        again and the OSError raised."""
        own = os.dup(fd)
        try:
            r = Readable(loop, own, callback)
        except OSError:
            loop.remove(own)
            os.close(own)
            raise
        r.owned = True
        return r

    def _ready(self, _ev: int) -> None:
        if self.fired:
            self.out = True
            self.loop.remove(self.fd)
            return
        self.fired = True
        self.callback()

    def taken(self) -> None:
        """The report was taken: report the next readiness."""
        self.fired = False
        if self.out:
            self.out = False
            self.loop.add_reader(self.fd, self._ready)

    def close(self) -> None:
        """Stop watching; the descriptor of :meth:`duplicate` is closed too."""
        self.loop.remove(self.fd)
        if self.owned:
            self.owned = False
            os.close(self.fd)


class EventLoop:
    """Descriptors, timers and signals, dispatched from one ``epoll_wait``.
    With :attr:`busy` set, :meth:`poll` keeps polling its window after events
    (:class:`BusyPoll`)."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        #: fd -> callback(events); the connection layer registers its own
        self.handlers: dict[int, Callable[[int], None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._cancelled = 0
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add_reader(self._wake_r.fileno(), self._on_wakeup)
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._signal_defaults: dict[int, Any] = {}
        self._signals_installed = False
        #: served after every other descriptor ready in the same turn (the
        #: listener: a client that detached and connects again is seen leaving
        #: before it arrives, so its kill-file line need not be cut and rewritten)
        self.last_fd = -1
        self.busy: BusyPoll | None = None

    # -- descriptors ------------------------------------------------------------
    def add_reader(self, fd: int, callback: Callable[[int], None], mask: int = EPOLLIN) -> None:
        """Call *callback(events)* whenever *fd* is ready for *mask*."""
        self.handlers[fd] = callback
        self.ep.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self.ep.modify(fd, mask)

    def remove(self, fd: int) -> None:
        """Stop watching *fd* (already closed is fine)."""
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    # -- timers ---------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        t = Timer(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (t.when, next(self._timer_seq), t))
        return t

    def cancel(self, t: Timer) -> None:
        if not t.cancelled:
            t.cancel()
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._timers):
                self._timers = [e for e in self._timers if not e[2].cancelled]
                heapq.heapify(self._timers)
                self._cancelled = 0

    def next_deadline(self) -> float | None:
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
            self._cancelled = max(0, self._cancelled - 1)
        return timers[0][0] if timers else None

    def run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            t = heapq.heappop(timers)[2]
            if t.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
                continue
            t.cancelled = True  # fired: a late cancel() is harmless
            t.callback()

    # -- signals --------------------------------------------------------------
    def add_signal(self, signo: int, callback: Callable[[int], None]) -> None:
        """Run *callback(signo)* from the loop for each delivery of *signo*."""
        if not self._signals_installed:
            _signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self._signals_installed = True
        if signo not in self._signal_defaults:
            self._signal_defaults[signo] = _signal.getsignal(signo)
        self._signal_handlers[signo] = callback
        _signal.signal(signo, self._on_signal)

    def remove_signal(self, signo: int) -> None:
        if self._signal_handlers.pop(signo, None) is not None:
            _signal.signal(signo, self._signal_defaults.pop(signo, _signal.SIG_DFL))

    def _on_signal(self, signo: int, _frame: Any) -> None:
        """Nothing: the signal is dispatched from the byte CPython's C-level
        handler writes to the wakeup descriptor (:meth:`_on_wakeup`). This
        Python-level handler runs only when the interpreter next checks for
        signals, which compiled code (mypyc) busy with clients may not do for
        a long time: a SIGUSR1 (re-exec) was once left undelivered for 25 s."""

    def _on_wakeup(self, _ev: int) -> None:
        got = bytearray()
        try:
            while True:
                b = self._wake_r.recv(4096)
                if not b:
                    break
                got += b
        except BlockingIOError:
            pass
        for signo in got:  # one byte per delivery; 0 is wakeup()
            if signo:
                cb = self._signal_handlers.get(signo)
                if cb is not None:
                    cb(signo)

    def dispatch_signals(self) -> None:
        """Dispatch now the signals delivered so far, before whatever else
        this turn has ready (a signal sent before a close is seen first)."""
        self._on_wakeup(0)

    def wakeup(self) -> None:
        """Interrupt a ``poll`` from another thread."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # -- one turn -------------------------------------------------------------
    def wait(self, timeout: float) -> list[tuple[int, int]]:
        """``epoll_wait`` up to *timeout* seconds, or not at all inside
        :attr:`busy`'s window (an empty poll there yields the CPU); the ready
        descriptors and their events, none when interrupted."""
        busy = self.busy
        spinning = False
        if busy is not None and timeout > 0.0:
            timeout = busy.timeout(time.monotonic(), timeout)
            spinning = timeout == 0.0
        try:
            events = self.ep.poll(timeout)
        except InterruptedError:
            return []
        if events:
            if busy is not None:
                busy.woke(time.monotonic())
        elif spinning:
            os.sched_yield()  # a process woken on this CPU runs first
        return events

    def poll(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds (:meth:`wait`) and dispatch what is
        ready; whether anything was (the caller then reports the turn's end
        to :attr:`busy`)."""
        events = self.wait(timeout)
        if not events:
            return False
        handlers = self.handlers
        last = self.last_fd
        deferred = 0
        for fd, ev in events:
            if fd == last:
                deferred = ev
                continue
            h = handlers.get(fd)
            if h is not None:
                h(ev)
        if deferred:
            h = handlers.get(last)
            if h is not None:
                h(deferred)
        return True

    def close(self, ignore: Iterable[int] = ()) -> None:
        """Close the loop; signals it handled get their old disposition back,
        except those in *ignore*, which are ignored from now on."""
        ignore = set(ignore)
        for signo in list(self._signal_handlers):
            if signo in ignore:
                self._signal_handlers.pop(signo)
                _signal.signal(signo, _signal.SIG_IGN)
            else:
                self.remove_signal(signo)
        if self._signals_installed:
            try:
                _signal.set_wakeup_fd(-1)
            except ValueError:  # not the main thread
                pass
        self.ep.close()
        self._wake_r.close()
        self._wake_w.close()
