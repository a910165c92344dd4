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

Two modes:

* by hand (default): also stops the daemon (SIGTERM, then SIGKILL), removes
  a socket nobody listens on and the empty session directory;
* ``--systemd`` (``ExecStop=``/``ExecStopPost=`` of ``lamd@.service``):
  leaves the daemon to systemd and the socket and directory to
  ``lamd@.socket``, which keeps listening.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from ..session.kkill import proc_starttime, read_clients, read_killfile
from ..session import LAM_KILLFILE, LAM_SOCKET, LAMD_CLIENTS, Session

PROG = "lamd-tkill"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ /proc

def proc_stat(pid: int) -> tuple[int, int] | None:
    """(start time in clock ticks, real uid) of *pid*, or None if gone."""
    start = proc_starttime(pid)
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    return None if start is None else (start, uid)


def boot_time() -> float:
    """Wall-clock time of boot, from CLOCK_BOOTTIME (no /proc/stat needed)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def start_wallclock(ticks: int) -> float:
    return boot_time() + ticks / CLK_TCK


# ------------------------------------------------------------------ files

# ------------------------------------------------------------------ targets

@dataclass
class Target:
    """One process we verified and hold a pidfd (or, without pidfds, a pid) for."""

    pid: int
    starttime: int
    role: str                       # "client" or "daemon"
    pidfd: int | None = None
    dead: bool = False
    signals: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        if self.dead:
            return False
        if self.pidfd is not None:
            r, _, _ = select.select([self.pidfd], [], [], 0)
            self.dead = bool(r)
        else:
            cur = proc_stat(self.pid)
            self.dead = cur is None or cur[0] != self.starttime
        return not self.dead

    def send(self, sig: int) -> bool:
        """Signal this exact process; False if it is gone or not ours."""
        if not self.alive():
            return False
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                # No pidfds (old kernel): re-check the start time right before.
                cur = proc_stat(self.pid)
                if cur is None or cur[0] != self.starttime:
                    self.dead = True
                    return False
                os.kill(self.pid, sig)
        except ProcessLookupError:
            self.dead = True
            return False
        except PermissionError:
            say(f"pid {self.pid}: permission denied, not signalling it")
            self.dead = True
            return False
        self.signals.append(signal.Signals(sig).name)
        return True

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def open_target(pid: int, role: str, *, expected_start: int | None, listed_at: float,
                owner_uid: int, verbose: bool = False) -> Target | None:
    """Verify *pid* is still the process the kill file listed, and pin it.

    *expected_start* is its start time from ``lamd-clients`` (None: unknown,
    then it must have started before *listed_at*, the kill file's mtime).
    """
    if pid <= 1 or pid == os.getpid():
        say(f"ignoring pid {pid} in the kill file")
        return None
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        if verbose:
            say(f"{role} {pid}: already gone")
        return None
    except (OSError, AttributeError) as e:
        if getattr(e, "errno", errno.ENOSYS) not in (errno.ENOSYS, errno.EPERM):
            raise
        pidfd = None
    # Checked after pidfd_open: if the pid was reused in between, we read the
    # new process's start time and refuse; if it matches, the pidfd is it.
    cur = proc_stat(pid)
    if cur is None:
        if pidfd is not None:
            os.close(pidfd)
        if verbose:
            say(f"{role} {pid}: already gone")
        return None
    start, uid = cur
    reason = None
    if uid != owner_uid:
        reason = f"belongs to uid {uid}, not to the session owner {owner_uid}"
    elif expected_start:
        if start != expected_start:
            reason = (f"start time {start} differs from {expected_start} recorded at "
                      "attach: the pid was reused")
    else:
        # Existed when listed? Allow for the tick granularity of /proc.
        if start_wallclock(start) > listed_at + 1.0 / CLK_TCK:
            reason = "started after the kill file was written: the pid was reused"
    if reason:
        if pidfd is not None:
            os.close(pidfd)
        say(f"not signalling {role} pid {pid}: {reason}")
        return None
    return Target(pid, start, role, pidfd)


def wait_all(targets: list[Target], timeout: float) -> list[Target]:
    """Wait up to *timeout* s for targets to exit; the ones still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [t for t in targets if t.alive()]
        left = deadline - time.monotonic()
        if not alive or left <= 0:
            return alive
        fds = [t.pidfd for t in alive if t.pidfd is not None]
        if fds and len(fds) == len(alive) and len(fds) < 1000:
            select.select(fds, [], [], min(left, 0.5))
        else:
            time.sleep(min(left, 0.05))


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
    try:
        for name in os.listdir(directory):   # spares and leftovers of atomic rewrites
            if name.startswith((LAM_KILLFILE + ".", LAMD_CLIENTS + ".")):
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

def tkill(killfile: str, *, systemd: bool = False, timeout: float = 2.0,
          pretend: bool = False, verbose: bool = False) -> int:
    try:
        st = os.stat(killfile)
        pids = read_killfile(killfile)
    except FileNotFoundError:
        if verbose:
            say(f"nothing to kill: {killfile} does not exist")
        if not systemd and not pretend:
            remove_session_files(killfile, keep_socket=False, verbose=verbose)
        return 0
    except OSError as e:
        say(f"cannot read kill file {killfile}: {e.strerror}")
        return 1
    listed_at = st.st_mtime
    recorded = read_clients(os.path.join(os.path.dirname(killfile) or ".", LAMD_CLIENTS))
    daemon_pid, client_pids = (pids[0], pids[1:]) if pids else (None, [])
    targets: list[Target] = []
    seen: set[int] = set()
    for pid in client_pids:
        if pid in seen or pid == daemon_pid:
            continue
        seen.add(pid)
        t = open_target(pid, "client", expected_start=recorded.get(pid) or None,
                        listed_at=listed_at, owner_uid=st.st_uid, verbose=verbose)
        if t:
            targets.append(t)
    daemon = None
    if daemon_pid and not systemd:
        daemon = open_target(daemon_pid, "daemon", expected_start=None,
                             listed_at=listed_at, owner_uid=st.st_uid, verbose=verbose)
    if pretend:
        for t in targets + ([daemon] if daemon else []):
            say(f"would signal {t.role} {t.pid}")
            t.close()
        return 0
    try:
        for t in targets:
            t.send(signal.SIGCONT)
            t.send(signal.SIGHUP)
        left = wait_all(targets, timeout)
        for t in left:
            say(f"client {t.pid} ignored SIGHUP; sending SIGKILL")
            t.send(signal.SIGKILL)
        left = wait_all(left, 2.0)
        if daemon:
            daemon.send(signal.SIGCONT)
            daemon.send(signal.SIGTERM)
            if wait_all([daemon], timeout + 3.0):
                say(f"daemon {daemon.pid} ignored SIGTERM; sending SIGKILL")
                daemon.send(signal.SIGKILL)
                wait_all([daemon], 2.0)
        n = sum(1 for t in targets if t.signals)
        msg = f"signalled {n} client{'s' if n != 1 else ''}"
        if daemon and daemon.signals:
            msg += f" and daemon {daemon.pid}"
        if left:
            msg += f"; {len(left)} did not exit"
        if n or verbose or (daemon and daemon.signals):
            say(msg)
    finally:
        for t in targets + ([daemon] if daemon else []):
            t.close()
    remove_session_files(killfile, keep_socket=systemd, verbose=verbose)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Kill a LAM session: signal every client in its kill file "
                    "(only if still the attached process), then remove its files.")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.killfile:
        killfile = args.killfile
    else:
        killfile = Session.for_user(prefix=args.prefix, suffix=args.suffix).killfile_path
    if args.verbose:
        say(f"kill file {killfile}")
    try:
        return tkill(killfile, systemd=args.systemd, timeout=max(0.0, args.timeout),
                     pretend=args.pretend, verbose=args.verbose)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
