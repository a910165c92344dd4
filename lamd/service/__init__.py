"""systemd integration: socket activation, sd_notify, journal logging, proctitle.

Everything here degrades gracefully when not running under systemd, so the
daemon behaves the same by hand (stderr logging, its own socket) as under
``lamd@USER.service`` (journal logging, the socket passed by ``lamd@USER.socket``).

* :mod:`.activation`: :func:`adopt_listen_socket`;
* :mod:`.journal`: :func:`setup_logging`, :class:`LamJournalHandler`;
* :mod:`.notify`: :class:`Notifier`;
* :mod:`.proctitle`: :func:`set_proctitle`;
* :mod:`.prepare`: :func:`prepare_session_dir` (``python3 -m lamd.service
  prepare-session USER``), the socket unit's ``ExecStartPre=``;
* :mod:`.reload`: ``python3 -m lamd.service reload PID``, the service's
  ``ExecReload=`` (re-exec in place, waiting for the new image).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    from .journal import LamJournalHandler, StderrFormatter, journal_fields, parse_level, setup_logging

from .activation import SD_LISTEN_FDS_START, adopt_listen_socket, check_listen_socket, under_systemd
from .errors import EX_CONFIG, ServiceError
from .notify import Notifier
from .proctitle import current_user, proctitle, set_proctitle

# The ExecStartPre= and ExecReload= helpers, and the journal handler (it
# imports logging), are loaded when asked for, not by every daemon importing
# this package before its first reply (issue 13).
_LAZY = {"main": "prepare", "prepare_session_dir": "prepare", "session_dir": "prepare",
         "reload": None, "prepare": None, "journal": None,
         "LamJournalHandler": "journal", "StderrFormatter": "journal",
         "journal_fields": "journal", "parse_level": "journal", "setup_logging": "journal"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    mod = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    value = mod if _LAZY[name] is None else getattr(mod, name)
    globals()[name] = value
    return value


__all__ = ["SD_LISTEN_FDS_START", "adopt_listen_socket", "check_listen_socket", "under_systemd",
           "EX_CONFIG", "ServiceError", "LamJournalHandler", "StderrFormatter",
           "journal_fields", "parse_level", "setup_logging", "Notifier", "main",
           "prepare_session_dir", "session_dir", "current_user", "proctitle", "set_proctitle", "reload"]
