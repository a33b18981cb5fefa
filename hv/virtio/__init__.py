"""Virtio devices and the virtio-mmio transport (the network issue fills this in)."""
