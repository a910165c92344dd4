"""Issue 9: a configurable boot table, services served by separate processes
(LAM's ``etc/lam-conf.separate``).

* sans-IO: ``boot_table`` without some rows keeps LAM's pids (100000 + row)
  for the others; the configuration's names are checked;
* in-process (a kernel and a :class:`ServiceHost` in threads, real sockets):
  the hosted echod and versiond answer as the internal ones do; the wait API
  outside the kernel (an interrupted ``wait`` re-attaches, events, children;
  ``flush``, checked with a host that dies right after it: no C-lamd side,
  liblam writes a body before ``ksend`` returns);
  ``ksync``/``halt`` raise; the host ends with the kernel and refuses to
  double a service the kernel runs itself;
* interop, as user ``lamtest`` against ``python3 -m lamd --external ...``:
  stock ``tping`` fails without the external echod and works with
  ``python3 -m lamd.iprocs.host echod`` exactly as with the internal one;
  ``lamnodes`` likewise with versiond; a killed host leaves the kill file;
  ``lamhalt`` ends the host; bad names are a one-line usage error.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from typing import Any, Iterator

import pytest

from lamd.client import KernelClient
from lamd.iprocs import BOOT_TABLE, KERNEL_SIDE, BootConfigError, boot_table, parse_external
from lamd.iprocs.host import KernelOnly, ServiceHost, _Waker
from lamd.iprocs.nreq import BFQRECV, DLCTL, DLUSR, LOCAL, NREEL, data_words
from lamd.iprocs.nreq import nrecv as iproc_nrecv
from lamd.kernel import Kernel
from lamd.kernel.constants import (
    EVBUFFERD, EVECHOD, EVVERSIOND, KNMSG, KQATTACH, KQDETACH, KQRECV, KQSEND, LAM_BASE_EVENT,
    MAXNMSGLEN, PRCMD, PRDAEMON,
)
from lamd.kernel.kiproc import IPROC_PID_BASE, ChildExit, Event, IProc, KBoot
from lamd.kernel.wire import KREQ_SIZE, KMsg, KReply, KReq, NMsg
from lamd.kernelio import KernelIO
from lamd.session.kkill import read_killfile

from . import lamenv
from .test_stock_tools import TPING_REPLY, show, wait_until

ADDR = "192.0.2.2"
TIMEOUT = 10.0
EVX = LAM_BASE_EVENT + 200  # a test event no LAM service uses


# ---------------------------------------------------------------------------
# sans-IO: the table


def test_boot_table_without_external_rows_keeps_lams_pids():
    cfg = {"node_addr": ADDR}
    table = boot_table(cfg, ["versiond", "echod", "kenyad"])
    k = Kernel()
    k.boot(table, cfg)
    for row, kb in enumerate(BOOT_TABLE):
        p = k.kpfind(IPROC_PID_BASE + row)
        if kb.name in ("echod", "kenyad", "versiond"):
            assert p is None, kb.name
        else:
            assert p is not None and p.priority == kb.priority, kb.name
            assert p.iproc is not None and p.iproc.name == kb.name
    assert len(k.procs) == len(BOOT_TABLE) - 3
    # haltd is row 13 and stays at LAM's 100013 with row 4 (echod) gone
    assert k.kpfind(100013).iproc.name == "haltd"
    # and the full table is what it always was
    full = Kernel()
    full.boot(boot_table(dict(cfg)), cfg)
    assert sorted(p.pid for p in full.procs.values()) == list(range(100000, 100015))


def test_external_names_are_checked():
    assert parse_external("versiond, echod") == ["echod", "versiond"]  # table order
    assert parse_external(["echod", "echod kenyad"]) == ["echod", "kenyad"]
    assert parse_external("") == [] and parse_external(None) == []
    for bad in ("nosuch", "echod,nosuch", "Echod"):
        with pytest.raises(BootConfigError, match="unknown service"):
            parse_external(bad)
    for name in KERNEL_SIDE:
        with pytest.raises(BootConfigError, match="stays in the kernel"):
            parse_external(name)
    assert KERNEL_SIDE == {"router", "bufferd", "haltd"}


# ---------------------------------------------------------------------------
# in-process: a kernel and a host over real sockets


class World:
    """Our kernel (KernelIO in a thread) booted without *external*, and hosts."""

    def __init__(self, tmp: str, external: list[str], max_procs: int = 65536,
                 config: dict[str, Any] | None = None) -> None:
        self.path = os.path.join(tmp, "lam-kernel-socket")
        self.killfile = os.path.join(tmp, "lam-killfile")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(64)
        self.kernel = Kernel(kernel_pid=os.getpid(), max_procs=max_procs)
        self.io = KernelIO(self.kernel, lsock, killfile=self.killfile,
                           clients_file=os.path.join(tmp, "lamd-clients"), tick_interval=0.2)
        self.config: dict[str, Any] = {"node_addr": ADDR, "session": tmp, **(config or {})}
        self.io.boot(boot_table(self.config, external), self.config)
        self.thread = threading.Thread(target=self.io.run, daemon=True)
        self.thread.start()
        self.hosts: list[tuple[ServiceHost, threading.Thread, list[int]]] = []
        self.clients: list[KernelClient] = []
        self.stopped = False

    def host(self, names: list[Any]) -> tuple[ServiceHost, threading.Thread, list[int]]:
        h = ServiceHost(self.path, names, self.config)
        status: list[int] = []
        t = threading.Thread(target=lambda: status.append(h.run()), daemon=True)
        t.start()
        self.hosts.append((h, t, status))
        return h, t, status

    def client(self) -> KernelClient:
        c = KernelClient.connect(self.path, timeout=TIMEOUT)
        c.attach(PRCMD)
        self.clients.append(c)
        return c

    def stop_kernel(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.io.request_stop()
            self.thread.join(TIMEOUT)
            assert not self.thread.is_alive(), "kernel loop did not stop"
            self.io.shutdown(unlink_socket=self.path)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for h, t, _ in self.hosts:
            h.request_stop()
            t.join(TIMEOUT)
        self.stop_kernel()
        for _, t, _ in self.hosts:
            assert not t.is_alive(), "host did not stop"


@pytest.fixture
def world_factory() -> Iterator[Any]:
    made: list[World] = []
    dirs: list[tempfile.TemporaryDirectory] = []

    def make(external: list[str], **kw: Any) -> World:
        d = tempfile.TemporaryDirectory(prefix="lamd-sep-")
        dirs.append(d)
        w = World(d.name, external, **kw)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
    for d in dirs:
        d.cleanup()


def blocked_on(kernel: Kernel, event: int) -> int:
    """Processes blocked on *event* (read from another thread: retried)."""
    for _ in range(100):
        try:
            return sum(1 for p in kernel.blocked_list() if p.msg.event == event)
        except RuntimeError:  # the kernel thread changed the table meanwhile
            time.sleep(0.01)
    raise AssertionError("could not read the kernel's blocked list")


def recho(c: KernelClient, body: bytes, reply_event: int) -> tuple[NMsg, bytes]:
    """What ``recho`` (tping) does: nsend to EVECHOD through bufferd with
    struct ereq in nh_data, then nrecv (dsfr with BFQRECV) on reply_event."""
    head = NMsg(dl_event=EVBUFFERD, node=0, event=EVECHOD, type=0, length=len(body),
                data=data_words(0, reply_event))
    c.send(EVBUFFERD, DLUSR, body, KNMSG, nmsg=head)
    return nrecv(c, reply_event)


def nrecv(c: KernelClient, event: int) -> tuple[NMsg, bytes]:
    bf = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
              data=data_words(0, 0, BFQRECV, 0, event, 0, 0, 0))
    m = c.sr(EVBUFFERD, DLCTL, b"", event, 0, MAXNMSGLEN, KNMSG, KNMSG, nmsg=bf)
    assert m.nmsg is not None
    return m.nmsg, m.body


def test_hosted_echod_answers_like_the_internal_one(world_factory):
    """echod left out of the kernel: nobody answers; hosted: every size
    echoes back with NREEL and the request's nh_data, as the internal echod
    does; the host is in the kill file while attached and leaves it when stopped."""
    ref = world_factory([])
    w = world_factory(["echod"])
    assert w.kernel.kpfind(IPROC_PID_BASE + 4) is None
    c, cref = w.client(), ref.client()
    # without the host: the ping stays in bufferd, no echo comes
    c.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        recho(c, b"lost", -4001)
    c.close()
    c = w.client()
    me = os.getpid()  # in-process, the host's pid too
    assert wait_until(lambda: read_killfile(w.killfile)[1:] == [me], TIMEOUT), read_killfile(w.killfile)
    h, t, status = w.host(["echod"])
    assert wait_until(lambda: read_killfile(w.killfile)[1:] == [me, me], TIMEOUT)
    assert w.kernel.nclients == 2
    ev = -4002
    for n in (0, 1, 64, MAXNMSGLEN):
        body = os.urandom(n)
        head, got = recho(c, body, ev)
        rhead, rgot = recho(cref, body, ev)
        assert got == body == rgot
        assert head.flags & NREEL and head.data[:2] == (0, ev)
        assert head == rhead, (head, rhead)
    h.request_stop()
    t.join(TIMEOUT)
    assert not t.is_alive() and status == [0]
    assert wait_until(lambda: w.kernel.nclients == 1, TIMEOUT), "host not detached"
    assert wait_until(lambda: read_killfile(w.killfile)[1:] == [me], TIMEOUT), \
        "stale kill-file line"


def test_reattach_in_one_turn_keeps_the_kill_file_right(world_factory):
    """What the host does to cancel a blocked request, a close and a new
    attach back to back: the kill file must list the new connection even
    when the kernel sees both in one turn (it once cut the new line off)."""
    w = world_factory([])
    me = os.getpid()
    c = w.client()
    for i in range(20):
        c.close()
        c = w.client()
        assert wait_until(lambda: read_killfile(w.killfile)[1:] == [me], 2.0), \
            (i, read_killfile(w.killfile))


def test_hosted_versiond_answers_rversion(world_factory):
    w = world_factory(["versiond"])
    w.host(["versiond"])
    c = w.client()
    head = NMsg(dl_event=EVBUFFERD, node=0, event=EVVERSIOND, type=0,
                data=data_words(0, -4100))
    c.send(EVBUFFERD, DLUSR, b"", KNMSG, nmsg=head)
    rhead, body = nrecv(c, -4100)
    assert body == b"7.1.4\0" and rhead.data[:5] == (7, 1, 4, 0, 0)


def test_interrupted_wait_reattaches_and_the_wait_api_works(world_factory):
    """A wait(recv, timer) blocked in the kernel: the timer interrupts it (the
    host drops the connection and attaches again); the next receive on the
    fresh connection gets the client's message; a readable descriptor, a
    child's exit and an event queued while busy arrive as inside the kernel;
    ksync and halt raise KernelOnly."""
    w = world_factory([])
    report: list[Any] = []
    done = threading.Event()
    r, wr = socket.socketpair()

    async def probe(k: IProc) -> None:
        t = k.timer(0.2)
        got = await k.wait(k.recv(EVX, 0, 64), t)
        report.append(("interrupted", isinstance(got, Event) and got.watch is t))
        got = await k.recv(EVX, 0, 64)
        report.append(("received", got.body, got.type))
        try:
            k.ksync(KMsg(EVX, 0, 0, 0), KQRECV)
        except KernelOnly:
            report.append("ksync refused")
        try:
            await k.halt(0)
        except KernelOnly:
            report.append("halt refused")
        rd = k.watch_readable(r.fileno())
        wr.send(b"x")
        ev = await k.next_event(rd)
        report.append(("readable", ev.watch is rd))
        rd.cancel()
        child = subprocess.Popen(["sh", "-c", "exit 3"])
        cw = k.watch_child(child.pid)
        late = k.timer(0.0)  # fires while we wait for the child: kept for later
        ev = await k.next_event(cw)
        report.append(("child", ev.value))
        ev = await k.next_event()
        report.append(("kept", ev.watch is late))
        done.set()
        await k.next_event()

    h, t, status = w.host([KBoot("probe", PRDAEMON, probe)])
    assert wait_until(lambda: report[:1] == [("interrupted", True)], TIMEOUT), report
    # the blocked request of the dropped connection is gone from the kernel:
    # only the new one waits on EVX
    assert wait_until(lambda: blocked_on(w.kernel, EVX) == 1, TIMEOUT)
    c = w.client()
    assert c.send(EVX, 5, b"after") == 5
    assert done.wait(TIMEOUT), report
    pid = report[5][1].pid
    assert report == [("interrupted", True), ("received", b"after", 5), "ksync refused",
                      "halt refused", ("readable", True),
                      ("child", ChildExit(pid, os.CLD_EXITED, 3)), ("kept", True)]
    r.close()
    wr.close()


def test_hosted_service_moves_large_bodies_both_ways(world_factory):
    """Bodies far larger than a socket buffer: the host writes a send's body
    as the kernel takes it (partial writes, EPOLLOUT) and reads a receive's
    in pieces; every byte arrives, with the KNMSG header beside it."""
    w = world_factory([])
    n = 4 << 20
    data = bytes((i * 7 + 3) & 0xFF for i in range(256)) * (n // 256)
    got: list[Any] = []

    async def mover(k: IProc) -> None:
        rep = await k.send(EVX, 3, data, KNMSG, nmsg=NMsg(event=EVX, data=data_words(1, 2)))
        got.append(rep.length)
        r = await k.recv(EVX + 1, 0, n, KNMSG)
        got.append((r.type, r.nmsg.data[:2] if r.nmsg else None, r.body == data[::-1]))
        await k.next_event()

    w.host([KBoot("mover", PRDAEMON, mover)])
    c = w.client()
    m = c.recv(EVX, 0, n, KNMSG)
    assert m.body == data and m.type == 3 and m.nmsg.data[:2] == (1, 2)
    assert c.send(EVX + 1, 9, data[::-1], KNMSG, nmsg=NMsg(data=data_words(5, 6))) == n
    assert wait_until(lambda: len(got) == 2, TIMEOUT), got
    assert got == [n, (9, (5, 6), True)]


def test_a_hosted_nrecv_drains_the_packets_bufferd_keeps(world_factory):
    """Packets sent to a hosted service before it receives are kept by
    bufferd; its ``nrecv``s (send-receives, answered by bufferd's peek
    before their ``BFQRECV`` headers come) then get every one, whole and in
    order, and its next request after each goes out as usual."""
    w = world_factory([])
    n = 6
    got: list[bytes] = []

    async def drainer(k: IProc) -> None:
        await k.recv(EVX + 5, 0, 0)  # go
        for _ in range(n):
            got.append((await iproc_nrecv(k, EVX)).body)
        rep = await k.send(EVX + 6, 0, b"done")
        got.append(b"sent %d" % rep.length)
        await k.next_event()

    w.host([KBoot("drainer", PRDAEMON, drainer)])
    c = w.client()
    for i in range(n):  # kept by bufferd: nobody receives on EVX yet
        body = bytes([i]) * (10 + 1500 * i)
        c.send(EVBUFFERD, DLUSR, body, KNMSG,
               nmsg=NMsg(dl_event=EVBUFFERD, node=0, event=EVX, length=len(body)))
    assert wait_until(lambda: blocked_on(w.kernel, EVX + 5) == 1, TIMEOUT)
    c.send(EVX + 5, 0, b"")
    assert c.recv(EVX + 6, 0, 100).body == b"done"
    assert wait_until(lambda: len(got) == n + 1, TIMEOUT), got
    assert got == [bytes([i]) * (10 + 1500 * i) for i in range(n)] + [b"sent 4"]


def forked_host(w: World, main: Any) -> int:
    """A host of service *main* in a child process of its own, which the
    service ends with ``os._exit`` (as a crash would: nothing written after)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ServiceHost(w.path, [KBoot("dier", PRDAEMON, main)], w.config).run()
        finally:
            os._exit(70)
    return pid


@pytest.mark.parametrize("flush", [True, False])
def test_a_send_is_with_the_kernel_once_flush_returns(world_factory, flush):
    """The host writes a send's body when the connection next waits, so a
    send returns before its body has left the process. ``k.flush()`` resumes
    once it has: a host that dies right after it (os._exit, as a SIGKILL)
    still delivers the whole message (1 MiB: partial writes, EPOLLOUT).
    Without the flush the same death loses it: the kernel reads a body cut
    short and drops the sender. This is why dli flushes before it acks a
    frame as handed on (issue 11: the CI run at 5b2101d lost a frame acked
    before its body had left the datalink process)."""
    w = world_factory([])
    n = 1 << 20
    data = bytes((i * 13 + 5) & 0xFF for i in range(256)) * (n // 256)

    async def dier(k: IProc) -> None:
        await k.send(EVX, 4, data, KNMSG, nmsg=NMsg(event=EVX, data=data_words(7, 8)))
        if flush:
            await k.flush()
        os._exit(0)

    pid = forked_host(w, dier)
    try:
        c = w.client()
        if flush:
            m = c.recv(EVX, 0, n, KNMSG)
            assert m.body == data and m.type == 4 and m.nmsg.data[:2] == (7, 8)
        else:
            with pytest.raises((OSError, EOFError, ConnectionError)):
                c.recv(EVX, 0, n, KNMSG)
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_host_exits_with_the_kernel_and_kills_its_children(world_factory):
    """The kernel goes (its sockets close): the host ends, status 0, and the
    process its service started and watched is killed and reaped."""
    w = world_factory(["echod"])
    pids: list[int] = []

    async def spawner(k: IProc) -> None:
        p = subprocess.Popen(["sleep", "60"])
        pids.append(p.pid)
        k.watch_child(p.pid)
        await k.next_event()

    h, t, status = w.host(["echod", KBoot("spawner", PRDAEMON, spawner)])
    assert wait_until(lambda: bool(pids), TIMEOUT)
    assert lamenv.pid_alive(pids[0])
    t0 = time.monotonic()
    w.stop_kernel()
    t.join(TIMEOUT)
    assert not t.is_alive(), "host still running after the kernel went"
    assert status == [0]
    assert time.monotonic() - t0 < TIMEOUT
    assert not lamenv.pid_alive(pids[0]), "host left its child running"
    with pytest.raises(ChildProcessError):
        os.waitpid(pids[0], os.WNOHANG)  # and reaped it


def test_host_refuses_a_service_the_kernel_runs_itself(world_factory):
    w = world_factory([])
    h, t, status = w.host(["echod"])
    t.join(TIMEOUT)
    assert status == [1]
    assert wait_until(lambda: w.kernel.nclients == 0, TIMEOUT)


def test_the_waker_keeps_its_timeout_in_the_kernel_and_gives_up_on_a_silent_kernel(tmp_path):
    """The waker's socket is blocking with SO_RCVTIMEO/SO_SNDTIMEO (no poll
    before each of its calls, as a Python socket with a timeout makes); a
    kernel that stops answering still ends a wake within the timeout, and
    the waker is given up (the host then interrupts by reconnecting). No
    C-lamd side: the waker is the service host's own connection."""
    path = str(tmp_path / "kernel")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(TIMEOUT)
    answers = [KReply(index=7).pack(), KReply(reply=errno.EWOULDBLOCK).pack()]  # then silence
    got: list[bytes] = []

    def kernel() -> None:
        c, _ = srv.accept()
        c.settimeout(TIMEOUT)
        with c:
            while True:
                req = b""
                while len(req) < KREQ_SIZE:
                    chunk = c.recv(KREQ_SIZE - len(req))
                    if not chunk:
                        return
                    req += chunk
                got.append(req)
                if answers:
                    c.sendall(answers.pop(0))

    t = threading.Thread(target=kernel, daemon=True)
    t.start()
    w = _Waker(path, timeout=0.3)
    msg = KMsg(EVX, 1, 64, 0)
    try:
        assert w.wake(msg) is False  # attached, then EWOULDBLOCK: nobody blocked there
        assert w.sock is not None and w.sock.gettimeout() is None
        sec, usec = struct.unpack("@ll", w.sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll")))
        assert (sec, usec) == (0, 300000)
        t0 = time.monotonic()
        assert w.wake(msg) is None  # no answer: given up within the timeout
        assert 0.25 < time.monotonic() - t0 < 3.0
        assert w.broken and w.sock is None
        assert w.wake(msg) is None  # and stays given up
        t.join(TIMEOUT)  # the waker's connection is closed: the "kernel" has all it sent
        assert not t.is_alive()
        # attached, two KTRY sends, and the detach a LAM client makes as it closes
        assert [KReq.unpack(r).req for r in got] == [KQATTACH, KQSEND, KQSEND, KQDETACH]
    finally:
        w.close()
        srv.close()
        t.join(TIMEOUT)


def test_host_fails_when_its_attach_is_refused(world_factory, caplog):
    """Out of process descriptors (the kernel replies, then closes): status 1."""
    w = world_factory(["echod"], max_procs=len(BOOT_TABLE) - 1)
    h, t, status = w.host(["echod"])
    t.join(TIMEOUT)
    assert status == [1]
    # the reply read first, or the close seen first (then the reply is read from the buffer)
    assert re.search(r"(refused echod's attach: |closed echod's connection while it "
                     r"attached \()ENOKDESCRIPTORS", caplog.text), caplog.text


# ---------------------------------------------------------------------------
# interop: stock LAM tools, our daemon and host as user lamtest


def lamd_env(d: lamenv.PyDaemon) -> dict:
    return dict(d.s.env, PYTHONPATH=str(d.pkgdir), PYTHONDONTWRITEBYTECODE="1")


class Host:
    """``python3 -m lamd.iprocs.host NAMES`` as lamtest, logging to a file."""

    def __init__(self, d: lamenv.PyDaemon, names: list[str], tag: str = "host") -> None:
        self.logfile = d.s.work / f"{tag}.log"
        self._log = open(self.logfile, "w")
        self.proc = d.s.popen([lamenv.SYSTEM_PYTHON, "-m", "lamd.iprocs.host", *names],
                              env=lamd_env(d), stdout=self._log, stderr=subprocess.STDOUT)
        self.s = d.s

    def wait_attached(self, n: int = 1) -> None:
        ok = wait_until(lambda: read_killfile_count(self.s, self.proc.pid) >= n
                        or self.proc.poll() is not None, TIMEOUT)
        assert ok and self.proc.poll() is None, f"host did not attach:\n{self.log()}"

    def log(self) -> str:
        self._log.flush()
        return self.logfile.read_text(errors="replace")


def read_killfile_count(s: lamenv.Session, pid: int) -> int:
    return lamenv.read_killfile(s.killfile)[1:].count(pid)


@pytest.fixture
def pydaemon(lam_session, lamd_pkg, request) -> Iterator[Any]:
    started: list[lamenv.PyDaemon] = []

    def start(*extra: str, session: lamenv.Session | None = None) -> lamenv.PyDaemon:
        d = lamenv.PyDaemon(session or lam_session, lamd_pkg, ["--log-level", "info", *extra])
        started.append(lamenv.show_log_on_failure(request, d))
        d.start()
        return d

    yield start
    for d in started:
        d.stop()
    lamenv.fail_on_stop_problems(request, [p for d in started for p in d.stop_problems])


def tping(s: lamenv.Session, bound: float | None = None) -> subprocess.CompletedProcess:
    argv = ["tping", "-c", "3", "n0"]
    if bound is not None:  # tping blocks SIGTERM in its kernel request: -k
        argv = ["timeout", "-k", "1", str(bound), *argv]
    return s.run(argv, timeout=30)


def shape(out: str) -> str:
    return re.sub(r"\d+\.\d+", "T", out)


def test_tping_needs_the_external_echod(pydaemon, lam_user):
    d = pydaemon("--external", "echod")
    s = d.s
    # the daemon says what it boots and what it expects from outside
    assert wait_until(lambda: "external echod" in d.log(), TIMEOUT), d.log()
    # (echod left out; flatd, loadd, kenyad, filed and iod are the jobs process's)
    assert "internal router, bufferd, dli_inet, dlo_inet, bforward, traced" in d.log(), d.log()
    t0 = time.monotonic()
    cp = tping(s, bound=3)
    took = time.monotonic() - t0
    # killed by timeout, nothing echoed (the C lamd without echod would hang the same way)
    assert cp.returncode in (124, 137, -signal.SIGKILL), show(cp)
    assert not [ln for ln in cp.stdout.splitlines() if TPING_REPLY.match(ln)], show(cp)
    assert took >= 3
    host = Host(d, ["echod"])
    host.wait_attached()
    cp = tping(s)
    assert cp.returncode == 0 and cp.stderr == "", show(cp) + host.log()
    replies = [ln for ln in cp.stdout.splitlines() if TPING_REPLY.match(ln)]
    assert len(replies) == 3 and "3 messages, 3 bytes" in cp.stdout, show(cp)
    assert "serving echod (priority 1085)" in host.log()
    # the same output, times aside, as our daemon with its internal echod;
    # and a host refuses to double the echod that daemon runs itself
    s2 = lamenv.Session(lam_user)
    d2 = None
    try:
        d2 = pydaemon(session=s2)
        ref = tping(s2)
        assert ref.returncode == 0, show(ref)
        assert shape(cp.stdout) == shape(ref.stdout), (cp.stdout, ref.stdout)
        dup = s2.run([lamenv.SYSTEM_PYTHON, "-m", "lamd.iprocs.host", "echod"],
                     env=lamd_env(d2), timeout=20)
        assert dup.returncode == 1, show(dup)
        assert "runs echod itself" in dup.stderr and "--external echod" in dup.stderr, show(dup)
    finally:
        if d2 is not None:
            d2.stop()  # before its session goes
        s2.close()


def test_lamnodes_needs_the_external_versiond(pydaemon):
    """lamnodes' kinit asks versiond (rversion): it hangs without the external
    versiond and prints LAM's one-node line with it."""
    d = pydaemon("--external", "versiond")
    cp = d.s.run(["timeout", "-k", "1", "3", "lamnodes"], timeout=30)
    assert cp.returncode in (124, 137, -signal.SIGKILL) and cp.stdout == "", show(cp)
    host = Host(d, ["versiond"])
    host.wait_attached()
    cp = d.s.run(["lamnodes"], timeout=20)
    assert cp.returncode == 0 and cp.stderr == "", show(cp) + host.log()
    assert re.fullmatch(r"n0\t[^:\s]+:1:origin,this_node\n", cp.stdout), show(cp)


def test_killed_host_leaves_the_kill_file_and_lamhalt_ends_the_host(pydaemon):
    d = pydaemon("--external", "echod,versiond")
    s = d.s
    h1 = Host(d, ["echod", "versiond"], "host1")
    h1.wait_attached(2)  # one connection, one kill-file line, per service
    assert read_killfile_count(s, h1.proc.pid) == 2
    h1.proc.kill()
    h1.proc.wait(TIMEOUT)
    assert wait_until(lambda: read_killfile_count(s, h1.proc.pid) == 0, TIMEOUT), \
        lamenv.read_killfile(s.killfile)
    h2 = Host(d, ["echod", "versiond"], "host2")
    h2.wait_attached(2)
    assert tping(s).returncode == 0
    d.expect_exit = True
    cp = s.run(["lamhalt"], timeout=30)
    assert cp.returncode == 0, show(cp)
    try:
        rc = h2.proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("the host outlived lamhalt:\n" + h2.log())
    assert rc == 0, h2.log()
    assert wait_until(lambda: d.proc.poll() is not None, TIMEOUT) and d.proc.returncode == 0
    assert "exiting" in h2.log() or "stopping (signal SIGHUP)" in h2.log(), h2.log()


@pytest.mark.parametrize("argv,env", [
    (["-m", "lamd", "--external", "nosuch"], {}),
    (["-m", "lamd", "--external", "echod,router"], {}),
    (["-m", "lamd"], {"LAMD_EXTERNAL": "echod bufferd"}),
    (["-m", "lamd.iprocs.host", "haltd"], {}),
    (["-m", "lamd.iprocs.host", "echo"], {}),
    (["-m", "lamd", "--external", "kenyad"], {}),  # the jobs child would serve it too
], ids=["unknown", "router", "env-bufferd", "host-haltd", "host-unknown", "jobs-child"])
def test_bad_external_names_are_a_one_line_usage_error(lam_session, lamd_pkg, argv, env):
    s = lam_session
    e = dict(s.env, PYTHONPATH=str(lamd_pkg), PYTHONDONTWRITEBYTECODE="1", **env)
    cp = s.run([lamenv.SYSTEM_PYTHON, *argv], env=e, timeout=20)
    assert cp.returncode == 2, show(cp)
    assert cp.stdout == "" and len(cp.stderr.splitlines()) == 1, show(cp)
    assert re.search(r"unknown service|cannot be external|run --jobs=none", cp.stderr), show(cp)
    assert not s.socket.exists()
