"""The switches' built-in services (netfabric.services), driven sans-IO with client frames
built by scapy and replies parsed by scapy: ARP and ping, DHCP (DORA for static and pool
clients, renew, NAK, exhaustion, decline, options), DNS (A, PTR, NODATA, NXDOMAIN, REFUSED),
TFTP (option negotiation, block-number rollover, retransmission, duplicate ACKs, refusals),
configuration errors, fuzzing of every parser, and a ServiceHost on a real Switch in trio."""

from __future__ import annotations

import functools
import os
import re
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
from scapy.layers.l2 import ARP, Ether
from scapy.layers.tftp import TFTP, TFTP_ACK, TFTP_DATA, TFTP_ERROR, TFTP_OACK, TFTP_RRQ
from scapy.packet import Packet
from scapy.utils import mac2str

from netfabric.offload import Offload, checksum
from netfabric.services import DhcpConfig, DnsConfig, ServiceHost, ServicesConfig, _ip, default_mac
from netfabric.services.tftp import PORT_FIRST
from netfabric.switch import Switch

NET = IPv4Network("10.0.0.0/24")
SVC = "10.0.0.1"
BCAST = "ff:ff:ff:ff:ff:ff"
A_MAC, B_MAC = "52:54:00:00:00:0a", "52:54:00:00:00:0b"  # static: a = 10.0.0.10, b = .11
P_MAC, Q_MAC, R_MAC = "52:54:00:00:00:70", "52:54:00:00:00:71", "52:54:00:00:00:72"  # pool
STATIC = {
    mac2str(A_MAC): (IPv4Address("10.0.0.10"), "a"),
    mac2str(B_MAC): (IPv4Address("10.0.0.11"), "b"),
}
POOL = (IPv4Address("10.0.0.100"), IPv4Address("10.0.0.101"))


def make(tmp_path: Path, **kw: Any) -> ServiceHost:
    root = tmp_path / "tftp"
    root.mkdir(exist_ok=True)
    dhcp = DhcpConfig(pool=POOL, static=STATIC, boot="Image", hostnames={mac2str(R_MAC): "r"})
    args: dict[str, Any] = {"dhcp": dhcp, "dns": DnsConfig(), "tftp_root": root}
    args.update(kw)
    return ServiceHost(ServicesConfig(NET, **args))


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[ServiceHost]:
    s = make(tmp_path)
    yield s
    s.close()
    assert s.counters["internal_errors"] == 0


def svc_mac(s: ServiceHost) -> str:
    return s.mac.hex(":")


def ask(s: ServiceHost, pkt: Packet | bytes, now: float = 0.0) -> list[Ether]:
    return [Ether(f) for f in s.handle(bytes(pkt), now)]


def to_svc(s: ServiceHost, l4: Packet, src: str = "10.0.0.10", dst: str = SVC) -> Packet:
    """``l4`` in a frame from VM a to the services."""
    return Ether(src=A_MAC, dst=svc_mac(s)) / IP(src=src, dst=dst) / l4


def checksums_valid(p: Ether) -> bool:
    """The IP/ICMP/UDP checksums are what scapy computes for the same bytes."""
    again = Ether(bytes(p))
    for layer in (IP, ICMP, UDP):
        if layer in again:
            del again[layer].chksum
    again = Ether(bytes(again))
    return all(p[layer].chksum == again[layer].chksum for layer in (IP, ICMP, UDP) if layer in p)


# -- ARP and ping ----------------------------------------------------------------------------


def test_arp_reply_for_our_address_only(svc: ServiceHost) -> None:
    req = Ether(src=A_MAC, dst=BCAST) / ARP(op=1, hwsrc=A_MAC, psrc="10.0.0.10", pdst=SVC)
    [reply] = ask(svc, req)
    assert reply.dst == A_MAC and reply.src == svc_mac(svc) == "52:55:0a:00:00:01"
    arp = reply[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc) == (2, svc_mac(svc), SVC)
    assert (arp.hwdst, arp.pdst) == (A_MAC, "10.0.0.10")
    assert len(bytes(reply)) == 60
    other = Ether(src=A_MAC, dst=BCAST) / ARP(op=1, hwsrc=A_MAC, psrc="10.0.0.10", pdst="10.0.0.9")
    assert ask(svc, other) == []
    assert svc.counters["arp_replies"] == 1


def test_ping_reply_with_valid_checksums(svc: ServiceHost) -> None:
    payload = bytes(range(256)) * 4
    req = to_svc(svc, ICMP(id=0x1234, seq=7) / payload)
    [reply] = ask(svc, req)
    assert reply.dst == A_MAC and reply[IP].src == SVC and reply[IP].dst == "10.0.0.10"
    icmp = reply[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 0x1234, 7)
    assert bytes(icmp.payload) == payload
    assert checksums_valid(reply)
    # Not to us, a bad checksum, or an echo reply: no answer.
    assert ask(svc, to_svc(svc, ICMP(), dst="10.0.0.9")) == []
    assert ask(svc, to_svc(svc, ICMP(chksum=1))) == []
    assert ask(svc, to_svc(svc, ICMP(type=0))) == []
    assert svc.counters["echo_replies"] == 1 and svc.counters["icmp_checksum"] == 1


def test_udp_to_a_closed_port_is_port_unreachable(svc: ServiceHost) -> None:
    req = to_svc(svc, UDP(sport=4000, dport=123) / b"ntp?")
    [reply] = ask(svc, req)
    assert (reply[ICMP].type, reply[ICMP].code) == (3, 3)
    assert checksums_valid(reply)
    quoted = reply[ICMP].payload
    assert quoted[IPerror].src == "10.0.0.10" and quoted[UDPerror].dport == 123


def test_frames_for_others_and_bad_ip_are_ignored_or_counted(svc: ServiceHost) -> None:
    to_other = Ether(src=A_MAC, dst=B_MAC) / IP(src="10.0.0.10", dst=SVC) / ICMP()
    assert ask(svc, to_other) == []
    bad_ip = bytearray(bytes(to_svc(svc, ICMP())))
    bad_ip[24] ^= 0xFF  # the IP checksum
    assert ask(svc, bytes(bad_ip)) == []
    frag = Ether(src=A_MAC, dst=svc_mac(svc)) / IP(src="10.0.0.10", dst=SVC, flags="MF") / ICMP()
    assert ask(svc, frag) == []
    assert ask(svc, b"\x01\x02") == []
    assert svc.counters["ip_checksum"] == 1 and svc.counters["ip_fragment"] == 1
    assert svc.counters["runt"] == 1 and svc.counters["malformed"] == 3


# -- DHCP ------------------------------------------------------------------------------------


def dhcp(
    mac: str,
    kind: str,
    *opts: tuple[str, Any],
    xid: int = 0x1234,
    ciaddr: str = "0.0.0.0",
    flags: int = 0,
    src: str = "0.0.0.0",
    dst: str = "255.255.255.255",
    eth_dst: str = BCAST,
) -> Packet:
    return (
        Ether(src=mac, dst=eth_dst)
        / IP(src=src, dst=dst)
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=mac2str(mac), xid=xid, ciaddr=ciaddr, flags=flags)
        / DHCP(options=[("message-type", kind), *opts, "end"])
    )


def options(p: Packet) -> dict[str, Any]:
    return {o[0]: o[1] for o in p[DHCP].options if isinstance(o, tuple)}


KIND = {2: "offer", 5: "ack", 6: "nak"}


def kind(p: Packet) -> str:
    return KIND[options(p)["message-type"]]


def dora(s: ServiceHost, mac: str, now: float = 0.0, flags: int = 0) -> tuple[Ether, Ether]:
    [offer] = ask(s, dhcp(mac, "discover", ("hostname", b"ignored"), flags=flags), now)
    yiaddr = offer[BOOTP].yiaddr
    [ack] = ask(
        s,
        dhcp(mac, "request", ("server_id", SVC), ("requested_addr", yiaddr), flags=flags),
        now,
    )
    return offer, ack


def test_dora_for_a_static_client_with_every_option(svc: ServiceHost) -> None:
    offer, ack = dora(svc, A_MAC, now=100.0)
    for p, k in ((offer, "offer"), (ack, "ack")):
        assert kind(p) == k and checksums_valid(p)
        b = p[BOOTP]
        assert (b.op, b.xid, b.yiaddr, b.siaddr) == (2, 0x1234, "10.0.0.10", SVC)
        assert b.file.rstrip(b"\0") == b"Image" and b.chaddr[:6] == mac2str(A_MAC)
        # No broadcast flag: unicast to the offered address at the client's MAC (4.1).
        assert p.dst == A_MAC and p[IP].dst == "10.0.0.10" and p[UDP].dport == 68
        o = options(p)
        assert o["server_id"] == SVC and o["subnet_mask"] == "255.255.255.0"
        assert o["router"] == SVC and o["name_server"] == SVC
        assert o["broadcast_address"] == "10.0.0.255"
        assert o["domain"] == b"lab" and o["hostname"] == b"a"
        assert (o["lease_time"], o["renewal_time"], o["rebinding_time"]) == (3600, 1800, 3150)
        assert o["boot-file-name"] == b"Image" and o["tftp_server_name"] == SVC.encode()
        assert len(p[BOOTP]) >= 300
    lease = svc.leases(now=100.0)[A_MAC]
    assert (lease.ip, lease.hostname, lease.static, lease.expires) == (
        IPv4Address("10.0.0.10"),
        "a",
        True,
        3700.0,
    )


def test_dora_for_a_pool_client_with_the_broadcast_flag(svc: ServiceHost) -> None:
    offer, ack = dora(svc, P_MAC, flags=0x8000)
    assert kind(offer) == "offer" and kind(ack) == "ack"
    assert offer[BOOTP].yiaddr == ack[BOOTP].yiaddr == "10.0.0.100"
    for p in (offer, ack):
        assert p.dst == BCAST and p[IP].dst == "255.255.255.255"
        assert "hostname" not in options(p)  # the pool client named itself; not echoed
    assert svc.leases(now=0.0)[P_MAC].ip == IPv4Address("10.0.0.100")
    # Asked again (a second DISCOVER), the client gets the same address.
    [again] = ask(svc, dhcp(P_MAC, "discover"), now=10.0)
    assert again[BOOTP].yiaddr == "10.0.0.100"
    # A pool client the lab names gets its name as option 12.
    offer_r, _ = dora(svc, R_MAC)
    assert options(offer_r)["hostname"] == b"r" and offer_r[BOOTP].yiaddr == "10.0.0.101"


def test_renew_and_rebind(svc: ServiceHost) -> None:
    dora(svc, P_MAC, now=0.0)
    # RENEWING: unicast to the server, ciaddr set, no server id or requested address.
    renew = dhcp(
        P_MAC, "request", ciaddr="10.0.0.100", src="10.0.0.100", dst=SVC, eth_dst=svc_mac(svc)
    )
    [ack] = ask(svc, renew, now=1800.0)
    assert kind(ack) == "ack" and ack[BOOTP].yiaddr == "10.0.0.100"
    assert ack[BOOTP].ciaddr == "10.0.0.100"
    assert ack.dst == P_MAC and ack[IP].dst == "10.0.0.100"  # to ciaddr
    assert svc.leases(now=1800.0)[P_MAC].expires == 1800.0 + 3600
    # REBINDING: the same, broadcast.
    rebind = dhcp(P_MAC, "request", ciaddr="10.0.0.100", src="10.0.0.100")
    [ack2] = ask(svc, rebind, now=3200.0)
    assert kind(ack2) == "ack" and ack2[IP].dst == "10.0.0.100"
    assert svc.leases(now=3200.0)[P_MAC].expires == 3200.0 + 3600
    assert svc.leases(now=7000.0) == {}  # expired


def test_nak_for_addresses_the_client_may_not_have(svc: ServiceHost) -> None:
    # INIT-REBOOT with someone's static address, and with one outside the subnet.
    for wrong in ("10.0.0.10", "192.168.1.5", "10.0.0.50"):
        [nak] = ask(svc, dhcp(P_MAC, "request", ("requested_addr", wrong)))
        assert kind(nak) == "nak" and nak[BOOTP].yiaddr == "0.0.0.0"
        assert nak.dst == BCAST and nak[IP].dst == "255.255.255.255"  # NAKs are broadcast
        assert options(nak)["server_id"] == SVC
    # A static client asking for another address than its own.
    [nak] = ask(svc, dhcp(A_MAC, "request", ("server_id", SVC), ("requested_addr", "10.0.0.100")))
    assert kind(nak) == "nak"
    # A free pool address asked for without a record (the lab restarted) is granted.
    [ack] = ask(svc, dhcp(Q_MAC, "request", ("requested_addr", "10.0.0.101")))
    assert kind(ack) == "ack" and ack[BOOTP].yiaddr == "10.0.0.101"
    # Then it is Q's: P may not have it.
    [nak] = ask(svc, dhcp(P_MAC, "request", ("requested_addr", "10.0.0.101")))
    assert kind(nak) == "nak"
    assert svc.counters["dhcp_tx_nak"] == 5


def test_a_request_for_another_server_releases_our_offer(svc: ServiceHost) -> None:
    [offer] = ask(svc, dhcp(P_MAC, "discover"))
    assert offer[BOOTP].yiaddr == "10.0.0.100"
    assert (
        ask(
            svc,
            dhcp(P_MAC, "request", ("server_id", "10.0.0.254"), ("requested_addr", "10.0.0.77")),
        )
        == []
    )
    assert svc.counters["dhcp_other_server"] == 1
    [offer_q] = ask(svc, dhcp(Q_MAC, "discover"))
    [offer_r] = ask(svc, dhcp(mac_n(1), "discover"))  # P's offer went back to the pool
    assert {offer_q[BOOTP].yiaddr, offer_r[BOOTP].yiaddr} == {"10.0.0.100", "10.0.0.101"}


def mac_n(i: int) -> str:
    return f"52:54:00:01:{i >> 8:02x}:{i & 0xFF:02x}"


def test_pool_exhaustion_then_expiry_and_release(svc: ServiceHost) -> None:
    dora(svc, P_MAC, now=0.0)
    dora(svc, Q_MAC, now=0.0)
    assert ask(svc, dhcp(mac_n(1), "discover"), now=1.0) == []  # both addresses leased
    assert svc.counters["dhcp_pool_exhausted"] == 1
    # A static client is not affected by the pool.
    offer, ack = dora(svc, B_MAC, now=1.0)
    assert ack[BOOTP].yiaddr == "10.0.0.11"
    # P releases its address: the newcomer gets it.
    release = dhcp(
        P_MAC,
        "release",
        ("server_id", SVC),
        ciaddr="10.0.0.100",
        src="10.0.0.100",
        dst=SVC,
        eth_dst=svc_mac(svc),
    )
    assert ask(svc, release, now=2.0) == []
    [offer] = ask(svc, dhcp(mac_n(1), "discover"), now=3.0)
    assert offer[BOOTP].yiaddr == "10.0.0.100"
    # An offer holds its address for a minute only; Q's lease runs out after an hour.
    assert ask(svc, dhcp(mac_n(2), "discover"), now=30.0) == []
    [offer2] = ask(svc, dhcp(mac_n(2), "discover"), now=3601.0)
    assert offer2[BOOTP].yiaddr in ("10.0.0.100", "10.0.0.101")
    assert svc.counters["dhcp_pool_exhausted"] == 2


def test_a_flood_of_discovers_is_bounded_by_the_pool(tmp_path: Path) -> None:
    s = make(tmp_path, dhcp=DhcpConfig(pool=(IPv4Address("10.0.0.100"), IPv4Address("10.0.0.163"))))
    offered = {ask(s, dhcp(mac_n(i), "discover"))[0][BOOTP].yiaddr for i in range(64)}
    assert len(offered) == 64
    for i in range(64, 264):
        assert ask(s, dhcp(mac_n(i), "discover")) == []
    assert s.counters["dhcp_pool_exhausted"] == 200
    assert s.dhcp is not None and len(s.dhcp._bindings) == 64 and len(s.dhcp._owner) == 64


def test_decline_takes_the_address_out_of_the_pool(svc: ServiceHost) -> None:
    offer, ack = dora(svc, P_MAC)
    assert ack[BOOTP].yiaddr == "10.0.0.100"
    decline = dhcp(P_MAC, "decline", ("server_id", SVC), ("requested_addr", "10.0.0.100"))
    assert ask(svc, decline, now=1.0) == []
    [offer] = ask(svc, dhcp(P_MAC, "discover"), now=2.0)
    assert offer[BOOTP].yiaddr == "10.0.0.101"
    assert ask(svc, dhcp(Q_MAC, "discover"), now=3.0) == []  # .100 is in use by a stranger


def test_inform_gets_options_without_a_lease(svc: ServiceHost) -> None:
    inform = dhcp(
        A_MAC, "inform", ciaddr="10.0.0.10", src="10.0.0.10", dst=SVC, eth_dst=svc_mac(svc)
    )
    [ack] = ask(svc, inform)
    o = options(ack)
    assert kind(ack) == "ack" and ack[BOOTP].yiaddr == "0.0.0.0" and ack[IP].dst == "10.0.0.10"
    assert "lease_time" not in o and o["router"] == SVC


def test_dhcp_without_dns_or_tftp_omits_their_options(tmp_path: Path) -> None:
    s = ServiceHost(ServicesConfig(NET, dhcp=DhcpConfig(), router=IPv4Address("10.0.0.254")))
    _, ack = dora(s, P_MAC)
    o = options(ack)
    assert "name_server" not in o and "boot-file-name" not in o and o["router"] == "10.0.0.254"
    assert ack[BOOTP].siaddr == "0.0.0.0"
    assert ack[BOOTP].yiaddr == "10.0.0.128"  # the default pool: the subnet's upper half
    [unreachable] = ask(s, to_svc(s, UDP(sport=999, dport=53) / DNS(qd=DNSQR(qname="a.lab"))))
    assert unreachable[ICMP].type == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": IPv4Address("10.0.1.1")}, "not a host of subnet 10.0.0.0/24"),
        ({"address": IPv4Address("10.0.0.255")}, "not a host of subnet"),
        ({"router": IPv4Address("192.168.0.1")}, "router 192.168.0.1 is not a host"),
        (
            {
                "dhcp": DhcpConfig(
                    pool=(IPv4Address("10.0.0.5"), IPv4Address("10.0.0.20")), static=STATIC
                )
            },
            "DHCP pool 10.0.0.5-10.0.0.20 overlaps the static lease of 52:54:00:00:00:0a",
        ),
        (
            {"dhcp": DhcpConfig(pool=(IPv4Address("10.0.0.200"), IPv4Address("10.0.1.20")))},
            "10.0.1.20 is not a host of subnet 10.0.0.0/24",
        ),
        (
            {"dhcp": DhcpConfig(pool=(IPv4Address("10.0.0.1"), IPv4Address("10.0.0.20")))},
            "holds the services' address 10.0.0.1",
        ),
        (
            {"dhcp": DhcpConfig(pool=(IPv4Address("10.0.0.9"), IPv4Address("10.0.0.8")))},
            "ends before it starts",
        ),
        (
            {"dhcp": DhcpConfig(static={mac2str(A_MAC): (IPv4Address("10.0.5.5"), "a")})},
            "static lease 52:54:00:00:00:0a: 10.0.5.5 is not a host of subnet 10.0.0.0/24",
        ),
        (
            {"dhcp": DhcpConfig(static={mac2str(A_MAC): (IPv4Address("10.0.0.1"), "a")})},
            "the services' own address",
        ),
        (
            {
                "dhcp": DhcpConfig(
                    static={
                        mac2str(A_MAC): (IPv4Address("10.0.0.5"), "a"),
                        mac2str(B_MAC): (IPv4Address("10.0.0.5"), "b"),
                    }
                )
            },
            "10.0.0.5 is also 52:54:00:00:00:0a's static lease",
        ),
        (
            {"dhcp": DhcpConfig(static={mac2str(A_MAC): (IPv4Address("10.0.0.5"), "a b")})},
            "is not a DNS label",
        ),
        ({"dhcp": DhcpConfig(lease=1.0)}, "lease time"),
        ({"dns": DnsConfig(names={"x.other": IPv4Address("10.0.0.5")})}, "is not NAME or NAME.lab"),
        ({"tftp_root": Path("/nonexistent/tftp")}, "is not a directory"),
        ({"mac": b"\x01\0\0\0\0\1"}, "not a unicast MAC"),
        ({"domain": "bad domain"}, "is not a DNS name"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ServicesConfig(NET, **kwargs)


def test_default_pool_skips_static_and_reserved_addresses() -> None:
    net = IPv4Network("10.0.0.0/29")  # hosts .1-.6; upper half .4-.6
    static = {mac2str(A_MAC): (IPv4Address("10.0.0.5"), "a")}
    cfg = ServicesConfig(net, dhcp=DhcpConfig(static=static), router=IPv4Address("10.0.0.4"))
    s = ServiceHost(cfg)
    [offer] = ask(s, dhcp(mac_n(1), "discover"))  # .4 is the router's, .5 a's
    assert offer[BOOTP].yiaddr == "10.0.0.6" and ask(s, dhcp(mac_n(2), "discover")) == []
    assert default_mac(IPv4Address("10.0.0.1")) == s.mac == b"\x52\x55\x0a\x00\x00\x01"


# -- DNS -------------------------------------------------------------------------------------


def dns(s: ServiceHost, name: str, qtype: str = "A", now: float = 0.0) -> DNS:
    q = to_svc(s, UDP(sport=33333, dport=53) / DNS(id=77, rd=1, qd=DNSQR(qname=name, qtype=qtype)))
    [reply] = ask(s, q, now)
    assert reply[UDP].sport == 53 and reply[UDP].dport == 33333 and checksums_valid(reply)
    d = reply[DNS]
    assert d.id == 77 and d.qr == 1 and d.ra == 0
    return d


RCODE = {0: "ok", 2: "servfail", 3: "nxdomain", 5: "refused"}


def answers(d: DNS) -> list[str]:
    return [str(rr.rdata) for rr in (d.an or [])] if d.ancount else []


def test_dns_names_of_the_lab(tmp_path: Path) -> None:
    multi = [IPv4Address("10.0.0.7"), IPv4Address("10.0.0.8")]
    s = make(tmp_path, dns=DnsConfig(names={"gw": IPv4Address("10.0.0.254"), "multi.lab": multi}))
    assert answers(dns(s, "a.lab")) == ["10.0.0.10"]
    assert answers(dns(s, "B.LAB.")) == ["10.0.0.11"]  # any case, with the root
    assert answers(dns(s, "a")) == ["10.0.0.10"]  # a bare name
    assert answers(dns(s, "gw.lab")) == ["10.0.0.254"]
    assert answers(dns(s, "multi.lab")) == ["10.0.0.7", "10.0.0.8"]
    assert dns(s, "a.lab").aa == 1
    nodata = dns(s, "a.lab", "AAAA")
    assert (nodata.rcode, nodata.ancount, nodata.nscount) == (0, 0, 1)  # NOERROR, SOA
    nx = dns(s, "zzz.lab")
    assert RCODE[nx.rcode] == "nxdomain" and nx.nscount == 1 and nx.ancount == 0
    assert RCODE[dns(s, "x.a.lab").rcode] == "nxdomain"
    assert RCODE[dns(s, "example.com").rcode] == "refused"
    assert dns(s, "lab", "SOA").ancount == 1
    ptr = dns(s, "10.0.0.10.in-addr.arpa", "PTR")
    assert ptr.ancount == 1 and ptr.an[0].rdata == b"a.lab."
    assert RCODE[dns(s, "99.0.0.10.in-addr.arpa", "PTR").rcode] == "nxdomain"
    assert RCODE[dns(s, "8.8.8.8.in-addr.arpa", "PTR").rcode] == "refused"


def test_dns_answers_pool_clients_by_name_once_leased(tmp_path: Path) -> None:
    pool = (IPv4Address("10.0.0.100"), IPv4Address("10.0.0.110"))
    svc = make(tmp_path, dhcp=DhcpConfig(pool=pool, static=STATIC, hostnames={mac2str(R_MAC): "r"}))
    assert RCODE[dns(svc, "r.lab").rcode] == "nxdomain"
    dora(svc, R_MAC, now=0.0)  # named by the lab
    assert answers(dns(svc, "r.lab", now=1.0)) == ["10.0.0.100"]
    # A pool client's own name (option 12) is answered too, unless it is taken.
    for mac, name in ((P_MAC, b"ubuntu"), (Q_MAC, b"a")):
        [offer] = ask(svc, dhcp(mac, "discover"))
        ip = offer[BOOTP].yiaddr
        ask(
            svc,
            dhcp(mac, "request", ("server_id", SVC), ("requested_addr", ip), ("hostname", name)),
        )
    assert answers(dns(svc, "ubuntu.lab", now=1.0)) == ["10.0.0.101"]
    assert answers(dns(svc, "a.lab", now=1.0)) == ["10.0.0.10"]  # the static VM's, not Q's
    assert dns(svc, "101.0.0.10.in-addr.arpa", "PTR", now=1.0).an[0].rdata == b"ubuntu.lab."
    assert RCODE[dns(svc, "r.lab", now=4000.0).rcode] == "nxdomain"  # the lease ran out


def test_dns_garbage_is_dropped_and_counted(svc: ServiceHost) -> None:
    q = to_svc(svc, UDP(sport=1, dport=53))
    assert ask(svc, q / b"\x00\x01garbage") == []
    response = DNS(id=1, qr=1, qd=DNSQR(qname="a.lab"))
    assert ask(svc, q / response) == []  # a response is never answered
    assert svc.counters["dns_malformed"] == 1 and svc.counters["dns_not_query"] == 1


# -- TFTP ------------------------------------------------------------------------------------

CPORT = 2000


def tftp(
    s: ServiceHost, pkt: Packet, dport: int = 69, now: float = 0.0, sport: int = CPORT
) -> list[Ether]:
    return ask(s, to_svc(s, UDP(sport=sport, dport=dport) / pkt), now)


def rrq(name: str, *opts: tuple[str, str], mode: str = "octet") -> Packet:
    raw = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in opts)
    return TFTP(op=1) / TFTP_RRQ(filename=name.encode(), mode=mode.encode()) / raw


def ack(block: int) -> Packet:
    return TFTP(op=4) / TFTP_ACK(block=block)


def tftp_of(p: Ether) -> TFTP:
    """The TFTP packet in a reply (scapy dissects TFTP on port 69 only; ours come from the
    transfer's own port), without the Ethernet padding."""
    return TFTP(bytes(p[UDP])[8 : p[UDP].len])


def data_of(p: Ether) -> tuple[int, bytes]:
    assert p[UDP].dport == CPORT, p.summary()
    t = tftp_of(p)
    assert TFTP_DATA in t, t.summary()
    return t[TFTP_DATA].block, bytes(t[TFTP_DATA].payload)


def oack_options(p: Ether) -> dict[bytes, bytes]:
    t = tftp_of(p)
    assert TFTP_OACK in t, t.summary()
    fields = bytes(t[TFTP_OACK].payload).split(b"\0")[:-1]
    return dict(zip(fields[::2], fields[1::2], strict=True))


def error_of(p: Ether) -> tuple[int, bytes]:
    t = tftp_of(p)
    assert TFTP_ERROR in t, t.summary()
    return t[TFTP_ERROR].errorcode, t[TFTP_ERROR].errormsg


@pytest.fixture
def root(svc: ServiceHost) -> Path:
    assert svc.config.tftp_root is not None
    return svc.config.tftp_root


def test_tftp_blksize_and_tsize_negotiation_and_a_whole_file(svc: ServiceHost, root: Path) -> None:
    content = os.urandom(1468 * 3 + 1000)
    (root / "Image").write_bytes(content)
    [oack] = tftp(svc, rrq("Image", ("blksize", "65464"), ("tsize", "0"), ("foo", "1")))
    assert oack_options(oack) == {b"blksize": b"1468", b"tsize": str(len(content)).encode()}
    tid = oack[UDP].sport
    assert tid >= PORT_FIRST and oack.dst == A_MAC and checksums_valid(oack)
    got = b""
    block = 0
    while True:
        replies = tftp(svc, ack(block), dport=tid)
        if not replies:
            break
        [p] = replies
        assert p[UDP].sport == tid and len(bytes(p)) == 14 + 20 + 8 + 4 + len(data_of(p)[1])
        n, chunk = data_of(p)
        assert n == block + 1
        got += chunk
        block = n
    assert got == content and block == 4
    assert svc.counters["tftp_done"] == 1 and svc.tftp is not None and not svc.tftp.transfers


def test_tftp_without_options_sends_512_byte_blocks_and_an_empty_last_one(
    svc: ServiceHost, root: Path
) -> None:
    (root / "f").write_bytes(b"x" * 1024)
    [d1] = tftp(svc, rrq("f"))
    assert data_of(d1) == (1, b"x" * 512)
    [d2] = tftp(svc, ack(1), dport=d1[UDP].sport)
    [d3] = tftp(svc, ack(2), dport=d1[UDP].sport)
    assert data_of(d2) == (2, b"x" * 512) and data_of(d3) == (3, b"")
    assert tftp(svc, ack(3), dport=d1[UDP].sport) == []
    assert svc.counters["tftp_done"] == 1


def test_tftp_block_numbers_roll_over(svc: ServiceHost, root: Path) -> None:
    size = 65536 * 8 + 100
    content = bytes(i * 7 & 0xFF for i in range(size))
    (root / "big").write_bytes(content)
    [oack] = tftp(svc, rrq("big", ("blksize", "8")))
    assert oack_options(oack) == {b"blksize": b"8"}
    tid = oack[UDP].sport
    # ACK frames from a template (scapy per block would take a minute): UDP checksum 0 is
    # "none" in IPv4, so only the block number changes.
    template = bytearray(bytes(to_svc(svc, UDP(sport=CPORT, dport=tid, chksum=0) / ack(0))))
    got = []
    wire_blocks = []
    block = 0
    while True:
        struct.pack_into("!H", template, 44, block & 0xFFFF)
        out = svc.handle(bytes(template), 0.0)
        if not out:
            break
        [frame] = out
        udp_len = int.from_bytes(frame[38:40], "big")
        wire = int.from_bytes(frame[44:46], "big")
        wire_blocks.append(wire)
        got.append(frame[46 : 34 + udp_len])
        block += 1
    assert b"".join(got) == content
    assert len(got) == size // 8 + 1 == 65549
    assert wire_blocks[65534:65537] == [65535, 0, 1]  # blocks 65535, 65536, 65537
    assert svc.counters["tftp_done"] == 1


def test_tftp_retransmits_after_the_timeout_then_gives_up(svc: ServiceHost, root: Path) -> None:
    (root / "f").write_bytes(b"y" * 700)
    [d1] = tftp(svc, rrq("f"), now=10.0)
    assert svc.next_deadline() == 11.0
    assert svc.tick(10.5) == []
    again = [Ether(f) for f in svc.tick(11.0)]
    assert [data_of(p) for p in again] == [(1, b"y" * 512)]
    assert again[0][UDP].sport == d1[UDP].sport
    [d2] = tftp(svc, ack(1), dport=d1[UDP].sport, now=11.5)  # progress resets the count
    assert data_of(d2) == (2, b"y" * 188) and svc.next_deadline() == 12.5
    for i in range(5):
        [p] = [Ether(f) for f in svc.tick(12.5 + i)]
        assert data_of(p)[0] == 2
    assert svc.tick(17.5) == [] and svc.next_deadline() is None  # 5 tries, then abandoned
    assert svc.counters["tftp_retransmits"] == 6 and svc.counters["tftp_timeouts"] == 1


def test_tftp_client_timeout_option_and_a_retransmitted_oack(svc: ServiceHost, root: Path) -> None:
    (root / "f").write_bytes(b"z" * 10)
    [oack] = tftp(svc, rrq("f", ("timeout", "3"), ("tsize", "0")), now=0.0)
    assert oack_options(oack) == {b"timeout": b"3", b"tsize": b"10"}
    assert svc.tick(2.9) == []
    [again] = [Ether(f) for f in svc.tick(3.0)]
    assert oack_options(again) == oack_options(oack)
    # The client repeats its RRQ (our OACK was late): not a second transfer.
    assert tftp(svc, rrq("f", ("timeout", "3"), ("tsize", "0")), now=3.1) == []
    assert svc.tftp is not None and len(svc.tftp.transfers) == 1
    [d1] = tftp(svc, ack(0), dport=oack[UDP].sport, now=3.2)
    assert data_of(d1) == (1, b"z" * 10)


def test_tftp_duplicate_acks_do_not_duplicate_data(svc: ServiceHost, root: Path) -> None:
    (root / "f").write_bytes(b"q" * 2000)
    [d1] = tftp(svc, rrq("f"))
    tid = d1[UDP].sport
    [d2] = tftp(svc, ack(1), dport=tid)
    assert data_of(d2)[0] == 2
    assert tftp(svc, ack(1), dport=tid) == []  # the Sorcerer's Apprentice: no second DATA 2
    assert tftp(svc, ack(9), dport=tid) == []  # a block never sent
    [d3] = tftp(svc, ack(2), dport=tid)
    assert data_of(d3)[0] == 3
    assert svc.counters["tftp_duplicate_ack"] == 1 and svc.counters["tftp_stray_ack"] == 1
    # Another client's packet to this transfer's port: ERROR 5 to it, the transfer goes on.
    [err] = tftp(svc, ack(3), dport=tid, sport=CPORT + 1)
    assert err[UDP].dport == CPORT + 1 and error_of(err)[0] == 5
    [d4] = tftp(svc, ack(3), dport=tid)
    assert data_of(d4)[0] == 4
    # The client gives up with an ERROR: the transfer ends, its file closed.
    assert tftp(svc, TFTP(op=5) / TFTP_ERROR(errorcode=0, errormsg=b"stop"), dport=tid) == []
    assert svc.tftp is not None and not svc.tftp.transfers


def test_tftp_windowsize(svc: ServiceHost, root: Path) -> None:
    content = os.urandom(512 * 10 + 3)
    (root / "w").write_bytes(content)
    [oack] = tftp(svc, rrq("w", ("windowsize", "4")))
    assert oack_options(oack) == {b"windowsize": b"4"}
    tid = oack[UDP].sport
    w1 = tftp(svc, ack(0), dport=tid)
    assert [data_of(p)[0] for p in w1] == [1, 2, 3, 4]
    w2 = tftp(svc, ack(2), dport=tid)  # 3 and 4 were lost: the window restarts after 2
    assert [data_of(p)[0] for p in w2] == [3, 4, 5, 6]
    w3 = tftp(svc, ack(6), dport=tid)
    w4 = tftp(svc, ack(10), dport=tid)
    assert [data_of(p)[0] for p in w3] == [7, 8, 9, 10] and [data_of(p)[0] for p in w4] == [11]
    blocks = {n: d for p in w1 + w2 + w3 + w4 for n, d in [data_of(p)]}
    assert b"".join(blocks[n] for n in sorted(blocks)) == content
    assert tftp(svc, ack(11), dport=tid) == [] and svc.counters["tftp_done"] == 1


def test_tftp_netascii(svc: ServiceHost, root: Path) -> None:
    (root / "t.txt").write_bytes(b"one\ntwo\r\n" * 100)
    [d1] = tftp(svc, rrq("t.txt", mode="netascii"))
    got = data_of(d1)[1]
    n = 1
    while len(data_of(d1)[1]) == 512:
        [d1] = tftp(svc, ack(n), dport=d1[UDP].sport)
        got += data_of(d1)[1]
        n += 1
    assert got == b"one\r\ntwo\r\0\r\n" * 100


@pytest.mark.parametrize(
    "name", ["../secret", "/etc/passwd", "sub/../../secret", "escape", "sub/escape", "..", "."]
)
def test_tftp_refuses_to_leave_the_root(svc: ServiceHost, root: Path, name: str) -> None:
    (root.parent / "secret").write_bytes(b"private")
    (root / "sub").mkdir()
    (root / "escape").symlink_to(root.parent / "secret")
    (root / "sub" / "escape").symlink_to("../../secret")
    [err] = tftp(svc, rrq(name))
    code, msg = error_of(err)
    assert code == 2 and b"access violation" in msg
    assert b"private" not in bytes(err)


def test_tftp_serves_symlinks_inside_the_root(svc: ServiceHost, root: Path) -> None:
    (root / "real").write_bytes(b"inside")
    (root / "sub").mkdir()
    (root / "sub" / "link").symlink_to("../real")
    [d1] = tftp(svc, rrq("sub/link"))
    assert data_of(d1) == (1, b"inside")


def test_tftp_missing_file_writes_and_special_files(svc: ServiceHost, root: Path) -> None:
    [err] = tftp(svc, rrq("nothing-here"))
    assert error_of(err)[0] == 1
    assert err[UDP].sport != 69 and err[UDP].dport == CPORT
    wrq = TFTP(op=2) / TFTP_RRQ(filename=b"upload", mode=b"octet")
    [err] = tftp(svc, wrq)
    code, msg = error_of(err)
    assert code == 2 and b"read-only" in msg and not (root / "upload").exists()
    os.mkfifo(root / "fifo")
    (root / "dir").mkdir()
    for name in ("fifo", "dir"):
        [err] = tftp(svc, rrq(name))
        assert error_of(err)[0] == 2
    [err] = tftp(svc, rrq("x", mode="mail"))
    assert error_of(err)[0] == 4
    assert svc.tftp is not None and not svc.tftp.transfers


def test_tftp_blksize_is_capped_by_the_mtu(tmp_path: Path) -> None:
    s = make(tmp_path, mtu=9000)
    assert s.config.tftp_root is not None
    (s.config.tftp_root / "f").write_bytes(b"a" * 9000)
    [oack] = tftp(s, rrq("f", ("blksize", "65464")))
    assert oack_options(oack) == {b"blksize": b"8968"}
    [d1] = tftp(s, ack(0), dport=oack[UDP].sport)
    assert len(data_of(d1)[1]) == 8968 and d1[IP].len == 9000
    s.close()


# -- hostile input ---------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fuzz_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHost]:
    s = make(tmp_path_factory.mktemp("fuzz"))
    assert s.config.tftp_root is not None
    (s.config.tftp_root / "f").write_bytes(b"data" * 300)
    yield s
    s.close()


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_frames(fuzz_host: ServiceHost, data: bytes) -> None:
    for frame in (data, mac2str(svc_mac(fuzz_host)) + data, b"\xff" * 6 + data):
        out = fuzz_host.handle(frame, 0.0)
        assert isinstance(out, list)
    assert fuzz_host.counters["internal_errors"] == 0


def _udp_to_us(s: ServiceHost, dport: int, payload: bytes, dst: str = SVC) -> bytes:
    """A client frame with valid checksums around ``payload``, so mutants reach the parsers."""
    d = _ip.Datagram(
        s.mac if dst == SVC else b"\xff" * 6, IPv4Address(dst).packed, CPORT, dport, payload
    )
    return _ip.udp_frame(mac2str(P_MAC), IPv4Address("10.0.0.10").packed, d, 1)


SEEDS = {
    "dhcp": (
        67,
        "255.255.255.255",
        bytes(dhcp(P_MAC, "discover", ("requested_addr", "10.0.0.100"), ("hostname", b"h"))[BOOTP]),
    ),
    "request": (
        67,
        SVC,
        bytes(dhcp(P_MAC, "request", ("server_id", SVC), ("requested_addr", "10.0.0.100"))[BOOTP]),
    ),
    "dns": (53, SVC, bytes(DNS(id=1, rd=1, qd=DNSQR(qname="a.lab")))),
    "ptr": (53, SVC, bytes(DNS(id=2, qd=DNSQR(qname="10.0.0.10.in-addr.arpa", qtype="PTR")))),
    "tftp": (69, SVC, bytes(rrq("f", ("blksize", "1468"), ("tsize", "0"), ("windowsize", "4")))),
}


@st.composite
def mutants(draw: st.DrawFn) -> tuple[int, str, bytes]:
    """A valid request with a few random edits (none, sometimes: then it must be answered)."""
    dport, dst, seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 4))):
        how = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        at = draw(st.sampled_from(range(len(data)))) if data else 0
        if how == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 2, 3, 0x3F, 0x7F, 0xC0, 0xFF]))
        elif how == "cut":
            del data[at:]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    return dport, dst, bytes(data)


@FUZZ
@given(mutants(), st.floats(0, 10000))
def test_fuzz_mutated_service_packets(
    fuzz_host: ServiceHost, mutant: tuple[int, str, bytes], now: float
) -> None:
    dport, dst, payload = mutant
    out = fuzz_host.handle(_udp_to_us(fuzz_host, dport, payload, dst), now)
    for frame in out:  # whatever comes back is a well-formed frame from us
        p = Ether(frame)
        assert p.src == svc_mac(fuzz_host) and IP in p and checksums_valid(p)
    for frame in fuzz_host.tick(now + 100):
        assert Ether(frame)[IP].src == SVC
    assert fuzz_host.counters["internal_errors"] == 0


FUZZ_MACS = [A_MAC, P_MAC, Q_MAC, R_MAC, mac_n(1), mac_n(2)]
FUZZ_IPS = ["10.0.0.10", "10.0.0.11", "10.0.0.100", "10.0.0.101", "10.0.0.50", "172.16.0.1"]
STEP_KINDS = ["discover", "select", "init-reboot", "renew", "release", "decline", "other-server"]


@functools.cache
def dhcp_frame(mac: str, step: str, ip: str) -> bytes:
    sid = ("server_id", SVC)
    req = ("requested_addr", ip)
    if step == "discover":
        return bytes(dhcp(mac, "discover", req))
    if step == "select":
        return bytes(dhcp(mac, "request", sid, req))
    if step == "other-server":
        return bytes(dhcp(mac, "request", ("server_id", "10.0.0.254"), req))
    if step == "init-reboot":
        return bytes(dhcp(mac, "request", req))
    if step == "decline":
        return bytes(dhcp(mac, "decline", sid, req))
    kind = "request" if step == "renew" else "release"
    return bytes(dhcp(mac, kind, ciaddr=ip, src=ip, dst=SVC, eth_dst="52:55:0a:00:00:01"))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from((None, 1)),
    st.lists(
        st.tuples(
            st.sampled_from(FUZZ_MACS),
            st.sampled_from(STEP_KINDS),
            st.sampled_from(FUZZ_IPS),
            st.sampled_from([0.0, 1.0, 59.0, 61.0, 1800.0, 4000.0]),
        ),
        max_size=25,
    ),
)
def test_dhcp_never_leases_one_address_twice(
    tmp_path_factory: pytest.TempPathFactory,
    cap: int | None,
    steps: list[tuple[str, str, str, float]],
) -> None:
    """Also with room for one pool binding only (``cap``): bindings dropped for room never
    take an address from a client that holds it."""
    s = make(tmp_path_factory.getbasetemp())
    if cap is not None and s.dhcp is not None:
        s.dhcp.max_bindings = cap
    statics = {A_MAC: "10.0.0.10", B_MAC: "10.0.0.11"}
    held: dict[str, tuple[str, float]] = {}  # what each client was ACKed: address, until
    now = 0.0
    for mac, step, ip, dt in steps:
        now += dt
        if step in ("release", "decline") and held.get(mac, ("",))[0] == ip:
            del held[mac]  # given back: someone else may have it now
        for frame in s.handle(dhcp_frame(mac, step, ip), now):
            p = Ether(frame)
            if kind(p) != "ack":
                continue
            got = p[BOOTP].yiaddr
            assert got == statics.get(mac, got) and got in {*statics.values(), *map(str, POOL)}
            for other, (addr, until) in held.items():
                assert other == mac or addr != got or until <= now, f"{got} taken from {other}"
            held[mac] = (got, now + 3600)
        leases = s.leases(now)
        for m, (addr, until) in held.items():
            if until > now:
                assert str(leases[m].ip) == addr  # the server agrees
    assert s.counters["internal_errors"] == 0 and s.counters["malformed"] == 0


def test_ip_helpers_agree_with_scapy() -> None:
    d = _ip.Datagram(mac2str(A_MAC), IPv4Address("10.0.0.10").packed, 53, 4444, b"odd")
    p = Ether(_ip.udp_frame(mac2str(B_MAC), IPv4Address(SVC).packed, d, 99))
    assert p[IP].id == 99 and p[UDP].sport == 53 and bytes(p[UDP].payload)[:3] == b"odd"
    assert checksums_valid(p) and p[IP].flags == "DF" and p[IP].ttl == 64
    parsed = _ip.parse_udp(_ip.parse_ipv4(bytes(p)))
    assert parsed == _ip.Udp(53, 4444, b"odd")  # Ethernet padding trimmed away
    assert checksum(bytes(p[IP])[:20]) == 0


# -- on a real switch, in trio ---------------------------------------------------------------


async def test_services_on_a_switch_in_trio(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    root = tmp_path / "tftp"
    root.mkdir()
    (root / "boot.scr").write_bytes(b"B" * 600)
    config = ServicesConfig(NET, dhcp=DhcpConfig(static=STATIC), dns=DnsConfig(), tftp_root=root)
    svc = ServiceHost(config, clock=trio.current_time)
    got: list[Ether] = []
    offloads: list[Offload | None] = []

    def deliver(frame: bytes, off: Offload | None) -> None:
        offloads.append(off)
        got.append(Ether(frame))

    async with trio.open_nursery() as nursery:
        lan = await nursery.start(Switch("lan", capture=tmp_path / "lan.pcapng").run)
        svc_port = svc.attach(lan)
        with pytest.raises(RuntimeError, match="already on lan"):
            svc.attach(lan)
        await nursery.start(svc.run)
        me = lan.attach("a.eth0", deliver)
        me.send(bytes(dhcp(A_MAC, "discover")))
        [offer] = got
        assert offer[BOOTP].yiaddr == "10.0.0.10" and offer.dst == A_MAC
        # An offloaded frame (checksum left partial, as a guest NIC sends it) is resolved.
        query = UDP(sport=5000, dport=53) / DNS(id=5, qd=DNSQR(qname="b.lab"))
        frame = bytearray(bytes(to_svc(svc, query)))
        udp_len = len(frame) - 34
        pseudo = IPv4Address("10.0.0.10").packed + IPv4Address(SVC).packed
        pseudo += bytes((0, 17)) + udp_len.to_bytes(2, "big")
        struct.pack_into("!H", frame, 40, (~checksum(pseudo)) & 0xFFFF)  # the pseudo sum only
        me.send(bytes(frame), Offload(needs_csum=True, csum_start=34, csum_offset=6))
        assert got[-1][DNS].an[0].rdata == "10.0.0.11" and checksums_valid(got[-1])
        # A TFTP transfer whose first DATA is "lost": the services' task retransmits it.
        me.send(bytes(to_svc(svc, UDP(sport=CPORT, dport=69) / rrq("boot.scr"))))
        n = len(got)
        assert data_of(got[-1])[0] == 1
        await trio.sleep(0.9)
        assert len(got) == n
        await trio.sleep(0.2)
        assert len(got) == n + 1 and data_of(got[-1]) == (1, b"B" * 512)
        tid = got[-1][UDP].sport
        for block in (1, 2):
            me.send(bytes(to_svc(svc, UDP(sport=CPORT, dport=tid) / ack(block))))
        assert data_of(got[-1]) == (2, b"B" * 88)
        assert svc.tftp is not None and not svc.tftp.transfers
        await trio.sleep(10)
        assert len(got) == n + 2  # nothing more once the transfer is done
        nursery.cancel_scope.cancel()
    assert offloads == [None] * len(got)
    assert svc_port.counters.tx_frames == 5 and svc_port.counters.rx_frames == len(got) == 5
    assert svc.counters["internal_errors"] == 0 and svc.counters["malformed"] == 0


async def test_run_needs_a_switch() -> None:
    svc = ServiceHost(ServicesConfig(NET))
    with pytest.raises(RuntimeError, match="attach"):
        await svc.run()


# -- bounds against a hostile client (after the sections above) ------------------------------


def discover_frames(n: int, first: int = 0) -> list[bytes]:
    """DISCOVERs from ``n`` distinct MACs (one frame built by scapy, the MAC patched in)."""
    pkt = dhcp(mac_n(0), "discover")
    pkt[UDP].chksum = 0  # none (IPv4 allows it): the MAC is patched into the payload
    template = bytes(pkt)
    mac0 = mac2str(mac_n(0))
    return [template.replace(mac0, mac2str(mac_n(first + i))) for i in range(n)]


def dora_via(s: ServiceHost, server: str, mac: str, now: float) -> tuple[Ether, Ether]:
    [offer] = ask(s, dhcp(mac, "discover"), now)
    want = offer[BOOTP].yiaddr
    [ack] = ask(s, dhcp(mac, "request", ("server_id", server), ("requested_addr", want)), now)
    return offer, ack


def test_a_discover_flood_on_a_big_subnet_is_bounded_and_constant_time() -> None:
    """10k MACs DISCOVER at a /10 (a pool of 2M addresses): the bindings stop at the cap
    (plus the static leases), the refusals are counted, a refused DISCOVER costs no scan of
    the bindings, and once the flood's offers expire a real client gets its lease."""
    from netfabric.services import dhcp as dhcp_module

    cap = dhcp_module.MAX_BINDINGS
    net = IPv4Network("10.64.0.0/10")
    s = ServiceHost(
        ServicesConfig(
            net, dhcp=DhcpConfig(static={mac2str(A_MAC): (IPv4Address("10.64.0.10"), "a")})
        )
    )
    server = s.dhcp
    assert server is not None
    frames = discover_frames(10_000)
    t = time.perf_counter()
    offered = sum(len(s.handle(f, 0.0)) for f in frames[:1000])
    first_batch = time.perf_counter() - t
    offered += sum(len(s.handle(f, 0.0)) for f in frames[1000:9000])
    assert offered == cap
    assert s.counters["dhcp_binding_limit"] == 9000 - cap
    t = time.perf_counter()
    assert all(s.handle(f, 1.0) == [] for f in frames[9000:])  # 1000 refused
    refused_batch = time.perf_counter() - t
    assert s.counters["dhcp_binding_limit"] == 10_000 - cap
    assert len(server._bindings) <= cap and len(server._owner) <= cap
    # A scan of the 4096 bindings per DISCOVER would cost several times an offer's work.
    assert refused_batch < 2 * first_batch + 0.05, (refused_batch, first_batch)
    # The static client is not held back by the cap.
    offer, ack = dora_via(s, "10.64.0.1", A_MAC, now=2.0)
    assert kind(ack) == "ack" and ack[BOOTP].yiaddr == "10.64.0.10"
    # The offers expire after OFFER_HOLD: a real client gets an address, and a lease.
    later = dhcp_module.OFFER_HOLD + 1.0
    offer, ack = dora_via(s, "10.64.0.1", P_MAC, now=later)
    assert kind(offer) == "offer" and kind(ack) == "ack"
    assert IPv4Address(ack[BOOTP].yiaddr) in net
    assert s.leases(now=later)[P_MAC].ip == IPv4Address(ack[BOOTP].yiaddr)
    # A new flood after that: still bounded, the real lease untouched.
    for f in discover_frames(2 * cap, first=20_000):
        s.handle(f, later + 1.0)
    assert len(server._owner) <= cap and len(server._bindings) <= cap + 1
    assert s.leases(now=later + 1.0)[P_MAC].ip == IPv4Address(ack[BOOTP].yiaddr)
    # A REQUEST for a free address the server has no record of is refused at the cap too.
    [nak] = ask(s, dhcp(Q_MAC, "request", ("requested_addr", "10.100.0.1")), now=later + 1.0)
    assert kind(nak) == "nak" and s.counters["dhcp_binding_limit"] > 10_000 - cap


def test_tftp_transfers_per_client_address_are_limited(svc: ServiceHost, root: Path) -> None:
    """One client address holds at most MAX_PER_CLIENT transfers: the next RRQ gets an ERROR
    packet (counted); other clients are served, and an ended transfer frees its place."""
    from netfabric.services import tftp as tftp_module

    limit = tftp_module.MAX_PER_CLIENT
    (root / "f").write_bytes(b"f" * 2000)
    first = [tftp(svc, rrq("f"), sport=2000 + i) for i in range(limit)]
    assert all(tftp_of(p)[TFTP_DATA].block == 1 for [p] in first)
    for i in range(3):
        [err] = tftp(svc, rrq("f"), sport=3000 + i)
        assert err[UDP].dport == 3000 + i and error_of(err) == (0, b"too many transfers")
    assert svc.counters["tftp_client_limit"] == 3
    # Another address (B's static one) still gets its file.
    other = Ether(src=B_MAC, dst=svc_mac(svc)) / IP(src="10.0.0.11", dst=SVC)
    [p] = ask(svc, other / UDP(sport=CPORT, dport=69) / rrq("f"))
    assert data_of(p)[0] == 1
    # The first client ends one transfer with an ERROR: it may start another.
    [p0] = first[0]
    stop = TFTP(op=5) / TFTP_ERROR(errorcode=0, errormsg=b"stop")
    assert tftp(svc, stop, dport=p0[UDP].sport, sport=2000) == []
    [p] = tftp(svc, rrq("f"), sport=4000)
    assert tftp_of(p)[TFTP_DATA].block == 1 and svc.counters["tftp_client_limit"] == 3


async def test_tftp_a_client_that_never_acks_frees_its_slot_after_capped_timeouts(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A client asks for the longest timeout (255 s) and never ACKs: the option is refused
    (left out of the OACK, RFC 2349), so the server keeps its own timeout and the transfer is
    gone after the retries, not 25 minutes later. An acceptable timeout is still granted."""
    from netfabric.services import tftp as tftp_module

    root = tmp_path / "tftp"
    root.mkdir()
    (root / "f").write_bytes(b"f" * 2000)
    config = ServicesConfig(NET, dhcp=DhcpConfig(static=STATIC), tftp_root=root)
    svc = ServiceHost(config, clock=trio.current_time)
    got: list[Ether] = []
    async with trio.open_nursery() as nursery:
        lan = await nursery.start(Switch("lan").run)
        svc.attach(lan)
        await nursery.start(svc.run)
        me = lan.attach("a.eth0", lambda f, off: got.append(Ether(f)))
        start = trio.current_time()
        me.send(
            bytes(
                to_svc(
                    svc, UDP(sport=CPORT, dport=69) / rrq("f", ("timeout", "255"), ("tsize", "0"))
                )
            )
        )
        [oack] = got
        assert oack_options(oack) == {b"tsize": b"2000"}  # no timeout: refused
        assert svc.counters["tftp_timeout_refused"] == 1
        assert svc.tftp is not None and len(svc.tftp.transfers) == 1
        await wait_until(
            lambda: svc.tftp is not None and not svc.tftp.transfers,
            "the transfer to be given up",
            timeout=tftp_module.TIMEOUT_MAX * (config.tftp_retries + 2),
            every=0.5,
        )
        assert trio.current_time() - start <= config.tftp_timeout * (config.tftp_retries + 1) + 1
        assert svc.counters["tftp_timeouts"] == 1
        got.clear()
        ok = str(tftp_module.TIMEOUT_MAX)
        me.send(bytes(to_svc(svc, UDP(sport=CPORT + 1, dport=69) / rrq("f", ("timeout", ok)))))
        assert oack_options(got[0]) == {b"timeout": ok.encode()}
        nursery.cancel_scope.cancel()
