"""The kernel snapshot (lamd.kernel.ksnapshot): round trips and hostile bytes.

Kernels are built by driving the real :class:`~lamd.kernel.Kernel` with the
random steps of ``tests/test_fuzz.py`` (valid and invalid requests from
several clients, pairs, drops, priority changes, traffic with an internal
process that carries state across the snapshot). At rest, the kernel is
snapshotted, the bytes decoded and restored into a fresh kernel; the two
must hold the same table and lists, and then answer any further steps with
the very same actions. Every truncation and every bit flip of a snapshot
must be refused with :class:`SnapshotError`, and so must a snapshot of
another version, uid or session, or an inconsistent one.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lamd import kernel as K
from lamd.kernel import Kernel
from lamd.kernel import ksnapshot as S
from lamd.kernel.constants import KNMSG, KQATTACH, KQRECV, KQSEND, KSREADY, KSRECV, KTRY, PRCMD
from lamd.kernel.kiproc import IProc, KBoot
from lamd.kernel.wire import KMsg, KReq, NMsg
from tests.test_fuzz import CONNS, ECHO_EVENT, ECHO_LEN, ECHO_PRI, KPID, MAX_PROCS, OWN, PIDS, \
    Draw, body_for

EXAMPLES = int(os.environ.get("LAMD_FUZZ_EXAMPLES", "1000")) // 5
UID, SESSION = 1000, "/tmp/lam-alice@node"
CONN_ID = {c: i + 10 for i, c in enumerate(CONNS)}  # descriptor numbers, say
CONN_OF = {n: c for c, n in CONN_ID.items()}


async def echo(k: IProc) -> None:
    """An echo that counts what it echoed, and carries the count across."""
    n = int(k.restored.decode()) if k.restored else 0
    k.carry = lambda: str(n).encode()
    while True:
        got = await k.recv(ECHO_EVENT, 0, ECHO_LEN, KNMSG)
        n += 1
        to = got.nmsg.data[0] if got.nmsg else 1
        await k.send(to, 0, got.body + n.to_bytes(4, "little"), KNMSG | KTRY, nmsg=NMsg(event=to))


TABLE = [KBoot("echo", ECHO_PRI, echo)]


def new_kernel() -> Kernel:
    return Kernel(kernel_pid=KPID, max_procs=MAX_PROCS, clock=lambda: 0.0)


class Driver:
    """Carries out a kernel's actions as the I/O layer would, minus sockets,
    and records them."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.connected: set[str] = set()
        self.collects: deque[K.CollectBody] = deque()
        self.log: list = []

    def run(self, actions: list) -> None:
        todo = deque(actions)
        while todo:
            a = todo.popleft()
            self.log.append(a)
            if type(a) is K.CollectBody:
                self.collects.append(a)
            elif type(a) is K.Close:
                todo.extend(self.gone(a.conn))

    def gone(self, conn: str) -> list:
        out = []
        self.connected.discard(conn)
        for c in [c for c in self.collects if c.src == conn]:
            self.collects.remove(c)
            out += self.k.body_failed(c.token)
        return out + self.k.disconnect(conn)

    def step(self, conn: str, op: tuple) -> None:
        k = self.k
        if op[0] == "pair":
            self.step(conn, ("traffic", op[2]))
            self.step(op[1], ("traffic", op[3]))
            return
        p = k.proc_of(conn) if conn in self.connected else None
        if op[0] == "traffic":
            if p is None:
                self.step(conn, ("attach", PRCMD))
                p = k.proc_of(conn) if conn in self.connected else None
            if p is None or p.state != KSREADY:
                return
        if conn not in self.connected:
            k.connect(conn, PIDS[conn], 1000)
            self.connected.add(conn)
        if op[0] == "drop":
            self.run(self.gone(conn))
        elif op[0] == "body":
            if self.collects:
                c = self.collects.popleft()
                self.run(k.body_arrived(c.token, body_for(c.length)))
        else:
            if op[0] == "attach":
                req = KReq(req=KQATTACH, index=-1, pid=PIDS[conn], priority=op[1])
            elif op[0] == "reprio":
                req = KReq(req=KQATTACH, index=p.index if p else 0, pid=PIDS[conn],
                           priority=op[1])
            else:
                req = op[1]
                if req.index == OWN and p is not None:
                    req = replace(req, index=p.index)
            self.run(k.request(conn, req))

    def settle(self) -> None:
        """Deliver every body owed to the internal process: the kernel is at rest."""
        while self.collects:
            c = self.collects.popleft()
            self.run(self.k.body_arrived(c.token, body_for(c.length)))


def table_of(k: Kernel) -> dict:
    """Everything a client or tool can observe of a kernel, and its order."""
    procs = [(p.index, p.pid, p.priority, p.conn, p.state, p.signal, p.flags, tuple(p.fyi),
              p.msg, p.msg2, p.blktime, p.seq, p.bkey, p.iproc.name if p.iproc else None)
             for p in k.procs.values()]
    return {
        "procs": procs,
        "ready": [p.index for p in k.ready_list()],
        "blocked": [p.index for p in k.blocked_list()],
        "by_pid": {pid: [p.index for p in lst] for pid, lst in k._by_pid.items()},
        "by_conn": [(c, p.index) for c, p in k._by_conn.items()],
        "peers": dict(k._peers),
        "killfile": k.killfile_entries(),
        "dump": k.dump_lines(),
        "free": sorted(k._free_indexes),
        "next": k._next_index,
        "stats": k.stats,
        "last_dump": k._last_dump,
    }


def round_trip(k: Kernel) -> tuple[Kernel, list, bytes]:
    state = S.capture(k, CONN_ID.__getitem__)
    data = S.encode(state, uid=UID, session=SESSION,
                    conns=[S.ConnState(n, PIDS[c], UID) for c, n in CONN_ID.items()],
                    extra={"listener": 3})
    snap = S.decode(data, uid=UID, session=SESSION)
    assert snap.extra == {"listener": 3}
    assert [c.fd for c in snap.conns] == list(CONN_ID.values())
    k2, actions = S.restore(snap.kernel, CONN_OF, TABLE, kernel_pid=KPID,
                            max_procs=MAX_PROCS, clock=lambda: 0.0)
    return k2, actions, data


def build(script: list) -> Driver:
    d = Driver(new_kernel())
    d.run(d.k.boot(TABLE))
    for conn, op in script:
        d.step(conn, op)
    d.settle()
    return d


steps = st.integers(0, 2**64 - 1).map(lambda n: Draw(n).step())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(steps, max_size=40), st.lists(steps, max_size=30))
def test_random_kernels_round_trip_and_carry_on_alike(before: list, after: list) -> None:
    d1 = build(before)
    k1 = d1.k
    seen = table_of(k1)
    k2, actions, _ = round_trip(k1)
    assert table_of(k1) == seen, "the snapshot changed the kernel it was taken of"
    assert actions == [], f"a restored internal process at rest asked for {actions}"
    assert table_of(k2) == seen
    k2.check_invariants()
    # from here on, the same requests get the same answers from both
    d2 = Driver(k2)
    d2.connected = set(d1.connected)
    d1.log.clear()
    for conn, op in after:
        d1.step(conn, op)
        d2.step(conn, op)
        assert d2.log == d1.log, f"after {(conn, op)}"
        assert table_of(k2) == table_of(k1)
    d1.settle()
    d2.settle()
    assert d2.log == d1.log and table_of(k2) == table_of(k1)


def busy_snapshot() -> bytes:
    """A snapshot of a kernel with clients ready, blocked both ways, a signal
    pending, and a count carried by the internal process."""
    d = Driver(new_kernel())
    d.run(d.k.boot(TABLE))
    d.step("c0", ("traffic", KReq(req=KQSEND, index=OWN, msg=KMsg(ECHO_EVENT, 0, 100, KNMSG))))
    d.step("c1", ("traffic", KReq(req=KQRECV, index=OWN, msg=KMsg(5, 0, 64))))
    d.step("c2", ("traffic", KReq(req=KQSEND, index=OWN, msg=KMsg(6, 1, 1 << 20))))
    d.step("c3", ("attach", 2000))
    d.settle()
    blocked = {p.pid: p.state for p in d.k.blocked_list()}
    assert blocked == {PIDS["c1"]: 2, PIDS["c2"]: 1, 100000: KSRECV}
    return round_trip(d.k)[2]


def test_a_busy_kernel_round_trips_with_its_carried_state() -> None:
    data = busy_snapshot()
    snap = S.decode(data, uid=UID, session=SESSION)
    echo_rec = next(r for r in snap.kernel.procs if r.iproc == "echo")
    assert echo_rec.carried == b"1"  # c0's message was echoed once
    k2, _ = S.restore(snap.kernel, CONN_OF, TABLE, kernel_pid=KPID, max_procs=MAX_PROCS)
    d = Driver(k2)
    d.connected = set(CONNS[:4])
    # the carried count goes on: the next echo says 2
    d.step("c0", ("traffic", KReq(req=KQSEND, index=OWN, msg=KMsg(ECHO_EVENT, 0, 80, KNMSG))))
    d.step("c0", ("traffic", KReq(req=KQRECV, index=OWN, msg=KMsg(3, 0, 100, KNMSG))))
    d.settle()
    bodies = [a.data for a in d.log if type(a) is K.SendBody]
    assert bodies and bodies[-1].endswith((2).to_bytes(4, "little")), bodies
    # the blocked receiver c1 is still there, and meets a sender
    d.step("c3", ("traffic", KReq(req=KQSEND, index=OWN, msg=KMsg(5, 0, 64))))
    assert K.Transfer("c3", "c1", 64) in d.log


def test_every_truncation_is_refused() -> None:
    data = busy_snapshot()
    for n in range(len(data)):
        with pytest.raises(S.SnapshotError, match="truncated|magic|checksum"):
            S.decode(data[:n], uid=UID, session=SESSION)
    with pytest.raises(S.SnapshotError, match="after its end"):
        S.decode(data + b"\0", uid=UID, session=SESSION)


def test_every_bit_flip_is_refused() -> None:
    data = busy_snapshot()
    buf = bytearray(data)
    for i in range(len(buf)):
        for bit in range(8):
            buf[i] ^= 1 << bit
            with pytest.raises(S.SnapshotError) as e:
                S.decode(buf, uid=UID, session=SESSION)
            assert "\n" not in str(e.value)
            buf[i] ^= 1 << bit
    assert S.decode(buf, uid=UID, session=SESSION)  # and the intact one is read


@settings(max_examples=max(20, EXAMPLES // 4), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.lists(steps, max_size=40), st.data())
def test_random_snapshots_refuse_damage(script: list, data) -> None:
    snap = round_trip(build(script).k)[2]
    cut = data.draw(st.integers(0, len(snap) - 1))
    with pytest.raises(S.SnapshotError):
        S.decode(snap[:cut], uid=UID, session=SESSION)
    flips = data.draw(st.lists(st.integers(0, len(snap) * 8 - 1), min_size=1, max_size=4,
                               unique=True))
    buf = bytearray(snap)
    for f in flips:
        buf[f // 8] ^= 1 << (f % 8)
    with pytest.raises(S.SnapshotError):
        S.decode(buf, uid=UID, session=SESSION)


def forge(data: bytes, *, version: int | None = None, uid: int | None = None,
          session: str | None = None, payload: bytes | None = None) -> bytes:
    """*data* re-made with other header fields or payload, with a right digest."""
    magic, ver, res, s_uid, s_len, p_len, _ = S.HEADER.unpack_from(data)
    sess = data[S.HEADER.size:S.HEADER.size + s_len]
    body = data[S.HEADER.size + s_len:]
    sess = sess if session is None else session.encode()
    body = body if payload is None else payload
    head = S.HEADER.pack(magic, ver if version is None else version, res,
                         s_uid if uid is None else uid, len(sess), len(body), bytes(16))
    return head[:-16] + S._digest(head, sess, body) + sess + body


def test_other_version_uid_or_session_is_refused_by_name() -> None:
    data = busy_snapshot()
    assert S.decode(forge(data), uid=UID, session=SESSION)  # forging itself is sound
    with pytest.raises(S.SnapshotError, match="format version 2; this lamd reads version 1"):
        S.decode(forge(data, version=2), uid=UID, session=SESSION)
    with pytest.raises(S.SnapshotError, match="uid 1001, not 1000"):
        S.decode(forge(data, uid=1001), uid=UID, session=SESSION)
    with pytest.raises(S.SnapshotError, match="session '/tmp/lam-bob@node'"):
        S.decode(forge(data, session="/tmp/lam-bob@node"), uid=UID, session=SESSION)
    with pytest.raises(S.SnapshotError, match="magic"):
        S.decode(b"X" + data[1:], uid=UID, session=SESSION)


def payload_of(data: bytes) -> dict:
    s_len = S.HEADER.unpack_from(data)[4]
    return json.loads(data[S.HEADER.size + s_len:])


def test_an_intact_but_inconsistent_snapshot_restores_nothing() -> None:
    data = busy_snapshot()
    good = payload_of(data)

    def refused(edit, match: str) -> None:
        doc = json.loads(json.dumps(good))
        edit(doc)
        forged = forge(data, payload=json.dumps(doc).encode())
        with pytest.raises(S.SnapshotError, match=match):
            snap = S.decode(forged, uid=UID, session=SESSION)
            S.restore(snap.kernel, CONN_OF, TABLE, kernel_pid=KPID)

    procs = lambda d: d["kernel"]["procs"]  # noqa: E731
    refused(lambda d: procs(d).append(procs(d)[-1]), "process index")
    refused(lambda d: procs(d)[-1].__setitem__(0, 99), "process index")
    refused(lambda d: procs(d)[-1].__setitem__(3, 77), "connection 77, which was not carried")
    refused(lambda d: procs(d)[0].__setitem__(14, "nosuchd"), "internal process nosuchd")
    refused(lambda d: procs(d)[-1].__setitem__(4, 3), "process state")
    refused(lambda d: procs(d)[-1].__setitem__(7, [0]), "fyi")
    refused(lambda d: procs(d)[-1].__setitem__(1, "2000"), "pid")
    refused(lambda d: d["kernel"]["free"].append(0), "free indexes")
    refused(lambda d: d["kernel"]["by_conn"].pop(), "connection index")
    refused(lambda d: d["kernel"]["by_pid"].pop(), "pid index")
    refused(lambda d: d["kernel"].pop("seq"), "kernel section")
    refused(lambda d: d["conns"].append(d["conns"][0]), "carried twice")
    refused(lambda d: d["conns"][0].__setitem__(5, "!!"), "input bytes")
    refused(lambda d: d.__setitem__("kernel", []), "kernel section")


def test_not_at_rest_is_not_snapshotted() -> None:
    d = Driver(new_kernel())
    d.run(d.k.boot(TABLE))
    d.step("c0", ("traffic", KReq(req=KQSEND, index=OWN, msg=KMsg(ECHO_EVENT, 0, 100, KNMSG))))
    assert d.collects  # echo waits for c0's body
    before = table_of(d.k)
    with pytest.raises(S.NotAtRest, match="bodies are being collected"):
        S.capture(d.k, CONN_ID.__getitem__)
    assert table_of(d.k) == before
    d.settle()
    S.capture(d.k, CONN_ID.__getitem__)


# --- bufferd's kept packets, carried (lamd.iprocs.carried) --------------------------

from lamd.iprocs import BY_NAME  # noqa: E402
from lamd.iprocs.bufferd import Buffers  # noqa: E402
from lamd.iprocs.carried import pack_buffers, unpack_buffers, with_carry  # noqa: E402
from lamd.iprocs.nreq import LOCAL  # noqa: E402
from tests.lamclient import Client, World  # noqa: E402

NET_TABLE = with_carry([BY_NAME["router"], BY_NAME["bufferd"]])


def test_bufferd_packets_survive_a_snapshot() -> None:
    """nsend'ed messages bufferd keeps (short, and long ones in packets) are
    nrecv'd, in order and whole, from the restored kernel's bufferd."""
    w = World(NET_TABLE, {"node_addr": "127.0.0.1"})
    a = w.client("a", 4001)
    w.client("b", 4002)
    bodies = [bytes([i]) * n for i, n in enumerate([0, 64, 8192, 8193, 100000])]
    for i, body in enumerate(bodies):
        a.nsend(LOCAL, 555, i + 1, body, data=(len(body), 7))
    state = S.capture(w.kernel, {"a": 1, "b": 2}.__getitem__)
    (rec,) = [r for r in state.procs if r.iproc == "bufferd"]
    assert rec.carried is not None and len(rec.carried) > sum(map(len, bodies))
    data = S.encode(state, uid=UID, session=SESSION)
    snap = S.decode(data, uid=UID, session=SESSION)
    k2, actions = S.restore(snap.kernel, {1: "a", 2: "b"}, NET_TABLE, {"node_addr": "127.0.0.1"},
                            clock=lambda: 0.0)
    w.kernel = k2
    w.run(actions)
    b = Client(w, "b", 4002)
    b.index = k2.proc_of("b").index
    for i, body in enumerate(bodies):
        head, got = b.nrecv(555, 0, len(body) + 100)
        assert (head.type, got) == (i + 1, body), i
    # and nothing more is kept
    assert b.nprobe(555)[7] == -1


@given(st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=300)), max_size=12),
       st.integers(0, 1 << 30), st.data())
@settings(max_examples=max(20, EXAMPLES // 4), deadline=None)
def test_bufferd_state_round_trips_and_damage_is_refused(packets, maxspace, data) -> None:
    buf = Buffers(maxspace=maxspace)
    for ev, body in packets:
        b = buf.keep(NMsg(dl_event=ev, event=ev, type=len(body), length=len(body)), body)
        if data.draw(st.booleans()):
            buf.seq_of(b)
    raw = pack_buffers(buf, dropped=3)
    got, dropped = unpack_buffers(raw)
    assert dropped == 3 and got.maxspace == maxspace and got.nspace == buf.nspace
    assert [(e, [(x.head, x.body, x.seq) for x in q]) for e, q in got.events.items()] == \
        [(e, [(x.head, x.body, x.seq) for x in q]) for e, q in buf.events.items()]
    assert got._seq_used == buf._seq_used and got._seq_next == buf._seq_next
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ValueError):
        unpack_buffers(raw[:cut])
    with pytest.raises(ValueError):
        unpack_buffers(raw + b"\0")


# --- diforward's keys, carried (lamd.iprocs.diforward) -------------------------------

from lamd.iprocs import DIFORWARD  # noqa: E402
from lamd.iprocs.diforward import EVDIFORWARD, frame_key  # noqa: E402

DL_TABLE = with_carry([BY_NAME["router"], BY_NAME["bufferd"], DIFORWARD])


def test_diforward_keys_survive_a_snapshot() -> None:
    """The key of the last frame diforward took from each node crosses a
    re-exec: the datalink process sending that frame again after the
    re-exec (it died before it kept the frame as handed on) does not make
    the restored kernel hand it on twice."""
    w = World(DL_TABLE, {"node_addr": "127.0.0.1"})
    dli = w.client("dli", 4001)
    w.client("b", 4002)

    def give(seq: int, body: bytes) -> None:
        head = NMsg(node=LOCAL, event=556, type=seq, length=len(body))
        dli.ksend(EVDIFORWARD, 0, frame_key(("10.0.0.1", 99), 1, seq) + body, KNMSG, head)
        assert dli.reply().reply == 0

    give(1, b"one")
    state = S.capture(w.kernel, {"dli": 1, "b": 2}.__getitem__)
    (rec,) = [r for r in state.procs if r.iproc == "diforward"]
    assert rec.carried is not None and len(rec.carried) > 0
    snap = S.decode(S.encode(state, uid=UID, session=SESSION), uid=UID, session=SESSION)
    k2, actions = S.restore(snap.kernel, {1: "dli", 2: "b"}, DL_TABLE,
                            {"node_addr": "127.0.0.1"}, clock=lambda: 0.0)
    w.kernel = k2
    w.run(actions)
    dli = Client(w, "dli", 4001)
    dli.index = k2.proc_of("dli").index
    give(1, b"one")        # again, after the re-exec: not handed on
    give(2, b"two")
    b = Client(w, "b", 4002)
    b.index = k2.proc_of("b").index
    assert [b.nrecv(556, 0, 100)[1] for _ in range(2)] == [b"one", b"two"]
    assert b.nprobe(556)[7] == -1   # and nothing more
