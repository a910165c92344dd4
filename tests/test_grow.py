"""Issue 11: stock ``lamgrow`` and ``lamshrink`` across test hosts
(tests/netns.py), the same checks on a universe of C lamds (so they are
known to encode LAM), of ours only and mixed: ours as origin with C grown, C
as origin with ours grown, and ours as the node lamgrow and lamshrink run on.

From two nodes booted by ``lamboot`` (node1, node2):

* ``lamgrow node3`` run on node2 boots node3 as n2 (ours where node3's PATH
  finds our lamd first: :attr:`tests.netns.Host.bindir`) and tells every
  node's dli (``DIQSETLINK``, the lamgrow node's own over the loopback link);
  ``lamnodes`` on every host then prints what the C lamds print, quirk
  included (the grown node marks lamgrow's node as an origin too: lamboot's
  rsh module sent it ``-o 1``); ``tping`` reaches every node from every host;
  ``lamexec N hostname`` from the new node runs on each;
* ``lamshrink n1`` on node3 halts node2's lamd and tells the others
  (``DIQREMLINK``): ``lamnodes`` prints ``n1 invalid node``, nothing of LAM
  is left on node2, tping from the survivors reaches the two left;
* ``lamgrow -n 5 node2`` on node1 adds node2 back as n5 (n3, n4 holes):
  ``lamnodes`` shows the holes, tping reaches all three nodes from each;
* ``lamhalt`` leaves nothing on any host.

And a universe of one booted node grows to two and shrinks back (C or ours
on either side).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from .netns import Cluster, Host, gone
from .test_datalink_multinode import logs
from .test_multinode import prefix_tree, show


def lamnodes_want(names: dict[int, str], viewer: int, origins: set[int]) -> list[str]:
    """lamnodes' lines on node *viewer* for the universe *names* (node id ->
    host name, holes missing up to the highest id)."""
    out = []
    for n in range(max(names) + 1):
        if n not in names:
            out.append(f"n{n}\tinvalid node")
            continue
        flags = ",".join(f for f in ("origin" if n in origins else "",
                                      "this_node" if n == viewer else "") if f)
        out.append(f"n{n}\t{names[n]}:1:{flags}")
    return out


def check_nodes(c: Cluster, on: dict[int, Host], names: dict[int, str],
                origins: dict[int, set[int]]) -> None:
    """lamnodes and ``tping -c 1 N`` on every node of *on* (node id -> host)."""
    nremote = len(names) - 1
    for nid, h in on.items():
        cp = h.run(["lamnodes"])
        assert cp.returncode == 0, f"on n{nid}: " + show(cp) + logs(c)
        assert cp.stdout.splitlines() == lamnodes_want(names, nid, origins.get(nid, {0})), \
            f"on n{nid} ({h.name}): " + show(cp) + logs(c)
        cp = h.run(["tping", "-c", "1", "N"])
        assert cp.returncode == 0, f"on n{nid}: " + show(cp) + logs(c)
        assert (f"1 byte from {nremote} remote node{'s' if nremote != 1 else ''} "
                f"and 1 local node") in cp.stdout, f"on n{nid}: " + show(cp)


def spin(out: str) -> str:
    """nodespin's progress line without its backspaces."""
    return re.sub(r"\s+", " ", out.replace("\b", "")).strip()


def daemon_kind(h: Host) -> str:
    """"c" when the host's LAM daemon is Debian's lamd, "py" when it is ours
    (python3), "" when none runs."""
    kinds = set()
    for p in h.user_pids():
        try:
            exe = os.readlink(f"/proc/{p}/exe")
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(exe) == "lamd":
            kinds.add("c")
        elif os.path.basename(exe).startswith("python3") and (
                argv[0].startswith(b"lamd: ") or argv[1:3] == [b"-m", b"lamd"]
                or any(b"from lamd.launch import" in a for a in argv[1:5])):
            kinds.add("py")   # our daemon, titled or not yet (not the jobs process)
    return ",".join(sorted(kinds))


def ours_first(h: Host, pre: Path) -> None:
    """Make a plain hboot on *h* start our lamd (PATH, as a user would)."""
    link = h.bindir / "lamd"
    if not link.exists():
        os.symlink(pre / "bin" / "lamd", link)


@pytest.mark.parametrize("layout", ["c,c,c", "py,py,py", "py,c,c", "c,c,py", "c,py,c"])
def test_lamgrow_lamshrink(hosts3: Cluster, lamd_pkg, layout):
    c = hosts3
    n1, n2, n3 = c.hosts
    kinds = dict(zip((h.name for h in c.hosts), layout.split(",")))
    pre = prefix_tree(c, lamd_pkg)
    for h in (n2, n3):
        if kinds[h.name] == "py":
            ours_first(h, pre)
    hf = c.work / "hostfile2"
    hf.write_text("".join(f"{h.name}{f' prefix={pre}' if kinds[h.name] == 'py' else ''}\n"
                          for h in (n1, n2)))
    hf.chmod(0o644)
    cp = n1.run(["lamboot", hf], timeout=60)
    assert cp.returncode == 0, show(cp) + logs(c)
    wipe = c.work / "hostfile-all"
    wipe.write_text("".join(f"{h.name}\n" for h in c.hosts))
    wipe.chmod(0o644)
    halted = False
    try:
        # -- grow: node3 as n2, from node2 ---------------------------------
        cp = n2.run(["lamgrow", "-v", "node3"], timeout=60)
        assert cp.returncode == 0, show(cp) + logs(c)
        # nodespin: every node updated, the origin marked
        assert spin(cp.stdout) == "update n0... n1 (o)... done", show(cp)
        names = {0: n1.name, 1: n2.name, 2: n3.name}
        assert [daemon_kind(h) for h in c.hosts] == layout.split(","), logs(c)
        check_nodes(c, {0: n1, 1: n2, 2: n3}, names, {2: {0, 1}})
        cp = n3.run(["lamexec", "N", "hostname"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        assert sorted(cp.stdout.split()) == sorted(names.values()), show(cp)

        # -- shrink: n1 (node2), from node3 ---------------------------------
        cp = n3.run(["lamshrink", "-v", "n1"], timeout=60)
        assert cp.returncode == 0, show(cp) + logs(c)
        assert cp.stdout.splitlines()[0] == "hreq: received HALT_ACK from n1 (node2)", show(cp)
        assert spin(cp.stdout.split("\n", 1)[1]) == "update n0 (o)... n2... done", show(cp)
        assert gone([n2]) == {n2.name: []}, logs(c)
        assert not (n2.prefix / f"lam-{c.pw.pw_name}@{n2.name}").exists()
        del names[1]
        check_nodes(c, {0: n1, 2: n3}, names, {2: {0, 1}})

        # -- grow again: node2 as n5, from node1 ----------------------------
        cp = n1.run(["lamgrow", "-n", "5", "node2"], timeout=60)
        assert cp.returncode == 0, show(cp) + logs(c)
        names[5] = n2.name
        assert daemon_kind(n2) == kinds[n2.name]
        check_nodes(c, {0: n1, 2: n3, 5: n2}, names, {2: {0, 1}})

        cp = n1.run(["lamhalt"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        halted = True
        assert gone(c.hosts) == {h.name: [] for h in c.hosts}, logs(c)
    finally:
        if not halted:
            n1.run(["lamwipe", wipe], timeout=60)
    text = logs(c)
    assert "Traceback" not in text, text
    # our survivors took lamshrink's request (and kenyad answered the SIGSHRINK doom)
    for h in (n1, n3):
        if kinds[h.name] == "py":
            log = (c.work / f"lamd-{h.name}.log").read_text()
            assert "dli: node n1 removed (from node 2)" in log, log
    assert "did not answer the SIGSHRINK doom" not in text, text


@pytest.mark.parametrize("layout", ["c,c", "py,py", "py,c", "c,py"])
def test_lamgrow_from_one_node(hosts3: Cluster, lamd_pkg, layout):
    """A universe of one booted node grows (its dlo has a datalink socket
    from the start: lamgrow's request to its own dli goes out through it),
    and shrinks back to one."""
    c = hosts3
    n1, n2 = c.hosts[:2]
    k1, k2 = layout.split(",")
    pre = prefix_tree(c, lamd_pkg)
    if k2 == "py":
        ours_first(n2, pre)
    hf = c.work / "hostfile1"
    hf.write_text(f"{n1.name}{f' prefix={pre}' if k1 == 'py' else ''}\n")
    hf.chmod(0o644)
    cp = n1.run(["lamboot", hf], timeout=60)
    assert cp.returncode == 0, show(cp) + logs(c)
    halted = False
    try:
        cp = n1.run(["lamgrow", "-v", "node2"], timeout=60)
        assert cp.returncode == 0, show(cp) + logs(c)
        assert spin(cp.stdout) == "update n0 (o)... done", show(cp)
        assert [daemon_kind(h) for h in (n1, n2)] == [k1, k2], logs(c)
        names = {0: n1.name, 1: n2.name}
        check_nodes(c, {0: n1, 1: n2}, names, {1: {0}})
        cp = n1.run(["lamshrink", "n1"], timeout=60)
        assert cp.returncode == 0, show(cp) + logs(c)
        assert gone([n2]) == {n2.name: []}, logs(c)
        cp = n1.run(["lamnodes"])
        assert cp.stdout.splitlines() == [f"n0\t{n1.name}:1:origin,this_node"], show(cp)
        cp = n1.run(["tping", "-c", "1", "N"])
        assert cp.returncode == 0 and "1 byte from n0 (o): " in cp.stdout, show(cp)
        cp = n1.run(["lamhalt"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        halted = True
        assert gone(c.hosts) == {h.name: [] for h in c.hosts}, logs(c)
    finally:
        if not halted:
            n1.run(["lamwipe", c.hostfile([n1, n2])], timeout=60)
