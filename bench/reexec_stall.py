"""How long clients stall while lamd re-executes itself (issue 12), by hand.

Run as root from the top of the checkout (it creates the user ``lamtest``
like the tests do, and runs everything LAM as that user):

    /usr/bin/python3 bench/reexec_stall.py [--clients 10,1000,5000] [--out FILE]

For each count N: our daemon (``python3 -m lamd``, this checkout) with N idle
clients attached (``lambench idle N``, whose own pair keeps ping-ponging)
and one stock liblam pair ping-ponging 64 B (``tests/c/kclient.c``, every
byte verified); SIGUSR1 mid-run. Reported: the pair's worst round trip (the
stall a client sees: the drain, the exec, the new image's start and the
restore), its median, and the time from the signal to the new image's
"restored" log line (polled every 10 ms). Every client must finish OK.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import lamenv  # noqa: E402


def build(work: Path) -> dict[str, Path]:
    exes = {}
    for name, src in (("lambench", ROOT / "bench" / "c" / "lambench.c"),
                      ("kclient", ROOT / "tests" / "c" / "kclient.c")):
        exe = work / name
        subprocess.run(["mpicc.lam", "-O2", "-Wall", "-o", str(exe), str(src)], check=True,
                       cwd=str(work), capture_output=True, timeout=300)
        exe.chmod(0o755)
        exes[name] = exe
    return exes


def one(n: int, exes: dict[str, Path]) -> dict:
    pw = lamenv.ensure_user()
    s = lamenv.Session(pw)
    pkg = lamenv.copy_package(pyc=True)
    d = lamenv.PyDaemon(s, pkg, ["--log-level", "info"])
    idle = pair = None
    try:
        d.start()
        idle = s.popen([exes["lambench"], "idle", n, 2_000_000, 64], start_new_session=True,
                       stderr=subprocess.PIPE)
        attached = threading.Event()

        def watch() -> None:
            for line in idle.stderr:  # type: ignore[union-attr]
                if "ALL_ATTACHED" in line:
                    attached.set()

        threading.Thread(target=watch, daemon=True).start()
        if not attached.wait(300):
            raise RuntimeError(f"{n} idle clients never attached:\n{d.log()}")
        ev = 400000
        pong = s.popen([exes["kclient"], "pingpong", "pong", ev, 40000, 64])
        ping = s.popen([exes["kclient"], "pingpong", "ping", ev, 40000, 64])
        pair = (ping, pong)
        time.sleep(1.0)
        assert ping.poll() is None, "the pair ended before the re-exec"
        t0 = time.monotonic()
        os.kill(d.proc.pid, signal.SIGUSR1)
        while not re.search(r"re-exec: restored", d.logfile.read_text(errors="replace")):
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"no re-exec within 120 s:\n{d.log()}")
            time.sleep(0.01)
        restored_s = time.monotonic() - t0
        outs = [p.communicate(timeout=300) for p in pair]
        for p, (out, err) in zip(pair, outs):
            if p.returncode != 0 or "OK" not in out:
                raise RuntimeError(f"client failed: {out}\n{err}\n{d.log()}")
        m = re.search(r"RTT size=64 mean=(\d+) p50=(\d+) p90=(\d+) max=(\d+)", outs[0][0])
        assert m, outs[0][0]
        text = d.logfile.read_text(errors="replace")
        got = re.search(r"re-exec: restored (\d+) clients", text)
        return {"idle_clients": n, "clients_handed_over": int(got.group(1)) if got else None,
                "pair_max_rtt_ms": int(m.group(4)) / 1000, "pair_p50_rtt_us": int(m.group(2)),
                "signal_to_restored_ms": round(restored_s * 1000, 1)}
    finally:
        if idle is not None:
            try:
                os.killpg(idle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            idle.wait(timeout=30)
        for p in pair or ():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        try:
            d.stop()
        except Exception as e:  # noqa: BLE001 - reported, the next count goes on
            print(f"stopping the daemon: {e}", file=sys.stderr)
        s.close()
        shutil.rmtree(pkg, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="10,1000,5000")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "reexec.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamd-reexec-bench-", dir="/tmp"))
    work.chmod(0o755)
    try:
        exes = build(work)
        rows = []
        for n in [int(x) for x in args.clients.split(",")]:
            r = one(n, exes)
            print(json.dumps(r), flush=True)
            rows.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    Path(args.out).write_text(json.dumps({"commit": commit, "cpus": os.cpu_count(),
                                          "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
