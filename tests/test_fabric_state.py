"""The fabric's saved state (issue 21): each object saved mid-work, through the snapshot
format (``hv.hw._state.encode``/``decode``, read back with ``hv.hw.Fields``), into a fresh
object built from the same configuration; then the original and the restored one get the
same further frames at the same times and must give the same outputs (frames, times,
drops, capture bytes). Garbage and mutated states raise ``SnapshotError`` and nothing else."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import mac2str

from hv._errors import SnapshotError
from hv.hw import Fields
from hv.hw._state import decode, encode
from netfabric.frame import Frame
from netfabric.impair import GilbertElliott, ImpairedLink, Impairment
from netfabric.offload import Offload
from netfabric.ports.link import Link
from netfabric.ports.nic import NicPort
from netfabric.services import DhcpConfig, DnsConfig, ServiceHost, ServicesConfig
from netfabric.switch import LearningSwitch, Switch


class Saves(Protocol):
    def save_state(self) -> dict[str, Any]: ...
    def load_state(self, st: Any) -> None: ...


def through_file(state: dict[str, Any], where: str = "fabric") -> Fields:
    """A saved state as a restore reads it: encoded, decoded, in a checking reader."""
    return Fields(decode(encode(state), where), where)


def restore(saved: Saves, fresh: Saves) -> None:
    fresh.load_state(through_file(saved.save_state()))


def mac(i: int) -> bytes:
    return bytes([0x52, 0x54, 0, 0, i >> 8, i & 0xFF])


def eth(dst: bytes, src: bytes, n: int, size: int = 120) -> bytes:
    return dst + src + b"\x08\x00" + n.to_bytes(4, "big") + bytes(size - 18)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def ns(self) -> int:
        return int(self.t * 1e9)


# -- a small lab: two switches, an impaired link, impaired NIC-like ports, services ----------

IMPAIR = Impairment(
    delay=0.004, jitter=0.003, jitter_dist="normal", loss=0.05,
    loss_burst=GilbertElliott(0.05, 0.4), duplicate=0.05, corrupt=0.05, reorder=0.2,
    rate=2e6, queue=20_000, seed=7,
)  # fmt: skip
NET = IPv4Network("10.0.0.0/24")
SVC = "10.0.0.1"
POOL = (IPv4Address("10.0.0.100"), IPv4Address("10.0.0.103"))


def services_config() -> ServicesConfig:
    static = {mac(1): (IPv4Address("10.0.0.10"), "h1")}
    return ServicesConfig(NET, dhcp=DhcpConfig(pool=POOL, static=static), dns=DnsConfig())


@dataclass
class World:
    clock: Clock
    s1: Switch
    s2: Switch
    cables: list[ImpairedLink]
    hosts: dict[str, NicPort]
    svc: ServiceHost
    into: dict[str, Callable[[Frame], None]]  # each host's way in (through its cable)
    out: list[tuple[float, str, bytes]] = field(default_factory=list)

    def parts(self) -> list[Saves]:
        return [self.s1, self.s2, *self.cables, self.svc]

    def run_until(self, t: float) -> None:
        """The timeline's part: fire the cables' timers in time order up to ``t``."""
        while True:
            due = [
                (d, i) for i, c in enumerate(self.cables) if (d := c.next_deadline()) is not None
            ]
            if not due or min(due)[0] > t:
                break
            d, i = min(due)
            self.clock.t = max(self.clock.t, d)
            self.cables[i].fire(d)
        self.clock.t = t


def build(tmp_path: Path, tag: str) -> World:
    clock = Clock()
    s1 = Switch("s1", tmp_path / f"s1-{tag}.pcapng", max_macs=6, aging=2.0,
                clock=clock, stamp_ns=clock.ns)  # fmt: skip
    s2 = Switch("s2", clock=clock, stamp_ns=clock.ns)
    link_cable = ImpairedLink(IMPAIR, IMPAIR, "s1-s2", clock=clock)
    Link(s1, s2, link_cable)
    cables = [link_cable]
    out: list[tuple[float, str, bytes]] = []
    hosts: dict[str, NicPort] = {}
    into: dict[str, Callable[[Frame], None]] = {}
    for i, sw in ((1, s1), (2, s1), (3, s2), (4, s2)):
        name = f"h{i}"
        cable = ImpairedLink(IMPAIR, IMPAIR, name, clock=clock)
        cables.append(cable)

        def got(f: Frame, name: str = name) -> None:
            out.append((clock.t, name, f.data))

        # a VM's NIC as a lab plugs it in: its cable between it and the switch
        port = NicPort(sw, name, got, mac=mac(i), cable=cable)
        into[name] = port.send
        hosts[name] = port
    svc = ServiceHost(services_config(), clock=clock)
    svc.attach(s1)
    return World(clock, s1, s2, cables, hosts, svc, into, out)


def traffic(seed: int, start: float, n: int) -> list[tuple[float, str, bytes]]:
    """``n`` frames from random hosts (some from made-up MACs, to fill the tables) to random
    MACs, broadcasts among them, at random times after ``start``."""
    r = random.Random(seed)
    t = start
    out = []
    for k in range(n):
        t += r.expovariate(800.0)
        src_host = r.randint(1, 4)
        src = mac(src_host if r.random() < 0.7 else 100 + r.randint(0, 20))
        dst = b"\xff" * 6 if r.random() < 0.1 else mac(r.choice([1, 2, 3, 4, 100, 105]))
        out.append((t, f"h{src_host}", eth(dst, src, k, r.randint(60, 1400))))
    return out


def drive(w: World, events: list[tuple[float, str, bytes]]) -> None:
    for t, host, data in events:
        w.run_until(t)
        w.into[host](Frame(data))


def test_a_lab_s_fabric_restored_mid_run_gives_the_same_run_from_then_on(
    tmp_path: Path,
) -> None:
    a = build(tmp_path, "a")
    drive(a, traffic(1, 0.0, 300))
    t = a.clock.t
    # mid-work: frames in flight on cables (queued for the rate limit, in the delay line),
    # a table full, a port down, a live impairment change
    a.hosts["h4"].set_up(False)
    a.cables[1].set("egress", loss=0.2, delay=0.006)
    assert sum(c.egress.pending + c.ingress.pending for c in a.cables) > 0
    assert any(c.egress.queued_bytes or c.ingress.queued_bytes for c in a.cables)
    assert len(a.s1.core.table) == a.s1.core.max_macs
    b = build(tmp_path, "b")
    b.clock.t = t
    for old, new in zip(a.parts(), b.parts(), strict=True):
        restore(old, new)
    n_before = len(a.out)
    later = traffic(2, t, 300)
    later.insert(100, (later[99][0], "h4", b""))  # h4 comes back up here (below)
    for w in (a, b):
        for i, (when, host, data) in enumerate(later):
            if not data:
                w.run_until(when)
                w.hosts["h4"].set_up(True)
                continue
            drive(w, [(when, host, data)])
            if i == 200:  # a live change after the restore draws on the same state
                w.cables[0].set("both", jitter=0.001, seed=9)
        w.run_until(t + 10.0)
    assert b.out == a.out[n_before:] and len(b.out) > 200
    for old, new in zip(a.parts(), b.parts(), strict=True):
        assert new.save_state() == old.save_state()
    # the capture from the snapshot on: the same frames, the same bytes
    a.s1.close()
    b.s1.close()
    whole = (tmp_path / "s1-a.pcapng").read_bytes()
    restored = (tmp_path / "s1-b.pcapng").read_bytes()
    header = len(_blocks(restored)[0])
    assert whole[:header] == restored[:header]  # section header and interfaces
    tail = restored[header:]
    assert len(tail) > 10_000 and whole.endswith(tail)


def _blocks(data: bytes) -> tuple[bytes, int]:
    """The header blocks of a pcapng file (up to the first packet) and their count."""
    pos, n = 0, 0
    while pos < len(data):
        kind = int.from_bytes(data[pos : pos + 4], "little")
        if kind == 6:
            break
        pos += int.from_bytes(data[pos + 4 : pos + 8], "little")
        n += 1
    return data[:pos], n


def test_without_the_saved_state_the_run_differs(tmp_path: Path) -> None:
    """The comparison above can fail: a fresh fabric (no state loaded) runs otherwise."""
    a = build(tmp_path, "a")
    drive(a, traffic(1, 0.0, 300))
    t = a.clock.t
    b = build(tmp_path, "b")
    b.clock.t = t
    n_before = len(a.out)
    for w in (a, b):
        drive(w, traffic(2, t, 100))
        w.run_until(t + 10.0)
        w.s1.close()
    assert b.out != a.out[n_before:]


# -- one impaired direction, every stage busy ------------------------------------------------


def test_an_impaired_cable_restored_with_frames_in_flight_hands_them_on_alike() -> None:
    clock = Clock()
    got: dict[str, list[tuple[float, bytes, Offload | None]]] = {"a": [], "b": []}

    def make(key: str, imp: Impairment) -> tuple[ImpairedLink, Callable[[Frame], None]]:
        link = ImpairedLink(imp, None, key, clock=clock)
        send = link.wrap(lambda f: got[key].append((clock.t, f.data, f.offload)), "egress")
        return link, send

    a, send_a = make("a", IMPAIR)
    r = random.Random(3)
    for k in range(200):
        clock.t = k * 0.0002
        if (d := a.next_deadline()) is not None and d <= clock.t:
            a.fire(clock.t)
        send_a(Frame(eth(mac(2), mac(1), k, r.randint(60, 1500))))
    assert a.egress.pending > 20 and a.egress.queued_bytes > 0
    b, send_b = make("b", Impairment())  # built plain: the settings come from the file
    restore(a, b)
    assert b.egress.impairment == a.egress.impairment
    before = len(got["a"])
    for link, send in ((a, send_a), (b, send_b)):
        for k in range(200, 400):
            clock.t = k * 0.0002
            while (d := link.next_deadline()) is not None and d <= clock.t:
                link.fire(d)
            send(Frame(eth(mac(2), mac(1), k, 800)))
        while (d := link.next_deadline()) is not None:
            link.fire(d)
        clock.t = 0.04  # the second run starts where the snapshot was
    assert got["b"] == got["a"][before:] and len(got["b"]) > 40
    assert b.egress.counters == a.egress.counters


def test_an_offloaded_frame_on_a_delay_line_keeps_its_offload() -> None:
    clock = Clock()
    out: list[Frame] = []
    imp = Impairment(delay=0.01)
    a = ImpairedLink(imp, None, clock=clock)
    send = a.wrap(out.append, "egress")
    off = Offload(needs_csum=True, csum_start=34, csum_offset=16, gso_type=1, gso_size=1448,
                  hdr_len=54)  # fmt: skip
    send(Frame(eth(mac(2), mac(1), 1, 3000), off))
    b = ImpairedLink(imp, None, clock=clock)
    b.wrap(out.append, "egress")
    restore(a, b)
    b.fire(0.01)
    [f] = out
    assert f.offload == off and f.data == eth(mac(2), mac(1), 1, 3000)


# -- the switch alone ------------------------------------------------------------------------


def test_a_vlan_aware_switch_keeps_its_per_vlan_table_and_link_state() -> None:
    from netfabric.ports.base import PortVlan

    def make() -> LearningSwitch:
        s = LearningSwitch(max_macs=8, aging=5.0)
        for p in range(4):
            s.add_port(p)
        s.set_vlan(0, PortVlan(access=10))
        s.set_vlan(1, PortVlan(access=20))
        s.set_vlan(2, PortVlan(access=None, allowed=frozenset({10, 20}), native=1))
        return s

    a = make()
    for k in range(12):
        a.forward(k % 3, eth(mac(9), mac(k), k), k * 0.5)
    a.set_up(3, False)
    b = make()
    restore(a, b)
    assert b.table == a.table and not b.is_up(3) and b.ports == a.ports
    for k in range(40):
        fr = eth(mac(k % 13), mac((k * 7) % 11), k)
        assert b.forward(k % 4, fr, 6.0 + k * 0.3) == a.forward(k % 4, fr, 6.0 + k * 0.3)
    assert (b.table, b.ports, b.evictions, b.aged) == (a.table, a.ports, a.evictions, a.aged)


def test_a_switch_with_other_ports_refuses_the_state() -> None:
    a = Switch("s", clock=Clock())
    a.attach("x", lambda d, o: None)
    b = Switch("s", clock=Clock())
    b.attach("y", lambda d, o: None)
    with pytest.raises(SnapshotError, match=r"fabric\.ports: the snapshot's switch has ports"):
        restore(a, b)


# -- DHCP ------------------------------------------------------------------------------------


def dhcp(m: bytes, kind: str, *opts: tuple[str, Any], ciaddr: str = "0.0.0.0") -> bytes:
    src, dst = (ciaddr, SVC) if ciaddr != "0.0.0.0" else ("0.0.0.0", "255.255.255.255")
    return bytes(
        Ether(src=m.hex(":"), dst="ff:ff:ff:ff:ff:ff")
        / IP(src=src, dst=dst)
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac2str(m.hex(":")), xid=0x42, ciaddr=ciaddr)
        / DHCP(options=[("message-type", kind), *opts, "end"])
    )


def lease(s: ServiceHost, m: bytes, now: float, name: bytes = b"") -> str:
    """DISCOVER and REQUEST; the address leased ("" if the DISCOVER went unanswered)."""
    opts = [("hostname", name)] if name else []
    offers = s.handle(dhcp(m, "discover", *opts), now)
    if not offers:
        return ""
    ip = Ether(offers[0])[BOOTP].yiaddr
    s.handle(dhcp(m, "request", ("server_id", SVC), ("requested_addr", ip), *opts), now)
    return str(ip)


def test_dhcp_leases_round_trip_and_a_renewal_is_answered_alike() -> None:
    a = ServiceHost(services_config())
    a.dhcp.max_bindings = 3  # type: ignore[union-attr]
    ips = {i: lease(a, mac(i), 10.0 * i, f"pc{i}".encode()) for i in range(1, 5)}
    a.handle(dhcp(mac(2), "release", ("server_id", SVC), ciaddr=ips[2]), 70.0)
    a.handle(dhcp(mac(3), "decline", ("server_id", SVC), ("requested_addr", ips[3])), 71.0)
    assert lease(a, mac(7), 80.0) == ips[2]  # takes over the released binding (cap: 3)
    assert lease(a, mac(5), 81.0) == ""  # every binding in force
    a.add_name("extra", IPv4Address("10.0.0.50"))
    b = ServiceHost(services_config())
    b.dhcp.max_bindings = 3  # type: ignore[union-attr]
    restore(a, b)
    assert b.leases(100.0) == a.leases(100.0) and len(a.leases(100.0)) >= 3
    for s in (a, b):
        assert s._lookup("pc4") == [IPv4Address(ips[4])] and s._lookup("extra")
    ask = [
        (dhcp(mac(4), "request", ciaddr=ips[4]), 1900.0),  # a renewal
        (dhcp(mac(9), "discover"), 1901.0),  # a newcomer: the address a fresh one would not give
        (dhcp(mac(2), "discover"), 1902.0),
        (dhcp(mac(1), "discover"), 1903.0),
        (dhcp(mac(4), "request", ciaddr=ips[4]), 9000.0),  # expired meanwhile
        (dhcp(mac(5), "discover"), 9001.0),
    ]
    for frame, now in ask:
        assert b.handle(frame, now) == a.handle(frame, now)
    assert b.save_state() == a.save_state()
    fresh = ServiceHost(services_config())
    fresh.dhcp.max_bindings = 3  # type: ignore[union-attr]
    assert [fresh.handle(f, now) for f, now in ask] != [a.handle(f, now) for f, now in ask]


# -- hostile states ----------------------------------------------------------------------------


def _saved_examples() -> dict[str, tuple[dict[str, Any], Callable[[], Saves]]]:
    """A saved state of each kind, mid-work, and how to make a fresh object for it."""
    clock = Clock()
    link = ImpairedLink(IMPAIR, IMPAIR, clock=clock)
    send = link.wrap(lambda f: None, "egress")
    for k in range(40):
        clock.t = k * 0.0003
        send(Frame(eth(mac(2), mac(1), k, 100)))
    for k in range(10):  # a burst: some wait for the rate limiter
        send(Frame(eth(mac(2), mac(1), 40 + k, 400)))
    assert len(link.egress._line) > 5 and link.egress._shaper
    core = LearningSwitch(max_macs=8, aging=5.0)
    for p in range(3):
        core.add_port(p)
    for k in range(10):
        core.forward(k % 3, eth(mac(9), mac(k), k), k * 0.1)
    core.set_up(2, False)
    svc = ServiceHost(services_config())
    for i in range(1, 4):
        lease(svc, mac(i), float(i), f"pc{i}".encode())
    sw = Switch("s", clock=Clock())
    sw.attach("x", lambda d, o: None)
    return {
        "link": (link.save_state(), lambda: ImpairedLink(IMPAIR, IMPAIR, clock=Clock())),
        "core": (core.save_state(), lambda: _core3()),
        "services": (svc.save_state(), lambda: ServiceHost(services_config())),
        "switch": (sw.save_state(), lambda: _switch1()),
    }


def _core3() -> LearningSwitch:
    s = LearningSwitch(max_macs=8, aging=5.0)
    for p in range(3):
        s.add_port(p)
    return s


def _switch1() -> Switch:
    s = Switch("s", clock=Clock())
    s.attach("x", lambda d, o: None)
    return s


EXAMPLES = _saved_examples()

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False,
    allow_infinity=False), st.text(max_size=30), st.binary(max_size=40),
    st.sampled_from(["nan", "inf", "-inf", "0x1p+2000", "-0x1p+0", "0x1.8p+1", "1e400"]),
    st.lists(st.integers(-2, 70000), max_size=8), st.dictionaries(st.text(max_size=8),
    st.integers(), max_size=3),
)  # fmt: skip


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:30]):
            out += _paths(v, (*path, i))
    return out


def _mutate(state: dict[str, Any], r: random.Random, value: Any, how: int) -> dict[str, Any]:
    s = copy.deepcopy(state)
    path = r.choice(_paths(s)[1:])
    parent = s
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if how == 0:  # replace with junk
        parent[key] = value
    elif how == 1:  # drop it
        del parent[key]
    elif how == 2 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
        parent[key] += r.choice([-1, 1, 1 << 32, -(1 << 40), 624])
    elif how == 3 and isinstance(parent[key], list) and parent[key]:
        parent[key] = parent[key][: r.randrange(len(parent[key]))] + parent[key][:1]
    elif how == 4 and isinstance(parent[key], str) and parent[key].startswith(("0x", "-0x")):
        parent[key] = (-float.fromhex(parent[key]) * r.choice([1, 1e300, 3])).hex()
    else:
        parent[key] = value
    return s


def _exercise(obj: Saves) -> None:
    """A restored object keeps working: frames through it, its timers."""
    if isinstance(obj, ImpairedLink):
        for d in (obj.egress, obj.ingress):
            d.submit(eth(mac(2), mac(1), 1), None, 1.0)
            d.due(2.0)
            d.next_deadline()
            d.due(math.inf)
    elif isinstance(obj, LearningSwitch):
        for p in range(3):
            obj.forward(p, eth(mac(p), mac(p + 1), 1), 100.0)
        obj.expire(1000.0)
    elif isinstance(obj, ServiceHost):
        for i in (1, 2, 3, 8):
            lease(obj, mac(i), 500.0)
        obj.handle(dhcp(mac(9), "discover"), 5000.0)
        obj._lookup("pc1")
    elif isinstance(obj, Switch):
        obj.send(0, Frame(eth(mac(2), mac(1), 1)))


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_example_round_trips(kind: str) -> None:
    state, make = EXAMPLES[kind]
    obj = make()
    obj.load_state(through_file(state))
    assert obj.save_state() == state
    _exercise(obj)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1 << 30), value=junk, how=st.integers(0, 5))
def test_a_mutated_state_is_refused_with_snapshot_error_or_works(
    kind: str, seed: int, value: Any, how: int
) -> None:
    state, make = EXAMPLES[kind]
    bad = _mutate(state, random.Random(seed), value, how)
    obj = make()
    try:
        obj.load_state(through_file(bad, kind))
    except SnapshotError as e:
        assert str(e).startswith(kind)
        return
    _exercise(obj)  # what was accepted is sane enough to run on


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
@settings(max_examples=60, deadline=None)
@given(garbage=st.dictionaries(st.sampled_from(["table", "ports", "egress", "dhcp", "rng", "x"]),
                               junk, max_size=4))  # fmt: skip
def test_garbage_is_refused_with_snapshot_error(kind: str, garbage: dict[str, Any]) -> None:
    with pytest.raises(SnapshotError):
        EXAMPLES[kind][1]().load_state(through_file(garbage, kind))


def refused(kind: str, edit: Callable[[dict[str, Any]], None], match: str) -> None:
    """The example state of ``kind``, edited, is refused with a SnapshotError matching."""
    state, make = EXAMPLES[kind]
    bad = copy.deepcopy(state)
    edit(bad)
    with pytest.raises(SnapshotError, match=match):
        make().load_state(through_file(bad))


def test_a_generator_state_is_checked() -> None:
    def position(s: dict[str, Any]) -> None:
        s["egress"]["rng"][-1] = 625

    def zeros(s: dict[str, Any]) -> None:
        s["egress"]["rng"] = [0] * 625

    refused("link", position, r"egress\.rng\[624\]: 625 is not 0\.\.624")
    refused("link", zeros, "never all zero")


def test_entries_that_would_compare_their_frames_or_bindings_are_refused() -> None:
    """Two delay-line entries (or two ends of DHCP leases) with the same time and number
    would make the heap compare what they carry (a TypeError deep in a later frame)."""

    def same(entries: list[dict[str, Any]], t: str, n: str) -> None:
        assert len(entries) >= 2
        entries[1][t], entries[1][n] = entries[0][t], entries[0][n]

    def swap(s: dict[str, Any]) -> None:
        line = s["egress"]["line"]
        line[0], line[-1] = line[-1], line[0]

    refused(
        "link", lambda s: same(s["egress"]["line"], "departs", "seq"),
        r"egress\.line\[1\]\.seq: \d+ is not a fresh",
    )  # fmt: skip
    refused("link", swap, "not in heap order")
    refused(
        "services", lambda s: same(s["dhcp"]["ends"], "expires", "n"),
        r"dhcp\.ends\[1\]\.n: \d+ is not a fresh",
    )  # fmt: skip


# -- a lab's fabric as one state (hv.lab._fabric_state) ---------------------------------------


def test_a_lab_s_fabric_saves_and_loads_as_one(tmp_path: Path) -> None:
    from hv.lab._fabric_state import load_fabric, save_fabric

    @dataclass
    class Lab:  # the parts of a LabRun the fabric lives in
        switches: dict[str, Switch]
        impairments: dict[str, ImpairedLink]
        services: dict[str, ServiceHost]

    def lab(w: World) -> Lab:
        cables = {"links[0]": w.cables[0], **{f"h{i}.eth0": w.cables[i] for i in range(1, 5)}}
        return Lab({"s1": w.s1, "s2": w.s2}, cables, {"s1": w.svc})

    a, b = build(tmp_path, "a"), build(tmp_path, "b")
    drive(a, traffic(1, 0.0, 200))
    load_fabric(lab(b), through_file(save_fabric(lab(a))))
    assert save_fabric(lab(b)) == save_fabric(lab(a))
    other = lab(build(tmp_path, "c"))
    del other.services["s1"]
    why = r"fabric\.services: the snapshot's lab has s1; this one none"
    with pytest.raises(SnapshotError, match=why):
        load_fabric(other, through_file(save_fabric(lab(a))))
    for w in (a, b):
        w.s1.close()
    other.switches["s1"].close()
