"""The platform-level interrupt controller (PLIC), as on QEMU virt and SiFive parts.

Theory of operation. Each interrupt source (1..95; 0 means "no interrupt") has a level-triggered
gateway: a device drives its ``IrqLine`` high or low, and the source is *pending* exactly while
its line is high and it is not *in service*. We derive pending from the line instead of latching
it, as QEMU does, so a device that drops its line before the guest claims it causes no spurious
claim.

Each context (2h = hart h's M-mode, 2h + 1 = hart h's S-mode, as on QEMU virt) has an enable bit
per source and a priority threshold. A context's output is high while some pending source is
enabled for it and has a priority above its threshold; priority 0 therefore means "never".
Whenever an output changes, ``on_context_change(ctx, level)`` is called so the CPU side can set
or clear MEIP/SEIP.

The guest reads claim/complete to *claim*: it gets the best candidate (highest priority, then
lowest id), which leaves pending and goes in service, so it cannot interrupt again until the guest
writes the same id back to *complete* it. If the line is still high at that point, the source is
pending again at once: that is what makes the gateway level-triggered.

Only aligned 32-bit accesses are architected. Anything else the guest does (a bad size, a hole in
the map, a write to a read-only word, an out-of-range value) is counted in ``counters`` and
otherwise ignored; reads of it return 0.
"""

from __future__ import annotations

from collections.abc import Callable

from hv._errors import HostError
from hv.hw import PLIC_SIZE, Device, Fields, IrqLine, State

# Sources 0..NUM_SOURCES-1 exist; source 0 is reserved (as on QEMU virt).
NUM_SOURCES = 96
# Contexts per hart: its M-mode and its S-mode one (a machine with N harts has 2N).
CONTEXTS_PER_HART = 2
NUM_CONTEXTS = CONTEXTS_PER_HART  # (of a one-hart machine)
# Priorities and thresholds are 3 bits wide (QEMU virt's "riscv,max-priority" is 7).
MAX_PRIORITY = 7

# Register map (offsets into the PLIC window).
PRIORITY_BASE = 0x0000
PENDING_BASE = 0x1000
ENABLE_BASE = 0x2000
ENABLE_STRIDE = 0x80
CONTEXT_BASE = 0x20_0000
CONTEXT_STRIDE = 0x1000
THRESHOLD_OFFSET = 0x0
CLAIM_OFFSET = 0x4

_WORDS = (NUM_SOURCES + 31) // 32  # 32-bit words of pending/enable bits
_ALL_SOURCES = ((1 << NUM_SOURCES) - 1) & ~1  # bit 0 (source 0) is hardwired to zero


class Plic(Device):
    """A PLIC with ``NUM_SOURCES`` level-triggered sources and two contexts per hart.

    ``on_context_change(ctx, level)`` is called each time a context's output changes level.
    """

    mmio_size = PLIC_SIZE

    COUNTERS = frozenset(
        {
            "bad_read",  # not an aligned 32-bit read of a register
            "bad_write",  # not an aligned 32-bit write of a writable register (or source 0)
            "bad_priority",  # a priority above MAX_PRIORITY
            "bad_threshold",  # a threshold above MAX_PRIORITY
            "pending_write",  # a write to the read-only pending bits
            "empty_claim",  # a claim with nothing pending (normal after another claim)
            "bad_complete",  # a completion of a source not claimed or not enabled
        }
    )

    def __init__(self, on_context_change: Callable[[int, bool], None], harts: int = 1) -> None:
        super().__init__("plic")
        self._on_context_change = on_context_change
        self.contexts = CONTEXTS_PER_HART * harts
        self.reset()

    def reset(self) -> None:
        self._priority = [0] * NUM_SOURCES
        # Bit sets indexed by source number.
        self._asserted = 0
        self._in_service = 0
        self._enable = [0] * self.contexts
        self._threshold = [0] * self.contexts
        self._output = [False] * self.contexts

    # -- snapshots ----------------------------------------------------------------------------

    def save_state(self) -> State:
        """Priorities, enables and thresholds, the level of each source's line (``asserted``,
        bit n = source n) and the sources in service (claimed, not completed). Pending and
        the outputs follow from them."""
        return {
            "contexts": self.contexts,
            "priority": list(self._priority),
            "asserted": self._asserted,
            "in_service": self._in_service,
            "enable": list(self._enable),
            "threshold": list(self._threshold),
        }

    def load_state(self, st: Fields) -> None:
        contexts = st.int("contexts", 1, 1 << 16)
        st.check(
            contexts == self.contexts, "contexts", f"{contexts}, this PLIC has {self.contexts}"
        )
        priority = st.ints("priority", NUM_SOURCES, 0, MAX_PRIORITY, length=NUM_SOURCES)
        st.check(priority[0] == 0, "priority[0]", f"{priority[0]}: source 0 does not exist")
        top = (1 << NUM_SOURCES) - 1
        asserted = st.int("asserted", 0, top)
        in_service = st.int("in_service", 0, top)
        for key, bits in (("asserted", asserted), ("in_service", in_service)):
            st.check(not bits & 1, key, "bit 0 is set: source 0 does not exist")
        enable = st.ints("enable", contexts, 0, top, length=contexts)
        for i, bits in enumerate(enable):
            st.check(not bits & 1, f"enable[{i}]", "bit 0 is set: source 0 does not exist")
        threshold = st.ints("threshold", contexts, 0, MAX_PRIORITY, length=contexts)
        self._priority = list(priority)
        self._asserted, self._in_service = asserted, in_service
        self._enable, self._threshold = list(enable), list(threshold)
        self._update()  # the outputs (and the harts' external interrupt lines) follow

    # -- device side --------------------------------------------------------------------------

    def irq_line(self, src: int) -> IrqLine:
        """The line a device drives to raise source ``src``.

        Raises ``HostError`` if ``src`` is not in 1..NUM_SOURCES-1 (a wiring bug, not the guest's).
        """
        if not 1 <= src < NUM_SOURCES:
            raise HostError(f"plic: source {src} out of range 1..{NUM_SOURCES - 1}")
        bit = 1 << src

        def line(level: bool) -> None:
            new = self._asserted | bit if level else self._asserted & ~bit
            if new != self._asserted:
                self._asserted = new
                self._update()

        return line

    def output(self, ctx: int) -> bool:
        """The current level of context ``ctx``'s interrupt output."""
        return self._output[ctx]

    @property
    def pending(self) -> int:
        """Pending sources as a bit set (bit n = source n)."""
        return self._asserted & ~self._in_service

    # -- guest side ---------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if size != 4 or offset % 4:
            self.counters["bad_read"] += 1
            return 0
        if offset < PRIORITY_BASE + 4 * NUM_SOURCES:
            return self._priority[offset // 4]
        if PENDING_BASE <= offset < PENDING_BASE + 4 * _WORDS:
            return self._word(self.pending, (offset - PENDING_BASE) // 4)
        ctx, reg = self._enable_reg(offset)
        if ctx is not None:
            return self._word(self._enable[ctx], reg)
        ctx, reg = self._context_reg(offset)
        if ctx is not None:
            if reg == THRESHOLD_OFFSET:
                return self._threshold[ctx]
            return self._claim(ctx)
        self.counters["bad_read"] += 1
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset % 4:
            self.counters["bad_write"] += 1
            return
        value &= 0xFFFF_FFFF
        if offset < PRIORITY_BASE + 4 * NUM_SOURCES:
            src = offset // 4
            if src == 0:
                self.counters["bad_write"] += 1
            elif value > MAX_PRIORITY:
                self.counters["bad_priority"] += 1
            else:
                self._priority[src] = value
                self._update()
            return
        if PENDING_BASE <= offset < PENDING_BASE + 4 * _WORDS:
            self.counters["pending_write"] += 1
            return
        ctx, reg = self._enable_reg(offset)
        if ctx is not None:
            # Bit 0 is WARL zero: drivers may write all-ones to enable "everything".
            shift = 32 * reg
            mask = (0xFFFF_FFFF << shift) & _ALL_SOURCES
            self._enable[ctx] = (self._enable[ctx] & ~mask) | ((value << shift) & mask)
            self._update()
            return
        ctx, reg = self._context_reg(offset)
        if ctx is not None:
            if reg == THRESHOLD_OFFSET:
                if value > MAX_PRIORITY:
                    self.counters["bad_threshold"] += 1
                else:
                    self._threshold[ctx] = value
                    self._update()
            else:
                self._complete(ctx, value)
            return
        self.counters["bad_write"] += 1

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _word(bits: int, index: int) -> int:
        return (bits >> (32 * index)) & 0xFFFF_FFFF

    def _enable_reg(self, offset: int) -> tuple[int | None, int]:
        rel = offset - ENABLE_BASE
        if 0 <= rel < ENABLE_STRIDE * self.contexts:
            ctx, off = divmod(rel, ENABLE_STRIDE)
            if off < 4 * _WORDS:
                return ctx, off // 4
        return None, 0

    def _context_reg(self, offset: int) -> tuple[int | None, int]:
        rel = offset - CONTEXT_BASE
        if 0 <= rel < CONTEXT_STRIDE * self.contexts:
            ctx, off = divmod(rel, CONTEXT_STRIDE)
            if off in (THRESHOLD_OFFSET, CLAIM_OFFSET):
                return ctx, off
        return None, 0

    def _best(self, ctx: int) -> int:
        """The source ``ctx`` would claim now, or 0."""
        candidates = self.pending & self._enable[ctx]
        best, best_prio = 0, self._threshold[ctx]
        while candidates:
            low = candidates & -candidates
            src = low.bit_length() - 1
            # Strictly greater: on a tie the lower id, seen first, wins.
            if self._priority[src] > best_prio:
                best, best_prio = src, self._priority[src]
            candidates ^= low
        return best

    def _claim(self, ctx: int) -> int:
        src = self._best(ctx)
        if src == 0:
            # Normal when another context claimed first or the device dropped its line.
            self.counters["empty_claim"] += 1
            return 0
        self._in_service |= 1 << src
        self._update()
        return src

    def _complete(self, ctx: int, src: int) -> None:
        if not 1 <= src < NUM_SOURCES:
            self.counters["bad_complete"] += 1
            return
        bit = 1 << src
        if not self._in_service & bit or not self._enable[ctx] & bit:
            self.counters["bad_complete"] += 1
            return
        self._in_service &= ~bit
        self._update()

    def _update(self) -> None:
        for ctx in range(self.contexts):
            level = self._best(ctx) != 0
            if level != self._output[ctx]:
                self._output[ctx] = level
                self._on_context_change(ctx, level)
