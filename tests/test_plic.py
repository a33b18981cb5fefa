from __future__ import annotations

import pytest

from hv._errors import HostError
from hv.devices._plic import (
    CLAIM_OFFSET,
    CONTEXT_BASE,
    CONTEXT_STRIDE,
    ENABLE_BASE,
    ENABLE_STRIDE,
    NUM_SOURCES,
    PENDING_BASE,
    Plic,
)

M, S = 0, 1


class Harness:
    def __init__(self) -> None:
        self.changes: list[tuple[int, bool]] = []
        self.plic = Plic(lambda ctx, level: self.changes.append((ctx, level)))

    def read(self, off: int) -> int:
        return self.plic.mmio_read(off, 4)

    def write(self, off: int, value: int) -> None:
        self.plic.mmio_write(off, 4, value)

    def set_priority(self, src: int, prio: int) -> None:
        self.write(4 * src, prio)

    def enable(self, ctx: int, *srcs: int) -> None:
        for src in srcs:
            off = ENABLE_BASE + ENABLE_STRIDE * ctx + 4 * (src // 32)
            self.write(off, self.read(off) | 1 << (src % 32))

    def set_threshold(self, ctx: int, value: int) -> None:
        self.write(CONTEXT_BASE + CONTEXT_STRIDE * ctx, value)

    def claim(self, ctx: int) -> int:
        return self.read(CONTEXT_BASE + CONTEXT_STRIDE * ctx + CLAIM_OFFSET)

    def complete(self, ctx: int, src: int) -> None:
        self.write(CONTEXT_BASE + CONTEXT_STRIDE * ctx + CLAIM_OFFSET, src)

    def pending_words(self) -> list[int]:
        return [self.read(PENDING_BASE + 4 * i) for i in range(3)]


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_reset_state_is_quiet(h: Harness) -> None:
    assert h.read(4 * 10) == 0
    assert h.pending_words() == [0, 0, 0]
    assert h.read(ENABLE_BASE) == 0
    assert h.read(CONTEXT_BASE) == 0
    assert not h.plic.output(M)
    assert not h.plic.output(S)
    assert h.changes == []


def test_priority_register_roundtrip(h: Harness) -> None:
    h.set_priority(1, 7)
    h.set_priority(95, 3)
    assert h.read(4 * 1) == 7
    assert h.read(4 * 95) == 3
    assert h.read(4 * 2) == 0


def test_priority_out_of_range_is_ignored_and_counted(h: Harness) -> None:
    h.set_priority(5, 2)
    h.set_priority(5, 8)
    assert h.read(4 * 5) == 2
    assert h.plic.counters["bad_priority"] == 1


def test_source_zero_priority_is_hardwired(h: Harness) -> None:
    h.set_priority(0, 5)
    assert h.read(0) == 0
    assert h.plic.counters["bad_write"] == 1


def test_pending_follows_line_and_is_read_only(h: Harness) -> None:
    line10 = h.plic.irq_line(10)
    line40 = h.plic.irq_line(40)
    line95 = h.plic.irq_line(95)
    line10(True)
    line40(True)
    line95(True)
    assert h.pending_words() == [1 << 10, 1 << (40 - 32), 1 << (95 - 64)]
    h.write(PENDING_BASE, 0)
    assert h.pending_words()[0] == 1 << 10
    assert h.plic.counters["pending_write"] == 1
    line40(False)
    assert h.pending_words()[1] == 0


def test_output_needs_enable_priority_and_threshold(h: Harness) -> None:
    line = h.plic.irq_line(10)
    line(True)
    assert not h.plic.output(S)  # priority 0 never interrupts
    h.set_priority(10, 1)
    assert not h.plic.output(S)  # not enabled
    h.enable(S, 10)
    assert h.plic.output(S)
    assert not h.plic.output(M)  # enables are per context
    assert h.changes == [(S, True)]


def test_threshold_masks_priority_at_or_below(h: Harness) -> None:
    line = h.plic.irq_line(3)
    h.set_priority(3, 4)
    h.enable(S, 3)
    line(True)
    assert h.changes == [(S, True)]
    h.set_threshold(S, 4)
    assert h.read(CONTEXT_BASE + CONTEXT_STRIDE * S) == 4
    assert h.changes == [(S, True), (S, False)]
    assert h.claim(S) == 0  # threshold applies to claims too
    h.set_threshold(S, 3)
    assert h.changes[-1] == (S, True)
    assert h.claim(S) == 3


def test_threshold_out_of_range_is_ignored(h: Harness) -> None:
    h.set_threshold(M, 9)
    assert h.read(CONTEXT_BASE) == 0
    assert h.plic.counters["bad_threshold"] == 1


def test_claim_order_priority_then_lowest_id(h: Harness) -> None:
    for src, prio in ((5, 2), (7, 6), (9, 6), (60, 1)):
        h.set_priority(src, prio)
        h.enable(S, src)
        h.plic.irq_line(src)(True)
    assert [h.claim(S) for _ in range(5)] == [7, 9, 5, 60, 0]
    assert h.plic.counters["empty_claim"] == 1


def test_claim_clears_pending_and_drops_output(h: Harness) -> None:
    line = h.plic.irq_line(10)
    h.set_priority(10, 1)
    h.enable(S, 10)
    line(True)
    assert h.claim(S) == 10
    assert h.pending_words()[0] == 0
    assert not h.plic.output(S)
    assert h.changes == [(S, True), (S, False)]


def test_complete_repends_while_line_still_high(h: Harness) -> None:
    line = h.plic.irq_line(10)
    h.set_priority(10, 1)
    h.enable(S, 10)
    line(True)
    assert h.claim(S) == 10
    h.complete(S, 10)
    assert h.pending_words()[0] == 1 << 10
    assert h.plic.output(S)
    assert h.claim(S) == 10


def test_complete_after_line_dropped_stays_quiet(h: Harness) -> None:
    line = h.plic.irq_line(10)
    h.set_priority(10, 1)
    h.enable(S, 10)
    line(True)
    assert h.claim(S) == 10
    line(False)
    h.complete(S, 10)
    assert h.pending_words()[0] == 0
    assert not h.plic.output(S)
    assert h.changes == [(S, True), (S, False)]


def test_in_service_source_does_not_interrupt_again(h: Harness) -> None:
    line = h.plic.irq_line(10)
    h.set_priority(10, 1)
    h.enable(S, 10)
    line(True)
    assert h.claim(S) == 10
    line(False)
    line(True)
    assert not h.plic.output(S)
    assert h.claim(S) == 0


def test_line_dropped_before_claim_is_not_claimed(h: Harness) -> None:
    line = h.plic.irq_line(10)
    h.set_priority(10, 1)
    h.enable(S, 10)
    line(True)
    line(False)
    assert h.claim(S) == 0
    assert h.changes == [(S, True), (S, False)]


def test_complete_not_in_service_is_ignored(h: Harness) -> None:
    h.set_priority(10, 1)
    h.enable(S, 10)
    h.complete(S, 10)
    h.complete(S, 0)
    h.complete(S, 500)
    assert h.plic.counters["bad_complete"] == 3


def test_complete_from_context_without_enable_is_ignored(h: Harness) -> None:
    line = h.plic.irq_line(10)
    h.set_priority(10, 1)
    h.enable(S, 10)
    line(True)
    assert h.claim(S) == 10
    h.complete(M, 10)
    assert h.plic.counters["bad_complete"] == 1
    assert h.claim(S) == 0  # still in service
    h.complete(S, 10)
    assert h.claim(S) == 10


def test_both_contexts_see_a_source_enabled_for_both(h: Harness) -> None:
    line = h.plic.irq_line(1)
    h.set_priority(1, 1)
    h.enable(M, 1)
    h.enable(S, 1)
    line(True)
    assert sorted(h.changes) == [(M, True), (S, True)]
    assert h.claim(M) == 1
    # Claimed by M: gone for S too, since in-service is per source.
    assert not h.plic.output(S)
    assert h.claim(S) == 0


def test_enable_bit_zero_is_hardwired(h: Harness) -> None:
    h.write(ENABLE_BASE + ENABLE_STRIDE * S, 0xFFFF_FFFF)
    assert h.read(ENABLE_BASE + ENABLE_STRIDE * S) == 0xFFFF_FFFE
    h.write(ENABLE_BASE + ENABLE_STRIDE * S + 8, 0xFFFF_FFFF)
    assert h.read(ENABLE_BASE + ENABLE_STRIDE * S + 8) == 0xFFFF_FFFF
    assert h.read(ENABLE_BASE + ENABLE_STRIDE * M) == 0


def test_disable_drops_output(h: Harness) -> None:
    line = h.plic.irq_line(33)
    h.set_priority(33, 1)
    h.enable(S, 33)
    line(True)
    assert h.plic.output(S)
    h.write(ENABLE_BASE + ENABLE_STRIDE * S + 4, 0)
    assert h.changes == [(S, True), (S, False)]


def test_priority_change_can_raise_output(h: Harness) -> None:
    line = h.plic.irq_line(2)
    h.enable(S, 2)
    line(True)
    assert h.changes == []
    h.set_priority(2, 1)
    assert h.changes == [(S, True)]
    h.set_priority(2, 0)
    assert h.changes == [(S, True), (S, False)]


def test_change_callback_only_on_edges(h: Harness) -> None:
    a, b = h.plic.irq_line(4), h.plic.irq_line(5)
    for src in (4, 5):
        h.set_priority(src, 1)
        h.enable(S, src)
    a(True)
    b(True)
    a(True)
    b(False)
    assert h.changes == [(S, True)]


@pytest.mark.parametrize("src", [0, -1, NUM_SOURCES])
def test_irq_line_out_of_range_is_a_host_error(h: Harness, src: int) -> None:
    with pytest.raises(HostError):
        h.plic.irq_line(src)


@pytest.mark.parametrize(
    "offset",
    [
        0x180,  # past the last priority
        PENDING_BASE + 12,  # past the pending words
        ENABLE_BASE + 12,  # past context 0's enable words
        ENABLE_BASE + ENABLE_STRIDE * 2,  # context 2 does not exist
        CONTEXT_BASE + 8,  # hole after claim
        CONTEXT_BASE + CONTEXT_STRIDE * 2,  # context 2 does not exist
        0x5F_FFFC,  # end of window
    ],
)
def test_holes_read_zero_and_ignore_writes(h: Harness, offset: int) -> None:
    assert h.read(offset) == 0
    h.write(offset, 0xFFFF_FFFF)
    assert h.read(offset) == 0
    assert h.plic.counters["bad_read"] == 2
    assert h.plic.counters["bad_write"] == 1


@pytest.mark.parametrize(("offset", "size"), [(4, 1), (4, 2), (4, 8), (5, 4), (6, 4)])
def test_bad_size_or_alignment_is_counted(h: Harness, offset: int, size: int) -> None:
    h.set_priority(1, 3)
    assert h.plic.mmio_read(offset, size) == 0
    h.plic.mmio_write(offset, size, 7)
    assert h.read(4) == 3
    assert h.plic.counters["bad_read"] == 1
    assert h.plic.counters["bad_write"] == 1


def test_claim_read_with_bad_size_has_no_side_effect(h: Harness) -> None:
    line = h.plic.irq_line(10)
    h.set_priority(10, 1)
    h.enable(S, 10)
    line(True)
    off = CONTEXT_BASE + CONTEXT_STRIDE * S + CLAIM_OFFSET
    assert h.plic.mmio_read(off, 2) == 0
    assert h.plic.output(S)
    assert h.claim(S) == 10


def test_value_above_32_bits_is_truncated(h: Harness) -> None:
    h.write(4 * 7, (1 << 32) | 5)
    assert h.read(4 * 7) == 5
