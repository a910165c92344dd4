"""The kernel's I/O: the loop that drives the sans-IO kernel (LAM's
``otb/sys/kernel/kernelio.c``).

:class:`KernelIO` owns one :class:`~lamd.kernel.Kernel`, the session's
listening socket and an :class:`~lamd.kernelio.loop.EventLoop`. It accepts
clients (:class:`~lamd.kernelio.admission.Admission`), reads their requests
and moves their bodies (:class:`~lamd.kernelio.kio.ConnIO`), feeds the
kernel, and carries out the actions it returns: replies, transfers,
signals through pidfds, the kill file (``kkillwrite``/``kkillrewrite``, the
only writer of that file), and the event sources of internal processes
(timers, readable descriptors, child exits, signals).
"""

from __future__ import annotations

import _socket
import os
import select
import time

import _signal  # type: ignore[import]  # the C module: signal's makes enums (issue 13)
from collections import deque
from .._dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Callable

from .. import lazylog
from .._static import cast
from ..kernel import kactions as K
from ..kernel.constants import PRLAMHALT
from ..kernel.kiproc import STOP_SIGNALS
from ..kernel.kouter import Kernel
from ..session.kkill import KillFile, KillFileWriter, proc_starttime, read_killfile
from .admission import Admission
from .handover import DRAIN_TIMEOUT, REEXEC_SIGNAL, safe_point
from .fdstore import CrashKeeper
from .kio import ConnIO
from .loop import BUSY_POLL, BusyPoll, EventLoop, Timer
from .transfer import BodyMove, Connection
from .watches import WatchSet

log = lazylog.getLogger("lamd.kernelio")

# the classes themselves (compiled: static type objects, not module globals
# looked up in a dict at every action)
from ..kernel.kactions import (  # noqa: E402
    Close as _Close, CollectBody as _CollectBody, Halt as _Halt, KillAppend as _KillAppend,
    KillRemove as _KillRemove, KillRewrite as _KillRewrite, Rearm as _Rearm, Reply as _Reply,
    Resume as _Resume, SendBody as _SendBody, Signal as _Signal, Transfer as _Transfer,
    Unwatch as _Unwatch, Watch as _Watch,
)


#: at most this many connections accepted and closed at a halt (KernelIO._drain_backlog)
DRAIN_MAX = 4096
#: bodies this long or longer are spliced by default (shorter ones cost less copied)
SPLICE_MIN = 64 * 1024


@dataclass(slots=True)
class IOLimits:
    """Bounds that keep one client from costing the others."""

    move_buffer: int = 256 * 1024  # bytes held per body in flight
    max_queued: int = 1 << 20  # reply bytes queued to one client before we stop reading it
    requests_per_turn: int = 32  # requests served from one client before the next one's turn
    #: seconds a sender may take to write a body an internal process waits for
    #: (bufferd serves the whole session: it must not wait on one client for long)
    collect_timeout: float = 5.0
    #: bodies this long or longer are spliced through a pipe, not copied
    #: through this process (0: all of them; -1: none)
    splice_min: int = SPLICE_MIN
    #: seconds the loop may keep polling after events before it sleeps
    #: (:class:`~.loop.BusyPoll`'s limit; 0: it sleeps at once, as LAM's does)
    busy_poll: float = BUSY_POLL


def _node_of_path(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _node_of(listener: _socket.socket) -> tuple[int, int] | None:
    try:
        path = listener.getsockname()
    except OSError:
        return None
    return _node_of_path(path) if isinstance(path, str) and path else None


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", path, e.strerror)


def _killfile_pid(path: str) -> int | None:
    """The daemon pid a kill file names first (None: none, or unreadable)."""
    try:
        pids = read_killfile(path)
    except OSError:
        return None
    return pids[0] if pids else None


class KernelIO(Admission, ConnIO):
    """The epoll loop around one :class:`Kernel` and one listening socket."""

    def __init__(self, kernel: Kernel, listener: _socket.socket, *,
                 killfile: str | None = None, clients_file: str | None = None,
                 limits: IOLimits | None = None,
                 on_tick: Callable[["KernelIO"], None] | None = None,
                 tick_interval: float = 1.0) -> None:
        self.kernel = kernel
        self.listener = listener
        self.killfile = killfile
        self.clients_file = clients_file
        #: the socket file we listen on (device, inode): at the end it is
        #: removed only if it is still ours, not a successor's bound since
        self._socket_node = _node_of(listener)
        self.limits = limits or IOLimits()
        self.on_tick = on_tick
        self.tick_interval = tick_interval
        self.uid = os.getuid()
        self.loop = EventLoop()
        self.loop.busy = BusyPoll.limited(self.limits.busy_poll)
        self._watches = WatchSet(self.loop, self._fire)  # internal processes' event sources
        self.conns: dict[int, Connection] = {}
        self._pending: deque[Connection] = deque()  # clients with unparsed requests
        #: clients with output to flush, in the order they got it (a dict as
        #: an ordered set): the client waiting first gets its bytes first
        self._dirty: dict[Connection, None] = {}
        #: bodies internal processes wait for, and by when (monotonic); one
        #: timer for all of them, at the earliest (ConnIO._collect_check)
        self._collect_deadlines: dict[BodyMove, float] = {}
        self._collect_timer: Timer | None = None
        self._pipes: list[tuple[int, int]] = []  # empty pipes for the next spliced bodies
        self._splice_ok = self.limits.splice_min >= 0
        # the kill file: the kernel's KillAppend/KillRemove/KillRewrite, carried out
        self._kill = KillFileWriter(
            KillFile(killfile, clients_file or killfile + ".clients",
                     kernel.kernel_pid or os.getpid()) if killfile else None,
            self.killfile_entries)
        self._starttime_due: list[Connection] = []  # attached, start time not yet read
        self._resume_due = False
        #: the crash state and systemd's descriptor store (:mod:`.fdstore`), under systemd
        self.crash: "CrashKeeper | None" = None
        self.stopping = False
        #: a re-exec asked for (:mod:`.handover`): no new clients or requests
        #: until every body in flight has moved, then the loop ends
        self.handing_over = False
        self.handover_due = False
        self._handover_deadline = 0.0
        #: called when a re-exec asked for is given up (the daemon serves on)
        self.on_handover_given_up: Callable[[], None] | None = None
        self.exit_status = 0
        self.stop_reason = ""
        #: stopped by haltd (lamhalt), not by a signal: see :meth:`shutdown`
        self.halted = False
        self.refused_uid = 0
        self.refused_unpinned = 0
        self._peerpidfd = True  # try SO_PEERPIDFD first (see admission)
        self._refusing = False  # out of descriptors, refusing clients
        self._spare_fd: int | None = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        self._rbuf = bytearray(65536)  # requests are read into this, then decoded
        self._rview = memoryview(self._rbuf)
        listener.setblocking(False)
        self.loop.add_reader(listener.fileno(), self._on_accept)
        self.loop.last_fd = listener.fileno()

    # ------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and SIGHUP end the loop (kio_shutdown, kbbail); SIGPIPE is ignored."""
        _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)
        # SIGHUP too: LAM's tkill (lamwipe) hangs up the kill file's first pid,
        # the daemon, and the C lamd goes at once (kbbail)
        for s in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
            self.loop.add_signal(s, self._on_stop_signal)

    def _on_stop_signal(self, signo: int) -> None:
        import signal  # its names: the loop is ending anyway

        self.stop(0, f"signal {signal.Signals(signo).name}")

    def install_handover_signal(self) -> None:
        """Re-exec in place on :data:`~.handover.REEXEC_SIGNAL` (SIGUSR1)."""
        self.loop.add_signal(REEXEC_SIGNAL, lambda _signo: self.begin_handover())

    def begin_handover(self) -> None:
        """Stop taking clients and requests; :meth:`run` returns with
        ``handover_due`` set once at a safe point (or carries on as before
        if that takes longer than :data:`~.handover.DRAIN_TIMEOUT`)."""
        if self.handing_over or self.stopping:
            return
        log.info("re-exec asked for: pausing %d clients until the bodies in flight have moved",
                 len(self.conns))
        self.handing_over = True
        self._handover_deadline = time.monotonic() + DRAIN_TIMEOUT
        self.loop.remove(self.listener.fileno())

    def _check_handover(self, now: float) -> None:
        why = safe_point(self)
        if not why:
            self.handover_due = True
            self.stop(0, "re-exec")
        elif now > self._handover_deadline:
            log.error("re-exec given up: not at a safe point after %.0f s (%s); serving on",
                      DRAIN_TIMEOUT, why)
            self.resume_serving()

    def resume_serving(self) -> None:
        """A re-exec that did not happen: take clients and requests again."""
        self.handing_over = self.handover_due = False
        if self.on_handover_given_up is not None:
            self.on_handover_given_up()
        if self.stop_reason == "re-exec":
            self.stopping, self.stop_reason = False, ""
        self._relisten()
        for c in list(self.conns.values()):
            if c.read_paused and c.move is None and c.queued <= self.limits.max_queued // 2:
                self._pause_read(c, False)
            if c.inbuf:
                self._mark_pending(c)

    def flush_killfile(self) -> None:
        """Write what the kill file still lacks (before a re-exec)."""
        self._end_turn()

    def request_stop(self, status: int = 0, reason: str = "requested") -> None:
        """Stop the loop from another thread (tests, embedding)."""
        self.stop(status, reason)
        self.loop.wakeup()

    def stop(self, status: int = 0, reason: str = "") -> None:
        if not self.stopping:
            self.stopping = True
            self.exit_status = status
            self.stop_reason = reason

    def boot(self, table: Any, config: dict[str, Any] | None = None) -> None:
        self._apply(self.kernel.boot(table, config))
        self._end_turn()

    def run(self) -> int:
        """Serve until stopped (signal, haltd, or :meth:`stop`)."""
        # kkillopen at start wrote it (write_killfile(strict=True)): again
        # only if something changed since, not exchanged for the same lines
        # (which loads ctypes, and would overwrite a kill file a daemon
        # started for the same session meanwhile has put there)
        kill = self._kill
        if kill.dirty or kill.removed:
            self.write_killfile()
        loop = self.loop
        busy = loop.busy
        next_tick = time.monotonic() + self.tick_interval
        while not self.stopping:
            if self._pending or self._resume_due:
                timeout = 0.0
            else:
                deadline = next_tick
                t = loop.next_deadline()
                if t is not None and t < deadline:
                    deadline = t
                timeout = max(0.0, deadline - time.monotonic())
            worked = self.poll_once(timeout)
            if self._pending:
                self._serve_pending()
            if self._resume_due:
                self._resume_due = False
                self._apply(self.kernel.wake())
            now = time.monotonic()
            loop.run_timers(now)
            self._end_turn()
            if worked and busy is not None:
                busy.worked(now)
            if self.handing_over:
                self._check_handover(now)
            if now >= next_tick:
                next_tick = now + self.tick_interval
                if self._starttime_due:
                    self.record_starttimes()
                if self.on_tick is not None:
                    self.on_tick(self)
        return self.exit_status

    def serve_waiting(self) -> None:
        """One turn that does not wait: the clients already connected (the
        one that started a socket activation) get their replies before the
        daemon boots its internal processes (issue 13). The loop's own
        turns (:meth:`run`) follow."""
        self.poll_once(0.0)
        if self._pending:
            self._serve_pending()
        self._end_turn()

    def poll_once(self, timeout: float) -> bool:
        """:meth:`EventLoop.poll <.loop.EventLoop.poll>` (its
        :meth:`~.loop.EventLoop.wait`, busy polling included), with a client's
        events handed straight to ``_on_client`` (compiled, a native call,
        not a ``partial`` through the loop's table of handlers); every other
        descriptor through that table, the listener last, as there."""
        loop = self.loop
        events = loop.wait(timeout)
        if not events:
            return False
        conns = self.conns
        handlers = loop.handlers
        last = loop.last_fd
        deferred = 0
        for fd, ev in events:
            if fd == last:
                deferred = ev
                continue
            c = conns.get(fd)
            if c is not None:
                self._on_client(c, ev)
                continue
            h = handlers.get(fd)
            if h is not None:
                h(ev)
        if deferred:
            h = handlers.get(last)
            if h is not None:
                h(deferred)
        return True

    def _end_turn(self) -> None:
        if self._dirty:
            self._flush_dirty()
        kill = self._kill
        # KillFileWriter.due spelt out: it is interpreted (lamd.session), and a
        # property call is a Python frame in every turn
        if kill.dirty or kill.removed:
            kill.flush()
        crash = self.crash
        if crash is not None and crash.due:
            crash.settle()

    def shutdown(self, *, unlink_socket: str | None = None, grace: float = 0.0,
                 drain_backlog: bool = False) -> None:
        """``kio_shutdown``: kkillall, close everything, remove session files.

        With *grace* (``lamhalt``) the clients first see the kernel go, as
        under the C lamd (its haltd freezes the daemon until tkill kills it):
        liblam then exits with ENOKERNEL, and a client blocked in a request
        (``mpirun`` waiting for its ranks) says nothing; those still running
        after *grace* seconds are hung up (kkillall). Without it (a signal:
        ``tkill``, ``lamwipe``, systemd) every client is hung up at once, as
        the C lamd's ``kio_shutdown`` does.

        *drain_backlog* (a halt, the socket systemd's): the connections
        still waiting to be accepted are accepted and closed after the kill
        file has gone and before the socket is let go. Left there, systemd
        would start a kernel for them once this one has exited: the jobs
        process of a kernel halted before it attached would start another
        (it connects only while the kill file is there: ``lamd.jobs``'s
        ``--for-running-kernel``), as would a client that connected during
        the halt, which LAM's halted daemon does not serve either.
        """
        self._apply(self.kernel.end_iprocs())  # iod's socket, flatd's files go
        hangups = self.kernel.kkillall()
        if grace > 0:
            # LAM's separate daemons attached at a daemon's priority (the jobs
            # process's services) are the daemon's own, not its clients: hung
            # up before the rest see the kernel go, they stop as at any stop
            # (status 0), not as at a kernel lost without one (status 1:
            # systemd would start them again)
            own = [a for a in hangups if self._daemon_priority(a.conn)]
            for a in own:
                self._signal(a, drop_on_failure=False)
            hangups = [a for a in hangups if a not in own]
            self._eof_first(hangups, grace)
        for a in hangups:
            self._signal(a, drop_on_failure=False)
        for c in list(self.conns.values()):
            self._close(c, notify_kernel=False)
        self._close_spare_pipes()
        self._watches.close()
        crash = self.crash
        if crash is not None:
            self.crash = None
            crash.close()
        self.loop.remove(self.listener.fileno())
        self._kill.close()
        # only what is still ours: a daemon started for the same session
        # while we were going (lamboot again: hboot -t's tkill hangs us up
        # and starts the next at once) may have bound its socket and written
        # its kill file already
        paths: list[str] = []
        if self.killfile and _killfile_pid(self.killfile) in (
                None, self.kernel.kernel_pid or os.getpid()):
            paths.append(self.killfile)
            if self.clients_file:
                paths.append(self.clients_file)
        if drain_backlog:
            _unlink_all(paths)
            paths = []
            self._drain_backlog()
        self.listener.close()
        if unlink_socket and _node_of_path(unlink_socket) == self._socket_node:
            paths.append(unlink_socket)
        _unlink_all(paths)
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        # stopping already: LAM's tkill keeps hanging up the daemon until it is
        # gone, and a default SIGHUP now would turn a clean exit into a kill
        self.loop.close(ignore=STOP_SIGNALS)

    # ------------------------------------------------------------------
    # kill file (kkill.c): the kernel says what changes, we write it
    # ------------------------------------------------------------------
    def killfile_entries(self) -> list[tuple[int, int | None]]:
        """(pid, start time) of every client the kernel lists."""
        # the kernel's connections are the Connections this layer gave it
        return [(pid, cast(Connection, conn).starttime)
                for pid, conn in self.kernel.killfile_entries()]

    def write_killfile(self, *, strict: bool = False) -> None:
        """``kkillrewrite``: bring the kill file up to date with the table.

        A failure is logged and the daemon carries on, unless *strict*
        (``kkillopen`` at start), where it is raised.
        """
        self._kill.flush(strict=strict)

    def _kill_append(self, c: Connection, pid: int) -> None:
        """``kkillwrite``: list a new client before it hears back."""
        self._starttime_due.append(c)
        self._kill.append(pid)

    def record_starttimes(self) -> None:
        """The start times of clients attached since the last tick, for lamd-clients.

        Off the attach path on purpose: a tool that attaches, works and
        detaches within a tick costs no /proc read at all. Until its line is
        written, tkill still refuses a pid that started after the kill file
        was last written (see :mod:`lamd.tools.tkill`). A start time is kept
        only if the pidfd shows the process still alive after it was read,
        so it is the start time of the client and not of a reused pid.
        """
        due, self._starttime_due = self._starttime_due, []
        rows = []
        for c in due:
            if c.closed or self.kernel.proc_of(c) is None:
                continue
            st = proc_starttime(c.pid)
            if st is None or c.pidfd is None:
                continue
            try:
                _signal.pidfd_send_signal(c.pidfd, 0)
            except OSError:
                continue  # it is gone: its pid may name another process now
            c.starttime = st
            rows.append((c.pid, st))
        if rows and self._kill.file is not None:
            try:
                self._kill.file.append_clients(rows)
            except OSError as e:
                log.error("cannot append to %s: %s", self.clients_file, e.strerror,
                          extra={"LAM_ERROR": e.errno})

    # ------------------------------------------------------------------
    # carrying out the kernel's actions
    # ------------------------------------------------------------------
    def _apply(self, actions: list[Any]) -> None:
        crash = self.crash
        if crash is not None:
            # every client answered here is marked before a byte is written
            # to any of them: a SIGKILL in between finds both ends of a
            # rendezvous marked, never one of them only
            crash.answering(actions)
        # the most frequent actions first; names bound at import, not looked up in
        # K; each cast to its class once its type is known, so that compiled, its
        # fields are read natively (not by a generic getattr on an Any)
        skip_next = False
        n = len(actions)
        for i in range(n):
            if skip_next:
                skip_next = False
                continue
            a = actions[i]
            t = type(a)
            if t is _Reply:
                r = cast(K.Reply, a)
                c = cast(Connection, r.conn)
                nxt = actions[i + 1] if i + 1 < n else None
                tn = type(nxt)
                if (tn is _Transfer and cast(K.Transfer, nxt).dst is c and not c.out
                        and not c.closed):
                    # a receiver's reply waits for the first bytes of its body and
                    # leaves with them in one sendmsg (it could do nothing with
                    # the reply alone but wait for the body: one wake-up, one send)
                    data = r.reply.pack()
                    c.out.append(bytearray(data))
                    c.queued += len(data)
                    self._dirty[c] = None
                elif tn is _SendBody and cast(K.SendBody, nxt).conn is c:
                    # reply and body: one send
                    self._queue(c, r.reply.pack() + cast(K.SendBody, nxt).data)
                    skip_next = True
                else:
                    self._queue(c, r.reply.pack())
            elif t is _Transfer:
                tr = cast(K.Transfer, a)
                src = cast(Connection, tr.src)
                dst: Connection | None = cast(Connection, tr.dst)
                if dst is not None and dst.closed:
                    dst = None
                if tr.pad and dst is not None:
                    self._queue(dst, bytes(tr.pad))
                if src.closed:
                    if dst is not None:
                        self._drop(dst, "its sender vanished before the body")
                    continue
                self._start_move(src, dst, tr.length, tr.skip)
            elif t is _KillAppend:
                ka = cast(K.KillAppend, a)
                self._kill_append(cast(Connection, ka.conn), ka.pid)
            elif t is _KillRemove:
                self._kill.remove(cast(K.KillRemove, a).pid)
            elif t is _Close:
                c = cast(Connection, cast(K.Close, a).conn)
                if not c.closed:
                    if not c.out:
                        self._close(c, notify_kernel=True)  # nothing owed: at once
                    else:
                        c.closing = True  # after what it is owed
                        self._dirty[c] = None
            elif t is _SendBody:
                sb = cast(K.SendBody, a)
                self._queue(cast(Connection, sb.conn), sb.data)
            elif t is _CollectBody:
                cb = cast(K.CollectBody, a)
                csrc = cast(Connection, cb.src)
                if csrc.closed:
                    self._apply(self.kernel.body_failed(cb.token))
                else:
                    self._start_move(csrc, None, cb.length, 0, cb.token)
            elif t is _Signal:
                self._signal(a)
                if crash is not None and a.conn is not None:
                    crash.due.add(a.conn)  # kpreempt: its flags changed
            elif t is _KillRewrite:
                self._kill.rewrite_due()
            elif t is _Watch:
                w = cast(K.Watch, a)
                self._watches.start(w.id, w.kind, w.arg)
            elif t is _Unwatch:
                self._watches.stop(cast(K.Unwatch, a).id)
            elif t is _Rearm:
                self._watches.rearm(cast(K.Rearm, a).id)
            elif t is _Resume:
                self._resume_due = True
            elif t is _Halt:
                h = cast(K.Halt, a)
                self.halted = not self.stopping
                self.stop(h.status, h.reason)

    def _drain_backlog(self) -> None:
        """Accept and close what waits in the listener's backlog (at most
        :data:`DRAIN_MAX`: the backlog is bounded, but clients may keep
        coming)."""
        self.listener.setblocking(False)
        for _ in range(DRAIN_MAX):
            try:
                fd, _addr = getattr(self.listener, "_accept")()  # a bare fd (admission.py)
            except OSError:   # EAGAIN: nothing left (or descriptors out: they stay)
                return
            os.close(fd)

    def _eof_first(self, hangups: list[K.Signal], grace: float) -> None:
        """Shut every client's socket (the peer reads EOF) and wait up to
        *grace* seconds for the clients kkillall would hang up to exit."""
        for c in list(self.conns.values()):
            try:
                c.sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass
        p = select.poll()
        waiting = set()
        for a in hangups:
            c = cast(Connection, a.conn)
            if not c.closed and c.pidfd is not None and c.pid != os.getpid():
                p.register(c.pidfd, select.POLLIN)  # readable once the process exited
                waiting.add(c.pidfd)
        deadline = time.monotonic() + grace
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ev in p.poll(left * 1000):
                p.unregister(fd)
                waiting.discard(fd)

    def _daemon_priority(self, conn: Any) -> bool:
        p = self.kernel.proc_of(conn)
        return p is not None and p.priority < PRLAMHALT

    def _signal(self, a: K.Signal, drop_on_failure: bool = True) -> None:
        c = cast(Connection, a.conn)
        if c.closed or c.pidfd is None or c.pid == os.getpid():
            return  # never signal ourselves (an embedded client, in tests)
        try:
            _signal.pidfd_send_signal(c.pidfd, a.signo)
        except ProcessLookupError:
            if drop_on_failure:
                self._drop(c, "process gone")
        except OSError as e:
            log.warning("cannot signal pid %d: %s", c.pid, e.strerror,
                        extra={"LAM_PID": c.pid, "LAM_ERROR": e.errno})

    # ------------------------------------------------------------------
    # internal processes' event sources (kio_to, kio_intr, children, signals)
    # ------------------------------------------------------------------
    def _fire(self, wid: int, value: Any = None) -> None:
        self._apply(self.kernel.event(wid, value))


__all__ = ["IOLimits", "KernelIO"]
