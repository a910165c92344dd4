"""The wire protocols of LAM's job services, as stock liblam speaks them.

Every request and reply struct that ``lamexec``, ``mpirun``, ``mpitask``,
``lamclean``, ``lamtrace`` and MPI processes exchange with kenyad, filed,
flatd, loadd, traced and iod, as a frozen dataclass with ``pack()`` and
``unpack()``; the layouts are checked byte for byte against what the C
compiler makes of LAM's headers (``tests/test_jobs_wire.py``, amd64).

All of them travel as network messages (``nsend`` to the service's event,
through bufferd; the reply comes back on the client's ``-pid``), in one of
two places:

``nh_data``  the struct sits in the eight ``int4`` words of the ``struct
             nmsg`` header itself, in the host's byte order (little-endian
             here): LAM never converts these on one node.  These classes also
             have ``data()``/``from_data()`` for :class:`lamd.kernel.wire.NMsg`.
``body``     the struct is the message body.  kenyad's structs and filed's
             ``fstate`` are in Trollius order: the sender converts every
             ``int4`` with ``ltot()`` and the receiver with ``ttol()``, which
             on a little-endian host means **big-endian on the wire** (kenyad
             itself swaps the whole ``int4`` part of a request with
             ``mttoli4``).  Strings are plain NUL-terminated bytes.

======================  ==========  ==========  =====================================
struct                  where       order       who / what
======================  ==========  ==========  =====================================
``preq`` (PReq)         body        big         client -> kenyad, every PQ* request
``preply`` (PReply)     body        big         kenyad -> client (NREEL); also the
                                                exit notice (type 1) to the waiter
``pstate`` (PState)     body        big         kenyad -> client, one per process
                                                for PQSTATE, then one with EEOF
``kstatus`` (KStatus)   in pstate   big         all 15 words swapped by kenyad
``jobid_t`` (JobId)     in preq     big
``freq`` (FReq)         nh_data     native      client -> filed; FQOPENFD's body is
                                                the client's fd-server socket path
``freply`` (FReply)     nh_data     native      filed -> client (no NREEL)
``fstate`` (FState)     body        big         filed -> client for FQSTATE
``fqrename``            body        (chars)     client -> filed for FQRENAME
int4 tfds[3]            socket      native      filed -> client on the fd-passing
  (OpenFdTfds)                                  socket after taking the 3 fds
``flreq`` (FlReq)       nh_data     native      client (or loadd) -> flatd
``flreply`` (FlReply)   nh_data     native      flatd -> client (NREEL)
``lreq`` (LReq)         nh_data     native      client -> loadd; body = file name
``lreply`` (LReply)     nh_data     native      loadd -> client
``trreq`` (TrReq)       nh_data     native      client -> traced
``trreply`` (TrReply)   nh_data     native      traced -> client
int4 finfo[3]           socket      native      process -> iod over
  (IodForward)                                  ``lam-io-socket`` (liosattach)
======================  ==========  ==========  =====================================

Not on the wire, hence not here: ``struct penv``, ``apparg``/``appenv``/
``aschema`` (``app_schema.h``: the tools' own schedule), ``pprocess`` and
``flregion`` (server tables), ``fclient`` (client fd table), ``kio_t``.

What a launch looks like on the wire, in order (one node, as captured from
the stock tools by ``tests/test_jobs_wire.py``):

``lamexec -np 1 -x A=1 prog args`` / ``mpirun -np 1 prog``
  1. ``kinit(PRCMD)`` (kernel attach, versiond), node lookups (router).
     mpirun's GER setup (``asc_ger``/``rbfparms``) is compiled out.
  2. stdio (unless ``-f``): filed ``FQOPENFD`` in ``nh_data`` (``fq_src_event
     = -pid``, ``nh_node`` LOCAL), body = ``"<session>/lam-<pid>\0"``.  The
     tool has already made that socket and now blocks in ``accept()``:
     filed connects, takes stdin, stdout, stderr (each ``sfh_send_fd``: 1
     byte with SCM_RIGHTS, then a 1-byte ack back), writes ``int4 tfds[3]``
     (native) on the socket, closes it, then replies ``freply {0, 0}``.  The
     tfds become the tool's ``ki_stdin/out/err`` (stdin stays 0 when it is a
     tty).
  3. per process (``asc_run`` -> ``rploadgov`` -> ``rpcreatev`` on one node;
     the tool resolves the program to a full path itself): ``rflatv`` =
     flatd ``FLQLOAD`` without a body (``flq_tag`` = tool pid,
     ``flq_ldlength = flq_malength`` = blob size), reply ``flreply {0}``;
     then the argv/env blob (:func:`glue_flat_args`) as ``FLQLOAD`` packets
     of at most MAXNMSGLEN with the same ``nh_data``, reply ``flreply {0}``
     once all bytes are in.  On an error reply the tool sends ``FLQCLEAN``.
  4. kenyad ``PQCREATE``: ``preq`` body (4440 bytes), ``pq_name`` = full
     path, ``pq_argv`` = the flat tag, ``pq_envsize``, ``pq_rank`` (rank in
     the job), ``pq_rtf`` (:func:`launch_rtf`: lamexec ``RTF_WAIT | RTF_IO |
     RTF_PFDIO | RTF_PTYS``, mpirun ``RTF_MPIRUN | RTF_WAIT | RTF_IO |
     RTF_PFDIO``), ``pq_jobid = {node, tool pid}``, ``pq_stdin/out/err`` =
     the filed tfds (0, 1, 2 with ``-f``), ``pq_world`` = job size,
     ``pq_parent`` = 0, ``pq_wrkdir`` = the tool's cwd.  With ``RTF_PFDIO``
     the tool again made ``<session>/lam-<pid>`` and blocks in accept until
     kenyad connects and takes the tool's *own* 0, 1, 2 (the child gets them
     directly; the filed tfds only go into ``TROLLIUSFD``).  kenyad replies
     ``preply {0, child pid, table index (1-based), node}``.  A kenyad that
     fails before taking the fds must still connect and close
     (``exit_protocol``) or the tool blocks in accept forever.
  5. the tool waits: ``rpwait`` receives a ``preply`` (big-endian) of type
     :data:`EXIT_NOTICE_TYPE` on :func:`wait_event` (``-pid & 0xBFFFFFFF``),
     which kenyad sends when the process is detached: it died (status from
     :func:`lam_exit_status`), or an MPI process called ``lpdetach`` in
     MPI_Finalize (status ``pq_status``).  mpirun first receives MPI_Init's
     type-2 messages (``nh_data = {rank, pid, kenyad index}``) with the type
     mask 3, so a type-1 notice first means "did not invoke MPI_INIT"
     (EMPINOINIT).  lamexec prints ``"<pid> (n<node>) exited with status
     <s>"`` for a non-zero status and exits with it.
  6. after a failure: ``app_doom`` = kenyad ``PQDOOM`` per process
     (``SELECT_PID``, ``pq_signal = -15``: a negative signal is a Unix
     ``kill()``, a positive one a LAM signal through the kernel), then
     lamexec sleeps 1 s draining stray notices.
  7. at exit (``lam_rfatexit``) the tool sends filed ``FQCLOSE`` for each of
     its stdio tfds above 2, and does not care about the answers.

``mpitask``: kenyad ``PQSTATE`` (``SELECT_MPI``, ``pq_maxproc = PMAX``);
kenyad answers one ``pstate`` per match and a last one with ``ps_reply =
EEOF`` while ``maxproc`` is not used up.  ``lamclean``: ``PQDOOM
(SELECT_APPL, SIGUDIE)``, filed ``FQRMFD(NOTFD)``, traced ``TRQSWEEP`` and
``TRQCLEANOBJS`` (neither is answered), bufferd ``BFQWIPE``.
``lamtrace -f 0``: ``PQDOOM(SELECT_APPL, LAM_SIGTRACE)``, then traced
``TRQFORGET`` (``TRQGET`` with ``-k``): a ``trreply`` with the total length,
then one message per trace buffer.  MPI processes: ``lpattach`` =
``PQATTACH`` **without a reply**, ``rpstate(SELECT_PID, self)``,
``lpdetach`` = ``PQDETACH`` (replied).

Only the fields a request defines carry anything: Debian builds LAM with
``LAM_DISINFECT 0``, so ``LAM_ZERO_ME`` does nothing and every other field
of a request (``pq_name`` of a PQDOOM, ``trq_src_event`` of a TRQSWEEP,
...) is the sender's stack garbage.

How kenyad starts the child (environment, argv, working directory, exit
status) is in :func:`child_environment`, :func:`child_argv`,
:func:`child_workdir` and :func:`lam_exit_status`.
"""

from __future__ import annotations

import os
import struct
from .._dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Final, Mapping, Sequence

from ..kernel.constants import (
    EBADREQUEST, EEOF, ENOTPROCESS, ESERVICE, EVFILED, EVFLATD, EVIOD, EVKENYAD,
    EVLOADD, EVTRACED, KNFYI, NHDSIZE, LamErrno,
)

# --- preq.h --------------------------------------------------------------------
PQCREATE = 1  # create a process in place
PQDOOM = 2  # doom (signal) processes
PQSTATE = 3  # state of processes
PQSPAWN = 4  # obsolete: kenyad answers ESERVICE
PQDETACH = 5  # detach a process (lpdetach, with its exit status)
PQATTACH = 6  # attach a process (lpattach): NO reply
PQDEATHNOTICE = 7  # internal to kenyad (its SIGCHLD handler)
PREQS = 7

NOTPROCESS = -0x80000000  # 0x80000000 as an int4
NOTSTATUS = -0x80000000
PSMAXNAME = 256
PMAX = 256  # kenyad's process table size (mpitask asks for this many)

SELECT_PID = 0x01
SELECT_INDEX = 0x02  # value is the 1-based kenyad table index
SELECT_MPI = 0x04
SELECT_ALL = 0x10
SELECT_SYS = 0x20
SELECT_APPL = 0x40

_LAM_WIFSIGNALED = 0x10000
_LAM_WIFNODETACH = 0x20000

# --- kio.h: runtime flags (pq_rtf, TROLLIUSRTF, ki_rtf) --------------------------
RTF_KERNEL = 0x000001
RTF_KENYA_CHILD = 0x000002
RTF_KENYA_ATTACH = 0x000004
RTF_SYSGEN = 0x000008
RTF_WAIT = 0x000010
RTF_MPIGER = 0x000020
RTF_DEBUG = 0x000040
RTF_MPIC2C = 0x000080
RTF_TRACE = 0x000100
RTF_TRSWITCH = 0x000200
RTF_TRON = 0x000300
RTF_MPI = 0x000400
RTF_FLAT = 0x000800
RTF_MPIRUN = 0x001000
RTF_HOMOG = 0x002000
RTF_APPWD = 0x004000
RTF_IO = 0x008000
RTF_PFDIO = 0x010000
RTF_TTYOUT = 0x020000
RTF_PTYS = 0x040000
RTF_CWD = 0x080000
RTF_MPISIGS = 0x100000
RTF_FORKED = 0x200000
RTF_TRYCWD = 0x400000
RTF_IMPI = 0x800000

# --- freq.h ----------------------------------------------------------------------
FQOPEN, FQCLOSE, FQREAD, FQWRITE, FQLSEEK = 0, 1, 2, 3, 4
FQSTATE, FQRMFD, FQINCR = 5, 6, 7
FQACCESS, FQMKDIR, FQUNLINK, FQSYSTEM, FQCHDIR, FQRMDIR = 8, 9, 10, 11, 12, 13
FQGETWD, FQSTAT, FQFSTAT, FQDUP, FQTRUNC, FQFTRUNC = 14, 15, 16, 17, 18, 19
FQOPENFD, FQPATHFIND, FQRENAME, FQF77READ, FQF77BACK = 20, 21, 22, 23, 24
FQMAX = 25

LAM_O_RDONLY, LAM_O_WRONLY, LAM_O_RDWR = 0x1, 0x2, 0x4
LAM_O_ACCMODE = 0x7
LAM_O_APPEND, LAM_O_CREAT, LAM_O_TRUNC, LAM_O_EXCL = 0x10, 0x20, 0x40, 0x80
LAM_O_LOCK, LAM_O_REUSE = 0x10000, 0x20000
LAM_O_DRAW, LAM_O_DINT4, LAM_O_DFLT4, LAM_O_DFLT8 = 0x0, 0x200000, 0x400000, 0x800000
LAM_O_1WAY, LAM_O_ACTIVE = 0x1000000, 0x2000000
FUMAX = 32  # per-process LAM fd limit
NOTFD = -1
MAXPATHLEN = 4096  # <sys/param.h>, the fqrename fields

# --- flatreq.h -------------------------------------------------------------------
FLPATHLEN = 96  # body length of flatd's FLQGET/FLQFORGET reply (a file path)
FLMAX = 256
FLQLOAD, FLQGET, FLQFORGET, FLQDONE, FLQCLEAN = 1, 2, 3, 4, 5

# --- lreq.h ------------------------------------------------------------------------
FNAMELEN = 160  # longest file name (with its NUL) in a loadd request body
LQLOAD = 1

# --- trreq.h (lamd.jobs.trreq, which traced reads at boot) ---------------------------
from .trreq import (  # noqa: E402
    TRANYLIST, TRANYPID, TRMAXSPACE, TRNAMELIST, TRQ_REPLIED, TRQCLEANOBJS, TRQFORGET, TRQGET,
    TRQMAX, TRQNAMEDEL, TRQNAMEGET, TRQNAMEPUB, TRQSTORE, TRQSWEEP, TRQUDIE, TRQWIPE, TRSMAX,
)

# --- ksignal.h: LAM signals a PQDOOM may carry (positive pq_signal) ------------------
LAM_SIGTRACE = 1
SIGUDIE = 4

# --- portable.h, kill.c: paths -------------------------------------------------------
LAM_PATH_MAX = 4097  # PATH_MAX + 1: pq_wrkdir
LAM_IOSOCKET = "lam-io-socket"  # iod's socket in the session directory

# --- terror.h errors the services answer with ------------------------------------------
ENOFLDESCRIPTORS = LamErrno.ENOFLDESCRIPTORS  # flatd table full
ENOPDESCRIPTORS = LamErrno.ENOPDESCRIPTORS  # kenyad table full
EBADTAG = LamErrno.EBADTAG  # flatd: no such tag
EMPINOINIT = LamErrno.EMPINOINIT  # mpirun: a process died before MPI_INIT
EPUBLISHED = LamErrno.EPUBLISHED
ENOTPUBLISHED = LamErrno.ENOTPUBLISHED
ENOPFDSUPPORT = LamErrno.ENOPFDSUPPORT

#: The event each service receives its requests on (events.h).
SERVICE_EVENTS = {"kenyad": EVKENYAD, "filed": EVFILED, "flatd": EVFLATD,
                  "loadd": EVLOADD, "traced": EVTRACED, "iod": EVIOD}

#: Message type of kenyad's exit notice (``detachindex``); MPI_Init's message
#: to mpirun (``lam_send_pid_idx``) is type 2, and mpirun receives both with
#: the type mask 3.  LAM has no names for these.
EXIT_NOTICE_TYPE = 1
MPI_INIT_TYPE = 2

#: The environment variables kenyad sets for every child (``pqcreate.c``) and
#: that ``_cio_init`` (``share/kreq/clientio.c``) reads back in the child.
TROLLIUSFD = "TROLLIUSFD"  # "ionode:stdin:stdout:stderr" (ionode = pq_jobid.jid_node)
TROLLIUSRTF = "TROLLIUSRTF"  # pq_rtf | RTF_KENYA_CHILD
LAMJOBID = "LAMJOBID"  # "jid_node:jid_pid" (the launching tool's node and pid)
LAMKENYAPID = "LAMKENYAPID"  # pid of the process that forked the child
LAMWORLD = "LAMWORLD"  # pq_world: number of processes in the job
LAMPARENT = "LAMPARENT"  # pq_parent: size of the parent world (0 from mpirun)
LAMRANK = "LAMRANK"  # pq_rank (pq_maxproc): the process's rank, -1 if none
KENYAD_VARS = (TROLLIUSFD, TROLLIUSRTF, LAMJOBID, LAMKENYAPID, LAMWORLD, LAMPARENT,
               LAMRANK)
_KENYAD_VARLEN = 31  # each is built with snprintf(buf, 31, ...)


def int4(v: int) -> int:
    """*v* wrapped to a signed 32-bit ``int4``, as a C assignment stores it."""
    v &= 0xFFFFFFFF
    return v - 0x100000000 if v & 0x80000000 else v


# --- layout machinery -----------------------------------------------------------------
#
# A struct is described once, in C order, by LAYOUT rows (attribute, C field
# name, spec); spec is "i" (int4), ("i", n) (int4[n]), ("s", n) (char[n]),
# ("x", n) (padding the C compiler adds) or a nested all-int struct class.
# The struct.Struct, the size and the C offsets all derive from it.


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _cbytes(s: str | bytes, size: int, what: str) -> bytes:
    b = s if isinstance(s, bytes) else s.encode("utf-8", "surrogateescape")
    if b"\0" in b:
        raise ValueError(f"{what}: NUL inside {b!r}")
    if len(b) > size:
        raise ValueError(f"{what}: {len(b)} bytes do not fit in char[{size}]")
    return b


class _Wire:
    """Base of the wire structs: ``pack``/``unpack`` from ``LAYOUT``."""

    __slots__ = ()

    LAYOUT: ClassVar[tuple[tuple[str, str, Any], ...]] = ()
    ORDER: ClassVar[str] = "<"  # "<" native (amd64), ">" Trollius (ltot)
    WHERE: ClassVar[str] = ""  # "body", "nh_data" or "socket"
    CNAME: ClassVar[str] = ""  # the C struct's name
    STRUCT: ClassVar[struct.Struct]
    SIZE: ClassVar[int]
    OFFSETS: ClassVar[dict[str, int]]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "LAYOUT" not in cls.__dict__:
            return
        fmt, off, offsets = cls.ORDER, 0, {}
        for _attr, cname, spec in cls.LAYOUT:
            if spec == "i":
                f, n = "i", 4
            elif isinstance(spec, tuple) and spec[0] == "i":
                f, n = f"{spec[1]}i", 4 * spec[1]
            elif isinstance(spec, tuple) and spec[0] in ("s", "x"):
                f, n = f"{spec[1]}{spec[0]}", spec[1]
            elif isinstance(spec, type) and issubclass(spec, _Wire):
                if spec.ORDER != cls.ORDER:
                    raise TypeError(f"{cls.__name__}: {spec.__name__} has another byte order")
                f, n = f"{spec.SIZE}s", spec.SIZE
            else:
                raise TypeError(f"{cls.__name__}: bad spec {spec!r}")
            if cname:
                offsets[cname] = off
            fmt += f
            off += n
        cls.STRUCT = struct.Struct(fmt)
        cls.SIZE = cls.STRUCT.size
        cls.OFFSETS = offsets
        assert cls.SIZE == off, (cls.__name__, cls.SIZE, off)

    def pack(self) -> bytes:
        """The struct's bytes, as the C client or server writes them."""
        args: list[Any] = []
        for attr, cname, spec in self.LAYOUT:
            if isinstance(spec, tuple) and spec[0] == "x":
                continue
            v = getattr(self, attr)
            if spec == "i":
                args.append(int4(v))
            elif not isinstance(spec, tuple):
                args.append(v.pack())
            elif spec[0] == "i":
                v = tuple(v)
                if len(v) > spec[1]:
                    raise ValueError(f"{cname}: {len(v)} values for int4[{spec[1]}]")
                args.extend(int4(x) for x in v + (0,) * (spec[1] - len(v)))
            else:
                args.append(_cbytes(v, spec[1], cname))
        return self.STRUCT.pack(*args)

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0):
        """Decode one struct from *buf* at *offset* (extra bytes are ignored)."""
        vals = iter(cls.STRUCT.unpack_from(buf, offset))
        kw: dict[str, Any] = {}
        for attr, _cname, spec in cls.LAYOUT:
            if isinstance(spec, tuple) and spec[0] == "x":
                continue
            if spec == "i":
                kw[attr] = next(vals)
            elif not isinstance(spec, tuple):
                kw[attr] = spec.unpack(next(vals))
            elif spec[0] == "i":
                kw[attr] = tuple(next(vals) for _ in range(spec[1]))
            else:
                kw[attr] = _cstr(next(vals))
        return cls(**kw)


class _NhData(_Wire):
    """A struct that travels in ``nh_data`` (native ``int4`` words)."""

    __slots__ = ()
    WHERE: ClassVar[str] = "nh_data"

    def data(self) -> tuple[int, ...]:
        """The eight ``nh_data`` words, zero filled after the struct."""
        words = struct.unpack(f"<{self.SIZE // 4}i", self.pack())
        return words + (0,) * (NHDSIZE - len(words))

    @classmethod
    def from_data(cls, words: Sequence[int]):
        """Decode from the ``nh_data`` words of a received header."""
        w = tuple(int4(x) for x in words) + (0,) * NHDSIZE
        return cls.unpack(struct.pack(f"<{NHDSIZE}i", *w[:NHDSIZE]))


# --- kenyad: preq.h (body, Trollius order) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class JobId(_Wire):
    """``struct jobid_t`` (kio.h): the job a process belongs to."""

    node: int = 0  # jid_node: node of the launching tool
    pid: int = 0  # jid_pid: the launching tool's pid

    CNAME: ClassVar[str] = "jobid_t"
    ORDER: ClassVar[str] = ">"
    WHERE: ClassVar[str] = "body"
    LAYOUT: ClassVar[tuple] = (("node", "jid_node", "i"), ("pid", "jid_pid", "i"))


@dataclass(frozen=True, slots=True)
class PReq(_Wire):
    """``struct preq``: every kenyad request, the message body, big-endian.

    Sent to EVKENYAD (``nh_node`` = target node, type 0, flags 0); kenyad
    answers on ``src_node``/``src_event`` with a :class:`PReply` (or
    :class:`PState` records), except for PQATTACH, which gets no reply.
    4440 bytes: 21 ``int4`` words, ``pq_name[256]``, ``pq_wrkdir[4097]``
    and 3 bytes of padding.
    """

    src_node: int = 0  # pq_src_node: reply node (LOCAL or the caller's node)
    src_event: int = 0  # pq_src_event: reply event, -(caller's pid)
    req: int = 0  # pq_req: PQCREATE ... PQATTACH
    sel_method: int = 0  # pq_sel_method: SELECT_* (PQDOOM, PQSTATE)
    sel_value: int = 0  # pq_sel_value
    loadpt: int = 0  # pq_loadpt: flat tag of the program (RTF_FLAT)
    rtf: int = 0  # pq_rtf: RTF_* runtime flags
    status: int = 0  # pq_status: exit status (PQDETACH)
    signal: int = 0  # pq_signal: PQDOOM signal (<0: Unix kill(-sig), >0: LAM signal)
    maxproc: int = 0  # pq_maxproc (PQSTATE), alias pq_rank (PQCREATE)
    argv: int = 0  # pq_argv: flat tag of the glued argv+environment, 0 if none
    envsize: int = 0  # pq_envsize: bytes of environment at the end of that blob
    nodeid: int = 0  # pq_nodeid (PQSPAWN only)
    pid: int = 0  # pq_pid: PQATTACH/PQDETACH: the process
    jobid: JobId = field(default_factory=JobId)  # pq_jobid
    stdin: int = 0  # pq_stdin: filed tfd (RTF_IO, local target), else 0
    stdout: int = 0  # pq_stdout: filed tfd (default 1)
    stderr: int = 0  # pq_stderr: filed tfd (default 2)
    world: int = 0  # pq_world: processes in the job (LAMWORLD)
    parent: int = 0  # pq_parent: parent world size (LAMPARENT)
    name: str = ""  # pq_name: program path (PQCREATE), process name (PQATTACH)
    wrkdir: str = ""  # pq_wrkdir: working directory, "" for kenyad's own

    CNAME: ClassVar[str] = "preq"
    ORDER: ClassVar[str] = ">"
    WHERE: ClassVar[str] = "body"
    LAYOUT: ClassVar[tuple] = (
        ("src_node", "pq_src_node", "i"), ("src_event", "pq_src_event", "i"),
        ("req", "pq_req", "i"), ("sel_method", "pq_sel_method", "i"),
        ("sel_value", "pq_sel_value", "i"), ("loadpt", "pq_loadpt", "i"),
        ("rtf", "pq_rtf", "i"), ("status", "pq_status", "i"),
        ("signal", "pq_signal", "i"), ("maxproc", "pq_maxproc", "i"),
        ("argv", "pq_argv", "i"), ("envsize", "pq_envsize", "i"),
        ("nodeid", "pq_nodeid", "i"), ("pid", "pq_pid", "i"),
        ("jobid", "pq_jobid", JobId), ("stdin", "pq_stdin", "i"),
        ("stdout", "pq_stdout", "i"), ("stderr", "pq_stderr", "i"),
        ("world", "pq_world", "i"), ("parent", "pq_parent", "i"),
        ("name", "pq_name", ("s", PSMAXNAME)), ("wrkdir", "pq_wrkdir", ("s", LAM_PATH_MAX)),
        ("", "", ("x", 3)),
    )

    @property
    def rank(self) -> int:
        """``pq_rank`` (the same word as ``pq_maxproc``): rank in the job, -1 if none."""
        return self.maxproc


@dataclass(frozen=True, slots=True)
class PReply(_Wire):
    """``struct preply``: kenyad's reply, the body, big-endian.

    Sent to ``pq_src_node``/``pq_src_event``, type 0, ``NREEL``.  The same
    struct, type :data:`EXIT_NOTICE_TYPE`, to :func:`wait_event` of the
    launching tool is the exit notice: ``reply`` = LAM exit status, ``pid``,
    ``nodeid`` (``index`` is not set by kenyad there).
    """

    reply: int = 0  # pr_reply: 0 or an errno (exit status in an exit notice)
    pid: int = 0  # pr_pid: created (or exited) process
    index: int = 0  # pr_index: its kenyad table index, 1-based
    nodeid: int = 0  # pr_nodeid: kenyad's node (set in exit notices)

    CNAME: ClassVar[str] = "preply"
    ORDER: ClassVar[str] = ">"
    WHERE: ClassVar[str] = "body"
    LAYOUT: ClassVar[tuple] = (("reply", "pr_reply", "i"), ("pid", "pr_pid", "i"),
                               ("index", "pr_index", "i"), ("nodeid", "pr_nodeid", "i"))


@dataclass(frozen=True, slots=True)
class KStatus(_Wire):
    """``struct kstatus`` (kreq.h) as it sits in a :class:`PState`: big-endian.

    kenyad swaps all 15 words (``mltoti4``); ``rpstate`` swaps back only
    state, priority, event, type and signal, and ``mpitask`` swaps the
    ``fyi`` words itself.
    """

    state: int = 0  # ks_state: KSREADY, KSSEND, KSRECV, KSFREE
    priority: int = 0
    signal: int = 0
    event: int = 0
    type: int = 0
    length: int = 0
    fyi: tuple[int, ...] = (0,) * KNFYI

    CNAME: ClassVar[str] = "kstatus"
    ORDER: ClassVar[str] = ">"
    WHERE: ClassVar[str] = "body"
    LAYOUT: ClassVar[tuple] = (
        ("state", "ks_state", "i"), ("priority", "ks_priority", "i"),
        ("signal", "ks_signal", "i"), ("event", "ks_event", "i"),
        ("type", "ks_type", "i"), ("length", "ks_length", "i"),
        ("fyi", "ks_fyi", ("i", KNFYI)),
    )


@dataclass(frozen=True, slots=True)
class PState(_Wire):
    """``struct pstate``: one record of kenyad's PQSTATE answer, the body, big-endian.

    One message per matching process (``reply`` 0), then, while the
    client's ``pq_maxproc`` is not used up, one with ``reply`` = EEOF
    (EINVAL alone if ``pq_maxproc <= 0``).  596 bytes.
    """

    reply: int = 0  # ps_reply: 0, EEOF (end) or EINVAL
    index: int = 0  # ps_index: kenyad table index, 1-based
    pid: int = 0  # ps_pid
    rtf: int = 0  # ps_rtf
    nodeid: int = 0  # ps_nodeid: the launcher's node (p_nodeid)
    event: int = 0  # ps_event: the launcher's reply event (p_event)
    kernel: KStatus = field(default_factory=KStatus)  # ps_kernel (the kernel's kstate)
    name: str = ""  # ps_name: argv[0], "<unknown>" when none
    loadpt: str = ""  # ps_loadpt: program path

    CNAME: ClassVar[str] = "pstate"
    ORDER: ClassVar[str] = ">"
    WHERE: ClassVar[str] = "body"
    LAYOUT: ClassVar[tuple] = (
        ("reply", "ps_reply", "i"), ("index", "ps_index", "i"), ("pid", "ps_pid", "i"),
        ("rtf", "ps_rtf", "i"), ("nodeid", "ps_nodeid", "i"), ("event", "ps_event", "i"),
        ("kernel", "ps_kernel", KStatus), ("name", "ps_name", ("s", PSMAXNAME)),
        ("loadpt", "ps_loadpt", ("s", PSMAXNAME)),
    )


# --- filed: freq.h ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FReq(_NhData):
    """``struct freq``: a filed request, in ``nh_data`` (native order).

    Sent to EVFILED; the body depends on the request (FQOPENFD: the path of
    the client's fd-passing socket, NUL-terminated; FQOPEN etc.: a file
    name; FQWRITE: the data; FQRENAME: :class:`FqRename`).  The parameter
    words have per-request names (see the properties).
    """

    req: int = 0  # fq_req: FQOPEN ... FQF77BACK
    src_node: int = 0  # fq_src_node: reply node
    src_event: int = 0  # fq_src_event: reply event (-pid; EVIOD from iod)
    param0: int = 0  # fq_tfd, fq_flags, fq_accmode, fq_trunclen
    param1: int = 0  # fq_mode, fq_length, fq_offset, fq_newflags
    param2: int = 0  # fq_whence, fq_fmt

    CNAME: ClassVar[str] = "freq"
    LAYOUT: ClassVar[tuple] = (
        ("req", "fq_req", "i"), ("src_node", "fq_src_node", "i"),
        ("src_event", "fq_src_event", "i"), ("param0", "fq_param0", "i"),
        ("param1", "fq_param1", "i"), ("param2", "fq_param2", "i"),
    )

    tfd = property(lambda self: self.param0, doc="fq_tfd")
    flags = property(lambda self: self.param0, doc="fq_flags")
    length = property(lambda self: self.param1, doc="fq_length")
    offset = property(lambda self: self.param1, doc="fq_offset")
    mode = property(lambda self: self.param1, doc="fq_mode")
    whence = property(lambda self: self.param2, doc="fq_whence")


@dataclass(frozen=True, slots=True)
class FReply(_NhData):
    """``struct freply``: filed's reply, in ``nh_data`` (native), no NREEL.

    The client returns ``fr_ret`` and sets errno from ``fr_errno`` when it is
    non-zero (``_makefreq``): a request has failed when ``ret`` is -1 (or
    non-zero, for FQRMFD and friends).
    """

    errno: int = 0  # fr_errno
    ret: int = 0  # fr_ret

    CNAME: ClassVar[str] = "freply"
    LAYOUT: ClassVar[tuple] = (("errno", "fr_errno", "i"), ("ret", "fr_ret", "i"))


@dataclass(frozen=True, slots=True)
class FState(_Wire):
    """``struct fstate``: filed's FQSTATE records, packed in the body, big-endian."""

    tfd: int = 0
    tflags: int = 0
    flow: int = 0
    count: int = 0
    src_node: int = 0
    src_event: int = 0
    name: str = ""  # fs_name[24]

    CNAME: ClassVar[str] = "fstate"
    ORDER: ClassVar[str] = ">"
    WHERE: ClassVar[str] = "body"
    LAYOUT: ClassVar[tuple] = (
        ("tfd", "fs_tfd", "i"), ("tflags", "fs_tflags", "i"), ("flow", "fs_flow", "i"),
        ("count", "fs_count", "i"), ("src_node", "fs_src_node", "i"),
        ("src_event", "fs_src_event", "i"), ("name", "fs_name", ("s", 24)),
    )


@dataclass(frozen=True, slots=True)
class FqRename(_Wire):
    """``struct fqrename``: the body of FQRENAME (8192 bytes, MAXNMSGLEN)."""

    source: str = ""
    dest: str = ""

    CNAME: ClassVar[str] = "fqrename"
    WHERE: ClassVar[str] = "body"
    LAYOUT: ClassVar[tuple] = (("source", "source", ("s", MAXPATHLEN)),
                               ("dest", "dest", ("s", MAXPATHLEN)))


@dataclass(frozen=True, slots=True)
class OpenFdTfds(_Wire):
    """``int4 tfds[3]``: what filed writes back on the FQOPENFD passing socket.

    After taking stdin, stdout and stderr it writes the LAM descriptors it
    opened for them (native order; 0 for a stdin that is a tty, which filed
    closes), closes the connection, then sends the :class:`FReply`.
    """

    stdin: int = 0
    stdout: int = 0
    stderr: int = 0

    CNAME: ClassVar[str] = "tfds[3]"
    WHERE: ClassVar[str] = "socket"
    LAYOUT: ClassVar[tuple] = (("stdin", "tfds[0]", "i"), ("stdout", "tfds[1]", "i"),
                               ("stderr", "tfds[2]", "i"))


# --- flatd: flatreq.h -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlReq(_NhData):
    """``struct flreq``: a flatd request, in ``nh_data`` (native).

    FLQLOAD: a first message without a body opens the entry (tag, src_node,
    src_event), answered at once; then the data, in packets of at most
    MAXNMSGLEN with the same ``nh_data``, answered once ``ldlength`` bytes
    are in.  FLQGET/FLQFORGET: answered with the file path (FLPATHLEN bytes).
    """

    src_node: int = 0  # flq_src_node
    src_event: int = 0  # flq_src_event
    req: int = 0  # flq_req: FLQLOAD ... FLQCLEAN
    parm1: int = 0  # flq_tag (flq_pid)
    parm2: int = 0  # flq_malength (flq_dseg)
    parm3: int = 0  # flq_ldlength

    CNAME: ClassVar[str] = "flreq"
    LAYOUT: ClassVar[tuple] = (
        ("src_node", "flq_src_node", "i"), ("src_event", "flq_src_event", "i"),
        ("req", "flq_req", "i"), ("parm1", "flq_parm1", "i"),
        ("parm2", "flq_parm2", "i"), ("parm3", "flq_parm3", "i"),
    )

    tag = property(lambda self: self.parm1, doc="flq_tag")
    malength = property(lambda self: self.parm2, doc="flq_malength")
    ldlength = property(lambda self: self.parm3, doc="flq_ldlength")


@dataclass(frozen=True, slots=True)
class FlReply(_NhData):
    """``struct flreply``: flatd's reply, in ``nh_data`` (native), NREEL."""

    reply: int = 0  # flr_reply: 0 or errno

    CNAME: ClassVar[str] = "flreply"
    LAYOUT: ClassVar[tuple] = (("reply", "flr_reply", "i"),)


# --- loadd: lreq.h ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LReq(_NhData):
    """``struct lreq``: a loadd request, in ``nh_data`` (native); body = file name."""

    req: int = 0  # lq_req: LQLOAD
    src_node: int = 0  # lq_src_node
    src_event: int = 0  # lq_src_event
    dest_node: int = 0  # lq_dest_node: where flatd should get the file
    tag: int = 0  # lq_tag: the flat tag for it

    CNAME: ClassVar[str] = "lreq"
    LAYOUT: ClassVar[tuple] = (
        ("req", "lq_req", "i"), ("src_node", "lq_src_node", "i"),
        ("src_event", "lq_src_event", "i"), ("dest_node", "lq_dest_node", "i"),
        ("tag", "lq_tag", "i"),
    )


@dataclass(frozen=True, slots=True)
class LReply(_NhData):
    """``struct lreply``: loadd's reply, in ``nh_data`` (native)."""

    reply: int = 0  # lr_reply

    CNAME: ClassVar[str] = "lreply"
    LAYOUT: ClassVar[tuple] = (("reply", "lr_reply", "i"),)


# --- traced: trreq.h ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrReq(_NhData):
    """``struct trreq``: a traced request, in ``nh_data`` (native).

    TRQSTORE/TRQNAMEPUB carry data in the body (``trq_length`` bytes).
    Careful: ``lam_rtrsweep``, ``lam_rtrudie``, ``lam_rtrwipe`` and
    ``lam_rtrcleanobjs`` never zero the header, so their ``src_node``,
    ``src_event`` and ``length`` are stack garbage; they expect no reply.
    """

    src_node: int = 0  # trq_src_node
    src_event: int = 0  # trq_src_event
    req: int = 0  # trq_req: TRQSTORE ... TRQCLEANOBJS
    pid: int = 0  # trq_pid (TRANYPID = any)
    length: int = 0  # trq_length
    lnum: int = 0  # trq_lnum: trace list (TRANYLIST = any)

    CNAME: ClassVar[str] = "trreq"
    LAYOUT: ClassVar[tuple] = (
        ("src_node", "trq_src_node", "i"), ("src_event", "trq_src_event", "i"),
        ("req", "trq_req", "i"), ("pid", "trq_pid", "i"),
        ("length", "trq_length", "i"), ("lnum", "trq_lnum", "i"),
    )


@dataclass(frozen=True, slots=True)
class TrReply(_NhData):
    """``struct trreply``: traced's reply, in ``nh_data`` (native)."""

    errno: int = 0  # trr_errno
    length: int = 0  # trr_length: total bytes of the traces that follow

    CNAME: ClassVar[str] = "trreply"
    LAYOUT: ClassVar[tuple] = (("errno", "trr_errno", "i"), ("length", "trr_length", "i"))


# --- iod ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IodForward(_Wire):
    """``int4 finfo[3]``: what a process writes to iod over ``lam-io-socket``.

    ``liosattach``/``liofdattach`` (used by ``kcreatev`` for ``RTF_IO``
    without ``RTF_PFDIO``, i.e. a child on another node than its tool):
    forward to filed descriptor ``tfd`` on ``node``; with ``passfd`` set a
    descriptor follows (``sfh_send_fd``), else the connection itself carries
    the data.  iod then sends FQWRITE (``LAM_O_1WAY``) to that filed, and
    FQCLOSE (``src_event`` EVIOD) at EOF for tfds above 2.
    """

    node: int = 0
    tfd: int = 0
    passfd: int = 0

    CNAME: ClassVar[str] = "finfo[3]"
    WHERE: ClassVar[str] = "socket"
    LAYOUT: ClassVar[tuple] = (("node", "finfo[0]", "i"), ("tfd", "finfo[1]", "i"),
                               ("passfd", "finfo[2]", "i"))


#: Every wire struct, by C name.
_ALL: tuple[type[_Wire], ...] = (
    JobId, PReq, PReply, KStatus, PState, FReq, FReply, FState, FqRename, OpenFdTfds,
    FlReq, FlReply, LReq, LReply, TrReq, TrReply, IodForward)
STRUCTS: dict[str, type[_Wire]] = {c.CNAME: c for c in _ALL}


# --- events, paths, flat blobs ----------------------------------------------------------------


def reply_event(pid: int) -> int:
    """The event a tool receives service replies on: ``-pid``."""
    return int4(-pid)


def wait_event(pid: int) -> int:
    """The event exit notices and MPI_Init messages reach tool *pid* on.

    ``(-pid) & 0xBFFFFFFF`` (``rpwait``, kenyad's ``detachindex``): the reply
    event with bit 30 cleared, so it never collides with ``-pid``.
    """
    return int4((-pid) & 0xBFFFFFFF)


def fd_server_path(session_dir: str, pid: int) -> str:
    """``lam_mktmpid(pid)``: the socket a tool passes its stdio through."""
    return os.path.join(session_dir, f"lam-{pid}")


def glue_flat_args(argv: Sequence[str], envv: Sequence[str] | None = None) -> tuple[bytes, int]:
    """``rflatv``: the blob a tool loads into flatd, and ``pq_envsize``.

    argv and the environment are each joined with newlines
    (``sfh_argv_glue``), put one straight after the other (no separator)
    and NUL-terminated; ``envsize`` is the length of the environment part.
    """
    if not argv:
        raise ValueError("rflatv needs a non-empty argv")
    args = b"\n".join(a.encode("utf-8", "surrogateescape") for a in argv)
    if envv:
        envs = b"\n".join(e.encode("utf-8", "surrogateescape") for e in envv)
        return args + envs + b"\0", len(envs)
    return args + b"\0", 0


def _argv_break(s: bytes) -> list[str]:
    # sfh_argv_break: empty pieces are skipped
    return [p.decode("utf-8", "surrogateescape") for p in s.split(b"\n") if p]


def split_flat_args(blob: bytes, envsize: int) -> tuple[list[str], list[str]]:
    """kenyad's ``get_argv_env``: (argv, environment) from a flat blob.

    Lossy exactly as LAM is: arguments containing a newline are split, empty
    arguments vanish; when the environment is the whole blob argv is empty.
    """
    s = blob.split(b"\0", 1)[0]
    if envsize < 0 or envsize > len(s):
        raise ValueError(f"pq_envsize {envsize} outside a {len(s)}-byte argv blob")
    if not envsize:
        return _argv_break(s), []
    return _argv_break(s[:len(s) - envsize]), _argv_break(s[len(s) - envsize:])


def pack_flpath(path: str) -> bytes:
    """flatd's FLQGET/FLQFORGET reply body: the path in FLPATHLEN bytes."""
    return _cbytes(path, FLPATHLEN - 1, "flatd path").ljust(FLPATHLEN, b"\0")


# --- what kenyad does with a PQCREATE ------------------------------------------------------


def launch_rtf(tool_rtf: int, local: bool) -> int:
    """The ``pq_rtf`` ``asc_run`` sends for one process.

    The tool's flags (lamexec: ``RTF_WAIT | RTF_IO | RTF_PTYS`` by default,
    ``RTF_TTYOUT`` when its stdout is a tty; mpirun: ``RTF_MPIRUN`` plus the
    same but never ``RTF_PTYS`` in Debian's build) with ``RTF_PFDIO`` added
    when stdio is wanted (``RTF_IO``) and the process is on the tool's node.
    """
    rtf = tool_rtf & ~(RTF_PFDIO | RTF_TRYCWD)
    if (tool_rtf & RTF_IO) and local:
        rtf |= RTF_PFDIO
    return rtf


#: Set for mpirun's ranks (:func:`child_environment` says why).
LD_BIND_NOW: Final = "LD_BIND_NOW"


def _kenyad_var(name: str, value: object) -> tuple[str, str]:
    entry = f"{name}={value}"[:_KENYAD_VARLEN]
    k, _, v = entry.partition("=")
    return k, v


def kenyad_variables(req: PReq, kenyad_pid: int) -> dict[str, str]:
    """The seven variables kenyad puts in every child's environment.

    ============  ===========================================================
    TROLLIUSFD    ``jid_node:pq_stdin:pq_stdout:pq_stderr``: the I/O node (the
                  job's node) and the filed descriptors for stdio forwarding
    TROLLIUSRTF   ``pq_rtf | RTF_KENYA_CHILD``
    LAMJOBID      ``jid_node:jid_pid``: the launching tool
    LAMKENYAPID   the pid of the process that forks the child: ``_cio_init``
                  marks a child whose parent is not this pid ``RTF_FORKED``
                  and drops its ``RTF_WAIT``/``RTF_FLAT``, so for a separate
                  jobs process it is *that* process's pid, not the kernel's
    LAMWORLD      ``pq_world``
    LAMPARENT     ``pq_parent``
    LAMRANK       ``pq_rank``: MPI_Init sends it to mpirun as the rank
    ============  ===========================================================

    Each ``NAME=value`` is cut to 31 characters, as kenyad's ``snprintf``
    into 32-byte buffers does.
    """
    j = req.jobid
    return dict((
        _kenyad_var(TROLLIUSFD, f"{j.node}:{req.stdin}:{req.stdout}:{req.stderr}"),
        _kenyad_var(TROLLIUSRTF, int4(req.rtf | RTF_KENYA_CHILD)),
        _kenyad_var(LAMJOBID, f"{j.node}:{j.pid}"),
        _kenyad_var(LAMKENYAPID, kenyad_pid),
        _kenyad_var(LAMWORLD, req.world),
        _kenyad_var(LAMPARENT, req.parent),
        _kenyad_var(LAMRANK, req.rank),
    ))


def child_environment(req: PReq, envv: Sequence[str], base: Mapping[str, str],
                      kenyad_pid: int) -> dict[str, str]:
    """The environment of the child a PQCREATE starts (pure, no I/O).

    kenyad ``putenv``s :func:`kenyad_variables` into its own environment
    (*base*: the environment of the process that forks, in the C lamd the
    lamd's own, which ``hboot`` started with ``TROLLIUSRTF=8``), forks, and
    the child ``putenv``s each entry of the job environment *envv* (from the
    flat blob: ``-x`` variables and, for mpirun, ``LAM_MPI_*``) before
    ``execvp``: so *envv* wins over both.  An entry without ``=`` removes
    the variable (glibc ``putenv``).  Insertion order follows ``environ``:
    replaced variables keep their place, new ones go last.

    One addition to LAM's rule, for a rank mpirun starts (``RTF_MPIRUN``):
    ``LD_BIND_NOW=1`` unless that environment already names
    ``LD_BIND_NOW`` (an empty value keeps lazy binding: glibc binds at
    start-up only for a non-empty one).  Debian's LAM MPI sends mpirun the
    rank's pid from ``MPI_Init`` (``lam_send_pid_idx``) in a message
    header whose ``nh_msg`` it never sets, body length 0; the stack slot
    often holds bytes a lazy binding's ``_dl_runtime_resolve`` saved there
    (vector registers with environment strings in them), a non-canonical
    address the kernel refuses even for 0 bytes: the rank's ``writev``
    fails with EFAULT and ``MPI_INIT`` with "Unix errno: 14 Bad address",
    on the C lamd as on this daemon (measured with 4 ranks: 5 of 15 runs
    pass lazily, 15 of 15 bound at start-up; docs/profile.md).  Bound at
    start-up, nothing is resolved later and the slot stays clean.
    """
    env = dict(base)
    env.update(kenyad_variables(req, kenyad_pid))
    for entry in envv:
        name, eq, value = entry.partition("=")
        if eq:
            env[name] = value
        else:
            env.pop(name, None)
    if req.rtf & RTF_MPIRUN and LD_BIND_NOW not in env:
        env[LD_BIND_NOW] = "1"
    return env


def child_argv(req: PReq, loadname: str, blob: bytes | None = None) -> tuple[list[str], list[str]]:
    """(argv, job environment) of a PQCREATE.

    With ``pq_argv`` (a flat tag) they come from the flat *blob*
    (:func:`split_flat_args` with ``pq_envsize``); without, argv is the
    program path alone and there is no job environment.
    """
    if req.argv:
        if blob is None:
            raise ValueError(f"PQCREATE names flat tag {req.argv} but no blob was given")
        return split_flat_args(blob, req.envsize)
    return _argv_break(loadname.encode("utf-8", "surrogateescape")), []


def child_workdir(req: PReq, loadname: str,
                  is_dir: Callable[[str], bool] | None = None) -> str | None:
    """The directory the child ``chdir``s to, or None for the forker's own.

    ``RTF_APPWD``: the program's directory, cut at the last ``/`` after the
    first character (so ``/prog`` gives ``/``; and a relative name without
    ``/`` gives its first character, as in LAM).  Otherwise ``pq_wrkdir``
    if not empty; with ``RTF_TRYCWD`` a *pq_wrkdir* that is not a directory
    (*is_dir*, kenyad's ``check_dir``) is dropped.  The chdir failing is
    fatal for the child (exit status errno) unless ``RTF_TRYCWD``.
    """
    if req.rtf & RTF_APPWD:
        cut = loadname.rfind("/", 1)
        return loadname[:cut if cut > 0 else 1]
    if req.wrkdir and req.rtf & RTF_TRYCWD and is_dir is not None and not is_dir(req.wrkdir):
        return None
    return req.wrkdir or None


def lam_exit_status(wait_status: int, rtf: int) -> int:
    """kenyad's ``childtrap``: a ``waitpid`` status as LAM reports it.

    Killed by a signal: the signal number | ``_LAM_WIFSIGNALED``; exited: the
    exit code; anything else -1.  ``_LAM_WIFNODETACH`` is added when the
    process had attached itself (``RTF_KENYA_ATTACH``: an MPI process that
    never reached ``lpdetach``), which mpirun reports as "did not call
    MPI_FINALIZE".  For an ``lpdetach`` the status is ``pq_status`` instead.
    """
    if os.WIFSIGNALED(wait_status):
        st = os.WTERMSIG(wait_status) | _LAM_WIFSIGNALED
    elif os.WIFEXITED(wait_status):
        st = os.WEXITSTATUS(wait_status)
    else:
        st = -1
    if rtf & RTF_KENYA_ATTACH:
        st |= _LAM_WIFNODETACH
    return st


__all__ = [
    # preq.h, kio.h
    "PQCREATE", "PQDOOM", "PQSTATE", "PQSPAWN", "PQDETACH", "PQATTACH", "PQDEATHNOTICE",
    "PREQS", "NOTPROCESS", "NOTSTATUS", "PSMAXNAME", "PMAX", "SELECT_PID", "SELECT_INDEX",
    "SELECT_MPI", "SELECT_ALL", "SELECT_SYS", "SELECT_APPL", "_LAM_WIFSIGNALED",
    "_LAM_WIFNODETACH", "RTF_KERNEL", "RTF_KENYA_CHILD", "RTF_KENYA_ATTACH", "RTF_SYSGEN",
    "RTF_WAIT", "RTF_MPIGER", "RTF_DEBUG", "RTF_MPIC2C", "RTF_TRACE", "RTF_TRSWITCH",
    "RTF_TRON", "RTF_MPI", "RTF_FLAT", "RTF_MPIRUN", "RTF_HOMOG", "RTF_APPWD", "RTF_IO",
    "RTF_PFDIO", "RTF_TTYOUT", "RTF_PTYS", "RTF_CWD", "RTF_MPISIGS", "RTF_FORKED",
    "RTF_TRYCWD", "RTF_IMPI",
    # freq.h, flatreq.h, lreq.h, trreq.h, ksignal.h, paths
    "FQOPEN", "FQCLOSE", "FQREAD", "FQWRITE", "FQLSEEK", "FQSTATE", "FQRMFD", "FQINCR",
    "FQACCESS", "FQMKDIR", "FQUNLINK", "FQSYSTEM", "FQCHDIR", "FQRMDIR", "FQGETWD",
    "FQSTAT", "FQFSTAT", "FQDUP", "FQTRUNC", "FQFTRUNC", "FQOPENFD", "FQPATHFIND",
    "FQRENAME", "FQF77READ", "FQF77BACK", "FQMAX", "LAM_O_RDONLY", "LAM_O_WRONLY",
    "LAM_O_RDWR", "LAM_O_ACCMODE", "LAM_O_APPEND", "LAM_O_CREAT", "LAM_O_TRUNC",
    "LAM_O_EXCL", "LAM_O_LOCK", "LAM_O_REUSE", "LAM_O_DRAW", "LAM_O_DINT4", "LAM_O_DFLT4",
    "LAM_O_DFLT8", "LAM_O_1WAY", "LAM_O_ACTIVE", "FUMAX", "NOTFD", "MAXPATHLEN",
    "FLPATHLEN", "FLMAX", "FLQLOAD", "FLQGET", "FLQFORGET", "FLQDONE", "FLQCLEAN",
    "FNAMELEN", "LQLOAD", "TRQSTORE", "TRQGET", "TRQFORGET", "TRQSWEEP", "TRQUDIE",
    "TRQWIPE", "TRQNAMEPUB", "TRQNAMEDEL", "TRQNAMEGET", "TRQCLEANOBJS", "TRQMAX",
    "TRSMAX", "TRMAXSPACE", "TRANYLIST", "TRANYPID", "TRNAMELIST", "TRQ_REPLIED",
    "LAM_SIGTRACE", "SIGUDIE", "LAM_PATH_MAX", "LAM_IOSOCKET",
    # errors
    "ENOFLDESCRIPTORS", "ENOPDESCRIPTORS", "EBADTAG", "EMPINOINIT", "EPUBLISHED",
    "ENOTPUBLISHED", "ENOPFDSUPPORT", "EEOF", "ENOTPROCESS", "ESERVICE", "EBADREQUEST",
    # conventions
    "SERVICE_EVENTS", "EXIT_NOTICE_TYPE", "MPI_INIT_TYPE", "TROLLIUSFD", "TROLLIUSRTF",
    "LAMJOBID", "LAMKENYAPID", "LAMWORLD", "LAMPARENT", "LAMRANK", "KENYAD_VARS",
    # structs
    "JobId", "PReq", "PReply", "KStatus", "PState", "FReq", "FReply", "FState",
    "FqRename", "OpenFdTfds", "FlReq", "FlReply", "LReq", "LReply", "TrReq", "TrReply",
    "IodForward", "STRUCTS",
    # functions
    "int4", "reply_event", "wait_event", "fd_server_path", "glue_flat_args",
    "split_flat_args", "pack_flpath", "launch_rtf", "kenyad_variables",
    "child_environment", "child_argv", "child_workdir", "lam_exit_status",
]
