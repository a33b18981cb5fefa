"""VXLAN (RFC 7348): a switch's cable carried over UDP (netfabric.ports.vxlan).

(a) the header codec (fuzzed), the VTEP learning table, and hostile datagrams fed to a port;
(b) an hv lab in-process whose switch has a VXLAN uplink bound in namespace A, and a Linux
``vxlan`` device in namespace B (joined to A by a veth pair): pings both ways, counters, a
capture read by tshark; (c) a lab over two hosts: two ``hv up --host`` processes in two
namespaces, and a Linux vxlan device in a third.

Every interface lives in a network namespace the test creates and deletes; the in-process lab
runs on a thread that entered namespace A (and dies afterwards), so the socket is born there.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import json
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from helpers import in_netns, wait_until_sync
from hypothesis import given
from hypothesis import strategies as st

from hv import ConfigError
from hv.lab import Lab, open_lab, parse_lab, render_snapshot, run_lab, services_config, with_clock
from hv.lab._hosts import for_host
from hv.lab._stats import snapshot
from hv.lab._vxlan_keys import VxlanSpec, vni_for
from netfabric.frame import Frame
from netfabric.ports.vxlan import (
    BAD_FLAGS,
    BAD_HEADER,
    VNI_MAX,
    VtepTable,
    VxlanEndpoint,
    VxlanError,
    VxlanPort,
    decode_header,
    encode_header,
    parse_addr,
)
from netfabric.switch import Switch

T = TypeVar("T")

A, B, C = ("10.9.0.1", 4789), ("10.9.0.2", 4789), ("10.9.0.3", 4789)
MAC1, MAC2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
BCAST = b"\xff" * 6


def ether(dst: bytes, src: bytes, payload: bytes = b"x" * 46) -> bytes:
    return dst + src + b"\x08\x00" + payload


# -- (a) the codec ---------------------------------------------------------------------------


def test_the_header_is_rfc_7348s() -> None:
    # flags 0x08 (I), 3 reserved bytes, the VNI (24 bits), 1 reserved byte; network order
    assert encode_header(42) == bytes([0x08, 0, 0, 0, 0, 0, 42, 0])
    assert encode_header(VNI_MAX) == bytes([0x08, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0])
    assert decode_header(encode_header(0x123456)) == 0x123456
    assert decode_header(bytes([0x08, 0, 0, 0, 0, 0, 7, 0x99])) == 7  # last byte: ignored
    assert decode_header(b"\x08\x00\x00") == BAD_HEADER
    assert decode_header(bytes(8)) == BAD_FLAGS  # no I flag
    assert decode_header(bytes([0x0C, 0, 0, 0, 0, 0, 7, 0])) == BAD_FLAGS  # another flag too
    assert decode_header(bytes([0x08, 0, 1, 0, 0, 0, 7, 0])) == BAD_FLAGS  # reserved bits
    for bad in (-1, VNI_MAX + 1):
        with pytest.raises(ValueError, match="not a VNI"):
            encode_header(bad)


@given(st.binary(max_size=24))
def test_the_decoder_takes_any_bytes(data: bytes) -> None:
    got = decode_header(data)
    if len(data) < 8:
        assert got == BAD_HEADER
    elif data[:4] != b"\x08\x00\x00\x00":
        assert got == BAD_FLAGS
    else:
        assert got == int.from_bytes(data[4:7], "big")
        assert encode_header(got) == data[:7] + b"\x00"


def test_addresses() -> None:
    assert parse_addr("10.9.0.2") == ("10.9.0.2", 4789)
    assert parse_addr("10.9.0.2:4790") == ("10.9.0.2", 4790)
    assert parse_addr("10.9.0.2", 8472) == ("10.9.0.2", 8472)
    for bad, why in (
        ("10.9.0", "not an IPv4 address"),
        ("host.example", "not an IPv4 address"),
        ("10.9.0.2:0", "not a UDP port"),
        ("10.9.0.2:x", "not a UDP port"),
        ("::1", "not an IPv4 address"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_addr(bad)


# -- (a) the learning table ----------------------------------------------------------------


def test_unknown_and_broadcast_flood_to_every_known_vtep_and_learned_macs_go_to_one() -> None:
    t = VtepTable([B], aging=300)
    assert t.destinations(BCAST, 0) == (B,)
    assert t.destinations(MAC1, 0) == (B,)  # unknown unicast: flooded
    t.learn(MAC1, C, 1.0)  # a VTEP not configured: learned, and flooded to from now on
    assert t.destinations(MAC1, 2.0) == (C,)
    assert t.destinations(BCAST, 2.0) == (B, C)
    assert t.destinations(MAC2, 2.0) == (B, C)
    t.learn(MAC1, B, 3.0)  # the MAC moved
    assert t.destinations(MAC1, 3.0) == (B,)
    assert t.counters["moved"] == 1 and t.counters["learned"] == 1
    # aged out: the MAC floods again, the silent VTEP is no longer flooded to
    assert t.destinations(MAC1, 304.0) == (B,) and t.destinations(BCAST, 304.0) == (B,)
    assert t.lookup(MAC1, 304.0) is None and not t.vteps


def test_without_learning_only_the_fixed_remotes() -> None:
    t = VtepTable([B, C, B], learning=False)  # (duplicates are one)
    t.learn(MAC1, A, 0)
    assert t.destinations(MAC1, 0) == (B, C) and not t.macs and not t.vteps


def test_a_flood_of_new_source_macs_and_senders_is_bounded() -> None:
    t = VtepTable([B], max_macs=100, max_vteps=8)
    for i in range(10_000):
        t.learn(i.to_bytes(6, "big"), (f"10.1.{i >> 8 & 255}.{i & 255}", 4789), i / 1000)
    assert len(t.macs) == 100 and len(t.vteps) == 8
    assert t.counters["evictions"] == 9_900 and t.counters["vtep_evictions"] == 10_000 - 8
    assert t.destinations(BCAST, 10.0)[0] == B and len(t.destinations(BCAST, 10.0)) == 9
    # the newest are kept
    assert t.lookup((9_999).to_bytes(6, "big"), 10.0) == ("10.1.39.15", 4789)


# -- (a) hostile datagrams into a port -------------------------------------------------------


def endpoint_with_port(
    remotes: tuple[tuple[str, int], ...] = (B,), **kw: int
) -> tuple[VxlanEndpoint, VxlanPort, list[bytes]]:
    """An endpoint on an unbound socket (no interface is touched) with VNI 42's port on a
    switch that has one more port recording what reaches it."""
    sw = Switch("lan")
    got: list[bytes] = []
    sw.attach("sink", lambda data, off: got.append(data))
    ep = VxlanEndpoint(sock=socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    port = VxlanPort(sw, ep, 42, remotes, **kw)
    return ep, port, got


def test_hostile_datagrams_are_counted_never_raised() -> None:
    ep, port, got = endpoint_with_port(max_frame=1518)
    good = ether(BCAST, MAC1)
    with contextlib.closing(ep):
        for data in (
            b"",
            b"\x08\x00\x00",  # short
            bytes(8) + good,  # no I flag
            b"\x88\x00\x00\x00" + b"\x00\x00\x2a\x00" + good,  # a reserved flag set
            encode_header(43) + good,  # another VNI
            encode_header(42) + b"\x02" * 13,  # shorter than an Ethernet header
            encode_header(42) + ether(BCAST, MAC1, bytes(1600)),  # over max_frame
            encode_header(42) + good,
        ):
            ep.datagram(memoryview(data), C)
    c = ep.counters + port.vxlan
    assert (c["rx_bad_header"], c["rx_bad_flags"], c["rx_unknown_vni"]) == (2, 2, 1)
    assert (c["rx_runt"], c["rx_oversize"], c["rx_frames"]) == (1, 1, 1)
    assert c["rx_datagrams"] == 8 and got == [good]
    assert port.table.lookup(MAC1, port._clock()) == C  # learned from the good one
    assert port.counters.rx_frames == 1  # the switch saw the one good frame


@given(st.binary(max_size=80), st.integers(0, 255))
def test_any_datagram_is_a_frame_or_a_counter(data: bytes, vni_low: int) -> None:
    ep, port, got = endpoint_with_port(max_frame=64)
    with contextlib.closing(ep):
        for d in (data, encode_header(42) + data, encode_header(vni_low) + data):
            ep.datagram(memoryview(d), C)
    c = ep.counters + port.vxlan
    kinds = ("rx_bad_header", "rx_bad_flags", "rx_unknown_vni", "rx_runt", "rx_oversize")
    assert sum(c[k] for k in kinds) + c["rx_frames"] == 3 == c["rx_datagrams"]
    assert len(got) == c["rx_frames"] and all(14 <= len(f) <= 64 for f in got)


def test_frames_from_the_switch_go_to_the_right_vteps_and_drops_are_counted() -> None:
    sent: list[tuple[bytes, tuple[str, int]]] = []

    class Recording(socket.socket):
        def sendmsg(self, bufs, anc=(), flags=0, addr=None):  # type: ignore[no-untyped-def, override]
            if addr == C:
                raise BlockingIOError(11, "full")
            sent.append((b"".join(bufs), addr))
            return sum(map(len, bufs))

    sw = Switch("lan")
    local = sw.open_port("guest")
    ep = VxlanEndpoint(sock=Recording(socket.AF_INET, socket.SOCK_DGRAM))
    port = VxlanPort(sw, ep, 42, [B])
    with contextlib.closing(ep):
        local.send(ether(BCAST, MAC2))
        assert sent == [(encode_header(42) + ether(BCAST, MAC2), B)]
        ep.datagram(memoryview(encode_header(42) + ether(MAC2, MAC1)), C)  # MAC1 behind C
        local.send(ether(MAC1, MAC2))  # to C, whose socket buffer is full: dropped, counted
        local.send(ether(BCAST, MAC2))  # to B and C
    c = port.vxlan
    assert c["tx_frames"] == 3 and c["tx_datagrams"] == 2 and sent[-1][1] == B
    assert (c["tx_busy"], c["tx_dropped"]) == (2, 2)
    with contextlib.closing(
        VxlanEndpoint(sock=socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    ) as ep2:
        nowhere = VxlanPort(sw, ep2, 7)
        nowhere.deliver(Frame(ether(BCAST, MAC2)))
    assert nowhere.vxlan["tx_no_remote"] == 1
    with pytest.raises(ValueError, match="VNI 42 already has a port"):
        VxlanPort(sw, ep, 42)


# -- namespaces ----------------------------------------------------------------------------


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def in_ns(name: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *cmd], capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


@pytest.fixture
def namespaces() -> Iterator[Callable[[str], str]]:
    """Makes namespaces (``make(tag)`` -> its name, lo up, no IPv6); deletes them after."""
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"hvvx-{tag}-{secrets.token_hex(3)}"
        ip("netns", "add", name)
        made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        for key in ("all", "default"):
            in_ns(name, "sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1")
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_an_address_that_is_not_the_hosts_is_a_clear_error(
    namespaces: Callable[[str], str],
) -> None:
    ns = namespaces("a")
    with pytest.raises(VxlanError, match=r"10\.9\.0\.1 is not an address of this host"):
        in_netns(ns, lambda: VxlanEndpoint("10.9.0.1", 4789))
    taken = in_netns(ns, lambda: VxlanEndpoint("127.0.0.1", 4789))
    with contextlib.closing(taken), pytest.raises(VxlanError, match="UDP port 4789 is taken"):
        in_netns(ns, lambda: VxlanEndpoint("0.0.0.0", 4789))


async def test_a_burst_the_socket_cannot_hold_is_counted_as_kernel_drops(
    namespaces: Callable[[str], str],
) -> None:
    ns = namespaces("a")

    def pair() -> tuple[VxlanEndpoint, socket.socket]:
        ep = VxlanEndpoint("127.0.0.1", 4789)
        ep.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # room for very few
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return ep, tx

    ep, tx = in_netns(ns, pair)
    with contextlib.closing(ep), tx:
        sw = Switch("lan")
        got = collections.Counter[str]()
        sw.attach("sink", lambda data, off: got.update(["frame"]))
        VxlanPort(sw, ep, 42)
        datagram = encode_header(42) + ether(BCAST, MAC1)
        for _ in range(200):
            tx.sendto(datagram, ("127.0.0.1", 4789))
        while not ep.read_available():
            pass
        # the kernel tells the count with the next datagram it queues after the drops
        tx.sendto(datagram, ("127.0.0.1", 4789))
        while not ep.read_available():
            pass
        c = ep.counters
        assert c["rx_kernel_drops"] > 100 and c["rx_datagrams"] + c["rx_kernel_drops"] == 201
        assert got["frame"] == c["rx_datagrams"]


# -- the lab file ------------------------------------------------------------------------------

UPLINK = """
[switches.lan]
vxlan = { vni = 42, local = "10.9.0.1", remote = "10.9.0.2" }
[vms.g]
kernel = "udpecho"
nics = [{ switch = "lan", ip = "10.20.0.2/24" }]
"""


def test_a_switch_with_a_vxlan_uplink_in_a_lab_file(tmp_path: Path) -> None:
    lab = parse_lab(UPLINK, tmp_path)
    assert lab.switches["lan"].vxlan == VxlanSpec(42, "10.9.0.1", 4789, (B,), True)
    assert lab.clock == "real"  # the other hosts are on the wire
    text = UPLINK.replace(
        'remote = "10.9.0.2" }',
        'remote = ["10.9.0.2", "10.9.0.3:8472"], port = 4790, learning = false }',
    )
    assert parse_lab(text, tmp_path).switches["lan"].vxlan == VxlanSpec(
        42, "10.9.0.1", 4790, (("10.9.0.2", 4790), ("10.9.0.3", 8472)), False
    )


@pytest.mark.parametrize(
    ("vxlan", "error"),
    [
        ("42", r"switches.lan.vxlan: expected a table like \{ vni = 42"),
        ('{ local = "10.9.0.1" }', r"switches.lan.vxlan.vni: missing \(the VXLAN network id"),
        ("{ vni = 42 }", r"switches.lan.vxlan.local: missing \(this host's address to bind"),
        ('{ vni = 0, local = "10.9.0.1" }', r"vxlan.vni: 0 is not a VNI in 1..16777215"),
        ('{ vni = 16777216, local = "10.9.0.1" }', "vxlan.vni: 16777216 is not a VNI"),
        ('{ vni = 4, local = "lan" }', "vxlan.local: 'lan' is not an IPv4 address"),
        ('{ vni = 4, local = "10.9.0.1", remote = "x" }', r"vxlan.remote: 'x' is not an IPv4"),
        ('{ vni = 4, local = "10.9.0.1", remote = ["10.9.0.2:99999"] }', r"remote\[0\]: .* port"),
        ('{ vni = 4, local = "10.9.0.1", port = 0 }', "vxlan.port: 0 is not a UDP port"),
        ('{ vni = 4, local = "10.9.0.1", vlan = 3 }', r"vxlan.vlan: unknown key \(known: "),
        ('{ vni = 4, local = "10.9.0.1", learning = 1 }', "vxlan.learning: expected true or"),
    ],
)
def test_bad_vxlan_keys_say_which_and_why(tmp_path: Path, vxlan: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_lab(f"[switches.lan]\nvxlan = {vxlan}\n[vms.g]\nkernel = 'udpecho'\n", tmp_path)


def test_vxlan_lives_on_real_time_and_vnis_are_one_per_switch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'switches.lan.vxlan: VXLAN puts other hosts on the '
                       r'wire.*use clock = "real"'):  # fmt: skip
        parse_lab('clock = "virtual"\n' + UPLINK, tmp_path)
    with pytest.raises(ConfigError, match=r"switches\.lan\.vxlan: VXLAN puts other hosts"):
        with_clock(parse_lab(UPLINK, tmp_path), "virtual")
    two = UPLINK + '[switches.wan]\nvxlan = { vni = 42, local = "10.9.0.1" }\n'
    with pytest.raises(ConfigError, match=r"switches.wan.vxlan.vni: 42 on 10.9.0.1:4789 is also "):
        parse_lab(two, tmp_path)
    parse_lab(
        two.replace('vni = 42, local = "10.9.0.1" }', 'vni = 43, local = "10.9.0.1" }'), tmp_path
    )


# -- (b) an in-process lab and a Linux vxlan device ------------------------------------------


def veth(a: str, b: str, a_ip: str, b_ip: str) -> None:
    """A veth pair between namespaces ``a`` and ``b`` (eth-a in a, eth-b in b), addressed."""
    ip("-n", a, "link", "add", "vx-a", "type", "veth", "peer", "name", "vx-b", "netns", b)
    for ns, dev, addr in ((a, "vx-a", a_ip), (b, "vx-b", b_ip)):
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")


def linux_vxlan(ns: str, local: str, remotes: list[str], addr: str, dev: str = "vx-b") -> str:
    """A Linux vxlan device (VNI 42, port 4789) in ``ns`` flooding to ``remotes``, with
    ``addr`` on the guests' subnet; its MAC."""
    ip("-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "remote", remotes[0],
       "local", local, "dstport", "4789", "dev", dev)  # fmt: skip
    for more in remotes[1:]:
        in_ns(ns, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", more)
    ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "vx0")
    ip("-n", ns, "link", "set", "vx0", "up")
    out = ip("-n", ns, "-j", "link", "show", "vx0")
    return str(json.loads(out)[0]["address"])


def tshark_icmp(path: Path) -> list[tuple[str, str, str, str]]:
    """The ICMP frames in capture ``path``: (interface, source, destination, type)."""
    tshark = shutil.which("tshark")
    assert tshark
    out = subprocess.run(
        [tshark, "-r", str(path), "-Y", "icmp", "-T", "fields", "-e", "frame.interface_name",
         "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return [(i, s, d, t) for i, s, d, t in (line.split("\t") for line in out.splitlines())]


def test_a_linux_vxlan_device_and_guests_ping_each_other_across_the_uplink(
    namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    ns_a, ns_b = namespaces("a"), namespaces("b")
    veth(ns_a, ns_b, "10.9.0.1", "10.9.0.2")
    linux_mac = linux_vxlan(ns_b, "10.9.0.2", ["10.9.0.1"], "10.20.0.9")
    capture = tmp_path / "lan.pcapng"
    lab = (
        Lab("vx")
        .switch("lan", capture=str(capture),
                vxlan={"vni": 42, "local": "10.9.0.1", "remote": "10.9.0.2"})
        .vm("g", kernel="udpecho", mem="16M", nics=[{"switch": "lan", "ip": "10.20.0.2/24"}])
        .vm("p", kernel="ping", mem="16M", append="peer=10.20.0.9 count=3 interval=100",
            nics=[{"switch": "lan", "ip": "10.20.0.3/24"}])
    )  # fmt: skip

    async def scenario() -> tuple[int, subprocess.CompletedProcess[bytes], dict[str, Any]]:
        with trio.fail_after(30):
            async with open_lab(lab.spec()) as run:
                pinged = await trio.run_process(
                    ["ip", "netns", "exec", ns_b, "ping", "-c", "3", "-i", "0.2", "-w", "15",
                     "10.20.0.2"], capture_stdout=True, check=False,
                )  # fmt: skip
                status = (await run.vms["p"].wait()).exit_code
                port = run.vxlan["lan"]
                seen = {
                    "switch": port.counters,
                    "vxlan": port.stats(),
                    "linux_at": port.table.lookup(bytes.fromhex(linux_mac.replace(":", "")), 0),
                    "stats": render_snapshot(snapshot(run)),
                }
        return status, pinged, seen

    # the lab runs on a thread inside namespace A: its UDP socket is born there
    status, pinged, seen = in_netns(ns_a, lambda: trio.run(scenario))
    out = pinged.stdout.decode()
    assert pinged.returncode == 0 and " 0% packet loss" in out, out  # the namespace to a guest
    assert status == 0  # the guest's ping to the namespace: every reply came
    c = seen["vxlan"]["counters"]
    assert c["rx_frames"] >= 6 and c["tx_frames"] >= 6  # ARP and 3 pings each way, at least
    for bad in ("rx_bad_header", "rx_bad_flags", "rx_unknown_vni", "tx_dropped", "rx_runt"):
        assert c.get(bad, 0) == 0, (bad, c)
    assert seen["switch"].rx_frames == c["rx_frames"]
    assert seen["linux_at"] == ("10.9.0.2", 4789)  # (it sent from another port)
    assert seen["vxlan"]["remotes"][0] == "10.9.0.2:4789"
    [line] = [x for x in seen["stats"] if x.startswith("vxlan lan ")]
    assert line.startswith("vxlan lan vni=42 local=10.9.0.1:4789 remotes=10.9.0.2:4789 ")
    # the capture: the pings both ways, on the uplink's interface
    icmp = tshark_icmp(capture)
    from_linux = [x for x in icmp if x[0] == "vxlan:42" and x[1] == "10.20.0.9"]
    assert {(s, d, t) for _, s, d, t in from_linux} == {
        ("10.20.0.9", "10.20.0.2", "8"), ("10.20.0.9", "10.20.0.3", "0"),
    }  # fmt: skip
    assert sum(1 for x in icmp if x[0] == "g.eth0" and x[3] == "0") >= 3  # g's echo replies


# -- a lab over [hosts] --------------------------------------------------------------------

HOSTS_LAB = """
[hosts]
a = "10.9.0.1"
b = "10.9.0.2"

[switches.lan]
subnet = "10.20.0.0/24"
dns = true
capture = "lan.pcapng"

[switches.wan]

[switches.far]

[[links]]
a = "far"
b = "lan"

[vms.ga]
host = "a"
kernel = "udpecho"
nics = [{ switch = "lan", ip = "10.20.0.2/24" }, { switch = "wan" }]

[vms.gb]
host = "b"
kernel = "udpecho"
nics = [{ switch = "lan", ip = "10.20.0.3/24" }, { switch = "far" }]
"""


def test_each_host_runs_its_part_and_split_switches_get_uplinks(tmp_path: Path) -> None:
    spec = parse_lab(HOSTS_LAB, tmp_path)
    assert spec.hosts == {"a": A, "b": B} and spec.clock == "real"
    a, b = for_host(spec, "a"), for_host(spec, "b")
    assert (list(a.vms), list(a.remote_vms), list(b.vms)) == (["ga"], ["gb"], ["gb"])
    # lan has VMs on both: an uplink on each, to the other; its home (services, capture) is a
    assert set(a.switches) == {"lan", "wan"} and set(b.switches) == {"lan", "far"}
    assert a.switches["lan"].vxlan == VxlanSpec(vni_for("lan"), "10.9.0.1", 4789, (B,), True)
    assert b.switches["lan"].vxlan == VxlanSpec(vni_for("lan"), "10.9.0.2", 4789, (A,), True)
    assert a.switches["lan"].dns and a.switches["lan"].capture == tmp_path / "lan.pcapng"
    assert b.switches["lan"].subnet is None and b.switches["lan"].capture is None
    assert a.switches["wan"].vxlan is None and b.switches["far"].vxlan is None  # one host each
    # the link runs on the home of its switch a (far: b), and every host knows every link
    assert (a.links, b.links) == ((), spec.links) and a.reaches("lan") == {"lan", "far"}
    # a's DNS answers for the VM on b too
    assert services_config(a, "lan").dns.names == {  # type: ignore[union-attr]
        "ga": [ipaddress.IPv4Address("10.20.0.2")], "gb": [ipaddress.IPv4Address("10.20.0.3")],
    }  # fmt: skip
    # the VNI comes from the switch's name: the same on every host, every run
    assert vni_for("lan") == 15260844 and 1 <= vni_for("x" * 32) <= VNI_MAX
    fixed = HOSTS_LAB.replace("[switches.wan]", "[switches.wan]\nvxlan = { vni = 7 }")
    assert for_host(parse_lab(fixed, tmp_path), "a").switches["wan"].vxlan == VxlanSpec(
        7, "10.9.0.1", 4789, (), True
    )


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (('host = "b"', 'host = "c"'), r'vms.gb.host: no host named "c" in \[hosts\] \(a, b\)'),
        (('host = "b"\n', ""), r"vms.gb.host: missing: this lab runs over hosts a, b"),
        (
            ("[switches.wan]", '[switches.wan]\nvxlan = { vni = 7, local = "10.9.0.1" }'),
            r"switches.wan.vxlan.local: in a lab over \[hosts\] each host's VXLAN address",
        ),
        (('b = "10.9.0.2"', 'b = "10.9.0.1"'), r"hosts.b: 10.9.0.1:4789 is also host a's"),
        (('b = "10.9.0.2"', 'B = "10.9.0.2"'), "hosts.B: host names are lowercase"),
        (('b = "10.9.0.2"', 'b = "0.0.0.0"'), "hosts.b: the other hosts send to it"),
        (
            ("[switches.wan]", "[switches.wan]\nvxlan = { vni = 15260844 }"),
            "switches.wan: its VXLAN network id 15260844 is also switch lan's",
        ),
        (("[hosts]", 'clock = "virtual"\n[hosts]'), "hosts: a lab over several hosts .* real"),
    ],
)
def test_bad_hosts_say_which_and_why(tmp_path: Path, change: tuple[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_lab(HOSTS_LAB.replace(*change), tmp_path)


async def test_without_host_it_says_what_to_run_on_each(tmp_path: Path) -> None:
    spec = parse_lab(HOSTS_LAB, tmp_path, "net")
    with pytest.raises(ConfigError, match=r"lab net runs over hosts a, b: on a \(10.9.0.1\): "
                       r"hv up LAB --host a; on b \(10.9.0.2\): hv up LAB --host b"):  # fmt: skip
        await run_lab(spec)
    with pytest.raises(ConfigError, match=r'--host: no host named "c" in \[hosts\] \(a, b\)'):
        for_host(spec, "c")
    with pytest.raises(ConfigError, match=r"--host: lab lab has no \[hosts\] table"):
        for_host(parse_lab(UPLINK, tmp_path), "a")
    lab = tmp_path / "net.toml"
    lab.write_text(HOSTS_LAB)
    r = subprocess.run([sys.executable, "-m", "hv.cli", "up", str(lab)], capture_output=True,
                       text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 4 and r.stderr.startswith("hv: lab ") and "--host a" in r.stderr, r
    assert len(r.stderr.splitlines()) == 1


TWO_HOSTS = """
name = "two"

[hosts]
a = "10.9.0.1"
b = "10.9.0.2"

[switches.lan]
vxlan = { vni = 42 }              # (a Linux vxlan device joins with id 42)
capture = "lan.pcapng"

[vms.ga]
host = "a"
kernel = "udpecho"
mem = "16M"
nics = [{ switch = "lan", ip = "10.20.0.2/24" }]

[vms.gb]
host = "b"
kernel = "udpecho"
mem = "16M"
nics = [{ switch = "lan", ip = "10.20.0.3/24" }]

[vms.pb]
host = "b"
kernel = "ping"
mem = "16M"
append = "peer=10.20.0.2 count=3 interval=100"
nics = [{ switch = "lan", ip = "10.20.0.4/24" }]
"""


def test_a_lab_over_two_hosts_and_a_linux_vxlan_device_on_a_third(
    namespaces: Callable[[str], str], tmp_path: Path
) -> None:
    """Hosts a and b are two namespaces with an ``hv up --host`` each, c a third with a Linux
    vxlan device; a bridge in a joins the three (a 10.9.0.1, b .2, c .3)."""
    ns = {h: namespaces(h) for h in "abc"}
    ip("-n", ns["a"], "link", "add", "br0", "type", "bridge")
    ip("-n", ns["a"], "addr", "add", "10.9.0.1/24", "dev", "br0")
    ip("-n", ns["a"], "link", "set", "br0", "up")
    for h, addr in (("b", "10.9.0.2"), ("c", "10.9.0.3")):
        ip("-n", ns["a"], "link", "add", f"to-{h}", "type", "veth", "peer", "name", "up0",
           "netns", ns[h])  # fmt: skip
        ip("-n", ns["a"], "link", "set", f"to-{h}", "master", "br0", "up")
        ip("-n", ns[h], "addr", "add", f"{addr}/24", "dev", "up0")
        ip("-n", ns[h], "link", "set", "up0", "up")
    lab = tmp_path / "two.toml"
    lab.write_text(TWO_HOSTS)
    logs = {h: tmp_path / f"{h}.log" for h in "ab"}
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def output(h: str) -> str:
        return logs[h].read_text(errors="replace")

    def up(h: str) -> None:
        with logs[h].open("wb") as log:
            procs[h] = subprocess.Popen(
                ["ip", "netns", "exec", ns[h], sys.executable, "-m", "hv.cli", "up", str(lab),
                 "--host", h, "--no-view"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def alive(h: str, line: str) -> Callable[[], bool]:
        def check() -> bool:
            assert procs[h].poll() is None, output(h)
            return line in output(h)

        return check

    try:
        up("a")
        wait_until_sync(alive("a", "ga | udpecho: echoing"), "ga to run on host a", timeout=20)
        up("b")
        wait_until_sync(alive("b", "gb | udpecho: echoing"), "gb to run on host b", timeout=20)
        # guest to guest across hosts: pb (on b) pings ga (on a)
        wait_until_sync(lambda: "pb | ping: 10.20.0.2: " in output("b"), "pb's ping", timeout=15)
        assert "pb | ping: 10.20.0.2: 3 sent, 3 received" in output("b"), output("b")
        # a Linux vxlan device on c, flooding to both hosts, pings a guest on each
        linux_vxlan(ns["c"], "10.9.0.3", ["10.9.0.1", "10.9.0.2"], "10.20.0.9", dev="up0")
        for guest in ("10.20.0.2", "10.20.0.3"):
            r = in_ns(ns["c"], "ping", "-c", "3", "-i", "0.2", "-w", "10", guest)
            assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
        stats = subprocess.run(
            [sys.executable, "-m", "hv.cli", "stats", "two-a"], capture_output=True, text=True,
            timeout=30, check=True,
        ).stdout  # fmt: skip
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    [line] = [x for x in stats.splitlines() if x.startswith("vxlan lan ")]
    assert line.startswith(
        "vxlan lan vni=42 local=10.9.0.1:4789 remotes=10.9.0.2:4789,10.9.0.3:4789 "
    )  # fmt: skip   (c: learned)
    counts = dict(kv.split("=") for kv in line.split()[6:])
    assert int(counts["rx_frames"]) >= 8 and int(counts["tx_frames"]) >= 8  # ARP, 3 pings: 2 peers
    assert counts.get("rx_bad_header", "0") == "0" and counts.get("tx_dropped", "0") == "0"
    # the capture is host a's (the switch's home): ga's replies to pb and to c's pings
    icmp = tshark_icmp(tmp_path / "lan.pcapng")
    assert {(s, d) for i, s, d, t in icmp if i == "ga.eth0" and t == "0"} == {
        ("10.20.0.2", "10.20.0.4"), ("10.20.0.2", "10.20.0.9"),
    }  # fmt: skip
