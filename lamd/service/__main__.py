"""``python3 -m lamd.service prepare-session USER [PATH]`` (the socket unit's
``ExecStartPre=``) and ``python3 -m lamd.service reload PID`` (the service's
``ExecReload=``)."""

import sys

from .prepare import main
from . import reload

if sys.argv[1:2] == ["reload"]:
    sys.exit(reload.main(sys.argv[2:]))
sys.exit(main())
