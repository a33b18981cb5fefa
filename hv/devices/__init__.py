"""Platform devices, sans-IO: the PLIC (``_plic``), the 16550A UART (``_uart``) and the
sifive test finisher (``_finisher``). They see offsets, an IRQ line and callbacks, never the vCPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.devices._finisher import Finisher, FinishKind
    from hv.devices._plic import Plic
    from hv.devices._uart import Uart16550


# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "FinishKind": "hv.devices._finisher",
    "Finisher": "hv.devices._finisher",
    "Plic": "hv.devices._plic",
    "Uart16550": "hv.devices._uart",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _FACE, globals(), name)


__all__ = ["FinishKind", "Finisher", "Plic", "Uart16550"]
