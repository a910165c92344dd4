"""lamd-tkill: tear down a LAM session from its kill file (LAM's ``tools/tkill``).

Reads ``lam-killfile`` (the daemon's pid first, then every attached client),
sends SIGCONT and SIGHUP to every client, waits, SIGKILLs what remains, and
removes the session's files. Unlike stock ``tkill`` it never signals a pid
that is no longer the attached client:

* each pid is opened with ``pidfd_open(2)`` first, and only then checked
  against the start time the daemon recorded in ``lamd-clients`` (field 22 of
  ``/proc/PID/stat`` at connect time). A pidfd refers to one process for
  ever, so once the check passes every later signal (``pidfd_send_signal``)
  reaches exactly that process, never a successor that reused the pid;
* a pid without a ``lamd-clients`` entry (a stock LAM daemon's kill file) is
  accepted only if the process started before the kill file was last written
  (so it existed when it was listed);
* the process must belong to the kill file's owner.

Any number of clients: the soft RLIMIT_NOFILE is raised to the hard limit
at start, and as many pidfds are held as the limit allows; the others are
pinned again, one batch after another (a new pidfd, the start time checked
again), and waited for with epoll. A client that cannot be checked or
signalled, or that outlives SIGKILL, is never passed over: the exit status
is 3 and one line says how many were left and why; the kill file is then
kept for another try.

Three modes:

* by hand (default): also stops the daemon (SIGTERM, then SIGKILL) and a
  datalink process the session announces (``lamd-datalink``: one still
  waiting for lamboot is not in the kill file), removes a socket nobody
  listens on and the empty session directory;
* ``--keep-socket`` (the LAM prefix tree's ``tkill`` where the session is
  systemd's: ``hboot -t``, ``lamwipe``): as by hand, but the socket and the
  directory stay, for ``lamd@.socket`` and ``lamd-dl@.socket``;
* ``--systemd`` (``ExecStop=``/``ExecStopPost=`` of ``lamd@.service``):
  leaves the daemon to systemd and the socket and directory to
  ``lamd@.socket``, which keeps listening (its path put back where a daemon
  that died had moved it aside for lamhalt: ``lamd.session.halting``). systemd runs both after a crash
  too; a stop that systemd will follow with a restart (``$SERVICE_RESULT``
  other than ``success``, unless the exit status is one of
  ``RestartPreventExitStatus=``) is not the end of the session: the clients
  and the kill file are left alone (:func:`stop_is_final`).
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import select
import signal
import socket
import sys
import time
from collections import deque
from .._dataclasses import dataclass, field
from typing import Mapping

from ..limits import raise_nofile_limit
from ..session import (
    LAM_KILLFILE, LAM_SOCKET, LAMD_CLIENTS, LAMD_DATALINK, LAMD_DATALINK_SOCKET, LAMD_RELOAD,
    Session,
    datalink_announced,
)
from ..session.kkill import read_clients, read_killfile, read_proc_stat

PROG = "lamd-tkill"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ /proc

class CannotCheck(Exception):
    """A process could not be looked at or pinned: no descriptor left
    (EMFILE, ENFILE, ENOMEM) or ``/proc`` refused. Never the same as gone."""


def _proc(pid: int) -> tuple[str, int, int] | None:
    """(state, start time in clock ticks, real uid) of *pid*, or None if gone."""
    try:
        st = read_proc_stat(pid)
        if st is None:
            return None
        uid = os.stat(f"/proc/{pid}").st_uid
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as e:
        raise CannotCheck(f"cannot read /proc/{pid}: {e.strerror}") from None
    return st[0], st[1], uid


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(start time in clock ticks, real uid) of *pid*, or None if gone."""
    cur = _proc(pid)
    return None if cur is None else cur[1:]


def boot_time() -> float:
    """Wall-clock time of boot, from CLOCK_BOOTTIME (no /proc/stat needed)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def start_wallclock(ticks: int) -> float:
    return boot_time() + ticks / CLK_TCK


# ------------------------------------------------------------------ descriptors

#: descriptors kept free beside the pinned processes: the epoll instance, one
#: /proc read or pidfd at a time, the session directory, stderr, the socket probe
RESERVE_FDS = 16


def descriptor_budget() -> int:
    """How many pidfds can be held at once beside what is open and the reserve."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 64
    return max(0, soft - used - RESERVE_FDS)


_NO_FD = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for *pid*; None without pidfd support (old kernel, seccomp).

    ProcessLookupError if there is no such process; CannotCheck if no
    descriptor can be had; ValueError if *pid* is not a process (a thread id).
    """
    try:
        return os.pidfd_open(pid)
    except AttributeError:
        return None
    except ProcessLookupError:
        raise
    except OSError as e:
        if e.errno in _NO_FD:
            raise CannotCheck(f"no descriptor to pin it: {e.strerror}") from None
        if e.errno in (errno.ENOSYS, errno.EPERM):
            return None
        if e.errno == errno.EINVAL:
            raise ValueError("not a process (a thread id?)") from None
        raise


# ------------------------------------------------------------------ targets

@dataclass
class Target:
    """One process verified as the one the kill file listed: (pid, start time)."""

    pid: int
    starttime: int
    role: str                       # "client" or "daemon"
    pidfd: int | None = None        # held while the descriptor budget allows
    dead: bool = False
    problem: str | None = None      # why it could not be dealt with: it is left
    signals: list[str] = field(default_factory=list)


class Reaper:
    """Verifies, signals and waits for targets within a descriptor budget.

    At most *capacity* pidfds are held at once (the descriptor budget); a
    target beyond it is re-pinned when it is signalled or waited for: a new
    pidfd whose process must still have the start time it was verified with,
    so it is the same process (a pid is never reused within one clock tick).
    When even that is impossible (no descriptor, no pidfds on this kernel) a
    signal goes by pid, right after the start time is checked again. Waiting
    uses epoll on the held pidfds, replacing each exited one with the next
    target. A target that cannot be checked or signalled is never skipped:
    it gets a *problem* and is reported as left.
    """

    def __init__(self, *, owner_uid: int, listed_at: float, capacity: int,
                 verbose: bool = False) -> None:
        self.owner_uid = owner_uid
        self.listed_at = listed_at
        self.capacity = capacity
        self.verbose = verbose
        self.held: list[Target] = []
        self.watched: dict[int, Target] = {}   # pidfd -> target, in wait()'s epoll set
        self.pidfds = True          # False once pidfd_open says ENOSYS/EPERM

    # -- pinning

    def _hold(self, t: Target, fd: int) -> bool:
        """Keep *fd* as *t*'s pidfd if the budget allows; else close it."""
        if len(self.held) < self.capacity:
            t.pidfd = fd
            self.held.append(t)
            return True
        os.close(fd)
        return False

    def release(self, t: Target) -> None:
        if t.pidfd is not None:
            os.close(t.pidfd)
            t.pidfd = None
            self.held.remove(t)

    def _make_room(self) -> bool:
        """Out of descriptors: give one held pidfd back and hold one fewer from now on."""
        spare = [t for t in self.held if t.pidfd not in self.watched]
        if not spare:
            return False
        self.release(spare[-1])
        self.capacity = len(self.held)
        return True

    def _retry(self, fn):
        try:
            return fn()
        except CannotCheck:
            if not self._make_room():
                raise
            return fn()

    def _open(self, pid: int) -> int | None:
        if not self.pidfds:
            return None
        fd = self._retry(lambda: _pidfd_open(pid))
        if fd is None:
            self.pidfds = False
        return fd

    def _look(self, pid: int) -> tuple[int | None, tuple[str, int, int] | None]:
        """A pidfd for *pid*, then its state, start time and uid from /proc.

        In that order: if the pid was reused in between, /proc shows the new
        process and the caller refuses; if /proc shows the expected process,
        the pidfd is it. The pidfd is None when none can be had (no pidfds
        here, or no descriptor even after giving a held one back): the caller
        then goes by the pid, checked again right before each signal. The
        state is None if the process is gone. Raises CannotCheck if /proc
        cannot be read, ValueError if *pid* is not a process.
        """
        try:
            fd = self._open(pid)
        except ProcessLookupError:
            return None, None
        except CannotCheck:
            fd = None
        try:
            cur = self._retry(lambda: _proc(pid))
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        if cur is None and fd is not None:
            os.close(fd)
            fd = None
        return fd, cur

    def _current(self, t: Target) -> tuple[int | None, bool]:
        """A fresh pidfd for *t* (None if none to be had) and whether *t* still runs."""
        try:
            fd, cur = self._look(t.pid)
        except ValueError:          # the pid is now some process's thread: t is gone
            return None, False
        same = cur is not None and cur[1] == t.starttime and cur[0] not in "ZX"
        if not same and fd is not None:
            os.close(fd)
            fd = None
        return fd, same

    def verify(self, pid: int, role: str, expected_start: int | None) -> Target | None:
        """Check *pid* is still the process the kill file listed, and pin it.

        *expected_start* is its start time from ``lamd-clients`` (None: unknown,
        then it must have started before the kill file was last written).
        None: not to be signalled (gone, or not the listed process); a
        target with a *problem*: could not be checked.
        """
        if pid <= 1 or pid == os.getpid():
            say(f"ignoring pid {pid} in the kill file")
            return None
        try:
            fd, cur = self._look(pid)
        except ValueError as e:
            say(f"not signalling {role} pid {pid}: {e}")
            return None
        except CannotCheck as e:
            return Target(pid, 0, role, problem=f"could not be checked ({e})")
        if cur is None or cur[0] in "ZX":
            if fd is not None:
                os.close(fd)
            if self.verbose:
                say(f"{role} {pid}: already gone")
            return None
        _state, start, uid = cur
        reason = None
        if uid != self.owner_uid:
            reason = f"belongs to uid {uid}, not to the session owner {self.owner_uid}"
        elif expected_start:
            if start != expected_start:
                reason = (f"start time {start} differs from {expected_start} recorded at "
                          "attach: the pid was reused")
        else:
            # Existed when listed? Allow for the tick granularity of /proc.
            if start_wallclock(start) > self.listed_at + 1.0 / CLK_TCK:
                reason = "started after the kill file was written: the pid was reused"
        if reason:
            if fd is not None:
                os.close(fd)
            say(f"not signalling {role} pid {pid}: {reason}")
            return None
        t = Target(pid, start, role)
        if fd is not None:
            self._hold(t, fd)
        return t

    # -- signals

    def send(self, t: Target, sig: int) -> bool:
        """Signal exactly the verified process; False if it is gone or cannot be."""
        if t.dead or t.problem:
            return False
        fd, temporary = t.pidfd, False
        try:
            if fd is None:
                fd, same = self._current(t)
                temporary = fd is not None
                if not same:
                    t.dead = True
                    return False
            if fd is not None:
                signal.pidfd_send_signal(fd, sig)
            else:                   # no pidfd to be had: by pid, just re-checked
                os.kill(t.pid, sig)
        except ProcessLookupError:
            t.dead = True
            return False
        except PermissionError:
            t.problem = "could not be signalled (permission denied)"
            return False
        except CannotCheck as e:
            t.problem = f"could not be checked ({e})"
            return False
        finally:
            if temporary:
                os.close(fd)
        t.signals.append(signal.Signals(sig).name)
        return True

    # -- waiting

    def alive(self, t: Target) -> bool:
        """Whether *t* still runs (it has a problem: assume so)."""
        if t.dead:
            return False
        if t.problem:
            return True
        if t.pidfd is not None:
            ep = select.epoll(1)
            try:
                ep.register(t.pidfd, select.EPOLLIN)
                t.dead = bool(ep.poll(0))
            finally:
                ep.close()
            return not t.dead
        try:
            fd, same = self._current(t)
        except CannotCheck:
            return True
        if fd is not None:
            os.close(fd)
        t.dead = not same
        return same

    def wait(self, targets: list[Target], timeout: float) -> list[Target]:
        """Wait up to *timeout* s for *targets* to exit; the ones still alive.

        Epoll on at most *capacity* pidfds; each exited one is released and
        the next target pinned in its place. Without pidfds: /proc, 20 times
        a second.
        """
        deadline = time.monotonic() + timeout
        queue = deque(sorted((t for t in targets if not t.dead and not t.problem),
                             key=lambda t: t.pidfd is None))
        stuck = [t for t in targets if t.problem]
        watched = self.watched
        ep = select.epoll()
        try:
            while True:
                while queue and self.pidfds:       # pin and watch as many as allowed
                    t = queue[0]
                    if t.pidfd is None:
                        if len(self.held) >= self.capacity:
                            break
                        try:
                            fd, same = self._current(t)
                        except CannotCheck:
                            self.capacity = len(self.held)
                            break
                        if not same:
                            t.dead = True
                            queue.popleft()
                            continue
                        if fd is None:                # no pidfd to be had now
                            self.capacity = len(self.held)
                            break
                        self._hold(t, fd)
                    queue.popleft()
                    ep.register(t.pidfd, select.EPOLLIN)
                    watched[t.pidfd] = t
                left = deadline - time.monotonic()
                if not watched:
                    queue = deque(t for t in queue if self.alive(t))
                    if not queue or left <= 0:
                        break
                    time.sleep(min(left, 0.05))
                    continue
                if left <= 0:
                    break
                for fd, _ in ep.poll(min(left, 1.0)):
                    t = watched.pop(fd)
                    ep.unregister(fd)
                    t.dead = True
                    self.release(t)
        finally:
            ep.close()
            still = list(watched.values())
            watched.clear()
        return still + [t for t in queue if self.alive(t)] + stuck

    def close(self) -> None:
        for t in list(self.held):
            self.release(t)


# ------------------------------------------------------------------ removal

def _unlink(path: str, verbose: bool) -> None:
    try:
        os.unlink(path)
        if verbose:
            say(f"removed {path}")
    except FileNotFoundError:
        pass
    except OSError as e:
        say(f"cannot remove {path}: {e.strerror}")


def socket_is_live(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def remove_session_files(killfile: str, *, keep_socket: bool, verbose: bool) -> None:
    directory = os.path.dirname(killfile) or "."
    _unlink(killfile, verbose)
    _unlink(os.path.join(directory, LAMD_CLIENTS), verbose)
    _unlink(os.path.join(directory, LAMD_RELOAD), verbose)
    if datalink_announced(directory) is None:  # a stale announcement
        _unlink(os.path.join(directory, LAMD_DATALINK), verbose)
    try:
        for name in os.listdir(directory):   # spares and leftovers of atomic rewrites
            if name.startswith((LAM_KILLFILE + ".", LAMD_CLIENTS + ".", LAMD_RELOAD + ".")):
                _unlink(os.path.join(directory, name), verbose)
    except OSError:
        pass
    if keep_socket:
        return
    sock = os.path.join(directory, LAM_SOCKET)
    if os.path.exists(sock):
        if socket_is_live(sock):
            say(f"{sock} still has a listener; leaving it")
            return
        _unlink(sock, verbose)
    try:
        os.rmdir(directory)
        if verbose:
            say(f"removed {directory}")
    except OSError:
        pass


# ------------------------------------------------------------------ main

EXIT_OK = 0          # every listed process that was still the attached one is gone
EXIT_NO_KILLFILE = 1  # the kill file cannot be read
EXIT_LEFT = 3        # processes were left (a line says how many and why)
SHOW_PIDS = 10       # pids named per line; the rest are counted


def _some(pids: list[int]) -> str:
    text = ", ".join(map(str, pids[:SHOW_PIDS]))
    if len(pids) > SHOW_PIDS:
        text += f" and {len(pids) - SHOW_PIDS} more"
    return text


def _clients(n: int) -> str:
    return f"{n} client{'s' if n != 1 else ''}"


def report_left(left: list[Target]) -> None:
    """One line: how many clients were left, which, and why."""
    why: dict[str, list[int]] = {}
    for t in left:
        why.setdefault(t.problem or "did not exit after SIGKILL", []).append(t.pid)
    say(f"{_clients(len(left))} left: "
        + "; ".join(f"{_some(pids)} {reason}" for reason, pids in why.items()))


def stop_datalink(directory: str, timeout: float, verbose: bool) -> None:
    """SIGTERM the datalink process the session announces
    (:func:`lamd.session.datalink_announced`: only if it is still that
    process, and ours): one still waiting for lamboot's universe is not
    attached, so the kill file does not list it."""
    pid = datalink_announced(directory, check_start=True)
    if pid is None:
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if datalink_announced(directory, check_start=True) != pid:  # still it, now pinned
            return
        signal.pidfd_send_signal(fd, signal.SIGTERM)
        if select.select([fd], [], [], timeout)[0]:
            if verbose:
                say(f"datalink process {pid} ended")
            return
        say(f"datalink process {pid} ignored SIGTERM; sending SIGKILL")
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        select.select([fd], [], [], timeout)
    except OSError:
        pass
    finally:
        os.close(fd)


def tkill(killfile: str, *, systemd: bool = False, timeout: float = 2.0,
          pretend: bool = False, verbose: bool = False, kill_wait: float = 2.0,
          keep_socket: bool = False, quiet: bool = False) -> int:
    """End the session of *killfile*; an exit status (EXIT_*).

    *timeout*: how long clients get after SIGHUP (and the daemon, plus 3 s,
    after SIGTERM) before SIGKILL; *kill_wait*: how long after SIGKILL.
    *keep_socket*: the daemon is stopped, but the socket and the directory
    are systemd's (``lamd@.socket``, ``lamd-dl@.socket``) and stay.
    *quiet*: nothing on stderr but problems, as stock tkill (lamboot takes
    any output of it for a failure).
    """
    if not systemd and not pretend:
        stop_datalink(os.path.dirname(killfile) or ".", timeout, verbose)
    try:
        st = os.stat(killfile)
        pids = read_killfile(killfile)
    except FileNotFoundError:
        if verbose:
            say(f"nothing to kill: {killfile} does not exist")
        if not systemd and not pretend:
            remove_session_files(killfile, keep_socket=keep_socket, verbose=verbose)
        return EXIT_OK
    except OSError as e:
        say(f"cannot read kill file {killfile}: {e.strerror}")
        return EXIT_NO_KILLFILE
    recorded = read_clients(os.path.join(os.path.dirname(killfile) or ".", LAMD_CLIENTS))
    daemon_pid, client_pids = (pids[0], pids[1:]) if pids else (None, [])
    reaper = Reaper(owner_uid=st.st_uid, listed_at=st.st_mtime,
                    capacity=descriptor_budget(), verbose=verbose)
    if verbose:
        say(f"{_clients(len(client_pids))} listed; holding up to {reaper.capacity} "
            "pidfds at once")
    left: list[Target] = []
    daemon_left = False
    try:
        daemon = None
        if daemon_pid and not systemd:      # first, so that it keeps its pidfd
            daemon = reaper.verify(daemon_pid, "daemon", None)
        targets: list[Target] = []
        seen: set[int] = set()
        for pid in client_pids:
            if pid in seen or pid == daemon_pid:
                continue
            seen.add(pid)
            t = reaper.verify(pid, "client", recorded.get(pid) or None)
            if t:
                targets.append(t)
        if pretend:
            for t in targets + ([daemon] if daemon else []):
                say(f"{t.role} {t.pid} {t.problem}" if t.problem
                    else f"would signal {t.role} {t.pid}")
            return EXIT_OK
        for t in targets:
            reaper.send(t, signal.SIGCONT)
            reaper.send(t, signal.SIGHUP)
        left = reaper.wait(targets, timeout)
        kill = [t for t in left if not t.problem]
        if len(kill) > SHOW_PIDS:
            say(f"{_clients(len(kill))} ignored SIGHUP; sending SIGKILL")
        for t in kill:
            if len(kill) <= SHOW_PIDS:
                say(f"client {t.pid} ignored SIGHUP; sending SIGKILL")
            reaper.send(t, signal.SIGKILL)
        left = reaper.wait(left, kill_wait)
        if daemon:
            reaper.send(daemon, signal.SIGCONT)
            reaper.send(daemon, signal.SIGTERM)
            if reaper.wait([daemon], timeout + 3.0):
                if not daemon.problem:
                    say(f"daemon {daemon.pid} ignored SIGTERM; sending SIGKILL")
                    reaper.send(daemon, signal.SIGKILL)
                daemon_left = bool(reaper.wait([daemon], kill_wait))
        n = sum(1 for t in targets if t.signals)
        msg = f"signalled {_clients(n)}"
        if daemon and daemon.signals:
            msg += f" and daemon {daemon.pid}"
        if verbose or (not quiet and (n or (daemon and daemon.signals))):
            say(msg)
        if left:
            report_left(left)
        if daemon_left:
            say(f"daemon {daemon.pid} left: "
                f"{daemon.problem or 'did not exit after SIGKILL'}")
    finally:
        reaper.close()
    if left or daemon_left:
        say(f"keeping {killfile} for another try")
        return EXIT_LEFT
    remove_session_files(killfile, keep_socket=systemd or keep_socket, verbose=verbose)
    return EXIT_OK


#: lamd@.service's RestartPreventExitStatus=: after these no restart follows.
NO_RESTART_STATUSES = frozenset({"2", "78"})


def stop_is_final(env: Mapping[str, str]) -> bool:
    """Whether the stop ``ExecStop=``/``ExecStopPost=`` runs for ends the
    session (*env*: what systemd sets for them). ``$SERVICE_RESULT`` is
    ``success`` when the daemon was running when the stop came (``systemctl
    stop``, ``restart``) or exited 0 on its own (``lamhalt``); anything else
    (``exit-code``, ``signal``, ``core-dump``, ``watchdog``, ``oom-kill``,
    ``timeout``, ...) is a failure that ``Restart=on-failure`` restarts,
    except an exit status ``RestartPreventExitStatus=`` lists. Unset (run
    by hand, or an older systemd): final."""
    result = env.get("SERVICE_RESULT", "")
    if result in ("", "success"):
        return True
    return env.get("EXIT_CODE") == "exited" and env.get("EXIT_STATUS") in NO_RESTART_STATUSES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Kill a LAM session: signal every client in its kill file "
                    "(only if still the attached process), then remove its files.",
        epilog="exit status: 0 every listed process that was still the attached one is "
               "gone (also: nothing to kill); 1 the kill file cannot be read; 2 usage; "
               "3 processes were left (a line says how many and why; the kill file is "
               "kept).")
    p.add_argument("-f", dest="killfile", metavar="FILE",
                   help="kill file to use (default: the session's lam-killfile)")
    p.add_argument("-sessionprefix", "--session-prefix", dest="prefix", metavar="DIR")
    p.add_argument("-sessionsuffix", "--session-suffix", dest="suffix", metavar="SUFFIX")
    p.add_argument("-N", "--pretend", action="store_true",
                   help="only say what would be signalled")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("-d", "--debug", dest="verbose", action="store_true")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SEC",
                   help="how long clients get after SIGHUP before SIGKILL (default 2)")
    p.add_argument("--systemd", action="store_true",
                   help="ExecStop= mode: leave the daemon, the socket and the "
                        "directory to systemd")
    p.add_argument("--keep-socket", action="store_true",
                   help="stop the daemon too, but leave the socket and the directory "
                        "if the session's lamd-datalink-socket says they are systemd's "
                        "(what LAM's prefix tree's tkill runs, for hboot -t and lamwipe)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.killfile:
        killfile = args.killfile
    else:
        killfile = Session.for_user(prefix=args.prefix, suffix=args.suffix).killfile_path
    if args.systemd:
        # a daemon that died while its socket's path was aside for lamhalt
        # (lamd.session.halting): back where clients, and systemd, find it
        from ..session import halting
        sock = os.path.join(os.path.dirname(killfile) or ".", LAM_SOCKET)
        if halting.restore(sock):
            say(f"{sock}: put back from {halting.ASIDE}")
    if args.systemd and not stop_is_final(os.environ):
        say(f"the daemon failed (SERVICE_RESULT={os.environ.get('SERVICE_RESULT')}, "
            f"EXIT_CODE={os.environ.get('EXIT_CODE', '')}, "
            f"EXIT_STATUS={os.environ.get('EXIT_STATUS', '')}) and systemd restarts it: "
            "leaving its clients and the kill file alone")
        return EXIT_OK
    nofile = raise_nofile_limit()   # one pidfd per client held at once, if allowed
    if args.verbose:
        say(f"kill file {killfile}; RLIMIT_NOFILE {nofile}")
    try:
        # only a session whose datalink socket is there is systemd's
        keep = args.keep_socket and os.path.exists(
            os.path.join(os.path.dirname(killfile) or ".", LAMD_DATALINK_SOCKET))
        return tkill(killfile, systemd=args.systemd, timeout=max(0.0, args.timeout),
                     pretend=args.pretend, verbose=args.verbose, keep_socket=keep,
                     quiet=args.keep_socket)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
