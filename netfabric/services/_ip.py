"""The few bytes of Ethernet, ARP, IPv4, ICMP and UDP the built-in services speak.

Theory of operation. Parsers take a whole Ethernet frame (already resolved: checksums filled
in) and either return a small tuple of the fields the services need or raise ``Malformed``,
which the caller counts and drops; nothing else escapes them for any input. Builders return
complete wire frames with every checksum filled in, padded to the 60-byte Ethernet minimum.

Hand-written rather than scapy: these run once per frame on the switch's hot path (a TFTP
transfer is one ACK in and one DATA out per block) and scapy's dissectors cost tens of
microseconds a layer; and the services need a tiny subset (no IP options out, no fragments,
no IPv6), which a few struct calls on byte slices cover exactly. The tests check them
against scapy both ways.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from netfabric.offload import checksum

ETH_HLEN = 14
ETH_MIN = 60  # the shortest frame on the wire, without the FCS
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6
BROADCAST_IP = b"\xff" * 4
ZERO_IP = b"\0" * 4
PROTO_ICMP = 1
PROTO_UDP = 17

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


class Malformed(ValueError):
    """A frame the services drop (and count): the reason is the message."""


class Arp(NamedTuple):
    op: int
    sha: bytes  # sender hardware (MAC) address
    spa: bytes  # sender protocol (IPv4) address
    tha: bytes
    tpa: bytes


class Ipv4(NamedTuple):
    src: bytes
    dst: bytes
    proto: int
    header: bytes  # with options, as received (ICMP errors quote it)
    payload: bytes  # trimmed to the IP total length (Ethernet padding gone)


class Udp(NamedTuple):
    sport: int
    dport: int
    payload: bytes


class Datagram(NamedTuple):
    """A UDP datagram a service wants sent from the services' address."""

    dst_mac: bytes
    dst_ip: bytes
    sport: int
    dport: int
    payload: bytes


def pad(frame: bytes) -> bytes:
    return frame if len(frame) >= ETH_MIN else frame + bytes(ETH_MIN - len(frame))


def eth_header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return _ETH.pack(dst, src, ethertype)


def ethertype(frame: bytes) -> int:
    if len(frame) < ETH_HLEN:
        raise Malformed("runt")
    return int.from_bytes(frame[12:14], "big")


# -- ARP -----------------------------------------------------------------------------------


def parse_arp(frame: bytes) -> Arp:
    if len(frame) < ETH_HLEN + _ARP.size:
        raise Malformed("arp_short")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, ETH_HLEN)
    if htype != 1 or ptype != ETHERTYPE_IPV4 or hlen != 6 or plen != 4:
        raise Malformed("arp_not_ethernet_ipv4")
    return Arp(op, sha, spa, tha, tpa)


def arp_reply(mac: bytes, ip: bytes, req: Arp, dst_mac: bytes) -> bytes:
    """Our answer to ``req`` (a request for ``ip``), sent to ``dst_mac``."""
    body = _ARP.pack(1, ETHERTYPE_IPV4, 6, 4, 2, mac, ip, req.sha, req.spa)
    return pad(eth_header(dst_mac, mac, ETHERTYPE_ARP) + body)


# -- IPv4 ----------------------------------------------------------------------------------


def parse_ipv4(frame: bytes) -> Ipv4:
    """The IPv4 packet in ``frame``; fragments, bad checksums and bad lengths are Malformed."""
    if len(frame) < ETH_HLEN + 20:
        raise Malformed("ip_short")
    vihl, _tos, total, _ident, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(
        frame, ETH_HLEN
    )
    ihl = (vihl & 0xF) * 4
    if vihl >> 4 != 4 or ihl < 20:
        raise Malformed("ip_version")
    if total < ihl or ETH_HLEN + total > len(frame):
        raise Malformed("ip_length")
    if frag & 0x3FFF:  # MF set or a non-zero offset: the services never need fragments
        raise Malformed("ip_fragment")
    header = frame[ETH_HLEN : ETH_HLEN + ihl]
    if checksum(header):
        raise Malformed("ip_checksum")
    return Ipv4(src, dst, proto, header, frame[ETH_HLEN + ihl : ETH_HLEN + total])


def ipv4_frame(
    dst_mac: bytes,
    src_mac: bytes,
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    ident: int,
    ttl: int = 64,
) -> bytes:
    """An Ethernet frame carrying ``payload`` in an IPv4 header with no options (DF set)."""
    total = 20 + len(payload)
    hdr = bytearray(_IPV4.pack(0x45, 0, total, ident & 0xFFFF, 0x4000, ttl, proto, 0, src, dst))
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return pad(eth_header(dst_mac, src_mac, ETHERTYPE_IPV4) + bytes(hdr) + payload)


# -- ICMP ----------------------------------------------------------------------------------


def icmp_message(icmp_type: int, code: int, rest: bytes) -> bytes:
    """An ICMP message: type, code, checksum and ``rest`` (id/seq or unused, then data)."""
    msg = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest)
    struct.pack_into("!H", msg, 2, checksum(msg))
    return bytes(msg)


# -- UDP -----------------------------------------------------------------------------------


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, PROTO_UDP, length)


def parse_udp(ip: Ipv4) -> Udp:
    data = ip.payload
    if len(data) < 8:
        raise Malformed("udp_short")
    sport, dport, length, csum = _UDP.unpack_from(data)
    if length < 8 or length > len(data):
        raise Malformed("udp_length")
    data = data[:length]
    if csum and checksum(_pseudo(ip.src, ip.dst, length) + data):
        raise Malformed("udp_checksum")
    return Udp(sport, dport, data[8:])


def udp_segment(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header and ``payload``, with the checksum over the IPv4 pseudo-header."""
    length = 8 + len(payload)
    seg = bytearray(_UDP.pack(sport, dport, length, 0) + payload)
    c = checksum(_pseudo(src, dst, length) + seg) or 0xFFFF  # 0 means "no checksum" in UDP
    struct.pack_into("!H", seg, 6, c)
    return bytes(seg)


def udp_frame(src_mac: bytes, src_ip: bytes, d: Datagram, ident: int) -> bytes:
    seg = udp_segment(src_ip, d.dst_ip, d.sport, d.dport, d.payload)
    return ipv4_frame(d.dst_mac, src_mac, src_ip, d.dst_ip, PROTO_UDP, seg, ident)
