"""The kernel: LAM's ``otb/sys/kernel`` as a sans-IO state machine.

* :mod:`.constants`, :mod:`.wire`: LAM's codes and native structs
  (``share/include``);
* :mod:`.kouter`: the process table and request dispatch (``kouter.c``);
* :mod:`.kinner`: matching, the blocked list, rendezvous and transfer
  (``kinner.c``);
* :mod:`.kiproc`: internal processes as coroutines and their wait API
  (``kio_intr``/``kio_to``); :mod:`.kidriver`: ``kboot`` and the driver
  that runs them in the kernel (``otb/sys/lamd/kiproc.c``);
* :mod:`.kbase`: what those three halves of the kernel share;
* :mod:`.kactions`: what the kernel asks of the I/O layer (the ``kio_*`` calls).

Nothing here touches a socket, a file or the clock except through values
passed in; :mod:`lamd.kernelio` drives it.
"""

from .kactions import *  # noqa: F401,F403 - the kernel's vocabulary
from .kactions import __all__ as _actions
from .kinner import BlockedList, ksync_cmp, ksync_event_sql, ksync_type, ksync_type_sql
from .kiproc import IPROC_PID_BASE
from .kouter import MAX_MSG_LEN, Kernel, KernelStats, KProc

__all__ = [*_actions, "BlockedList", "ksync_cmp", "ksync_event_sql",
           "ksync_type", "ksync_type_sql", "IPROC_PID_BASE", "MAX_MSG_LEN", "Kernel",
           "KernelStats", "KProc"]
