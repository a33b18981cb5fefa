"""hv._values: one rule per kind of value, for the command line, lab files, impairments and
disks; every error a BadValue (a ConfigError and a ValueError) naming the key and the value
as written."""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

import pytest

from hv._errors import ConfigError
from hv._values import (
    MIB,
    BadValue,
    argument,
    duration,
    ipv4_address,
    ipv4_interface,
    ipv4_network,
    mac,
    probability,
    rate,
    size,
    table,
    unknown,
)


@pytest.mark.parametrize(
    ("value", "bare", "n"),
    [
        ("64K", 1, 65536),
        ("64KiB", 1, 65536),
        ("64kb", 1, 65536),
        (" 1 G ", 1, 1 << 30),
        ("2T", 1, 2 << 40),
        ("100B", MIB, 100),  # B alone is bytes, whatever a bare number counts in
        ("512", MIB, 512 << 20),  # a bare number counts in the caller's unit (hv run --mem)
        (256, MIB, 256 << 20),  # as does a TOML integer
        ("4096", 1, 4096),
    ],
)
def test_sizes(value: Any, bare: int, n: int) -> None:
    assert size(value, "k", bare=bare) == n


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lots", 'k: "lots" is not a size; use e.g. 64K, 128M or 1G'),
        ("1.5G", 'k: "1.5G" is not a size'),
        (True, "k: true is not a size"),
        ("9" * 16, f'k: "{"9" * 16}" is not a size'),  # 15 digits at most
        ("8M", 'k: "8M" is out of range 16M..16G'),
    ],
)
def test_size_errors(value: Any, message: str) -> None:
    with pytest.raises(BadValue) as e:
        size(value, "k", lo=16 << 20, hi=16 << 30)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("20ms", 0.02),
        ("20 ms", 0.02),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("100ns", 1e-7),
        ("1.5s", 1.5),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("600", 600.0),  # a string without a unit: seconds
        (3600, 3600.0),  # a number: seconds
        (0, 0.0),
    ],
)
def test_durations(value: Any, seconds: float) -> None:
    assert duration(value, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["2min", "-1s", -1, float("inf"), float("nan"), True, "", "ms"])
def test_duration_errors(value: Any) -> None:
    with pytest.raises(BadValue, match=r"^k: .* is not a duration; use e\.g\. 20ms"):
        duration(value, "k")


def test_rates_and_probabilities() -> None:
    assert rate("50Mbit", "k") == 50e6 and rate("800kbit", "k") == 800e3 and rate(1e9, "k") == 1e9
    with pytest.raises(BadValue, match=r"bps is ambiguous"):
        rate("50Mbps", "k")
    with pytest.raises(BadValue, match=r"out of range"):
        rate(0, "k")
    assert probability("1.5%", "k") == pytest.approx(0.015) and probability(1, "k") == 1.0
    for bad in (1.5, -0.1, True, "1.5", 10**400):
        with pytest.raises(BadValue, match=r"is not a probability in 0\.\.1"):
            probability(bad, "k")


def test_addresses() -> None:
    assert mac("52:54:00:12:34:56", "k") == bytes.fromhex("525400123456")
    with pytest.raises(BadValue, match=r"^k: 01:00:00:00:00:01 is a multicast address"):
        mac("01:00:00:00:00:01", "k")
    with pytest.raises(BadValue, match=r"^k: .*not a MAC"):
        mac("52:54:00", "k")
    assert ipv4_address(" 10.0.0.1 ", "k") == ipaddress.IPv4Address("10.0.0.1")
    assert ipv4_interface("10.0.0.1", "k", 16) == ipaddress.IPv4Interface("10.0.0.1/16")
    assert ipv4_network("10.0.0.0/24", "k").num_addresses == 256
    with pytest.raises(BadValue, match=r'^k: "10\.0\.0\.300" is not an IPv4 address'):
        ipv4_interface("10.0.0.300", "k")
    with pytest.raises(BadValue, match=r"^k: 7 is not an IPv4 address"):
        ipv4_address(7, "k")


def test_tables_and_unknown_keys_raise_one_error_class() -> None:
    assert table({"a": 1}, "k") == {"a": 1}
    with pytest.raises(BadValue, match=r"^k: expected a table, got list"):
        table([], "k")
    with pytest.raises(BadValue, match=r"^k\.c: unknown key \(known: a, b\)"):
        unknown({"a": 1, "c": 2}, {"a", "b"}, "k")
    assert issubclass(BadValue, ConfigError) and issubclass(BadValue, ValueError)


def test_argument_turns_a_bad_value_into_argparses_error() -> None:
    assert argument(size, bare=MIB)("128M") == 128 << 20
    with pytest.raises(argparse.ArgumentTypeError, match=r'^"abc" is not a size'):
        argument(size)("abc")
