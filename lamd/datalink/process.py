"""The datalink process: dli_inet, dlo_inet and bforward outside the kernel,
and the boot callback (LAM's separate ``lamd_dli_inet``/``lamd_dlo_inet`` of
``etc/lam-conf.separate``; ``otb/sys/dli_inet/dli_inet.c``: ``di_init``).

The kernel under systemd (``lamd@USER.service``) has no network at all
(``PrivateNetwork=yes``, ``RestrictAddressFamilies=AF_UNIX``). What a
universe needs from the network, the boot callback to lamboot and the UDP
datalink, is done here, in a process of its own attached to the kernel as
a client, as LAM's separate daemons are: the very
:class:`~lamd.iprocs.host.ServiceHost` of ``python3 -m lamd.iprocs.host``
and of the jobs process, serving the very coroutines of :mod:`lamd.iprocs.dli`,
:mod:`~lamd.iprocs.dlo` and :mod:`~lamd.iprocs.bforward`. In order:

1. **Announce.** ``lamd-datalink`` in the session directory ("PID
   STARTTIME"): a kernel that starts from now on (``--datalink=auto``, its
   default) leaves dli, dlo and bforward out of its boot table. (A start
   after a crash of this process, :mod:`lamd.datalink.keep`, announces
   itself only after step 2 found the kernel leaving the datalink to it: a
   kernel its connect starts is a new one, keeps its datalink, and is not
   served.)
2. **The kernel.** Connect to the session socket (under systemd the connect
   starts ``lamd@USER.service``), retrying for ``--wait`` seconds, and make
   sure the kernel does not run the datalink itself (one started before the
   announcement: then nothing is done, and the status says to halt it).
3. **The boot callback** (:func:`lamd.boot.agent.boot_agent`): the node's
   coordinates to lamboot, the universe back.
4. **Serve.** dli first gives the kernel's router the universe (LAM's
   ``initrouter``: ``RQSETROUTES``; the router's ``NT_ME`` entry makes the
   node id every process of the kernel and the jobs process uses), then
   reads the datalink socket; dlo sends; bforward forwards. This process
   keeps a copy of the routes (``getroute`` without a round trip), and
   lamgrow's and lamshrink's changes go to both.
5. **The end**, as every separate daemon's: the kernel going away (lamhalt,
   ``tkill``: end of file), SIGHUP (the kill file lists this process),
   SIGTERM or SIGINT. The announcement is removed.

How it is started:

* by hand, with hboot's arguments: ``python3 -m lamd.datalink -H ADDR -P
  PORT -n NODE -o ORIGIN [-x] [-d] [-sessionprefix DIR] [-sessionsuffix S]``;
* under systemd, by ``lamd-dl@USER.socket`` (:data:`LAMD_DATALINK_SOCKET`
  in the session directory): the prefix tree's ``bin/lamd``
  (:mod:`lamd.datalink.handoff`) connects and writes hboot's arguments
  (:func:`encode_request`); the service reads them from the first
  connection and answers with status lines (:data:`CALLED_BACK`, then
  :data:`OK` or :data:`ERROR`). Connections that come while a universe is
  served are answered :data:`ERROR` at once. Steps 1 and 2 begin before
  this module is imported (:mod:`.early`: the request read, the
  announcement written, the kernel's socket connected), so that the kernel
  starts while this process imports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from typing import Callable, Sequence

from ..boot.agent import BootArgs, BootError, add_hboot_options, boot_agent, boot_args_of
from ..boot.agent import links as boot_links, routes as boot_routes
from ..iprocs import DATALINK_SERVICES, BY_NAME, boot_config
from ..iprocs.router import RouteTable
from ..kernel.kiproc import IPROC_PID_BASE
from ..session import LAMD_DATALINK, Session, SessionError
from .early import Early, announce, drain, sockets_and_fifos, take_request, withdraw
from .handoff import CALLED_BACK, ERROR, MAGIC, OK, REQUEST_TIMEOUT, encode_request, read_request
from .keep import DLI_SOCKET, DLO_SOCKET, STATE_PREFIX, Kept, KeepError, LinkKeep, Universe
from .keep import load as load_kept, newest as newest_kept

log = logging.getLogger("lamd.datalink")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: an error of this program (sysexits' EX_SOFTWARE): lamd-dl@.service starts
#: it again (Restart=on-failure, RestartPreventExitStatus=1 2), as after a crash
EXIT_SOFTWARE = 70

#: How long it retries the kernel's socket (under systemd: the kernel's start).
DEFAULT_WAIT = 30.0


def kernel_datalink(path: str, timeout: float = 10.0) -> list[str]:
    """The datalink rows the kernel at *path* runs itself (kstate of LAM's
    pids 100000 + row)."""
    from ..client import KernelClient, LamError
    rows = {name: row for row, name in enumerate(BY_NAME)}
    inside = []
    with KernelClient.connect(path, timeout=timeout) as c:
        c.attach()
        try:
            for n in DATALINK_SERVICES:
                try:
                    c.state(IPROC_PID_BASE + rows[n])
                except LamError:
                    continue  # no such process: not in the kernel
                inside.append(n)
        finally:
            c.detach()
    return inside


class DatalinkProcess:
    """One universe's datalink: announce, find the kernel, call lamboot
    back, serve. *say* gets the status lines (the datalink socket's client)."""

    def __init__(self, session: Session, boot: BootArgs | None, *, wait: float = DEFAULT_WAIT,
                 boot_timeout: float = 300.0, say: Callable[[str], None] | None = None,
                 listener: socket.socket | None = None, early: Early | None = None,
                 fifo: int | None = None) -> None:
        self.session = session
        self.boot = boot
        self.wait = wait
        self.boot_timeout = boot_timeout
        self.say = say or (lambda _line: None)
        self.listener = listener
        #: lamd-dl@.socket's FIFO (requests there while serving are dropped)
        self.fifo = fifo
        #: :mod:`.early`'s announcement and kernel connection (a boot under systemd)
        self.early = early
        self.host = None

    def fail(self, why: str) -> int:
        log.error("datalink: %s", why)
        self.say(f"{ERROR} {why}")
        return EXIT_FAILED

    def run(self, kept: "Kept | None" = None,
            stored: dict[str, socket.socket] | None = None) -> int:
        """Boot (call lamboot back) and serve; with *kept* (what a crashed
        process kept, :mod:`lamd.datalink.keep`) and its *stored* sockets,
        serve the universe it served instead."""
        from ..iprocs.host import ServiceHost
        from ..jobs.process import wait_for_kernel
        from ..service import Notifier, set_proctitle

        if os.getuid() == 0:
            return self.fail("refusing to run as root (as LAM's daemons do)")
        notifier = Notifier()
        announced = None
        booted = None
        try:
            # a boot announces itself before the kernel starts (a kernel its
            # connect starts leaves the datalink to it); a start after a crash
            # only once the kernel is known to be the one it served: a kernel
            # its connect starts (tkill or lamhalt ended that one) keeps the
            # datalink, and the one-node daemon works without this process
            early = self.early
            if kept is None and early is not None and early.announced is not None:
                # announced, and the kernel's socket connected, before this
                # module was imported (.early): the kernel has been starting since
                announced, early.announced = early.announced, None
            elif kept is None:
                announced = self._announce()
                if announced is None:
                    return EXIT_FAILED
            path = self.session.socket_path
            try:
                if not wait_for_kernel(path, self.wait):
                    return self.fail(f"no kernel at {path} after {self.wait:.0f} s")
                try:
                    inside = kernel_datalink(path)
                except OSError as e:
                    return self.fail(f"the kernel at {path}: {e}")
            finally:
                if early is not None:
                    early.close_kernel()
            if inside and kept is not None:
                return self.fail(f"the kernel runs {', '.join(inside)} itself: a new kernel, "
                                 "not the one this node's universe was on; not serving again")
            if inside:
                return self.fail(f"the kernel runs {', '.join(inside)} itself (it started "
                                 "before this process announced itself): lamhalt or tkill "
                                 "it first")
            if announced is None:
                announced = self._announce()
                if announced is None:
                    return EXIT_FAILED
            if kept is None:
                assert self.boot is not None
                try:
                    booted = boot_agent(self.boot, timeout=self.boot_timeout,
                                        called_back=lambda c: (
                        self.say(f"{CALLED_BACK} n{c.node_id} boot port {c.boot_port} "
                                 f"datalink port {c.dli_port}")))
                except BootError as e:
                    return self.fail(str(e))
                universe = Universe(
                    booted.node_id, booted.origin, booted.dli_port, self.boot.fault_tolerant,
                    boot_routes(booted.universe, booted.node_id, booted.origin),
                    boot_links(booted.universe))
                dli_sock = booted.dli_sock
            else:
                universe = kept.universe
                dli_sock = (stored or {})[DLI_SOCKET]
            routes = universe.routes
            config = {"session": self.session.directory, "node_id": universe.node_id,
                      "origin": universe.origin, "routes": routes,
                      "links": universe.links, "dli_port": universe.dli_port,
                      "dli_sock": dli_sock, "fault_tolerant": universe.fault_tolerant,
                      # getroute from this copy; lamgrow/lamshrink change both
                      "route_table": RouteTable(list(routes)), "router_remote": True}
            me = next((l for l in universe.links if l.link == universe.node_id), None)
            if me is not None and me.addr:
                config["node_addr"] = me.addr
            if kept is not None:
                config["resumed"] = True
                config["on_resume_refused"] = lambda why: (
                    self.host.stop(EXIT_FAILED, why) if self.host is not None else None)
                if stored and DLO_SOCKET in stored:
                    config["dlo_sock"] = stored[DLO_SOCKET]
            if notifier.enabled:
                # what a start after a crash of this process needs (the
                # descriptor store of lamd-dl@.service)
                keep = LinkKeep(notifier, universe, kept)
                if kept is None:
                    keep.keep_socket(DLI_SOCKET, dli_sock.fileno())
                config["link_keep"] = keep
            nodes = len(routes)
            node_id = universe.node_id

            def router_ready() -> None:
                if kept is None:
                    log.info("datalink: serving node n%d of %d for %s (pid %d)", node_id,
                             nodes, self.session.directory, os.getpid())
                else:
                    log.warning("datalink: serving node n%d of %d for %s again (pid %d), "
                                "after a crash: %d frames not acked sent again", node_id,
                                nodes, self.session.directory, os.getpid(),
                                sum(len(v) for v in kept.slots.values()))
                self.say(f"{OK} n{node_id} of {nodes} nodes")
                notifier.ready()
                notifier.status(f"node n{node_id} of {nodes}, datalink port "
                                f"{universe.dli_port}")

            config["on_router_ready"] = router_ready
            host = self.host = ServiceHost(path, list(DATALINK_SERVICES),
                                           boot_config(config, kernel_side=False))
            host.install_signal_handlers()
            if self.listener is not None:
                self._refuse_more(host, node_id)
            set_proctitle(f"lamd-datalink: n{node_id}")
            status = host.run()
            if status == EXIT_OK and "link_keep" in config:
                config["link_keep"].forget()   # over: nothing for a next start to resume
            notifier.stopping()
            return status
        finally:
            if announced is not None:
                withdraw(*announced)
            if booted is not None:
                booted.dli_sock.close()
            for sock in (stored or {}).values():
                sock.close()

    def _announce(self) -> tuple[str, int] | None:
        """:func:`announce`; None (and the failure said) if it cannot."""
        try:
            return announce(self.session.directory)
        except OSError as e:
            self.fail(f"cannot write {LAMD_DATALINK} in {self.session.directory}: {e.strerror}")
            return None

    def _refuse_more(self, host, node_id: int) -> None:
        """Requests that come while this universe is served: refused at once."""
        lst = self.listener
        assert lst is not None
        lst.setblocking(False)

        def accept(_ev: int) -> None:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            with conn:
                try:
                    read_request(conn, 1.0)  # whole, so that the answer is read
                except (OSError, ValueError):
                    pass
                try:
                    conn.settimeout(1.0)
                    conn.sendall(f"{ERROR} this node (n{node_id}) is in a universe "
                                 "already: lamhalt, or tkill, first\n".encode())
                except OSError:
                    pass
            log.warning("datalink: a boot request refused: node n%d is in a universe",
                        node_id)

        host.loop.add_reader(lst.fileno(), accept)
        fifo = self.fifo
        if fifo is not None:
            os.set_blocking(fifo, False)

            def dropped(_ev: int) -> None:
                n = drain(fifo)
                if n == 0:   # hung up (opened without a writer's end): nothing will come
                    host.loop.remove(fifo)
                    return
                log.warning("datalink: a boot request in the FIFO dropped (%d bytes): node "
                            "n%d is in a universe (lamhalt, or tkill, first)", n, node_id)

            host.loop.add_reader(fifo, dropped)


# ---------------------------------------------------------------------------
# the command


def build_parser(cls: type[argparse.ArgumentParser] = argparse.ArgumentParser
                 ) -> argparse.ArgumentParser:
    """The command's options; *cls* :class:`_Parser` for a request's."""
    p = cls(
        prog="python3 -m lamd.datalink",
        description="The datalink of a LAM universe outside the kernel: the boot callback "
                    "to lamboot, then dli_inet, dlo_inet and bforward attached to this "
                    "user's lamd as a client (lamd --datalink=external, or auto).")
    p.add_argument("--log-level", default=os.environ.get("LAMD_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("-d", "--debug", action="store_true", help="--log-level debug (hboot's -d)")
    p.add_argument("-sessionprefix", "--session-prefix", dest="prefix", metavar="DIR")
    p.add_argument("-sessionsuffix", "--session-suffix", dest="suffix", metavar="SUFFIX")
    p.add_argument("--session-dir", metavar="DIR", help="the session directory itself")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="SECONDS",
                   help=f"how long to wait for the kernel (default {DEFAULT_WAIT:.0f})")
    add_hboot_options(p, "with them the process calls lamboot back; without them it "
                         "takes them from the first connection on the socket systemd passes "
                         "(lamd-dl@.socket)")
    return p


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting (a request's arguments)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Usage(message)


def _resume(args: argparse.Namespace, lst: socket.socket, stored: dict[str, int],
            fifo: int | None = None) -> int:
    """Under systemd, after a crash of this process: the universe it served,
    from the descriptor store (:mod:`lamd.datalink.keep`)."""
    state = newest_kept(stored)
    assert state is not None
    older = [n for n in stored if n.startswith(STATE_PREFIX) and n != state[0]]
    try:
        kept = load_kept(state[1])
        if DLI_SOCKET not in stored:
            raise KeepError(f"no {DLI_SOCKET} socket beside it")
    except KeepError as e:
        log.error("datalink: the state a crashed process kept (%s) is not usable: %s; "
                  "this node is out of its universe (lamboot again)", state[0], e)
        return EXIT_FAILED
    if older:   # generations a crash between store and remove left behind
        from ..service import Notifier
        notifier = Notifier()
        for name in older:
            notifier.fdstore_remove(name)
    for name, fd in stored.items():
        if name not in (DLI_SOCKET, DLO_SOCKET):
            os.close(fd)
    socks = {name: socket.socket(fileno=fd) for name, fd in stored.items()
             if name in (DLI_SOCKET, DLO_SOCKET)}
    for sock in socks.values():
        sock.set_inheritable(False)
    dirname = os.path.dirname(lst.getsockname())
    log.warning("datalink: started again after a crash: node n%d of the universe of %s "
                "(state generation %d)", kept.universe.node_id, dirname, kept.generation)
    dp = DatalinkProcess(Session(dirname), None, wait=args.wait, listener=lst, fifo=fifo)
    return dp.run(kept, socks)


def _from_socket(args: argparse.Namespace, early: Early | None = None) -> int:
    """Under systemd: the listening socket, its first request, the answer
    (or, after a crash, what the dead process kept: :func:`_resume`).
    *early*: what :mod:`.early` did before this module was imported (the
    first connection and its request taken, the announcement, the kernel's
    connection); the caller closes it."""
    from ..service import ServiceError
    from ..service.activation import _listen_fds, check_listen_socket
    passed = _listen_fds()
    stored = {name: fd for fd, name in passed
              if name in (DLI_SOCKET, DLO_SOCKET) or name.startswith(STATE_PREFIX)}
    socks, fifos = sockets_and_fifos([fd for fd, name in passed if name not in stored])
    if len(socks) != 1 or len(fifos) > 1:
        log.error("datalink: no hboot arguments and %d sockets and %d FIFOs from systemd "
                  "(lamd-dl@.socket passes one of each, or a socket only)",
                  len(socks), len(fifos))
        return EXIT_USAGE
    try:
        # a socket.socket (its accept): check_listen_socket gives the C
        # type, which the kernel's first reply does with
        lst = socket.socket(fileno=check_listen_socket(socks[0]).detach())
    except ServiceError as e:
        log.error("datalink: %s", e)
        return EXIT_USAGE
    os.set_inheritable(lst.fileno(), False)
    fifo = fifos[0] if fifos else None
    if fifo is not None:
        os.set_inheritable(fifo, False)
    if newest_kept(stored) is not None:
        return _resume(args, lst, stored, fifo)
    if stored:   # sockets without a state: of no use, here or to a next start
        from ..service import Notifier
        notifier = Notifier()
        for name, fd in stored.items():
            os.close(fd)
            notifier.fdstore_remove(name)
    if early is None:
        lst.setblocking(False)
        early = take_request(lst, fifo)
        if early is None:
            log.error("datalink: started, but no request came in %.0f s", REQUEST_TIMEOUT)
            return EXIT_FAILED
    conn = early.connection()

    def say(line: str) -> None:
        if conn is None:
            return  # through the FIFO: nobody to tell, the log has it
        try:
            conn.sendall(line.encode() + b"\n")
        except OSError:
            pass  # the client gave up: the log has it

    with contextlib.closing(conn) if conn is not None else contextlib.nullcontext():
        try:
            if early.error:
                raise ValueError(early.error)
            argv = early.argv
            req = build_parser(_Parser).parse_args(argv)
            boot = boot_args_of(req)
            if boot is None:
                raise ValueError("no -H/-P/-n: not hboot's arguments")
        except (ValueError, _Usage) as e:
            log.error("datalink: bad request%s: %s", "" if conn else " in the FIFO", e)
            say(f"{ERROR} bad request: {e}")
            return EXIT_FAILED
        if early.later:
            log.warning("datalink: %d more bytes in the FIFO after the boot request "
                        "(other requests) dropped: a node boots one universe at a time",
                        early.later)
        if req.debug:
            logging.getLogger().setLevel(logging.DEBUG)
        dirname = os.path.dirname(lst.getsockname())
        if (req.prefix and os.path.normpath(req.prefix) != os.path.dirname(dirname)) or req.suffix:
            why = (f"this socket serves the session {dirname}, not the one the "
                   "session prefix/suffix name")
            log.error("datalink: %s", why)
            say(f"{ERROR} {why}")
            return EXIT_FAILED
        log.info("datalink: boot request%s: %s", "" if conn else " (FIFO)", " ".join(argv))
        dp = DatalinkProcess(Session(dirname), boot, wait=args.wait, say=say, listener=lst,
                             early=early, fifo=fifo)
        return dp.run()


def wait_warm() -> None:
    """Before waiting for a boot request with nothing waiting
    (``python3 -m lamd.datalink``, :func:`lamd.datalink.early.idle`):
    import what a boot and its universe need, say so to systemd (READY: the
    unit is up, a boot request is answered at once) and in the process
    title."""
    from ..client import KernelClient  # noqa: F401 - warm
    from ..iprocs import dli, dlo, bforward  # noqa: F401 - warm
    from ..iprocs.host import ServiceHost  # noqa: F401 - warm
    from ..jobs.process import wait_for_kernel  # noqa: F401 - warm
    from ..service import Notifier, ServiceError, set_proctitle, setup_logging  # noqa: F401
    from ..service.activation import check_listen_socket  # noqa: F401 - warm

    notifier = Notifier()
    notifier.ready()
    notifier.status("waiting for lamboot")
    set_proctitle(WAITING_TITLE)


#: the process title of a datalink service waiting for lamboot
WAITING_TITLE = "lamd-datalink: waiting for lamboot"


def main(argv: Sequence[str] | None = None, early: Early | None = None) -> int:
    """The command; *early*: what :func:`lamd.datalink.early.start` did
    (``python3 -m lamd.datalink`` runs it before it imports this module)."""
    from ..service import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging("debug" if args.debug else args.log_level)
    try:
        boot = boot_args_of(args)
    except ValueError as e:
        log.error("%s", e)
        if early is not None:
            early.close()
        return EXIT_USAGE
    if early is not None and boot is not None:
        early.close()  # hboot's arguments on the command line: not the socket's boot
    if boot is None:
        try:
            return _from_socket(args, early)
        except Exception:   # a bug: logged, and the unit starts this again
            log.exception("datalink: internal error")
            return EXIT_SOFTWARE
        finally:
            if early is not None:
                early.close()  # what DatalinkProcess.run did not take over
    try:
        session = (Session(args.session_dir) if args.session_dir
                   else Session.for_user(prefix=args.prefix, suffix=args.suffix))
        session.ensure_directory()
    except SessionError as e:
        log.error("%s", e)
        return EXIT_FAILED
    return DatalinkProcess(session, boot, wait=args.wait,
                           say=lambda line: log.info("datalink: %s", line)).run()


__all__ = ["DatalinkProcess", "encode_request", "read_request", "announce", "withdraw",
           "kernel_datalink", "main", "MAGIC", "OK", "ERROR", "CALLED_BACK"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
