"""The epoll I/O layer over real Unix sockets, with the daemon in a thread
(or in a process of its own where its memory is measured).

These prove the properties the C kernel lacks: bodies move in bounded chunks,
and a slow, stuck or vanished peer stalls only its own transfer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest

from lamd.client import KernelClient, KernelGone, LamError
from lamd.kernel.constants import EBADREQUEST, KNMSG, KQDETACH, KQSTATE, KTRY, PRCMD
from lamd.kernel import Kernel
from lamd.kernelio import IOLimits, KernelIO
from lamd.kernelio.kernelio import SPLICE_MIN
from lamd.session.kkill import proc_starttime, read_clients, read_killfile
from lamd.kernel.wire import KREQ_SIZE, KMsg, KReq, NMsg

TIMEOUT = 10.0


class Daemon:
    def __init__(self, tmp: str, **limits: int) -> None:
        self.dir = tmp
        self.path = os.path.join(tmp, "lam-kernel-socket")
        self.killfile = os.path.join(tmp, "lam-killfile")
        self.clients_file = os.path.join(tmp, "lamd-clients")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(4096)  # as bind_session_socket: 1,100 clients may connect at once
        self.kernel = Kernel(kernel_pid=os.getpid())
        self.io = KernelIO(self.kernel, lsock, killfile=self.killfile,
                           clients_file=self.clients_file, limits=IOLimits(**limits),
                           tick_interval=0.2)
        self.thread = threading.Thread(target=self.io.run, daemon=True)
        self.thread.start()
        self.opened: list[KernelClient] = []

    def client(self, attach: bool = True) -> KernelClient:
        c = KernelClient.connect(self.path, timeout=TIMEOUT)
        self.opened.append(c)
        if attach:
            c.attach(PRCMD)
        return c

    def raw(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect(self.path)
        return s

    def raw_attached(self) -> tuple[socket.socket, int]:
        """A bare socket that has attached (for clients that misbehave later)."""
        s = self.raw()
        s.sendall(KReq(req=5, index=-1, pid=os.getpid(), priority=PRCMD).pack())
        rep = s.recv(80, socket.MSG_WAITALL)
        return s, int.from_bytes(rep[28:32], "little", signed=True)

    def stop(self) -> None:
        for c in self.opened:
            c.close()
        self.io.request_stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "daemon loop did not stop"
        self.io.shutdown(unlink_socket=self.path)


@pytest.fixture
def daemon(tmp_path: "os.PathLike[str]") -> Iterator[Daemon]:
    d = Daemon(str(tmp_path))
    yield d
    d.stop()


def pattern(n: int, seed: int = 0) -> bytes:
    block = bytes((i * 7 + seed) & 0xFF for i in range(256))
    return (block * (n // 256 + 1))[:n]


def run_thread(fn, *args) -> threading.Thread:  # type: ignore[no-untyped-def]
    errors: list[BaseException] = []

    def wrap() -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported by join_ok
            errors.append(e)

    t = threading.Thread(target=wrap, daemon=True)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t


def join_ok(t: threading.Thread) -> None:
    t.join(TIMEOUT * 3)
    assert not t.is_alive(), "client thread hung"
    if t.errors:  # type: ignore[attr-defined]
        raise t.errors[0]  # type: ignore[attr-defined]


def wait_until(pred, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


# -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 64, 8192, 65536, 1 << 20, 16 << 20])
def test_ping_pong_every_byte(daemon: Daemon, size: int) -> None:
    a, b = daemon.client(), daemon.client()
    out, back = pattern(size, 1), pattern(size, 2)

    def server() -> None:
        for _ in range(3):
            m = b.recv(10, 0, size)
            assert m.body == out
            b.send(11, 0, back)

    t = run_thread(server)
    for _ in range(3):
        assert a.send(10, 0, out) == size
        m = a.recv(11, 0, size)
        assert m.length == size and m.body == back
    join_ok(t)


def test_knmsg_body_with_header(daemon: Daemon) -> None:
    a, b = daemon.client(), daemon.client()
    t = run_thread(lambda: a.send(3, 0, b"payload", KNMSG, nmsg=NMsg(node=5, event=3, length=7)))
    m = b.recv(3, 0, 100, KNMSG)
    join_ok(t)
    assert m.body == b"payload" and m.nmsg is not None and m.nmsg.node == 5


def test_kill_file_lists_attached_pids(daemon: Daemon) -> None:
    a = daemon.client()
    wait_until(lambda: os.path.exists(daemon.killfile))
    pids = read_killfile(daemon.killfile)
    assert pids[0] == os.getpid() and pids[1:] == [os.getpid()]
    # the start time follows the attach reply (it is off the client's path)
    wait_until(lambda: os.getpid() in read_clients(daemon.clients_file))
    a.detach()
    wait_until(lambda: read_killfile(daemon.killfile) == [os.getpid()])


DAEMON_PROCESS = """
import os, sys
sys.path.insert(0, {repo!r})
from tests.test_kernelio import Daemon
d = Daemon({tmp!r}, **{limits!r})
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
d.io.request_stop()
d.thread.join(10)
"""


@contextlib.contextmanager
def daemon_process(tmp: str, **limits: int) -> Iterator[tuple[int, str]]:
    """The I/O layer in a process of its own (so its memory can be measured):
    yields (pid, socket path); stopped and reaped at the end."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "-c",
                          DAEMON_PROCESS.format(repo=repo, tmp=tmp, limits=limits)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().split()
        assert line[:1] == ["ready"], line
        yield int(line[1]), os.path.join(tmp, "lam-kernel-socket")
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def raw_attached_to(path: str) -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(path)
    s.sendall(KReq(req=5, index=-1, pid=os.getpid(), priority=PRCMD).pack())
    rep = s.recv(80, socket.MSG_WAITALL)
    return s, int.from_bytes(rep[28:32], "little", signed=True)


def unix_recv_queues() -> dict[int, tuple[int, int]]:
    """inode -> (bytes in its receive queue, peer's inode), for every Unix
    stream socket (``ss -x``: Recv-Q of a connected socket is exact bytes)."""
    cp = subprocess.run(["ss", "-xnH"], capture_output=True, text=True, timeout=10)
    assert cp.returncode == 0, cp.stderr
    out = {}
    for line in cp.stdout.splitlines():
        f = line.split()
        if f[0] == "u_str" and f[1] == "ESTAB":
            out[int(f[-3])] = (int(f[2]), int(f[-1]))
    return out


def held_by_daemon(sender: socket.socket, written: int, receiver: socket.socket,
                   ahead: int) -> int:
    """Body bytes the daemon has read from *sender* and not yet written to
    *receiver*: what the sender wrote, less what waits unread in the daemon's
    end of the sender's connection, less what reached the receiver's queue
    (beyond the *ahead* bytes of reply queued before the body)."""
    queues = unix_recv_queues()
    mine = os.fstat(sender.fileno()).st_ino
    daemon_end = [rq for ino, (rq, peer) in queues.items() if peer == mine]
    assert len(daemon_end) == 1, daemon_end
    delivered = queues[os.fstat(receiver.fileno()).st_ino][0] - ahead
    return written - daemon_end[0] - delivered


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def write_until_stalled(s: socket.socket, data: "bytes | memoryview",
                        quiet: float = 0.5) -> int:
    """Write *data* without blocking until nothing more is taken for *quiet* s."""
    s.setblocking(False)
    sent = 0
    last = time.monotonic()
    while sent < len(data) and time.monotonic() - last < quiet:
        try:
            n = s.send(memoryview(data)[sent:sent + (1 << 20)])
        except BlockingIOError:
            time.sleep(0.01)
            continue
        sent += n
        last = time.monotonic()
    return sent


def bytes_in_pipes(pid: int) -> list[int]:
    """Bytes queued in each pipe process *pid* has open (not its stdin,
    stdout, stderr): read through /proc (FIONREAD on the same pipe), each
    pipe once (its two ends are two descriptors)."""
    import fcntl
    import termios
    out = []
    seen = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        if int(name) <= 2:
            continue
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
        if not target.startswith("pipe:") or target in seen:
            continue
        seen.add(target)
        fd = os.open(f"/proc/{pid}/fd/{name}", os.O_RDONLY | os.O_NONBLOCK)
        try:
            out.append(int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4), "little"))
        finally:
            os.close(fd)
    return out


@pytest.mark.parametrize("move_buffer,splice_min", [(64 * 1024, 64 * 1024),
                                                    (256 * 1024, 64 * 1024),
                                                    (256 * 1024, -1)],
                         ids=["64k-spliced", "256k-spliced", "256k-copied"])
def test_stalled_receiver_stalls_only_its_own_transfer(tmp_path, move_buffer: int,
                                                       splice_min: int) -> None:
    """A receiver that never reads its 8 MiB body: the daemon holds at most
    ``move_buffer`` bytes of it (measured: the bytes the sender wrote, less
    the socket queues on both sides; and the daemon's resident memory), the
    sender stops, and every other pair keeps its full speed. When the
    receiver goes, the rest of the body is drained and the sender finishes.
    Spliced, what it holds is in a pipe (each pipe read through /proc), so
    the pipe is bounded too; copied, no pipe is used."""
    size = 8 << 20
    with daemon_process(str(tmp_path), move_buffer=move_buffer,
                        splice_min=splice_min) as (pid, path):
        slow_r, ridx = raw_attached_to(path)
        slow_r.sendall(KReq(req=1, index=ridx, msg=KMsg(50, 0, size, 0)).pack())
        time.sleep(0.05)
        sender, sidx = raw_attached_to(path)
        rss_before = rss_bytes(pid)
        sender.sendall(KReq(req=0, index=sidx, msg=KMsg(50, 0, size, 0)).pack())
        rep = sender.recv(80, socket.MSG_WAITALL)
        assert int.from_bytes(rep[8:12], "little") == size  # kr_length: "send it all"
        big = pattern(size)
        written = write_until_stalled(sender, big)
        # stalled: the daemon takes nothing more and moves nothing (a busy
        # machine may take a while to get there)
        for _ in range(10):
            held = held_by_daemon(sender, written, slow_r, ahead=80)
            time.sleep(0.3)
            more = write_until_stalled(sender, memoryview(big)[written:], quiet=0.2)
            written += more
            if not more and held_by_daemon(sender, written, slow_r, ahead=80) == held:
                break
        else:
            raise AssertionError("the transfer never stalled")
        assert written < size, "the daemon took the whole body from a stalled transfer"
        assert 0 < held <= move_buffer, (held, move_buffer)
        in_pipes = bytes_in_pipes(pid)
        if splice_min >= 0:
            # the body half in the pipe: all the daemon holds is there
            assert sum(in_pipes) == held, (in_pipes, held)
        else:
            assert in_pipes == []
        grew = rss_bytes(pid) - rss_before
        # about move_buffer (it is allocated and filled); the whole body would be 8 MiB
        assert grew <= move_buffer + (256 << 10), f"daemon RSS grew {grew} bytes"

        a, b = KernelClient.connect(path, TIMEOUT), KernelClient.connect(path, TIMEOUT)
        try:
            a.attach(PRCMD)
            b.attach(PRCMD)
            tb = run_thread(lambda: [b.send(61, 0, b.recv(60, 0, 64).body) for _ in range(200)])
            t0 = time.monotonic()
            for i in range(200):
                a.send(60, 0, pattern(64, i))
                assert a.recv(61, 0, 64).body == pattern(64, i)
            assert time.monotonic() - t0 < TIMEOUT
            join_ok(tb)
        finally:
            a.close()
            b.close()
        # still stalled, and still bounded
        assert held_by_daemon(sender, written, slow_r, ahead=80) == held
        slow_r.close()  # receiver vanishes: the sender's body is drained and dropped
        sender.settimeout(TIMEOUT)
        sender.sendall(memoryview(big)[written:])
        # the sender is still in good standing: it is answered
        sender.sendall(KReq(req=2, index=sidx, pid=os.getpid()).pack())  # KQSTATE
        assert int.from_bytes(sender.recv(80, socket.MSG_WAITALL)[:4], "little") == 0
        sender.close()


def spare_pipes(d: Daemon) -> int:
    return len(d.io._pipes)


def test_large_body_crosses_spliced(daemon: Daemon) -> None:
    """A body of ``splice_min`` bytes or more goes through a pipe (kept for
    the next one afterwards), every byte in order, also with body bytes
    that came with the request; a smaller body is copied (no pipe)."""
    a, b = daemon.client(), daemon.client()
    small = pattern(SPLICE_MIN - 1, 3)
    t = run_thread(lambda: a.send(80, 0, small))
    assert b.recv(80, 0, len(small)).body == small
    join_ok(t)
    assert spare_pipes(daemon) == 0
    for i, size in enumerate([SPLICE_MIN, 1 << 20, (3 << 20) + 7]):
        big = pattern(size, i)
        t = run_thread(lambda: a.send(81, 0, big))
        m = b.recv(81, 0, size)
        join_ok(t)
        assert m.length == size and m.body == big, i
        wait_until(lambda: spare_pipes(daemon) == 1)  # one pipe, used again
    # the request and the body in one write, not waiting for the reply: the
    # body bytes read with the request go first (from the buffer, with the
    # receiver's reply), the rest through the pipe
    raw, idx = daemon.raw_attached()
    big = pattern(1 << 20, 9)
    ms: list = []
    tr = run_thread(lambda: ms.append(b.recv(82, 0, len(big))))
    wait_until(lambda: any(p.state == 2 for p in daemon.kernel.clients()))  # KSRECV
    tw = run_thread(lambda: raw.sendall(KReq(req=0, index=idx,
                                             msg=KMsg(82, 0, len(big), 0)).pack() + big))
    assert int.from_bytes(raw.recv(80, socket.MSG_WAITALL)[8:12], "little") == len(big)
    join_ok(tw)
    join_ok(tr)
    assert ms[0].body == big
    raw.close()


@pytest.mark.parametrize("splice_min", [-1, 0], ids=["copied", "spliced"])
def test_body_bytes_with_the_request_beyond_the_move_buffer(tmp_path, splice_min: int) -> None:
    """A request and its 10 KiB body in one write, to a daemon that holds
    4 KiB per body: the body bytes read with the request all go first (they
    used to be left behind the buffer, and the body never completed)."""
    d = Daemon(str(tmp_path), move_buffer=4096, splice_min=splice_min)
    try:
        b = d.client()
        raw, idx = d.raw_attached()
        for i in range(3):
            big = pattern(10240 + i, i)
            ms: list = []
            tr = run_thread(lambda: ms.append(b.recv(90, 0, len(big))))
            wait_until(lambda: any(p.state == 2 for p in d.kernel.clients()))  # KSRECV
            raw.sendall(KReq(req=0, index=idx, msg=KMsg(90, 0, len(big), 0)).pack() + big)
            assert int.from_bytes(raw.recv(80, socket.MSG_WAITALL)[8:12], "little") == len(big)
            join_ok(tr)
            assert ms[0].body == big, i
        raw.close()
    finally:
        d.stop()


def test_splice_refused_falls_back_to_copying(tmp_path, monkeypatch, caplog) -> None:
    """A kernel that refuses ``splice`` (EINVAL) at the first call, or half
    way through a body with bytes in the pipe: the body arrives whole, copied,
    every later body is copied, and it is said once."""
    real = os.splice
    calls = [0]

    def failing_after(n: int):  # type: ignore[no-untyped-def]
        def splice(*args, **kw):  # type: ignore[no-untyped-def]
            calls[0] += 1
            if calls[0] > n:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real(*args, **kw)
        return splice

    for n in (0, 3):  # refused at once; refused with a body half in the pipe
        calls[0] = 0
        monkeypatch.setattr(os, "splice", failing_after(n))
        (tmp_path / str(n)).mkdir()
        pipes_before = own_pipes()
        d = Daemon(str(tmp_path / str(n)))
        try:
            a, b = d.client(), d.client()
            with caplog.at_level("WARNING", logger="lamd.kernelio"):
                for i in range(3):
                    big = pattern((2 << 20) + i, i)
                    t = run_thread(lambda: a.send(83, 0, big))
                    m = b.recv(83, 0, len(big))
                    join_ok(t)
                    assert m.body == big, (n, i)
            assert calls[0] == n + 1  # the refusal, and no splice after it
            assert not d.io._splice_ok and spare_pipes(d) == 0
            said = [r for r in caplog.records if "cannot splice" in r.getMessage()]
            assert len(said) == 1, said
            caplog.clear()
        finally:
            d.stop()
        assert own_pipes() == pipes_before  # none left open


def own_pipes() -> int:
    n = 0
    for f in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            n += os.readlink(f"/proc/self/fd/{f}").startswith("pipe:")
    return n


def test_sender_that_never_writes_its_body(daemon: Daemon) -> None:
    recv = daemon.client()
    liar, idx = daemon.raw_attached()
    tr = run_thread(lambda: recv.recv(70, 0, 1000))
    time.sleep(0.05)
    liar.sendall(KReq(req=0, index=idx, msg=KMsg(70, 0, 1000, 0)).pack())
    liar.recv(80)  # reply: "write your body now" -- and it never does
    a, b = daemon.client(), daemon.client()
    tb = run_thread(lambda: b.send(72, 0, b.recv(71, 0, 10).body))
    a.send(71, 0, b"unaffected")
    assert a.recv(72, 0, 10).body == b"unaffected"
    join_ok(tb)
    liar.sendall(b"x" * 10)
    liar.close()  # vanishes mid-body: the receiver cannot be completed
    join_ok_raises(tr, (KernelGone, ConnectionError))


def join_ok_raises(t: threading.Thread, exc: tuple) -> None:
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert t.errors and isinstance(t.errors[0], exc), t.errors  # type: ignore[attr-defined]


def test_receiver_vanishing_mid_body_lets_sender_finish(daemon: Daemon) -> None:
    r, idx = daemon.raw_attached()
    r.sendall(KReq(req=1, index=idx, msg=KMsg(80, 0, 4 << 20, 0)).pack())
    time.sleep(0.05)
    s = daemon.client()
    t = run_thread(lambda: s.send(80, 0, pattern(4 << 20)))
    r.recv(80)
    r.recv(1000)
    r.close()
    join_ok(t)
    # the sender is still in good standing
    assert s.state(os.getpid()).reply == 0
    wait_until(lambda: len(daemon.kernel.clients()) == 1)


def test_truncated_request_leaves_no_stale_entry(daemon: Daemon) -> None:
    s, _ = daemon.raw_attached()
    s.sendall(KReq(req=1, index=0, msg=KMsg(1, 0, 1, 0)).pack()[:50])
    s.close()
    wait_until(lambda: daemon.kernel.clients() == [])
    wait_until(lambda: read_killfile(daemon.killfile) == [os.getpid()])


def test_garbage_gets_error_replies_and_others_are_served(daemon: Daemon) -> None:
    g = daemon.raw()
    g.sendall(bytes(range(256)) * 2 + b"\xff" * (KREQ_SIZE * 4 - 512))
    got = b""
    while len(got) < 80 * 4:
        chunk = g.recv(4096)
        if not chunk:
            break
        got += chunk
    assert len(got) == 80 * 4
    a = daemon.client()
    with pytest.raises(LamError) as e:
        a.recv(1, 0, 1, KTRY)  # served as usual: nobody sends, so EWOULDBLOCK
    assert e.value.code == errno.EWOULDBLOCK
    g.close()


def test_attach_with_a_false_pid_is_refused(daemon: Daemon) -> None:
    c = daemon.client(attach=False)
    with pytest.raises(LamError) as e:
        c.attach(PRCMD, pid=1)
    assert e.value.code == 1  # EPERM
    assert daemon.kernel.clients() == []


def test_request_flood_does_not_starve_others(daemon: Daemon) -> None:
    flood = daemon.client()
    req = KReq(req=2, index=flood.index, pid=os.getpid()).pack() * 2000
    stop = threading.Event()

    def flooder() -> None:
        flood.sock.settimeout(TIMEOUT)
        while not stop.is_set():
            flood.sock.sendall(req)
            need = 80 * 2000
            while need:
                need -= len(flood.sock.recv(min(need, 1 << 20)))

    t = run_thread(flooder)
    a, b = daemon.client(), daemon.client()
    tb = run_thread(lambda: [b.send(91, 0, b.recv(90, 0, 8).body) for _ in range(100)])
    worst = 0.0
    for i in range(100):
        t0 = time.monotonic()
        a.send(90, 0, b"12345678")
        a.recv(91, 0, 8)
        worst = max(worst, time.monotonic() - t0)
    stop.set()
    join_ok(tb)
    join_ok(t)
    assert worst < 2.0


def test_many_clients_at_once(daemon: Daemon) -> None:
    n = 300  # beyond the C kernel's 288-process table
    clients = [daemon.client() for _ in range(n)]
    assert len(daemon.kernel.clients()) == n
    threads = [run_thread(lambda c=c, i=i: c.send(1000 + i, 0, pattern(100, i)))
               for i, c in enumerate(clients[: n // 2])]
    for i, c in enumerate(clients[n // 2:]):
        assert c.recv(1000 + i, 0, 100).body == pattern(100, i)
    for t in threads:
        join_ok(t)


def test_more_than_a_thousand_clients_without_threads(daemon: Daemon) -> None:
    """1,100 attached clients (the C lamd holds 288), each pair moving one
    verified message; raw sockets, so no client threads are needed."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = 1100
    if soft < 2 * n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * n), hard))
    socks = [daemon.raw() for _ in range(n)]
    try:
        for s in socks:
            s.sendall(KReq(req=5, index=-1, pid=os.getpid(), priority=PRCMD).pack())
        index = []
        for s in socks:
            rep = s.recv(80, socket.MSG_WAITALL)
            index.append(int.from_bytes(rep[28:32], "little", signed=True))
        assert len(set(index)) == n
        assert len(daemon.kernel.clients()) == n
        half = n // 2
        for i in range(half):  # receivers block first
            socks[half + i].sendall(KReq(req=1, index=index[half + i],
                                         msg=KMsg(5000 + i, 0, 32, 0)).pack())
        for i in range(half):
            socks[i].sendall(KReq(req=0, index=index[i], msg=KMsg(5000 + i, 0, 32, 0)).pack())
        for i in range(half):
            assert socks[i].recv(80, socket.MSG_WAITALL)[:4] == b"\0\0\0\0"
            socks[i].sendall(pattern(32, i))
        for i in range(half):
            r = socks[half + i]
            assert r.recv(80, socket.MSG_WAITALL)[:4] == b"\0\0\0\0"
            assert r.recv(32, socket.MSG_WAITALL) == pattern(32, i)
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: daemon.kernel.clients() == [])


def test_client_that_never_reads_replies_is_bounded(tmp_path) -> None:
    d = Daemon(str(tmp_path), max_queued=64 * 1024)
    try:
        hog = d.client()
        n = 20000  # 1.6 MB of replies asked for, never read (yet)
        payload = KReq(req=2, index=hog.index, pid=os.getpid()).pack() * n
        t = run_thread(lambda: hog.sock.sendall(payload))
        time.sleep(0.5)
        conn = next(c for c in d.io.conns.values() if c.pid == os.getpid() and c.queued)
        assert conn.read_paused
        # bounded: the limit plus at most one turn's worth of replies
        assert conn.queued <= 64 * 1024 + d.io.limits.requests_per_turn * 80 + 4096
        a, b = d.client(), d.client()
        tb = run_thread(lambda: b.send(2, 0, b.recv(1, 0, 4).body))
        a.send(1, 0, b"ping")
        assert a.recv(2, 0, 4).body == b"ping"
        join_ok(tb)
        got = 0
        while got < n * 80:  # now it reads: every reply arrives, none lost
            got += len(hog.sock.recv(1 << 20))
        assert got == n * 80
        join_ok(t)
    finally:
        d.stop()


def test_out_of_descriptors_refuses_new_clients_and_recovers(tmp_path) -> None:
    """At RLIMIT_NOFILE the daemon refuses a new client at once (it sees EOF)
    instead of spinning on accept(); when a client leaves it accepts again.
    The daemon runs in its own process with a small descriptor limit."""
    import subprocess
    import sys
    script = f"""
import os, resource, sys, time
sys.path.insert(0, {str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))!r})
from tests.test_kernelio import Daemon
d = Daemon({str(tmp_path)!r})
base = len(os.listdir('/proc/self/fd'))
resource.setrlimit(resource.RLIMIT_NOFILE, (base + 20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print("ready", flush=True)
sys.stdin.readline()
t0 = time.process_time()
time.sleep(0.5)
print("cpu", round(time.process_time() - t0, 3), "refusing", d.io._refusing, flush=True)
sys.stdin.readline()
d.io.request_stop()
d.thread.join(10)
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held: list[KernelClient] = []
    try:
        assert p.stdout.readline().strip() == "ready"
        path = os.path.join(str(tmp_path), "lam-kernel-socket")
        refused = None
        for _ in range(40):
            try:
                c = KernelClient.connect(path, timeout=5)
                held.append(c)
                c.attach()
            except (KernelGone, OSError) as e:
                refused = e
                break
        assert refused is not None, "never refused"
        assert 5 <= len(held) <= 20
        p.stdin.write("\n")
        p.stdin.flush()
        line = p.stdout.readline().split()
        assert line[0] == "cpu" and line[3] == "True", line
        assert float(line[1]) < 0.25, f"the loop spun: {line[1]} s of CPU in 0.5 s"
        for c in held[-3:]:
            c.close()
        del held[-3:]
        time.sleep(0.3)
        c = KernelClient.connect(path, timeout=5)
        held.append(c)
        assert c.attach() >= 0  # accepted again
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=20)
    finally:
        for c in held:
            c.close()
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


PID_HOLDER = """
import socket, sys
back = socket.socket(fileno=int(sys.argv[2]))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(back, [b"x"], [s.fileno()])
s.close()  # the test holds the only copy: its close is the connection's
sys.stdin.read()  # live until the test is done
"""


@pytest.fixture
def other_process_client(daemon: Daemon) -> Iterator:
    """Clients whose connections were made by processes of their own, so each
    has its own real, live pid (SO_PEERCRED is the connecting process's); the
    socket is handed back to the test, which speaks for that process."""
    holders: list[subprocess.Popen] = []

    def make() -> tuple[KernelClient, subprocess.Popen]:
        mine, theirs = socket.socketpair()
        p = subprocess.Popen([sys.executable, "-c", PID_HOLDER, daemon.path,
                              str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                             stdin=subprocess.PIPE)
        holders.append(p)
        theirs.close()
        mine.settimeout(TIMEOUT)
        _, fds, _, _ = socket.recv_fds(mine, 1, 1)
        mine.close()
        assert len(fds) == 1
        c = KernelClient(socket.socket(fileno=fds[0]), TIMEOUT)
        daemon.opened.append(c)
        c.pid = p.pid
        c.attach(PRCMD)
        return c, p

    yield make
    for p in holders:
        p.kill()
        p.wait(timeout=10)


def test_kill_file_cut_back_and_rewritten(daemon: Daemon, other_process_client) -> None:
    """The last client listed leaving cuts the file back (same file); one in
    the middle leaving rewrites it (a complete new copy swapped in); either
    way it lists exactly the attached clients, each a distinct live process,
    in the order they attached."""
    me = os.getpid()
    clients = [other_process_client() for _ in range(5)]
    pids = [p.pid for _, p in clients]
    assert len(set(pids) | {me}) == 6

    def listed(expect: list[int]) -> None:
        try:
            wait_until(lambda: read_killfile(daemon.killfile) == [me, *expect], 3)
        except AssertionError:
            raise AssertionError(f"kill file {read_killfile(daemon.killfile)}, "
                                 f"expected {[me, *expect]}") from None
        with open(daemon.killfile) as f:
            assert f.read() == "".join(f"{pid}\n" for pid in [me, *expect])
        assert all(running(pid) for pid in expect)

    def inode() -> int:
        return os.stat(daemon.killfile).st_ino

    listed(pids)
    # lamd-clients has each one's real start time (read off the attach path)
    wait_until(lambda: set(pids) <= set(read_clients(daemon.clients_file)))
    starts = read_clients(daemon.clients_file)
    assert {pid: starts[pid] for pid in pids} == {pid: proc_starttime(pid) for pid in pids}

    ino = inode()
    clients[4][0].detach()  # the last line: cut back in place
    listed(pids[:4])
    assert inode() == ino
    clients[1][0].detach()  # the middle: rewritten whole
    listed([pids[0], pids[2], pids[3]])
    assert inode() != ino
    clients[2][0].close()  # the middle again, by closing without a detach
    listed([pids[0], pids[3]])
    late, p6 = other_process_client()  # a newcomer is appended
    listed([pids[0], pids[3], p6.pid])
    ino = inode()
    clients[0][0].close()  # the first
    listed([pids[3], p6.pid])
    assert inode() != ino
    late.detach()
    clients[3][0].detach()
    listed([])


def running(pid: int) -> bool:
    """A live process (not a zombie) has that pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_hostile_identity_requests_over_sockets(daemon: Daemon) -> None:
    """Attaching twice, detaching someone else, naming another's index: each
    refused (or ignored, for a detach, which has no reply); nothing stale."""
    a, b = daemon.client(), daemon.client()
    with pytest.raises(LamError) as e:
        a.attach()  # a second attach on the same connection
    assert e.value.code == EBADREQUEST
    b_pid_req = KReq(req=KQDETACH, index=a.index, pid=os.getpid() + 1)
    a.sock.sendall(b_pid_req.pack())  # detach "another" pid: refused, logged
    forged = KReq(req=KQSTATE, index=b.index, pid=os.getpid())
    rep = a.request(forged)  # a request naming b's process index
    assert rep.reply == EBADREQUEST
    assert len(daemon.kernel.clients()) == 2
    daemon.kernel.check_invariants()


def test_signal_dispatched_without_the_python_level_handler() -> None:
    """A signal reaches its callback from the byte CPython's C-level handler
    writes to the wakeup descriptor, even if the Python-level handler never
    ran: compiled code busy with clients may not let it run for a long time
    (a SIGUSR1 re-exec was once left undelivered for 25 s under systemd)."""
    import signal as _signal

    from lamd.kernelio.loop import EventLoop

    loop = EventLoop()
    got: list[int] = []
    try:
        loop.add_signal(_signal.SIGUSR2, got.append)
        os.write(loop._wake_w.fileno(), bytes([_signal.SIGUSR2]))  # what the C handler writes
        loop.wakeup()  # and a plain wake-up (0) is no signal
        loop.poll(1.0)
        assert got == [_signal.SIGUSR2]
    finally:
        loop.remove_signal(_signal.SIGUSR2)
        loop.close()


def test_the_loop_does_not_write_again_the_kill_file_the_start_wrote(tmp_path) -> None:
    """kkillopen (write_killfile(strict=True)) writes the kill file before the
    first turn; the loop then writes it only when something changed (issue 13:
    the same lines exchanged again loaded ctypes before the first reply, and
    overwrote what a daemon started for the same session meanwhile wrote)."""
    path = str(tmp_path / "lam-kernel-socket")
    killfile = str(tmp_path / "lam-killfile")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(16)
    io = KernelIO(Kernel(kernel_pid=os.getpid()), lsock, killfile=killfile,
                  clients_file=str(tmp_path / "lamd-clients"), limits=IOLimits(),
                  tick_interval=0.2)
    io.write_killfile(strict=True)
    assert read_killfile(killfile) == [os.getpid()]
    with open(killfile, "w") as f:  # someone else's lines now
        f.write("1\n")
    t = threading.Thread(target=io.run, daemon=True)
    t.start()
    try:
        time.sleep(0.3)  # the loop's first turns and a tick
        assert read_killfile(killfile) == [1]
        c = KernelClient.connect(path, timeout=TIMEOUT)  # a change: written again
        c.attach(PRCMD)
        wait_until(lambda: read_killfile(killfile)[-1:] == [os.getpid()])
        c.close()
    finally:
        io.request_stop()
        t.join(TIMEOUT)
        io.shutdown(unlink_socket=path)
