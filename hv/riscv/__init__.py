"""The RISC-V architecture as the hypervisor sees it, sans-IO: instruction decoding and the
guest page walk (``_traps``), and the SBI, the hypervisor's hypercall layer (``_sbi``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.riscv._sbi import LEGACY_PUTCHAR, ResetKind, Sbi


# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "LEGACY_PUTCHAR": "hv.riscv._sbi",
    "ResetKind": "hv.riscv._sbi",
    "Sbi": "hv.riscv._sbi",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _FACE, globals(), name)


__all__ = ["LEGACY_PUTCHAR", "ResetKind", "Sbi"]
