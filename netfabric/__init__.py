"""netfabric: the network fabric guests plug into, with no knowledge of the machine.

A frame's path, by file, from one guest to another:

1. the guest's driver puts it on its TX virtqueue and notifies (``hv/virtio/_queue.py``);
2. the virtio-net device takes it off the queue, strips the ``virtio_net_hdr`` and makes it a
   ``Frame`` (``netfabric/frame.py``: bytes and, offloaded, its ``Offload``, see
   ``netfabric/offload.py``), then hands it to its send end (``hv/virtio/_net.py``);
3. that is the NIC's port: through its cable (``netfabric/impair.py`` if impaired) into the
   switch (``netfabric/ports/nic.py``, on the protocol of ``netfabric/ports/base.py``);
4. the switch learns and decides the output ports (``netfabric/switch.py``: the sans-IO
   ``LearningSwitch``, then ``Switch.send``);
5. the captures and listeners see it, as wire frames (``netfabric/capture.py``: the switch's
   pcapng file, a port's own, a live capture);
6. each output port takes it: another NIC's port (``netfabric/ports/nic.py``), through its
   cable, to that NIC's ``deliver`` (``hv/virtio/_net.py``), which writes it into that
   guest's RX queue (``hv/virtio/_queue.py``) and interrupts it.

Other ports take frames the same way: ``ports/host.py`` (driven from code), ``ports/tap.py``
(the host's kernel), ``ports/link.py`` (another switch), ``ports/vxlan.py`` (other hosts, over
VXLAN), ``ports/services.py`` (DHCP, DNS and
TFTP: ``netfabric/services/``). ``hv/_nic.py`` is where the machine and the fabric meet: it
builds a NIC's device and its port and joins them.

Layering, lowest first: ``offload``, ``frame`` and ``capture``; the ports (``ports/``: the
``Port`` protocol, a port's ``PortVlan`` and ``PortCounters``, each kind), which know the switch
they plug into only as a ``SwitchSide`` and never import it; ``switch.py`` (the sans-IO
``LearningSwitch`` core and ``Switch``, which moves frames between ports and makes host ports
for ``open_port`` and ``attach``); ``impair`` and ``services`` build on the ports.
"""

from netfabric.capture import PcapngWriter
from netfabric.frame import Frame
from netfabric.impair import ImpairedLink, Impairment
from netfabric.offload import Offload
from netfabric.ports.base import Cable, Port, PortCounters, PortVlan, SwitchPort
from netfabric.ports.host import CallbackPort, HostPort
from netfabric.ports.link import Link, LinkPort
from netfabric.ports.nic import NicPort
from netfabric.ports.services import ServicesPort
from netfabric.ports.tap import TapPort
from netfabric.ports.vxlan import VxlanEndpoint, VxlanPort
from netfabric.switch import LearningSwitch, Switch, mac_str, parse_mac

__all__ = [
    "Cable",
    "CallbackPort",
    "Frame",
    "HostPort",
    "ImpairedLink",
    "Impairment",
    "LearningSwitch",
    "Link",
    "LinkPort",
    "NicPort",
    "Offload",
    "PcapngWriter",
    "Port",
    "PortCounters",
    "PortVlan",
    "ServicesPort",
    "Switch",
    "SwitchPort",
    "TapPort",
    "VxlanEndpoint",
    "VxlanPort",
    "mac_str",
    "parse_mac",
]
