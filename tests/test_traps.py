"""hv.riscv._traps: operand addresses of (compressed) loads and stores, counter reads, Sv39."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hv.hw._memory import GuestMemory
from hv.riscv import _traps as T

MASK64 = (1 << 64) - 1
RAM = 0x8000_0000
RAM_SIZE = 1 << 20

# -- encoders, written from the ISA manual's instruction formats -----------------------------


def i_type(opcode: int, funct3: int, rd: int, rs1: int, imm: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (funct3 << 12) | (rd << 7) | opcode


def s_type(opcode: int, funct3: int, rs1: int, rs2: int, imm: int) -> int:
    imm &= 0xFFF
    return (imm >> 5) << 25 | rs2 << 20 | rs1 << 15 | funct3 << 12 | (imm & 0x1F) << 7 | opcode


def amo(funct5: int, funct3: int, rd: int, rs1: int, rs2: int, aq: int = 0, rl: int = 0) -> int:
    return (
        funct5 << 27 | aq << 26 | rl << 25 | rs2 << 20 | rs1 << 15 | funct3 << 12 | rd << 7 | 0x2F
    )


def bit(v: int, n: int) -> int:
    return (v >> n) & 1


def field(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def c_lw_sw(funct3: int, rs1p: int, rp: int, uimm: int) -> int:
    """C.LW / C.SW: [12:10]=uimm[5:3] [9:7]=rs1' [6]=uimm[2] [5]=uimm[6] [4:2]=rd'/rs2'."""
    return (
        funct3 << 13
        | field(uimm, 5, 3) << 10
        | rs1p << 7
        | bit(uimm, 2) << 6
        | bit(uimm, 6) << 5
        | rp << 2
    )


def c_ld_sd(funct3: int, rs1p: int, rp: int, uimm: int) -> int:
    """C.LD / C.SD / C.FLD / C.FSD: [12:10]=uimm[5:3] [9:7]=rs1' [6:5]=uimm[7:6]."""
    return funct3 << 13 | field(uimm, 5, 3) << 10 | rs1p << 7 | field(uimm, 7, 6) << 5 | rp << 2


def c_lwsp(rd: int, uimm: int) -> int:
    """C.LWSP: [12]=uimm[5] [11:7]=rd [6:4]=uimm[4:2] [3:2]=uimm[7:6]."""
    return (
        0b010 << 13
        | bit(uimm, 5) << 12
        | rd << 7
        | field(uimm, 4, 2) << 4
        | field(uimm, 7, 6) << 2
        | 0b10
    )


def c_ldsp(funct3: int, rd: int, uimm: int) -> int:
    """C.LDSP / C.FLDSP: [12]=uimm[5] [11:7]=rd [6:5]=uimm[4:3] [4:2]=uimm[8:6]."""
    return (
        funct3 << 13
        | bit(uimm, 5) << 12
        | rd << 7
        | field(uimm, 4, 3) << 5
        | field(uimm, 8, 6) << 2
        | 0b10
    )


def c_swsp(rs2: int, uimm: int) -> int:
    """C.SWSP: [12:9]=uimm[5:2] [8:7]=uimm[7:6] [6:2]=rs2."""
    return 0b110 << 13 | field(uimm, 5, 2) << 9 | field(uimm, 7, 6) << 7 | rs2 << 2 | 0b10


def c_sdsp(funct3: int, rs2: int, uimm: int) -> int:
    """C.SDSP / C.FSDSP: [12:10]=uimm[5:3] [9:7]=uimm[8:6] [6:2]=rs2."""
    return funct3 << 13 | field(uimm, 5, 3) << 10 | field(uimm, 8, 6) << 7 | rs2 << 2 | 0b10


def regs(**values: int) -> Callable[[int], int]:
    """x(reg) with x2 = sp, x8..x15 = s0, s1, a0..a5; unnamed registers read a marker."""
    names = {"sp": 2, "s0": 8, "s1": 9, "a0": 10, "a1": 11, "a2": 12, "a5": 15, "t0": 5}
    table = {names[k]: v for k, v in values.items()}
    return lambda r: 0 if r == 0 else table.get(r, 0xBAD0_0000 + r)


SP, S0, S1, A0, A1, A2, A5, T0 = 2, 8, 9, 10, 11, 12, 15, 5

# -- memory_operand_address: 32-bit loads, stores, AMOs --------------------------------------


@pytest.mark.parametrize("funct3", [0, 1, 2, 3, 4, 5, 6])  # lb lh lw ld lbu lhu lwu
@pytest.mark.parametrize("imm", [0, 1, 8, 2047, -1, -2048, -24])
def test_load_address(funct3: int, imm: int) -> None:
    insn = i_type(0x03, funct3, A1, A0, imm)
    assert T.memory_operand_address(insn, regs(a0=0x8000_1000)) == 0x8000_1000 + imm


@pytest.mark.parametrize("funct3", [0, 1, 2, 3])  # sb sh sw sd
@pytest.mark.parametrize("imm", [0, 4, 31, 32, 2047, -1, -2048, -33])
def test_store_address(funct3: int, imm: int) -> None:
    insn = s_type(0x23, funct3, A0, A1, imm)
    assert T.memory_operand_address(insn, regs(a0=0x8000_1000, a1=0x55)) == 0x8000_1000 + imm


def test_fp_load_and_store_address() -> None:
    x = regs(s0=0x9000)
    assert T.memory_operand_address(i_type(0x07, 3, 1, S0, -16), x) == 0x9000 - 16  # fld
    assert T.memory_operand_address(s_type(0x27, 2, S0, 3, 100), x) == 0x9000 + 100  # fsw


def test_address_wraps_at_64_bits() -> None:
    assert T.memory_operand_address(i_type(0x03, 3, A1, A0, -8), regs(a0=4)) == MASK64 - 3
    assert T.memory_operand_address(s_type(0x23, 3, A0, A1, 16), regs(a0=MASK64)) == 15


def test_x0_base_register() -> None:
    assert T.memory_operand_address(i_type(0x03, 2, A1, 0, 0x7F0), regs()) == 0x7F0


@pytest.mark.parametrize(
    "funct5", [0b00010, 0b00011, 0b00001, 0b00000, 0b00100, 0b01100, 0b01000, 0b10000, 0b11100]
)
@pytest.mark.parametrize("funct3", [2, 3])
def test_amo_address_is_rs1(funct5: int, funct3: int) -> None:
    rs2 = 0 if funct5 == 0b00010 else A2
    insn = amo(funct5, funct3, A1, A0, rs2, aq=1, rl=funct3 & 1)
    assert T.memory_operand_address(insn, regs(a0=0x8000_2008, a2=0x1234)) == 0x8000_2008


@pytest.mark.parametrize(
    "insn",
    [
        i_type(0x13, 0, A0, A0, 8),  # addi
        i_type(0x73, 2, A0, 0, 0xC01),  # rdtime
        0x00000073,  # ecall
        0x0000006F,  # j .
        i_type(0x0F, 0, 0, 0, 0x0FF),  # fence
    ],
)
def test_non_memory_instructions(insn: int) -> None:
    assert T.memory_operand_address(insn, regs(a0=0x1000)) is None


# -- memory_operand_address: every compressed load/store form -------------------------------


@pytest.mark.parametrize("funct3", [0b010, 0b110])  # c.lw, c.sw
def test_c_lw_sw_every_offset(funct3: int) -> None:
    for uimm in range(0, 128, 4):
        for rs1p in range(8):
            insn = c_lw_sw(funct3, rs1p, (rs1p + 1) % 8, uimm)
            x = regs(s0=0x1000, s1=0x2000, a0=0x3000, a1=0x4000, a2=0x5000, a5=0x8000)
            assert T.memory_operand_address(insn, x) == x(8 + rs1p) + uimm, (funct3, uimm, rs1p)


@pytest.mark.parametrize("funct3", [0b001, 0b011, 0b101, 0b111])  # c.fld c.ld c.fsd c.sd
def test_c_ld_sd_every_offset(funct3: int) -> None:
    for uimm in range(0, 256, 8):
        for rs1p in range(8):
            insn = c_ld_sd(funct3, rs1p, 7 - rs1p, uimm)
            x = regs(s0=0x1000, s1=0x2000, a0=0x3000, a5=0x8000)
            assert T.memory_operand_address(insn, x) == x(8 + rs1p) + uimm, (funct3, uimm, rs1p)


def test_c_lwsp_every_offset() -> None:
    for uimm in range(0, 256, 4):
        insn = c_lwsp(A0, uimm)
        assert T.memory_operand_address(insn, regs(sp=0x8010_0000)) == 0x8010_0000 + uimm


@pytest.mark.parametrize("funct3", [0b001, 0b011])  # c.fldsp, c.ldsp
def test_c_ldsp_every_offset(funct3: int) -> None:
    for uimm in range(0, 512, 8):
        insn = c_ldsp(funct3, S1, uimm)
        assert T.memory_operand_address(insn, regs(sp=0x8010_0000)) == 0x8010_0000 + uimm


def test_c_swsp_every_offset() -> None:
    for uimm in range(0, 256, 4):
        insn = c_swsp(A0, uimm)
        assert T.memory_operand_address(insn, regs(sp=0x8010_0000)) == 0x8010_0000 + uimm


@pytest.mark.parametrize("funct3", [0b101, 0b111])  # c.fsdsp, c.sdsp
def test_c_sdsp_every_offset(funct3: int) -> None:
    for uimm in range(0, 512, 8):
        insn = c_sdsp(funct3, A5, uimm)
        assert T.memory_operand_address(insn, regs(sp=0x8010_0000)) == 0x8010_0000 + uimm


def test_compressed_known_encodings() -> None:
    """Encodings as an assembler writes them (checked against the spec by hand)."""
    x = regs(sp=0x1000, a0=0x2000, s0=0x3000)
    assert T.memory_operand_address(0x4108, x) == 0x2000 + 0  # c.lw a0, 0(a0)
    assert T.memory_operand_address(0x6408, x) == 0x3000 + 8  # c.ld a0, 8(s0)
    assert T.memory_operand_address(0xE42A, x) == 0x1000 + 8  # c.sdsp a0, 8(sp)
    assert T.memory_operand_address(0x60A2, x) == 0x1000 + 8  # c.ldsp ra, 8(sp)
    assert T.memory_operand_address(0xC22A, x) == 0x1000 + 4  # c.swsp a0, 4(sp)
    assert T.memory_operand_address(0x4512, x) == 0x1000 + 4  # c.lwsp a0, 4(sp)


@pytest.mark.parametrize(
    "insn",
    [
        0x0000,  # illegal (c.addi4spn with nzuimm 0)
        0x0040,  # c.addi4spn s0, sp, 4
        0x8000,  # reserved quadrant-0 funct3=100
        0x0505,  # c.addi a0, 1
        0x4501,  # c.li a0, 0
        0x8082,  # c.jr ra (ret)
        0x852E,  # c.mv a0, a1
        0x0506,  # c.slli a0, 1
        0x9002,  # c.ebreak
    ],
)
def test_compressed_non_memory(insn: int) -> None:
    assert T.memory_operand_address(insn, regs(sp=0x1000, a0=0x2000)) is None


# -- is_amo_store -----------------------------------------------------------------------------


@pytest.mark.parametrize("funct3", [2, 3])
def test_is_amo_store(funct3: int) -> None:
    assert not T.is_amo_store(amo(0b00010, funct3, A1, A0, 0))  # lr
    assert not T.is_amo_store(amo(0b00010, funct3, A1, A0, 0, aq=1, rl=1))  # lr.aqrl
    assert T.is_amo_store(amo(0b00011, funct3, A1, A0, A2))  # sc
    for funct5 in (0b00001, 0b00000, 0b00100, 0b01100, 0b01000, 0b10000, 0b10100, 0b11100):
        assert T.is_amo_store(amo(funct5, funct3, A1, A0, A2)), funct5
    assert not T.is_amo_store(i_type(0x03, funct3, A1, A0, 0))  # plain load
    assert not T.is_amo_store(s_type(0x23, funct3, A0, A1, 0))  # plain store: not an AMO


# -- decode_counter_read ----------------------------------------------------------------------


@pytest.mark.parametrize("csr", [0xC00, 0xC01, 0xC02])  # cycle, time, instret
@pytest.mark.parametrize("rd", [1, A0, 31])
def test_counter_reads(csr: int, rd: int) -> None:
    assert T.decode_counter_read(i_type(0x73, 2, rd, 0, csr)) == rd  # csrrs rd, csr, x0
    assert T.decode_counter_read(i_type(0x73, 3, rd, 0, csr)) == rd  # csrrc rd, csr, x0
    assert T.decode_counter_read(i_type(0x73, 6, rd, 0, csr)) == rd  # csrrsi rd, csr, 0
    assert T.decode_counter_read(i_type(0x73, 7, rd, 0, csr)) == rd  # csrrci rd, csr, 0


def test_known_rdtime_encodings() -> None:
    assert T.decode_counter_read(0xC0102573) == A0  # rdtime a0
    assert T.decode_counter_read(0xC00027F3) == A5  # rdcycle a5
    assert T.decode_counter_read(0xC02022F3) == T0  # rdinstret t0


@pytest.mark.parametrize(
    "insn",
    [
        i_type(0x73, 1, A0, 0, 0xC01),  # csrrw a0, time, x0: writes
        i_type(0x73, 5, A0, 0, 0xC01),  # csrrwi: writes
        i_type(0x73, 2, A0, A1, 0xC01),  # csrrs a0, time, a1: sets bits
        i_type(0x73, 6, A0, 1, 0xC01),  # csrrsi a0, time, 1
        i_type(0x73, 2, A0, 0, 0x100),  # csrr a0, sstatus
        i_type(0x73, 2, A0, 0, 0xC03),  # hpmcounter3
        i_type(0x73, 2, A0, 0, 0xC81),  # timeh (rv32 only)
        i_type(0x73, 2, A0, 0, 0xB00),  # mcycle
        0x00000073,  # ecall
        0x10500073,  # wfi
        i_type(0x13, 2, A0, 0, 0xC01),  # slti: not SYSTEM
    ],
)
def test_not_counter_reads(insn: int) -> None:
    assert T.decode_counter_read(insn) is None


# -- translate / fetch_insn with an Sv39 page table -----------------------------------------

V, R, W, X = 1, 2, 4, 8
ROOT, L1, L0 = RAM + 0x1000, RAM + 0x2000, RAM + 0x3000
TOP_L1, TOP_L0 = RAM + 0x4000, RAM + 0x6000
TOP = 0xFFFF_FFC0_0000_0000  # the lowest address of the upper half (VPN[2] = 0x100)
PAGE_A, PAGE_B, PAGE_C = RAM + 0x5_0000, RAM + 0x7_0000, RAM + 0x9_0000
MEGA = RAM + 0x20_0000  # a 2 MiB-aligned physical region (only partly inside this 1 MiB RAM)


def pte(pa: int, flags: int) -> int:
    return (pa >> 12) << 10 | flags


def vpn(va: int, level: int) -> int:
    return (va >> (12 + 9 * level)) & 0x1FF


@pytest.fixture
def mem() -> GuestMemory:
    return GuestMemory(RAM, RAM_SIZE)


@pytest.fixture
def satp(mem: GuestMemory) -> int:
    """An Sv39 table:

    - 0x4000_1000 -> PAGE_A, 0x4000_2000 -> PAGE_B (4 KiB pages, physically apart)
    - 0x4000_3000: invalid PTE; 0x4000_4000 -> PAGE_C, execute-only
    - 0x4060_0000: a 2 MiB megapage -> MEGA
    - 0xC000_0000: a 1 GiB gigapage -> 0x8000_0000
    - TOP (sign-extended, upper half): -> PAGE_A through its own L1 and L0 tables
    - 0x4080_0000: an L1 pointer to a table outside RAM
    """
    w = mem.write_u64
    w(ROOT + 8 * vpn(0x4000_0000, 2), pte(L1, V))
    w(L1 + 8 * vpn(0x4000_0000, 1), pte(L0, V))
    w(L0 + 8 * 1, pte(PAGE_A, V | R | W | X))
    w(L0 + 8 * 2, pte(PAGE_B, V | R | X))
    w(L0 + 8 * 3, pte(PAGE_C, R | X))  # not valid
    w(L0 + 8 * 4, pte(PAGE_C, V | X))
    w(L1 + 8 * vpn(0x4060_0000, 1), pte(MEGA, V | R | W))
    w(L1 + 8 * vpn(0x4080_0000, 1), pte(0x1000_0000, V))
    w(ROOT + 8 * vpn(0xC000_0000, 2), pte(0x8000_0000, V | R | W | X))
    w(ROOT + 8 * vpn(TOP, 2), pte(TOP_L1, V))
    w(TOP_L1 + 8 * vpn(TOP, 1), pte(TOP_L0, V))
    w(TOP_L0 + 8 * vpn(TOP, 0), pte(PAGE_A, V | R))
    return (8 << 60) | (ROOT >> 12)


@pytest.mark.parametrize(
    ("va", "pa"),
    [
        (0x4000_1000, PAGE_A),
        (0x4000_1234, PAGE_A + 0x234),
        (0x4000_1FFF, PAGE_A + 0xFFF),
        (0x4000_2000, PAGE_B),
        (0x4000_2ABC, PAGE_B + 0xABC),
        (0x4000_4010, PAGE_C + 0x10),  # execute-only is still a leaf
        (0x4060_0000, MEGA),
        (0x4061_2345, MEGA + 0x1_2345),
        (0x407F_FFFF, MEGA + 0x1F_FFFF),
        (0xC000_0000, 0x8000_0000),
        (0xC123_4567, 0x8123_4567),
        (TOP + 0xABC, PAGE_A + 0xABC),
    ],
)
def test_translate_mapped(mem: GuestMemory, satp: int, va: int, pa: int) -> None:
    assert T.translate(mem, satp, va) == pa


@pytest.mark.parametrize(
    "va",
    [
        0x4000_0000,  # L0 entry 0: empty
        0x4000_3000,  # PTE without V
        0x4000_5000,  # empty
        0x4020_0000,  # L1 entry 1: empty
        0x4080_0000,  # L1 points at a table outside RAM
        0x0000_1000,  # root entry 0: empty
        0x8000_0000,  # root entry 2: empty
    ],
)
def test_translate_unmapped(mem: GuestMemory, satp: int, va: int) -> None:
    assert T.translate(mem, satp, va) is None


def test_translate_pointer_at_the_last_level_is_not_a_page(mem: GuestMemory, satp: int) -> None:
    mem.write_u64(L0 + 8 * 5, pte(PAGE_A, V))  # V without R/X at level 0: invalid
    assert T.translate(mem, satp, 0x4000_5000) is None


def test_translate_with_the_mmu_off(mem: GuestMemory) -> None:
    assert T.translate(mem, 0, 0x1234_5678) == 0x1234_5678
    assert T.translate(mem, 0, 0x4000_1000) == 0x4000_1000


def test_fetch_insn_across_a_page_boundary(mem: GuestMemory, satp: int) -> None:
    word = 0x0085_3503  # ld a0, 8(a0): a 32-bit instruction
    mem.write(PAGE_A + 0xFFE, (word & 0xFFFF).to_bytes(2, "little"))
    mem.write(PAGE_B, (word >> 16).to_bytes(2, "little"))
    assert T.fetch_insn(mem, satp, 0x4000_1FFE) == word
    assert T.insn_length(word) == 4


def test_fetch_insn_second_half_unmapped(mem: GuestMemory, satp: int) -> None:
    # 0x4000_3000 (after PAGE_B's page) is invalid
    mem.write(PAGE_B + 0xFFE, b"\x03\x35")  # low half of a 32-bit instruction
    assert T.fetch_insn(mem, satp, 0x4000_2FFE) is None
    mem.write(PAGE_B + 0xFFE, (0x4108).to_bytes(2, "little"))  # c.lw: only 16 bits needed
    assert T.fetch_insn(mem, satp, 0x4000_2FFE) == 0x4108
    assert T.insn_length(0x4108) == 2


def test_fetch_insn_unmapped(mem: GuestMemory, satp: int) -> None:
    assert T.fetch_insn(mem, satp, 0x4000_3000) is None
    assert T.fetch_insn(mem, 0, 0x1000) is None  # MMU off, outside RAM


def test_fetch_insn_mmu_off(mem: GuestMemory) -> None:
    mem.write(RAM + 0x100, (0x00100073).to_bytes(4, "little"))  # ebreak
    mem.write(RAM + 0x104, (0x9002).to_bytes(2, "little") + b"\xff\xff")  # c.ebreak
    assert T.fetch_insn(mem, 0, RAM + 0x100) == 0x00100073
    assert T.fetch_insn(mem, 0, RAM + 0x104) == 0x9002
    end = RAM + RAM_SIZE
    mem.write(end - 2, (0x4108).to_bytes(2, "little"))
    assert T.fetch_insn(mem, 0, end - 2) == 0x4108  # compressed, at the very end of RAM
    mem.write(end - 2, b"\x03\x35")
    assert T.fetch_insn(mem, 0, end - 2) is None  # 32-bit, half beyond RAM


def test_fetch_fault_address_with_paging(mem: GuestMemory, satp: int) -> None:
    assert T.fetch_fault_address(mem, satp, 0x4000_3000) == 0x4000_3000  # page not mapped
    # the instruction starts on a mapped page and runs into an unmapped one
    assert T.fetch_fault_address(mem, satp, 0x4000_2FFE) == 0x4000_3000


def test_fetch_fault_address_outside_memory(mem: GuestMemory) -> None:
    assert T.fetch_fault_address(mem, 0, 0x2000_0000) == 0x2000_0000


def test_cause_names() -> None:
    assert T.cause_name(T.CAUSE_LOAD_ACCESS) == "load access fault"
    assert T.cause_name(T.CAUSE_BREAKPOINT) == "breakpoint"
    assert T.cause_name(T.CAUSE_STORE_PAGE_FAULT) == "store/AMO page fault"
    assert T.cause_name(42) == "exception 42"


# -- forwarding to S-mode (pure) -------------------------------------------------------------


def test_enter_supervisor_from_user_with_interrupts_on() -> None:
    e = T.enter_supervisor(0x1000, T.CAUSE_ILLEGAL_INSN, 0xDEAD, 0, T.SSTATUS_SIE, 0x8020_0101)
    assert isinstance(e, T.SupervisorEntry)
    assert (e.sepc, e.scause, e.stval, e.pc) == (0x1000, T.CAUSE_ILLEGAL_INSN, 0xDEAD, 0x8020_0100)
    assert e.sstatus & T.SSTATUS_SPIE and not e.sstatus & T.SSTATUS_SIE
    assert not e.sstatus & T.SSTATUS_SPP  # came from U


def test_enter_supervisor_from_supervisor_with_interrupts_off() -> None:
    e = T.enter_supervisor(0x8020_0000, T.CAUSE_BREAKPOINT, 0, 1, T.SSTATUS_SPIE, 0x8030_0000)
    assert isinstance(e, T.SupervisorEntry)
    assert e.sstatus & T.SSTATUS_SPP and not e.sstatus & (T.SSTATUS_SPIE | T.SSTATUS_SIE)


def test_enter_supervisor_refuses_no_vector_and_a_trap_on_the_vector() -> None:
    assert "no trap vector" in str(T.enter_supervisor(0x1000, 2, 0, 1, 0, 0))
    assert "trap loop" in str(T.enter_supervisor(0x8030_0000, 2, 0, 1, 0, 0x8030_0000))


def test_trap_loop_needs_a_stuck_sepc() -> None:
    loop = T.TrapLoop()
    assert not any(loop.note(13, 0x1000, 0x5000, sepc=0x2000 + i) for i in range(200))
    loop.reset()
    hits = [loop.note(13, 0x1000, 0x5000, sepc=0x1000) for _ in range(T.TRAP_LOOP_LIMIT)]
    assert hits[-1] and not any(hits[:-1])
