"""lamd re-executes itself on SIGUSR1 under running stock liblam clients (issue 12).

Our daemon runs by hand (``python3 -m lamd``, with its jobs process); stock
clients (tests/c/kclient.c against Debian's liblam, and ``tping``) are
mid-run when the daemon is sent SIGUSR1, twice: ping-pong pairs at 64 B and
1 MiB complete with every byte verified (kclient checks each body's pattern
and length), blocked receivers are still blocked afterwards and get their
message, the daemon keeps its pid, the kill file is whole throughout and
lists every client, and ``tping`` (router, bufferd, echod, versiond booted
afresh with what they carry) works. A snapshot that is refused leaves the
new image to start clean.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from tests import lamenv
from tests.test_cclient import Clients, ok, show
from tests.test_crash import read_lines, wait_listed
from tests.test_stock_tools import cprogs  # noqa: F401 - the fixture


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
        try:
            d.stop()
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(timeout=10)


def log_count(d: lamenv.PyDaemon, pattern: str) -> int:
    return len(re.findall(pattern, d.logfile.read_text(errors="replace")))


def wait_log(d: lamenv.PyDaemon, pattern: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_count(d, pattern) >= count:
            return
        assert d.proc.poll() is None, f"daemon exited ({d.proc.returncode}):\n{d.log()}"
        time.sleep(0.02)
    pytest.fail(f"no {count}x {pattern!r} in the daemon's log:\n{d.log()}")


def check_killfile(lam_session, dpid: int, must_list: set[int]) -> None:
    lines = read_lines(lam_session.killfile)  # whole lines only
    assert lines and int(lines[0]) == dpid, lines
    listed = {int(x) for x in lines[1:]}
    assert must_list <= listed, f"kill file {lines} lacks {must_list - listed}"


def test_reexec_under_running_pairs_and_blocked_receivers(lam_session, py_daemon, kclient):
    d = py_daemon()
    dpid = d.proc.pid
    k = Clients(d, kclient)
    base = 300000 + os.getpid() % 1000 * 64
    blocked = [k.start("block", base + 40 + i, 0, 4096) for i in range(3)]
    for p in blocked:
        k.wait_state(p, 2)
    pairs = []
    for i in range(4):  # 64 B pairs: thousands of round trips
        ev = base + 4 * i
        pairs.append(k.start("pingpong", "pong", ev, 20000, 64))
        pairs.append(k.start("pingpong", "ping", ev, 20000, 64))
    for i in range(2):  # 1 MiB pairs: bodies through the move buffer
        # 1,000 round trips: 150 (at 2-5 ms each beside the other pairs)
        # could all be done before the second re-exec
        ev = base + 20 + 4 * i
        pairs.append(k.start("pingpong", "pong", ev, 1000, 1 << 20))
        pairs.append(k.start("pingpong", "ping", ev, 1000, 1 << 20))
    wait_listed(lam_session.killfile, {p.pid for p in pairs + blocked})
    # the kill file is read all along, as tkill would: whole, the daemon first,
    # every blocked receiver listed
    stop = threading.Event()
    reads: list[str] = []

    def watch_killfile() -> None:
        while not stop.is_set():
            try:
                check_killfile(lam_session, dpid, {p.pid for p in blocked})
                reads.append("ok")
            except BaseException as e:  # noqa: BLE001 - reported below
                reads.append(repr(e))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch_killfile, daemon=True)
    watcher.start()
    try:
        for n in (1, 2):
            time.sleep(0.3)
            running = [p for p in pairs if p.poll() is None]
            assert len(running) == len(pairs), "pairs ended before the re-exec"
            os.kill(dpid, signal.SIGUSR1)
            wait_log(d, r"re-exec: restored \d+ clients", n)
            assert d.proc.poll() is None and lamenv.running(dpid)
    finally:
        stop.set()
        watcher.join(timeout=10)
    bad = [r for r in reads if r != "ok"]
    assert reads and not bad, bad[:3]
    assert log_count(d, "re-exec given up|snapshot refused") == 0, d.log()
    # the blocked receivers were carried: each gets a 4 KiB message, verified
    for i, p in enumerate(blocked):
        k.wait_state(p, 2)
        cp, r = k.run("send", base + 40 + i, 0, 4096)
        ok(cp, r)
    for p in blocked + pairs:
        cp, r = k.finish(p, timeout=120)
        ok(cp, r)
    # tping goes through the restarted router, bufferd, echod and versiond
    cp = lam_session.run(["tping", "-c", "3", "N"], timeout=60)
    assert cp.returncode == 0, f"tping: {cp.returncode}\n{cp.stdout}{cp.stderr}\n{d.log()}"
    check_killfile(lam_session, dpid, set())
    assert d.proc.poll() is None


def test_refused_snapshot_starts_clean(lam_session, lamd_pkg):
    """A lamd handed a corrupt snapshot logs one line and serves afresh."""
    env_path = str(lamd_pkg)
    script = (
        "import os, sys\n"
        "fd = os.memfd_create('x', 0)\n"
        "os.write(fd, b'LAMDSNAP' + bytes(60))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'lamd', '--no-jobs', "
        "'--restore-fd', str(fd)])\n")
    log = lam_session.work / "refused.log"
    with open(log, "w") as f:
        proc = lam_session.popen(["/usr/bin/python3", "-c", script],
                                 env=dict(lam_session.env, PYTHONPATH=env_path),
                                 stdout=f, stderr=subprocess.STDOUT)
    try:
        assert lam_session.wait_socket(20, alive=lambda: proc.poll() is None), log.read_text()
        cp = lam_session.run(["tping", "-c", "1", "N"], timeout=60)
        assert cp.returncode == 0, show(cp)
        text = log.read_text()
        assert len(re.findall(r"snapshot refused, starting clean: snapshot has 24 bytes after its end", text)) == 1, text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text()


def test_reexec_keeps_what_bufferd_holds(py_daemon, cprogs):
    """kinit programs: one nsend's five messages (1 MiB of them in packets)
    and exits; bufferd holds them across a re-exec; another nrecv's them,
    every byte checked. A receiver blocked in bufferd's BFQRECV across the
    re-exec gets its messages too."""
    from tests.test_stock_tools import SIZES, lines
    d = py_daemon()
    s = d.s
    held, waiting = 33000 + os.getpid() % 500, 34000 + os.getpid() % 500
    sent = s.run([cprogs["netclient"], "send", "n", held, *SIZES], timeout=60)
    assert sent.returncode == 0 and "OK" in sent.stdout, show(sent)
    recv = s.popen([cprogs["netclient"], "recv", "n", waiting, *SIZES])
    wait_listed(s.killfile, {recv.pid})
    time.sleep(0.3)
    os.kill(d.proc.pid, signal.SIGUSR1)
    wait_log(d, r"re-exec: restored \d+ clients", 1)
    got = s.run([cprogs["netclient"], "recv", "n", held, *SIZES], timeout=60)
    assert got.returncode == 0 and "OK" in got.stdout, show(got)
    assert lines(got.stdout, "RECV") == [
        f"RECV idx={i} size={n} type={i + 1}" for i, n in enumerate(SIZES)], show(got)
    sent = s.run([cprogs["netclient"], "send", "n", waiting, *SIZES], timeout=60)
    assert sent.returncode == 0, show(sent)
    out, err = recv.communicate(timeout=60)
    assert recv.returncode == 0 and "OK" in out, f"{out}\n{err}"
    assert log_count(d, "re-exec given up|snapshot refused") == 0, d.log()


def test_exec_reload_helper_waits_for_the_new_image(lam_session, lamd_pkg):
    """ExecReload='s helper (python3 -m lamd.service reload PID) against our
    daemon with a NOTIFY_SOCKET, as under systemd: it returns 0 once the new
    image serves, which has written "PID N ok" to lamd-reload; the daemon
    sent RELOADING=1 before the re-exec and READY=1 after it, same pid."""
    from lamd.service import reload
    d = tempfile.mkdtemp(prefix="lamd-notify-")  # the daemon's user must reach it
    os.chmod(d, 0o755)
    path = os.path.join(d, "sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o777)
    sock.settimeout(20)
    daemon = lamenv.PyDaemon(lam_session, lamd_pkg, env={"NOTIFY_SOCKET": path})
    sdir = str(lam_session.session_dir)
    try:
        daemon.start()
        pid = daemon.proc.pid

        def until(text: str) -> list[str]:
            seen = []
            while True:
                msg = sock.recv(65536).decode()
                seen.append(msg)
                if text in msg:
                    return seen
        until("READY=1")
        assert reload.read_status(sdir).split() == [str(pid), "0", "started"]
        for n in (1, 2):
            assert reload.reload(pid, sdir, timeout=25) == 0, daemon.log()
            assert reload.read_status(sdir).split() == [str(pid), str(n), "ok"]
            seen = until("READY=1")
            reloading = [i for i, m in enumerate(seen) if "RELOADING=1" in m]
            assert reloading and reloading[0] < len(seen) - 1, seen
            assert f"MAINPID={pid}" in seen[-1]
            assert daemon.proc.poll() is None
        assert log_count(daemon, r"re-exec: restored") == 2
    finally:
        daemon.stop()
        sock.close()
        shutil.rmtree(d, ignore_errors=True)
    assert not os.path.exists(os.path.join(sdir, reload.RELOAD_STATUS))  # removed at stop
    # no daemon: the helper says so, non-zero
    assert reload.reload(pid, sdir, timeout=2) == 1
