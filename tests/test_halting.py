"""Stock ``lamhalt`` against a daemon whose socket is systemd's
(``lamd.session.halting``).

lamhalt, once its node's daemon has the halt message, waits for the session
socket's path to go: ``stat()`` in a loop, spinning, with no time limit
(``otb/lamhalt/lamhalt.c``). The C lamd and ours by hand remove the path as
they exit (``test_stock_tools.test_lamhalt`` runs that on both). Under
socket activation the path is systemd's and stays, so the kernel moves it
aside while the lamhalt runs and puts it back. No C-lamd side here: the C
lamd has no socket activation. Under a real systemd:
``tests/system/test_systemd.py::test_lamhalt_returns_and_the_next_client_starts_the_daemon``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamd.session import LAM_SOCKET, halting
from lamd.tools import tkill

from . import lamenv

REPO = Path(__file__).resolve().parent.parent
# what lamhalt does once its daemon has the halt message
SPIN = "import os, sys\nwhile True:\n    try:\n        os.stat(sys.argv[1])\n    " \
       "except FileNotFoundError:\n        sys.exit(0)\n"


@pytest.fixture
def listening(tmp_path):
    path = tmp_path / LAM_SOCKET
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    yield path, s
    s.close()


def wait_until(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def connects(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(5)
        try:
            c.connect(str(path))
        except OSError:
            return False
        return True


def test_the_path_goes_while_a_lamhalt_waits_and_comes_back(listening):
    path, _ = listening
    ino = path.stat().st_ino
    spin = subprocess.Popen([sys.executable, "-c", SPIN, str(path)])
    try:
        time.sleep(0.2)   # spinning
        assert spin.poll() is None
        t0 = time.monotonic()
        assert halting.aside_for_lamhalt(str(path), [spin.pid]) == 1
        assert time.monotonic() - t0 < halting.WAIT
        assert spin.wait(5) == 0   # it saw the path go, and ended on its own
    finally:
        spin.kill()
        spin.wait(5)
    assert path.stat().st_ino == ino and connects(path)
    assert sorted(os.listdir(path.parent)) == [LAM_SOCKET]


def test_nothing_moves_without_a_lamhalt_alive(listening):
    path, _ = listening
    gone = subprocess.Popen(["true"])
    gone.wait(5)
    before = path.stat()
    assert halting.aside_for_lamhalt(str(path), [gone.pid]) == 0
    assert halting.aside_for_lamhalt(str(path), []) == 0
    after = path.stat()
    assert (after.st_ino, after.st_ctime_ns) == (before.st_ino, before.st_ctime_ns)


def test_a_lamhalt_that_does_not_end_is_waited_for_a_bounded_time(listening):
    path, _ = listening
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        t0 = time.monotonic()
        assert halting.aside_for_lamhalt(str(path), [sleeper.pid], wait=0.3) == 0
        assert 0.25 < time.monotonic() - t0 < 3
    finally:
        sleeper.kill()
        sleeper.wait(5)
    assert connects(path)
    assert sorted(os.listdir(path.parent)) == [LAM_SOCKET]


def test_restore_puts_back_only_a_socket_over_nothing(listening):
    path, _ = listening
    aside = Path(halting.aside_path(str(path)))
    assert not halting.restore(str(path))       # nothing aside
    os.rename(path, aside)
    assert not connects(path)
    assert halting.restore(str(path)) and connects(path) and not aside.exists()
    # something at the path already: both stay
    os.rename(path, aside)
    path.write_text("")
    assert not halting.restore(str(path))
    assert aside.exists() and path.read_text() == ""
    path.unlink()
    os.rename(aside, path)
    # not a socket aside: left alone
    aside.write_text("x")
    os.rename(path, path.parent / "sock")
    assert not halting.restore(str(path)) and not path.exists()


@pytest.mark.parametrize("result", ["success", "signal"])
def test_lamd_tkill_systemd_puts_back_a_path_left_aside(listening, result, monkeypatch):
    """ExecStopPost= (``lamd-tkill --systemd``) after a kernel that died with
    the path aside: back, whether systemd restarts the kernel or not."""
    path, _ = listening
    os.rename(path, halting.aside_path(str(path)))
    monkeypatch.setenv("SERVICE_RESULT", result)
    monkeypatch.setenv("EXIT_CODE", "killed")
    assert tkill.main(["--systemd", "-f", str(path.parent / "lam-killfile")]) == 0
    assert connects(path)


def hold_socket(s: lamenv.Session, pkg: Path, log: Path, *lamd_args: str) -> subprocess.Popen:
    """The session's socket held as systemd holds lamd@.socket
    (tests/sockact.py), our kernel (``python3 -m lamd`` with *lamd_args*,
    its log to *log*) started by the first connection to it. Stop the
    holder with SIGTERM, as a socket unit stops: its kernel goes first (a
    SIGKILL of the holder alone, as Session.close's, leaves it running)."""
    s.session_dir.mkdir(mode=0o700)
    os.chown(s.session_dir, s.pw.pw_uid, s.pw.pw_gid)
    cmd = " ".join(["exec /usr/bin/python3 -m lamd", *lamd_args, f"2>>{log}"])
    holder = s.popen(["/usr/bin/python3", REPO / "tests" / "sockact.py", s.socket,
                      "/bin/sh", "-c", cmd], env={**s.env, "PYTHONPATH": str(pkg)},
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not s.socket.exists():
        if time.monotonic() > deadline or holder.poll() is not None:
            holder.kill()
            holder.wait(10)
            raise AssertionError("the socket's holder did not listen")
        time.sleep(0.02)
    return holder


def stop_holder(holder: subprocess.Popen | None) -> None:
    if holder is not None and holder.poll() is None:
        holder.terminate()
        holder.wait(20)


def test_stock_lamhalt_returns_under_socket_activation():
    """Our kernel started by a connection to a socket held as systemd holds
    lamd@.socket (tests/sockact.py): stock lamhalt exits 0 at once, the
    kernel exits 0, the same socket is at its path (nothing left aside) and
    the next client (tping) starts a fresh kernel. Before, lamhalt spun on
    its stat until killed."""
    pw = lamenv.ensure_user()
    pkg = lamenv.copy_package(pyc=True)
    s = lamenv.Session(pw)
    holder = None
    try:
        log = s.work / "lamd.log"
        holder = hold_socket(s, pkg, log)
        ino = s.socket.stat().st_ino
        cp = s.run(["tping", "-c", "1", "N"], timeout=30)
        assert cp.returncode == 0, cp
        first = lamenv.read_killfile(s.killfile)[0]
        t0 = time.monotonic()
        cp = s.run(["timeout", "-k", "1", "20", "lamhalt"], timeout=30)
        took = time.monotonic() - t0
        assert cp.returncode == 0, (cp, log.read_text())
        assert took < 10, took
        assert wait_until(lambda: not lamenv.pid_alive(first), 10)
        assert s.socket.stat().st_ino == ino
        assert not Path(halting.aside_path(str(s.socket))).exists()
        assert "moved aside until 1 of 1 lamhalts ended" in log.read_text()
        cp = s.run(["tping", "-c", "1", "N"], timeout=30)
        assert cp.returncode == 0, (cp, log.read_text())
        second = lamenv.read_killfile(s.killfile)[0]
        assert second != first
        # the holder stops as a socket unit does (SIGTERM: its kernel is
        # stopped first); a SIGKILL of the holder alone (Session.close)
        # would leave that kernel running
        stop_holder(holder)
        assert wait_until(lambda: not lamenv.pid_alive(second), 10), "kernel left running"
    finally:
        stop_holder(holder)
        s.close()
        shutil.rmtree(pkg, ignore_errors=True)


# attached, then deaf to the kernel's EOF: lamhalt's grace waits for it
LINGER = ("import signal, sys, time\nsys.path.insert(0, sys.argv[1])\n"
          "from lamd.client import KernelClient\n"
          "c = KernelClient.connect(sys.argv[2], timeout=10)\nc.attach()\n"
          "print('attached', flush=True)\ntime.sleep(30)\n")


def test_a_connection_made_during_the_halt_starts_no_kernel():
    """A connection that waits in the backlog of systemd's socket while the
    kernel halts (here during the halt's grace, which a client deaf to the
    kernel's EOF makes last): the kernel accepts and closes it before it
    lets the socket go, its kill file already gone. Left there, the socket's
    holder would start a kernel for it once this one had exited: how the
    jobs process of a kernel halted before it attached started another
    (lamd-jobs@.service; under a real systemd:
    ``tests/system/test_systemd.py::
    test_lamhalt_before_the_jobs_process_attached_leaves_nothing``).
    A halted C lamd serves no such connection either: it closes its socket."""
    pw = lamenv.ensure_user()
    pkg = lamenv.copy_package(pyc=True)
    s = lamenv.Session(pw)
    holder = linger = None
    try:
        log = s.work / "lamd.log"
        holder = hold_socket(s, pkg, log, "--no-jobs")
        linger = s.popen(["/usr/bin/python3", "-c", LINGER, str(pkg), str(s.socket)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert linger.stdout.readline() == "attached\n", log.read_text()
        first = lamenv.read_killfile(s.killfile)[0]
        halt = s.popen(["timeout", "-k", "1", "20", "lamhalt"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # the halt's grace has begun once the lingering client reads EOF
        # (its socket shut): the kernel no longer accepts
        assert wait_until(lambda: b"shutting down" in log.read_bytes(), 10), log.read_text()
        time.sleep(0.2)
        late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        late.settimeout(15)
        try:
            late.connect(str(s.socket))  # into the backlog: nobody accepts now
            assert halt.wait(30) == 0
            assert wait_until(lambda: not lamenv.pid_alive(first), 10)
            assert late.recv(1) == b"", "the waiting connection was not closed"
        finally:
            late.close()
        time.sleep(2.0)  # the holder would have started the next kernel by now
        assert not s.killfile.exists(), (lamenv.read_killfile(s.killfile), log.read_text())
        assert log.read_text().count("serving") == 1, log.read_text()
    finally:
        stop_holder(holder)
        if linger is not None:
            linger.kill()
            linger.wait(10)
        s.close()
        shutil.rmtree(pkg, ignore_errors=True)
