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

from hv._errors import HostError
from hv.hw import Counters, Fields, GuestMemory, State
from hv.virtio._mmio import VirtioBackend, VirtioMmio
from hv.virtio._queue import Virtqueue

DEVICE_ID_RNG = 4
MAX_REQUEST = 4096
# random.Random's state: its version, the Mersenne Twister's 624 words and position.
_MT_VERSION, _MT_WORDS = 3, 624

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

    # -- snapshots ---------------------------------------------------------------------------

    def _generator(self) -> random.Random | None:
        """The seeded generator behind ``source``, or None (``os.urandom``, or a source of
        the embedding application's own: nothing to save, nothing a run repeats)."""
        owner = getattr(self.source, "__self__", None)
        return owner if isinstance(owner, random.Random) else None

    def save_state(self) -> State:
        """The seeded generator's state (virtual time), so that a restored device goes on
        with the very bytes the uninterrupted run gives; None for any other source."""
        gen = self._generator()
        if gen is None:
            return {"seeded": False}
        version, words, gauss = gen.getstate()
        if version != _MT_VERSION or gauss is not None:  # (randbytes never sets gauss)
            raise HostError(f"virtio-rng: a generator state hv does not save ({version})")
        return {"seeded": True, "generator": list(words)}

    def load_state(
        self, st: Fields, mem: GuestMemory | None, queues: Sequence[Virtqueue], features: int
    ) -> None:
        gen = self._generator()
        seeded = st.bool("seeded")
        if seeded != (gen is not None):
            has = "a seeded generator" if gen is not None else "no seeded generator"
            raise st.fail("seeded", f"{seeded}, but this device has {has}")
        if gen is not None:
            words = st.ints("generator", _MT_WORDS + 1, 0, 0xFFFF_FFFF, length=_MT_WORDS + 1)
            pos = words[-1]
            st.check(pos <= _MT_WORDS, "generator", f"position {pos} is past {_MT_WORDS}")
            st.check(any(words[:-1]), "generator", "all zero: not a generator's state")
            gen.setstate((_MT_VERSION, tuple(words), None))
        self._mem, self._queue = mem, queues[0] if queues else None

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
