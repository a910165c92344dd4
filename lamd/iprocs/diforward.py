"""diforward: the kernel's side of a dli outside the kernel (issue 11; no
LAM counterpart).

dli acks a frame once it has handed it on to the kernel, and under systemd
it keeps what it handed on (:mod:`lamd.datalink.keep`) so that a new
datalink process, started after a crash, neither loses a frame nor hands
one on twice. Outside the kernel, "handed on" cannot be kept in the same
instant as it happens: a process killed after its write to the kernel and
before its store into the mapping sees the frame resent by its sender, and
would hand it on again (a LAM message of several packets would then take
a packet twice). So a dli outside the kernel does not hand packets on
itself: it sends each frame, with its key, to this internal process, which
does LAM's ``di_forward`` (to bufferd, or with ``NOBUF`` where the router
says) and keeps the key of the last frame it took from each node. The
kernel outlives the datalink process: a frame sent again after a crash
whose key is that last one is not handed on again.

Protocol: dli sends to :data:`EVDIFORWARD` with ``KNMSG``: the packet's
header (as ``di_forward`` makes it) is the ``struct nmsg``, and the body is
the frame's key (:data:`KEY`: the sending node's address and port, its
node id and the frame's sequence number) then the packet's body. It acks
the frame once the body is written to the kernel (``k.flush()``): the
kernel reads bytes written before a crash, and nothing of a body cut short
is handed on (nor its key kept).

Only the key of the last frame per node is kept: dli hands frames on in
order per node, so after a crash the one frame in doubt from a node is the
one after what it kept, and that frame was handed on if and only if it is
the last this process took from the node. The address in the key tells a
node id given to a new node (lamgrow after lamshrink) from the old one: a
new lamd has a new datalink port, while a datalink process started again
keeps its socket and its sequence numbers. The keys cross a re-exec of the
daemon (``IProc.carry``).
"""

from __future__ import annotations

import logging
import socket
import struct

from ..kernel.constants import EVBUFFERD, KNMSG, LAM_BASE_EVENT, MAXNMSGLEN
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from ..ratelog import RateLog
from .nreq import NOBUF, NoRoute, dsend, getroute, my_nodeid

log = logging.getLogger("lamd.iprocs.diforward")

#: dli sends frames here (LAM's events stop at LAM_BASE_EVENT + 24)
EVDIFORWARD = LAM_BASE_EVENT + 40
#: a frame's key: the sender's IPv4 address and port, its node id, the sequence number
KEY = struct.Struct("=4sH2xii")
#: seconds between two lines of one kind about dropped or refused frames
LOG_INTERVAL = 60.0


async def handon(k: IProc, head: NMsg, body: bytes, node_id: int) -> None:
    """The end of LAM's ``di_forward``: packet *head*/*body* to bufferd or,
    with ``NOBUF``, where the router says. Raises :class:`NoRoute`, and
    ValueError when the kernel refuses it."""
    if head.flags & NOBUF:
        await getroute(k, head, node_id)
    else:
        head.dl_event = EVBUFFERD
    await dsend(k, head, body, node_id=node_id)


def frame_key(addr: tuple[str, int], node: int, seq: int) -> bytes:
    """The key of frame *seq* from *node* at *addr* (its datalink address)."""
    return KEY.pack(socket.inet_aton(addr[0]), addr[1], node, seq)


def pack_keys(last: dict[int, bytes]) -> bytes:
    """The last key per node, for a re-exec."""
    return b"".join(struct.pack("=i", node) + key for node, key in sorted(last.items()))


def unpack_keys(data: bytes) -> dict[int, bytes]:
    step = 4 + KEY.size
    return {struct.unpack_from("=i", data, i)[0]: bytes(data[i + 4:i + step])
            for i in range(0, len(data) - step + 1, step)}


async def diforward(k: IProc) -> None:
    """Hand on what dli sends, each frame once, forever."""
    last: dict[int, bytes] = unpack_keys(k.restored) if k.restored else {}
    k.carry = lambda: pack_keys(last)
    badlog = RateLog(log, LOG_INTERVAL)
    while True:
        got = await k.recv(EVDIFORWARD, 0, KEY.size + MAXNMSGLEN, KNMSG)
        head = got.nmsg
        if head is None or len(got.body) < KEY.size:
            badlog.warn("short", "diforward: a message of %d bytes without a frame's key "
                        "dropped", len(got.body))
            continue
        key = bytes(got.body[:KEY.size])
        _, _, node, seq = KEY.unpack(key)
        if last.get(node) == key:
            # handed on before the datalink process that sent it died
            log.info("diforward: frame %d from node %d is handed on already: not again",
                     seq, node)
            continue
        last[node] = key
        try:
            await handon(k, head, got.body[KEY.size:], my_nodeid(k))
        except NoRoute:
            badlog.warn("route", "diforward: a frame for node %d event %d dropped: no route",
                        head.node, head.event)
        except ValueError as e:
            badlog.warn("refused", "diforward: a frame from node %d for node %d event %d "
                        "refused by the kernel: %s", node, head.node, head.event, e)


__all__ = ["EVDIFORWARD", "KEY", "diforward", "frame_key", "handon", "pack_keys", "unpack_keys"]
