"""LAM's internal processes, as coroutines booted inside the daemon.

The boot table follows LAM's ``kboottbl[]`` (``otb/sys/lamd/kiproc.c``) row
for row, so every internal process has LAM's priority and LAM's pid
(100000 + row): router 100000, bufferd 100001, echod 100004, kenyad 100008,
haltd 100013, versiond 100014. Services this daemon does not provide yet are
stubs that fail fast (:mod:`lamd.iprocs.stubs`).

Settings read from the boot configuration (all optional):
``node_addr`` (this node's IPv4 address; found over netlink when absent),
``ncpus`` (default 1, as ``lamboot`` without a cpu count), ``node_type``,
``dli_port``, ``session`` (the session directory), ``bufferd_space`` and
``bufferd_space_limit``.
"""

from __future__ import annotations

from typing import Any

from ..kernel.constants import (
    PRBFORWARD, PRBUFFERD, PRDAEMON, PRDIED, PRDLI, PRDLO, PRECHOD, PRFILED,
    PRHALTD, PRLOADD, PRROUTER, PRVERSIOND,
)
from ..kernel.kiproc import KBoot
from .bufferd import bufferd
from .dlo import dlo
from .echod import echod
from .haltd import haltd
from .netaddr import node_address
from .router import router
from .stubs import bforward, died, dli, filed, flatd, iod, kenyad, loadd, traced
from .versiond import versiond

#: LAM's kboottbl[], in order.
BOOT_TABLE: list[KBoot] = [
    KBoot("router", PRROUTER, router),
    KBoot("bufferd", PRBUFFERD, bufferd),
    KBoot("dli_inet", PRDLI, dli),
    KBoot("dlo_inet", PRDLO, dlo),
    KBoot("echod", PRECHOD, echod),
    KBoot("bforward", PRBFORWARD, bforward),
    KBoot("flatd", PRDAEMON, flatd),
    KBoot("loadd", PRLOADD, loadd),
    KBoot("kenyad", PRDAEMON, kenyad),
    KBoot("filed", PRFILED, filed),
    KBoot("traced", PRDAEMON, traced),
    KBoot("iod", PRDAEMON, iod),
    KBoot("died", PRDIED, died),
    KBoot("haltd", PRHALTD, haltd),
    KBoot("versiond", PRVERSIOND, versiond),
]


def boot_table(config: dict[str, Any]) -> list[KBoot]:
    """The boot table; fills ``config["node_addr"]`` (netlink) if missing.

    The daemon passes the same *config* to ``Kernel.boot``, so every internal
    process sees one address.
    """
    if not config.get("node_addr"):
        config["node_addr"] = node_address()
    config.setdefault("node_id", 0)
    return list(BOOT_TABLE)


__all__ = ["BOOT_TABLE", "boot_table"]
