"""One ``hv-virt`` machine: RAM, the bus and its devices, the firmware, and the vCPU.

The machine is synchronous: it boots, runs one slice at a time and reports what happened. The
asynchronous side (waiting, the console stream, device tasks, pause and stop) is ``hv._vm``'s
job. Its parts, each with one job:

- the devices (``hv.hw._device``): the platform's PLIC, UART and test finisher at their
  fixed addresses, and ``MachineConfig.devices`` in virtio-mmio slots, all on the ``Bus``;
- ``HartInterrupts``: which S-level interrupts are pending, written into the vCPU's ``mip``;
- ``ConsoleIo``: console bytes in and out, in order;
- ``BoardFirmware``: the SBI and what the vCPU's exception path needs (the M-mode firmware);
- ``Clock``: guest time, from a replaceable source;
- the vCPU (``hv.engine._vcpu``).

The machine owns every object for its whole life: a reboot resets their state (RAM cleared,
devices reset, hart back at the kernel's entry) but keeps the objects, their backends and
counters. ``close`` releases RAM and the engine.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hv._errors import ConfigError
from hv._log import get_logger
from hv._status import StopInfo, StopKind
from hv.board._console_io import ConsoleIo, OrderedUart
from hv.board._fdt import TEXT_LIMIT, DeviceTreeSpec, build_device_tree
from hv.board._firmware import BoardFirmware
from hv.board._interrupts import NO_DEADLINE, HartInterrupts
from hv.board._loader import LoadedKernel, load_kernel, plan_layout, save_file
from hv.devices import Finisher, FinishKind, Plic, Uart16550
from hv.engine import Exit, ExitKind, Vcpu
from hv.hw import (
    DEFAULT_MIPS,
    DEFAULT_QUANTUM,
    QUANTUM_MAX,
    QUANTUM_MIN,
    AsyncWork,
    Bus,
    Clock,
    Device,
    DeviceContext,
    DeviceTime,
    GuestMemory,
    TimeSource,
    VirtualClock,
)
from hv.hw import _platform as P
from hv.riscv import LEGACY_PUTCHAR

log = get_logger("hv.machine")

# How often a sleeping guest is re-checked when guest time comes from an injected source.
CUSTOM_CLOCK_POLL_S = 0.001


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
    # Devices in virtio-mmio slots 0, 1, ... (base 0x1000_1000 + n * 0x1000, IRQ 1 + n).
    devices: tuple[Device, ...] = ()
    # Where guest time comes from (ns); None: the host's monotonic clock.
    time_source: TimeSource | None = field(default=None, compare=False)
    # "real": guest time is the host's; "virtual": it comes from the instructions the hart
    # retires at ``mips`` million a second, and skips ahead while it waits (docs/TIME.md).
    clock: Literal["real", "virtual"] = "real"
    mips: int = DEFAULT_MIPS
    smp: int = 1  # harts (1..SMP_MAX), hart 0 boots, the others wait for SBI HSM hart_start

    def __post_init__(self) -> None:
        check_smp(self.smp)
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
        if len(self.cmdline) > TEXT_LIMIT:  # before anything slow looks at it
            raise ConfigError(
                f"kernel command line is {len(self.cmdline)} characters; the limit is {TEXT_LIMIT}"
            )
        if len(self.devices) > P.VIRTIO_SLOTS:
            raise ConfigError(
                f"{len(self.devices)} devices, but hv-virt has {P.VIRTIO_SLOTS} virtio slots"
            )
        if self.clock not in ("real", "virtual"):
            raise ConfigError(f'clock {self.clock!r}: use "real" or "virtual"')
        if self.clock == "virtual" and self.time_source is not None:
            raise ConfigError("a time source and virtual time exclude each other")
        if self.clock == "virtual":
            try:
                VirtualClock(self.mips)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise ConfigError(f"device names must be unique: {names}")


def check_smp(smp: object, what: str = "smp") -> int:
    """A hart count (``smp``) as the machine takes it; a ConfigError saying the range if not."""
    if not isinstance(smp, int) or isinstance(smp, bool) or not 1 <= smp <= P.SMP_MAX:
        raise ConfigError(f"{what}: {smp!r} harts; use 1 to {P.SMP_MAX} (e.g. --smp 4)")
    return smp


class Machine:
    """The hv-virt board with one hart."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self.counters: collections.Counter[str] = collections.Counter()
        self.stop_info: StopInfo | None = None
        self.reboot_requested = False
        self.suspended = False  # SBI HSM retentive suspend: sleep like wfi
        # Set by the owner (the VM task): wake a sleeping VM.
        self.on_wake: Callable[[], None] = lambda: None

        self.mem = GuestMemory(P.RAM_BASE, config.mem_size)
        self.clock: Clock = (
            VirtualClock(config.mips) if config.clock == "virtual" else Clock(config.time_source)
        )
        self.interrupts = HartInterrupts(self.clock, self.counters, self._wake)
        self.plic = Plic(self._on_plic_change)
        self.uart = Uart16550(self.plic.irq_line(P.UART0_IRQ))
        self.finisher = Finisher(self._on_finish)
        self.console = ConsoleIo(self.uart, self.counters)
        self.bus = Bus()
        self.bus.add(P.TEST_BASE, P.TEST_SIZE, "test", self.finisher)
        self.bus.add(P.PLIC_BASE, P.PLIC_SIZE, "plic", self.plic)
        self.bus.add(P.UART0_BASE, P.UART0_SIZE, "uart0", OrderedUart(self.console))
        self.devices: list[Device] = [self.plic, self.uart, self.finisher]
        self.slots: dict[int, Device] = {}
        for slot, dev in enumerate(config.devices):
            self._place(slot, dev)
        self.firmware = BoardFirmware(self.mem, self.console, self.interrupts, self.clock, self)
        self.sbi = self.firmware.sbi
        self.vcpu = Vcpu(
            self.mem,
            self.bus,
            self.firmware,
            config.quantum,
            config.count_instructions,
            native_exits=config.native_exits and (self.clock.monotonic or self.clock.virtual),
            timebase_hz=self.clock.hz,
        )
        if isinstance(self.clock, VirtualClock):
            self.vcpu.set_virtual_time(self.clock.ps_per_insn)
            self.clock.in_slice = self.vcpu.executed_in_slice
            self.interrupts.on_set_timer = self._timer_set
        self.interrupts.sink = self.vcpu
        self.console.native = self.vcpu
        self._sbi_native_seen = 0
        self.kernel: LoadedKernel | None = None
        self._bootargs = config.cmdline  # the command line of the boot under way
        self.dtb = b""

    def _place(self, slot: int, dev: Device) -> None:
        base = P.virtio_slot_base(slot)
        if dev.mmio_size > P.VIRTIO_STRIDE:
            raise ConfigError(f"device {dev.name}: {dev.mmio_size:#x} bytes exceed a virtio slot")
        self.bus.add(base, P.VIRTIO_STRIDE, dev.name, dev)
        self.devices.append(dev)
        self.slots[slot] = dev

    def start(
        self, spawn: Callable[[str, AsyncWork], None], time: DeviceTime | None = None
    ) -> None:
        """The owner (the VM task) runs and its nursery is open: attach the slot devices.
        Each gets its context now, with ``spawn`` for its async work (called with the
        device's name), so a device's work goes straight into that nursery. Call it once,
        before the first slice; until then the slot devices have no context."""
        for slot, dev in sorted(self.slots.items()):
            dev.attach(
                DeviceContext(
                    name=dev.name,
                    memory=self.mem,
                    irq=self.plic.irq_line(P.VIRTIO_IRQ_BASE + slot),
                    wake=self._wake,
                    spawn=functools.partial(spawn, dev.name),
                    end_slice=self.end_slice,
                    time=time,
                )
            )

    # -- boot ------------------------------------------------------------------------------

    def boot(self) -> None:
        """Load the kernel, initrd and device tree, and put the hart at the kernel's entry."""
        cfg = self.config
        self.kernel = load_kernel(cfg.kernel, self.mem.base, self.mem.size, self.mem.write)
        self._bootargs = self._with_wall_clock(cfg.cmdline, self.kernel.kind)
        if cfg.initrd and len(cfg.initrd) >= self.mem.size:
            raise ConfigError(
                f"initrd of {len(cfg.initrd) >> 20} MiB does not fit in {self.mem.size >> 20} MiB "
                "of RAM; raise --mem"
            )
        # The device tree's size depends on the initrd's address only through fixed-size
        # cells, so a first build with a placeholder gives the size to plan around.
        probe = self._device_tree(None)
        initrd_size = len(cfg.initrd) if cfg.initrd else None
        layout = plan_layout(self.mem.base, self.mem.size, self.kernel.end, initrd_size, len(probe))
        if cfg.initrd and layout.initrd_start is not None:
            self.mem.write(layout.initrd_start, cfg.initrd)
        # without an initrd the probe is the tree (the second build would be the same bytes)
        self.dtb = probe if not cfg.initrd else self._device_tree(layout.initrd)
        self.mem.write(layout.dtb_addr, self.dtb)
        if cfg.dtb_out is not None:
            save_file(cfg.dtb_out, self.dtb, "the device tree file")
        self.vcpu.reset(self.kernel.entry, 0, layout.dtb_addr)
        log.debug(
            "boot",
            kernel=self.kernel.kind,
            entry=hex(self.kernel.entry),
            dtb=hex(layout.dtb_addr),
            initrd=layout.initrd and [hex(a) for a in layout.initrd],
        )

    def _with_wall_clock(self, cmdline: str, kind: str) -> str:
        """A Linux Image has no RTC to read: ``hv.time=`` gives its init the wall clock at
        this boot (the host's; on virtual time ``VIRTUAL_EPOCH`` plus the lab's time, so a
        run repeats). Daemons break at 1970-01-01 (nginx's workers crashed on their first
        request; FRR's watchfrr gave up). A command line that sets it keeps its own."""
        if kind != "image" or "hv.time=" in cmdline:
            return cmdline
        arg = f"hv.time={self.clock.wall_s()}"
        return f"{cmdline} {arg}" if len(cmdline) + len(arg) < TEXT_LIMIT else cmdline

    def _device_tree(self, initrd: tuple[int, int] | None) -> bytes:
        if initrd is None and self.config.initrd:
            initrd = (self.mem.base, self.mem.base + len(self.config.initrd))
        spec = DeviceTreeSpec(
            ram_base=self.mem.base,
            ram_size=self.mem.size,
            bootargs=self._bootargs,
            initrd=initrd,
            virtio_slots=tuple(sorted(self.slots)),
            hart_count=self.config.smp,
        )
        return build_device_tree(spec)

    def reboot(self) -> None:
        """A cold reset: RAM cleared, devices and hart reset, the same kernel booted again.
        The objects stay: counters, device backends and references survive."""
        self.console.collect()
        self.counters["reboots"] += 1
        self.reboot_requested = False
        self.suspended = False
        self.mem.clear()
        self.clock.restart()
        self.interrupts.reset()
        for dev in self.devices:
            dev.reset()
        self.boot()

    def close(self) -> None:
        """Release the engine and guest RAM (the machine cannot run again). Devices are
        closed first (virtio ones reset) and interrupts disconnected: a frame, a disk
        completion or an impaired cable's late delivery that reaches a device afterwards is
        dropped there, and never touches the released engine (that was a use after free: a
        crash of the whole host)."""
        self.interrupts.sink = None
        for dev in self.devices:
            with contextlib.suppress(Exception):
                dev.close()
        self.vcpu.close()
        self.mem.close()

    # -- running ---------------------------------------------------------------------------

    def run_slice(self, budget: int | None = None) -> Exit:
        """Deliver input and interrupts, run one slice (``budget`` instructions, default the
        quantum), collect console output. In virtual time a slice paused for host time
        (``ExitKind.PAUSED``) goes on with the next call, with none of this in between."""
        clock = self.clock
        if self.vcpu.slice_paused and isinstance(clock, VirtualClock):
            ex = self.vcpu.run_slice(None, clock.guest_ps())
            clock.settle(self.vcpu.last_insns)
            if ex.kind is ExitKind.PAUSED:
                return ex
            return self._after_slice(ex)
        self.console.feed_uart()
        self.interrupts.sync()
        if isinstance(clock, VirtualClock):
            ex = self.vcpu.run_slice(budget, clock.guest_ps())
            clock.settle(self.vcpu.last_insns)
            if ex.kind is ExitKind.PAUSED:
                return ex
        else:
            self.vcpu.set_clock_offset(clock.offset_ns())
            ex = self.vcpu.run_slice(budget)
        return self._after_slice(ex)

    def _after_slice(self, ex: Exit) -> Exit:
        self.console.collect()
        native = self.vcpu.stats.sbi_native
        if native != self._sbi_native_seen:  # putchar calls the native hook answered
            self.sbi.calls[LEGACY_PUTCHAR] += native - self._sbi_native_seen
            self._sbi_native_seen = native
        for dev in self.devices:
            dev.after_slice()
        if ex.kind is ExitKind.FATAL:
            self.stop(StopKind.GUEST_FAULT, f"guest fault: {ex.reason}")
        elif ex.kind is ExitKind.HOST_ERROR:
            self.stop(StopKind.HOST_ERROR, f"host error: {ex.reason}", ex.detail)
        return ex

    def end_slice(self) -> None:
        """End the running slice at the next block (from hooks, or harmless between slices)."""
        self.vcpu.request_stop()

    def sleeping(self, ex: Exit) -> bool:
        """After ``ex``, does the guest wait for an interrupt (``wfi`` or SBI suspend)?"""
        return ex.kind is ExitKind.WFI or self.suspended

    def wake_pending(self) -> bool:
        """Would the sleeping guest go on now? (A pending enabled interrupt ends ``wfi``.)"""
        if self.interrupts.wake_pending():
            self.suspended = False
            return True
        return False

    def next_deadline(self) -> float | None:
        """Host seconds until the guest's timer is due (None: no timer). With an injected
        time source its pace is unknown to the host, so a sleeping guest is re-checked
        every CUSTOM_CLOCK_POLL_S instead."""
        deadline = self.interrupts.next_deadline()
        if deadline is None or self.clock.monotonic:
            return deadline
        return min(deadline, CUSTOM_CLOCK_POLL_S)

    def _timer_set(self, deadline: int) -> None:
        """Virtual time: a timer set inside a slice for before the slice's end ends the slice
        at its deadline, so the interrupt comes exactly then (not a slice late)."""
        clock = self.clock
        if deadline == NO_DEADLINE or not isinstance(clock, VirtualClock):
            return
        ahead = clock.tick_ps(deadline) - clock.now_ps()
        self.vcpu.cut_budget(max(1, -(-ahead // clock.ps_per_insn)))

    @property
    def slice_paused(self) -> bool:
        return self.vcpu.slice_paused

    def timer_ps(self) -> int | None:
        """Virtual time: the lab time at which the armed timer falls due (None: none armed,
        or its interrupt is already pending)."""
        clock = self.clock
        deadline = self.interrupts.timer_deadline
        if not isinstance(clock, VirtualClock) or deadline == NO_DEADLINE:
            return None
        return clock.tick_ps(deadline)

    def feed_input(self, data: bytes) -> None:
        self.console.feed(data)

    def take_output(self) -> bytes:
        return self.console.take_output()

    def stats(self) -> dict[str, int]:
        """Counters: slices, exits by kind, interrupts, SBI calls by extension, devices."""
        v = self.vcpu.stats
        out = {k: n for k, n in vars(v).items() if isinstance(n, int)}
        for cause, n in v.traps_by_cause.items():
            out[f"trap_cause_{cause}"] = n
        for eid, n in self.sbi.calls.items():
            out[f"sbi_{eid:#x}"] = n
        out.update(self.counters)
        for dev in self.devices:
            for k, n in dev.stats().items():
                out[f"{dev.name}.{k}"] = n
        for k, n in self.sbi.counters.items():
            out[f"sbi.{k}"] = n
        return out

    # -- stopping --------------------------------------------------------------------------

    def stop(
        self, kind: StopKind, reason: str, detail: str = "", guest_code: int | None = None
    ) -> None:
        """The machine stops for good (the first reason given wins)."""
        if self.stop_info is None:
            self.stop_info = StopInfo.make(kind, reason, detail, guest_code)
        self.vcpu.request_stop()
        self._wake()

    def guest_failed(self, reason: str) -> None:
        """The guest told us (e.g. on its console) that it failed."""
        self.stop(StopKind.FAILURE, reason)

    def stop_by_host(self, reason: str) -> None:
        self.stop(StopKind.STOPPED, reason)

    def host_error(self, what: str, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception(exc))
        self.stop(StopKind.HOST_ERROR, f"host error: {what}: {type(exc).__name__}: {exc}", detail)

    # -- Power (for the firmware) ----------------------------------------------------------

    def request_reboot(self) -> None:
        self.reboot_requested = True
        self.vcpu.request_stop()

    def suspend(self) -> None:
        self.suspended = True
        self.vcpu.request_stop()

    def flush_tlb(self) -> None:
        self.vcpu.flush_tlb()

    # -- devices' callbacks and async work -------------------------------------------------

    def _wake(self) -> None:
        self.on_wake()

    def _on_plic_change(self, ctx: int, level: bool) -> None:
        if ctx == P.PLIC_CONTEXT_S:
            self.interrupts.set_external(level)

    def _on_finish(self, kind: FinishKind, code: int) -> None:
        if kind is FinishKind.RESET:
            self.request_reboot()
        elif kind is FinishKind.POWEROFF_PASS:
            self.stop(StopKind.POWEROFF, "test device: power-off (pass)")
        else:
            self.stop(StopKind.FAILURE, f"test device: failure, code {code}", guest_code=code)
