"""A VXLAN port: a switch's cable carried over UDP to other hosts, as RFC 7348 has it.

Theory of operation. VXLAN puts an Ethernet frame in a UDP datagram (port 4789) behind an
8-byte header: a flags byte with the I bit (0x08: "the VNI is valid"), three reserved bytes,
the 24-bit VXLAN Network Identifier and one more reserved byte. A host taking part is a VTEP
(tunnel end point). A Linux ``vxlan`` device (``ip link add vx0 type vxlan id 42 remote
10.9.0.1 dstport 4789 dev eth0``) speaks exactly this, so it joins an hv switch, and two hv
processes on two hosts join their halves of one switch.

``VxlanEndpoint`` is the UDP socket (bound to ``local:port``; 0.0.0.0 only when asked): it
reads datagrams and hands each to the port of its VNI, so several switches (one VNI each)
share one UDP port, as several Linux vxlan devices with the same ``dstport`` do. ``VxlanPort``
is a switch's port for one VNI: what the switch delivers to it goes out as datagrams, what
arrives for its VNI goes into the switch. Where a frame goes is ``VtepTable``'s decision
(sans-IO, driven by ``now``): a fixed list of remote VTEPs (``remote``, Linux's default
destinations) and, with learning on, the VTEP each inner source MAC came from, as Linux's
vxlan learns its FDB: a unicast frame to a learned MAC goes to that VTEP alone, everything
else (broadcast, multicast, unknown unicast) is flooded to every VTEP known (the fixed ones
and those heard from lately). Frames that came in over VXLAN never go back out of it (the
switch never sends a frame out of the port it came in on), so a full mesh of hosts joining
one switch makes no loop.

The hot path is hand-written on purpose: the 8-byte header is packed and checked with one
``struct.Struct`` (two 32-bit words), one preallocated receive buffer, plain dicts for the
tables, no per-datagram objects but the frame's bytes. A TCP segment of 64 KiB a guest sends
with offloads leaves as its wire segments (``Frame.wire()``): VXLAN carries wire frames.

Hostile input never crashes anything: every datagram that is not a good frame for a known VNI
is dropped and counted (``counters``, ``collections.Counter``): ``rx_bad_header`` (shorter
than the header), ``rx_bad_flags`` (no I bit, or a reserved flag bit set: Linux drops those
too), ``rx_unknown_vni``; on the port, ``rx_runt`` (an inner frame shorter than an Ethernet
header) and ``rx_oversize`` (longer than ``max_frame``). The learning table is bounded
(``max_macs``, oldest first out, counted in ``evictions``) and so is the set of learned VTEPs
(``max_vteps``; ``vtep_evictions``): a flood of new source MACs or senders costs a bounded
table. Under load nothing queues here: a send the kernel will not take now (EAGAIN) is dropped
and counted (``tx_busy``, ``tx_dropped``), and datagrams the kernel dropped because we did not
read them in time are counted from the socket (``rx_kernel_drops``, SO_RXQ_OVFL).

This port lives on real time: the hosts at the other end are on the wire, like a TAP's, so a
virtual-time lab with a VXLAN uplink is refused (hv.lab._spec.check_clock).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence

import trio

from netfabric.frame import Frame
from netfabric.ports.base import PortVlan, SwitchPort, SwitchSide, read_until_closed

VXLAN_PORT = 4789  # IANA's
VNI_MAX = (1 << 24) - 1
HEADER = 8
I_FLAG = 0x08000000  # the flags byte's I bit, as the first 32-bit word of the header
_HDR = struct.Struct("!II")  # flags + reserved; VNI << 8 + reserved
ETH_HEADER = 14
# The largest inner frame taken by default: a 9000-byte jumbo MTU, its Ethernet header and a
# VLAN tag fit (Linux's vxlan takes MTUs up to 65535; say max_frame= for more).
MAX_FRAME = 9216
RECV_BUFFER = 65536  # over the largest UDP payload (65507): a datagram is never cut short
BATCH = 64  # datagrams read before the reading task lets the others run
DEFAULT_MAX_MACS = 4096
DEFAULT_MAX_VTEPS = 256
DEFAULT_AGING = 300.0  # Linux vxlan's ``ageing``
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0  # <linux/in.h> (not in Python's socket module)

# A VTEP's address: (IPv4 address as text, UDP port)
Addr = tuple[str, int]

# What decode_header returns for a datagram that is not VXLAN (negative: never a VNI)
BAD_HEADER = -1
BAD_FLAGS = -2
BAD_REASONS = {BAD_HEADER: "rx_bad_header", BAD_FLAGS: "rx_bad_flags"}


class VxlanError(Exception):
    """A VXLAN endpoint cannot be opened: the message says why and what to do."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err


def encode_header(vni: int) -> bytes:
    """The 8-byte VXLAN header for ``vni`` (I flag set, reserved fields zero)."""
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"{vni} is not a VNI in 0..{VNI_MAX}")
    return _HDR.pack(I_FLAG, vni << 8)


def decode_header(data: bytes | bytearray | memoryview, n: int | None = None) -> int:
    """The VNI of datagram ``data`` (its first ``n`` bytes), or ``BAD_HEADER`` (shorter than
    the header) or ``BAD_FLAGS`` (no I flag, or another flag bit set). The last reserved byte
    is ignored, as RFC 7348 says receivers do."""
    if (len(data) if n is None else n) < HEADER:
        return BAD_HEADER
    flags, word = _HDR.unpack_from(data)
    if flags != I_FLAG:
        return BAD_FLAGS
    return int(word >> 8)


def parse_addr(text: str, default_port: int = VXLAN_PORT) -> Addr:
    """``"10.9.0.2"`` or ``"10.9.0.2:4790"`` as an address; ValueError saying why not."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = text, str(default_port)
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        raise ValueError(
            f"{text!r} is not an IPv4 address (like 10.9.0.2 or 10.9.0.2:4789)"
        ) from None
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise ValueError(f"{text!r}: {port_s!r} is not a UDP port in 1..65535")
    return host, int(port_s)


class VtepTable:
    """Where a VNI's frames go, sans-IO: the fixed ``remotes`` and, with ``learning``, the VTEP
    behind each inner source MAC (at most ``max_macs``) and the VTEPs heard from (at most
    ``max_vteps`` beyond the fixed ones), each forgotten ``aging`` seconds after it was last
    heard. ``counters``: ``learned``, ``moved``, ``evictions``, ``vtep_evictions``, ``aged``."""

    def __init__(
        self,
        remotes: Iterable[Addr] = (),
        *,
        learning: bool = True,
        max_macs: int = DEFAULT_MAX_MACS,
        max_vteps: int = DEFAULT_MAX_VTEPS,
        aging: float = DEFAULT_AGING,
        counters: collections.Counter[str] | None = None,
    ) -> None:
        if max_macs <= 0 or max_vteps < 0 or aging <= 0:
            raise ValueError("the tables need room and a positive aging time")
        self.remotes: tuple[Addr, ...] = tuple(dict.fromkeys(remotes))
        self.learning = learning
        self.max_macs, self.max_vteps, self.aging = max_macs, max_vteps, aging
        self.counters = counters if counters is not None else collections.Counter()
        # MAC -> (VTEP, last seen); insertion order is age order (refreshes move to the end)
        self.macs: dict[bytes, tuple[Addr, float]] = {}
        self.vteps: dict[Addr, float] = {}  # learned VTEPs (not the fixed ones) -> last seen
        self._fixed = frozenset(self.remotes)
        self._flood: tuple[Addr, ...] | None = None

    def learn(self, mac: bytes, vtep: Addr, now: float) -> None:
        """A frame from ``mac`` came from ``vtep`` at ``now`` (a unicast source only)."""
        if not self.learning:
            return
        macs = self.macs
        entry = macs.get(mac)
        if entry is None or entry[0] != vtep or now - entry[1] > 1.0:  # refresh once a second
            if entry is not None:
                del macs[mac]
                if entry[0] != vtep:
                    self.counters["moved"] += 1
            else:
                if len(macs) >= self.max_macs:
                    oldest = next(iter(macs))
                    self.counters[
                        "aged" if now - macs[oldest][1] > self.aging else "evictions"
                    ] += 1
                    del macs[oldest]
                self.counters["learned"] += 1
            macs[mac] = (vtep, now)
        if vtep not in self._fixed:
            seen = self.vteps.get(vtep)
            if seen is None or now - seen > 1.0:
                self._hear(vtep, now, seen is None)

    def _hear(self, vtep: Addr, now: float, new: bool) -> None:
        vteps = self.vteps
        if new:
            if not self.max_vteps:
                return
            if len(vteps) >= self.max_vteps:
                del vteps[next(iter(vteps))]
                self.counters["vtep_evictions"] += 1
            self._flood = None
        else:
            del vteps[vtep]
        vteps[vtep] = now

    def flood_set(self, now: float) -> tuple[Addr, ...]:
        """Every VTEP a broadcast goes to: the fixed ones, then those heard from lately."""
        vteps = self.vteps
        while vteps:  # age out the VTEPs not heard from (the oldest first)
            first = next(iter(vteps))
            if now - vteps[first] <= self.aging:
                break
            del vteps[first]
            self._flood = None
        got = self._flood
        if got is None:
            got = self._flood = self.remotes + tuple(v for v in vteps if v not in self._fixed)
        return got

    def destinations(self, dst: bytes, now: float) -> tuple[Addr, ...]:
        """The VTEPs a frame to MAC ``dst`` (its first 6 bytes) goes to."""
        if not dst[0] & 1:
            entry = self.macs.get(dst)
            if entry is not None and now - entry[1] <= self.aging:
                return (entry[0],)
        return self.flood_set(now)

    def lookup(self, mac: bytes, now: float) -> Addr | None:
        entry = self.macs.get(mac)
        return None if entry is None or now - entry[1] > self.aging else entry[0]


class VxlanEndpoint:
    """A UDP socket speaking VXLAN on ``local:port`` (``local``: an address of this host, or
    "0.0.0.0" for all of them), shared by the ports of its VNIs; ``run`` is its reading task.
    A VxlanError that says what to do if it cannot be bound. ``counters``: ``rx_datagrams``,
    ``rx_bad_header``, ``rx_bad_flags``, ``rx_unknown_vni``, ``rx_error``,
    ``rx_kernel_drops`` (datagrams the kernel dropped because we were behind)."""

    def __init__(
        self, local: str = "0.0.0.0", port: int = VXLAN_PORT, *, sock: socket.socket | None = None
    ) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.ports: dict[int, VxlanPort] = {}
        if sock is None:
            sock = _bind(local, port)
        sock.setblocking(False)
        self.sock = sock
        self.local: Addr = sock.getsockname()[:2]
        self._fd = sock.fileno()
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._bufs = [self._buf]
        self._anc = socket.CMSG_SPACE(4)

    def close(self) -> None:
        """Close the socket (a waiting ``run`` returns); its ports go down."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(RuntimeError):  # outside trio: nobody is waiting
                trio.lowlevel.notify_closing(fd)
            self.sock.close()
            for port in self.ports.values():
                port.set_up(False)

    def add(self, port: VxlanPort) -> None:
        if port.vni in self.ports:
            raise ValueError(f"VNI {port.vni} already has a port on {self.local_text}")
        self.ports[port.vni] = port

    @property
    def local_text(self) -> str:
        return f"{self.local[0]}:{self.local[1]}"

    # -- out -------------------------------------------------------------------------------

    def send(
        self, header: bytes, frame: bytes, to: Sequence[Addr], c: collections.Counter[str]
    ) -> None:
        """One frame to each VTEP in ``to``: never blocks, never raises; what the kernel will
        not take now is dropped and counted in ``c`` (the port's counters)."""
        if self._fd < 0:
            c["tx_dropped"] += len(to)
            c["tx_closed"] += len(to)
            return
        sendmsg = self.sock.sendmsg
        bufs = (header, frame)
        for addr in to:
            try:
                sendmsg(bufs, (), 0, addr)
            except OSError as e:
                c["tx_dropped"] += 1
                c["tx_busy" if e.errno in (errno.EAGAIN, errno.ENOBUFS) else "tx_error"] += 1
                continue
            c["tx_datagrams"] += 1

    # -- in --------------------------------------------------------------------------------

    def read_available(self, limit: int = BATCH) -> bool:
        """Read up to ``limit`` waiting datagrams, each to its VNI's port; True once none are
        left (EAGAIN)."""
        c = self.counters
        view, bufs, anc = self._view, self._bufs, self._anc
        recv = self.sock.recvmsg_into
        for _ in range(limit):
            if self._fd < 0:
                return True
            try:
                n, ancdata, _flags, addr = recv(bufs, anc)
            except BlockingIOError:
                return True
            except OSError:  # an ICMP error reported on the socket, and the like
                c["rx_error"] += 1
                continue
            if ancdata:
                dropped = int.from_bytes(ancdata[0][2][:4], "little")
                if dropped > c["rx_kernel_drops"]:
                    c["rx_kernel_drops"] = dropped
            self.datagram(view[:n], addr)
        return False

    def datagram(self, data: memoryview, addr: Addr) -> None:
        """One datagram from ``addr``: its frame to its VNI's port, or dropped and counted."""
        c = self.counters
        c["rx_datagrams"] += 1
        vni = decode_header(data)
        if vni < 0:
            c[BAD_REASONS[vni]] += 1
            return
        port = self.ports.get(vni)
        if port is None:
            c["rx_unknown_vni"] += 1
            return
        port.receive(data[HEADER:], addr)

    async def run(
        self, *, task_status: trio.TaskStatus[VxlanEndpoint] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Move datagrams to the ports until cancelled; then close the socket (the ports go
        down: frames for them are dropped and counted by the switch)."""
        try:
            task_status.started(self)
            await read_until_closed(lambda: self._fd, self.read_available)
        finally:
            self.close()


def _bind(local: str, port: int) -> socket.socket:
    where = f"{local}:{port}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # best effort: room for bursts, drops counted
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        # Let the kernel fragment a datagram over the path's MTU (a 1500-byte inner frame
        # makes a 1550-byte packet), as Linux's vxlan does without ``df set``.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        sock.bind((local, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRNOTAVAIL:
            why = f"{local} is not an address of this host (give one `ip addr` shows)"
        elif e.errno == errno.EADDRINUSE:
            why = (
                f"UDP port {port} is taken (another hv lab, or a Linux vxlan device with dstport "
                f"{port} on this host: pick another port)"
            )
        elif e.errno == errno.EACCES:
            why = f"UDP port {port} needs root (pick one over 1023)"
        else:
            why = e.strerror or str(e)
        raise VxlanError(f"cannot open VXLAN on {where}: {why}", e.errno) from None
    except (OverflowError, ValueError) as e:
        sock.close()
        raise VxlanError(f"cannot open VXLAN on {where}: {e}") from None
    return sock


class VxlanPort(SwitchPort):
    """Port ``vxlan:VNI`` of ``switch``: its frames carried by ``endpoint`` over VXLAN ``vni``
    to ``remotes`` (and, with ``learning``, to the VTEPs its MACs were learned from, at their
    address and ``dst_port``, whatever port they sent from). On a
    VLAN-aware switch it is a trunk carrying every VLAN tagged, VLAN 1 untagged, as a link is.
    ``counters`` are the switch's for the port; ``vxlan`` the VXLAN side's: ``rx_frames``,
    ``rx_runt``, ``rx_oversize``, ``tx_frames``, ``tx_datagrams``, ``tx_no_remote`` (a frame
    with nowhere to go), ``tx_dropped`` (``tx_busy``, ``tx_error``) and the table's."""

    def __init__(
        self,
        switch: SwitchSide,
        endpoint: VxlanEndpoint,
        vni: int,
        remotes: Iterable[Addr] = (),
        *,
        learning: bool = True,
        dst_port: int = VXLAN_PORT,
        max_frame: int = MAX_FRAME,
        max_macs: int = DEFAULT_MAX_MACS,
        max_vteps: int = DEFAULT_MAX_VTEPS,
        aging: float = DEFAULT_AGING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.header = encode_header(vni)
        self.vni = vni
        self.endpoint = endpoint
        self.max_frame = max_frame
        self.vxlan: collections.Counter[str] = collections.Counter()
        self.table = VtepTable(
            remotes, learning=learning, max_macs=max_macs, max_vteps=max_vteps, aging=aging,
            counters=self.vxlan,
        )  # fmt: skip
        self._clock = clock
        self.dst_port = dst_port
        # A VTEP sends from a port of its choice (Linux: a hash of the inner flow) to ours: it
        # is learned by its address, reached at its configured port if it is a fixed remote,
        # else at ``dst_port`` (Linux's ``dstport``).
        self._fixed = {host: (host, port) for host, port in reversed(self.table.remotes)}
        endpoint.add(self)
        super().__init__(switch, f"vxlan:{vni}")
        switch.trunk_ports.add(self.id)
        if switch.core.vlans:
            self.set_vlan(PortVlan(access=None, native=1))

    def receive(self, inner: memoryview, vtep: Addr) -> None:
        """An inner frame from ``vtep`` (the endpoint checked the header), into the switch."""
        c = self.vxlan
        n = len(inner)
        if n < ETH_HEADER:
            c["rx_runt"] += 1
            return
        if n > self.max_frame:
            c["rx_oversize"] += 1
            return
        frame = bytes(inner)
        if not frame[6] & 1:
            host = vtep[0]
            self.table.learn(
                frame[6:12], self._fixed.get(host) or (host, self.dst_port), self._clock()
            )
        c["rx_frames"] += 1
        c["rx_bytes"] += n
        self.switch.send(self.id, Frame(frame))

    def deliver(self, frame: Frame) -> None:
        c = self.vxlan
        now = self._clock()
        table, send, header = self.table, self.endpoint.send, self.header
        for wire in frame.wire():
            to = table.destinations(wire[:6], now)
            if not to:
                c["tx_no_remote"] += 1
                continue
            c["tx_frames"] += 1
            c["tx_bytes"] += len(wire)
            send(header, wire, to, c)

    def stats(self) -> dict[str, object]:
        """The port's VXLAN side: VNI, local and remote VTEPs, counters (its own and its
        endpoint's), table sizes."""
        now = self._clock()
        return {
            "vni": self.vni,
            "local": self.endpoint.local_text,
            "remotes": [f"{h}:{p}" for h, p in self.table.flood_set(now)],
            "macs": len(self.table.macs),
            "counters": {**self.endpoint.counters, **self.vxlan},
        }
