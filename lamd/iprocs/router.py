"""router: the node table (LAM's ``otb/sys/router/router.c``).

Clients ask it through ``share/rreq/`` (``getnodes``, ``getntype``,
``getrent``/``getroute``/``getrtype``, ``getnodeid``/``getorigin``): a
``dsfr`` to ``EVROUTER`` carrying ``struct rreq`` in ``nh_data``, the reply
coming back on ``rq_src_event`` (``-pid``) with ``struct rreply`` in
``nh_data`` and, for ``RQGETNODES``, the node ids as the body.

The table is the universe lamboot sent (``lamd.boot.agent.routes``: other
nodes through dlo, ``EVDL0``), shared with the daemon's other internal
processes as ``config["route_table"]`` (their ``getroute``, as the
integrated lamd's ``rqgetrent``). Without lamboot the universe is one node, booted smart (what ``dli_inet``'s
``initrouter`` leaves behind after ``lamboot``): node 0 is this node and the
origin (``NT_ME | NT_ORIGIN``), reached locally (``r_event == NOTEVENT``).
``RQSETROUTES``/``RQREMROUTE``/``RQSETSMART`` keep working on the table as
LAM's do. Unknown nodes answer ``EBADNODE``; an unknown request code, which
makes LAM's router panic, answers ``EBADREQUEST``.

Wire formats (``rreq.h``, native int4)::

    struct rreq   in nh_data: rq_src_event, rq_request, rq_nodeid, rq_nrents,
                              rq_event, rq_pid, rq_nodetype, rq_typemask
    struct rreply in nh_data: rr_reply, rr_nodetype, rr_ncpus, rr_event,
                              rr_event2, rr_link2, rr_link, rr_ntype
    struct route  (RQSETROUTES body): r_nodeid, r_event, r_link, r_event2,
                              r_link2, r_nodetype, r_ncpus            28 B
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from ..kernel.constants import EBADNODE, EBADREQUEST, EVROUTER, KTRY, NOTEVENT
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from .nreq import (
    DINT4MSG, LOCAL, NOBUF, NT_CAST, NT_ME, NT_ORIGIN, NOTNODEID, NetMsg,
    data_words, dsend, nrecv,
)

log = logging.getLogger("lamd.iprocs.router")

# rreq.h
RNRENT = 10
RQGETROUTE, RQSETSMART, RQSETROUTES, RQGETNODES = 0, 1, 2, 3
RQREMROUTE, RQGETSMART, RQGETNTYPE = 4, 5, 6
RQMAX = 7
RDUMB, RSMART = 1, 2

ROUTE = struct.Struct("<7i")


@dataclass(slots=True)
class Route:
    """``struct route``: one router table entry."""

    nodeid: int
    event: int = NOTEVENT
    link: int = 0
    event2: int = NOTEVENT
    link2: int = 0
    nodetype: int = 0
    ncpus: int = 1

    def pack(self) -> bytes:
        return ROUTE.pack(self.nodeid, self.event, self.link, self.event2,
                          self.link2, self.nodetype, self.ncpus)

    @classmethod
    def unpack(cls, buf: bytes, offset: int = 0) -> "Route":
        return cls(*ROUTE.unpack_from(buf, offset))


def local_route(config: dict) -> Route:
    """Node 0 as ``lamboot`` describes a one-node universe to the router."""
    ncpus = int(config.get("ncpus") or 1)
    ntype = int(config.get("node_type") or 0)
    return Route(nodeid=0, event=NOTEVENT, link=0, event2=NOTEVENT, link2=0,
                 nodetype=(ntype & ~NT_CAST) | NT_ME | NT_ORIGIN, ncpus=ncpus)


class RouteTable:
    """The router's table, in insertion order (LAM walks its hash table)."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes: dict[int, Route] = {r.nodeid: r for r in routes}

    def find(self, nodeid: int) -> Route | None:
        return self.routes.get(nodeid)

    def matching(self, nodetype: int, typemask: int) -> list[int]:
        """``count_ntype``/``rqgetnodes``: node ids with (type & mask) == want."""
        want = nodetype & typemask
        return [r.nodeid for r in self.routes.values() if (r.nodetype & typemask) == want]

    def set(self, route: Route) -> None:
        if route.nodeid != NOTNODEID:
            self.routes[route.nodeid] = route

    def remove(self, nodeid: int) -> None:
        self.routes.pop(nodeid, None)


def route_table(config: dict) -> RouteTable:
    """The router's table from the daemon's settings: the universe lamboot
    sent (``config["routes"]``), else the one-node universe."""
    return RouteTable(list(config.get("routes") or [local_route(config)]))


def rreply(reply: int = 0, nodetype: int = 0, ncpus: int = 0, event: int = 0,
           event2: int = 0, link2: int = 0, link: int = 0, ntype: int = 0) -> tuple[int, ...]:
    """``struct rreply`` as ``nh_data`` words."""
    return data_words(reply, nodetype, ncpus, event, event2, link2, link, ntype)


def answer(table: RouteTable, req: NetMsg) -> tuple[tuple[int, ...], bytes] | None:
    """One router request -> (rreply words, body) or None for no reply."""
    d = req.data
    request, nodeid, nrents = d[1], d[2], d[3]
    nodetype, typemask = d[6], d[7]
    if request == RQGETROUTE:
        r = table.find(nodeid)
        if r is None:
            return rreply(EBADNODE), b""
        return rreply(0, r.nodetype, r.ncpus, r.event, r.event2, r.link2, r.link), b""
    if request == RQGETNODES:
        ids = table.matching(nodetype, typemask)
        return rreply(0), struct.pack(f"<{len(ids)}i", *ids)
    if request == RQGETNTYPE:
        return rreply(0, ntype=len(table.matching(nodetype, typemask))), b""
    if request == RQSETROUTES:
        n = max(0, min(nrents, RNRENT, len(req.body) // ROUTE.size))
        for i in range(n):
            table.set(Route.unpack(req.body, i * ROUTE.size))
        return None
    if request == RQREMROUTE:
        table.remove(nodeid)
        return None
    if request in (RQSETSMART, RQGETSMART):
        return None
    log.error("router: bad request code %d from event %d", request, d[0])
    return rreply(EBADREQUEST), b""


async def router(k: IProc) -> None:
    """Serve router requests forever (LAM's ``r_init`` + ``router``)."""
    # booted by lamboot: the universe's routes (lamd.boot.agent.routes, what
    # dli_inet's initrouter sets); else the one-node universe
    table = k.config.get("route_table")
    if table is None:
        table = route_table(k.config)
    k.config.setdefault("node_id", 0)
    while True:
        req = await nrecv(k, EVROUTER, 0, ROUTE.size * RNRENT, NOBUF)
        out = answer(table, req)
        if out is None:
            continue
        words, body = out
        src_event = req.data[0]
        head = NMsg(dl_event=src_event, node=LOCAL, event=src_event, type=0,
                    flags=DINT4MSG | KTRY, length=len(body), data=words)
        # dtry_send: a client that is not waiting for its reply loses it
        await dsend(k, head, body)


__all__ = ["router", "Route", "RouteTable", "local_route", "route_table", "answer",
           "RQGETROUTE", "RQGETNODES", "RQGETNTYPE", "RQSETROUTES",
           "RQREMROUTE", "RQSETSMART", "RQGETSMART", "RSMART", "RDUMB"]
