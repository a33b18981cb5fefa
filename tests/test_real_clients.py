"""Real network software in real guests, driven through ``vm.exec`` / ``hv exec``: iperf3
across an impaired link, FRR's ospfd on a triangle that loses a link, nginx fetched by its lab
DNS name with busybox's wget, tcpdump's capture copied out with ``hv cp`` and read by tshark.

The Debian guests use the image of `hv image build debian` (built before pytest starts, as
tests/test_debian.py says); every lab runs on virtual time (the default), so what iperf3 and
ping measure is the fabric's, not the host's load.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import trio
from helpers import wait_until_sync
from test_control import Host
from test_debian import debian_image  # noqa: F401  (the fixture)

import hv
from hv.hw._clock import VIRTUAL_EPOCH

EXEC_TIMEOUT = 600  # one command's wall time on a loaded machine (iperf3: about 25 s alone)
GUEST_EPOCH = VIRTUAL_EPOCH  # 2026-01-01 00:00:00 UTC: a virtual-time guest's clock at boot
CONVERGE_TIMEOUT = 600  # wall seconds for FRR to start and converge (virtual time runs ahead)


def debian(lab: hv.Lab, name: str, *nics: dict[str, Any]) -> hv.Lab:
    return lab.vm(name, kernel="linux", image="debian", nics=list(nics))


async def sh(vm: hv.Vm, script: str, timeout: float = EXEC_TIMEOUT) -> str:
    """Run ``script`` with the guest's ``sh``; its stdout (AssertionError on a failure)."""
    r = await vm.exec("sh", "-c", script, timeout=timeout)
    assert r.returncode == 0, (vm.name, script, r)
    return r.stdout.decode()


async def clock_is_set(vm: hv.Vm) -> None:
    """A guest has no RTC; hv passes the wall clock as hv.time= and init sets it (on virtual
    time a fixed date, VIRTUAL_EPOCH). Real daemons need it: at 1970-01-01 00:00:00 nginx's
    worker and master died of SIGSEGV (a NULL load in libc) on the first request, and FRR's
    watchfrr, started in the first minute of 1970, waited 55 s and exited without starting a
    daemon."""
    now = int(await sh(vm, "date -u +%s"))
    assert GUEST_EPOCH <= now < GUEST_EPOCH + 30 * 86400, now  # (idle virtual time runs ahead)


# ---------------------------------------------------------------- iperf3


async def test_iperf3_across_a_50mbit_20ms_link_gets_most_of_the_rate(
    debian_image: Any,  # noqa: F811
) -> None:
    """50 Mbit/s and 20 ms each way (a bandwidth-delay product of 250 kB): iperf3's own
    figure for what the server received is 40-48 Mbit/s (TCP/IP/Ethernet headers take 4.4 %
    of a full frame: 47.8 Mbit/s of payload at most)."""
    lab = hv.Lab("iperf").switch("left").switch("right")
    lab.link("left", "right", impair={"delay": "20ms", "rate": "50Mbit"})
    debian(lab, "server", {"switch": "left", "ip": "10.0.0.1/24"})
    debian(lab, "client", {"switch": "right", "ip": "10.0.0.2/24"})
    async with hv.open_lab(lab) as run:
        server, client = run.vms["server"], run.vms["client"]
        await sh(server, "iperf3 -s -D")  # forks: returns at once, its output closed
        r = await client.exec("iperf3", "-c", "10.0.0.1", "-t", "5", "-J", timeout=EXEC_TIMEOUT)
        assert r.returncode == 0, r
        result = json.loads(r.stdout)
        received = result["end"]["sum_received"]["bits_per_second"]
        assert 40e6 <= received <= 48e6, result["end"]
        # it went through the impairment: every frame of the transfer delayed and paced there
        assert result["end"]["streams"][0]["sender"]["min_rtt"] >= 40_000  # us


# ---------------------------------------------------------------- FRR: OSPF on a triangle

# r1 -- s12 -- r2 -- s23 -- r3 -- s13 -- r1; router N's loopback is 10.255.0.N/32
TRIANGLE = {
    "r1": (("s12", "10.0.12.1"), ("s13", "10.0.13.1")),
    "r2": (("s12", "10.0.12.2"), ("s23", "10.0.23.2")),
    "r3": (("s23", "10.0.23.3"), ("s13", "10.0.13.3")),
}


def frr_conf(router: str) -> str:
    """Point-to-point links (no DR election, no wait timer) and 1 s hellos (a neighbour that
    is gone is dead after 4 s, not OSPF's default 40 s)."""
    n = router[1:]
    lines = ["frr defaults traditional", f"hostname {router}", "!"]
    for i in range(len(TRIANGLE[router])):
        lines += [f"interface eth{i}", " ip ospf network point-to-point",
                  " ip ospf hello-interval 1", " ip ospf dead-interval 4", "!"]  # fmt: skip
    lines += ["ip forwarding", "!", "router ospf", f" ospf router-id 10.255.0.{n}"]
    lines += [f" network {ip.rsplit('.', 1)[0]}.0/24 area 0" for _, ip in TRIANGLE[router]]
    lines += [f" network 10.255.0.{n}/32 area 0", "!", ""]
    return "\n".join(lines)


async def start_frr(vm: hv.Vm, conf: Path) -> None:
    """The router's clock (see ``clock_is_set``) and loopback, its frr.conf, ospfd on in
    /etc/frr/daemons, and Debian's own start script without systemd: it starts watchfrr,
    which starts zebra, mgmtd, ospfd and staticd and hands them the integrated frr.conf. Its
    output goes to a file: the daemons keep what they inherit open, and exec waits for EOF."""
    await clock_is_set(vm)
    await vm.copy_in(conf, "/etc/frr/frr.conf")
    n = vm.name[1:]
    await sh(vm, f"ip addr add 10.255.0.{n}/32 dev lo && "
                 "sed -i 's/^ospfd=no/ospfd=yes/' /etc/frr/daemons && "
                 "/usr/lib/frr/frrinit.sh start > /tmp/frrinit.log 2>&1 "
                 "|| { cat /tmp/frrinit.log; exit 1; }")  # fmt: skip


async def full_neighbours(vm: hv.Vm) -> list[str]:
    """The router ids of the OSPF neighbours ``vm`` is Full with."""
    r = await vm.exec("vtysh", "-c", "show ip ospf neighbor json", timeout=EXEC_TIMEOUT)
    if r.returncode != 0 or not r.stdout.strip():
        return []  # ospfd is still starting
    neighbours: dict[str, list[dict[str, Any]]] = json.loads(r.stdout).get("neighbors", {})
    return sorted(rid for rid, ns in neighbours.items()
                  if any(x["nbrState"].startswith("Full") for x in ns))  # fmt: skip


async def route_to(vm: hv.Vm, ip: str) -> str:
    """``ip route get``: the route the kernel takes to ``ip`` ("" while it has none)."""
    r = await vm.exec("ip", "route", "get", ip, timeout=EXEC_TIMEOUT)
    return r.stdout.decode() if r.returncode == 0 else ""


async def ping_ttl(vm: hv.Vm, ip: str) -> int | None:
    """The TTL of the reply to one ping, None if none came."""
    r = await vm.exec("ping", "-n", "-c", "1", "-W", "1", ip, timeout=EXEC_TIMEOUT)
    m = re.search(rb"bytes from .* ttl=(\d+)", r.stdout)
    return int(m[1]) if m else None


async def test_frr_ospf_triangle_converges_and_routes_around_a_pulled_cable(
    debian_image: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    lab = hv.Lab("ospf").switch("s12").switch("s23").switch("s13")
    for router, nics in TRIANGLE.items():
        debian(lab, router, *({"switch": s, "ip": f"{ip}/24"} for s, ip in nics))
    async with hv.open_lab(lab) as run:
        vms = run.vms
        async with trio.open_nursery() as nursery:
            for router in TRIANGLE:
                conf = tmp_path / f"{router}.conf"
                conf.write_text(frr_conf(router))
                conf.chmod(0o644)
                nursery.start_soon(start_frr, vms[router], conf)
        want = {r: sorted(f"10.255.0.{x[1:]}" for x in TRIANGLE if x != r) for r in TRIANGLE}
        got: dict[str, list[str]] = {}
        with trio.move_on_after(CONVERGE_TIMEOUT):
            while got != want:
                got = {r: await full_neighbours(vms[r]) for r in TRIANGLE}
        assert got == want, "Full with: " + repr(got)
        r1 = vms["r1"]
        # r3's loopback straight across s13: r1's next hop is r3, and the reply one hop away
        with trio.fail_after(CONVERGE_TIMEOUT):
            while "via 10.0.13.3 dev eth1" not in await route_to(r1, "10.255.0.3"):
                pass
        assert await ping_ttl(r1, "10.255.0.3") == 64
        run.set_link("r1.eth1", up=False)  # r1's cable to s13
        # around: through r2 (r1 drops its routes over eth1 at once; r3 declares r1 dead
        # after the 4 s dead interval and answers through r2 too), one hop more
        with trio.fail_after(CONVERGE_TIMEOUT):
            while "via 10.0.12.2 dev eth0" not in (route := await route_to(r1, "10.255.0.3")):
                pass
        ttl = None
        with trio.fail_after(CONVERGE_TIMEOUT):
            while ttl is None:
                ttl = await ping_ttl(r1, "10.255.0.3")
        assert ttl == 63, route
        trace = await sh(r1, "ip route show 10.255.0.3")
        assert "proto ospf" in trace and "via 10.0.12.2" in trace, trace


# ---------------------------------------------------------------- nginx, by its DNS name


async def test_busybox_wget_fetches_nginx_by_its_lab_dns_name(
    debian_image: Any,  # noqa: F811
    linux_image: Any,
) -> None:
    """Debian's nginx-light with its default site in ``web``; busybox's wget in a guest of the
    fast image asks the switch's DNS server for web.lab (init wrote it to resolv.conf)."""
    lab = hv.Lab("web").switch("lan", subnet="10.0.0.0/24", dns=True)
    debian(lab, "web", {"switch": "lan", "ip": "10.0.0.2/24"})
    lab.vm("client", kernel="linux", nics=[{"switch": "lan", "ip": "10.0.0.3/24"}])
    async with hv.open_lab(lab) as run:
        web, client = run.vms["web"], run.vms["client"]
        await clock_is_set(web)
        # the master forks once it listens; its output goes to a file (exec waits for EOF)
        await sh(web, "nginx > /tmp/nginx.log 2>&1 || { cat /tmp/nginx.log; exit 1; }")
        assert "nginx: master process" in await sh(web, "ps -eo args")
        r = await client.exec("wget", "-q", "-O", "-", "http://web.lab/", timeout=EXEC_TIMEOUT)
        assert r.returncode == 0, r
        assert b"<title>Welcome to nginx!</title>" in r.stdout, r.stdout[:500]
        r = await client.exec("nslookup", "web.lab", timeout=EXEC_TIMEOUT)
        assert re.search(rb"Address:\s*10\.0\.0\.2\b", r.stdout), r
        log = await sh(web, "cat /var/log/nginx/access.log")
        assert re.search(r'^10\.0\.0\.3 .*"GET / HTTP/1\.[01]" 200 ', log, re.M), log


# ---------------------------------------------------------------- tcpdump -w, hv cp, tshark

CAPTURE_LAB = """
[switches.lan]
subnet = "10.0.0.0/24"

[vms.cap]
kernel = "linux"
image = "debian"
nics = [{ switch = "lan", ip = "10.0.0.2/24" }]

[vms.pinger]
kernel = "linux"
nics = [{ switch = "lan", ip = "10.0.0.3/24" }]
"""
PINGS = 5


def test_tcpdump_capture_copied_out_with_hv_cp_reads_in_tshark(
    debian_image: Any,  # noqa: F811
    linux_image: Any,
) -> None:
    """``hv up -d``, then only the command line: tcpdump -w in the Debian guest (in the
    background: exec returns, tcpdump goes on), busybox's ping from the other guest, tcpdump
    ends by itself after its -c packets, ``hv cp`` brings the file out, tshark reads it."""
    tshark = shutil.which("tshark")
    assert tshark, "tshark is not installed (apt-get install tshark)"
    h = Host()
    try:
        r = h.hv("up", "-d", str(h.lab_file("rc", CAPTURE_LAB)))
        assert r.returncode == 0, r.stderr
        lab = "hv-rc"
        n = 2 * PINGS  # each echo request and its reply
        script = f"tcpdump -i eth0 -w /tmp/x.pcap -c {n} icmp > /tmp/tcpdump.log 2>&1 &"
        r = h.hv("exec", lab, "cap", "--", "sh", "-c", script, timeout=EXEC_TIMEOUT)
        assert r.returncode == 0, r.stderr

        def listening() -> bool:
            log = h.hv("exec", lab, "cap", "--", "cat", "/tmp/tcpdump.log").stdout
            return "listening on eth0" in log

        wait_until_sync(listening, "tcpdump to listen", timeout=EXEC_TIMEOUT, every=0.2)
        r = h.hv("exec", lab, "pinger", "--", "ping", "-c", str(PINGS), "10.0.0.2",
                 timeout=EXEC_TIMEOUT)  # fmt: skip
        assert r.returncode == 0 and f"{PINGS} packets transmitted, {PINGS} received" in r.stdout, r
        # tcpdump ends after its n packets (waited for in the guest, on its clock)
        done = "while pidof tcpdump > /dev/null; do sleep 0.1; done; cat /tmp/tcpdump.log"
        r = h.hv("exec", lab, "cap", "--", "sh", "-c", done, timeout=EXEC_TIMEOUT)
        assert f"{n} packets captured" in r.stdout, r
        local = h.root / "x.pcap"
        r = h.hv("cp", f"{lab}:cap:/tmp/x.pcap", str(local))
        assert r.returncode == 0, r.stderr
        fields = subprocess.run(
            [tshark, "-r", str(local), "-T", "fields", "-e", "icmp.type", "-e", "ip.src"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.split("\n")  # fmt: skip
        assert sorted(x for x in fields if x) == sorted(
            ["8\t10.0.0.3"] * PINGS + ["0\t10.0.0.2"] * PINGS
        ), fields
    finally:
        h.cleanup()


async def test_a_command_to_a_sleeping_guest_starts_after_its_peers_time(
    debian_image: Any,  # noqa: F811
) -> None:
    """Host input (an exec) to a guest asleep with a wake-up due: its peers may have run up
    to that wake-up plus the lookahead, so the input must land there, not at the time the
    guest went to sleep. Before, the pinger's ARP requests reached a peer seconds in the
    peer's past: answered late or not at all (1 of 5 pings, in 3 runs of 3)."""
    lab = hv.Lab("late")
    lab.switch("lan", subnet="10.0.0.0/24")
    debian(lab, "cap", {"switch": "lan", "ip": "10.0.0.2/24"})
    lab.vm("pinger", kernel="linux", nics=[{"switch": "lan", "ip": "10.0.0.3/24"}])
    async with hv.open_lab(lab) as run:
        cap, pinger = run.vms["cap"], run.vms["pinger"]
        with trio.fail_after(EXEC_TIMEOUT):
            await sh(cap, "tcpdump -i eth0 -w /tmp/x.pcap icmp > /tmp/t.log 2>&1 &")
            await sh(pinger, "true")
            await trio.sleep(0.5)  # host time: the idle lab runs ahead, each guest to its own
            out = await sh(pinger, "ping -c 5 10.0.0.2 | tail -n 2")
        assert re.search(r"5 packets transmitted, 5 (packets )?received", out), out
