"""Virtio devices and the virtio-mmio transport: ``_queue`` (split virtqueues, device side),
``_mmio`` (the transport, a board device), ``_net`` (virtio-net), ``testing`` (a driver's side
of a queue, for device tests)."""

from hv.virtio._mmio import VirtioBackend, VirtioMmio
from hv.virtio._net import VirtioNet, virtio_net
from hv.virtio._queue import DescriptorChain, QueueError, Virtqueue

__all__ = [
    "DescriptorChain",
    "QueueError",
    "VirtioBackend",
    "VirtioMmio",
    "VirtioNet",
    "Virtqueue",
    "virtio_net",
]
