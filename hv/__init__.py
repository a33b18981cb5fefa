"""hvfabric: an event-driven riscv64 hypervisor in Python.

Layering (each layer uses only the ones above it):

- ``_errors``, ``_log``: the error classes and logging.
- ``riscv``: instruction decoding, the guest page walk and the SBI (sans-IO).
- ``devices``, ``virtio``: the devices guests see (sans-IO: offsets, IRQ lines, guest memory).
- ``board``: the hv-virt platform map, guest memory, bus, device tree, loader, and the machine
  that wires devices, firmware and the vCPU (one slice at a time, synchronous).
- ``engine``: the vCPU (``engine._vcpu``, the only module that imports Unicorn) and which
  libunicorn it runs on (the fast engine, patched and built once, or the wheel's stock one).
- ``_vm``, ``_console``: the machine as a trio task with an async console.
- ``lab``: several VMs and switches (to come); ``build``: zig cache, bundled guests, Linux
  image; ``cli``: the ``hv`` command.
"""

from typing import TYPE_CHECKING, Any

from hv._disk import Disk
from hv._errors import ConfigError, GuestError, HostError, HvError, StateError
from hv._nic import Nic
from hv._status import EXIT_STATUS, StopInfo, StopKind
from hv.build._guests import guest_path

if TYPE_CHECKING:
    from hv._console import Console
    from hv._vm import Vm, VmConfig, VmState, open_vm, run_vm
    from hv.lab._api import Lab, open_lab

# The machine's names load the CPU engine (which may build it on first use), so they are
# imported on first access: `import hv` alone, or the `hv` command's other actions, do not.
_LAZY = {
    "Console": "hv._console",
    "Vm": "hv._vm",
    "VmConfig": "hv._vm",
    "VmState": "hv._vm",
    "open_vm": "hv._vm",
    "Lab": "hv.lab._api",
    "open_lab": "hv.lab._api",
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
    "EXIT_STATUS",
    "ConfigError",
    "Console",
    "Disk",
    "GuestError",
    "HostError",
    "HvError",
    "Lab",
    "Nic",
    "StateError",
    "StopInfo",
    "StopKind",
    "Vm",
    "VmConfig",
    "VmState",
    "guest_path",
    "open_lab",
    "open_vm",
    "run_vm",
]

__version__ = "0.1.0"
