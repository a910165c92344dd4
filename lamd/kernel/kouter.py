"""The kernel's process table and request dispatch (LAM's ``kouter.c``).

:class:`Kernel` is LAM's kernel as a sans-IO state machine. It never touches
a socket, a file or a signal: the I/O layer (:mod:`lamd.kernelio`) feeds it
connections and decoded ``struct kreq`` requests, and carries out the
:mod:`actions <lamd.kernel.kactions>` it returns: replies to write, message
bodies to move, signals to send, connections to close, kill-file changes,
event sources of internal processes. This module holds the table and the
dispatch (attach, detach, surrender, dump, ``knuke``, ``kpreempt``,
``kkillall``); the rendezvous is :class:`~lamd.kernel.kinner.KInner`, the
internal processes :class:`~lamd.kernel.kidriver.KIProcDriver`.

What differs from C on purpose:

* identity: a connection's pid is the one the I/O layer read from
  SO_PEERCRED, never the ``kq_pid`` the client writes; a request naming
  another connection's process index is refused, and so is a second request
  from a client still blocked in its first;
* no fixed table: ``max_procs`` is a setting, indexes are reused lowest first;
* ``kqdump`` logs the table as one record, at most once per interval.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import _signal  # type: ignore[import]  # the C module: signal's makes enums (issue 13)
import time
from collections import deque
from .._dataclasses import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Callable, Final

from .. import lazylog
from .constants import (
    EBADREQUEST, EMSGLEN, ENOKDESCRIPTORS, ENOTATTACHED, KIPROC, KMSG2, KNFYI,
    KPROBE, KQATTACH, KQDETACH, KQDOOM, KQDUMP, KQRECV, KQSEND, KQSR, KQSTATE,
    KQSURRENDER, KSFREE, KSREADY, KSRECV, KSSEND, KSURRENDER, KSYNCSQL,
    LAM_SIGUSR, PRLAMHALT,
)
from .kactions import Action, Close, KillAppend, KillRemove, KillRewrite, Reply, Signal
from .kinner import BlockedList, KInner
from .kidriver import KIProcDriver
from .kiproc import Event, IProc, Watch
from .wire import KMsg, KReply, KReq, NMsg

if TYPE_CHECKING:  # pragma: no cover
    from .kactions import Conn

log = lazylog.getLogger("lamd.kernel")

#: Largest message body a client may announce (k_length is a C int4).
MAX_MSG_LEN = 0x7FFFFFFF
_REQUEST_NAMES = {KQSEND: "SEND", KQRECV: "RECV", KQSTATE: "STATE", KQDOOM: "DOOM",
                  KQSR: "SR", KQATTACH: "ATTACH", KQSURRENDER: "SURRENDER",
                  KQDETACH: "DETACH", KQDUMP: "DUMP"}


# --- the process table --------------------------------------------------------


@dataclass(init=False, eq=False)
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
    # internal processes only
    iproc: IProc | None = None
    coro: Any = None
    body: bytes | memoryview = b""  # outgoing body of an internal sender (a view: IProc.try_send)
    nmsg: NMsg | None = None
    call: int | str = -1  # the request (or wait) an internal process is in
    watches: dict[int, Watch] = field(default_factory=dict)  # its event sources
    mailbox: deque[Event] = field(default_factory=deque)  # events not yet taken
    wanted: tuple[Watch, ...] | None = None  # events that end its wait (() any)

    # spelled out, as wire's structs are: compiled, a generated one runs interpreted
    def __init__(self, index: int, pid: int, priority: int, conn: Conn | None = None,
                 state: int = KSREADY, signal: int = 0, flags: int = 0,
                 fyi: tuple[int, ...] = (0,) * KNFYI, msg: KMsg | None = None,
                 msg2: KMsg | None = None, blktime: float = 0.0, seq: int = 0,
                 bkey: tuple[int, int] = (0, 0), iproc: IProc | None = None, coro: Any = None,
                 body: bytes | memoryview = b"", nmsg: NMsg | None = None, call: int | str = -1,
                 watches: dict[int, Watch] | None = None, mailbox: deque[Event] | None = None,
                 wanted: tuple[Watch, ...] | None = None) -> None:
        self.index = index
        self.pid = pid
        self.priority = priority
        self.conn = conn
        self.state = state
        self.signal = signal
        self.flags = flags
        self.fyi = fyi
        self.msg = KMsg() if msg is None else msg
        self.msg2 = KMsg() if msg2 is None else msg2
        self.blktime = blktime
        self.seq = seq
        self.bkey = bkey
        self.iproc = iproc
        self.coro = coro
        self.body = body
        self.nmsg = nmsg
        self.call = call
        self.watches = {} if watches is None else watches
        self.mailbox = deque() if mailbox is None else mailbox
        self.wanted = wanted

    @property
    def internal(self) -> bool:
        return bool(self.flags & KIPROC)

    def __repr__(self) -> str:  # short, for logs
        return f"<KProc {self.index} pid={self.pid} pri={self.priority} st={self.state}>"


_NO_MAILBOX: Final[deque[Event]] = deque(maxlen=0)


@dataclass
class KernelStats:
    """Counters kept for status lines and benchmarks."""

    attaches: int = 0
    messages: int = 0
    bytes: int = 0
    requests: int = 0
    refused: int = 0
    dumps_skipped: int = 0


class Kernel(KInner, KIProcDriver):
    """LAM's kernel: process table, ready/blocked lists and rendezvous.

    Entry points (each returns the list of actions to carry out, in order):
    :meth:`connect`, :meth:`request`, :meth:`disconnect`, and for internal
    processes :meth:`boot`, :meth:`body_arrived`, :meth:`body_failed`,
    :meth:`event`, :meth:`wake`.
    """

    def __init__(self, *, max_procs: int = 65536, max_msg_len: int = MAX_MSG_LEN,
                 clock: Callable[[], float] = time.time,
                 kernel_pid: int = 0, dump_interval: float = 1.0) -> None:
        self.max_procs = max_procs
        self.max_msg_len = max_msg_len
        self.clock = clock
        self.kernel_pid = kernel_pid
        self.dump_interval = dump_interval
        self._last_dump = float("-inf")
        self.stats = KernelStats()
        #: log every request (``--debug``); checked once per request, not per field
        self.debug = log.isEnabledFor(lazylog.DEBUG)
        self.procs: dict[int, KProc] = {}  # index -> process (the table)
        self._free_indexes: list[int] = []  # heap of reusable indexes
        self._next_index = 0
        self._by_pid: dict[int, list[KProc]] = {}
        self._by_conn: dict[Conn, KProc] = {}
        self._peers: dict[Conn, tuple[int, int]] = {}  # conn -> (pid, uid) from SO_PEERCRED
        self._seq = itertools.count()
        self.pblock = BlockedList()  # LAM's blocked list, indexed by event
        self._out: list[Action] = []
        self._init_iprocs()

    # ------------------------------------------------------------------
    # entry points
    # ------------------------------------------------------------------
    def connect(self, conn: Conn, pid: int, uid: int) -> None:
        """A client connected; *pid*/*uid* come from SO_PEERCRED."""
        self._peers[conn] = (pid, uid)

    def reserve_indexes(self, n: int) -> None:
        """Keep process indexes 0..*n*-1 for the *n* internal processes
        :meth:`boot` starts after the first clients are served (a socket
        activation's, issue 13): they get LAM's indexes, as if booted first
        (``kboot`` before any client), once :meth:`release_indexes` is called."""
        if self.procs or self._next_index or self._free_indexes:
            raise ValueError("indexes can only be reserved in an empty table")
        self._next_index = n

    def release_indexes(self, n: int) -> None:
        """The indexes :meth:`reserve_indexes` kept, for the boot that follows
        (the lowest free index is taken first: 0..*n*-1 in boot order)."""
        for i in range(n):
            heapq.heappush(self._free_indexes, i)

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
        if self._runq:
            self._run_iprocs()
        out, self._out = self._out, []
        return out

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
        for token, (_pto, pfrom, _) in list(self._collects.items()):
            if pfrom.conn == conn:
                self._collect_lost(token)
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

    def killfile_entries(self) -> list[tuple[int, Conn]]:
        """(pid, connection) of every client the kill file lists, in the
        order they attached: internal processes and PRLAMHALT clients are
        left out (``kkill.c``)."""
        return [(p.pid, p.conn) for p in self._by_conn.values() if p.priority != PRLAMHALT]

    def lamhalt_pids(self) -> list[int]:
        """The pids of the attached ``lamhalt``s (PRLAMHALT): once this
        node's daemon halts, each waits for the session socket to go."""
        return [p.pid for p in self._by_conn.values() if p.priority == PRLAMHALT]

    @property
    def nclients(self) -> int:
        """How many external processes are attached (one per connection)."""
        return len(self._by_conn)

    def clients(self) -> list[KProc]:
        """Every attached external process."""
        return list(self._by_conn.values())

    def ready_list(self) -> list[KProc]:
        """The ready list in LAM's order (priority, then arrival)."""
        return sorted((p for p in self.procs.values() if p.state == KSREADY),
                      key=lambda p: (-p.priority, p.seq))

    def blocked_list(self) -> list[KProc]:
        """The blocked list in LAM's order (priority, then time of blocking)."""
        return sorted((p for p in self.procs.values() if p.state in (KSSEND, KSRECV)),
                      key=lambda p: p.bkey)

    def kkillall(self) -> list[Signal]:
        """``kkillall``: SIGCONT then SIGHUP to every attached external client."""
        out: list[Signal] = []
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
        for w in self._watches.values():
            assert w.active and w.proc.watches.get(w.id) is w and w.proc.index in self.procs, "watch"

    # ------------------------------------------------------------------

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
            self._out.append(KillAppend(conn, pid))  # kkillwrite: listed before it hears back
        if self.debug:
            log.debug("kouter: attached process pid=%d pri=%d index=%d", pid, req.priority,
                      p.index, extra={"LAM_PID": pid, "LAM_REQUEST": "ATTACH"})
        self._out.append(Reply(conn, KReply(index=p.index)))

    def _kqattach_again(self, p: KProc, req: KReq) -> None:
        """An attached process re-attaches: only its priority changes."""
        if (p.priority == PRLAMHALT) != (req.priority == PRLAMHALT):
            self._out.append(KillRewrite())  # it joins or leaves the kill file
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
        if self.debug:
            log.debug("kouter: detached process pid=%d", p.pid, extra={"LAM_PID": p.pid})
        self._knuke(p)
        self._out.append(Close(conn, "detached"))

    def _kqsurrender(self, p: KProc) -> None:
        p.flags &= ~KSURRENDER
        sig, p.signal = p.signal, 0
        self._out.append(Reply(p.conn, KReply(signal=sig)))

    def _kqdump(self, conn: Conn) -> None:
        """``kqdump``: the table, as one log record at most once per
        ``dump_interval`` (LAM prints it for every request; a client looping
        on dumps must not cost everyone else a walk of the whole table)."""
        now = self.clock()
        if now - self._last_dump >= self.dump_interval:
            self._last_dump = now
            lines = self.dump_lines()
            log.info("kernel table (%d processes):\n%s", len(lines) - 1, "\n".join(lines),
                     extra={"LAM_REQUEST": "DUMP", "LAM_NPROCS": len(lines) - 1})
        else:
            self.stats.dumps_skipped += 1
        self._out.append(Reply(conn, KReply()))
        if conn not in self._by_conn:
            self._out.append(Close(conn, "dump"))

    def _knuke(self, p: KProc) -> None:
        """``knuke``: remove one process from every list and free its slot."""
        if p.state in (KSSEND, KSRECV):
            self._unblock(p)
        p.state = KSFREE
        self.procs.pop(p.index, None)
        heapq.heappush(self._free_indexes, p.index)
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
            self._out.append(KillRemove(p.pid))
        if p.internal:
            self._end_watches(p)
            if p.coro is not None:
                coro, p.coro = p.coro, None
                coro.close()

    def _kpreempt(self, p: KProc) -> None:
        """``kpreempt``: prompt a ready client with LAM_SIGUSR to surrender."""
        if not (p.flags & KSURRENDER):
            p.flags |= KSURRENDER
            self._out.append(Signal(p.conn, p.pid, LAM_SIGUSR))

    def _alloc(self, pid: int, priority: int, conn: Conn | None) -> KProc:
        if self._free_indexes:
            index = heapq.heappop(self._free_indexes)
        else:
            index = self._next_index
            self._next_index += 1
        # a client never has events queued (only internal processes watch
        # anything): a shared deque that holds nothing, not 760 bytes each
        p = KProc(index=index, pid=pid, priority=priority, conn=conn, seq=next(self._seq),
                  mailbox=_NO_MAILBOX if conn is not None else None)
        self.procs[index] = p
        self._by_pid.setdefault(pid, []).append(p)
        if conn is not None:
            self._by_conn[conn] = p
        return p

    def _refuse(self, conn: Conn, p: KProc | None, code: int, why: str) -> None:
        pid = p.pid if p is not None else self._peers.get(conn, (0,))[0]
        self.stats.refused += 1
        log.warning("kernel: refused pid %d: %s", pid, why,
                    extra={"LAM_PID": pid, "LAM_ERROR": int(code)})
        self._out.append(Reply(conn, KReply(reply=int(code))))
