"""The datalink's datagrams, as LAM's ``dl_inet.h`` lays them out (sans-IO).

Two kinds of UDP datagram travel between lamds:

* a **frame** (``struct dlframe``), sent by dlo_inet (from its own ephemeral
  socket) to a node's dli_inet port: a 60-byte header (``DLMINFRAMELEN``)
  and up to ``MAXNMSGLEN`` (8 KiB) of message body::

      int4 dlf_src_node      sending node
      int4 dlf_seqnum        per-link sequence number (modulo DLMAXSEQ)
      struct dlheader dlf_msghead:
          int4 dlh_node, dlh_event, dlh_type, dlh_length, dlh_flags
          int4 dlh_data[NHDSIZE]
      char dlf_msg[dlh_length]

* an **ack** (``struct dlack``, 8 bytes), sent by dli_inet back to the
  frame's source address (dlo's socket): ``dla_seqnum``, ``dla_destid``
  (the acking node).

Byte order: every int4 of the header and ack is in "Trollius byte order"
(``ltoti4``/``ttoli4`` of ``t_types.h``: big-endian). ``dlo_outgoing`` sets
``DTBO`` in ``dlh_flags`` and converts the user part once (``_ltot_usrnmsg``
of ``share/etc/nmsgconv.c``): ``dlh_data`` as int4s unless the flags say
``DRAWDATA`` (or floats), the body only when the flags type it (``DINT4MSG``,
``DFLT4MSG``, ``DFLT8MSG``, ``DINT2MSG``); dli_inet converts back
(``_ttol_usrnmsg``) only for a message whose destination is this node.
:func:`usr_to_host` / :func:`usr_to_wire` are those two conversions.

The codec keeps ``dlh_data`` as the 32 bytes on the wire, so that a decoded
frame re-encodes byte for byte whatever its flags; :meth:`DLFrame.data_words`
reads them as LAM would.
"""

from __future__ import annotations

import array
import struct
import sys
from .._dataclasses import dataclass, field

from ..kernel.constants import MAXNMSGLEN, NHDSIZE
from ..kernel.wire import NMsg

# dl_inet.h
DLDEFPORT = 5555                # default dl_inet port (unused by lamboot)
DLMAXSEQ = 0x40000000           # sequence numbers are modulo this
DOSLOTCNT = 8                   # dlo's window slots
DOMAXPENDING = 3                # unacked frames per link
DOMAXRESEND = 300               # resends of one frame before a link is faulty

# net.h: byte order and the typed-data flags (the same values as
# lamd.iprocs.nreq's, which imports the datalink: defined here, not imported)
DTBO = 0x100
DRAWDATA = 0x10000
DINT4DATA = 0x20000
DMSKDATA = 0xF0000
DMSKMSG = 0x1F00000
DFLT4DATA = 0x40000
DFLT8DATA = 0x80000
DRAWMSG = 0x100000
DINT4MSG = 0x200000
DFLT4MSG = 0x400000
DFLT8MSG = 0x800000
DINT2MSG = 0x1000000

#: ``struct dlframe`` without ``dlf_msg``: src node, seqnum, dlheader
DLFRAME_HEAD = struct.Struct(f">7i{NHDSIZE * 4}s")
DLMINFRAMELEN = DLFRAME_HEAD.size          # 60
#: ``struct dlack``
DLACK = struct.Struct(">2i")
DLACKLEN = DLACK.size                      # 8

_NATIVE_BIG = sys.byteorder == "big"


class FrameError(ValueError):
    """A datagram that is neither a well-formed frame nor an ack."""


def seqinc(a: int) -> int:
    """``seqinc``: the sequence number after *a*."""
    return (a + 1) % DLMAXSEQ


def seqmin(a: int, b: int) -> int:
    """``seqmin``: the earlier of two sequence numbers, modulo wrap-around."""
    if b - a > 0:
        return b if b - a > DLMAXSEQ // 2 else a
    return a if a - b > DLMAXSEQ // 2 else b


@dataclass(frozen=True)
class DLAck:
    """``struct dlack``: node *dla_destid* acknowledges frame *dla_seqnum*."""

    dla_seqnum: int
    dla_destid: int


    def encode(self) -> bytes:
        return DLACK.pack(self.dla_seqnum, self.dla_destid)

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> "DLAck":
        if len(buf) != DLACKLEN:
            raise FrameError(f"ack of {len(buf)} bytes, not {DLACKLEN}")
        return cls(*DLACK.unpack(buf))


@dataclass(frozen=True)
class DLFrame:
    """``struct dlframe``: a message (or one packet of a long one) on a link."""

    dlf_src_node: int
    dlf_seqnum: int
    dlh_node: int
    dlh_event: int
    dlh_type: int
    dlh_length: int
    dlh_flags: int
    dlh_data: bytes = bytes(NHDSIZE * 4)     # as on the wire (see module doc)
    dlf_msg: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if len(self.dlh_data) != NHDSIZE * 4:
            raise FrameError(f"dlh_data of {len(self.dlh_data)} bytes")
        if not 0 <= self.dlh_length <= MAXNMSGLEN or len(self.dlf_msg) != self.dlh_length:
            raise FrameError(f"dlh_length {self.dlh_length} with a body of "
                             f"{len(self.dlf_msg)} bytes (at most {MAXNMSGLEN})")

    def encode(self) -> bytes:
        return DLFRAME_HEAD.pack(
            self.dlf_src_node, self.dlf_seqnum, self.dlh_node, self.dlh_event,
            self.dlh_type, self.dlh_length, self.dlh_flags, self.dlh_data) + self.dlf_msg

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> "DLFrame":
        """A frame from a whole datagram: the header, then exactly
        ``dlh_length`` bytes of body (LAM's dli reads the body into a
        ``MAXNMSGLEN`` buffer and trusts ``dlh_length``; a datagram that does
        not match it is refused here)."""
        if len(buf) < DLMINFRAMELEN:
            raise FrameError(f"frame of {len(buf)} bytes, shorter than {DLMINFRAMELEN}")
        src, seq, node, event, typ, length, flags, data = DLFRAME_HEAD.unpack_from(buf)
        if not 0 <= length <= MAXNMSGLEN:
            raise FrameError(f"dlh_length {length} out of range")
        if len(buf) != DLMINFRAMELEN + length:
            raise FrameError(f"dlh_length {length} but {len(buf) - DLMINFRAMELEN} "
                             "bytes of body")
        return cls(src, seq, node, event, typ, length, flags, data, bytes(buf[DLMINFRAMELEN:]))

    def data_words(self) -> tuple[int, ...]:
        """``dlh_data`` as int4s in Trollius order (meaningless for DRAWDATA)."""
        return struct.unpack(f">{NHDSIZE}i", self.dlh_data)

    def to_nmsg(self) -> tuple[NMsg, bytes]:
        """What dli_inet hands on for a message to this node: the header
        converted to host order, ``DTBO`` cleared and the user part
        converted (``_ttol_sysnmsg`` + ``_ttol_usrnmsg``)."""
        flags = self.dlh_flags
        data, body = (usr_to_host(flags, self.dlh_data, self.dlf_msg)
                      if flags & DTBO else (self.dlh_data, self.dlf_msg))
        head = NMsg(node=self.dlh_node, event=self.dlh_event, type=self.dlh_type,
                    length=self.dlh_length, flags=flags & ~DTBO,
                    data=struct.unpack(f"={NHDSIZE}i", data))
        return head, body

    @classmethod
    def from_nmsg(cls, src_node: int, seqnum: int, head: NMsg, body: bytes) -> "DLFrame":
        """What dlo_inet sends for *head* (host order, as the kernel holds
        it): ``DTBO`` set and the user part converted once."""
        raw = struct.pack(f"={NHDSIZE}i", *head.data)
        flags = head.flags
        if not flags & DTBO:
            flags |= DTBO
            raw, body = usr_to_wire(flags, raw, body)
        return cls(src_node, seqnum, head.node, head.event, head.type, len(body),
                   flags, raw, bytes(body))


def decode(buf: bytes | bytearray | memoryview) -> DLFrame | DLAck:
    """Any datalink datagram: an 8-byte ack or a frame (dli only ever
    receives frames on its port, dlo only acks on its socket)."""
    if len(buf) == DLACKLEN:
        return DLAck.decode(buf)
    return DLFrame.decode(buf)


# --------------------------------------------------------------------------
# the user part's byte order (share/etc/nmsgconv.c)

def _swap(buf: bytes, width: int) -> bytes:
    """Reverse each *width*-byte item of *buf*; a tail shorter than one item
    is left as it is (LAM converts ``length / sizeof(item)`` items)."""
    if _NATIVE_BIG or width == 1:
        return buf
    n = len(buf) // width * width
    a = array.array(_ITEM[width], buf[:n])
    a.byteswap()  # 0.24 µs for nh_data's 32 bytes, against 0.63 by slices
    return a.tobytes() + buf[n:] if n < len(buf) else a.tobytes()


_ITEM = {2: "H", 4: "I", 8: "Q"}


_DATA_WIDTH = {0: 4, DINT4DATA: 4, DFLT4DATA: 4, DFLT8DATA: 8}
_MSG_WIDTH = {DINT4MSG: 4, DFLT4MSG: 4, DFLT8MSG: 8, DINT2MSG: 2}


def usr_to_wire(flags: int, data: bytes, body: bytes) -> tuple[bytes, bytes]:
    """``_ltot_usrnmsg``: ``nh_data`` and the body from host to Trollius
    order as *flags* type them (``DRAWDATA``/untyped body: untouched)."""
    w = _DATA_WIDTH.get(flags & DMSKDATA)
    if w:
        data = _swap(data, w)
    w = _MSG_WIDTH.get(flags & DMSKMSG)
    if w and body:
        body = _swap(body, w)
    return data, body


#: the conversion is its own inverse (a byte swap per item)
usr_to_host = usr_to_wire

__all__ = [
    "DLAck", "DLFrame", "FrameError", "decode", "seqinc", "seqmin",
    "usr_to_host", "usr_to_wire", "DLMINFRAMELEN", "DLACKLEN", "DLMAXSEQ",
    "DOSLOTCNT", "DOMAXPENDING", "DOMAXRESEND", "DRAWDATA",
]
