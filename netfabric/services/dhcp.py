"""The switch's DHCP server (RFC 2131, options RFC 2132), sans-IO.

Theory of operation. ``DhcpServer.handle`` takes one BOOTP message (the payload of a UDP
datagram to port 67), the MAC it came from and the time, and returns the datagrams to send
back, each with its Ethernet and IP destination chosen as RFC 2131 4.1 says: to a relay
(``giaddr``) if there is one; a DHCPNAK broadcast; to ``ciaddr`` when the client has an
address (renewing, rebinding, DHCPINFORM); broadcast when the client set the BROADCAST flag;
otherwise unicast to ``yiaddr`` at the client's hardware address.

Clients are known by their hardware address (``chaddr``), not by option 61: a VM whose
firmware and kernel send different client identifiers (U-Boot, then Linux) keeps one
address. Static leases (from the lab's NICs with a fixed ``ip``) always get their own
address; everyone else gets one from the pool, in this order: the address it already has (or
had: a released or expired lease stays with its client until someone else needs it), the
address it asks for (option 50) if that is free, an address never handed out, and last the
pool address whose lease ended longest ago. An offer holds its address for ``OFFER_HOLD``
seconds. With nothing left the DISCOVER goes unanswered (``dhcp_pool_exhausted``).

Bounds against a flood of DISCOVERs from random MACs: the pool addresses the server keeps a
binding for (offered, leased, declined, or ended but remembered) are at most
``MAX_BINDINGS`` per switch, plus the static leases, whatever the pool's size (a /10 would
otherwise hold 2M of them). At the cap, a newcomer takes over the binding whose lease ended
longest ago; with every binding in force it is refused (``dhcp_binding_limit``: no OFFER,
or a DHCPNAK to a REQUEST for an address the server has no record of). So a flood can hold
at most ``MAX_BINDINGS`` addresses for ``OFFER_HOLD`` seconds, and real clients get leases
again once its offers expire. Finding an address is O(1) amortised, never a scan of the
bindings: a cursor over the addresses never handed out, a (bounded) set of addresses handed
back, and a heap of the bindings by the time their lease ends (stale entries are skipped when
they surface, and the heap is rebuilt when they outnumber the live ones).

The server is authoritative for its subnet: a REQUEST for an address this client may not
have (someone else's, a static one, one outside the pool) gets a DHCPNAK, which sends the
client back to DISCOVER; a REQUEST for a free pool address is granted even without a record
of the client (a VM that kept its lease across a restart of the lab keeps its address).
REQUESTs naming another server (option 54) release our offer silently. DECLINE (the client
found the address in use) takes the address out of the pool for a lease time; RELEASE ends a
lease early; INFORM gets the options without an address.

Replies carry: subnet mask (1), router (3), broadcast address (28), DNS server (6, with the
DNS service on), domain name (15), host name (12, for clients the lab names), lease time
(51), renewal and rebinding times (58, 59: 1/2 and 7/8 of the lease), server identifier (54),
the client identifier echoed (61, RFC 6842), and with TFTP the next server (``siaddr``,
and option 66 for clients that read that instead) and the boot file (the ``file`` field and
option 67). Replies are padded to BOOTP's 300 bytes, which old clients insist on.

Time is the caller's (``now``, any monotonic clock in seconds): nothing here sleeps.
"""

from __future__ import annotations

import collections
import heapq
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, NamedTuple

from netfabric._saved import MAX_TIME, load_float, save_float
from netfabric._state import StateReader
from netfabric.services._ip import BROADCAST_IP, BROADCAST_MAC, ZERO_IP, Datagram, Malformed
from netfabric.services.config import ServicesConfig, is_label

SERVER_PORT = 67
CLIENT_PORT = 68
BOOTREQUEST, BOOTREPLY = 1, 2
MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
TYPE_NAMES = {
    DISCOVER: "discover",
    OFFER: "offer",
    REQUEST: "request",
    DECLINE: "decline",
    ACK: "ack",
    NAK: "nak",
    RELEASE: "release",
    INFORM: "inform",
}
FLAG_BROADCAST = 0x8000
OFFER_HOLD = 60.0  # seconds an offered address waits for the client's REQUEST
MAX_BINDINGS = 4096  # pool addresses a switch's server keeps bindings for (static ones apart)
BOOTP_MIN = 300  # the BOOTP message size old clients require
_STATES = ("offered", "bound", "released", "declined")  # a binding's

OPT_PAD, OPT_END = 0, 255
OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN, OPT_BROADCAST = 1, 3, 6, 12, 15, 28
OPT_REQUESTED, OPT_LEASE, OPT_OVERLOAD, OPT_TYPE, OPT_SERVER = 50, 51, 52, 53, 54
OPT_MESSAGE, OPT_T1, OPT_T2, OPT_CLIENT_ID, OPT_TFTP_SERVER, OPT_BOOTFILE = 56, 58, 59, 61, 66, 67

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file
_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes, then the magic cookie


class Message(NamedTuple):
    op: int
    htype: int
    hlen: int
    xid: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    chaddr: bytes  # 16 bytes as on the wire
    options: dict[int, bytes]


def _options(data: bytes, out: dict[int, bytes]) -> None:
    """Options from ``data`` into ``out``; a code that appears twice is concatenated
    (RFC 3396). Stops at END; a truncated option is Malformed."""
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == OPT_END:
            return
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= n or i + 2 + data[i + 1] > n:
            raise Malformed("dhcp_option_truncated")
        length = data[i + 1]
        out[code] = out.get(code, b"") + data[i + 2 : i + 2 + length]
        i += 2 + length


def parse(data: bytes) -> Message:
    """A BOOTP/DHCP message; anything that is not one is Malformed."""
    if len(data) < _FIXED.size + 4:
        raise Malformed("dhcp_short")
    op, htype, hlen, _hops, xid, _secs, flags, ci, yi, si, gi, ch, sname, file = _FIXED.unpack_from(
        data
    )
    if data[_FIXED.size : _FIXED.size + 4] != MAGIC:
        raise Malformed("dhcp_no_magic")  # plain BOOTP: not served
    options: dict[int, bytes] = {}
    _options(data[_FIXED.size + 4 :], options)
    overload = options.get(OPT_OVERLOAD, b"\0")[:1]
    if overload in (b"\x01", b"\x03"):
        _options(file, options)
    if overload in (b"\x02", b"\x03"):
        _options(sname, options)
    return Message(op, htype, hlen, xid, flags, ci, yi, si, gi, ch, options)


def _opt(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def _ip(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def client_hostname(raw: bytes | None) -> str | None:
    """A client's own host name (option 12) as we would answer it in DNS, or None: the first
    label, lower case, if it is a valid one."""
    if not raw:
        return None
    try:
        text = raw.rstrip(b"\0").decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    label = text.split(".", 1)[0]
    return label if is_label(label) and "_" not in label else None


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as the API shows it: ``expires`` is on the server's clock (seconds)."""

    mac: str
    ip: IPv4Address
    expires: float
    hostname: str | None
    static: bool


@dataclass(slots=True)
class _Binding:
    mac: bytes
    ip: int
    state: str  # "offered", "bound", "released" or "declined"
    expires: float
    hostname: str | None = None  # the client's own name (option 12), for pool clients

    def active(self, now: float) -> bool:
        return self.state != "released" and self.expires > now


class DhcpServer:
    def __init__(
        self, config: ServicesConfig, counters: collections.Counter[str] | None = None
    ) -> None:
        d = config.dhcp
        if d is None:
            raise ValueError("the services' configuration has no DHCP server")
        pool = config.pool
        assert pool is not None
        self.counters: collections.Counter[str] = (
            counters if counters is not None else collections.Counter()
        )
        self.server_ip = config.service_ip.packed
        self.lease_time = float(d.lease)
        self.first, self.last = int(pool[0]), int(pool[1])
        self._reserved = {int(a) for a in config.reserved()}
        self._static = {mac: (int(ip), name) for mac, (ip, name) in d.static.items()}
        self._named = dict(d.hostnames)  # pool clients the lab names: MAC -> name
        self._named_macs = {name.lower(): mac for mac, name in d.hostnames.items()}
        # Names clients may not claim for themselves (option 12): the configured ones.
        taken = {n.lower() for _, n in d.static.values() if n} | set(self._named_macs)
        if config.dns is not None:
            suffix = "." + config.domain.lower()
            taken |= {n.lower().rstrip(".").removesuffix(suffix) for n in config.dns.names}
        self._taken_names = taken
        self._bindings: dict[bytes, _Binding] = {}  # MAC -> its current binding
        self._owner: dict[int, _Binding] = {}  # pool address -> the binding that holds it
        self._names: dict[str, _Binding] = {}  # clients' own names -> their binding
        self._cursor = self.first  # the next pool address never handed out, or past the end
        self.max_bindings = MAX_BINDINGS
        # Pool addresses handed out once and free again (their binding was dropped for room);
        # a dict for its order (the newest goes first), which a saved state keeps.
        self._free: dict[int, None] = {}
        # (expires, n, ip, binding) for every binding in _owner; an entry whose binding no
        # longer holds ip or has another expiry is stale. The top is the longest-ended one.
        self._ends: list[tuple[float, int, int, _Binding]] = []
        self._seq = 0  # the next number of an entry of _ends
        self.siaddr = config.service_ip.packed if config.tftp_root is not None else ZERO_IP
        self.boot = d.boot.encode() if d.boot is not None else b""
        subnet = config.subnet
        common = _opt(OPT_MASK, subnet.netmask.packed)
        common += _opt(OPT_BROADCAST, subnet.broadcast_address.packed)
        common += _opt(OPT_ROUTER, config.gateway.packed)
        if config.dns is not None:
            common += _opt(OPT_DNS, self.server_ip)
        common += _opt(OPT_DOMAIN, config.domain.encode())
        if config.tftp_root is not None:
            common += _opt(OPT_TFTP_SERVER, str(config.service_ip).encode())
        if self.boot:
            common += _opt(OPT_BOOTFILE, self.boot)
        self._common = common

    # -- the API's view ------------------------------------------------------------------

    def leases(self, now: float) -> dict[str, Lease]:
        """The leases in force: MAC ("52:54:00:..") -> Lease."""
        out = {}
        for b in self._bindings.values():
            if b.state == "bound" and b.expires > now:
                static = b.mac in self._static
                out[_mac(b.mac)] = Lease(
                    _mac(b.mac), IPv4Address(b.ip), b.expires, self._hostname(b), static
                )
        return out

    def lookup(self, name: str, now: float) -> IPv4Address | None:
        """The leased address of a pool client named ``name`` (by the lab or by itself)."""
        mac = self._named_macs.get(name)
        b = self._bindings.get(mac) if mac is not None else self._names.get(name)
        if b is None or b.state != "bound" or b.expires <= now or self._owner.get(b.ip) is not b:
            return None
        return IPv4Address(b.ip)

    def reverse(self, ip: int, now: float) -> str | None:
        """The name of the pool client leasing ``ip``, if it has one."""
        b = self._owner.get(ip)
        if b is None or b.state != "bound" or b.expires <= now:
            return None
        if self._bindings.get(b.mac) is not b:
            return None
        return self._named.get(b.mac) or b.hostname

    def _hostname(self, b: _Binding) -> str | None:
        static = self._static.get(b.mac)
        if static is not None:
            return static[1]
        return self._named.get(b.mac) or b.hostname

    # -- saved state (a lab's snapshot) -------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """Every binding (offered, leased, released or declined, with when it ends and the
        client's own name) and the indexes over them, as they stand: the clients' (by MAC),
        the pool addresses' holders, the clients' names, the heap of ends (in its own order,
        with its sequence numbers: ties break the same way), the cursor over addresses never
        handed out and the free ones in their order. The configuration (pool, static leases,
        names the lab gives, lease time) is the restored server's own."""
        index: dict[int, int] = {}
        bindings: list[dict[str, Any]] = []

        def ref(b: _Binding) -> int:
            i = index.get(id(b))
            if i is None:
                i = index[id(b)] = len(bindings)
                d: dict[str, Any] = {
                    "mac": b.mac, "ip": b.ip, "state": b.state, "expires": save_float(b.expires)
                }  # fmt: skip
                if b.hostname is not None:
                    d["hostname"] = b.hostname
                bindings.append(d)
            return i

        clients = [ref(b) for b in self._bindings.values()]
        owner = [ref(b) for b in self._owner.values()]
        names = [{"name": n, "binding": ref(b)} for n, b in self._names.items()]
        ends = [
            {"expires": save_float(e), "n": n, "ip": ip, "binding": ref(b)}
            for e, n, ip, b in self._ends
        ]
        return {
            "bindings": bindings,
            "clients": clients,
            "owner_ips": list(self._owner),
            "owner": owner,
            "names": names,
            "ends": ends,
            "seq": self._seq,
            "cursor": self._cursor,
            "free": list(self._free),
        }

    def load_state(self, st: StateReader) -> None:
        """Take back ``save_state``'s on a server of the same configuration; every value is
        checked against it (``st.fail`` naming a bad one) before anything changes."""
        cap = self.max_bindings
        expires_max = MAX_TIME + self.lease_time + OFFER_HOLD
        bindings: list[_Binding] = []
        for r in st.subs("bindings", 3 * cap + len(self._static) + 64):
            mac = r.bytes("mac", 6, length=6)
            r.check(not mac[0] & 1 and mac != bytes(6), "mac", "not a client's MAC")
            ip = r.int("ip", 0, 0xFFFF_FFFF)
            static = self._static.get(mac)
            r.check(
                self._in_pool(ip) or (static is not None and static[0] == ip), "ip",
                f"{IPv4Address(ip)} is neither in the pool nor this client's static address",
            )  # fmt: skip
            state = r.str("state", 16)
            r.check(state in _STATES, "state", f"{state!r} is not one of {', '.join(_STATES)}")
            hostname = r.str("hostname", 63) if r.has("hostname") else None
            r.check(
                hostname is None or client_hostname(hostname.encode()) == hostname, "hostname",
                f"{hostname!r} is not a host name a client may have",
            )  # fmt: skip
            expires = load_float(r, "expires", 0.0, expires_max)
            bindings.append(_Binding(mac, ip, state, expires, hostname))

        def pick(r: StateReader, key: str) -> _Binding:
            i = r.int(key, 0, len(bindings) - 1) if bindings else r.int(key, 1, 0)
            return bindings[i]

        clients: dict[bytes, _Binding] = {}
        for i, n in enumerate(st.ints("clients", cap + len(self._static))):
            where = f"clients[{i}]"
            st.check(n < len(bindings), where, f"no binding {n}")
            b = bindings[n]
            st.check(b.mac not in clients, where, f"client {_mac(b.mac)} has two bindings")
            clients[b.mac] = b
        ips = st.ints("owner_ips", cap, 0, 0xFFFF_FFFF)
        held = st.ints("owner", cap, 0, max(len(bindings) - 1, 0), length=len(ips))
        owner: dict[int, _Binding] = {}
        for i, (ip, n) in enumerate(zip(ips, held, strict=True)):
            where = f"owner[{i}]"
            st.check(n < len(bindings) and bindings[n].ip == ip, where, "not that address's")
            st.check(self._in_pool(ip) and ip not in owner, where, f"{IPv4Address(ip)} again")
            owner[ip] = bindings[n]
        names: dict[str, _Binding] = {}
        for r in st.subs("names", cap):
            name = r.str("name", 63)
            b = pick(r, "binding")
            r.check(b.hostname == name and name not in names, "name", "not its binding's name")
            names[name] = b
        seq = st.int("seq")
        ends: list[tuple[float, int, int, _Binding]] = []
        numbers: set[int] = set()
        for i, r in enumerate(st.subs("ends", 2 * len(owner) + 65)):
            expires = load_float(r, "expires", 0.0, expires_max)
            n = r.int("n")
            r.check(n < seq and n not in numbers, "n", f"{n} is not a fresh number")
            numbers.add(n)
            ip = r.int("ip", 0, 0xFFFF_FFFF)
            b = pick(r, "binding")
            r.check(b.ip == ip, "ip", "not its binding's address")
            if i:  # a heap: no entry before its parent
                parent = ends[(i - 1) // 2]
                r.check((expires, n) > parent[:2], "expires", "the ends are not in heap order")
            ends.append((expires, n, ip, b))
        cursor = st.int("cursor", self.first, self.last + 1)
        free: dict[int, None] = {}
        for i, ip in enumerate(st.ints("free", cap, 0, 0xFFFF_FFFF)):
            st.check(self._in_pool(ip) and ip not in free, f"free[{i}]", "not a free pool address")
            free[ip] = None
        self._bindings, self._owner, self._names = clients, owner, names
        self._ends, self._seq = ends, seq
        self._cursor, self._free = cursor, free

    # -- messages --------------------------------------------------------------------------

    def handle(self, payload: bytes, src_mac: bytes, now: float) -> list[Datagram]:
        """Answer one message to port 67 (Malformed for anything that is not a sane one)."""
        msg = parse(payload)
        if msg.op != BOOTREQUEST:
            self.counters["dhcp_not_request"] += 1
            return []
        if msg.htype != 1 or msg.hlen != 6:
            raise Malformed("dhcp_not_ethernet")
        mac = msg.chaddr[:6]
        if mac[0] & 1 or mac == b"\0" * 6:
            raise Malformed("dhcp_bad_chaddr")
        mtype = msg.options.get(OPT_TYPE, b"")
        if len(mtype) != 1 or mtype[0] not in TYPE_NAMES:
            raise Malformed("dhcp_bad_type")
        kind = mtype[0]
        self.counters[f"dhcp_rx_{TYPE_NAMES[kind]}"] += 1
        if kind == DISCOVER:
            return self._discover(msg, mac, src_mac, now)
        if kind == REQUEST:
            return self._request(msg, mac, src_mac, now)
        if kind in (DECLINE, RELEASE):
            sid = msg.options.get(OPT_SERVER)
            if sid is not None and sid != self.server_ip:
                self.counters["dhcp_other_server"] += 1  # meant for another server
            elif kind == DECLINE:
                self._decline(msg, mac, now)
            else:
                self._release(msg, mac, now)
        elif kind == INFORM:
            if msg.ciaddr == ZERO_IP:
                raise Malformed("dhcp_inform_without_ciaddr")
            return [self._reply(msg, ACK, ZERO_IP, mac, src_mac, lease=False)]
        else:  # a server's message type from a client
            self.counters["dhcp_not_request"] += 1
        return []

    def _discover(self, msg: Message, mac: bytes, src_mac: bytes, now: float) -> list[Datagram]:
        static = self._static.get(mac)
        if static is not None:
            ip: int | None = static[0]
        else:
            ip = self._allocate(mac, _addr(msg.options.get(OPT_REQUESTED)), now)
            if ip is None:
                full = len(self._owner) >= self.max_bindings
                self.counters["dhcp_binding_limit" if full else "dhcp_pool_exhausted"] += 1
                return []
        assert ip is not None
        b = self._bindings.get(mac)
        if not (b is not None and b.ip == ip and b.state == "bound" and b.expires > now):
            self._take(mac, ip, "offered", now + OFFER_HOLD, now)
        self._set_hostname(mac, msg, now)
        return [self._reply(msg, OFFER, _ip(ip), mac, src_mac)]

    def _request(self, msg: Message, mac: bytes, src_mac: bytes, now: float) -> list[Datagram]:
        opts = msg.options
        sid = opts.get(OPT_SERVER)
        want = _addr(opts.get(OPT_REQUESTED))
        if sid is not None:  # SELECTING: the client answers one server's offer
            if sid != self.server_ip:
                self.counters["dhcp_other_server"] += 1
                b = self._bindings.get(mac)
                if b is not None and b.state == "offered":
                    self._set_end(b, "released", now)
                return []
            if want is None:
                raise Malformed("dhcp_request_without_address")
        elif want is None:  # RENEWING or REBINDING: the address is in ciaddr
            want = _addr(msg.ciaddr)
            if want is None:
                raise Malformed("dhcp_request_without_address")
        if not self._may_have(mac, want, now):
            return [self._reply(msg, NAK, ZERO_IP, mac, src_mac)]
        if self._in_pool(want) and want not in self._owner and not self._room(now):
            self.counters["dhcp_binding_limit"] += 1
            return [self._reply(msg, NAK, ZERO_IP, mac, src_mac)]
        self._take(mac, want, "bound", now + self.lease_time, now)
        self._set_hostname(mac, msg, now)
        return [self._reply(msg, ACK, _ip(want), mac, src_mac)]

    def _decline(self, msg: Message, mac: bytes, now: float) -> None:
        want = _addr(msg.options.get(OPT_REQUESTED))
        b = self._bindings.get(mac)
        if b is None or want is None or b.ip != want:
            return
        if mac in self._static:
            self.counters["dhcp_static_declined"] += 1  # someone else uses the lab's address
            return
        # The address is in use by someone we don't know: out of the pool for a lease time.
        self._forget(b)
        self._set_end(b, "declined", now + self.lease_time)

    def _release(self, msg: Message, mac: bytes, now: float) -> None:
        b = self._bindings.get(mac)
        if b is not None and _addr(msg.ciaddr) == b.ip:
            self._set_end(b, "released", now)

    # -- addresses -------------------------------------------------------------------------

    def _in_pool(self, ip: int) -> bool:
        return self.first <= ip <= self.last and ip not in self._reserved

    def _allocate(self, mac: bytes, requested: int | None, now: float) -> int | None:
        b = self._bindings.get(mac)
        if b is not None and self._owner.get(b.ip) is b:
            return b.ip
        if requested is not None and self._in_pool(requested):
            owner = self._owner.get(requested)
            if owner is not None and not owner.active(now):
                return requested
            if owner is None and self._room(now):
                return requested
        if len(self._owner) < self.max_bindings:
            while self._cursor <= self.last:
                ip = self._cursor
                self._cursor += 1
                if ip not in self._reserved and ip not in self._owner:
                    return ip
            while self._free:
                ip = self._free.popitem()[0]
                if ip not in self._owner:
                    return ip
        idle = self._longest_ended(now)
        return idle.ip if idle is not None else None

    def _longest_ended(self, now: float) -> _Binding | None:
        """The binding whose lease ended longest ago (None if every one is in force)."""
        ends = self._ends
        while ends:
            expires, _, ip, b = ends[0]
            if self._owner.get(ip) is not b or b.expires != expires:
                heapq.heappop(ends)  # stale
            elif b.active(now):
                return None
            else:
                return b
        return None

    def _room(self, now: float) -> bool:
        """Whether one more pool address may get a binding: under the cap, or by dropping the
        binding whose lease ended longest ago (its address goes back to the free set)."""
        if len(self._owner) < self.max_bindings:
            return True
        b = self._longest_ended(now)
        if b is None:
            return False
        del self._owner[b.ip]
        self._forget(b)
        if len(self._free) < self.max_bindings:
            self._free[b.ip] = None
        return True

    def _set_end(self, b: _Binding, state: str, expires: float) -> None:
        b.state, b.expires = state, expires
        if self._owner.get(b.ip) is b:
            heapq.heappush(self._ends, (expires, self._next_seq(), b.ip, b))
            if len(self._ends) > 2 * len(self._owner) + 64:  # mostly stale: rebuild
                self._ends = [(o.expires, self._next_seq(), ip, o) for ip, o in self._owner.items()]
                heapq.heapify(self._ends)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def _may_have(self, mac: bytes, ip: int, now: float) -> bool:
        static = self._static.get(mac)
        if static is not None:
            return ip == static[0]
        if not self._in_pool(ip):
            return False
        owner = self._owner.get(ip)
        return owner is None or owner is self._bindings.get(mac) or not owner.active(now)

    def _take(self, mac: bytes, ip: int, state: str, expires: float, now: float) -> None:
        b = self._bindings.get(mac)
        if b is not None and b.ip != ip:  # moving: the old address stays behind, free
            self._forget(b)
            self._set_end(b, "released", now)
            b = None
        if b is None:
            b = _Binding(mac, ip, state, expires)
            self._bindings[mac] = b
        if self._in_pool(ip):
            prev = self._owner.get(ip)
            if prev is not None and prev is not b:
                self._forget(prev)
            self._owner[ip] = b
            self._free.pop(ip, None)
        self._set_end(b, state, expires)

    def _forget(self, b: _Binding) -> None:
        """``b`` is no longer its client's binding (its address may stay held)."""
        if self._bindings.get(b.mac) is b:
            del self._bindings[b.mac]
        if b.hostname is not None and self._names.get(b.hostname) is b:
            del self._names[b.hostname]

    def _set_hostname(self, mac: bytes, msg: Message, now: float) -> None:
        b = self._bindings.get(mac)
        if b is None or mac in self._static or mac in self._named:
            return
        name = client_hostname(msg.options.get(OPT_HOSTNAME))
        if name is not None and name in self._taken_names:
            name = None
        if name is not None:
            holder = self._names.get(name)
            if holder is not None and holder is not b and holder.active(now):
                name = None  # first come, first served
        if b.hostname is not None and b.hostname != name and self._names.get(b.hostname) is b:
            del self._names[b.hostname]
        b.hostname = name
        if name is not None:
            self._names[name] = b

    # -- replies ---------------------------------------------------------------------------

    def _reply(
        self,
        msg: Message,
        kind: int,
        yiaddr: bytes,
        mac: bytes,
        src_mac: bytes,
        *,
        lease: bool = True,
    ) -> Datagram:
        nak = kind == NAK
        ciaddr = ZERO_IP if nak or kind == OFFER else msg.ciaddr
        siaddr = ZERO_IP if nak else self.siaddr
        boot = b"" if nak else self.boot
        fixed = _FIXED.pack(
            BOOTREPLY, 1, 6, 0, msg.xid, 0, msg.flags, ciaddr, yiaddr, siaddr, msg.giaddr,
            msg.chaddr, b"", boot,
        )  # fmt: skip
        opts = _opt(OPT_TYPE, bytes((kind,))) + _opt(OPT_SERVER, self.server_ip)
        if nak:
            opts += _opt(OPT_MESSAGE, b"address not available to this client")
        else:
            if lease:
                t = min(int(self.lease_time), 0xFFFF_FFFE)
                opts += _opt(OPT_LEASE, struct.pack("!I", t))
                opts += _opt(OPT_T1, struct.pack("!I", t // 2))
                opts += _opt(OPT_T2, struct.pack("!I", t * 7 // 8))
            opts += self._common
            name = self._static.get(mac, (0, None))[1] or self._named.get(mac)
            if name is not None:
                opts += _opt(OPT_HOSTNAME, name.encode())
        client_id = msg.options.get(OPT_CLIENT_ID)
        if client_id is not None and len(client_id) <= 255:
            opts += _opt(OPT_CLIENT_ID, client_id)
        self.counters[f"dhcp_tx_{TYPE_NAMES[kind]}"] += 1
        data = fixed + MAGIC + opts + bytes((OPT_END,))
        if len(data) < BOOTP_MIN:
            data += bytes(BOOTP_MIN - len(data))
        # Where it goes: RFC 2131 4.1.
        if msg.giaddr != ZERO_IP:
            return Datagram(src_mac, msg.giaddr, SERVER_PORT, SERVER_PORT, data)
        if nak:
            return Datagram(BROADCAST_MAC, BROADCAST_IP, SERVER_PORT, CLIENT_PORT, data)
        if msg.ciaddr != ZERO_IP:
            return Datagram(mac, msg.ciaddr, SERVER_PORT, CLIENT_PORT, data)
        if msg.flags & FLAG_BROADCAST:
            return Datagram(BROADCAST_MAC, BROADCAST_IP, SERVER_PORT, CLIENT_PORT, data)
        return Datagram(mac, yiaddr, SERVER_PORT, CLIENT_PORT, data)


def _addr(raw: bytes | None) -> int | None:
    """A 4-byte address option or field as an int; None if absent, short or 0.0.0.0."""
    if raw is None or len(raw) != 4 or raw == ZERO_IP:
        return None
    return int.from_bytes(raw, "big")
