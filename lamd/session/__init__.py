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

import errno
import os
import pwd
import _socket  # not socket: lamd.boot.early binds with this module on lamboot's path
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Callable, Mapping

# Imported by a lamd that lamboot started before it calls lamboot back
# (lamd.boot.early), on lamboot's path once per node: no logging, dataclasses or
# typing here (about 12 ms between them).

LAM_DEFAULT_TMPDIR = "/tmp"
LAM_KILLFILE = "lam-killfile"
LAM_SOCKET = "lam-kernel-socket"
#: Our sidecar to the kill file: "PID STARTTIME" per attached client, so that
#: tkill can tell a live client from a reused pid (stock tkill ignores it).
LAMD_CLIENTS = "lamd-clients"
#: Under systemd: the outcome of the daemon's last reload (lamd.service.reload).
LAMD_RELOAD = "lamd-reload"
#: A datalink process outside the kernel (lamd.datalink) is starting or runs:
#: "PID STARTTIME", written before it first connects to the kernel, removed
#: when it exits; a kernel that starts meanwhile leaves dli, dlo and
#: bforward out of its boot (``--datalink=auto``).
LAMD_DATALINK = "lamd-datalink"
#: Under systemd: lamd-dl@.socket, where LAM's prefix tree hands hboot's
#: arguments to the datalink service (its presence is how it knows).
LAMD_DATALINK_SOCKET = "lamd-datalink-socket"
#: Under systemd: lamd-dl@.socket's FIFO beside it, where the prefix tree's
#: shell script writes hboot's arguments without starting Python.
LAMD_DATALINK_FIFO = "lamd-datalink-fifo"
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


class Session:
    """The paths of one LAM session (a value: immutable, compared by directory)."""

    __slots__ = ("directory",)
    directory: str

    def __init__(self, directory: str) -> None:
        object.__setattr__(self, "directory", directory)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Session is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Session):
            return NotImplemented
        return self.directory == other.directory

    def __hash__(self) -> int:
        return hash(self.directory)

    def __repr__(self) -> str:
        return f"Session(directory={self.directory!r})"

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
            host = _socket.gethostname()
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
        """Create the directory for ourselves, or check an existing one."""
        self.prepare()

    def prepare(self, owner: str | None = None, uid: int | None = None,
                gid: int = -1) -> None:
        """Create the directory 0700 owned by *uid* (default: ours), or check
        an existing one (LAM's ``check_dir_perms``); the one rule for the
        daemon by hand and for the socket unit's ``ExecStartPre=`` (as root,
        for another user).

        Never follows a symlink and, unlike LAM's clients, never deletes a
        wrong entry: one that is not a directory, not owned by *uid* or not
        mode 0700 is refused with :class:`SessionError` (someone else may
        have planted it in /tmp).
        """
        if uid is None:
            uid = os.getuid()
        path = self.directory
        created = False
        try:
            os.mkdir(path, 0o700)
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise SessionError(f"cannot create session directory {path}: {e.strerror}") from e
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise SessionError(f"{path} exists and is not a directory (or is a symlink): "
                               f"{e.strerror}; remove it") from None
        try:
            if created and uid != os.getuid():
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o700)
            st = os.fstat(fd)
            if st.st_uid != uid:
                try:
                    has = pwd.getpwuid(st.st_uid).pw_name
                except KeyError:
                    has = f"uid {st.st_uid}"
                want = owner or f"uid {uid}"
                raise SessionError(f"session directory {path} is owned by {has}, not {want}; "
                                   "LAM clients would reject it: remove it")
            if stat.S_IMODE(st.st_mode) != 0o700:
                raise SessionError(f"session directory {path} has mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}, not 0700 as LAM requires; "
                                   "fix or remove it")
        finally:
            os.close(fd)


def datalink_announced(directory: str, *, check_start: bool = False) -> int | None:
    """The pid the session's :data:`LAMD_DATALINK` file names if a process
    still holds its lock (the datalink process locks it for its whole life:
    no need to see that process in ``/proc``, which a kernel in another
    unit's user namespace cannot); else None (no file, a stale one).

    *check_start*: also that the pid is still that process (its start time,
    from ``/proc``), for a caller that will signal it."""
    import fcntl
    path = os.path.join(directory, LAMD_DATALINK)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the process that wrote it runs
        except OSError:
            return None
        else:
            return None  # nobody holds it: stale
        fields = os.read(fd, 64).split()
        pid, start = int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)
    if check_start:
        from .kkill import read_proc_stat
        try:
            st = read_proc_stat(pid)
        except OSError:
            return None
        if st is None or st[1] != start or st[0] == "Z":
            return None
    return pid


def bind_session_socket(session: Session, *,
                        factory: Callable[[int, int], _socket.socket] | None = None
                        ) -> _socket.socket:
    """Bind the session socket, replacing a stale one, never a live one.
    *factory* makes the sockets (default ``_socket.socket``: not socket's
    class, whose module makes enums before the first reply, issue 13)."""
    if factory is None:
        factory = _socket.socket
    path = session.socket_path
    probe = factory(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except FileNotFoundError:
        pass
    except (ConnectionRefusedError, OSError) as e:
        if isinstance(e, ConnectionRefusedError) or e.errno in (errno.ECONNREFUSED, errno.ENOTSOCK):
            from .. import lazylog  # (the daemon's logging may not be set up yet)

            lazylog.getLogger("lamd").info("removing stale socket %s left by a dead daemon",
                                           path)
            os.unlink(path)
        elif e.errno != errno.ENOENT:
            raise SessionError(f"cannot probe {path}: {e.strerror}") from e
    else:
        raise SessionError(f"a live daemon already serves {path}; not taking it over")
    finally:
        probe.close()
    s = factory(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        s.bind(path)
    except OSError as e:
        s.close()
        raise SessionError(f"cannot bind {path}: {e.strerror}") from e
    finally:
        os.umask(old)
    s.listen(4096)
    return s


