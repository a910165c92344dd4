"""LAM's internal processes, as coroutines booted inside the daemon.

The boot table follows LAM's ``kboottbl[]`` (``otb/sys/lamd/kiproc.c``) row
for row, so every internal process has LAM's priority and LAM's pid
(100000 + row): router 100000, bufferd 100001, echod 100004, kenyad 100008,
traced 100010, haltd 100013, versiond 100014. kenyad, filed, flatd, loadd
and iod are :mod:`lamd.jobs`'s; traced is :mod:`lamd.iprocs.traced`; what a
one-node universe has no use for (died) idles in :mod:`lamd.iprocs.stubs`;
dli_inet, dlo_inet and bforward are the UDP datalink to other nodes
(:mod:`.dli`, :mod:`.dlo`, :mod:`.bforward`, over :mod:`lamd.datalink`).

Settings read from the boot configuration (all optional):
``node_addr`` (this node's IPv4 address; :data:`LOCALHOST` when absent),
``ncpus`` (default 1, as ``lamboot`` without a cpu count), ``node_type``,
``dli_port``, ``dli_sock`` (the datalink socket of the boot callback),
``links`` and ``routes`` (the universe), ``fault_tolerant`` (``-x``), ``session`` (the session directory), ``bufferd_space`` and
``bufferd_space_limit``.

External services (LAM's ``lam-conf.separate``): any row but
:data:`KERNEL_SIDE` may be left out of the boot (``lamd --external NAME``)
and served by a separate process attached to the kernel like LAM's
``lamd_echod`` & co. (:mod:`lamd.iprocs.host`, the same coroutines). The rows
left in keep LAM's pids, 100000 + their row in the full table.
"""

from __future__ import annotations

import importlib
from .._dataclasses import replace

#: the address of a universe of one node started by hand: LAM's default boot
#: schema (``lam-bhost.def``) names ``localhost``, so a one-node ``lamboot``
#: gives the C lamd 127.0.0.1 and ``lamnodes`` prints ``localhost``. Every
#: ``mpirun`` resolves each rank's node address back to a name
#: (``otb/mpirun/totalview.c``, ``gethostbyaddr``): 127.0.0.1 is in every
#: hosts file, where a routable address may cost a DNS query per rank, or a
#: resolver's timeout on a node without DNS. As with LAM, ``lamgrow`` from
#: such a universe is refused (``localhost-universe``); a universe booted by
#: lamboot has the addresses lamboot gives.
LOCALHOST = "127.0.0.1"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Iterable

    from ..kernel.kiproc import IProcMain

from ..kernel.constants import (
    PRBFORWARD, PRBUFFERD, PRDAEMON, PRDIED, PRDLI, PRDLO, PRECHOD, PRFILED,
    PRHALTD, PRLOADD, PRROUTER, PRVERSIOND,
)
from ..kernel.kiproc import IProc, KBoot

# Every row's module is imported when the row is booted (:class:`_Lazy`), not
# with this package: a daemon started by socket activation answers the
# clients already waiting before it boots its internal processes (issue 13),
# and the names, priorities and rows here are all it reads before that.


class _Lazy:
    """The coroutine function ``NAME`` of module *module*, imported on the
    first call. The job services' modules (``lamd.jobs.kenyad`` & co.) are
    loaded only by a process that boots them (the jobs process, a service
    host), not by every daemon that builds the boot table (the daemon leaves
    those rows out or boots stubs in them); the others when booted, after
    the daemon's first turn."""

    __slots__ = ("module", "name", "_fn")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        self._fn: IProcMain | None = None

    def resolve(self) -> IProcMain:
        if self._fn is None:
            self._fn = getattr(importlib.import_module(self.module, __package__), self.name)
        return self._fn

    def __call__(self, k: IProc) -> Any:
        return self.resolve()(k)

    def __repr__(self) -> str:
        return f"<lazy {self.module}.{self.name}>"


filed = _Lazy("..jobs.filed", "filed")
flatd = _Lazy("..jobs.flatd", "flatd")
iod = _Lazy("..jobs.iod", "iod")
kenyad = _Lazy("..jobs.kenyad", "kenyad")
loadd = _Lazy("..jobs.loadd", "loadd")

#: The boot-table rows the jobs process serves, in LAM's table order
#: (:mod:`lamd.jobs.process`).
JOB_SERVICES = ("flatd", "loadd", "kenyad", "filed", "iod")

#: The rows a datalink process outside the kernel serves (:mod:`lamd.datalink`:
#: LAM's separate ``lamd_dli_inet``, ``lamd_dlo_inet`` and bforward).
DATALINK_SERVICES = ("dli_inet", "dlo_inet", "bforward")

#: LAM's kboottbl[], in order.
BOOT_TABLE: list[KBoot] = [
    KBoot("router", PRROUTER, _Lazy(".router", "router")),
    KBoot("bufferd", PRBUFFERD, _Lazy(".bufferd", "bufferd")),
    KBoot("dli_inet", PRDLI, _Lazy(".dli", "dli")),
    KBoot("dlo_inet", PRDLO, _Lazy(".dlo", "dlo")),
    KBoot("echod", PRECHOD, _Lazy(".echod", "echod")),
    KBoot("bforward", PRBFORWARD, _Lazy(".bforward", "bforward")),
    KBoot("flatd", PRDAEMON, flatd),
    KBoot("loadd", PRLOADD, loadd),
    KBoot("kenyad", PRDAEMON, kenyad),
    KBoot("filed", PRFILED, filed),
    KBoot("traced", PRDAEMON, _Lazy(".traced", "traced")),
    KBoot("iod", PRDAEMON, iod),
    KBoot("died", PRDIED, _Lazy(".stubs", "died")),
    KBoot("haltd", PRHALTD, _Lazy(".haltd", "haltd")),
    KBoot("versiond", PRVERSIOND, _Lazy(".versiond", "versiond")),
]


#: The row a kernel whose dli is outside it adds after LAM's table (pid
#: 100015): :mod:`.diforward`, which hands on each frame that dli gives it
#: once, across a crash of the datalink process.
DIFORWARD = KBoot("diforward", PRDLI, _Lazy(".diforward", "diforward"), row=len(BOOT_TABLE))
#: The row a kernel whose dlo is outside it adds (pid 100016):
#: :mod:`.doforward`, which takes the packets for other nodes on ``EVDL0`` in
#: dlo's place and gives them to dlo so that a crash of the datalink process
#: loses none.
DOFORWARD = KBoot("doforward", PRDLO, _Lazy(".doforward", "doforward"), row=len(BOOT_TABLE) + 1)

#: Rows that never leave the kernel, and why:
#:
#: * ``haltd``: its job, halting the daemon (``k.halt``: kkillall, the
#:   session files, exit), is a kernel action no client can ask for;
#: * ``bufferd``: every ``nsend``/``nrecv`` goes through it, those of the
#:   external services included (a ``dsfr`` to EVBUFFERD): a host would be
#:   serving its own dependency, and every network message would take two
#:   more socket hops;
#: * ``router``: the node table is this kernel's own identity (node id,
#:   origin, cpus from the daemon's settings), which every kinit'ed client
#:   and every tool reads through it.
KERNEL_SIDE = frozenset({"router", "bufferd", "haltd"})
#: Every row by name.
BY_NAME: dict[str, KBoot] = {kb.name: kb for kb in BOOT_TABLE}
#: Names a configuration may list as external, in table order.
EXTERNAL_OK = tuple(kb.name for kb in BOOT_TABLE if kb.name not in KERNEL_SIDE)


class BootConfigError(ValueError):
    """An external-service list names an unknown or kernel-side service."""


def parse_external(spec: str | Iterable[str] | None) -> list[str]:
    """Service names from ``--external``/``LAMD_EXTERNAL`` (comma or space
    separated, possibly several strings), in table order, without repeats.

    Raises :class:`BootConfigError` (one line) for an unknown name or one of
    :data:`KERNEL_SIDE`.
    """
    if spec is None:
        return []
    parts = [spec] if isinstance(spec, str) else list(spec)
    names = [n for part in parts for n in part.replace(",", " ").split()]
    for n in names:
        if n in KERNEL_SIDE:
            raise BootConfigError(f"{n} cannot be external: it stays in the kernel "
                                  f"(kernel-side: {', '.join(sorted(KERNEL_SIDE))})")
        if n not in BY_NAME:
            raise BootConfigError(f"unknown service {n!r} (services that can be "
                                  f"external: {', '.join(EXTERNAL_OK)})")
    want = set(names)
    return [n for n in EXTERNAL_OK if n in want]


def boot_config(config: dict[str, Any], kernel_side: bool = True) -> dict[str, Any]:
    """Fill ``config["node_addr"]`` (:data:`LOCALHOST`), ``node_id``, ``identity``
    (:class:`~.nreq.Identity`, shared by every process booted with *config*:
    the router changes it when it learns a universe) and, for the
    daemon's own processes (*kernel_side*), the router's table they share
    (``route_table``) if missing. A separate process (the jobs process)
    has no table of its own: its ``getroute`` asks the router."""
    from .nreq import Identity
    from .router import route_table

    if not config.get("node_addr"):
        config["node_addr"] = LOCALHOST
    config.setdefault("node_id", 0)
    ident = config.get("identity")
    if ident is None:
        config["identity"] = Identity(int(config["node_id"]), int(config.get("origin", 0)))
    else:  # booted again (lamboot's universe after the defaults): one object still
        ident.node_id, ident.origin = int(config["node_id"]), int(config.get("origin", 0))
    if kernel_side and config.get("route_table") is None:
        config["route_table"] = route_table(config)
    return config


def boot_table(config: dict[str, Any], external: Iterable[str] = ()) -> list[KBoot]:
    """The boot table without the *external* rows; fills ``config["node_addr"]``
    (:data:`LOCALHOST`) if missing.

    Each row keeps its place in LAM's table (``row``), so leaving rows out
    keeps every other process at LAM's pid. The daemon passes the same
    *config* to ``Kernel.boot``, so every internal process sees one address.
    """
    boot_config(config)
    return [replace(kb, row=row) for row, kb in _booted(external)]


def booted_rows(external: Iterable[str] = ()) -> int:
    """How many rows :func:`boot_table` gives without the *external* ones."""
    return len(_booted(external))


def _booted(external: Iterable[str]) -> list[tuple[int, KBoot]]:
    """(row, row of the table) for LAM's rows but the *external* ones; with
    dli outside, :data:`DIFORWARD` after them, with dlo outside,
    :data:`DOFORWARD`."""
    skip = set(parse_external(list(external)))
    rows = [(row, kb) for row, kb in enumerate(BOOT_TABLE) if kb.name not in skip]
    if "dli_inet" in skip:
        rows.append((len(BOOT_TABLE), DIFORWARD))
    if "dlo_inet" in skip:
        rows.append((len(BOOT_TABLE) + 1, DOFORWARD))
    return rows


def with_stubs(table: Iterable[KBoot], names: Iterable[str]) -> list[KBoot]:
    """*table* with the ESERVICE stubs of :mod:`lamd.iprocs.stubs` in the
    rows *names* (a daemon that runs no jobs, or has given its jobs process
    up, answers at once instead of starting programs from the kernel)."""
    from . import stubs
    stubbed = set(names)
    return [replace(kb, main=getattr(stubs, kb.name)) if kb.name in stubbed else kb
            for kb in table]


__all__ = ["BOOT_TABLE", "JOB_SERVICES", "DATALINK_SERVICES", "BY_NAME", "KERNEL_SIDE", "EXTERNAL_OK", "BootConfigError",
           "parse_external", "boot_config", "boot_table", "booted_rows", "with_stubs"]
