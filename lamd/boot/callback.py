"""The boot callback between ``lamboot`` and a new lamd (sans-IO).

LAM's ``share/ssi/boot/base/ssi_boot_{client,server}.c`` over the socket
helpers of ``share/etc/bootsockio.c``; every number is an int4 written by
``writesockint4`` in Trollius (big-endian) order.

1. lamboot listens on a TCP port and starts each node's lamd through hboot
   with ``-H <origin addr> -P <that port> -n <node id> -o <origin id>``.
2. The lamd opens its datalink UDP socket and a TCP listener (both on
   ephemeral ports), connects to ``-H``/``-P`` and sends its **coordinates**
   (``writecltcoord`` then ``writesockint4(num_cpus)``), then closes::

       int4 status     INT4_NIL (0); an errno instead when the lamd failed
                       (``reply2agent``: then nothing else follows)
       int4 node id    (-n)
       int4 boot port  its TCP listener
       int4 dli port   its datalink UDP port
       int4 num_cpus   -1: "as the boot schema says"

3. When every node has called back, lamboot connects to each node's boot
   port and sends the **universe** (``lam_ssi_boot_base_send_universe_info``)::

       int4 number of links
       per link (``writecltnbr``):
         int4 link       node id, or NOTLINKID (-1) for an invalid node,
                         after which nothing else of that link is sent
         int4 port       its datalink UDP port
         int4 node_type  NT_* flags (NT_ORIGIN on the origin; NT_BOOT removed)
         int4 num_cpus
         int4 name_len   0: 4 bytes of IPv4 address follow;
                         > 0 (``lamboot -l``): that many bytes of host name
         bytes addr / name

:class:`CltCoord` and :class:`Universe` encode these; :class:`StreamReader`
is the incremental decoder a non-blocking socket feeds.
"""

from __future__ import annotations

import ipaddress
import struct
from .._dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from .early import pack_coord

#: ``net.h``'s invalid link (as :data:`lamd.iprocs.nreq.NOTLINKID`): spelt
#: out here so that the codec imports nothing of the daemon's processes
NOTLINKID = -1

INT4 = struct.Struct(">i")
INT4_NIL = 0
MAXHOSTNAMELEN = 64          # <asm-generic/param.h>, what readcltnbr allows
#: a universe bigger than this is refused before anything is allocated
MAX_UNIVERSE = 1 << 16


class BootProtocolError(ValueError):
    """Bytes that are not a well-formed boot callback message."""


@dataclass(frozen=True)
class CltCoord:
    """What a new lamd tells lamboot: ``writecltcoord`` + num_cpus."""

    node_id: int
    boot_port: int            # the lamd's TCP listener (``strport``)
    dli_port: int             # its datalink UDP port (``udpport``)
    num_cpus: int = -1
    status: int = INT4_NIL    # nonzero: an errno, and nothing follows

    def encode(self) -> bytes:
        if self.status != INT4_NIL:
            return INT4.pack(self.status)
        return pack_coord(self.node_id, self.boot_port, self.dli_port, self.num_cpus)


@dataclass(frozen=True)
class Link:
    """One link of the universe (``readcltnbr``); ``link == NOTLINKID`` is an
    invalid node and carries nothing else."""

    link: int
    port: int = 0
    node_type: int = 0
    num_cpus: int = 0
    addr: str = ""            # dotted IPv4 when sent as an address
    hostname: str = ""        # when sent by name (lamboot -l)

    def encode(self) -> bytes:
        if self.link == NOTLINKID:
            return INT4.pack(NOTLINKID)
        if self.hostname:
            name = self.hostname.encode()
            return struct.pack(">5i", self.link, self.port, self.node_type,
                               self.num_cpus, len(name)) + name
        return struct.pack(">5i", self.link, self.port, self.node_type,
                           self.num_cpus, 0) + ipaddress.IPv4Address(self.addr).packed


@dataclass(frozen=True)
class Universe:
    """The node table lamboot sends every lamd."""

    links: tuple[Link, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        return INT4.pack(len(self.links)) + b"".join(l.encode() for l in self.links)


# --------------------------------------------------------------------------
# incremental decoding

T = TypeVar("T")


class _Need(Exception):
    """More bytes are needed."""


class _Cursor:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _Need
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def int4(self) -> int:
        return INT4.unpack(self.take(4))[0]


def _parse_coord(c: _Cursor) -> CltCoord:
    status = c.int4()
    if status != INT4_NIL:
        return CltCoord(node_id=-1, boot_port=-1, dli_port=-1, status=status)
    node_id, boot_port, dli_port, ncpus = (c.int4() for _ in range(4))
    for what, port in (("boot", boot_port), ("dli", dli_port)):
        if not 0 < port < 65536:
            raise BootProtocolError(f"{what} port {port} out of range")
    return CltCoord(node_id, boot_port, dli_port, ncpus)


def _parse_link(c: _Cursor) -> Link:
    link = c.int4()
    if link == NOTLINKID:
        return Link(NOTLINKID)
    if link < 0:
        raise BootProtocolError(f"link id {link}")
    port, node_type, ncpus, name_len = (c.int4() for _ in range(4))
    if name_len < 0 or name_len > MAXHOSTNAMELEN:
        raise BootProtocolError(f"host name length {name_len}")
    if name_len:
        raw = c.take(name_len)
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise BootProtocolError(f"host name {raw!r}") from None
        return Link(link, port, node_type, ncpus, hostname=name)
    return Link(link, port, node_type, ncpus, addr=str(ipaddress.IPv4Address(c.take(4))))


def _parse_universe(c: _Cursor) -> Universe:
    n = c.int4()
    if not 0 < n <= MAX_UNIVERSE:
        raise BootProtocolError(f"universe of {n} links")
    return Universe(tuple(_parse_link(c) for _ in range(n)))


class StreamReader(Generic[T]):
    """Feed bytes as they arrive; :attr:`result` is set once a whole message
    is in. Bytes after it are an error (LAM's peer closes after one)."""

    def __init__(self, parse: Callable[[_Cursor], T], limit: int):
        self._parse = parse
        self._limit = limit
        self._buf = b""
        self.result: T | None = None

    def feed(self, data: bytes) -> T | None:
        if self.result is not None:
            if data:
                raise BootProtocolError("bytes after the message")
            return self.result
        self._buf += data
        if len(self._buf) > self._limit:
            raise BootProtocolError(f"more than {self._limit} bytes")
        c = _Cursor(self._buf)
        try:
            self.result = self._parse(c)
        except _Need:
            return None
        if c.pos != len(self._buf):
            raise BootProtocolError("bytes after the message")
        return self.result

    def eof(self) -> T:
        """The peer closed: the message, or an error if it is incomplete."""
        if self.result is None:
            raise BootProtocolError(f"connection closed after {len(self._buf)} bytes "
                                    "of an incomplete message")
        return self.result


def coord_reader() -> StreamReader[CltCoord]:
    """lamboot's side: a new lamd's coordinates."""
    return StreamReader(_parse_coord, 20)


def universe_reader() -> StreamReader[Universe]:
    """The lamd's side: the universe from lamboot."""
    return StreamReader(_parse_universe, 4 + MAX_UNIVERSE * (20 + MAXHOSTNAMELEN))


def decode_coord(buf: bytes) -> CltCoord:
    r = coord_reader()
    r.feed(buf)
    return r.eof()


def decode_universe(buf: bytes) -> Universe:
    r = universe_reader()
    r.feed(buf)
    return r.eof()
