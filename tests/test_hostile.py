"""Hostile clients against four defects fixed in the restructure (issue 9,
items 2-5); each test here fails on the code before it (``d139e29``).

1. A client pipelining requests as fast as it can gets ``requests_per_turn``
   served per turn and no more, and what it has written beyond that stays in
   its socket: a stock liblam pair beside it keeps its pace, and the daemon
   does not buffer the flood (``Connection.pending``, ``_mark_pending``; and
   no read-ahead for a connection already queued, which this test found).
2. A client looping on ``KQDUMP`` beside 1,500 attached clients: the table is
   logged as one record at most once per ``dump_interval`` (LAM prints it
   for every request), so neither the pair nor the log pays per dump.
3. A client that names a descriptor server to filed or kenyad and then
   stalls it: the stub gives up after ``FD_SERVER_TIMEOUT`` and the client
   gets ``ESERVICE``; everyone else is served meanwhile.
4. pidfd pinning at admission: a client that died in the listen backlog is
   refused and never listed; with no descriptor left for a pidfd the client
   is refused, never admitted unpinned; every admitted connection has a
   pidfd. Both ways of getting one (``SO_PEERPIDFD``, ``pidfd_open``); the
   first hands out a pidfd even for a dead peer, which this test found.

The timing bounds are "not stalled" bounds: a factor of 10 or 15 over an
unloaded baseline measured in the same test (the numbers measured on a busy
2-core machine, ours and the old code's, are in each test's docstring).
"""

from __future__ import annotations

import logging
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lamd.client import KernelClient, KernelGone
from lamd.iprocs import boot_table, stubs
from lamd.jobs import srfd
from lamd.iprocs.nreq import BFQRECV, DLCTL, DLUSR, LOCAL, NREEL, data_words
from lamd.kernel import Kernel
from lamd.kernel.constants import (
    ESERVICE, EVBUFFERD, EVECHOD, EVFILED, EVKENYAD, KNMSG, KQATTACH, KQDUMP, KQSEND, KQSR, KQSTATE,
    PRCMD,
    LamErrno,
)
from lamd.kernel.wire import KMsg, KReq, NMsg
from lamd.kernelio import KernelIO
from lamd.session.kkill import read_clients, read_killfile

from . import lamenv
from .test_kernelio import join_ok, run_thread
from .test_cclient import Clients, ok, show

TIMEOUT = 10.0
ROOT = str(Path(__file__).resolve().parent.parent)

# ---------------------------------------------------------------------------
# helper clients run as lamtest (our daemon refuses other uids); they speak
# the wire format by hand so they run against any daemon, C or ours

PRELUDE = r"""
import os, socket, struct, sys, threading, time
KREQ, KREPLY = 104, 80
def kreq(req, index=-1, pid=0, priority=0):
    return struct.pack("<4i", req, index, pid, priority) + bytes(KREQ - 16)
def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    return s
def send_attach(s):
    s.sendall(kreq(5, -1, os.getpid(), 1095))
def attached(s):
    rep = s.recv(KREPLY, socket.MSG_WAITALL)
    if len(rep) != KREPLY or rep[:4] != bytes(4):
        sys.exit("attach failed: %r" % rep)
    return struct.unpack_from("<i", rep, 28)[0]
"""

# KQSTATE on itself in bursts of BATCH, written back to back by one thread
# while another reads the replies (in gulps, with short naps: fewer wake-ups
# leave the CPU to the pair being measured). Commands on stdin: "go" (flood;
# FLOODING once a burst's worth has been answered), "pause" (stop writing;
# PAUSED with the backlog at that moment, once every request written is
# answered).
FLOODER = PRELUDE + r"""
path, batch = sys.argv[1], int(sys.argv[2])
s = connect(path)
send_attach(s)
index = attached(s)
burst = kreq(2, index, os.getpid()) * batch
st = {"sent": 0, "got": 0, "busy": False}
go = threading.Event()
def reader():
    while True:
        try:
            d = s.recv(1 << 20)
        except OSError:
            return
        if not d:
            return
        st["got"] += len(d)
        time.sleep(0.0003)  # read in larger gulps: fewer wake-ups, CPU left to the pair
def writer():
    while True:
        go.wait()
        st["busy"] = True
        try:
            s.sendall(burst)
        except OSError:
            return
        st["sent"] += batch
        st["busy"] = False
threading.Thread(target=reader, daemon=True).start()
threading.Thread(target=writer, daemon=True).start()
print("READY pid=%d" % os.getpid(), flush=True)
for line in sys.stdin:
    replies = lambda: st["got"] // KREPLY
    if line.strip() == "go":
        mark = replies()
        go.set()
        deadline = time.monotonic() + 20
        while replies() - mark < batch and time.monotonic() < deadline:
            time.sleep(0.005)
        print("FLOODING replies=%d" % replies(), flush=True)
    elif line.strip() == "pause":
        go.clear()
        sent, got = st["sent"], replies()
        deadline = time.monotonic() + 10
        while (st["busy"] or replies() < st["sent"]) and time.monotonic() < deadline:
            time.sleep(0.005)
        print("PAUSED sent=%d replies=%d backlog=%d drained=%d"
              % (sent, got, sent - got, replies() == st["sent"]), flush=True)
os._exit(0)
"""

# N connections, each attached, then idle until told to go.
IDLE = PRELUDE + r"""
import resource
path, n = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for _ in range(n):
    s = connect(path)
    send_attach(s)
    socks.append(s)
for s in socks:
    attached(s)
print("ATTACHED n=%d pid=%d" % (n, os.getpid()), flush=True)
sys.stdin.readline()
os._exit(0)
"""

# KQDUMP unattached, as LAM's kdump does (the kernel answers and closes),
# over and over until told to stop.
DUMPER = PRELUDE + r"""
path = sys.argv[1]
stop = threading.Event()
n = [0]
def loop():
    while not stop.is_set():
        s = connect(path)
        s.sendall(kreq(8, -1))
        rep = s.recv(KREPLY, socket.MSG_WAITALL)
        if len(rep) != KREPLY or rep[:4] != bytes(4) or s.recv(1) != b"":
            print("BAD dump reply %r" % rep, flush=True)
            os._exit(3)
        s.close()
        n[0] += 1
t = threading.Thread(target=loop, daemon=True)
t.start()
while n[0] == 0 and t.is_alive():
    time.sleep(0.01)
print("DUMPING", flush=True)
sys.stdin.readline()
stop.set()
print("DONE dumps=%d" % n[0], flush=True)
os._exit(0)
"""


def test_helper_requests_are_lams_layout():
    """The helpers' hand-packed requests are the daemon's struct kreq."""
    ns: dict = {}
    exec(PRELUDE, ns)
    for req, index, pid, pri in ((KQATTACH, -1, 4321, PRCMD), (KQSTATE, 7, 99, 0),
                                 (KQDUMP, -1, 0, 0)):
        assert ns["kreq"](req, index, pid, pri) == \
            KReq(req=req, index=index, pid=pid, priority=pri).pack()


def fields(line: str) -> dict[str, int]:
    return {k: int(v) for k, v in (t.split("=", 1) for t in line.split()[1:] if "=" in t)}


def readline(p: subprocess.Popen, timeout: float = 60) -> str:
    """*p*'s next line of output, or "" if none comes within *timeout*."""
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(p.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return got[0].strip() if got else ""


class Helper:
    """One helper script run as lamtest, driven line by line."""

    def __init__(self, s: lamenv.Session, script: str, *args) -> None:
        self.p = s.popen([lamenv.SYSTEM_PYTHON, "-c", script, *map(str, args)],
                         stdin=subprocess.PIPE)
        self.lines: list[str] = []

    def expect(self, word: str, timeout: float = 60) -> dict[str, int]:
        """The next line, which must start with *word*; its key=value fields."""
        line = readline(self.p, timeout)
        self.lines.append(line)
        if not line.startswith(word):
            self.close()
            err = self.p.stderr.read() if self.p.poll() is not None else ""
            pytest.fail(f"helper said {line!r}, expected {word} (exit {self.p.poll()}):\n{err}")
        return fields(line)

    def tell(self, what: str = "") -> None:
        self.p.stdin.write(what + "\n")
        self.p.stdin.flush()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def pingpong(k: Clients, event: int, iters: int) -> dict[str, int]:
    """A stock liblam pair, 64 B each way; the ping side's RTT line (us)."""
    pong = k.start("pingpong", "pong", event, iters, 64)
    ping = k.start("pingpong", "ping", event, iters, 64)
    cp, r = k.finish(ping, timeout=120)
    ok(cp, r)
    ok(*k.finish(pong, timeout=30))
    assert "RTT" in r, show(cp)
    return r["RTT"][0]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------
# 1. the per-turn request budget


ROUNDS = 5


def test_request_flood_leaves_a_stock_pair_its_pace(daemon, kclient):
    """One client writes KQSTATE requests back to back in bursts of 2,000
    (reading its replies in another thread) while a stock liblam pair runs a
    64 B ping-pong. In five rounds of (unloaded, flooded), the pair's mean
    round trip under the flood stays within 15x of the unloaded means just
    before and after it (the median round counts, so a burst of load on a
    shared machine does not decide); the flooder itself keeps being served;
    and the daemon holds only a bounded backlog of the flood: the rest waits
    in the flooder's socket, which slows it down (its memory does not grow).

    Measured on a busy 2-core machine, median round: ours 5x to 7.5x (rounds
    from 1.6x to 12x: the flooder's 32 requests per turn cost CPython about
    half a millisecond); the C lamd, which reads one request per client per
    select() pass, 1.6x to 2.6x; the code before the fix 46x to 90x (rounds
    from 20x to 122x), because a connection could sit in the queue of
    clients with buffered requests many times over, its budget of 32
    requests per turn multiplied by each entry, so the flooder's turn grew
    to hundreds of requests."""
    k = Clients(daemon, kclient)
    event = 300000 + os.getpid() % 1000 * 64
    dpid = daemon.proc.pid if daemon.kind == "py" else daemon.pids[0]
    f = Helper(daemon.s, FLOODER, daemon.s.socket, 2000)
    rounds = []
    try:
        f.expect("READY")
        rss0 = rss_kib(dpid)
        bases = [pingpong(k, event, 500)]
        for i in range(ROUNDS):
            f.tell("go")
            start = f.expect("FLOODING")["replies"]
            loaded = pingpong(k, event + 8 * (2 * i + 1), 300)
            f.tell("pause")
            paused = f.expect("PAUSED")
            bases.append(pingpong(k, event + 8 * (2 * i + 2), 500))
            base = (bases[-2]["mean"] + bases[-1]["mean"]) / 2
            rounds.append((loaded["mean"] / base, loaded, base, paused, start))
        rss1 = rss_kib(dpid)
    finally:
        f.close()
    print(f"\n[{daemon.kind}] unloaded means {[b['mean'] for b in bases]} us; flooded "
          + "; ".join(f"mean {ld['mean']} p50 {ld['p50']} p90 {ld['p90']} max {ld['max']} us "
                      f"= {r:.1f}x, flooder served {p['replies'] - st} (backlog {p['backlog']})"
                      for r, ld, _, p, st in rounds)
          + f"; daemon RSS {rss0} -> {rss1} KiB")
    for r, loaded, base, paused, start in rounds:
        assert paused["replies"] - start >= 500, "the flooder was starved"
        # what the daemon has read and not served is bounded: the socket
        # buffers, one read, the replies it may queue (1 MiB), and a burst
        assert paused["backlog"] <= 50_000, \
            f"{paused['backlog']} flooder requests buffered (unbounded read-ahead)"
        assert paused["drained"], "the flooder's requests were not all answered"
    ratio, loaded, base = sorted(rounds, key=lambda x: x[0])[ROUNDS // 2][:3]
    assert ratio <= 15, (
        f"under a request flood the pair's mean round trip is {loaded['mean']} us, "
        f"{ratio:.1f}x its unloaded {base:.0f} us (median of {ROUNDS} rounds)")
    assert rss1 - rss0 < 64 * 1024, f"the daemon grew from {rss0} to {rss1} KiB"


# ---------------------------------------------------------------------------
# 2. the KQDUMP amplifier

NIDLE = 1500


@pytest.fixture
def nofile():
    """Enough descriptors for 1,500 clients in each of the daemon and the
    helper (they inherit the limit; the daemon raises its soft limit to it)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * NIDLE + 1024
    soft, hard = old
    if soft < need:
        hard = max(hard, need) if hard != resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


def log_lines(d: lamenv.PyDaemon) -> list[str]:
    return d.log().splitlines()


def test_kqdump_loop_beside_1500_clients(lam_session, lamd_pkg, kclient, nofile):
    """1,500 idle attached clients and a client looping on KQDUMP (each dump
    on a fresh unattached connection, as LAM's kdump does): a stock pair's
    mean round trip stays within 10x of its unloaded mean, and the log grows
    by one table record per dump interval (1 s), not by one line per process
    per dump. LAM's kdump (kclient's ``kdump`` mode makes the same liblam
    calls as ``otb/kdump/kdump.c``: Debian's lam-runtime does not ship the
    tool) exits 0 and the whole table reaches the log.

    Measured: ours 1.0x to 2x, about 40,000 dumps in 3 s logged as 3 records;
    the code before the fix, which walked and logged the table for every
    dump, 300x and 1,522 log lines per dump. The C lamd prints its table on
    every KQDUMP by design (to its stdout) and holds 288 processes, so this
    one runs against ours only."""
    d = lamenv.PyDaemon(lam_session, lamd_pkg)
    k = Clients(d, kclient)
    helpers: list[Helper] = []
    d.start()
    try:
        idle = Helper(lam_session, IDLE, lam_session.socket, NIDLE)
        helpers.append(idle)
        ipid = idle.expect("ATTACHED")["pid"]

        cp, r = k.run("kdump", timeout=30)
        ok(cp, r)
        assert r["KDUMP"] == [{"reply": 0}], show(cp)
        row = re.compile(rf"^(?:lamd\[\d+\]: INFO )?{ipid}\s+{PRCMD}\s+R ")
        deadline = time.monotonic() + TIMEOUT
        while True:
            lines = log_lines(d)
            rows = [ln for ln in lines if row.match(ln)]
            if len(rows) >= NIDLE or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert any(ln.endswith("PID       PRI    STATE                  FLAGS") for ln in lines), \
            "kdump: no table in the log"
        assert len(rows) == NIDLE, f"the table lists {len(rows)} of {NIDLE} idle clients"

        event = 310000 + os.getpid() % 1000 * 64
        base1 = pingpong(k, event, 500)
        time.sleep(1.1)  # the next dump is logged again: count from here
        before = len(log_lines(d))
        t0 = time.monotonic()
        dumper = Helper(lam_session, DUMPER, lam_session.socket)
        helpers.append(dumper)
        dumper.expect("DUMPING")
        loaded = pingpong(k, event + 8, 300)
        time.sleep(max(0.0, t0 + 3.0 - time.monotonic()))  # dump for a few intervals
        dumper.tell()
        dumps = dumper.expect("DONE")["dumps"]
        elapsed = time.monotonic() - t0
        grown = len(log_lines(d)) - before
        base2 = pingpong(k, event + 16, 500)
    finally:
        for h in helpers:
            h.close()
        d.stop()
    base = max(base1["mean"], base2["mean"])
    records = int(elapsed / 1.0) + 2  # dump_interval 1 s
    allowed = records * (NIDLE + 40)  # a record: header + one line per process
    print(f"\nunloaded mean {base1['mean']}/{base2['mean']} us, beside a KQDUMP loop "
          f"mean {loaded['mean']} us p90 {loaded['p90']} max {loaded['max']} "
          f"= {loaded['mean'] / base:.1f}x; {dumps} dumps in {elapsed:.1f} s, "
          f"log grew {grown} lines (allowed {allowed})")
    assert dumps >= 3 * records, f"only {dumps} dumps in {elapsed:.1f} s: nothing tested"
    assert grown <= allowed, (
        f"{dumps} dumps grew the log by {grown} lines ({grown / dumps:.0f} per dump)")
    assert loaded["mean"] <= 10 * base, (
        f"beside a KQDUMP loop the pair's mean round trip is {loaded['mean']} us, "
        f"{loaded['mean'] / base:.1f}x its unloaded {base} us")


# ---------------------------------------------------------------------------
# in-process daemon (the test's own uid) for the stub and admission tests


class InProcDaemon:
    """KernelIO over a real socket in a thread, which can be paused (the loop
    stopped, so clients wait in the listen backlog) and resumed."""

    def __init__(self, tmp: str, *, iprocs: bool = False) -> None:
        self.dir = tmp
        self.path = os.path.join(tmp, "lam-kernel-socket")
        self.killfile = os.path.join(tmp, "lam-killfile")
        self.clients_file = os.path.join(tmp, "lamd-clients")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(64)
        self.kernel = Kernel(kernel_pid=os.getpid())
        self.io = KernelIO(self.kernel, lsock, killfile=self.killfile,
                           clients_file=self.clients_file, tick_interval=0.2)
        if iprocs:
            config = {"session": tmp, "node_addr": "192.0.2.2"}
            self.io.boot(boot_table(config), config)
        self.io.write_killfile(strict=True)  # opens its files now, as lamd does
        self.thread: threading.Thread | None = None
        self.opened: list[KernelClient] = []
        self.resume()

    def resume(self) -> None:
        self.io.stopping = False
        self.thread = threading.Thread(target=self.io.run, daemon=True)
        self.thread.start()

    def pause(self) -> None:
        self.io.request_stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "daemon loop did not stop"

    def client(self, attach: bool = True) -> KernelClient:
        c = KernelClient.connect(self.path, timeout=TIMEOUT)
        self.opened.append(c)
        if attach:
            c.attach(PRCMD)
        return c

    def stop(self) -> None:
        for c in self.opened:
            c.close()
        if self.thread is not None and self.thread.is_alive():
            self.pause()
        self.io.shutdown(unlink_socket=self.path)


def pidfd_pid(pidfd: int) -> int | None:
    """The pid a pidfd refers to (fdinfo ``Pid:``; -1 once it was reaped)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return None


def assert_all_pinned(io: KernelIO) -> None:
    """(c) every admitted connection holds a pidfd of its own peer."""
    for c in list(io.conns.values()):
        assert c.pidfd is not None, f"{c} admitted without a pidfd"
        assert pidfd_pid(c.pidfd) == c.pid, f"{c}: pidfd names pid {pidfd_pid(c.pidfd)}"


# ---------------------------------------------------------------------------
# 3. stubs and a client's descriptor server


def nsend(c: KernelClient, event: int, body: bytes, data: tuple[int, ...] = ()) -> None:
    """liblam's nsend() to a local service through bufferd."""
    h = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=event, type=0,
             data=data_words(*data), length=len(body))
    c.send(EVBUFFERD, DLUSR, body, KNMSG, nmsg=h)


def nrecv(c: KernelClient, event: int, length: int = 64):  # type: ignore[no-untyped-def]
    """liblam's nrecv() through bufferd (a BFQRECV, then the packet)."""
    bf = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
              data=data_words(0, 0, BFQRECV, 0, event, 0, 0, 0))
    return c.sr(EVBUFFERD, DLCTL, b"", event, 0, length, KNMSG, KNMSG, nmsg=bf)


def ask_stub(c: KernelClient, service: str, server: str | None) -> None:
    """filed FQOPENFD naming *server* (lam_lfopenfd), or kenyad PQCREATE with
    RTF_PFDIO (rpcreatev), whose server is lam-<pid> in the session; with
    *server* None a request that names no server (FQOPEN, PQDOOM)."""
    pid = os.getpid()
    if service == "filed":
        if server is None:
            nsend(c, EVFILED, b"", (0, 0, -pid))  # FQOPEN
        else:
            nsend(c, EVFILED, server.encode() + b"\0", (stubs.FQOPENFD, 0, -pid))
    else:
        req, rtf = (stubs.PQCREATE, stubs.RTF_PFDIO) if server else (2, 0)  # PQDOOM
        nsend(c, EVKENYAD, struct.pack(">7i", 0, -pid, req, 0, 0, 0, rtf).ljust(64, b"\0"))


def stub_error(service: str, msg) -> int:  # type: ignore[no-untyped-def]
    if service == "filed":
        return msg.nmsg.data[0]
    assert msg.nmsg.flags & NREEL
    return struct.unpack(">i", msg.body[:4])[0]


# ---------------------------------------------------------------------------
# 3b. a sender that stops half-way through a body bufferd waits for
#
# Found by CI (test_jobs.py::test_long_program_path): a rank whose liblam
# writev() of a BFQRECV header failed (EFAULT) had had its send half matched
# with bufferd, so bufferd waited for those 72 bytes; kenyad's next nsend
# blocked behind it, and when the rank closed, bufferd blocked again without
# looking for the senders that had queued meanwhile: every later nsend of the
# session hung. The C lamd reads a body with a blocking read, so one such
# client freezes its whole kernel; ours gives the sender ``collect_timeout``
# and then drops it, and bufferd takes up the queued sends at once.


def _midbody_sender(d: "InProcDaemon", sr: bool, event: int = EVBUFFERD) -> socket.socket:
    """A raw client whose send to bufferd (or the internal process on
    *event*) is matched, then writes no body."""
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(TIMEOUT)
    raw.connect(d.path)
    raw.sendall(KReq(req=KQATTACH, index=-1, pid=os.getpid(), priority=PRCMD).pack())
    idx = int.from_bytes(raw.recv(80, socket.MSG_WAITALL)[28:32], "little", signed=True)
    if sr:  # nrecv's BFQRECV: a send-receive whose send half is a bare header
        req = KReq(req=KQSR, index=idx, pid=os.getpid(), msg=KMsg(EVBUFFERD, DLCTL, 0, KNMSG),
                   msg2=KMsg(99, 0, 100, KNMSG))
    else:
        req = KReq(req=KQSEND, index=idx, pid=os.getpid(), msg=KMsg(event, DLUSR, 8, KNMSG))
    raw.sendall(req.pack())
    rep = raw.recv(80, socket.MSG_WAITALL)
    assert int.from_bytes(rep[:4], "little", signed=True) == 0, rep  # go ahead: write the body
    return raw


@pytest.mark.parametrize("sr", [False, True], ids=["send", "send-receive"])
@pytest.mark.parametrize("how", ["closes", "stalls"])
def test_sender_stopping_mid_body_does_not_stall_bufferd(tmp_path, caplog, sr, how):
    d = InProcDaemon(str(tmp_path), iprocs=True)
    d.io.limits.collect_timeout = 1.0
    try:
        a, b = d.client(), d.client()
        raw = _midbody_sender(d, sr)
        t0 = time.monotonic()
        ts = run_thread(lambda: nsend(a, 77, b"queued behind"))  # blocks while bufferd waits
        time.sleep(0.3)
        assert ts.is_alive()
        if how == "closes":
            raw.close()
        join_ok(ts)
        took = time.monotonic() - t0
        assert nrecv(b, 77).body[:13] == b"queued behind"
        if how == "stalls":
            assert 0.9 < took < 5, took  # the deadline, not before, not much after
            assert raw.recv(80) == b""  # dropped: liblam sees ENOKERNEL
            assert "did not write the message body an internal process waits for" in caplog.text
            raw.close()
        else:
            assert took < 0.9, took
        for i in range(3):  # and bufferd serves as before
            nsend(a, 78, bytes([i]) * 5)
            assert nrecv(b, 78).body[:5] == bytes([i]) * 5
    finally:
        d.stop()


def test_stalled_senders_to_internal_processes_each_dropped_at_their_own_deadline(
        tmp_path, caplog):
    """All the bodies internal processes wait for share one timer, set for
    the earliest deadline and set again after each firing: a sender that
    stalls on bufferd and another that stalls on echod half a second later
    are each dropped ``collect_timeout`` after their own send was matched
    (nothing else would ever wake the loop for the second), and bufferd
    serves on."""
    d = InProcDaemon(str(tmp_path), iprocs=True)
    d.io.limits.collect_timeout = 1.0
    try:
        a, b = d.client(), d.client()
        t0 = time.monotonic()
        first = _midbody_sender(d, False)
        time.sleep(0.5)
        second = _midbody_sender(d, False, EVECHOD)
        t1 = time.monotonic()
        assert first.recv(80) == b""  # dropped: liblam sees ENOKERNEL
        dropped1 = time.monotonic() - t0
        assert second.recv(80) == b""  # not at the first's deadline: at its own
        dropped2 = time.monotonic() - t1
        assert 0.9 < dropped1 < 3, dropped1
        assert 0.9 < dropped2 < 3, dropped2
        assert dropped2 + (t1 - t0) > dropped1 + 0.3, (dropped1, dropped2)
        nsend(a, 79, b"bufferd serves")
        assert nrecv(b, 79).body[:14] == b"bufferd serves"
        assert caplog.text.count("did not write the message body an internal process waits for") == 2
        first.close()
        second.close()
    finally:
        d.stop()


# filed is no stub any more: tests/test_fileio.py checks its stalled exchanges
@pytest.mark.parametrize("service", ["kenyad"])
@pytest.mark.parametrize("server", ["accepts-then-stalls", "never-accepts"])
def test_stub_gives_up_on_a_stalled_descriptor_server(tmp_path, monkeypatch, caplog,
                                                      service, server):
    """A client asks filed (FQOPENFD) or kenyad (RTF_PFDIO) to take its stdio
    from a lam-<pid> server in the session directory, then never passes a
    descriptor (it accepts and stalls, or never accepts at all). filed's stub
    (kenyad, the real one) gives up after FD_SERVER_TIMEOUT (shortened here)
    and the client gets ESERVICE (kenyad: LAM_ERR_TO, "operation timed
    out"); other clients are served while the service waits, and it answers
    the next request at once (kenyad: its PQDOOM selecting nothing, 0).
    Before the fix the stub waited on the client forever (and that service
    with it)."""
    limit = 1.5
    monkeypatch.setattr(stubs, "FD_SERVER_TIMEOUT", limit)
    monkeypatch.setattr(srfd, "FD_SERVER_TIMEOUT", limit)  # kenyad's default
    caplog.set_level(logging.WARNING, logger="lamd.iprocs.stubs")
    caplog.set_level(logging.WARNING, logger="lamd.jobs.kenyad")
    first, then = ((ESERVICE, ESERVICE) if service == "filed"
                   else (int(LamErrno.LAM_ERR_TO), 0))
    d = InProcDaemon(str(tmp_path), iprocs=True)
    path = os.path.join(str(tmp_path), f"lam-{os.getpid()}")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(TIMEOUT)
    held: list[socket.socket] = [srv]
    try:
        c = d.client()
        t0 = time.monotonic()
        ask_stub(c, service, path)
        if server == "accepts-then-stalls":
            conn, _ = srv.accept()  # the stub connected; we pass nothing
            held.append(conn)
        # meanwhile a pair is served
        a, b = d.client(), d.client()
        tb = run_thread(lambda: [b.send(91, 0, b.recv(90, 0, 8).body) for _ in range(100)])
        for i in range(100):
            a.send(90, 0, b"%08d" % i)
            assert a.recv(91, 0, 8).body == b"%08d" % i
        join_ok(tb)
        pair_took = time.monotonic() - t0
        if pair_took < limit * 0.8:
            assert "giving up" not in caplog.text, "the stub gave up too early"
        msg = nrecv(c, -os.getpid(), 64)
        took = time.monotonic() - t0
        assert stub_error(service, msg) == first
        assert limit * 0.9 <= took < limit + 5, f"error after {took:.2f} s"
        assert f"passed 0 of 3 descriptors in {limit:g} s" in caplog.text
        if server == "accepts-then-stalls":
            conn.settimeout(TIMEOUT)
            assert conn.recv(1) == b"", "the stub kept its connection"
        # the stub is back in its loop: a request naming no server, at once
        t1 = time.monotonic()
        ask_stub(c, service, None)
        assert stub_error(service, nrecv(c, -os.getpid(), 64)) == then
        assert time.monotonic() - t1 < limit
    finally:
        for s in held:
            s.close()
        d.stop()


# ---------------------------------------------------------------------------
# 4. pidfd pinning at admission

DIE_AFTER_CONNECT = r"""
import os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(struct.pack("<4i", 5, -1, os.getpid(), 1095) + bytes(88))  # KQATTACH
"""


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
@pytest.mark.parametrize("peerpidfd", [True, False], ids=["SO_PEERPIDFD", "pidfd_open"])
def test_client_dead_before_accept_is_refused(tmp_path, caplog, peerpidfd, reaped):
    """A client connects, writes its attach and exits while the daemon is not
    accepting (its loop paused); when the daemon takes it from the backlog it
    is refused with a log line and never attached nor listed in the kill
    file: its pid may already name another process. (SO_PEERPIDFD hands out
    a pidfd even for an exited, even a reaped, peer; pidfd_open of a reaped
    pid fails and of a zombie succeeds.) Every client admitted around it
    holds a pidfd of its own."""
    caplog.set_level(logging.INFO, logger="lamd.kernelio")
    d = InProcDaemon(str(tmp_path))
    p = None
    try:
        first = d.client()
        d.pause()
        d.io._peerpidfd = peerpidfd
        p = subprocess.Popen([sys.executable, "-c", DIE_AFTER_CONNECT, d.path])
        if reaped:
            assert p.wait(timeout=TIMEOUT) == 0
        else:  # exited, left a zombie
            os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        d.resume()
        second = d.client()  # accepted after the dead one: it has been handled
        assert second.state(os.getpid()).reply == 0
        # refused before the kernel heard of it (the compiled I/O layer's call
        # of kernel.connect cannot be spied on; refused_unpinned counts it and
        # the kernel has no peer with its pid)
        assert d.io.refused_unpinned == 1
        assert p.pid not in [pid for pid, _uid in d.kernel._peers.values()]
        assert f"refused a connection from pid {p.pid}: it exited before it was accepted" \
            in caplog.text
        assert p.pid not in read_killfile(d.killfile)
        assert p.pid not in read_clients(d.clients_file)
        assert len(d.io.conns) == 2
        assert_all_pinned(d.io)
        assert first.state(os.getpid()).reply == 0
    finally:
        if p is not None:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=TIMEOUT)
        d.stop()


OUT_OF_FDS = r"""
import errno, logging, os, resource, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
sys.path.insert(0, sys.argv[1])
from tests.test_hostile import InProcDaemon, assert_all_pinned
d = InProcDaemon(sys.argv[2])
d.io._peerpidfd = sys.argv[3] == "1"
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
fill = []
try:
    while True:
        fill.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    assert e.errno == errno.EMFILE, e
os.close(fill.pop())  # exactly one descriptor free: enough to accept, none for a pidfd
print("ready", flush=True)
sys.stdin.readline()  # a client came and went
print("refused", d.io.refused_unpinned, "conns", len(d.io.conns), flush=True)
for _ in range(4):
    os.close(fill.pop())
print("freed", flush=True)
sys.stdin.readline()  # a client attached
assert_all_pinned(d.io)
print("conns", len(d.io.conns), "pinned", flush=True)
sys.stdin.readline()
d.pause()  # no shutdown: its clients are the test process, never to be hung up
"""


@pytest.mark.parametrize("peerpidfd", [True, False], ids=["SO_PEERPIDFD", "pidfd_open"])
def test_no_descriptor_for_a_pidfd_refuses_the_client(tmp_path, peerpidfd):
    """With exactly one descriptor free the daemon can accept a client but
    not pin it: the client is refused (it sees EOF), with a log line, never
    admitted unpinned; once descriptors are free again clients are admitted,
    each with its pidfd. The daemon runs in its own process under a small
    RLIMIT_NOFILE."""
    p = subprocess.Popen([sys.executable, "-c", OUT_OF_FDS, ROOT, str(tmp_path),
                          "1" if peerpidfd else "0"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = os.path.join(str(tmp_path), "lam-kernel-socket")
    held: list[KernelClient] = []

    def say() -> list[str]:
        line = readline(p, 20).split()
        if not line:
            p.kill()
            pytest.fail(f"daemon process ended: {p.communicate(timeout=10)[1]}")
        return line

    try:
        assert say() == ["ready"]
        c = KernelClient.connect(path, timeout=5)
        held.append(c)
        with pytest.raises((KernelGone, ConnectionError)):
            c.attach()
        p.stdin.write("\n")
        p.stdin.flush()
        assert say() == ["refused", "1", "conns", "0"]
        assert say() == ["freed"]
        c = KernelClient.connect(path, timeout=5)
        held.append(c)
        assert c.attach() >= 0
        p.stdin.write("\n")
        p.stdin.flush()
        assert say() == ["conns", "1", "pinned"]
        p.stdin.write("\n")
        p.stdin.flush()
        _, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        assert "out of file descriptors" in err, err
    finally:
        for c in held:
            c.close()
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
