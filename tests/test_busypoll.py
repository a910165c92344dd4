"""The kernel's busy polling (``lamd --busy-poll``, :class:`lamd.kernelio.loop.BusyPoll`).

A round trip through the daemon is four hand-offs between three processes;
every one that finds the daemon asleep in ``epoll_wait`` costs a wake-up
and two context switches (on a VM an interrupt to a halted vCPU: 15-17 µs
here, ``docs/profile.md``). The daemon keeps polling for a window after its
last event, adapted to the traffic as Linux's guest haltpoll governor adapts
its window. This is ours alone: the C lamd sleeps in ``select`` at once, so
the daemon-level check has no C side; that the daemon rests when traffic
stops is checked on both (``test_cclient.test_the_daemon_rests_once_traffic_stops``).
The jobs process the daemon starts by hand polls by the daemon's
``--busy-poll`` too (ours alone as well: the C lamd's kenyad is a function
inside it).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from lamd.kernelio.loop import BUSY_POLL, BusyPoll

from . import lamenv
from .test_cclient import Clients, ok
from .test_jobsproc import wait_jobs_process

US = 1e-6


def serve(bp: BusyPoll, gaps: list[float]) -> list[bool]:
    """Events *gaps* apart (each turn takes no time): whether each one found
    the loop still polling (True) or asleep."""
    now = 0.0
    bp.worked(now)
    polled = []
    for gap in gaps:
        polled.append(bp.timeout(now, 1.0) == 0.0 and gap < bp.window)
        now += gap
        bp.woke(now)
        bp.worked(now)
    return polled


def test_steady_traffic_within_the_limit_is_met_polling() -> None:
    bp = BusyPoll(50 * US, start=10 * US)
    polled = serve(bp, [30 * US] * 10)
    assert polled[:2] == [False, False]  # 0, then 10 µs: grown twice
    assert all(polled[3:])
    assert bp.window == pytest.approx(40 * US)


def test_traffic_slower_than_the_limit_stops_the_polling() -> None:
    bp = BusyPoll(50 * US, start=10 * US)
    serve(bp, [30 * US] * 10)
    assert not any(serve(bp, [200 * US] * 10))
    assert bp.window < 0.1 * US


def test_limit_zero_never_polls() -> None:
    bp = BusyPoll(0.0)
    assert not any(serve(bp, [1 * US, 2 * US, 0.0, 5 * US] * 5))
    assert bp.timeout(bp.last, 1.0) == 1.0


def test_idle_means_sleeping() -> None:
    """The window only follows events: long after the last one, the wait is
    the loop's own."""
    bp = BusyPoll()
    serve(bp, [10 * US] * 20)
    assert bp.window > 0
    assert bp.timeout(bp.last + bp.window / 2, 0.25) == 0.0
    assert bp.timeout(bp.last + BUSY_POLL, 0.25) == 0.25


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 1e-3), st.lists(st.floats(0.0, 2e-3), max_size=60))
def test_the_window_never_outgrows_its_limit(limit: float, gaps: list[float]) -> None:
    bp = BusyPoll(limit)
    now = 0.0
    for gap in gaps:
        now += gap
        bp.woke(now)
        bp.worked(now)
        assert 0.0 <= bp.window <= limit
        # polling never runs past the limit after the last event
        assert bp.timeout(now + limit + 1e-9, 0.5) == 0.5


@pytest.mark.parametrize("value,limit", [("", BUSY_POLL), ("120", 120 * US), ("0", None),
                                         ("junk", BUSY_POLL)])
def test_separate_processes_take_lamd_busy_poll(value: str, limit: float | None) -> None:
    bp = BusyPoll.from_env({"LAMD_BUSY_POLL": value} if value else {})
    assert (bp.limit if bp else None) == (pytest.approx(limit) if limit else None)


def voluntary_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


@pytest.mark.parametrize("poll_us", [0, 2000])
def test_a_polling_daemon_meets_a_ping_pong_awake(lam_session, lamd_pkg, kclient,
                                                   poll_us: int) -> None:
    """Stock liblam clients ping-pong 64 B through our daemon. Not polling
    (``--busy-poll 0``, the C lamd's way) it sleeps at least once per round
    trip, waiting for the next request; polling (a limit far above a round
    trip, so a loaded machine cannot miss it) it hardly sleeps at all."""
    d = lamenv.PyDaemon(lam_session, lamd_pkg,
                        args=["--log-level", "info", "--no-jobs", "--busy-poll", str(poll_us)])
    d.start()
    try:
        k = Clients(d, kclient)
        event = 100000 + os.getpid() % 1000 * 4
        iters = 2000
        before = voluntary_switches(d.pid)
        pong = k.start("pingpong", "pong", event, iters, 64)
        ping = k.start("pingpong", "ping", event, iters, 64)
        for p in (ping, pong):
            ok(*k.finish(p, timeout=120))
        per_trip = (voluntary_switches(d.pid) - before) / iters
    finally:
        d.stop()
    if poll_us:
        assert per_trip < 0.3
    else:
        assert per_trip >= 0.9


@pytest.mark.parametrize("poll_us", [0, 2000])
def test_the_jobs_child_polls_as_the_daemon_is_told(lam_session, lamd_pkg, kclient,
                                                    poll_us: int) -> None:
    """``lamd --busy-poll`` is the jobs process's limit too (the daemon
    passes it as an argument: in ``LAMD_BUSY_POLL`` every job would inherit
    it). A stock liblam client asks kenyad for its process table 1,000 times
    (``rpstate``, what mpitask asks): told 0, the jobs process sleeps waiting
    for each request; told 2,000 µs, far above a request's round trip, it
    meets them awake. (Before, it polled for ``LAMD_BUSY_POLL``'s default 50
    µs whatever the daemon was told: shorter than the gap between two
    requests, so it slept for each.)"""
    d = lamenv.PyDaemon(lam_session, lamd_pkg,
                        args=["--log-level", "info", "--busy-poll", str(poll_us)])
    d.start()
    try:
        k = Clients(d, kclient)
        ok(*k.run("pstate", 50, timeout=60))   # kenyad serving, everything warm
        jobs = wait_jobs_process(d)
        iters = 1000
        before = voluntary_switches(jobs)
        ok(*k.run("pstate", iters, timeout=120))
        per_request = (voluntary_switches(jobs) - before) / iters
    finally:
        d.stop()
    # measured: 0.002-0.003 and 3.0 (it waits three times per request: for
    # the request, and for the kernel's go-ahead of each of its two sends);
    # with the default 50 µs whatever the daemon was told, 0.30 and 0.82
    if poll_us:
        assert per_request < 0.1
    else:
        assert per_request >= 1.5


def test_readable_reports_once_until_taken_without_rearming_each_time() -> None:
    """:class:`~lamd.kernelio.loop.Readable`: the usual turn (reported,
    taken, read) leaves the descriptor registered (no ``epoll_ctl``); data
    left unread is reported once, the descriptor then leaves epoll until the
    report is taken, and is reported again if still unread."""
    import socket

    from lamd.kernelio.loop import EventLoop, Readable

    loop = EventLoop()
    a, b = socket.socketpair()
    a.setblocking(False)
    reports: list[int] = []
    try:
        r = Readable(loop, a.fileno(), lambda: reports.append(1))
        for i in range(3):  # the usual turn
            b.send(b"x")
            loop.poll(1.0)
            r.taken()
            assert a.recv(16) == b"x"
            loop.poll(0.0)
            assert len(reports) == i + 1 and a.fileno() in loop.handlers and not r.out
        b.send(b"unread")
        loop.poll(1.0)
        assert len(reports) == 4
        for _ in range(3):  # not taken: quiet, and out of epoll after one more look
            loop.poll(0.0)
        assert len(reports) == 4 and r.out and a.fileno() not in loop.handlers
        r.taken()
        loop.poll(1.0)  # still unread: reported again
        assert len(reports) == 5 and not r.out
        r.close()
        assert a.fileno() not in loop.handlers
    finally:
        loop.close()
        a.close()
        b.close()
