"""How a VM run ends, and the one table that turns that into an exit status.

Every layer that stops a VM names a ``StopKind``; ``StopInfo.make`` picks the exit status from
``EXIT_STATUS``, so the CLI, the VM task and the machine cannot disagree on a number.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StopKind(enum.StrEnum):
    """Why a VM stopped (string values, so they read well in logs and JSON)."""

    POWEROFF = "poweroff"  # clean shutdown
    FAILURE = "failure"  # the guest reported a failure (SRST system failure, finisher code)
    GUEST_FAULT = "guest_fault"  # the guest faulted fatally
    HOST_ERROR = "host_error"  # a device model or the hypervisor failed
    BAD_INPUT = "bad_input"  # the configuration or an input file was unusable
    STOPPED = "stopped"  # the host stopped it (API stop, cancellation)


# The exit status of `hv run` (and StopInfo.exit_code) for each kind. A guest's own failure
# code (the test finisher's) is kept when it is a valid non-zero status, else this table's.
EXIT_STATUS: dict[StopKind, int] = {
    StopKind.POWEROFF: 0,
    StopKind.FAILURE: 1,
    StopKind.GUEST_FAULT: 2,
    StopKind.HOST_ERROR: 3,
    StopKind.BAD_INPUT: 4,
    StopKind.STOPPED: 130,
}


@dataclass(frozen=True)
class StopInfo:
    kind: StopKind
    reason: str
    exit_code: int
    detail: str = ""  # a traceback, for host errors

    @classmethod
    def make(
        cls, kind: StopKind, reason: str, detail: str = "", guest_code: int | None = None
    ) -> StopInfo:
        code = EXIT_STATUS[kind]
        if kind is StopKind.FAILURE and guest_code is not None and 0 < guest_code < 256:
            code = guest_code
        return cls(kind, reason, code, detail)
