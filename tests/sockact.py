"""A socket unit by hand for the tests (``Accept=no``, as ``lamd@.socket``
and ``lamd-dl@.socket``): ``python3 tests/sockact.py PATH CMD...`` listens
on the AF_UNIX socket PATH (mode 0600) and, each time a client connects
while no CMD runs, starts CMD with the listening socket as descriptor 3
(``LISTEN_FDS=1``, ``LISTEN_PID``), waits for it to exit and listens on.
SIGTERM or SIGINT: a running CMD gets SIGTERM (SIGKILL after 5 s), as
stopping the socket stops its service (``Requires=``), then the socket is
removed and it exits. Unlike systemd-socket-activate it outlives CMD, so
a session can be booted again, as under systemd.

``--restart`` (before PATH): ``Restart=on-failure`` with
``RestartPreventExitStatus=1 2`` and a descriptor store, as
``lamd-dl@.service``: CMD gets ``NOTIFY_SOCKET``; what it stores
(``FDSTORE=1``, ``FDNAME=``; ``FDSTOREREMOVE=1``) is passed again, after
the listening socket and named in ``LISTEN_FDNAMES``, when it dies of a
signal or exits other than 0, 1 or 2, and it is started again at once;
any other exit empties the store. ``--restart-always``: ``Restart=always``
with the same, as ``lamd-dl@.service`` since it waits for the next boot
after a universe: exit 0 starts CMD again too (the store kept, as
systemd keeps it across a restart).

``--start`` (before PATH): CMD started at once too, as ``systemctl start``
(or an enabled service at boot) starts it with nothing waiting on the socket.

``--fifo FIFO`` (before PATH): ``ListenFIFO=`` as well, as
``lamd-dl@.socket``'s: FIFO made (mode 0600) and held open read-write, a
request written there starts CMD too, which gets it after the socket
(``LISTEN_FDS=2``); removed at the end."""

from __future__ import annotations

import array
import os
import select
import signal
import socket
import sys
import tempfile
import time


def main(argv: list[str]) -> int:
    restart, always, fifo_path, now = False, False, None, False
    while argv[:1] in (["--restart"], ["--restart-always"], ["--fifo"], ["--start"]):
        if argv[0] == "--start":
            now, argv = True, argv[1:]
        elif argv[0] in ("--restart", "--restart-always"):
            restart, always, argv = True, argv[0] == "--restart-always", argv[1:]
        else:
            fifo_path, argv = argv[1], argv[2:]
    path, cmd = argv[0], argv[1:]
    if os.path.exists(path):
        os.unlink(path)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    lst.bind(path)
    os.umask(old)
    lst.listen(64)
    fifo = None
    if fifo_path is not None:
        if os.path.lexists(fifo_path):
            os.unlink(fifo_path)
        os.mkfifo(fifo_path, 0o600)
        fifo = os.open(fifo_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def bye(*_args) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    print(f"sockact: listening on {path}", flush=True)
    try:
        serve(lst, cmd, restart, fifo, always, now)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_running()
        for p in (path, fifo_path):
            if p is not None:
                try:
                    os.unlink(p)
                except OSError:
                    pass
    return 0


class Store:
    """systemd's side of sd_notify's descriptor store."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sockact-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.fds: list[tuple[str, int]] = []

    def take(self) -> None:
        """The messages waiting on the notify socket."""
        while True:
            r, _, _ = select.select([self.sock], [], [], 0)
            if not r:
                return
            fds = array.array("i")
            msg, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
            fields = dict(ln.split("=", 1) for ln in msg.decode().splitlines() if "=" in ln)
            name = fields.get("FDNAME", "stored")
            if fields.get("FDSTOREREMOVE") == "1":
                for n, fd in [x for x in self.fds if x[0] == name]:
                    os.close(fd)
                    self.fds.remove((n, fd))
            if fields.get("FDSTORE") == "1":
                self.fds.extend((name, fd) for fd in fds)
                print(f"sockact: stored {name}", flush=True)
            elif fds:
                for fd in fds:
                    os.close(fd)

    def flush(self) -> None:
        for _, fd in self.fds:
            os.close(fd)
        self.fds = []


def start(lst: socket.socket, cmd: list[str], store: Store | None, fifo: int | None) -> int:
    pid = os.fork()
    if pid == 0:
        passed = ([lst.fileno()] + ([fifo] if fifo is not None else [])
                  + [fd for _, fd in (store.fds if store else ())])
        high = [os.dup(fd) for fd in passed]   # out of the way of 3, 4, ...
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)
            os.set_inheritable(3 + i, True)  # dup2 onto itself keeps close-on-exec
        names = (["listen"] * (2 if fifo is not None else 1)
                 + [n for n, _ in (store.fds if store else ())])
        os.environ.update(LISTEN_FDS=str(len(passed)), LISTEN_PID=str(os.getpid()),
                          LISTEN_FDNAMES=":".join(names))
        if store is not None:
            os.environ["NOTIFY_SOCKET"] = store.path
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    print(f"sockact: started {' '.join(cmd)} as {pid}", flush=True)
    RUNNING[:] = [pid]
    return pid


#: the CMD running now (stopped with the socket)
RUNNING: list[int] = []


def stop_running() -> None:
    for pid in RUNNING:
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    RUNNING.clear()


def serve(lst: socket.socket, cmd: list[str], restart: bool = False,
          fifo: int | None = None, always: bool = False, now: bool = False) -> None:
    store = Store() if restart else None
    try:
        _serve(lst, cmd, store, fifo, always, now)
    finally:
        if store is not None:
            store.flush()
            os.unlink(store.path)
            os.rmdir(store.dir)


def _serve(lst: socket.socket, cmd: list[str], store: Store | None, fifo: int | None,
           always: bool = False, now: bool = False) -> None:
    again = now
    while True:
        if not again:
            try:
                r, _, _ = select.select([lst] + ([fifo] if fifo is not None else []), [], [],
                                        0.5)
            except InterruptedError:
                continue
            if not r:
                continue
        pid = start(lst, cmd, store, fifo)
        while True:
            if store is not None:
                try:
                    select.select([store.sock], [], [], 0.1)
                except InterruptedError:
                    pass
                store.take()
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                store.take()
            else:
                _, status = os.waitpid(pid, 0)
            break
        RUNNING.clear()
        print(f"sockact: {pid} exited ({status:#x})", flush=True)
        failed = os.WIFSIGNALED(status) or os.WEXITSTATUS(status) not in (0, 1, 2)
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        again = store is not None and (failed or (always and clean))
        if store is not None and not again:
            store.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
