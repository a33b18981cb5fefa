"""Ports: the ends of cables plugged into a switch. ``base`` holds the protocol the switch
knows them by (``Port``: send, deliver, counters, link state, listeners) and their common part
(``SwitchPort``), a port's vocabulary (``PortVlan``, ``PortCounters``) and the little of the
switch a port knows (``SwitchSide``: the ports sit below ``netfabric.switch`` and never import
it); one module per kind: ``nic`` (a VM's NIC), ``host`` (driven from code),
``tap`` (the host's kernel through a TAP device), ``link`` (a cable between two switches),
``vxlan`` (a cable to other hosts over VXLAN),
``services`` (the built-in services host)."""

from netfabric.ports.base import (
    Cable,
    Deliver,
    Listener,
    Port,
    PortCounters,
    PortVlan,
    SwitchPort,
    SwitchSide,
)

__all__ = [
    "Cable",
    "Deliver",
    "Listener",
    "Port",
    "PortCounters",
    "PortVlan",
    "SwitchPort",
    "SwitchSide",
]
