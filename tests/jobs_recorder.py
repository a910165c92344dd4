"""Recording job services for tests/test_jobs_wire.py (test code, not lamd).

``python3 -m jobs_recorder [lamd options]`` runs our lamd (``--no-jobs``) with kenyad,
filed, flatd, loadd and traced replaced by recorders: each writes every
packet it receives (raw ``struct nmsg`` and body, hex) as one JSON line to
``$LAMD_JOBS_RECORD`` and answers just enough, with the structs of
:mod:`lamd.jobs.wire`, for a stock tool to go on to its next request:

* filed: FQOPENFD takes the three passed descriptors (recording what each
  one is), writes back ``tfds`` (3, 4, 5) and replies ``{0, 0}``; FQRMFD and
  FQINCR ``{0, 0}``; anything else ESERVICE.
* flatd: FLQLOAD as flatd does it (open, then data until ``ldlength``),
  FLQCLEAN ``{0}``; FLQGET/FORGET EBADTAG.
* kenyad: PQCREATE takes the passed stdio if ``RTF_PFDIO``, replies ``{0,
  FAKE_PID, 1, node}`` and, with ``RTF_WAIT``, sends the exit notice at
  once (status ``$LAMD_JOBS_EXIT``, default 0); no process is started.
  PQDOOM and PQDETACH ``{0}``; PQSTATE one fake process then EEOF; PQATTACH
  no reply (as kenyad).
* traced: replies only where traced does (GET/FORGET: nothing stored).
* loadd: ESERVICE.

Descriptor passing is done with blocking sockets (10 s timeouts) inside the
daemon's loop: acceptable for a test recorder, never for the real services.
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys
from dataclasses import replace

from lamd import iprocs
from lamd.iprocs import stubs
from lamd.iprocs.nreq import NREEL, nrecv, nsend
from lamd.jobs import wire
from lamd.jobs.wire import (
    FLQCLEAN, FLQLOAD, FQINCR, FQOPENFD, FQRMFD, PQATTACH, PQCREATE, PQDETACH, PQDOOM,
    PQSTATE, RTF_PFDIO, RTF_WAIT, FlReply, FlReq, FReply, FReq, KStatus, OpenFdTfds,
    PReply, PReq, PState, TrReply, TrReq,
)
from lamd.kernel.constants import (
    EEOF, ESERVICE, EVFILED, EVFLATD, EVKENYAD, EVLOADD, EVTRACED, MAXNMSGLEN,
)
from lamd.kernel.wire import NMsg

FAKE_PID = 424242
FAKE_NAME = "/usr/bin/fakeprog"
TFDS = OpenFdTfds(3, 4, 5)
TIMEOUT = 10.0

_flat: dict[tuple[int, int, int], list] = {}  # (tag, node, event) -> [ldlength, bytes]


def record(svc: str, msg=None, **extra) -> None:
    rec = {"svc": svc, **extra}
    if msg is not None:
        rec.update(nmsg=msg.head.pack().hex(), body=msg.body.hex())
    with open(os.environ["LAMD_JOBS_RECORD"], "a") as f:
        f.write(json.dumps(rec) + "\n")


def _inside(session: str, path: str) -> bool:
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(session)


def take_fds(path: str, tfds: OpenFdTfds | None = None) -> list[str]:
    """Be the fd-taking side of sfh_send_fd x3; return what each fd is."""
    what = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        for _ in range(3):
            data, anc, _f, _a = s.recvmsg(1, socket.CMSG_SPACE(4))
            fds = array.array("i")
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(cdata[:len(cdata) - len(cdata) % 4])
            for fd in fds:
                what.append(os.readlink(f"/proc/self/fd/{fd}"))
                os.close(fd)
            s.sendall(b"\0")  # the handshake sfh_send_fd waits for
        if tfds is not None:
            s.sendall(tfds.pack())
    return what


async def reply(k, node: int, event: int, *, data=(), body: bytes = b"", flags: int = 0,
                type: int = 0) -> None:
    head = NMsg(node=node, event=event, type=type, flags=flags,
                data=tuple(data) + (0,) * (8 - len(tuple(data))))
    await nsend(k, head, body, node_id=int(k.config.get("node_id", 0)))


async def filed(k) -> None:
    session = k.config.get("session")
    while True:
        msg = await nrecv(k, EVFILED, 0, MAXNMSGLEN)
        q = FReq.from_data(msg.data)
        extra = {}
        if q.req == FQOPENFD:
            path = msg.body.split(b"\0", 1)[0].decode()
            assert _inside(session, path), path
            extra["fds"] = take_fds(path, TFDS)
            r = FReply(0, 0)
        elif q.req in (FQRMFD, FQINCR):
            r = FReply(0, 0)
        else:
            r = FReply(ESERVICE, -1)
        record("filed", msg, **extra)
        await reply(k, q.src_node, q.src_event, data=r.data())


async def flatd(k) -> None:
    while True:
        msg = await nrecv(k, EVFLATD, 0, MAXNMSGLEN)
        record("flatd", msg)
        q = FlReq.from_data(msg.data)
        key = (q.tag, q.src_node, q.src_event)
        if q.req == FLQLOAD and key not in _flat:
            _flat[key] = [q.ldlength, b""]
            r = FlReply(0)
        elif q.req == FLQLOAD:
            entry = _flat[key]
            entry[1] += msg.body
            if len(entry[1]) < entry[0]:
                continue  # flatd answers once all bytes are in
            r = FlReply(0)
        elif q.req == FLQCLEAN:
            r = FlReply(0 if [kk for kk in _flat if kk[0] == q.tag] else wire.EBADTAG)
        else:
            r = FlReply(wire.EBADTAG)
        await reply(k, q.src_node, q.src_event, data=r.data(), flags=NREEL)


async def kenyad(k) -> None:
    session = k.config.get("session")
    node_id = int(k.config.get("node_id", 0))
    status = int(os.environ.get("LAMD_JOBS_EXIT", "0"))
    while True:
        msg = await nrecv(k, EVKENYAD, 0, MAXNMSGLEN)
        q = PReq.unpack(msg.body)
        extra = {}
        if q.req == PQCREATE and q.rtf & RTF_PFDIO:
            path = wire.fd_server_path(session, -q.src_event)
            extra["fds"] = take_fds(path)
        record("kenyad", msg, **extra)
        if q.req == PQATTACH:
            continue  # lpattach reads no reply
        if q.req == PQCREATE:
            await reply(k, q.src_node, q.src_event, flags=NREEL,
                        body=PReply(0, FAKE_PID, 1, node_id).pack())
            if q.rtf & RTF_WAIT:  # detachindex: the exit notice to the waiter
                await reply(k, q.src_node, wire.int4(q.src_event & 0xBFFFFFFF),
                            type=wire.EXIT_NOTICE_TYPE, flags=NREEL,
                            body=PReply(status, FAKE_PID, 0, node_id).pack())
        elif q.req == PQSTATE:
            fake = PState(0, 1, FAKE_PID, wire.RTF_MPI, node_id, -1,
                          KStatus(state=0, fyi=(3 << 16,)), FAKE_NAME, FAKE_NAME)
            for ps in (fake, PState(reply=EEOF)):
                await reply(k, q.src_node, q.src_event, flags=NREEL, body=ps.pack())
        elif q.req in (PQDOOM, PQDETACH):
            await reply(k, q.src_node, q.src_event, flags=NREEL, body=PReply(0).pack())
        else:
            await reply(k, q.src_node, q.src_event, flags=NREEL,
                        body=PReply(ESERVICE).pack())


async def traced(k) -> None:
    while True:
        msg = await nrecv(k, EVTRACED, 0, MAXNMSGLEN)
        record("traced", msg)
        q = TrReq.from_data(msg.data)
        if q.req in wire.TRQ_REPLIED:
            err = 0 if q.req in (wire.TRQGET, wire.TRQFORGET) else wire.ENOTPUBLISHED
            await reply(k, q.src_node, q.src_event, data=TrReply(err, 0).data())


async def loadd(k) -> None:
    while True:
        msg = await nrecv(k, EVLOADD, 0, MAXNMSGLEN)
        record("loadd", msg)
        q = wire.LReq.from_data(msg.data)
        await reply(k, q.src_node, q.src_event, data=wire.LReply(ESERVICE).data())


RECORDERS = {"kenyad": kenyad, "filed": filed, "flatd": flatd, "traced": traced,
             "loadd": loadd}


def main() -> int:
    iprocs.BOOT_TABLE[:] = [replace(b, main=RECORDERS.get(b.name, b.main))
                            for b in iprocs.BOOT_TABLE]
    # --no-jobs puts the ESERVICE stubs in the job rows: the recorders are
    # those stubs here, inside the daemon (no jobs process)
    for name, fn in RECORDERS.items():
        setattr(stubs, name, fn)
    from lamd.daemon import main as lamd_main
    return lamd_main(["--no-jobs", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
