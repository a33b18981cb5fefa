"""A 16550A UART, enough for Linux's 8250 driver (``ns16550a``, reg-shift 0, 8-bit) and U-Boot.

Theory of operation. The transmitter is infinitely fast: a byte written to THR goes straight into
``output`` (or, in loopback, into the receive FIFO), so THR and the transmitter are always empty
and LSR shows THRE and TEMT, except while the host holds the line busy (flow control,
``set_tx_ready``: the host's console reader is behind). The THR-empty *interrupt* is a latch,
as on hardware, because drivers rely on its edges: it is set when the guest writes THR or
enables ETBEI, and cleared when the guest reads an IIR that reports it. Linux's startup THRE
test and its TX interrupt path both depend on this.

Received bytes come from the host through ``feed``, which only takes what fits (16 bytes with
FIFOs on, 1 without), so the host keeps the backlog and nothing is lost; overruns happen only in
loopback, where the guest itself can overfill the FIFO. There is no real time here, so there is
no character timer: any data below the trigger level reports a character timeout (IIR 0x0C) at
once, which makes the driver drain the FIFO instead of waiting for more.

The interrupt output is recomputed after every register access and every ``feed`` and the line is
driven when its level changes (it starts low). The OUT2 bit does not gate it, as on QEMU.

Each register is one byte wide; any other access size, or an offset past SCR, is counted in
``counters`` and ignored (reads return 0).
"""

from __future__ import annotations

import collections

from hv.hw import UART0_SIZE, Device, Fields, IrqLine, State

# Receive FIFO depth with FIFOs enabled (a 16550A has 16 bytes).
FIFO_SIZE = 16
# Transmitted bytes kept for the host before new ones are dropped (a guest may print endlessly).
OUTPUT_LIMIT = 1 << 20
# Modem status lines seen when not in loopback: a peer that is present and ready (CTS, DSR, DCD).
MSR_IDLE = 0xB0

# Register offsets.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

# IER bits.
IER_RDI = 0x01  # received data available (and character timeout)
IER_THRI = 0x02  # THR empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
IER_MASK = 0x0F

# IIR values.
IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_TIMEOUT = 0x0C
IIR_FIFO_ENABLED = 0xC0

# FCR bits.
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
RX_TRIGGER = (1, 4, 8, 14)  # indexed by FCR bits 7:6

LCR_DLAB = 0x80

# MCR bits.
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

# LSR bits.
LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

# MSR bits.
MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F


class Uart16550(Device):
    """A 16550A UART whose interrupt output drives ``irq``.

    Host side: ``feed`` bytes in, ``take_output`` bytes out.
    """

    mmio_size = UART0_SIZE
    COUNTERS = frozenset(
        {
            "rx_bytes",  # console input the guest's receive FIFO took
            "rx_overrun",  # a byte lost to a full receive FIFO (LSR.OE)
            "tx_bytes",  # bytes the guest wrote to THR
            "tx_while_busy",  # written while the host's reader was behind (kept)
            "tx_dropped",  # written past the output limit (lost)
            "bad_read",  # not a byte read of a register
            "bad_write",  # not a byte write of a register
            "readonly_write",  # a write to LSR or MSR
        }
    )

    def __init__(self, irq: IrqLine) -> None:
        super().__init__("uart0")
        self._irq = irq
        self.reset()

    def reset(self) -> None:
        self._irq_level = False
        self._rx: collections.deque[int] = collections.deque()
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._lsr_errors = 0
        self._msr = MSR_IDLE
        self._scr = 0
        self._dll = 0
        self._dlm = 0
        self._fifo_enabled = False
        self._rx_trigger = 1
        self._thre_pending = False
        self._tx_ready = True
        self._output = bytearray()

    # -- snapshots ----------------------------------------------------------------------------

    def save_state(self) -> State:
        """Every register, the receive FIFO's bytes, the THR-empty latch and what the guest
        transmitted that the host has not taken yet. The interrupt line follows from them."""
        return {
            "rx": bytes(self._rx),
            "ier": self._ier,
            "lcr": self._lcr,
            "mcr": self._mcr,
            "lsr_errors": self._lsr_errors,
            "msr": self._msr,
            "scr": self._scr,
            "dll": self._dll,
            "dlm": self._dlm,
            "fifo_enabled": self._fifo_enabled,
            "rx_trigger": self._rx_trigger,
            "thre_pending": self._thre_pending,
            "tx_ready": self._tx_ready,
            "output": bytes(self._output),
        }

    def load_state(self, st: Fields) -> None:
        """The saved registers. The host's console reader starts afresh, ready (the board's
        console starts unblocked): a UART saved while the host held it busy comes back ready,
        with the THR-empty interrupt its becoming ready raises (``set_tx_ready``)."""
        fifo = st.bool("fifo_enabled")
        trigger = st.int("rx_trigger", 1, 14)
        st.check(
            trigger in RX_TRIGGER and (fifo or trigger == 1),
            "rx_trigger",
            f"{trigger} is not a trigger level of this FIFO mode",
        )
        rx = st.bytes("rx", FIFO_SIZE if fifo else 1)
        ier = st.int("ier", 0, IER_MASK)
        lcr = st.int("lcr", 0, 0xFF)
        mcr = st.int("mcr", 0, MCR_MASK)
        lsr_errors = st.int("lsr_errors", 0, 0xFF)
        st.check(not lsr_errors & ~LSR_ERRORS, "lsr_errors", f"{lsr_errors:#x} holds no error")
        msr = st.int("msr", 0, 0xFF)
        regs = [st.int(key, 0, 0xFF) for key in ("scr", "dll", "dlm")]
        thre = st.bool("thre_pending")
        tx_ready = st.bool("tx_ready")
        output = st.bytes("output", OUTPUT_LIMIT)
        self._rx = collections.deque(rx)
        self._ier, self._lcr, self._mcr = ier, lcr, mcr
        self._lsr_errors, self._msr = lsr_errors, msr
        self._scr, self._dll, self._dlm = regs
        self._fifo_enabled, self._rx_trigger = fifo, trigger
        self._thre_pending = thre or not tx_ready
        self._tx_ready = True
        self._output = bytearray(output)
        self._update_irq()

    # -- host side ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> int:
        """Queue received bytes; return how many were taken (the caller keeps the rest)."""
        n = min(len(data), self.rx_space())
        if n:
            self._rx.extend(data[:n])
            self.counters["rx_bytes"] += n
            self._update_irq()
        return n

    def rx_space(self) -> int:
        """How many bytes ``feed`` would take now: 0 in loopback, whose RX input is cut off."""
        if self._mcr & MCR_LOOP:
            return 0
        return self._rx_capacity() - len(self._rx)

    def take_output(self) -> bytes:
        """Return and forget everything the guest has transmitted so far."""
        out = bytes(self._output)
        self._output.clear()
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._output)

    @property
    def output_pending(self) -> bytearray:
        """Transmitted bytes the host has not taken yet (do not modify)."""
        return self._output

    @property
    def divisor(self) -> int:
        """The baud divisor latch (DLM:DLL); informational, since nothing here is timed."""
        return self._dlm << 8 | self._dll

    # -- guest side ---------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if size != 1 or not 0 <= offset <= SCR:
            self.counters["bad_read"] += 1
            return 0
        value = self._read(offset)
        self._update_irq()
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if size != 1 or not 0 <= offset <= SCR:
            self.counters["bad_write"] += 1
            return
        self._write(offset, value & 0xFF)
        self._update_irq()

    # -- internals ----------------------------------------------------------------------------

    def _read(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR:
            if dlab:
                return self._dll
            return self._rx.popleft() if self._rx else 0
        if offset == IER:
            return self._dlm if dlab else self._ier
        if offset == IIR:
            iir = self._iir()
            if iir == IIR_THRI:
                self._thre_pending = False
            return iir | (IIR_FIFO_ENABLED if self._fifo_enabled else 0)
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            tx = LSR_THRE | LSR_TEMT if self._tx_ready else 0
            lsr = self._lsr_errors | tx | (LSR_DR if self._rx else 0)
            self._lsr_errors = 0
            return lsr
        if offset == MSR:
            msr = self._msr
            self._msr &= ~MSR_DELTAS
            return msr
        return self._scr

    def _write(self, offset: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if offset == THR:
            if dlab:
                self._dll = value
            else:
                self._transmit(value)
        elif offset == IER:
            if dlab:
                self._dlm = value
            else:
                # Enabling ETBEI with THR empty raises THRE at once, as on a real 16550A.
                if value & IER_THRI and not self._ier & IER_THRI:
                    self._thre_pending = True
                self._ier = value & IER_MASK
        elif offset == FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            self._mcr = value & MCR_MASK
            self._set_modem_lines()
        elif offset in (LSR, MSR):
            self.counters["readonly_write"] += 1
        else:
            self._scr = value

    def set_tx_ready(self, ready: bool) -> None:
        """Host-side flow control: while not ready, LSR shows the transmitter busy (THRE and
        TEMT clear), so a driver that polls LSR, as real ones do, waits. Becoming ready again
        raises the THR-empty interrupt, as the transmitter draining would."""
        if ready == self._tx_ready:
            return
        self._tx_ready = ready
        if ready:
            self._thre_pending = True
        self._update_irq()

    def _transmit(self, byte: int) -> None:
        # Writing THR clears the THRE interrupt, and the byte leaves at once, which re-arms it.
        self._thre_pending = True
        self.counters["tx_bytes"] += 1
        if self._mcr & MCR_LOOP:
            self._receive_loopback(byte)
        elif len(self._output) < OUTPUT_LIMIT:
            self._output.append(byte)
            if not self._tx_ready:
                self.counters["tx_while_busy"] += 1  # a driver that ignores LSR: kept anyway
        else:
            self.counters["tx_dropped"] += 1

    def _receive_loopback(self, byte: int) -> None:
        if len(self._rx) < self._rx_capacity():
            self._rx.append(byte)
            return
        self._lsr_errors |= LSR_OE
        self.counters["rx_overrun"] += 1
        if not self._fifo_enabled:
            # A 16450-style holding register is overwritten; a full FIFO keeps its contents.
            self._rx[-1] = byte

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & FCR_ENABLE)
        if enable != self._fifo_enabled:
            # Switching FIFO mode empties both FIFOs (16550A datasheet).
            self._rx.clear()
            self._fifo_enabled = enable
        if not enable:
            # The other FCR bits are only programmed together with FCR0.
            self._rx_trigger = 1
            return
        if value & FCR_CLEAR_RX:
            self._rx.clear()
        # FCR_CLEAR_TX has nothing to do: the transmit FIFO is always empty.
        self._rx_trigger = RX_TRIGGER[value >> 6]

    def _set_modem_lines(self) -> None:
        if self._mcr & MCR_LOOP:
            m = self._mcr
            status = (
                (MSR_CTS if m & MCR_RTS else 0)
                | (MSR_DSR if m & MCR_DTR else 0)
                | (MSR_RI if m & MCR_OUT1 else 0)
                | (MSR_DCD if m & MCR_OUT2 else 0)
            )
        else:
            status = MSR_IDLE
        old = self._msr
        changed = old ^ status
        deltas = (
            (MSR_DCTS if changed & MSR_CTS else 0)
            | (MSR_DDSR if changed & MSR_DSR else 0)
            | (MSR_TERI if old & MSR_RI and not status & MSR_RI else 0)
            | (MSR_DDCD if changed & MSR_DCD else 0)
        )
        self._msr = status | (old & MSR_DELTAS) | deltas

    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self._fifo_enabled else 1

    def _iir(self) -> int:
        """The highest-priority pending interrupt's IIR code (without the FIFO bits)."""
        ier = self._ier
        if ier & IER_RLSI and self._lsr_errors:
            return IIR_RLSI
        if ier & IER_RDI and self._rx:
            return IIR_RDI if len(self._rx) >= self._rx_trigger else IIR_TIMEOUT
        if ier & IER_THRI and self._thre_pending:
            return IIR_THRI
        if ier & IER_MSI and self._msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._iir() != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            self._irq(level)
