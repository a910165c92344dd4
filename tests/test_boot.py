"""The lamd's side of the boot callback (lamd/boot/agent.py), over loopback
against a scripted lamboot: the coordinates it sends, the universe it takes,
who it takes it from, deadlines; the universe as router and dlo tables; the
daemon's command line as hboot writes it. Stock lamboot booting our lamd on
test hosts is in tests/test_multinode.py."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from lamd.boot import callback
from lamd.boot.agent import BootArgs, BootError, boot_agent, links, routes
from lamd.boot.callback import Link, Universe
from lamd.iprocs.nreq import NOTLINKID, NT_ME, NT_ORIGIN
from lamd.kernel.constants import EVDL0, NOTEVENT

from .lamenv import SYSTEM_PYTHON, REPO


class FakeLamboot:
    """lamboot's server side on 127.0.0.1: accept one callback, then send
    *universe* to the node's boot port, from *send_from* first if given
    (a stranger the lamd must drop)."""

    def __init__(self, universe_for=None, send_from: str | None = None,
                 send: bool = True, on_coord=None):
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(10)
        self.port = self.srv.getsockname()[1]
        self.universe_for = universe_for
        self.send_from = send_from
        self.send = send
        self.on_coord = on_coord  # called once the coordinates are in
        self.seen = None
        self.coord_raw = b""
        self.errors: list[BaseException] = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        try:
            conn, _ = self.srv.accept()
            with conn:
                conn.settimeout(10)
                while True:
                    b = conn.recv(100)
                    if not b:
                        break
                    self.coord_raw += b
            coord = callback.decode_coord(self.coord_raw)
            if self.on_coord is not None:
                self.seen = self.on_coord()
            if not self.send:
                return
            if self.send_from:
                s = socket.socket()
                s.bind((self.send_from, 0))
                s.connect(("127.0.0.1", coord.boot_port))
                s.sendall(b"\xff" * 64)  # garbage the lamd must never read
                s.close()
            u = self.universe_for(coord)
            with socket.create_connection(("127.0.0.1", coord.boot_port), timeout=10) as s:
                s.sendall(u.encode())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)

    def close(self) -> None:
        self.t.join(10)
        self.srv.close()


def three(coord) -> Universe:
    return Universe((Link(0, 5000, NT_ORIGIN | NT_ME, 1, addr="127.0.0.1"),
                     Link(1, coord.dli_port, 0, 2, addr="127.0.0.1"),
                     Link(NOTLINKID)))


@pytest.mark.parametrize("stranger", [None, "127.0.0.2"])
def test_callback_and_universe(stranger):
    lb = FakeLamboot(three, send_from=stranger)
    booted = boot_agent(BootArgs("127.0.0.1", lb.port, node_id=1, origin=0), timeout=10)
    lb.close()
    assert not lb.errors
    try:
        coord = callback.decode_coord(lb.coord_raw)
        assert (coord.node_id, coord.num_cpus, coord.status) == (1, -1, 0)
        assert coord.dli_port == booted.dli_port
        assert booted.dli_sock.type == socket.SOCK_DGRAM
        assert booted.universe == three(coord)
        assert booted.my_link().num_cpus == 2
        # the boot listener is closed once the universe is in
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", coord.boot_port), timeout=2).close()
    finally:
        booted.dli_sock.close()


def test_no_universe_in_time_is_an_error():
    lb = FakeLamboot(three, send=False)
    t = time.monotonic()
    with pytest.raises(BootError, match="in time"):
        boot_agent(BootArgs("127.0.0.1", lb.port, node_id=1), timeout=1.5)
    assert time.monotonic() - t < 5
    lb.close()


def test_universe_without_this_node_is_an_error():
    lb = FakeLamboot(three)
    with pytest.raises(BootError, match="no node n7"):
        boot_agent(BootArgs("127.0.0.1", lb.port, node_id=7), timeout=10)
    lb.close()


def closed_port() -> socket.socket:
    """A loopback port bound and not listening: a connect to it is refused.
    (A port merely closed can be taken as the connect's own source port,
    and the connect then meets itself: TCP simultaneous open; CI at 5c35178
    hit it.) Close it after the connect."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_nobody_listening_is_an_error():
    with closed_port() as s:
        with pytest.raises(BootError, match="refused"):
            boot_agent(BootArgs("127.0.0.1", s.getsockname()[1], node_id=0), timeout=5)


def test_routes_and_links_as_initrouter_sets_them():
    u = Universe((Link(0, 5000, NT_ORIGIN | NT_ME, 1, addr="10.77.0.1"),
                  Link(NOTLINKID),
                  Link(2, 5002, 0, 4, addr="10.77.0.3")))
    r = {x.nodeid: x for x in routes(u, node_id=2, origin=0)}
    assert sorted(r) == [0, 2]
    assert r[0].nodetype == NT_ORIGIN and (r[0].event, r[0].link) == (EVDL0, 0)
    assert r[2].nodetype == NT_ME and r[2].event == NOTEVENT and r[2].ncpus == 4
    assert [(l.link, l.addr, l.port) for l in links(u)] == [
        (0, "10.77.0.1", 5000), (2, "10.77.0.3", 5002)]


@pytest.mark.parametrize("argv", [["-H", "10.77.0.1"], ["-H", "10.77.0.1", "-P", "5"],
                                  ["-P", "5", "-n", "1"]])
def test_boot_arguments_go_together(argv):
    cp = subprocess.run([SYSTEM_PYTHON, "-m", "lamd", *argv], capture_output=True,
                        text=True, timeout=30, cwd=str(REPO))
    assert cp.returncode == 2, cp.stderr
    assert "-H, -P and -n go together" in cp.stderr


def test_the_lamd_command_calls_back_before_it_imports_the_daemon(monkeypatch, tmp_path):
    """lamd.boot.early (the lamd command's first step under hboot): the
    session socket is bound, then the callback made, with nothing of the
    daemon imported but the session's paths, and no logging, typing or
    dataclasses either (lamboot must not return
    before every node's kernel socket exists); boot_agent then finishes
    that very callback (the same ports) instead of making another, and a
    callback made for other arguments is closed, not used."""
    from lamd.boot import early
    from lamd.session import Session
    code = ("import sys; from lamd.boot.early import main_early; main_early(sys.argv[1:]); "
            "print(sorted(m for m in sys.modules if m.startswith('lamd.') "
            "and m not in ('lamd._pure', 'lamd.boot', 'lamd.boot.early'))); "
            "print(sorted(m for m in ('logging', 'dataclasses', 'typing', 'argparse', 're', "
            "'importlib', 'warnings', 'zlib') if m in sys.modules))")
    session = Session.for_user(prefix=str(tmp_path))
    lb = FakeLamboot(three, send=False, on_coord=lambda: os.path.exists(session.socket_path))
    # as the prefix tree's bin/lamd starts it: without site.py
    cp = subprocess.run([SYSTEM_PYTHON, "-S", "-c", code, "-H", "127.0.0.1", "-P", str(lb.port),
                         "-n", "1", "-o", "0", "-sessionprefix", str(tmp_path)],
                        capture_output=True, text=True, timeout=30, cwd=str(REPO))
    lb.close()
    # and none of the standard library's heavier modules (each costs
    # milliseconds on lamboot's path, once per node), nor the compiled
    # build's staleness check (importlib, zlib: lamd._pure checks it when
    # the first compiled module is imported, after the callback)
    assert cp.returncode == 0 and cp.stdout.split("\n")[:2] == ["['lamd.session']", "[]"], \
        cp.stdout + cp.stderr
    assert callback.decode_coord(lb.coord_raw).node_id == 1
    assert lb.seen is True  # bound before lamboot heard from us
    os.unlink(session.socket_path)  # (what that process left)
    # in process: boot_agent takes the early callback over
    assert early.hboot_args(["-H", "a", "-P", "x", "-n", "1"]) is None
    assert early.hboot_args(["-H", "a", "-P", "5", "-n", "1", "-H", "b"]) is None
    lb = FakeLamboot(three)
    early.main_early(["-d", "-H", "127.0.0.1", "-P", str(lb.port), "-n", "1",
                      "-sessionprefix", str(tmp_path)])
    pending = early.PENDING
    assert pending is not None and pending.node_id == 1
    listener = early.take_listener(session.directory)
    assert listener is not None and listener.getsockname() == session.socket_path
    listener.close()
    booted = boot_agent(BootArgs("127.0.0.1", lb.port, node_id=1), timeout=10)
    lb.close()
    try:
        assert not lb.errors and early.PENDING is None
        assert booted.dli_sock is pending.dli and booted.dli_port == pending.dli_port
    finally:
        booted.dli_sock.close()
    # made for other arguments (node 2): closed, and the daemon calls back itself
    lb = FakeLamboot(three)
    other = early.call_back("127.0.0.1", lb.port, 2)
    monkeypatch.setattr(early, "PENDING", other)
    lb.close()
    assert early.take("127.0.0.1", lb.port, 1) is None and other.dli.fileno() == -1
    # nobody listening: nothing pending, no exception
    with closed_port() as s:
        early.main_early(["-H", "127.0.0.1", "-P", str(s.getsockname()[1]), "-n", "0",
                          "-sessionprefix", str(tmp_path)])
    assert early.PENDING is None
    listener = early.take_listener(session.directory)
    assert listener is not None
    listener.close()
