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

import pytest
import trio
import trio.testing

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
