"""The jobs process: kenyad, filed, flatd, loadd and iod outside the kernel.

The kernel runs sandboxed (``lamd@USER.service``: no network, no home,
private IPC, W^X...); a user's program needs the opposite, and nothing can
lift a sandbox for a child. So the services that touch the user's files and
start processes run in a process of their own, attached to the kernel as
LAM's separate daemons are (``etc/lam-conf.separate``): the very
:class:`~lamd.iprocs.host.ServiceHost` that ``python3 -m lamd.iprocs.host``
is, with what a process that starts jobs needs on top:

* **Where children find the kernel.** ``mpirun`` never exports
  ``LAM_MPI_SESSION_PREFIX``; a rank finds the session from the environment
  of the process that forked it. We set ``LAM_MPI_SESSION_PREFIX`` (and
  ``LAM_MPI_SESSION_SUFFIX`` when the session has one) in our own
  environment, from the session directory we serve.
* **Waiting for the kernel.** Started beside the kernel (by ``lamd``, or by
  systemd after ``lamd@USER.service``), we retry the session socket for up
  to ``--wait`` seconds (default 10) before giving up (exit 1).
* **Per-job cgroups** (:mod:`lamd.jobs.cgroups`): under systemd
  (``Delegate=yes``) this process moves into ``<own cgroup>/jobs-daemon`` and
  kenyad puts each job in ``<own cgroup>/job-<node>-<pid>``; by hand, one
  process group per job. The :class:`~lamd.jobs.cgroups.JobControl` is
  ``cgroups.get()`` and also ``k.config["jobs"]`` for every service.
* **The end.** The host exits when the kernel goes (end of file on its
  connections, status 1: under systemd the unit's ``Restart=`` then
  attaches a new jobs process to the kernel serving now), on SIGTERM/SIGINT/SIGHUP (``lamhalt``, ``tkill`` and the
  kernel's own stop hang up every kill-file pid, us included), or when every
  service has ended; then it kills every job (``kill_all``: the job cgroups,
  or process groups) besides the children the services watched.
* **Environment files** (``--env-file``, repeatable): ``KEY=VALUE`` lines
  added to our environment, hence the jobs', before anything starts. The
  systemd unit uses it for the user's ``~/.config/lamd/jobs.env`` (a system
  unit's ``EnvironmentFile=`` cannot name the user's home); a missing file
  is fine.

The services are the boot table's rows at LAM's priorities: each row's
coroutine is ``lamd.jobs.<name>.<name>`` when that module exists, else the
ESERVICE stub of :mod:`lamd.iprocs.stubs` (the log says which).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pwd
import re
import socket
import sys
import time
from .._dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from ..iprocs import BY_NAME, JOB_SERVICES, boot_config
from ..iprocs.router import nodeid_watch
from ..kernel.constants import PRDAEMON
from ..kernel.kiproc import KBoot
from ..session import LAM_PREFIX_ENV, LAM_SUFFIX_ENV, Session, lam_get_batchid
from . import cgroups

log = logging.getLogger("lamd.jobs")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: In the session directory: the process groups of the jobs (by hand, no
#: cgroup), so that lamd or the next jobs process kills them if the jobs
#: process dies without doing it (lamd.jobs.cgroups.kill_recorded).
PGROUPS_FILE = "lamd-jobs-pgroups"
#: How long to wait for the kernel's socket at start (seconds).
DEFAULT_WAIT = 10.0
#: Seconds between two looks at the job cgroups (empty ones removed) and
#: watchdog pings.
TICK = 1.0


def resolve(name: str) -> tuple[Any, bool]:
    """The coroutine for service *name*: ``lamd.jobs.<name>.<name>`` (or
    ``.main``) if that module exists, else the boot table's (the stub).
    Returns (coroutine, is_real). An import error inside an existing module
    is not hidden."""
    modname = f"{__package__}.{name}"
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name != modname:
            raise
        return BY_NAME[name].main, False
    fn = getattr(mod, name, None) or getattr(mod, "main", None)
    if fn is None:
        raise ImportError(f"{modname} has no coroutine {name}() or main()")
    return fn, True


def service_rows(names: Sequence[str] = JOB_SERVICES) -> tuple[list[KBoot], list[str]]:
    """The rows to host (LAM's row, priority and name; our coroutine), and
    the names still served by stubs."""
    rows = {n: row for row, n in enumerate(BY_NAME)}
    out, stubs = [], []
    for n in names:
        fn, real = resolve(n)
        if not real:
            stubs.append(n)
        out.append(replace(BY_NAME[n], main=fn, row=rows[n]))
    return out, stubs


def session_environment(directory: str, env: Mapping[str, str] | None = None,
                        user: str | None = None, host: str | None = None) -> dict[str, str | None]:
    """What to set (None: unset) in the environment so that a LAM program
    started with it computes *directory* as its session (``lam_tmpdir_init``)."""
    env = os.environ if env is None else env
    if user is None:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = "unknown"
    host = socket.gethostname() if host is None else host
    prefix, leaf = os.path.split(os.path.normpath(directory))
    out: dict[str, str | None] = {LAM_PREFIX_ENV: prefix}
    base = f"lam-{user}@{host}"
    if leaf.startswith(base + "-"):
        out[LAM_SUFFIX_ENV] = leaf[len(base) + 1:]
    elif leaf == base:
        out[LAM_SUFFIX_ENV] = None
        out["LAM_MPI_SOCKET_SUFFIX"] = None
        if lam_get_batchid(env) is not None:
            log.warning("jobs: the session %s has no suffix but this environment has a "
                        "batch job id: LAM programs started here will look for %s-%s",
                        directory, base, lam_get_batchid(env))
    else:
        log.warning("jobs: session directory %s is not LAM's lam-%s@%s[-SUFFIX]: "
                    "LAM programs started here will not find it", directory, user, host)
    return out


_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, blank lines, ``export KEY=...``;
    one pair of surrounding quotes is removed; no expansion), as systemd's
    ``EnvironmentFile=`` reads the simple cases. A missing file is empty."""
    out: dict[str, str] = {}
    try:
        with open(os.path.expanduser(path)) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return out
    except OSError as e:
        log.warning("jobs: cannot read environment file %s: %s", path, e.strerror)
        return out
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        m = _ENV_LINE.match(line)
        if not m:
            log.warning("jobs: %s:%d: not KEY=VALUE, ignored", path, n)
            continue
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[m.group(1)] = value
    return out


def wait_for_kernel(path: str, timeout: float,
                    may_connect: Callable[[], bool] | None = None) -> bool:
    """Retry connecting to the kernel's socket until it answers or
    *timeout*; False at once when *may_connect* says no (before each try)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if may_connect is not None and not may_connect():
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
        try:
            s.connect(path)
            return True
        except OSError:
            pass
        finally:
            s.close()
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(0.2, delay * 2)


class JobsProcess:
    """The jobs process: set up, attach, serve, and kill every job at the end."""

    def __init__(self, session: Session, *, wait: float = DEFAULT_WAIT,
                 names: Sequence[str] = JOB_SERVICES, use_cgroups: bool = True,
                 node_id: int = 0, busy_poll: float | None = None,
                 for_running_kernel: bool = False) -> None:
        self.session = session
        #: attach only to the kernel that runs now (its kill file there):
        #: started for a kernel (by it, or by lamd-jobs@.service after it),
        #: never start one under socket activation by connecting after it halted
        self.for_running_kernel = for_running_kernel
        self.node_id = node_id
        #: the host's busy-poll limit (seconds); None: LAMD_BUSY_POLL's
        self.busy_poll = busy_poll
        self.wait = wait
        self.names = list(names)
        self.use_cgroups = use_cgroups
        self.jobs: cgroups.JobControl | None = None
        self.host: Any = None
        self.ready = False

    def run(self) -> int:
        from ..iprocs.host import ServiceHost
        from ..service import Notifier, current_user, set_proctitle

        for k, v in session_environment(self.session.directory).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        state = os.path.join(self.session.directory, PGROUPS_FILE)
        if self.use_cgroups:
            self.jobs = cgroups.JobControl.setup(state_file=state)
        else:
            n = cgroups.kill_recorded(state)
            if n:
                log.warning("jobs: killed %d process groups left by a previous jobs process", n)
            self.jobs = cgroups.JobControl(None, reason="--no-cgroups", state_file=state)
            log.info("jobs: cgroups not used (--no-cgroups): a process group per job")
        cgroups.install(self.jobs)
        notifier = Notifier()
        path = self.session.socket_path
        may_connect = self._kernel_runs if self.for_running_kernel else None
        if not wait_for_kernel(path, self.wait, may_connect):
            if may_connect is not None and not may_connect():
                return self._kernel_gone()
            log.error("jobs: no kernel at %s after %.0f s (ENOKERNEL: is lamd running for "
                      "this session?)", path, self.wait)
            return EXIT_FAILED
        rows, stubs = service_rows(self.names)
        if stubs:
            log.info("jobs: %s not implemented yet: served by stubs (ESERVICE)", ", ".join(stubs))
        # "colocated": the services of this process find each other there
        # (kenyad asks flatd's FLQFORGET by a call: lamd.jobs.flatd)
        # LAM's lamd works under umask 077 (what filed and flatd create is the
        # user's alone) and kenyad gives each process the umask it started with
        original_umask = os.umask(0o077)
        config = boot_config({"session": self.session.directory, "jobs": self.jobs,
                              "node_id": self.node_id, "colocated": {},
                              "umask": original_umask}, kernel_side=False)
        # getnodeid(): kenyad's replies and LAMWORLD carry this node's id,
        # which a datalink process outside the kernel gives the router after
        # we may have started (lamd.datalink); the router tells us
        rows.append(KBoot("nodeid", PRDAEMON, nodeid_watch))
        # A kernel that closes our connections without hanging us up first
        # (a crash state its successor refused, a crash by hand) is a
        # failure: under systemd the unit's Restart= starts us again, to
        # attach to the kernel serving now. A stop hangs us up (EXIT_OK).
        host = self.host = ServiceHost(path, rows, config, gone_status=EXIT_FAILED,
                                       busy_poll=self.busy_poll)
        host.install_signal_handlers()
        user = current_user()
        set_proctitle(f"lamd-jobs: {user}")
        wd = notifier.watchdog_period()
        tick = min(TICK, wd) if wd else TICK

        def on_tick() -> None:
            if host.stopping:
                return
            if not self.ready and all(s.index >= 0 for s in host.services):
                self.ready = True
                log.info("jobs: serving %s for %s (pid %d, jobs in %s)", ", ".join(self.names),
                         self.session.directory, os.getpid(),
                         self.jobs.base if self.jobs.base else "process groups")
                notifier.ready()
            if self.ready:
                try:
                    self.jobs.sweep()
                except OSError as e:  # pragma: no cover - logged, never fatal
                    log.warning("jobs: sweeping job cgroups: %s", e)
                notifier.status(f"{len(self.jobs.jobs())} jobs")
                notifier.watchdog()
            host.loop.call_later(tick if self.ready else 0.01, on_tick)

        host.loop.call_later(0.0, on_tick)
        if may_connect is not None and not may_connect():
            return self._kernel_gone()
        try:
            status = host.run()
        finally:
            notifier.stopping()
            n = self.jobs.kill_all(wait=2.0)
            if n:
                log.info("jobs: killed %d job%s", n, "" if n == 1 else "s")
            self.jobs.close()
        return status

    def _kernel_runs(self) -> bool:
        return os.path.exists(self.session.killfile_path)

    def _kernel_gone(self) -> int:
        """The kernel this process was started for ended before it attached
        (``lamhalt`` right after the kernel's start): connecting now would
        make systemd start another one for nobody."""
        log.info("jobs: the kernel ended before this process attached (no kill file %s): "
                 "not connecting", self.session.killfile_path)
        if self.jobs is not None:
            self.jobs.close()
        return EXIT_OK


#: By hand, ``lamd`` restarts a jobs process that dies while the kernel runs:
#: at most this many starts in :data:`RESTART_WINDOW` seconds, each
#: :data:`RESTART_DELAY` seconds after the death; then it gives up and the
#: kernel boots the ESERVICE stubs for the job rows (tools fail at once
#: instead of waiting for a service nobody serves).
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
RESTART_DELAY = 1.0
#: Environment the jobs process must not inherit from a daemon run by systemd.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID",
                  "LISTEN_FDS", "LISTEN_FDNAMES")


class JobsChild:
    """``lamd`` by hand: the jobs process as the kernel's child.

    :meth:`start` runs ``python3 -m lamd.jobs --session-dir DIR ...`` in a
    process group of its own (a terminal's Ctrl-C reaches the kernel, whose
    stop hangs up the jobs process through the kill file); its end is watched
    through a pidfd on the kernel's loop. A death while the kernel runs is
    logged and restarted (bounded, see :data:`RESTART_LIMIT`), then
    *on_give_up* is called. :meth:`stop` (after the kernel's kkillall) waits
    for it to finish killing its jobs (SIGTERM, then SIGKILL after a while).
    """

    def __init__(self, loop: Any, argv: Sequence[str], env: Mapping[str, str] | None = None,
                 on_give_up: Any = None, *, limit: int = RESTART_LIMIT,
                 window: float = RESTART_WINDOW, delay: float = RESTART_DELAY,
                 nofile: tuple[int, int] | None = None) -> None:
        """*nofile*: the RLIMIT_NOFILE to give it (and so its jobs) instead
        of the kernel's raised one: LAM programs select() on their
        descriptors, which breaks past FD_SETSIZE (1024)."""
        self.loop = loop
        self.nofile = nofile
        self.argv = list(argv)
        base = dict(os.environ if env is None else env)
        for k in _NOT_INHERITED:
            base.pop(k, None)
        self.env = base
        self.on_give_up = on_give_up
        self.limit, self.window, self.delay = limit, window, delay
        self.proc: Any = None
        self.pidfd: int | None = None
        self.starts: list[float] = []
        self.stopping = False
        self.gave_up = False
        self._timer: Any = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def start(self) -> None:
        import subprocess
        self._timer = None
        if self.stopping:
            return
        self.starts.append(time.monotonic())
        try:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         close_fds=True, process_group=0,
                                         preexec_fn=self._preexec if self.nofile else None)
        except OSError as e:
            log.error("jobs: cannot start the jobs process (%s): %s", self.argv[0], e.strerror)
            self.proc = None
            self._died("not started")
            return
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.loop.add_reader(self.pidfd, lambda _ev: self._exited())
        log.info("jobs: started the jobs process, pid %d", self.proc.pid)

    def _preexec(self) -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def _exited(self) -> None:
        if self.pidfd is None or self.proc is None:
            return
        self.loop.remove(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = None
        rc = self.proc.wait()
        how = f"signal {-rc}" if rc < 0 else f"status {rc}"
        if self.stopping:
            return
        self._died(how)

    def _died(self, how: str) -> None:
        now = time.monotonic()
        recent = [t for t in self.starts if now - t < self.window]
        if len(recent) < self.limit:
            log.error("jobs: the jobs process ended (%s) while the kernel runs: starting "
                      "another in %.0f s (it kills what its predecessor left)", how, self.delay)
            self._timer = self.loop.call_later(self.delay, self.start)
            return
        log.error("jobs: the jobs process ended (%s), %d starts in %.0f s: giving up; "
                  "kenyad, filed, flatd, loadd and iod now answer ESERVICE", how,
                  len(recent), self.window)
        self.gave_up = True
        if self.on_give_up is not None:
            self.on_give_up()

    def stop(self, timeout: float = 5.0) -> int | None:
        """End it (it has normally been hung up by the kernel's kkillall
        already) and reap it; returns its exit status (None: never ran)."""
        import signal as _signal
        import subprocess
        self.stopping = True
        if self._timer is not None:
            self.loop.cancel(self._timer)
            self._timer = None
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            # hung up by kkillall if it was attached; not if it was still
            # waiting for the kernel or attaching: SIGTERM does the same
            try:
                p.send_signal(_signal.SIGTERM)
            except OSError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.error("jobs: the jobs process (pid %d) still runs %.0f s after SIGTERM: "
                          "SIGKILL", p.pid, timeout)
                p.kill()
                p.wait()
        if self.pidfd is not None:
            try:
                self.loop.remove(self.pidfd)
            except (OSError, ValueError, KeyError):
                pass
            os.close(self.pidfd)
            self.pidfd = None
        return p.returncode


#: the jobs child's ``-c``: this package's directory (its first argument) on
#: ``sys.path`` unless the interpreter finds it already, then ``main``
CHILD_MAIN = ("import sys\n"
              "d = sys.argv.pop(1)\n"
              "if d not in sys.path:\n"
              "    sys.path.insert(0, d)\n"
              "from lamd.jobs.process import main\n"
              "sys.exit(main())\n")


def jobs_argv(session_dir: str, log_level: str, node_id: int | None = None,
              busy_poll_us: int | None = None) -> list[str]:
    """How ``lamd`` starts its jobs process: this interpreter, this package
    (and the node id lamboot gave the daemon, when it is not node 0; and the
    daemon's ``--busy-poll``: an argument, not ``LAMD_BUSY_POLL``, which the
    jobs would inherit). Not ``-m lamd.jobs``: that puts the working
    directory (the user's, wherever lamd was started) first on ``sys.path``,
    where a ``select.py`` or ``argparse.py`` of the user's would stand for
    the standard library's; ``-P`` leaves it out."""
    package_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    argv = [sys.executable, "-P", "-c", CHILD_MAIN, package_dir, "--session-dir", session_dir,
            "--log-level", log_level, "--for-running-kernel"]
    if node_id:
        argv += ["--node-id", str(node_id)]
    if busy_poll_us is not None:
        argv += ["--busy-poll", str(busy_poll_us)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m lamd.jobs",
        description="The jobs process of a LAM session: kenyad, filed, flatd, loadd and iod "
                    "attached to the user's running lamd (started with --jobs=external, or "
                    "by lamd itself), starting the user's programs outside the kernel.")
    p.add_argument("--log-level", default=os.environ.get("LAMD_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("-sessionprefix", "--session-prefix", dest="prefix", metavar="DIR")
    p.add_argument("-sessionsuffix", "--session-suffix", dest="suffix", metavar="SUFFIX")
    p.add_argument("--session-dir", metavar="DIR",
                   help="the session directory itself (what lamd passes its child)")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                   help=f"how long to wait for the kernel's socket (default {DEFAULT_WAIT:.0f})")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="KEY=VALUE lines added to the jobs' environment (~ expanded; "
                        "missing: ignored); may be repeated")
    p.add_argument("--no-cgroups", action="store_true",
                   help="a process group per job even where a cgroup is delegated")
    p.add_argument("--busy-poll", type=int, default=None, metavar="USEC",
                   help="keep polling this long after events before sleeping, as lamd's "
                        "--busy-poll (default: LAMD_BUSY_POLL, else 50; 0: sleep at once)")
    p.add_argument("--node-id", type=int, default=0, metavar="NODE",
                   help="this node's id in a universe booted by lamboot (default 0; "
                        "what lamd passes its child)")
    p.add_argument("--for-running-kernel", action="store_true",
                   help="attach only while the session's kernel runs (its kill file is "
                        "there): exit 0 if it ended before this process attached, instead "
                        "of waiting for, or under socket activation starting, another "
                        "(what lamd and lamd-jobs@.service pass)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from ..service import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if os.getuid() == 0:
        log.error("refusing to run as root (as LAM's daemons do): run as the session's user")
        return EXIT_FAILED
    for path in args.env_file:
        extra = read_env_file(path)
        if extra:
            log.info("jobs: %d variables from %s", len(extra), path)
        os.environ.update(extra)
    if args.session_dir:
        session = Session(args.session_dir)
    else:
        session = Session.for_user(prefix=args.prefix, suffix=args.suffix)
    jp = JobsProcess(session, wait=max(0.0, args.wait), use_cgroups=not args.no_cgroups,
                     node_id=args.node_id, for_running_kernel=args.for_running_kernel,
                     busy_poll=None if args.busy_poll is None else max(0, args.busy_poll) / 1e6)
    return jp.run()


__all__ = ["CHILD_MAIN", "JOB_SERVICES", "PGROUPS_FILE", "JobsProcess", "JobsChild", "jobs_argv", "resolve", "service_rows", "session_environment",
           "read_env_file", "wait_for_kernel", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
