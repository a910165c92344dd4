"""Taking a client's descriptors over its Unix socket (LAM's ``share/etc/srfd.c``,
``sfh_recv_fd``), without ever blocking the process that takes them.

``lamexec``/``mpirun`` pass their stdin, stdout and stderr to filed
(``FQOPENFD``) and to kenyad (``PQCREATE`` with ``RTF_PFDIO``): the tool
creates a Unix stream server ``<session>/lam-<pid>`` and blocks in
``accept()``; the service connects and receives one descriptor at a time,
each as one byte with an ``SCM_RIGHTS`` control message, and answers each
with a one-byte handshake. filed then writes back the LAM descriptor numbers
it chose (``int4 tfds[3]``) before closing.

:func:`recv_fds` does this from an internal process (or a process of the
external host) through the wait API: a readable watch on the socket and one
deadline for the whole exchange, so a client that never accepts, stalls or
sends garbage costs its own request only.
"""

from __future__ import annotations

import array
import logging
import os
import socket

from ..kernel.kiproc import IProc

log = logging.getLogger("lamd.jobs.srfd")

#: How long a service waits, in all, for a client to hand over its descriptors.
FD_SERVER_TIMEOUT = 10.0


class FdPassError(Exception):
    """The client's descriptor server could not be used (reason in the text)."""


def fd_server_allowed(path: str, session: str | None) -> bool:
    """Only a ``lam-<something>`` socket right inside our session directory."""
    if not session or not path:
        return False
    real = os.path.realpath(path)
    return (os.path.dirname(real) == os.path.realpath(session)
            and os.path.basename(real).startswith("lam-"))


async def recv_fds(k: IProc, path: str, want: int = 3, *, reply: bytes = b"",
                   timeout: float | None = None) -> list[int]:
    """Connect to the client's server at *path* and take *want* descriptors.

    After the last one, *reply* (filed's ``tfds``) is written before the
    socket is closed. Returns the descriptors, owned by the caller. Raises
    :class:`FdPassError` if the connection fails, the client closes early
    or sends no descriptor, or *timeout* (default
    :data:`FD_SERVER_TIMEOUT`) passes; no descriptor is leaked then.
    """
    if timeout is None:
        timeout = FD_SERVER_TIMEOUT
    fds: list[int] = []
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    except OSError as e:
        raise FdPassError(f"cannot make a socket: {e.strerror}") from None
    readable = deadline = None
    try:
        try:
            s.connect(path)  # a full backlog fails at once (EAGAIN): never blocks
        except OSError as e:
            raise FdPassError(f"cannot connect to {path}: {e.strerror}") from None
        readable = k.watch_readable(s.fileno())
        deadline = k.timer(timeout)
        while len(fds) < want:
            ev = await k.next_event(readable, deadline)
            if ev.watch is deadline:
                raise FdPassError(f"{path} passed {len(fds)} of {want} descriptors "
                                  f"in {timeout:g} s")
            try:
                data, anc, _flags, _addr = s.recvmsg(1, socket.CMSG_SPACE(4 * want))
            except BlockingIOError:
                continue
            except OSError as e:
                raise FdPassError(f"reading descriptors from {path}: {e.strerror}") from None
            got = 0
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    part = array.array("i")
                    part.frombytes(cdata[:len(cdata) - len(cdata) % part.itemsize])
                    fds.extend(part)
                    got += len(part)
            if not data:
                raise FdPassError(f"{path} closed after {len(fds)} of {want} descriptors")
            if not got:
                raise FdPassError(f"{path} sent a byte without a descriptor")
            try:
                s.send(b"\0")  # sfh_send_fd waits for this handshake
            except OSError as e:
                raise FdPassError(f"handshake with {path}: {e.strerror}") from None
        if len(fds) > want:
            raise FdPassError(f"{path} passed {len(fds)} descriptors, not {want}")
        if reply:
            try:
                s.send(reply)  # small: fits the empty socket buffer at once
            except OSError as e:
                raise FdPassError(f"writing back to {path}: {e.strerror}") from None
        return fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        if readable is not None:
            readable.cancel()
        if deadline is not None:
            deadline.cancel()
        s.close()
