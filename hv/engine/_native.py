"""The vCPU's native helpers (``_native/vcpu.c``), built once with zig and cached.

The stock engine's slice-ending block hook, the SBI console fast path and the clock behind
the time CSR. Without zig they are unavailable and the vCPU falls back to pure-Python paths.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

from hv._errors import HostError
from hv._log import get_logger
from hv.build import _zig

log = get_logger("hv.vcpu")

_native_hook: ctypes.CDLL | None = None


def _load_native_hook() -> ctypes.CDLL | None:
    """Build (once, cached) and load the native block hook; None if it can't be built."""
    global _native_hook
    if _native_hook is not None:
        return _native_hook
    src = Path(__file__).parent / "_native" / "vcpu.c"
    flags = ["-shared", "-fPIC", "-O2", platform.machine()]

    def build(out: Path) -> None:
        _zig.run_zig(["cc", "-shared", "-fPIC", "-O2", "-o", str(out), str(src)])

    try:
        path = _zig.cached_build("libhvnative.so", [src], flags, build)
        _native_hook = ctypes.CDLL(str(path))
    except (HostError, OSError) as e:
        log.warning("native vCPU helpers unavailable; slicing by instruction count", err=str(e))
        return None
    return _native_hook


class _LayoutEntry(ctypes.Structure):  # hv_layout_entry in _native/vcpu.c
    _fields_ = (("name", ctypes.c_char_p), ("value", ctypes.c_uint64))


def native_layouts(native: ctypes.CDLL) -> dict[str, int]:
    """The C side's struct layouts (``hv_layouts_table`` in ``_native/vcpu.c``): ``"struct"``
    for a size, ``"struct.field"`` for an offset; ``_abi.struct_layouts()`` is the other side."""
    table = ctypes.CFUNCTYPE(ctypes.POINTER(_LayoutEntry))(("hv_layouts_table", native))()
    out: dict[str, int] = {}
    i = 0
    while (name := table[i].name) is not None:
        out[name.decode()] = int(table[i].value)
        i += 1
    return out
