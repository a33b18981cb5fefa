"""Cables pulled out and plugged back while a lab runs (``hv link``, ``LabRun.set_link``): a
NIC's guest loses its carrier and nothing crosses either way, counted as drops by cause
``down``; a link between two switches stops carrying; up again, it all flows. Real guests:
firmware pingers, Linux guests reading their carrier from sysfs, ``hv`` processes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from helpers import wait_until, wait_until_sync
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether
from test_control import Host

import hv
from hv.build import _image_linux as il
from hv.lab import LabRun
from hv.lab._link import cable_nic
from hv.lab._stats import render_snapshot, snapshot
from hv.virtio._net import STATUS_LINK_UP

PING = "ip=10.0.0.3/24 peer=10.0.0.2 count=1000000 interval=10"


def pinger(clock: str, link: bool) -> hv.Lab:
    """c pings s: on one switch, or across a link from lan to wan."""
    lab = hv.Lab("cut", clock=clock).switch("lan")
    if link:
        lab.switch("wan").link("lan", "wan")
    return lab.vm(
        "s", kernel="udpecho", mem="16M", append="ip=10.0.0.2/24", nics=["wan" if link else "lan"]
    ).vm("c", kernel="ping", mem="16M", append=PING, nics=["lan"])


def down_drops(run: LabRun, switch: str, port: str) -> int:
    (p,) = [p for p in snapshot(run)["switches"][switch]["ports"] if p["name"] == port]
    n: int = p["drops_by"].get("down", 0)
    return n


async def replies(console: hv.Console, n: int) -> None:
    """``n`` more replies (after what was matched before)."""
    for _ in range(n):
        await console.wait_for(b"ping: reply from 10.0.0.2")


async def pinging(run: LabRun) -> hv.Console:
    """c's console, once its pings are answered."""
    c = run.vms["c"].console
    with trio.fail_after(60):
        await replies(c, 3)
    return c


@pytest.mark.parametrize("clock", ["virtual", "real"])
async def test_a_nic_cable_down_drops_both_ways_and_the_guest_loses_carrier(clock: str) -> None:
    async with hv.open_lab(pinger(clock, link=False)) as run:
        c = await pinging(run)
        state = run.set_link("s", up=False)  # s's one NIC: s.eth0
        assert (state["name"], state["label"], state["kind"], state["up"]) == (
            "s.eth0", "s-lan", "nic", False,
        )  # fmt: skip
        net = cable_nic(run, "s.eth0")
        assert net is not None
        with trio.fail_after(60):
            await c.wait_for(b"ping: no reply from 10.0.0.2")
            await c.wait_for(b"ping: no reply from 10.0.0.2")
        # the guest's side: STATUS says link down (virtual time: it got there as a frame does)
        assert not net.link_up and not net.config()[6] & STATUS_LINK_UP
        assert net.transport is not None and net.transport.config_generation > 0
        # c's ARP and pings for s: floods and frames that s's port missed, counted there
        assert down_drops(run, "lan", "s.eth0") > 0
        assert down_drops(run, "lan", "c.eth0") == 0
        shown = run.link_state("s.eth0")
        assert shown["up"] is False and shown["down_drops"] == down_drops(run, "lan", "s.eth0")
        line = next(x for x in render_snapshot(snapshot(run)) if x.startswith("port lan s.eth0 "))
        assert re.search(r"drops_by=\S*down:\d+", line), line
        # every cable is listed, impaired or not; the other one is up
        assert [(x["name"], x["up"]) for x in run.link_states()] == [
            ("s.eth0", False), ("c.eth0", True),
        ]  # fmt: skip
        assert run.set_link("s-lan", up=True)["up"] is True
        with trio.fail_after(60):
            await replies(c, 3)
        assert net.link_up and net.config()[6] & STATUS_LINK_UP
        with pytest.raises(LookupError, match=r"no cable named 'x.eth0' \(cables: s.eth0"):
            run.set_link("x.eth0", up=False)


@pytest.mark.parametrize("clock", ["virtual", "real"])
async def test_a_link_between_switches_down_stops_pings_and_up_restores_them(clock: str) -> None:
    async with hv.open_lab(pinger(clock, link=True)) as run:
        c = await pinging(run)
        lan = run.switches["lan"]
        assert any(name == "link:wan" for _, name, _, _ in lan.mac_table())  # s, learnt there
        state = run.set_link("lan-wan", up=False)
        assert (state["name"], state["kind"], state["up"]) == ("links[0]", "link", False)
        # both switches forgot what they had learnt through the link
        assert not any(name == "link:wan" for _, name, _, _ in lan.mac_table())
        assert not any(name == "link:lan" for _, name, _, _ in run.switches["wan"].mac_table())
        with trio.fail_after(60):
            await c.wait_for(b"ping: no reply from 10.0.0.2")
            await c.wait_for(b"ping: no reply from 10.0.0.2")
        assert down_drops(run, "lan", "link:wan") > 0
        assert run.link_state("links[0]")["down_drops"] >= down_drops(run, "lan", "link:wan")
        run.set_link("links[0]", up=True)
        with trio.fail_after(60):
            await replies(c, 3)
        assert run.link_state("wan-lan")["up"] is True


async def test_on_virtual_time_the_carrier_goes_after_what_the_switch_gave_the_guest() -> None:
    """The switch's side goes down at the fabric's time; the guest's carrier after the
    frames the switch handed it before (as a frame would): a frame delivered just before the
    cable is pulled is received, not dropped as arriving on a dead link, and the answer the
    guest sends once its carrier is gone goes nowhere."""
    lab = hv.Lab("order", clock="virtual").switch("lan")
    lab.vm("s", kernel="udpecho", mem="16M", append="ip=10.0.0.2/24", nics=["lan"])
    async with hv.open_lab(lab) as run:
        with trio.fail_after(60):
            await run.vms["s"].console.wait_for(b"udpecho: echoing")
        net = cable_nic(run, "s.eth0")
        assert net is not None
        me = "52:54:00:aa:bb:cc"
        port = run.switches["lan"].open_port("me")
        port.send(Ether(src=me, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.2", psrc="10.0.0.9"))
        with trio.fail_after(60):
            while not (ARP in (reply := Ether(await port.receive())) and reply[ARP].op == 2):
                pass
        before = net.counters["rx_frames"]
        # in one go, nothing between: the ping is in the switch before the cable goes
        port.send(Ether(src=me, dst=reply[ARP].hwsrc) / IP(src="10.0.0.9", dst="10.0.0.2")
                  / ICMP(id=7, seq=1))  # fmt: skip
        run.set_link("s.eth0", up=False)
        assert net.link_up  # the guest's side is on its way, behind the frame
        await wait_until(lambda: not net.link_up, "s's carrier to go", 60)
        await wait_until(lambda: net.counters["tx_link_down"] > 0, "s's answer, dropped", 60)
        assert net.counters["rx_frames"] == before + 1 and net.counters["rx_link_down"] == 0
        assert port.receive_nowait() is None  # the answer never crossed


# -- Linux guests: the carrier in sysfs, a ping across -----------------------------------------

PROMPT = re.compile(rb"\n[^\n]*# $")


async def sh(vm: hv.Vm, command: str, timeout: float = 60) -> str:
    """Type a command at the guest's shell; its output (without the echo and the prompt)."""
    await vm.console.send_all(command + "\n")
    with trio.fail_after(timeout):
        out = await vm.console.wait_for(PROMPT)
    lines = out.decode(errors="replace").replace("\r", "").split("\n")
    return "\n".join(lines[1:-1])


async def reads(vm: hv.Vm, path: str, want: str) -> None:
    """Wait until the guest's ``path`` reads ``want`` (the driver's work runs soon after the
    interrupt; the operstate follows within a second, Linux's linkwatch)."""
    got = ""
    for _ in range(40):
        got = (await sh(vm, f"cat {path}")).strip()
        if got == want:
            return
        await sh(vm, "sleep 0.1")
    raise AssertionError(f"{path}: {got!r}, not {want!r}")


async def test_linux_guests_see_carrier_loss_and_pings_stop_until_it_is_back(
    linux_image: il.LinuxImage,
) -> None:
    lab = (
        hv.Lab("linux-cut")
        .switch("lan")
        .vm("a", kernel="linux", nics=[{"switch": "lan", "ip": "10.0.0.1/24"}])
        .vm("b", kernel="linux", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}])
    )
    async with hv.open_lab(lab) as run:
        a, b = run.vms["a"], run.vms["b"]
        with trio.fail_after(120):
            await a.console.wait_for(PROMPT)
            await b.console.wait_for(PROMPT)
        assert (await sh(a, "cat /sys/class/net/eth0/carrier")).strip() == "1"
        assert ", 1 received" in await sh(b, "ping -c 1 -W 2 10.0.0.1")
        run.set_link("a.eth0", up=False)
        await reads(a, "/sys/class/net/eth0/carrier", "0")
        await reads(a, "/sys/class/net/eth0/operstate", "down")  # what routing daemons hear
        out = await sh(b, "ping -c 2 -W 1 10.0.0.1")
        assert ", 0 received" in out, out
        assert down_drops(run, "lan", "a.eth0") > 0
        run.set_link("a.eth0", up=True)
        await reads(a, "/sys/class/net/eth0/carrier", "1")
        await reads(a, "/sys/class/net/eth0/operstate", "up")
        out = await sh(b, "ping -c 1 -W 2 10.0.0.1")
        assert ", 1 received" in out, out


# -- hv link, from another process ---------------------------------------------------------------

LAB = f"""
[switches.lan]
[switches.wan]

[[links]]
a = "lan"
b = "wan"

[vms.s]
kernel = "udpecho"
mem = "16M"
append = "ip=10.0.0.2/24"
nics = [{{ switch = "wan" }}]

[vms.c]
kernel = "ping"
mem = "16M"
append = "{PING}"
nics = [{{ switch = "lan" }}]
"""


@pytest.fixture(scope="module")
def cut() -> Iterator[tuple[Host, str]]:
    h = Host()
    try:
        r = h.hv("up", "-d", str(h.lab_file("cut", LAB)))
        assert r.returncode == 0, r.stdout + r.stderr
        yield h, "cut"
    finally:
        h.cleanup()


def show(h: Host, name: str, *cable: str) -> Any:
    r = h.hv("link", name, *cable, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_hv_link_down_and_up_from_the_command_line(cut: tuple[Host, str]) -> None:
    h, name = cut
    r = h.hv("link", name)  # every cable, plain
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [x.split()[:4] for x in lines] == [
        ["links[0]", "lan-wan", "link", "up"],
        ["s.eth0", "s-wan", "nic", "up"],
        ["c.eth0", "c-lan", "nic", "up"],
    ], lines
    r = h.hv("link", name, "c", "down")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("c.eth0 c-lan nic down c->lan="), r.stdout
    assert show(h, name, "c.eth0")["up"] is False

    def c_drops() -> int:
        r = h.hv("stats", name, "--json")
        (p,) = [p for p in json.loads(r.stdout)["switches"]["lan"]["ports"]
                if p["name"] == "c.eth0"]  # fmt: skip
        n: int = p["drops_by"].get("down", 0)
        return n

    # the pinger does not look at its carrier: what it sends, its NIC drops, counted as down
    wait_until_sync(lambda: c_drops() > 2, "down drops on c.eth0", 60)
    r = h.hv("stats", name)
    port = next(x for x in r.stdout.splitlines() if x.startswith("port lan c.eth0 "))
    assert "down:" in port, port
    shown = show(h, name, "c")["down_drops"]  # its NIC's and its port's: the same count
    assert 2 < shown <= c_drops()
    r = h.hv("link", name, "c.eth0", "up")
    assert r.returncode == 0 and " up " in r.stdout, r.stdout
    r = h.hv("link", name, "lan-wan", "down", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["up"] is False
    assert [c["up"] for c in show(h, name)["cables"]] == [False, True, True]
    r = h.hv("link", name, "links[0]", "up")
    assert r.returncode == 0, r.stderr


def test_hv_link_bad_names_and_actions(cut: tuple[Host, str]) -> None:
    h, name = cut
    r = h.hv("link", name, "lan-dmz", "down")
    assert r.returncode == 1
    assert "no cable named 'lan-dmz'" in r.stderr, r.stderr
    assert "links[0] (lan-wan)" in r.stderr and "s.eth0 (s-wan)" in r.stderr, r.stderr
    r = h.hv("link", name, "c", "sideways")
    assert r.returncode == 4 and "the action is down, up or show" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = h.hv("link", name, "down")
    assert r.returncode == 4 and "name the cable" in r.stderr, r.stderr
    r = h.hv("link", "--help")
    assert r.returncode == 0 and "NO-CARRIER" in r.stdout and "links[N]" in r.stdout
