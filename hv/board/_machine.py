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
import mmap
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hv._errors import ConfigError, HostError, SnapshotError
from hv._log import get_logger
from hv._status import StopInfo, StopKind
from hv.board._console_io import INPUT_LIMIT, ConsoleIo, OrderedUart
from hv.board._fdt import TEXT_LIMIT, DeviceTreeSpec, build_device_tree
from hv.board._firmware import BoardFirmware
from hv.board._interrupts import NO_DEADLINE, HartInterrupts
from hv.board._loader import LoadedKernel, load_kernel, plan_layout, save_file
from hv.devices import Finisher, FinishKind, Plic, Uart16550
from hv.engine import Exit, ExitKind, Vcpu, VcpuStats
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
    Fields,
    GuestMemory,
    Pool,
    State,
    TimeSource,
    VirtualClock,
    default_jobs,
)
from hv.hw import _platform as P
from hv.riscv import ERR_ALREADY_AVAILABLE as SBI_ERR_ALREADY_AVAILABLE
from hv.riscv import ERR_INVALID_PARAM as SBI_ERR_INVALID_PARAM
from hv.riscv import (
    HSM_START_PENDING,
    HSM_STARTED,
    HSM_STOPPED,
    HSM_SUSPENDED,
    LEGACY_PUTCHAR,
)
from hv.riscv import SUCCESS as SBI_SUCCESS

log = get_logger("hv.machine")

# How often a sleeping guest is re-checked when guest time comes from an injected source.
CUSTOM_CLOCK_POLL_S = 0.001
# Virtual time: an armed timer's interrupt comes this many timebase ticks after its deadline,
# unless a time read reaches the deadline first (that read raises it: hv_clock_ticks). A
# guest polling the clock so sees the deadline before the interrupt, as on real hardware
# (delivered exactly at the deadline, the interrupt would follow a read of deadline - 1:
# time moves at block entries); one tick is 100 ns at the 10 MHz timebase.
TIMER_LATENCY_TICKS = 1
# Real time, harts in parallel: host time a round's batch runs each hart's slices for.
HARTS_BATCH_S = 0.002
# Host-written ranges one hart keeps to drop before its next slice; past it, all of RAM.
HOST_WRITES_KEPT = 256

_RAN = Exit(ExitKind.PREEMPTED)
_ASLEEP = Exit(ExitKind.WFI)


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
    # Host threads an SMP guest's harts run on at once, on real time (None: every core; on
    # virtual time they take turns, so a run repeats). See docs/SCALING.md.
    jobs: int | None = None

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


class Hart:
    """One hart of the machine: its vCPU, interrupts and firmware, and its HSM state."""

    def __init__(
        self, hartid: int, vcpu: Vcpu, interrupts: HartInterrupts, firmware: BoardFirmware
    ) -> None:
        self.id = hartid
        self.vcpu = vcpu
        self.interrupts = interrupts
        self.firmware = firmware
        self.power_on()

    def power_on(self) -> None:
        """Hart 0 runs (its vCPU is put at the kernel's entry by the machine); the others
        wait for SBI HSM hart_start."""
        self.state = HSM_STARTED if self.id == 0 else HSM_STOPPED
        self.start: tuple[int, int] | None = None  # (addr, opaque) while START_PENDING
        self.sleeping = False  # in wfi or suspended, until an interrupt of its own
        self.suspended = False  # SBI HSM hart_suspend
        self.resume: tuple[int, int] | None = None  # a non-retentive suspend's (addr, opaque)
        self.stale_code = False  # a remote fence.i: drop its translations first
        self.stale_tlb = False  # a remote sfence.vma: flush its TLB first
        self.flushed = 0  # fences served (a caller on another thread waits for it to grow)
        self.fence_wait: dict[int, int] | None = None  # its own remote fence, not yet done
        self.firmware.sbi.reset()

    def runs(self) -> bool:
        """Started (awake or asleep)."""
        return self.state == HSM_STARTED

    def wake_pending(self) -> bool:
        return self.state == HSM_STARTED and self.sleeping and self.interrupts.wake_pending()

    def wake(self) -> None:
        self.sleeping = self.suspended = False
        if self.resume is not None:  # non-retentive: at resume_addr, a0 = hartid, a1 = opaque
            addr, opaque = self.resume
            self.resume = None
            self.vcpu.reset(addr, self.id, opaque)

    def ready(self) -> bool:
        """Can it run a slice now? Starts a hart whose start is pending, wakes a sleeping
        one whose interrupt is pending."""
        if self.state == HSM_START_PENDING:
            assert self.start is not None
            addr, opaque = self.start
            self.start = None
            self.vcpu.reset(addr, self.id, opaque)  # S-mode, satp = 0, sstatus.SIE = 0
            self.state = HSM_STARTED
            self.sleeping = self.suspended = False
            self.stale_code = self.stale_tlb = False  # (reset dropped both)
        if self.state != HSM_STARTED:
            return False
        if self.sleeping:
            if not self.interrupts.wake_pending():
                return False
            self.wake()
        return True

    def prepare(self) -> None:
        """Before each of its slices: what other harts asked of it (fences), its LR
        reservation lost (another hart may have stored to it), its interrupts into mip."""
        vcpu = self.vcpu
        if self.stale_code or self.stale_tlb:
            self.flushed += 1
        if self.stale_code:
            self.stale_code = False
            vcpu.flush_code()
        if self.stale_tlb:
            self.stale_tlb = False
            vcpu.flush_tlb()
        vcpu.clear_reservation()
        self.interrupts.sync()

    def save_state(self) -> State:
        it = self.interrupts
        return {
            "hsm": self.state,
            "start": list(self.start) if self.start else None,
            "resume": list(self.resume) if self.resume else None,
            "sleeping": self.sleeping,
            "suspended": self.suspended,
            "stale_code": self.stale_code,
            "stale_tlb": self.stale_tlb,
            "timer_deadline": it.timer_deadline,
            "seip": it.seip,
            "ipi_pending": it.ipi_pending,
            "misaligned_deleg": self.firmware.sbi.misaligned_deleg,
            "locked": sorted(self.firmware.sbi.locked),
            "vcpu": self.vcpu.save_state(),
        }

    def load_state(self, st: Fields) -> None:
        hsm = st.int("hsm", 0, 4)
        st.check(hsm in _HSM_SAVED, "hsm", f"HSM state {hsm} is not one a snapshot keeps")
        self.state = hsm
        self.start = _pair(st, "start")
        st.check((self.start is not None) == (hsm == HSM_START_PENDING), "start", "HSM mismatch")
        self.resume = _pair(st, "resume")
        self.sleeping = st.bool("sleeping")
        self.suspended = st.bool("suspended")
        self.stale_code = st.bool("stale_code")
        self.stale_tlb = st.bool("stale_tlb")
        it = self.interrupts
        it.timer_deadline = st.int("timer_deadline", 0, NO_DEADLINE)
        it.seip = st.bool("seip")
        it.ipi_pending = st.bool("ipi_pending")
        self.firmware.sbi.misaligned_deleg = st.int("misaligned_deleg", 0, 1)
        self.firmware.sbi.locked = set(st.ints("locked", 16, 0, 0xFFFF_FFFF))
        self.vcpu.load_state(st.sub("vcpu"))


def device_kind(dev: Device) -> str:
    """What a device is, for matching a snapshot's devices with a machine's (names carry
    the VM's name, which a clone changes): its class, and a transport's backend's."""
    backend = getattr(dev, "backend", None)
    kind = type(dev).__name__
    return kind if backend is None else f"{kind}:{type(backend).__name__}"


def _kinds(d: Fields) -> tuple[str, ...]:
    v = d.str("kind", 100)
    return (v,) if v.replace(":", "").isidentifier() else ()


_KERNEL_KINDS: tuple[str, ...] = ("image", "elf", "raw")
_HSM_SAVED = frozenset({HSM_STARTED, HSM_STOPPED, HSM_START_PENDING, HSM_SUSPENDED})


def _pair(st: Fields, key: str) -> tuple[int, int] | None:
    if not st.given(key):
        return None
    a, b = st.ints(key, 2, length=2)
    return (a, b)


class _HostWrites:
    """The host's writes to guest RAM, handed to every hart's engine (each drops their
    translations before its next slice), bounded per hart."""

    def __init__(self, mem: GuestMemory, harts: int) -> None:
        self.mem = mem
        self.queues: list[list[tuple[int, int]]] = [[] for _ in range(harts)]

    def taker(self, hart: int) -> Callable[[], list[tuple[int, int]]]:
        def take() -> list[tuple[int, int]]:
            new = self.mem.take_host_writes()
            if new:
                for q in self.queues:
                    q += new
                    if len(q) > HOST_WRITES_KEPT:  # a hart stopped for long: all of RAM
                        q[:] = [(self.mem.base, self.mem.base + self.mem.size)]
            mine = self.queues[hart]
            out = mine[:]
            mine.clear()
            return out

        return take


class _NativeConsoles:
    """The harts' native console buffers as one, in hart order: the harts run in turn, and
    the console collects after each slice, so that is the order the guest wrote in."""

    def __init__(self, vcpus: list[Vcpu]) -> None:
        self.vcpus = vcpus

    def console_pending(self) -> bool:
        return any(v.console_pending() for v in self.vcpus)

    def take_console(self) -> bytes:
        return b"".join(v.take_console() for v in self.vcpus)

    def hold_console(self, hold: bool) -> None:
        for v in self.vcpus:
            v.hold_console(hold)

    def request_stop(self) -> None:
        for v in self.vcpus:
            v.request_stop()


class Machine:
    """The hv-virt board with ``smp`` harts."""

    def __init__(self, config: MachineConfig, ram: mmap.mmap | None = None) -> None:
        """``ram``: RAM mapped from a snapshot (then the machine is restored with
        ``load_state``, not booted)."""
        self.config = config
        self.counters: collections.Counter[str] = collections.Counter()
        self.stop_info: StopInfo | None = None
        self.reboot_requested = False
        self.suspended = False  # SBI HSM retentive suspend of a one-hart machine: like wfi
        # Set by the owner (the VM task): wake a sleeping VM.
        self.on_wake: Callable[[], None] = lambda: None

        self.mem = GuestMemory(P.RAM_BASE, config.mem_size, ram)
        self.clock: Clock = (
            VirtualClock(config.mips) if config.clock == "virtual" else Clock(config.time_source)
        )
        self.plic = Plic(self._on_plic_change, config.smp)
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
        self.harts: list[Hart] = []
        for h in range(config.smp):
            self.harts.append(self._make_hart(h))
        hart0 = self.harts[0]
        self.vcpu = hart0.vcpu  # hart 0's (a one-hart machine's only) vCPU
        self.interrupts = hart0.interrupts
        self.firmware = hart0.firmware
        self.sbi = self.firmware.sbi  # counts every hart's calls
        # The hart whose slice runs on this thread (or ran last): harts of an SMP guest may
        # run on several threads at once (real time), each asking for itself.
        self._here = threading.local()
        self._hart0 = hart0
        self._smp = config.smp > 1
        # Real time: the harts' slices of a round in parallel, on up to ``jobs`` threads.
        self._pool: Pool | None = None
        if self._smp:
            shared = [h.vcpu.set_shared_code() for h in self.harts]
            if not all(shared):
                log.warning(
                    "this engine cannot drop translations at fence.i: code one hart writes "
                    "reaches another only through SBI remote fence.i (run `hv engine build`)"
                )
            jobs = min(config.smp, config.jobs if config.jobs is not None else default_jobs())
            if (
                jobs > 1
                and not isinstance(self.clock, VirtualClock)
                and all([h.vcpu.set_parallel() for h in self.harts])
            ):
                self._pool = Pool(jobs)
        # Virtual time, set by the owner: how far the guest may run now (the lab's horizon),
        # which a round's later harts respect when an earlier one lowered it.
        self.horizon: Callable[[], float] | None = None
        if self._smp:
            fanout = _HostWrites(self.mem, config.smp)
            for hart in self.harts:
                hart.vcpu.host_writes = fanout.taker(hart.id)
            self.console.native = _NativeConsoles([h.vcpu for h in self.harts])
        else:
            self.console.native = self.vcpu
            if isinstance(self.clock, VirtualClock):
                self.clock.in_slice = self.vcpu.executed_in_slice
        self._sbi_native_seen = 0
        self.kernel: LoadedKernel | None = None
        self._bootargs = config.cmdline  # the command line of the boot under way
        self.dtb = b""

    @property
    def _running(self) -> Hart:
        hart: Hart = getattr(self._here, "hart", self._hart0)
        return hart

    @_running.setter
    def _running(self, hart: Hart) -> None:
        self._here.hart = hart

    def _make_hart(self, h: int) -> Hart:
        config = self.config
        interrupts = HartInterrupts(self.clock, self.counters, self._wake)
        firmware = BoardFirmware(
            self.mem,
            self.console,
            interrupts,
            self.clock,
            self,
            hartid=h,
            harts=config.smp,
            shared=self.harts[0].firmware.sbi if h else None,
        )
        vcpu = Vcpu(
            self.mem,
            self.bus,
            firmware,
            config.quantum,
            config.count_instructions,
            native_exits=config.native_exits and (self.clock.monotonic or self.clock.virtual),
            timebase_hz=self.clock.hz,
        )
        hart = Hart(h, vcpu, interrupts, firmware)
        if isinstance(self.clock, VirtualClock):
            vcpu.set_virtual_time(self.clock.ps_per_insn)
            interrupts.on_set_timer = functools.partial(self._timer_set, hart)
        interrupts.sink = vcpu
        return hart

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
        for hart in self.harts:
            hart.power_on()
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
        for hart in self.harts:
            hart.interrupts.reset()
        for dev in self.devices:
            dev.reset()
        self.boot()

    def close(self) -> None:
        """Release the engine and guest RAM (the machine cannot run again). Devices are
        closed first (virtio ones reset) and interrupts disconnected: a frame, a disk
        completion or an impaired cable's late delivery that reaches a device afterwards is
        dropped there, and never touches the released engine (that was a use after free: a
        crash of the whole host)."""
        for hart in self.harts:
            hart.interrupts.sink = None
        for dev in self.devices:
            with contextlib.suppress(Exception):
                dev.close()
        if self._pool is not None:
            self._pool.close()
        for hart in self.harts:
            hart.vcpu.close()
        self.mem.close()

    # -- saved state (snapshots) -----------------------------------------------------------

    def save_state(self) -> State:
        """The machine between slices: clock, harts, console, every device (hv.hw._state).
        RAM is the caller's to save (``mem.view``), as are the devices' pending calls."""
        if self.stop_info is not None:
            raise HostError("a stopped machine has no state to save")
        self.console.collect()
        clock = self.clock
        kernel = self.kernel
        return {
            "clock": (
                {"ps": clock.ps, "origin_ps": clock.origin_ps}
                if isinstance(clock, VirtualClock)
                else {"ticks": clock.ticks()}
            ),
            "reboot_requested": self.reboot_requested,
            "suspended": self.suspended,
            "bootargs": self._bootargs,
            "kernel": None
            if kernel is None
            else {
                "kind": kernel.kind,
                "entry": kernel.entry,
                "start": kernel.start,
                "end": kernel.end,
            },
            "console_input": bytes(self.console.input),
            "console_output": bytes(self.console.output),
            "console_blocked": self.console.blocked,
            "harts": [h.save_state() for h in self.harts],
            "devices": [{"kind": device_kind(d), "state": d.save_state()} for d in self.devices],
        }

    def load_state(self, st: Fields) -> None:
        """Take back ``save_state``'s state on a machine built from the same configuration
        with its RAM from the snapshot, its devices attached (``start``), never run."""
        c = st.sub("clock")
        clock = self.clock
        if isinstance(clock, VirtualClock):
            clock.ps = c.int("ps", 0, 1 << 62)
            clock.origin_ps = c.int("origin_ps", 0, clock.ps)
        else:
            ticks = c.int("ticks", 0, 1 << 62)
            clock.start_ns = clock.source() - ticks * 1_000_000_000 // clock.hz
            clock.paused_ns = 0
        self.reboot_requested = st.bool("reboot_requested")
        self.suspended = st.bool("suspended")
        self._bootargs = st.str("bootargs", TEXT_LIMIT)
        if st.given("kernel"):
            k = st.sub("kernel")
            end = self.mem.end
            self.kernel = LoadedKernel(
                kind=k.choice("kind", _KERNEL_KINDS),  # type: ignore[arg-type]
                entry=k.int("entry", self.mem.base, end),
                start=k.int("start", self.mem.base, end),
                end=k.int("end", self.mem.base, end),
            )
        self.console.input[:] = st.bytes("console_input", INPUT_LIMIT)
        self.console.output[:] = st.bytes("console_output", INPUT_LIMIT)
        self.console.blocked = st.bool("console_blocked")
        harts = st.subs("harts", len(self.harts), length=len(self.harts))
        for hart, hs in zip(self.harts, harts, strict=True):
            hart.load_state(hs)
        devs = st.subs("devices", len(self.devices) + 1)
        kinds = [d.choice("kind", _kinds(d)) if d.has("kind") else "?" for d in devs]
        mine = [device_kind(d) for d in self.devices]
        if kinds != mine:
            raise SnapshotError(
                f"{st.where}.devices: the snapshot's devices ({', '.join(kinds)}) are not "
                f"this machine's ({', '.join(mine)})"
            )
        for dev, ds in zip(self.devices, devs, strict=True):
            dev.load_state(ds.sub("state"))
        for hart in self.harts:
            hart.interrupts.sync()

    # -- running ---------------------------------------------------------------------------

    def run_slice(self, budget: int | None = None) -> Exit:
        """Deliver input and interrupts, run one slice (``budget`` instructions, default the
        quantum), collect console output. In virtual time a slice paused for host time
        (``ExitKind.PAUSED``) goes on with the next call, with none of this in between.
        An SMP machine runs a round instead (``run_round``)."""
        if self._smp:
            return self.run_round(budget)
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

    def _after_slice(self, ex: Exit, who: str = "") -> Exit:
        """After a slice (``who``: "hart N: " on an SMP machine): console output, the native
        putchar count, the devices' work; a fatal exit stops the machine."""
        self.console.collect()
        native = (
            sum(h.vcpu.stats.sbi_native for h in self.harts)
            if self._smp
            else (self.vcpu.stats.sbi_native)
        )
        if native != self._sbi_native_seen:  # putchar calls the native hook answered
            self.sbi.calls[LEGACY_PUTCHAR] += native - self._sbi_native_seen
            self._sbi_native_seen = native
        for dev in self.devices:
            dev.after_slice()
        if ex.kind is ExitKind.FATAL:
            self.stop(StopKind.GUEST_FAULT, f"guest fault: {who}{ex.reason}")
        elif ex.kind is ExitKind.HOST_ERROR:
            self.stop(StopKind.HOST_ERROR, f"host error: {who}{ex.reason}", ex.detail)
        return ex

    def end_slice(self) -> None:
        """End the running slice at the next block (from hooks, or harmless between slices)."""
        self._running.vcpu.request_stop()

    def sleeping(self, ex: Exit) -> bool:
        """After ``ex``, does the guest wait for an interrupt (``wfi`` or SBI suspend)? (An
        SMP machine: does every started hart?)"""
        return ex.kind is ExitKind.WFI or self.suspended

    def wake_pending(self) -> bool:
        """Would the sleeping guest go on now? (A pending enabled interrupt ends ``wfi``.)"""
        if self._smp:
            return any(h.state == HSM_START_PENDING or h.wake_pending() for h in self.harts)
        if self.interrupts.wake_pending():
            self.suspended = False
            hart = self.harts[0]
            if hart.resume is not None:  # non-retentive suspend: resume at its address
                hart.wake()
            return True
        return False

    def next_deadline(self) -> float | None:
        """Host seconds until the guest's timer is due (None: no timer). With an injected
        time source its pace is unknown to the host, so a sleeping guest is re-checked
        every CUSTOM_CLOCK_POLL_S instead. (SMP: the first hart's timer still ahead, or 0 if
        only due ones are armed.)"""
        if self._smp:
            due = [
                d
                for h in self.harts
                if h.runs() and (d := h.interrupts.next_deadline()) is not None
            ]
            ahead = [d for d in due if d > 0]
            deadline = min(ahead) if ahead else (0.0 if due else None)
        else:
            deadline = self.interrupts.next_deadline()
        if deadline is None or self.clock.monotonic:
            return deadline
        return min(deadline, CUSTOM_CLOCK_POLL_S)

    def _timer_set(self, hart: Hart, deadline: int) -> None:
        """Virtual time: a timer set inside a slice for before the slice's end ends the slice
        at its deadline (and TIMER_LATENCY_TICKS), so the interrupt comes then (not a slice
        late)."""
        clock = self.clock
        if deadline == NO_DEADLINE or not isinstance(clock, VirtualClock):
            return
        ahead = clock.tick_ps(deadline + TIMER_LATENCY_TICKS) - clock.now_ps()
        hart.vcpu.cut_budget(max(1, -(-ahead // clock.ps_per_insn)))

    @property
    def slice_paused(self) -> bool:
        return self.vcpu.slice_paused

    def timer_ps(self) -> int | None:
        """Virtual time: the lab time at which the armed timer falls due (None: none armed,
        or its interrupt is already pending). SMP: the first one still ahead of the machine's
        time, else the first one."""
        clock = self.clock
        if not isinstance(clock, VirtualClock):
            return None
        if not self._smp:
            deadline = self.interrupts.timer_deadline
            if deadline == NO_DEADLINE:
                return None
            return clock.tick_ps(deadline + TIMER_LATENCY_TICKS)
        times = [
            clock.tick_ps(h.interrupts.timer_deadline + TIMER_LATENCY_TICKS)
            for h in self.harts
            if h.runs() and h.interrupts.timer_deadline != NO_DEADLINE
        ]
        ahead = [t for t in times if t > clock.ps]
        return min(ahead) if ahead else min(times, default=None)

    def feed_input(self, data: bytes) -> None:
        self.console.feed(data)

    def take_output(self) -> bytes:
        return self.console.take_output()

    def hart_stats(self) -> VcpuStats:
        """The vCPUs' counters (an SMP machine's summed over its harts)."""
        if not self._smp:
            return self.vcpu.stats
        total = VcpuStats()
        for hart in self.harts:
            for k, n in vars(hart.vcpu.stats).items():
                if isinstance(n, int):
                    setattr(total, k, getattr(total, k) + n)
            total.traps_by_cause.update(hart.vcpu.stats.traps_by_cause)
        return total

    def stats(self) -> dict[str, int]:
        """Counters: slices, exits by kind, interrupts, SBI calls by extension, devices."""
        v = self.hart_stats()
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

    # -- SMP: the harts in turn --------------------------------------------------------------

    def run_round(self, budget: int | None = None) -> Exit:
        """One slice of each runnable hart, in hart order: the seam a parallel run replaces
        (each hart is an engine of its own; what they share is RAM, the devices and this
        machine's Python state). Stopped harts and sleeping ones are skipped; a sleeping
        hart wakes on its own interrupts. Returns WFI when every started hart sleeps.

        Virtual time is one clock, in lockstep: every hart runs the same window of guest
        time from the same base (``budget`` instructions, or up to ``horizon``), each in
        slices of its own (a timer set inside one still cuts it, and a hart whose timer
        falls due inside the window wakes there); then the clock stands at the latest time
        a hart reached. Real time: one slice of ``budget`` instructions each."""
        clock = self.clock
        quantum = self.config.quantum if budget is None else max(1, budget)
        self.console.feed_uart()
        ex = _RAN
        if isinstance(clock, VirtualClock):
            base = reached = clock.ps
            end = base + quantum * clock.ps_per_insn
            for hart in self.harts:
                if self.stop_info is not None or self.reboot_requested:
                    break
                self._running = hart
                clock.ps = base
                clock.in_slice = hart.vcpu.executed_in_slice
                ex = self._run_hart_virtual(hart, clock, end) or ex
                reached = max(reached, clock.ps)
            clock.ps = reached
        elif self._pool is not None:
            # Real time on several cores: the ready harts' slices as one batch (hv.hw._parallel)
            ready = [h for h in self.harts if h.ready()]
            offset = clock.offset_ns()
            until = time.monotonic() + HARTS_BATCH_S
            run = functools.partial(
                self._run_hart_real, quantum=quantum, offset=offset, until=until
            )
            for got in self._pool.run([functools.partial(run, h) for h in ready]):
                ex = got or ex
        else:
            offset = clock.offset_ns()
            for hart in self.harts:
                if self.stop_info is not None or self.reboot_requested:
                    break
                if not hart.ready():
                    continue
                ex = self._run_hart_real(hart, quantum, offset) or ex
        if ex is not _RAN:
            return ex
        if all(
            h.state == HSM_STOPPED or (h.state == HSM_STARTED and h.sleeping) for h in self.harts
        ):
            return _ASLEEP
        return _RAN

    def _run_hart_real(
        self, hart: Hart, quantum: int, offset: int, until: float | None = None
    ) -> Exit | None:
        """Real-time slices of ``hart`` on this thread: one, or (harts in parallel) more
        until host time ``until`` while it runs on undisturbed (a batch of the pool costs a
        thread's wake-up: slices of a few hundred microseconds alone would not pay it).
        The exit if it stopped the machine."""
        while True:
            if self.stop_info is not None or self.reboot_requested:
                return None
            self._running = hart
            hart.prepare()
            hart.vcpu.set_clock_offset(offset)
            bad = self._hart_after(hart, hart.vcpu.run_slice(quantum))
            if (
                bad is not None
                or until is None
                or hart.sleeping
                or hart.fence_wait is not None
                or not hart.runs()
                or time.monotonic() >= until
            ):
                return bad

    def _run_hart_virtual(self, hart: Hart, clock: VirtualClock, end: int) -> Exit | None:
        """Hart ``hart``'s share of the window up to ``end`` (lab ps), from ``clock.ps``."""
        vcpu = hart.vcpu
        horizon = self.horizon
        while self.stop_info is None and not self.reboot_requested:
            limit = end if horizon is None else min(end, int(horizon()))
            if clock.ps >= limit:
                return None
            if not hart.ready():
                # asleep: its timer may wake it inside the window
                t = self._hart_timer_ps(hart, clock)
                if not hart.sleeping or t is None or not clock.ps < t < limit:
                    return None
                clock.ps = t
                continue
            hart.prepare()
            ex = vcpu.run_slice(clock.insns_until(limit), clock.guest_ps())
            clock.settle(vcpu.last_insns)
            while ex.kind is ExitKind.PAUSED:  # host time alone paused it: go on at once
                ex = vcpu.run_slice(None, clock.guest_ps())
                clock.settle(vcpu.last_insns)
            bad = self._hart_after(hart, ex)
            if bad is not None:
                return bad
        return None

    @staticmethod
    def _hart_timer_ps(hart: Hart, clock: VirtualClock) -> int | None:
        deadline = hart.interrupts.timer_deadline
        return None if deadline == NO_DEADLINE else clock.tick_ps(deadline + TIMER_LATENCY_TICKS)

    def _hart_after(self, hart: Hart, ex: Exit) -> Exit | None:
        """After one of ``hart``'s slices: its console output and devices' work; the exit
        if it stopped the machine."""
        self._after_slice(ex, f"hart {hart.id}: ")
        if ex.kind in (ExitKind.FATAL, ExitKind.HOST_ERROR):
            return ex
        if ex.kind is ExitKind.WFI or hart.suspended:
            hart.sleeping = True
        return None

    # -- SMP: the harts' side of the SBI (hv.board._firmware.Board) -------------------------

    def send_ipi(self, harts: int) -> None:
        for hart in self._each(harts):
            if hart.runs():  # a stopped (or not yet started) hart ignores it, as in OpenSBI
                hart.interrupts.send_ipi()

    def flush_tlb(self, harts: int) -> bool:
        return self._remote_fence(harts, tlb=True)

    def fence_i(self, harts: int) -> bool:
        if not self._smp:
            return True  # one engine sees its own stores (and the host's DMA is dropped anyway)
        return self._remote_fence(harts, tlb=False)

    def _remote_fence(self, harts: int, *, tlb: bool) -> bool:
        """sfence.vma (``tlb``) or fence.i on ``harts``: each target flushes before its next
        slice (the caller's TLB at once). A target whose engine runs on another thread (real
        time, harts in parallel) is asked to end its slice, and the call is not done until it
        has flushed: False, and the calling hart makes the call again (the SBI spec's remote
        fences complete before the call returns)."""
        me = self._running
        if me.fence_wait is not None:  # the same call again: have they flushed since?
            if all(
                self.harts[i].flushed > n or not self.harts[i].runs()
                for i, n in me.fence_wait.items()
            ):
                me.fence_wait = None
                return True
            return False
        wait: dict[int, int] = {}
        for hart in self._each(harts):
            if tlb and hart is me:
                hart.vcpu.flush_tlb()  # (inside its own SBI call: at once)
                continue
            if tlb:
                hart.stale_tlb = True
            else:
                hart.stale_code = True
            if hart is me:
                hart.vcpu.request_stop()  # its code is dropped before its next slice
            elif hart.vcpu.busy_elsewhere():
                hart.vcpu.request_stop()
                wait[hart.id] = hart.flushed
        if wait:
            me.fence_wait = wait
            return False
        return True

    def hart_start(self, hart: int, addr: int, opaque: int) -> int:
        h = self.harts[hart]
        if h.state == HSM_STARTED:
            return SBI_ERR_ALREADY_AVAILABLE
        if h.state != HSM_STOPPED:
            return SBI_ERR_INVALID_PARAM  # starting or stopping already (as OpenSBI)
        h.state = HSM_START_PENDING
        h.start = (addr, opaque)
        self.counters["hart_starts"] += 1
        self._wake()
        return SBI_SUCCESS

    def hart_stop(self, hart: int) -> int:
        h = self.harts[hart]
        others = [o for o in self.harts if o is not h and o.state != HSM_STOPPED]
        if not others:
            self.stop(StopKind.FAILURE, f"hart {hart} stopped itself (SBI HSM hart_stop)")
            return SBI_SUCCESS
        h.state = HSM_STOPPED
        h.sleeping = h.suspended = False
        h.resume = None
        self.counters["hart_stops"] += 1
        h.vcpu.request_stop()
        return SBI_SUCCESS

    def hart_status(self, hart: int) -> int:
        h = self.harts[hart]
        if h.state == HSM_STARTED and h.suspended:
            return HSM_SUSPENDED
        return h.state

    def hart_suspend(self, hart: int, resume: tuple[int, int] | None) -> None:
        h = self.harts[hart]
        h.suspended = True
        h.resume = resume
        self.counters["hart_suspends"] += 1
        if not self._smp:
            self.suspended = True
        h.vcpu.request_stop()

    def valid_entry(self, addr: int) -> bool:
        return addr % 2 == 0 and self.mem.contains(addr, 4)

    def read_ulong(self, hart: int, vaddr: int) -> int | None:
        pa = self.harts[hart].vcpu.translate(vaddr)
        if pa is None or pa % 8 or not self.mem.contains(pa, 8):
            return None
        return self.mem.read_u64(pa)

    def _each(self, harts: int) -> list[Hart]:
        return [h for h in self.harts if harts >> h.id & 1]

    # -- stopping --------------------------------------------------------------------------

    def stop(
        self, kind: StopKind, reason: str, detail: str = "", guest_code: int | None = None
    ) -> None:
        """The machine stops for good (the first reason given wins)."""
        if self.stop_info is None:
            self.stop_info = StopInfo.make(kind, reason, detail, guest_code)
        for hart in self.harts:
            hart.vcpu.request_stop()
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
        for hart in self.harts:
            hart.vcpu.request_stop()

    # -- devices' callbacks and async work -------------------------------------------------

    def _wake(self) -> None:
        self.on_wake()

    def _on_plic_change(self, ctx: int, level: bool) -> None:
        if ctx & 1:  # hart ctx // 2's S-mode context (the M-mode ones are listed only)
            self.harts[ctx >> 1].interrupts.set_external(level)

    def _on_finish(self, kind: FinishKind, code: int) -> None:
        if kind is FinishKind.RESET:
            self.request_reboot()
        elif kind is FinishKind.POWEROFF_PASS:
            self.stop(StopKind.POWEROFF, "test device: power-off (pass)")
        else:
            self.stop(StopKind.FAILURE, f"test device: failure, code {code}", guest_code=code)
