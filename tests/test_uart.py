from __future__ import annotations

import pytest

from hv.devices._uart import (
    DLL,
    DLM,
    FCR,
    FIFO_SIZE,
    IER,
    IIR,
    LCR,
    LSR,
    MCR,
    MSR,
    RBR,
    SCR,
    THR,
    Uart16550,
)

NO_INT = 0x01
RLS, RDA, TIMEOUT, THRE_INT, MODEM = 0x06, 0x04, 0x0C, 0x02, 0x00
FIFO_BITS = 0xC0
DR, OE, THRE, TEMT = 0x01, 0x02, 0x20, 0x40


class Harness:
    def __init__(self) -> None:
        self.levels: list[bool] = []
        self.uart = Uart16550(self.levels.append)

    @property
    def irq(self) -> bool:
        return self.levels[-1] if self.levels else False

    def read(self, reg: int) -> int:
        return self.uart.mmio_read(reg, 1)

    def write(self, reg: int, value: int) -> None:
        self.uart.mmio_write(reg, 1, value)

    def enable_fifo(self, trigger_bits: int = 0) -> None:
        self.write(FCR, 0x01 | trigger_bits)


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_reset_state(h: Harness) -> None:
    assert h.read(IIR) == NO_INT
    assert h.read(LSR) == THRE | TEMT
    assert h.read(IER) == 0
    assert h.read(LCR) == 0
    assert h.read(MCR) == 0
    assert h.read(RBR) == 0  # empty receiver reads 0
    assert h.uart.rx_space() == 1
    assert not h.uart.has_output
    assert h.levels == []


def test_transmit_collects_output(h: Harness) -> None:
    for b in b"hi\n":
        h.write(THR, b)
    assert h.uart.has_output
    assert h.uart.take_output() == b"hi\n"
    assert not h.uart.has_output
    assert h.uart.take_output() == b""
    assert h.read(LSR) & (THRE | TEMT) == THRE | TEMT
    assert h.uart.counters["tx_bytes"] == 3


def test_transmit_value_is_masked_to_a_byte(h: Harness) -> None:
    h.write(THR, 0x141)
    assert h.uart.take_output() == b"A"


def test_receive_without_fifo_holds_one_byte(h: Harness) -> None:
    assert h.uart.feed(b"abc") == 1
    assert h.uart.rx_space() == 0
    assert h.read(LSR) & DR
    assert h.read(RBR) == ord("a")
    assert not h.read(LSR) & DR
    assert h.uart.feed(b"bc") == 1
    assert h.read(RBR) == ord("b")


def test_fifo_fills_to_sixteen(h: Harness) -> None:
    h.enable_fifo()
    assert h.uart.rx_space() == FIFO_SIZE
    data = bytes(range(20))
    assert h.uart.feed(data) == FIFO_SIZE
    assert h.uart.rx_space() == 0
    assert h.uart.feed(b"x") == 0
    got = []
    while h.read(LSR) & DR:
        got.append(h.read(RBR))
    assert bytes(got) == data[:FIFO_SIZE]
    assert h.uart.rx_space() == FIFO_SIZE
    assert not h.read(LSR) & OE  # the host keeps the backlog: no overrun


def test_fcr_clear_rx_empties_fifo(h: Harness) -> None:
    h.enable_fifo()
    h.uart.feed(b"abcd")
    h.write(FCR, 0x01 | 0x02 | 0x04)
    assert not h.read(LSR) & DR
    assert h.uart.rx_space() == FIFO_SIZE


def test_disabling_fifo_clears_it_and_shrinks_to_one(h: Harness) -> None:
    h.enable_fifo()
    h.uart.feed(b"abcd")
    h.write(FCR, 0)
    assert not h.read(LSR) & DR
    assert h.uart.rx_space() == 1
    assert h.read(IIR) & FIFO_BITS == 0


def test_iir_reports_fifo_enabled_bits(h: Harness) -> None:
    h.enable_fifo()
    assert h.read(IIR) == FIFO_BITS | NO_INT


def test_rx_interrupt_without_fifo_is_data_available(h: Harness) -> None:
    h.write(IER, 0x01)
    assert not h.irq
    h.uart.feed(b"a")
    assert h.irq
    assert h.read(IIR) == RDA
    assert h.read(RBR) == ord("a")
    assert not h.irq
    assert h.read(IIR) == NO_INT


@pytest.mark.parametrize(("bits", "level"), [(0x00, 1), (0x40, 4), (0x80, 8), (0xC0, 14)])
def test_rx_trigger_levels(h: Harness, bits: int, level: int) -> None:
    h.enable_fifo(bits)
    h.write(IER, 0x01)
    h.uart.feed(b"x" * (level - 1))
    if level > 1:
        assert h.read(IIR) == FIFO_BITS | TIMEOUT  # below trigger: drain now anyway
    h.uart.feed(b"x")
    assert h.read(IIR) == FIFO_BITS | RDA
    h.read(RBR)
    if level > 1:
        assert h.read(IIR) == FIFO_BITS | TIMEOUT


def test_rx_interrupt_clears_when_drained(h: Harness) -> None:
    h.enable_fifo(0xC0)
    h.write(IER, 0x01)
    h.uart.feed(b"hello")
    assert h.irq
    for _ in range(5):
        h.read(RBR)
    assert not h.irq
    assert h.levels == [True, False]


def test_rx_interrupt_masked_by_ier(h: Harness) -> None:
    h.uart.feed(b"a")
    assert not h.irq
    assert h.read(IIR) == NO_INT
    h.write(IER, 0x01)
    assert h.irq


def test_thre_interrupt_on_enable_and_cleared_by_iir_read(h: Harness) -> None:
    h.write(IER, 0x02)
    assert h.irq
    assert h.read(IIR) == THRE_INT
    assert not h.irq
    assert h.read(IIR) == NO_INT
    assert h.levels == [True, False]


def test_thre_rearms_after_each_write(h: Harness) -> None:
    h.write(IER, 0x02)
    h.read(IIR)
    assert not h.irq
    h.write(THR, ord("x"))
    assert h.irq
    assert h.read(IIR) == THRE_INT
    assert not h.irq


def test_thre_retriggers_when_reenabled(h: Harness) -> None:
    # Linux's UART_BUG_THRE probe: enable, read IIR, disable, enable, read IIR again.
    h.write(IER, 0x02)
    assert h.read(IIR) == THRE_INT
    h.write(IER, 0)
    h.write(IER, 0x02)
    assert h.read(IIR) == THRE_INT


def test_thre_disabled_drops_irq(h: Harness) -> None:
    h.write(IER, 0x02)
    assert h.irq
    h.write(IER, 0)
    assert not h.irq
    assert h.read(IIR) == NO_INT


def test_iir_priority_order(h: Harness) -> None:
    h.enable_fifo(0x40)  # trigger at 4
    h.write(MCR, 0x10)  # loopback: the guest can overrun its own FIFO
    h.write(IER, 0x0F)
    for _ in range(FIFO_SIZE + 1):
        h.write(THR, ord("z"))
    h.write(MCR, 0x10 | 0x02)  # raise RTS -> CTS delta
    assert h.read(IIR) == FIFO_BITS | RLS
    assert h.read(LSR) & OE
    assert h.read(IIR) == FIFO_BITS | RDA
    for _ in range(FIFO_SIZE - 2):
        h.read(RBR)
    assert h.read(IIR) == FIFO_BITS | TIMEOUT
    h.read(RBR)
    h.read(RBR)
    assert h.read(IIR) == FIFO_BITS | THRE_INT  # cleared by this read
    assert h.read(IIR) == FIFO_BITS | MODEM
    assert h.read(MSR) & 0x01  # delta CTS, cleared by reading MSR
    assert h.read(IIR) == FIFO_BITS | NO_INT
    assert not h.irq


def test_lsr_read_clears_overrun(h: Harness) -> None:
    h.write(MCR, 0x10)
    h.write(THR, 1)
    h.write(THR, 2)  # no FIFO: the holding register is overwritten
    assert h.uart.counters["rx_overrun"] == 1
    assert h.read(LSR) == DR | OE | THRE | TEMT
    assert h.read(LSR) == DR | THRE | TEMT
    assert h.read(RBR) == 2


def test_fifo_overrun_keeps_fifo_contents(h: Harness) -> None:
    h.enable_fifo()
    h.write(MCR, 0x10)
    for i in range(FIFO_SIZE + 2):
        h.write(THR, i)
    assert h.uart.counters["rx_overrun"] == 2
    got = [h.read(RBR) for _ in range(FIFO_SIZE)]
    assert got == list(range(FIFO_SIZE))


def test_line_status_interrupt(h: Harness) -> None:
    h.write(IER, 0x04)
    h.write(MCR, 0x10)
    h.write(THR, 1)
    assert not h.irq
    h.write(THR, 2)
    assert h.irq
    assert h.read(IIR) == RLS
    h.read(LSR)
    assert not h.irq


def test_loopback_routes_tx_to_rx_not_output(h: Harness) -> None:
    h.enable_fifo()
    h.write(MCR, 0x10)
    for b in b"ping":
        h.write(THR, b)
    assert not h.uart.has_output
    assert bytes(h.read(RBR) for _ in range(4)) == b"ping"
    h.write(MCR, 0)
    h.write(THR, ord("!"))
    assert h.uart.take_output() == b"!"


def test_loopback_cuts_off_host_input(h: Harness) -> None:
    h.enable_fifo()
    h.write(MCR, 0x10)
    assert h.uart.rx_space() == 0
    assert h.uart.feed(b"abc") == 0
    h.write(MCR, 0)
    assert h.uart.feed(b"abc") == 3


def test_loopback_modem_status(h: Harness) -> None:
    # Linux's autoconfig probe: loopback with OUT2|RTS must read back DCD|CTS.
    h.write(MCR, 0x10 | 0x08 | 0x02)
    assert h.read(MSR) & 0xF0 == 0x90
    h.write(MCR, 0x10 | 0x01 | 0x04)
    msr = h.read(MSR)
    assert msr & 0xF0 == 0x60  # DSR|RI
    assert msr & 0x0F == 0x0B  # DCTS, DDSR, DDCD (RI rose: no TERI)
    h.write(MCR, 0x10 | 0x01)
    assert h.read(MSR) == 0x20 | 0x04  # RI fell: TERI
    assert h.read(MSR) == 0x20  # deltas clear on read


def test_modem_status_outside_loopback(h: Harness) -> None:
    assert h.read(MSR) == 0xB0  # CTS, DSR, DCD: a ready peer


def test_modem_status_interrupt(h: Harness) -> None:
    h.write(IER, 0x08)
    assert not h.irq
    h.write(MCR, 0x10)  # entering loopback changes every line
    assert h.irq
    assert h.read(IIR) == MODEM
    h.read(MSR)
    assert not h.irq


def test_mcr_reserved_bits_read_zero(h: Harness) -> None:
    h.write(MCR, 0xFF)
    assert h.read(MCR) == 0x1F


def test_ier_reserved_bits_read_zero(h: Harness) -> None:
    h.write(IER, 0xFF)
    assert h.read(IER) == 0x0F


def test_dlab_divisor_latch(h: Harness) -> None:
    h.write(IER, 0x05)
    h.write(LCR, 0x80 | 0x03)
    h.write(DLL, 0x0C)
    h.write(DLM, 0x01)
    assert h.read(DLL) == 0x0C
    assert h.read(DLM) == 0x01
    assert h.uart.divisor == 0x010C
    assert not h.uart.has_output  # the DLL write was not a transmit
    h.write(LCR, 0x03)
    assert h.read(LCR) == 0x03
    assert h.read(IER) == 0x05  # IER untouched by the DLM write
    h.write(THR, ord("k"))
    assert h.uart.take_output() == b"k"


def test_dlab_hides_rbr(h: Harness) -> None:
    h.uart.feed(b"q")
    h.write(LCR, 0x80)
    assert h.read(RBR) == 0  # DLL, not the data
    h.write(LCR, 0)
    assert h.read(RBR) == ord("q")


def test_scratch_register(h: Harness) -> None:
    h.write(SCR, 0xA5)
    assert h.read(SCR) == 0xA5
    h.write(SCR, 0x5A)
    assert h.read(SCR) == 0x5A


def test_readonly_registers_ignore_writes(h: Harness) -> None:
    h.write(LSR, 0)
    h.write(MSR, 0)
    assert h.read(LSR) == THRE | TEMT
    assert h.read(MSR) == 0xB0
    assert h.uart.counters["readonly_write"] == 2


@pytest.mark.parametrize(("offset", "size"), [(8, 1), (0x100, 1), (-1, 1), (0, 2), (0, 4), (5, 8)])
def test_bad_access_is_counted_and_harmless(h: Harness, offset: int, size: int) -> None:
    h.uart.feed(b"a")
    assert h.uart.mmio_read(offset, size) == 0
    h.uart.mmio_write(offset, size, ord("b"))
    assert h.uart.counters["bad_read"] == 1
    assert h.uart.counters["bad_write"] == 1
    assert not h.uart.has_output
    assert h.read(RBR) == ord("a")  # the bad read did not consume it


def test_irq_driven_only_on_level_changes(h: Harness) -> None:
    h.write(IER, 0x01)
    h.enable_fifo(0xC0)
    h.uart.feed(b"a")
    h.uart.feed(b"b")
    h.read(LSR)
    h.read(RBR)
    h.read(RBR)
    h.read(RBR)
    assert h.levels == [True, False]


def test_feed_empty_is_a_noop(h: Harness) -> None:
    assert h.uart.feed(b"") == 0
    assert h.levels == []


def test_linux_style_tx_interrupt_loop(h: Harness) -> None:
    """The 8250 driver's shape: enable THRI, fill on each THRE, disable when done."""
    h.enable_fifo()
    pending = bytearray(b"x" * 40)
    h.write(IER, 0x02)
    rounds = 0
    while h.irq:
        rounds += 1
        iir = h.read(IIR)
        assert iir & 0x0F == THRE_INT
        if not pending:
            h.write(IER, 0)
            continue
        for _ in range(min(FIFO_SIZE, len(pending))):
            h.write(THR, pending.pop(0))
    assert h.uart.take_output() == b"x" * 40
    assert rounds == 4
    assert h.read(IIR) == FIFO_BITS | NO_INT
