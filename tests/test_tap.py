"""netfabric.ports.tap: the virtio_net_hdr codec (with a fuzzed parser), and real TAP interfaces,
each inside a network namespace the test creates and deletes: ping from the namespace answered
by a responder on a switch, offloads both ways (a partial checksum the kernel finishes, a
64 KiB TCP segment it cuts or hands over whole), and the errors and drops (no root, a name
too long, a busy or non-TAP interface, a down link, a full descriptor, a deleted interface).

The TAPs are created by ``TapDevice`` in a short-lived thread that has entered the namespace
(a TAP is born in the namespace of whoever opens /dev/net/tun), so the host's own namespace
never sees them; the test's own trio thread never changes namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from helpers import in_netns, wait_until
from hypothesis import given
from hypothesis import strategies as st
from pyroute2 import NetNS, netns
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from netfabric.offload import GSO_NONE, GSO_TCPV4, Offload, resolve
from netfabric.ports.base import SwitchPort
from netfabric.ports.tap import (
    VNET_GSO_TCPV6,
    VNET_GSO_UDP,
    VNET_HDR_LEN,
    TapDevice,
    TapError,
    TapPort,
    build_vnet_header,
    check_name,
    parse_vnet_header,
)
from netfabric.switch import Switch

T = TypeVar("T")
HOST_IP, PEER_IP = "10.77.0.1", "10.77.0.2"  # the namespace's TAP, the responder behind it
PEER_MAC = "02:00:00:77:00:02"
NUD_PERMANENT = 0x80


def tap_name() -> str:
    return "hvt" + os.urandom(4).hex()


# -- the header, pure ----------------------------------------------------------------------


def hdr(flags: int, gso: int, hdr_len: int, gso_size: int, start: int, offset: int) -> bytes:
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, start, offset, 0)


def test_a_plain_header_is_no_offload() -> None:
    assert parse_vnet_header(bytes(12)) is None
    assert parse_vnet_header(hdr(2, 0, 0, 0, 0, 0)) is None  # DATA_VALID: already checked
    assert build_vnet_header(None, 60) == bytes(12)


def test_offload_headers_parse_and_build() -> None:
    tso = hdr(1, 0x81, 54, 1448, 34, 16)  # NEEDS_CSUM, TCPV4 with the ECN bit
    off = parse_vnet_header(tso + b"frame bytes after it")
    assert off == Offload(True, 34, 16, GSO_TCPV4, 1448, 54)
    assert build_vnet_header(off, 65000) == hdr(1, 1, 54, 1448, 34, 16)
    csum = Offload(needs_csum=True, csum_start=34, csum_offset=6)
    assert parse_vnet_header(build_vnet_header(csum, 100)) == csum
    # what the fabric cannot carry comes back as it is, for the reader to drop
    off6 = parse_vnet_header(hdr(1, VNET_GSO_TCPV6, 74, 1428, 54, 16))
    assert off6 is not None and off6.gso_type == VNET_GSO_TCPV6
    # no segment size: not a segment; hdr_len is clamped to the frame
    assert build_vnet_header(Offload(True, 34, 16, GSO_TCPV4, 0, 54), 40) == hdr(
        1, 0, 40, 0, 34, 16
    )
    with pytest.raises(ValueError, match="12 bytes"):
        parse_vnet_header(bytes(11))


@given(st.binary(max_size=40))
def test_the_header_parser_takes_any_bytes(data: bytes) -> None:
    if len(data) < VNET_HDR_LEN:
        with pytest.raises(ValueError):
            parse_vnet_header(data)
        return
    off = parse_vnet_header(data)
    flags, gso = data[0], data[1] & 0x7F
    if off is None:
        assert not flags & 1 and gso == 0
        return
    assert off.needs_csum == bool(flags & 1) and off.gso_type == gso
    assert (off.hdr_len, off.gso_size, off.csum_start, off.csum_offset) == struct.unpack_from(
        "<HHHH", data, 2
    )
    if gso in (GSO_NONE, GSO_TCPV4):  # what the fabric carries goes back out unchanged
        again = parse_vnet_header(build_vnet_header(off, 0xFFFF))
        if gso == GSO_TCPV4 and off.gso_size == 0:
            assert again is None or again.gso_type == GSO_NONE
        else:
            assert again == off


def test_interface_names() -> None:
    assert check_name("hvtap0") == b"hvtap0"
    assert check_name("x" * 15) == b"x" * 15
    for bad, why in (
        ("x" * 16, "16 bytes long: Linux interface names have at most 15"),
        ("ä" * 8, "16 bytes long"),  # bytes, not characters
        ("", "needs a name"),
        ("a/b", "not a valid interface name"),
        ("a b", "not a valid interface name"),
        ("..", "not a valid interface name"),
    ):
        with pytest.raises(TapError, match=why):
            check_name(bad)
    with pytest.raises(TapError, match="at most 15"):  # refused before /dev/net/tun is opened
        TapDevice("hvtap-much-too-long")


# -- real TAPs in a namespace --------------------------------------------------------------


class Namespace:
    """A network namespace of the test's own: TAPs opened in it, its links set up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.taps: list[TapDevice] = []
        self.ipr = NetNS(name)

    def inside(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a thread that entered the namespace (and dies afterwards)."""
        return in_netns(self.name, fn)

    def open_tap(self, name: str | None = None, *, offload: bool = True) -> TapDevice:
        tap = self.inside(partial(TapDevice, name or tap_name(), offload=offload))
        self.taps.append(tap)
        return tap

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str) -> str:
        return subprocess.run(self.cmd(*args), check=True, capture_output=True, text=True).stdout

    def index(self, ifname: str) -> int:
        return int(self.ipr.link_lookup(ifname=ifname)[0])

    def up(self, ifname: str, addr: str | None = None, *, up: bool = True) -> None:
        idx = self.index(ifname)
        self.ipr.link("set", index=idx, state="up" if up else "down")
        if addr is not None:
            self.ipr.addr("add", index=idx, address=addr, prefixlen=24)

    def mac(self, ifname: str) -> str:
        return str(self.ipr.get_links(self.index(ifname))[0].get_attr("IFLA_ADDRESS"))

    def neighbour(self, ifname: str, ip: str, mac: str) -> None:
        self.ipr.neigh("add", dst=ip, lladdr=mac, ifindex=self.index(ifname), state=NUD_PERMANENT)

    def close(self) -> None:
        for tap in self.taps:
            tap.close()
        self.ipr.close()


@pytest.fixture
def ns() -> Iterator[Namespace]:
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("network namespaces and TAPs need root")
    name = "hvtest-" + os.urandom(4).hex()
    netns.create(name)
    try:
        n = Namespace(name)
        try:
            # no IPv6 chatter (router solicitations, MLD) on the TAPs; lo up
            n.run("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
            n.run("sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
            n.up("lo")
            yield n
        finally:
            n.close()
    finally:
        netns.remove(name)


Frames = list[tuple[bytes, Offload | None]]


async def frames_from(
    tap: TapDevice, want: Callable[[bytes], bool], count: int, timeout: float = 5.0
) -> Frames:
    """The first ``count`` frames the host sends on ``tap`` that ``want`` picks."""
    got: Frames = []
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:

            def handle(frame: bytes, off: Offload | None) -> None:
                if len(got) < count and want(frame):
                    got.append((frame, off))
                    if len(got) == count:
                        nursery.cancel_scope.cancel()

            nursery.start_soon(tap.receive, handle)
    return got


def is_ipv4(proto: int) -> Callable[[bytes], bool]:
    return lambda f: f[12:14] == b"\x08\x00" and f[23] == proto


def pseudo_header_sum(frame: bytes) -> int:
    """An IPv4 frame's pseudo-header sum (folded, not inverted): what a CHECKSUM_PARTIAL
    frame holds in its TCP/UDP checksum field."""
    l4 = 14 + (frame[14] & 0xF) * 4
    s: int = sum(struct.unpack_from("!4H", frame, 26)) + frame[23] + len(frame) - l4
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def with_pseudo_header_sum(pkt: Ether, offset: int) -> bytes:
    """``pkt`` as a CHECKSUM_PARTIAL driver leaves it."""
    raw = bytearray(bytes(pkt))
    struct.pack_into("!H", raw, 34 + offset, pseudo_header_sum(bytes(raw)))
    return bytes(raw)


def good_checksums(frame: bytes) -> bool:
    pkt = Ether(frame)
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    sums = pkt[IP].chksum, l4.chksum
    del pkt[IP].chksum, l4.chksum
    again = Ether(bytes(pkt))
    return sums == (again[IP].chksum, (again[TCP] if TCP in again else again[UDP]).chksum)


Handler = Callable[[bytes, Offload | None], None]
Responder = tuple[Handler, Callable[[SwitchPort], Awaitable[None]], list[bytes]]


def responder(ip: str, mac: str) -> Responder:
    """A stand-in for a guest: answers ARP for ``ip`` and ICMP echo requests to it. Returns
    its Deliver, its task (``run(port)``) and the echo requests it saw."""
    send, receive = trio.open_memory_channel[bytes](16)
    seen: list[bytes] = []

    def deliver(frame: bytes, off: Offload | None) -> None:
        with contextlib.suppress(trio.WouldBlock):  # a slow responder drops, like a NIC
            send.send_nowait(frame)

    async def run(port: SwitchPort) -> None:
        async for frame in receive:
            pkt = Ether(frame)
            if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == ip:
                a = pkt[ARP]
                reply = Ether(dst=a.hwsrc, src=mac) / ARP(
                    op=2, hwsrc=mac, psrc=ip, hwdst=a.hwsrc, pdst=a.psrc
                )
            elif ICMP in pkt and pkt[IP].dst == ip and pkt[ICMP].type == 8:
                seen.append(frame)
                i = pkt[ICMP]
                reply = (
                    Ether(dst=pkt.src, src=mac)
                    / IP(src=ip, dst=pkt[IP].src)
                    / ICMP(type=0, id=i.id, seq=i.seq)
                    / bytes(i.payload)
                )
            else:
                continue
            port.send(bytes(reply))

    return deliver, run, seen


async def test_ping_from_the_namespace_is_answered_behind_the_tap(ns: Namespace) -> None:
    tap = ns.open_tap()
    ns.up(tap.name, f"{HOST_IP}/24")
    lan = Switch("lan")
    deliver, answer, seen = responder(PEER_IP, PEER_MAC)
    peer = lan.attach("peer", deliver)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            tap_port: TapPort = await nursery.start(TapPort(lan, tap).run)
            nursery.start_soon(answer, peer)
            done = await trio.run_process(
                ns.cmd("ping", "-c", "3", "-i", "0.2", "-W", "1", PEER_IP),
                capture_stdout=True,
                check=False,
            )
            nursery.cancel_scope.cancel()
    out = done.stdout.decode()
    assert done.returncode == 0 and "3 received" in out, out
    assert len(seen) == 3 and all(Ether(f)[IP].src == HOST_IP for f in seen)
    c = tap_port.tap.counters
    assert c["rx_frames"] >= 4 and c["tx_frames"] >= 4  # an ARP and 3 echoes each way
    assert c["tx_dropped"] == 0 and c["rx_runt"] == 0
    assert tap_port.counters.rx_frames == c["rx_frames"]
    assert tap_port.name == f"tap:{tap.name}" and tap.closed  # run closed it when cancelled


LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
data, addr = s.recvfrom(4096)
print(data.decode(), addr[0], addr[1], flush=True)
"""


def udp_csum_errors(ns: Namespace) -> int:
    lines = [line.split() for line in ns.run("cat", "/proc/net/snmp").splitlines()]
    names, values = (line for line in lines if line[0] == "Udp:")
    return int(values[names.index("InCsumErrors")])


async def test_a_partial_udp_checksum_is_finished_by_the_kernel(ns: Namespace) -> None:
    tap = ns.open_tap()
    ns.up(tap.name, f"{HOST_IP}/24")
    port = 40000 + os.getpid() % 1000

    def datagram(payload: bytes) -> bytes:
        pkt = (
            Ether(dst=ns.mac(tap.name), src=PEER_MAC)
            / IP(src=PEER_IP, dst=HOST_IP)
            / UDP(sport=5555, dport=port)
            / payload
        )
        return with_pseudo_header_sum(pkt, 6)

    partial_csum = Offload(needs_csum=True, csum_start=34, csum_offset=6)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            cmd = ns.cmd(sys.executable, "-c", LISTENER, HOST_IP, str(port))
            listener = await nursery.start(partial(trio.run_process, cmd, stdout=subprocess.PIPE))
            out = b""
            while b"ready\n" not in out:
                out += await listener.stdout.receive_some()
            # the same bytes without the header saying "finish me": a bad checksum, dropped
            tap.deliver(datagram(b"as it is"), None)
            tap.deliver(datagram(b"finished"), partial_csum)
            async for chunk in listener.stdout:
                out += chunk
    assert out.decode().split("\n")[1] == f"finished {PEER_IP} 5555"
    assert tap.counters["tx_frames"] == 2 and tap.counters["tx_dropped"] == 0
    assert udp_csum_errors(ns) == 1


async def test_the_hosts_partial_checksums_come_as_offloads(ns: Namespace) -> None:
    tap = ns.open_tap()
    ns.up(tap.name, f"{HOST_IP}/24")
    ns.neighbour(tap.name, PEER_IP, PEER_MAC)
    sender = f"import socket; socket.socket(2, 2).sendto(b'from the host' * 9, ('{PEER_IP}', 9))"
    await trio.run_process(ns.cmd(sys.executable, "-c", sender))
    [(frame, off)] = await frames_from(tap, is_ipv4(17), 1)
    assert off == Offload(needs_csum=True, csum_start=34, csum_offset=6)
    assert Ether(frame)[IP].src == HOST_IP
    assert struct.unpack_from("!H", frame, 40)[0] == pseudo_header_sum(frame)  # still partial
    [wire] = resolve(frame, off)
    assert good_checksums(wire) and bytes(Ether(wire)[UDP].payload) == b"from the host" * 9
    assert tap.counters["rx_offloaded"] == 1


def tso_segment(dst_mac: str, src: str, dst: str, payload: bytes) -> tuple[bytes, Offload]:
    pkt = (
        Ether(dst=dst_mac, src=PEER_MAC)
        / IP(src=src, dst=dst, id=7)
        / TCP(sport=40000, dport=5001, seq=1000, flags="PA")
        / payload
    )
    return with_pseudo_header_sum(pkt, 16), Offload(True, 34, 16, GSO_TCPV4, 1400, 54)


def forwarding(ns: Namespace) -> tuple[TapDevice, TapDevice]:
    """Two TAPs the namespace routes between: ``a`` takes offloads, ``b`` does not."""
    a, b = ns.open_tap(), ns.open_tap(offload=False)
    ns.up(a.name, f"{HOST_IP}/24")
    ns.up(b.name, "10.78.0.1/24")
    ns.neighbour(a.name, PEER_IP, PEER_MAC)
    ns.neighbour(b.name, "10.78.0.2", PEER_MAC)
    ns.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    return a, b


PAYLOAD = bytes(range(256)) * 255  # 65280 bytes: about the largest TCP segment there is


async def test_a_tso_segment_is_cut_by_the_kernel_for_a_tap_without_offloads(
    ns: Namespace,
) -> None:
    a, b = forwarding(ns)
    frame, off = tso_segment(ns.mac(a.name), PEER_IP, "10.78.0.2", PAYLOAD)
    a.deliver(frame, off)
    assert a.counters["tx_frames"] == 1 and a.counters["tx_bytes"] == len(frame)  # one write
    ours = resolve(frame, off)
    theirs = await frames_from(b, is_ipv4(6), len(ours))
    assert all(o is None for _, o in theirs)  # b took no offloads: real frames
    assert [f[34:] for f, _ in theirs] == [s[34:] for s in ours]  # TCP: the same bytes
    assert all(good_checksums(f) and Ether(f)[IP].ttl == 63 for f, _ in theirs)
    assert len(ours) == 47 and b.counters["rx_offloaded"] == 0


async def test_the_kernel_hands_a_tap_with_offloads_a_tso_segment_whole(ns: Namespace) -> None:
    a, b = forwarding(ns)
    frame, off = tso_segment(ns.mac(b.name), "10.78.0.2", PEER_IP, PAYLOAD)
    b.deliver(frame, off)  # writes take offloads whatever the TAP's own setting
    [(whole, got)] = await frames_from(a, is_ipv4(6), 1)
    assert len(whole) == len(frame) > 65000
    assert got is not None and (got.gso_type, got.gso_size, got.needs_csum) == (
        GSO_TCPV4,
        1400,
        True,
    )
    assert (got.csum_start, got.csum_offset) == (34, 16)
    wires = resolve(whole, got)
    assert len(wires) == 47 and all(good_checksums(w) for w in wires)
    assert b"".join(bytes(Ether(w)[TCP].payload) for w in wires) == PAYLOAD
    assert a.counters["rx_offloaded"] == 1 and a.counters["rx_bytes"] == len(frame)


# -- errors and drops ----------------------------------------------------------------------

CHILD = """
import sys
from netfabric.ports import tap
if sys.argv[1] != "-":
    tap.TUN_PATH = sys.argv[1]
kept = []
for name in sys.argv[2:]:
    try:
        kept.append(tap.TapDevice(name))
        print("opened", kept[-1].name)
    except tap.TapError as e:
        print("error", e.errno, e)
"""


def as_nobody(ns: Namespace, tun_path: str, *names: str) -> list[str]:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    cmd = ns.cmd(*nobody, sys.executable, "-c", CHILD, tun_path, *names)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()


@pytest.fixture
def open_tun_node() -> Iterator[str]:
    """A node for the TUN device that anyone may open (as /dev/net/tun usually is)."""
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    folder = Path(tempfile.mkdtemp(prefix="hvtest-tun-"))
    try:
        folder.chmod(0o755)
        node = folder / "tun"
        os.mknod(node, stat.S_IFCHR | 0o666, os.stat("/dev/net/tun").st_rdev)
        node.chmod(0o666)
        try:
            os.close(os.open(node, os.O_RDWR))
        except OSError as e:
            pytest.skip(f"device nodes do not work in {folder}: {e}")
        yield str(node)
    finally:
        shutil.rmtree(folder)


def test_without_root_a_tap_cannot_be_created_but_one_made_for_you_opens(
    ns: Namespace, open_tun_node: str
) -> None:
    new, mine, roots = tap_name(), tap_name(), tap_name()
    ns.run("ip", "tuntap", "add", "mode", "tap", "user", "65534", "name", mine)
    ns.run("ip", "tuntap", "add", "mode", "tap", "user", "0", "name", roots)
    # /dev/net/tun itself: 0600 here (EACCES), 0666 on most hosts (EPERM): both say what to do
    [line] = as_nobody(ns, "-", new)
    assert "needs CAP_NET_ADMIN" in line
    assert f"sudo ip tuntap add mode tap user $USER name {new})" in line
    created, opened, busy, not_yours = as_nobody(ns, open_tun_node, new, mine, mine, roots)
    assert created == (
        f'error 1 cannot create TAP "{new}": needs CAP_NET_ADMIN (run as root, or pre-create '
        f"it: sudo ip tuntap add mode tap user $USER name {new})"
    )
    assert opened == f"opened {mine}"
    assert busy.startswith("error 16 ") and "another process has it open" in busy
    assert not_yours.startswith("error 1 ") and "belongs to another user" in not_yours
    assert new not in ns.run("ip", "link")  # nothing was created


def test_a_busy_tap_and_an_interface_that_is_no_tap(ns: Namespace) -> None:
    tap = ns.open_tap()
    with pytest.raises(TapError, match="another process has it open") as busy:
        ns.open_tap(tap.name)
    assert busy.value.errno == 16
    with pytest.raises(TapError, match='"lo": an interface with that name exists and is not'):
        ns.open_tap("lo")
    assert ns.open_tap("hvq%d").name == "hvq0"  # the kernel picks the number


def ether(payload: bytes = b"x" * 46) -> bytes:
    return b"\xff" * 6 + bytes.fromhex("020000770002") + b"\x08\x00" + payload


def test_writes_while_the_link_is_down_are_counted_not_raised(ns: Namespace) -> None:
    tap = ns.open_tap()  # created down
    tap.deliver(ether(), None)
    tap.deliver(ether(), Offload(needs_csum=True, csum_start=34, csum_offset=6))
    assert tap.counters["tx_dropped"] == 2 and tap.counters["tx_link_down"] == 2
    ns.up(tap.name)
    tap.deliver(ether(), None)
    tap.deliver(b"runt", None)  # the kernel refuses it: counted too
    assert tap.counters["tx_frames"] == 1 and tap.counters["tx_invalid"] == 1
    assert tap.counters["tx_dropped"] == 3
    tap.close()
    tap.deliver(ether(), None)
    assert tap.counters["tx_closed"] == 1 and tap.counters["tx_dropped"] == 4


def test_a_descriptor_that_takes_nothing_more_drops_and_counts(ns: Namespace) -> None:
    tap = ns.open_tap()
    r, w = os.pipe()  # stands in for the TAP: a pipe nobody reads, filled up
    try:
        os.set_blocking(w, False)
        with pytest.raises(BlockingIOError):
            while True:
                os.write(w, bytes(65536))
        os.dup2(w, tap.fileno())
        for _ in range(3):
            tap.deliver(ether(), None)
        assert tap.counters["tx_busy"] == 3 and tap.counters["tx_dropped"] == 3
        assert tap.counters["tx_frames"] == 0
    finally:
        os.close(r)
        os.close(w)


async def test_runts_and_unsupported_segments_are_dropped_and_counted(ns: Namespace) -> None:
    tap = ns.open_tap()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:  # stands in for the TAP: one read, one frame, as the TAP does
        os.dup2(ours.fileno(), tap.fileno())
        os.set_blocking(tap.fileno(), False)
        ecn = hdr(1, 0x81, 54, 1448, 34, 16)
        for message in (
            b"short",  # not even a header
            bytes(12) + b"\xff" * 10,  # a header, then less than an Ethernet header
            hdr(1, VNET_GSO_TCPV6, 74, 1428, 54, 16) + ether(),
            hdr(1, VNET_GSO_UDP, 42, 1472, 34, 6) + ether(),
            ecn + ether(b"ecn"),
            bytes(12) + ether(b"plain"),
        ):
            theirs.send(message)
        got: Frames = []
        assert tap.read_available(lambda f, o: got.append((f, o)))  # read all, to EAGAIN
    assert got == [
        (ether(b"ecn"), Offload(True, 34, 16, GSO_TCPV4, 1448, 54)),
        (ether(b"plain"), None),
    ]
    c = tap.counters
    assert (c["rx_runt"], c["rx_gso_unsupported"], c["rx_frames"]) == (2, 2, 2)
    assert c["rx_bytes"] == len(ether(b"ecn")) + len(ether(b"plain"))


async def test_a_batch_is_bounded_and_receive_goes_on_until_closed(ns: Namespace) -> None:
    tap = ns.open_tap()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        os.dup2(ours.fileno(), tap.fileno())
        os.set_blocking(tap.fileno(), False)
        for i in range(10):
            theirs.send(bytes(12) + ether(bytes([i]) * 46))
        got: Frames = []
        assert not tap.read_available(lambda f, o: got.append((f, o)), limit=4)
        assert len(got) == 4  # stopped at the limit, frames left
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tap.receive, lambda f, o: got.append((f, o)))
                await wait_until(lambda: len(got) == 10, "the 10 frames")
                theirs.send(bytes(12) + ether(b"later"))  # after it went back to waiting
                await wait_until(lambda: len(got) == 11, "the frame sent later")
                tap.close()  # receive returns: nothing left to cancel
    assert [f[14] for f, _ in got[:10]] == list(range(10)) and got[10][0] == ether(b"later")


async def test_a_tap_deleted_under_its_port_is_a_tap_error(ns: Namespace) -> None:
    tap = ns.open_tap()
    ns.up(tap.name)
    lan = Switch("lan")
    with trio.fail_after(5), pytest.raises(ExceptionGroup) as failed:
        async with trio.open_nursery() as nursery:
            port: TapPort = await nursery.start(TapPort(lan, tap).run)
            await trio.run_process(ns.cmd("ip", "link", "del", tap.name))
    assert failed.group_contains(TapError, match=f'TAP "{tap.name}" is gone')
    assert tap.closed and not lan.core.is_up(port.id)
