"""A disk in host memory: for tests and scratch disks. Pages are allocated on first write,
so a large empty disk costs nothing."""

from __future__ import annotations

from blockdev._base import BlockBackend

PAGE = 1 << 16


class MemoryDisk(BlockBackend):
    def __init__(self, size: int, read_only: bool = False, data: bytes = b"") -> None:
        super().__init__(size, read_only)
        self._pages: dict[int, bytearray] = {}
        if data:
            if len(data) > size:
                raise ValueError("initial data is larger than the disk")
            self._put(0, data)

    def _put(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            page, at = divmod(offset + done, PAGE)
            n = min(PAGE - at, len(view) - done)
            buf = self._pages.get(page)
            if buf is None:
                buf = self._pages[page] = bytearray(PAGE)
            buf[at : at + n] = view[done : done + n]
            done += n

    def pages(self) -> list[tuple[int, bytes]]:
        """What the disk holds now: (offset, bytes) of each page written, in order (copies)."""
        end = self.size
        return [(p * PAGE, bytes(buf[: end - p * PAGE])) for p, buf in sorted(self._pages.items())]

    async def read(self, offset: int, length: int) -> bytes:
        self.check(offset, length)
        out = bytearray(length)
        done = 0
        while done < length:
            page, at = divmod(offset + done, PAGE)
            n = min(PAGE - at, length - done)
            buf = self._pages.get(page)
            if buf is not None:
                out[done : done + n] = buf[at : at + n]
            done += n
        self.counters["read_bytes"] += length
        return bytes(out)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.check(offset, len(data), write=True)
        self._put(offset, data)
        self.counters["write_bytes"] += len(data)

    async def flush(self) -> None:
        self.counters["flushes"] += 1

    async def discard(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        self.check(offset, length, write=True)
        end = offset + length
        for page in range(offset // PAGE, (end + PAGE - 1) // PAGE):
            lo, hi = max(offset, page * PAGE), min(end, (page + 1) * PAGE)
            if lo == page * PAGE and hi == (page + 1) * PAGE:
                self._pages.pop(page, None)
            elif page in self._pages:
                self._pages[page][lo - page * PAGE : hi - page * PAGE] = bytes(hi - lo)

    async def close(self) -> None:
        self._pages.clear()
