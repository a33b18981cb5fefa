"""Guest time: the timebase the guest's ``rdtime`` and SBI timer use, with a replaceable source.

The source is a function returning nanoseconds (``time.monotonic_ns`` by default). Tests and,
later, virtual time pass their own; then the vCPU's native clock (which reads CLOCK_MONOTONIC
itself) is switched off and every time read goes through this class.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hv.hw import _platform as P

TimeSource = Callable[[], int]  # nanoseconds, never going backwards


class Clock:
    """Guest time in timebase ticks since boot; paused time does not count."""

    def __init__(self, source: TimeSource | None = None, hz: int = P.TIMEBASE_HZ) -> None:
        self.source: TimeSource = source or time.monotonic_ns
        self.monotonic = source is None  # the host's CLOCK_MONOTONIC: native reads may use it
        self.hz = hz
        self.restart()

    def restart(self) -> None:
        """Guest time back to 0 (power-on)."""
        self.start_ns = self.source()
        self.paused_ns = 0
        self._paused_at: int | None = None

    def ticks(self) -> int:
        now = self._paused_at if self._paused_at is not None else self.source()
        return (now - self.start_ns - self.paused_ns) * self.hz // 1_000_000_000

    def seconds_until(self, ticks: int) -> float:
        return max(0.0, (ticks - self.ticks()) / self.hz)

    def offset_ns(self) -> int:
        """The source time at which guest time would read 0 (the native clock's base)."""
        return self.start_ns + self.paused_ns

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.source()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.paused_ns += self.source() - self._paused_at
            self._paused_at = None
