"""Start-up (issue 13): what the daemon imports before its first reply, and
the options it reads without argparse.

The daemon under socket activation is started by its first client's
connect, so every module it imports before the first turn is the client's
wait. These tests pin down what stays out of that path (the boot agent, the
re-exec snapshot, the jobs launcher, the job services' modules, the
``ExecStartPre=``/``ExecReload=`` helpers, argparse) and that the quick
option reader gives exactly what argparse gives.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lamd import daemon

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"

#: Loaded only when used: -H (lamboot), a re-exec, --jobs=child, the job
#: services themselves, the unit's helpers, --help or an unusual option.
LAZY = ["argparse", "lamd.boot.agent", "lamd.boot.callback", "lamd.kernel.ksnapshot",
        "lamd.jobs.process", "lamd.jobs.cgroups", "lamd.jobs.wire", "lamd.jobs.kenyad",
        "lamd.jobs.filed", "lamd.jobs.flatd", "lamd.jobs.iod", "lamd.jobs.loadd",
        "lamd.service.reload", "lamd.service.prepare"]


def loaded_after(code: str, names: list[str] = LAZY, env: dict[str, str] | None = None) -> list[str]:
    """Which of *names* a fresh interpreter (with *env* added to its
    environment) has loaded after *code*."""
    probe = code + "\nimport json, sys\nprint(json.dumps([m for m in %r if m in sys.modules]))" % names
    out = subprocess.run([SYSTEM_PYTHON, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_leaves_the_lazy_modules_out() -> None:
    assert loaded_after("import lamd.daemon") == []


def test_boot_table_and_options_leave_them_out() -> None:
    # what main() does before the first turn, short of the sockets: the
    # options, the boot table with the job rows left out (external)
    code = ("from lamd import daemon, iprocs\n"
            "a = daemon.quick_args(['--jobs=external', '--log-level', 'warning'])\n"
            "assert a is not None\n"
            "iprocs.boot_table({'node_addr': '127.0.0.1'}, iprocs.JOB_SERVICES)\n"
            "iprocs.with_stubs(iprocs.boot_table({'node_addr': '127.0.0.1'}), iprocs.JOB_SERVICES)")
    assert loaded_after(code) == []


def test_a_job_service_row_loads_its_module_when_booted() -> None:
    code = ("from lamd import iprocs\n"
            "row = iprocs.BY_NAME['kenyad']\n"
            "assert 'lamd.jobs.kenyad' not in __import__('sys').modules\n"
            "from lamd.jobs.kenyad import kenyad\n"
            "assert row.main.resolve() is kenyad, row.main")
    assert "lamd.jobs.kenyad" in loaded_after(code)


def test_the_boot_table_loads_no_internal_process_until_booted() -> None:
    """The daemon reads the boot table's names before its first turn; every
    internal process's module (and the datalink's) is imported when its row
    boots, after the clients already waiting are answered (issue 13)."""
    rows = ["lamd.iprocs.router", "lamd.iprocs.bufferd", "lamd.iprocs.dli", "lamd.iprocs.dlo",
            "lamd.iprocs.echod", "lamd.iprocs.bforward", "lamd.iprocs.traced",
            "lamd.iprocs.stubs", "lamd.iprocs.haltd", "lamd.iprocs.versiond",
            "lamd.iprocs.carried", "lamd.datalink.link"]
    code = ("import json, sys\nfrom lamd import daemon, iprocs\n"
            "n = iprocs.booted_rows(iprocs.JOB_SERVICES)\n"
            "print(json.dumps([n, [m for m in %r if m in sys.modules]]))\n"
            "iprocs.BY_NAME['echod'].main.resolve()\n"
            "print(json.dumps('lamd.iprocs.echod' in sys.modules))" % rows)
    out = subprocess.run([SYSTEM_PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert json.loads(first) == [10, []]  # 15 rows, the 5 job services' left out
    assert json.loads(second) is True


def test_traced_reads_wire_s_numbers() -> None:
    import lamd.iprocs.traced  # noqa: F401
    from lamd.jobs import trreq, wire
    traced = sys.modules["lamd.iprocs.traced"]
    for name in trreq.__all__:  # one set of numbers, re-exported by wire
        assert getattr(wire, name) == getattr(trreq, name)
    assert traced.EPUBLISHED == wire.EPUBLISHED and traced.ENOTPUBLISHED == wire.ENOTPUBLISHED


QUICK = [[], ["--jobs=external"], ["--jobs", "child"], ["--no-jobs"], ["-d"], ["--debug"],
         ["--log-level=warning"], ["--log-level", "error", "--jobs=none"],
         ["--jobs=child", "--no-jobs"], ["--no-jobs", "--jobs", "external"],
         ["-d", "--log-level", "debug", "--debug"]]
SLOW = [["--help"], ["--version"], ["--jobs=bogus"], ["--jobs"], ["--log-level"],
        ["--log-level", "-d"], ["--log=info"], ["--job=none"], ["-dd"], ["--external", "echod"],
        ["-H", "10.0.0.1", "-P", "4000", "-n", "1"], ["--restore-fd", "5"], ["--max-procs", "9"],
        ["-sessionsuffix", "x"], ["--no-iprocs"], ["--splice-min", "0"], ["--busy-poll", "0"], ["extra"], ["--"], ["--jobs=external", "-x"]]


@pytest.mark.parametrize("argv", QUICK, ids=lambda a: " ".join(a) or "none")
@pytest.mark.parametrize("env", [{}, {"LAMD_LOG_LEVEL": "debug", "LAMD_MAX_PROCS": "12",
                                      "LAMD_MOVE_BUFFER": "8192", "LAMD_MAX_QUEUED": "70000",
                                      "LAMD_MAX_MSG_LEN": "1000", "LAMD_SPLICE_MIN": "-1",
                                      "LAMD_BUSY_POLL": "7"}],
                         ids=["defaults", "env"])
def test_quick_args_are_argparse_s(argv: list[str], env: dict[str, str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("LAMD_LOG_LEVEL", "LAMD_MAX_PROCS", "LAMD_MOVE_BUFFER", "LAMD_MAX_QUEUED",
              "LAMD_MAX_MSG_LEN", "LAMD_SPLICE_MIN", "LAMD_BUSY_POLL"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    quick = daemon.quick_args(argv)
    assert quick is not None
    assert vars(quick) == vars(daemon.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", SLOW, ids=lambda a: " ".join(a))
def test_everything_else_goes_to_argparse(argv: list[str]) -> None:
    assert daemon.quick_args(argv) is None


@pytest.mark.parametrize("var", ["LAMD_MAX_PROCS", "LAMD_MAX_MSG_LEN", "LAMD_MOVE_BUFFER",
                                 "LAMD_MAX_QUEUED", "LAMD_SPLICE_MIN", "LAMD_BUSY_POLL"])
def test_a_bad_number_in_the_environment_is_a_usage_error(
        var: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Each limit's variable (the unit's environment file) is checked: a
    value that is not a number stops the daemon with exit 2 and names the
    variable (LAMD_SPLICE_MIN was once ignored without a word)."""
    monkeypatch.setenv(var, "many")
    assert daemon.quick_args([]) is None
    assert daemon.main([]) == 2
    assert f"${var}: not a number: 'many'" in capsys.readouterr().err


def test_a_bad_log_level_in_the_environment_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LAMD_LOG_LEVEL", "loud")
    assert daemon.main([]) == 2
    assert "$LAMD_LOG_LEVEL: unknown log level 'loud'" in capsys.readouterr().err


def test_help_still_works() -> None:
    out = subprocess.run([SYSTEM_PYTHON, "-m", "lamd", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "--jobs" in out.stdout and "booted by lamboot" in out.stdout
    bad = subprocess.run([SYSTEM_PYTHON, "-m", "lamd", "--jobs=bogus"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# ---------------------------------------------------------------- socket activation

CLIENT = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from lamd.client import KernelClient
t0 = time.monotonic()
c = KernelClient.connect(sys.argv[2])
index = c.attach()
print(json.dumps({"index": index, "ms": (time.monotonic() - t0) * 1e3}), flush=True)
if len(sys.argv) > 3:  # stay attached until told
    sys.stdin.readline()
c.detach()
"""


#: run before packaging/lamd-start in the activated daemon: the standard
#: library's heavier modules loaded when the first reply (a struct kreply,
#: 80 bytes) is written to a client, into the file named by argv[1]
FIRST_REPLY_PROBE = """
import _socket, sys
_out = sys.argv.pop(1)
class _Probe(_socket.socket):  # what admission makes of an accepted client
    __slots__ = ()
    def send(self, data, *args):
        global _out
        if len(data) >= 80 and _out:
            with open(_out, "w") as f:
                f.write(" ".join(m for m in ("logging", "typing", "inspect", "dataclasses", "mypy_extensions",
                                             "argparse", "enum", "socket", "signal", "selectors",
                                             "sdnotify") if m in sys.modules))
            _out = ""
        return super().send(data, *args)
_socket.socket = _Probe
"""


class Activated:
    """A daemon started as lamd@.service starts it (packaging/lamd-start:
    python3 -IS) by a client's connect, with a notify socket as under
    systemd; *probe* runs first in its interpreter, with :attr:`probe_out`
    as its argv[1]."""

    def __init__(self, level: str, probe: str = "") -> None:
        from .lamenv import Session, copy_package, ensure_user
        self.pw = ensure_user()
        self.s = s = Session(self.pw)
        self.pkg = pkg = copy_package(pyc=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        launcher = pkg / "lamd-start"
        shutil.copy(ROOT / "packaging" / "lamd-start", launcher)
        launcher.chmod(0o755)
        s.session_dir.mkdir(mode=0o700)
        os.chown(s.session_dir, self.pw.pw_uid, self.pw.pw_gid)
        npath = s.work / "notify"
        self.notify.bind(str(npath))
        npath.chmod(0o666)
        self.notify.settimeout(30)
        code = (probe + f"\nimport sys; sys.path.insert(0, {str(pkg)!r}); "
                f"exec(compile(open({str(launcher)!r}).read(), 'lamd-start', 'exec'))")
        self.log = s.work / "lamd.log"
        self.probe_out = s.work / "probe"
        probe_args = [str(self.probe_out)] if probe else []
        self.daemon = s.popen(["systemd-socket-activate", "-E", "NOTIFY_SOCKET", "-l", s.socket,
                               SYSTEM_PYTHON, "-I", "-S", "-c", code, *probe_args,
                               "--jobs=external", "--log-level", level],
                              env={**s.env, "NOTIFY_SOCKET": str(npath)},
                              stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not s.socket.exists():
            assert self.daemon.poll() is None and time.monotonic() < deadline, "no socket"
            time.sleep(0.01)
        self.client = [SYSTEM_PYTHON, "-I", "-c", CLIENT, str(pkg), str(s.socket)]

    def wait_ready(self) -> None:
        got: list[bytes] = []
        while b"READY=1" not in b"\n".join(got):
            got.append(self.notify.recv(65536))

    def close(self) -> None:
        self.notify.close()
        self.s.close()
        shutil.rmtree(self.pkg, ignore_errors=True)


def test_socket_activation_answers_the_first_client_then_boots(tmp_path) -> None:
    """The first client's attach is answered before the internal processes
    boot (the daemon's log: its ATTACH, then the boot table), READY=1 comes
    after the boot, and the internal processes still have LAM's indexes: the
    first client gets the index after theirs, as if they had booted first."""
    from lamd.iprocs import JOB_SERVICES, booted_rows
    a = Activated("debug")
    try:
        s = a.s
        first = s.run(a.client, timeout=30)
        assert first.returncode == 0, first.stderr
        a.wait_ready()
        second = s.popen([*a.client, "stay"], stdin=subprocess.PIPE)
        line = second.stdout.readline()
        second.stdin.write("\n")
        second.stdin.flush()
        assert second.wait(timeout=30) == 0, second.stderr.read()
        nrows = booted_rows(JOB_SERVICES)
        assert json.loads(first.stdout)["index"] == nrows
        # the first left (its index free again), the lowest free index is its
        assert json.loads(line)["index"] == nrows
        text = a.log.read_text()
        attach = text.index("ATTACH index=-1")
        boot = text.index("boot table: internal")
        assert attach < boot, text
    finally:
        a.close()


def test_the_first_reply_waits_for_no_logging_typing_or_inspect() -> None:
    """At the unit's log level (info), the activated daemon writes its first
    reply before it has imported logging (lamd.lazylog), typing (type-only
    imports, lamd._static), inspect (lamd._dataclasses: no dataclasses at all),
    argparse, or enum with socket, signal and selectors (the C modules
    _socket and _signal instead; sdnotify, which imports socket, at the first
    notification): each is milliseconds of the first client's wait. Logging
    still works: the info line the daemon logs once it has booted reaches
    its log."""
    a = Activated("info", FIRST_REPLY_PROBE)
    out = a.probe_out
    try:
        first = a.s.run(a.client, timeout=30)
        assert first.returncode == 0, first.stderr
        a.wait_ready()
        assert out.read_text() == ""
        deadline = time.monotonic() + 20
        while "serving" not in a.log.read_text():
            assert time.monotonic() < deadline, a.log.read_text()
            time.sleep(0.05)
        assert "INFO lamd" in a.log.read_text()
    finally:
        a.close()


def test_the_launcher_starts_the_daemon_with_the_collector_off(monkeypatch) -> None:
    """lamd.launch turns the cyclic collector off for the start (issue 13);
    lamd.daemon.main turns it on again before READY=1."""
    import gc

    from lamd import daemon, launch
    seen: list[bool] = []
    monkeypatch.setattr(daemon, "main", lambda: seen.append(gc.isenabled()) or 0)
    monkeypatch.setattr(sys, "argv", ["lamd"])
    try:
        assert launch.main(site=False) == 0
    finally:
        gc.enable()
    assert seen == [False]
    src = Path(daemon.__file__).read_text()
    assert src.index("gc.enable()") < src.index("notifier.ready()\n    notifier.status")
