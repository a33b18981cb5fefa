"""A small riscv64 assembler for tests that hand-write guest code (no toolchain needed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

WFI, ECALL, FENCE_I = 0x10500073, 0x00000073, 0x0000100F


def r_type(f7: int, rs2: int, rs1: int, f3: int, rd: int, op: int) -> int:
    return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


def i_type(imm: int, rs1: int, f3: int, rd: int, op: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op


def s_type(imm: int, rs2: int, rs1: int, f3: int) -> int:
    imm &= 0xFFF
    return ((imm >> 5) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1F) << 7) | 0x23


def b_type(offset: int, rs2: int, rs1: int, f3: int) -> int:
    o = offset & 0x1FFF
    hi = ((o >> 12) & 1) << 6 | ((o >> 5) & 0x3F)
    lo = ((o >> 1) & 0xF) << 1 | ((o >> 11) & 1)
    return (hi << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (lo << 7) | 0x63


def addi(rd: int, rs1: int, imm: int) -> int:
    return i_type(imm, rs1, 0, rd, 0x13)


def andi(rd: int, rs1: int, imm: int) -> int:
    return i_type(imm, rs1, 7, rd, 0x13)


def slli(rd: int, rs1: int, sh: int) -> int:
    return i_type(sh, rs1, 1, rd, 0x13)


def add(rd: int, rs1: int, rs2: int) -> int:
    return r_type(0, rs2, rs1, 0, rd, 0x33)


def xor(rd: int, rs1: int, rs2: int) -> int:
    return r_type(0, rs2, rs1, 4, rd, 0x33)


def lui(rd: int, imm20: int) -> int:
    return ((imm20 & 0xFFFFF) << 12) | (rd << 7) | 0x37


def sd(rs2: int, rs1: int, imm: int) -> int:
    return s_type(imm, rs2, rs1, 3)


def sw(rs2: int, rs1: int, imm: int) -> int:
    return s_type(imm, rs2, rs1, 2)


def amoadd_w(rd: int, rs2: int, rs1: int) -> int:
    return r_type(0, rs2, rs1, 2, rd, 0x2F)


def bne(rs1: int, rs2: int, offset: int) -> int:
    return b_type(offset, rs2, rs1, 1)


def blt(rs1: int, rs2: int, offset: int) -> int:
    return b_type(offset, rs2, rs1, 4)


def jalr(rd: int, rs1: int, imm: int = 0) -> int:
    return i_type(imm, rs1, 0, rd, 0x67)


def code(words: Sequence[int]) -> bytes:
    return b"".join(w.to_bytes(4, "little") for w in words)


def sb(rs2: int, rs1: int, imm: int) -> int:
    return s_type(imm, rs2, rs1, 0)


def jal(rd: int, offset: int) -> int:
    o = offset & 0x1FFFFF
    imm = (
        ((o >> 20) & 1) << 31
        | ((o >> 1) & 0x3FF) << 21
        | ((o >> 11) & 1) << 20
        | ((o >> 12) & 0xFF) << 12
    )
    return imm | (rd << 7) | 0x6F


def li32(rd: int, value: int) -> list[int]:
    """lui + addi loading a 32-bit value (sign-extended, as lui does on rv64)."""
    lo = value & 0xFFF
    if lo >= 0x800:
        lo -= 0x1000
    hi = ((value - lo) >> 12) & 0xFFFFF
    return [lui(rd, hi), addi(rd, rd, lo)]


def raw_binary(words: Iterable[int]) -> bytes:
    """Instruction words as a raw binary (hv loads and enters it at 0x80200000)."""
    return code(list(words))


SRET = 0x10200073


def lw(rd: int, rs1: int, imm: int) -> int:
    return i_type(imm, rs1, 2, rd, 0x03)


def auipc(rd: int, imm20: int) -> int:
    return ((imm20 & 0xFFFFF) << 12) | (rd << 7) | 0x17


def csrw(csr: int, rs1: int) -> int:
    return i_type(csr, rs1, 1, 0, 0x73)


def csrs(csr: int, rs1: int) -> int:
    return i_type(csr, rs1, 2, 0, 0x73)


def csrr(rd: int, csr: int) -> int:
    return i_type(csr, 0, 2, rd, 0x73)


def beq(rs1: int, rs2: int, offset: int) -> int:
    return b_type(offset, rs2, rs1, 0)


def touch_ram_kernel(mib: int, then: int) -> bytes:
    """A raw kernel that writes one word in every page of `mib` MiB of RAM above 4 MiB, then
    writes `then` to the test finisher (0x5555 power off, 0x7777 reboot) and spins."""
    t0, t1, t2, t3 = 5, 6, 7, 28
    body = [
        addi(t0, 0, 1),
        slli(t0, t0, 31),  # 0x8000_0000 (lui would sign-extend it)
        lui(t3, 0x400),
        add(t0, t0, t3),  # + 4 MiB, above the kernel
        *li32(t1, mib * 256),  # pages
        lui(t2, 1),  # 4096
    ]
    loop = [sd(t1, t0, 0), add(t0, t0, t2), addi(t1, t1, -1)]
    loop.append(bne(t1, 0, -4 * len(loop)))
    tail = [*li32(t0, 0x10_0000), *li32(t1, then), sw(t1, t0, 0), jal(0, 0)]
    return raw_binary([*body, *loop, *tail])


def lbu(rd: int, rs1: int, imm: int) -> int:
    return i_type(imm, rs1, 4, rd, 0x03)


def console_flood_kernel(n: int, sbi: bool) -> bytes:
    """Writes n bytes, chr(48 + (k & 63)) for k = n down to 1, through the 16550 polling LSR
    for THRE as real drivers do (or, sbi=True, SBI legacy putchar), then powers off."""
    s1, s2, t0, t1, a0, a7 = 9, 18, 5, 6, 10, 17
    if sbi:
        write = [andi(a0, s2, 63), addi(a0, a0, 48), addi(a7, 0, 1), ECALL]
    else:
        write = [
            lbu(t0, s1, 5),  # LSR
            andi(t0, t0, 0x20),  # THRE
            b_type(-8, 0, t0, 0),  # beq t0, zero, back to the LSR read
            andi(t1, s2, 63),
            addi(t1, t1, 48),
            sb(t1, s1, 0),
        ]
    loop = [*write, addi(s2, s2, -1)]
    loop.append(bne(s2, 0, -4 * len(loop)))
    tail = [*li32(t0, 0x10_0000), *li32(t1, 0x5555), sw(t1, t0, 0), jal(0, 0)]
    return raw_binary([*li32(s1, 0x1000_0000), *li32(s2, n), *loop, *tail])


def flood_expected(n: int) -> bytes:
    return bytes(48 + (k & 63) for k in range(n, 0, -1))
