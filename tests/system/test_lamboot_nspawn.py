"""System test: stock ``lamboot`` boots the systemd-managed daemon of a node.

Two test hosts (tests/netns.py): node1 runs Debian's C lamd (the origin,
where ``lamboot`` runs); node2's network namespace also holds a
``systemd-nspawn`` container booting a real systemd (the installed package's
units; ``--network-namespace-path=`` node2's, its hostname ``node2``, its
``/tmp`` node2's session prefix) with ``lamd@lamtest.socket`` and
``lamd-dl@lamtest.socket`` enabled. The boot schema names the package's
prefix tree for node2: node2's sshd runs stock hboot, whose ``tkill`` and
``lamd`` are the tree's; the arguments reach ``lamd-dl@lamtest.socket``'s
FIFO (the journal says so), where ``lamd-dl@lamtest.service``, started
ahead by ``systemctl start``, waits for them, and
from then on everything on node2 is the container's systemd's:
``lamd-dl@lamtest.service`` calls lamboot back and starts
``lamd@lamtest.service`` (no network of its own) and ``lamd-jobs@``.

Checked: the three units active, the kernel in a network namespace of its own
and the datalink in node2's; ``lamnodes`` and ``tping -c 1 N`` from both
nodes (on node2 inside the container: its kernel takes clients of its own pid
namespace only); ``lamexec N hostname`` across the nodes; ``lamhalt``: the kernel's and the jobs' units inactive,
the two sockets listening on, ``lamd-dl@`` started again and waiting for
the next boot (``Restart=always``: active, "waiting for lamboot", its one
process), no other process of the user on either node; the next boot is
served by that waiting process. Three boots: the first ends with
``lamhalt`` after a SIGKILL of node2's kernel (the node stays n1 of the
universe); the second ends with what ``lamwipe`` runs on each node (the
tree's ``tkill``: ``lamd-tkill --keep-socket`` under systemd), with the same
outcome as lamhalt; the third, after the wipe, with ``lamhalt`` after a
SIGKILL of node2's datalink process (``lamd-dl@`` started again by systemd
with what it kept in its descriptor store: the node stays n1, the kernel
untouched).

And ``lamgrow`` onto the systemd-managed node: node1 booted alone, then
``lamgrow node2`` (stock lamgrow runs node2's ``hboot`` from its PATH, which
finds the tree's ``lamd`` and ``tkill`` first, as a user would set it up):
the units come up as under lamboot, ``lamnodes``, ``tping`` and ``lamexec``
from both nodes; ``lamshrink n1`` halts node2 (its units inactive, its
sockets listening, nothing of the user left but the datalink waiting for
the next boot), and node1 goes on alone.

Needs both locks: ``flock /tmp/lamd-netns.lock flock /tmp/lamd-systest.lock``.

    sudo /usr/bin/python3 -m pytest tests/system/test_lamboot_nspawn.py
"""

from __future__ import annotations

import os
import pwd
import stat
import time

import pytest

from ..netns import Cluster, gone
from ..test_multinode import show
from .test_systemd import USER, Container, host

pytestmark = pytest.mark.system

PREFIX_TREE = "/usr/lib/lamd/lam"
UNITS = ("lamd@{u}.service", "lamd-dl@{u}.service", "lamd-jobs@{u}.service")
SOCKETS = ("lamd@{u}.socket", "lamd-dl@{u}.socket")


def active(ct: Container, unit: str) -> str:
    return ct.run(["systemctl", "is-active", unit.format(u=USER)]).stdout.strip()


def main_pid(ct: Container, unit: str) -> int:
    return int(ct.show(unit.format(u=USER), "MainPID").get("MainPID", "0"))


def netns_of(ct: Container, pid: int) -> str:
    r = ct.run(["readlink", f"/proc/{pid}/ns/net"])
    return r.stdout.strip()


def journal(ct: Container) -> str:
    r = ct.run(["journalctl", "--no-pager", "-o", "cat", "-n", "200",
                *[f"-u{u.format(u=USER)}" for u in UNITS + SOCKETS]], timeout=30)
    return "\n--- journal (container) ---\n" + r.stdout[-8000:]


def serves_both_ways(ct: Container, h1, h2) -> None:
    """node2's lamnodes (in the container: its kernel takes clients of its
    own pid namespace only), tping to every node from both nodes, lamexec
    across them from node1."""
    r = ct.as_user(["lamnodes"], timeout=20)
    assert r.returncode == 0 and r.stdout.splitlines() == [
        f"n0\t{h1.addr}:1:origin", f"n1\t{h2.addr}:1:this_node"], r.stdout + r.stderr + journal(ct)
    for run in (lambda a: h1.run(a, timeout=30), lambda a: ct.as_user(a, timeout=30)):
        cp = run(["tping", "-c", "1", "N"])
        assert cp.returncode == 0 and "1 remote node and 1 local node" in cp.stdout, \
            cp.stdout + cp.stderr + journal(ct)
    cp = h1.run(["lamexec", "N", "hostname"], timeout=30)
    assert cp.returncode == 0 and sorted(cp.stdout.split()) == [h1.name, h2.name], \
        show(cp) + journal(ct)


def crash_keeps_the_node(ct: Container, h1, h2, kpid: int, dpid: int) -> None:
    """SIGKILL of node2's kernel (issue 12 on a node of a universe): systemd
    restarts it with its clients from the descriptor store, the datalink
    process among them (its unit untouched: not PartOf= the kernel's), and
    the router's table from its own memfd there (lamd.kernelio.iprocstate):
    node2 is n1 of the same universe at once, both ways."""
    took = ct.run(["journalctl", "--no-pager", "-o", "cat", f"-ulamd@{USER}.service"]
                  ).stdout.count("router: after a crash: this node n1 of 2 again")
    ct.run(["kill", "-KILL", str(kpid)])
    ct.wait_for(lambda: main_pid(ct, UNITS[0]) not in (0, kpid)
                and active(ct, UNITS[0]) == "active", 30, "the kernel restarted")
    assert main_pid(ct, UNITS[1]) == dpid and active(ct, UNITS[1]) == "active", journal(ct)
    log = ct.run(["journalctl", "--no-pager", "-o", "cat", f"-ulamd@{USER}.service"]).stdout
    assert log.count("router: after a crash: this node n1 of 2 again") == took + 1, journal(ct)
    assert "after a crash: took back" in log, journal(ct)
    serves_both_ways(ct, h1, h2)


def datalink_crash_keeps_the_node(ct: Container, h1, h2, kpid: int, dpid: int) -> None:
    """SIGKILL of node2's datalink process (issue 11): systemd starts
    lamd-dl@ again (Restart=on-failure) with what it kept in its descriptor
    store (lamd.datalink.keep: the UDP sockets, the universe, the links'
    state), the kernel untouched: node2 is n1 of the same universe, both ways."""
    restarts = int(ct.show(UNITS[1].format(u=USER), "NRestarts").get("NRestarts", "0"))
    ct.run(["kill", "-KILL", str(dpid)])
    ct.wait_for(lambda: main_pid(ct, UNITS[1]) not in (0, dpid)
                and active(ct, UNITS[1]) == "active", 30, "the datalink started again")
    assert int(ct.show(UNITS[1].format(u=USER), "NRestarts")["NRestarts"]) == restarts + 1
    assert main_pid(ct, UNITS[0]) == kpid, journal(ct)
    log = ct.run(["journalctl", "--no-pager", "-o", "cat", f"-ulamd-dl@{USER}.service"]).stdout
    assert "datalink: started again after a crash: node n1" in log, journal(ct)
    assert f"datalink: serving node n1 of 2 for /tmp/lam-{USER}@{h2.name} again" in log, \
        journal(ct)
    serves_both_ways(ct, h1, h2)


def node_container(h2) -> Container:
    """node2's container: a systemd in node2's network namespace, its /tmp
    node2's session prefix, its hostname node2."""
    return Container(machine=h2.name, extra=(
        f"--network-namespace-path=/run/netns/{h2.netns}",
        f"--bind={h2.prefix}:/tmp"), init=(f"systemd.hostname={h2.name}",))


def boot_node(ct: Container, h2, enable=SOCKETS):
    """Boot *ct* and enable its user's sockets (*enable*: both, or the
    kernel's alone, which brings the datalink's: its Wants=); the session
    directory."""
    ct.boot()
    assert ct.run(["hostname"]).stdout.strip() == h2.name
    r = ct.run(["systemctl", "enable", "--runtime", "--now",
                *[s.format(u=USER) for s in enable]])
    assert r.returncode == 0, r.stdout + r.stderr
    ct.wait_for(lambda: [active(ct, s) for s in SOCKETS] == ["active", "active"], 10,
                f"both sockets active after enabling {enable}")
    sdir = h2.prefix / f"lam-{USER}@{h2.name}"
    for name in ("lam-kernel-socket", "lamd-datalink-socket"):
        assert (sdir / name).is_socket(), sorted(os.listdir(sdir))
    # the datalink socket's FIFO: where the prefix tree's bin/lamd writes
    # hboot's arguments without starting Python
    st = os.stat(sdir / "lamd-datalink-fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == pwd.getpwnam(USER).pw_uid
    return sdir


WAITING = "lamd-datalink: waiting for lamboot"


def waiting(ct: Container) -> bool:
    """lamd-dl@USER.service started again after its universe (Restart=always)
    and waiting for the next boot: active, its status and title say so."""
    unit = UNITS[1].format(u=USER)
    st = ct.show(unit, "ActiveState", "StatusText", "MainPID")
    if st.get("ActiveState") != "active" or st.get("StatusText") != "waiting for lamboot":
        return False
    r = ct.run(["cat", f"/proc/{st.get('MainPID', '0')}/cmdline"])
    return r.stdout.split("\0")[0] == WAITING


def node_stopped(ct: Container, sdir, why: str) -> int:
    """The kernel's and the jobs' units inactive, the datalink's waiting for
    the next boot (one process), the two sockets listening, no other
    process of the user left, only the sockets and the FIFO in the session
    directory. The waiting process's pid."""
    try:
        ct.wait_for(lambda: [active(ct, UNITS[0]), active(ct, UNITS[2])] == [
            "inactive", "inactive"] and waiting(ct), 30,
                    f"the kernel and jobs inactive, the datalink waiting, after {why}")
    except AssertionError as e:
        raise AssertionError(f"{e}: {[(u, active(ct, u)) for u in UNITS]} "
                             f"{ct.run(['pgrep', '-u', USER, '-a']).stdout}"
                             + journal(ct)) from None
    assert [active(ct, s) for s in SOCKETS] == ["active", "active"]
    left = ct.run(["pgrep", "-u", USER, "-a"]).stdout.splitlines()
    assert [ln.split(" ", 1)[1] for ln in left] == [WAITING], left
    return main_pid(ct, UNITS[1])
    # the sockets, and the kernel's reload status (lamd-reload: a systemd
    # kernel keeps it for ExecReload=, as before)
    assert sorted(set(os.listdir(sdir)) - {"lamd-reload"}) == [
        "lam-kernel-socket", "lamd-datalink-fifo", "lamd-datalink-socket"]


def test_lamboot_boots_the_systemd_managed_daemon(lamd_deb, lam_user):
    with Cluster(2) as c:
        h1, h2 = c.hosts
        ct = node_container(h2)
        try:
            sdir = boot_node(ct, h2)
            hf = c.work / "hostfile"
            hf.write_text(f"{h1.name}\n{h2.name} prefix={PREFIX_TREE}\n")
            hf.chmod(0o644)

            # first: a kernel crash, then lamhalt; then lamwipe (stock wipe:
            # hboot's tkill over ssh, the tree's lamd-tkill --keep-socket on
            # node2); then a boot again after the wipe, a crash of the
            # datalink process, and lamhalt
            # an admin who starts the datalink service ahead (as enabling it
            # does at boot): it waits for lamboot, and serves the first boot
            r = ct.run(["systemctl", "start", UNITS[1].format(u=USER)])
            assert r.returncode == 0, r.stdout + r.stderr + journal(ct)
            ct.wait_for(lambda: waiting(ct), 30, "the datalink service waiting for lamboot")
            waiter = main_pid(ct, UNITS[1])
            for attempt, end in (("first", "lamhalt"), ("wiped", "lamwipe"),
                                 ("again", "lamhalt")):
                t0 = time.monotonic()
                cp = h1.run(["lamboot", hf], timeout=120)
                assert cp.returncode == 0, attempt + show(cp) + journal(ct)
                boot_s = time.monotonic() - t0
                ct.wait_for(lambda: all(active(ct, u) == "active" for u in UNITS), 30,
                            "the kernel, datalink and jobs units active")
                kpid, dpid = main_pid(ct, UNITS[0]), main_pid(ct, UNITS[1])
                # the process waiting for the next boot serves it
                assert dpid == waiter, (attempt, dpid, waiter)
                # hboot's arguments came through the FIFO (no Python before
                # the service's own)
                dl = ct.run(["journalctl", "--no-pager", "-o", "cat",
                             f"-ulamd-dl@{USER}.service"]).stdout
                assert "boot request (FIFO): -H" in dl, journal(ct)
                # the kernel has no network; the datalink has node2's
                assert netns_of(ct, dpid) == netns_of(ct, 1)
                assert netns_of(ct, kpid) != netns_of(ct, 1)
                want = [f"n0\t{h1.name}:1:origin", f"n1\t{h2.name}:1:"]
                cp = h1.run(["lamnodes"])
                assert cp.returncode == 0 and cp.stdout.splitlines() == [
                    want[0] + ",this_node", want[1]], show(cp) + journal(ct)
                # the container's /etc/hosts is the machine's (bind-ro): it
                # does not name the test hosts, so lamnodes there prints
                # their addresses
                serves_both_ways(ct, h1, h2)
                if attempt == "first":
                    crash_keeps_the_node(ct, h1, h2, kpid, dpid)
                if attempt == "again":
                    datalink_crash_keeps_the_node(ct, h1, h2, kpid, dpid)
                if end == "lamhalt":
                    cp = h1.run(["lamhalt"], timeout=60)
                else:
                    # what lamwipe runs on each node of the schema (the boot
                    # module's PREFIX/bin/tkill over ssh): lamwipe itself for
                    # node1; for node2 that command inside the container,
                    # where the node's processes are: this rig's sshd for
                    # node2 runs outside the container's pid namespace, where
                    # the kill file's pids name other processes (on a real
                    # host sshd and systemd share one)
                    hf1 = c.work / "hostfile-node1"
                    hf1.write_text(f"{h1.name}\n")
                    hf1.chmod(0o644)
                    cp = h1.run(["lamwipe", hf1], timeout=60)
                    r = ct.as_user([f"{PREFIX_TREE}/bin/tkill"], timeout=60)
                    assert r.returncode == 0, r.stdout + r.stderr + journal(ct)
                assert cp.returncode == 0, show(cp) + journal(ct)
                waiter = node_stopped(ct, sdir, end)
                assert gone([h1]) == {h1.name: []}
                print(f"{attempt} lamboot with a systemd node: {boot_s:.2f} s")
        finally:
            try:
                h1.run(["lamwipe", c.work / "hostfile"], timeout=60)
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
            ct.stop()
    host(["true"])


def test_lamgrow_onto_the_systemd_managed_node(lamd_deb, lam_user):
    with Cluster(2) as c:
        h1, h2 = c.hosts
        ct = node_container(h2)
        halted = False
        hf = c.work / "hostfile-node1"
        try:
            # an admin who enables the kernel's socket alone: lamgrow still
            # boots the daemon systemd runs (not a stray one beside it, with
            # stock tkill unlinking systemd's socket first)
            sdir = boot_node(ct, h2, enable=SOCKETS[:1])
            # node2's ssh sessions find the tree's daemon and tkill first, as
            # a user who wants ours there sets PATH (lamgrow has no -prefix)
            for name in ("lamd", "tkill"):
                os.symlink(f"{PREFIX_TREE}/bin/{name}", h2.bindir / name)
            hf.write_text(f"{h1.name}\n")
            hf.chmod(0o644)
            cp = h1.run(["lamboot", hf], timeout=120)
            assert cp.returncode == 0, show(cp)
            cp = h1.run(["lamgrow", "-v", h2.name], timeout=120)
            assert cp.returncode == 0, show(cp) + journal(ct)
            ct.wait_for(lambda: all(active(ct, u) == "active" for u in UNITS), 30,
                        "the kernel, datalink and jobs units active")
            kpid, dpid = main_pid(ct, UNITS[0]), main_pid(ct, UNITS[1])
            assert netns_of(ct, dpid) == netns_of(ct, 1)
            assert netns_of(ct, kpid) != netns_of(ct, 1)
            # nothing waited here: the request in the FIFO started the service
            dl = ct.run(["journalctl", "--no-pager", "-o", "cat",
                         f"-ulamd-dl@{USER}.service"]).stdout
            assert "boot request (FIFO): -H" in dl, journal(ct)
            assert "waiting for lamboot" not in ct.show(UNITS[1].format(u=USER),
                                                        "StatusText")["StatusText"]
            # as the C lamds print it after a lamgrow from n0 (tests/test_grow.py):
            # the grown node takes lamgrow's node for an origin too
            cp = h1.run(["lamnodes"])
            assert cp.returncode == 0 and cp.stdout.splitlines() == [
                f"n0\t{h1.name}:1:origin,this_node", f"n1\t{h2.name}:1:"], \
                show(cp) + journal(ct)
            serves_both_ways(ct, h1, h2)
            # lamshrink: node2's haltd ends its daemon; systemd's units stop,
            # the sockets stay for the next boot
            cp = h1.run(["lamshrink", "n1"], timeout=60)
            assert cp.returncode == 0, show(cp) + journal(ct)
            node_stopped(ct, sdir, "lamshrink")
            cp = h1.run(["lamnodes"])
            assert cp.stdout.splitlines() == [f"n0\t{h1.name}:1:origin,this_node"], show(cp)
            cp = h1.run(["tping", "-c", "1", "N"], timeout=30)
            assert cp.returncode == 0 and "1 byte from n0 (o): " in cp.stdout, show(cp)
            cp = h1.run(["lamhalt"], timeout=60)
            assert cp.returncode == 0, show(cp)
            halted = True
            assert gone([h1]) == {h1.name: []}
        finally:
            if not halted:
                try:
                    h1.run(["lamwipe", hf], timeout=60)
                except Exception:  # noqa: BLE001 - teardown goes on
                    pass
            ct.stop()
    host(["true"])
