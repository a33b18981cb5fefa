"""The hv-virt board: the platform map (``_platform``), guest memory (``_memory``), the MMIO
bus (``_bus``), the device tree (``_fdt``), the kernel loader (``_loader``) and the machine
that wires devices, firmware and the vCPU together (``_machine``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.board._fdt import DeviceTreeSpec, build_device_tree
    from hv.board._loader import NotAKernel, is_linux_image, load_file, load_kernel
    from hv.board._machine import Machine, MachineConfig, check_smp, device_kind


# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "device_kind": "hv.board._machine",
    "DeviceTreeSpec": "hv.board._fdt",
    "Machine": "hv.board._machine",
    "MachineConfig": "hv.board._machine",
    "NotAKernel": "hv.board._loader",
    "build_device_tree": "hv.board._fdt",
    "check_smp": "hv.board._machine",
    "is_linux_image": "hv.board._loader",
    "load_file": "hv.board._loader",
    "load_kernel": "hv.board._loader",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _FACE, globals(), name)


__all__ = [
    "DeviceTreeSpec",
    "Machine",
    "MachineConfig",
    "NotAKernel",
    "build_device_tree",
    "check_smp",
    "device_kind",
    "is_linux_image",
    "load_file",
    "load_kernel",
]
