"""This node's IPv4 address, found over netlink.

LAM puts the address of every booted node in dli/dlo's link table
(``struct dolink``'s ``dol_addr``, ``otb/sys/dlo_inet/``); ``lamnodes``,
``tping`` and ``lamhalt`` resolve it back to a host name. For the one node we
run, the address is the primary IPv4 address of the interface that holds the
default route, or loopback when there is none. It is asked of the kernel over
netlink, never parsed out of a tool's output: two dump requests
(``RTM_GETROUTE``, ``RTM_GETADDR``) on a ``NETLINK_ROUTE`` socket, read here
with :mod:`struct`. pyroute2 did this before, and importing it cost a sixth
of a second before the first client's reply at every start.
"""

from __future__ import annotations

import logging
import os
import socket
import struct

log = logging.getLogger("lamd.iprocs.netaddr")

LOOPBACK = "127.0.0.1"


def _attr(msg: object, name: str) -> object:
    get = getattr(msg, "get_attr", None)
    return get(name) if get is not None else None


def netlink_available() -> bool:
    """Can this process open a routing netlink socket at all?"""
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()  # NETLINK_ROUTE
    except OSError:
        return False
    return True


_NLMSGHDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
_IFADDRMSG = struct.Struct("=BBBBI")  # struct ifaddrmsg
_RTATTR = struct.Struct("=HH")  # struct rtattr: len, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_GETROUTE = 20, 22, 24, 26
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RT_TABLE_MAIN = 254
RTA_OIF, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 4, 6, 7, 15
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_SECONDARY = 0x01


def _rtattrs(msg: bytes, off: int) -> dict[int, bytes]:
    """The ``rtattr``s of one message from *off* on, by type."""
    attrs: dict[int, bytes] = {}
    while off + 4 <= len(msg):
        ln, typ = _RTATTR.unpack_from(msg, off)
        if ln < 4:
            break
        attrs[typ & 0x3FFF] = msg[off + 4:off + ln]
        off += (ln + 3) & ~3
    return attrs


def _dump(sock: socket.socket, request: int, reply: int, body: bytes, seq: int) -> list[bytes]:
    """The payloads of every *reply* message to a dump *request*."""
    sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), request,
                             NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    out: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise OSError("netlink: end of data before NLMSG_DONE")
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            ln, typ, _flags, rseq, _pid = _NLMSGHDR.unpack_from(data, off)
            if ln < _NLMSGHDR.size or off + ln > len(data):
                raise OSError("netlink: truncated message")
            if rseq == seq:
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    err = struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
                    if err:
                        raise OSError(-err, os.strerror(-err))
                elif typ == reply:
                    out.append(data[off + _NLMSGHDR.size:off + ln])
            off += (ln + 3) & ~3


def _ip(raw: bytes | None) -> str | None:
    return socket.inet_ntop(socket.AF_INET, raw) if raw is not None and len(raw) == 4 else None


def _u32(raw: bytes | None, default: int = 0) -> int:
    return struct.unpack("=I", raw)[0] if raw is not None and len(raw) == 4 else default


def _netlink_address() -> str | None:
    """The address, asked of the kernel; None when no default route leads anywhere."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:  # NETLINK_ROUTE
        sock.settimeout(5.0)
        sock.bind((0, 0))
        routes = []
        for msg in _dump(sock, RTM_GETROUTE, RTM_NEWROUTE,
                         _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0), 1):
            family, dst_len, _s, _t, table, _p, _sc, _ty, _f = _RTMSG.unpack_from(msg)
            attrs = _rtattrs(msg, _RTMSG.size)
            table = _u32(attrs.get(RTA_TABLE), table)
            if family == socket.AF_INET and dst_len == 0 and table == RT_TABLE_MAIN:
                routes.append((_u32(attrs.get(RTA_PRIORITY)), attrs))
        if not routes:
            return None
        routes.sort(key=lambda r: r[0])
        addrs = []  # (interface index, IFA_ADDRESS, IFA_LOCAL), primary addresses only
        for msg in _dump(sock, RTM_GETADDR, RTM_NEWADDR,
                         _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0), 2):
            family, _plen, flags, _scope, index = _IFADDRMSG.unpack_from(msg)
            if family != socket.AF_INET or flags & IFA_F_SECONDARY:
                continue
            attrs = _rtattrs(msg, _IFADDRMSG.size)
            addrs.append((index, _ip(attrs.get(IFA_ADDRESS)), _ip(attrs.get(IFA_LOCAL))))
    for _prio, attrs in routes:
        if RTA_OIF not in attrs:
            continue
        oif = _u32(attrs[RTA_OIF])
        mine = [a for a in addrs if a[0] == oif]
        pref = _ip(attrs.get(RTA_PREFSRC))
        if pref and any(a[1] == pref for a in mine):
            return pref
        for _i, address, local in mine:
            if local or address:
                return local or address
    return None


def node_address() -> str:
    """The primary IPv4 address of the default-route interface, else loopback.

    Never raises: any netlink failure (no permission, no route, a malformed
    answer) falls back to ``127.0.0.1``.
    """
    if not netlink_available():
        # e.g. the service's RestrictAddressFamilies=AF_UNIX
        log.info("no netlink here; node address is %s", LOOPBACK)
        return LOOPBACK
    try:
        addr = _netlink_address()
    except Exception as exc:  # netlink refused, namespace oddities, ...
        log.warning("cannot read the default route over netlink (%s); "
                    "node address is %s", exc, LOOPBACK)
        return LOOPBACK
    return addr or LOOPBACK
