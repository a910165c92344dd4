"""What internal processes carry across a re-exec of the daemon (issue 12).

LAM has no counterpart (the C lamd is never replaced under its clients).
A re-executed ``lamd`` boots its internal processes afresh
(:mod:`lamd.kernel.ksnapshot`): whatever one wants kept it returns from
``IProc.carry`` and finds again in ``IProc.restored``. Here:

* bufferd's kept packets (:class:`~lamd.iprocs.bufferd.Buffers`): every
  ``nsend`` not yet ``nrecv``'d, in order per event, with their sequence
  numbers and the space limit a client set (``rbfparms``).

:func:`with_carry` puts these rows in a boot table; they run the very same
code (:class:`~lamd.iprocs.bufferd.BufferDaemon`) around what they carry.
The router carries its own (:func:`lamd.iprocs.router.pack_state`): its
table, which a separate datalink process (``lamd.datalink``) gave it after
boot, and the separate processes waiting for this node's id.
"""

from __future__ import annotations

import struct
from .._dataclasses import replace
from typing import Iterable

from ..kernel.kiproc import IProc, KBoot
from ..kernel.wire import NMSG_SIZE, NMsg
from .bufferd import BufferDaemon, Buffers

_MAGIC = b"BUFFERD1"
_HEAD = struct.Struct("<8sqqqI")  # magic, maxspace, next seq, dropped, packets
_PACKET = struct.Struct("<qI")  # seq, body length (after the struct nmsg)


def pack_buffers(buf: Buffers, dropped: int = 0) -> bytes:
    """bufferd's kept packets as bytes."""
    packets = [(ev, b) for ev, q in buf.events.items() for b in q]
    out = [_HEAD.pack(_MAGIC, buf.maxspace, buf._seq_next, dropped, len(packets))]
    for ev, b in packets:
        if ev != b.head.dl_event:  # kept under its destination event, always
            raise ValueError(f"bufferd packet kept under event {ev}, not {b.head.dl_event}")
        out.append(b.head.pack())
        out.append(_PACKET.pack(b.seq, len(b.body)))
        out.append(b.body)
    return b"".join(out)


def unpack_buffers(data: bytes) -> tuple[Buffers, int]:
    """The :class:`Buffers` and drop count :func:`pack_buffers` made; raises
    ValueError for anything else."""
    try:
        magic, maxspace, seq_next, dropped, n = _HEAD.unpack_from(data)
        if magic != _MAGIC or maxspace < 0 or seq_next < 0:
            raise ValueError("not bufferd's carried state")
        buf = Buffers(maxspace=maxspace)
        off = _HEAD.size
        for _ in range(n):
            head = NMsg.unpack(data, off)
            off += NMSG_SIZE
            seq, length = _PACKET.unpack_from(data, off)
            off += _PACKET.size
            body = data[off:off + length]
            if len(body) != length:
                raise ValueError("bufferd's carried state is truncated")
            off += length
            b = buf.keep(head, bytes(body))
            if seq != -1:
                if seq < 0 or seq in buf._seq_used:
                    raise ValueError("bufferd's carried sequence numbers are wrong")
                b.seq = seq
                buf._seq_used.add(seq)
        if off != len(data):
            raise ValueError("bufferd's carried state has bytes after its end")
        buf._seq_next = seq_next
        return buf, dropped
    except struct.error as e:
        raise ValueError(f"bufferd's carried state is truncated ({e})") from None


async def bufferd(k: IProc) -> None:
    """bufferd (:mod:`lamd.iprocs.bufferd`) with its kept packets carried."""
    d = BufferDaemon(k)
    if k.restored is not None:
        d.buf, d.dropped = unpack_buffers(k.restored)
    k.carry = lambda: pack_buffers(d.buf, d.dropped)
    await d.run()


#: Rows whose state is carried, by name.
CARRIED = {"bufferd": bufferd}


def with_carry(table: Iterable[KBoot]) -> list[KBoot]:
    """*table* with the rows of :data:`CARRIED` carrying their state."""
    return [replace(kb, main=CARRIED[kb.name]) if kb.name in CARRIED else kb for kb in table]


__all__ = ["pack_buffers", "unpack_buffers", "bufferd", "CARRIED", "with_carry"]
