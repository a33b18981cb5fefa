"""A lab file's ``impair = {...}`` table, read into ``netfabric.impair``'s typed settings:
an ``Impairment`` per direction of a cable (``parse_impairment``), or the live changes ``hv
netem`` asks for (``parse_changes``). The values are spelled as ``hv._values`` reads them.

``table`` is either the keys of one impairment, applying to both directions::

    { delay = "20ms", jitter = "5ms", jitter_dist = "normal", loss = 0.01,
      loss_burst = { p_good_to_bad = 0.01, p_bad_to_good = 0.3 },
      duplicate = 0.001, corrupt = 0.001, reorder = 0.01,
      rate = "50Mbit", queue = "64KiB", burst = "3KiB", mtu = 1400, seed = 7 }

or ``{ egress = {...}, ingress = {...}, seed = 7 }``, or both: the top-level keys apply to
both directions and an ``egress``/``ingress`` table adds to or overrides them for its own
direction (a direction table may have its own ``seed`` too).

Values: durations ``"20ms"``, ``"1.5s"``, ``"500us"``, ``"100ns"`` (a bare number: seconds),
up to 60s; probabilities 0..1 or ``"1.5%"``; rates ``"50Mbit"``, ``"1Gbit"``, ``"800kbit"``,
a bare number in bits/s; sizes ``"64KiB"``/``"64K"``, a bare integer in bytes; ``mtu`` the
largest L3 payload (68..65535); ``jitter_dist`` ``"uniform"`` (default) or ``"normal"``
(sigma = jitter); ``loss_burst`` a Gilbert-Elliott model: ``{ p_good_to_bad, p_bad_to_good,
loss_in_good = 0, loss_in_bad = 1 }``, or simply ``{ loss = 0.02, length = 4 }`` (long-run
loss and mean burst length in frames); ``queue`` and ``burst`` need a ``rate``, ``reorder`` a
``delay`` or ``jitter``; ``seed`` an integer or a string (default: the table's key itself,
so each cable draws its own stream).

Errors are ``hv._values.BadValue`` (a ``ConfigError`` and a ``ValueError``) whose message
starts with the offending key, e.g. ``links[0].impair.delay: "20 parsecs" is not a
duration; use e.g. 20ms, 1.5s or 1h``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hv._values import (
    BadValue,
    bad,
    duration,
    is_number,
    probability,
    rate,
    show,
    size,
    table,
    unknown,
)
from netfabric.impair import (
    MAX_DURATION,
    MAX_RATE,
    MAX_SIZE,
    MTU_RANGE,
    GilbertElliott,
    Impairment,
    JitterDist,
)

_FIELDS = (
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
)
_GE_FULL = ("p_good_to_bad", "p_bad_to_good", "loss_in_good", "loss_in_bad")
_GE_SIMPLE = ("loss", "length")
# Settings a live change may take away again (JSON null): no rate limit, no MTU, no bursts.
_REMOVABLE = ("rate", "mtu", "loss_burst")


def _delay(value: Any, key: str) -> float:
    seconds = duration(value, key)
    if not seconds <= MAX_DURATION:
        raise bad(key, f"{show(value)} is out of range 0..{MAX_DURATION:g}s")
    return seconds


def _mtu(value: Any, key: str) -> int:
    lo, hi = MTU_RANGE
    if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
        return value
    raise bad(key, f"{show(value)} is not an MTU in {lo}..{hi} (L3 payload bytes)")


def _seed(value: Any, key: str) -> int | str:
    if isinstance(value, int | str) and not isinstance(value, bool):
        return value
    raise bad(key, f"{show(value)} is not a seed; use an integer or a string")


def _jitter_dist(value: Any, key: str) -> JitterDist:
    if value == "uniform" and isinstance(value, str):
        return "uniform"
    if value == "normal" and isinstance(value, str):
        return "normal"
    raise bad(key, f'{show(value)} is not a distribution; use "uniform" or "normal"')


def _loss_burst(value: Any, key: str) -> GilbertElliott:
    t = table(value, key)
    unknown(t, {*_GE_FULL, *_GE_SIMPLE}, key)
    full = [k for k in _GE_FULL if k in t]
    simple = [k for k in _GE_SIMPLE if k in t]
    if full and simple:
        raise BadValue(
            f"{key}.{simple[0]}: give either loss and length, or p_good_to_bad and"
            " p_bad_to_good (and loss_in_good, loss_in_bad), not both"
        )
    if simple:
        for k in _GE_SIMPLE:
            if k not in t:
                raise BadValue(f"{key}.{k}: missing (a burst model by loss and length)")
        loss = probability(t["loss"], f"{key}.loss")
        length = t["length"]
        if not (is_number(length) and 1 <= length <= 1e9):
            raise BadValue(
                f"{key}.length: {show(length)} is not a mean burst length (frames, >= 1)"
            )
        try:
            return GilbertElliott.from_loss(loss, float(length))
        except ValueError as e:
            raise BadValue(f"{key}.{e}") from None
    for k in ("p_good_to_bad", "p_bad_to_good"):
        if k not in t:
            raise BadValue(
                f"{key}.{k}: missing (a Gilbert-Elliott model needs p_good_to_bad and"
                " p_bad_to_good; or give loss and length)"
            )
    probs = {k: probability(t[k], f"{key}.{k}") for k in _GE_FULL if k in t}
    return GilbertElliott(**probs)


def _field(name: str, value: Any, key: str) -> Any:
    if name in ("delay", "jitter"):
        return _delay(value, key)
    if name == "jitter_dist":
        return _jitter_dist(value, key)
    if name in ("loss", "duplicate", "corrupt", "reorder"):
        return probability(value, key)
    if name == "loss_burst":
        return _loss_burst(value, key)
    if name == "rate":
        return rate(value, key, hi=MAX_RATE)
    if name in ("queue", "burst"):
        return size(value, key, lo=0 if name == "queue" else 1, hi=MAX_SIZE)
    return _mtu(value, key)


def _fields(t: Mapping[str, Any], key: str) -> dict[str, tuple[Any, str]]:
    """The impairment keys of one table, converted: field -> (value, its key)."""
    return {f: (_field(f, t[f], f"{key}.{f}"), f"{key}.{f}") for f in _FIELDS if f in t}


def _build(fields: dict[str, tuple[Any, str]], seed: int | str, where: str) -> Impairment:
    values = {f: v for f, (v, _) in fields.items()}
    direction = where.rsplit(".", 1)[-1]
    for f in ("queue", "burst"):
        if f in fields and "rate" not in fields:
            raise BadValue(
                f'{fields[f][1]}: needs a rate ({direction} has none; add e.g. rate = "50Mbit")'
            )
    if values.get("reorder") and not values.get("delay") and not values.get("jitter"):
        raise BadValue(
            f"{fields['reorder'][1]}: needs a delay or jitter to jump ahead of"
            f" ({direction} has none)"
        )
    try:
        return Impairment(**values, seed=seed)
    except ValueError as e:  # not expected: the checks above cover Impairment's
        raise BadValue(f"{where}.{e}") from None


def parse_impairment(value: Any, key: str) -> tuple[Impairment, Impairment]:
    """A lab file's impairment table to the (egress, ingress) pair (see the module
    docstring); a ``BadValue`` naming the key."""
    t = table(value, key)
    unknown(t, {*_FIELDS, "seed", "egress", "ingress"}, key)
    seed: int | str = _seed(t["seed"], f"{key}.seed") if "seed" in t else key
    base = _fields(t, key)
    out: list[Impairment] = []
    for name in ("egress", "ingress"):
        fields = dict(base)
        dseed = seed
        if name in t:
            sk = f"{key}.{name}"
            sub = table(t[name], sk)
            unknown(sub, {*_FIELDS, "seed"}, sk)
            fields.update(_fields(sub, sk))
            if "seed" in sub:
                dseed = _seed(sub["seed"], f"{sk}.seed")
        out.append(_build(fields, dseed, f"{key}.{name}"))
    return out[0], out[1]


def parse_changes(value: Any, key: str) -> dict[str, Any]:
    """Live changes (``ImpairedLink.set``) from a table spelled as a lab file's ``impair``
    table is (``{"loss": "1%", "delay": "20ms"}``; no ``egress``/``ingress``: the caller
    picks the direction), plus ``None`` for ``rate``, ``mtu`` or ``loss_burst`` to take it
    away. Only the named settings change. A ``BadValue`` naming ``key.FIELD``."""
    t = table(value, key)
    unknown(t, {*_FIELDS, "seed"}, key)
    removed = {f: None for f in _REMOVABLE if f in t and t[f] is None}
    changes = {
        f: v for f, (v, _) in _fields({k: v for k, v in t.items() if k not in removed}, key).items()
    }
    changes.update(removed)
    if "seed" in t:
        changes["seed"] = _seed(t["seed"], f"{key}.seed")
    return changes
