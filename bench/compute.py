"""Guest compute: `hv run cpu` on the fast and the stock engine vs qemu-system-riscv64, and hv
vs raw Unicorn (one uninterrupted emu_start) in process, on each engine.

The bundled `cpu` guest (a CRC32 and integer workload with no exits in its hot loop; about
3.0 M instructions per iteration) runs three ways as whole processes, timed from exec to exit,
alternating A B C A B C:

  A  `hv run cpu --append iters=N`                 (the fast engine, hv's default)
  B  the same with HV_ENGINE=stock                  (the unicorn wheel's own library)
  C  `qemu-system-riscv64 -M virt -m 128M -nographic -bios fw_jump.bin -kernel CPU_ELF
      -append iters=N`                              (OpenSBI, then the same ELF, TCG)

and once more with iters=1 (the guest's work is then ~1 ms), which is each process's start-up
and exit cost. Then, in one child process per engine (this script with --child, HV_ENGINE
set), the in-process figures: the same ELF on a bare Unicorn in one emu_start with a minimal
SBI stub (bench/_raw.py), and under hv's run_vm (VM creation, boot, time slices, devices,
trio), alternating, on that child's engine. Every run's `checksum:` line must agree.

    python bench/compute.py [--iters 1000] [--repeat 3] [--quantum N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C
from hv.build import _guests
from hv.hw import _platform

SCRIPT = Path(__file__).resolve()
LABELS = {"fast": "hv run cpu (fast engine)", "stock": "hv run cpu (stock engine)"}
LABELS["qemu"] = "qemu-system-riscv64"


def checksum(out: bytes) -> str:
    for line in out.splitlines():
        if line.startswith(b"checksum:"):
            return line.decode().strip()
    raise SystemExit(f"no checksum in output: {out[-400:]!r}")


# --- the child: in-process figures on this process's engine -----------------------------------


def child(iters: int, repeat: int, quantum: int) -> dict[str, Any]:
    """Raw Unicorn and hv run_vm, alternating, on the engine HV_ENGINE chose for us."""
    import trio

    import hv
    from bench._raw import RawGuest  # loads hv's machine first: the chosen engine

    engine = C.child_engine_info()
    elf = _guests.build_guest("cpu").read_bytes()
    from hv import _log

    _log.configure("error")

    def run_raw(iters: int = iters) -> tuple[float, bytes]:
        g = RawGuest(elf, f"iters={iters}")
        t = time.perf_counter()
        g.run()
        return time.perf_counter() - t, bytes(g.out)

    async def run_hv(iters: int = iters) -> tuple[float, bytes, dict[str, int]]:
        cfg = hv.VmConfig(kernel=elf, cmdline=f"iters={iters}", quantum=quantum, name="cpu")
        async with trio.open_nursery() as n:
            t = time.perf_counter()
            vm: hv.Vm = await n.start(hv.run_vm, cfg)
            info = await vm.wait()
            dt = time.perf_counter() - t
        if info.exit_code != 0:
            raise SystemExit(f"hv cpu guest: {info}")
        return dt, vm.console.transcript, vm.stats

    run_raw(1)  # warm-up: lazy imports (the ELF loader), the first engine instance
    trio.run(run_hv, 1)
    raw_t: list[float] = []
    hv_t: list[float] = []
    sums: set[str] = set()
    stats: dict[str, int] = {}
    for _ in range(repeat):
        t, out = run_raw()
        raw_t.append(t)
        sums.add(checksum(out))
        t, out, stats = trio.run(run_hv)
        hv_t.append(t)
        sums.add(checksum(out))
    return {
        "engine": engine,
        "raw": raw_t,
        "hv": hv_t,
        "checksums": sorted(sums),
        "slices": stats.get("slices", 0),
        "guest_insns": stats.get("guest_insns", 0),
    }


# --- the parent: whole processes, then one child per engine -----------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--iters",
        type=int,
        default=1000,
        help="cpu guest iterations (default 1000: ~3.0 G instructions, ~1.5 s of guest time)",
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs of each, best and median (default 3)"
    )
    ap.add_argument(
        "--quantum",
        type=int,
        default=_platform.DEFAULT_QUANTUM,
        help=f"hv time slice in instructions, in process (default {_platform.DEFAULT_QUANTUM:,})",
    )
    ap.add_argument(
        "--child",
        action="store_true",
        help="internal: run only the in-process part on this process's engine (HV_ENGINE) "
        "and print it as one JSON line",
    )
    ap.add_argument("--bytecode", choices=C.BYTECODE_MODES, default="cached", help=C.BYTECODE_HELP)
    args = ap.parse_args()
    C.set_bytecode(args.bytecode)
    if args.child:
        print(json.dumps(child(args.iters, args.repeat, args.quantum)))
        return

    elf = _guests.build_guest("cpu")
    hv_cmd = [*C.hv_command(), "run", "cpu"]
    qemu = [*C.qemu_command(), "-kernel", str(elf)]
    engines = {e: C.engine_info(e) for e in C.ENGINES}
    envs = {e: C.engine_env(e) for e in C.ENGINES}

    def once(who: str, iters: int) -> tuple[float, str]:
        if who == "qemu":
            dt, out = C.timed_process([*qemu, "-append", f"iters={iters}"])
        else:
            dt, out = C.timed_process([*hv_cmd, "--append", f"iters={iters}"], envs[who])
        return dt, checksum(out)

    who_all = ("fast", "stock", "qemu")
    for who in who_all:  # warm-up: guest build cache, page cache, the engines' files
        once(who, 1)
    wall: dict[str, list[float]] = {w: [] for w in who_all}
    startup: dict[str, list[float]] = {w: [] for w in who_all}
    sums: dict[str, set[str]] = {"N": set(), "1": set()}
    for _ in range(args.repeat):
        for who in who_all:
            dt, cs = once(who, args.iters)
            wall[who].append(dt)
            sums["N"].add(cs)
    for _ in range(args.repeat):
        for who in who_all:
            dt, cs = once(who, 1)
            startup[who].append(dt)
            sums["1"].add(cs)
    # Start-up in pieces: the interpreter alone, then what `hv run cpu` imports: trio, the
    # machine (hv, the engine and unicorn), and pyelftools (for an ELF guest: not for Linux).
    pieces = {
        "python -c pass": "pass",
        "import trio": "import trio",
        "import hv._vm": "import hv._vm",
        "+ elftools": "import hv._vm, elftools.elf.elffile",
    }
    piece_t: dict[str, list[float]] = {k: [] for k in pieces}
    for _ in range(args.repeat):
        for k, code in pieces.items():
            piece_t[k].append(C.timed_process([sys.executable, "-c", code], envs["fast"])[0])

    child_args = ["--iters", str(args.iters), "--repeat", str(args.repeat)]
    child_args += ["--quantum", str(args.quantum)]
    inproc: dict[str, dict[str, Any]] = {e: C.run_child(SCRIPT, e, child_args) for e in C.ENGINES}
    for r in inproc.values():
        sums["N"].update(r["checksums"])
    if len(sums["N"]) != 1 or len(sums["1"]) != 1:
        raise SystemExit(f"checksums differ: {sums}")

    b = {w: C.best(wall[w]) for w in who_all}
    m = {w: C.median(wall[w]) for w in who_all}
    s = {w: C.best(startup[w]) for w in who_all}
    ip = {e: (C.best(inproc[e]["raw"]), C.best(inproc[e]["hv"])) for e in C.ENGINES}
    ipm = {e: (C.median(inproc[e]["raw"]), C.median(inproc[e]["hv"])) for e in C.ENGINES}
    insns = inproc["fast"]["guest_insns"]
    n = args.repeat

    print(
        f"guest: cpu iters={args.iters}, ~{insns / 1e9:.2f} G instructions, {next(iter(sums['N']))}"
    )
    print(f"  (the same checksum from all {3 * n} processes and {4 * n} in-process runs)")
    for e in C.ENGINES:
        print(f"engine {C.describe(engines[e])}")
    print(f"qemu: {C.qemu_version()}, OpenSBI {C.OPENSBI}")
    print(C.bytecode_note())
    print(f"\nwhole process, from exec to exit (s), {n} runs each, alternating")
    print(f"{'':28}{'best':>8}{'median':>8}{'start-up':>10}{'best-start-up':>15}")
    for w in who_all:
        print(f"{LABELS[w]:28}{b[w]:8.3f}{m[w]:8.3f}{s[w]:10.3f}{b[w] - s[w]:15.3f}")
    print("  (start-up: the same command with iters=1, best; the guest's work is then ~1 ms)")
    print(
        "  start-up in pieces (best, fast engine): "
        + "; ".join(f"`{k}` {C.best(v):.3f} s" for k, v in piece_t.items())
    )
    print(f"\nin process (s), {n} runs each, alternating, one child process per engine")
    head = f"{'raw best':>10}{'median':>8}{'hv best':>9}{'median':>8}{'hv/raw':>8}{'MIPS hv':>9}"
    print(f"{'':14}{head}")
    for e in C.ENGINES:
        (rb, hb), (rm, hm) = ip[e], ipm[e]
        mips = insns / hb / 1e6
        print(f"{e + ' engine':14}{rb:10.3f}{rm:8.3f}{hb:9.3f}{hm:8.3f}{hb / rb:8.3f}{mips:9.0f}")
    print(
        f"  (raw: one emu_start, bench/_raw.py; hv: run_vm, {inproc['fast']['slices']} slices "
        f"of {args.quantum:,} instructions, VM creation and boot included)"
    )
    r_wall, r_wall_m = b["fast"] / b["qemu"], m["fast"] / m["qemu"]
    r_guest = (b["fast"] - s["fast"]) / (b["qemu"] - s["qemu"])
    r_inproc = ip["fast"][1] / ip["fast"][0]
    print("\nratios")
    print(
        f"  hv/qemu, wall from exec (fast engine): {r_wall:.3f} best, {r_wall_m:.3f} median  "
        f"{C.goal(r_wall, 1.0)}"
    )
    print(f"  hv/qemu, wall minus start-up:          {r_guest:.3f}")
    print(f"  hv/raw in process, fast engine:        {r_inproc:.3f}  {C.goal(r_inproc, 1.1)}")
    print(f"  hv/raw in process, stock engine:       {ip['stock'][1] / ip['stock'][0]:.3f}")
    print(
        f"  fast/stock: wall {b['fast'] / b['stock']:.3f}, in process hv "
        f"{ip['fast'][1] / ip['stock'][1]:.3f}, raw {ip['fast'][0] / ip['stock'][0]:.3f}"
    )
    print(
        f"compute: hv {b['fast']:.2f} s, qemu {b['qemu']:.2f} s (ratio {r_wall:.2f}); "
        f"hv/raw fast engine {r_inproc:.2f}; stock engine {b['stock']:.2f} s"
    )


if __name__ == "__main__":
    main()
