"""Interop test environment: an unprivileged LAM user, isolated LAM sessions,
the stock C ``lamd`` (via ``lamboot``/``lamhalt``) and our Python ``lamd``.

LAM refuses to run as root, so every LAM program, every client and every
daemon under test runs as the user ``lamtest``.  Each test gets its own
``LAM_MPI_SESSION_PREFIX`` (a fresh 0700 directory owned by ``lamtest``), so
the session directory is ``$PREFIX/lam-lamtest@$(hostname)`` holding
``lam-kernel-socket`` and ``lam-killfile`` (LAM's ``share/etc/kill.c``).

The environment handed to LAM programs is built from scratch: no ``TMPDIR``,
no ``LAM_MPI_SESSION_SUFFIX``/``LAM_MPI_SOCKET_SUFFIX``, no batch-system job
ids (``PBS_JOBID``, ``SLURM_JOBID``, ``LSB_JOBID``, ``JOB_ID``), any of which
would move the session directory.

Used by ``tests/conftest.py``; importable on its own (no pytest needed) for
poking at a daemon by hand.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "lamtest"
SYSTEM_PYTHON = "/usr/bin/python3"
REPO = Path(__file__).resolve().parent.parent

SOCKET_NAME = "lam-kernel-socket"
KILLFILE_NAME = "lam-killfile"


# --------------------------------------------------------------------------
# preconditions, user, package copy

def skip_reason() -> str | None:
    """Why the interop tests cannot run here (not root), or None."""
    if os.geteuid() != 0:
        return "interop tests need root (to create and switch to user lamtest)"
    return None


def missing_tools() -> str | None:
    """What the interop tests need and is not installed, or None.

    packaging/setup.sh installs all of it, so a missing tool fails the tests
    rather than skipping them."""
    for prog in ("mpicc.lam", "lamboot", "lamhalt", "lamwipe", "tkill", "tping",
                 "lamnodes", "ss"):
        if shutil.which(prog) is None:
            return f"{prog} not installed: run packaging/setup.sh"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} missing: run packaging/setup.sh"
    return None


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    """Create the unprivileged LAM user once; idempotent and race-tolerant."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    r = subprocess.run(["useradd", "-m", "-s", "/bin/sh", name],
                       capture_output=True, text=True, timeout=30)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"useradd {name} failed: rc={r.returncode} {r.stderr}") from None


def make_user_dir(pw: pwd.struct_passwd, prefix: str, mode: int = 0o700) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chown(d, pw.pw_uid, pw.pw_gid)
    d.chmod(mode)
    return d


def copy_package(src: Path = REPO / "lamd", *, pyc: bool = False) -> Path:
    """A world-readable copy of the ``lamd`` package; returns the PYTHONPATH dir.

    *pyc*: with its ``.pyc`` files written (:func:`warm_pyc`), as an
    installed package has them: what a benchmark of start-up must run (the
    daemons run with ``PYTHONDONTWRITEBYTECODE``, so without them every
    start compiles every module from source)."""
    top = Path(tempfile.mkdtemp(prefix="lamd-pkg-", dir="/tmp"))
    top.chmod(0o755)
    shutil.copytree(src, top / "lamd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for dirpath, dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    if pyc:
        warm_pyc(top / "lamd")
    return top


def warm_pyc(pkg: Path) -> None:
    """Write the ``.pyc`` files of the package in *pkg*, readable by the
    benchmark user."""
    subprocess.run([SYSTEM_PYTHON, "-m", "compileall", "-q", str(pkg)], check=True,
                   timeout=300)
    for p in [pkg, *pkg.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o055)


#: What the C lamd's environment gets beside the tools' (CDaemon.start).
C_LAMD_ENV = {"LD_BIND_NOW": "1"}


def clean_env(pw: pwd.struct_passwd, prefix: Path, extra: dict | None = None) -> dict:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": pw.pw_dir,
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "LANG": "C.UTF-8",
        "LAM_MPI_SESSION_PREFIX": str(prefix),
    }
    if extra:
        env.update(extra)
    return env


def connectable(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_exit(p: subprocess.Popen, timeout: float) -> bool:
    """Wait up to *timeout* seconds for *p* to exit, seen at once through a
    pidfd (``Popen.wait(timeout)`` polls, its sleeps growing to 50 ms, which
    a timing would measure); reaped and True if it exited, else False (still
    running)."""
    pidfd = os.pidfd_open(p.pid)
    try:
        ended = bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)
    if ended:
        p.wait()
    return ended


def ppid(pid: int) -> int:
    """*pid*'s parent (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def pid_alive(pid: int) -> bool:
    """kill(pid, 0) succeeds: a live process or a zombie (what LAM's tkill sees)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def read_killfile(path: Path) -> list[int]:
    """The kill file's pids as LAM's tkill reads them; [] when there is none."""
    from lamd.session.kkill import read_killfile as read
    try:
        return read(str(path))
    except OSError:
        return []


# --------------------------------------------------------------------------
# session

class Session:
    """One isolated LAM session for user ``lamtest``.

    ``run`` and ``popen`` start programs as that user with the session's
    environment; every process started through here is killed by ``close``.
    """

    def __init__(self, pw: pwd.struct_passwd):
        self.pw = pw
        self.prefix = make_user_dir(pw, "lamsess-")
        self.work = make_user_dir(pw, "lamwork-", 0o755)  # cwd, host file, logs
        self.env = clean_env(pw, self.prefix)
        self.session_dir = self.prefix / f"lam-{pw.pw_name}@{socket.gethostname()}"
        self.socket = self.session_dir / SOCKET_NAME
        self.killfile = self.session_dir / KILLFILE_NAME
        self._procs: list[subprocess.Popen] = []

    def _user_kw(self, env: dict | None) -> dict:
        return dict(user=self.pw.pw_uid, group=self.pw.pw_gid, extra_groups=[],
                    env=env or self.env, cwd=str(self.work), close_fds=True)

    def run(self, argv, timeout: float = 30, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        """Run ``argv`` as lamtest; returns the CompletedProcess (text).

        stdout/stderr go to files, not pipes: ``lamboot``'s daemon inherits
        them and would keep a pipe open forever.
        """
        argv = [str(a) for a in argv]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 **self._user_kw(env), **kw)
            try:
                rc = self._wait_reaping(p, timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                out.seek(0)
                err.seek(0)
                raise subprocess.TimeoutExpired(argv, timeout, out.read(), err.read())
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(argv, rc, out.read(), err.read())

    def reap(self) -> None:
        """Reap background clients that have exited.

        A zombie still answers kill(pid, 0), so LAM's tkill (run by lamhalt's
        haltd) would wait for it forever: lamhalt hangs while a dead client
        of ours is unreaped.
        """
        for q in self._procs:
            q.poll()

    def _wait_reaping(self, p: subprocess.Popen, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            rc = p.poll()
            if rc is not None:
                return rc
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(p.args, timeout)
            time.sleep(0.01)

    def popen(self, argv, env: dict | None = None, **kw) -> subprocess.Popen:
        """Start ``argv`` as lamtest in the background (stdout/stderr piped, text)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen([str(a) for a in argv], text=True,
                             **self._user_kw(env), **kw)
        self._procs.append(p)
        return p

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=5)
            except (subprocess.TimeoutExpired, ValueError, OSError):
                pass
        self._procs.clear()
        shutil.rmtree(self.prefix, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def wait_socket(self, timeout: float = 10, alive=lambda: True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists() and connectable(self.socket):
                return True
            if not alive():
                return False
            time.sleep(0.02)
        return False


# --------------------------------------------------------------------------
# daemons

def running(pid: int) -> bool:
    """A live process, not a zombie, has *pid*.

    The C lamd is daemonised by lamboot: once it exits it stays a zombie until
    whatever reaps orphans here gets to it, and a zombie answers kill(pid, 0).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def listener_pids(path: Path) -> set[int]:
    """The processes holding the listening Unix socket whose file is *path*.

    Matched by the socket file's inode (``ss -e``), not by its name: the C
    lamd binds a relative name from inside the session directory.
    """
    st = os.stat(path)
    cp = subprocess.run(["ss", "-xlpeH"], capture_output=True, text=True, timeout=10)
    assert cp.returncode == 0, cp.stderr
    pids: set[int] = set()
    for line in cp.stdout.splitlines():
        m = re.search(r"\bino:(\d+) dev:\d+/(\d+)\b", line)
        if m and (int(m.group(1)), int(m.group(2))) == (st.st_ino, st.st_dev):
            pids |= {int(x) for x in re.findall(r"\bpid=(\d+)\b", line)}
    return pids


def show_log_on_failure(request, d: "Daemon") -> "Daemon":
    """Have *d*'s log shown if the test fails (conftest's report hook)."""
    request.node._lam_daemons = getattr(request.node, "_lam_daemons", []) + [d]
    return d


def fail_on_stop_problems(request, problems: list[str], what: str = "lamd shutdown: ",
                          tail: str = "") -> None:
    """A test that passed fails when a daemon it stopped did not end cleanly."""
    call = getattr(request.node, "_lam_rep_call", None)
    if problems and call is not None and call.passed:
        import pytest
        pytest.fail(what + "; ".join(problems) + tail, pytrace=False)


class Daemon:
    """What the two daemons share: how a test stops one, and what it checks.

    :meth:`stop` does the same to either daemon, LAM's own ``lamhalt`` as its
    user would run it, and checks the same outcome: lamhalt exits 0, the
    daemon is gone within 10 s, its session directory (socket, kill file)
    within 5 s more. Anything else is a problem recorded in ``stop_problems``,
    for either kind; the ``daemon`` fixture fails the test on it. Whatever is
    left is then cleaned up by force (:meth:`_force_cleanup`).
    """

    kind = ""

    def __init__(self, session: Session):
        self.s = session
        self.transcript: list[str] = []
        self.stop_problems: list[str] = []
        #: set by a test that ends the daemon itself (lamhalt, tkill, a
        #: signal): stop() then does not halt it, but checks the same outcome
        self.expect_exit = False
        self._stopped = False

    @property
    def pid(self) -> int:
        """The kernel's pid (the kill file's first line)."""
        raise NotImplementedError

    def _note(self, what: str, cp: subprocess.CompletedProcess | None) -> None:
        if cp is None:
            self.transcript.append(what)
        else:
            self.transcript.append(f"$ {' '.join(cp.args)}  -> rc={cp.returncode}\n"
                                   f"{cp.stdout}{cp.stderr}")

    def _reap(self) -> None:
        """Collect the daemon's exit status, where it is our child."""

    def wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.s.reap()
            self._reap()
            if not running(self.pid):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        problems = self.stop_problems
        if self.expect_exit and not self.wait_gone(10):
            # halted by the test itself: a lamhalt now would only race its exit
            problems.append("still running 10 s after the test halted it")
        if running(self.pid):
            try:
                cp = self.s.run(["lamhalt"], timeout=30)
                self._note("lamhalt", cp)
                if cp.returncode != 0:
                    problems.append(f"lamhalt exited {cp.returncode}")
            except subprocess.TimeoutExpired as e:
                self._note(f"lamhalt timed out: {e.output} {e.stderr}", None)
                problems.append("lamhalt did not return within 30 s")
            if not self.wait_gone(10):
                problems.append("still running 10 s after lamhalt")
        elif not self.expect_exit:
            problems.append("had already exited before it was stopped")
        self._check_exit()
        deadline = time.monotonic() + 5
        while self.s.session_dir.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.s.session_dir.exists():
            try:
                left = sorted(os.listdir(self.s.session_dir))
            except OSError:
                left = []
            problems.append(f"left its session directory behind ({', '.join(left)})")
        self._force_cleanup()

    def _check_exit(self) -> None:
        """Kind-specific checks of how the daemon ended."""

    def _force_cleanup(self) -> None:
        raise NotImplementedError


class CDaemon(Daemon):
    """Debian's C lamd, booted with ``lamboot`` on a one-host schema."""

    kind = "c"

    def __init__(self, session: Session):
        super().__init__(session)
        self.hostfile = session.work / "hostfile"
        self.pids: list[int] = []

    @property
    def pid(self) -> int:
        return self.pids[0]

    def start(self) -> None:
        self.hostfile.write_text("localhost\n")
        self.hostfile.chmod(0o644)
        # the C kenyad passes its own environment on: with LD_BIND_NOW its
        # ranks bind at start-up, as ours gives mpirun's ranks by itself
        # (lamd.jobs.wire.child_environment: lazily bound, Debian's LAM MPI
        # fails MPI_INIT with "Unix errno: 14 Bad address" at random)
        cp = self.s.run(["lamboot", "-v", self.hostfile], timeout=60,
                        env={**self.s.env, **C_LAMD_ENV})
        self._note("lamboot", cp)
        if cp.returncode != 0 or not self.s.wait_socket(10):
            raise RuntimeError("lamboot failed:\n" + self.log())
        self.pids = read_killfile(self.s.killfile)

    def log(self) -> str:
        return "\n".join(self.transcript)

    def _force_cleanup(self) -> None:
        """LAM's own cleanup (lamwipe, tkill), then SIGKILL what is left."""
        if not self.pids:
            return
        if running(self.pid) or self.s.session_dir.exists():
            for argv in (["lamwipe", self.hostfile], ["tkill"]):
                try:
                    cp = self.s.run(argv, timeout=30)
                    self._note(" ".join(map(str, argv)), cp)
                except subprocess.TimeoutExpired as e:
                    self._note(f"{argv} timed out: {e.output} {e.stderr}", None)
                if self.wait_gone(3):
                    break
        for pid in set(self.pids[:1]) | set(read_killfile(self.s.killfile)):
            if running(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


class PyDaemon(Daemon):
    """Our lamd: ``/usr/bin/python3 -m lamd`` in the foreground as lamtest."""

    kind = "py"

    def __init__(self, session: Session, pkgdir: Path, args: list[str] | None = None,
                 module: str = "lamd", env: dict | None = None):
        super().__init__(session)
        self.pkgdir = pkgdir
        #: ``python3 -m MODULE``; *env* adds to (PYTHONPATH: prepends to) the
        #: session environment (tests that boot lamd with other internal processes)
        self.module = module
        self.extra_env = dict(env or {})
        self.args = args if args is not None else [
            "--log-level", os.environ.get("LAMD_TEST_LOG_LEVEL", "info")]
        self.logfile = session.work / "lamd.stderr"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        extra = dict(self.extra_env)
        path = os.pathsep.join(filter(None, [extra.pop("PYTHONPATH", ""), str(self.pkgdir)]))
        env = dict(self.s.env, **extra, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
        self._log = open(self.logfile, "w")
        self.proc = self.s.popen([SYSTEM_PYTHON, "-m", self.module, *self.args], env=env,
                                 stdout=self._log, stderr=subprocess.STDOUT)
        # serving: the socket answers, and the kill file names the daemon (the
        # socket listens a moment before the kill file is written)
        deadline = time.monotonic() + 10
        ok = self.s.wait_socket(10, alive=lambda: self.proc.poll() is None)
        while ok and read_killfile(self.s.killfile)[:1] != [self.proc.pid]:
            ok = self.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        if not ok:
            rc = self.proc.poll()
            raise RuntimeError(
                f"python lamd did not serve {self.s.socket} within 10 s "
                f"(exit status {rc}):\n{self.log()}")
        # the socket listens a moment before the kill file is first written
        deadline = time.monotonic() + 10
        while not read_killfile(self.s.killfile) and time.monotonic() < deadline:
            time.sleep(0.01)

    def log(self) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            text = ""
        return "\n".join(self.transcript + [text])

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.poll()

    def stop(self) -> None:
        if self.proc is None:
            return
        super().stop()

    def _check_exit(self) -> None:
        # only ours can be checked for its exit status: the C lamd is lamboot's
        # daemon, not a child of the test
        rc = self.proc.poll()
        if rc is not None and rc != 0:
            self.stop_problems.append(f"exit status {rc}")

    def _force_cleanup(self) -> None:
        p = self.proc
        if p.poll() is None:
            self.stop_problems.append("SIGKILLed")
            p.kill()
            p.wait(timeout=10)
        self.returncode = p.returncode
        self._log.close()
