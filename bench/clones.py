"""Clones: N guests from one snapshot of a booted Linux guest (issue 21).

One hv Linux guest boots on a virtual-time lab (a switch with DHCP), gets its lease, and is
snapshotted (`Vm.snapshot`). A second lab then starts N clones of it
(`clone = { from = ..., count = N }`): each restored from the file (its RAM mapped
copy-on-write), told it was cloned (`cloned NAME eth0=MAC dhcp`: a new MAC, a new lease,
its hostname), and asked to ping the switch's services address once. The figure is the
wall time from starting the clones' lab to every clone's ping answered, against the
reference: booting one guest to its shell in the same invocation. Memory: the process's
private memory (/proc/self/smaps_rollup) after the pings, per clone, and what each kind of
mapping holds (guest RAM pages the clones wrote, the engine's).

    python bench/clones.py [--count N] [--repeat R] [--clock virtual|real] [--lookahead T]

The issue's goal: 200 clones of a booted 128 MiB Linux guest, each answering a ping,
in <= 5 s, with <= 8 MiB of private memory each.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from hv.lab import open_lab, parse_lab

SERVICES = "10.0.0.1"


def _mem() -> dict[str, int]:
    """Private kB by kind of mapping: guest RAM from snapshot files, anonymous, the rest."""
    out = {"ram": 0, "anon": 0, "other": 0}
    kind = "other"
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                name = parts[5] if len(parts) > 5 else ""
                kind = (
                    "ram"
                    if name.endswith(".hvsnap")
                    else ("anon" if not name or name.startswith("[") else "other")
                )
            elif line.startswith(("Private_Dirty", "Private_Clean")):
                out[kind] += int(line.split()[1])
    return out


async def make_snapshot(folder: Path, clock: str) -> tuple[Path, float]:
    lab = parse_lab(
        f'clock = "{clock}"\n[switches.lan]\nsubnet = "10.0.0.0/22"\n'
        'dhcp = { pool = "10.0.0.100-10.0.3.200" }\n'
        '[vms.web]\nkernel = "linux"\nnics = [{ switch = "lan", ip = "dhcp" }]\n',
        folder,
        "golden",
    )
    start = time.perf_counter()
    async with open_lab(lab) as run:
        vm = run.vms["web"]
        await vm.exec("true")
        boot = time.perf_counter() - start
        info = await vm.snapshot(folder / "web.hvsnap")
    return info.path, boot


async def clones(
    folder: Path, snap: Path, count: int, clock: str, lookahead: str | None = None
) -> dict[str, float]:
    ahead = f'lookahead = "{lookahead}"\n' if lookahead else ""
    lab = parse_lab(
        f'clock = "{clock}"\n{ahead}[switches.lan]\nsubnet = "10.0.0.0/22"\n'
        'dhcp = { pool = "10.0.0.100-10.0.3.200" }\n'
        f'[vms.web]\nclone = {{ from = "{snap}", count = {count} }}\n'
        'nics = [{ switch = "lan", ip = "dhcp" }]\n',
        folder,
        "clones",
    )
    before = _mem()
    start = time.perf_counter()
    async with open_lab(lab) as run:
        up = time.perf_counter() - start
        await run.clones_told.wait()
        told = time.perf_counter() - start
        bad = {n: why for n, why in run.told.items() if why}
        if bad:
            first = dict(list(bad.items())[:3])
            raise SystemExit(f"{len(bad)} of {count} clones not told, e.g. {first}")

        async def ping(name: str) -> None:
            r = await run.vms[name].exec("ping", "-c", "1", "-W", "5", SERVICES)
            if r.returncode:
                raise SystemExit(f"{name}: ping failed: {r.stdout!r} {r.stderr!r}")

        async with trio.open_nursery() as nursery:
            for name in run.vms:
                nursery.start_soon(ping, name)
        pinged = time.perf_counter() - start
        after = _mem()
        ports = run.switches["lan"].core.ports.values()
        frames_in = sum(pc.rx_frames for pc in ports)
        frames_out = sum(pc.tx_frames for pc in ports)
    return {
        "up": up,
        "told": told,
        "pinged": pinged,
        "frames_in": frames_in,
        "frames_out": frames_out,
        **{f"{k}_mib": (after[k] - before[k]) / 1024 / count for k in after},
    }


async def main_async(count: int, repeat: int, clock: str, lookahead: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        snap, boot = await make_snapshot(folder, clock)
        print(f"reference: booting one guest to its agent: {boot:.3f} s", flush=True)
        for r in range(repeat):
            got = await clones(folder / f"run{r}", snap, count, clock, lookahead)
            total = got["ram_mib"] + got["anon_mib"] + got["other_mib"]
            print(
                f"{count} clones: up {got['up']:.2f} s, told {got['told']:.2f} s, every ping "
                f"answered {got['pinged']:.2f} s ({got['pinged'] / boot:.1f}x one boot); "
                f"private per clone {total:.1f} MiB (guest RAM written {got['ram_mib']:.2f}, "
                f"anonymous {got['anon_mib']:.2f}, other {got['other_mib']:.2f}); the switch "
                f"took {got['frames_in']:.0f} frames and delivered {got['frames_out']:.0f}",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="clones (default 200)")
    ap.add_argument("--repeat", type=int, default=1, help="runs (default 1)")
    ap.add_argument("--clock", choices=("virtual", "real"), default="virtual")
    ap.add_argument("--lookahead", help="the clones' lab's lookahead (default the lab's: 200us)")
    args = ap.parse_args()
    trio.run(main_async, args.count, args.repeat, args.clock, args.lookahead)


if __name__ == "__main__":
    main()
