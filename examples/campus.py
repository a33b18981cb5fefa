"""A simulated network of 23 guests on three subnets, with two Linux routers, DHCP on every
subnet and an impaired WAN cable, built in code with hv.Lab; then a report of the RTTs each
client measured.

    python examples/campus.py [--wan-delay MS] [--pings N]

    hq   10.1.0.0/24 --- r1 --- core 10.2.0.0/24 --- r2 ==WAN== branch 10.3.0.0/24
                        (DHCP and DNS on each subnet; the WAN: delay, jitter, 1 % loss)

On each subnet, three `udpecho` servers (fixed addresses .10-.12) and four `ping` clients
(DHCP) that ping a server on each of the other subnets and one on their own. r1 routes
hq <-> core, r2 core <-> branch; each router's default route points at the other one.
Needs the Linux image (hv image build linux) for the routers.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys

import trio

import hv

SUBNETS = {"hq": 1, "core": 2, "branch": 3}
PING = re.compile(
    r"ping: ([\d.]+): (\d+) sent, (\d+) received, rtt min/avg/max = (\d+)/(\d+)/(\d+) us"
)


def build(wan_delay_ms: int, pings: int) -> hv.Lab:
    lab = hv.Lab("campus")
    for name, n in SUBNETS.items():
        # the routers sit at .254 (r1 on hq and core) and .253 (r2 on core and branch)
        gateway = f"10.{n}.0.254" if name != "branch" else "10.3.0.253"
        pool = {"pool": f"10.{n}.0.100-10.{n}.0.199"}
        lab.switch(name, subnet=f"10.{n}.0.0/24", gateway=gateway, dhcp=pool, dns=True)
    forward = 'hv.run="echo 1 > /proc/sys/net/ipv4/ip_forward"'
    lab.vm("r1", kernel="linux", append=forward, nics=[
        {"switch": "hq", "ip": "10.1.0.254/24"},
        {"switch": "core", "ip": "10.2.0.254/24", "gateway": "10.2.0.253"},
    ])  # fmt: skip
    wan = {"delay": f"{wan_delay_ms}ms", "jitter": "2ms", "loss": 0.01, "seed": 42}
    lab.vm("r2", kernel="linux", append=forward, nics=[
        {"switch": "core", "ip": "10.2.0.253/24", "gateway": "10.2.0.254", "impair": wan},
        {"switch": "branch", "ip": "10.3.0.253/24"},
    ])  # fmt: skip
    for name, n in SUBNETS.items():
        gw = f"10.{n}.0.254" if name != "branch" else "10.3.0.253"
        for i in range(3):
            nic = {"switch": name, "ip": f"10.{n}.0.{10 + i}/24", "gateway": gw}
            lab.vm(f"{name}-srv{i}", kernel="udpecho", mem="16M", nics=[nic])
        targets = [f"10.{m}.0.{10 + (n + m) % 3}" for m in SUBNETS.values()] + [f"10.{n}.0.11"]
        for i, peer in enumerate(targets):
            lab.vm(f"{name}-cli{i}", kernel="ping", mem="16M",
                   append=f"peer={peer} count={pings} interval=50 dhcp.timeout=20",
                   nics=[{"switch": name, "ip": "dhcp"}])  # fmt: skip
    return lab


async def main(wan_delay_ms: int, pings: int) -> int:
    lab = build(wan_delay_ms, pings)
    clients = [name for name in lab.doc["vms"] if "-cli" in name]
    print(f"campus: {len(lab.doc['vms'])} guests on {len(SUBNETS)} subnets", file=sys.stderr)
    async with hv.open_lab(lab) as run:
        with trio.fail_after(120):
            for name in clients:
                await run.vms[name].wait()
        leases = {n: len(s.leases()) for n, s in run.services.items()}
    results = []
    for name in clients:
        m = PING.search(run.vms[name].console.transcript.decode(errors="replace"))
        if m is not None:
            mn, avg, mx = (int(x) / 1000 for x in m.groups()[3:])
            results.append((name, m[1], int(m[2]), int(m[3]), mn, avg, mx))
    print(f"{'client':<12} {'peer':<10} {'sent':>4} {'recv':>4}  min/avg/max ms")
    for name, peer, sent, got, mn, avg, mx in results:
        print(f"{name:<12} {peer:<10} {sent:>4} {got:>4}  {mn:.2f}/{avg:.2f}/{mx:.2f}")
    # a ping crosses the WAN when exactly one end is on the branch subnet
    wan = [r[5] for r in results if r[0].startswith("branch") != r[1].startswith("10.3.")]
    lan = [r[5] for r in results if r[0].startswith("branch") == r[1].startswith("10.3.")]
    if wan and lan:
        print(
            f"median avg RTT: {statistics.median(wan):.1f} ms across the WAN "
            f"({wan_delay_ms} ms each way configured), {statistics.median(lan):.1f} ms elsewhere; "
            f"DHCP leases {leases}"
        )
    answered = len(results) == len(clients) and all(r[3] > 0 for r in results)
    return 0 if answered else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wan-delay", type=int, default=10, metavar="MS", help="WAN delay each way")
    p.add_argument("--pings", type=int, default=10, help="pings per client")
    args = p.parse_args()
    sys.exit(trio.run(main, args.wan_delay, args.pings))
