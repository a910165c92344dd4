"""The wait API of internal processes (issue 9, "the internal-process model").

An internal process waits on several event sources at once (timers it can
cancel, persistent readable descriptors, child exits, signals) and can make
a kernel request that one of them interrupts, as ``kqdoom``'s EINTR path
interrupts a blocked client. Two layers:

* sans-IO, through :class:`tests.lamclient.World`: the kernel's rules,
  event by event (the test plays the I/O layer and fires the watches);
* real I/O, through :class:`~lamd.kernelio.KernelIO` over a socket in a
  temporary directory, with the loop in the main thread (signal handlers
  live there) and the test's clients in a helper thread.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import struct
import threading
import time
from typing import Any, Callable

import pytest

from lamd.client import KernelClient, LamError
from lamd.kernel import IPROC_PID_BASE, CollectBody, Kernel, KProc, Rearm, Unwatch, Watch as WatchAction
from lamd.kernel.constants import KMSG2, KQSEND, KSRECV, KSSEND, KTRY, PRCMD, PRDAEMON
from lamd.kernel.kiproc import ChildExit, Event, IProc, KBoot, Received, Watch
from lamd.kernel.wire import KMsg, KReq
from lamd.kernelio import KernelIO

from .lamclient import World

IPROC = IPROC_PID_BASE  # the pid of the first row of a boot table
EV_GO, EV_X, EV_Y, EV_ACK, EV_PING, EV_PONG = 600, 601, 602, 603, 604, 605
TIMEOUT = 10.0


# =============================================================================
# sans-IO: the kernel's rules, with the test as the I/O layer
# =============================================================================


def boot(main: Callable[[IProc], Any]) -> tuple[World, KProc]:
    w = World([KBoot("waiter", PRDAEMON, main)])
    p = w.kernel.kpfind(IPROC)
    assert p is not None
    return w, p


def actions(w: World, kind: type, wid: int | None = None) -> list[Any]:
    """The actions of *kind* (for watch *wid*) the kernel has returned so far."""
    return [a for a in w.log if isinstance(a, kind) and (wid is None or a.id == wid)]


def go(w: World, c: Any, body: bytes = b"") -> None:
    """Client *c* sends on EV_GO (the internal process is waiting for it)."""
    c.ksend(EV_GO, 0, body)
    assert c.reply().reply == 0


def test_timer_fires_once() -> None:
    seen: list[Event] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["t"] = t = k.timer(1.5)
        while True:
            seen.append(await k.next_event(t))

    w, p = boot(main)
    t = held["t"]
    assert [(a.kind, a.arg) for a in actions(w, WatchAction)] == [("timer", 1.5)]
    w.fire(t.id)
    assert len(seen) == 1 and seen[0].watch is t and seen[0].kind == "timer" and seen[0].value is None
    assert not t.active and t.id not in w.kernel._watches
    w.fire(t.id)  # a second report of a one-shot source is ignored
    w.fire(t.id)
    assert len(seen) == 1
    assert actions(w, Unwatch) == []  # fired one-shots are already gone from the I/O layer
    assert w.kernel.blocked_list() == [] and not p.mailbox
    w.kernel.check_invariants()


def test_cancelled_timer_never_arrives_even_if_fired_late() -> None:
    seen: list[Event] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["a"] = a = k.timer(1)
        held["b"] = b = k.timer(2)
        held["c"] = c = k.timer(3)
        a.cancel()
        a.cancel()  # idempotent
        await k.recv(EV_GO, 0, 0)  # busy: b fires meanwhile, then is cancelled
        b.cancel()
        while True:
            seen.append(await k.next_event())  # any of its watches

    w, p = boot(main)
    a, b, c = held["a"], held["b"], held["c"]
    assert [u.id for u in actions(w, Unwatch)] == [a.id]
    assert a.id not in w.watches and not a.active
    w.fire(a.id)  # the I/O layer reports it after all (late): dropped
    w.fire(b.id)  # queued while the process is busy
    assert list(p.mailbox) == [Event(b)]
    cl = w.client("cl", 700)
    go(w, cl)  # b cancelled with its event still queued: the event goes with it
    assert [u.id for u in actions(w, Unwatch)] == [a.id]  # b, fired, was already gone below
    assert seen == [] and not p.mailbox
    w.fire(a.id)
    w.fire(b.id)
    assert seen == []
    w.fire(c.id)
    assert [e.watch for e in seen] == [c]
    w.kernel.check_invariants()


def test_next_event_returns_the_one_that_fired_and_keeps_the_other() -> None:
    seen: list[Event] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["a"] = a = k.timer(1)
        held["b"] = b = k.timer(2)
        seen.append(await k.next_event(a, b))
        await k.recv(EV_GO, 0, 0)  # busy: a fires meanwhile
        seen.append(await k.next_event(a, b))

    w, p = boot(main)
    a, b = held["a"], held["b"]
    w.fire(b.id)
    assert [e.watch for e in seen] == [b]
    w.fire(a.id)
    assert [e.watch for e in seen] == [b] and list(p.mailbox) == [Event(a)]
    cl = w.client("cl", 700)
    go(w, cl)
    assert [e.watch for e in seen] == [b, a]  # kept, not lost
    assert w.kernel.kpfind(IPROC) is None  # it returned
    assert w.watches == {} and w.kernel._watches == {}


def test_events_while_busy_are_queued_in_order_and_taken_selectively() -> None:
    """Events that fire while the process is blocked in a plain request do not
    interrupt it; they queue in the order they fired. ``next_event(x)`` takes
    the first of x's, ``next_event()`` the oldest of any."""
    seen: list[tuple[str, Any]] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["s"] = s = k.watch_signal(signal.SIGUSR1)
        held["t"] = t = k.timer(1)
        held["u"] = u = k.timer(2)
        got = await k.recv(EV_GO, 0, 16)  # a plain request: never interrupted
        seen.append(("recv", got.body))
        ev = await k.next_event(t)  # t's event, out of turn
        seen.append(("t", ev.watch is t))
        for _ in range(3):
            ev = await k.next_event()
            seen.append((ev.kind, ev.value))

    w, p = boot(main)
    s, t, u = held["s"], held["t"], held["u"]
    w.fire(s.id, signal.SIGUSR1)
    w.fire(u.id)
    w.fire(t.id)
    w.fire(s.id, signal.SIGUSR2)  # (any value the I/O layer reports)
    assert seen == []
    assert p.state == KSRECV and w.kernel.blocked_list() == [p] and p.msg.event == EV_GO
    assert [e.watch for e in p.mailbox] == [s, u, t, s]
    cl = w.client("cl", 700)
    cl.ksend(EV_GO, 0, b"hello")
    assert cl.reply().reply == 0
    assert seen == [("recv", b"hello"), ("t", True), ("signal", signal.SIGUSR1),
                    ("timer", None), ("signal", signal.SIGUSR2)]
    w.kernel.check_invariants()


def test_wait_interrupted_by_a_timer_leaves_the_blocked_list() -> None:
    seen: list[Any] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["t"] = t = k.timer(1)
        seen.append(await k.wait(k.recv(EV_X, 0, 64), t))
        await k.next_event()  # no watches left: waits for ever, blocked on nothing

    w, p = boot(main)
    t = held["t"]
    assert w.kernel.blocked_list() == [p] and p.state == KSRECV and p.msg.event == EV_X
    assert w.kernel.ksync(KMsg(EV_X, 0, 5, 0), KQSEND)
    w.fire(t.id)
    assert seen == [Event(t)]
    assert w.kernel.blocked_list() == [] and p.state not in (KSSEND, KSRECV)
    assert not w.kernel.ksync(KMsg(EV_X, 0, 5, 0), KQSEND)
    w.kernel.check_invariants()
    # a later sender to that event does not reach it
    cl = w.client("cl", 700)
    cl.ksend(EV_X, 0, b"late!", KTRY)
    assert cl.reply().reply == errno.EWOULDBLOCK
    cl.ksend(EV_X, 0, b"late!")
    assert cl.blocked()  # nobody receives: the client waits, nothing was transferred
    assert seen == [Event(t)] and w.kernel.blocked_list()[0].pid == 700
    w.kernel.check_invariants()


def test_wait_on_a_send_receive_interrupted_in_its_send_half() -> None:
    seen: list[Any] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["t"] = t = k.timer(1)
        seen.append(await k.wait(k.sr(EV_X, 0, b"query", 0, EV_Y, 0, 64), t))
        await k.next_event()

    w, p = boot(main)
    assert p.state == KSSEND and p.flags & KMSG2
    w.fire(held["t"].id)
    assert seen == [Event(held["t"])]
    assert w.kernel.blocked_list() == [] and not p.flags & KMSG2 and p.body == b""
    w.kernel.check_invariants()
    cl = w.client("cl", 700)
    cl.krecv(EV_X, 0, 64, KTRY)  # its send was cancelled: nothing to receive
    assert cl.reply().reply == errno.EWOULDBLOCK
    cl.ksend(EV_Y, 0, b"answer", KTRY)  # and nobody waits for the answer
    assert cl.reply().reply == errno.EWOULDBLOCK


def test_wait_that_completes_returns_the_received_message() -> None:
    seen: list[Any] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["t"] = t = k.timer(1)
        seen.append(await k.wait(k.recv(EV_X, 0, 64), t))
        await k.recv(EV_GO, 0, 0)
        seen.append(await k.next_event(t))  # the timer, fired since, is still its own

    w, p = boot(main)
    t = held["t"]
    cl = w.client("cl", 700)
    cl.ksend(EV_X, 7, b"hello")
    assert cl.reply().reply == 0
    assert len(seen) == 1 and isinstance(seen[0], Received)
    assert seen[0].body == b"hello" and seen[0].type == 7 and seen[0].length == 5
    assert p.msg.event == EV_GO and p.state == KSRECV
    w.fire(t.id)  # now it is in a plain request: the event waits
    assert len(seen) == 1 and p.state == KSRECV
    go(w, cl)
    assert seen[1] == Event(t)
    w.kernel.check_invariants()


def test_wait_with_an_event_already_queued_returns_without_the_request() -> None:
    seen: list[Any] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["t"] = t = k.timer(1)
        await k.recv(EV_GO, 0, 0)
        seen.append(await k.wait(k.recv(EV_X, 0, 64), t))
        seen.append(await k.wait(k.send(EV_Y, 0, b"never"), t))  # t is spent: really waits
        await k.next_event()

    w, p = boot(main)
    t = held["t"]
    # a sender already blocked on EV_X: a receive made even for a moment
    # would take its message (no spy: the compiled kernel's calls to its own
    # methods cannot be intercepted)
    bait = w.client("bait", 701)
    bait.ksend(EV_X, 0, b"bait")
    assert bait.blocked()
    w.fire(t.id)  # while busy: queued
    cl = w.client("cl", 700)
    go(w, cl)
    assert seen == [Event(t)]
    assert bait.blocked() and w.conns["bait"].outbox == b"bait"  # never received
    blocked = w.kernel.blocked_list()
    assert sorted((q.pid, q.state, q.msg.event) for q in blocked) == [
        (701, KSSEND, EV_X), (IPROC, KSSEND, EV_Y)]
    cl.ksend(EV_X, 0, b"x", KTRY)
    assert cl.reply().reply == errno.EWOULDBLOCK
    cl.krecv(EV_Y, 0, 64)
    assert cl.reply().length == 5 and cl.read(5) == b"never"
    assert len(seen) == 2 and seen[1].length == 5
    cl.krecv(EV_X, 0, 64)  # the bait's message is still there, whole
    assert cl.reply().length == 4 and cl.read(4) == b"bait"
    assert bait.reply().length == 4
    w.kernel.check_invariants()


def test_readable_watch_rearms_only_when_its_event_is_taken() -> None:
    seen: list[Event] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["r"] = r = k.watch_readable(7)  # World never touches the descriptor
        await k.recv(EV_GO, 0, 0)
        seen.append(await k.next_event(r))  # queued while busy: taken now
        seen.append(await k.next_event(r))  # waiting: taken as it fires
        await k.recv(EV_GO, 0, 0)
        r.cancel()  # with an event queued and never taken
        await k.recv(EV_GO, 0, 0)

    w, p = boot(main)
    r = held["r"]
    assert [(a.kind, a.arg) for a in actions(w, WatchAction)] == [("readable", 7)]
    w.fire(r.id)  # busy in a plain request: no Rearm, the I/O layer stays quiet
    assert actions(w, Rearm) == [] and list(p.mailbox) == [Event(r)]
    cl = w.client("cl", 700)
    go(w, cl)
    assert len(seen) == 1 and len(actions(w, Rearm, r.id)) == 1
    w.fire(r.id)
    assert len(seen) == 2 and len(actions(w, Rearm, r.id)) == 2
    assert all(e.watch is r and e.kind == "readable" for e in seen)
    go(w, cl)
    w.fire(r.id)  # busy again: queued, not re-armed
    assert len(actions(w, Rearm, r.id)) == 2
    go(w, cl)  # cancelled: Unwatch, and its queued readiness is dropped unseen
    assert len(actions(w, Rearm, r.id)) == 2 and [u.id for u in actions(w, Unwatch)] == [r.id]
    assert not p.mailbox and r.id not in w.watches
    w.fire(r.id)  # reported late: ignored
    assert len(seen) == 2 and len(actions(w, Rearm, r.id)) == 2
    w.kernel.check_invariants()


@pytest.mark.parametrize("how", ["returns", "raises", "knuked", "knuked while waiting"])
def test_every_watch_ends_with_its_process(how: str) -> None:
    held: dict[str, Any] = {}

    async def main(k: IProc) -> None:
        held["watches"] = [k.timer(5), k.watch_readable(7), k.watch_child(4242),
                           k.watch_signal(signal.SIGUSR1), k.timer(9)]
        held["watches"][-1].cancel()  # already cancelled: not unwatched twice
        if how == "knuked while waiting":
            await k.wait(k.recv(EV_X, 0, 0), held["watches"][0])  # never returns
        await k.recv(EV_GO, 0, 0)
        if how == "raises":
            raise RuntimeError("boom (expected by the test)")

    w, p = boot(main)
    ws = held["watches"]
    assert len(w.watches) == 4
    w.fire(ws[1].id)  # queued, never taken: dropped with the process
    w.fire(ws[3].id, signal.SIGUSR1)
    assert len(p.mailbox) == 2
    if how.startswith("knuked"):
        w.kernel._knuke(p)
        w.run(w.kernel._take())
    else:
        cl = w.client("cl", 700)
        go(w, cl)
    assert w.kernel.kpfind(IPROC) is None
    unwatched = [u.id for u in actions(w, Unwatch)]
    assert sorted(unwatched) == sorted(x.id for x in ws)  # each once, the cancelled one's before
    assert w.watches == {} and w.kernel._watches == {}
    assert not any(x.active for x in ws) and not p.watches and not p.mailbox
    assert w.kernel.blocked_list() == []
    w.kernel.check_invariants()
    for x in ws:  # reports that cross the end are ignored
        w.fire(x.id)
    w.kernel.check_invariants()


def test_watch_signal_refuses_the_daemons_stop_signals() -> None:
    refused: list[int] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                k.watch_signal(s)
            except ValueError:
                refused.append(s)
        held["u"] = k.watch_signal(signal.SIGUSR1)
        await k.next_event()

    w, _ = boot(main)
    assert refused == [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    assert [(a.kind, a.arg) for a in actions(w, WatchAction)] == [("signal", signal.SIGUSR1)]
    with pytest.raises(ValueError):
        held["u"].proc.iproc.watch_signal(signal.SIGTERM)  # type: ignore[union-attr]


def test_event_during_a_lost_body_interrupts_the_wait() -> None:
    """wait(recv, timer): a client's send matches, and while its body is on the
    way the timer fires (queued: the receive is no longer blocked). If the
    sender then vanishes before the body arrives, the receive is back to
    blocked -- but its timer already fired: the wait must end with the
    timer's event, not block for ever on a one-shot that will never come back."""
    seen: list[Any] = []
    held: dict[str, Watch] = {}

    async def main(k: IProc) -> None:
        held["t"] = t = k.timer(1)
        seen.append(await k.wait(k.recv(EV_X, 0, 64), t))
        await k.next_event()

    w, p = boot(main)
    t = held["t"]
    cl = w.client("cl", 700)
    # the send's reply goes out, the body is to be collected: leave it in flight
    acts = w.kernel.request("cl", KReq(req=KQSEND, index=cl.index, msg=KMsg(EV_X, 0, 5, 0)))
    assert any(isinstance(a, CollectBody) for a in acts)
    w.fire(t.id)
    assert seen == [] and list(p.mailbox) == [Event(t)]
    w.run(w.kernel.disconnect("cl"))  # the sender is gone: the body never comes
    assert seen == [Event(t)]
    assert w.kernel.blocked_list() == [] and not p.mailbox
    w.kernel.check_invariants()
    c2 = w.client("c2", 701)
    c2.ksend(EV_X, 0, b"late!", KTRY)
    assert c2.reply().reply == errno.EWOULDBLOCK


# -- try_send and take: a relay that costs no coroutine turn (bufferd) ---------


class CountingCoro:
    """A process's coroutine, counting how often the kernel resumes it."""

    def __init__(self, coro: Any) -> None:
        self.coro, self.turns = coro, 0

    def send(self, value: Any) -> Any:
        self.turns += 1
        return self.coro.send(value)

    def close(self) -> None:
        self.coro.close()


def test_try_send_delivers_to_a_blocked_receiver_at_once_or_says_ewouldblock() -> None:
    """k.try_send: LAM's dtry_send from an internal process, no await: the
    outcome is known before it returns, and the sender's coroutine is not
    resumed for it."""
    got: list[int] = []

    async def main(k: IProc) -> None:
        while True:
            await k.recv(EV_GO, 0, 64)
            for _ in range(2):
                got.append(k.try_send(EV_X, 7, b"payload").reply)

    w, p = boot(main)
    a, b = w.client("a", 700), w.client("b", 701)
    go(w, a)
    assert got == [errno.EWOULDBLOCK, errno.EWOULDBLOCK]  # nobody waits on EV_X
    b.krecv(EV_X, 0, 64)
    assert b.blocked()
    go(w, a)
    assert got[2:] == [0, errno.EWOULDBLOCK]  # delivered once, then nobody waits again
    rep = b.reply()
    assert (rep.reply, rep.type, rep.length) == (0, 7, 7) and b.read(7) == b"payload"
    assert p.state == KSRECV and p.msg == KMsg(EV_GO, 0, 64, 0)  # back in its receive
    with pytest.raises(ValueError):
        p.iproc.kernel.ksend_now(p, KReq(req=KQSEND, msg=KMsg(EV_X, 0, 1, 0)), b"x", None)
    w.kernel.check_invariants()


def test_take_handles_client_messages_without_resuming_the_coroutine() -> None:
    """k.take: each message a client sends to the plain receive is handed to
    it (header, body) as soon as its body is read; the process waits in the
    receive take names, and its coroutine is never resumed for it."""
    seen: list[tuple[int, bytes]] = []

    async def main(k: IProc) -> None:
        def take(head: Any, body: Any, ktype: int, peeked: Any) -> KMsg | None:
            seen.append((ktype, bytes(body)))
            if bytes(body) == b"coro":
                return None  # the coroutine has it, as usual
            k.try_send(EV_Y, ktype, bytes(body).upper())
            return KMsg(EV_GO, 0, 64, 0)
        k.take = take
        while True:
            r = await k.recv(EV_GO, 0, 64)
            seen.append((-1, r.body))

    w, p = boot(main)
    p.coro = counter = CountingCoro(p.coro)
    a, b = w.client("a", 700), w.client("b", 701)
    b.krecv(EV_Y, 0, 64)
    for i, word in enumerate([b"one", b"two", b"three"]):
        a.ksend(EV_GO, i + 1, word)
        assert a.reply().reply == 0
    assert counter.turns == 0
    assert seen == [(1, b"one"), (2, b"two"), (3, b"three")]
    rep = b.reply()
    assert (rep.type, b.read(rep.length)) == (1, b"ONE")  # the one b waited for
    assert p.state == KSRECV and p.msg == KMsg(EV_GO, 0, 64, 0)
    a.ksend(EV_GO, 9, b"coro")  # take declines: the coroutine is resumed with it
    assert a.reply().reply == 0
    assert counter.turns == 1 and seen[-2:] == [(9, b"coro"), (-1, b"coro")]
    assert p.state == KSRECV
    w.kernel.check_invariants()


def test_a_take_that_fails_detaches_its_process_and_the_kernel_serves_on(caplog) -> None:
    async def main(k: IProc) -> None:
        def take(head: Any, body: Any, ktype: int, peeked: Any) -> KMsg | None:
            raise RuntimeError("bug in take")
        k.take = take
        while True:
            await k.recv(EV_GO, 0, 64)

    w, p = boot(main)
    a = w.client("a", 700)
    a.ksend(EV_GO, 0, b"boom")
    assert a.reply().reply == 0
    assert "failed on a message" in caplog.text and "bug in take" in caplog.text
    assert w.kernel.kpfind(IPROC) is None  # detached, as a failing coroutine is
    a.ksend(EV_GO, 0, b"again", KTRY)
    assert a.reply().reply == errno.EWOULDBLOCK  # nobody receives; nothing hangs
    w.kernel.check_invariants()


# =============================================================================
# real I/O: KernelIO in this (main) thread, clients in a helper thread
# =============================================================================


class Live:
    """A KernelIO serving a socket in a temporary directory, with a test table
    booted. :meth:`serve` runs its loop in the calling (main) thread, so
    signal watches work, while *driver* plays the clients in a thread."""

    def __init__(self, tmp: str, table: list[KBoot]) -> None:
        self.path = os.path.join(tmp, "lam-kernel-socket")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(64)
        self.kernel = Kernel(kernel_pid=os.getpid())
        # no kill file and no ticks: nothing opens a descriptor behind the test's back
        self.io = KernelIO(self.kernel, lsock, tick_interval=3600.0)
        self.fired: list[tuple[int, Any]] = []  # every report the I/O layer makes
        # counted where the watches report (the compiled I/O layer's call of
        # kernel.event cannot be intercepted; the interpreted WatchSet's can)
        watches = self.io._watches
        fire = watches.fire

        def counting(wid: int, value: Any = None) -> None:
            self.fired.append((wid, value))
            fire(wid, value)

        watches.fire = counting
        self.opened: list[KernelClient] = []
        self.io.boot(table)

    def client(self) -> KernelClient:
        c = KernelClient.connect(self.path, timeout=TIMEOUT)
        self.opened.append(c)
        c.attach(PRCMD)
        return c

    def reports(self, wid: int) -> int:
        return sum(1 for i, _ in self.fired if i == wid)

    def serve(self, driver: Callable[["Live"], None], limit: float = 20.0) -> None:
        errors: list[BaseException] = []

        def wrap() -> None:
            # signals for the loop go to the main thread, never to this one
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
            try:
                driver(self)
            except BaseException as e:  # noqa: BLE001 - raised below
                errors.append(e)
            finally:
                self.io.request_stop()

        guard = self.io.loop.call_later(limit, lambda: self.io.stop(1, "the test ran too long"))
        t = threading.Thread(target=wrap, daemon=True)
        t.start()
        try:
            self.io.run()
        finally:
            self.io.loop.cancel(guard)
            for c in self.opened:
                c.close()
            self.io.shutdown(unlink_socket=self.path)
            t.join(TIMEOUT)
        assert not t.is_alive(), "driver hung"
        if errors:
            raise errors[0]
        assert self.io.stop_reason != "the test ran too long"


def wait_for(pred: Callable[[], Any], timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_live_timer_fires_on_time_while_clients_are_served(tmp_path) -> None:
    """A 0.2 s timer while two clients ping-pong through the kernel flat out;
    a cancelled timer is never reported; wait() cut by a timer, live."""
    out: list[Any] = []
    held: dict[str, Watch] = {}
    rounds = [0]  # client round trips through the kernel
    served: list[int] = []  # ... while the 0.2 s timer was pending

    async def timed(k: IProc) -> None:
        held["gone"] = gone = k.timer(0.1)
        gone.cancel()
        await k.recv(EV_GO, 0, 0)
        t0, r0 = time.monotonic(), rounds[0]
        held["t"] = t = k.timer(0.2)
        await k.next_event(t)
        out.append(time.monotonic() - t0)
        served.append(rounds[0] - r0)
        t0 = time.monotonic()
        out.append(await k.wait(k.recv(EV_X, 0, 64), k.timer(0.2)))
        out.append(time.monotonic() - t0)
        await k.send(EV_ACK, 0, b"done")
        await k.next_event()

    live = Live(str(tmp_path), [KBoot("timed", PRDAEMON, timed)])

    def driver(live: Live) -> None:
        a, b, c = live.client(), live.client(), live.client()
        stop = threading.Event()

        def echo() -> None:
            while True:
                m = b.recv(EV_PING, 0, 64)
                if m.body == b"stop":
                    return
                b.send(EV_PONG, 0, m.body)

        te = threading.Thread(target=echo, daemon=True)
        te.start()

        def pingpong() -> None:
            while not stop.is_set():
                a.send(EV_PING, 0, b"ping")
                assert a.recv(EV_PONG, 0, 64).body == b"ping"
                rounds[0] += 1

        tp = threading.Thread(target=pingpong, daemon=True)
        tp.start()
        wait_for(lambda: rounds[0] >= 3)
        c.send(EV_GO, 0, b"")
        assert c.recv(EV_ACK, 0, 64).body == b"done"
        stop.set()
        tp.join(TIMEOUT)
        a.send(EV_PING, 0, b"stop")
        te.join(TIMEOUT)
        assert not tp.is_alive() and not te.is_alive()
        with pytest.raises(LamError) as e:  # the interrupted receive is gone
            c.send(EV_X, 0, b"late", KTRY)
        assert e.value.code == errno.EWOULDBLOCK

    live.serve(driver)
    # 0.2 s is the unloaded baseline: not early, and within 15 times it
    assert 0.19 <= out[0] < 3.0, out
    assert isinstance(out[1], Event) and out[1].kind == "timer"
    assert 0.19 <= out[2] < 3.0, out
    assert served[0] >= 1, (served, rounds)  # clients were served while the timer ran
    assert live.reports(held["gone"].id) == 0
    assert live.reports(held["t"].id) == 1


def test_live_readable_watch_fires_once_per_batch_not_in_a_spin(tmp_path) -> None:
    """A persistent watch on a socketpair: while data sits unread (the process
    is busy in a plain request) the I/O layer reports it once and goes quiet;
    when the process takes the event and reads, the next batch is reported
    once more. Reports == batches, whatever the number of writes."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    held: dict[str, Watch] = {}
    got: list[bytes] = []

    async def reader(k: IProc) -> None:
        held["r"] = r = k.watch_readable(ours.fileno())
        await k.send(EV_ACK, 0, b"watching")
        while True:
            m = await k.recv(EV_GO, 0, 16)  # busy: readiness waits in the mailbox
            if m.body == b"stop":
                break
            ev = await k.next_event(r)
            assert ev.watch is r
            data = ours.recv(65536)
            got.append(data)
            await k.send(EV_ACK, 0, data)
        for _ in range(direct):  # now waiting on it: each batch reported as it comes
            ev = await k.next_event(r)
            data = ours.recv(65536)
            got.append(data)
            await k.send(EV_ACK, 0, data)

    batches, writes, direct = 5, 3, 3
    quiet: list[int] = []
    live = Live(str(tmp_path), [KBoot("reader", PRDAEMON, reader)])

    def driver(live: Live) -> None:
        c = live.client()
        assert c.recv(EV_ACK, 0, 64).body == b"watching"
        wid = held["r"].id
        for i in range(batches):
            for j in range(writes):
                theirs.sendall(b"%d.%d;" % (i, j))
            wait_for(lambda: live.reports(wid) == i + 1)
            time.sleep(0.3)  # readable, unread, not taken: must stay quiet
            quiet.append(live.reports(wid))
            c.send(EV_GO, 0, b"go")
            body = c.recv(EV_ACK, 0, 4096).body
            assert body == b"".join(b"%d.%d;" % (i, j) for j in range(writes))
        c.send(EV_GO, 0, b"stop")
        for i in range(direct):
            batch = b"".join(b"d%d.%d;" % (i, j) for j in range(writes))
            theirs.sendall(batch)  # one write: it may be reported before a second
            assert c.recv(EV_ACK, 0, 4096).body == batch
        wait_for(lambda: live.kernel.kpfind(IPROC) is None)

    try:
        live.serve(driver)
    finally:
        ours.close()
        theirs.close()
    assert quiet == list(range(1, batches + 1))  # one report per batch, none while unread
    assert live.reports(held["r"].id) == batches + direct
    assert len(got) == batches + direct


def test_live_child_exits_report_status_and_are_reaped(tmp_path) -> None:
    out: list[Any] = []
    spawned: list[int] = []

    async def parent(k: IProc) -> None:
        env = {"PATH": "/usr/bin:/bin"}
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], env)
        spawned.append(pid)
        out.append((await k.next_event(k.watch_child(pid))).value)
        pid = os.posix_spawn("/bin/sleep", ["sleep", "30"], env)
        spawned.append(pid)
        w = k.watch_child(pid)
        ev = await k.next_event(w, k.timer(0.2))  # alive: the timer comes first
        out.append(ev.kind)
        os.kill(pid, signal.SIGKILL)
        out.append((await k.next_event(w)).value)
        # not the daemon's child: a grandchild, whose pid its parent prints
        rfd, wfd = os.pipe()
        try:
            sh = os.posix_spawn("/bin/sh", ["sh", "-c", "sleep 0.2 & echo $!; wait"], env,
                                file_actions=[(os.POSIX_SPAWN_DUP2, wfd, 1)])
            spawned.append(sh)
            os.close(wfd)
            wfd = -1
            shw = k.watch_child(sh)
            assert await k.readable(rfd, TIMEOUT)
            gpid = int(os.read(rfd, 64).split()[0])
            spawned.append(gpid)
            out.append((await k.next_event(k.watch_child(gpid))).value)
            out.append((await k.next_event(shw)).value)
        finally:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
        await k.halt()

    live = Live(str(tmp_path), [KBoot("parent", PRDAEMON, parent)])
    try:
        live.serve(lambda live: wait_for(lambda: live.io.stopping))
    finally:
        for pid in spawned:  # whatever a failure left behind
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    exited, killed, sh = spawned[0], spawned[1], spawned[2]
    assert out[0] == ChildExit(exited, os.CLD_EXITED, 3)
    assert out[1] == "timer"
    assert out[2] == ChildExit(killed, os.CLD_KILLED, signal.SIGKILL)
    assert out[3] == ChildExit(spawned[3])  # exited, but not ours: no status
    assert out[4] == ChildExit(sh, os.CLD_EXITED, 0)
    for pid in (exited, killed, sh):  # the daemon reaped them: no zombies
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_live_signal_watch_delivers_each_signal(tmp_path) -> None:
    out: list[Any] = []
    stray: list[int] = []

    async def sig(k: IProc) -> None:
        try:
            k.watch_signal(signal.SIGTERM)
        except ValueError:
            out.append("SIGTERM refused")
        w = k.watch_signal(signal.SIGUSR1)
        await k.send(EV_ACK, 0, b"watching")  # the handler is in place before this arrives
        for _ in range(2):
            ev = await k.next_event(w)
            await k.send(EV_ACK, 0, struct.pack("i", ev.value))
        await k.recv(EV_GO, 0, 0)

    before = signal.signal(signal.SIGUSR1, lambda s, f: stray.append(s))
    placeholder = signal.getsignal(signal.SIGUSR1)
    try:
        live = Live(str(tmp_path), [KBoot("sig", PRDAEMON, sig)])

        def driver(live: Live) -> None:
            c = live.client()
            assert c.recv(EV_ACK, 0, 64).body == b"watching"
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGUSR1)
                assert struct.unpack("i", c.recv(EV_ACK, 0, 64).body) == (signal.SIGUSR1,)
            c.send(EV_GO, 0, b"")
            wait_for(lambda: signal.getsignal(signal.SIGUSR1) is placeholder)

        live.serve(driver)
        assert out == ["SIGTERM refused"] and stray == []
        assert signal.getsignal(signal.SIGUSR1) is placeholder  # given back when it ended
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_live_descriptors_watched_are_closed_when_the_process_ends(tmp_path) -> None:
    """Readable watches (a socket, a pipe, a regular file), a child watch (a
    pidfd), a timer and a signal: the process ends with all of them live, and
    the daemon holds none of their descriptors afterwards."""
    ours, theirs = socket.socketpair()
    pr, pw = os.pipe()
    regular = os.open(str(tmp_path / "plain-file"), os.O_RDWR | os.O_CREAT, 0o600)
    sleeper = os.posix_spawn("/bin/sleep", ["sleep", "30"], {"PATH": "/usr/bin:/bin"})
    counts: dict[str, int] = {}

    async def watcher(k: IProc) -> None:
        await k.recv(EV_GO, 0, 0)
        for fd in (ours.fileno(), pr, regular):
            k.watch_readable(fd)
        k.watch_child(sleeper)
        k.timer(30)
        k.watch_signal(signal.SIGUSR2)
        await k.send(EV_ACK, 0, b"watching")
        await k.recv(EV_GO, 0, 0)

    usr2 = signal.getsignal(signal.SIGUSR2)
    # descriptors of earlier tests' objects that the collector closes would
    # change the counts while they are taken: collected first, then none
    gc.collect()
    gc.disable()
    try:
        live = Live(str(tmp_path), [KBoot("watcher", PRDAEMON, watcher)])

        def driver(live: Live) -> None:
            c = live.client()
            counts["before"] = nfds()
            c.send(EV_GO, 0, b"")
            assert c.recv(EV_ACK, 0, 64).body == b"watching"
            counts["during"] = nfds()
            c.send(EV_GO, 0, b"")
            wait_for(lambda: live.kernel.kpfind(IPROC) is None)
            end = time.monotonic() + 2.0
            while nfds() != counts["before"] + 1 and time.monotonic() < end:
                time.sleep(0.01)
            counts["after"] = nfds()
            counts["io watches"] = len(live.io._watches)
            # the child outlives the watch: its pidfd is kept only to reap it
            os.kill(sleeper, signal.SIGKILL)
            end = time.monotonic() + 5.0
            while nfds() != counts["before"] and time.monotonic() < end:
                time.sleep(0.01)
            counts["reaped"] = nfds()

        live.serve(driver)
    finally:
        gc.enable()
        ours.close()
        theirs.close()
        os.close(pr)
        os.close(pw)
        os.close(regular)
        try:
            os.kill(sleeper, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            counts["zombie"] = os.waitpid(sleeper, os.WNOHANG)[0]
        except ChildProcessError:
            counts["zombie"] = 0  # the daemon reaped it
    # while it watched: copies of the socket and the pipe, and a pidfd (epoll
    # refuses a regular file: that watch reports once, and keeps no copy)
    assert counts["during"] == counts["before"] + 3, counts
    # after: nothing but the pidfd of the still running child, kept to reap it
    assert counts["after"] == counts["before"] + 1, counts
    assert counts["reaped"] == counts["before"], counts
    assert counts["zombie"] == 0, "the daemon left its child unreaped"
    assert counts["io watches"] == 0 and live.kernel._watches == {}
    assert signal.getsignal(signal.SIGUSR2) == usr2
