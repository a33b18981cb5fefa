"""Linux boot: time to "Run /init" and to the shell prompt, hv vs qemu-system-riscv64.

Both boot the same kernel `Image`, initramfs and command line from `hv image build linux`:
qemu as Debian packages it (`-M virt`, OpenSBI `fw_jump`, TCG), hv as `hv run linux`. Both are
timed the same way, from process start to the text on the console, in the same run, best of N.
Then one more hv boot, in process, with exact instruction counting, gives the profile: guest
instructions to the prompt and the exits by kind.

    python bench/boot.py [--runs 3] [--no-profile]
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hv
from hv import _image_linux, _log

OPENSBI = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")
RUN_INIT = re.compile(rb"Run /init as init process")
PROMPT = re.compile(rb"\n[^\n]*# $")
TIMEOUT = 120.0


def time_boot(cmd: list[str]) -> tuple[float, float]:
    """Start ``cmd``; return seconds to "Run /init" and to the prompt, then power it off."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert p.stdout is not None and p.stdin is not None
    buf, t_init, t_prompt = b"", 0.0, 0.0
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
    return t_init, t_prompt


async def in_process(img: _image_linux.LinuxImage) -> tuple[float, float]:
    """Seconds from creating the VM (imports already done) to "Run /init" and the prompt."""
    cfg = hv.VmConfig(kernel=img.kernel, initrd=img.initrd, cmdline=img.cmdline, name="linux")
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
        with trio.fail_after(TIMEOUT):
            await vm.console.wait_for(RUN_INIT)
            t_init = time.perf_counter() - t0
            await vm.console.wait_for(PROMPT)
            t_prompt = time.perf_counter() - t0
        vm.stop()
    return t_init, t_prompt


async def profile(img: _image_linux.LinuxImage) -> dict[str, int]:
    cfg = hv.VmConfig(
        kernel=img.kernel,
        initrd=img.initrd,
        cmdline=img.cmdline,
        name="linux",
        count_instructions=True,
    )
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
        with trio.fail_after(TIMEOUT * 5):
            await vm.console.wait_for(PROMPT)
        stats = vm.stats
        vm.stop()
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="boots of each, best taken (default 3)")
    ap.add_argument("--no-profile", action="store_true", help="skip the counted profile boot")
    args = ap.parse_args()
    img = _image_linux.linux_image_info()
    if img is None:
        raise SystemExit("build the image first: hv image build linux")
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None or not OPENSBI.is_file():
        raise SystemExit("needs qemu-system-misc and opensbi: bash .ci/linux-deps.sh")
    qemu_cmd = [
        qemu, "-M", "virt", "-m", "128M", "-nographic", "-no-reboot", "-bios", str(OPENSBI),
        "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", img.cmdline,
    ]  # fmt: skip
    hv_cmd = [sys.executable, "-m", "hv._cli", "run", "linux", "--mem", "128M"]
    results: dict[str, list[tuple[float, float]]] = {"qemu": [], "hv": [], "hv in-process": []}
    _log.configure("error")
    for _ in range(args.runs):
        results["qemu"].append(time_boot(qemu_cmd))
        results["hv"].append(time_boot(hv_cmd))
        results["hv in-process"].append(trio.run(in_process, img))
    print(f"Linux boot, best of {args.runs}, from process start (kernel {img.kernel})")
    print(f"cmdline: {img.cmdline}")
    print(f"{'':22}{'Run /init':>12}{'prompt':>10}")
    best = {k: (min(r[0] for r in v), min(r[1] for r in v)) for k, v in results.items()}
    for k in results:
        print(f"{k + ' (s)':22}{best[k][0]:12.3f}{best[k][1]:10.3f}")
    for k in ("hv", "hv in-process"):
        r_init = best[k][0] / best["qemu"][0]
        r_prompt = best[k][1] / best["qemu"][1]
        print(f"{'ratio ' + k + '/qemu':22}{r_init:12.2f}{r_prompt:10.2f}   (target <= 1.25)")
    print("(hv: `hv run linux` from exec, Python start-up and imports included; hv in-process:")
    print(" from creating the VM in an already running program, as when embedding hv)")
    if args.no_profile:
        return
    stats = trio.run(profile, img)
    print("\nprofile of one hv boot to the prompt (exact instruction count; slows that boot):")
    print(f"  guest instructions: {stats['instructions']:,}")
    order = ["slices", "wfi", "sbi_calls", "traps_forwarded", "rdtime_emulated"]
    order += ["mmio_reads", "mmio_writes", "irq_timer", "irq_external", "irq_software"]
    for key in order:
        print(f"  {key:18} {stats.get(key, 0):>10,}")
    for key in sorted(k for k in stats if k.startswith(("trap_cause_", "sbi_0x"))):
        print(f"  {key:18} {stats[key]:>10,}")


if __name__ == "__main__":
    main()
