"""A guest driver's side of a split virtqueue, in plain guest memory, for testing devices
without a VM (as rust-vmm's ``MockSplitQueue``): lay out the rings, make buffers available,
read what the device handed back; and ``activate``, the driver's side of the virtio-mmio
handshake that brings a device up on such queues. Public: device authors use them in their own
tests.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hv.hw import GuestMemory
from hv.virtio import _mmio as M
from hv.virtio._queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, Virtqueue

_DESC = struct.Struct("<QIHH")


@dataclass(frozen=True)
class Used:
    head: int
    written: int
    data: bytes  # what the device wrote into the chain's writable buffers


class DriverQueue:
    """One queue of ``size`` descriptors laid out from ``base`` in ``mem``; buffers are
    allocated from ``heap`` upwards."""

    def __init__(
        self, mem: GuestMemory, size: int, base: int, heap: int, event_idx: bool = False
    ) -> None:
        self.mem, self.size, self.event_idx = mem, size, event_idx
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 3) & ~3
        self.heap = heap
        self._free = list(range(size))
        self._avail_idx = 0
        self._used_seen = 0
        self._chains: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}
        for addr, n in (
            (self.desc, 16 * size),
            (self.avail, 6 + 2 * size),
            (self.used, 6 + 8 * size),
        ):
            mem.write(addr, bytes(n))

    def device_queue(self) -> Virtqueue:
        """The device's side of this queue, as a transport would build it."""
        return Virtqueue(self.mem, self.size, self.desc, self.avail, self.used, self.event_idx)

    def _alloc(self, data: bytes | int) -> tuple[int, int]:
        n = data if isinstance(data, int) else len(data)
        addr = self.heap
        self.heap += (n + 15) & ~15 or 16
        if not isinstance(data, int):
            self.mem.write(addr, data)
        return addr, n

    def write_desc(self, table: int, index: int, addr: int, n: int, flags: int, nxt: int) -> None:
        self.mem.write(table + 16 * index, _DESC.pack(addr, n, flags, nxt))

    def add(
        self,
        readable: Sequence[bytes] = (),
        writable: Sequence[int] = (),
        indirect: bool = False,
    ) -> int:
        """Make a chain available: device-readable buffers with these bytes, then writable
        buffers of these sizes. Returns its head descriptor index."""
        bufs = [(*self._alloc(b), 0) for b in readable] + [
            (*self._alloc(n), DESC_F_WRITE) for n in writable
        ]
        if indirect:
            table, _ = self._alloc(16 * len(bufs))
            for i, (addr, n, flags) in enumerate(bufs):
                more = DESC_F_NEXT if i + 1 < len(bufs) else 0
                self.write_desc(table, i, addr, n, flags | more, i + 1 if more else 0)
            head = self._free.pop(0)
            self.write_desc(self.desc, head, table, 16 * len(bufs), DESC_F_INDIRECT, 0)
            used_descs = [head]
        else:
            used_descs = [self._free.pop(0) for _ in bufs]
            for i, (addr, n, flags) in enumerate(bufs):
                more = DESC_F_NEXT if i + 1 < len(bufs) else 0
                nxt = used_descs[i + 1] if more else 0
                self.write_desc(self.desc, used_descs[i], addr, n, flags | more, nxt)
            head = used_descs[0]
        self._chains[head] = (used_descs, [(a, n) for a, n, f in bufs if f & DESC_F_WRITE])
        self.make_available(head)
        return head

    def make_available(self, head: int) -> None:
        slot = self._avail_idx % self.size
        self.mem.write_u16(self.avail + 4 + 2 * slot, head)
        self._avail_idx = (self._avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail + 2, self._avail_idx)

    def take_used(self) -> list[Used]:
        """Chains the device handed back since the last call (their descriptors are freed)."""
        out = []
        idx = self.mem.read_u16(self.used + 2)
        while self._used_seen != idx:
            slot = self._used_seen % self.size
            head = self.mem.read_u32(self.used + 4 + 8 * slot)
            written = self.mem.read_u32(self.used + 8 + 8 * slot)
            descs, wbufs = self._chains.pop(head)
            data = bytearray()
            left = written
            for addr, n in wbufs:
                take = min(n, left)
                data += self.mem.read(addr, take)
                left -= take
            out.append(Used(head, written, bytes(data)))
            self._free += descs
            self._used_seen = (self._used_seen + 1) & 0xFFFF
        return out

    def set_no_interrupt(self, on: bool) -> None:
        self.mem.write_u16(self.avail, 1 if on else 0)

    def set_used_event(self, idx: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * self.size, idx)


def activate(dev: M.VirtioMmio, features: int, queues: Sequence[DriverQueue]) -> int:
    """Bring ``dev`` up as a guest driver does (virtio 1.x, 4.2.3.1): reset, ACKNOWLEDGE,
    DRIVER, write ``features`` (both 32-bit halves), set FEATURES_OK and read it back; if the
    device refused the features, stop there. Then set up ``queues[i]`` as queue ``i`` (QueueSel,
    QueueNum, the descriptor, driver and device ring addresses, QueueReady) and set DRIVER_OK.
    Returns the Status register as read at the end, for the caller to check (``0x0F`` when the
    device runs; NEEDS_RESET if it refused a ring)."""

    def w(off: int, value: int) -> None:
        dev.mmio_write(off, 4, value)

    w(M.R_STATUS, 0)
    w(M.R_STATUS, M.STATUS_ACKNOWLEDGE)
    w(M.R_STATUS, M.STATUS_ACKNOWLEDGE | M.STATUS_DRIVER)
    for sel in (0, 1):
        w(M.R_DRIVER_FEATURES_SEL, sel)
        w(M.R_DRIVER_FEATURES, (features >> (32 * sel)) & 0xFFFF_FFFF)
    features_ok = M.STATUS_ACKNOWLEDGE | M.STATUS_DRIVER | M.STATUS_FEATURES_OK
    w(M.R_STATUS, features_ok)
    if not dev.mmio_read(M.R_STATUS, 4) & M.STATUS_FEATURES_OK:
        return dev.mmio_read(M.R_STATUS, 4)
    for i, q in enumerate(queues):
        w(M.R_QUEUE_SEL, i)
        most = dev.mmio_read(M.R_QUEUE_NUM_MAX, 4)
        if not 0 < q.size <= most:
            raise ValueError(f"queue {i}: {q.size} descriptors, the device offers {most}")
        w(M.R_QUEUE_NUM, q.size)
        for low, addr in (
            (M.R_QUEUE_DESC_LOW, q.desc),
            (M.R_QUEUE_DRIVER_LOW, q.avail),
            (M.R_QUEUE_DEVICE_LOW, q.used),
        ):
            w(low, addr & 0xFFFF_FFFF)
            w(low + 4, addr >> 32)
        w(M.R_QUEUE_READY, 1)
    w(M.R_STATUS, features_ok | M.STATUS_DRIVER_OK)
    return dev.mmio_read(M.R_STATUS, 4)
