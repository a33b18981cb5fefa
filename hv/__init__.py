"""hvfabric: an event-driven riscv64 hypervisor in Python.

Layering (each layer uses only the ones above it):

- ``_errors``, ``_platform``: the error classes and the hv-virt memory map.
- ``_memory``, ``_bus``, ``_traps``, ``_sbi``, ``_plic``, ``_uart``, ``_testdev``, ``_fdt``,
  ``_loader``: sans-IO cores, testable with bytes and plain calls.
- ``_vcpu``: the only module that imports Unicorn.
- ``_machine``: the board: devices + firmware + vCPU, one slice at a time (synchronous).
- ``_vm``, ``_console``: the machine as a trio task with an async console.
- ``_cli``, ``_guests``, ``_zig``: the ``hv`` command, bundled guests, the zig build cache.
"""

from hv._console import Console
from hv._errors import ConfigError, GuestError, HostError, HvError, StateError
from hv._guests import guest_path
from hv._machine import StopInfo, StopKind
from hv._vm import Vm, VmConfig, VmState, open_vm, run_vm

__all__ = [
    "ConfigError",
    "Console",
    "GuestError",
    "HostError",
    "HvError",
    "StateError",
    "StopInfo",
    "StopKind",
    "Vm",
    "VmConfig",
    "VmState",
    "guest_path",
    "open_vm",
    "run_vm",
]

__version__ = "0.1.0"
