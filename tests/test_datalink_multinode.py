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

import subprocess
import time
from pathlib import Path

import pytest

from .netns import Cluster
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
        exchange(c, exe, 1, 0, "nobuf")
        exchange(c, exe, 0, 2, "nobuf")
        for i, h in enumerate(c.hosts):
            cp = h.run(["lamexec", "N", "hostname"], timeout=30)
            assert cp.returncode == 0, f"from n{i}: " + show(cp) + logs(c)
            assert sorted(cp.stdout.split()) == sorted(x.name for x in c.hosts), show(cp)
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
