"""Services this daemon does not provide yet: fail fast, never hang.

LAM's lamd also boots kenyad (process creation, ``otb/sys/kenyad/``),
filed (remote files and stdio, ``otb/sys/filed``), flatd, loadd (program
loading), iod (remote stdio), and the datalink and forwarding processes
(dli_inet, bforward) and died. (traced is :mod:`lamd.iprocs.traced`.) ``lamexec``,
``mpirun``, ``mpitask`` and MPI programs call them. Each stub here is an
internal process at LAM's pid and priority that answers every request with
``ESERVICE`` ("service unavailable") in the reply format its client library
reads, so the stock tool reports an error at once instead of waiting for a
reply that never comes.

Requests and replies (all arrive through bufferd: ``nsend`` to the service
event, ``nrecv`` of the reply on the client's ``-pid``)::

    filed   request struct freq in nh_data (native): fq_req, fq_src_node,
            fq_src_event, ...; reply struct freply in nh_data: fr_errno, fr_ret
    kenyad  request struct preq as the body, Trollius (big-endian) order:
            pq_src_node, pq_src_event, pq_req, ..., pq_rtf (word 6) ...;
            reply struct preply as the body, big-endian: pr_reply, pr_pid,
            pr_index, pr_nodeid (NREEL set, as kenyad's psendr)
    loadd   request struct lreq in nh_data: lq_req, lq_src_node,
            lq_src_event, ...; reply struct lreply in nh_data: lr_reply
    flatd   request struct flreq in nh_data: flq_src_node, flq_src_event,
            flq_req, ...; reply struct flreply in nh_data: flr_reply

Passed file descriptors: ``lam_lfopenfd`` (filed ``FQOPENFD``, what
``mpirun``/``lamexec`` do first) and ``rpcreatev`` with ``RTF_PFDIO``
(kenyad) open a Unix socket server in the session directory and *block in
accept()* until the service connects and takes stdin/stdout/stderr. The
stubs therefore connect, take the three descriptors (each acknowledged
with one byte, as ``sfh_recv_fd`` does), close them and then
send the error reply, so the client reads ``ESERVICE`` instead of hanging.
Only sockets inside the daemon's session directory are ever connected to.

iod is a client of filed, not a service: it only drops what reaches it. dli,
bforward and died have nothing to do on one node and just wait.
"""

from __future__ import annotations

import logging
import os
import struct
from .._dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..kernel.constants import (
    ESERVICE, EVFILED, EVFLATD, EVIOD, EVKENYAD, EVLOADD,
    MAXNMSGLEN,
)
from ..kernel.kiproc import IProc
from ..kernel.wire import NMsg
from ..jobs import srfd
from ..jobs.srfd import fd_server_allowed
from .nreq import NMORE, NOBUF, NREEL, NetMsg, data_words, int4, my_nodeid, nrecv, nsend

if TYPE_CHECKING:  # pragma: no cover
    from ..kernel.kiproc import IProcMain

log = logging.getLogger("lamd.iprocs.stubs")

#: The error every stub answers with (terror.h; liblam prints "service unavailable").
STUB_ERROR = int(ESERVICE)

# freq.h / preq.h / kio.h
FQOPENFD = 20
PQCREATE, PQSPAWN = 1, 4
RTF_PFDIO = 0x010000

PREQ_HEAD = struct.Struct(">7i")  # pq_src_node .. pq_rtf, Trollius byte order
PREPLY = struct.Struct(">4i")  # pr_reply, pr_pid, pr_index, pr_nodeid


@dataclass(slots=True, frozen=True)
class StubReply:
    """Where a stub's error reply goes and what it carries."""

    node: int
    event: int
    data: tuple[int, ...]
    body: bytes = b""
    flags: int = 0
    fd_server: str | None = None  # client's fd-passing socket to drain first


def filed_reply(msg: NetMsg) -> StubReply:
    d = msg.data
    server = None
    if d[0] == FQOPENFD:
        server = msg.body.split(b"\0", 1)[0].decode(errors="replace")
    return StubReply(d[1], d[2], data_words(STUB_ERROR, -1), fd_server=server)


def kenyad_reply(msg: NetMsg, session: str | None = None, node_id: int = 0) -> StubReply:
    body = msg.body.ljust(PREQ_HEAD.size, b"\0")
    src_node, src_event, req, _m, _v, _lp, rtf = PREQ_HEAD.unpack_from(body)
    server = None
    if req in (PQCREATE, PQSPAWN) and rtf & RTF_PFDIO and session:
        server = os.path.join(session, f"lam-{int4(-src_event)}")
    return StubReply(src_node, src_event, data_words(),
                     PREPLY.pack(STUB_ERROR, 0, 0, node_id), NREEL, server)


def loadd_reply(msg: NetMsg) -> StubReply:
    d = msg.data
    return StubReply(d[1], d[2], data_words(STUB_ERROR))


def flatd_reply(msg: NetMsg) -> StubReply:
    d = msg.data
    return StubReply(d[0], d[1], data_words(STUB_ERROR))


#: How long a stub waits for a client's descriptor server (see lamd.jobs.srfd).
FD_SERVER_TIMEOUT = srfd.FD_SERVER_TIMEOUT


async def take_passed_fds(k: IProc, path: str, want: int = 3,
                          timeout: float | None = None) -> int:
    """Take the client's descriptors and close them at once (the client then
    reads the error reply instead of hanging in accept()). Returns how many
    arrived; never raises, never waits longer than *timeout*
    (:data:`FD_SERVER_TIMEOUT`, read when called)."""
    try:
        fds = await srfd.recv_fds(k, path, want,
                                  timeout=FD_SERVER_TIMEOUT if timeout is None else timeout)
    except srfd.FdPassError as e:
        log.warning("stub: %s; giving up", e)
        return 0
    for fd in fds:
        os.close(fd)
    return len(fds)


def make_stub(name: str, event: int,
              reply_of: Callable[[NetMsg, IProc], StubReply]) -> IProcMain:
    """An internal process answering every request on *event* with ESERVICE."""

    async def stub(k: IProc) -> None:
        session = k.config.get("session")
        while True:
            msg = await nrecv(k, event, 0, MAXNMSGLEN)
            _log_packet(name, msg)
            first = msg
            while msg.head.flags & NMORE:  # drain the rest of a long request
                msg = await nrecv(k, event, 0, MAXNMSGLEN)
                _log_packet(name, msg)
            r = reply_of(first, k)
            log.warning("%s: request %d from pid %d refused: %s is not available "
                        "in this lamd", name, _request_code(name, first), -r.event, name)
            if r.fd_server is not None:
                if fd_server_allowed(r.fd_server, session):
                    await take_passed_fds(k, r.fd_server)
                else:
                    log.warning("%s: not connecting to fd server %r outside the "
                                "session directory", name, r.fd_server)
            head = NMsg(node=r.node, event=r.event, type=0, flags=r.flags, data=r.data)
            await nsend(k, head, r.body, node_id=my_nodeid(k))

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = f"{name}: not available; answers ESERVICE (see lamd.iprocs.stubs)."
    return stub


def _log_packet(name: str, msg: NetMsg) -> None:
    """Debug: the raw ``struct nmsg`` and body (decode with lamd.jobs.wire)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s: packet nmsg=%s body=%s", name, msg.head.pack().hex(), msg.body.hex())


def _request_code(name: str, msg: NetMsg) -> int:
    if name == "kenyad":
        return PREQ_HEAD.unpack_from(msg.body.ljust(PREQ_HEAD.size, b"\0"))[2]
    return msg.data[{"filed": 0, "loadd": 0}.get(name, 2)]


def make_idle(name: str, event: int) -> IProcMain:
    """An internal process with nothing to do on one node: drops what it gets."""

    async def idle(k: IProc) -> None:
        while True:
            msg = await nrecv(k, event, 0, MAXNMSGLEN, NOBUF)
            _log_packet(name, msg)
            log.warning("%s: dropped a packet (event %d type %d): one-node universe",
                        name, msg.head.event, msg.head.type)

    idle.__name__ = idle.__qualname__ = name
    return idle


async def died(k: IProc) -> None:
    """died: nothing to do here; waits on its own reply event forever."""
    while True:
        await k.recv(-k.pid, 0, 0)


filed = make_stub("filed", EVFILED, lambda m, k: filed_reply(m))
kenyad = make_stub("kenyad", EVKENYAD, lambda m, k: kenyad_reply(
    m, k.config.get("session"), my_nodeid(k)))
loadd = make_stub("loadd", EVLOADD, lambda m, k: loadd_reply(m))
flatd = make_stub("flatd", EVFLATD, lambda m, k: flatd_reply(m))
iod = make_idle("iod", EVIOD)

__all__ = ["filed", "kenyad", "loadd", "flatd", "iod",
           "died", "STUB_ERROR", "take_passed_fds", "fd_server_allowed"]
