"""The compiled hot path and its pure-Python fallback (issue 13, ``lamd/_pure.py``).

``packaging/setup.sh`` builds the mypyc extensions in place, so the rest of
the suite runs against the compiled build; these tests prove that it is
the compiled build (not a silent fallback), that ``LAMD_PURE=1`` loads the
.py files instead, that a stale build falls back to them with a warning,
and that both give the same kernel, byte for byte, on one long
deterministic script of requests from several clients (attach, sends and
receives that meet or block, KTRY, probes, send-receives, SQL matching,
dooms, states, surrenders, bad requests, detaches and dropped connections)
with an internal echo process, and the same codec on random structs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lamd import _pure

#: the tree the lamd under test comes from (the checkout, or the Debian
#: package's build tree when debian/rules runs these tests)
TOP = Path(_pure.__file__).resolve().parent.parent
TIMEOUT = 120

#: run in a fresh interpreter: prints which files were loaded, then the
#: kernel's transcript of the script and the codec's output
SCRIPT = r'''
import json, random, sys
import lamd._pure as pure
from lamd.kernel import Kernel
from lamd.kernel.constants import *
from lamd.kernel.kiproc import IProc, KBoot
from lamd.kernel.wire import KREQ_SIZE, KREPLY_SIZE, NMSG_SIZE, KMsg, KReply, KReq, NMsg
import dataclasses

files = {m: sys.modules[m].__file__ for m in pure.COMPILED if m in sys.modules}
import importlib
for m in pure.COMPILED:
    files[m] = importlib.import_module(m).__file__

async def echo(k: IProc) -> None:
    while True:
        got = await k.recv(77, 0, 8192, KNMSG)
        if got.nmsg is not None:
            await k.send(got.nmsg.event, 0, got.body, KNMSG | KTRY, nmsg=got.nmsg)

def enc(x):
    if dataclasses.is_dataclass(x):
        return [type(x).__name__] + [enc(getattr(x, f.name)) for f in dataclasses.fields(x)]
    if isinstance(x, (list, tuple)):
        return [enc(v) for v in x]
    if isinstance(x, bytes):
        return x.hex()
    if isinstance(x, float):
        return repr(x)
    return x if isinstance(x, (int, str, type(None))) else repr(x)

rng = random.Random(int(sys.argv[1]))
k = Kernel(max_procs=6, clock=lambda: 1.5, kernel_pid=1)
log = [enc(k.boot([KBoot("echo", 1085, echo)]))]
conns = ["c%d" % i for i in range(5)]
pids = {"c0": 2000, "c1": 2001, "c2": 2002, "c3": 2003, "c4": 2003}
index = {}
live = set()
EVENTS, TYPES = [3, 5, 77, 0x7FFF0003, -3], [0, 1, 2, -0xFFFF, -1]  # -0xFFFF: 0xFFFF0001
FLAGS = [0, 0, KTRY, KPROBE, KSYNCSQL, KNMSG, KTRACE, KNMSG | KTRY]

def msg():
    return KMsg(rng.choice(EVENTS), rng.choice(TYPES), rng.choice([0, 3, 64, 8192, -1]),
                rng.choice(FLAGS), rng.getrandbits(64))

for step in range(int(sys.argv[2])):
    c = rng.choice(conns)
    if c not in live:
        k.connect(c, pids[c], 1000)
        live.add(c)
    r = rng.random()
    if r < 0.03:
        live.discard(c)
        index.pop(c, None)
        log.append(["drop", c, enc(k.disconnect(c))])
        continue
    code = rng.choice([KQSEND, KQRECV, KQSEND, KQRECV, KQSR, KQSTATE, KQDOOM, KQATTACH,
                       KQSURRENDER, KQDETACH, KQDUMP, 42])
    idx = index.get(c, -1) if rng.random() > 0.02 else rng.randrange(-1, 8)
    if code == KQATTACH and c not in index:
        idx = -1
    req = KReq(req=code, index=idx, pid=pids[c] if rng.random() > 0.05 else 9,
               priority=rng.choice([1095, 1095, PRLAMHALT]),
               signal=rng.choice([0, 1, 4]), fyi=tuple(rng.randrange(-5, 5) for _ in range(9)),
               msg=msg(), msg2=msg())
    if code in (KQSTATE, KQDOOM):
        req.pid = rng.choice(list(pids.values()) + [100000, 7])
    raw = req.pack()
    out = k.request(c, KReq.unpack(raw))
    for a in out:
        if type(a).__name__ == "Reply" and a.conn == c and code == KQATTACH and a.reply.reply == 0:
            index[c] = a.reply.index
        if type(a).__name__ == "CollectBody":
            out += k.body_arrived(a.token, NMsg(event=rng.choice(EVENTS)).pack() + bytes(a.length - NMSG_SIZE)
                                  if a.length >= NMSG_SIZE else bytes(a.length))
        if type(a).__name__ == "Close" and a.conn in live:
            live.discard(a.conn)
            index.pop(a.conn, None)
            out += k.disconnect(a.conn)
    log.append([c, step, enc(out)])
    k.check_invariants()
log.append(["table", k.dump_lines(), [enc(k.ksnap(p)) for p in sorted(set(pids.values()))]])

codec = []
for _ in range(500):
    b = bytes(rng.getrandbits(8) for _ in range(KREQ_SIZE))
    q = KReq.unpack(b)
    codec.append([q.pack().hex(), enc(q)])
    b = bytes(rng.getrandbits(8) for _ in range(KREPLY_SIZE))
    codec.append(KReply.unpack(b).pack().hex())
    b = bytes(rng.getrandbits(8) for _ in range(NMSG_SIZE))
    codec.append(NMsg.unpack(b).pack().hex())
print(json.dumps({"compiled": pure.compiled(), "files": files, "log": log, "codec": codec}))
'''


def run(env_extra: dict[str, str], seed: int = 13, steps: int = 3000,
        pythonpath: Path = TOP) -> dict:
    env = dict(os.environ)
    env.pop("LAMD_PURE", None)
    env.update(env_extra, PYTHONPATH=str(pythonpath))
    p = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", SCRIPT,
                        str(seed), str(steps)], env=env, capture_output=True, text=True,
                       timeout=TIMEOUT, cwd="/")
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_the_suite_runs_the_compiled_build() -> None:
    """What the other tests import is the extension, not the .py (CI builds it
    in place with packaging/setup.sh; a checkout without it fails here)."""
    assert _pure.compiled(), ("the compiled hot path is not loaded: run "
                              "'python3 setup.py build_ext --inplace' (packaging/setup.sh does)")
    r = run({})
    assert r["compiled"] is True
    for m in _pure.COMPILED:
        assert r["files"][m].endswith(".so"), (m, r["files"][m])


@pytest.mark.parametrize("seed", [13, 2026])
def test_pure_and_compiled_agree(seed: int) -> None:
    compiled = run({}, seed)
    pure = run({"LAMD_PURE": "1"}, seed)
    assert compiled["compiled"] is True and pure["compiled"] is False
    for m in _pure.COMPILED:
        assert pure["files"][m].endswith(".py"), (m, pure["files"][m])
    # the script did exercise the kernel: rendezvous, blocking, refusals, the echo
    text = json.dumps(pure["log"])
    for what in ("Transfer", "CollectBody", "Close", "Signal", "KillAppend", "KillRemove"):
        assert what in text, what
    assert len(pure["log"]) > 2000
    assert compiled["log"] == pure["log"]
    assert compiled["codec"] == pure["codec"]


def test_a_stale_build_falls_back_to_the_py_files(tmp_path: Path) -> None:
    """A .py edited after the build (a checkout, a hand edit) is what runs,
    with a warning, never the old extension; whatever the files' times (an
    installer writes them in any order)."""
    shutil.copytree(TOP / "lamd", tmp_path / "lamd", copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns("__pycache__"))
    fresh = run({}, steps=10, pythonpath=tmp_path)
    assert fresh["compiled"] is True  # the sources the build recorded: not stale
    src = tmp_path / "lamd" / "kernel" / "kinner.py"
    with open(src, "a") as f:
        f.write("# edited after the build\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("LAMD_PURE", None)
    p = subprocess.run([sys.executable, "-c",
                        "import lamd._pure as p, lamd.kernel.kinner as k; print(p.compiled(), k.__file__)"],
                       env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", str(src)]
    assert "lamd.kernel.kinner changed since the compiled build" in p.stderr
