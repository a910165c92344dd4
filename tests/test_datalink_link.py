"""The datalink's link state machines, sans-IO (lamd/datalink/link.py):
LAM's window of 3 unacked frames per link in 8 shared slots, resends from
the tick, acks per frame once handed on, in-order delivery with duplicates
re-acked, frames kept (unacked) from a little ahead and no farther, and addresses checked. The
property test runs a sender and a receiver over a channel that loses,
duplicates and reorders datagrams."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from lamd.datalink.frame import (
    DLMAXSEQ, DLMINFRAMELEN, DOMAXPENDING, DOMAXRESEND, DOSLOTCNT, DLAck, DLFrame,
)
from lamd.datalink.link import DLI_WINDOW, DLIn, DLOut, seqdiff

A = ("10.77.0.1", 40000)   # node 0's dlo socket
B_DLI = ("10.77.0.2", 5555)  # node 1's dli port


def msg(i: int, n: int = 0) -> DLFrame:
    body = struct.pack(">i", i) + bytes(n)
    return DLFrame(0, 0, 1, 100 + i, 0, len(body), 0, bytes(32), body)


def seq_of(d: bytes) -> int:
    return DLFrame.decode(d).dlf_seqnum


def ack(seq: int, node: int = 1) -> bytes:
    return DLAck(seq, node).encode()


def pair() -> tuple[DLOut, DLIn]:
    return DLOut(0, {1: B_DLI}), DLIn(1, {0: A[0]})


def test_window_of_three_then_one_per_ack():
    out, _ = pair()
    sent = []
    for i in range(5):
        r = out.outgoing(1, msg(i))
        sent += [(a, seq_of(d)) for a, d in r.send]
    # three go at once, to node 1's dli address, numbered 0, 1, 2
    assert sent == [(B_DLI, 0), (B_DLI, 1), (B_DLI, 2)]
    assert out.nfull == 5 and out.links[1].npending == DOMAXPENDING
    # an ack of frame 1 lets frame 3 go; a duplicate ack changes nothing
    r = out.datagram(B_DLI, ack(1))
    assert [seq_of(d) for _, d in r.send] == [3]
    assert out.datagram(B_DLI, ack(1)).send == []
    r = out.datagram(B_DLI, ack(0))
    assert [seq_of(d) for _, d in r.send] == [4]
    for s in (2, 3, 4):
        assert out.datagram(B_DLI, ack(s)).send == []
    assert out.nfull == 0 and not out.busy()


def test_slots_bound_what_dlo_takes():
    out = DLOut(0, {1: B_DLI, 2: ("10.77.0.3", 5555)})
    for i in range(DOSLOTCNT - 1):
        assert out.room()
        out.outgoing(1 + i % 2, msg(i))
    assert out.room()
    out.outgoing(1, msg(99))
    assert not out.room()   # 8 slots full over both links: take nothing more


def test_resend_after_a_whole_tick_lowest_first():
    out, _ = pair()
    for i in range(4):
        out.outgoing(1, msg(i))
    assert out.tick().send == []          # first tick: marked only
    r = out.tick()                        # second: the three pending again
    assert [(a, seq_of(d)) for a, d in r.send] == [(B_DLI, 0), (B_DLI, 1), (B_DLI, 2)]
    out.datagram(B_DLI, ack(1))           # frees a slot: frame 3 goes
    r = out.tick()                        # 0 and 2 again; 3 only marked
    assert [seq_of(d) for _, d in r.send] == [0, 2]
    r = out.tick()
    assert [seq_of(d) for _, d in r.send] == [0, 2, 3]


def test_fault_tolerant_link_dies_after_domaxresend():
    out = DLOut(0, {1: B_DLI}, fault_tolerant=True)
    out.outgoing(1, msg(0))
    dead = []
    for _ in range(DOMAXRESEND + 3):
        dead += out.tick().dead
    assert dead == [1] and 1 not in out.links and not out.busy()
    # without -x it resends forever
    out = DLOut(0, {1: B_DLI})
    out.outgoing(1, msg(0))
    n = sum(len(out.tick().send) for _ in range(DOMAXRESEND + 10))
    assert n == DOMAXRESEND + 9 and out.busy()


def test_acks_only_from_the_links_address():
    out, _ = pair()
    out.outgoing(1, msg(0))
    r = out.datagram(("10.77.0.9", 5555), ack(0))
    assert r.drops and out.links[1].npending == 1
    r = out.datagram(B_DLI, b"\0" * 9)
    assert r.drops and "9-byte" in r.drops[0].why
    r = out.datagram(B_DLI, ack(0, node=7))
    assert r.drops and "unknown node 7" in r.drops[0].why
    assert out.datagram(B_DLI, ack(0)).drops == [] and not out.busy()


def test_in_order_delivery_acked_once_handed_on_duplicates_reacked():
    _, din = pair()
    f = [DLFrame.decode(d) for d in (msg(i).encode() for i in range(4))]
    frames = [DLFrame(0, s, *(x for x in (fr.dlh_node, fr.dlh_event, fr.dlh_type,
                                           fr.dlh_length, fr.dlh_flags, fr.dlh_data)),
                      dlf_msg=fr.dlf_msg) for s, fr in enumerate(f)]
    r = din.datagram(A, frames[0].encode())
    assert [x.dlf_seqnum for x in r.deliver] == [0] and r.src == A
    # not acked before it is handed on (a crash then: its sender resends it)
    assert r.acks == []
    assert din.datagram(A, frames[0].encode()).acks == []   # its resend meanwhile
    assert din.handed_on(r.deliver[0]) == ack(0)
    # a duplicate of a frame handed on: acked again, not delivered
    r = din.datagram(A, frames[0].encode())
    assert r.deliver == [] and r.acks == [(A, ack(0))]
    # 2 before 1: kept, unacked (as LAM leaves frames ahead); both handed on
    # in order when 1 comes, each acked then
    r = din.datagram(A, frames[2].encode())
    assert r.deliver == [] and r.acks == [] and din.held() == 1
    r = din.datagram(A, frames[1].encode())
    assert [x.dlf_seqnum for x in r.deliver] == [1, 2] and din.held() == 0
    assert [din.handed_on(x) for x in r.deliver] == [ack(1), ack(2)]
    r = din.datagram(A, frames[2].encode())
    assert r.deliver == [] and r.acks == [(A, ack(2))]


def test_dli_keeps_no_frame_two_claim_ahead():
    """A forged frame ahead with the number of a real one: when the real one
    comes, both go, unacked; the real one, resent once it is the next,
    is the one delivered."""
    _, din = pair()
    real = [DLFrame(0, s, 1, 5, 0, 4, 0, bytes(32), b"real") for s in range(3)]
    forged = DLFrame(0, 2, 1, 5, 0, 4, 0, bytes(32), b"evil")
    r = din.datagram(A, forged.encode())             # ahead: kept, unacked
    assert r.acks == [] and din.held() == 1
    r = din.datagram(A, real[2].encode())
    assert r.acks == [] and "another frame" in r.drops[0].why and din.held() == 0
    r = din.datagram(A, real[1].encode())            # kept again
    assert r.acks == [] and r.deliver == [] and din.held() == 1
    r = din.datagram(A, real[0].encode())
    assert [f.dlf_msg for f in r.deliver] == [b"real", b"real"]
    for f in r.deliver:
        din.handed_on(f)
    r = din.datagram(A, real[2].encode())            # the resend: now the next
    assert [f.dlf_msg for f in r.deliver] == [b"real"]


def test_dli_bounds_what_a_sender_makes_it_hold():
    _, din = pair()
    for s in range(1, 1000):
        fr = DLFrame(0, s, 1, 5, 0, 8192, 0, bytes(32), bytes(8192))
        r = din.datagram(A, fr.encode())
        assert r.deliver == [] and r.acks == []   # kept or (farther) dropped: unacked
        assert din.held() == min(s, DLI_WINDOW - 1)
    # wrapped sequence numbers far behind are duplicates (acked), not held
    fr = DLFrame(0, DLMAXSEQ - 1, 1, 5, 0, 0, 0, bytes(32), b"")
    r = din.datagram(A, fr.encode())
    assert r.acks and r.deliver == [] and din.held() == DLI_WINDOW - 1


def test_dli_drops_foreign_unknown_and_malformed():
    _, din = pair()
    good = DLFrame(0, 0, 1, 5, 0, 3, 0, bytes(32), b"abc").encode()
    for src, data, why in [
        (("10.77.0.9", 1), good, "another address"),
        (A, good[:DLMINFRAMELEN - 1], "malformed"),
        (A, good + b"x", "malformed"),
        (A, good[:20] + struct.pack(">i", 1 << 20) + good[24:], "malformed"),
        (A, struct.pack(">i", 5) + good[4:], "unknown node 5"),
        (A, good[:4] + struct.pack(">i", -3) + good[8:], "out of range"),
    ]:
        r = din.datagram(src, data)
        assert r.deliver == [] and r.acks == [] and why in r.drops[0].why, (why, r)
    assert [x.dlf_msg for x in din.datagram(A, good).deliver] == [b"abc"]


def test_seqdiff_wraps():
    assert seqdiff(0, DLMAXSEQ - 1) == 1
    assert seqdiff(DLMAXSEQ - 1, 0) == -1
    assert seqdiff(5, 5) == 0


# --------------------------------------------------------------------------
# a sender and a receiver over a bad channel


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), script=st.lists(st.integers(0, 9), max_size=400),
       start=st.sampled_from([0, DLMAXSEQ - 5]))
def test_lossy_reordering_channel_delivers_each_once_in_order(n, script, start):
    """Datagrams in flight are taken in an order the script picks; some are
    lost or duplicated; ticks come between. Whatever happens, the receiver
    hands on a prefix of the messages, in order, each once, holds at most
    DLI_WINDOW - 1 frames, and once the channel behaves everything arrives."""
    out, din = pair()
    out.links[1].seqgive = start
    din.links[0].seqrecv = start
    fwd: list[bytes] = []     # frames to dli
    back: list[bytes] = []    # acks to dlo
    got: list[int] = []
    queued = 0

    def feed_out():
        nonlocal queued
        while queued < n and out.room():
            fwd.extend(d for _, d in out.outgoing(1, msg(queued)).send)
            queued += 1

    def deliver_frame(d: bytes):
        r = din.datagram(A, d)
        got.extend(struct.unpack(">i", f.dlf_msg[:4])[0] for f in r.deliver)
        back.extend(a for _, a in r.acks)
        back.extend(din.handed_on(f) for f in r.deliver)

    feed_out()
    for op in script:
        if op <= 2 and fwd:                       # deliver one frame, picked
            deliver_frame(fwd.pop(op % len(fwd)))
        elif op == 3 and back:                    # deliver one ack, picked
            for _, d in out.datagram(B_DLI, back.pop(len(back) // 2)).send:
                fwd.append(d)
        elif op == 4 and fwd:                     # lose a frame
            fwd.pop(0)
        elif op == 5 and back:                    # lose an ack
            back.pop()
        elif op == 6 and fwd:                     # duplicate a frame
            fwd.append(fwd[-1])
        elif op == 7:
            fwd.extend(d for _, d in out.tick().send)
        elif op == 8 and back:
            for _, d in out.datagram(B_DLI, back.pop(0)).send:
                fwd.append(d)
        feed_out()
        assert got == list(range(len(got)))
        assert din.held() < DLI_WINDOW
        assert out.nfull <= DOSLOTCNT and out.links[1].npending <= DOMAXPENDING
    # then a good channel: everything arrives, once, in order
    for _ in range(10 * n + 20):
        while fwd:
            deliver_frame(fwd.pop(0))
        while back:
            fwd.extend(d for _, d in out.datagram(B_DLI, back.pop(0)).send)
        feed_out()
        if not fwd and not back:
            fwd.extend(d for _, d in out.tick().send)
        if len(got) == n and not out.busy():
            break
    assert got == list(range(n))
    assert not out.busy() and din.held() == 0


def test_frame_flags_are_net_h_as_nreq_has_them():
    from lamd.datalink import frame
    from lamd.iprocs import nreq
    for name in ("DTBO", "DRAWDATA", "DINT4DATA", "DMSKDATA", "DMSKMSG"):
        assert getattr(frame, name) == getattr(nreq, name), name
