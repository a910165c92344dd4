"""The session socket out of lamhalt's sight, under socket activation.

Stock ``lamhalt``, once its own node's daemon has the halt message, waits
for the session socket's path to go (``otb/lamhalt/lamhalt.c``: ``stat()``
in a loop whose ``select`` timeout Linux has zeroed after the first call,
so it spins, with no time limit). The C lamd, and ours by hand, remove the
path as they exit. Under socket activation the path is systemd's
(``lamd@.socket``): it must stay, so that the next client starts the daemon
again, and lamhalt would spin on a CPU for ever.

So a daemon whose socket is systemd's, halted while a local lamhalt waits,
moves the path aside (:data:`ASIDE` beside it: the same socket, which
systemd keeps listening on) for as long as that lamhalt runs, at most
:data:`WAIT` seconds, and then puts it back (:func:`aside_for_lamhalt`).
lamhalt spins on ``stat``, so it sees the path gone within microseconds.
A client that connects meanwhile finds no daemon, as during any halt, and
one already in the socket's queue is served by the next start. Should the
daemon die in between, ``lamd-tkill --systemd`` (``lamd@.service``'s
``ExecStopPost=``, which systemd runs after any end) puts the path back
(:func:`restore`).
"""

from __future__ import annotations

import os
import select
import stat
import time

from . import LAM_SOCKET

#: where the socket's path waits while lamhalt ends
ASIDE = LAM_SOCKET + ".halting"
#: at most this long: lamhalt ends within microseconds of the path going
WAIT = 5.0


def aside_path(path: str) -> str:
    """Where *path* (a session's socket) is moved aside."""
    return os.path.join(os.path.dirname(path), ASIDE)


def restore(path: str) -> bool:
    """Put the socket moved aside back at *path*, if it is there and
    nothing else is at *path*; whether it did."""
    aside = aside_path(path)
    try:
        if not stat.S_ISSOCK(os.lstat(aside).st_mode) or os.path.lexists(path):
            return False
        os.rename(aside, path)
    except FileNotFoundError:
        return False
    return True


def aside_for_lamhalt(path: str, pids: list[int], wait: float = WAIT) -> int:
    """Move the socket at *path* aside until every process of *pids* (the
    local lamhalts that wait for it to go) has ended, or *wait* seconds;
    then put it back. The number of them that ended meanwhile; 0 and
    nothing moved if none runs. OSError if the path cannot be moved."""
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                pass
        if not fds:
            return 0
        os.rename(path, aside_path(path))
        try:
            p = select.poll()
            for fd in fds:
                p.register(fd, select.POLLIN)
            ended = 0
            deadline = time.monotonic() + wait
            while ended < len(fds):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for fd, _ in p.poll(left * 1000):
                    p.unregister(fd)
                    ended += 1
            return ended
        finally:
            restore(path)
    finally:
        for fd in fds:
            os.close(fd)

