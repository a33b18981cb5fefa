"""Devices, interrupt lines and the MMIO bus.

A device sees offsets into its own window, never absolute addresses, and raises interrupts
through an ``IrqLine``; it knows nothing about Unicorn. The ``Bus`` holds non-overlapping
ranges and hands each access to the device that owns it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from hv._errors import HostError


class MmioDevice(Protocol):
    """A memory-mapped device. ``size`` is 1, 2, 4 or 8 bytes; values are little-endian ints."""

    def mmio_read(self, offset: int, size: int) -> int: ...

    def mmio_write(self, offset: int, size: int, value: int) -> None: ...


# An interrupt line as a device sees it: call with True to assert, False to deassert (level).
IrqLine = Callable[[bool], None]


@dataclass(frozen=True)
class Mapping:
    base: int
    size: int
    name: str
    device: MmioDevice

    @property
    def end(self) -> int:
        return self.base + self.size


class Bus:
    """Non-overlapping MMIO ranges, looked up by address."""

    def __init__(self) -> None:
        self._maps: list[Mapping] = []
        self._bases: list[int] = []

    def add(self, base: int, size: int, name: str, device: MmioDevice) -> Mapping:
        if size <= 0:
            raise HostError(f"bus: {name} has size {size}")
        i = bisect.bisect_left(self._bases, base)
        m = Mapping(base, size, name, device)
        if i > 0 and self._maps[i - 1].end > base:
            raise HostError(f"bus: {name} overlaps {self._maps[i - 1].name}")
        if i < len(self._maps) and self._maps[i].base < m.end:
            raise HostError(f"bus: {name} overlaps {self._maps[i].name}")
        self._maps.insert(i, m)
        self._bases.insert(i, base)
        return m

    def find(self, addr: int) -> Mapping | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0 and addr < self._maps[i].end:
            return self._maps[i]
        return None

    def __iter__(self) -> Iterator[Mapping]:
        return iter(self._maps)
