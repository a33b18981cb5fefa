"""The tests' own waiting helpers (tests/helpers.py): they return the condition's value, and
time out naming what was awaited."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing
from helpers import wait_until, wait_until_sync


async def test_wait_until_returns_the_value_once_the_condition_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    got = await wait_until(lambda: max(0, int(trio.current_time() - t0) - 2), "3 s to pass")
    assert got == 1 and 3 <= trio.current_time() - t0 < 3.1


async def test_wait_until_times_out_naming_what_it_awaited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    with pytest.raises(AssertionError, match=r"timed out after 2 s waiting for the moon \(0\)"):
        await wait_until(lambda: 0, lambda: "the moon (0)", timeout=2)
    assert trio.current_time() - t0 == pytest.approx(2)


def test_wait_until_sync_returns_the_value_or_times_out() -> None:
    calls: list[int] = []
    assert wait_until_sync(lambda: calls.append(1) or len(calls) == 3, "3 calls", every=0) is True
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="waiting for nothing at all"):
        wait_until_sync(lambda: None, "nothing at all", timeout=0.05, every=0.01)
    assert time.monotonic() - t0 >= 0.05
