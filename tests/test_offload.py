"""Offloaded frames resolved in software (netfabric.offload): TSO segments and partial
checksums, checked by scapy's own checksum computation; a capture of offloaded Linux TCP
traffic has only wire-size frames with good checksums (tshark)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import trio
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from test_lab import hv_up

import hv
from hv.build import _image_linux as il
from netfabric.offload import (
    GSO_TCPV4,
    Offload,
    finish_checksum,
    resolve,
    segment_tcp4,
    wire_count,
)
from netfabric.switch import Switch


def tso_frame(payload: bytes, flags: str = "PA") -> bytes:
    pkt = (
        Ether(dst="52:54:00:00:00:02", src="52:54:00:00:00:01")
        / IP(src="10.0.0.1", dst="10.0.0.2", id=100)
        / TCP(sport=40000, dport=5001, seq=1000, flags=flags, options=[("NOP", None)] * 4)
    )
    return bytes(pkt / payload)


def good_checksums(frame: bytes) -> bool:
    pkt = Ether(frame)
    ip_sum, tcp_sum = pkt[IP].chksum, pkt[TCP].chksum
    del pkt[IP].chksum, pkt[TCP].chksum
    again = Ether(bytes(pkt))
    return bool(again[IP].chksum == ip_sum and again[TCP].chksum == tcp_sum)


def test_tso_segments_are_wire_size_with_good_checksums() -> None:
    payload = bytes(range(256)) * 200  # 51200 bytes
    segs = segment_tcp4(tso_frame(payload, "FPA"), 1448)
    assert len(segs) == 36 and all(len(s) <= 14 + 20 + 36 + 1448 for s in segs)
    assert all(good_checksums(s) for s in segs)
    parsed = [Ether(s) for s in segs]
    assert b"".join(bytes(p[TCP].payload) for p in parsed) == payload
    assert [p[TCP].seq for p in parsed] == [1000 + 1448 * i for i in range(36)]
    assert [p[IP].id for p in parsed] == [100 + i for i in range(36)]
    assert all("F" not in str(p[TCP].flags) for p in parsed[:-1]) and "F" in str(
        parsed[-1][TCP].flags
    )


def test_a_partial_checksum_is_completed() -> None:
    for l4 in (TCP(sport=1, dport=2), UDP(sport=1, dport=2)):
        pkt = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / l4 / (b"x" * 101)
        raw = bytearray(bytes(pkt))
        start = 34
        offset = 16 if isinstance(l4, TCP) else 6
        good = bytes(raw[start + offset : start + offset + 2])
        raw[start + offset : start + offset + 2] = b"\0\0"  # what a driver leaves, minus the
        # pseudo-header sum: put that in as CHECKSUM_PARTIAL drivers do
        ph = Ether(bytes(pkt))
        plen = len(bytes(ph[IP].payload))
        s = 0x0A00 + 0x0001 + 0x0A00 + 0x0002 + (6 if isinstance(l4, TCP) else 17) + plen
        s = (s & 0xFFFF) + (s >> 16)
        raw[start + offset : start + offset + 2] = s.to_bytes(2, "big")
        done = finish_checksum(bytes(raw), start, offset)
        assert done[start + offset : start + offset + 2] == good
        assert resolve(bytes(raw), Offload(True, start, offset)) == [done]


def test_resolve_without_an_offload_is_the_frame() -> None:
    f = tso_frame(b"abc")
    assert resolve(f, None) == [f]
    assert resolve(f, Offload(gso_type=GSO_TCPV4, gso_size=1000)) == [f]  # fits in one


def test_a_capture_of_offloaded_linux_tcp_is_the_wire(
    linux_image: il.LinuxImage, tmp_path: Path
) -> None:
    lab = tmp_path / "tso.toml"
    lab.write_text(
        '[switches.lan]\ncapture = "tso.pcapng"\n'
        '[vms.a]\nkernel = "linux"\nnics = [{ switch = "lan", ip = "10.0.0.1/24" }]\n'
        "append = 'hv.run=\"sleep 1; traffic send -t 10.0.0.2 1000000; poweroff\"'\n"
        '[vms.b]\nkernel = "linux"\nnics = [{ switch = "lan", ip = "10.0.0.2/24" }]\n'
        "append = 'hv.run=\"traffic recv -t -1\"'\n"
    )
    r = hv_up(lab, "--exit-code-from", "a")
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr
    assert "b | traffic: received from 10.0.0.1: 1000000 bytes" in r.stdout
    tshark = shutil.which("tshark")
    assert tshark
    cap = str(tmp_path / "tso.pcapng")
    sizes = subprocess.run(
        [tshark, "-r", cap, "-T", "fields", "-e", "frame.len"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert sizes and max(map(int, sizes)) <= 1514
    bad = subprocess.run(
        [tshark, "-r", cap, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
         "-Y", "tcp.checksum.status == 0 || ip.checksum.status == 0"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert bad == "", bad[:2000]


# -- counting wire frames without cutting them -----------------------------------------------


def test_wire_count_matches_what_resolve_cuts() -> None:
    cases: list[tuple[bytes, Offload | None]] = [(tso_frame(b"x" * 100), None)]
    for size in (0, 1, 1447, 1448, 1449, 51200, 65000):
        big = tso_frame(bytes(range(256)) * (size // 256) + b"y" * (size % 256))
        for mss in (536, 1448, 9000):
            cases.append((big, Offload(True, 34, 16, GSO_TCPV4, mss, 70)))
    udp = bytes(Ether() / IP() / UDP() / (b"u" * 300))
    cases.append((udp, Offload(True, 34, 6)))  # a partial checksum: still one frame
    cases.append((udp, Offload(True, 34, 6, GSO_TCPV4, 100, 42)))  # nonsense: left whole
    for frame, off in cases:
        wires = resolve(frame, off)
        assert wire_count(frame, off) == (len(wires), sum(map(len, wires))), off


def test_switch_port_counters_give_guest_frames_and_wire_frames() -> None:
    big = tso_frame(bytes(range(256)) * 200)  # 51200 bytes of payload: 36 segments
    off = Offload(True, 34, 16, GSO_TCPV4, 1448, 70)
    wires = resolve(big, off)
    sw = Switch("lan")
    got: list[tuple[bytes, Offload | None]] = []
    a = sw.attach("a", lambda f, o: None)
    b = sw.attach("b", lambda f, o: got.append((f, o)))
    b.send(bytes(Ether(src="52:54:00:00:00:02", dst="ff:ff:ff:ff:ff:ff") / (b"l" * 50)))
    small = tso_frame(b"z" * 10)
    a.send(small)
    a.send(big, off)
    assert got[-1] == (big, off)  # delivered whole: the receiver takes offloads
    ca, cb = a.counters, b.counters
    # as the guest sent them: two frames
    assert (ca.rx_frames, ca.rx_bytes) == (2, len(small) + len(big))
    assert (cb.tx_frames, cb.tx_bytes) == (2, len(small) + len(big))
    # on the wire: the small frame and the 36 segments the big one stands for
    wire = (1 + len(wires), len(small) + sum(map(len, wires)))
    assert (ca.rx_wire_frames, ca.rx_wire_bytes) == wire
    assert (cb.tx_wire_frames, cb.tx_wire_bytes) == wire
    # frames that were never offloaded count the same both ways
    assert (cb.rx_wire_frames, cb.rx_wire_bytes) == (cb.rx_frames, cb.rx_bytes) == (1, 64)
    assert (ca.tx_wire_frames, ca.tx_wire_bytes) == (ca.tx_frames, ca.tx_bytes)
    sw.close()


async def test_linux_tcp_port_counters_count_the_wire_the_capture_shows(
    linux_image: il.LinuxImage, tmp_path: Path
) -> None:
    lab = (
        hv.Lab("tso", base=tmp_path)
        .switch("lan")
        .vm("a", kernel="linux", nics=[{"switch": "lan", "ip": "10.0.0.1/24",
                                        "capture": "a.pcapng"}],
            append='hv.run="sleep 1; traffic send -t 10.0.0.2 2000000; poweroff"')
        .vm("b", kernel="linux", nics=[{"switch": "lan", "ip": "10.0.0.2/24"}],
            append='hv.run="traffic recv -t -1"')
    )  # fmt: skip
    async with hv.open_lab(lab) as run:
        with trio.fail_after(300):
            info = await run.vms["a"].wait()
        assert info.exit_code == 0, run.vms["a"].console.transcript[-1500:]
        port = next(p for p in run.switches["lan"].ports.values() if p.name == "a.eth0")
        c = port.counters
        assert port.capture is not None
        # the guest handed over super-frames: far fewer than the wire carried
        assert c.rx_bytes >= 2_000_000 and c.rx_wire_frames > 4 * c.rx_frames, c
        assert c.rx_wire_frames >= 2_000_000 // 1448
        # the port's own capture records the wire, each way: the counters agree exactly
        assert c.rx_wire_frames + c.tx_wire_frames == port.capture.frames
