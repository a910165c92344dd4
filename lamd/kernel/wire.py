"""LAM's native wire structs on LP64 (amd64), as stock ``liblam`` writes them.

A LAM client writes a raw ``struct kreq`` to the kernel socket and reads a raw
``struct kreply`` back (``share/kreq/clientio.c``); message bodies follow as
plain bytes, preceded by a raw ``struct nmsg`` when ``KNMSG`` is set. The
layouts below are proven against the C compiler by ``tests/test_layout.py``.

    struct kmsg   { int4 k_event, k_type, k_length, k_flags; char *k_msg; }  24 B
    struct kreq   { int4 kq_req, kq_index, kq_pid, kq_priority, kq_signal;
                    int4 kq_fyi[9]; struct kmsg kq_msg, kq_msg2; }          104 B
    struct kreply { int4 kr_reply, kr_signal, kr_length, kr_event, kr_type,
                    kr_state, kr_priority, kr_index, kr_sigs;
                    int4 kr_fyi[9]; double kr_blktime; }                      80 B
    struct nmsg   { int4 nh_dl_event, nh_dl_link, nh_node, nh_event, nh_type,
                    nh_length, nh_flags; int4 nh_data[8]; char *nh_msg; }     72 B

Pointers (``k_msg``, ``nh_msg``) are client addresses: meaningless to the
kernel, carried through untouched.

The structs made for every message (``KMsg``, ``KReq``, ``KReply``, ``NMsg``) spell
their ``__init__`` out: compiled (``setup.py``), a dataclass's generated
``__init__`` would run as interpreted Python, ten times slower than one
mypyc compiles; the dataclass (``init=False``: no ``__init__`` built to be
thrown away at start) still gives them ``__eq__`` and ``__repr__``.
The structs and sizes are ``Final``: compiled, a module global that is not
is looked up in the module's dict at every use.
"""

from __future__ import annotations

import struct
from .._dataclasses import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Final

from .constants import KNFYI, NHDSIZE

_KMSG = "4iQ"
KREQ_STRUCT: Final = struct.Struct("<5i9i" + _KMSG + _KMSG)
KREPLY_STRUCT: Final = struct.Struct("<18id")
NMSG_STRUCT: Final = struct.Struct("<7i8i4xQ")
KMSG_STRUCT: Final = struct.Struct("<" + _KMSG)

KREQ_SIZE: Final[int] = KREQ_STRUCT.size  # 104
KREPLY_SIZE: Final[int] = KREPLY_STRUCT.size  # 80
NMSG_SIZE: Final[int] = NMSG_STRUCT.size  # 72
KMSG_SIZE: Final[int] = KMSG_STRUCT.size  # 24

assert (KREQ_SIZE, KREPLY_SIZE, NMSG_SIZE, KMSG_SIZE) == (104, 80, 72, 24)

#: Field offsets as the C compiler lays them out (checked against offsetof()).
OFFSETS: dict[str, dict[str, int]] = {
    "kmsg": {"k_event": 0, "k_type": 4, "k_length": 8, "k_flags": 12, "k_msg": 16},
    "kreq": {
        "kq_req": 0, "kq_index": 4, "kq_pid": 8, "kq_priority": 12,
        "kq_signal": 16, "kq_fyi": 20, "kq_msg": 56, "kq_msg2": 80,
    },
    "kreply": {
        "kr_reply": 0, "kr_signal": 4, "kr_length": 8, "kr_event": 12,
        "kr_type": 16, "kr_state": 20, "kr_priority": 24, "kr_index": 28,
        "kr_sigs": 32, "kr_fyi": 36, "kr_blktime": 72,
    },
    "nmsg": {
        "nh_dl_event": 0, "nh_dl_link": 4, "nh_node": 8, "nh_event": 12,
        "nh_type": 16, "nh_length": 20, "nh_flags": 24, "nh_data": 28,
        "nh_msg": 64,
    },
}
SIZES = {"kmsg": KMSG_SIZE, "kreq": KREQ_SIZE, "kreply": KREPLY_SIZE, "nmsg": NMSG_SIZE}

_ZERO_FYI: Final[tuple[int, ...]] = (0,) * KNFYI
_ZERO_DATA: Final[tuple[int, ...]] = (0,) * NHDSIZE
#: ``struct kreply`` whose ``kr_fyi`` is all zeros (nearly every reply): no
#: tuple to unpack into the call, the padding bytes are the zeros
_KREPLY_NOFYI: Final = struct.Struct("<9i%dxd" % (4 * KNFYI))


@dataclass(init=False)
class KMsg:
    """``struct kmsg``: a message descriptor (event, type, length, flags)."""

    event: int = 0
    type: int = 0
    length: int = 0
    flags: int = 0
    msg: int = 0  # the client's k_msg pointer, opaque

    def __init__(self, event: int = 0, type: int = 0, length: int = 0, flags: int = 0,
                 msg: int = 0) -> None:
        self.event = event
        self.type = type
        self.length = length
        self.flags = flags
        self.msg = msg

    def pack(self) -> bytes:
        return KMSG_STRUCT.pack(self.event, self.type, self.length, self.flags, self.msg)


@dataclass(init=False)
class KReq:
    """``struct kreq``: one kernel request as a client writes it."""

    req: int = 0
    index: int = -1
    pid: int = 0
    priority: int = 0
    signal: int = 0
    fyi: tuple[int, ...] = _ZERO_FYI
    msg: KMsg = field(default_factory=KMsg)
    msg2: KMsg = field(default_factory=KMsg)

    def __init__(self, req: int = 0, index: int = -1, pid: int = 0, priority: int = 0,
                 signal: int = 0, fyi: tuple[int, ...] = _ZERO_FYI, msg: KMsg | None = None,
                 msg2: KMsg | None = None) -> None:
        self.req = req
        self.index = index
        self.pid = pid
        self.priority = priority
        self.signal = signal
        self.fyi = fyi
        self.msg = KMsg() if msg is None else msg
        self.msg2 = KMsg() if msg2 is None else msg2

    def pack(self) -> bytes:
        m, m2 = self.msg, self.msg2
        return KREQ_STRUCT.pack(
            self.req, self.index, self.pid, self.priority, self.signal, *self.fyi,
            m.event, m.type, m.length, m.flags, m.msg,
            m2.event, m2.type, m2.length, m2.flags, m2.msg,
        )

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> "KReq":
        v = KREQ_STRUCT.unpack_from(buf, offset)
        return KReq(
            v[0], v[1], v[2], v[3], v[4], v[5:14],
            KMsg(v[14], v[15], v[16], v[17], v[18]),
            KMsg(v[19], v[20], v[21], v[22], v[23]),
        )


@dataclass(init=False)
class KReply:
    """``struct kreply``: the kernel's answer to one request."""

    reply: int = 0
    signal: int = 0
    length: int = 0
    event: int = 0
    type: int = 0
    state: int = 0
    priority: int = 0
    index: int = 0
    sigs: int = 0
    fyi: tuple[int, ...] = _ZERO_FYI
    blktime: float = 0.0

    def __init__(self, reply: int = 0, signal: int = 0, length: int = 0, event: int = 0,
                 type: int = 0, state: int = 0, priority: int = 0, index: int = 0,
                 sigs: int = 0, fyi: tuple[int, ...] = _ZERO_FYI, blktime: float = 0.0) -> None:
        self.reply = reply
        self.signal = signal
        self.length = length
        self.event = event
        self.type = type
        self.state = state
        self.priority = priority
        self.index = index
        self.sigs = sigs
        self.fyi = fyi
        self.blktime = blktime

    def pack(self) -> bytes:
        if self.fyi is _ZERO_FYI:
            return _KREPLY_NOFYI.pack(
                self.reply, self.signal, self.length, self.event, self.type,
                self.state, self.priority, self.index, self.sigs, self.blktime,
            )
        return KREPLY_STRUCT.pack(
            self.reply, self.signal, self.length, self.event, self.type,
            self.state, self.priority, self.index, self.sigs, *self.fyi,
            self.blktime,
        )

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> "KReply":
        v = KREPLY_STRUCT.unpack_from(buf, offset)
        return KReply(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9:18], v[18])


@dataclass(init=False)
class NMsg:
    """``struct nmsg``: the network message header that precedes KNMSG bodies."""

    dl_event: int = 0
    dl_link: int = 0
    node: int = 0
    event: int = 0
    type: int = 0
    length: int = 0
    flags: int = 0
    data: tuple[int, ...] = _ZERO_DATA
    msg: int = 0  # the sender's nh_msg pointer, opaque

    def __init__(self, dl_event: int = 0, dl_link: int = 0, node: int = 0, event: int = 0,
                 type: int = 0, length: int = 0, flags: int = 0,
                 data: tuple[int, ...] = _ZERO_DATA, msg: int = 0) -> None:
        self.dl_event = dl_event
        self.dl_link = dl_link
        self.node = node
        self.event = event
        self.type = type
        self.length = length
        self.flags = flags
        self.data = data
        self.msg = msg

    def pack(self) -> bytes:
        data = self.data
        if len(data) != NHDSIZE:
            data = (tuple(data) + (0,) * NHDSIZE)[:NHDSIZE]
        return NMSG_STRUCT.pack(
            self.dl_event, self.dl_link, self.node, self.event, self.type,
            self.length, self.flags, data[0], data[1], data[2], data[3], data[4], data[5],
            data[6], data[7], self.msg,
        )

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> "NMsg":
        v = NMSG_STRUCT.unpack_from(buf, offset)
        return NMsg(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7:15], v[15])
