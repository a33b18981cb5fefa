"""A virtual machine as a trio task.

The run loop is short on purpose: run a slice, then either yield to trio (so other VMs and the
application run) or, if the guest waits in ``wfi``, sleep until its timer deadline or a wake-up
(console input, an interrupt, pause/stop). A slice blocks the event loop for about a
millisecond; an idle guest costs nothing until its deadline.

A VM never takes its siblings down: a guest fault or a device-model bug ends this VM with a
reason (and a traceback in the log), and ``run_vm`` returns normally.
"""

from __future__ import annotations

import enum
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from hv._console import Console
from hv._errors import ConfigError, HvError, StateError
from hv._log import get_logger
from hv.board import _platform as P
from hv.board._loader import load_file
from hv.board._machine import Machine, MachineConfig, StopInfo, StopKind
from hv.board._platform import DEFAULT_QUANTUM
from hv.engine._vcpu import ExitKind

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

    def machine_config(self) -> MachineConfig:
        kernel = self.kernel if isinstance(self.kernel, bytes) else load_file(self.kernel, "kernel")
        initrd = self.initrd
        if initrd is not None and not isinstance(initrd, bytes):
            initrd = load_file(initrd, "initrd")
        return MachineConfig(
            kernel=kernel,
            mem_size=self.mem_size,
            cmdline=self.cmdline,
            initrd=initrd,
            quantum=self.quantum,
            dtb_out=self.dtb_out,
            count_instructions=self.count_instructions,
            native_exits=self.native_exits,
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
        self.console = Console(self.machine.feed_input)
        self._state = VmState.CREATED
        self._wake = trio.Event()
        self._stopped = trio.Event()
        self._pause_requested = False
        self._scan_tail = b""
        self.exit: StopInfo | None = None
        self.log = log.bind(vm=self.name)
        # Console input must wake a guest sleeping in wfi (its UART interrupt may be enabled).
        feed = self.machine.feed_input

        def feed_and_wake(data: bytes) -> None:
            feed(data)
            self._wake.set()

        self.console._feed = feed_and_wake

    @property
    def state(self) -> VmState:
        return self._state

    @property
    def stats(self) -> dict[str, int]:
        """Counters: slices, exits by kind, interrupts raised, SBI calls by extension."""
        m = self.machine
        out = {k: v for k, v in vars(m.vcpu.stats).items() if isinstance(v, int)}
        for cause, n in m.vcpu.stats.traps_by_cause.items():
            out[f"trap_cause_{cause}"] = n
        for eid, n in m.sbi.calls.items():
            out[f"sbi_{eid:#x}"] = n
        out.update(m.counters)
        return out

    def pause(self) -> None:
        """Stop running the vCPU after the current slice; guest time stands still."""
        if self._state not in (VmState.RUNNING, VmState.PAUSED):
            raise StateError(self._state.value, "running")
        self._pause_requested = True
        self.machine.vcpu.request_stop()
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

    async def _run(self) -> StopInfo:
        m = self.machine
        try:
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
                if m.reboot_requested:
                    self.log.info("reboot")
                    m.reboot()
                    await trio.lowlevel.checkpoint()  # a guest rebooting in a loop must yield
                    continue
                if ex.kind is ExitKind.WFI or m.suspended:
                    await self._idle()
                else:
                    await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            m.stop_by_host("cancelled")
            raise
        except Exception as e:
            if m.stop_info is None:
                detail = traceback.format_exc()
                if isinstance(e, ConfigError):
                    m.stop_info = StopInfo(StopKind.HOST_ERROR, str(e), 4)
                elif isinstance(e, HvError):
                    m.stop_info = StopInfo(StopKind.HOST_ERROR, f"host error: {e}", 3, detail)
                else:
                    m.stop_info = StopInfo(
                        StopKind.HOST_ERROR, f"host error: {type(e).__name__}: {e}", 3, detail
                    )
        finally:
            self._finish()
        assert self.exit is not None
        return self.exit

    def _finish(self) -> None:
        m = self.machine
        self._flush_output()
        info = m.stop_info or StopInfo(StopKind.STOPPED, "stopped", 130)
        self.exit = info
        self._state = VmState.STOPPED
        self.console._close()
        self._stopped.set()
        # Info, not warning: the caller (e.g. the CLI) reports the reason once, its own way.
        self.log.info("stopped", kind=info.kind, reason=info.reason, code=info.exit_code)
        if info.detail:
            self.log.error("traceback", detail=info.detail)
        m.vcpu.close()

    def _flush_output(self) -> None:
        out = self.machine.take_output()
        if not out:
            return
        self.console._append(out)
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
        m.suspended = False
        while not m.wake_pending() and m.stop_info is None and not self._pause_requested:
            self._wake = trio.Event()
            if m.input:  # console input arrived: the UART may take it now
                m.feed_input(b"")
                if m.wake_pending():
                    break
            deadline = m.next_deadline()
            timeout = IDLE_RECHECK_S if deadline is None else min(deadline, IDLE_RECHECK_S)
            with trio.move_on_after(timeout + 1e-5 if timeout > 0 else 0):
                await self._wake.wait()
            if timeout <= 0:
                await trio.lowlevel.checkpoint()

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
    return await vm._run()


@asynccontextmanager
async def open_vm(config: VmConfig) -> AsyncIterator[Vm]:
    """``async with open_vm(config) as vm:`` runs the VM for the block, then stops it."""
    async with trio.open_nursery() as nursery:
        vm: Vm = await nursery.start(run_vm, config)
        try:
            yield vm
        finally:
            vm.stop("the block using the VM ended")
