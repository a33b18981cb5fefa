"""hv.riscv._sbi.Sbi against a fake platform: every extension and function, errors, legacy calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hv.hw._memory import GuestMemory
from hv.riscv import _sbi as S
from hv.riscv._sbi import ResetKind, Sbi

RAM = 0x8000_0000
RAM_SIZE = 1 << 20
ALL_HARTS = (1 << 64) - 1  # hart_mask_base = -1


@dataclass
class FakePlatform:
    """An SbiPlatform that records what the SBI asked of it."""

    mem: GuestMemory = field(default_factory=lambda: GuestMemory(RAM, RAM_SIZE))
    output: bytearray = field(default_factory=bytearray)
    input: bytearray = field(default_factory=bytearray)
    timers: list[int] = field(default_factory=list)
    ipis_sent: int = 0
    ipis_cleared: int = 0
    tlb_flushes: int = 0
    resets: list[tuple[ResetKind, bool, str]] = field(default_factory=list)
    suspends: int = 0
    busy: bool = False  # the console is flow-controlled: writes are refused
    fence_busy: bool = False  # a target hart runs on another thread and has not flushed
    hartid: int = 0
    harts: int = 1
    ipi_targets: list[int] = field(default_factory=list)  # bit sets
    tlb_targets: list[int] = field(default_factory=list)
    fence_i_targets: list[int] = field(default_factory=list)
    states: dict[int, int] = field(default_factory=dict)  # HSM state by hart (0: started)
    started: list[tuple[int, int, int]] = field(default_factory=list)
    resumes: list[tuple[int, int] | None] = field(default_factory=list)
    words: dict[int, int] = field(default_factory=dict)  # read_ulong's memory

    def console_write(self, data: bytes) -> bool:
        if self.busy:
            return False
        self.output += data
        return True

    def console_read(self, limit: int) -> bytes:
        got = bytes(self.input[:limit])
        del self.input[:limit]
        return got

    def set_timer(self, deadline: int) -> None:
        self.timers.append(deadline)

    def send_ipi(self, harts: int) -> None:
        self.ipis_sent += 1
        self.ipi_targets.append(harts)

    def clear_ipi(self) -> None:
        self.ipis_cleared += 1

    def flush_tlb(self, harts: int) -> bool:
        self.tlb_flushes += 1
        self.tlb_targets.append(harts)
        return not self.fence_busy

    def fence_i(self, harts: int) -> bool:
        self.fence_i_targets.append(harts)
        return not self.fence_busy

    def reset(self, kind: ResetKind, failure: bool, reason: str) -> None:
        self.resets.append((kind, failure, reason))

    def state(self, hart: int) -> int:
        return self.states.get(hart, S.HSM_STARTED if hart == 0 else S.HSM_STOPPED)

    def hart_start(self, hart: int, addr: int, opaque: int) -> int:
        if self.state(hart) == S.HSM_STARTED:
            return S.ERR_ALREADY_AVAILABLE
        self.states[hart] = S.HSM_START_PENDING
        self.started.append((hart, addr, opaque))
        return S.SUCCESS

    def hart_stop(self) -> int:
        if self.harts == 1:
            self.reset(ResetKind.SHUTDOWN, True, "hart 0 stopped itself (SBI HSM hart_stop)")
        self.states[self.hartid] = S.HSM_STOPPED
        return S.SUCCESS

    def hart_status(self, hart: int) -> int:
        return self.state(hart)

    def hart_suspend(self, resume: tuple[int, int] | None) -> None:
        self.suspends += 1
        self.resumes.append(resume)

    def valid_entry(self, addr: int) -> bool:
        return self.mem.contains(addr, 4) and addr % 2 == 0

    def read_ulong(self, vaddr: int) -> int | None:
        return self.words.get(vaddr)


@pytest.fixture
def plat() -> FakePlatform:
    return FakePlatform()


@pytest.fixture
def sbi(plat: FakePlatform) -> Sbi:
    return Sbi(plat)


def call(sbi: Sbi, eid: int, fid: int, *args: int) -> tuple[int, int] | None:
    a = [*args, 0, 0, 0, 0, 0, 0][:6]
    return sbi.call(eid, fid, a)


# -- BASE -----------------------------------------------------------------------------------


def test_base_versions_and_ids(sbi: Sbi) -> None:
    assert call(sbi, S.EXT_BASE, 0) == (S.SUCCESS, 2 << 24)  # v2.0
    assert call(sbi, S.EXT_BASE, 1) == (S.SUCCESS, S.IMPL_ID)
    assert call(sbi, S.EXT_BASE, 2) == (S.SUCCESS, S.IMPL_VERSION)
    for fid in (4, 5, 6):  # mvendorid, marchid, mimpid
        assert call(sbi, S.EXT_BASE, fid) == (S.SUCCESS, 0)


@pytest.mark.parametrize(
    "eid",
    [
        S.EXT_BASE,
        S.EXT_TIME,
        S.EXT_IPI,
        S.EXT_RFENCE,
        S.EXT_HSM,
        S.EXT_SRST,
        S.EXT_DBCN,
        0x00,
        0x01,
        0x02,
        0x03,
        0x04,
        0x08,
    ],
)
def test_probe_finds_implemented_extensions(sbi: Sbi, eid: int) -> None:
    assert call(sbi, S.EXT_BASE, 3, eid) == (S.SUCCESS, 1)


@pytest.mark.parametrize(
    "eid",
    [0x05, 0x06, 0x07, 0x504D55, 0x535441, 0x43505043, 0x4E41434C, 0x53555350, 0xDEADBEEF],
)
def test_probe_reports_absent_extensions(sbi: Sbi, eid: int) -> None:
    # legacy remote fences, PMU, STA, CPPC, NACL, SUSP, and nonsense
    assert call(sbi, S.EXT_BASE, 3, eid) == (S.SUCCESS, 0)


def test_unknown_base_function(sbi: Sbi) -> None:
    assert call(sbi, S.EXT_BASE, 7) == (S.ERR_NOT_SUPPORTED, 0)
    assert sbi.counters["not_supported"] == 1


def test_unknown_extension(sbi: Sbi) -> None:
    assert call(sbi, 0x0A000000, 0) == (S.ERR_NOT_SUPPORTED, 0)
    assert call(sbi, 0x504D55, 0) == (S.ERR_NOT_SUPPORTED, 0)  # PMU: not implemented
    assert sbi.counters["not_supported"] == 2
    assert sbi.calls[0x504D55] == 1


def test_calls_are_counted_by_extension(sbi: Sbi) -> None:
    for _ in range(3):
        call(sbi, S.EXT_BASE, 0)
    call(sbi, S.EXT_TIME, 0, 5)
    assert sbi.calls[S.EXT_BASE] == 3
    assert sbi.calls[S.EXT_TIME] == 1


# -- TIME -----------------------------------------------------------------------------------


def test_time_set_timer(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_TIME, 0, 12345) == (S.SUCCESS, 0)
    assert call(sbi, S.EXT_TIME, 0, ALL_HARTS) == (S.SUCCESS, 0)  # "no timer"
    assert plat.timers == [12345, ALL_HARTS]
    assert call(sbi, S.EXT_TIME, 1, 1) == (S.ERR_NOT_SUPPORTED, 0)
    assert plat.timers == [12345, ALL_HARTS]


# -- IPI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mask", "base", "result", "sent"),
    [
        (1, 0, S.SUCCESS, 1),  # hart 0
        (0, 0, S.SUCCESS, 0),  # nobody
        (0, ALL_HARTS, S.SUCCESS, 1),  # base -1: all harts, the mask is ignored
        (0b10, 0, S.ERR_INVALID_PARAM, 0),  # hart 1 doesn't exist
        (0b11, 0, S.ERR_INVALID_PARAM, 0),  # hart 0 and hart 1
        (1, 1, S.ERR_INVALID_PARAM, 0),  # hart 1 (base 1, bit 0)
        (1, 64, S.ERR_INVALID_PARAM, 0),
        (1 << 63, 0, S.ERR_INVALID_PARAM, 0),
    ],
)
def test_ipi_hart_masks(
    sbi: Sbi, plat: FakePlatform, mask: int, base: int, result: int, sent: int
) -> None:
    assert call(sbi, S.EXT_IPI, 0, mask, base) == (result, 0)
    assert plat.ipis_sent == sent


def test_ipi_unknown_function(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_IPI, 1, 1, 0) == (S.ERR_NOT_SUPPORTED, 0)
    assert plat.ipis_sent == 0


# -- RFENCE ---------------------------------------------------------------------------------


def test_rfence_fence_i_needs_no_tlb_flush(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_RFENCE, 0, 1, 0) == (S.SUCCESS, 0)
    assert plat.tlb_flushes == 0


@pytest.mark.parametrize("fid", [0, 1, 2])
def test_a_remote_fence_not_yet_done_is_made_again(sbi: Sbi, plat: FakePlatform, fid: int) -> None:
    """A target that runs on another thread has not flushed: no answer yet (the vCPU puts
    the guest back on its ecall); the same call later succeeds."""
    plat.harts = 2
    plat.fence_busy = True
    assert call(sbi, S.EXT_RFENCE, fid, 2, 0) is None
    plat.fence_busy = False
    assert call(sbi, S.EXT_RFENCE, fid, 2, 0) == (S.SUCCESS, 0)


@pytest.mark.parametrize("fid", [1, 2])  # remote_sfence_vma, remote_sfence_vma_asid
def test_rfence_sfence_vma_flushes(sbi: Sbi, plat: FakePlatform, fid: int) -> None:
    assert call(sbi, S.EXT_RFENCE, fid, 1, 0, 0x1000, 0x2000, 7) == (S.SUCCESS, 0)
    assert call(sbi, S.EXT_RFENCE, fid, 0, ALL_HARTS, 0, ALL_HARTS) == (S.SUCCESS, 0)
    assert plat.tlb_flushes == 2
    assert call(sbi, S.EXT_RFENCE, fid, 0, 0) == (S.SUCCESS, 0)  # empty mask: nothing to do
    assert plat.tlb_flushes == 2


@pytest.mark.parametrize("fid", [0, 1, 2, 3, 4, 5, 6])
def test_rfence_bad_hart_mask(sbi: Sbi, plat: FakePlatform, fid: int) -> None:
    assert call(sbi, S.EXT_RFENCE, fid, 0b10, 0) == (S.ERR_INVALID_PARAM, 0)
    assert plat.tlb_flushes == 0


@pytest.mark.parametrize("fid", [3, 4, 5, 6])  # HFENCE.GVMA/VVMA variants: no H extension
def test_rfence_hypervisor_fences_not_supported(sbi: Sbi, plat: FakePlatform, fid: int) -> None:
    assert call(sbi, S.EXT_RFENCE, fid, 1, 0) == (S.ERR_NOT_SUPPORTED, 0)
    assert plat.tlb_flushes == 0


def test_rfence_unknown_function(sbi: Sbi) -> None:
    assert call(sbi, S.EXT_RFENCE, 7, 1, 0) == (S.ERR_NOT_SUPPORTED, 0)
    assert sbi.counters["not_supported"] == 1


# -- HSM ------------------------------------------------------------------------------------


def test_hsm_hart_start(sbi: Sbi) -> None:
    assert call(sbi, S.EXT_HSM, 0, 0, RAM, 0) == (S.ERR_ALREADY_AVAILABLE, 0)
    assert call(sbi, S.EXT_HSM, 0, 1, RAM, 0) == (S.ERR_INVALID_PARAM, 0)


def test_hsm_hart_stop_shuts_down_with_failure(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_HSM, 1) == (S.SUCCESS, 0)
    assert len(plat.resets) == 1
    kind, failure, reason = plat.resets[0]
    assert kind is ResetKind.SHUTDOWN
    assert failure
    assert "hart_stop" in reason


def test_hsm_hart_get_status(sbi: Sbi) -> None:
    assert call(sbi, S.EXT_HSM, 2, 0) == (S.SUCCESS, S.HSM_STARTED)
    assert call(sbi, S.EXT_HSM, 2, 1) == (S.ERR_INVALID_PARAM, 0)
    assert call(sbi, S.EXT_HSM, 2, ALL_HARTS) == (S.ERR_INVALID_PARAM, 0)


def test_hsm_hart_suspend(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_HSM, 3, S.HSM_SUSPEND_RETENTIVE) == (S.SUCCESS, 0)
    assert plat.suspends == 1
    # only the low 32 bits are the suspend type
    assert call(sbi, S.EXT_HSM, 3, 1 << 32) == (S.SUCCESS, 0)
    assert plat.suspends == 2
    assert call(sbi, S.EXT_HSM, 3, S.HSM_SUSPEND_NON_RETENTIVE, RAM, 7) == (S.SUCCESS, 0)
    assert plat.resumes[-1] == (RAM, 7)
    assert call(sbi, S.EXT_HSM, 3, S.HSM_SUSPEND_NON_RETENTIVE, 0x1000, 7) == (
        S.ERR_INVALID_ADDRESS,
        0,
    )
    assert plat.suspends == 3
    assert call(sbi, S.EXT_HSM, 3, 0x1000_0000) == (S.ERR_INVALID_PARAM, 0)  # reserved
    assert call(sbi, S.EXT_HSM, 3, 0x8000_0001) == (S.ERR_INVALID_PARAM, 0)  # reserved
    assert call(sbi, S.EXT_HSM, 3, 1) == (S.ERR_INVALID_PARAM, 0)  # reserved
    assert plat.suspends == 3


def test_hsm_unknown_function(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_HSM, 4) == (S.ERR_NOT_SUPPORTED, 0)
    assert plat.resets == []


# -- SRST -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rtype", "reason", "kind", "failure", "text"),
    [
        (0, 0, ResetKind.SHUTDOWN, False, "no reason"),
        (0, 1, ResetKind.SHUTDOWN, True, "system failure"),
        (1, 0, ResetKind.COLD_REBOOT, False, "cold reboot"),
        (2, 0, ResetKind.WARM_REBOOT, False, "warm reboot"),
        (2, 1, ResetKind.WARM_REBOOT, True, "system failure"),
        (0, 0xE000_0000, ResetKind.SHUTDOWN, True, "0xe0000000"),  # SBI implementation specific
        (0, 0xF000_0001, ResetKind.SHUTDOWN, True, "0xf0000001"),  # vendor specific
        ((1 << 32) | 1, 1 << 32, ResetKind.COLD_REBOOT, False, "no reason"),  # 32-bit args
    ],
)
def test_srst_kinds_and_reasons(
    sbi: Sbi,
    plat: FakePlatform,
    rtype: int,
    reason: int,
    kind: ResetKind,
    failure: bool,
    text: str,
) -> None:
    assert call(sbi, S.EXT_SRST, 0, rtype, reason) == (S.SUCCESS, 0)
    assert len(plat.resets) == 1
    got_kind, got_failure, got_reason = plat.resets[0]
    assert got_kind is kind
    assert got_failure is failure
    assert text in got_reason
    assert kind.value in got_reason


@pytest.mark.parametrize(
    ("rtype", "reason"),
    [(3, 0), (0xEFFF_FFFF, 0), (0xF000_0000, 0), (0, 2), (0, 0xDFFF_FFFF), (1, 0x1234)],
)
def test_srst_reserved_type_or_reason(
    sbi: Sbi, plat: FakePlatform, rtype: int, reason: int
) -> None:
    assert call(sbi, S.EXT_SRST, 0, rtype, reason) == (S.ERR_INVALID_PARAM, 0)
    assert plat.resets == []
    assert sbi.counters["bad_reset"] == 1


def test_srst_unknown_function(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_SRST, 1, 0, 0) == (S.ERR_NOT_SUPPORTED, 0)
    assert plat.resets == []


# -- DBCN -----------------------------------------------------------------------------------


def test_dbcn_write(sbi: Sbi, plat: FakePlatform) -> None:
    plat.mem.write(RAM + 0x100, b"hello, world")
    assert call(sbi, S.EXT_DBCN, 0, 5, RAM + 0x100, 0) == (S.SUCCESS, 5)
    assert call(sbi, S.EXT_DBCN, 0, 0, RAM + 0x100, 0) == (S.SUCCESS, 0)
    assert bytes(plat.output) == b"hello"


def test_dbcn_write_is_chunked(sbi: Sbi, plat: FakePlatform) -> None:
    data = bytes(range(256)) * 40  # 10 KiB
    plat.mem.write(RAM, data)
    assert call(sbi, S.EXT_DBCN, 0, len(data), RAM, 0) == (S.SUCCESS, S.DBCN_CHUNK)
    assert bytes(plat.output) == data[: S.DBCN_CHUNK]


def test_dbcn_write_up_to_the_end_of_ram(sbi: Sbi, plat: FakePlatform) -> None:
    end = RAM + RAM_SIZE
    plat.mem.write(end - 3, b"xyz")
    assert call(sbi, S.EXT_DBCN, 0, 3, end - 3, 0) == (S.SUCCESS, 3)
    assert bytes(plat.output) == b"xyz"


@pytest.mark.parametrize(
    ("n", "lo", "hi"),
    [
        (4, 0x1000, 0),  # below RAM
        (4, RAM + RAM_SIZE, 0),  # just past RAM
        (8, RAM + RAM_SIZE - 4, 0),  # straddles the end of RAM
        (4, RAM, 1),  # base_addr_hi set: beyond 64 bits
        (4, (1 << 64) - 2, 0),  # wraps around
    ],
)
@pytest.mark.parametrize("fid", [0, 1])
def test_dbcn_bad_address(sbi: Sbi, plat: FakePlatform, fid: int, n: int, lo: int, hi: int) -> None:
    plat.input += bytes(n)  # a read has something to store
    assert call(sbi, S.EXT_DBCN, fid, n, lo, hi) == (S.ERR_INVALID_PARAM, 0)
    assert sbi.counters["bad_address"] == 1
    assert plat.output == b""


def test_dbcn_read(sbi: Sbi, plat: FakePlatform) -> None:
    plat.input += b"typed"
    assert call(sbi, S.EXT_DBCN, 1, 3, RAM + 0x40, 0) == (S.SUCCESS, 3)
    assert plat.mem.read(RAM + 0x40, 3) == b"typ"
    assert call(sbi, S.EXT_DBCN, 1, 100, RAM + 0x80, 0) == (S.SUCCESS, 2)
    assert plat.mem.read(RAM + 0x80, 2) == b"ed"
    assert call(sbi, S.EXT_DBCN, 1, 100, RAM + 0x80, 0) == (S.SUCCESS, 0)  # nothing typed


@pytest.mark.parametrize(
    ("typed", "n", "addr"),
    [
        (b"abc", 3, 0x1000),  # the bytes must not be lost
        (b"", 4, RAM + RAM_SIZE),  # the buffer is checked even when there is nothing to read
        (b"ab", 8, RAM + RAM_SIZE - 4),  # the whole buffer, not only the bytes read
    ],
)
def test_dbcn_read_checks_the_buffer_first(
    sbi: Sbi, plat: FakePlatform, typed: bytes, n: int, addr: int
) -> None:
    plat.input += typed
    assert call(sbi, S.EXT_DBCN, 1, n, addr, 0) == (S.ERR_INVALID_PARAM, 0)
    assert bytes(plat.input) == typed


def test_a_busy_console_makes_the_guest_write_again(sbi: Sbi, plat: FakePlatform) -> None:
    """Flow control: putchar and write_byte ask for the ecall to run again later (None);
    DBCN write reports nothing written. Nothing reaches the console, nothing is lost."""
    plat.busy = True
    plat.mem.write(RAM + 0x100, b"hello")
    assert sbi.call(S.LEGACY_PUTCHAR, 0, [ord("x"), 0, 0, 0, 0, 0]) is None
    assert sbi.call(S.EXT_DBCN, 2, [ord("y"), 0, 0, 0, 0, 0]) is None
    assert call(sbi, S.EXT_DBCN, 0, 5, RAM + 0x100, 0) == (S.SUCCESS, 0)
    assert plat.output == b"" and sbi.counters["console_waits"] == 3
    plat.busy = False
    assert call(sbi, S.EXT_DBCN, 0, 5, RAM + 0x100, 0) == (S.SUCCESS, 5)
    assert plat.output == b"hello"


def test_dbcn_write_byte(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_DBCN, 2, ord("A")) == (S.SUCCESS, 0)
    assert call(sbi, S.EXT_DBCN, 2, 0x100 | ord("B")) == (S.SUCCESS, 0)  # low byte only
    assert bytes(plat.output) == b"AB"


def test_dbcn_unknown_function(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.EXT_DBCN, 3, 1, RAM, 0) == (S.ERR_NOT_SUPPORTED, 0)
    assert plat.output == b""


# -- legacy (v0.1) --------------------------------------------------------------------------


def test_legacy_putchar(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.LEGACY_PUTCHAR, 0, ord("x"), 77) == (0, 77)  # a1 is preserved
    assert call(sbi, S.LEGACY_PUTCHAR, 0, 0x1FF) == (0, 0)  # low byte only
    assert bytes(plat.output) == b"x\xff"


def test_legacy_getchar(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.LEGACY_GETCHAR, 0, 0, 5) == (-1, 5)  # nothing typed
    plat.input += b"hi"
    assert call(sbi, S.LEGACY_GETCHAR, 0, 0, 5) == (ord("h"), 5)
    assert call(sbi, S.LEGACY_GETCHAR, 0) == (ord("i"), 0)
    assert call(sbi, S.LEGACY_GETCHAR, 0) == (-1, 0)


def test_legacy_timer_and_ipis(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.LEGACY_SET_TIMER, 0, 999, 3) == (0, 3)
    assert plat.timers == [999]
    plat.words[RAM] = 1
    assert call(sbi, S.LEGACY_SEND_IPI, 0, RAM, 3) == (0, 3)
    assert plat.ipis_sent == 1
    assert call(sbi, S.LEGACY_CLEAR_IPI, 0, 0, 3) == (0, 3)
    assert plat.ipis_cleared == 1


def test_legacy_shutdown(sbi: Sbi, plat: FakePlatform) -> None:
    assert call(sbi, S.LEGACY_SHUTDOWN, 0) == (0, 0)
    assert len(plat.resets) == 1
    kind, failure, reason = plat.resets[0]
    assert kind is ResetKind.SHUTDOWN
    assert not failure
    assert "legacy" in reason


@pytest.mark.parametrize("eid", [5, 6, 7])  # legacy remote fence.i / sfence.vma (asid)
def test_legacy_remote_fences_not_supported(sbi: Sbi, plat: FakePlatform, eid: int) -> None:
    result = call(sbi, eid, 0, 0, 9)
    assert result == (S.ERR_NOT_SUPPORTED, 9)
    assert sbi.counters["not_supported"] == 1
    assert plat.tlb_flushes == 0


# -- several harts ----------------------------------------------------------------------------


@pytest.fixture
def sbi4(plat: FakePlatform) -> Sbi:
    plat.harts = 4
    plat.hartid = 1
    return Sbi(plat)


@pytest.mark.parametrize(
    ("mask", "base", "result", "targets"),
    [
        (0b1111, 0, S.SUCCESS, 0b1111),
        (0b11, 2, S.SUCCESS, 0b1100),
        (0b1, 3, S.SUCCESS, 0b1000),
        (0, ALL_HARTS, S.SUCCESS, 0b1111),  # base -1: every hart, the mask ignored
        (0b111, 0, S.SUCCESS, 0b111),
        (0, 7, S.SUCCESS, None),  # an empty mask names no hart: nothing to check
        (0b10000, 0, S.ERR_INVALID_PARAM, None),  # hart 4
        (0b111, 2, S.ERR_INVALID_PARAM, None),  # harts 2, 3 and 4
        (1, 4, S.ERR_INVALID_PARAM, None),
        (1, 1 << 40, S.ERR_INVALID_PARAM, None),
    ],
)
def test_hart_masks_of_a_four_hart_machine(
    sbi4: Sbi, plat: FakePlatform, mask: int, base: int, result: int, targets: int | None
) -> None:
    assert call(sbi4, S.EXT_IPI, 0, mask, base) == (result, 0)
    assert plat.ipi_targets == ([] if targets is None else [targets])
    for fid in (0, 1, 2):
        assert call(sbi4, S.EXT_RFENCE, fid, mask, base) == (result, 0)
    assert plat.fence_i_targets == ([] if targets is None else [targets])
    assert plat.tlb_targets == ([] if targets is None else [targets, targets])


@pytest.mark.parametrize("fid", [1, 2])
def test_sfence_vma_ranges_and_asids_are_checked(sbi4: Sbi, plat: FakePlatform, fid: int) -> None:
    top = (1 << 64) - 1
    assert call(sbi4, S.EXT_RFENCE, fid, 1, 0, 0, 0, 0) == (S.SUCCESS, 0)  # everything
    assert call(sbi4, S.EXT_RFENCE, fid, 1, 0, 0x1000, top, 0) == (S.SUCCESS, 0)  # everything
    assert call(sbi4, S.EXT_RFENCE, fid, 1, 0, top - 0xFFF, 0x1000, 0) == (S.SUCCESS, 0)
    assert call(sbi4, S.EXT_RFENCE, fid, 1, 0, top - 0xFFF, 0x2000, 0) == (
        S.ERR_INVALID_ADDRESS,
        0,
    )
    assert len(plat.tlb_targets) == 3
    if fid == 2:
        assert call(sbi4, S.EXT_RFENCE, fid, 1, 0, 0, 0, 0xFFFF) == (S.SUCCESS, 0)
        assert call(sbi4, S.EXT_RFENCE, fid, 1, 0, 0, 0, 0x10000) == (S.ERR_INVALID_PARAM, 0)
        assert len(plat.tlb_targets) == 4


def test_hsm_of_a_four_hart_machine(sbi4: Sbi, plat: FakePlatform) -> None:
    assert call(sbi4, S.EXT_HSM, 2, 2) == (S.SUCCESS, S.HSM_STOPPED)
    assert call(sbi4, S.EXT_HSM, 0, 2, RAM + 0x100, 42) == (S.SUCCESS, 0)
    assert plat.started == [(2, RAM + 0x100, 42)]
    assert call(sbi4, S.EXT_HSM, 2, 2) == (S.SUCCESS, S.HSM_START_PENDING)
    assert call(sbi4, S.EXT_HSM, 0, 0, RAM, 0) == (S.ERR_ALREADY_AVAILABLE, 0)
    assert call(sbi4, S.EXT_HSM, 0, 4, RAM, 0) == (S.ERR_INVALID_PARAM, 0)
    assert call(sbi4, S.EXT_HSM, 0, ALL_HARTS, RAM, 0) == (S.ERR_INVALID_PARAM, 0)
    assert call(sbi4, S.EXT_HSM, 0, 3, 0x1000, 0) == (S.ERR_INVALID_ADDRESS, 0)
    assert call(sbi4, S.EXT_HSM, 0, 3, RAM + 1, 0) == (S.ERR_INVALID_ADDRESS, 0)
    assert call(sbi4, S.EXT_HSM, 0, 3, RAM + RAM_SIZE, 0) == (S.ERR_INVALID_ADDRESS, 0)
    assert plat.started == [(2, RAM + 0x100, 42)]
    assert call(sbi4, S.EXT_HSM, 2, 4) == (S.ERR_INVALID_PARAM, 0)
    assert call(sbi4, S.EXT_HSM, 1) == (S.SUCCESS, 0)  # hart 1 stops itself
    assert plat.states[1] == S.HSM_STOPPED and plat.resets == []


def test_legacy_ipi_reads_the_mask_from_guest_memory(sbi4: Sbi, plat: FakePlatform) -> None:
    plat.words[0xFFFF_FFC0_0000_1000] = 0b1_0101  # hart 4 does not exist: left out
    assert call(sbi4, S.LEGACY_SEND_IPI, 0, 0xFFFF_FFC0_0000_1000) == (0, 0)
    assert call(sbi4, S.LEGACY_SEND_IPI, 0, 0) == (0, 0)  # null: every hart
    assert plat.ipi_targets == [0b0101, 0b1111]
    assert call(sbi4, S.LEGACY_SEND_IPI, 0, 0x2000) == (S.ERR_INVALID_ADDRESS, 0)  # unmapped
    assert plat.ipi_targets == [0b0101, 0b1111]


# -- FWFT (SBI 3.0) ---------------------------------------------------------------------------


def test_fwft_misaligned_delegation(sbi: Sbi) -> None:
    assert call(sbi, S.EXT_BASE, 3, S.EXT_FWFT) == (S.SUCCESS, 1)
    assert call(sbi, S.EXT_FWFT, 1, S.FWFT_MISALIGNED_EXC_DELEG) == (S.SUCCESS, 0)
    assert call(sbi, S.EXT_FWFT, 0, S.FWFT_MISALIGNED_EXC_DELEG, 1, 0) == (S.SUCCESS, 0)
    assert call(sbi, S.EXT_FWFT, 1, S.FWFT_MISALIGNED_EXC_DELEG) == (S.SUCCESS, 1)
    assert call(sbi, S.EXT_FWFT, 0, S.FWFT_MISALIGNED_EXC_DELEG, 2, 0) == (S.ERR_INVALID_PARAM, 0)
    assert call(sbi, S.EXT_FWFT, 0, S.FWFT_MISALIGNED_EXC_DELEG, 0, 2) == (S.ERR_INVALID_PARAM, 0)
    assert call(sbi, S.EXT_FWFT, 0, S.FWFT_MISALIGNED_EXC_DELEG, 0, S.FWFT_SET_LOCK) == (
        S.SUCCESS,
        0,
    )
    assert call(sbi, S.EXT_FWFT, 0, S.FWFT_MISALIGNED_EXC_DELEG, 1, 0) == (S.ERR_DENIED_LOCKED, 0)
    assert call(sbi, S.EXT_FWFT, 1, S.FWFT_MISALIGNED_EXC_DELEG) == (S.SUCCESS, 0)
    sbi.reset()  # a reboot unlocks it
    assert call(sbi, S.EXT_FWFT, 0, S.FWFT_MISALIGNED_EXC_DELEG, 1, 0) == (S.SUCCESS, 0)


@pytest.mark.parametrize("feature", [1, 2, 3, 4, 5])
def test_fwft_features_this_hart_lacks(sbi: Sbi, feature: int) -> None:
    assert call(sbi, S.EXT_FWFT, 1, feature) == (S.ERR_NOT_SUPPORTED, 0)
    assert call(sbi, S.EXT_FWFT, 0, feature, 1, 0) == (S.ERR_NOT_SUPPORTED, 0)


@pytest.mark.parametrize("feature", [6, 0x3FFF_FFFF, 0x4000_0000, 0x8000_0000])
def test_fwft_reserved_features_are_denied(sbi: Sbi, feature: int) -> None:
    assert call(sbi, S.EXT_FWFT, 1, feature) == (S.ERR_DENIED, 0)
    assert call(sbi, S.EXT_FWFT, 2) == (S.ERR_NOT_SUPPORTED, 0)


def test_error_codes_are_the_specs() -> None:
    """SBI v3.0 §3.2's table (kvm-unit-tests' fwft lock cases caught DENIED_LOCKED as -10,
    which the spec gives SBI_ERR_INVALID_STATE)."""
    assert (
        S.SUCCESS,
        S.ERR_FAILED,
        S.ERR_NOT_SUPPORTED,
        S.ERR_INVALID_PARAM,
        S.ERR_DENIED,
        S.ERR_INVALID_ADDRESS,
        S.ERR_ALREADY_AVAILABLE,
        S.ERR_ALREADY_STARTED,
        S.ERR_ALREADY_STOPPED,
        S.ERR_DENIED_LOCKED,
    ) == (0, -1, -2, -3, -4, -5, -6, -7, -8, -14)
