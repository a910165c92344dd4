"""Property tests: any request sequence, any byte stream, never a broken kernel.

Hypothesis drives the sans-IO kernel with interleavings of valid and invalid
requests from several clients, connections dropping at random points, and
internal-process traffic; after every step the kernel's invariants hold, and
at the end the process table and the kill file list exactly the attached
clients. A second property feeds arbitrary bytes to the real I/O layer and
checks that another client is still served.

CI runs a bounded number of examples; for a long run outside CI:
``LAMD_FUZZ_EXAMPLES=200000 /usr/bin/python3 -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
import socket

from hypothesis import HealthCheck, given, settings, strategies as st

from lamd import kernel as K
from lamd.constants import (
    KNMSG, KPROBE, KQATTACH, KQDETACH, KQDOOM, KQDUMP, KQRECV, KQSEND, KQSR,
    KQSTATE, KQSURRENDER, KSYNCSQL, KTRACE, KTRY, PRCMD, PRLAMHALT,
)
from lamd.iproc import IProc, KBoot
from lamd.kernel import Kernel
from lamd.wire import KREQ_SIZE, KMsg, KReq, NMsg

EXAMPLES = int(os.environ.get("LAMD_FUZZ_EXAMPLES", "2000"))
CONNS = ["c0", "c1", "c2", "c3", "c4"]
PIDS = {c: 2000 + i for i, c in enumerate(CONNS)}

events = st.sampled_from([1, 2, 3, 0x7FFF0001, 77, -1])
types = st.sampled_from([0, 1, 2, 3, 0xFFFF0001, -1])
flags = st.sampled_from([0, KTRY, KNMSG, KPROBE, KSYNCSQL, KTRACE, KTRY | KNMSG, KNMSG | KSYNCSQL])
lengths = st.sampled_from([0, 1, 64, 8192, 1 << 20, -1, 2**31 - 1])
kmsgs = st.builds(KMsg, events, types, lengths, flags, st.just(0))


def reqs(index: st.SearchStrategy[int]) -> st.SearchStrategy[KReq]:
    return st.builds(
        KReq,
        req=st.sampled_from([KQSEND, KQRECV, KQSTATE, KQDOOM, KQSR, KQATTACH,
                             KQSURRENDER, KQDETACH, KQDUMP, 9, -3]),
        index=index,
        pid=st.sampled_from(list(PIDS.values()) + [0, 1, 100000]),
        priority=st.sampled_from([PRCMD, PRLAMHALT, 1, 2000]),
        signal=st.integers(0, 1023),
        msg=kmsgs,
        msg2=kmsgs,
    )


async def echo(k: IProc) -> None:
    while True:
        got = await k.recv(77, 0, 8192, KNMSG)
        to = got.nmsg.data[0] if got.nmsg else 1
        await k.send(to, 0, got.body, KNMSG | KTRY, nmsg=NMsg(event=to))


steps = st.lists(st.tuples(st.sampled_from(CONNS),
                           st.one_of(st.just("attach"), st.just("drop"), st.just("body"),
                                     reqs(st.sampled_from([-1, 0, 1, 2, 3, 4, 5, 99])))),
                 max_size=60)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(steps)
def test_any_interleaving_keeps_the_kernel_consistent(script: list) -> None:
    k = Kernel(kernel_pid=1, max_procs=8)
    k.boot([KBoot("echo", 1085, echo)])
    connected: set[str] = set()
    collects: list[K.CollectBody] = []
    # the test's own record of who is attached, at what priority: from the
    # replies to attach requests and the connections closed, not the kernel's
    attached: dict[str, int] = {}
    for conn, step in script:
        if conn not in connected:
            k.connect(conn, PIDS[conn], 1000)
            connected.add(conn)
        attach_priority = None
        if step == "drop":
            acts = k.disconnect(conn)
            connected.discard(conn)
            attached.pop(conn, None)
            for c in [c for c in collects if c.src == conn]:
                collects.remove(c)
                k.body_failed(c.token)
        elif step == "attach":
            acts = k.request(conn, KReq(req=KQATTACH, index=-1, pid=PIDS[conn], priority=PRCMD))
            attach_priority = PRCMD
        elif step == "body":
            if collects:
                c = collects.pop(0)
                acts = k.body_arrived(c.token, NMsg(data=(3,)).pack() + bytes(c.length - 72)
                                      if c.length >= 72 else bytes(c.length))
            else:
                acts = []
        else:
            p = k.proc_of(conn)
            if p is not None and step.index == 99:
                step.index = p.index
            acts = k.request(conn, step)
            if step.req == KQATTACH:
                attach_priority = step.priority
        if attach_priority is not None and any(
                isinstance(a, K.Reply) and a.conn == conn and a.reply.reply == 0 for a in acts):
            attached[conn] = attach_priority
        for a in acts:
            if isinstance(a, K.CollectBody):
                collects.append(a)
            if isinstance(a, K.Close):
                k.disconnect(a.conn)
                connected.discard(a.conn)
                attached.pop(a.conn, None)
        k.check_invariants()
    # the process table holds exactly the clients attached, the kill file
    # exactly those of them not attached as lamhalt (PRLAMHALT)
    assert sorted(p.pid for p in k.clients()) == sorted(PIDS[c] for c in attached)
    assert sorted(pid for pid, _ in k.killfile_entries()) == sorted(
        PIDS[c] for c, priority in attached.items() if priority != PRLAMHALT)
    for conn in list(connected):
        k.disconnect(conn)
    k.check_invariants()
    assert k.clients() == [] and k.killfile_entries() == []


@settings(max_examples=max(20, EXAMPLES // 10), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=4 * KREQ_SIZE + 10))
def test_any_byte_stream_leaves_others_served(tmp_path_factory, data: bytes) -> None:
    from tests.test_kernelio import Daemon  # the in-thread daemon of the I/O tests

    d = Daemon(str(tmp_path_factory.mktemp("fz")))
    try:
        g = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        g.settimeout(5)
        g.connect(d.path)
        g.sendall(data)
        g.shutdown(socket.SHUT_WR)
        a, b = d.client(), d.client()
        b.sock.sendall(KReq(req=KQRECV, index=b.index, msg=KMsg(5, 0, 3, 0)).pack())
        a.send(5, 0, b"abc")
        assert b.reply().length == 3 and b._read(3) == b"abc"
        g.close()
    finally:
        d.stop()
    d.kernel.check_invariants()
