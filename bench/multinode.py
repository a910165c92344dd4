#!/usr/bin/python3
"""Across nodes, ours against Debian's C lamds on the same test hosts (issue 11).

Test hosts are network namespaces on this machine (tests/netns.py: veth pairs
into a bridge, sshd in each, stock lamboot over ssh), so "across nodes" here
means through the datalink, the kernel's UDP stack and a bridge, with every
host sharing this machine's two CPUs: the figures compare the daemons, they
are not a network's.

Workloads, each in alternating rounds (C universe, ours, C, ours, ...), the
medians reported:

* two hosts: ``tping -c N n1`` from n0 (LAM's own timing); a 64 B
  nsend/nrecv round trip between kinit programs on n0 and n1
  (bench/c/netbench.c); 256 KiB one-way nsend throughput n0 -> n1 (liblam
  splits it into 8 KiB packets); ``mpirun -ssi rpi lamd`` 64 B ping-pong with
  one rank on each node (tests/c/mpi/pingpong.c), where it completes;
* eight hosts: ``lamboot`` wall time of the whole universe (and ``lamhalt``).

``--ab TREE``: this checkout's daemon against another checkout's (TREE
holds ``lamd/``, built: an A/B of a change), the two-host workloads in
alternating rounds; to ``bench/results/multinode-ab.json`` unless ``--out``.

``--boot-node``: what booting one node costs by its kind: ``lamboot`` of
two hosts, the first a C lamd, the second a C lamd, ours by hand (the
source tree's prefix tree) or ours "under systemd" (the package's prefix
scripts on a node whose ``lamd@``/``lamd-dl@`` sockets are held as systemd
would hold them, ``tests/sockact.py``: the tree's tkill and the hand-off
of hboot's arguments, then the datalink process and the kernel started by
their sockets), or "warm": the same with the datalink service already
waiting for lamboot (``lamd-dl@.service`` after a universe, or started by
``systemctl start``: ``sockact.py --start``), alternating rounds, the
medians of the boot's wall time and ``lamhalt``'s; to
``bench/results/multinode-bootnode.json``.

``--boot-only --warm``: the 8-host lamboot also of "warm" nodes (every
node's sockets held as systemd would, its datalink service waiting; the
package's prefix tree, whose ``bin/hboot`` hands the request to it), and
"warm-stock", the same under lam-runtime's ``hboot`` (the tree's ``tkill``
and ``lamd`` run by it, as before the tree had its own ``hboot``).

``--hop``: the extra hop of a datalink outside the kernel (what
``lamd-dl@.service`` runs beside the sandboxed kernel): on two hosts,
ours with the datalink inside the kernel process against ours with it in
``python3 -m lamd.datalink`` (tests/test_datalink_separate.py's tree),
by hand ("separate") and with a ``NOTIFY_SOCKET`` ("kept": it keeps its
state for a crash and gives dli's frames to the kernel's diforward, as
under systemd; with dlo outside, both separate kinds take their packets
from the kernel's doforward), tping, the 64 B round trip and 256 KiB
throughput, alternating rounds; to ``bench/results/multinode-hop.json``.
``--hop --ab TREE``: the separate and kept kinds of this checkout against
TREE's, alternating; to ``bench/results/multinode-hop-ab.json``.

Ours is the source tree's daemon (``lamd.launch`` without site.py in a LAM prefix tree, as
tests/test_multinode.py builds it), on every node.

    /usr/bin/python3 bench/multinode.py [--rounds N] [--quick] [--boot-only] [--out FILE]
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import lamenv  # noqa: E402
from tests.netns import Cluster, gone  # noqa: E402
from tests.test_datalink_separate import separate_tree  # noqa: E402
from tests.test_multinode import prefix_tree  # noqa: E402

EVENT = "31100"


def log(msg: str) -> None:
    print(f"[multinode] {msg}", file=sys.stderr, flush=True)


def build(work: Path) -> tuple[Path, Path]:
    """netbench and the MPI pingpong, readable by the test user."""
    nb = work / "netbench"
    subprocess.run(["mpicc.lam", "-O2", "-Wall", "-o", str(nb), str(ROOT / "bench" / "c" / "netbench.c")],
                   check=True, timeout=120)
    pp = work / "pp"
    subprocess.run(["mpicc.lam", "-O2", "-Wall", "-o", str(pp),
                    str(ROOT / "tests" / "c" / "mpi" / "pingpong.c")], check=True, timeout=120)
    for p in (nb, pp):
        p.chmod(0o755)
    return nb, pp


@contextlib.contextmanager
def warm_nodes(c: Cluster, pkgdir: Path, warm: bool):
    """For a "warm" round: every host's sockets held as systemd would, its
    datalink service started and waiting for lamboot (not timed); after
    the round, the holders stopped and the session directories gone."""
    if not warm:
        yield None
        return
    from tests.test_datalink_separate import SocketUnits
    units = []
    try:
        for h in c.hosts:
            units.append(SocketUnits(c, h, pkgdir, start=True))
        for u in units:
            u.wait_waiting()
        yield units
    finally:
        for u in units:
            u.close()
        for h in c.hosts:
            shutil.rmtree(h.prefix / f"lam-{c.pw.pw_name}@{h.name}", ignore_errors=True)


class Universe:
    """One booted universe on the Cluster *c*: "c" or "ours" on every node
    (*units*: the warm nodes' socket holders, left running by the end)."""

    def __init__(self, c: Cluster, kind: str, pre: Path | None, units=None) -> None:
        self.c, self.kind = c, kind
        self.units = units
        self.hf = c.work / f"hostfile-{kind}"
        pre = pre if kind != "c" else None
        self.hf.write_text("".join(f"{h.name}{f' prefix={pre}' if pre else ''}\n"
                                   for h in c.hosts))
        self.hf.chmod(0o644)
        self.boot_s = 0.0

    def __enter__(self) -> "Universe":
        h1 = self.c.hosts[0]
        t0 = time.monotonic()
        cp = h1.run(["lamboot", str(self.hf)], timeout=120)
        self.boot_s = time.monotonic() - t0
        if cp.returncode != 0:
            raise RuntimeError(f"lamboot ({self.kind}) failed: {cp.stdout}{cp.stderr}")
        return self

    def __exit__(self, *exc) -> None:
        c = self.c
        cp = c.hosts[0].run(["lamhalt"], timeout=60)
        left = ({u.h.name: u.user_pids() for u in self.units} if self.units
                else gone(c.hosts))
        if cp.returncode != 0 or any(left.values()):
            c.hosts[0].run(["lamwipe", str(self.hf)], timeout=60)
        for i, h in enumerate(c.hosts):  # whatever is left (a failed round) goes too
            for pid in (self.units[i].user_pids() if self.units else h.user_pids()):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass


def tping(c: Cluster, n: int) -> float:
    """Mean round trip: tping's total time over its count (its per-ping
    figures have millisecond resolution); no delay between pings."""
    cp = c.hosts[0].run(["tping", "-d", "0", "-c", str(n), "n1"], timeout=120)
    if cp.returncode != 0:
        raise RuntimeError(f"tping: {cp.stdout}{cp.stderr}")
    m = re.search(r"^(\d+) messages?, .*, ([\d.]+) secs", cp.stdout, re.M)
    if not m:
        raise RuntimeError(f"tping output: {cp.stdout!r}")
    return float(m.group(2)) / int(m.group(1)) * 1e6


def pair(c: Cluster, exe: Path, back: list[str], front: list[str], timeout: float) -> str:
    """*back* on n1 in the background, then *front* on n0; *front*'s output."""
    h0, h1 = c.hosts[0], c.hosts[1]
    bg = h1.popen([str(exe), *back], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                  text=True, timeout=timeout)
    try:
        time.sleep(0.3)
        cp = h0.run([str(exe), *front], timeout=timeout)
        out, _ = bg.communicate(timeout=timeout)
    finally:
        if bg.poll() is None:
            bg.kill()
            bg.wait()
    if cp.returncode != 0 or not cp.stdout.endswith("OK\n") or not out.endswith("OK\n"):
        raise RuntimeError(f"{front}: {cp.stdout}{cp.stderr} / {out}")
    return cp.stdout


def nsend_rt(c: Cluster, exe: Path, count: int) -> float:
    out = pair(c, exe, ["pong", EVENT, "64", str(count)],
               ["ping", "1", EVENT, "64", str(count)], 120)
    return float(re.search(r"median_us=([\d.]+)", out).group(1))


def nsend_bw(c: Cluster, exe: Path, count: int) -> float:
    size = 256 * 1024
    out = pair(c, exe, ["sink", EVENT, str(size), str(count)],
               ["stream", "1", EVENT, str(size), str(count)], 300)
    return float(re.search(r"mb_s=([\d.]+)", out).group(1))


def mpi_pingpong(c: Cluster, pp: Path, reps: int) -> float | str:
    cp = c.hosts[0].run(["mpirun", "-np", "2", "-ssi", "rpi", "lamd", str(pp), str(reps), "64"],
                        timeout=300)
    m = re.search(r"^PP size=64 reps=\d+ rtt_med_us=([\d.]+)", cp.stdout, re.M)
    if cp.returncode != 0 or not m:
        return f"failed (rc {cp.returncode}): {(cp.stdout + cp.stderr).strip()[-300:]}"
    return float(m.group(1))



def two_hosts(args: argparse.Namespace, rounds: int, pkgdir: Path, note, counts) -> None:
    """The two-host workloads, C universe and ours in alternating rounds."""
    n_ping, n_rt, n_bw, n_mpi = counts
    with Cluster(2) as c:
        nb, pp = build(c.work)
        pre = prefix_tree(c, pkgdir)
        for r in range(rounds):
            for kind in ("c", "ours"):
                with Universe(c, kind, pre) as u:
                    note(kind, "boot2_s", u.boot_s)
                    note(kind, "tping_us", tping(c, n_ping))
                    note(kind, "nsend64_rt_us", nsend_rt(c, nb, n_rt))
                    note(kind, "nsend256k_MBps", nsend_bw(c, nb, n_bw))
                    note(kind, "mpi_lamd64_rt_us", mpi_pingpong(c, pp, n_mpi))

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--boot-only", action="store_true",
                    help="only the lamboot of 8 hosts (to bench/results/multinode-boot.json)")
    ap.add_argument("--ab", metavar="TREE", default=None,
                    help="this checkout against TREE's lamd/ (two hosts, alternating)")
    ap.add_argument("--hop", action="store_true",
                    help="the datalink inside the kernel process against outside it")
    ap.add_argument("--boot-node", action="store_true",
                    help="lamboot of two hosts by the second node's kind (C, by hand, sockets, "
                         "warm)")
    ap.add_argument("--warm", action="store_true",
                    help="with --boot-only: also 8 nodes whose datalink service waits for "
                         "lamboot, as lamd-dl@.service does after a universe")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (network namespaces, the test user)", file=sys.stderr)
        return 2
    lamenv.ensure_user()
    if args.boot_node:
        return boot_node(args)
    if args.hop:
        return hop(args)
    if args.ab:
        return ab(args)
    args.out = args.out or str(ROOT / "bench" / "results" /
                               ("multinode-boot.json" if args.boot_only else "multinode.json"))
    rounds = 1 if args.quick else args.rounds
    n_ping, n_rt, n_bw, n_mpi = (100, 200, 20, 200) if args.quick else (1000, 2000, 100, 2000)
    pkgdir = lamenv.copy_package(pyc=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    kinds8 = ("c", "ours") + (("warm", "warm-stock") if args.warm else ())
    raw: dict[str, dict[str, list]] = {k: {} for k in kinds8}

    def note(kind: str, key: str, value) -> None:
        raw[kind].setdefault(key, []).append(value)
        log(f"{kind:4} {key}: {value}")

    try:
        if not args.boot_only:
            two_hosts(args, rounds, pkgdir, note, (n_ping, n_rt, n_bw, n_mpi))
        with Cluster(8) as c:
            pres = {"c": None, "ours": prefix_tree(c, pkgdir)}
            if args.warm:
                from tests.test_datalink_separate import systemd_like_tree
                pres["warm"] = systemd_like_tree(c, pkgdir)
                pres["warm-stock"] = systemd_like_tree(c, pkgdir, stock_hboot=True,
                                                       tree="pkglam-stock")
            for r in range(rounds):
                for kind in (kinds8 if r % 2 == 0 else kinds8[::-1]):
                    with warm_nodes(c, pkgdir, kind.startswith("warm")) as units:
                        with Universe(c, kind, pres[kind], units) as u:
                            note(kind, "boot8_s", u.boot_s)
    finally:
        shutil.rmtree(pkgdir, ignore_errors=True)

    def med(kind: str, key: str):
        vals = [v for v in raw[kind].get(key, []) if isinstance(v, (int, float))]
        return statistics.median(vals) if vals else None

    rows = []
    for key, label, better in (
            ("tping_us", "tping -d 0 n1 from n0, mean round trip (us)", "lower"),
            ("nsend64_rt_us", "nsend/nrecv 64 B round trip n0<->n1, median (us)", "lower"),
            ("nsend256k_MBps", "nsend 256 KiB n0->n1 throughput (MB/s)", "higher"),
            ("mpi_lamd64_rt_us", "mpirun -ssi rpi lamd 64 B ping-pong across nodes (us)", "lower"),
            ("boot2_s", "lamboot of 2 hosts (s)", "lower"),
            ("boot8_s", "lamboot of 8 hosts (s)", "lower")):
        c_v, o_v = med("c", key), med("ours", key)
        ratio = (o_v / c_v) if (c_v and o_v) else None
        rows.append({"metric": key, "label": label, "better": better, "c": c_v, "ours": o_v,
                     "ratio": ratio})
    if args.warm:
        for kind, label in (("warm", "lamboot of 8 warm systemd nodes (s)"),
                            ("warm-stock", "the same under lam-runtime's hboot (s)")):
            c_v, w_v = med("c", "boot8_s"), med(kind, "boot8_s")
            rows.append({"metric": "boot8_s", "label": label, "kind": kind,
                         "better": "lower", "c": c_v, "ours": w_v,
                         "ratio": (w_v / c_v) if (c_v and w_v) else None})
    res = {"commit": commit, "rounds": rounds, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "rows": rows, "raw": raw}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"| workload (at {commit}) | C lamds | ours | ours/C |\n|---|---|---|---|")
    for r in rows:
        f = lambda v: "—" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.0f}")  # noqa: E731
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"| {r['label']} | {f(r['c'])} | {f(r['ours'])} | {ratio} |")
    return 0


def ab(args: argparse.Namespace) -> int:
    """``--ab TREE``: "this" checkout's daemon against TREE's ("base") on
    two hosts, alternating rounds (tping, 64 B round trip, 256 KiB
    throughput, rpi lamd), medians."""
    rounds = 1 if args.quick else args.rounds
    n_ping, n_rt, n_bw, n_mpi = (100, 200, 20, 200) if args.quick else (1000, 2000, 100, 2000)
    pkgs = {"this": lamenv.copy_package(pyc=True),
            "base": lamenv.copy_package(Path(args.ab) / "lamd", pyc=True)}
    raw: dict[str, dict[str, list]] = {k: {} for k in pkgs}
    try:
        with Cluster(2) as c:
            nb, pp = build(c.work)
            pres = {kind: prefix_tree(c, pkg, f"ourlam-{kind}") for kind, pkg in pkgs.items()}
            for r in range(rounds):
                for kind in (("this", "base") if r % 2 == 0 else ("base", "this")):
                    with Universe(c, kind, pres[kind]):
                        for key, v in (("tping_us", tping(c, n_ping)),
                                       ("nsend64_rt_us", nsend_rt(c, nb, n_rt)),
                                       ("nsend256k_MBps", nsend_bw(c, nb, n_bw)),
                                       ("mpi_lamd64_rt_us", mpi_pingpong(c, pp, n_mpi))):
                            raw[kind].setdefault(key, []).append(v)
                            log(f"{kind:4} {key}: {v}")
    finally:
        for d in pkgs.values():
            shutil.rmtree(d, ignore_errors=True)
    out = Path(args.out or ROOT / "bench" / "results" / "multinode-ab.json")
    res = {"base": str(args.ab), "rounds": rounds, "raw": raw,
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"| workload | base ({args.ab}) | this | this/base |\n|---|---|---|---|")
    for key in raw["this"]:
        b = [v for v in raw["base"][key] if isinstance(v, (int, float))]
        t = [v for v in raw["this"][key] if isinstance(v, (int, float))]
        if b and t:
            mb, mt = statistics.median(b), statistics.median(t)
            print(f"| {key} | {mb:.1f} | {mt:.1f} | {mt / mb:.2f}x |")
    return 0


def boot_node(args: argparse.Namespace) -> int:
    """``--boot-node``: lamboot of a C origin and one node of each kind."""
    from tests.test_datalink_separate import SocketUnits, systemd_like_tree

    rounds = 1 if args.quick else args.rounds
    kinds = ("c", "hand", "sockets", "warm")
    pkgdir = lamenv.copy_package(pyc=True)
    raw: dict[str, dict[str, list]] = {k: {} for k in kinds}
    try:
        with Cluster(2) as c:
            h = c.hosts[1]
            trees = {"c": None, "hand": prefix_tree(c, pkgdir),
                     "sockets": systemd_like_tree(c, pkgdir)}
            trees["warm"] = trees["sockets"]
            session = h.prefix / f"lam-{c.pw.pw_name}@{h.name}"
            for r in range(rounds):
                for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                    hf = c.work / f"hostfile-{kind}"
                    pre = trees[kind]
                    hf.write_text(f"{c.hosts[0].name}\n{h.name}{f' prefix={pre}' if pre else ''}\n")
                    hf.chmod(0o644)
                    units = (SocketUnits(c, h, pkgdir, start=kind == "warm")
                             if kind in ("sockets", "warm") else None)
                    try:
                        if kind == "warm":
                            units.wait_waiting()
                        t0 = time.monotonic()
                        cp = c.hosts[0].run(["lamboot", str(hf)], timeout=120)
                        boot = time.monotonic() - t0
                        if cp.returncode != 0:
                            raise RuntimeError(f"lamboot ({kind}): {cp.stdout}{cp.stderr}")
                        cp = c.hosts[0].run(["tping", "-c", "1", "N"], timeout=60)
                        if cp.returncode != 0:
                            raise RuntimeError(f"tping ({kind}): {cp.stdout}{cp.stderr}")
                        t0 = time.monotonic()
                        cp = c.hosts[0].run(["lamhalt"], timeout=60)
                        halt = time.monotonic() - t0
                        if cp.returncode != 0:
                            raise RuntimeError(f"lamhalt ({kind}): {cp.stdout}{cp.stderr}")
                    finally:
                        c.hosts[0].run(["lamwipe", str(hf)], timeout=60)
                        if units is not None:
                            units.close()
                        for x in c.hosts:
                            for pid in x.user_pids():
                                try:
                                    os.kill(pid, 9)
                                except ProcessLookupError:
                                    pass
                        shutil.rmtree(session, ignore_errors=True)
                    for key, v in (("boot2_s", boot), ("halt2_s", halt)):
                        raw[kind].setdefault(key, []).append(v)
                        log(f"{kind:7} {key}: {v:.3f}")
    finally:
        shutil.rmtree(pkgdir, ignore_errors=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    out = Path(args.out or ROOT / "bench" / "results" / "multinode-bootnode.json")
    out.write_text(json.dumps({"commit": commit, "rounds": rounds, "raw": raw,
                               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                              indent=1) + "\n")
    print(f"| second node (at {commit}) | lamboot of 2 hosts | lamhalt |\n|---|---|---|")
    for kind in kinds:
        print(f"| {kind} | {statistics.median(raw[kind]['boot2_s']):.3f} s | "
              f"{statistics.median(raw[kind]['halt2_s']):.3f} s |")
    return 0


class NotifySink:
    """A ``NOTIFY_SOCKET`` that takes and drops what is sent to it: with it,
    the datalink process keeps its state as under systemd (the descriptor
    store's memfd, dli's frames through the kernel's diforward)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.count = 0   # messages taken
        self.thread = threading.Thread(target=self._drain, daemon=True)

    def _drain(self) -> None:
        while not self.stop.is_set():
            try:
                _, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
            except (socket.timeout, OSError):
                continue
            self.count += 1
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for fd in array.array("i", data[:len(data) - len(data) % 4]):
                        os.close(fd)

    def __enter__(self) -> "NotifySink":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def hop_round(c: Cluster, kind: str, tree: Path, nb: Path, counts: tuple[int, int, int],
              raw: dict[str, dict[str, list]], note: str = "") -> None:
    """One universe of *tree* on two hosts: tping, the 64 B round trip and
    256 KiB throughput (*counts* of each) into ``raw[kind]``."""
    n_ping, n_rt, n_bw = counts
    with Universe(c, kind, tree):
        time.sleep(0.5)  # the separate datalink gives the router the universe
        for key, v in (("tping_us", tping(c, n_ping)),
                       ("nsend64_rt_us", nsend_rt(c, nb, n_rt)),
                       ("nsend256k_MBps", nsend_bw(c, nb, n_bw))):
            raw[kind].setdefault(key, []).append(v)
            log(f"{kind:14} {key}: {v}{note}")


def hop_ab(args: argparse.Namespace) -> int:
    """``--hop --ab TREE``: the datalink outside the kernel, by hand
    ("separate") and keeping its state ("kept"), of this checkout against
    TREE's, alternating rounds, medians."""
    rounds = 1 if args.quick else args.rounds
    counts = (200, 400, 20) if args.quick else (1000, 2000, 100)
    pkgs = {"this": lamenv.copy_package(), "base": lamenv.copy_package(Path(args.ab) / "lamd")}
    kinds = [f"{tree}-{mode}" for mode in ("separate", "kept") for tree in pkgs]
    raw: dict[str, dict[str, list]] = {k: {} for k in kinds}
    try:
        with Cluster(2) as c, NotifySink(c.work / "notify") as sink:
            nb, _pp = build(c.work)
            trees = {}
            for tree, pkg in pkgs.items():
                trees[f"{tree}-separate"] = separate_tree(c, pkg, name=f"seplam-{tree}")
                trees[f"{tree}-kept"] = separate_tree(c, pkg, notify=sink.path,
                                                      name=f"keptlam-{tree}")
            for r in range(rounds):
                for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                    hop_round(c, kind, trees[kind], nb, counts, raw)
    finally:
        for pkg in pkgs.values():
            shutil.rmtree(pkg, ignore_errors=True)
    out = args.out or str(ROOT / "bench" / "results" / "multinode-hop-ab.json")
    Path(out).write_text(json.dumps({"base": str(args.ab), "rounds": rounds, "raw": raw,
                                     "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                                    indent=1) + "\n")
    print(f"| workload | separate: base ({args.ab}) | this | kept: base | this |\n"
          "|---|---|---|---|---|")
    for key in raw[kinds[0]]:
        med = [statistics.median(raw[k][key]) for k in ("base-separate", "this-separate",
                                                         "base-kept", "this-kept")]
        print(f"| {key} | " + " | ".join(f"{m:.1f}" for m in med) + " |")
    return 0


def hop(args: argparse.Namespace) -> int:
    """``--hop``: ours, the datalink in the kernel process ("inside") or in
    python3 -m lamd.datalink ("separate"), alternating rounds, medians."""
    if args.ab:
        return hop_ab(args)
    rounds = 1 if args.quick else args.rounds
    counts = (200, 400, 20) if args.quick else (1000, 2000, 100)
    pkgdir = lamenv.copy_package()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    kinds = ("inside", "separate", "kept")
    raw: dict[str, dict[str, list]] = {k: {} for k in kinds}
    try:
        with Cluster(2) as c, NotifySink(c.work / "notify") as sink:
            nb, _pp = build(c.work)
            trees = {"inside": prefix_tree(c, pkgdir), "separate": separate_tree(c, pkgdir),
                     "kept": separate_tree(c, pkgdir, notify=sink.path, name="keptlam")}
            for _ in range(rounds):
                for kind in kinds:
                    hop_round(c, kind, trees[kind], nb, counts, raw,
                              f" (notify messages so far: {sink.count})")
    finally:
        shutil.rmtree(pkgdir, ignore_errors=True)
    rows = []
    for key, label in (("tping_us", "tping -d 0 n1 from n0, mean round trip (us)"),
                       ("nsend64_rt_us", "nsend/nrecv 64 B round trip n0<->n1, median (us)"),
                       ("nsend256k_MBps", "nsend 256 KiB n0->n1, throughput (MB/s)")):
        i, s, k = (statistics.median(raw[kind][key]) for kind in kinds)
        rows.append({"metric": key, "label": label, "inside": i, "separate": s, "kept": k,
                     "ratio": s / i, "kept_ratio": k / i})
    out = args.out or str(ROOT / "bench" / "results" / "multinode-hop.json")
    Path(out).write_text(json.dumps({"commit": commit, "rounds": rounds, "when": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows, "raw": raw}, indent=1) + "\n")
    print(f"| workload (at {commit}) | datalink in the kernel process | in lamd.datalink | "
          "separate/inside | keeping its state | kept/inside |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['inside']:.0f} | {r['separate']:.0f} | {r['ratio']:.2f}x "
              f"| {r['kept']:.0f} | {r['kept_ratio']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
