"""The ``lamd`` command: set up a session and run the kernel (LAM's ``k_main.c``).

By hand (no LISTEN_FDS) the daemon serves the invoking user's LAM session
socket in the foreground and logs to stderr; under systemd it adopts the
socket it is given (:mod:`lamd.service`). Either way SIGTERM, SIGINT or SIGHUP ends
it cleanly: every attached client gets SIGCONT then SIGHUP (kkillall), the
kill file goes, and a socket we bound ourselves is removed.

Jobs (``--jobs``, ``$LAMD_JOBS``): the services that start the user's
programs (kenyad, filed, flatd, loadd, iod: :data:`lamd.jobs.process.JOB_SERVICES`)
run outside the kernel, in the jobs process (:mod:`lamd.jobs.process`):

* ``child`` (the default): once the kernel is ready, ``lamd`` starts
  ``python3 -m lamd.jobs`` as its child, for the same session. The kernel
  stopping (a signal, ``lamhalt``) hangs it up through the kill file; it
  kills every job and exits, and ``lamd`` waits for it (bounded). If it dies
  while the kernel runs, ``lamd`` logs it and starts another (at most 5
  starts a minute); after that it gives up, boots the ESERVICE stubs for
  those rows and carries on (tools then fail at once, as before issue 10).
* ``external``: the rows are left out and nothing is started: another unit
  runs the jobs process (``lamd-jobs@USER.service``, outside the kernel's
  sandbox); ``lamd@.service`` passes this.
* ``none`` (``--no-jobs``): the single process of old: the ESERVICE stubs
  inside the kernel.
"""

from __future__ import annotations

import _socket  # not socket, signal or enum before the first reply (issue 13)
import errno
import gc
import os
import resource
import sys
import time
from ._dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Sequence

from . import LAM_VERSION, __version__, _pure, lazylog, service
# the boot table's names and rows only: the internal processes' modules are
# imported when they boot, after the first turn (issue 13)
from .iprocs import DATALINK_SERVICES, JOB_SERVICES, BootConfigError, booted_rows, parse_external
from .kernel import Kernel, MAX_MSG_LEN
from .kernelio import IOLimits, KernelIO, fdstore, handover
from .kernelio.kernelio import SPLICE_MIN
from .kernelio.loop import BUSY_POLL
from .limits import raise_nofile_limit
from .session import Session, SessionError, bind_session_socket

BUSY_POLL_US = round(BUSY_POLL * 1e6)

# Imported where they are used, off the first reply's path (issue 13): the
# boot agent (-H only), the snapshot (a re-exec), the jobs process launcher
# (--jobs=child) and its clean-up.
if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from .boot.agent import Booted
    from .jobs.process import JobsChild
    from .kernel import ksnapshot

log = lazylog.getLogger("lamd")

EXIT_USAGE = 2
#: Setup errors (bad socket, user, session directory, kill file) exit with
#: EX_CONFIG, which the unit's RestartPreventExitStatus= keeps from looping.
EXIT_SETUP = service.EX_CONFIG

JOBS_MODES = ("child", "external", "none")
DATALINK_MODES = ("auto", "internal", "external")
#: lamhalt: how long clients have to leave on EOF before they are hung up
#: (LAM's haltd gives them a moment too, ``sleep(1)`` before its tkill)
HALT_GRACE = 1.0


def build_parser() -> argparse.ArgumentParser:
    import argparse
    p = argparse.ArgumentParser(
        prog="lamd",
        description=f"The LAM/MPI {LAM_VERSION} runtime daemon (kernel and internal "
                    "processes), serving this user's LAM session socket.",
        epilog="Limits also come from the environment (the service's /etc/default/lamd): "
               "LAMD_LOG_LEVEL, LAMD_MAX_PROCS, LAMD_MAX_MSG_LEN, LAMD_MOVE_BUFFER, LAMD_MAX_QUEUED, "
               "LAMD_SPLICE_MIN, LAMD_BUSY_POLL, LAMD_EXTERNAL, LAMD_JOBS.")
    p.add_argument("--version", action="version",
                   version=f"lamd {__version__} (LAM/MPI {LAM_VERSION} protocol)")
    p.add_argument("-d", "--debug", action="store_true", help="log every request (same as --log-level debug)")
    p.add_argument("--log-level", default=os.environ.get("LAMD_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], help="log threshold (default: info, or $LAMD_LOG_LEVEL)")
    p.add_argument("-sessionprefix", "--session-prefix", dest="prefix", metavar="DIR",
                   help="directory holding the session directory (default: $LAM_MPI_SESSION_PREFIX, $TMPDIR, /tmp)")
    p.add_argument("-sessionsuffix", "--session-suffix", dest="suffix", metavar="SUFFIX",
                   help="session directory suffix (default: $LAM_MPI_SESSION_SUFFIX or a batch job id)")
    p.add_argument("--max-procs", type=int, default=_env_int("LAMD_MAX_PROCS", 65536),
                   metavar="N", help="most processes attached at once (default 65536; the C lamd had 288)")
    p.add_argument("--max-msg-len", type=int, default=_env_int("LAMD_MAX_MSG_LEN", MAX_MSG_LEN),
                   metavar="BYTES", help="longest message body a client may announce")
    p.add_argument("--move-buffer", type=int, default=_env_int("LAMD_MOVE_BUFFER", 256 * 1024),
                   metavar="BYTES", help="bytes held per message body in flight (default 256 KiB)")
    p.add_argument("--max-queued", type=int, default=_env_int("LAMD_MAX_QUEUED", 1 << 20),
                   metavar="BYTES", help="replies queued to a client that does not read them before "
                                         "its requests stop being read (default 1 MiB)")
    p.add_argument("--splice-min", type=int, default=_env_int("LAMD_SPLICE_MIN", SPLICE_MIN),
                   metavar="BYTES", help="message bodies this long or longer are spliced "
                                         "through a pipe, not copied (default 64 KiB; -1: never)")
    p.add_argument("--busy-poll", type=int, default=_env_int("LAMD_BUSY_POLL", BUSY_POLL_US),
                   metavar="USEC", help="microseconds the daemon may keep polling after a "
                                        "message before it sleeps, adapted to the traffic "
                                        f"(default {BUSY_POLL_US}; 0: it sleeps at once)")
    p.add_argument("--external", action="append", metavar="NAME[,NAME...]",
                   help="services not booted inside the daemon but served by a separate "
                        "process (python3 -m lamd.iprocs.host NAME...), as LAM's "
                        "lam-conf.separate daemons; may be repeated (default: $LAMD_EXTERNAL)")
    p.add_argument("--jobs", choices=JOBS_MODES, default=None,
                   help="where kenyad, filed, flatd, loadd and iod run: 'child' (the jobs "
                        "process, started by lamd: the default), 'external' (another "
                        "process or unit runs it: lamd-jobs@.service), 'none' (stubs inside "
                        "the daemon; tools get 'service unavailable') (default: $LAMD_JOBS "
                        "or child)")
    p.add_argument("--no-jobs", dest="jobs", action="store_const", const="none",
                   help="the same as --jobs=none")
    p.add_argument("--datalink", choices=DATALINK_MODES, default=None,
                   help="where dli_inet, dlo_inet and bforward run: 'internal' (in the "
                        "daemon), 'external' (a datalink process attached as a client: "
                        "python3 -m lamd.datalink, lamd-dl@.service), 'auto' (external if a "
                        "datalink process has announced itself in the session directory, "
                        "else internal: the default) (default: $LAMD_DATALINK or auto)")
    p.add_argument("--no-iprocs", action="store_true", help=argparse.SUPPRESS)
    from .boot.agent import add_hboot_options
    add_hboot_options(p, "the daemon calls lamboot back and receives the universe before "
                         "it serves anything")
    # a re-exec in place (SIGUSR1): the snapshot's memfd (lamd.kernelio.handover)
    p.add_argument(handover.RESTORE_OPTION, dest="restore_fd", type=int, help=argparse.SUPPRESS)
    return p


#: What ``quick_args`` reads without argparse: a service's start passes no
#: options or these few (``lamd@.service``: ``$LAMD_OPTS``, ``--jobs=external`` by
#: hand). argparse costs about 10 ms before the first reply (its import, gettext's
#: locale, shutil for the help's width, building the parser); anything else,
#: ``--help`` and every mistake included, goes through :func:`build_parser`.
_QUICK_VALUES = {"--log-level": ("log_level", ("debug", "info", "warning", "error")),
                 "--jobs": ("jobs", JOBS_MODES), "--datalink": ("datalink", DATALINK_MODES)}
_QUICK_FLAGS = {"-d": ("debug", True), "--debug": ("debug", True), "--no-jobs": ("jobs", "none")}


def quick_args(argv: Sequence[str]) -> "argparse.Namespace | None":
    """*argv* parsed as :func:`build_parser` would, if it holds only the
    options of :data:`_QUICK_VALUES` and :data:`_QUICK_FLAGS` spelt out in
    full; None otherwise (then argparse parses it)."""
    import types
    try:
        ns = types.SimpleNamespace(
            debug=False, log_level=os.environ.get("LAMD_LOG_LEVEL", "info"), prefix=None,
            suffix=None, max_procs=_env_int("LAMD_MAX_PROCS", 65536),
            max_msg_len=_env_int("LAMD_MAX_MSG_LEN", MAX_MSG_LEN),
            move_buffer=_env_int("LAMD_MOVE_BUFFER", 256 * 1024),
            max_queued=_env_int("LAMD_MAX_QUEUED", 1 << 20),
            splice_min=_env_int("LAMD_SPLICE_MIN", SPLICE_MIN),
            busy_poll=_env_int("LAMD_BUSY_POLL", BUSY_POLL_US), external=None,
            jobs=None, datalink=None, no_iprocs=False, boot_addr=None, boot_port=None, node_id=None,
            origin=0, fault_tolerant=False, restore_fd=None)
    except ValueError:
        return None  # main() reports it
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt in _QUICK_FLAGS:
            setattr(ns, *_QUICK_FLAGS[opt])
            i += 1
            continue
        name, eq, value = opt.partition("=")
        if name not in _QUICK_VALUES:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        dest, choices = _QUICK_VALUES[name]
        if value not in choices:
            return None
        setattr(ns, dest, value)
        i += 1
    return ns  # type: ignore[return-value]


def _env_int(name: str, default: int) -> int:
    """An option's default from the environment (the unit's environment
    file); ValueError naming the variable if it is not a number."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}: not a number: {value!r}") from None


def remove_stale_socket(path: str) -> None:
    """Remove the Unix socket at *path* if nothing listens on it any more."""
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)
        except OSError:
            pass
    except OSError:
        pass
    finally:
        probe.close()


#: A successor that refused its snapshot exits with this status after closing
#: every descriptor it was handed (by hand: run lamd again; under systemd,
#: Restart=on-failure starts it clean).
EXIT_RESTART = 75  # EX_TEMPFAIL


@dataclass
class Restored:
    """What a re-executed lamd took back from its predecessor."""

    snap: ksnapshot.Snapshot
    session: Session
    listener: _socket.socket
    conns: dict


def restore_handover(args: argparse.Namespace) -> Restored | None:
    """Read the snapshot a predecessor left in ``--restore-fd``, and take its
    listener and connections; None (every inherited descriptor closed, one
    log line) if it is refused."""
    from .kernel import ksnapshot
    try:
        session = Session.for_user(prefix=args.prefix, suffix=args.suffix)
        snap = handover.read_handover(args.restore_fd, uid=os.getuid(),
                                      session=session.directory)
        listener = handover.adopt_listener(snap, session.socket_path)
        conns = handover.connections(snap, os.getuid())
    except (ksnapshot.SnapshotError, SessionError) as e:
        log.error("re-exec: snapshot refused, starting clean: %s", e)
        handover.close_inherited()
        return None
    return Restored(snap, session, listener, conns)


def reexec(io: KernelIO, session: Session, owned_socket: str | None, jobs: "JobsChild | None",
           notifier: "service.Notifier", reloads: int = 0) -> None:
    """Hand everything to a new image of this program (SIGUSR1): returns
    only if that failed, the daemon serving on. *reloads*: this one's
    number, carried for ``ExecReload=`` (:mod:`lamd.service.reload`)."""
    from .kernel import ksnapshot
    extra = {"owned_socket": owned_socket, "jobs_pid": jobs.pid if jobs is not None else None,
             "reloads": reloads}
    if io.crash is not None:  # the same process keeps the same descriptor store
        os.set_inheritable(io.crash.memfd, True)
        extra["crash_memfd"] = io.crash.memfd
        extra["crash_slots"] = {str(c.fd): c.slot for c in io.conns.values() if c.slot >= 0}
    try:
        fd = handover.write_handover(io, uid=os.getuid(), session=session.directory,
                                     extra=extra)
    except (ksnapshot.NotAtRest, OSError) as e:
        log.error("re-exec given up: %s; serving on", e)
        handover.uninherit(io)
        io.resume_serving()
        return
    notifier.reloading()
    log.info("re-exec: handing %d clients over to a new lamd (pid %d stays)",
             len(io.conns), os.getpid())
    io.flush_killfile()
    try:
        handover.exec_successor(fd)
    except OSError as e:
        log.error("re-exec failed (%s): serving on", e.strerror)
        os.close(fd)
        handover.uninherit(io)
        notifier.ready()
        io.resume_serving()


def keep_across_crash(io: KernelIO, notifier: "service.Notifier", stored: dict[str, int],
                      session: Session, nofile: int, restored: Restored | None) -> bool:
    """Under systemd, keep every client connection and the crash state in
    the descriptor store (:mod:`lamd.kernelio.fdstore`); after a crash, take
    back what a predecessor kept there first. True if a predecessor's
    crash state was refused (its clients closed)."""
    if not notifier.enabled:
        fdstore.discard_all(notifier, stored)
        return False
    uid = os.getuid()
    if restored is not None:  # a re-exec: the store is this process's already
        memfd = restored.snap.extra.get("crash_memfd")
        slots = restored.snap.extra.get("crash_slots")
        if type(memfd) is int and isinstance(slots, dict):
            try:
                keeper = fdstore.CrashKeeper.adopt(io.kernel, notifier, memfd,
                                                   io.conns.values(), slots)
            except (OSError, ValueError) as e:
                log.error("re-exec: crash state not taken back (%s): starting a new one", e)
            else:
                os.set_inheritable(memfd, False)
                io.crash = keeper
                return False
    nslots = max(64, min(nofile, 1 << 16))
    rec = None
    if stored:
        t0 = time.monotonic()
        rec = fdstore.recover(stored, io.kernel, notifier, uid=uid, session=session.directory)
    if rec is None:
        io.crash = fdstore.CrashKeeper.create(io.kernel, notifier, uid=uid,
                                              session=session.directory, nslots=nslots)
        if io.crash is not None:  # re-exec'ed or early (first turn) clients, not stored yet
            for c in io.conns.values():
                io.crash.add(c)
                io.crash.due.add(c)
        return bool(stored)
    io.crash = rec.keeper
    handover.adopt_connections(io, rec.conns)
    io._kill.rewrite_due()  # the kill file lists the clients taken back
    for src, dst, length, skip in rec.resume:  # bodies not a byte of which had moved
        if not src.closed and not dst.closed:
            io.crash.due.update((src, dst))
            io._start_move(src, dst, length, skip)
    for c, req in rec.redo:
        if not c.closed:
            io._handle(c, req)
    io._end_turn()
    log.info("after a crash: took back %d clients (%d processes attached, %d requests made "
             "again, %d message bodies started again, %d connections closed) in %.0f ms",
             len(rec.conns), io.kernel.nclients, len(rec.redo), len(rec.resume), rec.dropped,
             (time.monotonic() - t0) * 1000)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = quick_args(sys.argv[1:] if argv is None else argv)
    if args is None:
        try:
            args = build_parser().parse_args(argv)
        except ValueError as e:  # a limit's variable in the environment
            print(f"lamd: {e}", file=sys.stderr)
            return EXIT_USAGE
    # logging (and the journal handler) load with the first record at this
    # level, or once the first clients are served (lazylog, issue 13)
    try:
        level = lazylog.parse_level("debug" if args.debug else args.log_level)
    except ValueError as e:  # both parsers check a level given as an option
        print(f"lamd: $LAMD_LOG_LEVEL: {e}", file=sys.stderr)
        return EXIT_USAGE
    lazylog.set_level(level)
    lazylog.defer_setup(lambda: service.setup_logging(level))
    boot_args = None
    if args.boot_addr is not None or args.boot_port is not None:
        from .boot.agent import boot_args_of
        try:
            boot_args = boot_args_of(args)
        except ValueError as e:
            log.error("%s", e)
            return EXIT_USAGE
    try:
        external = parse_external(args.external if args.external is not None
                                  else os.environ.get("LAMD_EXTERNAL", ""))
    except BootConfigError as e:
        src = "--external" if args.external is not None else "LAMD_EXTERNAL"
        log.error("%s: %s", src, e)
        return EXIT_USAGE
    jobs_mode = args.jobs or os.environ.get("LAMD_JOBS", "") or "child"
    if jobs_mode not in JOBS_MODES:
        log.error("LAMD_JOBS: %r is not one of %s", jobs_mode, ", ".join(JOBS_MODES))
        return EXIT_USAGE
    clash = [n for n in external if n in JOB_SERVICES]
    if jobs_mode == "child" and clash and not args.no_iprocs:
        # two processes attached for one service would split its requests
        log.error("--external %s: the jobs process lamd starts serves %s; to serve them "
                  "from another process, run --jobs=none (the other job services are "
                  "then stubs) or --jobs=external", ",".join(clash), ", ".join(JOB_SERVICES))
        return EXIT_USAGE
    if jobs_mode != "none" and not args.no_iprocs:
        external = parse_external(external + list(JOB_SERVICES))
    if os.getuid() == 0:
        log.error("lamd refuses to run as root (as LAM's lamd does): run it as the user "
                  "whose LAM session it serves")
        return EXIT_SETUP
    restored = None
    if args.restore_fd is not None:
        restored = restore_handover(args)  # None: refused, start clean
    stored: dict[str, int] = {}  # systemd's descriptor store, after a crash
    try:
        listener = (service.adopt_listen_socket(stored, fdstore.is_stored_name)
                    if restored is None else restored.listener)
    except service.ServiceError as e:
        log.error("%s", e)
        return getattr(e, "exit_code", EXIT_SETUP)
    owned_socket: str | None = None
    try:
        if restored is not None:
            session = restored.session
            owned_socket = restored.snap.extra.get("owned_socket")
        elif listener is not None:
            path = listener.getsockname()
            if not isinstance(path, str) or not path:
                raise SessionError("the socket from systemd has no filesystem path")
            session = Session(os.path.dirname(path))
            session.ensure_directory()
        else:
            session = Session.for_user(prefix=args.prefix, suffix=args.suffix)
            session.ensure_directory()
            listener = None
            if boot_args is not None:  # bound before the boot callback (lamd.boot.early)
                from .boot.early import take_listener
                listener = take_listener(session.directory)
            if listener is None:
                listener = bind_session_socket(session)
            owned_socket = session.socket_path
    except SessionError as e:
        log.error("%s", e)
        return EXIT_SETUP
    dl_mode = args.datalink or os.environ.get("LAMD_DATALINK", "") or "auto"
    if dl_mode not in DATALINK_MODES:
        log.error("LAMD_DATALINK: %r is not one of %s", dl_mode, ", ".join(DATALINK_MODES))
        return EXIT_USAGE
    if dl_mode == "auto":
        from .session import datalink_announced
        dl_pid = datalink_announced(session.directory) if boot_args is None else None
        dl_mode = "internal" if dl_pid is None else "external"
        if dl_pid is not None:
            log.info("datalink: process %d announced itself: dli_inet, dlo_inet and "
                     "bforward are left to it", dl_pid)
    if dl_mode == "external":
        if boot_args is not None:
            log.error("-H/-P/-n: the boot callback is the datalink's (--datalink=external "
                      "leaves it to python3 -m lamd.datalink)")
            return EXIT_USAGE
        if not args.no_iprocs:
            external = parse_external(external + list(DATALINK_SERVICES))
    nofile_before = resource.getrlimit(resource.RLIMIT_NOFILE)  # the jobs' limit
    nofile = raise_nofile_limit()
    kernel_args = dict(max_procs=args.max_procs, max_msg_len=args.max_msg_len,
                       kernel_pid=os.getpid())
    config: dict = {"session": session.directory}
    notifier = service.Notifier()
    limits = IOLimits(move_buffer=max(4096, args.move_buffer),
                      max_queued=max(64 * 1024, args.max_queued),
                      splice_min=args.splice_min,
                      busy_poll=max(0, args.busy_poll) / 1e6)
    wd = notifier.watchdog_period()
    tick = min(1.0, wd) if wd else 1.0
    user = service.current_user()
    last_status = [""]

    def on_tick(io: KernelIO) -> None:
        st = kernel.stats
        n = kernel.nclients
        text = f"{n} clients attached, {st.messages} messages, {st.bytes} bytes moved"
        if text != last_status[0]:
            last_status[0] = text
            notifier.status(text)
            service.set_proctitle(service.proctitle(user, n))
        notifier.watchdog()

    def start_io() -> KernelIO | None:
        """The I/O layer on *kernel*, its kill file written (``kkillopen``:
        no kill file, no daemon: None) and its signals handled."""
        io = KernelIO(kernel, listener, killfile=session.killfile_path,
                      clients_file=session.clients_path, limits=limits,
                      on_tick=on_tick, tick_interval=tick)
        try:
            io.write_killfile(strict=True)
        except OSError as e:
            log.error("cannot write kill file %s: %s", e.filename or session.killfile_path,
                      e.strerror, extra={"LAM_ERROR": e.errno})
            io.shutdown(unlink_socket=owned_socket)
            return None
        io.install_signal_handlers()
        io.install_handover_signal()
        # blocked across the exec that started us: take one that came meanwhile,
        # and never hand the mask on to the jobs process and its jobs
        handover.unblock_reexec_signal()
        return io

    # A fresh start (not a re-exec, nothing kept across a crash, not booted
    # by lamboot) serves the clients already waiting first: under socket
    # activation the first one started us and waits for its attach reply,
    # which needs the kernel only. The internal processes boot after that,
    # at the process-table indexes they would have had booting first; READY=1
    # still waits for them (issue 13).
    early = restored is None and not stored and boot_args is None
    if early:
        kernel = Kernel(**kernel_args)
        started = start_io()
        if started is None:
            return EXIT_SETUP
        io = started
        nrows = 0 if args.no_iprocs else booted_rows(external)
        kernel.reserve_indexes(nrows)
        io.serve_waiting()
        kernel.release_indexes(nrows)
    lazylog.setup_now()  # the internal processes log through logging itself
    from .iprocs import boot_table, with_stubs
    from .iprocs.carried import with_carry
    iproc_states = None
    if notifier.enabled and not args.no_iprocs:
        # what internal processes keep across a crash (the router's table:
        # lamd.kernelio.iprocstate); after one, what they kept
        from .kernelio.iprocstate import IprocStates
        iproc_states = IprocStates(notifier, uid=os.getuid(), session=session.directory)
        config["crash_restored"] = iproc_states.take(stored)
        config["keep_state"] = iproc_states.keep
    table = []
    if not args.no_iprocs:
        table = boot_table(config, external)
        if jobs_mode == "none":
            table = with_stubs(table, JOB_SERVICES)
        table = with_carry(table)  # what a re-exec hands on (bufferd's packets)
    actions: list = []
    if restored is not None:
        from .kernel import ksnapshot
        try:
            kernel, actions = ksnapshot.restore(restored.snap.kernel, restored.conns, table,
                                                config, **kernel_args)
        except ksnapshot.SnapshotError as e:
            log.error("re-exec: snapshot refused, starting clean: %s", e)
            handover.abandon(restored.listener, restored.conns)
            restored = None
            if owned_socket is None:  # systemd's socket: Restart= starts us clean
                return EXIT_RESTART
            try:
                listener = bind_session_socket(session)
            except SessionError as e:
                log.error("%s", e)
                return EXIT_SETUP
        else:
            handover.keep(restored.listener, restored.conns)
    if not early:
        if restored is None:
            kernel = Kernel(**kernel_args)
        started = start_io()
        if started is None:
            return EXIT_SETUP
        io = started
    jobs: JobsChild | None = None
    booted: Booted | None = None
    if boot_args is not None and restored is None:
        from .boot.agent import BootError, boot_agent
        try:
            booted = boot_agent(boot_args, timeout=float(os.environ.get("LAMD_BOOT_TIMEOUT", 300)))
        except BootError as e:
            log.error("%s", e)
            io.shutdown(unlink_socket=owned_socket)
            return EXIT_SETUP
    if not args.no_iprocs and booted is not None:
        from .boot.agent import links as boot_links, routes as boot_routes
        me = booted.my_link()
        config.update(node_id=booted.node_id, origin=booted.origin,
                      routes=boot_routes(booted.universe, booted.node_id, booted.origin),
                      links=boot_links(booted.universe), dli_port=booted.dli_port,
                      dli_sock=booted.dli_sock,
                      route_table=None,  # boot_table makes it again from these routes
                      fault_tolerant=boot_args.fault_tolerant)
        if me is not None and me.addr:
            config["node_addr"] = me.addr
        table = boot_table(config, external)
        if jobs_mode == "none":
            table = with_stubs(table, JOB_SERVICES)
        table = with_carry(table)
    if restored is not None:
        handover.adopt_connections(io, restored.conns)
        io._apply(actions)
        log.info("re-exec: restored %d clients (%d processes) from the snapshot",
                 len(restored.conns), len(kernel.procs))
    if not args.no_iprocs:
        if restored is None:
            io.boot(table, config)  # one dict: the address found at boot is shared
        log.info("boot table: internal %s", ", ".join(kb.name for kb in table))
        others = [n for n in external if jobs_mode == "none" or n not in JOB_SERVICES]
        if others:
            log.info("boot table: external %s: expected from separate processes "
                     "(python3 -m lamd.iprocs.host %s), with LAM's priorities",
                     ", ".join(others), " ".join(others))
        if jobs_mode == "external":
            log.info("jobs: %s expected from the jobs process (lamd-jobs@%s.service, or "
                     "python3 -m lamd.jobs)", ", ".join(JOB_SERVICES), service.current_user())
        elif jobs_mode == "child":
            if owned_socket is None:
                log.warning("jobs: starting the jobs process inside this service's sandbox "
                            "(--jobs=child under socket activation): lamd@.service runs "
                            "--jobs=external beside lamd-jobs@.service")

            def give_up() -> None:
                io.boot(with_stubs([kb for kb in boot_table(config) if kb.name in JOB_SERVICES],
                                   JOB_SERVICES), config)

            from .jobs.process import JobsChild, jobs_argv
            jobs = JobsChild(io.loop, jobs_argv(session.directory, lazylog.level_name(level),
                                                 config.get("node_id"),
                                                 round(limits.busy_poll * 1e6)),
                on_give_up=give_up, nofile=nofile_before)
            jobs_pid = restored.snap.extra.get("jobs_pid") if restored is not None else None
            if type(jobs_pid) is not int or not handover.adopt_jobs_child(jobs, jobs_pid):
                # after the first turn: a client that connected while we
                # started is answered before the fork and exec (issue 13)
                io.loop.call_later(0.0, jobs.start)
    refused = keep_across_crash(io, notifier, stored, session, nofile, restored)
    if refused and iproc_states is not None and config.get("crash_restored"):
        # the clients are gone (the datalink process among them): what the
        # internal processes kept for them does not hold either
        from .iprocs.router import forget_universe
        forget_universe(config)
        for name in list(config["crash_restored"]):
            iproc_states.forget(name)
    # ExecReload= waits for this file to change (lamd.service.reload)
    reloads = 0
    if restored is not None and type(restored.snap.extra.get("reloads")) is int:
        reloads = restored.snap.extra["reloads"]
    attempts = [reloads]

    def reload_status(result: str) -> None:
        if notifier.enabled:
            try:
                service.reload.write_status(session.directory, attempts[0], result)
            except OSError as e:
                log.warning("cannot write %s: %s", service.reload.RELOAD_STATUS, e.strerror)

    def given_up() -> None:
        attempts[0] += 1
        reload_status("given-up")

    io.on_handover_given_up = given_up
    # setproctitle costs about 13 ms (it moves the environment): after the
    # first turn, whose clients (socket activation) are waiting already
    io.loop.call_later(0.0, lambda: service.set_proctitle(service.proctitle(user, 0)))
    log.info("lamd %s serving %s (pid %d; RLIMIT_NOFILE %d allows %d clients, "
             "two descriptors each; --max-procs %d; hot path %s)", __version__,
             session.socket_path, os.getpid(), nofile, max(0, (nofile - 32) // 2),
             args.max_procs, "compiled" if _pure.compiled() else "pure Python")
    reload_status("ok" if restored is not None else "started")
    gc.enable()  # lamd.launch turned it off for the start
    notifier.ready()
    notifier.status(f"{kernel.nclients} clients attached")
    while True:
        status = io.run()
        if not io.handover_due:
            break
        # the router carries a universe a separate datalink process gave it
        # (lamd.iprocs.router.pack_state); the datalink inside this process
        # (its socket, every link's window) is not carried yet
        if booted is not None:
            log.error("re-exec refused: a daemon booted by lamboot with its datalink inside "
                      "(node %d) cannot hand its links on yet; serving on", booted.node_id)
            handover.uninherit(io)
            io.resume_serving()
            continue
        reexec(io, session, owned_socket, jobs, notifier, attempts[0] + 1)  # returns if it failed
    notifier.stopping()
    log.info("shutting down (%s): signalling %d clients", io.stop_reason or "stop",
             len(kernel.killfile_entries()))
    # halted with systemd's socket: the local lamhalts wait for its path to go
    lamhalts = io.kernel.lamhalt_pids() if io.halted and owned_socket is None else []
    io.shutdown(unlink_socket=owned_socket, grace=HALT_GRACE if io.halted else 0.0,
                drain_backlog=io.halted and owned_socket is None)
    if booted is not None:
        booted.dli_sock.close()
    if jobs is not None:
        from .jobs.cgroups import kill_recorded
        from .jobs.process import PGROUPS_FILE
        from .jobs.wire import LAM_IOSOCKET
        rc = jobs.stop()
        if rc:
            log.warning("jobs: the jobs process exited with status %d", rc)
        # by hand, a jobs process that died (SIGKILL) may have left job
        # process groups: it recorded them
        n = kill_recorded(os.path.join(session.directory, PGROUPS_FILE))
        if n:
            log.warning("jobs: killed %d job process groups the jobs process left", n)
        if rc:  # it did not end cleanly: what its iod served is left to us
            remove_stale_socket(os.path.join(session.directory, LAM_IOSOCKET))
    if owned_socket:
        if notifier.enabled:  # our own: what ExecReload= waits for
            try:
                os.unlink(service.reload.status_path(session.directory))
            except OSError:
                pass
        # kkillall hung up a jobs process of --jobs=external too: give it a
        # moment to take its iod socket out before the directory goes
        deadline = time.monotonic() + 1.0
        while True:
            try:
                os.rmdir(session.directory)
                break
            except OSError as e:
                if e.errno != errno.ENOTEMPTY or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
    if lamhalts:
        from .session import halting
        try:
            ended = halting.aside_for_lamhalt(session.socket_path, lamhalts)
        except OSError as e:
            log.warning("cannot move %s aside for lamhalt (it waits for the path to go): %s",
                        session.socket_path, e.strerror)
        else:
            log.info("lamhalt: the socket's path moved aside until %d of %d lamhalts ended",
                     ended, len(lamhalts))
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
