"""``python3 -m lamd.datalink`` under ``lamd-dl@.socket`` sets the kernel's
start going before it imports the rest (lamd/datalink/early.py, issue 11:
a node whose services systemd starts on demand booted about 150 ms slower
than one booted by hand, the kernel starting only once the datalink
process had imported everything).

Checked here, in a process started as systemd starts the service (its
socket passed as ``LISTEN_FDS``, a handoff client writing hboot's
arguments): the kernel's socket gets its connection while the datalink
process has imported nothing of the daemon's but the session and the
request's codec, and the announcement is written by then (a kernel that
starts leaves the datalink to it); a start after a crash (a state in the
descriptor store) and a request that is not one do nothing early. The
whole boot through systemd-like sockets: tests/test_datalink_separate.py;
under a real systemd: tests/system/test_lamboot_nspawn.py. No C-lamd side:
Debian's lamd has no datalink service that systemd starts (the boot
through stock lamboot beside C lamds is in those tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from lamd.datalink import handoff
from lamd.session import LAM_SOCKET, LAMD_DATALINK, LAMD_DATALINK_SOCKET

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0

#: run as the service: early.start(), then what it did and which modules of
#: the daemon it had imported, as JSON on stdout; the kernel's connection is
#: checked from the listener the test holds
PROBE = textwrap.dedent("""
    import json, os, sys
    os.dup2(int(os.environ.pop("PROBE_FD")), 3)  # where systemd puts it
    os.environ["LISTEN_PID"] = str(os.getpid())
    from lamd.datalink import early
    e = early.start()
    mods = sorted(m for m in sys.modules if m.startswith("lamd"))
    out = {"early": e is not None, "modules": mods}
    if e is not None:
        out.update(argv=e.argv, error=e.error, announced=e.announced is not None,
                   kernel=e.kernel is not None)
    print(json.dumps(out), flush=True)
    sys.stdin.read()  # held until the test has looked
""")


@pytest.fixture
def session():
    with tempfile.TemporaryDirectory(prefix="lamd-early-") as d:
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(os.path.join(d, LAMD_DATALINK_SOCKET))
        lst.listen(4)
        kern = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        kern.bind(os.path.join(d, LAM_SOCKET))
        kern.listen(4)
        kern.settimeout(TIMEOUT)
        try:
            yield d, lst, kern
        finally:
            lst.close()
            kern.close()


def start(lst: socket.socket, names: str = "lamd-dl@u.socket"):
    """The probe with *lst* as systemd's descriptor 3."""
    fd = os.dup(lst.fileno())
    env = dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES=names, PROBE_FD=str(fd))
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", "-c",
                                 f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + PROBE],
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, pass_fds=(fd,))
    finally:
        os.close(fd)


def result(p: subprocess.Popen) -> dict:
    import json
    line = p.stdout.readline()
    assert line, "the probe said nothing"
    return json.loads(line)


def finish(p: subprocess.Popen) -> None:
    try:
        p.communicate("", timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(TIMEOUT)


def nothing_started(d: str, kern: socket.socket) -> None:
    """No connection on the kernel's socket, no announcement."""
    kern.settimeout(0.3)
    with pytest.raises(socket.timeout):
        kern.accept()
    assert not os.path.exists(os.path.join(d, LAMD_DATALINK))


def test_the_kernel_is_connected_before_the_daemon_is_imported(session):
    d, lst, kern = session
    argv = ["-H", "10.1.2.3", "-P", "4711", "-n", "1", "-o", "0"]
    p = start(lst)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(TIMEOUT)
            c.connect(os.path.join(d, LAMD_DATALINK_SOCKET))
            c.sendall(handoff.encode_request(argv))
            r = result(p)
            k, _ = kern.accept()  # the kernel's socket was connected
            k.close()
        assert r["early"] and r["argv"] == argv and not r["error"], r
        assert r["announced"] and r["kernel"], r
        # the announcement is there for the kernel that starts
        with open(os.path.join(d, LAMD_DATALINK)) as f:
            assert f.read().split()[0] == str(p.pid)
        # nothing of the kernel, the internal processes or the datalink's
        # protocol imported: only the session and the request's codec
        assert not [m for m in r["modules"] if m.startswith(
            ("lamd.kernel", "lamd.iprocs", "lamd.boot", "lamd.jobs", "lamd.service"))], r
        assert "lamd.datalink.process" not in r["modules"], r
    finally:
        finish(p)


def test_a_start_after_a_crash_does_nothing_early(session):
    d, lst, kern = session
    p = start(lst, "lamd-dl@u.socket:dl-state-3")
    try:
        r = result(p)
        assert r == {"early": False, "modules": r["modules"]}, r
        nothing_started(d, kern)
    finally:
        finish(p)


def test_a_request_that_is_not_one_is_not_announced(session):
    d, lst, kern = session
    p = start(lst)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(TIMEOUT)
            c.connect(os.path.join(d, LAMD_DATALINK_SOCKET))
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
            r = result(p)
        assert r["early"] and r["error"] == "not a datalink request", r
        assert not r["announced"] and not r["kernel"], r
        nothing_started(d, kern)
    finally:
        finish(p)
