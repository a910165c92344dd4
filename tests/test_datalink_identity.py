"""The node id learnt after boot (a datalink outside the kernel, issue 11),
through the sans-IO kernel (no sockets): LAM's ``initrouter`` requests
(``RQSETROUTES``) from a client make the router's ``NT_ME`` entry this
node's id for every internal process (``Identity``), and a separate
process's ``RQWAITNODE`` is answered when it changes. Also the datalink
socket's request format and the announcement the kernel looks for."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from lamd.datalink import handoff
from lamd.datalink.process import announce, read_request, withdraw
from lamd.iprocs.nreq import LOCAL, NOBUF, NT_ME, NT_ORIGIN, data_words
from lamd.iprocs.router import (
    RQGETNODES, RQREMROUTE, RQSETROUTES, RQWAITNODE, Route, RouteTable, sync_identity,
)
from lamd.iprocs.nreq import Identity
from lamd.kernel.constants import EVDL0, EVECHOD, EVHALTD, EVROUTER, KNMSG, NOTEVENT
from lamd.kernel.wire import KMsg, NMsg
from lamd.session import LAMD_DATALINK, datalink_announced

from lamd.iprocs import boot_table

from .lamclient import Client, World
from .test_iprocs import ADDR, I4, rreq

UNIVERSE = [Route(0, EVDL0, 0, EVDL0, 0, NT_ORIGIN, 1),
            Route(1, NOTEVENT, 1, NOTEVENT, 1, NT_ME, 1),
            Route(2, EVDL0, 2, EVDL0, 2, 0, 1)]


def set_routes(c, routes) -> None:
    """What lamd.iprocs.router.rrsetrents sends: NOBUF to the router."""
    c.nsend(LOCAL, EVROUTER, 0, b"".join(r.pack() for r in routes),
            data=(-c.pid, RQSETROUTES, 0, len(routes)), flags=NOBUF)


def test_route_table_me_and_sync_identity():
    t = RouteTable([Route(0, nodetype=NT_ME | NT_ORIGIN)])
    ident = Identity(0, 0)
    assert t.me() == (0, 0) and not sync_identity(t, ident)
    t.set(UNIVERSE[0])  # node 0 is the origin only now: nobody is this node
    assert t.me() is None and not sync_identity(t, ident) and ident == Identity(0, 0)
    t.set(UNIVERSE[1])
    assert t.me() == (1, 0) and sync_identity(t, ident) and ident == Identity(1, 0)


def test_initrouter_from_a_client_makes_this_node_n1_for_every_process():
    # as the daemon boots: one config, filled by boot_table (the shared
    # route table and Identity), given to every internal process
    cfg = {"node_addr": ADDR}
    w = World(boot_table(cfg), cfg)
    c = w.client("dl", 4100)
    # a separate process waiting for the node id (the jobs process's watch)
    wev = -(0x10000000 + 4200)
    j = w.client("jobs", 4200)
    _, head, _ = j.dsfr(NMsg(dl_event=EVROUTER, node=LOCAL, event=EVROUTER, type=0,
                             flags=NOBUF, data=data_words(wev, RQWAITNODE, -3)), wev, 0)
    assert head.data[6] == 0 and head.data[5] == 0  # at once: n0 is not "-3"
    # again, knowing n0: it waits in the router
    j.ksr(KMsg(EVROUTER, 0, 0, KNMSG | NOBUF), b"",
          NMsg(dl_event=EVROUTER, node=LOCAL, event=EVROUTER, type=0, flags=NOBUF,
               data=data_words(wev, RQWAITNODE, 0)),
          KMsg(wev, 0, 0, KNMSG))
    assert j.front().reply == 0
    assert j.blocked()
    # LAM's initrouter, as lamd.datalink's dli sends it: others first, NT_ME last
    set_routes(c, [UNIVERSE[0], UNIVERSE[2]])
    assert j.blocked()  # no node is NT_ME in between: nothing changed yet
    set_routes(c, [UNIVERSE[1]])
    assert not j.blocked()
    rep, head, _ = j.packet()
    assert rep.reply == 0 and (head.data[0], head.data[6], head.data[5]) == (0, 1, 0)
    # getnodeid(): the router's NT_ME entry
    _, _, body = c.dsfr(rreq(4100, RQGETNODES, nodetype=NT_ME, typemask=NT_ME), -4100, 4)
    assert body == I4.pack(1)
    # haltd and echod answer as n1; bufferd takes node 1 for local
    h = w.client("h", 1100, priority=1085)
    h.nsend(1, EVHALTD, 1, b"", data=(1, -1100, 0, 1100))  # LAM_HALT_PING to node 1
    head, _ = h.nrecv(-1100, 0, 0)
    assert head.data[:3] == (1, 0, 0)  # hq_node: this node's id
    h.nsend(1, EVECHOD, 3, b"hello", data=(1, -1100))
    head, body = h.nrecv(-1100, 3, 64)
    assert body == b"hello"
    # nodes not in the universe go (RQREMROUTE), this one stays
    c.nsend(LOCAL, EVROUTER, 0, data=(-4100, RQREMROUTE, 2), flags=NOBUF)
    _, _, body = c.dsfr(rreq(4100, RQGETNODES), -4100, 64)
    assert sorted(struct.unpack(f"<{len(body) // 4}i", body)) == [0, 1]


def test_request_format_round_trip():
    argv = ["-H", "10.1.2.3", "-P", "4711", "-n", "3", "-o", "0", "-x", "-d",
            "-sessionsuffix", "é"]
    a, b = socket.socketpair()
    with a, b:
        a.sendall(handoff.encode_request(argv))
        assert read_request(b, 2.0) == argv
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(ValueError):
            read_request(b, 2.0)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(handoff.MAGIC + b"-H\0")  # never finished
        with pytest.raises(ValueError):
            read_request(b, 0.3)


def test_announcement_is_alive_while_its_lock_is_held(tmp_path):
    d = str(tmp_path)
    assert datalink_announced(d) is None
    path, fd = announce(d)
    assert datalink_announced(d) == os.getpid()
    assert datalink_announced(d, check_start=True) == os.getpid()
    # a stale file (the process died: its lock went with it)
    os.close(os.dup(fd))
    withdraw(path, fd)
    assert not os.path.exists(path)
    with open(os.path.join(d, LAMD_DATALINK), "w") as f:
        f.write(f"{os.getpid()} 1\n")
    assert datalink_announced(d) is None
    # held by another process whose start time is not the file's: alive for
    # the kernel (which only needs to know), not for tkill (which signals)
    p = subprocess.Popen([sys.executable, "-c",
                          "import fcntl, os, sys, time\n"
                          "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
                          "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True)\n"
                          "time.sleep(30)", os.path.join(d, LAMD_DATALINK)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "held\n"
        assert datalink_announced(d) == os.getpid()
        assert datalink_announced(d, check_start=True) is None
    finally:
        p.kill()
        p.wait(5)


def test_handoff_without_a_datalink_socket_says_not_here(tmp_path, monkeypatch):
    monkeypatch.setenv("LAM_MPI_SESSION_PREFIX", str(tmp_path))
    assert handoff.main(["-H", "127.0.0.1", "-P", "1", "-n", "0"]) == handoff.EXIT_NOT_HERE
    # a socket file nobody listens on: not here either (bin/lamd boots by hand)
    from lamd.session import LAMD_DATALINK_SOCKET, Session
    sess = Session.for_user()
    os.makedirs(sess.directory, mode=0o700)
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(sess.directory, LAMD_DATALINK_SOCKET))
    s.close()
    t0 = time.monotonic()
    assert handoff.main(["-H", "127.0.0.1", "-P", "1", "-n", "0"]) == handoff.EXIT_NOT_HERE
    assert time.monotonic() - t0 < 2


def test_handoff_reports_the_services_answers(tmp_path):
    path = str(tmp_path / "dl")
    lst = socket.socket(socket.AF_UNIX)
    lst.bind(path)
    lst.listen(1)
    import threading

    def serve(lines):
        conn, _ = lst.accept()
        with conn:
            read_request(conn, 2.0)
            for ln in lines:
                conn.sendall(ln.encode() + b"\n")

    for lines, want in ((["called-back n1 ...", "ok n1 of 2 nodes"], 0),
                        (["called-back n1 ...", "error no universe from lamboot in time"], 1),
                        ([], 1)):
        t = threading.Thread(target=serve, args=(lines,))
        t.start()
        rc, line = handoff.handoff(path, ["-H", "x"], callback_timeout=5, boot_timeout=5)
        t.join()
        assert rc == want, (lines, rc, line)
    lst.close()


def test_the_learnt_universe_and_its_waiters_survive_a_reexec():
    """A re-exec (issue 12) on a node whose separate datalink gave the router
    its universe: the router carries its table and the RQWAITNODE waiters
    (lamd.iprocs.router.pack_state); the restored kernel's processes are
    n1 at once, the table answers as before, and a waiter still gets its
    answer when the id changes afterwards. Damaged carried state is refused."""
    from lamd.iprocs.router import pack_state, unpack_state
    from lamd.kernel import ksnapshot as S

    def table(cfg):  # the kernel's own rows (the job services are a separate process's)
        return [kb for kb in boot_table(cfg) if kb.name in ("router", "bufferd", "echod")]

    cfg = {"node_addr": ADDR}
    w = World(table(cfg), cfg)
    c = w.client("dl", 4100)
    j = w.client("jobs", 4200)
    set_routes(c, [UNIVERSE[0], UNIVERSE[2], UNIVERSE[1]])
    assert cfg["identity"] == Identity(1, 0)
    wev = -(0x10000000 + 4200)
    j.ksr(KMsg(EVROUTER, 0, 0, KNMSG | NOBUF), b"",
          NMsg(dl_event=EVROUTER, node=LOCAL, event=EVROUTER, type=0, flags=NOBUF,
               data=data_words(wev, RQWAITNODE, 1)),
          KMsg(wev, 0, 0, KNMSG))
    assert j.front().reply == 0 and j.blocked()
    state = S.capture(w.kernel, {"dl": 1, "jobs": 2}.__getitem__)
    (rec,) = [r for r in state.procs if r.iproc == "router"]
    routes, waiters = unpack_state(rec.carried)
    assert [r.nodeid for r in routes] == [0, 2, 1] and waiters == [(wev, 0)]
    snap = S.decode(S.encode(state, uid=1000, session="s"), uid=1000, session="s")
    cfg2 = {"node_addr": ADDR}
    k2, actions = S.restore(snap.kernel, {1: "dl", 2: "jobs"}, table(cfg2), cfg2,
                            clock=lambda: 0.0)
    w.kernel = k2
    w.run(actions)
    assert cfg2["identity"] == Identity(1, 0)  # before any request
    c2 = Client(w, "dl", 4100)
    c2.index = k2.proc_of("dl").index
    _, _, body = c2.dsfr(rreq(4100, RQGETNODES), -4100, 64)
    assert sorted(struct.unpack(f"<{len(body) // 4}i", body)) == [0, 1, 2]
    _, _, body = c2.dsfr(rreq(4100, RQGETNODES, nodetype=NT_ME, typemask=NT_ME), -4100, 4)
    assert body == I4.pack(1)
    # lamgrow-like change of this node's id: the carried waiter is answered
    j2 = Client(w, "jobs", 4200)
    j2.index = k2.proc_of("jobs").index
    assert j2.blocked()
    set_routes(c2, [Route(1, EVDL0, 1, EVDL0, 1, 0, 1), Route(3, NOTEVENT, 3, NOTEVENT, 3, NT_ME, 1)])
    assert not j2.blocked()
    rep, head, _ = j2.packet()
    assert rep.reply == 0 and (head.data[6], head.data[5]) == (3, 0)
    raw = pack_state(RouteTable(UNIVERSE), [(wev, 0)])
    for bad in (raw[:-1], raw + b"\0", b"ROUTER02" + raw[8:], raw[:10]):
        with pytest.raises(ValueError):
            unpack_state(bad)


class _Store:
    """What IprocStates needs of sd_notify: FDSTORE and FDSTOREREMOVE by name."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def fdstore(self, name: str, fd: int) -> bool:
        self.fds[name] = os.dup(fd)
        return True

    def fdstore_remove(self, name: str) -> None:
        fd = self.fds.pop(name, None)
        if fd is not None:
            os.close(fd)


def test_the_learnt_universe_survives_a_crash_in_the_descriptor_store(caplog):
    """After a crash (issue 12): the router kept its table and its waiters in
    a memfd of the descriptor store (lamd.kernelio.iprocstate), written when
    they changed; a new kernel given that store is n1 of the same universe
    before any request. A damaged, foreign or torn state is refused with one
    line and the router starts from the boot table."""
    from lamd.kernelio import iprocstate as ips

    def table(cfg):
        return [kb for kb in boot_table(cfg) if kb.name in ("router", "bufferd", "echod")]

    store = _Store()
    states = ips.IprocStates(store, uid=1000, session="/tmp/s")
    cfg = {"node_addr": ADDR, "keep_state": states.keep}
    w = World(table(cfg), cfg)
    assert store.fds == {}  # nothing to keep yet
    c = w.client("dl", 4100)
    set_routes(c, [UNIVERSE[0], UNIVERSE[2], UNIVERSE[1]])
    assert list(store.fds) == ["iproc-router"]
    # the crash: a new daemon gets the store's descriptors
    stored = {"iproc-router": os.dup(store.fds["iproc-router"]), "c3": -1}
    states2 = ips.IprocStates(store, uid=1000, session="/tmp/s")
    kept = states2.take(stored)
    assert stored == {"c3": -1} and list(kept) == ["router"]
    cfg2 = {"node_addr": ADDR, "crash_restored": kept, "keep_state": states2.keep}
    w2 = World(table(cfg2), cfg2)
    assert cfg2["identity"] == Identity(1, 0)
    c2 = w2.client("x", 4300)
    _, _, body = c2.dsfr(rreq(4300, RQGETNODES), -4300, 64)
    assert sorted(struct.unpack(f"<{len(body) // 4}i", body)) == [0, 1, 2]
    # refused: another user's, another session's, torn (data changed under
    # its header), truncated, not ours at all
    raw = os.pread(store.fds["iproc-router"], 1 << 16, 0)
    for bad, why in ((ips.encode(b"x", uid=1001, session="/tmp/s"), "uid 1001"),
                     (ips.encode(b"x", uid=1000, session="/tmp/t"), "another session"),
                     (raw[:-1] + bytes([raw[-1] ^ 1]), "fail their header"),
                     (raw[:20], "truncated"), (b"GIF89a" + raw[6:], "bad magic")):
        fd = os.memfd_create("t")
        os.write(fd, bad)
        caplog.clear()
        got = ips.IprocStates(_Store(), uid=1000, session="/tmp/s").take({"iproc-router": fd})
        assert got == {}, why
        errs = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errs) == 1 and errs[0].startswith(
            "after a crash: router's state refused, it starts afresh: ") and why in errs[0], errs
    # the router itself refuses bytes that are not its state
    cfg3 = {"node_addr": ADDR, "crash_restored": {"router": b"nonsense"}}
    World(table(cfg3), cfg3)
    assert cfg3["identity"] == Identity(0, 0)
    assert "router: kept state refused" in caplog.text
    for fd in store.fds.values():
        os.close(fd)
