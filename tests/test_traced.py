"""traced (:mod:`lamd.iprocs.traced`): the trace store sans I/O, then
request by request through the sans-IO kernel as liblam's ``lam_rtr*``
calls write them (``share/etc/rtrstore.c``, ``rtrget.c``, ``rtrsimplex.c``,
``rtrname.c``), replies checked word by word.
"""

from __future__ import annotations

import errno
import logging

from lamd.iprocs import boot_table
from lamd.iprocs.nreq import BFQSWEEP1, DLCTL, LOCAL, data_words
from lamd.iprocs.traced import (
    MAX_LISTS, SEND_TIMEOUT, SPACE_LIMIT, TRHASHSIZE, TraceStore, TrBList, TrHash,
)
from lamd.jobs.wire import (
    ENOTPUBLISHED, EPUBLISHED, TRANYLIST, TRANYPID, TRMAXSPACE, TRNAMELIST, TRQCLEANOBJS,
    TRQFORGET, TRQGET, TRQNAMEDEL, TRQNAMEGET, TRQNAMEPUB, TRQSTORE, TRQSWEEP, TRQUDIE,
    TRQWIPE, TrReq,
)
from lamd.kernel.constants import EVBUFFERD, EVTRACED, KNMSG, MAXNMSGLEN
from lamd.kernel.wire import NMsg

from .lamclient import World

# mpitrace.h's lists (the MPI library's runtime records, communicators, world)
TRRUNTIME, TRCOMM, TRWORLD = 0, -2, -5
GARBAGE = 0x5A5A5A5A  # what liblam leaves in the fields a request does not set


# --- the hash table: LAM's all_hash.c order ----------------------------------------


def test_hash_walks_slots_in_lams_order():
    h = TrHash()
    for lnum in (TRNAMELIST, 5, 105, -3, 3, 4):
        assert h.insert(TrBList(lnum))
    # abs(key) % 100, then the next free slot: -99 -> 99, 5 -> 5, 105 -> 6
    # (5 taken), -3 -> 3, 3 -> 4 (3 taken), 4 -> 7 (4, 5, 6 taken)
    assert [l.lnum for l in h] == [-3, 3, 5, 105, 4, TRNAMELIST]
    assert h.find(105).lnum == 105 and h.find(7) is None


def test_hash_full_then_expanded_reinserts_in_slot_order():
    h = TrHash(4)
    for lnum in (1, 2, 3, 0):
        assert h.insert(TrBList(lnum))
    assert not h.insert(TrBList(9))  # EFULL
    h.expand(4 + 4)
    assert h.insert(TrBList(9))
    assert [l.lnum for l in h] == [0, 1, 2, 3, 9]
    assert h.size == 8


# --- the store, sans I/O ------------------------------------------------------------


def test_store_select_sweep_udie_wipe():
    st = TraceStore()
    st.store(TRRUNTIME, 10, b"a1")
    st.store(TRCOMM, 10, b"c1")
    st.store(TRRUNTIME, 11, b"a2")
    st.store(TRCOMM, 11, b"c2")
    assert st.totalspace == 8
    # TRANYLIST: slot order (TRRUNTIME 0 -> slot 0, TRCOMM -2 -> slot 2)
    assert [b.data for _, b in st.select(TRANYLIST, TRANYPID)] == [b"a1", b"a2", b"c1", b"c2"]
    assert [b.data for _, b in st.select(TRCOMM, 11)] == [b"c2"]
    assert st.select(77, TRANYPID) == []
    assert st.udie(10) == 2 and st.totalspace == 4
    assert st.sweep(TRCOMM, TRANYPID) == 1
    assert [b.data for _, b in st.select(TRANYLIST, TRANYPID)] == [b"a2"]
    st.namepub(5, b"svc\0port\0")
    st.wipe()
    assert st.totalspace == 0 and st.select(TRANYLIST, TRANYPID) == []
    assert st.namepub(5, b"svc\0port\0") == 0 and st.nameget(b"svc\0") == (0, b"port\0")


def test_names_publish_lookup_unpublish():
    st = TraceStore()
    assert st.namepub(1 << 16, b"ocean\0n0:i11:123\0") == 0
    assert st.namepub(2 << 16, b"ocean\0other\0") == EPUBLISHED
    assert st.nameget(b"ocean\0") == (0, b"n0:i11:123\0")
    assert st.nameget(b"ocea\0") == (ENOTPUBLISHED, b"")
    assert st.namedel(b"ocean\0") == 0
    assert st.namedel(b"ocean\0") == ENOTPUBLISHED
    assert st.nameget(b"ocean\0") == (ENOTPUBLISHED, b"")
    assert st.totalspace == 0
    # a name without its NUL, data without its NUL: read to the end, never beyond
    assert st.namepub(0, b"bare") == 0 and st.nameget(b"bare") == (0, b"\0")
    assert st.namepub(0, b"x\0y") == 0 and st.nameget(b"x\0") == (0, b"y\0")


def test_names_are_in_the_any_list_and_swept_by_id():
    """Published names are list TRNAMELIST: a TRANYLIST unload or sweep
    takes them as LAM's does; lam_rtrnamesweep sweeps one id's names."""
    st = TraceStore()
    st.namepub(7, b"a\0x\0")
    st.namepub(8, b"b\0y\0")
    st.store(TRRUNTIME, 7, b"t")
    assert [b.data for _, b in st.select(TRANYLIST, TRANYPID)] == [b"t", b"a\0x\0", b"b\0y\0"]
    assert st.sweep(TRNAMELIST, 7) == 1
    assert st.nameget(b"a\0")[0] == ENOTPUBLISHED and st.nameget(b"b\0")[0] == 0


def test_lams_rule_drops_the_oldest_trace_of_the_list_once_space_is_used_up():
    st = TraceStore()
    chunk = b"x" * MAXNMSGLEN
    n = TRMAXSPACE // MAXNMSGLEN
    for i in range(n):
        assert st.store(TRRUNTIME, i, chunk)
    assert st.totalspace == TRMAXSPACE
    assert st.store(TRRUNTIME, 999, b"new")
    bufs = [b for _, b in st.select(TRRUNTIME, TRANYPID)]
    assert bufs[0].pid == 1 and bufs[-1].data == b"new" and len(bufs) == n
    # a negative list is not trimmed by LAM's rule: it grows (to the hard limit)
    assert st.store(TRCOMM, 1, b"c" * 100)
    assert st.totalspace == TRMAXSPACE - MAXNMSGLEN + 3 + 100


def test_hard_limit_drops_with_one_log_line(caplog):
    st = TraceStore(space_limit=4 * MAXNMSGLEN)
    chunk = b"y" * MAXNMSGLEN
    for i in range(4):
        assert st.store(TRCOMM, i, chunk)  # negative list: LAM's rule never trims it
    with caplog.at_level(logging.WARNING, "lamd.iprocs.traced"):
        assert not st.store(TRCOMM, 9, b"z")
        assert not st.store(TRCOMM, 10, b"z")
        assert st.namepub(3, b"n\0d\0") == errno.ENOMEM
    assert st.totalspace == 4 * MAXNMSGLEN and st.dropped == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "trace space limit hit" in lines[0], lines
    # a non-negative list makes room by dropping its own oldest traces
    st.sweep(TRANYLIST, TRANYPID)
    for i in range(4):
        assert st.store(TRRUNTIME, i, chunk)
    assert st.store(TRRUNTIME, 9, chunk + b"")
    assert [b.pid for _, b in st.select(TRRUNTIME, TRANYPID)] == [1, 2, 3, 9]
    assert st.totalspace <= st.space_limit


def test_store_refusals_never_raise(caplog):
    st = TraceStore(max_lists=3)  # TRNAMELIST + 2
    with caplog.at_level(logging.WARNING, "lamd.iprocs.traced"):
        assert not st.store(TRANYLIST, 1, b"x")  # LAM's traced panics here
        assert not st.store(TRRUNTIME, 1, b"")
        assert st.store(1, 1, b"x") and st.store(2, 1, b"x")
        assert not st.store(3, 1, b"x")
    assert "TRANYLIST" in caplog.text and "3 lists already" in caplog.text
    assert SPACE_LIMIT == 2 * TRMAXSPACE and MAX_LISTS >= TRHASHSIZE


# --- through the kernel, as liblam sends them ---------------------------------------


def world(**config) -> World:
    cfg = {"node_addr": "192.0.2.2", **config}
    return World(boot_table(dict(cfg)), cfg)


def trq(req: int, pid: int, lnum: int, length: int, src_event: int,
        src_node: int = LOCAL) -> tuple[int, ...]:
    return TrReq(src_node, src_event, req, pid, length, lnum).data()


def rtrstore(c, lnum: int, pid: int, data: bytes) -> None:
    """lam_rtrstore: packets of at most MAXNMSGLEN, src fields not set."""
    for off in range(0, len(data), MAXNMSGLEN):
        part = data[off:off + MAXNMSGLEN]
        c.nsend(LOCAL, EVTRACED, 0, part,
                data=trq(TRQSTORE, pid, lnum, len(part), GARBAGE, GARBAGE))


def rtrget(c, lnum: int, pid: int, req: int = TRQGET) -> tuple[tuple[int, ...], list[bytes]]:
    """rtr() of share/etc/rtrget.c: the total, then messages until it is read."""
    c.nsend(LOCAL, EVTRACED, 0, b"", data=trq(req, pid, lnum, 0, -c.pid))
    head, _ = c.nrecv(-c.pid, 0, 0)
    first = tuple(head.data)
    left, got = head.data[1], []
    while left > 0:
        h, body = c.nrecv(-c.pid, 0, MAXNMSGLEN)
        assert tuple(h.data) == first
        got.append(body)
        left -= len(body)
    return first, got


def nothing_for(c) -> bool:
    """No packet waits for the client on its reply event (bufferd probe)."""
    return c.nprobe(-c.pid)[7] == -1


def test_store_get_forget_exact_replies():
    w = world()
    rank, tool = w.client("rank", 2000), w.client("tool", 2001)
    big = bytes(range(256)) * 40  # 10240 bytes: two store packets
    rtrstore(rank, TRRUNTIME, 2000, big)
    rtrstore(rank, TRWORLD, 2000, b"W" * 16)
    assert nothing_for(rank)  # stores are not answered
    first, got = rtrget(tool, TRANYLIST, TRANYPID)
    assert first == data_words(0, len(big) + 16)
    assert got == [big[:MAXNMSGLEN], big[MAXNMSGLEN:], b"W" * 16]
    first, got = rtrget(tool, TRWORLD, 2000, TRQFORGET)
    assert (first, got) == (data_words(0, 16), [b"W" * 16])
    first, got = rtrget(tool, TRANYLIST, 4242)  # another pid: nothing
    assert (first, got) == (data_words(0, 0), [])
    first, got = rtrget(tool, TRANYLIST, TRANYPID, TRQFORGET)
    assert first == data_words(0, len(big))
    assert rtrget(tool, TRANYLIST, TRANYPID) == (data_words(0, 0), [])
    assert nothing_for(tool)


def test_sweep_udie_wipe_have_no_reply_and_garbage_src_fields():
    w = world()
    c = w.client("c", 2100)
    for lnum in (TRRUNTIME, TRCOMM):
        rtrstore(c, lnum, 2100, b"t")
        rtrstore(c, lnum, 2101, b"u")
    # lam_rtrsweep(node, TRCOMM): trq_pid TRANYPID, src fields garbage
    c.nsend(LOCAL, EVTRACED, 0, b"", data=trq(TRQSWEEP, TRANYPID, TRCOMM, GARBAGE, GARBAGE,
                                               GARBAGE))
    assert rtrget(c, TRANYLIST, TRANYPID)[0] == data_words(0, 2)
    # lam_rtrudie(node, 2101): trq_lnum garbage too
    c.nsend(LOCAL, EVTRACED, 0, b"", data=trq(TRQUDIE, 2101, GARBAGE, GARBAGE, GARBAGE,
                                               GARBAGE))
    assert rtrget(c, TRANYLIST, TRANYPID) == (data_words(0, 1), [b"t"])
    c.nsend(LOCAL, EVTRACED, 0, b"", data=trq(TRQWIPE, GARBAGE, GARBAGE, GARBAGE, GARBAGE,
                                               GARBAGE))
    assert rtrget(c, TRANYLIST, TRANYPID) == (data_words(0, 0), [])
    assert nothing_for(c)


def test_publish_lookup_unpublish_through_the_kernel():
    w = world()
    a, b = w.client("a", 2200), w.client("b", 2201)
    # lam_rtrnamepub(0, id, name, port): body "name\0port\0", trq_pid = id
    body = b"ocean\0n0:i11:2200\0"
    ident = (2200 << 16) | 0
    a.nsend(0, EVTRACED, 0, body, data=trq(TRQNAMEPUB, ident, GARBAGE, len(body), -2200, 0))
    head, _ = a.nrecv(-2200, 0, 0)
    assert tuple(head.data) == data_words(0, 0)
    a.nsend(0, EVTRACED, 0, body, data=trq(TRQNAMEPUB, ident, GARBAGE, len(body), -2200, 0))
    assert tuple(a.nrecv(-2200, 0, 0)[0].data) == data_words(EPUBLISHED, 0)
    # lam_rtrnameget: trq_pid/length/lnum garbage, body the name
    b.nsend(0, EVTRACED, 0, b"ocean\0", data=trq(TRQNAMEGET, GARBAGE, GARBAGE, GARBAGE,
                                                   -2201, 0))
    head, data = b.nrecv(-2201, 0, MAXNMSGLEN)
    assert (tuple(head.data), data) == (data_words(0, 12), b"n0:i11:2200\0")
    b.nsend(0, EVTRACED, 0, b"ocean\0", data=trq(TRQNAMEDEL, GARBAGE, GARBAGE, GARBAGE,
                                                   -2201, 0))
    assert tuple(b.nrecv(-2201, 0, 0)[0].data) == data_words(0, 0)
    for req in (TRQNAMEDEL, TRQNAMEGET):
        b.nsend(0, EVTRACED, 0, b"ocean\0", data=trq(req, GARBAGE, GARBAGE, GARBAGE, -2201, 0))
        head, data = b.nrecv(-2201, 0, MAXNMSGLEN)
        assert (head.data[0], data) == (ENOTPUBLISHED, b"")
    assert nothing_for(a) and nothing_for(b)


def test_bad_requests_are_refused_and_traced_goes_on(caplog):
    w = world()
    c = w.client("c", 2300)
    with caplog.at_level(logging.WARNING, "lamd.iprocs.traced"):
        for req in (10, -1, 0x7FFFFFFF):
            c.nsend(LOCAL, EVTRACED, 0, b"", data=trq(req, 1, 1, 0, -2300))
        rtrstore(c, TRANYLIST, 2300, b"x")  # LAM panics
        # a reply to a node this universe lacks goes nowhere, logged
        c.nsend(LOCAL, EVTRACED, 0, b"", data=trq(TRQGET, TRANYPID, TRANYLIST, 0, -2300, 5))
        # a request of several packets (nsend splits it) is drained and dropped
        c.nsend(LOCAL, EVTRACED, 0, b"n" * (MAXNMSGLEN + 10),
                data=trq(TRQNAMEGET, 0, 0, 0, -2300))
    assert "unknown request 10 (0..9)" in caplog.text
    assert caplog.text.count("unknown request") == 1  # one line a minute per kind
    assert "TRANYLIST" in caplog.text and "node 5" in caplog.text
    assert "2-packet request" in caplog.text
    assert nothing_for(c)
    rtrstore(c, TRRUNTIME, 2300, b"ok")
    assert rtrget(c, TRANYLIST, TRANYPID) == (data_words(0, 2), [b"ok"])


def test_cleanobjs_removes_registered_files_and_is_not_answered(tmp_path):
    session = tmp_path / "s"
    session.mkdir()
    victim = session / "lam-shm-file"
    victim.write_text("x")
    (session / "lam-registry").write_text(f"f {victim}\n")
    w = world(session=str(session))
    c = w.client("c", 2400)
    c.nsend(LOCAL, EVTRACED, 0, b"", data=trq(TRQCLEANOBJS, GARBAGE, GARBAGE, GARBAGE,
                                               GARBAGE, GARBAGE))
    assert not victim.exists() and not (session / "lam-registry").exists()
    assert nothing_for(c)


def test_a_get_nobody_reads_does_not_hold_traced_up():
    """bufferd full of traces nobody reads: traced's send times out (the
    timer fires), the unsent traces stay, and the next request is served."""
    w = world(bufferd_space=2 * MAXNMSGLEN + 64)
    c = w.client("c", 2500)
    for i in range(8):
        rtrstore(c, TRRUNTIME, 2500, bytes([i]) * MAXNMSGLEN)
    c.nsend(LOCAL, EVTRACED, 0, b"", data=trq(TRQFORGET, TRANYPID, TRANYLIST, 0, -2599))
    timers = [t for t in w.watching("timer") if t.arg == SEND_TIMEOUT]
    assert len(timers) == 1, "traced should be blocked sending, under its timer"
    w.fire(timers[0].id)
    assert not [t for t in w.watching("timer") if t.arg == SEND_TIMEOUT]
    # lamclean's rbfwipe-like sweep of the dead reader's event frees bufferd;
    # traced kept the unsent traces and serves the next request
    sweep = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
                 data=data_words(LOCAL, -2500, BFQSWEEP1, 0, -2599, 0, 0, 0))
    c.ksend(EVBUFFERD, DLCTL, b"", KNMSG, sweep)
    assert c.reply().reply == 0
    first, got = rtrget(c, TRANYLIST, TRANYPID)
    assert 0 < first[1] < 8 * MAXNMSGLEN and len(got) * MAXNMSGLEN == first[1]
