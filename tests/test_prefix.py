"""Booting our daemon with stock lamboot from the installed package (issue 11,
"How users get it").

The package installs a LAM prefix tree, ``/usr/lib/lamd/lam``: ``bin/lamboot``
is lam-runtime's own (a link), ``bin/hboot`` runs lam-runtime's (or, where
the user's ``lamd-dl@.service`` waits, hands it lamboot's request at once),
``bin/lamd`` starts
``/usr/bin/lamd-kernel`` (or, where the user's ``lamd-dl@.socket`` listens,
hands hboot's arguments to it), ``bin/tkill`` runs lam-runtime's
``/usr/bin/tkill`` (or there ``lamd-tkill --keep-socket``),
``etc/lam-conf.lamd`` is LAM's process schema.
Choosing our daemon on a node is then one word of LAM's own syntax: the boot
schema line ``HOST prefix=/usr/lib/lamd/lam``, or ``lamboot -prefix
/usr/lib/lamd/lam`` for every node; lam-runtime's files are not touched, and
nodes without the word run Debian's C lamd.

Checked on test hosts (tests/netns.py) with the package built from HEAD and
installed (the ``lamd_deb`` fixture): a mixed universe (C origin, ours on the
middle node) and an all-ours one by ``-prefix``. Every host's ``lamnodes``,
``tping`` of every node (the datalink), ``lamexec N hostname``, and
``lamhalt`` leaving nothing of the test user on any host. That a node runs
ours is read from its processes: the packaged daemon names itself in its
proctitle (``lamd: USER, ...``); the C lamd is ``/usr/bin/lamd``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from . import lamenv
from .netns import Cluster, gone
from .test_multinode import cmdline, show

PREFIX = Path("/usr/lib/lamd/lam")
REPO = Path(__file__).resolve().parent.parent


def test_the_package_installs_a_lam_prefix_tree(lamd_deb):
    """What lamboot and hboot look for under a prefix, and nothing of
    lam-runtime's replaced."""
    # ours, running lam-runtime's hboot and tkill unless systemd's sockets are there
    for name in ("hboot", "tkill"):
        assert (PREFIX / "bin" / name).read_text() == \
            (REPO / "packaging" / "lam-prefix" / "bin" / name).read_text()
        assert f"exec /usr/bin/{name} \"$@\"" in (PREFIX / "bin" / name).read_text()
    assert os.path.realpath(PREFIX / "bin" / "lamboot") == "/usr/bin/lamboot"
    for name in ("hboot", "tkill", "lamboot", "lamd"):
        assert os.access(PREFIX / "bin" / name, os.X_OK), name
    # the daemon starts without site.py until it has called lamboot back (lamd.launch)
    assert '/usr/bin/python3 -I -S -c "$py.launch import main' in (PREFIX / "bin" / "lamd").read_text()
    assert (PREFIX / "etc" / "lam-conf.lamd").read_text() == \
        (REPO / "packaging" / "lam-prefix" / "etc" / "lam-conf.lamd").read_text()
    # lam-runtime's lamd and its schema are still the C ones
    owners = os.popen("dpkg -S /usr/bin/lamd /etc/lam/lam-conf.lamd").read()
    assert "lam-runtime" in owners and "lamd:" not in owners, owners


def session_lines(text: str) -> str:
    """The lines of a tree script that name LAM's session directory."""
    return text[text.index("read -r host"):text.index("\n", text.index("\nsock=") + 1) + 1]


@pytest.mark.parametrize("script", ["lamd", "tkill", "hboot"])
def test_the_trees_scripts_find_lams_session_directory_without_a_fork(script):
    """Where bin/lamd, bin/tkill and bin/hboot look for systemd's socket is
    LAM's session directory, as stock tkill names it (``tkill -d``: the kill
    file's directory), for the test user and for a uid no name service
    knows (LAM's "unknown"), with and without LAM_MPI_SESSION_PREFIX; for a
    user in /etc/passwd without forking id(1) (each fork is a millisecond
    per node on lamboot's path): here an ``id`` that fails is first in PATH.
    The three name it with the same lines."""
    text = (REPO / "packaging" / "lam-prefix" / "bin" / script).read_text()
    head = text[:text.index("\n", text.index("\nsock=") + 1) + 1]
    assert session_lines(text) == session_lines(
        (REPO / "packaging" / "lam-prefix" / "bin" / "lamd").read_text())
    pw = lamenv.ensure_user()
    with tempfile.TemporaryDirectory(prefix="lamd-prefix-") as d:
        os.chmod(d, 0o755)
        probe = Path(d) / "probe"
        probe.write_text(head + 'printf "%s\\n" "$sock"\n')
        fake = Path(d) / "bin"
        fake.mkdir()
        (fake / "id").write_text(f"#!/bin/sh\necho forked >>{d}/forks\nexit 97\n")
        (fake / "id").chmod(0o755)
        os.chmod(fake, 0o755)
        os.chmod(probe, 0o644)
        sessions = Path(d) / "sessions"
        sessions.mkdir(mode=0o1777)
        sessions.chmod(0o1777)
        for uid, fake_id in ((pw.pw_uid, True), (4242, False)):
            for prefix in (None, str(sessions)):
                env = {"PATH": f"{fake}:/usr/bin:/bin" if fake_id else "/usr/bin:/bin",
                       "HOME": "/", "TMPDIR": "/tmp"}
                if prefix:
                    env["LAM_MPI_SESSION_PREFIX"] = prefix
                who = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                       "env", "-i", *(f"{k}={v}" for k, v in env.items())]
                ours = subprocess.run([*who, "/bin/sh", str(probe)], capture_output=True,
                                      text=True, timeout=30)
                lam = subprocess.run([*who, "/usr/bin/tkill", "-d"], capture_output=True,
                                     text=True, timeout=30)
                killfile = re.search(r"got killname back: (\S+)", lam.stdout + lam.stderr)
                assert ours.returncode == 0 and killfile, (ours, lam)
                assert ours.stdout == os.path.join(os.path.dirname(killfile.group(1)),
                                                   "lamd-datalink-socket") + "\n", (uid, prefix)
        assert not (Path(d) / "forks").exists()


def user_session(d: Path, pw) -> tuple[Path, Path]:
    """A session prefix in *d* (mode 1777, as /tmp) and *pw*'s LAM session
    directory on this host in it (theirs, 0700)."""
    sessions = d / "sessions"
    sessions.mkdir()
    sessions.chmod(0o1777)
    host = Path("/proc/sys/kernel/hostname").read_text().strip()
    sdir = sessions / f"lam-{pw.pw_name}@{host}"
    sdir.mkdir(mode=0o700)
    os.chown(sdir, pw.pw_uid, pw.pw_gid)
    return sessions, sdir


def datalink_sockets(sdir: Path, pw, fifo: bool = True) -> socket.socket:
    """lamd-dl@.socket's socket and (*fifo*) FIFO in the session directory
    *sdir*, *pw*'s, as systemd makes them; the listening socket."""
    if fifo:
        os.mkfifo(sdir / "lamd-datalink-fifo", 0o600)
        os.chown(sdir / "lamd-datalink-fifo", pw.pw_uid, pw.pw_gid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sdir / "lamd-datalink-socket"))
    os.chown(sdir / "lamd-datalink-socket", pw.pw_uid, pw.pw_gid)
    sock.listen(1)
    return sock


def test_the_trees_tkill_starts_nothing_in_an_empty_systemd_session():
    """hboot -t on a node whose session is systemd's (its datalink socket
    there) and holds nothing of a daemon: the tree's tkill ends at once,
    without starting lamd-tkill (a Python start, 36 ms on lamboot's path),
    and leaves the sockets; with anything lamd-tkill would remove (here a
    stale client list, or a spare of it) it runs lamd-tkill, which removes
    it and leaves the sockets. No C-lamd side: stock tkill would remove the
    sockets systemd listens on, which is why the tree has its own tkill."""
    text = (REPO / "packaging" / "lam-prefix" / "bin" / "tkill").read_text()
    pw = lamenv.ensure_user()
    pkg = lamenv.copy_package()
    py = f"env PYTHONPATH={pkg} PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3"
    text = text.replace("exec /usr/bin/lamd-tkill", f"exec {py} -m lamd.tools.tkill")
    assert "/usr/bin/lamd-" not in text
    socks = []
    try:
        with tempfile.TemporaryDirectory(prefix="lamd-prefix-") as d:
            os.chmod(d, 0o755)
            script = Path(d) / "tkill"
            script.write_text(text)
            script.chmod(0o755)
            sessions, sdir = user_session(Path(d), pw)
            for name in ("lam-kernel-socket", "lamd-datalink-socket"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(str(sdir / name))
                s.listen(1)
                socks.append(s)
            who = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                   "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/", "TMPDIR=/tmp",
                   f"LAM_MPI_SESSION_PREFIX={sessions}"]

            def run(leftover: str | None) -> list[str]:
                if leftover:
                    (sdir / leftover).write_text("")
                    os.chown(sdir / leftover, pw.pw_uid, pw.pw_gid)
                trace = Path(d) / "trace"
                cp = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o",
                                     str(trace), *who, "/bin/sh", str(script)],
                                    capture_output=True, text=True, timeout=60)
                assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", ""), cp
                assert sorted(os.listdir(sdir)) == ["lam-kernel-socket", "lamd-datalink-socket"]
                return re.findall(r'execve\("([^"]+)"', trace.read_text())

            execs = run(None)
            assert "/usr/bin/python3" not in execs and "/bin/sh" in execs, execs
            for leftover in ("lamd-clients", "lamd-clients.spare"):
                execs = run(leftover)
                assert "/usr/bin/python3" in execs, execs
    finally:
        for s in socks:
            s.close()
        shutil.rmtree(pkg, ignore_errors=True)


@pytest.mark.parametrize("argv, fifo", [
    (["-H", "10.1.0.1", "-P", "40001", "-n", "1", "-o", "0"], True),
    (["-H", "10.1.0.1", "-P", "40001", "-n", "2", "-o", "0", "-x"], True),
    (["-H", "10.1.0.1", "-P", "40001", "-n", "1", "-o", "0", "-d"], False),
    (["-H", "10.1.0.1", "-P", "40001", "-n", "1", "-o", "0", "-sessionsuffix", "j7"], False),
    (["-H", "10.1.0.1", "-P", "40001", "-n", "1", "-o", "0", "-sessionprefix", "/tmp"], False),
    (["-H", "", "-P", "40001"], False),
    (["-H", "a\nb", "-P", "40001"], False),
    (["-H", "x" * 3100, "-P", "40001"], False),
])
def test_the_trees_lamd_writes_the_fifo_without_python(argv, fifo):
    """Where lamd-dl@.socket's FIFO is (the user's, in the session
    directory), the tree's bin/lamd writes hboot's arguments there in one
    write, exactly as the service reads them (``encode_fifo_request``), and
    exits 0 without starting Python (a start is about 9 ms per node on
    lamboot's path). Another session's request (a prefix or suffix), hboot's
    -d (the hand-off prints the service's answers), an empty argument, a
    newline or a request near PIPE_BUF: the socket's hand-off, as before
    (here a stub in the interpreter's place records it). No C-lamd side: the
    C lamd has no systemd service to hand a boot to."""
    from lamd.datalink.handoff import encode_fifo_request
    pw = lamenv.ensure_user()
    with tempfile.TemporaryDirectory(prefix="lamd-prefix-") as d:
        os.chmod(d, 0o755)
        stub = Path(d) / "python3"
        stub.write_text(f'#!/bin/sh\necho "$*" >>{d}/started\nexit 0\n')
        stub.chmod(0o755)
        (Path(d) / "started").write_text("")
        os.chown(Path(d) / "started", pw.pw_uid, pw.pw_gid)
        text = (REPO / "packaging" / "lam-prefix" / "bin" / "lamd").read_text()
        script = Path(d) / "lamd"
        script.write_text(text.replace("/usr/bin/python3", str(stub)))
        script.chmod(0o755)
        sessions, sdir = user_session(Path(d), pw)
        path = sdir / "lamd-datalink-fifo"
        sock = datalink_sockets(sdir, pw)
        rd = os.open(path, os.O_RDWR | os.O_NONBLOCK)   # as systemd holds it
        try:
            trace = Path(d) / "trace"
            cp = subprocess.run(
                ["strace", "-f", "-qq", "-e", "trace=execve,write", "-o", str(trace),
                 "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                 "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/", "TMPDIR=/tmp",
                 f"LAM_MPI_SESSION_PREFIX={sessions}", "/bin/sh", str(script), *argv],
                capture_output=True, text=True, timeout=60)
            assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", ""), cp
            try:
                got = os.read(rd, 65536)
            except BlockingIOError:
                got = b""
            started = (Path(d) / "started").read_text()
            traced = trace.read_text()
            if fifo:
                assert got == encode_fifo_request(argv), got
                assert not started, started
                assert str(stub) not in traced, traced
                writes = [ln for ln in traced.splitlines() if " write(" in ln]
                assert len(writes) == 1, traced
            else:
                assert got == b"", got
                assert "lamd.datalink.handoff" in started, started
        finally:
            os.close(rd)
            sock.close()


TOPO = ["-H", "10.1.0.1", "-P", "40001", "-n", "1", "-o", "0"]


def lamboots_hboot(tree: Path, topo: str = " ".join(TOPO), *, s: bool = True,
                   quoted: bool = False, extra: tuple = ()) -> list[str]:
    """hboot's argv as stock lamboot gives it on a node whose boot schema
    names *tree* (ssi_boot_rsh.c): its -I quoted for the remote shell, which
    takes the quotes off (*quoted*: as hboot gets it on lamboot's own node,
    where no shell comes between); *s*: -s, as for every remote node."""
    return [str(tree / "bin" / "hboot"), "-t", "-c", str(tree / "etc" / "lam-conf.lamd"),
            *extra, *(["-s"] if s else []), "-I", f'"{topo}"' if quoted else topo,
            "-prefix", str(tree)]


@pytest.mark.parametrize("case, fast", [
    ("lamboot", True),
    ("lamboot on its own node (no -s, -I in quotes)", True),
    ("lamboot -x", True),
    ("lamboot -d", False),
    ("lamboot -v", False),
    ("a session suffix", False),
    ("no -t", False),
    ("lamgrow (no -prefix, lam-runtime's schema)", False),
    ("another prefix", False),
    ("an address with a character the schema's split may not keep", False),
    ("-d inside -I", False),
    ("two blanks in -I", False),
    ("a session with a kill file", False),
    ("a session with a client list's spare", False),
    ("no FIFO (a datalink socket without one)", False),
])
def test_the_trees_hboot_hands_lamboots_request_to_a_waiting_service(case, fast):
    """Where lamd-dl@.socket's FIFO is and the session holds nothing for
    tkill to end, the tree's bin/hboot does what lam-runtime's hboot with the
    tree's tkill and lamd would do there, in one process: the request
    written to the FIFO, exactly as bin/lamd writes it, in one write, and
    exit 0, with no exec (lamboot boots node after node, and the three execs
    took longer than a waiting service takes to call back). Any other
    request (an option lamboot adds, another schema or prefix, an address
    not made of plain words) or a session with anything in it goes to
    lam-runtime's hboot with its arguments unchanged (here a stub in its
    place records them), which then runs the tree's tkill and lamd as
    before. No C-lamd side: the C lamd has no systemd service to hand a
    boot to."""
    from lamd.datalink.handoff import encode_fifo_request
    pw = lamenv.ensure_user()
    with tempfile.TemporaryDirectory(prefix="lamd-prefix-") as d:
        d = Path(d)
        d.chmod(0o755)
        stub = d / "stock-hboot"
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >>{d}/stock\n')
        stub.chmod(0o755)
        (d / "stock").write_text("")
        os.chown(d / "stock", pw.pw_uid, pw.pw_gid)
        tree = d / "lam"
        for sub in ("bin", "etc"):
            (tree / sub).mkdir(parents=True)
            (tree / sub).chmod(0o755)
        text = (REPO / "packaging" / "lam-prefix" / "bin" / "hboot").read_text()
        assert text.count("/usr/bin/hboot") >= 2, text
        (tree / "bin" / "hboot").write_text(text.replace("/usr/bin/hboot", str(stub)))
        (tree / "bin" / "hboot").chmod(0o755)
        shutil.copy(REPO / "packaging" / "lam-prefix" / "etc" / "lam-conf.lamd", tree / "etc")
        sessions, sdir = user_session(d, pw)
        path = sdir / "lamd-datalink-fifo"
        sock = datalink_sockets(sdir, pw, fifo=not case.startswith("no FIFO"))
        leftover = {"a session with a kill file": "lam-killfile",
                    "a session with a client list's spare": "lamd-clients.spare"}.get(case)
        if leftover:
            (sdir / leftover).write_text("")
        topo = ["-x", *TOPO] if case == "lamboot -x" else TOPO
        argv = {
            "lamboot": lamboots_hboot(tree),
            "lamboot on its own node (no -s, -I in quotes)": lamboots_hboot(tree, s=False,
                                                                            quoted=True),
            "lamboot -x": lamboots_hboot(tree, " ".join(topo)),
            "lamboot -d": lamboots_hboot(tree, extra=("-d",)),
            "lamboot -v": lamboots_hboot(tree, extra=("-v",)),
            "a session suffix": lamboots_hboot(tree, extra=("-sessionsuffix", "j7")),
            "no -t": [a for a in lamboots_hboot(tree) if a != "-t"],
            "lamgrow (no -prefix, lam-runtime's schema)":
                [str(tree / "bin" / "hboot"), "-t", "-c", "lam-conf.lamd", "-s", "-I",
                 " ".join(TOPO)],
            "another prefix": lamboots_hboot(tree)[:-1] + ["/usr"],
            "an address with a character the schema's split may not keep":
                lamboots_hboot(tree, "-H 10.1.0.1\t-P 40001 -n 1 -o 0"),
            "-d inside -I": lamboots_hboot(tree, " ".join(TOPO + ["-d"])),
            "two blanks in -I": lamboots_hboot(tree, " ".join(TOPO).replace(" ", "  ", 1)),
        }.get(case, lamboots_hboot(tree))
        rd = os.open(path, os.O_RDWR | os.O_NONBLOCK) if path.exists() else None
        try:
            trace = d / "trace"
            cp = subprocess.run(
                ["strace", "-f", "-qq", "-e", "trace=execve,write", "-o", str(trace),
                 "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                 "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/", "TMPDIR=/tmp",
                 f"LAM_MPI_SESSION_PREFIX={sessions}", *argv],
                capture_output=True, text=True, timeout=60)
            assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", ""), cp
            got = b""
            if rd is not None:
                try:
                    got = os.read(rd, 65536)
                except BlockingIOError:
                    pass
            stock = (d / "stock").read_text()
            traced = trace.read_text()
            execs = re.findall(r'execve\("([^"]+)"', traced)
            if fast:
                assert got == encode_fifo_request(topo), got
                assert stock == "", stock
                # setpriv, env, then the script: nothing after it
                assert execs[-1] == argv[0] and execs.count(argv[0]) == 1, execs
                writes = [ln for ln in traced.splitlines() if " write(" in ln]
                assert len(writes) == 1, traced
            else:
                assert got == b"", got
                assert stock.splitlines() == argv[1:], (stock, argv)
            if leftover:
                assert (sdir / leftover).exists()
        finally:
            if rd is not None:
                os.close(rd)
            sock.close()


def _universe(c: Cluster, argv: list, kinds: list[str]) -> None:
    h1 = c.hosts[0]
    cp = h1.run(argv, timeout=90)
    assert cp.returncode == 0, show(cp)
    n = len(c.hosts)
    for i, h in enumerate(c.hosts):
        cp = h.run(["lamnodes"])
        want = [f"n{j}\t{x.name}:1:" + ",".join(
                    f for f in ("origin" if j == 0 else "", "this_node" if j == i else "") if f)
                for j, x in enumerate(c.hosts)]
        assert (cp.returncode, cp.stdout.splitlines()) == (0, want), show(cp)
        cp = h.run(["tping", "-c", "1", "N"])
        assert cp.returncode == 0, show(cp)
        assert f"1 byte from {n - 1} remote nodes and 1 local node" in cp.stdout, show(cp)
    cp = h1.run(["lamexec", "N", "hostname"])
    assert cp.returncode == 0, show(cp)
    assert sorted(cp.stdout.split()) == sorted(h.name for h in c.hosts), show(cp)
    for h, kind in zip(c.hosts, kinds):
        procs = [cmdline(p) for p in h.user_pids()]
        ours = [a for a in procs if a and a[0].startswith(f"lamd: {c.pw.pw_name}, ")]
        theirs = [a for a in procs if a[:1] == ["/usr/bin/lamd"]]
        assert (len(ours), len(theirs)) == ((1, 0) if kind == "ours" else (0, 1)), \
            (h.name, procs)
    cp = h1.run(["lamhalt"], timeout=60)
    assert cp.returncode == 0, show(cp)
    assert gone(c.hosts) == {h.name: [] for h in c.hosts}
    for h in c.hosts:
        assert not (h.prefix / f"lam-{c.pw.pw_name}@{h.name}").exists()


def test_boot_schema_prefix_picks_ours_on_one_node(hosts3: Cluster, lamd_deb):
    c = hosts3
    kinds = ["c", "ours", "c"]
    hf = c.work / "hostfile"
    hf.write_text("".join(f"{h.name}{f' prefix={PREFIX}' if k == 'ours' else ''}\n"
                          for h, k in zip(c.hosts, kinds)))
    hf.chmod(0o644)
    _universe(c, ["lamboot", str(hf)], kinds)


def test_lamboot_prefix_picks_ours_everywhere(hosts3: Cluster, lamd_deb):
    c = hosts3
    _universe(c, ["lamboot", "-prefix", str(PREFIX), str(c.hostfile())], ["ours"] * 3)
