"""Virtio devices and the virtio-mmio transport: ``_queue`` (split virtqueues, device side),
``_mmio`` (the transport, a board device), ``_net`` (virtio-net), ``_blk`` (virtio-blk, over a
``blockdev`` backend), ``_vsock`` (virtio-vsock: host-guest streams), ``_rng`` (virtio-rng),
``testing`` (a driver's side of a queue, for device tests)."""

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
from hv.virtio._rng import VirtioRng, virtio_rng
from hv.virtio._vsock import (
    VirtioVsock,
    VsockError,
    VsockListener,
    VsockRefused,
    VsockStream,
    VsockUnavailable,
    virtio_vsock,
)

# The names other packages use, loaded on first use (importing one private module of this
# package does not load the others).
_FACE = {
    "VirtioMmio": "hv.virtio._mmio",
    "VirtioNet": "hv.virtio._net",
    "VirtioRng": "hv.virtio._rng",
    "VirtioVsock": "hv.virtio._vsock",
    "VsockError": "hv.virtio._vsock",
    "VsockRefused": "hv.virtio._vsock",
    "VsockUnavailable": "hv.virtio._vsock",
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
    "VirtioRng",
    "VirtioVsock",
    "Virtqueue",
    "VsockError",
    "VsockListener",
    "VsockRefused",
    "VsockStream",
    "VsockUnavailable",
    "parse_request",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "virtio_vsock",
]
