"""netfabric's sans-IO cores: the learning switch (learning, flooding, aging, the table
bound, port state, counters) and the pcapng writer, read back by scapy and tshark."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import hv
from netfabric import LearningSwitch, PcapngWriter, PortVlan, mac_str, parse_mac
from netfabric.ports.link import Link, find_loop
from netfabric.switch import Switch

A, B, C = (
    parse_mac("52:54:00:00:00:0a"),
    parse_mac("52:54:00:00:00:0b"),
    parse_mac("52:54:00:00:00:0c"),
)
BCAST = b"\xff" * 6
MCAST = parse_mac("01:00:5e:00:00:01")


def frame(dst: bytes, src: bytes, payload: bytes = b"x" * 46) -> bytes:
    return dst + src + b"\x08\x00" + payload


@pytest.fixture
def sw() -> LearningSwitch:
    s = LearningSwitch(max_macs=4, aging=10.0)
    for p in (1, 2, 3):
        s.add_port(p)
    return s


def test_learning_then_unicast(sw: LearningSwitch) -> None:
    assert sw.forward(1, frame(B, A), 0.0) == (2, 3)  # unknown: flooded
    assert sw.forward(2, frame(A, B), 0.1) == (1,)  # A was learned on 1
    assert sw.forward(1, frame(B, A), 0.2) == (2,)
    assert sw.lookup(A, 0.2) == 1 and sw.lookup(B, 0.2) == 2
    c1, c2, c3 = (sw.ports[p] for p in (1, 2, 3))
    assert (c1.rx_frames, c1.tx_frames, c2.tx_frames, c3.tx_frames) == (2, 1, 2, 1)
    assert c1.rx_bytes == 2 * 60


def test_broadcast_and_multicast_flood_but_are_never_learned(sw: LearningSwitch) -> None:
    assert sw.forward(1, frame(BCAST, A), 0.0) == (2, 3)
    assert sw.forward(2, frame(MCAST, B), 0.0) == (1, 3)
    assert sw.forward(3, frame(A, MCAST), 0.0) == (1,)  # a multicast source is not learned
    assert sw.lookup(MCAST, 0.0) is None


def test_aging(sw: LearningSwitch) -> None:
    sw.forward(1, frame(BCAST, A), 0.0)
    assert sw.forward(2, frame(A, B), 5.0) == (1,)
    assert sw.forward(2, frame(A, B), 10.5) == (1, 3)  # A aged out: flooded again
    assert sw.expire(30.0) == 2 and sw.table == {}


def test_the_table_is_bounded_against_a_mac_flood(sw: LearningSwitch) -> None:
    for i in range(1000):
        src = bytes([0x02, 0, 0, 0, i >> 8, i & 0xFF])
        sw.forward(3, frame(BCAST, src), float(i) / 1000)
    assert len(sw.table) == 4 and sw.evictions == 996
    sw.forward(1, frame(BCAST, A), 1.0)
    assert sw.forward(2, frame(A, B), 1.0) == (1,)  # real traffic still learns and flows


def test_ports_down_drop_and_forget(sw: LearningSwitch) -> None:
    sw.forward(1, frame(BCAST, A), 0.0)
    sw.set_up(2, False)
    assert sw.forward(1, frame(BCAST, A), 0.0) == (3,)
    assert sw.forward(2, frame(A, B), 0.0) == ()
    # what it sent, and the flood it missed: both counted on the port that is down
    assert sw.ports[2].drops == {"down": 2} and sw.ports[2].tx_frames == 1
    sw.set_up(1, False)
    assert sw.lookup(A, 0.0) is None  # learned behind a port that went down
    assert sw.forward(3, frame(A, C), 0.0) == ()  # flooded (A is forgotten): to no one
    assert sw.ports[1].drops == {"down": 1} and sw.ports[2].drops == {"down": 3}
    sw.learn(A, 1, 0.0)  # told from outside that A is behind port 1, which is down
    assert sw.forward(3, frame(A, C), 0.0) == ()
    assert sw.ports[1].drops == {"down": 2} and sw.ports[3].drops == {}
    sw.set_up(1, True)
    sw.set_up(2, True)
    assert sw.forward(3, frame(BCAST, C), 0.0) == (1, 2)
    assert sw.ports[1].drops == {"down": 2} and sw.ports[2].drops == {"down": 3}


def test_a_vlan_flood_counts_down_only_where_its_vlan_goes(vsw: LearningSwitch) -> None:
    vsw.set_up(2, False)
    vsw.set_up(3, False)
    assert vsw.forward(1, frame(BCAST, A), 0.0) == (4,)
    assert vsw.ports[2].drops == {"down": 1} and vsw.ports[3].drops == {}


def test_runts_and_same_port_frames_are_dropped_and_counted(sw: LearningSwitch) -> None:
    assert sw.forward(1, b"\x01" * 13, 0.0) == ()
    sw.forward(1, frame(BCAST, A), 0.0)
    sw.forward(1, frame(BCAST, B), 0.0)  # B is behind port 1 too
    assert sw.forward(1, frame(A, B), 0.0) == ()
    assert sw.ports[1].drops == {"runt": 1, "same_port": 1}


def test_mac_text() -> None:
    assert mac_str(A) == "52:54:00:00:00:0a"
    for bad in ("52:54:00:00:00", "52-54-00-00-00-0a", "zz:54:00:00:00:0a"):
        with pytest.raises(ValueError, match="not a MAC address"):
            parse_mac(bad)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 3), st.binary(max_size=80), st.floats(0, 100)), max_size=200)
)
def test_fuzzed_frames_never_break_the_switch(frames: list[tuple[int, bytes, float]]) -> None:
    s = LearningSwitch(max_macs=8, aging=10.0)
    for p in (1, 2, 3):
        s.add_port(p)
    for port, data, now in frames:
        out = s.forward(port, data, now)
        assert port not in out and set(out) <= {1, 2, 3}
        assert len(s.table) <= 8


# -- pcapng ----------------------------------------------------------------------------------


def write_capture(path: Path) -> list[tuple[int, bytes, int]]:
    records = [
        (0, frame(BCAST, A, b"\x45" + bytes(45)), 1_700_000_000_123_456_789),
        (1, frame(A, B, b"hello".ljust(46, b".")), 1_700_000_000_223_456_789),
        (0, frame(B, A, b"odd-sized" * 7), 1_700_000_001_000_000_001),
    ]
    with open(path, "wb") as f:
        w = PcapngWriter(f)
        assert w.add_interface("a.eth0") == 0
        assert w.add_interface("b.eth0") == 1
        for iface, data, ts in records:
            w.write(iface, data, ts)
        w.close()
    return records


def test_scapy_reads_the_capture(tmp_path: Path) -> None:
    from scapy.utils import PcapNgReader

    path = tmp_path / "lan.pcapng"
    records = write_capture(path)
    with PcapNgReader(str(path)) as r:
        pkts = list(r)
    assert [bytes(p) for p in pkts] == [data for _, data, _ in records]
    assert [int(p.time * 10**9) // 1000 for p in pkts] == [ts // 1000 for _, _, ts in records]


def test_tshark_reads_the_capture_with_interface_names(tmp_path: Path) -> None:
    tshark = shutil.which("tshark")
    assert tshark, "tshark is a test dependency (.ci/system-deps.sh installs it)"
    path = tmp_path / "lan.pcapng"
    write_capture(path)
    r = subprocess.run(
        [
            tshark,
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "eth.src",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.len",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("\t") for line in r.stdout.strip().splitlines()]
    assert [(row[0], row[1]) for row in rows] == [
        ("a.eth0", mac_str(A)),
        ("b.eth0", mac_str(B)),
        ("a.eth0", mac_str(A)),
    ]
    assert rows[0][2].startswith("1700000000.123456789")
    assert [int(row[3]) for row in rows] == [60, 60, 77]


def test_a_capture_is_readable_up_to_its_last_flush() -> None:
    buf = io.BytesIO()
    w = PcapngWriter(buf)
    w.add_interface("a.eth0")
    w.write(0, frame(BCAST, A), 1)
    w.flush()
    flushed = len(buf.getvalue())
    w.write(0, frame(BCAST, A), 2)  # buffered, not yet written: a kill here loses only this
    assert len(buf.getvalue()) == flushed and flushed % 4 == 0
    with pytest.raises(ValueError, match="no interface 5"):
        w.write(5, b"x", 0)


async def test_vms_on_a_switch_in_code_with_nics(tmp_path: Path) -> None:
    """The Python API: VmConfig(nics=[hv.Nic(switch, ip=...)]), the switch opened in a
    nursery; the ping guest's replies come back and the port counters saw them."""
    async with trio.open_nursery() as nursery:
        lan = await nursery.start(Switch("lan", capture=tmp_path / "lan.pcapng").run)
        echo = hv.VmConfig(
            kernel=hv.guest_path("udpecho"),
            name="b",
            mem_size=16 << 20,
            nics=(hv.Nic(lan, ip="10.0.0.2/24"),),
        )
        ping = hv.VmConfig(
            kernel=hv.guest_path("ping"),
            name="a",
            mem_size=16 << 20,
            cmdline="peer=10.0.0.2 count=3 interval=20",
            nics=(hv.Nic(lan, ip="10.0.0.1/24", mac="52:54:00:00:00:0a"),),
        )
        server = await nursery.start(hv.run_vm, echo)
        client = await nursery.start(hv.run_vm, ping)
        with trio.fail_after(20):
            await client.console.wait_for(b"3 received")
            info = await client.wait()
        server.stop("done")
        nursery.cancel_scope.cancel()
    assert info.exit_code == 0
    assert "ip=10.0.0.1/24" in client.machine.config.cmdline
    ports = {p.name: p for p in lan.ports.values()}
    assert set(ports) == {"a.eth0", "b.eth0"}
    assert ports["a.eth0"].counters.rx_frames >= 4  # ARP + 3 echo requests
    assert lan.core.lookup(bytes.fromhex("52540000000a"), time.monotonic()) == ports["a.eth0"].id


def test_nic_settings_are_checked() -> None:
    lan = Switch("lan")
    for bad, msg in (
        ({"ip": "10.0.0.300"}, "not an IPv4 address"),
        ({"mac": "01:00:5e:00:00:01"}, "multicast"),
        ({"mac": "52:54:00"}, "not a MAC"),
        ({"ip": "10.0.0.1/24", "gateway": "10.0.1.1"}, "not in the NIC's subnet"),
    ):
        with pytest.raises(hv.ConfigError, match=msg):
            hv.Nic(lan, **bad)  # type: ignore[arg-type]


# -- VLANs and links ---------------------------------------------------------------------------


def tagged(dst: bytes, src: bytes, vid: int, payload: bytes = b"x" * 46) -> bytes:
    return dst + src + b"\x81\x00" + vid.to_bytes(2, "big") + b"\x08\x00" + payload


@pytest.fixture
def vsw() -> LearningSwitch:
    """Ports 1, 2: access VLAN 10; 3: access VLAN 20; 4: trunk (10, 20; native 1); 5: VLAN 1."""
    s = LearningSwitch()
    for p in (1, 2, 3, 4, 5):
        s.add_port(p)
    s.set_vlan(1, PortVlan(access=10))
    s.set_vlan(2, PortVlan(access=10))
    s.set_vlan(3, PortVlan(access=20))
    s.set_vlan(4, PortVlan(access=None, allowed=frozenset({10, 20}), native=1))
    return s


def test_vlan_broadcast_stays_in_its_vlan(vsw: LearningSwitch) -> None:
    assert vsw.forward(1, frame(BCAST, A), 0.0) == (2, 4) and vsw.vlan == 10
    assert vsw.egress_tagged(4, 10) and not vsw.egress_tagged(2, 10)
    assert vsw.forward(3, frame(BCAST, C), 0.0) == (4,) and vsw.vlan == 20
    assert vsw.forward(5, frame(BCAST, B), 0.0) == (4,) and vsw.vlan == 1
    assert not vsw.egress_tagged(4, 1)  # the native VLAN leaves untagged


def test_vlan_trunk_classifies_by_tag_and_learns_per_vlan(vsw: LearningSwitch) -> None:
    assert vsw.forward(4, tagged(BCAST, B, 20), 0.0) == (3,)
    assert vsw.forward(4, tagged(BCAST, B, 10), 0.0) == (1, 2)
    # B is learned on the trunk in both VLANs; A (VLAN 10) reaches B through it only in 10
    assert vsw.lookup(B, 0.0, vlan=10) == 4 and vsw.lookup(B, 0.0, vlan=20) == 4
    assert vsw.forward(1, frame(B, A), 0.1) == (4,)
    # the same MAC behind another port in another VLAN is a different entry
    assert vsw.forward(3, frame(BCAST, A), 0.2) == (4,)
    assert vsw.lookup(A, 0.2, vlan=10) == 1 and vsw.lookup(A, 0.2, vlan=20) == 3


def test_vlan_frames_that_do_not_belong_are_dropped_and_counted(vsw: LearningSwitch) -> None:
    assert vsw.forward(1, tagged(BCAST, A, 20), 0.0) == ()  # tagged on an access port
    assert vsw.forward(4, tagged(BCAST, B, 30), 0.0) == ()  # not allowed on the trunk
    assert vsw.ports[1].drops["tagged_on_access"] == 1
    assert vsw.ports[4].drops["vlan_not_allowed"] == 1
    with pytest.raises(ValueError, match="VLAN id"):
        vsw.set_vlan(1, PortVlan(access=4095))


TPIDS = (b"\x81\x00", b"\x88\xa8", b"\x91\x00")  # 802.1Q C-tag, 802.1ad S-tag, legacy QinQ
HOSTS = {  # name: (switch, VLAN role)
    "lan1": ("lan", PortVlan(access=1)),
    "lan10": ("lan", PortVlan(access=10)),
    "lan20": ("lan", PortVlan(access=20)),
    "lantrunk": ("lan", PortVlan(access=None, allowed=frozenset({10}), native=1)),
    "wan1": ("wan", PortVlan(access=1)),
    "wan10": ("wan", PortVlan(access=10)),
    "wan20": ("wan", PortVlan(access=20)),
    "wantrunk": ("wan", PortVlan(access=None, allowed=frozenset({1, 20}), native=None)),
}
VIDS = (0, 1, 10, 20, 30)
HOST_MAC = {name: bytes([0x52, 0x54, 0, 0, 9, i]) for i, name in enumerate(HOSTS)}


def classified(role: PortVlan, f: bytes) -> int | None:
    """The VLAN a frame on a port with ``role`` belongs to (by its outer tag), None if it has
    no business there."""
    if f[12:14] == TPIDS[0] and int.from_bytes(f[14:16], "big") & 0xFFF:
        vid = int.from_bytes(f[14:16], "big") & 0xFFF
        return vid if role.access is None and role.carries(vid) else None
    return role.access if role.access is not None else role.native


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from((1, 10, None)),
    st.lists(
        st.tuples(
            st.sampled_from(sorted(HOSTS)),
            st.sampled_from([BCAST, *HOST_MAC.values()]),
            st.lists(
                st.tuples(st.sampled_from(TPIDS), st.sampled_from(VIDS), st.booleans()),
                max_size=3,
            ),
            st.binary(max_size=20),
        ),
        max_size=60,
    ),
)
def test_fuzzed_vlan_frames_never_leak(
    native: int | None, frames: list[tuple[str, bytes, list[tuple[bytes, int, bool]], bytes]]
) -> None:
    """Two switches joined by a trunk link (native VLAN 1, 10 or none), access and trunk
    hosts on both: frames with stacked tags (priority-tagged outer over a VLAN tag, 802.1ad
    and legacy QinQ TPIDs, tags carrying the native VLAN) never reach a host in another VLAN,
    and an access host never gets a tagged frame."""
    sw = {"lan": Switch("lan"), "wan": Switch("wan")}
    link = Link(sw["lan"], sw["wan"])
    got: list[tuple[str, bytes]] = []
    ports = {}
    for name, (where, role) in HOSTS.items():
        ports[name] = sw[where].attach(
            name, lambda f, off, name=name: got.append((name, f)), vlan=role
        )
    link.trunk(native=native)
    sent_vlan: dict[int, int | None] = {}
    for i, (sender, dst, tags, body) in enumerate(frames):
        stack = b"".join(tpid + ((pcp << 13) | vid).to_bytes(2, "big") for tpid, vid, pcp in tags)
        f = dst + HOST_MAC[sender] + stack + b"\x08\x00" + body + b"ID" + i.to_bytes(2, "big")
        sent_vlan[i] = classified(HOSTS[sender][1], f)
        ports[sender].send(f)
    for receiver, f in got:
        assert f[-4:-2] == b"ID"
        role = HOSTS[receiver][1]
        vlan = sent_vlan[int.from_bytes(f[-2:], "big")]
        assert vlan is not None and classified(role, f) == vlan, (receiver, f.hex())
        inner = f[12:14] if role.access is not None else f[16:18]
        assert inner not in TPIDS, (receiver, f.hex())  # no tag left to be read further on


async def test_vlans_across_a_link_between_two_switches() -> None:
    """lan and wan joined by a link: VLAN 10 on lan reaches VLAN 10 on wan (tagged on the
    link, untagged at the edges) and never VLAN 20."""
    lan, wan = Switch("lan"), Switch("wan")
    got: dict[str, list[bytes]] = {n: [] for n in ("a", "b", "c")}
    pa = lan.attach("a", lambda f, off: got["a"].append(f))
    link = Link(lan, wan)
    pb = wan.attach("b", lambda f, off: got["b"].append(f))
    pc = wan.attach("c", lambda f, off: got["c"].append(f))
    pa.set_vlan(PortVlan(access=10))
    pb.set_vlan(PortVlan(access=10))
    pc.set_vlan(PortVlan(access=20))
    pa.send(frame(BCAST, A))
    assert got["b"] == [frame(BCAST, A)] and got["c"] == [] and got["a"] == []
    assert link.port_a.counters.tx_frames == 1
    pb.send(frame(A, B))
    assert got["a"] == [frame(A, B)]
    assert lan.core.lookup(B, time.monotonic(), vlan=10) == link.port_a.id


def test_a_loop_of_links_is_found() -> None:
    assert find_loop([("lan", "wan"), ("wan", "dmz")]) is None
    assert find_loop([("lan", "wan"), ("wan", "dmz"), ("dmz", "lan")]) == [
        "dmz",
        "wan",
        "lan",
        "dmz",
    ]
    assert find_loop([("a", "b"), ("a", "b")]) == ["a", "b", "a"]
    x = Switch("x")
    with pytest.raises(ValueError, match="loop"):
        Link(x, x)


def test_double_tagging_from_an_access_port_does_not_cross_a_trunk() -> None:
    """The escape: [VID 0, VID 20] from an access port of VLAN 1 lost its outer tag on the
    native-VLAN-1 link and reached VLAN 20 on the next switch. A priority tag alone is still
    fine: the frame is the access VLAN's, delivered without the tag (or with the VLAN's own
    VID where it leaves tagged, never VID 0)."""
    lan, wan = Switch("lan"), Switch("wan")
    got: dict[str, list[bytes]] = {n: [] for n in ("b", "c", "t", "u")}
    pa = lan.attach("a", lambda f, off: None, vlan=PortVlan(access=1))
    Link(lan, wan)
    wan.attach("b", lambda f, off: got["b"].append(f), vlan=PortVlan(access=1))
    wan.attach("c", lambda f, off: got["c"].append(f), vlan=PortVlan(access=20))
    trunk = PortVlan(access=None, allowed=frozenset({1, 20}), native=None)
    wan.attach("t", lambda f, off: got["t"].append(f), vlan=trunk)
    lan.attach("u", lambda f, off: got["u"].append(f), vlan=trunk)
    ip = b"\x08\x00" + b"x" * 46
    pa.send(BCAST + A + b"\x81\x00\x00\x00" + b"\x81\x00\x00\x14" + ip)
    pa.send(BCAST + A + b"\x81\x00\xa0\x00" + b"\x88\xa8\x00\x14" + ip)
    assert got == {"b": [], "c": [], "t": [], "u": []}
    assert pa.counters.drops["double_tagged"] == 2
    pa.send(BCAST + A + b"\x81\x00\xa0\x00" + ip)  # priority 5, no inner tag
    assert got["b"] == [BCAST + A + ip] and got["c"] == []
    assert got["u"] == [BCAST + A + b"\x81\x00\xa0\x01" + ip]  # VLAN 1, priority kept
    assert got["t"] == [BCAST + A + b"\x81\x00\x00\x01" + ip]  # untagged on the link


def test_stacked_and_service_tags_on_access_and_trunk_ports(vsw: LearningSwitch) -> None:
    """Per cause: a service tag (802.1ad, or the old 0x9100) on an access port is a tagged
    frame; on a trunk it is not this C-VLAN bridge's to carry; a VLAN tag around another tag
    is dropped on any port; a tagged frame of the native VLAN is the native VLAN's."""
    ip = b"\x08\x00" + b"x" * 46
    assert vsw.forward(1, BCAST + A + b"\x88\xa8\x00\x0a" + ip, 0.0) == ()
    assert vsw.forward(1, BCAST + A + b"\x91\x00\x00\x00" + ip, 0.0) == ()
    assert vsw.ports[1].drops["tagged_on_access"] == 2
    assert vsw.forward(4, BCAST + B + b"\x88\xa8\x00\x0a" + ip, 0.0) == ()
    assert vsw.ports[4].drops["s_tag"] == 1
    assert vsw.forward(4, BCAST + B + b"\x81\x00\x00\x01\x81\x00\x00\x14" + ip, 0.0) == ()
    assert vsw.forward(4, BCAST + B + b"\x81\x00\x00\x0a\x88\xa8\x00\x14" + ip, 0.0) == ()
    assert vsw.ports[4].drops["double_tagged"] == 2
    assert vsw.forward(4, tagged(BCAST, B, 1), 0.0) == (5,) and vsw.vlan == 1
    assert vsw.forward(4, BCAST + B + b"\x81\x00\x00\x00" + ip, 0.0) == (5,) and vsw.vlan == 1
    assert vsw.forward(2, BCAST + C + b"\x81\x00\x00\x00" + ip, 0.0) == (1, 4)
    assert vsw.vlan == 10 and vsw.tagged_in


def arp_request(sender_mac: bytes, sender_ip: bytes, target_ip: bytes) -> bytes:
    arp = b"\x00\x01\x08\x00\x06\x04\x00\x01" + sender_mac + sender_ip + bytes(6) + target_ip
    return BCAST + sender_mac + b"\x08\x06" + arp + bytes(18)


def test_an_arp_request_for_a_bound_address_goes_to_its_owner_alone() -> None:
    """bind_ip (a NIC's static address): a broadcast ARP request for it reaches the owner's
    port only, as a unicast to the owner's MAC; one for an unbound address floods; the
    asker's MAC is learned either way."""
    sw = Switch("lan")
    got: dict[int, list[bytes]] = {i: [] for i in range(5)}
    ports = [sw.attach(f"p{i}", lambda f, off, i=i: got[i].append(f)) for i in range(5)]
    owner_mac = bytes.fromhex("525400000002")
    sw.bind_ip(ports[2].id, bytes([10, 0, 0, 2]), owner_mac)
    asker = bytes.fromhex("525400000001")
    ports[0].send(arp_request(asker, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
    assert [len(got[i]) for i in range(5)] == [0, 0, 1, 0, 0]
    assert (
        got[2][0][:6] == owner_mac
        and got[2][0][6:] == arp_request(asker, b"\n\0\0\1", b"\n\0\0\2")[6:]
    )
    assert sw.core.lookup(asker, time.monotonic()) == ports[0].id
    ports[0].send(arp_request(asker, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 9])))
    assert [len(got[i]) for i in range(5)] == [0, 1, 2, 1, 1]
    ports[2].send(arp_request(owner_mac, bytes([10, 0, 0, 2]), bytes([10, 0, 0, 2])))  # its own
    assert [len(got[i]) for i in range(5)] == [1, 2, 2, 2, 2]
