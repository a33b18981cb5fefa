"""A frame on its way through the fabric: its bytes, and what an offloaded one stands for.

A NIC that negotiated offloads hands over frames the wire never sees as they are (a partial
checksum, a 64 KiB TCP segment still to cut: ``netfabric.offload``). Such a frame crosses
the switch once, whole, with its ``Offload``; whoever needs it as a wire carries it (a
capture, a listener, a receiver that cannot take offloads, an impaired cable) asks
``wire()``. The segments are cut the first time that is asked and kept, so one frame is
segmented once however many capture points and receivers see it. ``wire_count`` says how
many wire frames (and bytes) it stands for without cutting anything (for counters).

A plain frame (no offload) is its own wire form: ``wire()`` is ``(data,)`` and costs no
segmenting and no cache. Construction is three attribute stores (``__slots__``), cheap
enough for every frame on the forwarding path.
"""

from __future__ import annotations

from collections.abc import Sequence

from netfabric.offload import Offload, resolve, wire_count

__all__ = ["Frame"]


class Frame:
    """``data``: the frame's bytes as its sender handed them over; ``offload``: its
    ``Offload`` (None for a frame that is already what the wire carries)."""

    __slots__ = ("_wire", "data", "offload")

    def __init__(self, data: bytes, offload: Offload | None = None) -> None:
        self.data = data
        self.offload = offload
        self._wire: tuple[bytes, ...] | None = None

    def wire(self) -> Sequence[bytes]:
        """The frames a wire carries for this one (segmented, checksums filled in),
        computed once and kept."""
        if self.offload is None:
            return (self.data,)
        got = self._wire
        if got is None:
            got = self._wire = tuple(resolve(self.data, self.offload))
        return got

    @property
    def wire_count(self) -> tuple[int, int]:
        """(frames, bytes) ``wire()`` gives, from the headers alone (nothing is cut)."""
        return wire_count(self.data, self.offload)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Frame({len(self.data)} bytes, {self.offload!r})"
