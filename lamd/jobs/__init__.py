"""Job launch: LAM's process and I/O services, to run as a separate "jobs" process.

``lamexec``, ``mpirun``, ``mpitask``, ``lamclean`` and ``lamtrace`` need the
services the C lamd runs as internal processes: kenyad (process creation and
control, ``otb/sys/kenyad/``), filed (remote files, and the caller's stdio
passed over a Unix socket, ``otb/sys/filed/``), flatd (argv/environment and
program images by tag, ``otb/sys/flatd/``), loadd (program loading between
nodes), traced (trace store) and iod (stdio forwarding for remote nodes).
Here they will live in one process attached to the kernel as a client, so a
fork/exec, a blocking descriptor pass or a crash never touches the kernel.

* :mod:`lamd.jobs.wire` - the services' request and reply structs and
  constants, byte for byte as stock liblam writes and reads them (proven by
  ``tests/test_jobs_wire.py``), and kenyad's rules for a child's
  environment, argv and exit status as pure functions.
* :mod:`lamd.jobs.process` - the jobs process (``python3 -m lamd.jobs``):
  those services on :class:`~lamd.iprocs.host.ServiceHost`, the session
  exported to what they start, every job killed when it ends; and
  :class:`~lamd.jobs.process.JobsChild`, how ``lamd`` by hand runs it.
* :mod:`lamd.jobs.cgroups` - each job in its own cgroup (``Delegate=yes``)
  or process group: what kenyad calls to place, signal and kill a job.
* :mod:`lamd.jobs.srfd` - taking a client's stdio descriptors (``sfh_recv_fd``)
  through the wait API, with a deadline.
* :mod:`lamd.jobs.kenyad` - kenyad, the process server (``async def
  kenyad(k)``): PQCREATE (argv/environment from flatd by tag, stdio passed
  with RTF_PFDIO), exit notices, PQATTACH/PQDETACH, PQSTATE, PQDOOM; each
  process in a session and process group of its own; a bounded table.
"""

# The boot table (lamd.iprocs) imports the services of this package, which
# use lamd.iprocs.nreq: load lamd.iprocs first, whichever is imported first.
from .. import iprocs as _iprocs  # noqa: E402,F401
