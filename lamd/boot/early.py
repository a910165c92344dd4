"""The boot callback as early as a lamd started by hboot can make it.

lamboot boots one node at a time: it waits for each new lamd's callback
(:class:`~lamd.boot.callback.CltCoord`) before it runs hboot on the next
node, and sends every node the universe only once all have called back.
So the time from hboot's ``exec`` to the callback is on lamboot's path once
per node, while whatever the daemon does after it overlaps the other nodes'
boots. The C lamd calls back a few milliseconds after it starts; a Python
daemon that first imported its kernel would call back tens of
milliseconds later, on every node.

:func:`main_early` runs before anything else of the daemon is imported (the
``lamd`` command's entry point, :mod:`lamd.launch`): if the arguments carry
hboot's ``-H -P -n``, it opens the datalink's UDP socket and the boot
listener, sends lamboot the coordinates and keeps the result in
:data:`PENDING`, which :func:`lamd.boot.agent.boot_agent` then finishes
(it receives the universe). Before it, the session socket is bound, so that
lamboot never returns before every node's kernel socket exists. Only
``_socket`` (not :mod:`socket`: its enums cost 5 ms), ``struct``, ``time``
and :mod:`lamd.session` are imported here; the daemon gets its sockets as
:class:`socket.socket` objects (:func:`take`, :func:`take_listener`)
(the callback's codec, :mod:`lamd.boot.callback`, takes its coordinates'
format from this module). Anything unexpected leaves
:data:`PENDING` empty, and the daemon calls back itself as before (and
reports what went wrong).
"""

from __future__ import annotations

import _socket
import struct
import time

TYPE_CHECKING = False  # (mypy knows the name; typing itself is not imported)
if TYPE_CHECKING:
    import socket

#: the datalink input socket's receive buffer (di_bootagent: 3 whole frames)
DLI_RCVBUF = 3 * (60 + 8192)
#: ``writecltcoord`` + num_cpus: status (``INT4_NIL``), node id, boot port,
#: datalink port, CPUs, big-endian (:class:`lamd.boot.callback.CltCoord`)
_COORD = struct.Struct(">5i")


def pack_coord(node_id: int, boot_port: int, dli_port: int, num_cpus: int = -1) -> bytes:
    """A lamd's coordinates as lamboot reads them (status ``INT4_NIL``)."""
    return _COORD.pack(0, node_id, boot_port, dli_port, num_cpus)


class Called:
    """A callback made: the sockets the coordinates named, lamboot's address
    (the only one the universe is taken from) and the overall deadline.
    (A plain class: ``dataclasses`` alone would double this module's import
    time, which is on lamboot's path.)"""

    __slots__ = ("agent_addr", "agent_port", "node_id", "agent", "dli", "srv", "boot_port",
                 "dli_port", "deadline")

    def __init__(self, agent_addr: str, agent_port: int, node_id: int, agent: str,
                 dli: _socket.socket, srv: _socket.socket, deadline: float) -> None:
        self.agent_addr, self.agent_port, self.node_id = agent_addr, agent_port, node_id
        self.agent, self.dli, self.srv, self.deadline = agent, dli, srv, deadline
        self.boot_port: int = srv.getsockname()[1]
        self.dli_port: int = dli.getsockname()[1]

    def matches(self, agent_addr: str, agent_port: int, node_id: int) -> bool:
        return (self.agent_addr, self.agent_port, self.node_id) == (agent_addr, agent_port,
                                                                    node_id)

    def close(self) -> None:
        self.dli.close()
        self.srv.close()

    def promote(self) -> None:
        """Its sockets as the :class:`socket.socket` objects the daemon works with."""
        self.dli, self.srv = _full(self.dli), _full(self.srv)


#: the callback :func:`main_early` made, for the daemon to finish
PENDING: Called | None = None
#: the session socket it bound first: (session directory, listening socket)
LISTENER: tuple[str, _socket.socket] | None = None


def resolve(addr: str) -> str:
    """``gethaddr``: dotted decimal, else a host name (lamboot -l)."""
    try:
        return _socket.inet_ntop(_socket.AF_INET, _socket.inet_pton(_socket.AF_INET, addr))
    except OSError:
        return _socket.gethostbyname(addr)


def call_back(agent_addr: str, agent_port: int, node_id: int, *, timeout: float = 300.0,
              connect_timeout: float = 30.0) -> Called:
    """Open the datalink socket and the boot listener on ephemeral ports and
    send lamboot their ports (``lam_ssi_boot_base_send_lamd_info``). Raises
    OSError; closes what it opened then."""
    deadline = time.monotonic() + timeout
    agent = resolve(agent_addr)
    dli = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)  # (close-on-exec)
    srv = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        dli.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, DLI_RCVBUF)
        dli.bind(("0.0.0.0", 0))
        srv.bind(("0.0.0.0", 0))
        srv.listen(4)
        called = Called(agent_addr, agent_port, node_id, agent, dli, srv, deadline)
        # not socket.create_connection: its getaddrinfo imports the idna
        # codec (and re, about 2.5 ms); *agent* is a dotted quad already
        c = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        try:
            c.settimeout(connect_timeout)
            c.connect((agent, agent_port))
            c.sendall(pack_coord(node_id, called.boot_port, called.dli_port))
        finally:
            c.close()
    except BaseException:
        dli.close()
        srv.close()
        raise
    return called


def hboot_args(argv: list[str]) -> tuple[str, int, int] | None:
    """``-H ADDR -P PORT -n NODE`` among *argv* (what hboot passes), or None
    if any is missing, repeated or malformed (the daemon's parser reports it)."""
    seen: dict[str, str] = {}
    for i, a in enumerate(argv[:-1]):
        if a in ("-H", "-P", "-n"):
            if a in seen:
                return None
            seen[a] = argv[i + 1]
    try:
        return seen["-H"], int(seen["-P"]), int(seen["-n"])
    except (KeyError, ValueError):
        return None


def _option(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a == name:
            return argv[i + 1]
    return None


def main_early(argv: list[str]) -> None:
    """Call lamboot back now if *argv* are hboot's; never raises.

    The session socket is bound first (:func:`lamd.session.bind_session_socket`,
    kept in :data:`LISTENER` for the daemon): lamboot returns as soon as it
    has sent the last node its universe, and a LAM command run right after
    it must find every node's kernel socket, as with the C lamd (a client
    then waits in the listen queue until the daemon serves, a few tens of
    milliseconds). Anything the session refuses (a live daemon, a wrong
    directory) is left to the daemon to report: no early callback then."""
    global LISTENER
    if "-H" not in argv or "--help" in argv or "-h" in argv:
        return
    got = hboot_args(argv)
    if got is None:
        return
    try:
        from ..session import Session, SessionError, bind_session_socket
    except ImportError:  # pragma: no cover - a broken install: the daemon says so
        return
    try:
        session = Session.for_user(prefix=_option(argv, "-sessionprefix"),
                                   suffix=_option(argv, "-sessionsuffix"))
        session.ensure_directory()
        listener = bind_session_socket(session, factory=_socket.socket)
    except (SessionError, OSError):
        return
    LISTENER = (session.directory, listener)
    call_back_now(argv)


def call_back_now(argv: list[str]) -> bool:
    """Make the callback for *argv* (hboot's arguments) now, and keep it in
    :data:`PENDING` for :func:`lamd.boot.agent.boot_agent`; never raises.
    False if *argv* are not hboot's or the callback failed: the daemon then
    calls back itself, and says why it cannot."""
    global PENDING
    got = hboot_args(argv)
    if got is None:
        return False
    try:
        PENDING = call_back(*got)
    except (OSError, ValueError):
        PENDING = None
    return PENDING is not None


def _full(s: _socket.socket) -> socket.socket:
    """*s* as the :class:`socket.socket` the daemon works with (the same descriptor)."""
    import socket

    if isinstance(s, socket.socket):
        return s
    return socket.socket(fileno=s.detach())


def take_listener(directory: str) -> socket.socket | None:
    """The session socket :func:`main_early` bound for *directory*, if any (once)."""
    global LISTENER
    got, LISTENER = LISTENER, None
    if got is None:
        return None
    if got[0] != directory:
        got[1].close()
        return None
    return _full(got[1])


def take(agent_addr: str, agent_port: int, node_id: int) -> Called | None:
    """The callback already made for these arguments, if any (once)."""
    global PENDING
    called, PENDING = PENDING, None
    if called is None:
        return None
    if not called.matches(agent_addr, agent_port, node_id):
        called.close()
        return None
    return called


__all__ = ["Called", "PENDING", "LISTENER", "DLI_RCVBUF", "call_back", "call_back_now",
           "hboot_args", "main_early", "pack_coord", "resolve", "take", "take_listener"]
