"""The board's vocabulary, below everything that uses it: guest memory and the DMA accessor
(``_memory``), the MMIO bus and IRQ lines (``_bus``), the device protocol (``_device``), the
platform map (``_platform``) and the guest clock (``_clock``). Devices, the RISC-V layer, the
engine and virtio depend on it; the board assembles them on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.hw._bus import Bus, IrqLine
    from hv.hw._clock import DEFAULT_MIPS, Clock, TimeSource, VirtualClock
    from hv.hw._counters import Counters
    from hv.hw._device import AsyncWork, Completion, Device, DeviceContext, DeviceTime
    from hv.hw._memory import GuestMemory
    from hv.hw._parallel import GATE, Gate, Pool, default_jobs
    from hv.hw._platform import (
        DEFAULT_QUANTUM,
        KERNEL_ADDR,
        PLIC_BASE,
        PLIC_NUM_SOURCES,
        PLIC_SIZE,
        QUANTUM_MAX,
        QUANTUM_MIN,
        RAM_BASE,
        TEST_BASE,
        TEST_SIZE,
        TIMEBASE_HZ,
        UART0_BASE,
        UART0_IRQ,
        UART0_SIZE,
        VIRTIO_IRQ_BASE,
        VIRTIO_SLOTS,
        VIRTIO_STRIDE,
        virtio_slot_base,
    )
    from hv.hw._snapfile import SnapshotFile, write_snapshot
    from hv.hw._state import Fields, State, decode_state, encode_state


# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "decode_state": "hv.hw._state",
    "encode_state": "hv.hw._state",
    "write_snapshot": "hv.hw._snapfile",
    "SnapshotFile": "hv.hw._snapfile",
    "State": "hv.hw._state",
    "Fields": "hv.hw._state",
    "AsyncWork": "hv.hw._device",
    "Bus": "hv.hw._bus",
    "Clock": "hv.hw._clock",
    "Completion": "hv.hw._device",
    "Counters": "hv.hw._counters",
    "DEFAULT_MIPS": "hv.hw._clock",
    "DEFAULT_QUANTUM": "hv.hw._platform",
    "Device": "hv.hw._device",
    "DeviceContext": "hv.hw._device",
    "DeviceTime": "hv.hw._device",
    "GATE": "hv.hw._parallel",
    "Gate": "hv.hw._parallel",
    "GuestMemory": "hv.hw._memory",
    "IrqLine": "hv.hw._bus",
    "KERNEL_ADDR": "hv.hw._platform",
    "PLIC_BASE": "hv.hw._platform",
    "Pool": "hv.hw._parallel",
    "PLIC_NUM_SOURCES": "hv.hw._platform",
    "PLIC_SIZE": "hv.hw._platform",
    "QUANTUM_MAX": "hv.hw._platform",
    "QUANTUM_MIN": "hv.hw._platform",
    "RAM_BASE": "hv.hw._platform",
    "TEST_BASE": "hv.hw._platform",
    "TEST_SIZE": "hv.hw._platform",
    "TIMEBASE_HZ": "hv.hw._platform",
    "TimeSource": "hv.hw._clock",
    "UART0_BASE": "hv.hw._platform",
    "UART0_IRQ": "hv.hw._platform",
    "UART0_SIZE": "hv.hw._platform",
    "VIRTIO_IRQ_BASE": "hv.hw._platform",
    "VIRTIO_SLOTS": "hv.hw._platform",
    "VIRTIO_STRIDE": "hv.hw._platform",
    "VirtualClock": "hv.hw._clock",
    "default_jobs": "hv.hw._parallel",
    "virtio_slot_base": "hv.hw._platform",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _FACE, globals(), name)


__all__ = [
    "DEFAULT_MIPS",
    "DEFAULT_QUANTUM",
    "GATE",
    "KERNEL_ADDR",
    "PLIC_BASE",
    "PLIC_NUM_SOURCES",
    "PLIC_SIZE",
    "QUANTUM_MAX",
    "QUANTUM_MIN",
    "RAM_BASE",
    "TEST_BASE",
    "TEST_SIZE",
    "TIMEBASE_HZ",
    "UART0_BASE",
    "UART0_IRQ",
    "UART0_SIZE",
    "VIRTIO_IRQ_BASE",
    "VIRTIO_SLOTS",
    "VIRTIO_STRIDE",
    "AsyncWork",
    "Bus",
    "Clock",
    "Completion",
    "Counters",
    "Device",
    "DeviceContext",
    "DeviceTime",
    "Fields",
    "Gate",
    "GuestMemory",
    "IrqLine",
    "Pool",
    "SnapshotFile",
    "State",
    "TimeSource",
    "VirtualClock",
    "decode_state",
    "default_jobs",
    "encode_state",
    "virtio_slot_base",
    "write_snapshot",
]
