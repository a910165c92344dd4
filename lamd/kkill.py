"""The kill file (LAM's ``otb/sys/kernel/kkill.c``).

``lam-killfile`` lists the kernel's pid on the first line, then the pid of
every attached client (internal processes and PRLAMHALT clients excluded),
one decimal per line: stock ``tkill`` reads it with ``fscanf("%d")``. Where
the C kernel rewrites it in place, we write a temporary file and rename it
over the old one, so a reader (or a crash) never sees half a file.

Beside it, ``lamd-clients`` carries ``PID STARTTIME`` for each client, the
start time being field 22 of ``/proc/PID/stat``: our tkill signals a pid only
while that pid still has the start time it had when it attached.
"""

from __future__ import annotations

import os
from typing import Iterable


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after it
    rest = data[data.rindex(b")") + 2:].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def write_atomic(path: str, text: str) -> None:
    """Replace *path* with *text* atomically (temp file in the same dir + rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        data = text.encode()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def kkillrewrite(killfile: str, clients_file: str, kernel_pid: int,
                 entries: Iterable[tuple[int, int | None]]) -> None:
    """``kkillrewrite``: both files from the current process table."""
    entries = list(entries)
    write_atomic(killfile, "".join([f"{kernel_pid}\n"] + [f"{pid}\n" for pid, _ in entries]))
    write_atomic(clients_file, "".join(f"{pid} {st if st is not None else 0}\n"
                                       for pid, st in entries))


def read_killfile(path: str) -> list[int]:
    """The pids in a kill file, the kernel's first (as ``fscanf("%d")`` reads it)."""
    pids = []
    with open(path) as f:
        for tok in f.read().split():
            try:
                pids.append(int(tok))
            except ValueError:
                break
    return pids


def read_clients(path: str) -> dict[int, int]:
    """``lamd-clients``: pid -> start time."""
    out: dict[int, int] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                    out[int(parts[0])] = int(parts[1])
    except FileNotFoundError:
        pass
    return out
