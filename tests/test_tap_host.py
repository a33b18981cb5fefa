"""The host on a lab's wire through a real TAP: hv runs inside a network namespace this test
creates (so the TAP and its traffic never touch the host's own interfaces), the namespace's
side of the TAP gets an address, and the host kernel pings the guests and opens a TCP
connection to a Linux guest's echod. Also ``hv run --net tap:NAME``."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until_sync

from hv.build import _image_linux as il
from hv.build._guests import build_guest


@pytest.fixture
def netns() -> Iterator[str]:
    name = "hvtest-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_hv(ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "hv.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def host_side_up(ns: str, tap: str, addr: str, proc: subprocess.Popen[str]) -> None:
    """Wait for hv to create the TAP, then give the namespace's side an address."""

    def tap_there() -> bool:
        assert proc.poll() is None, proc.communicate()[0]
        return in_ns(ns, "ip", "link", "show", tap).returncode == 0

    wait_until_sync(tap_there, f"hv to create the TAP {tap}", timeout=30)
    for cmd in (["ip", "addr", "add", addr, "dev", tap], ["ip", "link", "set", tap, "up"]):
        r = in_ns(ns, *cmd)
        assert r.returncode == 0, r.stderr


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


TAP_LAB = """
[switches.lan]
tap = "hvtap0"

[vms.fw]
kernel = "udpecho"
nics = [{ switch = "lan", ip = "10.0.7.3/24" }]

[vms.lx]
kernel = "linux"
append = 'hv.run="echod -t 7"'
nics = [{ switch = "lan", ip = "10.0.7.2/24" }]
"""

ECHO_CLIENT = """
import socket, sys
for attempt in range(100):
    try:
        s = socket.create_connection(("10.0.7.2", 7), timeout=2)
        break
    except OSError:
        import time; time.sleep(0.1)
s.sendall(b"hello from the host" * 1000)
got = b""
while len(got) < 19000:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
print(len(got), got[:19].decode())
"""


def test_the_host_pings_guests_and_reaches_echod_through_a_tap(netns: str, tmp_path: Path) -> None:
    if il.linux_image_info() is None:
        pytest.fail("the Linux image is not built: run 'hv image build linux'")
    lab = tmp_path / "tap.toml"
    lab.write_text(TAP_LAB)
    proc = start_hv(netns, "up", str(lab))
    try:
        host_side_up(netns, "hvtap0", "10.0.7.1/24", proc)
        for guest in ("10.0.7.3", "10.0.7.2"):
            r = in_ns(netns, "ping", "-c", "3", "-i", "0.2", "-w", "30", guest)
            # -c 3 -w 30: success once 3 replies came (early ones may go before the guest is up;
            # on a loaded machine the kernel's ARP retry, a second later, may bring several)
            got = re.search(r"(\d+) received", r.stdout)
            assert r.returncode == 0 and got and int(got[1]) >= 3, r.stdout + r.stderr
        r = in_ns(netns, sys.executable, "-c", ECHO_CLIENT, timeout=60)
        assert r.stdout.split() == ["19000", "hello", "from", "the", "host"], r.stdout + r.stderr
    finally:
        out = stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]


def test_hv_run_net_puts_one_vm_on_a_tap(netns: str) -> None:
    proc = start_hv(netns, "run", "udpecho", "--mem", "16M", "--net", "tap:hvrun0,ip=10.0.8.2/24")
    try:
        host_side_up(netns, "hvrun0", "10.0.8.1/24", proc)
        r = in_ns(netns, "ping", "-c", "2", "-i", "0.2", "-w", "20", "10.0.8.2")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        out = stop(proc)
    assert "udpecho" in out


def test_a_tap_that_cannot_be_created_is_a_clear_error() -> None:
    """As a user without CAP_NET_ADMIN: exit 3, and the message says how to pre-create it."""
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        home.chmod(0o755)
        # the guest ready-built (nobody builds nothing here; the TAP is what is tested)
        shutil.copy(build_guest("udpecho"), home / "udpecho.elf")
        r = _up_as_nobody(home)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "switch lan:" in r.stderr and "ip tuntap add mode tap" in r.stderr, r.stderr


def _up_as_nobody(home: Path) -> subprocess.CompletedProcess[str]:
    lab = home / "t.toml"
    lab.write_text('[switches.lan]\ntap = "hvnope0"\n[vms.a]\nkernel = "udpecho.elf"\n')
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "hv.cli", "up", str(lab)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "HOME": str(home), "HV_ENGINE": "stock"},
    )  # fmt: skip
    return r


DNS_LAB = """
[switches.lan]
subnet = "10.0.9.0/24"
dns = true
tap = "hvdns0"

[vms.fw]
kernel = "udpecho"
nics = [{ switch = "lan", ip = "10.0.9.5/24" }]
"""

DNS_CLIENT = """
from dnslib import DNSRecord
for name in ("fw.lab", "nobody.lab"):
    reply = DNSRecord.parse(DNSRecord.question(name).send("10.0.9.1", 53, timeout=5))
    print(name, reply.header.rcode, [str(r.rdata) for r in reply.rr])
"""


def test_the_host_asks_the_switch_dns_for_a_guest(netns: str, tmp_path: Path) -> None:
    lab = tmp_path / "dns.toml"
    lab.write_text(DNS_LAB)
    proc = start_hv(netns, "up", str(lab))
    try:
        host_side_up(netns, "hvdns0", "10.0.9.254/24", proc)
        r = in_ns(netns, "ping", "-c", "1", "-w", "10", "10.0.9.1")  # the services answer
        assert r.returncode == 0, r.stdout + r.stderr
        r = in_ns(netns, sys.executable, "-c", DNS_CLIENT)
        assert r.stdout.splitlines() == ["fw.lab 0 ['10.0.9.5']", "nobody.lab 3 []"], (
            r.stdout + r.stderr
        )
    finally:
        stop(proc)
