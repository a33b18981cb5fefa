"""``vm.exec`` in a running Linux guest: the round trip of ``true`` and the throughput of
10 MB of stdout, over virtio-vsock to the guest's agent (hv-agent).

One fast-image guest (real time, the fast engine) boots; a first exec waits for its agent.
Then ``--runs`` round trips of ``vm.exec("true")`` (connect, the request, fork and exec in
the guest, the exit status back, the connection closed), then ``--big`` runs of ``cat`` of a
10,000,000-byte file (copied in first) and ``copy_out`` of it. Medians and ranges.

    python bench/exec.py [--runs 50] [--big 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hv
from hv.build import _image_linux as il

TEN_MB = 10_000_000
TARGET_MS = 5.0


def _range(xs: list[float], unit: str, scale: float = 1.0) -> str:
    v = sorted(x * scale for x in xs)
    return f"median {statistics.median(v):.2f} {unit} (range {v[0]:.2f}-{v[-1]:.2f}, n={len(v)})"


async def main(runs: int, big: int) -> None:
    img = il.linux_image_info()
    if img is None:
        sys.exit("build the Linux image first: hv image build linux")
    cfg = hv.VmConfig(kernel=img.kernel, initrd=img.initrd, cmdline=img.cmdline, name="bench")
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
        t0 = time.perf_counter()
        await vm.exec("true")
        print(f"boot to the first exec: {time.perf_counter() - t0:.3f} s")
        for _ in range(5):  # warm up
            await vm.exec("true")
        rtt = []
        for _ in range(runs):
            t = time.perf_counter()
            r = await vm.exec("true")
            rtt.append(time.perf_counter() - t)
            assert r.returncode == 0
        med = statistics.median(rtt) * 1e3
        verdict = "meets" if med <= TARGET_MS else "misses"
        print(f"exec true round trip: {_range(rtt, 'ms', 1e3)}; {verdict} <= {TARGET_MS:g} ms")
        with tempfile.TemporaryDirectory() as d:
            blob = Path(d) / "blob"
            blob.write_bytes(os.urandom(TEN_MB))
            want = hashlib.sha256(blob.read_bytes()).digest()
            t = time.perf_counter()
            await vm.copy_in(blob, "/tmp/blob")
            print(f"copy_in 10 MB: {TEN_MB / (time.perf_counter() - t) / 1e6:.1f} MB/s")
            out, cp = [], []
            for _ in range(big):
                t = time.perf_counter()
                r = await vm.exec("cat", "/tmp/blob")
                out.append(time.perf_counter() - t)
                assert hashlib.sha256(r.stdout).digest() == want
                t = time.perf_counter()
                await vm.copy_out("/tmp/blob", Path(d) / "back")
                cp.append(time.perf_counter() - t)
            mbs = [TEN_MB / x / 1e6 for x in out]
            print(f"exec cat, 10 MB of stdout: {_range(mbs, 'MB/s')}")
            print(f"copy_out 10 MB: {_range([TEN_MB / x / 1e6 for x in cp], 'MB/s')}")
        vm.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--big", type=int, default=3)
    a = p.parse_args()
    trio.run(main, a.runs, a.big)
