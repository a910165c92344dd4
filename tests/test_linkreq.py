"""Link requests (lamd/datalink/linkreq.py) and dlo's heartbeats under -x
(lamd/datalink/link.py), sans-IO, and their codecs against real traffic
between Debian's C lamds during lamgrow and lamshrink.

``tests/data/c_grow_node1.pcap`` and ``c_grow_node3.pcap`` were taken by
:func:`capture_c_grow` with tcpdump inside the test hosts: node1 and node2
booted by ``lamboot``, ``lamgrow -v node3`` run on node2, ``tping`` from
node3, ``lamshrink n1`` run on node3, ``lamhalt``. Regenerate them with
``python3 -m tests.test_linkreq tests/data`` as root.
``tests/data/c_sanity_node1.pcap``: two C lamds booted with ``lamboot -x``
left idle past ``LAM_TO_DLO_IDLE`` (``... tests/data sanity``, 2 minutes).

Every ``DIQ*`` frame and every reply in them is decoded, re-encoded byte for
byte and checked against the rest of the capture: the ``struct dilink`` of
``DIQSETLINK`` names the new node's id and the datalink address its boot
callback reported, every node's dli is told (the lamgrow node's own over the
loopback link), every request is answered to the tool's ``-pid`` event, and
``DIQREMLINK`` names the node lamshrink halted.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lamd.boot import callback
from lamd.datalink import frame
from lamd.datalink.frame import DOMAXRESEND, DLFrame
from lamd.datalink.link import DOMAXSTALE, DLOut
from lamd.datalink.linkreq import (
    DILINK, DIQREMLINK, DIQSANITY, DIQSETLINK, DOLINK, DiLink, DiReq, DoLink,
    LinkReqError, LinkTable, MAXLINK, NOTLINKID,
)
from lamd.iprocs.nreq import DTBO, NOBUF, NT_ME, NT_ORIGIN
from lamd.kernel.constants import EVDLI, MAXNMSGLEN
from lamd.kernel.wire import NMsg

from . import pcap

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CAPTURES = [DATA / "c_grow_node1.pcap", DATA / "c_grow_node3.pcap"]


# ---------------------------------------------------------------------------
# the structs


def test_dilink_layout():
    d = DiLink(2, "10.77.0.3", 0xB3BF)
    raw = d.encode()
    assert DILINK.size == 24 == len(raw)
    # dil_link in Trollius order, dil_seqrecv 0, sin_family in host order,
    # the port and address in network order, sin_zero
    assert raw == (struct.pack(">i", 2) + bytes(4) + struct.pack("=H", socket.AF_INET)
                   + bytes.fromhex("b3bf0a4d0003") + bytes(8))
    assert DiLink.decode(raw) == d
    assert d.dolink() == DoLink(2, "10.77.0.3", 0xB3BF)


@pytest.mark.parametrize("raw", [
    b"", bytes(23),
    struct.pack(">i", -1) + bytes(4) + struct.pack("=H", socket.AF_INET) + bytes(14),
    struct.pack(">i", 1) + bytes(4) + struct.pack("=H", socket.AF_INET6) + bytes(14),
])
def test_bad_dilinks_are_refused(raw):
    with pytest.raises(LinkReqError):
        DiLink.decode(raw)


def test_dolink_layout_and_holes():
    assert DOLINK.size == 36
    l = DoLink(5, "10.77.0.2", 40000)
    assert DoLink.unpack(l.pack()) == l
    assert l.pack()[20:24] == struct.pack("=H", socket.AF_INET) + struct.pack("!H", 40000)
    assert DoLink.unpack(DoLink(NOTLINKID).pack()) == DoLink(NOTLINKID)


def test_link_table_by_node_id():
    t = LinkTable([DoLink(0, "10.0.0.1", 1), DoLink(2, "10.0.0.3", 3)])
    assert len(t) == 3 and t.get(1) is None and t.get(2).port == 3
    assert [l.link for l in t.entries] == [0, NOTLINKID, 2]
    t.set(DoLink(5, "10.0.0.2", 5))           # lamgrow -n 5: holes up to it
    assert [l.link for l in t.entries] == [0, -1, 2, -1, -1, 5]
    t.remove(2)                               # a hole in the middle stays
    assert [l.link for l in t.entries] == [0, -1, -1, -1, -1, 5]
    t.remove(5)                               # the holes at the end go
    assert [l.link for l in t.entries] == [0]
    t.remove(7)
    assert len(t) == 1
    with pytest.raises(LinkReqError):
        t.set(DoLink(MAXLINK, "10.0.0.9", 1))
    seg = LinkTable([DoLink(0, "10.0.0.1", 1), DoLink(2, "10.0.0.3", 3)]).segment(0, MAXNMSGLEN)
    assert len(seg) == MAXNMSGLEN
    assert [DoLink.unpack(seg, i * 36).link for i in range(3)] == [0, -1, 2]
    assert seg[3 * 36:] == bytes(MAXNMSGLEN - 3 * 36)


def test_direq_words():
    q = DiReq.from_words((0, 1, -608, 123, 0, 1, 7, 9))
    assert (q.req, q.src_node, q.src_event, q.link, q.type, q.ncpus) == (0, 1, -608, 123, 0, 1)
    assert DiReq(DIQREMLINK, -1, 0, 4).words() == (2, -1, 0, 4, 0, 1, 0, 0)
    assert (DIQSETLINK, DIQSANITY, DIQREMLINK) == (0, 1, 2)   # dl_inet.h


# ---------------------------------------------------------------------------
# dlo under -x: heartbeats and dead links


def _frame(to: int) -> DLFrame:
    return DLFrame.from_nmsg(0, 0, NMsg(node=to, event=77, length=0), b"")


def test_idle_links_go_stale_once_and_only_under_x():
    for ft in (False, True):
        out = DLOut(0, {0: ("10.0.0.1", 1), 1: ("10.0.0.2", 2), 2: ("10.0.0.3", 3)},
                    fault_tolerant=ft)
        stale = []
        for _ in range(DOMAXSTALE + 5):
            stale += out.tick().stale
        # never this node itself; each other link once (dol_idle == DOMAXSTALE)
        assert stale == ([1, 2] if ft else [])


def test_traffic_keeps_a_link_fresh():
    out = DLOut(0, {0: ("a", 1), 1: ("b", 2), 2: ("c", 3)}, fault_tolerant=True)
    stale = []
    for i in range(DOMAXSTALE + 5):
        if i % 100 == 0:
            out.outgoing(1, _frame(1))
            out.datagram(("b", 9), frame.DLAck(out.links[1].seqgive - 1, 1).encode())
        stale += out.tick().stale
    assert stale == [2]


def test_idle_timeout_makes_every_other_link_stale():
    out = DLOut(1, {0: ("a", 1), 1: ("b", 2), 2: ("c", 3)}, fault_tolerant=True)
    assert out.idle_timeout().stale == [0, 2]


def test_a_frame_never_acked_kills_its_link_under_x_only():
    for ft in (False, True):
        out = DLOut(0, {0: ("a", 1), 1: ("b", 2)}, fault_tolerant=ft)
        r = out.outgoing(1, _frame(1))
        assert len(r.send) == 1
        dead, resends = [], 0
        for _ in range(DOMAXRESEND + 10):
            r = out.tick()
            dead += r.dead
            resends += len(r.send)
        if ft:
            # marked at the first tick, resent DOMAXRESEND + 1 times, then dead
            assert dead == [1] and resends == DOMAXRESEND + 1
            assert 1 not in out.links and not out.busy()
        else:
            assert dead == [] and resends == DOMAXRESEND + 9 and out.busy()


# ---------------------------------------------------------------------------
# C lamds' traffic


def check_capture(path: Path) -> dict:
    """Decode and cross-check the DIQ requests and replies of a capture;
    returns counts (and what :func:`check_pair` compares across captures)."""
    udp, streams = pcap.read(path)
    coords = {}
    for s in streams:
        if len(s.data) == 20:
            c = callback.decode_coord(s.data)
            coords[c.node_id] = (s.src[0], c.dli_port)
    universes = [callback.decode_universe(s.data) for s in streams
                 if len(s.data) != 20 and s.data]
    for u, s in zip(universes, [s for s in streams if len(s.data) != 20 and s.data]):
        assert u.encode() == s.data
    reqs, frames = [], []
    for d in udp:
        m = frame.decode(d.payload)
        assert m.encode() == d.payload
        if not isinstance(m, DLFrame):
            continue
        head, body = m.to_nmsg()
        frames.append((d, m, head))
        if m.dlh_event == EVDLI:
            assert m.dlh_flags == NOBUF | DTBO and m.dlh_type == 0
            q = DiReq.from_words(head.data)
            assert q.src_event < 0          # the tool's -pid
            reqs.append((d, m, q, body))
    asked = {(q.src_node, q.src_event) for _, _, q, _ in reqs}
    # the answers: NOBUF, no body, dir_reply 0, to the tool's node and -pid
    # (the tools' other requests, rpstate's, are answered there too, with bodies)
    replies = [head for d, m, head in frames if (m.dlh_node, m.dlh_event) in asked
               and m.dlh_length == 0 and m.dlh_flags & NOBUF]
    for head in replies:
        assert head.data[0] == 0 and head.type == 0
    setlinks = [(d, m, q, b) for d, m, q, b in reqs if q.req == DIQSETLINK]
    remlinks = [(d, m, q, b) for d, m, q, b in reqs if q.req == DIQREMLINK]
    assert len(setlinks) + len(remlinks) == len(reqs)   # no DIQSANITY without -x
    dilinks = []
    for d, m, q, body in setlinks:
        dil = DiLink.decode(body)
        enc = dil.encode()
        # dil_seqrecv (bytes 4-7) and sin_zero are never set (LAM_ZERO_ME is
        # empty in Debian's build): what lamgrow's stack held, zero or not
        assert (enc[:4], enc[8:16]) == (body[:4], body[8:16])
        assert (q.type, q.ncpus) == (0, 1)
        dilinks.append(dil)
    for d, m, q, body in remlinks:
        # lamshrink n1 on n2
        assert body == b"" and (q.link, q.src_node) == (1, 2)
    grown = [u for u in universes if len(u.links) == 3]
    loop = [d for d, *_ in reqs if d.src[0] == d.dst[0]]
    return dict(setlinks=len(setlinks), remlinks=len(remlinks), replies=len(replies),
                loopback=len(loop), universes=len(universes), grown=grown,
                coords=coords, dilinks=dilinks)


def check_pair(origin: dict, grown: dict) -> None:
    """What n0 was told of the new node is what the new node reported in its
    callback and what lamgrow sent it in its universe."""
    (dil,) = origin["dilinks"]
    (u,) = grown["grown"]
    assert dil.link == 2
    assert (dil.addr, dil.port) == grown["coords"][2]
    l = u.links[2]
    assert (l.link, l.addr, l.port) == (2, dil.addr, dil.port)
    # the old nodes as lamgrow's ldogetlinks gave them: their callbacks' ports
    for n in (0, 1):
        assert (u.links[n].addr, u.links[n].port) == origin["coords"][n]
    # lamgrow's node is NT_ME and, as the rsh boot module takes the NT_ME
    # node for the origin, NT_ORIGIN as well (hboot's -o 1): lamnodes on
    # the new node shows two origins, with C lamds as with ours
    assert [l.node_type for l in u.links] == [NT_ORIGIN, NT_ORIGIN | NT_ME, 0]


#: (setlinks, remlinks, replies, loopback, universes) seen on node1 (n0: told of
#: n2 by lamgrow on n1 and of n1's end by lamshrink on n2, answering both;
#: lamboot's two universes) and node3 (n2: its universe from lamgrow; lamshrink
#: there tells n0 and, over the loopback link, its own dli; n0's answer)
WANT = [(1, 1, 2, 0, 2), (0, 2, 1, 1, 1)]


def _counts(got: dict) -> tuple:
    return tuple(got[k] for k in ("setlinks", "remlinks", "replies", "loopback", "universes"))


def test_stored_captures():
    got = [check_capture(p) for p in CAPTURES]
    assert [_counts(g) for g in got] == WANT
    check_pair(*got)


def capture_c_grow(c, out: Path) -> list[Path]:
    """The scenario of the module docstring on Cluster *c* with tcpdump on
    node1 and node3; returns the two capture files."""
    n1, n2, n3 = c.hosts
    files, dumps = [], []
    for h in (n1, n3):
        f = out / f"c_grow_{h.name}.pcap"
        err = out / f"tcpdump-{h.name}.err"
        dumps.append((h.popen(["tcpdump", "-i", "any", "-U", "-n", "-s", "0", "-Z", "root",
                               "-w", f, "ip and (udp or tcp) and not port 22"],
                              user=False, timeout=None, stdout=subprocess.DEVNULL,
                              stderr=open(err, "w")), err))
        files.append(f)
    deadline = time.monotonic() + 10
    for p, err in dumps:
        while "listening on" not in err.read_text() and time.monotonic() < deadline:
            assert p.poll() is None, err.read_text()
            time.sleep(0.02)
    try:
        for h, argv in ((n1, ["lamboot", c.hostfile([n1, n2])]), (n2, ["lamgrow", "-v", "node3"]),
                        (n3, ["tping", "-c", "1", "N"]), (n3, ["lamshrink", "n1"]),
                        (n1, ["lamhalt"])):
            cp = h.run(argv, timeout=60)
            assert cp.returncode == 0, (argv, cp.stdout, cp.stderr)
        time.sleep(0.3)  # the last acks
    finally:
        for p, _ in dumps:
            p.terminate()
            p.wait(timeout=10)
    return files


def capture_c_sanity(c, out: Path, idle: float = 130.0) -> Path:
    """Two C lamds booted with ``lamboot -x`` left idle past
    ``LAM_TO_DLO_IDLE``: their dlos send each other ``DIQSANITY``. Returns
    node1's capture."""
    n1, n2 = c.hosts[:2]
    f = out / "c_sanity_node1.pcap"
    err = out / "tcpdump-sanity.err"
    dump = n1.popen(["tcpdump", "-i", "any", "-U", "-n", "-s", "0", "-Z", "root", "-w", f,
                     "udp"], user=False, timeout=None, stdout=subprocess.DEVNULL,
                    stderr=open(err, "w"))
    deadline = time.monotonic() + 10
    while "listening on" not in err.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        cp = n1.run(["lamboot", "-x", c.hostfile([n1, n2])], timeout=60)
        assert cp.returncode == 0, (cp.stdout, cp.stderr)
        time.sleep(idle)
        cp = n1.run(["lamhalt"], timeout=60)
        assert cp.returncode == 0, (cp.stdout, cp.stderr)
        time.sleep(0.3)
    finally:
        dump.terminate()
        dump.wait(timeout=10)
    return f


def test_stored_sanity_capture():
    """The heartbeats of two idle C lamds under -x, and ours: the same
    frames (a DIQSANITY request to the other node's dli, no NOBUF, no body),
    byte for byte but for the sequence number."""
    from lamd.iprocs.dlo import diq_frame
    udp, _ = pcap.read(DATA / "c_sanity_node1.pcap")
    sanity = []
    for d in udp:
        m = frame.decode(d.payload)
        if isinstance(m, DLFrame) and m.dlh_event == EVDLI:
            sanity.append(m)
    # one each way (the halt's frames come after)
    assert sorted(m.dlf_src_node for m in sanity) == [0, 1]
    for m in sanity:
        head, body = m.to_nmsg()
        assert DiReq.from_words(head.data).req == DIQSANITY
        assert m.dlh_flags == DTBO and m.dlh_type == 0 and body == b""
        ours = replace(diq_frame(m.dlf_src_node, m.dlh_node, DiReq(DIQSANITY)),
                       dlf_seqnum=m.dlf_seqnum)
        # C leaves the rest of nh_data uninitialised: compare the request words
        assert ours.encode()[:32] == m.encode()[:32]
        assert ours.data_words()[0] == m.data_words()[0] == DIQSANITY


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="lamcap-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_live_capture(hosts3, workdir):
    """A fresh capture of C lamds growing and shrinking passes the same checks."""
    got = [check_capture(f) for f in capture_c_grow(hosts3, workdir)]
    assert [_counts(g) for g in got] == WANT
    check_pair(*got)


if __name__ == "__main__":  # python3 -m tests.test_linkreq OUTDIR (as root)
    from .lamenv import ensure_user
    from .netns import Cluster
    dest = Path(sys.argv[1]).resolve()
    ensure_user()
    work = Path(tempfile.mkdtemp(prefix="lamcap-", dir="/tmp"))
    work.chmod(0o755)
    try:
        with Cluster(3) as c:
            if sys.argv[2:] == ["sanity"]:
                f = capture_c_sanity(c, work)
                shutil.copy(f, dest / f.name)
                print(dest / f.name)
            else:
                for f in capture_c_grow(c, work):
                    shutil.copy(f, dest / f.name)
                    print(dest / f.name, check_capture(dest / f.name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
