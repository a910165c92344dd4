"""Where the session lives: LAM's lam_tmpdir_init rules (share/etc/kill.c)."""

from __future__ import annotations

import os

import pytest

from lamd.session import bind_session_socket
from lamd.session import Session, SessionError


def path(**kw) -> str:
    return Session.for_user(user="alice", host="node1", **kw).directory


@pytest.mark.parametrize("env,expected", [
    ({}, "/tmp/lam-alice@node1"),
    ({"TMPDIR": "/scratch"}, "/scratch/lam-alice@node1"),
    ({"TMPDIR": "/scratch", "LAM_MPI_SESSION_PREFIX": "/p"}, "/p/lam-alice@node1"),
    ({"LAM_MPI_SESSION_SUFFIX": "s1"}, "/tmp/lam-alice@node1-s1"),
    ({"LAM_MPI_SOCKET_SUFFIX": "old"}, "/tmp/lam-alice@node1-old"),
    ({"LAM_MPI_SESSION_SUFFIX": "s1", "LAM_MPI_SOCKET_SUFFIX": "old"}, "/tmp/lam-alice@node1-s1"),
    ({"PBS_ENVIRONMENT": "x", "PBS_JOBID": "42"}, "/tmp/lam-alice@node1-pbs-42"),
    ({"PBS_JOBID": "42"}, "/tmp/lam-alice@node1"),  # PBS needs both
    ({"SLURM_JOBID": "7"}, "/tmp/lam-alice@node1-slurm-7"),
    ({"LSB_JOBID": "3", "LSB_JOBINDEX": "1"}, "/tmp/lam-alice@node1-lsf-3-1"),
    ({"SGE_ROOT": "/sge", "JOB_ID": "9"}, "/tmp/lam-alice@node1-sge-9-undefined"),
    ({"SGE_ROOT": "/sge", "JOB_ID": "9", "SGE_TASK_ID": "2"}, "/tmp/lam-alice@node1-sge-9-2"),
])
def test_session_directory_rules(env: dict, expected: str) -> None:
    assert path(env=env) == expected


def test_options_win_over_the_environment() -> None:
    env = {"LAM_MPI_SESSION_PREFIX": "/p", "LAM_MPI_SESSION_SUFFIX": "s"}
    assert path(env=env, prefix="/q", suffix="t") == "/q/lam-alice@node1-t"


def test_files_inside() -> None:
    s = Session("/tmp/lam-alice@node1")
    assert s.socket_path.endswith("/lam-kernel-socket")
    assert s.killfile_path.endswith("/lam-killfile")


def test_directory_created_0700_and_wrong_ones_refused(tmp_path) -> None:
    s = Session(str(tmp_path / "lam-x@y"))
    s.ensure_directory()
    assert os.stat(s.directory).st_mode & 0o777 == 0o700
    s.ensure_directory()  # an existing good one is fine
    os.chmod(s.directory, 0o755)
    with pytest.raises(SessionError, match="0755"):
        s.ensure_directory()
    os.rmdir(s.directory)
    open(s.directory, "w").close()
    with pytest.raises(SessionError, match="not a directory"):
        s.ensure_directory()


def test_stale_socket_is_replaced_live_one_never(tmp_path) -> None:
    s = Session(str(tmp_path / "lam-x@y"))
    s.ensure_directory()
    first = bind_session_socket(s)
    with pytest.raises(SessionError, match="already serves"):
        bind_session_socket(s)  # live: never taken over
    first.close()  # now stale: the file is still there, nobody listens
    assert os.path.exists(s.socket_path)
    second = bind_session_socket(s)
    assert os.stat(s.socket_path).st_mode & 0o777 == 0o600
    second.close()
