"""One warning per kind of bad input per interval: a hostile or broken peer
cannot flood the log (or the journal), and nothing goes unseen: the next
warning of the kind says how many were held back."""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLog:
    """``warn(kind, msg, *args)`` logs at most once per *interval* per kind."""

    def __init__(self, logger: logging.Logger, interval: float) -> None:
        self.log = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warn(self, kind: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        self._last[kind] = now
        quiet = self._quiet.pop(kind, 0)
        if quiet:
            msg += " (%d more like it not logged)"
            args = (*args, quiet)
        self.log.warning(msg, *args)


__all__ = ["RateLog"]
