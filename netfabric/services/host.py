"""The services host: a host on a switch that is no VM, running the built-in services.

Theory of operation. A ``ServiceHost`` has an address on the switch's subnet (its first
host by default, as QEMU's user network has 10.0.2.2) and a MAC, and behaves as a host
there: it answers ARP requests for its address and ICMP echo requests to it, and hands UDP to
its servers: port 67 (DHCP, also broadcast), 53 (DNS), 69 and the ports of running transfers
(TFTP). A datagram to any other port of its address gets an ICMP port unreachable, so a
client finds out at once that a service is off instead of waiting for a timeout.

``handle(frame)`` is the whole host, sans-IO: one wire frame in, the frames to send back
out, synchronously and without raising: a frame that is not for us is ignored, a malformed
one is dropped and counted in ``counters`` (``malformed`` and the reason), and even a bug
in a server is counted (``internal_errors``) and logged rather than allowed to stop the
fabric. Replies go to the Ethernet source of the frame they answer (one L2 segment: no
neighbour table to keep or poison), except where DHCP says otherwise (broadcast, or the
client's hardware address). ``tick(now)`` gives the frames due at ``now`` (TFTP
retransmissions) and ``next_deadline()`` when to call it next.

``attach(switch)`` plugs the host into a ``netfabric.switch.Switch`` through its port,
``netfabric.ports.services.ServicesPort`` (frames arriving with an ``Offload`` are taken as
wire frames, and replies are sent from inside the delivery, like any port that answers at
once), and ``run()`` is the
trio task for its timers: it sleeps until the next deadline, or until a new transfer needs
an earlier one. Time comes from ``clock`` (``time.monotonic``; pass ``trio.current_time``
under a trio test clock), or from ``now`` in tests.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import trio

from netfabric._state import StateReader
from netfabric.frame import Frame
from netfabric.offload import checksum
from netfabric.ports.services import ServicesPort
from netfabric.services import _ip
from netfabric.services._ip import BROADCAST_IP, BROADCAST_MAC, Datagram, Malformed
from netfabric.services.config import ServicesConfig
from netfabric.services.dhcp import SERVER_PORT as DHCP_PORT
from netfabric.services.dhcp import DhcpServer, Lease
from netfabric.services.dns import PORT as DNS_PORT
from netfabric.services.dns import DnsServer
from netfabric.services.tftp import TftpServer
from netfabric.switch import Switch

log = logging.getLogger(__name__)

ICMP_ECHO_REPLY, ICMP_UNREACHABLE, ICMP_ECHO_REQUEST = 0, 3, 8
ICMP_PORT_UNREACHABLE = 3
MAX_NAMES = 1 << 16  # names (and addresses of a name) a saved state may give the DNS server
MAX_COUNTERS = 1024  # counters a saved state may hold


class ServiceHost:
    """The built-in services of one switch (see the module's docstring). ``counters``: what
    it answered and what it dropped; ``leases()``: the DHCP leases in force."""

    def __init__(
        self, config: ServicesConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.ip = config.service_ip.packed
        self.mac = config.service_mac
        self.clock = clock
        self.counters: collections.Counter[str] = collections.Counter()
        self._subnet_broadcast = config.subnet.broadcast_address.packed
        self.dhcp = DhcpServer(config, self.counters) if config.dhcp is not None else None
        self.tftp = TftpServer(config, self.counters) if config.tftp_root is not None else None
        self.dns: DnsServer | None = None
        # The names the DNS server answers without asking DHCP: configured, static leases.
        self._names: dict[str, list[IPv4Address]] = {}
        self._rnames: dict[IPv4Address, str] = {}
        if config.dns is not None:
            for name, addrs in config.dns.names.items():
                for a in [addrs] if isinstance(addrs, IPv4Address) else addrs:
                    self.add_name(name, a)
            if config.dhcp is not None:
                for ip, n in config.dhcp.static.values():
                    if n:
                        self.add_name(n, ip)
            self.dns = DnsServer(config, self._lookup, self._reverse, self.counters)
        self._now = 0.0
        self._ident = 0
        self.port: ServicesPort | None = None
        self._wake: trio.Event | None = None
        # Told when a timer may be due sooner (a virtual-time lab's timeline: it may be idle)
        self.on_pending: Callable[[], None] | None = None
        self._sleeping_until = math.inf

    def add_name(self, name: str, address: IPv4Address) -> None:
        """Have the DNS server answer ``name`` (bare, or in the services' domain) with
        ``address`` too (and ``address``'s PTR with ``name`` if it has none yet)."""
        bare = name.lower().rstrip(".").removesuffix("." + self.config.domain.lower())
        got = self._names.setdefault(bare, [])
        if address not in got:
            got.append(address)
        self._rnames.setdefault(address, bare)

    # -- views -----------------------------------------------------------------------------

    def leases(self, now: float | None = None) -> dict[str, Lease]:
        """The DHCP leases in force, by MAC ("52:54:00:..")."""
        if self.dhcp is None:
            return {}
        return self.dhcp.leases(self.clock() if now is None else now)

    def _lookup(self, name: str) -> list[IPv4Address]:
        got = self._names.get(name)
        if got:
            return got
        if self.dhcp is not None:
            ip = self.dhcp.lookup(name, self._now)
            if ip is not None:
                return [ip]
        return []

    def _reverse(self, ip: IPv4Address) -> str | None:
        name = self._rnames.get(ip)
        if name is None and self.dhcp is not None:
            name = self.dhcp.reverse(int(ip), self._now)
        return name

    # -- saved state (a lab's snapshot) -------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """The host's own state: the IPv4 identification of the next frame it sends, the
        names its DNS server answers (configured and added), its counters, and its servers'
        (``DhcpServer.save_state``, ``TftpServer.save_state``; DNS keeps nothing of its
        own). The configuration is the restored host's."""
        out: dict[str, Any] = {
            "ident": self._ident,
            "names": [{"name": n, "ips": [int(a) for a in ips]} for n, ips in self._names.items()],
            "rnames": [{"ip": int(a), "name": n} for a, n in self._rnames.items()],
            "counters": dict(self.counters),
        }
        if self.dhcp is not None:
            out["dhcp"] = self.dhcp.save_state()
        if self.tftp is not None:
            out["tftp"] = self.tftp.save_state()
        return out

    def load_state(self, st: StateReader) -> None:
        """Take back ``save_state``'s on a host of the same configuration (every value is
        checked, ``st.fail`` naming a bad one)."""
        ident = st.int("ident", 0, 0xFFFF)
        names: dict[str, list[IPv4Address]] = {}
        for r in st.subs("names", MAX_NAMES):
            name = r.str("name", 253)
            r.check(name not in names, "name", f"{name!r} twice")
            names[name] = [IPv4Address(a) for a in r.ints("ips", MAX_NAMES, 0, 0xFFFF_FFFF)]
        rnames: dict[IPv4Address, str] = {}
        for r in st.subs("rnames", MAX_NAMES):
            ip = IPv4Address(r.int("ip", 0, 0xFFFF_FFFF))
            r.check(ip not in rnames, "ip", f"{ip} twice")
            rnames[ip] = r.str("name", 253)
        c = st.sub("counters")
        counters: dict[str, int] = {}
        for key in c.keys():  # noqa: SIM118 (a reader, not a dict)
            c.check(len(counters) < MAX_COUNTERS, key, f"more than {MAX_COUNTERS} counters")
            c.check(0 < len(key) <= 64, key, "not a counter's name")
            counters[key] = c.int(key)
        for what, server in (("dhcp", self.dhcp), ("tftp", self.tftp)):
            st.check(
                st.has(what) == (server is not None), what,
                "the snapshot's services and these differ in whether they run it",
            )  # fmt: skip
        if self.dhcp is not None:
            self.dhcp.load_state(st.sub("dhcp"))
        if self.tftp is not None:
            self.tftp.load_state(st.sub("tftp"))
        self._ident, self._names, self._rnames = ident, names, rnames
        self.counters.clear()
        self.counters.update(counters)  # in place: the servers count into it too

    # -- frames ----------------------------------------------------------------------------

    def handle(self, frame: bytes, now: float | None = None) -> list[bytes]:
        """The frames answering ``frame`` (a wire frame: checksums filled in); never raises."""
        self._now = self.clock() if now is None else now
        try:
            return self._handle(bytes(frame))
        except Malformed as e:
            self.counters["malformed"] += 1
            self.counters[str(e)] += 1
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("services %s: a frame raised", self.config.service_ip)
        return []

    def tick(self, now: float | None = None) -> list[bytes]:
        """Frames due by ``now`` (TFTP retransmissions)."""
        self._now = self.clock() if now is None else now
        if self.tftp is None:
            return []
        try:
            return [self._udp(d) for d in self.tftp.tick(self._now)]
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("services %s: a timer raised", self.config.service_ip)
            return []

    def next_deadline(self) -> float | None:
        return None if self.tftp is None else self.tftp.next_deadline()

    def close(self) -> None:
        """End the TFTP transfers (closing their files)."""
        if self.tftp is not None:
            self.tftp.close()

    def _udp(self, d: Datagram) -> bytes:
        self._ident = (self._ident + 1) & 0xFFFF
        return _ip.udp_frame(self.mac, self.ip, d, self._ident)

    def _handle(self, frame: bytes) -> list[bytes]:
        if len(frame) < _ip.ETH_HLEN:
            raise Malformed("runt")
        dst, src = frame[0:6], frame[6:12]
        if src[0] & 1:
            raise Malformed("multicast_source")
        if dst != self.mac and dst != BROADCAST_MAC:
            return []
        et = _ip.ethertype(frame)
        if et == _ip.ETHERTYPE_ARP:
            arp = _ip.parse_arp(frame)
            if arp.op == 1 and arp.tpa == self.ip and arp.spa != self.ip:
                self.counters["arp_replies"] += 1
                return [_ip.arp_reply(self.mac, self.ip, arp, src)]
            return []
        if et != _ip.ETHERTYPE_IPV4:
            return []
        ip = _ip.parse_ipv4(frame)
        if ip.src == self.ip or src == self.mac:
            raise Malformed("spoofed_source")
        to_us = ip.dst == self.ip
        if ip.proto == _ip.PROTO_ICMP:
            return self._icmp(src, ip) if to_us else []
        if ip.proto != _ip.PROTO_UDP:
            return []
        udp = _ip.parse_udp(ip)
        if udp.sport == 0:
            raise Malformed("udp_source_port_0")  # nowhere to answer
        if udp.dport == DHCP_PORT and self.dhcp is not None:
            if to_us or ip.dst in (BROADCAST_IP, self._subnet_broadcast):
                return [self._udp(d) for d in self.dhcp.handle(udp.payload, src, self._now)]
            return []
        if not to_us:
            return []
        if udp.dport == DNS_PORT and self.dns is not None:
            answer = self.dns.handle(udp.payload)
            if answer is None:
                return []
            return [self._udp(Datagram(src, ip.src, DNS_PORT, udp.sport, answer))]
        if self.tftp is not None and self.tftp.serves(udp.dport):
            out = self.tftp.handle(src, ip.src, udp.sport, udp.dport, udp.payload, self._now)
            self._maybe_wake()
            return [self._udp(d) for d in out]
        if ip.src in (_ip.ZERO_IP, BROADCAST_IP):
            return []
        # Nothing listens there: say so (RFC 1122 3.2.2.1), quoting the header and 8 bytes.
        self.counters["udp_port_unreachable"] += 1
        quote = ip.header + ip.payload[:8]
        msg = _ip.icmp_message(ICMP_UNREACHABLE, ICMP_PORT_UNREACHABLE, bytes(4) + quote)
        return [self._icmp_frame(src, ip.src, msg)]

    def _icmp(self, src_mac: bytes, ip: _ip.Ipv4) -> list[bytes]:
        data = ip.payload
        if len(data) < 8 or checksum(data):
            raise Malformed("icmp_checksum")
        if data[0] != ICMP_ECHO_REQUEST or data[1] != 0:
            return []
        self.counters["echo_replies"] += 1
        msg = _ip.icmp_message(ICMP_ECHO_REPLY, 0, data[4:])
        return [self._icmp_frame(src_mac, ip.src, msg)]

    def _icmp_frame(self, dst_mac: bytes, dst_ip: bytes, msg: bytes) -> bytes:
        self._ident = (self._ident + 1) & 0xFFFF
        return _ip.ipv4_frame(dst_mac, self.mac, self.ip, dst_ip, _ip.PROTO_ICMP, msg, self._ident)

    # -- on a switch ---------------------------------------------------------------------

    def attach(
        self, switch: Switch, name: str | None = None, capture: Path | None = None
    ) -> ServicesPort:
        """Plug into ``switch`` as port ``name`` (default ``svc:SWITCH``): a
        ``netfabric.ports.services.ServicesPort`` handing frames to ``handle``."""
        if self.port is not None:
            raise RuntimeError(f"these services are already on {self.port.switch.name}")
        self.port = ServicesPort(switch, name or f"svc:{switch.name}", self.handle, capture)
        return self.port

    async def run(
        self, *, task_status: trio.TaskStatus[ServiceHost] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The timers' task (after ``attach``): retransmissions on time; closes the open
        transfers when cancelled."""
        port = self.port
        if port is None:
            raise RuntimeError("attach the services to a switch before running them")
        task_status.started(self)
        try:
            while True:
                self._wake = trio.Event()
                deadline = self.next_deadline()
                self._sleeping_until = math.inf if deadline is None else deadline
                with trio.move_on_after(max(0.0, self._sleeping_until - self.clock())):
                    await self._wake.wait()
                for frame in self.tick():
                    port.send(Frame(frame))
        finally:
            self._wake = None
            self.close()

    def fire(self, now: float) -> None:
        """The timers' work at ``now`` (retransmissions), without ``run``: what a
        virtual-time lab's timeline calls when ``next_deadline`` comes."""
        port = self.port
        for frame in self.tick(now):
            if port is not None:
                port.send(Frame(frame))

    def _maybe_wake(self) -> None:
        """A new transfer may need the timer task sooner than it planned to wake."""
        if self.on_pending is not None:
            self.on_pending()
        if self._wake is not None:
            deadline = self.next_deadline()
            if deadline is not None and deadline < self._sleeping_until:
                self._wake.set()
