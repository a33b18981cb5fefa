"""Debian guests: boot to `hv.run` done and iperf3 between two guests, hv vs
qemu-system-riscv64 with the same kernel, initramfs and disk; the image build, cached.

Boot: hvfabric's kernel and initramfs (`hv image build linux`) with the Debian root disk
(`hv image build debian`, a qcow2 base with a throwaway overlay: `--disk BASE,snapshot` for
hv, `-snapshot`-like `snapshot=on` for qemu), ``root=/dev/vda`` and ``hv.run="cat
/etc/debian_version; ..."``, 512 MiB (a Debian lab VM's default). Timed from exec to the
version on the console: `hv run linux` (real time, the fast engine) and qemu (`-M virt`,
OpenSBI, TCG, virtio-blk-device on virtio-mmio) alternating A B A B; then hv in this process
(from creating the VM, imports done); then one hv boot with exact instruction counting (the
guest's instructions and the exits by kind) and the console's own milestones (kernel clock at
"Run /init" and at the root mount) to tell the guest's work from the host's.

iperf3: two Debian guests on one segment, 10.0.0.2 runs `iperf3 -s`, 10.0.0.3 runs
`iperf3 -c 10.0.0.2 -t 5 -J`; the figure is iperf3's own JSON ``end.sum_received
.bits_per_second``. hv: a lab on real time, one switch, no impairment, both commands through
``vm.exec`` (the guest agent over virtio-vsock). qemu: two processes joined by
``-netdev socket`` on loopback with virtio-net-device, the commands in ``hv.run=`` (our init
reads ``ip=`` under qemu too) and the JSON read from the console. Alternating, each run boots
fresh guests.

Build: `hv image build debian` (the default package set) and `--packages iperf3` when
already built (a cold build is not run here), as a user runs them; the qcow2 sizes.

    python bench/debian.py [--runs 5] [--only boot|iperf|build]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C
from hv.build import _image_debian as D
from hv.build import _image_linux as L

MEM = "512M"
TIMEOUT = 180.0
# `poweroff` by its full path: the Debian root has none of its own (no systemd), and the
# initramfs's busybox links live in /sbin, which is not bound into the disk's root.
POWEROFF = "/run/hv/bin/hvbox poweroff"
BOOT_RUN = f"cat /etc/debian_version; {POWEROFF}"
LINUX = re.compile(rb"Linux version ")
KT_INIT = re.compile(rb"\[\s*(\d+\.\d+)\] Run /init as init process")
KT_MOUNT = re.compile(rb"\[\s*(\d+\.\d+)\] EXT4-fs \(vda\): mounted")
VERSION = re.compile(rb"\n(\d+\.\d+)\r?\n")  # a console line of only the Debian version
SERVER, CLIENT = "10.0.0.2", "10.0.0.3"
IPERF_SECONDS = 5
TARGET_BOOT, TARGET_IPERF = 1.0, 1.0

# seconds from exec to: the kernel's first line, "Run /init", the version; then the kernel
# clock at "Run /init" and at the root mount
Boot = tuple[float, float, float, float, float]


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def span(xs: Sequence[float], fmt: str = "{:.3f}") -> str:
    v = sorted(xs)
    return f"{fmt.format(C.median(v))} ({fmt.format(v[0])}-{fmt.format(v[-1])})"


def kclock(rx: re.Pattern[bytes], buf: bytes) -> float:
    m = rx.search(buf)
    return float(m.group(1)) if m else float("nan")


def images() -> tuple[L.LinuxImage, D.DebianImage]:
    linux = L.linux_image_info()
    if linux is None:
        raise SystemExit("build the Linux image first: hv image build linux")
    debian = D.debian_image_info(D.DEFAULT_PACKAGES)
    if debian is None:
        raise SystemExit("build the Debian image first: hv image build debian")
    return linux, debian


def cmdline(linux: L.LinuxImage, run: str, *extra: str) -> str:
    return " ".join([linux.cmdline, "root=/dev/vda", *extra, f'hv.run="{run}"'])


def qemu_cmd(linux: L.LinuxImage, base: Path, append: str, *extra: str) -> list[str]:
    q = C.qemu_command()
    q[q.index("-m") + 1] = MEM
    return [
        *q, "-no-reboot",
        "-kernel", str(linux.kernel), "-initrd", str(linux.initrd), "-append", append,
        "-drive", f"file={base},if=none,id=d0,format=qcow2,snapshot=on",
        "-device", "virtio-blk-device,drive=d0", *extra,
    ]  # fmt: skip


class Console:
    """A child process whose stdout is its console, read with a deadline."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.t0 = time.perf_counter()
        self.cmd = list(cmd)
        self.p = subprocess.Popen(
            self.cmd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.p.stdout is not None
        self.fd = self.p.stdout.fileno()
        self.buf = b""
        self.eof = False

    def read(self, wait: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], wait)
        if ready:
            chunk = os.read(self.fd, 65536)
            self.buf += chunk
            self.eof = not chunk

    def wait_for(self, rx: re.Pattern[bytes], deadline: float = TIMEOUT) -> float:
        """Seconds from the start to ``rx`` on the console."""
        while not rx.search(self.buf):
            if time.perf_counter() - self.t0 > deadline:
                raise SystemExit(f"{self.cmd[0]}: no {rx.pattern!r}: {self.buf[-600:]!r}")
            if self.eof:
                raise SystemExit(f"{self.cmd[0]} ended before {rx.pattern!r}: {self.buf[-600:]!r}")
            self.read(0.5)
        return time.perf_counter() - self.t0

    def finish(self, timeout: float = 60) -> None:
        """Read to the end (the guest powers off); kill it if it does not."""
        try:
            end = time.perf_counter() + timeout
            while not self.eof and time.perf_counter() < end:
                self.read(0.5)
            self.p.wait(timeout=max(0.1, end - time.perf_counter()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()


def time_boot(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> Boot:
    c = Console(cmd, env)
    try:
        t_linux = c.wait_for(LINUX)
        t_init = c.wait_for(KT_INIT)
        t_version = c.wait_for(VERSION)
    finally:
        c.finish()
    return t_linux, t_init, t_version, kclock(KT_INIT, c.buf), kclock(KT_MOUNT, c.buf)


# --- boot ----------------------------------------------------------------------------------


def hv_inprocess_boots(linux: L.LinuxImage, base: Path, runs: int) -> tuple[list[Boot], Any]:
    """In this process: ``runs`` boots from creating the VM, then one counted boot."""
    import trio

    import hv
    from hv import _log
    from hv._disk import close_disks, open_disks

    _log.configure("error")
    append = cmdline(linux, BOOT_RUN)

    async def boot(count: bool = False) -> tuple[Boot, dict[str, int]]:
        disks = await open_disks([f"{base},snapshot"])
        try:
            cfg = hv.VmConfig(
                kernel=linux.kernel, initrd=linux.initrd, cmdline=append, name="debian",
                mem_size=512 << 20, disks=tuple(disks), count_instructions=count,
            )  # fmt: skip
            async with trio.open_nursery() as nursery:
                t0 = time.perf_counter()
                vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
                with trio.fail_after(TIMEOUT * (5 if count else 1)):
                    await vm.console.wait_for(LINUX)
                    t_linux = time.perf_counter() - t0
                    await vm.console.wait_for(KT_INIT)
                    t_init = time.perf_counter() - t0
                    await vm.console.wait_for(VERSION)
                    t_version = time.perf_counter() - t0
                stats = vm.stats
                vm.stop()
        finally:
            await close_disks(disks)
        buf = bytes(vm.console.transcript)
        return (t_linux, t_init, t_version, kclock(KT_INIT, buf), kclock(KT_MOUNT, buf)), stats

    trio.run(boot)  # warm-up: lazy imports, the engine, the page cache
    boots = [trio.run(boot)[0] for _ in range(runs)]
    return boots, trio.run(boot, True)[1]


def bench_boot(runs: int) -> None:
    linux, debian = images()
    append = cmdline(linux, BOOT_RUN)
    hv_cmd = [*C.hv_command(), "run", "linux", "--mem", MEM, "--disk", f"{debian.base},snapshot"]
    hv_cmd += ["--append", append]
    q_cmd = qemu_cmd(linux, debian.base, append)
    env = C.engine_env("fast")
    info = C.engine_info("fast")
    print(f"== Debian boot to hv.run done, {runs} runs each, alternating; {load()}")
    print(f"kernel {linux.kernel}, disk {debian.base} (throwaway overlay), {MEM}")
    print(f"cmdline: {append}")
    print(f"engine {C.describe(info)}; qemu: {C.qemu_version()}, OpenSBI {C.OPENSBI}")
    print(C.bytecode_note())
    results: dict[str, list[Boot]] = {"hv": [], "qemu": []}
    time_boot(hv_cmd, env)  # warm-up
    time_boot(q_cmd)
    for _ in range(runs):
        results["hv"].append(time_boot(hv_cmd, env))
        results["qemu"].append(time_boot(q_cmd))
    results["hv in process"], stats = hv_inprocess_boots(linux, debian.base, runs)
    labels = {
        "hv": "hv run linux (from exec)",
        "qemu": "qemu-system-riscv64",
        "hv in process": "hv in process",
    }
    print("\nseconds, median (range)")
    head = f"{'Linux version':>22}{'Run /init':>22}{'version shown':>22}"
    print(f"{'':26}{head}{'kclock /init':>14}{'kclock mount':>14}")
    for k, label in labels.items():
        rs = results[k]
        cols = "".join(f"{span([r[i] for r in rs]):>22}" for i in range(3))
        kc = "".join(f"{C.median([r[i] for r in rs]):14.3f}" for i in (3, 4))
        print(f"{label:26}{cols}{kc}")
    print("  (Linux version: the kernel's first line, qemu runs OpenSBI before it; kclock: the")
    print("   guest's printk time at Run /init and at the root's mount, median)")
    q = C.median([r[2] for r in results["qemu"]])
    r_exec = C.median([r[2] for r in results["hv"]]) / q
    r_in = C.median([r[2] for r in results["hv in process"]]) / q
    print(f"\nhv run / qemu, to the version (medians):  {r_exec:.2f}  {goal(r_exec, TARGET_BOOT)}")
    print(f"hv in process / qemu:                       {r_in:.2f}  {goal(r_in, TARGET_BOOT)}")
    # where the time goes: the host's start-up, the kernel (to /init), init to the version
    for k in ("hv", "qemu", "hv in process"):
        rs = results[k]
        start = C.median([r[0] for r in rs])
        kernel = C.median([r[1] - r[0] for r in rs])
        user = C.median([r[2] - r[1] for r in rs])
        print(
            f"  {labels[k]:26} to the first line {start:.3f}, kernel to /init {kernel:.3f}, "
            f"/init to the version {user:.3f}"
        )
    insns = stats["instructions"]
    t_counted = C.median([r[2] for r in results["hv in process"]])
    print(f"\nprofile of one hv boot to the version (exact count, slows that boot): {insns:,} ")
    print(f"guest instructions, {insns / t_counted / 1e6:.0f} M/s over the uncounted in-process ")
    print("boot's time; exits:")
    keys = ["slices", "wfi", "sbi_calls", "traps_forwarded", "rdtime_emulated", "rdtime_native"]
    keys += ["mmio_reads", "mmio_writes", "irq_timer", "irq_external", "irq_software"]
    keys += sorted(k for k in stats if k.startswith(("trap_cause_", "sbi_0x")))
    for key in keys:
        if stats.get(key):
            print(f"  {key:18} {stats[key]:>12,}")


def goal(ratio: float, limit: float, higher: bool = False) -> str:
    met = ratio >= limit if higher else ratio <= limit
    sign = ">=" if higher else "<="
    return f"(target {sign} {limit}: {'met' if met else 'NOT met'})"


# --- iperf3 --------------------------------------------------------------------------------

LAB = f"""
name = "debbench"
clock = "real"

[switches.lan]
subnet = "10.0.0.0/24"

[vms.srv]
kernel = "linux"
image = "debian"
nics = [{{ switch = "lan", ip = "{SERVER}/24" }}]

[vms.cli]
kernel = "linux"
image = "debian"
nics = [{{ switch = "lan", ip = "{CLIENT}/24" }}]
"""


def received(doc: Mapping[str, Any]) -> float:
    if "error" in doc:
        raise SystemExit(f"iperf3: {doc['error']}")
    return float(doc["end"]["sum_received"]["bits_per_second"])


def hv_iperf() -> float:
    """One run: a fresh lab, the server as a daemon, the client's JSON; bits/s received."""
    import trio

    from hv import _log
    from hv.lab import parse_lab, run_lab

    _log.configure("error")
    spec = parse_lab(LAB, Path.cwd())

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            lab = await nursery.start(run_lab, spec, lambda _b: None)
            srv, cli = lab.vms["srv"], lab.vms["cli"]
            with trio.fail_after(TIMEOUT):
                await srv.exec("iperf3", "-s", "-D", check=True)
                await cli.exec("true")
                while True:
                    r = await cli.exec("iperf3", "-c", SERVER, "-t", str(IPERF_SECONDS), "-J")
                    doc = json.loads(r.stdout)
                    if r.returncode == 0 or "refused" not in doc.get("error", ""):
                        break
                    await trio.sleep(0.2)
            lab.stop()
        return received(doc)

    return trio.run(main)


JSON_BEGIN, JSON_END = "IPERF-JSON-BEGIN", "IPERF-JSON-END"
JSON_RX = re.compile(rb"\n" + JSON_BEGIN.encode() + rb"\r?\n(.*?)\n" + JSON_END.encode(), re.S)


def qemu_iperf(linux: L.LinuxImage, base: Path, port: int) -> float:
    """One run: two qemu processes joined by -netdev socket on loopback; bits/s received."""
    srv_run = f"iperf3 -s -1; {POWEROFF}"
    cli_run = (
        f"until iperf3 -c {SERVER} -t {IPERF_SECONDS} -J > /tmp/r; do sleep 0.2; done; "
        f"echo {JSON_BEGIN}; cat /tmp/r; echo {JSON_END}; {POWEROFF}"
    )

    def net(mac: str, how: str) -> list[str]:
        return [
            "-netdev",
            f"socket,id=n0,{how}",
            "-device",
            f"virtio-net-device,netdev=n0,mac={mac}",
        ]

    srv = Console(
        qemu_cmd(linux, base, cmdline(linux, srv_run, f"ip={SERVER}/24", "hostname=srv"),
                 *net("52:54:00:00:00:02", f"listen=127.0.0.1:{port}"))
    )  # fmt: skip
    cli: Console | None = None
    try:
        srv.wait_for(LINUX)  # its netdev listens once the guest runs
        cli = Console(
            qemu_cmd(linux, base, cmdline(linux, cli_run, f"ip={CLIENT}/24", "hostname=cli"),
                     *net("52:54:00:00:00:03", f"connect=127.0.0.1:{port}"))
        )  # fmt: skip
        cli.wait_for(JSON_RX)
        m = JSON_RX.search(cli.buf)
        assert m is not None
        text = m.group(1).replace(b"\r", b"").decode(errors="replace")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise SystemExit(f"qemu client: no JSON from iperf3: {text[-600:]!r}") from None
    finally:
        if cli is not None:
            cli.finish()
        srv.finish()
    return received(doc)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_iperf(runs: int) -> None:
    linux, debian = images()
    print(f"\n== iperf3 between two Debian guests, {runs} runs each, alternating; {load()}")
    print(f"iperf3 -c -t {IPERF_SECONDS} -J, end.sum_received.bits_per_second; {MEM} each")
    print("hv: a lab on real time, one switch, no impairment, commands through vm.exec")
    print("qemu: two processes, -netdev socket on 127.0.0.1, virtio-net-device, hv.run=")
    got: dict[str, list[float]] = {"hv": [], "qemu": []}
    for i in range(runs):
        got["hv"].append(hv_iperf() / 1e6)
        got["qemu"].append(qemu_iperf(linux, debian.base, free_port()) / 1e6)
        print(f"  run {i + 1}: hv {got['hv'][-1]:.1f} Mbit/s, qemu {got['qemu'][-1]:.1f} Mbit/s")
    print("\nMbit/s, median (range)")
    for k in got:
        print(f"  {k:6} {span(got[k], '{:.1f}')}")
    r = C.median(got["hv"]) / C.median(got["qemu"])
    print(f"hv / qemu (medians): {r:.2f}  {goal(r, TARGET_IPERF, higher=True)}")
    print(load())


# --- image build ---------------------------------------------------------------------------


def bench_build(runs: int) -> None:
    print(f"\n== hv image build debian, cached (no cold build here); {load()}")
    sets = {"default set": D.DEFAULT_PACKAGES, "--packages iperf3": ("iperf3",)}
    for label, pkgs in sets.items():
        img = D.debian_image_info(pkgs)
        if img is None:
            print(f"  {label}: not built, skipped (its first build is a cold one)")
            continue
        cmd = [*C.hv_command(), "image", "build", "debian"]
        if pkgs != D.DEFAULT_PACKAGES:
            cmd += ["--packages", ",".join(pkgs)]
        times = [C.timed_process(cmd, C.python_env())[0] for _ in range(runs)]
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(img.base)],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        st = img.base.stat()
        print(f"  {' '.join(cmd[len(C.hv_command()) :])}: {span(times)} s")
        print(
            f"    {img.base}: file {st.st_size / 2**20:.0f} MiB, on disk "
            f"{st.st_blocks * 512 / 2**20:.0f} MiB, virtual size "
            f"{info['virtual-size'] / 2**30:.0f} GiB"
        )
    print(load())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    ap.add_argument("--only", choices=("boot", "iperf", "build"), help="one part only")
    args = ap.parse_args()
    if shutil.which("qemu-img") is None:
        raise SystemExit("needs qemu-utils and qemu-system-misc: bash .ci/linux-deps.sh")
    parts = {"boot": bench_boot, "iperf": bench_iperf, "build": bench_build}
    for name, part in parts.items():
        if args.only in (None, name):
            part(args.runs)


if __name__ == "__main__":
    main()
