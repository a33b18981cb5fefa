"""Real time on several host cores: the slices of every VM ready to run, run together.

On virtual time a lab's timeline runs the members of a round on the pool (hv._timeline). On
real time each VM is its own trio task that runs a slice, then awaits; ``Cores`` gathers the
slices the running VMs ask for and hands them to the pool (hv.hw._parallel) as one batch, so
two busy guests run on two cores. A VM that waits for an interrupt, for its console reader
or in pause leaves the count of running VMs, so the others' batches do not wait for it.

A batch holds at most one VM per thread, first come first served, so the trio thread is busy
for one VM's part at a time (``CORES_BATCH_S``), never for all the running VMs' at once (with
ten busy guests beside a ping, a batch of all of them made its round trip 100-117 ms instead
of 74-81). A frame or an interrupt for a VM whose slice runs on another thread reaches it at
the start of its next slice (HartInterrupts.sync: the slice is asked to end). With
``jobs = 1`` no ``Cores`` is made: each VM runs its slices itself, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from hv.hw import Pool

T = TypeVar("T")

# How many times the batch waits for running VMs that have not asked yet (each wait lets
# every runnable task run once); a VM busy with something else does not hold up the others.
GATHER_ROUNDS = 3


class _Request(Generic[T]):
    __slots__ = ("done", "error", "result", "run")

    def __init__(self, run: Callable[[], T]) -> None:
        self.run = run
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()

    def __call__(self) -> None:
        try:
            self.result = self.run()
        except BaseException as e:  # this VM's error, raised in its own task
            self.error = e


class Cores:
    """A pool of ``jobs`` host threads shared by the real-time VMs of a lab (or a process)."""

    def __init__(self, jobs: int) -> None:
        self.pool = Pool(jobs)
        self._queue: list[_Request[Any]] = []
        self._asked = trio.Event()
        self.running = 0  # VMs that run slices now (not sleeping, held or paused)
        self.batches = 0

    def enter(self) -> None:
        """A VM runs slices from now on."""
        self.running += 1

    def leave(self) -> None:
        """A VM waits (wfi, a console reader behind, a pause) or ends."""
        self.running -= 1
        if self._queue and len(self._queue) >= self.running:
            self._asked.set()

    async def slice(self, run: Callable[[], T]) -> T:
        """Run ``run`` (one slice of a machine) in the next batch; its result."""
        req: _Request[T] = _Request(run)
        self._queue.append(req)
        self._asked.set()
        try:
            await req.done.wait()
        except trio.Cancelled:
            if req in self._queue:
                self._queue.remove(req)
            raise
        if req.error is not None:
            raise req.error
        return req.result  # type: ignore[return-value]

    async def run(self) -> None:
        """The task that runs the batches (in the lab's nursery)."""
        try:
            while True:
                await self._asked.wait()
                self._asked = trio.Event()
                jobs = self.pool.jobs
                for _ in range(GATHER_ROUNDS):
                    if len(self._queue) >= min(self.running, jobs):
                        break
                    await trio.lowlevel.checkpoint()
                # One VM per thread, first come first served: the event loop (frames, the
                # other VMs' wake-ups) waits for a batch, so a batch is never longer than one
                # VM's part; the others go in the next one.
                batch, self._queue = self._queue[:jobs], self._queue[jobs:]
                if self._queue:
                    self._asked.set()
                if not batch:
                    continue
                self.batches += 1
                self.pool.run(batch)
                for req in batch:
                    req.done.set()
        finally:
            self.pool.close()
