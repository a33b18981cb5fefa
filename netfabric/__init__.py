"""netfabric: the network fabric guests plug into, with no knowledge of the machine.

Layering: ``switch`` (the sans-IO learning switch: frames and port ids in, port ids out) and
``capture`` (the pcapng writer) are self-contained; ports (a VM's NIC, a capture, later a TAP
and links between switches) and the async layer that moves frames between them build on them.
"""

from netfabric.capture import PcapngWriter
from netfabric.switch import LearningSwitch, PortCounters, mac_str, parse_mac

__all__ = ["LearningSwitch", "PcapngWriter", "PortCounters", "mac_str", "parse_mac"]
