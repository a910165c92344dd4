"""The socket unit's ``ExecStartPre=``: ``python3 -m lamd.service
prepare-session USER [PATH]`` creates (as root) or checks a user's session
directory with the same rules the daemon applies to its own
(:meth:`lamd.session.Session.prepare`)."""

from __future__ import annotations

import pwd
import sys

from ..session import Session, SessionError
from .errors import ServiceError


def session_dir(user: str, host: str | None = None, prefix: str | None = None,
                suffix: str | None = None) -> str:
    """LAM's ``<prefix>/lam-<user>@<host>[-<suffix>]`` (share/etc/kill.c)."""
    return Session.for_user(prefix=prefix, suffix=suffix, user=user, host=host).directory


def prepare_session_dir(user: str, path: str | None = None) -> str:
    """Create *user*'s session directory 0700 owned by them, or check it.

    Must run as root (it chowns). The rules are :meth:`Session.prepare`'s;
    a violation raises :class:`ServiceError`.
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ServiceError(f"user {user!r} does not exist (lamd@{user} names a user)") from None
    if pw.pw_uid == 0:
        raise ServiceError("LAM refuses to run as root: lamd@root is not supported")
    if path is None:
        path = session_dir(user)
    try:
        Session(path).prepare(owner=user, uid=pw.pw_uid, gid=pw.pw_gid)
    except SessionError as e:
        raise ServiceError(str(e)) from None
    return path


def main(argv: list[str] | None = None) -> int:
    """``python3 -m lamd.service prepare-session USER [PATH]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3) or args[0] != "prepare-session":
        print("usage: python3 -m lamd.service prepare-session USER [PATH]", file=sys.stderr)
        return 2
    try:
        path = prepare_session_dir(args[1], args[2] if len(args) == 3 else None)
    except ServiceError as e:
        print(f"lamd: {e}", file=sys.stderr)
        return e.exit_code
    print(f"lamd: session directory {path} ready", file=sys.stderr)
    return 0

