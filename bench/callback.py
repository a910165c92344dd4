#!/usr/bin/python3
"""A node's side of lamboot, exactly: from the exec of the ``lamd`` hboot
starts to lamboot's callback, on this machine, the C lamd against ours.

lamboot boots one node after the other and goes on once a node has called
back (and its ssh has ended), so this time is on lamboot's path once per
node; ``bench/multinode.py --boot-node`` measures it inside whole boots,
with ssh's own spread of several milliseconds around it. Here a listener
plays lamboot (``-H 127.0.0.1 -P PORT -n 1 -o 0``, as hboot passes them)
and each node kind is started as the test user, alternating, many times:

* ``c``: Debian's ``/usr/bin/lamd``;
* ``hand``: ours as the package's prefix tree starts it where no systemd
  datalink socket is (``packaging/lam-prefix/bin/lamd``: ``lamd.launch``,
  which calls back before its imports);
* ``sockets``: ours where ``lamd-dl@USER.socket`` listens (held as systemd
  would by ``tests/sockact.py``, the datalink started as
  ``packaging/lamd-dl-start`` starts it): the same script hands hboot's
  arguments to that socket (since the unit has a FIFO, to the FIFO, with
  no Python of its own), and the datalink process calls back. (The
  kernel's socket is not held: its start, which the datalink process sets
  going, is not on this path.)
* ``warm``: the same, with the datalink service already running and
  waiting for lamboot, as ``lamd-dl@.service`` is after a universe
  (``Restart=always``) or once started (``sockact.py --restart-always
  --start``); after each callback it is killed and the holder starts the
  next waiting one, which the next round waits for (not timed).

After each callback the node is killed: the time to serve the universe
is not measured here. Run as root (the test user is created)::

    /usr/bin/python3 bench/callback.py --rounds 20

``--hboot``: each kind started as lamboot starts a node, by hboot: the C
lamd by lam-runtime's ``hboot -t -c lam-conf.lamd -s -I "..."`` (its
tkill, then its lamd), ours by the package's prefix tree (``hboot -t -c
TREE/etc/lam-conf.lamd -s -I '"..."' -prefix TREE``: the tree's hboot,
tkill and lamd), and ``warm-stock`` the warm kind under lam-runtime's hboot
(its tkill and lamd the tree's), as the tree was before it had an hboot of
its own. The time is then from hboot's exec to the callback.

Writes ``bench/results/callback.json`` (with the commit) and prints medians.
``--ab TREE`` adds TREE's two kinds of ours (``base-hand``,
``base-sockets``; TREE a built checkout, e.g. a ``git worktree``) to the
same alternating rounds, to ``bench/results/callback-ab.json``: a change of
a few milliseconds shows there, where separate runs differ by as much.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import lamenv  # noqa: E402
from tests.test_datalink_separate import datalink_command, prefix_script  # noqa: E402
from tests.test_multinode import cmdline  # noqa: E402

KINDS = ("c", "hand", "sockets", "warm")
#: a datalink service's title while it waits for lamboot
WAITING = "lamd-datalink: waiting for lamboot"
TIMEOUT = 20.0


def tree(work: Path, pkg: Path, root: Path = ROOT) -> Path:
    """*root*'s package ``bin/lamd`` with its modules copied in *pkg*."""
    script = work / "lamd"
    script.write_text(prefix_script("lamd", pkg, root))
    script.chmod(0o755)
    return script


def prefix_tree(work: Path, pkg: Path, root: Path = ROOT, stock: bool = False) -> Path:
    """*root*'s prefix tree in *work*/tree, its scripts running the modules
    copied in *pkg*; its ``bin/hboot`` lam-runtime's where *root* has none
    of its own or *stock*."""
    t = work / "tree"
    for d in ("bin", "etc"):
        (t / d).mkdir(parents=True, exist_ok=True)
    src = root / "packaging" / "lam-prefix"
    for name in ("lamd", "tkill"):
        (t / "bin" / name).write_text(prefix_script(name, pkg, root))
    if (src / "bin" / "hboot").exists() and not stock:
        (t / "bin" / "hboot").write_text((src / "bin" / "hboot").read_text())
    else:
        os.symlink("/usr/bin/hboot", t / "bin" / "hboot")
    for name in ("lamd", "tkill", "hboot"):
        if not (t / "bin" / name).is_symlink():
            (t / "bin" / name).chmod(0o755)
    shutil.copy(src / "etc" / "lam-conf.lamd", t / "etc" / "lam-conf.lamd")
    for d in (work, t, t / "bin", t / "etc"):
        d.chmod(0o755)
    return t


def by_hboot(t: Path | None):
    """How hboot is started for a node of tree *t* (None: lam-runtime's,
    the C lamd), given lamboot's -I string."""
    if t is None:
        return lambda topo: ["/usr/bin/hboot", "-t", "-c", "lam-conf.lamd", "-s", "-I", topo]
    return lambda topo: [str(t / "bin" / "hboot"), "-t", "-c", str(t / "etc" / "lam-conf.lamd"),
                         "-s", "-I", f'"{topo}"', "-prefix", str(t)]


def holder(s: lamenv.Session, pkg: Path, root: Path = ROOT,
           warm: bool = False) -> subprocess.Popen:
    """``lamd-dl@USER.socket`` as sockact holds it, starting *root*'s
    datalink (its modules copied in *pkg*) as ``lamd-dl@.service`` does
    (*warm*: started at once and again after each end, so it waits)."""
    cmd = datalink_command(pkg, root)
    sh = f"exec /usr/bin/python3 {cmd} 2>>{s.work}/lamd-dl.log"
    # the FIFO beside the socket where *root*'s unit has one (its bin/lamd
    # writes hboot's arguments there without Python)
    fifo = ("ListenFIFO=" in (root / "systemd" / "lamd-dl@.socket").read_text())
    p = s.popen(["/usr/bin/python3", ROOT / "tests" / "sockact.py",
                 *(["--fifo", s.session_dir / "lamd-datalink-fifo"] if fifo else []),
                 *(["--restart-always", "--start"] if warm else []),
                 s.session_dir / "lamd-datalink-socket", "/bin/sh", "-c", sh],
                env={**s.env, "PYTHONPATH": str(pkg)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (s.session_dir / "lamd-datalink-socket").is_socket():
        if time.monotonic() > deadline or p.poll() is not None:
            raise RuntimeError("sockact did not listen")
        time.sleep(0.01)
    return p


def one(s: lamenv.Session, argv) -> float:
    """Start *argv* (with hboot's arguments; a function: of lamboot's -I
    string) as the test user; seconds to the callback. Every process of the
    user but the socket holder is killed after."""
    with socket.socket() as lb:
        lb.bind(("127.0.0.1", 0))
        lb.listen(4)
        lb.settimeout(TIMEOUT)
        args = ["-H", "127.0.0.1", "-P", str(lb.getsockname()[1]), "-n", "1", "-o", "0"]
        t0 = time.monotonic()
        cmd = argv(" ".join(args)) if callable(argv) else [*argv, *args]
        p = s.popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c, _ = lb.accept()
        t = time.monotonic() - t0
        with c:
            c.settimeout(TIMEOUT)
            got = b""
            while len(got) < 20 and (chunk := c.recv(20 - len(got))):
                got += chunk  # the C lamd writes each int on its own
        if len(got) != 20:
            raise RuntimeError(f"{argv[0]}: a callback of {len(got)} bytes")
    p.kill()
    p.wait(TIMEOUT)
    return t


def waiting(keep: set[int], timeout: float = TIMEOUT) -> int:
    """The pid of the datalink service waiting for lamboot, a child of a
    holder in *keep*, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in os.listdir("/proc"):
            if d.isdigit() and lamenv.ppid(int(d)) in keep and (
                    cmdline(int(d))[:1] == [WAITING]):
                return int(d)
        time.sleep(0.005)
    raise RuntimeError("no datalink service waiting")


def sweep(s: lamenv.Session, keep: set[int], holder: int | None = None) -> None:
    """The node gone: the processes of the session (its prefix in their
    environment) but *keep* (and a datalink service of *holder*'s that waits
    for the next boot) killed, the session directory emptied but for its
    datalink socket and FIFO."""
    mark = f"LAM_MPI_SESSION_PREFIX={s.prefix}".encode() + b"\0"
    for _ in range(50):
        _reap()
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) not in keep
                and _uid(int(d)) == s.pw.pw_uid and mark in _environ(int(d))
                and not (holder is not None and lamenv.ppid(int(d)) == holder)]
        if not pids:
            break
        signal_each(pids, signal.SIGKILL)
        time.sleep(0.01)
    if s.session_dir.is_dir():
        for f in s.session_dir.iterdir():
            if f.name not in ("lamd-datalink-socket", "lamd-datalink-fifo"):
                f.unlink(missing_ok=True)


def signal_each(pids, sig: int) -> None:
    """*sig* to each of *pids* that still runs."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _subreaper() -> None:
    """Orphans (the hand-off of a ``bin/lamd`` killed before it) become
    this process's children, which :func:`_reap` collects (PID 1 here may not)."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--ab", metavar="TREE", default=None,
                    help="also TREE's hand and sockets kinds (a built checkout: its lamd/ "
                         "and packaging/), in the same alternating rounds")
    ap.add_argument("--hboot", action="store_true",
                    help="start each kind by hboot -t, as lamboot does (see above)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (the test user)", file=sys.stderr)
        return 2
    args.out = args.out or str(ROOT / "bench" / "results" /
                               ("callback-ab.json" if args.ab else
                                "callback-hboot.json" if args.hboot else "callback.json"))
    pw = lamenv.ensure_user()
    _subreaper()
    roots = {"": ROOT}
    if args.ab:
        roots["base-"] = Path(args.ab).resolve()
    pkgs = {tag: lamenv.copy_package(root / "lamd", pyc=True) for tag, root in roots.items()}
    kinds = ["c"] + [f"{tag}{k}" for tag in roots for k in KINDS[1:]
                     if not (tag and k == "warm")]
    if args.hboot:
        kinds.append("warm-stock")
    raw: dict[str, list[float]] = {k: [] for k in kinds}
    sessions = {k: lamenv.Session(pw) for k in kinds}
    keep: set[int] = set()   # the socket holders
    try:
        argv = {"c": by_hboot(None) if args.hboot else ["/usr/bin/lamd"]}
        warm_holders: dict[str, int] = {}
        for tag, root in roots.items():
            hand = sessions[f"{tag}hand"]
            script = tree(hand.work, pkgs[tag], root)
            argv[f"{tag}hand"] = (by_hboot(prefix_tree(hand.work, pkgs[tag], root))
                                  if args.hboot else [str(script)])
            for k in ("sockets", "warm", "warm-stock"):
                if f"{tag}{k}" not in sessions:
                    continue
                s = sessions[f"{tag}{k}"]
                shutil.copy(script, s.work / "lamd")
                s.session_dir.mkdir(mode=0o700)
                os.chown(s.session_dir, pw.pw_uid, pw.pw_gid)
                pid = holder(s, pkgs[tag], root, warm=k != "sockets").pid
                keep.add(pid)
                if k != "sockets":
                    warm_holders[f"{tag}{k}"] = pid
                argv[f"{tag}{k}"] = (
                    by_hboot(prefix_tree(s.work, pkgs[tag], root, stock=k == "warm-stock"))
                    if args.hboot else [str(s.work / "lamd")])
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                spare = set(keep)
                if kind in warm_holders:
                    waiter = waiting({warm_holders[kind]})
                try:
                    raw[kind].append(one(sessions[kind], argv[kind]))
                finally:
                    if kind in warm_holders:
                        # the one that called back goes; the next waits
                        os.kill(waiter, signal.SIGKILL)
                    sweep(sessions[kind], spare, warm_holders.get(kind))
            print(f"[callback] round {r + 1}: " + ", ".join(
                f"{k} {raw[k][-1] * 1e3:.1f} ms" for k in kinds), flush=True)
    finally:
        # each holder stops its datalink service (a waiting one too) on
        # SIGTERM; Session.close's SIGKILL of the holder alone would leave it
        signal_each(keep, signal.SIGTERM)
        time.sleep(1)
        for s in sessions.values():
            s.close()
        for pkg in pkgs.values():
            shutil.rmtree(pkg, ignore_errors=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    med = {k: statistics.median(v) * 1e3 for k, v in raw.items()}
    res = {"commit": commit, "base": args.ab, "rounds": args.rounds,
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "median_ms": med, "raw_s": raw}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"| node started by hboot (at {commit}) | exec to callback, median | fastest |")
    print("|---|---|---|")
    for k in kinds:
        print(f"| {k} | {med[k]:.1f} ms | {min(raw[k]) * 1e3:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
