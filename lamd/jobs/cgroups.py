"""Each job in its own cgroup, so that a doomed job leaves nothing behind.

The C lamd kills a job by pid: a rank that double-forks a daemon, or starts
a helper that ``setsid()``\\ s, leaves it running after ``lamclean``. Under
systemd the jobs process runs in ``lamd-jobs@USER.service`` with
``Delegate=yes``, so it owns its cgroup subtree and puts each job in a cgroup
of its own; ``cgroup.kill`` (Linux >= 5.14) then kills every process in it,
wherever it was reparented, in one write::

    <own cgroup>/                 the unit's cgroup (delegated: owned by the user)
        jobs-daemon/              the jobs process itself (cgroup v2's
                                  no-internal-process rule: only leaves hold
                                  processes once controllers are enabled)
        job-<node>-<pid>/         one per LAM job id {node, pid} (pq_jobid)

By hand (no delegation: the cgroup we are in is not ours to write, or there
is no cgroup v2 hierarchy) the same calls fall back to one process group per
job, and the log says so once. A process group is not a container: a
process that calls ``setsid()`` or ``setpgid()`` leaves it and survives
``kill_job`` (exactly what the C lamd leaves behind). Run ``lamd`` in a
delegated scope (``systemd-run --user --scope -p Delegate=yes lamd``) to get
cgroups by hand too.

The interface kenyad uses (one :class:`JobControl` per process: :func:`get`)::

    from lamd.jobs import cgroups
    jobs = cgroups.get()                 # set up by the jobs process; else a
                                         # process-group one (never None)
    jobid = (node, pid)                  # kenyad's pq_jobid

    # start a child of the job: the child enters the job's cgroup (or
    # process group) itself, after fork and before exec, so nothing it runs
    # is ever outside it
    pre = jobs.preexec(jobid)
    p = subprocess.Popen(argv, ..., preexec_fn=pre)  # or, after os.fork(),
                                                     # call pre() in the child
    jobs.started(p.pid, jobid)           # parent, once forked: needed for
                                         # process groups, harmless otherwise

    # or: fork a child that waits (e.g. reads a pipe), then, in the parent
    jobs.place(pid, jobid)               # and let the child go on to exec

    jobs.pids(jobid)                     # what runs in the job now
    jobs.signal_job(jobid, signal.SIGTERM)
    jobs.kill_job(jobid)                 # SIGKILL all of it, daemonised
                                         # grandchildren too; removes the
                                         # cgroup once empty
    jobs.release(jobid)                  # the job is over: remove its cgroup
                                         # if empty (False: something still
                                         # runs in it; kill_job ends it)
    jobs.kill_all()                      # every job (the jobs process does
                                         # this when it stops)
    jobs.mode                            # "cgroup" or "pgroup"

Why the child moves itself (``preexec``) rather than being moved: a pid
written to ``cgroup.procs`` after exec may already have forked, and the fork
would stay outside; ``clone3(CLONE_INTO_CGROUP)`` would be best but Python
has no binding for it. The jobs process is single-threaded, which is what
makes ``preexec_fn`` safe; the function only does ``write(fd, "0")`` on a
``cgroup.procs`` descriptor the parent opened (``0`` means the writer), so
no allocation-heavy work runs between fork and exec. ``place(pid)`` is the
other way (fork, move, then let the child exec): it needs the child to wait.

cgroup permissions: moving a process needs write access to ``cgroup.procs``
of the common ancestor of the source and destination cgroups; with
``Delegate=yes`` systemd makes the unit's cgroup (and its ``cgroup.procs``)
the user's, and every cgroup the jobs process creates is its own. A job's
process can therefore also move itself out of its job cgroup (it is the same
user), but never out of the unit: :meth:`JobControl.kill_all` kills
everything under the unit's cgroup except the jobs process, and stopping the
unit kills the rest.

Empty job cgroups are removed by :meth:`kill_job`, :meth:`release` and
:meth:`sweep` (the jobs process sweeps once a second); a cgroup that a
``preexec`` was handed out for is left alone for :data:`SPAWN_GRACE` seconds
or until :meth:`started`, so it is not removed under a child about to enter.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import time
from .._dataclasses import dataclass, field
from typing import Callable, Iterable

from ..session.kkill import proc_starttime

log = logging.getLogger("lamd.jobs.cgroups")

MODE_CGROUP = "cgroup"
MODE_PGROUP = "pgroup"

#: The leaf the jobs process moves itself into.
DAEMON_LEAF = "jobs-daemon"
#: Seconds a job cgroup stays after a ``preexec`` without ``started``.
SPAWN_GRACE = 30.0

JobId = tuple[int, int]

_JOB_RE = re.compile(r"^job-(-?\d+)-(-?\d+)$")


def job_name(jobid: JobId) -> str:
    """The job's cgroup name: ``job-<node>-<pid>``."""
    node, pid = jobid
    return f"job-{int(node)}-{int(pid)}"


def parse_job_name(name: str) -> JobId | None:
    m = _JOB_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


# ---------------------------------------------------------------------------
# finding our cgroup


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup``, or
    ``/sys/fs/cgroup/unified`` on a hybrid system), or None."""
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        if right.split(" ", 1)[0] == "cgroup2":
            mp = left.split(" ")[4].replace("\\040", " ")
            if found is None or mp == "/sys/fs/cgroup":
                found = mp
    return found


def own_cgroup(pid: int | str = "self") -> str | None:
    """The process's cgroup v2 path (``0::PATH`` of /proc/PID/cgroup), or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        pass
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def cgroup_pids(path: str, recursive: bool = True) -> list[int]:
    """The processes in the cgroup at *path* (and its descendants)."""
    out: list[int] = []
    try:
        out += [int(x) for x in _read(os.path.join(path, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return out
    if recursive:
        for sub in _subdirs(path):
            out += cgroup_pids(os.path.join(path, sub), True)
    return out


def populated(path: str) -> bool | None:
    """``populated`` of the cgroup's ``cgroup.events`` (None: no such cgroup)."""
    try:
        for line in _read(os.path.join(path, "cgroup.events")).splitlines():
            k, _, v = line.partition(" ")
            if k == "populated":
                return v.strip() == "1"
    except OSError:
        return None
    return None


def _subdirs(path: str) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _rmtree_cgroup(path: str) -> bool:
    """rmdir the cgroup and its sub-cgroups, deepest first; True if gone."""
    for sub in _subdirs(path):
        _rmtree_cgroup(os.path.join(path, sub))
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _kill_cgroup(path: str) -> None:
    """SIGKILL everything in the cgroup subtree: ``cgroup.kill``, or (before
    Linux 5.14) freeze, kill each process, thaw."""
    try:
        _write(os.path.join(path, "cgroup.kill"), "1")
        return
    except FileNotFoundError:
        if not os.path.isdir(path):
            return
    except OSError as e:
        if e.errno == errno.ENOENT or not os.path.isdir(path):
            return
        log.warning("cgroups: cannot write %s/cgroup.kill: %s; killing one by one",
                    path, e.strerror)
    frozen = False
    try:
        _write(os.path.join(path, "cgroup.freeze"), "1")
        frozen = True
    except OSError:
        pass
    for _ in range(100):  # processes forked while we read are caught next round
        pids = cgroup_pids(path)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if frozen:
            break  # frozen: nothing forks; SIGKILL still ends frozen tasks
    if frozen:
        try:
            _write(os.path.join(path, "cgroup.freeze"), "0")
        except OSError:
            pass


# ---------------------------------------------------------------------------


@dataclass
class _Group:
    """A process group of a job (fallback): its leader's pid and start time."""

    pgid: int
    starttime: int | None


@dataclass
class _Job:
    jobid: JobId
    path: str | None = None  # cgroup mode
    procs_fd: int | None = None  # the job's cgroup.procs, for preexec
    spawning_since: float | None = None  # a preexec handed out, not yet started()
    groups: list[_Group] = field(default_factory=list)  # pgroup mode


class JobControl:
    """Per-job cgroups (``mode == "cgroup"``) or process groups (``"pgroup"``).

    :meth:`setup` finds out which applies to this process; tests build one on
    a cgroup of their own with ``JobControl(base=PATH)``.
    """

    def __init__(self, base: str | None = None, *, reason: str = "",
                 state_file: str | None = None) -> None:
        """*base*: the cgroup (a directory of the cgroup v2 hierarchy) job
        cgroups are made in; None: process groups. *state_file* (process
        groups only): where the job groups are recorded, so that whoever
        comes after a jobs process that died can kill them
        (:func:`kill_recorded`)."""
        self.base = base
        self.mode = MODE_CGROUP if base else MODE_PGROUP
        #: why this mode (for the log)
        self.reason = reason
        self.state_file = state_file if base is None else None
        self._jobs: dict[JobId, _Job] = {}
        self._pid = os.getpid()
        # processes already in our cgroup are not jobs: by hand in a
        # delegated scope (systemd-run --scope -p Delegate=yes lamd), lamd
        # itself is there; kill_all leaves them alone
        self._keep = {self._pid} | (set(cgroup_pids(base, recursive=False)) if base else set())

    def __repr__(self) -> str:
        return f"<JobControl {self.mode} {self.base or ''}>"

    # ------------------------------------------------------------------
    @classmethod
    def setup(cls, *, leaf: str = DAEMON_LEAF, quiet: bool = False,
              state_file: str | None = None) -> "JobControl":
        """Use this process's cgroup if it is delegated to us: move ourselves
        into ``<own>/jobs-daemon`` and make job cgroups beside it (job
        cgroups left there by a previous jobs process are killed).
        Otherwise process groups, recorded in *state_file* (groups a previous
        jobs process recorded there are killed); the reason is logged once
        (unless *quiet*)."""
        jc, why = cls._try_cgroup(leaf)
        if jc is None:
            if state_file is not None:
                n = kill_recorded(state_file)
                if n:
                    log.warning("jobs: killed %d process groups left by a previous jobs "
                                "process", n)
            jc = cls(None, reason=why, state_file=state_file)
            if not quiet:
                log.warning("jobs: no cgroup of our own (%s): each job gets a process group "
                            "instead; a process that leaves its group (setsid) survives "
                            "its job. Under systemd, lamd-jobs@.service delegates a cgroup.",
                            why)
        elif not quiet:
            log.info("jobs: each job in its own cgroup under %s (this process in %s/%s)",
                     jc.base, jc.base, leaf)
        return jc

    @classmethod
    def _try_cgroup(cls, leaf: str) -> tuple["JobControl | None", str]:
        mount = cgroup2_mount()
        if mount is None:
            return None, "no cgroup v2 hierarchy mounted"
        rel = own_cgroup()
        if rel is None:
            return None, "not in a cgroup v2 cgroup"
        if rel.rstrip("/").endswith("/" + leaf):  # already moved (a re-exec)
            rel = rel.rstrip("/")[: -len(leaf) - 1]
        if rel in ("", "/"):
            return None, "in the root cgroup"
        own = mount.rstrip("/") + rel
        if not (os.access(own, os.W_OK | os.X_OK)
                and os.access(os.path.join(own, "cgroup.procs"), os.W_OK)):
            return None, f"cgroup {rel} is not delegated to uid {os.getuid()}"
        daemon = os.path.join(own, leaf)
        try:
            os.makedirs(daemon, exist_ok=True)
            _write(os.path.join(daemon, "cgroup.procs"), "0")
        except OSError as e:
            return None, f"cannot move into {rel}/{leaf}: {e.strerror}"
        jc = cls(own, reason=f"delegated cgroup {rel}")
        stale = [n for n in _subdirs(own) if parse_job_name(n)]
        if stale:  # a previous jobs process's jobs: nobody can report them now
            log.warning("jobs: killing %d job cgroups left by a previous jobs process: %s",
                        len(stale), ", ".join(sorted(stale)))
            for n in stale:
                _kill_cgroup(os.path.join(own, n))
            jc._wait_empty([os.path.join(own, n) for n in stale], 2.0)
            for n in stale:
                _rmtree_cgroup(os.path.join(own, n))
        return jc, ""

    # ------------------------------------------------------------------
    # placing children
    # ------------------------------------------------------------------
    def _job(self, jobid: JobId) -> _Job:
        jobid = (int(jobid[0]), int(jobid[1]))
        j = self._jobs.get(jobid)
        if j is None:
            j = self._jobs[jobid] = _Job(jobid)
        if self.base is not None and (j.path is None or not os.path.isdir(j.path)):
            j.path = os.path.join(self.base, job_name(jobid))
            if j.procs_fd is not None:
                os.close(j.procs_fd)
                j.procs_fd = None
            os.makedirs(j.path, exist_ok=True)
        return j

    def preexec(self, jobid: JobId) -> Callable[[], None]:
        """A function for the child to call after fork, before exec
        (``Popen(preexec_fn=...)``): it enters the job's cgroup, or its
        process group. Raises OSError in the child if it cannot."""
        j = self._job(jobid)
        j.spawning_since = time.monotonic()
        if self.base is not None:
            if j.procs_fd is None:
                j.procs_fd = os.open(os.path.join(j.path, "cgroup.procs"),  # type: ignore[arg-type]
                                     os.O_WRONLY | os.O_CLOEXEC)
            fd = j.procs_fd

            def enter_cgroup() -> None:
                os.write(fd, b"0")

            return enter_cgroup
        group = self._live_group(j)
        pgid = group.pgid if group is not None else 0

        def enter_pgroup() -> None:
            if pgid:
                try:
                    os.setpgid(0, pgid)
                    return
                except OSError:
                    pass  # the group has just ended: start a new one
            os.setpgid(0, 0)

        return enter_pgroup

    def started(self, pid: int, jobid: JobId) -> None:
        """The parent's half of :meth:`preexec`: *pid* (forked with it) is
        the job's. Records its process group (pgroup mode)."""
        j = self._job(jobid)
        j.spawning_since = None
        if self.base is None:
            self._note_group(j, pid)

    def place(self, pid: int, jobid: JobId) -> None:
        """Move *pid* (our child, forked and not yet exec'd, or a process
        of ours we want in the job) into the job's cgroup or process group.
        Raises OSError if it cannot."""
        j = self._job(jobid)
        if self.base is not None:
            _write(os.path.join(j.path, "cgroup.procs"), str(int(pid)))  # type: ignore[arg-type]
            return
        group = self._live_group(j)
        if group is not None:
            try:
                os.setpgid(pid, group.pgid)
                return
            except OSError:
                pass
        os.setpgid(pid, pid)
        self._note_group(j, pid)

    def _note_group(self, j: _Job, pid: int) -> None:
        try:
            pgid = os.getpgid(pid)
        except OSError:
            return  # gone already
        if pgid == os.getpgid(0):
            log.warning("jobs: pid %d of job %s is in the jobs process's own process "
                        "group: not recorded (it would be killed with us)", pid, job_name(j.jobid))
            return
        if all(g.pgid != pgid for g in j.groups):
            g = _Group(pgid, proc_starttime(pgid))
            j.groups.append(g)
            if self.state_file is not None:
                try:
                    fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                                 | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                    try:
                        os.write(fd, f"{g.pgid} {g.starttime or 0}\n".encode())
                    finally:
                        os.close(fd)
                except OSError as e:
                    log.warning("jobs: cannot record process group %d in %s: %s", pgid,
                                self.state_file, e.strerror)

    def _live_group(self, j: _Job) -> _Group | None:
        for g in j.groups:
            if self._group_is_ours(g):
                return g
        return None

    @staticmethod
    def _group_is_ours(g: _Group) -> bool:
        """Whether process group *g* is still the one we recorded: its leader
        is the process we saw (same start time), or no process has its
        number (a pid is never reused while a group with that id has
        members, so the members left are ours)."""
        st = proc_starttime(g.pgid)
        return st is None or st == g.starttime

    # ------------------------------------------------------------------
    # looking and killing
    # ------------------------------------------------------------------
    def jobs(self) -> list[JobId]:
        """The jobs known: recorded ones, and job cgroups that exist."""
        ids = set(self._jobs)
        if self.base is not None:
            ids |= {jid for n in _subdirs(self.base) if (jid := parse_job_name(n))}
        return sorted(ids)

    def pids(self, jobid: JobId) -> list[int]:
        """The processes of the job now (a job cgroup includes its sub-cgroups)."""
        jobid = (int(jobid[0]), int(jobid[1]))
        if self.base is not None:
            return sorted(cgroup_pids(os.path.join(self.base, job_name(jobid))))
        j = self._jobs.get(jobid)
        if j is None:
            return []
        groups = {g.pgid for g in j.groups if self._group_is_ours(g)}
        return sorted(pid for pid, pgid in _proc_pgids() if pgid in groups)

    def signal_job(self, jobid: JobId, signo: int) -> int:
        """Send *signo* to every process of the job; returns how many got it."""
        jobid = (int(jobid[0]), int(jobid[1]))
        if self.base is None:
            j = self._jobs.get(jobid)
            n = 0
            for g in (j.groups if j else []):
                if self._group_is_ours(g):
                    try:
                        os.killpg(g.pgid, signo)
                        n += 1
                    except OSError:
                        pass
            return n
        n = 0
        for pid in cgroup_pids(os.path.join(self.base, job_name(jobid))):
            try:
                os.kill(pid, signo)
                n += 1
            except OSError:
                pass
        return n

    def kill_job(self, jobid: JobId, wait: float = 0.0) -> bool:
        """SIGKILL every process of the job, including daemonised
        descendants (cgroup mode); then remove the job's cgroup, waiting up
        to *wait* seconds for it to empty. True if the job is gone (no
        process, no cgroup); else :meth:`sweep` removes it later."""
        jobid = (int(jobid[0]), int(jobid[1]))
        if self.base is None:
            self.signal_job(jobid, signal.SIGKILL)
            deadline = time.monotonic() + wait
            while self.pids(jobid) and time.monotonic() < deadline:
                time.sleep(0.005)
            if not self.pids(jobid):
                self._forget(jobid)
                return True
            return False
        path = os.path.join(self.base, job_name(jobid))
        _kill_cgroup(path)
        self._wait_empty([path], wait)
        if _rmtree_cgroup(path):
            self._forget(jobid)
            return True
        return False

    def release(self, jobid: JobId) -> bool:
        """The job is over: forget it, and remove its cgroup if nothing runs
        in it. False if processes remain (they stay killable: kill_job)."""
        jobid = (int(jobid[0]), int(jobid[1]))
        if self.base is None:
            if self.pids(jobid):
                return False
            self._forget(jobid)
            return True
        path = os.path.join(self.base, job_name(jobid))
        if populated(path):
            return False
        if _rmtree_cgroup(path):
            self._forget(jobid)
            return True
        return False

    def kill_all(self, wait: float = 2.0) -> int:
        """Kill every job, and (cgroup mode) every process anywhere under our
        cgroup but the jobs process itself (and what was in our cgroup before
        us): a job's process may have moved itself out of its job's cgroup,
        never out of ours. Returns the number of jobs killed."""
        jobs = self.jobs()
        if self.base is None:
            for jobid in jobs:
                self.signal_job(jobid, signal.SIGKILL)
            deadline = time.monotonic() + wait
            while any(self.pids(j) for j in jobs) and time.monotonic() < deadline:
                time.sleep(0.005)
            for jobid in jobs:
                if not self.pids(jobid):
                    self._forget(jobid)
            return len(jobs)
        others = [os.path.join(self.base, n) for n in _subdirs(self.base) if n != DAEMON_LEAF]
        for path in others:
            _kill_cgroup(path)
        for cg in (self.base, os.path.join(self.base, DAEMON_LEAF)):
            for pid in cgroup_pids(cg, recursive=False):
                if pid not in self._keep:
                    log.warning("jobs: pid %d escaped its job into %s: killed", pid, cg)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        self._wait_empty(others, wait)
        for path in others:
            _rmtree_cgroup(path)
        for jobid in list(self._jobs):
            self._forget(jobid)
        return len(jobs)

    def sweep(self) -> int:
        """Remove the empty job cgroups (not those a child is entering);
        forget finished process-group jobs. Returns how many went."""
        now = time.monotonic()
        n = 0
        for jobid in self.jobs():
            j = self._jobs.get(jobid)
            if j is not None and j.spawning_since is not None:
                if now - j.spawning_since < SPAWN_GRACE:
                    continue
                j.spawning_since = None
            if self.base is None:
                if j is not None and not self.pids(jobid):
                    self._forget(jobid)
                    n += 1
                continue
            path = os.path.join(self.base, job_name(jobid))
            state = populated(path)
            if state is None:  # removed already (kill_job, or by hand)
                self._forget(jobid)
            elif state is False and _rmtree_cgroup(path):
                self._forget(jobid)
                n += 1
        return n

    def close(self) -> None:
        """Close the descriptors kept for :meth:`preexec`."""
        for jobid in list(self._jobs):
            self._forget(jobid)

    # ------------------------------------------------------------------
    def _forget(self, jobid: JobId) -> None:
        j = self._jobs.pop(jobid, None)
        if j is not None and j.procs_fd is not None:
            try:
                os.close(j.procs_fd)
            except OSError:
                pass
        if j is not None and j.groups and self.state_file is not None:
            self._save_groups()

    def _save_groups(self) -> None:
        """Rewrite the state file with the groups of the jobs still known
        (removed when there are none)."""
        path = self.state_file
        assert path is not None
        lines = [f"{g.pgid} {g.starttime or 0}\n" for j in self._jobs.values() for g in j.groups]
        try:
            if not lines:
                os.unlink(path)
                return
            tmp = f"{path}.{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, "".join(lines).encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("jobs: cannot update %s: %s", path, e.strerror)

    @staticmethod
    def _wait_empty(paths: Iterable[str], wait: float) -> None:
        deadline = time.monotonic() + wait
        paths = list(paths)
        while paths:
            paths = [p for p in paths if populated(p)]
            if not paths or time.monotonic() >= deadline:
                return
            time.sleep(0.002)


def kill_recorded(path: str, wait: float = 2.0) -> int:
    """SIGKILL the process groups a (dead) jobs process recorded in *path*
    that are still its own (see :meth:`JobControl._group_is_ours`); remove
    the file. Returns how many groups were killed."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return 0
    groups = []
    for line in text.splitlines():
        try:
            pgid, st = (int(x) for x in line.split())
        except ValueError:
            continue
        if pgid > 1:
            groups.append(_Group(pgid, st or None))
    n = 0
    killed = []
    for g in groups:
        if JobControl._group_is_ours(g):
            try:
                os.killpg(g.pgid, signal.SIGKILL)
                n += 1
                killed.append(g.pgid)
            except OSError:
                pass
    deadline = time.monotonic() + wait
    while killed and time.monotonic() < deadline:
        alive = {pgid for _pid, pgid in _proc_pgids()}
        killed = [p for p in killed if p in alive]
        if killed:
            time.sleep(0.005)
    try:
        os.unlink(path)
    except OSError:
        pass
    return n


def _proc_pgids() -> list[tuple[int, int]]:
    """(pid, pgid) of every process we can see."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                rest = f.read().rsplit(b")", 1)[1].split()
            if rest[0] == b"Z":
                continue
            out.append((int(name), int(rest[2])))
        except (OSError, IndexError, ValueError):
            continue
    return out


# ---------------------------------------------------------------------------
# the process-wide instance

_current: JobControl | None = None


def install(jc: JobControl) -> None:
    """Make *jc* what :func:`get` returns (the jobs process does, at start)."""
    global _current
    _current = jc


def get() -> JobControl:
    """This process's :class:`JobControl`: the one the jobs process set up;
    else (a service run inside the kernel, a test) a process-group one."""
    global _current
    if _current is None:
        _current = JobControl(None, reason="not set up by the jobs process")
    return _current


__all__ = ["JobControl", "JobId", "MODE_CGROUP", "MODE_PGROUP", "DAEMON_LEAF", "SPAWN_GRACE",
           "job_name", "parse_job_name", "cgroup2_mount", "own_cgroup", "cgroup_pids",
           "populated", "kill_recorded", "install", "get"]
