"""hvfabric: an event-driven riscv64 hypervisor in Python.

Layering (each layer uses only the ones above it):

- ``_errors``, ``_platform``: the error classes and the hv-virt memory map.
- ``_memory``, ``_bus``, ``_traps``, ``_sbi``, ``_plic``, ``_uart``, ``_testdev``, ``_fdt``,
  ``_loader``: sans-IO cores, testable with bytes and plain calls.
- ``engine``: which libunicorn runs the guests, and the build of hv's fast (patched) one.
- ``_vcpu``: the only module that imports Unicorn.
- ``_machine``: the board: devices + firmware + vCPU, one slice at a time (synchronous).
- ``_vm``, ``_console``: the machine as a trio task with an async console.
- ``_cli``, ``_guests``, ``_zig``: the ``hv`` command, bundled guests, the zig build cache.
"""

from typing import TYPE_CHECKING, Any

from hv._errors import ConfigError, GuestError, HostError, HvError, StateError
from hv._guests import guest_path

if TYPE_CHECKING:
    from hv._console import Console
    from hv._machine import StopInfo, StopKind
    from hv._vm import Vm, VmConfig, VmState, open_vm, run_vm

# The machine's names load the CPU engine (which may build it on first use), so they are
# imported on first access: `import hv` alone, or the `hv` command's other actions, do not.
_LAZY = {
    "Console": "hv._console",
    "StopInfo": "hv._machine",
    "StopKind": "hv._machine",
    "Vm": "hv._vm",
    "VmConfig": "hv._vm",
    "VmState": "hv._vm",
    "open_vm": "hv._vm",
    "run_vm": "hv._vm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hv' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
