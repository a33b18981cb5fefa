"""What a switch's built-in services are told: addresses, DHCP pool and leases, names, TFTP.

Theory of operation. Plain frozen dataclasses, checked when they are made: every mistake a
lab file can hold (an address outside the subnet, a pool that overlaps a static lease or the
services' own address, two machines given one address) is a ``ValueError`` whose message
names the values, raised before any frame moves. The checked configuration is then trusted
by the servers, which keep no validation of their own on the hot path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

# A name we hand out or answer: DNS labels as hosts use them (underscores are allowed, as
# lab VM names may have them; RFC 2181 allows any label bytes).
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$", re.IGNORECASE)

# RFC 2348: a TFTP block is 8..65464 bytes.
TFTP_BLKSIZE_MAX = 65464


def is_label(text: str) -> bool:
    return bool(_LABEL.match(text))


def is_domain(text: str) -> bool:
    return bool(text) and len(text) <= 253 and all(is_label(p) for p in text.split("."))


def default_mac(address: IPv4Address) -> bytes:
    """The services' stable MAC: 52:55 and the IPv4 address (as QEMU's user network gives its
    virtual host 52:55:0a:00:02:02); locally administered, never one of hv's 52:54:00 NICs."""
    return b"\x52\x55" + address.packed


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _is_host(a: IPv4Address, subnet: IPv4Network) -> bool:
    return a in subnet and a not in (subnet.network_address, subnet.broadcast_address)


@dataclass(frozen=True)
class DhcpConfig:
    """The DHCP server: ``pool`` (first, last; inclusive; default: the upper half of the
    subnet's hosts, minus any address taken otherwise), ``lease`` in seconds, ``static``
    leases (MAC -> (address, host name or None)), ``hostnames`` for pool clients (MAC -> name,
    handed out as option 12 and answered by the DNS server), ``boot``: the boot file offered
    with the TFTP server as next-server."""

    pool: tuple[IPv4Address, IPv4Address] | None = None
    lease: float = 3600.0
    static: Mapping[bytes, tuple[IPv4Address, str | None]] = field(default_factory=dict)
    hostnames: Mapping[bytes, str] = field(default_factory=dict)
    boot: str | None = None


@dataclass(frozen=True)
class DnsConfig:
    """The DNS server: ``names`` (bare name or ``NAME.domain`` -> address or addresses) on top
    of the DHCP server's static and leased host names; ``ttl`` of the answers, in seconds."""

    names: Mapping[str, IPv4Address | Sequence[IPv4Address]] = field(default_factory=dict)
    ttl: int = 10


@dataclass(frozen=True)
class ServicesConfig:
    """One switch's services. ``address`` defaults to the subnet's first host (10.0.0.1 for
    10.0.0.0/24), ``mac`` to ``default_mac(address)``, ``router`` (option 3) to ``address``.
    ``tftp_root``: a directory served read-only. ``mtu`` bounds the TFTP block size; a
    transfer's packets are retransmitted every ``tftp_timeout`` seconds (or the client's
    RFC 2349 ``timeout``), ``tftp_retries`` times, then the transfer is abandoned."""

    subnet: IPv4Network
    address: IPv4Address | None = None
    mac: bytes | None = None
    dhcp: DhcpConfig | None = None
    dns: DnsConfig | None = None
    tftp_root: Path | None = None
    router: IPv4Address | None = None
    domain: str = "lab"
    mtu: int = 1500
    tftp_timeout: float = 1.0
    tftp_retries: int = 5

    def __post_init__(self) -> None:
        subnet = self.subnet
        if not isinstance(subnet, IPv4Network):
            raise ValueError(f"subnet: {subnet!r} is not an IPv4Network")
        if subnet.num_addresses < 4:
            raise ValueError(f"subnet {subnet} is too small for hosts (at most /30)")
        ip = self.service_ip
        if not _is_host(ip, subnet):
            raise ValueError(f"the services' address {ip} is not a host of subnet {subnet}")
        if self.mac is not None and (len(self.mac) != 6 or self.mac[0] & 1):
            raise ValueError(f"the services' MAC {self.mac.hex(':')} is not a unicast MAC")
        if not _is_host(self.gateway, subnet):
            raise ValueError(f"router {self.gateway} is not a host of subnet {subnet}")
        if not is_domain(self.domain):
            raise ValueError(f"domain {self.domain!r} is not a DNS name like lab or corp.lab")
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"mtu {self.mtu} is out of range 576..65535")
        if not (0 < self.tftp_timeout <= 255) or not 1 <= self.tftp_retries <= 100:
            raise ValueError("tftp_timeout must be in (0, 255] s and tftp_retries in 1..100")
        if self.tftp_root is not None and not Path(self.tftp_root).is_dir():
            raise ValueError(f"tftp root {str(self.tftp_root)!r} is not a directory")
        if self.dhcp is not None:
            self._check_dhcp(self.dhcp)
        if self.dns is not None:
            self._check_dns(self.dns)

    # -- effective values ----------------------------------------------------------------

    @property
    def service_ip(self) -> IPv4Address:
        return self.address if self.address is not None else self.subnet.network_address + 1

    @property
    def service_mac(self) -> bytes:
        return self.mac if self.mac is not None else default_mac(self.service_ip)

    @property
    def gateway(self) -> IPv4Address:
        return self.router if self.router is not None else self.service_ip

    @property
    def pool(self) -> tuple[IPv4Address, IPv4Address] | None:
        """The DHCP pool as configured or by default (None without DHCP)."""
        if self.dhcp is None:
            return None
        if self.dhcp.pool is not None:
            return self.dhcp.pool
        first = int(self.subnet.network_address) + 1
        last = int(self.subnet.broadcast_address) - 1
        return IPv4Address(first + (last - first + 1) // 2), IPv4Address(last)

    def reserved(self) -> set[IPv4Address]:
        """Pool addresses never handed out: the services', the router's, the static ones."""
        out = {self.service_ip, self.gateway}
        if self.dhcp is not None:
            out.update(ip for ip, _ in self.dhcp.static.values())
        return out

    # -- checks --------------------------------------------------------------------------

    def _check_dhcp(self, d: DhcpConfig) -> None:
        subnet = self.subnet
        if not (math.isfinite(d.lease) and 60 <= d.lease <= 0xFFFF_FFFE):
            raise ValueError(f"DHCP lease time {d.lease!r} s is out of range 60..4294967294")
        owners: dict[IPv4Address, bytes] = {}
        for mac, (ip, name) in d.static.items():
            m = _mac_text(mac) if isinstance(mac, bytes) else repr(mac)
            if not isinstance(mac, bytes) or len(mac) != 6 or mac[0] & 1:
                raise ValueError(f"static lease {m}: not a unicast MAC (6 bytes)")
            if not isinstance(ip, IPv4Address) or not _is_host(ip, subnet):
                raise ValueError(f"static lease {m}: {ip} is not a host of subnet {subnet}")
            if ip == self.service_ip:
                raise ValueError(f"static lease {m}: {ip} is the services' own address")
            if ip in owners:
                raise ValueError(
                    f"static lease {m}: {ip} is also {_mac_text(owners[ip])}'s static lease"
                )
            owners[ip] = mac
            if name is not None and not is_label(name):
                raise ValueError(f"static lease {m}: host name {name!r} is not a DNS label")
        for mac, name in d.hostnames.items():
            if not isinstance(mac, bytes) or len(mac) != 6:
                raise ValueError(f"host name for {mac!r}: not a MAC (6 bytes)")
            if not is_label(name):
                raise ValueError(f"host name {name!r} for {_mac_text(mac)} is not a DNS label")
        if d.boot is not None and not 0 < len(d.boot.encode()) < 128:
            raise ValueError(f"boot file name {d.boot!r} must be 1..127 bytes (the BOOTP field)")
        if d.pool is None:
            return
        first, last = d.pool
        text = f"{first}-{last}"
        for a in (first, last):
            if not isinstance(a, IPv4Address) or not _is_host(a, subnet):
                raise ValueError(f"DHCP pool {text}: {a} is not a host of subnet {subnet}")
        if last < first:
            raise ValueError(f"DHCP pool {text} ends before it starts")
        if first <= self.service_ip <= last:
            raise ValueError(f"DHCP pool {text} holds the services' address {self.service_ip}")
        if first <= self.gateway <= last:
            raise ValueError(f"DHCP pool {text} holds the router's address {self.gateway}")
        for ip, mac in sorted(owners.items()):
            if first <= ip <= last:
                raise ValueError(
                    f"DHCP pool {text} overlaps the static lease of {_mac_text(mac)} ({ip})"
                )

    def _check_dns(self, d: DnsConfig) -> None:
        if not isinstance(d.ttl, int) or not 0 <= d.ttl <= 0x7FFF_FFFF:
            raise ValueError(f"DNS ttl {d.ttl!r} is out of range 0..2147483647")
        suffix = "." + self.domain.lower()
        for name, addrs in d.names.items():
            bare = name.lower().rstrip(".").removesuffix(suffix)
            if not is_label(bare):
                raise ValueError(f"DNS name {name!r} is not NAME or NAME{suffix}")
            for a in [addrs] if isinstance(addrs, IPv4Address) else addrs:
                if not isinstance(a, IPv4Address):
                    raise ValueError(f"DNS name {name!r}: {a!r} is not an IPv4 address")
