"""Snapshots of a booted Linux guest: restore to a running shell vs booting it, taking a
snapshot of a running 128 MiB guest, and what a restored VM costs in private memory.

One fast-image Linux guest (128 MiB, real time, the fast engine, in process) boots to its
shell prompt and its agent; its snapshot is the file every restore starts from.

(a) Restore vs boot (the reference), each from creating the VM (``hv.restore`` included)
    to: "running" (``run_vm`` returned: the guest runs), "console" (a line typed on the
    console, ``echo ready-N``, is answered: a running shell) and, in another VM, "exec"
    (the agent answers ``vm.exec("true")``). A booted, warm guest's own console and exec
    round trips are printed too: the part of "console" and "exec" that no restore can
    remove. For restore's "exec": the engine's host time and the guest instructions it ran,
    and the host's minor page faults (the file's pages mapped into the restored RAM).
(b) Snapshot of the running guest (after some exec in it, the file's folder on the page
    cache): the ``vm.snapshot`` call and the guest's pause (``SnapshotInfo.paused_s``), with
    ``durable=False`` (written, not synced) and ``durable=True`` (synced before it is named).
(c) Private memory of one restored VM after its agent answered (``/proc/self/smaps``): the
    pages the guest wrote in its restored RAM (copies of the file's), and the process's
    growth in private memory since before the restore, the file's pages left out (in the
    page cache, shared by every VM restored from the file; counted private by smaps while
    one VM maps them): the written RAM, the engine's translated code, the VM's objects.

    python bench/snapshot.py [--repeat 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hv
from bench import _common as C
from hv import _log
from hv.build import _image_linux as il

MEM = 128 << 20
PROMPT = re.compile(rb"# $")
TIMEOUT = 60.0
GOAL_RESTORE_S, GOAL_SNAPSHOT_S = 0.020, 0.2
_lines = 0


def _rng(xs: Sequence[float], scale: float = 1e3, unit: str = "ms", f: str = ".1f") -> str:
    v = sorted(x * scale for x in xs)
    if len(v) == 1:
        return f"{v[0]:{f}} {unit}"
    return f"median {C.median(v):{f}} {unit} (range {v[0]:{f}}-{v[-1]:{f}})"


async def typed_line(vm: hv.Vm) -> None:
    """Type ``echo ready-N`` on the console and wait for its output line."""
    global _lines
    _lines += 1
    await vm.console.send_all(f"echo ready-{_lines}\n".encode())
    await vm.console.wait_for(f"\nready-{_lines}".encode())


def config(img: Any) -> hv.VmConfig:
    return hv.VmConfig(
        kernel=img.kernel, initrd=img.initrd, cmdline=img.cmdline, name="linux", mem_size=MEM
    )


async def start(make: Callable[[], hv.VmConfig], nursery: trio.Nursery) -> tuple[hv.Vm, float]:
    t0 = time.perf_counter()
    vm: hv.Vm = await nursery.start(hv.run_vm, make())
    return vm, t0


async def to_console(make: Callable[[], hv.VmConfig], booting: bool) -> tuple[float, float]:
    """(seconds to running, to the console's answer) of a VM made by ``make``."""
    async with trio.open_nursery() as nursery:
        vm, t0 = await start(make, nursery)
        running = time.perf_counter() - t0
        with trio.fail_after(TIMEOUT):
            if booting:
                await vm.console.wait_for(PROMPT)
            await typed_line(vm)
        answered = time.perf_counter() - t0
        vm.stop()
    return running, answered


async def to_exec(make: Callable[[], hv.VmConfig]) -> tuple[float, dict[str, float]]:
    """Seconds to the agent's answer, and what the VM did meanwhile."""
    async with trio.open_nursery() as nursery:
        flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        vm, t0 = await start(make, nursery)
        with trio.fail_after(TIMEOUT):
            await vm.exec("true", check=True)
        answered = time.perf_counter() - t0
        st = vm.stats
        flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0
        vm.stop()
    return answered, {"engine_s": st["host_ns"] / 1e9, "insns": st["guest_insns"], "minflt": flt}


async def warm_round_trips(vm: hv.Vm, n: int) -> tuple[list[float], list[float]]:
    console, execs = [], []
    for _ in range(n):
        t = time.perf_counter()
        await typed_line(vm)
        console.append(time.perf_counter() - t)
        await vm.console.wait_for(PROMPT)
        t = time.perf_counter()
        await vm.exec("true", check=True)
        execs.append(time.perf_counter() - t)
    return console, execs


def memory(snap: Path) -> dict[str, int]:
    """kB, from /proc/self/smaps: the mappings of ``snap`` (the restored RAM): ``mapped``
    (Rss: the file's pages in the page cache, shared by every VM restored from it, and the
    copies), ``written`` (Anonymous: the copies of the pages the guest wrote); ``private``:
    the process's private memory (Private_Clean + Private_Dirty of every other mapping) plus
    ``written``."""
    out = {"mapped": 0, "written": 0, "private": 0}
    mine = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            mine = line.endswith(str(snap))
            continue
        m = re.match(r"^(\w+):\s+(\d+) kB", line)
        if m is None:
            continue
        kb = int(m[2])
        if mine and m[1] == "Rss":
            out["mapped"] += kb
        elif mine and m[1] == "Anonymous":
            out["written"] += kb
            out["private"] += kb
        elif not mine and m[1] in ("Private_Clean", "Private_Dirty"):
            out["private"] += kb
    return out


async def restored_memory(snap: Path) -> dict[str, int]:
    before = memory(snap)["private"]
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, hv.restore(snap, name="rss"))
        with trio.fail_after(TIMEOUT):
            await vm.exec("true", check=True)
        after = memory(snap)
        vm.stop()
    return {**after, "private": after["private"] - before}


async def main(repeat: int, folder: Path) -> None:
    img = il.linux_image_info()
    if img is None:
        sys.exit("build the Linux image first: hv image build linux")
    _log.configure("error")
    snap = folder / "linux.hvsnap"
    print(f"Linux guest {img.kernel}, {MEM >> 20} MiB, real time, in process; {repeat} repeats")
    print(f"engine {C.describe(C.child_engine_info())}; snapshots in {folder}")

    # The booted guest, its warm round trips, the snapshots of (b), then the file of (a).
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, config(img))
        with trio.fail_after(TIMEOUT * 2):
            await vm.console.wait_for(PROMPT)
            await vm.exec("true", check=True)
            warm_console, warm_exec = await warm_round_trips(vm, max(repeat, 5))
            snaps: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for i in range(repeat + 1):  # the first: a warm-up (the files are new)
                for durable in (False, True):
                    await vm.exec("sh", "-c", "cat /proc/uptime > /dev/null", check=True)
                    t = time.perf_counter()
                    info = await vm.snapshot(folder / f"b-{durable}.hvsnap", durable=durable)
                    if i:
                        snaps[durable].append((time.perf_counter() - t, info.paused_s))
            size = (await vm.snapshot(snap, durable=False)).bytes  # the shell at its prompt
        vm.stop()

    def booted() -> hv.VmConfig:
        return config(img)

    def restored() -> hv.VmConfig:
        return hv.restore(snap, name="restored")

    t = time.perf_counter()
    hv.restore(snap)  # the first in this process: reads and checks the kernel and initrd
    first = time.perf_counter() - t
    await to_console(restored, False)  # warm-up: imports, the file's pages in the page cache
    await to_console(booted, True)
    rows: dict[str, list[tuple[float, float]]] = {"boot": [], "restore": []}
    execs: dict[str, list[float]] = {"boot": [], "restore": []}
    detail: list[dict[str, float]] = []
    for _ in range(repeat):
        rows["boot"].append(await to_console(booted, True))
        rows["restore"].append(await to_console(restored, False))
        execs["boot"].append((await to_exec(booted))[0])
        t, d = await to_exec(restored)
        execs["restore"].append(t)
        detail.append(d)
    mem = [await restored_memory(snap) for _ in range(repeat)]

    print(f"\n(a) to a running shell, from creating the VM (snapshot file: {size >> 20} MiB)")
    for who in ("boot", "restore"):
        print(f"  {who:8} running {_rng([r[0] for r in rows[who]])}")
        print(f"  {'':8} console answers {_rng([r[1] for r in rows[who]])}")
        print(f"  {'':8} exec answers {_rng(execs[who])}")
    print(f"  (the first hv.restore of a file in a process: {first * 1e3:.1f} ms; then its "
          "kernel and initrd are kept)")  # fmt: skip
    print(f"  a booted guest's own round trips: console {_rng(warm_console)}, "
          f"exec {_rng(warm_exec)}")  # fmt: skip
    e = [d["engine_s"] for d in detail]
    print(f"  restore to exec: the engine ran {_rng(e)} of it, "
          f"{_rng([d['insns'] for d in detail], 1e-3, 'k', '.0f')} guest instructions, "
          f"{_rng([d['minflt'] for d in detail], 1, 'minor faults', '.0f')}")  # fmt: skip
    r_console = C.median([r[1] for r in rows["restore"]]) / C.median([r[1] for r in rows["boot"]])
    r_exec = C.median(execs["restore"]) / C.median(execs["boot"])
    print(f"  restore/boot (medians): console {r_console:.3f}, exec {r_exec:.3f}")
    med = C.median([r[1] for r in rows["restore"]])
    print(
        f"  restore to a running shell (console): {med * 1e3:.1f} ms {C.goal(med, GOAL_RESTORE_S)}"
    )

    print(f"\n(b) snapshot of the running {MEM >> 20} MiB guest ({size >> 20} MiB file)")
    for durable in (False, True):
        calls = [c for c, _ in snaps[durable]]
        paused = [p for _, p in snaps[durable]]
        print(f"  durable={durable!s:5}  call {_rng(calls)}, guest paused {_rng(paused)}")
    worst = max(max(c, p) for d in snaps.values() for c, p in d)
    print(f"  slowest call or pause: {worst:.3f} s {C.goal(worst, GOAL_SNAPSHOT_S)}")
    nd = C.median([c for c, _ in snaps[True]]) / C.median([c for c, _ in snaps[False]])
    print(f"  durable/not durable (medians): {nd:.2f}")

    print("\n(c) one restored VM after its agent answered, private memory")
    mib = [{k: v / 1024 for k, v in m.items()} for m in mem]
    print(f"  restored RAM: {_rng([m['written'] for m in mib], 1, 'MiB', '.2f')} written "
          f"(copies of the file's pages), {_rng([m['mapped'] for m in mib], 1, 'MiB', '.2f')} "
          "mapped (with the file's pages, shared)")  # fmt: skip
    print(f"  the VM's private memory: {_rng([m['private'] for m in mib], 1, 'MiB', '.2f')} "
          "(the process's growth, the file's shared pages left out: the written RAM, the "
          "engine's translated code and state)")  # fmt: skip
    pct = C.median([m["private"] for m in mem]) * 1024 / MEM * 100
    print(f"  private memory / guest RAM: {pct:.1f} %")


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--repeat", type=int, default=3, help="runs of each (default 3)")
    where = "default: a new one in the temporary folder; on disk, not tmpfs"
    p.add_argument("--dir", type=Path, help=f"folder for the snapshot files ({where})")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        trio.run(main, a.repeat, Path(d))
