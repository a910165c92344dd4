"""Unit tests for lamd.service: socket activation, sd_notify, journal, proctitle."""

from __future__ import annotations

import io
import json
import logging
import os
import pwd
import socket
import subprocess
import sys
import textwrap

import pytest

from lamd import service
from lamd.service import ServiceError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child that adopts its LISTEN_FDS and reports what it got.
CHILD = textwrap.dedent("""
    import sys
    from lamd.service import adopt_listen_socket, ServiceError
    try:
        s = adopt_listen_socket()
    except ServiceError as e:
        print("ERR", e.exit_code, e)
        sys.exit(0)
    if s is None:
        print("NONE")
    else:
        import socket  # the listener is the C type (_socket.socket): ints, not enums
        print("OK", socket.AddressFamily(s.family).name, socket.SocketKind(s.type).name,
              s.fileno())
""")


def run_activated(fds: list[int], pid_ok: bool = True, nfds: int | None = None) -> str:
    """Run CHILD with *fds* passed as 3, 4, ... and LISTEN_FDS/LISTEN_PID set."""
    n = len(fds) if nfds is None else nfds
    # Move the fds to 3.. in the child via sh redirections, set LISTEN_PID=$$
    # (exec keeps the pid), then exec python.
    redirs = " ".join(f"{3 + i}<&{fd}" for i, fd in enumerate(fds))
    pid = "$$" if pid_ok else "1"
    script = (f"export LISTEN_FDS={n} LISTEN_PID={pid}; "
              f"exec {redirs} {sys.executable} -c \"$CHILD\"")
    env = dict(os.environ, CHILD=CHILD, PYTHONPATH=REPO)
    env.pop("INVOCATION_ID", None)
    out = subprocess.run(["/bin/bash", "-c", script], env=env, pass_fds=fds,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def unix_listener(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "sock"))
    s.listen(5)
    yield s
    s.close()


def test_no_listen_fds_means_by_hand(monkeypatch):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_PID", raising=False)
    assert service.adopt_listen_socket() is None


def test_adopts_listening_unix_stream(unix_listener):
    assert run_activated([unix_listener.fileno()]) == "OK AF_UNIX SOCK_STREAM 3"


def test_listen_pid_of_another_process_is_ignored(unix_listener):
    assert run_activated([unix_listener.fileno()], pid_ok=False) == "NONE"


def test_refuses_tcp_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        out = run_activated([s.fileno()])
    finally:
        s.close()
    assert out.startswith("ERR 78 ") and "AF_INET" in out and "not AF_UNIX" in out


def test_refuses_datagram_socket(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp_path / "dg"))
    try:
        out = run_activated([s.fileno()])
    finally:
        s.close()
    assert out.startswith("ERR 78 ") and "SOCK_DGRAM" in out


def test_refuses_non_listening_socket(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "nl"))
    try:
        out = run_activated([s.fileno()])
    finally:
        s.close()
    assert out.startswith("ERR 78 ") and "not listening" in out


def test_refuses_regular_file(tmp_path):
    p = tmp_path / "f"
    p.write_text("x")
    fd = os.open(p, os.O_RDONLY)
    try:
        out = run_activated([fd])
    finally:
        os.close(fd)
    assert out.startswith("ERR 78 ") and "regular file, not a socket" in out


def test_refuses_several_sockets(unix_listener, tmp_path):
    s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s2.bind(str(tmp_path / "two"))
    s2.listen(1)
    try:
        out = run_activated([unix_listener.fileno(), s2.fileno()])
    finally:
        s2.close()
    assert out.startswith("ERR 78 ") and "expected exactly 1 socket" in out and "got 2" in out


def test_check_listen_socket_in_process(unix_listener):
    fd = os.dup(unix_listener.fileno())
    s = service.check_listen_socket(fd)
    assert s.family == socket.AF_UNIX
    s.close()


# ---------------------------------------------------------------- logging

def make_record(msg="hello", level=logging.INFO, **extra):
    logger = logging.getLogger("lamd.test")
    rec = logger.makeRecord("lamd.test", level, __file__, 42, msg, (), None, "fn", extra)
    return rec


def test_journal_handler_carries_structured_fields():
    sent = []
    h = service.LamJournalHandler(sender=lambda msg, **kw: sent.append((msg, kw)))
    h.setFormatter(logging.Formatter("%(message)s"))
    h.handle(make_record("served", LAM_PID=1234, LAM_REQUEST="KDOOM", LAM_ERROR=None,
                         LAM_LENGTH=80, lower_case="x", _TRUSTED="no"))
    assert len(sent) == 1
    msg, kw = sent[0]
    assert msg == "served"
    assert kw["LAM_PID"] == "1234"
    assert kw["LAM_REQUEST"] == "KDOOM"
    assert kw["LAM_LENGTH"] == "80"
    assert "LAM_ERROR" not in kw           # None is dropped
    assert "lower_case" not in kw and "_TRUSTED" not in kw and "msg" not in kw
    assert kw["PRIORITY"] == "6"
    assert kw["SYSLOG_IDENTIFIER"] == "lamd"
    assert kw["CODE_LINE"] == 42


def test_journal_handler_through_real_journal_send(monkeypatch):
    """The real systemd.journal.send formats the fields (CODE_LINE must be an int)."""
    from systemd import journal  # python3-systemd: a Depends, installed by setup.sh
    lines = []
    monkeypatch.setattr(journal, "sendv", lambda *args: lines.extend(args))
    h = service.LamJournalHandler(sender=journal.send)
    h.setFormatter(logging.Formatter("%(message)s"))
    h.handle(make_record("attach", LAM_PID=99, LAM_UID=1001, LAM_REQUEST="KATTACH"))
    assert "MESSAGE=attach" in lines and "CODE_LINE=42" in lines
    assert "LAM_PID=99" in lines and "LAM_UID=1001" in lines and "LAM_REQUEST=KATTACH" in lines
    assert "SYSLOG_IDENTIFIER=lamd" in lines and "PRIORITY=6" in lines


def test_journal_send_writes_what_systemd_journal_send_writes(monkeypatch):
    """The handler's default sender (systemd._journal.sendv without
    systemd.journal: issue 13, the first reply waits for its import) gives
    sendv the same lines as python3-systemd's journal.send, bytes included."""
    from systemd import _journal, journal
    from lamd.service.journal import journal_send
    got: list = []
    monkeypatch.setattr(_journal, "sendv", lambda *args: got.append(list(args)))
    monkeypatch.setattr(journal, "sendv", lambda *args: got.append(list(args)))
    fields = dict(PRIORITY="6", SYSLOG_IDENTIFIER="lamd", LOGGER="lamd.kernel",
                  CODE_FILE="/x.py", CODE_LINE=42, CODE_FUNC="f", LAM_PID="7", RAW=b"\xde\xad")
    journal_send("hello \u00e9", **fields)
    journal.send("hello \u00e9", **fields)
    assert len(got) == 2 and sorted(map(repr, got[0])) == sorted(map(repr, got[1]))


def test_journal_logging_does_not_import_systemd_journal():
    code = ("import sys; from lamd.service import setup_logging; setup_logging('info', journal=True); "
            "import logging; h = logging.getLogger().handlers[0]; "
            "print(type(h).__name__, 'systemd.journal' in sys.modules)")
    cp = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; sys.path[:0] = [%r, "
                         "'/usr/lib/python3/dist-packages']; " % REPO + code],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0 and cp.stdout.split() == ["LamJournalHandler", "False"], \
        cp.stdout + cp.stderr


@pytest.mark.parametrize("level,prio", [(logging.DEBUG, 7), (logging.INFO, 6),
                                        (logging.WARNING, 4), (logging.ERROR, 3),
                                        (logging.CRITICAL, 2)])
def test_journal_priorities(level, prio):
    assert service.LamJournalHandler.map_priority(level) == prio


def test_extra_cannot_override_reserved_fields():
    sent = []
    h = service.LamJournalHandler(sender=lambda msg, **kw: sent.append(kw))
    h.handle(make_record("x", SYSLOG_IDENTIFIER="evil", PRIORITY="0"))
    assert sent[0]["SYSLOG_IDENTIFIER"] == "lamd" and sent[0]["PRIORITY"] == "6"


def test_stderr_logging_by_hand(monkeypatch):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        service.setup_logging("debug")
        assert root.level == logging.DEBUG
        logging.getLogger("lamd.kernel").info("client attached", extra={"LAM_PID": 77})
        line = buf.getvalue()
        assert f"lamd[{os.getpid()}]: INFO client attached [LAM_PID=77]" in line
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_journal_chosen_under_systemd(monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        service.setup_logging("warning")
        assert isinstance(root.handlers[0], service.LamJournalHandler)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_parse_level(monkeypatch):
    assert service.parse_level("DEBUG") == logging.DEBUG
    assert service.parse_level("warn") == logging.WARNING
    assert service.parse_level("15") == 15
    monkeypatch.setenv("LAMD_LOG_LEVEL", "error")
    assert service.parse_level(None) == logging.ERROR
    with pytest.raises(ServiceError, match="unknown log level"):
        service.parse_level("loud")


# The real handler with python3-systemd's real journal.send, in a private
# mount namespace whose /run is a fresh tmpfs: first with no journal socket
# (journald gone), then with a datagram socket bound where sd_journal_sendv
# writes (/run/systemd/journal/socket), standing in for journald.
JOURNAL_CHILD = textwrap.dedent("""
    import json, logging, socket, sys
    from lamd.service import LamJournalHandler

    class Recording(LamJournalHandler):
        failures = []
        def handleError(self, record):
            self.failures.append((record.getMessage(), repr(sys.exc_info()[1])))

    h = Recording()
    h.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("lamd.kernel")
    log.propagate = False
    log.addHandler(h)
    log.setLevel(logging.DEBUG)
    log.warning("no journal here")
    print("FAILURES", json.dumps(h.failures), flush=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("/run/systemd/journal/socket")
    s.settimeout(5)
    log.warning("client attached", extra={"LAM_PID": 4321, "LAM_REQUEST": "KATTACH",
                                          "LAM_ERROR": None})
    sys.stdout.write("DATAGRAM " + s.recv(65536).hex() + "\\n")
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
def test_real_journal_send_reaches_journald_socket(tmp_path):
    """What the real handler writes to journald's socket, field by field; and
    with no journald at all a record is dropped (libsystemd's sd_journal_sendv
    ignores ENOENT), neither raised nor reported as a logging error."""
    script = tmp_path / "child.py"
    script.write_text(JOURNAL_CHILD)
    cp = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
         'mount -t tmpfs -o mode=0755 lamd-test /run && mkdir -p /run/systemd/journal'
         ' && exec "$0" "$1"', sys.executable, str(script)],
        capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    out = dict(line.split(" ", 1) for line in cp.stdout.splitlines())
    assert json.loads(out["FAILURES"]) == []
    datagram = bytes.fromhex(out["DATAGRAM"]).decode()
    assert datagram.endswith("\n")
    line = 1 + JOURNAL_CHILD.splitlines().index(
        'log.warning("client attached", extra={"LAM_PID": 4321, "LAM_REQUEST": "KATTACH",')
    fields = dict(f.split("=", 1) for f in datagram[:-1].split("\n"))
    assert fields == {
        "MESSAGE": "client attached",
        "PRIORITY": "4",
        "SYSLOG_IDENTIFIER": "lamd",
        "LOGGER": "lamd.kernel",
        "CODE_FILE": str(script),
        "CODE_LINE": str(line),
        "CODE_FUNC": "<module>",
        "LAM_PID": "4321",
        "LAM_REQUEST": "KATTACH",
    }


# ---------------------------------------------------------------- sd_notify

@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()


def test_notifier_messages(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = service.Notifier()
    assert n.enabled
    assert n.watchdog_period() == 5.0
    n.ready()
    assert notify_socket.recv(4096) == f"READY=1\nMAINPID={os.getpid()}".encode()
    n.status("3 clients attached,\n 120 messages")
    assert notify_socket.recv(4096) == b"STATUS=3 clients attached, 120 messages"
    n.status("3 clients attached, 120 messages")   # unchanged: not resent
    n.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    n.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_watchdog_for_another_pid_is_ignored(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert service.Notifier().watchdog_period() is None


def test_notifier_disabled_by_hand(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    n = service.Notifier()
    assert not n.enabled and n.watchdog_period() is None
    n.ready(); n.status("x"); n.watchdog(); n.stopping()   # no-ops
    assert n.sent == []


def test_notifier_survives_vanished_socket(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    n = service.Notifier()
    with caplog.at_level(logging.WARNING):
        n.ready()
        n.status("a")
    assert sum("sd_notify" in r.getMessage() for r in caplog.records) == 1


def test_abstract_notify_socket(monkeypatch):
    name = f"lamd-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        service.Notifier().stopping()
        assert s.recv(100) == b"STOPPING=1"
    finally:
        s.close()


# ---------------------------------------------------------------- proctitle

def test_set_proctitle_visible_in_ps():
    code = ("from lamd.service import set_proctitle, proctitle; import sys;"
            "set_proctitle(proctitle('alice', 3)); sys.stdout.write(open('/proc/self/cmdline').read())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.stdout.rstrip("\0").startswith("lamd: alice, 3 clients")


def test_proctitle_text():
    assert service.proctitle("bob", 1) == "lamd: bob, 1 client"
    assert service.proctitle("bob", 0) == "lamd: bob, 0 clients"


# ---------------------------------------------------------------- session dir

def test_session_dir_layout(monkeypatch):
    monkeypatch.delenv("LAM_MPI_SESSION_SUFFIX", raising=False)
    assert service.session_dir("alice", "h", "/tmp") == "/tmp/lam-alice@h"
    assert service.session_dir("alice", "h", "/p", "s") == "/p/lam-alice@h-s"


def test_prepare_refuses_unknown_user(tmp_path):
    with pytest.raises(ServiceError, match="does not exist"):
        service.prepare_session_dir("no-such-user-lamd", str(tmp_path / "d"))


def test_prepare_refuses_root(tmp_path):
    with pytest.raises(ServiceError, match="refuses to run as root"):
        service.prepare_session_dir("root", str(tmp_path / "d"))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@needs_root
def test_prepare_creates_0700_owned_by_user(tmp_path):
    nobody = pwd.getpwnam("nobody")
    d = tmp_path / "lam-nobody@h"
    assert service.prepare_session_dir("nobody", str(d)) == str(d)
    st = os.stat(d)
    assert st.st_uid == nobody.pw_uid and (st.st_mode & 0o7777) == 0o700
    # idempotent: a good directory is accepted as it is
    assert service.prepare_session_dir("nobody", str(d)) == str(d)
    st2 = os.stat(d)
    assert (st2.st_ino, st2.st_uid, st2.st_mode) == (st.st_ino, st.st_uid, st.st_mode)


@needs_root
def test_prepare_refuses_wrong_owner_or_mode_or_symlink(tmp_path):
    d = tmp_path / "rootowned"
    d.mkdir(mode=0o700)
    with pytest.raises(ServiceError, match="owned by root, not nobody"):
        service.prepare_session_dir("nobody", str(d))
    d2 = tmp_path / "badmode"
    d2.mkdir()
    os.chown(d2, pwd.getpwnam("nobody").pw_uid, -1)
    os.chmod(d2, 0o755)
    with pytest.raises(ServiceError, match="mode 0755, not 0700"):
        service.prepare_session_dir("nobody", str(d2))
    link = tmp_path / "link"
    link.symlink_to(d2)
    with pytest.raises(ServiceError, match="symlink"):
        service.prepare_session_dir("nobody", str(link))
    assert (os.stat(d2).st_mode & 0o777) == 0o755   # untouched


def test_prepare_main_usage_and_error(capsys):
    assert service.main([]) == 2
    assert service.main(["prepare-session", "no-such-user-lamd", "/nonexistent/x"]) == 78
    assert "does not exist" in capsys.readouterr().err
