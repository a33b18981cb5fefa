"""The RISC-V SBI v2.0, as the hypervisor implements it for its S-mode guests (sans-IO).

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

EXT_BASE = 0x10
EXT_TIME = 0x54494D45
EXT_IPI = 0x735049
EXT_RFENCE = 0x52464E43
EXT_HSM = 0x48534D
EXT_SRST = 0x53525354
EXT_DBCN = 0x4442434E
LEGACY_SET_TIMER = 0x00
LEGACY_PUTCHAR = 0x01
LEGACY_GETCHAR = 0x02
LEGACY_CLEAR_IPI = 0x03
LEGACY_SEND_IPI = 0x04
LEGACY_SHUTDOWN = 0x08

EXTENSIONS = frozenset(
    {EXT_BASE, EXT_TIME, EXT_IPI, EXT_RFENCE, EXT_HSM, EXT_SRST, EXT_DBCN}
    | {LEGACY_SET_TIMER, LEGACY_PUTCHAR, LEGACY_GETCHAR, LEGACY_CLEAR_IPI, LEGACY_SEND_IPI}
    | {LEGACY_SHUTDOWN}
)

HSM_STARTED = 0
HSM_SUSPEND_RETENTIVE = 0x0000_0000
HSM_SUSPEND_NON_RETENTIVE = 0x8000_0000

_MASK64 = (1 << 64) - 1
# Most bytes one DBCN call moves: the guest retries with the rest, as the spec allows.
DBCN_CHUNK = 4096


class ResetKind(enum.Enum):
    SHUTDOWN = "shutdown"
    COLD_REBOOT = "cold reboot"
    WARM_REBOOT = "warm reboot"


class SbiPlatform(Protocol):
    """What SBI calls need from the machine."""

    mem: GuestMemory

    def console_write(self, data: bytes) -> bool | None:
        """Take console output; False means "not now" (the console is flow-controlled)."""
        ...

    def console_read(self, limit: int) -> bytes: ...

    def set_timer(self, deadline: int) -> None: ...

    def send_ipi(self) -> None: ...

    def clear_ipi(self) -> None: ...

    def flush_tlb(self) -> None: ...

    def reset(self, kind: ResetKind, failure: bool, reason: str) -> None: ...

    def hart_suspend(self) -> None: ...


def _signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >> 63 else v


class Sbi:
    """Dispatches SBI calls for a single-hart machine (hart id 0)."""

    def __init__(self, platform: SbiPlatform) -> None:
        self.p = platform
        self.counters: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[int] = collections.Counter()  # by extension id

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
            self.p.send_ipi()
            return (0, a[1])
        if eid == LEGACY_SHUTDOWN:
            self.p.reset(ResetKind.SHUTDOWN, False, "legacy SBI shutdown")
            return (0, a[1])
        self.counters["not_supported"] += 1
        return (ERR_NOT_SUPPORTED, a[1])

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

    def _hart_mask_has_self(self, mask: int, base: int) -> bool | None:
        """Whether hart 0 is in (mask, base); None if the mask names a hart that doesn't exist."""
        if _signed(base) == -1:  # "all harts"
            return True
        if mask == 0:
            return False
        if base != 0 or mask & ~1:
            return None
        return True

    def _ipi(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        if fid != 0:
            return self._bad_fid()
        hit = self._hart_mask_has_self(a[0], a[1])
        if hit is None:
            return (ERR_INVALID_PARAM, 0)
        if hit:
            self.p.send_ipi()
        return (SUCCESS, 0)

    def _rfence(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        if fid > 6:
            return self._bad_fid()
        hit = self._hart_mask_has_self(a[0], a[1])
        if hit is None:
            return (ERR_INVALID_PARAM, 0)
        if fid >= 3:  # hypervisor fences (HFENCE.*): no H extension here
            return (ERR_NOT_SUPPORTED, 0)
        if hit and fid in (1, 2):  # remote sfence.vma (asid): the one hart is us
            self.p.flush_tlb()
        return (SUCCESS, 0)

    def _hsm(self, fid: int, a: Sequence[int]) -> tuple[int, int]:
        if fid == 0:  # hart_start
            return (ERR_ALREADY_AVAILABLE if a[0] == 0 else ERR_INVALID_PARAM, 0)
        if fid == 1:  # hart_stop: the only hart stopping stops the machine
            self.p.reset(ResetKind.SHUTDOWN, True, "hart 0 stopped itself (SBI HSM hart_stop)")
            return (SUCCESS, 0)
        if fid == 2:  # hart_get_status
            return (SUCCESS, HSM_STARTED) if a[0] == 0 else (ERR_INVALID_PARAM, 0)
        if fid == 3:  # hart_suspend
            kind = a[0] & 0xFFFF_FFFF
            if kind == HSM_SUSPEND_RETENTIVE:
                self.p.hart_suspend()
                return (SUCCESS, 0)
            if kind == HSM_SUSPEND_NON_RETENTIVE:
                return (ERR_NOT_SUPPORTED, 0)
            return (ERR_INVALID_PARAM, 0)
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
    }
