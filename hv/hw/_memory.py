"""Guest physical RAM as one host buffer, and the bounds-checked DMA accessor devices use.

RAM is an anonymous ``mmap`` that Unicorn maps with ``mem_map_ptr``: the engine and Python
share the same bytes, so a device reads a descriptor through a ``memoryview`` in a fraction of
a microsecond instead of a ``uc.mem_read`` round trip. Every access is checked against RAM's
bounds first: a guest address is input from a hostile party, and a bad one raises
``GuestError`` (the device's caller turns that into the device's error state and a counter).

Host writes and translated code: Unicorn does not notice the host writing guest RAM, so a
page that held executed code would keep running its old translation (a disk read that loads
a program). Every host write through this class records the pages it touched; the vCPU takes
them (``take_host_writes``) before its next slice and drops their translations, in one
batch per slice. Writes through a raw view must say so: use ``write_view``, which records.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import struct

from hv._errors import GuestError

PAGE_SHIFT = 12
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemory:
    """Guest RAM at physical ``base``, ``size`` bytes. Addresses are guest-physical."""

    def __init__(self, base: int, size: int, mapping: mmap.mmap | None = None) -> None:
        """``mapping``: RAM's bytes mapped from a snapshot file (``MAP_PRIVATE``: pages the
        guest never writes stay the file's, shared by every VM restored from it)."""
        if size <= 0 or size % mmap.PAGESIZE:
            raise ValueError(f"RAM size {size} must be a positive multiple of the page size")
        if mapping is not None and len(mapping) != size:
            raise ValueError(f"a mapping of {len(mapping)} bytes for {size} bytes of RAM")
        self.base = base
        self.size = size
        self.end = base + size
        self.from_file = mapping is not None
        self._mmap = (
            mapping
            if mapping is not None
            else mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        )
        self.view = memoryview(self._mmap)
        # Exporting a ctypes pointer pins the mapping for the life of this object: Unicorn
        # holds the raw address, so the buffer must never move or be unmapped under it.
        self._anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(self._mmap)
        self.host_address = ctypes.addressof(self._anchor)
        self._host_pages: set[int] = set()  # page numbers the host wrote since the last take
        self.host_writes = 0  # statistics: host write calls

    def contains(self, addr: int, length: int = 1) -> bool:
        return self.base <= addr and length >= 0 and addr + length <= self.end

    def _offset(self, addr: int, length: int) -> int:
        if not self.contains(addr, length):
            raise GuestError(
                f"guest address range {addr:#x}+{length:#x} is outside RAM "
                f"[{self.base:#x}, {self.end:#x})"
            )
        return addr - self.base

    def _wrote(self, off: int, length: int) -> None:
        self.host_writes += 1
        if length:
            first, last = off >> PAGE_SHIFT, (off + length - 1) >> PAGE_SHIFT
            if first == last:
                self._host_pages.add(first)
            else:
                self._host_pages.update(range(first, last + 1))

    # -- reads -----------------------------------------------------------------------------

    def read(self, addr: int, length: int) -> bytes:
        off = self._offset(addr, length)
        return bytes(self.view[off : off + length])

    def read_into(self, addr: int, out: bytearray | memoryview) -> None:
        """Copy ``len(out)`` bytes from guest RAM into ``out``."""
        n = len(out)
        off = self._offset(addr, n)
        out[:] = self.view[off : off + n]

    def slice(self, addr: int, length: int) -> memoryview:
        """A zero-copy, read-only window onto guest RAM (for DMA reads)."""
        off = self._offset(addr, length)
        return self.view[off : off + length].toreadonly()

    def read_u8(self, addr: int) -> int:
        return self.view[self._offset(addr, 1)]

    def read_u16(self, addr: int) -> int:
        return int(_U16.unpack_from(self.view, self._offset(addr, 2))[0])

    def read_u32(self, addr: int) -> int:
        return int(_U32.unpack_from(self.view, self._offset(addr, 4))[0])

    def read_u64(self, addr: int) -> int:
        return int(_U64.unpack_from(self.view, self._offset(addr, 8))[0])

    # -- writes (all recorded for code invalidation) -----------------------------------------

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        off = self._offset(addr, n)
        self.view[off : off + n] = data
        self._wrote(off, n)

    def write_view(self, addr: int, length: int) -> memoryview:
        """A zero-copy writable window (DMA writes); its pages count as written by the host."""
        off = self._offset(addr, length)
        self._wrote(off, length)
        return self.view[off : off + length]

    def write_u8(self, addr: int, value: int) -> None:
        off = self._offset(addr, 1)
        self.view[off] = value & 0xFF
        self._wrote(off, 1)

    def write_u16(self, addr: int, value: int) -> None:
        off = self._offset(addr, 2)
        _U16.pack_into(self.view, off, value & 0xFFFF)
        self._wrote(off, 2)

    def write_u32(self, addr: int, value: int) -> None:
        off = self._offset(addr, 4)
        _U32.pack_into(self.view, off, value & 0xFFFF_FFFF)
        self._wrote(off, 4)

    def write_u64(self, addr: int, value: int) -> None:
        off = self._offset(addr, 8)
        _U64.pack_into(self.view, off, value & 0xFFFF_FFFF_FFFF_FFFF)
        self._wrote(off, 8)

    @property
    def host_written(self) -> bool:
        """Has the host written guest RAM since the last ``take_host_writes``?"""
        return bool(self._host_pages)

    def take_host_writes(self) -> list[tuple[int, int]]:
        """The guest-physical ranges [start, end) the host wrote since the last call, merged
        from whole pages, in address order."""
        if not self._host_pages:
            return []
        pages = sorted(self._host_pages)
        self._host_pages.clear()
        ranges: list[tuple[int, int]] = []
        start = prev = pages[0]
        for p in pages[1:]:
            if p != prev + 1:
                ranges.append((start, prev + 1))
                start = p
            prev = p
        ranges.append((start, prev + 1))
        return [(self.base + (a << PAGE_SHIFT), self.base + (b << PAGE_SHIFT)) for a, b in ranges]

    # -- life ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._mmap.closed

    def clear(self) -> None:
        """Zero all of RAM (a reboot) and give its pages back to the host: a zeroed page
        costs no memory until the guest touches it again."""
        if self.from_file:
            # A private file mapping would read the file again: put anonymous (zero) pages
            # in its place, at the same address (the engine holds it).
            _remap_anonymous(self.host_address, self.size)
            self.from_file = False
        else:
            self._mmap.madvise(mmap.MADV_DONTNEED)
        self._host_pages.clear()

    def close(self) -> None:
        """Unmap RAM now (the machine is done): the host gets it back at once, whatever
        still refers to this object. Later accesses raise."""
        self._host_pages.clear()
        with contextlib.suppress(ValueError):
            self._mmap.madvise(mmap.MADV_DONTNEED)
        self.view.release()
        self._anchor = None
        with contextlib.suppress(BufferError):
            self._mmap.close()
        self.end = self.base  # every range check fails from now on


def _remap_anonymous(addr: int, size: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    fixed = 0x10  # MAP_FIXED
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | fixed
    got = libc.mmap(addr, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if got != addr:
        raise OSError(ctypes.get_errno(), "cannot replace guest RAM's mapping")
