"""The datalink frame codec (lamd/datalink/frame.py) and the boot callback
codec (lamd/boot/callback.py) against real traffic between Debian's C lamds.

The captures in tests/data were taken by :func:`capture_c_universe` with
tcpdump inside the test hosts (tests/netns.py): three C lamds booted by stock
``lamboot`` from node1, ``tping`` from node2, messages of 0 B to 20,000 B
``nsend`` from node2 to a ``nrecv`` on node1 (tests/c/netclient.c: the long
ones as several NMORE/N2ND packets), ``lamexec N hostname``, ``lamhalt``.
``c_universe_node1.pcap`` is seen from the origin (every boot callback),
``c_universe_node2.pcap`` from node2 (its traffic with node3 as well).
Regenerate them with ``python3 -m tests.test_datalink tests/data`` as root.

Every captured message is decoded and re-encoded byte for byte, and what the
messages say is checked against each other: the universe lamboot sends names
the address and UDP port every frame to a node goes to, each node's callback
its boot port and datalink port, frames carry their sender's node id, the
sequence numbers of a link run from 0 and every frame is acked with its own
number by its receiver, the long message's packets reassemble to the bytes
netclient sent. A live test takes a fresh capture and runs the same checks.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

from lamd.boot import callback
from lamd.boot.callback import CltCoord, Link, Universe
from lamd.datalink import frame
from lamd.datalink.frame import DLAck, DLFrame, FrameError
from lamd.iprocs.nreq import DTBO, N2ND, NMORE, NOTLINKID, NT_ME, NT_ORIGIN
from lamd.kernel.constants import MAXNMSGLEN, NHDSIZE
from lamd.kernel.wire import NMsg

from . import pcap

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CAPTURES = [DATA / "c_universe_node1.pcap", DATA / "c_universe_node2.pcap"]
EVENT = 31077                 # netclient's event
SIZES = [0, 64, 8192, 8193, 20000]


def pat(size: int, idx: int, i: int) -> int:
    """tests/c/netclient.c's byte pattern."""
    return (i * 151 + size * 3 + idx * 17 + (i >> 9) + (i >> 13)) & 0xFF


# ---------------------------------------------------------------------------
# what a capture must show


def check_capture(path: Path) -> dict:
    """Decode every message of a capture, re-encode it, cross-check; returns
    counts for the caller to assert on."""
    udp, streams = pcap.read(path)

    # the boot callback: lamds -> lamboot's port, lamboot -> each boot port
    coords: dict[tuple[str, int], CltCoord] = {}
    universes: list[tuple[pcap.Stream, Universe]] = []
    for s in streams:
        if len(s.data) == 20:
            c = callback.decode_coord(s.data)
            assert c.encode() == s.data
            coords[s.src] = c
    lamboot_ports = {s.dst for s in streams if s.src in coords}
    assert len(lamboot_ports) <= 1, lamboot_ports
    boot_ports = {(a, c.boot_port): c for (a, _), c in coords.items()}
    for s in streams:
        if s.src in coords:
            continue
        u = callback.decode_universe(s.data)
        assert u.encode() == s.data
        universes.append((s, u))
        if boot_ports:
            assert s.dst in boot_ports, (s.dst, boot_ports)
    assert universes, "no universe sent"
    assert len({u for _, u in universes}) == 1, "lamboot sends every node the same table"
    u = universes[0][1]
    links = {l.link: l for l in u.links if l.link != NOTLINKID}
    assert sorted(links) == list(range(len(u.links)))
    assert [l.node_type & NT_ORIGIN for l in u.links].count(NT_ORIGIN) == 1
    origin = next(l for l in u.links if l.node_type & NT_ORIGIN)
    assert origin.node_type & NT_ME  # lamboot leaves its own NT_ME in: each lamd fixes it
    for (addr, _), c in coords.items():
        assert (c.status, c.num_cpus) == (0, -1)  # lamd always leaves num_cpus to lamboot
        l = links[c.node_id]
        assert (l.addr, l.port) == (addr, c.dli_port)
    node_of = {l.addr: l.link for l in links.values()}
    dli = {(l.addr, l.port): l.link for l in links.values()}

    # the datalink
    frames: list[tuple[pcap.Datagram, DLFrame]] = []
    acks: list[tuple[pcap.Datagram, DLAck]] = []
    for d in udp:
        m = frame.decode(d.payload)
        assert m.encode() == d.payload
        (frames if isinstance(m, DLFrame) else acks).append((d, m))
    dlo_sock: dict[int, tuple[str, int]] = {}
    seqs: dict[tuple[int, int], list[int]] = defaultdict(list)
    for d, f in frames:
        assert d.dst in dli, f"frame to {d.dst}, no node's datalink port"
        assert f.dlf_src_node == node_of[d.src[0]]
        assert f.dlh_flags & DTBO, "frames are always in Trollius byte order"
        # one dlo socket per node sends every frame of that node
        assert dlo_sock.setdefault(f.dlf_src_node, d.src) == d.src
        seqs[(f.dlf_src_node, dli[d.dst])].append(f.dlf_seqnum)
    for link, got in seqs.items():
        assert got == list(range(len(got))), (link, got)  # no loss in the test hosts
    acked: dict[tuple[int, int], list[int]] = defaultdict(list)
    for d, a in acks:
        assert d.src in dli and dli[d.src] == a.dla_destid, (d.src, a)
        src_node = next(n for n, sock in dlo_sock.items() if sock == d.dst)
        acked[(src_node, a.dla_destid)].append(a.dla_seqnum)
    assert {k: sorted(v) for k, v in acked.items()} == dict(seqs)

    # the long message: nsend's packets, in order on their link
    long_msgs = 0
    pkts = [f for _, f in frames if f.dlh_event == EVENT]
    i = 0
    for idx, size in enumerate(SIZES):
        if pkts and i < len(pkts):
            body = b""
            first = pkts[i]
            n = max(1, -(-size // MAXNMSGLEN))
            for k in range(n):
                p = pkts[i + k]
                assert p.dlh_type == idx + 1
                assert bool(p.dlh_flags & NMORE) == (k < n - 1)
                assert bool(p.dlh_flags & N2ND) == (k > 0)
                head, b = p.to_nmsg()
                words = [1000 * (idx + 1) + w for w in range(NHDSIZE)]
                if n > 1 and k == 0:
                    words[0] = size  # the total length in nh_data[0] of the first packet
                assert list(head.data) == words
                assert not head.flags & DTBO
                body += b
            assert body == bytes(pat(size, idx, j) for j in range(size))
            long_msgs += n > 1
            i += n
    return dict(frames=len(frames), acks=len(acks), coords=len(coords),
                universes=len(universes), nodes=len(links), event_packets=len(pkts),
                long_msgs=long_msgs)


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_stored_capture(path: Path):
    got = check_capture(path)
    assert got["nodes"] == 3 and got["frames"] > 20 and got["acks"] == got["frames"]
    if path.name.endswith("node1.pcap"):
        # the origin sees every node's callback and sends every universe
        assert (got["coords"], got["universes"]) == (3, 3)
        assert (got["event_packets"], got["long_msgs"]) == (1 + 1 + 1 + 2 + 3, 2)
    else:
        # node2 sees its own callback and its universe, and sent the messages
        assert (got["coords"], got["universes"]) == (1, 1)
        assert (got["event_packets"], got["long_msgs"]) == (8, 2)


# ---------------------------------------------------------------------------
# the codecs on their own


def test_frame_header_is_60_bytes_big_endian():
    f = DLFrame(1, 2, 3, 4, 5, 3, DTBO, bytes(range(32)), b"abc")
    raw = f.encode()
    assert frame.DLMINFRAMELEN == 60 and len(raw) == 63
    assert raw[:28] == struct.pack(">7i", 1, 2, 3, 4, 5, 3, DTBO)
    assert raw[28:60] == bytes(range(32)) and raw[60:] == b"abc"
    assert DLFrame.decode(raw) == f
    assert DLAck(7, 2).encode() == b"\0\0\0\x07\0\0\0\x02"


@pytest.mark.parametrize("raw", [
    b"", b"\0" * 7, b"\0" * 9, b"\0" * 59,
    struct.pack(">7i32s", 0, 0, 0, 0, 0, 5, 0, bytes(32)) + b"1234",      # short body
    struct.pack(">7i32s", 0, 0, 0, 0, 0, 1, 0, bytes(32)) + b"12",        # long body
    struct.pack(">7i32s", 0, 0, 0, 0, 0, -1, 0, bytes(32)),               # negative
    struct.pack(">7i32s", 0, 0, 0, 0, 0, MAXNMSGLEN + 1, 0, bytes(32)) + bytes(MAXNMSGLEN + 1),
])
def test_malformed_datagrams_are_refused(raw: bytes):
    with pytest.raises(FrameError):
        frame.decode(raw)


def test_user_part_byte_order():
    from lamd.datalink.frame import DFLT8MSG, DINT2MSG, DINT4MSG
    from lamd.iprocs.nreq import DRAWDATA
    head = NMsg(node=1, event=9, type=3, length=6, flags=DINT2MSG,
                data=(1, -2, 3, 4, 5, 6, 7, 0x01020304))
    f = DLFrame.from_nmsg(0, 5, head, b"\x01\x02\x03\x04\x05\x06")
    assert f.dlh_flags == DINT2MSG | DTBO
    assert f.data_words() == (1, -2, 3, 4, 5, 6, 7, 0x01020304)
    assert f.dlf_msg == b"\x02\x01\x04\x03\x06\x05"
    back, body = f.to_nmsg()
    assert (back.data, back.flags, body) == (head.data, DINT2MSG, b"\x01\x02\x03\x04\x05\x06")
    # raw data words and an untyped body cross untouched
    raw = NMsg(node=1, length=3, flags=DRAWDATA, data=(0x01020304,) + (0,) * 7)
    f = DLFrame.from_nmsg(0, 0, raw, b"xyz")
    assert f.dlh_data[:4] == struct.pack("<i", 0x01020304) and f.dlf_msg == b"xyz"
    # 8-byte items; a tail shorter than an item is left alone
    f = DLFrame.from_nmsg(0, 0, NMsg(length=9, flags=DFLT8MSG), bytes(range(9)))
    assert f.dlf_msg == bytes([7, 6, 5, 4, 3, 2, 1, 0, 8])
    # already in Trollius order (a message being forwarded): nothing converted
    f = DLFrame.from_nmsg(0, 0, NMsg(length=4, flags=DTBO | DINT4MSG), b"\1\2\3\4")
    assert f.dlf_msg == b"\1\2\3\4"


def test_seq_arithmetic():
    assert frame.seqinc(frame.DLMAXSEQ - 1) == 0
    assert frame.seqmin(5, 6) == 5 and frame.seqmin(6, 5) == 5
    assert frame.seqmin(frame.DLMAXSEQ - 1, 0) == frame.DLMAXSEQ - 1  # wrapped


def test_boot_messages_round_trip_and_stream_in_pieces():
    c = CltCoord(node_id=2, boot_port=41227, dli_port=50298)
    raw = c.encode()
    assert raw == struct.pack(">5i", 0, 2, 41227, 50298, -1)
    r = callback.coord_reader()
    for b in raw[:-1]:
        assert r.feed(bytes([b])) is None
    assert r.feed(raw[-1:]) == c
    assert CltCoord(-1, -1, -1, status=113).encode() == struct.pack(">i", 113)
    assert callback.decode_coord(struct.pack(">i", 113)).status == 113
    u = Universe((Link(0, 50716, NT_ORIGIN | NT_ME, 1, addr="10.77.0.1"),
                  Link(NOTLINKID),
                  Link(2, 50298, 0, 4, hostname="node3")))
    raw = u.encode()
    assert raw[:4] == b"\0\0\0\x03" and raw[28:32] == b"\xff\xff\xff\xff"
    assert raw.endswith(b"\0\0\0\x05node3")
    assert callback.decode_universe(raw) == u


@pytest.mark.parametrize("raw", [
    struct.pack(">5i", 0, 1, 0, 5, -1),                 # port 0
    struct.pack(">5i", 0, 1, 5, 70000, -1),             # port out of range
    struct.pack(">5i", 0, 1, 5, 6, -1) + b"x",          # trailing bytes
    struct.pack(">3i", 0, 1, 5),                        # closed early
])
def test_bad_coords_are_refused(raw: bytes):
    with pytest.raises(callback.BootProtocolError):
        callback.decode_coord(raw)


@pytest.mark.parametrize("raw", [
    struct.pack(">i", 0),                                # empty universe
    struct.pack(">i", -3),
    struct.pack(">i", 1 << 30),                          # huge: refused before reading
    struct.pack(">6i", 1, 0, 5, 0, 1, 65) + b"x" * 65,   # name too long
    struct.pack(">6i", 1, 0, 5, 0, 1, -1),               # negative name length
    struct.pack(">6i", 1, -7, 5, 0, 1, 0) + bytes(4),    # bad link id
    struct.pack(">6i", 2, 0, 5, 0, 1, 0) + bytes(4),     # second link missing
])
def test_bad_universes_are_refused(raw: bytes):
    with pytest.raises(callback.BootProtocolError):
        callback.decode_universe(raw)


# ---------------------------------------------------------------------------
# taking captures


def build_netclient(outdir: Path) -> Path:
    exe = outdir / "netclient"
    cp = subprocess.run(["mpicc.lam", "-O1", "-Wall", "-o", str(exe),
                         str(HERE / "c" / "netclient.c")],
                        capture_output=True, text=True, timeout=120, cwd=str(outdir))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    exe.chmod(0o755)
    return exe


def _show(cp) -> str:
    return f"$ {' '.join(cp.args)} -> rc={cp.returncode}\n{cp.stdout}{cp.stderr}"


def capture_c_universe(c, netclient: Path, out: Path) -> list[Path]:
    """Run the scenario of the module docstring on the Cluster *c* (3 hosts)
    with tcpdump on node1 and node2; returns the two capture files."""
    n1, n2 = c.hosts[0], c.hosts[1]
    files, dumps = [], []
    for h in (n1, n2):
        f = out / f"c_universe_{h.name}.pcap"
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
        cp = n1.run(["lamboot", "-v", c.hostfile()], timeout=60)
        assert cp.returncode == 0, _show(cp)
        cp = n2.run(["tping", "-c", "1", "N"])
        assert cp.returncode == 0, _show(cp)
        sizes = [str(s) for s in SIZES]
        recv = n1.popen([netclient, "recv", "n", EVENT, *sizes], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        cp = n2.run([netclient, "send", "n", EVENT, *sizes],
                    env=n2.env({"NETCLIENT_NODE": "0"}))
        assert cp.returncode == 0, _show(cp)
        got, _ = recv.communicate(timeout=30)
        assert recv.returncode == 0 and got.splitlines()[-1] == "OK", got
        cp = n1.run(["lamexec", "N", "hostname"])
        assert cp.returncode == 0, _show(cp)
        cp = n1.run(["lamhalt"])
        assert cp.returncode == 0, _show(cp)
        time.sleep(0.3)  # the last acks
    finally:
        for p, _ in dumps:
            p.terminate()
            p.wait(timeout=10)
    return files


@pytest.fixture
def workdir():
    """A directory the test user can reach (pytest's tmp_path is not)."""
    d = Path(tempfile.mkdtemp(prefix="lamcap-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_live_capture(hosts3, workdir):
    """A fresh capture between C lamds passes the same checks (the stored
    ones are not a lucky sample)."""
    exe = build_netclient(workdir)
    files = capture_c_universe(hosts3, exe, workdir)
    got = [check_capture(f) for f in files]
    assert (got[0]["coords"], got[0]["universes"], got[0]["long_msgs"]) == (3, 3, 2)
    assert (got[1]["coords"], got[1]["universes"]) == (1, 1)


if __name__ == "__main__":  # python3 -m tests.test_datalink OUTDIR (as root)
    from .lamenv import ensure_user
    from .netns import Cluster
    out = Path(sys.argv[1]).resolve()
    ensure_user()
    work = Path(tempfile.mkdtemp(prefix="lamcap-", dir="/tmp"))
    work.chmod(0o755)
    try:
        exe = build_netclient(work)
        with Cluster(3) as c:
            for f in capture_c_universe(c, exe, work):
                shutil.copy(f, out / f.name)
                print(out / f.name, check_capture(out / f.name))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("flags,width", [(frame.DINT2MSG, 2), (frame.DINT4MSG, 4),
                                         (frame.DFLT4MSG, 4), (frame.DFLT8MSG, 8)])
@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 8192, 8195])
def test_a_typed_body_is_swapped_item_by_item_its_tail_left(flags: int, width: int,
                                                             length: int) -> None:
    """``_ltot_usrnmsg``: each whole item of a typed body reversed (the
    wire is big-endian), a tail shorter than an item left as it is; the
    32-byte ``nh_data`` as 4-byte words; swapping twice gives the original."""
    body = bytes((i * 7 + 3) % 256 for i in range(length))
    data = bytes(range(32))
    wdata, wbody = frame.usr_to_wire(flags, data, body)
    n = length // width * width
    want = b"".join(body[i:i + width][::-1] for i in range(0, n, width)) + body[n:]
    assert wbody == (body if sys.byteorder == "big" else want)
    assert wdata == (data if sys.byteorder == "big"
                     else b"".join(data[i:i + 4][::-1] for i in range(0, 32, 4)))
    assert frame.usr_to_host(flags, wdata, wbody) == (data, body)
