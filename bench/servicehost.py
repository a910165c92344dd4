#!/usr/bin/python3
"""A service outside the kernel: what the service host costs per message.

The jobs process and the datalink process under systemd run LAM's services
in :class:`lamd.iprocs.host.ServiceHost`, attached to the kernel as
clients. This times stock ``tping -d 0 n0`` (one echo per round trip) on a
daemon started by hand, against echod inside the kernel and against echod
served by ``python3 -m lamd.iprocs.host echod`` (``lamd --external echod``),
and reads the host's CPU per round trip from ``/proc/PID/stat`` (user and
system, over the pings only). With ``--ab TREE`` the host of this checkout
and of another built checkout alternate, round by round.

    bench/servicehost.py [ROUNDS] [--count N] [--ab TREE]

Run as root (the daemon and tping run as the test user ``lamtest``).
Prints one line per run and the medians.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import lamenv  # noqa: E402


def cpu_of(pid: int) -> tuple[int, int]:
    st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(st[11]), int(st[12])


def one(pw, pkg: Path, external: bool, count: int) -> tuple[float, float, float]:
    """(µs per round trip, host user µs, host system µs) of one run."""
    s = lamenv.Session(pw)
    args = ["--log-level", "warning"] + (["--external", "echod"] if external else [])
    d = lamenv.PyDaemon(s, pkg, args=args)
    d.start()
    host = None
    try:
        if external:
            host = s.popen([lamenv.SYSTEM_PYTHON, "-m", "lamd.iprocs.host", "echod"],
                           env=dict(s.env, PYTHONPATH=str(pkg)))
            deadline = time.monotonic() + 10   # attached: the kill file names it
            while host.pid not in lamenv.read_killfile(s.killfile):
                if time.monotonic() > deadline:
                    raise RuntimeError("the service host did not attach in 10 s")
                time.sleep(0.05)
            time.sleep(0.3)
        c0 = cpu_of(host.pid) if host else (0, 0)
        cp = s.run(["timeout", "-k", "2", "120", "tping", "-c", str(count), "-d", "0", "n0"],
                   timeout=130)
        c1 = cpu_of(host.pid) if host else (0, 0)
        if cp.returncode != 0:
            raise RuntimeError(f"tping exited {cp.returncode}: {cp.stdout}{cp.stderr}")
        # "N messages, ... T secs (...)"
        line = [ln for ln in cp.stdout.splitlines() if " messages, " in ln][-1]
        secs = float(line.split(" secs")[0].rsplit(" ", 1)[1])
        hz = os.sysconf("SC_CLK_TCK")
        return (secs / count * 1e6, (c1[0] - c0[0]) / hz / count * 1e6,
                (c1[1] - c0[1]) / hz / count * 1e6)
    finally:
        if host is not None and host.poll() is None:
            host.send_signal(signal.SIGTERM)
            try:
                host.wait(10)
            except Exception:  # noqa: BLE001
                host.kill()
        d.stop()
        s.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rounds", nargs="?", type=int, default=4)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--ab", metavar="TREE", help="another built checkout to alternate with")
    a = p.parse_args(argv)
    pw = lamenv.ensure_user()
    trees = {"this": ROOT} | ({"ab": Path(a.ab)} if a.ab else {})
    pkgs = {k: lamenv.copy_package(v / "lamd", pyc=True) for k, v in trees.items()}
    runs: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for r in range(a.rounds):
            order = list(pkgs) if r % 2 == 0 else list(reversed(pkgs))
            for k in order:
                for ext in (False, True):
                    name = f"{k} {'external' if ext else 'inside'}"
                    res = one(pw, pkgs[k], ext, a.count)
                    runs.setdefault(name, []).append(res)
                    print(f"round {r} {name:14s} {res[0]:7.1f} µs/round trip"
                          + (f", host {res[1] + res[2]:6.1f} µs (user {res[1]:.1f}, system "
                             f"{res[2]:.1f})" if ext else ""), flush=True)
    finally:
        for d in pkgs.values():
            import shutil
            shutil.rmtree(d, ignore_errors=True)
    print("medians:")
    for name, rs in runs.items():
        med = [statistics.median(x[i] for x in rs) for i in range(3)]
        print(f"  {name:14s} {med[0]:7.1f} µs/round trip"
              + (f", host {med[1] + med[2]:6.1f} µs (user {med[1]:.1f}, system {med[2]:.1f})"
                 if "external" in name else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
