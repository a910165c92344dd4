"""How long clients stall when lamd is SIGKILLed and started again with its
descriptor store (issue 12), by hand.

Run as root from the top of the checkout (it creates the user ``lamtest``
like the tests do, and runs everything LAM as that user):

    /usr/bin/python3 bench/crash_stall.py [--clients 10,1000,5000] [--out FILE]

systemd's part is played by ``tests/test_fdstore.py``'s ``FakeStore`` (the
notify socket that keeps what ``FDSTORE=1`` hands it) and launcher (the
next daemon gets it as ``LISTEN_FDS``, as ``Restart=on-failure`` gives it).
For each count N: our daemon with N idle clients attached (``lambench idle
N``) and three stock clients blocked in ``krecv`` (``tests/c/kclient.c``);
SIGKILL, then the next daemon started at once (under systemd add
``RestartSec=``, 100 ms in ``lamd@.service``). Reported: SIGKILL to the new
daemon's "took back" line (polled every 10 ms), the recovery itself as the
daemon logs it, how many connections came back and were closed, and that
each blocked receiver then gets a message sent to it (every byte checked).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
from tests.test_fdstore import LAUNCHER, FakeStore, StoredDaemon  # noqa: E402
from bench.reexec_stall import build  # noqa: E402


def one(n: int, exes: dict[str, Path]) -> dict:
    pw = lamenv.ensure_user()
    s = lamenv.Session(pw)
    pkg = lamenv.copy_package(pyc=True)
    store = FakeStore(s.work)
    daemons: list[StoredDaemon] = []
    idle = None
    blocked: list[subprocess.Popen] = []
    try:
        d = StoredDaemon(s, pkg, store, LAUNCHER)
        d.start()
        daemons.append(d)
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
        ev = 470000
        blocked = [s.popen([exes["kclient"], "block", ev + i, 0, 4096]) for i in range(3)]
        deadline = time.monotonic() + 60
        while sum(1 for name in store.names() if name.startswith("c")) < n + 3:
            if time.monotonic() > deadline:
                raise RuntimeError("the clients never all reached the store")
            time.sleep(0.05)
        time.sleep(0.5)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(timeout=30)
        d2 = StoredDaemon(s, pkg, store, LAUNCHER)
        d2.start()
        daemons.append(d2)
        text = ""
        while not re.search(r"after a crash: took back", text):
            text = d2.logfile.read_text(errors="replace")
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"no recovery within 120 s:\n{d2.log()}")
            time.sleep(0.01)
        stall = time.monotonic() - t0
        m = re.search(r"took back (\d+) clients \((\d+) processes attached, (\d+) requests made "
                      r"again, \d+ message bodies started again, (\d+) connections closed\) "
                      r"in (\d+) ms", text)
        assert m, text
        for i, p in enumerate(blocked):
            cp = s.run([exes["kclient"], "send", ev + i, 0, 4096], timeout=60)
            out, _ = p.communicate(timeout=60)
            if cp.returncode != 0 or p.returncode != 0 or "OK" not in out:
                raise RuntimeError(f"blocked receiver {i}: {out}\n{cp.stdout}\n{d2.log()}")
        return {"idle_clients": n, "clients_taken_back": int(m.group(1)),
                "requests_made_again": int(m.group(3)), "connections_closed": int(m.group(4)),
                "recovery_ms": int(m.group(5)), "sigkill_to_serving_ms": round(stall * 1000, 1)}
    finally:
        if idle is not None:
            try:
                os.killpg(idle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            idle.wait(timeout=30)
        for p in blocked:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.terminate()
                try:
                    d.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    d.proc.wait(timeout=10)
        store.close()
        s.close()
        shutil.rmtree(pkg, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="10,1000,5000")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "crash.json"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    work = Path(tempfile.mkdtemp(prefix="lamd-crash-bench-", dir="/tmp"))
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
