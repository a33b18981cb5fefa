"""The self-checking guests pass under hv, and each fault mode ends the way it should."""

from __future__ import annotations

import re

import pytest
from conftest import RunGuest

from hv import StopKind

SUMMARY = re.compile(rb"(\d+) passed, (\d+) failed")


def fail_lines(out: bytes) -> list[str]:
    return [line for line in out.decode(errors="replace").splitlines() if "FAIL" in line]


@pytest.mark.parametrize(("guest", "at_least"), [("traps", 10), ("sbi", 20)])
async def test_self_checking_guest_passes(guest: str, at_least: int, run_guest: RunGuest) -> None:
    info, out = await run_guest(guest)
    summary = SUMMARY.search(out)
    assert summary is not None, f"no summary line in:\n{out.decode(errors='replace')}"
    passed, failed = int(summary.group(1)), int(summary.group(2))
    assert failed == 0, "failing checks:\n" + "\n".join(fail_lines(out))
    assert passed >= at_least
    assert out.count(b"PASS") == passed
    assert info.kind == StopKind.POWEROFF
    assert info.exit_code == 0


PC = re.compile(r"pc=0x[0-9a-f]+")


@pytest.mark.parametrize(
    ("mode", "needles"),
    [
        ("novector", ("load access fault", "stvec=0", "stval=0x20000000")),
        ("loop", ("trap loop", "load access fault")),
        ("ebreak", ("breakpoint", "stvec=0")),
    ],
)
async def test_fatal_fault_stops_the_guest(
    mode: str, needles: tuple[str, ...], run_guest: RunGuest
) -> None:
    info, out = await run_guest("fault", cmdline=f"mode={mode}")
    assert f"fault: mode={mode}".encode() in out
    assert info.kind == StopKind.GUEST_FAULT
    assert info.exit_code == 2
    for needle in needles:
        assert needle in info.reason
    assert PC.search(info.reason), info.reason
    assert "\n" not in info.reason


async def test_fault_address_is_configurable(run_guest: RunGuest) -> None:
    info, _ = await run_guest("fault", cmdline="mode=novector addr=0x30000000")
    assert info.exit_code == 2
    assert "stval=0x30000000" in info.reason


@pytest.mark.parametrize(
    ("mode", "report"),
    [
        ("handler", rb"unhandled trap: scause=0x5 sepc=0x[0-9a-f]+ stval=0x20000000"),
        ("fetch", rb"unhandled trap: scause=0x1 sepc=0x20000000 "),
    ],
)
async def test_fault_reported_by_guest_handler(
    mode: str, report: bytes, run_guest: RunGuest
) -> None:
    info, out = await run_guest("fault", cmdline=f"mode={mode}")
    assert re.search(report, out), out
    assert info.kind == StopKind.FAILURE
    assert info.exit_code == 1
    assert "system failure" in info.reason


async def test_unknown_fault_mode_exits_with_failure(run_guest: RunGuest) -> None:
    info, out = await run_guest("fault", cmdline="mode=bogus")
    assert b"unknown mode bogus" in out
    assert info.kind == StopKind.FAILURE
    assert info.exit_code == 1
