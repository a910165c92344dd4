"""Loggers that load :mod:`logging` when there is something to log (issue 13).

``logging`` brings ``re``, ``traceback``, ``threading``, ``string`` and
``weakref`` with it: about 5 ms of a socket activation, whose first client
waits for the whole start. The modules on that path take their loggers from
here. :func:`getLogger` gives a stand-in with the methods they call:

* a call below the level the process chose (:func:`set_level`) returns at
  once, without ``logging``;
* any other imports ``logging``, runs the set-up the process registered with
  :func:`defer_setup` (the journal or stderr handler), and logs through the
  real logger of the same name, reporting the caller's file and line
  (``stacklevel``), as a direct call would.

A process that sets no level (the tests, the tools) logs every call through
``logging`` as configured there. :func:`setup_now` runs the deferred set-up
(the daemon calls it once its first clients are served, so that modules
using ``logging`` directly log through the same handler).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import logging
    from typing import Any, Callable

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
CRITICAL = 50

#: the names a log level is given by (``--log-level``, ``$LAMD_LOG_LEVEL``);
#: ``notice`` is systemd's, below warning
LEVELS = {"debug": DEBUG, "info": INFO, "notice": INFO, "warning": WARNING, "warn": WARNING,
          "error": ERROR, "err": ERROR, "critical": CRITICAL, "crit": CRITICAL}

_level = 0  # set_level(): calls below it return without logging
_setup: "Callable[[], None] | None" = None  # defer_setup(): run before the first record


def parse_level(level: "str | int | None") -> int:
    """A level's number from its name (:data:`LEVELS`) or digits; None or
    "" means ``$LAMD_LOG_LEVEL`` (the unit's environment file), else info.
    Raises ValueError naming the choices."""
    if level is None or level == "":
        import os

        level = os.environ.get("LAMD_LOG_LEVEL") or "info"
    if isinstance(level, int):
        return level
    text = str(level).strip()
    if text.isdigit():
        return int(text)
    try:
        return LEVELS[text.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {text!r} "
                         f"(one of: {', '.join(sorted(LEVELS))})") from None


def level_name(level: int) -> str:
    """The name :func:`parse_level` reads back as *level*."""
    for name in ("debug", "info", "warning", "error", "critical"):
        if LEVELS[name] == level:
            return name
    return str(level)


def set_level(level: int) -> None:
    """Calls below *level* return without importing ``logging``."""
    global _level
    _level = level


def defer_setup(setup: "Callable[[], None]") -> None:
    """Run *setup* (which configures ``logging``) before the first record."""
    global _setup
    _setup = setup


def setup_now() -> None:
    """Run the deferred set-up, if it has not run."""
    global _setup
    setup, _setup = _setup, None
    if setup is not None:
        setup()


class Logger:
    """The methods of :class:`logging.Logger` the daemon's modules call."""

    __slots__ = ("name", "_logger")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: "logging.Logger | None" = None

    def _real(self) -> "logging.Logger":
        if self._logger is None:
            import logging

            setup_now()
            self._logger = logging.getLogger(self.name)
        return self._logger

    def isEnabledFor(self, level: int) -> bool:
        return level >= _level and self._real().isEnabledFor(level)

    def _emit(self, level: int, msg: object, args: "tuple[Any, ...]",
              kwargs: "dict[str, Any]") -> None:
        # the record names the caller of debug(), info()...: two frames up
        kwargs.setdefault("stacklevel", 3)
        self._real().log(level, msg, *args, **kwargs)

    def debug(self, msg: object, *args: "Any", **kwargs: "Any") -> None:
        if DEBUG >= _level:
            self._emit(DEBUG, msg, args, kwargs)

    def info(self, msg: object, *args: "Any", **kwargs: "Any") -> None:
        if INFO >= _level:
            self._emit(INFO, msg, args, kwargs)

    def warning(self, msg: object, *args: "Any", **kwargs: "Any") -> None:
        if WARNING >= _level:
            self._emit(WARNING, msg, args, kwargs)

    def error(self, msg: object, *args: "Any", **kwargs: "Any") -> None:
        if ERROR >= _level:
            self._emit(ERROR, msg, args, kwargs)

    def exception(self, msg: object, *args: "Any", **kwargs: "Any") -> None:
        if ERROR >= _level:
            kwargs.setdefault("exc_info", True)
            self._emit(ERROR, msg, args, kwargs)

    def __repr__(self) -> str:
        return f"<lazylog.Logger {self.name}>"


_loggers: "dict[str, Logger]" = {}


def getLogger(name: str) -> Logger:
    """The stand-in for ``logging.getLogger(name)`` (one per name)."""
    lg = _loggers.get(name)
    if lg is None:
        lg = _loggers[name] = Logger(name)
    return lg


__all__ = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "LEVELS", "Logger", "getLogger",
           "parse_level", "level_name", "set_level", "defer_setup", "setup_now"]
