"""The built-in services host's port: each frame the switch delivers, as wire frames, to the
host's ``handle``, and its answers sent back at once (from inside the delivery, like any port
that answers straight away). The host itself (``netfabric.services.ServiceHost``) is sans-IO
and knows nothing of switches; ``ServiceHost.attach`` makes this port."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from netfabric.frame import Frame
from netfabric.ports.base import SwitchPort, SwitchSide

# One wire frame in, the frames answering it out; never raises.
Handle = Callable[[bytes], list[bytes]]


class ServicesPort(SwitchPort):
    def __init__(
        self, switch: SwitchSide, name: str, handle: Handle, capture: Path | None = None
    ) -> None:
        self.handle = handle
        super().__init__(switch, name, capture=capture)

    def deliver(self, frame: Frame) -> None:
        for wire in frame.wire():
            for out in self.handle(wire):
                self.send(Frame(out))
