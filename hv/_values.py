"""Values as people write them (sizes, durations, rates, probabilities, MACs, IPv4
addresses), one rule each, for every place that reads them: the command line, lab files,
impairments (``hv.lab._impair``), disks. Each parser takes the value (a string, or the number
TOML gives) and the key it came from (``vms.a.mem``, ``--mem``; "" for none), and returns
the typed value or raises ``BadValue``, whose message starts with the key and shows the
value as it was written (``vms.a.mem: "lots" is not a size; use e.g. 64K, 128M or 1G``).

The rules:

- size: a whole number, then optionally K, M, G or T, alone or followed by B or iB, in any
  case (``64K``, ``64KiB``, ``64kb``: 65536; powers of 1024, as QEMU reads them); B alone is
  bytes; spaces may stand around the unit. A bare number (or a TOML integer) counts in
  ``bare`` (bytes unless the caller says: a VM's memory counts in MiB, as QEMU's ``-m``).
- duration: a number of seconds (a TOML number), or a string: a number, then optionally
  ns, us (µs), ms, s, m, h or d; a string without a unit is seconds too. So ``lease =
  3600``, ``lease = "1h"`` and ``delay = "20ms"`` all work, as they did before the two
  duration parsers became this one (the impairment one wanted a unit; ``delay = 0.02`` and
  ``"20 ms"`` now work there too). ``hv netem --delay 20`` is still refused: on that command
  line a bare number means microseconds to tc users.
- rate: bits per second, a number, or a string: a number then ``bit`` with an optional k,
  M, G or T (powers of 1000, as tc's; ``50Mbit``). ``bps`` is refused as ambiguous.
- probability: a number in 0..1, or a percentage string (``"1.5%"``).
- MAC: six hex bytes with ``:`` or ``-`` (``52:54:00:12:34:56``); a NIC's is not multicast.
- IPv4: an address (``10.0.0.1``); an interface (``10.0.0.1/24``, the prefix defaulting to
  the caller's); a network (``10.0.0.0/24``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from hv._errors import ConfigError

KIB, MIB = 1 << 10, 1 << 20

_NUM = r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
_SIZE = re.compile(r"\s*([0-9]{1,15})\s*(?:([KMGT])(?:i?B)?|(B))?\s*", re.IGNORECASE)
_SIZE_SHIFT = {"K": 10, "M": 20, "G": 30, "T": 40}
_DURATION = re.compile(rf"\s*{_NUM}\s*(ns|us|µs|ms|s|m|h|d)?\s*")
_DURATION_UNIT = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
    "d": 86400.0, None: 1.0,
}  # fmt: skip
_RATE = re.compile(rf"{_NUM}([kKmMgGtT]?)bit")
_RATE_UNIT = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_PERCENT = re.compile(_NUM + r"%")


class BadValue(ConfigError, ValueError):
    """A value its key cannot take: the user's input (a ``ConfigError``), and a
    ``ValueError`` for code that checks values it was handed."""


def show(value: Any) -> str:
    """``value`` as a lab file spells it (``"20 ms"``, ``true``, ``1.5``), cut to 60."""
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str | bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bad(key: str, message: str) -> BadValue:
    """A ``BadValue`` about ``key`` ("": none)."""
    return BadValue(f"{key}: {message}" if key else message)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (TOML's and JSON's numbers)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


T = TypeVar("T")


def argument(parse: Callable[[Any, str], T], **options: Any) -> Callable[[str], T]:
    """``parse`` (with ``options``) as an argparse ``type=``: a ``BadValue`` becomes
    argparse's own error (``hv run: error: argument --mem: "abc" is not a size; ...``)."""

    def convert(text: str) -> T:
        try:
            return parse(text, "", **options)
        except BadValue as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


# -- tables ---------------------------------------------------------------------------------


JOBS_MAX = 1024


def host_threads(value: Any, key: str) -> int:
    """How many host threads run guests (``--jobs``): a whole number from 1."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= JOBS_MAX:
        raise ConfigError(
            f"{key}: {value!r} is not a number of host threads: use 1 to {JOBS_MAX} "
            "(the default is every core this process may use)"
        )
    return value


def table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise bad(key, f"expected a table, got {type(value).__name__}")
    return dict(value)


def unknown(keys: Iterable[Any], allowed: Iterable[str], key: str) -> None:
    """Refuse the first key not in ``allowed``, listing the ones that are."""
    known = sorted(allowed)
    extra = sorted(str(k) for k in keys if k not in known)
    if extra:
        raise BadValue(f"{key}.{extra[0]}: unknown key (known: {', '.join(known)})")


def string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise bad(key, f"expected a string, got {type(value).__name__}")
    return value


# -- numbers with units -------------------------------------------------------------------


def size_text(n: int) -> str:
    """``16M``, ``1G``, ``1536``: the largest unit that divides ``n``."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and not n % (1 << shift):
            return f"{n >> shift}{unit}"
    return str(n)


def size(value: Any, key: str, *, bare: int = 1, lo: int = 0, hi: int | None = None) -> int:
    """Bytes (see the module docstring); ``lo``..``hi``: the range the key allows."""
    n: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value * bare
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value)):
        unit, byte = m.group(2), m.group(3)
        n = int(m.group(1)) << _SIZE_SHIFT[unit.upper()] if unit else int(m.group(1))
        n = n if unit or byte else n * bare
    if n is None:
        raise bad(key, f"{show(value)} is not a size; use e.g. 64K, 128M or 1G")
    if hi is not None and not lo <= n <= hi:
        raise bad(key, f"{show(value)} is out of range {size_text(lo)}..{size_text(hi)}")
    if n < lo:
        raise bad(key, f"{show(value)} is less than {size_text(lo)}")
    return n


def duration(value: Any, key: str) -> float:
    """Seconds (see the module docstring); never negative, never infinite."""
    seconds: float | None = None
    if is_number(value):
        seconds = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = float(m.group(1)) * _DURATION_UNIT[m.group(2)]
    if seconds is None or not 0.0 <= seconds < math.inf:
        raise bad(key, f"{show(value)} is not a duration; use e.g. 20ms, 1.5s or 1h")
    return seconds


def rate(value: Any, key: str, *, hi: float = 1e12) -> float:
    """Bits per second, more than 0 and at most ``hi``."""
    if is_number(value):
        bps = float(value) if abs(value) <= hi else math.inf
    elif isinstance(value, str) and (m := _RATE.fullmatch(value)):
        bps = float(m.group(1)) * _RATE_UNIT[m.group(2).lower()]
    else:
        hint = " (bps is ambiguous)" if isinstance(value, str) and "bps" in value.lower() else ""
        raise bad(key, f"{show(value)} is not a rate{hint}; use e.g. 50Mbit")
    if not 0.0 < bps <= hi:
        raise bad(
            key, f"{show(value)} is out of range (over 0, up to 1Tbit; leave rate out for no limit)"
        )
    return bps


def probability(value: Any, key: str) -> float:
    """0..1, from a number or a percentage."""
    p: float | None = None
    if is_number(value):
        p = float(value) if abs(value) <= 2 else math.inf  # huge ints: no OverflowError
    elif isinstance(value, str) and (m := _PERCENT.fullmatch(value)):
        p = float(m.group(1)) / 100.0
    if p is None or not 0.0 <= p <= 1.0:
        raise bad(key, f"{show(value)} is not a probability in 0..1")
    return p


# -- addresses ------------------------------------------------------------------------------


def mac(value: Any, key: str) -> bytes:
    """A NIC's MAC address (not multicast)."""
    from netfabric.switch import parse_mac

    text = string(value, key)
    try:
        raw = parse_mac(text)
    except ValueError as e:
        raise bad(key, str(e)) from None
    if raw[0] & 1:
        raise bad(key, f"{text} is a multicast address, not a NIC's")
    return raw


def ipv4_address(value: Any, key: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(string(value, key).strip())
    except ValueError:
        raise bad(key, f"{show(value)} is not an IPv4 address") from None


def ipv4_interface(value: Any, key: str, prefix: int = 24) -> ipaddress.IPv4Interface:
    """``10.0.0.1/24``; without a ``/N``, ``prefix``."""
    text = string(value, key)
    try:
        return ipaddress.IPv4Interface(text if "/" in text else f"{text}/{prefix}")
    except ValueError:
        raise bad(key, f"{show(value)} is not an IPv4 address like 10.0.0.1/24") from None


def ipv4_network(value: Any, key: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(string(value, key))
    except ValueError:
        raise bad(key, f"{show(value)} is not an IPv4 network like 10.0.0.0/24") from None
