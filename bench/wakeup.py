"""Wake-up latency: from a device raising its IRQ line in another trio task to the guest's
interrupt handler running, for a guest asleep in ``wfi`` and for a guest busy in a slice.

The device (tests/test_board.py's ``Doorbell``) raises its line from a task of its own and
timestamps the handler's acknowledging MMIO write; the guest is a hand-assembled kernel that
enables the device's PLIC source and then sleeps (or spins). The reference is a busy-spinning
guest: it can only take the interrupt when its slice ends, so its figure is bounded by the
quantum. Also measures the cost of a host write into guest RAM (the DMA accessor, which
records written pages so their translated code is dropped before the next slice).

    python bench/wakeup.py [--rings 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_board import Doorbell, irq_waiter_kernel  # type: ignore[import-not-found]  # noqa: E402

import hv  # noqa: E402
from hv.hw import GuestMemory  # noqa: E402


async def latencies(busy: bool, rings: int) -> list[float]:
    bell = Doorbell(rings=rings)
    cfg = hv.VmConfig(kernel=irq_waiter_kernel(busy=busy), devices=(bell,))
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
        while len(bell.latency) < rings:
            await trio.sleep(0.05)
        vm.stop()
    return list(bell.latency)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def host_write_cost(n: int = 200_000) -> tuple[float, float]:
    """(us per 1500-byte write, us per 8-byte write) through the DMA accessor."""
    mem = GuestMemory(0x8000_0000, 64 << 20)
    frame = bytes(1500)
    t = time.perf_counter()
    for i in range(n):
        mem.write(0x8000_0000 + (i % 4096) * 4096, frame)
    big = (time.perf_counter() - t) / n * 1e6
    mem.take_host_writes()
    t = time.perf_counter()
    for i in range(n):
        mem.write_u64(0x8000_0000 + (i % 4096) * 8, i)
    small = (time.perf_counter() - t) / n * 1e6
    mem.close()
    return big, small


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rings", type=int, default=200, help="interrupts per case (default 200)")
    args = ap.parse_args()
    print("IRQ raised in another task -> guest handler (ms)")
    print(f"{'guest':<22}{'min':>8}{'median':>8}{'p99':>8}{'max':>8}")
    rows = {}
    for busy in (False, True):
        lat = trio.run(latencies, busy, args.rings)
        name = "busy in a slice" if busy else "asleep in wfi"
        rows[name] = lat
        ms = [x * 1e3 for x in lat]
        cells = [min(ms), statistics.median(ms), pct(ms, 0.99), max(ms)]
        print(f"{name:<22}" + "".join(f"{c:8.3f}" for c in cells))
    big, small = host_write_cost()
    print(f"host write into guest RAM: {big:.2f} us per 1500 B, {small:.2f} us per u64")
    asleep = statistics.median(rows["asleep in wfi"]) * 1e3
    running = statistics.median(rows["busy in a slice"]) * 1e3
    print(f"wakeup: wfi median {asleep:.3f} ms (goal < 1 ms); busy median {running:.3f} ms")


if __name__ == "__main__":
    main()
