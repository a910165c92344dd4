"""``ExecReload=`` of ``lamd@.service``: re-execute the daemon in place and
wait until the new image serves (``python3 -m lamd.service reload PID``).

systemd 252 (Debian 12) has no ``Type=notify-reload``: a reload ends when
the ``ExecReload=`` process exits. ``kill -USR1 $MAINPID`` would end it at
once, before the daemon has even reached its safe point, and
``systemctl reload`` would return while the old image still pauses its
clients. This helper sends :data:`~lamd.kernelio.handover.REEXEC_SIGNAL`
through a pidfd and waits for the outcome the daemon writes in
:data:`RELOAD_STATUS` (``lamd-reload`` in the session directory): under
systemd the daemon rewrites that file whenever it is ready (``PID
ATTEMPTS started`` at start, ``PID ATTEMPTS ok`` once a new image serves,
``PID ATTEMPTS given-up`` when it serves on in the old one), so any change
after the signal is this reload's outcome.

Exit status: 0 the new image serves; 1 the daemon gave the re-exec up (it
serves on, its log says why), died, or said nothing within the timeout; 2
usage.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import time

from ..session import LAMD_RELOAD, Session

RELOAD_STATUS = LAMD_RELOAD
#: Below the unit's TimeoutStartSec= (30 s, which bounds ExecReload= too); the
#: daemon gives a re-exec up after 5 s without a safe point
#: (``handover.DRAIN_TIMEOUT``); the new interpreter then needs its start.
WAIT_TIMEOUT = 25.0


def status_path(directory: str) -> str:
    return os.path.join(directory, RELOAD_STATUS)


def write_status(directory: str, attempts: int, result: str) -> None:
    """Record this daemon's reload outcome (atomically: rename)."""
    path = status_path(directory)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {attempts} {result}\n")
    os.replace(tmp, path)


def read_status(directory: str) -> str:
    """The status line, or "" if there is none."""
    try:
        with open(status_path(directory)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def reload(pid: int, directory: str, timeout: float = WAIT_TIMEOUT) -> int:
    """Re-exec daemon *pid* and wait for its outcome; an exit status."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        print(f"lamd: reload: no daemon {pid}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        before = read_status(directory)
        signal.pidfd_send_signal(pidfd, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while time.monotonic() < deadline:
            if poller.poll(50):
                print(f"lamd: reload: daemon {pid} exited during the re-exec", file=sys.stderr)
                return 1
            now = read_status(directory)
            if now != before and now:
                fields = now.split()
                if len(fields) == 3 and fields[0] == str(pid) and fields[2] == "ok":
                    print(f"lamd: reload: daemon {pid} re-executed (reload {fields[1]})",
                          file=sys.stderr)
                    return 0
                if len(fields) == 3 and fields[2] == "given-up":
                    print(f"lamd: reload: daemon {pid} gave the re-exec up and serves on "
                          "(its log says why)", file=sys.stderr)
                    return 1
        print(f"lamd: reload: daemon {pid} did not report within {timeout:.0f} s",
              file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno == errno.ESRCH:
            print(f"lamd: reload: daemon {pid} is gone", file=sys.stderr)
        else:
            print(f"lamd: reload: {e.strerror}", file=sys.stderr)
        return 1
    finally:
        os.close(pidfd)


def main(argv: list[str]) -> int:
    """``python3 -m lamd.service reload PID``."""
    if len(argv) != 1 or not argv[0].isdigit() or int(argv[0]) <= 1:
        print("usage: python3 -m lamd.service reload PID", file=sys.stderr)
        return 2
    return reload(int(argv[0]), Session.for_user().directory)
