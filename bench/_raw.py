"""A bare Unicorn running a bundled guest: the reference the benchmarks compare hv against.

RAM is mapped, the guest is entered in S-mode with a device tree (for its bootargs), and a
minimal SBI stub written the obvious way with the high-level binding answers the guest's
calls: what someone would write without hv. Benchmarks add their own hooks on top.

It runs on the same libunicorn as hv in this process: hv's machine is loaded first, so the
engine HV_ENGINE chooses (the fast one by default, see hv/engine) is the one loaded, and not
the wheel's stock library that a bare ``import unicorn`` would load.
"""

from __future__ import annotations

from typing import Any

import hv
from hv.board import DeviceTreeSpec, build_device_tree, load_kernel
from hv.hw import _platform as P

# First: loading hv's machine loads the libunicorn HV_ENGINE chooses (hv/engine); unicorn
# imported after that is the same library, already loaded.
_ = hv.VmConfig

import unicorn  # noqa: E402  # isort: skip
import unicorn.riscv_const as rc  # noqa: E402  # isort: skip

RAM_SIZE = 128 << 20
_unicorn: Any = unicorn
_A = [getattr(rc, f"UC_RISCV_REG_A{i}") for i in range(8)]
DBCN, SRST, BASE, TIME = 0x4442434E, 0x53525354, 0x10, 0x54494D45


class RawGuest:
    def __init__(self, elf: bytes, bootargs: str = "") -> None:
        uc: Any = _unicorn.Uc(_unicorn.UC_ARCH_RISCV, _unicorn.UC_MODE_RISCV64)
        self.uc = uc
        uc.mem_map(P.RAM_BASE, RAM_SIZE)
        k = load_kernel(elf, P.RAM_BASE, RAM_SIZE, uc.mem_write)
        dtb = build_device_tree(DeviceTreeSpec(P.RAM_BASE, RAM_SIZE, bootargs=bootargs))
        dtb_addr = P.RAM_BASE + RAM_SIZE - (2 << 20)
        uc.mem_write(dtb_addr, dtb)
        self.entry = k.entry
        self.out = bytearray()
        self.done = False
        self.on_sbi: dict[int, Any] = {}  # eid -> fn(uc, fid, args) -> (a0, a1)
        self.on_exception: dict[int, Any] = {}  # cause -> fn(uc)
        uc.hook_add(_unicorn.UC_HOOK_INTR, self._intr)
        uc.reg_write(_A[0], 0)
        uc.reg_write(_A[1], dtb_addr)
        uc.reg_write(rc.UC_RISCV_REG_MSTATUS, 1 << 13)
        uc.reg_write(rc.UC_RISCV_REG_MIDELEG, 0x222)
        uc.reg_write(rc.UC_RISCV_REG_PRIV, 1)
        self.pc = self.entry

    def _intr(self, uc: Any, intno: int, ud: Any) -> None:
        if intno != 8:
            self.on_exception[intno](uc)
            return
        eid, fid = uc.reg_read(_A[7]), uc.reg_read(_A[6])
        handler = self.on_sbi.get(eid)
        r = handler(uc, fid) if handler else self._sbi(uc, eid, fid)
        uc.reg_write(_A[0], r[0] & (2**64 - 1))
        uc.reg_write(_A[1], r[1])

    def _sbi(self, uc: Any, eid: int, fid: int) -> tuple[int, int]:
        if eid == BASE:
            return (0, 0x2000000 if fid == 0 else 1 if fid == 3 else 0)
        if eid == DBCN and fid == 0:
            n = uc.reg_read(_A[0])
            self.out += uc.mem_read(uc.reg_read(_A[1]), n)
            return (0, n)
        if (eid == DBCN and fid == 2) or eid == 1:
            self.out.append(uc.reg_read(_A[0]) & 0xFF)
            return (0, 0)
        if eid == SRST:
            self.done = True
            uc.emu_stop()
            return (0, 0)
        return (-2, 0)

    def run(self) -> None:
        """Run to the guest's shutdown: one emu_start unless a hook stops the engine."""
        while not self.done:
            self.uc.emu_start(self.pc, 0)
            self.pc = self.uc.reg_read(rc.UC_RISCV_REG_PC)
            self.after_stop()

    def after_stop(self) -> None:
        """Called when the engine stops before shutdown (wfi, or a hook's emu_stop)."""
