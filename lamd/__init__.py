"""lamd: the LAM/MPI 7.1.4 runtime daemon, rebuilt as a systemd-native service.

The kernel's logic lives in :mod:`lamd.kernel` (a sans-IO state machine, LAM's
``kouter.c``/``kinner.c``); :mod:`lamd.kernelio` drives it from an epoll loop
(LAM's ``kernelio.c``); :mod:`lamd.wire` is the native struct codec.
"""

__version__ = "0.1.0"

#: The LAM release whose wire protocol and behaviour this daemon implements.
LAM_VERSION = "7.1.4"

# the compiled hot path, or its .py files (LAMD_PURE=1, or a stale build)
from . import _pure

_pure.install()
