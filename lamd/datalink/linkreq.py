"""Link-table requests: how dli, dlo and the router learn of a node that
comes (``lamgrow``) or goes (``lamshrink``, a dead link under ``-x``),
sans-IO (LAM's ``dl_inet.h``, ``otb/sys/dli_inet/dli_inet.c``:
``diqsetlink``/``diqremlink``, ``otb/sys/dlo_inet/dlo_inet.c``:
``request``, ``otb/sys/dlo_inet/do_intr.c``: ``linksanity``/``linkdie``).

The tools talk to dli on every node with a ``struct direq`` in ``nh_data``
(event ``EVDLI``, ``NOBUF``); the request for the tool's own node goes out
through dlo and comes back over the loopback link, so every ``DIQ*`` request
reaches dli as a datalink frame:

* ``DIQSETLINK`` (lamgrow): the body is the new node's ``struct dilink``
  (24 bytes: ``dil_link`` in Trollius byte order, ``dil_seqrecv``, then the
  ``sockaddr_in`` of its datalink port: family in host order, port and
  address in network order). dli takes frames from it, tells the router
  (a route through dlo, ``NT_JONES | diq_type``, ``diq_ncpus`` CPUs) and
  dlo (``DOQSETLINK``), and answers ``struct direply`` (``dir_reply`` 0) to
  ``diq_src_node``/``diq_src_event``;
* ``DIQREMLINK`` (lamshrink; dlo's ``linkdie`` with ``diq_src_node``
  ``NOTNODEID``): the node ``diq_link`` goes from dli, the router and dlo
  (``DOQREMLINK``); local application processes get ``SIGSHRINK``; a reply
  unless the source is ``NOTNODEID``;
* ``DIQSANITY``: dlo's heartbeat on an idle link under ``-x``; the frame's
  ack is all it is for.

dlo's link table (:class:`LinkTable`) is indexed by node id with
``NOTLINKID`` holes, as ``ldogetlinks`` reports it (``lamnodes`` prints a
hole as ``invalid node``, ``lamgrow`` picks the first id past the table);
removing a link trims the holes at its end.

Wire formats (native int4 unless said)::

    struct direq   in nh_data: diq_req, diq_src_node, diq_src_event, diq_link,
                               diq_type, diq_ncpus
    struct direply in nh_data: dir_reply
    struct dilink  (24 B):     dil_link (Trollius order), dil_seqrecv,
                               struct sockaddr_in dil_addr
    struct dolink  (36 B):     dol_link, dol_seqgive, dol_seqsend, dol_npending,
                               dol_idle, struct sockaddr_in dol_addr
"""

from __future__ import annotations

import socket
import struct
from .._dataclasses import dataclass

# dl_inet.h
DOQSETLINK, DOQREMLINK, DOQGETLINKS, DOQVOPEN, DOQVCLOSE = 0, 1, 2, 3, 4
DIQSETLINK, DIQSANITY, DIQREMLINK = 0, 1, 2
# net.h
NOTLINKID = -1
NOTNODEID = -1
NT_JONES = 0x20

#: ``struct dilink``: dil_link (big-endian), dil_seqrecv, sockaddr_in
DILINK = struct.Struct(">i4s2sH4s8x")
#: ``struct dolink``: five int4 then ``struct sockaddr_in`` (family, port, addr, zero).
DOLINK = struct.Struct("<5i2s2s4s8x")
_PORT = struct.Struct("!H")
_FAMILY = struct.Struct("=H")


class LinkReqError(ValueError):
    """A link request that cannot be taken."""


def _sockaddr(family: bytes, port: int, addr: bytes) -> tuple[str, int]:
    if _FAMILY.unpack(family)[0] != socket.AF_INET:
        raise LinkReqError(f"address family {_FAMILY.unpack(family)[0]} is not AF_INET")
    return socket.inet_ntoa(addr), port


@dataclass(slots=True, frozen=True)
class DoLink:
    """One entry of dlo's table: a node id (``NOTLINKID`` for a hole) and
    its dli address."""

    link: int
    addr: str = "0.0.0.0"
    port: int = 0

    def pack(self) -> bytes:
        return DOLINK.pack(self.link, 0, 0, 0, 0, _FAMILY.pack(socket.AF_INET),
                           _PORT.pack(self.port), socket.inet_aton(self.addr))

    @classmethod
    def unpack(cls, buf: bytes, offset: int = 0) -> "DoLink":
        link, _, _, _, _, fam, port, addr = DOLINK.unpack_from(buf, offset)
        if link == NOTLINKID:
            return cls(NOTLINKID)
        ip, port = _sockaddr(fam, _PORT.unpack(port)[0], addr)
        return cls(link, ip, port)


@dataclass(slots=True, frozen=True)
class DiLink:
    """``struct dilink``: the body of ``DIQSETLINK``."""

    link: int
    addr: str
    port: int

    def encode(self) -> bytes:
        return DILINK.pack(self.link, bytes(4), _FAMILY.pack(socket.AF_INET), self.port,
                           socket.inet_aton(self.addr))

    @classmethod
    def decode(cls, body: bytes) -> "DiLink":
        if len(body) < DILINK.size:
            raise LinkReqError(f"a {len(body)}-byte dilink ({DILINK.size} expected)")
        link, _, fam, port, addr = DILINK.unpack_from(body)
        if link < 0:
            raise LinkReqError(f"link {link}")
        ip, port = _sockaddr(fam, port, addr)
        return cls(link, ip, port)

    def dolink(self) -> DoLink:
        return DoLink(self.link, self.addr, self.port)


@dataclass(slots=True, frozen=True)
class DiReq:
    """``struct direq`` (the first six words of ``nh_data``)."""

    req: int
    src_node: int = NOTNODEID
    src_event: int = 0
    link: int = NOTLINKID
    type: int = 0
    ncpus: int = 1

    @classmethod
    def from_words(cls, data: tuple[int, ...]) -> "DiReq":
        return cls(*data[:6])

    def words(self) -> tuple[int, ...]:
        return (self.req, self.src_node, self.src_event, self.link, self.type,
                self.ncpus, 0, 0)


#: the highest node id a ``DIQSETLINK`` may add (LAM reallocates its tables
#: to any id; this bounds what one request can make the daemon hold)
MAXLINK = 1 << 16


class LinkTable:
    """dlo's ``dolinks``: entries by node id, holes ``NOTLINKID``."""

    def __init__(self, links: list[DoLink] | None = None) -> None:
        self.entries: list[DoLink] = []
        for l in links or ():
            if l.link != NOTLINKID:
                self.set(l)

    def __len__(self) -> int:
        """``dol_cnt``."""
        return len(self.entries)

    def valid(self) -> list[DoLink]:
        return [l for l in self.entries if l.link != NOTLINKID]

    def get(self, link: int) -> DoLink | None:
        if 0 <= link < len(self.entries) and self.entries[link].link != NOTLINKID:
            return self.entries[link]
        return None

    def set(self, l: DoLink) -> None:
        """``DOQSETLINK``: the table grows with holes up to the new id."""
        if not 0 <= l.link < MAXLINK:
            raise LinkReqError(f"link {l.link} out of range")
        while len(self.entries) <= l.link:
            self.entries.append(DoLink(NOTLINKID))
        self.entries[l.link] = l

    def remove(self, link: int) -> None:
        """``DOQREMLINK``: a hole, and the holes at the end trimmed."""
        if 0 <= link < len(self.entries):
            self.entries[link] = DoLink(NOTLINKID)
        while self.entries and self.entries[-1].link == NOTLINKID:
            self.entries.pop()

    def segment(self, seg: int, size: int) -> bytes:
        """Segment *seg* of the packed table (``size`` bytes, zero-padded:
        ``MAXNMSGLEN // DOLINK.size`` entries each, as LAM sends them)."""
        eps = size // DOLINK.size
        part = b"".join(l.pack() for l in self.entries[seg * eps:(seg + 1) * eps])
        return part + bytes(size - len(part))


__all__ = ["DiLink", "DiReq", "DoLink", "LinkTable", "LinkReqError", "DILINK", "DOLINK",
           "DIQSETLINK", "DIQSANITY", "DIQREMLINK", "DOQSETLINK", "DOQREMLINK",
           "DOQGETLINKS", "DOQVOPEN", "DOQVCLOSE", "MAXLINK"]
