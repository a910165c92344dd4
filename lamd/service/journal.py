"""Logging: to the journal with LAM_* fields under systemd, to stderr by hand.

Set up before the daemon's first reply (socket activation: the first client
waits for it), so it imports no ``re`` and not python3-systemd's
``systemd.journal`` (about 14 ms: uuid, platform, traceback): only its C
part, ``systemd._journal``, whose ``sendv`` is what ``journal.send`` calls.
"""

from __future__ import annotations

import logging
import os
import sys

from .. import lazylog
from .activation import under_systemd
from .errors import ServiceError

#: journald field names: upper-case ASCII, digits, underscore; not leading
#: underscore (those are trusted fields only journald may set); at most 64.
_FIELD_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_FIELD_REST = _FIELD_FIRST | {"_"}


def is_journal_field(key: str) -> bool:
    """Whether *key* is a journal field name (``^[A-Z0-9][A-Z0-9_]{0,63}$``)."""
    return (0 < len(key) <= 64 and key[0] in _FIELD_FIRST
            and all(ch in _FIELD_REST for ch in key))

#: Fields journal logging already sets itself; an ``extra=`` may not override.
_RESERVED_FIELDS = frozenset({
    "MESSAGE", "PRIORITY", "LOGGER", "THREAD_NAME", "PROCESS_NAME",
    "CODE_FILE", "CODE_LINE", "CODE_FUNC", "SYSLOG_IDENTIFIER",
})

SYSLOG_IDENTIFIER = "lamd"


def journal_send(MESSAGE: str, **fields: object) -> None:
    """``systemd.journal.send`` for what :class:`LamJournalHandler` passes (a
    message and named fields, CODE_* among them), through ``sendv`` itself."""
    from systemd._journal import sendv

    sendv("MESSAGE=" + MESSAGE,
          *[k.encode() + b"=" + v if isinstance(v, bytes) else f"{k}={v}"
            for k, v in fields.items()])


def journal_fields(record: logging.LogRecord) -> dict[str, object]:
    """Structured journal fields carried by a record's ``extra=``.

    Every record attribute whose name is a valid journal field name (upper
    case, e.g. ``LAM_PID``, ``LAM_REQUEST``, ``LAM_ERROR``) becomes a field;
    ``None`` values are dropped.
    """
    out: dict[str, object] = {}
    for key, value in record.__dict__.items():
        if value is None or key in _RESERVED_FIELDS or not is_journal_field(key):
            continue
        out[key] = value
    return out


class LamJournalHandler(logging.Handler):
    """Native journal logging with the ``extra=`` fields as journal fields.

    Unlike ``systemd.journal.JournalHandler`` this sends only valid field
    names (never the LogRecord's own lower-case attributes) and tags every
    entry ``SYSLOG_IDENTIFIER=lamd``.
    """

    def __init__(self, level: int = logging.NOTSET, sender=None,
                 identifier: str = SYSLOG_IDENTIFIER) -> None:
        super().__init__(level)
        if sender is None:
            from systemd import _journal  # noqa: F401  (ImportError: no python3-systemd)
            sender = journal_send
        self._send = sender
        self.identifier = identifier

    @staticmethod
    def map_priority(levelno: int) -> int:
        if levelno <= logging.DEBUG:
            return 7
        if levelno <= logging.INFO:
            return 6
        if levelno <= logging.WARNING:
            return 4
        if levelno <= logging.ERROR:
            return 3
        return 2

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            fields = {k: str(v) for k, v in journal_fields(record).items()}
            self._send(msg,
                       PRIORITY=str(self.map_priority(record.levelno)),
                       SYSLOG_IDENTIFIER=self.identifier,
                       LOGGER=record.name,
                       CODE_FILE=record.pathname,
                       CODE_LINE=record.lineno,   # journal.send wants an int
                       CODE_FUNC=record.funcName,
                       **fields)
        except Exception:
            self.handleError(record)


class StderrFormatter(logging.Formatter):
    """By-hand format: ``lamd[PID]: LEVEL message [LAM_PID=.. LAM_REQUEST=..]``."""

    def __init__(self) -> None:
        super().__init__("lamd[%(process)d]: %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = journal_fields(record)
        if fields:
            text += " [" + " ".join(f"{k}={v}" for k, v in sorted(fields.items())) + "]"
        return text


def parse_level(level: str | int | None) -> int:
    """A logging level from a name (``debug``, ``INFO``...) or a number
    (:func:`lamd.lazylog.parse_level`, which the daemon calls without
    importing ``logging``). Raises :class:`ServiceError` on an unknown name."""
    try:
        return lazylog.parse_level(level)
    except ValueError as e:
        raise ServiceError(str(e)) from None


def setup_logging(level: str | int | None = "info", *, journal: bool | None = None) -> None:
    """Configure the root logger: journal under systemd, else stderr.

    *journal* forces the choice (tests); by default the journal is used when
    ``JOURNAL_STREAM`` or ``INVOCATION_ID`` is set and python3-systemd works.
    """
    lvl = parse_level(level)
    if journal is None:
        journal = under_systemd()
    handler: logging.Handler | None = None
    if journal:
        try:
            handler = LamJournalHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
        except ImportError:  # pragma: no cover - python3-systemd is a Depends
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
