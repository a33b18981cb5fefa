from __future__ import annotations

import pytest

from hv.devices._finisher import Finisher, FinishKind


class Harness:
    def __init__(self) -> None:
        self.calls: list[tuple[FinishKind, int]] = []
        self.dev = Finisher(lambda kind, code: self.calls.append((kind, code)))


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_pass_powers_off_with_code_zero(h: Harness) -> None:
    h.dev.mmio_write(0, 4, 0x5555)
    assert h.calls == [(FinishKind.POWEROFF_PASS, 0)]


def test_pass_ignores_high_bits(h: Harness) -> None:
    h.dev.mmio_write(0, 4, 0x0007_5555)
    assert h.calls == [(FinishKind.POWEROFF_PASS, 0)]


@pytest.mark.parametrize("code", [0, 1, 42, 0xFFFF])
def test_fail_carries_exit_code(h: Harness, code: int) -> None:
    h.dev.mmio_write(0, 4, code << 16 | 0x3333)
    assert h.calls == [(FinishKind.POWEROFF_FAIL, code)]


def test_reset(h: Harness) -> None:
    h.dev.mmio_write(0, 4, 0x7777)
    assert h.calls == [(FinishKind.RESET, 0)]
    assert h.dev.counters["reset"] == 1


def test_bits_above_32_are_dropped(h: Harness) -> None:
    h.dev.mmio_write(0, 4, (1 << 40) | 0x0002_3333)
    assert h.calls == [(FinishKind.POWEROFF_FAIL, 2)]


@pytest.mark.parametrize("value", [0, 0x1234, 0x5554, 0x3333_0000, 0xFFFF_FFFF])
def test_unknown_command_is_counted(h: Harness, value: int) -> None:
    h.dev.mmio_write(0, 4, value)
    assert h.calls == []
    assert h.dev.counters["bad_command"] == 1


@pytest.mark.parametrize(("offset", "size"), [(4, 4), (0x800, 4), (0, 1), (0, 2), (0, 8), (2, 4)])
def test_bad_write_is_counted(h: Harness, offset: int, size: int) -> None:
    h.dev.mmio_write(offset, size, 0x5555)
    assert h.calls == []
    assert h.dev.counters["bad_write"] == 1


@pytest.mark.parametrize(("offset", "size"), [(0, 4), (4, 4), (0, 1)])
def test_reads_return_zero_and_are_counted(h: Harness, offset: int, size: int) -> None:
    assert h.dev.mmio_read(offset, size) == 0
    assert h.dev.counters["bad_read"] == 1
    assert h.calls == []
