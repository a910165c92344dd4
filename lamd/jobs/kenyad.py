"""kenyad: LAM's process server (``otb/sys/kenyad/``) as an ``async def`` coroutine.

kenyad starts, watches, signals and lists the processes of LAM jobs. It
serves the ``preq`` requests of :mod:`lamd.jobs.wire` on ``EVKENYAD``
(through bufferd, as LAM's ``nrecv``) and answers on ``pq_src_event``:

``PQCREATE``  argv and environment from flatd (``pq_argv`` is a flat tag;
              kenyad asks flatd ``FLQFORGET`` for the file holding them, as
              LAM's ``rforget``), the program found as ``sfh_path_env_findv``
              finds it (``access(X_OK)``: ENOENT/EACCES in the reply), the
              caller's stdin/stdout/stderr taken over its descriptor server
              with ``RTF_PFDIO`` (:func:`lamd.jobs.srfd.recv_fds`), LAM's
              seven variables (``LAMKENYAPID`` = the pid of the process that
              runs this coroutine), the working directory rules
              (``RTF_APPWD``, ``pq_wrkdir``, ``RTF_TRYCWD``); reply ``{0, pid,
              index, node}`` or LAM's error.
``PQATTACH``  ``MPI_Init``'s ``lpattach``: the process is marked attached
              (``RTF_KENYA_ATTACH``, its own ``RTF_MPI``...). No reply.
``PQDETACH``  ``lpdetach`` (MPI_Finalize): the exit notice goes now, with the
              status the process gives, and its slot is freed.
``PQSTATE``   one ``pstate`` per matching process, then ``EEOF``.
``PQDOOM``    a negative ``pq_signal`` is a Unix ``kill``, a positive one a
              LAM signal through the kernel (``kdoom``).
``PQSPAWN``   ``ESERVICE``, as LAM.

The exit notice: when a process leaves the table (it died, or it detached)
and was started with ``RTF_WAIT``, kenyad sends a ``preply`` of type 1 to
the launcher's ``pq_src_event & 0xBFFFFFFF`` (``detachindex``): status,
pid, node. For a process that never attached (``lamexec``'s programs, or an
MPI program that dies before ``MPI_Init``) that is when it dies; for an MPI
process it is at ``PQDETACH``; an attached process that dies without
detaching gets ``_LAM_WIFNODETACH`` added to its status (mpirun: "did not
call MPI_FINALIZE").

How processes are started (``kcreatev``), and where this kenyad differs:

* ``subprocess.Popen``: the passed descriptors become 0, 1 and 2, every other
  descriptor is closed, signals the forker ignores are not inherited (LAM
  resets TERM, INT, HUP, CHLD and PIPE), the job environment is LAM's rule
  (:func:`lamd.jobs.wire.child_environment`: the forker's environment, LAM's
  variables, then the job's ``-x`` variables).
* **Process groups**: every process starts in a session and process group of
  its own (``setsid``; pgid = its pid) without a controlling terminal, not in
  the forker's group as under the C lamd. A job's process and whatever it
  starts (unless that escapes with ``setsid`` itself) form one group: a doom
  with a Unix signal (``mpirun``'s ``SIGTERM`` after a failure), ``lamclean``
  and the end of kenyad signal the whole group. A job (``LAMJOBID``) is the
  set of those groups; the jobs process adds cgroups for what escapes.
* ``lamclean`` (``PQDOOM SELECT_APPL, SIGUDIE``) also ends the processes the
  kernel does not know (programs that are not LAM clients, which the C lamd
  leaves running): their groups get SIGKILL.
* A failed ``chdir`` or ``exec`` happens in the child in LAM, which exits
  with the errno (after "kcreatev: chdir(DIR): <error>" on its stderr for a
  directory): the reply is a success and the exit notice carries the errno.
  ``Popen`` reports such failures to the parent instead, so kenyad then
  starts ``/bin/sh`` with the same stdio to print LAM's message and exit with
  that errno: the launcher sees what LAM shows. ``ENOEXEC`` (a script
  without ``#!``) runs the file with ``/bin/sh``, as ``execvp`` does.
* A fork that fails (``EAGAIN``, ``ENOMEM``) is the reply's error, as in LAM.
* The process table has no ``PMAX`` (256) limit but a bound
  (``kenyad_max_procs``, default :data:`MAX_PROCS`); beyond it a create is
  refused with ``ENOPDESCRIPTORS`` and one log line until a slot frees.
* Every wait on someone else has a deadline: the caller's descriptor server
  (``fd_timeout``, default :data:`lamd.jobs.srfd.FD_SERVER_TIMEOUT`), flatd
  (``flatd_timeout``) and each reply sent (``send_timeout``). LAM waits
  forever.
* ``PQSTATE`` never detaches a process (LAM detaches one the kernel does not
  know, sending its launcher a notice with the request's ``pq_status``): a
  process kenyad started is detached when it really exits, and one the
  kernel does not know shows as ``KSFREE``.
* A positive (LAM) signal to a process the kernel does not know is not an
  error (the C lamd's internal kdoom never saw the kernel's ENOTPROCESS).
* A deferred ``PQDETACH`` (``RTF_FLAT``) keeps the status the process gave
  (LAM overwrites it with the wait status and ``_LAM_WIFNODETACH``).
* ``lamclean`` (as LAM's internal kenyad) and the end of kenyad remove the
  SysV objects and files MPI processes registered in ``<session>/lam-registry``
  (:func:`cleanup_objects`): kenyad shares the jobs' IPC namespace, the
  kernel's sandbox (traced's ``TRQCLEANOBJS``) does not.

When the coroutine ends (closed, or its host stops) every process it started
that still runs is killed with its group and reaped (also at interpreter
exit, for a kenyad inside a daemon that exits without closing it).

Settings (``k.config``): ``session`` (the session directory: descriptor
servers, flatd files), ``node_id``, ``kenyad_max_procs`` (or
``$LAMD_KENYAD_MAX_PROCS``), ``fd_timeout``, ``flatd_timeout``,
``send_timeout``, ``environ`` (a mapping used instead of ``os.environ`` as
the forker's environment), ``umask`` (applied in the child, as LAM's
``original_umask``).
"""

from __future__ import annotations

import _signal
import atexit
import errno
import heapq
import logging
import os
import signal
import socket
import stat
import subprocess
import threading
import weakref
from .._dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from ..ratelog import RateLog
from ..iprocs.nreq import (
    BFQRECV, BFQSWEEP1, DLCTL, LOCAL, NMORE, NOTNODEID, NREEL, NetMsg, data_words,
    NoRoute, dsend, getroute, my_nodeid, received,
)
from ..kernel.constants import (
    EVBUFFERD, EVFLATD, EVKENYAD, KNMSG, KSFREE, MAXNMSGLEN, NOTEVENT, LamErrno, sigmask,
)
from ..kernel.kiproc import ChildExit, Event, IProc, Received, Watch
from ..kernel.wire import KReply, NMsg
from . import srfd
from .cgroups import MODE_CGROUP
from .common import SHELL, mark_reaped, wait_status
from .wire import (
    EBADTAG, EEOF, ENOPDESCRIPTORS, ENOTPROCESS, ESERVICE, EXIT_NOTICE_TYPE, FLQFORGET,
    FLPATHLEN, PQATTACH, PQCREATE, PQDETACH, PQDOOM, PQSPAWN, PQSTATE, PSMAXNAME,
    LAM_IOSOCKET, RTF_FLAT, RTF_IO, RTF_KENYA_ATTACH, RTF_KENYA_CHILD, RTF_MPI, RTF_PFDIO,
    RTF_SYSGEN, RTF_TRYCWD, RTF_WAIT, SELECT_ALL, SELECT_APPL, SELECT_INDEX, SELECT_MPI,
    SELECT_PID, SELECT_SYS, SIGUDIE, TROLLIUSFD, FlReply, FlReq, IodForward, JobId,
    KStatus, PReply, PReq, PState,
    child_environment, child_workdir, fd_server_path, int4, lam_exit_status,
    split_flat_args,
)

log = logging.getLogger("lamd.jobs.kenyad")

#: Most processes in kenyad's table at once (LAM: PMAX, 256).
MAX_PROCS = 4096
#: How long kenyad waits for flatd's answer to FLQFORGET.
FLATD_TIMEOUT = 10.0
#: How long one reply may take to leave (bufferd full: the send blocks).
SEND_TIMEOUT = 10.0
#: Largest argv/environment file kenyad reads from flatd.
MAX_ARGS_BYTES = 16 << 20
#: How long kenyad waits for the rest of a request longer than one packet.
DRAIN_TIMEOUT = 1.0
#: LAM's number of signals (ksignal.h TNSIG): a larger LAM signal is EINVAL.
TNSIG = 10
#: Warnings about bad requests: at most one per kind per this many seconds.
BAD_INPUT_LOG_INTERVAL = 10.0

_LAMERROR = -1


@dataclass(eq=False)
class KProcess:
    """``struct pprocess``: one process in kenyad's table."""

    index: int  # 1-based table index (pr_index, ps_index)
    pid: int
    rtf: int
    argv: list[str]  # p_argv (p_argc = len)
    loadpt: str  # p_loadpt: the program's path
    jobid: JobId = field(default_factory=JobId)
    nodeid: int = NOTNODEID  # p_nodeid: the launcher's node
    event: int = NOTEVENT  # p_event: the launcher's reply event
    status: int | None = None  # p_status: None is NOTSTATUS
    popen: subprocess.Popen | None = None  # set when kenyad started it
    watch: Watch | None = None  # its exit
    exited: bool = False  # the exit has been seen

    def name(self) -> str:
        return self.argv[0] if self.argv else "<unknown>"


# ---------------------------------------------------------------------------
# pure helpers (LAM's share/etc/pathsearch.c, kenyad's check_dir)
# ---------------------------------------------------------------------------


def _list_env_get(name: str, envv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """``list_env_get``: *name* from the job environment first, then the forker's."""
    prefix = name + "="
    for e in envv:
        if e.startswith(prefix):
            return e[len(prefix):]
    return environ.get(name)


def find_program(fname: str, mode: int, envv: Sequence[str], wrkdir: str | None,
                 environ: Mapping[str, str] | None = None) -> tuple[str | None, int]:
    """``sfh_path_env_findv``: (full path, 0) or (None, errno of the last try).

    A name starting with ``/`` is only checked; otherwise the directories are
    the working directory (first, if the name has a ``/``), ``$PATH`` of the
    job environment (else the forker's) with ``.`` replaced by the working
    directory, and the working directory last if ``.`` was not in ``$PATH``;
    a ``$VAR`` at the head of a directory is replaced by its value (the
    directory is skipped if it is not set). Each candidate is checked with
    ``access(mode)``.
    """
    env = os.environ if environ is None else environ
    last = errno.ENOENT

    def access(path: str) -> str | None:
        nonlocal last
        try:
            if os.access(path, mode):
                return path
            # os.access hides errno: ask again the way access(2) would fail
            os.stat(path)
            last = errno.EACCES
        except OSError as e:
            last = e.errno or errno.ENOENT
        except ValueError:  # NUL inside
            last = errno.EINVAL
        return None

    if fname.startswith("/"):
        found = access(fname)
        return found, 0 if found else last
    dirs: list[str] = []
    if "/" in fname and wrkdir is not None:
        dirs.append(wrkdir)
    path = _list_env_get("PATH", envv, env)
    if path:
        dirs.extend(p for p in path.split(":") if p)
    found_dot = False
    for i, d in enumerate(dirs):
        if d == "." and wrkdir:
            found_dot = True
            dirs[i] = wrkdir
    if not found_dot and wrkdir:
        dirs.append(wrkdir)
    for d in dirs:
        if d.startswith("$"):
            var, slash, rest = d[1:].partition("/")
            value = _list_env_get(var, envv, env)
            if value is None:
                continue
            d = value + slash + rest
        full = f"{d}/{fname}" if d else fname
        if access(full):
            return full, 0
    return None, last


def dir_error(path: str) -> int:
    """What ``chdir(path)`` would fail with (0 if it would not)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return e.errno or errno.ENOENT
    except ValueError:
        return errno.EINVAL
    if not stat.S_ISDIR(st.st_mode):
        return errno.ENOTDIR
    if not os.access(path, os.X_OK):
        return errno.EACCES
    return 0


def is_dir(path: str) -> bool:
    """kenyad's ``check_dir``: ``stat`` succeeds and it is a directory."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _cut(s: str, n: int = PSMAXNAME - 1) -> str:
    b = s.encode("utf-8", "surrogateescape")[:n]
    return b.decode("utf-8", "surrogateescape")


def _fdserver_errno(e: srfd.FdPassError) -> int:
    text = str(e)
    if "descriptors in" in text:  # the deadline passed
        return int(LamErrno.LAM_ERR_TO)  # "operation timed out"
    if "cannot connect" in text:
        return errno.ECONNREFUSED
    return errno.EIO


# ---------------------------------------------------------------------------
# starting a process (kcreatev)
# ---------------------------------------------------------------------------

_main_thread = threading.main_thread


#: every signal but SIGKILL and SIGSTOP, as plain numbers
_IGNORABLE = sorted(int(s) for s in signal.valid_signals()
                    if s not in (signal.SIGKILL, signal.SIGSTOP))
_SIG_IGN = int(signal.SIG_IGN)


class _NoInheritedIgnores:
    """Signals the forker ignores are caught (by a no-op) while it forks, so
    that ``exec`` gives the child their default action. Only the main thread
    can change handlers; elsewhere the child inherits them (logged once)."""

    warned = False

    def __enter__(self) -> "_NoInheritedIgnores":
        self.saved: list[int] = []
        if threading.current_thread() is not _main_thread():
            if not _NoInheritedIgnores.warned:
                _NoInheritedIgnores.warned = True
                log.info("kenyad: not in the main thread: children inherit the "
                         "signals this process ignores")
            return self
        # _signal's functions, not signal's: these take and give plain ints,
        # signal's wrappers make an enum of every number (88 against 3 µs a fork)
        for s in _IGNORABLE:
            try:
                if _signal.getsignal(s) == _SIG_IGN:
                    _signal.signal(s, _noop)
                    self.saved.append(s)
            except (OSError, ValueError):
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.saved:
            try:
                _signal.signal(s, _SIG_IGN)
            except (OSError, ValueError):
                pass


def _noop(_signo: int, _frame: Any) -> None:
    pass


@dataclass
class SpawnResult:
    """What :func:`spawn` did: a process (``popen``) or a reply error."""

    popen: subprocess.Popen | None = None
    error: int = 0
    how: str = ""  # "exec", "sh" (ENOEXEC), "failed-exec", "failed-chdir"


def _popen(argv: Sequence[str], executable: str, env: Mapping[str, str], cwd: str | None,
           fds: Sequence[int] | None, umask: int,
           enter: Callable[[], None] | None = None) -> subprocess.Popen:
    """Fork and exec; the child is a session (and process group) of its own,
    and, with *enter* (the job's :meth:`~lamd.jobs.cgroups.JobControl.preexec`
    under delegation), in its job's cgroup before it execs."""
    stdio: dict[str, Any] = {}
    if fds is not None:
        stdio = dict(stdin=fds[0], stdout=fds[1], stderr=fds[2])
    with _NoInheritedIgnores():
        return subprocess.Popen(list(argv), executable=executable, env=dict(env), cwd=cwd,
                                close_fds=True, start_new_session=True, restore_signals=True,
                                umask=umask, preexec_fn=enter, **stdio)


def _report_child(msg: str, code: int, env: Mapping[str, str], fds: Sequence[int] | None,
                  umask: int, enter: Callable[[], None] | None = None) -> subprocess.Popen:
    """A child that does what LAM's forked child does when chdir/exec fails:
    print *msg* (if any) on its stderr and exit with the errno."""
    if msg:
        argv = [SHELL, "-c", 'printf "%s\\n" "$1" >&2; exit "$2"', "kcreatev", msg, str(code & 0xFF)]
    else:
        argv = [SHELL, "-c", 'exit "$1"', "kcreatev", str(code & 0xFF)]
    return _popen(argv, SHELL, env, None, fds, umask, enter)


def spawn(loadname: str, argv: Sequence[str], env: Mapping[str, str], wrkdir: str | None,
          fds: Sequence[int] | None, rtf: int, umask: int = -1,
          enter: Callable[[], None] | None = None) -> SpawnResult:
    """``kcreatev``: start *loadname* with *argv* and *env* in *wrkdir*.

    See the module docstring: a chdir or exec failure becomes a child that
    reports it as LAM's would; a fork failure is the result's ``error``.
    """
    argv = list(argv) or [loadname]
    cwd = wrkdir
    if cwd is not None:
        err = dir_error(cwd)
        if err:
            if rtf & RTF_TRYCWD:
                cwd = None
            else:
                return _reported(f"kcreatev: chdir({wrkdir}): {os.strerror(err)}", err,
                                 env, fds, umask, "failed-chdir", enter)
    try:
        return SpawnResult(_popen(argv, loadname, env, cwd, fds, umask, enter), how="exec")
    except OSError as e:
        code = e.errno or errno.EIO
        if e.filename is None:  # fork (or pipe) failed in this process
            return SpawnResult(error=code)
        if cwd is not None and e.filename == cwd and e.filename != loadname:
            if rtf & RTF_TRYCWD:
                return spawn(loadname, argv, env, None, fds, rtf, umask, enter)
            return _reported(f"kcreatev: chdir({wrkdir}): {os.strerror(code)}", code,
                             env, fds, umask, "failed-chdir", enter)
        if code == errno.ENOEXEC:  # execvp: run it with the shell
            try:
                p = _popen([SHELL, loadname, *argv[1:]], SHELL, env, cwd, fds, umask, enter)
                return SpawnResult(p, how="sh")
            except OSError as e2:
                if e2.filename is None:
                    return SpawnResult(error=e2.errno or errno.EIO)
                code = e2.errno or errno.EIO
        return _reported("", code, env, fds, umask, "failed-exec", enter)
    except ValueError as e:  # an environment or argument Popen refuses
        log.warning("kenyad: cannot start %s: %s", loadname, e)
        return SpawnResult(error=errno.EINVAL)


def _reported(msg: str, code: int, env: Mapping[str, str], fds: Sequence[int] | None,
              umask: int, how: str, enter: Callable[[], None] | None = None) -> SpawnResult:
    try:
        return SpawnResult(_report_child(msg, code, env, fds, umask, enter), how=how)
    except OSError as e:
        return SpawnResult(error=e.errno or code)
    except ValueError:
        return SpawnResult(error=code)


def kill_group(pid: int, signo: int) -> None:
    """Signal the process group of a process kenyad started (its pgid is its
    pid), else the process alone. Raises OSError as kill() does."""
    try:
        os.killpg(pid, signo)
    except ProcessLookupError:
        os.kill(pid, signo)


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------

_LIVE: "weakref.WeakSet[Kenyad]" = weakref.WeakSet()


@atexit.register
def _wipe_at_exit() -> None:  # pragma: no cover - interpreter exit
    for kd in list(_LIVE):
        kd.wipe()


class Kenyad:
    """kenyad's table and its handling of each request (one per coroutine)."""

    @property
    def node_id(self) -> int:
        """``getnodeid()``: what the router says now (a universe may be
        learnt after the jobs process started: :mod:`lamd.jobs.process`)."""
        return my_nodeid(self.k)

    def __init__(self, k: IProc) -> None:
        self.k = k
        cfg = k.config
        self.session: str | None = cfg.get("session")
        self.max_procs = int(cfg.get("kenyad_max_procs")
                             or os.environ.get("LAMD_KENYAD_MAX_PROCS") or MAX_PROCS)
        self.fd_timeout = cfg.get("fd_timeout")
        self.flatd_timeout = float(cfg.get("flatd_timeout", FLATD_TIMEOUT))
        self.send_timeout = float(cfg.get("send_timeout", SEND_TIMEOUT))
        self.environ: Mapping[str, str] | None = cfg.get("environ")
        self.umask = int(cfg.get("umask", -1))
        # the jobs process's JobControl: with a delegated cgroup, each job
        # (pq_jobid) gets a cgroup its processes enter before they exec; by
        # hand each process stays the process group of its own it always is
        jobctl = cfg.get("jobs")
        self.jobctl = jobctl if getattr(jobctl, "mode", None) == MODE_CGROUP else None
        #: jobs lamclean doomed: once the last of a job's processes leaves the
        #: table, whatever is left in its cgroup (escaped descendants) is killed
        self.doomed_jobs: set[tuple[int, int]] = set()
        self.table: dict[int, KProcess] = {}  # by index
        self._free: list[int] = []  # freed indexes (heap)
        self._next_index = 1
        self.lingering: list[KProcess] = []  # detached, still running
        self.badlog = RateLog(log, BAD_INPUT_LOG_INTERVAL)
        self._full_logged = False
        self._flatd_stale = False
        # flatd's answers: the reply event -pid with bit 29 cleared, so it is
        # neither a tool's -pid nor its wait event (bit 30), and differs from
        # the -pid another service of the same host process may use
        self.reply_event = int4((-self.pid_for_events()) & 0xDFFFFFFF)
        _LIVE.add(self)

    def pid_for_events(self) -> int:
        try:
            return self.k.pid
        except AssertionError:
            return os.getpid()

    # -- the table -------------------------------------------------------------
    def _alloc_index(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        i = self._next_index
        self._next_index += 1
        return i

    def _free_index(self, i: int) -> None:
        heapq.heappush(self._free, i)

    def pfind(self, pid: int) -> KProcess | None:
        for p in self.table.values():
            if p.pid == pid:
                return p
        return None

    def ordered(self) -> list[KProcess]:
        return [self.table[i] for i in sorted(self.table)]

    @staticmethod
    def pmatch(p: KProcess, method: int, value: int) -> bool:
        """``pmatch``: does *p* match the selection?"""
        if method == SELECT_ALL:
            return True
        if method == SELECT_SYS:
            return bool(p.rtf & RTF_SYSGEN)
        if method == SELECT_APPL:
            return not p.rtf & RTF_SYSGEN
        if method == SELECT_PID:
            return p.pid == value
        if method == SELECT_INDEX:
            return p.index == value
        if method == SELECT_MPI:
            return bool(p.rtf & RTF_MPI)
        return False

    # -- kernel I/O with deadlines -------------------------------------------------
    async def nsend(self, head: NMsg, body: bytes = b"") -> bool:
        """LAM's internal ``nsend`` (one packet through bufferd), given
        ``send_timeout`` to leave; False (logged) if it did not."""
        k = self.k
        head = replace(head, length=len(body))
        if head.node in (LOCAL, self.node_id):
            head.dl_event = EVBUFFERD
        else:
            try:  # another node's: through dlo, as the router says
                await getroute(k, head, self.node_id)
            except NoRoute:
                self.badlog.warn("send", "kenyad: no route to node %d (event %d); dropped",
                                 head.node, head.event)
                return False
        if head.flags & NREEL:
            d = list(head.data)
            d[6] = 0
            head.data = tuple(d)
        call = dsend(k, head, body, node_id=self.node_id)
        t = k.timer(self.send_timeout)
        try:
            got = await k.wait(call, t)
        finally:
            t.cancel()
        if isinstance(got, Event):
            self.badlog.warn("send", "kenyad: a message to event %d (node %d) could not "
                             "leave in %g s; dropped", head.event, head.node, self.send_timeout)
            return False
        if isinstance(got, KReply) and got.reply:
            self.badlog.warn("send", "kenyad: sending to event %d (node %d) failed: %d",
                             head.event, head.node, got.reply)
            return False
        return True

    def _recv_call(self, event: int, length: int) -> Any:
        """``nrecv`` through bufferd (``dsfr`` with BFQRECV) as one kernel call."""
        bf = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
                  data=data_words(0, 0, BFQRECV, 0, event, 0, 0, 0))
        return self.k.sr(EVBUFFERD, DLCTL, b"", KNMSG, event, 0, length, KNMSG, nmsg=bf)

    async def nrecv_within(self, event: int, length: int, timeout: float) -> NetMsg | None:
        k = self.k
        t = k.timer(timeout)
        try:
            got = await k.wait(self._recv_call(event, length), t)
        finally:
            t.cancel()
        if isinstance(got, Event) or got.reply.reply:
            return None
        return received(got)

    async def reply(self, pq: PReq, body: bytes) -> None:
        """``psendr``: answer the requester (type 0, NREEL)."""
        await self.nsend(NMsg(node=pq.src_node, event=pq.src_event, type=0, flags=NREEL),
                         body)

    async def bfsweep(self, event: int) -> None:
        """bufferd ``BFQSWEEP1``: drop what is buffered for *event* (no reply)."""
        head = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
                    data=data_words(LOCAL, self.reply_event, BFQSWEEP1, 0, event, 0, 0, 0))
        t = self.k.timer(self.send_timeout)
        try:
            await self.k.wait(self.k.send(EVBUFFERD, DLCTL, b"", KNMSG, nmsg=head), t)
        finally:
            t.cancel()

    # -- the loop --------------------------------------------------------------------
    async def serve(self) -> None:
        k = self.k
        log.info("kenyad: serving (pid %d forks, table of %d, node %d)", os.getpid(),
                 self.max_procs, self.node_id)
        while True:
            await self.collect_lingering()
            await self.childdetach()
            watches = [p.watch for p in self.table.values()
                       if p.watch is not None and not p.exited]
            call = self._recv_call(EVKENYAD, PReq.SIZE)
            got = await (k.wait(call, *watches) if watches else call)
            if isinstance(got, Event):
                self.child_exited(got)
                continue
            assert isinstance(got, Received)
            if got.reply.reply:
                self.badlog.warn("recv", "kenyad: receive failed (%d); again", got.reply.reply)
                await k.sleep(0.05)
                continue
            msg = received(got)
            if log.isEnabledFor(logging.DEBUG):  # as the stubs log it (decode: lamd.jobs.wire)
                log.debug("kenyad: packet nmsg=%s body=%s", msg.head.pack().hex(), msg.body.hex())
            if msg.head.flags & NMORE:
                await self.drain(msg)
            try:
                await self.handle(msg)
            except Exception:  # one request must never end process control
                log.exception("kenyad: request failed")

    async def drain(self, first: NetMsg) -> None:
        """A request longer than one packet: its other packets are not requests."""
        msg: NetMsg | None = first
        n = 0
        while msg is not None and msg.head.flags & NMORE and n < 1024:
            msg = await self.nrecv_within(EVKENYAD, MAXNMSGLEN, DRAIN_TIMEOUT)
            n += 1
        self.badlog.warn("long", "kenyad: a %d-packet request; only its first %d bytes "
                         "are a preq", n + 1, PReq.SIZE)

    async def handle(self, msg: NetMsg) -> None:
        body = msg.body
        if len(body) < 12:  # not even pq_src_node, pq_src_event, pq_req
            self.badlog.warn("short", "kenyad: a %d-byte request (a preq is %d); ignored",
                             len(body), PReq.SIZE)
            return
        body = body.ljust(PReq.SIZE, b"\0")  # the fields it lacks are zero
        pq = PReq.unpack(body)
        if pq.src_event >= 0 and pq.req in (PQCREATE, PQDOOM, PQSTATE, PQSPAWN, PQDETACH):
            # every LAM client answers on -pid; a service event would loop
            self.badlog.warn("event", "kenyad: request %d with reply event %d refused "
                             "(not a client's -pid)", pq.req, pq.src_event)
            return
        if pq.req == PQCREATE:
            await self.pqcreate(pq)
        elif pq.req == PQDOOM:
            await self.pqdoom(pq)
        elif pq.req == PQSTATE:
            await self.pqstate(pq)
        elif pq.req == PQSPAWN:
            await self.reply(pq, PReply(ESERVICE).pack())
        elif pq.req == PQDETACH:
            await self.pqdetach(pq)
        elif pq.req == PQATTACH:
            self.pqattach(pq)
        else:
            self.badlog.warn("req", "kenyad: unknown request %d from event %d ignored",
                             pq.req, pq.src_event)

    # -- exits ------------------------------------------------------------------
    def child_exited(self, ev: Event) -> None:
        """``childtrap``: a watched process ended; its status is set."""
        for p in self.table.values():
            if p.watch is ev.watch:
                break
        else:
            return
        p.exited = True
        log.debug("kenyad: pid %d exited: %s", p.pid, ev.value)
        ce = ev.value if isinstance(ev.value, ChildExit) else ChildExit(p.pid)
        self._reaped(p, ce)
        if p.status is not None:  # a deferred PQDETACH (RTF_FLAT) keeps its status
            return
        ws = wait_status(ce)
        st = lam_exit_status(ws, p.rtf) if ws is not None else (
            _LAMERROR | (0x20000 if p.rtf & RTF_KENYA_ATTACH else 0))
        p.status = int4(st)

    @staticmethod
    def _reaped(p: KProcess, ce: ChildExit) -> None:
        if p.popen is not None:
            mark_reaped(p.popen, wait_status(ce))

    async def collect_lingering(self) -> None:
        """Take the exits of detached processes (they need no notice)."""
        if not self.lingering:
            return
        keep = []
        for p in self.lingering:
            w = p.watch
            if w is not None and not w.active:  # fired: its event is queued
                ev = await self.k.next_event(w)
                self._reaped(p, ev.value if isinstance(ev.value, ChildExit) else ChildExit(p.pid))
            elif w is None:
                continue
            else:
                keep.append(p)
        self.lingering = keep

    async def childdetach(self) -> None:
        """Detach every process whose status is known (died, or deferred)."""
        for p in self.ordered():
            if p.status is not None and p.exited:
                await self.detach(p)

    def _end_doomed_jobs(self) -> None:
        """Kill what is left in the cgroup of each doomed job none of whose
        processes is in the table any more (a daemonised grandchild)."""
        live = {(q.jobid.node, q.jobid.pid) for q in self.table.values()}
        for jobid in sorted(self.doomed_jobs - live):
            self.doomed_jobs.discard(jobid)
            assert self.jobctl is not None
            left = self.jobctl.pids(jobid)
            if left:
                log.info("kenyad: job %d:%d doomed: killing %d processes left in its cgroup",
                         jobid[0], jobid[1], len(left))
            self.jobctl.kill_job(jobid)

    async def detach(self, p: KProcess) -> None:
        """``detachindex``: the exit notice (RTF_WAIT), then the slot is free."""
        self.table.pop(p.index, None)
        if self.doomed_jobs:
            self._end_doomed_jobs()
        self._free_index(p.index)
        if self._full_logged and len(self.table) < self.max_procs:
            self._full_logged = False
        if p.rtf & RTF_FLAT and p.loadpt and not any(
                q.loadpt == p.loadpt for q in self.table.values()):
            log.info("kenyad: removing load module %s", p.loadpt)
            _unlink(p.loadpt)
        if not p.exited:
            self.lingering.append(p)
        if p.rtf & RTF_WAIT and p.event != NOTEVENT and p.nodeid != NOTNODEID:
            status = p.status if p.status is not None else _LAMERROR
            event = int4(p.event & 0xBFFFFFFF)  # the launcher's wait event
            log.debug("kenyad: pid %d detached, status %#x: notice to event %d", p.pid,
                      status, event)
            await self.nsend(NMsg(node=p.nodeid, event=event, type=EXIT_NOTICE_TYPE,
                                  flags=NREEL),
                             PReply(status, p.pid, 0, self.node_id).pack())

    # -- PQATTACH / PQDETACH -----------------------------------------------------
    def pqattach(self, pq: PReq) -> None:
        """``pqattach``: no reply."""
        p = self.pfind(pq.pid)
        if p is not None:
            p.rtf = (pq.rtf & ~RTF_KENYA_CHILD) | RTF_KENYA_ATTACH
            p.argv = [pq.name] if pq.name else []
            return
        if pq.pid <= 0 or not _alive(pq.pid):
            self.badlog.warn("attach", "kenyad: PQATTACH of pid %d, which is not running; "
                             "ignored", pq.pid)
            return
        if len(self.table) >= self.max_procs:
            self._table_full()
            return
        p = KProcess(self._alloc_index(), pq.pid, pq.rtf | RTF_KENYA_ATTACH,
                     [pq.name] if pq.name else [], pq.name)
        p.watch = self.k.watch_child(pq.pid)
        self.table[p.index] = p

    async def pqdetach(self, pq: PReq) -> None:
        """``pqdetach``: reply, then the exit notice with the process's status
        (deferred to its death for RTF_FLAT)."""
        p = self.pfind(pq.pid)
        await self.reply(pq, PReply(0 if p is not None else ENOTPROCESS).pack())
        if p is None:
            return
        p.status = pq.status
        if p.rtf & RTF_FLAT:
            return  # detached when it dies (its load module is in use)
        await self.detach(p)

    # -- PQDOOM ---------------------------------------------------------------
    async def pqdoom(self, pq: PReq) -> None:
        """``pdoom``: signal every matching process; stop at the first error."""
        code = 0
        found = False
        for p in self.ordered():
            if code:
                break
            if p.index not in self.table or not self.pmatch(p, pq.sel_method, pq.sel_value):
                continue
            found = True
            err = await self.doom_one(p, pq.signal)
            if err and err != ESERVICE:
                if not p.rtf & (RTF_KENYA_CHILD | RTF_KENYA_ATTACH):
                    p.status = pq.status
                    p.exited = True
                    await self.detach(p)
                    found = False
                else:
                    code = err
        if pq.sel_method == SELECT_APPL and pq.signal == SIGUDIE:
            cleanup_objects(self.session)  # lamclean: mop up the RPIs' SysV objects
            if self.jobctl is not None:
                self.doomed_jobs.update((p.jobid.node, p.jobid.pid) for p in self.table.values()
                                        if p.popen is not None)  # started by kenyad
                self._end_doomed_jobs()
        if not found and pq.sel_method in (SELECT_PID, SELECT_INDEX):
            code = ENOTPROCESS
        await self.reply(pq, PReply(code).pack())

    async def doom_one(self, p: KProcess, sig: int) -> int:
        """``kdoom``: a Unix signal (sig < 1) or a LAM signal; 0 or an errno."""
        if sig < 1:
            try:
                if p.popen is not None and not p.exited:
                    kill_group(p.pid, -sig)
                else:
                    os.kill(p.pid, -sig)
            except OSError as e:
                if e.errno == errno.ESRCH and (p.exited or (p.watch is not None
                                                            and not p.watch.active)):
                    return 0  # it is gone: its exit is being handled
                return e.errno or errno.ESRCH
            return 0
        if sig > TNSIG:
            return errno.EINVAL
        rep = await self.k.doom(p.pid, sigmask(sig))
        if rep.reply == ENOTPROCESS:
            # not a LAM client (or no longer attached): LAM's internal kdoom
            # never saw this error. lamclean's SIGUDIE ends it all the same.
            if sig == SIGUDIE and p.popen is not None and not p.exited:
                try:
                    kill_group(p.pid, signal.SIGKILL)
                    log.info("kenyad: SIGUDIE: killed pid %d (not a LAM client) and its group",
                             p.pid)
                except OSError:
                    pass
            return 0
        return rep.reply

    # -- PQSTATE ---------------------------------------------------------------
    async def pqstate(self, pq: PReq) -> None:
        """``pqstate``: one pstate per matching process, then EEOF."""
        n = pq.maxproc
        if n <= 0:
            await self.reply(pq, PState(reply=errno.EINVAL).pack())
            return
        found = False
        for p in self.ordered():
            if n <= 0:
                break
            if not self.pmatch(p, pq.sel_method, pq.sel_value):
                continue
            found = True
            n -= 1
            rep = await self.k.state(p.pid)
            if rep.reply:
                ks = KStatus(state=KSFREE)
            else:
                ks = _kstatus(rep)
            await self.reply(pq, PState(0, p.index, p.pid, p.rtf, p.nodeid, p.event, ks,
                                        _cut(p.name()), _cut(p.loadpt)).pack())
        if not found and pq.sel_method & SELECT_PID:
            rep = await self.k.state(pq.sel_value)
            if not rep.reply:
                n -= 1
                await self.reply(pq, PState(0, 0, pq.sel_value, 0, NOTNODEID, NOTEVENT,
                                            _kstatus(rep), "<unknown>", "").pack())
        if n > 0:
            await self.reply(pq, PState(reply=EEOF).pack())

    # -- PQCREATE ---------------------------------------------------------------
    async def pqcreate(self, pq: PReq) -> None:
        """``pqcreate``: find the program and argv, start it, reply."""
        code = 0
        argv: list[str] = []
        envv: list[str] = []
        loadname: str | None = None
        if pq.argv:
            got = await self.get_argv_env(pq)
            if isinstance(got, int):
                code = got
            else:
                argv, envv = got
        wrkdir = pq.wrkdir
        if pq.rtf & RTF_TRYCWD and not is_dir(wrkdir):
            wrkdir = ""
        environ = self.environ if self.environ is not None else os.environ
        if pq.rtf & RTF_FLAT:
            got = await self.flforget(pq.loadpt)
            if isinstance(got, int):
                code = got
            else:
                loadname = got
        else:
            base = wrkdir or _getcwd()
            loadname, err = find_program(pq.name, os.X_OK, envv, base, environ)
            if loadname is None:
                code = err
        if not pq.argv and loadname is not None:
            argv = [a for a in loadname.split("\n") if a]
        if code:
            log.info("kenyad: cannot start %r for pid %d: %s", pq.name, int4(-pq.src_event),
                     os.strerror(code) if code < 0x400 else code)
            if loadname is not None and pq.rtf & RTF_FLAT:
                _unlink(loadname)
            if pq.rtf & RTF_PFDIO:
                self.exit_protocol(pq)
            await self.reply(pq, PReply(code).pack())
            return
        assert loadname is not None
        code, pid, index = await self.pcreate(pq, loadname, argv, envv, wrkdir, environ)
        await self.reply(pq, PReply(code, pid, index, self.node_id).pack())

    async def pcreate(self, pq: PReq, loadname: str, argv: list[str], envv: list[str],
                      wrkdir: str, environ: Mapping[str, str]) -> tuple[int, int, int]:
        """``pcreate``: a slot, the caller's stdio, the process. (errno, pid, index)."""
        if len(self.table) >= self.max_procs:
            self._table_full()
            if pq.rtf & RTF_PFDIO:
                self.exit_protocol(pq)
            if pq.rtf & RTF_FLAT:
                _unlink(loadname)
            return ENOPDESCRIPTORS, 0, 0
        fds: list[int] | None = None
        if pq.rtf & RTF_PFDIO:
            path = self._fd_server(pq)
            if path is None:
                return errno.ENOENT, 0, 0
            try:
                fds = await srfd.recv_fds(self.k, path, 3, timeout=self.fd_timeout)
            except srfd.FdPassError as e:
                self.badlog.warn("fds", "kenyad: create for pid %d: %s", int4(-pq.src_event), e)
                return _fdserver_errno(e), 0, 0
        try:
            env = child_environment(pq, envv, environ, os.getpid())
            env = {n: v for n, v in env.items() if n and "=" not in n}
            if fds is None and pq.rtf & RTF_IO:
                fds = self.iod_stdio(env)
            workdir = child_workdir(replace(pq, wrkdir=wrkdir), loadname)
            jobid = (pq.jobid.node, pq.jobid.pid)
            enter = self.jobctl.preexec(jobid) if self.jobctl is not None else None
            res = spawn(loadname, argv, env, workdir, fds, pq.rtf, self.umask, enter)
            if self.jobctl is not None and res.popen is not None:
                self.jobctl.started(res.popen.pid, jobid)
        finally:
            for fd in fds or ():
                os.close(fd)
        if res.popen is None:
            log.warning("kenyad: fork/exec of %s failed: %s", loadname,
                        os.strerror(res.error))
            return res.error, 0, 0
        pop = res.popen
        index = self._alloc_index()
        p = KProcess(index, pop.pid, pq.rtf | RTF_KENYA_CHILD, argv, loadname, pq.jobid,
                     pq.src_node, pq.src_event, popen=pop)
        p.watch = self.k.watch_child(pop.pid)
        self.table[index] = p
        log.info("kenyad: started %s as pid %d (index %d, job %d:%d, rtf %#x%s)", loadname,
                 pop.pid, index, pq.jobid.node, pq.jobid.pid, p.rtf,
                 "" if res.how == "exec" else f", {res.how}")
        return 0, pop.pid, index

    def iod_stdio(self, env: Mapping[str, str]) -> list[int] | None:
        """``redirect_stdio`` for ``RTF_IO`` without ``RTF_PFDIO`` (the tool
        on another node): stdout and stderr attached to this node's iod
        (``liosattach``: a connection to ``lam-io-socket`` carrying
        ``finfo`` {io node, tfd, 0}, then the data), which sends them to the
        tool's filed; stdin from ``/dev/null``. None if there is no
        ``TROLLIUSFD`` or no iod to attach to (the child keeps kenyad's)."""
        spec = env.get(TROLLIUSFD, "")
        if not self.session or spec.count(":") != 3:
            return None
        try:
            node, _, out_tfd, err_tfd = (int(x) for x in spec.split(":"))
        except ValueError:
            return None
        fds: list[int] = []
        try:
            fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            for tfd in (out_tfd, err_tfd):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.settimeout(self.fd_timeout)
                    s.connect(os.path.join(self.session, LAM_IOSOCKET))
                    s.sendall(IodForward(node, tfd, 0).pack())
                    s.shutdown(socket.SHUT_RD)
                except OSError:
                    s.close()
                    raise
                fds.append(s.detach())
        except OSError as e:
            self.badlog.warn("iod", "kenyad: cannot attach a process's output to iod: %s", e)
            for fd in fds:
                os.close(fd)
            return None
        return fds

    def _table_full(self) -> None:
        if not self._full_logged:
            self._full_logged = True
            log.warning("kenyad: process table full (%d processes, kenyad_max_procs): "
                        "refusing creates with ENOPDESCRIPTORS until one ends",
                        len(self.table))

    def _fd_server(self, pq: PReq) -> str | None:
        if not self.session:
            self.badlog.warn("nosession", "kenyad: no session directory: cannot take "
                             "passed descriptors")
            return None
        return fd_server_path(self.session, int4(-pq.src_event))

    def exit_protocol(self, pq: PReq) -> None:
        """Unblock a caller waiting in accept(): connect and close at once."""
        path = self._fd_server(pq)
        if path is None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            s.connect(path)
        except OSError:
            pass
        finally:
            s.close()

    # -- flatd -----------------------------------------------------------------
    async def flforget(self, tag: int) -> str | int:
        """``rforget``: flatd's FLQFORGET: the path of the file holding *tag*,
        or an errno. flatd in this process (the jobs process runs both) is
        asked directly; elsewhere over the kernel, as LAM's kenyad asks it."""
        colocated = self.k.config.get("colocated")
        fl = colocated.get("flatd") if colocated is not None else None
        if fl is not None:
            return self._inside_session(fl.forget(tag))
        if self._flatd_stale:  # an answer that came too late would be taken for this one
            await self.bfsweep(self.reply_event)
            self._flatd_stale = False
        req = FlReq(src_node=LOCAL, src_event=self.reply_event, req=FLQFORGET, parm1=tag)
        if not await self.nsend(NMsg(node=LOCAL, event=EVFLATD, type=0, data=req.data())):
            return ESERVICE
        msg = await self.nrecv_within(self.reply_event, FLPATHLEN, self.flatd_timeout)
        if msg is None:
            self._flatd_stale = True
            self.badlog.warn("flatd", "kenyad: flatd did not answer FLQFORGET in %g s",
                             self.flatd_timeout)
            return ESERVICE
        code = FlReply.from_data(msg.head.data).reply
        if code:
            return code
        return self._inside_session(msg.body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"))

    def _inside_session(self, path: str | int) -> str | int:
        """flatd's answer: a path inside the session directory, or an errno."""
        if isinstance(path, int):
            return path
        if not path:
            return EBADTAG
        if self.session and not _inside(self.session, path):
            self.badlog.warn("flpath", "kenyad: flatd named %r, outside the session "
                             "directory; not used", path)
            return EBADTAG
        return path

    async def get_argv_env(self, pq: PReq) -> tuple[list[str], list[str]] | int:
        """``get_argv_env``: argv and environment from flatd's file, which is
        then removed; or an errno."""
        got = await self.flforget(pq.argv)
        if isinstance(got, int):
            return got
        try:
            blob = _read_bounded(got, MAX_ARGS_BYTES)
        except OSError as e:
            _unlink(got)
            return e.errno or errno.EIO
        _unlink(got)
        try:
            return split_flat_args(blob, pq.envsize)
        except ValueError as e:
            self.badlog.warn("envsize", "kenyad: %s", e)
            return errno.EINVAL

    # -- the end ----------------------------------------------------------------
    def wipe(self) -> None:
        """``pwipe``: kill (with their groups) and reap the processes still
        running, remove load modules. Synchronous: it runs in ``finally``."""
        procs = list(self.table.values()) + self.lingering
        self.table.clear()
        self.lingering = []
        _LIVE.discard(self)
        for p in procs:
            if p.rtf & RTF_FLAT and p.loadpt:
                _unlink(p.loadpt)
            pop = p.popen
            if pop is None or pop.returncode is not None:
                continue
            try:
                kill_group(p.pid, signal.SIGKILL)
                log.info("kenyad: ending: killed pid %d (%s) and its group", p.pid, p.loadpt)
            except OSError:
                pass
        for p in procs:
            pop = p.popen
            if pop is None or pop.returncode is not None:
                continue
            try:
                pop.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("kenyad: pid %d did not end after SIGKILL", p.pid)
            except OSError:
                pass
        cleanup_objects(self.session)  # what MPI processes registered and left


def _kstatus(rep: KReply) -> KStatus:
    return KStatus(rep.state, rep.priority, rep.sigs, rep.event, rep.type, rep.length,
                   tuple(rep.fyi))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:
        return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _inside(top: str, path: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(top)
    return real.startswith(top.rstrip("/") + "/")


def _read_bounded(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.E2BIG, "argv file too large")
        chunks = []
        left = st.st_size
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


_libc: Any = None


def _sysv_rmid(kind: str, ident: int) -> None:
    """``shmctl``/``semctl`` IPC_RMID (no stdlib binding)."""
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    if kind == "m":
        _libc.shmctl(ident, 0, None)  # IPC_RMID
    else:
        _libc.semctl(ident, 0, 0)


def cleanup_objects(session: str | None) -> int:
    """LAM's ``lam_cleanup_objects`` (``share/etc/registry.c``): remove the
    SysV shared memory (``m ID``), semaphores (``s ID``) and files (``f
    PATH``) that MPI processes registered in ``<session>/lam-registry``, then
    the registry, under LAM's lock file. Returns how many objects it named."""
    if not session:
        return 0
    reg = os.path.join(session, "lam-registry")
    lock = reg + "-lock"
    try:
        lfd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        if e.errno != errno.ENOENT and os.path.exists(reg):
            log.warning("kenyad: cannot lock %s (%s): registered objects left", reg,
                        e.strerror)
        return 0
    n = 0
    try:
        try:
            with open(reg, "rb") as f:
                lines = f.read(1 << 20).decode("utf-8", "surrogateescape").splitlines()
        except FileNotFoundError:
            return 0
        except OSError as e:
            log.warning("kenyad: cannot read %s: %s", reg, e.strerror)
            return 0
        for line in lines:
            kind, _, obj = line.partition(" ")
            obj = obj.strip()
            try:
                if kind in ("m", "s"):
                    _sysv_rmid(kind, int(obj))
                elif kind == "f" and obj.startswith("/"):
                    os.unlink(obj)
                else:
                    continue
                n += 1
            except (OSError, ValueError):
                pass  # LAM: "structures may not exist"
        _unlink(reg)
        if n:
            log.info("kenyad: removed %d registered objects (%s)", n, reg)
        return n
    finally:
        os.close(lfd)
        _unlink(lock)


async def kenyad(k: IProc) -> None:
    """kenyad: LAM's process server on ``EVKENYAD`` (see the module docstring)."""
    kd = Kenyad(k)
    try:
        await kd.serve()
    finally:
        kd.wipe()


__all__ = ["kenyad", "Kenyad", "KProcess", "find_program", "spawn", "SpawnResult",
           "cleanup_objects",
           "dir_error", "wait_status", "MAX_PROCS", "FLATD_TIMEOUT", "SEND_TIMEOUT"]
