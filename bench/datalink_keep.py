#!/usr/bin/python3
"""What the datalink's crash keeping (lamd/datalink/keep.py) costs per frame.

In one process, sans-IO: dlo's state machine gives a 68-byte frame to a
link, dli's takes it and hands it on, dlo takes the ack; once plainly and
once with both sides kept in a memfd (the store a fake of systemd's).
Prints µs per frame, plain and kept, for a few alternating runs.

    bench/datalink_keep.py [FRAMES]
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lamd.datalink.keep import LinkKeep  # noqa: E402
from lamd.datalink.link import DLIn, DLOut  # noqa: E402
from tests.test_datalink_keep import A, B_DLI, Store, msg, universe  # noqa: E402


def run(keeping: bool, n: int) -> float:
    store = Store()
    out, din = DLOut(0, {1: B_DLI}), DLIn(1, {0: A[0]})
    keep = None
    if keeping:
        keep = LinkKeep(store, universe(0))
        keep.attach_out(out)
        keep.attach_in(din)
    frames = [msg(i, 64) for i in range(8)]
    t = time.perf_counter()
    for i in range(n):
        d = out.outgoing(1, frames[i % 8]).send[0][1]
        r = din.datagram(A, d)
        out.datagram(B_DLI, din.handed_on(r.deliver[0]))
    dt = (time.perf_counter() - t) / n * 1e6
    if keep is not None:
        keep.close()
    store.close()
    return dt


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 20000
    for _ in range(3):
        print(f"plain {run(False, n):.2f} µs/frame, kept {run(True, n):.2f} µs/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
