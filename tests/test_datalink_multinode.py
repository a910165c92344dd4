"""Issue 11: LAM's UDP datalink across test hosts (tests/netns.py), on a
universe of C lamds (so the checks are known to encode LAM), of ours only,
and mixed with ours as origin and not, all booted by stock ``lamboot``:

* ``tping -c 1 N`` from every host reaches every node;
* ``nsend``/``nrecv`` between stock liblam clients (tests/c/netclient.c) on
  different hosts, every ordered pair of nodes, at 0 B, 64 B, 8 KiB,
  20,000 B and 300 KiB (long messages in 8 KiB packets, ``NMORE``), every
  byte checked by the receiver; through bufferd (``n``) and ``NOBUF``;
* ``lamexec N hostname`` from every host: each host answers with its name;
* ``lamhalt`` from the origin leaves nothing of the test user on any host.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .netns import Cluster, gone
from .test_datalink import build_netclient
from .test_multinode import prefix_tree, show

SIZES = [0, 64, 8192, 20000, 300 * 1024]
EVENT = 31077


def boot(c: Cluster, pkgdir: Path, kinds: list[str]) -> Path:
    hf = c.work / "hostfile"
    pre = prefix_tree(c, pkgdir) if "py" in kinds else None
    hf.write_text("".join(f"{h.name}{f' prefix={pre}' if k == 'py' else ''}\n"
                          for h, k in zip(c.hosts, kinds)))
    hf.chmod(0o644)
    cp = c.hosts[0].run(["lamboot", hf], timeout=60)
    assert cp.returncode == 0, show(cp) + logs(c)
    return hf


def logs(c: Cluster) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-6000:]}"
                   for p in sorted(c.work.glob("lamd-*.log")))


def exchange(c: Cluster, exe: Path, src: int, dst: int, path: str) -> None:
    """netclient *path* from node *src* to a receiver on node *dst*."""
    sizes = [str(s) for s in SIZES]
    hs, hd = c.hosts[src], c.hosts[dst]
    recv = hd.popen([exe, "recv", path, EVENT, *sizes], stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True, timeout=60)
    try:
        time.sleep(0.3)   # the receiver's nrecv is posted (bufferd would keep it anyway)
        cp = hs.run([exe, "send", path, EVENT, *sizes], timeout=60,
                    env=hs.env({"NETCLIENT_NODE": str(dst)}))
        got, _ = recv.communicate(timeout=70)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    where = f"n{src} -> n{dst} ({path})"
    assert cp.returncode == 0 and cp.stdout.splitlines()[-1:] == ["OK"], where + show(cp) + logs(c)
    assert recv.returncode == 0 and got.splitlines()[-1:] == ["OK"], where + got + logs(c)
    # every size arrived, in order, whole (netclient checked every byte)
    assert [ln for ln in got.splitlines() if ln.startswith("RECV ")] == [
        f"RECV idx={i} size={n} type={i + 1}" for i, n in enumerate(SIZES)], where + got
    # and the receiver is on the node it was meant for
    assert f"NODE id={dst}" in got.splitlines(), where + got


@pytest.mark.parametrize("layout", ["c,c,c", "py,py,py", "py,c,c", "c,py,py", "c,py,c"])
def test_datalink_universe(hosts3: Cluster, lamd_pkg, layout):
    c = hosts3
    kinds = layout.split(",")
    exe = build_netclient(c.work)
    t0 = time.monotonic()
    hf = boot(c, lamd_pkg, kinds)
    halted = False
    try:
        for i, h in enumerate(c.hosts):
            cp = h.run(["tping", "-c", "1", "N"], timeout=30)
            assert cp.returncode == 0, f"from n{i}: " + show(cp) + logs(c)
            assert "1 byte from 2 remote nodes and 1 local node" in cp.stdout, show(cp)
        for src in range(3):
            for dst in range(3):
                if src != dst:
                    exchange(c, exe, src, dst, "n")
        for i, h in enumerate(c.hosts):
            cp = h.run(["lamexec", "N", "hostname"], timeout=30)
            assert cp.returncode == 0, f"from n{i}: " + show(cp) + logs(c)
            assert sorted(cp.stdout.split()) == sorted(x.name for x in c.hosts), show(cp)
        exchange(c, exe, 1, 0, "nobuf")
        exchange(c, exe, 0, 2, "nobuf")
        cp = c.hosts[0].run(["lamhalt"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        halted = True
        deadline = time.monotonic() + 15
        while any(h.user_pids() for h in c.hosts) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {h.name: h.user_pids() for h in c.hosts} == {h.name: [] for h in c.hosts}, \
            logs(c)
        for h in c.hosts:
            assert not (h.prefix / f"lam-{c.pw.pw_name}@{h.name}").exists()
    finally:
        if not halted:
            c.hosts[0].run(["lamwipe", hf], timeout=60)
    print(f"{layout}: every check and lamhalt in {time.monotonic() - t0:.2f} s")


# ---------------------------------------------------------------------------
# hostile network input

SPRAYER = r'''
import random, socket, struct, sys, time
target, port, spoof, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
me = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
def spoofed(payload, src=spoof, sport=40000):
    udp = struct.pack("!HHHH", sport, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(target))
    raw.sendto(ip + udp, (target, 0))
def frame(src, seq, length, body_len=None, event=31077):
    body = bytes(length if body_len is None else body_len)
    return struct.pack(">7i32s", src, seq, 1, event, 0, length, 0x100, bytes(32)) + body
rnd = random.Random(7)
n = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    kind = n % 8
    if kind == 0:    # from this host's own address, claiming a booted node
        me.sendto(frame(0, rnd.randrange(1 << 30), 64), (target, port))
    elif kind == 1:  # garbage
        me.sendto(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200))), (target, port))
    elif kind == 2:  # a node's address, far ahead: dropped unacked
        spoofed(frame(0, rnd.randrange(1 << 20, 1 << 29), 1400))  # raw: one MTU
    elif kind == 3:  # a node's address, a length the datagram does not have
        spoofed(frame(0, 5, 1 << 30, body_len=100))
    elif kind == 4:  # a node's address, negative and huge lengths, short frames
        spoofed(frame(0, 5, -1, body_len=0)[:rnd.randrange(0, 60)])
    elif kind == 5:  # an unknown node
        spoofed(frame(77, 0, 16))
    elif kind == 6:  # an ack where frames go
        spoofed(struct.pack(">2i", 0, 1))
    else:            # far behind: a duplicate, acked back to the real node
        spoofed(frame(0, (1 << 30) - 1 - rnd.randrange(1000), 0))
    n += 1
    if n % 200 == 0:
        time.sleep(0.01)
print("SPRAYED", n)
'''


@pytest.mark.parametrize("layout", ["py,py", "c,py"])
def test_datalink_under_spoofed_and_malformed_frames(hosts3: Cluster, lamd_pkg, layout):
    """While node 0 and node 1 exchange messages both ways at every size, a
    third host (not booted) sprays node 1's (our) datalink port: frames from
    its own address claiming node 0, garbage, and with node 0's address
    spoofed (raw socket) frames far ahead, lying lengths, short frames, an
    unknown node, acks, and old numbers. Every message arrives whole; our
    daemon logs each kind of drop at most once a minute; tping and lamhalt
    work after; nothing is left on any host."""
    c = hosts3
    kinds = layout.split(",")
    exe = build_netclient(c.work)
    hf = c.work / "hostfile2"
    pre = prefix_tree(c, lamd_pkg)
    hf.write_text("".join(f"{h.name}{f' prefix={pre}' if k == 'py' else ''}\n"
                          for h, k in zip(c.hosts[:2], kinds)))
    hf.chmod(0o644)
    cp = c.hosts[0].run(["lamboot", hf], timeout=60)
    assert cp.returncode == 0, show(cp) + logs(c)
    halted = False
    try:
        log1 = c.work / f"lamd-{c.hosts[1].name}.log"
        # lamboot returns once it has sent the last node its universe, as
        # with the C lamd: that node's dli may boot a moment later
        deadline = time.monotonic() + 10
        while not (m := re.search(r"dli: datalink input on UDP port (\d+)", log1.read_text())):
            assert time.monotonic() < deadline, log1.read_text()
            time.sleep(0.02)
        script = c.work / "sprayer.py"
        script.write_text(SPRAYER)
        spray = c.hosts[2].popen(["/usr/bin/python3", script, c.hosts[1].addr, m.group(1),
                                  c.hosts[0].addr, "6"], user=False, timeout=30,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        exchange(c, exe, 0, 1, "n")
        exchange(c, exe, 1, 0, "n")
        exchange(c, exe, 0, 1, "nobuf")
        out, _ = spray.communicate(timeout=40)
        assert spray.returncode == 0 and "SPRAYED" in out, out
        assert int(out.split()[-1]) > 1000, out
        for h in c.hosts[:2]:
            cp = h.run(["tping", "-c", "1", "N"], timeout=30)
            assert cp.returncode == 0 and "from 1 remote node and 1 local node" in cp.stdout, \
                show(cp) + logs(c)
        text = log1.read_text()
        drops = [ln for ln in text.splitlines() if "dli: dropped" in ln]
        assert drops, text[-3000:]
        # one line per kind (rate-limited): a handful, not thousands
        assert len(drops) <= 8, "\n".join(drops)
        for why in ("another address than its", "malformed frame", "unknown node 77"):
            assert any(why in ln for ln in drops), (why, drops)
        print("\n".join(drops))
        assert "Traceback" not in text, text[-5000:]
        cp = c.hosts[0].run(["lamhalt"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        halted = True
        deadline = time.monotonic() + 15
        while any(h.user_pids() for h in c.hosts) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {h.name: h.user_pids() for h in c.hosts} == {h.name: [] for h in c.hosts}
    finally:
        if not halted:
            c.hosts[0].run(["lamwipe", hf], timeout=60)


# ---------------------------------------------------------------------------
# MPI across nodes


@pytest.mark.parametrize("layout", ["c,c,c", "py,py,py", "c,py,c"])
def test_mpirun_across_nodes(hosts3: Cluster, lamd_pkg, layout):
    """Stock ``mpirun -np 2`` of an MPI program built with mpicc.lam puts
    rank 0 on n0 and rank 1 on n1 (in ``c,py,c`` a C lamd's node and ours):
    on the default RPI, TCP and ``lamd`` (every MPI message through both
    daemons and the datalink) the two ranks bounce messages of 0 B to 16 KiB,
    every byte checked by the program. Under ``-ssi rpi lamd`` sizes stay
    below 64 KiB: LAM's MPI library fails larger ones on either daemon
    (``test_jobs.py``). The program lives in a short path: LAM's MPI_Init
    faults for long ones on either daemon (``test_long_program_path``)."""
    c = hosts3
    d = Path(tempfile.mkdtemp(prefix="pp", dir="/tmp"))
    try:
        d.chmod(0o755)
        exe = d / "pp"
        cp = subprocess.run(["mpicc.lam", "-O2", "-Wall", "-o", str(exe),
                             str(Path(__file__).parent / "c" / "mpi" / "pingpong.c")],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        exe.chmod(0o755)
        hf = boot(c, lamd_pkg, layout.split(","))
        halted = False
        try:
            for rpi in ([], ["-ssi", "rpi", "tcp"], ["-ssi", "rpi", "lamd"]):
                cp = c.hosts[0].run(["mpirun", "-np", "2", *rpi, str(exe), "20",
                                     "0", "64", "8192", "16384"], timeout=120)
                assert cp.returncode == 0 and cp.stdout.endswith("PP OK\n"), \
                    f"{rpi}: " + show(cp) + logs(c)
                assert [ln.split()[1] for ln in cp.stdout.splitlines()
                        if ln.startswith("PP size=")] == [
                    "size=0", "size=64", "size=8192", "size=16384"], show(cp)
            cp = c.hosts[0].run(["lamhalt"], timeout=30)
            assert cp.returncode == 0, show(cp) + logs(c)
            halted = True
            assert gone(c.hosts) == {h.name: [] for h in c.hosts}
        finally:
            if not halted:
                c.hosts[0].run(["lamwipe", hf], timeout=60)
    finally:
        shutil.rmtree(d, ignore_errors=True)
