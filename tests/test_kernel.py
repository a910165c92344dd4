"""The sans-IO kernel, request by request (LAM's kinner.c / kouter.c rules).

No sockets: connections are plain strings, requests are KReq values, and the
assertions are on the actions the kernel returns.
"""

from __future__ import annotations

import errno
import signal

import pytest

from lamd import kernel as K
from lamd.kernel.constants import (
    EBADREQUEST, EMSGLEN, ENOKDESCRIPTORS, ENOTATTACHED, ENOTPROCESS, ESERVICE,
    KIPROC, KNMSG, KPROBE, KQATTACH, KQDETACH, KQDOOM, KQDUMP, KQRECV, KQSEND,
    KQSR, KQSTATE, KQSURRENDER, KSRECV, KSREADY, KSSEND, KSYNCSQL, KTRACE, KTRY,
    LAM_SIGUSR, PRCMD, PRLAMHALT,
)
from lamd.kernel.kiproc import IProc, KBoot
from lamd.kernel import Kernel, ksync_event_sql, ksync_type, ksync_type_sql
from lamd.kernel.wire import NMSG_SIZE, KMsg, KReq, NMsg

# --- the matching macros of kreq.h -------------------------------------------


@pytest.mark.parametrize("a,b,ok", [
    (0, 0, True), (0, 5, True), (5, 0, True), (1, 1, True), (1, 2, False),
    (3, 2, True), (0x10, 0x30, True), (-1, 4, True), (4, 8, False),
])
def test_ksync_type(a: int, b: int, ok: bool) -> None:
    assert ksync_type(a, b) is ok


@pytest.mark.parametrize("a,b,ok", [
    (0x00010002, 0x00010002, True),
    (0x00010002, 0x00010003, False),
    (0xFFFF0002, 0x12340002, True),   # high half wild
    (0x0001FFFF, 0x00017777, True),   # low half wild
    (0xFFFFFFFF, 0x12345678, True),   # all wild
    (0x00020002, 0x00010002, False),
])
def test_ksync_type_sql(a: int, b: int, ok: bool) -> None:
    assert ksync_type_sql(a, b) is ok


@pytest.mark.parametrize("a,b,ok", [
    (5, 5, True), (5, 6, False),
    (0x7FFF0005, 0x00010005, True),   # KEVENTHI wild on a
    (0x00010005, 0x7FFF0005, True),   # ... or on b
    (0x00010005, 0x00020005, False),
    (0x00010005, 0x00010005, True),
])
def test_ksync_event_sql(a: int, b: int, ok: bool) -> None:
    assert ksync_event_sql(a, b) is ok


# --- helpers ------------------------------------------------------------------


class World:
    """A kernel with named fake connections, one process each."""

    def __init__(self, **kw: object) -> None:
        self.k = Kernel(kernel_pid=1, clock=lambda: 100.0, **kw)  # type: ignore[arg-type]
        self.pids: dict[str, int] = {}
        self.index: dict[str, int] = {}

    def attach(self, name: str, pid: int | None = None, priority: int = PRCMD) -> list:
        pid = pid if pid is not None else 1000 + len(self.pids)
        self.pids[name] = pid
        self.k.connect(name, pid, 4242)
        acts = self.k.request(name, KReq(req=KQATTACH, index=-1, pid=pid, priority=priority))
        rep = replies(acts).get(name)
        if rep is not None and rep.reply == 0:
            self.index[name] = rep.index
        return acts

    def req(self, name: str, code: int, **kw: object) -> list:
        kw.setdefault("index", self.index.get(name, -1))
        return self.k.request(name, KReq(req=code, **kw))  # type: ignore[arg-type]

    def send(self, name: str, event: int, type: int = 0, length: int = 0, flags: int = 0) -> list:
        return self.req(name, KQSEND, msg=KMsg(event, type, length, flags))

    def recv(self, name: str, event: int, type: int = 0, length: int = 1 << 20, flags: int = 0) -> list:
        return self.req(name, KQRECV, msg=KMsg(event, type, length, flags))


def replies(acts: list) -> dict:
    return {a.conn: a.reply for a in acts if isinstance(a, K.Reply)}


def transfers(acts: list) -> list:
    return [a for a in acts if isinstance(a, K.Transfer)]


# --- attach, identity, bad input ---------------------------------------------


def test_attach_gives_index_and_lists_pid_in_killfile() -> None:
    w = World()
    acts = w.attach("a", pid=500)
    assert replies(acts)["a"].reply == 0
    assert replies(acts)["a"].index == 0
    # kkillwrite: listed before the reply is written
    assert [type(a) for a in acts] == [K.KillAppend, K.Reply]
    assert (acts[0].conn, acts[0].pid) == ("a", 500)
    w.attach("b", pid=501)
    assert w.index["b"] == 1
    assert w.k.killfile_entries() == [(500, "a"), (501, "b")]


def test_lamhalt_priority_is_not_in_killfile() -> None:
    w = World()
    w.attach("a", pid=500, priority=PRLAMHALT)
    w.attach("b", pid=501)
    assert [pid for pid, _ in w.k.killfile_entries()] == [501]


def test_attach_claiming_another_pid_is_refused() -> None:
    w = World()
    w.k.connect("a", 500, 1)
    acts = w.k.request("a", KReq(req=KQATTACH, index=-1, pid=1, priority=PRCMD))
    assert replies(acts)["a"].reply == errno.EPERM
    assert w.k.killfile_entries() == []


def test_second_attach_on_one_connection_is_refused() -> None:
    w = World()
    w.attach("a", pid=500)
    acts = w.req("a", KQATTACH, index=-1, pid=500, priority=PRCMD)
    assert replies(acts)["a"].reply == EBADREQUEST
    assert len(w.k.clients()) == 1


def test_reattach_with_own_index_changes_priority() -> None:
    w = World()
    w.attach("a", pid=500)
    acts = w.req("a", KQATTACH, pid=500, priority=PRLAMHALT)
    assert replies(acts)["a"].index == w.index["a"]
    assert w.k.killfile_entries() == []


def test_request_naming_another_index_is_refused() -> None:
    w = World()
    w.attach("a")
    w.attach("b")
    acts = w.req("a", KQSEND, index=w.index["b"], msg=KMsg(1, 0, 0, 0))
    assert replies(acts)["a"].reply == EBADREQUEST
    assert w.k.proc_of("b").state == KSREADY


def test_request_before_attach_is_refused() -> None:
    w = World()
    w.k.connect("x", 77, 1)
    acts = w.k.request("x", KReq(req=KQSEND, index=0, msg=KMsg(1, 0, 0, 0)))
    assert replies(acts)["x"].reply == ENOTATTACHED


@pytest.mark.parametrize("code", [9, 42, -1, 0x7FFFFFFF])
def test_unknown_request_code(code: int) -> None:
    w = World()
    w.attach("a")
    assert replies(w.req("a", code))["a"].reply == EBADREQUEST


@pytest.mark.parametrize("length", [-1, -(2**31)])
def test_negative_length_is_refused(length: int) -> None:
    w = World()
    w.attach("a")
    assert replies(w.send("a", 1, 0, length))["a"].reply == EMSGLEN


def test_length_over_limit_is_refused() -> None:
    w = World(max_msg_len=1000)
    w.attach("a")
    assert replies(w.recv("a", 1, 0, 1001))["a"].reply == EMSGLEN
    assert replies(w.send("a", 1, 0, 1000, KTRY))["a"].reply == errno.EWOULDBLOCK


def test_process_limit() -> None:
    w = World(max_procs=2)
    w.attach("a")
    w.attach("b")
    acts = w.attach("c")
    assert replies(acts)["c"].reply == ENOKDESCRIPTORS
    assert any(isinstance(a, K.Close) and a.conn == "c" for a in acts)
    w.k.disconnect("a")
    assert replies(w.attach("d"))["d"].index == 0  # lowest free index reused


# --- rendezvous ----------------------------------------------------------------


def test_send_meets_blocked_receiver() -> None:
    w = World()
    w.attach("r")
    w.attach("s")
    assert w.recv("r", 7, 0, 100) == []
    assert w.k.proc_of("r").state == KSRECV
    acts = w.send("s", 7, 3, 40)
    r = replies(acts)
    assert r["s"].reply == 0 and r["s"].length == 40
    assert r["r"].length == 40 and r["r"].type == 3
    # sender's reply first, then the receiver's, then the body
    assert [type(a) for a in acts] == [K.Reply, K.Reply, K.Transfer]
    assert acts[0].conn == "s"
    assert transfers(acts) == [K.Transfer("s", "r", 40)]
    assert w.k.proc_of("r").state == KSREADY


def test_recv_meets_blocked_sender_and_length_is_the_minimum() -> None:
    w = World()
    w.attach("r")
    w.attach("s")
    assert w.send("s", 7, 1, 5000) == []
    assert w.k.proc_of("s").state == KSSEND
    acts = w.recv("r", 7, 0, 100)
    assert replies(acts)["r"].length == 100
    assert replies(acts)["s"].length == 100
    assert transfers(acts) == [K.Transfer("s", "r", 100)]


def test_zero_length_message_has_no_body_move() -> None:
    w = World()
    w.attach("r")
    w.attach("s")
    w.recv("r", 7)
    acts = w.send("s", 7, 0, 0)
    assert transfers(acts) == []
    assert replies(acts)["r"].length == 0


def test_event_must_match_and_type_is_bitwise() -> None:
    w = World()
    w.attach("r")
    w.attach("s")
    w.recv("r", 7, 0b0100)
    assert w.send("s", 8, 0b0100, 1, KTRY) and replies(w.send("s", 8, 0b0100, 1, KTRY))["s"].reply == errno.EWOULDBLOCK
    assert replies(w.send("s", 7, 0b0011, 1, KTRY))["s"].reply == errno.EWOULDBLOCK
    assert replies(w.send("s", 7, 0b0110, 1))["r"].type == 0b0110


def test_blocked_list_order_is_priority_then_arrival() -> None:
    w = World()
    w.attach("low", priority=10)
    w.attach("high1", priority=20)
    w.attach("high2", priority=20)
    w.attach("s")
    for n in ("low", "high1", "high2"):
        w.recv(n, 9)
    order = []
    for _ in range(3):
        acts = w.send("s", 9, 0, 0)
        order += [c for c in replies(acts) if c != "s"]
    assert order == ["high1", "high2", "low"]


def test_sql_receiver_matches_with_wildcards() -> None:
    w = World()
    w.attach("r")
    w.attach("s")
    w.recv("r", 0x7FFF0005, 0xFFFF0001, 10, KSYNCSQL)
    assert replies(w.send("s", 0x00030005, 0x12340002, 1, KTRY))["s"].reply == errno.EWOULDBLOCK
    acts = w.send("s", 0x00030005, 0x12340001, 1)
    assert replies(acts)["r"].reply == 0


def test_sql_and_exact_receivers_keep_lam_order() -> None:
    w = World()
    w.attach("sql")
    w.attach("exact")
    w.attach("s")
    w.recv("sql", 0x7FFF0005, 0, 10, KSYNCSQL)
    w.recv("exact", 0x00010005)
    acts = w.send("s", 0x00010005, 0, 1)
    assert "sql" in replies(acts)  # it blocked first, at the same priority


def test_ktry_never_blocks() -> None:
    w = World()
    w.attach("a")
    assert replies(w.recv("a", 1, 0, 1, KTRY))["a"].reply == errno.EWOULDBLOCK
    assert w.k.proc_of("a").state == KSREADY
    assert w.k.blocked_list() == []


def test_sr_meets_receiver_then_blocks_on_its_receive_half() -> None:
    w = World()
    w.attach("client")
    w.attach("server")
    w.recv("server", 100, 0, 64)
    acts = w.req("client", KQSR, msg=KMsg(100, 0, 8, 0), msg2=KMsg(200, 0, 64, 0))
    assert transfers(acts) == [K.Transfer("client", "server", 8)]
    p = w.k.proc_of("client")
    assert p.state == KSRECV and p.msg.event == 200
    acts = w.send("server", 200, 5, 16)
    assert replies(acts)["client"].length == 16 and replies(acts)["client"].type == 5
    assert transfers(acts) == [K.Transfer("server", "client", 16)]


def test_blocked_sr_turns_into_a_receiver_in_place() -> None:
    w = World()
    w.attach("client")
    w.attach("server")
    assert w.req("client", KQSR, msg=KMsg(100, 0, 8, 0), msg2=KMsg(200, 0, 64, 0)) == []
    assert w.k.proc_of("client").state == KSSEND
    acts = w.recv("server", 100, 0, 64)
    assert transfers(acts) == [K.Transfer("client", "server", 8)]
    p = w.k.proc_of("client")
    assert p.state == KSRECV and p.msg.event == 200 and p.msg.length == 64


def test_probe_on_sr_second_half_does_not_consume() -> None:
    w = World()
    w.attach("client")
    w.attach("server")
    w.attach("other")
    w.recv("server", 100)
    w.req("client", KQSR, msg=KMsg(100, 0, 0, 0), msg2=KMsg(300, 0, 50, KPROBE))
    acts = w.send("other", 300, 9, 77)
    r = replies(acts)
    assert r["client"].event == 300 and r["client"].type == 9 and r["client"].length == 50
    assert "other" not in r  # the sender still blocks
    assert w.k.proc_of("other").state == KSSEND
    assert transfers(acts) == []
    acts = w.recv("client", 300, 0, 100)
    assert transfers(acts) == [K.Transfer("other", "client", 77)]


def test_probe_meeting_blocked_sender_answers_without_consuming() -> None:
    """Differs from C on purpose: the C kernel would start a transfer that the
    probing client never reads, corrupting its stream."""
    w = World()
    w.attach("s")
    w.attach("r")
    w.send("s", 5, 2, 30)
    acts = w.recv("r", 5, 0, 100, KPROBE)
    assert replies(acts)["r"].length == 30 and replies(acts)["r"].type == 2
    assert transfers(acts) == []
    assert w.k.proc_of("s").state == KSSEND


def test_knmsg_headers_move_with_the_body() -> None:
    w = World()
    w.attach("r")
    w.attach("s")
    w.recv("r", 1, 0, 100, KNMSG)
    assert transfers(w.send("s", 1, 0, 10, KNMSG)) == [K.Transfer("s", "r", NMSG_SIZE + 10)]
    # mismatched flags: the header is dropped or zero-filled, never desyncs a stream
    w.recv("r", 1, 0, 100)
    assert transfers(w.send("s", 1, 0, 10, KNMSG)) == [K.Transfer("s", "r", 10, skip=NMSG_SIZE)]
    w.recv("r", 1, 0, 100, KNMSG)
    assert transfers(w.send("s", 1, 0, 10)) == [K.Transfer("s", "r", 10, pad=NMSG_SIZE)]


def test_ktrace_reports_block_time() -> None:
    t = [100.0]
    k = Kernel(clock=lambda: t[0])
    for name, pid in (("r", 1), ("s", 2)):
        k.connect(name, pid, 0)
        k.request(name, KReq(req=KQATTACH, index=-1, pid=pid, priority=PRCMD))
    k.request("r", KReq(req=KQRECV, index=0, msg=KMsg(1, 0, 1, KTRACE)))
    t[0] = 102.5
    acts = k.request("s", KReq(req=KQSEND, index=1, msg=KMsg(1, 0, 1, 0)))
    assert replies(acts)["r"].blktime == pytest.approx(2.5)


# --- state, doom, surrender -----------------------------------------------------


def test_state_of_blocked_and_missing_process() -> None:
    w = World()
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    w.recv("a", 44, 3, 99)
    r = replies(w.req("b", KQSTATE, pid=500))["b"]
    assert (r.reply, r.state, r.event, r.type, r.length, r.priority) == (0, KSRECV, 44, 3, 99, PRCMD)
    assert replies(w.req("b", KQSTATE, pid=12345))["b"].reply == ENOTPROCESS


def test_doom_blocked_process_wakes_it_with_eintr() -> None:
    w = World()
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    w.recv("a", 44)
    acts = w.req("b", KQDOOM, pid=500, signal=0b1000)
    r = replies(acts)
    assert r["a"].reply == errno.EINTR and r["a"].signal == 0b1000
    assert r["b"].reply == 0 and r["b"].signal == 0
    assert w.k.proc_of("a").state == KSREADY


def test_doom_ready_process_preempts_it() -> None:
    w = World()
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    acts = w.req("b", KQDOOM, pid=500, signal=0b10)
    assert [a for a in acts if isinstance(a, K.Signal)] == [K.Signal("a", 500, LAM_SIGUSR)]
    assert replies(acts)["b"].reply == 0
    # a second doom before the surrender does not signal again
    acts = w.req("b", KQDOOM, pid=500, signal=0b100)
    assert not [a for a in acts if isinstance(a, K.Signal)]
    r = replies(w.req("a", KQSURRENDER))["a"]
    assert r.signal == 0b110
    assert w.k.proc_of("a").signal == 0


def test_pending_signal_interrupts_the_next_send() -> None:
    w = World()
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    w.req("b", KQDOOM, pid=500, signal=0b1)
    r = replies(w.recv("a", 3))["a"]
    assert r.reply == errno.EINTR and r.signal == 0b1
    assert w.k.proc_of("a").state == KSREADY


def test_doom_self_and_missing() -> None:
    w = World()
    w.attach("a", pid=500)
    assert replies(w.req("a", KQDOOM, pid=500, signal=4))["a"].signal == 4
    assert replies(w.req("a", KQDOOM, pid=999, signal=4))["a"].reply == ENOTPROCESS


# --- detach, disconnect, dump ----------------------------------------------------


def test_detach_frees_the_process_and_closes() -> None:
    w = World()
    w.attach("a", pid=500)
    acts = w.req("a", KQDETACH, pid=500)
    assert acts == [K.KillRemove(500), K.Close("a", "detached")]
    assert w.k.killfile_entries() == []


def test_detach_of_another_pid_is_refused() -> None:
    w = World()
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    assert w.req("a", KQDETACH, pid=501) == []
    assert len(w.k.clients()) == 2


def test_disconnect_removes_a_blocked_process() -> None:
    w = World()
    w.attach("a", pid=500)
    w.attach("s", pid=501)
    w.recv("a", 9)
    w.k.disconnect("a")
    assert w.k.killfile_entries() == [(501, "s")]
    assert replies(w.send("s", 9, 0, 1, KTRY))["s"].reply == errno.EWOULDBLOCK


def test_dump_replies_and_closes_an_unattached_connection() -> None:
    w = World()
    w.attach("a", pid=500)
    w.recv("a", 9)
    w.k.connect("d", 600, 0)
    acts = w.k.request("d", KReq(req=KQDUMP))
    assert replies(acts)["d"].reply == 0
    assert K.Close("d", "dump") in acts
    lines = w.k.dump_lines()
    assert lines[0].startswith("PID")
    assert lines[1].startswith("500") and "BR (9 0)" in lines[1]


def test_many_blocked_receivers_each_found_by_event() -> None:
    w = World()
    w.attach("s")
    for i in range(300):  # more than the C kernel's 288-entry table
        w.attach(f"r{i}")
        w.recv(f"r{i}", 1000 + i)
    for i in reversed(range(300)):
        acts = w.send("s", 1000 + i, 0, 1)
        assert transfers(acts) == [K.Transfer("s", f"r{i}", 1)]
    assert w.k.blocked_list() == []


# --- internal processes ----------------------------------------------------------


async def echo_iproc(k: IProc) -> None:
    """Receive on event 77 (KNMSG) and send the body back to the event in the
    header's nh_data[0], as a LAM service answers a client."""
    while True:
        got = await k.recv(77, 0, 8192, KNMSG)
        assert got.nmsg is not None
        await k.send(got.nmsg.data[0], 0, got.body.upper(), KNMSG,
                     nmsg=NMsg(event=got.nmsg.data[0], length=len(got.body)))


def test_client_to_internal_process_and_back() -> None:
    w = World()
    acts = w.k.boot([KBoot("echo", 1085, echo_iproc)])
    assert acts == []
    ip = w.k.kpfind(100000)
    assert ip is not None and ip.flags & KIPROC and ip.state == KSRECV
    w.attach("c", pid=500)
    acts = w.send("c", 77, 0, 5, KNMSG)
    assert replies(acts)["c"].length == 5
    col = [a for a in acts if isinstance(a, K.CollectBody)]
    assert len(col) == 1 and col[0].length == NMSG_SIZE + 5
    acts = w.k.body_arrived(col[0].token, NMsg(data=(555,)).pack() + b"hello")
    assert acts == []  # the echo now blocks sending to event 555
    assert w.k.kpfind(100000).state == KSSEND
    acts = w.recv("c", 555, 0, 100, KNMSG)
    assert replies(acts)["c"].length == 5
    body = [a for a in acts if isinstance(a, K.SendBody)]
    assert len(body) == 1
    assert NMsg.unpack(body[0].data).event == 555
    assert body[0].data[NMSG_SIZE:] == b"HELLO"
    assert w.k.kpfind(100000).state == KSRECV  # back to waiting
    assert w.k.killfile_entries() == [(500, "c")]  # internal processes never listed


def test_internal_process_survives_a_sender_that_vanishes() -> None:
    w = World()
    w.k.boot([KBoot("echo", 1085, echo_iproc)])
    w.attach("c", pid=500)
    acts = w.send("c", 77, 0, 5, KNMSG)
    token = [a for a in acts if isinstance(a, K.CollectBody)][0].token
    w.k.disconnect("c")
    w.k.body_failed(token)
    assert w.k.kpfind(100000).state == KSRECV


def sink_iproc(types: list[int]):
    """An internal process receiving on event 77, with each type of *types*
    in turn (0: any), forever after with the last."""
    async def sink(k: IProc) -> None:
        i = 0
        while True:
            await k.recv(77, types[min(i, len(types) - 1)], 8192, KNMSG)
            i += 1
    return sink


def test_ktry_send_waits_while_an_internal_receiver_takes_a_body() -> None:
    """LAM's kernel reads a message's body within the request that sent it,
    so a KTRY send to bufferd never finds it between two messages (LAM's
    lamd RPI sends every packet so, and sleeps 50 ms to 1 s when refused:
    -ssi rpi lamd with two messages in flight ran at under 1 MB/s here).
    Ours reads bodies as they come: a KTRY send meeting an internal receiver
    that is taking a body waits for that receiver's next receive."""
    w = World()
    w.k.boot([KBoot("sink", 1085, sink_iproc([0]))])
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    acts = w.send("a", 77, 1, 5, KNMSG)
    token = [x for x in acts if isinstance(x, K.CollectBody)][0].token
    acts = w.send("b", 77, 1, 3, KNMSG | KTRY)
    assert "b" not in replies(acts) and w.k.check_invariants() is None  # waits
    acts = w.k.body_arrived(token, NMsg().pack() + b"hello")
    assert replies(acts)["b"].reply == 0 and replies(acts)["b"].length == 3
    token = [x for x in acts if isinstance(x, K.CollectBody)][0].token
    assert w.k.body_arrived(token, NMsg().pack() + b"abc") == []
    assert w.k.kpfind(100000).state == KSRECV
    # a KTRY send finding the receiver waiting, or nobody, is answered at once
    assert replies(w.send("b", 77, 1, 3, KNMSG | KTRY))["b"].reply == 0
    assert replies(w.send("a", 78, 1, 3, KNMSG | KTRY))["a"].reply == errno.EWOULDBLOCK
    w.k.check_invariants()


def test_ktry_send_refused_when_the_next_receive_does_not_meet_it() -> None:
    """The receiver's next receive takes only type 2 (as bufferd takes only
    control messages when full): the waiting KTRY send of type 1 is refused
    then, as LAM refuses it; a sender that vanished mid-body ends the wait
    the same way."""
    w = World()
    w.k.boot([KBoot("sink", 1085, sink_iproc([0, 2]))])
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    token = [x for x in w.send("a", 77, 1, 5, KNMSG) if isinstance(x, K.CollectBody)][0].token
    assert "b" not in replies(w.send("b", 77, 1, 3, KNMSG | KTRY))
    acts = w.k.body_arrived(token, NMsg().pack() + b"hello")
    assert replies(acts)["b"].reply == errno.EWOULDBLOCK
    assert w.k.kpfind(100000).state == KSRECV
    w.k.check_invariants()
    # the body's sender vanishes: the receiver receives again, the KTRY
    # send of the type it takes meets it
    w2 = World()
    w2.k.boot([KBoot("sink", 1085, sink_iproc([0]))])
    w2.attach("a", pid=500)
    w2.attach("b", pid=501)
    token = [x for x in w2.send("a", 77, 1, 5, KNMSG) if isinstance(x, K.CollectBody)][0].token
    assert "b" not in replies(w2.send("b", 77, 1, 3, KNMSG | KTRY))
    acts = w2.k.disconnect("a")
    assert replies(acts)["b"].reply == 0
    assert w2.k.body_failed(token) == []
    w2.k.check_invariants()


def test_a_waiting_ktry_send_met_by_a_client_is_not_refused_later() -> None:
    """A KTRY send waiting while the internal receiver takes a body can be
    met by a client's receive instead; if its sender then blocks in a plain
    send, that send waits as sends do: the receiver's next receive does not
    refuse it with EWOULDBLOCK (the fuzz test found the kernel did, at
    48a27fe, on any later disconnect)."""
    w = World()
    w.k.boot([KBoot("sink", 1085, sink_iproc([0]))])
    for name in ("a", "b", "c", "d"):
        w.attach(name, pid=500 + len(w.pids))
    token = [x for x in w.send("a", 77, 1, 5, KNMSG) if isinstance(x, K.CollectBody)][0].token
    assert "b" not in replies(w.send("b", 77, 1, 3, KTRY))  # waits
    assert replies(w.recv("c", 77, 1, 3))["b"].reply == 0  # c takes it
    assert "b" not in replies(w.send("b", 3, 0, 0))  # blocks, as a plain send does
    assert "b" not in replies(w.k.disconnect("d"))
    assert "b" not in replies(w.k.body_arrived(token, NMsg().pack() + b"hello"))
    assert w.k.proc_of("b").state == KSSEND
    assert replies(w.recv("c", 3))["b"].reply == 0  # and meets its receiver
    w.k.check_invariants()


def test_doom_internal_process_is_eservice() -> None:
    w = World()
    w.k.boot([KBoot("echo", 1085, echo_iproc)])
    w.attach("c", pid=500)
    assert replies(w.req("c", KQDOOM, pid=100000, signal=1))["c"].reply == ESERVICE


def test_internal_process_that_crashes_is_detached_not_fatal() -> None:
    async def bad(k: IProc) -> None:
        await k.sleep(0)
        raise RuntimeError("boom")

    w = World()
    acts = w.k.boot([KBoot("bad", 1085, bad)])
    assert isinstance(acts[0], K.Watch) and acts[0].kind == "timer"
    acts = w.k.event(acts[0].id)
    assert w.k.kpfind(100000) is None
    w.k.check_invariants()


def test_kkillall_signals_every_client_cont_then_hup() -> None:
    w = World()
    w.k.boot([KBoot("echo", 1085, echo_iproc)])
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    w.recv("b", 1)
    sigs = [(a.pid, a.signo) for a in w.k.kkillall()]
    assert sigs == [(500, signal.SIGCONT), (500, signal.SIGHUP),
                    (501, signal.SIGCONT), (501, signal.SIGHUP)]


def test_request_while_blocked_is_refused_and_the_old_one_stands() -> None:
    """Found by the property test: a hostile client sending a second request
    while still blocked must not corrupt the blocked index."""
    w = World()
    w.attach("a", pid=500)
    w.attach("b", pid=501)
    assert w.send("a", 1, 0, 0) == []
    assert replies(w.send("a", 1, 0, 0))["a"].reply == EBADREQUEST
    w.k.check_invariants()
    acts = w.recv("b", 1)
    assert replies(acts)["a"].reply == 0 and replies(acts)["b"].reply == 0
    w.k.check_invariants()


def test_internal_process_that_never_blocks_cannot_starve_clients() -> None:
    async def spinner(k: IProc) -> None:
        while True:
            await k.send(12345, 0, b"", KTRY)

    w = World()
    acts = w.k.boot([KBoot("spin", 1085, spinner)])
    assert [type(a) for a in acts] == [K.Resume]  # yields back to the I/O layer
    w.attach("a", pid=500)  # clients are still served
    assert len(w.k.clients()) == 1
    acts = w.k.wake()
    assert [type(a) for a in acts] == [K.Resume]


def test_debug_logs_every_request_with_structured_fields(caplog) -> None:
    import logging
    with caplog.at_level(logging.DEBUG, logger="lamd.kernel"):
        w = World()
        assert w.k.debug
        w.attach("a", pid=500)
        w.recv("a", 7, 3, 99)
    recs = [r for r in caplog.records if getattr(r, "LAM_REQUEST", None) == "RECV"]
    assert len(recs) == 1
    r = recs[0]
    assert (r.LAM_PID, r.LAM_EVENT, r.LAM_TYPE, r.LAM_LENGTH) == (500, 7, 3, 99)


def test_doom_by_index_interrupts_one_connection_of_the_same_process() -> None:
    """A process with several connections (the service host) interrupts one
    blocked connection by index; its others, and other pids, are untouched."""
    from lamd.kernel.kinner import DOOM_INDEX_MAGIC
    w = World()
    w.attach("a", pid=700)
    w.attach("b", pid=700)
    w.attach("ctl", pid=700)
    w.attach("other", pid=701)
    assert w.recv("a", 11) == [] and w.recv("b", 12) == []
    fyi = (DOOM_INDEX_MAGIC, w.index["a"]) + (0,) * 7
    acts = w.req("ctl", KQDOOM, pid=700, signal=1, fyi=fyi)
    r = replies(acts)
    assert r["ctl"].reply == 0
    assert r["a"].reply == errno.EINTR and r["a"].signal == 1
    assert "b" not in r
    assert [p.pid for p in w.k.blocked_list()] == [700]  # b still blocked
    w.k.check_invariants()
    # another pid's connection cannot be named this way
    fyi = (DOOM_INDEX_MAGIC, w.index["other"]) + (0,) * 7
    assert replies(w.req("ctl", KQDOOM, pid=700, signal=1, fyi=fyi))["ctl"].reply == ENOTPROCESS
    # without the magic, a doom of one's own pid only echoes the signal (LAM)
    acts = w.req("ctl", KQDOOM, pid=700, signal=4)
    assert replies(acts) == {"ctl": replies(acts)["ctl"]} and replies(acts)["ctl"].signal == 4
