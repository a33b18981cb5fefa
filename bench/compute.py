"""Guest compute under hv vs raw Unicorn (one uninterrupted emu_start), same `cpu` guest.

The reference runs the bundled `cpu` guest ELF on a bare Unicorn: RAM mapped, the guest entered
in S-mode, and a minimal Python INTR hook that answers its few SBI calls (console, shutdown) and
nothing else, in one `emu_start` with no count and no slicing. hv runs the same ELF with
`run_vm` (time slices, devices, interrupts, the trio loop). Both are timed in this process,
alternating, best of N.

    python bench/compute.py [--iters 100] [--repeat 3] [--quantum N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hv
from bench._raw import RawGuest
from hv import _guests, _log, _machine


def run_raw(elf: bytes, iters: int) -> tuple[float, bytes]:
    """One uninterrupted emu_start; returns (seconds, console output)."""
    g = RawGuest(elf, f"iters={iters}")
    t = time.perf_counter()
    g.run()
    return time.perf_counter() - t, bytes(g.out)


async def _run_hv(elf: bytes, iters: int, quantum: int) -> tuple[float, bytes, dict[str, int]]:
    cfg = hv.VmConfig(kernel=elf, cmdline=f"iters={iters}", quantum=quantum, name="cpu")
    async with trio.open_nursery() as n:
        t = time.perf_counter()
        vm: hv.Vm = await n.start(hv.run_vm, cfg)
        info = await vm.wait()
        dt = time.perf_counter() - t
    assert info.exit_code == 0, info
    return dt, vm.console.transcript, vm.stats


def checksum(out: bytes) -> bytes:
    for line in out.splitlines():
        if line.startswith(b"checksum:"):
            return line
    raise SystemExit(f"no checksum in output: {out!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=100, help="cpu guest iterations (default 100)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each, best taken (default 3)")
    ap.add_argument("--quantum", type=int, default=_machine.DEFAULT_QUANTUM)
    args = ap.parse_args()
    _log.configure("error")
    elf = _guests.build_guest("cpu").read_bytes()
    raw_times, hv_times = [], []
    stats: dict[str, int] = {}
    for _ in range(args.repeat):
        t_raw, out_raw = run_raw(elf, args.iters)
        t_hv, out_hv, stats = trio.run(_run_hv, elf, args.iters, args.quantum)
        if checksum(out_raw) != checksum(out_hv):
            raise SystemExit(f"checksums differ: {checksum(out_raw)!r} vs {checksum(out_hv)!r}")
        raw_times.append(t_raw)
        hv_times.append(t_hv)
    raw, hvt = min(raw_times), min(hv_times)
    insns = stats["guest_insns"]
    print(f"guest: cpu iters={args.iters}  {checksum(out_hv).decode()}")
    print(f"raw unicorn, one emu_start : {raw * 1e3:8.1f} ms  (best of {args.repeat})")
    print(f"hv run_vm                  : {hvt * 1e3:8.1f} ms  (best of {args.repeat})")
    print(
        f"slices: {stats['slices']}, quantum {args.quantum:,} insns (~{insns / 1e6:.0f} M executed)"
    )
    print(f"ratio hv/raw: {hvt / raw:.3f}  (target <= 1.25)")


if __name__ == "__main__":
    main()
