"""Surviving a crash: every client connection and the crash state in
systemd's file descriptor store (issue 12; ``docs/restart.md``).

LAM has no counterpart. Under ``lamd@USER.service`` (``FileDescriptorStoreMax=``)
:class:`CrashKeeper` stores, through sd_notify (``FDSTORE=1``):

* one memfd (``FDNAME=state``), mapped shared in the daemon, holding one
  :mod:`.crashstate` record per stored connection, rewritten by plain
  memory stores as the connection's process attaches, blocks, is answered
  or changes priority: no system call per request;
* each client connection as it is accepted (``FDNAME=c<slot>``), taken out
  (``FDSTOREREMOVE=1``) when it goes. PID 1 also drops one whose peer hangs up.

A daemon that ``Restart=on-failure`` starts after a ``SIGKILL`` or a
watchdog abort gets all of them back (``LISTEN_FDNAMES``) and
:func:`recover` rebuilds what the records say: each attached process with
its index, priority, LAM signal bits and flags, in attach order; each
connection's peer checked again (``SO_PEERCRED`` and a new pidfd); the
requests the blocked clients wait on, to be made again in the order they
blocked (:attr:`Recovered.redo`), so a blocked receiver carries on as if
nothing happened. A connection whose record says a reply or a body was on
its way (:data:`~.crashstate.REQ_REPLYING`) is closed: where the client is
in its stream cannot be known, and liblam reports ``ENOKERNEL`` rather than
hang. What the kernel's internal processes held (bufferd's packets) is lost.

A crash state that is refused (:class:`~.crashstate.CrashStateError`) is
logged in one line; every stored descriptor is closed and taken out of the
store, and the daemon starts clean.
"""

from __future__ import annotations

import _socket
import errno
import heapq
import mmap
import os
import select
import struct
from .._dataclasses import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Final, Iterable

    from ..service.notify import FdStore  # what CrashKeeper needs of sd_notify

from .. import lazylog
from ..kernel import kactions as K
from ..kernel.constants import KMSG2, KQRECV, KQSEND, KQSR, KSREADY, KSRECV, KSSEND
from ..kernel.kouter import Kernel
from ..kernel.wire import KREQ_SIZE, KReq
from . import crashstate as cs
from .transfer import BodyMove, Connection

log = lazylog.getLogger("lamd.kernelio")

STATE_NAME: Final = "state"
_UCRED = struct.Struct("3i")
_HUNG_UP = select.POLLHUP | select.POLLRDHUP | select.POLLERR
#: block order of a request read but not yet blocked: made again last
_NOT_BLOCKED: Final = (1 << 63) - 1
#: body bytes moved: being read, how many not yet known
_UNKNOWN: Final = (1 << 64) - 1
_Reply, _Transfer = K.Reply, K.Transfer


def conn_name(slot: int) -> str:
    return f"c{slot}"


def is_stored_name(name: str) -> bool:
    """True for the names this module and :mod:`.iprocstate` store (the rest
    is the socket unit's)."""
    return name == STATE_NAME or conn_slot(name) >= 0 or name.startswith("iproc-")


def conn_slot(name: str) -> int:
    """The slot of a connection's name in the store (:func:`conn_name`), or -1."""
    digits = name[1:]
    # ASCII digits, as conn_name writes them (a check without importing re)
    return int(digits) if name[:1] == "c" and digits.isdecimal() and digits.isascii() else -1


class CrashKeeper:
    """The crash state of one daemon, and its connections in the store."""

    def __init__(self, kernel: Kernel, store: FdStore, memfd: int, mm: mmap.mmap,
                 nslots: int, used: Iterable[int] = ()) -> None:
        self.kernel = kernel
        self.store = store
        self.memfd = memfd
        self.mm = mm
        self.view = memoryview(mm)  # released before the mapping is closed
        self.nslots = nslots
        used = set(used)
        self._next = max(used) + 1 if used else 0
        self._free = [s for s in range(self._next) if s not in used]
        heapq.heapify(self._free)
        self.due: set[Connection] = set()  # to bring up to date at the end of the turn
        #: senders whose body is not yet all written to its receiver: a crash
        #: now loses the rest, so both stay REQ_REPLYING until it is
        self.feeding: dict[Connection, BodyMove] = {}
        #: what each record holds already: its process part, and the code of
        #: the request in its ``struct kreq`` (None: not the one it is in)
        self._ident: dict[Connection, tuple] = {}
        self._last: dict[Connection, int | None] = {}
        self._full_warned = False

    @classmethod
    def create(cls, kernel: Kernel, store: FdStore, *, uid: int, session: str,
               nslots: int) -> "CrashKeeper | None":
        """A fresh crash state stored as ``state``; None (one log line) if it cannot be."""
        try:
            memfd = os.memfd_create("lamd-crash-state", os.MFD_CLOEXEC)
        except OSError as e:
            log.error("crash state: memfd_create: %s; a crash will lose the clients", e.strerror)
            return None
        try:
            size = cs.size_for(nslots)
            os.ftruncate(memfd, size)
            mm = mmap.mmap(memfd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            mm[:cs.HEADER_SIZE] = cs.header(nslots, uid=uid, session=session)
        except OSError as e:
            os.close(memfd)
            log.error("crash state: %s; a crash will lose the clients", e.strerror)
            return None
        store.fdstore_remove(STATE_NAME)  # one of a predecessor that was refused
        if not store.fdstore(STATE_NAME, memfd):
            mm.close()
            os.close(memfd)
            return None
        return cls(kernel, store, memfd, mm, nslots)

    @classmethod
    def adopt(cls, kernel: Kernel, store: FdStore, memfd: int, conns: Iterable[Connection],
              slots: dict[str, object]) -> "CrashKeeper":
        """The crash state a predecessor of this very process (a re-exec) kept:
        each of *conns* gets its slot back from *slots* (descriptor, as a
        string, to slot); every one of them is to be brought up to date."""
        size = os.fstat(memfd).st_size
        mm = mmap.mmap(memfd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        nslots = (size - cs.HEADER_SIZE) // cs.RECORD_SIZE
        kept = []
        for c in conns:
            slot = slots.get(str(c.fd))
            c.slot = slot if type(slot) is int and 0 <= slot < nslots else -1
            if c.slot >= 0:
                kept.append(c)
        keeper = cls(kernel, store, memfd, mm, nslots, [c.slot for c in kept])
        keeper.due.update(kept)
        return keeper

    # -- connections come and go ------------------------------------------
    def add(self, c: Connection) -> None:
        """Store a new connection (its record first, then the descriptor)."""
        if self._free:
            slot = heapq.heappop(self._free)
        elif self._next < self.nslots:
            slot = self._next
            self._next += 1
        else:
            if not self._full_warned:
                self._full_warned = True
                log.warning("crash state full (%d connections): newer clients would not "
                            "survive a crash", self.nslots)
            return
        c.slot = slot
        cs.write_record(self.mm, cs.Record(slot, c.pid, c.uid))
        if not self.store.fdstore(conn_name(slot), c.fd):
            cs.clear_record(self.mm, slot)
            heapq.heappush(self._free, slot)
            c.slot = -1

    def drop(self, c: Connection) -> None:
        """*c* is closed: its record and its stored descriptor go."""
        slot = c.slot
        if slot < 0:
            return
        c.slot = -1
        self.due.discard(c)
        m = self.feeding.pop(c, None)
        if m is not None:
            # a sender gone with its body not all written to its receiver:
            # the receiver's record must not read as delivered (its partner's
            # record gone, or another connection's in its slot) if a crash
            # comes before the rest is written
            dst = m.dst
            if dst is not None and dst.slot >= 0 and not dst.closed:
                cs.write_partner(self.mm, dst.slot, -1)
        self._ident.pop(c, None)
        self._last.pop(c, None)
        cs.clear_record(self.mm, slot)
        self.store.fdstore_remove(conn_name(slot))
        heapq.heappush(self._free, slot)

    def close(self) -> None:
        """A clean stop: the state is no longer anyone's."""
        self.store.fdstore_remove(STATE_NAME)
        self.view.release()
        self.mm.close()
        os.close(self.memfd)

    # -- requests and replies -----------------------------------------------
    def idle(self, c: Connection) -> bool:
        """True if *c*'s record says it owes and is owed nothing (so its next
        request may be received straight into the record: :meth:`arm`)."""
        if c.slot < 0 or c in self.due or c.move is not None or c.out or c.inbuf:
            return False
        p = self.kernel.proc_of(c)
        return p is None or p.state == KSREADY

    def arm(self, c: Connection) -> memoryview:
        """Where to receive *c*'s next request: its record's ``struct kreq``,
        so that a request is never only in this process's memory."""
        off = cs.arm_receive(self.mm, c.slot)
        self.due.add(c)
        return self.view[off:off + KREQ_SIZE]

    def pending(self, c: Connection, req: KReq, in_record: bool = False) -> None:
        """*c*'s request *req* was read (*in_record*: received into its record
        by :meth:`arm`): until it is answered, a successor makes it again."""
        if c.slot < 0:
            return
        self.due.add(c)
        if c in self.feeding:
            self._last[c] = None
            return  # its body is not all delivered: it stays REQ_REPLYING
        self._last[c] = req.req
        if not in_record:  # else REQ_RECEIVING with the request says as much
            cs.write_request(self.mm, c.slot, cs.REQ_PENDING, req.pack(), _NOT_BLOCKED)

    def answering(self, actions: list[Any]) -> None:
        """Before any of *actions* is carried out: mark every client answered
        in them (a reply, or a body that starts between two of them)."""
        for a in actions:
            t = type(a)
            if t is _Reply:
                self.replying(a.conn)
            elif t is _Transfer:
                self.partners(a.src, a.dst)

    def replying(self, c: Connection) -> None:
        """A reply (and maybe a body) is about to be written to *c*."""
        if c.slot < 0:
            return
        self.mm[cs.record_offset(c.slot) + cs.REQ_AT] = cs.REQ_REPLYING
        self.due.add(c)

    def settle(self) -> None:
        """End of a turn: every connection touched whose reply and bodies are
        all written gets the record of its process as the kernel now has it."""
        for c in list(self.due):
            if c.closed or c.slot < 0:
                self.due.discard(c)
            elif not c.out and c.move is None and not c.closing and c not in self.feeding:
                self.due.discard(c)
                self._settle(c)

    def settle_one(self, c: Connection) -> None:
        """*c* may have just become quiet (its reply and bodies all written):
        its record now, not at the end of the turn."""
        if (c in self.due and not c.out and c.move is None and not c.closing and not c.closed
                and c not in self.feeding):
            self.due.discard(c)
            self._settle(c)

    def partners(self, src: Connection, dst: Connection) -> None:
        """A body will go from *src* to *dst* (both being answered)."""
        if src.slot >= 0 and dst.slot >= 0 and not src.closed and not dst.closed:
            cs.write_partner(self.mm, src.slot, dst.slot)
            cs.write_partner(self.mm, dst.slot, src.slot)

    def moving(self, src: Connection, dst: Connection, m: "BodyMove") -> None:
        """A body starts from *src* to *dst* (before a byte of it is read):
        *src* stays REQ_REPLYING until *dst* has it all (:meth:`delivered`);
        both records say where the body is, for a successor to start it
        again if not a byte of it had moved (:func:`recover`)."""
        if src.slot < 0:
            return
        self.feeding[src] = m
        if dst.slot < 0:
            return
        code = self._last.get(src)
        code = -1 if code is None else code
        ready = 0 if dst.out else 1  # its reply and padding are all written
        moved = _UNKNOWN if src.inbuf else 0  # what it holds may be body already
        cs.write_move_of(self.mm, src.slot, cs.MOVE_SRC, m.remaining, m.skip, 1, code, moved)
        cs.write_move_of(self.mm, dst.slot, cs.MOVE_DST, m.remaining, m.skip, ready, code, 0)

    def reading(self, m: "BodyMove") -> None:
        """Body bytes are about to be read from *m*'s sender: until
        :meth:`consumed` says how many, nobody knows."""
        src = m.src
        if src.slot >= 0 and m.dst is not None:
            cs.write_moved(self.mm, src.slot, _UNKNOWN)

    def consumed(self, m: "BodyMove") -> None:
        """Body bytes were read from *m*'s sender."""
        src = m.src
        if src.slot >= 0 and m.dst is not None:
            cs.write_moved(self.mm, src.slot, m.total - m.remaining - m.skip)

    def sent(self, m: "BodyMove", dst: Connection) -> None:
        """Body bytes were written to *m*'s receiver *dst*."""
        if dst.slot >= 0:
            cs.write_moved(self.mm, dst.slot, m.sent)

    def delivered(self, m: BodyMove) -> None:
        """The body *m* is all written to its receiver (or its receiver went)."""
        src = m.src
        if self.feeding.get(src) is m:
            del self.feeding[src]
            self.settle_one(src)

    def _settle(self, c: Connection) -> None:
        p = self.kernel.proc_of(c)
        self._write_ident(c, p)
        slot = c.slot
        if c.inbuf:
            # its next request came with the end of its body and waits its
            # turn in this process's memory: a successor must make it
            if len(c.inbuf) == KREQ_SIZE:
                cs.write_request(self.mm, slot, cs.REQ_PENDING, bytes(c.inbuf), _NOT_BLOCKED)
                self._last[c] = KReq.unpack(c.inbuf).req
            else:  # part of one, or more than a synchronous client sends
                cs.write_state(self.mm, slot, cs.REQ_REPLYING)
            return
        if p is None or p.state not in (KSSEND, KSRECV):
            cs.write_state(self.mm, slot, cs.REQ_NONE)
            return
        if p.state == KSRECV:
            code = KQRECV
        elif p.flags & KMSG2:
            code = KQSR
        else:
            code = KQSEND
        if self._last.get(c) == code:  # the record holds the very request
            cs.write_state(self.mm, slot, cs.REQ_PENDING, p.bkey[1])
            return
        if code == KQSR:
            req = KReq(req=KQSR, index=p.index, pid=p.pid, fyi=p.fyi, msg=p.msg, msg2=p.msg2)
        else:  # a send-receive now in its receive half, or the like
            req = KReq(req=code, index=p.index, pid=p.pid, fyi=p.fyi, msg=p.msg)
        cs.write_request(self.mm, slot, cs.REQ_PENDING, req.pack(), p.bkey[1])
        self._last[c] = code

    def _write_ident(self, c: Connection, p) -> None:
        if p is None:
            ident = (0, c.pid, c.uid, -1, 0, 0, 0, 0, c.starttime or 0)
        else:
            ident = (1, c.pid, c.uid, p.index, p.priority, p.signal, p.flags & ~KMSG2, p.seq,
                     c.starttime or 0)
        if self._ident.get(c) != ident:
            cs.write_ident(self.mm, c.slot, ident)
            self._ident[c] = ident


# ---------------------------------------------------------------------------
# after a crash
# ---------------------------------------------------------------------------
@dataclass
class Recovered:
    """What a daemon restarted after a crash took back from the store."""

    keeper: CrashKeeper
    conns: dict[int, Connection] = field(default_factory=dict)  # by descriptor
    redo: list[tuple[Connection, KReq]] = field(default_factory=list)  # in block order
    #: bodies to move again from the start: sender, receiver, length, skip
    resume: list[tuple[Connection, Connection, int, int]] = field(default_factory=list)
    dropped: int = 0


def _discard(store: FdStore, name: str, fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    store.fdstore_remove(name)


def discard_all(store: FdStore, stored: dict[str, int]) -> None:
    """Close every stored descriptor and take it out of the store."""
    for name, fd in stored.items():
        _discard(store, name, fd)


def _peer(fd: int) -> tuple[_socket.socket, int, int, int]:
    """The stored connection *fd* as a socket, its peer's pid and uid, and a
    pidfd pinning that peer; raises OSError if it cannot be had."""
    sock = _socket.socket(fileno=fd)
    try:
        if sock.family != _socket.AF_UNIX or sock.type != _socket.SOCK_STREAM:
            raise OSError(errno.ENOTSOCK, "not a stream socket")
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED,
                                                       _UCRED.size))
        pidfd = os.pidfd_open(pid)
        # the pid is the peer's while the peer holds its end (as in admission)
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLRDHUP)
        for _fd, ev in p.poll(0):
            if ev & _HUNG_UP:
                os.close(pidfd)
                raise OSError(errno.ECONNRESET, "the client has gone")
    except OSError:
        sock.detach()
        raise
    return sock, pid, uid, pidfd


def delivered(r: cs.Record, records: dict[int, cs.Record]) -> bool:
    """True if *r* (REQ_REPLYING) received a body that was all written to it.

    The sender's record is rewritten first (:meth:`CrashKeeper.delivered`),
    the receiver's next: a crash between the two leaves the receiver saying
    REQ_REPLYING with a partner that is no longer REQ_REPLYING with it."""
    if r.partner < 0:
        return False
    s = records.get(r.partner)
    if s is None or s.req == cs.REQ_REPLYING and s.partner == r.slot:
        return False
    return True


def resumable(records: dict[int, cs.Record], found: dict) -> dict[int, int]:
    """Bodies in flight at the crash that can go on (sender slot to receiver
    slot): every byte read from the sender had been written to the receiver
    (nothing was only in the dead daemon's buffer), the receiver had its
    whole reply, and the rest of the body is still in the sender's socket
    (or yet to be written). Only a plain send (KQSEND) without bytes to
    skip: a send-receive's receive half is not in the record.

    The receiver's reply is usually held until the body's first bytes and
    leaves with them (:meth:`ConnIO._flush`), so its record says the reply
    was not all written when the body started (``ready`` 0); body bytes
    written to it say the reply (and padding, ahead of them) was."""
    out: dict[int, int] = {}
    for slot, r in records.items():
        if r.req != cs.REQ_REPLYING or r.partner < 0 or slot not in found:
            continue
        d = records.get(r.partner)
        if (d is None or d.req != cs.REQ_REPLYING or d.partner != slot
                or r.partner not in found):
            continue
        ms, md = cs.read_move(r), cs.read_move(d)
        if (ms.role == cs.MOVE_SRC and md.role == cs.MOVE_DST and ms.moved == md.moved
                and (md.ready == 1 or md.moved > 0) and ms.code == KQSEND and ms.skip == md.skip == 0
                and ms.length == md.length and 0 <= ms.moved < ms.length):
            # (all of it read: what the sender wrote after it, its next
            # request, may have been read too and is lost: not resumable)
            out[slot] = r.partner
    return out


def _give_up(out: Recovered, mm: mmap.mmap, store: FdStore, c: Connection) -> None:
    """Close *c*, taken back a moment ago, and forget it."""
    del out.conns[c.fd]
    cs.clear_record(mm, c.slot)
    store.fdstore_remove(conn_name(c.slot))
    c.sock.close()
    pidfd = c.pidfd
    if pidfd is not None:
        os.close(pidfd)
    out.dropped += 1


def recover(stored: dict[str, int], kernel: Kernel, store: FdStore, *, uid: int,
            session: str) -> Recovered | None:
    """Take back what a crashed predecessor stored (*stored*: name to
    descriptor, every name :func:`is_stored_name`), into *kernel* (booted).

    None (one log line, every stored descriptor closed and removed) when
    the crash state is refused or missing; the caller starts clean.
    """
    stored = dict(stored)
    memfd = stored.pop(STATE_NAME, None)
    try:
        if memfd is None:
            raise cs.CrashStateError(f"{len(stored)} connections stored without a crash state")
        size = os.fstat(memfd).st_size
        if size < cs.HEADER_SIZE:
            raise cs.CrashStateError(f"crash state truncated: {size} bytes, no header")
        mm = mmap.mmap(memfd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            records = cs.decode(mm[:], uid=uid, session=session)  # a copy: no view held
        except cs.CrashStateError:
            mm.close()
            raise
    except (cs.CrashStateError, OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else str(e)
        log.error("after a crash: %s: refused, starting clean (%d stored connections closed)",
                  why, len(stored))
        if memfd is not None:
            _discard(store, STATE_NAME, memfd)
        discard_all(store, stored)
        return None
    os.set_inheritable(memfd, False)
    have_slots = (size - cs.HEADER_SIZE) // cs.RECORD_SIZE
    keeper = CrashKeeper(kernel, store, memfd, mm, have_slots)
    out = Recovered(keeper)
    found: dict[int, tuple[int, str]] = {}
    for name, fd in stored.items():
        slot = conn_slot(name)
        if slot in records and slot not in found:
            found[slot] = (fd, name)
        elif slot in found:  # a second one by that name: the first stays stored
            os.close(fd)
            out.dropped += 1
        else:
            _discard(store, name, fd)
            out.dropped += 1
    for slot in set(records) - set(found):
        cs.clear_record(mm, slot)  # its client went while we were down
    resume = resumable(records, found)
    attached: list[tuple[cs.Record, Connection]] = []
    for slot, (fd, name) in found.items():
        r = records[slot]
        why = ""
        try:
            sock, pid, p_uid, pidfd = _peer(fd)
        except OSError as e:
            why = e.strerror or str(e)
        else:
            if (pid, p_uid) != (r.pid, r.uid):
                why = f"its peer is pid {pid} uid {p_uid}"
                sock.detach()
                os.close(pidfd)
        if not why and r.req == cs.REQ_REPLYING and delivered(r, records):
            # the receiver of a body its sender saw all written (the sender's
            # record changed first): only its own record was not rewritten
            r.req = cs.REQ_NONE
        if not why and r.req == cs.REQ_REPLYING and (slot in resume or slot in resume.values()):
            r.req = cs.REQ_NONE  # the body starts again (Recovered.resume)
        if not why and r.req == cs.REQ_REPLYING:
            why = "a reply or a message body was on its way at the crash"
            p = records.get(r.partner)
            log.debug("after a crash: pid %d (slot %d) was replied to, partner slot %d: %s",
                      r.pid, slot, r.partner, "none" if p is None else
                      f"pid {p.pid} req {p.req} partner {p.partner}")
            sock.detach()
            os.close(pidfd)
        if why:
            log.warning("after a crash: closing the connection of pid %d: %s", r.pid, why,
                        extra={"LAM_PID": r.pid})
            cs.clear_record(mm, slot)
            _discard(store, name, fd)
            out.dropped += 1
            continue
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        c = Connection(sock, pid, p_uid)
        c.pidfd = pidfd
        c.slot = slot
        c.starttime = r.starttime or None
        out.conns[c.fd] = c
        if r.attached:
            attached.append((r, c))
        else:
            kernel.connect(c, pid, p_uid)
    attached.sort(key=lambda rc: rc[0].seq)
    from ..kernel import ksnapshot  # after a crash only: off the first reply's path
    for r, c in attached:
        fyi = r.request.fyi
        if not ksnapshot.adopt_process(kernel, c, c.pid, c.uid, index=r.index,
                                       priority=r.priority, signal=r.signal, flags=r.flags,
                                       fyi=fyi):
            log.warning("after a crash: closing the connection of pid %d: its index %d is "
                        "taken", c.pid, r.index, extra={"LAM_PID": c.pid})
            _give_up(out, mm, store, c)
    by_slot = {c.slot: c for c in out.conns.values()}
    for s_slot, d_slot in resume.items():
        src, dst = by_slot.get(s_slot), by_slot.get(d_slot)
        if src is not None and dst is not None:
            mv = cs.read_move(records[s_slot])
            out.resume.append((src, dst, mv.length - mv.moved, 0))
        else:  # one end is gone: the other cannot be served either
            for end in (src, dst):
                if end is not None:
                    log.warning("after a crash: closing the connection of pid %d: the other "
                                "end of its message is gone", end.pid,
                                extra={"LAM_PID": end.pid})
                    _give_up(out, mm, store, end)
    keeper._next = max((c.slot for c in out.conns.values()), default=-1) + 1
    used = {c.slot for c in out.conns.values()}
    keeper._free = [s for s in range(keeper._next) if s not in used]
    heapq.heapify(keeper._free)
    pending = [(records[c.slot].bseq, records[c.slot].seq, c) for c in out.conns.values()
               if records[c.slot].req == cs.REQ_PENDING]
    pending.sort(key=lambda t: (t[0], t[1]))
    out.redo = [(c, records[c.slot].request) for _b, _s, c in pending]
    return out


__all__ = ["STATE_NAME", "CrashKeeper", "Recovered", "conn_name", "is_stored_name",
           "discard_all", "recover"]
