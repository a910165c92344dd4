"""Shared pytest fixtures for the interop tests (see tests/lamenv.py).

Fixtures:
  lam_user      session: the unprivileged user ``lamtest`` (skips if not
                root; fails if LAM's tools are missing: packaging/setup.sh
                installs them)
  lamd_pkg      session: a world-readable copy of ``lamd/`` (PYTHONPATH dir)
  lamd_deb      session: the lamd .deb built from a clean clone of HEAD
                (``packaging/build-deb.sh``) and installed on the host with
                ``dpkg -i``; ``LAMD_DEB=FILE`` installs that file instead,
                ``LAMD_DEB=installed`` uses what is installed. Yields the
                .deb's path (None for ``installed``). The system tests and
                tests/test_prefix.py use it.
  kclient       session: tests/c/kclient.c built with mpicc.lam against liblam
  lam_session   per test: an isolated LAM session (``run``/``popen`` as lamtest)
  daemon        per test, params "c" (stock lamd via lamboot) and "py"
                (``/usr/bin/python3 -m lamd``); yields the daemon, whose ``.s``
                is the session.  Both are stopped the same way afterwards
                (lamhalt) and checked the same way (``lamenv.Daemon.stop``):
                a problem fails the test, whichever the daemon.  On failure
                the daemon's log is added to the test report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from . import lamenv

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "_lam_rep_" + rep.when, rep)
    if rep.when == "call" and rep.failed:
        for d in getattr(item, "_lam_daemons", ()):
            text = d.log()
            if len(text) > 20000:
                text = "[... head cut ...]\n" + text[-20000:]
            rep.sections.append((f"lamd ({d.kind}) log", text or "(empty)"))


@pytest.fixture(scope="session")
def lam_user():
    reason = lamenv.skip_reason()
    if reason:
        pytest.skip(reason)
    missing = lamenv.missing_tools()
    if missing:
        pytest.fail(missing, pytrace=False)
    return lamenv.ensure_user()


@pytest.fixture(scope="session")
def lamd_pkg(lam_user):
    d = lamenv.copy_package()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def package_installed() -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "lamd"], capture_output=True,
                       text=True, timeout=60)
    return "install ok installed" in r.stdout


@pytest.fixture(scope="session")
def lamd_deb(tmp_path_factory):
    setup = "run packaging/setup.sh"
    deb = os.environ.get("LAMD_DEB")
    if deb == "installed":
        assert package_installed(), "LAMD_DEB=installed but package lamd is not installed"
        yield None
        return
    if not deb:
        assert shutil.which("dpkg-buildpackage"), \
            f"dpkg-buildpackage missing: cannot build the package: {setup}"
        out = tmp_path_factory.mktemp("deb")
        before = set(os.listdir("/tmp"))
        r = subprocess.run([str(HERE.parent / "packaging" / "build-deb.sh"), str(out)],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, "package build failed:\n" + (r.stdout + r.stderr)[-3000:]
        # the build and its lintian run leave nothing behind (lintian's
        # mldbm-elf-* databases did, before build-deb.sh gave it its own TMPDIR)
        left = {n for n in set(os.listdir("/tmp")) - before if n.startswith(("mldbm", "tmp"))}
        assert not left, f"the package build left {sorted(left)} in /tmp"
        deb = str(next(out.glob("lamd_*.deb")))
    r = subprocess.run(["dpkg", "-i", deb], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    yield deb


@pytest.fixture(scope="session")
def kclient():
    """Path of the compiled C client (readable and executable by lamtest).

    Needs only mpicc.lam (no root), so test_layout runs anywhere."""
    if shutil.which("mpicc.lam") is None:
        pytest.fail("mpicc.lam missing (lam4-dev): run packaging/setup.sh", pytrace=False)
    out = Path(tempfile.mkdtemp(prefix="lamd-kclient-", dir="/tmp"))
    out.chmod(0o755)
    exe = out / "kclient"
    cp = subprocess.run(["mpicc.lam", "-O1", "-Wall", "-o", str(exe),
                         str(HERE / "c" / "kclient.c")],
                        capture_output=True, text=True, timeout=120, cwd=str(out))
    if cp.returncode != 0:
        pytest.fail(f"mpicc.lam failed (rc={cp.returncode}):\n{cp.stdout}{cp.stderr}")
    exe.chmod(0o755)
    yield exe
    shutil.rmtree(out, ignore_errors=True)


@pytest.fixture
def lam_session(lam_user):
    s = lamenv.Session(lam_user)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(params=["c", "py"])
def daemon(request, lam_session):
    if request.param == "c":
        d = lamenv.CDaemon(lam_session)
    else:
        d = lamenv.PyDaemon(lam_session, request.getfixturevalue("lamd_pkg"))
    lamenv.show_log_on_failure(request, d)
    try:
        d.start()
        yield d
    finally:
        d.stop()
    problems = getattr(d, "stop_problems", [])
    if problems:
        lamenv.fail_on_stop_problems(request, problems, f"lamd ({d.kind}) shutdown: ",
                                     "\n--- log ---\n" + d.log()[-5000:])


@pytest.fixture
def hosts3(lam_user):
    """Three test hosts node1..node3 (tests/netns.py), torn down afterwards
    whatever the test did."""
    from .netns import Cluster
    missing = [p for p in ("sshd", "ssh", "ssh-keygen", "tcpdump", "nsenter", "setpriv")
               if shutil.which(p, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run packaging/setup.sh", pytrace=False)
    with Cluster(3) as c:
        yield c
