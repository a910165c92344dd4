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

import functools
import logging
import struct
from .._dataclasses import dataclass
from typing import Callable

from ..kernel.constants import (
    EBADNODE, EBADREQUEST, EVROUTER, KNMSG, KTRY, MAXNMSGLEN, NOTEVENT,
)
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from .nreq import (
    DINT4MSG, LOCAL, NOBUF, NT_CAST, NT_ME, NT_ORIGIN, NOTNODEID, Identity, NetMsg,
    data_words, dsend, nrecv, nsend,
)

log = logging.getLogger("lamd.iprocs.router")

# rreq.h
RNRENT = 10
RQGETROUTE, RQSETSMART, RQSETROUTES, RQGETNODES = 0, 1, 2, 3
RQREMROUTE, RQGETSMART, RQGETNTYPE = 4, 5, 6
RQMAX = 7
RDUMB, RSMART = 1, 2
#: Ours, not in LAM 7.1.4's rreq.h: "answer once this node's id is not
#: ``rq_nodeid``" (at once if it already is not). A separate process that
#: needs the node id (the jobs process: kenyad's replies, ``LAMWORLD``)
#: learns the universe a separate datalink process gives the router after
#: boot. The answer is an ``rreply`` with ``rr_link`` the node id and
#: ``rr_link2`` the origin's, sent to ``rq_src_event`` with ``rq_nodetype``
#: as its type (so that it never meets another reply on that event).
RQWAITNODE = 64
#: RQWAITNODE requests kept at once (the oldest go first)
MAXWAITERS = 64

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

    def me(self) -> tuple[int, int] | None:
        """(this node's id, the origin's) from the ``NT_ME`` and ``NT_ORIGIN``
        entries (LAM's ``getnodeid``/``getorigin``: the first of each), or
        None if no entry is ``NT_ME``."""
        me = next((r.nodeid for r in self.routes.values() if r.nodetype & NT_ME), None)
        if me is None:
            return None
        origin = next((r.nodeid for r in self.routes.values() if r.nodetype & NT_ORIGIN), me)
        return me, origin

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
    if request in (RQSETSMART, RQGETSMART, RQWAITNODE):
        return None
    log.error("router: bad request code %d from event %d", request, d[0])
    return rreply(EBADREQUEST), b""


def sync_identity(table: RouteTable, ident: Identity) -> bool:
    """Make *ident* what the table says (its ``NT_ME`` and ``NT_ORIGIN``
    entries); True if it changed."""
    me = table.me()
    if me is None or (ident.node_id, ident.origin) == me:
        return False
    log.info("router: this node is now n%d (origin n%d; was n%d)", me[0], me[1], ident.node_id)
    ident.node_id, ident.origin = me
    return True


#: the router's carried state (a re-exec: ``IProc.carry``): magic, routes,
#: RQWAITNODE waiters; then the routes, then (src_event, type) per waiter
_CARRY = struct.Struct("<8sII")
_CARRY_MAGIC = b"ROUTER01"
_WAITER = struct.Struct("<ii")


def pack_state(table: RouteTable, waiters: list[tuple[int, int]]) -> bytes:
    """What the router carries across a re-exec: its table (the universe a
    separate datalink gave it after boot, lamgrow's and lamshrink's
    changes) and the separate processes waiting for this node's id."""
    return b"".join([_CARRY.pack(_CARRY_MAGIC, len(table.routes), len(waiters)),
                     *(r.pack() for r in table.routes.values()),
                     *(_WAITER.pack(ev, typ) for ev, typ in waiters)])


def _nothing() -> None:
    pass


def _keep(keep: Callable[[str, bytes], None], table: RouteTable,
          waiters: list[tuple[int, int]]) -> None:
    keep("router", pack_state(table, waiters))


def forget_universe(config: dict) -> None:
    """The one-node table again (what boot makes), this node n0: the
    universe kept across a crash went with the clients when the crash state
    was refused (the datalink process's connections closed)."""
    table = config.get("route_table")
    ident = config.get("identity")
    if table is None or ident is None:
        return
    local = local_route(config)
    table.routes = {local.nodeid: local}
    ident.node_id, ident.origin = local.nodeid, local.nodeid
    log.info("router: the universe kept across the crash is forgotten: one node again")


def unpack_state(data: bytes) -> tuple[list[Route], list[tuple[int, int]]]:
    """:func:`pack_state`'s routes and waiters; ValueError for anything else."""
    try:
        magic, nroutes, nwaiters = _CARRY.unpack_from(data)
    except struct.error:
        raise ValueError("the router's carried state is truncated") from None
    if magic != _CARRY_MAGIC or nwaiters > MAXWAITERS:
        raise ValueError("not the router's carried state")
    if len(data) != _CARRY.size + nroutes * ROUTE.size + nwaiters * _WAITER.size:
        raise ValueError("the router's carried state has the wrong length")
    off = _CARRY.size
    routes = [Route.unpack(data, off + i * ROUTE.size) for i in range(nroutes)]
    off += nroutes * ROUTE.size
    waiters = [_WAITER.unpack_from(data, off + i * _WAITER.size) for i in range(nwaiters)]
    return routes, [(ev, typ) for ev, typ in waiters]


async def _reply(k: IProc, src_event: int, words: tuple[int, ...], body: bytes = b"",
                 type: int = 0) -> None:
    head = NMsg(dl_event=src_event, node=LOCAL, event=src_event, type=type,
                flags=DINT4MSG | KTRY, length=len(body), data=words)
    # dtry_send: a client that is not waiting for its reply loses it
    await dsend(k, head, body)


async def router(k: IProc) -> None:
    """Serve router requests forever (LAM's ``r_init`` + ``router``)."""
    # booted by lamboot: the universe's routes (lamd.boot.agent.routes, what
    # dli_inet's initrouter sets); else the one-node universe
    table = k.config.get("route_table")
    if table is None:
        table = route_table(k.config)
    k.config.setdefault("node_id", 0)
    ident = k.config.get("identity")
    if ident is None:
        ident = k.config["identity"] = Identity(int(k.config["node_id"]),
                                                int(k.config.get("origin", 0)))
    waiters: list[tuple[int, int]] = []  # RQWAITNODE: (src_event, type)
    # what a re-exec (IProc.restored) or a crash (the descriptor store:
    # lamd.kernelio.iprocstate) kept of the table a datalink process gave
    # us and of the processes waiting for this node's id (issue 12)
    kept = k.restored
    if kept is None:
        kept = (k.config.get("crash_restored") or {}).get("router")
    if kept is not None:
        try:
            routes, waiters[:] = unpack_state(kept)
        except ValueError as e:
            log.error("router: kept state refused, starting with the boot table: %s", e)
        else:
            table.routes = {r.nodeid: r for r in routes}
            sync_identity(table, ident)
            if k.restored is None:
                log.info("router: after a crash: this node n%d of %d again",
                         ident.node_id, len(table.routes))
    k.carry = functools.partial(pack_state, table, waiters)
    keep = k.config.get("keep_state")
    save: Callable[[], None]
    if keep is not None:
        save = functools.partial(_keep, keep, table, waiters)
    else:
        save = _nothing
    while True:
        req = await nrecv(k, EVROUTER, 0, ROUTE.size * RNRENT, NOBUF)
        d = req.data
        if d[1] == RQWAITNODE:
            if ident.node_id != d[2]:
                await _reply(k, d[0], rreply(0, link=ident.node_id, link2=ident.origin),
                             type=d[6])
            else:  # a separate process that restarts often leaves a few behind
                waiters[:] = waiters[-(MAXWAITERS - 1):] + [(d[0], d[6])]
                save()
            continue
        out = answer(table, req)
        if d[1] in (RQSETROUTES, RQREMROUTE):
            changed = sync_identity(table, ident)
            ready = waiters[:] if changed else []
            if changed:
                del waiters[:]
            save()
            for src_event, typ in ready:
                await _reply(k, src_event, rreply(0, link=ident.node_id, link2=ident.origin),
                             type=typ)
        if out is None:
            continue
        words, body = out
        await _reply(k, d[0], words, body)


# ---------------------------------------------------------------------------
# the router's clients outside the kernel (share/rreq/: rrsetrents, ...)

#: ``rq_src_event`` of :func:`wait_nodeid`'s request is ``(-pid) & ~bit 28``:
#: not a pid's event (``-pid``), nor kenyad's (bit 29 cleared) or a
#: launcher's wait event (bit 30), so its answer meets no other reply of a
#: process whose services share one pid (a service host).
WAITNODE_EVENT_BASE = 0x10000000


def _rreq(src_event: int, request: int, nodeid: int = 0, nrents: int = 0,
          nodetype: int = 0, typemask: int = 0) -> NMsg:
    return NMsg(dl_event=EVROUTER, node=LOCAL, event=EVROUTER, type=0, flags=NOBUF,
                data=data_words(src_event, request, nodeid, nrents, 0, 0, nodetype, typemask))


async def rrsetrents(k: IProc, routes: list[Route]) -> None:
    """``rrsetrents(LOCAL, ...)``: *routes* into the router's table, at most
    ``RNRENT`` per request (no reply)."""
    for i in range(0, len(routes), RNRENT):
        chunk = routes[i:i + RNRENT]
        await nsend(k, _rreq(-k.pid, RQSETROUTES, nrents=len(chunk)),
                    b"".join(r.pack() for r in chunk))


async def rrremrent(k: IProc, nodeid: int) -> None:
    """``rrremrent(LOCAL, nodeid)``: a node out of the router's table (no reply)."""
    await nsend(k, _rreq(-k.pid, RQREMROUTE, nodeid=nodeid))


async def rrgetnodes(k: IProc, nodetype: int = 0, typemask: int = 0) -> list[int]:
    """``getnodes``: the ids whose type matches (all of them by default)."""
    me = -k.pid
    got = await k.sr(EVROUTER, 0, b"", KNMSG, me, 0, MAXNMSGLEN, KNMSG,
                     nmsg=_rreq(me, RQGETNODES, nodetype=nodetype, typemask=typemask))
    if got.reply.reply:
        raise OSError(got.reply.reply, "getnodes")
    n = len(got.body) // 4
    return list(struct.unpack(f"<{n}i", got.body[:4 * n]))


async def initrouter(k: IProc, routes: list[Route]) -> None:
    """LAM's ``initrouter`` for a datalink outside the kernel: the router's
    table becomes *routes* (the universe lamboot sent). Nodes it no longer
    has go first; the ``NT_ME`` entry is set last, so that the router sees
    one node as this one at every step (:func:`sync_identity`)."""
    keep = {r.nodeid for r in routes}
    for nodeid in await rrgetnodes(k):
        if nodeid not in keep:
            await rrremrent(k, nodeid)
    await rrsetrents(k, [r for r in routes if not r.nodetype & NT_ME])
    await rrsetrents(k, [r for r in routes if r.nodetype & NT_ME])
    await nsend(k, _rreq(-k.pid, RQSETSMART))


async def wait_nodeid(k: IProc, known: int) -> tuple[int, int]:
    """Block until the router's node id is not *known* (at once if it
    already is not); (node id, origin). Raises OSError if the router
    refuses (one that is not ours: ``EBADREQUEST``)."""
    ev = -(WAITNODE_EVENT_BASE + k.pid)
    got = await k.sr(EVROUTER, 0, b"", KNMSG, ev, 0, 0, KNMSG,
                     nmsg=_rreq(ev, RQWAITNODE, nodeid=known))
    d = got.nmsg.data if got.nmsg is not None else (0,) * 8
    if got.reply.reply or d[0]:
        raise OSError(got.reply.reply or d[0], "router: RQWAITNODE")
    return d[6], d[5]


async def nodeid_watch(k: IProc) -> None:
    """A service of a separate process (the jobs process): keeps
    ``config["identity"]`` what the kernel's router says, so its other
    services learn a universe given to the router after they started."""
    ident = k.config.get("identity")
    if ident is None:
        return
    known = -3  # no node's id: the first answer is at once
    while True:
        try:
            node, origin = await wait_nodeid(k, known)
        except OSError as e:
            log.warning("router: cannot follow this node's id (%s); keeping n%d",
                        e, ident.node_id)
            return
        if (node, origin) != (ident.node_id, ident.origin):
            log.info("this node is n%d (origin n%d)", node, origin)
        ident.node_id, ident.origin = node, origin
        known = node


__all__ = ["router", "rrsetrents", "rrremrent", "rrgetnodes", "initrouter", "wait_nodeid",
           "nodeid_watch",  "Route", "RouteTable", "local_route", "route_table", "answer",
           "RQGETROUTE", "RQGETNODES", "RQGETNTYPE", "RQSETROUTES",
           "RQREMROUTE", "RQSETSMART", "RQGETSMART", "RQWAITNODE", "RSMART", "RDUMB",
           "sync_identity"]
