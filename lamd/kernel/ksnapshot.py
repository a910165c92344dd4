"""The kernel's state as bytes, for a daemon that replaces itself (issue 12).

LAM's kernel has no counterpart: the C lamd cannot be replaced under its
clients. Here a running daemon can hand everything to its successor (a
re-exec in place, ``docs/restart.md``): :func:`capture` takes the state of a
:class:`~lamd.kernel.Kernel` at rest, :func:`encode` makes bytes of it with
the I/O layer's per-connection records, :func:`decode` checks and reads
them back, and :func:`restore` builds a *fresh* kernel from them. Nothing
here touches a descriptor: connections are named by integers the I/O layer
chooses (their descriptor numbers, which ``execve`` keeps).

The bytes: a fixed header (magic ``LAMDSNAP``, format version, the daemon's
uid, the session directory's length, the payload's length, a BLAKE2b-128
digest of everything), the session directory, then the payload (JSON;
bodies and carried state in base64). :func:`decode` refuses with one
:class:`SnapshotError` line a snapshot that is truncated, has bytes after its
end, fails its digest, is of another format version, another uid or another
session, or whose payload does not describe a consistent kernel. The kernel
:func:`restore` builds is returned only once complete, so a refused snapshot
never leaves a half-restored kernel behind: the daemon starts clean.

Internal processes are coroutines, which cannot be serialised: one is
carried *at rest* (blocked in a receive, no watch, no queued event, no body
being collected for it), with the bytes its ``IProc.carry`` returns. The
successor boots it afresh with those bytes as ``IProc.restored``; if its
first request is the very receive it was blocked in, it takes back its place
in the blocked list, else it makes that request as at boot.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import struct
from .._dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .constants import KIPROC, KMSG2, KNFYI, KQRECV, KQSR, KSREADY, KSRECV, KSSEND
from .kiproc import KBoot, KCall, IProc
from .kouter import Kernel, KernelStats, KProc
from .wire import KMsg

if TYPE_CHECKING:  # pragma: no cover
    from .kactions import Conn

MAGIC = b"LAMDSNAP"
#: Bumped whenever the payload's meaning changes; a daemon reads only its own.
FORMAT_VERSION = 1
#: magic, version, reserved (0), uid, session length, payload length, digest
HEADER = struct.Struct("<8sHHIIQ16s")
_DIGEST_AT = HEADER.size - 16
_PERSON = b"lamd-snapshot"


class SnapshotError(ValueError):
    """A snapshot that cannot be restored; the message is one log line."""


class NotAtRest(RuntimeError):
    """The kernel is not at a safe point for a snapshot (try again later)."""


@dataclass(slots=True)
class ConnState:
    """What the I/O layer carries for one client connection.

    ``fd`` names the connection in the kernel's part of the snapshot.
    """

    fd: int
    pid: int
    uid: int
    pidfd: int | None = None
    starttime: int | None = None
    inbuf: bytes = b""  # request bytes read, not yet parsed
    outbuf: bytes = b""  # reply bytes queued, not yet written


@dataclass(slots=True)
class ProcRecord:
    """One row of the process table (``struct kproc``), as carried."""

    index: int
    pid: int
    priority: int
    conn: int | None
    state: int
    signal: int
    flags: int
    fyi: tuple[int, ...]
    msg: KMsg
    msg2: KMsg
    blktime: float
    seq: int
    bkey: tuple[int, int]
    call: int = -1  # internal processes: the request they were blocked in
    iproc: str | None = None  # internal processes: their boot table name
    carried: bytes | None = None


@dataclass(slots=True)
class KernelState:
    """Everything of a :class:`Kernel` at rest that a successor needs."""

    procs: list[ProcRecord]  # in the table's order
    next_index: int
    free_indexes: list[int]
    seq: int  # the next arrival number
    by_pid: list[tuple[int, list[int]]]  # pid -> indexes, in attach order
    by_conn: list[tuple[int, int]]  # (connection, index), in attach order
    peers: list[tuple[int, int, int]]  # (connection, pid, uid) known by SO_PEERCRED
    stats: KernelStats = field(default_factory=KernelStats)
    watch_seq: int = 0
    collect_seq: int = 0
    last_dump: float | None = None  # when kqdump last logged the table (its clock)


@dataclass(slots=True)
class Snapshot:
    """A decoded snapshot: the kernel, the connections, and the I/O layer's extras."""

    uid: int
    session: str
    kernel: KernelState
    conns: list[ConnState]
    extra: dict[str, Any] = field(default_factory=dict)


# --- capture: the kernel at rest -> KernelState ---------------------------------


def capture(kernel: Kernel, conn_id: Callable[[Conn], int]) -> KernelState:
    """The state of *kernel*, whose connections *conn_id* names by integer.

    Raises :class:`NotAtRest` if the kernel is not at a safe point: an
    internal process runnable, not blocked in a receive, with watches or
    queued events, or a body being collected for one. *kernel* is unchanged.
    """
    if kernel._runq:
        raise NotAtRest("internal processes are still runnable")
    if kernel._collects:
        raise NotAtRest(f"{len(kernel._collects)} bodies are being collected for internal processes")
    procs = []
    for p in kernel.procs.values():
        carried = None
        name = None
        if p.internal:
            _check_at_rest(p)
            assert p.iproc is not None
            name = p.iproc.name
            if p.iproc.carry is not None:
                try:
                    carried = bytes(p.iproc.carry())
                except Exception as e:  # its own bug: no snapshot rather than no daemon
                    raise NotAtRest(f"internal process {name} cannot carry its state: "
                                    f"{e!r}") from None
        procs.append(ProcRecord(
            index=p.index, pid=p.pid, priority=p.priority,
            conn=None if p.conn is None else int(conn_id(p.conn)), state=p.state,
            signal=p.signal, flags=p.flags, fyi=tuple(p.fyi), msg=_copy(p.msg),
            msg2=_copy(p.msg2), blktime=float(p.blktime), seq=p.seq, bkey=tuple(p.bkey),
            call=p.call if isinstance(p.call, int) else -1, iproc=name, carried=carried))
    seq = next(kernel._seq)
    kernel._seq = itertools.count(seq)  # taking a number must not change the kernel
    st = kernel.stats
    return KernelState(
        procs=procs, next_index=kernel._next_index, free_indexes=sorted(kernel._free_indexes),
        seq=seq,
        by_pid=[(pid, [p.index for p in lst]) for pid, lst in kernel._by_pid.items()],
        by_conn=[(int(conn_id(c)), p.index) for c, p in kernel._by_conn.items()],
        peers=[(int(conn_id(c)), pid, uid) for c, (pid, uid) in kernel._peers.items()],
        stats=KernelStats(st.attaches, st.messages, st.bytes, st.requests, st.refused,
                          st.dumps_skipped),
        watch_seq=kernel._watch_seq, collect_seq=kernel._collect_seq,
        last_dump=None if kernel._last_dump == float("-inf") else float(kernel._last_dump))


def _check_at_rest(p: KProc) -> None:
    name = p.iproc.name if p.iproc is not None else str(p.pid)
    if p.coro is None:
        raise NotAtRest(f"internal process {name} has no coroutine")
    if p.state != KSRECV or p.call not in (KQRECV, KQSR) or p.flags & KMSG2:
        raise NotAtRest(f"internal process {name} is not blocked in a receive")
    if p.watches or p.mailbox or p.wanted is not None:
        raise NotAtRest(f"internal process {name} has event sources or queued events")


def _copy(m: KMsg) -> KMsg:
    return KMsg(m.event, m.type, m.length, m.flags, m.msg)


# --- the bytes -------------------------------------------------------------------


def encode(state: KernelState, *, uid: int, session: str, conns: Iterable[ConnState] = (),
           extra: Mapping[str, Any] | None = None) -> bytes:
    """The snapshot bytes of *state*, the I/O layer's *conns* and *extra*
    (JSON values), for the daemon of *uid* serving *session*."""
    payload = json.dumps({
        "kernel": _kernel_json(state),
        "conns": [[c.fd, c.pid, c.uid, c.pidfd, c.starttime, _b64(c.inbuf), _b64(c.outbuf)]
                  for c in conns],
        "extra": dict(extra or {}),
    }, separators=(",", ":"), allow_nan=False).encode()
    sess = session.encode()
    head = HEADER.pack(MAGIC, FORMAT_VERSION, 0, uid, len(sess), len(payload), bytes(16))
    digest = _digest(head, sess, payload)
    return head[:_DIGEST_AT] + digest + sess + payload


def decode(data: bytes | bytearray | memoryview, *, uid: int, session: str) -> Snapshot:
    """Check and read a snapshot made for the daemon of *uid* serving *session*.

    Raises :class:`SnapshotError` (one line) for anything but a whole,
    intact snapshot of this format, uid and session.
    """
    data = bytes(data)
    if len(data) < HEADER.size:
        raise SnapshotError(f"snapshot truncated: {len(data)} bytes, the header alone is "
                            f"{HEADER.size}")
    magic, version, reserved, s_uid, s_len, p_len, digest = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotError("not a lamd snapshot (bad magic)")
    total = HEADER.size + s_len + p_len
    if len(data) < total:
        raise SnapshotError(f"snapshot truncated: {len(data)} of {total} bytes")
    if len(data) > total:
        raise SnapshotError(f"snapshot has {len(data) - total} bytes after its end")
    sess = data[HEADER.size:HEADER.size + s_len]
    payload = data[HEADER.size + s_len:]
    head = data[:_DIGEST_AT] + bytes(16)
    if digest != _digest(head, sess, payload):
        raise SnapshotError("snapshot corrupt: checksum mismatch")
    if version != FORMAT_VERSION or reserved != 0:
        raise SnapshotError(f"snapshot of format version {version}; this lamd reads "
                            f"version {FORMAT_VERSION}")
    if s_uid != uid:
        raise SnapshotError(f"snapshot made by the daemon of uid {s_uid}, not {uid}")
    try:
        s_session = sess.decode()
    except UnicodeDecodeError:
        raise SnapshotError("snapshot corrupt: session directory not UTF-8") from None
    if s_session != session:
        raise SnapshotError(f"snapshot of session {s_session!r}, not {session!r}")
    try:
        doc = json.loads(payload, parse_constant=_no_constant)
        _want(isinstance(doc, dict) and set(doc) == {"kernel", "conns", "extra"}, "sections")
        kstate = _kernel_from_json(doc["kernel"])
        conns = [_conn_from_json(c) for c in _list(doc["conns"])]
        _want(isinstance(doc["extra"], dict), "extra")
        fds = [c.fd for c in conns]
        _want(len(set(fds)) == len(fds), "a connection carried twice")
    except SnapshotError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
        raise SnapshotError(f"snapshot corrupt: bad payload ({type(e).__name__})") from None
    return Snapshot(uid=s_uid, session=s_session, kernel=kstate, conns=conns, extra=doc["extra"])


def _digest(head: bytes, sess: bytes, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=_PERSON)
    h.update(head)
    h.update(sess)
    h.update(payload)
    return h.digest()


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode("ascii")


def _no_constant(name: str) -> Any:
    raise SnapshotError(f"snapshot corrupt: {name} in payload")


def _msg_json(m: KMsg) -> list[int]:
    return [m.event, m.type, m.length, m.flags, m.msg]


def _kernel_json(s: KernelState) -> dict[str, Any]:
    st = s.stats
    return {
        "procs": [[p.index, p.pid, p.priority, p.conn, p.state, p.signal, p.flags, list(p.fyi),
                   _msg_json(p.msg), _msg_json(p.msg2), p.blktime, p.seq, list(p.bkey),
                   p.call, p.iproc, _b64(p.carried)] for p in s.procs],
        "next_index": s.next_index, "free": list(s.free_indexes), "seq": s.seq,
        "by_pid": [[pid, idx] for pid, idx in s.by_pid],
        "by_conn": [list(x) for x in s.by_conn], "peers": [list(x) for x in s.peers],
        "stats": [st.attaches, st.messages, st.bytes, st.requests, st.refused,
                  st.dumps_skipped],
        "watch_seq": s.watch_seq, "collect_seq": s.collect_seq, "last_dump": s.last_dump,
    }


# -- reading the payload: every field checked, one error on the first bad one


def _want(ok: bool, what: str) -> None:
    if not ok:
        raise SnapshotError(f"snapshot corrupt: bad {what}")


def _int(v: Any, what: str = "integer") -> int:
    _want(type(v) is int, what)
    return v


def _opt_int(v: Any, what: str) -> int | None:
    return None if v is None else _int(v, what)


def _list(v: Any, n: int | None = None, what: str = "list") -> list:
    _want(type(v) is list and (n is None or len(v) == n), what)
    return v


def _bytes(v: Any, what: str) -> bytes | None:
    if v is None:
        return None
    _want(type(v) is str, what)
    try:
        return base64.b64decode(v.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise SnapshotError(f"snapshot corrupt: bad {what}") from None


def _msg(v: Any) -> KMsg:
    return KMsg(*(_int(x, "message descriptor") for x in _list(v, 5, "message descriptor")))


def _proc(v: Any) -> ProcRecord:
    (index, pid, priority, conn, state, signal, flags, fyi, msg, msg2, blktime, seq, bkey,
     call, iproc, carried) = _list(v, 16, "process record")
    _want(type(blktime) in (int, float), "blktime")
    _want(iproc is None or type(iproc) is str, "internal process name")
    bk = _list(bkey, 2, "blocked-list key")
    return ProcRecord(
        index=_int(index, "index"), pid=_int(pid, "pid"), priority=_int(priority, "priority"),
        conn=_opt_int(conn, "connection"), state=_int(state, "state"),
        signal=_int(signal, "signal"), flags=_int(flags, "flags"),
        fyi=tuple(_int(x, "fyi") for x in _list(fyi, KNFYI, "fyi")),
        msg=_msg(msg), msg2=_msg(msg2), blktime=float(blktime), seq=_int(seq, "seq"),
        bkey=(_int(bk[0], "blocked-list key"), _int(bk[1], "blocked-list key")),
        call=_int(call, "call"), iproc=iproc, carried=_bytes(carried, "carried state"))


def _kernel_from_json(v: Any) -> KernelState:
    _want(isinstance(v, dict), "kernel section")
    keys = {"procs", "next_index", "free", "seq", "by_pid", "by_conn", "peers", "stats",
            "watch_seq", "collect_seq", "last_dump"}
    last_dump = v["last_dump"]
    _want(last_dump is None or type(last_dump) in (int, float), "last dump")
    _want(set(v) == keys, "kernel section")
    by_pid = []
    for row in _list(v["by_pid"], what="pid index"):
        pid, idx = _list(row, 2, "pid index")
        by_pid.append((_int(pid, "pid index"),
                       [_int(i, "pid index") for i in _list(idx, what="pid index")]))
    return KernelState(
        procs=[_proc(p) for p in _list(v["procs"], what="process table")],
        next_index=_int(v["next_index"], "next index"),
        free_indexes=[_int(i, "free index") for i in _list(v["free"], what="free indexes")],
        seq=_int(v["seq"], "seq"), by_pid=by_pid,
        by_conn=[tuple(_int(x, "connection index") for x in _list(r, 2, "connection index"))
                 for r in _list(v["by_conn"], what="connection index")],  # type: ignore[misc]
        peers=[tuple(_int(x, "peer") for x in _list(r, 3, "peer"))
               for r in _list(v["peers"], what="peers")],  # type: ignore[misc]
        stats=KernelStats(*(_int(x, "stats") for x in _list(v["stats"], 6, "stats"))),
        watch_seq=_int(v["watch_seq"], "watch seq"),
        collect_seq=_int(v["collect_seq"], "collect seq"),
        last_dump=None if last_dump is None else float(last_dump))


def _conn_from_json(v: Any) -> ConnState:
    fd, pid, uid, pidfd, starttime, inbuf, outbuf = _list(v, 7, "connection")
    return ConnState(fd=_int(fd, "connection"), pid=_int(pid, "connection pid"),
                     uid=_int(uid, "connection uid"), pidfd=_opt_int(pidfd, "pidfd"),
                     starttime=_opt_int(starttime, "start time"),
                     inbuf=_bytes(inbuf, "input bytes") or b"",
                     outbuf=_bytes(outbuf, "output bytes") or b"")


# --- restore: KernelState -> a fresh kernel ------------------------------------------


def restore(state: KernelState, conns: Mapping[int, Conn], table: Iterable[KBoot],
            config: dict[str, Any] | None = None, **kernel_args: Any) -> tuple[Kernel, list[Any]]:
    """A new :class:`Kernel` (built with *kernel_args*) holding *state*, and
    the actions its restarted internal processes asked for.

    *conns* maps the snapshot's connection numbers to the I/O layer's new
    connections; *table* is the boot table the internal processes are
    booted afresh from, by name, with *config*. Raises :class:`SnapshotError`
    if the state is inconsistent or names a connection or an internal process
    that is not there; the half-built kernel is then dropped.
    """
    rows = {kb.name: kb for kb in table}
    k = Kernel(**kernel_args)
    try:
        return _restore(k, state, conns, rows, config or {})
    except SnapshotError:
        raise
    except (AssertionError, ValueError, TypeError, KeyError, IndexError) as e:
        raise SnapshotError(f"snapshot inconsistent: {e or type(e).__name__}") from None


def _restore(k: Kernel, s: KernelState, conns: Mapping[int, Conn], rows: dict[str, KBoot],
             config: dict[str, Any]) -> tuple[Kernel, list[Any]]:
    def conn_of(n: int) -> Conn:
        if n not in conns:
            raise SnapshotError(f"snapshot names connection {n}, which was not carried")
        return conns[n]

    _want(s.next_index >= 0 and s.seq >= 0, "counters")
    internal: list[tuple[KProc, ProcRecord]] = []
    for r in s.procs:
        _want(0 <= r.index < s.next_index and r.index not in k.procs, "process index")
        _want(r.state in (KSREADY, KSSEND, KSRECV), "process state")
        _want(r.seq < s.seq and r.bkey[1] < s.seq, "arrival order")
        is_internal = bool(r.flags & KIPROC)
        _want(is_internal == (r.iproc is not None) and is_internal == (r.conn is None),
              "internal process record")
        p = KProc(index=r.index, pid=r.pid, priority=r.priority,
                  conn=None if r.conn is None else conn_of(r.conn), state=r.state,
                  signal=r.signal, flags=r.flags, fyi=r.fyi, msg=r.msg, msg2=r.msg2,
                  blktime=r.blktime, seq=r.seq, bkey=r.bkey)
        k.procs[r.index] = p
        if is_internal:
            _want(r.state == KSRECV and r.call in (KQRECV, KQSR), "internal process at rest")
            if r.iproc not in rows:
                raise SnapshotError(f"snapshot holds internal process {r.iproc}, "
                                    f"which this daemon's boot table has not")
            internal.append((p, r))
    free = sorted(set(s.free_indexes))
    _want(len(free) == len(s.free_indexes) and not set(free) & set(k.procs)
          and set(free) | set(k.procs) == set(range(s.next_index)), "free indexes")
    heapq.heapify(free)
    k._free_indexes, k._next_index = free, s.next_index
    k._seq = itertools.count(s.seq)
    k.stats = s.stats
    k._watch_seq, k._collect_seq = s.watch_seq, s.collect_seq
    if s.last_dump is not None:
        k._last_dump = s.last_dump
    seen = []
    for pid, idx in s.by_pid:
        _want(idx and pid not in k._by_pid, "pid index")
        lst = [k.procs[i] for i in idx]
        _want(all(p.pid == pid for p in lst), "pid index")
        k._by_pid[pid] = lst
        seen += idx
    _want(sorted(seen) == sorted(k.procs), "pid index")
    for n, index in s.by_conn:
        c = conn_of(n)
        p = k.procs[index]
        _want(p.conn is c and c not in k._by_conn, "connection index")
        k._by_conn[c] = p
    _want(len(k._by_conn) == sum(1 for p in k.procs.values() if not p.internal),
          "connection index")
    for n, pid, uid in s.peers:
        k._peers[conn_of(n)] = (pid, uid)
    for p in k.procs.values():  # the blocked list, clients first
        if not p.internal and p.state in (KSSEND, KSRECV):
            k.pblock.insert(p)
    # internal processes: booted afresh, back in their place if they ask the same
    deferred: list[tuple[KProc, Any]] = []
    for p, r in sorted(internal, key=lambda pr: pr[1].bkey):
        h = IProc(r.iproc or "", k, p, dict(config), restored=r.carried)
        p.iproc = h
        p.coro = rows[h.name].main(h)
        p.state = KSREADY
        try:
            first = p.coro.send(None)
        except StopIteration:
            k._knuke(p)
            continue
        except Exception as e:  # its carried state does not fit the new code
            raise SnapshotError(f"internal process {h.name} cannot take its state back: "
                                f"{e}") from None
        if (isinstance(first, KCall) and first.kind == KQRECV == r.call
                and not first.interruptible and first.req is not None
                and first.req.msg == r.msg):
            p.call, p.msg, p.bkey, p.state = KQRECV, first.req.msg, r.bkey, KSRECV
            p.blktime = r.blktime
            k.pblock.insert(p)
        else:
            deferred.append((p, first))
    k.check_invariants()
    for p, call in deferred:
        k._iproc_call(p, call)
    k._run_iprocs()
    return k, k._take()


__all__ = ["MAGIC", "FORMAT_VERSION", "SnapshotError", "NotAtRest", "ConnState", "ProcRecord",
           "KernelState", "Snapshot", "capture", "encode", "decode", "restore", "adopt_process"]


def adopt_process(k: Kernel, conn: Conn, pid: int, uid: int, *, index: int, priority: int,
                  signal: int = 0, flags: int = 0, fyi: tuple[int, ...] = (0,) * KNFYI) -> bool:
    """Put back an external process a crashed daemon had attached (its index
    kept: the client's library sends it with every request), ready, on
    *conn*; False if *index* is taken (by an internal process of another boot
    table, or twice). The crash state (``lamd.kernelio.crashstate``) is what
    the caller read this from; call in attach order, after :meth:`Kernel.boot`."""
    if index < 0 or index in k.procs or len(k.procs) >= k.max_procs:
        return False
    if index >= k._next_index:
        for i in range(k._next_index, index):
            heapq.heappush(k._free_indexes, i)
        k._next_index = index + 1
    else:
        try:
            k._free_indexes.remove(index)
        except ValueError:
            return False
        heapq.heapify(k._free_indexes)
    k._peers[conn] = (pid, uid)
    p = KProc(index=index, pid=pid, priority=priority, conn=conn, seq=next(k._seq),
              signal=signal, flags=flags & ~(KMSG2 | KIPROC), fyi=tuple(fyi)[:KNFYI])
    k.procs[index] = p
    k._by_pid.setdefault(pid, []).append(p)
    k._by_conn[conn] = p
    return True
