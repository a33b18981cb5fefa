"""netfabric.impair: the sans-IO core driven by a fake clock (measured delay and jitter
distributions, loss against binomial bounds, Gilbert-Elliott bursts, the rate limiter's line
rate and tail drop, seeds, live changes, corruption, duplication, the MTU, offloads), the lab
table parser (errors name their key; a fuzzer finds nothing but ValueError), and the trio
layer on trio's autojump clock."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from hv.lab._impair import parse_impairment
from netfabric.frame import Frame
from netfabric.impair import (
    COUNTERS,
    DEFAULT_BURST,
    DEFAULT_QUEUE,
    GilbertElliott,
    ImpairedDirection,
    ImpairedLink,
    Impairment,
    direction_rng,
)
from netfabric.offload import GSO_TCPV4, Offload, resolve
from netfabric.switch import Switch

MS = 1e-3


def frame(i: int, size: int = 100) -> bytes:
    """An Ethernet frame of ``size`` bytes carrying its index ``i``."""
    return (
        b"\x52\x54\x00\x00\x00\x02\x52\x54\x00\x00\x00\x01\x08\x00"
        + i.to_bytes(4, "big")
        + bytes(size - 18)
    )


def index(f: bytes) -> int:
    return int.from_bytes(f[14:18], "big")


Out = list[tuple[float, bytes]]


def drive(d: ImpairedDirection, arrivals: Iterable[tuple[float, bytes]]) -> Out:
    """Run ``d`` on a fake clock: frames in at their times, out at their deadlines."""
    out: Out = []

    def until(t: float) -> None:
        while (nd := d.next_deadline()) is not None and nd <= t:
            out.extend((nd, f) for f, _ in d.due(nd))

    for t, f in arrivals:
        until(t)
        d.submit(f, None, t)
        out.extend((t, g) for g, _ in d.due(t))
    until(math.inf)
    assert d.pending == 0
    return out


def delays(out: Out, arrival: dict[int, float]) -> list[float]:
    return [t - arrival[index(f)] for t, f in out]


def conserved(d: ImpairedDirection) -> bool:
    c = d.counters
    return c["frames_in"] + c["duplicated"] == (
        c["frames_out"] + c["dropped_loss"] + c["dropped_queue"] + c["dropped_mtu"]
    )


# -- delay and jitter ----------------------------------------------------------------------


def test_uniform_jitter_stays_in_its_band_around_the_delay() -> None:
    d = ImpairedDirection(Impairment(delay=20 * MS, jitter=5 * MS))
    arrival = {i: i * 30 * MS for i in range(1000)}  # spaced wider than the jitter band
    out = drive(d, ((t, frame(i)) for i, t in arrival.items()))
    ds = delays(out, arrival)
    assert len(ds) == 1000
    assert 15 * MS - 1e-9 <= min(ds) < 15.5 * MS and 24.5 * MS < max(ds) <= 25 * MS + 1e-9
    assert abs(statistics.fmean(ds) - 20 * MS) < 0.5 * MS
    # uniform: the standard deviation of U(-j, j) is j / sqrt(3)
    assert abs(statistics.pstdev(ds) - 5 * MS / math.sqrt(3)) < 0.2 * MS


def test_normal_jitter_has_the_asked_sigma_and_never_a_negative_delay() -> None:
    d = ImpairedDirection(Impairment(delay=20 * MS, jitter=5 * MS, jitter_dist="normal"))
    arrival = {i: i * 60 * MS for i in range(1000)}
    ds = delays(drive(d, ((t, frame(i)) for i, t in arrival.items())), arrival)
    assert abs(statistics.fmean(ds) - 20 * MS) < 0.5 * MS
    assert abs(statistics.pstdev(ds) - 5 * MS) < 0.4 * MS
    assert max(ds) > 30 * MS  # a bell, not a band: 2 sigma out happens in 1000 draws
    # sigma larger than the delay: clipped at 0, never negative
    d = ImpairedDirection(Impairment(delay=1 * MS, jitter=5 * MS, jitter_dist="normal"))
    arrival = {i: i * 60 * MS for i in range(500)}
    ds = delays(drive(d, ((t, frame(i)) for i, t in arrival.items())), arrival)
    assert min(ds) == 0.0 and sum(x == 0.0 for x in ds) > 100


def test_jitter_never_reorders_unless_asked() -> None:
    # frames 0.5 ms apart, jitter 5 ms: netem would shuffle them
    arrivals = [(i * 0.5 * MS, frame(i)) for i in range(2000)]
    d = ImpairedDirection(Impairment(delay=20 * MS, jitter=5 * MS))
    out = drive(d, arrivals)
    assert [index(f) for _, f in out] == list(range(2000))
    times = [t for t, _ in out]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert d.counters["reordered"] == 0
    # asked for: about 10 % of the frames jump ahead, without their delay
    d = ImpairedDirection(Impairment(delay=20 * MS, jitter=5 * MS, reorder=0.1))
    out = drive(d, arrivals)
    order = [index(f) for _, f in out]
    assert order != list(range(2000)) and sorted(order) == list(range(2000))
    assert 150 <= d.counters["reordered"] <= 250
    arrival = {i: t for i, (t, _) in enumerate(arrivals)}
    assert sum(dl == 0.0 for dl in delays(out, arrival)) == d.counters["reordered"]


# -- loss ----------------------------------------------------------------------------------


def test_independent_loss_within_the_binomial_interval() -> None:
    n, p = 10_000, 0.1
    d = ImpairedDirection(Impairment(loss=p, seed=1))
    out = drive(d, ((i * MS, frame(i)) for i in range(n)))
    lost = n - len(out)
    half = 3.29 * math.sqrt(n * p * (1 - p))  # 99.9 %, two-sided
    assert n * p - half <= lost <= n * p + half
    assert d.counters["dropped_loss"] == lost and conserved(d)


def loss_runs(out: Out, n: int) -> list[int]:
    got = {index(f) for _, f in out}
    runs, run = [], 0
    for i in range(n):
        if i in got:
            if run:
                runs.append(run)
            run = 0
        else:
            run += 1
    if run:
        runs.append(run)
    return runs


def test_gilbert_elliott_loses_in_bursts_at_the_stationary_rate() -> None:
    n = 60_000
    ge = GilbertElliott(p_good_to_bad=0.01, p_bad_to_good=0.25)
    assert ge.mean_burst == 4.0 and ge.loss_rate == pytest.approx(0.01 / 0.26)
    d = ImpairedDirection(Impairment(loss_burst=ge, seed=3))
    out = drive(d, ((i * MS, frame(i)) for i in range(n)))
    runs = loss_runs(out, n)
    assert abs(statistics.fmean(runs) - 4.0) < 0.4
    assert abs((n - len(out)) / n - ge.loss_rate) < 0.15 * ge.loss_rate
    assert d.counters["dropped_loss"] == n - len(out)
    # the same long-run loss, independent: runs of about one frame
    d = ImpairedDirection(Impairment(loss=ge.loss_rate, seed=3))
    runs = loss_runs(drive(d, ((i * MS, frame(i)) for i in range(n))), n)
    assert statistics.fmean(runs) < 1.1


def test_gilbert_from_loss_and_length() -> None:
    ge = GilbertElliott.from_loss(0.02, 4)
    assert ge.loss_rate == pytest.approx(0.02) and ge.mean_burst == pytest.approx(4)
    assert (ge.loss_in_good, ge.loss_in_bad) == (0.0, 1.0)
    with pytest.raises(ValueError, match="length"):
        GilbertElliott.from_loss(0.9, 1)  # 90 % loss in bursts of 1 frame cannot be


# -- rate, queue ---------------------------------------------------------------------------


def offered(n: int, size: int, bps: float) -> list[tuple[float, bytes]]:
    return [(i * size * 8 / bps, frame(i, size)) for i in range(n)]


def test_rate_limit_leaves_at_the_line_rate() -> None:
    d = ImpairedDirection(Impairment(rate=50e6, queue=4 << 20))
    out = drive(d, offered(1000, 1500, 100e6))
    assert len(out) == 1000 and d.counters["dropped_queue"] == 0
    assert [index(f) for _, f in out] == list(range(1000))
    rate = (len(out) - 1) * 1500 * 8 / (out[-1][0] - out[0][0])
    assert abs(rate - 50e6) < 0.02 * 50e6
    assert d.counters["bytes_out"] == 1000 * 1500


def test_rate_limit_queue_tail_drops_and_counts() -> None:
    limit = 64 * 1024
    d = ImpairedDirection(Impairment(rate=50e6, queue=limit))
    out: Out = []
    most = 0
    for t, f in offered(1000, 1500, 100e6):
        while (nd := d.next_deadline()) is not None and nd <= t:
            out.extend((nd, g) for g, _ in d.due(nd))
        d.submit(f, None, t)
        most = max(most, d.queued_bytes)
    while (nd := d.next_deadline()) is not None:
        out.extend((nd, g) for g, _ in d.due(nd))
    assert limit - 1500 < most <= limit
    # offered for 120 ms at twice the rate: about half leaves, plus what the queue held
    expect = 500 + limit // 1500
    assert abs(len(out) - expect) <= 3
    assert d.counters["dropped_queue"] == 1000 - len(out) and conserved(d)
    got = [index(f) for _, f in out]
    assert got == sorted(got)  # tail drop: the survivors in order
    rate = (len(out) - 1) * 1500 * 8 / (out[-1][0] - out[0][0])
    assert abs(rate - 50e6) < 0.02 * 50e6


def test_a_frame_within_the_rate_passes_without_delay() -> None:
    d = ImpairedDirection(Impairment(rate=50e6))
    for i in range(100):  # 1500 B a millisecond: 12 Mbit/s
        now = i * MS
        d.submit(frame(i, 1500), None, now)
        assert [index(f) for f, _ in d.due(now)] == [i]
    assert d.pending == 0 and d.counters["frames_out"] == 100
    # a back-to-back pair: the second waits for its share of the line (1500 B at 50 Mbit/s)
    d = ImpairedDirection(Impairment(rate=50e6))
    d.submit(frame(0, 1500), None, 1.0)
    d.submit(frame(1, 1500), None, 1.0)
    assert len(d.due(1.0)) == 1
    nd = d.next_deadline()
    assert nd is not None
    assert nd - 1.0 == pytest.approx((1500 - (DEFAULT_BURST - 1500)) * 8 / 50e6)


# -- seeds ---------------------------------------------------------------------------------

EVERYTHING = Impairment(
    delay=10 * MS,
    jitter=3 * MS,
    loss=0.05,
    loss_burst=GilbertElliott(0.01, 0.3),
    duplicate=0.05,
    corrupt=0.05,
    reorder=0.05,
    rate=20e6,
    queue=32 * 1024,
    seed=7,
)


def run_everything(imp: Impairment, name: str = "egress") -> tuple[Out, dict[str, int]]:
    d = ImpairedDirection(imp, name)
    out = drive(d, offered(3000, 700, 30e6))
    assert conserved(d)
    return out, dict(d.counters)


def test_same_seed_same_decisions_other_seed_others() -> None:
    out1, c1 = run_everything(EVERYTHING)
    out2, c2 = run_everything(EVERYTHING)
    assert out1 == out2 and c1 == c2  # every frame, byte and departure time
    assert all(c1[k] > 0 for k in COUNTERS if k != "dropped_mtu" and k != "resolved")
    out3, c3 = run_everything(Impairment(**{**vars_of(EVERYTHING), "seed": 8}))
    assert out3 != out1 and c3 != c1
    out4, _ = run_everything(EVERYTHING, "ingress")  # the other direction: its own stream
    assert out4 != out1
    assert direction_rng(7, "egress").random() == direction_rng("7", "egress").random()
    assert direction_rng(7, "egress").random() != direction_rng(7, "ingress").random()


def vars_of(imp: Impairment) -> dict[str, Any]:
    return {f: getattr(imp, f) for f in imp.__dataclass_fields__}


def test_one_parameter_does_not_shift_another_s_decisions() -> None:
    def lost(imp: Impairment) -> set[int]:
        out = drive(ImpairedDirection(imp), ((i * MS, frame(i)) for i in range(3000)))
        return set(range(3000)) - {index(f) for _, f in out}

    base = lost(Impairment(loss=0.1, seed=5))
    assert base == lost(Impairment(loss=0.1, seed=5, duplicate=0.3, reorder=0.2, delay=MS))
    assert base == lost(Impairment(loss=0.1, seed=5, delay=5 * MS, jitter=2 * MS))


# -- live changes --------------------------------------------------------------------------


def test_live_change_keeps_the_queue_the_rng_and_the_other_parameters() -> None:
    def fill() -> ImpairedDirection:
        d = ImpairedDirection(Impairment(delay=10 * MS, loss=0.2, rate=10e6, queue=1 << 20))
        for t, f in offered(200, 1500, 100e6):  # far faster than the line: the queue fills
            d.submit(f, None, t)
        return d

    now = 200 * 1500 * 8 / 100e6
    ref = drive(fill(), [])  # the same frames, no change
    d = fill()
    lost = d.counters["dropped_loss"]
    assert 20 < lost < 60
    state, pending, queued = d.rng.getstate(), d.pending, d.queued_bytes
    assert queued > 100 * 1500
    d.set(now=now, delay=50 * MS)
    assert d.rng.getstate() == state and d.pending == pending  # nothing drawn, nothing lost
    assert d.impairment.loss == 0.2 and d.impairment.rate == 10e6
    assert d.queued_bytes > queued - 2 * 1500  # at most what was due by then left the queue
    out = drive(d, [])
    assert [f for _, f in out] == [f for _, f in ref]  # the same survivors, in order
    assert d.counters["dropped_loss"] == lost
    # released (ref departure - 10 ms) before the change: as before; after: 50 ms late
    for (t, _), (t_ref, _) in zip(out, ref, strict=True):
        release = t_ref - 10 * MS
        assert t == pytest.approx(t_ref if release <= now else release + 50 * MS)
    assert sum(t_ref - 10 * MS > now for t_ref, _ in ref) > 100


def test_live_rate_change_applies_from_then_on() -> None:
    d = ImpairedDirection(Impairment(rate=10e6, queue=4 << 20))
    for t, f in offered(400, 1250, 100e6):  # 1250 B = 1 ms at 10 Mbit/s
        d.submit(f, None, t)
    d.set(now=0.1, rate=100e6)  # 100 frames out at 10 Mbit/s, the rest at 100
    out = drive(d, [])
    n_before = sum(t <= 0.1 + 1e-9 for t, _ in out)
    assert 99 <= n_before <= 101
    tail = [t for t, _ in out[n_before:]]
    rate = (len(tail) - 1) * 1250 * 8 / (tail[-1] - tail[0])
    assert abs(rate - 100e6) < 0.02 * 100e6
    assert not d.transparent
    d.set(rate=None)  # and with no limit at all: nothing left to do
    assert d.transparent


def test_removing_the_rate_releases_the_queue_at_once() -> None:
    d = ImpairedDirection(Impairment(rate=1e6, queue=1 << 20))
    for i in range(50):
        d.submit(frame(i, 1000), None, 0.0)
    assert [index(f) for f, _ in d.due(0.0)] == [0]
    assert d.pending == 49 and d.queued_bytes == 49_000
    d.set(now=0.002, rate=None)
    assert d.queued_bytes == 0 and not d.transparent
    assert [index(f) for f, _ in d.due(0.002)] == list(range(1, 50))
    assert d.transparent  # nothing left, nothing to do


# -- per-frame effects -----------------------------------------------------------------------


def test_corruption_flips_exactly_one_bit_after_the_ethernet_header() -> None:
    d = ImpairedDirection(Impairment(corrupt=1.0))
    positions = set()
    for i in range(300):
        f = frame(i, 200)
        d.submit(f, None, 0.0)
        [(g, _)] = d.due(0.0)
        diff = [(k, a ^ b) for k, (a, b) in enumerate(zip(f, g, strict=True)) if a != b]
        assert len(diff) == 1
        k, x = diff[0]
        assert k >= 14 and x.bit_count() == 1
        positions.add(k * 8 + x.bit_length())
    assert len(positions) > 200 and d.counters["corrupted"] == 300


def test_duplicate_gives_two_copies() -> None:
    d = ImpairedDirection(Impairment(duplicate=1.0))
    for i in range(10):
        d.submit(frame(i), None, 0.0)
    copies = [f for f, _ in d.due(0.0)]
    assert copies == [frame(i) for i in range(10) for _ in (0, 1)]
    assert d.counters["duplicated"] == 10 and d.counters["frames_out"] == 20
    d = ImpairedDirection(Impairment(duplicate=0.25, seed=2))
    out = drive(d, ((i * MS, frame(i)) for i in range(4000)))
    assert 850 <= len(out) - 4000 == d.counters["duplicated"] <= 1150


def test_mtu_drops_oversized_frames() -> None:
    d = ImpairedDirection(Impairment(mtu=1400))
    d.submit(frame(0, 14 + 1400), None, 0.0)
    d.submit(frame(1, 14 + 1401), None, 0.0)
    tagged = frame(2, 18 + 1400)
    tagged = tagged[:12] + b"\x81\x00\x00\x05" + tagged[12:-4]  # VLAN 5: 1400 B payload
    d.submit(tagged, None, 0.0)
    assert [f for f, _ in d.due(0.0)] == [frame(0, 1414), tagged]
    assert d.counters["dropped_mtu"] == 1 and conserved(d)


def tso() -> tuple[bytes, Offload]:
    pkt = (
        Ether(dst="52:54:00:00:00:02", src="52:54:00:00:00:01")
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=40000, dport=5001, seq=1, flags="PA")
        / (bytes(range(256)) * 254)
    )
    return bytes(pkt), Offload(True, 34, 16, GSO_TCPV4, 1448, 54)


def test_an_offloaded_frame_is_resolved_when_impaired_and_whole_when_not() -> None:
    big, off = tso()
    assert len(big) > 64_000
    wires = resolve(big, off)
    assert len(wires) == 45
    d = ImpairedDirection(Impairment(rate=1e9, mtu=1500))
    d.submit(big, off, 0.0)
    out = drive(d, [])
    assert [f for _, f in out] == wires and d.counters["resolved"] == 1
    assert d.counters["frames_in"] == 45 and d.counters["dropped_mtu"] == 0
    for imp in (Impairment(), Impairment(delay=5 * MS)):  # nothing / a fixed delay alone
        d = ImpairedDirection(imp)
        d.submit(big, off, 0.0)
        assert d.due(0.0) == ([(big, off)] if imp.is_null else [])
        if not imp.is_null:
            assert d.next_deadline() == 5 * MS and d.due(5 * MS) == [(big, off)]
        assert d.counters["resolved"] == 0 and d.counters["frames_in"] == 1


# -- the lab file ----------------------------------------------------------------------------

K = "links[0].impair"


def test_parse_a_full_table() -> None:
    eg, ing = parse_impairment(
        {
            "delay": "20ms",
            "jitter": "500us",
            "jitter_dist": "normal",
            "loss": 0.01,
            "loss_burst": {"p_good_to_bad": 0.01, "p_bad_to_good": 0.3},
            "duplicate": "0.5%",
            "corrupt": 0.001,
            "reorder": 0.02,
            "rate": "50Mbit",
            "queue": "64KiB",
            "burst": 3000,
            "mtu": 1400,
            "seed": 7,
        },
        K,
    )
    assert eg == ing
    assert eg == Impairment(
        delay=0.02,
        jitter=0.0005,
        jitter_dist="normal",
        loss=0.01,
        loss_burst=GilbertElliott(0.01, 0.3, 0.0, 1.0),
        duplicate=0.005,
        corrupt=0.001,
        reorder=0.02,
        rate=50e6,
        queue=65536,
        burst=3000,
        mtu=1400,
        seed=7,
    )


def test_a_duration_is_seconds_or_a_string_with_or_without_a_unit() -> None:
    """One rule for every duration (hv._values.duration): lab files that gave a DHCP lease
    as a bare number and impairments with units both keep working."""
    for delay in ("20ms", "20 ms", 0.02, "0.02", ".02s", "20000us"):
        eg, ing = parse_impairment({"delay": delay}, K)
        assert eg.delay == ing.delay == pytest.approx(0.02), delay


def test_parse_per_direction_and_defaults() -> None:
    eg, ing = parse_impairment(
        {"delay": "1.5s", "egress": {"rate": "800kbit"}, "ingress": {"delay": 0, "rate": 1e9}}, K
    )
    assert (eg.delay, eg.rate, ing.delay, ing.rate) == (1.5, 800e3, 0.0, 1e9)
    assert eg.seed == ing.seed == K  # no seed: the key, so each cable has its own stream
    assert (eg.queue, eg.burst) == (DEFAULT_QUEUE, DEFAULT_BURST)
    eg, ing = parse_impairment({"egress": {"rate": "1Gbit", "seed": 3}, "seed": 9}, K)
    assert (eg.rate, eg.seed, ing.seed, ing.is_null) == (1e9, 3, 9, True)
    eg, _ = parse_impairment({"loss_burst": {"loss": 0.02, "length": 4}}, K)
    assert eg.loss_burst is not None and eg.loss_burst.loss_rate == pytest.approx(0.02)
    assert parse_impairment({}, K) == (Impairment(seed=K), Impairment(seed=K))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"delay": "20 parsecs"}, f'{K}.delay: "20 parsecs" is not a duration; use e.g. 20ms'),
        ({"delay": -0.02}, f"{K}.delay: -0.02 is not a duration"),
        ({"delay": 61}, f"{K}.delay: 61 is out of range 0..60s"),
        ({"jitter": "2min"}, f'{K}.jitter: "2min" is not a duration'),
        ({"delay": "90s"}, f'{K}.delay: "90s" is out of range 0..60s'),
        ({"loss": 1.5}, f"{K}.loss: 1.5 is not a probability in 0..1"),
        ({"egress": {"corrupt": -0.1}}, f"{K}.egress.corrupt: -0.1 is not a probability"),
        ({"duplicate": True}, f"{K}.duplicate: true is not a probability"),
        ({"rate": "50Mbps"}, f'{K}.rate: "50Mbps" is not a rate (bps is ambiguous)'),
        ({"rate": 0}, f"{K}.rate: 0 is out of range"),
        ({"rate": "1Mbit", "queue": "lots"}, f'{K}.queue: "lots" is not a size'),
        ({"queue": "64KiB"}, f"{K}.queue: needs a rate (egress has none"),
        ({"ingress": {"burst": 9000}}, f"{K}.ingress.burst: needs a rate (ingress has none"),
        ({"reorder": 0.1}, f"{K}.reorder: needs a delay or jitter"),
        ({"mtu": 40}, f"{K}.mtu: 40 is not an MTU in 68..65535"),
        ({"jitter_dist": "pareto"}, f'{K}.jitter_dist: "pareto" is not a distribution'),
        ({"seed": 1.5}, f"{K}.seed: 1.5 is not a seed"),
        ({"loss_burst": 0.1}, f"{K}.loss_burst: expected a table, got float"),
        ({"loss_burst": {"p_good_to_bad": 0.1}}, f"{K}.loss_burst.p_bad_to_good: missing"),
        ({"loss_burst": {"loss": 0.1, "p_good_to_bad": 0.1}}, f"{K}.loss_burst.loss: give"),
        ({"loss_burst": {"loss": 0.9, "length": 1}}, f"{K}.loss_burst.length: loss 0.9"),
        ({"egress": "fast"}, f"{K}.egress: expected a table, got str"),
        ({"egress": {"egress": {}}}, f"{K}.egress.egress: unknown key (known: burst, corrupt,"),
        (
            {"latency": "20ms"},
            f"{K}.latency: unknown key (known: burst, corrupt, delay, duplicate, egress,"
            " ingress, jitter, jitter_dist, loss, loss_burst, mtu, queue, rate, reorder, seed)",
        ),
    ],
)
def test_parse_errors_name_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_impairment(table, K)
    assert str(e.value).startswith(message)


KEYS = [
    "delay",
    "jitter",
    "jitter_dist",
    "loss",
    "loss_burst",
    "duplicate",
    "corrupt",
    "reorder",
    "rate",
    "queue",
    "burst",
    "mtu",
    "seed",
    "egress",
    "ingress",
    "length",
    "p_good_to_bad",
    "p_bad_to_good",
]
SPELLINGS = ["20ms", "1.5s", "500us", "0", "50Mbit", "1Gbit", "64KiB", "3%", "normal", "uniform"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(SPELLINGS)
    | st.builds(
        lambda n, u: f"{n}{u}", st.integers(-5, 10**6), st.sampled_from(["ms", "Mbit", "K"])
    )
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=6))
def test_parse_fuzz_raises_nothing_but_value_error(table: dict[str, Any]) -> None:
    try:
        eg, ing = parse_impairment(table, K)
    except ValueError as e:
        assert str(e).startswith(K)
    else:
        assert isinstance(eg, Impairment) and isinstance(ing, Impairment)


# -- the trio layer --------------------------------------------------------------------------


async def test_link_delivers_after_the_delay(autojump_clock: trio.testing.MockClock) -> None:
    link = ImpairedLink(Impairment(delay=10 * MS), Impairment(duplicate=1.0))
    got: list[tuple[float, bytes, Offload | None]] = []
    back: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        egress = link.wrap(lambda f: got.append((trio.current_time(), f.data, f.offload)))
        ingress = link.wrap(lambda f: back.append(f.data), "ingress")

        def send(data: bytes, off: Offload | None) -> None:
            egress(Frame(data, off))

        def recv(data: bytes, off: Offload | None) -> None:
            ingress(Frame(data, off))

        await trio.sleep(1.0)  # the task sleeps with nothing to do
        t0 = trio.current_time()
        send(frame(1), None)
        send(frame(2), None)
        recv(frame(3), None)  # no delay: handed on inside the call, twice
        assert got == [] and back == [frame(3), frame(3)]
        await trio.sleep(9 * MS)
        assert got == []
        await trio.sleep(2 * MS)
        assert [f for _, f, _ in got] == [frame(1), frame(2)]
        assert [t - t0 for t, _, _ in got] == pytest.approx([10 * MS, 10 * MS])
        assert all(t - t0 >= 10 * MS for t, _, _ in got)
        # live: a longer delay for what comes next; the frames before keep theirs
        link.set("egress", delay=30 * MS)
        t1 = trio.current_time()
        send(frame(4), None)
        await trio.sleep(29 * MS)
        assert len(got) == 2
        await trio.sleep(2 * MS)
        assert len(got) == 3 and got[2][0] - t1 == pytest.approx(30 * MS)
        # and back to nothing: straight through, synchronously, offload and all
        link.set("egress", delay=0.0)
        off = Offload(True, 34, 16)
        send(frame(5), off)
        assert got[3][1:] == (frame(5), off) and got[3][0] == trio.current_time()
        assert link.egress.counters["frames_out"] == 4 and link.ingress.counters["duplicated"] == 1
        nursery.cancel_scope.cancel()


async def test_a_switch_port_behind_an_impaired_cable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sw = Switch("lan")
    link = ImpairedLink(Impairment(delay=5 * MS, rate=10e6))
    got: list[float] = []
    a = sw.attach("a", lambda f, o: None)
    impaired = link.wrap(lambda f: got.append(trio.current_time()))
    sw.attach("b", lambda f, o: impaired(Frame(f, o)))
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        t0 = trio.current_time()
        for i in range(10):  # a burst of 10 x 1250 B: 1 ms each at 10 Mbit/s
            a.send(frame(i, 1250))
        await trio.sleep(0.1)
        assert len(got) == 10
        # the first within the bucket at once, the next on the bucket's leftover (264 B),
        # then one a millisecond; each 5 ms later
        head = (DEFAULT_BURST - 1250) * 8 / 10e6
        expect = [5 * MS] + [5 * MS + i * MS - head for i in range(1, 10)]
        assert [t - t0 for t in got] == pytest.approx(expect)
        nursery.cancel_scope.cancel()
    sw.close()
