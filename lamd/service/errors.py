"""The error every setup problem of the service ends in."""

from __future__ import annotations

#: sysexits.h EX_CONFIG: a configuration problem that restarting cannot fix.
#: The unit lists it in ``RestartPreventExitStatus=`` so it never crash-loops.
EX_CONFIG = 78


class ServiceError(Exception):
    """A setup problem that must end the daemon with one clear message.

    ``exit_code`` is what the daemon should exit with; it defaults to
    :data:`EX_CONFIG` (78), which ``lamd@.service`` will not restart on.
    """

    def __init__(self, message: str, exit_code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code
