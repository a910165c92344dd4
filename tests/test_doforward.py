"""doforward (lamd/iprocs/doforward.py, issue 11): a kernel whose dlo runs
outside it gives dlo each packet for another node so that a crash of the
datalink process loses none and sends none twice.

In-process: our kernel in a thread booted with dlo_inet external (so with
the doforward row), a liblam-like client (lamd.client) sending on EVDL0 as
nsend does, and clients playing dlo: each packet comes tagged, with the one
before it; after a burst the last one comes again alone; a dlo that dies
with a packet unread leaves it to the next dlo. The property test runs
doforward's protocol against dlo's side (Taker, the frames kept in
lamd.datalink.keep) with the datalink process killed at any step: every
packet becomes a frame once, in order. The network test with a datalink
process SIGKILLed under an outbound stream is
tests/test_datalink_separate.py.

No C-lamd side: LAM's separate dlo_inet takes packets from the kernel
itself and keeps nothing across a crash; there is no LAM behaviour to
compare with.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lamd.datalink.frame import DLAck, DLFrame
from lamd.datalink.keep import STATE_PREFIX, LinkKeep, load, newest
from lamd.datalink.link import DLOut
from lamd.iprocs import BOOT_TABLE, DOFORWARD, boot_table, booted_rows
from lamd.iprocs import doforward as dof
from lamd.iprocs.doforward import (
    EVDOFORWARD, LONGEST, MAXUNSURE, Giver, Packet, Taker, pack, unpack,
)
from lamd.iprocs.nreq import DLUSR
from lamd.kernel.constants import EVDL0, KNMSG, LAM_BASE_EVENT
from lamd.kernel.kiproc import IPROC_PID_BASE
from lamd.kernel.wire import NMsg

from .test_datalink_keep import B_DLI, Store, universe
from .test_separate import World, blocked_on, forked_host
from .test_stock_tools import wait_until

TIMEOUT = 10.0
EVX = LAM_BASE_EVENT + 211   # the packets' event on node 1: no LAM service uses it


@pytest.fixture
def world() -> Iterator[World]:
    d = tempfile.TemporaryDirectory(prefix="lamd-dofwd-")
    w = World(d.name, ["dlo_inet"])
    try:
        assert wait_until(lambda: blocked_on(w.kernel, EVDL0) == 1, TIMEOUT)
        yield w
    finally:
        w.close()
        d.cleanup()


def packet(n: int) -> tuple[NMsg, bytes]:
    """Packet *n* for node 1, as nsend gives it to dlo."""
    body = bytes((n * 37 + i) & 0xFF for i in range(50 + 3 * n))
    return NMsg(dl_event=EVDL0, dl_link=1, node=1, event=EVX, type=n, length=len(body),
                data=tuple(range(n, n + 8))), body


def sending(w: World, ns: list[int]) -> threading.Thread:
    """A client sending packets *ns* to EVDL0 in turn (each send waits for
    doforward to take it)."""
    c = w.client()

    def run() -> None:
        for n in ns:
            h, b = packet(n)
            c.send(EVDL0, DLUSR, b, KNMSG, nmsg=h)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def take(c: Any) -> tuple[int, int, list[tuple[int, bytes]]]:
    """What a dlo receives: epoch, counter, and (type, body) of the unsure
    packets before it and of the packet."""
    m = c.recv(EVDOFORWARD, 0, LONGEST, KNMSG)
    g = unpack(m.nmsg, m.body, m.type)
    return g.epoch, g.counter, [(p.head.type, p.body) for p in g.prevs + [g.packet]]


def p(n: int) -> tuple[int, bytes]:
    return n, packet(n)[1]


def test_the_row_is_booted_only_with_dlo_outside():
    names = [kb.name for kb in boot_table({"node_addr": "192.0.2.2"}, ["dlo_inet"])]
    assert names[-1] == "doforward" and "dlo_inet" not in names
    assert DOFORWARD.row == len(BOOT_TABLE) + 1      # pid 100016, after diforward's
    both = [kb.name for kb in boot_table({"node_addr": "192.0.2.2"}, ["dli_inet", "dlo_inet"])]
    assert both[-2:] == ["diforward", "doforward"]
    assert "doforward" not in [kb.name for kb in boot_table({"node_addr": "192.0.2.2"})]
    assert booted_rows(["dlo_inet"]) == len(names) == len(BOOT_TABLE)


def exchange(w: World, sender: Any, dlo: Any, n: int,
             pause: float = 0.0) -> tuple[int, int, list]:
    """*dlo* waits for a message, *pause* s later packet *n* is sent; what
    dlo gets."""
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(take(dlo)), daemon=True)
    t.start()
    assert wait_until(lambda: blocked_on(w.kernel, EVDOFORWARD) == 1, TIMEOUT)
    time.sleep(pause)
    h, b = packet(n)
    sender.send(EVDL0, DLUSR, b, KNMSG, nmsg=h)
    t.join(TIMEOUT)
    assert got, "dlo got nothing"
    return got[0]


def test_a_dlo_that_asks_for_more_has_kept_what_it_took(world):
    """The process that took the last message waits for the next: it kept
    it, so the next comes alone, and nothing is given again after the burst."""
    dlo, sender = world.client(), world.client()
    epoch, c1, got1 = exchange(world, sender, dlo, 1)
    assert c1 == 1 and got1 == [p(1)]
    assert exchange(world, sender, dlo, 2) == (epoch, 2, [p(2)])
    # dlo waits past REPEAT: nothing again, the next packet comes alone
    assert exchange(world, sender, dlo, 3, pause=3 * dof.REPEAT) == (epoch, 3, [p(3)])


def test_a_packet_given_before_its_taker_asks_for_more_comes_again(world, monkeypatch):
    """Packet 1 taken; packet 2 given before dlo waits again: 1 comes again
    with it (dlo may have died with 1 not kept); REPEAT s after 1, dlo not
    waiting, 2 comes again alone; then dlo waits past REPEAT: nothing again."""
    monkeypatch.setattr(dof, "REPEAT", 2.0)   # (not before packet 2 is given)
    dlo, sender = world.client(), world.client()
    epoch, _, got1 = exchange(world, sender, dlo, 1)
    assert got1 == [p(1)]
    h, b = packet(2)
    sender.send(EVDL0, DLUSR, b, KNMSG, nmsg=h)   # doforward has it; nobody waits
    assert take(dlo) == (epoch, 2, [p(1), p(2)])
    time.sleep(dof.REPEAT + 0.5)
    assert take(dlo) == (epoch, 2, [p(2)])
    assert exchange(world, sender, dlo, 3, pause=dof.REPEAT + 0.5) == (epoch, 3, [p(3)])


def test_a_packet_a_dead_dlo_did_not_keep_reaches_the_next(world, caplog):
    """A dlo (a process of its own) dies right after it read packet 1,
    before keeping it: the next dlo gets it again."""
    async def dier(k: Any) -> None:
        await k.recv(EVDOFORWARD, 0, LONGEST, KNMSG)
        os._exit(0)

    pid = forked_host(world, dier)
    try:
        assert wait_until(lambda: blocked_on(world.kernel, EVDOFORWARD) == 1, TIMEOUT)
        sender = world.client()
        h, b = packet(1)
        sender.send(EVDL0, DLUSR, b, KNMSG, nmsg=h)
        _, st = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(st) == 0
        nxt = world.client()
        caplog.set_level("INFO", logger="lamd.iprocs.doforward")
        epoch, c, got = take(nxt)
        assert c == 1 and got == [p(1)]
        assert exchange(world, sender, nxt, 2) == (epoch, 2, [p(2)])
        assert f"dlo is a new process (pid {os.getpid()}): given again what the one before " \
            "may not have kept (1 packets)" in caplog.text
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_at_the_bound_the_unsure_packets_go_before_anything_new(world, monkeypatch):
    """Two dlos in a row die with a message not kept (the bound set to 2):
    doforward gives both unsure packets again at once, until one process
    has taken them twice; then it is at rest (a plain receive, no timer
    left, nothing queued: what a re-exec needs)."""
    monkeypatch.setattr(dof, "MAXUNSURE", 2)
    monkeypatch.setattr(dof, "REPEAT", 30.0)   # only the bound gives again here

    async def dier(k: Any) -> None:
        await k.recv(EVDOFORWARD, 0, LONGEST, KNMSG)
        os._exit(0)

    sender = world.client()
    pids = []
    try:
        for n in (1, 2):
            pids.append(forked_host(world, dier))
            assert wait_until(lambda: blocked_on(world.kernel, EVDOFORWARD) == 1, TIMEOUT)
            h, b = packet(n)
            sender.send(EVDL0, DLUSR, b, KNMSG, nmsg=h)
            _, st = os.waitpid(pids[-1], 0)
            pids.pop()
            assert os.waitstatus_to_exitcode(st) == 0
        nxt = world.client()
        epoch, c, got = take(nxt)
        assert c == 2 and got == [p(1), p(2)]
        assert take(nxt) == (epoch, 2, [p(1), p(2)])   # the same taker twice: kept
        proc = world.kernel.kpfind(IPROC_PID_BASE + DOFORWARD.row)
        assert wait_until(lambda: blocked_on(world.kernel, EVDL0) == 1, TIMEOUT)
        assert not proc.watches and not proc.mailbox
        assert exchange(world, sender, nxt, 3) == (epoch, 3, [p(3)])
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_the_state_crosses_a_re_exec():
    g = Giver(7, 9, [Packet(packet(3)[0], packet(3)[1], DLUSR)])
    back = dof.unpack_carry(dof.pack_carry(g))
    assert (back.epoch, back.counter, back.unsure) == (7, 9, g.unsure)
    assert dof.unpack_carry(dof.pack_carry(Giver(7))).unsure == []
    with pytest.raises(ValueError):
        unpack(NMsg(), b"short", 0)
    with pytest.raises(ValueError):   # more packets before it than its counter
        unpack(NMsg(), pack(7, 1, g.unsure, b""), 0)


def test_taker_takes_each_counter_once_and_a_new_epoch_anew():
    t = Taker()
    q = [Packet(*packet(n), DLUSR) for n in range(4)]
    assert t.new(unpack(q[1].head, pack(5, 1, [], q[1].body), DLUSR)) == [(1, q[1])]
    t.took(1)
    # given again: nothing; the next with the one before: only the new one
    assert t.new(unpack(q[1].head, pack(5, 1, [], q[1].body), DLUSR)) == []
    assert [c for c, _ in t.new(unpack(q[2].head, pack(5, 2, [q[1]], q[2].body), DLUSR))] == [2]
    t.took(2)
    # a kernel started again: epoch 6 counts from 1
    assert [c for c, _ in t.new(unpack(q[3].head, pack(6, 1, [], q[3].body), DLUSR))] == [1]


# -- the protocol under crashes of the datalink process ---------------------

def _frame_of(p: Packet) -> DLFrame:
    return DLFrame.from_nmsg(0, 0, p.head, p.body)


class Dlo:
    """dlo's side over what its process keeps; a crash builds it again from
    the newest state in the store (or afresh, *keeping* False)."""

    def __init__(self, keeping: bool) -> None:
        self.keeping = keeping
        self.store = Store()
        self.keep = LinkKeep(self.store, universe(0))
        self.start(None)
        self.made: list[int] = []   # the packets made frames, in order (every process)

    def start(self, kept: Any) -> None:
        self.out = DLOut(0, {1: B_DLI})
        if kept is not None:
            self.keep = LinkKeep(self.store, kept.universe, kept)
        self.keep.attach_out(self.out)
        self.taker = Taker(self.keep.epoch, self.keep.high, self.keep) if self.keeping \
            else Taker()

    def take(self, body: bytes, head: NMsg, steps: int | None = None) -> None:
        """Take a message; with *steps*, the process dies after that many."""
        done = 0
        sent: list[bytes] = []
        for counter, p in self.taker.new(unpack(head, body, DLUSR)):
            if steps is not None and done == steps:
                return
            self.taker.begin(counter)
            sent += [d for _, d in self.out.outgoing(1, _frame_of(p)).send]
            self.made.append(p.head.type)
            done += 1
            if steps is not None and done == steps:
                return
            self.taker.took(counter)
            done += 1
        for d in sent:   # acked once taken (dlo reads acks in a later turn)
            self.out.datagram(B_DLI, DLAck(1, DLFrame.decode(d).dlf_seqnum).encode())

    def crash(self) -> None:
        kept = load(newest(self.store.passed())[1]) if self.keeping else None
        self.keep.close()
        if not self.keeping:
            self.store.close()
            self.store = Store()
            self.keep = LinkKeep(self.store, universe(0))
        self.start(kept)

    def close(self) -> None:
        self.keep.close()
        self.store.close()


def run_protocol(n: int, script: list[int], keeping: bool, giver: type = Giver) -> list[int]:
    """doforward's Giver gives packets 0..n-1 to a dlo that the script
    kills at any step (each dlo a process of its own); what dlo made frames of."""
    dlo = Dlo(keeping)
    try:
        g = giver(99)
        pid = 1000
        inflight: tuple[bytes, NMsg] | None = None   # written to dlo's connection
        nxt = 0

        def give(observed: bool) -> None:
            nonlocal nxt, inflight
            g.waiting(pid if observed else -1)
            h, b = packet(nxt)
            q = Packet(NMsg(dl_event=EVDL0, dl_link=1, node=1, event=EVX, type=nxt,
                            length=len(b)), b, DLUSR)
            inflight = (g.give(q), q.head)
            g.taken(pid, True)                       # the live dlo's receive took it
            nxt += 1

        def again(observed: bool) -> None:
            nonlocal inflight
            g.waiting(pid if observed else -1)
            if not g.unsure:
                return
            last, body = g.again()
            inflight = (body, last.head)
            g.taken(pid, False)

        # ops: 0-3 a packet given (0, 1: dlo seen waiting; 2, 3: its receive
        # not yet there), 4-5 the repeat timer (seen waiting or not), 6-7 dlo
        # takes what it was given, 8 dlo dies with it not kept, 9-11 dlo
        # dies while taking it (after 0, 1 or 2 steps)
        for op in script:
            if inflight is None and op <= 3 and nxt < n and not g.full():
                give(op <= 1)
            elif inflight is None and (op in (4, 5) or g.full()) and g.unsure:
                again(op != 5)
            elif inflight is not None and op <= 7:
                body, head = inflight
                inflight = None
                dlo.take(body, head)
            elif op == 8:
                inflight = None
                dlo.crash()
                pid += 1
            elif inflight is not None and op >= 9:
                body, head = inflight
                inflight = None
                dlo.take(body, head, steps=op - 9)
                dlo.crash()
                pid += 1
        # the rest, with no more crashes: the repeats settle it
        for _ in range(4 * n + 4 * MAXUNSURE):
            if inflight is not None:
                body, head = inflight
                inflight = None
                dlo.take(body, head)
            elif nxt < n and not g.full():
                give(False)
            elif g.unsure:
                again(False)
            else:
                break
        assert not g.unsure and nxt == n
        return dlo.made
    finally:
        dlo.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 20), script=st.lists(st.integers(0, 11), max_size=120))
def test_crashes_of_dlo_lose_no_packet_and_repeat_none(n, script):
    assert run_protocol(n, script, keeping=True) == list(range(n))


def test_without_the_counters_kept_a_crash_repeats_packets():
    """The same protocol, dlo's counters not kept: the check above catches
    it (a packet given again with the next one is made a frame twice)."""
    script = [2, 6, 2, 10, 2, 6]
    assert run_protocol(3, script, keeping=True) == [0, 1, 2]
    assert run_protocol(3, script, keeping=False) != [0, 1, 2]


class Trusting(Giver):
    """A doforward that takes a packet written to dlo's connection for kept."""

    def taken(self, pid: int, new: bool) -> None:
        self.unsure = []
        self.taker = pid


def test_without_the_unsure_packets_given_again_a_crash_loses_packets():
    script = [0, 8, 0, 6]        # dlo dies with packet 0 read, not kept
    assert run_protocol(2, script, keeping=True) == [0, 1]
    assert run_protocol(2, script, keeping=True, giver=Trusting) == [1]


class Careless(Giver):
    """A doforward that takes any dlo waiting for more for the one that took
    the last packet."""

    def waiting(self, pid: int) -> None:
        if pid != -1:
            self.unsure = []


def test_a_new_dlo_waiting_is_not_taken_for_the_dead_one():
    script = [0, 8, 0, 6]        # the next dlo waits when packet 1 is given
    assert run_protocol(2, script, keeping=True) == [0, 1]
    assert run_protocol(2, script, keeping=True, giver=Careless) == [1]


def test_the_counter_is_kept_with_the_frame():
    """A crash between the frame's slot and the head's counter: the load
    finds the counter in the slot; a new epoch is kept before its first."""
    s = Store()
    k = LinkKeep(s, universe(0))
    out = DLOut(0, {1: B_DLI})
    k.attach_out(out)
    k.new_epoch(42)
    k.taking = 7
    out.outgoing(1, _frame_of(Packet(*packet(1), DLUSR)))
    got = load(s.passed()[f"{STATE_PREFIX}1"])
    assert (got.epoch, got.high) == (42, 7)
    k.took(7)
    k.rewrite()                                   # a new generation keeps both
    got = load(newest(s.passed())[1])
    assert (got.epoch, got.high) == (42, 7) and got.tags[(1, 0)] == (42, 7)
    k.new_epoch(43)                              # frames of the old epoch do not count
    got = load(newest(s.passed())[1])
    assert (got.epoch, got.high) == (43, 0)
    k.close()
    s.close()
