"""The RISC-V architecture as the hypervisor sees it, sans-IO: instruction decoding and the
guest page walk (``_traps``), and the SBI, the hypervisor's hypercall layer (``_sbi``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.riscv._sbi import (
        ERR_ALREADY_AVAILABLE,
        ERR_INVALID_PARAM,
        HSM_START_PENDING,
        HSM_STARTED,
        HSM_STOPPED,
        HSM_SUSPENDED,
        LEGACY_PUTCHAR,
        SUCCESS,
        ResetKind,
        Sbi,
    )


# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "ERR_ALREADY_AVAILABLE": "hv.riscv._sbi",
    "ERR_INVALID_PARAM": "hv.riscv._sbi",
    "HSM_START_PENDING": "hv.riscv._sbi",
    "HSM_STARTED": "hv.riscv._sbi",
    "HSM_STOPPED": "hv.riscv._sbi",
    "HSM_SUSPENDED": "hv.riscv._sbi",
    "SUCCESS": "hv.riscv._sbi",
    "LEGACY_PUTCHAR": "hv.riscv._sbi",
    "ResetKind": "hv.riscv._sbi",
    "Sbi": "hv.riscv._sbi",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _FACE, globals(), name)


__all__ = [
    "ERR_ALREADY_AVAILABLE",
    "ERR_INVALID_PARAM",
    "HSM_STARTED",
    "HSM_START_PENDING",
    "HSM_STOPPED",
    "HSM_SUSPENDED",
    "LEGACY_PUTCHAR",
    "SUCCESS",
    "ResetKind",
    "Sbi",
]
