"""What ``ps`` shows: ``lamd: USER, N clients``."""

from __future__ import annotations

import os
import pwd


def set_proctitle(text: str) -> None:
    """Set what ``ps`` shows, e.g. ``lamd: alice, 3 clients``."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - python3-setproctitle is a Depends
        return
    setproctitle.setproctitle(text)


def proctitle(user: str | None = None, clients: int = 0) -> str:
    """The standard title: ``lamd: USER, N client(s)``."""
    if user is None:
        user = current_user()
    return f"lamd: {user}, {clients} client{'' if clients == 1 else 's'}"


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
