"""When dli acks a frame (lamd/iprocs/dli.py, issue 11): in the kernel,
a packet that more packets of its message follow (``NMORE``) is acked
before it is handed on, the last or only packet of a message after.

LAM's dli_inet acks every frame first (``di_forward``: ``di_ack``, then
``dsend``). Ours differs on purpose for the last packet of a message: the
receiver waits for it and nobody for its ack, so it is handed on first
(docs/multinode.md: a 64 B round trip across nodes lost about a third when
every frame was acked first; acking ``NMORE`` packets first raised 256 KiB
throughput). A datalink process that keeps its state (under systemd)
acks every frame once handed on (tests/test_datalink_separate.py).

In-process: our kernel in a thread, booted as node 1 of a two-node universe
with its datalink socket on the loopback; the test's UDP socket is node
0's dlo. A ``NOBUF`` packet for an event of node 1 nobody receives on
cannot be handed on until someone does, so whether its ack comes first is
seen from outside. No C-lamd side: which of two datagrams a C lamd sends
first inside one turn is not observable from outside without the blocked
receive, and LAM's order is given above from its source.

Neither dli nor dlo makes a receive that finds nothing after the last
packet of a message or the last ack due: such a read, between a packet's
hand-on and the next turn, delays what the packet was handed to (a
``tping`` round trip across two test hosts 178 -> 157 us, docs/multinode.md);
the socket stays watched, so a datagram left is read at the next readiness.
Ours only, counted on our sockets: LAM's dli_inet reads one frame per
``select`` (``getmessage``), which the count now matches for a message of
one packet.
"""

from __future__ import annotations

import socket
import tempfile
import time
from typing import Iterator

import pytest

from lamd.boot.agent import links as boot_links, routes as boot_routes
from lamd.boot.callback import Link, Universe
from lamd.datalink.frame import DLAck, DLFrame, decode
from lamd.iprocs.nreq import NMORE, NOBUF
from lamd.kernel.constants import EVDL0, KNMSG, LAM_BASE_EVENT, MAXNMSGLEN
from lamd.kernel.wire import NMsg

from .test_separate import World

TIMEOUT = 10.0
EVX = LAM_BASE_EVENT + 220   # the packets' event on node 1: no LAM service uses it


class CountingSocket(socket.socket):
    """A UDP socket that counts its receives and those that found nothing."""

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_DGRAM)
        self.reads = 0
        self.empty = 0

    def recvfrom(self, *args):
        self.reads += 1
        try:
            return super().recvfrom(*args)
        except BlockingIOError:
            self.empty += 1
            raise


@pytest.fixture
def node1() -> Iterator[tuple[World, socket.socket, tuple[str, int]]]:
    """Node 1's kernel (dli in it, its socket ``w.config["dli_sock"]``, dlo's
    ``w.config["dlo_sock"]``) and node 0's dlo socket."""
    d = tempfile.TemporaryDirectory(prefix="lamd-dliack-")
    dli_sock = CountingSocket()
    dli_sock.bind(("127.0.0.1", 0))
    dlo_sock = CountingSocket()
    dlo_sock.bind(("127.0.0.1", 0))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(TIMEOUT)
    uni = Universe((Link(0, peer.getsockname()[1], 0, 1, "127.0.0.1"),
                    Link(1, dli_sock.getsockname()[1], 0, 1, "127.0.0.1")))
    w = World(d.name, [], config={
        "node_id": 1, "origin": 0, "routes": boot_routes(uni, 1, 0),
        "links": boot_links(uni), "dli_port": dli_sock.getsockname()[1],
        "dli_sock": dli_sock, "dlo_sock": dlo_sock, "node_addr": "127.0.0.1"})
    try:
        yield w, peer, dli_sock.getsockname()
    finally:
        w.close()
        peer.close()
        d.cleanup()


def frame(seq: int, flags: int, body: bytes) -> bytes:
    head = NMsg(node=1, event=EVX, type=seq, length=len(body), flags=flags)
    return DLFrame.from_nmsg(0, seq, head, body).encode()


def ack_within(peer: socket.socket, seconds: float) -> int | None:
    """The sequence number of the next ack node 0 gets, or None."""
    peer.settimeout(seconds)
    try:
        data = peer.recv(64)
    except socket.timeout:
        return None
    a = decode(data)
    assert isinstance(a, DLAck) and a.dla_destid == 1, a
    return a.dla_seqnum


def test_a_packet_more_follow_is_acked_before_it_is_handed_on_the_last_after(node1):
    w, peer, dli_addr = node1
    first, last = bytes(range(200)), b"the last packet"
    peer.sendto(frame(0, NOBUF | NMORE, first), dli_addr)
    # nobody receives on EVX: the packet waits in dli's hand-on, its ack is out
    assert ack_within(peer, TIMEOUT) == 0
    c = w.client()
    m = c.recv(EVX, 0, len(first), KNMSG)
    assert m.body == first and m.nmsg is not None and m.nmsg.flags & NMORE
    peer.sendto(frame(1, NOBUF, last), dli_addr)
    # the last packet: not acked while it cannot be handed on ...
    assert ack_within(peer, 0.5) is None
    m = c.recv(EVX, 0, len(last), KNMSG)
    assert m.body == last
    # ... and acked once it is
    assert ack_within(peer, TIMEOUT) == 1


def until(cond, seconds: float = TIMEOUT) -> None:
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_no_read_that_finds_nothing_after_a_last_packet_or_the_last_ack(node1):
    w, peer, dli_addr = node1
    dli_sock, dlo_sock = w.config["dli_sock"], w.config["dlo_sock"]
    c = w.client()
    for seq in range(5):
        body = b"only packet %d" % seq
        peer.sendto(frame(seq, NOBUF, body), dli_addr)
        assert c.recv(EVX, 0, 64, KNMSG).body == body
        assert ack_within(peer, TIMEOUT) == seq
    until(lambda: dli_sock.reads >= 5)
    time.sleep(0.2)
    assert (dli_sock.reads, dli_sock.empty) == (5, 0)
    # out through dlo: node 0 (the peer) acks each frame
    for seq in range(5):
        body = b"to node 0, %d" % seq
        c.send(EVDL0, 0, body, KNMSG, NMsg(dl_event=EVDL0, dl_link=0, node=0, event=EVX,
                                           length=len(body), flags=NOBUF))
        data, src = peer.recvfrom(MAXNMSGLEN + 4096)
        f = decode(data)
        assert isinstance(f, DLFrame) and f.dlf_seqnum == seq and f.dlf_msg == body, f
        peer.sendto(DLAck(seq, 0).encode(), src)
        until(lambda: dlo_sock.reads >= seq + 1)
    time.sleep(0.2)
    assert (dlo_sock.reads, dlo_sock.empty) == (5, 0)
    # a packet of a message more packets follow: read on at once
    peer.sendto(frame(5, NOBUF | NMORE, b"first"), dli_addr)
    assert ack_within(peer, TIMEOUT) == 5
    assert c.recv(EVX, 0, 64, KNMSG).body == b"first"
    until(lambda: dli_sock.empty == 1)
    assert (dli_sock.reads, dli_sock.empty, dlo_sock.reads, dlo_sock.empty) == (7, 1, 5, 0)
