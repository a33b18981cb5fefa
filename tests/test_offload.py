"""Offloaded frames resolved in software (netfabric.offload): TSO segments and partial
checksums, checked by scapy's own checksum computation; a capture of offloaded Linux TCP
traffic has only wire-size frames with good checksums (tshark)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from test_lab import hv_up

from hv.build import _image_linux as il
from netfabric.offload import GSO_TCPV4, Offload, finish_checksum, resolve, segment_tcp4


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
