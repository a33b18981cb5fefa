"""The host and a Linux guest through a TAP: ping RTT and TCP both ways, hv against qemu.

Everything happens inside a network namespace this script creates and deletes (so the TAP
and its traffic never touch the host's own interfaces); needs root. hv: `hv up` of a lab
whose switch has `tap = NAME`, with one Linux guest on it (10.0.7.2/24), run with
`ip netns exec`. qemu: `qemu-system-riscv64 ... -netdev tap,ifname=NAME,script=no,
downscript=no,vhost=off -device virtio-net-device`, in the same namespace, with the same
kernel, initramfs and command line. Each creates the TAP itself; the namespace's side then
gets 10.0.7.1/24. The host pings the guest (after 3 warm-up pings), then sends it BYTES over
TCP (a Python client speaking `traffic`'s protocol: connect to port 5001, write, shut down,
wait for the close; the guest's `traffic recv -t -1` reports the rate), then the guest sends
BYTES back to a Python receiver in the namespace (`traffic send -t 10.0.7.1`). While the
host sends, the VM process's CPU time (all its threads, /proc/PID/stat) is read, and how
long its threads waited for a CPU while runnable (schedstat: other processes had the
cores); hv runs the guest and the TAP in one thread. The tables
show every run; the last line takes the best of each.

    python bench/tap.py [--pings 50] [--bytes 200000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as C
from hv.build import _image_linux

TAP = "hvbtap0"
HOST, GUEST = "10.0.7.1", "10.0.7.2"
PING = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
RECV = re.compile(r"traffic: received from [\d.]+: (\d+) bytes in ([\d.]+) s = ([\d.]+) Mbit/s")
READY = "traffic: receiving on tcp port 5001"

# Runs inside the namespace: sends BYTES to the guest's `traffic recv -t` (port 5001).
SENDER = """
import socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
for _ in range(200):
    try:
        s = socket.create_connection((host, 5001), timeout=10)
        break
    except OSError:
        time.sleep(0.05)
buf = memoryview(bytes(range(256)) * 256)
t0 = time.perf_counter()
left = n
while left > 0:
    left -= s.send(buf[: min(left, len(buf))])
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
print(f"host sent {n} bytes in {time.perf_counter() - t0:.3f} s")
"""

# Runs inside the namespace: takes one `traffic send -t` connection, prints what it got.
RECEIVER = """
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5001))
srv.listen(1)
print("listening", flush=True)
c, _ = srv.accept()
t0 = time.perf_counter()
n = 0
while chunk := c.recv(1 << 20):
    n += len(chunk)
dt = time.perf_counter() - t0
c.close()
print(f"host received {n} bytes in {dt:.3f} s = {n * 8 / dt / 1e6:.2f} Mbit/s", flush=True)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def guest_run(nbytes: int) -> str:
    return f"traffic recv -t -1; sleep 1; traffic send -t {HOST} {nbytes}; poweroff"


def ns_cmd(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def in_ns(ns: str, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ns_cmd(ns, *cmd), capture_output=True, text=True, timeout=timeout, check=False
    )


class Console:
    """A child process whose output (stdout and stderr) is collected by a thread."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if self.proc.poll() is not None:
                self._thread.join(2)
                if needle in self.text:
                    return
                raise SystemExit(f"exited before {needle!r}:\n{self.text[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"no {needle!r} after {timeout} s:\n{self.text[-3000:]}")
            time.sleep(0.02)

    def finish(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(5)
        return self.text


def host_side_up(ns: str, proc: Console) -> None:
    """Wait for the TAP to exist, then give the namespace's side its address."""
    deadline = time.monotonic() + 60
    while in_ns(ns, "ip", "link", "show", TAP).returncode:
        if proc.proc.poll() is not None:
            raise SystemExit(f"exited before creating {TAP}:\n{proc.text[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{TAP} never appeared:\n{proc.text[-3000:]}")
        time.sleep(0.05)
    for cmd in (["ip", "addr", "add", f"{HOST}/24", "dev", TAP], ["ip", "link", "set", TAP, "up"]):
        r = in_ns(ns, *cmd)
        if r.returncode:
            raise SystemExit(f"{' '.join(cmd)}: {r.stderr}")


def tap_gone(ns: str) -> None:
    deadline = time.monotonic() + 20
    while in_ns(ns, "ip", "link", "show", TAP).returncode == 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{TAP} still exists in {ns} after its owner exited")
        time.sleep(0.1)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of a process (all its threads) so far, and how long its threads waited
    for a CPU while runnable (other processes had the cores)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    wait = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            wait += int((task / "schedstat").read_text().split()[1]) / 1e9
    return cpu, wait


def measure(ns: str, guest: Console, pings: int, nbytes: int) -> dict[str, float]:
    """Ping, then host -> guest, then guest -> host; the guest powers off at the end."""
    host_side_up(ns, guest)
    return measure_from(ns, guest, pings, nbytes)


def measure_from(ns: str, guest: Console, pings: int, nbytes: int) -> dict[str, float]:
    """``measure`` once the namespace ``ns`` reaches the guest at GUEST (and is HOST)."""
    guest.wait_for(READY, 120)
    warm = in_ns(ns, "ping", "-c", "3", "-i", "0.2", "-w", "30", GUEST)
    if warm.returncode:
        raise SystemExit(f"the guest does not answer pings:\n{warm.stdout}{warm.stderr}")
    r = in_ns(ns, "ping", "-q", "-c", str(pings), "-i", "0.02", "-w", "60", GUEST)
    m = PING.search(r.stdout)
    if m is None:
        raise SystemExit(f"ping: {r.stdout}{r.stderr}")
    receiver = Console(ns_cmd(ns, sys.executable, "-c", RECEIVER, HOST))
    receiver.wait_for("listening", 30)
    pid = guest.proc.pid  # `ip netns exec` execs the command: hv's or qemu's own process
    (cpu0, wait0), t0 = cpu_seconds(pid), time.perf_counter()
    s = in_ns(ns, sys.executable, "-c", SENDER, GUEST, str(nbytes))
    cpu1, wait1 = cpu_seconds(pid)
    dt = time.perf_counter() - t0
    cpu, wait = (cpu1 - cpu0) / dt, (wait1 - wait0) / dt
    if s.returncode:
        raise SystemExit(f"sender: {s.stdout}{s.stderr}")
    back = receiver.finish(120)
    out = guest.finish(120)
    down, up = RECV.search(out), re.search(r"host received (\d+) bytes in ([\d.]+) s", back)
    if down is None or up is None or int(up[1]) != nbytes:
        raise SystemExit(f"no TCP figures:\n{out[-3000:]}\n{back}")
    return {
        "rtt_min": float(m[1]),
        "rtt_avg": float(m[2]),
        "to_guest": float(down[3]),
        "from_guest": nbytes * 8 / float(up[2]) / 1e6,
        "cpu": cpu,
        "wait": wait,
    }


def run_hv(ns: str, pings: int, nbytes: int) -> dict[str, float]:
    lab = (
        f'[switches.lan]\ntap = "{TAP}"\n'
        f'[vms.lx]\nkernel = "linux"\nappend = \'hv.run="{guest_run(nbytes)}"\'\n'
        f'nics = [{{ switch = "lan", ip = "{GUEST}/24" }}]\n'
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tap.toml"
        path.write_text(lab)
        guest = Console(ns_cmd(ns, *C.hv_command(), "up", str(path)), env=C.python_env())
        try:
            return measure(ns, guest, pings, nbytes)
        finally:
            guest.finish(1)


def run_qemu(ns: str, img: _image_linux.LinuxImage, pings: int, nbytes: int) -> dict[str, float]:
    cmdline = f'{img.cmdline} hv.run="{guest_run(nbytes)}" ip={GUEST}/24'
    cmd = [
        *C.qemu_command(), "-kernel", str(img.kernel), "-initrd", str(img.initrd),
        "-append", cmdline,
        "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
        "-device", "virtio-net-device,netdev=n0,mac=52:54:00:07:00:02",
    ]  # fmt: skip
    guest = Console(ns_cmd(ns, *cmd))
    try:
        return measure(ns, guest, pings, nbytes)
    finally:
        guest.finish(1)


def table(results: dict[str, list[dict[str, float]]], peer: str) -> dict[str, dict[str, float]]:
    """Print every run's figures as a Markdown table (``peer``: who talks to the guest);
    the best of each (least RTT, most Mbit/s)."""
    print(
        f"| | RTT min ms | RTT avg ms | TCP {peer} → guest Mbit/s | TCP guest → {peer} Mbit/s "
        "| VM process CPU / waiting, to guest |"
    )
    print("|---|---|---|---|---|---|")
    best: dict[str, dict[str, float]] = {}
    for name, rs in results.items():
        for i, r in enumerate(rs):
            label = name if len(rs) == 1 else f"{name}, run {i + 1}"
            print(
                f"| {label} | {r['rtt_min']:.3f} | {r['rtt_avg']:.3f} | {r['to_guest']:.1f} | "
                f"{r['from_guest']:.1f} | {100 * r['cpu']:.0f} % / {100 * r['wait']:.0f} % |"
            )
        best[name] = {
            k: (min if k.startswith("rtt") else max)(r[k] for r in rs)
            for k in rs[0]
            if k not in ("cpu", "wait")
        }
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pings", type=int, default=50, help="pings, 20 ms apart (default 50)")
    ap.add_argument("--bytes", type=int, default=200_000_000, help="TCP bytes each way (200 MB)")
    ap.add_argument("--runs", type=int, default=3, help="rounds of hv then qemu (default 3)")
    ap.add_argument("--bytecode", choices=C.BYTECODE_MODES, default="cached", help=C.BYTECODE_HELP)
    args = ap.parse_args()
    C.set_bytecode(args.bytecode)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise SystemExit("needs root and iproute2 (it creates a network namespace)")
    img = _image_linux.linux_image_info()
    if img is None:
        raise SystemExit("build the Linux image first: hv image build linux")
    log(C.qemu_version())
    ns = "hvbench-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    results: dict[str, list[dict[str, float]]] = {"hv": [], "qemu": []}
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for i in range(args.runs):
            for name in ("hv", "qemu"):
                log(f"run {i + 1}: {name}")
                if name == "hv":
                    r = run_hv(ns, args.pings, args.bytes)
                else:
                    r = run_qemu(ns, img, args.pings, args.bytes)
                tap_gone(ns)
                log(f"  {r}")
                results[name].append(r)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"\nnamespace {ns}, TAP {TAP}; {args.pings} pings, {args.bytes / 1e6:g} MB each way\n")
    best = table(results, "host")
    h, q = best["hv"], best["qemu"]
    print(
        f"tap: hv rtt min/avg {h['rtt_min']:.3f}/{h['rtt_avg']:.3f} ms, tcp to/from guest "
        f"{h['to_guest']:.0f}/{h['from_guest']:.0f} Mbit/s; qemu {q['rtt_min']:.3f}/"
        f"{q['rtt_avg']:.3f} ms, {q['to_guest']:.0f}/{q['from_guest']:.0f} Mbit/s; ratio rtt avg "
        f"{h['rtt_avg'] / q['rtt_avg']:.2f}, tcp to guest {h['to_guest'] / q['to_guest']:.2f}"
    )


if __name__ == "__main__":
    main()
