"""Just enough of a pcap reader for the captures under tests/data.

Reads classic pcap files of tcpdump (link types Ethernet, Linux cooked v1
and v2, the last being what ``tcpdump -i any`` writes), reassembles IPv4
fragments, and yields UDP datagrams and TCP payload streams (per direction
of a connection, in sequence order, retransmitted bytes once).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path

LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 1, 113, 276
ETH_P_IP = 0x0800


@dataclass(frozen=True)
class Datagram:
    t: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


@dataclass
class Stream:
    """One direction of a TCP connection."""

    src: tuple[str, int]
    dst: tuple[str, int]
    t: float
    segments: dict[int, bytes] = field(default_factory=dict)
    isn: int | None = None

    @property
    def data(self) -> bytes:
        out = bytearray()
        base = self.isn if self.isn is not None else min(self.segments, default=0)
        for seq in sorted(self.segments, key=lambda s: (s - base) % (1 << 32)):
            off = (seq - base) % (1 << 32)
            seg = self.segments[seq]
            if off > len(out):
                raise ValueError(f"{self.src}->{self.dst}: bytes missing at {len(out)}")
            out += seg[len(out) - off:]
        return bytes(out)


def _records(path: Path):
    raw = path.read_bytes()
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack_from(e + "I", raw, 20)[0]
    pos = 24
    while pos + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack_from(e + "4I", raw, pos)
        pos += 16
        yield sec + frac / (1e9 if nano else 1e6), linktype, raw[pos:pos + incl]
        pos += incl


def _ip_packet(linktype: int, frame: bytes) -> bytes | None:
    if linktype == LINKTYPE_LINUX_SLL2:
        proto, off = struct.unpack_from(">H", frame, 0)[0], 20
    elif linktype == LINKTYPE_LINUX_SLL:
        proto, off = struct.unpack_from(">H", frame, 14)[0], 16
    elif linktype == LINKTYPE_ETHERNET:
        proto, off = struct.unpack_from(">H", frame, 12)[0], 14
    else:
        raise ValueError(f"link type {linktype}")
    return frame[off:] if proto == ETH_P_IP else None


def _reassemble(frags: dict, key: tuple, offset: int, body: bytes,
                more: bool) -> bytes | None:
    """An IPv4 datagram's payload once all its fragments are in, else None."""
    parts = frags.setdefault(key, {})
    parts[offset] = body
    if not more:
        parts["end"] = offset + len(body)
    end = parts.get("end")
    if end is None:
        return None
    whole = bytearray()
    while len(whole) < end:
        nxt = parts.get(len(whole))
        if nxt is None:
            return None
        whole += nxt
    del frags[key]
    return bytes(whole)


def read(path: Path) -> tuple[list[Datagram], list[Stream]]:
    """The UDP datagrams and the TCP streams of a capture, in capture order."""
    udp: list[Datagram] = []
    streams: dict[tuple, Stream] = {}
    frags: dict[tuple, dict[int, bytes]] = {}
    for t, lt, frame in _records(Path(path)):
        ip = _ip_packet(lt, frame)
        if ip is None:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total, ident, fragw, _ttl, proto = struct.unpack_from(">2xHHHBB", ip, 0)
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        body = ip[ihl:total]
        more, offset = fragw & 0x2000, (fragw & 0x1FFF) * 8
        if more or offset:
            body = _reassemble(frags, (src, dst, ident, proto), offset, body, bool(more))
            if body is None:
                continue
        if proto == 17:
            sport, dport, ulen = struct.unpack_from(">3H", body)
            udp.append(Datagram(t, (src, sport), (dst, dport), body[8:ulen]))
        elif proto == 6:
            sport, dport, seq = struct.unpack_from(">HHI", body)
            flags = body[13]
            doff = (body[12] >> 4) * 4
            key = (src, sport, dst, dport)
            s = streams.get(key)
            if s is None:
                s = streams[key] = Stream((src, sport), (dst, dport), t)
            if flags & 0x02:  # SYN
                s.isn = (seq + 1) % (1 << 32)
            payload = body[doff:]
            if payload:
                s.segments.setdefault(seq, payload)
    return udp, [s for s in streams.values() if s.segments]
