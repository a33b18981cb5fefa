"""The split virtqueue, device side (virtio 1.x, section 2.7), sans-IO over guest memory.

Theory of operation. The driver (the guest) owns three areas in guest RAM: the descriptor
table (``size`` entries of 16 bytes: addr u64, len u32, flags u16, next u16), the available
ring (flags u16, idx u16, ring[size] u16, and with EVENT_IDX used_event u16) and the used ring
(flags u16, idx u16, ring[size] of {id u32, len u32}, and with EVENT_IDX avail_event u16). The
device takes chains the driver made available (``pop``), reads and writes the buffers they
describe, and hands each chain back with the number of bytes it wrote (``push``). Whether the
driver wants an interrupt after that is ``needs_interrupt`` (NO_INTERRUPT flag, or EVENT_IDX).

The guest is hostile. Every address comes from it, so every access goes through the
bounds-checked ``GuestMemory`` (a bad address is a ``GuestError``), and every structure is
checked before use: a ring outside RAM or misaligned, a queue size that is not a power of two,
an available index that runs more than ``size`` ahead, a descriptor index out of the table, a
chain longer than the table (a loop), an indirect table that is empty, misaligned, too long,
nested, or marked NEXT, a device-readable descriptor after a device-writable one, a chain
whose total length passes ``MAX_CHAIN_BYTES``. Each raises ``QueueError`` (a ``GuestError``)
naming the problem; the device counts it and sets DEVICE_NEEDS_RESET. Nothing here loops more
than ``size`` times per chain, allocates per guest-chosen length, or touches memory outside RAM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hv._errors import GuestError
from hv.hw import Fields, GuestMemory, State

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
MAX_QUEUE_SIZE = 32768
# A chain's buffers together (more is a guest's mistake or attack; a 64 KiB TSO frame with
# headers is far below).
MAX_CHAIN_BYTES = 1 << 24

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")


class QueueError(GuestError):
    """The driver broke the virtqueue's rules (the device should need a reset)."""


@dataclass
class DescriptorChain:
    """One available chain: its head index, and its buffers in order, split by direction."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)  # (guest addr, len)
    writable: list[tuple[int, int]] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)

    def read(self, mem: GuestMemory, limit: int = MAX_CHAIN_BYTES) -> bytes:
        """The device-readable bytes, concatenated (at most ``limit``)."""
        out = bytearray()
        for addr, n in self.readable:
            if len(out) >= limit:
                break
            take = min(n, limit - len(out))
            if take:  # a zero-length descriptor is allowed: it adds nothing
                out += mem.read(addr, take)
        return bytes(out)

    def write(self, mem: GuestMemory, data: bytes | bytearray | memoryview) -> int:
        """Fill the device-writable buffers with ``data`` in order; return bytes written."""
        done = 0
        for addr, n in self.writable:
            if done >= len(data):
                break
            take = min(n, len(data) - done)
            mem.write(addr, data[done : done + take])
            done += take
        return done


class Virtqueue:
    """The device's side of one split virtqueue."""

    def __init__(
        self,
        mem: GuestMemory,
        size: int,
        desc: int,
        avail: int,
        used: int,
        event_idx: bool = False,
    ) -> None:
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise QueueError(f"queue size {size} is not a power of two in 1..{MAX_QUEUE_SIZE}")
        for what, addr, align, length in (
            ("descriptor table", desc, 16, 16 * size),
            ("available ring", avail, 2, 6 + 2 * size),
            ("used ring", used, 4, 6 + 8 * size),
        ):
            if addr % align:
                raise QueueError(f"{what} at {addr:#x} is not {align}-byte aligned")
            if not mem.contains(addr, length):
                raise QueueError(f"{what} at {addr:#x}+{length:#x} is outside guest RAM")
        self.mem = mem
        self.size = size
        self.desc = desc
        self.avail = avail
        self.used = used
        self.event_idx = event_idx
        self.last_avail = 0  # next available ring slot the device reads (free-running u16)
        self.used_idx = 0  # next used ring slot the device writes (free-running u16)
        self._signalled_used = 0  # used_idx when the driver was last interrupted

    # -- snapshots -------------------------------------------------------------------------

    def save_state(self) -> State:
        """The device's position in the rings (the rings themselves are guest RAM)."""
        return {
            "last_avail": self.last_avail,
            "used_idx": self.used_idx,
            "signalled_used": self._signalled_used,
        }

    def load_state(self, st: Fields) -> None:
        """Free-running u16 indices: any value is one the device can be at (each use is
        taken modulo the size)."""
        self.last_avail = st.int("last_avail", 0, 0xFFFF)
        self.used_idx = st.int("used_idx", 0, 0xFFFF)
        self._signalled_used = st.int("signalled_used", 0, 0xFFFF)

    # -- taking chains ---------------------------------------------------------------------

    def avail_idx(self) -> int:
        return self.mem.read_u16(self.avail + 2)

    def pending(self) -> int:
        """Chains the driver made available that the device has not taken yet."""
        n = (self.avail_idx() - self.last_avail) & 0xFFFF
        if n > self.size:
            raise QueueError(
                f"available index ran {n} ahead of the device (queue size {self.size})"
            )
        return n

    def pop(self) -> DescriptorChain | None:
        """The next available chain, checked; None if there is none."""
        if not self.pending():
            return None
        slot = self.last_avail % self.size
        head = self.mem.read_u16(self.avail + 4 + 2 * slot)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:  # avail_event: the driver need not notify before it passes this
            self.mem.write_u16(self.used + 4 + 8 * self.size, self.last_avail)
        return self._chain(head)

    def unpop(self, n: int) -> None:
        """Give back the last ``n`` chains taken (not used yet): they are taken again next."""
        self.last_avail = (self.last_avail - n) & 0xFFFF
        if self.event_idx:
            self.mem.write_u16(self.used + 4 + 8 * self.size, self.last_avail)

    def _read_desc(self, table: int, index: int) -> tuple[int, int, int, int]:
        addr, length, flags, nxt = _DESC.unpack(self.mem.read(table + 16 * index, 16))
        return addr, length, flags, nxt

    def _chain(self, head: int) -> DescriptorChain:
        if head >= self.size:
            raise QueueError(f"chain head {head} is outside the descriptor table ({self.size})")
        chain = DescriptorChain(head)
        table, limit, index = self.desc, self.size, head
        indirect = False
        total = 0
        for _ in range(limit + 1):
            addr, length, flags, nxt = self._read_desc(table, index)
            if flags & DESC_F_INDIRECT:
                if indirect:
                    raise QueueError("an indirect descriptor inside an indirect table")
                if flags & DESC_F_NEXT:
                    raise QueueError("an indirect descriptor with NEXT set")
                if length == 0 or length % 16 or length // 16 > MAX_QUEUE_SIZE:
                    raise QueueError(f"indirect table of {length} bytes (16 per descriptor)")
                if addr % 16 or not self.mem.contains(addr, length):
                    raise QueueError(f"indirect table at {addr:#x}+{length:#x} is unusable")
                if chain.readable or chain.writable:
                    raise QueueError("an indirect descriptor after other descriptors")
                table, limit, index, indirect = addr, length // 16, 0, True
                continue
            if not self.mem.contains(addr, length):
                raise QueueError(f"buffer {addr:#x}+{length:#x} is outside guest RAM")
            total += length
            if total > MAX_CHAIN_BYTES:
                raise QueueError(f"chain longer than {MAX_CHAIN_BYTES} bytes")
            if flags & DESC_F_WRITE:
                chain.writable.append((addr, length))
            elif chain.writable:
                raise QueueError("a device-readable descriptor after a device-writable one")
            else:
                chain.readable.append((addr, length))
            if not flags & DESC_F_NEXT:
                return chain
            if nxt >= limit:
                raise QueueError(f"next descriptor {nxt} is outside the table ({limit})")
            index = nxt
        raise QueueError(f"descriptor chain from {head} loops (longer than its table)")

    # -- giving chains back ------------------------------------------------------------------

    def push(self, head: int, written: int) -> None:
        """Hand the chain at ``head`` back, with ``written`` bytes written into it."""
        slot = self.used_idx % self.size
        self.mem.write(self.used + 4 + 8 * slot, _USED_ELEM.pack(head, written & 0xFFFF_FFFF))
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.mem.write_u16(self.used + 2, self.used_idx)

    def needs_interrupt(self) -> bool:
        """After pushes: does the driver want an interrupt now? (Clears the pending state.)"""
        old, new = self._signalled_used, self.used_idx
        if old == new:
            return False
        self._signalled_used = new
        if self.event_idx:
            used_event = self.mem.read_u16(self.avail + 4 + 2 * self.size)
            return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not self.mem.read_u16(self.avail) & AVAIL_F_NO_INTERRUPT
