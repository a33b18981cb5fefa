"""One ``hv-virt`` machine: RAM, the MMIO bus and its devices, SBI firmware, and the vCPU.

The machine is synchronous: it boots, runs one slice at a time and reports what happened. The
asynchronous side (waiting, the console stream, pause and stop) is ``hv._vm``'s job. Between
slices the machine recomputes which S-mode interrupts are pending (timer due, PLIC output,
IPI) and hands them to the vCPU, which puts them in ``mip`` for the engine to deliver.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hv._errors import ConfigError
from hv._log import get_logger
from hv.board import _platform as P
from hv.board._bus import Bus
from hv.board._fdt import DeviceTreeSpec, build_device_tree
from hv.board._loader import LoadedKernel, load_kernel, plan_layout
from hv.board._memory import GuestMemory
from hv.board._platform import DEFAULT_QUANTUM, QUANTUM_MAX, QUANTUM_MIN
from hv.devices._plic import Plic
from hv.devices._testdev import FinishKind, TestDevice
from hv.devices._uart import Uart16550
from hv.engine._vcpu import MIP_SEIP, MIP_SSIP, MIP_STIP, Exit, ExitKind, Vcpu
from hv.riscv._sbi import LEGACY_PUTCHAR, ResetKind, Sbi

log = get_logger("hv.machine")

# Host-side console input waiting for the guest: beyond this, input is dropped (and counted).
CONSOLE_INPUT_LIMIT = 1 << 20
NO_DEADLINE = (1 << 64) - 1
_IRQ_NAMES = ((MIP_STIP, "irq_timer"), (MIP_SEIP, "irq_external"), (MIP_SSIP, "irq_software"))


@dataclass(frozen=True)
class MachineConfig:
    kernel: bytes
    mem_size: int = P.MEM_DEFAULT
    cmdline: str = ""
    initrd: bytes | None = None
    quantum: int = DEFAULT_QUANTUM
    dtb_out: Path | None = None
    count_instructions: bool = False  # exact counts for profiling; slows the guest
    # Answer the hottest simple exits (SBI console putchar, rdtime) natively; False sends
    # every exit through the Python models (the reference: tests compare both).
    native_exits: bool = True

    def __post_init__(self) -> None:
        if not P.MEM_MIN <= self.mem_size <= P.MEM_MAX:
            raise ConfigError(
                f"memory size {self.mem_size // (1 << 20)} MiB is out of range: use "
                f"{P.MEM_MIN >> 20} MiB to {P.MEM_MAX >> 30} GiB (e.g. --mem 128M)"
            )
        if self.mem_size % (1 << 20):
            raise ConfigError("memory size must be a whole number of MiB (e.g. --mem 256M)")
        if not QUANTUM_MIN <= self.quantum <= QUANTUM_MAX:
            raise ConfigError(
                f"quantum {self.quantum} is out of range {QUANTUM_MIN}..{QUANTUM_MAX} "
                "instructions per slice"
            )


class StopKind:
    """How a machine run ended (strings, so they read well in logs and JSON)."""

    POWEROFF = "poweroff"  # clean shutdown: exit status 0
    FAILURE = "failure"  # the guest reported a failure (SRST system failure, finisher code)
    GUEST_FAULT = "guest_fault"  # the guest faulted fatally
    HOST_ERROR = "host_error"  # a device model or the hypervisor failed
    STOPPED = "stopped"  # the host stopped it (API stop, cancellation)


@dataclass(frozen=True)
class StopInfo:
    kind: str
    reason: str
    exit_code: int
    detail: str = ""


@dataclass
class Clock:
    """Guest time in timebase ticks since boot; paused time does not count."""

    start_ns: int = field(default_factory=time.monotonic_ns)
    paused_ns: int = 0
    _paused_at: int | None = None

    def ticks(self) -> int:
        now = self._paused_at if self._paused_at is not None else time.monotonic_ns()
        return (now - self.start_ns - self.paused_ns) * P.TIMEBASE_HZ // 1_000_000_000

    def seconds_until(self, ticks: int) -> float:
        return max(0.0, (ticks - self.ticks()) / P.TIMEBASE_HZ)

    def offset_ns(self) -> int:
        """The monotonic time at which guest time would read 0 (the native clock's base)."""
        return self.start_ns + self.paused_ns

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic_ns()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.paused_ns += time.monotonic_ns() - self._paused_at
            self._paused_at = None


class _OrderedUart:
    """The UART as the bus sees it. Before the guest writes to it, the console bytes the
    vCPU took natively (SBI putchar) move to the machine's output; after, while the UART holds
    bytes, native putchar is held off. So the console keeps the order the guest wrote in."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.uart = machine.uart

    def mmio_read(self, offset: int, size: int) -> int:
        return self.uart.mmio_read(offset, size)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        m = self.machine
        if m.vcpu.console_pending():
            m.output += m.vcpu.take_console()
        self.uart.mmio_write(offset, size, value)
        if self.uart.has_output:
            m.vcpu.hold_console(True)


class Machine:
    """The hv-virt board with one hart. Implements the vCPU's ``Firmware`` and ``SbiPlatform``."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self.counters: collections.Counter[str] = collections.Counter()
        self.output = bytearray()  # console bytes produced, not yet taken by the host
        self.input = bytearray()  # console bytes from the host, not yet taken by the guest
        self.stop_info: StopInfo | None = None
        self._power_on()

    def _power_on(self) -> None:
        """Fresh RAM, devices, firmware state and hart: at creation and on a cold reset.
        The console streams and the counters belong to the machine's owner and survive."""
        config = self.config
        self.mem = GuestMemory(P.RAM_BASE, config.mem_size)
        self.reboot_requested = False
        self.suspended = False  # SBI HSM retentive suspend: sleep like wfi
        self.clock = Clock()
        self.timer_deadline = NO_DEADLINE
        self.ipi_pending = False
        self.seip = False

        self.plic = Plic(self._on_plic_change)
        self.uart = Uart16550(self.plic.irq_line(P.UART0_IRQ))
        self.testdev = TestDevice(self._on_finish)
        self.bus = Bus()
        self.bus.add(P.TEST_BASE, P.TEST_SIZE, "test", self.testdev)
        self.bus.add(P.PLIC_BASE, P.PLIC_SIZE, "plic", self.plic)
        self.bus.add(P.UART0_BASE, P.UART0_SIZE, "uart0", _OrderedUart(self))
        self.sbi = Sbi(self)
        self.vcpu = Vcpu(
            self.mem,
            self.bus,
            self,
            config.quantum,
            config.count_instructions,
            native_exits=config.native_exits,
            timebase_hz=P.TIMEBASE_HZ,
        )
        self._sbi_native_seen = 0
        self.kernel: LoadedKernel | None = None
        self.dtb = b""

    # -- boot ------------------------------------------------------------------------------

    def boot(self) -> None:
        """Load the kernel, initrd and device tree, and put the hart at the kernel's entry."""
        cfg = self.config
        self.kernel = load_kernel(cfg.kernel, self.mem.base, self.mem.size, self.mem.write)
        # The device tree's size depends on the initrd's address only through fixed-size
        # cells, so a first build with a placeholder gives the size to plan around.
        probe = self._device_tree(None)
        initrd_size = len(cfg.initrd) if cfg.initrd else None
        layout = plan_layout(self.mem.base, self.mem.size, self.kernel.end, initrd_size, len(probe))
        if cfg.initrd and layout.initrd_start is not None:
            self.mem.write(layout.initrd_start, cfg.initrd)
        self.dtb = self._device_tree(layout.initrd)
        self.mem.write(layout.dtb_addr, self.dtb)
        if cfg.dtb_out is not None:
            cfg.dtb_out.write_bytes(self.dtb)
        self.vcpu.reset(self.kernel.entry, 0, layout.dtb_addr)
        log.debug(
            "boot",
            kernel=self.kernel.kind,
            entry=hex(self.kernel.entry),
            dtb=hex(layout.dtb_addr),
            initrd=layout.initrd and [hex(a) for a in layout.initrd],
        )

    def _device_tree(self, initrd: tuple[int, int] | None) -> bytes:
        if initrd is None and self.config.initrd:
            initrd = (self.mem.base, self.mem.base + len(self.config.initrd))
        spec = DeviceTreeSpec(
            ram_base=self.mem.base,
            ram_size=self.mem.size,
            bootargs=self.config.cmdline,
            initrd=initrd,
        )
        return build_device_tree(spec)

    def reboot(self) -> None:
        """A cold reset: fresh RAM, fresh devices, same kernel."""
        self._collect_console()
        self.vcpu.close()
        self.counters["reboots"] += 1
        self._power_on()
        self.boot()

    # -- running ---------------------------------------------------------------------------

    def pending_interrupts(self) -> int:
        bits = 0
        if self.clock.ticks() >= self.timer_deadline:
            bits |= MIP_STIP
        if self.seip:
            bits |= MIP_SEIP
        if self.ipi_pending:
            bits |= MIP_SSIP
        return bits

    def run_slice(self) -> Exit:
        """Feed console input, deliver interrupts, run one slice, collect console output."""
        if self.input:
            self._feed_uart()
        self.sync_interrupts()
        self.vcpu.set_clock_offset(self.clock.offset_ns())
        ex = self.vcpu.run_slice()
        self._collect_console()
        native = self.vcpu.stats.sbi_native
        if native != self._sbi_native_seen:  # putchar calls the native hook answered
            self.sbi.calls[LEGACY_PUTCHAR] += native - self._sbi_native_seen
            self._sbi_native_seen = native
        if ex.kind is ExitKind.FATAL:
            self._stop(StopKind.GUEST_FAULT, f"guest fault: {ex.reason}", 2)
        elif ex.kind is ExitKind.HOST_ERROR:
            self._stop(StopKind.HOST_ERROR, f"host error: {ex.reason}", 3, ex.detail)
        return ex

    def wake_pending(self) -> bool:
        """Would a ``wfi`` end now? (An enabled interrupt is pending, or console input for a
        guest that polls SBI getchar while suspended.)"""
        pending = self.pending_interrupts()
        if pending & self.vcpu.enabled_interrupts():
            return True
        self.vcpu.update_interrupts(pending)
        return False

    def next_deadline(self) -> float | None:
        """Seconds until the timer fires, or None if no timer is set."""
        if self.timer_deadline == NO_DEADLINE:
            return None
        return self.clock.seconds_until(self.timer_deadline)

    def feed_input(self, data: bytes) -> None:
        room = CONSOLE_INPUT_LIMIT - len(self.input)
        if len(data) > room:
            self.counters["console_input_dropped"] += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self.input += data
        self._feed_uart()

    def _feed_uart(self) -> None:
        took = self.uart.feed(bytes(self.input[: self.uart.rx_space()]))
        del self.input[:took]

    def _collect_console(self) -> None:
        """Move console output to ``output`` in the order the guest wrote it: what the
        native hook took (it takes nothing while the UART holds bytes), then the UART's."""
        if self.vcpu.console_pending():
            self.output += self.vcpu.take_console()
        if self.uart.has_output:
            self.output += self.uart.take_output()
        self.vcpu.hold_console(False)

    def take_output(self) -> bytes:
        out = bytes(self.output)
        self.output.clear()
        return out

    def _stop(self, kind: str, reason: str, code: int, detail: str = "") -> None:
        if self.stop_info is None:
            self.stop_info = StopInfo(kind, reason, code, detail)
        self.vcpu.request_stop()

    def guest_failed(self, reason: str) -> None:
        """The guest told us (e.g. on its console) that it failed."""
        self._stop(StopKind.FAILURE, reason, 1)

    def stop_by_host(self, reason: str) -> None:
        self._stop(StopKind.STOPPED, reason, 130)

    # -- callbacks from devices ------------------------------------------------------------

    def sync_interrupts(self) -> None:
        """Bring mip up to date now (also from inside hooks); end the slice if a bit rose,
        so the engine takes the interrupt at the next block instead of much later."""
        pending = self.pending_interrupts()
        if self.vcpu.update_interrupts(pending):
            self.vcpu.request_stop()
            for bit, name in _IRQ_NAMES:
                if pending & bit:
                    self.counters[name] += 1
        self.ipi_pending = False  # now in mip; the guest clears SSIP itself

    def _on_plic_change(self, ctx: int, level: bool) -> None:
        if ctx == P.PLIC_CONTEXT_S:
            self.seip = level
            self.sync_interrupts()

    def _on_finish(self, kind: FinishKind, code: int) -> None:
        if kind is FinishKind.RESET:
            self.reboot_requested = True
            self.vcpu.request_stop()
        elif kind is FinishKind.POWEROFF_PASS:
            self._stop(StopKind.POWEROFF, "test device: power-off (pass)", 0)
        else:
            self._stop(StopKind.FAILURE, f"test device: failure, code {code}", code or 1)

    # -- Firmware (for the vCPU) -----------------------------------------------------------

    def sbi_call(self, eid: int, fid: int, args: Sequence[int]) -> tuple[int, int]:
        return self.sbi.call(eid, fid, args)

    def time_ticks(self) -> int:
        return self.clock.ticks()

    # -- SbiPlatform -----------------------------------------------------------------------

    def console_write(self, data: bytes) -> None:
        self._collect_console()  # what the guest wrote earlier in this slice comes first
        self.output += data
        if len(self.output) > 4096:
            self.vcpu.request_stop()  # hand it to the host soon

    def console_read(self, limit: int) -> bytes:
        got = bytes(self.input[:limit])
        del self.input[:limit]
        return got

    def set_timer(self, deadline: int) -> None:
        self.timer_deadline = deadline & NO_DEADLINE
        self.sync_interrupts()  # setting the timer clears a pending timer interrupt at once

    def send_ipi(self) -> None:
        self.ipi_pending = True
        self.sync_interrupts()

    def clear_ipi(self) -> None:
        self.ipi_pending = False

    def flush_tlb(self) -> None:
        self.vcpu.flush_tlb()

    def reset(self, kind: ResetKind, failure: bool, reason: str) -> None:
        if kind is ResetKind.SHUTDOWN:
            if failure:
                self._stop(StopKind.FAILURE, reason, 1)
            else:
                self._stop(StopKind.POWEROFF, reason, 0)
        else:
            self.reboot_requested = True
            self.vcpu.request_stop()

    def hart_suspend(self) -> None:
        self.suspended = True
        self.vcpu.request_stop()
