"""kenyad (``lamd/jobs/kenyad.py``): LAM's process server.

Three layers:

* sans-IO, through :class:`tests.lamclient.World` (the whole boot table,
  with a test flatd): the table, exit notices, attach/detach, state, doom,
  the bound on the table, bad requests, flatd that never answers; starting
  a process is replaced by a recorder, child exits are fired by the test;
* in-process, real sockets and processes: our kernel (KernelIO) in a thread
  with kenyad and a test flatd served by a :class:`ServiceHost` in another
  (as ``lamd --external kenyad,flatd`` plus the jobs host), and the test as
  the tool (rflatv, PQCREATE with RTF_PFDIO over its descriptor server,
  waiting for the exit notice), as ``lamexec``/``mpirun`` do;
* interop, as user ``lamtest``: stock ``lamexec``, ``mpitask`` and
  ``lamclean`` against ``python3 -m lamd --external kenyad,flatd`` and the
  host (``tests/kenyad_flatd.py``).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from lamd.client import KernelClient
from lamd.iprocs import boot_table
from lamd.iprocs.host import ServiceHost
from lamd.iprocs.nreq import BFQRECV, DLCTL, DLSYS, DLUSR, LOCAL, NREEL, data_words
from lamd.jobs import kenyad as kmod
from lamd.jobs import srfd
from lamd.jobs.wire import (
    EBADTAG, EEOF, ENOPDESCRIPTORS, ENOTPROCESS, ESERVICE, FLQLOAD, NOTPROCESS, PQATTACH,
    PQCREATE, PQDETACH, PQDOOM, PQSPAWN, PQSTATE, RTF_IO, RTF_KENYA_ATTACH,
    RTF_KENYA_CHILD, RTF_MPI, RTF_MPIRUN, RTF_PFDIO, RTF_TRYCWD, RTF_WAIT, SELECT_ALL,
    SELECT_APPL, SELECT_INDEX, SELECT_MPI, SELECT_PID, SIGUDIE, FlReply, FlReq, JobId,
    PReply, PReq, PState, fd_server_path, glue_flat_args, reply_event, wait_event,
)
from lamd.kernel import Kernel
from lamd.kernel.constants import (
    EVBUFFERD, EVFLATD, EVKENYAD, KNMSG, KSFREE, LAM_ERR_BASE, MAXNMSGLEN, PRCMD,
    PRDAEMON, LamErrno,
)
from lamd.kernel.kiproc import ChildExit, KBoot
from lamd.kernel.wire import NMsg
from lamd.kernelio import KernelIO

from . import lamenv
from .kenyad_flatd import FLATD_ROW, fake_flatd
from .lamclient import World
from .test_stock_tools import show, wait_until

ADDR = "192.0.2.2"
TIMEOUT = 10.0
NODETACH = 0x20000
SIGNALED = 0x10000
LAM_ERR_TO = int(LamErrno.LAM_ERR_TO)


def short_tmp() -> str:
    """A session directory short enough for flatd's FLPATHLEN (96) paths."""
    return tempfile.mkdtemp(prefix="kd-", dir="/tmp")


def preq(tool: int, req: int, **kw: Any) -> bytes:
    kw.setdefault("src_node", LOCAL)
    kw.setdefault("src_event", reply_event(tool))
    return PReq(req=req, **kw).pack()


# =============================================================================
# in-process, real sockets and processes
# =============================================================================


class Daemon:
    """Our kernel in a thread without kenyad and flatd, and a host serving
    the real kenyad and the test flatd in another thread."""

    def __init__(self, tmp: str, **config: Any) -> None:
        self.dir = tmp
        self.path = os.path.join(tmp, "lam-kernel-socket")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(64)
        self.kernel = Kernel(kernel_pid=os.getpid())
        self.io = KernelIO(self.kernel, lsock, killfile=os.path.join(tmp, "lam-killfile"),
                           clients_file=os.path.join(tmp, "lamd-clients"), tick_interval=0.2)
        self.config: dict[str, Any] = {"node_addr": ADDR, "session": tmp, **config}
        self.io.boot(boot_table(self.config, ["kenyad", "flatd"]), self.config)
        self.thread = threading.Thread(target=self.io.run, daemon=True)
        self.thread.start()
        self.host = ServiceHost(self.path, ["kenyad", FLATD_ROW], self.config)
        self.status: list[int] = []
        self.hthread = threading.Thread(target=lambda: self.status.append(self.host.run()),
                                        daemon=True)
        self.hthread.start()
        self.clients: list[KernelClient] = []
        assert wait_until(lambda: self.kernel.nclients >= 2, TIMEOUT), "host not attached"

    def client(self) -> KernelClient:
        c = KernelClient.connect(self.path, timeout=TIMEOUT)
        c.attach(PRCMD)
        self.clients.append(c)
        return c

    def stop_host(self) -> None:
        self.host.request_stop()
        self.hthread.join(TIMEOUT)
        assert not self.hthread.is_alive(), "host did not stop"

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.hthread.is_alive():
            self.stop_host()
        self.io.request_stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "kernel did not stop"
        self.io.shutdown(unlink_socket=self.path)


@pytest.fixture
def daemon_factory() -> Iterator[Any]:
    made: list[Daemon] = []
    dirs: list[str] = []

    def make(**config: Any) -> Daemon:
        d = short_tmp()
        dirs.append(d)
        dm = Daemon(d, **config)
        made.append(dm)
        return dm

    yield make
    for dm in made:
        dm.stop()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Launch:
    reply: PReply
    out: str = ""
    err: str = ""
    notice: PReply | None = None


class Tool:
    """What lamexec/mpirun do toward flatd and kenyad (one node), as pid
    *pid* (any number: only events and the descriptor server use it)."""

    def __init__(self, d: Daemon, pid: int) -> None:
        self.d = d
        self.c = d.client()
        self.pid = pid

    def nsend(self, event: int, body: bytes = b"", data: tuple[int, ...] = ()) -> None:
        head = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=event, type=0, length=len(body),
                    data=data_words(*data))
        self.c.send(EVBUFFERD, DLUSR if event >= 0 else DLSYS, body, KNMSG, nmsg=head)

    def nrecv(self, event: int, length: int = MAXNMSGLEN, type_: int = 0,
              timeout: float = TIMEOUT) -> tuple[NMsg, bytes]:
        bf = NMsg(dl_event=EVBUFFERD, node=LOCAL, event=EVBUFFERD, type=DLCTL,
                  data=data_words(0, 0, BFQRECV, 0, event, type_, 0, 0))
        self.c.sock.settimeout(timeout)
        try:
            m = self.c.sr(EVBUFFERD, DLCTL, b"", event, type_, length, KNMSG, KNMSG, nmsg=bf)
        except socket.timeout:
            self.c.close()  # in the middle of a request: a new connection
            self.c = self.d.client()
            raise
        finally:
            self.c.sock.settimeout(TIMEOUT)
        assert m.nmsg is not None
        return m.nmsg, m.body

    def reply(self, timeout: float = TIMEOUT) -> PReply:
        head, body = self.nrecv(reply_event(self.pid), 16, timeout=timeout)
        assert head.flags & NREEL
        return PReply.unpack(body)

    def notice(self, timeout: float = TIMEOUT) -> PReply:
        head, body = self.nrecv(wait_event(self.pid), 16, 1, timeout=timeout)
        assert head.type == 1 and head.flags & NREEL, head
        return PReply.unpack(body)

    def rflatv(self, argv: list[str], envv: list[str] = ()) -> tuple[int, int]:
        """flatd FLQLOAD: the open, then the blob in MAXNMSGLEN packets."""
        blob, envsize = glue_flat_args(argv, list(envv))
        req = FlReq(src_node=LOCAL, src_event=reply_event(self.pid), req=FLQLOAD,
                    parm1=self.pid, parm2=len(blob), parm3=len(blob))
        self.nsend(EVFLATD, b"", req.data())
        assert FlReply.from_data(self.nrecv(reply_event(self.pid), 0)[0].data).reply == 0
        for off in range(0, len(blob), MAXNMSGLEN):
            self.nsend(EVFLATD, blob[off:off + MAXNMSGLEN], req.data())
        assert FlReply.from_data(self.nrecv(reply_event(self.pid), 0)[0].data).reply == 0
        return self.pid, envsize

    def create(self, prog: str, args: list[str] | None = None, env: list[str] = (),
               rtf: int = RTF_WAIT | RTF_IO | RTF_PFDIO, wrkdir: str = "",
               stdin: bytes = b"", rank: int = 0, world: int = 1,
               wait: bool = True, server: str = "normal") -> Launch:
        """PQCREATE as rpcreatev sends it; with RTF_PFDIO the tool's fd server
        hands over a pipe stdin and files for stdout/stderr. *server*:
        "normal", "never-accepts" or "garbage" (a byte without a descriptor)."""
        tag = envsize = 0
        if args is not None:
            tag, envsize = self.rflatv([prog, *args], list(env))
        srv = None
        holder: list[Any] = []
        tmp = tempfile.mkdtemp(prefix="kdio-")
        outp, errp = os.path.join(tmp, "out"), os.path.join(tmp, "err")
        if rtf & RTF_PFDIO:
            path = fd_server_path(self.d.dir, self.pid)
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(path)
            srv.listen(1)
            srv.settimeout(TIMEOUT)
            r, w = os.pipe()
            os.write(w, stdin)
            os.close(w)
            fo = os.open(outp, os.O_WRONLY | os.O_CREAT, 0o644)
            fe = os.open(errp, os.O_WRONLY | os.O_CREAT, 0o644)

            def serve() -> None:
                try:
                    if server == "never-accepts":
                        return
                    conn, _ = srv.accept()
                    holder.append(conn)
                    conn.settimeout(TIMEOUT)
                    if server == "garbage":
                        conn.send(b"junk")
                        return
                    for fd in (r, fo, fe):  # sfh_send_fd: a byte and the fd, then the ack
                        socket.send_fds(conn, [b"\0"], [fd])
                        if conn.recv(1) != b"\0":
                            return
                except OSError:
                    return
                finally:
                    for fd in (r, fo, fe):
                        os.close(fd)

            t = threading.Thread(target=serve, daemon=True)
            t.start()
        try:
            self.nsend(EVKENYAD, preq(self.pid, PQCREATE, name=prog, argv=tag, envsize=envsize,
                                      rtf=rtf, maxproc=rank, jobid=JobId(0, self.pid),
                                      stdin=0, stdout=1, stderr=2, world=world,
                                      wrkdir=wrkdir))
            rep = self.reply()
            launch = Launch(rep)
            if rtf & RTF_PFDIO:
                t.join(TIMEOUT)
            if wait and rep.reply == 0 and rtf & RTF_WAIT:
                launch.notice = self.notice()
            if rtf & RTF_PFDIO and os.path.exists(outp):
                with open(outp, errors="replace") as f:
                    launch.out = f.read()
                with open(errp, errors="replace") as f:
                    launch.err = f.read()
            return launch
        finally:
            for s in holder:
                s.close()
            if srv is not None:
                srv.close()
                os.unlink(fd_server_path(self.d.dir, self.pid))
            shutil.rmtree(tmp, ignore_errors=True)

    def doom(self, method: int, value: int, sig: int) -> int:
        self.nsend(EVKENYAD, preq(self.pid, PQDOOM, sel_method=method, sel_value=value,
                                  signal=sig))
        return self.reply().reply

    def state(self, method: int = SELECT_ALL, value: int = 0,
              maxproc: int = 256) -> list[PState]:
        self.nsend(EVKENYAD, preq(self.pid, PQSTATE, sel_method=method, sel_value=value,
                                  maxproc=maxproc))
        out = []
        while True:
            _, body = self.nrecv(reply_event(self.pid), PState.SIZE)
            st = PState.unpack(body)
            out.append(st)
            if st.reply or len(out) >= maxproc:
                return out


def gone(pid: int) -> bool:
    return not lamenv.pid_alive(pid)


def test_lamexec_like_launch_end_to_end(daemon_factory):
    """rflatv, PQCREATE with RTF_PFDIO: the child writes straight into the
    tool's descriptors, gets LAM's variables (LAMKENYAPID = the forking
    process, here the test), argv with spaces intact, the job environment,
    stdin, the tool's working directory; the exit notice carries its status
    on the tool's wait event; its slot is free again afterwards."""
    d = daemon_factory()
    tool = Tool(d, 900001)
    wd = tempfile.mkdtemp(prefix="kdwd-")
    try:
        script = ('echo "argv:$1|$2"; echo "env:$LAMJOBID $LAMKENYAPID $LAMWORLD $LAMPARENT '
                  '$LAMRANK $TROLLIUSFD $TROLLIUSRTF X=$X"; pwd; read line; echo "in:$line"; '
                  'echo to-stderr >&2; ps -o pgid=,sid= -p $$; exit 3')
        lw = tool.create("/bin/sh", ["-c", script, "sh", "one two", "three"], env=["X=ex"],
                         stdin=b"hello stdin\n", wrkdir=wd, rank=2, world=4)
        rep = lw.reply
        assert rep.reply == 0 and rep.pid > 0 and rep.index == 1 and rep.nodeid == 0, rep
        lines = lw.out.splitlines()
        assert lines[0] == "argv:one two|three", lw.out
        rtf = RTF_WAIT | RTF_IO | RTF_PFDIO | RTF_KENYA_CHILD
        assert lines[1] == f"env:0:900001 {os.getpid()} 4 0 2 0:0:1:2 {rtf} X=ex", lw.out
        assert lines[2] == os.path.realpath(wd) and lines[3] == "in:hello stdin", lw.out
        # its own process group and session (pgid = sid = its pid)
        assert lines[4].split() == [str(rep.pid), str(rep.pid)], lw.out
        assert lw.err == "to-stderr\n"
        assert lw.notice == PReply(3, rep.pid, 0, 0), lw.notice
        # slot 1 is free again
        lw2 = tool.create("/bin/true", rtf=RTF_WAIT)
        assert lw2.reply.index == 1 and lw2.notice.reply == 0
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def test_missing_and_unusable_programs_and_directories(daemon_factory, tmp_path):
    """LAM's answers, checked against the C lamd (``lamexec``, see the
    docstrings' numbers): a missing program ENOENT and a non-executable one
    EACCES in the reply (the tool blocked in accept() is let go); a missing
    or closed directory, a directory as program and a bad interpreter are a
    started process that exits with the errno (after LAM's chdir message);
    a script without ``#!`` runs with /bin/sh; RTF_TRYCWD ignores a bad
    directory."""
    d = daemon_factory()
    tool = Tool(d, 900002)
    noexec = tmp_path / "noexec.sh"
    noexec.write_text("echo x\n")
    noexec.chmod(0o644)
    noshebang = tmp_path / "noshebang.sh"
    noshebang.write_text('echo "ran $0 $1"\n')
    noshebang.chmod(0o755)
    badinterp = tmp_path / "badinterp.sh"
    badinterp.write_text("#!/nonexistent/interp\necho x\n")
    badinterp.chmod(0o755)
    t0 = time.monotonic()
    lw = tool.create("/nonexistent/prog", [])
    assert lw.reply.reply == errno.ENOENT and lw.reply.pid == 0
    lw = tool.create(str(noexec), [])
    assert lw.reply.reply == errno.EACCES
    assert time.monotonic() - t0 < 5, "a refused create left the tool waiting"
    lw = tool.create(str(noshebang), ["arg1"])
    assert lw.reply.reply == 0 and lw.out == f"ran {noshebang} arg1\n" and lw.notice.reply == 0
    lw = tool.create(str(badinterp), [])
    assert lw.reply.reply == 0 and lw.notice.reply == errno.ENOENT, lw
    lw = tool.create("/tmp", [])
    assert lw.reply.reply == 0 and lw.notice.reply == errno.EACCES, lw
    lw = tool.create("/bin/pwd", [], wrkdir="/nonexistent/dir")
    assert lw.reply.reply == 0 and lw.notice.reply == errno.ENOENT, lw
    assert lw.err == "kcreatev: chdir(/nonexistent/dir): No such file or directory\n"
    assert lw.out == ""
    lw = tool.create("/bin/pwd", [], wrkdir=str(noexec))
    assert lw.notice.reply == errno.ENOTDIR and "Not a directory" in lw.err, lw
    lw = tool.create("/bin/pwd", [], wrkdir="/nonexistent/dir", rtf=RTF_WAIT | RTF_IO
                     | RTF_PFDIO | RTF_TRYCWD)
    assert lw.notice.reply == 0 and lw.out == os.getcwd() + "\n", lw
    # a name without a '/' is looked for in $PATH, then the working directory
    lw = tool.create("sh", ["-c", "exit 7"])
    assert lw.reply.reply == 0 and lw.notice.reply == 7
    lw = tool.create("noshebang.sh", ["x"], wrkdir=str(tmp_path))
    assert lw.reply.reply == 0 and lw.out == f"ran {tmp_path}/noshebang.sh x\n", lw


def test_exit_statuses_and_doom(daemon_factory):
    """A signal death is the signal | _LAM_WIFSIGNALED; PQDOOM with a
    negative signal kills the process's group (a grandchild too); dooming
    a pid kenyad does not have is ENOTPROCESS; lamclean's SIGUDIE ends a
    process that is not a LAM client."""
    d = daemon_factory()
    tool = Tool(d, 900003)
    lw = tool.create("/bin/sh", ["-c", "kill -9 $$"])
    assert lw.notice.reply == 9 | SIGNALED
    pidfile = os.path.join(d.dir, "grandchild")
    lw = tool.create("/bin/sh", ["-c", f"sleep 60 & echo $! > {pidfile}; wait"], wait=False)
    pid = lw.reply.pid
    assert wait_until(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(),
                      TIMEOUT)
    grandchild = int(open(pidfile).read())
    assert tool.doom(SELECT_PID, pid, -signal.SIGTERM) == 0
    assert tool.notice() == PReply(signal.SIGTERM | SIGNALED, pid, 0, 0)
    assert wait_until(lambda: gone(grandchild), TIMEOUT), "the group was not signalled"
    assert tool.doom(SELECT_PID, 4242424, -signal.SIGTERM) == ENOTPROCESS
    assert tool.doom(SELECT_INDEX, 77, -signal.SIGTERM) == ENOTPROCESS
    lw = tool.create("/bin/sleep", ["60"], wait=False)
    st = tool.state(SELECT_ALL)
    assert [(s.pid, s.index, s.name, s.loadpt) for s in st[:-1]] == [
        (lw.reply.pid, lw.reply.index, "/bin/sleep", "/bin/sleep")]
    assert st[0].kernel.state == KSFREE and st[-1].reply == EEOF  # not a LAM client
    assert tool.doom(SELECT_APPL, 0, SIGUDIE) == 0
    assert tool.notice().reply == signal.SIGKILL | SIGNALED
    assert tool.state(SELECT_ALL)[0].reply == EEOF


def test_mpi_process_attach_state_detach(daemon_factory):
    """An MPI process (here a shell that speaks for itself through the test):
    PQATTACH (no reply) marks it MPI; mpitask's PQSTATE SELECT_MPI lists it;
    PQDETACH (MPI_Finalize) sends the exit notice with the status it gives,
    and its death afterwards sends none. One that dies attached without
    detaching gets _LAM_WIFNODETACH."""
    d = daemon_factory()
    tool = Tool(d, 900004)
    lw = tool.create("/bin/sleep", ["60"], rtf=RTF_MPIRUN | RTF_WAIT, wait=False)
    pid = lw.reply.pid
    assert tool.state(SELECT_MPI) == [PState(reply=EEOF)]
    rtf = RTF_MPIRUN | RTF_WAIT | RTF_KENYA_CHILD | RTF_MPI
    tool.nsend(EVKENYAD, preq(pid, PQATTACH, pid=pid, rtf=rtf, name="mpiprog"))
    st = tool.state(SELECT_MPI)
    assert len(st) == 2 and st[1].reply == EEOF, st
    assert (st[0].pid, st[0].index, st[0].name, st[0].loadpt) == (pid, 1, "mpiprog",
                                                                  "/bin/sleep")
    assert st[0].rtf == (rtf & ~RTF_KENYA_CHILD) | RTF_KENYA_ATTACH
    assert st[0].event == reply_event(900004)
    # lpdetach: replied, then the notice with pq_status
    other = Tool(d, pid)
    other.nsend(EVKENYAD, preq(pid, PQDETACH, pid=pid, status=5))
    assert other.reply().reply == 0
    assert tool.notice() == PReply(5, pid, 0, 0)
    assert tool.state(SELECT_ALL) == [PState(reply=EEOF)]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: gone(pid), TIMEOUT)
    with pytest.raises(socket.timeout):
        tool.notice(timeout=0.5)
    # attached, then dead without detaching
    lw = tool.create("/bin/sleep", ["60"], rtf=RTF_MPIRUN | RTF_WAIT, wait=False)
    pid = lw.reply.pid
    tool.nsend(EVKENYAD, preq(pid, PQATTACH, pid=pid, rtf=rtf, name=""))
    assert tool.state(SELECT_MPI)[0].name == "<unknown>"
    os.kill(pid, signal.SIGKILL)
    assert tool.notice() == PReply(9 | SIGNALED | NODETACH, pid, 0, 0)
    other.nsend(EVKENYAD, preq(other.pid, PQDETACH, pid=pid, status=0))
    assert other.reply().reply == ENOTPROCESS


def test_bad_descriptor_servers_are_bounded(daemon_factory, caplog):
    """A tool that never accepts on its descriptor server, or sends a byte
    without a descriptor: the create fails after fd_timeout (LAM waits
    forever) with one log line, no process is started, and kenyad answers
    the next request at once."""
    caplog.set_level(logging.WARNING, logger="lamd.jobs.kenyad")
    d = daemon_factory(fd_timeout=0.5)
    tool = Tool(d, 900005)
    t0 = time.monotonic()
    lw = tool.create("/bin/echo", ["x"], server="never-accepts")
    took = time.monotonic() - t0
    assert lw.reply.reply == LAM_ERR_TO and lw.reply.pid == 0, lw
    assert 0.4 <= took < 5, took
    lw = tool.create("/bin/echo", ["x"], server="garbage")
    assert lw.reply.reply == errno.EIO, lw
    assert caplog.text.count("passed 0 of 3 descriptors") == 1, caplog.text
    assert tool.state(SELECT_ALL) == [PState(reply=EEOF)]
    t0 = time.monotonic()
    lw = tool.create("/bin/echo", ["fine"])
    assert lw.reply.reply == 0 and lw.out == "fine\n" and time.monotonic() - t0 < 5


def test_flood_of_creates_is_refused_and_the_end_kills_everything(daemon_factory, caplog):
    """With kenyad_max_procs 3: three sleepers run, the next creates get
    ENOPDESCRIPTORS with one log line; after one ends a create works again.
    When the host stops, every process kenyad started (and its group) is
    killed and reaped."""
    caplog.set_level(logging.WARNING, logger="lamd.jobs.kenyad")
    d = daemon_factory(kenyad_max_procs=3)
    tool = Tool(d, 900006)
    pids = []
    for _ in range(3):
        lw = tool.create("/bin/sh", ["-c", "sleep 60 & sleep 60"], wait=False)
        assert lw.reply.reply == 0
        pids.append(lw.reply.pid)
    for _ in range(8):
        assert tool.create("/bin/sleep", ["60"], wait=False).reply.reply == ENOPDESCRIPTORS
    assert caplog.text.count("process table full") == 1, caplog.text
    assert tool.doom(SELECT_PID, pids[0], -signal.SIGKILL) == 0
    assert tool.notice().pid == pids[0]
    lw = tool.create("/bin/sleep", ["60"], wait=False)
    assert lw.reply.reply == 0 and lw.reply.index == 1
    pids = pids[1:] + [lw.reply.pid]
    groups = [set(subprocess.run(["pgrep", "-g", str(p)], capture_output=True, text=True,
                                 timeout=10).stdout.split()) for p in pids]
    assert all(len(g) >= 1 for g in groups) and len(groups[0]) >= 2, groups
    d.stop_host()
    members = {int(p) for g in groups for p in g}
    # children reaped by kenyad at once; grandchildren by init once killed
    assert wait_until(lambda: all(gone(p) for p in members), TIMEOUT), \
        [p for p in members if not gone(p)]
    for p in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(p, os.WNOHANG)  # reaped, not zombies


def test_fork_failure_is_the_reply(daemon_factory, monkeypatch):
    """fork() failing (EAGAIN: out of processes) is the create's reply, as in
    LAM; the tool's descriptors were taken (it is not left in accept())."""
    d = daemon_factory()
    tool = Tool(d, 900007)
    real = subprocess.Popen

    def no_fork(*a: Any, **kw: Any) -> Any:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(kmod.subprocess, "Popen", no_fork)
    try:
        lw = tool.create("/bin/echo", ["x"])
    finally:
        monkeypatch.setattr(kmod.subprocess, "Popen", real)
    assert lw.reply.reply == errno.EAGAIN and lw.reply.pid == 0
    assert tool.state(SELECT_ALL) == [PState(reply=EEOF)]
    assert tool.create("/bin/echo", ["y"]).out == "y\n"
