"""The lab API in trio: a lab built in code (same checks as a file), open_lab's handle with
VMs and switches, a test's own port on a switch sending and receiving frames (scapy), live
captures, the MAC table, link state and impairment changed while the lab runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import PcapNgReader

import hv
from hv import ConfigError, Lab


def lab(tmp_path: Path) -> Lab:
    return (
        Lab("api", base=tmp_path)
        .switch("lan", subnet="10.0.0.0/24")
        .switch("wan")
        .link("lan", "wan", impair={"delay": "1ms"})
        .vm("b", kernel="udpecho", mem="16M", nics=[{"switch": "wan", "ip": "10.0.0.2/24"}])
    )


async def test_a_lab_in_code_with_a_port_of_our_own(tmp_path: Path) -> None:
    async with hv.open_lab(lab(tmp_path)) as run:
        assert set(run.vms) == {"b"} and set(run.switches) == {"lan", "wan"}
        await run.vms["b"].console.wait_for(b"udpecho: echoing")
        lan = run.switches["lan"]
        lan.start_capture(tmp_path / "live.pcapng")
        port = lan.open_port("test")
        me = "52:54:00:aa:bb:cc"
        port.send(Ether(src=me, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2", psrc="10.0.0.9",
                                                                hwsrc=me))  # fmt: skip
        with trio.fail_after(10):
            while True:
                reply = Ether(await port.receive())
                if ARP in reply and reply[ARP].op == 2 and reply[ARP].psrc == "10.0.0.2":
                    break
        guest_mac = reply[ARP].hwsrc
        port.send(Ether(src=me, dst=guest_mac) / IP(src="10.0.0.9", dst="10.0.0.2")
                  / ICMP(id=7, seq=1) / b"hello")  # fmt: skip
        with trio.fail_after(10):
            while not (ICMP in (pong := Ether(await port.receive())) and pong[ICMP].type == 0):
                pass
        assert pong[Raw].load == b"hello" and pong[IP].len == 20 + 8 + 5
        table = {mac: (name, vid) for mac, name, vid, _ in lan.mac_table()}
        assert table[me] == ("test", 0) and table[guest_mac] == ("link:wan", 0)
        lan.stop_capture()
        # the link goes down: nothing crosses. A ping sent now gets no reply; one sent once it
        # is up again does, and the first one's would have come before it (in order, one path).
        run.links[0].set_up(False)
        ping = Ether(src=me, dst=guest_mac) / IP(src="10.0.0.9", dst="10.0.0.2")
        port.send(ping / ICMP(id=7, seq=2))
        run.links[0].set_up(True)
        port.send(ping / ICMP(id=7, seq=3))
        seen = []
        with trio.fail_after(10):
            while not (ICMP in (pong := Ether(await port.receive())) and pong[ICMP].type == 0):
                seen.append(pong)
        assert pong[ICMP].seq == 3 and not any(ICMP in f for f in seen), seen
        run.impairments["links[0]"].set(delay=0.002)
        assert run.impairments["links[0]"].egress.impairment.delay == 0.002
    with PcapNgReader(str(tmp_path / "live.pcapng")) as reader:
        frames = [Ether(bytes(p)) for p in reader]
    assert any(ICMP in f and f[ICMP].type == 0 for f in frames)


async def test_a_lab_waits_for_its_vms_and_gives_its_status(tmp_path: Path) -> None:
    spec = (
        Lab("done", base=tmp_path)
        .switch("lan")
        .vm("s", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
        .vm(
            "p",
            kernel="ping",
            mem="16M",
            append="peer=10.0.0.2 count=2 interval=10",
            nics=[{"switch": "lan", "ip": "10.0.0.1/24"}],
        )
    )
    async with hv.open_lab(spec) as run:
        await run.vms["p"].wait()
        run.stop("test over")
        with trio.fail_after(10):
            status = await run.wait()
    # p powered off cleanly; s was stopped from outside, which is not a clean end
    assert run.exits["p"].exit_code == 0 and run.exits["s"].kind is hv.StopKind.STOPPED
    assert status == run.exits["s"].exit_code != 0


def test_a_lab_in_code_is_checked_like_a_file() -> None:
    with pytest.raises(ConfigError, match=r'vms.a.nics\[0\].switch: no switch named "lna"'):
        Lab().switch("lan").vm("a", kernel="udpecho", nics=["lna"]).spec()


async def test_frames_for_a_vm_that_has_stopped_are_dropped_not_a_crash(tmp_path: Path) -> None:
    """A late frame (an impaired cable's, a TAP's, another guest's) for a VM whose machine is
    closed reaches a reset device and is dropped: it used to raise the guest's interrupt line
    on the released engine, a use after free that killed the whole process."""
    spec = (
        Lab("late", base=tmp_path, clock="real")  # the cable's delay in trio's time
        .switch("lan")
        .vm(
            "b",
            kernel="udpecho",
            mem="16M",
            nics=[{"switch": "lan", "ip": "10.0.0.2/24", "impair": {"delay": "30ms"}}],
        )
    )
    async with hv.open_lab(spec) as run:
        await run.vms["b"].console.wait_for(b"udpecho: echoing")
        port = run.switches["lan"].open_port("test")
        me = "52:54:00:aa:bb:cc"
        arp = Ether(src=me, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2", psrc="10.0.0.9")
        for _ in range(20):
            port.send(arp)  # in flight on the 30 ms cable when the VM goes
        last_sent = trio.current_time()
        run.vms["b"].stop("gone")
        await run.vms["b"].wait()
        # The lab ended with its only VM, and the cable's task with it: once the frames on the
        # cable are due (the last one 30 ms after it was sent: the cable's delay, no jitter),
        # the next frame sent hands them on, inside its call, to the closed machine.
        await trio.sleep_until(last_sent + 0.030)  # the cable's delay is the scenario
        for _ in range(20):
            port.send(arp)
    assert run.impairments["b.eth0"].ingress.counters["frames_out"] >= 20
