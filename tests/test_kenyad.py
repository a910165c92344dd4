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
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from lamd.client import KernelClient
from lamd.iprocs import boot_table
from lamd.iprocs.host import ServiceHost
from lamd.iprocs.nreq import BFQRECV, DLCTL, DLSYS, DLUSR, LOCAL, NREEL, data_words
from lamd.jobs import kenyad as kmod
from lamd.jobs.wire import (
    EBADTAG, EEOF, ENOPDESCRIPTORS, ENOTPROCESS, ESERVICE, FLQLOAD, PQATTACH,
    PQCREATE, PQDETACH, PQDOOM, PQSPAWN, PQSTATE, RTF_IO, RTF_KENYA_ATTACH,
    RTF_KENYA_CHILD, RTF_MPI, RTF_MPIRUN, RTF_PFDIO, RTF_TRYCWD, RTF_WAIT, SELECT_ALL,
    SELECT_APPL, SELECT_INDEX, SELECT_MPI, SELECT_PID, SIGUDIE, FlReply, FlReq, JobId,
    PReply, PReq, PState, fd_server_path, glue_flat_args, reply_event, wait_event,
)
from lamd.kernel import Kernel, Signal
from lamd.kernel.constants import (
    EVBUFFERD, EVFLATD, EVKENYAD, KNMSG, KSFREE, MAXNMSGLEN, PRCMD,
    KQSURRENDER, PRDAEMON, LamErrno, sigmask,
)
from lamd.kernel.kiproc import ChildExit, KBoot
from lamd.kernel.wire import KReq, NMsg
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
        assert head.event == wait_event(self.pid), head
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


def test_exits_racing_requests_lose_nothing(daemon_factory):
    """Children exiting while requests arrive, hundreds of times: kenyad's
    receive is interrupted by each exit. Every create is answered and every
    exit noticed. (The host used to interrupt by dropping the connection: a
    request the kernel had just matched was lost, 12 creates of 400 then.)"""
    d = daemon_factory()
    tool = Tool(d, 900008)
    n = 200
    t0 = time.monotonic()
    for i in range(n):
        tool.nsend(EVKENYAD, preq(tool.pid, PQCREATE, name="/bin/true", rtf=RTF_WAIT,
                                  jobid=JobId(0, tool.pid)))
        rep = tool.reply(timeout=5)
        assert rep.reply == 0, (i, rep)
    pids = set()
    for _ in range(n):
        pids.add(tool.notice(timeout=5).pid)
    assert len(pids) == n
    took = time.monotonic() - t0
    assert took < 60, took  # about 2.5 s measured; lost requests cost 5 s each


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


# =============================================================================
# sans-IO: the kernel's World, starting a process replaced by a recorder
# =============================================================================


class FakePopen:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = -9
        return -9


class Sans:
    """World with the whole boot table (kenyad real), a tool client, and
    kenyad's process starting and killing recorded instead of done."""

    def __init__(self, monkeypatch: Any, flatd: Any = None, **config: Any) -> None:
        self.session = short_tmp()
        cfg = {"node_addr": ADDR, "session": self.session, **config}
        table = boot_table(dict(cfg), ["flatd"] if flatd is not None else [])
        if flatd is not None:
            table.append(KBoot("flatd", PRDAEMON, flatd, row=6))
        self.spawned: list[dict[str, Any]] = []
        self.killed: list[tuple[int, int]] = []
        self.next_pid = 7000
        monkeypatch.setattr(kmod, "spawn", self._spawn)
        monkeypatch.setattr(kmod, "kill_group", lambda pid, sig: self.killed.append((pid, sig)))
        self.w = World(table, cfg)
        self.tool = self.w.client("tool", 5000)

    def end(self) -> None:
        """End the coroutines now (kenyad's finally), while killing is still
        recorded: never at interpreter exit, with the fake pids."""
        for p in list(self.w.kernel.procs.values()):
            if p.coro is not None:
                coro, p.coro = p.coro, None
                coro.close()

    def close(self) -> None:
        self.end()
        shutil.rmtree(self.session, ignore_errors=True)

    def _spawn(self, loadname, argv, env, wrkdir, fds, rtf, umask=-1, enter=None):  # type: ignore[no-untyped-def]
        pid = self.next_pid
        self.next_pid += 1
        self.spawned.append(dict(loadname=loadname, argv=argv, env=env, wrkdir=wrkdir,
                                 fds=fds, rtf=rtf, pid=pid))
        return kmod.SpawnResult(FakePopen(pid), how="exec")

    def ask(self, req: int, c: Any = None, **kw: Any) -> None:
        c = c or self.tool
        self.tool_send(c, preq(c.pid, req, **kw))

    def tool_send(self, c: Any, body: bytes) -> None:
        c.nsend(LOCAL, EVKENYAD, 0, body)

    def reply(self, c: Any = None) -> PReply:
        c = c or self.tool
        head, body = c.nrecv(reply_event(c.pid), 0, 16)
        assert head.flags & NREEL and head.event == reply_event(c.pid)
        return PReply.unpack(body)

    def silent(self, event: int, c: Any = None) -> bool:
        """Nothing is buffered for *c* on *event* (bufferd's BFQPROBE)."""
        c = c or self.tool
        return c.nprobe(event)[7] == -1

    def notice(self, c: Any = None) -> PReply:
        c = c or self.tool
        head, body = c.nrecv(wait_event(c.pid), 1, 16)
        assert head.type == 1 and head.flags & NREEL and head.event == wait_event(c.pid)
        return PReply.unpack(body)

    def create(self, name: str = "/bin/true", rtf: int = RTF_WAIT, **kw: Any) -> PReply:
        self.ask(PQCREATE, name=name, rtf=rtf, jobid=JobId(0, self.tool.pid), **kw)
        return self.reply()

    def child_watch(self, pid: int) -> int:
        ids = [a.id for a in self.w.watching("child") if a.arg == pid]
        assert len(ids) == 1, (pid, self.w.watches)
        return ids[0]

    def exit(self, pid: int, code: int = os.CLD_EXITED, status: int = 0) -> None:
        self.w.fire(self.child_watch(pid), ChildExit(pid, code, status))


@pytest.fixture
def sans(monkeypatch: Any) -> Iterator[Any]:
    made: list[Sans] = []

    def make(**kw: Any) -> Sans:
        s = Sans(monkeypatch, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_sans_create_exit_notice_and_slot_reuse(sans):
    """Reply {0, pid, index, node}; the exit notice at death (type 1, on the
    tool's wait event, status pid node); indexes are the lowest free, so a
    freed slot is used again; LAM's variables (LAMKENYAPID is this process:
    the one that forks) and the tool's working directory."""
    s = sans()
    r1 = s.create(rtf=RTF_WAIT | RTF_IO, wrkdir="/tmp", maxproc=3, world=4)
    r2 = s.create()
    assert (r1.reply, r1.index, r1.nodeid) == (0, 1, 0) and r2.index == 2
    sp = s.spawned[0]
    assert sp["loadname"] == "/bin/true" and sp["argv"] == ["/bin/true"]
    # RTF_IO without RTF_PFDIO: stdin /dev/null, stdout and stderr attached to iod
    assert sp["wrkdir"] == "/tmp" and len(sp["fds"]) == 3
    assert s.spawned[1]["fds"] is None  # no RTF_IO: kenyad's own stdio
    env = sp["env"]
    assert (env["LAMKENYAPID"], env["LAMRANK"], env["LAMWORLD"], env["LAMJOBID"],
            env["TROLLIUSRTF"]) == (str(os.getpid()), "3", "4", "0:5000",
                                    str(RTF_WAIT | RTF_IO | RTF_KENYA_CHILD))
    assert s.silent(wait_event(5000))
    s.exit(r1.pid, os.CLD_EXITED, 3)
    assert s.notice() == PReply(3, r1.pid, 0, 0)
    assert s.create().index == 1  # the lowest free slot
    s.exit(r2.pid, os.CLD_KILLED, signal.SIGSEGV)
    assert s.notice() == PReply(signal.SIGSEGV | SIGNALED, r2.pid, 0, 0)
    # without RTF_WAIT (lamexec -nw) the slot frees and nobody is told
    r = s.create(rtf=0)
    s.exit(r.pid)
    assert s.silent(wait_event(5000))
    s.w.kernel.check_invariants()


def test_sans_mpi_attach_state_detach(sans):
    """mpirun's flow: PQATTACH gets no reply; PQSTATE SELECT_MPI: one pstate
    per MPI process, then EEOF, maxproc honoured; PQDETACH: replied, the
    notice carries its status, the later death none; a LAM signal dooms an
    attached process through the kernel (kdoom)."""
    s = sans()
    mpi = s.w.client("mpi", 7000)  # the process kenyad will start, attached to the kernel
    r = s.create(rtf=RTF_MPIRUN | RTF_WAIT)
    assert r.pid == 7000
    s.create(rtf=RTF_MPIRUN | RTF_WAIT)  # 7001, never attaches
    rtf = RTF_MPIRUN | RTF_WAIT | RTF_KENYA_CHILD | RTF_MPI
    s.ask(PQATTACH, c=mpi, pid=7000, rtf=rtf, name="ring")
    assert s.silent(reply_event(7000), mpi)  # PQATTACH: no reply
    s.ask(PQSTATE, sel_method=SELECT_MPI, maxproc=256)
    _, body = s.tool.nrecv(reply_event(5000), 0, PState.SIZE)
    st = PState.unpack(body)
    assert (st.reply, st.index, st.pid, st.name, st.loadpt) == (0, 1, 7000, "ring", "/bin/true")
    assert st.rtf == RTF_MPIRUN | RTF_WAIT | RTF_MPI | RTF_KENYA_ATTACH
    # the kernel's view of it (its last request: the probe on its reply event)
    assert (st.kernel.state, st.kernel.priority, st.kernel.event) == (0, 1095, -7000)
    _, body = s.tool.nrecv(reply_event(5000), 0, PState.SIZE)
    assert PState.unpack(body) == PState(reply=EEOF)
    s.ask(PQSTATE, sel_method=SELECT_ALL, maxproc=1)  # exactly maxproc: no EEOF
    _, body = s.tool.nrecv(reply_event(5000), 0, PState.SIZE)
    assert PState.unpack(body).pid == 7000
    assert s.silent(reply_event(5000))
    s.ask(PQSTATE, maxproc=0)
    assert PState.unpack(s.tool.nrecv(reply_event(5000), 0, PState.SIZE)[1]).reply == errno.EINVAL
    # a LAM signal to the attached MPI process goes through the kernel
    s.ask(PQDOOM, sel_method=SELECT_MPI, signal=SIGUDIE)
    assert s.reply().reply == 0
    prompts = [a for a in s.w.log if isinstance(a, Signal) and a.conn == "mpi"]
    assert len(prompts) == 1 and mpi.conn.replies == deque()  # kpreempt: LAM_SIGUSR
    assert s.w.kernel.kpfind(7000).signal == sigmask(SIGUDIE)
    mpi.request(KReq(req=KQSURRENDER))  # what liblam's LAM_SIGUSR handler does
    assert mpi.reply().signal == sigmask(SIGUDIE)
    # MPI_Finalize
    s.ask(PQDETACH, c=mpi, pid=7000, status=0)
    assert s.reply(mpi).reply == 0
    assert s.notice() == PReply(0, 7000, 0, 0)
    s.exit(7000)
    assert s.silent(wait_event(5000))
    # the one that dies before MPI_Init: a plain exit notice (mpirun: EMPINOINIT)
    s.exit(7001, os.CLD_EXITED, 1)
    assert s.notice() == PReply(1, 7001, 0, 0)
    s.w.kernel.check_invariants()


def test_sans_doom_rules(sans):
    """PQDOOM: a negative signal kills the group of a process kenyad started;
    none matched by pid or index is ENOTPROCESS; SELECT_APPL matches all;
    a LAM signal above TNSIG is EINVAL; lamclean's SIGUDIE SIGKILLs the group
    of a process that is no LAM client (the kernel does not know it) and is
    not an error."""
    s = sans()
    a, b = s.create(), s.create()
    s.ask(PQDOOM, sel_method=SELECT_PID, sel_value=a.pid, signal=-15)
    assert s.reply().reply == 0 and s.killed == [(a.pid, 15)]
    s.ask(PQDOOM, sel_method=SELECT_INDEX, sel_value=b.index, signal=-2)
    assert s.reply().reply == 0 and s.killed[-1] == (b.pid, 2)
    s.ask(PQDOOM, sel_method=SELECT_PID, sel_value=99999, signal=-15)
    assert s.reply().reply == ENOTPROCESS
    s.ask(PQDOOM, sel_method=SELECT_INDEX, sel_value=9, signal=-15)
    assert s.reply().reply == ENOTPROCESS
    s.ask(PQDOOM, sel_method=SELECT_PID, sel_value=a.pid, signal=11)
    assert s.reply().reply == errno.EINVAL
    s.killed.clear()
    s.ask(PQDOOM, sel_method=SELECT_APPL, sel_value=0, signal=SIGUDIE)
    assert s.reply().reply == 0
    assert s.killed == [(a.pid, signal.SIGKILL), (b.pid, signal.SIGKILL)]
    s.exit(a.pid, os.CLD_KILLED, 9)
    assert s.notice().pid == a.pid
    s.killed.clear()
    s.ask(PQDOOM, sel_method=SELECT_PID, sel_value=a.pid, signal=-15)  # gone now
    assert s.reply().reply == ENOTPROCESS and s.killed == []


def test_sans_the_end_kills_what_runs(sans):
    """When kenyad ends, every process it started that still runs (in the
    table, or detached but alive) is killed with its group."""
    s = sans()
    a, b, c = s.create(), s.create(rtf=RTF_MPIRUN | RTF_WAIT), s.create()
    s.exit(a.pid)
    mpi = s.w.client("mpi", b.pid)
    s.ask(PQATTACH, c=mpi, pid=b.pid, rtf=RTF_MPI | RTF_WAIT)
    s.ask(PQDETACH, c=mpi, pid=b.pid, status=0)
    assert s.reply(mpi).reply == 0
    s.end()
    assert sorted(s.killed) == [(b.pid, signal.SIGKILL), (c.pid, signal.SIGKILL)]


def test_sans_table_bound_and_one_log_line(sans, caplog):
    """A flood of creates beyond kenyad_max_procs: ENOPDESCRIPTORS, one log
    line while full; a slot freed: a create works; full again: logged again."""
    caplog.set_level(logging.WARNING, logger="lamd.jobs.kenyad")
    s = sans(kenyad_max_procs=2)
    a = s.create()
    s.create()
    for _ in range(50):
        assert s.create().reply == ENOPDESCRIPTORS
    assert len(s.spawned) == 2
    assert caplog.text.count("process table full") == 1
    s.exit(a.pid)
    assert s.notice().pid == a.pid
    assert s.create().index == 1
    assert s.create().reply == ENOPDESCRIPTORS
    assert caplog.text.count("process table full") == 2


def test_sans_bad_requests(sans, caplog):
    """Garbage: a short body (zeros), an unknown request, a reply event that
    is not a client's (-pid), a request longer than one packet: no reply
    where LAM gives none, one log line per kind, and kenyad answers the next
    valid request. PQSPAWN: ESERVICE, as LAM."""
    caplog.set_level(logging.WARNING, logger="lamd.jobs.kenyad")
    s = sans()
    s.tool_send(s.tool, b"\x01\x02")  # 2 bytes
    s.tool_send(s.tool, struct.pack(">3i", LOCAL, reply_event(5000), 99).ljust(100, b"\0"))
    s.tool_send(s.tool, preq(5000, PQSTATE, src_event=EVKENYAD, maxproc=5))  # would loop
    s.tool_send(s.tool, preq(5000, PQATTACH, pid=4242424))  # no such process
    s.tool_send(s.tool, preq(5000, PQSTATE, src_node=5, maxproc=5))  # no such node
    s.tool.nsend(LOCAL, EVKENYAD, 0, preq(5000, PQDOOM, sel_method=SELECT_PID,
                                          sel_value=1, signal=-15) + bytes(3 * MAXNMSGLEN))
    assert s.reply().reply == ENOTPROCESS  # the long request's first packet
    assert s.silent(reply_event(5000))
    s.ask(PQSPAWN)
    assert s.reply().reply == ESERVICE
    for what in ("2-byte request", "unknown request 99", "reply event", "PQATTACH of pid",
                 "no route to node 5", "4-packet request"):
        assert caplog.text.count(what) == 1, (what, caplog.text)
    assert s.spawned == [] and s.killed == []
    s.w.kernel.check_invariants()


def test_sans_lamclean_removes_registered_objects(sans):
    """lamclean's PQDOOM(SELECT_APPL, SIGUDIE) removes what MPI processes
    registered in <session>/lam-registry (LAM's lam_cleanup_objects): a SysV
    shared memory segment, a semaphore set, a file; then the registry. Other
    dooms leave it."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    s = sans()
    shm = libc.shmget(0, 4096, 0o600 | 0o1000)  # IPC_PRIVATE, IPC_CREAT
    sem = libc.semget(0, 1, 0o600 | 0o1000)
    assert shm >= 0 and sem >= 0
    extra = os.path.join(s.session, "lam-rpi-file")
    open(extra, "w").close()
    reg = os.path.join(s.session, "lam-registry")
    try:
        with open(reg, "w") as f:
            f.write(f"m {shm}\ns {sem}\nf {extra}\n")
        s.ask(PQDOOM, sel_method=SELECT_ALL, signal=SIGUDIE)
        assert s.reply().reply == 0 and os.path.exists(reg)
        s.ask(PQDOOM, sel_method=SELECT_APPL, signal=SIGUDIE)
        assert s.reply().reply == 0
        assert not os.path.exists(reg) and not os.path.exists(extra)
        assert not os.path.exists(reg + "-lock")
        buf = ctypes.create_string_buffer(256)
        assert libc.shmctl(shm, 2, buf) == -1  # IPC_STAT: gone
        assert libc.semctl(sem, 0, 2, buf) == -1
    finally:
        libc.shmctl(shm, 0, None)
        libc.semctl(sem, 0, 0)


async def silent_flatd(k: Any) -> None:
    from lamd.iprocs.nreq import nrecv
    while True:
        await nrecv(k, EVFLATD, 0, MAXNMSGLEN)


def test_sans_flatd_argv_and_a_flatd_that_never_answers(sans):
    """pq_argv is a flatd tag: kenyad asks flatd FLQFORGET, reads the file
    it names, removes it, and starts the process with that argv and
    environment (-x wins over the daemon's, LAM's variables in between). A
    flatd that never answers: after flatd_timeout (here the test fires the
    timer) the create fails with ESERVICE, the tool blocked in accept() is
    let go, and a late answer is swept before kenyad asks flatd again."""
    s = sans(flatd=fake_flatd, environ={"PATH": "/usr/bin:/bin", "KEEP": "1", "X": "old"})
    tool = s.tool
    blob, envsize = glue_flat_args(["prog", "a b", "c"], ["X=new", "LAMRANK=9"])
    req = FlReq(src_node=LOCAL, src_event=reply_event(5000), req=FLQLOAD, parm1=5000,
                parm2=len(blob), parm3=len(blob))
    tool.nsend(LOCAL, EVFLATD, 0, b"", data=req.data())
    assert FlReply.from_data(tool.nrecv(reply_event(5000), 0, 0)[0].data).reply == 0
    tool.nsend(LOCAL, EVFLATD, 0, blob, data=req.data())
    assert FlReply.from_data(tool.nrecv(reply_event(5000), 0, 0)[0].data).reply == 0
    files = [f for f in os.listdir(s.session) if f.startswith("lam-flatd")]
    assert len(files) == 1
    r = s.create(name="sh", argv=5000, envsize=envsize)
    assert r.reply == 0
    sp = s.spawned[-1]
    assert sp["loadname"] == "/usr/bin/sh" and sp["argv"] == ["prog", "a b", "c"]
    env = sp["env"]
    assert (env["KEEP"], env["X"], env["LAMRANK"], env["LAMKENYAPID"]) == (
        "1", "new", "9", str(os.getpid()))
    assert not [f for f in os.listdir(s.session) if f.startswith("lam-flatd")]
    # an unknown tag: flatd's EBADTAG
    assert s.create(name="/bin/true", argv=4711).reply == EBADTAG


def test_sans_flatd_timeout(sans, tmp_path):
    s = sans(flatd=silent_flatd)
    server = fd_server_path(s.session, 5000)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(server)
    srv.listen(1)
    srv.settimeout(TIMEOUT)
    try:
        s.ask(PQCREATE, name="/bin/true", argv=5000, rtf=RTF_WAIT | RTF_PFDIO)
        assert s.silent(reply_event(5000))  # kenyad waits for flatd
        timers = [a for a in s.w.watching("timer") if a.arg == kmod.FLATD_TIMEOUT]
        assert len(timers) == 1
        s.w.fire(timers[0].id)
        assert s.reply().reply == ESERVICE and s.spawned == []
        conn, _ = srv.accept()  # exit_protocol: connected and closed at once
        conn.settimeout(TIMEOUT)
        assert conn.recv(1) == b""
        conn.close()
    finally:
        srv.close()


def test_spawn_maps_failures_as_lam_shows_them(monkeypatch, tmp_path):
    """spawn(): a fork failure is the error (EAGAIN); an exec failure is a
    child that exits with the errno; a missing directory a child that says
    LAM's chdir message and exits with the errno; ENOEXEC runs /bin/sh."""
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    fds = [os.open(os.devnull, os.O_RDONLY), fd, fd]
    try:
        def no_fork(*a: Any, **kw: Any) -> Any:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

        with monkeypatch.context() as m:
            m.setattr(kmod.subprocess, "Popen", no_fork)
            assert kmod.spawn("/bin/true", [], {}, None, None, 0).error == errno.EAGAIN
        r = kmod.spawn(str(tmp_path), ["x"], {}, None, fds, 0)  # a directory: EACCES
        assert r.how == "failed-exec" and r.popen.wait(TIMEOUT) == errno.EACCES
        r = kmod.spawn("/bin/pwd", [], {}, "/nonexistent", fds, 0)
        assert r.how == "failed-chdir" and r.popen.wait(TIMEOUT) == errno.ENOENT
        script = tmp_path / "s"
        script.write_text("echo script $0\n")
        script.chmod(0o755)
        r = kmod.spawn(str(script), ["s"], {"PATH": "/bin"}, None, fds, 0)
        assert r.how == "sh" and r.popen.wait(TIMEOUT) == 0
        assert out.read_text() == (f"kcreatev: chdir(/nonexistent): No such file or "
                                   f"directory\nscript {script}\n")
    finally:
        for f in set(fds):
            os.close(f)


def test_a_child_gets_the_default_action_of_signals_kenyad_ignores(tmp_path):
    """A signal the forker ignores is not ignored in the job (LAM's forked
    child resets it): kenyad catches it with a no-op while it forks, and
    ignores it again after."""
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    fds = [os.open(os.devnull, os.O_RDONLY), fd, fd]
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGPIPE)}
    try:
        for s in before:
            signal.signal(s, signal.SIG_IGN)
        r = kmod.spawn("/bin/grep", ["grep", "^SigIgn", "/proc/self/status"], {}, None, fds, 0)
        assert r.how == "exec" and r.popen.wait(TIMEOUT) == 0
        assert all(signal.getsignal(s) == signal.SIG_IGN for s in before)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        for f in set(fds):
            os.close(f)
    ignored = int(out.read_text().split()[1], 16)
    assert ignored & (1 << (signal.SIGUSR1 - 1) | 1 << (signal.SIGPIPE - 1)) == 0, hex(ignored)


def test_find_program_is_lams_path_search(tmp_path):
    """sfh_path_env_findv: absolute names only checked (ENOENT / EACCES);
    PATH of the job environment first, '.' is the working directory, which
    is also tried last; $VAR heads; the working directory first for names
    with a '/'."""
    d = tmp_path / "bin"
    d.mkdir()
    prog = d / "prog"
    prog.write_text("")
    prog.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("")
    plain.chmod(0o644)
    env: dict[str, str] = {"PATH": "/nonexistent"}
    assert kmod.find_program(str(prog), os.X_OK, [], None, env) == (str(prog), 0)
    assert kmod.find_program("/nope/x", os.X_OK, [], None, env) == (None, errno.ENOENT)
    if os.getuid() != 0:  # root may execute anything with an x bit only
        assert kmod.find_program(str(plain), os.X_OK, [], None, env) == (None, errno.EACCES)
    assert kmod.find_program("prog", os.X_OK, [f"PATH={d}"], "/", env) == (f"{d}/prog", 0)
    assert kmod.find_program("prog", os.X_OK, ["PATH=.:/bin"], str(d), env) == (
        f"{d}/prog", 0)
    assert kmod.find_program("prog", os.X_OK, [], str(d), env) == (f"{d}/prog", 0)
    assert kmod.find_program("prog", os.X_OK, ["PATH=$B:/x", f"B={d}"], "/", env) == (
        f"{d}/prog", 0)
    assert kmod.find_program("bin/prog", os.X_OK, [], str(tmp_path), env) == (
        f"{tmp_path}/bin/prog", 0)
    assert kmod.find_program("nothere", os.X_OK, [], str(d), env)[0] is None


# =============================================================================
# the host: events while a request is on its way (found through kenyad)
# =============================================================================


def _host_with_connection() -> tuple[ServiceHost, Any, socket.socket]:
    async def idle(k: Any) -> None:
        await k.next_event()

    h = ServiceHost("/nonexistent", [KBoot("probe", PRDAEMON, idle)], {})
    svc = h.services[0]
    a, b = socket.socketpair()
    a.setblocking(False)
    svc.sock = a
    svc.index = 1
    return h, svc, b


def test_host_an_answer_read_while_looking_for_an_interrupt_is_not_stranded():
    """An event for a blocked interruptible request comes when the kernel's
    answer is already in the socket: the host reads it looking for a point
    to interrupt. It must carry on with the request (before the fix the
    bytes sat in its buffer, nothing read the socket again, and the service
    hung: kenyad lost child exits this way)."""
    from lamd.iprocs import host as hmod
    from lamd.kernel.constants import KQRECV
    from lamd.kernel.kiproc import Event, Watch
    from lamd.kernel.wire import KMsg, KReply, KReq
    h, svc, peer = _host_with_connection()
    try:
        w = Watch(99, "timer", 1.0, svc.proc)
        call = hmod.KCall(KQRECV, KReq(req=KQRECV, msg=KMsg(600, 0, 0, 0)), watches=(w,),
                          interruptible=True)
        svc.coro = object()
        svc.call, svc.wanted = call, (w,)
        svc.proto = hmod.exchange("probe", call, 1)
        h._advance(svc, None)
        assert svc.waiting == hmod._BLOCK and len(peer.recv(1000)) > 0
        peer.send(KReply(reply=0, length=0).pack())  # the kernel answers...
        time.sleep(0.05)
        h._deliver(svc, Event(w))  # ...as the event comes
        assert svc.proto is None, "the answer was read and left stranded"
        assert list(h._runq)[-1][1].reply.reply == 0  # the coroutine gets the receive
        assert [e.watch for e in svc.mailbox] == [w]  # and the event after it
    finally:
        peer.close()
        svc.sock.close()
        h.loop.close()


def test_host_an_event_queued_before_the_request_blocks_interrupts_it(monkeypatch):
    """An event that arrived while an interruptible request was being written
    (so not yet interruptible) interrupts it once it blocks."""
    from lamd.iprocs import host as hmod
    from lamd.kernel.constants import KQRECV
    from lamd.kernel.kiproc import Event, Watch
    from lamd.kernel.wire import KMsg, KReq
    h, svc, peer = _host_with_connection()
    seen: list[Any] = []
    monkeypatch.setattr(h, "_interrupt", lambda s, ev: seen.append(ev))
    try:
        w = Watch(98, "timer", 1.0, svc.proc)
        svc.mailbox.append(Event(w))
        call = hmod.KCall(KQRECV, KReq(req=KQRECV, msg=KMsg(600, 0, 0, 0)), watches=(w,),
                          interruptible=True)
        svc.coro = object()
        svc.call, svc.wanted = call, (w,)
        svc.proto = hmod.exchange("probe", call, 1)
        h._advance(svc, None)
        assert [e.watch for e in seen] == [w] and not svc.mailbox
    finally:
        peer.close()
        svc.sock.close()
        h.loop.close()


# =============================================================================
# interop: stock tools as lamtest, ours (kenyad and the test flatd in a host,
# as the jobs process will run them) beside the C lamd
# =============================================================================

MPISLEEP_C = r"""
#include <stdio.h>
#include <unistd.h>
#include <mpi.h>
/* an MPI program that stays up (30 s) between MPI_Init and MPI_Finalize */
int main(int argc, char **argv)
{
	int rank, i;
	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	printf("UP rank=%d\n", rank);
	fflush(stdout);
	for (i = 0; i < 300; i++)
		usleep(100000);
	MPI_Finalize();
	return 0;
}
"""


@pytest.fixture(scope="module")
def mpiprogs() -> Iterator[dict[str, str]]:
    """mpihello (tests/c) and a sleeping MPI program, built with mpicc.lam."""
    assert shutil.which("mpicc.lam"), "mpicc.lam missing (lam4-dev): run packaging/setup.sh"
    out = tempfile.mkdtemp(prefix="lamd-kenyad-", dir="/tmp")
    os.chmod(out, 0o755)
    src = os.path.join(out, "mpisleep.c")
    with open(src, "w") as f:
        f.write(MPISLEEP_C)
    progs = {}
    for name, path in (("mpihello", str(lamenv.REPO / "tests" / "c" / "mpihello.c")),
                       ("mpisleep", src)):
        exe = os.path.join(out, name)
        cp = subprocess.run(["mpicc.lam", "-O1", "-o", exe, path], capture_output=True,
                            text=True, timeout=120, cwd=out)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        os.chmod(exe, 0o755)
        progs[name] = exe
    yield progs
    shutil.rmtree(out, ignore_errors=True)


class Ours:
    """``python3 -m lamd --external kenyad,flatd`` and the host serving the
    real kenyad with the test flatd (tests/kenyad_flatd.py), as lamtest."""

    def __init__(self, s: lamenv.Session, pkg: Any) -> None:
        self.s = s
        shutil.copy(lamenv.REPO / "tests" / "kenyad_flatd.py", s.work / "kenyad_flatd.py")
        (s.work / "kenyad_flatd.py").chmod(0o644)
        level = os.environ.get("LAMD_TEST_LOG_LEVEL", "info")
        self.d = lamenv.PyDaemon(s, pkg, ["--log-level", level, "--jobs=none",
                                           "--external", "kenyad,flatd"])
        self.d.start()
        self.logfile = s.work / "host.log"
        self._log = open(self.logfile, "w")
        env = dict(s.env, PYTHONPATH=f"{pkg}:{s.work}", PYTHONDONTWRITEBYTECODE="1")
        self.host = s.popen([lamenv.SYSTEM_PYTHON, "-m", "kenyad_flatd"], env=env,
                            stdout=self._log, stderr=subprocess.STDOUT)
        ok = wait_until(lambda: lamenv.read_killfile(s.killfile)[1:].count(self.host.pid) >= 2
                        or self.host.poll() is not None, TIMEOUT)
        assert ok and self.host.poll() is None, "host did not attach:\n" + self.log()

    def log(self) -> str:
        self._log.flush()
        return self.logfile.read_text(errors="replace")

    def stop(self) -> None:
        """The host first (as the jobs process goes before the kernel): kenyad
        kills what runs and removes what MPI registered (lam-registry), then
        lamhalt finds only the daemon's own files in the session directory."""
        try:
            self.host.terminate()
            try:
                self.host.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.host.kill()
                self.host.wait(TIMEOUT)
                pytest.fail("the host did not stop on SIGTERM:\n" + self.log())
            assert self.host.returncode == 0, self.log()
            self.d.stop()
        finally:
            self._log.close()


@pytest.fixture
def ours(lam_session, lamd_pkg, request) -> Iterator[Ours]:
    o = Ours(lam_session, lamd_pkg)
    lamenv.show_log_on_failure(request, o.d)
    try:
        yield o
    finally:
        o.stop()
    lamenv.fail_on_stop_problems(request, o.d.stop_problems)


@pytest.fixture
def cdaemon(lam_user) -> Iterator[lamenv.CDaemon]:
    s = lamenv.Session(lam_user)
    d = lamenv.CDaemon(s)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        s.close()


def masked(text: str) -> str:
    """Output with pids and node addresses masked."""
    import re
    text = re.sub(r"\b\d{2,7} \(n0\)", "PID (n0)", text)
    text = re.sub(r"PID \d+ failed", "PID N failed", text)
    return re.sub(r"n0 \(\d+\.\d+\.\d+\.\d+\)", "n0 (ADDR)", text)


def procs_named(name: str) -> list[str]:
    cp = subprocess.run(["pgrep", "-u", lamenv.USER, "-a", "-f", name], capture_output=True,
                        text=True, timeout=10)
    return cp.stdout.splitlines()


def test_stock_lamexec_and_mpirun_as_on_the_c_lamd(ours, cdaemon, mpiprogs):
    """``lamexec -f`` (no filed: the program inherits the starter's stdout, as
    under the C lamd) and ``mpirun -f``: the same output and exit status on
    both daemons for a program that exits 3, a missing program (LAM's
    message) and a two-rank MPI program (PQATTACH, PQDETACH, notices)."""
    cases = [
        ["lamexec", "-f", "-np", "1", "/bin/echo", "hi-f"],
        ["lamexec", "-f", "-np", "1", "/bin/sh", "-c", "exit 3"],
        ["lamexec", "-f", "-np", "1", "/nonexistent/prog"],
        ["mpirun", "-f", "-np", "2", mpiprogs["mpihello"]],
    ]
    def run(s: lamenv.Session, argv: list[str]) -> subprocess.CompletedProcess:
        return s.run(["timeout", "-k", "2", "25", *argv], timeout=40)

    for argv in cases:
        mine = run(ours.s, argv)
        ref = run(cdaemon.s, argv)
        assert mine.returncode == ref.returncode, show(mine) + show(ref) + ours.log()
        assert masked(mine.stdout) == masked(ref.stdout), show(mine) + show(ref)
        assert mine.stderr == ref.stderr, show(mine) + show(ref)
    assert [c.returncode for c in (mine,)] == [0]
    log = ours.log()
    assert "hi-f" in log and "HELLO rank=0 size=2" in log and "HELLO rank=1 size=2" in log, log
    assert ours.s.run(["lamexec", "-f", "-np", "1", "/bin/sh", "-c", "exit 3"],
                      timeout=30).stdout.endswith("exited with status 3\n")


def start_mpi_job(s: lamenv.Session, exe: str, why: Any) -> tuple[subprocess.Popen, str]:
    """``mpirun -f -np 2 exe``, once mpitask lists both ranks running; the
    job and the program's path it runs. (Its ranks are bound at start-up:
    lazily bound, Debian's LAM MPI fails MPI_INIT at random on either
    daemon, tests/test_jobs.py's test_long_program_path.)"""
    job = s.popen(["mpirun", "-f", "-np", "2", exe])
    running = wait_until(lambda: job.poll() is not None or s.run(
        ["mpitask"], timeout=20).stdout.count("<running>") == 2, 2 * TIMEOUT)
    if running and job.poll() is None:
        return job, exe
    pytest.fail(f"the MPI job did not start (rc {job.poll()}):\n{why()}")


def test_stock_mpitask_lamclean_and_sigint_end_mpi_jobs(ours, cdaemon, mpiprogs):
    """During a two-rank MPI job ``mpitask`` lists both ranks as on the C lamd;
    ``lamclean`` ends the job (mpirun reports rank failure, exit 1, as on the
    C lamd; ours then stops at filed's stub, rc 253) and SIGINT to mpirun
    ends a job (exit 15, as LAM): no rank is left running."""
    outs = {}
    for name, s in (("ours", ours.s), ("c", cdaemon.s)):
        job, exe = start_mpi_job(s, mpiprogs["mpisleep"], ours.log)
        ranks = f"^{exe}$"  # the ranks' command line (mpirun's has more)
        assert len(procs_named(ranks)) == 2, procs_named(exe)
        task = s.run(["mpitask"], timeout=20)
        clean = s.run(["lamclean", "-v"], timeout=30)
        try:
            rc = job.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name}: mpirun outlived lamclean\n" + ours.log())
        outs[name] = (task.stdout, rc, masked(job.stderr.read()), clean)
        assert wait_until(lambda: not procs_named(ranks), TIMEOUT), (name, procs_named(exe))
    assert outs["ours"][:3] == outs["c"][:3], outs
    assert outs["c"][1] == 1 and "exit status 1" in outs["c"][2]
    assert "killing processes" in outs["ours"][3].stdout
    # SIGINT to mpirun: it dooms its ranks (PQDOOM SELECT_PID -15)
    job, exe = start_mpi_job(ours.s, mpiprogs["mpisleep"], ours.log)
    ranks = f"^{exe}$"
    job.send_signal(signal.SIGINT)
    assert job.wait(TIMEOUT) == 15
    assert "due to signal 15" in job.stderr.read()
    assert wait_until(lambda: not procs_named(ranks), TIMEOUT), procs_named(exe)


def test_stock_lamclean_ends_a_non_mpi_job(ours):
    """``lamexec sleep`` is no LAM client: the C lamd's lamclean leaves it
    running (its kdoom never reaches it); ours kills its process group, and
    lamexec reports the signal."""
    job = ours.s.popen(["lamexec", "-f", "-np", "1", "/bin/sh", "-c", "sleep 61 & sleep 62"])
    assert wait_until(lambda: len(procs_named("^sleep 6[12]$")) == 2, TIMEOUT)
    clean = ours.s.run(["lamclean"], timeout=30)
    assert "rfrmfd" in clean.stderr  # filed is a stub in this branch
    try:
        rc = job.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail("lamexec outlived lamclean\n" + ours.log())
    assert rc == 255 and "exited due to signal 9" in job.stdout.read()
    assert wait_until(lambda: not procs_named("^sleep 6[12]$"), TIMEOUT), procs_named("sleep")
