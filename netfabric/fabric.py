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

import time
from collections.abc import Callable
from pathlib import Path

import trio

from netfabric.capture import PcapngWriter
from netfabric.offload import Offload, resolve
from netfabric.switch import DEFAULT_AGING, DEFAULT_MAX_MACS, LearningSwitch, PortCounters

# The capture reaches the disk at least this often (and at exit).
FLUSH_INTERVAL = 1.0

# A port takes a frame and, for an offloaded one (a partial checksum, a TCP segment to cut),
# its Offload; a port that cannot take offloads calls netfabric.offload.resolve on it.
Deliver = Callable[[bytes, "Offload | None"], None]


class SwitchPort:
    """A port's handle: ``send`` puts a frame on the switch."""

    def __init__(
        self, switch: Switch, port_id: int, name: str, deliver: Deliver, capture: Path | None
    ) -> None:
        self.switch = switch
        self.id = port_id
        self.name = name
        self.deliver = deliver
        # This port's own capture: what it sends and what it is given, one interface.
        self._capture_file = open(capture, "wb") if capture is not None else None  # noqa: SIM115
        self.capture = PcapngWriter(self._capture_file) if self._capture_file else None
        if self.capture is not None:
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
        self.switch.send(self.id, frame, offload)

    @property
    def counters(self) -> PortCounters:
        return self.switch.core.ports[self.id]

    def set_up(self, up: bool) -> None:
        self.switch.core.set_up(self.id, up)


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
        self._capture_file = open(capture, "wb") if capture is not None else None  # noqa: SIM115
        self.capture = PcapngWriter(self._capture_file) if self._capture_file else None
        self._iface: dict[int, int] = {}

    def attach(self, name: str, deliver: Deliver, capture: Path | None = None) -> SwitchPort:
        """Plug a port in; ``capture``: a pcapng file of this port's traffic alone."""
        port = SwitchPort(self, self._next, name, deliver, capture)
        self._next += 1
        self.core.add_port(port.id)
        self.ports[port.id] = port
        if self.capture is not None:
            self._iface[port.id] = self.capture.add_interface(name)
        return port

    def send(self, port_id: int, frame: bytes, offload: Offload | None = None) -> None:
        now = time.monotonic()
        out = self.core.forward(port_id, frame, now)
        if self.capture is not None and (out or self.core.is_up(port_id)):
            ts = time.time_ns()
            # The capture shows the wire: an offloaded frame as the segments it stands for.
            for wire in resolve(frame, offload) if offload is not None else (frame,):
                self.capture.write(self._iface[port_id], wire, ts)
        ports = self.ports
        src = ports[port_id]
        if src.capture is not None:
            src.record(frame, offload, time.time_ns())
        for p in out:
            dst = ports[p]
            if dst.capture is not None:
                dst.record(frame, offload, time.time_ns())
            dst.deliver(frame, offload)

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
        if self.capture is not None:
            self.capture.close()
        if self._capture_file is not None:
            self._capture_file.close()
            self._capture_file = None
        for port in self.ports.values():
            port.close()
