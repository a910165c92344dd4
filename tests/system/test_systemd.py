"""System tests: the installed lamd package under a real systemd.

A systemd boots in a ``systemd-nspawn --volatile=yes`` container sharing the
host's /usr and /etc (read-only), so the package is installed on the host
first: the tests build it from a clean clone of HEAD with
``packaging/build-deb.sh`` and ``dpkg -i`` it; ``LAMD_DEB=FILE`` installs that
file instead, ``LAMD_DEB=installed`` uses what is installed. Stock LAM clients (lam-runtime, liblam) run
as the unprivileged user ``lamtest``, created here if absent.

    sudo /usr/bin/python3 -m pytest -m system tests/system
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time

import pytest

pytestmark = pytest.mark.system

USER = "lamtest"
MACHINE = f"lamdsys{os.getpid()}"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

if os.geteuid() != 0:
    pytest.skip("system tests need root", allow_module_level=True)

# What packaging/setup.sh installs: missing, it is a failure, not a skip.
SETUP_SH = "run packaging/setup.sh"


def host(cmd, timeout=60, check=True, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, **kw)


class Container:
    def __init__(self, machine: str = MACHINE, extra: tuple[str, ...] = (),
                 init: tuple[str, ...] = ()) -> None:
        """*machine*: the container's name; *extra*: more systemd-nspawn
        options, *init*: more arguments for its systemd
        (tests/system/test_lamboot_nspawn.py: binds, a test host's network
        namespace, ``systemd.hostname=``)."""
        self.machine = machine
        self.extra = tuple(extra)
        self.init = tuple(init)
        self.nspawn: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.init_pidfd: int | None = None  # pins the container's pid 1 for stop()
        self.errlog = tempfile.TemporaryFile()  # nspawn's own messages

    def boot(self) -> None:
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", "/", "--volatile=yes", "--bind-ro=/etc",
             "--register=no", "--keep-unit", "-M", self.machine, "--console=passive",
             *self.extra, "-b", "systemd.firstboot=off", *self.init],
            stdout=subprocess.DEVNULL, stderr=self.errlog, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # the container's pid 1, not a short-lived helper of nspawn's
            kids = host(["pgrep", "-P", str(self.nspawn.pid), "-x", "systemd"],
                        check=False).stdout.split()
            if kids:
                if self.init_pid is None:
                    try:
                        self.init_pidfd = os.pidfd_open(int(kids[0]))
                    except ProcessLookupError:
                        time.sleep(0.1)
                        continue
                    self.init_pid = int(kids[0])
                r = self.run(["systemctl", "is-system-running", "--wait"], timeout=60, check=False)
                if r.stdout.strip() in ("running", "degraded"):
                    return
            if self.nspawn.poll() is not None:
                break
            time.sleep(0.2)
        self.errlog.seek(0)
        raise RuntimeError("the nspawn container did not boot: "
                           + self.errlog.read().decode(errors="replace")[-2000:])

    def run(self, cmd, timeout=30, check=False, input=None):
        assert self.init_pid
        return subprocess.run(["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p",
                               *cmd], capture_output=True, text=True, timeout=timeout,
                              check=check, input=input)

    def sh(self, script, timeout=30):
        return self.run(["/bin/sh", "-c", script], timeout=timeout)

    def as_user(self, cmd, timeout=20):
        return self.run(["timeout", "-k", "2", str(timeout), "runuser", "-u", USER, "--", *cmd],
                        timeout=timeout + 10)

    def show(self, unit, *props) -> dict[str, str]:
        r = self.run(["systemctl", "show", unit, *[f"-p{p}" for p in props]])
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def wait_for(self, pred, timeout=30, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = pred()
            if v:
                return v
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        if self.nspawn and self.nspawn.poll() is None:
            self.nspawn.terminate()
            try:
                self.nspawn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=10)
        if self.init_pidfd is not None:
            # a killed nspawn leaves its container running (seen: a systemd
            # with journald, logind and sshd outliving an interrupted run);
            # SIGKILL to its pid 1 ends every process of its pid namespace
            try:
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(self.init_pidfd)
            self.init_pidfd = None


#: modules the jobs process imports, shadowed in the user's home (ct)
SHADOWS = ("argparse", "select", "subprocess")


@pytest.fixture(scope="module")
def ct(lamd_deb):
    for tool, pkg in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                      ("systemd-analyze", "systemd")):
        assert shutil.which(tool), f"{tool} missing ({pkg}): {SETUP_SH}"
    deb = lamd_deb
    if host(["id", USER], check=False).returncode != 0:
        host(["useradd", "--system", "--create-home", "--shell", "/bin/sh", USER])
    c = Container()
    c.deb = deb
    try:
        c.boot()
        c.hostname = c.run(["hostname"]).stdout.strip()
        c.sdir = f"/tmp/lam-{USER}@{c.hostname}"
        c.socket = f"lamd@{USER}.socket"
        c.service = f"lamd@{USER}.service"
        c.jobs = f"lamd-jobs@{USER}.service"
        # The home lamd-jobs@ starts in (WorkingDirectory=-~) holds modules of
        # the user's with the standard library's names: the jobs process
        # (python3 -P -m lamd.jobs) must not take them for its own
        home = pwd.getpwnam(USER).pw_dir
        r = c.run(["install", "-d", "-o", USER, "-m", "755", home])
        assert r.returncode == 0, r.stderr
        for mod in SHADOWS:
            r = c.run(["sh", "-c", f"cat > {home}/{mod}.py"],
                      input=f"raise ImportError(\"the user's {mod}.py\")\n")
            assert r.returncode == 0, r.stderr
        # The blocked client: liblam kinit() then krecv() nobody answers.
        src = open(os.path.join(HERE, "blocked_client.c")).read()
        c.run(["sh", "-c", "cat > /var/tmp/blocked_client.c"], input=src)
        c.blocked_client_build = c.run(["hcc", "-o", "/var/tmp/blocked_client",
                                        "/var/tmp/blocked_client.c"], timeout=120)
        c.run(["chmod", "755", "/var/tmp/blocked_client"])
        # The ping-pong pair: N round trips, every byte checked (issue 12).
        src = open(os.path.join(HERE, "pingpong_client.c")).read()
        c.run(["sh", "-c", "cat > /var/tmp/pingpong_client.c"], input=src)
        c.pingpong_build = c.run(["hcc", "-o", "/var/tmp/pingpong_client",
                                  "/var/tmp/pingpong_client.c"], timeout=120)
        c.run(["chmod", "755", "/var/tmp/pingpong_client"])
        r = c.run(["systemctl", "start", c.socket])
        assert r.returncode == 0, r.stderr + c.run(["systemctl", "status", c.socket]).stdout
        yield c
    finally:
        c.stop()


def lamnodes(ct):
    return ct.as_user(["lamnodes"], timeout=20)


def test_socket_listens_and_service_not_running(ct):
    assert ct.run(["systemctl", "is-active", ct.socket]).stdout.strip() == "active"
    assert ct.run(["systemctl", "is-active", ct.service]).stdout.strip() == "inactive"
    st = ct.run(["stat", "-c", "%U %a %F", ct.sdir, f"{ct.sdir}/lam-kernel-socket"]).stdout.split("\n")
    assert st[0] == f"{USER} 700 directory"
    assert st[1] == f"{USER} 600 socket"


FIRST_REPLY = """
import os, socket, time
from lamd.client import KernelClient
path = "/tmp/lam-%s@%s/lam-kernel-socket" % (os.environ["USER"], socket.gethostname())
t0 = time.monotonic()
k = KernelClient.connect(path, timeout=30)
k.attach()
print("first_reply_ms %.1f" % ((time.monotonic() - t0) * 1000))
t0 = time.monotonic()
k.state(os.getpid())
print("next_reply_ms %.3f" % ((time.monotonic() - t0) * 1000))
"""


def test_first_client_activates_and_is_served(ct, record_property):
    """The first connect starts the service; its attach is answered once the
    daemon is up. The time from connect to that first reply is recorded (a
    measurement for docs/performance.md, not a timed assertion)."""
    r = ct.as_user(["env", f"USER={USER}", "/usr/bin/python3", "-c", FIRST_REPLY], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    first = float(r.stdout.split("first_reply_ms")[1].split()[0])
    record_property("first_reply_ms", first)
    print(f"socket activation: first reply {first:.1f} ms after connect; "
          f"{r.stdout.split('next_reply_ms')[1].split()[0]} ms for the next request")
    assert ct.run(["systemctl", "is-active", ct.service]).stdout.strip() == "active"
    r = lamnodes(ct)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "n0" in r.stdout
    assert ct.run(["systemctl", "is-active", ct.service]).stdout.strip() == "active"


def test_show_notify_watchdog_status(ct):
    lamnodes(ct)
    p = ct.show(ct.service, "Type", "WatchdogUSec", "StatusText", "NotifyAccess", "User")
    assert p["Type"] == "notify"
    assert p["NotifyAccess"] == "main"
    assert p["WatchdogUSec"] == "10s"
    assert p["User"] == USER
    # STATUS= follows the kernel's counters (once a second): lamnodes' requests show;
    # the clients attached are the jobs process's five services and its
    # node-id watch
    wait_jobs(ct)
    status = ct.wait_for(lambda: re.fullmatch(
        r"6 clients attached, [1-9]\d* messages, \d+ bytes moved",
        ct.show(ct.service, "StatusText")["StatusText"]), 5, "STATUS= with lamnodes' messages")
    assert status


def test_proctitle_shows_user_and_clients(ct):
    lamnodes(ct)
    pid = ct.show(ct.service, "MainPID")["MainPID"]
    args = ct.run(["ps", "-o", "args=", "-p", pid]).stdout
    assert re.fullmatch(rf"lamd: {USER}, \d+ clients?\s*", args), args


def wait_jobs(ct, not_pid: str | None = None) -> str:
    """The jobs unit active, its process attached (six kill-file lines, one
    per service and one for its node-id watch, and a seventh once it has
    used its waker: lamd.iprocs.host); returns its MainPID."""
    def up():
        p = ct.show(ct.jobs, "ActiveState", "MainPID")
        if p["ActiveState"] != "active" or p["MainPID"] in ("0", not_pid):
            return None
        kf = ct.run(["cat", f"{ct.sdir}/lam-killfile"]).stdout.split()
        return p["MainPID"] if kf[1:].count(p["MainPID"]) in (6, 7) else None
    return ct.wait_for(up, 30, f"{ct.jobs} attached")


def test_jobs_unit_starts_with_the_kernel_in_a_delegated_cgroup(ct):
    """The first client starts the kernel, whose Wants= starts the jobs unit
    once the kernel is READY: its process, as the user, attached (one
    kill-file line per service), moved into the leaf jobs-daemon of its
    delegated cgroup."""
    assert lamnodes(ct).returncode == 0
    pid = wait_jobs(ct)
    # in the user's home, beside the user's argparse.py, select.py... (ct)
    assert ct.run(["readlink", f"/proc/{pid}/cwd"]).stdout.strip() == pwd.getpwnam(USER).pw_dir
    p = ct.show(ct.jobs, "User", "Delegate", "ControlGroup", "Type", "NotifyAccess", "OOMPolicy")
    assert (p["User"], p["Delegate"], p["Type"], p["NotifyAccess"], p["OOMPolicy"]) == \
        (USER, "yes", "notify", "main", "continue"), p
    cg = p["ControlGroup"]
    # (read from outside the container's cgroup namespace: the host's prefix first)
    own = ct.run(["cat", f"/proc/{pid}/cgroup"]).stdout
    assert re.search(r"^0::/.*" + re.escape(f"{cg}/jobs-daemon") + "$", own, re.M), own
    root = ct.run(["sh", "-c", "grep ' - cgroup2 ' /proc/self/mountinfo | cut -d' ' -f5"]).stdout.split()[0]
    st = ct.run(["stat", "-c", "%U", f"{root}{cg}", f"{root}{cg}/cgroup.procs"]).stdout.split()
    assert st == [USER, USER], st
    assert ct.run(["ps", "-o", "user=,args=", "-p", pid]).stdout.split() == \
        [USER, "lamd-jobs:", USER]
    log = ct.run(["journalctl", "-u", ct.jobs, "--no-pager", "-o", "cat"]).stdout
    assert f"jobs: each job in its own cgroup under {root}{cg}" in log, log[-2000:]
    # the kernel leaves those rows to it
    klog = ct.run(["journalctl", "-u", ct.service, "--no-pager", "-o", "cat"]).stdout
    assert "boot table: internal router, bufferd, dli_inet, dlo_inet, echod, bforward, traced, " \
           "died, haltd, versiond" in klog


def test_stop_ends_every_job_process_and_descendant(ct):
    """Processes in a job cgroup of the jobs unit (one daemonised: setsid,
    double fork, reparented) and one in the unit's own cgroup: `systemctl
    stop lamd@U.service` ends the jobs unit (the kernel's ExecStop= hangs up
    the jobs process; its Restart= then finds the kernel down) and none is
    left."""
    assert lamnodes(ct).returncode == 0
    pid = wait_jobs(ct)
    root = ct.run(["sh", "-c", "grep ' - cgroup2 ' /proc/self/mountinfo | cut -d' ' -f5"]).stdout.split()[0]
    cg = root + ct.show(ct.jobs, "ControlGroup")["ControlGroup"]
    job = f"{cg}/job-0-4242"
    ct.run(["rm", "-f", "/var/tmp/job.pids", "/var/tmp/loose.pid"])
    ct.sh(f"runuser -u {USER} -- setsid sh -c 'sleep 300 >/dev/null 2>&1 & echo $! >> /var/tmp/job.pids'"
          f" ; runuser -u {USER} -- sh -c 'sleep 300 >/dev/null 2>&1 & echo $! >> /var/tmp/job.pids'"
          f" ; runuser -u {USER} -- sh -c 'sleep 300 >/dev/null 2>&1 & echo $! > /var/tmp/loose.pid'")
    pids = ct.wait_for(lambda: (lambda x: x if len(x) == 2 else None)(
        ct.run(["cat", "/var/tmp/job.pids"]).stdout.split()), 10, "the job's processes")
    loose = ct.wait_for(lambda: ct.run(["cat", "/var/tmp/loose.pid"]).stdout.strip(), 10, "pid")
    # what kenyad does for a job, done here by hand: the job's cgroup, made
    # by the user, and its processes moved in by root (the jobs process
    # sweeps empty job cgroups each second: try again if it took this one)
    q = shlex.quote  # the unit's cgroup has a backslash: system-lamd\x2djobs.slice
    move = " && ".join(f"echo {p} > {q(job + '/cgroup.procs')}" for p in pids)
    r = ct.sh(f"for i in 1 2 3 4 5; do runuser -u {USER} -- mkdir -p {q(job)} && {move} && exit 0; "
              f"done; exit 1")
    assert r.returncode == 0, r.stderr
    # and one process that left its job for the unit's cgroup
    assert ct.sh(f"echo {loose} > {q(cg + '/cgroup.procs')}").returncode == 0
    procs = ct.run(["cat", f"{job}/cgroup.procs", f"{cg}/cgroup.procs"]).stdout.split()
    assert set(pids) | {loose} <= set(procs), procs
    r = ct.run(["systemctl", "stop", ct.service], timeout=60)
    assert r.returncode == 0, r.stderr
    ct.wait_for(lambda: ct.show(ct.jobs, "ActiveState")["ActiveState"] == "inactive", 15,
                "the jobs unit to stop")
    for p in [*pids, loose, pid]:
        ct.wait_for(lambda: "No such process" in ct.run(["kill", "-0", p]).stderr, 10,
                    f"pid {p} to die")
    assert ct.run(["test", "-e", cg]).returncode == 1
    assert lamnodes(ct).returncode == 0  # and it all comes back
    assert wait_jobs(ct, not_pid=pid) != pid
    # (the starts of this test do not count against the next tests' start limit)
    ct.run(["systemctl", "reset-failed", ct.service, ct.jobs])


MPI_CGROUP_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv)
{
	int rank, size;
	char line[512] = "";
	FILE *f;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	f = fopen("/proc/self/cgroup", "r");  /* its cgroup v2 line: "0::PATH" */
	if (f) {
		while (fgets(line, sizeof line, f) && strncmp(line, "0::", 3) != 0)
			line[0] = 0;
		fclose(f);
	}
	printf("rank=%d size=%d cgroup=%s", rank, size, line);
	MPI_Finalize();
	return 0;
}
"""


def build_mpi(ct, name: str, src: str) -> str:
    """/var/tmp/NAME built from *src* with mpicc.lam (once per container)."""
    path = f"/var/tmp/{name}"
    if ct.run(["cmp", "-s", f"{path}.c", "-"], input=src).returncode != 0:
        ct.run(["sh", "-c", f"cat > {path}.c"], input=src)
        r = ct.run(["mpicc.lam", "-o", path, f"{path}.c"], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        ct.run(["chmod", "755", path])
    return path


@pytest.mark.parametrize("rpi", ["usysv", "tcp", "lamd"])
def test_mpirun_under_systemd(ct, rpi):
    """Stock mpirun of a program built with mpicc.lam, on the packaged units:
    the kernel in lamd@U.service's sandbox, the ranks started by kenyad in
    lamd-jobs@U.service, each job in its own delegated cgroup; on the
    shared-memory (SysV IPC, /dev/shm), TCP and daemon-routed RPIs."""
    build_mpi(ct, "mpicgroup", MPI_CGROUP_C)
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    cg = ct.show(ct.jobs, "ControlGroup")["ControlGroup"]
    r = ct.as_user(["mpirun", "-np", "2", "-ssi", "rpi", rpi, "/var/tmp/mpicgroup"], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(r.stdout.splitlines())
    assert [ln.split(" cgroup=")[0] for ln in lines] == ["rank=0 size=2", "rank=1 size=2"], \
        r.stdout + r.stderr
    for ln in lines:
        assert re.search(r"cgroup=0::" + re.escape(cg) + r"/job-0-\d+$", ln), (cg, ln)
    r = ct.as_user(["lamexec", "N", "hostname"], timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, ct.hostname), r.stdout + r.stderr


MPI_SLEEP_C = r"""
#include <mpi.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	MPI_Init(&argc, &argv);
	sleep(300);
	MPI_Finalize();
	return 0;
}
"""


def test_systemctl_stop_during_a_job(ct):
    """An MPI job running (mpirun waiting on two ranks in sleep): `systemctl
    stop lamd@U.service` ends the ranks and mpirun, and the next client
    starts it all again."""
    build_mpi(ct, "mpisleep", MPI_SLEEP_C)
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    ct.sh(f"runuser -u {USER} -- setsid timeout -k 2 120 mpirun -np 2 /var/tmp/mpisleep "
          f"</dev/null >/dev/null 2>&1 &")
    ranks = ct.wait_for(lambda: (lambda x: x if len(x) == 2 else None)(
        ct.run(["pgrep", "-u", USER, "-x", "mpisleep"]).stdout.split()), 30, "two ranks")
    mpirun = ct.run(["pgrep", "-u", USER, "-x", "mpirun"]).stdout.split()
    assert len(mpirun) == 1, mpirun
    r = ct.run(["systemctl", "stop", ct.service], timeout=60)
    assert r.returncode == 0, r.stderr
    for pid in [*ranks, *mpirun]:
        ct.wait_for(lambda: "No such process" in ct.run(["kill", "-0", pid]).stderr, 15,
                    f"pid {pid} to end after systemctl stop")
    assert lamnodes(ct).returncode == 0  # and it all comes back
    wait_jobs(ct)
    ct.run(["systemctl", "reset-failed", ct.service, ct.jobs])


def test_lamclean_ends_a_job_with_a_daemonised_descendant(ct):
    """lamexec -nw of a shell that starts a daemonised sleeper (setsid: a
    process group and session of its own, what the C lamd's kill by pid
    never reaches) and sleeps itself: both are in the job's cgroup, and
    lamclean ends both."""
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    ct.run(["rm", "-f", "/var/tmp/escaped.pid"])
    # (its stdio are lamexec's, our capture pipes: let them go)
    script = ("exec </dev/null >/dev/null 2>&1; "
              "setsid sh -c 'echo $$ > /var/tmp/escaped.pid; exec sleep 300' & exec sleep 301")
    r = ct.as_user(["lamexec", "-nw", "-np", "1", "/bin/sh", "-c", script], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    escaped = ct.wait_for(lambda: ct.run(["cat", "/var/tmp/escaped.pid"]).stdout.strip(), 15,
                          "the daemonised sleeper")
    shell = ct.wait_for(lambda: ct.run(["pgrep", "-u", USER, "-f", "^sleep 301$"]).stdout.strip(),
                        15, "the job's own sleeper")
    for pid in (escaped, shell):
        own = ct.run(["cat", f"/proc/{pid}/cgroup"]).stdout
        assert re.search(r"/lamd-jobs@" + USER + r"\.service/job-0-\d+$", own, re.M), own
    r = ct.as_user(["lamclean"], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    for pid in (escaped, shell):
        ct.wait_for(lambda: "No such process" in ct.run(["kill", "-0", pid]).stderr, 15,
                    f"pid {pid} to end after lamclean")


MPI_RING_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
/* Every 10 ms for SECONDS: an allreduce whose sum each rank checks, and a
   ring exchange of 4 KiB whose every byte each rank checks. Prints one line
   per rank: its rank, the rounds done, and the errors found (0). */
int main(int argc, char **argv)
{
	int rank, size, seconds = argc > 1 ? atoi(argv[1]) : 8, i, r, errs = 0;
	static unsigned char out[4096], in[4096];
	double t0;
	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	t0 = MPI_Wtime();
	for (r = 0; MPI_Wtime() - t0 < seconds; r++) {
		int mine = rank + r, sum = 0, want = size * r + size * (size - 1) / 2;
		MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
		errs += sum != want;
		for (i = 0; i < 4096; i++) out[i] = (unsigned char)(rank * 31 + r + i);
		MPI_Sendrecv(out, 4096, MPI_BYTE, (rank + 1) % size, 7, in, 4096, MPI_BYTE,
			     (rank + size - 1) % size, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
		for (i = 0; i < 4096; i++)
			errs += in[i] != (unsigned char)(((rank + size - 1) % size) * 31 + r + i);
		usleep(10000);
	}
	printf("rank=%d rounds=%d errors=%d\n", rank, r, errs);
	MPI_Finalize();
	return errs != 0;
}
"""


def test_mpi_job_survives_a_kernel_crash(ct):
    """An MPI job mid-run (two ranks on the default RPI, mpirun waiting for
    their ends in the kernel) while the kernel is SIGKILLed: systemd
    restarts the kernel with every client connection from the descriptor
    store, the jobs unit is not touched (no PartOf=: lamd-jobs@.service),
    and the job runs to its end: both ranks finish every round with every
    byte checked, MPI_Finalize detaches through the new kernel, and mpirun
    hears of both ends and exits 0. Under the C lamd (and under this
    package before, with PartOf=) the job is lost."""
    prog = build_mpi(ct, "mpiring", MPI_RING_C)
    fresh_service(ct)
    assert lamnodes(ct).returncode == 0
    jp = wait_jobs(ct)
    jobs_restarts = ct.show(ct.jobs, "NRestarts")["NRestarts"]
    old = ct.show(ct.service, "MainPID")["MainPID"]
    f = "/var/tmp/mpiring"
    ct.run(["rm", "-f", f"{f}.out", f"{f}.rc"])
    ct.sh(f"(cd /var/tmp && timeout -k 2 90 runuser -u {USER} -- mpirun -np 2 {prog} 8 "
          f"> {f}.out 2>&1; echo $? > {f}.rc) </dev/null >/dev/null 2>&1 &")
    ranks = ct.wait_for(lambda: (lambda x: x if len(x) == 2 else None)(
        ct.run(["pgrep", "-u", USER, "-x", "mpiring"]).stdout.split()), 30, "two ranks")
    # both ranks attached (listed in the kill file: past MPI_Init's kenyad
    # round trip), then the crash well inside their 8 s of rounds
    ct.wait_for(lambda: set(ranks) <= set(killfile_pids(ct)), 20, "the ranks to attach")
    time.sleep(1.0)
    ct.run(["kill", "-KILL", old])
    wait_mainpid_change(ct, old)
    assert ct.run(["test", "-e", f"{f}.rc"]).returncode == 1, \
        "the job ended before the kernel was back: " + ct.run(["cat", f"{f}.out"]).stdout
    rc = ct.wait_for(lambda: ct.run(["cat", f"{f}.rc"]).stdout.strip(), 60, "mpirun to end")
    out = ct.run(["cat", f"{f}.out"]).stdout
    assert rc == "0", out
    lines = sorted(ln for ln in out.splitlines() if ln.startswith("rank="))
    assert [re.sub(r"rounds=\d+", "rounds=N", ln) for ln in lines] == \
        ["rank=0 rounds=N errors=0", "rank=1 rounds=N errors=0"], out
    assert all(int(re.search(r"rounds=(\d+)", ln).group(1)) > 300 for ln in lines), out
    # the jobs process is the one from before the crash, never restarted
    p = ct.show(ct.jobs, "MainPID", "ActiveState", "NRestarts")
    assert (p["MainPID"], p["ActiveState"], p["NRestarts"]) == (jp, "active", jobs_restarts), p
    log = ct.run(["journalctl", "-u", ct.service, "--no-pager", "-o", "cat"]).stdout
    assert "after a crash: took back" in log, log[-3000:]
    # and the next job runs on the restarted kernel
    r = ct.as_user(["mpirun", "-np", "2", prog, "1"], timeout=60)
    assert r.returncode == 0 and r.stdout.count("errors=0") == 2, r.stdout + r.stderr
    ct.run(["systemctl", "reset-failed", ct.service, ct.jobs])


MEMFD_STATE = "/memfd:lamd-crash-state"


def crash_state_fd(ct, pid: str) -> str:
    """/proc/PID/fd/N of the daemon's crash-state memfd (lamd.kernelio.fdstore;
    Python's mmap holds a second descriptor of the same file)."""
    r = ct.sh(f"for f in /proc/{pid}/fd/*; do "
              f"case $(readlink $f) in '{MEMFD_STATE}'*) echo $f $(stat -L -c %i $f);; esac; done")
    found = dict(reversed(line.split()) for line in r.stdout.splitlines())
    assert len(found) == 1, (r.stdout, r.stderr)  # one file, by inode
    return next(iter(found.values()))


CORRUPT = {
    # another program's data where the header is: "not a lamd crash state"
    "magic": "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); "
             "os.pwrite(fd, b'NOTLAMD!', 0)",
    # cut inside the records: "truncated"
    "truncated": "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); "
                 "os.ftruncate(fd, 200)",
    # the pid in the first record in use changed under its checksum
    "record": "import os, sys; from lamd.kernelio.crashstate import HEADER_SIZE as H, "
              "RECORD_SIZE as R; fd = os.open(sys.argv[1], os.O_RDWR); "
              "off = next(o for o in range(H, os.fstat(fd).st_size, R) "
              "if os.pread(fd, 1, o) != bytes(1)); "
              "os.pwrite(fd, bytes(b ^ 0xff for b in os.pread(fd, 2, off + 4)), off + 4)",
}


@pytest.mark.parametrize("how", sorted(CORRUPT))
def test_corrupt_crash_state_is_refused_and_the_daemon_starts_clean(ct, how):
    """The crash state in the descriptor store damaged (as root, through the
    running daemon's /proc/PID/fd: its magic overwritten, the memfd cut
    short, or a client's record changed under its checksum), then SIGKILL:
    the restarted daemon refuses the state with one log line, closes every
    stored connection and starts clean, never half-restored: the blocked
    client gets LAM's error at once instead of hanging, the kill file lists
    only what attached afterwards, and the daemon serves."""
    fresh_service(ct)
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    old = ct.show(ct.service, "MainPID")["MainPID"]
    blocked = start_blocked(ct, f"corrupt-{how}")
    refused = journal_count(ct, ct.service, "refused, starting clean")
    r = ct.run(["python3", "-c", CORRUPT[how], crash_state_fd(ct, old)])
    assert r.returncode == 0, r.stderr
    ct.run(["kill", "-KILL", old])
    new = wait_mainpid_change(ct, old)
    log = ct.run(["journalctl", "-u", ct.service, "--no-pager", "-o", "cat"]).stdout
    assert journal_count(ct, ct.service, "refused, starting clean") == refused + 1, log[-3000:]
    line = [ln for ln in log.splitlines() if "refused, starting clean" in ln][-1]
    assert {"magic": "bad magic", "truncated": "truncated",
            "record": "fails its checksum"}[how] in line, line
    rc = ct.wait_for(lambda: ct.run(["cat", f"/var/tmp/blocked-corrupt-{how}.rc"]).stdout.strip(),
                     15, "the blocked client to see its connection end")
    assert rc not in ("", "0"), rc
    assert not alive(ct, blocked)
    # the jobs process's connections were closed too: it ends and its unit
    # starts again (Restart=on-failure), attached to the clean daemon
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    kf = killfile_pids(ct)
    assert kf[0] == new and blocked not in kf, kf
    r = ct.as_user(["tping", "-c", "2", "N"], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    ct.run(["systemctl", "reset-failed", ct.service, ct.jobs])


def test_journal_has_native_records(ct):
    lamnodes(ct)
    r = ct.run(["journalctl", "-u", ct.service, "-o", "json", "--no-pager"])
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    native = [x for x in recs if x.get("_TRANSPORT") == "journal"
              and x.get("SYSLOG_IDENTIFIER") == "lamd"]
    assert native, "no native journal records from lamd"
    assert any("serving" in x.get("MESSAGE", "") for x in native)
    assert all("CODE_FILE" in x for x in native)


def wait_mainpid_change(ct, old, timeout=40):
    def changed():
        p = ct.show(ct.service, "MainPID", "ActiveState")
        return p["ActiveState"] == "active" and p["MainPID"] not in ("0", old) and p["MainPID"]
    return ct.wait_for(changed, timeout, "a fresh daemon")


def test_watchdog_kills_stopped_daemon(ct):
    ct.sh("mkdir -p /run/systemd/system/lamd@.service.d && printf '[Service]\\nWatchdogSec=3s\\n'"
          " > /run/systemd/system/lamd@.service.d/50-test-watchdog.conf && systemctl daemon-reload")
    try:
        ct.run(["systemctl", "restart", ct.service])
        lamnodes(ct)
        old = ct.show(ct.service, "MainPID")["MainPID"]
        restarts = int(ct.show(ct.service, "NRestarts")["NRestarts"])
        ct.run(["kill", "-STOP", old])
        ct.wait_for(lambda: int(ct.show(ct.service, "NRestarts")["NRestarts"]) > restarts,
                    40, "a watchdog restart")
        r = lamnodes(ct)
        assert r.returncode == 0, r.stderr
        assert ct.show(ct.service, "MainPID")["MainPID"] != old
        log = ct.run(["journalctl", "-u", ct.service, "--no-pager"]).stdout
        assert "atchdog timeout" in log
        # ExecStopPost='s lamd-tkill: a restart follows, the clients are left alone
        assert "SERVICE_RESULT=watchdog" in log and \
            "leaving its clients and the kill file alone" in log, log[-2000:]
    finally:
        ct.sh("rm -f /run/systemd/system/lamd@.service.d/50-test-watchdog.conf; systemctl daemon-reload")
        ct.run(["systemctl", "restart", ct.service])


def test_stop_kills_blocked_client(ct):
    r = ct.blocked_client_build  # liblam's hcc (lam4-dev, from packaging/setup.sh)
    assert r.returncode == 0, f"hcc blocked_client.c failed (rc={r.returncode}):\n" \
        + r.stdout + r.stderr
    ct.run(["rm", "-f", "/var/tmp/blocked.out"])
    ct.sh(f"runuser -u {USER} -- /var/tmp/blocked_client > /var/tmp/blocked.out 2>&1 &"
          " echo $! > /var/tmp/blocked.pid")
    ct.wait_for(lambda: "attached" in ct.run(["cat", "/var/tmp/blocked.out"]).stdout, 20,
                "the client to attach")
    cpid = ct.run(["cat", "/var/tmp/blocked.out"]).stdout.split()[1]
    kf = ct.run(["cat", f"{ct.sdir}/lam-killfile"]).stdout.split()
    assert cpid in kf[1:]
    r = ct.run(["systemctl", "stop", ct.service], timeout=60)
    assert r.returncode == 0, r.stderr
    ct.wait_for(lambda: "No such process" in ct.run(["kill", "-0", cpid]).stderr, 10,
                "the client to die")
    assert ct.run(["test", "-e", f"{ct.sdir}/lam-killfile"]).returncode == 1
    assert ct.run(["systemctl", "is-active", ct.socket]).stdout.strip() == "active"
    assert ct.run(["test", "-S", f"{ct.sdir}/lam-kernel-socket"]).returncode == 0


def test_sigkilled_daemon_never_blocks_next_client(ct):
    lamnodes(ct)
    old = ct.show(ct.service, "MainPID")["MainPID"]
    ct.run(["kill", "-KILL", old])
    r = lamnodes(ct)
    assert r.returncode == 0, r.stderr
    wait_mainpid_change(ct, old)


def test_lamhalt_returns_and_the_next_client_starts_the_daemon(ct):
    """Stock lamhalt under socket activation: it halts the kernel (exit 0,
    the unit inactive with result success), returns at once with status 0,
    and the socket's path is systemd's listening socket again, so the next
    client starts a fresh kernel. lamhalt waits for the path to go
    (otb/lamhalt/lamhalt.c, spinning on stat with no limit), which systemd's
    socket never does: the kernel moves it aside while the lamhalt runs
    (lamd.session.halting). Before, lamhalt spun here until killed. No
    C-lamd side: the C lamd has no socket activation (its lamhalt returns
    because it removes its own socket: test_stock_tools.test_lamhalt)."""
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)   # attached: hung up by the halt (the test below halts before)
    old = ct.show(ct.service, "MainPID")["MainPID"]
    sock = f"{ct.sdir}/lam-kernel-socket"
    ino = ct.run(["stat", "-c", "%i", sock]).stdout.strip()
    t0 = time.monotonic()
    r = ct.as_user(["lamhalt"], timeout=30)
    took = time.monotonic() - t0
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr, took)
    assert took < 15, took   # bounded by as_user's timeout; before, it spun until killed
    try:
        ct.wait_for(lambda: ct.show(ct.service, "ActiveState")["ActiveState"] == "inactive", 20,
                    "the kernel halted")
    except AssertionError as e:
        raise AssertionError(f"{e}\n" + ct.run(["journalctl", "--no-pager", "-n", "60"]).stdout)
    assert ct.show(ct.service, "Result")["Result"] == "success"
    assert ct.run(["systemctl", "is-active", ct.socket]).stdout.strip() == "active"
    # the same socket (systemd's), at its path; nothing of it left aside
    assert ct.run(["stat", "-c", "%i %F", sock]).stdout.split() == [ino, "socket"]
    assert "lam-kernel-socket.halting" not in ct.run(["ls", "-a", ct.sdir]).stdout
    assert "moved aside until 1 of 1 lamhalts ended" in ct.run(
        ["journalctl", "-u", ct.service, "--no-pager", "-o", "cat"]).stdout
    r = lamnodes(ct)
    assert r.returncode == 0 and "n0" in r.stdout, r.stdout + r.stderr
    wait_mainpid_change(ct, old)


def test_lamhalt_before_the_jobs_process_attached_leaves_nothing(ct):
    """lamhalt right after the first client started the kernel, before the
    jobs process has attached (a drop-in holds it back a second after its
    ExecCondition= found the kernel active: a slow start, as under load).
    Its connect would make systemd start a second kernel after the halt,
    which nobody asked for and which started a jobs process in turn. Now it
    finds the kill file gone and exits 0 without connecting
    (``--for-running-kernel``); the kernel halted for good."""
    d = "/run/systemd/system/lamd-jobs@.service.d"
    ct.sh(f"mkdir -p {d} && printf '[Service]\\nExecStartPre=/bin/sleep 1\\n'"
          f" > {d}/50-test-slow.conf && systemctl daemon-reload")
    try:
        fresh_service(ct)
        assert lamnodes(ct).returncode == 0
        old = ct.show(ct.service, "MainPID", "NRestarts")
        r = ct.as_user(["lamhalt"], timeout=30)
        assert r.returncode == 0, (r.stdout, r.stderr)
        ct.wait_for(lambda: ct.show(ct.service, "ActiveState")["ActiveState"] == "inactive", 20,
                    "the kernel halted")
        try:
            ct.wait_for(lambda: "ended before this process attached" in ct.run(
                ["journalctl", "-u", ct.jobs, "--no-pager", "-o", "cat"]).stdout, 20,
                "the jobs process gave up")
        except AssertionError as e:
            raise AssertionError(f"{e}\n" + ct.run(
                ["journalctl", "--no-pager", "-n", "80"]).stdout) from None
        time.sleep(3)   # its Restart= (2 s) skipped by ExecCondition=: no kernel
        now = ct.show(ct.service, "ActiveState", "MainPID", "NRestarts", "ExecMainPID")
        assert now["ActiveState"] == "inactive", (old, now, ct.run(
            ["journalctl", "--no-pager", "-n", "60"]).stdout)
        jobs = ct.show(ct.jobs, "ActiveState", "MainPID")
        assert jobs == {"ActiveState": "inactive", "MainPID": "0"}, jobs
        assert now["MainPID"] == "0" and now["NRestarts"] == old["NRestarts"], (old, now)
        assert ct.run(["test", "-e", f"{ct.sdir}/lam-killfile"]).returncode != 0
        assert ct.run(["systemctl", "is-active", ct.socket]).stdout.strip() == "active"
    finally:
        ct.sh(f"rm -f {d}/50-test-slow.conf; systemctl daemon-reload")
        fresh_service(ct)


def test_halt_and_start_again_many_times_a_minute(ct):
    """What a job script does that boots LAM, runs and halts it, in a loop:
    stock lamhalt, then the next client, six times in well under a
    minute (the kernel's old limit, 5 starts a minute, failed its socket at
    the sixth). Every start is served, the jobs process attaches each time and
    the socket never fails: a clean halt and the next client's start are
    not a crash loop, whatever the units' start limits (which systemd
    counts for every start, socket activation and skipped restarts
    included)."""
    fresh_service(ct)
    t0 = time.monotonic()
    for i in range(6):
        r = lamnodes(ct)
        assert r.returncode == 0, (i, r.stdout, r.stderr, ct.show(ct.socket, "ActiveState", "Result"))
        wait_jobs(ct)
        r = ct.as_user(["lamhalt"], timeout=30)
        assert r.returncode == 0, (i, r.stdout, r.stderr)
        ct.wait_for(lambda: ct.show(ct.service, "ActiveState")["ActiveState"] == "inactive", 20,
                    "the kernel halted")
    assert time.monotonic() - t0 < 60
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    assert ct.show(ct.socket, "ActiveState")["ActiveState"] == "active"


def test_stock_tkill_leaves_a_socket_that_starts_the_daemon(ct):
    """lam-runtime's own tkill (by hand, or lamwipe without the prefix
    tree): it ends the kernel (SIGHUP through the kill file) and then
    removes the session directory with everything in it, the paths of
    systemd's listening sockets among them. lamd@.service's last
    ExecStopPost= (lamd-resocket, as root) has a transient unit restart
    lamd@USER.socket (and with it lamd-dl@USER.socket) once that tkill is
    over and the kernel's unit down, which make the directory and bind the
    paths again: the next client starts a fresh kernel. Before, the stop failed in the missing directory (226/NAMESPACE),
    the restarts too, until the start limit failed the socket unit: no
    client could start the daemon until an admin reset it. The C lamd's side is LAM's: after tkill no lamd runs until the
    next lamboot (a socket-activated daemon is started by the next client)."""
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)   # else its connect, after tkill, starts the next kernel
    old = ct.show(ct.service, "MainPID")["MainPID"]
    sock = f"{ct.sdir}/lam-kernel-socket"
    r = ct.as_user(["/usr/bin/tkill"], timeout=30)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    try:
        ct.wait_for(lambda: ct.show(ct.service, "ActiveState")["ActiveState"] == "inactive", 20,
                    "the kernel ended by tkill")
        dl = f"lamd-dl@{USER}.socket"
        ct.wait_for(lambda: ct.run(["stat", "-c", "%F", sock, f"{ct.sdir}/lamd-datalink-socket",
                                    f"{ct.sdir}/lamd-datalink-fifo"]).stdout.split("\n")[:3]
                    == ["socket", "socket", "fifo"]
                    and ct.run(["systemctl", "is-active", ct.socket, dl]).stdout.split()
                    == ["active", "active"], 30, "the sockets' paths bound again")
    except AssertionError as e:
        raise AssertionError(f"{e}\n" + ct.run(["journalctl", "--no-pager", "-n", "60"]).stdout)
    assert "was removed (lam-runtime's tkill?): restarting" in ct.run(
        ["journalctl", "-t", "lamd-resocket", "--no-pager", "-o", "cat"]).stdout
    st = ct.run(["stat", "-c", "%U %a", ct.sdir, sock]).stdout.split("\n")
    assert st[:2] == [f"{USER} 700", f"{USER} 600"], st
    assert ct.show(ct.service, "Result")["Result"] == "success"
    r = lamnodes(ct)
    assert r.returncode == 0 and "n0" in r.stdout, r.stdout + r.stderr
    wait_mainpid_change(ct, old)


def test_restart(ct):
    """`systemctl restart`: a new kernel, and a new jobs process attached to
    it (the old one, hung up by the stop, exits 0; its unit's Restart=
    finds the kernel up again: lamd-jobs@.service); then `systemctl stop`
    leaves both down, the jobs unit's Restart= finding the kernel down
    (ExecCondition=), and the next client starts both."""
    lamnodes(ct)
    jobs = wait_jobs(ct)
    old = ct.show(ct.service, "MainPID")["MainPID"]
    r = ct.run(["systemctl", "restart", ct.service], timeout=60)
    assert r.returncode == 0, r.stderr
    wait_mainpid_change(ct, old)
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct, not_pid=jobs)
    assert ct.show(ct.jobs, "Result")["Result"] == "success"
    r = ct.run(["systemctl", "stop", ct.service], timeout=60)
    assert r.returncode == 0, r.stderr
    time.sleep(3)  # past the jobs unit's RestartSec=
    p = ct.show(ct.jobs, "ActiveState", "ConditionResult")
    assert p == {"ActiveState": "inactive", "ConditionResult": "no"}, p
    assert ct.show(ct.service, "ActiveState")["ActiveState"] == "inactive"
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)


# What the documentation promises for `systemd-analyze security`: each place
# states the figure, and all must state the same one.
EXPOSURE_CLAIMS = {
    "README.md": r"`systemd-analyze security`\s+exposure (\d+\.\d)\)",
    "docs/packaging.md": r"`systemd-analyze security\s+lamd@USER\.service` exposure \*\*(\d+\.\d)\*\*",
    "systemd/lamd@.service": r"`systemd-analyze security lamd@USER`\s+# rates it (\d+\.\d) ",
}


def documented_exposure() -> str:
    found = {}
    for name, pattern in EXPOSURE_CLAIMS.items():
        with open(os.path.join(REPO, name)) as f:
            m = re.search(pattern, f.read())
        assert m, f"{name} no longer states the exposure figure ({pattern})"
        found[name] = m.group(1)
    assert len(set(found.values())) == 1, f"the docs disagree: {found}"
    return found["README.md"]


def overall_exposure(r: subprocess.CompletedProcess) -> str:
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d) ", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    return m.group(1)


def test_exposure_score_is_what_the_docs_promise(ct):
    """The running unit, the installed unit file and this checkout's unit file
    all score exactly the exposure the README, docs/packaging.md and the unit
    itself state (0.2); --threshold in systemd-analyze's units (tenths)
    holds it to that exactly."""
    promise = documented_exposure()
    tenths = str(int(promise.replace(".", "")))
    r = ct.run(["systemd-analyze", "security", ct.service, "--no-pager"], timeout=60)
    assert overall_exposure(r) == promise, r.stdout[-300:]
    for unit in ("/lib/systemd/system/lamd@.service", os.path.join(REPO, "systemd", "lamd@.service")):
        r = host(["systemd-analyze", "security", "--offline=yes", f"--threshold={tenths}",
                  "--no-pager", unit], check=False)
        assert r.returncode == 0, f"{unit} scores above {promise}:\n{r.stdout[-300:]}{r.stderr}"
        assert overall_exposure(r) == promise, f"{unit}: {r.stdout[-300:]}"


JOBS_EXPOSURE_CLAIMS = {
    "docs/packaging.md": r"`systemd-analyze security lamd-jobs@USER\.service` exposure: \*\*(\d+\.\d)\*\*",
    "systemd/lamd-jobs@.service": r"`systemd-analyze security lamd-jobs@USER` rates it (\d+\.\d) ",
}


def test_jobs_unit_exposure_is_measured_and_documented(ct):
    """The jobs unit is not a sandbox (its directives are justified in
    docs/packaging.md): its score, running and offline, is printed and is
    exactly what the docs state; the kernel's stays 0.2."""
    found = {}
    for name, pattern in JOBS_EXPOSURE_CLAIMS.items():
        with open(os.path.join(REPO, name)) as f:
            m = re.search(pattern, f.read())
        assert m, f"{name} no longer states the jobs unit's exposure ({pattern})"
        found[name] = m.group(1)
    assert len(set(found.values())) == 1, f"the docs disagree: {found}"
    promise = found["docs/packaging.md"]
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    r = ct.run(["systemd-analyze", "security", ct.jobs, "--no-pager"], timeout=60)
    running = overall_exposure(r)
    scores = {"running": running}
    for unit in ("/lib/systemd/system/lamd-jobs@.service",
                 os.path.join(REPO, "systemd", "lamd-jobs@.service")):
        r = host(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit], check=False)
        scores[unit] = overall_exposure(r)
    print(f"lamd-jobs@{USER}.service exposure: {scores}")
    assert set(scores.values()) == {promise}, scores
    assert overall_exposure(ct.run(["systemd-analyze", "security", ct.service, "--no-pager"],
                                   timeout=60)) == documented_exposure() == "0.2"


# ---- restart policy: a crash is restarted (up to the start limit), a setup
# ---- error (exit 78, EX_CONFIG) never is

def journal_count(ct, unit: str, text: str) -> int:
    return ct.run(["journalctl", "-u", unit, "--no-pager", "-o", "cat"]).stdout.count(text)


def fresh_service(ct) -> None:
    """The service stopped, its failure state and start-rate counter reset
    (earlier tests started it several times within StartLimitIntervalSec)."""
    # the jobs unit too: after a halt it waits RestartSec= to be started
    # again (and skipped), and a kernel started meanwhile does not start it
    ct.run(["systemctl", "stop", ct.service, ct.jobs], timeout=60)
    ct.run(["systemctl", "reset-failed", ct.socket, ct.service, ct.jobs])
    assert ct.run(["systemctl", "start", ct.socket]).returncode == 0


def test_crash_is_restarted_up_to_the_start_limit(ct):
    """SIGSEGV kills the daemon: Restart=on-failure starts it again, with no
    client asking, StartLimitBurst (20) times a minute in all; the crash after
    that leaves it failed (no crash loop). The jobs process lives on across
    the first crashes (checked for three)."""
    p = ct.show(ct.service, "StartLimitBurst", "StartLimitIntervalUSec", "RestartUSec")
    assert (p["StartLimitBurst"], p["StartLimitIntervalUSec"], p["RestartUSec"]) == ("20", "1min", "100ms")
    burst = int(p["StartLimitBurst"])
    too_quick = journal_count(ct, ct.service, "Start request repeated too quickly")
    fresh_service(ct)
    try:
        assert ct.run(["systemctl", "start", ct.service], timeout=60).returncode == 0
        pid = ct.show(ct.service, "MainPID")["MainPID"]
        assert ct.show(ct.service, "NRestarts")["NRestarts"] == "0"
        daemons = [pid]
        jobs = wait_jobs(ct)
        for k in range(1, burst):
            assert int(pid) > 1, pid
            # the jobs process lives on across each crash, attached (its
            # connections wait in the descriptor store)
            if k <= 3:
                assert wait_jobs(ct) == jobs
            ct.run(["kill", "-SEGV", pid])
            pid = wait_mainpid_change(ct, pid)
            daemons.append(pid)
            assert ct.show(ct.service, "NRestarts")["NRestarts"] == str(k)
        assert int(pid) > 1, pid
        assert wait_jobs(ct) == jobs
        ct.run(["kill", "-SEGV", pid])  # one start too many for the minute
        ct.wait_for(lambda: ct.show(ct.service, "ActiveState")["ActiveState"] == "failed",
                    30, "the service to fail")
        # the kernel is down for good: systemd emptied its store, so the
        # jobs process saw its connections end and exited; its unit's
        # Restart= finds the kernel down (ExecCondition=) and starts nothing,
        # which would have started the kernel again through its socket
        ct.wait_for(lambda: not alive(ct, jobs), 15, "the jobs process to end")
        ct.wait_for(lambda: ct.show(ct.jobs, "ActiveState")["ActiveState"] == "inactive", 15,
                    "the jobs unit to stay down")
        time.sleep(3)  # past RestartSec: nothing more is started
        p = ct.show(ct.service, "ActiveState", "Result", "NRestarts", "ExecMainCode",
                    "ExecMainStatus", "MainPID")
        assert p == {"ActiveState": "failed", "Result": "signal", "NRestarts": str(burst),
                     "ExecMainCode": "2", "ExecMainStatus": "11", "MainPID": "0"}, p
        assert len(set(daemons)) == burst
        assert journal_count(ct, ct.service, "Start request repeated too quickly") == too_quick + 1
        assert ct.show(ct.jobs, "ActiveState")["ActiveState"] == "inactive"
    finally:
        ct.run(["systemctl", "reset-failed", ct.socket, ct.service, ct.jobs])
        ct.run(["systemctl", "start", ct.socket])
    assert lamnodes(ct).returncode == 0


# ---- bad input: one clear line, non-zero exit, no crash loop ----

def test_user_that_does_not_exist(ct):
    unit = "lamd@nosuchuser-lamd.socket"
    r = ct.run(["systemctl", "start", unit], timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr  # the job failed
    assert ct.show(unit, "ActiveState", "Result") == {"ActiveState": "failed",
                                                      "Result": "exit-code"}
    log = ct.run(["journalctl", "-u", unit, "--no-pager", "-o", "cat"]).stdout
    assert "lamd: user 'nosuchuser-lamd' does not exist (lamd@nosuchuser-lamd names a user)\n" in log
    assert "Control process exited, code=exited, status=78/CONFIG" in log
    ct.run(["systemctl", "reset-failed", unit])


def test_session_dir_with_wrong_mode(ct):
    ct.run(["systemctl", "stop", ct.socket, ct.service], timeout=60)
    try:
        ct.run(["chmod", "0755", ct.sdir])
        r = ct.run(["systemctl", "start", ct.socket], timeout=30)
        assert r.returncode == 1, r.stdout + r.stderr  # the job failed
        assert ct.show(ct.socket, "ActiveState", "Result") == {"ActiveState": "failed",
                                                               "Result": "exit-code"}
        status = ct.run(["systemctl", "status", ct.socket, "--no-pager", "-n", "20"]).stdout
        assert "mode 0755, not 0700" in status
        assert "status=78/CONFIG" in status
        assert ct.run(["stat", "-c", "%a", ct.sdir]).stdout.strip() == "755"  # left alone
    finally:
        ct.run(["chmod", "0700", ct.sdir])
        ct.run(["systemctl", "reset-failed", ct.socket])
        assert ct.run(["systemctl", "start", ct.socket]).returncode == 0


def test_several_descriptors_refused_without_crash_loop(ct):
    """Two sockets from systemd: the daemon exits 78 (EX_CONFIG) with one
    line, and RestartPreventExitStatus=78 keeps Restart= from ever starting
    it again (NRestarts stays 0). The socket does start it again for the
    client still waiting in its queue, but StartLimitBurst stops that too."""
    d = f"/run/systemd/system/{ct.socket}.d"
    ct.sh(f"mkdir -p {d} && printf '[Socket]\\nListenStream={ct.sdir}/extra-socket\\n'"
          f" > {d}/50-test-extra.conf && systemctl daemon-reload")
    try:
        fresh_service(ct)
        ct.run(["systemctl", "restart", ct.socket], timeout=30)
        refusal = "expected exactly 1 socket from systemd, got 2"
        refused = journal_count(ct, ct.service, refusal)
        scheduled = journal_count(ct, ct.service, "Scheduled restart job")
        lamnodes(ct)   # activates; the daemon must refuse and exit 78
        ct.wait_for(lambda: ct.show(ct.service, "ActiveState")["ActiveState"] == "failed",
                    60, "the service to fail")
        time.sleep(3)  # far past RestartSec=: a restart would have been scheduled
        p = ct.show(ct.service, "Result", "NRestarts", "ExecMainCode", "ExecMainStatus")
        assert p == {"Result": "exit-code", "NRestarts": "0", "ExecMainCode": "1",
                     "ExecMainStatus": "78"}, p
        assert journal_count(ct, ct.service, "Scheduled restart job") == scheduled
        runs = journal_count(ct, ct.service, refusal) - refused
        burst = int(ct.show(ct.service, "StartLimitBurst")["StartLimitBurst"])
        assert 1 <= runs <= burst, f"{runs} starts: a crash loop"
        status = ct.run(["systemctl", "status", ct.service, "--no-pager"]).stdout
        assert "status=78/CONFIG" in status
    finally:
        ct.sh(f"rm -rf {d}; systemctl daemon-reload")
        ct.run(["systemctl", "stop", ct.socket, ct.service], timeout=60)
        ct.run(["systemctl", "reset-failed", ct.socket, ct.service])
        ct.run(["systemctl", "start", ct.socket])


# ---- reload, upgrade and crash under running clients (issue 12) ----

PAIR_EVENT = 610000


def start_pairs(ct, tag: str, n: int, *, iters: int, size: int = 64, delay_us: int = 1000,
                limit: int = 120, event: int = PAIR_EVENT) -> None:
    """*n* stock liblam ping-pong pairs (tests/system/pingpong_client.c) in
    the background, each bounded by `timeout -k 2 LIMIT`; returns once
    every one is past its tenth round trip."""
    r = ct.pingpong_build
    assert r.returncode == 0, f"hcc pingpong_client.c failed:\n{r.stdout}{r.stderr}"
    ct.sh(f"rm -f /var/tmp/pp-{tag}-*")
    for i in range(n):
        f = f"/var/tmp/pp-{tag}-{i}"
        ct.sh(f"(timeout -k 2 {limit} runuser -u {USER} -- /var/tmp/pingpong_client "
              f"{event + 2 * i} {iters} {size} {delay_us} > {f}.out 2>&1; "
              f"echo $? > {f}.rc) </dev/null >/dev/null 2>&1 &")
    ct.wait_for(lambda: all("running" in ct.run(["cat", f"/var/tmp/pp-{tag}-{i}.out"]).stdout
                            for i in range(n)), 30, f"the {tag} pairs to run")


def pairs_ended(ct, tag: str, n: int) -> int:
    return sum(ct.run(["test", "-e", f"/var/tmp/pp-{tag}-{i}.rc"]).returncode == 0
               for i in range(n))


def pair_results(ct, tag: str, n: int, limit: int = 120) -> tuple[dict[str, int], list[str]]:
    """completed (exit 0, "OK N": every byte checked), errored (any other
    status) and hung (killed by their timeout) pairs, and what the ones that
    did not complete printed."""
    ct.wait_for(lambda: pairs_ended(ct, tag, n) == n, limit + 20, f"the {tag} pairs to end")
    counts = {"completed": 0, "errored": 0, "hung": 0}
    bad = []
    for i in range(n):
        rc = int(ct.run(["cat", f"/var/tmp/pp-{tag}-{i}.rc"]).stdout.strip())
        out = ct.run(["cat", f"/var/tmp/pp-{tag}-{i}.out"]).stdout
        if rc == 0 and re.search(r"^OK \d+$", out, re.M):
            counts["completed"] += 1
            continue
        counts["hung" if rc in (124, 137) else "errored"] += 1
        bad.append(f"pair {i}: rc {rc}: {out[-300:]}")
    return counts, bad


def start_blocked(ct, tag: str) -> str:
    """blocked_client (kinit, then a krecv nobody answers) in the
    background; its pid once attached. Its exit status goes to
    /var/tmp/blocked-TAG.rc."""
    r = ct.blocked_client_build
    assert r.returncode == 0, f"hcc blocked_client.c failed:\n{r.stdout}{r.stderr}"
    f = f"/var/tmp/blocked-{tag}"
    ct.run(["rm", "-f", f"{f}.out", f"{f}.rc"])
    ct.sh(f"(runuser -u {USER} -- /var/tmp/blocked_client > {f}.out 2>&1; echo $? > {f}.rc)"
          " </dev/null >/dev/null 2>&1 &")
    ct.wait_for(lambda: "attached" in ct.run(["cat", f"{f}.out"]).stdout, 20,
                "the blocked client to attach")
    return ct.run(["cat", f"{f}.out"]).stdout.split()[1]


def alive(ct, pid: str) -> bool:
    return "No such process" not in ct.run(["kill", "-0", pid]).stderr


def killfile_pids(ct) -> list[str]:
    return ct.run(["cat", f"{ct.sdir}/lam-killfile"]).stdout.split()


def test_reload_reexecs_in_place_under_running_clients(ct):
    """`systemctl reload`: ExecReload= re-executes the daemon in place (the
    unit goes reloading, then active; same main pid, no restart), the
    syscall filter allowing memfd_create and execve; a stock client blocked
    in the kernel stays blocked and listed, 18 64 B ping-pong pairs and two
    1 MiB ones (20 pairs) running through the reload all complete with every byte
    checked (none errored, none hung), and tping works afterwards."""
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    p = ct.show(ct.service, "ExecReload", "SystemCallFilter", "MainPID", "NRestarts")
    assert "-m lamd.service reload" in p["ExecReload"], p["ExecReload"]
    assert {"memfd_create", "execve", "pidfd_open", "pidfd_send_signal"} <= \
        set(p["SystemCallFilter"].split()), p["SystemCallFilter"][:300]
    pid, restarts = p["MainPID"], p["NRestarts"]
    restored = journal_count(ct, ct.service, "re-exec: restored")
    reloaded = journal_count(ct, ct.service, "Reloaded ")
    cpid = start_blocked(ct, "reload")
    start_pairs(ct, "reload", 18, iters=4000)
    start_pairs(ct, "reload-big", 2, iters=300, size=1 << 20, event=PAIR_EVENT + 100)
    states: list[str] = []
    done: dict = {}
    th = threading.Thread(target=lambda: done.setdefault(
        "r", ct.run(["systemctl", "reload", ct.service], timeout=60)))
    th.start()
    while th.is_alive():
        states.append(ct.run(["systemctl", "is-active", ct.service]).stdout.strip())
    th.join()
    r = done["r"]
    assert r.returncode == 0, r.stderr + ct.run(
        ["journalctl", "-u", ct.service, "--no-pager", "-n", "30"]).stdout
    assert pairs_ended(ct, "reload", 18) == 0, "the pairs did not span the reload"
    assert pairs_ended(ct, "reload-big", 2) == 0, "the 1 MiB pairs did not span the reload"
    assert "reloading" in states, states
    assert ct.run(["systemctl", "is-active", ct.service]).stdout.strip() == "active"
    assert ct.show(ct.service, "MainPID", "NRestarts") == {"MainPID": pid, "NRestarts": restarts}
    assert journal_count(ct, ct.service, "re-exec: restored") == restored + 1
    assert journal_count(ct, ct.service, "Reloaded ") == reloaded + 1
    kf = killfile_pids(ct)
    assert kf[0] == pid and cpid in kf[1:], kf
    assert alive(ct, cpid)
    assert ct.run(["test", "-e", "/var/tmp/blocked-reload.rc"]).returncode == 1
    r = ct.as_user(["tping", "-c", "3", "N"], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    counts, bad = pair_results(ct, "reload", 18)
    print(f"reload with 18 pairs of 64 B: {counts}")
    assert counts == {"completed": 18, "errored": 0, "hung": 0}, bad
    counts, bad = pair_results(ct, "reload-big", 2)
    print(f"reload with 2 pairs of 1 MiB: {counts}")
    assert counts == {"completed": 2, "errored": 0, "hung": 0}, bad
    assert alive(ct, cpid)  # still blocked: nobody sent it anything
    ct.run(["kill", "-KILL", cpid])


NEWER = "+upgradetest1"


def build_newer_deb(deb: str, out) -> str:
    """The package under test as a newer one: *deb* unpacked, version
    0.1.0+upgradetest1 in its control file and in lamd.__version__ (what the
    daemon logs, its md5sums line renewed), packed again with dpkg-deb. What
    the test checks is dpkg's upgrade and the postinst's reloads, the same
    for this as for a second build of the tree, which cost CI about 100 s."""
    root = os.path.join(str(out), "root")
    host(["dpkg-deb", "-R", deb, root])
    ctl = os.path.join(root, "DEBIAN", "control")
    with open(ctl) as f:
        control = f.read()
    old = re.search(r"^Version: (\S+)$", control, re.M).group(1)
    with open(ctl, "w") as f:
        f.write(control.replace(f"Version: {old}\n", f"Version: {old}{NEWER}\n"))
    rel = "usr/lib/python3/dist-packages/lamd/__init__.py"
    with open(os.path.join(root, rel)) as f:
        init = f.read()
    ver = re.search(r'^__version__ = "([^"]+)"', init, re.M).group(1)
    init = init.replace(f'__version__ = "{ver}"', f'__version__ = "{ver}{NEWER}"')
    with open(os.path.join(root, rel), "w") as f:
        f.write(init)
    sums = os.path.join(root, "DEBIAN", "md5sums")
    with open(sums) as f:
        lines = f.read().splitlines()
    digest = hashlib.md5(init.encode()).hexdigest()
    with open(sums, "w") as f:
        f.write("".join((f"{digest}  {rel}" if ln.endswith("  " + rel) else ln) + "\n"
                        for ln in lines))
    newer = os.path.join(str(out), f"lamd_{old}{NEWER}_amd64.deb")
    host(["dpkg-deb", "--root-owner-group", "-b", root, newer], timeout=300)
    return newer


def test_package_upgrade_reloads_running_instances(ct, tmp_path):
    """Installing a newer build of the package runs its postinst (`configure
    OLD`), which reloads every active lamd@USER.service: the daemon
    re-executes into the code now installed (it logs the new version, same
    pid) and ten 64 B pairs running through it all complete; a datalink
    service that only waits for lamboot (lamd-dl@USER.service started
    ahead) is started again, a new process waiting as before. The container
    shares the host's /usr read-only, so the package is installed on the
    host and its installed postinst is run in the container,
    byte-compilation (done by the host's dpkg) stubbed. The build under
    test is installed again afterwards."""
    assert ct.deb, "LAMD_DEB=installed: no package to upgrade from"
    newer = build_newer_deb(ct.deb, tmp_path)
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    pid = ct.show(ct.service, "MainPID")["MainPID"]
    try:
        r = host(["dpkg", "-i", newer], timeout=300, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        with open("/var/lib/dpkg/info/lamd.postinst") as f:
            postinst = f.read()
        assert "systemctl reload" in postinst
        ct.run(["sh", "-c", "cat > /var/tmp/lamd.postinst"], input=postinst)
        ct.sh("mkdir -p /var/tmp/stubs && for c in py3compile pypy3compile; do "
              "printf '#!/bin/sh\\nexit 0\\n' > /var/tmp/stubs/$c; "
              "chmod 755 /var/tmp/stubs/$c; done")
        dl = ct.service.replace("lamd@", "lamd-dl@")
        r = ct.run(["systemctl", "start", dl])
        assert r.returncode == 0, r.stdout + r.stderr
        ct.wait_for(lambda: ct.show(dl, "StatusText")["StatusText"] == "waiting for lamboot",
                    30, "the datalink service waiting for lamboot")
        dl_pid = ct.show(dl, "MainPID")["MainPID"]
        restored = journal_count(ct, ct.service, "re-exec: restored")
        serving_new = journal_count(ct, ct.service, f"{NEWER} serving")
        start_pairs(ct, "upgrade", 10, iters=4000)
        r = ct.run(["env", "PATH=/var/tmp/stubs:/usr/sbin:/usr/bin:/sbin:/bin", "sh",
                    "/var/tmp/lamd.postinst", "configure", "0.1.0"], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"lamd: {ct.service} re-executed with the new version" in r.stderr, r.stderr
        assert f"lamd: {dl} (waiting for lamboot) started again" in r.stderr, r.stderr
        ct.wait_for(lambda: ct.show(dl, "StatusText")["StatusText"] == "waiting for lamboot",
                    30, "the datalink service waiting again")
        assert ct.show(dl, "MainPID")["MainPID"] not in ("0", dl_pid)
        assert pairs_ended(ct, "upgrade", 10) == 0, "the pairs did not span the upgrade"
        assert ct.show(ct.service, "MainPID", "ActiveState") == {"MainPID": pid,
                                                                  "ActiveState": "active"}
        assert journal_count(ct, ct.service, "re-exec: restored") == restored + 1
        assert journal_count(ct, ct.service, f"{NEWER} serving") == serving_new + 1
        counts, bad = pair_results(ct, "upgrade", 10)
        print(f"upgrade with 10 pairs of 64 B: {counts}")
        assert counts == {"completed": 10, "errored": 0, "hung": 0}, bad
    finally:
        ct.run(["systemctl", "stop", ct.service.replace("lamd@", "lamd-dl@")])
        r = host(["dpkg", "-i", ct.deb], timeout=300, check=False)
        assert r.returncode == 0, r.stdout + r.stderr


IDLE_CLIENT_C = r"""
#include <stdio.h>
#include <unistd.h>
#include <lam.h>
#include <kreq.h>
#include <priority.h>
int main(void) {
    if (kinit(PRCMD)) { perror("kinit"); return 1; }
    printf("attached %d\n", getpid()); fflush(stdout);
    sleep(600);     /* attached, computing: no request to the kernel */
    return 0;
}
"""


def start_idle(ct, tag: str) -> str:
    if ct.run(["test", "-x", "/var/tmp/idle_client"]).returncode != 0:
        ct.run(["sh", "-c", "cat > /var/tmp/idle_client.c"], input=IDLE_CLIENT_C)
        r = ct.run(["hcc", "-o", "/var/tmp/idle_client", "/var/tmp/idle_client.c"], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        ct.run(["chmod", "755", "/var/tmp/idle_client"])
    f = f"/var/tmp/idle-{tag}"
    ct.run(["rm", "-f", f"{f}.out", f"{f}.rc"])
    ct.sh(f"(runuser -u {USER} -- /var/tmp/idle_client > {f}.out 2>&1; echo $? > {f}.rc)"
          " </dev/null >/dev/null 2>&1 &")
    ct.wait_for(lambda: "attached" in ct.run(["cat", f"{f}.out"]).stdout, 20,
                "the idle client to attach")
    return ct.run(["cat", f"{f}.out"]).stdout.split()[1]


SEND_CLIENT_C = r"""
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <lam.h>
#include <kreq.h>
#include <priority.h>
int main(int argc, char **argv) {
    struct kmsg m; char buf[64];
    if (kinit(PRCMD)) { perror("kinit"); return 1; }
    memset(&m, 0, sizeof m); memset(buf, 7, sizeof buf);
    m.k_event = atoi(argv[1]); m.k_type = 0; m.k_length = sizeof buf; m.k_msg = buf;
    if (ksend(&m)) { perror("ksend"); return 1; }
    printf("sent\n");
    return 0;
}
"""


def send_to(ct, event: int):
    """A stock client that sends 64 bytes on *event* (what blocked_client waits for)."""
    if ct.run(["test", "-x", "/var/tmp/send_client"]).returncode != 0:
        ct.run(["sh", "-c", "cat > /var/tmp/send_client.c"], input=SEND_CLIENT_C)
        r = ct.run(["hcc", "-o", "/var/tmp/send_client", "/var/tmp/send_client.c"], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        ct.run(["chmod", "755", "/var/tmp/send_client"])
    return ct.as_user(["/var/tmp/send_client", str(event)], timeout=20)


BLOCKED_EVENT = 424242  # tests/system/blocked_client.c


def check_carried(ct, new: str, idle: str, blocked: str, tag: str) -> None:
    """After a crash restart: the idle and the blocked client live on, listed
    in the new daemon's kill file; the blocked one is still in its krecv,
    and a message sent now reaches it."""
    kf = killfile_pids(ct)
    assert kf and kf[0] == new and {idle, blocked} <= set(kf[1:]), kf
    assert alive(ct, idle) and alive(ct, blocked)
    assert ct.run(["test", "-e", f"/var/tmp/blocked-{tag}.rc"]).returncode == 1, \
        ct.run(["cat", f"/var/tmp/blocked-{tag}.out"]).stdout
    r = send_to(ct, BLOCKED_EVENT)
    assert r.returncode == 0 and "sent" in r.stdout, r.stdout + r.stderr
    rc = ct.wait_for(lambda: ct.run(["cat", f"/var/tmp/blocked-{tag}.rc"]).stdout.strip(), 15,
                     "the blocked client to get its message")
    assert rc == "0" and "received?" in ct.run(["cat", f"/var/tmp/blocked-{tag}.out"]).stdout


def test_sigkill_keeps_the_clients_and_a_stop_still_kills_them(ct):
    """SIGKILL of the daemon with clients attached: 20 stock 64 B ping-pong
    pairs mid-run, a client blocked in krecv, an idle one. systemd runs
    ExecStop=/ExecStopPost= (lamd-tkill --systemd, SERVICE_RESULT=signal:
    the clients are left alone) and restarts it (Restart=on-failure) with
    the descriptor store: every client connection and the crash state come
    back (docs/restart.md). No pair hangs (a pair caught mid-body may
    error: LAM's error, ENOKERNEL, never silence); the idle and blocked
    clients carry on, listed in the new kill file, and the blocked one gets
    a message sent after the restart. A real `systemctl stop` afterwards
    still kills the clients."""
    fresh_service(ct)
    assert lamnodes(ct).returncode == 0
    wait_jobs(ct)
    p = ct.show(ct.service, "FileDescriptorStoreMax", "MainPID")
    assert p["FileDescriptorStoreMax"] == "32768", p
    old = p["MainPID"]
    idle = start_idle(ct, "crash")
    blocked = start_blocked(ct, "crash")
    assert {idle, blocked} <= set(killfile_pids(ct)[1:])
    left = journal_count(ct, ct.service, "leaving its clients and the kill file alone")
    took = journal_count(ct, ct.service, "after a crash: took back")
    start_pairs(ct, "crash", 20, iters=4000)
    t0 = time.monotonic()
    ct.run(["kill", "-KILL", old])
    new = wait_mainpid_change(ct, old)
    print(f"SIGKILL to serving again (RestartSec= included): {time.monotonic() - t0:.2f} s")
    log = ct.run(["journalctl", "-u", ct.service, "--no-pager", "-o", "cat"]).stdout
    assert journal_count(ct, ct.service, "after a crash: took back") == took + 1, log[-3000:]
    assert journal_count(ct, ct.service, "leaving its clients and the kill file alone") \
        >= left + 1, log[-3000:]   # ExecStop= (and ExecStopPost=)
    assert "SERVICE_RESULT=signal" in log
    assert "refused, starting clean" not in log[-5000:]
    assert pairs_ended(ct, "crash", 20) < 20, "the pairs did not span the crash"
    counts, bad = pair_results(ct, "crash", 20)
    print(f"SIGKILL with 20 pairs of 64 B mid-run: {counts}")
    assert counts["hung"] == 0, bad
    assert counts["completed"] + counts["errored"] == 20
    check_carried(ct, new, idle, blocked, "crash")
    r = ct.as_user(["tping", "-c", "3", "N"], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    # a real stop: the clients carried across the crash are killed
    blocked2 = start_blocked(ct, "stop")
    assert ct.run(["systemctl", "stop", ct.service], timeout=60).returncode == 0
    ct.wait_for(lambda: not alive(ct, idle) and not alive(ct, blocked2), 10,
                "the clients to be killed by the stop")
    assert ct.run(["cat", "/var/tmp/idle-crash.rc"]).stdout.strip() in ("129", "137")  # HUP, KILL
    ct.run(["systemctl", "reset-failed", ct.service, ct.jobs])
    assert lamnodes(ct).returncode == 0


def test_watchdog_abort_keeps_the_clients(ct):
    """The watchdog aborts a hung daemon (SIGSTOP: no WATCHDOG=1; SIGABRT,
    then SIGKILL after TimeoutAbortSec=): the restarted daemon takes its
    clients back from the descriptor store, as after a SIGKILL."""
    ct.sh("mkdir -p /run/systemd/system/lamd@.service.d && printf '[Service]\\nWatchdogSec=3s\\n"
          "TimeoutAbortSec=2s\\n' > /run/systemd/system/lamd@.service.d/50-test-watchdog.conf"
          " && systemctl daemon-reload")
    try:
        fresh_service(ct)
        assert lamnodes(ct).returncode == 0
        wait_jobs(ct)
        old = ct.show(ct.service, "MainPID")["MainPID"]
        idle = start_idle(ct, "wd")
        blocked = start_blocked(ct, "wd")
        took = journal_count(ct, ct.service, "after a crash: took back")
        ct.run(["kill", "-STOP", old])
        new = wait_mainpid_change(ct, old, timeout=60)
        log = ct.run(["journalctl", "-u", ct.service, "--no-pager", "-o", "cat"]).stdout
        assert "atchdog timeout" in log and "SERVICE_RESULT=watchdog" in log, log[-3000:]
        assert journal_count(ct, ct.service, "after a crash: took back") == took + 1, log[-3000:]
        check_carried(ct, new, idle, blocked, "wd")
        ct.run(["kill", "-KILL", idle])
    finally:
        ct.sh("rm -f /run/systemd/system/lamd@.service.d/50-test-watchdog.conf; "
              "systemctl daemon-reload")
        ct.run(["systemctl", "reset-failed", ct.service, ct.jobs])
        ct.run(["systemctl", "restart", ct.service])
