"""Issue 11 groundwork: test hosts (tests/netns.py) and a universe of C lamds.

* the test hosts look like a cluster: own hostname, own address, hosts file
  naming every host, ssh key login for the LAM test user from every host to
  every host with nothing on stderr and the host's own session prefix, no
  route anywhere but the test subnet; everything goes away on close, also
  when the test using them fails;
* Debian's C lamd booted by stock ``lamboot -v hostfile`` over ssh from host
  1 on three hosts: ``lamnodes``, ``tping -c 1 N`` from every host, ``lamexec
  N hostname`` (each host answers with its own name), ``lamhalt`` leaving
  nothing of the test user running on any host. These are the checks the
  issue runs on universes of ours and mixed ones: here they are shown to
  encode LAM.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from . import netns
from .netns import Cluster


def show(cp) -> str:
    return f"$ {' '.join(cp.args)} -> rc={cp.returncode}\n{cp.stdout}{cp.stderr}"


# ---------------------------------------------------------------------------
# the hosts


def test_hosts_look_like_a_cluster(hosts3: Cluster):
    c = hosts3
    names = [h.name for h in c.hosts]
    for h in c.hosts:
        cp = h.run(["hostname"])
        assert (cp.returncode, cp.stdout.strip(), cp.stderr) == (0, h.name, ""), show(cp)
        cp = h.run(["getent", "hosts", *names])
        assert cp.returncode == 0, show(cp)
        assert sorted(cp.stdout.split()) == sorted(
            [x.addr for x in c.hosts] + names), show(cp)
        cp = h.run(["ip", "-4", "-o", "addr", "show", "scope", "global"])
        assert re.findall(r"inet (\S+)", cp.stdout) == [f"{h.addr}/24"], show(cp)
        # nothing to route to but the test subnet
        cp = h.run(["ip", "-4", "route", "show"])
        assert cp.stdout.split("\n")[0].startswith(f"{c.subnet}.0/24 dev eth0"), show(cp)
        assert len(cp.stdout.strip().splitlines()) == 1, show(cp)
        # sshd listens on the host's address only
        cp = h.run(["ss", "-ltnH"], user=False)
        assert re.findall(r"\s(\S+:22)\s", cp.stdout) == [f"{h.addr}:22"], show(cp)
    # the machine's own namespace gained no address on the test subnet
    cp = os.popen("ip -4 -o addr show").read()
    assert f"{c.subnet}." not in cp


def test_ssh_between_all_hosts(hosts3: Cluster):
    c = hosts3
    ssh = c.lamrsh.split()
    for a in c.hosts:
        for b in c.hosts:
            cp = a.run([*ssh, b.name, "hostname; id -un; echo $LAM_MPI_SESSION_PREFIX"])
            assert cp.returncode == 0 and cp.stderr == "", show(cp)
            assert cp.stdout.split() == [b.name, c.pw.pw_name, str(b.prefix)], show(cp)


def test_teardown_even_when_the_test_fails(lam_user):
    class Boom(Exception):
        pass

    started: dict = {}
    with pytest.raises(Boom):
        with Cluster(2) as c:
            h = c.hosts[1]
            # a daemonised process of the test user, as hboot leaves a lamd
            cp = h.run(["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"])
            assert cp.returncode == 0, show(cp)
            started = dict(pid=int(cp.stdout), netns=[x.netns for x in c.hosts] + [c.hub],
                           dir=c.dir, sshd=[x.sshd.pid for x in c.hosts])
            assert netns.pids_in_netns(h.netns)
            raise Boom
    deadline = time.monotonic() + 5
    while Path(f"/proc/{started['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{started['pid']}").exists()
    for pid in started["sshd"]:
        assert not Path(f"/proc/{pid}").exists()
    for name in started["netns"]:
        assert not (netns.NETNS_DIR / name).exists()
        assert not (netns.ETC_NETNS / name).exists()
    assert not started["dir"].exists()


# ---------------------------------------------------------------------------
# a universe of C lamds


def test_c_universe(hosts3: Cluster):
    c = hosts3
    h1 = c.hosts[0]
    t0 = time.monotonic()
    cp = h1.run(["lamboot", "-v", c.hostfile()], timeout=60)
    assert cp.returncode == 0, show(cp)
    # -v writes its progress to stderr, and nothing else is there
    assert cp.stderr.splitlines() == [
        *(f"n-1<{pid}> ssi:boot:base:linear: booting n{i} ({h.name})"
          for i, h in enumerate(c.hosts)
          for pid in re.findall(r"^n-1<(\d+)>", cp.stderr)[:1]),
        *(f"n-1<{pid}> ssi:boot:base:linear: finished"
          for pid in re.findall(r"^n-1<(\d+)>", cp.stderr)[:1])], show(cp)
    t_boot = time.monotonic() - t0

    for i, h in enumerate(c.hosts):
        cp = h.run(["lamnodes"])
        assert cp.returncode == 0, show(cp)
        want = []
        for j, x in enumerate(c.hosts):
            flags = ",".join(f for f in ("origin" if j == 0 else "",
                                          "this_node" if j == i else "") if f)
            want.append(f"n{j}\t{x.name}:1:{flags}")
        assert cp.stdout.splitlines() == want, show(cp)

        cp = h.run(["tping", "-c", "1", "N"])
        assert cp.returncode == 0, show(cp)
        assert "1 byte from 2 remote nodes and 1 local node" in cp.stdout, show(cp)

    for h in c.hosts:
        cp = h.run(["lamexec", "N", "hostname"])
        assert cp.returncode == 0, show(cp)
        assert sorted(cp.stdout.split()) == sorted(x.name for x in c.hosts), show(cp)

    lamds = {h.name: [p for p in h.user_pids()
                      if Path(f"/proc/{p}/comm").read_text().strip() == "lamd"]
             for h in c.hosts}
    assert all(len(v) == 1 for v in lamds.values()), lamds

    cp = h1.run(["lamhalt"])
    assert cp.returncode == 0, show(cp)
    deadline = time.monotonic() + 10
    while any(h.user_pids() for h in c.hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {h.name: h.user_pids() for h in c.hosts} == {h.name: [] for h in c.hosts}
    for h in c.hosts:
        assert not (h.prefix / f"lam-{c.pw.pw_name}@{h.name}").exists()
    total = time.monotonic() - t0
    print(f"C universe of 3: lamboot {t_boot:.2f} s, all checks and lamhalt {total:.2f} s")
    assert total < 40


# ---------------------------------------------------------------------------
# our lamd booted by stock lamboot (the boot callback; no datalink yet)


def prefix_tree(c: Cluster, pkgdir: Path, name: str = "ourlam") -> Path:
    """A LAM prefix tree booting our daemon: what ``prefix=DIR`` on a boot
    schema line, or ``lamboot -prefix DIR``, makes lamboot use on a node
    (``DIR/bin/hboot -c DIR/etc/lam-conf.lamd ... -prefix DIR``): stock hboot
    and tkill, and a ``lamd`` that runs ``lamd.launch`` without site.py as
    the package's tree does, with its log in the cluster's work directory."""
    pre = c.dir / name
    (pre / "bin").mkdir(parents=True)
    (pre / "etc").mkdir()
    os.symlink("/usr/bin/hboot", pre / "bin" / "hboot")
    os.symlink("/usr/bin/tkill", pre / "bin" / "tkill")
    (pre / "bin" / "lamd").write_text(
        "#!/bin/sh\n"
        "read -r host </proc/sys/kernel/hostname\n"  # hostname(1) without a fork
        f"PYTHONPATH={pkgdir} PYTHONDONTWRITEBYTECODE=1 exec /usr/bin/python3 -S -c "
        "'import sys; from lamd.launch import main; sys.exit(main())' "
        f'"$@" 2>>{c.work}/lamd-$host.log\n')
    (pre / "etc" / "lam-conf.lamd").write_text(
        "lamd $inet_topo $debug $session_prefix $session_suffix\n")
    for p in (pre, pre / "bin", pre / "etc", pre / "bin" / "lamd"):
        p.chmod(0o755)
    (pre / "etc" / "lam-conf.lamd").chmod(0o644)
    return pre


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


@pytest.mark.parametrize("layout", ["py,py,py", "c,py,c", "py,c,c", "c,c,py"])
def test_lamboot_boots_ours(hosts3: Cluster, lamd_pkg, layout):
    """Stock lamboot boots our lamd where the boot schema names the prefix
    tree, C lamds elsewhere: our daemon takes hboot's arguments, calls
    lamboot back, receives the universe, and its router and link table then
    answer stock lamnodes exactly as the C lamd's do, on every host; each
    node answers tping and lamexec of itself by its node id (the jobs process
    knows it too). lamwipe (tkill over ssh) leaves nothing on any host."""
    c = hosts3
    kinds = layout.split(",")
    pre = prefix_tree(c, lamd_pkg)
    hf = c.work / "hostfile"
    hf.write_text("".join(f"{h.name}{f' prefix={pre}' if k == 'py' else ''}\n"
                          for h, k in zip(c.hosts, kinds)))
    hf.chmod(0o644)
    h1 = c.hosts[0]
    t0 = time.monotonic()
    cp = h1.run(["lamboot", "-v", hf], timeout=60)
    t_boot = time.monotonic() - t0
    logs = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(c.work.glob("lamd-*.log")))
    assert cp.returncode == 0, show(cp) + logs
    assert "finished" in cp.stderr, show(cp)

    for i, h in enumerate(c.hosts):
        cp = h.run(["lamnodes"])
        assert cp.returncode == 0, show(cp) + logs
        want = []
        for j, x in enumerate(c.hosts):
            flags = ",".join(f for f in ("origin" if j == 0 else "",
                                          "this_node" if j == i else "") if f)
            want.append(f"n{j}\t{x.name}:1:{flags}")
        assert cp.stdout.splitlines() == want, show(cp)
        # what each node serves itself (no datalink needed): echod and a job
        cp = h.run(["tping", "-c", "1", f"n{i}"])
        # tping marks the origin "(o)"
        want_ping = f"1 byte from n{i}" + (r" \(o\)" if i == 0 else "") + ": "
        assert cp.returncode == 0 and re.search(want_ping, cp.stdout), show(cp) + logs
        cp = h.run(["lamexec", f"n{i}", "hostname"])
        assert (cp.returncode, cp.stdout) == (0, f"{h.name}\n"), show(cp) + logs

    ports: set[str] = set()
    for i, (h, kind) in enumerate(zip(c.hosts, kinds)):
        procs = [cmdline(p) for p in h.user_pids()]
        if kind == "py":
            # ours names itself in its proctitle once serving (lamnodes was
            # served: it is); hboot's arguments are in its log
            assert len([a for a in procs
                        if a[0].startswith(f"lamd: {c.pw.pw_name}, ")]) == 1, (h.name, procs)
            log = (c.work / f"lamd-{h.name}.log").read_text()
            m = re.search(r"calling lamboot back at (\S+):(\d+) as n(\d+)", log)
            assert m and (m.group(1), m.group(3)) == (h1.addr, str(i)), log
            ports.add(m.group(2))
            assert f"universe of 3 nodes: n0 {h1.addr}:" in log, log
        else:
            argv = [a for a in procs if a[:1] == ["/usr/bin/lamd"]]
            assert len(argv) == 1, (h.name, procs)
            # what hboot passes either daemon: $inet_topo
            assert argv[0][1:9] == ["-H", h1.addr, "-P", argv[0][4], "-n", str(i),
                                    "-o", "0"], argv
            ports.add(argv[0][4])
    assert len(ports) == 1  # lamboot's one port

    cp = h1.run(["lamwipe", hf], timeout=60)
    assert cp.returncode == 0, show(cp)
    deadline = time.monotonic() + 10
    while any(h.user_pids() for h in c.hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {h.name: [cmdline(p) for p in h.user_pids()] for h in c.hosts} == {
        h.name: [] for h in c.hosts}
    for h in c.hosts:
        assert not (h.prefix / f"lam-{c.pw.pw_name}@{h.name}").exists()
    print(f"{layout}: lamboot {t_boot:.2f} s")
