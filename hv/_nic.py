"""A VM's network cards in code: ``VmConfig(nics=[Nic(switch, ip=...)])``.

A ``Nic`` names the switch its cable goes to (a ``netfabric.switch.Switch``, opened by the
caller in a nursery) and how the guest should see it. Its ``ip`` reaches the guest on the
kernel command line as ``ip=``, the form both the Linux userland's init and the firmware
runtime read, so one setting configures both kinds of guest. The MAC defaults to a stable
address from the VM's name and the NIC's position, as in lab files.

This is where the machine and the fabric meet: ``Nic.device`` builds the virtio-net device
(``hv.virtio``, which knows nothing of switches) and its port on the switch
(``netfabric.ports.nic.NicPort``) and joins them: the device's send end is the port's
``uplink`` (its way into the switch), the port's deliver end the device's ``deliver``.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hv._errors import ConfigError
from netfabric.capture import CaptureError
from netfabric.ports import PortVlan
from netfabric.switch import parse_mac as switch_parse_mac

if TYPE_CHECKING:
    from hv.hw import Device
    from netfabric.ports.base import Cable
    from netfabric.switch import Switch


def default_mac(vm: str, index: int) -> bytes:
    """A stable MAC from the VM's name and the NIC's position (QEMU's 52:54:00 prefix)."""
    digest = hashlib.sha256(f"{vm}/{index}".encode()).digest()
    return bytes([0x52, 0x54, 0x00]) + digest[:3]


def parse_mac(text: str) -> bytes:
    """A NIC's MAC from ``52:54:00:12:34:56``: a ConfigError if it is not one, or multicast."""
    try:
        mac = switch_parse_mac(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if mac[0] & 1:
        raise ConfigError(f"{text} is a multicast address, not a NIC's")
    return mac


class _Addressed(Protocol):
    @property
    def ip(self) -> ipaddress.IPv4Interface | str | None: ...
    @property
    def gateway(self) -> ipaddress.IPv4Address | str | None: ...


def nic_cmdline(nics: Sequence[_Addressed]) -> str:
    """The ``ip=`` arguments for a VM's NICs (the first in short form, the rest by name;
    ``dhcp`` for a NIC that asks the switch's DHCP server)."""
    parts = []
    for i, nic in enumerate(nics):
        if nic.ip is None:
            continue
        if nic.ip == "dhcp":
            parts.append("ip=dhcp" if i == 0 else f"ip=:::::eth{i}:dhcp")
            continue
        assert isinstance(nic.ip, ipaddress.IPv4Interface)
        gw = nic.gateway or ""
        if i == 0 and not gw:
            parts.append(f"ip={nic.ip.with_prefixlen}")
        else:
            parts.append(f"ip={nic.ip.ip}::{gw}:{nic.ip.netmask}::eth{i}:off")
    return " ".join(parts)


@dataclass(frozen=True)
class Nic:
    """One NIC: the switch it plugs into, its address (``"10.0.0.1/24"``, ``"dhcp"`` or None
    for none on the command line), MAC (bytes or ``"52:54:00:.."``; default from the names),
    gateway, MTU, and a pcapng file of its own traffic."""

    switch: Switch
    ip: ipaddress.IPv4Interface | str | None = None
    mac: bytes | str | None = None
    gateway: ipaddress.IPv4Address | str | None = None
    capture: Path | None = None
    mtu: int = 1500
    vlan: PortVlan | int | None = None  # an access VLAN id, or a PortVlan (a trunk)
    cable: Cable | None = None  # an impairment on the cable (netfabric.impair.ImpairedLink)

    def __post_init__(self) -> None:
        ip = self.ip
        if isinstance(ip, str) and ip != "dhcp":
            try:
                ip = ipaddress.IPv4Interface(ip if "/" in ip else ip + "/24")
            except ValueError:
                raise ConfigError(
                    f"NIC ip {self.ip!r} is not an IPv4 address like 10.0.0.1/24 or dhcp"
                ) from None
            object.__setattr__(self, "ip", ip)
        gw = self.gateway
        if isinstance(gw, str):
            try:
                gw = ipaddress.IPv4Address(gw)
            except ValueError:
                raise ConfigError(f"NIC gateway {gw!r} is not an IPv4 address") from None
            object.__setattr__(self, "gateway", gw)
        if gw is not None and (not isinstance(ip, ipaddress.IPv4Interface) or gw not in ip.network):
            raise ConfigError(f"NIC gateway {gw} is not in the NIC's subnet ({ip})")
        if isinstance(self.mac, str):
            object.__setattr__(self, "mac", parse_mac(self.mac))
        if isinstance(self.vlan, int):
            object.__setattr__(self, "vlan", PortVlan(access=self.vlan))
        if not 68 <= self.mtu <= 65535:
            raise ConfigError(f"NIC mtu {self.mtu} is out of range 68..65535")

    def device(self, vm: str, index: int) -> Device:
        """The virtio-net device for this NIC, plugged into its switch as ``VM.ethN``."""
        from hv.virtio import VirtioMmio, VirtioNet
        from netfabric.ports.nic import NicPort

        name = f"{vm}.eth{index}"
        mac = self.mac if isinstance(self.mac, bytes) else default_mac(vm, index)
        ip = self.ip.ip.packed if isinstance(self.ip, ipaddress.IPv4Interface) else None
        net = VirtioNet(mac, self.mtu)
        try:
            port = NicPort(
                self.switch,
                name,
                net.deliver,
                mac=mac,
                ip=ip,
                vlan=self.vlan if isinstance(self.vlan, PortVlan) else None,  # __post_init__
                capture=self.capture,
                cable=self.cable,
            )
        except CaptureError as e:
            raise ConfigError(f"eth{index}: {e}") from None
        net.connect(port.uplink)
        return VirtioMmio(name, net)
