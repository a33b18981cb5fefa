"""The guest's side of a clone (issue 21): the Linux userland's ``cloned`` applet and the ``ip``
commands it is made of (``ip link set IFACE address MAC``, ``ip addr flush dev IFACE``), run
through ``vm.exec`` in a real guest of the fast image on a lab switch with a DHCP server.

The guest here is not restored from a snapshot: it boots with its lab MAC and is then told it
was cloned, as hv tells a restored clone, and must take the new MAC, drop its old address, take
the new name and get a new address (DHCP, or a static one) that another guest can ping.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio

import hv
from hv.lab import LabRun

EXEC_TIMEOUT = 120  # one command's wall time on a loaded machine
LAB = """
[switches.lan]
subnet = "10.0.0.0/24"
dhcp = { pool = "10.0.0.100-10.0.0.150" }

[vms.web]
kernel = "linux"
nics = [{ switch = "lan", ip = "dhcp" }]

[vms.peer]
kernel = "linux"
nics = [{ switch = "lan", ip = "10.0.0.2/24" }]
"""
BOUND = re.compile(r"^dhcp: eth0 bound (\S+)/24 router 10\.0\.0\.1 lease \d+ s in \d+ ms$")
DONE = re.compile(r"^cloned: (\S+) done in \d+ ms$")


async def lab(hv_lab: Any, tmp_path: Path) -> LabRun:
    path = tmp_path / "clone.toml"
    path.write_text(LAB)
    run: LabRun = await hv_lab(path)
    return run


async def sh(vm: hv.Vm, script: str) -> str:
    r = await vm.exec("sh", "-c", script, timeout=EXEC_TIMEOUT)
    assert r.returncode == 0, (script, r)
    return r.stdout.decode()


async def eth0(vm: hv.Vm) -> tuple[str, list[str]]:
    """eth0's MAC and IPv4 addresses, as hvbox's `ip link show eth0` prints them (the one
    on PATH; `sh -c` would run busybox's: the shell prefers its own applets)."""
    r = await vm.exec("ip", "link", "show", "eth0", timeout=EXEC_TIMEOUT)
    assert r.returncode == 0, r
    text = r.stdout.decode()
    (mac,) = re.findall(r"link/ether (\S+)", text)
    return mac, re.findall(r"inet (\S+)", text)


async def pings(vm: hv.Vm, addr: str) -> bool:
    r = await vm.exec("ping", "-c", "2", "-i", "0.2", "-W", "2", addr, timeout=EXEC_TIMEOUT)
    return r.returncode == 0


def mac_text(mac: bytes) -> str:
    return mac.hex(":")


async def test_a_clone_takes_a_new_mac_name_and_dhcp_lease(hv_lab: Any, tmp_path: Path) -> None:
    run = await lab(hv_lab, tmp_path)
    web, peer = run.vms["web"], run.vms["peer"]
    old_mac = mac_text(run.spec.vms["web"].nics[0].mac)
    new_mac = "52:54:00:c1:0e:03"
    with trio.fail_after(300):
        await web.console.wait_for(b"dhcp: eth0 bound")
        mac, addrs = await eth0(web)
        old = run.services["lan"].leases()[old_mac].ip
        assert (mac, addrs) == (old_mac, [f"{old}/24"])

        # Bad input: a usage error (status 2, nothing changed), never a crash.
        for bad in ["52:54:00:zz:00:01", "52:54:00:00:01", "01:00:5e:00:00:01", "0:0:0:0:0:0"]:
            r = await web.exec("ip", "link", "set", "eth0", "address", bad)
            assert r.returncode == 2 and b"MAC" in r.stderr, (bad, r)
        for args in [[], ["web-3", "eth0=nonsense"], ["bad_name!", "dhcp"], ["web-3", "x"]]:
            r = await web.exec("cloned", *args)
            assert r.returncode == 2 and r.stderr.startswith(b"usage: cloned"), (args, r)
        # A step that fails names itself (status 1), and the steps after it are not done.
        r = await web.exec("cloned", "web-9", "eth9=52:54:00:c1:0e:09", "dhcp")
        assert r.returncode == 1, r
        assert r.stderr == b"cloned: eth9 MAC 52:54:00:c1:0e:09: No such device\n"
        assert await eth0(web) == (old_mac, [f"{old}/24"])
        assert await sh(web, "cat /proc/sys/kernel/hostname") != "web-9\n"

        r = await web.exec("cloned", "web-3", f"eth0={new_mac}", "dhcp", timeout=EXEC_TIMEOUT)
        assert r.returncode == 0, r
        lines = r.stdout.decode().splitlines()
        assert lines[:3] == [
            f"cloned: eth0 {new_mac}",
            f"cloned: eth0 dropped {old}/24",
            "cloned: hostname web-3",
        ], lines
        got = BOUND.match(lines[3])
        assert got is not None and DONE.match(lines[4]) and len(lines) == 5, lines
        new = got.group(1)

        assert await eth0(web) == (new_mac, [f"{new}/24"])
        assert await sh(web, "cat /proc/sys/kernel/hostname") == "web-3\n"
        assert "default via 10.0.0.1 dev eth0" in await sh(web, "ip route")
        # The server leased the new address to the new MAC, which gave the new name.
        leases = run.services["lan"].leases()
        assert str(leases[new_mac].ip) == new != str(old), leases
        assert leases[new_mac].hostname == "web-3"
        assert await pings(peer, new)
        assert not await pings(peer, str(old))


async def test_a_clone_with_a_static_address_and_the_images_hook(
    hv_lab: Any, tmp_path: Path
) -> None:
    run = await lab(hv_lab, tmp_path)
    web, peer = run.vms["web"], run.vms["peer"]
    new_mac = "52:54:00:c1:0e:04"
    hook = tmp_path / "cloned"
    hook.write_text(
        '#!/bin/sh\necho hook $HV_CLONE_NAME "$@" > /tmp/hook.out\n/bin/ip link show eth0\n'
    )
    hook.chmod(0o755)
    with trio.fail_after(300):
        await web.console.wait_for(b"dhcp: eth0 bound")
        _, [old] = await eth0(web)
        await sh(web, "mkdir -p /etc/hv")
        await web.copy_in(hook, "/etc/hv/cloned")
        r = await web.exec(
            "cloned", "web-4", f"eth0={new_mac}", "eth0=10.0.0.44/24,10.0.0.1",
            timeout=EXEC_TIMEOUT,
        )  # fmt: skip
        assert r.returncode == 0, r
        out = r.stdout.decode()
        lines = out.splitlines()
        assert lines[:3] == [
            f"cloned: eth0 {new_mac}",
            f"cloned: eth0 dropped {old}",
            "cloned: hostname web-4",
        ], lines
        # The hook ran after the MAC and the name, before the new address.
        assert f"link/ether {new_mac}" in out and "inet " not in out, out
        assert "cloned: /etc/hv/cloned exit 0" in lines
        assert lines[-2] == "cloned: eth0 10.0.0.44/24 via 10.0.0.1", lines
        assert DONE.match(lines[-1]), lines
        assert await sh(web, "cat /tmp/hook.out") == (
            f"hook web-4 web-4 eth0={new_mac} eth0=10.0.0.44/24,10.0.0.1\n"
        )
        assert await eth0(web) == (new_mac, ["10.0.0.44/24"])
        assert "default via 10.0.0.1 dev eth0" in await sh(web, "ip route")
        assert await pings(peer, "10.0.0.44")

        # ip addr flush on its own removes every IPv4 address, not only the primary one
        # (busybox's ip, which `sh -c` runs, adds secondary ones; ours replaces the primary).
        await sh(web, "ip addr add 10.0.0.45/24 dev eth0; ip addr add 192.168.7.1/24 dev eth0")
        before = await sh(web, "ip -4 addr show dev eth0")
        assert before.count("inet ") == 3, before
        r = await web.exec("ip", "addr", "flush", "dev", "eth0", timeout=EXEC_TIMEOUT)
        assert r.returncode == 0, r
        assert "inet " not in await sh(web, "ip -4 addr show dev eth0")
        assert await eth0(web) == (new_mac, [])
        # A failing hook stops cloned before the addresses.
        hook.write_text("#!/bin/sh\nexit 3\n")
        await web.copy_in(hook, "/etc/hv/cloned")
        r = await web.exec("cloned", "web-5", "eth0=10.0.0.45/24", timeout=EXEC_TIMEOUT)
        assert r.returncode == 1 and b"cloned: /etc/hv/cloned exit 3" in r.stderr, r
        assert await eth0(web) == (new_mac, [])
