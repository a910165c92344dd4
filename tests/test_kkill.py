"""The kill file as the I/O layer keeps it (:class:`KillFileWriter` over the
real :class:`KillFile`), driven by the kernel's own actions, turn by turn.

``tests/test_fuzz.py`` checks the same against any interleaving; these pin
the cases by name.
"""

from __future__ import annotations

import os

import pytest

from lamd.kernel import Kernel, KillAppend, KillRemove, KillRewrite, Reply
from lamd.kernel.constants import KQATTACH, KQDETACH, PRCMD, PRLAMHALT
from lamd.kernel.wire import KReq
from lamd.session.kkill import KillFile, KillFileWriter, read_killfile

KPID = 1


class Turns:
    """A kernel and its kill file; ``turn()`` ends a loop iteration."""

    def __init__(self, tmp: str) -> None:
        self.path = os.path.join(tmp, "lam-killfile")
        self.k = Kernel(kernel_pid=KPID)
        self.kill = KillFileWriter(KillFile(self.path, os.path.join(tmp, "lamd-clients"), KPID),
                                   lambda: [(pid, None) for pid, _ in self.k.killfile_entries()])
        self.kill.flush(strict=True)
        self.heard: dict[str, list[int]] = {}  # the file when each attach reply went out

    def run(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, KillAppend):
                self.kill.append(a.pid)
            elif isinstance(a, KillRemove):
                self.kill.remove(a.pid)
            elif isinstance(a, KillRewrite):
                self.kill.rewrite_due()
            elif isinstance(a, Reply):
                self.heard[a.conn] = read_killfile(self.path)

    def attach(self, conn: str, pid: int, priority: int = PRCMD) -> None:
        self.k.connect(conn, pid, 0)
        self.run(self.k.request(conn, KReq(req=KQATTACH, index=-1, pid=pid, priority=priority)))

    def reprio(self, conn: str, priority: int) -> None:
        index = self.k.proc_of(conn).index
        self.run(self.k.request(conn, KReq(req=KQATTACH, index=index, priority=priority)))

    def detach(self, conn: str) -> None:
        self.run(self.k.request(conn, KReq(req=KQDETACH, index=self.k.proc_of(conn).index)))
        self.run(self.k.disconnect(conn))

    def turn(self) -> list[int]:
        if self.kill.due:
            self.kill.flush()
        return read_killfile(self.path)


@pytest.fixture
def t(tmp_path):
    t = Turns(str(tmp_path))
    yield t
    t.kill.close()


def test_a_client_is_listed_before_its_attach_reply(t: Turns) -> None:
    t.attach("a", 500)
    assert t.heard["a"] == [KPID, 500]
    t.attach("h", 501, PRLAMHALT)  # lamhalt: never listed
    assert t.turn() == [KPID, 500]


def test_one_leaves_another_attaches_in_the_same_turn(t: Turns) -> None:
    """The leaver is cut off the tail, and the newcomer still gets its line
    before its reply (it used to be lost: the cut never consults the table)."""
    t.attach("a", 500)
    assert t.turn() == [KPID, 500]
    t.detach("a")
    t.attach("b", 501)
    assert t.heard["b"] == [KPID, 501]
    assert t.turn() == [KPID, 501]


def test_same_pid_leaves_and_comes_back_in_one_turn(t: Turns) -> None:
    t.attach("a", 500)
    t.attach("b", 500)  # one process, two connections: listed twice
    assert t.turn() == [KPID, 500, 500]
    t.detach("b")
    t.attach("b2", 500)
    assert t.heard["b2"] == [KPID, 500, 500]
    assert t.turn() == [KPID, 500, 500]


def test_leavers_before_the_tail_and_priority_changes_rewrite(t: Turns) -> None:
    for conn, pid in (("a", 500), ("b", 501), ("c", 502)):
        t.attach(conn, pid)
    t.detach("a")  # not the last listed: rewritten
    t.attach("d", 503)
    assert t.heard["d"] == [KPID, 501, 502, 503]
    assert t.turn() == [KPID, 501, 502, 503]
    t.reprio("c", PRLAMHALT)  # moves out
    assert t.turn() == [KPID, 501, 503]
    t.reprio("c", PRCMD)  # and back in
    t.attach("e", 504)
    assert t.heard["e"] == [KPID, 501, 502, 503, 504]
    assert t.turn() == [KPID, 501, 502, 503, 504]


def test_a_pid_that_leaves_and_comes_back_in_one_turn_costs_no_write(t: Turns, monkeypatch) -> None:
    """LAM's tools attach, work and detach in a loop: when the leaver is seen
    first (the listener is served last in a turn) its line lists the newcomer,
    and the file is neither cut nor appended to."""
    t.attach("a", 500)
    assert t.turn() == [KPID, 500]
    calls: list[str] = []
    for name in ("write", "ftruncate"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _n=name, _r=real: (calls.append(_n), _r(*a))[1])
    for conn in ("b", "c", "d"):
        t.detach("a" if conn == "b" else prev)
        t.attach(conn, 500)
        assert t.heard[conn] == [KPID, 500]  # listed before it hears back
        assert t.turn() == [KPID, 500]
        prev = conn
    assert calls == []
    monkeypatch.undo()
    t.detach(prev)  # a real leave still cuts its line
    assert t.turn() == [KPID]


def test_a_new_kill_file_is_written_in_place_then_replaced_by_exchange(tmp_path, monkeypatch) -> None:
    """Issue 13: the daemon's first kill file (made before its first reply)
    goes straight into the new, empty file, with no renameat2 (ctypes);
    every later rewrite, and the first over a file left by a dead daemon,
    swaps in a complete copy as before (the path never names a torn file)."""
    import lamd.session.kkill as kk
    swaps: list[str] = []
    real = kk._exchange
    monkeypatch.setattr(kk, "_exchange", lambda a, b: swaps.append(b) or real(a, b))
    kill, clients = str(tmp_path / "lam-killfile"), str(tmp_path / "lamd-clients")
    kf = KillFile(kill, clients, 100)
    kf.rewrite([(7, None)])
    assert swaps == [] and read_killfile(kill) == [100, 7]
    assert open(clients).read() == "7 0\n"
    kf.rewrite([(8, None)])
    assert swaps == [kill] and read_killfile(kill) == [100, 8]
    kf.close()
    # a stale one (a daemon that died): replaced whole, by exchange
    swaps.clear()
    kf2 = KillFile(kill, clients, 200)
    kf2.rewrite([])
    assert kill in swaps and read_killfile(kill) == [200]
    kf2.close()
