"""The kill file (LAM's ``otb/sys/kernel/kkill.c``).

``lam-killfile`` lists the kernel's pid on the first line, then the pid of
every attached client (internal processes and PRLAMHALT clients excluded),
one decimal per line: stock ``tkill`` reads it with ``fscanf("%d")``. As in
LAM, a new client is appended (one ``write``, before its attach is answered);
where the C kernel then rewrites the file in place on every removal, we
write a temporary file and swap it in, so a reader (or a crash) never sees
half a file.

Beside it, ``lamd-clients`` carries ``PID STARTTIME`` for each client, the
start time being field 22 of ``/proc/PID/stat``: our tkill signals a pid only
while that pid still has the start time it had when it attached.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Callable, Iterable

from .. import lazylog

log = lazylog.getLogger("lamd.session.kkill")


def read_proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from ``/proc/PID/stat``; None if no such process.

    Any other failure (EMFILE, ENFILE, EACCES, ...) is raised: not being able
    to look is not the same as the process being gone.
    """
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        data = os.read(fd, 4096)
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)
    # the command name (field 2) may hold spaces and parentheses: split after it
    end = data.rfind(b")")
    rest = data[end + 2:].split() if end >= 0 else []
    try:
        return rest[0].decode("ascii"), int(rest[19])
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None."""
    try:
        st = read_proc_stat(pid)
    except OSError:
        return None
    return None if st is None else st[1]


_libc = None
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(src: str, dst: str) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two paths atomically; False if unsupported.

    Replacing an existing file with rename(2) makes ext4 flush the new file's
    data first (auto_da_alloc), about 170 us here; swapping costs 28 us, and
    the path always names a complete file either way.
    """
    global _libc
    try:
        if _libc is None:
            import ctypes
            _libc = ctypes.CDLL(None, use_errno=True)
        if _libc.renameat2(_AT_FDCWD, src.encode(), _AT_FDCWD, dst.encode(),
                           _RENAME_EXCHANGE) == 0:
            return True
    except (OSError, AttributeError):
        pass
    return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _SwapFile:
    """A file rewritten atomically by swapping in a spare copy.

    Two files are kept open: the live one at *path* and a spare beside it
    (``path + ".spare"``). A rewrite fills the spare and exchanges the two
    names with ``renameat2(RENAME_EXCHANGE)``: no file is created or removed,
    and *path* always names a complete file. Appends go to the live file with
    one ``write(2)`` each, which a crash cannot split.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.spare_path = path + ".spare"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self.live = os.open(path, flags, 0o600)
        self.spare = os.open(self.spare_path, flags | os.O_TRUNC, 0o600)
        # a file just made (empty): its first contents go straight in, with
        # no exchange; the daemon's first kill file is written before its
        # first reply, and renameat2 costs an import of ctypes (issue 13)
        self.fresh = os.fstat(self.live).st_size == 0

    def rewrite(self, data: bytes) -> None:
        if self.fresh:
            self.fresh = False
            _write_all(self.live, data)
            return
        os.ftruncate(self.spare, 0)
        _write_all(self.spare, data)
        if _exchange(self.spare_path, self.path):
            self.live, self.spare = self.spare, self.live
        else:  # no RENAME_EXCHANGE here: a plain atomic rename, then a new spare
            os.rename(self.spare_path, self.path)
            os.close(self.live)
            self.live = self.spare
            self.spare = os.open(self.spare_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                                 | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def append(self, data: bytes) -> None:
        self.fresh = False
        os.write(self.live, data)

    def close(self, *, remove_spare: bool = True) -> None:
        for fd in (self.live, self.spare):
            try:
                os.close(fd)
            except OSError:
                pass
        if remove_spare:
            try:
                os.unlink(self.spare_path)
            except OSError:
                pass


class KillFile:
    """``kkillopen``/``kkillwrite``/``kkillrewrite``: the kill file and its sidecar.

    A newly attached client is appended with one ``write(2)`` before it hears
    back from its attach, as LAM's ``kkillwrite`` does. When the clients that
    leave are the last ones listed (a short-lived tool: attach, work, detach)
    the file is cut back with one ``ftruncate(2)``; any other removal rewrites
    it whole, atomically (:class:`_SwapFile`). Neither a crash nor a reader
    ever sees a torn file. The sidecar ``lamd-clients`` is only rewritten
    when stale lines outnumber live ones: stale lines there are harmless,
    since tkill only consults it for pids the kill file lists.
    """

    def __init__(self, killfile: str, clients_file: str, kernel_pid: int) -> None:
        self.killfile = killfile
        self.clients_file = clients_file
        self.kernel_pid = kernel_pid
        self._kill: _SwapFile | None = None
        self._clients: _SwapFile | None = None
        self._clients_lines = 0
        self._lines: list[tuple[int, int]] = []  # (pid, line length) after the kernel's
        self._size = 0  # bytes in the live kill file

    def rewrite(self, entries: Iterable[tuple[int, int | None]]) -> None:
        """``kkillrewrite``: the kill file from the current process table."""
        entries = list(entries)
        if self._kill is None:
            self._kill = _SwapFile(self.killfile)
            self._clients = _SwapFile(self.clients_file)
            self._clients_lines = -1
        head = f"{self.kernel_pid}\n"
        lines = [f"{pid}\n" for pid, _ in entries]
        self._kill.rewrite((head + "".join(lines)).encode())
        self._lines = [(pid, len(line)) for (pid, _), line in zip(entries, lines)]
        self._size = len(head) + sum(n for _, n in self._lines)
        if self._clients_lines < 0 or self._clients_lines > 2 * len(entries) + 64:
            assert self._clients is not None
            self._clients.rewrite("".join(f"{pid} {st if st is not None else 0}\n"
                                          for pid, st in entries).encode())
            self._clients_lines = len(entries)

    def append(self, entries: Iterable[tuple[int, int | None]]) -> None:
        """``kkillwrite``: list newly attached clients (one write)."""
        entries = list(entries)
        if not entries:
            return
        if self._kill is None or self._clients is None:
            raise OSError("kill file not open: rewrite() first")
        lines = [f"{pid}\n" for pid, _ in entries]
        data = "".join(lines).encode()
        self._kill.append(data)
        self._lines += [(pid, len(line)) for (pid, _), line in zip(entries, lines)]
        self._size += len(data)

    def append_pid(self, pid: int) -> None:
        """``kkillwrite`` of one client: :meth:`append` without the lists."""
        if self._kill is None:
            raise OSError("kill file not open: rewrite() first")
        line = b"%d\n" % pid
        os.write(self._kill.live, line)
        self._lines.append((pid, len(line)))
        self._size += len(line)

    def append_clients(self, entries: Iterable[tuple[int, int | None]]) -> None:
        """Record (pid, start time) of newly attached clients in the sidecar."""
        entries = list(entries)
        if not entries or self._clients is None:
            return
        self._clients.append("".join(f"{pid} {st if st is not None else 0}\n"
                                     for pid, st in entries).encode())
        self._clients_lines += len(entries)

    def remove(self, pids: list[int],
               entries: Callable[[], Iterable[tuple[int, int | None]]]) -> bool:
        """Clients *pids* left: cut them off the end (True), or rewrite the
        file from *entries*() (False)."""
        k = len(pids)
        lines = self._lines
        if k == 1 and self._kill is not None and lines and lines[-1][0] == pids[0]:
            # the common case: the last client listed left (a tool that attached,
            # worked and detached)
            n = lines[-1][1]
            os.ftruncate(self._kill.live, self._size - n)
            lines.pop()
            self._size -= n
            return True
        if (self._kill is not None and 0 < k <= len(self._lines)
                and sorted(pid for pid, _ in self._lines[-k:]) == sorted(pids)):
            cut = sum(n for _, n in self._lines[-k:])
            os.ftruncate(self._kill.live, self._size - cut)  # atomic, and a crash-safe cut
            del self._lines[-k:]
            self._size -= cut
            return True
        self.rewrite(entries())
        return False

    def close(self) -> None:
        for f in (self._kill, self._clients):
            if f is not None:
                f.close()
        self._kill = self._clients = None


class KillFileWriter:
    """Carries out the kernel's kill-file actions on a :class:`KillFile`.

    The kernel says what changes (``KillAppend``, ``KillRemove``,
    ``KillRewrite``); this decides how the file follows, with no socket in
    sight, so the I/O layer and the property tests share one code path:

    * :meth:`append` (``KillAppend``): one write, at once, so the client is
      listed before its attach reply goes out; pending changes are carried
      out first, and if that rewrote the file from the table (which already
      lists the newcomer) nothing is appended;
    * :meth:`remove` (``KillRemove``) and :meth:`rewrite_due`
      (``KillRewrite``): noted, and carried out by :meth:`flush` at the end
      of the turn, the leavers cut off the tail when they are the last
      listed, any other change by a complete rewrite from ``entries()``.

    *kill* None (no kill file) makes every call a no-op. A failure is logged
    and the daemon carries on (``flush(strict=True)`` raises instead, for
    ``kkillopen`` at start); a failed append forces a rewrite next flush.
    """

    def __init__(self, kill: KillFile | None,
                 entries: Callable[[], Iterable[tuple[int, int | None]]]) -> None:
        self.file = kill
        self.entries = entries
        self.dirty = True  # rewrite at the next flush
        self.removed: list[int] = []  # listed pids that left since the last flush

    @property
    def due(self) -> bool:
        """Is a flush needed to bring the file up to date?"""
        return self.dirty or bool(self.removed)

    def rewrite_due(self) -> None:
        """``KillRewrite``: a priority moved a client in or out of the file."""
        self.dirty = True

    def remove(self, pid: int) -> None:
        """``KillRemove``: listed client *pid* left (unlisted at the next flush)."""
        self.removed.append(pid)

    def append(self, pid: int) -> None:
        """``KillAppend`` (``kkillwrite``): list a new client now."""
        if self.file is None:
            return
        removed = self.removed
        if pid in removed and not self.dirty:
            # a client of this pid left earlier in this turn and its line is
            # still there: it lists the newcomer (the same live process, pinned
            # by its pidfd), so neither the cut nor the append is written
            removed.remove(pid)
            return
        if self.due and self.flush():
            return  # rewritten from the table, which already lists it
        # (leavers cut off the tail are not the newcomer: it still needs its line)
        try:
            self.file.append_pid(pid)
        except OSError as e:
            log.error("cannot append to kill file %s: %s", self.file.killfile,
                      e.strerror or e, extra={"LAM_ERROR": e.errno})
            self.dirty = True

    def flush(self, *, strict: bool = False) -> bool:
        """``kkillrewrite``: bring the file up to date with the table.

        True if the file was written afresh from ``entries()``; False if the
        leavers were only cut off its tail (or writing failed).
        """
        removed, self.removed = self.removed, []
        dirty, self.dirty = self.dirty, False
        if self.file is None:
            return False
        try:
            if dirty or not removed:
                self.file.rewrite(self.entries())
                return True
            return not self.file.remove(removed, self.entries)
        except OSError as e:
            if strict:
                raise
            log.error("cannot write kill file %s: %s", self.file.killfile, e.strerror,
                      extra={"LAM_ERROR": e.errno})
            return False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def read_killfile(path: str) -> list[int]:
    """Pids as LAM's tkill reads them: repeated ``fscanf("%d")``, the kernel's first."""
    pids: list[int] = []
    with open(path, "rb") as f:
        for tok in f.read().split():
            try:
                pids.append(int(tok))
            except ValueError:
                break
    return pids


def read_clients(path: str) -> dict[int, int]:
    """``lamd-clients``: pid -> start time (0 = unknown); the last line for a pid wins."""
    out: dict[int, int] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                    out[int(parts[0])] = int(parts[1])
    except FileNotFoundError:
        pass
    return out
