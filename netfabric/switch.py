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
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address like 52:54:00:12:34:56")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a MAC address like 52:54:00:12:34:56") from None


@dataclass
class PortCounters:
    rx_frames: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    tx_bytes: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)


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

    # -- ports -----------------------------------------------------------------------------

    def add_port(self, port: int) -> None:
        if port in self.ports:
            raise ValueError(f"port {port} is already on the switch")
        self.ports[port] = PortCounters()
        self._up[port] = True
        self._flood_cache.clear()

    def remove_port(self, port: int) -> None:
        self.ports.pop(port, None)
        self._up.pop(port, None)
        self._flood_cache.clear()
        self.table = {mac: e for mac, e in self.table.items() if e[0] != port}

    def set_up(self, port: int, up: bool) -> None:
        self._up[port] = up
        self._flood_cache.clear()
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
        src = bytes(frame[6:12])
        table = self.table
        if not src[0] & 1:  # learn unicast sources only
            entry = table.get(src)
            if entry is None or entry[0] != in_port or now - entry[1] > 1.0:
                if entry is not None:
                    del table[src]  # re-insert at the end: the newest
                elif len(table) >= self.max_macs:
                    self._make_room(now)
                table[src] = (in_port, now)
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

    def lookup(self, mac: bytes, now: float) -> int | None:
        entry = self.table.get(mac)
        if entry is None or now - entry[1] > self.aging:
            return None
        return entry[0]
