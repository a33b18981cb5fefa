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

import contextlib
import enum
import functools
import heapq
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import trio

from hv._console import BACKLOG_HIGH, Console
from hv._cores import Cores
from hv._disk import Disk, freeze_disks, open_frozen_disks, sync_disks
from hv._errors import ConfigError, SnapshotError, StateError
from hv._exec import ExecResult, Process, agent_of
from hv._log import get_logger
from hv._nic import Nic, default_mac, nic_cmdline
from hv._snapshot import (
    Restoring,
    SnapshotInfo,
    disk_entries,
    disk_prefix,
    restore_fields,
    write_vm,
)
from hv._status import StopInfo, StopKind
from hv._timeline import INF, Run, Ticket, Timeline
from hv._values import host_threads
from hv.board import Machine, MachineConfig, check_smp, is_linux_image, load_file
from hv.engine import Exit, ExitKind
from hv.hw import DEFAULT_MIPS, DEFAULT_QUANTUM, AsyncWork, Device, TimeSource, VirtualClock
from hv.hw import _platform as P

if TYPE_CHECKING:
    from hv.virtio import VirtioVsock

log = get_logger("hv.vm")

# Longest a waiting guest sleeps without re-checking (guards against a missed wake-up).
IDLE_RECHECK_S = 1.0
# What a Linux guest prints when it panics: it then spins forever, so the VM stops on it.
PANIC_MARKER = b"Kernel panic - not syncing"
# Virtual time: the longest a VM runs before the timeline yields to the event loop (host time:
# it changes when other tasks run, never what the guest sees).
VT_YIELD_S = 0.005
# Real time on a lab's cores (hv._cores): host time a VM's part of a batch may take. Longer
# batches cost less per slice but keep the event loop (frames, timers, other VMs' wake-ups)
# waiting as long (bench/parallel.py --clock real and bench/vtime.py ping: 1 ms gave 1.69x
# on two cores and 56 ms beside ten busy guests; 2 ms 1.85x and 69 ms; 3 ms 1.89x and 80 ms).
CORES_BATCH_S = 0.002
# Virtual time: what may wait for a VM's time to reach it (frames on their way in); beyond it
# they are dropped and counted (vt_inbox_dropped), as a NIC's backlog does.
VT_INBOX_MAX = 4096
# The guest's vsock CID: each VM is a machine of its own (the host is CID 2 for every one),
# so all of them may be 3, as Firecracker's and QEMU's single guests usually are.
GUEST_CID = 3
# How long a clone's guest may take to take its new identity (a DHCP lease included).
CLONE_ANNOUNCE_S = 30.0


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
    # "real" (guest time is the host's) or "virtual" (from the instructions retired at
    # ``mips`` million a second; docs/TIME.md). A lab hands its VMs its ``timeline``; a VM
    # on its own makes one.
    clock: Literal["real", "virtual"] = "real"
    mips: int = DEFAULT_MIPS
    timeline: Timeline | None = field(default=None, compare=False)
    # Real time: the host threads the VM's slices run on, shared with the other VMs of its
    # lab (hv._cores); None: the VM runs its slices itself, on the trio thread.
    cores: Cores | None = field(default=None, compare=False)
    # A virtio-vsock device (``Vm.vsock``; the guest is CID 3: every VM is a machine of its
    # own, so all may be) and a virtio-rng, after the disks. None: on for a Linux Image
    # kernel while virtio slots are free, off otherwise (firmware guests keep their slots).
    vsock: bool | None = None
    rng: bool | None = None
    # Virtual time: the lab's seed; the VM's generators (virtio-rng) derive from it and the
    # VM's name, so a run repeats byte for byte (real time: os.urandom).
    seed: int | None = None
    # Harts (1..8, as QEMU's -smp): hart 0 boots, the others wait for SBI HSM hart_start.
    smp: int = 1
    # Host threads its harts run on at once, on real time (None: every core; virtual time:
    # in turn, so a run repeats; docs/SCALING.md).
    jobs: int | None = None
    # A snapshot file to start from instead of booting (``hv.restore`` makes the config).
    restore: Path | None = None

    def __post_init__(self) -> None:
        check_smp(self.smp)
        if self.jobs is not None:
            host_threads(self.jobs, "jobs")

    def machine_config(self) -> MachineConfig:
        kernel = self.kernel if isinstance(self.kernel, bytes) else load_file(self.kernel, "kernel")
        initrd = self.initrd
        if initrd is not None and not isinstance(initrd, bytes):
            initrd = load_file(initrd, "initrd")
        devices = (
            self.devices
            + tuple(nic.device(self.name, i) for i, nic in enumerate(self.nics))
            + tuple(disk.device(self.name, i) for i, disk in enumerate(self.disks))
        )
        linux = is_linux_image(kernel)
        return MachineConfig(
            kernel=kernel,
            mem_size=self.mem_size,
            cmdline=" ".join(x for x in (self.cmdline, nic_cmdline(self.nics)) if x),
            initrd=initrd,
            quantum=self.quantum,
            dtb_out=self.dtb_out,
            count_instructions=self.count_instructions,
            native_exits=self.native_exits,
            devices=devices + self._service_devices(linux, len(devices)),
            time_source=self.time_source,
            clock=self.clock,
            mips=self.mips,
            smp=self.smp,
            jobs=self.jobs,
        )

    def _service_devices(self, linux: bool, used: int) -> tuple[Device, ...]:
        """The vsock and rng devices this VM gets (after its other devices)."""
        from hv.virtio import VirtioMmio, VirtioRng, VirtioVsock

        out: list[Device] = []
        for key, want, make in (
            ("vsock", self.vsock, lambda: VirtioVsock(GUEST_CID)),
            ("rng", self.rng, lambda: VirtioRng(seed=self._rng_seed())),
        ):
            if want is False or (want is None and not linux):
                continue
            if used + len(out) >= P.VIRTIO_SLOTS:
                if want is None:
                    continue  # automatic: only while slots are free
                raise ConfigError(
                    f"{key}=True: all {P.VIRTIO_SLOTS} virtio slots are taken by devices, "
                    "NICs and disks; drop one or set it to False"
                )
            out.append(VirtioMmio(f"{self.name}.{key}", make()))
        return tuple(out)

    def _rng_seed(self) -> str | None:
        """Virtual time: the rng's seed (the lab's seed and the VM's name); real time: None
        (os.urandom)."""
        if self.clock != "virtual":
            return None
        return f"{'' if self.seed is None else self.seed}/{self.name}/virtio-rng"


class Vm:
    """Handle on a running VM: its state, exit, console, and pause/resume/stop.

    Create it with ``await nursery.start(run_vm, config)`` or ``async with open_vm(config)``.
    """

    def __init__(self, config: VmConfig) -> None:
        if config.clock == "virtual" and config.nics and config.timeline is None:
            raise ConfigError(
                "a VM on virtual time with NICs runs in a lab whose switches share its clock: "
                'use a lab with clock = "virtual" (hv up, open_lab), or clock="real" here'
            )
        self.config = config
        self.name = config.name
        self._restoring: Restoring | None = None
        if config.restore is None:
            self.machine = Machine(config.machine_config())
            # Load the kernel now, so a file that is not a kernel raises ConfigError from the
            # constructor (and so from nursery.start), not later from the running task.
            self.machine.boot()
        else:
            self._restoring = r = Restoring(Path(config.restore))
            try:
                mc = config.machine_config()
                self.machine = Machine(mc, ram=r.ram(mc.mem_size))
                r.check(self.machine)
            except BaseException:
                r.file.close()
                raise
        self.console = Console(self._console_input)
        self.console.on_drained = self._console_drained
        self._state = VmState.CREATED
        self._wake = trio.Event()
        self.machine.on_wake = self._wake_up
        self._stopped = trio.Event()
        self._pause_requested = False
        self._paused_evt = trio.Event()  # set while paused (real time)
        self._scan_tail = b""
        self.exit: StopInfo | None = None
        self._agent: object = None  # hv._exec.VmAgent, made on first use
        self.log = log.bind(vm=self.name)
        # Virtual time (hv._timeline): the VM is a member of a timeline that drives it.
        self._timeline: Timeline | None = None
        if config.clock == "virtual":
            self._timeline = config.timeline or Timeline()
        self._own_timeline = config.clock == "virtual" and config.timeline is None
        self._vt_sleeping = False
        self._vt_input = False
        self._host_input: list[Callable[[], None]] = []  # devices' host input, due at once
        self._inbox: list[tuple[int, int, Callable[[], None]]] = []
        self._tickets: list[tuple[int, int, Ticket]] = []
        self._vt_seq = itertools.count()
        self._member = _Member(self)
        if self._timeline is not None:  # (an SMP guest's harts stop there too)
            self.machine.horizon = functools.partial(self._timeline.horizon_ps, self._member)
        self._vt_start = trio.Event()  # its task runs (until then the others wait for it)
        if self._timeline is not None:
            # Joined here, in the order the VMs are made (a lab's order), not when each
            # task gets to run: the order breaks ties between VMs, so it must not vary.
            self._timeline.add_member(self._member)

    def _wake_up(self) -> None:
        self._wake.set()
        if self._timeline is not None:
            self._timeline.poke()

    def _console_drained(self) -> None:
        if self.machine.console.blocked:
            self.machine.console.set_blocked(False)
            self._wake.set()

    def _console_input(self, data: bytes) -> None:
        # Input must wake a guest sleeping in wfi (its UART interrupt may be enabled).
        self.machine.feed_input(data)
        self._vt_input = True
        self._wake_up()

    @property
    def state(self) -> VmState:
        return self._state

    @property
    def vsock(self) -> VirtioVsock | None:
        """The VM's virtio-vsock device (``connect``, ``listen``), or None if it has none."""
        from hv.virtio import VirtioMmio
        from hv.virtio import VirtioVsock as Vsock

        for dev in self.machine.slots.values():
            if isinstance(dev, VirtioMmio) and isinstance(dev.backend, Vsock):
                return dev.backend
        return None

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
        self._wake_up()

    def resume(self) -> None:
        if self._state not in (VmState.RUNNING, VmState.PAUSED):
            raise StateError(self._state.value, "paused or running")
        self._pause_requested = False
        self._vt_input = True  # in virtual time it goes on from the lab's time
        self._wake_up()

    def stop(self, reason: str = "stopped by the host") -> None:
        """Ask the VM to stop; it does within one slice. ``await vm.wait()`` for the end."""
        if self._state is VmState.STOPPED:
            return
        self.machine.stop_by_host(reason)
        self._wake_up()

    async def wait(self) -> StopInfo:
        """Wait until the VM stops; return why."""
        await self._stopped.wait()
        assert self.exit is not None
        return self.exit

    # -- snapshots (hv._snapshot) ----------------------------------------------------------

    async def snapshot(self, path: str | os.PathLike[str], *, durable: bool = True) -> SnapshotInfo:
        """Write the VM's snapshot to ``path`` (replaced atomically): ``hv.restore(path)``
        gives a VM that goes on from this instant. The guest is held between two slices for
        the time it takes (on virtual time, its timeline between two rounds: the lab's time
        does not move). ``durable``: synced to disk before it is named."""
        if self._state not in (VmState.RUNNING, VmState.PAUSED):
            raise StateError(self._state.value, "running or paused")
        path = Path(path)
        if self._timeline is not None:
            async with self._timeline.held():
                return await self._snapshot_now(path, durable)
        was_paused = self._pause_requested
        self.pause()
        try:
            await self._wait_paused()
            return await self._snapshot_now(path, durable)
        finally:
            if not was_paused and self.machine.stop_info is None:
                self.resume()

    async def _wait_paused(self) -> None:
        """After ``pause``: until the VM is (real time: between slices, clock paused)."""
        while not self._paused_evt.is_set() and self.machine.stop_info is None:
            with trio.move_on_after(IDLE_RECHECK_S):
                await self._paused_evt.wait()

    async def _snapshot_now(self, path: Path, durable: bool) -> SnapshotInfo:
        m = self.machine
        if m.stop_info is not None:
            raise StateError("stopped", "running or paused")
        held = time.monotonic()
        for dev in m.devices:
            await dev.settle()
        for _, _, ticket in list(self._tickets):
            await ticket.event.wait()
        self._flush_output()
        path.parent.mkdir(parents=True, exist_ok=True)
        disks = await freeze_disks(self.config.disks, path.parent, disk_prefix(path))
        size = write_vm(self, path, disks=disks, durable=durable)
        paused = time.monotonic() - held
        if disks and durable:
            await sync_disks(path.parent, disks)
        self.log.info("snapshot", path=str(path), mib=size >> 20, paused_ms=round(paused * 1e3))
        return SnapshotInfo(path, size, paused)

    async def announce_clone(
        self, addresses: Sequence[str] = (), timeout: float = CLONE_ANNOUNCE_S
    ) -> ExecResult:
        """Tell the guest it is a clone (restored under this VM's name from another VM's
        snapshot, with its own NICs), as Firecracker's VMGenID tells a restored guest: runs
        ``cloned NAME eth0=MAC ... eth0=ADDR ...`` in it through its agent. hv's Linux image
        answers with its ``cloned`` applet: each NIC takes its new MAC and drops its old
        addresses, the hostname becomes NAME, ``/etc/hv/cloned`` runs if the image has one
        (with the same arguments: an image's own reaction), then each NIC takes its address
        (``addresses[i]``: ``"dhcp"``, ``"10.0.0.5/24"``, ``"10.0.0.5/24,10.0.0.1"`` with a
        gateway, or ``""`` for none; docs/SNAPSHOTS.md has the applet's steps). The guest's
        answer; ``CommandFailed`` if a step failed, ``ExecError`` if it has no agent or it
        took longer than ``timeout`` seconds of host time."""
        args = [self.name]
        for i, nic in enumerate(self.config.nics):
            mac = nic.mac if isinstance(nic.mac, bytes) else default_mac(self.name, i)
            args.append(f"eth{i}={mac.hex(':')}")
        for i, addr in enumerate(addresses):
            if addr:
                args.append(f"eth{i}={addr}")
        return await self.exec("cloned", *args, check=True, timeout=timeout)

    # -- commands and files in the guest (hv._exec: its agent, over virtio-vsock) -----------

    async def exec(
        self,
        *argv: str | bytes,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        check: bool = False,
    ) -> ExecResult:
        """Run ``argv`` in the guest (a Linux guest of hv's image: its agent, over
        virtio-vsock) and wait for its end: ``ExecResult(returncode, stdout, stderr)``.
        The first call waits for the agent to come up (the guest boots). ``ExecError``
        (``hv._exec``) if the command cannot start (``errno``) or the agent is missing or
        gone; ``ExecTimeout`` after ``timeout`` seconds (the command is killed);
        ``CommandFailed`` with ``check=True`` for a status other than 0."""
        return await agent_of(self).exec(
            *argv, stdin=stdin, env=env, cwd=cwd, timeout=timeout, check=check
        )

    def open_exec(
        self,
        argv: Sequence[str | bytes],
        *,
        stdin: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tty: bool = False,
        rows: int = 0,
        cols: int = 0,
    ) -> contextlib.AbstractAsyncContextManager[Process]:
        """``async with vm.open_exec(argv) as proc:`` the streaming form of ``exec``:
        ``proc.send_input``, ``close_input``, ``resize``, ``signal``, and ``async for event
        in proc.events()`` (``Output(fd, data)``, then ``Exited(returncode)``). Leaving the
        block ends a command still running."""
        return agent_of(self).open_exec(
            argv, stdin=stdin, env=env, cwd=cwd, tty=tty, rows=rows, cols=cols
        )

    async def copy_in(self, local: str | os.PathLike[str], guest_path: str) -> None:
        """Copy a local file into the guest (``guest_path`` ending in ``/``: into that folder),
        with its mode bits."""
        await agent_of(self).copy_in(local, guest_path)

    async def copy_out(self, guest_path: str, local: str | os.PathLike[str]) -> None:
        """Copy a file out of the guest to ``local`` (a folder: into it), with its mode bits."""
        await agent_of(self).copy_out(guest_path, local)

    # -- the run loop ----------------------------------------------------------------------

    async def run(self) -> StopInfo:
        """Run the VM until it stops; return why (``run_vm`` creates the VM and calls this)."""
        if self._state is not VmState.CREATED:
            raise StateError(self._state.value, "created")
        m = self.machine
        try:
            async with trio.open_nursery() as devices:
                m.start(
                    lambda name, work: devices.start_soon(self._device, name, work),
                    _VmTime(self) if self._timeline is not None else None,
                )
                if self._restoring is not None:
                    restoring, self._restoring = self._restoring, None
                    try:
                        restoring.load(self)
                    except SnapshotError as e:  # (the VM stops at once: it never ran)
                        m.stop(StopKind.BAD_INPUT, f"restore refused: {e}")
                    else:
                        self.log.info("restored", snapshot=str(restoring.path))
                if self._timeline is None:
                    await self._loop()
                else:
                    if self._own_timeline:
                        devices.start_soon(self._timeline.run)
                    await self._loop_virtual(self._timeline)
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
        cores = self.config.cores
        if cores is not None:
            cores.enter()
        try:
            while m.stop_info is None:
                if self._pause_requested:
                    await self._off_cores(self._paused)
                    continue
                ex = m.run_slice() if cores is None else await cores.slice(self._rt_slices)
                self._flush_output()
                if m.stop_info is not None:
                    break
                if m.console.blocked:
                    await self._off_cores(self._held_back)
                    continue
                if m.reboot_requested:
                    self.log.info("reboot")
                    m.reboot()
                    await trio.lowlevel.checkpoint()  # a guest rebooting in a loop must yield
                    continue
                if m.sleeping(ex):
                    await self._off_cores(self._idle)
                elif cores is None:
                    await trio.lowlevel.checkpoint()
        finally:
            if cores is not None:
                cores.leave()

    def _rt_slices(self) -> Exit:
        """Real time on a lab's cores: slices one after another, for up to CORES_BATCH_S of
        host time or until the VM's task has something to do (a batch of the pool has a cost
        of its own, a thread's wake-up; on a loaded host a millisecond or more)."""
        m = self.machine
        until = time.monotonic() + CORES_BATCH_S
        while True:
            ex = m.run_slice()
            self._flush_output()
            if (
                m.stop_info is not None
                or m.console.blocked
                or m.reboot_requested
                or m.sleeping(ex)
                or self._pause_requested
                or time.monotonic() >= until
            ):
                return ex

    async def _off_cores(self, wait: Callable[[], Awaitable[None]]) -> None:
        """Wait without holding up the batches of the other VMs on the lab's cores."""
        cores = self.config.cores
        if cores is None:
            await wait()
            return
        cores.leave()
        try:
            await wait()
        finally:
            cores.enter()

    # -- virtual time: the timeline drives the machine (hv._timeline) ------------------------

    async def _loop_virtual(self, timeline: Timeline) -> None:
        """The VM's own task in virtual time: the timeline runs the guest; this task keeps
        the VM's state (paused, stopped) and ends when the machine stops."""
        m = self.machine
        self._state = VmState.RUNNING
        self.log.info("started", mem_mib=m.mem.size >> 20, kernel=m.kernel and m.kernel.kind)
        self._vt_start.set()
        timeline.poke()
        try:
            while m.stop_info is None:
                self._wake = trio.Event()
                if self._pause_requested:
                    self._state = VmState.PAUSED
                elif self._state is VmState.PAUSED:
                    self._state = VmState.RUNNING
                await self._wake.wait()
        finally:
            timeline.remove_member(self._member)

    def _vt_ps(self) -> int:
        clock = self.machine.clock
        assert isinstance(clock, VirtualClock)
        return clock.ps

    def _vt_next_ps(self) -> float:
        m = self.machine
        if m.stop_info is not None or self._pause_requested or self._state is VmState.STOPPED:
            return INF
        clock = m.clock
        assert isinstance(clock, VirtualClock)
        now = clock.ps
        if not self._vt_sleeping or self._vt_input:
            return now
        return max(now, self._vt_wake_ps(now))

    def _vt_wake_ps(self, now: int) -> float:
        """When the sleeping guest could next wake: its timer (if still ahead: a timer that
        is due but masked wakes nothing), its next frame, its next completion."""
        best: float = INF
        t = self.machine.timer_ps()
        if t is not None and t > now:
            best = t
        if self._inbox and self._inbox[0][0] < best:
            best = self._inbox[0][0]
        if self._tickets and self._tickets[0][0] < best:
            best = self._tickets[0][0]
        return best

    def _vt_blocker(self) -> trio.Event | None:
        if not self._vt_start.is_set():
            return self._vt_start
        if self.machine.console.blocked:
            self._wake = trio.Event()
            return self._wake
        if self._tickets:
            return self._tickets[0][2].event
        return None

    def _vt_due(self, now: int) -> bool:
        """Hand the guest what is due by ``now``: frames, completions. False if a completion
        is due whose host work is not done (the guest must wait for it)."""
        inbox = self._inbox
        while inbox and inbox[0][0] <= now:
            heapq.heappop(inbox)[2]()
        tickets = self._tickets
        while tickets and tickets[0][0] <= now:
            ticket = tickets[0][2]
            if not ticket.done:
                return False
            heapq.heappop(tickets)
            assert ticket.fn is not None
            ticket.fn()
        return True

    def _vt_advance(self, timeline: Timeline, horizon_ps: int) -> Run:
        """Run the guest up to ``horizon_ps`` on the lab's timeline (the timeline may lower
        it when the guest sends something), or until it sleeps past it, or must wait."""
        m = self.machine
        clock = m.clock
        assert isinstance(clock, VirtualClock)
        quantum = self.config.quantum
        wall_end = time.monotonic() + VT_YIELD_S
        if not self._vt_start.is_set():
            return Run.WAITING  # its task has not started yet: wait for it, at its time
        while True:
            if m.stop_info is not None:
                self._wake.set()
                return Run.STOPPED
            if self._pause_requested:
                self._wake.set()
                return Run.PAUSED
            if m.console.blocked:
                return Run.HELD
            if m.slice_paused:  # the rest of a slice paused for host time, nothing between
                ex = m.run_slice()
                if ex.kind is ExitKind.PAUSED:
                    return Run.YIELD
                if self._vt_after_slice(ex):
                    return Run.SETTLE
                continue
            if self._vt_input:
                # Input, a resume. A guest that runs takes it at its own time (its peers did
                # not run past that plus the lookahead). A sleeping one is behind the lab: its
                # peers may have run up to its next wake-up plus the lookahead, so it takes
                # the input there (as if it came when the guest woke anyway), or at the lab's
                # newest time if that is sooner or nothing is due; so nothing it sends lands
                # in a peer's past.
                self._vt_input = False
                if self._vt_sleeping:
                    wake = self._vt_wake_ps(clock.ps)
                    clock.skip_to(int(min(wake, timeline.frontier_ps())))
                self._vt_sleeping = False
                pending, self._host_input = self._host_input, []
                for fn in pending:  # at this guest time, between slices
                    fn()
            now = clock.ps
            if not self._vt_due(now):
                return Run.WAITING
            horizon = timeline.horizon_ps(self._member)
            if now >= horizon:
                return Run.RAN
            if self._vt_sleeping:
                m.console.feed_uart()
                if m.wake_pending():
                    self._vt_sleeping = False
                else:
                    nxt = self._vt_wake_ps(now)
                    if nxt >= horizon:
                        return Run.SLEEPING
                    clock.skip_to(int(nxt))
                    continue
            target = min(horizon, self._vt_wake_ps(now))
            budget = min(quantum, clock.insns_until(int(target)))
            ex = m.run_slice(budget)
            if ex.kind is ExitKind.PAUSED:
                return Run.YIELD  # host time: let the event loop run, then go on with it
            if self._vt_after_slice(ex):
                return Run.SETTLE  # a script waits on this console: let it react now
            if time.monotonic() > wall_end:
                return Run.YIELD  # let the event loop run; the timeline comes back to us

    def _vt_after_slice(self, ex: Exit) -> bool:
        """A slice's end in virtual time; True if it printed what a script may wait on."""
        m = self.machine
        printed = self._flush_output()
        if m.stop_info is not None or m.console.blocked:
            return False
        if m.reboot_requested:
            self.log.info("reboot")
            m.reboot()
            self._vt_sleeping = False
            return False
        self._vt_sleeping = m.sleeping(ex)
        return printed and bool(self.console.matchers)

    def _vt_receive(self, fn: Callable[[], None], bounded: bool = True) -> None:
        assert self._timeline is not None
        if bounded and len(self._inbox) >= VT_INBOX_MAX:
            # A paused VM, or one flooded faster than it runs: bounded, like the NIC's backlog.
            self.machine.counters["vt_inbox_dropped"] += 1
            return
        at = self._timeline.arrival_ps()
        heapq.heappush(self._inbox, (at, next(self._vt_seq), fn))
        self._timeline.note_arrival(at)
        self._timeline.poke()

    def _vt_host_input(self, fn: Callable[[], None]) -> None:
        # A device's host input (bounded by its devices: each keeps one call pending at most).
        self._host_input.append(fn)
        self._vt_input = True
        self._wake_up()

    def _vt_expect(self, due_ps: int) -> Ticket:
        ticket = Ticket(due_ps)
        heapq.heappush(self._tickets, (due_ps, next(self._vt_seq), ticket))
        return ticket

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

    def _flush_output(self) -> bool:
        out = self.machine.take_output()
        if not out:
            return False
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
        return True

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

    async def _paused(self) -> None:  # (real time)
        self._state = VmState.PAUSED
        self.machine.clock.pause()
        self.log.info("paused")
        self._paused_evt.set()
        while self._pause_requested and self.machine.stop_info is None:
            self._wake = trio.Event()
            await self._wake.wait()
        self._paused_evt = trio.Event()
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


def restore(path: str | os.PathLike[str], **overrides: Any) -> VmConfig:
    """The ``VmConfig`` of a VM restored from the snapshot file at ``path`` (``Vm.snapshot``
    wrote it): run it as any other (``open_vm``, ``run_vm``); it goes on from the instant of
    the snapshot. ``overrides`` set other fields: ``name``, and the ``nics`` and ``disks``
    the VM had (the same number and kinds: a snapshot holds what the devices were doing,
    not what they were plugged into)."""
    path = Path(path)
    fields = restore_fields(path)
    fields.update(overrides)
    if disk_entries(path) and "disks" not in overrides:
        raise ConfigError(
            f"{path}: the VM had disks: open them with `await hv.restore_disks(PATH, WORK_DIR)` "
            "and pass them as disks="
        )
    return VmConfig(**fields)


async def restore_disks(
    path: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    backing_dirs: Sequence[str | os.PathLike[str]] = (),
) -> list[Disk]:
    """The disks of the VM whose snapshot is at ``path``, as they were at the snapshot
    (files beside it), each over a new private overlay in ``work_dir`` (yours to remove
    once the VM is done): ``hv.restore(path, disks=...)``. Base images outside the
    snapshot's folder must be in ``backing_dirs`` and unchanged since."""
    path = Path(path)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    return await open_frozen_disks(
        disk_entries(path), path.parent, work_dir, backing_dirs, owner=f"{path.name}"
    )


class _VmTime:
    """A virtual-time VM's clock and timeline, as its devices see them (hv.hw.DeviceTime)."""

    def __init__(self, vm: Vm) -> None:
        assert vm._timeline is not None and isinstance(vm.machine.clock, VirtualClock)
        self._vm = vm
        self._clock = vm.machine.clock
        self._timeline = vm._timeline

    def now_ps(self) -> int:
        return self._clock.now_ps()

    def send(self, fn: Callable[[], None]) -> None:
        self._timeline.post(self._vm._member, self._clock.now_ps(), fn)

    def receive(self, fn: Callable[[], None], *, bounded: bool = True) -> None:
        self._vm._vt_receive(fn, bounded)

    def expect(self, due_ps: int) -> Ticket:
        return self._vm._vt_expect(due_ps)

    def host_input(self, fn: Callable[[], None]) -> None:
        self._vm._vt_host_input(fn)


class _Member:
    """The VM as its timeline drives it (hv._timeline.Member)."""

    def __init__(self, vm: Vm) -> None:
        self.name = vm.name
        self.vt_ps = vm._vt_ps
        self.vt_next_ps = vm._vt_next_ps
        self.vt_advance = vm._vt_advance
        self.vt_blocker = vm._vt_blocker
