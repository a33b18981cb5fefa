"""The cost of one exit, in microseconds: SBI call, MMIO access, rdtime, forwarded trap, timer
interrupt. Each is timed under hv and against a reference measured in the same run.

The bundled `exits` guest repeats one kind of exit n times; its cost is
(time(kind) - time(none)) / n, so the guest's own loop and boot cancel out. The reference is the
same guest on a bare Unicorn (bench/_raw.py) with the handler written the obvious way with the
high-level binding: for SBI a four-register stub, for MMIO a binding callback, for rdtime and
traps a hook that decodes and forwards with reg_read/reg_write, for the timer an emu_stop in the
hook and a mip write between emu_start calls.

    python bench/exits.py [--n 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import trio
import unicorn
import unicorn.riscv_const as rc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hv
from bench._raw import TIME, RawGuest
from hv import _guests, _log

KINDS = ("sbi", "mmio", "rdtime", "trap", "timer")
R = rc
_MASK = 2**64 - 1


async def _hv_once(elf: bytes, kind: str, n: int) -> float:
    cfg = hv.VmConfig(kernel=elf, cmdline=f"kind={kind} n={n}", name=kind)
    async with trio.open_nursery() as nursery:
        t = time.perf_counter()  # the VM runs its first slice inside start()
        vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
        info = await vm.wait()
        dt = time.perf_counter() - t
    if info.exit_code != 0 or b"exits: done" not in vm.console.transcript:
        raise SystemExit(f"hv {kind}: {info} {vm.console.transcript!r}")
    return dt


def _csr(uc: Any, reg: int, value: int | None = None) -> int:
    """Read or write a CSR from the binding, via M-mode (as the naive reference must)."""
    old = uc.reg_read(R.UC_RISCV_REG_PRIV)
    uc.reg_write(R.UC_RISCV_REG_PRIV, 3)
    if value is None:
        value = uc.reg_read(reg)
    else:
        uc.reg_write(reg, value)
    uc.reg_write(R.UC_RISCV_REG_PRIV, old)
    return value


def _raw_guest(elf: bytes, kind: str, n: int) -> RawGuest:
    g = RawGuest(elf, f"kind={kind} n={n}")
    uc = g.uc
    if kind == "mmio":
        uc.mmio_map(0x1000_0000, 0x1000, lambda uc, off, size, ud: 0x60, None, None, None)

    def rdtime(uc: Any) -> None:
        pc = uc.reg_read(R.UC_RISCV_REG_PC) - 4
        insn = int.from_bytes(uc.mem_read(pc, 4), "little")
        rd = (insn >> 7) & 31
        uc.reg_write(R.UC_RISCV_REG_X0 + rd, time.monotonic_ns() // 100)
        uc.reg_write(R.UC_RISCV_REG_PC, pc + 4)

    def forward(uc: Any) -> None:
        pc = uc.reg_read(R.UC_RISCV_REG_PC) - 4
        insn = int.from_bytes(uc.mem_read(pc, 4), "little")
        if insn & 0xFFF0707F == 0xC0102073:  # the runtime's rdtime
            rdtime(uc)
            return
        sstatus = uc.reg_read(R.UC_RISCV_REG_SSTATUS)
        sie = (sstatus >> 1) & 1
        sstatus = (sstatus & ~0x122) | (sie << 5) | (1 << 8)
        uc.reg_write(R.UC_RISCV_REG_SEPC, pc)
        uc.reg_write(R.UC_RISCV_REG_SCAUSE, 2)
        uc.reg_write(R.UC_RISCV_REG_STVAL, 0)
        uc.reg_write(R.UC_RISCV_REG_SSTATUS, sstatus)
        uc.reg_write(R.UC_RISCV_REG_PC, uc.reg_read(R.UC_RISCV_REG_STVEC) & ~3)

    g.on_exception[2] = forward
    pending = [False]

    def set_timer(uc: Any, fid: int) -> tuple[int, int]:
        deadline = uc.reg_read(R.UC_RISCV_REG_A0)
        mip = _csr(uc, R.UC_RISCV_REG_MIP) & ~(1 << 5)
        _csr(uc, R.UC_RISCV_REG_MIP, mip)
        if deadline <= time.monotonic_ns() // 100:
            pending[0] = True
            uc.emu_stop()
        return (0, 0)

    def after_stop() -> None:
        if pending[0]:
            _csr(uc, R.UC_RISCV_REG_MIP, _csr(uc, R.UC_RISCV_REG_MIP) | (1 << 5))
            pending[0] = False

    g.on_sbi[TIME] = set_timer
    g.after_stop = after_stop  # type: ignore[method-assign]
    return g


def _raw_once(elf: bytes, kind: str, n: int) -> float:
    g = _raw_guest(elf, kind, n)
    t = time.perf_counter()
    g.run()
    dt = time.perf_counter() - t
    if b"exits: done" not in g.out:
        raise SystemExit(f"raw {kind}: {g.out!r}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="exits per run (default 20000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, best taken (default 3)")
    args = ap.parse_args()
    _log.configure("error")
    elf = _guests.build_guest("exits").read_bytes()
    n = args.n

    def best(fn: Any, kind: str) -> float:
        return min(fn(elf, kind, n) for _ in range(args.repeat))

    hv_base = best(lambda e, k, n: trio.run(_hv_once, e, k, n), "none")
    raw_base = best(_raw_once, "none")
    print(f"exit costs, n={n}, best of {args.repeat} (µs per exit; ratio = hv / reference)")
    print(f"{'kind':8} {'hv':>9} {'reference':>10} {'ratio':>7}")
    for kind in KINDS:
        t_hv = (best(lambda e, k, n: trio.run(_hv_once, e, k, n), kind) - hv_base) / n
        t_raw = (best(_raw_once, kind) - raw_base) / n
        print(f"{kind:8} {t_hv * 1e6:9.2f} {t_raw * 1e6:10.2f} {t_hv / t_raw:7.2f}")


if __name__ == "__main__":
    _ = unicorn
    main()
