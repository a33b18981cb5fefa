"""The vCPU: one riscv64 hart on Unicorn (which it reaches through ``_abi``, the only
module that imports ``unicorn``).

Theory of operation
-------------------
Unicorn 2.1.4 runs the guest; this module turns what Unicorn does into what a RISC-V hart with
M-mode firmware would do (the Unicorn behaviour this relies on is below; what hvfabric's
patches change, in hv/engine/patches/README.md):

* The guest runs in S or U mode. The hypervisor is its M-mode firmware.
* Unicorn never delivers synchronous exceptions: it calls our INTR hook with the cause and
  ``pc = faulting pc + 4``. The hook finishes the job *inside* the engine, without stopping it:
  an S-mode ``ecall`` is an SBI call, an illegal ``rdtime`` is emulated, everything else is
  forwarded to the guest's ``stvec`` by writing the S-mode trap CSRs and the pc. That keeps an
  exit in the low microseconds.
* Interrupts are the engine's: the machine writes SSIP/STIP/SEIP into ``mip`` between slices and
  the guest takes them through its own vector.
* A slice ends at a translated-block entry, before the block's first instruction, when its
  budget is spent or when the host asked for a stop. Stopping anywhere else can replay an
  instruction; stopping there cannot. ``wfi`` ends a slice on its own. On the fast engine
  (``hv/engine``) the engine itself charges each block's instruction count to the slice's
  budget in its inline block-entry check; on a stock Unicorn the native block hook
  (``_native/vcpu.c``) does it with code bytes, and without zig, ``emu_start(count=N)``.

Register access goes through raw ctypes calls (batched where several registers move together):
the high-level binding costs about 2 us per register, the raw call a fraction of that.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import enum
import struct
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hv._errors import GuestError, HostError
from hv._log import get_logger
from hv.engine._abi import (
    _INTR_CB,
    _MIP,
    _MMIO_READ_CB,
    _MMIO_WRITE_CB,
    _PC,
    _PRIV,
    _SATP,
    _SSTATUS,
    _STVEC,
    _WFI,
    _X,
    FAST_ENGINE,
    NATIVE_CONSOLE_CAP,
    NATIVE_CONSOLE_STOP,
    _Batch,
    _Clock,
    _emu_start,
    _Exits,
    _hv_slice,
    _HvSlice,
    _lib,
    _reg,
    _reg_read,
    _reg_read_batch,
    _reg_write,
    _reg_write_batch,
    _set_parallel,
    _set_shared_code,
    _set_time,
    _Slice,
    unicorn,
)
from hv.engine._native import _load_native_hook
from hv.hw import GATE, Bus, Fields, GuestMemory, State
from hv.riscv import _traps

log = get_logger("hv.vcpu")


# Code bytes per instruction used to turn a quantum in instructions into a block budget for
# the stock engine's block hook (rv64gc code mixes 2- and 4-byte instructions; the budget is a
# deterministic proxy). The fast engine counts instructions.
BYTES_PER_INSN = 3
# Host time a slice may take: past it, the next exit (or native clock read) ends the slice at
# the next block, so an exit-heavy guest holds the event loop about this long, not seconds.
SLICE_HOST_NS = 1_000_000
NO_DEADLINE_NS = 1 << 62  # virtual time: slices end on their budget alone
NO_LIMIT = (1 << 64) - 1  # the clock's read limit when no timer is armed

MIP_SSIP = 1 << 1
MIP_STIP = 1 << 5
MIP_SEIP = 1 << 9
S_INTERRUPTS = MIP_SSIP | MIP_STIP | MIP_SEIP

# Exceptions the firmware delegates to S-mode, as OpenSBI does. Causes not listed here reach
# the firmware first: it emulates what it can (rdtime) and redirects the rest to S-mode.
MEDELEG_DEFAULT = (
    (1 << _traps.CAUSE_MISALIGNED_FETCH)
    | (1 << _traps.CAUSE_BREAKPOINT)
    | (1 << _traps.CAUSE_USER_ECALL)
    | (1 << _traps.CAUSE_FETCH_PAGE_FAULT)
    | (1 << _traps.CAUSE_LOAD_PAGE_FAULT)
    | (1 << _traps.CAUSE_STORE_PAGE_FAULT)
)

_MSTATUS_FS_INITIAL = 1 << 13
_MSTATUS_REG = _reg("MSTATUS")
_FFLAGS = _reg("FFLAGS")
_MCOUNTEREN_TM = 1 << 1

PRIV_U, PRIV_S, PRIV_M = 0, 1, 3

# A hart's saved state is the engine's own CPU state (Unicorn's context: QEMU's
# CPURISCVState up to ``rdtime_fn``, 1528 bytes on 2.1.4 riscv64), which holds everything
# the guest can see, the LR/SC reservation included, with no pointers. A file's copy is
# checked field by field before the engine gets it (``_check_env``): the fields that
# describe the CPU itself (ISA, version, features, PMP, the absent H extension) must equal
# this engine's, and the ones QEMU acts on with asserts (privilege, satp's mode, mstatus)
# must hold values the guest could have produced. FP flags live outside that block
# (``fp_status``) and are saved as fflags.
ENV_SIZE = 1528
_ENV_FIXED = ((560, 592), (600, 616), (760, 952), (1008, ENV_SIZE))  # must equal this engine's
_ENV_PRIV = 592
_ENV_FRM = 536
_ENV_MSTATUS = 624
_ENV_SATP = (664, 672)  # sptbr, satp
_ENV_MASKED = ((632, 0xFFF), (648, 0xFFF), (656, 0xFFF), (696, 0xFFFF))  # mip mie mideleg medeleg
_MSTATUS_KNOWN = (
    0x2
    | 0x8
    | 0x20
    | 0x40
    | 0x80
    | 0x100
    | (3 << 9)
    | (3 << 11)
    | (3 << 13)
    | (3 << 15)
    | (1 << 17)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 21)
    | (1 << 22)
    | (0xF << 32)
    | (3 << 36)
    | (1 << 63)
)
_MSTATUS_XLEN = 0xF << 32  # UXL, SXL: fixed at 64 bits
_SATP_MODES = frozenset({0, 8, 9, 10})  # bare, Sv39, Sv48, Sv57


class ExitKind(enum.Enum):
    PREEMPTED = "preempted"  # budget spent, or the host asked for a stop
    WFI = "wfi"  # the guest waits for an interrupt
    FATAL = "fatal"  # the guest can't go on (see Exit.reason)
    # Virtual time: the slice stopped for host time alone, invisibly to the guest; run_slice
    # goes on with it (nothing of the slice boundary's work may happen in between).
    PAUSED = "paused"
    HOST_ERROR = "host_error"  # a device model or the hypervisor failed


@dataclass(frozen=True, slots=True)
class Exit:
    kind: ExitKind
    reason: str = ""
    detail: str = ""  # a traceback for host errors


class Firmware(Protocol):
    """What the vCPU asks of the machine while the guest runs (all synchronous)."""

    def sbi_call(self, eid: int, fid: int, args: Sequence[int]) -> tuple[int, int] | None:
        """Handle an SBI call; return the new (a0, a1), or None to run the ecall again later."""
        ...

    def time_ticks(self) -> int:
        """The value `rdtime` reads: ticks of the timebase since boot."""
        ...


@dataclass
class VcpuStats:
    slices: int = 0
    sbi_calls: int = 0
    traps_forwarded: int = 0
    rdtime_emulated: int = 0  # rdtime trapped and emulated (in Python)
    rdtime_native: int = 0  # time CSR reads answered by the engine's clock (fast engine)
    sbi_native: int = 0  # SBI calls answered in the native hook (counted in sbi_calls too)
    device_guest_errors: int = 0  # MMIO accesses a device refused as the guest's error
    code_invalidations: int = 0  # ranges of host-written RAM whose translations were dropped
    code_flushes: int = 0  # whole translation caches dropped (remote fence.i of an SMP guest)
    late_stops: int = 0  # slices ended by their host-time deadline (exit-heavy guests)
    host_ns: int = 0  # host time spent running this vCPU's slices
    mmio_reads: int = 0
    mmio_writes: int = 0
    wfi: int = 0
    # Guest instructions run, counted per translated block entered (fast engine: charged by
    # the engine, exact unless a block ends early on an exception; stock engine: estimated
    # from code bytes).
    guest_insns: int = 0
    code_bytes: int = 0  # stock engine's block hook only
    instructions: int = 0  # exact, only with count_instructions=True (else 0)
    traps_by_cause: collections.Counter[int] = field(default_factory=collections.Counter)


# Engine errors that are access faults on real hardware (pc on the instruction). A fetch
# from a device window (mapped, not executable) is one too.
_UNMAPPED_CAUSE = {
    unicorn.UC_ERR_FETCH_UNMAPPED: _traps.CAUSE_FETCH_ACCESS,
    unicorn.UC_ERR_FETCH_PROT: _traps.CAUSE_FETCH_ACCESS,
    unicorn.UC_ERR_READ_UNMAPPED: _traps.CAUSE_LOAD_ACCESS,
    unicorn.UC_ERR_WRITE_UNMAPPED: _traps.CAUSE_STORE_ACCESS,
}


def _check_env(env: bytes, fresh: bytes, st: Fields) -> None:
    """A saved CPU state's fields the engine would trust: refused unless the guest could
    have produced them on this engine (see ``ENV_SIZE``)."""
    for lo, hi in _ENV_FIXED:
        st.check(env[lo:hi] == fresh[lo:hi], "env", f"bytes {lo}..{hi} describe another CPU")
    u64 = struct.Struct("<Q").unpack_from
    priv = u64(env, _ENV_PRIV)[0]
    st.check(priv in (PRIV_U, PRIV_S), "env", f"privilege {priv} (a guest runs in U or S)")
    st.check(u64(env, _ENV_FRM)[0] <= 7, "env", "frm is more than 7")
    mstatus = u64(env, _ENV_MSTATUS)[0]
    st.check(not mstatus & ~_MSTATUS_KNOWN, "env", f"mstatus {mstatus:#x} has unknown bits")
    st.check(
        not (mstatus ^ u64(fresh, _ENV_MSTATUS)[0]) & _MSTATUS_XLEN, "env", "mstatus XLEN fields"
    )
    st.check((mstatus >> 11) & 3 != 2, "env", "mstatus.MPP is 2")
    for off in _ENV_SATP:
        mode = u64(env, off)[0] >> 60
        st.check(mode in _SATP_MODES, "env", f"satp mode {mode}")
    for off, mask in _ENV_MASKED:
        st.check(not u64(env, off)[0] & ~mask, "env", f"bits beyond {mask:#x} at {off}")


class Vcpu:
    """One riscv64 hart on Unicorn, entered in S-mode, with the hypervisor as its firmware."""

    def __init__(
        self,
        mem: GuestMemory,
        bus: Bus,
        firmware: Firmware,
        quantum: int,
        count_instructions: bool = False,
        native_exits: bool = True,
        timebase_hz: int = 10_000_000,
    ) -> None:
        self.mem = mem
        # Where the host's writes to guest RAM since the last slice come from (their
        # translations are dropped): the RAM's own list, or on an SMP machine this hart's
        # share of it (every hart's engine must drop them).
        self.host_writes: Callable[[], list[tuple[int, int]]] = mem.take_host_writes
        self.firmware = firmware
        self.stats = VcpuStats()
        self.medeleg = MEDELEG_DEFAULT
        self._uc: Any = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV64)
        self._h = self._uc._uch
        self._keep: list[Any] = []  # ctypes callbacks must outlive the engine
        self._fatal: Exit | None = None
        self._trap_loop = _traps.TrapLoop()
        self._one = ctypes.c_uint64()
        self._one_ref = ctypes.byref(self._one)
        self._args = _Batch([_X[17], _X[16], *_X[10:16]])  # a7, a6, a0..a5
        self._ret = _Batch([_X[10], _X[11]])
        self._trap_in = _Batch([_SSTATUS, _STVEC, _reg("SEPC")])
        self._trap_out = _Batch([_PRIV, _reg("SEPC"), _reg("SCAUSE"), _reg("STVAL"), _SSTATUS, _PC])

        self._uc.mem_map_ptr(mem.base, mem.size, unicorn.UC_PROT_ALL, mem.host_address)
        for m in bus:
            self._map_device(m.base, m.size, m.device)

        self._slice = _Slice()
        self._slice.stop = ctypes.cast(_lib.uc_emu_stop, ctypes.c_void_p).value
        self.quantum = quantum
        # How slices end (see the module docstring): "engine", "block-hook" or "count".
        self._hv: _HvSlice | None = None
        self._unspent = 0  # budget left when the host ended a slice early (fast engine)
        native = _load_native_hook() if (native_exits or not FAST_ENGINE) else None
        if FAST_ENGINE:
            ptr = ctypes.c_void_p()
            if _hv_slice(self._h, ctypes.byref(ptr)) or not ptr.value:
                raise HostError("uc_hv_slice failed on the fast engine")
            self._hv = _HvSlice.from_address(ptr.value)
            self.slicing = "engine"
        else:
            self.slicing = "block-hook" if native is not None else "count"
            if native is not None:
                fn = ctypes.cast(native.hv_block_hook, ctypes.c_void_p)
                self._add_hook(unicorn.UC_HOOK_BLOCK, fn, ctypes.byref(self._slice))

        # Exceptions: the native hook answers the hottest simple ones (SBI console putchar)
        # and hands the rest to Python; without it (or with native_exits=False) Python gets all.
        intr = _INTR_CB(self._on_intr)
        self._exits: _Exits | None = None
        self._clock: _Clock | None = None
        if native is not None and native_exits:
            e = _Exits()
            self._console_buf = (ctypes.c_uint8 * NATIVE_CONSOLE_CAP)()
            e.slow = ctypes.cast(intr, ctypes.c_void_p).value
            e.reg_read = ctypes.cast(_reg_read, ctypes.c_void_p).value
            e.reg_write = ctypes.cast(_reg_write, ctypes.c_void_p).value
            e.reg_priv, e.reg_a0, e.reg_a7 = _PRIV, _X[10], _X[17]
            e.buf = ctypes.addressof(self._console_buf)
            e.cap, e.stop_at = NATIVE_CONSOLE_CAP, NATIVE_CONSOLE_STOP
            e.budget = ctypes.addressof(self._hv if self._hv is not None else self._slice)
            self._exits = e
            self._keep.append(intr)
            hook = ctypes.cast(native.hv_intr_hook, ctypes.c_void_p)
            self._add_hook(unicorn.UC_HOOK_INTR, hook, ctypes.byref(e))
            if FAST_ENGINE and _set_time is not None:
                # The engine reads the time CSR through hv_clock_ticks: no trap for rdtime.
                self._clock = _Clock(
                    offset_ns=0,
                    hz=timebase_hz,
                    exits=ctypes.addressof(e),
                    limit=NO_LIMIT,
                    uc=self._h,
                    reg_mip=_MIP,
                )
                fn = ctypes.cast(native.hv_clock_ticks, ctypes.c_void_p)
                if _set_time(self._h, fn, ctypes.byref(self._clock)):
                    raise HostError("uc_hv_set_time failed on the fast engine")
        else:
            self._add_hook(unicorn.UC_HOOK_INTR, intr)
        self._native_seen = (0, 0, 0)  # (putchar, clock reads, late stops) counted in stats
        self._deadline = 0  # CLOCK_MONOTONIC ns at which the running slice should end
        self._closed = False
        self._insns = ctypes.c_uint64()
        if count_instructions:
            native = native or _load_native_hook()
            if native is None:
                raise HostError("exact instruction counting needs the native hook (zig)")
            fn = ctypes.cast(native.hv_count_hook, ctypes.c_void_p)
            self._add_hook(unicorn.UC_HOOK_CODE, fn, ctypes.byref(self._insns))
        self._pc = 0
        self._mip = 0
        self.last_insns = 0  # instructions the last slice ran (fast engine)
        self._time_limit = NO_LIMIT  # the clock's read limit (see set_time_limit)
        self._stip_raised = False  # an emulated time read raised STIP (see _emulate)
        # Why the running slice stops: an event of the guest's, or host time alone (a late
        # stop), and the budget left of a slice paused for host time (virtual time).
        self._event = False
        self._late_stop = False
        self._paused_budget = 0
        # Virtual time (set_virtual_time): the slice's starting budget, and whether one runs.
        self.virtual = False
        self._budget0 = 0
        self._in_slice = False
        self._runner: int | None = None  # the thread running its engine in a parallel batch

    def set_virtual_time(self, ps_per_insn: int) -> None:
        """Guest time from retired instructions (``ps_per_insn`` picoseconds each), never from
        the host: the native clock counts the engine's charged budget, and slices end on their
        budget alone (no host-time deadline, which would make slice boundaries, and so
        interrupt delivery, depend on host load). Needs the fast engine's native clock."""
        if self._clock is None or self._hv is None:
            raise HostError(
                "virtual time needs hvfabric's engine with the native clock: run `hv engine "
                "build` (and have zig: pip install ziglang)"
            )
        c = self._clock
        c.virt = 1
        c.ps_per_insn = ps_per_insn
        c.budget = ctypes.addressof(self._hv)
        self.virtual = True

    def set_parallel(self) -> bool:
        """This hart shares its RAM with harts on other host threads: AMOs and SC become host
        atomics (engine patch 0004; it costs single-thread speed, so only SMP guests ask).
        False without hvfabric's engine: its harts must then stay on one thread."""
        if _set_parallel is None:
            return False
        if _set_parallel(self._h, 1):
            raise HostError("uc_hv_set_parallel failed")
        return True

    def set_shared_code(self) -> bool:
        """Other engines (this guest's other harts) write this hart's RAM: the guest's
        fence.i then drops all of this engine's translations (engine patch 0005), since an
        engine sees only its own stores to code it translated. False without hvfabric's
        engine (code one hart writes reaches another only through SBI remote fence.i)."""
        if _set_shared_code is None:
            return False
        if _set_shared_code(self._h, 1):
            raise HostError("uc_hv_set_shared_code failed")
        return True

    def set_time_limit(self, ticks: int) -> None:
        """An armed timer's deadline whose interrupt is not yet pending: a read that reaches
        it raises STIP first (``_raise_stip``); NO_LIMIT lifts it. See hv_clock_ticks."""
        if ticks == self._time_limit:
            return  # (asked at every slice's start: a ctypes write only when it changes)
        self._time_limit = ticks
        if self._clock is not None:
            self._clock.limit = ticks

    def cut_budget(self, insns: int) -> None:
        """End the running slice after at most ``insns`` more instructions (at the block
        entry that reaches them): an event inside the slice (a timer set for sooner) must not
        wait for the slice's end. Only lowers the budget; a no-op between slices."""
        hv = self._hv
        if hv is None or not self._in_slice or hv.budget <= insns:
            return
        self._give_up(hv.budget - max(0, insns))

    @property
    def slice_paused(self) -> bool:
        """A slice stopped for host time waits to go on (virtual time: ``run_slice``)."""
        return self._paused_budget > 0

    def executed_in_slice(self) -> int:
        """Instructions charged to the running slice so far (0 between slices): whole blocks,
        at their entry, so the count is the same run after run."""
        hv = self._hv
        if not self._in_slice or hv is None:
            return 0
        e = self._exits
        unspent = self._unspent + (int(e.unspent) if e is not None else 0)
        return self._budget0 - int(hv.budget) - unspent

    # -- setup -----------------------------------------------------------------------------

    def _add_hook(self, kind: int, cb: Any, user: Any = None) -> None:
        h = ctypes.c_size_t()
        err = _lib.uc_hook_add(
            self._h, ctypes.byref(h), kind, cb, user, ctypes.c_uint64(1), ctypes.c_uint64(0)
        )
        if err:
            raise HostError(f"uc_hook_add({kind}) failed: {unicorn.UcError(err)}")
        self._keep.append(cb)

    def _map_device(self, base: int, size: int, dev: Any) -> None:
        mmio_read = dev.mmio_read
        mmio_write = dev.mmio_write
        guest_error = getattr(dev, "guest_error", None)
        stats = self.stats
        name = f"{getattr(dev, 'name', 'device')} at {base:#x}"

        def misused(err: GuestError) -> None:
            # The guest's doing: the device counts it and sets its own error state; the VM
            # goes on. Only a device without that hook makes it the vCPU's count.
            stats.device_guest_errors += 1
            if guest_error is not None:
                try:
                    guest_error(err)
                except Exception:
                    self._host_error(f"{name} failed handling a guest error")

        def on_read(uc: int, offset: int, sz: int, ud: int) -> int:
            if GATE.active:  # a parallel batch: hv's Python runs under the gate
                with GATE.lock:
                    return read(offset, sz)
            return read(offset, sz)

        def read(offset: int, sz: int) -> int:
            stats.mmio_reads += 1
            if time.monotonic_ns() > self._deadline:
                self._late()
            try:
                return int(mmio_read(offset, sz))
            except GuestError as e:
                misused(e)
                return 0
            except Exception:
                self._host_error(f"{name} failed on a read at +{offset:#x}")
                return 0

        mem = self.mem

        def on_write(uc: int, offset: int, sz: int, value: int, ud: int) -> None:
            if GATE.active:
                with GATE.lock:
                    write(offset, sz, value)
                return
            write(offset, sz, value)

        def write(offset: int, sz: int, value: int) -> None:
            stats.mmio_writes += 1
            if time.monotonic_ns() > self._deadline:
                self._late()
            try:
                mmio_write(offset, sz, value)
                if mem.host_written:  # the device wrote guest RAM (DMA): see _drop_translations
                    self.request_stop()
            except GuestError as e:
                misused(e)
            except Exception:
                self._host_error(f"{name} failed on a write at +{offset:#x}")

        rcb, wcb = _MMIO_READ_CB(on_read), _MMIO_WRITE_CB(on_write)
        self._keep += [rcb, wcb]
        mapped = (size + 0xFFF) & ~0xFFF
        err = _lib.uc_mmio_map(
            self._h, ctypes.c_uint64(base), ctypes.c_size_t(mapped), rcb, None, wcb, None
        )
        if err:
            raise HostError(f"uc_mmio_map({base:#x}) failed: {unicorn.UcError(err)}")

    def reset(self, entry: int, hartid: int, dtb_addr: int) -> None:
        """Put the hart in its boot state: S-mode at ``entry``, a0 = hart id, a1 = DTB."""
        uc = self._uc
        uc.reg_write(_PRIV, PRIV_M)
        for i in range(1, 32):
            uc.reg_write(_X[i], 0)
        uc.reg_write(_reg("MEDELEG"), self.medeleg)
        uc.reg_write(_reg("MIDELEG"), S_INTERRUPTS)
        uc.reg_write(_reg("MIE"), 0)
        uc.reg_write(_MIP, 0)
        uc.reg_write(_reg("MSTATUS"), _MSTATUS_FS_INITIAL)
        # With the engine's clock the time CSR exists: let S-mode read it (mcounteren.TM),
        # as OpenSBI does on hardware that has it. U-mode reads obey the guest's scounteren.
        uc.reg_write(_reg("MCOUNTEREN"), _MCOUNTEREN_TM if self._clock is not None else 0)
        for name in ("SATP", "STVEC", "SSCRATCH", "SEPC", "SCAUSE", "STVAL", "SCOUNTEREN"):
            uc.reg_write(_reg(name), 0)
        for i in range(32):
            uc.reg_write(_reg(f"F{i}"), 0)
        uc.reg_write(_reg("FCSR"), 0)
        uc.reg_write(_X[10], hartid)
        uc.reg_write(_X[11], dtb_addr)
        uc.reg_write(_PRIV, PRIV_S)
        self._pc = entry
        self._mip = 0
        self._fatal = None
        self._trap_loop.reset()
        uc.ctl_flush_tb()
        self.flush_tlb()
        self.host_writes()  # the whole translation cache is gone anyway

    # -- register helpers (raw ctypes) -----------------------------------------------------

    def reg(self, regid: int) -> int:
        _reg_read(self._h, regid, self._one_ref)
        return self._one.value

    def set_reg(self, regid: int, value: int) -> None:
        self._one.value = value & 0xFFFF_FFFF_FFFF_FFFF
        _reg_write(self._h, regid, self._one_ref)

    def x(self, i: int) -> int:
        return self.reg(_X[i]) if i else 0

    def set_x(self, i: int, value: int) -> None:
        if i:
            self.set_reg(_X[i], value)

    @property
    def pc(self) -> int:
        return self._pc

    @property
    def priv(self) -> int:
        return self.reg(_PRIV)

    def csr(self, regid: int) -> int:
        """Read any CSR: Unicorn checks access against the current privilege, so go via M."""
        old = self.reg(_PRIV)
        self.set_reg(_PRIV, PRIV_M)
        v = self.reg(regid)
        self.set_reg(_PRIV, old)
        return v

    def update_interrupts(self, pending: int) -> bool:
        """Make mip's STIP/SEIP equal to ``pending`` and set SSIP if asked (the guest clears
        SSIP itself). Returns True if a bit was raised: the engine only notices a raised bit
        at its next return to the main loop, so the caller should end the slice.
        Safe inside hooks. Costs a few raw calls, so only when something changed."""
        pending &= S_INTERRUPTS
        if self._closed:
            return False
        if self._stip_raised or (self._clock is not None and self._clock.fired):
            # A time read reached the timer's deadline and put STIP in mip itself (see
            # _emulate, hv_clock_ticks): mip is ahead of _mip, which says what hv raised.
            self._stip_raised = False
            if self._clock is not None:
                self._clock.fired = 0
        elif pending == self._mip and not pending & MIP_SSIP:
            return False
        raised = bool(pending & ~self._mip)
        old = self.reg(_PRIV)
        self.set_reg(_PRIV, PRIV_M)
        mip = self.reg(_MIP)
        new = (mip & ~(MIP_STIP | MIP_SEIP)) | pending
        if new != mip:
            self.set_reg(_MIP, new)
        self.set_reg(_PRIV, old)
        self._mip = pending & ~MIP_SSIP
        return raised

    def enabled_interrupts(self) -> int:
        """sie & the S-level interrupt bits: what would wake a ``wfi``."""
        if self._closed:
            return 0
        return self.csr(_reg("MIE")) & S_INTERRUPTS

    def raised_interrupts(self) -> int:
        """mip's S-level bits (SSIP stays until the guest clears it)."""
        if self._closed:
            return 0
        return self.csr(_MIP) & S_INTERRUPTS

    def _drop_translations(self, ranges: list[tuple[int, int]]) -> None:
        """Host writes to guest RAM are invisible to the engine: drop the translated code of
        the pages they touched, so the guest runs what is there now. A write made during a
        slice (a device's MMIO handler, an SBI call) ends the slice at the next block, so the
        guest never runs past it on stale code. Physical addresses, so from M-mode (bare
        translation), as Unicorn's cache removal walks the current MMU."""
        old = self.reg(_PRIV)
        self.set_reg(_PRIV, PRIV_M)
        for start, end in ranges:
            self._uc.ctl_remove_cache(start, end)
        self.set_reg(_PRIV, old)
        self.stats.code_invalidations += len(ranges)

    def flush_tlb(self) -> None:
        self._uc.ctl(unicorn.unicorn_const.UC_CTL_TLB_FLUSH, unicorn.unicorn_const.UC_CTL_IO_WRITE)

    def flush_code(self) -> None:
        """Drop every translated block (another hart's stores may have changed code: fence.i
        from afar). Between slices only."""
        self._uc.ctl_flush_tb()
        self.stats.code_flushes += 1

    def clear_reservation(self) -> None:
        """Lose the LR reservation (another hart may have stored to it since): the engine's
        mode change clears it (QEMU's riscv_cpu_set_mode sets load_res to -1), and writing
        PRIV with its own value is one. Between slices only."""
        self.set_reg(_PRIV, self.reg(_PRIV))

    # -- the native exits' state, for the machine ------------------------------------------

    def set_clock_offset(self, offset_ns: int) -> None:
        """Where the native clock counts from (CLOCK_MONOTONIC ns); set before each slice."""
        if self._clock is not None:
            self._clock.offset_ns = offset_ns

    def console_pending(self) -> bool:
        e = self._exits
        return e is not None and e.len > 0

    def take_console(self) -> bytes:
        """Console bytes the native hook took from the guest (SBI putchar), in order."""
        e = self._exits
        if e is None or not e.len:
            return b""
        out = ctypes.string_at(e.buf, e.len)
        e.len = 0
        return out

    def hold_console(self, hold: bool) -> None:
        """While the host holds console output the native hook hasn't seen (the UART's),
        putchar goes the Python way, so bytes stay in order."""
        if self._exits is not None:
            self._exits.hold = int(hold)

    def request_stop(self) -> None:
        """End the current slice at the next block entry. Call it from the engine's hooks
        or between slices (on the VM's thread); a request made between slices is served by
        the start of the next one."""
        e = self._exits
        if e is not None:
            e.event = 1
        self._event = True
        self._zero_budget()

    def _zero_budget(self) -> None:
        hv = self._hv
        if hv is not None:
            # The engine reads the budget at every block entry: 0 ends the slice there.
            self._give_up(hv.budget)
        else:
            self._slice.request = 1

    def _give_up(self, amount: int) -> None:
        """Take ``amount`` off the running slice's budget. What is given up goes where the
        native clock sees it: it must not count as run."""
        hv = self._hv
        assert hv is not None
        e = self._exits
        if e is not None:
            e.unspent += amount
        else:
            self._unspent += amount
        hv.budget -= amount

    # -- running ---------------------------------------------------------------------------

    def run_slice(self, budget: int | None = None, base_ps: int = 0) -> Exit:
        """Run the guest until its budget (default: the quantum) is spent, it waits (wfi),
        or it can't go on. In virtual time ``base_ps`` is the guest's time at the start."""
        if self._closed:
            raise HostError("the vCPU is closed")
        start = time.monotonic_ns()
        self._deadline = start + SLICE_HOST_NS
        resuming = self._paused_budget > 0
        if resuming:  # the rest of a slice paused for host time (virtual time)
            quantum, self._paused_budget = self._paused_budget, 0
        else:
            # A stop asked for before this slice (e.g. to deliver an interrupt raised between
            # slices) is already served by starting the engine again: mip is written.
            self.stats.slices += 1
            quantum = self.quantum if budget is None else max(1, budget)
            written = self.host_writes()
            if written:
                self._drop_translations(written)
        self._event = self._late_stop = False
        hv = self._hv
        e = self._exits
        if e is not None:
            e.unspent = 0
            e.deadline_ns = self._deadline
            e.event = e.late = 0
        if hv is not None:
            hv.budget = quantum
            self._unspent = 0
            self._budget0 = quantum
            if self.virtual:
                c = self._clock
                assert c is not None
                c.base_ps = base_ps
                c.budget0 = quantum
            stops = hv.stops
            self._in_slice = True
            try:
                err = self._engine(0)
            finally:
                self._in_slice = False
            unspent = self._unspent + (e.unspent if e is not None else 0)
            self.last_insns = quantum - hv.budget - unspent
            self.stats.guest_insns += self.last_insns
            stopped = hv.stops != stops
        else:
            s = self._slice
            s.budget = quantum * BYTES_PER_INSN
            s.stopped = 0
            s.request = 0
            before = s.executed
            count = 0 if self.slicing == "block-hook" else quantum
            err = self._engine(count)
            ran = s.executed - before
            self.stats.code_bytes += ran
            self.stats.guest_insns += ran // BYTES_PER_INSN if count == 0 else 0
            stopped = bool(s.stopped)
        self.stats.instructions = self._insns.value
        if e is not None:
            clock = self._clock.reads if self._clock is not None else 0
            seen_putchar, seen_clock, seen_late = self._native_seen
            self.stats.sbi_native += e.putchar - seen_putchar
            self.stats.sbi_calls += e.putchar - seen_putchar
            self.stats.rdtime_native += clock - seen_clock
            self.stats.late_stops += e.late_stops - seen_late
            self._native_seen = (e.putchar, clock, e.late_stops)
        self.stats.host_ns += time.monotonic_ns() - start
        pc = self.reg(_PC)
        self._pc = pc
        fatal = self._take_fatal()
        if fatal is not None:
            return fatal
        if err == unicorn.UC_ERR_INSN_INVALID and self._is_ebreak(pc):
            # ebreak never reaches the INTR hook: the engine stops on it. Forward cause 3.
            self._trap(pc, _traps.CAUSE_BREAKPOINT, self.reg(_PRIV))
            return self._take_fatal() or Exit(ExitKind.PREEMPTED)
        if err:
            return self._engine_error(err, pc)
        if stopped and self.virtual and hv is not None:
            late = self._late_stop or (e is not None and e.late)
            event = self._event or (e is not None and e.event)
            rest = quantum - self.last_insns
            if late and not event and rest > 0:
                # Host time alone ended it: the guest must not see a boundary here. The rest
                # of the budget runs when run_slice is called again.
                self._paused_budget = rest
                return Exit(ExitKind.PAUSED)
        if stopped:
            return Exit(ExitKind.PREEMPTED)
        # The engine returned by itself: a wfi (pc is past it). With count slicing (no native
        # hook) a spent count looks the same, so look at the instruction.
        if self.slicing == "count" and self._fetch(pc - 4) != _WFI:
            return Exit(ExitKind.PREEMPTED)
        self.stats.wfi += 1
        return Exit(ExitKind.WFI)

    def _engine(self, count: int) -> int:
        """Run the guest (the engine), without hv's gate if a parallel batch holds it here:
        guest code is what runs on several cores at once (hv.hw._parallel)."""
        gate = GATE
        if not gate.active:
            return int(_emu_start(self._h, self._pc, 0, 0, count))
        self._runner = threading.get_ident()
        gate.lock.release()
        try:
            return int(_emu_start(self._h, self._pc, 0, 0, count))
        finally:
            gate.lock.acquire()
            self._runner = None

    def busy_elsewhere(self) -> bool:
        """Does this hart's engine run guest code on another thread right now (a parallel
        batch)? Then nothing may touch its registers from here: an interrupt raised for it
        waits for the start of its next slice, which ``request_stop`` brings soon."""
        runner = self._runner
        return runner is not None and runner != threading.get_ident()

    def _take_fatal(self) -> Exit | None:
        fatal, self._fatal = self._fatal, None
        return fatal

    def _is_ebreak(self, pc: int) -> bool:
        insn = self._fetch(pc)
        return insn is not None and (insn == 0x00100073 or (insn & 0xFFFF) == 0x9002)

    def _engine_error(self, err: int, pc: int) -> Exit:
        """Unicorn stops on an access to unmapped physical memory (pc on the instruction);
        real hardware raises an access fault, so forward one. Anything else is fatal."""
        cause = _UNMAPPED_CAUSE.get(err)
        if cause is None:
            return Exit(ExitKind.FATAL, f"CPU stopped: {unicorn.UcError(err)} at pc={pc:#x}")
        # No UC_HOOK_MEM_UNMAPPED for the address: any memory hook slows every access of the
        # guest (measured about 9% on the cpu guest). Decoding the instruction gives it too.
        self._trap(pc, cause, self.reg(_PRIV))
        return self._take_fatal() or Exit(ExitKind.PREEMPTED)

    def _host_error(self, what: str) -> None:
        self._fatal = Exit(ExitKind.HOST_ERROR, what, traceback.format_exc())
        self._uc.emu_stop()

    def _guest_fatal(self, reason: str) -> None:
        self._fatal = Exit(ExitKind.FATAL, reason)
        # We are in the INTR hook, outside any translated block: stopping here is exact.
        self._uc.emu_stop()

    # -- synchronous exits, inside the engine ----------------------------------------------

    def _late(self) -> None:
        """The slice is past its host-time deadline: end it at the next block."""
        if self._hv is not None and self._hv.budget <= 0:
            return  # already ending
        self.stats.late_stops += 1
        self._late_stop = True
        self._zero_budget()

    def _on_intr(self, uc: int, intno: int, ud: int) -> None:
        if GATE.active:  # a parallel batch: hv's Python runs under the gate
            with GATE.lock:
                self._exception(intno)
            return
        self._exception(intno)

    def _exception(self, intno: int) -> None:
        if self._exits is None and time.monotonic_ns() > self._deadline:
            self._late()  # (with the native hook in front, it checks the deadline itself)
        try:
            self._dispatch_exception(intno)
            if self.mem.host_written:  # an SBI call wrote guest RAM (DBCN read)
                self.request_stop()
        except Exception:
            self._host_error(f"exception handling for cause {intno} failed")

    def _dispatch_exception(self, cause: int) -> None:
        pc = self.reg(_PC)
        epc = pc - 4  # Unicorn adds 4 to pc, even after a 2-byte instruction.
        priv = self.reg(_PRIV)  # read once: every register access costs on this path
        if cause == _traps.CAUSE_USER_ECALL:
            if priv == PRIV_S:
                self._sbi(pc)
                return
            if priv == PRIV_M:
                self._guest_fatal(f"ecall from M-mode at pc={epc:#x}")
                return
        self._trap(epc, cause, priv)

    def _trap(self, epc: int, cause: int, priv: int) -> None:
        """A synchronous exception at ``epc``: emulate it as the firmware, or forward it."""
        satp = insn = None
        if cause == _traps.CAUSE_ILLEGAL_INSN and not self.medeleg & (1 << cause):
            satp = self._satp(priv)
            insn = _traps.fetch_insn(self.mem, satp, epc)
            if insn is not None and self._emulate(insn, epc):
                return
        elif cause in _traps.ADDRESS_FAULTS:
            satp = self._satp(priv)
            if cause not in _traps.FETCH_FAULTS:
                insn = _traps.fetch_insn(self.mem, satp, epc)
                # QEMU 5.0 reports an AMO's fault as a load fault (it loads first); the spec
                # says store/AMO. LR stays a load.
                if cause in _traps.LOAD_FAULTS and insn is not None and _traps.is_amo_store(insn):
                    cause = _traps.LOAD_TO_STORE_CAUSE[cause]
        tval = 0
        if cause in _traps.FETCH_FAULTS and satp is not None:
            tval = _traps.fetch_fault_address(self.mem, satp, epc)
        elif insn is not None and cause in _traps.ADDRESS_FAULTS:
            tval = _traps.memory_operand_address(insn, self.x) or 0
        elif cause == _traps.CAUSE_BREAKPOINT:
            tval = epc
        self._forward(epc, cause, tval, priv)

    def _sbi(self, pc: int) -> None:
        self.stats.sbi_calls += 1
        b = self._args
        _reg_read_batch(self._h, b.ids, b.ptrs, b.n)
        v = b.vals
        self._trap_loop.same = 0  # an SBI call between traps: the handler made progress
        res = self.firmware.sbi_call(v[0], v[1], v[2:8])
        if res is None:
            # Not now (a flow-controlled console): back onto the ecall, and end the slice so
            # the host can drain; the guest makes the same call again in a later slice.
            self.set_reg(_PC, pc - 4)
            self.request_stop()
            return
        r = self._ret
        r.vals[0] = res[0] & 0xFFFF_FFFF_FFFF_FFFF
        r.vals[1] = res[1] & 0xFFFF_FFFF_FFFF_FFFF
        _reg_write_batch(self._h, r.ids, r.ptrs, 2)

    def _emulate(self, insn: int, epc: int) -> bool:
        """The firmware's instruction emulation: counter CSRs (there is no `time` CSR)."""
        rd = _traps.decode_counter_read(insn)
        if rd is None:
            return False
        self.stats.rdtime_emulated += 1
        ticks = self.firmware.time_ticks()
        if ticks >= self._time_limit:  # as the native clock does (hv_clock_ticks)
            self._raise_stip()
            self.request_stop()
        self.set_x(rd, ticks)
        self.set_reg(_PC, epc + 4)
        return True

    def _raise_stip(self) -> None:
        """A time read reached the armed timer's deadline: STIP into mip before the read
        returns, so the guest never sees the deadline without the interrupt pending nor takes
        the interrupt before a read has shown the deadline (hv_clock_fire in C). The host's
        next update_interrupts takes note (counters, wake-up) as for any raised interrupt."""
        old = self.reg(_PRIV)
        self.set_reg(_PRIV, PRIV_M)
        self.set_reg(_MIP, self.reg(_MIP) | MIP_STIP)
        self.set_reg(_PRIV, old)
        self._stip_raised = True  # (the limit stays until the host's sync lifts it)

    def _satp(self, priv: int) -> int:
        """satp as the guest's MMU sees it (0 in M-mode). In S-mode Python may read it
        directly; from U-mode it is invisible, so switch privilege around the read."""
        if priv == PRIV_S:
            return self.reg(_SATP)
        if priv == PRIV_M:
            return 0
        self.set_reg(_PRIV, PRIV_S)
        satp = self.reg(_SATP)
        self.set_reg(_PRIV, priv)
        return satp

    def translate(self, vaddr: int) -> int | None:
        """The physical address of a guest virtual address, as the hart's MMU sees it now
        (None if not mapped)."""
        return _traps.translate(self.mem, self._satp(self.reg(_PRIV)), vaddr)

    def _fetch(self, vaddr: int) -> int | None:
        """The instruction word at a guest virtual address (None if not mapped)."""
        return _traps.fetch_insn(self.mem, self._satp(self.reg(_PRIV)), vaddr)

    def _forward(self, epc: int, cause: int, tval: int, priv: int) -> None:
        """Deliver a synchronous exception to the guest's S-mode vector, exactly once."""
        self.stats.traps_forwarded += 1
        self.stats.traps_by_cause[cause] += 1
        self.set_reg(_PRIV, PRIV_S)  # S CSRs are invisible from Python while the guest is in U
        b = self._trap_in
        _reg_read_batch(self._h, b.ids, b.ptrs, b.n)
        sstatus, stvec, sepc = b.vals[0], b.vals[1], b.vals[2]
        entry = _traps.enter_supervisor(epc, cause, tval, priv, sstatus, stvec)
        looping = self._trap_loop.note(cause, epc, tval, sepc)
        if isinstance(entry, str) or looping:
            self.set_reg(_PRIV, priv)
            what = f"{_traps.cause_name(cause)} at pc={epc:#x} (stval={tval:#x})"
            self._guest_fatal(entry if isinstance(entry, str) else f"trap loop: {what} repeats")
            return
        o = self._trap_out
        o.vals[0] = PRIV_S
        o.vals[1] = entry.sepc
        o.vals[2] = entry.scause
        o.vals[3] = entry.stval
        o.vals[4] = entry.sstatus
        o.vals[5] = entry.pc
        _reg_write_batch(self._h, o.ids, o.ptrs, o.n)
        self._pc = entry.pc

    # -- saved state (snapshots) -----------------------------------------------------------

    def _context(self) -> tuple[Any, int]:
        ctx = self._uc.context_save()
        head = len(bytes(ctx)) - ENV_SIZE
        if head < 0 or ctx.size != head + ENV_SIZE:
            raise HostError(
                f"this engine's CPU context is {ctx.size} bytes, not Unicorn 2.1.4's: "
                "snapshots need the Unicorn hv is built for (`hv engine info`)"
            )
        return ctx, head

    def save_state(self) -> State:
        """The hart's state between slices: the engine's CPU state (registers, CSRs,
        privilege, pending interrupts, the LR/SC reservation), FP flags, and what this class
        keeps beside it."""
        if self._in_slice or self._paused_budget:
            raise HostError("a hart's state is saved between slices only")
        ctx, head = self._context()
        env = bytes(ctx)[head:]
        return {
            "env": env,
            "pc": self._pc,
            "fflags": self._fflags(),
            "medeleg": self.medeleg,
            "mip": self._mip,
            "stip_raised": self._stip_raised,
        }

    def _fflags(self, value: int | None = None) -> int:
        """Read (or write) fflags: through M-mode with FS on, as Unicorn checks both."""
        old_priv = self.reg(_PRIV)
        self.set_reg(_PRIV, PRIV_M)
        mstatus = self.reg(_MSTATUS_REG)
        if not mstatus & _MSTATUS_FS_INITIAL * 3:
            self.set_reg(_MSTATUS_REG, mstatus | _MSTATUS_FS_INITIAL)
        if value is None:
            value = self.reg(_FFLAGS)
        else:
            self.set_reg(_FFLAGS, value)
        self.set_reg(_MSTATUS_REG, mstatus)
        self.set_reg(_PRIV, old_priv)
        return value

    def load_state(self, st: Fields) -> None:
        """Take back ``save_state``'s state (checked: see ``_check_env``)."""
        ctx, head = self._context()
        blob = bytes(ctx)
        env = st.bytes("env", length=ENV_SIZE)
        _check_env(env, blob[head:], st)
        pc = st.int("pc")
        fflags = st.int("fflags", 0, 0x1F)
        self.medeleg = st.int("medeleg", 0, 0xFFFF)
        mip = st.int("mip", 0, S_INTERRUPTS)
        stip = st.bool("stip_raised")
        ctx.__setstate__((blob[:head] + env, ctx.size, ctx.arch, ctx.mode))
        self._uc.context_restore(ctx)
        self._fflags(fflags)
        self._pc = pc
        self._mip = mip
        self._stip_raised = stip
        self._fatal = None
        self._trap_loop.reset()
        self._uc.ctl_flush_tb()
        self.flush_tlb()
        self.host_writes()  # the whole translation cache is gone anyway
        # The engine notices a pending interrupt only when mip is written (not from a
        # restored context): write it again.
        old = self.reg(_PRIV)
        self.set_reg(_PRIV, PRIV_M)
        self.set_reg(_MIP, self.reg(_MIP))
        self.set_reg(_PRIV, old)

    def close(self) -> None:
        """Release the engine now (its translation cache and CPU state), not at the next
        garbage collection. The vCPU cannot run again; stop requests become no-ops."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._uc.mem_unmap(self.mem.base, self.mem.size)
        # The HvSlice and the exits' budget pointer live in the engine's memory: forget them
        # before it is freed, so a late request_stop cannot write there.
        self._hv = None
        if self._exits is not None:
            self._exits.budget = None
        finalize = getattr(self._uc, "_Uc__finalizer", None)  # the binding's uc_close, once
        if finalize is not None:
            finalize()
        self._keep.clear()
