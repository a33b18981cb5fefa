"""The fabric's world with real clients in labs: guests that get their addresses from the
switch's DHCP server (firmware and Linux), names from its DNS server (asked by the host
through a real TAP), a Linux VLAN subinterface across a trunk, and TCP across two switches
joined by an impaired link."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

from hv.lab import parse_lab
from hv.lab._runner import run_lab


async def run(text: str, tmp_path: Path, until: set[str], timeout: float = 90) -> tuple[str, Any]:
    spec = parse_lab(text, tmp_path)
    out: list[bytes] = []
    got: list[Any] = []
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:

            async def lab(task_status: trio.TaskStatus[Any]) -> None:
                got.append(await run_lab(spec, out.append, until=frozenset(until),
                                         task_status=task_status))  # fmt: skip

            lab_run = await nursery.start(lab)
    return b"".join(out).decode(errors="replace"), (got[0], lab_run)


DHCP_LAB = """
[switches.lan]
subnet = "10.0.0.0/24"
dhcp = { pool = "10.0.0.100-10.0.0.150", lease = "10m" }
dns = true

[vms.srv]
kernel = "udpecho"
nics = [{ switch = "lan", ip = "10.0.0.2/24" }]

[vms.fw]
kernel = "ping"
append = "peer=10.0.0.2 count=3 interval=20"
nics = [{ switch = "lan", ip = "dhcp" }]

[vms.lx]
kernel = "linux"
append = 'hv.run="ping -c 2 -i 0.1 10.0.0.1; ping -c 2 -i 0.1 10.0.0.2; ip route; poweroff"'
nics = [{ switch = "lan", ip = "dhcp" }]
"""


async def test_firmware_and_linux_guests_get_leases_from_the_switch(
    tmp_path: Path, linux_image: Any
) -> None:
    text, (status, lab) = await run(DHCP_LAB, tmp_path, {"fw", "lx"})
    assert status == 0, text[-3000:]
    leased = dict(
        re.findall(r"(\w+) +\| dhcp: eth0 bound (10\.0\.0\.\d+)/24 router 10\.0\.0\.1", text)
    )
    assert set(leased) == {"fw", "lx"}, text[-3000:]
    assert all(100 <= int(ip.rsplit(".", 1)[1]) <= 150 for ip in leased.values())
    assert re.search(r"fw +\| ping: 10\.0\.0\.2: 3 sent, 3 received", text), text[-3000:]
    assert re.search(r"lx +\| .*default via 10\.0\.0\.1", text), text[-2000:]
    leases = lab.services["lan"].leases()
    assert sorted(lease.ip.exploded for lease in leases.values()) == sorted(leased.values())


TRUNK_APPEND = (
    "vlan=eth0.10:eth0 ip=10.0.10.2:::255.255.255.0::eth0.10:off "
    'hv.run="ping -c 2 -i 0.1 10.0.10.3; ping -c 2 -W 1 10.0.10.4; poweroff"'
)
TRUNK_LAB = f"""
[switches.lan]

[vms.t]
kernel = "linux"
append = '{TRUNK_APPEND}'
nics = [{{ switch = "lan", trunk = [10, 20] }}]

[vms.v10]
kernel = "udpecho"
nics = [{{ switch = "lan", ip = "10.0.10.3/24", vlan = 10 }}]

[vms.v20]
kernel = "udpecho"
nics = [{{ switch = "lan", ip = "10.0.10.4/24", vlan = 20 }}]
"""


async def test_a_linux_vlan_subinterface_across_a_trunk(tmp_path: Path, linux_image: Any) -> None:
    text, (_, lab) = await run(TRUNK_LAB, tmp_path, {"t"})
    assert "2 packets transmitted, 2 received" in text, text[-3000:]  # VLAN 10 answers
    assert "2 packets transmitted, 0 received" in text, text[-3000:]  # VLAN 20 never sees it
    ports = {p.name: p for p in lab.switches["lan"].ports.values()}
    assert ports["v20.eth0"].counters.tx_frames == 0  # nothing of VLAN 10 leaked to it


LINKED_LAB = """
[switches.lan]
[switches.wan]
[[links]]
a = "lan"
b = "wan"
impair = { delay = "2ms", loss = 0.005, seed = 11 }

[vms.a]
kernel = "linux"
append = 'hv.run="sleep 0.5; traffic send -t 10.0.0.2 3000000; poweroff"'
nics = [{ switch = "lan", ip = "10.0.0.1/24" }]

[vms.b]
kernel = "linux"
append = 'hv.run="traffic recv -t -1; poweroff"'
nics = [{ switch = "wan", ip = "10.0.0.2/24" }]
"""


async def test_tcp_across_two_switches_joined_by_an_impaired_link(
    tmp_path: Path, linux_image: Any
) -> None:
    text, (status, lab) = await run(LINKED_LAB, tmp_path, {"a", "b"})
    assert re.search(r"traffic: received from [\d.]+: 3000000 bytes", text), text[-3000:]
    link = lab.impairments["links[0]"]
    assert link.egress.counters["dropped_loss"] > 0  # frames were really lost, and TCP coped
    assert status == 0


DHCP_OVER_LINK = """
[switches.lan]
subnet = "10.0.0.0/24"
dhcp = { pool = "10.0.0.100-10.0.0.150", lease = "10m" }

[switches.wan]

[[links]]
a = "wan"
b = "lan"

[vms.srv]
kernel = "udpecho"
nics = [{ switch = "lan", ip = "10.0.0.2/24" }]

[vms.fw]
kernel = "ping"
append = "peer=10.0.0.2 count=2 interval=20"
nics = [{ switch = "wan", ip = "dhcp" }]
"""


async def test_a_guest_gets_a_lease_from_a_dhcp_server_across_a_link(tmp_path: Path) -> None:
    """fw is on wan, the DHCP server on lan, a cable between them: the lab is accepted and
    fw's lease comes over the link (its host name known to the server as on lan)."""
    text, (status, lab) = await run(DHCP_OVER_LINK, tmp_path, {"fw"})
    assert status == 0, text[-3000:]
    bound = re.search(r"fw +\| dhcp: eth0 bound (10\.0\.0\.\d+)/24", text)
    assert bound is not None, text[-3000:]
    assert re.search(r"fw +\| ping: 10\.0\.0\.2: 2 sent, 2 received", text), text[-3000:]
    leases = lab.services["lan"].leases()
    assert [lease.ip.exploded for lease in leases.values()] == [bound[1]]


DNS_LAB = """
[switches.lan]
subnet = "10.0.0.0/24"
dns = true

[vms.web]
kernel = "linux"
append = 'hv.run="echo hello-from-web > /var/www/index.html; httpd -f -p 80 -h /var/www"'
nics = [{ switch = "lan", ip = "10.0.0.2/24" }]

[vms.client]
kernel = "linux"
append = '''hv.run="nslookup web.lab; until wget -q -O - http://web.lab/; do sleep 0.1; done; \
cat /etc/resolv.conf /etc/hosts; poweroff"'''
nics = [{ switch = "lan", ip = "10.0.0.3/24" }]
"""


async def test_linux_guests_find_each_other_through_the_lab_dns(
    tmp_path: Path, linux_image: Any
) -> None:
    """busybox's nslookup and wget in one guest, busybox's httpd in another named web: the
    name web.lab through the switch's DNS server, which init put in /etc/resolv.conf."""
    text, (status, _lab) = await run(DNS_LAB, tmp_path, {"client"})
    assert status == 0, text[-3000:]
    assert re.search(r"client +\| Address: 10\.0\.0\.2", text), text[-3000:]
    assert re.search(r"client +\| hello-from-web", text), text[-3000:]
    assert re.search(r"client +\| search lab\s+client +\| nameserver 10\.0\.0\.1", text)
    assert re.search(r"client +\| 127\.0\.1\.1\s+client\.lab client", text), text[-2000:]
