"""Freezing a disk for a snapshot (blockdev/freeze.py): by copy (what hv does) against by
switching the running VM to a new overlay, on a 1 GiB sparse raw image and a 1 GiB qcow2 image
with 50 MiB written in scattered 64 KiB pieces, and a ,snapshot overlay with 8 MiB written.
Prints per kind the VM's pause (copy; a switch's flush) and what follows it (the copy's fsync;
the switch's overlays), as min-max over the runs.

    python bench/freeze.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from blockdev import BlockBackend
from blockdev.freeze import freeze, sync_frozen
from blockdev.qcow2 import Qcow2Image, create_qcow2


def main(runs: int = 5) -> None:
    """Freeze by copy vs. by switch, on a 1 GiB sparse raw image and a 1 GiB qcow2 image
    with 50 MiB written in scattered 64 KiB pieces, and a ,snapshot overlay with 8 MiB."""
    import random
    import shutil
    import time

    from blockdev.open import open_disk
    from blockdev.raw import create_raw

    async def fill(disk: BlockBackend, total: int) -> None:
        rng = random.Random(1)
        piece = 64 << 10
        slots = rng.sample(range(disk.size // piece), total // piece)
        for slot in slots:
            await disk.write(slot * piece, rng.randbytes(piece))

    async def switch(disk: BlockBackend, fmt: str, path: str, snap: str) -> None:
        """What a switch costs: flush, an overlay in the snapshot over the image, a new top
        overlay for the running VM over it, opened with the open image as its backing
        (its flush is timed apart: a switch could leave it until the VM runs again)."""

        def overlays() -> None:
            create_qcow2(os.path.join(snap, "vda.qcow2"), disk.size, path, fmt)
            create_qcow2(os.path.join(snap, "run.qcow2"), disk.size, path, fmt)

        await trio.to_thread.run_sync(overlays)
        top = await Qcow2Image.open(os.path.join(snap, "run.qcow2"), backing=disk)
        await top.close()

    async def one(kind: str) -> tuple[float, float, float, float]:
        tmp = tempfile.mkdtemp(prefix="hv-freeze-bench-")
        try:
            times = []
            for way in ("copy", "switch"):
                fmt = "raw" if kind == "raw" else "qcow2"
                path = os.path.join(tmp, f"{way}.{fmt}")
                (create_raw if kind == "raw" else create_qcow2)(path, 1 << 30)
                disk = await open_disk(f"{path},snapshot" if kind == "overlay" else path)
                await fill(disk, (8 if kind == "overlay" else 50) << 20)
                snap = os.path.join(tmp, f"{way}-snap")
                os.mkdir(snap)
                start = time.perf_counter()
                if way == "copy":
                    entry = await freeze(disk, snap, "vda")
                    times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    await sync_frozen(snap, [entry])
                    times.append(time.perf_counter() - start)
                    await disk.close()
                elif kind == "overlay":  # its file is unlinked: no switch possible
                    times.append(0.0)
                    await disk.close()
                else:
                    await disk.flush()
                    times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    await switch(disk, fmt, path, snap)  # (closes the disk)
                    times.append(time.perf_counter() - start)
            return times[0], times[1], times[2], times[3] if len(times) > 3 else 0.0
        finally:
            shutil.rmtree(tmp)

    def ms(values: list[float]) -> str:
        return f"{min(values) * 1e3:6.1f}-{max(values) * 1e3:6.1f} ms"

    for kind in ("raw", "qcow2", "overlay"):
        times = [trio.run(one, kind) for _ in range(runs)]
        print(
            f"{kind:8s} copy (paused) {ms([t[0] for t in times])}, its fsync after "
            f"{ms([t[1] for t in times])};  switch: flush {ms([t[2] for t in times])}, "
            f"then (paused) {ms([t[3] for t in times])}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    main(ap.parse_args().runs)
