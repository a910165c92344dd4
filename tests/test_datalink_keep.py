"""What the datalink process keeps across its own crash
(lamd/datalink/keep.py, issue 11): the universe, the links' sequence
numbers and the frames not acked, in a memfd of a descriptor store.

The property test is the lossy channel of test_datalink_link.py with two
more events: the sender's process and the receiver's process die, and
each is built again from the newest state in its store only. Whatever
happens, every message is handed on once, in order: nothing acked is lost
and nothing is handed on twice. Without the keeping (the sender or the
receiver started afresh, sequence numbers from 0) the same test fails.

No C-lamd side: LAM's dli_inet and dlo_inet keep nothing across a crash
(the node is cut off), so there is no LAM behaviour to compare with; the
wire the restarted process speaks is checked against C lamds in
tests/test_datalink_separate.py (a C lamd is the origin there)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lamd.datalink.frame import DLMAXSEQ, DLAck, DLFrame
from lamd.datalink.keep import (
    HEAD, STATE_PREFIX, KeepError, LinkKeep, Universe, load, newest,
)
from lamd.datalink.link import DLIn, DLOut
from lamd.datalink.linkreq import DoLink
from lamd.iprocs.router import Route

A = ("10.77.0.1", 40000)     # node 0's dlo socket
B_DLI = ("10.77.0.2", 5555)  # node 1's dli port


class Store:
    """systemd's descriptor store: name -> descriptors (its own copies)."""

    def __init__(self) -> None:
        self.fds: dict[str, list[int]] = {}

    def fdstore(self, name: str, fd: int) -> bool:
        self.fds.setdefault(name, []).append(os.dup(fd))
        return True

    def fdstore_remove(self, name: str) -> None:
        for fd in self.fds.pop(name, []):
            os.close(fd)

    def passed(self) -> dict[str, int]:
        """What the next start gets (LISTEN_FDNAMES: one per name here)."""
        assert all(len(v) == 1 for v in self.fds.values()), self.fds
        return {k: v[0] for k, v in self.fds.items()}

    def close(self) -> None:
        for name in list(self.fds):
            self.fdstore_remove(name)


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


def universe(node_id: int) -> Universe:
    return Universe(node_id, 0, B_DLI[1] if node_id else A[1], False,
                    [Route(0, 1, 0, 1, 0, 3, 2), Route(1, 1, 1, 1, 1, 0, 4)],
                    [DoLink(0, A[0], A[1]), DoLink(1, B_DLI[0], B_DLI[1])])


def msg(i: int, n: int = 0) -> DLFrame:
    body = struct.pack(">i", i) + bytes(n)
    return DLFrame(0, 0, 1, 100 + i, 0, len(body), 0, bytes(32), body)


def test_universe_round_trip_and_generations(store):
    u = universe(1)
    k = LinkKeep(store, u)
    assert list(store.fds) == [f"{STATE_PREFIX}1"]
    got = load(store.passed()[f"{STATE_PREFIX}1"])
    assert got.universe == u and got.generation == 1 and got.slots == {}
    # lamgrow: a new generation is stored before the old one goes
    k.rewrite(u.routes + [Route(2, 1, 2, 1, 2, 0, 1)],
              u.links + [DoLink(2, "10.77.0.3", 7777)])
    assert list(store.fds) == [f"{STATE_PREFIX}2"]
    name, fd = newest(store.passed())
    got = load(fd)
    assert name == f"{STATE_PREFIX}2" and [l.link for l in got.universe.links] == [0, 1, 2]
    assert got.universe.routes[-1] == Route(2, 1, 2, 1, 2, 0, 1)
    # the newest of what a crash between the two left
    assert newest({f"{STATE_PREFIX}9": 5, f"{STATE_PREFIX}10": 6, "dl-in": 7,
                   f"{STATE_PREFIX}x": 8}) == (f"{STATE_PREFIX}10", 6)
    k.close()


def test_hot_changes_reach_the_memfd_without_a_rewrite(store):
    out = DLOut(0, {1: B_DLI})
    k = LinkKeep(store, universe(0))
    k.attach_out(out)
    sent = [out.outgoing(1, msg(i, 100)) for i in range(5)]
    assert sum(len(r.send) for r in sent) == 3
    out.datagram(B_DLI, DLAck(1, 1).encode())      # frame 1 acked
    assert k.generation == 1                        # no new memfd for any of it
    got = load(store.passed()[f"{STATE_PREFIX}1"])
    assert got.seqgive[1] == 5
    assert sorted(got.slots[1]) == [0, 2, 3, 4]
    assert got.slots[1][2] == out.links[1].pending[2].datagram
    # a new process: the frames not acked go again, lowest number first
    out2 = DLOut(0, {1: B_DLI})
    k2 = LinkKeep(Store(), got.universe, got)
    again = k2.attach_out(out2)
    assert [DLFrame.decode(d).dlf_seqnum for _, d in again] == [0, 2, 3]
    assert out2.links[1].seqgive == 5 and out2.nfull == 4
    k.close()
    k2.store.close()
    k2.close()


def test_a_state_not_whole_is_refused(store):
    k = LinkKeep(store, universe(1))
    fd = store.passed()[f"{STATE_PREFIX}1"]
    size = os.fstat(fd).st_size
    os.ftruncate(fd, size - 1)
    with pytest.raises(KeepError, match="head says"):
        load(fd)
    os.pwrite(fd, b"NOTLAMDK", 0)
    with pytest.raises(KeepError, match="not a datalink state"):
        load(fd)
    os.ftruncate(fd, HEAD.size - 1)
    with pytest.raises(KeepError, match="shorter than its head"):
        load(fd)
    k.close()


class Side:
    """One end of the channel: its state machine and what its process keeps."""

    def __init__(self, node_id: int, keeping: bool) -> None:
        self.node_id = node_id
        self.keeping = keeping
        self.store = Store()
        self.keep = LinkKeep(self.store, universe(node_id))
        self.fresh()
        self._attach()

    def fresh(self) -> None:
        self.out = DLOut(0, {1: B_DLI})
        self.din = DLIn(1, {0: A[0]})

    def _attach(self) -> list[bytes]:
        self.din.keep = self.keep
        self.keep.attach_in(self.din)
        return [d for _, d in self.keep.attach_out(self.out)]

    def crash(self) -> list[bytes]:
        """The process dies; the next one starts from the store (or afresh,
        *keeping* False: what the datalink did before)."""
        kept = load(newest(self.store.passed())[1])
        self.keep.close()
        self.fresh()
        if not self.keeping:
            return []
        self.keep = LinkKeep(self.store, kept.universe, kept)
        return self._attach()

    def close(self) -> None:
        self.keep.close()
        self.store.close()


def run_channel(n: int, script: list[int], start: int, keeping: bool) -> list[int]:
    snd, rcv = Side(0, keeping), Side(1, keeping)
    try:
        snd.keep.seqgive[1] = start
        rcv.keep.handed_in[0] = start
        snd.keep.rewrite()
        rcv.keep.rewrite()
        snd.out.links[1].seqgive = start
        rcv.keep.attach_in(rcv.din)
        fwd: list[bytes] = []
        back: list[bytes] = []
        got: list[int] = []
        queued = 0

        def feed_out() -> None:
            nonlocal queued
            while queued < n and snd.out.room():
                fwd.extend(d for _, d in snd.out.outgoing(1, msg(queued)).send)
                queued += 1

        def deliver_frame(d: bytes) -> None:
            r = rcv.din.datagram(A, d)
            back.extend(a for _, a in r.acks)
            for f in r.deliver:
                got.append(struct.unpack(">i", f.dlf_msg[:4])[0])
                back.append(rcv.din.handed_on(f))

        feed_out()
        for op in script:
            if op <= 2 and fwd:
                deliver_frame(fwd.pop(op % len(fwd)))
            elif op == 3 and back:
                fwd.extend(d for _, d in snd.out.datagram(B_DLI, back.pop(len(back) // 2)).send)
            elif op == 4 and fwd:
                fwd.pop(0)
            elif op == 5 and back:
                back.pop()
            elif op == 6 and fwd:
                fwd.append(fwd[-1])
            elif op == 7:
                fwd.extend(d for _, d in snd.out.tick().send)
            elif op == 8:
                fwd.extend(snd.crash())       # acks to the dead socket: lost
                back.clear()
            elif op == 9:
                rcv.crash()
            feed_out()
        for _ in range(10 * n + 40):
            while fwd:
                deliver_frame(fwd.pop(0))
            while back:
                fwd.extend(d for _, d in snd.out.datagram(B_DLI, back.pop(0)).send)
            feed_out()
            if not fwd and not back:
                fwd.extend(d for _, d in snd.out.tick().send)
            if len(got) >= n and not snd.out.busy():
                break
        return got
    finally:
        snd.close()
        rcv.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 30), script=st.lists(st.integers(0, 9), max_size=300),
       start=st.sampled_from([0, DLMAXSEQ - 5]))
def test_crashes_of_either_process_lose_nothing_and_repeat_nothing(n, script, start):
    assert run_channel(n, script, start, keeping=True) == list(range(n))


def test_without_the_keeping_a_crash_loses_messages():
    """The same channel, the processes started afresh: the check above
    catches it (the receiver takes the sender's new frame 0 for an old one,
    or the sender's numbers restart under a receiver that expects more)."""
    script = [0, 0, 3, 3, 8, 0, 0, 0, 3, 3, 3]
    assert run_channel(6, script, 0, keeping=True) == list(range(6))
    assert run_channel(6, script, 0, keeping=False) != list(range(6))


LAUNCH = r'''
import os, socket, sys
from lamd.datalink.keep import LinkKeep, DLI_SOCKET
from tests.test_datalink_keep import Store, universe
sdir = sys.argv[1]
u = universe(1)
u.routes.append(type(u.routes[0])(2, 1, 2, 1, 2, 0, 1))   # 3 nodes: not the new kernel's 1
store = Store()
keep = LinkKeep(store, u)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
store.fdstore(DLI_SOCKET, udp.fileno())
lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lst.bind(os.path.join(sdir, "lamd-datalink-socket"))
lst.listen(4)
passed = [("listen", lst.fileno())] + [(n, fd) for n, fd in store.passed().items()]
high = [os.dup(fd) for _, fd in passed]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
os.environ.update(LISTEN_FDS=str(len(passed)), LISTEN_PID=str(os.getpid()),
                  LISTEN_FDNAMES=":".join(n for n, _ in passed))
os.environ.pop("NOTIFY_SOCKET", None)
os.execv(sys.executable, [sys.executable, "-m", "lamd.datalink", "--wait", "10"])
'''


@pytest.mark.parametrize("mode", ["auto", "external"])
def test_a_state_kept_for_another_kernel_is_not_served(lam_session, lamd_pkg, mode):
    """A datalink process started again with a kept universe, whose kernel
    is a new one (lamhalt or tkill ended the old one meanwhile), does not
    serve that universe: exit 1 (final for lamd-dl@.service), one line
    saying why. ``auto``: the new kernel runs the datalink itself (what one
    that the process's connect starts does, as it looks for the
    announcement only after that check), and stays a working one-node
    daemon (lamnodes, tping). ``external``: one that leaves the datalink to
    a process but whose router has one node is refused too."""
    from .lamenv import PyDaemon, SYSTEM_PYTHON
    d = PyDaemon(lam_session, lamd_pkg, args=["--log-level", "info", f"--datalink={mode}"])
    d.start()
    try:
        env = dict(lam_session.env, PYTHONPATH=f"{lamd_pkg}:{Path(__file__).parent.parent}",
                   PYTHONDONTWRITEBYTECODE="1")
        cp = lam_session.run([SYSTEM_PYTHON, "-c", LAUNCH, lam_session.session_dir],
                             timeout=60, env=env)
        assert cp.returncode == 1, cp.stdout + cp.stderr
        assert "started again after a crash: node n1" in cp.stderr, cp.stderr
        if mode == "auto":
            assert ("the kernel runs dli_inet, dlo_inet, bforward itself: a new kernel, not "
                    "the one this node's universe was on; not serving again") in cp.stderr, \
                cp.stderr
            assert not (lam_session.session_dir / "lamd-datalink").exists()
            for tool in (["lamnodes"], ["tping", "-c", "1", "N"]):
                cp = lam_session.run(["timeout", "-k", "5", "20", *tool], timeout=30)
                assert cp.returncode == 0, tool + [cp.stdout, cp.stderr]
            assert "1 byte from n0" in cp.stdout, cp.stdout
            return
        assert ("the kernel's router has nodes [0], not the universe this node served "
                "(3 nodes): a new kernel; not serving again") in cp.stderr, cp.stderr
        assert d.proc is not None and d.proc.poll() is None, d.log()   # left running
        # (without its datalink process this kernel's dlo is gone, so LAM's
        # tools that check node ids with it, lamhalt among them, would wait:
        # it is ended as tkill would)
        d.expect_exit = True
        d.proc.terminate()
    finally:
        d.stop()
