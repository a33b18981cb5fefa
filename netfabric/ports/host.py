"""Ports driven from code (tests, applications, tools): ``HostPort`` queues what the switch
delivers for ``await receive()``; ``CallbackPort`` hands it to a function at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from netfabric.frame import Frame
from netfabric.offload import Offload
from netfabric.ports.base import PortVlan, SwitchPort, SwitchSide


def as_frame(frame: Frame | bytes | Any, offload: Offload | None = None) -> Frame:
    """A ``Frame`` from a frame, bytes, or anything ``bytes()`` makes one of (a scapy
    packet)."""
    if isinstance(frame, Frame):
        return frame
    return Frame(frame if isinstance(frame, bytes) else bytes(frame), offload)


class HostPort(SwitchPort):
    """A host driven from code: ``send`` frames (bytes or scapy packets), ``await receive()``
    what the switch delivers, as wire frames (at most ``queue`` waiting; the rest is dropped
    and counted in ``dropped``)."""

    def __init__(self, switch: SwitchSide, name: str, queue: int, vlan: PortVlan | None) -> None:
        self.queue = queue
        self.dropped = 0
        self._send, self._receive = trio.open_memory_channel[bytes](queue)
        super().__init__(switch, name, vlan=vlan)

    def deliver(self, frame: Frame) -> None:
        for wire in frame.wire():
            try:
                self._send.send_nowait(wire)
            except trio.WouldBlock:
                self.dropped += 1

    def send(self, frame: Frame | bytes | Any) -> None:
        """Put a frame on the switch: a Frame, bytes, or anything ``bytes()`` makes one of
        (a scapy packet)."""
        self.switch.send(self.id, as_frame(frame))

    async def receive(self) -> bytes:
        """The next frame the switch delivered to this port."""
        return await self._receive.receive()

    def receive_nowait(self) -> bytes | None:
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            return None

    @property
    def port(self) -> HostPort:
        """This port (it used to be a separate handle)."""
        return self


class CallbackPort(SwitchPort):
    """A port whose frames go to ``callback(data, offload)`` as the switch hands them over
    (offloads and all): a hook for tests and tools (``Switch.attach`` makes one)."""

    def __init__(
        self,
        switch: SwitchSide,
        name: str,
        callback: Callable[[bytes, Offload | None], None],
        *,
        capture: Path | None = None,
        vlan: PortVlan | None = None,
    ) -> None:
        self.callback = callback
        super().__init__(switch, name, vlan=vlan, capture=capture)

    def deliver(self, frame: Frame) -> None:
        self.callback(frame.data, frame.offload)

    def send(self, frame: Frame | bytes | Any, offload: Offload | None = None) -> None:
        """Put a frame on the switch: a Frame, or bytes (with their ``offload``)."""
        self.switch.send(self.id, as_frame(frame, offload))
