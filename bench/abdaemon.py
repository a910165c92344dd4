#!/usr/bin/python3
"""A light A/B of whole daemons: ours from package trees (compiled or not) and the C lamd.

For quick comparisons between full benchmark runs (``bench/run.sh`` is the
reference): each round starts every daemon afresh, in alternating order, as
the unprivileged user of the tests, and runs the same liblam client
(``bench/c/lambench.c``) against it: a 64 B ping-pong (its p50, and the
daemon's CPU per round trip from ``/proc/PID/stat``) and a 1 MiB stream.
Prints each run and the medians. As root::

    mpicc.lam -O2 -o /tmp/lambench bench/c/lambench.c
    bench/abdaemon.py /tmp/lambench 3 C=C compiled=/tmp/tree1 pure=/tmp/tree1:pure old=/tmp/tree2

``--workload pingpong|pp1k|pp64k|pp1m|attach|npingpong|pstate|mpilat|mpibw|mpirun4|pairs2|pairs16`` (anywhere in the arguments)
runs that one workload instead, with the daemon's CPU per round trip or
cycle (ours: the kernel with its service processes, the jobs process among
them): ``pstate`` is kenyad's ``PQSTATE`` (``lambench pstate``, what
``mpitask`` asks; a request to the jobs process in ours); ``mpilat`` is stock ``mpirun -ssi rpi lamd`` of ``tests/c/mpi/pingpong.c``
(built with ``mpicc.lam``, path in ``$MPIPP``, default ``/tmp/pingpong``),
``mpibw`` the same program's ``-s`` stream of 1 MiB messages (MB/s),
and ours then runs jobs; ``mpirun4`` is ``mpirun -np 4`` of
``tests/c/mpi/hello.c`` (``$MPIHELLO``, default ``/tmp/hello``): its median
wall time and the CPU of the daemon with its children (ours: the jobs process).

A tree is a directory holding ``lamd/`` (world-readable: the daemon runs as
``lamtest``); ``:pure`` runs it with ``LAMD_PURE=1``, ``:store`` with the
crash state on (a descriptor store: ``tests/test_fdstore.py``'s ``FakeStore``
as ``NOTIFY_SOCKET``, as under systemd), ``:pure+store`` both; ``C`` is Debian's lamd
(``lamboot``). ``:NAME=VALUE`` (joined with ``+``) sets a variable in the
daemon's environment, e.g. ``big=/tmp/tree1:LAMD_MOVE_BUFFER=1048576``. On a shared 2-core machine the numbers are indicative only.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import lamenv  # noqa: E402

PINGPONG = 5000


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: --workload W: (warm-up argv, measured argv, messages or cycles it makes);
#: "mpirun" argv run the stock mpirun (the daemon then runs jobs)
WORKLOADS: dict[str, tuple[list[str], list[str], int]] = {
    "pingpong": (["pingpong", "64", "500", "50"], ["pingpong", "64", "5000", "100"], 5100),
    "attach": (["attach", "300"], ["attach", "3000"], 3000),
    # the ping-pong at the bench's larger sizes: the daemon's CPU per round trip by size
    "pp1k": (["pingpong", "1024", "500", "50"], ["pingpong", "1024", "5000", "100"], 5100),
    "pp64k": (["pingpong", "65536", "200", "20"], ["pingpong", "65536", "2000", "100"], 2100),
    "pp1m": (["pingpong", "1048576", "20", "5"], ["pingpong", "1048576", "200", "10"], 210),
    # one-way streams of one body size (MB/s), e.g. around IOLimits.splice_min
    "stream16k": (["stream", "16384", "500"], ["stream", "16384", "20000"], 20000),
    "stream64k": (["stream", "65536", "200"], ["stream", "65536", "6000"], 6000),
    "stream256k": (["stream", "262144", "50"], ["stream", "262144", "1600"], 1600),
    "stream1m": (["stream", "1048576", "20"], ["stream", "1048576", "400"], 400),
    "npingpong": (["npingpong", "64", "500", "50"], ["npingpong", "64", "4000", "100"], 4100),
    "mpilat": (["mpirun", "-np", "2", "-ssi", "rpi", "lamd", "MPIPP", "100", "64"],
               ["mpirun", "-np", "2", "-ssi", "rpi", "lamd", "MPIPP", "2000", "64"], 2000),
    # -ssi rpi lamd streaming of 1 MiB MPI_Send's (bench/run.sh's mpibw): MB/s
    "mpibw": (["mpirun", "-np", "2", "-ssi", "rpi", "lamd", "MPIPP", "-s", "4", "1048576"],
              ["mpirun", "-np", "2", "-ssi", "rpi", "lamd", "MPIPP", "-s", "40", "1048576"], 40),
    # kenyad's PQSTATE (what mpitask asks) from a kinit client: a service of
    # the jobs process with ours, of the C lamd's own process with LAM's
    "pstate": (["pstate", "200", "0"], ["pstate", "3000", "100"], 3100),
    # stock mpirun -np 4 of tests/c/mpi/hello.c ($MPIHELLO, default /tmp/hello),
    # 12 times: the median wall time (mpirun's start to its exit, from a pidfd)
    "mpirun4": (["mpirun", "-np", "4", "MPIHELLO"], ["mpirun", "-np", "4", "MPIHELLO"], 12),
    # N pairs ping-pong 64 B for 3 s, as bench/run.sh's many-pairs rows: the
    # daemon's CPU per message (the count is the client's, 0 here)
    "pairs2": (["pairs", "2", "0.5", "64"], ["pairs", "2", "3", "64"], 0),
    "pairs16": (["pairs", "16", "0.5", "64"], ["pairs", "16", "3", "64"], 0),
}


def _daemon_cpu(pid: int) -> float:
    """CPU seconds of *pid* and its children (ours: the jobs process)."""
    total = proc_cpu(pid)
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for k in kids:
            try:
                total += proc_cpu(k)
            except OSError:
                pass
    return total


def _wall(s, argv: list[str], timeout: float = 60) -> float:
    """Run *argv* as the session's user; its wall time, its exit seen by a pidfd."""
    p = s.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    assert lamenv.wait_exit(p, timeout), f"{argv} timed out"
    wall = time.perf_counter() - t0
    assert p.returncode == 0, f"{argv} failed"
    return wall


def _workload(s, d, exe: str, workload: str, run) -> dict[str, float]:
    """One workload of :data:`WORKLOADS`: its numbers, and the daemon's CPU
    per round trip or cycle (for mpilat: the whole mpirun's, start-up included)."""
    warm, argv, n = WORKLOADS[workload]
    if workload == "mpirun4":
        hello = os.environ.get("MPIHELLO", "/tmp/hello")
        argv = [hello if x == "MPIHELLO" else x for x in argv]
        _wall(s, argv)
        c0 = _daemon_cpu(d.pid)
        walls = [_wall(s, argv) for _ in range(n)]
        return {"wall_ms": statistics.median(walls) * 1e3,
                "cpu_ms": (_daemon_cpu(d.pid) - c0) / n * 1e3}

    def go(a: list[str]) -> dict:
        if a[0] != "mpirun":
            return run(a)
        import re

        a = [os.environ.get("MPIPP", "/tmp/pingpong") if x == "MPIPP" else x for x in a]
        cp = s.run(a, timeout=300)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        if "-s" in a:  # a stream: its bandwidth
            m = re.search(r"^ST size=\d+ reps=\d+ secs=[\d.]+ MBps=([\d.]+)$", cp.stdout, re.M)
            assert m, cp.stdout
            return {"MBps": float(m.group(1))}
        m = re.search(r"rtt_med_us=([\d.]+) rtt_min_us=([\d.]+)", cp.stdout)
        assert m, cp.stdout
        return {"p50_us": float(m.group(1)), "min_us": float(m.group(2))}

    go(warm)
    c0 = _daemon_cpu(d.pid)
    r = go(argv)
    c1 = _daemon_cpu(d.pid)
    out = {k: float(v) for k, v in r.items()
           if k in ("p50_us", "min_us", "per_s", "MBps", "msgs_per_s")}
    out["cpu_us"] = (c1 - c0) / (n or r["messages"]) * 1e6
    return out


def one(exe: str, pw, tree: str, workload: str = "default") -> dict[str, float]:
    s = lamenv.Session(pw)
    store = None
    if tree == "C":
        d: lamenv.Daemon = lamenv.CDaemon(s)
    else:
        path, _, mode = tree.partition(":")
        modes = set(mode.split("+"))
        pure = {"LAMD_PURE": "1" if "pure" in modes else ""}
        pure.update(m.split("=", 1) for m in modes if "=" in m)  # NAME=VALUE: environment
        if "store" in modes:
            from tests.test_fdstore import LAUNCHER, FakeStore, StoredDaemon

            store = FakeStore(s.work)
            s.env.update(pure)
            d = StoredDaemon(s, Path(path), store, LAUNCHER)
            d.args = ["--log-level", "info", "--no-jobs"]  # it waits for "serving"
        else:
            jobs = [] if workload.startswith(("mpi", "pstate")) else ["--no-jobs"]
            d = lamenv.PyDaemon(s, Path(path), args=["--log-level", "warning", *jobs],
                                env=pure)
    d.start()
    try:
        def run(args: list[str]) -> dict:
            cp = s.run([exe, *args], timeout=300)
            assert cp.returncode == 0, cp.stderr
            return json.loads(cp.stdout.strip().splitlines()[-1])

        if workload != "default":
            return _workload(s, d, exe, workload, run)
        run(["pingpong", "64", "500", "50"])  # warm up
        c0 = proc_cpu(d.pid)
        pp = run(["pingpong", "64", str(PINGPONG), "100"])
        c1 = proc_cpu(d.pid)
        st = run(["stream", str(1 << 20), "201"])
        return {"p50_us": pp["p50_us"], "cpu_us_per_rt": (c1 - c0) / (PINGPONG + 100) * 1e6,
                "MBps": st["MBps"]}
    finally:
        d.stop()
        if store is not None:
            store.close()
        s.close()


def main() -> int:
    args = sys.argv[1:]
    workload = "default"
    if "--workload" in args:
        i = args.index("--workload")
        workload = args[i + 1]
        del args[i:i + 2]
        assert workload in WORKLOADS, f"--workload: one of {', '.join(WORKLOADS)}"
    exe, rounds = args[0], int(args[1])
    trees = [a.split("=", 1) for a in args[2:]]
    pw = lamenv.ensure_user()
    res: dict[str, list[dict[str, float]]] = {n: [] for n, _ in trees}
    for r in range(rounds):
        for name, tree in (trees if r % 2 == 0 else trees[::-1]):
            x = one(exe, pw, tree, workload)
            res[name].append(x)
            print(name, {k: round(v, 1) for k, v in x.items()}, flush=True)
    print("medians:")
    for name, runs in res.items():
        print(f"  {name}", {k: round(statistics.median(x[k] for x in runs), 1) for k in runs[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
