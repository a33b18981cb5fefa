"""The switch's DNS server: the lab's names, authoritatively, and nothing else.

Theory of operation. ``DnsServer.handle`` takes the payload of one UDP datagram to port 53
and returns the response to send back, or None to drop it (counted). Messages are parsed and
built with ``dnslib`` (a DNS message is the kind of format a library should own: name
compression, label escapes, every record type's layout); the server only decides the answer:

- ``NAME.DOMAIN`` (``a.lab``) and the bare ``NAME`` (``a``, for resolvers without a search
  list): the name's addresses for A (and ANY) queries; no records but NOERROR (NODATA) for
  other types (AAAA first, as every resolver asks), so clients do not conclude the name is
  missing; NXDOMAIN for names in the domain nobody has. Both carry the zone's SOA in the
  authority section for negative caching (RFC 2308). The zone apex answers SOA.
- ``D.C.B.A.in-addr.arpa`` for an address of the subnet: the PTR to its name, or NXDOMAIN.
- Anything else: REFUSED. The lab has no uplink to recurse to (RA is never set); REFUSED,
  unlike NXDOMAIN, tells a client "not here" rather than "does not exist".

The names come from two callables the services host supplies (the configured names and
static leases, then the DHCP server's leased host names), so a VM that got its address from
the pool is found under its name as soon as it has it. Queries that are responses, or have
other than one question, or an opcode other than QUERY get no answer, FORMERR or NOTIMP.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from dnslib import OPCODE, PTR, QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSRecord

from netfabric.services.config import ServicesConfig

PORT = 53
CLASS_IN, CLASS_ANY = 1, 255

Lookup = Callable[[str], list[IPv4Address]]
Reverse = Callable[[IPv4Address], "str | None"]


class DnsServer:
    def __init__(
        self,
        config: ServicesConfig,
        lookup: Lookup,
        reverse: Reverse,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        if config.dns is None:
            raise ValueError("the services' configuration has no DNS server")
        self.counters: collections.Counter[str] = (
            counters if counters is not None else collections.Counter()
        )
        self.domain = config.domain.lower()
        self.subnet: IPv4Network = config.subnet
        self.ttl = config.dns.ttl
        self._lookup = lookup
        self._reverse = reverse
        zone = self.domain + "."
        self._soa = RR(
            zone,
            QTYPE.SOA,
            ttl=self.ttl,
            rdata=SOA(f"ns.{zone}", f"hostmaster.{zone}", (1, 3600, 600, 86400, self.ttl)),
        )

    def handle(self, payload: bytes) -> bytes | None:
        try:
            query = DNSRecord.parse(payload)
        except Exception:  # dnslib raises several kinds on hostile bytes
            self.counters["dns_malformed"] += 1
            return None
        try:
            reply = self._answer(query)
            return None if reply is None else bytes(reply.pack())
        except Exception:  # a name dnslib parsed but cannot write back (e.g. a huge label)
            self.counters["dns_malformed"] += 1
            return None

    def _answer(self, query: DNSRecord) -> DNSRecord | None:
        h = query.header
        if h.qr:
            self.counters["dns_not_query"] += 1
            return None
        if h.opcode != OPCODE.QUERY:
            self.counters["dns_notimp"] += 1
            return DNSRecord(DNSHeader(id=h.id, qr=1, opcode=h.opcode, rcode=RCODE.NOTIMP))
        if len(query.questions) != 1:
            self.counters["dns_formerr"] += 1
            return DNSRecord(DNSHeader(id=h.id, qr=1, rcode=RCODE.FORMERR))
        q = query.questions[0]
        reply = DNSRecord(DNSHeader(id=h.id, qr=1, aa=1, ra=0, rd=h.rd), q=q)
        name = str(q.qname).lower().rstrip(".")
        if q.qclass not in (CLASS_IN, CLASS_ANY):
            return self._refuse(reply)
        suffix = "." + self.domain
        if name == self.domain:
            if q.qtype in (QTYPE.SOA, QTYPE.ANY):
                reply.add_answer(self._soa)
            else:
                reply.add_auth(self._soa)
            self.counters["dns_answered"] += 1
            return reply
        if name.endswith(suffix) or (name and "." not in name):
            host = name.removesuffix(suffix)
            addrs = self._lookup(host) if "." not in host else []
            if not addrs:
                return self._nxdomain(reply)
            if q.qtype in (QTYPE.A, QTYPE.ANY):
                for a in addrs:
                    reply.add_answer(RR(q.qname, QTYPE.A, ttl=self.ttl, rdata=A(str(a))))
            else:
                reply.add_auth(self._soa)  # NODATA: the name exists, with no such records
            self.counters["dns_answered"] += 1
            return reply
        if name.endswith(".in-addr.arpa"):
            ip = _reverse_name(name)
            if ip is not None and ip in self.subnet:
                owner = self._reverse(ip)
                if owner is None:
                    return self._nxdomain(reply)
                if q.qtype in (QTYPE.PTR, QTYPE.ANY):
                    target = f"{owner}.{self.domain}."
                    reply.add_answer(RR(q.qname, QTYPE.PTR, ttl=self.ttl, rdata=PTR(target)))
                self.counters["dns_answered"] += 1
                return reply
        return self._refuse(reply)

    def _nxdomain(self, reply: DNSRecord) -> DNSRecord:
        reply.header.rcode = RCODE.NXDOMAIN
        reply.add_auth(self._soa)
        self.counters["dns_nxdomain"] += 1
        return reply

    def _refuse(self, reply: DNSRecord) -> DNSRecord:
        reply.header.rcode = RCODE.REFUSED
        reply.header.aa = 0
        self.counters["dns_refused"] += 1
        return reply


def _reverse_name(name: str) -> IPv4Address | None:
    """4.3.2.1.in-addr.arpa -> 1.2.3.4 (None if it is not a whole address)."""
    parts = name.removesuffix(".in-addr.arpa").split(".")
    if len(parts) != 4 or not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
        return None
    octets = [int(p) for p in reversed(parts)]
    if any(o > 255 for o in octets):
        return None
    return IPv4Address(bytes(octets))
