"""Issue 10: the jobs process (``python3 -m lamd.jobs``) and per-job cgroups.

* the cgroup API (:mod:`lamd.jobs.cgroups`) on a real cgroup v2 hierarchy:
  as root on a test cgroup (children entering by ``preexec`` or being
  ``place``\\ d, a daemonised grandchild (double fork and ``setsid``) killed
  by ``kill_job``, empty cgroups removed, never one a child is entering);
  as user ``lamtest`` on a cgroup delegated to it the way ``Delegate=yes``
  does (``setup`` moves the process into ``jobs-daemon``; ``kill_all`` also
  ends a process that moved itself out of its job); on a cgroup that is not
  delegated, the process-group fallback, said once in the log;
* process groups: never a group whose number was reused; the record a dead
  jobs process leaves (``kill_recorded``);
* ``lamd`` by hand as ``lamtest``: it starts the jobs process as its child
  (``ps``), which attaches (the kill file lists it five times, one per
  service) and exports the session to what it starts; ``lamhalt`` ends both
  and the jobs; a killed jobs process is replaced and its jobs killed;
  ``--no-jobs`` is the single process of old; the jobs process waits for a
  kernel (bounded) and starts before one;
* :class:`~lamd.jobs.process.JobsChild` restarts (bounded) then gives up; by
  hand, a jobs process that keeps dying leaves the kernel answering ESERVICE.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from lamd.jobs import cgroups
from lamd.jobs.cgroups import JobControl, cgroup2_mount, job_name
from lamd.jobs.process import (
    JOB_SERVICES, PGROUPS_FILE, RESTART_DELAY, JobsChild, jobs_argv, read_env_file,
    session_environment,
)
from lamd.kernelio.loop import EventLoop

from . import lamenv
from .test_stock_tools import show, wait_until

TIMEOUT = 10.0
MOUNT = cgroup2_mount()
#: kernel connections of an attached jobs process: its five services and
#: the node-id watch (lamd.iprocs.router.nodeid_watch)
JOBS_CONNECTIONS = len(JOB_SERVICES) + 1


def running(pid: int) -> bool:
    return lamenv.running(pid)


def cgroup_of(pid: int) -> str | None:
    return cgroups.own_cgroup(pid)


@pytest.fixture
def test_cgroup():
    """A fresh cgroup v2 directory for the test (root), removed afterwards
    with everything in it killed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a cgroup")
    assert MOUNT, "no cgroup v2 hierarchy mounted (/proc/self/mountinfo)"
    path = tempfile.mkdtemp(prefix="lamd-test-", dir=MOUNT)
    try:
        yield path
    finally:
        for d in [path] + [os.path.join(path, n) for n in cgroups._subdirs(path)]:
            try:
                cgroups._write(os.path.join(d, "cgroup.kill"), "1")
            except OSError:
                pass
        JobControl._wait_empty([path], 5.0)
        assert cgroups._rmtree_cgroup(path), f"cannot remove {path}"


def sh_bg(script: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, **kw)


def read_pid(path: Path, timeout: float = TIMEOUT) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip(), timeout), path
    return int(path.read_text().split()[0])


# ---------------------------------------------------------------------------
# the cgroup API, as root, on a test cgroup


# a job that daemonises a grandchild the classic way (fork, setsid, fork:
# out of the process group and session, reparented) and carries on
DAEMONISE = "setsid /bin/sh -c 'sleep 300 & echo $! > {out}' & exec sleep 300"


def test_preexec_child_and_daemonised_grandchild_die_with_the_job(test_cgroup, tmp_path):
    jc = JobControl(test_cgroup)
    assert jc.mode == cgroups.MODE_CGROUP
    jobid = (0, 4242)
    out = tmp_path / "grandchild"
    p = sh_bg(DAEMONISE.format(out=out), preexec_fn=jc.preexec(jobid))
    jc.started(p.pid, jobid)
    try:
        gc = read_pid(out)
        rel = test_cgroup[len(MOUNT):]
        # both entered the job's cgroup before running anything
        assert cgroup_of(p.pid) == f"{rel}/job-0-4242"
        assert cgroup_of(gc) == f"{rel}/job-0-4242"
        assert os.getsid(gc) != os.getsid(0) and os.getpgid(gc) != os.getpgid(p.pid)
        assert set(jc.pids(jobid)) >= {p.pid, gc}
        assert jc.jobs() == [jobid]
        assert jc.kill_job(jobid, wait=5.0) is True
        assert p.wait(TIMEOUT) == -signal.SIGKILL
        assert wait_until(lambda: not running(gc), TIMEOUT), "the daemonised grandchild survived"
        assert not os.path.exists(os.path.join(test_cgroup, "job-0-4242"))
        assert jc.jobs() == [] and jc.pids(jobid) == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_place_moves_a_held_child_and_signal_job_reaches_all(test_cgroup, tmp_path):
    """Fork, move, then let the child go on: ``place(pid)``."""
    jc = JobControl(test_cgroup)
    jobid = (3, 99)
    out = tmp_path / "gc"
    # the child waits for a line on stdin before it runs the job
    p = subprocess.Popen(["/bin/sh", "-c", "read go; (sleep 300 & echo $! > %s); exec sleep 300"
                          % out], stdin=subprocess.PIPE, text=True)
    try:
        jc.place(p.pid, jobid)
        p.stdin.write("go\n")
        p.stdin.flush()
        gc = read_pid(out)
        assert cgroup_of(gc) == cgroup_of(p.pid) == test_cgroup[len(MOUNT):] + "/job-3-99"
        assert jc.signal_job(jobid, signal.SIGTERM) >= 2
        assert p.wait(TIMEOUT) == -signal.SIGTERM
        assert wait_until(lambda: not running(gc), TIMEOUT)
        # over: release removes the empty cgroup
        assert wait_until(lambda: jc.release(jobid), TIMEOUT)
        assert not os.path.exists(os.path.join(test_cgroup, job_name(jobid)))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_release_and_sweep_leave_busy_and_entering_cgroups(test_cgroup, monkeypatch):
    jc = JobControl(test_cgroup)
    busy, done, entering = (0, 1), (0, 2), (0, 3)
    p = sh_bg("exec sleep 300", preexec_fn=jc.preexec(busy))
    jc.started(p.pid, busy)
    q = sh_bg("exit 0", preexec_fn=jc.preexec(done))
    jc.started(q.pid, done)
    q.wait(TIMEOUT)
    jc.preexec(entering)  # handed out, no child yet
    try:
        assert jc.release(busy) is False  # still running: kept
        assert os.path.isdir(os.path.join(test_cgroup, job_name(busy)))
        assert jc.sweep() == 1  # done goes; entering is within SPAWN_GRACE
        assert sorted(jc.jobs()) == [busy, entering]
        monkeypatch.setattr(cgroups, "SPAWN_GRACE", 0.0)
        assert jc.sweep() == 1 and jc.jobs() == [busy]
        assert jc.kill_job(busy, wait=5.0) and p.wait(TIMEOUT) == -signal.SIGKILL
        assert os.listdir(test_cgroup) and not cgroups._subdirs(test_cgroup)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_child_enters_a_job_cgroup_swept_under_it(test_cgroup):
    """The descriptor a preexec writes to belongs to a cgroup removed since
    (a sweep after SPAWN_GRACE): asking again makes it anew."""
    jc = JobControl(test_cgroup)
    jobid = (0, 5)
    jc.preexec(jobid)
    os.rmdir(os.path.join(test_cgroup, job_name(jobid)))
    p = sh_bg("exec sleep 300", preexec_fn=jc.preexec(jobid))
    try:
        assert cgroup_of(p.pid) == test_cgroup[len(MOUNT):] + "/job-0-5"
    finally:
        jc.kill_all(wait=5.0)
        p.wait(TIMEOUT)


# ---------------------------------------------------------------------------
# as lamtest, on a cgroup delegated as Delegate=yes does

USER_SCRIPT = r'''
import json, os, signal, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from lamd.jobs import cgroups
from lamd.service import setup_logging
setup_logging("info")
work = sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()  # the test has put us where it wants us
jc = cgroups.JobControl.setup()
out = {"mode": jc.mode, "base": jc.base, "own": cgroups.own_cgroup()}
def wait_file(p):
    for _ in range(1000):
        if os.path.exists(p) and open(p).read().strip():
            return int(open(p).read().split()[0])
        time.sleep(0.01)
    raise SystemExit("no " + p)
# job 1: daemonises a grandchild (fork, setsid, fork)
j1 = (0, 101)
p1 = subprocess.Popen(["/bin/sh", "-c", "setsid /bin/sh -c 'sleep 300 & echo $! > %s/gc1' & exec sleep 300" % work],
                      preexec_fn=jc.preexec(j1), stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
jc.started(p1.pid, j1)
out["gc1"] = wait_file(work + "/gc1")
out["p1"] = p1.pid
out["pids1"] = jc.pids(j1)
# job 2: its process leaves its job for the unit's cgroup (it may: same user)
j2 = (0, 102)
base = jc.base or ""
p2 = subprocess.Popen(["/bin/sh", "-c", "echo 0 > %s/cgroup.procs 2>/dev/null; echo $$ > %s/p2; exec sleep 300"
                       % (base, work)], preexec_fn=jc.preexec(j2), stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
jc.started(p2.pid, j2)
wait_file(work + "/p2")
out["p2"] = p2.pid
out["p2_cgroup"] = cgroups.own_cgroup(p2.pid)
out["killed1"] = jc.kill_job(j1, wait=5.0)
out["p1_status"] = p1.wait(10)
out["left"] = sorted(cgroups._subdirs(jc.base)) if jc.base else []
n = jc.kill_all(wait=5.0)
out["kill_all"] = n
out["p2_status"] = p2.wait(10)
out["self_cgroup"] = cgroups.own_cgroup()
print(json.dumps(out), flush=True)
sys.stdin.readline()
'''


def run_user_script(lam_session, lamd_pkg, move_to: str | None, before=lambda: None):
    s = lam_session
    script = s.work / "cg.py"
    script.write_text(USER_SCRIPT)
    script.chmod(0o644)
    p = s.popen([lamenv.SYSTEM_PYTHON, str(script), str(lamd_pkg), str(s.work)],
                stdin=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        if move_to is not None:
            cgroups._write(os.path.join(move_to, "cgroup.procs"), str(p.pid))
        before()
        p.stdin.write("go\n")
        p.stdin.flush()
        line = p.stdout.readline()
        assert line, p.stderr.read()
        out = json.loads(line)
        return p, out
    except BaseException:
        p.kill()
        raise


def delegate(path: str, pw) -> None:
    """What systemd does for Delegate=yes: the cgroup and the files that
    govern moves and sub-cgroups belong to the user."""
    for name in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        os.chown(os.path.join(path, name), pw.pw_uid, pw.pw_gid)


def test_delegated_cgroup_as_the_user(test_cgroup, lam_session, lamd_pkg, lam_user):
    """...and a process in the cgroup before the jobs process set up (lamd,
    by hand in a delegated scope) is not a job: kill_all leaves it."""
    delegate(test_cgroup, lam_user)
    parent = lam_session.popen(["sleep", "300"])
    p, out = run_user_script(lam_session, lamd_pkg, test_cgroup, before=lambda: cgroups._write(
        os.path.join(test_cgroup, "cgroup.procs"), str(parent.pid)))
    try:
        assert parent.poll() is None, "kill_all killed a process that was there before it"
        rel = test_cgroup[len(MOUNT):]
        assert out["mode"] == "cgroup" and out["base"] == test_cgroup, out
        assert out["own"] == out["self_cgroup"] == f"{rel}/jobs-daemon", out
        assert set(out["pids1"]) >= {out["p1"], out["gc1"]}, out
        assert out["killed1"] is True and out["p1_status"] == -signal.SIGKILL, out
        assert not running(out["gc1"]), "the daemonised grandchild outlived kill_job"
        assert out["p2_cgroup"] == rel, out  # it left its job...
        assert out["left"] == ["job-0-102", "jobs-daemon"], out
        assert out["kill_all"] == 1 and out["p2_status"] == -signal.SIGKILL, out  # ...and died
        assert cgroups._subdirs(test_cgroup) == ["jobs-daemon"]
        assert "each job in its own cgroup under " + test_cgroup in p.stderr.readline()
    finally:
        p.stdin.close()
        p.wait(TIMEOUT)


@pytest.mark.parametrize("where", ["root", "not-delegated"])
def test_no_delegation_falls_back_to_process_groups(where, test_cgroup, lam_session,
                                                    lamd_pkg):
    """In the root cgroup, or in a cgroup the user may not write (no
    delegation): one process group per job, said once in the log; a
    grandchild that stays in its group dies with the job; one that calls
    setsid() escapes it, as under the C lamd (killed here by the test)."""
    p, out = run_user_script(lam_session, lamd_pkg,
                             None if where == "root" else test_cgroup)
    try:
        assert out["mode"] == "pgroup" and out["base"] is None, out
        p.stdin.close()
        p.wait(TIMEOUT)
        err = p.stderr.read()
        why = "in the root cgroup" if where == "root" else \
            f"cgroup {test_cgroup[len(MOUNT):]} is not delegated to uid {lam_session.pw.pw_uid}"
        assert err.count("no cgroup of our own") == 1 and why in err, err
        assert out["p1_status"] == -signal.SIGKILL and out["p2_status"] == -signal.SIGKILL, out
        assert running(out["gc1"]), "setsid left the process group: the documented limit"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        try:
            os.kill(out["gc1"], signal.SIGKILL)
        except (OSError, NameError, KeyError):
            pass


# ---------------------------------------------------------------------------
# process groups


def test_process_group_jobs_and_a_reused_group_number(tmp_path):
    state = str(tmp_path / "groups")
    jc = JobControl(None, state_file=state)
    jobid = (0, 7)
    out = tmp_path / "gc"
    p = sh_bg("(sleep 300 & echo $! > %s); exec sleep 300" % out, preexec_fn=jc.preexec(jobid))
    jc.started(p.pid, jobid)
    gc = read_pid(out)
    other = sh_bg("exec sleep 300", process_group=0)
    try:
        assert os.getpgid(p.pid) == p.pid and os.getpgid(gc) == p.pid
        assert sorted(jc.pids(jobid)) == sorted([p.pid, gc])
        assert open(state).read().split()[0] == str(p.pid)
        # a second child joins the job's group
        q = sh_bg("exec sleep 300", preexec_fn=jc.preexec(jobid))
        jc.started(q.pid, jobid)
        assert os.getpgid(q.pid) == p.pid
        # a group whose number now belongs to another process is not ours
        fake = cgroups._Group(other.pid, 12345)
        jc._jobs[(0, 8)] = cgroups._Job((0, 8), groups=[fake])
        assert jc.signal_job((0, 8), signal.SIGKILL) == 0 and other.poll() is None
        assert jc.kill_job(jobid, wait=5.0)
        assert p.wait(TIMEOUT) == q.wait(TIMEOUT) == -signal.SIGKILL
        assert wait_until(lambda: not running(gc), TIMEOUT)
        assert other.poll() is None
        jc._forget((0, 8))
        assert not os.path.exists(state)  # no job left: no record
    finally:
        for x in (p, other):
            if x.poll() is None:
                x.kill()
                x.wait()


def test_kill_recorded_kills_what_a_dead_jobs_process_left(tmp_path):
    state = str(tmp_path / "groups")
    jc = JobControl(None, state_file=state)
    p = sh_bg("exec sleep 300", preexec_fn=jc.preexec((0, 1)))
    jc.started(p.pid, (0, 1))
    other = sh_bg("exec sleep 300", process_group=0)
    with open(state, "a") as f:  # a group number reused since: left alone
        f.write(f"{other.pid} 1\n")
    try:
        assert cgroups.kill_recorded(state) == 1
        assert p.wait(TIMEOUT) == -signal.SIGKILL and other.poll() is None
        assert not os.path.exists(state)
    finally:
        for x in (p, other):
            if x.poll() is None:
                x.kill()
                x.wait()


# ---------------------------------------------------------------------------
# small pieces of the jobs process


def test_session_environment():
    env = session_environment("/x/lam-u@h", {}, "u", "h")
    assert env == {"LAM_MPI_SESSION_PREFIX": "/x", "LAM_MPI_SESSION_SUFFIX": None,
                   "LAM_MPI_SOCKET_SUFFIX": None}
    env = session_environment("/x/y/lam-u@h-s-1/", {}, "u", "h")
    assert env == {"LAM_MPI_SESSION_PREFIX": "/x/y", "LAM_MPI_SESSION_SUFFIX": "s-1"}


def test_read_env_file(tmp_path):
    f = tmp_path / "jobs.env"
    f.write_text("# comment\n\nA=1\nexport B='two words'\nC=\"x=y\"\nnot a line\n D = 4\n")
    assert read_env_file(str(f)) == {"A": "1", "B": "two words", "C": "x=y"}
    assert read_env_file(str(tmp_path / "missing")) == {}


def test_jobs_process_takes_no_module_from_its_working_directory(tmp_path):
    """``python3 -m`` puts the working directory first on sys.path: the jobs
    process the daemon starts (``jobs_argv``) and the one
    lamd-jobs@.service starts (in the user's home) must not take a user's
    ``argparse.py`` there for the standard library's."""
    (tmp_path / "argparse.py").write_text("raise ImportError(\"the user's argparse.py\")\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(argv: list[str], **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([*argv, "--help"], cwd=tmp_path, env={**env, **extra},
                              capture_output=True, text=True, timeout=60)

    argv = jobs_argv(str(tmp_path), "warning")
    cp = run(argv)
    assert cp.returncode == 0 and "--session-dir" in cp.stdout, cp.stderr
    package_dir = argv[4]
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "lamd-jobs@.service").read_text()
    start = re.search(r"^ExecStart=(.*) lamd\.jobs ", unit, re.M)
    assert start, unit
    cp = run([*start.group(1).split(), "lamd.jobs"], PYTHONPATH=package_dir)
    assert cp.returncode == 0 and "--session-dir" in cp.stdout, cp.stderr
    # what the two avoid (the test can fail): -m alone takes the user's module
    cp = run([sys.executable, "-m", "lamd.jobs"], PYTHONPATH=package_dir)
    assert cp.returncode != 0 and "the user's argparse.py" in cp.stderr, cp


def test_jobs_child_restarts_then_gives_up():
    loop = EventLoop()
    gave_up = []
    try:
        jc = JobsChild(loop, ["/bin/false"], on_give_up=lambda: gave_up.append(1),
                       limit=3, window=60.0, delay=0.01)
        jc.start()
        deadline = time.monotonic() + TIMEOUT
        while not gave_up and time.monotonic() < deadline:
            loop.poll(0.05)
            loop.run_timers(time.monotonic())
        assert gave_up == [1] and len(jc.starts) == 3 and jc.gave_up
        assert jc.stop() == 1
    finally:
        loop.close()


# ---------------------------------------------------------------------------
# lamd by hand, as lamtest


def jobs_children(d: lamenv.PyDaemon) -> list[int]:
    """The daemon's children running the jobs process."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = Path(f"/proc/{name}/stat").read_text()
                cmd = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            fields = st.rsplit(")", 1)[1].split()
            if int(fields[1]) == d.pid and fields[0] != "Z" and cmd.startswith(b"lamd-jobs: "):
                out.append(int(name))
    return out


def ps_line(pid: int) -> str:
    cp = subprocess.run(["ps", "-o", "pid=,ppid=,pgid=,user=,args=", "-p", str(pid)],
                        capture_output=True, text=True, timeout=10)
    return cp.stdout.strip()


def killfile(s: lamenv.Session) -> list[int]:
    return lamenv.read_killfile(s.killfile)


def wait_jobs_process(d: lamenv.PyDaemon, not_pid: int | None = None) -> int:
    """The jobs process, attached: its five services and its node-id watch
    (``nodeid``: the router's RQWAITNODE) in the kill file."""
    found: list[int] = []

    def attached() -> bool:
        found[:] = [p for p in jobs_children(d) if p != not_pid]
        return len(found) == 1 and killfile(d.s)[1:].count(found[0]) == JOBS_CONNECTIONS

    assert wait_until(attached, TIMEOUT), (found, killfile(d.s), d.log())
    return found[0]


# A job service for the test: iod (the stub does nothing a test can see)
# replaced by one that starts a job through the cgroup API, as kenyad will.
FAKE_IOD = '''
import os, subprocess
from lamd.jobs import cgroups

async def iod(k):
    jobs = k.config["jobs"]
    assert jobs is cgroups.get()
    work = os.environ["LAMD_TEST_WORK"]
    n = len([f for f in os.listdir(work) if f.endswith(".pid")])
    jobid = (0, 1000 + n)
    p = subprocess.Popen(
        ["/bin/sh", "-c", "env > %s/job-%d.env; (sleep 300 & echo $! > %s/job-%d.gc); "
         "echo $$ > %s/job-%d.pid; exec sleep 300" % (work, n, work, n, work, n)],
        preexec_fn=jobs.preexec(jobid), stdin=subprocess.DEVNULL)
    jobs.started(p.pid, jobid)
    w = k.watch_child(p.pid)
    await k.next_event(w)
'''


@pytest.fixture
def fake_pkg(lamd_pkg, tmp_path_factory):
    top = Path(tempfile.mkdtemp(prefix="lamd-pkg-fake-", dir="/tmp"))
    top.chmod(0o755)
    shutil.copytree(Path(lamd_pkg) / "lamd", top / "lamd")
    (top / "lamd" / "jobs" / "iod.py").write_text(FAKE_IOD)
    for dirpath, dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def lamd_by_hand(lam_session, request):
    started: list[lamenv.PyDaemon] = []

    def start(pkg, *args: str, env: dict | None = None) -> lamenv.PyDaemon:
        d = lamenv.PyDaemon(lam_session, pkg, ["--log-level", "info", *args], env=env)
        started.append(lamenv.show_log_on_failure(request, d))
        d.start()
        return d

    yield start
    for d in started:
        d.stop()
    lamenv.fail_on_stop_problems(request, [p for d in started for p in d.stop_problems])


def test_lamd_starts_the_jobs_process_and_lamhalt_ends_both(lamd_by_hand, lamd_pkg):
    d = lamd_by_hand(lamd_pkg)
    jp = wait_jobs_process(d)
    line = ps_line(jp)
    pid, ppid, pgid, user, args = line.split(None, 4)
    assert (int(ppid), user, args) == (d.pid, lamenv.USER, "lamd-jobs: lamtest"), line
    assert int(pgid) == jp != os.getpgid(d.pid)  # its own group: Ctrl-C reaches the kernel
    log = d.log()
    assert "boot table: internal router, bufferd, dli_inet, dlo_inet, echod, bforward, " \
           "traced, died, haltd, versiond\n" in log, log
    assert f"jobs: started the jobs process, pid {jp}" in log
    assert wait_until(lambda: "jobs: serving flatd, loadd, kenyad, filed, iod" in d.log(),
                      TIMEOUT), d.log()
    assert "no cgroup of our own (in the root cgroup)" in d.log()
    d.expect_exit = True
    cp = d.s.run(["lamhalt"], timeout=30)
    assert cp.returncode == 0, show(cp)
    assert wait_until(lambda: d.proc.poll() is not None, TIMEOUT), d.log()
    assert d.proc.returncode == 0 and not running(jp), d.log()
    assert "host: stopping" in d.log()


def test_kenyad_takes_the_argv_from_flatd_in_its_process(lamd_by_hand, lamd_pkg):
    """kenyad and flatd share the jobs process: kenyad takes a job's argv
    and environment from flatd by a call, not by an FLQFORGET through the
    kernel and back (two trips of each request; docs/profile.md measures
    lamexec). The program gets its arguments as given. Ours alone: in the
    C lamd kenyad and flatd are internal processes of one daemon and this
    request never leaves it; the check reads our daemon's debug log."""
    d = lamd_by_hand(lamd_pkg, "--log-level", "debug")
    wait_jobs_process(d)
    cp = d.s.run(["timeout", "-k", "1", "20", "lamexec", "-np", "1", "/bin/echo", "a b", "c"],
                 timeout=30)
    assert cp.returncode == 0 and cp.stdout == "a b c\n", show(cp)
    log = d.log()
    assert "flatd: request 1 tag" in log, log  # rflatv's FLQLOAD
    assert "flatd: request 3 tag" not in log, log  # no FLQFORGET over the kernel


def test_jobs_get_the_session_and_die_with_the_kernel(lamd_by_hand, fake_pkg, lam_session):
    """A service module dropped into lamd/jobs/ is what the jobs process
    serves; what it starts through the cgroup API sees the session in its
    environment (LAM_MPI_SESSION_PREFIX: mpirun never exports it), runs in
    a process group of its own, and ends with the kernel (SIGTERM to lamd)."""
    s = lam_session
    work = s.work
    # lamd told its session by option, its environment pointing elsewhere:
    # the jobs must be told the session by the jobs process
    d = lamd_by_hand(fake_pkg, "-sessionprefix", str(s.prefix),
                     env={"LAMD_TEST_WORK": str(work), "LAM_MPI_SESSION_PREFIX": "/nonexistent"})
    jp = wait_jobs_process(d)
    stubs = [ln for ln in d.log().splitlines() if "not implemented yet" in ln]
    assert all("iod" not in ln for ln in stubs), stubs
    job = read_pid(work / "job-0.pid")
    gc = read_pid(work / "job-0.gc")
    env = dict(line.split("=", 1) for line in (work / "job-0.env").read_text().splitlines()
               if "=" in line)
    assert env["LAM_MPI_SESSION_PREFIX"] == str(s.prefix)
    assert "LAM_MPI_SESSION_SUFFIX" not in env
    assert os.getpgid(job) == job != os.getpgid(jp) and os.getpgid(gc) == job
    assert os.path.exists(s.session_dir / PGROUPS_FILE)
    d.expect_exit = True
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(TIMEOUT) == 0, d.log()
    assert not running(jp) and not running(job) and not running(gc), d.log()
    assert not s.session_dir.exists()


def test_killed_jobs_process_is_replaced_and_its_jobs_killed(lamd_by_hand, fake_pkg,
                                                              lam_session):
    work = lam_session.work
    d = lamd_by_hand(fake_pkg, env={"LAMD_TEST_WORK": str(work)})
    jp = wait_jobs_process(d)
    job, gc = read_pid(work / "job-0.pid"), read_pid(work / "job-0.gc")
    os.kill(jp, signal.SIGKILL)
    jp2 = wait_jobs_process(d, not_pid=jp)
    assert wait_until(lambda: not running(job) and not running(gc), TIMEOUT), \
        "the new jobs process left its predecessor's job running"
    assert "jobs: the jobs process ended (signal 9) while the kernel runs" in d.log()
    assert "killed 1 process groups left by a previous jobs process" in d.log()
    job2 = read_pid(work / "job-1.pid")
    assert running(job2) and jp2 != jp
    cp = d.s.run(["lamhalt"], timeout=30)
    d.expect_exit = True
    assert cp.returncode == 0, show(cp)
    assert wait_until(lambda: d.proc.poll() is not None, TIMEOUT)
    assert not running(job2) and not running(jp2)


def test_no_jobs_is_the_single_process_of_old(lamd_by_hand, lamd_pkg):
    d = lamd_by_hand(lamd_pkg, "--no-jobs")
    time.sleep(0.5)
    assert jobs_children(d) == [] and killfile(d.s) == [d.pid]
    assert "boot table: internal router, bufferd, dli_inet, dlo_inet, echod, bforward, " \
           "flatd, loadd, kenyad, filed, traced, iod, died, haltd, versiond\n" in d.log()
    # lamexec meets kenyad's stub: service unavailable at once
    cp = d.s.run(["timeout", "-k", "1", "20", "lamexec", "-np", "1", "/bin/true"], timeout=30)
    assert cp.returncode != 0 and "unavailable" in (cp.stdout + cp.stderr), show(cp)


def test_jobs_process_waits_for_a_kernel(lam_session, lamd_pkg, lamd_by_hand):
    s = lam_session
    env = dict(s.env, PYTHONPATH=str(lamd_pkg), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.monotonic()
    cp = s.run([lamenv.SYSTEM_PYTHON, "-m", "lamd.jobs", "--wait", "0.5"], env=env, timeout=20)
    took = time.monotonic() - t0
    assert cp.returncode == 1 and "no kernel at" in cp.stderr and "ENOKERNEL" in cp.stderr, show(cp)
    assert took < 10
    # started first, it attaches once a kernel (with the rows left out) is up
    log = open(s.work / "jobs.log", "w")
    jp = s.popen([lamenv.SYSTEM_PYTHON, "-m", "lamd.jobs", "--wait", "20"], env=env,
                 stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        assert jp.poll() is None
        d = lamd_by_hand(lamd_pkg, "--jobs=external")
        assert wait_until(lambda: killfile(s)[1:].count(jp.pid) == JOBS_CONNECTIONS, TIMEOUT), \
            (s.work / "jobs.log").read_text()
        assert "jobs: flatd, loadd, kenyad, filed, iod expected from the jobs process" \
            in d.log(), d.log()
        d.expect_exit = True
        assert s.run(["lamhalt"], timeout=30).returncode == 0
        assert jp.wait(TIMEOUT) == 0
    finally:
        if jp.poll() is None:
            jp.kill()
            jp.wait()
        log.close()


def test_jobs_process_for_a_running_kernel_only(lam_session, lamd_pkg):
    """``--for-running-kernel`` (what lamd and lamd-jobs@.service pass): the
    jobs process connects only while the session's kill file is there. A
    kernel halted before its jobs process attached (``lamhalt`` right after
    a socket-activated start) is not started again by that process's
    connect: it exits 0 without connecting (a listening socket here, as
    systemd's, gets no connection), and one that waits for the kernel's
    socket stops waiting once the kill file goes. Without the option it
    waits for a kernel (``test_jobs_process_waits_for_a_kernel``)."""
    s = lam_session
    env = dict(s.env, PYTHONPATH=str(lamd_pkg), PYTHONDONTWRITEBYTECODE="1")
    s.session_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(s.session_dir, s.pw.pw_uid, s.pw.pw_gid)
    import select
    import socket

    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lst.bind(str(s.socket))
        os.chmod(s.socket, 0o777)
        lst.listen(8)
        argv = [lamenv.SYSTEM_PYTHON, "-m", "lamd.jobs", "--for-running-kernel", "--wait", "20"]
        t0 = time.monotonic()
        cp = s.run(argv, env=env, timeout=30)
        assert cp.returncode == 0, show(cp)
        assert "the kernel ended before this process attached" in cp.stderr, show(cp)
        assert time.monotonic() - t0 < 10
        assert select.select([lst], [], [], 0.2)[0] == [], "it connected"
        lst.close()
        s.socket.unlink()
        # a kill file, no socket: it waits, and stops when the kill file goes
        s.killfile.write_text(f"{os.getpid()}\n")
        log = open(s.work / "jobs.log", "w")
        jp = s.popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.0)
            assert jp.poll() is None, (s.work / "jobs.log").read_text()
            s.killfile.unlink()
            assert jp.wait(TIMEOUT) == 0, (s.work / "jobs.log").read_text()
            assert "ended before this process attached" in (s.work / "jobs.log").read_text()
        finally:
            if jp.poll() is None:
                jp.kill()
                jp.wait()
            log.close()
    finally:
        lst.close()


@pytest.mark.parametrize("end", ["lamhalt", "SIGTERM", "SIGKILL"])
def test_jobs_process_status_tells_a_stop_from_a_lost_kernel(lam_session, lamd_pkg,
                                                             lamd_by_hand, end):
    """A jobs process of --jobs=external (as lamd-jobs@.service runs it)
    exits 0 when the kernel stops (lamhalt, SIGTERM: the kernel hangs it up
    before its connections close, lamhalt's clients-see-EOF-first grace
    included) and 1 when the kernel is lost without a stop (SIGKILL by
    hand; under systemd a crash state the successor refused): then the
    unit's Restart=on-failure attaches a new one to the kernel serving now."""
    s = lam_session
    env = dict(s.env, PYTHONPATH=str(lamd_pkg), PYTHONDONTWRITEBYTECODE="1")
    d = lamd_by_hand(lamd_pkg, "--jobs=external")
    log = open(s.work / "jobs.log", "w")
    jp = s.popen([lamenv.SYSTEM_PYTHON, "-m", "lamd.jobs", "--wait", "20"], env=env,
                 stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: killfile(s)[1:].count(jp.pid) == JOBS_CONNECTIONS, TIMEOUT), \
            (s.work / "jobs.log").read_text()
        d.expect_exit = True
        if end == "lamhalt":
            assert s.run(["lamhalt"], timeout=30).returncode == 0
        else:
            os.kill(d.pid, getattr(signal, end))
        assert jp.wait(TIMEOUT) == (1 if end == "SIGKILL" else 0), \
            (s.work / "jobs.log").read_text()
        if end == "SIGKILL":  # what a killed daemon leaves is the test's to clear
            d.proc.wait(TIMEOUT)
            shutil.rmtree(s.session_dir)
            d.stop()
            assert d.stop_problems == ["exit status -9"], d.stop_problems
            d.stop_problems.clear()
    finally:
        if jp.poll() is None:
            jp.kill()
            jp.wait()
        log.close()


def test_a_jobs_process_that_keeps_dying_is_given_up_for_the_stubs(lamd_by_hand, lamd_pkg):
    """Five starts in a minute, then the kernel boots the ESERVICE stubs for
    the job rows: lamexec fails at once instead of waiting for kenyad."""
    d = lamd_by_hand(lamd_pkg)
    jp = None
    for _ in range(5):
        jp = wait_jobs_process(d, not_pid=jp)
        os.kill(jp, signal.SIGKILL)
    assert wait_until(lambda: "giving up" in d.log(), TIMEOUT), d.log()
    assert "5 starts in 60 s: giving up; kenyad, filed, flatd, loadd and iod now answer " \
           "ESERVICE" in d.log()
    time.sleep(RESTART_DELAY * 1.5)  # nothing more is started
    assert jobs_children(d) == [] and killfile(d.s) == [d.pid]
    cp = d.s.run(["timeout", "-k", "1", "20", "lamexec", "-np", "1", "/bin/true"], timeout=30)
    assert cp.returncode != 0 and "service unavailable" in cp.stderr, show(cp)
