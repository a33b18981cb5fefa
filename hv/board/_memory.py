"""Guest physical RAM as one host buffer, and the bounds-checked accessor devices use.

RAM is an anonymous ``mmap`` that Unicorn maps with ``mem_map_ptr``: the engine and Python
share the same bytes, so a device reads a descriptor through a ``memoryview`` in a fraction of
a microsecond instead of a ``uc.mem_read`` round trip. Every access is checked against RAM's
bounds first: a guest address is input from a hostile party.
"""

from __future__ import annotations

import ctypes
import mmap
import struct

from hv._errors import GuestError

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemory:
    """Guest RAM at physical ``base``, ``size`` bytes. Addresses are guest-physical."""

    def __init__(self, base: int, size: int) -> None:
        if size <= 0 or size % mmap.PAGESIZE:
            raise ValueError(f"RAM size {size} must be a positive multiple of the page size")
        self.base = base
        self.size = size
        self.end = base + size
        self._mmap = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self._mmap)
        # Exporting a ctypes pointer pins the mapping for the life of this object: Unicorn
        # holds the raw address, so the buffer must never move or be unmapped under it.
        self._anchor = ctypes.c_char.from_buffer(self._mmap)
        self.host_address = ctypes.addressof(self._anchor)

    def contains(self, addr: int, length: int = 1) -> bool:
        return self.base <= addr and length >= 0 and addr + length <= self.end

    def _offset(self, addr: int, length: int) -> int:
        if not self.contains(addr, length):
            raise GuestError(
                f"guest address range {addr:#x}+{length:#x} is outside RAM "
                f"[{self.base:#x}, {self.end:#x})"
            )
        return addr - self.base

    def read(self, addr: int, length: int) -> bytes:
        off = self._offset(addr, length)
        return bytes(self.view[off : off + length])

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        off = self._offset(addr, len(data))
        self.view[off : off + len(data)] = data

    def slice(self, addr: int, length: int) -> memoryview:
        """A zero-copy window onto guest RAM (for DMA); bounds-checked like every access."""
        off = self._offset(addr, length)
        return self.view[off : off + length]

    def read_u32(self, addr: int) -> int:
        return int(_U32.unpack_from(self.view, self._offset(addr, 4))[0])

    def read_u64(self, addr: int) -> int:
        return int(_U64.unpack_from(self.view, self._offset(addr, 8))[0])

    def write_u64(self, addr: int, value: int) -> None:
        _U64.pack_into(self.view, self._offset(addr, 8), value)

    def clear(self) -> None:
        """Zero all of RAM (for a reboot)."""
        self._mmap.seek(0)
        self._mmap.write(bytes(self.size))
