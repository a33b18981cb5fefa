"""Virtual time for a whole lab: one clock, and the order in which everything happens on it.

In a virtual-time lab (``clock = "virtual"``) nothing reads the host's clock on the guests'
path. Each VM's time comes from the instructions its hart retires (``hv.hw.VirtualClock``);
the fabric (switches, cables and their impairments, the built-in services) runs on this
``Timeline``'s clock; and the ``Timeline`` decides who runs when, so that the order of events
never depends on the host. The rule is the one of conservative parallel discrete-event
simulation (Chandy-Misra-Bryant, with the lookahead of Renode's quantum and Shadow's rounds):

* Everything that crosses from one VM to anything else is a timed event. A frame a guest
  sends at its time ``t`` goes into the *outbox* at ``t``; the fabric takes it from there at
  ``t`` (switching, impairment, capture, the services' answer), and what it delivers to a VM
  arrives there at the fabric's time plus the *lookahead* ``W`` (every NIC's cable has at least
  that latency; ``DEFAULT_LOOKAHEAD_PS``). A disk completion is due at the request's time
  plus the disk's modelled latency.
* A VM may run ahead only as far as nothing can reach it: to ``min(what others could send
  from) + W``, and no further than ``W`` past its own first send (a service could answer it).
  A VM waiting in ``wfi`` is parked until its timer, its next frame or its next completion:
  an idle lab skips from event to event instead of waiting through them.
* In a round every VM runs to its horizon, computed from the round's starting state, on up to
  ``jobs`` host threads at once (hv.hw._parallel; nothing one VM does in a round is seen by
  another before it ends); the outbox is then processed in time order (ties by VM order,
  then by the VM's order of sending) up to what no VM can still send before. Host speed and
  the number of threads change only how fast this goes, never what happens.

The host enters in three places, each named in docs/TIME.md: input typed on a console or sent
by code (it is stamped with the lab's current time, which depends on when it came), a host
disk slower than the model (the VM waits for it; its time does not move meanwhile), and a
console reader that falls behind (the same). None of them changes the order of guest events
for the same input at the same virtual time.

This module knows VMs only as ``Member`` and the fabric only as ``Timed`` sources and
callbacks; it imports neither.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from hv.hw import Pool, default_jobs

PS = 1_000_000_000_000  # picoseconds per second
# The minimum latency of a NIC's cable, and so the lab's lookahead: 200 us (a lab's
# ``lookahead`` key changes it). It is what a guest-to-guest hop through a host's software
# switch costs (100-300 us of round trip between VMs on one host), and it lets a busy VM run
# 200,000 instructions at the nominal 1,000 MIPS between synchronisations with its peers:
# measured (bench/vtime.py busy --lookahead), 10 us made a lab of CPU-bound guests 3-6x
# slower than real time mode (a slice costs the host ~40 us beyond the guest's work), 200 us
# 1.0-1.2x, 500 us 1.04-1.10x; a ping through a 20 ms-each-way cable reads 40 ms plus twice
# the lookahead (40.4 ms at 200 us).
DEFAULT_LOOKAHEAD_PS = 200_000_000
INF = math.inf
# The most guest time a member runs in one round (10 ms): a guest that nothing can reach
# would otherwise run to its end before the others' turn.
ROUND_PS = 10_000_000_000
# The longest the timeline waits for scripts to react to a guest's output (host time; only
# another busy task in the same trio run, never a script, makes it wait that long).
SETTLE_MAX_S = 0.05
# Over several processes (Window): what another process posts, in the order of the
# processes' numbers (before this one's own events of the same time).
REMOTE_ORDER = 1 << 40
# How often an idle lab over several processes looks again for input the others got (s).
WINDOW_IDLE_S = 0.01


class Timed(Protocol):
    """A fabric object with timers of its own (an impaired cable, the services' retransmits):
    ``next_deadline`` on the lab's clock (seconds), ``fire(now)`` when it is due."""

    def next_deadline(self) -> float | None: ...

    def fire(self, now: float) -> None: ...


class Run(enum.Enum):
    RAN = "ran"  # reached the horizon
    YIELD = "yield"  # ran long enough in host time: let the event loop run, then go on
    SETTLE = "settle"  # printed what a script waits for: let it react, at this guest time
    SLEEPING = "sleeping"  # waits for an interrupt; next_ps says when it could wake
    WAITING = "waiting"  # needs host work first (a disk completion): await ``blocker``
    HELD = "held"  # its console reader is behind: await its wake-up
    PAUSED = "paused"
    STOPPED = "stopped"


class Window(Protocol):
    """The other processes of a lab split over several (hv.lab._shards): at the start of
    every round, ``sync`` tells them how soon this one could next act (``next_ps``: its
    members' and its fabric's earliest) and hands on what crossed to them; it posts what
    crossed from them (``Timeline.post_remote``) and returns the earliest any of them could
    still act (the lab's lower bound L). Nothing from another process enters this one's
    fabric before L plus the lookahead."""

    async def sync(self, timeline: Timeline, next_ps: float) -> float: ...


class Member(Protocol):
    """A VM, as the timeline drives it."""

    name: str

    def vt_ps(self) -> int:
        """Where it is on the timeline."""
        ...

    def vt_next_ps(self) -> float:
        """When it could next act: its time if it runs, its wake-up if it sleeps (INF if
        nothing is due: only a frame or input can wake it)."""
        ...

    def vt_advance(self, timeline: Timeline, horizon_ps: int) -> Run:
        """Run until the horizon (or sleep, or a reason to stop)."""
        ...

    def vt_blocker(self) -> trio.Event | None:
        """What a WAITING or HELD member waits for."""
        ...


@dataclass(order=True)
class _Posted:
    at_ps: int
    order: int
    seq: int
    fn: Callable[[], None] = field(compare=False)


class Ticket:
    """A completion due at ``due_ps`` whose host work is still running (``ready`` when it is
    done, with what to do at ``due_ps``)."""

    __slots__ = ("done", "due_ps", "event", "fn")

    def __init__(self, due_ps: int) -> None:
        self.due_ps = due_ps
        self.fn: Callable[[], None] | None = None
        self.done = False
        self.event = trio.Event()

    def ready(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.done = True
        self.event.set()


class Timeline:
    """A lab's virtual clock: its members (VMs), the outbox, the fabric's timers.

    ``now()`` is the fabric's clock (seconds): while an event is processed, its time; else the
    time up to which everything has been processed. ``run()`` is the task that drives it."""

    def __init__(self, lookahead_ps: int = DEFAULT_LOOKAHEAD_PS, jobs: int | None = None) -> None:
        if lookahead_ps <= 0:
            raise ValueError("the lookahead must be positive")
        if jobs is not None and jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.lookahead_ps = lookahead_ps
        # How many host threads run the members of a round at once (hv.hw._parallel);
        # the results are the same for any number.
        self.jobs = jobs if jobs is not None else default_jobs()
        self._pool: Pool | None = None
        self.now_ps = 0
        self._now_s = 0.0  # the same, exactly as the event had it (a fabric deadline's float)
        self._members: list[Member] = []
        # Members that can reach one another (a lab's VMs joined by switches and links): only
        # these bound each other's horizons. Unset: everyone reaches everyone.
        self._island: dict[str, int] = {}
        self.reached_ps = 0  # the newest time any member got to (for stats after the end)
        self._order: dict[int, int] = {}  # id(member) -> its place (ties in the outbox)
        self._outbox: list[_Posted] = []
        self._seq = itertools.count()
        self._timed: list[Timed] = []
        self._poke = trio.Event()
        # How far each member of the round under way may go (its first send lowers it).
        self._horizons: dict[int, int] = {}
        self._bound: float = INF  # while processing: what no member can send before
        self.rounds = 0
        self.events = 0
        # Told when a member stops (from inside the timeline, before anything else runs): a
        # lab decides there whether it ends, and ``halt`` then freezes the clock at once, so
        # how a lab ends is as repeatable as the rest of it.
        self.on_stop: Callable[[Member], None] | None = None
        self.halted = False
        # A lab over several processes: the window they share (None: this process is the
        # whole lab), and the earliest a frame from another one can still enter the fabric.
        self.window: Window | None = None
        self._remote_ps: float = INF
        self._lower: float = INF  # the lab's lower bound L at this round
        # What other processes posted (their frames, due here at their time; what the
        # fabric hands a VM while processing one arrives at once: ``_credit``).
        self._inbound: list[_Posted] = []
        self._credit = 0
        self.wall_start: float | None = None
        self.wall_s = 0.0  # wall time spent while the timeline ran
        self._ended = False
        self._running = False
        # Holds asked for (``held``): each (reached, released), served between two rounds.
        self._holds: list[tuple[trio.Event, trio.Event]] = []

    # -- the fabric's clock ------------------------------------------------------------------

    def now(self) -> float:
        return self._now_s

    def now_ns(self) -> int:
        return self.now_ps // 1000

    # -- registration ------------------------------------------------------------------------

    def add_member(self, member: Member) -> None:
        self._order[id(member)] = len(self._order)
        self._members.append(member)
        self.poke()

    def remove_member(self, member: Member) -> None:
        if member in self._members:
            self._members.remove(member)
        self.poke()

    def set_islands(self, islands: dict[str, int]) -> None:
        """Which members can reach which (by member name: equal numbers reach each other, a
        member not named reaches everyone). A guest with no NIC, or on a switch joined to no
        other guest's, then runs free of the others (only the fabric bounds it)."""
        self._island = dict(islands)

    def add_timed(self, timed: Timed) -> None:
        self._timed.append(timed)

    def halt(self) -> None:
        """Stop the clock for good: nothing more runs or is delivered (the lab ends)."""
        self.halted = True
        self.poke()

    def poke(self) -> None:
        """Something from outside (input, a finished host I/O, a stop): look again."""
        self._poke.set()

    # -- events ------------------------------------------------------------------------------

    def post(self, member: Member, at_ps: int, fn: Callable[[], None]) -> None:
        """``member`` did something at ``at_ps`` that others see (a frame into the switch):
        ``fn`` runs when the timeline reaches ``at_ps``. The sender may then run on at most
        the lookahead past it (something may answer)."""
        heapq.heappush(
            self._outbox, _Posted(at_ps, self._order.get(id(member), 0), next(self._seq), fn)
        )
        key = id(member)
        horizon = self._horizons.get(key)
        if horizon is not None and at_ps + self.lookahead_ps < horizon:
            self._horizons[key] = at_ps + self.lookahead_ps

    def post_remote(self, at_ps: int, source: int, fn: Callable[[], None]) -> None:
        """What another process of the lab (``source``, its number) handed this one's fabric
        for ``at_ps`` (a frame across a shard boundary, which left the other process's fabric
        a lookahead before): processed at ``at_ps`` before this process's own events of that
        time, in the order the posts come (the caller's order). It had its cable's latency on
        the way: what it brings a VM here arrives at ``at_ps``, not a lookahead later."""
        heapq.heappush(self._inbound, _Posted(at_ps, REMOTE_ORDER + source, next(self._seq), fn))

    def horizon_ps(self, member: Member) -> int:
        """How far ``member`` may go now (in the round under way)."""
        return self._horizons[id(member)]

    def frontier_ps(self, skip: Member | None = None) -> int:
        """The newest time any member (but ``skip``) has reached: where input from outside
        (typing, a resumed VM, a clone) comes in, so nobody ever receives something from its
        past."""
        return max([self.now_ps, *(m.vt_ps() for m in self._members if m is not skip)])

    def arrival_ps(self) -> int:
        """When something the fabric hands a VM now arrives there."""
        return self.now_ps + self.lookahead_ps - self._credit

    def _next_timed(self) -> tuple[float, Timed | None, float]:
        """The fabric's timer due first: (its time in ps, rounded up; the source; its
        deadline exactly as the source gave it)."""
        best: float = INF
        due: Timed | None = None
        due_s = 0.0
        for t in self._timed:
            d = t.next_deadline()
            if d is not None:
                ps = math.ceil(d * PS)
                if ps < best:
                    best, due, due_s = ps, t, d
        return best, due, due_s

    def _fabric_next(self) -> float:
        """When the fabric next does something: a timer, or the oldest event in the outbox."""
        best = self._next_timed()[0]
        if self._outbox and self._outbox[0].at_ps < best:
            best = self._outbox[0].at_ps
        return best

    def note_arrival(self, at_ps: int) -> None:
        """Something was handed to a member for ``at_ps`` (its inbox): it may act then."""
        if at_ps < self._bound:
            self._bound = at_ps

    def _inbound_next(self) -> float:
        return self._inbound[0].at_ps if self._inbound else INF

    def _process(self) -> int:
        """Everything due before what no member can still send before, in time order: the
        outbox and the fabric's timers. A delivery may wake a member earlier: it lowers the
        bound (``note_arrival``). Returns how many ran."""
        n = 0
        self._bound = self._members_min()
        while True:
            bound = self._bound
            top = self._outbox[0].at_ps if self._outbox else INF
            tnext, due, due_s = self._next_timed()
            at = min(top, tnext)
            inbound = self._inbound_next()
            if inbound <= at and inbound != INF:
                # From another process: before any event of its time here. A member at that
                # time has sent nothing earlier that is not in; one from elsewhere could still
                # come at L + W (ordered by process, so not at or past it).
                if inbound > bound or inbound >= self._remote_ps:
                    self.events += n
                    return n
                n += 1
                if inbound > self.now_ps:
                    self.now_ps, self._now_s = int(inbound), inbound / PS
                self._credit = self.lookahead_ps
                try:
                    heapq.heappop(self._inbound).fn()
                finally:
                    self._credit = 0
                continue
            if at >= bound or at >= self._remote_ps or at == INF:
                self.events += n
                return n
            n += 1
            if top <= tnext:
                if at > self.now_ps:
                    self.now_ps, self._now_s = int(at), at / PS
                heapq.heappop(self._outbox).fn()
            else:
                assert due is not None
                if at > self.now_ps:
                    self.now_ps, self._now_s = int(at), due_s
                due.fire(due_s)  # exactly its deadline: what is due then comes out

    def _members_min(self, skip: Member | None = None) -> float:
        best = INF
        for m in self._members:
            if m is not skip:
                n = m.vt_next_ps()
                if n < best:
                    best = n
        return best

    # -- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the members until the task is cancelled (a lab's nursery, a VM's own)."""
        self.wall_start = time.monotonic()
        self._ended = False
        self._pool = Pool(self.jobs)
        self._running = True
        try:
            while True:
                while self._holds:
                    reached, released = self._holds[0]
                    reached.set()
                    await released.wait()
                    self._holds.pop(0)
                await self._round()
        finally:
            self._running = False
            for reached, _ in self._holds:  # (a hold asked for as it ended: nothing runs now)
                reached.set()
            self.wall_s = time.monotonic() - self.wall_start
            self._ended = True
            self._pool.close()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """For the block, the timeline stands still between two rounds: no member is in a
        slice, and everything due before the lab's time has been processed (a snapshot)."""
        reached, released = trio.Event(), trio.Event()
        self._holds.append((reached, released))
        self.poke()
        try:
            if self._running:
                await reached.wait()
            yield
        finally:
            released.set()
            if not self._running and (reached, released) in self._holds:
                self._holds.remove((reached, released))

    # -- saved state (snapshots: the lab's or a VM's, which encode the calls) ----------------

    def pending(self) -> list[tuple[int, Member, Callable[[], None]]]:
        """What members posted that the fabric has not processed: (time, member, call), in
        the order it will be processed."""
        if self._inbound:
            raise RuntimeError("a lab over several processes cannot be snapshotted")
        by_order = {self._order[id(m)]: m for m in self._members}
        return [(p.at_ps, by_order[p.order], p.fn) for p in sorted(self._outbox)]

    def save_clock(self) -> dict[str, int | float]:
        return {"now_ps": self.now_ps, "now_s": self._now_s, "reached_ps": self.reached_ps}

    def load_clock(self, now_ps: int, now_s: float, reached_ps: int) -> None:
        self.now_ps, self._now_s, self.reached_ps = now_ps, now_s, reached_ps

    async def _round(self) -> None:
        if self.halted:
            await trio.sleep_forever()
        self.rounds += 1
        self._poke = trio.Event()
        lower = INF
        if self.window is not None:
            # A lab over several processes: agree on the lower bound first (and take in what
            # crossed from the others); no one here goes past what could still come from there.
            lower = await self.window.sync(
                self, min(self._members_min(), self._fabric_next(), self._inbound_next())
            )
            if self.halted:
                await trio.sleep_forever()
            self._lower, self._remote_ps = lower, lower + self.lookahead_ps
        processed = self._process()
        ran = False
        # Each member's horizon from the state at the round's start: the two earliest
        # members (a member's own time does not bound it) and the fabric. Members that run
        # before it in the round only move later, and what they send is later than where
        # they started, so these bounds stay safe, and cost O(N) a round, not O(N^2).
        # (Per island: members that cannot reach each other do not bound each other.)
        islands = self._island
        least: dict[int, tuple[float, float, Member | None]] = {}
        for m in self._members:
            n = m.vt_next_ps()
            key = islands.get(m.name, -1)
            first, second, who = least.get(key, (INF, INF, None))
            if n < first:
                least[key] = (n, first, m)
            elif n < second:
                least[key] = (first, n, who)
        everyone = least.get(-1, (INF, INF, None))
        fabric = self._fabric_next()
        if self.window is not None:
            # What another process posted reaches a VM at its own time, not a lookahead
            # after; and what may still come reaches one at L + W at the earliest.
            fabric = min(fabric, self._inbound_next() - self.lookahead_ps, self._lower)
        plan: list[tuple[Member, int]] = []
        for m in self._members:
            key = islands.get(m.name, -1)
            first, second, who = least.get(key, (INF, INF, None))
            others = second if m is who else first
            if key != -1:  # members with no island reach everyone
                others = min(others, everyone[0])
            elif len(least) > 1:
                others = min(
                    others, *(f for k, (f, _, w) in least.items() if k != -1 and w is not m)
                )
            start = m.vt_next_ps()
            # No more than ROUND_PS a round, even for a member nothing can reach (no NIC):
            # the others get their turn, at points that do not depend on the host.
            horizon = min(min(others, fabric) + self.lookahead_ps, start + ROUND_PS)
            if start >= horizon:
                continue
            plan.append((m, int(horizon) if horizon != INF else 1 << 62))
        if plan and not self.halted:
            ran = True
            await self._advance(plan)
        if not ran and not processed and (self.window is None or lower == INF):
            # Nothing can happen before something from outside: input, a stop, a host I/O.
            # (Over several processes: the others may get such input too; look again soon.)
            if self.window is None:
                await self._poke.wait()
            else:
                with trio.move_on_after(WINDOW_IDLE_S):
                    await self._poke.wait()
        else:
            await trio.lowlevel.checkpoint()

    async def _advance(self, plan: list[tuple[Member, int]]) -> None:
        """Run each member of ``plan`` to its horizon (lowered if it sends), on up to
        ``jobs`` host threads at once. Waits and yields in host time keep the horizons: where
        slices end never depends on when the host got round to it, nor on how many threads
        ran the round (each member's horizon comes from the round's starting state, and what
        one sends is only seen after the round)."""
        assert self._pool is not None
        self._horizons = {id(m): h for m, h in plan}
        todo = [m for m, _ in plan]
        try:
            while todo:
                got = self._pool.run([functools.partial(self._step, m) for m in todo])
                again: list[Member] = []
                settle = yielded = False
                for m, run in zip(todo, got, strict=True):
                    if run is Run.YIELD:
                        yielded = True
                        again.append(m)
                    elif run is Run.SETTLE:
                        settle = True
                        again.append(m)
                    elif run in (Run.WAITING, Run.HELD):
                        blocker = m.vt_blocker()
                        if blocker is not None:
                            with trio.move_on_after(1.0):  # re-check now and then (a stop)
                                await blocker.wait()
                        again.append(m)
                    else:
                        ps = m.vt_ps()
                        if ps > self.reached_ps:
                            self.reached_ps = ps
                        if run is Run.STOPPED and self.on_stop is not None:
                            self.on_stop(m)
                if settle:
                    # Everything that reacts to the output (a script's wait_for, then
                    # send_all) runs now, before the guest goes on: its input lands at this
                    # guest time. trio.testing imported here: it loads pytest when installed
                    # (~0.1 s of every hv start, and only virtual time needs it)
                    from trio.testing import wait_all_tasks_blocked

                    with trio.move_on_after(SETTLE_MAX_S):
                        await wait_all_tasks_blocked()
                elif yielded:
                    await trio.lowlevel.checkpoint()
                if self.halted:
                    return
                todo = [m for m in again if m in self._members]
        finally:
            self._horizons = {}

    def _step(self, m: Member) -> Run:
        return m.vt_advance(self, self._horizons[id(m)])

    # -- what users see ----------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """Virtual time, wall time and their ratio (virtual seconds per wall second)."""
        start = self.wall_start
        wall = time.monotonic() - start if start is not None and not self._ended else self.wall_s
        lab = self._members_min()
        virt = (lab if lab != INF else max(self.now_ps, self.reached_ps)) / PS
        return {
            "virtual_s": virt,
            "wall_s": wall,
            "ratio": virt / wall if wall > 0 else 0.0,
            "rounds": self.rounds,
            "events": self.events,
            "jobs": self.jobs,
            "parallel_batches": self._pool.batches if self._pool is not None else 0,
        }
