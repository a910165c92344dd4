#!/usr/bin/env python3
"""Benchmarks: the project's lamd side by side with Debian's C lamd (issue 5).

Run as root from the repository root::

    bench/run.sh            # full run (about 4-6 minutes here)
    bench/run.sh --quick    # smoke run (about 2-3 minutes)

It installs what it needs (packaging/setup.sh plus python3-matplotlib),
builds bench/c/lambench.c with mpicc.lam, and for every workload round starts
a fresh daemon as an unprivileged user, C lamd first (lamboot), then ours
(``python3 -m lamd``), alternating A B A B, and runs the *same* client binary
against each. Results: bench/results/latest.json, docs/performance.md and the
plots docs/perf-*.png.

Jobs (issue 10): the MPI programs of tests/c/mpi (hello, pingpong) built
with mpicc.lam and run through the stock ``mpirun``: ``mpirun -np 4`` of a
trivial program (wall time from mpirun's start to its exit), and under
``-ssi rpi lamd`` (every MPI message through the daemon) ping-pong latency
(64 B), streaming bandwidth (1 MiB) and bandwidth with four 1 MiB
MPI_Isend in flight, on both daemons.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOCS = ROOT / "docs"
PY = "/usr/bin/python3"
#: lamd@.service's ExecStart= (/usr/lib/lamd/lamd-start in the package)
LAUNCHER = "packaging/lamd-start"
LAMD_COMMIT = "?"
KIB, MIB = 1024, 1024 * 1024


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- setup ----
def install() -> None:
    log("installing packages (packaging/setup.sh + python3-matplotlib)")
    subprocess.run(["sh", str(ROOT / "packaging" / "setup.sh")], check=True)
    ok = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "python3-matplotlib"],
                        capture_output=True, text=True).stdout
    if "install ok installed" not in ok:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        "python3-matplotlib"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", name], check=True)
        return pwd.getpwnam(name)


def build(work: Path) -> Path:
    exe = work / "lambench"
    log("building bench/c/lambench.c with mpicc.lam")
    subprocess.run(["mpicc.lam", "-O2", "-Wall", "-o", str(exe), str(BENCH / "c" / "lambench.c")],
                   check=True)
    pkg = work / "pkg"
    pkg.mkdir()
    # the committed daemon (HEAD), never half-edited files in the work tree
    rev = os.environ.get("LAMDBENCH_REV", "HEAD")
    compiled = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:setup.py"],
                              capture_output=True).returncode == 0
    paths = ["lamd", "setup.py"] if compiled else ["lamd"]
    # lamd@.service's ExecStart= (issue 13), where the revision has it
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:{LAUNCHER}"],
                      capture_output=True).returncode == 0:
        paths.append(LAUNCHER)
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, *paths],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(pkg)], input=tar, check=True)
    global LAMD_COMMIT
    LAMD_COMMIT = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                                 capture_output=True, text=True).stdout.strip()
    if compiled and os.environ.get("LAMD_PURE", "") in ("", "0"):
        # the hot path as the package ships it (mypyc, issue 13)
        log("compiling the hot path (setup.py build_ext --inplace)")
        subprocess.run([PY, "setup.py", "build_ext", "--inplace"], cwd=pkg, check=True,
                       stdout=subprocess.DEVNULL)
    log(f"daemon under test: lamd/ at {rev} = {LAMD_COMMIT}"
        f" ({'compiled' if list(pkg.glob('lamd/*__mypyc*.so')) else 'pure Python'})")
    for p in [work, *work.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o055)
    return exe


MPI_PROGS = ("hello", "pingpong", "bandwidth")


def build_mpi() -> Path:
    """tests/c/mpi's hello, pingpong and bandwidth, in a directory of their own."""
    d = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    log(f"building tests/c/mpi/{{{','.join(MPI_PROGS)}}}.c with mpicc.lam into {d}")
    for name in MPI_PROGS:
        subprocess.run(["mpicc.lam", "-O2", "-Wall", "-o", str(d / name),
                        str(ROOT / "tests" / "c" / "mpi" / f"{name}.c")], check=True)
    for p in [d, *d.iterdir()]:
        p.chmod(0o755)
    return d


# -------------------------------------------------------------- daemons ----
def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


class Daemon:
    name = "?"

    def __init__(self, user: pwd.struct_passwd, work: Path) -> None:
        self.user = user
        self.work = work
        self.prefix = ""
        self.pid = 0

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "HOME": self.user.pw_dir, "USER": self.user.pw_name,
                "LOGNAME": self.user.pw_name, "LAM_MPI_SESSION_PREFIX": self.prefix,
                "LANG": "C.UTF-8"}

    def _mkprefix(self) -> None:
        self.prefix = tempfile.mkdtemp(prefix=f"lamdbench-{self.name}-", dir="/tmp")
        os.chown(self.prefix, self.user.pw_uid, self.user.pw_gid)

    def socket_path(self) -> str:
        return os.path.join(self.prefix, f"lam-{self.user.pw_name}@{platform.node()}",
                            "lam-kernel-socket")

    def run(self, args: list[str], timeout: float, on_stderr=None) -> dict:
        """Run a client as the user; returns its JSON line."""
        p = subprocess.Popen(args, user=self.user.pw_uid, group=self.user.pw_gid,
                             extra_groups=[], env=self.env(), cwd="/tmp",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        err_lines: list[str] = []

        def pump() -> None:
            assert p.stderr
            for line in p.stderr:
                err_lines.append(line)
                if on_stderr:
                    on_stderr(line)
        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            out = p.stdout.read() if p.stdout else ""
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise RuntimeError(f"{args[1]} timed out on {self.name}")
        t.join(5)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(args[1:])} failed on {self.name} (rc {p.returncode}): "
                               + "".join(err_lines[-5:]))
        return json.loads(out.strip().splitlines()[-1])

    def run_tool(self, args: list[str], timeout: float) -> tuple[int, str, str, float]:
        """Run a LAM tool (mpirun) as the user, output to files (never
        pipes: a rank or a daemon could hold them open); returns (rc,
        stdout, stderr, wall seconds from start to exit)."""
        with tempfile.TemporaryFile("w+") as o, tempfile.TemporaryFile("w+") as e:
            t0 = time.perf_counter()
            p = subprocess.Popen(args, user=self.user.pw_uid, group=self.user.pw_gid,
                                 extra_groups=[], env=self.env(), cwd="/tmp",
                                 stdin=subprocess.DEVNULL, stdout=o, stderr=e)
            # the exit seen through a pidfd: Popen.wait(timeout=...) polls with
            # sleeps growing to 50 ms, which rounded every mpirun's wall time
            # up to the next step of that poll (the C lamd's runs of about 513
            # ms to 517, ours of 529 to 567: the -np 4 row compared those steps
            # up to dc2f04e)
            pidfd = os.pidfd_open(p.pid)
            try:
                done = select.select([pidfd], [], [], timeout)[0]
                wall = time.perf_counter() - t0
            finally:
                os.close(pidfd)
            if not done:
                p.kill()
                p.wait()
                raise RuntimeError(f"{' '.join(args)} timed out after {timeout:.0f} s "
                                   f"on {self.name}")
            rc = p.wait()
            o.seek(0)
            e.seek(0)
            return rc, o.read(), e.read(), wall

    def wait_socket(self, timeout: float = 20.0) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if os.path.exists(self.socket_path()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no socket at {self.socket_path()}")


class CDaemon(Daemon):
    name = "C"

    def start(self) -> None:
        self._mkprefix()
        hostfile = self.work / "hostfile"
        hostfile.write_text(platform.node() + "\n")
        hostfile.chmod(0o644)
        with open(self.work / "lamboot.log", "a") as logf:
            # never a pipe: lamd inherits lamboot's stdout and would hold it open
            # LD_BIND_NOW for its ranks, as ours gives mpirun's ranks by itself
            # (lamd.jobs.wire.child_environment): lazily bound, Debian's LAM
            # MPI fails MPI_INIT at random ("Bad address") on either daemon
            subprocess.run(["lamboot", str(hostfile)], user=self.user.pw_uid,
                           group=self.user.pw_gid, extra_groups=[],
                           env={**self.env(), "LD_BIND_NOW": "1"}, cwd="/tmp",
                           stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, check=True,
                           timeout=60)
        self.wait_socket()
        self.pid = self._find_pid()

    def _find_pid(self) -> int:
        want = f"LAM_MPI_SESSION_PREFIX={self.prefix}".encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if Path(f"/proc/{d}/comm").read_text().strip() != "lamd":
                    continue
                if os.stat(f"/proc/{d}").st_uid != self.user.pw_uid:
                    continue
                if want in Path(f"/proc/{d}/environ").read_bytes().split(b"\0"):
                    return int(d)
            except OSError:
                continue
        raise RuntimeError("cannot find the C lamd's pid")

    def stop(self, halt_timeout: float = 30) -> None:
        self.killed = False
        with open(self.work / "lamboot.log", "a") as logf:
            try:
                subprocess.run(["lamhalt"], user=self.user.pw_uid, group=self.user.pw_gid,
                               extra_groups=[], env=self.env(), cwd="/tmp",
                               stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                               timeout=halt_timeout)
            except subprocess.TimeoutExpired:
                log(f"C lamd: lamhalt hung for {halt_timeout:.0f} s, SIGKILL")
        for _ in range(100):
            if not os.path.exists(f"/proc/{self.pid}"):
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = True
            except ProcessLookupError:
                pass
        shutil.rmtree(self.prefix, ignore_errors=True)


class OurDaemon(Daemon):
    name = "ours"

    def start(self) -> None:
        self._mkprefix()
        env = {**self.env(), "PYTHONPATH": str(self.work / "pkg")}
        self.proc = subprocess.Popen([PY, "-m", "lamd", "--log-level", "info"],
                                     user=self.user.pw_uid, group=self.user.pw_gid,
                                     extra_groups=[], env=env, cwd="/tmp",
                                     stdin=subprocess.DEVNULL,
                                     stdout=open(self.work / "ours.log", "a"),
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.wait_socket()
        self.wait_jobs()

    def wait_jobs(self, timeout: float = 30.0) -> None:
        """Wait until the jobs process has attached its five services (the
        kill file lists a second pid five times): its start-up (a Python
        interpreter importing the job services) must not overlap a
        measurement. The C lamd's services are in its one process."""
        killfile = os.path.join(os.path.dirname(self.socket_path()), "lam-killfile")
        end = time.time() + timeout
        while time.time() < end:
            try:
                pids = [int(x) for x in open(killfile).read().split()]
            except (OSError, ValueError):
                pids = []
            if len([p for p in pids[1:] if p != self.pid]) >= 5:
                return
            time.sleep(0.05)
        raise RuntimeError(f"ours: the jobs process did not attach within {timeout:.0f} s")

    def stop(self, halt_timeout: float = 30) -> None:
        self.killed = False
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.killed = True
            self.proc.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


# ------------------------------------------------------------ start-up -----
def startup_c(d: "CDaemon", exe: str) -> dict:
    """``lamboot`` (hboot starts the C lamd and waits for it), then one client
    attaches: launch to first reply."""
    t0 = time.perf_counter()
    d.start()
    try:
        first = d.run([exe, "first"], 60)
        wall = time.perf_counter() - t0
    finally:
        d.stop()
    return {"launch_to_first_reply_ms": wall * 1e3, "first_reply_ms": first["first_reply_ms"]}


def startup_ours(d: "OurDaemon", exe: str) -> dict:
    """Ours twice: launched by hand (``python3 -m lamd``, the client connecting
    as soon as the socket is there), and under socket activation
    (``systemd-socket-activate``, as ``lamd@.socket`` does: the daemon is
    started by the first connection, which the client times to its reply;
    the command is ``lamd@.service``'s: :func:`activation_argv`).
    Both with the package's .pyc files written (warm)."""
    out: dict = {}
    # by hand
    d._mkprefix()
    env = {**d.env(), "PYTHONPATH": str(d.work / "pkg")}
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "lamd", "--log-level", "warning"], user=d.user.pw_uid,
                            group=d.user.pw_gid, extra_groups=[], env=env, cwd="/tmp",
                            stdin=subprocess.DEVNULL, stdout=open(d.work / "ours.log", "a"),
                            stderr=subprocess.STDOUT)
    try:
        end = time.time() + 20
        while not os.path.exists(d.socket_path()):
            if time.time() > end or proc.poll() is not None:
                raise RuntimeError("ours: no socket after start")
            time.sleep(0.001)
        d.run([exe, "first"], 60)
        out["launch_to_first_reply_ms"] = (time.perf_counter() - t0) * 1e3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(d.prefix, ignore_errors=True)
    # socket activation
    d._mkprefix()
    sdir = os.path.dirname(d.socket_path())
    os.mkdir(sdir, 0o700)
    os.chown(sdir, d.user.pw_uid, d.user.pw_gid)
    proc = subprocess.Popen(["systemd-socket-activate", "-E", "PYTHONPATH", "-l", d.socket_path(),
                             *activation_argv(d.work / "pkg"), "--log-level", "warning",
                             "--jobs=external"],
                            user=d.user.pw_uid, group=d.user.pw_gid, extra_groups=[], env=env,
                            cwd="/tmp", stdin=subprocess.DEVNULL,
                            stdout=open(d.work / "ours.log", "a"), stderr=subprocess.STDOUT)
    try:
        end = time.time() + 20
        while not os.path.exists(d.socket_path()):
            if time.time() > end or proc.poll() is not None:
                raise RuntimeError("systemd-socket-activate: no socket")
            time.sleep(0.01)
        time.sleep(0.2)  # listening, nothing started yet
        out["activation_first_reply_ms"] = d.run([exe, "first"], 60)["first_reply_ms"]
    finally:
        proc.send_signal(signal.SIGTERM)  # it exec'd the daemon: same pid
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d.prefix, ignore_errors=True)
    return out


def activation_argv(pkg: Path) -> list[str]:
    """What ``lamd@.service`` starts (its ``ExecStart=``,
    ``/usr/lib/lamd/lamd-start``: ``python3 -IS`` and the package's directory
    on ``sys.path``), with *pkg* first on the path instead of the installed
    package: -I ignores PYTHONPATH. A revision without the launcher: ``python3
    -m lamd`` as before."""
    launcher = pkg / LAUNCHER
    if not launcher.exists():
        return [PY, "-m", "lamd"]
    return [PY, "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(pkg)!r}); "
            f"exec(compile(open({str(launcher)!r}).read(), {str(launcher)!r}, 'exec'))"]


def warm_pyc(pkg: Path) -> None:
    """Write the package's .pyc files, readable by the benchmark user."""
    subprocess.run([PY, "-m", "compileall", "-q", str(pkg)], check=True)
    for p in [pkg, *pkg.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o055)


# ------------------------------------------------------------ workloads ----
class Workloads:
    def __init__(self, exe: Path, quick: bool) -> None:
        self.exe = str(exe)
        self.quick = quick
        q = quick
        self.pp_sizes = [0, 64, KIB, 64 * KIB, MIB]
        self.pp_iters = {0: 1000 if q else 5000, 64: 1000 if q else 5000,
                         KIB: 1000 if q else 5000, 64 * KIB: 300 if q else 2000,
                         MIB: 50 if q else 200}
        self.stream = {MIB: 100 if q else 400, 16 * MIB: 8 if q else 40}
        self.attach_iters = 300 if q else 2000
        self.routed_iters = {64: 300 if q else 2000, 64 * KIB: 100 if q else 500}
        self.pair_secs = 1.0 if q else 3.0
        self.idle_iters = 1000 if q else 5000
        self.hostile_secs = 1.0 if q else 3.0
        self.hostile_deadline = 5.0

    def pingpong(self, d: Daemon) -> dict:
        out = {}
        for s in self.pp_sizes:
            n = self.pp_iters[s]
            out[str(s)] = d.run([self.exe, "pingpong", str(s), str(n), str(max(5, n // 10))], 600)
        return out

    def streams(self, d: Daemon) -> dict:
        return {str(s): d.run([self.exe, "stream", str(s), str(c + 1)], 600)
                for s, c in self.stream.items()}

    def attach(self, d: Daemon) -> dict:
        return d.run([self.exe, "attach", str(self.attach_iters)], 600)

    ROUTED_SIZES = (64, 64 * KIB)

    def routed(self, d: Daemon) -> dict:
        """kinit clients ping-pong with nsend/nrecv through the router and bufferd."""
        out = {}
        for s in self.ROUTED_SIZES:
            n = self.routed_iters[s]
            out[str(s)] = d.run([self.exe, "npingpong", str(s), str(n), str(max(5, n // 10))], 600)
        return out

    def pairs(self, d: Daemon, n: int) -> dict:
        seen: dict[str, int] = {}

        def on_err(line: str) -> None:
            if line.startswith("ALL_ATTACHED"):
                seen.update(proc_mem(d.pid))
        r = d.run([self.exe, "pairs", str(n), str(self.pair_secs), "64"], 900, on_err)
        r["rss_attached"] = seen.get("VmRSS", 0)
        return r

    def idle(self, d: Daemon, n: int) -> dict:
        seen: dict[str, int] = {}

        def on_err(line: str) -> None:
            if line.startswith("ALL_ATTACHED"):
                seen.update(proc_mem(d.pid))
        r = d.run([self.exe, "idle", str(n), str(self.idle_iters), "64"], 900, on_err)
        r["rss_attached"] = seen.get("VmRSS", 0)
        return r

    def capacity(self, d: Daemon) -> dict:
        return d.run([self.exe, "capacity", "300"], 300)

    # jobs (issue 10): stock mpirun and the MPI programs of tests/c/mpi
    def mpi_setup(self, mpidir: Path) -> None:
        q = self.quick
        self.mpidir = mpidir
        self.mpirun_n = 5 if q else 15
        self.mpilat_reps = 300 if q else 2000
        self.mpibw_reps = 10 if q else 40
        self.mpiwin_iters = 4 if q else 16

    def _mpirun(self, d: Daemon, args: list[str], timeout: float) -> tuple[str, float]:
        rc, out, err, wall = d.run_tool(["mpirun", *args], timeout)
        if rc != 0:
            raise RuntimeError(f"mpirun {' '.join(args)} failed on {d.name} (rc {rc}): "
                               + (err or out)[-600:])
        return out, wall

    def mpirun(self, d: Daemon) -> dict:
        """mpirun -np 4 hello, N times: wall time from mpirun's start to exit."""
        walls = []
        for _ in range(self.mpirun_n):
            out, wall = self._mpirun(d, ["-np", "4", str(self.mpidir / "hello")], 60)
            ranks = sorted(ln.split()[1] for ln in out.splitlines() if ln.startswith("OUT "))
            if ranks != [f"rank={r}" for r in range(4)]:
                raise RuntimeError(f"mpirun -np 4 hello on {d.name}: output {out!r}")
            walls.append(wall)
        return {"walls_s": walls, "median_s": statistics.median(walls), "min_s": min(walls)}

    def mpilat(self, d: Daemon) -> dict:
        """-ssi rpi lamd ping-pong, 64 B, every byte checked: median round trip."""
        out, _ = self._mpirun(d, ["-np", "2", "-ssi", "rpi", "lamd", str(self.mpidir / "pingpong"),
                                  str(self.mpilat_reps), "64"], 300)
        m = re.search(r"^PP size=64 reps=\d+ rtt_med_us=([\d.]+) rtt_min_us=([\d.]+) ", out, re.M)
        if not m or not out.endswith("PP OK\n"):
            raise RuntimeError(f"pingpong on {d.name}: {out[-400:]!r}")
        return {"rtt_med_us": float(m.group(1)), "rtt_min_us": float(m.group(2)),
                "reps": self.mpilat_reps}

    def mpibw(self, d: Daemon) -> dict:
        """-ssi rpi lamd streaming of 1 MiB MPI_Send's, every byte checked."""
        out, _ = self._mpirun(d, ["-np", "2", "-ssi", "rpi", "lamd", str(self.mpidir / "pingpong"),
                                  "-s", str(self.mpibw_reps), str(MIB)], 300)
        m = re.search(r"^ST size=1048576 reps=\d+ secs=([\d.]+) MBps=([\d.]+)$", out, re.M)
        if not m or not out.endswith("PP OK\n"):
            raise RuntimeError(f"pingpong -s on {d.name}: {out[-400:]!r}")
        return {"MBps": float(m.group(2)), "secs": float(m.group(1)), "reps": self.mpibw_reps}

    def mpiwin(self, d: Daemon) -> dict:
        """-ssi rpi lamd, four 1 MiB MPI_Isend in flight at once, every byte
        checked (the lamd RPI's KTRY packet sends to bufferd)."""
        out, _ = self._mpirun(d, ["-np", "2", "-ssi", "rpi", "lamd", str(self.mpidir / "bandwidth"),
                                  "4", str(self.mpiwin_iters), str(MIB)], 300)
        m = re.search(r"^BW size=1048576 window=4 iters=\d+ MBps=([\d.]+)$", out, re.M)
        if not m or not out.endswith("BW OK\n"):
            raise RuntimeError(f"bandwidth on {d.name}: {out[-400:]!r}")
        return {"MBps": float(m.group(1)), "iters": self.mpiwin_iters}

    # hostile clients (issue 6): one 64 B pair measures for hostile_secs while
    # others misbehave; the client gives up waiting at the deadline, kills
    # every process it started and reports what the pair completed by then.
    HOSTILE = {"baseline": ("baseline", 0), "flood-1": ("flood", 1),
               "flood-4": ("flood", 4), "stall": ("stall", 0)}
    HOSTILE_BIG = 8 * MIB

    def hostile(self, d: Daemon, situation: str) -> dict:
        mode, nflood = self.HOSTILE[situation]
        return d.run([self.exe, "hostile", mode, str(self.hostile_secs),
                      str(self.hostile_deadline - self.hostile_secs), "64", str(nflood),
                      str(self.HOSTILE_BIG)], self.hostile_deadline + 60)


def run_round(d: Daemon, fn, *args, halt_timeout: float = 30) -> dict:
    d.start()
    alive = True
    try:
        time.sleep(0.2)
        m0 = proc_mem(d.pid)
        c0 = proc_cpu(d.pid)
        t0 = time.time()
        res = fn(d, *args)
        wall = time.time() - t0
        try:
            c1 = proc_cpu(d.pid)
            m1 = proc_mem(d.pid)
        except (OSError, KeyError):     # the daemon died during the workload
            alive, c1, m1 = False, c0, {"VmHWM": m0["VmRSS"]}
    finally:
        t_stop = time.time()
        d.stop(halt_timeout)
    return {"result": res, "daemon_cpu_s": c1 - c0, "wall_s": wall,
            "rss_start": m0["VmRSS"], "rss_peak": m1["VmHWM"], "daemon_alive_after": alive,
            "stop_s": round(time.time() - t_stop, 2), "stop_killed": getattr(d, "killed", False)}


def summarize(values: list[float]) -> dict:
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values), "values": values}


# ---------------------------------------------------------------- main -----
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run, about 2-3 minutes")
    ap.add_argument("--rounds", type=int, help="A/B rounds per workload (default 3, quick 2)")
    ap.add_argument("--rounds-big", type=int, default=2,
                    help="at most this many rounds for 1,000+ busy pairs (2,500: one round)")
    ap.add_argument("--user", default="lamtest", help="unprivileged user to run daemons and clients")
    ap.add_argument("--no-install", action="store_true", help="skip the apt-get step")
    ap.add_argument("--pairs-both", default="2,16,128", help="pair counts run on both daemons")
    ap.add_argument("--pairs-ours", help="pair counts run on ours alone (default 250,1000,2500; quick 250,1000)")
    ap.add_argument("--idle-both", default="0,250", help="idle attached clients beside one pair, both daemons")
    ap.add_argument("--idle-ours", help="idle attached clients, ours alone (default 1000,5000; quick 1000)")
    ap.add_argument("--only", help="comma list of workloads: pingpong,stream,attach,routed,startup,"
                    "pairs,idle,capacity,hostile,mpirun,mpilat,mpibw,mpiwin")
    ap.add_argument("--out", default=str(BENCH / "results" / "latest.json"))
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild the summary, docs and plots from --out's raw data; run nothing")
    a = ap.parse_args()
    if a.report_only:
        return report_only(Path(a.out), docs=not a.no_docs)
    if os.getuid() != 0:
        sys.exit("run as root (it installs packages and runs the daemons as --user)")
    if not a.no_install:
        install()
    user = ensure_user(a.user)
    # Ours spends two descriptors per client (socket + pidfd) and raises its
    # soft limit to the hard one: 10,000 clients need more than this VM's
    # default hard limit of 20,000, so raise it (root may) for everything we
    # start. The C lamd is capped by its process table and FD_SETSIZE anyway.
    import resource
    want = 65536
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, want))
        except (ValueError, OSError) as e:
            log(f"cannot raise RLIMIT_NOFILE's hard limit to {want}: {e}")
    rounds = a.rounds or (2 if a.quick else 3)
    pairs_both = [int(x) for x in a.pairs_both.split(",") if x]
    pairs_ours = [int(x) for x in (a.pairs_ours or ("250,1000" if a.quick else "250,1000,2500")).split(",") if x]
    only = set(a.only.split(",")) if a.only else {"pingpong", "stream", "attach", "routed",
                                                  "startup", "pairs", "idle",
                                                  "capacity", "hostile", "mpirun", "mpilat", "mpibw",
                                                  "mpiwin"}
    idle_both = [int(x) for x in a.idle_both.split(",") if x]
    idle_ours = [int(x) for x in (a.idle_ours or ("1000" if a.quick else "1000,5000")).split(",") if x]
    work = Path(tempfile.mkdtemp(prefix="lamdbench-"))
    work.chmod(0o755)
    exe = build(work)
    W = Workloads(exe, a.quick)
    daemons = [CDaemon(user, work), OurDaemon(user, work)]
    raw: dict[str, dict[str, list]] = {}
    failures: list[dict] = []
    partial = Path(a.out).with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def big(n: int) -> int:
        return 1 if n >= 2500 else min(rounds, a.rounds_big) if n >= 1000 else rounds

    def ab(key: str, fn, *args, which=daemons, nrounds=None, halt_timeout: float = 30) -> None:
        raw[key] = {d.name: [] for d in which}
        nrounds = nrounds or rounds
        for r in range(nrounds):
            for d in which:     # A B A B: C then ours, every round
                for attempt in range(3):
                    try:
                        rec = run_round(d, fn, *args, halt_timeout=halt_timeout)
                        break
                    except RuntimeError as e:
                        log(f"{key} round {r + 1} on {d.name} FAILED (attempt {attempt + 1}): "
                            f"{str(e).splitlines()[0][:200]}")
                        tail = ""
                        if d.name == "ours":
                            try:
                                tail = "".join(open(work / "ours.log").readlines()[-8:])
                            except OSError:
                                pass
                        failures.append({"workload": key, "round": r + 1, "daemon": d.name,
                                         "error": str(e)[:2000], "daemon_log_tail": tail})
                else:
                    continue
                raw[key][d.name].append(rec)
                partial.write_text(json.dumps({"raw": raw}, indent=1) + "\n")
            log(f"{key} round {r + 1}/{nrounds} done")

    if "capacity" in only:
        raw["capacity"] = {d.name: [run_round(d, W.capacity)] for d in daemons}
        log(f"capacity: { {k: v[0]['result'] for k, v in raw['capacity'].items()} }")
    if "pingpong" in only:
        ab("pingpong", W.pingpong)
    if "stream" in only:
        ab("stream", W.streams)
    if "attach" in only:
        ab("attach", W.attach)
    if "routed" in only:
        ab("routed", W.routed)
    if "startup" in only:
        warm_pyc(work / "pkg")
        raw["startup"] = {d.name: [] for d in daemons}
        for r in range(rounds):
            raw["startup"]["C"].append({"result": startup_c(daemons[0], W.exe)})
            raw["startup"]["ours"].append({"result": startup_ours(daemons[1], W.exe)})
        log(f"startup: {raw['startup']}")
    if "pairs" in only:
        for n in pairs_both:
            ab(f"pairs-{n}", W.pairs, n)
        for n in pairs_ours:
            # the C lamd's table holds 288 processes (273 attachable): ours alone
            ab(f"pairs-{n}", W.pairs, n, which=[daemons[1]],
               nrounds=big(n))
    if "hostile" in only:
        for sit in W.HOSTILE:
            ab(f"hostile-{sit}", W.hostile, sit, halt_timeout=10)
    if "idle" in only:
        for n in idle_both:
            ab(f"idle-{n}", W.idle, n)
        for n in idle_ours:
            # every round: a p99 of one round is one sample of the outliers
            # (5,000 idle at 01de445: 353 us once, 116-143 us in reruns), and
            # a round of idle clients is cheap (about 25 s for 5,000)
            ab(f"idle-{n}", W.idle, n, which=[daemons[1]])
    jobs = [k for k in ("mpirun", "mpilat", "mpibw", "mpiwin") if k in only]
    if jobs:
        W.mpi_setup(build_mpi())
        for k in jobs:
            # -ssi rpi lamd can hang the C kernel: lamhalt then hangs too
            ab(k, getattr(W, k), halt_timeout=10)
        shutil.rmtree(W.mpidir, ignore_errors=True)
    elapsed = time.time() - t_start
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw["failures"] = failures  # type: ignore[assignment]
    out.write_text(json.dumps({"raw": raw}, indent=1) + "\n")  # kept even if analysis fails
    res = analyse(raw, W, rounds, pairs_both, pairs_ours, idle_both + idle_ours)
    res["meta"] = machine_info()
    res["meta"].update({"quick": a.quick, "rounds": rounds, "elapsed_s": round(elapsed, 1),
                        "command": "bench/run.sh" + (" --quick" if a.quick else ""),
                        "pair_seconds": W.pair_secs, "lamd_commit": LAMD_COMMIT})
    partial.unlink(missing_ok=True)
    out.write_text(json.dumps({"summary": res, "raw": raw}, indent=1) + "\n")
    log(f"wrote {out}")
    if not a.no_docs:
        write_docs(res)
    print_table(res)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def report_only(path: Path, docs: bool = True) -> int:
    data = json.loads(path.read_text())
    raw, old = data["raw"], data.get("summary", {})
    meta = old.get("meta") or {**machine_info(), "quick": False, "rounds": 0, "elapsed_s": 0,
                               "command": "bench/run.sh", "pair_seconds": 0}
    W = Workloads(Path("lambench"), meta["quick"])
    pairs = sorted(int(k.split("-")[1]) for k in raw if k.startswith("pairs-"))
    raw.setdefault("failures", [])
    idles = sorted(int(k.split("-")[1]) for k in raw if k.startswith("idle-"))
    both = [n for n in pairs if "C" in raw[f"pairs-{n}"]]
    res = analyse(raw, W, meta["rounds"], both, [n for n in pairs if n not in both], idles)
    res["meta"] = meta
    path.write_text(json.dumps({"summary": res, "raw": raw}, indent=1) + "\n")
    if docs:
        write_docs(res)
    print_table(res)
    return 0


def machine_info() -> dict:
    info = {"kernel": platform.release(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "host": platform.node()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        info["os"] = [l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release")
                      if l.startswith("PRETTY_NAME")][0]
        info["lam"] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "lam-runtime"],
                                     capture_output=True, text=True).stdout
        info["system_python"] = subprocess.run([PY, "-V"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def analyse(raw: dict, W: Workloads, rounds: int, pairs_both: list[int], pairs_ours: list[int],
            idles: list[int]) -> dict:
    rows: list[dict] = []
    raw = dict(raw)  # a view with the activation rows on their own (ours only)
    if "startup" in raw:
        raw["startup-activation"] = {"ours": raw["startup"].get("ours", [])}

    def add(group: str, label: str, unit: str, better: str, getter, key: str) -> None:
        if key not in raw:
            return
        row = {"group": group, "metric": label, "unit": unit, "better": better}
        for dn, recs in raw[key].items():
            if recs:
                row[dn] = summarize([getter(r) for r in recs])
        if "C" in row and "ours" in row and row["C"]["median"]:
            row["ratio"] = row["ours"]["median"] / row["C"]["median"]
        rows.append(row)

    for s in W.pp_sizes:
        add("ping-pong round trip", f"{fmt_size(s)} p50", "µs", "lower",
            lambda r, s=s: r["result"][str(s)]["p50_us"], "pingpong")
    for s in W.pp_sizes:
        add("ping-pong round trip", f"{fmt_size(s)} p99", "µs", "lower",
            lambda r, s=s: r["result"][str(s)]["p99_us"], "pingpong")
    for s in W.stream:
        add("one-way streaming", f"{fmt_size(s)} messages", "MB/s", "higher",
            lambda r, s=s: r["result"][str(s)]["MBps"], "stream")
    add("attach+detach", "connect, attach, detach, close", "per s", "higher",
        lambda r: r["result"]["per_s"], "attach")
    for s in W.ROUTED_SIZES:
        for q in ("p50", "p99"):
            add("routed round trip (kinit, nsend/nrecv via router and bufferd)",
                f"routed {fmt_size(s)} {q}", "µs", "lower",
                lambda r, s=s, q=q: r["result"][str(s)][f"{q}_us"], "routed")
    add("start-up", "launch to first reply (C: lamboot; ours: python3 -m lamd)", "ms", "lower",
        lambda r: r["result"]["launch_to_first_reply_ms"], "startup")
    add("start-up", "socket activation: connect to first reply (warm)", "ms", "lower",
        lambda r: r["result"]["activation_first_reply_ms"], "startup-activation")
    for n in pairs_both + pairs_ours:
        k = f"pairs-{n}"
        add("many pairs (64 B)", f"{n} pairs: messages/s", "msg/s", "higher",
            lambda r: r["result"]["msgs_per_s"], k)
        add("many pairs (64 B)", f"{n} pairs: p50", "µs", "lower", lambda r: r["result"]["p50_us"], k)
        add("many pairs (64 B)", f"{n} pairs: p99", "µs", "lower", lambda r: r["result"]["p99_us"], k)
    for n in idles:
        k = f"idle-{n}"
        add("one active pair beside idle attached clients (64 B)", f"{n} idle: p50", "µs", "lower",
            lambda r: r["result"]["p50_us"], k)
        add("one active pair beside idle attached clients (64 B)", f"{n} idle: p99", "µs", "lower",
            lambda r: r["result"]["p99_us"], k)
    for n in idles:
        if n:
            add("daemon resources", f"{n} idle clients: RSS growth per attached client", "bytes",
                "lower", lambda r, n=n: max(0, r["result"]["rss_attached"] - r["rss_start"]) / n,
                f"idle-{n}")
    for n in pairs_both + pairs_ours:
        k = f"pairs-{n}"
        add("daemon resources", f"{n} pairs: peak RSS", "MiB", "lower",
            lambda r: r["rss_peak"] / MIB, k)
        add("daemon resources", f"{n} pairs: CPU s per 10^6 messages", "s", "lower",
            lambda r: r["daemon_cpu_s"] / max(1, r["result"]["messages"]) * 1e6, k)
    for n in pairs_both + pairs_ours:
        k = f"pairs-{n}"
        add("daemon resources", f"{n} pairs: RSS growth per attached client", "bytes", "lower",
            lambda r, n=n: max(0, r["result"]["rss_attached"] - r["rss_start"]) / (2 * n), k)
    add("daemon resources", "idle daemon: RSS before the first client", "MiB", "lower",
        lambda r: r["rss_start"] / MIB, "pingpong")
    add("daemon resources", "ping-pong workload: CPU s per 10^6 messages", "s", "lower",
        lambda r: r["daemon_cpu_s"] / sum(2 * (W.pp_iters[s] + max(5, W.pp_iters[s] // 10))
                                          for s in W.pp_sizes) * 1e6, "pingpong")
    add("jobs (stock mpirun)", JOB_ROWS["mpirun"], "ms", "lower",
        lambda r: r["result"]["median_s"] * 1000, "mpirun")
    add("jobs (stock mpirun)", JOB_ROWS["mpilat"], "µs", "lower",
        lambda r: r["result"]["rtt_med_us"], "mpilat")
    add("jobs (stock mpirun)", JOB_ROWS["mpibw"], "MB/s", "higher",
        lambda r: r["result"]["MBps"], "mpibw")
    add("jobs (stock mpirun)", JOB_ROWS["mpiwin"], "MB/s", "higher",
        lambda r: r["result"]["MBps"], "mpiwin")
    out = {"rows": rows, "failures": raw.get("failures", [])}
    if "capacity" in raw:
        out["capacity"] = {k: v[0]["result"] for k, v in raw["capacity"].items()}
    out["targets"] = targets(rows, pairs_both, pairs_ours, idles)
    out["hostile"] = hostile_summary(raw)
    out["targets"] += hostile_targets(out["hostile"])
    return out


HOSTILE_TEXT = {
    "baseline": "baseline: nothing else running",
    "flood-1": "flood: 1 client loops kstate(getpid())",
    "flood-4": "flood: 4 clients loop kstate(getpid())",
    "stall": "stalled transfer: 8 MiB ksend to a receiver that never reads",
}


def hostile_summary(raw: dict) -> list[dict]:
    """Per situation and daemon: round trips by the deadline, p50/p99 (issue 6)."""
    out = []
    for key in sorted((k for k in raw if k.startswith("hostile-")),
                      key=lambda k: list(HOSTILE_TEXT).index(k[8:]) if k[8:] in HOSTILE_TEXT else 99):
        sit = key[len("hostile-"):]
        row: dict = {"situation": sit, "text": HOSTILE_TEXT.get(sit, sit)}
        for dn, recs in raw[key].items():
            if not recs:
                continue
            res = [r["result"] for r in recs]
            d = {"rounds": len(res), "stalled_rounds": sum(1 for r in res if r["stalled"]),
                 "deadline_s": res[0]["deadline_s"], "window_s": max(r["seconds"] for r in res),
                 "round_trips": summarize([r["round_trips"] for r in res]),
                 "daemon_cpu_s": summarize([r["daemon_cpu_s"] for r in recs]),
                 "stop_s": summarize([r.get("stop_s", 0) for r in recs]),
                 "stop_killed": sum(1 for r in recs if r.get("stop_killed"))}
            for k in ("p50_us", "p99_us"):
                v = [r[k] for r in res if r[k] is not None]
                if v:
                    d[k] = summarize(v)
            if any(r["flooders"] for r in res):
                d["flood_req_per_s"] = summarize([r["flood_req_per_s"] for r in res])
            row[dn] = d
        out.append(row)
    return out


def hostile_targets(h: list[dict]) -> list[dict]:
    t = []
    by = {r["situation"]: r for r in h}
    st, base = by.get("stall", {}).get("ours"), by.get("baseline", {}).get("ours")
    if st:
        ok = st["stalled_rounds"] == 0 and st["round_trips"]["min"] > 0
        x = (f", {st['round_trips']['median'] / base['round_trips']['median']:.2f}× its baseline"
             if base and base["round_trips"]["median"] else "")
        t.append({"target": "a stalled 8 MiB transfer does not stop other clients (ours)",
                  "value": f"{st['round_trips']['median']:,.0f} round trips in "
                           f"{st['window_s']:.0f} s{x}", "holds": ok})
    return t


def hostile_table(h: list[dict]) -> str:
    lines = ["| situation | daemon | round trips (min–max) | p50 µs (min–max) | p99 µs (min–max) | notes |",
             "|---|---|---|---|---|---|"]
    names = {"C": "C lamd", "ours": "ours"}

    def cell(s: dict | None) -> str:
        return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})" if s else "–"
    for r in h:
        for dn in ("C", "ours"):
            d = r.get(dn)
            if not d:
                continue
            notes = []
            if d["stalled_rounds"]:
                notes.append(f"**stalled** in {d['stalled_rounds']} of {d['rounds']} rounds: "
                             f"{d['round_trips']['median']:,.0f} round trips completed in "
                             f"{d['deadline_s']:.0f} s (median)")
            else:
                notes.append(f"finished its {d['window_s']:.0f} s window every round")
            if "flood_req_per_s" in d:
                notes.append(f"flooders got {fmt(d['flood_req_per_s']['median'])} requests/s")
            notes.append(f"daemon CPU {d['daemon_cpu_s']['median']:.2f} s")
            if d["stop_killed"]:
                notes.append(f"daemon SIGKILLed at stop in {d['stop_killed']} rounds")
            lines.append(f"| {r['text']} | {names[dn]} | {cell(d['round_trips'])} | "
                         f"{cell(d.get('p50_us'))} | {cell(d.get('p99_us'))} | {'; '.join(notes)} |")
    return "\n".join(lines)


def hostile_section(res: dict) -> str:
    h = res.get("hostile") or []
    if not h:
        return ""
    cap = res.get("capacity", {})
    cap_txt = ""
    if cap:
        cap_txt = (f"\n\n**Many clients**: the `capacity` workload above attached "
                   f"{cap.get('C', {}).get('attached')} (C lamd) and "
                   f"{cap.get('ours', {}).get('attached')} (ours) of "
                   f"{cap.get('ours', cap.get('C', {})).get('tried')} processes at once (the C "
                   "lamd's table stops at KPMAX 288)")
        def ns(suffix: str, per: int) -> list[str]:
            return [f"{per * int(r['metric'].split()[0]):,}" for r in res.get("rows", [])
                    if r["metric"].endswith(suffix) and "ours" in r
                    and per * int(r["metric"].split()[0]) >= 1000]
        idle, busy = ns(" idle: p99", 1), ns(" pairs: p99", 2)
        parts = ([f"{', '.join(idle)} idle clients beside one pair (`idle` rows)"] if idle else []) + \
                ([f"{', '.join(busy)} busy clients (`many pairs` rows)"] if busy else [])
        cap_txt += (f"; ours also held {' and '.join(parts)}." if parts else ".")
    w = max((d["window_s"] for r in h for d in (r.get("C"), r.get("ours")) if d and not d["stalled_rounds"]),
            default=3)
    dl = max((d["deadline_s"] for r in h for d in (r.get("C"), r.get("ours")) if d), default=5)
    return f"""
## Hostile clients

One ordinary pair (pinger + ponger, liblam `ksend`/`krecv`, 64 B, every byte
checked) ping-pongs for {w:.0f} s while other clients misbehave; p50/p99 are
over the round trips it completed. The pair attaches *before* the hostile
clients start (a stuck C kernel accepts no attach). The client stops waiting
at a hard deadline of {dl:.0f} s, SIGKILLs every process it started (the stuck
receiver and sender included) and reports what the pair completed by then;
the harness then stops the daemon (`lamhalt` bounded to 10 s, then SIGKILL).

* **flood**: 1 or 4 extra attached clients loop `kstate(getpid())` (one
  KQSTATE request and reply each) as fast as they can.
* **stalled transfer**: a receiver posts `krecvfront()` (a KQRECV request)
  for an 8 MiB body and never reads its socket again; a liblam sender
  `ksend`s 8 MiB to it; 0.5 s later the pair starts. The C lamd copies the
  body in `kio_transfer` with blocking writes, so it blocks once the stuck
  receiver's socket buffer is full, and serves nobody.

{hostile_table(h)}{cap_txt}
"""


JOB_ROWS = {
    "mpirun": "mpirun -np 4 trivial program: wall time (median of the round's runs)",
    "mpilat": "-ssi rpi lamd ping-pong 64 B: round trip p50",
    "mpibw": "-ssi rpi lamd streaming 1 MiB MPI_Send: bandwidth",
    "mpiwin": "-ssi rpi lamd four 1 MiB MPI_Isend in flight: bandwidth",
}
JOB_TARGETS = [("mpirun", "mpirun -np 4 wall time ≤ 1.0× C lamd", lambda x: x <= 1.0),
               ("mpilat", "-ssi rpi lamd 64 B latency ≤ 1.0× C lamd", lambda x: x <= 1.0),
               ("mpibw", "-ssi rpi lamd 1 MiB bandwidth ≥ 1.5× C lamd", lambda x: x >= 1.5)]


def find(rows, metric):
    for r in rows:
        if r["metric"] == metric:
            return r
    return None


def targets(rows, pairs_both, pairs_ours, idles) -> list[dict]:
    """The targets of issue 13 (performance round two), which tightened
    issue 5's (64 B ≤ 1.0×, 1 MiB ≥ 1.5×, attach ≥ 1.0×), and issue 10's."""
    t = []
    r = find(rows, "64 B p50")
    if r and "ratio" in r:
        t.append({"target": "64 B round trip ≤ 0.95× C lamd", "value": f"{r['ratio']:.2f}×",
                  "holds": r["ratio"] <= 0.95})
    r = find(rows, "1 MiB messages")
    if r and "ratio" in r:
        t.append({"target": "1 MiB throughput ≥ 2.5× C lamd", "value": f"{r['ratio']:.2f}×",
                  "holds": r["ratio"] >= 2.5})
    r = find(rows, "connect, attach, detach, close")
    if r and "ratio" in r:
        t.append({"target": "attach rate ≥ 1.25× C lamd", "value": f"{r['ratio']:.2f}×",
                  "holds": r["ratio"] >= 1.25})
    cpu = []
    for label, metric in ([("one pair, 0 B-1 MiB", "ping-pong workload: CPU s per 10^6 messages")]
                          + [(f"{n} pairs, 64 B", f"{n} pairs: CPU s per 10^6 messages")
                             for n in pairs_both]):
        r = find(rows, metric)
        if r and "ratio" in r:
            cpu.append((label, r["ratio"]))
    if cpu:
        t.append({"target": "daemon CPU per message ≤ C lamd's, every workload run on both",
                  "value": ", ".join(f"{label}: {x:.2f}×" for label, x in cpu),
                  "holds": all(x <= 1.0 for _, x in cpu)})
    r = find(rows, "idle daemon: RSS before the first client")
    if r and "ours" in r:
        t.append({"target": "idle daemon RSS ≤ 20 MiB (ours)",
                  "value": f"{r['ours']['median']:.1f} MiB", "holds": r["ours"]["median"] <= 20})
    r = find(rows, "routed 64 B p50")
    if r and "ratio" in r:
        t.append({"target": "routed 64 B round trip ≤ 1.0× C lamd", "value": f"{r['ratio']:.2f}×",
                  "holds": r["ratio"] <= 1.0})
    r = find(rows, "socket activation: connect to first reply (warm)")
    if r and "ours" in r:
        t.append({"target": "socket activation, connect to first reply ≤ 40 ms (ours)",
                  "value": f"{r['ours']['median']:.0f} ms", "holds": r["ours"]["median"] <= 40})
    for key, label, ok in JOB_TARGETS:
        r = find(rows, JOB_ROWS[key])
        if r and "ratio" in r:
            t.append({"target": label, "value": f"{r['ratio']:.2f}×", "holds": ok(r["ratio"])})
        elif r:  # failed on a daemon every attempt (the log and "failures" say how)
            t.append({"target": label, "value": "no result on "
                      + " and ".join(dn for dn in ("C", "ours") if dn not in r), "holds": False})
    a = find(rows, "0 idle: p99")
    for n in idles:
        b = find(rows, f"{n} idle: p99")
        if n and a and b and "ours" in a and "ours" in b and n >= 1000:
            x = b["ours"]["median"] / a["ours"]["median"]
            t.append({"target": f"p99 round trip with {n:,} idle clients attached ≤ 2× the two-client p99 (ours)",
                      "value": f"{x:.2f}× ({b['ours']['median']:.0f} vs {a['ours']['median']:.0f} µs)",
                      "holds": x <= 2.0})
    a, b = find(rows, "2 pairs: p99"), find(rows, "1000 pairs: p99")
    if a and b and "ours" in a and "ours" in b:
        x = b["ours"]["median"] / a["ours"]["median"]
        t.append({"target": "(stricter reading) p99 with 1,000 pairs all busy ≤ 2× the 2-pair p99 (ours)",
                  "value": f"{x:.0f}× ({b['ours']['median']:.0f} vs {a['ours']['median']:.0f} µs); "
                           "load-bound: one daemon serialises every pair",
                  "holds": x <= 2.0})
    per = []
    for n in sorted(set(idles)):
        r = find(rows, f"{n} idle clients: RSS growth per attached client")
        if r and "ours" in r and n >= 250:
            per.append((n, r["ours"]["median"]))
    if len(per) >= 2:
        ok = per[-1][1] <= 1.25 * max(v for _, v in per[:-1]) + 1024
        t.append({"target": "memory grows at most linearly with clients (ours)",
                  "value": ", ".join(f"{n} idle clients: {v / 1024:.1f} KiB/client" for n, v in per),
                  "holds": ok})
    if per:
        t.append({"target": "RSS per idle client ≤ 2.5 KiB (ours)",
                  "value": f"at most {max(v for _, v in per) / 1024:.1f} KiB",
                  "holds": max(v for _, v in per) <= 2.5 * 1024})
    return t


def fmt_size(s: int) -> str:
    if s >= MIB:
        return f"{s // MIB} MiB"
    if s >= KIB:
        return f"{s // KIB} KiB"
    return f"{s} B"


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(res: dict) -> str:
    lines = ["| group | metric | unit | C lamd median (min–max) | ours median (min–max) | ours/C | better |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cells = []
        for dn in ("C", "ours"):
            if dn in r:
                s = r[dn]
                cells.append(f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})")
            else:
                cells.append("n/a")
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "–"
        lines.append(f"| {r['group']} | {r['metric']} | {r['unit']} | {cells[0]} | {cells[1]} | {ratio} | {r['better']} |")
    return "\n".join(lines)


def print_table(res: dict) -> None:
    print(table(res))
    for t in res["targets"]:
        verdict = "NOT MEASURED" if t["holds"] is None else "HOLDS" if t["holds"] else "MISSES"
        print(f"{verdict}: {t['target']}: {t['value']}")


def plots(res: dict) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plots")
        return []
    made = []
    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for dn, lab in (("C", "C lamd (LAM 7.1.4)"), ("ours", "lamd (Python)")):
        xs, ys, lo, hi = [], [], [], []
        for s in [0, 64, KIB, 64 * KIB, MIB]:
            r = find(rows, f"{fmt_size(s)} p50")
            if r and dn in r:
                xs.append(max(s, 1)); ys.append(r[dn]["median"])
                lo.append(r[dn]["median"] - r[dn]["min"]); hi.append(r[dn]["max"] - r[dn]["median"])
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=lab)
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("message size, bytes (0 B drawn at 1)"); ax.set_ylabel("round trip p50, µs")
    ax.set_title("Ping-pong round trip vs message size"); ax.grid(True, which="both", alpha=.3)
    ax.legend(); fig.tight_layout()
    fig.savefig(DOCS / "perf-latency.png", dpi=100); plt.close(fig)
    made.append("perf-latency.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for dn, lab in (("C", "C lamd (LAM 7.1.4)"), ("ours", "lamd (Python)")):
        xs, ys = [], []
        for r in rows:
            if r["metric"].endswith("pairs: p99") and dn in r:
                xs.append(2 * int(r["metric"].split()[0])); ys.append(r[dn]["median"])
        if xs:
            ax.plot(xs, ys, marker="o", label=lab + ": all pairs busy")
        xs, ys = [], []
        for r in rows:
            if r["metric"].endswith("idle: p99") and dn in r:
                xs.append(2 + int(r["metric"].split()[0])); ys.append(r[dn]["median"])
        if xs:
            ax.plot(xs, ys, marker="s", linestyle="--", label=lab + ": one busy pair + idle")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("attached clients")
    ax.set_ylabel("round trip p99, µs"); ax.set_title("p99 round trip vs number of clients (64 B)")
    ax.grid(True, which="both", alpha=.3); ax.legend(); fig.tight_layout()
    fig.savefig(DOCS / "perf-p99-clients.png", dpi=100); plt.close(fig)
    made.append("perf-p99-clients.png")
    return made


def write_docs(res: dict) -> None:
    DOCS.mkdir(exist_ok=True)
    made = plots(res)
    m = res["meta"]
    cap = res.get("capacity", {})
    tg = "\n".join(f"| {t['target']} | {t['value']} | "
                   f"{'not measured' if t['holds'] is None else 'holds' if t['holds'] else '**misses**'} |"
                   for t in res["targets"])
    fails = res.get("failures", [])
    fail_txt = ("No client failed: every round of every workload passed verification."
                if not fails else
                f"{len(fails)} round(s) failed and were retried (up to 3 attempts; a round whose "
                "attempts all failed is left out of the medians):\n\n" +
                "\n".join(f"* {f['workload']} round {f['round']} on {f['daemon']}: "
                          f"`{f['error'].splitlines()[0][:160]}`" for f in fails))
    imgs = "\n\n".join(f"![{p}]({p})" for p in made)
    cap_txt = ""
    if cap:
        cap_txt = (f"Measured process-table capacity (attach 300 processes at once): C lamd "
                   f"{cap.get('C', {}).get('attached')}, ours {cap.get('ours', {}).get('attached')}.")
    text = f"""# Performance: lamd (Python) vs Debian's C lamd

Generated by `{m['command']}` (bench/lamdbench.py) — do not edit by hand;
rerun the command to refresh it. Raw numbers: `bench/results/latest.json`.

## Machine

{m.get('os', '?')}, kernel {m['kernel']}, {m['cpus']} CPUs ({m.get('cpu', '?')}),
{m.get('mem_gib', '?')} GiB RAM; LAM {m.get('lam', '?')} (lam-runtime); our daemon on
{m.get('system_python', '?')}, lamd/ as committed at {m.get('lamd_commit', '?')}. Mode: {'quick' if m['quick'] else 'full'},
{m['rounds']} A/B rounds per workload, {m['elapsed_s']:.0f} s in all.
This is a shared 2-core VM: other work on it adds noise, hence the min–max spread.

## How to rerun

    bench/run.sh             # as root: full run (about 4-6 min here)
    bench/run.sh --quick     # about 2-3 min smoke run
    bench/run.sh --help      # rounds, pair counts, workloads, user

`bench/run.sh` installs what it needs (`packaging/setup.sh` plus
`python3-matplotlib`), builds `bench/c/lambench.c` with `mpicc.lam`, creates
the unprivileged user `lamtest` if missing, and for every round of every
workload starts a fresh daemon, C lamd first (`lamboot` with a one-line
hostfile, stopped by `lamhalt`) then ours (`python3 -m lamd`, stopped by
SIGTERM), each in its own `LAM_MPI_SESSION_PREFIX`. Both run the **same**
client binary, which uses liblam's kernel calls only (`_cipc_init`,
`kattach(PRCMD)`, `ksend`/`krecv`, `kdetach`). Every payload byte is
checked with `memcmp` against the pattern (per pair, with the sequence
number stamped in) the peer must have sent, and every length too: a wrong
answer exits non-zero and aborts the run.

## Workloads

* **ping-pong**: one pair (pinger + ponger process), `clock_gettime` round
  trip per message; p50/p99 over {{W_PP}} trips per size after a 10 % warm-up.
* **streaming**: one sender, one receiver, back-to-back `ksend`s of 1 MiB and
  16 MiB (LAM's kernel rendezvous: each send waits for the receive); the
  timer stops at the receiver's 0-byte acknowledgement.
* **attach+detach**: one process loops new connection, `kattach`, `kdetach`, close.
* **routed round trip**: one pair of `kinit(PRCMD)` clients (kattach, then
  `rversion` through the router to versiond, as every LAM tool starts)
  ping-pong with `nsend`/`nrecv` to their own node, through the router and
  bufferd (8 KiB packets, `NMORE`), 64 B and 64 KiB, every byte checked;
  p50/p99 after a 10 % warm-up.
* **start-up**: launch to the first client's attach reply: the C lamd by
  `lamboot` (its wall time, then one attach), ours by `python3 -m lamd`
  (the client attaches as soon as the socket exists); and ours under socket
  activation (`systemd-socket-activate -l SOCKET python3 -m lamd
  --jobs=external`, as `lamd@.socket` runs it): from the client's connect,
  which starts the daemon, to its attach reply. The package's `.pyc` files
  are written first (warm).
* **many pairs**: N pairs (2N processes) attach, wait at a barrier, then all
  ping-pong 64 B for {m['pair_seconds']} s; aggregate messages/s and p50/p99
  over every round trip (up to 4,000 samples per pair). 2, 16 and 128 pairs
  run on both daemons; 250, 1,000 and 2,500 pairs (500, 2,000 and 5,000
  processes, one liblam connection each) on ours alone, because the C lamd's
  process table (KPMAX 288, internal processes included) cannot hold them.
  5,000 *pairs* (10,000 clients) cannot run here at all, see the notes.
  {cap_txt}
* **hostile clients**: one 64 B pair beside a request flood or a stalled
  8 MiB transfer, with a deadline; see "Hostile clients" below.
* **jobs** (issue 10): the MPI programs of `tests/c/mpi` built with
  `mpicc.lam` and run by the stock `mpirun` as the same user:
  `mpirun -np 4 hello` (wall time from mpirun's start to its exit, median
  of the round's runs), and with `-ssi rpi lamd` (every MPI message
  through the daemon's router and bufferd) `pingpong` 64 B (median round
  trip) and `pingpong -s` 1 MiB (back-to-back `MPI_Send`s, every byte
  checked, bandwidth up to the receiver's acknowledgement).  Until our
  daemon runs jobs these are measured on the C lamd only and the rows say
  "not available" for ours (found out by one `mpirun` at the start, not
  configured).
* **daemon resources**: from `/proc/<daemon pid>/stat` (utime+stime over
  the workload) and `/proc/<pid>/status` (VmHWM = peak RSS; VmRSS sampled
  when all clients of a many-pairs run are attached, minus VmRSS at start,
  divided by the number of clients = state bytes per client).

## Failures

{fail_txt}

## Targets

| target | measured | verdict |
|---|---|---|
{tg}

## Results

Medians over the rounds, (min–max) across rounds; ratio = ours / C (for
latency lower is better, for rates higher is better).

{table(res)}

{hostile_section(res)}
## Plots

{imgs}

## Notes

* **p99 with 1,000 clients**: read as "1,000 clients *attached*": the
  `idle` workload keeps N processes attached (blocked outside the kernel)
  while one pair ping-pongs, so it shows what merely attached clients cost an
  active one (the C lamd scans its whole table and select() set per request;
  ours uses epoll). The many-pairs rows, where every pair is busy at once,
  are load-bound for any single-threaded daemon (round trip ≈ pairs ÷
  aggregate rate), so a 2× bound cannot hold there; they are reported as the
  stricter reading.
* **5,000 clients**: done with real processes, one liblam connection each:
  2,500 busy pairs (5,000 processes), and 5,000 idle clients beside one busy
  pair. Not 5,000 pairs: the daemon raises its RLIMIT_NOFILE soft limit to
  the hard one (20,000 on this VM, and this container may not raise it, even
  as root), but it spends two descriptors per client (the socket and a
  pidfd), so it holds at most about 9,995 clients. Tried with 10,000, it
  stalled at 9,995 attached, spinning at 100 % CPU on `accept4` failing
  with EMFILE (the listener stays readable) while the last five waited: a
  daemon issue worth fixing (pause the listener, or keep a reserve fd and
  refuse). The harness tries to raise the hard limit to 65,536 and says so
  when it cannot. 1,000+ client runs get fewer rounds
  (2,500 pairs and 5,000 idle clients: one).
* **State per client** is (VmRSS with all clients attached − VmRSS at
  start) ÷ clients. The C lamd's is 0: its table is static (KPMAX 288).
* **C lamd ping-pong p99**: the C lamd shows multi-millisecond outliers at
  every size, so its p99 is far above its p50.
"""
    text = text.replace("{W_PP}", "1,000–5,000 (64 KiB: 300–2,000; 1 MiB: 50–200)")
    (DOCS / "performance.md").write_text(text)
    log("wrote docs/performance.md")


if __name__ == "__main__":
    sys.exit(main())
