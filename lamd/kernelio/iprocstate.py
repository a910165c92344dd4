"""What internal processes keep across a crash, in systemd's descriptor store
(issue 12; ``docs/restart.md``).

The clients survive a crash through :mod:`.fdstore`; what the kernel's
internal processes hold is lost with the process, which on one node costs
little (bufferd's packets, a receiver blocked in bufferd asks again). Some
state cannot be had again that way: the router's table on a node whose
universe a separate datalink process gave it after boot
(:mod:`lamd.datalink`). Without it the restarted kernel is a one-node
universe while its datalink process (kept, a client like any other) serves
the others: a node cut off.

So an internal process may keep bytes here (``config["keep_state"](name,
data)``, rarely: the router when its table or its waiters change), each
name in a memfd of its own stored as ``FDNAME=iproc-<name>``, and find them
again after a crash as ``config["crash_restored"][name]``. The memfd is
rewritten in place, its data first and then a header (magic, format, the
daemon's uid, the session, length, CRC-32 of the data): a crash in between
leaves a header that does not match, and the state is refused with one
log line, as a state of another user, session or format is. A refused
state is forgotten; the process starts as it would at boot.

A re-exec (``systemctl reload``) needs none of this: the snapshot carries
the same bytes (``IProc.carry``); the store keeps the memfd meanwhile.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import TYPE_CHECKING, Final

from .. import lazylog
from .crashstate import session_digest
from .fdstore import _discard

if TYPE_CHECKING:  # pragma: no cover
    from ..service.notify import FdStore

log = lazylog.getLogger("lamd.kernelio")

PREFIX: Final = "iproc-"
MAGIC: Final = b"LAMDIPST"
FORMAT_VERSION: Final = 1
#: magic, format, uid, session digest, data length, CRC-32 of the data
_HEAD = struct.Struct("<8sII16sII")
#: more than any internal process keeps (the router: 28 bytes a node)
MAX_DATA: Final = 16 << 20


def encode(data: bytes, *, uid: int, session: str) -> bytes:
    return _HEAD.pack(MAGIC, FORMAT_VERSION, uid, session_digest(session), len(data),
                      zlib.crc32(data)) + data


def decode(raw: bytes, *, uid: int, session: str) -> bytes:
    """The data :func:`encode` wrote; ValueError (one line) for anything else."""
    if len(raw) < _HEAD.size:
        raise ValueError(f"truncated: {len(raw)} bytes, no header")
    magic, version, s_uid, digest, length, crc = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise ValueError("not a lamd internal process's state (bad magic)")
    if version != FORMAT_VERSION:
        raise ValueError(f"format {version}; this lamd reads format {FORMAT_VERSION}")
    if s_uid != uid:
        raise ValueError(f"of uid {s_uid}, not this daemon's uid {uid}")
    if digest != session_digest(session):
        raise ValueError(f"of another session than {session}")
    data = raw[_HEAD.size:]
    if len(data) != length or zlib.crc32(data) != crc:
        raise ValueError(f"{len(data)} bytes that fail their header ({length} bytes, CRC)")
    return data


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    if size > _HEAD.size + MAX_DATA:
        raise ValueError(f"{size} bytes: too big")
    return os.pread(fd, size, 0)


class IprocStates:
    """The memfds of one daemon's internal process states in the store."""

    def __init__(self, store: FdStore, *, uid: int, session: str) -> None:
        self.store = store
        self.uid = uid
        self.session = session
        self._fds: dict[str, int] = {}

    def take(self, stored: dict[str, int]) -> dict[str, bytes]:
        """After a crash: every ``iproc-*`` descriptor out of *stored* (the
        descriptor store, by name); returns the states that pass
        :func:`decode`, by name, and keeps their memfds to write again.
        Each refused one is one log line, closed and taken out of the store."""
        out: dict[str, bytes] = {}
        for fdname in [n for n in stored if n.startswith(PREFIX)]:
            fd = stored.pop(fdname)
            name = fdname[len(PREFIX):]
            try:
                out[name] = decode(_read_all(fd), uid=self.uid, session=self.session)
            except (OSError, ValueError) as e:
                why = e.strerror if isinstance(e, OSError) else str(e)
                log.error("after a crash: %s's state refused, it starts afresh: %s", name, why)
                _discard(self.store, fdname, fd)
                continue
            os.set_inheritable(fd, False)
            self._fds[name] = fd
        return out

    def keep(self, name: str, data: bytes) -> None:
        """Write *name*'s state (to the store the first time); a failure is
        logged, never raised: the daemon serves on, the state is not kept."""
        fd = self._fds.get(name)
        try:
            if fd is None:
                fd = os.memfd_create(f"lamd-{name}-state", os.MFD_CLOEXEC)
                self._write(fd, data)
                self.store.fdstore_remove(PREFIX + name)  # a predecessor's (a re-exec)
                if not self.store.fdstore(PREFIX + name, fd):
                    os.close(fd)
                    return
                self._fds[name] = fd
            else:
                self._write(fd, data)
        except OSError as e:
            log.error("%s's state cannot be kept for a crash: %s", name, e.strerror)

    def forget(self, name: str) -> None:
        """Out of the store (the state no longer holds)."""
        fd = self._fds.pop(name, None)
        if fd is not None:
            _discard(self.store, PREFIX + name, fd)

    def _write(self, fd: int, data: bytes) -> None:
        raw = encode(data, uid=self.uid, session=self.session)
        os.pwrite(fd, raw[_HEAD.size:], _HEAD.size)
        os.ftruncate(fd, len(raw))
        os.pwrite(fd, raw[:_HEAD.size], 0)


__all__ = ["PREFIX", "MAGIC", "FORMAT_VERSION", "MAX_DATA", "IprocStates", "decode", "encode"]
