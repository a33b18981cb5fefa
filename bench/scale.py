"""Scale: N firmware guests on one switch, each pinging a neighbour (half run `ping`, half
`udpecho`), from creating the first VM to the last ping summary; and the memory it took.

    python bench/scale.py [--guests 100] [--pings 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hv.lab._runner import LabRun, run_lab
from hv.lab._spec import parse_lab


def lab_text(guests: int, pings: int) -> str:
    parts = ["[switches.lan]\n"]
    for i in range(guests // 2):
        server, client = 2 * i + 2, 2 * i + 3
        parts.append(
            f'[vms.s{i}]\nkernel = "udpecho"\nappend = "ip=10.0.{server >> 8}.{server & 255}/16"\n'
            f'mem = "16M"\nnics = [{{switch = "lan"}}]\n'
            f'[vms.c{i}]\nkernel = "ping"\nmem = "16M"\n'
            f'append = "ip=10.0.{client >> 8}.{client & 255}/16 '
            f'peer=10.0.{server >> 8}.{server & 255} count={pings} interval=100"\n'
            f'nics = [{{switch = "lan"}}]\n'
        )
    return "".join(parts)


async def main_async(guests: int, pings: int) -> None:
    spec = parse_lab(lab_text(guests, pings), Path.cwd(), "scale")
    clients = frozenset(n for n in spec.vms if n.startswith("c"))
    result: list[int] = []
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:

        async def lab(task_status: trio.TaskStatus[LabRun]) -> None:
            result.append(await run_lab(spec, None, until=clients, task_status=task_status))

        run: LabRun = await nursery.start(lab)
        started = time.perf_counter() - t0
    total = time.perf_counter() - t0
    ok = sum(
        1
        for n in clients
        if f"{pings} sent, {pings} received".encode() in run.vms[n].console.transcript
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    print(f"{guests} guests started in {started:.2f} s; every ping round done in {total:.2f} s")
    print(f"clients with all {pings} replies: {ok} of {len(clients)}; peak RSS {rss} MiB")
    print(f"scale: {guests} guests, {total:.2f} s to the last ping summary, {rss} MiB peak RSS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, default=100, help="guests, half pinging (default 100)")
    ap.add_argument("--pings", type=int, default=3, help="pings per client (default 3)")
    args = ap.parse_args()
    trio.run(main_async, args.guests, args.pings)


if __name__ == "__main__":
    main()
