"""Built-in network services on a switch: ARP and ping, DHCP, DNS and TFTP at one address.

Theory of operation. Each switch with a subnet may have one ``ServiceHost``: a host with
an address of its own on the subnet (the first one by default, as QEMU's user network has
its 10.0.2.2), plugged in as one more switch port. It answers ARP and ping for that address
and runs, as configured by ``ServicesConfig``: a DHCP server (``dhcp``: static leases from
the lab's NICs, a pool for the rest, the router, DNS server, next-server and boot file
options), a DNS server for the lab's names (``dns``: ``a.lab``, ``b.lab``) and a read-only
TFTP server of a host directory (``tftp_root``: blksize, tsize, timeout and windowsize
options, so U-Boot's ``tftpboot`` moves 1468-byte blocks).

Everything below ``ServiceHost.attach``/``run`` is sans-IO: frames in, frames out, time
passed in. Layers: ``_ip`` (the hand-written Ethernet/ARP/IPv4/ICMP/UDP subset), ``dhcp``,
``dns`` (on ``dnslib``) and ``tftp`` (each a server of payloads, knowing nothing of frames),
``host`` (frames to servers and back, the switch port and its timer task), ``config``
(the checked configuration: bad input is a ``ValueError`` that names it).

    svc = ServiceHost(ServicesConfig(IPv4Network("10.0.0.0/24"), dhcp=DhcpConfig(),
                                     dns=DnsConfig(), tftp_root=Path("tftp-root")))
    svc.attach(switch)
    nursery.start_soon(svc.run)
"""

from netfabric.services.config import DhcpConfig, DnsConfig, ServicesConfig, default_mac
from netfabric.services.dhcp import DhcpServer, Lease
from netfabric.services.dns import DnsServer
from netfabric.services.host import ServiceHost
from netfabric.services.tftp import TftpServer

__all__ = [
    "DhcpConfig",
    "DhcpServer",
    "DnsConfig",
    "DnsServer",
    "Lease",
    "ServiceHost",
    "ServicesConfig",
    "TftpServer",
    "default_mac",
]
