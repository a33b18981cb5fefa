"""Hostile snapshot files (issue 21): the header, the section table and the sections fuzzed;
a damaged file is refused with ``SnapshotError``, never another exception, a crash of the
host or a hang; a restored VM whose saved state was tampered with is refused or runs as a
guest of its own (whatever it then does stops it alone)."""

from __future__ import annotations

import copy
import mmap
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hv
from hv import VmConfig, run_vm
from hv.build import guest_path
from hv.hw import Fields, SnapshotFile, decode_state, encode_state, write_snapshot
from hv.hw._snapfile import MAGIC

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _sample(path: Path) -> bytes:
    ram = mmap.mmap(-1, 3 * mmap.PAGESIZE)
    ram[100:105] = b"guest"
    write_snapshot(
        path,
        [("meta", encode_state({"kind": "vm", "n": 1})), ("state", b"\x00" * 40)],
        [("ram", memoryview(ram))],
        durable=False,
    )
    return path.read_bytes()


def _read_all(path: Path) -> None:
    with SnapshotFile(path) as f:
        for name in f:
            s = f.sections[name]
            if s.pages:
                f.map_pages(name, s.length).close()
            else:
                data = f.read(name, 1 << 20)
                if name == "meta":
                    decode_state(data, "meta")


@FUZZ
@given(data=st.data())
def test_a_damaged_file_is_refused_with_snapshot_error_only(tmp_path: Path, data: Any) -> None:
    good = _sample(tmp_path / "good.hvsnap")
    raw = bytearray(good)
    how = data.draw(st.sampled_from(["flip", "truncate", "table", "extend"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "table":  # the header and section table: where a reader trusts numbers
        i = data.draw(st.integers(8, 32 + 3 * 48 - 1))
        raw[i] = data.draw(st.integers(0, 255))
    else:
        raw += data.draw(st.binary(min_size=1, max_size=64))
    bad = tmp_path / "bad.hvsnap"
    bad.write_bytes(bytes(raw))
    try:
        _read_all(bad)
    except hv.SnapshotError:
        return
    # accepted: then the damage was in bytes no check covers (pages, or bytes past the end)


@FUZZ
@given(blob=st.binary(max_size=300))
def test_arbitrary_bytes_are_no_snapshot(tmp_path: Path, blob: bytes) -> None:
    bad = tmp_path / "x.hvsnap"
    bad.write_bytes(MAGIC + blob if blob[:1] == b"\x00" else blob)
    with pytest.raises(hv.SnapshotError):
        _read_all(bad)


@FUZZ
@given(text=st.binary(max_size=200))
def test_a_state_section_that_is_not_state_is_refused(text: bytes) -> None:
    try:
        got = decode_state(text, "state")
    except hv.SnapshotError as e:
        assert str(e).startswith("state: ")
    else:  # (JSON that is a table: what a state section is)
        assert isinstance(got, dict) and Fields(got, "state").where == "state"


def _mutate(value: Any, rng: random.Random) -> Any:
    """One value somewhere in a saved state changed to another of a random kind."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        out = dict(value)
        out[key] = _mutate(value[key], rng) if rng.random() < 0.8 else _junk(rng)
        return out
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        items = list(value)
        items[i] = _mutate(value[i], rng) if rng.random() < 0.8 else _junk(rng)
        return items
    if isinstance(value, bytes) and value and rng.random() < 0.7:
        b = bytearray(value)
        b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    return _junk(rng)


def _junk(rng: random.Random) -> Any:
    return rng.choice(
        [-1, 0, 1, 1 << 64, 2**63 - 1, 7, "x", "", None, True, [], {}, b"", b"\xff" * 9, 0.5]
    )


async def test_a_restored_vm_with_tampered_state_is_refused_or_runs_alone(
    tmp_path: Path,
) -> None:
    config = VmConfig(kernel=guest_path("cpu"), cmdline="iters=300", clock="virtual", name="c",
                      mem_size=16 << 20)  # fmt: skip
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, config)
        info = await vm.snapshot(tmp_path / "c.hvsnap")
        vm.stop()
    with SnapshotFile(info.path) as f:
        state = decode_state(f.read("state", 1 << 26), "state")
        meta = f.read("meta", 1 << 20)
        kernel = f.read("kernel", 1 << 26)
        ram = f.map_pages("ram", 16 << 20)
    rng = random.Random(21)
    refused = ran = 0
    for n in range(40):
        bad = tmp_path / f"bad{n}.hvsnap"
        tampered = _mutate(copy.deepcopy(state), rng)
        write_snapshot(
            bad,
            [("meta", meta), ("state", encode_state(tampered)), ("kernel", kernel)],
            [("ram", memoryview(ram))],
            durable=False,
        )
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                try:
                    other = await nursery.start(run_vm, hv.restore(bad))
                except hv.SnapshotError:
                    refused += 1
                    continue
                with trio.move_on_after(0.2):  # (a tampered guest may run on: that is its own)
                    await other.wait()
                other.stop()
            exit = await other.wait()
            if exit.kind is hv.StopKind.BAD_INPUT:
                assert exit.reason.startswith("restore refused: "), exit.reason
                refused += 1
            else:
                assert exit.kind is not hv.StopKind.HOST_ERROR, exit
                ran += 1
    assert refused > 0 and ran > 0 and refused + ran == 40, (refused, ran)
