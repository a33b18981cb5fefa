"""A port driven from code (tests, applications): frames in and out as bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from netfabric.offload import Offload, resolve
from netfabric.switch import PortCounters, PortVlan

if TYPE_CHECKING:
    from netfabric.switch import Switch


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
