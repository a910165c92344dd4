#!/usr/bin/python3
"""The daemon's per-message CPU, in process, compiled against pure (issue 13).

On a shared 2-core machine a daemon ping-pong measures the scheduler more
than the daemon (docs/profile.md). This measures only the daemon's own work
for a 64 B message, in one process and one thread, so that the minimum of a
few repeats is stable:

* ``kernel``: what the kernel does per message, sans-IO: decode each
  ``struct kreq`` (``KReq.unpack``), ``Kernel.request``, encode each reply;
* ``io``: the whole turn of the daemon's loop (:class:`KernelIO`: epoll,
  reading requests, the kernel, replies and the body through the transfer
  path, written to real Unix sockets) for a 64 B ping-pong between two
  clients, timed around the loop's turns only (the clients' side is not
  counted);
* ``attach``: the loop's work per attach cycle (connect, ``kattach``,
  ``kdetach``, the daemon's close);
* ``routed``: the loop's work per routed 64 B message: two ``kinit``
  clients ping-pong with ``nsend``/``nrecv`` through bufferd (booted as
  the daemon boots it), written as liblam writes them;
* ``io-1MiB``: the same as ``io`` for a 1 MiB body (moved through the bounded buffer
  in several turns);
* ``dlo-direct``, ``dlo-doforward``: the loop's work per 64 B packet for
  another node from a client's ``nsend`` to a dlo outside the kernel,
  straight to its receive on EVDL0 or through the kernel's doforward
  (issue 11);
* ``io-crash``: ``io`` with the crash state on (issue 12: the records of
  :mod:`lamd.kernelio.fdstore` kept as under systemd, a store that keeps
  nothing standing in for systemd's).

Usage: ``bench/hotpath.py [ROUNDS] [--cases kernel,io,...]`` runs each case
in a fresh interpreter, compiled then ``LAMD_PURE=1``, alternating, and
prints µs per message (the minimum over rounds of the best of five runs in
each), from the checkout it is in (build the extension first: ``python3
setup.py build_ext --inplace``). ``--ab TREE`` compares this checkout's
compiled build against another built checkout's instead (A/B of a change:
keep a copy of the base tree, built, elsewhere).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EV = 0x1234


def _req(code: int, index: int, pid: int, event: int = EV, length: int = 64,
         priority: int = 0) -> bytes:
    from lamd.kernel.wire import KMsg, KReq
    return KReq(req=code, index=index, pid=pid, priority=priority,
                msg=KMsg(event, 0, length, 0)).pack()


def bench_kernel(n: int) -> float:
    """µs of kernel work per 64 B message (sans-IO)."""
    from lamd.kernel import Kernel, Reply
    from lamd.kernel.constants import KQATTACH, KQRECV, KQSEND, PRCMD
    from lamd.kernel.wire import KReq

    k = Kernel(kernel_pid=1, clock=lambda: 0.0)
    idx = {}
    for c, pid in (("a", 10), ("b", 11)):
        k.connect(c, pid, 1000)
        (rep,) = [x for x in k.request(c, KReq.unpack(_req(KQATTACH, -1, pid, priority=PRCMD)))
                  if isinstance(x, Reply)]
        idx[c] = rep.reply.index
    # one round trip: b receives, a sends, a receives, b sends
    script = [("b", _req(KQRECV, idx["b"], 11)), ("a", _req(KQSEND, idx["a"], 10)),
              ("a", _req(KQRECV, idx["a"], 10)), ("b", _req(KQSEND, idx["b"], 11))]
    best = float("inf")
    for _ in range(5):  # the best of five: the machine is shared
        t0 = time.perf_counter()
        for _ in range(n // 5):
            for conn, raw in script:
                for a in k.request(conn, KReq.unpack(raw)):
                    if type(a) is Reply:
                        a.reply.pack()
        best = min(best, (time.perf_counter() - t0) / (2 * (n // 5)) * 1e6)
    return best


class _NoStore:
    """systemd's descriptor store, for :class:`CrashKeeper`: keeps nothing."""

    def fdstore(self, name: str, fd: int) -> bool:
        return True

    def fdstore_remove(self, name: str) -> None:
        pass


def bench_io(n: int, size: int, crash: bool = False) -> float:
    """µs of the daemon's loop per message of *size* bytes, in process."""
    import tempfile

    from lamd.kernel import Kernel
    from lamd.kernel.constants import KQATTACH, KQRECV, KQSEND, PRCMD
    from lamd.kernel.wire import KREPLY_SIZE, KReply
    from lamd.kernelio import KernelIO

    d = tempfile.mkdtemp(prefix="lamd-hotpath-")
    path = os.path.join(d, "sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(8)
    io = KernelIO(Kernel(kernel_pid=os.getpid()), lsock, tick_interval=3600.0)
    if crash:
        from lamd.kernelio.fdstore import CrashKeeper

        io.crash = CrashKeeper.create(io.kernel, _NoStore(), uid=os.getuid(), session=d,
                                      nslots=64)
        assert io.crash is not None
    spent = 0.0

    poll = getattr(io, "poll_once", io.loop.poll)  # KernelIO.run's dispatch

    def turn() -> None:  # one turn of KernelIO.run, timed
        nonlocal spent
        t = time.perf_counter()
        poll(0)
        if io._pending:
            io._serve_pending()
        io._end_turn()
        spent += time.perf_counter() - t

    def reply(s: socket.socket) -> KReply:
        buf = b""
        while len(buf) < KREPLY_SIZE:
            turn()
            try:
                buf += s.recv(KREPLY_SIZE - len(buf))
            except BlockingIOError:
                pass
        return KReply.unpack(buf)

    def body(s: socket.socket, want: int) -> None:
        got = 0
        while got < want:
            turn()
            try:
                got += len(s.recv(min(want - got, 1 << 20)))
            except BlockingIOError:
                pass

    clients = {}
    for name in ("a", "b"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.setblocking(False)
        s.sendall(_req(KQATTACH, -1, os.getpid(), priority=PRCMD))
        clients[name] = (s, reply(s).index)
    (a, ia), (b, ib) = clients["a"], clients["b"]
    payload = bytes(size)
    send_a, recv_a = _req(KQSEND, ia, os.getpid(), length=size), _req(KQRECV, ia, os.getpid(), length=size)
    send_b, recv_b = _req(KQSEND, ib, os.getpid(), length=size), _req(KQRECV, ib, os.getpid(), length=size)

    def one_way(src: socket.socket, send: bytes, dst: socket.socket, recv: bytes) -> None:
        dst.sendall(recv)
        turn()
        src.setblocking(True)
        if size <= 65536:
            src.sendall(send + payload)
        else:
            src.sendall(send)
        src.setblocking(False)
        rs = reply(src)
        assert rs.length == size, rs
        if size > 65536:
            # the receiver's reply is held until the body's first bytes come
            # (one sendmsg): read it with the body, as liblam would block in it
            view = memoryview(payload)
            sent = 0
            got = 0
            want = KREPLY_SIZE + size
            head = b""
            while got < want:
                if sent < size:
                    try:
                        sent += src.send(view[sent:sent + 262144])
                    except BlockingIOError:
                        pass
                turn()
                try:
                    data = dst.recv(1 << 20)
                except BlockingIOError:
                    continue
                if len(head) < KREPLY_SIZE:
                    head += data[:KREPLY_SIZE - len(head)]
                got += len(data)
            assert KReply.unpack(head).length == size
        else:
            rd = reply(dst)
            assert rd.length == size, rd
            body(dst, size)

    for _ in range(20):  # warm up
        one_way(a, send_a, b, recv_b)
        one_way(b, send_b, a, recv_a)
    per = float("inf")
    for _ in range(5):  # the best of five: the machine is shared
        spent = 0.0
        for _ in range(n // 5):
            one_way(a, send_a, b, recv_b)
            one_way(b, send_b, a, recv_a)
        per = min(per, spent / (2 * (n // 5)) * 1e6)
    for s, _ in clients.values():
        s.close()
    io.shutdown(unlink_socket=path)
    os.rmdir(d)
    return per


class _Harness:
    """A :class:`KernelIO` on a Unix socket in this process, and blocking-style
    clients whose waits turn the daemon's loop; only the loop's turns are timed."""

    def __init__(self, boot: bool = False, external: tuple[str, ...] = (),
                 without: tuple[str, ...] = ()) -> None:
        import tempfile

        from lamd.kernel import Kernel
        from lamd.kernelio import KernelIO

        self.dir = tempfile.mkdtemp(prefix="lamd-hotpath-")
        self.path = os.path.join(self.dir, "sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(64)
        self.io = KernelIO(Kernel(kernel_pid=os.getpid()), lsock, tick_interval=3600.0)
        if boot:  # LAM's internal processes (router, bufferd, ...), as the daemon boots them
            from lamd.iprocs import boot_table, with_stubs, JOB_SERVICES

            cfg: dict = {"node_addr": "192.0.2.2", "node_id": 0}
            table = [kb for kb in boot_table(cfg, external) if kb.name not in without]
            self.io.boot(with_stubs(table, JOB_SERVICES), cfg)
        self.spent = 0.0
        self.poll = getattr(self.io, "poll_once", self.io.loop.poll)  # KernelIO.run's dispatch

    def turn(self) -> None:  # one turn of KernelIO.run, timed
        io = self.io
        t = time.perf_counter()
        self.poll(0)
        if io._pending:
            io._serve_pending()
        if io._resume_due:
            io._resume_due = False
            io._apply(io.kernel.wake())
        io._end_turn()
        self.spent += time.perf_counter() - t

    def read(self, s: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            self.turn()
            try:
                got = s.recv(n - len(buf))
            except BlockingIOError:
                continue
            if not got:
                raise EOFError
            buf += got
        return buf

    def eof(self, s: socket.socket) -> None:
        while True:
            self.turn()
            try:
                if not s.recv(1):
                    return
            except BlockingIOError:
                pass

    def call(self, s: socket.socket, req: bytes):
        from lamd.kernel.wire import KREPLY_SIZE, KReply

        s.sendall(req)
        return KReply.unpack(self.read(s, KREPLY_SIZE))

    def attach(self, priority: int) -> tuple[socket.socket, int]:
        from lamd.kernel.constants import KQATTACH

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        s.setblocking(False)
        rep = self.call(s, _req(KQATTACH, -1, os.getpid(), priority=priority))
        assert rep.reply == 0, rep
        return s, rep.index

    def best(self, step, n: int, msgs: int = 1, warm: int = 20) -> float:
        """µs of the loop per message of *step* (which moves *msgs*): *warm*
        steps to warm up, then the best of 5 batches of *n* // 5."""
        for _ in range(warm):
            step()
        per = float("inf")
        for _ in range(5):
            self.spent = 0.0
            for _ in range(n // 5):
                step()
            per = min(per, self.spent / (msgs * (n // 5)) * 1e6)
        return per

    def close(self) -> None:
        self.io.shutdown(unlink_socket=self.path)
        os.rmdir(self.dir)


def bench_attach(n: int) -> float:
    """µs of the daemon's loop per attach cycle: connect, ``kattach``,
    ``kdetach``, close (the daemon closes; the client reads EOF)."""
    from lamd.kernel.constants import KQDETACH, PRCMD

    h = _Harness()
    detach = _req(KQDETACH, 0, os.getpid())

    def cycle() -> None:
        s, _ = h.attach(PRCMD)
        s.sendall(detach)
        h.eof(s)
        s.close()

    per = h.best(cycle, n, warm=50)
    h.close()
    return per


def bench_routed(n: int, size: int = 64) -> float:
    """µs of the daemon's loop per routed 64 B message: two ``kinit``
    clients ping-pong with ``nsend``/``nrecv`` through bufferd, written as
    liblam writes them (``dsend``: KQSEND to EVBUFFERD, then the
    ``struct nmsg`` and body; ``bfrecv``: a KQSR whose send half is the
    BFQRECV header to EVBUFFERD, then the reply, header and body)."""
    from lamd.iprocs.nreq import BFQRECV, DLCTL, DLUSR, LOCAL, data_words
    from lamd.kernel.constants import EVBUFFERD, KNMSG, KQSEND, KQSR, PRCMD
    from lamd.kernel.wire import NMSG_SIZE, KMsg, KReq, NMsg

    h = _Harness(boot=True)
    (a, ia), (b, ib) = h.attach(PRCMD), h.attach(PRCMD)
    pid = os.getpid()
    payload = bytes(size)

    def nsend(s: socket.socket, index: int, event: int) -> None:
        hdr = NMsg(dl_event=EVBUFFERD, node=0, event=event, type=1, length=size)
        req = KReq(req=KQSEND, index=index, pid=pid,
                   msg=KMsg(EVBUFFERD, DLUSR, size, KNMSG)).pack()
        rep = h.call(s, req)
        assert rep.reply == 0, rep
        s.setblocking(True)
        s.sendall(hdr.pack() + payload)
        s.setblocking(False)

    def bfrecv_start(s: socket.socket, index: int, event: int) -> None:
        bf = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
                  data=data_words(0, 0, BFQRECV, 0, event, 1, 0, 0))
        req = KReq(req=KQSR, index=index, pid=pid, msg=KMsg(EVBUFFERD, DLCTL, 0, KNMSG),
                   msg2=KMsg(event, 1, size, KNMSG)).pack()
        front = h.call(s, req)
        assert front.reply == 0, front
        s.sendall(bf.pack())

    def packet(s: socket.socket) -> None:
        from lamd.kernel.wire import KREPLY_SIZE, KReply

        rep = KReply.unpack(h.read(s, KREPLY_SIZE))
        assert rep.reply == 0 and rep.length == size, rep
        h.read(s, NMSG_SIZE + size)

    def one_way(src, isrc, dst, idst, event) -> None:
        bfrecv_start(dst, idst, event)
        nsend(src, isrc, event)
        packet(dst)

    def round_trip() -> None:
        one_way(a, ia, b, ib, 1000)
        one_way(b, ib, a, ia, 1001)

    per = h.best(round_trip, n, msgs=2)
    a.close()
    b.close()
    h.close()
    return per


def bench_dlo(n: int, doforward: bool, size: int = 64) -> float:
    """µs of the daemon's loop per packet for another node, from a client's
    ``nsend`` (KQSEND to EVDL0 with the header) to a dlo outside the kernel
    (a client, its receive posted first): through the kernel's doforward
    (issue 11: tagged, the dlo seen waiting) or, without it, straight to
    dlo's receive on EVDL0 (what a separate dlo did before doforward)."""
    from lamd.iprocs.doforward import EVDOFORWARD, LONGEST, TAG
    from lamd.iprocs.nreq import DLUSR
    from lamd.kernel.constants import EVDL0, KNMSG, KQRECV, KQSEND, PRCMD
    from lamd.kernel.wire import KREPLY_SIZE, NMSG_SIZE, KMsg, KReply, KReq, NMsg

    h = _Harness(boot=True, external=("dlo_inet",), without=() if doforward else ("doforward",))
    (a, ia), (b, ib) = h.attach(PRCMD), h.attach(PRCMD)
    pid = os.getpid()
    payload = bytes(size)
    hdr = NMsg(dl_event=EVDL0, dl_link=1, node=1, event=1000, type=1, length=size).pack()
    ev, want = (EVDOFORWARD, TAG.size + size) if doforward else (EVDL0, size)
    send_req = KReq(req=KQSEND, index=ia, pid=pid, msg=KMsg(EVDL0, DLUSR, size, KNMSG)).pack()
    recv_req = KReq(req=KQRECV, index=ib, pid=pid, msg=KMsg(ev, 0, LONGEST, KNMSG)).pack()

    def one() -> None:
        b.sendall(recv_req)
        rep = h.call(a, send_req)
        assert rep.reply == 0, rep
        a.setblocking(True)
        a.sendall(hdr + payload)
        a.setblocking(False)
        rep = KReply.unpack(h.read(b, KREPLY_SIZE))
        assert rep.reply == 0 and rep.length == want, rep
        h.read(b, NMSG_SIZE + want)

    per = h.best(one, n)
    a.close()
    b.close()
    h.close()
    return per


def child(case: str) -> None:
    import lamd._pure as pure

    try:  # the daemon's log level as the unit sets it (info): calls below it return at once
        from lamd import lazylog
        lazylog.set_level(lazylog.INFO)
    except ImportError:  # a revision before lamd.lazylog: logging's own level check
        pass

    if case == "kernel":
        v = bench_kernel(20000)
    elif case == "io":
        v = bench_io(5000, 64)
    elif case == "attach":
        v = bench_attach(5000)
    elif case == "routed":
        v = bench_routed(5000)
    elif case == "io-crash":
        v = bench_io(5000, 64, crash=True)
    elif case in ("dlo-direct", "dlo-doforward"):
        v = bench_dlo(5000, case == "dlo-doforward")
    else:
        v = bench_io(100, 1 << 20)
    print(json.dumps({"case": case, "compiled": pure.compiled(), "us": v}))


CASES = ("kernel", "io", "attach", "routed", "io-crash", "io-1MiB", "dlo-direct", "dlo-doforward")


def _run(tree: str, case: str, pure: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, LAMD_PURE=pure)
    out = subprocess.run([sys.executable, os.path.join(tree, "bench", "hotpath.py"), "--child",
                          case], env=env, check=True, capture_output=True, text=True,
                         timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    import argparse

    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rounds", nargs="?", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, of " + ", ".join(CASES))
    ap.add_argument("--ab", metavar="TREE",
                    help="compare the compiled build of this checkout against TREE's "
                         "(another checkout, built), alternating, instead of compiled against pure")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if args.ab:
        runs = [("base", os.path.abspath(args.ab), ""), ("new", ROOT, "")]
    else:
        runs = [("compiled", ROOT, ""), ("pure", ROOT, "1")]
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for case in cases:
            for label, tree, pure in runs:
                r = _run(tree, case, pure)
                if r["compiled"] != (pure == ""):
                    print(f"{label}: compiled={r['compiled']} (stale build?)", file=sys.stderr)
                key = (case, label)
                best[key] = min(best.get(key, float("inf")), r["us"])
    a, b = runs[1][0], runs[0][0]
    print(f"{'case':10s} {b + ' µs':>12s} {a + ' µs':>12s} {'ratio':>6s}")
    for case in cases:
        x, y = best.get((case, b)), best.get((case, a))
        if x is None or y is None:
            print(f"{case:10s} missing")
            continue
        print(f"{case:10s} {x:12.2f} {y:12.2f} {y / x:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
