"""Run a small lab with a capture, then analyse the capture with scapy after the run.

    python examples/analyse_capture.py [OUT.pcapng]

Two `ping` clients and two `udpecho` servers on one switch, plus a `udpgen` load generator;
afterwards scapy reads the pcapng file hv wrote and reports frames per interface (one per
switch port, named VM.ethN), the ICMP echo round trips it can pair up, and the UDP flows.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import trio
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgReader

import hv


async def run(capture: Path) -> None:
    lab = (
        hv.Lab("capture")
        .switch("lan", capture=str(capture.resolve()))
        .vm("s1", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
        .vm("s2", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.3/24"}])
    )
    for i, peer in enumerate(("10.0.0.2", "10.0.0.3")):
        lab.vm(f"p{i}", kernel="ping", mem="16M", append=f"peer={peer} count=5 interval=20",
               nics=[{"switch": "lan", "ip": f"10.0.0.{10 + i}/24"}])  # fmt: skip
    lab.vm("g", kernel="udpgen", mem="16M", append="peer=10.0.0.3 count=200",
           nics=[{"switch": "lan", "ip": "10.0.0.20/24"}])  # fmt: skip
    async with hv.open_lab(lab) as lab_run:
        for name in ("p0", "p1", "g"):
            await lab_run.vms[name].wait()


def analyse(capture: Path) -> None:
    per_iface: collections.Counter[str] = collections.Counter()
    requests: dict[tuple[str, int, int], float] = {}
    rtts: list[float] = []
    flows: collections.Counter[tuple[str, str, int]] = collections.Counter()
    with PcapNgReader(str(capture)) as reader:
        for pkt in reader:
            iface = getattr(pkt, "sniffed_on", None) or "?"
            per_iface[str(iface)] += 1
            frame = Ether(bytes(pkt))
            if ICMP in frame:
                key = (frame[IP].dst if frame[ICMP].type == 8 else frame[IP].src,
                       frame[ICMP].id, frame[ICMP].seq)  # fmt: skip
                if frame[ICMP].type == 8:
                    requests[key] = float(pkt.time)
                elif frame[ICMP].type == 0 and key in requests:
                    rtts.append((float(pkt.time) - requests.pop(key)) * 1000)
            elif UDP in frame:
                flows[(frame[IP].src, frame[IP].dst, frame[UDP].dport)] += 1
    print("frames per interface:")
    for iface, n in sorted(per_iface.items()):
        print(f"  {iface:<10} {n}")
    if rtts:
        print(f"ICMP echo pairs: {len(rtts)}, RTT min/avg/max "
              f"{min(rtts):.3f}/{sum(rtts) / len(rtts):.3f}/{max(rtts):.3f} ms")  # fmt: skip
    print("UDP flows:")
    for (src, dst, port), n in flows.most_common():
        print(f"  {src} -> {dst}:{port}  {n} datagrams")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "capture.pcapng")
    trio.run(run, out)
    analyse(out)
