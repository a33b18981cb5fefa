"""The Unicorn ABI hv uses: the only module that imports ``unicorn``.

It loads the library ``hv.engine._select`` chose (the fast engine unless HV_ENGINE=stock),
and declares the raw ``libunicorn`` entry points the vCPU calls through ctypes (the
high-level binding costs about 2 us per register; a raw call a fraction of that), the
fast engine's extensions when the library has them, and the riscv register ids.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

from hv.engine import _select

# The binding loads libunicorn when first imported: hv's fast engine, unless HV_ENGINE=stock.
with _select.library_for_import():
    import unicorn as _unicorn
    import unicorn.riscv_const as rc
    import unicorn.unicorn_py3.unicorn as _ucmod


# The binding's own annotations are partial; this module types its edges itself.
unicorn: Any = _unicorn

# --- raw libunicorn entry points --------------------------------------------------------------

_lib = _ucmod.uclib
_reg_read = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)(
    ("uc_reg_read", _lib)
)
_reg_write = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)(
    ("uc_reg_write", _lib)
)
_BATCH = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_int,
)
_reg_read_batch = _BATCH(("uc_reg_read_batch", _lib))
_reg_write_batch = _BATCH(("uc_reg_write_batch", _lib))
# The fast engine's time slice (hv/engine/patches/0002): absent from a stock library.
FAST_ENGINE = hasattr(_lib, "uc_hv_slice")
_hv_slice: Any = None
if FAST_ENGINE:
    _hv_slice = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p))(
        ("uc_hv_slice", _lib)
    )


class _HvSlice(ctypes.Structure):
    _fields_ = (("budget", ctypes.c_int64), ("stops", ctypes.c_uint64))


def library_path() -> str:
    """The file of the libunicorn this process runs on."""
    return str(getattr(_lib, "_name", "?"))


def unicorn_version() -> str:
    return str(unicorn.__version__)


_set_time = None
if hasattr(_lib, "uc_hv_set_time"):  # the fast engine's patch 0003
    _set_time = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
        ("uc_hv_set_time", _lib)
    )
_set_parallel = None
if hasattr(_lib, "uc_hv_set_parallel"):  # the fast engine's patch 0004
    _set_parallel = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)(
        ("uc_hv_set_parallel", _lib)
    )
_set_shared_code = None
if hasattr(_lib, "uc_hv_set_shared_code"):  # the fast engine's patch 0005
    _set_shared_code = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)(
        ("uc_hv_set_shared_code", _lib)
    )

# The native console buffer: its size, and how full it gets before the slice ends to hand
# the bytes over (the Python console path hands over at the same mark).
NATIVE_CONSOLE_CAP = 1 << 16
NATIVE_CONSOLE_STOP = 4096


class _Clock(ctypes.Structure):  # hv_clock in _native/vcpu.c
    _fields_ = (
        ("offset_ns", ctypes.c_int64),
        ("hz", ctypes.c_uint64),
        ("reads", ctypes.c_uint64),
        ("exits", ctypes.c_void_p),
        ("virt", ctypes.c_int64),
        ("base_ps", ctypes.c_int64),
        ("ps_per_insn", ctypes.c_int64),
        ("budget0", ctypes.c_int64),
        ("budget", ctypes.c_void_p),
        ("limit", ctypes.c_uint64),
        ("clamped", ctypes.c_uint64),
        ("uc", ctypes.c_void_p),
        ("reg_mip", ctypes.c_int32),
        ("fired", ctypes.c_int32),
    )


class _Exits(ctypes.Structure):  # hv_exits in _native/vcpu.c
    _fields_ = (
        ("slow", ctypes.c_void_p),
        ("slow_user", ctypes.c_void_p),
        ("reg_read", ctypes.c_void_p),
        ("reg_write", ctypes.c_void_p),
        ("reg_priv", ctypes.c_int32),
        ("reg_a0", ctypes.c_int32),
        ("reg_a7", ctypes.c_int32),
        ("hold", ctypes.c_int32),
        ("buf", ctypes.c_void_p),
        ("len", ctypes.c_uint32),
        ("cap", ctypes.c_uint32),
        ("stop_at", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("budget", ctypes.c_void_p),
        ("unspent", ctypes.c_int64),
        ("putchar", ctypes.c_uint64),
        ("deadline_ns", ctypes.c_int64),
        ("late_stops", ctypes.c_uint64),
        ("event", ctypes.c_int32),
        ("late", ctypes.c_int32),
    )


_emu_start = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint64,
    ctypes.c_uint64,
    ctypes.c_uint64,
    ctypes.c_size_t,
)(("uc_emu_start", _lib))

_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
_MMIO_READ_CB = ctypes.CFUNCTYPE(
    ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_void_p
)
_MMIO_WRITE_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_uint64, ctypes.c_void_p
)


class _Slice(ctypes.Structure):
    _fields_ = (
        ("budget", ctypes.c_int64),
        ("request", ctypes.c_int32),
        ("stopped", ctypes.c_int32),
        ("stop", ctypes.c_void_p),
        ("executed", ctypes.c_uint64),
    )


# The structs shared with _native/vcpu.c, by their C names (tests/test_native_exits.py checks
# these layouts against the ones the compiler gave the C side: _native.native_layouts()).
NATIVE_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "hv_slice": _Slice,
    "hv_exits": _Exits,
    "hv_clock": _Clock,
}


def struct_layouts() -> dict[str, int]:
    """The ctypes side's layouts, keyed as ``native_layouts``: sizes and field offsets."""
    out: dict[str, int] = {}
    for cname, struct in NATIVE_STRUCTS.items():
        out[cname] = ctypes.sizeof(struct)
        for fname, *_ in struct._fields_:
            out[f"{cname}.{fname}"] = getattr(struct, fname).offset
    return out


class _Batch:
    """A fixed list of registers read or written with one call."""

    def __init__(self, regs: Sequence[int]) -> None:
        n = len(regs)
        self.n = n
        self.ids = (ctypes.c_int * n)(*regs)
        self.vals = (ctypes.c_uint64 * n)()
        base = ctypes.addressof(self.vals)
        self.ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])


def _reg(name: str) -> int:
    return int(getattr(rc, f"UC_RISCV_REG_{name}"))


_X = [_reg(f"X{i}") for i in range(32)]
_PC = _reg("PC")
_WFI = 0x10500073
_PRIV = _reg("PRIV")
_MIP = _reg("MIP")
_SSTATUS = _reg("SSTATUS")
_STVEC = _reg("STVEC")
_SATP = _reg("SATP")
