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
import subprocess
import sys
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


def loaded_after(code: str) -> list[str]:
    """Which of LAZY a fresh interpreter has loaded after *code*."""
    probe = code + "\nimport json, sys\nprint(json.dumps([m for m in %r if m in sys.modules]))" % LAZY
    out = subprocess.run([SYSTEM_PYTHON, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
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


def test_traced_reads_wire_s_numbers() -> None:
    import lamd.iprocs  # noqa: F401
    from lamd.jobs import trreq, wire
    traced = sys.modules["lamd.iprocs.traced"]  # lamd.iprocs.traced is the coroutine
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
        ["-sessionsuffix", "x"], ["--no-iprocs"], ["extra"], ["--"], ["--jobs=external", "-x"]]


@pytest.mark.parametrize("argv", QUICK, ids=lambda a: " ".join(a) or "none")
@pytest.mark.parametrize("env", [{}, {"LAMD_LOG_LEVEL": "debug", "LAMD_MAX_PROCS": "12",
                                      "LAMD_MOVE_BUFFER": "8192", "LAMD_MAX_QUEUED": "70000",
                                      "LAMD_MAX_MSG_LEN": "1000"}], ids=["defaults", "env"])
def test_quick_args_are_argparse_s(argv: list[str], env: dict[str, str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("LAMD_LOG_LEVEL", "LAMD_MAX_PROCS", "LAMD_MOVE_BUFFER", "LAMD_MAX_QUEUED",
              "LAMD_MAX_MSG_LEN"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    quick = daemon.quick_args(argv)
    assert quick is not None
    assert vars(quick) == vars(daemon.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", SLOW, ids=lambda a: " ".join(a))
def test_everything_else_goes_to_argparse(argv: list[str]) -> None:
    assert daemon.quick_args(argv) is None


def test_a_bad_number_in_the_environment_still_fails_as_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMD_MAX_PROCS", "many")
    assert daemon.quick_args([]) is None
    with pytest.raises(ValueError):
        daemon.main([])


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
