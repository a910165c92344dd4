"""Where a LAM session lives: LAM's ``share/etc/kill.c`` (``lam_tmpdir_init``).

The session directory is ``PREFIX/lam-USER@HOST[-SUFFIX]``:

* PREFIX: ``-sessionprefix``, else ``LAM_MPI_SESSION_PREFIX``, else ``TMPDIR``,
  else ``/tmp``;
* USER: the name of the real uid, HOST: ``gethostname()``;
* SUFFIX: ``-sessionsuffix``, else ``LAM_MPI_SESSION_SUFFIX``, else
  ``LAM_MPI_SOCKET_SUFFIX``, else a batch job id (PBS, SLURM, LSF, SGE).

Inside it: the kernel socket ``lam-kernel-socket`` and the kill file
``lam-killfile``. The directory must be a directory, mode 0700, owned by the
user; LAM clients remove and recreate anything else.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
from dataclasses import dataclass
from typing import Mapping

LAM_DEFAULT_TMPDIR = "/tmp"
LAM_KILLFILE = "lam-killfile"
LAM_SOCKET = "lam-kernel-socket"
#: Our sidecar to the kill file: "PID STARTTIME" per attached client, so that
#: tkill can tell a live client from a reused pid (stock tkill ignores it).
LAMD_CLIENTS = "lamd-clients"
LAM_PREFIX_ENV = "LAM_MPI_SESSION_PREFIX"
LAM_SUFFIX_ENV = "LAM_MPI_SESSION_SUFFIX"


class SessionError(Exception):
    """The session directory cannot be used safely."""


def lam_get_batchid(env: Mapping[str, str]) -> str | None:
    """The batch job id LAM folds into the suffix (``lam_get_batchid``)."""
    if env.get("PBS_ENVIRONMENT") is not None and env.get("PBS_JOBID") is not None:
        return f"pbs-{env['PBS_JOBID']}"
    if env.get("SLURM_JOBID") is not None:
        return f"slurm-{env['SLURM_JOBID']}"
    if env.get("LSB_JOBID") is not None and env.get("LSB_JOBINDEX") is not None:
        return f"lsf-{env['LSB_JOBID']}-{env['LSB_JOBINDEX']}"
    if env.get("SGE_ROOT") is not None and env.get("JOB_ID") is not None:
        return f"sge-{env['JOB_ID']}-{env.get('SGE_TASK_ID', 'undefined')}"
    return None


@dataclass(frozen=True, slots=True)
class Session:
    """The paths of one LAM session."""

    directory: str

    @property
    def socket_path(self) -> str:
        return os.path.join(self.directory, LAM_SOCKET)

    @property
    def killfile_path(self) -> str:
        return os.path.join(self.directory, LAM_KILLFILE)

    @property
    def clients_path(self) -> str:
        return os.path.join(self.directory, LAMD_CLIENTS)

    @classmethod
    def for_user(cls, *, prefix: str | None = None, suffix: str | None = None,
                 env: Mapping[str, str] | None = None, uid: int | None = None,
                 user: str | None = None, host: str | None = None) -> "Session":
        """The session directory LAM's clients compute for this user."""
        env = os.environ if env is None else env
        if prefix is None:
            prefix = env.get(LAM_PREFIX_ENV)
        if prefix is None:
            prefix = env.get("TMPDIR", LAM_DEFAULT_TMPDIR)
        if user is None:
            try:
                user = pwd.getpwuid(os.getuid() if uid is None else uid).pw_name
            except KeyError:
                user = "unknown"
        if host is None:
            host = socket.gethostname()
        if suffix is None:
            for name in (LAM_SUFFIX_ENV, "LAM_MPI_SOCKET_SUFFIX"):
                if env.get(name) is not None:
                    suffix = env[name]
                    break
            else:
                suffix = lam_get_batchid(env)
        leaf = f"lam-{user}@{host}" + (f"-{suffix}" if suffix is not None else "")
        return cls(os.path.join(prefix, leaf))

    def ensure_directory(self) -> None:
        """Create the directory 0700, or check an existing one (``check_dir_perms``).

        Unlike LAM's clients we never delete a wrong one: a directory we do not
        own, or with other bits set, is refused with a clear error.
        """
        try:
            os.mkdir(self.directory, 0o700)
            return
        except FileExistsError:
            pass
        except OSError as e:
            raise SessionError(f"cannot create session directory {self.directory}: {e.strerror}") from e
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode):
            raise SessionError(f"{self.directory} exists and is not a directory")
        if st.st_uid != os.getuid():
            raise SessionError(f"session directory {self.directory} is owned by uid "
                               f"{st.st_uid}, not by uid {os.getuid()}")
        if stat.S_IMODE(st.st_mode) != 0o700:
            raise SessionError(f"session directory {self.directory} has mode "
                               f"{stat.S_IMODE(st.st_mode):04o}, LAM requires 0700")
