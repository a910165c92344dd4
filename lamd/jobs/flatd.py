"""flatd: blobs by tag, as files in the session directory (LAM's ``otb/sys/flatd/``).

``rflatv`` (every ``lamexec``/``mpirun`` process) loads the glued argv and
environment into flatd under a tag (the tool's pid); ``rload``'s loadd loads
a program file the same way (``lamexec -s``).  kenyad then turns the tag into
a file name (``rforget``: FLQFORGET) and reads, then unlinks, that file.

``FLQLOAD``   a first request without a body opens an entry for (tag,
              src_node, src_event) with ``flq_ldlength`` bytes to come and
              is answered at once (``flreply {0}``, NREEL); then the data,
              in packets of at most MAXNMSGLEN with the same ``nh_data``,
              appended to ``<session>/lam-flatd<N>`` (mode 0700: a loaded
              program is executed from it), answered once all bytes are in.
``FLQGET``    the file name of the first entry with the tag, in a
              FLPATHLEN-byte body (``EBADTAG`` without a body if none);
``FLQFORGET`` the same, and the entry goes (the file is kenyad's to read
              and unlink).
``FLQCLEAN``  the first entry with the tag goes, its file unlinked
              (``EBADTAG`` if none): what a tool sends when a launch failed.

As LAM: at most :data:`~lamd.jobs.wire.FLMAX` entries (``ENOFLDESCRIPTORS``
beyond), ``EBADTAG``, files created before the data comes, one file per
load, everything unlinked when flatd ends.  Beyond LAM:

* bounded: a load declares its length first; more than
  ``config["flatd_max_entry"]`` (:data:`MAX_ENTRY`) is refused ``EFBIG``, and
  more than ``config["flatd_max_total"]`` (:data:`MAX_TOTAL`) in all
  (entries plus forgotten files not yet unlinked) ``ENOSPC``; more data than
  declared ends the load with ``E2BIG`` (LAM appends it and never answers);
* a client that goes (its ``src_event = -pid`` process exits, watched
  through a pidfd) takes its entries with it, finished or not, files
  unlinked (LAM keeps them until flatd exits).  loadd's loads come from a
  reply event of loadd's, not a process: they belong to the tool their tag
  names (``rflatv`` and ``rploadgov`` tag with the tool's pid), when that is
  a live process.  Entries of no watchable process go after
  :data:`ORPHAN_TTL` seconds without a FLQGET/FORGET/CLEAN, and a forgotten
  file kenyad did not unlink after :data:`FORGOTTEN_TTL` (both checked at
  each request);
* a file name that does not fit the FLPATHLEN-byte reply is refused at the
  opening (``ENAMETOOLONG``) instead of being answered cut;
* a file left by an earlier flatd under the same name is replaced, not
  appended to; an unknown request (LAM: ``FLQDONE`` and others) is answered
  ``EBADREQUEST`` instead of never.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from .._dataclasses import dataclass, field

from ..kernel.constants import EBADREQUEST, EVFLATD
from ..kernel.kiproc import Event, IProc
from ..iprocs.nreq import NREEL
from .common import Owners, next_request, owner_of, reply
from .wire import (
    EBADTAG, ENOFLDESCRIPTORS, FLMAX, FLPATHLEN, FLQCLEAN, FLQFORGET, FLQGET, FLQLOAD,
    FlReply, FlReq, pack_flpath,
)

log = logging.getLogger("lamd.jobs.flatd")

#: Largest blob one load may declare (argv and environment, or a program).
MAX_ENTRY = 64 * 1024 * 1024
#: Bytes flatd may hold in files at once.
MAX_TOTAL = 256 * 1024 * 1024
#: Seconds an entry of no watchable client may wait for its FLQFORGET.
ORPHAN_TTL = 600.0
#: Seconds a forgotten file may wait for kenyad to unlink it.
FORGOTTEN_TTL = 60.0

_now = time.monotonic  # the clock of the TTLs (tests move it)


@dataclass(eq=False)
class FlEntry:
    """``struct flregion``: one tagged blob."""

    tag: int
    src_node: int
    src_event: int
    ldlength: int
    path: str
    owner: int | None = None
    written: int = 0  # fl_byteswritten
    status: int = 0  # fl_status: the first write error
    born: float = field(default_factory=lambda: _now())

    @property
    def complete(self) -> bool:
        return self.written >= self.ldlength


class Flatd:
    def __init__(self, k: IProc) -> None:
        self.k = k
        self.session = k.config.get("session")
        self.max_entry = int(k.config.get("flatd_max_entry") or MAX_ENTRY)
        self.max_total = int(k.config.get("flatd_max_total") or MAX_TOTAL)
        self.entries: list[FlEntry] = []  # in load order: the first match wins
        self.forgotten: list[tuple[float, str, int]] = []  # (when, path, size)
        self.owners = Owners(k)
        self.count = 0  # flcount: names are never reused

    # -- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        # kenyad in this process asks :meth:`forget` directly (see kenyad's flforget)
        colocated = self.k.config.get("colocated")
        if colocated is not None:
            colocated["flatd"] = self
        try:
            while True:
                got = await next_request(self.k, EVFLATD, self.owners.watches())
                if got is None:
                    continue
                if isinstance(got, Event):
                    pid = self.owners.gone(got)
                    if pid is not None:
                        self.client_gone(pid)
                    continue
                # rflat sends each packet on its own (see filed for NMORE)
                self.expire()
                await self.request(FlReq.from_data(got.data), got.body)
        finally:
            if colocated is not None and colocated.get("flatd") is self:
                del colocated["flatd"]
            self.close()

    def held(self) -> int:
        return (sum(e.ldlength for e in self.entries)
                + sum(size for _, _, size in self.forgotten))

    def remove(self, e: FlEntry, unlink: bool) -> None:
        self.entries.remove(e)
        if unlink:
            _unlink(e.path)
        if e.owner is not None and not any(x.owner == e.owner for x in self.entries):
            self.owners.forget(e.owner)

    def client_gone(self, pid: int) -> None:
        mine = [e for e in self.entries if e.owner == pid]
        for e in mine:
            self.remove(e, unlink=True)
        if mine:
            log.info("flatd: pid %d exited; its %d entr%s (tag%s %s) removed", pid, len(mine),
                     "y" if len(mine) == 1 else "ies", "" if len(mine) == 1 else "s",
                     ",".join(str(e.tag) for e in mine))

    def expire(self) -> None:
        now = _now()
        for e in [e for e in self.entries if e.owner is None and now - e.born > ORPHAN_TTL]:
            log.warning("flatd: tag %d (from event %d) not fetched in %g s: removed", e.tag,
                        e.src_event, ORPHAN_TTL)
            self.remove(e, unlink=True)
        while self.forgotten and now - self.forgotten[0][0] > FORGOTTEN_TTL:
            _unlink(self.forgotten.pop(0)[1])

    def close(self) -> None:
        """``flwipe``: every file flatd still knows of goes."""
        for e in self.entries:
            _unlink(e.path)
        self.entries.clear()
        for _, path, _size in self.forgotten:
            _unlink(path)
        self.forgotten.clear()
        self.owners.close()

    # -- requests -------------------------------------------------------------------------
    async def send(self, q: FlReq, code: int, body: bytes = b"") -> None:
        await reply(self.k, q.src_node, q.src_event, FlReply(code).data(), body, NREEL,
                    what=f"request {q.req}")

    async def request(self, q: FlReq, body: bytes) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("flatd: request %d tag %d length %d from node %d event %d, %d bytes",
                      q.req, q.tag, q.ldlength, q.src_node, q.src_event, len(body))
        if q.req == FLQLOAD:
            await self.flqload(q, body)
        elif q.req in (FLQGET, FLQFORGET):
            e = self.find(q.tag)
            if e is None:
                await self.send(q, EBADTAG)
                return
            await self.send(q, 0, pack_flpath(e.path))
            if q.req == FLQFORGET:
                self.forget_entry(e)
        elif q.req == FLQCLEAN:
            e = self.find(q.tag)
            if e is None:
                await self.send(q, EBADTAG)
            else:
                self.remove(e, unlink=True)
                await self.send(q, 0)
        else:
            log.warning("flatd: unknown request %d from event %d", q.req, q.src_event)
            await self.send(q, EBADREQUEST)

    def forget_entry(self, e: FlEntry) -> None:
        """FLQFORGET's effect: the entry goes, its file is the asker's to
        read and unlink (unlinked here after :data:`FORGOTTEN_TTL` if not)."""
        self.remove(e, unlink=False)
        self.forgotten.append((_now(), e.path, e.ldlength))

    def forget(self, tag: int) -> str | int:
        """FLQFORGET asked by kenyad in this process (a function call, as
        LAM's one-process lamd makes it, not two trips through the kernel):
        the path of the file holding *tag*, or EBADTAG."""
        self.expire()
        e = self.find(tag)
        if e is None:
            return EBADTAG
        self.forget_entry(e)
        return e.path

    def find(self, tag: int) -> FlEntry | None:
        return next((e for e in self.entries if e.tag == tag), None)

    async def flqload(self, q: FlReq, body: bytes) -> None:
        e = next((e for e in self.entries if (e.tag, e.src_node, e.src_event)
                  == (q.tag, q.src_node, q.src_event) and not e.complete), None)
        if e is None:
            await self.open(q)
            return
        if e.written + len(body) > e.ldlength:
            log.warning("flatd: tag %d from event %d: %d bytes more than the %d declared; "
                        "load refused", q.tag, q.src_event, e.written + len(body) - e.ldlength,
                        e.ldlength)
            self.remove(e, unlink=True)
            await self.send(q, errno.E2BIG)
            return
        if not e.status and body:
            try:
                fd = os.open(e.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
                try:
                    if os.write(fd, body) != len(body):
                        raise OSError(errno.ENOSPC, "short write")
                finally:
                    os.close(fd)
            except OSError as err:
                e.status = err.errno or errno.EIO
                log.warning("flatd: writing %s: %s", e.path, err.strerror)
                _unlink(e.path)
        e.written += len(body)
        if e.complete:
            if e.status:
                self.remove(e, unlink=True)
            await self.send(q, e.status)

    async def open(self, q: FlReq) -> None:
        """A new load: make its (empty) file now, answer at once."""
        code = 0
        if len(self.entries) >= FLMAX:
            code = ENOFLDESCRIPTORS
        elif q.ldlength < 0 or q.ldlength > self.max_entry:
            code = errno.EFBIG
        elif self.held() + q.ldlength > self.max_total:
            code = errno.ENOSPC
        elif not self.session:
            code = errno.ENOENT
        if code:
            log.warning("flatd: load of %d bytes (tag %d, event %d) refused: %s (%d entries, "
                        "%d bytes held)", q.ldlength, q.tag, q.src_event, _why(code),
                        len(self.entries), self.held())
            await self.send(q, code)
            return
        path = os.path.join(self.session, f"lam-flatd{self.count}")
        self.count += 1
        if len(path.encode("utf-8", "surrogateescape")) >= FLPATHLEN:
            log.warning("flatd: %s is longer than the %d bytes of a flatd reply: load "
                        "refused (use a shorter session directory)", path, FLPATHLEN - 1)
            await self.send(q, errno.ENAMETOOLONG)
            return
        try:
            _create(path)
        except OSError as err:
            log.warning("flatd: cannot create %s: %s", path, err.strerror)
            await self.send(q, err.errno or errno.EIO)
            return
        e = FlEntry(q.tag, q.src_node, q.src_event, q.ldlength, path)
        # the client, or for loadd's loads (a reply event of loadd's own) the
        # tool the tag names: rflatv and rploadgov tag with the tool's pid
        for owner in (owner_of(q.src_node, q.src_event, self.k),
                      owner_of(q.src_node, -q.tag, self.k) if q.tag > 1 else None):
            if owner is not None and self.owners.track(owner):
                e.owner = owner
                break
        self.entries.append(e)
        await self.send(q, 0)


def _create(path: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o700)
    except FileExistsError:
        os.unlink(path)  # an earlier flatd's: never append to it
        fd = os.open(path, flags, 0o700)
    os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _why(code: int) -> str:
    if code == ENOFLDESCRIPTORS:
        return f"{FLMAX} entries already"
    return os.strerror(code)


async def flatd(k: IProc) -> None:
    """flatd: tagged blobs in the session directory (see :mod:`lamd.jobs.flatd`)."""
    await Flatd(k).run()


__all__ = ["flatd", "Flatd", "FlEntry", "MAX_ENTRY", "MAX_TOTAL", "ORPHAN_TTL",
           "FORGOTTEN_TTL"]
