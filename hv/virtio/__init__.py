"""Virtio devices and the virtio-mmio transport: ``_queue`` (split virtqueues, device side),
``_mmio`` (the transport, a board device), ``_net`` (virtio-net), ``_blk`` (virtio-blk, over a
``blockdev`` backend), ``testing`` (a driver's side of a queue, for device tests)."""

from hv.virtio._blk import BadRequest, BlkRequest, VirtioBlk, parse_request, virtio_blk
from hv.virtio._mmio import VirtioBackend, VirtioMmio
from hv.virtio._net import VirtioNet, virtio_net
from hv.virtio._queue import DescriptorChain, QueueError, Virtqueue

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
