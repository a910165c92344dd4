"""The lamd's side of the boot callback (LAM's ``otb/sys/dli_inet/di_bootagent.c``
over ``lam_ssi_boot_base_send_lamd_info`` / ``..._receive_universe_info``).

Started by hboot with ``-H <origin addr> -P <lamboot's port> -n <node id>
-o <origin id>``, the lamd

1. opens its datalink UDP socket and a TCP listener on ephemeral ports,
2. connects to lamboot and sends its coordinates (:class:`CltCoord`:
   node id, the two ports, num_cpus -1), then closes that connection,
3. accepts lamboot's connection on the listener once every node has called
   back, reads the universe (:class:`Universe`) and closes both.

As in LAM this happens once, at start, before the daemon serves anything
else; steps 1 and 2 even before the daemon imports its kernel when the
``lamd`` command is started by hboot (:mod:`.early`: lamboot waits for each
callback before it boots the next node). Unlike LAM every step has a deadline, the listener accepts lamboot
only from the origin's address (``-H``) and the universe is read with the
bounded incremental decoder of :mod:`.callback`.

:func:`routes` and :func:`links` turn the universe into the router's table
(``initrouter``) and the link table dlo reports.
"""

from __future__ import annotations

import logging
import socket
import time
from .._dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    import argparse

from ..iprocs.nreq import NOTLINKID, NT_ME, NT_ORIGIN
from ..kernel.constants import EVDL0, NOTEVENT
from .callback import BootProtocolError, CltCoord, Universe, universe_reader
from .early import Called, call_back, resolve as _resolve, take

log = logging.getLogger("lamd.boot")


class BootError(RuntimeError):
    """The callback could not be completed."""


@dataclass
class BootArgs:
    """What hboot passes (``$inet_topo``): ``-H -P -n -o`` and ``-x``."""

    agent_addr: str
    agent_port: int
    node_id: int
    origin: int = 0
    fault_tolerant: bool = False


@dataclass
class Booted:
    """The result: this node's datalink socket and the universe."""

    dli_sock: socket.socket
    universe: Universe
    node_id: int
    origin: int

    @property
    def dli_port(self) -> int:
        return self.dli_sock.getsockname()[1]

    def my_link(self):
        for l in self.universe.links:
            if l.link == self.node_id:
                return l
        return None


def add_hboot_options(p: "argparse.ArgumentParser", what: str) -> None:
    """What hboot passes a lamd (``$inet_topo`` of the boot configuration),
    as options of *p* (the daemon's, the datalink process's)."""
    b = p.add_argument_group(
        "booted by lamboot", "what LAM's hboot passes ($inet_topo of the boot configuration): "
        + what)
    b.add_argument("-H", dest="boot_addr", metavar="ADDR", help="lamboot's address (the origin)")
    b.add_argument("-P", dest="boot_port", type=int, metavar="PORT", help="lamboot's port")
    b.add_argument("-n", dest="node_id", type=int, metavar="NODE", help="this node's id")
    b.add_argument("-o", dest="origin", type=int, default=0, metavar="NODE",
                   help="the origin node's id (default 0)")
    b.add_argument("-x", dest="fault_tolerant", action="store_true",
                   help="fault tolerant: keep going when a node dies")


def boot_args_of(ns: "argparse.Namespace") -> "BootArgs | None":
    """:class:`BootArgs` from parsed :func:`add_hboot_options`; None if no
    ``-H``/``-P`` was given. Raises ValueError if ``-H``, ``-P`` and ``-n``
    are not all there."""
    if ns.boot_addr is None and ns.boot_port is None:
        return None
    if ns.boot_addr is None or ns.boot_port is None or ns.node_id is None:
        raise ValueError("-H, -P and -n go together (what hboot passes for lamboot)")
    return BootArgs(ns.boot_addr, ns.boot_port, ns.node_id, ns.origin, ns.fault_tolerant)


def boot_agent(args: BootArgs, timeout: float = 300.0,
               connect_timeout: float = 30.0,
               called_back: Callable[[CltCoord], None] | None = None) -> Booted:
    """Call lamboot back and receive the universe (blocking, bounded by
    *timeout* overall: lamboot sends the universe only once every node has
    booted). *called_back* is told once the coordinates are sent. A
    callback :mod:`lamd.boot.early` already made for these arguments (the
    ``lamd`` command makes it before it imports the daemon) is finished
    here, not made again."""
    called: Called | None = take(args.agent_addr, args.agent_port, args.node_id)
    where = f"{args.agent_addr}:{args.agent_port}"
    try:
        if called is None:
            called = call_back(args.agent_addr, args.agent_port, args.node_id,
                               timeout=timeout, connect_timeout=connect_timeout)
            when = ""
        else:
            when = ", before the daemon's imports"
        where = f"{called.agent}:{args.agent_port}"
        log.info("boot: calling lamboot back at %s as n%d (boot port %d, datalink port %d%s)",
                 where, args.node_id, called.boot_port, called.dli_port, when)
    except OSError as e:
        raise BootError(f"boot callback to {where}: {e}") from e
    called.promote()
    ok = False
    try:
        if called_back is not None:
            called_back(CltCoord(args.node_id, called.boot_port, called.dli_port))
        universe = _receive_universe(called.srv, called.agent, called.deadline)
        log.info("boot: universe of %d nodes: %s", len(universe.links), ", ".join(
            f"n{l.link} {l.addr or l.hostname}:{l.port}" if l.link != NOTLINKID else "invalid"
            for l in universe.links))
        if not any(l.link == args.node_id for l in universe.links):
            raise BootError(f"the universe has no node n{args.node_id}")
        ok = True
        return Booted(called.dli, universe, args.node_id, args.origin)
    except BootError:
        raise
    except (OSError, BootProtocolError) as e:
        raise BootError(f"boot callback to {where}: {e}") from e
    finally:
        called.srv.close()
        if not ok:
            called.dli.close()


def _receive_universe(srv: socket.socket, agent: str, deadline: float) -> Universe:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BootError("no universe from lamboot in time")
        srv.settimeout(left)
        try:
            conn, peer = srv.accept()
        except TimeoutError:
            raise BootError("no universe from lamboot in time") from None
        with conn:
            if peer[0] != agent:
                log.warning("boot: connection from %s:%d dropped (lamboot is at %s)",
                            peer[0], peer[1], agent)
                continue
            r = universe_reader()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BootError("universe not received in time")
                conn.settimeout(left)
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    raise BootError("universe not received in time") from None
                if not data:
                    return r.eof()
                r.feed(data)


# --------------------------------------------------------------------------
# the universe as the router and dlo see it


def routes(universe: Universe, node_id: int, origin: int) -> list:
    """``initrouter``: one route per valid link; this node reached locally
    (``NT_ME``, ``NOTEVENT``), the others through dlo (``EVDL0``); the origin
    flagged ``NT_ORIGIN`` from ``-o``, whatever lamboot's flags said."""
    from ..iprocs.router import Route
    out = []
    for l in universe.links:
        if l.link == NOTLINKID:
            continue
        me = l.link == node_id
        ntype = (l.node_type | NT_ME) if me else (l.node_type & ~NT_ME)
        if l.link == origin:
            ntype |= NT_ORIGIN
        event = NOTEVENT if me else EVDL0
        out.append(Route(nodeid=l.link, event=event, link=l.link, event2=event,
                         link2=l.link, nodetype=ntype, ncpus=l.num_cpus))
    return out


def links(universe: Universe) -> list:
    """dlo's link table: every valid node at its datalink address."""
    from ..iprocs.dlo import DoLink
    return [DoLink(l.link, l.addr or _resolve(l.hostname), l.port)
            for l in universe.links if l.link != NOTLINKID]
