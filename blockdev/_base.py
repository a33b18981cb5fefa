"""The one async interface every block backend has, and the errors it raises.

Theory of operation. A backend is a byte-addressed disk of ``size`` bytes (a multiple of
512) with asynchronous ``read``/``write``/``flush``/``discard``/``write_zeroes``. The device
(virtio-blk) checks every request against ``size`` and ``read_only`` before it calls the
backend, so a backend may assume its arguments are in range (it still checks, raising
``ValueError``: a caller's bug, not a guest's). I/O that the host refuses (EIO, ENOSPC) is a
``BlockIOError``: the device turns it into VIRTIO_BLK_S_IOERR and a log line, and the VM goes
on. ``flush`` returns only once everything written before it is on stable storage, data and
metadata in order (``fdatasync``). Backends are used from the trio thread; blocking work
runs off the event loop inside them.
"""

from __future__ import annotations

import abc
import collections

SECTOR = 512


class BlockError(Exception):
    """A backend could not be opened or created (bad file, format, size, backing chain)."""


class BlockIOError(BlockError):
    """The host's I/O failed (EIO, ENOSPC, ...): the guest sees an I/O error."""


class BlockBackend(abc.ABC):
    """An open disk. ``size`` in bytes; ``read_only``; ``counters`` for what it did."""

    def __init__(self, size: int, read_only: bool = False) -> None:
        if size < 0 or size % SECTOR:
            raise BlockError(f"a disk's size must be a multiple of {SECTOR} bytes, not {size}")
        self.size = size
        self.read_only = read_only
        self.counters: collections.Counter[str] = collections.Counter()

    def check(self, offset: int, length: int, write: bool = False) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"{offset}+{length} is outside the disk ({self.size} bytes)")
        if write and self.read_only:
            raise ValueError("the disk is read-only")

    @abc.abstractmethod
    async def read(self, offset: int, length: int) -> bytes: ...

    @abc.abstractmethod
    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    @abc.abstractmethod
    async def flush(self) -> None: ...

    async def discard(self, offset: int, length: int) -> None:
        """Forget the range (reads may return zeroes or the old data). Default: nothing."""
        self.check(offset, length, write=True)

    async def write_zeroes(self, offset: int, length: int) -> None:
        """Zero the range (default: write zeroes in 1 MiB pieces)."""
        self.check(offset, length, write=True)
        chunk = bytes(min(length, 1 << 20))
        done = 0
        while done < length:
            n = min(len(chunk), length - done)
            await self.write(offset + done, memoryview(chunk)[:n])
            done += n

    @abc.abstractmethod
    async def close(self) -> None: ...

    def describe(self) -> str:
        return f"{type(self).__name__}({self.size} bytes{', ro' if self.read_only else ''})"
