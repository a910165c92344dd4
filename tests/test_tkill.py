"""Unit tests for lamd.tools.tkill: kill-file parsing, pid-reuse safety, cleanup."""

from __future__ import annotations

import errno
import functools
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from lamd.tools import tkill

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn(ignore_hup: bool = False) -> subprocess.Popen:
    code = "import signal,time\n"
    if ignore_hup:
        code += "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    code += "print('up', flush=True)\nwhile True: time.sleep(1)\n"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "up\n"
    return p


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []

    def make(**kw):
        p = spawn(**kw)
        started.append(p)
        return p

    yield make
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def write_session(d, daemon_pid, clients, starttimes=None):
    (d / "lam-killfile").write_text("".join(f"{p}\n" for p in [daemon_pid] + clients))
    if starttimes is not None:
        (d / "lamd-clients").write_text("".join(f"{p} {s}\n" for p, s in starttimes.items()))
    return str(d / "lam-killfile")


def start_of(pid):
    return tkill.proc_stat(pid)[0]


def test_read_killfile_like_fscanf(tmp_path):
    f = tmp_path / "k"
    f.write_text("100\n200\n  300\nfoo\n400\n")
    assert tkill.read_killfile(str(f)) == [100, 200, 300]


def test_read_clients(tmp_path):
    f = tmp_path / "c"
    f.write_text("10 555\nbad line\n11 0\n")
    assert tkill.read_clients(str(f)) == {10: 555, 11: 0}
    assert tkill.read_clients(str(tmp_path / "none")) == {}


def test_proc_stat_parses_names_with_parens():
    st, uid = tkill.proc_stat(os.getpid())
    assert st > 0 and uid == os.getuid()
    assert tkill.proc_stat(2 ** 22 + 12345) is None


def test_kills_clients_and_removes_files_systemd_mode(tmp_path, procs):
    a, b = procs(), procs(ignore_hup=True)
    kf = write_session(tmp_path, os.getpid(),
                       [a.pid, b.pid], {a.pid: start_of(a.pid), b.pid: start_of(b.pid)})
    (tmp_path / "lam-kernel-socket").write_text("")   # stands in for systemd's socket
    (tmp_path / "lamd-reload").write_text("1 0 started\n")
    rc = tkill.tkill(kf, systemd=True, timeout=0.5)
    assert rc == 0
    assert a.wait(timeout=5) == -signal.SIGHUP
    assert b.wait(timeout=5) == -signal.SIGKILL      # ignored SIGHUP
    assert not os.path.exists(kf) and not (tmp_path / "lamd-clients").exists()
    assert not (tmp_path / "lamd-reload").exists()
    assert (tmp_path / "lam-kernel-socket").exists()  # systemd's socket untouched


def test_never_signals_reused_pid(tmp_path, procs):
    victim = procs()
    # Recorded start time differs: the pid now belongs to another process.
    kf = write_session(tmp_path, os.getpid(), [victim.pid],
                       {victim.pid: start_of(victim.pid) - 1})
    assert tkill.tkill(kf, systemd=True, timeout=0.2) == 0
    time.sleep(0.2)
    assert victim.poll() is None
    assert not os.path.exists(kf)


def test_without_lamd_clients_uses_kill_file_mtime(tmp_path, procs):
    old = procs()
    kf = write_session(tmp_path, os.getpid(), [old.pid])
    # Kill file written before the process started: a stock-format file
    # cannot vouch for it, so it is not signalled.
    past = time.time() - 3600
    os.utime(kf, (past, past))
    tkill.tkill(kf, systemd=True, timeout=0.2)
    time.sleep(0.2)
    assert old.poll() is None
    # Written after it started: it is the listed process.
    kf = write_session(tmp_path, os.getpid(), [old.pid])
    tkill.tkill(kf, systemd=True, timeout=0.5)
    assert old.wait(timeout=5) == -signal.SIGHUP


def test_stopped_client_is_continued_and_killed(tmp_path, procs):
    p = procs()
    os.kill(p.pid, signal.SIGSTOP)
    kf = write_session(tmp_path, os.getpid(), [p.pid], {p.pid: start_of(p.pid)})
    tkill.tkill(kf, systemd=True, timeout=1)
    assert p.wait(timeout=5) == -signal.SIGHUP


def test_dead_and_bogus_pids_are_skipped(tmp_path, procs):
    p = procs()
    p.kill()
    p.wait()
    kf = write_session(tmp_path, os.getpid(), [p.pid, 1, 0, os.getpid()], {})
    assert tkill.tkill(kf, systemd=True, timeout=0.2) == 0
    assert not os.path.exists(kf)


def test_by_hand_stops_daemon_and_removes_session(tmp_path, procs):
    daemon, client = procs(), procs()
    sess = tmp_path / "lam-x@h"
    sess.mkdir(mode=0o700)
    kf = write_session(sess, daemon.pid, [client.pid], {client.pid: start_of(client.pid)})
    # a stale socket (no listener)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sess / "lam-kernel-socket"))
    s.close()
    assert tkill.main(["-f", kf, "--timeout", "1"]) == 0
    assert client.wait(timeout=5) == -signal.SIGHUP
    assert daemon.wait(timeout=5) == -signal.SIGTERM
    assert not sess.exists()


def test_pretend_signals_nothing(tmp_path, procs, capsys):
    p = procs()
    kf = write_session(tmp_path, os.getpid(), [p.pid], {p.pid: start_of(p.pid)})
    assert tkill.main(["-f", kf, "-N"]) == 0
    assert f"would signal client {p.pid}" in capsys.readouterr().err
    assert p.poll() is None and os.path.exists(kf)


def test_missing_kill_file_is_nothing_to_kill(tmp_path, capsys):
    kf = tmp_path / "nope" / "lam-killfile"
    assert tkill.main(["-f", str(kf), "-v"]) == 0
    assert f"nothing to kill: {kf} does not exist" in capsys.readouterr().err


def test_session_path_from_prefix(tmp_path, monkeypatch, capsys):
    # No kill file in the computed session (LAM's PREFIX/lam-USER@HOST): exit 0, nothing done.
    import pwd
    for var in ("LAM_MPI_SESSION_SUFFIX", "LAM_MPI_SOCKET_SUFFIX", "PBS_ENVIRONMENT",
                "SLURM_JOBID", "LSB_JOBID", "SGE_ROOT"):
        monkeypatch.delenv(var, raising=False)
    assert tkill.main(["-sessionprefix", str(tmp_path), "-v"]) == 0
    user = pwd.getpwuid(os.getuid()).pw_name
    kf = tmp_path / f"lam-{user}@{socket.gethostname()}" / "lam-killfile"
    assert f"nothing to kill: {kf} does not exist" in capsys.readouterr().err


def test_console_entry_runs():
    out = subprocess.run([sys.executable, "-m", "lamd.tools.tkill", "--help"], capture_output=True,
                         text=True, timeout=30, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0 and "kill file" in out.stdout


# ------------------------------------------------------------------ descriptors, leftovers

def _nofile(soft: int, hard: int | None = None):
    """preexec_fn: set RLIMIT_NOFILE in the child (hard None: keep the hard limit)."""
    def set_limit():
        h = resource.getrlimit(resource.RLIMIT_NOFILE)[1] if hard is None else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, h))
    return set_limit


def _gone(pid: int, start: int) -> bool:
    """The process (pid, start) has exited (a zombie counts: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return True
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19]) != start or fields[0] in (b"Z", b"X")


def test_more_targets_than_descriptors(tmp_path):
    """200 clients, a hard limit of 40 descriptors: every client is still
    signalled (descriptors are reused batch by batch), also the 50 that
    ignore SIGHUP and need SIGKILL; exit 0, kill file removed."""
    started: list[subprocess.Popen] = []
    try:
        for i in range(200):
            argv = ["sleep", "600"] if i % 4 else ["nohup", "sleep", "600"]
            started.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        for p in started:   # nohup has exec'd sleep (SIGHUP ignored) before we list it
            while tkill.proc_stat(p.pid) is None or \
                    os.readlink(f"/proc/{p.pid}/exe").split("/")[-1] != "sleep":
                assert time.monotonic() < deadline, "clients did not start"
                time.sleep(0.005)
        kf = write_session(tmp_path, os.getpid(), [p.pid for p in started],
                           {p.pid: start_of(p.pid) for p in started})
        cp = subprocess.run([sys.executable, "-m", "lamd.tools.tkill", "-f", kf, "--systemd",
                             "--timeout", "0.5"], check=False, capture_output=True, text=True,
                            timeout=60,
                            env=dict(os.environ, PYTHONPATH=REPO),
                            preexec_fn=_nofile(40, 40))
        assert cp.returncode == 0, cp.stderr
        assert "left" not in cp.stderr, cp.stderr
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p in started) and time.monotonic() < deadline:
            time.sleep(0.02)
        running = [p.pid for p in started if p.poll() is None]
        assert not running, (f"{len(running)} of 200 clients still running after tkill "
                             f"(exit {cp.returncode}): {cp.stderr}")
        rcs = [p.returncode for p in started]
        assert rcs.count(-signal.SIGHUP) == 150 and rcs.count(-signal.SIGKILL) == 50, rcs
        assert not os.path.exists(kf)
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)



@pytest.mark.parametrize("err", [errno.EMFILE, errno.ENOSYS], ids=["EMFILE", "ENOSYS"])
def test_without_pidfds_signals_by_pid_after_checking(tmp_path, procs, monkeypatch, err):
    """No pidfd to be had (out of descriptors, or an old kernel): clients are
    signalled by pid, each start time checked just before; a reused pid is
    still refused."""
    def no_pidfd(pid, flags=0):
        raise OSError(err, os.strerror(err))
    a, b, reused = procs(), procs(ignore_hup=True), procs()
    kf = write_session(tmp_path, os.getpid(), [a.pid, b.pid, reused.pid],
                       {a.pid: start_of(a.pid), b.pid: start_of(b.pid),
                        reused.pid: start_of(reused.pid) - 1})
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    assert tkill.tkill(kf, systemd=True, timeout=0.5) == 0
    assert a.wait(timeout=5) == -signal.SIGHUP
    assert b.wait(timeout=5) == -signal.SIGKILL
    time.sleep(0.2)
    assert reused.poll() is None
    assert not os.path.exists(kf)


# A client held by a debugger: ptrace with PTRACE_O_TRACEEXIT stops a tracee on
# its way out, even after SIGKILL, until the tracer lets it go. The tracer forks
# the client (SIGHUP ignored), prints its pid, then "exit-stop" once the client
# is held on its way out (or "gone" if this kernel does not stop it there), and
# holds it until its stdin closes.
TRACER = r"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_CONT, PTRACE_SEIZE, PTRACE_O_TRACEEXIT, PTRACE_EVENT_EXIT = 7, 0x4206, 0x40, 6
signal.signal(signal.SIGHUP, signal.SIG_IGN)
child = os.fork()
if child == 0:
    while True:
        signal.pause()
if libc.ptrace(PTRACE_SEIZE, child, None, PTRACE_O_TRACEEXIT) != 0:
    print("seize failed", ctypes.get_errno(), flush=True)
    os.kill(child, signal.SIGKILL)
    sys.exit(1)
print(child, flush=True)
while True:
    _, status = os.waitpid(child, 0x40000000)        # __WALL
    if not os.WIFSTOPPED(status):
        print("gone", flush=True)
        break
    if status >> 8 == signal.SIGTRAP | (PTRACE_EVENT_EXIT << 8):
        print("exit-stop", flush=True)
        sys.stdin.read()                              # hold it until told
        libc.ptrace(PTRACE_CONT, child, None, None)
    else:                                             # deliver the signal (SIGHUP: ignored)
        libc.ptrace(PTRACE_CONT, child, None, os.WSTOPSIG(status))
"""


def test_client_that_survives_sigkill_is_reported_left(tmp_path, procs, capsys):
    """A client a debugger holds on its way out survives SIGKILL: tkill says
    it was left, exits non-zero and keeps the kill file for another try; the
    other client is gone."""
    other = procs()
    held = None
    tracer = subprocess.Popen([sys.executable, "-c", TRACER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = tracer.stdout.readline().strip()
        assert line.isdigit(), f"the tracer could not ptrace its child: {line}"
        held = int(line)
        kf = write_session(tmp_path, os.getpid(), [other.pid, held],
                           {other.pid: start_of(other.pid), held: start_of(held)})
        t0 = time.monotonic()
        rc = tkill.tkill(kf, systemd=True, timeout=0.3, kill_wait=0.5)
        took = time.monotonic() - t0
        err = capsys.readouterr().err
        what = tracer.stdout.readline().strip()
        # Linux stops a SIGKILLed tracee at PTRACE_EVENT_EXIT until its tracer
        # lets it go: what this test needs to hold a client past SIGKILL
        assert what == "exit-stop", f"the tracee was not held at its exit ({what})"
        assert rc == tkill.EXIT_LEFT, err
        assert f"1 client left: {held} did not exit after SIGKILL" in err, err
        assert os.path.exists(kf)                     # kept for another try
        assert other.wait(timeout=5) == -signal.SIGHUP
        assert took < 5, took
    finally:
        if held:                                      # whatever happened: end the client,
            try:
                os.kill(held, signal.SIGKILL)         # (a tracee: its pid cannot be reused)
            except OSError:
                pass
        tracer.stdin.close()                          # and let it finish exiting
        try:
            tracer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(timeout=10)


# ------------------------------------------------------------------ a large real session

N_CLIENTS = 1100        # more than a login session's 1,024 descriptors
LOGIN_NOFILE = 1024     # the default soft RLIMIT_NOFILE of a login session


def _wait_for(what: str, cond, timeout: float, diag=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f} s\n{diag()}")
        time.sleep(0.05)


@pytest.mark.parametrize("tkill_hard", [None, LOGIN_NOFILE], ids=["raise", "batches"])
def test_by_hand_ends_1100_blocked_stock_clients(lam_session, lamd_pkg, kclient, monkeypatch,
                                                  tkill_hard):
    """Issue 9: more attached clients than a login session's descriptors.

    1,100 stock liblam clients (tests/c/kclient.c built with mpicc.lam), each
    blocked in krecv, attached to our daemon; the daemon, the clients and
    lamd-tkill all run as lamtest with the soft nofile limit at 1,024. The
    hard limit is the host's ("raise": tkill raises its soft limit and pins
    every client at once) or, for tkill only, 1,024 too ("batches": it must
    reuse its descriptors). lamd-tkill by hand: exit 0, every client and the
    daemon gone, socket, kill file and session directory removed, in well
    under a minute."""
    from . import lamenv

    s = lam_session
    limit = _nofile(LOGIN_NOFILE)
    monkeypatch.setattr(s, "popen", functools.partial(s.popen, preexec_fn=limit))
    # the kernel alone: the jobs process would be one more attached sleeper
    d = lamenv.PyDaemon(s, lamd_pkg, ["--log-level", "info", "--no-jobs"])
    spawner = None
    log = s.work / "clients.out"
    try:
        d.start()
        # One shell starts every client, in a process group of their own
        # (the finally below ends the whole group, whatever happens).
        script = (f'i=0; while [ $i -lt {N_CLIENTS} ]; do '
                  f'"$0" block 4711 0 64 & i=$((i+1)); done; wait')
        with open(log, "a") as out:
            spawner = s.popen(["sh", "-c", script, str(kclient)], stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)

        def attached() -> int:
            text = log.read_text(errors="replace")
            if "FAIL" in text:
                pytest.fail("a client failed:\n" + text[-3000:] + "\n" + d.log()[-3000:])
            return text.count("ATTACHED")
        _wait_for(f"{N_CLIENTS} clients attached", lambda: attached() == N_CLIENTS, 60,
                  lambda: f"{attached()} attached\n{d.log()[-3000:]}")
        listed = lamenv.read_killfile(s.killfile)
        assert listed[0] == d.proc.pid and len(listed) == N_CLIENTS + 1, len(listed)
        clients = {pid: start_of(pid) for pid in listed[1:]}

        def blocked() -> int:    # attached, then asleep: waiting in krecv for a reply
            return sum(1 for pid in clients if tkill.proc_stat(pid) and
                       open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0]
                       == b"S")
        _wait_for("every client blocked", lambda: blocked() == N_CLIENTS, 30,
                  lambda: f"{blocked()} blocked")

        t0 = time.monotonic()
        cp = s.run([lamenv.SYSTEM_PYTHON, "-m", "lamd.tools.tkill", "-v"], timeout=60,
                   env=dict(s.env, PYTHONPATH=str(lamd_pkg), PYTHONDONTWRITEBYTECODE="1"),
                   preexec_fn=_nofile(LOGIN_NOFILE, tkill_hard))
        took = time.monotonic() - t0
        print(f"\nlamd-tkill ended {N_CLIENTS} blocked clients and the daemon in {took:.2f} s:\n"
              f"{cp.stderr.strip()}")
        try:
            spawner.wait(timeout=10)         # the shell has reaped every client
        except subprocess.TimeoutExpired:
            pass                             # some are left: said just below
        running = [pid for pid, st in clients.items() if not _gone(pid, st)]
        assert not running, (f"{len(running)} of {N_CLIENTS} clients still running after "
                             f"lamd-tkill (exit {cp.returncode}): {cp.stderr}")
        assert cp.returncode == 0, cp.stderr
        assert "left" not in cp.stderr, cp.stderr
        assert d.proc.wait(timeout=10) == 0, d.log()[-3000:]
        d.expect_exit = True
        assert not s.socket.exists() and not s.killfile.exists()
        assert not s.session_dir.exists()
        assert took < 30, f"lamd-tkill took {took:.1f} s"
        held = int(re.search(r"holding up to (\d+) pidfds", cp.stderr).group(1))
        if tkill_hard == LOGIN_NOFILE:
            assert held < N_CLIENTS, cp.stderr            # it really went in batches
        elif resource.getrlimit(resource.RLIMIT_NOFILE)[1] > N_CLIENTS + 100:
            assert held >= N_CLIENTS, cp.stderr           # it really raised its limit
    finally:
        if spawner is not None:
            try:
                os.killpg(spawner.pid, signal.SIGKILL)
            except OSError:
                pass
            spawner.wait(timeout=10)
        d.expect_exit = True
        d.stop()


# ---- ExecStop= after a crash is not a stop (issue 12) ----

@pytest.mark.parametrize("env,final", [
    ({}, True),                                                   # by hand
    ({"SERVICE_RESULT": "success", "EXIT_CODE": "killed", "EXIT_STATUS": "TERM"}, True),
    ({"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"}, True),
    ({"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}, False),
    ({"SERVICE_RESULT": "core-dump", "EXIT_CODE": "dumped", "EXIT_STATUS": "SEGV"}, False),
    ({"SERVICE_RESULT": "watchdog", "EXIT_CODE": "killed", "EXIT_STATUS": "ABRT"}, False),
    ({"SERVICE_RESULT": "oom-kill", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}, False),
    ({"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "1"}, False),
    ({"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "75"}, False),
    ({"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "78"}, True),
    ({"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "2"}, True),
])
def test_stop_is_final(env, final):
    assert tkill.stop_is_final(env) is final


def _systemd_tkill(kf, env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS")}
    return subprocess.run([sys.executable, "-m", "lamd.tools.tkill", "-f", kf, "--systemd",
                           "--timeout", "0.5"], env={**full, **env, "PYTHONPATH": REPO},
                          capture_output=True, text=True, timeout=30)


def test_systemd_mode_leaves_clients_after_a_crash_systemd_restarts(tmp_path, procs):
    """SIGKILL of the daemon (SERVICE_RESULT=signal): Restart=on-failure
    follows, so its clients and its kill file are left alone; the same
    kill file after `systemctl stop` (success) or exit 78 (no restart):
    every client is signalled."""
    a = procs()
    kf = write_session(tmp_path, os.getpid(), [a.pid], {a.pid: start_of(a.pid)})
    for env in ({"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"},
                {"SERVICE_RESULT": "watchdog", "EXIT_CODE": "killed", "EXIT_STATUS": "ABRT"}):
        r = _systemd_tkill(kf, env)
        assert r.returncode == 0, r.stderr
        assert f"SERVICE_RESULT={env['SERVICE_RESULT']}" in r.stderr
        assert "leaving its clients and the kill file alone" in r.stderr
        time.sleep(0.3)
        assert a.poll() is None
        assert os.path.exists(kf)
    r = _systemd_tkill(kf, {"SERVICE_RESULT": "success", "EXIT_CODE": "killed",
                            "EXIT_STATUS": "TERM"})
    assert r.returncode == 0, r.stderr
    assert a.wait(timeout=5) == -signal.SIGHUP
    assert not os.path.exists(kf)
    b = procs()
    kf = write_session(tmp_path, os.getpid(), [b.pid], {b.pid: start_of(b.pid)})
    r = _systemd_tkill(kf, {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited",
                            "EXIT_STATUS": "78"})
    assert r.returncode == 0, r.stderr
    assert b.wait(timeout=5) == -signal.SIGHUP
