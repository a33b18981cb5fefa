"""Frames and ports: a ``Frame`` is cut into wire segments once however many capture points
and receivers want them; every port kind passes one conformance check of the ``Port``
protocol (attach, send, deliver, counters, link down drops), as does a fake port that only
implements the protocol; the ports know the switch they plug into only as a ``SwitchSide``;
the machine's NIC imports nothing of the fabric but the frame and offload vocabulary;
``netfabric``'s public face is pinned."""

from __future__ import annotations

import ast
import collections
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import netfabric
import netfabric.frame
from netfabric.capture import PortCapture
from netfabric.frame import Frame
from netfabric.impair import ImpairedLink
from netfabric.offload import GSO_TCPV4, Offload, checksum, resolve, wire_count
from netfabric.ports import Listener, Port, PortCounters, PortVlan, SwitchSide
from netfabric.ports.host import CallbackPort, HostPort
from netfabric.ports.link import Link
from netfabric.ports.nic import NicPort
from netfabric.ports.services import ServicesPort
from netfabric.ports.tap import TapPort
from netfabric.switch import LearningSwitch, Switch

ROOT = Path(__file__).resolve().parent.parent
A, B, C = (bytes([0x52, 0x54, 0, 0, 0, i]) for i in (1, 2, 3))


def tcp_frame(dst: bytes, src: bytes, payload: int) -> bytes:
    """An IPv4/TCP frame with a ``payload``-byte payload (checksums left for the offload)."""
    tcp = struct.pack("!HHIIBBHHH", 1234, 80, 1000, 0, 5 << 4, 0x18, 65535, 0, 0)
    total = 20 + len(tcp) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 7, 0, 64, 6, 0, bytes(4), bytes(4))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst + src + b"\x08\x00" + ip + tcp + bytes(payload)


TSO = Offload(True, 34, 16, GSO_TCPV4, 1000, 54)


@pytest.fixture
def resolve_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every call of ``resolve`` a Frame makes, counted."""
    calls: list[int] = []

    def counting(data: bytes, off: Offload | None) -> list[bytes]:
        calls.append(len(data))
        return resolve(data, off)

    monkeypatch.setattr(netfabric.frame, "resolve", counting)
    return calls


# -- Frame -------------------------------------------------------------------------------


def test_a_frame_is_segmented_once(resolve_calls: list[int]) -> None:
    data = tcp_frame(B, A, 4500)
    f = Frame(data, TSO)
    assert f.wire_count == wire_count(data, TSO) == (5, 5 * 54 + 4500)
    assert resolve_calls == []  # counting cuts nothing
    first = f.wire()
    assert list(first) == resolve(data, TSO) and len(first) == 5
    assert f.wire() is first and f.wire() is first
    assert resolve_calls == [len(data)]


def test_a_plain_frame_is_its_own_wire(resolve_calls: list[int]) -> None:
    data = B + A + b"\x08\x00" + bytes(50)
    f = Frame(data)
    assert list(f.wire()) == [data] and f.wire_count == (1, len(data)) and len(f) == len(data)
    assert resolve_calls == []


def test_one_segmentation_for_every_capture_point_and_receiver(
    tmp_path: Path, resolve_calls: list[int]
) -> None:
    """A TSO frame flooded to three receivers that cannot take it, one that can, with the
    switch's capture, a switch listener and both ports' own captures: cut once."""
    sw = Switch("lan", capture=tmp_path / "lan.pcapng")
    seen: list[int] = []
    sw.add_listener(lambda pid, frame, ts: seen.append(len(frame.wire())))
    src = NicPort(sw, "a", lambda f: None, mac=A, capture=tmp_path / "a.pcapng")
    hosts = [sw.open_port(f"h{i}") for i in range(2)]
    wires: list[bytes] = []
    ServicesPort(sw, "svc", lambda w: wires.append(w) or [])
    whole: list[Frame] = []
    NicPort(sw, "b", whole.append, mac=B, capture=tmp_path / "b.pcapng")  # takes offloads
    data = tcp_frame(b"\xff" * 6, A, 4500)  # broadcast: flooded to every port
    src.send(Frame(data, TSO))
    assert resolve_calls == [len(data)]
    assert seen == [5] and len(wires) == 5
    for h in hosts:
        assert [h.receive_nowait() for _ in range(6)].index(None) == 5
    assert whole[0].data == data and whole[0].offload == TSO
    assert sw.capture is not None and sw.capture.frames == 5
    assert src.capture is not None and src.capture.frames == 5
    sw.close()


# -- the Port protocol -----------------------------------------------------------------------


class FakePort:
    """A port written against the protocol alone (no SwitchPort): what the switch needs."""

    def __init__(self, switch: Switch, name: str) -> None:
        self.switch = switch
        self.name = name
        self.listeners: tuple[Listener, ...] = ()
        self.got: list[bytes] = []
        self.id = switch.plug(self)

    def send(self, frame: Frame) -> None:
        self.switch.send(self.id, frame)

    def deliver(self, frame: Frame) -> None:
        self.got.extend(frame.wire())

    @property
    def counters(self) -> PortCounters:
        return self.switch.core.ports[self.id]

    @property
    def up(self) -> bool:
        return self.switch.core.is_up(self.id)

    def set_up(self, up: bool) -> None:
        self.switch.core.set_up(self.id, up)

    def add_listener(self, listener: Listener) -> None:
        self.listeners = (*self.listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        self.listeners = tuple(x for x in self.listeners if x != listener)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeTap:
    """What TapPort uses of a TapDevice."""

    def __init__(self) -> None:
        self.name = "tap0"
        self.got: list[bytes] = []
        self.counters: collections.Counter[str] = collections.Counter()

    def deliver(self, data: bytes, off: Offload | None = None) -> None:
        self.got.append(data)


# A port kind: (the port on ``switch``, what its device has been given so far)
Made = tuple[Any, Callable[[], list[bytes]]]


def fake(sw: Switch) -> Made:
    p = FakePort(sw, "fake")
    return p, lambda: p.got


def callback(sw: Switch) -> Made:
    got: list[bytes] = []
    return CallbackPort(sw, "cb", lambda data, off: got.append(data)), lambda: got


def host(sw: Switch) -> Made:
    p = HostPort(sw, "host", 16, None)

    def received() -> list[bytes]:
        out = []
        while (f := p.receive_nowait()) is not None:
            out.append(f)
        return out

    seen: list[bytes] = []
    return p, lambda: (seen.extend(received()), seen)[1]


def nic(sw: Switch, cable: ImpairedLink | None = None) -> Made:
    got: list[bytes] = []
    p = NicPort(sw, "vm.eth0", lambda f: got.append(f.data), mac=A, cable=cable)
    return p, lambda: got


def nic_behind_a_cable(sw: Switch) -> Made:
    return nic(sw, ImpairedLink(name="vm.eth0"))  # no impairment: straight through


def link(sw: Switch) -> Made:
    far = Switch("far")
    got: list[bytes] = []
    CallbackPort(far, "there", lambda data, off: got.append(data))
    return Link(sw, far).port_a, lambda: got


def services(sw: Switch) -> Made:
    got: list[bytes] = []
    return ServicesPort(sw, "svc:lan", lambda w: got.append(w) or []), lambda: got


def tap(sw: Switch) -> Made:
    dev = FakeTap()
    return TapPort(sw, dev), lambda: dev.got  # type: ignore[arg-type]


KINDS = [fake, callback, host, nic, nic_behind_a_cable, link, services, tap]


@pytest.mark.parametrize("make", KINDS, ids=[k.__name__ for k in KINDS])
def test_every_port_kind_keeps_the_protocol(make: Callable[[Switch], Made]) -> None:
    sw = Switch("lan")
    got: list[bytes] = []
    peer = CallbackPort(sw, "peer", lambda data, off: got.append(data))
    port, received = make(sw)
    assert isinstance(port, Port)
    # attached: the switch knows it by its id, under its name
    assert sw.ports[port.id] is port and port.id != peer.id and port.name
    assert port.up and port.listeners == ()
    to_peer = C + A + b"\x08\x00" + bytes(50)
    to_port = b"\xff" * 6 + C + b"\x08\x00" + bytes(60)
    # send: into the switch and out of the peer; deliver: what the switch sends out of it
    port.send(Frame(to_peer))
    assert got == [to_peer]
    peer.send(to_port)
    assert received() == [to_port]
    c = port.counters
    assert (c.rx_frames, c.rx_bytes, c.tx_frames, c.tx_bytes) == (1, 64, 1, 74)
    # listeners see what it sends and what it is given
    heard: list[tuple[int, bytes]] = []

    def listener(pid: int, frame: Frame, ts: int) -> None:
        heard.append((pid, frame.data))

    port.add_listener(listener)
    port.send(Frame(to_peer))
    peer.send(to_port)
    assert heard == [(port.id, to_peer), (port.id, to_port)]
    port.remove_listener(listener)
    # link down: what it sends and what would go to it is dropped, and counted
    port.set_up(False)
    assert not port.up
    port.send(Frame(to_peer))
    peer.send(to_port)
    assert got == [to_peer] * 2 and received() == [to_port] * 2
    assert c.drops["down"] == 2 and c.tx_frames == 2  # what it sent, the flood it missed
    port.set_up(True)
    peer.send(to_port)
    assert received() == [to_port] * 3 and len(heard) == 2
    port.flush()
    sw.close()


def test_a_port_capture_is_a_listener_on_the_port(tmp_path: Path) -> None:
    sw = Switch("lan")
    p = NicPort(sw, "a.eth0", lambda f: None, mac=A, capture=tmp_path / "a.pcapng")
    [cap] = p.listeners
    assert isinstance(cap, PortCapture) and p.capture is cap.writer
    CallbackPort(sw, "b", lambda data, off: None).send(A + B + b"\x08\x00" + bytes(50))
    p.send(Frame(B + A + b"\x08\x00" + bytes(50)))
    sw.close()
    assert cap.writer.frames == 2 and (tmp_path / "a.pcapng").stat().st_size > 100


# -- the switch as the ports see it ----------------------------------------------------------


class RecordingSide:
    """A switch side that is no ``Switch``: what the ports call on the switch they plug into,
    recorded (over a real core, which keeps their counters and link state)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.core = LearningSwitch()
        self.trunk_ports: set[int] = set()
        self.plugged: list[Port] = []
        self.sent: list[tuple[int, bytes]] = []
        self.vlans: list[tuple[int, PortVlan]] = []
        self.bound: list[tuple[int, bytes, bytes]] = []

    def plug(self, port: Port) -> int:
        self.core.add_port(len(self.plugged))
        self.plugged.append(port)
        return len(self.plugged) - 1

    def send(self, port_id: int, frame: Frame) -> None:
        self.sent.append((port_id, frame.data))

    def set_vlan(self, port_id: int, vlan: PortVlan) -> None:
        self.core.set_vlan(port_id, vlan)
        self.vlans.append((port_id, vlan))

    def bind_ip(self, port_id: int, ip: bytes, mac: bytes) -> None:
        self.bound.append((port_id, ip, mac))


def test_ports_plug_into_any_switch_side() -> None:
    a, b = RecordingSide("a"), RecordingSide("b")
    sides: list[SwitchSide] = [a, b, Switch("lan")]  # mypy: the Switch is one too
    assert sides[2].core.ports == {}
    ip = bytes([10, 0, 0, 2])
    nic = NicPort(a, "vm.eth0", lambda f: None, mac=A, ip=ip, vlan=PortVlan(access=10))
    h = HostPort(a, "h", 4, None)
    svc = ServicesPort(a, "svc", lambda w: [w])
    ln = Link(a, b)
    assert a.plugged == [nic, h, svc, ln.port_a] and b.plugged == [ln.port_b]
    assert a.bound == [(0, ip, A)] and a.vlans[0] == (0, PortVlan(access=10))
    # a is VLAN-aware: the link's end there is made a trunk carrying every VLAN
    assert a.trunk_ports == {3} and b.trunk_ports == {0} and b.vlans == []
    assert a.vlans[1:] == [(3, PortVlan(access=None, native=1))]
    frame = B + A + b"\x08\x00" + bytes(50)
    nic.send(Frame(frame))
    h.send(frame)
    svc.deliver(Frame(frame))  # its answer goes back through the switch side
    ln.port_a.deliver(Frame(frame))  # crosses to b's end, which sends it into b
    assert a.sent == [(0, frame), (1, frame), (2, frame)] and b.sent == [(0, frame)]
    nic.set_up(False)
    assert not nic.up and h.up and h.counters is a.core.ports[1]
    assert repr(h) == "<HostPort 'h' #1 on 'a'>"


def test_the_ports_never_import_the_switch() -> None:
    paths = sorted((ROOT / "netfabric" / "ports").glob("*.py"))
    assert len(paths) >= 7  # the check looks where it should
    for path in paths:
        got = netfabric_imports(path)
        assert not got & {"netfabric", "netfabric.switch", "netfabric.fabric"}, (path, got)


def test_the_port_vocabulary_is_re_exported_where_it_was() -> None:
    import netfabric.switch

    assert netfabric.switch.PortVlan is PortVlan is netfabric.PortVlan
    assert netfabric.switch.PortCounters is PortCounters is netfabric.PortCounters


# -- layering and the public face -----------------------------------------------------------


def netfabric_imports(path: Path) -> set[str]:
    """The netfabric modules a source file imports (at any level, TYPE_CHECKING too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "netfabric"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out |= {node.module} if node.module.split(".")[0] == "netfabric" else set()
    return out


def test_the_virtio_nic_imports_only_the_frame_vocabulary_of_the_fabric() -> None:
    got = netfabric_imports(ROOT / "hv" / "virtio" / "_net.py")
    assert got <= {"netfabric.frame", "netfabric.offload"}, got
    assert "netfabric.frame" in got  # the check looks where it should


def test_netfabric_public_names() -> None:
    assert netfabric.__all__ == [
        "Cable",
        "CallbackPort",
        "Frame",
        "HostPort",
        "ImpairedLink",
        "Impairment",
        "LearningSwitch",
        "Link",
        "LinkPort",
        "NicPort",
        "Offload",
        "PcapngWriter",
        "Port",
        "PortCounters",
        "PortVlan",
        "ServicesPort",
        "Switch",
        "SwitchPort",
        "TapPort",
        "VxlanEndpoint",
        "VxlanPort",
        "mac_str",
        "parse_mac",
    ]
    assert all(getattr(netfabric, n) is not None for n in netfabric.__all__)


def test_the_old_fabric_module_keeps_its_names() -> None:
    import netfabric.fabric as old

    assert old.Switch is netfabric.Switch and old.HostPort is netfabric.HostPort
    assert old.Link is netfabric.Link and old.SwitchPort is netfabric.SwitchPort
    for name in old.__all__:
        assert getattr(old, name) is not None
