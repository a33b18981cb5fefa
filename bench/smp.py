"""SMP guest throughput: the bundled ``smp`` guest's ``work=N`` mode (every hart runs the same
integer loop, no exits) on 1, 2, ... harts, in this process, timed from boot to power-off.

Prints, per hart count, the host time, the guest instructions run (all harts), and guest MIPS
(instructions per host second), and the speed-up over one hart, twice: with the harts in turn
on one host thread (``--jobs 1``, ``Machine.run_round``) and on up to ``--jobs`` threads (real
time's default: every core; hv.hw._parallel), alternating, in this one invocation. The issue's
goal for 2 harts on 2 host cores: >= 1.7x one hart.

    python bench/smp.py [--iters 20000000] [--harts 1,2,4] [--repeat 2] [--jobs N]
"""

from __future__ import annotations

import argparse
import time

import trio

from hv import VmConfig, run_vm
from hv.build import _guests


async def run_once(smp: int, iters: int, jobs: int | None) -> tuple[float, int]:
    kernel = _guests.build_guest("smp")
    config = VmConfig(kernel=kernel, smp=smp, cmdline=f"work={iters}", name="smp", jobs=jobs)
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
    p.add_argument("--jobs", type=int, default=None, help="host threads (default: every core)")
    args = p.parse_args()
    counts = [int(n) for n in args.harts.split(",")]
    modes = {"in turn": 1, "parallel": args.jobs}
    best: dict[tuple[str, int], tuple[float, int]] = {}
    for _ in range(args.repeat):
        for n in counts:  # alternating, so host noise spreads over all counts and modes
            for mode, jobs in modes.items():
                took, insns = trio.run(run_once, n, args.iters, jobs)
                if (mode, n) not in best or took < best[mode, n][0]:
                    best[mode, n] = (took, insns)
    one = best["in turn", counts[0]]
    base_mips = one[1] / one[0] / 1e6
    print(
        f"{'harts':>5} {'mode':>9} {'host s':>8} {'guest Minsn':>12} {'MIPS':>8} {'vs 1 hart':>10}"
    )
    for n in counts:
        for mode in modes:
            took, insns = best[mode, n]
            mips = insns / took / 1e6
            print(
                f"{n:>5} {mode:>9} {took:>8.3f} {insns / 1e6:>12.1f} {mips:>8.1f} "
                f"{mips / base_mips:>9.2f}x"
            )


if __name__ == "__main__":
    main()
