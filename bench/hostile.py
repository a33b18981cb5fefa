"""Hostile guests: what exit storms do to a neighbour and to the event loop, how host time is
shared between a CPU-bound and an exit-bound guest, and how much RAM a rebooting guest holds.

1. A sleeper (the `sleep` guest, 20 x 50 ms, timed by the host) beside a guest storming one
   kind of exit (the `exits` guest: sbi, mmio, rdtime, trap), with a task measuring
   event-loop lag (a 1 ms sleep's lateness). Reference: the sleeper alone.
2. Fairness: the `cpu` guest beside a trap-storming guest for 2 s: each VM's share of the
   host time spent in slices, and the instructions each ran.
3. RAM: peak RSS of this process across 20 cold reboots of a 512 MiB guest that touches
   480 MiB each boot (in a child process, so the figure is that scenario's alone).

    python bench/hostile.py [--reboots 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hv  # noqa: E402

KINDS = ("sbi", "mmio", "rdtime", "trap")


async def sleeper_beside(kind: str | None) -> tuple[float, list[float]]:
    lags: list[float] = []
    async with trio.open_nursery() as nursery:
        storm = None
        if kind is not None:
            cfg = hv.VmConfig(
                kernel=hv.guest_path("exits"), cmdline=f"kind={kind} n=1000000000", name=kind
            )
            storm = await nursery.start(hv.run_vm, cfg)

        async def probe() -> None:
            while True:
                t = time.perf_counter()
                await trio.sleep(0.001)
                lags.append(time.perf_counter() - t - 0.001)

        nursery.start_soon(probe)
        t0 = time.perf_counter()
        cfg = hv.VmConfig(kernel=hv.guest_path("sleep"), cmdline="ms=50 count=20", name="sleep")
        sleeper: hv.Vm = await nursery.start(hv.run_vm, cfg)
        await sleeper.wait()
        took = time.perf_counter() - t0
        if storm is not None:
            storm.stop()
        nursery.cancel_scope.cancel()
    return took, lags


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * (len(s) - 1)))]


async def fairness(seconds: float) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    async with trio.open_nursery() as nursery:
        cpu = await nursery.start(
            hv.run_vm,
            hv.VmConfig(kernel=hv.guest_path("cpu"), cmdline="iters=1000000", name="cpu"),
        )
        storm = await nursery.start(
            hv.run_vm,
            hv.VmConfig(
                kernel=hv.guest_path("exits"), cmdline="kind=trap n=1000000000", name="trap"
            ),
        )
        await trio.sleep(seconds)
        for vm in (cpu, storm):
            out[vm.name] = dict(vm.stats)
            vm.stop()
    return out


RSS_CHILD = r"""
import resource, sys, trio
sys.path.insert(0, sys.argv[1])
from rvasm import touch_ram_kernel
from hv import VmConfig, run_vm

async def main(n):
    cfg = VmConfig(kernel=touch_ram_kernel(480, 0x7777), mem_size=512 << 20)
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, cfg)
        while vm.stats.get("reboots", 0) < n:
            await trio.sleep(0.01)
        vm.stop()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)

trio.run(main, int(sys.argv[2]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reboots", type=int, default=20, help="cold reboots (default 20)")
    args = ap.parse_args()

    print("1. a sleeper (20 x 50 ms) beside a storm; event-loop lag of a 1 ms sleep")
    print(f"{'storm':<10}{'sleeper s':>10}{'lag p50 ms':>12}{'p99 ms':>9}{'max ms':>9}")
    worst_took, worst_p99 = 0.0, 0.0
    for kind in (None, *KINDS):
        took, lags = trio.run(sleeper_beside, kind)
        p50, p99, top = (pct(lags, q) * 1e3 for q in (0.5, 0.99, 1.0))
        print(f"{kind or '(none)':<10}{took:10.3f}{p50:12.3f}{p99:9.3f}{top:9.3f}")
        if kind is not None:
            worst_took, worst_p99 = max(worst_took, took), max(worst_p99, p99)

    print("\n2. fairness: the cpu guest beside a trap storm, 2 s")
    stats = trio.run(fairness, 2.0)
    total = sum(s["host_ns"] for s in stats.values()) or 1
    for name, s in stats.items():
        share = s["host_ns"] / total
        print(
            f"{name:<6} host share {share:6.1%}  slices {s['slices']:6}  "
            f"late stops {s['late_stops']:6}  guest insns {s['guest_insns'] / 1e6:8.1f} M"
        )

    print(f"\n3. RAM: {args.reboots} cold reboots of a 512 MiB guest touching 480 MiB each boot")
    r = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, str(ROOT / "tests"), str(args.reboots)],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = int(r.stdout.split()[-1])
    print(f"peak RSS {peak} MiB")
    print(
        f"hostile: sleeper beside storms worst {worst_took:.3f} s (alone 1.0 s; goal <= 1.5), "
        f"lag p99 worst {worst_p99:.2f} ms (goal < 5), reboot peak RSS {peak} MiB"
    )


if __name__ == "__main__":
    main()
