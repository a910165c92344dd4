"""Crashes and restarts of the daemon run by hand, with stock liblam clients.

* The kill file is always whole: it is written to a temporary file and
  renamed, so a daemon SIGKILLed at any moment leaves either the old or the
  new list, every line a pid, the dead daemon's first.
* A crashed daemon never blocks the next start (the C lamd refuses to start
  while a dead instance's kill file exists, ``kkillopen``'s O_EXCL), and a
  live daemon's socket is never taken over.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time

import pytest

from tests import lamenv


def read_lines(path) -> list[str]:
    with open(path) as f:
        data = f.read()
    assert data == "" or data.endswith("\n"), f"kill file ends mid-line: {data!r}"
    return data.splitlines()


def wait_listed(killfile, pids: set[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pids <= {int(x) for x in read_lines(killfile)[1:]}:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    pytest.fail(f"pids {pids} never listed in {killfile}")


@pytest.fixture
def py_daemon(lam_session, lamd_pkg):
    daemons: list[lamenv.PyDaemon] = []

    def start(args: list[str] | None = None) -> lamenv.PyDaemon:
        d = lamenv.PyDaemon(lam_session, lamd_pkg, args)
        d.start()
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)


def test_sigkill_at_random_points_never_tears_the_kill_file(lam_session, py_daemon, kclient):
    rng = random.Random(1234)
    for rnd in range(6):
        # the kernel alone: the jobs process is listed once per service
        d = py_daemon(["--log-level", "info", "--no-jobs"])
        dpid = d.proc.pid
        blocked = [lam_session.popen([kclient, "block", 9000 + rnd * 10 + i, 0, 16])
                   for i in range(3)]
        wait_listed(lam_session.killfile, {p.pid for p in blocked})
        churn = lam_session.popen(["/bin/sh", "-c",
                                   f"while :; do {kclient} ktry {8000 + rnd}; done"],
                                  start_new_session=True)
        time.sleep(0.1 + rng.random() * 0.4)
        # freeze the attach/detach churn first: a liblam client that finds no
        # kernel removes the whole session directory (lam_tmpdir_remove)
        os.killpg(churn.pid, signal.SIGSTOP)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(timeout=10)
        lines = read_lines(lam_session.killfile)
        os.killpg(churn.pid, signal.SIGKILL)
        assert lines and all(line.isdigit() for line in lines), lines
        assert int(lines[0]) == dpid
        listed = [int(x) for x in lines[1:]]
        assert len(listed) == len(set(listed)), f"a pid listed twice: {listed}"
        assert {p.pid for p in blocked} <= set(listed), listed
        for p in blocked:  # their kernel is gone: liblam clients see EOF and exit
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                pytest.fail("a client of the killed daemon hung")
        churn.wait(timeout=10)
        lam_session.reap()
        os.makedirs(lam_session.session_dir, mode=0o700, exist_ok=True)
        os.chown(lam_session.session_dir, lam_session.pw.pw_uid, lam_session.pw.pw_gid)
    # and the next start is served despite the stale socket and kill file
    stale = lam_session.socket.exists()
    d = py_daemon()
    cp = lam_session.run([kclient, "ktry", 1], timeout=20)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    d.stop()
    assert d.returncode == 0 and not d.stop_problems, (d.stop_problems, d.log()[-3000:])
    # said before the daemon's logging is set up (lamd.lazylog sets it up for it)
    assert stale and "INFO removing stale socket" in d.log(), d.log()[-3000:]


def test_a_live_daemon_is_never_taken_over(lam_session, py_daemon, lamd_pkg, kclient):
    first = py_daemon()
    env = dict(lam_session.env, PYTHONPATH=str(lamd_pkg))
    cp = lam_session.run([lamenv.SYSTEM_PYTHON, "-m", "lamd"], env=env, timeout=20)
    # a setup error: EX_CONFIG (78), one line naming the socket, nothing else
    assert cp.returncode == 78, cp.stdout + cp.stderr
    assert cp.stdout == ""
    assert re.fullmatch(r"lamd\[\d+\]: ERROR a live daemon already serves "
                        + re.escape(str(lam_session.socket)) + r"; not taking it over\n",
                        cp.stderr), cp.stderr
    assert first.proc.poll() is None
    cp = lam_session.run([kclient, "ktry", 1], timeout=20)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    first.stop()
    assert first.returncode == 0


def test_sigterm_hangs_up_attached_clients_and_cleans_up(lam_session, py_daemon, kclient):
    d = py_daemon()
    blocked = lam_session.popen([kclient, "block", 4242, 0, 16])
    wait_listed(lam_session.killfile, {blocked.pid})
    d.expect_exit = True
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=10) == 0, d.log()
    blocked.wait(timeout=10)
    # kkillall signals (SIGCONT, SIGHUP) every client before any socket is
    # closed, so the client dies of SIGHUP, never of seeing EOF first
    # (liblam's exit(ENOKERNEL), status 215)
    assert blocked.returncode == -signal.SIGHUP, (blocked.returncode, blocked.communicate())
    assert not os.path.exists(lam_session.killfile)
    assert not os.path.exists(lam_session.socket)
    d.stop()
    assert not d.stop_problems, d.stop_problems


def test_a_connection_from_another_uid_is_refused(lam_session, py_daemon, kclient):
    """SO_PEERCRED, not the client's word: root (another uid than the
    daemon's lamtest) is closed on at once, and one log line names it."""
    import socket as _socket

    from lamd.kernel.wire import KReq
    d = py_daemon()
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(str(lam_session.socket))
        try:
            s.sendall(KReq(req=5, index=-1, pid=os.getpid(), priority=1095).pack())
            assert s.recv(80) == b""  # closed, never answered
        except (ConnectionResetError, BrokenPipeError):
            pass
    finally:
        s.close()
    cp = lam_session.run([kclient, "ktry", 1], timeout=20)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    d.stop()
    assert "uid 0" in d.log() and "refused a connection" in d.log()


def test_unwritable_kill_file_is_a_clear_setup_error(lam_session, lamd_pkg):
    """A kill file the user cannot write: one clear line, exit 78 (EX_CONFIG,
    which the unit does not restart on), nothing left listening."""
    sd = lam_session.session_dir
    os.makedirs(sd, mode=0o700, exist_ok=True)
    os.chown(sd, lam_session.pw.pw_uid, lam_session.pw.pw_gid)
    with open(lam_session.killfile, "w") as f:
        f.write("1\n")
    os.chmod(lam_session.killfile, 0o644)  # owned by root
    env = dict(lam_session.env, PYTHONPATH=str(lamd_pkg))
    cp = lam_session.run([lamenv.SYSTEM_PYTHON, "-m", "lamd"], env=env, timeout=20)
    assert cp.returncode == 78, cp.stdout + cp.stderr
    assert "cannot write kill file" in cp.stderr
    assert not os.path.exists(lam_session.socket)


def test_session_directory_with_wrong_mode_is_refused(lam_session, lamd_pkg):
    sd = lam_session.session_dir
    os.makedirs(sd, exist_ok=True)
    os.chown(sd, lam_session.pw.pw_uid, lam_session.pw.pw_gid)
    os.chmod(sd, 0o755)  # LAM requires 0700
    env = dict(lam_session.env, PYTHONPATH=str(lamd_pkg))
    cp = lam_session.run([lamenv.SYSTEM_PYTHON, "-m", "lamd"], env=env, timeout=20)
    assert cp.returncode == 78, cp.stdout + cp.stderr
    assert "0755" in cp.stderr and "0700" in cp.stderr
    assert not os.path.exists(lam_session.socket)


def test_a_stopping_daemon_leaves_its_successors_files_alone(lam_session, py_daemon):
    """lamboot over a running universe: hboot -t's tkill hangs the daemon up
    and starts the next one at once, which binds the session socket and
    writes its kill file (before it even imports its kernel: lamd.boot.early)
    while the first may still be going. The first removes only what is
    still its own: here a successor's socket file and kill file (another
    pid first) survive its SIGTERM."""
    d = py_daemon(["--log-level", "info", "--no-jobs"])
    sock, kf = lam_session.socket, lam_session.killfile
    os.unlink(sock)
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        successor.bind(str(sock))
        successor.listen(4)
        with open(kf, "w") as f:
            f.write(f"{os.getpid()}\n")
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=10) == 0, d.log()
        assert os.path.exists(sock), "the successor's socket was removed"
        with open(kf) as f:
            assert f.read() == f"{os.getpid()}\n", "the successor's kill file was touched"
    finally:
        successor.close()
        for p in (sock, kf):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
