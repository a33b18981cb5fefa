"""Running guests on several host cores: the gate and the pool.

The engine runs guest code with the interpreter lock released (``uc_emu_start`` is a plain
ctypes call), so two engines on two threads run at the speed of two cores (two ``cpu`` guests
measured 1.89x one core here). Everything else of hv (the machine, the devices, the
timeline, the fabric, trio) is written for one thread. So while guests run in parallel, hv's
own Python runs under one lock, the **gate**: a worker thread holds it while it runs hv code
and lets go of it only while its engine runs guest code; an exit from the engine (an MMIO
access, an SBI call, a trap) takes it again for the time of the Python handler. Exactly one
thread runs hv's Python at any moment, so its code needs no locks of its own; guest code runs
on as many cores as there are workers.

A batch is synchronous: the trio thread hands the pool a list of calls (one VM's step to its
horizon each, or one hart's slice), waits without the gate, and gets the results in the same
order. It holds up the event loop exactly as long as running the same calls one after another
would, and no trio code runs meanwhile, so a worker may use trio's synchronous operations
(``Event.set``, ``nursery.start_soon``) as the waiting task could: the pool lends each worker
the task's trio context for the batch. A pool of one job runs the calls on the trio thread
itself, with no gate and no thread: what every run did before.

The results never depend on the number of jobs: what a batch runs is chosen before it starts
(hv._timeline: each VM's horizon from the round's starting state) and nothing in one call
reads what another call of the batch changes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def default_jobs() -> int:
    """All the host cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # (not Linux)
        return max(1, os.cpu_count() or 1)


class Gate:
    """hv's Python lock while a batch runs in parallel (``active``); unused otherwise."""

    __slots__ = ("active", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = False


GATE = Gate()


def _trio_context() -> tuple[Any, Any] | None:
    """The calling task's trio context (runner, task), or None outside trio."""
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT as ctx
    except ImportError:  # pragma: no cover (a trio without it: workers get no context)
        return None
    runner = getattr(ctx, "runner", None)
    task = getattr(ctx, "task", None)
    return None if runner is None else (runner, task)


def _lend(context: tuple[Any, Any] | None) -> None:
    if context is None:
        return
    from trio._core._run import GLOBAL_RUN_CONTEXT as ctx

    ctx.runner, ctx.task = context


def _take_back(context: tuple[Any, Any] | None) -> None:
    if context is None:
        return
    from trio._core._run import GLOBAL_RUN_CONTEXT as ctx

    for name in ("runner", "task"):
        if hasattr(ctx, name):
            delattr(ctx, name)


class _Batch:
    def __init__(self, calls: Sequence[Callable[[], Any]], context: tuple[Any, Any] | None):
        self.calls = calls
        self.context = context
        self.results: list[Any] = [None] * len(calls)
        self.errors: list[BaseException | None] = [None] * len(calls)
        self.next = 0
        self.left = len(calls)
        self.done = threading.Event()


class Pool:
    """``jobs`` worker threads that run batches of calls in parallel under the gate."""

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.jobs = jobs
        self._cond = threading.Condition()
        self._batch: _Batch | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.batches = 0  # batches that ran on the workers (more than one call)
        self.calls = 0

    def run(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run every call (on up to ``jobs`` threads); their results in order. The first
        exception a call raised is raised here after all of them ended."""
        self.calls += len(calls)
        if self.jobs == 1 or len(calls) <= 1 or GATE.active:
            # (a batch inside a batch's call, e.g. an SMP guest's harts in a lab: in order)
            return [c() for c in calls]
        if self._closed:
            raise RuntimeError("the pool is closed")
        self.batches += 1
        # The calling thread runs calls too: it would only wait otherwise, and a worker
        # that the host is slow to wake (a loaded machine) then costs nothing.
        self._start_threads(min(self.jobs, len(calls)) - 1)
        batch = _Batch(calls, None)
        context = _trio_context()
        batch.context = context
        gate = GATE
        gate.active = True
        try:
            with self._cond:
                self._batch = batch
                self._cond.notify_all()
            with gate.lock:
                while (i := self._take(batch)) is not None:
                    self._call(batch, i, lend=False)
            batch.done.wait()
        finally:
            with self._cond:
                self._batch = None
            gate.active = False
        for err in batch.errors:
            if err is not None:
                raise err
        return batch.results

    def _take(self, b: _Batch) -> int | None:
        with self._cond:
            if b.next >= len(b.calls):
                return None
            i = b.next
            b.next += 1
            return i

    def _call(self, b: _Batch, i: int, *, lend: bool) -> None:
        """Run call ``i`` (holding the gate) and count it done."""
        if lend:
            _lend(b.context)
        try:
            b.results[i] = b.calls[i]()
        except BaseException as e:  # handed to the caller
            b.errors[i] = e
        finally:
            if lend:
                _take_back(b.context)
        with self._cond:
            b.left -= 1
            if b.left == 0:
                b.done.set()

    def _start_threads(self, want: int) -> None:
        while len(self._threads) < want:
            t = threading.Thread(
                target=self._work, name=f"hv-worker-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _work(self) -> None:
        gate = GATE
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    b = self._batch
                    if b is not None and b.next < len(b.calls):
                        break
                    self._cond.wait()
            with gate.lock:
                while (i := self._take(b)) is not None:
                    self._call(b, i, lend=True)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
