"""The guests' DHCP clients and VLAN devices.

The DHCP clients (the firmware runtime's, hv/guests/runtime/net.c, and the Linux userland's,
hv/images/linux/userland/dhcp.c) run against a real server: qemu-system-riscv64's user-mode
network (slirp: 10.0.2.15 for the first client, router 10.0.2.2, DNS 10.0.2.3; no host network
needed). Their timeouts and the messages they send are checked under hv on a switch with no
DHCP server. VLANs: the kernel has 802.1Q, and two Linux guests under hv talk over eth0.10,
one made with `ip link add`, the other with vlan= on the command line.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
import trio

import hv
from hv.build import _image_linux as il
from netfabric.switch import Switch

OPENSBI = Path("/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_jump.bin")
QEMU_TIMEOUT = 60
# The console lines both clients print (documented in net.c's and dhcp.c's DHCP comments).
BOUND = re.compile(
    r"^dhcp: (\S+) bound (\S+)/(\d+) router (\S+) lease (\d+) s in (\d+) ms\r?$", re.MULTILINE
)
NO_LEASE = re.compile(
    r"^dhcp: (\S+) no lease after (\S+) s \((\d+) DISCOVERs, (\d+) OFFERs, (\d+) NAKs\)\r?$",
    re.MULTILINE,
)


def qemu_or_skip() -> str:
    qemu = shutil.which("qemu-system-riscv64")
    if qemu is None or not OPENSBI.is_file():
        why = "needs qemu-system-misc and opensbi (.ci/linux-deps.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs them: a skip there would hide a missing step
        pytest.skip(why)
    return qemu


def run_qemu(kernel: Path, cmdline: str, *extra: str, initrd: Path | None = None) -> str:
    """Boot under qemu virt (OpenSBI fw_jump) until the guest powers off; its console."""
    cmd = [
        qemu_or_skip(), "-M", "virt", "-m", "256M", "-nographic", "-no-reboot",
        "-bios", str(OPENSBI), "-kernel", str(kernel), "-append", cmdline,
        *(["-initrd", str(initrd)] if initrd else []), *extra,
    ]  # fmt: skip
    try:
        p = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=QEMU_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:  # subprocess.run has killed it
        partial = e.stdout if isinstance(e.stdout, bytes) else b""
        pytest.fail(f"qemu did not exit in {QEMU_TIMEOUT} s:\n{partial.decode(errors='replace')}")
    return p.stdout.decode(errors="replace").replace("\r", "")


def user_net(index: int, net: str = "10.0.2.0/24") -> list[str]:
    return [
        "-netdev",
        f"user,id=n{index},net={net}",
        "-device",
        f"virtio-net-device,netdev=n{index}",
    ]


# ---------------------------------------------------------------- Linux, against slirp


def test_linux_dhcp_against_qemu_user_net(linux_image: il.LinuxImage) -> None:
    run = "ip addr show eth0; ip route; cat /etc/resolv.conf; ping -c 2 -i 0.2 10.0.2.2; poweroff"
    out = run_qemu(
        linux_image.kernel,
        f'{linux_image.cmdline} ip=dhcp hv.run="{run}"',
        *user_net(0),
        initrd=linux_image.initrd,
    )
    bound = BOUND.findall(out)
    assert len(bound) == 1, out[-3000:]
    iface, addr, prefix, router, lease, _ = bound[0]
    assert (iface, addr, prefix, router, lease) == ("eth0", "10.0.2.15", "24", "10.0.2.2", "86400")
    # DHCP ran before hv.run: the address, the default route and resolv.conf are there
    assert out.index("dhcp: eth0 bound") < out.index("=== hvfabric guest")
    assert "    inet 10.0.2.15/24\n" in out
    assert "default via 10.0.2.2 dev eth0\n" in out
    assert "nameserver 10.0.2.3\n" in out
    assert "2 packets transmitted, 2 received, 0% packet loss" in out, out[-2000:]


def test_linux_dhcp_on_a_named_nic_and_by_hand(linux_image: il.LinuxImage) -> None:
    """ip=:::::eth1:dhcp configures eth1 only; `dhcp eth0` then leases eth0 by hand, and
    `dhcp` on a missing interface fails with status 1."""
    run = (
        "ip addr show eth0; dhcp eth0; echo dhcp=$?; dhcp -t 1 eth9; echo bad=$?; ip route; "
        "poweroff"
    )
    out = run_qemu(
        linux_image.kernel,
        f'{linux_image.cmdline} ip=:::::eth1:dhcp hv.run="{run}"',
        *user_net(0),
        *user_net(1, "10.0.3.0/24"),
        initrd=linux_image.initrd,
    )
    bound = [b[:4] for b in BOUND.findall(out)]
    assert bound == [
        ("eth1", "10.0.3.15", "24", "10.0.3.2"),
        ("eth0", "10.0.2.15", "24", "10.0.2.2"),
    ]
    first_show = out[out.index("=== hvfabric guest") : out.index("dhcp: eth0 bound")]
    assert "eth0:" in first_show and "inet " not in first_show  # eth0 untouched at boot
    assert "dhcp=0\n" in out and "bad=1\n" in out
    assert "default via 10.0.3.2 dev eth1\n" in out and "10.0.2.0/24 dev eth0\n" in out


# ---------------------------------------------------------------- firmware, against slirp


def test_firmware_dhcp_against_qemu_user_net() -> None:
    """The ping guest with ip=dhcp: bound by slirp, then it pings the router. qemu's
    virtio-mmio is legacy (version 1) unless told otherwise; the runtime drives version 2."""
    out = run_qemu(
        hv.guest_path("ping"),
        "ip=dhcp peer=10.0.2.2 count=3 interval=20",
        "-global", "virtio-mmio.force-legacy=false",
        *user_net(0),
    )  # fmt: skip
    assert "net: eth0 52:54:00:12:34:56 dhcp\n" in out, out[-2000:]
    bound = BOUND.findall(out)
    assert [b[:5] for b in bound] == [("eth0", "10.0.2.15", "24", "10.0.2.2", "86400")], out
    assert "ping: 10.0.2.2: 3 sent, 3 received" in out, out[-2000:]


# ---------------------------------------------------------------- no server: timeouts, the wire


def read_pcapng(path: Path) -> list[tuple[int, bytes]]:
    """(timestamp in the interface's units, frame) of each Enhanced Packet Block."""
    data, off, frames = path.read_bytes(), 0, []
    while off + 12 <= len(data):
        kind, length = struct.unpack_from("<II", data, off)
        if kind == 6:
            hi, lo, caplen = struct.unpack_from("<III", data, off + 12)
            frames.append((hi << 32 | lo, data[off + 28 : off + 28 + caplen]))
        off += length
    return frames


def dhcp_options(msg: bytes) -> dict[int, bytes]:
    opts, i = {}, 240
    while i < len(msg) and msg[i] != 255:
        if msg[i] == 0:
            i += 1
            continue
        opts[msg[i]] = msg[i + 2 : i + 2 + msg[i + 1]]
        i += 2 + msg[i + 1]
    return opts


def discovers(frames: list[tuple[int, bytes]], mac: bytes) -> list[tuple[int, bytes]]:
    """(timestamp, DHCP message) of the DISCOVERs from mac (checked: broadcast, 68 to 67)."""
    out = []
    for ts, f in frames:
        if f[6:12] != mac or f[12:14] != b"\x08\x00" or f[23] != 17:
            continue
        ihl = (f[14] & 15) * 4
        udp = f[14 + ihl :]
        assert f[:6] == b"\xff" * 6 and f[26:34] == bytes(4) + b"\xff" * 4
        assert struct.unpack_from("!HH", udp) == (68, 67)
        msg = udp[8:]
        if dhcp_options(msg).get(53) == b"\x01":
            out.append((ts, msg))
    return out


def check_discovers(msgs: list[bytes], mac: bytes, host: bytes | None) -> None:
    for m in msgs:
        assert m[:3] == b"\x01\x01\x06" and m[28:34] == mac and len(m) >= 300
        assert struct.unpack_from("!H", m, 10)[0] & 0x8000  # broadcast flag
        opts = dhcp_options(m)
        assert opts[61] == b"\x01" + mac and opts.get(12) == host
        assert {1, 3, 6} <= set(opts[55])  # asks for netmask, router, DNS
    assert len({m[4:8] for m in msgs}) == 1  # retransmissions keep the xid


async def test_firmware_dhcp_gives_up_with_a_message_and_a_failing_status(tmp_path: Path) -> None:
    """On a switch with no DHCP server: DISCOVERs go out at 0, ~1, ~3 s (broadcast flag, one
    xid, client id 01+MAC, host name, secs counting up), then the guest says so and exits
    failing."""
    cap = tmp_path / "lan.pcapng"
    mac = bytes.fromhex("525400aabb01")
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        lan = await nursery.start(Switch("lan", capture=cap).run)
        cfg = hv.VmConfig(
            kernel=hv.guest_path("ping"),
            name="fw",
            cmdline="dhcp.timeout=4 hostname=fw1 peer=10.0.0.2",
            nics=(hv.Nic(lan, ip="dhcp", mac=mac),),
        )
        with trio.fail_after(30):
            vm = await nursery.start(hv.run_vm, cfg)
            info = await vm.wait()
        nursery.cancel_scope.cancel()
    elapsed = time.monotonic() - t0
    out = vm.console.transcript.decode(errors="replace")
    assert NO_LEASE.findall(out) == [("eth0", "4", "3", "0", "0")], out
    assert "ping:" not in out  # net_init failed: the guest did not go on
    assert (info.kind, info.exit_code) == (hv.StopKind.FAILURE, 1), info
    assert 4 <= elapsed < 20
    sent = discovers(read_pcapng(cap), mac)
    assert len(sent) == 3
    (t1, _), (t2, _), (t3, _) = sent
    assert 1.4 < (t3 - t2) / (t2 - t1) < 2.6  # backoff: ~1 s, then ~2 s (each +-1/8)
    msgs = [m for _, m in sent]
    check_discovers(msgs, mac, b"fw1")
    secs = [struct.unpack_from("!H", m, 8)[0] for m in msgs]
    assert secs == sorted(secs) and secs[0] == 0 and secs[-1] >= 2


async def boot_linux(
    img: il.LinuxImage,
    lan: Switch,
    nursery: trio.Nursery,
    name: str,
    cmdline: str,
    mac: bytes | None = None,
) -> hv.Vm:
    cfg = hv.VmConfig(
        kernel=img.kernel,
        initrd=img.initrd,
        cmdline=f"{img.cmdline} {cmdline}",
        name=name,
        nics=(hv.Nic(lan, mac=mac),),
    )
    vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
    return vm


async def test_linux_dhcp_gives_up_and_the_boot_goes_on(
    linux_image: il.LinuxImage, tmp_path: Path
) -> None:
    """No server: init's DHCP (DISCOVERs at 0 and ~1 s) gives up after dhcp.timeout= and the
    boot goes on to hv.run, where `dhcp` by hand fails with status 1."""
    cap, mac = tmp_path / "lan.pcapng", bytes.fromhex("525400aabb02")
    async with trio.open_nursery() as nursery:
        lan = await nursery.start(Switch("lan", capture=cap).run)
        vm = await boot_linux(
            linux_image,
            lan,
            nursery,
            "lx",
            'hostname=lx1 ip=dhcp dhcp.timeout=1.5 hv.run="dhcp -t 1 eth0; echo status=$?; '
            'echo ip=9.9.9.9; poweroff"',
            mac,
        )
        with trio.fail_after(60):
            info = await vm.wait()
        nursery.cancel_scope.cancel()
    out = vm.console.transcript.decode(errors="replace").replace("\r", "")
    fails = NO_LEASE.findall(out)
    assert [f[:2] for f in fails] == [("eth0", "1.5"), ("eth0", "1")], out[-3000:]
    assert int(fails[0][2]) == 2 and fails[0][3:] == ("0", "0")  # at 0 and ~1 s
    assert "status=1\n" in out
    assert out.index("no lease after 1.5 s") < out.index("=== hvfabric guest")
    assert "init: eth0 9.9.9.9" not in out  # a word inside hv.run="..." is no ip= option
    assert info.kind == hv.StopKind.POWEROFF, info
    sent = [m for _, m in discovers(read_pcapng(cap), mac)]
    assert len(sent) == 2 + int(fails[1][2])  # init's 2, then 1 or 2 by hand (1 s +-1/8)
    check_discovers(sent[:2], mac, b"lx1")


# ---------------------------------------------------------------- VLANs


async def test_two_linux_guests_talk_over_a_vlan(
    linux_image: il.LinuxImage, tmp_path: Path
) -> None:
    """a makes eth0.10 by hand (ip link add ... type vlan id 10), b from its command line
    (vlan=eth0.10:eth0 and ip= naming eth0.10); they ping over it, tagged on the wire."""
    config = il.parse_config((linux_image.kernel.parent / "config").read_text())
    assert config.get("VLAN_8021Q") == "y"
    cap = tmp_path / "lan.pcapng"
    a_run = (
        "ip link set eth0 up && ip link add link eth0 name eth0.10 type vlan id 10 && "
        "ip link set eth0.10 up && "
        "ip addr add 10.0.10.1/24 dev eth0.10 && ip link show eth0.10; "
        "ping -c 2 -i 0.2 -W 5 10.0.10.2; ip link add link eth0 name eth0.10 type vlan id 10; "
        "echo again=$?; poweroff"
    )
    async with trio.open_nursery() as nursery:
        lan = await nursery.start(Switch("lan", capture=cap).run)
        b = await boot_linux(
            linux_image,
            lan,
            nursery,
            "b",
            "vlan=eth0.10:eth0 ip=10.0.10.2:::255.255.255.0::eth0.10:off",
        )
        with trio.fail_after(60):
            await b.console.wait_for("init: eth0.10 10.0.10.2/24")
        a = await boot_linux(linux_image, lan, nursery, "a", f'hv.run="{a_run}"')
        with trio.fail_after(60):
            info = await a.wait()
        nursery.cancel_scope.cancel()
    out = a.console.transcript.decode(errors="replace").replace("\r", "")
    assert re.search(
        r"\d+: eth0\.10@eth0: <UP,[^>]*>.*\n.*\n    vlan id 10\n    inet 10\.0\.10\.1/24", out
    ), out[-3000:]
    assert "2 packets transmitted, 2 received, 0% packet loss" in out, out[-3000:]
    assert "ip: link add eth0.10: File exists\nagain=1\n" in out
    assert info.kind == hv.StopKind.POWEROFF, info
    b_out = b.console.transcript.decode(errors="replace")
    assert "init: eth0.10 vlan 10 on eth0" in b_out
    frames = [f for _, f in read_pcapng(cap)]
    tagged = [f for f in frames if f[12:14] == b"\x81\x00"]
    icmp = [f for f in tagged if f[14:16] == b"\x00\x0a" and f[16:18] == b"\x08\x00" and f[27] == 1]
    assert len(icmp) == 4, len(tagged)  # 2 requests, 2 replies, all with VID 10
    assert not [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 1]
