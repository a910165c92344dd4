"""Issue 10, side by side: MPI programs and plain programs run through the
stock ``mpirun``/``lamexec`` on the C lamd (``daemon[c]``) and on ours
(``daemon[py]``), as user ``lamtest``.

The programs are ``tests/c/mpi/*.c`` (built once with ``mpicc.lam``; each
file's header says what it prints).  Every expectation here was taken from
the C lamd (LAM 7.1.4, Debian's lam-runtime): the tools' exact messages and
exit statuses, which are what a LAM user sees and scripts against.  The
node's address in mpirun's "failed on node n0 (ADDR)" lines is 127.0.0.1 on
both (the C lamd's from the default boot schema's ``localhost``, ours by
hand: lamd.iprocs.LOCALHOST); the tests take it from ``lamnodes -i -c`` on
the daemon under test.

What LAM does, for the record (all on the C lamd):

* stdout and stderr of every rank reach mpirun's own descriptors directly
  (RTF_PFDIO): separate and complete.  An empty argument is dropped (argv
  travels to the daemon joined with newlines); spaces and quotes survive.
* a rank's exit status after MPI_Finalize is not seen (kenyad reports an MPI
  process at MPI_Finalize's detach): rc 0.  Before MPI_Finalize (or without
  it) a non-zero status ends the job: mpirun prints its "nonzero exit code"
  help naming the first process it heard of and exits with that status.
* MPI_Abort(comm, code): LAM takes ``code >> 17`` as the exit status when
  the low byte is non-zero (5 exits 0, ``(5 << 17) + 1`` exits 5); the other
  ranks are doomed (SIGUDIE) and exit 1, and mpirun reports whichever exit
  notice came first (status 5 or 1, a race).
* no MPI_Init: "did not invoke MPI_INIT" help, rc 252.  Missing program:
  ``mpirun: cannot start PROG on n0 (o): No such file or directory``, rc 2;
  not executable: ``...: Permission denied``, rc 13 (lamexec prints the same,
  ``mpirun:`` prefix included).  ``-wd`` to a directory the user cannot
  enter: each child prints ``kcreatev: chdir(DIR): ERROR`` and never calls
  MPI_Init (rc 252).
* ``lamclean`` during a job: the ranks exit with status 1 (SIGUDIE), mpirun
  rc 1.  SIGINT to mpirun: the ranks are killed with SIGTERM, "due to signal
  15", rc 15.  ``lamhalt``: the job goes with the daemon, mpirun exits 215
  (ENOKERNEL) silently.  ``-nw``: mpirun returns 0 once the ranks are in
  MPI_Init; the ranks go on writing to its stdout.
* names (MPI_Publish_name & co., kept by traced): a second publish of a
  name fails with MPI_ERR_SERVICE, a lookup of an unknown name with
  MPI_ERR_NAME and an unpublish of one with MPI_ERR_SERVICE; a job's
  MPI_Finalize unpublishes its names; ``lamclean`` sweeps every name and
  every trace.
* ``-ssi rpi lamd`` (every message through the daemon): both daemons carry
  ping-pong up to 4 MiB, these collectives and windowed traffic of 8 KiB
  and of 1 MiB messages; LAM's lamd RPI itself breaks when a job's
  MPI_Isends grow past 8 KiB after a first size (a rank fails with
  ``MPI_...: internal MPI error: Bad address`` on either daemon); the C
  kernel then hangs (only tkill ends it), ours serves on
  (test_rpi_lamd_large_messages).

Every tool runs as lamtest under ``timeout -k`` (or, where the test needs
the tool's own pid, under a deadline of its own), output to files; each
test kills what it started, and the ``jobs`` fixture then kills, by pid,
whatever of this session is still running (job programs, tools).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamd.jobs.wire import RTF_IO, RTF_KENYA_CHILD, RTF_MPIRUN, RTF_PFDIO, RTF_WAIT

from . import lamenv

HERE = Path(__file__).resolve().parent
MPI_SRC = HERE / "c" / "mpi"
PROGRAMS = ("hello", "args", "env", "cwd", "stdin", "pingpong", "bandwidth", "collectives",
            "exitcode", "abort", "noinit", "nofinalize", "sleeper", "pubname")
#: LAM tools whose leftovers a test must not leave behind
TOOLS = {"mpirun", "lamexec", "mpitask", "lamclean", "lamtrace", "lamhalt", "lamnodes", "tping"}
#: powers of 4 from 1 B to 4 MiB, and 0 B (pingpong's default sizes)
PP_SIZES = [0] + [4 ** i for i in range(12)]
ENOKERNEL_EXIT = (0x400 + 215) & 0xFF
RPIS = {"default": [], "tcp": ["-ssi", "rpi", "tcp"], "lamd": ["-ssi", "rpi", "lamd"]}

RULE = "-" * 77 + "\n"
NOINIT_HELP = RULE + """\
It seems that [at least] one of the processes that was started with
mpirun did not invoke MPI_INIT before quitting (it is possible that
more than one process did not invoke MPI_INIT -- mpirun was only
notified of the first one, which was on node n0).

mpirun can *only* be used with MPI programs (i.e., programs that
invoke MPI_INIT and MPI_FINALIZE).  You can use the "lamexec" program
to run non-MPI programs over the lambooted nodes.
""" + RULE
LAMTRACE_NONE_HELP = RULE + """\
lamtrace was unable to find any MPI traces.

This may mean that there is a problem with the lam daemon or lamtrace.
More than likely, however, it means that tracing was not enabled
during any of the MPI jobs run since the last lamboot.  In order to
enable tracing, you should specify the '-t' flag to mpirun.

""" + RULE
#: tests/c/mpi/pubname.c pair: MPI_ERR_NAME (26) where a name is not
#: published, MPI_ERR_SERVICE (25) for a second publish, in LAM's mpi.h
MPI_ERR_SERVICE, MPI_ERR_NAME = 25, 26
#: what a one-rank mpirun -t of pubname has stored in traced by the time it
#: has published (lamtrace -k of every list, the name not counted)
TRACED_RUN_BYTES = 584
#: where records of the MPI library's lists start in it, on the C lamd
TRACED_RUN_MARKS = {b"MPI_COMM_WORLD": 32, b"MPI_COMM_SELF": 196, b"pubname": 488, b"LAM6": 560}
PUBNAME_PAIR = f"""\
PUBLISH ocean class=0
LOOKUP ocean class=0 port=port-of-ocean
PUBLISH-AGAIN ocean class={MPI_ERR_SERVICE}
UNPUBLISH ocean class=0
LOOKUP-GONE ocean class={MPI_ERR_NAME}
UNPUBLISH-GONE ocean class={MPI_ERR_SERVICE}
"""
_SPIN = "\b" * 10
LAMCLEAN_V = "".join(f"{what},           {_SPIN}n0 (o)... {_SPIN}done      \n" for what in (
    "killing processes", "closing files", "sweeping traces", "cleaning up registered objects",
    "sweeping messages"))
#: the flags a child of mpirun finds in TROLLIUSRTF (mpirun's PQCREATE flags
#: plus "started by kenyad"); 102418 on the C lamd
MPIRUN_CHILD_RTF = RTF_MPIRUN | RTF_WAIT | RTF_IO | RTF_PFDIO | RTF_KENYA_CHILD


def failed_help(pid: int, addr: str, status: int | None = None, sig: int | None = None) -> str:
    """mpirun's help text for a process that ended badly."""
    how = f"with exit status {status}" if sig is None else f"due to signal {sig}"
    return RULE + f"""\
One of the processes started by mpirun has exited with a nonzero exit
code.  This typically indicates that the process finished in error.
If your process did not finish in error, be sure to include a "return
0" or "exit(0)" in your C code before exiting the application.

PID {pid} failed on node n0 ({addr}) {how}.
""" + RULE


def fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


# ---------------------------------------------------------------------------
# programs, runner

@pytest.fixture(scope="module")
def progs():
    """tests/c/mpi/*.c built with mpicc.lam into a directory lamtest can read."""
    if shutil.which("mpicc.lam") is None:
        pytest.fail("mpicc.lam missing (lam4-dev): run packaging/setup.sh", pytrace=False)
    out = Path(tempfile.mkdtemp(prefix="lj", dir="/tmp"))
    out.chmod(0o755)
    try:
        exes = {}
        for name in PROGRAMS:
            exe = out / name
            cp = subprocess.run(["mpicc.lam", "-O2", "-Wall", "-Werror", "-o", str(exe),
                                 str(MPI_SRC / f"{name}.c")],
                                capture_output=True, text=True, timeout=120, cwd=str(out))
            if cp.returncode != 0:
                pytest.fail(f"mpicc.lam {name}.c failed (rc={cp.returncode}):\n"
                            f"{cp.stdout}{cp.stderr}")
            exe.chmod(0o755)
            exes[name] = str(exe)
        yield exes
    finally:
        shutil.rmtree(out, ignore_errors=True)


@dataclass
class Result:
    argv: list
    rc: int
    out: str
    err: str
    took: float
    outp: Path | None = None

    def __str__(self) -> str:
        return (f"$ {' '.join(map(str, self.argv))}  -> rc={self.rc} in {self.took:.2f} s\n"
                f"--- stdout\n{self.out[-4000:]}--- stderr\n{self.err[-4000:]}")


class Job:
    """A tool started in the background as lamtest, its output in files."""

    def __init__(self, runner: Runner, argv: list, proc: subprocess.Popen, out: Path,
                 err: Path):
        self.runner, self.argv, self.proc = runner, argv, proc
        self.outp, self.errp = out, err
        self.t0 = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.outp.read_text(errors="replace")

    def err(self) -> str:
        return self.errp.read_text(errors="replace")

    def show(self) -> str:
        return (f"$ {' '.join(map(str, self.argv))} (pid {self.pid}, rc {self.proc.poll()})\n"
                f"--- stdout\n{self.out()[-4000:]}--- stderr\n{self.err()[-4000:]}")

    def wait(self, timeout: float = 60) -> Result:
        try:
            rc = self.runner.s._wait_reaping(self.proc, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"still running after {timeout} s:\n{self.show()}")
        return Result(self.argv, rc, self.out(), self.err(), time.monotonic() - self.t0)

    def wait_lines(self, pattern: str, n: int, timeout: float = 30) -> list[re.Match]:
        """Wait for *n* stdout lines matching *pattern*; fails at once if the
        tool exits first (so that a refused job fails fast)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            ms = [m for m in map(rx.match, self.out().splitlines()) if m]
            if len(ms) >= n:
                return ms
            if self.proc.poll() is not None:
                ms = [m for m in map(rx.match, self.out().splitlines()) if m]
                if len(ms) >= n:
                    return ms
                pytest.fail(f"exited before {n} lines matching {pattern!r}:\n{self.show()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {n} lines matching {pattern!r} within {timeout} s:\n"
                            f"{self.show()}")
            time.sleep(0.02)


class Runner:
    """Runs LAM tools and the test programs for one test, on one daemon."""

    def __init__(self, daemon: lamenv.Daemon, progs: dict[str, str]):
        self.d = daemon
        self.s: lamenv.Session = daemon.s
        self.progs = progs
        self.progdir = str(Path(progs["hello"]).parent)
        self.tmp = Path(tempfile.mkdtemp(prefix="lamd-jobs-", dir="/tmp"))
        self.jobs: list[Job] = []
        self._n = 0

    def prog(self, name: str) -> str:
        return self.progs[name]

    # -- running ------------------------------------------------------------

    def _files(self) -> tuple[Path, Path]:
        self._n += 1
        return self.tmp / f"{self._n}.out", self.tmp / f"{self._n}.err"

    def _kw(self, cwd, env) -> dict:
        kw = self.s._user_kw(dict(self.s.env, **(env or {})))
        if cwd is not None:
            kw["cwd"] = str(cwd)
        return kw

    def run(self, argv: list, *, stdin: Path | None = None, cwd=None, env: dict | None = None,
            timeout: float = 60) -> Result:
        """``timeout -k 5 TIMEOUT argv`` as lamtest, to the end."""
        argv = [str(a) for a in argv]
        outp, errp = self._files()
        t0 = time.monotonic()
        with open(outp, "w") as o, open(errp, "w") as e, \
                open(stdin if stdin else os.devnull, "rb") as i:
            p = subprocess.Popen(["timeout", "-k", "5", str(timeout), *argv], stdin=i,
                                 stdout=o, stderr=e, **self._kw(cwd, env))
        try:
            rc = self.s._wait_reaping(p, timeout + 15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            pytest.fail(f"{argv} outlived timeout -k 5 {timeout}")
        return Result(argv, rc, outp.read_text(errors="replace"),
                      errp.read_text(errors="replace"), time.monotonic() - t0, outp)

    def start(self, argv: list, *, stdin: Path | None = None, cwd=None,
              env: dict | None = None) -> Job:
        """Start a tool in the background (no timeout wrapper: the test
        needs its pid); :meth:`cleanup` kills it."""
        argv = [str(a) for a in argv]
        outp, errp = self._files()
        with open(outp, "w") as o, open(errp, "w") as e, \
                open(stdin if stdin else os.devnull, "rb") as i:
            p = subprocess.Popen(argv, stdin=i, stdout=o, stderr=e, **self._kw(cwd, env))
        job = Job(self, argv, p, outp, errp)
        self.jobs.append(job)
        # reaped with the session's own: an unreaped tool is a zombie that
        # answers kill(pid, 0), and lamhalt's tkill waits for it
        self.s._procs.append(p)
        return job

    def mpirun(self, args: list, **kw) -> Result:
        return self.run(["mpirun", *args], **kw)

    def gofile(self) -> Path:
        """A path the sleeper program waits for (touch it to let jobs go)."""
        d = self.s.work / "go"
        if not d.exists():
            d.mkdir()
            os.chown(d, self.s.pw.pw_uid, self.s.pw.pw_gid)
        self._n += 1
        return d / f"go{self._n}"

    def node_addr(self) -> str:
        """n0's address as the daemon reports it (lamnodes -i -c)."""
        res = self.run(["lamnodes", "-i", "-c", "n0"], timeout=20)
        m = re.match(r"n0\t([^\s:]+)", res.out)
        assert res.rc == 0 and m, res
        return m.group(1)

    # -- what is left -------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Live processes of this test: lamtest's processes running one of
        the test programs, or a LAM tool in this session (its
        LAM_MPI_SESSION_PREFIX).  ``ps -u lamtest`` with a filter, since other
        sessions of the same user may be running."""
        uid = self.s.pw.pw_uid
        prefix = f"LAM_MPI_SESSION_PREFIX={self.s.prefix}".encode()
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.stat(f"/proc/{d}").st_uid != uid or not lamenv.running(int(d)):
                    continue
                comm = Path(f"/proc/{d}/comm").read_text().strip()
                try:
                    exe = os.readlink(f"/proc/{d}/exe")
                except OSError:
                    exe = ""
                mine = exe.startswith(self.progdir + "/")
                if not mine and comm in TOOLS:
                    mine = prefix in Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
                if mine:
                    args = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ")
                    found.append(f"{d} {args.decode(errors='replace').strip()}")
            except OSError:
                continue
        return found

    def wait_no_leftovers(self, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            self.s.reap()
            left = self.leftovers()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)

    def cleanup(self) -> None:
        for j in self.jobs:
            if j.proc.poll() is None:
                j.proc.kill()
            try:
                j.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for line in self.leftovers():
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def abandon_hung_c_daemon(self) -> None:
        """The C lamd's kernel hung (its known -ssi rpi lamd failure): kill
        the job and the tools by pid, then LAM's own tkill ends the daemon
        and removes the session directory (lamhalt would hang)."""
        assert self.d.kind == "c"
        self.cleanup()
        self.tmp.mkdir(exist_ok=True)
        self.run(["tkill"], timeout=20)
        self.d.expect_exit = True
        assert self.d.wait_gone(10), "tkill did not end the hung C lamd"


@pytest.fixture
def jobs(daemon, progs):
    """A Runner on the daemon under test."""
    r = Runner(daemon, progs)
    try:
        yield r
    finally:
        r.cleanup()


def assert_clean(jobs: Runner, timeout: float = 10) -> None:
    left = jobs.wait_no_leftovers(timeout)
    assert not left, f"still running {timeout} s after the job ended:\n" + "\n".join(left)


def assert_serving(jobs: Runner) -> None:
    """The daemon still runs jobs: a fresh mpirun works."""
    res = jobs.mpirun(["-np", "2", jobs.prog("hello")], timeout=30)
    assert res.rc == 0 and sorted(re.findall(r"^OUT rank=(\d) size=2 ", res.out, re.M)) == \
        ["0", "1"], res


# ---------------------------------------------------------------------------
# 1. stdio, arguments, environment, working directory

def test_stdout_stderr_separate_and_complete(jobs):
    """2 ranks x 2,000 lines of 140 bytes on each stream: every line reaches
    mpirun's stdout or stderr, on the right one, whole and in order per rank."""
    n = 2000
    res = jobs.mpirun(["-np", "2", jobs.prog("hello"), n], timeout=60)
    assert res.rc == 0, res
    pad = " " + "x" * 100
    for stream, key in ((res.out, "OUT"), (res.err, "ERR")):
        lines = stream.splitlines()
        assert len(lines) == 2 * n, (key, len(lines), res)
        for rank in (0, 1):
            mine = [ln for ln in lines if ln.startswith(f"{key} rank={rank} ")]
            pid = re.match(rf"{key} rank={rank} size=2 pid=(\d+) ", mine[0]).group(1)
            assert mine == [f"{key} rank={rank} size=2 pid={pid} line={i}{pad}"
                            for i in range(n)], (key, rank)
    assert_clean(jobs)


def test_lamexec_basics(jobs):
    """lamexec: hostname and /bin/echo on two processes; a failing program's
    status line and exit code (``PID (n0) exited with status 3``, rc 3;
    ``... due to signal 15``, rc 255); stdin to a single process."""
    host = lamenv.socket.gethostname()
    res = jobs.run(["lamexec", "-np", "2", "hostname"], timeout=30)
    assert (res.rc, res.out, res.err) == (0, f"{host}\n{host}\n", ""), res
    res = jobs.run(["lamexec", "-np", "2", "/bin/echo", "a  b", "c"], timeout=30)
    assert (res.rc, res.out, res.err) == (0, "a  b c\na  b c\n", ""), res
    res = jobs.run(["lamexec", "-np", "1", "/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
                   timeout=30)
    assert res.rc == 3 and res.err == "err\n", res
    assert re.fullmatch(r"out\n\d+ \(n0\) exited with status 3\n", res.out), res
    res = jobs.run(["lamexec", "-np", "1", "/bin/sh", "-c", "kill -TERM $$"], timeout=30)
    assert res.rc == 255 and res.err == "", res
    assert re.fullmatch(r"\d+ \(n0\) exited due to signal 15\n", res.out), res
    data = os.urandom(300_000)
    src = jobs.tmp / "lamexec.in"
    src.write_bytes(data)
    res = jobs.run(["lamexec", "-np", "1", "/usr/bin/sha256sum"], stdin=src, timeout=30)
    assert (res.rc, res.out, res.err) == (0, f"{hashlib.sha256(data).hexdigest()}  -\n", ""), res
    assert_clean(jobs)


def test_argument_with_spaces(jobs):
    """Arguments reach every rank intact: spaces, tabs, quotes, globs, $;
    an empty argument is dropped, as LAM does (argv goes to the daemon
    joined with newlines)."""
    args = ["a b", "", 'x"y', "a'b", "a\\b", "  lead", "trail ", "tab\tx", "*", "$HOME"]
    res = jobs.mpirun(["-np", "2", jobs.prog("args"), *args], timeout=30)
    assert res.rc == 0 and res.err == "", res
    kept = [a for a in args if a]
    for rank in (0, 1):
        mine = [ln for ln in res.out.splitlines() if re.match(rf"ARGC? rank={rank} ", ln)]
        assert mine == [f"ARGC rank={rank} {1 + len(kept)}"] + \
            [f"ARG rank={rank} {i} [{a}]" for i, a in enumerate(kept, 1)], res
    assert_clean(jobs)


def test_stdin_reaches_rank0(jobs):
    """1 MB of random bytes on mpirun's stdin: rank 0 reads all of it (byte
    count and FNV-1a sum), and broadcasts what it read to ranks 1 and 2."""
    data = os.urandom(1_000_000)
    src = jobs.tmp / "stdin.bin"
    src.write_bytes(data)
    res = jobs.mpirun(["-np", "3", jobs.prog("stdin")], stdin=src, timeout=60)
    assert res.rc == 0 and res.err == "", res
    want = f"bytes={len(data)} fnv={fnv1a(data):08x}"
    assert sorted(res.out.splitlines()) == sorted(
        [f"STDIN rank=0 {want}", f"GOT rank=1 {want}", f"GOT rank=2 {want}"]), res
    assert_clean(jobs)


def test_env_x(jobs):
    """The ranks' environment: -x exports a caller's variable or defines one
    (values with spaces, empty values); LAM_MPI_* variables go without -x;
    anything else of the caller's does not; LAM's own variables (LAMRANK,
    LAMWORLD, LAMPARENT, LAMJOBID = node:mpirun pid, TROLLIUSRTF) and the
    session prefix are set."""
    env = {"LAMD_T_EXPORTED": "exported value", "LAMD_T_NOTEXP": "1",
           "LAM_MPI_LAMDTEST": "7"}
    names = ["LAMD_T_EXPORTED", "LAMD_T_DEF", "LAMD_T_EMPTY", "LAMD_T_NOTEXP",
             "LAM_MPI_LAMDTEST", "LAMRANK", "LAMWORLD", "LAMPARENT", "LAMJOBID", "TROLLIUSRTF",
             "LAM_MPI_SESSION_PREFIX", "USER"]
    xs = "LAMD_T_EXPORTED,LAMD_T_DEF=defined value,LAMD_T_EMPTY="
    job = jobs.start(["mpirun", "-np", "2", "-x", xs, jobs.prog("env"), *names], env=env)
    res = job.wait(60)
    assert res.rc == 0 and res.err == "", res
    for rank in (0, 1):
        got = [ln for ln in res.out.splitlines() if ln.startswith(f"ENV rank={rank} ")]
        want = {"LAMD_T_EXPORTED": "exported value", "LAMD_T_DEF": "defined value",
                "LAMD_T_EMPTY": "", "LAMD_T_NOTEXP": None, "LAM_MPI_LAMDTEST": "7",
                "LAMRANK": str(rank), "LAMWORLD": "2", "LAMPARENT": "0",
                "LAMJOBID": f"0:{job.pid}", "TROLLIUSRTF": str(MPIRUN_CHILD_RTF),
                "LAM_MPI_SESSION_PREFIX": str(jobs.s.prefix), "USER": "lamtest"}
        assert got == [f"ENV rank={rank} {k}=[{want[k]}]" if want[k] is not None
                       else f"ENV rank={rank} {k} unset" for k in names], res
    assert MPIRUN_CHILD_RTF == 102418  # what the C lamd's children see
    assert_clean(jobs)


def test_working_directory(jobs):
    """The ranks start in mpirun's cwd (a directory with a space in its
    name), or in -wd DIR; lamexec -wd too.  -wd to a missing or forbidden
    directory: each child says ``kcreatev: chdir(DIR): ERROR`` and mpirun
    reports that it never called MPI_Init (rc 252)."""
    here = jobs.s.work / "dir with space"
    there = jobs.s.work / "other"
    for d in (here, there):
        d.mkdir()
        os.chown(d, jobs.s.pw.pw_uid, jobs.s.pw.pw_gid)
    cwd = jobs.prog("cwd")
    res = jobs.mpirun(["-np", "2", cwd], cwd=here, timeout=30)
    assert res.rc == 0 and sorted(res.out.splitlines()) == \
        [f"CWD rank=0 [{here}]", f"CWD rank=1 [{here}]"], res
    res = jobs.mpirun(["-np", "2", "-wd", there, cwd], cwd=here, timeout=30)
    assert res.rc == 0 and sorted(res.out.splitlines()) == \
        [f"CWD rank=0 [{there}]", f"CWD rank=1 [{there}]"], res
    res = jobs.run(["lamexec", "-np", "1", "-wd", there, "/bin/pwd"], cwd=here, timeout=30)
    assert (res.rc, res.out, res.err) == (0, f"{there}\n", ""), res
    forbidden = jobs.tmp  # root's, 0700
    for bad, why in ((jobs.s.work / "missing", "No such file or directory"),
                     (forbidden, "Permission denied")):
        res = jobs.mpirun(["-np", "2", "-wd", bad, cwd], cwd=here, timeout=30)
        # each rank writes its line straight into mpirun's stderr, in two
        # writes (the prefix, then strerror's words), the second rank's maybe
        # while mpirun prints its help (seen in CI inside the box, and split
        # around it, on both daemons), or not before mpirun exits: one or two
        # such lines, their two parts anywhere in the help
        head, tail = f"kcreatev: chdir({bad}): ", f"{why}\n"
        n = res.err.count(head)
        assert res.rc == 252 and res.out == "" and n in (1, 2) and res.err.count(tail) == n, res
        assert res.err.replace(head, "").replace(tail, "") == NOINIT_HELP, res
    assert_clean(jobs)


# ---------------------------------------------------------------------------
# 2. moving data: point-to-point 0 B - 4 MiB, collectives, bandwidth

@pytest.mark.parametrize("rpi", list(RPIS))
def test_pingpong(jobs, rpi):
    """Ping-pong 0 B and 1 B - 4 MiB (powers of 4), 2 round trips each,
    every byte checked both ways (a wrong byte aborts with a FAIL line)."""
    res = jobs.mpirun(["-np", "2", *RPIS[rpi], jobs.prog("pingpong"), 2], timeout=60)
    assert res.rc == 0 and res.err == "", res
    sizes = [int(s) for s in re.findall(r"^PP size=(\d+) reps=2 rtt_med_us=[\d.]+ ", res.out,
                                        re.M)]
    assert sizes == PP_SIZES and res.out.endswith("PP OK\n") and "FAIL" not in res.out, res
    assert_clean(jobs)


@pytest.mark.parametrize("rpi", list(RPIS))
def test_collectives(jobs, rpi):
    """4 ranks: barrier, bcast, reduce, allreduce, alltoall, allgather over
    256 Ki ints (1 MiB per buffer; allgather gathers 4 MiB), every element
    checked."""
    res = jobs.mpirun(["-np", "4", *RPIS[rpi], jobs.prog("collectives"), 262144],
                      timeout=60)
    assert res.rc == 0 and res.err == "", res
    ops = re.findall(r"^COLL (\w+) count=262144 OK$", res.out, re.M)
    assert ops == ["barrier", "bcast", "reduce", "allreduce", "alltoall", "allgather"], res
    assert re.search(r"^COLL OK np=4 secs=", res.out, re.M) and "FAIL" not in res.out, res
    assert_clean(jobs)


def test_bandwidth_rpi_lamd(jobs):
    """Bandwidth-style traffic through the daemon (-ssi rpi lamd), every
    byte checked: 4 MPI_Isend of 1 KiB, then of 8 KiB, in flight at once, 4
    rounds; then, in a job of its own, 4 of 1 MiB at once, 4 rounds. Both
    daemons carry them (one size above 8 KiB per job: a larger size after
    another fails in LAM's library, test_rpi_lamd_large_messages).

    The lamd RPI sends each 8 KiB packet to bufferd with KTRY and, refused,
    sleeps 50 ms to 1 s before it tries again. LAM's kernel reads a body
    within the request that sent it, so bufferd is always there for the next
    packet; ours reads bodies as they come, and until 2026-11-28 refused a
    KTRY send that came while bufferd took another body: with two messages
    in flight the ranks slept most of the time (under 1 MB/s, the C lamd 62;
    the bench's mpiwin row). Such a send now waits for bufferd's next
    receive (lamd.kernel.kinner: _taking, _settle_tries)."""
    res = jobs.mpirun(["-np", "2", "-ssi", "rpi", "lamd", jobs.prog("bandwidth"),
                       4, 4, 1024, 8192], timeout=60)
    assert res.rc == 0 and res.err == "", res
    assert re.findall(r"^BW size=(\d+) window=4 iters=4 MBps=", res.out, re.M) == \
        ["1024", "8192"] and res.out.endswith("BW OK\n"), res
    res = jobs.mpirun(["-np", "2", "-ssi", "rpi", "lamd", jobs.prog("bandwidth"),
                       4, 4, 1048576], timeout=120)
    assert res.rc == 0 and res.err == "", res
    assert re.findall(r"^BW size=(\d+) window=4 iters=4 MBps=", res.out, re.M) == \
        ["1048576"] and res.out.endswith("BW OK\n"), res
    assert_clean(jobs)


def test_rpi_lamd_large_messages(jobs):
    """64 KiB MPI messages through the daemon (-ssi rpi lamd), then 1 MiB
    ones in the same job, one at a time.

    LAM's lamd RPI (Debian's build) fails on the second size on both
    daemons: a rank prints "internal MPI error: Bad address" and mpirun
    waits on (measured 2026-11-28, ranks bound at start-up: every run, on
    each daemon, window 1 or 4; one size per job passes, 64 KiB or 1 MiB,
    test_bandwidth_rpi_lamd). Lazily bound, the ranks failed so on 64 KiB
    alone as well (the MPI_INIT fault's cause: test_long_program_path). The
    C lamd's kernel then hangs (lamhalt would hang too: the test ends it
    with tkill). Ours must go on serving: mpirun interrupted, lamclean
    cleans the job up, and a new job runs."""
    job = jobs.start(["mpirun", "-np", "2", "-ssi", "rpi", "lamd", jobs.prog("bandwidth"),
                      1, 4, 65536, 1048576])
    deadline = time.monotonic() + 60
    while job.proc.poll() is None and time.monotonic() < deadline:
        if "internal MPI error: Bad address" in job.out() + job.err():
            break
        time.sleep(0.05)
    text = job.out() + job.err()
    assert "internal MPI error: Bad address" in text, text
    assert re.findall(r"^BW size=(\d+) ", job.out(), re.M) == ["65536"], text
    if jobs.d.kind == "c":
        jobs.abandon_hung_c_daemon()
        return
    job.proc.send_signal(signal.SIGINT)  # mpirun's Ctrl-C: it dooms the job
    res = job.wait(30)
    assert res.rc != 0, res
    res = jobs.run(["lamclean"], timeout=30)
    assert (res.rc, res.err) == (0, ""), res
    assert_clean(jobs)
    assert_serving(jobs)


def test_long_program_path(jobs):
    """A program with a long path (over 60 characters), 2 ranks on the TCP
    RPI, runs on both daemons.

    Lazily bound, Debian's LAM MPI fails MPI_Init here nearly every time, on
    both daemons (before 2026-11-28 this test accepted that failure): a
    rank's ``lam_send_pid_idx`` ``writev``s a header whose ``nh_msg`` (body
    length 0) it never set, and the stack slot holds bytes a lazy binding
    saved there (the program's path, an environment string: a shim on
    ``writev`` caught ``0x303d4b4e41524d``, "MRANK=0"), an address Linux
    refuses: EFAULT, "Unix errno: 14 Bad address", rc 252. Ranks bound at
    start-up never fault: ours gives mpirun's ranks ``LD_BIND_NOW=1``
    (lamd.jobs.wire.child_environment), the C lamd here has it in its own
    environment (lamenv.C_LAMD_ENV). Each rank says so."""
    deep = jobs.s.work / ("d" * 40) / "long-program-name"
    deep.parent.mkdir()
    os.chown(deep.parent, jobs.s.pw.pw_uid, jobs.s.pw.pw_gid)
    deep.parent.chmod(0o755)
    shutil.copy(jobs.prog("env"), deep)
    deep.chmod(0o755)
    assert len(str(deep)) >= 60
    res = jobs.run(["mpirun", "-np", "2", "-ssi", "rpi", "tcp", deep, "LD_BIND_NOW"], timeout=60)
    assert (res.rc, res.err) == (0, ""), res
    assert sorted(res.out.splitlines()) == [f"ENV rank={r} LD_BIND_NOW=[1]" for r in (0, 1)], res
    assert_clean(jobs)


def test_mpi_init_with_four_ranks_every_time(jobs):
    """``mpirun -np 4`` eight times in a row: every run passes MPI_Init.

    Lazily bound, each rank fails MPI_Init at random (test_long_program_path
    says how): measured on the C lamd with 4 ranks of /tmp/hello, 5 of 15
    runs passed, against 15 of 15 with ``mpirun -x LD_BIND_NOW``; on ours
    the same. What differs on purpose: ours binds mpirun's ranks at start-up
    by itself, the C lamd only because its environment here says so
    (lamenv.C_LAMD_ENV), so this run's environment names no
    ``LD_BIND_NOW`` for the tools or for ours."""
    assert "LD_BIND_NOW" not in jobs.s.env
    for _ in range(8):
        res = jobs.run(["mpirun", "-np", "4", jobs.prog("hello")], timeout=60)
        assert res.rc == 0 and sorted(re.findall(r"^OUT rank=(\d) size=4 ", res.out, re.M)) == \
            ["0", "1", "2", "3"], res
    assert_clean(jobs)


# ---------------------------------------------------------------------------
# 3. how jobs end: exit codes, MPI_Abort, no MPI_Init/MPI_Finalize, bad programs

def pids(out: str, key: str) -> dict[int, int]:
    """rank -> pid from the programs' "KEY rank=R pid=P" lines."""
    return {int(r): int(p) for r, p in re.findall(rf"^{key} rank=(\d+) pid=(\d+)$", out, re.M)}


def test_exit_code_after_finalize_is_not_seen(jobs):
    """A rank returning 7 after MPI_Finalize: LAM has already been told the
    process is done (MPI_Finalize detaches it), mpirun exits 0, silently."""
    res = jobs.mpirun(["-np", "2", jobs.prog("exitcode"), 1, 7, "after"], timeout=30)
    assert (res.rc, res.err) == (0, ""), res
    assert sorted(pids(res.out, "EXIT")) == [0, 1], res
    assert_clean(jobs)


def test_exit_code_before_finalize(jobs):
    """Rank 1 exits 7 without MPI_Finalize: mpirun prints LAM's "nonzero
    exit code" help naming rank 1's pid and exits 7; rank 0 (waiting in
    MPI_Finalize) is ended too."""
    addr = jobs.node_addr()
    res = jobs.mpirun(["-np", "2", jobs.prog("exitcode"), 1, 7, "before"], timeout=30)
    p = pids(res.out, "EXIT")
    assert res.rc == 7 and sorted(p) == [0, 1], res
    assert res.err == failed_help(p[1], addr, status=7), res
    assert_clean(jobs)


def test_exit_without_finalize(jobs):
    """Every rank leaves without MPI_Finalize: status 0 ends the job quietly
    (rc 0); status 4: the help names one of the ranks, rc 4."""
    addr = jobs.node_addr()
    res = jobs.mpirun(["-np", "2", jobs.prog("nofinalize")], timeout=30)
    assert (res.rc, res.err) == (0, "") and sorted(pids(res.out, "NOFIN")) == [0, 1], res
    res = jobs.mpirun(["-np", "2", jobs.prog("nofinalize"), 4], timeout=30)
    p = pids(res.out, "NOFIN")
    assert res.rc == 4 and sorted(p) == [0, 1], res
    assert res.err in {failed_help(q, addr, status=4) for q in p.values()}, res
    assert_clean(jobs)


def test_no_mpi_init(jobs):
    """A program that never calls MPI_Init: LAM's help text, rc 252."""
    res = jobs.mpirun(["-np", "2", jobs.prog("noinit")], timeout=30)
    assert (res.rc, res.err) == (252, NOINIT_HELP), res
    assert 1 <= len(re.findall(r"^NOINIT pid=\d+$", res.out, re.M)) <= 2, res
    assert_clean(jobs)


def test_mpi_abort(jobs):
    """MPI_Abort: one rank, code (5 << 17) + 1: exit status 5 and the help
    (rc 5); code 5 (error class 5) exits 0, silently.  Three ranks, rank 1
    aborts with (5 << 17) + 1: the others are doomed and exit 1; mpirun
    reports the first exit it hears of: the aborting rank (5) or a doomed
    one (1), and exits with that status.  Nothing is left running."""
    addr = jobs.node_addr()
    code5 = (5 << 17) + 1
    res = jobs.mpirun(["-np", "1", jobs.prog("abort"), 0, code5], timeout=30)
    p = pids(res.out, "ABORT")
    assert res.rc == 5 and list(p) == [0] and res.err == failed_help(p[0], addr, status=5), res
    res = jobs.mpirun(["-np", "1", jobs.prog("abort"), 0, 5], timeout=30)
    assert (res.rc, res.err) == (0, "") and list(pids(res.out, "ABORT")) == [0], res
    res = jobs.mpirun(["-np", "3", jobs.prog("abort"), 1, code5], timeout=30)
    aborter, waiters = pids(res.out, "ABORT"), pids(res.out, "WAIT")
    assert list(aborter) == [1] and sorted(waiters) == [0, 2], res
    assert res.rc in (1, 5), res
    if res.rc == 5:
        assert res.err == failed_help(aborter[1], addr, status=5), res
    else:
        assert res.err in {failed_help(q, addr, status=1) for q in waiters.values()}, res
    assert "FAIL" not in res.out, res
    assert_clean(jobs)


def test_missing_and_not_executable_program(jobs):
    """``mpirun: cannot start PROG on n0 (o): ERROR`` and rc errno, for mpirun
    and lamexec alike (LAM's shared code prints "mpirun:" for both); a
    directory given to lamexec is started and fails in exec: status 13."""
    noexec = jobs.s.work / "noexec"
    shutil.copy(jobs.prog("hello"), noexec)
    noexec.chmod(0o644)
    missing = jobs.s.work / "missing-program"
    for tool in ("mpirun", "lamexec"):
        for prog, rc, why in ((missing, 2, "No such file or directory"),
                              (noexec, 13, "Permission denied")):
            res = jobs.run([tool, "-np", "2", prog], timeout=30)
            assert (res.rc, res.out, res.err) == (
                rc, "", f"mpirun: cannot start {prog} on n0 (o): {why}\n"), res
    res = jobs.run(["lamexec", "-np", "1", jobs.s.work], timeout=30)
    assert res.rc == 13 and res.err == "", res
    assert re.fullmatch(r"\d+ \(n0\) exited with status 13\n", res.out), res
    assert_clean(jobs)


# ---------------------------------------------------------------------------
# 4. while a job runs: mpitask, lamclean, SIGINT, lamhalt, -nw, lamtrace

MPITASK_HEAD = "TASK (G/L)           FUNCTION      PEER|ROOT  TAG    COMM   COUNT   DATATYPE\n"
MPITASK_GPS_HEAD = "TASK (GPS/L)         FUNCTION      PEER|ROOT  TAG    COMM   COUNT   DATATYPE\n"


def test_mpitask_during_job(jobs):
    """-ssi rpi lamd, 3 ranks: rank 0 sleeps outside MPI, ranks 1 and 2 wait
    in MPI_Recv inside the daemon; mpitask shows exactly that (LAM's columns:
    rank, program, function, peer, tag, communicator, count, datatype), and
    with -gps the node/kenyad index of each (consecutive, the peer column
    naming rank 0's).  After the job, only the header."""
    go = jobs.gofile()
    job = jobs.start(["mpirun", "-np", "3", "-ssi", "rpi", "lamd", jobs.prog("sleeper"), go,
                      "recv"])
    job.wait_lines(r"SLEEPER rank=\d pid=\d+$", 3)
    want = MPITASK_HEAD + "0 sleeper            <running>\n" + "".join(
        f"{r}/{r} sleeper          Recv          0/0        42     WORLD  1       INT\n"
        for r in (1, 2))
    deadline = time.monotonic() + 20
    while True:  # ranks 1, 2 enter MPI_Recv a moment after printing
        res = jobs.run(["mpitask"], timeout=20)
        if res.out == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (res.rc, res.out, res.err) == (0, want, ""), res
    res = jobs.run(["mpitask", "-gps"], timeout=20)
    assert res.rc == 0 and res.err == "", res
    lines = res.out.splitlines(keepends=True)
    assert lines[0] == MPITASK_GPS_HEAD and len(lines) == 4, res
    m0 = re.fullmatch(r"n0,i(\d+) sleeper +<running>\n", lines[1])
    assert m0, res
    i0 = int(m0.group(1))
    for r in (1, 2):
        gps = f"n0,i{i0 + r}/{r}"
        peer = f"n0,i{i0}/0"
        # mpitask's "%-20.20s %-13.13s %-10.10s %-6.6s %-6.6s %-7.7s %s\n"
        assert lines[1 + r] == (f"{gps + ' sleeper':<20.20} {'Recv':<13} {peer:<10.10} "
                                f"{'42':<6} {'WORLD':<6} {'1':<7} INT\n"), res
    go.touch()
    res = job.wait(30)
    assert res.rc == 0 and res.err == "" and sorted(pids(res.out, "SLEEPER")) == [0, 1, 2], res
    assert sorted(re.findall(r"^WOKE rank=(\d)$", res.out, re.M)) == ["0", "1", "2"], res
    res = jobs.run(["mpitask"], timeout=20)
    assert (res.rc, res.out, res.err) == (0, MPITASK_HEAD, ""), res
    assert_clean(jobs)


def start_sleepers(jobs: Runner, n: int = 2, extra: list | None = None) -> tuple[Job, dict]:
    go = jobs.gofile()  # never created: the ranks wait until ended
    job = jobs.start(["mpirun", *(extra or []), "-np", str(n), jobs.prog("sleeper"), go])
    ms = job.wait_lines(r"SLEEPER rank=(\d) pid=(\d+)$", n)
    return job, {int(m.group(1)): int(m.group(2)) for m in ms}


def test_lamclean_ends_job(jobs):
    """lamclean -v during a job: its five steps (LAM's exact output), the
    ranks exit with status 1 (SIGUDIE), mpirun reports one of them and exits
    1; nothing is left; the daemon then runs a new job."""
    addr = jobs.node_addr()
    job, ranks = start_sleepers(jobs)
    res = jobs.run(["lamclean", "-v"], timeout=30)
    assert (res.rc, res.out, res.err) == (0, LAMCLEAN_V, ""), res
    res = job.wait(30)
    assert res.rc == 1, res
    assert res.err in {failed_help(p, addr, status=1) for p in ranks.values()}, res
    assert_clean(jobs)
    assert_serving(jobs)


def test_sigint_to_mpirun_ends_job(jobs):
    """SIGINT to mpirun: the ranks are killed with SIGTERM; mpirun reports
    one "due to signal 15" and exits 15; nothing is left."""
    addr = jobs.node_addr()
    job, ranks = start_sleepers(jobs)
    os.kill(job.pid, signal.SIGINT)
    res = job.wait(30)
    assert res.rc == 15, res
    assert res.err in {failed_help(p, addr, sig=15) for p in ranks.values()}, res
    assert_clean(jobs)
    assert_serving(jobs)


def test_lamhalt_during_job(jobs):
    """lamhalt during a job: lamhalt succeeds, the job goes with the daemon,
    mpirun exits 215 (ENOKERNEL) without a word; nothing is left (the
    fixture then checks the daemon and its session directory are gone)."""
    job, _ = start_sleepers(jobs)
    res = jobs.run(["lamhalt"], timeout=60)
    jobs.d.expect_exit = True
    print(f"lamhalt took {res.took:.1f} s")
    assert res.rc == 0, res
    res = job.wait(30)
    print(f"mpirun ended {res.took:.1f} s after it started")
    assert (res.rc, res.err) == (ENOKERNEL_EXIT, ""), res
    assert_clean(jobs)
    assert jobs.d.wait_gone(15), "daemon still running after lamhalt"


def test_nowait(jobs):
    """mpirun -nw: returns 0 once the ranks are in MPI_Init; the job runs
    on (mpitask lists it), writes to mpirun's stdout after mpirun has gone,
    and ends by itself."""
    go = jobs.gofile()
    res = jobs.mpirun(["-nw", "-np", "2", jobs.prog("sleeper"), go], timeout=30)
    assert (res.rc, res.err) == (0, ""), res
    outp = res.outp
    deadline = time.monotonic() + 20
    while len(pids(outp.read_text(), "SLEEPER")) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    ranks = pids(outp.read_text(), "SLEEPER")
    assert sorted(ranks) == [0, 1], outp.read_text()
    assert all(lamenv.running(p) for p in ranks.values())
    res = jobs.run(["mpitask"], timeout=20)
    assert (res.rc, res.out) == (0, MPITASK_HEAD + "0 sleeper            <running>\n" * 2), res
    go.touch()
    deadline = time.monotonic() + 20
    while len(re.findall(r"^WOKE", outp.read_text(), re.M)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(re.findall(r"^WOKE rank=(\d)$", outp.read_text(), re.M)) == ["0", "1"], \
        outp.read_text()
    assert_clean(jobs)
    res = jobs.run(["mpitask"], timeout=20)
    assert (res.rc, res.out) == (0, MPITASK_HEAD), res


def test_lamtrace_after_traced_run(jobs):
    """mpirun -t, then lamtrace -mpi: the MPI world's trace file (LAM's
    "LAM6" header, the world size, one GPS per rank with the ranks' pids
    and world ranks; 1,752 bytes for this program on the C lamd, traces
    being the MPI library's own records); -k keeps them (a second unload
    gives the same bytes), without -k they go: a third unload finds none."""
    res = jobs.mpirun(["-t", "-np", "2", jobs.prog("hello")], timeout=30)
    assert res.rc == 0, res
    ranks = {int(r): int(p) for r, p in re.findall(r"^OUT rank=(\d) size=2 pid=(\d+) ", res.out,
                                                   re.M)}
    assert sorted(ranks) == [0, 1], res
    wd = jobs.s.work
    files = []
    for name, flags in (("a.lamtr", ["-k"]), ("b.lamtr", []), ("c.lamtr", [])):
        res = jobs.run(["lamtrace", "-mpi", *flags, name], cwd=wd, timeout=30)
        files.append((wd / name).read_bytes())
        if name != "c.lamtr":
            assert (res.rc, res.out, res.err) == (0, "", ""), res
    assert (res.rc, res.out + res.err, files[2]) == (0, LAMTRACE_NONE_HELP, b""), res
    a, b = files[0], files[1]
    assert a == b, "lamtrace -k then lamtrace: different traces"
    assert a[:4] == b"LAM6" and int.from_bytes(a[4:8], "big") == 2, a[:64]
    gps = [tuple(int.from_bytes(a[8 + 16 * i + 4 * k:12 + 16 * i + 4 * k], "big")
                 for k in range(4)) for i in range(2)]
    assert [(node, pid, grank) for node, pid, _idx, grank in gps] == \
        [(0, ranks[0], 0), (0, ranks[1], 1)], gps
    assert len(a) == 1752, len(a)
    assert_clean(jobs)


# ---------------------------------------------------------------------------
# 5. traced: MPI name publishing, lamclean's sweep


def pubname(jobs: Runner, mode: str, svc: str, timeout: float = 30) -> Result:
    return jobs.mpirun(["-np", "1", jobs.prog("pubname"), mode, svc], timeout=timeout)


def test_publish_lookup_unpublish_two_ranks(jobs):
    """MPI_Publish_name on rank 0, MPI_Lookup_name on rank 1 (traced's
    TRQNAMEPUB/TRQNAMEGET), a second publish refused (EPUBLISHED), an
    unpublish by the other rank (TRQNAMEDEL), then lookup and unpublish
    refused (ENOTPUBLISHED); LAM's error classes, the same on both daemons."""
    res = jobs.mpirun(["-np", "2", jobs.prog("pubname"), "pair", "ocean"], timeout=30)
    assert (res.rc, res.err) == (0, ""), res
    assert res.out == PUBNAME_PAIR, res
    assert_clean(jobs)


def test_published_name_across_jobs_finalize_and_lamclean(jobs):
    """A name one job publishes is found by another job; the publisher's
    MPI_Finalize sweeps it (lam_nukepublished: TRQSWEEP of TRNAMELIST by its
    id); lamclean sweeps every list, names included, and ends the job."""
    for ending in ("finalize", "lamclean"):
        svc = f"svc-{ending}"
        go = jobs.gofile()
        job = jobs.start(["mpirun", "-np", "1", jobs.prog("pubname"), "pub", svc, str(go)])
        job.wait_lines(rf"^PUBLISHED {svc} class=0$", 1)
        res = pubname(jobs, "get", svc)
        assert (res.rc, res.out, res.err) == (0, f"LOOKUP {svc} class=0 port=port-of-{svc}\n",
                                              ""), res
        if ending == "finalize":
            go.touch()
            res = job.wait(30)
            assert (res.rc, res.err) == (0, ""), res
        else:
            res = jobs.run(["lamclean"], timeout=30)
            assert (res.rc, res.out, res.err) == (0, "", ""), res
            res = job.wait(30)
            assert res.rc == 1, res
        res = pubname(jobs, "get", svc)
        assert (res.rc, res.out, res.err) == (0, f"LOOKUP {svc} class={MPI_ERR_NAME}\n", ""), res
    assert_clean(jobs)


def test_lamclean_sweeps_traces(jobs):
    """mpirun -t leaves the ranks' traces in traced; lamclean sweeps them
    (TRQSWEEP of TRANYLIST): lamtrace then finds none."""
    res = jobs.mpirun(["-t", "-np", "2", jobs.prog("hello")], timeout=30)
    assert res.rc == 0, res
    res = jobs.run(["lamtrace", "-mpi", "-k", "kept.lamtr"], cwd=jobs.s.work, timeout=30)
    assert (res.rc, res.out, res.err) == (0, "", ""), res
    assert (jobs.s.work / "kept.lamtr").read_bytes()[:4] == b"LAM6"
    res = jobs.run(["lamclean"], timeout=30)
    assert (res.rc, res.out, res.err) == (0, "", ""), res
    res = jobs.run(["lamtrace", "-mpi", "gone.lamtr"], cwd=jobs.s.work, timeout=30)
    assert (res.rc, res.out + res.err) == (0, LAMTRACE_NONE_HELP), res
    assert (jobs.s.work / "gone.lamtr").read_bytes() == b""


def test_lamtrace_any_list_order_with_a_published_name(jobs):
    """lamtrace without -mpi unloads every list (TRANYLIST) in traced's hash
    table order (all_hash.c: slot abs(list) % 100): mpitrace.h's lists
    first, then a name a running job published (list TRNAMELIST, -99: slot
    99), raw, as LAM's traced sends it: the same layout on both daemons."""
    svc = "ordered"
    go = jobs.gofile()
    job = jobs.start(["mpirun", "-t", "-np", "1", jobs.prog("pubname"), "pub", svc, str(go)])
    job.wait_lines(rf"^PUBLISHED {svc} class=0$", 1)
    res = jobs.run(["lamtrace", "-k", "all.lamtr"], cwd=jobs.s.work, timeout=30)
    assert (res.rc, res.out, res.err) == (0, "", ""), res
    data = (jobs.s.work / "all.lamtr").read_bytes()
    entry = f"{svc}\0port-of-{svc}\0".encode()
    marks = {m: data.find(m) for m in (b"MPI_COMM_WORLD", b"MPI_COMM_SELF", b"pubname",
                                          b"LAM6", entry)}
    print(f"{jobs.d.kind}: {len(data)} bytes, {marks}")
    assert data.endswith(entry) and data.count(entry) == 1, data[-64:]
    assert len(data) == TRACED_RUN_BYTES + len(entry), len(data)
    # mpitrace.h's lists in slot order, as on the C lamd: TRCOMM (-2, slot
    # 2: the communicators) first, TRWORLD (-5, slot 5: "LAM6") last, then
    # the name (TRNAMELIST, -99, slot 99)
    assert marks == TRACED_RUN_MARKS | {entry: TRACED_RUN_BYTES}, marks
    go.touch()
    res = job.wait(30)
    assert (res.rc, res.err) == (0, ""), res
    assert_clean(jobs)
