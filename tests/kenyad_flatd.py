"""A small flatd for kenyad's tests (test code, not lamd), and a host runner.

``fake_flatd`` speaks LAM's flatd protocol (``otb/sys/flatd/flatd.c``) the
way kenyad needs it: ``FLQLOAD`` (a first message opens a file
``<session>/lam-flatd<n>``, answered at once; then the data, answered once
``flq_ldlength`` bytes are in), ``FLQGET``/``FLQFORGET`` (the file's path in
``FLPATHLEN`` bytes, ``EBADTAG`` for an unknown tag; FORGET drops the entry),
``FLQCLEAN``. It lets the stock tools' ``rflatv`` and kenyad's ``rforget``
work until the real flatd (``lamd/jobs/flatd.py``) lands.

``python3 -m kenyad_flatd`` (PYTHONPATH: lamd's copy and this file's
directory) runs ``lamd.iprocs.host``'s :class:`ServiceHost` with the real
kenyad (by name, from the boot table) and this flatd, for a daemon started
with ``--external kenyad,flatd``.
"""

from __future__ import annotations

import os
import sys

from lamd.iprocs.nreq import NREEL, nrecv, nsend
from lamd.jobs.wire import (
    EBADTAG, FLQCLEAN, FLQFORGET, FLQGET, FLQLOAD, FlReply, FlReq, pack_flpath,
)
from lamd.kernel.constants import EVFLATD, MAXNMSGLEN, PRDAEMON
from lamd.kernel.kiproc import IProc, KBoot
from lamd.kernel.wire import NMsg


async def fake_flatd(k: IProc) -> None:
    session = k.config["session"]
    node_id = int(k.config.get("node_id", 0))
    count = 0
    table: dict[tuple[int, int, int], list] = {}  # (tag, node, event) -> [path, written]

    async def answer(q: FlReq, code: int, body: bytes = b"") -> None:
        await nsend(k, NMsg(node=q.src_node, event=q.src_event, type=0, flags=NREEL,
                            data=FlReply(code).data()), body, node_id=node_id)

    while True:
        msg = await nrecv(k, EVFLATD, 0, MAXNMSGLEN)
        q = FlReq.from_data(msg.head.data)
        if q.req == FLQLOAD:
            key = (q.tag, q.src_node, q.src_event)
            if key not in table:
                path = os.path.join(session, f"lam-flatd{count}")
                count += 1
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
                os.close(fd)
                table[key] = [path, 0]
                await answer(q, 0)
                continue
            entry = table[key]
            with open(entry[0], "ab") as f:
                f.write(msg.body)
            entry[1] += len(msg.body)
            if entry[1] == q.ldlength:
                await answer(q, 0)
        elif q.req in (FLQGET, FLQFORGET):
            hit = [kk for kk in table if kk[0] == q.tag]
            if not hit:
                await answer(q, EBADTAG)
                continue
            path = table[hit[0]][0]
            if q.req == FLQFORGET:
                del table[hit[0]]
            await answer(q, 0, pack_flpath(path))
        elif q.req == FLQCLEAN:
            hit = [kk for kk in table if kk[0] == q.tag]
            if hit:
                try:
                    os.unlink(table.pop(hit[0])[0])
                except OSError:
                    pass
            await answer(q, 0 if hit else EBADTAG)


FLATD_ROW = KBoot("flatd", PRDAEMON, fake_flatd)


def main() -> int:
    from lamd.iprocs import boot_config
    from lamd.iprocs.host import ServiceHost
    from lamd.service import setup_logging
    from lamd.session import Session

    setup_logging(os.environ.get("LAMD_LOG_LEVEL", "info"))
    session = Session.for_user()
    config = boot_config({"session": session.directory})
    host = ServiceHost(session.socket_path, ["kenyad", FLATD_ROW], config)
    host.install_signal_handlers()
    return host.run()


if __name__ == "__main__":
    sys.exit(main())
