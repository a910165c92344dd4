"""Issue 4 acceptance: LAM's own tools and a kinit'ed liblam client against
the C lamd (``daemon[c]``) and ours (``daemon[py]``), as user ``lamtest``.

* ``tests/c/netclient.c`` starts like every LAM program (the real
  ``kinit(PRCMD)``: kattach, then ``rversion`` through the router to
  versiond; ``getnodeid()`` asks the router) and then moves messages with a
  partner: ``ksend``/``krecv``, and ``nsend``/``nrecv`` through bufferd
  (``nh_node = getnodeid()`` and ``LOCAL``) and with ``NOBUF`` (route from
  the router, ``frecv`` at the receiver), at 0 B, 64 B, 8 KiB, 8 KiB + 1
  (two packets) and 1 MiB (128 packets with ``NMORE``), every byte, the
  type, the length and ``nh_data`` verified.  With the sender started first
  and finished before the receiver even starts, bufferd must have buffered
  the whole lot.
* ``tping``, ``lamnodes`` (all flags), ``lamhalt`` (the daemon and its
  attached clients go, the session directory goes, lamhalt exits 0),
  ``lamexec``/``mpirun`` (work on the C lamd; fail fast with kenyad's stub
  on ours).

Every subprocess runs under a timeout (``Session.run``/``finish``).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from . import lamenv

HERE = Path(__file__).resolve().parent

SIZES = [0, 64, 8192, 8193, 1 << 20]
SIZE_IDS = "0B,64B,8KiB,8KiB+1,1MiB"
ENOKERNEL_EXIT = (0x400 + 215) & 0xFF  # liblam's exit(ENOKERNEL) on kernel EOF


# ---------------------------------------------------------------------------
# helpers

@pytest.fixture(scope="module")
def cprogs():
    """tests/c/netclient.c and tests/c/mpihello.c built with mpicc.lam."""
    assert shutil.which("mpicc.lam"), "mpicc.lam missing (lam4-dev): run packaging/setup.sh"
    out = Path(tempfile.mkdtemp(prefix="lamd-stocktools-", dir="/tmp"))
    out.chmod(0o755)
    exes = {}
    for name in ("netclient", "mpihello"):
        exe = out / name
        cp = subprocess.run(["mpicc.lam", "-O1", "-Wall", "-o", str(exe),
                             str(HERE / "c" / f"{name}.c")],
                            capture_output=True, text=True, timeout=120, cwd=str(out))
        if cp.returncode != 0:
            pytest.fail(f"mpicc.lam {name}.c failed (rc={cp.returncode}):\n"
                        f"{cp.stdout}{cp.stderr}")
        exe.chmod(0o755)
        exes[name] = exe
    yield exes
    shutil.rmtree(out, ignore_errors=True)


def show(cp: subprocess.CompletedProcess) -> str:
    return (f"$ {' '.join(map(str, cp.args))}  -> rc={cp.returncode}\n"
            f"--- stdout\n{cp.stdout}--- stderr\n{cp.stderr}")


def finish(p: subprocess.Popen, session: lamenv.Session,
           timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate(timeout=10)
        pytest.fail(f"{p.args} (pid {p.pid}) timed out after {timeout} s\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def lines(out: str, key: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.split()[:1] == [key]]


def ok(cp: subprocess.CompletedProcess) -> None:
    assert cp.returncode == 0 and lines(cp.stdout, "OK") and \
        not lines(cp.stdout, "FAIL"), show(cp)


def wait_until(pred, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def attached(session: lamenv.Session, pid: int) -> bool:
    """The kernel lists ``pid`` in the kill file (i.e. it is attached)."""
    return pid in lamenv.read_killfile(session.killfile)[1:]


# ---------------------------------------------------------------------------
# 1. kinit'ed client: router, versiond, kernel and network messages

def test_kinit_nodeid(daemon, cprogs):
    """kinit(PRCMD) passes the version check (versiond behind the router) and
    the router names the one node n0 as both this node and the origin."""
    cp = daemon.s.run([cprogs["netclient"], "info"], timeout=20)
    ok(cp)
    assert lines(cp.stdout, "NODE") == ["NODE id=0 origin=0"], show(cp)


PATHS = ["k", "n", "l", "nobuf"]


@pytest.mark.parametrize("path", PATHS)
def test_transfer_receiver_waiting(daemon, cprogs, path):
    """The receiver is started first and blocked (in krecv, bufferd's
    BFQRECV or frecv), then the sender sends all sizes; every byte checked."""
    s = daemon.s
    event = 31000 + PATHS.index(path)
    recv = s.popen([cprogs["netclient"], "recv", path, event, *SIZES])
    # wait until the receiver is attached (past kinit) before sending
    if not wait_until(lambda: attached(s, recv.pid) or recv.poll() is not None, 10):
        pytest.fail(f"receiver {recv.pid} never attached")
    time.sleep(0.2)
    sent = s.run([cprogs["netclient"], "send", path, event, *SIZES], timeout=60)
    got = finish(recv, s, timeout=60)
    ok(sent)
    ok(got)
    assert len(lines(sent.stdout, "SENT")) == len(SIZES), show(sent)
    assert lines(got.stdout, "RECV") == [
        f"RECV idx={i} size={n} type={i + 1}" for i, n in enumerate(SIZES)], show(got)


@pytest.mark.parametrize("path", ["n", "l"])
def test_transfer_buffered(daemon, cprogs, path):
    """The sender goes first and *finishes* (exits 0) before the receiver is
    started: bufferd must hold all five messages (1.07 MB in 133 packets,
    under its 8 MiB BFDEFSPACE) and hand them out in order, the multi-packet
    ones reassembled by nrecv."""
    s = daemon.s
    event = 32000 + (path == "l")
    sent = s.run([cprogs["netclient"], "send", path, event, *SIZES], timeout=30)
    ok(sent)
    time.sleep(0.5)
    got = s.run([cprogs["netclient"], "recv", path, event, *SIZES], timeout=30)
    ok(got)
    assert lines(got.stdout, "RECV") == [
        f"RECV idx={i} size={n} type={i + 1}" for i, n in enumerate(SIZES)], show(got)


def test_transfer_concurrent_pairs(daemon, cprogs):
    """Three pairs at once on different events and paths (one through
    bufferd, one NOBUF through the router's route, one kernel-only):
    no cross-talk."""
    s = daemon.s
    procs = []
    for i, path in enumerate(["n", "nobuf", "k"]):
        ev = 33000 + i
        procs.append(s.popen([cprogs["netclient"], "send", path, ev, *SIZES]))
        procs.append(s.popen([cprogs["netclient"], "recv", path, ev, *SIZES]))
    for p in procs:
        ok(finish(p, s, timeout=60))


# ---------------------------------------------------------------------------
# 2. tping

TPING_REPLY = re.compile(r"^\s+1 byte from n0 \(o\): \d+\.\d{3} secs$")


@pytest.mark.parametrize("where", ["N", "n0"])
def test_tping(daemon, where):
    """``tping -c 3 N|n0``: echod answers three 1-byte pings; tping prints a
    line per reply, then its summary, and exits 0."""
    cp = daemon.s.run(["tping", "-c", "3", where], timeout=20)
    assert cp.returncode == 0, show(cp)
    replies = [ln for ln in cp.stdout.splitlines() if TPING_REPLY.match(ln)]
    assert len(replies) == 3, show(cp)
    assert "3 messages, 3 bytes" in cp.stdout, show(cp)
    assert cp.stderr == "", show(cp)


# ---------------------------------------------------------------------------
# 3. lamnodes: ours against the C lamd's, host column normalised

LAMNODES_FLAGS = [[], ["-i"], ["-n"], ["-c"], ["-i", "-n", "-c"], ["n0"], ["h", "-n"],
                  ["C", "-c", "-n"]]


@contextlib.contextmanager
def booted(kind: str, lam_user, lamd_pkg):
    s = lamenv.Session(lam_user)
    d = lamenv.CDaemon(s) if kind == "c" else lamenv.PyDaemon(s, lamd_pkg)
    try:
        d.start()
        yield d
        d.stop()
        assert not d.stop_problems, f"lamd ({kind}) shutdown: {d.stop_problems}\n{d.log()}"
    finally:
        d.stop()
        s.close()


def test_lamnodes_same_as_c(lam_user, lamd_pkg):
    """Every lamnodes variant prints the same on both daemons, byte for byte.
    The C lamd's node is what one-node lamboot was given, the default boot
    schema's ``localhost``; ours, started by hand, is the same 127.0.0.1
    (lamd.iprocs.LOCALHOST), which gethostbyaddr names ``localhost``."""
    outs = {}
    for kind in ("c", "py"):
        with booted(kind, lam_user, lamd_pkg) as d:
            for flags in LAMNODES_FLAGS:
                cp = d.s.run(["lamnodes", *flags], timeout=20)
                assert cp.returncode == 0 and cp.stderr == "", f"[{kind}] " + show(cp)
                outs[kind, tuple(flags)] = cp.stdout
    for flags in LAMNODES_FLAGS:
        assert outs["py", tuple(flags)] == outs["c", tuple(flags)], flags
    # what it is, for the record (LAM's one-node format)
    assert outs["c", ()] == "n0\tlocalhost:1:origin,this_node\n"
    assert outs["c", ("-i",)] == "n0\t127.0.0.1:1:origin,this_node\n"
    assert outs["c", ("-c",)] == "n0\tlocalhost\n"
    assert outs["c", ("-n",)] == "localhost:1:origin,this_node\n"


def test_lamgrow_refuses_a_localhost_universe(lam_user, lamd_pkg):
    """lamgrow from a one-node universe at 127.0.0.1 (one-node lamboot with
    the default boot schema; ours by hand): LAM's lamgrow refuses before it
    boots anything, as the new node could not reach node 0. The same message
    and status on both daemons; nothing is started."""
    res = {}
    for kind in ("c", "py"):
        with booted(kind, lam_user, lamd_pkg) as d:
            cp = d.s.run(["lamgrow", "-v", "nosuchhost.invalid"], timeout=30)
            res[kind] = (cp.returncode, cp.stdout, cp.stderr)
            nodes = d.s.run(["lamnodes"], timeout=20)
            assert nodes.stdout == "n0\tlocalhost:1:origin,this_node\n", show(nodes)
    assert res["py"] == res["c"], res
    rc, out, err = res["c"]
    # LAM's help text lamgrow:localhost-universe
    assert rc == 1 and out == "" and "lamgrow cannot grow this universe" in err, res["c"]


# ---------------------------------------------------------------------------
# 4. lamhalt

def test_lamhalt(daemon, cprogs, kclient):
    """lamhalt stops the daemon and exits 0 itself; an attached client blocked
    in krecv and a kinit'ed one blocked in nrecv (waiting on bufferd) are
    ended (SIGHUP, or exit(ENOKERNEL) when they see the socket close first); the session directory is removed; our daemon exits 0.

    Harness note: Session.run reaps the clients while lamhalt runs (an
    unreaped zombie makes LAM's tkill wait for it forever)."""
    s = daemon.s
    blocked = s.popen([kclient, "block", 41000, 0, 10])
    nrecv = s.popen([cprogs["netclient"], "recv", "n", 41001, 64])
    for p in (blocked, nrecv):
        if not wait_until(lambda: attached(s, p.pid) or p.poll() is not None, 10):
            pytest.fail(f"{p.args} never attached")
    time.sleep(0.3)
    daemon.expect_exit = True
    lamd_pid = lamenv.read_killfile(s.killfile)[0]
    t0 = time.monotonic()
    cp = s.run(["lamhalt"], timeout=30)
    took = time.monotonic() - t0
    assert cp.returncode == 0, show(cp)
    assert took < 10, f"lamhalt took {took:.1f} s"
    for p in (blocked, nrecv):
        # SIGHUP from haltd's kill of the kill file's pids, or, if the kernel
        # socket closed first, liblam's exit(ENOKERNEL) (status 215): the C
        # lamd shows both, run to run (as in test_cclient)
        r = finish(p, s, timeout=10)
        assert r.returncode in (-signal.SIGHUP, ENOKERNEL_EXIT), show(r)
    if daemon.kind == "py":
        # our lamd is the test's child: reap it (a zombie still "exists")
        try:
            rc = s._wait_reaping(daemon.proc, 5)
        except subprocess.TimeoutExpired:
            pytest.fail("our lamd still running 5 s after lamhalt returned")
        assert rc == 0, f"our lamd exited with status {rc}"
    assert wait_until(lambda: not lamenv.pid_alive(lamd_pid), 5), "lamd still running"
    assert wait_until(lambda: not s.session_dir.exists(), 5), \
        f"session directory left: {sorted(p.name for p in s.session_dir.iterdir())}"


# ---------------------------------------------------------------------------
# 5. lamexec / mpirun: real on the C lamd, fail fast on ours

def test_lamexec(daemon):
    """``lamexec N hostname``: the same output and status on both daemons
    (ours: filed takes the stdio, flatd the argv, kenyad starts it in the
    jobs process)."""
    cp = daemon.s.run(["lamexec", "N", "hostname"], timeout=20)
    assert cp.returncode == 0, show(cp)
    assert cp.stdout.strip() == lamenv.socket.gethostname(), show(cp)
    assert cp.stderr == "", show(cp)


def test_mpirun(daemon, cprogs):
    """``mpirun -np 1 mpihello`` (``/bin/true`` is refused by mpirun even on
    the C lamd: it never calls MPI_INIT). Its rank is bound at start-up:
    lazily bound, Debian's LAM MPI fails MPI_INIT at random on either daemon
    (tests/test_jobs.py's test_long_program_path says how)."""
    cp = daemon.s.run(["mpirun", "-np", "1", cprogs["mpihello"]], timeout=30)
    assert cp.returncode == 0, show(cp)
    assert cp.stdout == "HELLO rank=0 size=1\n", show(cp)


def test_tools_still_work_after_failed_lamexec(daemon):
    """A lamexec of a program that does not exist fails the same way on
    both daemons and leaves the daemon serving: tping still answers."""
    cp = daemon.s.run(["lamexec", "N", "/nonexistent/prog"], timeout=20)
    assert cp.returncode != 0 and "/nonexistent/prog" in cp.stderr, show(cp)
    cp = daemon.s.run(["tping", "-c", "1", "n0"], timeout=20)
    assert cp.returncode == 0 and "1 byte from n0" in cp.stdout, show(cp)


# ---------------------------------------------------------------------------
# 6. lamclean, tkill

def test_lamclean(daemon):
    """lamclean: kenyad dooms processes, filed closes files, traced and
    bufferd are swept; exit 0 on both daemons."""
    cp = daemon.s.run(["lamclean", "-v"], timeout=20)
    assert cp.returncode == 0, show(cp)
    assert "killing processes" in cp.stdout and "sweeping messages" in cp.stdout, show(cp)
    cp = daemon.s.run(["tping", "-c", "1", "n0"], timeout=20)
    assert cp.returncode == 0, show(cp)


def test_tkill(daemon, request):
    """LAM's tkill (what lamwipe runs on each node) SIGHUPs every pid in the
    kill file, the daemon first, again and again (backing off) until it is
    gone, SIGKILL after about 16 s.  The C lamd dies on SIGHUP at once; so
    must ours, cleanly: exit status 0 (README), however many SIGHUPs come
    while it shuts down, leaving no session directory."""
    s = daemon.s
    daemon.expect_exit = True
    lamd_pid = lamenv.read_killfile(s.killfile)[0]
    t0 = time.monotonic()
    cp = s.run(["tkill"], timeout=40)
    took = time.monotonic() - t0
    assert cp.returncode == 0, show(cp)
    if daemon.kind == "py":
        rc = s._wait_reaping(daemon.proc, 5)
        assert rc == 0, f"our lamd ended with status {rc}"
    assert not lamenv.pid_alive(lamd_pid), "lamd survived tkill"
    assert took < 5, f"tkill took {took:.1f} s (the daemon did not go on SIGHUP)"
    assert wait_until(lambda: not s.session_dir.exists(), 5), "session directory left"
