"""Several host cores: a lab's compute-bound guests on 1..N host threads (hv.hw._parallel).

A virtual-time lab of K bundled `cpu` guests (no NICs; each runs the same CRC32 and integer
workload, `iters=I`) runs in this process with `jobs=1` and with `jobs=J` for J = 2..K,
alternating, and the figure is the throughput ratio against jobs=1 measured in the same
invocation (wall time of the whole lab, from the first slice to the last guest's power-off).
Every run's checksums must agree with the one-job run's (the runs are the same run).

    python bench/parallel.py [--guests K] [--iters I] [--repeat R] [--clock virtual|real]

On virtual time (the default, as for labs) a round's VMs run as one batch of the pool; on
real time (``--clock real``) the running VMs' slices do (hv._cores).

The issue's goal: two guests on a 2-core machine at >= 1.8x one core. The scaling curve goes
up to the machine's cores (K defaults to them, at least 2).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench import _common as C
from hv.hw import default_jobs
from hv.lab import open_lab, parse_lab


def lab_text(guests: int, iters: int, clock: str = "virtual") -> str:
    out = [f'clock = "{clock}"\n']
    for i in range(guests):
        out.append(f'[vms.c{i}]\nkernel = "cpu"\nappend = "iters={iters}"\n')
    return "\n".join(out)


async def one_run(text: str, folder: Path, jobs: int) -> tuple[float, list[str]]:
    spec = parse_lab(text, folder, "par")
    start = time.perf_counter()
    async with open_lab(spec, jobs=jobs) as lab:
        await lab.wait()
        took = time.perf_counter() - start
        sums = sorted(
            m.group(0).decode()
            for vm in lab.vms.values()
            if (m := re.search(rb"checksum: 0x[0-9a-f]+", vm.console.transcript))
        )
    return took, sums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cores = default_jobs()
    ap.add_argument(
        "--guests", type=int, default=max(2, cores), help=f"K (default {max(2, cores)})"
    )
    ap.add_argument("--iters", type=int, default=400, help="each guest's iters (default 400)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clock", choices=("virtual", "real"), default="virtual")
    args = ap.parse_args()
    folder = Path("/tmp/hv-bench-parallel")
    folder.mkdir(exist_ok=True)
    text = lab_text(args.guests, args.iters, args.clock)
    jobs_list = list(range(1, args.guests + 1))
    times: dict[int, list[float]] = {j: [] for j in jobs_list}
    reference: list[str] | None = None
    print(
        f"{args.guests} cpu guests, iters={args.iters}, {args.clock} time, host cores {cores}, "
        f"{C.bytecode_note()}"
    )
    for _ in range(args.repeat):
        for j in jobs_list:
            took, sums = trio.run(one_run, text, folder, j)
            if reference is None:
                reference = sums
            if sums != reference or len(sums) != args.guests:
                raise SystemExit(f"jobs={j}: checksums {sums} differ from {reference}")
            times[j].append(took)
    base = C.median(times[1])
    print(f"{'jobs':>4}  {'median s':>9}  {'range s':>15}  throughput vs 1 job")
    for j in jobs_list:
        med = C.median(times[j])
        lo, hi = min(times[j]), max(times[j])
        ratio = base / med
        note = f"(goal >= 1.8: {'met' if ratio >= 1.8 else 'NOT met'})" if j == 2 else ""
        print(f"{j:>4}  {med:9.3f}  {lo:6.3f}-{hi:6.3f}  {ratio:5.2f}x {note}")


if __name__ == "__main__":
    main()
