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

(Its parts moved: ``Switch`` and ``SwitchPort`` to ``netfabric.switch``, ``HostPort`` to
``netfabric.ports.host``, ``Link`` to ``netfabric.ports.link``. This module keeps the old names
importable.)
"""

from netfabric.ports.host import HostPort
from netfabric.ports.link import Link, find_loop
from netfabric.switch import FLUSH_INTERVAL, Cable, Deliver, Listener, Switch, SwitchPort

__all__ = [
    "FLUSH_INTERVAL", "Cable", "Deliver", "HostPort", "Link", "Listener", "Switch", "SwitchPort",
    "find_loop",
]  # fmt: skip
