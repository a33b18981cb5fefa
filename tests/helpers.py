"""Waiting in tests, written once: poll a condition until it holds, within a bounded time, and
fail naming what was awaited. Wait on an event where there is one (a console line,
``vm.wait()``, ``trio.testing.wait_all_tasks_blocked()``); poll where the thing awaited is a
counter or a state with no event of its own. Never sleep a fixed time and assume.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

T = TypeVar("T")

What = str | Callable[[], str]


def _timed_out(what: What, timeout: float) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"timed out after {timeout:g} s waiting for {said}")


async def wait_until(
    condition: Callable[[], T], what: What, timeout: float = 15, every: float = 0.01
) -> T:
    """Poll ``condition()`` every ``every`` seconds of trio time until it is true; return its
    value. AssertionError naming ``what`` (a string, or a callable giving one with the state
    at the time) after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not (value := condition()):
            await trio.sleep(every)
        return value
    raise _timed_out(what, timeout)


def wait_until_sync(
    condition: Callable[[], T], what: What, timeout: float = 15, every: float = 0.05
) -> T:
    """``wait_until`` for code outside trio (a test driving ``hv`` processes): polls with
    ``time.sleep``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout)
        time.sleep(every)
    return value


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread that entered network namespace ``name`` (and dies afterwards):
    what it opens (a TAP, a socket) is born there; the caller's thread never moves."""
    from pyroute2 import netns

    box: dict[str, T] = {}
    error: list[BaseException] = []

    def run() -> None:
        try:
            netns.setns(name, flags=0)
            box["value"] = fn()
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if error:
        raise error[0]
    return box["value"]


def host_userland() -> Path:
    """The guest's userland (``hvbox``, with ``hv-agent``) built for this host (x86_64 musl,
    the guest image's flags otherwise): the agent's protocol tested over a Unix socket."""
    from hv.build._image_linux import USERLAND_CFLAGS, USERLAND_DIR, _userland_sources
    from hv.build._zig import cached_build, run_zig

    flags = ["-target", "x86_64-linux-musl", *USERLAND_CFLAGS[2:]]
    sources = [p for p in _userland_sources(USERLAND_DIR) if p.suffix == ".c"]
    headers = [p for p in _userland_sources(USERLAND_DIR) if p.suffix == ".h"]

    def build(out: Path) -> None:
        run_zig(["cc", *flags, "-o", str(out), *map(str, sources)])

    return cached_build("hvbox-host", [*sources, *headers], flags, build)
