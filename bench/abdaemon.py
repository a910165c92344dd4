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

A tree is a directory holding ``lamd/`` (world-readable: the daemon runs as
``lamtest``); ``:pure`` runs it with ``LAMD_PURE=1``, ``:store`` with the
crash state on (a descriptor store: ``tests/test_fdstore.py``'s ``FakeStore``
as ``NOTIFY_SOCKET``, as under systemd), ``:pure+store`` both; ``C`` is Debian's lamd
(``lamboot``). On a shared 2-core machine the numbers are indicative only.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import lamenv  # noqa: E402

PINGPONG = 5000


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(exe: str, pw, tree: str) -> dict[str, float]:
    s = lamenv.Session(pw)
    store = None
    if tree == "C":
        d: lamenv.Daemon = lamenv.CDaemon(s)
    else:
        path, _, mode = tree.partition(":")
        modes = set(mode.split("+"))
        pure = {"LAMD_PURE": "1" if "pure" in modes else ""}
        if "store" in modes:
            from tests.test_fdstore import LAUNCHER, FakeStore, StoredDaemon

            store = FakeStore(s.work)
            s.env.update(pure)
            d = StoredDaemon(s, Path(path), store, LAUNCHER)
            d.args = ["--log-level", "info", "--no-jobs"]  # it waits for "serving"
        else:
            d = lamenv.PyDaemon(s, Path(path), args=["--log-level", "warning", "--no-jobs"],
                                env=pure)
    d.start()
    try:
        def run(args: list[str]) -> dict:
            cp = s.run([exe, *args], timeout=300)
            assert cp.returncode == 0, cp.stderr
            return json.loads(cp.stdout.strip().splitlines()[-1])

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
    exe, rounds = sys.argv[1], int(sys.argv[2])
    trees = [a.split("=", 1) for a in sys.argv[3:]]
    pw = lamenv.ensure_user()
    res: dict[str, list[dict[str, float]]] = {n: [] for n, _ in trees}
    for r in range(rounds):
        for name, tree in (trees if r % 2 == 0 else trees[::-1]):
            x = one(exe, pw, tree)
            res[name].append(x)
            print(name, {k: round(v, 1) for k, v in x.items()}, flush=True)
    print("medians:")
    for name, runs in res.items():
        print(f"  {name}", {k: round(statistics.median(x[k] for x in runs), 1) for k in runs[0]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
