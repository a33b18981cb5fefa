"""A switch with ports: the learning switch's core, the ports frames leave through, capture.

A port is anything with ``deliver(frame)``: a VM's NIC, a test's own port, later a TAP or a
link to another switch. ``Switch.attach(name, deliver)`` plugs one in and gives back a
``SwitchPort`` whose ``send(frame)`` puts a frame on the wire. Forwarding is synchronous and
runs on the caller's thread (the trio thread, where every VM runs its slices): the switch
core decides the output ports, the capture records the frame once on its ingress port, and
each output port's ``deliver`` takes it; a port's own queue is bounded by the port (a NIC
drops and counts what its guest has no buffers for). ``run`` is the switch's trio task: it
flushes the capture at least every ``FLUSH_INTERVAL`` and at exit.

The fabric knows nothing of machines or Unicorn: a port is a callable.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import trio

from netfabric.capture import PcapngWriter, open_capture
from netfabric.offload import Offload, resolve, wire_count
from netfabric.switch import (
    DEFAULT_AGING,
    DEFAULT_MAX_MACS,
    TPID_8021Q,
    LearningSwitch,
    PortCounters,
    PortVlan,
    mac_str,
)

# The capture reaches the disk at least this often (and at exit).
FLUSH_INTERVAL = 1.0

# A port takes a frame and, for an offloaded one (a partial checksum, a TCP segment to cut),
# its Offload; a port that cannot take offloads calls netfabric.offload.resolve on it.
Deliver = Callable[[bytes, "Offload | None"], None]
# A cable's two directions: (into the switch, out of the switch), each wrapping a Deliver.
Cable = tuple[Callable[[Deliver], Deliver], Callable[[Deliver], Deliver]]
# A listener sees each frame the switch takes in, as its capture records it: (ingress port
# id, frame, its Offload or None, time.time_ns()). It runs on the forwarding path, so it must
# be quick and must not raise (a live capture buffers boundedly and drops what it can't keep).
Listener = Callable[[int, bytes, "Offload | None", int], None]


class SwitchPort:
    """A port's handle: ``send`` puts a frame on the switch."""

    def __init__(
        self,
        switch: Switch,
        port_id: int,
        name: str,
        deliver: Deliver,
        capture: Path | None,
        cable: Cable | None = None,
    ) -> None:
        self.switch = switch
        self.id = port_id
        self.name = name
        # A cable (an impairment) sits between the port and what is plugged into it: what is
        # sent goes through its "in" direction, what is delivered through its "out" one.
        self._into: Deliver = lambda f, off: switch.send(port_id, f, off)
        if cable is not None:
            self._into = cable[0](self._into)
            deliver = cable[1](deliver)
        self.deliver = deliver
        # This port's own capture: what it sends and what it is given, one interface.
        self._capture_file: BinaryIO | None = None
        self.capture: PcapngWriter | None = None
        if capture is not None:
            self._capture_file, self.capture = open_capture(capture)
            self.capture.add_interface(name)

    def record(self, frame: bytes, offload: Offload | None, ts: int) -> None:
        assert self.capture is not None
        for wire in resolve(frame, offload) if offload is not None else (frame,):
            self.capture.write(0, wire, ts)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.close()
        if self._capture_file is not None:
            self._capture_file.close()
            self._capture_file = None

    def send(self, frame: bytes, offload: Offload | None = None) -> None:
        self._into(frame, offload)

    @property
    def counters(self) -> PortCounters:
        return self.switch.core.ports[self.id]

    def set_up(self, up: bool) -> None:
        self.switch.core.set_up(self.id, up)

    def set_vlan(self, vlan: PortVlan) -> None:
        """Make this an access port (``PortVlan(access=10)``) or a trunk
        (``PortVlan(access=None, allowed=frozenset({10, 20}), native=1)``)."""
        core = self.switch.core
        core.set_vlan(self.id, vlan)
        for p in self.switch.trunk_ports:  # links carry every VLAN once the switch has them
            if p not in core.vlans:
                core.set_vlan(p, PortVlan(access=None, native=1))


def _retag(
    frame: bytes, off: Offload | None, tagged: bool, want: bool, vid: int
) -> list[tuple[bytes, Offload | None]]:
    """``frame`` (with or without its 802.1Q tag) as it leaves a port that wants it tagged or
    not. An offload follows the header it describes when the tag goes; a frame that gains a
    tag is resolved to wire frames first (receivers' offloads are for untagged frames)."""
    if tagged == want:
        if tagged and frame[14:16] != (tci := (frame[14] & 0xF0) << 8 | vid).to_bytes(2, "big"):
            frame = frame[:14] + tci.to_bytes(2, "big") + frame[16:]  # was a priority tag
        return [(frame, off)]
    if tagged:  # strip the 4-byte tag
        if off is not None:
            off = dataclasses.replace(
                off, csum_start=max(0, off.csum_start - 4), hdr_len=max(0, off.hdr_len - 4)
            )
        return [(frame[:12] + frame[16:], off)]
    tag = TPID_8021Q + vid.to_bytes(2, "big")
    wires = resolve(frame, off) if off is not None else [frame]
    return [(w[:12] + tag + w[12:], None) for w in wires]


class Switch:
    def __init__(
        self,
        name: str,
        capture: Path | None = None,
        max_macs: int = DEFAULT_MAX_MACS,
        aging: float = DEFAULT_AGING,
    ) -> None:
        self.name = name
        self.core = LearningSwitch(max_macs, aging)
        self.ports: dict[int, SwitchPort] = {}
        self._next = 0
        self.capture_path = capture
        self._capture_file: BinaryIO | None = None
        self.capture: PcapngWriter | None = None
        if capture is not None:
            self._capture_file, self.capture = open_capture(capture)
        self._iface: dict[int, int] = {}
        self.trunk_ports: set[int] = set()  # links to other switches (trunks when VLAN-aware)
        self._listeners: tuple[Listener, ...] = ()
        # ARP to known addresses (bind_ip): IPv4 address (4 bytes) -> (port id, MAC)
        self._arp_owner: dict[bytes, tuple[int, bytes]] = {}

    def attach(
        self,
        name: str,
        deliver: Deliver,
        capture: Path | None = None,
        *,
        vlan: PortVlan | None = None,
        cable: Cable | None = None,
    ) -> SwitchPort:
        """Plug a port in; ``capture``: a pcapng file of this port's traffic alone; ``vlan``:
        its VLAN role; ``cable``: an impairment between the port and its device."""
        port = SwitchPort(self, self._next, name, deliver, capture, cable)
        self._next += 1
        self.core.add_port(port.id)
        self.ports[port.id] = port
        if self.capture is not None:
            self._iface[port.id] = self.capture.add_interface(name)
        if vlan is not None:
            port.set_vlan(vlan)
        return port

    def bind_ip(self, port_id: int, ip: bytes, mac: bytes) -> None:
        """``ip`` (4 bytes; a NIC's static address) is ``mac`` behind port ``port_id``. A
        broadcast ARP request for it then goes to that port alone, as a unicast to ``mac``,
        instead of being flooded: the owner still answers it itself (its link state and its
        cable's impairment apply as before), but N guests each asking for another's address
        cost N frames, not N x ports, and wake one guest each, not all of them. The switch's
        capture keeps the request as it came in; a VLAN-aware switch floods as before."""
        if len(ip) != 4 or len(mac) != 6:
            raise ValueError("bind_ip takes a 4-byte IPv4 address and a 6-byte MAC")
        self._arp_owner[bytes(ip)] = (port_id, bytes(mac))

    def _arp_to_owner(self, port_id: int, frame: bytes, now: float) -> bytes:
        """A broadcast ARP request for a bound address, made a unicast to its owner (whose
        MAC the table is told of, so the core forwards it to that port alone)."""
        if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[20:22] != b"\x00\x01":
            return frame
        hit = self._arp_owner.get(bytes(frame[38:42]))
        if hit is None or hit[0] == port_id or hit[0] not in self.ports:
            return frame
        owner, mac = hit
        self.core.learn(mac, owner, now)
        return mac + bytes(frame[6:])

    def send(self, port_id: int, frame: bytes, offload: Offload | None = None) -> None:
        now = time.monotonic()
        fwd = frame
        if self._arp_owner and frame[0] & 1 and not self.core.vlans:
            fwd = self._arp_to_owner(port_id, frame, now)
        out = self.core.forward(port_id, fwd, now)
        if offload is not None and offload.gso_type:
            self._count_wire(port_id, out, frame, offload)
        if (self.capture is not None or self._listeners) and (out or self.core.is_up(port_id)):
            ts = time.time_ns()
            if self.capture is not None:
                # The capture shows the wire: an offloaded frame as the segments it stands for.
                for wire in resolve(frame, offload) if offload is not None else (frame,):
                    self.capture.write(self._iface[port_id], wire, ts)
            for listener in self._listeners:
                listener(port_id, frame, offload, ts)
        ports = self.ports
        src = ports[port_id]
        if src.capture is not None:
            src.record(frame, offload, time.time_ns())
        if out and self.core.vlans:
            self._deliver_vlan(out, frame, offload)
            return
        for p in out:
            dst = ports[p]
            if dst.capture is not None:
                dst.record(fwd, offload, time.time_ns())
            dst.deliver(fwd, offload)

    def _count_wire(
        self, port_id: int, out: tuple[int, ...], frame: bytes, offload: Offload
    ) -> None:
        """What a segmentation offload frame adds on the wire beyond its one frame (the
        core counted it as one): to its ingress port and to each port it went out of."""
        frames, nbytes = wire_count(frame, offload)
        frames, nbytes = frames - 1, nbytes - len(frame)
        if not frames:
            return
        ports = self.core.ports
        c = ports[port_id]
        c.rx_wire_extra_frames += frames
        c.rx_wire_extra_bytes += nbytes
        for p in out:
            c = ports[p]
            c.tx_wire_extra_frames += frames
            c.tx_wire_extra_bytes += nbytes

    def _deliver_vlan(self, out: tuple[int, ...], frame: bytes, offload: Offload | None) -> None:
        """Each output port gets the frame as its VLAN role wants it: tagged or not."""
        core = self.core
        vid, tagged = core.vlan, core.tagged_in
        variants: dict[bool, list[tuple[bytes, Offload | None]]] = {}
        for p in out:
            want = core.egress_tagged(p, vid)
            got = variants.get(want)
            if got is None:
                got = variants[want] = _retag(frame, offload, tagged, want, vid)
            dst = self.ports[p]
            for f, off in got:
                if dst.capture is not None:
                    dst.record(f, off, time.time_ns())
                dst.deliver(f, off)

    def open_port(self, name: str, queue: int = 1024, vlan: PortVlan | None = None) -> HostPort:
        """One more host on this switch, driven from code: ``send`` frames (bytes or scapy
        packets) and ``await receive()`` what the switch delivers to it (at most ``queue``
        waiting; more is dropped and counted)."""
        return HostPort(self, name, queue, vlan)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(port_id, frame, offload, ts_ns)`` for every frame the switch takes
        in from now on (what its capture would record: a live capture, a monitor). Without
        listeners, the forwarding path pays one check."""
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener`` (nothing happens if it is not registered)."""
        self._listeners = tuple(x for x in self._listeners if x != listener)

    def mac_table(self) -> list[tuple[str, str, int, float]]:
        """What the switch has learned: (MAC, port name, VLAN (0: unaware), age in s)."""
        now = time.monotonic()
        out = []
        for key, (port, seen) in self.core.table.items():
            vid = int.from_bytes(key[6:8], "big") if len(key) == 8 else 0
            name = self.ports[port].name if port in self.ports else str(port)
            out.append((mac_str(key[:6]), name, vid, now - seen))
        return out

    def start_capture(self, path: Path) -> None:
        """Capture every frame on this switch to ``path`` from now on (pcapng, one
        interface per port); a capture already running is closed first. A ``CaptureError``
        if ``path`` is not a regular file (a FIFO, a device) or cannot be written."""
        self.stop_capture()
        self._capture_file, self.capture = open_capture(path)
        self.capture_path = path
        self._iface = {pid: self.capture.add_interface(p.name) for pid, p in self.ports.items()}

    def stop_capture(self) -> None:
        """Flush and close the switch's capture (if any); frames are no longer recorded."""
        if self.capture is not None:
            self.capture.close()
        if self._capture_file is not None:
            self._capture_file.close()
        self.capture, self._capture_file, self._iface = None, None, {}

    async def run(self, *, task_status: trio.TaskStatus[Switch] = trio.TASK_STATUS_IGNORED) -> None:
        """The switch's task: flushes the capture periodically; closes it when cancelled."""
        task_status.started(self)
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL)
                if self.capture is not None:
                    self.capture.flush()
                for port in self.ports.values():
                    if port.capture is not None:
                        port.capture.flush()
        finally:
            self.close()

    def close(self) -> None:
        self.stop_capture()
        for port in self.ports.values():
            port.close()


class HostPort:
    """A port driven from code (tests, applications): frames in and out as bytes."""

    def __init__(self, switch: Switch, name: str, queue: int, vlan: PortVlan | None) -> None:
        self.queue = queue
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[bytes](queue)
        self.port = switch.attach(name, self._deliver, vlan=vlan)
        self.name = name

    def _deliver(self, frame: bytes, off: Offload | None) -> None:
        for wire in resolve(frame, off) if off is not None else (frame,):
            try:
                self._send.send_nowait(wire)
            except trio.WouldBlock:
                self.dropped += 1

    def send(self, frame: bytes | Any) -> None:
        """Put a frame on the switch: bytes, or anything ``bytes()`` makes one of (a scapy
        packet)."""
        self.port.send(bytes(frame))

    async def receive(self) -> bytes:
        """The next frame the switch delivered to this port."""
        return await self._receive.receive()

    def receive_nowait(self) -> bytes | None:
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            return None

    @property
    def counters(self) -> PortCounters:
        return self.port.counters


def find_loop(edges: list[tuple[str, str]]) -> list[str] | None:
    """The first loop the edges (links between switches, in order) close, as the switches
    around it (``[a, b, c, a]``); None for a forest. Without spanning tree a loop would send
    every broadcast around forever."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    adjacent: dict[str, list[str]] = {}
    for a, b in edges:
        if a == b:
            return [a, a]
        ra, rb = root(a), root(b)
        if ra == rb:  # already connected: the path between them plus this edge
            path = _path(adjacent, a, b)
            return [*path, a]
        parent[ra] = rb
        adjacent.setdefault(a, []).append(b)
        adjacent.setdefault(b, []).append(a)
    return None


def _path(adjacent: dict[str, list[str]], a: str, b: str) -> list[str]:
    prev: dict[str, str | None] = {a: None}
    todo = [a]
    while todo:
        x = todo.pop(0)
        for y in adjacent.get(x, []):
            if y not in prev:
                prev[y] = x
                todo.append(y)
    out = [b]
    while (p := prev.get(out[-1])) is not None:
        out.append(p)
    return out[::-1]


class Link:
    """A cable between two switches: a port on each, frames crossing as between two real
    switches (``wrap_ab``/``wrap_ba`` may put an impairment on each direction). It carries
    every VLAN tagged, VLAN 1 untagged, once either switch is VLAN-aware."""

    def __init__(
        self,
        a: Switch,
        b: Switch,
        wrap_ab: Callable[[Deliver], Deliver] | None = None,
        wrap_ba: Callable[[Deliver], Deliver] | None = None,
    ) -> None:
        if a is b:
            raise ValueError(f"a link from switch {a.name!r} to itself is a loop")
        self.a, self.b = a, b
        to_b: Deliver = lambda f, off: self.port_b.send(f, off)  # noqa: E731
        to_a: Deliver = lambda f, off: self.port_a.send(f, off)  # noqa: E731
        # what leaves switch a's link port travels to b, and the other way round
        self.port_a = a.attach(f"link:{b.name}", wrap_ab(to_b) if wrap_ab else to_b)
        self.port_b = b.attach(f"link:{a.name}", wrap_ba(to_a) if wrap_ba else to_a)
        for sw, port in ((a, self.port_a), (b, self.port_b)):
            sw.trunk_ports.add(port.id)
            if sw.core.vlans:
                port.set_vlan(PortVlan(access=None, native=1))

    def trunk(self, allowed: frozenset[int] | None = None, native: int | None = 1) -> None:
        """Restrict the VLANs the link carries (tagged ``allowed``, untagged ``native``)."""
        for port in (self.port_a, self.port_b):
            port.set_vlan(PortVlan(access=None, allowed=allowed, native=native))

    def set_up(self, up: bool) -> None:
        self.port_a.set_up(up)
        self.port_b.set_up(up)
