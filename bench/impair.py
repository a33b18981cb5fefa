"""Impairment accuracy, measured through guests: delay with jitter, loss, and a rate limit.

Two switches joined by one [[links]] entry whose ``impair`` applies to each direction, all in
one process (``run_lab`` in process, so the link's counters can be read while it runs):

a. delay 20 ms ± 5 ms (uniform jitter): the firmware `ping` guest on one side pings a
   firmware `udpecho` guest on the other, 1000 times, 5 ms apart. The measured RTTs against
   the expected distribution (the floor's samples plus two independent 20 ± 5 ms one-way
   delays), and the floor itself: the same lab with no impairment on the link. The link's
   own view of each ping (the delay it drew for the request and the reply, and how late its
   task handed each frame on) splits the difference between measured and expected.
b. loss 10 %: ten `ping` guests, 100 pings each, across the link. A round trip needs both
   directions, so the expected round-trip loss is 1 - 0.9² = 19 %; the per-direction loss
   comes from the link's counters (frames_in, dropped_loss). 95 % Wilson intervals.
c. rate 50 Mbit/s with a 20 ms delay: TCP from one Linux guest to the other with the
   userland's `traffic send -t` / `traffic recv -t -1`, against the same link with only a
   20 ms delay and with nothing; then other rate-limiter queue limits (--queues), and the
   same links with the guests' TCP buffers raised to --bufs bytes (tcp_rmem/tcp_wmem max;
   the image's default is 969408). A sampler reads the link's counters every 100 ms: the
   rate the limiter actually let through (median over the middle half of the transfer), how
   full its queue was, the frames b's port was given per second, and this process's CPU
   time over the same windows, and how long it waited for a CPU while runnable (both
   guests and the fabric share one thread: CPU + waiting near 100 % means the guests get
   less CPU than they ask for, and waiting means other processes had the box's cores). A
   rate limit decides per wire frame, so it resolves each 64 KiB TSO frame into the ~45
   frames it stands for; a bare delay does not.

    python bench/impair.py [--pings 1000] [--interval 5] [--loss-pings 1000] \\
        [--bytes 30000000] [--queues 64KiB,1MiB] [--bufs 4194304]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hv.lab import LabRun, parse_lab, run_lab
from netfabric.frame import Frame
from netfabric.impair import ImpairedDirection, direction_rng

REPLY = re.compile(rb"ping: reply from [\d.]+: seq=(\d+) time=(\d+) us")
SUMMARY = re.compile(rb"ping: [\d.]+: (\d+) sent, (\d+) received")
TCP = re.compile(r"traffic: received from [\d.]+: (\d+) bytes in ([\d.]+) s = ([\d.]+) Mbit/s")
DELAY, JITTER, LOSS, RATE = 0.020, 0.005, 0.10, 50e6
GOODPUT_MAX = RATE * 1448 / 1514  # TCP payload per full frame (timestamps on), rate on frames
SYSCTL = "/proc/sys/net/ipv4/tcp_"
Watch = Callable[[LabRun], Awaitable[None]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def md(*cells: object) -> None:
    """One row of a Markdown table."""
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def span(lo: float, hi: float) -> str:
    return f"[{100 * lo:.2f}, {100 * hi:.2f}] %"


def link_text(table: dict[str, Any] | None) -> str:
    text = '[switches.lan]\n[switches.wan]\n[[links]]\na = "lan"\nb = "wan"\n'
    if table:
        body = ", ".join(
            f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in table.items()
        )
        text += f"impair = {{ {body} }}\n"
    return text


def ping_lab(table: dict[str, Any] | None, clients: int, count: int, interval: int) -> str:
    parts = [
        link_text(table),
        '[vms.echo]\nkernel = "udpecho"\nmem = "16M"\n'
        'nics = [{ switch = "wan", ip = "10.0.0.2/24" }]\n',
    ]
    for i in range(clients):
        parts.append(
            f'[vms.p{i}]\nkernel = "ping"\nmem = "16M"\n'
            f'append = "peer=10.0.0.2 count={count} interval={interval}"\n'
            f'nics = [{{ switch = "lan", ip = "10.0.0.{10 + i}/24" }}]\n'
        )
    return "".join(parts)


def tcp_lab(table: dict[str, Any] | None, nbytes: int, bufs: int = 0) -> str:
    tune = ""
    if bufs:  # both guests: socket buffers up to `bufs` bytes
        tune = "".join(f"echo 4096 131072 {bufs} > {SYSCTL}{k}mem; " for k in ("r", "w"))
    a = f"{tune}sleep 1; traffic send -t 10.0.0.2 {nbytes}; poweroff"
    b = f"{tune}traffic recv -t -1; poweroff"
    return (
        link_text(table)
        + f'[vms.a]\nkernel = "linux"\nappend = \'hv.run="{a}"\'\n'
        + 'nics = [{ switch = "lan", ip = "10.0.0.1/24" }]\n'
        + f'[vms.b]\nkernel = "linux"\nappend = \'hv.run="{b}"\'\n'
        + 'nics = [{ switch = "wan", ip = "10.0.0.2/24" }]\n'
    )


async def _run(
    text: str, until: set[str], timeout: float, watch: Watch | None
) -> tuple[LabRun, dict[str, bytes]]:
    spec = parse_lab(text, Path.cwd(), "impair")
    async with trio.open_nursery() as nursery:

        async def lab(task_status: trio.TaskStatus[LabRun]) -> None:
            with trio.fail_after(timeout):
                await run_lab(spec, None, until=frozenset(until), task_status=task_status)
            nursery.cancel_scope.cancel()  # the watcher too

        run: LabRun = await nursery.start(lab)
        if watch is not None:
            nursery.start_soon(watch, run)
    return run, {name: vm.console.transcript for name, vm in run.vms.items()}


def run(
    text: str, until: set[str], timeout: float = 600, watch: Watch | None = None
) -> tuple[LabRun, dict[str, bytes]]:
    return trio.run(_run, text, until, timeout, watch)


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (linear between closest ranks)."""
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def rtts(out: bytes) -> dict[int, float]:
    """A ping guest's reply times by sequence number, ms, without seq 1 (it waits for ARP
    across the link as well)."""
    return {int(m[1]): int(m[2]) / 1000 for m in REPLY.finditer(out) if int(m[1]) > 1}


def row(name: str, xs: list[float], n: bool = True) -> str:
    return (
        f"| {name} | {len(xs) if n else ''} | {min(xs):.2f} | {sum(xs) / len(xs):.2f} | "
        f"{pct(xs, 50):.2f} | {pct(xs, 90):.2f} | {pct(xs, 99):.2f} | {max(xs):.2f} |"
    )


def icmp_seq(frame: bytes) -> tuple[int, int] | None:
    """(ICMP type, sequence) of an IPv4 ICMP echo frame."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 1:
        return None
    icmp = 14 + (frame[14] & 15) * 4
    if len(frame) < icmp + 8 or frame[icmp] not in (0, 8):
        return None
    return frame[icmp], int.from_bytes(frame[icmp + 6 : icmp + 8], "big")


@contextlib.contextmanager
def observe_link(seen: dict[tuple[str, int], list[float]]) -> Iterator[None]:
    """Watch every ImpairedDirection (read only): for each ICMP echo frame, keyed by
    (direction, seq), [submitted, departure it was given, handed on]."""
    submit, due = ImpairedDirection.submit, ImpairedDirection.due_frames

    def observed_submit(self: ImpairedDirection, frame: Any, offload: Any, now: float) -> None:
        submit(self, frame, offload, now)
        data = frame.data if isinstance(frame, Frame) else frame
        key = icmp_seq(data)
        if key is not None:
            for dep, _, f in self._line:
                if f.data is data:
                    seen[(self.name, key[1])] = [now, dep, math.nan]

    def observed_due(self: ImpairedDirection, now: float) -> list[Any]:
        out = due(self, now)
        for f in out:
            key = icmp_seq(f.data)
            if key is not None and (self.name, key[1]) in seen:
                seen[(self.name, key[1])][2] = now
        return out

    ImpairedDirection.submit = observed_submit  # type: ignore[method-assign]
    ImpairedDirection.due_frames = observed_due  # type: ignore[method-assign]
    try:
        yield
    finally:
        ImpairedDirection.submit = submit  # type: ignore[method-assign]
        ImpairedDirection.due_frames = due  # type: ignore[method-assign]


def part_delay(pings: int, interval: int) -> tuple[float, float, float]:
    log(f"a. floor: {pings} pings, {interval} ms apart, no impairment")
    _, outs = run(ping_lab(None, 1, pings, interval), {"p0"})
    floor = list(rtts(outs["p0"]).values())
    imp = {"delay": "20ms", "jitter": "5ms", "jitter_dist": "uniform", "seed": 1}
    log(f"a. delay 20ms jitter 5ms uniform: {pings} pings")
    t0 = time.perf_counter()
    seen: dict[tuple[str, int], list[float]] = {}
    with observe_link(seen):
        _, outs = run(ping_lab(imp, 1, pings, interval), {"p0"})
    log(f"   {time.perf_counter() - t0:.1f} s")
    by_seq = rtts(outs["p0"])
    got = list(by_seq.values())
    if len(floor) < pings * 0.95 or len(got) < pings * 0.95:
        raise SystemExit(f"too few replies: {len(floor)}, {len(got)} of {pings}")
    rng = random.Random(1)
    j = JITTER * 1e3
    expect = [
        rng.choice(floor) + 2 * DELAY * 1e3 + j * (rng.uniform(-1, 1) + rng.uniform(-1, 1))
        for _ in range(200_000)
    ]
    sched, late, rest = [], [], []
    for seq, rtt in by_seq.items():
        e, i = seen.get(("egress", seq)), seen.get(("ingress", seq))
        if e is None or i is None or math.isnan(e[2]) or math.isnan(i[2]):
            continue
        s = ((e[1] - e[0]) + (i[1] - i[0])) * 1e3
        lt = ((e[2] - e[1]) + (i[2] - i[1])) * 1e3
        sched.append(s)
        late.append(lt)
        rest.append(rtt - s - lt)
    print(
        f"\na. RTT, ms: delay 20 ms ± 5 ms uniform on the link (each direction), {pings} "
        f"pings {interval} ms apart (seq 1, which also waits for ARP, left out):\n"
    )
    md("", "replies", "min", "avg", "p50", "p90", "p99", "max")
    md(*["---"] * 8)
    print(row("floor: no impairment", floor))
    print(row("expected: floor + two draws of 20 ± 5 ms", expect, n=False))
    print(row("**measured**", got))
    print(row("the link's draws for each ping (request + reply)", sched))
    print(row("its task handing the two frames on late by", late))
    print(row("the rest: measured - draws - late (cf. floor)", rest))
    avg, exp = sum(got) / len(got), sum(expect) / len(expect)
    print(f"\nmeasured avg - expected avg: {avg - exp:+.2f} ms ({100 * (avg / exp - 1):+.1f} %)")
    return avg, exp, sum(floor) / len(floor)


def replayed_losses(seed: int, direction: str, frames: int) -> int:
    """How many of the first ``frames`` frames the direction's generator says to drop: each
    wire frame takes twelve draws, the first decides loss (netfabric/impair.py)."""
    rng = direction_rng(seed, direction)
    lost = 0
    for _ in range(frames):
        draws = [rng.random() for _ in range(12)]
        lost += draws[0] < LOSS
    return lost


def part_loss(
    pings: int, clients: int, interval: int, seed: int
) -> tuple[float, tuple[float, float]]:
    per = max(1, pings // clients)
    log(f"b. loss 10%: {clients} guests x {per} pings")
    t0 = time.perf_counter()
    lab, outs = run(
        ping_lab({"loss": LOSS, "seed": seed}, clients, per, interval),
        {f"p{i}" for i in range(clients)},
    )
    log(f"   {time.perf_counter() - t0:.1f} s")
    sent = received = 0
    for i in range(clients):
        m = SUMMARY.search(outs[f"p{i}"])
        if m is None:
            raise SystemExit(f"p{i} printed no summary:\n{outs[f'p{i}'][-1000:]!r}")
        sent += int(m[1])
        received += int(m[2])
    lost = sent - received
    lo, hi = wilson(lost, sent)
    rt_expected = 1 - (1 - LOSS) ** 2
    print(
        f"\nb. loss 10 % on the link (each direction, seed {seed}), {clients} ping guests x "
        f"{per} pings; 95 % Wilson intervals (frames: ARP included):\n"
    )
    md("", "frames or pings", "lost", "loss", "95 % interval", "expected")
    md(*["---"] * 6)
    link = lab.impairments["links[0]"]
    both_in = both_lost = 0
    for name, d in (("lan → wan (requests)", link.egress), ("wan → lan (replies)", link.ingress)):
        n, k = d.counters["frames_in"], d.counters["dropped_loss"]
        both_in += n
        both_lost += k
        md(f"frames {name}", n, k, f"{100 * k / n:.2f} %", span(*wilson(k, n)), "10 %")
    a, b = wilson(both_lost, both_in)
    share = f"{100 * both_lost / both_in:.2f} %"
    md("frames, both directions", both_in, both_lost, share, span(a, b), "10 %")
    share = f"{100 * lost / sent:.2f} %"
    md("**ping round trips**", sent, lost, share, span(lo, hi), f"{100 * rt_expected:.0f} %")
    replay = [
        f"{d.name} {d.counters['dropped_loss']} dropped, {n} drawn"
        for d in (link.egress, link.ingress)
        for n in [replayed_losses(seed, d.name, d.counters["frames_in"])]
    ]
    print(
        "\nReplaying each direction's generator for as many frames as went in "
        f"(draws below 0.1): {'; '.join(replay)}."
    )
    return lost / sent, (lo, hi)


def tcp_variants(queues: list[str], bufs: int) -> list[tuple[str, dict[str, Any] | None, int]]:
    rate = {"rate": "50Mbit", "delay": "20ms"}
    out: list[tuple[str, dict[str, Any] | None, int]] = [
        ("rate 50Mbit + delay 20ms (queue: default 256KiB)", rate, 0),
        ("delay 20ms only", {"delay": "20ms"}, 0),
        ("nothing", None, 0),
    ]
    out += [(f"rate 50Mbit + delay 20ms, queue {q}", {**rate, "queue": q}, 0) for q in queues]
    if bufs:
        b = f"{bufs >> 20} MiB" if bufs % (1 << 20) == 0 else f"{bufs} B"
        out += [
            (f"delay 20ms only, buffers {b}", {"delay": "20ms"}, bufs),
            (f"rate 50Mbit + delay 20ms, buffers {b}", rate, bufs),
        ]
        out += [
            (f"rate 50Mbit + delay 20ms, queue {q}, buffers {b}", {**rate, "queue": q}, bufs)
            for q in queues
        ]
    return out


Sample = tuple[float, int, int, float, int, int, float]


def run_delay() -> float:
    """Seconds this thread has waited on a run queue (other processes had the CPUs)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def sampler(samples: list[Sample]) -> Watch:
    """Every 100 ms: (time, bytes the limiter let out a to b, bytes in its queue, this
    process's CPU time, bytes and frames b's switch port has been given, and the time this
    thread has spent runnable but waiting for a CPU)."""

    async def watch(lab: LabRun) -> None:
        eg = lab.impairments["links[0]"].egress if "links[0]" in lab.impairments else None
        port = next(p for p in lab.switches["wan"].ports.values() if p.name == "b.eth0")
        while True:
            out = eg.counters["bytes_out"] if eg is not None else 0
            queued = eg.queued_bytes if eg is not None else 0
            now = trio.current_time()
            c = port.counters
            cpu = time.process_time()
            samples.append((now, out, queued, cpu, c.tx_bytes, c.tx_frames, run_delay()))
            await trio.sleep(0.1)

    return watch


def part_tcp(nbytes: int, queues: list[str], bufs: int) -> dict[str, float]:
    print(
        f"\nc. TCP, {nbytes / 1e6:g} MB from a to b (Linux guests, cubic); Mbit/s; the "
        "limiter's columns from its counters, sampled every 100 ms:\n"
    )
    md("link (each direction)", "TCP goodput", "/ 50 Mbit/s", "limiter out, steady",
       "queue p50 / max", "queue drops", "frames to b", "host CPU / waiting")  # fmt: skip
    md(*["---"] * 8)
    results: dict[str, float] = {}
    for name, table, b in tcp_variants(queues, bufs):
        log(f"c. tcp: {name}")
        samples: list[Sample] = []
        lab, outs = run(tcp_lab(table, nbytes, b), {"a", "b"}, watch=sampler(samples))
        text = outs["b"].decode(errors="replace")
        m = TCP.search(text)
        if m is None:
            raise SystemExit(f"{name}: no traffic figure:\n{text[-2000:]}\n{outs['a'][-2000:]!r}")
        mbit = float(m[3])
        results[name] = mbit
        steady = queue = drops = "—"
        # 100 ms windows in which bytes reached b's port; the middle half of them
        win = [
            (
                8 * (s[1] - p[1]) / (s[0] - p[0]) / 1e6,
                s[2],
                (s[3] - p[3]) / (s[0] - p[0]),
                (s[5] - p[5]) / (s[0] - p[0]),
                (s[6] - p[6]) / (s[0] - p[0]),
            )
            for p, s in itertools.pairwise(samples)
            if s[4] != p[4]
        ]
        mid = win[len(win) // 4 : len(win) - len(win) // 4] or win
        cpu = "?"
        if mid:
            busy, wait = (100 * sum(w[i] for w in mid) / len(mid) for i in (2, 4))
            cpu = f"{busy:.0f} % / {wait:.0f} %"
        fps = f"{sum(w[3] for w in mid) / len(mid):,.0f}/s" if mid else "?"
        if table is not None:
            eg = lab.impairments["links[0]"].egress.counters
            drops = str(eg["dropped_queue"]) if "rate" in table else "—"
            if mid:
                steady = f"{pct([w[0] for w in mid], 50):.1f}"
                if "rate" in table:
                    qs = [w[1] / 1024 for w in mid]
                    queue = f"{pct(qs, 50):.0f} / {max(w[1] for w in win) / 1024:.0f} KiB"
        ratio = f"{mbit * 1e6 / RATE:.2f}" if table and "rate" in table else ""
        md(name, f"{mbit:.1f}", ratio, steady, queue, drops, fps, cpu)
    print(
        f"\nTCP goodput ceiling at 50 Mbit/s on the wire: {GOODPUT_MAX / 1e6:.1f} Mbit/s "
        "(1448 payload bytes per 1514-byte frame)."
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=1000, help="pings for the delay part (1000)")
    ap.add_argument("--interval", type=int, default=5, help="ms between pings (default 5)")
    ap.add_argument("--loss-pings", type=int, default=1000, help="pings for the loss part (1000)")
    ap.add_argument("--loss-guests", type=int, default=10, help="ping guests sharing them (10)")
    ap.add_argument("--seed", type=int, default=1, help="the lossy link's seed (default 1)")
    ap.add_argument("--bytes", type=int, default=30_000_000, help="TCP bytes (default 30 MB)")
    ap.add_argument("--queues", default="64KiB,1MiB", help="more queue limits ('' for none)")
    ap.add_argument(
        "--bufs", type=int, default=4 << 20, help="guests' TCP buffer max to try (0: skip)"
    )
    ap.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    args = ap.parse_args()
    summary = []
    if "a" in args.parts:
        avg, exp, floor = part_delay(args.pings, args.interval)
        summary.append(
            f"rtt avg {avg:.2f} ms (expected {exp:.2f}, ratio {avg / exp:.3f}; floor {floor:.2f})"
        )
    if "b" in args.parts:
        loss, (lo, hi) = part_loss(args.loss_pings, args.loss_guests, args.interval, args.seed)
        summary.append(
            f"round-trip loss {100 * loss:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (expected 19 %)"
        )
    if "c" in args.parts:
        queues = [q for q in args.queues.split(",") if q]
        variants = tcp_variants(queues, args.bufs)
        tcp = part_tcp(args.bytes, queues, args.bufs)
        rate, bare = tcp[variants[0][0]], tcp[variants[1][0]]
        summary.append(
            f"tcp at 50Mbit {rate:.1f} Mbit/s (ratio {rate * 1e6 / RATE:.2f}; "
            f"bare 20 ms delay {bare:.1f})"
        )
    print("impair: " + "; ".join(summary))


if __name__ == "__main__":
    main()
