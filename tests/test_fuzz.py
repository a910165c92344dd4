"""Property tests: any request sequence, any byte stream, never a broken kernel.

Hypothesis drives the sans-IO kernel with scripts of turns (the I/O loop's
iterations), each a few steps: valid and invalid requests from several
clients (two of them one process on two connections), sends paired with
receives, connections dropping at random points, priority changes, and
traffic with an internal echo process. A model written here from LAM's rules (``kouter.c``,
``kinner.c``, the ``ksync_*`` macros of ``kreq.h``) predicts every step: the
reply each client gets (attach: 0 and the lowest free index; refusals: the
documented codes; a send meets the first matching receive in LAM's blocked
order), the bodies moved, the signals, the connections closed, and which
processes the table holds. One rule is ours, not LAM's: a KTRY send meeting
echo while it takes a body waits for echo's next receive, which takes it or
refuses it (LAM's kernel reads a body within the request that sent it, so
its KTRY sends never find a receiver between two messages).

The kill file is checked for real: the actions the kernel returns drive the
real :class:`~lamd.session.kkill.KillFile` through the I/O layer's own
:class:`~lamd.session.kkill.KillFileWriter`, in a directory of its own per
example, and the file is read back the way tkill reads it after every step:
the kernel's pid first, then, at the end of every turn, exactly the model's
listed clients (a multiset of pids: every attached client not PRLAMHALT);
within a turn, every client listed since the last turn, or attached since,
is there (a new client before its attach reply), and nothing else but
clients that left or moved out this turn.

A second property feeds arbitrary bytes to the real I/O layer and checks
that another client is still served.

CI runs a bounded number of examples; for a long run outside CI:
``LAMD_FUZZ_EXAMPLES=200000 /usr/bin/python3 -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from lamd import kernel as K
from lamd.kernel import Kernel
from lamd.kernel.constants import (
    EBADREQUEST, EMSGLEN, ENOKDESCRIPTORS, ENOTATTACHED, ENOTPROCESS, ESERVICE, KEVENTHI,
    KNMSG, KPROBE, KQATTACH, KQDETACH, KQDOOM, KQDUMP, KQRECV, KQSEND, KQSR, KQSTATE,
    KQSURRENDER, KSREADY, KSRECV, KSSEND, KSYNCSQL, KTRACE, KTRY, KTYPEHI, KTYPELO,
    LAM_SIGUSR, PRCMD, PRLAMHALT,
)
from lamd.kernel.kiproc import IProc, KBoot
from lamd.kernel.wire import KREQ_SIZE, KMsg, KReply, KReq, NMsg
from lamd.session.kkill import KillFile, KillFileWriter, read_killfile

EXAMPLES = int(os.environ.get("LAMD_FUZZ_EXAMPLES", "1000"))
KPID = 1  # the kernel's pid: the kill file's first line
MAX_PROCS = 5  # the echo process and four clients: a fifth attach is refused
CONNS = ["c0", "c1", "c2", "c3", "c4"]
#: the pid SO_PEERCRED gives each connection: c3 and c4 are one process
PIDS = {"c0": 2000, "c1": 2001, "c2": 2002, "c3": 2003, "c4": 2003}
ECHO_PID, ECHO_PRI, ECHO_EVENT, ECHO_LEN = 100000, 1085, 77, 8192  # row 0 of the boot table
NMSG = 72  # sizeof(struct nmsg)
MAX_LEN = 0x7FFFFFFF
ZERO_FYI = (0,) * 9

OWN = 99  # stands for the connection's own process index


class Draw:
    """Decodes one integer into a step: each choice takes its digit, first
    options when the digits run out. One draw per step keeps hypothesis's
    generation cheap (a strategy per field cost ten times the test itself);
    it still shrinks the integers, hence toward the first options."""

    def __init__(self, n: int) -> None:
        self.n = n

    def pick(self, options: list):
        self.n, i = divmod(self.n, len(options))
        return options[i]

    # any request, valid or not
    EVENTS = [1, 2, 3, 0x7FFF0001, ECHO_EVENT, -1]
    TYPES = [0, 1, 2, 3, 0xFFFF0001, -1]
    FLAGS = [0, KTRY, KNMSG, KPROBE, KSYNCSQL, KTRACE, KTRY | KNMSG, KNMSG | KSYNCSQL]
    LENGTHS = [0, 1, 64, 8192, 1 << 20, -1, 2**31 - 1]
    PRIORITIES = [PRCMD, PRLAMHALT, 1, 2000]
    FYIS = [ZERO_FYI, tuple(range(1, 10))]

    def kmsg(self) -> KMsg:
        return KMsg(self.pick(self.EVENTS), self.pick(self.TYPES), self.pick(self.LENGTHS),
                    self.pick(self.FLAGS))

    def req(self) -> KReq:
        return KReq(req=self.pick([KQSEND, KQRECV, KQSTATE, KQDOOM, KQSR, KQATTACH,
                                   KQSURRENDER, KQDETACH, KQDUMP, 9, -3]),
                    index=self.pick([OWN, OWN, -1, 0, 1, 2, 3, 4, 5]),
                    pid=self.pick(sorted(set(PIDS.values())) + [0, KPID, ECHO_PID, 100001]),
                    priority=self.pick(self.PRIORITIES), signal=self.pick([0, 1, 4, 1023]),
                    fyi=self.pick(self.FYIS), msg=self.kmsg(), msg2=self.kmsg())

    # what well-behaved clients ask: their own index, messages likely to meet
    # (few events: echo answers on 3, or 0 when no header came; sane lengths)
    def meeting(self, event: int | None = None) -> KMsg:
        return KMsg(self.pick([3, ECHO_EVENT, 3, 1, 0]) if event is None else event,
                    self.pick([0, 1, 2, -1]), self.pick([0, 1, 64, 100, 8192]),
                    self.pick([0, KNMSG, 0, KNMSG, KTRY, KPROBE, KSYNCSQL, KNMSG | KTRY]))

    def traffic(self, codes: list[int]) -> KReq:
        return KReq(req=self.pick(codes), index=OWN,
                    pid=self.pick(sorted(set(PIDS.values())) + [ECHO_PID]),
                    signal=self.pick([0, 1, 4]), fyi=self.pick(self.FYIS),
                    msg=self.meeting(), msg2=self.meeting())

    # hypothesis favours small integers a little: traffic first, attach last
    KINDS = ["pair", "traffic", "pair", "traffic", "body", "drop", "req", "body", "reprio",
             "attach"]

    def step(self) -> tuple[str, tuple]:
        conn, kind = self.pick(CONNS), self.pick(self.KINDS)
        if kind == "pair":  # a send (or send-receive), then another's receive on its event
            send = self.traffic([KQSEND, KQSEND, KQSR])
            other = self.pick([c for c in CONNS if c != conn])
            recv = KReq(req=KQRECV, index=OWN, msg=self.meeting(send.msg.event))
            return conn, ("pair", other, send, recv)
        if kind == "traffic":
            return conn, ("traffic", self.traffic([KQSEND, KQRECV, KQSR, KQDOOM, KQSTATE,
                                                   KQSURRENDER]))
        if kind == "req":
            return conn, ("req", self.req())
        if kind in ("reprio", "attach"):
            return conn, (kind, self.pick(self.PRIORITIES))
        return conn, (kind,)


async def echo(k: IProc) -> None:
    while True:
        got = await k.recv(ECHO_EVENT, 0, ECHO_LEN, KNMSG)
        to = got.nmsg.data[0] if got.nmsg else 1
        await k.send(to, 0, got.body, KNMSG | KTRY, nmsg=NMsg(event=to))


def body_for(length: int) -> bytes:
    """What a client writes for a body of *length*: a header naming event 3
    (where echo answers), then a pattern, so misplaced bytes show."""
    pattern = (b"0123456789abcdef" * (length // 16 + 1))[:max(0, length - NMSG)]
    return NMsg(data=(3,)).pack() + pattern if length >= NMSG else bytes(length)


# --- the model: LAM's rules, written out again -----------------------------------


def m_type(a: int, b: int) -> bool:  # ksync_type
    return a == 0 or b == 0 or (a & b) != 0


def m_type_sql(a: int, b: int) -> bool:  # ksync_type_sql
    a &= 0xFFFFFFFF
    b &= 0xFFFFFFFF
    return (((a & KTYPEHI) == KTYPEHI or (b & KTYPEHI) == KTYPEHI
             or (a & KTYPEHI) == (b & KTYPEHI))
            and ((a & KTYPELO) == KTYPELO or (b & KTYPELO) == KTYPELO
                 or (a & KTYPELO) == (b & KTYPELO)))


def m_event_sql(a: int, b: int) -> bool:  # ksync_event_sql
    return ((a & ~KEVENTHI) == (b & ~KEVENTHI)
            and ((a & KEVENTHI) == KEVENTHI or (b & KEVENTHI) == KEVENTHI
                 or (a & KEVENTHI) == (b & KEVENTHI)))


def meets(blocked: KMsg, msg: KMsg) -> bool:  # ksync_cmp: the blocked side's KSYNCSQL rules
    if blocked.flags & KSYNCSQL:
        return m_event_sql(blocked.event, msg.event) and m_type_sql(blocked.type, msg.type)
    return blocked.event == msg.event and m_type(blocked.type, msg.type)


@dataclass(eq=False)
class MProc:
    pid: int
    index: int
    priority: int
    conn: str | None  # None: the echo process
    state: int = KSREADY
    msg: KMsg = field(default_factory=KMsg)
    msg2: KMsg | None = None  # the receive half of a blocked send-receive
    fyi: tuple[int, ...] = ZERO_FYI
    signal: int = 0
    surrendering: bool = False
    order: tuple[int, int] = (0, 0)  # place in the blocked list: priority, then time


class Model:
    """The kernel as LAM describes it, predicting each step's effects."""

    def __init__(self) -> None:
        self.procs: list[MProc] = []  # in the order they attached
        self.clock = 0
        self.echo = self._attach(ECHO_PID, ECHO_PRI, None)
        self.echo_collect: tuple[str, KMsg] | None = None  # echo awaits a body from conn
        self.tries: list[MProc] = []  # KTRY sends waiting while echo takes a body
        self.echo_out: tuple[int, bytes] = (0, b"")  # (event, body) echo is sending
        # what the kill file may still hold or lack since the turn began
        self.left: Counter[int] = Counter()
        self.moved_in: Counter[int] = Counter()
        self.moved_out: Counter[int] = Counter()
        self.begin()
        self._sync(self.echo, KQRECV, KMsg(ECHO_EVENT, 0, ECHO_LEN, KNMSG))

    # -- expectations of one step
    def begin(self) -> None:
        self.replies: list[tuple[str, KReply]] = []
        self.transfers: list[tuple[str, str, int, int, int]] = []
        self.collects: list[tuple[str, int]] = []
        self.bodies: list[tuple[str, bytes]] = []
        self.signals: list[tuple[str, int, int]] = []
        self.closes: list[str] = []

    def _answer(self, p: MProc, rep: KReply) -> None:
        if p.conn is not None:  # echo's results stay inside the kernel
            self.replies.append((p.conn, rep))

    # -- the table
    def proc(self, conn: str) -> MProc | None:
        return next((p for p in self.procs if p.conn == conn), None)

    def kpfind(self, pid: int) -> MProc | None:
        found = [p for p in self.procs if p.pid == pid]
        return found[-1] if found else None

    def listed(self) -> Counter[int]:
        return Counter(p.pid for p in self.procs if p.conn is not None and p.priority != PRLAMHALT)

    def _attach(self, pid: int, priority: int, conn: str | None) -> MProc:
        used = {p.index for p in self.procs}
        index = next(i for i in range(len(used) + 1) if i not in used)  # lowest free
        p = MProc(pid, index, priority, conn)
        self.procs.append(p)
        return p

    def _nuke(self, p: MProc) -> None:
        self.procs.remove(p)
        if p.priority != PRLAMHALT:
            self.left[p.pid] += 1

    def disconnect(self, conn: str) -> None:
        p = self.proc(conn)
        if p is not None:
            self._nuke(p)
        if self.echo_collect is not None and self.echo_collect[0] == conn:
            # the body never comes: echo receives again (and so meets a send
            # that blocked while it waited)
            self.echo_collect = None
            self._sync(self.echo, KQRECV, KMsg(ECHO_EVENT, 0, ECHO_LEN, KNMSG))
            self._settle_tries()

    def _settle_tries(self) -> None:
        """A waiting KTRY send echo's next receive did not meet is refused."""
        keep = []
        for p in self.tries:
            if p not in self.procs or p.state != KSSEND or not p.msg.flags & KTRY:
                continue  # met, maybe blocked since in a send that waits as sends do
            if self.echo_collect is not None and meets(self.echo.msg, p.msg):
                keep.append(p)
                continue
            p.state = KSREADY
            self._answer(p, KReply(reply=errno.EWOULDBLOCK))
        self.tries = keep

    def turn_ended(self) -> None:
        self.left.clear()
        self.moved_in.clear()
        self.moved_out.clear()

    # -- requests (Kernel.request's order of checks)
    def request(self, conn: str, req: KReq) -> None:
        p, code = self.proc(conn), req.req
        if code == KQDETACH:
            if p is None:
                self.closes.append(conn)
            elif req.pid in (p.pid, 0):  # another pid's detach is refused, unanswered
                self._nuke(p)
                self.closes.append(conn)
        elif code == KQATTACH and req.index == -1:
            if p is not None:
                self.replies.append((conn, KReply(reply=EBADREQUEST)))
            elif req.pid != PIDS[conn]:
                self.replies.append((conn, KReply(reply=errno.EPERM)))
            elif len(self.procs) >= MAX_PROCS:
                self.replies.append((conn, KReply(reply=ENOKDESCRIPTORS)))
                self.closes.append(conn)
            else:
                p = self._attach(PIDS[conn], req.priority, conn)
                self.replies.append((conn, KReply(index=p.index)))
        elif code == KQDUMP:
            self.replies.append((conn, KReply()))
            if p is None:
                self.closes.append(conn)
        elif code not in (KQSEND, KQRECV, KQSTATE, KQDOOM, KQSR, KQATTACH, KQSURRENDER):
            self.replies.append((conn, KReply(reply=EBADREQUEST)))
        elif p is None:
            self.replies.append((conn, KReply(reply=ENOTATTACHED)))
        elif req.index != p.index or p.state != KSREADY:
            self.replies.append((conn, KReply(reply=EBADREQUEST)))
        elif code == KQATTACH:  # a new priority, maybe in or out of the kill file
            if p.priority != PRLAMHALT and req.priority == PRLAMHALT:
                self.moved_out[p.pid] += 1
            if p.priority == PRLAMHALT and req.priority != PRLAMHALT:
                self.moved_in[p.pid] += 1
            p.priority = req.priority
            self.replies.append((conn, KReply(index=p.index)))
        elif code == KQSURRENDER:
            self.replies.append((conn, KReply(signal=p.signal)))
            p.signal, p.surrendering = 0, False
        elif code == KQSTATE:
            q = self.kpfind(req.pid)
            self.replies.append((conn, KReply(reply=ENOTPROCESS) if q is None else KReply(
                state=q.state, priority=q.priority, sigs=q.signal, event=q.msg.event,
                type=q.msg.type, length=q.msg.length, fyi=q.fyi)))
        elif code == KQDOOM:
            self._doom(p, req)
        elif any(m.length < 0 or m.length > MAX_LEN
                 for m in ((req.msg, req.msg2) if code == KQSR else (req.msg,))):
            self.replies.append((conn, KReply(reply=EMSGLEN)))
        else:
            self._sync(p, code, req.msg, req.msg2, req.fyi)
        for c in self.closes:
            self.disconnect(c)

    def _doom(self, p: MProc, req: KReq) -> None:
        t = self.kpfind(req.pid)
        rep = KReply()
        if t is None:
            rep.reply = ENOTPROCESS
        elif t.conn is None:
            rep.reply = ESERVICE
        elif t is p:
            rep.signal = req.signal
        elif t.state == KSREADY:  # kpreempt: prompt it once to surrender
            t.signal |= req.signal
            if not t.surrendering:
                t.surrendering = True
                self.signals.append((t.conn, t.pid, LAM_SIGUSR))
        else:  # blocked: woken with EINTR, the rest of a send-receive forgotten
            t.state, t.msg2 = KSREADY, None
            self._answer(t, KReply(reply=errno.EINTR, signal=req.signal))
        self._answer(p, rep)

    # -- rendezvous (kqsync)
    def _block(self, p: MProc, state: int) -> None:
        self.clock += 1
        p.state, p.order = state, (-p.priority, self.clock)

    def _find(self, state: int, msg: KMsg) -> MProc | None:
        blocked = sorted((p for p in self.procs if p.state == state), key=lambda p: p.order)
        return next((p for p in blocked if meets(p.msg, msg)), None)

    def _sync(self, pc: MProc, code: int, msg: KMsg, msg2: KMsg | None = None,
              fyi: tuple[int, ...] = ZERO_FYI) -> None:
        if pc.signal:
            self._answer(pc, KReply(reply=errno.EINTR, signal=pc.signal))
            pc.signal = 0
            return
        q = self._find(KSSEND if code == KQRECV else KSRECV, msg)
        pc.msg = msg
        if q is not None and q.msg.flags & KPROBE:  # the blocked side only probes
            self._answer(q, KReply(event=msg.event, type=msg.type,
                                   length=min(msg.length, q.msg.length)))
            q.state = KSREADY  # (a send-receive keeps its receive half, as in kinner.c)
            q = None
        elif q is not None and code == KQRECV and msg.flags & KPROBE:  # a probe: just look
            self._answer(pc, KReply(event=q.msg.event, type=q.msg.type,
                                    length=min(q.msg.length, msg.length)))
            return
        if q is not None:
            if code == KQRECV:
                self._transfer(q, q.msg, pc, msg)
            else:
                self._transfer(pc, msg, q, q.msg)
            if q.msg2 is not None:  # its send half done, a send-receive receives in place
                q.msg, q.msg2, q.state = q.msg2, None, KSRECV
            else:
                q.state = KSREADY
            if code == KQSR:
                pc.fyi, pc.msg = fyi, msg2
                self._block(pc, KSRECV)
        elif msg.flags & KTRY:
            if (code == KQSEND and pc is not self.echo and self.echo_collect is not None
                    and meets(self.echo.msg, msg)):
                # echo is taking a body: the send waits for its next receive
                pc.fyi = fyi
                self._block(pc, KSSEND)
                if pc not in self.tries:
                    self.tries.append(pc)
            else:
                self._answer(pc, KReply(reply=errno.EWOULDBLOCK))
        else:
            pc.fyi = fyi
            if code == KQSR:
                pc.msg2 = msg2
            self._block(pc, KSRECV if code == KQRECV else KSSEND)

    def _transfer(self, src: MProc, smsg: KMsg, dst: MProc, rmsg: KMsg) -> None:
        n = min(smsg.length, rmsg.length)
        s_hdr = NMSG if smsg.flags & KNMSG else 0
        r_hdr = NMSG if rmsg.flags & KNMSG else 0
        if src is self.echo:
            event, body = self.echo_out
            self._answer(dst, KReply(type=smsg.type, length=n))
            data = (NMsg(event=event).pack() if r_hdr else b"") + body[:n]
            if data:
                self.bodies.append((dst.conn, data))
        elif dst is self.echo:
            self._answer(src, KReply(length=n))
            self.collects.append((src.conn, s_hdr + n))
            self.echo_collect = (src.conn, smsg)
        else:
            self._answer(src, KReply(length=n))
            self._answer(dst, KReply(type=smsg.type, length=n))
            skip = s_hdr if not r_hdr else 0
            pad = r_hdr if not s_hdr else 0
            length = n + (s_hdr if s_hdr and r_hdr else 0)
            if length or skip or pad:
                self.transfers.append((src.conn, dst.conn, length, skip, pad))

    # -- the echo process's loop: a body arrives, it answers (KTRY), receives again
    def body_arrived(self, conn: str, data: bytes) -> None:
        assert self.echo_collect is not None and self.echo_collect[0] == conn
        smsg = self.echo_collect[1]
        self.echo_collect = None
        if smsg.flags & KNMSG:
            to, body = NMsg.unpack(data).data[0], data[NMSG:]
        else:  # no header came: echo's KNMSG receive gets an empty one
            to, body = 0, data
        self.echo_out = (to, body)
        self._sync(self.echo, KQSEND, KMsg(to, 0, len(body), KNMSG | KTRY))
        self._sync(self.echo, KQRECV, KMsg(ECHO_EVENT, 0, ECHO_LEN, KNMSG))
        self._settle_tries()


# --- the harness: the kernel, the real kill file, and the model side by side ------


class Harness:
    def __init__(self, tmp: str) -> None:
        self.killfile = os.path.join(tmp, "lam-killfile")
        self.k = Kernel(kernel_pid=KPID, max_procs=MAX_PROCS, clock=lambda: 0.0)
        self.kill = KillFileWriter(KillFile(self.killfile, os.path.join(tmp, "lamd-clients"), KPID),
                                   lambda: [(pid, None) for pid, _ in self.k.killfile_entries()])
        self.model = Model()
        self.connected: set[str] = set()
        self.collects: list[K.CollectBody] = []
        self.attaching: str | None = None  # a listed client whose attach reply is due

    def start(self) -> None:
        self.kill.flush(strict=True)  # kkillopen
        self.begin()
        self.run(self.k.boot([KBoot("echo", ECHO_PRI, echo)]))
        self.compare("boot")
        self.check_killfile(exact=True)

    def close(self) -> None:
        self.kill.close()

    # -- the kill file
    def check_killfile(self, *, exact: bool) -> None:
        pids = read_killfile(self.killfile)
        assert pids[:1] == [KPID], f"kill file does not start with the kernel's pid: {pids}"
        got = Counter(pids[1:])
        m = self.model
        listed = m.listed()
        if exact:
            assert got == listed, f"kill file lists {sorted(got.elements())}, " \
                                  f"attached and listed: {sorted(listed.elements())}"
        else:
            missing = (listed - m.moved_in) - got
            assert not missing, f"kill file {pids} lacks {sorted(missing.elements())}"
            extra = got - (listed + m.left + m.moved_out)
            assert not extra, f"kill file {pids} lists {sorted(extra.elements())}: not attached"

    def end_turn(self) -> None:
        if self.kill.due:  # KernelIO._end_turn
            self.kill.flush()
        self.model.turn_ended()
        self.check_killfile(exact=True)

    # -- carrying out the kernel's actions (as KernelIO._apply does, minus sockets)
    def run(self, actions: list) -> None:
        todo = deque(actions)
        while todo:
            a = todo.popleft()
            t = type(a)
            if t is K.KillAppend:
                self.kill.append(a.pid)
            elif t is K.KillRemove:
                self.kill.remove(a.pid)
            elif t is K.KillRewrite:
                self.kill.rewrite_due()
            elif t is K.Reply:
                self.got_replies.append((a.conn, a.reply))
                if a.conn == self.attaching:  # kkillwrite: listed before it hears back
                    self.check_killfile(exact=False)
            elif t is K.Transfer:
                self.got_transfers.append((a.src, a.dst, a.length, a.skip, a.pad))
            elif t is K.CollectBody:
                self.collects.append(a)
                self.got_collects.append((a.src, a.length))
            elif t is K.SendBody:
                self.got_bodies.append((a.conn, a.data))
            elif t is K.Signal:
                self.got_signals.append((a.conn, a.pid, a.signo))
            elif t is K.Close:
                self.got_closes.append(a.conn)
                todo.extend(self._gone(a.conn))
            else:
                raise AssertionError(f"unexpected action {a}")

    def _gone(self, conn: str) -> list:
        """*conn* closed: the kernel forgets it and the bodies it owed (KernelIO._close)."""
        self.connected.discard(conn)
        self.collects = [c for c in self.collects if c.src != conn]
        return self.k.disconnect(conn)

    def compare(self, what: object) -> None:
        m = self.model

        def by_conn(replies: list[tuple[str, KReply]]) -> dict[str, list[KReply]]:
            out: dict[str, list[KReply]] = defaultdict(list)
            for conn, r in replies:
                out[conn].append(replace(r, blktime=0.0, fyi=tuple(r.fyi)))
            return dict(out)

        assert by_conn(self.got_replies) == by_conn(m.replies), f"replies to {what}"
        assert sorted(self.got_transfers) == sorted(m.transfers), f"transfers after {what}"
        assert self.got_collects == m.collects, f"bodies for echo after {what}"
        assert self.got_bodies == m.bodies, f"bodies from echo after {what}"
        assert sorted(self.got_signals) == sorted(m.signals), f"signals after {what}"
        assert sorted(self.got_closes) == sorted(m.closes), f"closes after {what}"
        self.k.check_invariants()
        table = sorted((p.index, p.pid, p.priority, p.state) for p in self.k.procs.values())
        assert table == sorted((p.index, p.pid, p.priority, p.state) for p in m.procs), what

    def begin(self) -> None:
        self.model.begin()
        self.got_replies: list[tuple[str, KReply]] = []
        self.got_transfers: list[tuple] = []
        self.got_collects: list[tuple[str, int]] = []
        self.got_bodies: list[tuple[str, bytes]] = []
        self.got_signals: list[tuple[str, int, int]] = []
        self.got_closes: list[str] = []
        self.attaching = None

    # -- one step of a script
    def step(self, conn: str, op: tuple) -> None:
        k, m = self.k, self.model
        if op[0] == "pair":
            self.step(conn, ("traffic", op[2]))
            self.step(op[1], ("traffic", op[3]))
            return
        if op[0] == "traffic":  # what a client does: attach first, nothing while blocked
            if m.proc(conn) is None:
                self.step(conn, ("attach", PRCMD))
            p = m.proc(conn)
            if p is None or p.state != KSREADY:
                return
        self.begin()
        if conn not in self.connected:
            k.connect(conn, PIDS[conn], 1000)
            self.connected.add(conn)
        if op[0] == "drop":
            m.disconnect(conn)
            self.run(self._gone(conn))
        elif op[0] == "body":
            if self.collects:
                c = self.collects.pop(0)
                data = body_for(c.length)
                m.body_arrived(c.src, data)
                self.run(k.body_arrived(c.token, data))
        else:
            p = m.proc(conn)
            if op[0] == "attach":
                req = KReq(req=KQATTACH, index=-1, pid=PIDS[conn], priority=op[1])
            elif op[0] == "reprio":
                req = KReq(req=KQATTACH, index=p.index if p else 0, pid=PIDS[conn],
                           priority=op[1])
            else:
                req = op[1]
                if req.index == OWN and p is not None:
                    req = replace(req, index=p.index)
            m.request(conn, req)
            if p is None and m.proc(conn) is not None and req.priority != PRLAMHALT:
                self.attaching = conn
            self.run(k.request(conn, req))
        self.compare((conn, op))
        self.check_killfile(exact=False)

    def finish(self) -> None:
        """Every client goes: the kill file lists none."""
        self.begin()
        for conn in sorted(self.connected):
            self.model.disconnect(conn)
            self.run(self._gone(conn))
        self.compare("the end")
        self.end_turn()
        assert self.k.clients() == [] and self.k.killfile_entries() == []
        assert read_killfile(self.killfile) == [KPID]


def decode_step(n: int) -> tuple[str, tuple]:
    return Draw(n).step()


# A script is a list of turns (the I/O layer's loop iterations: the kill file
# catches up at the end of each), each a list of steps. (A named function to
# map: hypothesis reads a lambda's source on every draw.)
steps = st.integers(0, 2**64 - 1).map(decode_step)
scripts = st.lists(st.lists(steps, max_size=12), max_size=10)


# no target phase: its pareto shrinking would spend most of the run for nothing
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(scripts)
def test_any_interleaving_keeps_kernel_and_kill_file_right(script: list) -> None:
    with tempfile.TemporaryDirectory(prefix="lamd-fuzz-") as tmp:
        h = Harness(tmp)
        try:
            h.start()
            for turn in script:
                for conn, op in turn:
                    h.step(conn, op)
                h.end_turn()
            h.finish()
        finally:
            h.close()


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=4 * KREQ_SIZE + 10))
def test_any_byte_stream_leaves_others_served(tmp_path_factory, data: bytes) -> None:
    from tests.test_kernelio import Daemon  # the in-thread daemon of the I/O tests

    d = Daemon(str(tmp_path_factory.mktemp("fz")))
    try:
        g = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        g.settimeout(5)
        g.connect(d.path)
        g.sendall(data)
        g.shutdown(socket.SHUT_WR)
        a, b = d.client(), d.client()
        b.sock.sendall(KReq(req=KQRECV, index=b.index, msg=KMsg(5, 0, 3, 0)).pack())
        a.send(5, 0, b"abc")
        assert b.reply().length == 3 and b._read(3) == b"abc"
        g.close()
    finally:
        d.stop()
    d.kernel.check_invariants()
