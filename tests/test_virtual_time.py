"""Virtual time (docs/TIME.md): guest time from guest work, one lab clock, runs that repeat.

The determinism tests run real labs (firmware guests, and a Linux guest when its image is
built: the test command builds it) and compare what they leave behind byte for byte: the
pcapng captures (timestamps included: they are virtual time), every console, every exit status.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from conftest import RunGuest

from hv import ConfigError, StopKind, VmConfig
from hv.lab._runner import run_lab
from hv.lab._spec import parse_lab

LAB = """
clock = "virtual"
seed = 11

[switches.lan]
subnet = "10.0.0.0/24"
dhcp = {{ pool = "10.0.0.100-10.0.0.150" }}
capture = "lan.pcapng"

[switches.wan]
capture = "wan.pcapng"

[[links]]
a = "lan"
b = "wan"
impair = {{ delay = "3ms", jitter = "1ms", loss = "5%", rate = "20Mbit", queue = "16KiB" }}

[vms.srv]
kernel = "udpecho"
nics = [{{ switch = "wan", ip = "10.0.0.2/24" }}]

[vms.gen]
kernel = "udpgen"
append = "peer=10.0.0.2 count=150 size=600 window=16 timeout=20"
nics = [{{ switch = "lan", ip = "dhcp" }}]

[vms.pinger]
kernel = "ping"
append = "peer=10.0.0.2 count=6 interval=7"
nics = [{{ switch = "lan", ip = "10.0.0.3/24" }}]
{linux}
"""

LINUX = """
[vms.lx]
kernel = "linux"
append = '''hv.run="ping -c 2 -i 0.01 10.0.0.1; ping -c 4 -i 0.01 10.0.0.2; poweroff"'''
nics = [{ switch = "lan", ip = "dhcp" }]
"""


async def _run(folder: Path, text: str, until: frozenset[str]) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lab.toml").write_text(text)
    spec = parse_lab(text, folder, "det")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(functools.partial(run_lab, spec, until=until))
            status = await run.wait()
    # Each VM's console (the interleaving of several consoles on one terminal depends on
    # when the host reads them, not on the guests).
    consoles = {name: vm.console.transcript for name, vm in run.vms.items()}
    return {
        "status": status,
        "exits": {name: (e.kind, e.exit_code, e.reason) for name, e in run.exits.items()},
        "console": b"".join(consoles[n] for n in sorted(consoles)),
        "consoles": consoles,
        "lan": hashlib.sha256((folder / "lan.pcapng").read_bytes()).hexdigest(),
        "wan": hashlib.sha256((folder / "wan.pcapng").read_bytes()).hexdigest(),
        "frames": (folder / "lan.pcapng").stat().st_size,
    }


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """Both host cores busy while the lab runs (a loaded machine)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def _lab(with_linux: bool) -> tuple[str, frozenset[str]]:
    names = {"gen", "pinger"} | ({"lx"} if with_linux else set())
    return LAB.format(linux=LINUX if with_linux else ""), frozenset(names)


async def test_a_lab_runs_byte_for_byte_the_same_beside_a_cpu_hog(
    tmp_path: Path, request: pytest.FixtureRequest, linux_image: object
) -> None:
    text, until = _lab(True)
    first = await _run(tmp_path / "idle", text, until)
    request.getfixturevalue("cpu_hog")
    second = await _run(tmp_path / "loaded", text, until)
    consoles = first["consoles"]
    assert isinstance(consoles, dict)
    assert b"udpgen: 10.0.0.2:7: 150 sent" in consoles["gen"]
    assert b"ping: 10.0.0.2: 6 sent" in consoles["pinger"]
    assert b"2 packets transmitted, 2 received" in consoles["lx"], consoles["lx"]
    assert b"4 packets transmitted" in consoles["lx"]
    assert first == second


async def test_the_host_clock_is_not_on_the_guests_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host clock that stumbles (every read jumps ahead by a random amount, as on a machine
    that stalls) changes nothing a virtual-time lab produces: no guest-visible time, no slice
    boundary, no fabric decision reads it."""
    text, until = _lab(False)
    first = await _run(tmp_path / "steady", text, until)
    import random

    rng = random.Random(5)
    skew = [0]

    def stumbling(real: object) -> object:
        def read() -> object:
            skew[0] += rng.randrange(0, 3_000_000)  # up to 3 ms more per read
            value = real()  # type: ignore[operator]
            if isinstance(value, int):
                return value + skew[0]
            return value + skew[0] / 1e9

        return read

    for name in ("monotonic", "monotonic_ns", "time", "time_ns", "perf_counter"):
        monkeypatch.setattr(time, name, stumbling(getattr(time, name)))
    second = await _run(tmp_path / "stumbling", text, until)
    assert skew[0] > 0
    assert first == second


async def test_guest_time_comes_from_guest_work(run_guest: RunGuest) -> None:
    """Five one-second sleeps take exactly five seconds of guest time (and far less host
    time: a waiting guest skips ahead)."""
    from hv.build import guest_path

    info, out = await run_guest(
        VmConfig(kernel=guest_path("sleep"), cmdline="ms=1000 count=5", clock="virtual")
    )
    assert info.kind is StopKind.POWEROFF
    assert out.count(b": 1000.000 ms") == 5, out
    assert b"done in 5000.0" in out


async def test_the_sbi_timer_is_exact_in_virtual_time(run_guest: RunGuest) -> None:
    from hv.build import guest_path

    info, out = await run_guest(VmConfig(kernel=guest_path("sbi"), clock="virtual"))
    assert b"PASS timer_exact" in out, out
    assert b"PASS timer_interrupt" in out
    # No host pause between a read and the interrupt: guest time stands still between slices.
    assert b"PASS timer_not_early" in out, out
    assert b"timer_not_early: 0 of 4 taken after the hart was paused" in out, out
    assert info.exit_code == 0, out


async def _exits_run(kind: str) -> tuple[int, bytes, int]:
    from hv._vm import run_vm
    from hv.build import guest_path

    cfg = VmConfig(kernel=guest_path("exits"), cmdline=f"kind={kind} n=20000", clock="virtual")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, cfg)
            await vm.wait()
    return vm.machine.clock.now_ps(), vm.console.transcript, vm.stats["late_stops"]


@pytest.mark.parametrize("kind", ["trap", "mmio", "timer", "sbi"])
async def test_host_time_stops_are_invisible_to_the_guest(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slice still stops after about a millisecond of host time (the event loop must run
    beside an exit-heavy guest), but in virtual time it then goes on where it stopped with
    nothing in between: a host that stops it every microsecond changes nothing."""
    from hv.engine import _vcpu

    ps, out, _ = await _exits_run(kind)
    monkeypatch.setattr(_vcpu, "SLICE_HOST_NS", 1_000)
    ps2, out2, late = await _exits_run(kind)
    assert late > 100
    assert (ps2, out2) == (ps, out)


def test_a_tap_lab_cannot_run_on_virtual_time(tmp_path: Path) -> None:
    text = 'clock = "virtual"\n[switches.lan]\ntap = "hvt0"\n[vms.a]\nkernel = "hello"\n'
    with pytest.raises(ConfigError, match=r"TAP puts the host on the wire.*real time"):
        parse_lab(text, tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('clock = "fast"', 'clock: .* is not "real" or "virtual"'),
        ("seed = -1", "seed: -1 is not a whole number"),
        ('seed = "x"', "seed: 'x' is not a whole number"),
        ("mips = 0", "mips: mips 0 is out of range"),
        ("mips = 3", "mips: mips 3: use a rate that divides 1,000,000"),
        ('clock = "real"\nmips = 500', r"mips: only matters on virtual time.*\(it says so\)"),
        ('lookahead = "2s"', "lookahead: '2s' is out of range 1us..1s"),
        (
            'mips = 500\n[switches.lan]\ntap = "hvt1"',
            r"mips: only matters .*\(it has a TAP, VXLAN or \[hosts\]\)",
        ),
    ],
)
def test_clock_keys_are_checked(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_lab(f'{line}\n[vms.a]\nkernel = "hello"\n', tmp_path)


DISK_LAB = """
clock = "virtual"
[vms.b]
kernel = "blktest"
mem = "16M"
append = "blk.sectors=1024 blk.chunk=64"
disks = ["disk.img"]
"""


async def _disk_run(folder: Path) -> tuple[int, bytes]:
    folder.mkdir(parents=True)
    (folder / "disk.img").write_bytes(bytes(4 << 20))
    spec = parse_lab(DISK_LAB, folder, "disk")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(run_lab, spec)
            assert await run.wait() == 0
    vm = run.vms["b"]
    return vm.machine.clock.now_ps(), vm.console.transcript


async def test_a_slow_host_disk_is_invisible_to_the_guest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk completions come at the modelled latency in guest time: a host disk that takes
    its time (here a random 0-20 ms per request) makes the run slower, not different."""
    quick = await _disk_run(tmp_path / "quick")
    import random

    from blockdev.raw import RawFile

    rng = random.Random(3)
    slowed = [0]

    def slow(method: str) -> None:
        real = getattr(RawFile, method)

        async def wrapper(self: RawFile, *args: object) -> object:
            slowed[0] += 1
            await trio.sleep(rng.random() * 0.02)
            return await real(self, *args)

        monkeypatch.setattr(RawFile, method, wrapper)

    for method in ("read", "write", "flush"):
        slow(method)
    slow_run = await _disk_run(tmp_path / "slow")
    assert slowed[0] > 10
    assert b"read back 1024 sectors: ok" in quick[1]
    assert slow_run == quick
    # 16 writes, a flush and 16 reads of 32 KiB each: at least their modelled latency
    assert quick[0] >= 33 * 50_000_000


async def test_pause_resume_and_stop_in_virtual_time() -> None:
    from hv._vm import VmState, open_vm
    from hv.build import guest_path

    cfg = VmConfig(kernel=guest_path("sleep"), cmdline="ms=10 count=1000000", clock="virtual")
    with trio.fail_after(30):
        async with open_vm(cfg) as vm:
            await vm.console.wait_for(b"sleep 3:")
            vm.pause()
            while vm.state is not VmState.PAUSED:
                await trio.sleep(0)
            seen = vm.console.transcript.count(b"\n")
            for _ in range(50):
                await trio.sleep(0)
            assert vm.console.transcript.count(b"\n") == seen  # paused: no guest progress
            vm.resume()
            await vm.console.wait_for(b"sleep 20:")
            vm.stop("enough")
            info = await vm.wait()
    assert info.kind is StopKind.STOPPED
    assert b"ended early" not in vm.console.transcript


SHELL_LAB = """
clock = "virtual"
[vms.lx]
kernel = "linux"
"""


async def _conversation(folder: Path) -> bytes:
    """A script that talks to a guest's shell: waits for the prompt, types, reads."""
    folder.mkdir(parents=True)
    spec = parse_lab(SHELL_LAB, folder, "shell")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(run_lab, spec)
            console = run.vms["lx"].console
            await console.wait_for(b"commands")
            for i in range(3):
                await console.wait_for(b"# ")
                await console.send_all(f"echo step{i}; cat /proc/uptime\n")
                await console.wait_for(f"step{i}\r\n".encode())
            await console.wait_for(b"# ")
            await console.send_all("poweroff\n")
            await run.wait()
    return run.vms["lx"].console.transcript


async def test_a_script_typing_at_a_console_gets_the_same_run(
    tmp_path: Path, request: pytest.FixtureRequest, linux_image: object
) -> None:
    """Console input from a script lands at the guest time of the output it answered: the
    uptimes the guest prints between the steps are the same, run after run."""
    first = await _conversation(tmp_path / "a")
    request.getfixturevalue("cpu_hog")
    second = await _conversation(tmp_path / "b")
    assert first.count(b"step2") >= 2
    assert first == second


async def test_a_lone_virtual_vm_with_nics_is_refused() -> None:
    """Its switch would run on another clock: frames would land in its past or future."""
    from hv import Nic
    from hv._vm import Vm
    from hv.build import guest_path
    from netfabric.switch import Switch

    cfg = VmConfig(
        kernel=guest_path("ping"), clock="virtual", nics=(Nic(Switch("lan"), "10.0.0.1/24"),)
    )
    with pytest.raises(ConfigError, match="virtual time with NICs runs in a lab"):
        Vm(cfg)
