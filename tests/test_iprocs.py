"""LAM's internal processes, driven through the sans-IO kernel (no sockets).

Each test writes the requests a stock liblam client writes (``share/nreq``,
``share/rreq`` and the tools' own code) and checks the kernel's replies and
the bytes it sends back, byte by byte where LAM's layout matters.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from dataclasses import replace

import pytest

from lamd.kernel.constants import (
    EBADNODE, EBADREQUEST, ESERVICE, EVDL0, EVECHOD, EVFILED, EVFLATD, EVHALTD,
    EVBUFFERD, EVKENYAD, EVLOADD, EVROUTER, EVTRACED, EVVERSIOND, KIPROC, KNMSG, KQSTATE,
    KSRECV, KTRY, MAXNMSGLEN, NOTEVENT, PRBUFFERD, PRDAEMON, PRDLO, PRECHOD,
    PRHALTD, PRLAMHALT, PRROUTER, PRVERSIOND,
)
from lamd.kernel.kiproc import KBoot
from lamd.iprocs import BOOT_TABLE, boot_table
from lamd.iprocs.nreq import (
    BFQSPACE, DINT4MSG, DLCTL, DLUSR, LOCAL, N2ND, NMORE, NOBUF, NREEL, NT_CAST,
    NT_ME, NT_ORIGIN, data_words,
)
from lamd.iprocs import stubs
from lamd.iprocs import testecho as testecho_mod
from lamd.iprocs.testecho import EVTESTECHO
from lamd.kernel import Halt
from lamd.kernel.wire import NMSG_SIZE, KReq, NMsg

from .lamclient import World

ADDR = "192.0.2.2"
I4 = struct.Struct("<i")


def world(**config) -> World:
    cfg = {"node_addr": ADDR, **config}
    return World(boot_table(dict(cfg)), cfg)


def stub_world(**config) -> World:
    """The boot table with the stubs in place of lamd.jobs's kenyad, filed,
    flatd, loadd and iod (the stubs still serve the services not written yet)."""
    cfg = {"node_addr": ADDR, **config}
    table = [replace(kb, main=getattr(stubs, kb.name)) if kb.name in
             ("kenyad", "filed", "flatd", "loadd", "iod") else kb
             for kb in boot_table(dict(cfg))]
    return World(table, cfg)


def rreq(pid: int, request: int, nodeid: int = 0, nodetype: int = 0,
         typemask: int = 0) -> NMsg:
    """The request getnodes/getntype/getrent build (share/rreq)."""
    return NMsg(dl_event=EVROUTER, node=LOCAL, event=EVROUTER, type=2,  # RSMART
                data=data_words(-pid, request, nodeid, 0, 0, pid if request == 3 else 0,
                                nodetype, typemask))


# --- boot ----------------------------------------------------------------------


def test_boot_table_is_lams_kboottbl():
    names = [b.name for b in BOOT_TABLE]
    assert names == ["router", "bufferd", "dli_inet", "dlo_inet", "echod", "bforward",
                     "flatd", "loadd", "kenyad", "filed", "traced", "iod", "died",
                     "haltd", "versiond"]
    pri = {b.name: b.priority for b in BOOT_TABLE}
    assert (pri["router"], pri["bufferd"], pri["dlo_inet"], pri["echod"],
            pri["haltd"], pri["versiond"]) == (PRROUTER, PRBUFFERD, PRDLO, PRECHOD,
                                               PRHALTD, PRVERSIOND)


def test_booted_processes_have_lams_pids_and_show_in_kstate_and_dump():
    w = world()
    k = w.kernel
    for row, kb in enumerate(BOOT_TABLE):
        p = k.kpfind(100000 + row)
        assert p is not None and p.flags & KIPROC and p.priority == kb.priority
    c = w.client("c", 321)
    c.request(KReq(req=KQSTATE, pid=100000))
    rep = c.reply()
    assert (rep.reply, rep.priority, rep.state, rep.event) == (0, PRROUTER, KSRECV, EVROUTER)
    dump = k.dump_lines()
    assert any(l.startswith("100013") and "internal" in l for l in dump)


# --- router --------------------------------------------------------------------


def test_getnodes_this_node_exact_bytes():
    w = world()
    c = w.client("c", 4242)
    rep, head, body = c.dsfr(rreq(4242, 3, nodetype=NT_ME, typemask=NT_ME), -4242, 4)
    assert (rep.length, rep.type) == (4, 0)
    assert body == I4.pack(0)
    want = NMsg(dl_event=-4242, node=LOCAL, event=-4242, type=0, length=4,
                flags=DINT4MSG | KTRY, data=data_words(0))
    assert head.pack() == want.pack()


@pytest.mark.parametrize("nodetype,typemask,ids", [
    (NT_ORIGIN, NT_ORIGIN, [0]),  # getorigin()
    (0, NT_CAST, [0]),  # getall / lamnodes
    (NT_CAST, 0, [0]),  # lamhalt's getnodes(nodes, n, NT_CAST, 0)
    (NT_CAST, NT_CAST, []),  # getcasts
])
def test_getnodes_by_type(nodetype, typemask, ids):
    w = world()
    c = w.client("c", 7)
    rep, head, body = c.dsfr(rreq(7, 3, nodetype=nodetype, typemask=typemask), -7, 64)
    assert head.data[0] == 0
    assert body == struct.pack(f"<{len(ids)}i", *ids)


def test_getntype_counts_nodes():
    w = world()
    c = w.client("c", 7)
    _, head, body = c.dsfr(rreq(7, 6, nodetype=0, typemask=NT_CAST), -7, 0)
    assert head.data == data_words(0, 0, 0, 0, 0, 0, 0, 1) and body == b""


def test_getrent_local_node_and_missing_node():
    w = world(ncpus=2)
    c = w.client("c", 7)
    _, head, _ = c.dsfr(rreq(7, 0, nodeid=0), -7, 0)
    # rr_reply, rr_nodetype, rr_ncpus, rr_event, rr_event2, rr_link2, rr_link, rr_ntype
    assert head.data == data_words(0, NT_ME | NT_ORIGIN, 2, NOTEVENT, NOTEVENT, 0, 0, 0)
    _, head, _ = c.dsfr(rreq(7, 0, nodeid=5), -7, 0)
    assert head.data[0] == EBADNODE
    _, head, _ = c.dsfr(rreq(7, 0, nodeid=-1), -7, 0)
    assert head.data[0] == EBADNODE


def test_router_bad_request_answers_ebadrequest():
    w = world()
    c = w.client("c", 7)
    _, head, _ = c.dsfr(rreq(7, 42), -7, 0)
    assert head.data[0] == EBADREQUEST


# --- versiond, echod, dlo --------------------------------------------------------


def test_rversion_reply_is_lam_7_1_4():
    w = world()
    c = w.client("c", 900)
    c.nsend(0, EVVERSIOND, 0, b"", data=(0, -900))  # vq_node, vq_event
    head, body = c.nrecv(-900, 0, MAXNMSGLEN)
    assert body == b"7.1.4\0"
    assert head.data == data_words(7, 1, 4, 0, 0)
    assert (head.event, head.node, head.length) == (-900, 0, 6)


@pytest.mark.parametrize("n", [0, 1, 64, MAXNMSGLEN])
def test_recho_echoes_to_local_and_node0(n):
    w = world()
    c = w.client("c", 901)
    msg = bytes((i * 7) & 0xFF for i in range(n))
    for node in (LOCAL, 0):
        c.nsend(node, EVECHOD, 0, msg, data=(node, -901))  # eq_node, eq_event
        head, body = c.nrecv(-901, 0, n)
        assert body == msg and head.length == n
        assert head.flags & NREEL and head.data[:2] == (node, -901)


def test_ldogetlinks_segment_exact_bytes():
    w = world(dli_port=0)
    c = w.client("c", 902)
    # ldogetlinks: nsend DOQGETLINKS to EVDL0, type DLCTL, NOBUF; nrecv the reply
    c.nsend(LOCAL, EVDL0, DLCTL, b"", data=(2, 0, -902, 0, 0), flags=NOBUF)
    head, body = c.nrecv(-902, 0, MAXNMSGLEN)
    assert head.data[:2] == (0, 1)  # dor_reply, dor_nlinks
    assert len(body) == MAXNMSGLEN
    link = struct.pack("<5i", 0, 0, 0, 0, 0) + struct.pack("<H", socket.AF_INET) \
        + struct.pack("!H", 0) + socket.inet_aton(ADDR) + bytes(8)
    assert body[:36] == link and body[36:] == bytes(MAXNMSGLEN - 36)


def test_dlo_link_table_requests():
    """DOQSETLINK (what dli sends for lamgrow's DIQSETLINK) and DOQREMLINK
    (lamshrink's DIQREMLINK) change what ldogetlinks reports: entries by
    node id, holes NOTLINKID, the holes at the end trimmed."""
    from lamd.datalink.linkreq import DOQGETLINKS, DOQREMLINK, DOQSETLINK, DoLink
    w = world(dli_port=0)
    c = w.client("c", 903)

    def links() -> list[int]:
        c.nsend(LOCAL, EVDL0, DLCTL, b"", data=(DOQGETLINKS, 0, -903, 0, 0), flags=NOBUF)
        head, body = c.nrecv(-903, 0, MAXNMSGLEN)
        return [DoLink.unpack(body, 36 * i).link for i in range(head.data[1])]

    c.nsend(LOCAL, EVDL0, DLCTL, DoLink(3, "192.0.2.9", 4000).pack(),
            data=(DOQSETLINK, 0, 0, 3, 0), flags=NOBUF)
    assert links() == [0, -1, -1, 3]
    c.nsend(LOCAL, EVDL0, DLCTL, DoLink(1, "192.0.2.8", 4001).pack(),
            data=(DOQSETLINK, 0, 0, 1, 0), flags=NOBUF)
    assert links() == [0, 1, -1, 3]
    c.nsend(LOCAL, EVDL0, DLCTL, b"", data=(DOQREMLINK, 0, 0, 1, 0), flags=NOBUF)
    assert links() == [0, -1, -1, 3]
    c.nsend(LOCAL, EVDL0, DLCTL, b"", data=(DOQREMLINK, 0, 0, 3, 0), flags=NOBUF)
    assert links() == [0]


# --- bufferd ---------------------------------------------------------------------


SIZES = [0, 64, 8192, 1 << 20]


@pytest.mark.parametrize("n", SIZES)
def test_nsend_then_nrecv_goes_through_the_buffer(n):
    w = world()
    a, b = w.client("a", 1001), w.client("b", 1002)
    msg = os.urandom(n)
    a.nsend(0, 55, 9, msg, data=(11, 22))
    head, body = b.nrecv(55, 0, n)
    assert body == msg
    assert head.type == 9 and not head.flags & NMORE
    if n <= MAXNMSGLEN:
        assert head.data[:2] == (11, 22) and head.length == n


@pytest.mark.parametrize("n", SIZES)
def test_nrecv_first_gets_packets_directly(n):
    w = world()
    a, b = w.client("a", 1001), w.client("b", 1002)
    msg = os.urandom(n)
    b.bfrecv_start(55, 0, min(n, MAXNMSGLEN))
    assert b.front().reply == 0 and b.blocked()  # waits on event 55
    a.nsend(0, 55, 9, msg)
    _, head, first = b.packet()
    out, more = bytearray(first), bool(head.flags & NMORE)
    if n > MAXNMSGLEN:
        assert head.data[0] == n and head.flags & NMORE and not head.flags & N2ND
    while more:
        b.bfrecv_start(55, 0, MAXNMSGLEN)
        _, head, part = b.packet()
        assert head.flags & N2ND
        out += part
        more = bool(head.flags & NMORE)
    assert bytes(out) == msg


def test_direct_delivery_sends_the_senders_header_and_body_byte_by_byte():
    w = world()
    a, b = w.client("a", 1001), w.client("b", 1002)
    b.bfrecv_start(55, 0, 64)
    b.front()
    a.nsend(0, 55, 3, b"abc", data=(1, 2, 3, 4, 5, 6, 7, 8))
    rep = b.reply()
    assert (rep.type, rep.length) == (3, 3)
    raw = b.read(NMSG_SIZE + 3)
    want = NMsg(dl_event=55, node=0, event=55, type=3, length=3, flags=KTRY,
                data=(1, 2, 3, 4, 5, 6, 7, 8)).pack() + b"abc"
    assert raw == want


def test_bufferd_relays_client_packets_without_a_coroutine_turn():
    """Every message a client sends bufferd is taken at once (IProc.take):
    its coroutine is not resumed, a packet whose receiver waits is never
    kept, and bufferd is back in its receive after each."""
    w = world()
    a, b = w.client("a", 1001), w.client("b", 1002)
    bufd = w.kernel.kpfind(100001)
    turns = []

    class Counting:
        def __init__(self, coro):
            self.coro = coro

        def send(self, value):
            turns.append(value)
            return self.coro.send(value)

        def close(self):
            self.coro.close()

    bufd.coro = Counting(bufd.coro)
    daemon = bufd.iproc.take.__self__
    msg = os.urandom(3 * MAXNMSGLEN + 5)
    for _ in range(2):
        b.bfrecv_start(55, 0, MAXNMSGLEN)  # waits first: packets go straight to it
        assert b.front().reply == 0 and b.blocked()
        a.nsend(0, 55, 9, b"direct")
        assert b.packet()[2] == b"direct" and daemon.buf.count() == 0
        a.nsend(0, 55, 9, msg)  # kept, then fetched packet by packet
        assert daemon.buf.count() == 4
        assert b.nrecv(55, 0, len(msg))[1] == msg
        assert daemon.buf.count() == 0 and daemon.buf.nspace == 0
    assert turns == []
    assert bufd.state == KSRECV and bufd.msg.event == EVBUFFERD
    w.kernel.check_invariants()


def _bfrecv_request(b, event: int, type_: int, length: int):
    """bfrecv's dsfr as its two parts: the kreq, then the header it writes
    once the send half is answered (what the kernel reads in between)."""
    from lamd.kernel.constants import KQSR
    from lamd.kernel.wire import KMsg
    from lamd.iprocs.nreq import BFQRECV
    head = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
                data=data_words(0, 0, BFQRECV, 0, event, type_, 0, 0))
    req = KReq(req=KQSR, index=b.index, msg=KMsg(EVBUFFERD, DLCTL, 0, KNMSG),
               msg2=KMsg(event, type_, length, KNMSG))
    return req, head


def test_nrecv_of_a_kept_packet_is_answered_before_its_request_is_read():
    """bufferd's peek: the moment an nrecv's dsfr meets bufferd (its BFQRECV
    header not read yet), the kept packet that request will ask for goes to
    its receive half; the header, read later, finds it done."""
    from lamd.kernel import CollectBody, Reply, SendBody
    w = world()
    a, b = w.client("a", 1001), w.client("b", 1002)
    a.nsend(0, 55, 9, b"first")
    a.nsend(0, 55, 9, b"second")
    daemon = w.kernel.kpfind(100001).iproc.take.__self__
    assert daemon.buf.count() == 2
    req, head = _bfrecv_request(b, 55, 0, 64)
    acts = w.kernel.request("b", req)
    assert [type(x) for x in acts] == [Reply, CollectBody, Reply, SendBody]
    assert acts[0].reply.length == 0  # the send half: only the header to come
    assert (acts[2].reply.type, acts[2].reply.length) == (9, 5)
    assert acts[3].data[NMSG_SIZE:] == b"first"
    assert daemon.buf.count() == 1  # "second" stays for the next nrecv
    w.run(w.kernel.body_arrived(acts[1].token, head.pack()))
    assert daemon.buf.count() == 1 and daemon.peek_misses == 0
    bufd = w.kernel.kpfind(100001)
    assert bufd.state == KSRECV and bufd.msg.event == EVBUFFERD
    assert b.nrecv(55, 0, 64)[1] == b"second"
    w.kernel.check_invariants()


def test_a_request_unlike_its_receive_half_is_served_as_sent_and_logged(caplog):
    """A dsfr whose header asks for another point than its receive half (no
    LAM library sends one): the packet peek gave its receive half stays
    given, the request is then served as written, one warning says so."""
    from lamd.kernel import CollectBody
    w = world()
    a, b = w.client("a", 1001), w.client("b", 1002)
    a.nsend(0, 55, 9, b"kept")
    a.nsend(0, 56, 9, b"other")
    daemon = w.kernel.kpfind(100001).iproc.take.__self__
    req, _ = _bfrecv_request(b, 55, 0, 64)
    _, head = _bfrecv_request(b, 56, 0, 64)
    acts = w.kernel.request("b", req)
    assert any(isinstance(x, CollectBody) for x in acts)
    w.conns["b"].outbox += head.pack()  # the header comes after the send half's reply
    w.run(acts)
    assert daemon.peek_misses == 1 and "did not match" in caplog.text
    assert daemon.buf.count() == 1  # "other" stays kept: the receiver was served
    assert b.reply().length == 0  # the send half's reply
    assert b.packet()[2] == b"kept"
    assert b.nrecv(56, 0, 64)[1] == b"other"
    w.kernel.check_invariants()


def test_type_matching_and_fifo_order():
    w = world()
    a, b = w.client("a", 1001), w.client("b", 1002)
    a.nsend(0, 55, 1, b"one")
    a.nsend(0, 55, 2, b"two")
    a.nsend(0, 55, 1, b"three")
    assert b.nrecv(55, 2, 16)[1] == b"two"
    assert b.nrecv(55, 0, 16)[1] == b"one"
    assert b.nrecv(55, 1, 16)[1] == b"three"


def test_probe_reports_buffered_message():
    w = world()
    a, b = w.client("a", 1001), w.client("b", 1002)
    words = b.nprobe(55)
    assert words[0] == 0 and words[7] == -1  # nothing: bfr_index -1
    a.nsend(0, 55, 4, b"x" * 20000, data=(9,))
    words = b.nprobe(55)
    # bfr_reply, bfr_type, _, bfr_length (total of a multi-packet), bfr_flags, data0, data1, index
    assert words[0] == 0 and words[1] == 4 and words[3] == 20000 and words[7] == 0
    assert words[4] & NMORE
    assert b.nrecv(55, 0, 20000)[1] == b"x" * 20000  # the probe did not consume it


def test_flooding_blocks_senders_within_the_space_limit(caplog):
    space = 3 * (MAXNMSGLEN + NMSG_SIZE)
    w = world(bufferd_space=space)
    a, b = w.client("a", 1001), w.client("b", 1002)
    pkt = b"y" * MAXNMSGLEN
    sent = 0
    while True:
        h = NMsg(dl_event=EVBUFFERD, node=0, event=55, type=0, length=len(pkt))
        a.ksend(EVBUFFERD, DLUSR, pkt, KNMSG, h)  # what nsend's dsend writes
        if a.blocked():
            break
        assert a.reply().reply == 0
        sent += 1
        assert sent < 10
    assert sent == 3  # no room for one more frame: the fourth sender waits
    assert "buffer space full" in caplog.text
    bufd = w.kernel.kpfind(100001)
    assert bufd.msg.type == DLCTL  # bufferd now takes only control messages
    assert b.nrecv(55, 0, MAXNMSGLEN)[1] == pkt
    assert a.reply().reply == 0  # draining lets the sender on
    for _ in range(3):
        assert b.nrecv(55, 0, MAXNMSGLEN)[1] == pkt
    assert w.kernel.kpfind(100001).msg.type == 0


def test_rbfparms_above_the_ceiling_is_refused():
    w = world(bufferd_space=1 << 20, bufferd_space_limit=2 << 20)
    c = w.client("c", 1003)
    req = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
               data=data_words(LOCAL, -1003, BFQSPACE, 1 << 30))
    c.ksend(req.dl_event, DLCTL, b"", KNMSG, req)
    assert c.reply().reply == 0
    head, _ = c.nrecv(-1003, 0, 0)
    assert head.data[0] == 12  # ENOMEM


# --- haltd ---------------------------------------------------------------------


def test_lamhalt_ping_ack_then_die_halts_the_daemon():
    w = world()
    c = w.client("h", 1100, priority=PRLAMHALT)
    ev = (-1100) & 0xBFFFFFFF
    ev = ev - (1 << 32) if ev & 0x80000000 else ev
    c.nsend(0, EVHALTD, 1, b"", data=(0, ev, 0, 1100))  # LAM_HALT_PING
    head, _ = c.nrecv(ev, 0, 0)
    assert head.data == data_words(0, 0, 0)  # hq_node, hq_event, hq_index
    assert not w.halts
    c.nsend(0, EVHALTD, 2, b"", data=(0, ev, 0, 1100))  # LAM_HALT_DIE
    assert w.halts == [Halt(0, "halt requested by haltd")]


# --- stubs ---------------------------------------------------------------------


@pytest.mark.parametrize("event,words,reply_at", [
    (EVLOADD, (1, 0, -1200, 0, 5), 0),  # struct lreq: lq_req, lq_src_node, lq_src_event
    (EVFLATD, (0, -1200, 1, 5), 0),  # struct flreq: flq_src_node, flq_src_event, flq_req
    (EVFILED, (0, 0, -1200), 0),  # struct freq: fq_req FQOPEN, fq_src_node, fq_src_event
])
def test_stub_services_answer_eservice_at_once(event, words, reply_at):
    w = stub_world()
    c = w.client("c", 1200)
    c.nsend(0, event, 0, b"", data=words)
    head, _ = c.nrecv(-1200, 0, 0)
    assert head.data[reply_at] == ESERVICE


def test_traced_is_no_stub_any_more():
    """traced is LAM's (lamd.iprocs.traced, tests/test_traced.py): a TRQGET
    with nothing stored is answered {0, 0}, not ESERVICE."""
    assert not hasattr(stubs, "traced")
    w = stub_world()
    c = w.client("c", 1200)
    c.nsend(0, EVTRACED, 0, b"", data=(0, -1200, 1, 1200, 0, -1))  # TRQGET, TRANYLIST
    head, body = c.nrecv(-1200, 0, 0)
    assert (head.data, body) == (data_words(0, 0), b"")


def test_kenyad_stub_replies_preply_in_trollius_order():
    w = stub_world()
    c = w.client("c", 1201)
    preq = struct.pack(">7i", 0, -1201, 2, 0x10, 0, 0, 0).ljust(4400, b"\0")  # PQDOOM
    c.nsend(0, EVKENYAD, 0, preq)
    head, body = c.nrecv(-1201, 0, 16)
    assert body == struct.pack(">4i", ESERVICE, 0, 0, 0)
    assert head.flags & NREEL


def pump(w: World, timeout: float = 2.0) -> None:
    """Carry out the pending readable watches: select, then report them."""
    for watch in w.watching("readable"):
        r, _, _ = select.select([watch.arg], [], [], timeout)
        assert r, "fd never became readable"
        w.fire(watch.id)


def test_filed_stub_takes_passed_stdio_then_fails(tmp_path):
    """lam_lfopenfd: the client blocks in accept() until filed connects."""
    session = str(tmp_path)
    w = stub_world(session=session)
    c = w.client("c", 1202)
    server = os.path.join(session, "lam-1202")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(server)
    srv.listen(1)
    c.nsend(LOCAL, EVFILED, 0, server.encode() + b"\0", data=(20, 0, -1202))  # FQOPENFD
    srv.settimeout(2)
    conn, _ = srv.accept()  # filed connected
    for fd in (0, 1, 2):  # sfh_send_fd: one byte and the fd, then wait for the ack
        socket.send_fds(conn, [b"\0"], [fd])
        pump(w)
        assert conn.recv(1) == b"\0"
    assert conn.recv(12) == b""  # no LAM fds come back: filed closed
    head, _ = c.nrecv(-1202, 0, 0)
    assert head.data[0] == ESERVICE
    conn.close()
    srv.close()


def test_filed_stub_never_connects_outside_the_session(tmp_path):
    w = stub_world(session=str(tmp_path / "s"))
    c = w.client("c", 1203)
    c.nsend(LOCAL, EVFILED, 0, b"/tmp/elsewhere/lam-1\0", data=(20, 0, -1203))
    head, _ = c.nrecv(-1203, 0, 0)
    assert head.data[0] == ESERVICE and not w.watches


# --- testecho -------------------------------------------------------------------


def test_testecho_round_trip_plain_and_knmsg():
    w = World([KBoot("testecho", PRDAEMON, testecho_mod.testecho)], {})
    c = w.client("c", 1300)
    c.ksend(EVTESTECHO, 77, b"hello")  # plain: answered on event 77
    assert c.reply().reply == 0
    c.krecv(77, 0, 100)
    rep = c.reply()
    assert rep.length == 5 and c.read(5) == b"hello"
    h = NMsg(event=EVTESTECHO, data=data_words(-1300, 6))
    c.ksend(EVTESTECHO, 0, b"abc", KNMSG, h)
    assert c.reply().reply == 0
    c.krecv(-1300, 0, 100, KNMSG)
    rep = c.reply()
    assert (rep.length, rep.type) == (3, 6)
    assert c.read(NMSG_SIZE + 3) == h.pack() + b"abc"

