"""Guest time: the timebase the guest's ``rdtime`` and SBI timer use.

Two kinds:

- ``Clock``: real time, from a replaceable source (``time.monotonic_ns`` by default). Tests
  pass their own source; then the vCPU's native clock (which reads CLOCK_MONOTONIC itself) is
  switched off and every time read goes through this class.
- ``VirtualClock``: guest time from guest work. The hart's time advances with the
  instructions it retires at a nominal rate (``mips``), and jumps forward when it waits for an
  interrupt and the lab has nothing for it before then (``skip_to``). The host's clock is
  never read: the same guest code gives the same times, on a loaded or an idle host. Inside a
  slice the count is what the engine has charged so far (``in_slice``: whole translated
  blocks, at their entry), which is the same run after run. See docs/TIME.md.

Both count ticks of the timebase since (re)boot.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hv.hw import _platform as P

TimeSource = Callable[[], int]  # nanoseconds, never going backwards

# The nominal rate of a virtual-time hart: a 1 GHz single-issue core.
DEFAULT_MIPS = 1000
MIPS_MIN = 1
MIPS_MAX = 1_000_000
PS_PER_S = 1_000_000_000_000
# The wall clock of a virtual-time guest at lab time 0 (2026-01-01T00:00:00Z): a Linux guest
# has no RTC, and its init sets the clock from ``hv.time=`` (``Clock.wall_s`` at each boot).
VIRTUAL_EPOCH = 1767225600


class Clock:
    """Guest time in timebase ticks since boot; paused time does not count."""

    virtual = False

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

    def wall_s(self) -> int:
        """The wall clock a guest booting now should start at (seconds since the epoch)."""
        return int(time.time())

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


class VirtualClock(Clock):
    """Guest time from retired instructions: ``mips`` million per second of guest time.

    ``ps`` is where the hart is on the lab's timeline (picoseconds since the lab began; it
    never goes back, a reboot included), ``origin_ps`` where it was at (re)boot: the guest
    reads ``ps - origin_ps``. ``in_slice`` gives the instructions charged to the running slice
    (the vCPU's ``executed_in_slice``); ``settle`` adds a finished slice's count."""

    virtual = True

    def __init__(self, mips: int = DEFAULT_MIPS, hz: int = P.TIMEBASE_HZ) -> None:
        if not MIPS_MIN <= mips <= MIPS_MAX:
            raise ValueError(f"mips {mips} is out of range {MIPS_MIN}..{MIPS_MAX}")
        if 1_000_000 % mips:
            raise ValueError(
                f"mips {mips}: use a rate that divides 1,000,000 (e.g. 100, 250, 1000, 2000) so "
                "an instruction is a whole number of picoseconds"
            )
        self.mips = mips
        self.ps_per_insn = 1_000_000 // mips
        self.ps = 0
        self.origin_ps = 0
        self.in_slice: Callable[[], int] = lambda: 0
        self.monotonic = False
        self.hz = hz
        self.source = self._source

    def _source(self) -> int:
        return self.now_ps() // 1000

    def restart(self) -> None:
        self.origin_ps = self.ps

    def now_ps(self) -> int:
        """The lab-timeline time of the hart now (inside a slice: at the charged count)."""
        return self.ps + self.in_slice() * self.ps_per_insn

    def now_ns(self) -> int:
        return self.now_ps() // 1000

    def wall_s(self) -> int:
        """``VIRTUAL_EPOCH`` plus the lab's time: the same on every run, and a reboot does not
        turn the guest's clock back."""
        return VIRTUAL_EPOCH + self.ps // PS_PER_S

    def guest_ps(self) -> int:
        """Picoseconds since (re)boot at the start of the next slice (what the native clock
        counts from)."""
        return self.ps - self.origin_ps

    def ticks(self) -> int:
        return (self.now_ps() - self.origin_ps) * self.hz // PS_PER_S

    def settle(self, insns: int) -> None:
        """A slice ran ``insns`` instructions."""
        self.ps += insns * self.ps_per_insn

    def skip_to(self, ps: int) -> None:
        """The hart waited: time jumps to ``ps`` (never back)."""
        if ps > self.ps:
            self.ps = ps

    def tick_ps(self, ticks: int) -> int:
        """The lab time at which guest time reaches ``ticks``."""
        return self.origin_ps + -(-ticks * PS_PER_S // self.hz)

    def insns_until(self, ps: int) -> int:
        """Instructions to run from now until the lab time ``ps`` (at least 1)."""
        return max(1, -(-(ps - self.ps) // self.ps_per_insn))

    def seconds_until(self, ticks: int) -> float:
        return max(0.0, (self.tick_ps(ticks) - self.now_ps()) / PS_PER_S)

    def offset_ns(self) -> int:
        return 0

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass
