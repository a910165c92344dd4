"""LAM's protocol constants, named exactly as LAM names them.

Each group says which LAM header it comes from (``share/include/`` in the
LAM 7.1.4 sources). Values are for Debian's amd64 build.
"""

from __future__ import annotations

# the C module: signal's own makes an enum of every signal, and this module
# is on the socket-activated first reply's path (issue 13)
import _signal  # type: ignore[import]  # (no stub)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Final

# --- kreq.h: request codes -------------------------------------------------

KQSEND: Final = 0
KQRECV: Final = 1
KQSTATE: Final = 2
KQDOOM: Final = 3
KQSR: Final = 4
KQATTACH: Final = 5
KQSURRENDER: Final = 6
KQDETACH: Final = 7
KQDUMP: Final = 8
KQMAX: Final = 7  # number of client requests dispatched through the kq[] table

# kreq.h: process states
KSREADY: Final = 0
KSSEND: Final = 1
KSRECV: Final = 2
KSFREE: Final = 3

# kreq.h: process flags (kp_flags)
KSURRENDER: Final = 0x02  # process should surrender
KIPROC: Final = 0x10  # internal process
KMSG2: Final = 0x20  # send-blocked process is a KQSR

# kreq.h: message flags (k_flags), shared with nh_flags
KSYNCSQL: Final = 0x01  # use SQL rules for sync
KTRY: Final = 0x02  # error if the request would block
KNMSG: Final = 0x04  # k_msg is a struct nmsg
KPROBE: Final = 0x08  # KQRECV is a probe only
KTRACE: Final = 0x20  # time kernel operations

# kreq.h: sync masks
KTYPEHI: Final = 0xFFFF0000
KTYPELO: Final = 0x0000FFFF
KEVENTHI: Final = 0x7FFF0000

KPMAX: Final = 256 + 32  # the C kernel's fixed process table size (we have no such cap)
KNFYI: Final = 9  # debugging info words
MAXNMSGLEN: Final = 8192  # net.h: maximum network frame size
NHDSIZE: Final = 8  # net.h: data words in a network message header

# --- priority.h --------------------------------------------------------------
PRMAX: Final = 1500
PRROUTER: Final = 1400
PRBUFFERD: Final = 1100
PRCMD: Final = 1095
PRDOOM: Final = 1095
PRLAMHALT: Final = 1094  # never written to the kill file (kkill.c)
PRDLO: Final = 1090
PRDLI: Final = 1087
PRDAEMON: Final = 1085
PRDIED: Final = 1084
PRECHOD: Final = PRDAEMON
PRLOADD: Final = PRDAEMON
PRFILED: Final = PRDAEMON
PRBFORWARD: Final = PRDAEMON
PRHALTD: Final = PRDAEMON
PRVERSIOND: Final = PRDAEMON

# --- events.h ----------------------------------------------------------------
LAM_BASE_EVENT: Final = 0x40000000
NOTEVENT: Final = LAM_BASE_EVENT + 2
EVROUTER: Final = LAM_BASE_EVENT + 3
EVBOOTD: Final = LAM_BASE_EVENT + 4
EVDLOINIT: Final = LAM_BASE_EVENT + 5
EVDLI: Final = LAM_BASE_EVENT + 6
EVFILED: Final = LAM_BASE_EVENT + 7
EVLOADD: Final = LAM_BASE_EVENT + 8
EVBFORWARD: Final = LAM_BASE_EVENT + 9
EVKENYAD: Final = LAM_BASE_EVENT + 10
EVIOD: Final = LAM_BASE_EVENT + 11
EVECHOD: Final = LAM_BASE_EVENT + 12
EVBUFFERD: Final = LAM_BASE_EVENT + 13
EVFLATD: Final = LAM_BASE_EVENT + 14
EVTRACED: Final = LAM_BASE_EVENT + 15
EVHALTD: Final = LAM_BASE_EVENT + 16
EVPAUSE: Final = LAM_BASE_EVENT + 17
EVSTOP: Final = LAM_BASE_EVENT + 18
EVDL0: Final = LAM_BASE_EVENT + 19
EVVERSIOND: Final = LAM_BASE_EVENT + 24

# --- ksignal.h -------------------------------------------------------------
TNSIG: Final = 10
SIGTRACE: Final = 1
SIGC: Final = 2
SIGARECV: Final = 3
SIGUDIE: Final = 4
SIGARREST: Final = 5
SIGRELEASE: Final = 6
SIGA: Final = 7
SIGB: Final = 8
SIGFUSE: Final = 9
SIGSHRINK: Final = 10


def sigmask(signo: int) -> int:
    """LAM's ``sigmask(s)``: the bit for LAM signal *signo* (1-based)."""
    return 1 << (signo - 1)


#: The Unix signal the kernel uses to preempt a ready client
#: (``LAM_SIGUSR`` in Debian's ``/usr/include/lam/lam_config.h``).
LAM_SIGUSR: Final[int] = _signal.SIGUSR2

# --- terror.h (Unix build: LAM_ERR_BASE 0x400) --------------------------------
LAM_ERR_BASE: Final = 0x400


class LamErrno:
    """LAM's own error numbers (``terror.h``), above the Unix errno range:
    ints, named by :func:`strerror` (not an enum: :mod:`enum` costs the
    socket-activated first reply about 3 ms)."""

    EUNKNOWN = 201 + LAM_ERR_BASE
    EDEADNODE = 202 + LAM_ERR_BASE
    ENOEXDESCRIPTORS = 203 + LAM_ERR_BASE
    EFULL = 204 + LAM_ERR_BASE
    ENOTPROCESS = 205 + LAM_ERR_BASE
    EBADREQUEST = 206 + LAM_ERR_BASE
    ENOTMALLOCED = 207 + LAM_ERR_BASE
    EGERFLOW = 208 + LAM_ERR_BASE
    ESERVICE = 209 + LAM_ERR_BASE
    EMAGIC = 210 + LAM_ERR_BASE
    EBLOWN = 211 + LAM_ERR_BASE
    EIMPOSSIBLE = 212 + LAM_ERR_BASE
    LAM_ERR_TO = 213 + LAM_ERR_BASE
    EBADHOST = 214 + LAM_ERR_BASE
    ENOKERNEL = 215 + LAM_ERR_BASE
    ENOTATTACHED = 216 + LAM_ERR_BASE
    LAM_ERR_BLOCK = 217 + LAM_ERR_BASE
    EMSGLEN = 218 + LAM_ERR_BASE
    EEOF = 219 + LAM_ERR_BASE
    ECOLLIDE = 220 + LAM_ERR_BASE
    LAM_ERR_INVAL = 221 + LAM_ERR_BASE
    EBADNODE = 229 + LAM_ERR_BASE
    EBADIDSPEC = 230 + LAM_ERR_BASE
    ENONODES = 231 + LAM_ERR_BASE
    ENORDESCRIPTORS = 232 + LAM_ERR_BASE
    ENOBFDESCRIPTORS = 233 + LAM_ERR_BASE
    ENOFLDESCRIPTORS = 235 + LAM_ERR_BASE
    ENOPDESCRIPTORS = 236 + LAM_ERR_BASE
    ENOKDESCRIPTORS = 237 + LAM_ERR_BASE
    EBADTAG = 240 + LAM_ERR_BASE
    EBADREC = 243 + LAM_ERR_BASE
    EHIGHWATER = 245 + LAM_ERR_BASE
    EMPINOINIT = 252 + LAM_ERR_BASE
    EPUBLISHED = 255 + LAM_ERR_BASE
    ENOTPUBLISHED = 256 + LAM_ERR_BASE
    ENOPTYSUPPORT = 257 + LAM_ERR_BASE
    ENOPFDSUPPORT = 258 + LAM_ERR_BASE
    ENOT_IMPLEMENTED = 261 + LAM_ERR_BASE


EUNKNOWN: Final = LamErrno.EUNKNOWN
EFULL: Final = LamErrno.EFULL
ENOTPROCESS: Final = LamErrno.ENOTPROCESS
EBADREQUEST: Final = LamErrno.EBADREQUEST
ESERVICE: Final = LamErrno.ESERVICE
ENOKERNEL: Final = LamErrno.ENOKERNEL
ENOTATTACHED: Final = LamErrno.ENOTATTACHED
EMSGLEN: Final = LamErrno.EMSGLEN
EEOF: Final = LamErrno.EEOF
EBADNODE: Final = LamErrno.EBADNODE
ENOKDESCRIPTORS: Final = LamErrno.ENOKDESCRIPTORS
ENOBFDESCRIPTORS: Final = LamErrno.ENOBFDESCRIPTORS
ENOT_IMPLEMENTED: Final = LamErrno.ENOT_IMPLEMENTED


#: LamErrno's names by number
_LAM_ERRNO_NAMES: dict[int, str] = {v: k for k, v in vars(LamErrno).items()
                                    if not k.startswith("_")}


def strerror(code: int) -> str:
    """A readable name for a reply code: a LAM error or a Unix errno."""
    import os

    if code == 0:
        return "success"
    name = _LAM_ERRNO_NAMES.get(code)
    return name if name is not None else os.strerror(code)
