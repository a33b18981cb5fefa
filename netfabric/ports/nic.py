"""A VM's NIC on a switch: the guest side of the fabric.

The NIC device (``hv.virtio._net.VirtioNet``) knows nothing of switches: it has a send end
(a callable it is given: this port's ``send``) and a deliver end (its ``deliver(frame)``,
which this port is given). ``hv.Nic`` builds the two and joins them. Between them and the
switch sits the NIC's cable, which may impair each direction (``cable``: egress is what the
guest sends, ingress what it receives); the port's own capture is a listener on the port, on
the switch's side of the cable. With ``ip`` (its static IPv4 address) the switch sends ARP
requests for that address to this port alone (``Switch.bind_ip``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from netfabric.frame import Frame
from netfabric.ports.base import Cable, Deliver, PortVlan, SwitchPort, SwitchSide


class NicPort(SwitchPort):
    """Port ``name`` (``VM.ethN``) of ``switch`` for a NIC whose deliver end is ``deliver``;
    ``mac``: the NIC's address; ``vlan``: the port's VLAN role; ``capture``: a pcapng file of
    its traffic alone; ``cable``: an impairment on the cable; ``ip``: its static address.
    ``uplink`` is the NIC's send end (what ``send`` does, one call shorter)."""

    # Attributes, not methods: the switch calls ``deliver`` and the NIC ``uplink`` for every
    # frame, and each is then the callable itself (the device's deliver end, or the cable's
    # direction; the switch's send for this port, or the cable's), without a hop through us.
    deliver: Deliver  # type: ignore[assignment]
    uplink: Deliver

    def __init__(
        self,
        switch: SwitchSide,
        name: str,
        deliver: Deliver,
        *,
        mac: bytes,
        ip: bytes | None = None,
        vlan: PortVlan | None = None,
        capture: Path | None = None,
        cable: Cable | None = None,
    ) -> None:
        super().__init__(switch, name, vlan=vlan, capture=capture)
        self.mac = mac
        into: Deliver = partial(switch.send, self.id)
        if cable is not None:
            into, deliver = cable.wrap(into, "egress"), cable.wrap(deliver, "ingress")
        self.uplink = into
        self.deliver = deliver
        if ip is not None:
            switch.bind_ip(self.id, ip, mac)

    def send(self, frame: Frame) -> None:
        """A frame the guest sent, through the cable into the switch."""
        self.uplink(frame)
