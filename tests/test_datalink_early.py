"""``python3 -m lamd.datalink`` under ``lamd-dl@.socket`` sets the kernel's
start going and calls lamboot back before it imports the rest
(lamd/datalink/early.py, issue 11: a node whose services systemd starts on
demand booted about 150 ms slower than one booted by hand, the kernel
starting only once the datalink process had imported everything, and
lamboot waiting for the callback after those imports).

Checked here, in a process started as systemd starts the service (its
socket passed as ``LISTEN_FDS``, a handoff client writing hboot's
arguments): the kernel's socket gets its connection and lamboot its
callback (the ports of the sockets kept for the boot agent) while the
datalink process has imported nothing of the daemon's but the session,
the request's codec and the callback's, and the announcement is written by
then (a kernel that starts leaves the datalink to it); a start after a
crash (a state in the descriptor store), a request that is not one and
another session's request do nothing early. The
whole boot through systemd-like sockets: tests/test_datalink_separate.py;
under a real systemd: tests/system/test_lamboot_nspawn.py. No C-lamd side:
Debian's lamd has no datalink service that systemd starts (the boot
through stock lamboot beside C lamds is in those tests)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from lamd.datalink import handoff
from lamd.session import LAM_SOCKET, LAMD_DATALINK, LAMD_DATALINK_FIFO, LAMD_DATALINK_SOCKET

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0

#: run as the service: early.start(), then what it did and which modules of
#: the daemon it had imported, as JSON on stdout; the kernel's connection is
#: checked from the listener the test holds
PROBE = textwrap.dedent("""
    import json, os, sys
    for i, fd in enumerate(os.environ.pop("PROBE_FDS").split(",")):
        os.dup2(int(fd), 3 + i)  # where systemd puts them
    os.environ["LISTEN_PID"] = str(os.getpid())
    from lamd.datalink import early
    e = early.start(early.passed())
    mods = sorted(m for m in sys.modules if m.startswith("lamd"))
    out = {"early": e is not None, "modules": mods,
           "socket": sorted(m for m in ("socket", "selectors") if m in sys.modules)}
    if e is not None:
        out.update(argv=e.argv, error=e.error, announced=e.announced is not None,
                   kernel=e.kernel is not None)
        called = sys.modules.get("lamd.boot.early") and sys.modules["lamd.boot.early"].PENDING
        out["called"] = [called.boot_port, called.dli_port] if called else None
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


@pytest.fixture
def fifo(session):
    """lamd-dl@.socket's FIFO in the session, held open read-write as
    systemd holds it (its descriptor)."""
    d, _lst, _kern = session
    path = os.path.join(d, LAMD_DATALINK_FIFO)
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


#: run as the service: early.idle() with what is waiting, as JSON
IDLE_PROBE = textwrap.dedent("""
    import json, os, sys
    for i, fd in enumerate(os.environ.pop("PROBE_FDS").split(",")):
        os.dup2(int(fd), 3 + i)
    os.environ["LISTEN_PID"] = str(os.getpid())
    from lamd.datalink import early
    print(json.dumps(early.idle(early.passed())), flush=True)
    sys.stdin.read()
""")


def start(lst: socket.socket, names: str = "lamd-dl@u.socket", fifo: int | None = None,
          probe: str = PROBE):
    """The probe with *lst* as systemd's descriptor 3 (and *fifo* after it,
    as lamd-dl@.socket passes its ListenFIFO=), and a memfd for each
    further name (what the descriptor store passes after them)."""
    fds = [os.dup(lst.fileno())]
    if fifo is not None:
        fds.append(os.dup(fifo))
        names = names.split(":")[0] + ":" + names
    fds += [os.memfd_create(n) for n in names.split(":")[1 + (fifo is not None):]]
    env = dict(os.environ, LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names,
               PROBE_FDS=",".join(map(str, fds)))
    try:
        return subprocess.Popen([sys.executable, "-I", "-S", "-c",
                                 f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + probe],
                                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, pass_fds=tuple(fds))
    finally:
        for fd in fds:
            os.close(fd)


def result(p: subprocess.Popen) -> dict:
    import json
    line = p.stdout.readline()
    assert line, "the probe said nothing"
    return json.loads(line)


def hand(d: str, p: subprocess.Popen, data: bytes) -> dict:
    """*data* written to the session's datalink socket, as the prefix tree's
    hand-off writes a request; what the probe then says."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(TIMEOUT)
        c.connect(os.path.join(d, LAMD_DATALINK_SOCKET))
        c.sendall(data)
        return result(p)


def write_fifo(d: str, p: subprocess.Popen, data: bytes) -> dict:
    """*data* written to the session's FIFO in one write, as the prefix
    tree's ``bin/lamd`` writes a request; what the probe then says."""
    fd = os.open(os.path.join(d, LAMD_DATALINK_FIFO), os.O_WRONLY | os.O_NONBLOCK)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)
    return result(p)


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


@pytest.fixture
def lamboot():
    """A listener where lamboot waits for the callbacks (-H 127.0.0.1 -P port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        s.settimeout(TIMEOUT)
        yield s


@pytest.mark.parametrize("way", ["socket", "fifo"])
def test_the_kernel_is_connected_before_the_daemon_is_imported(session, fifo, lamboot, way):
    """Both ways in: the hand-off's connection, and a request in the FIFO
    (the prefix tree's shell script, no Python before the service's)."""
    d, lst, kern = session
    argv = ["-H", "127.0.0.1", "-P", str(lamboot.getsockname()[1]), "-n", "1", "-o", "0"]
    p = start(lst, fifo=fifo)
    try:
        if way == "socket":
            r = hand(d, p, handoff.encode_request(argv))
        else:
            r = write_fifo(d, p, handoff.encode_fifo_request(argv))
        k, _ = kern.accept()  # the kernel's socket was connected
        k.close()
        assert r["early"] and r["argv"] == argv and not r["error"], r
        assert r["announced"] and r["kernel"], r
        # the announcement is there for the kernel that starts
        with open(os.path.join(d, LAMD_DATALINK)) as f:
            assert f.read().split()[0] == str(p.pid)
        # lamboot was called back with the ports of the sockets kept for
        # boot_agent: status INT4_NIL (0), node 1, boot port, datalink
        # port, CPUs (-1: LAM's "unknown"), big-endian
        cb, _ = lamboot.accept()
        with cb:
            cb.settimeout(TIMEOUT)
            got = b""
            while len(got) < 20 and (chunk := cb.recv(20 - len(got))):
                got += chunk
        assert struct.unpack(">5i", got) == (0, 1, *r["called"], -1), (got, r)
        # nothing of the kernel, the internal processes or the datalink's
        # protocol imported: only the session, the request's codec and the
        # callback's
        assert not [m for m in r["modules"] if m.startswith(
            ("lamd.kernel", "lamd.iprocs", "lamd.jobs", "lamd.service"))], r
        assert [m for m in r["modules"] if m.startswith("lamd.boot")] == [
            "lamd.boot", "lamd.boot.early"], r
        assert "lamd.datalink.process" not in r["modules"], r
        # nor the socket module (its enums and selectors: 4.4 ms before the
        # callback): _socket's sockets until .process takes them
        assert r["socket"] == [], r
    finally:
        finish(p)


def test_another_sessions_request_calls_nobody_back(session, lamboot):
    """.process refuses a request naming a session suffix or prefix (the
    socket serves its own session): lamboot is not called back early."""
    d, lst, kern = session
    argv = ["-H", "127.0.0.1", "-P", str(lamboot.getsockname()[1]), "-n", "1", "-o", "0",
            "-sessionsuffix", "job7"]
    p = start(lst)
    try:
        r = hand(d, p, handoff.encode_request(argv))
        assert r["early"] and r["argv"] == argv and r["called"] is None, r
        lamboot.settimeout(0.3)
        with pytest.raises(socket.timeout):
            lamboot.accept()
    finally:
        finish(p)


def test_a_start_after_a_crash_does_nothing_early(session):
    """A state in the store (a memfd named dl-state-N after the socket):
    the request waiting on the socket is left for .process's resume."""
    d, lst, kern = session
    p = start(lst, "lamd-dl@u.socket:dl-state-3")
    try:
        r = hand(d, p, handoff.encode_request(["-H", "127.0.0.1", "-P", "9", "-n", "1"]))
        assert r == {"early": False, "modules": r["modules"], "socket": []}, r
        nothing_started(d, kern)
    finally:
        finish(p)


def test_a_request_that_is_not_one_is_not_announced(session):
    d, lst, kern = session
    p = start(lst)
    try:
        r = hand(d, p, b"GET / HTTP/1.0\r\n\r\n")
        assert r["early"] and r["error"] == "not a datalink request", r
        assert not r["announced"] and not r["kernel"], r
        nothing_started(d, kern)
    finally:
        finish(p)


def test_a_bad_request_in_the_fifo_is_drained_and_not_announced(session, fifo):
    """Garbage in the FIFO: an error, nothing started, and nothing left in
    it (systemd would start the service again for as long as it held any)."""
    d, lst, kern = session
    p = start(lst, fifo=fifo)
    try:
        r = write_fifo(d, p, b"GET / HTTP/1.0\r\n\r\n" * 100)
        assert r["early"] and r["error"] == "not a datalink request", r
        assert not r["announced"] and not r["kernel"], r
        nothing_started(d, kern)
        with pytest.raises(BlockingIOError):
            os.read(fifo, 1)
    finally:
        finish(p)


@pytest.mark.parametrize("argv, rest", [
    ([], b""),
    (["-H", "10.0.0.1", "-P", "9", "-n", "1"], b""),
    (["-H", "10.0.0.1"], b"LAMD-DATALINK 1\0-x\0\0"),
    (["caf\udce9"], b"LAMD"),
])
def test_fifo_requests_split_whole_and_in_pieces(argv, rest):
    data = handoff.encode_fifo_request(argv)
    assert handoff.split_fifo_request(data + rest) == (argv, rest)
    for i in range(len(data)):
        assert handoff.split_fifo_request(data[:i]) == (None, data[:i])
    for bad in (b"X", b"LAMD-DATALINK 2\0\0", b"LAMD-DATALINK 1\0" + b"a" * 5000):
        with pytest.raises(ValueError):
            handoff.split_fifo_request(bad)
    with pytest.raises(ValueError):
        handoff.encode_fifo_request(["-H", ""])


@pytest.mark.parametrize("waiting", ["nothing", "connection", "fifo", "crash"])
def test_idle_is_a_start_with_nothing_to_take(session, fifo, waiting):
    """lamd-dl@.service waits for the next boot with everything imported
    (python3 -m lamd.datalink: early.idle(), then wait_warm) only when it
    was started with no request waiting (after a universe, Restart=always;
    systemctl start): not when its socket started it for a connection or a
    request in the FIFO, nor after a crash (a state in the store)."""
    d, lst, kern = session
    names = "lamd-dl@u.socket" + (":dl-state-1" if waiting == "crash" else "")
    c = None
    if waiting == "connection":
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(os.path.join(d, LAMD_DATALINK_SOCKET))
    elif waiting == "fifo":
        os.write(fifo, handoff.encode_fifo_request(["-H", "127.0.0.1", "-P", "9", "-n", "1"]))
    p = start(lst, names, fifo=fifo, probe=IDLE_PROBE)
    try:
        assert result(p) is (waiting == "nothing"), waiting
    finally:
        finish(p)
        if c is not None:
            c.close()

