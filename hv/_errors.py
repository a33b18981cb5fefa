"""One root error class; each error says whose fault it is.

- ``GuestError``: the guest did something wrong (bad address, fatal fault). The VM stops; the
  hypervisor and the other VMs go on.
- ``HostError``: the hypervisor or its environment failed (a device model bug, a missing tool).
- ``ConfigError``: the user's input (command line, config, kernel file) is unusable.
- ``StateError``: an API call that the VM's current state does not allow.
"""

from __future__ import annotations


class HvError(Exception):
    """Root of every error hvfabric raises on purpose."""


class GuestError(HvError):
    """The guest's fault: a bad address, a malformed request, a fatal trap."""


class HostError(HvError):
    """The host's fault: a device model bug, a failed tool, an I/O error."""


class ConfigError(HvError):
    """The user's input cannot be used: say what is wrong and what to do."""


class StateError(HvError):
    """The VM is not in a state that allows this call."""

    def __init__(self, state: object, required: str) -> None:
        super().__init__(f"VM is {state}; this needs it to be {required}")
        self.state = state
        self.required = required


class SnapshotError(ConfigError):
    """A snapshot file cannot be used (truncated, corrupt, foreign, or from an hv that
    writes a format this one does not read): the message says which part and why."""
