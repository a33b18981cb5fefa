"""What the asyncio bridge (``hv.aio``) costs per call and per frame, against direct trio in
the same run.

One lab: a switch with an idle firmware guest on it (udpecho at 10.0.0.2) and two ports of
the benchmark's own. Each figure is the mean over ``--calls``/``--frames`` repetitions,
first directly in trio (``hv.open_lab``), then from asyncio through ``hv.aio.open_lab`` in
each ``--modes`` (``thread``: hv's trio loop in a thread of its own, the default; ``guest``:
trio as a guest of asyncio's loop):

- call: ``await vm.stats()`` (a plain function run in trio; direct: ``vm.stats``);
- async call: ``await vm.console.wait_for(re.compile(b""))`` (a coroutine run in trio that
  is answered at once: the console API's own path);
- frame: one port sends a frame to the other and it is received (``send`` + ``receive``
  through the switch; direct: the same on the trio ``HostPort``);
- ping: an ICMP echo request to the guest and its reply (the guest's own time included);
- lag: how late the program's own loop wakes from a 1 ms sleep (median; direct: trio's
  ``trio.sleep``, bridged: ``asyncio.sleep``), what the application's timers see.

``--busy`` adds a guest that computes without pause (the trio thread then runs a slice of
about a millisecond between callbacks, so both sides wait for slices).

    python bench/aio.py [--repeat 3] [--calls 3000] [--frames 1000] [--pings 300]
                         [--sleeps 300] [--modes thread,guest] [--busy]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import hv
import hv.aio

A_MAC = bytes.fromhex("525400aa0001")
B_MAC = bytes.fromhex("525400aa0002")
ME_IP = "10.0.0.9"
GUEST_IP = "10.0.0.2"
ANY = re.compile(b"")
Result = dict[str, float]


def lab(busy: bool) -> hv.Lab:
    spec = (
        hv.Lab("aio")
        .switch("lan")
        .vm("s", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": f"{GUEST_IP}/24"}])
    )
    if busy:
        spec.vm("busy", kernel="cpu", mem="16M", append="iters=1000000")
    return spec


def loop_frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + bytes(64)  # local experimental ethertype, 64 B payload


def arp_request() -> bytes:
    from scapy.layers.l2 import ARP, Ether

    me = A_MAC.hex(":")
    return bytes(Ether(src=me, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=GUEST_IP, psrc=ME_IP, hwsrc=me))


def ping_frame(guest_mac: bytes) -> bytes:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether

    return bytes(
        Ether(src=A_MAC.hex(":"), dst=guest_mac.hex(":"))
        / IP(src=ME_IP, dst=GUEST_IP)
        / ICMP(id=7, seq=1)
        / bytes(32)
    )


def is_arp_reply(f: bytes) -> bool:
    return f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02"


def is_pong(f: bytes) -> bool:
    return f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 0  # IPv4, ICMP echo reply


def per_us(t0: float, n: int) -> float:
    return (time.perf_counter() - t0) / n * 1e6


# -- direct trio ---------------------------------------------------------------------------


async def direct(args: argparse.Namespace) -> Result:
    out: Result = {}
    async with hv.open_lab(lab(args.busy)) as run:
        vm = run.vms["s"]
        await vm.console.wait_for(b"udpecho: echoing")
        t0 = time.perf_counter()
        for _ in range(args.calls):
            _ = vm.stats
        out["call"] = per_us(t0, args.calls)
        t0 = time.perf_counter()
        for _ in range(args.calls):
            await vm.console.wait_for(ANY)
        out["async call"] = per_us(t0, args.calls)
        a, b = run.switches["lan"].open_port("a"), run.switches["lan"].open_port("b")
        b.send(loop_frame(A_MAC, B_MAC))  # the switch learns b (and a, below): unicast after
        a.send(loop_frame(B_MAC, A_MAC))
        await b.receive()
        f = loop_frame(B_MAC, A_MAC)
        t0 = time.perf_counter()
        for _ in range(args.frames):
            a.send(f)
            await b.receive()
        out["frame"] = per_us(t0, args.frames)
        a.send(arp_request())
        while not is_arp_reply(reply := await a.receive()):
            pass
        ping = ping_frame(reply[22:28])
        t0 = time.perf_counter()
        for _ in range(args.pings):
            a.send(ping)
            while not is_pong(await a.receive()):
                pass
        out["ping"] = per_us(t0, args.pings)
        lag = []
        for _ in range(args.sleeps):
            t0 = time.perf_counter()
            await trio.sleep(0.001)
            lag.append(time.perf_counter() - t0 - 0.001)
        out["lag"] = statistics.median(lag) * 1e6
        run.stop()
    return out


# -- through the bridge --------------------------------------------------------------------


async def timed(n: int, step: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await step()
    return per_us(t0, n)


async def bridged(args: argparse.Namespace, mode: hv.aio.Mode) -> Result:
    out: Result = {}
    async with hv.aio.open_lab(lab(args.busy), mode=mode) as run:
        vm = run.vms["s"]
        await vm.console.wait_for(b"udpecho: echoing")
        out["call"] = await timed(args.calls, vm.stats)
        out["async call"] = await timed(args.calls, lambda: vm.console.wait_for(ANY))
        a, b = run.switches["lan"].open_port("a"), run.switches["lan"].open_port("b")
        await b.send(loop_frame(A_MAC, B_MAC))
        await a.send(loop_frame(B_MAC, A_MAC))
        await b.receive()
        f = loop_frame(B_MAC, A_MAC)

        async def frame() -> None:
            await a.send(f)
            await b.receive()

        out["frame"] = await timed(args.frames, frame)
        await a.send(arp_request())
        while not is_arp_reply(reply := await a.receive()):
            pass
        ping = ping_frame(reply[22:28])

        async def pinged() -> None:
            await a.send(ping)
            while not is_pong(await a.receive()):
                pass

        out["ping"] = await timed(args.pings, pinged)
        lag = []
        for _ in range(args.sleeps):
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lag.append(time.perf_counter() - t0 - 0.001)
        out["lag"] = statistics.median(lag) * 1e6
        await run.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--pings", type=int, default=300)
    ap.add_argument("--sleeps", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the median is shown")
    ap.add_argument("--modes", default="thread,guest", help="bridge modes, comma-separated")
    ap.add_argument("--busy", action="store_true", help="a computing guest in the lab too")
    args = ap.parse_args()
    modes: list[hv.aio.Mode] = []
    for m in args.modes.split(","):
        if m not in ("thread", "guest"):
            ap.error(f"--modes: {m!r} is not thread or guest")
        modes.append(m)
    runs: dict[str, list[Result]] = {"trio": [], **{m: [] for m in modes}}
    for _ in range(args.repeat):
        runs["trio"].append(trio.run(direct, args))
        for m in modes:
            runs[m].append(asyncio.run(bridged(args, m)))
    med = {
        k: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for k, rs in runs.items()
    }
    keys = list(med["trio"])
    print(f"{'µs per':<12}" + "".join(f"{k:>12}" for k in keys))
    for name, figures in med.items():
        label = "direct trio" if name == "trio" else f"aio {name}"
        print(f"{label:<12}" + "".join(f"{figures[k]:>12.1f}" for k in keys))
    first = modes[0] if modes else None
    if first is not None:
        b, d = med[first], med["trio"]
        print(
            f"bridge ({first}) vs direct trio: call +{b['call'] - d['call']:.1f} µs, "
            f"async call {b['async call'] / d['async call']:.1f}x, "
            f"frame {b['frame'] / d['frame']:.1f}x ({b['frame']:.1f} vs {d['frame']:.1f} µs), "
            f"ping {b['ping'] / d['ping']:.2f}x, loop lag {b['lag']:.0f} vs {d['lag']:.0f} µs"
        )


if __name__ == "__main__":
    main()
