#!/usr/bin/python3
"""Does splicing a body through a pipe beat recv_into + send? (issue 13)

What the daemon does with a message body, without the daemon: a writer
process sends N bodies of SIZE bytes into one socketpair, a reader process
reads them from a second one, and this process moves every byte from the
first pair to the second, either

* ``copy``: ``recv_into`` a bounded buffer, then ``send`` it (the daemon
  today: two copies through user space), or
* ``splice``: ``os.splice`` the sender's socket into a pipe (bounded with
  ``F_SETPIPE_SZ``), then the pipe into the receiver's socket (no copy
  through user space; pipe to unix socket uses MSG_SPLICE_PAGES on >= 6.5).

All sockets are non-blocking and waited on with epoll, as in the daemon.
Prints MB/s per mode and size (medians of alternating rounds). As root or
not::

    flock -w 1800 /tmp/lamd-bench.lock /usr/bin/python3 bench/splice_micro.py [rounds]
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import statistics
import sys
import time

BOUND = 256 * 1024  # the daemon's move_buffer
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


def writer(fd: socket.socket, size: int, count: int) -> None:
    body = b"x" * size
    for _ in range(count):
        fd.sendall(body)


def reader(fd: socket.socket, size: int, count: int) -> None:
    buf = bytearray(1 << 20)
    left = size * count
    while left:
        n = fd.recv_into(buf, min(len(buf), left))
        if not n:
            raise SystemExit("reader: EOF")
        left -= n


def move(mode: str, src: socket.socket, dst: socket.socket, total: int) -> None:
    """Move *total* bytes, at most BOUND held at a time, epoll-driven."""
    src.setblocking(False)
    dst.setblocking(False)
    ep = select.epoll()
    ep.register(src.fileno(), select.EPOLLIN)
    ep.register(dst.fileno(), 0)
    sfd, dfd = src.fileno(), dst.fileno()
    held = 0
    moved_in = 0
    if mode == "copy":
        buf = bytearray(BOUND)
        view = memoryview(buf)
        rpos = 0
    else:
        pr, pw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.fcntl(pw, F_SETPIPE_SZ, BOUND)
    src_on, dst_on = True, False
    delivered = 0
    while delivered < total:
        for fd, ev in ep.poll():
            if fd == sfd:
                room = min(BOUND - held, total - moved_in)
                try:
                    if mode == "copy":
                        n = src.recv_into(view[held:held + room])
                    else:
                        n = os.splice(sfd, pw, room, flags=FLAGS)
                except BlockingIOError:
                    n = 0
                held += n
                moved_in += n
            if held:
                try:
                    if mode == "copy":
                        k = dst.send(view[rpos:held])
                        rpos += k
                        if rpos == held:
                            rpos = held = 0
                    else:
                        k = os.splice(pr, dfd, held, flags=FLAGS)
                        held -= k
                except BlockingIOError:
                    k = 0
                delivered += k
            # the sender is read while there is room, the receiver written while there are bytes
            want_src = held < BOUND and moved_in < total
            want_dst = held > 0
            if want_src != src_on:
                ep.modify(sfd, select.EPOLLIN if want_src else 0)
                src_on = want_src
            if want_dst != dst_on:
                ep.modify(dfd, select.EPOLLOUT if want_dst else 0)
                dst_on = want_dst
    ep.close()
    if mode != "copy":
        os.close(pr)
        os.close(pw)


def run(mode: str, size: int, count: int) -> float:
    a1, a2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b1, b2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    t0 = time.perf_counter()
    w = os.fork()
    if w == 0:
        writer(a1, size, count)
        os._exit(0)
    r = os.fork()
    if r == 0:
        reader(b2, size, count)
        os._exit(0)
    move(mode, a2, b1, size * count)
    os.waitpid(w, 0)
    os.waitpid(r, 0)
    dt = time.perf_counter() - t0
    for s in (a1, a2, b1, b2):
        s.close()
    return size * count / dt / 1e6


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(f"kernel {os.uname().release}, bound {BOUND} bytes")
    for size, count in ((1 << 20, 400), (256 << 10, 1600), (64 << 10, 4000), (16 << 10, 8000),
                        (4 << 10, 20000)):
        res: dict[str, list[float]] = {"copy": [], "splice": []}
        for r in range(rounds):
            for mode in (("copy", "splice") if r % 2 == 0 else ("splice", "copy")):
                res[mode].append(run(mode, size, count))
        c, s = statistics.median(res["copy"]), statistics.median(res["splice"])
        print(f"{size:>8} B x {count:>5}: copy {c:8.0f} MB/s  splice {s:8.0f} MB/s  "
              f"splice/copy {s / c:.2f}  (copy {min(res['copy']):.0f}-{max(res['copy']):.0f}, "
              f"splice {min(res['splice']):.0f}-{max(res['splice']):.0f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
