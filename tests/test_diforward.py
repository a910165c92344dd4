"""diforward (lamd/iprocs/diforward.py, issue 11): a kernel whose dli runs
outside it hands on each frame dli gives it exactly once, across a crash of
the datalink process.

In-process: our kernel in a thread booted with dli_inet external (so with
the diforward row), and liblam-like clients (lamd.client) playing dli:
a frame sent again with the key of the last one handed on from its node
is not handed on again; a frame whose sender died in the middle of its
body was not handed on, and sent again it is, once; a node id reused by a
new node (another address) is a new frame; the keys cross a re-exec. The network test with a datalink process SIGKILLed under a
stream is tests/test_datalink_separate.py.

No C-lamd side: LAM's separate dli_inet hands frames on itself and keeps
nothing across a crash; there is no LAM behaviour to compare with.
"""

from __future__ import annotations

import socket
import tempfile
from typing import Any, Iterator

import pytest

from lamd.client import KernelClient
from lamd.iprocs import BOOT_TABLE, DIFORWARD, boot_table, booted_rows
from lamd.iprocs.diforward import EVDIFORWARD, KEY, frame_key, pack_keys, unpack_keys
from lamd.iprocs.nreq import DDLI, LOCAL
from lamd.kernel.constants import KNMSG, KQSEND, LAM_BASE_EVENT, MAXNMSGLEN
from lamd.kernel.wire import KMsg, KReq, NMsg

from .test_separate import World, blocked_on, nrecv
from .test_stock_tools import wait_until

TIMEOUT = 10.0
EVX = LAM_BASE_EVENT + 210   # the packets' event: no LAM service uses it
PEER = ("10.77.0.1", 40000)  # node 0's dlo socket


@pytest.fixture
def world() -> Iterator[World]:
    d = tempfile.TemporaryDirectory(prefix="lamd-difwd-")
    w = World(d.name, ["dli_inet"])
    try:
        assert wait_until(lambda: blocked_on(w.kernel, EVDIFORWARD) == 1, TIMEOUT)
        yield w
    finally:
        w.close()
        d.cleanup()


def packet(n: int) -> tuple[NMsg, bytes]:
    """A packet for this node's event EVX through bufferd, as di_forward makes it."""
    body = bytes((n * 31 + i) & 0xFF for i in range(100 + n))
    return NMsg(node=LOCAL, event=EVX, type=n, length=len(body), flags=DDLI,
                data=tuple(range(n, n + 8))), body


def give(c: Any, key: bytes, head: NMsg, body: bytes) -> None:
    """What dli outside the kernel does per frame (and then acks it)."""
    c.send(EVDIFORWARD, 0, key + body, KNMSG, nmsg=head)


def test_the_row_is_booted_only_with_dli_outside():
    names = [kb.name for kb in boot_table({"node_addr": "192.0.2.2"}, ["dli_inet"])]
    assert names[-1] == "diforward" and "dli_inet" not in names
    assert DIFORWARD.row == len(BOOT_TABLE)          # pid 100015, after LAM's rows
    assert "diforward" not in [kb.name for kb in boot_table({"node_addr": "192.0.2.2"})]
    assert booted_rows(["dli_inet"]) == len(names) == len(BOOT_TABLE)


def test_each_frame_is_handed_on_once(world):
    dli, user = world.client(), world.client()
    h1, b1 = packet(1)
    h2, b2 = packet(2)
    k1 = frame_key(PEER, 0, 7)
    give(dli, k1, h1, b1)
    # the datalink process died before it kept frame 7 as handed on; its
    # successor gets it again from the peer and sends it again
    give(dli, k1, h1, b1)
    give(dli, frame_key(PEER, 0, 8), h2, b2)
    got = [nrecv(user, EVX) for _ in range(2)]
    assert [(h.type, h.data, b) for h, b in got] == [(1, h1.data, b1), (2, h2.data, b2)]
    # only the last frame of a node is a duplicate: 7 again is another frame
    # now (a sequence number comes round again after DLMAXSEQ frames)
    give(dli, k1, h1, b1)
    assert nrecv(user, EVX)[1] == b1


def test_a_node_id_given_to_a_new_node_is_not_a_duplicate(world):
    """lamshrink, then lamgrow gives node 0's id to a new lamd: another
    datalink port, so another key, although node and sequence number match."""
    dli, user = world.client(), world.client()
    h, b = packet(3)
    give(dli, frame_key(PEER, 0, 0), h, b)
    give(dli, frame_key((PEER[0], PEER[1] + 1), 0, 0), h, b)
    h5, b5 = packet(5)
    give(dli, frame_key(PEER, 1, 0), h5, b5)
    assert [nrecv(user, EVX)[1] for _ in range(3)] == [b, b, b5]


def test_a_frame_whose_sender_died_mid_body_is_handed_on_when_sent_again(world):
    """The datalink process died while it wrote the frame's body: the kernel
    drops what it had, diforward took nothing and keeps no key, so the frame
    sent again by the next process is handed on (once)."""
    h, b = packet(4)
    key = frame_key(PEER, 2, 11)
    data = key + b
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    try:
        s.connect(world.path)
        c = KernelClient(s, timeout=TIMEOUT)
        c.attach()
        rep = c.request(KReq(req=KQSEND, index=c.index,
                             msg=KMsg(EVDIFORWARD, 0, len(data), KNMSG)))
        assert rep.reply == 0 and rep.length == len(data)
        c._write((h.pack() + data)[:60])   # the header and part of the key: then dead
    finally:
        s.close()
    assert wait_until(lambda: blocked_on(world.kernel, EVDIFORWARD) == 1, TIMEOUT)
    dli, user = world.client(), world.client()
    give(dli, key, h, b)
    give(dli, key, h, b)
    h6, b6 = packet(6)
    give(dli, frame_key(PEER, 2, 12), h6, b6)
    assert [nrecv(user, EVX)[1] for _ in range(2)] == [b, b6]


def test_the_keys_cross_a_re_exec():
    last = {0: frame_key(PEER, 0, 5), 3: frame_key(("10.77.0.4", 1), 3, -1)}
    assert unpack_keys(pack_keys(last)) == last
    assert unpack_keys(b"") == {}
    assert KEY.size + MAXNMSGLEN < 1 << 20
