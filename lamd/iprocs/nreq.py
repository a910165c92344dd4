"""Network messages for internal processes: LAM's ``nsend``/``nrecv``/``dsend``.

In the C lamd the internal processes link against their own ``nsend``,
``nrecv`` and ``getroute`` (``otb/sys/lamd/nsend.c``, ``nrecv.c``,
``rreq.c``) and the shared ``dsend``/``dsfr`` (``share/nreq/``). This module
is the same thing over :class:`lamd.iproc.IProc`:

* :func:`nsend` sends one packet (internal messages never exceed
  ``MAXNMSGLEN``): to the local node through bufferd (``EVBUFFERD``), with
  ``NOBUF`` straight to the destination event;
* :func:`nrecv` asks bufferd for a buffered packet and waits for it in the
  same kernel call (``BFQRECV`` then receive, LAM's ``dsfr``), or with
  ``NOBUF`` receives straight from the kernel (``frecv``);
* :func:`dsend` is the datalink send: kernel type and flags as LAM codes them.

The constants are ``net.h``'s, ``rreq.h``'s and ``bfreq.h``'s.
"""

from __future__ import annotations

import struct
from .._dataclasses import dataclass
from typing import Awaitable

from ..kernel.constants import (
    EVBUFFERD, EVROUTER, KNMSG, KTRACE, KTRY, MAXNMSGLEN, NHDSIZE, NOTEVENT,
)
from ..kernel.kiproc import IProc, Received
from ..kernel.wire import KReply, NMsg

# --- net.h ----------------------------------------------------------------
NOTNODEID = -1
NOTLINKID = -1
NOTNODETYPE = -1
LOCAL = -2

NT_ITB, NT_CAST, NT_WASTE, NT_DISK, NT_TUBE = 0x01, 0x02, 0x04, 0x08, 0x10
NT_ALL, NT_JONES, NT_BOOT, NT_ME, NT_ORIGIN = 0x1F, 0x20, 0x40, 0x80, 0x100

# nh_flags
NOBUF = 0x10
N2ND = 0x40
DTBO = 0x100
DDLI = 0x200
NREEL = 0x400
NMORE = 0x1000
DRAWDATA = 0x10000
DINT4DATA = 0x20000
DMSKDATA = 0xF0000
DRAWMSG = 0x100000
DINT4MSG = 0x200000
DMSKMSG = 0x1F00000

# datalink message types (k_type of a forwarded network message)
DLALL, DLUSR, DLSYS, DLI, DLCTL = 0, 1, 2, 4, 8


@dataclass(slots=True)
class Identity:
    """This node's id and its origin's, as LAM's ``getnodeid``/``getorigin``
    find them: the router's ``NT_ME`` and ``NT_ORIGIN`` entries. One object
    is shared (``config["identity"]``) by every process of one kernel, and
    by the services of one separate process, so that a universe the router
    learns after boot (a separate datalink process's ``RQSETROUTES``, LAM's
    ``initrouter``) changes it for all of them at once."""

    node_id: int = 0
    origin: int = 0


def my_nodeid(k: IProc) -> int:
    """``getnodeid()``: this node's id, as the router's table says now."""
    ident = k.config.get("identity")
    if ident is not None:
        return ident.node_id
    return int(k.config.get("node_id", 0))


# --- bfreq.h --------------------------------------------------------------
BFQWIPE, BFQRECV, BFQPROBE, BFQSTATE = 0, 1, 2, 3
BFQSWEEP, BFQSWEEP1, BFQSPACE, BFQLOOK = 4, 5, 6, 7
BFQMAX = 8
BFDEFSPACE = 0x800000

#: ``struct bfreq`` in ``nh_data``: bfq_src_node, bfq_src_event, bfq_req,
#: bfq_maxspace, bfq_event (bfq_seq), bfq_type, bfq_maxtbl, bfq_flags.
BFREQ = struct.Struct("<8i")
#: ``struct bfreply`` in ``nh_data``: bfr_reply, bfr_type, bfr_maxspace,
#: bfr_length, bfr_flags, bfr_nspace (bfr_data0), bfr_nbuf (bfr_data1), bfr_index.
BFREPLY = BFREQ
#: ``struct bfsync`` (bfselect's list of synchronization points, in the body).
BFSYNC = struct.Struct("<2i")
#: ``struct bfstatus``: node, event, type, length, flags, seq, data[8].
BFSTATUS = struct.Struct("<6i8i")

INT4 = struct.Struct("<i")


def int4(v: int) -> int:
    """*v* wrapped to a signed 32-bit ``int4`` (as C would store it)."""
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


def data_words(*words: int) -> tuple[int, ...]:
    """An ``nh_data[8]`` array from the leading *words*, zero filled."""
    w = tuple(int4(x) for x in words)
    return (w + (0,) * NHDSIZE)[:NHDSIZE]


@dataclass(slots=True)
class NetMsg:
    """A received network message: its ``struct nmsg`` header and body."""

    head: NMsg
    body: bytes
    ktype: int = 0  # the kernel type it was sent with (k_type)

    @property
    def data(self) -> tuple[int, ...]:
        return tuple(self.head.data)


def received(got: Received) -> NetMsg:
    """Turn a kernel receive into a :class:`NetMsg` (header is never None)."""
    head = got.nmsg if got.nmsg is not None else NMsg()
    return NetMsg(head, got.body, got.reply.type)


def dsend(k: IProc, head: NMsg, body: bytes = b"", *, node_id: int = 0) -> Awaitable[KReply]:
    """LAM's ``dsend``: hand one packet to the kernel for event ``nh_dl_event``.

    A packet for its final event on this node keeps its type and flags; a
    packet for a datalink process (bufferd, dlo) is typed DLUSR/DLSYS and
    keeps only KTRY/KTRACE, exactly as ``share/nreq/dsend.c`` codes it.
    """
    ktype, kflags = _dsend_kmsg(head, node_id)
    return k.send(head.dl_event, ktype, body, kflags, nmsg=head, length=len(body))


def dtry_send(k: IProc, head: NMsg, body: "bytes | memoryview" = b"", *,
              node_id: int = 0) -> KReply:
    """LAM's ``dtry_send``: :func:`dsend` with KTRY, made at once
    (:meth:`IProc.try_send`): the reply's ``reply`` is EWOULDBLOCK when
    nobody is blocked on ``nh_dl_event``."""
    ktype, kflags = _dsend_kmsg(head, node_id)
    return k.try_send(head.dl_event, ktype, body, kflags | KTRY, nmsg=head)


def _dsend_kmsg(head: NMsg, node_id: int) -> tuple[int, int]:
    """``dsend``'s kernel type and flags for *head* (clears DDLI as it does)."""
    my_node = LOCAL if head.node == LOCAL else node_id
    if head.dl_event == head.event and head.node == my_node:
        return head.type, KNMSG | head.flags
    ktype = DLUSR if head.event >= 0 else DLSYS
    kflags = KNMSG | (head.flags & (KTRY | KTRACE))
    if head.flags & DDLI:
        ktype |= DLI
        head.flags &= ~DDLI
    return ktype, kflags


class NoRoute(LookupError):
    """``getroute`` found no route to the node (LAM's ``EBADNODE``)."""


#: rreq.h: RQGETROUTE (the router's request code)
_RQGETROUTE = 0


async def getroute(k: IProc, head: NMsg, node_id: int = 0) -> NMsg:
    """LAM's ``getroute``: fill ``nh_dl_event``/``nh_dl_link`` of *head* in
    place (and return it): this node's packets go to their own event, other
    nodes' to the datalink event and link the router gives (``EVDL0``).

    Inside the daemon the router's table is shared (``config["route_table"]``,
    as the integrated lamd's ``rqgetrent`` reads it); a separate process asks
    the router (``RQGETROUTE``, a ``dsfr`` to ``EVROUTER``) as liblam does.
    Raises :class:`NoRoute` for a node the router does not know.
    """
    if head.node in (LOCAL, node_id):
        head.dl_event = head.event
        return head
    table = k.config.get("route_table")
    if table is not None:
        r = table.find(head.node)
        if r is None:
            raise NoRoute(head.node)
        event, link = r.event, r.link
    else:
        me = -k.pid
        req = NMsg(dl_event=EVROUTER, node=LOCAL, event=EVROUTER, type=0, flags=NOBUF,
                   data=data_words(me, _RQGETROUTE, head.node))
        got = await k.sr(EVROUTER, 0, b"", KNMSG, me, 0, 0, KNMSG, nmsg=req)
        d = got.nmsg.data if got.nmsg is not None else (0,) * NHDSIZE
        if got.reply.reply or d[0]:
            raise NoRoute(head.node)
        event, link = d[3], d[6]
    if event == NOTEVENT:
        head.dl_event = head.event
    else:
        head.dl_event, head.dl_link = event, link
    return head


async def nsend(k: IProc, head: NMsg, body: bytes = b"", *, node_id: int = 0) -> KReply:
    """LAM's internal ``nsend`` (``otb/sys/lamd/nsend.c``): one packet.

    Local packets go to bufferd unless ``NOBUF`` is set; packets for another
    node (or ``NOBUF``) go where :func:`getroute` says (another node's: to
    dlo, ``EVDL0``). Raises :class:`NoRoute` for a node the router does not
    know.
    """
    if len(body) > MAXNMSGLEN:
        raise ValueError(f"internal nsend of {len(body)} bytes (max {MAXNMSGLEN})")
    # a copy (the caller's header is left as it was), native: not dataclasses.replace
    head = NMsg(head.dl_event, head.dl_link, head.node, head.event, head.type, len(body),
                head.flags, head.data, head.msg)
    if head.flags & NOBUF or head.node not in (LOCAL, node_id):
        await getroute(k, head, node_id)
    else:
        head.dl_event = EVBUFFERD
    if head.flags & NREEL:
        d = list(head.data)
        d[6] = 0
        head.data = tuple(d)
    return await dsend(k, head, body, node_id=node_id)


async def nrecv(k: IProc, event: int, type: int = 0, length: int = MAXNMSGLEN,
                flags: int = 0) -> NetMsg:
    """LAM's internal ``nrecv`` (``otb/sys/lamd/nrecv.c``).

    Without ``NOBUF``: send bufferd a ``BFQRECV`` for (event, type) and wait
    for the packet on *event* in the same kernel call. With ``NOBUF``: a
    plain kernel receive (``frecv``).
    """
    if flags & NOBUF:
        got = await k.recv(event, type, length, KNMSG | flags)
        return received(got)
    req = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
               data=data_words(0, 0, BFQRECV, 0, event, type, 0, flags))
    got = await k.sr(EVBUFFERD, DLCTL, b"", KNMSG, event, type, length,
                     KNMSG | flags, nmsg=req)
    return received(got)


def route_local(head: NMsg, node_id: int) -> bool:
    """``getroute`` for a packet bufferd took in: is it for this node?

    On this node the datalink event is the destination event itself (the
    router's entry for the local node has ``r_event == NOTEVENT``).
    """
    if head.node in (LOCAL, node_id):
        head.dl_event = head.event
        return True
    return False


__all__ = [
    "NOTNODEID", "NOTLINKID", "NOTNODETYPE", "LOCAL", "NOTEVENT",
    "NT_ITB", "NT_CAST", "NT_WASTE", "NT_ME", "NT_ORIGIN", "NT_JONES",
    "NOBUF", "N2ND", "NREEL", "NMORE", "DDLI", "DINT4MSG",
    "DLUSR", "DLSYS", "DLI", "DLCTL",
    "BFQRECV", "BFQPROBE", "BFQSTATE", "BFQSWEEP", "BFQSWEEP1", "BFQSPACE",
    "BFQLOOK", "BFDEFSPACE", "NetMsg", "nsend", "nrecv", "dsend", "dtry_send", "data_words",
    "int4", "route_local", "getroute", "NoRoute", "Identity", "my_nodeid",
]
