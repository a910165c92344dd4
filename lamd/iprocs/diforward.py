"""diforward: the kernel's side of a dli outside the kernel (issue 11; no
LAM counterpart).

dli acks a frame once it has handed it on to the kernel, and under systemd
it keeps what it handed on (:mod:`lamd.datalink.keep`) so that a new
datalink process, started after a crash, neither loses a frame nor hands
one on twice. Outside the kernel "handed on" cannot be kept in the same
instant as it happens: the dead process may have written a frame's packet
to the kernel and not yet kept that it did (its sender then resends it,
and LAM's long messages, split into packets, would take the packet twice),
or the other way round (lost). So a dli outside the kernel does not hand a
packet on itself: it gives it, with the frame's key, to this internal
process, which does LAM's ``di_forward`` (to bufferd, or with ``NOBUF``
where the router says) and keeps the key of the last frame it handed on
from each node. The kernel outlives the datalink process; a frame given
again after a crash whose key is that last one is not handed on again.
Each frame is handed on exactly once.

Protocol (one ``ksr`` of dli per frame): a send to :data:`EVDIFORWARD`
with ``KNMSG``, the packet's header (as ``di_forward`` makes it) as the
``struct nmsg`` and as body the key (:data:`KEY`: the sending node's
address and port, its node id and the frame's sequence number) then the
packet's body; the
receive half on :data:`EVDIFORWARD_DONE` gets, with ``KTRY``, an empty
message whose type says what became of it (:data:`HANDED`,
:data:`DUPLICATE`, :data:`NO_ROUTE`, :data:`REFUSED`) and whose header's
first two data words are the key's node and sequence number. A dli that
died meanwhile is not waited for (KTRY: nobody receives, nothing happens).

Only the key of the last frame per node is kept: dli hands frames on in
order per node, so after a crash the one frame in doubt for a node is the
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

from ..kernel.constants import EVBUFFERD, KNMSG, KTRY, LAM_BASE_EVENT, MAXNMSGLEN
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from ..ratelog import RateLog
from .nreq import NOBUF, NoRoute, data_words, dsend, getroute

log = logging.getLogger("lamd.iprocs.diforward")

#: dli gives frames here (LAM's events stop at LAM_BASE_EVENT + 24)
EVDIFORWARD = LAM_BASE_EVENT + 40
#: and learns here what became of each
EVDIFORWARD_DONE = LAM_BASE_EVENT + 41
#: a frame's key: the sender's IPv4 address and port, its node id, the sequence number
KEY = struct.Struct("=4sH2xii")
# what became of a frame (the type of the answer)
HANDED = 1
DUPLICATE = 2
NO_ROUTE = 4
REFUSED = 8
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
    """Hand on what dli gives, each frame once, forever."""
    last: dict[int, bytes] = unpack_keys(k.restored) if k.restored else {}
    k.carry = lambda: pack_keys(last)
    badlog = RateLog(log, LOG_INTERVAL)
    while True:
        got = await k.recv(EVDIFORWARD, 0, KEY.size + MAXNMSGLEN, KNMSG)
        if got.nmsg is None or len(got.body) < KEY.size:
            badlog.warn("short", "diforward: a message of %d bytes without a frame's key "
                        "dropped", len(got.body))
            continue
        key = bytes(got.body[:KEY.size])
        _, _, node, seq = KEY.unpack(key)
        if last.get(node) == key:
            what = DUPLICATE   # handed on before the datalink process that gave it died
        else:
            last[node] = key
            what = HANDED
            head = got.nmsg
            try:
                await handon(k, head, got.body[KEY.size:], k.config["identity"].node_id)
            except NoRoute:
                what = NO_ROUTE
            except ValueError as e:
                what = REFUSED
                badlog.warn("refused", "diforward: a frame from node %d for node %d event %d "
                            "refused by the kernel: %s", node, head.node, head.event, e)
        k.try_send(EVDIFORWARD_DONE, what, b"", KNMSG | KTRY,
                   nmsg=NMsg(event=EVDIFORWARD_DONE, type=what, data=data_words(node, seq)))


__all__ = ["EVDIFORWARD", "EVDIFORWARD_DONE", "KEY", "HANDED", "DUPLICATE", "NO_ROUTE",
           "REFUSED", "diforward", "frame_key", "handon", "pack_keys", "unpack_keys"]
