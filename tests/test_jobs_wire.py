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
    FQOPENFD, FQRMFD, FLQCLEAN, FLQLOAD, LAM_SIGTRACE, PQCREATE, PQDOOM, PQSTATE,
    RTF_IO, RTF_KENYA_CHILD, RTF_MPIRUN, RTF_PFDIO, RTF_PTYS, RTF_WAIT, SELECT_APPL,
    SELECT_MPI, SELECT_PID, SIGUDIE, TRANYLIST, TRANYPID, TRQCLEANOBJS, TRQFORGET,
    TRQSWEEP, FReq, FlReq, JobId, KStatus, PReply, PReq, PState, TrReq,
)
from lamd.kernel.constants import (
    EEOF, ESERVICE, EVFILED, EVFLATD, EVKENYAD, EVTRACED, MAXNMSGLEN,
)
from lamd.kernel.wire import NMsg

from . import lamenv

HERE = Path(__file__).resolve().parent
LOCAL = -2


# ---------------------------------------------------------------------------
# 1. layout against the C compiler

@pytest.fixture(scope="module")
def jobswire():
    if shutil.which("mpicc.lam") is None:
        pytest.skip("mpicc.lam not installed")
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
