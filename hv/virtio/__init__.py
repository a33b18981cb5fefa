"""Virtio devices and the virtio-mmio transport: ``_queue`` (split virtqueues, device side),
``_mmio`` (the transport, a board device), ``_net`` (virtio-net), ``_blk`` (virtio-blk, over a
``blockdev`` backend), ``testing`` (a driver's side of a queue, for device tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.virtio._blk import virtio_blk
    from hv.virtio._mmio import VirtioMmio
    from hv.virtio._net import VirtioNet

from hv.virtio._blk import BadRequest, BlkRequest, VirtioBlk, parse_request, virtio_blk
from hv.virtio._mmio import VirtioBackend, VirtioMmio
from hv.virtio._net import VirtioNet, virtio_net
from hv.virtio._queue import DescriptorChain, QueueError, Virtqueue

# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "VirtioMmio": "hv.virtio._mmio",
    "VirtioNet": "hv.virtio._net",
    "virtio_blk": "hv.virtio._blk",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _FACE, globals(), name)


__all__ = [
    "BadRequest",
    "BlkRequest",
    "DescriptorChain",
    "QueueError",
    "VirtioBackend",
    "VirtioBlk",
    "VirtioMmio",
    "VirtioNet",
    "Virtqueue",
    "parse_request",
    "virtio_blk",
    "virtio_net",
]
