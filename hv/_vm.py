"""A virtual machine as a trio task.

The run loop is short on purpose: run a slice, then either yield to trio (so other VMs and the
application run) or, if the guest waits in ``wfi``, sleep until its timer deadline or a wake-up
(console input, an interrupt, pause/stop). A slice blocks the event loop for about a
millisecond; an idle guest costs nothing until its deadline.

A VM never takes its siblings down: a guest fault or a device-model bug ends this VM with a
reason (and a traceback in the log), and ``run_vm`` returns normally. Devices' async work
(``DeviceContext.spawn``) runs in a nursery of the VM's own: a device task that fails stops
this VM with a host error naming the device, never a sibling VM or the caller.

Wake-ups: the machine calls ``on_wake`` whenever an interrupt rises (from a hook, or from a
device's task between slices), console input arrives, or the machine stops; a sleeping guest
runs again at once.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from hv._console import BACKLOG_HIGH, Console
from hv._disk import Disk
from hv._errors import ConfigError, StateError
from hv._log import get_logger
from hv._nic import Nic, nic_cmdline
from hv._status import StopInfo, StopKind
from hv.board import Machine, MachineConfig, load_file
from hv.hw import DEFAULT_QUANTUM, AsyncWork, Device, TimeSource
from hv.hw import _platform as P

log = get_logger("hv.vm")

# Longest a waiting guest sleeps without re-checking (guards against a missed wake-up).
IDLE_RECHECK_S = 1.0
# What a Linux guest prints when it panics: it then spins forever, so the VM stops on it.
PANIC_MARKER = b"Kernel panic - not syncing"


class VmState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class VmConfig:
    """What to boot. ``kernel`` and ``initrd`` are paths or the file contents."""

    kernel: Path | bytes
    mem_size: int = P.MEM_DEFAULT
    cmdline: str = ""
    initrd: Path | bytes | None = None
    quantum: int = DEFAULT_QUANTUM
    name: str = "vm"
    dtb_out: Path | None = None
    stop_on_panic: bool = True  # a Linux "Kernel panic" on the console stops the VM (exit 1)
    count_instructions: bool = False  # exact instruction count in stats (profiling; slower)
    native_exits: bool = True  # answer SBI putchar and rdtime natively (False: all in Python)
    devices: tuple[Device, ...] = ()  # in virtio-mmio slots 0, 1, ... (see hv.hw._device)
    time_source: TimeSource | None = None  # guest time's source in ns (None: monotonic)
    nics: tuple[Nic, ...] = ()  # virtio-net cards on switches, after ``devices`` (hv.Nic)
    disks: tuple[Disk, ...] = ()  # virtio-blk disks, after the NICs (hv.Disk)

    def machine_config(self) -> MachineConfig:
        kernel = self.kernel if isinstance(self.kernel, bytes) else load_file(self.kernel, "kernel")
        initrd = self.initrd
        if initrd is not None and not isinstance(initrd, bytes):
            initrd = load_file(initrd, "initrd")
        return MachineConfig(
            kernel=kernel,
            mem_size=self.mem_size,
            cmdline=" ".join(x for x in (self.cmdline, nic_cmdline(self.nics)) if x),
            initrd=initrd,
            quantum=self.quantum,
            dtb_out=self.dtb_out,
            count_instructions=self.count_instructions,
            native_exits=self.native_exits,
            devices=self.devices
            + tuple(nic.device(self.name, i) for i, nic in enumerate(self.nics))
            + tuple(disk.device(self.name, i) for i, disk in enumerate(self.disks)),
            time_source=self.time_source,
        )


class Vm:
    """Handle on a running VM: its state, exit, console, and pause/resume/stop.

    Create it with ``await nursery.start(run_vm, config)`` or ``async with open_vm(config)``.
    """

    def __init__(self, config: VmConfig) -> None:
        self.config = config
        self.name = config.name
        self.machine = Machine(config.machine_config())
        # Load the kernel now, so a file that is not a kernel raises ConfigError from the
        # constructor (and so from nursery.start), not later from the running task.
        self.machine.boot()
        self.console = Console(self._console_input)
        self.console.on_drained = self._console_drained
        self._state = VmState.CREATED
        self._wake = trio.Event()
        self.machine.on_wake = self._wake_up
        self._stopped = trio.Event()
        self._pause_requested = False
        self._scan_tail = b""
        self.exit: StopInfo | None = None
        self.log = log.bind(vm=self.name)

    def _wake_up(self) -> None:
        self._wake.set()

    def _console_drained(self) -> None:
        if self.machine.console.blocked:
            self.machine.console.set_blocked(False)
            self._wake.set()

    def _console_input(self, data: bytes) -> None:
        # Input must wake a guest sleeping in wfi (its UART interrupt may be enabled).
        self.machine.feed_input(data)
        self._wake.set()

    @property
    def state(self) -> VmState:
        return self._state

    @property
    def stats(self) -> dict[str, int]:
        """Counters: slices, exits by kind, interrupts raised, SBI calls by extension, each
        device's counters as ``NAME.COUNTER`` (``uart0.tx_bytes``...), and the console's
        ``console_dropped`` (bytes a streaming reader never got)."""
        out = self.machine.stats()
        out["console_dropped"] = self.console.dropped
        return out

    def pause(self) -> None:
        """Stop running the vCPU after the current slice; guest time stands still."""
        if self._state not in (VmState.RUNNING, VmState.PAUSED):
            raise StateError(self._state.value, "running")
        self._pause_requested = True
        self.machine.end_slice()
        self._wake.set()

    def resume(self) -> None:
        if self._state not in (VmState.RUNNING, VmState.PAUSED):
            raise StateError(self._state.value, "paused or running")
        self._pause_requested = False
        self._wake.set()

    def stop(self, reason: str = "stopped by the host") -> None:
        """Ask the VM to stop; it does within one slice. ``await vm.wait()`` for the end."""
        if self._state is VmState.STOPPED:
            return
        self.machine.stop_by_host(reason)
        self._wake.set()

    async def wait(self) -> StopInfo:
        """Wait until the VM stops; return why."""
        await self._stopped.wait()
        assert self.exit is not None
        return self.exit

    # -- the run loop ----------------------------------------------------------------------

    async def run(self) -> StopInfo:
        """Run the VM until it stops; return why (``run_vm`` creates the VM and calls this)."""
        if self._state is not VmState.CREATED:
            raise StateError(self._state.value, "created")
        m = self.machine
        try:
            async with trio.open_nursery() as devices:
                m.start(lambda name, work: devices.start_soon(self._device, name, work))
                await self._loop()
                devices.cancel_scope.cancel()
        except trio.Cancelled:
            m.stop_by_host("cancelled")
            raise
        except ConfigError as e:
            m.stop(StopKind.BAD_INPUT, str(e))
        except Exception as e:
            m.host_error("the VM's run loop failed", e)
        finally:
            self._finish()
        assert self.exit is not None
        return self.exit

    async def _loop(self) -> None:
        m = self.machine
        self._state = VmState.RUNNING
        self.log.info("started", mem_mib=m.mem.size >> 20, kernel=m.kernel and m.kernel.kind)
        while m.stop_info is None:
            if self._pause_requested:
                await self._paused()
                continue
            ex = m.run_slice()
            self._flush_output()
            if m.stop_info is not None:
                break
            if m.console.blocked:
                await self._held_back()
                continue
            if m.reboot_requested:
                self.log.info("reboot")
                m.reboot()
                await trio.lowlevel.checkpoint()  # a guest rebooting in a loop must yield
                continue
            if m.sleeping(ex):
                await self._idle()
            else:
                await trio.lowlevel.checkpoint()

    async def _device(self, name: str, work: AsyncWork) -> None:
        """A device's async work: its failure is this VM's host error, nobody else's."""
        try:
            await work()
        except trio.Cancelled:
            raise
        except Exception as e:
            self.machine.host_error(f"device {name}'s task failed", e)

    def _finish(self) -> None:
        m = self.machine
        self._flush_output()
        info = m.stop_info or StopInfo.make(StopKind.STOPPED, "stopped")
        self.exit = info
        self._state = VmState.STOPPED
        self.console._close()
        self._stopped.set()
        # Info, not warning: the caller (e.g. the CLI) reports the reason once, its own way.
        self.log.info("stopped", kind=info.kind, reason=info.reason, code=info.exit_code)
        if info.detail:
            self.log.error("traceback", detail=info.detail)
        m.close()

    def _flush_output(self) -> None:
        out = self.machine.take_output()
        if not out:
            return
        self.console._append(out)
        if self.console.backlog > BACKLOG_HIGH:
            self.machine.console.set_blocked(True)  # the reader is behind: hold the guest
        if self.config.stop_on_panic:
            window = self._scan_tail + out
            at = window.find(PANIC_MARKER)
            if at >= 0:
                line = window[at:].split(b"\n", 1)[0].decode(errors="replace").strip()
                self.machine.guest_failed(f"guest kernel panic: {line}")
            self._scan_tail = window[-len(PANIC_MARKER) :]

    async def _idle(self) -> None:
        """The guest waits for an interrupt: sleep until one could be pending."""
        m = self.machine
        while not m.wake_pending() and m.stop_info is None and not self._pause_requested:
            self._wake = trio.Event()
            m.console.feed_uart()  # console input waiting: the UART may take it now
            if m.wake_pending():
                break
            deadline = m.next_deadline()
            if deadline is not None and deadline <= 0:
                if m.wake_pending():  # it fell due since the check above: the guest goes on
                    break
                # The timer is due and its interrupt still does not wake the hart (masked in
                # sie): only an event can now, so wait for one rather than spin on a deadline
                # that has passed (a hostile guest's way to burn a host core from wfi).
                deadline = None
            timeout = IDLE_RECHECK_S if deadline is None else min(deadline, IDLE_RECHECK_S)
            with trio.move_on_after(timeout + 1e-5):
                await self._wake.wait()

    async def _held_back(self) -> None:
        """The console's reader is behind: the guest waits until it catches up (or the VM
        is stopped or paused). Guest time goes on, as for a stalled serial line."""
        m = self.machine
        while m.console.blocked and m.stop_info is None and not self._pause_requested:
            self._wake = trio.Event()
            await self._wake.wait()

    async def _paused(self) -> None:
        self._state = VmState.PAUSED
        self.machine.clock.pause()
        self.log.info("paused")
        while self._pause_requested and self.machine.stop_info is None:
            self._wake = trio.Event()
            await self._wake.wait()
        self.machine.clock.resume()
        if self.machine.stop_info is None:
            self._state = VmState.RUNNING
            self.log.info("resumed")


async def run_vm(
    config: VmConfig, *, task_status: trio.TaskStatus[Vm] = trio.TASK_STATUS_IGNORED
) -> StopInfo:
    """Boot ``config`` and run it until it stops; return why.

    With ``vm = await nursery.start(run_vm, config)`` the caller gets the ``Vm`` handle once
    the machine is built (bad configuration raises ``ConfigError`` from ``start``).
    """
    vm = Vm(config)
    task_status.started(vm)
    return await vm.run()


@asynccontextmanager
async def open_vm(config: VmConfig) -> AsyncIterator[Vm]:
    """``async with open_vm(config) as vm:`` runs the VM for the block, then stops it."""
    async with trio.open_nursery() as nursery:
        vm: Vm = await nursery.start(run_vm, config)
        try:
            yield vm
        finally:
            vm.stop("the block using the VM ended")
