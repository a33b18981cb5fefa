"""The port protocol: what a switch knows of anything plugged into it, and their common part.

A port is one end of a cable plugged into a switch (``netfabric.switch.Switch``, which this
module never imports: the ports sit below the switch and know it only as a ``SwitchSide``, the
few things they call on it). Toward the switch,
``send(frame)`` puts a frame on it; from the switch, ``deliver(frame)`` takes each frame that
leaves through the port. Both carry a ``netfabric.frame.Frame`` (bytes and, for an offloaded
frame, its ``Offload``; a port that cannot take offloads asks ``frame.wire()``). The switch
counts each port's traffic (``counters``) and keeps its link state (``up``): while a port is
down, what it sends and what would go to it is dropped and counted. Listeners (``add_listener``,
a capture) see what the port sends and what the switch delivers to it, on the switch's side of
its cable. The switch calls nothing else: it knows ports only by this protocol.

``SwitchPort`` is the common part every kind builds on: it plugs itself into its switch when it
is made (``Switch.plug`` gives it its id) and does everything but ``deliver``. The kinds, one
module each: ``nic`` (a VM's NIC), ``host`` (driven from code), ``tap`` (the host's kernel),
``link`` (a cable to another switch), ``services`` (the built-in services host).

A port's vocabulary is here too: its VLAN role (``PortVlan``) and its counters
(``PortCounters``, kept by the switch's core).

A ``Cable`` sits between a port and what is plugged into it, and may impair each direction:
``wrap(deliver, "egress")`` is the way from the device into the switch, ``"ingress"`` the way
back (for a link, a to b and b to a). ``netfabric.impair.ImpairedLink`` is one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import trio

from netfabric.capture import PcapngWriter, PortCapture
from netfabric.frame import Frame

# Takes a frame onward: a port's device end, one direction of a cable.
Deliver = Callable[[Frame], None]
# Sees a frame where it passes (a capture, a monitor): (port id, frame, time.time_ns()). It
# runs on the forwarding path: quick, and it must not raise (a live capture buffers boundedly
# and drops what it cannot keep).
Listener = Callable[[int, Frame, int], None]
Direction = Literal["egress", "ingress"]


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


class Cable(Protocol):
    """What sits between a port and its device: ``wrap(deliver, direction)`` gives the
    ``Deliver`` that takes frames through that direction on their way to ``deliver``."""

    def wrap(self, deliver: Deliver, direction: Direction) -> Deliver: ...


@runtime_checkable
class Port(Protocol):
    """A port, as its switch and its owner see it."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def listeners(self) -> tuple[Listener, ...]: ...

    def send(self, frame: Frame) -> None:
        """A frame from the port's device, into the switch."""

    def deliver(self, frame: Frame) -> None:
        """A frame the switch sends out through this port, to its device."""

    @property
    def counters(self) -> PortCounters: ...
    @property
    def up(self) -> bool: ...

    def set_up(self, up: bool) -> None:
        """Link up or down (down: what it sends and what is meant for it is dropped)."""

    def add_listener(self, listener: Listener) -> None: ...
    def remove_listener(self, listener: Listener) -> None: ...

    def flush(self) -> None:
        """Write out what the port buffers (its capture); the switch calls it periodically."""

    def close(self) -> None:
        """The switch is closing: close what the port holds open (its capture)."""


class SwitchCore(Protocol):
    """What a port reads and sets in its switch's core (``netfabric.switch.LearningSwitch``):
    its counters, the VLAN roles, its link state."""

    @property
    def ports(self) -> Mapping[int, PortCounters]: ...
    @property
    def vlans(self) -> Mapping[int, PortVlan]: ...

    def is_up(self, port: int) -> bool: ...
    def set_up(self, port: int, up: bool) -> None: ...


class SwitchSide(Protocol):
    """The switch a port plugs into, as its ports see it (``netfabric.switch.Switch`` is
    one): ``plug`` gives a port its id, ``send`` takes the frames it puts on the switch,
    ``set_vlan`` gives it a VLAN role, ``bind_ip`` its IPv4 address (a NIC's), and a link
    marks its ends in ``trunk_ports``."""

    @property
    def name(self) -> str: ...
    @property
    def core(self) -> SwitchCore: ...
    @property
    def trunk_ports(self) -> set[int]: ...

    def plug(self, port: Port) -> int: ...
    def send(self, port_id: int, frame: Frame) -> None: ...
    def set_vlan(self, port_id: int, vlan: PortVlan) -> None: ...
    def bind_ip(self, port_id: int, ip: bytes, mac: bytes) -> None: ...


class SwitchPort:
    """A port's common part (see the module's docstring): plugged into ``switch`` as ``name``
    when made, with a VLAN role (``vlan``) and a pcapng file of its own traffic (``capture``:
    a listener on the port) if given. A kind adds ``deliver``."""

    def __init__(
        self,
        switch: SwitchSide,
        name: str,
        *,
        vlan: PortVlan | None = None,
        capture: Path | None = None,
    ) -> None:
        self.switch = switch
        self.name = name
        self.listeners: tuple[Listener, ...] = ()
        # opened before the port is plugged in: a file that cannot be written fails here
        self._capture = PortCapture(capture, name) if capture is not None else None
        self.id = switch.plug(self)
        if self._capture is not None:
            self.add_listener(self._capture)
        if vlan is not None:
            self.set_vlan(vlan)

    @property
    def capture(self) -> PcapngWriter | None:
        """The writer of this port's own capture (``capture=``), if it has one."""
        return self._capture.writer if self._capture is not None else None

    def send(self, frame: Frame) -> None:
        self.switch.send(self.id, frame)

    def deliver(self, frame: Frame) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not take frames")

    @property
    def counters(self) -> PortCounters:
        return self.switch.core.ports[self.id]

    @property
    def up(self) -> bool:
        return self.switch.core.is_up(self.id)

    def set_up(self, up: bool) -> None:
        self.switch.core.set_up(self.id, up)

    def set_vlan(self, vlan: PortVlan) -> None:
        """Make this an access port (``PortVlan(access=10)``) or a trunk
        (``PortVlan(access=None, allowed=frozenset({10, 20}), native=1)``)."""
        self.switch.set_vlan(self.id, vlan)

    def add_listener(self, listener: Listener) -> None:
        self.listeners = (*self.listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        self.listeners = tuple(x for x in self.listeners if x != listener)

    def flush(self) -> None:
        if self._capture is not None:
            self._capture.flush()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} #{self.id} on {self.switch.name!r}>"


async def read_until_closed(fd: Callable[[], int], read_available: Callable[[], bool]) -> None:
    """A reading task's loop over a non-blocking descriptor (a TAP's, a socket's): call
    ``read_available()`` (True once nothing is left), wait for more, until ``fd()`` is
    negative (closed) or the descriptor is closed under the wait."""
    while fd() >= 0:
        if read_available():
            try:
                await trio.lowlevel.wait_readable(fd())
            except trio.ClosedResourceError:
                return
        else:
            await trio.lowlevel.checkpoint()
