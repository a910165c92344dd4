"""What filed, flatd, loadd and iod share: waiting for a request *or* an
event, replying only where a reply can go, and knowing when a client is gone.

* :func:`next_request` is LAM's ``nrecv`` on a service event (``BFQRECV`` to
  bufferd and the receive, in one kernel call), made interruptible by the
  service's watches (:meth:`IProc.wait`) when it has any: a service that
  holds state for clients (passed descriptors, flat blobs) wakes when one of
  them goes, not only when the next request comes.  Interrupting it is clean
  inside the kernel (bufferd delivers with KTRY, so a packet that finds the
  receiver gone stays buffered for the next ``nrecv``); outside the kernel
  the host re-attaches (see :mod:`lamd.iprocs.host`), which is why the
  services keep their watches to what really needs a wake-up.
* :class:`Owners`: LAM's filed and flatd never learn that a client is gone
  (descriptors and blobs stay until ``FQCLOSE``/``FQRMFD``/``FLQCLEAN`` or the
  daemon's exit).  Here the process behind a request's ``src_event = -pid``
  is watched through a pidfd while the service holds something of it.
* :func:`reply`: a service answers on the request's ``src_node``/``src_event``;
  another node's through dlo (``getroute``); a node the router does not
  know gets nothing and one log line.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Iterable

from ..iprocs.nreq import (
    BFQRECV, BFQSWEEP1, DLCTL, LOCAL, NetMsg, NoRoute, data_words, my_nodeid, nrecv, nsend, received,
)
from ..kernel.constants import EVBUFFERD, KNMSG, MAXNMSGLEN
from ..kernel.kiproc import IPROC_PID_BASE, ChildExit, Event, IProc, Watch
from ..kernel.wire import NMsg

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger("lamd.jobs")

#: Pids this close above IPROC_PID_BASE may be the daemon's internal
#: processes (LAM pids, not real processes): never watched as clients.
IPROC_PID_SPAN = 64


def node_id(k: IProc) -> int:
    """``getnodeid()`` (:func:`lamd.iprocs.nreq.my_nodeid`)."""
    return my_nodeid(k)


def is_local(node: int, k: IProc) -> bool:
    """A node this daemon is: LOCAL or its own node id."""
    return node in (LOCAL, node_id(k))


async def next_request(k: IProc, event: int, watches: Iterable[Watch] = (),
                       length: int = MAXNMSGLEN) -> NetMsg | Event | None:
    """The next request packet on *event*, or the first event of *watches*.

    Without watches this is plain :func:`nrecv`.  None when the kernel
    refused the receive (a LAM error in the reply: nothing arrived)."""
    ws = tuple(watches)
    if not ws:
        return await nrecv(k, event, 0, length)
    bf = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
              data=data_words(0, 0, BFQRECV, 0, event, 0, 0, 0))
    got = await k.wait(k.sr(EVBUFFERD, DLCTL, b"", KNMSG, event, 0, length, KNMSG,
                            nmsg=bf), *ws)
    if isinstance(got, Event):
        return got
    if got.reply.reply:
        return None
    return received(got)


async def reply(k: IProc, node: int, event: int, data: Iterable[int] = (), body: bytes = b"",
                flags: int = 0, type: int = 0, what: str = "") -> bool:
    """``nsend`` a reply; False (and one log line) if it cannot go anywhere."""
    head = NMsg(node=node, event=event, type=type, flags=flags, data=data_words(*data))
    try:
        await nsend(k, head, body, node_id=node_id(k))
    except NoRoute:
        log.warning("%s: no reply%s to node %d event %d: no route to that node",
                    k.name, f" ({what})" if what else "", node, event)
        return False
    return True


async def sweep_event(k: IProc, event: int) -> None:
    """``BFQSWEEP1``: drop whatever bufferd keeps for *event* (stale replies
    to a private reply event, before waiting on it again).  No reply."""
    head = NMsg(node=LOCAL, event=EVBUFFERD, type=DLCTL,
                data=data_words(0, 0, BFQSWEEP1, 0, event, 0, 0, 0))
    await nsend(k, head, b"", node_id=node_id(k))


def owner_of(src_node: int, src_event: int, k: IProc) -> int | None:
    """The process a request comes from, if it can be watched: a local
    ``src_event = -pid`` naming a real process that is not this service
    (nor one of the kernel's internal processes)."""
    if src_event >= 0 or not is_local(src_node, k):
        return None
    pid = -src_event
    if pid <= 1 or pid in (os.getpid(), k.pid):
        return None
    if IPROC_PID_BASE <= pid < IPROC_PID_BASE + IPROC_PID_SPAN:
        return None
    return pid


class Owners:
    """Client processes a service holds state for, each watched through a
    pidfd (readable when the process has exited) while it holds any."""

    def __init__(self, k: IProc) -> None:
        self.k = k
        self._by_pid: dict[int, tuple[int, Watch]] = {}
        self._by_watch: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def __contains__(self, pid: object) -> bool:
        return pid in self._by_pid

    def track(self, pid: int) -> bool:
        """Watch *pid*; False if it cannot be (it is already gone: then there
        is nobody to clean up after, as in LAM, beyond the service's limits)."""
        if pid in self._by_pid:
            return True
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return False
        try:
            w = self.k.watch_readable(pidfd)
        except Exception:
            os.close(pidfd)
            raise
        self._by_pid[pid] = (pidfd, w)
        self._by_watch[w.id] = pid
        return True

    def forget(self, pid: int) -> None:
        got = self._by_pid.pop(pid, None)
        if got is None:
            return
        pidfd, w = got
        self._by_watch.pop(w.id, None)
        w.cancel()
        os.close(pidfd)

    def watches(self) -> list[Watch]:
        return [w for _, w in self._by_pid.values()]

    def gone(self, ev: Event) -> int | None:
        """The pid whose exit *ev* reports (no longer watched), or None."""
        pid = self._by_watch.get(ev.watch.id)
        if pid is None:
            return None
        self.forget(pid)
        return pid

    def close(self) -> None:
        for pid in list(self._by_pid):
            self.forget(pid)


#: the shell a job service runs a command or a script with (LAM's execvp's)
SHELL = "/bin/sh"


def mark_reaped(popen: "subprocess.Popen", ws: int | None) -> None:
    """The I/O layer reaped *popen*'s process (wait status *ws*, None if
    unknown): Popen must never ``waitpid()`` that pid again."""
    if popen.returncode is None:
        popen.returncode = -1 if ws is None else os.waitstatus_to_exitcode(ws)


def wait_status(ce: ChildExit) -> int | None:
    """A ``waitpid`` status from a :class:`ChildExit` (None if unknown)."""
    if ce.code is None or ce.status is None:
        return None
    if ce.code == os.CLD_EXITED:
        return (ce.status & 0xFF) << 8
    if ce.code == os.CLD_KILLED:
        return ce.status & 0x7F
    if ce.code == os.CLD_DUMPED:
        return (ce.status & 0x7F) | 0x80
    return None


__all__ = ["next_request", "reply", "sweep_event", "owner_of", "Owners",
           "is_local", "node_id", "wait_status", "mark_reaped", "SHELL", "IPROC_PID_SPAN"]
