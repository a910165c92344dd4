"""loadd: a program file into flatd under a tag (LAM's ``otb/sys/loadd/``).

``lamexec -s NODE`` / ``mpirun -s NODE`` (``rploadgov`` with a source node
that is not the target, e.g. ``-s h`` = LOCAL on node 0) ask the loadd of
the source node for ``LQLOAD``: ``struct lreq`` in ``nh_data`` (``lq_req``,
``lq_src_node``, ``lq_src_event``, ``lq_dest_node``, ``lq_tag`` = the tool's
pid), the file name as the body (at most FNAMELEN).  loadd finds the file
(``sfh_path_env_find(name, R_OK | X_OK)``: the name itself if it has a
``/``, else along loadd's ``PATH``), loads it into flatd on the destination
node (FLQLOAD: an opening request with the length, then the bytes in
MAXNMSGLEN packets) and replies ``lreply {flatd's answer}``; kenyad then
starts the program from flatd's file (``RTF_FLAT``, ``pq_loadpt`` = tag).

On one node the destination is this node's own flatd.  Differences from
LAM: the file is streamed (LAM reads it whole into memory first, and
panics when malloc fails), its size is bounded (``config["loadd_max_file"]``,
default flatd's :data:`lamd.jobs.flatd.MAX_ENTRY`: ``EFBIG``), it must be a
regular file (``EINVAL``, as LAM answers an empty one), the error is the
real one (LAM: ``EINVAL`` whenever open fails), flatd's replies come to a
reply event of loadd's own (``-EVLOADD``, swept before each load, so a late
reply never answers the next load; LAM uses ``-pid``, which a service host
shares between its services), and a flatd that does not answer within
:data:`FLATD_TIMEOUT` fails the load (``ETIMEDOUT``) instead of hanging loadd.
A file that shrinks while it is read is padded to the length announced
(flatd's entry completes; nobody runs it: the client gets ``EIO``).
Another destination node: ``EBADNODE`` (this universe has one node).
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from ..iprocs.nreq import LOCAL, NoRoute, getroute, nsend
from ..kernel.constants import EBADNODE, EBADREQUEST, EVFLATD, EVLOADD, MAXNMSGLEN
from ..kernel.kiproc import Event, IProc
from ..kernel.wire import NMsg
from .common import next_request, node_id, reply, sweep_event
from .flatd import MAX_ENTRY
from .wire import FLQLOAD, FNAMELEN, LQLOAD, FlReply, FlReq, LReply, LReq, int4

log = logging.getLogger("lamd.jobs.loadd")

#: Where flatd's answers to loadd come.
REPLY_EVENT = int4(-EVLOADD)
#: How long loadd waits for each of flatd's answers.
FLATD_TIMEOUT = 30.0


class LoadError(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def find_program(name: str, path: str | None = None) -> str:
    """``sfh_path_env_find(name, R_OK | X_OK)``: the file loadd loads."""
    if not name:
        raise LoadError(errno.ENOENT, "empty file name")
    if "/" in name:
        candidates = [name]
    else:
        dirs = (path if path is not None else os.environ.get("PATH", "")).split(":")
        candidates = [os.path.join(d or ".", name) for d in dirs]
    err = errno.ENOENT
    for c in candidates:
        if os.access(c, os.R_OK | os.X_OK):
            return c
        if os.path.exists(c):
            err = errno.EACCES
    raise LoadError(err, f"{name}: {os.strerror(err)}")


class Loadd:
    def __init__(self, k: IProc) -> None:
        self.k = k
        self.max_file = int(k.config.get("loadd_max_file") or k.config.get("flatd_max_entry")
                            or MAX_ENTRY)

    async def run(self) -> None:
        while True:
            msg = await next_request(self.k, EVLOADD)
            if msg is None or isinstance(msg, Event):
                continue
            q = LReq.from_data(msg.data)
            name = msg.body[:FNAMELEN].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if q.req != LQLOAD:
                log.warning("loadd: unknown request %d from pid %d", q.req, -q.src_event)
                code = EBADREQUEST
            else:
                try:
                    code = await self.load(q, name)
                except LoadError as e:
                    log.warning("loadd: cannot load %r for pid %d: %s", name, -q.src_event, e)
                    code = e.code
            await reply(self.k, q.src_node, q.src_event, LReply(code).data(), what="LQLOAD")

    async def load(self, q: LReq, name: str) -> int:
        if q.dest_node not in (LOCAL, node_id(self.k)):
            try:  # a node the router does not know: refused before any reading
                await getroute(self.k, NMsg(node=q.dest_node, event=EVFLATD), node_id(self.k))
            except NoRoute:
                raise LoadError(EBADNODE, f"no node {q.dest_node} in this universe") from None
        full = find_program(name)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise LoadError(e.errno or errno.EIO, f"{full}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                raise LoadError(errno.EINVAL, f"{full} is not a non-empty regular file")
            if st.st_size > self.max_file:
                raise LoadError(errno.EFBIG, f"{full} has {st.st_size} bytes (limit "
                                f"{self.max_file})")
            return await self.to_flatd(q, full, fd, st.st_size)
        finally:
            os.close(fd)

    async def to_flatd(self, q: LReq, full: str, fd: int, size: int) -> int:
        k = self.k
        src_node = q.dest_node if q.dest_node == LOCAL else node_id(k)
        flq = FlReq(src_node, REPLY_EVENT, FLQLOAD, q.tag, size, size)
        head = NMsg(node=q.dest_node, event=EVFLATD, data=flq.data())
        await sweep_event(k, REPLY_EVENT)
        try:
            await nsend(k, head, b"", node_id=node_id(k))
        except NoRoute:
            raise LoadError(EBADNODE, f"no node {q.dest_node} in this universe") from None
        code = await self.flatd_reply()
        if code:
            return code
        left, short = size, False
        while left > 0:
            try:
                chunk = os.read(fd, min(MAXNMSGLEN, left))
            except OSError as e:
                log.warning("loadd: reading %s: %s", full, e.strerror)
                chunk = b""
            if not chunk:
                short = True
                chunk = bytes(min(MAXNMSGLEN, left))
            await nsend(k, NMsg(node=q.dest_node, event=EVFLATD, data=flq.data()), chunk,
                        node_id=node_id(k))
            left -= len(chunk)
        code = await self.flatd_reply()
        if short:
            log.warning("loadd: %s ended before its %d bytes: load failed", full, size)
            return code or errno.EIO
        log.info("loadd: %s (%d bytes) loaded into flatd under tag %d for pid %d", full,
                 size, q.tag, -q.src_event)
        return code

    async def flatd_reply(self) -> int:
        t = self.k.timer(FLATD_TIMEOUT)
        try:
            got = await next_request(self.k, REPLY_EVENT, (t,))
        finally:
            t.cancel()
        if isinstance(got, Event):
            raise LoadError(errno.ETIMEDOUT, f"flatd did not answer in {FLATD_TIMEOUT:g} s")
        if got is None:
            raise LoadError(errno.EIO, "receiving flatd's answer failed")
        return FlReply.from_data(got.data).reply


async def loadd(k: IProc) -> None:
    """loadd: program files into flatd (see :mod:`lamd.jobs.loadd`)."""
    await Loadd(k).run()


__all__ = ["loadd", "Loadd", "find_program", "REPLY_EVENT", "FLATD_TIMEOUT"]
