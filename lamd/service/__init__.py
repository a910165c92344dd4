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

from .activation import SD_LISTEN_FDS_START, adopt_listen_socket, check_listen_socket, under_systemd
from .errors import EX_CONFIG, ServiceError
from .journal import LamJournalHandler, StderrFormatter, journal_fields, parse_level, setup_logging
from .notify import Notifier
from .prepare import main, prepare_session_dir, session_dir
from .proctitle import current_user, proctitle, set_proctitle
from . import reload

__all__ = ["SD_LISTEN_FDS_START", "adopt_listen_socket", "check_listen_socket", "under_systemd",
           "EX_CONFIG", "ServiceError", "LamJournalHandler", "StderrFormatter",
           "journal_fields", "parse_level", "setup_logging", "Notifier", "main",
           "prepare_session_dir", "session_dir", "current_user", "proctitle", "set_proctitle", "reload"]
