"""A socket-free LAM client for driving :class:`lamd.kernel.Kernel` in tests.

It writes what stock ``liblam`` writes (``struct kreq`` plus, for sends, the
``struct nmsg`` header and body) and carries out the kernel's actions the way
the I/O layer does: replies and bodies queue up per connection, collected
bodies are fed back with ``Kernel.body_arrived``, client-to-client transfers
move bytes between the two connections' streams.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from lamd.kernel.constants import (
    EVBUFFERD, KNMSG, KQATTACH, KQRECV, KQSEND, KQSR, KTRACE, KTRY, MAXNMSGLEN,
)
from lamd.iprocs.nreq import (
    BFQPROBE, BFQRECV, DDLI, DLCTL, DLI, DLSYS, DLUSR, LOCAL, N2ND, NMORE, NOBUF,
    data_words,
)
from lamd.kernel import (
    CollectBody, Halt, Kernel, Rearm, Reply, Resume, SendBody, Transfer, Unwatch, Watch,
)
from lamd.kernel.wire import NMSG_SIZE, KMsg, KReply, KReq, NMsg


@dataclass
class Conn:
    name: str
    replies: deque[KReply] = field(default_factory=deque)
    inbox: bytearray = field(default_factory=bytearray)  # bodies written to the client
    outbox: bytearray = field(default_factory=bytearray)  # bodies the client wrote


class World:
    """One kernel, its internal processes and any number of fake clients."""

    def __init__(self, table=(), config=None, max_procs: int = 256) -> None:
        self.kernel = Kernel(max_procs=max_procs, clock=lambda: 0.0)
        self.conns: dict[str, Conn] = {}
        self.halts: list[Halt] = []
        self.watches: dict[int, Watch] = {}  # active event sources by id
        self.resumes = 0  # Resume actions seen
        self.log: list[object] = []
        self.run(self.kernel.boot(table, config))

    def run(self, actions) -> None:
        todo = deque(actions)
        while todo:
            a = todo.popleft()
            self.log.append(a)
            if isinstance(a, Reply):
                self.conns[a.conn].replies.append(a.reply)
            elif isinstance(a, SendBody):
                self.conns[a.conn].inbox += a.data
            elif isinstance(a, CollectBody):
                src = self.conns[a.src]
                assert len(src.outbox) >= a.length, (a, len(src.outbox))
                data = bytes(src.outbox[:a.length])
                del src.outbox[:a.length]
                todo.extend(self.kernel.body_arrived(a.token, data))
            elif isinstance(a, Transfer):
                src, dst = self.conns[a.src], self.conns[a.dst]
                del src.outbox[:a.skip]
                dst.inbox += bytes(a.pad) + src.outbox[:a.length]
                del src.outbox[:a.length]
            elif isinstance(a, Halt):
                self.halts.append(a)
            elif isinstance(a, Watch):
                self.watches[a.id] = a
            elif isinstance(a, Unwatch):
                self.watches.pop(a.id, None)
            elif isinstance(a, Resume):
                self.resumes += 1
            elif isinstance(a, Rearm):
                assert a.id in self.watches, a

    def fire(self, watch_id: int, value=None) -> None:
        """An event source fired (what the I/O layer reports)."""
        if self.watches.get(watch_id) is not None and self.watches[watch_id].kind in ("timer", "child"):
            del self.watches[watch_id]
        self.run(self.kernel.event(watch_id, value))

    def watching(self, kind: str) -> list[Watch]:
        return [w for w in self.watches.values() if w.kind == kind]

    def client(self, name: str, pid: int, priority: int = 1095) -> "Client":
        self.conns[name] = Conn(name)
        self.kernel.connect(name, pid, 1000)
        c = Client(self, name, pid)
        c.attach(priority)
        return c


class Client:
    """What liblam does, one kernel request at a time."""

    def __init__(self, world: World, name: str, pid: int) -> None:
        self.w, self.name, self.pid, self.index = world, name, pid, -1
        self.fronts = 0  # ksr front replies not yet read

    @property
    def conn(self) -> Conn:
        return self.w.conns[self.name]

    def request(self, req: KReq, body: bytes = b"") -> None:
        req.index = self.index
        self.conn.outbox += body
        self.w.run(self.w.kernel.request(self.name, req))

    def reply(self) -> KReply:
        assert self.conn.replies, f"{self.name}: no reply (blocked)"
        return self.conn.replies.popleft()

    def blocked(self) -> bool:
        return not self.conn.replies

    def read(self, n: int) -> bytes:
        inbox = self.conn.inbox
        assert len(inbox) >= n, (self.name, len(inbox), n)
        data = bytes(inbox[:n])
        del inbox[:n]
        return data

    # -- kreq ------------------------------------------------------------------
    def attach(self, priority: int) -> None:
        self.request(KReq(req=KQATTACH, index=-1, pid=self.pid, priority=priority))
        rep = self.reply()
        assert rep.reply == 0, rep
        self.index = rep.index

    def ksend(self, event: int, type_: int, body: bytes = b"", flags: int = 0,
              nmsg: NMsg | None = None) -> None:
        data = (nmsg or NMsg()).pack() + body if flags & KNMSG else body
        self.request(KReq(req=KQSEND, msg=KMsg(event, type_, len(body), flags)), data)

    def krecv(self, event: int, type_: int, length: int, flags: int = 0) -> None:
        self.request(KReq(req=KQRECV, msg=KMsg(event, type_, length, flags)))

    def ksr(self, smsg: KMsg, sbody: bytes, snmsg: NMsg | None, rmsg: KMsg) -> None:
        data = (snmsg or NMsg()).pack() + sbody if smsg.flags & KNMSG else sbody
        self.fronts += 1
        self.request(KReq(req=KQSR, msg=smsg, msg2=rmsg), data)

    def front(self) -> KReply:
        """The reply to a ksr's send half (ksrfront)."""
        self.fronts -= 1
        return self.reply()

    # -- nreq (share/nreq, as liblam codes it) -------------------------------------
    def dsend(self, h: NMsg, body: bytes) -> KReply:
        if h.dl_event == h.event and h.node == LOCAL:
            ktype, kflags = h.type, KNMSG | h.flags
        else:
            ktype = DLUSR if h.event >= 0 else DLSYS
            kflags = KNMSG | (h.flags & (KTRY | KTRACE))
            if h.flags & DDLI:
                ktype |= DLI
        self.ksend(h.dl_event, ktype, body, kflags, h)
        return self.reply()

    def nsend(self, node: int, event: int, type_: int, body: bytes = b"",
              data: tuple[int, ...] = (), flags: int = 0) -> None:
        """nsend(): local node only; splits long messages as nsend.c does."""
        h = NMsg(node=node, event=event, type=type_, flags=flags,
                 data=data_words(*data), length=len(body))
        h.dl_event = event if flags & NOBUF else EVBUFFERD
        if len(body) <= MAXNMSGLEN:
            assert self.dsend(h, body).reply == 0
            return
        d0 = h.data
        first = NMsg(h.dl_event, 0, node, event, type_, MAXNMSGLEN, flags | NMORE,
                     (len(body),) + tuple(d0[1:]))
        assert self.dsend(first, body[:MAXNMSGLEN]).reply == 0
        off = MAXNMSGLEN
        while len(body) - off > MAXNMSGLEN:
            pkt = NMsg(h.dl_event, 0, node, event, type_, MAXNMSGLEN,
                       (flags | NMORE | N2ND) & ~KTRY, d0)
            assert self.dsend(pkt, body[off:off + MAXNMSGLEN]).reply == 0
            off += MAXNMSGLEN
        last = NMsg(h.dl_event, 0, node, event, type_, len(body) - off,
                    (flags | N2ND) & ~KTRY & ~NMORE, d0)
        assert self.dsend(last, body[off:]).reply == 0

    def bfrecv_start(self, event: int, type_: int, length: int, flags: int = 0) -> None:
        """The first half of bfrecv(): the dsfr with BFQRECV; may block."""
        bf = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
                  data=data_words(0, 0, BFQRECV, 0, event, type_, 0, flags))
        self.ksr(KMsg(EVBUFFERD, DLCTL, 0, KNMSG), b"", bf,
                 KMsg(event, type_, length, KNMSG | flags))

    def packet(self) -> tuple[KReply, NMsg, bytes]:
        """Read one KNMSG receive's reply, header and body (after ksrfront)."""
        while self.fronts:
            assert self.front().reply == 0
        rep = self.reply()
        assert rep.reply == 0, rep
        head = NMsg.unpack(self.read(NMSG_SIZE))
        return rep, head, self.read(rep.length)

    def nrecv(self, event: int, type_: int = 0, length: int = MAXNMSGLEN,
              flags: int = 0) -> tuple[NMsg, bytes]:
        """nrecv() through bufferd, packet after packet until no NMORE."""
        remlen, out, head = length, bytearray(), None
        more = True
        while more:
            self.bfrecv_start(event, type_, min(MAXNMSGLEN, remlen), flags)
            _, head, body = self.packet()
            out += body[:remlen]
            remlen -= min(remlen, len(body))
            more = bool(head.flags & NMORE)
        return head, bytes(out)

    def nprobe(self, event: int, type_: int = 0) -> tuple[int, ...]:
        """bfiprobe(): BFQPROBE, reply words (struct bfreply)."""
        req = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
                   data=data_words(LOCAL, -self.pid, BFQPROBE, 0, event, type_, 0, 0))
        self.ksr(KMsg(EVBUFFERD, DLCTL, 0, KNMSG), b"", req,
                 KMsg(-self.pid, 0, 0, KNMSG))
        _, head, _ = self.packet()
        return tuple(head.data)

    def dsfr(self, req: NMsg, reply_event: int, length: int) -> tuple[KReply, NMsg, bytes]:
        """dsfr() of a request with no body; returns the reply packet."""
        self.ksr(KMsg(req.dl_event, req.type, 0, KNMSG | req.flags), b"", req,
                 KMsg(reply_event, 0, length, KNMSG))
        return self.packet()


