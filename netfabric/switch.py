"""The learning switch, sans-IO: frames and port ids in, output port ids out.

Theory of operation. Like an 802.1D bridge without spanning tree: every frame teaches the
switch that its source MAC lives behind the port it came in on; a frame to a known unicast
MAC goes out of that port only; broadcast, multicast and unknown unicast are flooded to every
other port that is up. Entries age out after ``aging`` seconds without a frame from that MAC.

The table is bounded (``max_macs``): a guest that floods frames from random source MACs
cannot grow it without limit. When it is full, the oldest entry is evicted first (counted in
``evictions``); traffic keeps flowing (unknown destinations are flooded, as on a real switch
with a full CAM). Frames shorter than an Ethernet header are dropped and counted per port.

Link state: a port that is down (its cable unplugged, ``set_up``) sends and takes nothing.
What arrives on it, and what the switch would have sent out through it (a flood, a frame to
a MAC behind it), is dropped and counted on that port as ``down``; what was learned behind
it is forgotten when it goes down, as a real switch flushes a port on link loss.

VLANs (802.1Q). Until a port is given a VLAN role, the switch is VLAN-unaware and every
port is an untagged member of one LAN (the fast path). An access port carries one VLAN
untagged (a tagged frame arriving on it is dropped, ``tagged_on_access``); a trunk carries its
allowed VLANs tagged, and its native VLAN (if any) untagged. Each frame is classified on
ingress (``vlan`` after ``forward``), learning is per VLAN (the same MAC may live behind
different ports in different VLANs), and a frame floods or goes only to ports that carry its
VLAN: a frame never leaks into another VLAN. Whether it leaves a port tagged is
``egress_tagged(port, vlan)``; the fabric adds or strips the tag (and where a frame that came
in priority-tagged leaves tagged, it writes the VLAN's VID into the tag, keeping the priority).

Tags on ingress, decided per 802.1Q for a C-VLAN bridge, with one rule added against the
double-tagging escape (a frame [VID 0, VID 20] from an access port of VLAN 1 lost its outer
tag leaving through a native-VLAN-1 trunk, and the next switch read the inner tag: VLAN 20):

- A C-tag (0x8100) with VID 0 is a priority tag (802.1Q 6.9): the frame is the port's own
  VLAN (the access VLAN, or the trunk's native one; a trunk without one drops it,
  ``untagged_on_trunk``), as if untagged.
- A C-tag with a VID on an access port: dropped (``tagged_on_access``). On a trunk: the VLAN
  it names if the trunk carries it (``vlan_not_allowed`` otherwise); a tag naming the native
  VLAN is accepted as that VLAN, as 802.1Q's ingress rules accept any member VLAN tagged.
- A C-tag around another tag (0x8100, 0x88a8 or 0x9100 right behind it), on any port:
  dropped (``double_tagged``). This bridge does not carry stacked tags: stripping the outer
  one at an untagged egress (an access port, a trunk's native VLAN) would hand the next
  bridge a frame it classifies by the inner tag. Only such frames can escape, so dropping
  them on ingress closes the escape whatever the egress ports are.
- An outer service tag (802.1ad 0x88a8, or the pre-standard 0x9100): this is a C-VLAN bridge,
  not a provider bridge, so it is not ours to carry; 802.1Q would pass it as an untagged
  frame of another EtherType, but a provider bridge or a Linux 802.1ad device behind a port
  reads it as a tag. Dropped: on an access port as ``tagged_on_access``, on a trunk as
  ``s_tag``.

Hand-written and kept lean on purpose: this is the fabric's hot path (one call per frame, or
``forward_many`` per burst), so it uses plain dicts and byte slices, no per-frame objects.
Time comes from the caller (``now``), so tests and virtual time drive aging.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import trio

from netfabric._saved import MAX_TIME, bits_float, float_bits
from netfabric._state import StateReader
from netfabric.capture import PcapngWriter, open_capture
from netfabric.frame import Frame

# The port vocabulary lives with the ports (below the switch); re-exported here, where it was.
from netfabric.ports.base import Listener, Port
from netfabric.ports.base import PortCounters as PortCounters
from netfabric.ports.base import PortVlan as PortVlan
from netfabric.ports.host import CallbackPort, HostPort

if TYPE_CHECKING:
    from netfabric.offload import Offload

ETH_HEADER = 14
DEFAULT_MAX_MACS = 4096
DEFAULT_AGING = 300.0


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_mac(text: str) -> bytes:
    """'52:54:00:12:34:56' -> 6 bytes; ValueError with the reason otherwise."""
    parts = text.strip().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and p.isascii() and p.isalnum() for p in parts):
        raise ValueError(f"{text!r} is not a MAC address like 52:54:00:12:34:56")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a MAC address like 52:54:00:12:34:56") from None


VLAN_MAX = 4094
TPID_8021Q = b"\x81\x00"
# Every TPID some bridge reads as a tag: 802.1Q's C-tag, 802.1ad's S-tag, pre-standard QinQ.
TPIDS = frozenset((TPID_8021Q, b"\x88\xa8", b"\x91\x00"))


# Why the core drops a frame on a port (``PortCounters.drops``), the causes a saved state
# may name.
DROP_CAUSES = frozenset((
    "down", "runt", "same_port", "tagged_on_access", "double_tagged", "vlan_not_allowed",
    "s_tag", "untagged_on_trunk",
))  # fmt: skip
# A port's counters in a saved state, in this order.
_COUNTER_FIELDS = (
    "rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "rx_wire_extra_frames",
    "rx_wire_extra_bytes", "tx_wire_extra_frames", "tx_wire_extra_bytes",
)  # fmt: skip


def _check_vid(vid: int, what: str) -> None:
    if not 1 <= vid <= VLAN_MAX:
        raise ValueError(f"{what} {vid} is not a VLAN id in 1..{VLAN_MAX}")


class LearningSwitch:
    def __init__(self, max_macs: int = DEFAULT_MAX_MACS, aging: float = DEFAULT_AGING) -> None:
        if max_macs <= 0 or aging <= 0:
            raise ValueError("the MAC table needs room and a positive aging time")
        self.max_macs = max_macs
        self.aging = aging
        # MAC -> (port, last seen). Insertion order is age order: a refreshed entry moves to
        # the end, so the first one is the oldest (eviction and aging look there).
        self.table: dict[bytes, tuple[int, float]] = {}
        self.ports: dict[int, PortCounters] = {}
        self._up: dict[int, bool] = {}
        self._flood_cache: dict[int, tuple[int, ...]] = {}
        self._down: tuple[int, ...] = ()  # the ports that are down (usually none)
        self.evictions = 0
        self.aged = 0
        # VLAN roles: empty while the switch is VLAN-unaware (every port untagged in one LAN)
        self.vlans: dict[int, PortVlan] = {}
        self.vlan = 0  # the VLAN the last forwarded frame was classified into (0: unaware)
        self.tagged_in = False  # whether it arrived with an 802.1Q tag
        self._vlan_flood: dict[tuple[int, int], tuple[int, ...]] = {}
        # Split horizon: what comes in through one of these ports never goes out through
        # another (the ports toward the switch's copies in a lab's other shards, each of
        # which floods its own side: hv.lab._shards).
        self.split: frozenset[int] = frozenset()

    # -- ports -----------------------------------------------------------------------------

    def add_port(self, port: int) -> None:
        if port in self.ports:
            raise ValueError(f"port {port} is already on the switch")
        self.ports[port] = PortCounters()
        self._up[port] = True
        self._flood_cache.clear()

    def set_vlan(self, port: int, vlan: PortVlan) -> None:
        """Give ``port`` a VLAN role (the switch becomes VLAN-aware: other ports are access
        ports of VLAN 1 until told otherwise)."""
        if port not in self.ports:
            raise KeyError(f"no port {port} on the switch")
        if vlan.access is not None:
            _check_vid(vlan.access, "access VLAN")
        for vid in vlan.allowed or ():
            _check_vid(vid, "allowed VLAN")
        if vlan.native is not None:
            _check_vid(vlan.native, "native VLAN")
        self.vlans[port] = vlan
        self._vlan_flood.clear()
        self.table.clear()

    def egress_tagged(self, port: int, vid: int) -> bool:
        """Whether a frame of VLAN ``vid`` leaves ``port`` with a tag."""
        v = self.vlans.get(port)
        return v is not None and v.access is None and vid != v.native

    def set_up(self, port: int, up: bool) -> None:
        self._up[port] = up
        self._down = tuple(p for p, u in self._up.items() if not u)
        self._flood_cache.clear()
        self._vlan_flood.clear()
        if not up:  # what was learned behind it is stale once it is down
            self.table = {mac: e for mac, e in self.table.items() if e[0] != port}

    def split_horizon(self, port: int) -> None:
        """Add ``port`` to the split-horizon group (see ``split``)."""
        self.split = self.split | {port}
        self._flood_cache.clear()
        self._vlan_flood.clear()

    def _apart(self, a: int, b: int) -> bool:
        return a in self.split and b in self.split

    def is_up(self, port: int) -> bool:
        return self._up.get(port, False)

    def _flood_set(self, in_port: int) -> tuple[int, ...]:
        got = self._flood_cache.get(in_port)
        if got is None:
            got = tuple(
                p
                for p, up in self._up.items()
                if up and p != in_port and not self._apart(in_port, p)
            )
            self._flood_cache[in_port] = got
        return got

    # -- forwarding ----------------------------------------------------------------------------

    def forward(
        self, in_port: int, frame: bytes | bytearray | memoryview, now: float
    ) -> tuple[int, ...]:
        """The ports ``frame`` goes out of (counted as sent); () if it is dropped."""
        c = self.ports.get(in_port)
        if c is None:
            raise KeyError(f"no port {in_port} on the switch")
        n = len(frame)
        c.rx_frames += 1
        c.rx_bytes += n
        if not self._up[in_port]:
            c.drops["down"] += 1
            return ()
        if n < ETH_HEADER:
            c.drops["runt"] += 1
            return ()
        if self.vlans:
            return self._forward_vlan(in_port, c, frame, now)
        src = bytes(frame[6:12])
        table = self.table
        if not src[0] & 1:  # learn unicast sources only
            entry = table.get(src)
            if entry is None or entry[0] != in_port or now - entry[1] > 1.0:
                self.learn(src, in_port, now)
        dst = bytes(frame[0:6])
        out: tuple[int, ...]
        if dst[0] & 1:
            out = self._flood_set(in_port)
            if self._down:
                self._count_down(in_port, 0)
        else:
            entry = table.get(dst)
            if entry is None or now - entry[1] > self.aging:
                out = self._flood_set(in_port)
                if self._down:
                    self._count_down(in_port, 0)
            elif entry[0] == in_port or (self.split and self._apart(in_port, entry[0])):
                c.drops["same_port"] += 1  # the destination is behind the port it came from
                return ()
            elif not self._up.get(entry[0], False):
                self.ports[entry[0]].drops["down"] += 1
                return ()
            else:
                out = (entry[0],)
        ports = self.ports
        for p in out:
            pc = ports[p]
            pc.tx_frames += 1
            pc.tx_bytes += n
        return out

    def _forward_vlan(
        self, in_port: int, c: PortCounters, frame: bytes | bytearray | memoryview, now: float
    ) -> tuple[int, ...]:
        role = self.vlans.get(in_port) or PortVlan()
        ethertype = bytes(frame[12:14])
        tagged = ethertype == TPID_8021Q
        if tagged:
            if len(frame) < ETH_HEADER + 4:
                c.drops["runt"] += 1
                return ()
            vid = int.from_bytes(frame[14:16], "big") & 0xFFF
            if vid and role.access is not None:
                c.drops["tagged_on_access"] += 1
                return ()
            if bytes(frame[16:18]) in TPIDS:  # a tag inside the tag: see the header
                c.drops["double_tagged"] += 1
                return ()
            if vid == 0:  # priority-tagged: the port's own VLAN
                vid = role.access if role.access is not None else (role.native or 0)
            elif not role.carries(vid):
                c.drops["vlan_not_allowed"] += 1
                return ()
        elif ethertype in TPIDS:  # a service tag (802.1ad, or the pre-standard 0x9100)
            c.drops["tagged_on_access" if role.access is not None else "s_tag"] += 1
            return ()
        else:
            vid = role.access if role.access is not None else (role.native or 0)
        if not vid:
            c.drops["untagged_on_trunk"] += 1
            return ()
        self.vlan, self.tagged_in = vid, tagged
        tag = vid.to_bytes(2, "big")
        src = bytes(frame[6:12])
        table = self.table
        if not src[0] & 1:
            key = src + tag
            entry = table.get(key)
            if entry is None or entry[0] != in_port or now - entry[1] > 1.0:
                if entry is not None:
                    del table[key]
                elif len(table) >= self.max_macs:
                    self._make_room(now)
                table[key] = (in_port, now)
        dst = bytes(frame[0:6])
        out: tuple[int, ...] | None = None
        if not dst[0] & 1:
            entry = table.get(dst + tag)
            if entry is not None and now - entry[1] <= self.aging:
                if entry[0] == in_port or (self.split and self._apart(in_port, entry[0])):
                    c.drops["same_port"] += 1
                    return ()
                if not self._up.get(entry[0], False):
                    self.ports[entry[0]].drops["down"] += 1
                    return ()
                out = (entry[0],)
        if out is None:
            out = self._vlan_flood.get((in_port, vid))
            if out is None:
                out = tuple(
                    p
                    for p, up in self._up.items()
                    if up
                    and p != in_port
                    and not self._apart(in_port, p)
                    and (self.vlans.get(p) or PortVlan()).carries(vid)
                )
                self._vlan_flood[(in_port, vid)] = out
            if self._down:
                self._count_down(in_port, vid)
        n = len(frame)
        for p in out:
            pc = self.ports[p]
            pc.tx_frames += 1
            pc.tx_bytes += n
        return out

    def _count_down(self, in_port: int, vid: int) -> None:
        """A flood from ``in_port`` (of VLAN ``vid``; 0: unaware) missed the ports that are
        down: count it on each that would have had it."""
        vlans = self.vlans
        for p in self._down:
            if p != in_port and (not vid or (vlans.get(p) or PortVlan()).carries(vid)):
                self.ports[p].drops["down"] += 1

    def learn(self, mac: bytes, port: int, now: float) -> None:
        """``mac`` is behind ``port`` as of ``now`` (the newest entry; the table stays bounded)."""
        table = self.table
        if mac in table:
            del table[mac]  # re-insert at the end: the newest
        elif len(table) >= self.max_macs:
            self._make_room(now)
        table[mac] = (port, now)

    def _make_room(self, now: float) -> None:
        table = self.table
        oldest = next(iter(table))
        if now - table[oldest][1] > self.aging:
            self.aged += 1
        else:
            self.evictions += 1
        del table[oldest]

    def expire(self, now: float) -> int:
        """Drop entries older than the aging time; return how many went."""
        gone = 0
        table = self.table
        while table:
            mac = next(iter(table))
            if now - table[mac][1] <= self.aging:
                break
            del table[mac]
            gone += 1
        self.aged += gone
        return gone

    # -- saved state (a lab's snapshot) -------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """What decides where frames go from now on: the MAC table (in its age order, each
        entry's port and when it was last seen), each port's link state, and the counters.
        The VLAN roles and the split-horizon group are the lab's configuration (the
        restored switch is built with them) and are not saved."""
        return {
            # three columns (a full table loads in a few ms): the keys (MAC, and VID when
            # VLAN-aware) end to end, their ports, when each was last seen (float64 bits)
            "macs": b"".join(self.table),
            "at": [p for p, _ in self.table.values()],
            "seen": [float_bits(t) for _, t in self.table.values()],
            "ports": [
                {
                    "id": pid,
                    "up": self._up[pid],
                    "counters": [getattr(c, f) for f in _COUNTER_FIELDS],
                    "drops": {k: n for k, n in c.drops.items() if n},
                }
                for pid, c in self.ports.items()
            ],
            "evictions": self.evictions,
            "aged": self.aged,
        }

    def load_state(self, st: StateReader) -> None:
        """Take back what ``save_state`` gave, on a switch with the same ports and VLAN
        roles (its configuration); every value is checked (``st.fail`` otherwise) before
        anything changes."""
        ports = st.subs("ports", len(self.ports), length=len(self.ports))
        up: dict[int, bool] = {}
        counters: dict[int, tuple[list[int], dict[str, int]]] = {}
        for want, p in zip(self.ports, ports, strict=True):
            pid = p.int("id", 0, 1 << 31)
            p.check(pid == want, "id", f"port {pid} where this switch has port {want}")
            up[pid] = p.bool("up")
            values = p.ints("counters", len(_COUNTER_FIELDS), length=len(_COUNTER_FIELDS))
            drops = p.sub("drops")
            causes: dict[str, int] = {}
            for cause in drops.keys():  # noqa: SIM118 (a reader, not a dict)
                drops.check(cause in DROP_CAUSES, cause, "is not a cause the switch drops for")
                causes[cause] = drops.int(cause)
            counters[pid] = (values, causes)
        keylen = 8 if self.vlans else 6
        table: dict[bytes, tuple[int, float]] = {}
        macs = st.bytes("macs", self.max_macs * keylen)
        n = len(macs) // keylen
        st.check(len(macs) % keylen == 0, "macs", f"not whole {keylen}-byte table keys")
        at = st.ints("at", n, 0, 1 << 31, length=n)
        seen = [bits_float(b) for b in st.ints("seen", n, length=n)]
        last = 0.0
        known = self.ports
        for i in range(n):  # the messages are made only for a bad entry (a hot loop)
            key = macs[i * keylen : (i + 1) * keylen]
            if key[0] & 1:
                raise st.fail(f"macs[{i}]", "a multicast address is never learned")
            if keylen == 8 and not 1 <= int.from_bytes(key[6:], "big") <= VLAN_MAX:
                raise st.fail(f"macs[{i}]", f"the VLAN is not 1..{VLAN_MAX}")
            if key in table:
                raise st.fail(f"macs[{i}]", f"{mac_str(key[:6])} is in the table twice")
            if at[i] not in known:
                raise st.fail(f"at[{i}]", f"this switch has no port {at[i]}")
            t = seen[i]
            if not (math.isfinite(t) and last <= t <= MAX_TIME):
                raise st.fail(f"seen[{i}]", f"{t!r} is not a time in {last!r}..{MAX_TIME!r}")
            table[key], last = (at[i], t), t
        evictions, aged = st.int("evictions"), st.int("aged")
        self.table = table
        for pid, (values, causes) in counters.items():  # in place: ports hold them
            c = self.ports[pid]
            for f, n in zip(_COUNTER_FIELDS, values, strict=True):
                setattr(c, f, n)
            c.drops.clear()
            c.drops.update(causes)
        self._up = up
        self._down = tuple(p for p, u in up.items() if not u)
        self._flood_cache.clear()
        self._vlan_flood.clear()
        self.evictions, self.aged = evictions, aged

    def lookup(self, mac: bytes, now: float, vlan: int = 1) -> int | None:
        entry = self.table.get(mac + vlan.to_bytes(2, "big") if self.vlans else mac)
        if entry is None or now - entry[1] > self.aging:
            return None
        return entry[0]


# -- the switch with ports -----------------------------------------------------------------

# The capture reaches the disk at least this often (and at exit).
FLUSH_INTERVAL = 1.0


def _retag(frame: Frame, tagged: bool, want: bool, vid: int) -> list[Frame]:
    """``frame`` (with or without its 802.1Q tag) as it leaves a port that wants it tagged or
    not. An offload follows the header it describes when the tag goes; a frame that gains a
    tag is resolved to wire frames first (receivers' offloads are for untagged frames)."""
    data, off = frame.data, frame.offload
    if tagged == want:
        if tagged and data[14:16] != (tci := (data[14] & 0xF0) << 8 | vid).to_bytes(2, "big"):
            return [Frame(data[:14] + tci.to_bytes(2, "big") + data[16:], off)]  # was priority
        return [frame]
    if tagged:  # strip the 4-byte tag
        if off is not None:
            off = dataclasses.replace(
                off, csum_start=max(0, off.csum_start - 4), hdr_len=max(0, off.hdr_len - 4)
            )
        return [Frame(data[:12] + data[16:], off)]
    tag = TPID_8021Q + vid.to_bytes(2, "big")
    return [Frame(w[:12] + tag + w[12:]) for w in frame.wire()]


class Switch:
    """A switch with ports: the learning switch's core, the ports frames leave through,
    captures.

    A port is anything with the ``netfabric.ports.Port`` protocol; it plugs itself in
    (``plug``, which gives it its id) and puts frames on the switch with ``send(id, frame)``.
    Forwarding is synchronous and runs on the caller's thread (the trio thread, where every VM
    runs its slices): the core decides the output ports, the switch's capture and listeners
    see the frame once on its ingress port, the ingress port's listeners see it, and each
    output port's listeners see it and its ``deliver`` takes it; a port's own queue is bounded
    by the port (a NIC drops and counts what its guest has no buffers for). ``run`` is the
    switch's trio task: it flushes the captures at least every ``FLUSH_INTERVAL`` and at exit.
    """

    def __init__(
        self,
        name: str,
        capture: Path | None = None,
        max_macs: int = DEFAULT_MAX_MACS,
        aging: float = DEFAULT_AGING,
        *,
        clock: Callable[[], float] = time.monotonic,
        stamp_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.name = name
        # The switch's time: ``clock`` (seconds) ages the MAC table, ``stamp_ns`` stamps the
        # captures and listeners. A virtual-time lab passes its timeline's (docs/TIME.md).
        self._clock = clock
        self._stamp_ns = stamp_ns
        self.core = LearningSwitch(max_macs, aging)
        self.ports: dict[int, Port] = {}
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

    def plug(self, port: Port) -> int:
        """Put ``port`` on the switch and give it its id (a port calls this when it is made:
        ``netfabric.ports.SwitchPort``)."""
        port_id = self._next
        self._next += 1
        self.core.add_port(port_id)
        self.ports[port_id] = port
        if self.capture is not None:
            self._iface[port_id] = self.capture.add_interface(port.name)
        return port_id

    def attach(
        self,
        name: str,
        deliver: Callable[[bytes, Offload | None], None],
        capture: Path | None = None,
        *,
        vlan: PortVlan | None = None,
    ) -> CallbackPort:
        """A port whose frames go to ``deliver(data, offload)`` (a test's or a tool's hook:
        ``netfabric.ports.host.CallbackPort``); ``capture``: a pcapng file of this port's
        traffic alone; ``vlan``: its VLAN role."""
        return CallbackPort(self, name, deliver, capture=capture, vlan=vlan)

    def set_vlan(self, port_id: int, vlan: PortVlan) -> None:
        """Give port ``port_id`` a VLAN role (``SwitchPort.set_vlan``); links carry every
        VLAN once the switch has them."""
        core = self.core
        core.set_vlan(port_id, vlan)
        for p in self.trunk_ports:
            if p not in core.vlans:
                core.set_vlan(p, PortVlan(access=None, native=1))

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
        if hit is None or hit[0] == port_id or not self.core.is_up(hit[0]):
            return frame  # (an owner that is down: flooded, counted on its port as down)
        owner, mac = hit
        self.core.learn(mac, owner, now)
        return mac + bytes(frame[6:])

    def send(self, port_id: int, frame: Frame) -> None:
        """``frame`` into the switch from port ``port_id``: forwarded, shown to the captures
        and listeners, delivered."""
        now = self._clock()
        data = frame.data
        fwd = frame
        if self._arp_owner and data[0] & 1 and not self.core.vlans:
            unicast = self._arp_to_owner(port_id, data, now)
            if unicast is not data:
                fwd = Frame(unicast, frame.offload)
                data = unicast
        out = self.core.forward(port_id, data, now)
        offload = frame.offload
        if offload is not None and offload.gso_type:
            self._count_wire(port_id, out, frame)
        if (self.capture is not None or self._listeners) and (out or self.core.is_up(port_id)):
            ts = self._stamp_ns()
            if self.capture is not None:
                # The capture shows the wire: an offloaded frame as the segments it stands for.
                iface = self._iface[port_id]
                for wire in frame.wire():
                    self.capture.write(iface, wire, ts)
            for listener in self._listeners:
                listener(port_id, frame, ts)
        ports = self.ports
        src = ports[port_id]
        if src.listeners:
            ts = self._stamp_ns()
            for listener in src.listeners:
                listener(port_id, frame, ts)
        if out and self.core.vlans:
            self._deliver_vlan(out, frame)
            return
        for p in out:
            dst = ports[p]
            if dst.listeners:
                ts = self._stamp_ns()
                for listener in dst.listeners:
                    listener(p, fwd, ts)
            dst.deliver(fwd)

    def _count_wire(self, port_id: int, out: tuple[int, ...], frame: Frame) -> None:
        """What a segmentation offload frame adds on the wire beyond its one frame (the
        core counted it as one): to its ingress port and to each port it went out of."""
        frames, nbytes = frame.wire_count
        frames, nbytes = frames - 1, nbytes - len(frame.data)
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

    def _deliver_vlan(self, out: tuple[int, ...], frame: Frame) -> None:
        """Each output port gets the frame as its VLAN role wants it: tagged or not."""
        core = self.core
        vid, tagged = core.vlan, core.tagged_in
        variants: dict[bool, list[Frame]] = {}
        for p in out:
            want = core.egress_tagged(p, vid)
            got = variants.get(want)
            if got is None:
                got = variants[want] = _retag(frame, tagged, want, vid)
            dst = self.ports[p]
            for f in got:
                if dst.listeners:
                    ts = self._stamp_ns()
                    for listener in dst.listeners:
                        listener(p, f, ts)
                dst.deliver(f)

    def open_port(self, name: str, queue: int = 1024, vlan: PortVlan | None = None) -> HostPort:
        """One more host on this switch, driven from code: ``send`` frames (bytes or scapy
        packets) and ``await receive()`` what the switch delivers to it (at most ``queue``
        waiting; more is dropped and counted)."""
        return HostPort(self, name, queue, vlan)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(port_id, frame, ts_ns)`` for every frame the switch takes in
        from now on (what its capture would record: a live capture, a monitor). Without
        listeners, the forwarding path pays one check."""
        self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener`` (nothing happens if it is not registered)."""
        self._listeners = tuple(x for x in self._listeners if x != listener)

    def mac_table(self) -> list[tuple[str, str, int, float]]:
        """What the switch has learned: (MAC, port name, VLAN (0: unaware), age in s)."""
        now = self._clock()
        out = []
        for key, (port, seen) in self.core.table.items():
            vid = int.from_bytes(key[6:8], "big") if len(key) == 8 else 0
            name = self.ports[port].name if port in self.ports else str(port)
            out.append((mac_str(key[:6]), name, vid, now - seen))
        return out

    # -- saved state (a lab's snapshot) -------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """The switch's state (``LearningSwitch.save_state``) with its ports' names in id
        order (a restored lab must have plugged the same ports in the same order) and its
        capture's (``PcapngWriter.save_state``) if it writes one."""
        out: dict[str, Any] = {
            "ports": [p.name for p in self.ports.values()],
            "core": self.core.save_state(),
        }
        if self.capture is not None:
            out["capture"] = self.capture.save_state()
        return out

    def load_state(self, st: StateReader) -> None:
        """Take back ``save_state``'s on a switch built from the same configuration, its
        ports plugged in (a restored lab's, before its clock runs). A restored capture is a
        new file: it records from the snapshot's time on."""
        names = st.list("ports", len(self.ports))
        mine = [p.name for p in self.ports.values()]
        st.check(
            names == mine, "ports",
            f"the snapshot's switch has ports {names!r:.200}, this one {mine!r:.200}",
        )  # fmt: skip
        if st.has("capture") and self.capture is not None:
            self.capture.load_state(st.sub("capture"))
        self.core.load_state(st.sub("core"))

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
        """The switch's task: flushes the captures periodically; closes them when cancelled."""
        task_status.started(self)
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL)
                if self.capture is not None:
                    self.capture.flush()
                for port in self.ports.values():
                    port.flush()
        finally:
            self.close()

    def close(self) -> None:
        self.stop_capture()
        for port in self.ports.values():
            port.close()
