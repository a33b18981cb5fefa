"""Trap causes and the instruction decoding the firmware needs (sans-IO).

Unicorn reports a synchronous exception as a bare cause number; it gives no ``stval`` and no
instruction bits. What a real hart would put in ``stval`` is rebuilt here: the guest's page
table is walked in Python to read the faulting instruction, which is then decoded for its
memory operand (including the compressed loads and stores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hv._errors import GuestError
from hv.hw import GuestMemory

CAUSE_MISALIGNED_FETCH = 0
CAUSE_FETCH_ACCESS = 1
CAUSE_ILLEGAL_INSN = 2
CAUSE_BREAKPOINT = 3
CAUSE_MISALIGNED_LOAD = 4
CAUSE_LOAD_ACCESS = 5
CAUSE_MISALIGNED_STORE = 6
CAUSE_STORE_ACCESS = 7
CAUSE_USER_ECALL = 8
CAUSE_SUPERVISOR_ECALL = 9
CAUSE_MACHINE_ECALL = 11
CAUSE_FETCH_PAGE_FAULT = 12
CAUSE_LOAD_PAGE_FAULT = 13
CAUSE_STORE_PAGE_FAULT = 15

_NAMES = {
    0: "instruction address misaligned",
    1: "instruction access fault",
    2: "illegal instruction",
    3: "breakpoint",
    4: "load address misaligned",
    5: "load access fault",
    6: "store/AMO address misaligned",
    7: "store/AMO access fault",
    8: "environment call from U-mode",
    9: "environment call from S-mode",
    11: "environment call from M-mode",
    12: "instruction page fault",
    13: "load page fault",
    15: "store/AMO page fault",
}

FETCH_FAULTS = frozenset({CAUSE_MISALIGNED_FETCH, CAUSE_FETCH_ACCESS, CAUSE_FETCH_PAGE_FAULT})
ADDRESS_FAULTS = FETCH_FAULTS | {
    CAUSE_MISALIGNED_LOAD,
    CAUSE_LOAD_ACCESS,
    CAUSE_MISALIGNED_STORE,
    CAUSE_STORE_ACCESS,
    CAUSE_LOAD_PAGE_FAULT,
    CAUSE_STORE_PAGE_FAULT,
}
LOAD_TO_STORE_CAUSE = {
    CAUSE_MISALIGNED_LOAD: CAUSE_MISALIGNED_STORE,
    CAUSE_LOAD_ACCESS: CAUSE_STORE_ACCESS,
    CAUSE_LOAD_PAGE_FAULT: CAUSE_STORE_PAGE_FAULT,
}
LOAD_FAULTS = frozenset(LOAD_TO_STORE_CAUSE)

_MASK64 = (1 << 64) - 1
_PPN_MASK = (1 << 44) - 1
_SATP_LEVELS = {8: 3, 9: 4, 10: 5}  # Sv39, Sv48, Sv57
_PTE_V, _PTE_R, _PTE_X = 1, 2, 8


def cause_name(cause: int) -> str:
    return _NAMES.get(cause, f"exception {cause}")


def _sext(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return (value & (sign - 1)) - (value & sign)


def translate(mem: GuestMemory, satp: int, vaddr: int) -> int | None:
    """Guest virtual to physical through the guest's page table (None if not mapped).

    Permissions are not checked: the firmware only reads instructions the hart already
    fetched or faulted on.
    """
    levels = _SATP_LEVELS.get(satp >> 60)
    if levels is None:
        return vaddr & _MASK64
    table = (satp & _PPN_MASK) << 12
    for level in range(levels - 1, -1, -1):
        vpn = (vaddr >> (12 + 9 * level)) & 0x1FF
        try:
            pte = mem.read_u64(table + 8 * vpn)
        except GuestError:
            return None
        if not pte & _PTE_V:
            return None
        ppn = (pte >> 10) & _PPN_MASK
        if pte & (_PTE_R | _PTE_X):
            page_bits = 12 + 9 * level
            return ((ppn << 12) & ~((1 << page_bits) - 1)) | (vaddr & ((1 << page_bits) - 1))
        table = ppn << 12
    return None


def _read_u16(mem: GuestMemory, satp: int, vaddr: int) -> int | None:
    pa = translate(mem, satp, vaddr)
    if pa is None or not mem.contains(pa, 2):
        return None
    return int.from_bytes(mem.view[pa - mem.base : pa - mem.base + 2], "little")


def fetch_insn(mem: GuestMemory, satp: int, vaddr: int) -> int | None:
    """The instruction at ``vaddr``: 16 bits if compressed, else 32 (None if unreadable)."""
    if satp >> 60 == 0 and mem.contains(vaddr, 4):  # MMU off: the common firmware case
        off = vaddr - mem.base
        word = int.from_bytes(mem.view[off : off + 4], "little")
        return word if word & 3 == 3 else word & 0xFFFF
    lo = _read_u16(mem, satp, vaddr)
    if lo is None:
        return None
    if lo & 3 != 3:
        return lo
    hi = _read_u16(mem, satp, vaddr + 2)  # may sit on the next page
    if hi is None:
        return None
    return lo | (hi << 16)


def fetch_fault_address(mem: GuestMemory, satp: int, epc: int) -> int:
    """stval of a fetch fault: the pc, or the next page when only the second half faulted."""
    pa = translate(mem, satp, epc)
    if pa is None or not mem.contains(pa, 2):
        return epc  # the first half itself could not be fetched
    return (epc & ~0xFFF) + 0x1000


def insn_length(insn: int) -> int:
    return 4 if insn & 3 == 3 else 2


def _bits(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def memory_operand_address(insn: int, x: Callable[[int], int]) -> int | None:
    """The address a load, store or AMO accesses, from its encoding and ``x(reg)``."""
    if insn & 3 == 3:
        opcode = insn & 0x7F
        rs1 = _bits(insn, 19, 15)
        if opcode in (0x03, 0x07):  # LOAD, LOAD-FP
            imm = _sext(insn >> 20, 12)
        elif opcode in (0x23, 0x27):  # STORE, STORE-FP
            imm = _sext((_bits(insn, 31, 25) << 5) | _bits(insn, 11, 7), 12)
        elif opcode == 0x2F:  # AMO, LR/SC
            imm = 0
        else:
            return None
        return (x(rs1) + imm) & _MASK64
    quadrant, funct3 = insn & 3, _bits(insn, 15, 13)
    if quadrant == 0 and funct3 in (1, 2, 3, 5, 6, 7):
        rs1 = 8 + _bits(insn, 9, 7)
        if funct3 in (2, 6):  # c.lw, c.sw
            off = (_bits(insn, 12, 10) << 3) | (_bits(insn, 6, 6) << 2) | (_bits(insn, 5, 5) << 6)
        else:  # c.fld, c.ld, c.fsd, c.sd
            off = (_bits(insn, 12, 10) << 3) | (_bits(insn, 6, 5) << 6)
        return (x(rs1) + off) & _MASK64
    if quadrant == 2:
        if funct3 == 2:  # c.lwsp
            off = (_bits(insn, 12, 12) << 5) | (_bits(insn, 6, 4) << 2) | (_bits(insn, 3, 2) << 6)
        elif funct3 in (1, 3):  # c.fldsp, c.ldsp
            off = (_bits(insn, 12, 12) << 5) | (_bits(insn, 6, 5) << 3) | (_bits(insn, 4, 2) << 6)
        elif funct3 == 6:  # c.swsp
            off = (_bits(insn, 12, 9) << 2) | (_bits(insn, 8, 7) << 6)
        elif funct3 in (5, 7):  # c.fsdsp, c.sdsp
            off = (_bits(insn, 12, 10) << 3) | (_bits(insn, 9, 7) << 6)
        else:
            return None
        return (x(2) + off) & _MASK64
    return None


def is_amo_store(insn: int) -> bool:
    """An AMO or SC (it writes memory); LR only loads."""
    return insn & 0x7F == 0x2F and _bits(insn, 31, 27) != 0b00010


_COUNTER_CSRS = frozenset({0xC00, 0xC01, 0xC02})  # cycle, time, instret


def decode_counter_read(insn: int) -> int | None:
    """If ``insn`` only reads cycle/time/instret (``rdtime rd`` and friends), return rd."""
    if insn & 0x7F != 0x73:
        return None
    funct3 = _bits(insn, 14, 12)
    if funct3 not in (2, 3, 6, 7) or _bits(insn, 19, 15) != 0:
        return None  # csrrs/csrrc (or immediate forms) with nothing to set or clear
    if (insn >> 20) not in _COUNTER_CSRS:
        return None
    return _bits(insn, 11, 7)


# -- forwarding a trap to S-mode, as a pure function -----------------------------------------

# Identical forwarded traps in a row, each taken before the handler moved sepc on, that
# count as a trap loop: a handler that faults on itself never makes progress.
TRAP_LOOP_LIMIT = 64
SSTATUS_SIE = 1 << 1
SSTATUS_SPIE = 1 << 5
SSTATUS_SPP = 1 << 8
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SupervisorEntry:
    """The S-mode state on entering the guest's trap handler (what the firmware writes)."""

    sepc: int
    scause: int
    stval: int
    sstatus: int
    pc: int  # the vector (stvec, direct mode)


@dataclass
class TrapLoop:
    """Tells a trap loop (the same trap again while the handler never moved sepc on: it
    faulted before finishing) from a legitimate program that traps and skips each time."""

    last: tuple[int, int, int] = (-1, -1, -1)
    same: int = 0

    def reset(self) -> None:
        self.last, self.same = (-1, -1, -1), 0

    def note(self, cause: int, epc: int, tval: int, sepc: int) -> bool:
        """Record a trap about to be forwarded; True if it makes a loop."""
        key = (cause, epc, tval)
        self.same = self.same + 1 if key == self.last and sepc == epc else 1
        self.last = key
        return self.same >= TRAP_LOOP_LIMIT


def enter_supervisor(
    epc: int, cause: int, tval: int, from_priv: int, sstatus: int, stvec: int
) -> SupervisorEntry | str:
    """Forward a synchronous exception at ``epc`` to S-mode, as the privileged spec says:
    sepc, scause, stval; SPIE <- SIE, SIE <- 0, SPP <- the privilege trapped from; pc <- the
    vector. Returns the reason instead when the guest cannot take it (no vector, or a trap on
    the vector itself): that guest is stuck for good."""
    vector = stvec & ~3
    what = f"{cause_name(cause)} at pc={epc:#x} (stval={tval:#x})"
    if vector == 0:
        return f"{what} with no trap vector (stvec=0)"
    if epc == vector:
        return f"trap loop: {what} repeats inside the trap handler"
    sie = sstatus & SSTATUS_SIE
    sstatus &= ~(SSTATUS_SIE | SSTATUS_SPIE | SSTATUS_SPP)
    if sie:
        sstatus |= SSTATUS_SPIE
    if from_priv == 1:
        sstatus |= SSTATUS_SPP
    return SupervisorEntry(epc & _MASK64, cause, tval & _MASK64, sstatus, vector)
