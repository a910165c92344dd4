"""The LAM kernel as a sans-IO state machine (LAM's ``kouter.c`` + ``kinner.c``).

The :class:`Kernel` owns the process table, the ready and blocked lists and
the rendezvous rules. It never touches a socket: the I/O layer
(:mod:`lamd.kernelio`) feeds it connections and decoded ``struct kreq``
requests, and carries out the :mod:`actions <lamd.kernel>` it returns:
replies to write, message bodies to move between connections, signals to
send, connections to close, the kill file to rewrite.

Names follow the C source: ``kqsync`` (send/receive/send-receive
rendezvous), ``kqstate``/``ksnap``, ``kqdoom``, ``kqattach``, ``kqdetach``,
``kqsurrender``, ``kqdump``, ``knuke``, ``kpreempt``, ``transfer``, ``kkillall``.
What differs from C on purpose:

* identity: a connection's pid is the one the I/O layer read from
  SO_PEERCRED, never the ``kq_pid`` the client writes; a request naming
  another connection's process index is refused;
* no fixed table: ``max_procs`` is a setting, indexes are reused lowest first;
* partners are found through an index keyed by (state, event), not by
  walking the blocked list; the order LAM defines (priority, then arrival)
  is kept exactly;
* a KPROBE receive that meets an already blocked sender answers the probe
  without consuming the message (the C kernel would start a transfer that
  the probing client never reads).
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .constants import (
    EBADREQUEST, EMSGLEN, ENOKDESCRIPTORS, ENOTATTACHED, ENOTPROCESS, ESERVICE,
    KIPROC, KMSG2, KNFYI, KNMSG, KPROBE, KQATTACH, KQDETACH, KQDOOM,
    KQDUMP, KQRECV, KQSEND, KQSR, KQSTATE, KQSURRENDER, KSFREE, KSREADY,
    KSRECV, KSSEND, KSURRENDER, KSYNCSQL, KTRACE, KTRY, LAM_SIGUSR, PRLAMHALT,
)
from .iproc import (
    WAIT_HALT, WAIT_READABLE, WAIT_TIMEOUT, IProc, KBoot, KCall, Received,
)
from .kactions import (  # noqa: F401 - re-exported: the kernel's vocabulary
    Action, CollectBody, Close, Conn, Halt, Reply, SendBody, Signal, Transfer,
    WatchReadable, WatchTimeout,
)
from .kinner import (  # noqa: F401 - re-exported
    BlockedList, ksync_cmp, ksync_event, ksync_event_sql, ksync_type, ksync_type_sql,
)
from .wire import NMSG_SIZE, KMsg, KReply, KReq, NMsg

log = logging.getLogger("lamd.kernel")

#: Largest message body a client may announce (k_length is a C int4).
MAX_MSG_LEN = 0x7FFFFFFF
#: Pids given to internal processes (LAM: 100000 + boot table row).
IPROC_PID_BASE = 100000
_REQUEST_NAMES = {KQSEND: "SEND", KQRECV: "RECV", KQSTATE: "STATE", KQDOOM: "DOOM",
                  KQSR: "SR", KQATTACH: "ATTACH", KQSURRENDER: "SURRENDER",
                  KQDETACH: "DETACH", KQDUMP: "DUMP"}
#: Internal-process steps run before the kernel returns to the I/O layer.
IPROC_TURN_BUDGET = 10000


# --- the process table --------------------------------------------------------


@dataclass(slots=True, eq=False)
class KProc:
    """``struct kproc``: one kernel process descriptor."""

    index: int
    pid: int
    priority: int
    conn: Conn | None = None  # None for internal processes
    state: int = KSREADY
    signal: int = 0
    flags: int = 0
    fyi: tuple[int, ...] = (0,) * KNFYI
    msg: KMsg = field(default_factory=KMsg)
    msg2: KMsg = field(default_factory=KMsg)
    blktime: float = 0.0
    seq: int = 0  # arrival order within its priority (the lists' tie-break)
    bkey: tuple[int, int] = (0, 0)  # position in the blocked list
    ident: Any = None  # what the I/O layer records of the peer (its start time)
    # internal processes only
    iproc: IProc | None = None
    coro: Any = None
    body: bytes = b""  # outgoing body of a blocked internal sender
    nmsg: NMsg | None = None
    call: int | str = -1  # the request (or I/O wait) an internal process is waiting on

    @property
    def internal(self) -> bool:
        return bool(self.flags & KIPROC)

    def __repr__(self) -> str:  # short, for logs
        return f"<KProc {self.index} pid={self.pid} pri={self.priority} st={self.state}>"


@dataclass(slots=True)
class KernelStats:
    """Counters kept for status lines and benchmarks."""

    attaches: int = 0
    messages: int = 0
    bytes: int = 0
    requests: int = 0
    refused: int = 0


class Kernel:
    """LAM's kernel: process table, ready/blocked lists and rendezvous.

    Entry points (each returns the list of actions to carry out, in order):
    :meth:`connect`, :meth:`request`, :meth:`disconnect`,
    :meth:`body_arrived`, :meth:`body_failed`, :meth:`wake`, :meth:`boot`.
    """

    def __init__(self, *, max_procs: int = 65536, max_msg_len: int = MAX_MSG_LEN,
                 clock: Callable[[], float] = time.time,
                 kernel_pid: int = 0) -> None:
        self.max_procs = max_procs
        self.max_msg_len = max_msg_len
        self.clock = clock
        self.kernel_pid = kernel_pid
        self.stats = KernelStats()
        #: log every request (``--debug``); checked once per request, not per field
        self.debug = log.isEnabledFor(logging.DEBUG)
        self.procs: dict[int, KProc] = {}  # index -> process (the table)
        self._free_indexes: list[int] = []  # heap of reusable indexes
        self._next_index = 0
        self._by_pid: dict[int, list[KProc]] = {}
        self._by_conn: dict[Conn, KProc] = {}
        self._peers: dict[Conn, tuple[int, int]] = {}  # conn -> (pid, uid) from SO_PEERCRED
        self._seq = itertools.count()
        self.pblock = BlockedList()  # LAM's blocked list, indexed by event
        self._out: list[Action] = []
        self._runq: deque[tuple[KProc, Any]] = deque()
        self._collect_seq = itertools.count(1)
        self._collects: dict[int, tuple[KProc, KProc, KMsg]] = {}
        #: the kill file must be rewritten (a client left, a priority changed)
        self.killfile_dirty = True
        #: clients attached since the kill file was last written: (pid, ident)
        self.killfile_new: list[tuple[int, Any]] = []
        #: pids of listed clients that left since the kill file was last written
        self.killfile_removed: list[int] = []

    # ------------------------------------------------------------------
    # entry points
    # ------------------------------------------------------------------
    def connect(self, conn: Conn, pid: int, uid: int) -> None:
        """A client connected; *pid*/*uid* come from SO_PEERCRED."""
        self._peers[conn] = (pid, uid)

    def request(self, conn: Conn, req: KReq) -> list[Action]:
        """One decoded ``struct kreq`` arrived on *conn* (LAM's main loop)."""
        self.stats.requests += 1
        code = req.req
        pclient = self._by_conn.get(conn)
        if self.debug:
            self._log_request(conn, req)
        if code == KQDETACH:
            self._kqdetach(conn, pclient, req)
        elif code == KQATTACH and req.index == -1:
            self._kqattach_new(conn, pclient, req)
        elif code == KQDUMP:
            self._kqdump(conn)
        elif code not in (KQSEND, KQRECV, KQSTATE, KQDOOM, KQSR, KQATTACH, KQSURRENDER):
            self._refuse(conn, pclient, EBADREQUEST, f"unknown request code {code}")
        elif pclient is None:
            self._refuse(conn, None, ENOTATTACHED, f"request {code} before attach")
        elif req.index != pclient.index:
            self._refuse(conn, pclient, EBADREQUEST,
                         f"request {code} names process index {req.index}, "
                         f"not its own {pclient.index}")
        elif pclient.state != KSREADY:
            # a client is synchronous: one that is blocked cannot ask anything else
            self._refuse(conn, pclient, EBADREQUEST,
                         f"request {code} while still blocked in an earlier one")
        elif code == KQATTACH:
            self._kqattach_again(pclient, req)
        elif code == KQSURRENDER:
            self._kqsurrender(pclient)
        elif code == KQSTATE:
            self._kqstate(pclient, req)
        elif code == KQDOOM:
            self._kqdoom(pclient, req)
        else:
            bad = self._bad_lengths(req)
            if bad:
                self._refuse(conn, pclient, EMSGLEN, bad)
            else:
                self._kqsync(pclient, req)
        self._run_iprocs()
        return self._take()

    def _log_request(self, conn: Conn, req: KReq) -> None:
        """One structured debug record per request (journal fields LAM_*)."""
        pid, uid = self._peers.get(conn, (0, 0))
        m = req.msg
        name = _REQUEST_NAMES.get(req.req, str(req.req))
        log.debug("pid %d: %s index=%d event=%#x type=%#x length=%d flags=%#x", pid, name,
                  req.index, m.event & 0xFFFFFFFF, m.type & 0xFFFFFFFF, m.length, m.flags,
                  extra={"LAM_PID": pid, "LAM_UID": uid, "LAM_REQUEST": name,
                         "LAM_EVENT": m.event, "LAM_TYPE": m.type, "LAM_LENGTH": m.length})

    def disconnect(self, conn: Conn) -> list[Action]:
        """*conn* is gone (EOF, error or closed by us): forget its process."""
        self._peers.pop(conn, None)
        p = self._by_conn.get(conn)
        if p is not None:
            self._knuke(p)
        # bodies this connection owed to internal processes will never come
        for token, (pto, pfrom, _) in list(self._collects.items()):
            if pfrom.conn == conn:
                self._collect_lost(token)
        self._run_iprocs()
        return self._take()

    def body_arrived(self, token: int, data: bytes) -> list[Action]:
        """The body a :class:`CollectBody` asked for has been read."""
        entry = self._collects.pop(token, None)
        if entry is not None:
            pto, pfrom, smsg = entry
            hdr = None
            if smsg.flags & KNMSG:
                hdr = NMsg.unpack(data)
                data = data[NMSG_SIZE:]
            elif pto.msg.flags & KNMSG:
                hdr = NMsg()
            rep = KReply(type=smsg.type, length=len(data), blktime=pto.blktime)
            self.stats.messages += 1
            self.stats.bytes += len(data)
            self._resume(pto, Received(rep, bytes(data), hdr))
        self._run_iprocs()
        return self._take()

    def body_failed(self, token: int) -> list[Action]:
        """The sender of a :class:`CollectBody` vanished before finishing."""
        self._collect_lost(token)
        self._run_iprocs()
        return self._take()

    def wake(self, token: Any) -> list[Action]:
        """A :class:`WatchTimeout` or :class:`WatchReadable` fired."""
        p = self.procs.get(token) if isinstance(token, int) else None
        if p is not None and p.internal and p.call in (WAIT_TIMEOUT, WAIT_READABLE):
            p.call = -1  # only the wait it made can wake it, and only once
            self._resume(p, None)
        # token None: only carry on with internal processes left runnable
        self._run_iprocs()
        return self._take()

    def boot(self, table: Iterable[KBoot], config: dict[str, Any] | None = None) -> list[Action]:
        """Boot internal processes (LAM's ``kboot``): pids 100000 + row."""
        for row, kb in enumerate(table):
            p = self._alloc(IPROC_PID_BASE + row, kb.priority, None)
            p.flags = KIPROC
            h = IProc(kb.name, self, p, dict(config or {}))
            p.iproc = h
            p.coro = kb.main(h)
            self._runq.append((p, None))
        self._run_iprocs()
        return self._take()

    # ------------------------------------------------------------------
    # queries
    # ------------------------------------------------------------------
    def proc_of(self, conn: Conn) -> KProc | None:
        return self._by_conn.get(conn)

    def kpfind(self, pid: int) -> KProc | None:
        """``kpfind``: the process with *pid* (the latest attached)."""
        lst = self._by_pid.get(pid)
        return lst[-1] if lst else None

    def killfile_entries(self) -> list[tuple[int, Any]]:
        """(pid, ident) of every attached external process the kill file lists.

        Internal processes and PRLAMHALT clients are left out (``kkill.c``).
        """
        return [(p.pid, p.ident) for p in self.procs.values()
                if not p.internal and p.priority != PRLAMHALT]

    @property
    def nclients(self) -> int:
        """How many external processes are attached (one per connection)."""
        return len(self._by_conn)

    def clients(self) -> list[KProc]:
        """Every attached external process."""
        return [p for p in self.procs.values() if not p.internal]

    def ready_list(self) -> list[KProc]:
        """The ready list in LAM's order (priority, then arrival)."""
        return sorted((p for p in self.procs.values() if p.state == KSREADY),
                      key=lambda p: (-p.priority, p.seq))

    def blocked_list(self) -> list[KProc]:
        """The blocked list in LAM's order (priority, then time of blocking)."""
        return sorted((p for p in self.procs.values() if p.state in (KSSEND, KSRECV)),
                      key=lambda p: p.bkey)

    def ksync(self, msg: KMsg, req: int) -> bool:
        """``ksync``: would *msg* (a KQSEND or KQRECV) meet a blocked process?"""
        p = self.pblock.find(KSSEND if req == KQRECV else KSRECV, msg)
        return p is not None and not (p.msg.flags & KPROBE)

    def kkillall(self) -> list[Action]:
        """``kkillall``: SIGCONT then SIGHUP to every attached external client."""
        import signal as _signal
        out: list[Action] = []
        for p in self.ready_list() + self.blocked_list():
            # lamhalt (PRLAMHALT) is never in the kill file, so never killed
            if not p.internal and p.conn is not None and p.priority != PRLAMHALT:
                out.append(Signal(p.conn, p.pid, _signal.SIGCONT))
                out.append(Signal(p.conn, p.pid, _signal.SIGHUP))
        return out

    def dump_lines(self) -> list[str]:
        """``kqdump``'s table: ready list then blocked list, as LAM prints it."""
        states = {KSREADY: "R ", KSSEND: "BS", KSRECV: "BR"}
        lines = ["PID       PRI    STATE                  FLAGS"]
        for p in self.ready_list() + self.blocked_list():
            m = p.msg
            if p.state == KSRECV and m.flags & KSYNCSQL:
                st = f"{states[p.state]} ({m.event & 0xFFFFFFFF:x} {m.type & 0xFFFFFFFF:x})"
            else:
                st = f"{states[p.state]} ({m.event} {m.type & 0xFFFFFFFF:x})"
            flags = ""
            if p.state == KSRECV:
                if m.flags & KSYNCSQL:
                    flags += "sql "
                if m.flags & KPROBE:
                    flags += "probe "
            if p.flags & KSURRENDER:
                flags += "surrender "
            if p.flags & KIPROC:
                flags += "internal "
            if p.flags & KMSG2:
                flags += "msg2 "
            lines.append(f"{p.pid:<8d}  {p.priority:<5d}  {st[:23]:<23.23s}{flags}".rstrip())
        return lines

    def check_invariants(self) -> None:
        """Assert the table, the lists and the indexes agree (for tests and fuzzing)."""
        self.pblock.check()
        for p in self.pblock.members():
            assert self.procs.get(p.index) is p, f"blocked {p} not in table"
            assert p.state in (KSSEND, KSRECV), f"blocked {p} in state {p.state}"
        nblocked = sum(1 for p in self.procs.values() if p.state in (KSSEND, KSRECV))
        assert nblocked == self.pblock.count, "a blocked process is missing from the index"
        for conn, p in self._by_conn.items():
            assert p.conn == conn and self.procs.get(p.index) is p
        for p in self.procs.values():
            assert p.state != KSFREE
            assert p in self._by_pid.get(p.pid, []), "pid index"
            if not p.internal:
                assert self._by_conn.get(p.conn) is p, "connection index"
        assert not set(self.procs) & set(self._free_indexes), "index both used and free"

    # ------------------------------------------------------------------
    # kouter.c: attach, detach, surrender, dump, nuke, preempt
    # ------------------------------------------------------------------
    def _kqattach_new(self, conn: Conn, pclient: KProc | None, req: KReq) -> None:
        peer = self._peers.get(conn)
        if peer is None:
            self._refuse(conn, pclient, EBADREQUEST, "attach from an unknown connection")
            return
        pid, _uid = peer
        if pclient is not None:
            self._refuse(conn, pclient, EBADREQUEST,
                         f"second attach on one connection (already index {pclient.index})")
            return
        if req.pid != pid:
            self._refuse(conn, None, errno.EPERM,
                         f"attach claims pid {req.pid} but the socket's peer is pid {pid}")
            return
        if len(self.procs) >= self.max_procs:
            log.warning("kouter: out of process descriptors (limit %d), refusing pid %d",
                        self.max_procs, pid, extra={"LAM_PID": pid, "LAM_ERROR": "ENOKDESCRIPTORS"})
            self.stats.refused += 1
            self._out.append(Reply(conn, KReply(reply=ENOKDESCRIPTORS)))
            self._out.append(Close(conn, "out of process descriptors"))
            return
        p = self._alloc(pid, req.priority, conn)
        self.stats.attaches += 1
        if p.priority != PRLAMHALT:
            self.killfile_new.append((pid, None))  # kkillwrite; the start time follows
        log.debug("kouter: attached process pid=%d pri=%d index=%d", pid, req.priority,
                  p.index, extra={"LAM_PID": pid, "LAM_REQUEST": "ATTACH"})
        self._out.append(Reply(conn, KReply(index=p.index)))

    def _kqattach_again(self, p: KProc, req: KReq) -> None:
        """An attached process re-attaches: only its priority changes."""
        if (p.priority == PRLAMHALT) != (req.priority == PRLAMHALT):
            self.killfile_dirty = True
        p.priority = req.priority
        p.seq = next(self._seq)
        self._out.append(Reply(p.conn, KReply(index=p.index)))

    def _kqdetach(self, conn: Conn, p: KProc | None, req: KReq) -> None:
        if p is None:
            self._out.append(Close(conn, "detach without attach"))
            return
        if req.pid != p.pid and req.pid != 0:
            # kdetach(pid) of another process: the C kernel obeys; we do not.
            log.warning("kouter: pid %d tried to detach pid %d; refused", p.pid, req.pid,
                        extra={"LAM_PID": p.pid, "LAM_REQUEST": "DETACH"})
            self.stats.refused += 1
            return
        log.debug("kouter: detached process pid=%d", p.pid, extra={"LAM_PID": p.pid})
        self._knuke(p)
        self._out.append(Close(conn, "detached"))

    def _kqsurrender(self, p: KProc) -> None:
        p.flags &= ~KSURRENDER
        sig, p.signal = p.signal, 0
        self._out.append(Reply(p.conn, KReply(signal=sig)))

    def _kqdump(self, conn: Conn) -> None:
        for line in self.dump_lines():
            log.info("%s", line)
        self._out.append(Reply(conn, KReply()))
        if conn not in self._by_conn:
            self._out.append(Close(conn, "dump"))

    def _knuke(self, p: KProc) -> None:
        """``knuke``: remove one process from every list and free its slot."""
        if p.state in (KSSEND, KSRECV):
            self._unblock(p)
        p.state = KSFREE
        self.procs.pop(p.index, None)
        bisect.insort(self._free_indexes, p.index)
        lst = self._by_pid.get(p.pid)
        if lst is not None:
            try:
                lst.remove(p)
            except ValueError:
                pass
            if not lst:
                del self._by_pid[p.pid]
        if p.conn is not None and self._by_conn.get(p.conn) is p:
            del self._by_conn[p.conn]
        if not p.internal and p.priority != PRLAMHALT:
            self.killfile_removed.append(p.pid)
        if p.internal and p.coro is not None:
            p.coro.close()
            p.coro = None

    def _kpreempt(self, p: KProc) -> None:
        """``kpreempt``: prompt a ready client with LAM_SIGUSR to surrender."""
        if not (p.flags & KSURRENDER):
            p.flags |= KSURRENDER
            self._out.append(Signal(p.conn, p.pid, LAM_SIGUSR))

    def _alloc(self, pid: int, priority: int, conn: Conn | None) -> KProc:
        if self._free_indexes:
            index = self._free_indexes.pop(0)
        else:
            index = self._next_index
            self._next_index += 1
        p = KProc(index=index, pid=pid, priority=priority, conn=conn, seq=next(self._seq))
        self.procs[index] = p
        self._by_pid.setdefault(pid, []).append(p)
        if conn is not None:
            self._by_conn[conn] = p
        return p

    # ------------------------------------------------------------------
    # kinner.c: rendezvous, state, doom
    # ------------------------------------------------------------------
    def _bad_lengths(self, req: KReq) -> str:
        for m in (req.msg, req.msg2) if req.req == KQSR else (req.msg,):
            if m.length < 0 or m.length > self.max_msg_len:
                return f"message length {m.length} outside 0..{self.max_msg_len}"
        return ""

    def _kqsync(self, pclient: KProc, req: KReq) -> None:
        """``kqsync``: a send, receive or send-receive meets its partner or blocks."""
        code = req.req
        if pclient.signal:
            sig, pclient.signal = pclient.signal, 0
            self._reply(pclient, KReply(reply=errno.EINTR, signal=sig))
            return
        msg = req.msg
        syncstate = KSSEND if code == KQRECV else KSRECV
        p = self.pblock.find(syncstate, msg)
        pclient.msg = msg  # each request is decoded afresh: the kernel may keep its parts

        if p is not None and p.msg.flags & KPROBE:
            # the blocked process only probes: tell it what is there, wake it
            rep = KReply(event=msg.event, type=msg.type, length=min(msg.length, p.msg.length))
            if p.msg.flags & KTRACE:
                rep.blktime = self.clock() - p.blktime
            self._unblock(p)
            p.state = KSREADY
            self._reply(p, rep)
            p = None
        elif p is not None and code == KQRECV and msg.flags & KPROBE:
            # a probe meeting a blocked sender: answer it, leave the sender be
            pm = p.msg
            self._reply(pclient, KReply(event=pm.event, type=pm.type,
                                        length=min(pm.length, msg.length)))
            return

        if p is not None:
            pclient.blktime = 0.0
            pmsg = p.msg
            t = p.blktime
            if pmsg.flags & KTRACE:
                p.blktime = 0.0 if p.flags & KMSG2 else self.clock() - p.blktime
            else:
                p.blktime = 0.0
            self._unblock(p)
            if code == KQRECV:
                self._transfer(p, pmsg, pclient, pclient.msg)
            else:
                self._transfer(pclient, pclient.msg, p, pmsg)
            if p.flags & KMSG2:
                # a blocked send-receive: its receive half keeps its place
                p.flags &= ~KMSG2
                p.msg, p.msg2 = p.msg2, KMsg()
                p.blktime = t
                self._block(p, KSRECV, keep_place=True)
            else:
                p.state = KSREADY
            if code == KQSR:
                pclient.fyi = tuple(req.fyi)
                m2 = req.msg2
                pclient.msg = m2
                if m2.flags & KTRACE:
                    pclient.blktime = self.clock()
                self._block(pclient, KSRECV)
        elif msg.flags & KTRY:
            self._reply(pclient, KReply(reply=errno.EWOULDBLOCK))
        else:
            pclient.fyi = tuple(req.fyi)
            if code == KQSR:
                pclient.flags |= KMSG2
                m2 = req.msg2
                pclient.msg2 = m2
            if msg.flags & KTRACE:
                pclient.blktime = self.clock()
            self._block(pclient, KSRECV if code == KQRECV else KSSEND)

    def _kqstate(self, pclient: KProc, req: KReq) -> None:
        self._reply(pclient, self.ksnap(req.pid))

    def ksnap(self, pid: int) -> KReply:
        """``ksnap``: the state of the process with *pid*."""
        ps = self.kpfind(pid)
        if ps is None:
            return KReply(reply=ENOTPROCESS)
        m = ps.msg
        return KReply(state=ps.state, priority=ps.priority, sigs=ps.signal,
                      event=m.event, type=m.type, length=m.length, fyi=ps.fyi)

    def _kqdoom(self, pclient: KProc, req: KReq) -> None:
        """``kqdoom``: deliver LAM signal bits to a process."""
        pdoom = self.kpfind(req.pid)
        rep = KReply()
        if pdoom is None:
            rep.reply = ENOTPROCESS
        elif pdoom.internal:
            rep.reply = ESERVICE
        elif pdoom is pclient:
            rep.signal = req.signal
        elif pdoom.state == KSREADY:
            pdoom.signal |= req.signal
            self._kpreempt(pdoom)
        else:
            wake = KReply(reply=errno.EINTR, signal=req.signal)
            if pdoom.msg.flags & KTRACE:
                pdoom.blktime = self.clock() - pdoom.blktime
                wake.blktime = pdoom.blktime
            self._unblock(pdoom)
            pdoom.state = KSREADY
            pdoom.flags &= ~KMSG2
            self._reply(pdoom, wake)
        log.debug("kernel (kqdoom): pid=%d target=%d signal=%#x -> %d", pclient.pid,
                  req.pid, req.signal, rep.reply,
                  extra={"LAM_PID": pclient.pid, "LAM_REQUEST": "DOOM"})
        if pclient.internal:
            self._resume(pclient, rep)
        else:
            self._out.append(Reply(pclient.conn, rep))

    def _transfer(self, pfrom: KProc, smsg: KMsg, pto: KProc, rmsg: KMsg) -> None:
        """``transfer``: the rendezvous happened; move the body from *pfrom* to *pto*.

        *smsg*/*rmsg* are the sender's and receiver's message descriptors.
        """
        n = min(smsg.length, rmsg.length)
        s_hdr = NMSG_SIZE if smsg.flags & KNMSG else 0
        r_hdr = NMSG_SIZE if rmsg.flags & KNMSG else 0
        to_rep = KReply(type=smsg.type, length=n, blktime=pto.blktime)
        from_rep = KReply(length=n, blktime=pfrom.blktime)
        if pfrom.internal:
            hdr = pfrom.nmsg
            body = pfrom.body[:n]
            if len(body) < n:
                body += bytes(n - len(body))
            pfrom.body, pfrom.nmsg = b"", None
            self.stats.messages += 1
            self.stats.bytes += n
            if pto.internal:
                if r_hdr and hdr is None:
                    hdr = NMsg()
                self._resume(pto, Received(to_rep, body, hdr if (r_hdr or s_hdr) else None))
            else:
                self._out.append(Reply(pto.conn, to_rep))
                data = ((hdr or NMsg()).pack() + body) if r_hdr else body
                if data:
                    self._out.append(SendBody(pto.conn, data))
            if pfrom.call != KQSR:  # a send-receive resumes after its receive half
                self._resume(pfrom, from_rep)
        elif pto.internal:
            self._out.append(Reply(pfrom.conn, from_rep))
            token = next(self._collect_seq)
            self._collects[token] = (pto, pfrom, smsg)
            self._out.append(CollectBody(pfrom.conn, s_hdr + n, token))
        else:
            self.stats.messages += 1
            self.stats.bytes += n
            self._out.append(Reply(pfrom.conn, from_rep))
            self._out.append(Reply(pto.conn, to_rep))
            skip = s_hdr if not r_hdr else 0
            pad = r_hdr if not s_hdr else 0
            length = n + (s_hdr if (s_hdr and r_hdr) else 0)
            if length or skip or pad:
                self._out.append(Transfer(pfrom.conn, pto.conn, length, skip, pad))

    def _collect_lost(self, token: int) -> None:
        """A body for an internal receiver never came: it waits again, unharmed."""
        entry = self._collects.pop(token, None)
        if entry is None:
            return
        pto = entry[0]
        if pto.index in self.procs and pto.state == KSREADY:
            self._block(pto, KSRECV)

    # ------------------------------------------------------------------
    # moving processes on and off the blocked list
    # ------------------------------------------------------------------
    def _block(self, p: KProc, state: int, keep_place: bool = False) -> None:
        """*p* blocks in *state*; a KQSR turning into its receive keeps its place."""
        if not keep_place:
            p.bkey = (-p.priority, next(self._seq))
        p.state = state
        self.pblock.insert(p)

    def _unblock(self, p: KProc) -> None:
        self.pblock.delete(p)

    # ------------------------------------------------------------------
    # replies, refusals, internal processes
    # ------------------------------------------------------------------
    def _reply(self, p: KProc, rep: KReply) -> None:
        if p.internal:
            self._resume(p, Received(rep) if p.call in (KQRECV, KQSR) else rep)
        else:
            self._out.append(Reply(p.conn, rep))

    def _refuse(self, conn: Conn, p: KProc | None, code: int, why: str) -> None:
        pid = p.pid if p is not None else self._peers.get(conn, (0,))[0]
        self.stats.refused += 1
        log.warning("kernel: refused pid %d: %s", pid, why,
                    extra={"LAM_PID": pid, "LAM_ERROR": int(code)})
        self._out.append(Reply(conn, KReply(reply=int(code))))

    def _resume(self, p: KProc, value: Any) -> None:
        self._runq.append((p, value))

    def _run_iprocs(self) -> None:
        """Run internal processes until none has a completed request pending."""
        runq = self._runq
        budget = IPROC_TURN_BUDGET
        while runq:
            budget -= 1
            if budget < 0:
                # an internal process that never blocks (a KTRY loop): let the
                # I/O layer serve clients, then carry on
                self._out.append(WatchTimeout(0.0, None))
                return
            p, value = runq.popleft()
            if p.coro is None or p.index not in self.procs:
                continue
            try:
                call = p.coro.send(value)
            except StopIteration:
                log.info("internal process %s (pid %d) ended", p.iproc.name if p.iproc else "?", p.pid)
                self._knuke(p)
                continue
            except Exception:  # an internal process must never take the kernel down
                log.exception("internal process %s (pid %d) failed; detached",
                              p.iproc.name if p.iproc else "?", p.pid)
                p.coro = None
                self._knuke(p)
                continue
            self._iproc_call(p, call)

    def _iproc_call(self, p: KProc, call: KCall) -> None:
        kind = call.kind
        if kind == WAIT_TIMEOUT:
            p.call = WAIT_TIMEOUT
            self._out.append(WatchTimeout(call.arg, p.index))
            return
        if kind == WAIT_READABLE:
            p.call = WAIT_READABLE
            self._out.append(WatchReadable(call.arg, p.index))
            return
        if kind == WAIT_HALT:
            self._out.append(Halt(call.arg, f"halt requested by {p.iproc.name if p.iproc else p.pid}"))
            return
        req = call.req
        assert req is not None
        req.index = p.index
        p.call = kind
        if kind in (KQSEND, KQSR):
            p.body, p.nmsg = call.body, call.nmsg
        if kind == KQSTATE:
            self._resume(p, self.ksnap(req.pid))
        elif kind == KQDOOM:
            self._kqdoom(p, req)
        elif kind in (KQSEND, KQRECV, KQSR):
            bad = self._bad_lengths(req)
            if bad:
                self._resume(p, ValueError(bad))
            else:
                self._kqsync(p, req)
        else:
            self._resume(p, ValueError(f"internal processes cannot make request {kind}"))

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out
