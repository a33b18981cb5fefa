"""Virtual time (``clock = "virtual"``): speed on an idle lab, fidelity under load, cost.

Every part runs the same lab on virtual time and on real time (the reference) in this one
process (``run_lab``), alternating, ``--repeat`` times, and prints each run, the range and the
ratio. Wall times are from ``run_lab``'s start to its end (boot included; the interpreter's
start-up is not). Virtual-time runs also print the timeline's rounds (``Timeline.stats()``).

idle   10 firmware `sleep` guests, each waking every second (``ms=1000 count=60``): wall
       seconds for the 60 s of virtual time (goal <= 2 s, >= 30x real time). The real-time
       reference sleeps ``--real-count`` times (default 10: 10 s; scaled to 60 in the ratio).
ping   the `ping` guest pings a `udpecho` guest through a [[links]] cable with ``impair =
       { delay = "20ms" }`` (20 ms each way): the min/avg/max of the RTTs the guest reports
       (without seq 1, which waits for ARP across the link too: two round trips), alone and
       beside ``--hogs`` `cpu` guests (on a switch of their own), real and virtual (goal in
       virtual time: 40.0-40.5 ms in both cases).
tcp    two Linux guests, `traffic send -t` / `traffic recv -t -1` across a link with ``impair =
       { rate = "50Mbit", delay = "20ms", queue = "1MiB" }``, alone and beside ``--hogs`` `cpu`
       guests, real and virtual: goodput as a fraction of 50 Mbit/s (goal >= 0.97 virtual) and
       of TCP's ceiling at that rate (1448 payload bytes per 1514-byte frame: 0.956 of it).
       In virtual time the guest measures in its own time, which is what counts.
busy   ``--guests`` `cpu` guests (``iters=--iters``) doing a fixed amount of work, with a NIC
       each on one switch (no traffic) and on no switch: wall time virtual vs real (goal:
       virtual <= 1.10x real).

    python bench/vtime.py idle [--repeat 3] [--guests 10] [--count 60] [--real-count 10]
    python bench/vtime.py ping [--repeat 3] [--pings 20] [--interval 20] [--hogs 10]
    python bench/vtime.py tcp  [--repeat 2] [--bytes 10000000] [--queue 1MiB] [--hogs 10]
    python bench/vtime.py busy [--repeat 3] [--guests 4] [--iters 300]
    python bench/vtime.py all

``--clock virtual|real`` runs one clock only (ping, tcp): a virtual run gives the same figures
every time, beside the CPU guests or not. ``--lookahead US`` is an experiment: it gives the
lab's timeline another lookahead than the default (the minimum latency of a NIC's
cable), to measure what the lookahead costs (busy) and what it changes (ping: each RTT is
40 ms + 2 x the lookahead + ~4 us of the guests' own work).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.impair import GOODPUT_MAX, RATE, SUMMARY, TCP, link_text, rtts, tcp_lab
from hv._timeline import DEFAULT_LOOKAHEAD_PS
from hv.engine import _vcpu
from hv.hw import VirtualClock
from hv.lab import LabRun, _spec, parse_lab, run_lab

CLOCKS = ("virtual", "real")
RTT = re.compile(rb"rtt min/avg/max = (\d+)/(\d+)/(\d+) us")
SLEPT = re.compile(rb"sleep: done in ([\d.]+) ms")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


@dataclass
class Result:
    wall: float
    consoles: dict[str, bytes]
    status: int
    stats: dict[str, float] = field(default_factory=dict)


def lab_text(clock: str, body: str) -> str:
    head = f'clock = "{clock}"\nseed = 1\n' if clock == "virtual" else 'clock = "real"\n'
    return head + body


async def _run(text: str, until: set[str] | None, timeout: float) -> Result:
    spec = parse_lab(text, Path.cwd(), "vtime")
    box: list[LabRun] = []
    status = 0

    async def lab(task_status: trio.TaskStatus[LabRun]) -> None:
        nonlocal status
        status = await run_lab(
            spec, None, until=frozenset(until) if until else None, task_status=task_status
        )

    t0 = time.perf_counter()
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            box.append(await nursery.start(lab))
    wall = time.perf_counter() - t0
    run = box[0]
    stats: dict[str, float] = {}
    if run.timeline is not None:  # after the end, the guests' own clocks say how far they got
        stats = run.timeline.stats()
        clocks = [vm.machine.clock for vm in run.vms.values()]
        stats["virtual_s"] = max(c.ps for c in clocks if isinstance(c, VirtualClock)) / 1e12
    return Result(wall, {n: vm.console.transcript for n, vm in run.vms.items()}, status, stats)


def run(clock: str, body: str, until: set[str] | None = None, timeout: float = 900) -> Result:
    return trio.run(_run, lab_text(clock, body), until, timeout)


def tl_note(r: Result) -> str:
    if not r.stats:
        return ""
    s = r.stats
    return f" [virtual {s['virtual_s']:.2f} s, {s['rounds']:.0f} rounds, {s['events']:.0f} events]"


def rng(xs: Sequence[float], fmt: str = "{:.3f}") -> str:
    lo, hi = min(xs), max(xs)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


def hogs(n: int, iters: int, switch: str | None) -> str:
    nic = f'nics = [{{ switch = "{switch}" }}]\n' if switch else ""
    return "".join(
        f'[vms.cpu{i}]\nkernel = "cpu"\nmem = "16M"\nappend = "iters={iters}"\n{nic}'
        for i in range(n)
    )


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table."""
    for cells in (head, ["---"] * len(head), *rows):
        print("| " + " | ".join(cells) + " |")


def report(clock: str, case: str, what: str, r: Result) -> None:
    print(f"{clock:8} {case}: {what}, wall {r.wall:.2f} s{tl_note(r)} ({load()})", flush=True)


def clocks(args: argparse.Namespace) -> Sequence[str]:
    return CLOCKS if args.clock == "both" else (args.clock,)


def alternate(
    repeat: int,
    fn: Callable[[str, int, int], None],
    cases: Sequence[int] = (0,),
    clocks: Sequence[str] = CLOCKS,
) -> None:
    """fn(clock, case, i) for each case: virtual, real, virtual, real, ..."""
    for case in cases:
        for i in range(repeat):
            for clock in clocks:
                fn(clock, case, i)


# -- idle -------------------------------------------------------------------------------------


def idle(args: argparse.Namespace) -> None:
    print(f"## idle: {args.guests} sleep guests, ms=1000 ({load()})")
    walls: dict[str, list[float]] = {c: [] for c in CLOCKS}

    def body(count: int) -> str:
        return "".join(
            f'[vms.s{i}]\nkernel = "sleep"\nmem = "16M"\nappend = "ms=1000 count={count}"\n'
            for i in range(args.guests)
        )

    def one(clock: str, _: int, i: int) -> None:
        if clock == "real" and i >= args.real_repeat:
            return
        count = args.count if clock == "virtual" else args.real_count
        r = run(clock, body(count))
        slept = [float(m[1]) / 1000 for m in map(SLEPT.search, r.consoles.values()) if m]
        if len(slept) != args.guests or r.status != 0:
            raise SystemExit(f"idle {clock}: status {r.status}, {len(slept)} guests finished")
        walls[clock].append(r.wall)
        print(
            f"{clock:8} count={count}: wall {r.wall:.3f} s, guests slept {rng(slept)} s of "
            f"their time{tl_note(r)} ({load()})",
            flush=True,
        )

    alternate(args.repeat, one)
    v, real = walls["virtual"], walls["real"]
    per_s = [w / args.real_count for w in real]
    print(
        f"idle: {args.count} s virtual in {rng(v)} s wall (goal <= 2 s: "
        f"{'met' if max(v) <= 2 else 'NOT met' if min(v) > 2 else 'met in some runs'}); "
        f"{args.count / max(v):.1f}-{args.count / min(v):.1f}x real time; real-time reference "
        f"{rng(per_s)} s wall per guest second ({args.real_count} s run), so virtual/real "
        f"{min(v) / (max(per_s) * args.count):.3f}-{max(v) / (min(per_s) * args.count):.3f}"
    )


# -- ping -------------------------------------------------------------------------------------


def ping_body(pings: int, interval: int, nhogs: int, iters: int) -> str:
    text = link_text({"delay": "20ms"}) + (
        '[vms.echo]\nkernel = "udpecho"\nmem = "16M"\n'
        'nics = [{ switch = "wan", ip = "10.0.0.2/24" }]\n'
        '[vms.pinger]\nkernel = "ping"\nmem = "16M"\n'
        f'append = "peer=10.0.0.2 count={pings} interval={interval}"\n'
        'nics = [{ switch = "lan", ip = "10.0.0.1/24" }]\n'
    )
    if nhogs:
        text += "[switches.hogs]\n" + hogs(nhogs, iters, "hogs")
    return text


def ping(args: argparse.Namespace) -> None:
    print(
        f"## ping: 20 ms each way, {args.pings} pings {args.interval} ms apart, alone and beside "
        f"{args.hogs} cpu guests (iters={args.hog_iters}) ({load()})"
    )
    got: dict[tuple[str, int], list[tuple[float, float, float]]] = {}

    def one(clock: str, n: int, _: int) -> None:
        r = run(clock, ping_body(args.pings, args.interval, n, args.hog_iters), {"pinger"})
        out = r.consoles["pinger"]
        m, s, ms = RTT.search(out), SUMMARY.search(out), list(rtts(out).values())
        if m is None or s is None or not ms:
            raise SystemExit(f"ping {clock} hogs={n}: no summary:\n{out[-2000:]!r}")
        mam = (min(ms), sum(ms) / len(ms), max(ms))
        got.setdefault((clock, n), []).append(mam)
        summary = "/".join(f"{int(x) / 1000:.3f}" for x in m.groups())
        what = (
            f"rtt min/avg/max {mam[0]:.3f}/{mam[1]:.3f}/{mam[2]:.3f} ms without seq 1 (the "
            f"guest's summary, seq 1's ARP round trip included: {summary}), "
            f"{s[2].decode()}/{s[1].decode()} replies"
        )
        report(clock, f"hogs={n:2}", what, r)

    alternate(args.repeat, one, list(dict.fromkeys((0, args.hogs))), clocks(args))
    rows = []
    for (clock, n), xs in got.items():
        ok = "yes" if all(40.0 <= x <= 40.5 for t in xs for x in t) else "no"
        rows.append([clock, f"{n} cpu guests", *(rng([t[k] for t in xs]) for k in range(3)), ok])
    table(["clock", "beside", "min", "avg", "max", "all in 40.0-40.5"], rows)


# -- tcp --------------------------------------------------------------------------------------


def tcp(args: argparse.Namespace) -> None:
    imp = {"rate": "50Mbit", "queue": args.queue} | ({"delay": args.delay} if args.delay else {})
    print(
        f"## tcp: {args.bytes} B across {imp}; alone and beside {args.hogs} cpu guests ({load()})"
    )
    got: dict[tuple[str, int], list[float]] = {}

    def one(clock: str, n: int, _: int) -> None:
        body = tcp_lab(imp, args.bytes)
        if n:
            body += "[switches.hogs]\n" + hogs(n, args.hog_iters, "hogs")
        r = run(clock, body, {"a", "b"})
        text = r.consoles["b"].decode(errors="replace")
        m = TCP.search(text)
        if m is None:
            raise SystemExit(f"tcp {clock} hogs={n}: no figure:\n{text[-2000:]}")
        mbit = float(m[3])
        got.setdefault((clock, n), []).append(mbit)
        what = (
            f"{mbit:.2f} Mbit/s = {mbit * 1e6 / RATE:.3f} of 50 Mbit/s "
            f"({mbit * 1e6 / GOODPUT_MAX:.3f} of the ceiling)"
        )
        report(clock, f"hogs={n:2}", what, r)

    alternate(args.repeat, one, list(dict.fromkeys((0, args.hogs))), clocks(args))
    rows = [
        [clock, f"{n} cpu guests", rng(xs, "{:.1f}")]
        + [rng([x * 1e6 / d for x in xs]) for d in (RATE, GOODPUT_MAX)]
        for (clock, n), xs in got.items()
    ]
    table(["clock", "beside", "goodput, Mbit/s", "/ 50 Mbit/s", "/ ceiling 47.8"], rows)


# -- busy -------------------------------------------------------------------------------------


class EngineTime:
    """Times every entry into the engine (``uc_emu_start``) while it is open: what a run spends
    running guest code, and so what it spends around it (the slices' bookkeeping)."""

    def __enter__(self) -> EngineTime:
        self.seconds = 0.0
        self.calls = 0
        self._real = vars(_vcpu)["_emu_start"]

        def timed(*args: Any) -> Any:
            t = time.perf_counter()
            try:
                return self._real(*args)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        vars(_vcpu)["_emu_start"] = timed
        return self

    def __exit__(self, *exc: object) -> None:
        vars(_vcpu)["_emu_start"] = self._real


def busy(args: argparse.Namespace) -> None:
    print(f"## busy: {args.guests} cpu guests, iters={args.iters} each ({load()})")
    for switch in ("sw", None):
        busy_case(args, switch)


def busy_case(args: argparse.Namespace, switch: str | None) -> None:
    where = "one switch" if switch else "no switch"
    body = (f"[switches.{switch}]\n" if switch else "") + hogs(args.guests, args.iters, switch)
    walls: dict[str, list[float]] = {c: [] for c in CLOCKS}
    sums: set[bytes] = set()

    def one(clock: str, _: int, __: int) -> None:
        with EngineTime() as engine:
            r = run(clock, body)
        if r.status != 0:
            raise SystemExit(f"busy {clock}: status {r.status}")
        sums.update(re.findall(rb"checksum: 0x[0-9a-f]+", b"".join(r.consoles.values())))
        walls[clock].append(r.wall)
        report(clock, where, "done", r)
        outside = r.wall - engine.seconds
        print(
            f"    {engine.seconds:.3f} s in the engine over {engine.calls} slices; outside it "
            f"{outside:.3f} s = {outside / max(1, engine.calls) * 1e6:.1f} us a slice"
        )

    alternate(args.repeat, one)
    v, real = walls["virtual"], walls["real"]
    ratios = [a / b for a, b in zip(v, real, strict=True)]
    if len(sums) != 1:
        raise SystemExit(f"busy: the guests' checksums differ: {sums}")
    print(
        f"busy, {where}: virtual {rng(v)} s, real {rng(real)} s, virtual/real by pair "
        f"{rng(ratios)} (best/best {min(v) / min(real):.3f}; goal <= 1.10)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="part", required=True)
    parts = {n: sub.add_parser(n, help=f"the {n} part") for n in ("idle", "ping", "tcp", "busy")}
    parts["all"] = sub.add_parser("all", help="every part with its defaults")
    for name, p in parts.items():
        n = 2 if name == "tcp" else 3
        p.add_argument("--repeat", type=int, default=n, help=f"runs of each clock ({n})")
        p.add_argument(
            "--lookahead",
            type=int,
            metavar="US",
            help="an experiment: the lab timeline's lookahead in microseconds (default: the "
            "core's, hv._timeline.DEFAULT_LOOKAHEAD_PS)",
        )
    for p in (parts["idle"], parts["all"]):
        p.add_argument("--guests", type=int, default=10, help="sleep guests (10)")
        p.add_argument("--count", type=int, default=60, help="virtual: wake-ups (60)")
        p.add_argument("--real-count", type=int, default=10, help="real time: wake-ups (10)")
        p.add_argument("--real-repeat", type=int, default=1, help="real-time runs (1)")
    for p in (parts["ping"], parts["tcp"], parts["all"]):
        p.add_argument(
            "--clock", choices=("both", *CLOCKS), default="both", help="which clocks to run (both)"
        )
        p.add_argument("--hogs", type=int, default=10, help="cpu guests beside (10)")
        p.add_argument("--hog-iters", type=int, default=100_000, help="their iters (100000)")
    for p in (parts["ping"], parts["all"]):
        p.add_argument("--pings", type=int, default=20, help="pings (20)")
        p.add_argument("--interval", type=int, default=20, help="ms between pings (20)")
    for p in (parts["tcp"], parts["all"]):
        p.add_argument("--bytes", type=int, default=10_000_000, help="TCP bytes (10 MB)")
        p.add_argument("--queue", default="1MiB", help="the rate limiter's queue (1MiB)")
        p.add_argument("--delay", default="20ms", help="the link's delay each way (20ms; '')")
    parts["busy"].add_argument("--guests", type=int, default=4, help="cpu guests (4)")
    parts["busy"].add_argument("--iters", type=int, default=300, help="their iters (300)")
    args = ap.parse_args(argv)
    if args.lookahead is not None:  # as a lab's `lookahead` key would (its default)
        vars(_spec)["DEFAULT_LOOKAHEAD_PS"] = args.lookahead * 1_000_000
    la = DEFAULT_LOOKAHEAD_PS if args.lookahead is None else args.lookahead * 1_000_000
    print(
        f"vtime: {args.part}, python {sys.version.split()[0]}, lookahead {la / 1e6:g} us, {load()}"
    )
    if args.part == "all":
        idle(args)
        ping(args)
        tcp(args)
        args.guests, args.iters, args.repeat = 4, 300, 3
        busy(args)
    else:
        {"idle": idle, "ping": ping, "tcp": tcp, "busy": busy}[args.part](args)


if __name__ == "__main__":
    main()
