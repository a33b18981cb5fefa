"""A Linux vxlan device and a Linux guest across VXLAN: ping RTT and TCP both ways, hv
against qemu.

Two network namespaces this script creates and deletes (needs root), joined by a veth pair
(10.9.0.1 in A, 10.9.0.2 in B; MTU 1600, so a 1500-byte frame crosses in one datagram; B's
side fills its checksums in software, as a NIC would in hardware: ethtool -K ub tx off). In B,
a Linux vxlan device (VNI 42, dstport 4789, remote 10.9.0.1) with 10.0.7.1/24: the "host"
of bench/tap.py, which pings the guest (10.0.7.2) and runs the TCP clients. In A:

- hv: `hv up` of a lab whose switch has `vxlan = { vni = 42, local = "10.9.0.1", remote =
  "10.9.0.2" }` and the Linux guest on it: hv's own VXLAN port (netfabric/ports/vxlan.py).
- qemu: `qemu-system-riscv64 ... -netdev tap` with the TAP in a Linux bridge with a Linux
  vxlan device (VNI 42, remote 10.9.0.2): the kernel does qemu's VXLAN. (qemu has no VXLAN
  backend: `-netdev socket`/`dgram` put bare frames in UDP, `l2tpv3` needs the kernel's
  l2tp_eth on the other side, which this kernel lacks; so qemu gets the kernel's fast path,
  the best it has.)

Same kernel, initramfs and guest command line; the table shows every run and the best.

    python bench/vxlan.py [--pings 50] [--bytes 100000000] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C
from bench.tap import GUEST, HOST, TAP, Console, guest_run, log, measure_from, ns_cmd, table
from hv.build import _image_linux

VNI = 42
A_IP, B_IP = "10.9.0.1", "10.9.0.2"
MAC = "52:54:00:07:00:02"  # both guests': B's neighbour and FDB entries stay right


NO_TX_CSUM = """
import sys
from pyroute2.ethtool import Ethtool
e = Ethtool()
f = e.get_features(sys.argv[1])
f.features["tx-checksum-ip-generic"].enable = False
e.set_features(sys.argv[1], f)
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def setup(a: str, b: str) -> None:
    """veth A-B, and B's vxlan device with the host's address on the guests' subnet."""
    for ns in (a, b):
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", a, "link", "add", "ua", "mtu", "1600", "type", "veth", "peer", "name", "ub",
       "mtu", "1600", "netns", b)  # fmt: skip
    for ns, dev, addr in ((a, "ua", A_IP), (b, "ub", B_IP)):
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")
    ip("-n", b, "link", "add", "vx0", "mtu", "1500", "type", "vxlan", "id", str(VNI), "remote",
       A_IP, "local", B_IP, "dstport", "4789", "dev", "ub")  # fmt: skip
    ip("-n", b, "addr", "add", f"{HOST}/24", "dev", "vx0")
    ip("-n", b, "link", "set", "vx0", "up")
    # A veth leaves checksums to "the hardware" (CHECKSUM_PARTIAL), and a kernel receiver
    # trusts that, but a UDP socket (hv's VXLAN port) reads the inner TCP checksums unfilled:
    # B's side fills them in software, as a real NIC would in hardware.
    subprocess.run(ns_cmd(b, sys.executable, "-c", NO_TX_CSUM, "ub"), check=True)


def run_hv(a: str, b: str, pings: int, nbytes: int) -> dict[str, float]:
    lab = (
        f'[switches.lan]\nvxlan = {{ vni = {VNI}, local = "{A_IP}", remote = "{B_IP}" }}\n'
        f'[vms.lx]\nkernel = "linux"\nappend = \'hv.run="{guest_run(nbytes)}"\'\n'
        f'nics = [{{ switch = "lan", ip = "{GUEST}/24", mac = "{MAC}" }}]\n'
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vxlan.toml"
        path.write_text(lab)
        guest = Console(ns_cmd(a, *C.hv_command(), "up", str(path)), env=C.python_env())
        try:
            return measure_from(b, guest, pings, nbytes)
        finally:
            guest.finish(1)


def run_qemu(
    a: str, b: str, img: _image_linux.LinuxImage, pings: int, nbytes: int
) -> dict[str, float]:
    ip("-n", a, "link", "add", "br0", "type", "bridge")
    ip("-n", a, "link", "add", "vxq", "type", "vxlan", "id", str(VNI), "remote", B_IP, "local",
       A_IP, "dstport", "4789", "dev", "ua")  # fmt: skip
    ip("-n", a, "link", "set", "vxq", "master", "br0", "up")
    ip("-n", a, "link", "set", "br0", "up")
    cmdline = f'{img.cmdline} hv.run="{guest_run(nbytes)}" ip={GUEST}/24'
    cmd = [
        *C.qemu_command(), "-kernel", str(img.kernel), "-initrd", str(img.initrd),
        "-append", cmdline,
        "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
        "-device", f"virtio-net-device,netdev=n0,mac={MAC}",
    ]  # fmt: skip
    guest = Console(ns_cmd(a, *cmd))
    try:
        deadline = time.monotonic() + 60
        while not _exists(a, TAP):
            if guest.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"qemu made no TAP {TAP}:\n{guest.text[-3000:]}")
            time.sleep(0.05)
        ip("-n", a, "link", "set", TAP, "master", "br0", "up")
        return measure_from(b, guest, pings, nbytes)
    finally:
        guest.finish(1)
        for dev in ("vxq", "br0"):
            subprocess.run(["ip", "-n", a, "link", "del", dev], check=False)


def _exists(ns: str, dev: str) -> bool:
    shown = subprocess.run(["ip", "-n", ns, "link", "show", dev], capture_output=True, check=False)
    return shown.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=50, help="pings, 20 ms apart (default 50)")
    ap.add_argument("--bytes", type=int, default=100_000_000, help="TCP bytes each way (100 MB)")
    ap.add_argument("--runs", type=int, default=2, help="rounds of hv then qemu (default 2)")
    ap.add_argument("--only", choices=("hv", "qemu"), help="run one of them only")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise SystemExit("needs root and iproute2 (it creates network namespaces)")
    img = _image_linux.linux_image_info()
    if img is None:
        raise SystemExit("build the Linux image first: hv image build linux")
    log(C.qemu_version())
    tag = secrets.token_hex(3)
    a, b = f"hvbvx-a-{tag}", f"hvbvx-b-{tag}"
    names = [args.only] if args.only else ["hv", "qemu"]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    runners: dict[str, Callable[[], dict[str, float]]] = {
        "hv": lambda: run_hv(a, b, args.pings, args.bytes),
        "qemu": lambda: run_qemu(a, b, img, args.pings, args.bytes),
    }
    try:
        setup(a, b)
        for i in range(args.runs):
            for name in names:
                log(f"run {i + 1}: {name}")
                subprocess.run(["ip", "-n", b, "neigh", "flush", "all"], check=False)
                r = runners[name]()
                log(f"  {r}")
                results[name].append(r)
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"\nVXLAN {VNI}; {args.pings} pings, {args.bytes / 1e6:g} MB each way\n")
    best = table(results, "vxlan dev")
    for name, r in best.items():
        print(
            f"vxlan: {name} rtt min/avg {r['rtt_min']:.3f}/{r['rtt_avg']:.3f} ms, tcp to/from "
            f"guest {r['to_guest']:.0f}/{r['from_guest']:.0f} Mbit/s"
        )
    if len(best) == 2:
        h, q = best["hv"], best["qemu"]
        print(
            f"vxlan: hv/qemu ratio rtt avg {h['rtt_avg'] / q['rtt_avg']:.2f}, tcp to guest "
            f"{h['to_guest'] / q['to_guest']:.2f}, from guest "
            f"{h['from_guest'] / q['from_guest']:.2f}"
        )


if __name__ == "__main__":
    main()
