"""The cost of one exit, in microseconds, on the fast and the stock engine: SBI call, MMIO
access, rdtime, forwarded trap, timer interrupt, each under hv and against a reference.

The bundled `exits` guest repeats one kind of exit n times; its cost is
(time(kind) - time(none)) / n, so the guest's own loop and boot cancel out. hv runs it twice:
as configured by default (native exits: SBI putchar in a native hook and, on the fast engine,
rdtime read from the engine's time CSR without a trap) and with VmConfig(native_exits=False)
(every exit in Python, the path the stock engine's figures were first measured on). The
reference is the same guest on a bare Unicorn (bench/_raw.py) with the handler written the
obvious way with the high-level binding: for SBI a four-register stub, for MMIO a binding
callback, for rdtime and traps a hook that decodes and forwards with reg_read/reg_write, for
the timer an emu_stop in the hook and a mip write between emu_start calls.

The library is chosen once per process, so each engine runs in a child process of its own
(this script with --child, HV_ENGINE set) that times hv and the reference on that engine in
the same run, round robin. The two engines' columns are then printed side by side, and any
exit kind that costs more on the fast engine than on the stock one is named.

    python bench/exits.py [--n 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C

SCRIPT = Path(__file__).resolve()
KINDS = ("sbi", "mmio", "rdtime", "trap", "timer")
NOISE = 0.10  # differences below this fraction are within the machine's run-to-run noise
TINY = 0.05  # µs: below this an "exit" is a native helper call (no trap), lost in the noise


# --- the child: hv and the reference on this process's engine ---------------------------------


def child(n: int, repeat: int) -> dict[str, Any]:
    import trio

    import hv
    from bench._raw import TIME, RawGuest  # loads hv's machine first: the chosen engine
    from hv import _log
    from hv.build import _guests

    import unicorn.riscv_const as R  # isort: skip

    engine = C.child_engine_info()
    _log.configure("error")
    elf = _guests.build_guest("exits").read_bytes()

    async def hv_run(kind: str, native_exits: bool = True) -> float:
        cfg = hv.VmConfig(
            kernel=elf, cmdline=f"kind={kind} n={n}", name=kind, native_exits=native_exits
        )
        async with trio.open_nursery() as nursery:
            t = time.perf_counter()  # the VM runs its first slice inside start()
            vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
            info = await vm.wait()
            dt = time.perf_counter() - t
        if info.exit_code != 0 or b"exits: done" not in vm.console.transcript:
            raise SystemExit(f"hv {kind}: {info} {vm.console.transcript!r}")
        return dt

    def csr(uc: Any, reg: int, value: int | None = None) -> int:
        """Read or write a CSR from the binding, via M-mode (as the naive reference must)."""
        old = uc.reg_read(R.UC_RISCV_REG_PRIV)
        uc.reg_write(R.UC_RISCV_REG_PRIV, 3)
        if value is None:
            value = int(uc.reg_read(reg))
        else:
            uc.reg_write(reg, value)
        uc.reg_write(R.UC_RISCV_REG_PRIV, old)
        return value

    def raw_guest(kind: str) -> RawGuest:
        g = RawGuest(elf, f"kind={kind} n={n}")
        uc = g.uc
        if kind == "mmio":
            uc.mmio_map(0x1000_0000, 0x1000, lambda uc, off, size, ud: 0x60, None, None, None)

        def rdtime(uc: Any) -> None:
            pc = uc.reg_read(R.UC_RISCV_REG_PC) - 4
            insn = int.from_bytes(uc.mem_read(pc, 4), "little")
            rd = (insn >> 7) & 31
            uc.reg_write(R.UC_RISCV_REG_X0 + rd, time.monotonic_ns() // 100)
            uc.reg_write(R.UC_RISCV_REG_PC, pc + 4)

        def forward(uc: Any) -> None:
            pc = uc.reg_read(R.UC_RISCV_REG_PC) - 4
            insn = int.from_bytes(uc.mem_read(pc, 4), "little")
            if insn & 0xFFF0707F == 0xC0102073:  # the runtime's rdtime
                rdtime(uc)
                return
            sstatus = uc.reg_read(R.UC_RISCV_REG_SSTATUS)
            sie = (sstatus >> 1) & 1
            sstatus = (sstatus & ~0x122) | (sie << 5) | (1 << 8)
            uc.reg_write(R.UC_RISCV_REG_SEPC, pc)
            uc.reg_write(R.UC_RISCV_REG_SCAUSE, 2)
            uc.reg_write(R.UC_RISCV_REG_STVAL, 0)
            uc.reg_write(R.UC_RISCV_REG_SSTATUS, sstatus)
            uc.reg_write(R.UC_RISCV_REG_PC, uc.reg_read(R.UC_RISCV_REG_STVEC) & ~3)

        g.on_exception[2] = forward
        pending = [False]

        def set_timer(uc: Any, fid: int) -> tuple[int, int]:
            deadline = uc.reg_read(R.UC_RISCV_REG_A0)
            mip = csr(uc, R.UC_RISCV_REG_MIP) & ~(1 << 5)
            csr(uc, R.UC_RISCV_REG_MIP, mip)
            if deadline <= time.monotonic_ns() // 100:
                pending[0] = True
                uc.emu_stop()
            return (0, 0)

        def after_stop() -> None:
            if pending[0]:
                csr(uc, R.UC_RISCV_REG_MIP, csr(uc, R.UC_RISCV_REG_MIP) | (1 << 5))
                pending[0] = False

        g.on_sbi[TIME] = set_timer
        g.after_stop = after_stop  # type: ignore[method-assign]
        return g

    def raw_run(kind: str) -> float:
        g = raw_guest(kind)
        t = time.perf_counter()
        g.run()
        dt = time.perf_counter() - t
        if b"exits: done" not in g.out:
            raise SystemExit(f"raw {kind}: {g.out!r}")
        return dt

    runners: dict[str, Callable[[str], float]] = {
        "hv": lambda kind: trio.run(hv_run, kind),
        "hv-python": lambda kind: trio.run(hv_run, kind, False),
        "ref": raw_run,
    }
    for run in runners.values():  # warm-up: lazy imports, the first engine instance
        run("none")
    # Round robin (none, sbi, mmio, ... then again), best of `repeat` for each: a slow spell
    # of the machine, or one kind's after-effects on the next, then costs one sample only.
    times: dict[str, dict[str, list[float]]] = {
        v: {k: [] for k in ("none", *KINDS)} for v in runners
    }
    for _ in range(repeat):
        for kind in ("none", *KINDS):
            for v, run in runners.items():
                times[v][kind].append(run(kind))
    base = {v: min(t["none"]) for v, t in times.items()}
    costs = {v: {k: (min(t[k]) - base[v]) / n * 1e6 for k in KINDS} for v, t in times.items()}
    return {"engine": engine, "costs": costs, "base": base}


# --- the parent -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--n", type=int, default=20000, help="exits per run (default 20000)")
    ap.add_argument(
        "--repeat", type=int, default=5, help="runs of each, round robin, best taken (default 5)"
    )
    ap.add_argument("--bytecode", choices=C.BYTECODE_MODES, default="cached", help=C.BYTECODE_HELP)
    ap.add_argument(
        "--child",
        action="store_true",
        help="internal: time hv and the reference on this process's engine (HV_ENGINE) only, "
        "printed as one JSON line",
    )
    args = ap.parse_args()
    C.set_bytecode(args.bytecode)
    if args.child:
        print(json.dumps(child(args.n, args.repeat)))
        return

    child_args = ["--n", str(args.n), "--repeat", str(args.repeat)]
    res = {e: C.run_child(SCRIPT, e, child_args) for e in C.ENGINES}
    cost: dict[str, dict[str, dict[str, float]]] = {e: res[e]["costs"] for e in C.ENGINES}
    hv_f, hv_s = cost["fast"]["hv"], cost["stock"]["hv"]
    py_f, py_s = cost["fast"]["hv-python"], cost["stock"]["hv-python"]
    ref_f, ref_s = cost["fast"]["ref"], cost["stock"]["ref"]
    print(f"exit costs, n={args.n}, best of {args.repeat}, µs per exit (one child per engine)")
    for e in C.ENGINES:
        print(f"engine {C.describe(res[e]['engine'])}")
    print(
        f"\n{'':8}{'------- hv -------':>26}{'- hv, Python exits -':>26}"
        f"{'--- reference ---':>26}{'hv/ref':>8}"
    )
    sub = f"{'fast':>9}{'stock':>9}{'f/s':>8}"
    print(f"{'kind':8}{sub}{sub}{sub}{'fast':>8}")

    def ratio(x: float, y: float) -> str:
        return f"{x / y:.2f}" if x > TINY and y > TINY else "~0"  # ~0: not an exit any more

    slower: list[str] = []
    slower_py: list[str] = []
    for k in KINDS:
        row = ""
        for f, st in ((hv_f[k], hv_s[k]), (py_f[k], py_s[k]), (ref_f[k], ref_s[k])):
            row += f"{f:9.2f}{st:9.2f}{ratio(f, st):>8}"
        print(f"{k:8}{row}{ratio(hv_f[k], ref_f[k]):>8}")
        if hv_f[k] > hv_s[k]:
            slower.append(f"{k} ({hv_f[k] / hv_s[k] - 1:+.0%})")
        if py_f[k] > py_s[k]:
            slower_py.append(f"{k} ({py_f[k] / py_s[k] - 1:+.0%})")
    base = {e: res[e]["base"] for e in C.ENGINES}
    print(
        "  (kind=none, the loop and boot, subtracted: hv "
        f"{base['fast']['hv'] * 1e3:.1f} ms fast, {base['stock']['hv'] * 1e3:.1f} ms stock; "
        f"reference {base['fast']['ref'] * 1e3:.1f} / {base['stock']['ref'] * 1e3:.1f} ms."
    )
    print("   f/s = fast / stock; hv/ref = hv (default) / reference, on the fast engine)")

    def verdict(names: list[str], which: dict[str, dict[str, float]]) -> str:
        if not names:
            return "none"
        within = all(
            which["fast"][k] <= which["stock"][k] * (1 + NOISE)
            for k in KINDS
            if which["fast"][k] > which["stock"][k]
        )
        note = f" (all within {NOISE:.0%}, the machine's run-to-run noise)" if within else ""
        return ", ".join(names) + note

    print(f"slower on the fast engine, hv: {verdict(slower, {'fast': hv_f, 'stock': hv_s})}")
    print(
        "slower on the fast engine, hv with Python exits: "
        + verdict(slower_py, {"fast": py_f, "stock": py_s})
    )
    print(
        "exits: hv fast "
        + ", ".join(f"{k} {hv_f[k]:.2f}" for k in KINDS)
        + " µs; stock "
        + ", ".join(f"{k} {hv_s[k]:.2f}" for k in KINDS)
        + " µs"
    )


if __name__ == "__main__":
    main()
