"""Frames per second through the switch core, with and without pcapng capture, against the
obvious implementation in the same run (scapy to parse each frame, scapy's PcapWriter).

64 B and 1500 B frames among 8 ports with learned MACs (unicast, the common case), in bursts
through ``LearningSwitch.forward``; capture writes every frame to an in-memory pcapng with an
interface per port. The async path (ports, queues, the trio layer) comes with the network
issue's VM ports; this measures the core.

    python bench/switch.py [--frames 500000]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netfabric import LearningSwitch, PcapngWriter

PORTS = 8


def macs() -> list[bytes]:
    return [bytes([0x52, 0x54, 0, 0, 0, p]) for p in range(PORTS)]


def frames(size: int, n: int) -> list[tuple[int, bytes]]:
    m = macs()
    out = []
    for i in range(n):
        src, dst = i % PORTS, (i + 1 + i // PORTS) % PORTS
        if dst == src:
            dst = (dst + 1) % PORTS
        out.append((src, m[dst] + m[src] + b"\x08\x00" + bytes(size - 14)))
    return out


def run_hv(traffic: list[tuple[int, bytes]], capture: bool) -> float:
    sw = LearningSwitch()
    for p in range(PORTS):
        sw.add_port(p)
    for p, mac in enumerate(macs()):  # learn every MAC first
        sw.forward(p, b"\xff" * 6 + mac + b"\x08\x00" + bytes(46), 0.0)
    w = PcapngWriter(io.BytesIO()) if capture else None
    if w is not None:
        for p in range(PORTS):
            w.add_interface(f"vm{p}.eth0")
    forward = sw.forward
    t = time.perf_counter()
    now = 1.0
    if w is None:
        for port, f in traffic:
            forward(port, f, now)
    else:
        write = w.write
        ts = 1_700_000_000_000_000_000
        for port, f in traffic:
            forward(port, f, now)
            write(port, f, ts)
        w.flush()
    return len(traffic) / (time.perf_counter() - t)


def run_reference(traffic: list[tuple[int, bytes]]) -> float:
    """The obvious way: scapy parses each frame, a dict learns, scapy's PcapWriter records."""
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapWriter

    table: dict[str, int] = {}
    out = PcapWriter(io.BytesIO(), linktype=1)
    t = time.perf_counter()
    for port, f in traffic:
        pkt = Ether(f)
        table[pkt.src] = port
        _ = table.get(pkt.dst)
        out.write(pkt)
    out.flush()
    return len(traffic) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500_000, help="frames per run (default 500k)")
    ap.add_argument("--repeat", type=int, default=3, help="runs, best taken (default 3)")
    args = ap.parse_args()
    res: dict[str, float] = {}
    for size in (64, 1500):
        traffic = frames(size, args.frames)
        for capture in (False, True):
            key = f"{size} B, {'capture' if capture else 'no capture'}"
            res[key] = max(run_hv(traffic, capture) for _ in range(args.repeat))
            print(f"switch core {key:<20} {res[key]:12,.0f} frames/s")
    ref_traffic = frames(64, min(args.frames, 20_000))
    ref = max(run_reference(ref_traffic) for _ in range(args.repeat))
    print(f"reference (scapy parse + PcapWriter), 64 B {ref:12,.0f} frames/s")
    print(
        f"switch: {res['64 B, no capture']:,.0f} frames/s (64 B, no capture), "
        f"{res['64 B, capture']:,.0f} frames/s (64 B, capture); reference {ref:,.0f} frames/s"
    )


if __name__ == "__main__":
    main()
