"""SMP guest throughput: the bundled ``smp`` guest's ``work=N`` mode (every hart runs the same
integer loop, no exits) on 1, 2, ... harts, in this process, timed from boot to power-off.

Prints, per hart count, the host time, the guest instructions run (all harts), and guest MIPS
(instructions per host second), and the speed-up over one hart. Today the harts of a machine
run in turn on one host thread (``Machine.run_round``), so the aggregate stays near one hart's;
a parallel run (harts on host threads) is what should raise it.

    python bench/smp.py [--iters 20000000] [--harts 1,2,4] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

import trio

from hv import VmConfig, run_vm
from hv.build import _guests


async def run_once(smp: int, iters: int) -> tuple[float, int]:
    config = VmConfig(
        kernel=_guests.build_guest("smp"), smp=smp, cmdline=f"work={iters}", name="smp"
    )
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, config)
        info = await vm.wait()
    took = time.perf_counter() - start
    out = vm.console.transcript.decode(errors="replace")
    if f"work: {smp} harts x {iters} iterations" not in out:
        raise SystemExit(f"smp={smp}: the guest did not finish its work ({info.reason}):\n{out}")
    return took, vm.stats["guest_insns"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20_000_000, help="loop iterations per hart")
    p.add_argument("--harts", default="1,2,4", help="hart counts to run (comma-separated)")
    p.add_argument("--repeat", type=int, default=2, help="runs per hart count (best is kept)")
    args = p.parse_args()
    counts = [int(n) for n in args.harts.split(",")]
    best: dict[int, tuple[float, int]] = {}
    for _ in range(args.repeat):
        for n in counts:  # alternating, so host noise spreads over all counts
            took, insns = trio.run(run_once, n, args.iters)
            if n not in best or took < best[n][0]:
                best[n] = (took, insns)
    one = best[counts[0]]
    base_mips = one[1] / one[0] / 1e6
    print(f"{'harts':>5} {'host s':>8} {'guest Minsn':>12} {'MIPS':>8} {'vs 1 hart':>10}")
    for n in counts:
        took, insns = best[n]
        mips = insns / took / 1e6
        print(f"{n:>5} {took:>8.3f} {insns / 1e6:>12.1f} {mips:>8.1f} {mips / base_mips:>9.2f}x")


if __name__ == "__main__":
    main()
