"""Offloaded frames: a checksum still to fill in, a TCP segment still to cut (TSO/GSO).

A guest NIC that negotiated offloads hands the switch frames the wire never sees as they
are: a TCP/UDP checksum left partial (to be computed over ``frame[csum_start:]`` and stored at
``csum_start + csum_offset``), and TCPv4 segments up to 64 KiB to be cut into ``gso_size``
payloads. Such a frame travels with an ``Offload``. A receiver that can take it as it is
(another offloading NIC) gets it whole: one trip through the switch instead of 44. Everyone
else (a firmware guest, a capture, a port without offloads) gets ``resolve``'s result: real
frames, segmented, with every checksum filled in. Hand-written (no library does this on
raw bytes at this speed); IPv4 and TCP/UDP only, as the NICs offer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

GSO_NONE = 0
GSO_TCPV4 = 1
ETH = 14


@dataclass(frozen=True, slots=True)
class Offload:
    needs_csum: bool = False
    csum_start: int = 0  # from the start of the frame
    csum_offset: int = 0
    gso_type: int = GSO_NONE
    gso_size: int = 0  # TCP payload bytes per segment
    hdr_len: int = 0  # Ethernet + IP + TCP header bytes (as the driver says; recomputed here)


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sum16(data: bytes | bytearray | memoryview) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    return (~_fold(_sum16(data) + initial)) & 0xFFFF


def finish_checksum(frame: bytes, start: int, offset: int) -> bytes:
    """The frame with its partial checksum completed (the pseudo-header sum is already in
    the checksum field, as drivers leave it for CHECKSUM_PARTIAL)."""
    if not 0 <= start < len(frame) or start + offset + 2 > len(frame):
        return frame  # nonsense from the guest: pass it on untouched (the receiver drops it)
    b = bytearray(frame)
    c = checksum(b[start:])
    if offset == 6 and c == 0:  # UDP: a computed 0 goes on the wire as 0xFFFF
        c = 0xFFFF
    struct.pack_into("!H", b, start + offset, c)
    return bytes(b)


def _tcp4_layout(frame: bytes, mss: int) -> tuple[int, int, int] | None:
    """Where an IPv4/TCP frame's IP header, TCP header and payload start; None if it is not
    one that can be cut (then it goes on whole)."""
    ip0 = ETH + 4 if frame[12:14] == b"\x81\x00" else ETH  # an 802.1Q tag before IPv4
    if len(frame) < ip0 + 40 or frame[ip0 - 2 : ip0] != b"\x08\x00" or mss <= 0:
        return None
    tcp0 = ip0 + (frame[ip0] & 0xF) * 4
    if frame[ip0 + 9] != 6 or len(frame) < tcp0 + 20:
        return None
    return ip0, tcp0, tcp0 + (frame[tcp0 + 12] >> 4) * 4


def segment_tcp4(frame: bytes, mss: int) -> list[bytes]:
    """Cut an IPv4/TCP frame with a payload larger than ``mss`` into wire-size segments, each
    with its IP and TCP checksums filled in."""
    layout = _tcp4_layout(frame, mss)
    if layout is None:
        return [frame]
    ip0, tcp0, payload0 = layout
    ihl, thl = tcp0 - ip0, payload0 - tcp0
    payload = frame[payload0:]
    src, dst = frame[ip0 + 12 : ip0 + 16], frame[ip0 + 16 : ip0 + 20]
    ip_id = struct.unpack_from("!H", frame, ip0 + 4)[0]
    seq = struct.unpack_from("!I", frame, tcp0 + 4)[0]
    flags = frame[tcp0 + 13]
    pseudo = _sum16(src + dst) + 6
    out = []
    n = max(1, (len(payload) + mss - 1) // mss)
    for i in range(n):
        chunk = payload[i * mss : (i + 1) * mss]
        last = i == n - 1
        seg = bytearray(frame[:payload0]) + chunk
        struct.pack_into("!H", seg, ip0 + 2, ihl + thl + len(chunk))
        struct.pack_into("!H", seg, ip0 + 4, (ip_id + i) & 0xFFFF)
        struct.pack_into("!H", seg, ip0 + 10, 0)
        struct.pack_into("!H", seg, ip0 + 10, checksum(seg[ip0:tcp0]))
        struct.pack_into("!I", seg, tcp0 + 4, (seq + i * mss) & 0xFFFF_FFFF)
        f = flags
        if not last:
            f &= ~0x09  # FIN and PSH only on the last segment
        if i:
            f &= ~0x80  # CWR only on the first
        seg[tcp0 + 13] = f
        struct.pack_into("!H", seg, tcp0 + 16, 0)
        tcp_len = thl + len(chunk)
        struct.pack_into("!H", seg, tcp0 + 16, checksum(seg[tcp0:], pseudo + tcp_len))
        out.append(bytes(seg))
    return out


def wire_count(frame: bytes, off: Offload | None) -> tuple[int, int]:
    """(frames, bytes) that ``resolve(frame, off)`` would give, computed from the headers
    without cutting anything: a TSO frame of ``n`` segments is ``n`` frames, each carrying
    its own copy of the headers. Cheap enough for counters on the forwarding path."""
    if off is None or off.gso_type != GSO_TCPV4 or not off.gso_size:
        return 1, len(frame)  # at most a checksum to fill in: one frame of the same size
    mss = off.gso_size
    layout = _tcp4_layout(frame, mss)
    if layout is None:
        return 1, len(frame)
    payload0 = layout[2]
    payload = max(0, len(frame) - payload0)
    n = max(1, (payload + mss - 1) // mss)
    return n, n * min(payload0, len(frame)) + payload


def resolve(frame: bytes, off: Offload | None) -> list[bytes]:
    """The wire frames an offloaded frame stands for (segmented, checksums filled in)."""
    if off is None:
        return [frame]
    if off.gso_type == GSO_TCPV4 and off.gso_size:
        return segment_tcp4(frame, off.gso_size)
    if off.needs_csum:
        return [finish_checksum(frame, off.csum_start, off.csum_offset)]
    return [frame]
