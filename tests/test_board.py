"""The board's seams: devices from the config, their async work, wake-ups, DMA, blame.

Each test puts a small device of its own (the device protocol, hv.hw._device) on the
board and runs a real guest against it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import trio
import trio.testing
from conftest import FINISHER, raw_binary
from helpers import wait_until
from rvasm import SRET, WFI, addi, auipc, bne, csrs, csrw, jal, li32, lui, lw, sw

import hv
from hv import GuestError, StopKind, Vm, VmConfig, run_vm
from hv.hw._device import Device

SLOT0 = 0x1000_1000
PLIC = 0x0C00_0000
T0, T1, T2, T3 = 5, 6, 7, 28
CSR_SSTATUS, CSR_SIE, CSR_STVEC = 0x100, 0x104, 0x105


class CopyDevice(Device):
    """The dma guest's copy device: SRC, DST, LEN, GO (see hv/guests/dma/main.c)."""

    def __init__(self, name: str = "dma") -> None:
        super().__init__(name)
        self.reset()

    def reset(self) -> None:
        self.regs = {0x00: 0, 0x04: 0, 0x08: 0}

    def mmio_read(self, offset: int, size: int) -> int:
        if offset not in self.regs:
            raise GuestError(f"no register at {offset:#x}")
        return self.regs[offset]

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0x0C:
            src, dst, n = self.regs[0x00], self.regs[0x04], self.regs[0x08]
            mem = self.ctx.memory
            mem.write(dst, mem.read(src, n))  # a host write over the guest's code
            self.counters["copies"] += 1
        elif offset in self.regs:
            self.regs[offset] = value
        else:
            raise GuestError(f"no register at {offset:#x}")


class Doorbell(Device):
    """Raises its IRQ from a task of its own; the guest's handler acknowledges by a write."""

    def __init__(self, rings: int, guest_sleeps: bool) -> None:
        super().__init__("bell")
        self.rings = rings
        self.guest_sleeps = guest_sleeps
        self.latency: list[float] = []
        self._raised = 0.0
        self._acked = trio.Event()

    def attach(self, ctx: hv.hw._device.DeviceContext) -> None:  # type: ignore[name-defined]
        super().attach(ctx)
        ctx.spawn(self._ring)

    async def _ring(self) -> None:
        for _ in range(self.rings):
            if self.guest_sleeps:  # ring once the VM's task waits: the guest is in wfi
                await trio.testing.wait_all_tasks_blocked()
            else:  # a busy guest never waits: any moment will do; 10 ms apart
                await trio.sleep(0.01)
            self._acked = trio.Event()
            self._raised = time.perf_counter()
            self.ctx.irq(True)
            await self._acked.wait()

    def reset(self) -> None:
        pass

    def mmio_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.latency.append(time.perf_counter() - self._raised)
        self.ctx.irq(False)
        self._acked.set()


def irq_waiter_kernel(busy: bool = False) -> bytes:
    """Enables slot 0's IRQ (PLIC source 1) for S-mode, then sleeps in wfi forever (or, busy,
    spins); its handler claims the interrupt, writes to the device, completes it, returns."""
    setup = [
        *li32(T1, PLIC + 4),  # priority of source 1
        addi(T2, 0, 1),
        sw(T2, T1, 0),
        *li32(T1, PLIC + 0x2080),  # enable bits of context 1 (hart 0, S-mode)
        addi(T2, 0, 2),
        sw(T2, T1, 0),
        *li32(T1, PLIC + 0x20_1000),  # threshold of context 1
        sw(0, T1, 0),
        lui(T1, 0),
        addi(T1, 0, 0x200),
        csrs(CSR_SIE, T1),  # SEIE
        addi(T1, 0, 2),
        csrs(CSR_SSTATUS, T1),  # SIE
        *([addi(0, 0, 0), jal(0, -4)] if busy else [WFI, jal(0, -4)]),
    ]
    handler = [
        *li32(T1, PLIC + 0x20_1004),  # claim/complete of context 1
        lw(T2, T1, 0),
        *li32(T3, SLOT0),
        sw(T2, T3, 0),
        sw(T2, T1, 0),
        SRET,
    ]
    prologue_len = 3  # auipc, addi, csrw
    offset = 4 * (prologue_len + len(setup))
    return raw_binary([auipc(T0, 0), addi(T0, T0, offset), csrw(CSR_STVEC, T0), *setup, *handler])


async def run_to_end(config: VmConfig, timeout: float = 20) -> tuple[Vm, hv.StopInfo]:
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            vm: Vm = await nursery.start(run_vm, config)
            info = await vm.wait()
    return vm, info


async def test_a_device_in_another_task_wakes_a_wfi_guest_at_once() -> None:
    bell = Doorbell(rings=20, guest_sleeps=True)
    async with trio.open_nursery() as nursery:
        vm: Vm = await nursery.start(run_vm, VmConfig(kernel=irq_waiter_kernel(), devices=(bell,)))
        await wait_until(lambda: len(bell.latency) == bell.rings, "every ring answered")
        vm.stop()
    assert vm.stats["wfi"] >= bell.rings
    median = statistics.median(bell.latency)
    assert median < 1e-3, f"IRQ to handler: median {median * 1e3:.2f} ms ({bell.latency})"


async def test_a_busy_guest_takes_a_device_interrupt_within_a_quantum() -> None:
    bell = Doorbell(rings=10, guest_sleeps=False)
    cfg = VmConfig(kernel=irq_waiter_kernel(busy=True), devices=(bell,))
    async with trio.open_nursery() as nursery:
        vm: Vm = await nursery.start(run_vm, cfg)
        await wait_until(lambda: len(bell.latency) == bell.rings, "every ring answered")
        vm.stop()
    assert vm.stats["wfi"] == 0
    # A quantum of 2 M instructions is about a millisecond here; allow for a noisy machine.
    assert max(bell.latency) < 0.02, bell.latency


async def test_guest_time_comes_from_an_injected_source(guest_elfs: dict[str, Path]) -> None:
    """A time source running 50x faster than the host's: the guest's 4 x 100 ms of sleep
    (timed by its own rdtime) pass in a few real milliseconds."""
    start = time.monotonic_ns()

    def fast() -> int:
        return start + (time.monotonic_ns() - start) * 50

    cfg = VmConfig(kernel=guest_elfs["sleep"], cmdline="ms=100 count=4", time_source=fast)
    t0 = time.perf_counter()
    vm, info = await run_to_end(cfg)
    real = time.perf_counter() - t0
    assert info.exit_code == 0, info
    out = vm.console.transcript.decode()
    assert "sleep: done" in out
    assert real < 0.4, f"{real:.3f} s of real time for 400 ms of guest time at 50x"
    assert vm.stats["rdtime_native"] == 0 and vm.stats["rdtime_emulated"] > 0


class Quiet(Device):
    """A device with no registers: only its async work matters."""

    def reset(self) -> None:
        pass

    def mmio_read(self, offset: int, size: int) -> int:
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        pass


class FailingWork(Quiet):
    def __init__(self) -> None:
        super().__init__("flaky")

    def attach(self, ctx: hv.hw._device.DeviceContext) -> None:  # type: ignore[name-defined]
        super().attach(ctx)

        async def work() -> None:
            await trio.sleep(0.05)  # fails a while after the start; nothing assumed by then
            raise RuntimeError("simulated device backend failure")

        ctx.spawn(work)


async def test_a_failing_device_task_stops_only_its_own_vm(guest_elfs: dict[str, Path]) -> None:
    sleeper = guest_elfs["sleep"]
    results: dict[str, hv.StopInfo] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            vms = []
            for i in range(3):
                devices = (FailingWork(),) if i == 1 else ()
                cfg = VmConfig(
                    kernel=sleeper, cmdline="ms=40 count=4", name=f"vm{i}", devices=devices
                )
                vms.append(await nursery.start(run_vm, cfg))
            for vm in vms:
                results[vm.name] = await vm.wait()
    bad = results["vm1"]
    assert bad.kind is StopKind.HOST_ERROR and bad.exit_code == 3, bad
    assert "flaky" in bad.reason and "simulated device backend failure" in bad.reason
    assert "RuntimeError" in bad.detail
    for name in ("vm0", "vm2"):
        assert results[name].exit_code == 0, results[name]


class Starter(Quiet):
    """Starts a task as soon as it is attached, and notes where that task runs."""

    def __init__(self) -> None:
        super().__init__("starter")
        self.attached_in: trio.lowlevel.Task | None = None
        self.ran_in: trio.lowlevel.Task | None = None

    def attach(self, ctx: hv.hw._device.DeviceContext) -> None:  # type: ignore[name-defined]
        super().attach(ctx)
        self.attached_in = trio.lowlevel.current_task()

        async def work() -> None:
            task = trio.lowlevel.current_task()
            self.ran_in = task.parent_nursery.parent_task if task.parent_nursery else None

        ctx.spawn(work)  # the VM's nursery is open: this starts now, nothing is queued


async def test_devices_are_attached_when_the_vm_starts_with_its_nursery() -> None:
    dev = Starter()
    vm = Vm(VmConfig(kernel=hv.guest_path("hello"), devices=(dev,)))
    assert dev.attached_in is None  # built, not started: no nursery yet, so no context
    with trio.fail_after(20):
        info = await vm.run()
    assert info.exit_code == 0
    # attached by the VM's own task, and the work ran in the nursery that task opened
    assert dev.attached_in is not None and dev.ran_in is dev.attached_in


async def test_a_host_write_over_executed_code_is_seen_and_guest_errors_are_counted(
    guest_elfs: dict[str, Path],
) -> None:
    dev = CopyDevice()
    vm, info = await run_to_end(
        VmConfig(kernel=hv.guest_path("dma"), cmdline="rounds=200", devices=(dev,))
    )
    out = vm.console.transcript
    assert info.exit_code == 0, (info, out[-400:])
    assert b"dma: ok 200 rounds" in out
    assert dev.counters["copies"] == 200
    assert vm.stats["code_invalidations"] >= 200
    # The guest's bad access was the device's count; the VM went on to a clean power-off.
    assert vm.stats["dma.guest_errors"] == 1 and vm.stats["device_guest_errors"] == 1


class BootCounter(Device):
    """Register 0 reads how many times the board reset the device."""

    def __init__(self) -> None:
        super().__init__("boots")

    def reset(self) -> None:
        self.counters["resets"] += 1

    def mmio_read(self, offset: int, size: int) -> int:
        return self.counters["resets"]

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        pass


def reboot_once_kernel() -> bytes:
    """Reads the boot counter: 0 -> ask the finisher for a reboot; else power off."""
    return raw_binary(
        [
            *li32(T1, SLOT0),
            lw(T2, T1, 0),
            *li32(T0, FINISHER),
            bne(T2, 0, 20),  # booted before: to the power-off below
            *li32(T3, 0x7777),  # reset
            sw(T3, T0, 0),
            jal(0, 0),  # wait for the reboot
            *li32(T3, 0x5555),  # pass: power off
            sw(T3, T0, 0),
            jal(0, 0),
        ]
    )


async def test_devices_and_counters_survive_a_reboot() -> None:
    dev = BootCounter()
    cfg = VmConfig(kernel=reboot_once_kernel(), devices=(dev,))
    async with trio.open_nursery() as nursery:
        vm: Vm = await nursery.start(run_vm, cfg)
        machine, vcpu, mem = vm.machine, vm.machine.vcpu, vm.machine.mem
        with trio.fail_after(10):
            info = await vm.wait()
    assert info.exit_code == 0, info
    assert vm.machine is machine and machine.vcpu is vcpu and machine.mem is mem
    assert machine.slots[0] is dev and dev.counters["resets"] == 1
    stats = vm.stats
    assert stats["reboots"] == 1
    assert stats["boots.resets"] == 1
    assert stats["mmio_reads"] >= 2, "the vCPU's counters restarted at the reboot"


async def test_the_device_tree_lists_the_configured_devices() -> None:
    cfg = VmConfig(
        kernel=hv.guest_path("hello"), cmdline="fdt=1", devices=(CopyDevice("a"), CopyDevice("b"))
    )
    vm, info = await run_to_end(cfg)
    out = vm.console.transcript.decode()
    assert info.exit_code == 0
    assert "fdt: virtio,mmio virtio_mmio@10001000 reg=0x10001000+0x1000 irq=1" in out, out
    assert "fdt: virtio,mmio virtio_mmio@10002000 reg=0x10002000+0x1000 irq=2" in out, out
    assert "virtio_mmio@10003000" not in out


def test_the_public_api_is_pinned() -> None:
    assert sorted(hv.__all__) == sorted(
        [
            "EXIT_STATUS",
            "AgentUnavailable",
            "CommandFailed",
            "ConfigError",
            "ExecError",
            "ExecResult",
            "ExecTimeout",
            "Console",
            "GuestError",
            "HostError",
            "Disk",
            "HvError",
            "Lab",
            "Nic",
            "SnapshotError",
            "SnapshotInfo",
            "StateError",
            "StopInfo",
            "StopKind",
            "Vm",
            "VmConfig",
            "VmState",
            "guest_path",
            "open_lab",
            "open_vm",
            "restore",
            "restore_disks",
            "run_vm",
        ]
    )
    for name in hv.__all__:
        assert getattr(hv, name) is not None
