"""The learning switch, sans-IO: frames and port ids in, output port ids out.

Theory of operation. Like an 802.1D bridge without spanning tree: every frame teaches the
switch that its source MAC lives behind the port it came in on; a frame to a known unicast
MAC goes out of that port only; broadcast, multicast and unknown unicast are flooded to every
other port that is up. Entries age out after ``aging`` seconds without a frame from that MAC.

The table is bounded (``max_macs``): a guest that floods frames from random source MACs
cannot grow it without limit. When it is full, the oldest entry is evicted first (counted in
``evictions``); traffic keeps flowing (unknown destinations are flooded, as on a real switch
with a full CAM). Frames shorter than an Ethernet header are dropped and counted per port, as
are frames arriving on, or only destined to, a port that is down.

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

import collections
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class PortVlan:
    """A port's VLAN role: access (one untagged VLAN) or trunk (tagged ``allowed`` VLANs,
    None meaning all, and an untagged ``native`` one)."""

    access: int | None = 1
    allowed: frozenset[int] | None = None
    native: int | None = None

    @property
    def trunk(self) -> bool:
        return self.access is None

    def carries(self, vid: int) -> bool:
        if self.access is not None:
            return vid == self.access
        return vid == self.native or self.allowed is None or vid in self.allowed


def _check_vid(vid: int, what: str) -> None:
    if not 1 <= vid <= VLAN_MAX:
        raise ValueError(f"{what} {vid} is not a VLAN id in 1..{VLAN_MAX}")


@dataclass
class PortCounters:
    """One port's counters. ``rx`` is what the port's device sent into the switch, ``tx``
    what the switch handed to it, and ``drops`` what the switch dropped on the port's
    ingress, by reason.

    ``*_frames`` and ``*_bytes`` count frames as the device handed them over: an offloaded
    TCP frame (TSO, up to 64 KiB, see netfabric.offload) counts once, with its length.
    ``*_wire_frames`` and ``*_wire_bytes`` count them as a wire (and a capture) would: such
    a frame as the segments it stands for, each with its own headers (computed from the
    offload, nothing is cut to count). Without offloads the two are the same. The core sees
    every frame as one; the fabric adds what offloaded frames stand for beyond that to the
    ``*_wire_extra_*`` fields."""

    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    rx_wire_extra_frames: int = 0
    rx_wire_extra_bytes: int = 0
    tx_wire_extra_frames: int = 0
    tx_wire_extra_bytes: int = 0

    @property
    def rx_wire_frames(self) -> int:
        return self.rx_frames + self.rx_wire_extra_frames

    @property
    def rx_wire_bytes(self) -> int:
        return self.rx_bytes + self.rx_wire_extra_bytes

    @property
    def tx_wire_frames(self) -> int:
        return self.tx_frames + self.tx_wire_extra_frames

    @property
    def tx_wire_bytes(self) -> int:
        return self.tx_bytes + self.tx_wire_extra_bytes


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
        self.evictions = 0
        self.aged = 0
        # VLAN roles: empty while the switch is VLAN-unaware (every port untagged in one LAN)
        self.vlans: dict[int, PortVlan] = {}
        self.vlan = 0  # the VLAN the last forwarded frame was classified into (0: unaware)
        self.tagged_in = False  # whether it arrived with an 802.1Q tag
        self._vlan_flood: dict[tuple[int, int], tuple[int, ...]] = {}

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

    def port_vlan(self, port: int) -> PortVlan:
        return self.vlans.get(port, PortVlan())

    def egress_tagged(self, port: int, vid: int) -> bool:
        """Whether a frame of VLAN ``vid`` leaves ``port`` with a tag."""
        v = self.vlans.get(port)
        return v is not None and v.access is None and vid != v.native

    def remove_port(self, port: int) -> None:
        self.ports.pop(port, None)
        self._up.pop(port, None)
        self.vlans.pop(port, None)
        self._vlan_flood.clear()
        self._flood_cache.clear()
        self.table = {mac: e for mac, e in self.table.items() if e[0] != port}

    def set_up(self, port: int, up: bool) -> None:
        self._up[port] = up
        self._flood_cache.clear()
        self._vlan_flood.clear()
        if not up:  # what was learned behind it is stale once it is down
            self.table = {mac: e for mac, e in self.table.items() if e[0] != port}

    def is_up(self, port: int) -> bool:
        return self._up.get(port, False)

    def _flood_set(self, in_port: int) -> tuple[int, ...]:
        got = self._flood_cache.get(in_port)
        if got is None:
            got = tuple(p for p, up in self._up.items() if up and p != in_port)
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
            c.drops["port_down"] += 1
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
        else:
            entry = table.get(dst)
            if entry is None or now - entry[1] > self.aging:
                out = self._flood_set(in_port)
            elif entry[0] == in_port:
                c.drops["same_port"] += 1  # the destination is behind the port it came from
                return ()
            elif not self._up.get(entry[0], False):
                c.drops["dest_down"] += 1
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
                if entry[0] == in_port:
                    c.drops["same_port"] += 1
                    return ()
                if not self._up.get(entry[0], False):
                    c.drops["dest_down"] += 1
                    return ()
                out = (entry[0],)
        if out is None:
            out = self._vlan_flood.get((in_port, vid))
            if out is None:
                out = tuple(
                    p
                    for p, up in self._up.items()
                    if up and p != in_port and (self.vlans.get(p) or PortVlan()).carries(vid)
                )
                self._vlan_flood[(in_port, vid)] = out
        n = len(frame)
        for p in out:
            pc = self.ports[p]
            pc.tx_frames += 1
            pc.tx_bytes += n
        return out

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

    def lookup(self, mac: bytes, now: float, vlan: int = 1) -> int | None:
        entry = self.table.get(mac + vlan.to_bytes(2, "big") if self.vlans else mac)
        if entry is None or now - entry[1] > self.aging:
            return None
        return entry[0]
