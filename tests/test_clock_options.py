"""Virtual time from the command line and from code: ``hv run --clock``, ``hv up --clock
--seed --mips`` (over the lab file's keys), ``open_lab(clock=...)`` and ``Lab(clock=...)``;
what ``hv stats``, ``hv top`` and ``hv up``'s live view say of the lab's clock. Real guests
(the bundled ``sleep``, ``ping``, ``udpecho``), real ``hv`` processes."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from test_control import Host

import hv
from hv import ConfigError, Lab
from hv.build._zig import cache_dir
from hv.cli._control import load_named
from hv.lab import as_spec
from hv.lab._stats import rates, render_snapshot, snapshot

pytest_plugins = ["pytester"]
# pytester points HOME at its own folder: keep the built guests and engine where they are
CACHE_BASE = cache_dir().parent

REPO = Path(__file__).resolve().parent.parent

# 3 x 10 s of guest sleep: in real time that would take 30 s; on virtual time a fraction
SLEEPER = 'kernel = "sleep"\nmem = "16M"\nappend = "ms=10000 count=3"\n'
LOSSY = """
[switches.a]
[switches.b]
[[links]]
a = "a"
b = "b"
impair = { delay = "5ms", loss = "50%" }
[vms.echo]
kernel = "udpecho"
mem = "16M"
nics = [{ switch = "b", ip = "10.0.0.2/24" }]
[vms.pinger]
kernel = "ping"
mem = "16M"
append = "peer=10.0.0.2 count=24 interval=20"
nics = [{ switch = "a", ip = "10.0.0.1/24" }]
"""
TAP_LAB = '[switches.lan]\ntap = "hvclk0"\n[vms.s]\n' + SLEEPER


def hv_cli(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "hv.cli", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def in_netns(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``hv ARGS`` in a network namespace of its own: a regression that opens a TAP touches
    no interface of the host's."""
    return subprocess.run(
        ["unshare", "--net", "--map-root-user", sys.executable, "-m", "hv.cli", *map(str, args)],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def sleeps(out: str) -> tuple[list[float], float]:
    """The sleep guest's measured sleeps and its total, in ms."""
    each = [float(x) for x in re.findall(r"sleep \d+: ([\d.]+) ms", out)]
    total = re.search(r"done in ([\d.]+) ms", out)
    assert total is not None, out
    return each, float(total.group(1))


def one_line(r: subprocess.CompletedProcess[str], status: int = 4) -> str:
    assert r.returncode == status, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hv: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


# -- hv run --------------------------------------------------------------------------------


def test_hv_run_clock_virtual_runs_the_guest_on_guest_time(tmp_path: Path) -> None:
    """30 s of guest sleep, each timer exact to the guest (virtual time jumps to the
    deadline), in well under 30 s of wall time; --mips sets the rate, and a slower hart takes
    longer in guest time for the same instructions between its sleeps."""
    args = ("run", "sleep", "--mem", "16M", "--append", "ms=10000 count=3", "--clock", "virtual")
    start = time.monotonic()
    fast = hv_cli(*args, cwd=tmp_path)
    wall = time.monotonic() - start
    assert fast.returncode == 0, fast.stderr
    each, total = sleeps(fast.stdout)
    assert len(each) == 3 and all(10000.0 <= ms < 10000.01 for ms in each), fast.stdout
    assert 30000.0 <= total < 30000.05 and wall < 30, (fast.stdout, wall)
    again = hv_cli(*args, cwd=tmp_path)
    assert again.stdout == fast.stdout  # nothing of the host in it
    slow = hv_cli(*args, "--mips", "100", cwd=tmp_path)
    assert slow.returncode == 0, slow.stderr
    assert sleeps(slow.stdout)[1] > total, (slow.stdout, fast.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clock", "virtual", "--mips", "7"], "--mips: mips 7: use a rate that divides"),
        (["--clock", "virtual", "--mips", "0"], "--mips: mips 0 is out of range"),
        (["--mips", "500"], "--mips: sets how fast virtual time runs: add --clock virtual"),
        (["--clock", "real", "--mips", "500"], "add --clock virtual"),
    ],
)
def test_hv_run_bad_clock_options_exit_4(args: list[str], message: str, tmp_path: Path) -> None:
    assert message in one_line(hv_cli("run", "hello", *args, cwd=tmp_path))


def test_hv_run_refuses_a_tap_on_virtual_time_before_opening_it(tmp_path: Path) -> None:
    r = in_netns("run", "hello", "--clock", "virtual", "--net", "tap:hvclk0", cwd=tmp_path)
    assert one_line(r) == (
        "hv: --net tap:hvclk0: a TAP puts the host on the wire, and the host lives in real "
        "time, so this VM cannot run on virtual time: use --clock real, or leave out --net"
    )


def test_clock_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["run", "hello", "--clock", "fast"], ["up", "x.toml", "--seed", "many"]):
        r = hv_cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and "usage:" in r.stderr, (args, r.stderr)


def test_clock_options_have_help(tmp_path: Path) -> None:
    for command in ("run", "up"):
        text = " ".join(hv_cli(command, "--help", cwd=tmp_path).stdout.split())
        assert "--clock {real,virtual}" in text and "--mips N" in text
        assert "guest time comes from the instructions the guests run" in text
        assert "docs/TIME.md" in text
    up = " ".join(hv_cli("up", "--help", cwd=tmp_path).stdout.split())
    assert "--seed N" in up and "instead of its file's seed key" in up
    assert "A lab with a TAP runs on real time only" in up


# -- hv up ---------------------------------------------------------------------------------


def test_hv_up_clock_virtual_overrides_the_file(tmp_path: Path) -> None:
    lab = tmp_path / "lab.toml"
    lab.write_text("[vms.s]\n" + SLEEPER)  # no clock key: real time by the file
    start = time.monotonic()
    r = hv_cli("up", lab, "--clock", "virtual", cwd=tmp_path)
    wall = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    each, total = sleeps(r.stdout)
    assert all(10000.0 <= ms < 10000.01 for ms in each) and total < 30000.05, r.stdout
    assert wall < 30


def test_hv_up_seed_overrides_the_file_and_decides_the_losses(tmp_path: Path) -> None:
    """On virtual time a seed gives the same run, another seed other losses; --seed replaces
    the file's."""
    lab = tmp_path / "lossy.toml"
    lab.write_text('clock = "virtual"\nseed = 1\n' + LOSSY)

    def replies(*more: str) -> list[str]:
        r = hv_cli("up", lab, "--exit-code-from", "pinger", *more, cwd=tmp_path)
        got = re.findall(r"ping: reply from 10.0.0.2: seq=(\d+)", r.stdout)
        assert "24 sent" in r.stdout and got, r.stdout + r.stderr
        return got

    first = replies()
    assert replies("--seed", "1") == first
    other = replies("--seed", "2")
    assert other == replies("--seed", "2") and other != first


@pytest.mark.parametrize(
    ("file", "args", "message"),
    [
        ('clock = "real"\n[vms.s]\n' + SLEEPER, ["--mips", "500"], "--mips: sets how fast "
         "virtual time runs, but lab clk runs on real time: add --clock virtual"),
        ("[vms.s]\n" + SLEEPER, ["--clock", "virtual", "--mips", "3"], "--mips: mips 3: use a "
         "rate that divides 1,000,000"),
        ("[vms.s]\n" + SLEEPER, ["--seed", "-1"], "--seed: -1 is not a whole number >= 0"),
        ('clock = "virtual"\n[vms.s]\n' + SLEEPER, ["--clock", "real", "--mips", "100"],
         "runs on real time: add --clock virtual"),
    ],
)  # fmt: skip
def test_hv_up_bad_clock_options_exit_4(
    file: str, args: list[str], message: str, tmp_path: Path
) -> None:
    lab = tmp_path / "lab.toml"
    lab.write_text('name = "clk"\n' + file)
    for detach in ([], ["-d"]):  # hv up -d says it too, before starting anything
        line = one_line(hv_cli("up", lab, *detach, *args, cwd=tmp_path))
        assert message in line, line


def test_hv_up_clock_virtual_refuses_a_tap_lab_as_the_file_would(tmp_path: Path) -> None:
    real = tmp_path / "tap.toml"
    real.write_text(TAP_LAB)
    virtual = tmp_path / "vtap.toml"
    virtual.write_text('clock = "virtual"\n' + TAP_LAB)
    by_file = one_line(in_netns("up", virtual, cwd=tmp_path))
    assert "switches.lan.tap: a TAP puts the host on the wire" in by_file
    assert 'use clock = "real" (or --clock real), or take the TAP out' in by_file
    for detach in ([], ["-d"]):
        assert one_line(in_netns("up", real, *detach, "--clock", "virtual", cwd=tmp_path)) == (
            by_file
        )


def _up_args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"clock": None, "seed": None, "mips": None, **given})


def test_the_options_replace_the_files_keys(tmp_path: Path) -> None:
    """--clock real takes a TAP lab that the file puts on virtual time; each option replaces
    only its own key."""
    lab = tmp_path / "vtap.toml"
    lab.write_text(
        'clock = "virtual"\nseed = 4\nmips = 500\n' + TAP_LAB.replace("tap =", "# tap =")
    )
    spec = load_named(lab, None, _up_args())
    assert (spec.clock, spec.seed, spec.mips) == ("virtual", 4, 500)
    spec = load_named(lab, None, _up_args(seed=9, mips=2000))
    assert (spec.clock, spec.seed, spec.mips) == ("virtual", 9, 2000)
    spec = load_named(lab, None, _up_args(clock="real"))
    assert (spec.clock, spec.seed, spec.mips) == ("real", 4, 500)
    lab.write_text('clock = "virtual"\n' + TAP_LAB)
    with pytest.raises(ConfigError, match="a TAP puts the host on the wire"):
        load_named(lab, None, _up_args())
    spec = load_named(lab, None, _up_args(clock="real"))
    assert spec.clock == "real" and spec.switches["lan"].tap == "hvclk0"


# -- from code: open_lab, Lab, hv.aio, the pytest plugin ---------------------------------


def sleeper(**clock: object) -> Lab:
    return Lab("sleeper", **clock).vm("s", kernel="sleep", mem="16M",  # type: ignore[arg-type]
                                      append="ms=10000 count=3")  # fmt: skip


def test_lab_takes_the_clock_keys_of_a_lab_file(tmp_path: Path) -> None:
    spec = sleeper(clock="virtual", seed=3, mips=500).spec()
    assert (spec.clock, spec.seed, spec.mips) == ("virtual", 3, 500)
    # the default: virtual time, unless a TAP puts the host on the wire
    assert (sleeper().spec().clock, sleeper().spec().seed) == ("virtual", None)
    assert sleeper().switch("lan", tap="hvclk0").spec().clock == "real"
    with pytest.raises(ConfigError, match='clock: \'fast\' is not "real" or "virtual"'):
        sleeper(clock="fast").spec()
    with pytest.raises(ConfigError, match="mips: mips 7: use a rate that divides"):
        sleeper(clock="virtual", mips=7).spec()
    with pytest.raises(ConfigError, match=r"switches\.lan\.tap: a TAP puts the host on the wire"):
        sleeper(clock="virtual").switch("lan", tap="hvclk0").spec()
    # clock= in place of the lab's own: a TAP lab that says "virtual" runs with "real"
    tap = sleeper(clock="virtual").switch("lan", tap="hvclk0")
    assert as_spec(tap, clock="real").clock == "real"
    path = tmp_path / "vtap.toml"
    path.write_text('clock = "virtual"\n' + TAP_LAB)
    assert as_spec(path, clock="real").switches["lan"].tap == "hvclk0"


async def test_open_lab_clock_seed_mips_over_the_labs_own() -> None:
    out: list[bytes] = []
    async with hv.open_lab(sleeper(), out.append, clock="virtual", mips=500) as run:
        assert run.spec.clock == "virtual" and run.spec.mips == 500
        assert run.timeline is not None
        with trio.fail_after(30):
            assert await run.wait() == 0
    each, total = sleeps(b"".join(out).decode())
    assert all(10000.0 <= ms < 10000.01 for ms in each) and total < 30000.1
    # real time: no timeline; mips is refused there, a TAP on virtual time too
    async with hv.open_lab(sleeper(clock="virtual"), clock="real") as run:
        assert run.spec.clock == "real" and run.timeline is None
    with pytest.raises(ConfigError, match="mips: sets how fast virtual time runs, but lab "
                       'sleeper runs on real time: add clock="virtual"'):  # fmt: skip
        async with hv.open_lab(sleeper(clock="real"), mips=500):
            pass
    with pytest.raises(ConfigError, match=r"switches\.lan\.tap: a TAP puts the host on the wire"):
        async with hv.open_lab(sleeper().switch("lan", tap="hvclk0"), clock="virtual"):
            pass


async def test_open_lab_seed_reaches_every_impairment(tmp_path: Path) -> None:
    lossy = tmp_path / "lossy.toml"
    lossy.write_text("seed = 1\n" + LOSSY)
    async with hv.open_lab(lossy, seed=5) as run:
        assert run.spec.seed == 5
        link = run.impairments["links[0]"]
        assert all(str(d.impairment.seed).startswith("5/") for d in (link.egress, link.ingress))


def test_aio_open_lab_takes_the_clock_too() -> None:
    import asyncio

    import hv.aio

    out: list[bytes] = []

    async def main() -> None:
        async with hv.aio.open_lab(sleeper(), out.append, clock="virtual", seed=2) as lab:
            assert await lab.run_sync(lambda run: (run.spec.clock, run.spec.seed)) == (
                "virtual",
                2,
            )
            async with asyncio.timeout(30):
                assert await lab.wait() == 0

    asyncio.run(main())
    each, total = sleeps(b"".join(out).decode())
    assert all(10000.0 <= ms < 10000.01 for ms in each) and total < 30000.1


PLUGIN_TESTS = """
import hv, pytest
from hv import Lab

LAB = Lab("sl").vm("s", kernel="sleep", mem="16M", append="ms=10000 count=3")


async def test_hv_lab_on_virtual_time(hv_lab):
    with pytest.raises(hv.ConfigError, match="mips: sets how fast virtual time runs"):
        await hv_lab(LAB, clock="real", mips=500)
    lab = await hv_lab(LAB, clock="virtual", seed=4, mips=500)
    assert (lab.spec.clock, lab.spec.seed, lab.spec.mips) == ("virtual", 4, 500)
    await lab.vms["s"].console.wait_for(b"sleep: done in 30000.0")
    assert lab.timeline is not None


async def test_hv_vm_on_virtual_time(hv_vm):
    vm = await hv_vm(kernel="sleep", mem="16M", append="ms=10000 count=3", clock="virtual")
    await vm.console.wait_for(b"sleep: done in 30000.0")
    with pytest.raises(hv.ConfigError, match="the switches of hv_vm run on real time"):
        await hv_vm(kernel="udpecho", mem="16M", nics=["lan"], clock="virtual")
    assert "lan" not in hv_vm.switches  # refused before anything started
"""


def test_the_pytest_fixtures_take_the_clock(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(CACHE_BASE))
    for var in ("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS", "PYTEST_ADDOPTS"):
        monkeypatch.delenv(var, raising=False)
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    pytester.makepyfile(test_clock=PLUGIN_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)


# -- the lab's clock in hv stats, hv top and hv up's live view -----------------------------

VIRTUAL = {"mode": "virtual", "virtual_s": 12.345, "wall_s": 0.402, "ratio": 30.709,
           "mips": 1000, "seed": 7, "rounds": 9, "events": 3}  # fmt: skip


def made_up(clock: dict[str, object] | None) -> dict[str, object]:
    snap: dict[str, object] = {"lab": "t", "time": 1.0, "vms": {}, "switches": {}}
    if clock is not None:
        snap["clock"] = clock
    return snap


def test_the_clock_in_the_plain_lines_and_the_table() -> None:
    import io

    from rich.console import Console

    from hv.lab._view import render_lines, render_table

    r = rates(None, made_up(VIRTUAL))
    assert render_lines(r)[0] == (
        "lab t interval=0.00s running=0/0 mips=0.0 exits/s=0 cpu=0% clock=virtual "
        "virtual=12.345s wall=0.402s ratio=30.7x"
    )
    assert render_snapshot(made_up(VIRTUAL))[0] == (
        "lab t vms=0 running=0 clock=virtual virtual=12.345s wall=0.402s ratio=30.7x"
    )
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(render_table(r))
    assert "clock: virtual 12.345 s in 0.402 s wall (30.7x)" in out.getvalue()
    real = made_up({"mode": "real", "seed": None})
    assert render_lines(rates(None, real))[0].endswith(" cpu=0% clock=real")
    assert render_snapshot(real)[0] == "lab t vms=0 running=0 clock=real"
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(render_table(rates(None, real)))
    assert "clock: real" in out.getvalue() and "wall" not in out.getvalue()
    # a snapshot from a lab that does not say (an older hv): nothing about the clock
    assert render_snapshot(made_up(None))[0] == "lab t vms=0 running=0"
    assert "clock" not in render_lines(rates(None, made_up(None)))[0]


async def test_the_snapshot_has_the_labs_clock() -> None:
    async with hv.open_lab(sleeper(), clock="virtual", seed=6) as run:
        with trio.fail_after(30):
            assert await run.wait() == 0
        clock = snapshot(run)["clock"]
    # after the end too: where the VMs got to, and the wall time the timeline ran for
    assert clock["mode"] == "virtual" and (clock["mips"], clock["seed"]) == (1000, 6)
    assert 30.0 <= clock["virtual_s"] < 30.1 and 0 < clock["wall_s"] < 30
    assert clock["ratio"] == pytest.approx(clock["virtual_s"] / clock["wall_s"])
    async with hv.open_lab(sleeper(seed=2, clock="real")) as run:
        assert snapshot(run)["clock"] == {"mode": "real", "seed": 2}


def test_hv_up_stats_lines_and_the_table_show_the_clock(tmp_path: Path) -> None:
    from test_view import run_on_a_pty

    lab = tmp_path / "lab.toml"
    lab.write_text('name = "clk"\n[vms.s]\n' + SLEEPER)
    r = hv_cli("up", lab, "--clock", "virtual", "--stats", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    last = [line for line in r.stdout.splitlines() if line.startswith("lab ")][-1]
    m = re.search(r" clock=virtual virtual=([\d.]+)s wall=([\d.]+)s ratio=([\d.]+)x$", last)
    assert m is not None and 30.0 <= float(m[1]) < 30.1, r.stdout  # the end: 30 s of sleep
    status, out = run_on_a_pty(str(lab), "--clock", "virtual")
    assert status == 0, out[-2000:]
    tail = out[out.rindex("lab clk") :]  # the last table, left on the screen
    assert re.search(r"clock: virtual 30\.0\d\d s in [\d.]+ s wall \([\d.]+x\)", tail), tail


def test_hv_stats_and_top_of_a_detached_lab_show_its_clock() -> None:
    h = Host()
    try:
        lab = h.lab_file("vt", '[vms.s]\nkernel = "sleep"\nmem = "16M"\n'
                               'append = "ms=1000 count=100000000"\n')  # fmt: skip
        up = h.hv("up", "-d", str(lab), "--clock", "virtual", "--seed", "5", "--mips", "500")
        assert up.returncode == 0, up.stdout + up.stderr
        r = h.hv("stats", "hv-vt", "--json")
        assert r.returncode == 0, r.stderr
        clock = json.loads(r.stdout)["clock"]
        assert (clock["mode"], clock["seed"], clock["mips"]) == ("virtual", 5, 500)
        assert clock["virtual_s"] >= 0 and clock["wall_s"] > 0 and "ratio" in clock
        plain = h.hv("stats", "hv-vt").stdout.splitlines()[0]
        assert re.fullmatch(r"lab hv-vt vms=1 running=1 clock=virtual virtual=[\d.]+s "
                            r"wall=[\d.]+s ratio=[\d.]+x", plain), plain  # fmt: skip
        top = h.hv("top", "hv-vt", "--interval", "0.2", "--count", "1")
        assert top.returncode == 0 and " clock=virtual virtual=" in top.stdout, top.stdout
        real = h.lab_file("rt", '[vms.s]\nkernel = "echo"\nmem = "16M"\n')
        assert h.hv("up", "-d", str(real), "--clock", "real").returncode == 0
        assert json.loads(h.hv("stats", "hv-rt", "--json").stdout)["clock"] == {
            "mode": "real",
            "seed": None,
        }
        assert h.hv("stats", "hv-rt").stdout.startswith("lab hv-rt vms=1 running=1 clock=real\n")
    finally:
        h.cleanup()
