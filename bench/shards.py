"""A lab over two processes (hv.lab._shards): what the shard boundary costs.

a. TCP across the boundary: two Linux guests on one switch, `traffic send -t` from a to
   `traffic recv -t -1` on b (the userland's throughput tool), once in one process and once
   split over two MPI ranks (a on shard 0, b on shard 1). Figures: the guest's own Mbit/s
   (virtual time: what the network gives; the boundary adds the lookahead W each way), the
   bytes per host second of the whole run (what the host gives), and their ratios
   (sharded / one process; the issue's goal: >= 0.8x).
b. The window barrier: two CPU-bound `cpu` guests with NICs on one switch (so each bounds
   the other: a window every W of guest time), one process (--jobs 1 and 2) against two
   shards. Figures: wall time and its ratio, rounds per second, and the host time each
   shard spent in the window's exchange (waiting for the other included) per round.

Each sharded run is this script under mpiexec (``_rank``: run_lab with a Mesh, every rank
writing its stats); the one-process runs are run_lab in this process.

    python bench/shards.py [--bytes 20000000] [--iters 300] [--repeat 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from hv.lab import LabRun, Mesh, launch_argv, parse_lab, run_lab, with_clock

TCP = re.compile(rb"traffic: received from [\d.]+: (\d+) bytes in ([\d.]+) s = ([\d.]+) Mbit/s")


def tcp_lab(nbytes: int) -> str:
    a = f"sleep 1; traffic send -t 10.0.0.2 {nbytes}; poweroff"
    b = "traffic recv -t -1; poweroff"
    return (
        '[switches.lan]\n'
        f'[vms.a]\nkernel = "linux"\nshard = 0\nappend = \'hv.run="{a}"\'\n'
        'nics = [{ switch = "lan", ip = "10.0.0.1/24" }]\n'
        f'[vms.b]\nkernel = "linux"\nshard = 1\nappend = \'hv.run="{b}"\'\n'
        'nics = [{ switch = "lan", ip = "10.0.0.2/24" }]\n'
    )  # fmt: skip


def cpu_lab(iters: int) -> str:
    return "[switches.lan]\n" + "".join(
        f'[vms.c{i}]\nkernel = "cpu"\nshard = {i}\nappend = "iters={iters}"\n'
        f'nics = [{{ switch = "lan", ip = "10.0.0.{i + 1}/24" }}]\n'
        for i in range(2)
    )


async def _lab(text: str, folder: Path, mesh: Mesh | None, jobs: int | None) -> dict[str, Any]:
    spec = parse_lab(text, folder, "shards")
    if jobs is not None:
        spec = with_clock(spec, jobs=jobs)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        run: LabRun = await nursery.start(functools.partial(run_lab, spec, mesh=mesh))
        await run.wait()
    wall = time.perf_counter() - start
    assert run.timeline is not None
    out: dict[str, Any] = {"wall_s": wall, "timeline": run.timeline.stats()}
    out["consoles"] = {
        n: vm.console.transcript.decode(errors="replace") for n, vm in run.vms.items()
    }
    if run.shards is not None:
        out["shards"] = run.shards.stats()
    return out


def one_process(text: str, jobs: int | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        return trio.run(_lab, text, Path(d), None, jobs)


def sharded(text: str, n: int = 2) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as d:
        lab, out = Path(d) / "lab.toml", Path(d) / "out"
        lab.write_text(text)
        argv = [*launch_argv([], n)[:-3], sys.executable, __file__, "_rank", str(lab), str(out)]
        subprocess.run(argv, check=True, timeout=1800)
        return [json.loads(Path(f"{out}.{k}.json").read_text()) for k in range(n)]


def _rank(lab: str, out: str) -> None:
    mesh = Mesh()
    got = trio.run(_lab, Path(lab).read_text(), Path(lab).parent, mesh, None)
    Path(f"{out}.{mesh.rank}.json").write_text(json.dumps(got))
    mesh.close()


def tcp_figures(runs: list[dict[str, Any]], nbytes: int) -> tuple[float, float]:
    text = "".join(r["consoles"].get("b", "") for r in runs).encode()
    m = TCP.search(text)
    if m is None:
        raise SystemExit(f"no traffic figure:\n{text[-2000:]!r}")
    wall = max(r["wall_s"] for r in runs)
    return float(m.group(3)), nbytes * 8 / wall / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bytes", type=int, default=20_000_000, help="TCP bytes (default 20 MB)")
    ap.add_argument("--iters", type=int, default=300, help="each cpu guest's iters")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    print(f"a. TCP {args.bytes} bytes, Linux a -> b on one switch")
    guest1, host1, guest2, host2 = [], [], [], []
    for _ in range(args.repeat):
        g, h = tcp_figures([one_process(tcp_lab(args.bytes))], args.bytes)
        guest1.append(g)
        host1.append(h)
        g, h = tcp_figures(sharded(tcp_lab(args.bytes)), args.bytes)
        guest2.append(g)
        host2.append(h)
    for name, one, two in (("guest Mbit/s (virtual)", guest1, guest2),
                           ("host Mbit/s (wall)", host1, host2)):  # fmt: skip
        ratios = [b / a for a, b in zip(one, two, strict=True)]
        print(
            f"   {name:<24} one process {min(one):8.1f}-{max(one):8.1f}   two shards "
            f"{min(two):8.1f}-{max(two):8.1f}   ratio {min(ratios):.2f}-{max(ratios):.2f}x"
        )

    print(f"b. the window barrier: 2 cpu guests (iters={args.iters}) with NICs on one switch")
    for _ in range(args.repeat):
        j1 = one_process(cpu_lab(args.iters), jobs=1)
        j2 = one_process(cpu_lab(args.iters), jobs=2)
        sh = sharded(cpu_lab(args.iters))
        wall = max(r["wall_s"] for r in sh)
        rounds = [r["timeline"]["rounds"] for r in sh]
        exch = [r["shards"]["wait_s"] / max(1, r["shards"]["exchanges"]) * 1e6 for r in sh]
        share = [r["shards"]["wait_s"] / r["wall_s"] for r in sh]
        print(
            f"   one process jobs=1 {j1['wall_s']:.2f} s, jobs=2 {j2['wall_s']:.2f} s; two "
            f"shards {wall:.2f} s ({j1['wall_s'] / wall:.2f}x jobs=1, "
            f"{j2['wall_s'] / wall:.2f}x jobs=2)\n"
            f"   rounds: one process {j1['timeline']['rounds']}, shards {rounds} "
            f"({statistics.mean(rounds) / wall:.0f}/s); exchange per round "
            f"{', '.join(f'{x:.0f}' for x in exch)} us (waiting included), "
            f"{', '.join(f'{x:.0%}' for x in share)} of each shard's wall time"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["_rank"]:
        _rank(sys.argv[2], sys.argv[3])
    else:
        main()
