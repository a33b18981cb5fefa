"""Link impairment: delay, jitter, loss, bursts of loss, duplication, corruption, reordering,
a rate limit with a bounded queue, and an MTU, on a cable, each direction on its own.

Like Linux's netem, but better behaved: jitter does not reorder frames unless asked, a rate
limit queues frames instead of stretching a delay line, every random decision comes from a
seeded generator, and parameters change live without resetting anything.

Pieces:

- ``Impairment``: what one direction of a cable does (a frozen dataclass; the defaults are
  "nothing"), with ``GilbertElliott`` for bursty loss.
- The text of a lab file's ``impair = {...}`` table is read into these settings by the
  lab (``hv.lab._impair``); this module takes only typed values (seconds, bits/s, bytes,
  probabilities).
- ``ImpairedDirection``: the sans-IO core. Frames go in with ``submit(frame, offload, now)``
  and come out of ``due(now)``; ``next_deadline()`` says when the next one is due. It never
  reads a clock and never sleeps, so tests drive it with a fake one.
- ``ImpairedLink``: two directions and the async layer; a ``netfabric.ports.base.Cable``.
  ``wrap(deliver, direction)`` gives the ``Deliver`` callable (it takes a
  ``netfabric.frame.Frame``) to plug in instead of ``deliver``; ``run()`` is the trio task
  that hands frames over when they are due.

Theory of operation
-------------------

A frame entering a direction goes through these stages, in this order:

1. *Wire frames.* Decisions are made per frame on the wire, so an offloaded frame (a 64 KiB
   TSO frame, a partial checksum) is first taken as the segments it stands for, checksums
   filled in (``Frame.wire()``: cut once, shared with the captures and other receivers).
   Two cases keep the frame whole with its ``Offload``: no impairment at all (then the frame
   passes straight through, synchronously, at the cost of one attribute test), and a fixed
   delay alone (all segments would leave at the same instant anyway).
2. *Random draws.* Each wire frame takes exactly twelve numbers from the direction's
   ``random.Random``, whatever the parameters: loss, Gilbert-Elliott loss, Gilbert-Elliott
   transition, duplicate, and for each of the two possible copies corrupt, bit position,
   reorder and jitter. A fixed count keeps the stream aligned: turning on duplication does
   not change which frames are lost, and a delay or distribution change does not shift any
   later decision. The jitter and reorder draws are kept with the frame and turned into a
   delay when it leaves the rate limiter, with the parameters in force at that moment.
3. *MTU.* A frame whose L3 payload (after the Ethernet header and any VLAN tags) exceeds
   ``mtu`` is dropped (``dropped_mtu``).
4. *Loss.* Independent loss with probability ``loss``, or-ed with the Gilbert-Elliott
   chain's verdict (``dropped_loss``). The chain is in a good or a bad state; a frame is lost
   with ``loss_in_good`` or ``loss_in_bad`` according to the current state, then the state
   moves (good to bad with ``p_good_to_bad``, bad to good with ``p_bad_to_good``). With
   ``loss_in_bad = 1`` and ``loss_in_good = 0`` a burst of loss is a stay in the bad state:
   geometric, mean ``1 / p_bad_to_good`` frames; the long-run loss is ``loss_in_good *
   (1 - pi_bad) + loss_in_bad * pi_bad`` with ``pi_bad = p / (p + r)``.
5. *Duplicate* (probability ``duplicate``): the frame goes on as two copies, each with its
   own corruption, jitter and reorder draws, each taking its own place in the queue.
6. *Corrupt* (probability ``corrupt``): one bit, chosen uniformly among the bits after the
   14-byte Ethernet header, is flipped (after the checksums were filled in, so the receiver's
   checksum check catches it, as it would on a real wire).
7. *Rate limit*: a token bucket and a byte queue. The bucket fills at ``rate`` bits/s up to
   ``burst`` bytes; the frame at the head of the queue leaves when the bucket holds its
   length (or is full, for a frame larger than the bucket) and empties it by that length.
   Frames behind it wait in the queue, up to ``queue`` bytes; beyond that they are
   tail-dropped (``dropped_queue``). This is what a bottleneck link does, and what TCP's
   congestion control is built to find: a sender faster than the link fills the queue, the
   queue absorbs bursts, and overflow drops tell TCP to slow down, so it settles at the line
   rate. A bare delay line "limited" by stretching each frame's delay instead holds an
   unbounded number of frames in flight, grows the round trip without limit and never
   drops, which TCP reads as an ever longer path rather than a full one. Release times are
   computed exactly from the bucket's state (not from when ``due`` happens to be called), so
   a late timer does not lower the rate. The queue limit bounds the frames waiting for the
   rate limiter; the delay line after it (propagation) is not bounded.
8. *Delay, jitter, reorder.* The frame's delay is ``delay`` plus jitter, uniform in
   ``[-jitter, +jitter]`` or normal with sigma ``jitter`` (inverse CDF of the kept draw),
   clipped at 0. Its departure is ``max(release + delay, previous departure)``: a frame never
   leaves before the one submitted before it, because jitter on a real path is mostly
   queueing, and queues are FIFO; netem's habit of reordering whenever jitter exceeds the
   frame spacing makes TCP see spurious losses and fast-retransmit at any jitter. (So with
   frames closer together than the jitter span the measured delays skew upward, as behind
   a real queue.) Reordering happens only when asked: with probability ``reorder`` a frame
   leaves as soon as it is released, without its delay, ahead of the frames before it (it
   does not hold back the ones after it); ``reordered`` counts those that actually jumped
   ahead.

Seeds. Every decision comes from the direction's own ``random.Random``, seeded from the
impairment's ``seed`` and the direction's name: ``random.Random(f"{seed}/{direction}")``
(``direction_rng``). A string seed goes through SHA-512 in ``random.seed``, so the derivation
is the same in every process (unlike ``hash``, which is randomized per process), and the two
directions of one cable, sharing a seed, still draw independent streams. The same seed and
the same frames at the same times give the same decisions, bit for bit. A lab file without a
``seed`` gets the impairment table's key (e.g. ``links[0].impair``) as its seed: reproducible
from run to run, yet different from one cable to the next.

Live changes. ``ImpairedDirection.set(**changes)`` replaces the named parameters only: the
other parameters, the queued and in-flight frames, the token bucket, the Gilbert-Elliott
state and the generator stay as they are (a changed ``seed`` reseeds the generator, and only
that). Frames already in the delay line keep their departure; frames still waiting for the
rate limiter get the new delay when they leave it. A lowered queue limit drops nothing
already queued; it only refuses new frames until the queue has drained below it.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import trio

from netfabric._saved import (
    MAX_FRAME,
    load_float,
    load_frame,
    load_opt_float,
    load_rng,
    save_float,
    save_frame,
    save_rng,
)
from netfabric._state import StateReader
from netfabric.frame import Frame
from netfabric.offload import ETH, Offload

if TYPE_CHECKING:
    from netfabric.ports.base import Deliver

__all__ = [
    "COUNTERS",
    "DEFAULT_BURST",
    "DEFAULT_QUEUE",
    "GilbertElliott",
    "ImpairedDirection",
    "ImpairedLink",
    "Impairment",
    "direction_rng",
]

JitterDist: TypeAlias = Literal["uniform", "normal"]
Direction: TypeAlias = Literal["egress", "ingress"]

# The token bucket holds one full-size Ethernet frame unless told otherwise: the rate limiter
# then behaves like a link serializing frames at its line rate.
DEFAULT_BURST = 1514
# The rate limiter's queue: about 170 full-size frames (42 ms at 50 Mbit/s; enough for a
# whole 64 KiB TSO burst, small enough not to bloat the round trip).
DEFAULT_QUEUE = 256 * 1024
MAX_DURATION = 60.0  # seconds: delay and jitter
MAX_RATE = 1e12  # bits/s
MAX_SIZE = 1 << 30  # bytes: queue and burst
MTU_RANGE = (68, 65535)

COUNTERS = (
    "frames_in",  # wire frames entering (an offloaded frame kept whole counts once)
    "frames_out",
    "bytes_out",
    "dropped_loss",
    "dropped_queue",
    "dropped_mtu",
    "duplicated",
    "corrupted",
    "reordered",
    "resolved",  # offloaded frames resolved into wire frames
)

_N01 = NormalDist()
_TINY = 2.0**-53


def direction_rng(seed: int | str, direction: str) -> random.Random:
    """The generator of one direction: the same for the same seed and direction, in every
    process (a string seed is hashed with SHA-512, not Python's randomized ``hash``)."""
    return random.Random(f"{seed}/{direction}")


def _show(value: Any) -> str:
    """A value as the lab file spells it (TOML-ish), for error messages."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_prob(name: str, value: Any) -> None:
    if not (_is_num(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}: {_show(value)} is not a probability in 0..1")


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """Bursty loss: a two-state Markov chain stepped once per frame.

    A frame is lost with ``loss_in_good`` or ``loss_in_bad`` according to the state it finds,
    then the chain moves: good to bad with ``p_good_to_bad``, bad to good with
    ``p_bad_to_good``. The chain starts good. ``from_loss(loss, mean_burst)`` builds the
    simple Gilbert model (every frame lost in the bad state, none in the good one) with a
    given long-run loss and mean burst length."""

    p_good_to_bad: float
    p_bad_to_good: float
    loss_in_good: float = 0.0
    loss_in_bad: float = 1.0

    def __post_init__(self) -> None:
        for f in ("p_good_to_bad", "p_bad_to_good", "loss_in_good", "loss_in_bad"):
            _check_prob(f, getattr(self, f))

    @classmethod
    def from_loss(cls, loss: float, mean_burst: float) -> GilbertElliott:
        """Long-run loss ``loss`` in bursts of ``mean_burst`` frames on average."""
        _check_prob("loss", loss)
        if not (_is_num(mean_burst) and 1.0 <= mean_burst < math.inf):
            raise ValueError(f"length: {_show(mean_burst)} is not a burst length (>= 1 frame)")
        if loss >= 1.0:
            raise ValueError(f"loss: {_show(loss)}: a burst model needs some frames to pass")
        r = 1.0 / mean_burst
        p = loss * r / (1.0 - loss)
        if p > 1.0:
            need = loss / (1.0 - loss)
            raise ValueError(
                f"length: loss {_show(loss)} in bursts of {_show(mean_burst)} is impossible"
                f" (needs bursts of at least {need:.3g} frames)"
            )
        return cls(p, r, 0.0, 1.0)

    @property
    def stationary_bad(self) -> float:
        """The long-run share of frames that find the chain in the bad state."""
        total = self.p_good_to_bad + self.p_bad_to_good
        if total == 0.0:
            return 0.0  # never leaves the good state it starts in
        return self.p_good_to_bad / total

    @property
    def loss_rate(self) -> float:
        """The long-run loss probability."""
        bad = self.stationary_bad
        return self.loss_in_good * (1.0 - bad) + self.loss_in_bad * bad

    @property
    def mean_burst(self) -> float:
        """The mean stay in the bad state, in frames (the mean burst length when every frame
        in the bad state and none in the good one is lost)."""
        return 1.0 / self.p_bad_to_good if self.p_bad_to_good else math.inf


@dataclass(frozen=True, slots=True)
class Impairment:
    """What one direction of a cable does to frames. The defaults do nothing.

    Durations in seconds, probabilities in 0..1, ``rate`` in bits/s (``None``: no limit; the
    frame's bytes count, without preamble, FCS or inter-frame gap), ``burst`` and ``queue`` in
    bytes (they apply with a rate only), ``mtu`` the largest L3 payload in bytes (``None``: no
    limit). ``seed`` seeds the direction's generator (see ``direction_rng``)."""

    delay: float = 0.0
    jitter: float = 0.0
    jitter_dist: JitterDist = "uniform"
    loss: float = 0.0
    loss_burst: GilbertElliott | None = None
    duplicate: float = 0.0
    corrupt: float = 0.0
    reorder: float = 0.0
    rate: float | None = None
    burst: int = DEFAULT_BURST
    queue: int = DEFAULT_QUEUE
    mtu: int | None = None
    seed: int | str = 0

    def __post_init__(self) -> None:
        for f in ("delay", "jitter"):
            v = getattr(self, f)
            if not (_is_num(v) and 0.0 <= v <= MAX_DURATION):
                raise ValueError(f"{f}: {_show(v)} is not a duration in 0..{MAX_DURATION:g}s")
        if self.jitter_dist not in ("uniform", "normal"):
            raise ValueError(f'jitter_dist: {_show(self.jitter_dist)} is not "uniform" or "normal"')
        for f in ("loss", "duplicate", "corrupt", "reorder"):
            _check_prob(f, getattr(self, f))
        if self.loss_burst is not None and not isinstance(self.loss_burst, GilbertElliott):
            raise ValueError(f"loss_burst: {_show(self.loss_burst)} is not a GilbertElliott")
        if self.rate is not None and not (_is_num(self.rate) and 0.0 < self.rate <= MAX_RATE):
            raise ValueError(f"rate: {_show(self.rate)} is not a rate in bits/s (> 0, <= 1Tbit)")
        for f, lo in (("burst", 1), ("queue", 0)):
            v = getattr(self, f)
            if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= MAX_SIZE):
                raise ValueError(f"{f}: {_show(v)} is not a size in {lo}..{MAX_SIZE} bytes")
        if self.mtu is not None and not (
            isinstance(self.mtu, int)
            and not isinstance(self.mtu, bool)
            and MTU_RANGE[0] <= self.mtu <= MTU_RANGE[1]
        ):
            raise ValueError(f"mtu: {_show(self.mtu)} is not an MTU in 68..65535")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | str):
            raise ValueError(f"seed: {_show(self.seed)} is not an integer or a string")

    @property
    def is_null(self) -> bool:
        """Does nothing at all (frames pass straight through, offloads and all)."""
        return self.delay == 0.0 and not self.per_frame

    @property
    def per_frame(self) -> bool:
        """Decides something per wire frame (so offloaded frames are resolved first)."""
        return bool(
            self.jitter
            or self.loss
            or self.loss_burst is not None
            or self.duplicate
            or self.corrupt
            or self.reorder
            or self.rate is not None
            or self.mtu is not None
        )


# -- saved state (a lab's snapshot) ---------------------------------------------------------

# Frames a saved direction may hold in its queue or its delay line (far more than a queue of
# MAX_SIZE bytes of minimal frames needs in practice; a saved state is at most 64 MiB anyway).
MAX_SAVED_FRAMES = 1 << 20
_PROBS = ("loss", "duplicate", "corrupt", "reorder")
_GE_FIELDS = ("p_good_to_bad", "p_bad_to_good", "loss_in_good", "loss_in_bad")
SEED_RANGE = 1 << 64


def save_settings(imp: Impairment) -> dict[str, Any]:
    """An ``Impairment`` as saved state (floats exactly; what is None is left out)."""
    out: dict[str, Any] = {
        "delay": save_float(imp.delay),
        "jitter": save_float(imp.jitter),
        "jitter_dist": imp.jitter_dist,
    }
    for f in _PROBS:
        out[f] = save_float(getattr(imp, f))
    if imp.loss_burst is not None:
        out["loss_burst"] = {f: save_float(getattr(imp.loss_burst, f)) for f in _GE_FIELDS}
    if imp.rate is not None:
        out["rate"] = save_float(float(imp.rate))
    out["burst"], out["queue"] = imp.burst, imp.queue
    if imp.mtu is not None:
        out["mtu"] = imp.mtu
    out["seed_int" if isinstance(imp.seed, int) else "seed"] = imp.seed
    return out


def load_settings(st: StateReader) -> Impairment:
    """``save_settings``'s, checked as ``Impairment`` checks a lab's (``st.fail`` naming
    the value otherwise)."""
    values: dict[str, Any] = {
        "delay": load_float(st, "delay", 0.0, MAX_DURATION),
        "jitter": load_float(st, "jitter", 0.0, MAX_DURATION),
    }
    dist = st.str("jitter_dist", 16)
    st.check(dist in ("uniform", "normal"), "jitter_dist", f'{dist!r} is not "uniform" or "normal"')
    values["jitter_dist"] = dist
    for f in _PROBS:
        values[f] = load_float(st, f, 0.0, 1.0)
    if st.has("loss_burst"):
        ge = st.sub("loss_burst")
        values["loss_burst"] = GilbertElliott(*(load_float(ge, f, 0.0, 1.0) for f in _GE_FIELDS))
    if st.has("rate"):
        values["rate"] = load_float(st, "rate", 1e-300, MAX_RATE)
    values["burst"] = st.int("burst", 1, MAX_SIZE)
    values["queue"] = st.int("queue", 0, MAX_SIZE)
    if st.has("mtu"):
        values["mtu"] = st.int("mtu", *MTU_RANGE)
    if st.has("seed_int"):
        values["seed"] = st.int("seed_int", -SEED_RANGE, SEED_RANGE)
    else:
        values["seed"] = st.str("seed")
    try:
        return Impairment(**values)
    except ValueError as e:  # not expected: every value was checked above
        raise st.fail("settings", str(e)) from None


def _l3_len(frame: bytes) -> int:
    """The frame's L3 payload length: after the Ethernet header and any VLAN tags."""
    n = len(frame) - ETH
    pos = 12
    while frame[pos : pos + 2] in (b"\x81\x00", b"\x88\xa8") and n >= 4:
        n -= 4
        pos += 4
    return n


def _flip(frame: bytes, u: float) -> bytes:
    bits = (len(frame) - ETH) * 8
    i = min(int(u * bits), bits - 1)
    b = bytearray(frame)
    b[ETH + i // 8] ^= 1 << (i % 8)
    return bytes(b)


# A frame waiting for the rate limiter: frame, offload, length, reorder draw, jitter draw,
# arrival time.
_Held: TypeAlias = tuple[bytes, Offload | None, int, float, float, float]
# A frame in the delay line: departure, sequence number (FIFO among equal times), frame, offload.
_InFlight: TypeAlias = tuple[float, int, Frame]


class ImpairedDirection:
    """One direction of an impaired cable, sans IO: frames in with ``submit``, out of ``due``.

    ``now`` is any monotonic clock in seconds (the async layer uses trio's). Frames come out
    of ``due`` in departure order (FIFO among equal departures). ``counters`` (a Counter over
    ``COUNTERS``) holds, when nothing is pending: ``frames_in + duplicated == frames_out +
    dropped_loss + dropped_queue + dropped_mtu``."""

    def __init__(self, impairment: Impairment | None = None, name: str = "egress") -> None:
        self.name = name
        self.impairment = impairment if impairment is not None else Impairment()
        self.rng = direction_rng(self.impairment.seed, name)
        self.counters: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._bad = False  # the Gilbert-Elliott chain's state
        self._shaper: deque[_Held] = deque()
        self._queued = 0  # bytes in the shaper queue
        self._tokens = float(self.impairment.burst)
        self._t_tokens: float | None = None  # when _tokens was right (None: bucket full)
        self._line: list[_InFlight] = []
        self._last = -math.inf  # the last in-order departure
        self._seq = 0
        self._apply()

    def _apply(self) -> None:
        imp = self.impairment
        self._null = imp.is_null
        self._wire = imp.per_frame
        self._bps = imp.rate / 8.0 if imp.rate is not None else 0.0

    # -- state ---------------------------------------------------------------------------

    @property
    def transparent(self) -> bool:
        """No impairment and nothing pending: a frame may skip ``submit`` and go straight on."""
        return self._null and not self._line and not self._shaper

    @property
    def pending(self) -> int:
        """Frames submitted and not yet out of ``due`` (queued or in flight)."""
        return len(self._shaper) + len(self._line)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for the rate limiter (what the queue limit bounds)."""
        return self._queued

    # -- frames in -----------------------------------------------------------------------

    def submit(self, frame: bytes | Frame, offload: Offload | None, now: float) -> None:
        """A frame into this direction at ``now``: bytes with their ``offload``, or a
        ``Frame`` (which brings its own, and shares its wire form with the fabric)."""
        c = self.counters
        self._advance(now)
        if not isinstance(frame, Frame):
            frame = Frame(frame, offload)
        if not self._wire:  # nothing, or a fixed delay: the frame stays whole
            c["frames_in"] += 1
            self._to_line(frame, now, 1.0, 0.5)
            return
        if frame.offload is not None:
            c["resolved"] += 1
        wires = frame.wire()
        imp = self.impairment
        ge = imp.loss_burst
        r = self.rng.random
        for w in wires:
            c["frames_in"] += 1
            # Twelve draws per frame, always (see the module docstring).
            u_loss, u_gl, u_gt, u_dup = r(), r(), r(), r()
            copies = ((r(), r(), r(), r()), (r(), r(), r(), r()))
            lost = u_loss < imp.loss
            if ge is not None:
                if u_gl < (ge.loss_in_bad if self._bad else ge.loss_in_good):
                    lost = True
                self._bad = u_gt >= ge.p_bad_to_good if self._bad else u_gt < ge.p_good_to_bad
            if imp.mtu is not None and _l3_len(w) > imp.mtu:
                c["dropped_mtu"] += 1
                continue
            if lost:
                c["dropped_loss"] += 1
                continue
            n = 1
            if u_dup < imp.duplicate:
                n = 2
                c["duplicated"] += 1
            for u_c, u_bit, u_reo, u_jit in copies[:n]:
                f = w
                if u_c < imp.corrupt and len(w) > ETH:
                    f = _flip(w, u_bit)
                    c["corrupted"] += 1
                self._enqueue(f, now, u_reo, u_jit)

    def _enqueue(self, frame: bytes, now: float, u_reo: float, u_jit: float) -> None:
        if self.impairment.rate is None:
            self._to_line(Frame(frame), now, u_reo, u_jit)
            return
        size = len(frame)
        # Tail drop; a frame larger than the whole limit still gets into an empty queue.
        if self._shaper and self._queued + size > self.impairment.queue:
            self.counters["dropped_queue"] += 1
            return
        self._shaper.append((frame, None, size, u_reo, u_jit, now))
        self._queued += size
        self._advance(now)

    def _head_release(self) -> tuple[float, float]:
        """When the head of the queue leaves, and what the bucket holds then (before the
        frame takes its share). Exact: the bucket fills linearly between releases."""
        size, arrival = self._shaper[0][2], self._shaper[0][5]
        burst = float(self.impairment.burst)
        t, tokens = self._t_tokens, self._tokens
        if t is None or self._bps == 0.0:
            t, tokens = arrival, burst
        elif arrival > t:  # the queue was empty: the bucket filled until this frame came
            tokens = min(burst, tokens + (arrival - t) * self._bps)
            t = arrival
        need = min(float(size), burst)
        if tokens >= need:
            return t, tokens
        return t + (need - tokens) / self._bps, need

    def _advance(self, now: float) -> None:
        """Release from the rate limiter every frame whose time has come, at its exact time."""
        sh = self._shaper
        while sh:
            t, tokens = self._head_release()
            if t > now:
                break
            frame, off, size, u_reo, u_jit, _ = sh.popleft()
            self._tokens = tokens - size
            self._t_tokens = t
            self._queued -= size
            self._to_line(Frame(frame, off), t, u_reo, u_jit)

    def _to_line(self, frame: Frame, t: float, u_reo: float, u_jit: float) -> None:
        """Into the delay line, released at ``t``."""
        imp = self.impairment
        d = imp.delay
        if imp.jitter:
            if imp.jitter_dist == "uniform":
                d += imp.jitter * (2.0 * u_jit - 1.0)
            else:
                d += imp.jitter * _N01.inv_cdf(min(max(u_jit, _TINY), 1.0 - _TINY))
            d = max(d, 0.0)
        in_order = max(t + d, self._last)
        if u_reo < imp.reorder:
            dep = t
            if dep < in_order:
                self.counters["reordered"] += 1
        else:
            dep = self._last = in_order
        heapq.heappush(self._line, (dep, self._seq, frame))
        self._seq += 1

    # -- frames out ----------------------------------------------------------------------

    def due(self, now: float) -> list[tuple[bytes, Offload | None]]:
        """The frames whose departure is ``now`` or earlier, in departure order, as (bytes,
        offload)."""
        return [(f.data, f.offload) for f in self.due_frames(now)]

    def due_frames(self, now: float) -> list[Frame]:
        """``due``'s frames as ``Frame``s (a frame that went through whole is the one that
        came in)."""
        self._advance(now)
        line = self._line
        out: list[Frame] = []
        nbytes = 0
        while line and line[0][0] <= now:
            f = heapq.heappop(line)[2]
            out.append(f)
            nbytes += len(f.data)
        if out:
            self.counters["frames_out"] += len(out)
            self.counters["bytes_out"] += nbytes
        return out

    def next_deadline(self) -> float | None:
        """When ``due`` will next have something (or the rate limiter next releases a frame):
        ``None`` when nothing is pending."""
        best = self._line[0][0] if self._line else None
        if self._shaper:
            t = self._head_release()[0]
            if best is None or t < best:
                best = t
        return best

    def departures(self) -> list[float]:
        """The departure times of the frames in the delay line, sorted (for inspection)."""
        return sorted(e[0] for e in self._line)

    # -- saved state -----------------------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """Everything that decides what this direction does from now on: its settings (as
        changed live), its generator's exact state, the Gilbert-Elliott state, the frames
        waiting for the rate limiter (with their draws and arrival times) and the token
        bucket, the frames in the delay line with their departures (in the heap's own
        order, with their sequence numbers: equal departures leave in the same order), the
        last in-order departure, and the counters."""
        out: dict[str, Any] = {
            "settings": save_settings(self.impairment),
            "rng": save_rng(self.rng),
            "bad": self._bad,
            "counters": {k: self.counters[k] for k in COUNTERS},
            "queue": [
                {
                    "data": frame,
                    "reorder": save_float(u_reo),
                    "jitter": save_float(u_jit),
                    "arrival": save_float(arrival),
                }
                for frame, _, _, u_reo, u_jit, arrival in self._shaper
            ],
            "tokens": save_float(self._tokens),
            "line": [
                {**save_frame(f), "departs": save_float(dep), "seq": seq}
                for dep, seq, f in self._line
            ],
            "seq": self._seq,
        }
        if self._t_tokens is not None:
            out["tokens_at"] = save_float(self._t_tokens)
        if self._last != -math.inf:
            out["last"] = save_float(self._last)
        return out

    def load_state(self, st: StateReader) -> None:
        """Take back ``save_state``'s (a direction of the same name, of a cable built from
        the lab's configuration): every value is checked, ``st.fail`` naming a bad one,
        before anything changes."""
        imp = load_settings(st.sub("settings"))
        counters = st.sub("counters")
        counts = {k: counters.int(k) for k in COUNTERS}
        bad = st.bool("bad")
        shaper: deque[_Held] = deque()
        queued = 0
        last_arrival = 0.0
        for q in st.subs("queue", MAX_SAVED_FRAMES):
            frame = q.bytes("data", MAX_FRAME)
            u_reo = load_float(q, "reorder", 0.0, 1.0)
            u_jit = load_float(q, "jitter", 0.0, 1.0)
            arrival = load_float(q, "arrival")
            q.check(arrival >= last_arrival, "arrival", "the queue is kept in arrival order")
            last_arrival = arrival
            shaper.append((frame, None, len(frame), u_reo, u_jit, arrival))
            queued += len(frame)
        st.check(not shaper or imp.rate is not None, "queue", "frames wait for a rate limit only")
        tokens = load_float(st, "tokens", -float(MAX_SIZE), float(imp.burst))
        t_tokens = load_opt_float(st, "tokens_at")
        seq = st.int("seq")
        line: list[_InFlight] = []
        seqs: set[int] = set()
        for i, e in enumerate(st.subs("line", MAX_SAVED_FRAMES)):
            dep = load_float(e, "departs")
            n = e.int("seq", 0, max(seq - 1, 0))
            e.check(n < seq and n not in seqs, "seq", f"{n} is not a fresh sequence number")
            seqs.add(n)
            if i:  # the delay line is a heap: no entry before its parent
                parent = line[(i - 1) // 2]
                e.check((dep, n) > parent[:2], "departs", "the delay line is not in heap order")
            line.append((dep, n, load_frame(e)))
        last = load_opt_float(st, "last")
        load_rng(st, "rng", self.rng)
        self.impairment = imp
        self._apply()
        self.counters = Counter(counts)
        self._bad = bad
        self._shaper, self._queued = shaper, queued
        self._tokens, self._t_tokens = tokens, t_tokens
        self._line, self._seq = line, seq
        self._last = -math.inf if last is None else last

    # -- live changes --------------------------------------------------------------------

    def set(self, *, now: float | None = None, **changes: Any) -> None:
        """Change the named parameters (``Impairment`` fields) and only them.

        ``now``: when the change happens. With it, the rate limiter first releases what was
        due under the old parameters and a rate change takes effect exactly then; without it
        the change applies from the rate limiter's last release."""
        old = self.impairment
        try:
            new = dataclasses.replace(old, **changes)
        except TypeError:
            known = ", ".join(f.name for f in dataclasses.fields(Impairment))
            unknown = ", ".join(sorted(set(changes) - {f.name for f in dataclasses.fields(old)}))
            raise ValueError(f"{unknown}: not an impairment parameter (known: {known})") from None
        if now is not None:
            self._advance(now)
            t = self._t_tokens
            if old.rate is None:
                self._t_tokens = None  # after no limit, the bucket is full
            elif t is not None and now > t:
                # Bring the bucket to now under the old rate: the new one applies from now.
                self._tokens = min(float(old.burst), self._tokens + (now - t) * self._bps)
                self._t_tokens = now
        self.impairment = new
        if new.seed != old.seed:
            self.rng.seed(f"{new.seed}/{self.name}")
        self._apply()
        self._tokens = min(self._tokens, float(new.burst))
        if new.rate is None:  # the limit is gone: the queue goes at once
            base = now if now is not None else self._t_tokens
            if base is None:
                base = -math.inf
            while self._shaper:
                frame, off, size, u_reo, u_jit, arrival = self._shaper.popleft()
                self._queued -= size
                self._to_line(Frame(frame, off), max(base, arrival), u_reo, u_jit)


class ImpairedLink:
    """An impaired cable: an ``egress`` and an ``ingress`` ``ImpairedDirection`` and the trio
    task that hands their frames on when due.

    For a switch port, egress is what the switch sends out through the port (wrap the port's
    ``deliver``) and ingress what comes in (wrap the switch-side ``send``); for a link between
    two switches, egress is one way and ingress the other. ``run`` must be running (in the
    same trio run) for delayed frames to come out; frames due at once are handed on
    synchronously inside the wrapped call."""

    def __init__(
        self,
        egress: Impairment | None = None,
        ingress: Impairment | None = None,
        name: str = "",
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.name = name
        # Its time (seconds): trio's; a virtual-time lab's timeline, which then also calls
        # ``fire`` when ``next_deadline`` comes, instead of ``run`` (docs/TIME.md).
        self.clock = clock
        # Told when a frame is queued (a virtual-time lab's timeline: it may be idle)
        self.on_pending: Callable[[], None] | None = None
        self.egress = ImpairedDirection(egress, "egress")
        self.ingress = ImpairedDirection(ingress, "ingress")
        self._targets: dict[str, Deliver] = {}
        self._scope: trio.CancelScope | None = None

    def direction(self, which: Direction) -> ImpairedDirection:
        if which == "egress":
            return self.egress
        if which == "ingress":
            return self.ingress
        raise ValueError(f'{which!r}: a direction is "egress" or "ingress"')

    def wrap(self, deliver: Deliver, direction: Direction = "egress") -> Deliver:
        """A ``Deliver`` that puts frames through ``direction`` on their way to ``deliver``."""
        d = self.direction(direction)
        if direction in self._targets:
            raise ValueError(f"{self.name or 'link'}: {direction} is already wrapped")
        self._targets[direction] = deliver
        counters = d.counters

        def impaired(frame: Frame) -> None:
            if d.transparent:
                counters["frames_in"] += 1
                counters["frames_out"] += 1
                counters["bytes_out"] += len(frame.data)
                deliver(frame)
                return
            now = self.clock()
            d.submit(frame, None, now)
            for f in d.due_frames(now):
                deliver(f)
            if self.on_pending is not None:
                self.on_pending()
            scope = self._scope
            if scope is not None:
                nd = d.next_deadline()
                if nd is not None and nd < scope.deadline:
                    scope.deadline = nd  # wakes the sleeping run() earlier

        return impaired

    def set(self, which: Direction | Literal["both"] = "both", /, **changes: Any) -> None:
        """Change parameters live in one direction or both (``ImpairedDirection.set``)."""
        now = self.clock()
        dirs = (self.egress, self.ingress) if which == "both" else (self.direction(which),)
        for d in dirs:
            d.set(now=now, **changes)
        if self._scope is not None:
            self._scope.cancel()  # run() recomputes its deadline

    def save_state(self) -> dict[str, Any]:
        """Both directions' state (``ImpairedDirection.save_state``)."""
        return {"egress": self.egress.save_state(), "ingress": self.ingress.save_state()}

    def load_state(self, st: StateReader) -> None:
        """Take back ``save_state``'s, both directions checked before either changes: a
        restored cable hands on its frames in flight at their departures, and draws the
        same numbers as the saved one would have."""
        egress, ingress = st.sub("egress"), st.sub("ingress")
        spare = ImpairedDirection(None, "ingress")
        spare.load_state(ingress)  # checked first: a bad ingress leaves egress untouched
        self.egress.load_state(egress)
        self.ingress.load_state(ingress)
        if self._scope is not None:
            self._scope.cancel()  # run() recomputes its deadline
        if self.on_pending is not None:
            self.on_pending()

    def _deadline(self) -> float:
        best = math.inf
        for d in (self.egress, self.ingress):
            t = d.next_deadline()
            if t is not None and t < best:
                best = t
        return best

    def next_deadline(self) -> float | None:
        """When a frame is next due out of either direction (None: nothing is pending)."""
        t = self._deadline()
        return None if t == math.inf else t

    def fire(self, now: float) -> None:
        """Hand on what is due at ``now`` (a virtual-time lab's timeline calls this)."""
        self._flush(now)

    def _flush(self, now: float | None = None) -> None:
        if now is None:
            now = self.clock()
        for name, d in (("egress", self.egress), ("ingress", self.ingress)):
            target = self._targets.get(name)
            if target is None:
                continue
            for f in d.due_frames(now):
                target(f)

    async def run(
        self, *, task_status: trio.TaskStatus[ImpairedLink] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The cable's task: sleeps until the next departure (moved earlier by a new frame
        that is due sooner, or by a live change) and hands the due frames on in order.
        Frames still on the cable when it is cancelled are lost with it."""
        task_status.started(self)
        while True:
            self._flush()
            # Sleeping in a cancel scope lets a wrapped call move the wake-up earlier by
            # lowering the deadline (trio.sleep_until, with a deadline that can move).
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._scope = scope
                try:
                    await trio.sleep_forever()
                finally:
                    self._scope = None
