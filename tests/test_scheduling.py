"""Many VMs in one trio run: fair sharing, cheap idling, isolation of faults and host errors,
and timer accuracy."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers import wait_until

from hv import StopInfo, StopKind, Vm, VmConfig, VmState, run_vm
from hv.board._machine import Machine, MachineConfig
from hv.devices._uart import Uart16550
from hv.engine._vcpu import ExitKind

SMALL_MEM = 32 << 20


async def wait_all(vms: list[Vm]) -> list[StopInfo]:
    return [await vm.wait() for vm in vms]


async def test_cpu_bound_vms_progress_at_similar_rates(guest_elfs: dict[str, Path]) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vms: list[Vm] = []
            for i in range(3):
                config = VmConfig(kernel=guest_elfs["cpu"], cmdline="iters=1000000", name=f"c{i}")
                vms.append(await nursery.start(run_vm, config))
            start = [vm.stats["guest_insns"] for vm in vms]
            await trio.sleep(1.0)  # the measurement: progress over a second of wall time
            progress = [vm.stats["guest_insns"] - s for vm, s in zip(vms, start, strict=True)]
            assert all(vm.state is VmState.RUNNING for vm in vms)
            for vm in vms:
                vm.stop()
    assert min(progress) > 0, progress
    ratio = max(progress) / min(progress)
    assert ratio < 2.0, f"unfair progress: {progress}"
    assert all(vm.exit is not None and vm.exit.exit_code == 130 for vm in vms)


async def test_cpu_bound_vms_finish_with_the_same_checksum(guest_elfs: dict[str, Path]) -> None:
    """Interleaved slices don't disturb a guest: two runs of the same work agree."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            vms = [
                await nursery.start(run_vm, VmConfig(kernel=guest_elfs["cpu"], cmdline="iters=40"))
                for _ in range(2)
            ]
            infos = await wait_all(vms)
    assert [i.exit_code for i in infos] == [0, 0]
    sums = [re.search(rb"checksum: 0x[0-9a-f]{16}", vm.console.transcript) for vm in vms]
    assert sums[0] is not None and sums[1] is not None
    assert sums[0].group() == sums[1].group()


async def test_idle_vms_cost_little_host_cpu(guest_elfs: dict[str, Path]) -> None:
    count = 50
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vms: list[Vm] = []
            for i in range(count):
                config = VmConfig(
                    kernel=guest_elfs["sleep"],
                    cmdline="ms=60000 count=1",
                    mem_size=SMALL_MEM,
                    name=f"idle{i}",
                )
                vms.append(await nursery.start(run_vm, config))
            for vm in vms:
                await vm.console.wait_for("sleep: 1 x 60000 ms")
            await trio.testing.wait_all_tasks_blocked()  # every VM waits: each guest is in wfi
            wall0, cpu0 = time.monotonic(), time.process_time()
            await trio.sleep(1.0)  # the measurement: CPU used over a second of wall time
            wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
            assert all(vm.state is VmState.RUNNING for vm in vms)
            for vm in vms:
                vm.stop()
    assert cpu / wall < 0.3, f"{count} idle VMs used {cpu:.3f} s of CPU in {wall:.3f} s"
    assert all(vm.exit is not None and vm.exit.exit_code == 130 for vm in vms)


@pytest.mark.parametrize(
    ("mode", "kind", "code"),
    [
        ("novector", StopKind.GUEST_FAULT, 2),
        ("loop", StopKind.GUEST_FAULT, 2),
        ("ebreak", StopKind.GUEST_FAULT, 2),
        ("handler", StopKind.FAILURE, 1),
        ("fetch", StopKind.FAILURE, 1),
    ],
)
async def test_a_faulting_vm_does_not_disturb_the_others(
    mode: str, kind: str, code: int, guest_elfs: dict[str, Path]
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            sleeper = await nursery.start(
                run_vm, VmConfig(kernel=guest_elfs["sleep"], cmdline="ms=20 count=5", name="s")
            )
            worker = await nursery.start(
                run_vm, VmConfig(kernel=guest_elfs["cpu"], cmdline="iters=20", name="c")
            )
            faulty = await nursery.start(
                run_vm, VmConfig(kernel=guest_elfs["fault"], cmdline=f"mode={mode}", name="f")
            )
            bad = await faulty.wait()
            assert sleeper.state is VmState.RUNNING
            assert worker.state is VmState.RUNNING
            good = await wait_all([sleeper, worker])
    assert bad.kind == kind
    assert bad.exit_code == code
    assert [g.kind for g in good] == [StopKind.POWEROFF, StopKind.POWEROFF]
    assert b"sleep: done" in sleeper.console.transcript
    assert b"checksum: 0x" in worker.console.transcript


async def test_a_device_model_exception_stops_only_its_vm(
    guest_elfs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken: set[int] = set()
    original = Uart16550.mmio_write

    def mmio_write(self: Uart16550, offset: int, size: int, value: int) -> None:
        if id(self) in broken:
            raise RuntimeError("simulated UART model bug")
        original(self, offset, size, value)

    # The vCPU binds a device's methods when it maps it: patch the class before VMs exist.
    monkeypatch.setattr(Uart16550, "mmio_write", mmio_write)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            healthy = await nursery.start(
                run_vm, VmConfig(kernel=guest_elfs["sleep"], cmdline="ms=20 count=5", name="ok")
            )
            echo = await nursery.start(run_vm, VmConfig(kernel=guest_elfs["echo"], name="echo"))
            await echo.console.wait_for("echo: ready")
            broken.add(id(echo.machine.uart))
            await echo.console.send_all("x")  # the echo writes THR: the model raises
            bad = await echo.wait()
            assert healthy.state is VmState.RUNNING
            good = await healthy.wait()
    assert bad.kind == StopKind.HOST_ERROR
    assert bad.exit_code == 3
    assert "host error" in bad.reason
    assert "0x10000000" in bad.reason
    assert "simulated UART model bug" in bad.detail
    assert good.kind == StopKind.POWEROFF
    assert good.exit_code == 0


SLEEP_LINE = re.compile(rb"sleep \d+: (\d+)\.(\d{3}) ms")


def sleep_times_ms(out: bytes) -> list[float]:
    return [int(m.group(1)) + int(m.group(2)) / 1000 for m in SLEEP_LINE.finditer(out)]


@pytest.mark.parametrize("busy_neighbour", [False, True])
async def test_timer_is_never_early_and_rarely_late(
    busy_neighbour: bool, guest_elfs: dict[str, Path]
) -> None:
    ms, count = 20, 10
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            if busy_neighbour:
                busy = await nursery.start(
                    run_vm, VmConfig(kernel=guest_elfs["cpu"], cmdline="iters=1000000")
                )
            sleeper = await nursery.start(
                run_vm, VmConfig(kernel=guest_elfs["sleep"], cmdline=f"ms={ms} count={count}")
            )
            info = await sleeper.wait()
            if busy_neighbour:
                assert busy.state is VmState.RUNNING
                busy.stop()
    assert info.exit_code == 0  # the guest itself exits 1 if a sleep ended early
    times = sleep_times_ms(sleeper.console.transcript)
    assert len(times) == count
    assert min(times) >= ms, times
    late = sum(times) / len(times) - ms
    assert late <= 20, f"sleeps of {ms} ms took {times}"


def test_first_slice_after_a_timer_interrupt_makes_progress(guest_elfs: dict[str, Path]) -> None:
    m = Machine(MachineConfig(kernel=guest_elfs["sleep"].read_bytes(), cmdline="ms=5 count=2"))
    try:
        m.boot()
        ex = m.run_slice()
        for _ in range(50):  # boot's first slices may end on host time (cold translation)
            if ex.kind is not ExitKind.PREEMPTED:
                break
            ex = m.run_slice()
        assert ex.kind is ExitKind.WFI  # armed the timer for 5 ms and waits
        deadline = m.next_deadline()
        assert deadline is not None
        # Not "by now": the deadline is exact, on the host's CLOCK_MONOTONIC, which the guest
        # reads natively (an injected clock would switch rdtime to the emulated path, another
        # test); sleeping past it is how that clock moves.
        time.sleep(deadline + 0.001)
        before = m.vcpu.stats.guest_insns
        m.run_slice()
        assert m.vcpu.stats.guest_insns > before, "the slice ran no guest code"
        out = m.take_output()
        for _ in range(50):  # (a loaded host may end the slice, on host time, before it prints)
            if b"sleep 1: " in out:
                break
            m.run_slice()
            out += m.take_output()
        assert b"sleep 1: " in out
    finally:
        m.vcpu.close()


async def test_a_guest_asleep_on_a_masked_expired_timer_costs_no_cpu(tmp_path: Path) -> None:
    """A hostile guest sets its timer in the past with the timer interrupt masked (sie.STIE
    clear), then waits in ``wfi``: the timer is due, but nothing can wake the hart, so hv
    must sleep instead of rechecking a deadline that has passed in a busy loop."""
    from rvasm import li32, raw_binary

    a0, a6, a7 = 10, 16, 17
    ecall, wfi = 0x0000_0073, 0x1050_0073
    kernel = tmp_path / "masked-timer.bin"
    kernel.write_bytes(
        raw_binary(
            [*li32(a7, 0x54494D45), *li32(a6, 0), *li32(a0, 1), ecall,  # sbi_set_timer(1)
             wfi, 0xFFDFF06F]  # wfi; j .-4
        )
    )  # fmt: skip
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, VmConfig(kernel=kernel, mem_size=SMALL_MEM))
            await wait_until(lambda: vm.stats["wfi"], "the guest to reach its wfi")
            wall0, cpu0 = time.monotonic(), time.process_time()
            await trio.sleep(0.5)  # the measurement: CPU used over half a second of wall time
            wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
            assert vm.state is VmState.RUNNING
            vm.stop()
    assert cpu / wall < 0.2, f"a guest asleep on a masked timer used {cpu:.3f} s in {wall:.3f} s"
