"""Console bytes between the guest (16550 UART, SBI console) and the host, in order.

Output: the UART model buffers what the guest transmits; the vCPU's native hook buffers SBI
``console_putchar`` bytes; Python's SBI console writes come here directly. ``collect`` moves
them to ``output`` in the order the guest wrote them: before each UART write the native
buffer is drained, and while the UART holds bytes not yet collected the native hook leaves
putchar to Python (``hold``). Input: bytes from the host wait here until the UART has room
(or the guest polls SBI getchar); beyond ``INPUT_LIMIT`` they are dropped and counted.
"""

from __future__ import annotations

import collections
from typing import Protocol

from hv.devices import Uart16550

# Host-side console input waiting for the guest: beyond this, input is dropped (and counted).
INPUT_LIMIT = 1 << 20
# Output held before the running slice is ended to hand it to the host.
OUTPUT_HANDOVER = 4096


class NativeConsole(Protocol):
    """The vCPU's native console buffer (SBI putchar answered without Python)."""

    def console_pending(self) -> bool: ...

    def take_console(self) -> bytes: ...

    def hold_console(self, hold: bool) -> None: ...

    def request_stop(self) -> None: ...


class ConsoleIo:
    def __init__(self, uart: Uart16550, counters: collections.Counter[str]) -> None:
        self.uart = uart
        self.counters = counters
        self.output = bytearray()  # produced, not yet taken by the host
        self.input = bytearray()  # from the host, not yet taken by the guest
        self.native: NativeConsole | None = None
        self.blocked = False  # flow control: the host's reader is behind; the guest waits

    # -- output ----------------------------------------------------------------------------

    def collect(self) -> None:
        native = self.native
        if native is not None and native.console_pending():
            self.output += native.take_console()
        if self.uart.has_output:
            self.output += self.uart.take_output()
        if native is not None:
            native.hold_console(self.blocked)

    def set_blocked(self, blocked: bool) -> None:
        """Flow control from the host: while blocked the UART says busy, SBI console writes
        are refused (the guest writes them again later) and the native putchar path is off."""
        if blocked == self.blocked:
            return
        self.blocked = blocked
        self.uart.set_tx_ready(not blocked)
        if self.native is not None:
            self.native.hold_console(blocked or self.uart.has_output)
            if blocked:
                self.native.request_stop()
        self.counters["console_blocked" if blocked else "console_resumed"] += 1

    def write(self, data: bytes) -> bool:
        """The SBI console (Python path): after what the guest wrote before. False (the
        bytes not taken) while flow control holds the guest back."""
        if self.blocked:
            return False
        self.collect()
        self.output += data
        if len(self.output) > OUTPUT_HANDOVER and self.native is not None:
            self.native.request_stop()  # hand it to the host soon
        return True

    def take_output(self) -> bytes:
        out = bytes(self.output)
        self.output.clear()
        return out

    # -- input -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        room = INPUT_LIMIT - len(self.input)
        if len(data) > room:
            self.counters["console_input_dropped"] += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self.input += data
        self.feed_uart()

    def feed_uart(self) -> None:
        if not self.input:
            return
        took = self.uart.feed(bytes(self.input[: self.uart.rx_space()]))
        del self.input[:took]

    def read(self, limit: int) -> bytes:
        """SBI getchar / DBCN read."""
        got = bytes(self.input[:limit])
        del self.input[:limit]
        return got


class OrderedUart:
    """The UART as the bus sees it, keeping console order against the native SBI buffer."""

    mmio_size = Uart16550.mmio_size

    def __init__(self, console: ConsoleIo) -> None:
        self.console = console
        self.uart = console.uart
        self.name = self.uart.name

    def mmio_read(self, offset: int, size: int) -> int:
        return self.uart.mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        c = self.console
        native = c.native
        if native is not None and native.console_pending():
            c.output += native.take_console()
        self.uart.mmio_write(offset, size, value)
        if native is not None and self.uart.has_output:
            native.hold_console(True)
            if len(self.uart.output_pending) > OUTPUT_HANDOVER:
                native.request_stop()  # hand it over before the UART's own buffer fills

    def guest_error(self, err: Exception) -> None:
        self.uart.counters["guest_errors"] += 1
