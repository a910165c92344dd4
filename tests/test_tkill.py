"""Unit tests for lamd.tkill: kill-file parsing, pid-reuse safety, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lamd import tkill

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
    rc = tkill.tkill(kf, systemd=True, timeout=0.5)
    assert rc == 0
    assert a.wait(timeout=5) == -signal.SIGHUP
    assert b.wait(timeout=5) == -signal.SIGKILL      # ignored SIGHUP
    assert not os.path.exists(kf) and not (tmp_path / "lamd-clients").exists()
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
    out = subprocess.run([sys.executable, "-m", "lamd.tkill", "--help"], capture_output=True,
                         text=True, timeout=30, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0 and "kill file" in out.stdout
