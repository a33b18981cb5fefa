"""The port protocol: what a switch knows of anything plugged into it, and their common part.

A port is one end of a cable plugged into a ``netfabric.switch.Switch``. Toward the switch,
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

A ``Cable`` sits between a port and what is plugged into it, and may impair each direction:
``wrap(deliver, "egress")`` is the way from the device into the switch, ``"ingress"`` the way
back (for a link, a to b and b to a). ``netfabric.impair.ImpairedLink`` is one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from netfabric.capture import PcapngWriter, PortCapture
from netfabric.frame import Frame
from netfabric.switch import PortCounters, PortVlan

if TYPE_CHECKING:
    from netfabric.switch import Switch

# Takes a frame onward: a port's device end, one direction of a cable.
Deliver = Callable[[Frame], None]
# Sees a frame where it passes (a capture, a monitor): (port id, frame, time.time_ns()). It
# runs on the forwarding path: quick, and it must not raise (a live capture buffers boundedly
# and drops what it cannot keep).
Listener = Callable[[int, Frame, int], None]
Direction = Literal["egress", "ingress"]


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


class SwitchPort:
    """A port's common part (see the module's docstring): plugged into ``switch`` as ``name``
    when made, with a VLAN role (``vlan``) and a pcapng file of its own traffic (``capture``:
    a listener on the port) if given. A kind adds ``deliver``."""

    def __init__(
        self,
        switch: Switch,
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
