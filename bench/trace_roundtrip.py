"""One 64 B kernel round trip, end to end: who wakes when, which system calls.

Reads ``perf script`` output of a ``lambench pingpong`` run against one daemon
(ours or the C lamd) and prints, for the daemon and the two lambench
processes: system calls and wake-ups per round trip (same CPU or the other),
the daemon's system-call times (waking a process on its CPU, on the other, or
none), each process's time on CPU per trip, and one trip near the median as a
timeline (µs from the pinger's first call). ``docs/profile.md`` ("One 64 B
round trip, traced") has the results and what they say.

Record (as root; the daemon and the clients as the test user)::

    # start a daemon for the session (python3 -m lamd --jobs=external, or lamboot)
    perf record -o OUT/perf.data -a -e sched:sched_switch -e sched:sched_wakeup \
        -e sched:sched_migrate_task -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit \
        -- setpriv --reuid=lamtest ... lambench pingpong 64 400 100
    perf script --ns -i OUT/perf.data -F comm,pid,tid,cpu,time,event,trace > OUT/perf.txt
    echo "daemon PID" > OUT/pids
    python3 bench/trace_roundtrip.py OUT

x86-64 system call numbers only.
"""
import collections
import re
import statistics
import sys

OUT = sys.argv[1]
DP = int(open(f"{OUT}/pids").read().split()[1])
NR = {0: "read", 1: "write", 3: "close", 7: "poll", 14: "rt_sigprocmask", 16: "ioctl", 19: "readv",
      20: "writev", 23: "select", 39: "getpid", 44: "sendto", 45: "recvfrom", 46: "sendmsg",
      47: "recvmsg", 232: "epoll_wait", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
      288: "accept4", 62: "kill", 13: "rt_sigaction", 15: "rt_sigreturn", 72: "fcntl", 8: "lseek"}
line_re = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
ev = []
for line in open(f"{OUT}/perf.txt"):
    m = line_re.match(line)
    if not m:
        continue
    comm, pid, tid, cpu, t, name, rest = m.groups()
    ev.append((float(t), int(cpu), comm, int(tid), name, rest))
lb = sorted({tid for (_, _, comm, tid, *_ ) in ev if comm == "lambench"})
pinger, ponger = lb[0], lb[1]
who = {DP: "lamd", pinger: "ping", ponger: "pong"}
def involved(e):
    t, cpu, comm, tid, name, rest = e
    if tid in who:
        return True
    if name in ("sched:sched_wakeup", "sched:sched_migrate_task"):
        m = re.search(r"pid=(\d+)", rest)
        return m and int(m.group(1)) in who
    if name == "sched:sched_switch":
        m = re.search(r"next_pid=(\d+)", rest)
        return m and int(m.group(1)) in who
    return False
ev = [e for e in ev if involved(e)]
def fmt(e, t0):
    t, cpu, comm, tid, name, rest = e
    w = who.get(tid, comm)
    if name == "raw_syscalls:sys_enter":
        n = int(re.search(r"NR (\d+)", rest).group(1))
        return f"{(t - t0) * 1e6:9.2f}  cpu{cpu}  {w:5} -> {NR.get(n, n)}"
    if name == "raw_syscalls:sys_exit":
        m = re.search(r"NR (\d+) = (-?\d+)", rest)
        return f"{(t - t0) * 1e6:9.2f}  cpu{cpu}  {w:5} <- {NR.get(int(m.group(1)), m.group(1))} = {m.group(2)}"
    if name == "sched:sched_wakeup":
        m = re.search(r"pid=(\d+).*target_cpu=(\d+)", rest)
        return f"{(t - t0) * 1e6:9.2f}  cpu{cpu}  {w:5}    wakes {who.get(int(m.group(1)))} on cpu{int(m.group(2))}"
    if name == "sched:sched_switch":
        m = re.search(r"prev_comm=(.*?) prev_pid=(\d+).*prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)", rest)
        pp, np_ = int(m.group(2)), int(m.group(5))
        return (f"{(t - t0) * 1e6:9.2f}  cpu{cpu}  switch {who.get(pp, m.group(1))}({m.group(3)}) "
                f"-> {who.get(np_, m.group(4))}")
    if name == "sched:sched_migrate_task":
        return f"{(t - t0) * 1e6:9.2f}  cpu{cpu}  migrate {rest}"
    return f"{(t - t0) * 1e6:9.2f}  cpu{cpu}  {w} {name} {rest}"
# trips: the pinger's syscalls form a period; a trip starts at the pinger's first
# syscall after its read of the previous pong body. Detect the period from NRs.
pcalls = [(i, e) for i, e in enumerate(ev) if e[3] == pinger and e[4] == "raw_syscalls:sys_enter"]
nrs = [int(re.search(r"NR (\d+)", e[5]).group(1)) for _, e in pcalls]
mid = len(nrs) // 2
for period in range(2, 20):
    if all(nrs[mid + k] == nrs[mid + k + period] for k in range(3 * period)):
        break
# a trip starts with the pinger's rt_sigprocmask right after its two reads (the pong's reply and body)
trips = [pcalls[k][0] for k in range(2, len(nrs)) if nrs[k] == 14 and nrs[k - 1] == 0 and nrs[k - 2] == 0]
start = trips[len(trips) // 2]
start = next(k for k in range(len(pcalls)) if pcalls[k][0] == start)
print(f"pinger {pinger}, ponger {ponger}, daemon {DP}; pinger syscalls per trip: {period} "
      f"({', '.join(NR.get(n, str(n)) for n in nrs[start:start + period])})")
# per-trip statistics over the middle 60% of trips
sel = trips[len(trips) // 5: 4 * len(trips) // 5]
stats = collections.Counter()
durs = []
for a, b in zip(sel, sel[1:]):
    durs.append((ev[b][0] - ev[a][0]) * 1e6)
    for e in ev[a:b]:
        if e[4] == "raw_syscalls:sys_enter":
            stats[("syscalls", who.get(e[3]))] += 1
        elif e[4] == "sched:sched_wakeup":
            m = re.search(r"pid=(\d+).*target_cpu=(\d+)", e[5])
            cross = int(m.group(2)) != e[1]
            stats[("wakeups", "cross-CPU" if cross else "same CPU")] += 1
        elif e[4] == "sched:sched_migrate_task":
            stats[("migrations", "")] += 1
n = len(durs)
durs.sort()
print(f"trips measured: {n}; trip time under tracing p50 {durs[n // 2]:.1f} µs, min {durs[0]:.1f}")
for k, v in sorted(stats.items()):
    print(f"  {k[0]} {k[1]}: {v / n:.2f} per trip")
# one trip near the median duration
best = min(range(len(sel) - 1), key=lambda i: abs((ev[sel[i + 1]][0] - ev[sel[i]][0]) * 1e6 - durs[n // 2]))
a, b = sel[best], sel[best + 1]
t0 = ev[a][0]
print(f"\none trip ({(ev[b][0] - t0) * 1e6:.1f} µs):")
for e in ev[a:b + 1]:
    print(fmt(e, t0))

# syscall durations in the daemon over the measured trips: by name, and whether it woke
# another process (same CPU / other CPU)
dur = collections.defaultdict(list)
a, b = sel[0], sel[-1]
open_call = None
for e in ev[a:b]:
    if e[3] != DP:
        continue
    if e[4] == "raw_syscalls:sys_enter":
        nm = NR.get(int(re.search(r"NR (\d+)", e[5]).group(1)))
        open_call = [nm, e[0], "no wake-up"]
    elif e[4] == "sched:sched_wakeup" and open_call:
        m = re.search(r"target_cpu=(\d+)", e[5])
        open_call[2] = "wakes, same CPU" if int(m.group(1)) == e[1] else "wakes, other CPU"
    elif e[4] == "raw_syscalls:sys_exit" and open_call:
        if open_call[0] != "epoll_wait":
            dur[(open_call[0], open_call[2])].append((e[0] - open_call[1]) * 1e6)
        open_call = None
print("\ndaemon syscalls over the measured trips (median µs, count per trip):")
for k, v in sorted(dur.items()):
    print(f"  {k[0]:10} {k[1]:17} {statistics.median(v):6.2f} µs  {len(v) / n:.2f}/trip")

# per trip: time on CPU of each process (sched_switch in/out)
oncpu = {p: [] for p in who}
for a, b in zip(sel, sel[1:]):
    acc = {p: 0.0 for p in who}
    since = {}
    # is a process on CPU at the trip's start? find its last switch before a
    for p in who:
        for e in reversed(ev[max(0, a - 400):a]):
            if e[4] != "sched:sched_switch":
                continue
            m = re.search(r"prev_pid=(\d+).*next_pid=(\d+)", e[5])
            if int(m.group(2)) == p:
                since[p] = ev[a][0]
                break
            if int(m.group(1)) == p:
                break
    for e in ev[a:b]:
        if e[4] != "sched:sched_switch":
            continue
        m = re.search(r"prev_pid=(\d+).*next_pid=(\d+)", e[5])
        pp, np_ = int(m.group(1)), int(m.group(2))
        if pp in since:
            acc[pp] += (e[0] - since.pop(pp)) * 1e6
        if np_ in who:
            since[np_] = e[0]
    for p, t in since.items():
        acc[p] += (ev[b][0] - t) * 1e6
    for p in who:
        oncpu[p].append(acc[p])
print("on CPU per trip (median µs): " + ", ".join(f"{who[p]} {statistics.median(v):.1f}" for p, v in oncpu.items()))
