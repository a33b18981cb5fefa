"""Linux boot: time to "Run /init" and to the shell prompt, hv on the fast and the stock
engine vs qemu-system-riscv64, from exec and in process.

All boot the same kernel `Image`, initramfs and command line from `hv image build linux`, with
128 MiB: qemu as Debian packages it (`-M virt`, OpenSBI `fw_jump`, TCG), hv as `hv run linux`
on the fast engine (hv's default) and with HV_ENGINE=stock. These three are timed the same
way, from exec to the text on the console, alternating A B C A B C. Then, in one child process
per engine (this script with --child, HV_ENGINE set), hv in process: from creating the VM in
an already running program (imports done, as when hv is embedded) to the same text. The
kernel's own clock (printk time, the timebase runs at wall-clock rate) at "Run /init" is
printed too: it tells the guest side from the host's start-up.

Last, one more boot in the fast engine's child with exact instruction counting (a native
code hook, which slows that boot) gives the profile: guest instructions to the prompt and the
exits by kind.

    python bench/boot.py [--runs 3] [--no-profile]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C
from hv.build import _image_linux

SCRIPT = Path(__file__).resolve()
LINUX = re.compile(rb"Linux version ")
RUN_INIT = re.compile(rb"Run /init as init process")
KTIME_INIT = re.compile(rb"\[\s*(\d+\.\d+)\] Run /init as init process")
PROMPT = re.compile(rb"\n[^\n]*# $")
TIMEOUT = 120.0
GOAL_EXEC, GOAL_INPROC = 1.25, 0.8

# Seconds to the kernel's first line ("Linux version"), to "Run /init", to the prompt; and
# the kernel's own clock at "Run /init".
Boot = tuple[float, float, float, float]


def kernel_time(buf: bytes) -> float:
    m = KTIME_INIT.search(buf)
    return float(m.group(1)) if m else float("nan")


def time_boot(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> Boot:
    """Start ``cmd``; time the console's milestones (see Boot), then power it off."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        list(cmd),
        env=dict(env) if env is not None else None,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert p.stdout is not None and p.stdin is not None
    buf, t_linux, t_init, t_prompt = b"", 0.0, 0.0, 0.0
    try:
        while not t_prompt:
            if time.perf_counter() - t0 > TIMEOUT:
                raise SystemExit(f"no prompt after {TIMEOUT} s from {cmd[0]}: {buf[-400:]!r}")
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                raise SystemExit(f"{cmd[0]} exited before the prompt: {buf[-400:]!r}")
            buf += chunk
            now = time.perf_counter() - t0
            if not t_linux and LINUX.search(buf):
                t_linux = now
            if not t_init and RUN_INIT.search(buf):
                t_init = now
            if t_init and PROMPT.search(buf):
                t_prompt = now
        p.stdin.write(b"poweroff\n")
        p.stdin.flush()
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return t_linux, t_init, t_prompt, kernel_time(buf)


# --- the child: in process, on this process's engine ------------------------------------------


def child(runs: int, with_profile: bool) -> dict[str, Any]:
    import trio

    import hv
    from hv import _log

    engine = C.child_engine_info()
    _log.configure("error")
    img = _image_linux.linux_image_info()
    if img is None:
        raise SystemExit("build the image first: hv image build linux")

    def config(count: bool = False) -> Any:
        return hv.VmConfig(
            kernel=img.kernel,
            initrd=img.initrd,
            cmdline=img.cmdline,
            name="linux",
            count_instructions=count,
        )

    async def in_process() -> Boot:
        """From creating the VM (imports already done) to the milestones (see Boot)."""
        async with trio.open_nursery() as nursery:
            t0 = time.perf_counter()
            vm: hv.Vm = await nursery.start(hv.run_vm, config())
            with trio.fail_after(TIMEOUT):
                await vm.console.wait_for(LINUX)
                t_linux = time.perf_counter() - t0
                await vm.console.wait_for(RUN_INIT)
                t_init = time.perf_counter() - t0
                await vm.console.wait_for(PROMPT)
                t_prompt = time.perf_counter() - t0
            vm.stop()
        return t_linux, t_init, t_prompt, kernel_time(vm.console.transcript)

    async def profile() -> dict[str, int]:
        async with trio.open_nursery() as nursery:
            vm: hv.Vm = await nursery.start(hv.run_vm, config(count=True))
            with trio.fail_after(TIMEOUT * 5):
                await vm.console.wait_for(PROMPT)
            stats = vm.stats
            vm.stop()
        return stats

    trio.run(in_process)  # warm-up: lazy imports, the first engine instance, the page cache
    boots = [trio.run(in_process) for _ in range(runs)]
    stats = trio.run(profile) if with_profile else None
    return {"engine": engine, "boots": boots, "profile": stats}


# --- the parent -------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--runs", type=int, default=3, help="boots of each, best and median (default 3)"
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the counted profile boot")
    ap.add_argument("--bytecode", choices=C.BYTECODE_MODES, default="cached", help=C.BYTECODE_HELP)
    ap.add_argument(
        "--child",
        action="store_true",
        help="internal: only the in-process boots (and the profile unless --no-profile) on this "
        "process's engine (HV_ENGINE), printed as one JSON line",
    )
    args = ap.parse_args()
    C.set_bytecode(args.bytecode)
    if args.child:
        print(json.dumps(child(args.runs, not args.no_profile)))
        return

    img = _image_linux.linux_image_info()
    if img is None:
        raise SystemExit("build the image first: hv image build linux")
    qemu_cmd = [
        *C.qemu_command(), "-no-reboot",
        "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", img.cmdline,
    ]  # fmt: skip
    hv_cmd = [*C.hv_command(), "run", "linux", "--mem", "128M"]
    engines = {e: C.engine_info(e) for e in C.ENGINES}
    envs = {e: C.engine_env(e) for e in C.ENGINES}

    def boot(who: str) -> Boot:
        return time_boot(qemu_cmd) if who == "qemu" else time_boot(hv_cmd, envs[who])

    who_all = ("fast", "stock", "qemu")
    for who in who_all:  # warm-up: page cache, the engines' files, bytecode
        boot(who)
    results: dict[str, list[Boot]] = {w: [] for w in who_all}
    for _ in range(args.runs):
        for who in who_all:
            results[who].append(boot(who))
    inproc: dict[str, Any] = {}
    for e in C.ENGINES:
        child_args = ["--runs", str(args.runs)]
        if e != "fast" or args.no_profile:
            child_args.append("--no-profile")
        inproc[e] = C.run_child(SCRIPT, e, child_args)
        results[f"{e} in-process"] = [tuple(b) for b in inproc[e]["boots"]]

    labels = {
        "fast": "hv run linux, fast engine",
        "stock": "hv run linux, stock engine",
        "qemu": "qemu-system-riscv64",
        "fast in-process": "hv in process, fast engine",
        "stock in-process": "hv in process, stock engine",
    }
    print(f"Linux boot, {args.runs} runs each, alternating (kernel {img.kernel})")
    print(f"cmdline: {img.cmdline}, 128 MiB")
    for e in C.ENGINES:
        print(f"engine {C.describe(engines[e])}")
    print(f"qemu: {C.qemu_version()}, OpenSBI {C.OPENSBI}")
    print(C.bytecode_note())
    head = f"{'Linux version':>14}{'Run /init':>10}{'prompt':>8}{'median':>8}{'kernel clock':>13}"
    print(f"\n{'seconds':28}{head}")
    best: dict[str, tuple[float, float, float]] = {}
    for k, label in labels.items():
        rs = results[k]
        best[k] = (
            C.best([r[0] for r in rs]),
            C.best([r[1] for r in rs]),
            C.best([r[2] for r in rs]),
        )
        med = C.median([r[2] for r in rs])
        kclock = C.median([r[3] for r in rs])
        row = f"{best[k][0]:14.3f}{best[k][1]:10.3f}{best[k][2]:8.3f}{med:8.3f}{kclock:13.3f}"
        print(f"{label:28}{row}")
    print("  (best of the runs, and the median to the prompt. Linux version: the kernel's first")
    print("   line (qemu runs OpenSBI before it). Kernel clock: printk time at Run /init, median.")
    print("   From exec: Python start-up and imports included. In process: from creating the VM")
    print("   in an already running program, as when embedding hv)")
    print("\nratios to qemu (from exec), to the prompt, best")
    q = best["qemu"][2]
    r_exec = {e: best[e][2] / q for e in C.ENGINES}
    r_in = {e: best[f"{e} in-process"][2] / q for e in C.ENGINES}
    goal_exec, goal_in = C.goal(r_exec["fast"], GOAL_EXEC), C.goal(r_in["fast"], GOAL_INPROC)
    print(f"  hv run linux / qemu, fast engine:   {r_exec['fast']:.2f}  {goal_exec}")
    print(f"  hv run linux / qemu, stock engine:  {r_exec['stock']:.2f}")
    print(f"  hv in process / qemu, fast engine:  {r_in['fast']:.2f}  {goal_in}")
    print(f"  hv in process / qemu, stock engine: {r_in['stock']:.2f}")
    print(
        f"  fast/stock: from exec {best['fast'][2] / best['stock'][2]:.2f}, in process "
        f"{best['fast in-process'][2] / best['stock in-process'][2]:.2f}"
    )
    print(
        f"boot: hv run linux {best['fast'][2]:.3f} s ({r_exec['fast']:.2f}x qemu), in process "
        f"{best['fast in-process'][2]:.3f} s ({r_in['fast']:.2f}x), qemu {q:.3f} s; "
        f"stock engine {best['stock'][2]:.3f} s"
    )
    stats = inproc["fast"].get("profile")
    if not stats:
        return
    print("\nprofile of one hv boot to the prompt, fast engine (exact instruction count; slows")
    print("that boot):")
    print(f"  guest instructions: {stats['instructions']:,}")
    order = ["slices", "wfi", "sbi_calls", "sbi_native", "traps_forwarded"]
    order += ["rdtime_emulated", "rdtime_native"]
    order += ["mmio_reads", "mmio_writes", "irq_timer", "irq_external", "irq_software"]
    for key in order:
        print(f"  {key:18} {stats.get(key, 0):>10,}")
    for key in sorted(k for k in stats if k.startswith(("trap_cause_", "sbi_0x"))):
        print(f"  {key:18} {stats[key]:>10,}")


if __name__ == "__main__":
    main()
