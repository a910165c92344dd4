"""Issue 11: a node whose daemon dies (``kill -9`` in its namespace), with and
without ``lamboot -x``, the same checks on C lamds (so they are known to
encode LAM), on ours and mixed; and ``lamwipe`` across nodes.

Under ``-x`` (fault tolerant) the survivors give the dead node up after
LAM's retry limit: a frame to it resent ``DOMAXRESEND`` (300) times at
``LAM_TO_DLO_ACK`` (0.5 s) makes its link dead, about 150 s after the frame
was first sent (a ``tping`` to it from each survivor is that frame; an idle
link would first wait ``LAM_TO_DLO_IDLE``, 120 s, for a heartbeat). Then
``lamnodes`` prints ``n1 invalid node`` on each survivor, ``tping N`` and
``lamexec N`` work among the survivors, and ``lamhalt`` ends them.

Without ``-x`` the dead node stays in the universe as with the C lamds: a
``tping`` to it never returns, ``lamnodes`` still lists it, the other nodes
still answer, and ``lamhalt`` returns after its timeout naming the node that
did not acknowledge; nothing is left on any host.

``lamwipe`` (tkill over ssh on each host of a boot schema) ends a universe
of any kind and leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lamd.datalink.frame import DOMAXRESEND
from lamd.datalink.link import TICK

from .netns import Cluster, Host
from .test_datalink_multinode import logs
from .netns import gone
from .test_grow import daemon_kind
from .test_multinode import prefix_tree, show

#: how long after its first frame a link is dead under -x: the frame is
#: marked at the first tick, resent DOMAXRESEND + 1 times, given up at the next
GIVE_UP = (DOMAXRESEND + 3) * TICK


def boot(c: Cluster, lamd_pkg, layout: str, x: bool, hosts: list[Host] | None = None,
         pre: Path | None = None, name: str = "hostfile", sep: Path | None = None):
    """Boot *layout* on *hosts* (default: all of *c*'s), ours from the prefix
    tree *pre* (made if not given), "sep" nodes (ours with the datalink in
    its own process) from the tree *sep*; the boot schema's path."""
    hosts = c.hosts if hosts is None else hosts
    kinds = layout.split(",")
    pre = prefix_tree(c, lamd_pkg) if pre is None else pre
    trees = {"py": pre, "sep": sep}
    hf = c.work / name
    hf.write_text("".join(f"{h.name}{f' prefix={trees[k]}' if k in trees else ''}\n"
                          for h, k in zip(hosts, kinds)))
    hf.chmod(0o644)
    cp = hosts[0].run(["lamboot", *(["-x"] if x else []), hf], timeout=60)
    assert cp.returncode == 0, show(cp) + logs(c)
    assert [daemon_kind(h) for h in hosts] == [k.replace("sep", "py") for k in kinds], logs(c)
    # lamboot is done once it has sent every node the universe; a separate
    # datalink gives it to its kernel's router a moment later (LAM's dli_inet:
    # initrouter after the universe), as tests/test_datalink_separate.py waits
    deadline = time.monotonic() + 10
    for i, (h, k) in enumerate(zip(hosts, kinds)):
        dlog = c.work / f"lamd-dl-{h.name}.log"
        while k == "sep" and f"serving node n{i} of" not in dlog.read_text():
            assert time.monotonic() < deadline, logs(c)
            time.sleep(0.05)
    for h in hosts:
        cp = h.run(["tping", "-c", "1", "N"])
        assert cp.returncode == 0 and "from 2 remote nodes and 1 local node" in cp.stdout, \
            show(cp) + logs(c)
    return hf


def kill_node(h: Host) -> None:
    """``kill -9`` everything of LAM's user on *h* (its daemon and, for ours,
    the jobs process)."""
    for p in h.user_pids():
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert gone([h], 5) == {h.name: []}


def lamnodes(h: Host) -> list[str]:
    cp = h.run(["lamnodes"])
    assert cp.returncode == 0, show(cp)
    return cp.stdout.splitlines()


#: "sep": ours with the datalink in its own process (lamd.datalink, what
#: lamd-dl@.service runs): its dlo finds the link dead and tells its dli,
#: which takes the node out of the kernel's router (RQREMROUTE) and signals
#: the node's programs (SIGSHRINK through kenyad in the jobs process)
X_LAYOUTS = ["c,c,c", "py,py,py", "py,c,py", "c,py,py", "sep,py,sep"]


def test_dead_node_under_x(lam_user, lamd_pkg):
    """Every layout at once, each a universe of three of fifteen test hosts,
    its middle node killed at the same moment: LAM's retry limit (about
    150 s) is waited for once, not once per layout."""
    from .test_datalink_separate import DATALINK_ROWS, separate_tree
    with Cluster(3 * len(X_LAYOUTS)) as c:
        pre, sep = prefix_tree(c, lamd_pkg), separate_tree(c, lamd_pkg)
        groups = [c.hosts[3 * i:3 * i + 3] for i in range(len(X_LAYOUTS))]
        hfs = [boot(c, lamd_pkg, layout, True, g, pre, f"hostfile{i}", sep)
               for i, (layout, g) in enumerate(zip(X_LAYOUTS, groups))]
        for layout, g in zip(X_LAYOUTS, groups):
            for h, k in zip(g, layout.split(",")):
                if k == "sep":  # the datalink in its own process, not in the kernel
                    rows = re.findall(r"boot table: internal (.*)",
                                      (c.work / f"lamd-{h.name}.log").read_text())
                    assert rows and not set(DATALINK_ROWS) & set(rows[-1].split(", ")), logs(c)
                    assert "calling lamboot back" in (c.work / f"lamd-dl-{h.name}.log").read_text()
        halted: set[int] = set()
        pings = []
        try:
            for g in groups:
                kill_node(g[1])
            t0 = time.monotonic()
            # a frame to the dead node from each survivor: retried, then given up
            for g in groups:
                for h in (g[0], g[2]):
                    pings.append(h.popen(["tping", "-c", "1", "n1"], timeout=GIVE_UP + 60,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            want: dict[str, list[str]] = {}
            for g in groups:
                a, _, b = g
                want[a.name] = [f"n0\t{a.name}:1:origin,this_node", "n1\tinvalid node",
                                f"n2\t{b.name}:1:"]
                want[b.name] = [f"n0\t{a.name}:1:origin", "n1\tinvalid node",
                                f"n2\t{b.name}:1:this_node"]
            survivors = [h for g in groups for h in (g[0], g[2])]
            seen: dict[str, float] = {}
            while len(seen) < len(survivors) and time.monotonic() - t0 < GIVE_UP + 45:
                for h in survivors:
                    if h.name not in seen and lamnodes(h) == want[h.name]:
                        seen[h.name] = time.monotonic() - t0
                time.sleep(1)
            assert sorted(seen) == sorted(h.name for h in survivors), (seen, logs(c))
            # LAM's retry limit, not sooner: about DOMAXRESEND ticks
            for name, t in seen.items():
                assert GIVE_UP - 10 < t < GIVE_UP + 30, (name, t, GIVE_UP)
            print({k: round(v, 1) for k, v in seen.items()})
            for i, (layout, g) in enumerate(zip(X_LAYOUTS, groups)):
                a, _, b = g
                for h in (a, b):
                    cp = h.run(["tping", "-c", "1", "N"])
                    assert cp.returncode == 0 and "1 byte from 1 remote node and 1 local node" \
                        in cp.stdout, layout + show(cp) + logs(c)
                    cp = h.run(["lamexec", "N", "hostname"])
                    if layout == "c,c,c" and cp.returncode == 0 and cp.stdout.split() == [h.name]:
                        # the C lamds once (CI at a98bb54, under load) lost the
                        # other survivor's output, lamexec exiting 0: LAM's, not
                        # ours (no daemon of ours in that universe); asked again
                        cp = h.run(["lamexec", "N", "hostname"])
                    assert cp.returncode == 0 and sorted(cp.stdout.split()) == sorted(
                        [a.name, b.name]), layout + show(cp) + logs(c)
                if layout.startswith("sep"):
                    dlog = (c.work / f"lamd-dl-{a.name}.log").read_text()
                    assert "dli: node n1 removed (its link is dead)" in dlog, dlog
                cp = a.run(["lamhalt"], timeout=60)
                assert cp.returncode == 0, layout + show(cp) + logs(c)
                halted.add(i)
                assert gone(g) == {h.name: [] for h in g}, layout + logs(c)
        finally:
            for p in pings:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for i, (hf, g) in enumerate(zip(hfs, groups)):
                if i not in halted:
                    g[0].run(["lamwipe", hf], timeout=60)
        assert "Traceback" not in logs(c), logs(c)


WITHOUT_X_LAYOUTS = ["c,c,c", "py,py,py", "c,py,py"]


def _dead_node_without_x(c: Cluster, layout: str, g: list[Host], hf: Path) -> None:
    n1, n2, n3 = g
    kill_node(n2)
    cp = n1.run(["tping", "-c", "1", "n1"], timeout=5)
    assert cp.returncode in (124, -9, 137) and "byte from" not in cp.stdout, layout + show(cp)
    assert lamnodes(n1) == [f"n0\t{n1.name}:1:origin,this_node", f"n1\t{n2.name}:1:",
                            f"n2\t{n3.name}:1:"], layout
    for h, to in ((n1, "n2"), (n3, "n0")):
        cp = h.run(["tping", "-c", "1", to])
        assert cp.returncode == 0 and f"1 byte from {to}" in cp.stdout, \
            layout + show(cp) + logs(c)
    t0 = time.monotonic()
    cp = n1.run(["lamhalt"], timeout=90)
    took = time.monotonic() - t0
    assert cp.returncode == 0, layout + show(cp) + logs(c)
    # lamhalt waits for the acknowledgements, then names who did not send one
    assert "LAM did not receive acknowledgements from all the LAM daemons" in cp.stderr, \
        layout + show(cp)
    assert f"    {n2.name} (n0)" in cp.stderr.splitlines(), layout + show(cp)  # LAM prints n0
    assert took > 5, (layout, took)
    assert gone(g) == {h.name: [] for h in g}, layout + logs(c)


def test_dead_node_without_x(lam_user, lamd_pkg):
    """Every layout at once, each a universe of three of nine test hosts
    (lamhalt's wait for the dead node's acknowledgement, LAM's timeout, runs
    once, not once per layout)."""
    from concurrent.futures import ThreadPoolExecutor
    with Cluster(3 * len(WITHOUT_X_LAYOUTS)) as c:
        pre = prefix_tree(c, lamd_pkg)
        groups = [c.hosts[3 * i:3 * i + 3] for i in range(len(WITHOUT_X_LAYOUTS))]
        hfs = [boot(c, lamd_pkg, layout, False, g, pre, f"hostfile{i}")
               for i, (layout, g) in enumerate(zip(WITHOUT_X_LAYOUTS, groups))]
        try:
            with ThreadPoolExecutor(len(groups)) as pool:
                runs = [pool.submit(_dead_node_without_x, c, layout, g, hf)
                        for layout, g, hf in zip(WITHOUT_X_LAYOUTS, groups, hfs)]
                for r in runs:
                    r.result()
        finally:
            for hf, g in zip(hfs, groups):
                if any(gone(g, 0).values()):
                    g[0].run(["lamwipe", hf], timeout=60)
        assert "Traceback" not in logs(c), logs(c)


def comms(h: Host) -> list[str]:
    out = []
    for p in h.user_pids():
        try:
            out.append(Path(f"/proc/{p}/comm").read_text().strip())
        except OSError:
            pass
    return sorted(out)


def sleeping(h: Host) -> bool:
    return "sleep" in comms(h)


@pytest.mark.parametrize("layout", ["c,c,c", "py,py,py", "c,py,c"])
def test_lamwipe(hosts3: Cluster, lamd_pkg, layout):
    """lamwipe from a node that is not the origin ends every node's daemon
    and its session. A job's process started by ``lamexec`` outlives a C
    lamd (tkill signals what the kill file lists: the daemon); ours ends it
    with its jobs process."""
    c = hosts3
    n1, n2, n3 = c.hosts
    kinds = dict(zip((h.name for h in c.hosts), layout.split(",")))
    hf = boot(c, lamd_pkg, layout, x=False)
    job = n1.popen(["lamexec", "N", "sleep", "300"], timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(sleeping(h) for h in c.hosts):
            time.sleep(0.1)
        assert all(sleeping(h) for h in c.hosts), logs(c)
        cp = n3.run(["lamwipe", hf], timeout=60)
        assert cp.returncode == 0, show(cp) + logs(c)
        ours = [h for h in c.hosts if kinds[h.name] == "py"]
        assert gone(ours) == {h.name: [] for h in ours}, logs(c)
        for h in c.hosts:
            if kinds[h.name] == "c":
                deadline = time.monotonic() + 15
                while (left := comms(h)) != ["sleep"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert left == ["sleep"], (h.name, left)
        for h in c.hosts:
            assert not (h.prefix / f"lam-{c.pw.pw_name}@{h.name}").exists(), h.name
        job.wait(timeout=30)   # its iod is gone: lamexec ends
    finally:
        if job.poll() is None:
            job.kill()
