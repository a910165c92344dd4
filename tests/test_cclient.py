"""Differential tests: stock-liblam C clients (tests/c/kclient.c) against the
C lamd (``daemon[c]``) and against ours (``daemon[py]``), same assertions.

The clients use the kernel calls only (``_cipc_init`` + ``kattach(PRCMD)``,
then ``ksend``/``krecv``/``ksr``/``kstate``/``kdoom``/``kdetach``), never
``kinit`` (which needs the router and versiond).  Every client runs as
``lamtest`` and is started directly (setuid in the child), so the Popen pid is
the pid the kernel sees.

What the client observes (read from share/kreq and otb/sys/kernel, confirmed
against the C lamd):

* kdoom on a *blocked* client: the kernel answers the blocked request with
  ``kr_reply = EINTR, kr_signal = sigmask(sig)``; liblam runs the LAM signal
  handler (``_ksig_follow``) and, because the default ``ki_sigretry`` is
  ``~sigmask(SIGRELEASE)``, *retries* the receive transparently.  Only with
  ``ksigsetretry(0)`` does ``krecv`` return -1 with errno EINTR.
* kdoom on a *ready* (idle) client: the kernel records the signal and sends
  it ``LAM_SIGUSR`` (SIGUSR2); liblam's handler (``cipc_preempt``) makes a
  ``KQSURRENDER`` request whose reply carries ``kr_signal``, and the LAM
  signal handler runs.
* The doomer's ``kdoom`` returns 0 in both cases; ENOTPROCESS for an unknown
  pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from lamd.kernel import constants

from .lamenv import listener_pids, read_killfile

KSREADY, KSRECV = 0, 2
EINTR, EWOULDBLOCK = 4, 11
ENOTPROCESS = 0x400 + 205
PRCMD = 1095
LAM_SIGA = 7



def parse(out: str) -> dict[str, list[dict]]:
    """``KEY a=1 b=2 ...`` lines -> {KEY: [{a: 1, b: 2, ...}, ...]}."""
    res: dict[str, list[dict]] = {}
    for line in out.splitlines():
        f = line.split()
        if not f:
            continue
        kv = {}
        for i, tok in enumerate(f[1:]):
            if "=" in tok:
                k, v = tok.split("=", 1)
                try:
                    kv[k] = int(v)
                except ValueError:
                    kv[k] = v
            else:
                kv[i] = tok
        res.setdefault(f[0], []).append(kv)
    return res


class Clients:
    """Runs tests/c/kclient as lamtest in the daemon's session."""

    def __init__(self, daemon, exe):
        self.d = daemon
        self.s = daemon.s
        self.exe = exe

    def run(self, *args, timeout: float = 30) -> tuple[subprocess.CompletedProcess, dict]:
        cp = self.s.run([self.exe, *args], timeout=timeout)
        return cp, parse(cp.stdout)

    def start(self, *args) -> subprocess.Popen:
        return self.s.popen([self.exe, *args])

    def finish(self, p: subprocess.Popen, timeout: float = 30):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=10)
            pytest.fail(f"client {p.args[1:]} (pid {p.pid}) timed out after {timeout} s\n"
                        f"stdout:\n{out}\nstderr:\n{err}")
        return subprocess.CompletedProcess(p.args, p.returncode, out, err), parse(out)

    def state(self, pid: int, wait: float = 0, want: int = KSRECV) -> dict:
        cp, r = self.run("state", pid, wait, want)
        assert cp.returncode == 0 and "STATE" in r, show(cp)
        return r["STATE"][0]

    def wait_state(self, p: subprocess.Popen, want: int, wait: float = 10) -> dict:
        st = self.state(p.pid, wait, want)
        if st.get("state") != want:
            if p.poll() is not None:
                cp, _ = self.finish(p)
                pytest.fail(f"client {p.args[1:]} exited early: {show(cp)}")
            pytest.fail(f"pid {p.pid} never reached state {want} within {wait} s: {st}")
        return st


def show(cp: subprocess.CompletedProcess) -> str:
    return (f"{cp.args[1:] if len(cp.args) > 1 else cp.args} rc={cp.returncode}\n"
            f"--- stdout\n{cp.stdout}--- stderr\n{cp.stderr}")


def ok(cp: subprocess.CompletedProcess, r: dict) -> None:
    assert cp.returncode == 0 and "OK" in r and "FAIL" not in r, show(cp)


@pytest.fixture
def k(daemon, kclient):
    return Clients(daemon, kclient)


# ---------------------------------------------------------------------------

PINGPONG_ITERS = {0: 20, 64: 20, 65536: 5, 1 << 20: 3}


@pytest.mark.parametrize("size", list(PINGPONG_ITERS), ids=["0B", "64B", "64KiB", "1MiB"])
def test_pingpong(k, size):
    """Two clients bounce messages; every byte verified (pattern from size,
    iteration and direction) and every length checked on both sides."""
    iters = PINGPONG_ITERS[size]
    event = 100000 + os.getpid() % 1000 * 4
    pong = k.start("pingpong", "pong", event, iters, size)
    ping = k.start("pingpong", "ping", event, iters, size)
    for p in (ping, pong):
        cp, r = k.finish(p, timeout=60)
        ok(cp, r)
        assert r["SIZEOK"][0][0] == str(size), show(cp)


def test_many_pairs(k):
    """50 pairs ping-pong at once, each on its own events: no cross-talk,
    nobody stuck, every byte right."""
    pairs = 50
    procs = []
    for i in range(pairs):
        ev = 200000 + 4 * i
        procs.append(k.start("pingpong", "pong", ev, 5, 0, 100, 5000))
        procs.append(k.start("pingpong", "ping", ev, 5, 0, 100, 5000))
    failures = []
    for p in procs:
        cp, r = k.finish(p, timeout=90)
        if cp.returncode != 0 or "OK" not in r or len(r.get("SIZEOK", [])) != 3:
            failures.append(show(cp))
    assert not failures, f"{len(failures)} of {2 * pairs} clients failed:\n" + \
        "\n".join(failures[:5])


def test_ksr(k):
    """ksr (send then receive in one request) against a krecv/ksend server,
    50 round trips with varying lengths."""
    server = k.start("ksr", "server", 3000, 50)
    client = k.start("ksr", "client", 3000, 50)
    for p in (client, server):
        ok(*k.finish(p))


def test_ktry(k):
    """KTRY send and receive with nobody to synchronise with: EWOULDBLOCK,
    and the client is not left blocked (the second call gets answered)."""
    cp, r = k.run("ktry", 4000)
    ok(cp, r)
    assert [x["rc"] for x in r["KTRY"]] == [-1, -1], show(cp)
    assert [x["errno"] for x in r["KTRY"]] == [EWOULDBLOCK, EWOULDBLOCK], show(cp)


def test_probe_on_ksr(k):
    """KPROBE on the second half of a ksr (how LAM uses it): the probe reports
    event, type and length and consumes nothing (the sender stays blocked and
    the buffer untouched); the following real krecv gets the bytes."""
    server = k.start("probe", "server", 5000)
    client = k.start("probe", "client", 5000)
    cp, r = k.finish(client)
    ok(cp, r)
    probe = r["PROBE"][0]
    assert (probe["event"], probe["type"], probe["length"], probe["untouched"]) == \
        (1, 7, 1000, 1), show(cp)
    assert r["RECV"][0] == {"type": 7, "length": 1000}, show(cp)
    cp, r = k.finish(server)
    ok(cp, r)
    assert r["SENT"][0]["length"] == 1000, show(cp)


def test_kstate_blocked(k):
    """kstate on a receive-blocked client: state KSRECV, its priority, the
    event/type/length it waits with, no pending signal."""
    blocked = k.start("block", 6000, 3, 77)
    st = k.wait_state(blocked, KSRECV)
    assert st == {"rc": 0, "state": KSRECV, "priority": PRCMD, "event": 6000,
                  "type": 3, "length": 77, "signal": 0}
    cp, r = k.run("send", 6000, 1, 50)
    ok(cp, r)
    assert r["SENT"][0]["length"] == 50
    cp, r = k.finish(blocked)
    ok(cp, r)
    assert r["RECV"][0] == {"type": 1, "length": 50}, show(cp)


def test_kstate_missing(k):
    """kstate on a pid that is not attached: ENOTPROCESS."""
    cp, r = k.run("state", os.getpid())
    ok(cp, r)
    assert r["STATE"][0] == {"rc": -1, "errno": ENOTPROCESS}, show(cp)
    assert ENOTPROCESS == int(constants.ENOTPROCESS)


def test_kdoom_missing(k):
    """kdoom on a pid that is not attached: ENOTPROCESS."""
    cp, r = k.run("doom", os.getpid(), LAM_SIGA)
    ok(cp, r)
    assert r["DOOM"][0] == {"rc": -1, "errno": ENOTPROCESS}, show(cp)


def test_kdoom_blocked_retried(k):
    """kdoom(SIGA) on a blocked krecv with liblam's default retry mask: the
    LAM handler runs, krecv re-blocks by itself and later completes."""
    w = k.start("doomwait", 7000, "retry")
    k.wait_state(w, KSRECV)
    cp, r = k.run("doom", w.pid, LAM_SIGA)
    ok(cp, r)
    assert r["DOOM"][0] == {"rc": 0, "errno": 0}, show(cp)
    st = k.wait_state(w, KSRECV)  # blocked again, same receive
    assert (st["event"], st["length"], st["signal"]) == (7000, 64, 0), st
    cp, r = k.run("send", 7000, 0, 5)
    ok(cp, r)
    cp, r = k.finish(w)
    ok(cp, r)
    assert r["SIG"] == [{0: str(LAM_SIGA)}], show(cp)
    assert r["RECV"][0] == {"rc": 0, "errno": 0, "length": 5}, show(cp)


def test_kdoom_blocked_eintr(k):
    """kdoom(SIGA) on a blocked krecv with ksigsetretry(0): the handler runs
    and krecv fails with EINTR (the kernel replied EINTR + kr_signal)."""
    w = k.start("doomwait", 7100, "noretry")
    k.wait_state(w, KSRECV)
    cp, r = k.run("doom", w.pid, LAM_SIGA)
    ok(cp, r)
    assert r["DOOM"][0] == {"rc": 0, "errno": 0}, show(cp)
    cp, r = k.finish(w)
    ok(cp, r)
    assert r["SIG"] == [{0: str(LAM_SIGA)}], show(cp)
    assert r["RECV"][0] == {"rc": -1, "errno": EINTR, "length": -1}, show(cp)


def test_kdoom_ready(k):
    """kdoom(SIGA) on an idle (ready) client: the kernel preempts it with
    LAM_SIGUSR (SIGUSR2); liblam's handler surrenders (KQSURRENDER) and gets
    the LAM signal in kr_signal; the client's LAM handler runs."""
    w = k.start("doomready", 15)
    st = k.wait_state(w, KSREADY)
    assert st["priority"] == PRCMD, st
    t0 = time.monotonic()
    cp, r = k.run("doom", w.pid, LAM_SIGA)
    ok(cp, r)
    assert r["DOOM"][0] == {"rc": 0, "errno": 0}, show(cp)
    cp, r = k.finish(w)
    ok(cp, r)
    assert r["SIG"] == [{0: str(LAM_SIGA)}], show(cp)
    assert r["IDLE"][0] == {"got": LAM_SIGA}, show(cp)
    assert time.monotonic() - t0 < 10, "the idle client only noticed at its timeout"


def _killfile(daemon) -> list[int]:
    return read_killfile(daemon.s.killfile)


def _wait_killfile(daemon, pred, wait: float = 3.0) -> list[int]:
    deadline = time.monotonic() + wait
    while True:
        pids = _killfile(daemon)
        if pred(pids) or time.monotonic() > deadline:
            return pids
        time.sleep(0.02)


def test_killfile_tracks_clients(k, daemon):
    """The kill file holds the daemon's pid first, then one line per attached
    client; a client that detaches is dropped (LAM rewrites the file)."""
    pids = _killfile(daemon)
    assert pids, f"empty kill file {daemon.s.killfile}"
    # the first line is the kernel: the process holding the listening socket
    assert listener_pids(daemon.s.socket) == {pids[0]}, pids
    st = os.stat(f"/proc/{pids[0]}")
    assert st.st_uid == daemon.s.pw.pw_uid, "kill file's first pid is not lamtest's"
    blocked = k.start("block", 8000, 0, 10)
    k.wait_state(blocked, KSRECV)
    pids = _wait_killfile(daemon, lambda p: blocked.pid in p)
    assert blocked.pid in pids[1:], pids
    ok(*k.run("send", 8000, 0, 3))
    ok(*k.finish(blocked))
    pids = _wait_killfile(daemon, lambda p: blocked.pid not in p)
    assert blocked.pid not in pids, pids


ENOKERNEL_EXIT = (0x400 + 215) & 0xFF  # liblam exit(ENOKERNEL) on kernel EOF


def test_sigterm_hangs_up_clients(k, daemon):
    """SIGTERM to the kernel (the kill file's first pid), the same for both
    daemons: each sends SIGHUP to every attached client and goes at once; an
    idle (ready) client dies of SIGHUP, and so does a receive-blocked one
    (except that the C lamd sometimes closes the socket on it first).

    On purpose, ours then differs: it removes its socket and kill file (the
    C lamd leaves both, and a C lamd refuses to start while a kill file is
    there, ``kkillopen``'s O_EXCL; ours must never block the next start).
    LAM's ``tkill`` (what ``lamwipe`` runs) then clears the session on both.

    Harness note: the test reaps its exited clients while tkill runs; an
    unreaped zombie client makes LAM's tkill wait for it forever."""
    idle = k.start("doomready", 30)
    blocked = k.start("block", 8100, 0, 10)
    k.wait_state(idle, KSREADY)
    k.wait_state(blocked, KSRECV)
    lamd_pid = _killfile(daemon)[0]
    daemon.expect_exit = True
    t0 = time.monotonic()
    os.kill(lamd_pid, signal.SIGTERM)
    assert daemon.wait_gone(10), "the daemon is still running 10 s after SIGTERM"
    took = time.monotonic() - t0
    cp_i, r_i = k.finish(idle, timeout=10)
    cp_b, r_b = k.finish(blocked, timeout=10)
    assert cp_i.returncode == -signal.SIGHUP, show(cp_i)
    assert "IDLE" not in r_i, show(cp_i)
    if daemon.kind == "c":
        # the C lamd races its exit against its signals: a blocked client
        # sometimes sees the socket close first and exits with liblam's
        # exit(ENOKERNEL) (about 1 run in 12 here)
        assert cp_b.returncode in (-signal.SIGHUP, ENOKERNEL_EXIT), show(cp_b)
    else:
        # ours signals every client before it closes any socket: always SIGHUP
        assert cp_b.returncode == -signal.SIGHUP, show(cp_b)
    assert took < 5, f"stopping took {took:.1f} s"
    left = {p.name for p in (daemon.s.socket, daemon.s.killfile) if p.exists()}
    if daemon.kind == "c":
        assert left == {"lam-kernel-socket", "lam-killfile"}, left
    else:
        assert left == set(), left
    cp = daemon.s.run(["tkill"], timeout=40)
    assert cp.returncode == 0, show(cp)
    assert not daemon.s.session_dir.exists(), "tkill left the session directory"


def daemon_cpu(pid: int) -> float:
    """utime + stime of *pid*, seconds (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_daemon_rests_once_traffic_stops(k):
    """After a burst of round trips the daemon goes back to sleep: it uses
    (next to) no CPU while nobody talks to it. Ours keeps polling for a few
    microseconds after each message (``--busy-poll``, lamd.kernelio.loop.BusyPoll)
    and must stop when the traffic does; the C lamd sleeps in select at once.
    A daemon that kept polling would use the whole second."""
    event = 100000 + os.getpid() % 1000 * 4
    pong = k.start("pingpong", "pong", event, 3000, 64)
    ping = k.start("pingpong", "ping", event, 3000, 64)
    for p in (ping, pong):
        ok(*k.finish(p, timeout=120))
    time.sleep(0.1)
    before = daemon_cpu(k.d.pid)
    time.sleep(1.0)
    assert daemon_cpu(k.d.pid) - before < 0.1
