"""The examples run as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import wait_until_sync

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_many_guests() -> None:
    p = run(str(EXAMPLES / "many_guests.py"), "2")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 5
    assert any(line.startswith("fault-2") and "exit   2" in line for line in lines), p.stdout
    assert sum("checksum: 0x" in line for line in lines) == 2, p.stdout


def test_linux_command(linux_image: object) -> None:
    p = run(str(EXAMPLES / "linux_command.py"), "echo", "example-ok")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "example-ok", p.stdout


def test_two_subnets_lab_with_the_host_on_its_tap(linux_image: object, tmp_path: Path) -> None:
    """examples/two-subnets.toml as its comment says to run it, inside a network namespace
    of the test's own (the TAP's host side there): the laptop gets a lease and reaches the
    server through the router and the impaired WAN; the host reaches the server too."""
    import secrets
    import shutil

    shutil.copytree(EXAMPLES, tmp_path / "examples")  # its capture goes next to the file
    ns = "hvex-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    in_ns = ["ip", "netns", "exec", ns]
    lab = tmp_path / "examples" / "two-subnets.toml"
    proc = subprocess.Popen(
        [*in_ns, sys.executable, "-m", "hv.cli", "up", str(lab),
         "--exit-code-from", "laptop"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:

        def tap_there() -> bool:
            assert proc.poll() is None, proc.communicate()[0]
            show = [*in_ns, "ip", "link", "show", "hvlab0"]
            return subprocess.run(show, capture_output=True, check=False).returncode == 0

        wait_until_sync(tap_there, "hv to create the TAP hvlab0", timeout=30)
        for cmd in ("ip addr add 10.0.1.2/24 dev hvlab0", "ip link set hvlab0 up",
                    "ip route add 10.0.2.0/24 via 10.0.1.254"):  # fmt: skip
            subprocess.run([*in_ns, *cmd.split()], check=True)
        ping = subprocess.run([*in_ns, "ping", "-c", "2", "-w", "30", "10.0.2.10"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert proc.returncode == 0, out[-3000:]
    assert ping.returncode == 0, ping.stdout + out[-2000:]
    assert re.search(r"laptop +\| dhcp: eth0 bound 10\.0\.1\.1\d\d/24 router 10\.0\.1\.254", out)
    m = re.search(r"sensor +\| ping: 10\.0\.2\.10: 10 sent, (\d+) received", out)
    assert m and int(m[1]) >= 4, out[-3000:]
    assert re.search(r"server +\| traffic: received from 10\.0\.1\.1\d\d: 2000000 bytes", out)
    m = re.search(r"rtt min/avg/max = ([\d.]+)/", out)
    assert m and float(m[1]) >= 40.0, out[-3000:]  # 20 ms each way on the WAN cable


def test_campus_of_23_guests_reports_rtts(linux_image: object) -> None:
    p = run(str(EXAMPLES / "campus.py"), "--pings", "8")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    rows = [line for line in p.stdout.splitlines() if "-cli" in line]
    assert len(rows) == 12 and "23 guests on 3 subnets" in p.stderr
    m = re.search(r"median avg RTT: ([\d.]+) ms across the WAN", p.stdout)
    assert m and float(m[1]) >= 20.0, p.stdout  # 10 ms each way on the WAN cable
    assert "DHCP leases {'hq': 4, 'core': 4, 'branch': 4}" in p.stdout


def test_fleet_boots_guests_on_demand() -> None:
    p = run(str(EXAMPLES / "fleet.py"), "6", "--parallel", "2")
    assert p.returncode == 0, p.stderr
    assert len(re.findall(r"^job iters=\d+ +checksum 0x[0-9a-f]{16}$", p.stdout, re.M)) == 6
    assert "6 jobs on 6 guests, at most 2 at once" in p.stdout


def test_a_capture_analysed_with_scapy_after_the_run(tmp_path: Path) -> None:
    out = tmp_path / "cap.pcapng"
    p = run(str(EXAMPLES / "analyse_capture.py"), str(out))
    assert p.returncode == 0, p.stderr
    assert "ICMP echo pairs: 10" in p.stdout, p.stdout
    assert re.search(r"10\.0\.0\.20 -> 10\.0\.0\.3:7  (1\d\d|200) datagrams", p.stdout)
    assert re.search(r"^  p0\.eth0 +\d+$", p.stdout, re.M)


def test_asyncio_fleet() -> None:
    p = run(str(EXAMPLES / "asyncio_fleet.py"), "4", "--parallel", "2")
    assert p.returncode == 0, p.stderr
    assert len(re.findall(r"^job iters=\d+ +checksum 0x[0-9a-f]{16}$", p.stdout, re.M)) == 4
    # the same answers as the trio version's
    q = run(str(EXAMPLES / "fleet.py"), "4", "--parallel", "2")
    assert [x for x in p.stdout.splitlines() if x.startswith("job")] == [
        x for x in q.stdout.splitlines() if x.startswith("job")
    ]


def test_the_pytest_example_passes_with_the_plugin() -> None:
    p = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "test_pair.py"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr
    assert "2 passed" in p.stdout
