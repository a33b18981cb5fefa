"""The VM API and its run loop: start, console, pause/resume/stop, cancellation, bad configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
from conftest import (
    RunGuest,
    finisher_kernel,
    raw_binary,
    rv_addi,
    rv_jal,
    rv_li32,
    rv_sw,
)
from helpers import wait_until

from hv import (
    ConfigError,
    StateError,
    StopKind,
    Vm,
    VmConfig,
    VmState,
    open_vm,
    run_vm,
)
from hv.board._machine import Machine

GREETING = b"Hello from hvfabric guest!"
LONG_CPU = "iters=1000000"  # far longer than any test waits


def cpu_config(guest_elfs: dict[str, Path], name: str = "cpu") -> VmConfig:
    return VmConfig(kernel=guest_elfs["cpu"], cmdline=LONG_CPU, name=name)


def state(vm: Vm) -> VmState:
    """``vm.state``, read through a call: it changes while the test awaits (mypy narrows
    ``vm.state`` after an ``assert vm.state is ...`` and does not see that)."""
    return vm.state


async def test_hello_powers_off_with_greeting(run_guest: RunGuest) -> None:
    info, out = await run_guest("hello")
    assert info.kind == StopKind.POWEROFF
    assert info.exit_code == 0
    assert GREETING in out
    assert b"hart 0" in out


async def test_hello_prints_bootargs(run_guest: RunGuest) -> None:
    info, out = await run_guest("hello", cmdline="alpha=1 beta")
    assert info.exit_code == 0
    assert b"bootargs: alpha=1 beta" in out


async def test_start_returns_running_vm(guest_elfs: dict[str, Path]) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, cpu_config(guest_elfs))
            assert isinstance(vm, Vm)
            assert vm.state is VmState.RUNNING
            assert vm.exit is None
            vm.stop()
            info = await vm.wait()
    assert state(vm) is VmState.STOPPED
    assert info.kind == StopKind.STOPPED
    assert vm.exit == info


async def test_open_vm_stops_the_vm_when_the_block_ends(guest_elfs: dict[str, Path]) -> None:
    config = VmConfig(kernel=guest_elfs["sleep"], cmdline="ms=5000 count=1")
    with trio.fail_after(10):
        async with open_vm(config) as vm:
            await vm.console.wait_for("sleep: 1 x 5000 ms")
            assert vm.state is VmState.RUNNING
        assert state(vm) is VmState.STOPPED
        assert vm.exit is not None
        assert vm.exit.kind == StopKind.STOPPED
        assert vm.exit.exit_code == 130


async def test_open_vm_returns_after_guest_finishes(guest_elfs: dict[str, Path]) -> None:
    with trio.fail_after(10):
        async with open_vm(VmConfig(kernel=guest_elfs["hello"])) as vm:
            info = await vm.wait()
    assert info.kind == StopKind.POWEROFF
    assert vm.state is VmState.STOPPED


async def test_console_wait_for_str_bytes_and_regex(guest_elfs: dict[str, Path]) -> None:
    config = VmConfig(kernel=guest_elfs["sleep"], cmdline="ms=10 count=3")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, config)
            first = await vm.console.wait_for("sleep: 3 x 10 ms")
            assert first.startswith(b"sleep: 3 x 10 ms")
            got = await vm.console.wait_for(b"sleep 1: ")
            assert got.endswith(b"sleep 1: ")
            rx = re.compile(rb"sleep 3: (\d+)\.(\d{3}) ms")
            got = await vm.console.wait_for(rx)
            m = rx.search(got)
            assert m is not None
            assert int(m.group(1)) >= 10
            # An earlier match is not found again: the search starts after the last one.
            with pytest.raises(EOFError):
                await vm.console.wait_for("sleep 1: ")
    assert vm.exit is not None
    assert vm.exit.exit_code == 0


async def test_wait_for_eof_on_stopped_vm(guest_elfs: dict[str, Path]) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, VmConfig(kernel=guest_elfs["hello"]))
            with pytest.raises(EOFError, match="console closed before"):
                await vm.console.wait_for("never printed")
    assert vm.state is VmState.STOPPED
    assert GREETING in vm.console.transcript


async def test_receive_some_streams_output_then_eof(guest_elfs: dict[str, Path]) -> None:
    chunks: list[bytes] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, VmConfig(kernel=guest_elfs["hello"]))
            while data := await vm.console.receive_some(8):
                assert len(data) <= 8
                chunks.append(data)
    assert b"".join(chunks) == vm.console.transcript
    assert GREETING in b"".join(chunks)


async def test_console_input_echoes_through_uart_interrupts(
    guest_elfs: dict[str, Path],
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, VmConfig(kernel=guest_elfs["echo"]))
            await vm.console.wait_for("echo: ready")
            await vm.console.send_all("hello")
            await vm.console.wait_for("hello")
            await vm.console.send_all(b"world")
            await vm.console.wait_for(b"world")
            assert vm.state is VmState.RUNNING
            await vm.console.send_all("q")
            info = await vm.wait()
    assert info.kind == StopKind.POWEROFF
    out = vm.console.transcript
    assert b"echo: bye" in out
    m = re.search(rb"echo: (\d+) interrupts, (\d+) bytes", out)
    assert m is not None, out
    # At least one interrupt per send_all (each waited for its echo), one byte per character.
    assert int(m.group(1)) >= 3
    assert int(m.group(2)) == len("helloworldq")


async def test_echo_input_before_guest_is_ready_is_kept(guest_elfs: dict[str, Path]) -> None:
    """Input typed before the guest enabled its UART waits in the host's buffer."""
    data = b"x" * 100 + b"q"  # more than the 16-byte FIFO holds
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, VmConfig(kernel=guest_elfs["echo"]))
            await vm.console.send_all(data)
            info = await vm.wait()
    assert info.exit_code == 0
    m = re.search(rb"echo: (\d+) interrupts, (\d+) bytes", vm.console.transcript)
    assert m is not None
    assert int(m.group(2)) == len(data)


async def test_uart_and_sbi_console_output_keep_their_order(
    guest_elfs: dict[str, Path],
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, VmConfig(kernel=guest_elfs["echo"]))
            await vm.console.wait_for("echo: ready")
            await vm.console.send_all("abcq")  # echoed via the UART, then "bye" via SBI
            await vm.wait()
    out = vm.console.transcript
    assert out.index(b"abcq") < out.index(b"echo: bye"), out


async def test_pause_freezes_the_guest_and_resume_continues(
    guest_elfs: dict[str, Path],
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, cpu_config(guest_elfs))
            await wait_until(lambda: vm.stats["guest_insns"], "the guest to run")
            vm.pause()
            await wait_until(lambda: vm.state is VmState.PAUSED, "the VM to pause")
            before = vm.stats
            ticks_before = vm.machine.clock.ticks()
            await trio.sleep(0.3)  # the measurement: nothing moves over 0.3 s while paused
            after = vm.stats
            assert vm.state is VmState.PAUSED
            assert after["guest_insns"] == before["guest_insns"]
            assert after["slices"] == before["slices"]
            assert vm.machine.clock.ticks() == ticks_before  # guest time stands still
            vm.pause()  # pausing a paused VM is allowed
            vm.resume()
            await wait_until(lambda: vm.state is VmState.RUNNING, "the VM to resume")
            await wait_until(
                lambda: vm.stats["guest_insns"] > after["guest_insns"], "the guest to run again"
            )
            assert vm.machine.clock.ticks() > ticks_before
            vm.stop()
    assert vm.exit is not None
    assert vm.exit.exit_code == 130


async def test_stop_ends_a_busy_vm_quickly(guest_elfs: dict[str, Path]) -> None:
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, cpu_config(guest_elfs))
        await wait_until(lambda: vm.stats["guest_insns"], "the guest to be busy")
        start = trio.current_time()
        vm.stop("test says stop")
        with trio.fail_after(1):
            info = await vm.wait()
        elapsed = trio.current_time() - start
    assert elapsed < 0.5
    assert info.kind == StopKind.STOPPED
    assert info.exit_code == 130
    assert info.reason == "test says stop"
    assert vm.state is VmState.STOPPED
    vm.stop()  # stopping a stopped VM is a no-op
    assert vm.exit == info


async def test_stop_while_paused(guest_elfs: dict[str, Path]) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, cpu_config(guest_elfs))
            vm.pause()
            await wait_until(lambda: vm.state is VmState.PAUSED, "the VM to pause")
            vm.stop()
            info = await vm.wait()
    assert info.exit_code == 130
    assert vm.state is VmState.STOPPED


async def test_cancelling_the_nursery_stops_the_vm(guest_elfs: dict[str, Path]) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, cpu_config(guest_elfs))
            await wait_until(lambda: vm.stats["guest_insns"], "the guest to be busy")
            start = trio.current_time()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
    assert elapsed < 0.5
    assert vm.state is VmState.STOPPED
    assert vm.exit is not None
    assert vm.exit.kind == StopKind.STOPPED
    assert vm.exit.exit_code == 130


async def test_cancelling_an_idle_vm(guest_elfs: dict[str, Path]) -> None:
    config = VmConfig(kernel=guest_elfs["sleep"], cmdline="ms=60000 count=1")
    with trio.fail_after(5):
        with trio.move_on_after(0.2):
            async with trio.open_nursery() as nursery:
                vm = await nursery.start(run_vm, config)
                await vm.wait()
    assert vm.state is VmState.STOPPED
    assert vm.exit is not None
    assert vm.exit.exit_code == 130


async def test_pause_and_resume_of_a_stopped_vm_raise_state_error() -> None:
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, VmConfig(kernel=b"\x6f\x00\x00\x00"))  # j .
        vm.stop()
        await vm.wait()
    with pytest.raises(StateError) as e:
        vm.pause()
    assert e.value.state == "stopped"
    with pytest.raises(StateError):
        vm.resume()


def _bad_configs(
    guest_elfs: dict[str, Path], tmp_path: Path, empty_file: Path, x86_elf: Path
) -> dict[str, VmConfig]:
    return {
        "missing": VmConfig(kernel=tmp_path / "no-such-kernel"),
        "directory": VmConfig(kernel=tmp_path),
        "mem-too-small": VmConfig(kernel=guest_elfs["hello"], mem_size=4 << 20),
        "mem-too-big": VmConfig(kernel=guest_elfs["hello"], mem_size=1 << 40),
        "mem-not-mib": VmConfig(kernel=guest_elfs["hello"], mem_size=(32 << 20) + 4096),
        "quantum-too-small": VmConfig(kernel=guest_elfs["hello"], quantum=10),
        "quantum-too-big": VmConfig(kernel=guest_elfs["hello"], quantum=10**10),
        "missing-initrd": VmConfig(kernel=guest_elfs["hello"], initrd=tmp_path / "nope"),
        "empty": VmConfig(kernel=empty_file),
        "x86-elf": VmConfig(kernel=x86_elf),
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("directory", "directory"),
        ("mem-too-small", "out of range"),
        ("mem-too-big", "out of range"),
        ("mem-not-mib", "whole number of MiB"),
        ("quantum-too-small", "quantum"),
        ("quantum-too-big", "quantum"),
        ("missing-initrd", "initrd"),
        pytest.param("empty", "empty"),
        pytest.param("x86-elf", "x86-64"),
    ],
)
async def test_bad_config_raises_from_start(
    case: str,
    message: str,
    guest_elfs: dict[str, Path],
    tmp_path: Path,
    empty_file: Path,
    x86_elf: Path,
) -> None:
    config = _bad_configs(guest_elfs, tmp_path, empty_file, x86_elf)[case]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConfigError, match=message):
                vm = await nursery.start(run_vm, config)
                vm.stop()  # only reached if start did not raise


# -- small machine behaviours with hand-encoded raw-binary guests --------------------------


@pytest.mark.parametrize(
    ("value", "kind", "code"),
    [
        (0x5555, StopKind.POWEROFF, 0),
        (0x3333, StopKind.FAILURE, 1),
        ((7 << 16) | 0x3333, StopKind.FAILURE, 7),
        ((200 << 16) | 0x3333, StopKind.FAILURE, 200),
    ],
)
async def test_finisher_exit_status(value: int, kind: str, code: int, run_guest: RunGuest) -> None:
    info, _ = await run_guest(VmConfig(kernel=finisher_kernel(value)), timeout=5)
    assert info.kind == kind
    assert info.exit_code == code


async def test_finisher_unknown_command_is_ignored(guest_elfs: dict[str, Path]) -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, VmConfig(kernel=finisher_kernel(0x1234)))
            await wait_until(
                lambda: vm.machine.finisher.counters["bad_command"], "the finisher's bad command"
            )
            assert vm.state is VmState.RUNNING
            assert vm.machine.finisher.counters["bad_command"] == 1
            vm.stop()
    assert vm.exit is not None
    assert vm.exit.exit_code == 130


A0, A7 = 10, 17
ECALL = 0x00000073


def reboot_loop_kernel() -> bytes:
    """Print 'R' with the legacy SBI putchar, then reset through the finisher."""
    return raw_binary(
        [
            rv_addi(A7, 0, 1),  # legacy console_putchar
            rv_addi(A0, 0, ord("R")),
            ECALL,
            *rv_li32(5, 0x0010_0000),
            *rv_li32(6, 0x7777),
            rv_sw(6, 5, 0),
            rv_jal(0, 0),
        ]
    )


def limit_reboots(monkeypatch: pytest.MonkeyPatch, limit: int) -> list[int]:
    """Make every machine stop itself (as the host would) after ``limit`` reboots; the list
    returned holds the number of reboots so far."""
    count = [0]
    original = Machine.reboot

    def counting_reboot(self: Machine) -> None:
        count[0] += 1
        original(self)
        if count[0] >= limit:
            self.stop_by_host(f"test limit of {limit} reboots")

    monkeypatch.setattr(Machine, "reboot", counting_reboot)
    return count


async def test_finisher_reset_reboots_the_guest(
    run_guest: RunGuest, monkeypatch: pytest.MonkeyPatch
) -> None:
    reboots = limit_reboots(monkeypatch, 3)
    config = VmConfig(kernel=reboot_loop_kernel(), mem_size=16 << 20)
    info, out = await run_guest(config, timeout=5)
    assert reboots[0] == 3
    # One 'R' per boot before the third reset (the machine stops right after it): each
    # reset boots the kernel afresh (fresh RAM, the hart back at the entry point).
    assert out == b"RRR"
    assert info.exit_code == 130
    assert "3 reboots" in info.reason


async def test_reboot_loop_does_not_starve_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 100
    reboots = limit_reboots(monkeypatch, limit)  # a safety net so the test always ends
    config = VmConfig(kernel=reboot_loop_kernel(), mem_size=16 << 20)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, config)
            await vm.console.wait_for("RRR")
            running = vm.state is VmState.RUNNING
            vm.stop()
    assert running, f"the event loop ran again only after {reboots[0]} reboots"
    assert reboots[0] < limit


@pytest.mark.parametrize("slicing", ["block-hook", "count"])
async def test_stock_engine_slicing_paths(
    slicing: str, monkeypatch: pytest.MonkeyPatch, guest_elfs: dict[str, Path]
) -> None:
    """The stock engine's ways to end a slice, run here on whatever library is loaded: the
    native block hook, and where it can't be built, counting instructions (slower, still
    exact). Guests still sleep in wfi and every trap kind still reaches them."""
    from hv.engine import _vcpu

    monkeypatch.setattr(_vcpu, "FAST_ENGINE", False)
    if slicing == "count":
        monkeypatch.setattr(_vcpu, "_load_native_hook", lambda: None)
    async with trio.open_nursery() as nursery:
        cfg = VmConfig(kernel=guest_elfs["sleep"], cmdline="ms=30 count=3")
        vm: Vm = await nursery.start(run_vm, cfg)
        assert vm.machine.vcpu.slicing == slicing
        with trio.fail_after(20):
            info = await vm.wait()
    assert info.exit_code == 0 and vm.stats["wfi"] >= 3
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, VmConfig(kernel=guest_elfs["traps"]))
        with trio.fail_after(20):
            info = await vm.wait()
    assert info.exit_code == 0, vm.console.transcript[-300:]
    assert b"traps: 16 passed, 0 failed" in vm.console.transcript
