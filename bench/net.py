"""Two Linux guests on one network: ping RTT and TCP throughput, hv against qemu-system-riscv64.

hv: both guests in one `hv up` process, on one switch. qemu: two qemu-system-riscv64
processes joined by `-netdev socket` (listen/connect on loopback), each with a
`virtio-net-device`. Same kernel, initramfs and command line (from `hv image build linux`):
guest b runs `traffic recv`, guest a pings b 50 times then sends it 50 MB over TCP.

    python bench/net.py [--bytes 50000000] [--pings 50]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hv.build import _image_linux

OPENSBI = "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin"
RTT = re.compile(r"rtt min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms")
TCP = re.compile(r"traffic: received from [\d.]+: (\d+) bytes in ([\d.]+) s = ([\d.]+) Mbit/s")


def commands(pings: int, nbytes: int) -> tuple[str, str]:
    a = f"sleep 2; ping -q -c {pings} -i 0.02 10.0.0.2; traffic send -t 10.0.0.2 {nbytes}; poweroff"
    b = "traffic recv -t -1; poweroff"
    return a, b


def run_hv(img: _image_linux.LinuxImage, pings: int, nbytes: int) -> str:
    a, b = commands(pings, nbytes)
    lab = (
        "[switches.lan]\n"
        f'[vms.a]\nkernel = "linux"\nappend = \'hv.run="{a}"\'\n'
        'nics = [{ switch = "lan", ip = "10.0.0.1/24" }]\n'
        f'[vms.b]\nkernel = "linux"\nappend = \'hv.run="{b}"\'\n'
        'nics = [{ switch = "lan", ip = "10.0.0.2/24" }]\n'
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.toml"
        path.write_text(lab)
        r = subprocess.run(
            [sys.executable, "-m", "hv.cli", "up", str(path), "--exit-code-from", "a"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    return r.stdout


def run_qemu(img: _image_linux.LinuxImage, pings: int, nbytes: int, port: int) -> str:
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None:
        raise SystemExit("needs qemu-system-riscv64 (.ci/linux-deps.sh)")
    a, b = commands(pings, nbytes)

    def cmd(ip: str, run: str, mac: str, netdev: str) -> list[str]:
        return [
            qemu, "-M", "virt", "-m", "128M", "-nographic", "-bios", OPENSBI,
            "-kernel", str(img.kernel), "-initrd", str(img.initrd),
            "-append", f'{img.cmdline} ip={ip}/24 hv.run="{run}"',
            "-netdev", f"socket,id=n0,{netdev}",
            "-device", f"virtio-net-device,netdev=n0,mac={mac}",
        ]  # fmt: skip

    pb = subprocess.Popen(
        cmd("10.0.0.2", b, "52:54:00:00:00:02", f"listen=127.0.0.1:{port}"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.5)
    try:
        ra = subprocess.run(
            cmd("10.0.0.1", a, "52:54:00:00:00:01", f"connect=127.0.0.1:{port}"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        out_b, _ = pb.communicate(timeout=30)
    finally:
        if pb.poll() is None:
            pb.kill()
            pb.wait()
    return ra.stdout + (out_b or "")


def figures(out: str) -> tuple[float, float, float]:
    rtt = RTT.search(out)
    tcp = TCP.search(out)
    if rtt is None or tcp is None:
        raise SystemExit(f"no figures in the guests' output:\n{out[-3000:]}")
    return float(rtt[1]), float(rtt[2]), float(tcp[3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=50_000_000, help="TCP bytes (default 50 MB)")
    ap.add_argument("--pings", type=int, default=50, help="pings (default 50)")
    args = ap.parse_args()
    img = _image_linux.linux_image_info()
    if img is None:
        raise SystemExit("build the Linux image first: hv image build linux")
    hv_min, hv_avg, hv_tcp = figures(run_hv(img, args.pings, args.bytes))
    q_min, q_avg, q_tcp = figures(run_qemu(img, args.pings, args.bytes, 47211))
    print(f"{'':8}{'rtt min ms':>12}{'rtt avg ms':>12}{'tcp Mbit/s':>12}")
    print(f"{'hv':8}{hv_min:12.3f}{hv_avg:12.3f}{hv_tcp:12.1f}")
    print(f"{'qemu':8}{q_min:12.3f}{q_avg:12.3f}{q_tcp:12.1f}")
    print(
        f"net: hv rtt min/avg {hv_min:.3f}/{hv_avg:.3f} ms, tcp {hv_tcp:.0f} Mbit/s; "
        f"qemu {q_min:.3f}/{q_avg:.3f} ms, {q_tcp:.0f} Mbit/s; tcp ratio {hv_tcp / q_tcp:.2f}"
    )


if __name__ == "__main__":
    main()
