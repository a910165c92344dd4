"""Issue 11, the datalink outside the kernel (``python3 -m lamd.datalink``,
what ``lamd-dl@.service`` runs beside the sandboxed kernel): on test hosts
(tests/netns.py) booted by stock ``lamboot``, nodes whose prefix tree starts
a kernel by hand with ``--datalink=external`` and the datalink process with
hboot's arguments (``sep``), beside C lamds (``c``) and ours with the
datalink inside (``py``):

* the kernel of a ``sep`` node has no datalink of its own (no
  ``dli_inet``/``dlo_inet``/``bforward`` rows, no UDP socket) and the
  datalink process is attached to it, the boot callback its own;
* ``lamnodes`` from every host prints the universe as the C lamds do (the
  router learnt it from the datalink process: ``RQSETROUTES``);
* ``tping`` every node from every host; ``nsend``/``nrecv`` 0 B to 300 KiB
  every byte checked between a ``sep`` node and the others, through bufferd
  and ``NOBUF``; ``lamexec N hostname`` from every host (the jobs process
  knows the node id the router learnt after it started);
* ``mpirun`` across a ``sep`` node and another on the default, TCP and
  ``lamd`` RPIs;
* ``lamhalt`` leaves nothing on any host, and so does ``lamwipe``; a second
  lamboot then works;
* under ``lamboot -x`` a killed node is given up by the separate datalinks;
* the package's prefix scripts with the sockets held as systemd would.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from . import lamenv
from .netns import Cluster, gone
from .test_datalink import build_netclient
from .test_datalink_multinode import EVENT, exchange
from .test_multinode import cmdline, prefix_tree, show

DATALINK_ROWS = ("dli_inet", "dlo_inet", "bforward")


def separate_tree(c: Cluster, pkgdir: Path, notify: Path | None = None,
                  name: str = "seplam") -> Path:
    """A LAM prefix tree whose ``lamd`` runs the kernel by hand without its
    datalink, and ``python3 -m lamd.datalink`` with hboot's arguments (what
    the package's tree hands to lamd-dl@.socket under systemd); with
    *notify*, that process's ``NOTIFY_SOCKET`` (so it keeps its state, as
    under systemd: bench/multinode.py --hop)."""
    pre = c.dir / name
    (pre / "bin").mkdir(parents=True)
    (pre / "etc").mkdir()
    os.symlink("/usr/bin/hboot", pre / "bin" / "hboot")
    os.symlink("/usr/bin/tkill", pre / "bin" / "tkill")
    (pre / "bin" / "lamd").write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH={pkgdir} PYTHONDONTWRITEBYTECODE=1\n"
        "sess=''; prev=''\n"
        "for a in \"$@\"; do case \"$prev\" in -sessionprefix|-sessionsuffix) "
        "sess=\"$sess $prev $a\";; esac; prev=$a; done\n"
        "/usr/bin/python3 -m lamd --datalink=external $sess </dev/null "
        f"2>>{c.work}/lamd-$(hostname).log &\n"
        + (f"export NOTIFY_SOCKET={notify}\n" if notify else "") +
        "exec /usr/bin/python3 -m lamd.datalink \"$@\" "
        f"2>>{c.work}/lamd-dl-$(hostname).log\n")
    (pre / "etc" / "lam-conf.lamd").write_text(
        "lamd $inet_topo $debug $session_prefix $session_suffix\n")
    for p in (pre, pre / "bin", pre / "etc", pre / "bin" / "lamd"):
        p.chmod(0o755)
    (pre / "etc" / "lam-conf.lamd").chmod(0o644)
    return pre


def logs(c: Cluster) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-5000:]}"
                   for p in sorted(c.work.glob("lamd-*.log")))


def boot(c: Cluster, pkgdir: Path, kinds: list[str]) -> Path:
    trees = {"py": prefix_tree(c, pkgdir) if "py" in kinds else None,
             "sep": separate_tree(c, pkgdir) if "sep" in kinds else None}
    hf = c.work / "hostfile"
    hf.write_text("".join(f"{h.name}{f' prefix={trees[k]}' if trees.get(k) else ''}\n"
                          for h, k in zip(c.hosts, kinds)))
    hf.chmod(0o644)
    cp = c.hosts[0].run(["lamboot", hf], timeout=60)
    assert cp.returncode == 0, show(cp) + logs(c)
    return hf


def udp_inodes(netns_pid: int) -> set[str]:
    """Socket inodes of the UDP sockets in the network namespace of *netns_pid*."""
    out = set()
    for name in ("udp", "udp6"):
        try:
            lines = Path(f"/proc/{netns_pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        out.update(ln.split()[9] for ln in lines if len(ln.split()) > 9)
    return out


def socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", t)
        if m:
            out.add(m.group(1))
    return out


def check_separate(c: Cluster, i: int, boot: int = 1) -> None:
    """Node *i*'s kernel has no datalink; its datalink process has it
    (*boot*: the how-manieth universe of this log, lamboot again included)."""
    h = c.hosts[i]
    # lamboot is done once it has sent every node the universe; the router
    # has it a moment later (LAM's dli_inet: initrouter after the universe)
    dlog_path = c.work / f"lamd-dl-{h.name}.log"
    deadline = time.monotonic() + 10
    while (dlog_path.read_text().count(f"serving node n{i} of") < boot
           and time.monotonic() < deadline):
        time.sleep(0.05)
    procs = {p: cmdline(p) for p in h.user_pids()}
    kernels = [p for p, a in procs.items() if a[:1] and a[0].startswith(f"lamd: {c.pw.pw_name}")]
    dls = [p for p, a in procs.items() if a[:1] and a[0].startswith("lamd-datalink: ")]
    assert len(kernels) == 1 and len(dls) == 1, (h.name, procs)
    assert procs[dls[0]][0] == f"lamd-datalink: n{i}", procs
    udp = udp_inodes(h.anchor)
    assert not socket_inodes(kernels[0]) & udp, "the kernel has a UDP socket"
    assert len(socket_inodes(dls[0]) & udp) == 2, "dli's and dlo's sockets"
    klog = (c.work / f"lamd-{h.name}.log").read_text()
    m = re.findall(r"boot table: internal (.*)", klog)
    assert m and not set(DATALINK_ROWS) & set(m[-1].split(", ")), klog
    assert "diforward" in m[-1].split(", "), klog   # dli's frames, each handed on once
    assert "doforward" in m[-1].split(", "), klog   # dlo's packets, none lost in a crash
    dlog = (c.work / f"lamd-dl-{h.name}.log").read_text()
    assert f"calling lamboot back at {c.hosts[0].addr}:" in dlog, dlog
    assert re.search(rf"serving node n{i} of {len(c.hosts)}", dlog), dlog
    assert re.search(rf"router: this node is now n{i}", klog) or i == 0, klog


def reexec_keeps_the_universe(c: Cluster, i: int) -> None:
    """SIGUSR1 to node *i*'s kernel (its datalink a separate process): the
    re-exec (what `systemctl reload` and a package upgrade do, issue 12)
    carries the universe the datalink gave the router, so the node is still
    n*i* of the universe: lamnodes there, tping from there and to it."""
    h = c.hosts[i]
    klog = c.work / f"lamd-{h.name}.log"
    before = klog.read_text().count("re-exec: restored")
    procs = {p: cmdline(p) for p in h.user_pids()}
    (kpid,) = [p for p, a in procs.items() if a[:1] and a[0].startswith(f"lamd: {c.pw.pw_name}")]
    os.kill(kpid, signal.SIGUSR1)
    deadline = time.monotonic() + 20
    while klog.read_text().count("re-exec: restored") == before:
        assert time.monotonic() < deadline, klog.read_text()[-3000:]
        time.sleep(0.05)
    assert "re-exec refused" not in klog.read_text()
    cp = h.run(["lamnodes"])
    assert cp.returncode == 0 and f"n{i}\t{h.name}:1:this_node" in cp.stdout.splitlines(), \
        show(cp) + logs(c)
    for x in (h, c.hosts[0]):
        cp = x.run(["tping", "-c", "1", "N"], timeout=30)
        assert cp.returncode == 0 and "2 remote nodes" in cp.stdout, show(cp) + logs(c)


@pytest.mark.parametrize("layout", ["sep,sep,sep", "c,sep,py", "sep,c,py"])
def test_separate_datalink_universe(hosts3: Cluster, lamd_pkg, layout):
    c = hosts3
    kinds = layout.split(",")
    exe = build_netclient(c.work)
    hf = boot(c, lamd_pkg, kinds)
    halted = False
    try:
        for i, k in enumerate(kinds):
            if k == "sep":
                check_separate(c, i)
        for i, h in enumerate(c.hosts):
            cp = h.run(["lamnodes"])
            want = []
            for j, x in enumerate(c.hosts):
                flags = ",".join(f for f in ("origin" if j == 0 else "",
                                              "this_node" if j == i else "") if f)
                want.append(f"n{j}\t{x.name}:1:{flags}")
            assert cp.returncode == 0 and cp.stdout.splitlines() == want, show(cp) + logs(c)
            cp = h.run(["tping", "-c", "1", "N"], timeout=30)
            assert cp.returncode == 0, f"from n{i}: " + show(cp) + logs(c)
            assert "1 byte from 2 remote nodes and 1 local node" in cp.stdout, show(cp)
            cp = h.run(["lamexec", "N", "hostname"], timeout=30)
            assert cp.returncode == 0, f"from n{i}: " + show(cp) + logs(c)
            assert sorted(cp.stdout.split()) == sorted(x.name for x in c.hosts), show(cp)
        sep = kinds.index("sep")
        other = (sep + 1) % 3
        for src, dst in ((sep, other), (other, sep)):
            exchange(c, exe, src, dst, "n")
            exchange(c, exe, src, dst, "nobuf")
        cp = c.hosts[0].run(["lamhalt"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        halted = True
        assert gone(c.hosts) == {h.name: [] for h in c.hosts}, logs(c)
        for h in c.hosts:
            d = h.prefix / f"lam-{c.pw.pw_name}@{h.name}"
            assert not d.exists(), (d, list(d.iterdir()))
    finally:
        if not halted:
            c.hosts[0].run(["lamwipe", hf], timeout=60)


def test_lamnodes_right_after_lamboot_sees_the_whole_universe(hosts3: Cluster, lamd_pkg):
    """lamboot sends each node the universe and returns without waiting;
    a node whose datalink is separate gives its router the universe a
    moment later (LAM's own lamd cannot be asked before its boot is over:
    a tool cannot connect to it yet). lamboot run on the node it boots
    last, then lamnodes at once on that node, the widest window there is:
    all three nodes are listed, because a LAM tool's start (exec, kattach,
    rversion) takes longer than the datalink process's initrouter. A
    router that held other processes' questions during a boot was built
    and measured against this test (2 runs with it, 4 without, all listing
    the three nodes) and taken out again (ce54661): it guarded
    nothing observable and would stall tools for the boot's timeout when a
    boot fails."""
    c = hosts3
    sep = separate_tree(c, lamd_pkg)
    order = [c.hosts[1], c.hosts[2], c.hosts[0]]   # the origin last
    hf = c.work / "hostfile-last"
    hf.write_text("".join(f"{h.name} prefix={sep}\n" for h in order))
    hf.chmod(0o644)
    halted = False
    try:
        # the marker on stderr says which of the two a timeout caught (one run
        # in many hit the 60 s limit once, with every node logging "serving")
        cp = c.hosts[0].run(["sh", "-c", f"lamboot {hf} && echo lamboot returned >&2 && "
                                         "exec lamnodes"], timeout=60)
        assert cp.returncode == 0, show(cp) + logs(c)
        nodes = [ln.split(":")[0] for ln in cp.stdout.splitlines() if re.match(r"n\d+\t", ln)]
        assert nodes == [f"n{i}\t{h.name}" for i, h in enumerate(order)], show(cp) + logs(c)
        cp = c.hosts[0].run(["lamhalt"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        halted = True
        assert gone(c.hosts) == {h.name: [] for h in c.hosts}, logs(c)
    finally:
        if not halted:
            c.hosts[0].run(["lamwipe", hf], timeout=60)


def test_separate_datalink_mpirun_lamwipe_and_boot_again(hosts3: Cluster, lamd_pkg):
    """mpirun across a sep node (n0, the origin) and a C lamd's (n1) on the
    default, TCP and lamd RPIs; lamwipe (stock tkill over ssh: the kill
    file's processes, the datalink process among them) leaves nothing, and
    the next lamboot of the same hosts works."""
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
        kinds = ["sep", "c", "sep"]
        hf = boot(c, lamd_pkg, kinds)
        wiped = False
        try:
            for rpi in ([], ["-ssi", "rpi", "tcp"], ["-ssi", "rpi", "lamd"]):
                cp = c.hosts[0].run(["mpirun", "-np", "2", *rpi, str(exe), "20",
                                     "0", "64", "8192", "16384"], timeout=120)
                assert cp.returncode == 0 and cp.stdout.endswith("PP OK\n"), \
                    f"{rpi}: " + show(cp) + logs(c)
            reexec_keeps_the_universe(c, 2)
            cp = c.hosts[0].run(["mpirun", "n0,2", "-ssi", "rpi", "lamd", str(exe), "20",
                                 "0", "64", "8192"], timeout=120)
            assert cp.returncode == 0 and cp.stdout.endswith("PP OK\n"), show(cp) + logs(c)
            cp = c.hosts[0].run(["lamwipe", hf], timeout=60)
            assert cp.returncode == 0, show(cp)
            wiped = True
            assert gone(c.hosts) == {h.name: [] for h in c.hosts}, logs(c)
            cp = c.hosts[0].run(["lamboot", hf], timeout=60)
            assert cp.returncode == 0, show(cp) + logs(c)
            wiped = False
            check_separate(c, 2, boot=2)
            cp = c.hosts[2].run(["tping", "-c", "1", "N"], timeout=30)
            assert cp.returncode == 0, show(cp) + logs(c)
            cp = c.hosts[0].run(["lamhalt"], timeout=30)
            assert cp.returncode == 0, show(cp) + logs(c)
            wiped = True
            assert gone(c.hosts) == {h.name: [] for h in c.hosts}, logs(c)
        finally:
            if not wiped:
                c.hosts[0].run(["lamwipe", hf], timeout=60)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# the package's prefix tree on a node whose sockets are "systemd's"


REPO = Path(__file__).resolve().parent.parent


def prefix_script(name: str, pkgdir: Path, root: Path = REPO) -> str:
    """*root*'s ``packaging/lam-prefix/bin/NAME`` as shipped, with the
    installed commands swapped for the modules copied in *pkgdir*."""
    py = f"env PYTHONPATH={pkgdir} PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3"
    text = (root / "packaging" / "lam-prefix" / "bin" / name).read_text()
    text = (text.replace("/usr/bin/python3 -I", py)
            .replace("exec systemd-cat --identifier=lamd /usr/bin/lamd-kernel",
                     f"exec {py} -m lamd")
            .replace("exec /usr/bin/lamd-kernel", f"exec {py} -m lamd")
            .replace("exec /usr/bin/lamd-tkill", f"exec {py} -m lamd.tools.tkill"))
    assert "/usr/bin/lamd-" not in text, text
    return text


def datalink_command(pkgdir: Path, root: Path = REPO) -> str:
    """The interpreter's arguments that run the datalink as lamd-dl@.service
    does (*root*'s packaging/lamd-dl-start, python3 -IS), with the modules
    copied in *pkgdir* first on its path (the starter copied there, where
    the test user can read it); a checkout without the starter (before
    9847495): ``-m lamd.datalink``."""
    src = root / "packaging" / "lamd-dl-start"
    if not src.exists():
        return "-m lamd.datalink"
    starter = pkgdir / src.name
    shutil.copy(src, starter)
    starter.chmod(0o644)
    return "-I -S -c " + shlex.quote(
        f"import sys; sys.path.insert(0, {str(pkgdir)!r}); "
        f"exec(compile(open({str(starter)!r}).read(), 'lamd-dl-start', 'exec'))")


def systemd_like_tree(c: Cluster, pkgdir: Path, stock_log: Path | None = None,
                      stock_hboot: bool = False, tree: str = "pkglam") -> Path:
    """The package's prefix tree (packaging/lam-prefix: bin/hboot, bin/lamd
    and bin/tkill as shipped), with the installed commands swapped for the
    source tree's; with *stock_log*, each time bin/hboot runs lam-runtime's
    hboot is a line there (the host's name); *stock_hboot*: lam-runtime's
    hboot itself (the tree before it had its own)."""
    src = REPO / "packaging" / "lam-prefix"
    pre = c.dir / tree
    (pre / "bin").mkdir(parents=True)
    (pre / "etc").mkdir()
    if stock_hboot:
        os.symlink("/usr/bin/hboot", pre / "bin" / "hboot")
    for name in ("lamd", "tkill") if stock_hboot else ("hboot", "lamd", "tkill"):
        text = prefix_script(name, pkgdir)
        if name == "hboot" and stock_log:
            (pre / "stock-hboot").write_text("#!/bin/sh\nread -r host </proc/sys/kernel/hostname\n"
                                             f'echo "$host" >>{stock_log}\n'
                                             'exec /usr/bin/hboot "$@"\n')
            (pre / "stock-hboot").chmod(0o755)
            text = text.replace("/usr/bin/hboot", str(pre / "stock-hboot"))
        (pre / "bin" / name).write_text(text)
        (pre / "bin" / name).chmod(0o755)
    shutil.copy(src / "etc" / "lam-conf.lamd", pre / "etc" / "lam-conf.lamd")
    for p in (pre, pre / "bin", pre / "etc"):
        p.chmod(0o755)
    (pre / "etc" / "lam-conf.lamd").chmod(0o644)
    return pre


class SocketUnits:
    """lamd@USER.socket and lamd-dl@USER.socket by hand on host *h*
    (tests/sockact.py): the kernel and the datalink process started by a
    connection to their socket, again after each exit, as systemd's."""

    def __init__(self, c: Cluster, h, pkgdir: Path, fifo: bool = True,
                 start: bool = False) -> None:
        self.c, self.h = c, h
        self.dir = h.prefix / f"lam-{c.pw.pw_name}@{h.name}"
        #: the datalink socket's ListenFIFO= too (lamd-dl@.socket's since
        #: it has one); without it the tree's bin/lamd hands every boot to
        #: the socket (a unit from before)
        self.fifo = fifo
        self.files = sorted(["lam-kernel-socket", "lamd-datalink-socket"]
                            + (["lamd-datalink-fifo"] if fifo else []))
        cp = h.run(["mkdir", "-p", "-m", "700", self.dir])
        assert cp.returncode == 0, show(cp)
        act = Path(__file__).resolve().parent / "sockact.py"
        env = h.env({"PYTHONPATH": str(pkgdir), "PYTHONDONTWRITEBYTECODE": "1"})
        self.procs = []
        for sock, cmd, log, opts in (
                ("lam-kernel-socket", "-m lamd", f"lamd-{h.name}.log", []),
                ("lamd-datalink-socket", datalink_command(pkgdir), f"lamd-dl-{h.name}.log",
                 # lamd-dl@.service's Restart=always and descriptor store
                 ["--restart-always"] + (["--start"] if start else [])
                 + (["--fifo", self.dir / "lamd-datalink-fifo"] if fifo else []))):
            sh = f"exec /usr/bin/python3 {cmd} 2>>{c.work}/{log}"
            self.procs.append(h.popen(["/usr/bin/python3", act, *opts, self.dir / sock,
                                       "/bin/sh", "-c", sh], timeout=None, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not all((self.dir / s).exists() for s in self.files):
            assert time.monotonic() < deadline, "sockact did not listen"
            time.sleep(0.05)
        self.pids = {p.pid for p in self.procs}

    def user_pids(self) -> list[int]:
        """The test user's processes on the host but the socket holders
        (and their nsenter/setpriv wrappers) and the datalink service
        waiting for the next boot (:meth:`waiters`)."""
        out = []
        waiting = set(self.waiters())
        for p in self.h.user_pids():
            a = cmdline(p)
            if not any(x.endswith("sockact.py") for x in a) and p not in waiting:
                out.append(p)
        return out

    def wait_waiting(self, timeout: float = 30.0) -> int:
        """The one datalink service waiting for lamboot, once it waits."""
        deadline = time.monotonic() + timeout
        while len(w := self.waiters()) != 1:
            assert time.monotonic() < deadline, [cmdline(p) for p in self.h.user_pids()]
            time.sleep(0.02)
        return w[0]

    def waiters(self) -> list[int]:
        """The datalink service waiting for lamboot (``Restart=always``
        after a universe: started again, everything imported, no request
        yet), a child of the socket holder as of systemd."""
        holders = {p for p in self.h.user_pids()
                   if any(x.endswith("sockact.py") for x in cmdline(p))}
        return [p for p in self.h.user_pids()
                if cmdline(p)[:1] == ["lamd-datalink: waiting for lamboot"]
                and lamenv.ppid(p) in holders]

    def close(self) -> None:
        for p in self.procs:
            for q in self.h.user_pids():
                if any(x.endswith("sockact.py") for x in cmdline(q)):
                    os.kill(q, 15)
            p.wait(10)


def serves(c: Cluster, i: int, boot: int) -> None:
    """The universe, node *i*'s datalink a separate process (*boot*: the
    how-manieth universe of its log): lamnodes and tping from every host,
    lamexec on every node."""
    check_separate(c, i, boot)
    for j, x in enumerate(c.hosts):
        cp = x.run(["lamnodes"])
        assert cp.returncode == 0 and len(cp.stdout.splitlines()) == 3, show(cp) + logs(c)
        assert cp.stdout.splitlines()[j].endswith("this_node"), show(cp)
        cp = x.run(["tping", "-c", "1", "N"], timeout=30)
        assert cp.returncode == 0, f"from n{j}: " + show(cp) + logs(c)
    cp = c.hosts[0].run(["lamexec", "N", "hostname"], timeout=30)
    assert cp.returncode == 0, show(cp) + logs(c)
    assert sorted(cp.stdout.split()) == sorted(x.name for x in c.hosts), show(cp)


def nothing_left_but_sockets(c: Cluster, h, units: SocketUnits) -> None:
    """No process of the test user on any host but the socket holders; the
    session directory of *h* holds the sockets and the FIFO only (they are
    systemd's); the datalink service of *h* waits for the next boot, one
    process (``Restart=always``)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = {x.name: (units.user_pids() if x is h else x.user_pids()) for x in c.hosts}
        if not any(left.values()) and len(units.waiters()) == 1:
            break
        time.sleep(0.1)
    assert not any(left.values()), ({k: [cmdline(p) for p in v] for k, v in left.items()},
                                     logs(c))
    assert len(units.waiters()) == 1, ([cmdline(p) for p in h.user_pids()], logs(c))
    assert sorted(p.name for p in units.dir.iterdir()) == units.files


def test_package_prefix_with_systemd_sockets(hosts3: Cluster, lamd_pkg):
    """The package's prefix tree on a node where the user's lamd@.socket and
    lamd-dl@.socket listen (here by hand, tests/sockact.py; under systemd
    see tests/system): stock lamboot's hboot runs the tree's tkill (ours,
    keeping the sockets) and lamd (the arguments handed to the datalink
    socket); the datalink process calls lamboot back and its connect starts
    the kernel, which leaves the datalink to it. The universe works from
    every host; a second boot request meanwhile is refused with a status;
    a second lamboot while the first universe is up replaces it; lamhalt
    leaves nothing but the sockets and the datalink service started again
    to wait for the next boot (Restart=always), whose process then serves
    the next lamboot's universe; lamwipe too."""
    c = hosts3
    h = c.hosts[1]
    exe = build_netclient(c.work)
    units = SocketUnits(c, h, lamd_pkg)
    stock = c.work / "stock-hboot"
    stock.write_text("")
    os.chown(stock, c.pw.pw_uid, c.pw.pw_gid)
    pre = systemd_like_tree(c, lamd_pkg, stock_log=stock)
    ptree = prefix_tree(c, lamd_pkg)
    hf = c.work / "hostfile"
    hf.write_text(f"{c.hosts[0].name}\n{h.name} prefix={pre}\n{c.hosts[2].name} prefix={ptree}\n")
    hf.chmod(0o644)

    def universe(boot: int) -> None:
        serves(c, 1, boot)

    def nothing_left() -> None:
        nothing_left_but_sockets(c, h, units)

    try:
        cp = c.hosts[0].run(["lamboot", hf], timeout=90)
        assert cp.returncode == 0, show(cp) + logs(c)
        universe(1)
        dlog = c.work / f"lamd-dl-{h.name}.log"
        # the tree's bin/hboot wrote the request to the FIFO (no Python, and
        # neither lam-runtime's hboot nor the tree's tkill and lamd: nothing
        # in the session to end)
        assert "boot request (FIFO): -H" in dlog.read_text(), logs(c)
        assert stock.read_text() == "", stock.read_text()
        for src, dst in ((1, 0), (2, 1)):
            exchange(c, exe, src, dst, "n")
        # a boot request while the universe is served: refused, honestly
        cp = h.run(["env", f"PYTHONPATH={lamd_pkg}", "/usr/bin/python3", "-m",
                    "lamd.datalink.handoff", "-H", c.hosts[0].addr, "-P", "1", "-n", "1"])
        assert cp.returncode == 1 and "in a universe already" in cp.stderr, show(cp)
        # one in the FIFO: dropped (nobody to answer there), said in the log
        cp = h.run(["sh", "-c", "printf '%s\\0' 'LAMD-DATALINK 1' -H 10.9.9.9 -P 1 -n 1 '' "
                                f"1<>{units.dir / 'lamd-datalink-fifo'}"])
        assert cp.returncode == 0, show(cp)
        deadline = time.monotonic() + 10
        while "a boot request in the FIFO dropped (39 bytes): node n1" not in dlog.read_text():
            assert time.monotonic() < deadline, logs(c)
            time.sleep(0.05)
        # lamboot again while it is up: hboot -t's tkill ends it, then a new one
        first = [p for p in units.user_pids()]
        cp = c.hosts[0].run(["lamboot", hf], timeout=90)
        assert cp.returncode == 0, show(cp) + logs(c)
        assert not set(first) & set(units.user_pids())
        # a universe to end: lam-runtime's hboot, whose -t runs the tree's tkill
        assert stock.read_text().split() == [h.name], stock.read_text()
        universe(2)
        cp = c.hosts[0].run(["lamhalt"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        nothing_left()
        # the next boot is the waiting datalink process's: it calls back at
        # once (no interpreter to start) and serves the universe
        (waiter,) = units.waiters()
        cp = c.hosts[0].run(["lamboot", hf], timeout=90)
        assert cp.returncode == 0, show(cp) + logs(c)
        universe(3)
        assert cmdline(waiter)[:1] == ["lamd-datalink: n1"], logs(c)
        assert stock.read_text().split() == [h.name], stock.read_text()
        cp = c.hosts[0].run(["lamwipe", hf], timeout=60)
        assert cp.returncode == 0, show(cp) + logs(c)
        nothing_left()
    finally:
        c.hosts[0].run(["lamwipe", hf], timeout=60)
        units.close()
    assert gone(c.hosts) == {x.name: [] for x in c.hosts}


def datalink_pid(c: Cluster, units: SocketUnits, i: int) -> int:
    (pid,) = [p for p in units.user_pids() if cmdline(p)[:1] == [f"lamd-datalink: n{i}"]]
    return pid


def test_a_killed_datalink_process_goes_on_with_what_it_kept(hosts3: Cluster, lamd_pkg):
    """Issue 11: node n1's datalink process (its sockets "systemd's", here
    tests/sockact.py --restart-always: Restart= and a descriptor store,
    as lamd-dl@.service) is SIGKILLed while two streams of nsend packets
    cross it: one from n0 through its dli, one to n0 through its dlo (25 MB
    each: 300 KiB, 8 KiB, 64 B and 20,000 B messages in turn). Started again
    from what it kept (dli's and dlo's sockets, the universe, the links'
    sequence numbers, the frames not acked, the counter of the last packet
    it took from the kernel), the node goes on as n1: every message of both
    streams arrives, in order, every byte checked. Inbound, dli acks a frame
    only once handed on to the kernel's diforward, so what the dead process
    had not handed on, n0's dlo sends again, and diforward drops a frame
    handed on twice. Outbound, the kernel's doforward gives the next dlo
    the packets the dead one may not have kept, and dlo takes each packet
    once. Then nsend/nrecv of 0 B to 300 KiB both ways, lamnodes, tping and
    lamexec from every host; lamhalt ends the universe (exit 0: started
    again with an empty store, to wait for the next boot) and leaves nothing
    else. Without the keeping the restarted process
    would have no universe (it waits for a boot request) and the streams
    would hang; without doforward the outbound stream lost a packet written
    to the dead dlo's connection (it hung in one run of three)."""
    c = hosts3
    h = c.hosts[1]
    exe = build_netclient(c.work)
    # a unit without the FIFO (before it had one): lamboot's boots go through
    # the socket's hand-off here, which the test above no longer takes
    units = SocketUnits(c, h, lamd_pkg, fifo=False)
    pre = systemd_like_tree(c, lamd_pkg)
    ptree = prefix_tree(c, lamd_pkg)
    hf = c.work / "hostfile"
    hf.write_text(f"{c.hosts[0].name}\n{h.name} prefix={pre}\n{c.hosts[2].name} prefix={ptree}\n")
    hf.chmod(0o644)
    procs = []
    try:
        cp = c.hosts[0].run(["lamboot", hf], timeout=90)
        assert cp.returncode == 0, show(cp) + logs(c)
        serves(c, 1, 1)
        assert "boot request: -H" in (c.work / f"lamd-dl-{h.name}.log").read_text(), logs(c)
        first = datalink_pid(c, units, 1)
        sizes = [str(n) for n in [300 * 1024, 8192, 64, 20000] * 80]
        outs = []
        # (receiving host, sending host, the receiver's node): in through
        # n1's dli, out through its dlo
        # both receivers first, then both senders at once: neither stream
        # has a head start, so neither is over before the other is under way
        # (with the senders 0.6 s apart, the first 26 MB could all arrive
        # before the second stream's 20th message: the kill came too late)
        streams = (("in", h, c.hosts[0], 1), ("out", c.hosts[0], h, 0))
        for name, rh, _sh, node in streams:
            recv_out = c.work / f"stream-{name}-recv.out"
            outs.append(recv_out)
            procs.append(rh.popen(["sh", "-c", f"exec {exe} recv n {EVENT + node} "
                                               f"{' '.join(sizes)} >{recv_out} 2>&1"], timeout=120))
        time.sleep(0.3)   # the receives are posted (bufferd would keep the packets anyway)
        for name, _rh, sh, node in streams:
            send_out = c.work / f"stream-{name}-send.out"
            outs.append(send_out)
            procs.append(sh.popen(
                ["sh", "-c", f"exec {exe} send n {EVENT + node} {' '.join(sizes)} >{send_out} 2>&1"],
                timeout=120, env=sh.env({"NETCLIENT_NODE": str(node)})))
        recvs = outs[:2]   # procs and outs: both receivers, then both senders

        def tails() -> str:
            return "".join(f"{o.name}: {o.read_text()[-400:]}\n" for o in outs)

        deadline = time.monotonic() + 20
        while min(r.read_text().count("RECV ") for r in recvs) < 20:   # well under way
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                tails() + logs(c)
            time.sleep(0.02)
        os.kill(first, signal.SIGKILL)
        got_then = [r.read_text().count("RECV ") for r in recvs]
        dlog = c.work / f"lamd-dl-{h.name}.log"
        deadline = time.monotonic() + 20
        while True:
            text = dlog.read_text()
            if ("started again after a crash" in text
                    and "serving node n1 of 3" in text.split("started again after a crash")[1]):
                break
            assert time.monotonic() < deadline, logs(c)
            time.sleep(0.05)
        assert datalink_pid(c, units, 1) != first
        for p, out in zip(procs, outs):
            try:
                rc = p.wait(100)
            except subprocess.TimeoutExpired:
                rc = None
            assert rc == 0, f"netclient: {rc}\n" + out.read_text()[-600:] + tails() + logs(c)
        assert max(got_then) < len(sizes), "a stream was over before the kill"
        for r in recvs:
            got = r.read_text()
            assert [ln for ln in got.splitlines() if ln.startswith("RECV ")] == [
                f"RECV idx={i} size={n} type={i + 1}" for i, n in enumerate(sizes)], got[-2000:]
            assert got.splitlines()[-1] == "OK", got[-500:]
        serves(c, 1, 2)
        for src, dst in ((1, 0), (0, 1), (2, 1), (1, 2)):
            exchange(c, exe, src, dst, "n")
        cp = c.hosts[0].run(["lamhalt"], timeout=30)
        assert cp.returncode == 0, show(cp) + logs(c)
        nothing_left_but_sockets(c, h, units)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        c.hosts[0].run(["lamwipe", hf], timeout=60)
        units.close()
    assert gone(c.hosts) == {x.name: [] for x in c.hosts}
