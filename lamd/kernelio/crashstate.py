"""The state a crash cannot take: one record per client connection in a
memfd mapping that systemd keeps in its file descriptor store (issue 12).

LAM has no counterpart: the C lamd's clients die with it. A re-exec
(:mod:`.handover`) has time to write a snapshot; a ``SIGKILL`` or a
watchdog ``SIGABRT`` has none. So the I/O layer keeps, from the start, what
a successor needs to serve the clients on, in a shared mapping of a memfd
stored as ``FDNAME=state`` (:mod:`.fdstore`): plain stores into memory, no
system call per request. Every client connection is stored beside it as
``FDNAME=c<slot>``; the record of slot *n* describes the connection stored
as ``c<n>``.

The mapping: a 64-byte header (magic ``LAMDCRSH``, format version, record
size, number of slots, the daemon's uid, a BLAKE2b-128 digest of the
session directory, a CRC-32 of the header), then one fixed-size record per
slot. A record has two parts. The process part, with a CRC-32: whether the
slot is in use, whether its process is attached, pid, uid, index,
priority, LAM signal bits, kernel flags, attach order, start time. The
request part, rewritten with every request and not covered by the CRC (a
request read back from it is checked by the kernel as any client's is):
the request state, the slot of the other end of a body in flight, the
block order, and a whole ``struct kreq`` (the request the client waits on;
while a body is in flight, its :class:`Move` from ``kq_msg`` on).

Request states (``req``):

* :data:`REQ_NONE`: the client owes and is owed nothing: idle or computing;
* :data:`REQ_PENDING`: the client waits for the reply to the stored
  request, and not one byte of that reply was written: a successor makes
  the request again for it (a blocked receiver carries on);
* :data:`REQ_REPLYING`: a reply or a message body is on its way, to or
  from the client: unless the body can go on (:class:`Move`), a successor
  cannot know where in the stream the client is, so it closes the
  connection, and liblam reports LAM's error rather than hang;
* :data:`REQ_RECEIVING`: an idle client's next request is being received
  straight into the record (:func:`arm_receive`): pending if it came.

:func:`decode` refuses, with one :class:`CrashStateError` line, a mapping
that is truncated, of another format or record size, another uid or
session, or has any record whose process part fails its CRC or that is
inconsistent (bad flags, an index used twice): the daemon then starts
clean, never half-restored.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from _blake2 import blake2b  # type: ignore[import]  # hashlib's own, without its OpenSSL (issue 13)
from .._dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Final

from ..kernel.constants import KNFYI
from ..kernel.wire import KREQ_SIZE, KReq

MAGIC: Final = b"LAMDCRSH"
#: Bumped whenever a record's meaning changes; a daemon reads only its own.
FORMAT_VERSION: Final = 1
#: magic, version, record size, slots, uid, session digest, crc of the rest
HEADER: Final = struct.Struct("<8sIIII16s")
HEADER_SIZE: Final = 64
REQ_NONE: Final = 0
REQ_PENDING: Final = 1
REQ_REPLYING: Final = 2
REQ_RECEIVING: Final = 3
#: the part a CRC-32 covers: used, attached, pid, uid, index, priority,
#: signal, flags, attach order, start time
_IDENT: Final = struct.Struct("<BBxxiIiiiiQQ")
_CRC: Final = struct.Struct("<I")
#: the part rewritten with every request (no CRC: the request is checked as
#: any client's is): req, the slot of the other end of the body in flight
#: (-1: none), block order, then the ``struct kreq``
_REQ: Final = struct.Struct("<BxxxiQ")
REQ_AT: Final = 48  # _IDENT.size + _CRC.size (checked below)
KREQ_AT: Final = REQ_AT + 16  # + _REQ.size
RECORD_SIZE: Final = KREQ_AT + KREQ_SIZE
assert REQ_AT == _IDENT.size + _CRC.size and KREQ_AT == REQ_AT + _REQ.size
_EMPTY: Final = bytes(RECORD_SIZE)
#: ``kq_req`` written before a request is received straight into the record
#: (:data:`REQ_RECEIVING`): still there, nothing was received
SENTINEL: Final = struct.pack("<i", 0x7FFFFFFF)


#: what records are written into: the mapping, or a copy
Buf = bytearray | memoryview | mmap.mmap


class CrashStateError(ValueError):
    """A crash state that cannot be trusted; the message is one log line."""


@dataclass(slots=True)
class Record:
    """What a successor learns of one stored connection."""

    slot: int
    pid: int
    uid: int
    attached: bool = False
    req: int = REQ_NONE
    index: int = -1
    priority: int = 0
    signal: int = 0
    flags: int = 0
    seq: int = 0  # attach order (the lists' tie-break, the kill file's order)
    bseq: int = 0  # block order (a successor makes the requests again in it)
    starttime: int = 0  # 0: not read yet
    kreq: bytes = bytes(KREQ_SIZE)  # the pending request, or the process's fyi
    partner: int = -1  # REQ_REPLYING: the other end of the body in flight

    @property
    def request(self) -> KReq:
        return KReq.unpack(self.kreq)


def session_digest(session: str) -> bytes:
    return blake2b(session.encode(), digest_size=16, person=b"lamd-crash").digest()


def size_for(nslots: int) -> int:
    """Bytes of a mapping with *nslots* records."""
    return HEADER_SIZE + nslots * RECORD_SIZE


def header(nslots: int, *, uid: int, session: str) -> bytes:
    head = HEADER.pack(MAGIC, FORMAT_VERSION, RECORD_SIZE, nslots, uid, session_digest(session))
    head += _CRC.pack(zlib.crc32(head))
    return head + bytes(HEADER_SIZE - len(head))


def encode_record(r: Record) -> bytes:
    """The record bytes of *r* (slot in use)."""
    if len(r.kreq) != KREQ_SIZE:
        raise ValueError("a record's request is one struct kreq")
    ident = _IDENT.pack(1, 1 if r.attached else 0, r.pid, r.uid, r.index, r.priority,
                        r.signal, r.flags, r.seq, r.starttime)
    return ident + _CRC.pack(zlib.crc32(ident)) + _REQ.pack(r.req, r.partner, r.bseq) + r.kreq


def record_offset(slot: int) -> int:
    return HEADER_SIZE + slot * RECORD_SIZE


def write_request(buf: Buf, slot: int, req: int, kreq: bytes,
                  bseq: int = 0) -> None:
    """Only the request part of a record (the process is unchanged)."""
    off = record_offset(slot) + REQ_AT
    buf[off:off + _REQ.size + KREQ_SIZE] = _REQ.pack(req, -1, bseq) + kreq


def write_ident(buf: Buf, slot: int, ident: tuple) -> None:
    """Only the process part of a record: *ident* is (attached, pid, uid,
    index, priority, signal, flags, attach order, start time)."""
    off = record_offset(slot)
    head = _IDENT.pack(1, *ident)
    buf[off:off + REQ_AT] = head + _CRC.pack(zlib.crc32(head))


def write_state(buf: Buf, slot: int, req: int, bseq: int = 0) -> None:
    """Only the request state and block order (the request stays as it is)."""
    _REQ.pack_into(buf, record_offset(slot) + REQ_AT, req, -1, bseq)


#: A body in flight, in a REQ_REPLYING record's ``struct kreq`` after its
#: fixed part (``kq_msg`` onwards): role, length, bytes skipped, whether the
#: receiver had its reply (and padding) all written when the body started,
#: the request the sender was answered on, and body bytes moved so far
#: (read from the sender, or written to the receiver)
MOVE_AT: Final = KREQ_AT + 56
_MOVE: Final = struct.Struct("<iiiiiQ")
_MOVED: Final = struct.Struct("<Q")  # the last field of _MOVE, at MOVE_AT + 20
_I32: Final = struct.Struct("<i")
MOVE_SRC: Final = 1
MOVE_DST: Final = 2


@dataclass(slots=True, frozen=True)
class Move:
    role: int
    length: int
    skip: int
    ready: int
    code: int
    moved: int


def write_move(buf: Buf, slot: int, m: Move) -> None:
    write_move_of(buf, slot, m.role, m.length, m.skip, m.ready, m.code, m.moved)


def write_move_of(buf: Buf, slot: int, role: int, length: int, skip: int, ready: int,
                  code: int, moved: int) -> None:
    """:func:`write_move` without a :class:`Move` (once per body)."""
    _MOVE.pack_into(buf, HEADER_SIZE + slot * RECORD_SIZE + MOVE_AT, role, length, skip, ready,
                    code, moved)


def write_moved(buf: Buf, slot: int, moved: int) -> None:
    _MOVED.pack_into(buf, HEADER_SIZE + slot * RECORD_SIZE + MOVE_AT + 20, moved)


def read_move(r: "Record") -> Move:
    return Move(*_MOVE.unpack_from(r.kreq, MOVE_AT - KREQ_AT))


def write_partner(buf: Buf, slot: int, partner: int) -> None:
    """A body starts between *slot* and *partner* (both REQ_REPLYING already)."""
    _I32.pack_into(buf, HEADER_SIZE + slot * RECORD_SIZE + REQ_AT + 4, partner)


def arm_receive(buf: Buf, slot: int) -> int:
    """An idle client's next request is about to be received straight into
    its record: mark it so, and return the offset of the ``struct kreq`` to
    receive into. A successor that finds :data:`REQ_RECEIVING` with the
    :data:`SENTINEL` still there knows nothing came."""
    off = record_offset(slot)
    buf[off + REQ_AT] = REQ_RECEIVING
    buf[off + KREQ_AT:off + KREQ_AT + 4] = SENTINEL
    return off + KREQ_AT


def write_record(buf: Buf, r: Record) -> None:
    """Store *r* in its slot of *buf* (the mapping): memory stores only."""
    off = HEADER_SIZE + r.slot * RECORD_SIZE
    buf[off:off + RECORD_SIZE] = encode_record(r)


def clear_record(buf: Buf, slot: int) -> None:
    off = HEADER_SIZE + slot * RECORD_SIZE
    buf[off:off + RECORD_SIZE] = _EMPTY


def fyi_request(fyi: tuple[int, ...]) -> bytes:
    """A request field holding only a process's ``fyi`` words (no request)."""
    words = tuple(fyi)[:KNFYI]
    return KReq(req=-1, fyi=words + (0,) * (KNFYI - len(words))).pack()


def decode(data: bytes | bytearray | memoryview, *, uid: int, session: str) -> dict[int, Record]:
    """The records in use in *data*, by slot; raises :class:`CrashStateError`."""
    data = memoryview(data)
    if len(data) < HEADER_SIZE:
        raise CrashStateError(f"crash state truncated: {len(data)} bytes, no header")
    magic, version, recsize, nslots, s_uid, digest = HEADER.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, HEADER.size)
    if magic != MAGIC:
        raise CrashStateError("crash state: not a lamd crash state (bad magic)")
    if zlib.crc32(data[:HEADER.size]) != crc:
        raise CrashStateError("crash state: header fails its checksum")
    if version != FORMAT_VERSION or recsize != RECORD_SIZE:
        raise CrashStateError(f"crash state of format {version} (record {recsize} bytes); "
                              f"this lamd reads format {FORMAT_VERSION} ({RECORD_SIZE} bytes)")
    if s_uid != uid:
        raise CrashStateError(f"crash state of uid {s_uid}, not this daemon's uid {uid}")
    if digest != session_digest(session):
        raise CrashStateError(f"crash state of another session than {session}")
    if len(data) < size_for(nslots):
        raise CrashStateError(f"crash state truncated: {len(data)} bytes for {nslots} slots "
                              f"({size_for(nslots)} needed)")
    out: dict[int, Record] = {}
    indexes: set[int] = set()
    for slot in range(nslots):
        off = HEADER_SIZE + slot * RECORD_SIZE
        rec = data[off:off + RECORD_SIZE]
        if rec[0] == 0:
            if rec != _EMPTY:
                raise CrashStateError(f"crash state: free slot {slot} is not empty")
            continue
        (crc,) = _CRC.unpack_from(rec, _IDENT.size)
        if zlib.crc32(rec[:_IDENT.size]) != crc:
            raise CrashStateError(f"crash state: record {slot} fails its checksum")
        (used, attached, pid, r_uid, index, priority, sig, flags, seq,
         starttime) = _IDENT.unpack_from(rec)
        req, partner, bseq = _REQ.unpack_from(rec, REQ_AT)
        kreq = bytes(rec[KREQ_AT:])
        if (used != 1 or attached > 1 or req > REQ_RECEIVING or any(rec[REQ_AT + 1:REQ_AT + 4])
                or partner < -1 or partner >= nslots):
            raise CrashStateError(f"crash state: record {slot} has bad flags")
        if req == REQ_RECEIVING:
            # the successor's question: did the request arrive before the crash?
            req = REQ_NONE if kreq[:4] == SENTINEL else REQ_PENDING
            bseq = (1 << 63) - 1
        if r_uid != uid or pid <= 0:
            raise CrashStateError(f"crash state: record {slot} names pid {pid} uid {r_uid}")
        if attached:
            if index < 0 or index in indexes:
                raise CrashStateError(f"crash state: record {slot} has index {index} "
                                      "(negative or used twice)")
            indexes.add(index)
        out[slot] = Record(slot, pid, r_uid, bool(attached), req, index, priority, sig, flags,
                           seq, bseq, starttime, kreq, partner)
    return out


__all__ = ["MAGIC", "FORMAT_VERSION", "HEADER_SIZE", "RECORD_SIZE", "REQ_NONE", "REQ_PENDING",
           "REQ_REPLYING", "REQ_RECEIVING", "SENTINEL", "CrashStateError", "Record", "session_digest", "size_for", "header",
           "encode_record", "record_offset", "write_request", "write_ident", "write_state", "write_partner", "Move", "MOVE_SRC", "MOVE_DST", "write_move", "write_moved", "read_move", "arm_receive", "write_record", "clear_record", "fyi_request", "decode"]
