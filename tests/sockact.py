"""A socket unit by hand for the tests (``Accept=no``, as ``lamd@.socket``
and ``lamd-dl@.socket``): ``python3 tests/sockact.py PATH CMD...`` listens
on the AF_UNIX socket PATH (mode 0600) and, each time a client connects
while no CMD runs, starts CMD with the listening socket as descriptor 3
(``LISTEN_FDS=1``, ``LISTEN_PID``), waits for it to exit and listens on.
SIGTERM or SIGINT: the socket is removed and it exits (a running CMD is
left to the caller). Unlike systemd-socket-activate it outlives CMD, so
a session can be booted again, as under systemd."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys


def main(argv: list[str]) -> int:
    path, cmd = argv[0], argv[1:]
    if os.path.exists(path):
        os.unlink(path)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    lst.bind(path)
    os.umask(old)
    lst.listen(64)

    def bye(*_args) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    print(f"sockact: listening on {path}", flush=True)
    try:
        serve(lst, cmd)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return 0


def serve(lst: socket.socket, cmd: list[str]) -> None:
    while True:
        try:
            r, _, _ = select.select([lst], [], [], 0.5)
        except InterruptedError:
            continue
        if not r:
            continue
        pid = os.fork()
        if pid == 0:
            if lst.fileno() != 3:
                os.dup2(lst.fileno(), 3)
            os.set_inheritable(3, True)  # dup2 onto itself keeps close-on-exec
            os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()),
                              LISTEN_FDNAMES="listen")
            try:
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        print(f"sockact: started {' '.join(cmd)} as {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"sockact: {pid} exited ({status:#x})", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
