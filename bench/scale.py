"""Scale: N firmware guests on one switch, each pinging a neighbour (half run `ping`, half
`udpecho`), from creating the first VM to the last ping summary; and the memory it took.
The reference, in the same run: N `sleep` guests without a network that live about as long.
Then idle cost: K `udpecho` guests on a switch, idle, against K idle `sleep` guests (no
network) in the same run: host CPU (getrusage, user + system) over a fixed wall time, per
guest in % of a core, and the ratio.

    python bench/scale.py [--guests 100] [--pings 3] [--idle 20] [--idle-seconds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hv
from hv.lab import LabRun, parse_lab, run_lab
from netfabric.switch import Switch


def lab_text(guests: int, pings: int) -> str:
    parts = ["[switches.lan]\n"]
    for i in range(guests // 2):
        server, client = 2 * i + 2, 2 * i + 3
        sip = f"10.0.{server >> 8}.{server & 255}"
        cip = f"10.0.{client >> 8}.{client & 255}"
        parts.append(
            f'[vms.s{i}]\nkernel = "udpecho"\nmem = "16M"\n'
            f'nics = [{{switch = "lan", ip = "{sip}/16"}}]\n'
            f'[vms.c{i}]\nkernel = "ping"\nmem = "16M"\n'
            f'append = "peer={sip} count={pings} interval=100"\n'
            f'nics = [{{switch = "lan", ip = "{cip}/16"}}]\n'
        )
    return "".join(parts)


def reference_text(guests: int, pings: int) -> str:
    """The same number of guests without a network: `sleep` guests that live about as long
    as a ping client (``pings`` sleeps of 100 ms)."""
    return "".join(
        f'[vms.r{i}]\nkernel = "sleep"\nmem = "16M"\nappend = "ms=100 count={pings}"\n'
        for i in range(guests)
    )


async def timed_lab(text: str, wait_for: str) -> tuple[float, float, float, LabRun]:
    """(seconds to start every VM, seconds until every VM whose name starts with
    ``wait_for`` has ended, host CPU seconds, the run) for the lab in ``text``."""
    # Real time, as the figures in docs/BENCHMARKS.md were measured (what the host does with
    # N guests); HV_SCALE_CLOCK=virtual measures the labs' default instead.
    clock = os.environ.get("HV_SCALE_CLOCK", "real")
    spec = parse_lab(f'clock = "{clock}"\n' + text, Path.cwd(), "scale")
    until = frozenset(n for n in spec.vms if n.startswith(wait_for))
    result: list[int] = []
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:

        async def lab(task_status: trio.TaskStatus[LabRun]) -> None:
            result.append(await run_lab(spec, None, until=until, task_status=task_status))

        run: LabRun = await nursery.start(lab)
        started = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return started, total, cpu_seconds() - cpu0, run


async def main_async(guests: int, pings: int) -> None:
    started, total, cpu, run = await timed_lab(lab_text(guests, pings), "c")
    clients = [n for n in run.vms if n.startswith("c")]
    ok = sum(
        1
        for n in clients
        if f"{pings} sent, {pings} received".encode() in run.vms[n].console.transcript
    )
    rtts = sorted(
        int(us)
        for n in clients
        for us in re.findall(rb"time=(\d+) us", run.vms[n].console.transcript)
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
    if rtts:
        print(
            f"ping RTT: median {rtts[len(rtts) // 2] / 1000:.2f} ms, 90th percentile "
            f"{rtts[len(rtts) * 9 // 10] / 1000:.2f} ms, max {rtts[-1] / 1000:.2f} ms"
        )
    print(f"{guests} guests started in {started:.2f} s; every ping round done in {total:.2f} s")
    print(f"host CPU (user + system): {cpu:.2f} s ({100 * cpu / total:.0f} % of a core)")
    print(f"clients with all {pings} replies: {ok} of {len(clients)}; peak RSS {rss} MiB")
    ref_started, ref_total, ref_cpu, _ = await timed_lab(reference_text(guests, pings), "r")
    print(
        f"reference: {guests} sleep guests without a network started in {ref_started:.2f} s, "
        f"all done in {ref_total:.2f} s (host CPU {ref_cpu:.2f} s); networked/reference "
        f"{total / ref_total:.2f}"
    )
    print(f"scale: {guests} guests, {total:.2f} s to the last ping summary, {rss} MiB peak RSS")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def idle_cost(kind: str, count: int, seconds: float) -> tuple[float, int]:
    """(% of a core per guest, slices per guest) of ``count`` idle guests of ``kind``
    ("udpecho" on a switch, or "sleep") over ``seconds`` of wall time."""
    async with trio.open_nursery() as nursery:
        lan = await nursery.start(Switch("idle").run)
        vms: list[hv.Vm] = []
        for i in range(count):
            if kind == "udpecho":
                nic = hv.Nic(lan, ip=f"10.1.{i >> 8}.{(i & 255) + 1}/16")
                cfg = hv.VmConfig(
                    kernel=hv.guest_path("udpecho"), name=f"e{i}", mem_size=16 << 20, nics=(nic,)
                )
            else:
                cfg = hv.VmConfig(
                    kernel=hv.guest_path("sleep"),
                    name=f"s{i}",
                    mem_size=16 << 20,
                    cmdline="ms=3600000 count=1",
                )
            vms.append(await nursery.start(hv.run_vm, cfg))
        ready = b"udpecho: echoing" if kind == "udpecho" else b"sleep: 1 x"
        for vm in vms:
            await vm.console.wait_for(ready)
        await trio.sleep(0.5)  # every guest in its wfi
        slices0 = sum(vm.stats["slices"] for vm in vms)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        await trio.sleep(seconds)
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
        slices = sum(vm.stats["slices"] for vm in vms) - slices0
        nursery.cancel_scope.cancel()
    return 100 * cpu / wall / count, slices // count


async def idle_async(count: int, seconds: float) -> None:
    net, net_slices = await idle_cost("udpecho", count, seconds)
    ref, ref_slices = await idle_cost("sleep", count, seconds)
    print(
        f"idle: {count} udpecho guests on a switch: {net:.3f} % of a core each "
        f"({net_slices} slices each in {seconds:g} s)"
    )
    print(
        f"idle: {count} sleep guests (reference): {ref:.3f} % of a core each "
        f"({ref_slices} slices each); ratio networked/sleep {net / ref if ref else 0:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guests", type=int, default=100, help="guests, half pinging (default 100)")
    ap.add_argument("--pings", type=int, default=3, help="pings per client (default 3)")
    ap.add_argument("--idle", type=int, default=20, help="idle guests of each kind (0: skip)")
    ap.add_argument("--idle-seconds", type=float, default=3.0, help="idle wall time measured")
    args = ap.parse_args()
    if args.guests:
        trio.run(main_async, args.guests, args.pings)
    if args.idle:
        trio.run(idle_async, args.idle, args.idle_seconds)


if __name__ == "__main__":
    main()
