"""This node's IPv4 address, found over netlink (pyroute2).

LAM puts the address of every booted node in dli/dlo's link table
(``struct dolink``'s ``dol_addr``, ``otb/sys/dlo_inet/``); ``lamnodes``,
``tping`` and ``lamhalt`` resolve it back to a host name. For the one node we
run, the address is the primary IPv4 address of the interface that holds the
default route, or loopback when there is none. It is asked of the kernel over
netlink, never parsed out of a tool's output.
"""

from __future__ import annotations

import logging
import socket

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


def node_address() -> str:
    """The primary IPv4 address of the default-route interface, else loopback.

    Never raises: any netlink failure (no pyroute2, no permission, no route)
    falls back to ``127.0.0.1``.
    """
    if not netlink_available():
        # e.g. the service's RestrictAddressFamilies=AF_UNIX: no need to load
        # pyroute2 (a sixth of a second at every socket activation) to learn it
        log.info("no netlink here; node address is %s", LOOPBACK)
        return LOOPBACK
    for name in ("pyroute2", "pyroute2.netlink.rtnl.tcmsg.common"):
        logging.getLogger(name).setLevel(logging.ERROR)  # its chatter is not ours to log
    try:
        from pyroute2 import IPRoute
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        log.warning("pyroute2 is not installed; node address is %s", LOOPBACK)
        return LOOPBACK
    try:
        with IPRoute() as ipr:
            routes = sorted(ipr.get_default_routes(family=socket.AF_INET),
                            key=lambda r: _attr(r, "RTA_PRIORITY") or 0)
            for route in routes:
                oif = _attr(route, "RTA_OIF")
                if oif is None:
                    continue
                pref = _attr(route, "RTA_PREFSRC")
                addrs = [a for a in ipr.get_addr(family=socket.AF_INET, index=oif)
                         if not (a.get("flags", 0) & 0x01)]  # skip IFA_F_SECONDARY
                if pref and any(_attr(a, "IFA_ADDRESS") == pref for a in addrs):
                    return str(pref)
                for a in addrs:
                    addr = _attr(a, "IFA_LOCAL") or _attr(a, "IFA_ADDRESS")
                    if addr:
                        return str(addr)
    except Exception as exc:  # netlink refused, namespace oddities, ...
        log.warning("cannot read the default route over netlink (%s); "
                    "node address is %s", exc, LOOPBACK)
    return LOOPBACK
