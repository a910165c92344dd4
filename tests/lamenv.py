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
    """Why the interop tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "interop tests need root (to create and switch to user lamtest)"
    for prog in ("mpicc.lam", "lamboot", "lamhalt"):
        if shutil.which(prog) is None:
            return f"{prog} not installed (apt-get install lam-runtime lam4-dev)"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} missing"
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


def copy_package(src: Path = REPO / "lamd") -> Path:
    """A world-readable copy of the ``lamd`` package; returns the PYTHONPATH dir."""
    top = Path(tempfile.mkdtemp(prefix="lamd-pkg-", dir="/tmp"))
    top.chmod(0o755)
    shutil.copytree(src, top / "lamd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for dirpath, dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return top


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


def pid_alive(pid: int) -> bool:
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

class CDaemon:
    """Debian's C lamd, booted with ``lamboot`` on a one-host schema."""

    kind = "c"

    def __init__(self, session: Session):
        self.s = session
        self.hostfile = session.work / "hostfile"
        self.pids: list[int] = []
        self.transcript: list[str] = []
        #: set by a test that halts the daemon itself (e.g. with lamhalt):
        #: stop() then only cleans up whatever is left
        self.expect_exit = False

    def _note(self, what: str, cp: subprocess.CompletedProcess | None) -> None:
        if cp is None:
            self.transcript.append(what)
        else:
            self.transcript.append(f"$ {' '.join(cp.args)}  -> rc={cp.returncode}\n"
                                   f"{cp.stdout}{cp.stderr}")

    def start(self) -> None:
        self.hostfile.write_text("localhost\n")
        self.hostfile.chmod(0o644)
        cp = self.s.run(["lamboot", "-v", self.hostfile], timeout=60)
        self._note("lamboot", cp)
        if cp.returncode != 0 or not self.s.wait_socket(10):
            raise RuntimeError("lamboot failed:\n" + self.log())
        self.pids = read_killfile(self.s.killfile)

    def log(self) -> str:
        return "\n".join(self.transcript)

    def stop(self) -> None:
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        lamd_pids = self.pids[:1] or read_killfile(self.s.killfile)[:1]
        steps = (["lamhalt"], ["lamwipe", self.hostfile], ["tkill"])
        if self.expect_exit and lamd_pids and not any(pid_alive(p) for p in lamd_pids):
            steps = ()
        for argv in steps:
            try:
                cp = self.s.run(argv, timeout=30)
                self._note(" ".join(map(str, argv)), cp)
            except subprocess.TimeoutExpired as e:
                self._note(f"{argv} timed out: {e.output} {e.stderr}", None)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if not any(pid_alive(p) for p in lamd_pids):
                    break
                time.sleep(0.05)
            if not any(pid_alive(p) for p in lamd_pids):
                break
        for pid in set(lamd_pids) | set(read_killfile(self.s.killfile)):
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


class PyDaemon:
    """Our lamd: ``/usr/bin/python3 -m lamd`` in the foreground as lamtest."""

    kind = "py"

    def __init__(self, session: Session, pkgdir: Path, args: list[str] | None = None):
        self.s = session
        self.pkgdir = pkgdir
        self.args = args if args is not None else [
            "--log-level", os.environ.get("LAMD_TEST_LOG_LEVEL", "info")]
        self.logfile = session.work / "lamd.stderr"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.stop_problems: list[str] = []
        #: set by a test that halts the daemon itself (e.g. with lamhalt):
        #: an exit before stop() is then expected, but must still be status 0
        #: and leave no socket or kill file behind
        self.expect_exit = False

    def start(self) -> None:
        env = dict(self.s.env, PYTHONPATH=str(self.pkgdir), PYTHONDONTWRITEBYTECODE="1")
        self._log = open(self.logfile, "w")
        self.proc = self.s.popen([SYSTEM_PYTHON, "-m", "lamd", *self.args], env=env,
                                 stdout=self._log, stderr=subprocess.STDOUT)
        if not self.s.wait_socket(10, alive=lambda: self.proc.poll() is None):
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
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        p = self.proc
        if p is None or self.returncode is not None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                self.s._wait_reaping(p, 10)
            except subprocess.TimeoutExpired:
                self.stop_problems.append("did not exit within 10 s of SIGTERM; SIGKILLed")
                p.kill()
                p.wait(timeout=10)
        elif not self.expect_exit:
            self.stop_problems.append(f"had already exited (status {p.returncode}) "
                                      "before SIGTERM")
        self.returncode = p.returncode
        self._log.close()
        if self.returncode != 0 and not self.stop_problems:
            self.stop_problems.append(f"exit status {self.returncode}")
        for path in (self.s.socket, self.s.killfile):
            if path.exists():
                self.stop_problems.append(f"left {path.name} behind")
