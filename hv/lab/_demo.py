"""``hv demo``: a small network of bundled firmware guests, on one switch, captured.

Five guests on switch ``lan`` (10.0.0.0/24): two UDP echo servers (``b``, ``d``), two ping
clients (``a`` pings ``b``, ``e`` pings ``d``) and a UDP load generator (``c`` against ``d``).
They find each other by ARP; every frame goes to ``demo.pcapng``; then a summary per guest
and per switch port. Exit 0 if every ping was answered and no datagram was lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import trio

from hv.lab._runner import LabRun, run_lab
from hv.lab._spec import parse_lab

LAB = """
[switches.lan]
capture = "{capture}"

[vms.b]
kernel = "udpecho"
append = "ip=10.0.0.2/24"
nics = [{{ switch = "lan" }}]

[vms.d]
kernel = "udpecho"
append = "ip=10.0.0.4/24"
nics = [{{ switch = "lan" }}]

[vms.a]
kernel = "ping"
append = "ip=10.0.0.1/24 peer=10.0.0.2 count={pings} interval=50"
nics = [{{ switch = "lan" }}]

[vms.e]
kernel = "ping"
append = "ip=10.0.0.5/24 peer=10.0.0.4 count={pings} interval=50"
nics = [{{ switch = "lan" }}]

[vms.c]
kernel = "udpgen"
append = "ip=10.0.0.3/24 peer=10.0.0.4 count={datagrams}"
nics = [{{ switch = "lan" }}]
"""
CLIENTS = frozenset({"a", "c", "e"})

# The same network with Linux guests (hv image build linux): b and d are servers, a pings b,
# e pings d, c moves TCP to d with the userland's traffic tool.
LINUX_LAB = """
[switches.lan]
capture = "{capture}"

[vms.b]
kernel = "linux"
nics = [{{ switch = "lan", ip = "10.0.0.2/24" }}]

[vms.d]
kernel = "linux"
append = 'hv.run="traffic recv -t -1"'
nics = [{{ switch = "lan", ip = "10.0.0.4/24" }}]

[vms.a]
kernel = "linux"
append = 'hv.run="sleep 1; ping -q -c {pings} -i 0.05 10.0.0.2; poweroff"'
nics = [{{ switch = "lan", ip = "10.0.0.1/24" }}]

[vms.e]
kernel = "linux"
append = 'hv.run="sleep 1; ping -q -c {pings} -i 0.05 10.0.0.4; poweroff"'
nics = [{{ switch = "lan", ip = "10.0.0.5/24" }}]

[vms.c]
kernel = "linux"
append = 'hv.run="sleep 1; traffic send -t 10.0.0.4 {tcp_bytes}; poweroff"'
nics = [{{ switch = "lan", ip = "10.0.0.3/24" }}]
"""
_LPING = re.compile(
    r"(\d+) packets transmitted, (\d+) received.*\n"
    r".*rtt min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms"
)
_LTCP = re.compile(r"traffic: sent \(tcp.*\) (\d+) bytes in ([\d.]+) s = ([\d.]+) Mbit/s")
_PING = re.compile(
    r"ping: (\S+): (\d+) sent, (\d+) received, rtt min/avg/max = (\d+)/(\d+)/(\d+) us"
)
_GEN = re.compile(r"udpgen: (\S+): (\d+) sent, (\d+) echoed, (\d+) lost, (\d+) datagrams/s")


def summary(run: LabRun) -> list[str]:
    lines = ["", "guest  ip         result"]
    for name, vm in run.vms.items():
        text = vm.console.transcript.decode(errors="replace")
        vm_spec = run.spec.vms[name]
        m_ip = re.search(r"ip=([\d.]+)", vm_spec.append)
        ip = vm_spec.nics[0].ip if vm_spec.nics else None
        if ip is not None:
            addr = str(ip.ip) if not isinstance(ip, str) else ip
        else:
            addr = m_ip.group(1) if m_ip else "?"
        if m := _PING.search(text):
            rtt = f"{m[4]}/{m[5]}/{m[6]} us"
            res = f"ping {m[1]}: {m[2]} sent, {m[3]} received, rtt min/avg/max {rtt}"
        elif m := _GEN.search(text):
            res = f"udp to {m[1]}: {m[2]} sent, {m[3]} echoed, {m[4]} lost, {m[5]}/s"
        elif m := _LPING.search(text):
            rtt = f"{m[3]}/{m[4]}/{m[5]} ms"
            res = f"ping: {m[1]} sent, {m[2]} received, rtt min/avg/max {rtt}"
        elif m := _LTCP.search(text):
            res = f"tcp: {m[1]} bytes in {m[2]} s = {m[3]} Mbit/s"
        elif "traffic: receiving" in text or "init: eth0" in text:
            res = "server"
        elif "udpecho: echoing" in text:
            res = "udp echo server (answers pings too)"
        else:
            res = "(no result)"
        lines.append(f"{name:<6} {addr:<10} {res}")
    lines += ["", "port     frames in  bytes in  frames out  bytes out  drops"]
    for sw in run.switches.values():
        for port in sw.ports.values():
            c = port.counters
            drops = sum(c.drops.values())
            cells = f"{c.rx_frames:9} {c.rx_bytes:9} {c.tx_frames:11} {c.tx_bytes:10} {drops:6}"
            lines.append(f"{port.name:<8} {cells}")
    return lines


async def run_demo(
    output: Callable[[bytes], None],
    capture: Path,
    pings: int = 10,
    datagrams: int = 2000,
    linux: bool = False,
) -> int:
    """Run the demo lab, print its summary through ``output``; return its exit status."""
    if linux:
        text = LINUX_LAB.format(capture=capture.resolve(), pings=pings, tcp_bytes=datagrams * 5000)
    else:
        text = LAB.format(capture=capture.resolve(), pings=pings, datagrams=datagrams)
    spec = parse_lab(text, Path.cwd(), "demo")
    result: list[int] = []
    async with trio.open_nursery() as nursery:

        async def lab(task_status: trio.TaskStatus[LabRun]) -> None:
            result.append(await run_lab(spec, output, until=CLIENTS, task_status=task_status))

        run: LabRun = await nursery.start(lab)
        # the writers, kept: the lab closes its captures (and forgets them) as it ends
        writers = [s.capture for s in run.switches.values() if s.capture is not None]
    frames = sum(w.frames for w in writers)
    for line in [*summary(run), "", f"capture: {capture} ({frames} frames)"]:
        output((line + "\n").encode())
    return result[0]
