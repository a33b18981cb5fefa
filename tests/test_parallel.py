"""Several host cores (hv.hw._parallel, docs/SCALING.md): a virtual-time lab runs its VMs on
``jobs`` threads, and what it leaves behind is byte for byte the same for any number of them.

The pool's own rules are checked on plain calls: results in order, the first error raised
after every call ended, one call's Python at a time (the gate), trio's synchronous operations
usable from a worker, and no batch inside a batch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from rvasm import WFI, addi, amoadd_w, bne, code, r_type

from hv import StopKind
from hv._errors import ConfigError
from hv.hw import GATE, Pool
from hv.lab._runner import run_lab
from hv.lab._spec import parse_lab, with_clock

# Networked guests across an impaired link, a DHCP server, and two compute-bound guests with
# no NIC: rounds in which several VMs run at once, MMIO-heavy and not.
LAB = """
clock = "virtual"
seed = 5

[switches.lan]
subnet = "10.0.0.0/24"
dhcp = { pool = "10.0.0.100-10.0.0.150" }
capture = "lan.pcapng"

[switches.wan]
capture = "wan.pcapng"

[[links]]
a = "lan"
b = "wan"
impair = { delay = "2ms", jitter = "1ms", loss = "5%", rate = "20Mbit", queue = "16KiB" }

[vms.srv]
kernel = "udpecho"
nics = [{ switch = "wan", ip = "10.0.0.2/24" }]

[vms.gen]
kernel = "udpgen"
append = "peer=10.0.0.2 count=120 size=600 window=16 timeout=20"
nics = [{ switch = "lan", ip = "dhcp" }]

[vms.pinger]
kernel = "ping"
append = "peer=10.0.0.2 count=6 interval=5"
nics = [{ switch = "lan", ip = "10.0.0.3/24" }]

[vms.c1]
kernel = "cpu"
append = "iters=30"

[vms.c2]
kernel = "cpu"
append = "iters=45"
"""


async def _run(folder: Path, jobs: int) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    spec = with_clock(parse_lab(LAB, folder, "par"), jobs=jobs)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(
                functools.partial(run_lab, spec, until=frozenset({"gen", "pinger", "c1", "c2"}))
            )
            status = await run.wait()
    assert run.timeline is not None
    stats = run.timeline.stats()
    return {
        "status": status,
        "exits": {name: (e.kind, e.exit_code, e.reason) for name, e in run.exits.items()},
        "consoles": {name: vm.console.transcript for name, vm in run.vms.items()},
        "lan": hashlib.sha256((folder / "lan.pcapng").read_bytes()).hexdigest(),
        "wan": hashlib.sha256((folder / "wan.pcapng").read_bytes()).hexdigest(),
        "parallel": stats["parallel_batches"],
    }


async def test_a_lab_is_byte_identical_on_one_thread_and_on_several(tmp_path: Path) -> None:
    one = await _run(tmp_path / "one", 1)
    two = await _run(tmp_path / "two", 2)
    three = await _run(tmp_path / "three", 3)
    consoles = one["consoles"]
    assert isinstance(consoles, dict)
    assert b"udpgen: 10.0.0.2:7: 120 sent" in consoles["gen"], consoles["gen"]
    assert b"ping: 10.0.0.2: 6 sent" in consoles["pinger"], consoles["pinger"]
    assert b"checksum: 0x" in consoles["c2"]
    assert one["parallel"] == 0  # one job: every member on the trio thread
    assert two["parallel"] and three["parallel"]  # several: rounds ran on the workers
    for other in (two, three):
        assert {k: v for k, v in other.items() if k != "parallel"} == {
            k: v for k, v in one.items() if k != "parallel"
        }


def test_jobs_are_checked(tmp_path: Path) -> None:
    spec = parse_lab(LAB, tmp_path, "par")
    with pytest.raises(ConfigError, match="--jobs: 0 is not a number of host threads"):
        with_clock(spec, jobs=0, option="--")
    assert dataclasses.replace(spec).jobs is None


def test_a_batch_gives_results_in_order_and_raises_after_all_ended() -> None:
    pool = Pool(3)
    try:
        assert pool.run([functools.partial(lambda i: i * i, i) for i in range(7)]) == [
            i * i for i in range(7)
        ]
        ended: list[int] = []

        def fails() -> int:
            raise ValueError("call 1 failed")

        def slow() -> int:
            time.sleep(0.01)
            ended.append(2)
            return 2

        with pytest.raises(ValueError, match="call 1 failed"):
            pool.run([lambda: 0, fails, slow])
        assert ended == [2]
        assert not GATE.active
    finally:
        pool.close()


def test_one_call_runs_python_at_a_time() -> None:
    """The gate: calls overlap only where they let go of it (the engine)."""
    pool = Pool(4)
    inside = 0
    most = 0
    lock = threading.Lock()

    def call() -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.005)  # releases the GIL, not the gate
        with lock:
            inside -= 1

    try:
        pool.run([call] * 8)
    finally:
        pool.close()
    assert most == 1


def test_a_batch_inside_a_batch_runs_in_order() -> None:
    pool = Pool(2)
    order: list[int] = []
    try:
        pool.run([lambda: pool.run([lambda: order.append(1), lambda: order.append(2)])] * 2)
    finally:
        pool.close()
    assert order == [1, 2, 1, 2]
    assert pool.batches == 1


async def test_a_worker_may_set_trio_events_and_start_tasks() -> None:
    pool = Pool(2)
    woke: list[str] = []
    event = trio.Event()

    async def waiter() -> None:
        await event.wait()
        woke.append("event")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()

            async def started() -> None:
                woke.append("task")

            pool.run([event.set, lambda: nursery.start_soon(started)])
    finally:
        pool.close()
    assert sorted(woke) == ["event", "task"]


# -- atomics across engines on parallel threads (hv/engine/patches/0004) ---------------------

_LR_W = 0b0001000
_SC_W = 0b0001100


def _racer(n: int) -> bytes:
    """a0: an amoadd.w counter, a3: an amoadd.d one, a1: an LR/SC counter, a2: rounds;
    then wfi."""
    t1, t2, t3, a0, a1, a2, a3 = 6, 7, 28, 10, 11, 12, 13
    words = [
        addi(t1, 0, 1),
        amoadd_w(0, t1, a0),  # loop:
        r_type(0, t1, a3, 3, 0, 0x2F),  # amoadd.d zero, t1, (a3)
        r_type(_LR_W, 0, a1, 2, t2, 0x2F),  # retry: lr.w t2, (a1)
        addi(t2, t2, 1),
        r_type(_SC_W, t2, a1, 2, t3, 0x2F),  # sc.w t3, t2, (a1)
        bne(t3, 0, -12),
        addi(a2, a2, -1),
        bne(a2, 0, -28),
        WFI,
    ]
    assert n > 0
    return code(words)


class _NoFirmware:
    def sbi_call(self, eid: int, fid: int, args: object) -> tuple[int, int] | None:
        return (-2, 0)

    def time_ticks(self) -> int:
        return 0


def test_amos_and_lr_sc_are_atomic_across_harts_on_parallel_threads() -> None:
    from hv.engine import ExitKind, Vcpu
    from hv.hw import RAM_BASE, Bus, GuestMemory

    rounds = 1_000_000
    mem = GuestMemory(RAM_BASE, 1 << 20)
    mem.write(RAM_BASE, _racer(rounds))
    harts = [Vcpu(mem, Bus(), _NoFirmware(), 50_000) for _ in range(2)]
    for i, v in enumerate(harts):
        assert v.set_parallel()
        v.reset(RAM_BASE, i, 0)
        v.set_x(10, RAM_BASE + 0x1000)
        v.set_x(11, RAM_BASE + 0x2000)
        v.set_x(12, rounds)
        v.set_x(13, RAM_BASE + 0x3000)

    def run(v: Vcpu) -> int:
        slices = 0
        while (ex := v.run_slice()).kind is ExitKind.PREEMPTED:
            slices += 1
        assert ex.kind is ExitKind.WFI, ex
        return slices

    pool = Pool(2)
    try:
        slices = pool.run([functools.partial(run, v) for v in harts])
    finally:
        pool.close()
        for v in harts:
            v.close()
    assert all(s > 2 for s in slices)  # several slices each: the harts overlapped
    amo = int.from_bytes(mem.read(RAM_BASE + 0x1000, 4), "little")
    lrsc = int.from_bytes(mem.read(RAM_BASE + 0x2000, 4), "little")
    amo_d = int.from_bytes(mem.read(RAM_BASE + 0x3000, 8), "little")
    mem.close()
    assert (amo, amo_d, lrsc) == (2 * rounds, 2 * rounds, 2 * rounds)


# -- real time: the slices of the running VMs in batches (hv._cores) --------------------------

RT_LAB = """
clock = "real"

[switches.lan]
subnet = "10.0.0.0/24"

[vms.srv]
kernel = "udpecho"
nics = [{ switch = "lan", ip = "10.0.0.2/24" }]

[vms.gen]
kernel = "udpgen"
append = "peer=10.0.0.2 count=200 size=600 window=16 timeout=20"
nics = [{ switch = "lan", ip = "10.0.0.3/24" }]

[vms.pinger]
kernel = "ping"
append = "peer=10.0.0.2 count=5 interval=2"
nics = [{ switch = "lan", ip = "10.0.0.4/24" }]

[vms.c1]
kernel = "cpu"
append = "iters=40"
"""


async def test_a_real_time_lab_runs_its_vms_slices_on_several_threads(tmp_path: Path) -> None:
    """Frames and interrupts between VMs whose slices run on different threads (an
    interrupt for a VM running elsewhere waits for its next slice: HartInterrupts.sync)."""
    spec = with_clock(parse_lab(RT_LAB, tmp_path, "rt"), jobs=2)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(
                functools.partial(run_lab, spec, until=frozenset({"gen", "pinger", "c1"}))
            )
            await run.wait()
    assert run.cores is not None and run.cores.batches > 0
    out = {name: vm.console.transcript for name, vm in run.vms.items()}
    assert b"udpgen: 10.0.0.2:7: 200 sent, 200 echoed, 0 lost" in out["gen"], out["gen"]
    assert b"ping: 10.0.0.2: 5 sent, 5 received" in out["pinger"], out["pinger"]
    assert b"checksum: 0x" in out["c1"]
    assert {e.kind for e in run.exits.values() if e is not None} <= {
        StopKind.POWEROFF,
        StopKind.STOPPED,
    }


def test_hv_up_takes_jobs(tmp_path: Path) -> None:
    import subprocess
    import sys

    lab = tmp_path / "j.toml"
    lab.write_text('[vms.a]\nkernel = "cpu"\nappend = "iters=5"\n')
    hv = [sys.executable, "-m", "hv.cli", "up", str(lab)]
    bad = subprocess.run([*hv, "--jobs", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 4
    assert bad.stderr.strip() == (
        "hv: --jobs: 0 is not a number of host threads: use 1 to 1024 (the default is every "
        "core this process may use)"
    )
    run = [sys.executable, "-m", "hv.cli", "run", "cpu", "--smp", "2", "--jobs", "0"]
    bad = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 4
    assert bad.stderr.startswith("hv: --jobs: 0 is not a number of host threads")
    good = subprocess.run([*hv, "--jobs", "2"], capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert "a | checksum: 0x" in good.stdout


def _smc_harts(shared: bool) -> int:
    """Hart 1 runs code at X (translating it), hart 0 rewrites X through its own engine,
    hart 1 runs fence.i and X again: what X returns the second time."""
    from rvasm import FENCE_I, jal, jalr, li32, sw

    from hv.engine import ExitKind, Vcpu
    from hv.hw import RAM_BASE, Bus, GuestMemory

    a0, t0, s0, s1, ra = 10, 5, 8, 9, 1
    x, result, writer = RAM_BASE + 0x800, RAM_BASE + 0x1000, RAM_BASE + 0x400
    mem = GuestMemory(RAM_BASE, 1 << 20)
    # hart 1 at RAM_BASE: fence.i; call X; store a0; wfi; loop
    mem.write(RAM_BASE, code([FENCE_I, jalr(ra, s0), sw(a0, s1, 0), WFI, jal(0, -16)]))
    mem.write(x, code([addi(a0, 0, 1), jalr(0, ra)]))  # X: return 1
    # hart 0 at writer: X's first instruction becomes "addi a0, zero, 2"; wfi
    mem.write(writer, code([*li32(t0, addi(a0, 0, 2)), sw(t0, s0, 0), WFI]))
    harts = [Vcpu(mem, Bus(), _NoFirmware(), 50_000) for _ in range(2)]
    try:
        for i, (v, entry) in enumerate(zip(harts, (writer, RAM_BASE), strict=True)):
            if shared:
                assert v.set_shared_code()
            v.reset(entry, i, 0)
            v.set_x(s0, x)
            v.set_x(s1, result)
        assert harts[1].run_slice().kind is ExitKind.WFI
        assert int.from_bytes(mem.read(result, 4), "little") == 1
        assert harts[0].run_slice().kind is ExitKind.WFI  # X rewritten by another engine
        assert harts[1].run_slice().kind is ExitKind.WFI
        return int.from_bytes(mem.read(result, 4), "little")
    finally:
        for v in harts:
            v.close()
        mem.close()


def test_fence_i_runs_code_another_hart_wrote() -> None:
    assert _smc_harts(shared=True) == 2
    # (without it, the engine runs its old translation: what the flag is for)
    assert _smc_harts(shared=False) == 1


async def test_a_real_time_batch_holds_one_vm_per_thread() -> None:
    """The event loop waits for a batch: four busy VMs on two threads go two at a time (all
    four at once held frames back for every VM's part: a ping beside ten busy guests took
    100-117 ms instead of 74-81)."""
    from hv._cores import Cores

    cores = Cores(2)
    sizes: list[int] = []
    run = cores.pool.run

    def counted(calls: Any) -> Any:
        sizes.append(len(calls))
        return run(calls)

    cores.pool.run = counted  # type: ignore[method-assign]
    done: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cores.run)
        for _ in range(4):
            cores.enter()

        async def vm(i: int) -> None:
            done.append(await cores.slice(lambda: i))

        async with trio.open_nursery() as vms:
            for i in range(4):
                vms.start_soon(vm, i)
        nursery.cancel_scope.cancel()
    assert sorted(done) == [0, 1, 2, 3]
    assert max(sizes) == 2 and sum(sizes) == 4
