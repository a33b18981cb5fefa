"""virtio-rng, the entropy device (virtio 1.2, section 5.4): one queue, each chain a request
the device fills with random bytes.

Theory of operation. The driver posts device-writable buffers; on its notify the device
fills each chain's writable bytes (up to ``MAX_REQUEST``) and hands it back with the count.
Readable descriptors in a chain are ignored (counted, ``bad_requests``); a chain with no
writable bytes goes back empty.

Where the bytes come from. On real time, ``os.urandom``. In a virtual-time lab a run repeats
byte for byte (docs/TIME.md), so the guest's entropy must too: a ``random.Random`` seeded
with ``"{lab seed}/{VM name}/virtio-rng"`` (``seeded_source``; string seeds go through
SHA-512, the same in every process, as the impairments' do). That is entropy for a
simulation, reproducible by design: never for secrets that matter.

Bounds. ``MAX_REQUEST`` (4 KiB) per chain, so one notify costs the host at most a ring's
worth (256 x 4 KiB = 1 MiB of random bytes, about a millisecond). No rate per second: every
request is the guest's own exit, paced by its own CPU time, and the host's work per byte is
a few nanoseconds, less than the guest spent asking; a wall-clock rate would also make
virtual-time runs depend on the host. Linux asks 64 bytes at a time (its ``hwrng`` reads).
"""

from __future__ import annotations

import collections
import os
import random
from collections.abc import Callable, Sequence

from hv.hw import Counters, GuestMemory
from hv.virtio._mmio import VirtioBackend, VirtioMmio
from hv.virtio._queue import Virtqueue

DEVICE_ID_RNG = 4
MAX_REQUEST = 4096

Source = Callable[[int], bytes]

RNG_COUNTERS = frozenset(
    {
        "requests",  # chains filled
        "bytes",  # random bytes given
        "bad_requests",  # chains with device-readable buffers (ignored) ...
        "empty_requests",  # ... or no writable bytes at all (given back empty)
        "clipped",  # chains longer than MAX_REQUEST (filled to MAX_REQUEST)
    }
)


def seeded_source(seed: str) -> Source:
    """Deterministic bytes from ``seed`` (a virtual-time lab's VM: "SEED/VM/virtio-rng")."""
    return random.Random(seed).randbytes


class VirtioRng(VirtioBackend):
    """An entropy device; ``source(n)`` gives ``n`` random bytes (default ``os.urandom``;
    with ``seed``, ``seeded_source(seed)``)."""

    device_id = DEVICE_ID_RNG
    queue_max = 256

    def __init__(self, source: Source | None = None, *, seed: str | None = None) -> None:
        super().__init__()
        if source is None and seed is not None:
            source = seeded_source(seed)
        self.source: Source = source or os.urandom
        self.counters: collections.Counter[str] = Counters("virtio-rng", RNG_COUNTERS)
        self._mem: GuestMemory | None = None
        self._queue: Virtqueue | None = None

    @property
    def features(self) -> int:
        return 0

    @property
    def num_queues(self) -> int:
        return 1

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], features: int) -> None:
        self._mem, self._queue = mem, queues[0]

    def reset(self) -> None:
        self._mem, self._queue = None, None

    def notify(self, queue: int) -> None:
        mem, q, t = self._mem, self._queue, self.transport
        if mem is None or q is None or t is None:
            return
        c = self.counters
        done = False
        while (chain := q.pop()) is not None:  # a QueueError goes up: NEEDS_RESET
            done = True
            if chain.readable:
                c["bad_requests"] += 1
            want = chain.writable_len
            if want > MAX_REQUEST:
                c["clipped"] += 1
                want = MAX_REQUEST
            if not want:
                c["empty_requests"] += 1
                q.push(chain.head, 0)
                continue
            n = chain.write(mem, self.source(want))
            q.push(chain.head, n)
            c["requests"] += 1
            c["bytes"] += n
        if done:
            t.signal_used(0)


def virtio_rng(name: str, source: Source | None = None) -> VirtioMmio:
    """A virtio-rng device for ``VmConfig.devices`` (``VmConfig(rng=True)`` adds one)."""
    return VirtioMmio(name, VirtioRng(source))
