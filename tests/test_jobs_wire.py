"""lamd.jobs.wire against LAM itself.

1. Layout: ``tests/c/jobswire.c``, compiled with ``mpicc.lam`` against
   Debian's LAM headers and liblam, prints sizeof/offsetof of every service
   struct, the constants, and the bytes of instances filled the way LAM's
   clients and servers fill them (``ltot()`` for the Trollius-order ones):
   our ``unpack`` reads the same values and ``pack`` gives the same bytes.
2. Capture: stock tools (``lamexec``, ``mpirun``, ``mpitask``, ``lamclean``,
   ``lamtrace``) run as ``lamtest`` against our daemon; what reaches the
   services is decoded with the codec and checked against what the tool was
   asked.  With the daemon's own stubs (they refuse with ESERVICE) a tool
   stops at its first service request; to see a whole launch the daemon is
   booted with recording services (``tests/jobs_recorder.py``) that answer
   like kenyad/filed/flatd would, built from the codec's structs, so the
   stock tool's reading of our replies is checked too.
3. The pure functions (flat blobs, child environment, exit status).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from lamd.jobs import wire
from lamd.jobs.wire import (
    FQOPENFD, FQRMFD, FLQLOAD, LAM_SIGTRACE, PQCREATE, PQDOOM, PQSTATE,
    RTF_IO, RTF_KENYA_CHILD, RTF_MPIRUN, RTF_PFDIO, RTF_PTYS, RTF_WAIT, SELECT_APPL,
    SELECT_MPI, SELECT_PID, SIGUDIE, TRANYLIST, TRANYPID, TRQCLEANOBJS, TRQFORGET,
    TRQSWEEP, FReq, FlReq, JobId, KStatus, PReply, PReq, PState, TrReq,
)
from lamd.kernel.constants import (
    EEOF, ESERVICE, EVKENYAD, MAXNMSGLEN,
)
from lamd.kernel.wire import NMsg

from . import lamenv

HERE = Path(__file__).resolve().parent
LOCAL = -2


# ---------------------------------------------------------------------------
# 1. layout against the C compiler

@pytest.fixture(scope="module")
def jobswire():
    missing = lamenv.missing_tools()  # packaging/setup.sh installs mpicc.lam: a failure, not a skip
    if missing:
        pytest.fail(missing, pytrace=False)
    out = Path(tempfile.mkdtemp(prefix="lamd-jobswire-", dir="/tmp"))
    try:
        exe = out / "jobswire"
        cp = subprocess.run(["mpicc.lam", "-O1", "-Wall", "-Werror", "-o", str(exe),
                             str(HERE / "c" / "jobswire.c")],
                            capture_output=True, text=True, timeout=120, cwd=str(out))
        assert cp.returncode == 0, f"mpicc.lam failed:\n{cp.stdout}{cp.stderr}"
        yield exe
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _run(exe, mode):
    cp = subprocess.run([str(exe), mode], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return [line.split() for line in cp.stdout.splitlines()]


@pytest.fixture(scope="module")
def layout(jobswire):
    sizes, offsets, consts, extra = {}, {}, {}, {}
    for f in _run(jobswire, "layout"):
        if f[0] == "SIZE":
            sizes[f[1]] = int(f[2])
        elif f[0] == "OFFSET":
            offsets.setdefault(f[1], {})[f[2]] = int(f[3])
        elif f[0] == "CONST":
            consts[f[1]] = int(f[2])
        else:
            extra[f[0]] = int(f[1])
    return sizes, offsets, consts, extra


@pytest.fixture(scope="module")
def dump(jobswire):
    return {f[1]: bytes.fromhex(f[2]) for f in _run(jobswire, "dump") if f[0] == "HEX"}


C_STRUCTS = [c for c in wire.STRUCTS.values() if "[" not in c.CNAME]


@pytest.mark.parametrize("cls", C_STRUCTS, ids=lambda c: c.CNAME)
def test_size_and_offsets(layout, cls):
    sizes, offsets, _, _ = layout
    assert cls.SIZE == sizes[cls.CNAME]
    c = dict(offsets[cls.CNAME])
    if cls is PReq:  # pq_rank is #define'd to pq_maxproc
        assert c.pop("pq_rank") == c["pq_maxproc"]
    assert cls.OFFSETS == c


def test_nh_data_structs_fit_in_nh_data(layout):
    nhdata = layout[3]["NHDATA"]
    for cls in wire.STRUCTS.values():
        assert (cls.WHERE == "nh_data") == issubclass(cls, wire._NhData)
        if cls.WHERE == "nh_data":
            assert cls.SIZE <= nhdata, cls.CNAME


def test_constants(layout):
    consts = layout[2]
    assert len(consts) > 100
    for name, value in consts.items():
        assert getattr(wire, name) == value, name


def _roundtrip(cls, raw, expected):
    got = cls.unpack(raw)
    assert got == expected
    assert got.pack() == raw
    assert expected.pack() == raw
    return got


def test_preq_bytes(dump):
    raw = dump["preq"]
    q = _roundtrip(PReq, raw, PReq(
        src_node=LOCAL, src_event=-4321, req=PQCREATE, sel_method=SELECT_PID,
        sel_value=5, loadpt=6, rtf=RTF_WAIT | RTF_IO | RTF_PFDIO | RTF_PTYS, status=8,
        signal=-15, maxproc=10, argv=4321, envsize=12, nodeid=13, pid=14,
        jobid=JobId(15, 16), stdin=17, stdout=18, stderr=19, world=20, parent=21,
        name="/usr/bin/prog", wrkdir="/home/user/work dir"))
    assert q.rank == 10
    assert raw[:8] == bytes.fromhex("fffffffe ffffef1f")  # big-endian on the wire


def test_kenyad_replies_bytes(dump):
    _roundtrip(PReply, dump["preply"], PReply(ESERVICE, 123456, 3, -1))
    _roundtrip(PState, dump["pstate"], PState(
        reply=EEOF, index=2, pid=3, rtf=wire.RTF_MPI, nodeid=5, event=-6,
        kernel=KStatus(7, 8, 9, -10, 11, 12, tuple(range(20, 29))),
        name="prog", loadpt="/usr/bin/prog"))


def test_filed_bytes(dump):
    fq = _roundtrip(FReq, dump["freq"], FReq(FQOPENFD, 2, -3, 4, 5, 6))
    assert (fq.tfd, fq.length, fq.whence) == (4, 5, 6)
    assert FReq.from_data(fq.data()) == fq and len(fq.data()) == 8
    _roundtrip(wire.FReply, dump["freply"], wire.FReply(ESERVICE, -1))
    _roundtrip(wire.FState, dump["fstate"], wire.FState(
        1, wire.LAM_O_WRONLY | wire.LAM_O_1WAY, 3, 4, 5, -6, "stdout.4321"))
    _roundtrip(wire.FqRename, dump["fqrename"], wire.FqRename("/tmp/from", "/tmp/to"))
    _roundtrip(wire.OpenFdTfds, dump["tfds[3]"], wire.OpenFdTfds(3, 4, -5))


def test_flatd_loadd_traced_iod_bytes(dump):
    flq = _roundtrip(FlReq, dump["flreq"], FlReq(LOCAL, -2, FLQLOAD, 4, 5, 6))
    assert (flq.tag, flq.malength, flq.ldlength) == (4, 5, 6)
    _roundtrip(wire.FlReply, dump["flreply"], wire.FlReply(wire.EBADTAG))
    _roundtrip(wire.LReq, dump["lreq"], wire.LReq(wire.LQLOAD, 2, -3, 4, 5))
    _roundtrip(wire.LReply, dump["lreply"], wire.LReply(7))
    _roundtrip(TrReq, dump["trreq"], TrReq(1, -2, TRQFORGET, TRANYPID, 5, wire.TRNAMELIST))
    _roundtrip(wire.TrReply, dump["trreply"], wire.TrReply(wire.ENOTPUBLISHED, 8))
    _roundtrip(wire.IodForward, dump["finfo[3]"], wire.IodForward(1, 7, 1))


def test_strings_that_do_not_fit_are_refused():
    with pytest.raises(ValueError):
        PReq(name="x" * (wire.PSMAXNAME + 1)).pack()
    with pytest.raises(ValueError):
        PReq(wrkdir="a\0b").pack()
    assert PReq.unpack(PReq(name="é/\udcff").pack()).name == "é/\udcff"  # any bytes


# ---------------------------------------------------------------------------
# 2. what stock tools send: captured on our daemon, decoded with the codec

def run_tool(s: lamenv.Session, argv, timeout: float = 20):
    """Run a stock tool as lamtest: stdin /dev/null, stdout/stderr to files
    (so the descriptors it passes are recognisable). -> (rc, out, err, pid)"""
    out_path, err_path = s.work / "tool.out", s.work / "tool.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        p = s.popen([str(a) for a in argv], stdout=out, stderr=err)
        try:
            rc = s._wait_reaping(p, timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"{argv} timed out after {timeout} s")
    return rc, out_path.read_text(), err_path.read_text(), p.pid


def tool_stdio(s: lamenv.Session) -> list[str]:
    return ["/dev/null", str(s.work / "tool.out"), str(s.work / "tool.err")]


class Packet:
    """One captured packet: header, body and the service struct decoded."""

    DECODE = {
        "kenyad": lambda h, b: PReq.unpack(b),
        "filed": lambda h, b: FReq.from_data(h.data),
        "flatd": lambda h, b: FlReq.from_data(h.data),
        "traced": lambda h, b: TrReq.from_data(h.data),
        "loadd": lambda h, b: wire.LReq.from_data(h.data),
    }

    def __init__(self, svc: str, nmsg: bytes, body: bytes, fds=None):
        self.svc, self.head, self.body, self.fds = svc, NMsg.unpack(nmsg), body, fds
        self.q = self.DECODE[svc](self.head, body)

    def __repr__(self):
        return f"<{self.svc} {self.q} body={self.body[:60]!r} fds={self.fds}>"


PACKET_LOG = re.compile(r"DEBUG (\w+): packet nmsg=([0-9a-f]+) body=([0-9a-f]*)$")


def logged_packets(daemon) -> list[Packet]:
    got = []
    for line in daemon.log().splitlines():
        m = PACKET_LOG.search(line)
        if m:
            got.append(Packet(m[1], bytes.fromhex(m[2]), bytes.fromhex(m[3])))
    return got


def test_services_log_what_the_tools_send(lam_session, lamd_pkg, request):
    """Our daemon as it is (the jobs process serving kenyad, filed, flatd),
    logging at debug: kenyad and traced log each request packet they take, decoded here
    with the codecs of lamd.jobs.wire, beside filed's own log lines."""
    s = lam_session
    d = lamenv.PyDaemon(s, lamd_pkg, ["--log-level", "debug"])
    request.node._lam_daemons = [d]
    d.start()
    try:
        rc, out, err, lamexec = run_tool(s, ["lamexec", "-np", "1", "/bin/true"])
        assert rc == 0, (rc, out, err)
        rc, out, err, lamclean = run_tool(s, ["lamclean"])
        assert rc == 0, (rc, out, err)
        rc, out, err, mpitask = run_tool(s, ["mpitask"])
        assert rc == 0 and "<running>" not in out, (rc, out, err)  # nothing left to list
    finally:
        d.stop()
    p = logged_packets(d)
    assert [(x.svc, x.q.req) for x in p] == [
        ("kenyad", PQCREATE), ("kenyad", PQDOOM), ("traced", wire.TRQSWEEP),
        ("traced", TRQCLEANOBJS), ("kenyad", PQSTATE)], p
    # lam_lfopenfd: the request in nh_data, its fd-server socket as the body
    # (fq_tfd is never set: LAM_ZERO_ME is empty in Debian's build, so it
    # holds what the tool's stack held, 0 on one machine, not on another)
    path = wire.fd_server_path(str(s.session_dir), lamexec)
    assert re.search(rf"filed: request {FQOPENFD} tfd -?\d+ from node 0 event {-lamexec}, "
                     rf"{len(path) + 1} bytes", d.log()), d.log()
    assert f"filed: pid {lamexec} passed its stdio as tfds 3 4 5" in d.log()
    create = p[0].q
    assert (create.src_event, create.argv, create.name) == (-lamexec, lamexec, "/bin/true")
    assert (create.stdin, create.stdout, create.stderr) == (3, 4, 5)  # filed's tfds
    # rpdoom(node, SELECT_APPL, 0, SIGUDIE): a whole preq body, big-endian
    doom = p[1]
    assert (doom.head.event, doom.head.length) == (EVKENYAD, PReq.SIZE)
    assert (doom.q.src_node, doom.q.src_event) == (0, -lamclean)
    assert (doom.q.sel_method, doom.q.sel_value, doom.q.signal) == (SELECT_APPL, 0, SIGUDIE)
    # lam_rtrsweep(node, TRANYLIST): lnum and pid set, the rest not answered
    sweep = p[2].q
    assert (sweep.lnum, sweep.pid) == (TRANYLIST, TRANYPID), sweep
    # rpstate(node, SELECT_MPI, 0, table, PMAX)
    st = p[4].q
    assert (st.src_event, st.sel_method, st.maxproc) == (-mpitask, SELECT_MPI, wire.PMAX)


@pytest.fixture
def recorder(lam_session, lamd_pkg, request):
    """Start our lamd with the recording services (tests/jobs_recorder.py);
    ``start(exit_status)`` -> the daemon, ``packets()`` -> what was captured."""
    s = lam_session
    shutil.copy(HERE / "jobs_recorder.py", s.work / "jobs_recorder.py")
    (s.work / "jobs_recorder.py").chmod(0o644)
    record = s.work / "record.jsonl"
    started = []

    class Recorder:
        def start(self, exit_status: int = 0):
            d = lamenv.PyDaemon(s, lamd_pkg, module="jobs_recorder", env={
                "PYTHONPATH": str(s.work), "LAMD_JOBS_RECORD": str(record),
                "LAMD_JOBS_EXIT": str(exit_status)})
            request.node._lam_daemons = [d]
            started.append(d)
            d.start()
            return d

        def packets(self) -> list[Packet]:
            if not record.exists():
                return []
            recs = [json.loads(line) for line in record.read_text().splitlines()]
            record.unlink()
            return [Packet(r["svc"], bytes.fromhex(r["nmsg"]), bytes.fromhex(r["body"]),
                           r.get("fds")) for r in recs]

    try:
        yield Recorder()
    finally:
        for d in started:
            d.stop()


def _flat_blob(packets, tag):
    loads = [x for x in packets if x.svc == "flatd" and x.q.req == FLQLOAD and x.q.tag == tag]
    assert loads and loads[0].body == b"", loads  # the opening FLQLOAD has no body
    blob = b"".join(x.body for x in loads[1:])
    assert len(blob) == loads[0].q.ldlength == loads[0].q.malength
    assert all(len(x.body) <= MAXNMSGLEN for x in loads)
    return blob


def test_lamexec_launch_as_kenyad_sees_it(lam_session, recorder):
    """lamexec -np 1 -x ... prog args: FQOPENFD, the argv/env blob into flatd,
    PQCREATE with RTF_PFDIO, then (our exit notice, status 3) PQDOOM; the tool
    reads our PReply exit notice and reports pid, node and status."""
    s = lam_session
    from tests.jobs_recorder import FAKE_PID, TFDS
    recorder.start(exit_status=3)
    t0 = time.monotonic()
    rc, out, err, pid = run_tool(s, ["lamexec", "-np", "1", "-x", "LAMD_A=one,LAMD_B=two",
                                     "/bin/echo", "hello", "two words"])
    took = time.monotonic() - t0
    assert rc == 3 and out == f"{FAKE_PID} (n0) exited with status 3\n" and err == "", \
        (rc, out, err)
    assert took < 10, took  # lamexec's own error_cleanup sleeps 1 s
    p = recorder.packets()
    assert [(x.svc, x.q.req) for x in p] == [
        ("filed", FQOPENFD), ("flatd", FLQLOAD), ("flatd", FLQLOAD), ("kenyad", PQCREATE),
        ("kenyad", PQDOOM), ("filed", wire.FQCLOSE), ("filed", wire.FQCLOSE),
        ("filed", wire.FQCLOSE)], p
    openfd = p[0]
    assert openfd.body == wire.fd_server_path(str(s.session_dir), pid).encode() + b"\0"
    assert openfd.fds == tool_stdio(s)  # filed gets the tool's own stdin/out/err

    blob = _flat_blob(p, tag=pid)  # rflatv tags the blob with the tool's pid
    create = p[3]
    q = create.q
    assert (create.head.event, create.head.type, create.head.length) == (EVKENYAD, 0, PReq.SIZE)
    assert (q.src_node, q.src_event) == (0, -pid)
    assert q.name == "/bin/echo"  # resolved by the tool
    assert q.rtf == RTF_WAIT | RTF_IO | RTF_PFDIO | RTF_PTYS
    assert q.rtf == wire.launch_rtf(RTF_WAIT | RTF_IO | RTF_PTYS, local=True)
    assert (q.argv, q.loadpt) == (pid, 0)
    assert q.jobid == JobId(0, pid)
    assert (q.stdin, q.stdout, q.stderr) == (TFDS.stdin, TFDS.stdout, TFDS.stderr)
    assert (q.world, q.parent, q.rank) == (1, 0, 0)
    assert q.wrkdir == str(s.work)  # the tool's cwd
    argv, envv = wire.child_argv(q, q.name, blob)
    assert argv == ["/bin/echo", "hello", "two words"]
    assert envv == ["LAMD_B=two", "LAMD_A=one"]  # -x is read back to front
    assert q.envsize == len(b"LAMD_B=two\nLAMD_A=one")
    assert create.fds == tool_stdio(s)  # RTF_PFDIO: the tool's own fds, not filed's tfds

    env = wire.child_environment(q, envv, {"PATH": "/bin"}, kenyad_pid=777)
    assert env == {"PATH": "/bin", "TROLLIUSFD": "0:3:4:5",
                   "TROLLIUSRTF": str(q.rtf | RTF_KENYA_CHILD), "LAMJOBID": f"0:{pid}",
                   "LAMKENYAPID": "777", "LAMWORLD": "1", "LAMPARENT": "0", "LAMRANK": "0",
                   "LAMD_B": "two", "LAMD_A": "one"}
    assert wire.child_workdir(q, q.name) == str(s.work)

    doom = p[4].q  # app_doom after a failed child: a Unix SIGTERM by pid
    assert (doom.src_event, doom.sel_method, doom.sel_value, doom.signal) == \
        (-pid, SELECT_PID, FAKE_PID, -signal.SIGTERM)
    # at exit the tool closes the filed descriptors it was given
    assert [x.q.tfd for x in p[5:]] == [3, 4, 5]


def test_mpirun_and_lamexec_f(lam_session, recorder):
    """mpirun: RTF_MPIRUN, no RTF_PTYS, no job environment (LAM_MPI_SESSION_PREFIX
    is never exported); our exit notice before any MPI_Init message makes it
    report "did not invoke MPI_INIT" (EMPINOINIT) and doom the process.
    lamexec -f: no stdio step at all, the default descriptors 0/1/2."""
    s = lam_session
    from tests.jobs_recorder import FAKE_PID
    recorder.start(exit_status=0)
    rc, out, err, pid = run_tool(s, ["mpirun", "-np", "1", "/bin/true"])
    assert rc == wire.EMPINOINIT & 0xFF and "did not invoke MPI_INIT" in err, (rc, out, err)
    p = recorder.packets()
    assert [(x.svc, x.q.req) for x in p][:5] == [
        ("filed", FQOPENFD), ("flatd", FLQLOAD), ("flatd", FLQLOAD), ("kenyad", PQCREATE),
        ("kenyad", PQDOOM)], p
    q = p[3].q
    assert q.rtf == RTF_MPIRUN | RTF_WAIT | RTF_IO | RTF_PFDIO
    assert (q.name, q.envsize, q.jobid, q.world, q.rank) == ("/bin/true", 0, JobId(0, pid), 1, 0)
    assert wire.child_argv(q, q.name, _flat_blob(p, pid)) == (["/bin/true"], [])
    assert (p[4].q.sel_method, p[4].q.sel_value, p[4].q.signal) == (SELECT_PID, FAKE_PID, -15)

    rc, out, err, pid = run_tool(s, ["lamexec", "-f", "N", "true"])
    assert rc == 0 and out == err == "", (rc, out, err)
    p = recorder.packets()
    assert [(x.svc, x.q.req) for x in p] == [
        ("flatd", FLQLOAD), ("flatd", FLQLOAD), ("kenyad", PQCREATE)], p
    q = p[2].q
    assert q.rtf == RTF_WAIT | RTF_PTYS and p[2].fds is None
    assert os.path.isabs(q.name) and os.path.samefile(q.name, shutil.which("true"))
    assert (q.stdin, q.stdout, q.stderr) == (0, 1, 2)
    assert wire.child_argv(q, q.name, _flat_blob(p, pid)) == (["true"], [])


def test_mpitask_lamclean_lamtrace(lam_session, recorder):
    """mpitask reads our PState records (a fake MPI process, then EEOF);
    lamclean and lamtrace send what their sources say, traced's sweeps
    with no reply expected."""
    s = lam_session
    recorder.start()
    rc, out, err, pid = run_tool(s, ["mpitask"])
    assert rc == 0 and re.search(r"^3 fakeprog +<running>$", out, re.M), (rc, out, err)
    (st,) = recorder.packets()
    assert (st.q.req, st.q.src_event, st.q.sel_method, st.q.maxproc) == \
        (PQSTATE, -pid, SELECT_MPI, wire.PMAX)

    rc, out, err, pid = run_tool(s, ["lamclean"])
    assert rc == 0, (rc, out, err)
    p = recorder.packets()
    assert [(x.svc, x.q.req) for x in p] == [
        ("kenyad", PQDOOM), ("filed", FQRMFD), ("traced", TRQSWEEP), ("traced", TRQCLEANOBJS)], p
    assert (p[0].q.sel_method, p[0].q.signal, p[0].q.src_event) == (SELECT_APPL, SIGUDIE, -pid)
    assert (p[1].q.tfd, p[1].q.src_event) == (wire.NOTFD, -pid)
    assert (p[2].q.lnum, p[2].q.pid) == (TRANYLIST, TRANYPID)
    # lam_rtrcleanobjs's trreq is stack garbage but for its request code
    # (Debian builds LAM without LAM_DISINFECT): lnum was seen 0 and -1

    rc, out, err, pid = run_tool(s, ["lamtrace", "-f", "0", "trace.out"])
    assert rc == 0, (rc, out, err)
    p = recorder.packets()
    assert [(x.svc, x.q.req) for x in p] == [("kenyad", PQDOOM), ("traced", TRQFORGET)], p
    assert (p[0].q.sel_method, p[0].q.signal) == (SELECT_APPL, LAM_SIGTRACE)
    assert (p[1].q.src_event, p[1].q.lnum, p[1].q.pid) == (-pid, TRANYLIST, TRANYPID)


# ---------------------------------------------------------------------------
# 3. pure functions

def test_flat_blob_as_rflatv_and_kenyad_see_it():
    blob, envsize = wire.glue_flat_args(["/bin/echo", "a b", "c"], ["X=1", "Y=2"])
    assert blob == b"/bin/echo\na b\ncX=1\nY=2\0" and envsize == 7
    assert wire.split_flat_args(blob, envsize) == (["/bin/echo", "a b", "c"], ["X=1", "Y=2"])
    assert wire.glue_flat_args(["p"]) == (b"p\0", 0)
    # LAM's losses: empty arguments vanish, newlines split
    assert wire.split_flat_args(*wire.glue_flat_args(["p", "", "x\ny"])) == (["p", "x", "y"], [])
    with pytest.raises(ValueError):
        wire.split_flat_args(b"ab\0", 3 + 1)


def test_child_environment():
    req = PReq(req=PQCREATE, rtf=RTF_WAIT | RTF_IO | RTF_PFDIO, maxproc=3,
               jobid=JobId(0, 4321), stdin=3, stdout=4, stderr=5, world=8, parent=0)
    base = {"PATH": "/usr/bin", "LAMRANK": "old", "HOME": "/h", "GONE": "x"}
    env = wire.child_environment(req, ["HOME=/job", "NEW=1", "GONE"], base, 777)
    assert env == {
        "PATH": "/usr/bin", "LAMRANK": "3", "HOME": "/job",
        "TROLLIUSFD": "0:3:4:5", "TROLLIUSRTF": str(RTF_WAIT | RTF_IO | RTF_PFDIO | RTF_KENYA_CHILD),
        "LAMJOBID": "0:4321", "LAMKENYAPID": "777", "LAMWORLD": "8", "LAMPARENT": "0",
        "NEW": "1"}
    assert list(env)[:3] == ["PATH", "LAMRANK", "HOME"]  # replaced in place
    assert base["LAMRANK"] == "old"  # pure
    # mpirun's ranks are bound at start-up (MPI_INIT's "Bad address" with
    # lazy binding, on the C lamd too): unless the environment names it
    mpi = PReq(req=PQCREATE, rtf=RTF_MPIRUN | RTF_WAIT, jobid=JobId(0, 4321))
    assert wire.child_environment(mpi, [], base, 777)["LD_BIND_NOW"] == "1"
    assert list(wire.child_environment(mpi, ["NEW=1"], base, 777))[-1] == "LD_BIND_NOW"
    assert wire.child_environment(mpi, ["LD_BIND_NOW="], base, 777)["LD_BIND_NOW"] == ""
    assert wire.child_environment(mpi, [], {**base, "LD_BIND_NOW": ""},
                                  777)["LD_BIND_NOW"] == ""
    assert "LD_BIND_NOW" not in env  # lamexec's (no RTF_MPIRUN): LAM's rule alone
    # kenyad's 32-byte snprintf buffers cut long values
    long = wire.kenyad_variables(PReq(jobid=JobId(-2147483648, -2147483648),
                                      stdin=-2147483648), 1)
    assert long["TROLLIUSFD"] == "-2147483648:-2147483648:0:"[:31 - len("TROLLIUSFD=")]
    assert len("TROLLIUSFD=" + long["TROLLIUSFD"]) == 31


def test_child_argv_and_workdir():
    blob, envsize = wire.glue_flat_args(["/bin/echo", "hi"], ["A=1"])
    req = PReq(argv=99, envsize=envsize, wrkdir="/w", rtf=0)
    assert wire.child_argv(req, "/bin/echo", blob) == (["/bin/echo", "hi"], ["A=1"])
    assert wire.child_argv(PReq(), "/bin/true") == (["/bin/true"], [])
    assert wire.child_workdir(req, "/bin/echo") == "/w"
    assert wire.child_workdir(PReq(rtf=wire.RTF_APPWD, wrkdir="/w"), "/usr/bin/x") == "/usr/bin"
    assert wire.child_workdir(PReq(rtf=wire.RTF_APPWD), "/x") == "/"
    assert wire.child_workdir(PReq(), "/x") is None
    tryreq = PReq(rtf=wire.RTF_TRYCWD, wrkdir="/nope")
    assert wire.child_workdir(tryreq, "/x", is_dir=lambda d: False) is None
    assert wire.child_workdir(tryreq, "/x", is_dir=lambda d: True) == "/nope"


def test_exit_status_and_events():
    assert wire.lam_exit_status(3 << 8, 0) == 3
    assert wire.lam_exit_status(signal.SIGKILL, 0) == signal.SIGKILL | wire._LAM_WIFSIGNALED
    assert wire.lam_exit_status(0, wire.RTF_KENYA_ATTACH) == wire._LAM_WIFNODETACH
    assert wire.wait_event(1234) == ((-1234) & 0xBFFFFFFF) - (1 << 32) == -1073743058
    assert wire.wait_event(1234) != wire.reply_event(1234) == -1234
    assert wire.launch_rtf(RTF_WAIT | RTF_IO, local=True) == RTF_WAIT | RTF_IO | RTF_PFDIO
    assert wire.launch_rtf(RTF_WAIT | RTF_IO, local=False) == RTF_WAIT | RTF_IO
    assert wire.launch_rtf(RTF_WAIT, local=True) == RTF_WAIT
    assert wire.fd_server_path("/tmp/s", 42) == "/tmp/s/lam-42"
    assert wire.pack_flpath("/tmp/lam-flatd0") == b"/tmp/lam-flatd0".ljust(wire.FLPATHLEN, b"\0")
