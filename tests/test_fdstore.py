"""A crash keeps the clients (issue 12): the crash state's codec, and a
daemon SIGKILLed under stock liblam clients and started again with what it
left in a descriptor store.

The codec (:mod:`lamd.kernelio.crashstate`) is property-tested: records
round-trip, and a mapping truncated anywhere, with any bit flipped in a
part that is in use, of another format, uid or session is refused with one
:class:`CrashStateError` line.

The by-hand tests play systemd's part with :class:`FakeStore`: a notify
socket that keeps what ``FDSTORE=1`` hands it (and drops what
``FDSTOREREMOVE=1`` names), and a launcher that passes it to the next
daemon as ``LISTEN_FDS``/``LISTEN_FDNAMES``, as ``Restart=on-failure``
does. ``tests/system/test_systemd.py`` runs the same under a real systemd.
"""

from __future__ import annotations

import array
import dataclasses
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from lamd.kernelio import crashstate as cs
from lamd.kernel.wire import KREQ_SIZE, KReq, KMsg
from tests import lamenv
from tests.test_cclient import Clients, ok
from tests.test_crash import read_lines, wait_listed

UID, SESSION = 1234, "/tmp/lam-u@h"

# ---------------------------------------------------------------------------
# the codec


records = st.builds(
    cs.Record, slot=st.integers(0, 15), pid=st.integers(1, 2**31 - 1), uid=st.just(UID),
    attached=st.booleans(), req=st.sampled_from([cs.REQ_NONE, cs.REQ_PENDING, cs.REQ_REPLYING]),
    index=st.integers(0, 10**6), priority=st.integers(-2**31, 2**31 - 1),
    signal=st.integers(-2**31, 2**31 - 1), flags=st.integers(-2**31, 2**31 - 1),
    seq=st.integers(0, 2**64 - 1), bseq=st.integers(0, 2**64 - 1),
    starttime=st.integers(0, 2**64 - 1), kreq=st.binary(min_size=KREQ_SIZE, max_size=KREQ_SIZE))


def vars_(r: cs.Record) -> list:
    return [getattr(r, f.name) for f in dataclasses.fields(cs.Record)]


def mapping(recs: list[cs.Record], nslots: int = 16) -> bytearray:
    buf = bytearray(cs.size_for(nslots))
    buf[:cs.HEADER_SIZE] = cs.header(nslots, uid=UID, session=SESSION)
    for r in recs:
        cs.write_record(buf, r)
    return buf


def distinct(recs: list[cs.Record]) -> list[cs.Record]:
    by_slot: dict[int, cs.Record] = {}
    indexes: set[int] = set()
    for r in recs:
        if r.slot not in by_slot and not (r.attached and r.index in indexes):
            by_slot[r.slot] = r
            if r.attached:
                indexes.add(r.index)
    return list(by_slot.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=16))
def test_records_round_trip(recs):
    recs = distinct(recs)
    buf = mapping(recs)
    assert cs.decode(buf, uid=UID, session=SESSION) == {r.slot: r for r in recs}
    for r in recs[:2]:  # a connection that goes leaves a free slot behind
        cs.clear_record(buf, r.slot)
    assert cs.decode(buf, uid=UID, session=SESSION) == {r.slot: r for r in recs[2:]}


@settings(max_examples=100, deadline=None)
@given(st.lists(records, min_size=1, max_size=4), st.data())
def test_truncated_or_flipped_is_refused(recs, data):
    recs = distinct([cs.Record(r.slot % 4, *list(vars_(r))[1:]) for r in recs])
    buf = mapping(recs, nslots=4)
    cut = data.draw(st.integers(0, len(buf) - 1))
    with pytest.raises(cs.CrashStateError):
        cs.decode(buf[:cut], uid=UID, session=SESSION)
    # any bit of the header, or of the process part of a record in use (its
    # request part is rewritten with every request and checked as any
    # client's request is: only its flags must be sane)
    spans = [(0, cs.HEADER.size + 4)] + [
        (cs.record_offset(r.slot), cs.record_offset(r.slot) + cs.REQ_AT) for r in recs] + [
        (cs.record_offset(r.slot) + cs.REQ_AT + 1, cs.record_offset(r.slot) + cs.REQ_AT + 8)
        for r in recs]
    lo, hi = data.draw(st.sampled_from(spans))
    bit = data.draw(st.integers(lo * 8, hi * 8 - 1))
    flipped = bytearray(buf)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(cs.CrashStateError):
        cs.decode(flipped, uid=UID, session=SESSION)


def test_other_uid_session_or_version_refused_by_name():
    buf = mapping([cs.Record(0, 42, UID, True, cs.REQ_NONE, 7)])
    with pytest.raises(cs.CrashStateError, match="of uid 1234, not this daemon's uid 99"):
        cs.decode(buf, uid=99, session=SESSION)
    with pytest.raises(cs.CrashStateError, match="another session"):
        cs.decode(buf, uid=UID, session="/tmp/lam-v@h")
    other = bytearray(buf)
    head = cs.HEADER.pack(cs.MAGIC, cs.FORMAT_VERSION + 1, cs.RECORD_SIZE, 16, UID,
                          cs.session_digest(SESSION))
    other[:cs.HEADER.size + 4] = head + cs._CRC.pack(__import__("zlib").crc32(head))
    with pytest.raises(cs.CrashStateError, match=f"of format {cs.FORMAT_VERSION + 1}"):
        cs.decode(other, uid=UID, session=SESSION)
    with pytest.raises(cs.CrashStateError, match="bad magic"):
        cs.decode(bytes(len(buf)), uid=UID, session=SESSION)


def test_inconsistent_records_refused():
    twice = mapping([cs.Record(0, 42, UID, True, index=7), cs.Record(1, 43, UID, True, index=7)])
    with pytest.raises(cs.CrashStateError, match="index 7"):
        cs.decode(twice, uid=UID, session=SESSION)
    bad = mapping([cs.Record(0, 42, UID, True, index=3)])
    bad[cs.record_offset(0) + cs.REQ_AT] = 9
    with pytest.raises(cs.CrashStateError, match="bad flags"):
        cs.decode(bad, uid=UID, session=SESSION)
    stranger = mapping([cs.Record(0, 42, UID + 1, True, index=3)])
    with pytest.raises(cs.CrashStateError, match="uid 1235"):
        cs.decode(stranger, uid=UID, session=SESSION)


def test_a_request_received_into_the_record_is_found_after_a_crash():
    """arm_receive, then the request lands (or not) in the record: a
    successor makes it again only if it came."""
    idle = cs.Record(2, 42, UID, True, cs.REQ_NONE, 5, kreq=cs.fyi_request((1,) * 9))
    buf = mapping([idle])
    off = cs.arm_receive(buf, 2)
    assert cs.decode(buf, uid=UID, session=SESSION)[2].req == cs.REQ_NONE  # nothing came
    req = KReq(req=1, index=5, msg=KMsg(event=77, length=64)).pack()
    buf[off:off + KREQ_SIZE] = req  # what recv_into writes
    r = cs.decode(buf, uid=UID, session=SESSION)[2]
    assert (r.req, r.kreq, r.index) == (cs.REQ_PENDING, req, 5)
    cs.write_request(buf, 2, cs.REQ_REPLYING, req)
    assert cs.decode(buf, uid=UID, session=SESSION)[2].req == cs.REQ_REPLYING


class _KeepAll:
    """systemd's descriptor store for a CrashKeeper in process: keeps nothing."""

    def fdstore(self, name: str, fd: int) -> bool:
        return True

    def fdstore_remove(self, name: str) -> None:
        pass


def test_a_sender_gone_mid_body_never_leaves_its_receiver_delivered():
    """A sender that closes once its whole body is read, the rest of it still
    in the daemon's buffer for the receiver: a crash then must close the
    receiver (its record must not read as delivered because its partner's
    slot now holds another client's record), never leave it waiting for
    bytes that are lost."""
    from lamd.kernel import Kernel
    from lamd.kernelio import fdstore
    from lamd.kernelio.transfer import BodyMove, Connection

    socks = socket.socketpair() + socket.socketpair()
    k = fdstore.CrashKeeper.create(Kernel(kernel_pid=os.getpid()), _KeepAll(), uid=UID,
                                   session=SESSION, nslots=8)
    assert k is not None
    try:
        src, dst = Connection(socks[0], 4201, UID), Connection(socks[2], 4202, UID)
        k.add(src)
        k.add(dst)
        k.replying(src)
        k.replying(dst)
        k.partners(src, dst)
        k.moving(src, dst, BodyMove(src, dst, 1 << 20, 0, 1 << 16))
        src_slot = src.slot
        k.drop(src)  # all read, not all written: the sender went
        new = Connection(socks[1], 4203, UID)
        k.add(new)  # a new client in the sender's slot
        assert new.slot == src_slot
        records = cs.decode(k.mm[:], uid=UID, session=SESSION)
        r = records[dst.slot]
        assert r.req == cs.REQ_REPLYING
        assert not fdstore.delivered(r, records)
        assert not fdstore.resumable(records, {dst.slot: None})
    finally:
        k.close()
        for s_ in socks:
            s_.close()


# ---------------------------------------------------------------------------
# by hand, systemd's part played by FakeStore

LAUNCHER = r"""
import fcntl, os, sys
fds = [int(x) for x in os.environ.pop("FAKE_FDS").split(",") if x]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
if fds:
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)),
                      LISTEN_FDNAMES=os.environ.pop("FAKE_NAMES"))
os.execv(sys.executable, [sys.executable, "-m", "lamd", *sys.argv[1:]])
"""


class FakeStore:
    """systemd's notify socket and descriptor store, for a daemon run by hand."""

    def __init__(self, work) -> None:
        self.path = str(work / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)
        self.sock.settimeout(0.2)
        self.fds: list[tuple[str, int]] = []
        self.messages: list[str] = []
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped:
            try:
                msg, anc, _f, _a = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except TimeoutError:
                continue
            except OSError:
                return
            fds = array.array("i")
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % 4])
            text = msg.decode(errors="replace")
            fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            with self.lock:
                self.messages.append(text)
                if fields.get("FDSTORE") == "1":
                    for fd in fds:
                        os.set_inheritable(fd, False)
                        self.fds.append((fields.get("FDNAME", "stored"), fd))
                    continue
                if fields.get("FDSTOREREMOVE") == "1":
                    for name, fd in [x for x in self.fds if x[0] == fields.get("FDNAME")]:
                        os.close(fd)
                        self.fds.remove((name, fd))
            for fd in fds:
                os.close(fd)

    def names(self) -> list[str]:
        with self.lock:
            return [n for n, _ in self.fds]

    def close(self) -> None:
        self.stopped = True
        self.thread.join(timeout=5)
        self.sock.close()
        for _n, fd in self.fds:
            os.close(fd)
        self.fds.clear()


class StoredDaemon(lamenv.PyDaemon):
    """``python3 -m lamd`` started with the store's descriptors, as
    ``Restart=on-failure`` starts a service with its descriptor store."""

    def __init__(self, session, pkgdir, store: FakeStore, launcher: str) -> None:
        super().__init__(session, pkgdir)
        self.args = ["--log-level", "debug" if os.environ.get("LAMD_TEST_DEBUG") else "info",
                     "--jobs", "none"]  # a crashed daemon's jobs process would stay a client
        self.store = store
        self.launcher = launcher

    def start(self, wait_killfile: bool = True) -> None:
        with self.store.lock:
            fds = list(self.store.fds)
        env = dict(self.s.env, PYTHONPATH=str(self.pkgdir), PYTHONDONTWRITEBYTECODE="1",
                   NOTIFY_SOCKET=self.store.path, FAKE_FDS=",".join(str(fd) for _n, fd in fds),
                   FAKE_NAMES=":".join(n for n, _fd in fds))
        self._log = open(self.logfile, "a")
        served = log_count(self, r"INFO lamd .* serving")
        self.proc = self.s.popen([lamenv.SYSTEM_PYTHON, "-c", self.launcher, *self.args],
                                 env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                 pass_fds=[fd for _n, fd in fds])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"lamd exited:\n{self.log()}"
            if log_count(self, r"INFO lamd .* serving") > served:
                return
            time.sleep(0.02)
        pytest.fail(f"lamd did not serve within 15 s:\n{self.log()}")


@pytest.fixture
def store(lam_session):
    s = FakeStore(lam_session.work)
    yield s
    s.close()


@pytest.fixture
def stored_daemon(lam_session, lamd_pkg, store):
    daemons: list[StoredDaemon] = []

    def start() -> StoredDaemon:
        d = StoredDaemon(lam_session, lamd_pkg, store, LAUNCHER)
        d.start()
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.terminate()
            try:
                d.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait(timeout=10)
        d._log.close()


def log_count(d, pattern: str) -> int:
    return len(re.findall(pattern, d.logfile.read_text(errors="replace")))


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def sigkill(d) -> None:
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)


def test_sigkill_keeps_blocked_and_idle_clients_and_pairs_never_hang(
        lam_session, stored_daemon, store, kclient):
    """Blocked receivers, six 64 B ping-pong pairs and one of 1 MiB mid-run:
    SIGKILL, a new daemon with the store. Every blocked receiver stays blocked, listed in the new
    kill file, and gets its message (every byte checked); every pair
    completes or errors (a client caught mid-reply or mid-body), none hangs."""
    d = stored_daemon()
    k = Clients(d, kclient)
    base = 400000 + os.getpid() % 1000 * 64
    blocked = [k.start("block", base + 40 + i, 0, 4096) for i in range(3)]
    for p in blocked:
        k.wait_state(p, 2)
    pairs = []
    for i in range(6):
        ev = base + 4 * i
        pairs.append(k.start("pingpong", "pong", ev, 3000, 64))
        pairs.append(k.start("pingpong", "ping", ev, 3000, 64))
    ev = base + 30  # and one 1 MiB pair: bodies through the move buffer
    pairs.append(k.start("pingpong", "pong", ev, 150, 1 << 20))
    pairs.append(k.start("pingpong", "ping", ev, 150, 1 << 20))
    wait_listed(lam_session.killfile, {p.pid for p in pairs + blocked})
    wait_for(lambda: len([n for n in store.names() if n.startswith("c")])
             >= len(pairs) + len(blocked), 5, "every connection in the store")
    assert "state" in store.names()
    time.sleep(0.3)
    assert all(p.poll() is None for p in pairs), "pairs ended before the crash"
    sigkill(d)
    d2 = stored_daemon()
    assert log_count(d2, r"after a crash: took back \d+ clients") == 1, d2.log()
    assert log_count(d2, "refused") == 0, d2.log()
    wait_listed(lam_session.killfile, {p.pid for p in blocked})
    assert read_lines(lam_session.killfile)[0] == str(d2.proc.pid)
    for i, p in enumerate(blocked):
        assert p.poll() is None
        k.wait_state(p, 2)  # blocked in the new daemon, in the same krecv
        cp, r = k.run("send", base + 40 + i, 0, 4096)
        ok(cp, r)
        cp, r = k.finish(p, timeout=30)
        ok(cp, r)
    counts = {"completed": 0, "errored": 0, "hung": 0}
    bad = []
    for p in pairs:
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=10)
            counts["hung"] += 1
            bad.append(f"{p.args[2:4]} pid {p.pid} hung: {out[-200:]} {err[-200:]}")
            continue
        done = p.returncode == 0 and "OK" in out
        counts["completed" if done else "errored"] += 1
        if not done:
            bad.append(f"{p.args[2:4]} pid {p.pid} rc {p.returncode}: {out[-200:]} {err[-200:]}")
    print(f"SIGKILL with {len(pairs) // 2} pairs mid-run: {counts}; " +
          re.findall(r"after a crash: took back.*", d2.logfile.read_text())[0])
    assert counts["hung"] == 0, (counts, bad, d2.log())
    assert counts["completed"] + counts["errored"] == len(pairs), counts
    cp = lam_session.run(["tping", "-c", "2", "N"], timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr + d2.log()


def test_corrupt_crash_state_is_refused_and_the_daemon_starts_clean(
        lam_session, stored_daemon, store, kclient):
    """A crash state with one byte changed: one log line, every stored
    connection closed (the blocked client sees its kernel go: ENOKERNEL),
    and the daemon serves afresh."""
    d = stored_daemon()
    k = Clients(d, kclient)
    ev = 500000 + os.getpid() % 1000
    p = k.start("block", ev, 0, 64)
    k.wait_state(p, 2)
    sigkill(d)
    with store.lock:
        memfd = next(fd for n, fd in store.fds if n == "state")
    data = bytearray(os.pread(memfd, cs.HEADER_SIZE + 4 * cs.RECORD_SIZE, 0))
    used = next(i for i in range(4) if data[cs.HEADER_SIZE + i * cs.RECORD_SIZE])
    off = cs.HEADER_SIZE + used * cs.RECORD_SIZE + 8
    os.pwrite(memfd, bytes([data[off] ^ 0x40]), off)
    d2 = stored_daemon()
    lines = re.findall(r".*after a crash.*", d2.logfile.read_text(errors="replace"))
    assert len(lines) == 1 and "fails its checksum: refused, starting clean" in lines[0], d2.log()
    cp, _ = k.finish(p, timeout=15)
    assert cp.returncode != 0  # its kernel went: liblam gives up, never hangs
    assert read_lines(lam_session.killfile) == [str(d2.proc.pid)]
    wait_for(lambda: store.names() == ["state"] or sorted(store.names()).count("state") == 1,
             5, "the refused descriptors to leave the store")
    assert not [n for n in store.names() if n.startswith("c")], store.names()
    cp = lam_session.run(["tping", "-c", "1", "N"], timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_a_reexec_hands_the_crash_state_on(lam_session, stored_daemon, store, kclient):
    """SIGUSR1 (re-exec in place) carries the crash state and the slots of
    the connections: a SIGKILL after it still finds a blocked receiver, in
    the same krecv, and nothing left over in the store."""
    d = stored_daemon()
    k = Clients(d, kclient)
    ev = 520000 + os.getpid() % 1000
    p = k.start("block", ev, 0, 256)
    k.wait_state(p, 2)
    names = sorted(store.names())
    d.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: log_count(d, r"re-exec: restored") == 1, 20, "the re-exec")
    k.wait_state(p, 2)
    assert sorted(store.names()) == names  # the same process: the same store
    sigkill(d)
    d2 = stored_daemon()
    assert log_count(d2, r"after a crash: took back \d+ clients") == 1, d2.log()
    assert log_count(d2, "closing the connection|refused") == 0, d2.log()
    k.wait_state(p, 2)
    cp, r = k.run("send", ev, 0, 256)
    ok(cp, r)
    cp, r = k.finish(p, timeout=30)
    ok(cp, r)
