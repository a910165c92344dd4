"""Test hosts: a small cluster built from network namespaces, for multi-node LAM.

Each :class:`Host` is what a cluster node looks like to LAM:

* its own network namespace (``/run/netns/lamt<PID>-<name>``) with ``lo`` and
  an ``eth0`` holding one address on a private test subnet (``10.77.0.0/24``
  by default), the other end of its veth pair plugged into a bridge ``br0`` in
  a hub namespace of its own; nothing is attached to the machine's own network
  namespace, so traffic stays between the namespaces created here;
* its own hostname (a UTS namespace) and its own hosts file
  (``/etc/netns/<netns>/hosts``, bind-mounted over ``/etc/hosts`` by
  ``ip netns exec``) listing every test host;
* an ``sshd`` (host key and configuration in a temporary directory, listening
  only on the host's address, ``UsePAM no``) accepting key login for the LAM
  test user, whose session environment (``SetEnv``) carries the host's own
  ``LAM_MPI_SESSION_PREFIX`` (lamboot pushes a session suffix to the nodes it
  boots, never a prefix) and a ``PATH`` that starts with the host's own,
  initially empty, directory (:attr:`Host.bindir`): a ``lamd`` put there is
  what a plain ``hboot`` (lamgrow's, a boot schema line without ``prefix=``)
  starts on that host, as a user's PATH would choose it. Both carry
  ``LD_BIND_NOW=1`` as well, for the C lamds' ranks (``lamenv.C_LAMD_ENV``
  says why; ours sets it for mpirun's ranks itself).

The sshd is the host's anchor: everything run "on" a host enters that sshd's
network, UTS and mount namespaces (``nsenter -t PID -n -u -m``). Programs run
as the test user through ``setpriv``; LAM clients are bounded by ``timeout -k``.

:meth:`Cluster.close` tears everything down and is safe to call at any point
of :meth:`Cluster.start`: every process inside the namespaces (sshd, hboot,
lamds, clients; found by their network namespace) is SIGKILLed, then the
namespaces, ``/etc/netns`` directories and temporary directories go. Leftovers
of a test run that was itself killed are removed by the next run
(:func:`remove_stale`), by the creator's pid in the names.

``LAMRSH`` for lamboot is :attr:`Cluster.lamrsh`: ssh in batch mode, the
test key, no known-hosts file, ``LogLevel=ERROR`` (lamboot takes anything on
the remote agent's stderr for a failure).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .lamenv import C_LAMD_ENV, wait_exit

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
SSHD = "/usr/sbin/sshd"
PREFIX = "lamt"          # netns names: lamt<creator pid>-<hub|hostname>
SUBNET = "10.77.0"       # /24: host i (1-based) is SUBNET.i
LAM_TIMEOUT = 30.0


def _netns_ino(name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(name: str) -> list[int]:
    """Every process whose network namespace is the named one."""
    want = _netns_ino(name)
    if want is None:
        return []
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{d}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == want:
            out.append(int(d))
    return out


def kill_netns_procs(name: str, timeout: float = 5.0) -> None:
    """SIGKILL everything in the namespace until nothing is left (forks race)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in pids_in_netns(name) if p != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)


def remove_netns(name: str) -> None:
    from pyroute2 import netns
    kill_netns_procs(name)
    if (NETNS_DIR / name).exists():
        try:
            netns.remove(name)
        except OSError:
            pass
    shutil.rmtree(ETC_NETNS / name, ignore_errors=True)


def remove_stale() -> None:
    """Namespaces (and /etc/netns dirs) of earlier runs whose creator is gone."""
    names = set()
    for d in (NETNS_DIR, ETC_NETNS):
        try:
            names |= set(os.listdir(d))
        except OSError:
            pass
    for name in names:
        m = re.fullmatch(rf"{PREFIX}(\d+)-[\w.-]+", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            remove_netns(name)


@dataclass
class Host:
    """One test host; ``index`` is 1-based (address ``SUBNET.index``)."""

    cluster: "Cluster"
    index: int
    name: str                       # hostname and hosts-file name
    netns: str
    addr: str
    prefix: Path                    # LAM_MPI_SESSION_PREFIX on this host
    bindir: Path                    # first in PATH of an ssh session on this host
    sshd: subprocess.Popen | None = None
    sshd_log: Path | None = None

    @property
    def anchor(self) -> int:
        assert self.sshd is not None
        return self.sshd.pid

    def env(self, extra: dict | None = None) -> dict:
        c = self.cluster
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": c.pw.pw_dir, "USER": c.pw.pw_name, "LOGNAME": c.pw.pw_name,
            "LANG": "C.UTF-8",
            "LAM_MPI_SESSION_PREFIX": str(self.prefix),
            "LAMRSH": c.lamrsh,
            **C_LAMD_ENV,
        }
        env.update(extra or {})
        return env

    def argv(self, argv, user: bool = True, timeout: float | None = LAM_TIMEOUT) -> list[str]:
        """*argv* as run on this host (as the test user unless *user* is false)."""
        pw = self.cluster.pw
        out = ["nsenter", "-t", str(self.anchor), "-n", "-u", "-m",
               f"--wd={self.cluster.work}", "--"]
        if user:
            out += ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                    "--clear-groups", "--"]
        if timeout is not None:
            out += ["timeout", "-k", "5", str(timeout)]
        return out + [str(a) for a in argv]

    def run(self, argv, timeout: float = LAM_TIMEOUT, user: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run to completion on this host; stdout/stderr through files, not pipes
        (lamboot's local daemon inherits them and would hold a pipe open)."""
        full = self.argv(argv, user=user, timeout=timeout)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 env=env or self.env(), close_fds=True)
            if wait_exit(p, timeout + 10):  # exact: benches time lamboot with it
                rc = p.returncode
            else:
                p.kill()
                p.wait()
                rc = -9
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess([str(a) for a in argv], rc,
                                               out.read(), err.read())

    def popen(self, argv, user: bool = True, timeout: float | None = LAM_TIMEOUT,
              env: dict | None = None, **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self.argv(argv, user=user, timeout=timeout),
                             env=env or self.env(), close_fds=True, **kw)
        self.cluster._procs.append(p)
        return p

    def pids(self) -> list[int]:
        """Processes in this host's network namespace other than its sshd."""
        return [p for p in pids_in_netns(self.netns) if self.sshd is None or p != self.sshd.pid]

    def user_pids(self) -> list[int]:
        """Live (not zombie) processes of the test user on this host."""
        uid = self.cluster.pw.pw_uid
        out = []
        for p in self.pids():
            try:
                st = os.stat(f"/proc/{p}")
                with open(f"/proc/{p}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if st.st_uid == uid and state != b"Z":
                out.append(p)
        return out


class Cluster:
    """*n* test hosts ``node1..nodeN`` on ``SUBNET.1..N``, each with an sshd.

    Use as a context manager or call :meth:`start` / :meth:`close`.
    """

    def __init__(self, n: int, user: str = "lamtest", subnet: str = SUBNET,
                 names: list[str] | None = None):
        self.pw = pwd.getpwnam(user)
        self.n = n
        self.subnet = subnet
        self.tag = f"{PREFIX}{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.dir = Path(tempfile.mkdtemp(prefix="lamhosts-", dir="/tmp"))
        self.dir.chmod(0o755)
        self.work = self.dir / "work"          # cwd of everything run on a host
        self.key = self.dir / "id_ed25519"
        self.lamrsh = ("ssh -o LogLevel=ERROR -o StrictHostKeyChecking=no "
                       "-o UserKnownHostsFile=/dev/null -o BatchMode=yes "
                       f"-o ConnectTimeout=10 -F /dev/null -i {self.key}")
        names = names or [f"node{i}" for i in range(1, n + 1)]
        self.hosts = [
            Host(self, i, names[i - 1], f"{self.tag}-{names[i - 1]}",
                 f"{subnet}.{i}", self.dir / names[i - 1], self.dir / f"bin-{names[i - 1]}")
            for i in range(1, n + 1)
        ]
        self._procs: list[subprocess.Popen] = []
        self._created: list[str] = []

    # -- setup -------------------------------------------------------------

    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        remove_stale()
        self._files()
        self._network()
        for h in self.hosts:
            self._start_sshd(h)
        for h in self.hosts:
            self._wait_sshd(h)

    def _chown(self, p: Path, mode: int) -> None:
        os.chown(p, self.pw.pw_uid, self.pw.pw_gid)
        p.chmod(mode)

    def _files(self) -> None:
        self.work.mkdir()
        self._chown(self.work, 0o755)
        unlock_for_keys(self.pw.pw_name)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lamtest@lamhosts",
                        "-f", str(self.key)], check=True, capture_output=True, timeout=30)
        self._chown(self.key, 0o600)
        auth = self.dir / "authorized_keys"
        shutil.copy(self.key.with_suffix(".pub"), auth)
        auth.chmod(0o644)
        hosts = "127.0.0.1\tlocalhost\n" + "".join(
            f"{h.addr}\t{h.name}\n" for h in self.hosts)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privsep dir
        for h in self.hosts:
            h.prefix.mkdir()
            h.bindir.mkdir(mode=0o755)
            self._chown(h.prefix, 0o700)
            etc = ETC_NETNS / h.netns
            etc.mkdir(parents=True, exist_ok=True)
            self._created.append(h.netns)
            (etc / "hosts").write_text(hosts)
            (etc / "hostname").write_text(h.name + "\n")
            hd = self.dir / f"sshd-{h.name}"
            hd.mkdir()
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(hd / "host_key")], check=True, capture_output=True, timeout=30)
            (hd / "sshd_config").write_text(
                f"ListenAddress {h.addr}:22\n"
                f"HostKey {hd / 'host_key'}\n"
                f"PidFile {hd / 'sshd.pid'}\n"
                f"AuthorizedKeysFile {auth}\n"
                f"AllowUsers {self.pw.pw_name}\n"
                "UsePAM no\nStrictModes no\nPubkeyAuthentication yes\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PermitRootLogin no\nPrintMotd no\nPrintLastLog no\n"
                "X11Forwarding no\nAllowTcpForwarding no\nAllowAgentForwarding no\n"
                "PermitTunnel no\nUseDNS no\nLogLevel ERROR\nMaxStartups 100:30:200\n"
                f"SetEnv LAM_MPI_SESSION_PREFIX={h.prefix} "
                f"PATH={h.bindir}:/usr/local/bin:/usr/bin:/bin "
                + " ".join(f"{k}={v}" for k, v in C_LAMD_ENV.items()) + "\n")
            h.sshd_log = hd / "sshd.log"

    def _network(self) -> None:
        from pyroute2 import NetNS, netns
        for name in [self.hub] + [h.netns for h in self.hosts]:
            netns.create(name)
            if name not in self._created:
                self._created.append(name)
        for h in self.hosts:
            with NetNS(h.netns) as ns:
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        with NetNS(self.hub) as hub:
            hub.link("set", index=hub.link_lookup(ifname="lo")[0], state="up")
            hub.link("add", ifname="br0", kind="bridge")
            br = hub.link_lookup(ifname="br0")[0]
            for h in self.hosts:
                port = f"v{h.index}"
                hub.link("add", ifname=port, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": h.netns})
                idx = hub.link_lookup(ifname=port)[0]
                hub.link("set", index=idx, master=br, state="up")
            hub.link("set", index=br, state="up")
        for h in self.hosts:
            with NetNS(h.netns) as ns:
                idx = ns.link_lookup(ifname="eth0")[0]
                ns.addr("add", index=idx, address=h.addr, prefixlen=24)
                ns.link("set", index=idx, state="up")

    def _start_sshd(self, h: Host) -> None:
        hd = self.dir / f"sshd-{h.name}"
        log = open(h.sshd_log, "w")
        # ip netns exec: the network namespace and /etc/netns/NAME/hosts in a
        # mount namespace; unshare --uts: the hostname; sshd -D stays in the
        # foreground, so its pid anchors all three
        h.sshd = subprocess.Popen(
            ["ip", "netns", "exec", h.netns, "unshare", "--uts", "--",
             "sh", "-c", f'hostname "$0" && exec {SSHD} -D -e -f "$1"',
             h.name, str(hd / "sshd_config")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True)
        log.close()

    def _wait_sshd(self, h: Host, timeout: float = 15.0) -> None:
        import socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if h.sshd.poll() is not None:
                break
            cp = subprocess.run(
                ["nsenter", "-t", str(h.anchor), "-n", "--", "ss", "-ltnH",
                 f"src {h.addr}:22"], capture_output=True, text=True, timeout=10)
            if cp.stdout.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd on {h.name} not listening (exit {h.sshd.poll()}):\n"
                           + h.sshd_log.read_text(errors="replace"))

    # -- use ---------------------------------------------------------------

    def hostfile(self, hosts: list[Host] | None = None, name: str = "hostfile") -> Path:
        p = self.work / name
        p.write_text("".join(f"{h.name}\n" for h in (hosts or self.hosts)))
        p.chmod(0o644)
        return p

    # -- teardown ----------------------------------------------------------

    def close(self) -> None:
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for name in reversed(self._created):
            kill_netns_procs(name)
        for h in self.hosts:
            if h.sshd is not None:
                if h.sshd.poll() is None:
                    h.sshd.kill()
                h.sshd.wait(timeout=10)
        for p in self._procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(self._created):
            remove_netns(name)
        self._created.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def unlock_for_keys(user: str) -> None:
    """Let sshd (``UsePAM no``) accept key logins for *user*.

    ``useradd`` leaves the password field ``!`` (locked), and without PAM
    sshd refuses a locked account even with a key. ``*`` is "no password":
    still no password login, but not locked."""
    with open("/etc/shadow") as f:
        for line in f:
            fields = line.split(":")
            if fields[0] == user:
                if fields[1].startswith("!"):
                    subprocess.run(["usermod", "-p", "*", user], check=True,
                                   capture_output=True, timeout=30)
                return
    raise RuntimeError(f"{user} not in /etc/shadow")


def gone(hosts: list["Host"], timeout: float = 15.0) -> dict[str, list[int]]:
    """Wait up to *timeout* s for the test user's processes on *hosts* to end;
    what is left, by host name (every list empty: all gone)."""
    deadline = time.monotonic() + timeout
    while any(h.user_pids() for h in hosts) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {h.name: h.user_pids() for h in hosts}
