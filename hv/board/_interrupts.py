"""The hart's S-level interrupts, combined: STIP from the SBI timer, SEIP from the PLIC's S-mode
context, SSIP from an IPI. ``sync`` writes them into the vCPU's ``mip``.

Any rising interrupt, from a hook inside a slice or from another trio task between slices,
wakes the VM at once (``wake``): a guest sleeping in ``wfi`` runs its handler without waiting
for a timeout, and a guest inside a slice takes it at the next block (the slice is ended).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Protocol

from hv.hw import Clock

MIP_SSIP = 1 << 1
MIP_STIP = 1 << 5
MIP_SEIP = 1 << 9
NO_DEADLINE = (1 << 64) - 1
_NAMES = ((MIP_STIP, "irq_timer"), (MIP_SEIP, "irq_external"), (MIP_SSIP, "irq_software"))


class InterruptSink(Protocol):
    """The vCPU side: its mip, and a way to end the running slice."""

    def update_interrupts(self, pending: int) -> bool: ...

    def enabled_interrupts(self) -> int: ...

    def raised_interrupts(self) -> int: ...

    def request_stop(self) -> None: ...

    def busy_elsewhere(self) -> bool: ...

    def set_time_limit(self, ticks: int) -> None: ...


class HartInterrupts:
    def __init__(
        self, clock: Clock, counters: collections.Counter[str], wake: Callable[[], None]
    ) -> None:
        self.clock = clock
        self.counters = counters
        self.wake = wake
        self.sink: InterruptSink | None = None
        # Virtual time: told of each new deadline (the running slice may have to end sooner).
        self.on_set_timer: Callable[[int], None] | None = None
        self.reset()

    def reset(self) -> None:
        self.timer_deadline = NO_DEADLINE
        self.seip = False
        self.ipi_pending = False

    def pending(self) -> int:
        bits = 0
        if self.clock.ticks() >= self.timer_deadline:
            bits |= MIP_STIP
        if self.seip:
            bits |= MIP_SEIP
        if self.ipi_pending:
            bits |= MIP_SSIP
        return bits

    def sync(self) -> None:
        """Bring mip up to date now (safe inside hooks); on a rising bit, end the slice (the
        engine takes it at the next block) and wake the VM if it sleeps."""
        if self.sink is None:
            return
        if self.sink.busy_elsewhere():
            # Its engine runs on another thread (a parallel batch): never touch it from here.
            # Its next slice starts with a sync, and this makes that soon.
            self.sink.request_stop()
            self.wake()
            return
        pending = self.pending()
        # The native clock shows at most one tick before an armed timer's deadline until its
        # interrupt is in mip (a timer set for T never lets the guest read T unannounced).
        self.sink.set_time_limit(NO_DEADLINE if pending & MIP_STIP else max(self.timer_deadline, 1))
        if self.sink.update_interrupts(pending):
            self.sink.request_stop()
            for bit, name in _NAMES:
                if pending & bit:
                    self.counters[name] += 1
            self.wake()
        self.ipi_pending = False  # now in mip; the guest clears SSIP itself

    def set_external(self, level: bool) -> None:
        self.seip = level
        self.sync()

    def set_timer(self, deadline: int) -> None:
        self.timer_deadline = deadline & NO_DEADLINE
        self.sync()  # setting the timer clears a pending timer interrupt at once
        if self.on_set_timer is not None:
            self.on_set_timer(self.timer_deadline)

    def send_ipi(self) -> None:
        self.ipi_pending = True
        self.sync()

    def clear_ipi(self) -> None:
        self.ipi_pending = False

    def wake_pending(self) -> bool:
        """Would a ``wfi`` end now (an enabled interrupt is pending)?"""
        if self.sink is None:
            return False
        pending = self.pending()
        enabled = self.sink.enabled_interrupts()
        if pending & enabled:
            return True
        if enabled & MIP_SSIP and self.sink.raised_interrupts() & MIP_SSIP:
            return True  # an IPI already in mip (the guest clears SSIP itself)
        self.sink.update_interrupts(pending)
        return False

    def next_deadline(self) -> float | None:
        """Seconds until the timer fires, or None if no timer is set."""
        if self.timer_deadline == NO_DEADLINE:
            return None
        return self.clock.seconds_until(self.timer_deadline)
