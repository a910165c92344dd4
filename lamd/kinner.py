"""Synchronization rules and the blocked list (LAM's ``kinner.c`` and ``kreq.h``).

The ``ksync_*`` functions are LAM's matching macros: a receive and a send
synchronize when their events are equal and their types share a bit (or
either is 0), or, for a process blocked with KSYNCSQL, by the SQL-like
wildcard rules. :class:`BlockedList` holds the blocked processes in LAM's
order with an index by event, so finding a partner never scans them all.
"""

from __future__ import annotations

import bisect
from typing import Any

from .constants import KEVENTHI, KSRECV, KSSEND, KSYNCSQL, KTYPEHI, KTYPELO
from .wire import KMsg


def ksync_type(a: int, b: int) -> bool:
    """``ksync_type``: 0 matches anything, else the types must share a bit."""
    return a == 0 or b == 0 or (a & b) != 0


def ksync_type_sql(a: int, b: int) -> bool:
    """``ksync_type_sql``: each 16-bit half equal, or all-ones as a wildcard."""
    a &= 0xFFFFFFFF
    b &= 0xFFFFFFFF
    hi = ((a & KTYPEHI) == KTYPEHI or (b & KTYPEHI) == KTYPEHI
          or (a & KTYPEHI) == (b & KTYPEHI))
    lo = ((a & KTYPELO) == KTYPELO or (b & KTYPELO) == KTYPELO
          or (a & KTYPELO) == (b & KTYPELO))
    return hi and lo


def ksync_event(a: int, b: int) -> bool:
    """``ksync_event``: events must be equal."""
    return a == b


def ksync_event_sql(a: int, b: int) -> bool:
    """``ksync_event_sql``: low bits equal; the KEVENTHI bits equal or wild."""
    if (a & ~KEVENTHI) != (b & ~KEVENTHI):
        return False
    return ((a & KEVENTHI) == KEVENTHI or (b & KEVENTHI) == KEVENTHI
            or (a & KEVENTHI) == (b & KEVENTHI))


def ksync_cmp(blocked: Any, msg: KMsg) -> bool:
    """``ksync_cmp``: does *msg* meet the blocked process's message?

    The blocked process's own KSYNCSQL flag chooses the rules, as in LAM.
    """
    bm = blocked.msg
    if bm.flags & KSYNCSQL:
        return ksync_event_sql(bm.event, msg.event) and ksync_type_sql(bm.type, msg.type)
    return bm.event == msg.event and ksync_type(bm.type, msg.type)


class BlockedList:
    """LAM's blocked list (``pblock``), indexed so no request walks all of it.

    LAM keeps one list ordered by priority, then by time of blocking, and a
    request takes the first process in it that synchronizes. Here each
    process carries that position as ``bkey`` = (-priority, arrival), and the
    list is kept as one sorted list per (state, event) for the exact-match
    rules, plus one per state for processes blocked with KSYNCSQL (whose
    events match by pattern). Finding a partner looks at one event's list
    and the SQL list, in LAM's order.
    """

    def __init__(self) -> None:
        self.by_event: dict[tuple[int, int], list[Any]] = {}
        self.sql: dict[int, list[Any]] = {KSSEND: [], KSRECV: []}
        self.count = 0

    def find(self, syncstate: int, msg: KMsg) -> Any:
        """The first blocked process in LAM order that *msg* synchronizes with."""
        best = None
        lst = self.by_event.get((syncstate, msg.event))
        if lst:
            t = msg.type
            for p in lst:
                pt = p.msg.type
                if pt == 0 or t == 0 or (pt & t):
                    best = p
                    break
        sql = self.sql[syncstate]
        if sql:
            for p in sql:
                if best is not None and p.bkey > best.bkey:
                    break
                if ksync_cmp(p, msg):
                    best = p
                    break
        return best

    def insert(self, p: Any) -> None:
        """``kpinsert(&pblock, p)``: *p* (state and bkey set) joins the list."""
        if p.msg.flags & KSYNCSQL:
            lst = self.sql[p.state]
        else:
            lst = self.by_event.setdefault((p.state, p.msg.event), [])
        if not lst or lst[-1].bkey < p.bkey:
            lst.append(p)
        else:
            bisect.insort(lst, p, key=_bkey)
        self.count += 1

    def delete(self, p: Any) -> None:
        """``kpdelete(&pblock, p)``: *p* (state and msg unchanged) leaves it."""
        if p.msg.flags & KSYNCSQL:
            lst = self.sql[p.state]
            key = None
        else:
            key = (p.state, p.msg.event)
            lst = self.by_event.get(key, [])
        i = bisect.bisect_left(lst, p.bkey, key=_bkey)
        if i < len(lst) and lst[i] is p:
            del lst[i]
            self.count -= 1
        else:  # pragma: no cover - defensive
            try:
                lst.remove(p)
                self.count -= 1
            except ValueError:
                pass
        if key is not None and not lst:
            del self.by_event[key]

    def members(self) -> list[Any]:
        return ([p for lst in self.by_event.values() for p in lst]
                + [p for lst in self.sql.values() for p in lst])

    def check(self) -> None:
        """Assert the index is consistent (tests, fuzzing)."""
        members = self.members()
        assert len(members) == len(set(map(id, members))) == self.count, "blocked index"
        for (state, event), lst in self.by_event.items():
            assert lst, "empty list kept"
            for p in lst:
                assert p.state == state and p.msg.event == event and not p.msg.flags & KSYNCSQL
            assert [p.bkey for p in lst] == sorted(p.bkey for p in lst), "order"
        for state, lst in self.sql.items():
            for p in lst:
                assert p.state == state and p.msg.flags & KSYNCSQL
            assert [p.bkey for p in lst] == sorted(p.bkey for p in lst), "order"


def _bkey(p: Any) -> tuple[int, int]:
    return p.bkey
