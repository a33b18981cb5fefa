"""The pieces of the fabric's saved state that several objects share: times and other
floats (exactly, as ``float.hex`` text: a restored deadline is the same double), a
``random.Random``'s exact state, and a frame in flight (bytes and its ``Offload``).

Each ``load_*`` reads through a ``StateReader`` (``netfabric._state``), checks what it reads,
and raises through ``st.fail`` (hv's ``SnapshotError`` naming the value), never anything else.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

from netfabric._state import StateReader
from netfabric.frame import Frame
from netfabric.offload import Offload

# The largest frame the fabric carries: a 64 KiB offloaded one from a NIC or a TAP, with
# room for the VLAN tags the switch may add.
MAX_FRAME = 65536 + 64
# A time on the fabric's clock, in seconds (virtual: from 0; real: a monotonic clock). Far
# more than any run lasts, small enough that arithmetic on it stays exact to the nanosecond.
MAX_TIME = float(1 << 32)
MAX_FLOAT_TEXT = 40  # "-0x1.fffffffffffffp+1023" is 24 characters

# random.Random's state (version 3): 624 32-bit words and the position in them.
_MT_WORDS = 624


def save_float(x: float) -> str:
    """``x`` exactly, as text (``float.hex``)."""
    return x.hex()


def load_float(st: StateReader, key: str, lo: float = 0.0, hi: float = MAX_TIME) -> float:
    """The float saved as ``key`` (``save_float``), finite and in ``lo..hi``."""
    text = st.str(key, MAX_FLOAT_TEXT)
    try:
        x = float.fromhex(text)
    except (ValueError, OverflowError):
        raise st.fail(key, f"{text!r} is not a number (hexadecimal float)") from None
    st.check(math.isfinite(x), key, f"{text!r} is not a finite number")
    st.check(lo <= x <= hi, key, f"{x!r} is out of range {lo!r}..{hi!r}")
    return x


def load_opt_float(
    st: StateReader, key: str, lo: float = 0.0, hi: float = MAX_TIME
) -> float | None:
    """``load_float``, or None if ``key`` is absent (an optional float is saved only when
    it is there)."""
    return load_float(st, key, lo, hi) if st.has(key) else None


_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")


def float_bits(x: float) -> int:
    """``x`` exactly, as the 64 bits of its double (for long columns of times)."""
    return int(_U64.unpack(_F64.pack(x))[0])


def bits_float(bits: int) -> float:
    """The double of ``float_bits`` (any 64 bits give one; the caller checks it is finite
    and in range)."""
    return float(_F64.unpack(_U64.pack(bits))[0])


def save_rng(rng: random.Random) -> list[int]:
    """A generator's exact state: its 624 words and its position (``getstate``)."""
    version, words, gauss = rng.getstate()
    assert version == 3 and gauss is None, "the fabric's generators draw random() only"
    return list(words)


def load_rng(st: StateReader, key: str, rng: random.Random) -> None:
    """Put the state saved as ``key`` (``save_rng``) into ``rng``: it goes on with the
    same numbers the saved one would have drawn."""
    words = st.ints(key, _MT_WORDS + 1, 0, 0xFFFF_FFFF, length=_MT_WORDS + 1)
    st.check(words[-1] <= _MT_WORDS, f"{key}[{_MT_WORDS}]", f"{words[-1]} is not 0..624")
    st.check(any(words[:_MT_WORDS]), key, "a generator's words are never all zero")
    try:
        rng.setstate((3, tuple(words), None))
    except (ValueError, TypeError, OverflowError) as e:  # not expected after the checks
        raise st.fail(key, f"not a generator's state ({e})") from None


def save_frame(frame: Frame) -> dict[str, Any]:
    """A frame in flight: its bytes and its offload (absent for a wire frame)."""
    out: dict[str, Any] = {"data": frame.data}
    off = frame.offload
    if off is not None:
        out["offload"] = [
            int(off.needs_csum), off.csum_start, off.csum_offset, off.gso_type, off.gso_size,
            off.hdr_len,
        ]  # fmt: skip
    return out


def load_frame(st: StateReader) -> Frame:
    """A frame saved by ``save_frame``: at most ``MAX_FRAME`` bytes, the offload's fields
    in the ranges a NIC's header gives them."""
    data = st.bytes("data", MAX_FRAME)
    off = None
    if st.has("offload"):
        f = st.ints("offload", 6, 0, 0xFFFF, length=6)
        st.check(f[0] <= 1, "offload[0]", f"{f[0]} is not 0 or 1 (needs_csum)")
        st.check(f[3] <= 0xFF, "offload[3]", f"{f[3]} is not a GSO type (0..255)")
        off = Offload(bool(f[0]), f[1], f[2], f[3], f[4], f[5])
    return Frame(data, off)
