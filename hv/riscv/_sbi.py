"""The RISC-V SBI v2.0 (and FWFT of v3.0), as the hypervisor implements it for its S-mode guests
(sans-IO), one ``Sbi`` per hart.

The guest calls with ``ecall``: a7 = extension id, a6 = function id, a0..a5 = arguments; it
gets back a0 = error code and a1 = value. Legacy (v0.1) calls return only a0. ``Sbi`` decides
what a call means and asks the machine, through ``SbiPlatform``, for the side effects
(console bytes, the timer, reset). Every argument is guest input: a bad one gets an SBI
error code and a counter, never an exception.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

from hv.hw import GuestMemory

SPEC_VERSION = (2 << 24) | 0  # SBI v2.0
IMPL_ID = 0x6876  # "hv": not one of the registered implementation ids
IMPL_VERSION = 0x0001_0000

# Error codes (SBI spec, table "Standard SBI Errors").
SUCCESS = 0
ERR_FAILED = -1
ERR_NOT_SUPPORTED = -2
ERR_INVALID_PARAM = -3
ERR_DENIED = -4
ERR_INVALID_ADDRESS = -5
ERR_ALREADY_AVAILABLE = -6
ERR_ALREADY_STARTED = -7
ERR_ALREADY_STOPPED = -8
ERR_DENIED_LOCKED = -14  # SBI v3.0 (-10 is SBI_ERR_INVALID_STATE)

EXT_BASE = 0x10
EXT_TIME = 0x54494D45
EXT_IPI = 0x735049
EXT_RFENCE = 0x52464E43
EXT_HSM = 0x48534D
EXT_SRST = 0x53525354
EXT_DBCN = 0x4442434E
EXT_FWFT = 0x46574654  # SBI 3.0 firmware features
LEGACY_SET_TIMER = 0x00
LEGACY_PUTCHAR = 0x01
LEGACY_GETCHAR = 0x02
LEGACY_CLEAR_IPI = 0x03
LEGACY_SEND_IPI = 0x04
LEGACY_SHUTDOWN = 0x08

EXTENSIONS = frozenset(
    {EXT_BASE, EXT_TIME, EXT_IPI, EXT_RFENCE, EXT_HSM, EXT_SRST, EXT_DBCN, EXT_FWFT}
    | {LEGACY_SET_TIMER, LEGACY_PUTCHAR, LEGACY_GETCHAR, LEGACY_CLEAR_IPI, LEGACY_SEND_IPI}
    | {LEGACY_SHUTDOWN}
)

# hart_get_status values
HSM_STARTED = 0
HSM_STOPPED = 1
HSM_START_PENDING = 2
HSM_STOP_PENDING = 3
HSM_SUSPENDED = 4
HSM_SUSPEND_PENDING = 5
HSM_RESUME_PENDING = 6
HSM_SUSPEND_RETENTIVE = 0x0000_0000
HSM_SUSPEND_NON_RETENTIVE = 0x8000_0000

# FWFT (SBI 3.0) feature ids and set() flags
FWFT_MISALIGNED_EXC_DELEG = 0
FWFT_LANDING_PAD = 1
FWFT_SHADOW_STACK = 2
FWFT_DOUBLE_TRAP = 3
FWFT_PTE_AD_HW_UPDATING = 4
FWFT_POINTER_MASKING_PMLEN = 5
FWFT_DEFINED = frozenset(range(6))
FWFT_SET_LOCK = 1
# satp.ASID is 16 bits wide on this hart (rv64)
ASID_MAX = 0xFFFF

_MASK64 = (1 << 64) - 1
# Most bytes one DBCN call moves: the guest retries with the rest, as the spec allows.
DBCN_CHUNK = 4096


class ResetKind(enum.Enum):
    SHUTDOWN = "shutdown"
    COLD_REBOOT = "cold reboot"
    WARM_REBOOT = "warm reboot"


class SbiPlatform(Protocol):
    """What SBI calls need from the machine, for the calling hart (``hartid``). Sets of harts
    are bit sets (bit h = hart h), already checked against ``harts``."""

    mem: GuestMemory
    hartid: int  # the hart making the calls
    harts: int  # the machine's hart count: ids 0..harts-1

    def console_write(self, data: bytes) -> bool | None:
        """Take console output; False means "not now" (the console is flow-controlled)."""
        ...

    def console_read(self, limit: int) -> bytes: ...

    def set_timer(self, deadline: int) -> None: ...

    def send_ipi(self, harts: int) -> None:
        """Raise SSIP on those harts (a stopped one ignores it, as OpenSBI does)."""
        ...

    def clear_ipi(self) -> None: ...

    def flush_tlb(self, harts: int) -> bool:
        """sfence.vma on those harts, each before it runs on. False: a hart runs on another
        thread and has not flushed yet; the caller makes the call again later."""
        ...

    def fence_i(self, harts: int) -> bool:
        """fence.i on those harts: their translated code is dropped before they run on.
        False as for ``flush_tlb``."""
        ...

    def reset(self, kind: ResetKind, failure: bool, reason: str) -> None: ...

    def hart_start(self, hart: int, addr: int, opaque: int) -> int:
        """Start a stopped hart at ``addr`` (S-mode, a0 = hart, a1 = opaque): an SBI error."""
        ...

    def hart_stop(self) -> int:
        """Stop the calling hart (it runs no more, the call does not return)."""
        ...

    def hart_status(self, hart: int) -> int: ...

    def hart_suspend(self, resume: tuple[int, int] | None) -> None:
        """Suspend the calling hart until an interrupt; ``resume`` (addr, opaque) for a
        non-retentive suspend, None for a retentive one (the call returns)."""
        ...

    def valid_entry(self, addr: int) -> bool:
        """May a hart start (or resume) at physical ``addr``?"""
        ...

    def read_ulong(self, vaddr: int) -> int | None:
        """The 64-bit word at the caller's S-mode virtual address (None: not readable)."""
        ...


def _signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >> 63 else v


class Sbi:
    """Dispatches one hart's SBI calls (``platform.hartid``). The harts of a machine each have
    one, sharing ``counters`` and ``calls`` (pass the first one's)."""

    def __init__(
        self,
        platform: SbiPlatform,
        counters: collections.Counter[str] | None = None,
        calls: collections.Counter[int] | None = None,
    ) -> None:
        self.p = platform
        self.counters: collections.Counter[str] = (
            counters if counters is not None else collections.Counter()
        )
        # by extension id
        self.calls: collections.Counter[int] = calls if calls is not None else collections.Counter()
        self.reset()

    def reset(self) -> None:
        """The hart's firmware state at power-on (FWFT features)."""
        self.misaligned_deleg = 0
        self.locked: set[int] = set()

    def call(self, eid: int, fid: int, args: Sequence[int]) -> tuple[int, int] | None:
        """Handle one call; return the new (a0, a1), or None for "not now: run the ecall again
        later" (console output while the console is flow-controlled: putchar has no way to
        say busy). Legacy calls return their result in a0 and hand a1 back unchanged."""
        self.calls[eid] += 1
        if eid <= LEGACY_SHUTDOWN:
            return self._legacy(eid, args)
        handler = self._handlers.get(eid)
        if handler is None:
            self.counters["not_supported"] += 1
            return (ERR_NOT_SUPPORTED, 0)
        return handler(self, fid, args)

    # -- v0.1 legacy ------------------------------------------------------------------------

    def _legacy(self, eid: int, a: Sequence[int]) -> tuple[int, int] | None:
        if eid == LEGACY_PUTCHAR:
            if self.p.console_write(bytes([a[0] & 0xFF])) is False:
                self.counters["console_waits"] += 1
                return None
            return (0, a[1])
        if eid == LEGACY_GETCHAR:
            got = self.p.console_read(1)
            return (got[0] if got else -1, a[1])
        if eid == LEGACY_SET_TIMER:
            self.p.set_timer(a[0])
            return (0, a[1])
        if eid == LEGACY_CLEAR_IPI:
            self.p.clear_ipi()
            return (0, a[1])
        if eid == LEGACY_SEND_IPI:
            harts = self._legacy_mask(a[0])
            if harts is None:
                self.counters["bad_address"] += 1
                return (ERR_INVALID_ADDRESS, a[1])
            self.p.send_ipi(harts)
            return (0, a[1])
        if eid == LEGACY_SHUTDOWN:
            self.p.reset(ResetKind.SHUTDOWN, False, "legacy SBI shutdown")
            return (0, a[1])
        self.counters["not_supported"] += 1
        return (ERR_NOT_SUPPORTED, a[1])

    def _legacy_mask(self, pointer: int) -> int | None:
        """v0.1's hart mask: a word at an S-mode virtual address, all harts for a null pointer
        (as OpenSBI); harts that don't exist are left out (v0.1 has no error for them)."""
        every = (1 << self.p.harts) - 1
        if pointer == 0:
            return every
        mask = self.p.read_ulong(pointer)
        return None if mask is None else mask & every

    # -- v2.0 extensions --------------------------------------------------------------------

    def _base(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        if fid == 0:
            return (SUCCESS, SPEC_VERSION)
        if fid == 1:
            return (SUCCESS, IMPL_ID)
        if fid == 2:
            return (SUCCESS, IMPL_VERSION)
        if fid == 3:
            return (SUCCESS, 1 if a[0] in EXTENSIONS else 0)
        if fid in (4, 5, 6):  # mvendorid, marchid, mimpid
            return (SUCCESS, 0)
        return self._bad_fid()

    def _time(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        if fid != 0:
            return self._bad_fid()
        self.p.set_timer(a[0])
        return (SUCCESS, 0)

    def _hart_set(self, mask: int, base: int) -> int | None:
        """The harts (a bit set) that (hart_mask, hart_mask_base) names; None if it names one
        that does not exist (ERR_INVALID_PARAM). Base -1 is every hart, the mask ignored."""
        harts = self.p.harts
        if _signed(base) == -1:
            return (1 << harts) - 1
        mask &= _MASK64
        if mask == 0:
            return 0
        if base >= harts or mask >> (harts - base):
            self.counters["bad_hart_mask"] += 1
            return None
        return mask << base

    def _ipi(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        if fid != 0:
            return self._bad_fid()
        harts = self._hart_set(a[0], a[1])
        if harts is None:
            return (ERR_INVALID_PARAM, 0)
        if harts:
            self.p.send_ipi(harts)
        return (SUCCESS, 0)

    def _rfence(self, fid: int, a: Sequence[int]) -> tuple[int, int] | None:
        if fid > 6:
            return self._bad_fid()
        harts = self._hart_set(a[0], a[1])
        if harts is None:
            return (ERR_INVALID_PARAM, 0)
        if fid >= 3:  # hypervisor fences (HFENCE.*): no H extension here
            return (ERR_NOT_SUPPORTED, 0)
        if fid in (1, 2):  # remote sfence.vma (asid): the range, then the ASID
            start, size = a[2] & _MASK64, a[3] & _MASK64
            if size != _MASK64 and start + size > 1 << 64:  # wraps: not an address range
                self.counters["bad_address"] += 1
                return (ERR_INVALID_ADDRESS, 0)
            if fid == 2 and a[4] & _MASK64 > ASID_MAX:
                self.counters["bad_asid"] += 1
                return (ERR_INVALID_PARAM, 0)
            # the whole TLB: a superset of the range and ASID
            if harts and not self.p.flush_tlb(harts):
                return None  # a target runs on another thread: again once it has flushed
        elif harts and not self.p.fence_i(harts):
            return None
        return (SUCCESS, 0)

    def _hsm(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        if fid == 0:  # hart_start(hartid, start_addr, opaque)
            hart, addr = a[0] & _MASK64, a[1] & _MASK64
            if hart >= self.p.harts:
                self.counters["bad_hart"] += 1
                return (ERR_INVALID_PARAM, 0)
            if not self.p.valid_entry(addr):
                self.counters["bad_address"] += 1
                return (ERR_INVALID_ADDRESS, 0)
            return (self.p.hart_start(hart, addr, a[2] & _MASK64), 0)
        if fid == 1:  # hart_stop: does not return
            return (self.p.hart_stop(), 0)
        if fid == 2:  # hart_get_status
            hart = a[0] & _MASK64
            if hart >= self.p.harts:
                self.counters["bad_hart"] += 1
                return (ERR_INVALID_PARAM, 0)
            return (SUCCESS, self.p.hart_status(hart))
        if fid == 3:  # hart_suspend(type, resume_addr, opaque)
            kind = a[0] & 0xFFFF_FFFF
            if kind == HSM_SUSPEND_RETENTIVE:
                self.p.hart_suspend(None)
                return (SUCCESS, 0)
            if kind == HSM_SUSPEND_NON_RETENTIVE:
                if not self.p.valid_entry(a[1] & _MASK64):
                    self.counters["bad_address"] += 1
                    return (ERR_INVALID_ADDRESS, 0)
                self.p.hart_suspend((a[1] & _MASK64, a[2] & _MASK64))
                return (SUCCESS, 0)
            return (ERR_INVALID_PARAM, 0)  # reserved, or platform-specific (none here)
        return self._bad_fid()

    def _srst(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        if fid != 0:
            return self._bad_fid()
        kinds = {0: ResetKind.SHUTDOWN, 1: ResetKind.COLD_REBOOT, 2: ResetKind.WARM_REBOOT}
        kind = kinds.get(a[0] & 0xFFFF_FFFF)
        reason = a[1] & 0xFFFF_FFFF
        if kind is None or 1 < reason < 0xE000_0000:  # reserved reasons
            self.counters["bad_reset"] += 1
            return (ERR_INVALID_PARAM, 0)
        failure = reason != 0
        why = "system failure" if reason == 1 else "no reason" if reason == 0 else f"{reason:#x}"
        self.p.reset(kind, failure, f"SBI system reset: {kind.value}, {why}")
        return (SUCCESS, 0)

    def _dbcn(self, fid: int, a: Sequence[int]) -> tuple[int, int] | None:
        if fid == 2:  # console_write_byte
            if self.p.console_write(bytes([a[0] & 0xFF])) is False:
                self.counters["console_waits"] += 1
                return None
            return (SUCCESS, 0)
        if fid not in (0, 1):
            return self._bad_fid()
        n = min(a[0], DBCN_CHUNK)
        addr = a[1]
        if a[2]:  # high half of the address: beyond 64 bits on rv64
            self.counters["bad_address"] += 1
            return (ERR_INVALID_PARAM, 0)
        if not self.p.mem.contains(addr, n):  # check the whole buffer before any effect
            self.counters["bad_address"] += 1
            return (ERR_INVALID_PARAM, 0)
        if fid == 0:
            if self.p.console_write(self.p.mem.read(addr, n)) is False:
                self.counters["console_waits"] += 1
                return (SUCCESS, 0)  # none written: the caller writes the rest again
            return (SUCCESS, n)
        got = self.p.console_read(n)
        self.p.mem.write(addr, got)
        return (SUCCESS, len(got))

    def _fwft(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        """SBI 3.0 firmware features: the per-hart ones this hart has (as OpenSBI on QEMU
        virt answers them); the others are not supported, reserved ids denied."""
        if fid not in (0, 1):
            return self._bad_fid()
        feature = a[0] & 0xFFFF_FFFF
        if feature != FWFT_MISALIGNED_EXC_DELEG:
            if feature in FWFT_DEFINED:
                return (ERR_NOT_SUPPORTED, 0)
            self.counters["fwft_denied"] += 1
            return (ERR_DENIED, 0)
        if fid == 1:  # get
            return (SUCCESS, self.misaligned_deleg)
        value, flags = a[1] & _MASK64, a[2] & _MASK64
        if value > 1 or flags & ~FWFT_SET_LOCK:
            return (ERR_INVALID_PARAM, 0)
        if feature in self.locked:
            return (ERR_DENIED_LOCKED, 0)
        # Misaligned accesses trap only for AMOs and LR/SC on this hart, and the firmware
        # never emulates those: they reach S-mode either way.
        self.misaligned_deleg = value
        if flags & FWFT_SET_LOCK:
            self.locked.add(feature)
        return (SUCCESS, 0)

    def _bad_fid(self) -> tuple[int, int]:
        self.counters["not_supported"] += 1
        return (ERR_NOT_SUPPORTED, 0)

    _handlers: ClassVar[dict[int, Callable[[Sbi, int, Sequence[int]], tuple[int, int] | None]]] = {
        EXT_BASE: _base,
        EXT_TIME: _time,
        EXT_IPI: _ipi,
        EXT_RFENCE: _rfence,
        EXT_HSM: _hsm,
        EXT_SRST: _srst,
        EXT_DBCN: _dbcn,
        EXT_FWFT: _fwft,
    }
