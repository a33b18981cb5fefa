"""The firmware guests' network runtime (hv/guests/runtime/net.c): an idle guest sleeps until
its NIC interrupts, bursts and lossy links lose nothing in the guest, and one server answers
many clients."""

from __future__ import annotations

import re
from pathlib import Path

import trio
from helpers import wait_until
from scapy.layers.inet import IP, UDP  # type: ignore[import-untyped]
from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

import hv
from hv.lab import parse_lab
from hv.lab._runner import run_lab
from netfabric.offload import Offload
from netfabric.switch import Switch

SMALL = 16 << 20


def echo_server(lan: Switch, name: str, ip: str) -> hv.VmConfig:
    return hv.VmConfig(
        kernel=hv.guest_path("udpecho"), name=name, mem_size=SMALL, nics=(hv.Nic(lan, ip=ip),)
    )


async def test_idle_networked_guests_sleep_until_a_frame_comes() -> None:
    """Four udpecho guests idle while a fifth answers 5 pings spread over about a second:
    the idle ones run no slice at all (they used to run about 1,100 a second, napping
    50 us at a time; and the switch sends the pinger's ARP request to its owner alone), the
    pinged one a few per ping."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            lan = await nursery.start(Switch("lan").run)
            servers = [
                await nursery.start(hv.run_vm, echo_server(lan, f"s{i}", f"10.0.0.{i + 2}/24"))
                for i in range(5)
            ]
            for vm in servers:
                await vm.console.wait_for(b"udpecho: echoing on port 7")
            before = [vm.stats["slices"] for vm in servers]
            pinger = hv.VmConfig(
                kernel=hv.guest_path("ping"),
                name="p",
                mem_size=SMALL,
                cmdline="peer=10.0.0.2 count=5 interval=200",
                nics=(hv.Nic(lan, ip="10.0.0.100/24"),),
            )
            client = await nursery.start(hv.run_vm, pinger)
            info = await client.wait()
            ran = [vm.stats["slices"] - b for vm, b in zip(servers, before, strict=True)]
            nursery.cancel_scope.cancel()
    assert info.exit_code == 0, client.console.transcript.decode()[-500:]
    assert b"5 sent, 5 received" in client.console.transcript
    assert max(ran[1:]) == 0, ran
    assert ran[0] <= 40, ran


LOSSY = """
[switches.lan]
[switches.wan]
[[links]]
a = "lan"
b = "wan"
impair = {{ loss = 0.01, seed = {seed} }}

[vms.echo]
kernel = "udpecho"
mem = "16M"
nics = [{{ switch = "wan", ip = "10.0.0.2/24" }}]
[vms.gen]
kernel = "udpgen"
mem = "16M"
append = "peer=10.0.0.2 count=1000 size=200 timeout=50"
nics = [{{ switch = "lan", ip = "10.0.0.1/24" }}]
"""


async def test_udpgen_completes_over_a_lossy_link(tmp_path: Path) -> None:
    """1 % loss each way on the link (seeded): every datagram is echoed in the end, the lost
    ones sent again; before, the window never refilled and udpgen gave up near 500."""
    spec = parse_lab(LOSSY.format(seed=11), tmp_path)
    out: list[bytes] = []
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(run_lab, spec, out.append)
            info = await run.vms["gen"].wait()
            nursery.cancel_scope.cancel()
    text = b"".join(out).decode()
    m = re.search(
        r"udpgen: 10.0.0.2:7: (\d+) sent, (\d+) echoed, (\d+) lost, \d+ datagrams/s, "
        r"(\d+) retransmitted",
        text,
    )
    assert m, text[-1500:]
    assert (m[1], m[2], m[3]) == ("1000", "1000", "0"), m[0]
    link = run.impairments["links[0]"]
    dropped = link.egress.counters["dropped_loss"] + link.ingress.counters["dropped_loss"]
    assert dropped > 0 and int(m[4]) >= dropped, (m[0], dropped)
    assert info.exit_code == 0


async def test_a_burst_of_datagrams_reaches_the_echo_server_whole() -> None:
    """200 datagrams put on the switch at once (faster than any guest runs): the server's
    RX ring and UDP queue hold them all, and all 200 come back."""
    got: list[bytes] = []
    me, him = "02:00:00:00:00:09", "52:54:00:00:00:02"

    def deliver(frame: bytes, off: Offload | None) -> None:
        if frame[12:14] == b"\x08\x00" and frame[23] == 17:
            got.append(frame)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            lan = await nursery.start(Switch("lan").run)
            port = lan.attach("host", deliver)
            cfg = hv.VmConfig(
                kernel=hv.guest_path("udpecho"),
                name="srv",
                mem_size=SMALL,
                nics=(hv.Nic(lan, ip="10.0.0.2/24", mac=him),),
            )
            srv = await nursery.start(hv.run_vm, cfg)
            await srv.console.wait_for(b"udpecho: echoing on port 7")
            for i in range(200):
                pkt = Ether(src=me, dst=him) / IP(src="10.0.0.9", dst="10.0.0.2")
                port.send(bytes(pkt / UDP(sport=5000, dport=7) / i.to_bytes(4, "big")))
            await wait_until(lambda: len(got) == 200, lambda: f"200 echoes ({len(got)} back)")
            nursery.cancel_scope.cancel()
    seqs = sorted(int.from_bytes(bytes(Ether(f)[UDP].payload)[:4], "big") for f in got)
    assert seqs == list(range(200))
    assert sum(v for k, v in srv.stats.items() if k.endswith("rx_dropped")) == 0


async def test_many_pingers_to_one_server() -> None:
    """50 clients ping one server at once: each gets all its replies (the server answers
    each from the request's own MAC; its ARP cache needs no slot per client)."""
    clients = 50
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            lan = await nursery.start(Switch("lan").run)
            server = await nursery.start(hv.run_vm, echo_server(lan, "srv", "10.0.0.2/16"))
            await server.console.wait_for(b"udpecho: echoing")
            vms = []
            for i in range(clients):
                cfg = hv.VmConfig(
                    kernel=hv.guest_path("ping"),
                    name=f"c{i}",
                    mem_size=SMALL,
                    cmdline="peer=10.0.0.2 count=3 interval=50",
                    nics=(hv.Nic(lan, ip=f"10.0.1.{i + 1}/16"),),
                )
                vms.append(await nursery.start(hv.run_vm, cfg))
            infos = [await vm.wait() for vm in vms]
            nursery.cancel_scope.cancel()
    failed = [vm.name for vm, i in zip(vms, infos, strict=True) if i.exit_code != 0]
    bad = next((vm for vm in vms if vm.name in failed), None)
    assert not failed, (failed, bad and bad.console.transcript.decode()[-600:])
