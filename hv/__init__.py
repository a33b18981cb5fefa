"""hvfabric: an event-driven riscv64 hypervisor in Python.

Layers, lowest first (a module imports only from its own layer or a lower one; no import
cycles between packages; tests/test_layers.py checks this very list, ``LAYERS``):

1. ``_errors``, ``_status``, ``_log``, ``_lazy``: errors, exit statuses, logging, lazy faces.
2. ``hw``: the board's vocabulary: guest memory and the DMA accessor, the MMIO bus and IRQ
   lines, the device protocol and declared counters, the hv-virt platform map, the clock.
3. ``riscv`` (decoding, the guest page walk, the SBI: sans-IO), ``devices`` (PLIC, UART,
   finisher: sans-IO), ``build`` (zig cache, bundled guests, Linux image).
4. ``engine``: the vCPU (``engine._vcpu``; ``engine._abi`` is the only module that imports
   Unicorn) and which libunicorn it runs on (the fast engine, patched and built once, or the
   wheel's stock one).
5. ``netfabric``, ``blockdev`` (separate packages): the network and the disks, no hv at all.
6. ``virtio``: the virtio devices guests see (over ``blockdev``; net over frames only).
7. ``board``: the machine assembled: devices, firmware and the vCPU, one slice at a time.
8. ``_vm``, ``_console``, ``_cores``, ``_disk``, ``_exec``, ``_nic``, ``_snapshot``, ``_timeline``,
   ``_values``: the machine as a trio task with an async console, its disks and NICs,
   commands run in it through its guest agent, the virtual-time timeline that drives a lab's
   VMs, the real-time batches of slices on the host's cores, and the value parsers (sizes,
   durations, MACs...).
9. ``lab`` (several VMs and switches, ``hv up``), ``aio`` (the asyncio face).
10. this package's names, ``cli`` (the ``hv`` command), ``pytest_plugin``.
"""

from typing import TYPE_CHECKING, Any

from hv._disk import Disk
from hv._errors import ConfigError, GuestError, HostError, HvError, SnapshotError, StateError
from hv._lazy import face_attribute
from hv._nic import Nic
from hv._status import EXIT_STATUS, StopInfo, StopKind
from hv.build import guest_path

if TYPE_CHECKING:
    from hv._console import Console
    from hv._exec import AgentUnavailable, CommandFailed, ExecError, ExecResult, ExecTimeout
    from hv._snapshot import SnapshotInfo
    from hv._vm import Vm, VmConfig, VmState, open_vm, restore, restore_disks, run_vm
    from hv.lab import Lab, open_lab

# The machine's names load the CPU engine (which may build it on first use), so they are
# imported on first access: `import hv` alone, or the `hv` command's other actions, do not.
_LAZY = {
    "AgentUnavailable": "hv._exec",
    "CommandFailed": "hv._exec",
    "ExecError": "hv._exec",
    "ExecResult": "hv._exec",
    "ExecTimeout": "hv._exec",
    "Console": "hv._console",
    "Vm": "hv._vm",
    "VmConfig": "hv._vm",
    "VmState": "hv._vm",
    "open_vm": "hv._vm",
    "Lab": "hv.lab",
    "open_lab": "hv.lab",
    "run_vm": "hv._vm",
    "restore": "hv._vm",
    "restore_disks": "hv._vm",
    "SnapshotInfo": "hv._snapshot",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _LAZY, globals(), name)


__all__ = [
    "EXIT_STATUS",
    "AgentUnavailable",
    "CommandFailed",
    "ConfigError",
    "Console",
    "Disk",
    "ExecError",
    "ExecResult",
    "ExecTimeout",
    "GuestError",
    "HostError",
    "HvError",
    "Lab",
    "Nic",
    "SnapshotError",
    "SnapshotInfo",
    "StateError",
    "StopInfo",
    "StopKind",
    "Vm",
    "VmConfig",
    "VmState",
    "guest_path",
    "open_lab",
    "open_vm",
    "restore",
    "restore_disks",
    "run_vm",
]

__version__ = "0.1.0"
