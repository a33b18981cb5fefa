"""Lab files and ``hv up``: validation errors that name the key, the stable default MAC, the
ip= the NICs give their guests, prefixed console output, and a real two-VM Linux lab."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from helpers import wait_until, wait_until_sync

from hv import ConfigError
from hv.build import _image_linux as il
from hv.lab import parse_lab
from hv.lab._runner import PrefixedOutput, run_lab
from hv.lab._spec import default_mac, nic_cmdline


def hv_up(lab: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``hv up LAB ARGS...`` as a user runs it; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "hv.cli", "up", str(lab), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


GOOD = """
[switches.lan]
capture = "lan.pcapng"

[vms.a]
kernel = "linux"
append = 'hv.run="ping -c 5 10.0.0.2"'
mem = "256M"
nics = [{ switch = "lan", ip = "10.0.0.1/24" }]

[vms.b]
kernel = "linux"
nics = [{ switch = "lan", ip = "10.0.0.2/24", mac = "52:54:00:12:34:56" }]
"""


def test_a_good_lab_file(tmp_path: Path) -> None:
    lab = parse_lab(GOOD, tmp_path, "demo")
    assert lab.name == "demo" and list(lab.vms) == ["a", "b"]
    assert lab.switches["lan"].capture == tmp_path / "lan.pcapng"
    a, b = lab.vms["a"], lab.vms["b"]
    assert a.mem == 256 << 20 and a.nics[0].mac == default_mac("a", 0)
    assert b.nics[0].mac == bytes.fromhex("525400123456")
    assert default_mac("a", 0) == default_mac("a", 0) != default_mac("a", 1)
    assert nic_cmdline(a.nics) == "ip=10.0.0.1/24"


def test_a_second_nic_is_named_on_the_command_line(tmp_path: Path) -> None:
    lab = parse_lab(
        '[switches.x]\n[switches.y]\n[vms.r]\nkernel = "linux"\n'
        'nics = [{switch = "x", ip = "10.0.0.1/24"}, {switch = "y", ip = "10.0.1.1/24"}]\n',
        tmp_path,
    )
    assert nic_cmdline(lab.vms["r"].nics) == "ip=10.0.0.1/24 ip=10.0.1.1:::255.255.255.0::eth1:off"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('switch = "lan", ip = "10.0.0.2/24"', 'switch = "lna", ip = "10.0.0.2/24"'),
         'vms.b.nics[0].switch: no switch named "lna" (switches: lan)'),
        (GOOD.replace('mem = "256M"', 'mem = "lots"'), 'vms.a.mem: "lots" is not a size'),
        (GOOD.replace('mem = "256M"', 'mem = "64G"'), 'vms.a.mem: "64G" is out of range 16M..16G'),
        (GOOD.replace('ip = "10.0.0.1/24"', 'ip = "10.0.0.300"'), "vms.a.nics[0].ip"),
        (GOOD.replace('mac = "52:54:00:12:34:56"', 'mac = "01:00:00:00:00:01"'), "multicast"),
        (GOOD.replace('mac = "52:54:00:12:34:56"', 'mac = "52:54:00"'), "vms.b.nics[0].mac"),
        (GOOD.replace('kernel = "linux"\nnics', 'kernal = "linux"\nnics'), "vms.b.kernal: unknown key"),  # noqa: E501
        (GOOD.replace('[vms.b]\nkernel = "linux"', '[vms.B]\nkernel = "linux"'), "vms.B: VM names"),
        ("[switches.lan]\n", "vms: a lab needs at least one VM"),
        ("[vms.a\n", "not a valid TOML file"),
        (GOOD + '\n[vms.c]\nkernel = "linux"\nnics = [{switch = "lan", mac = "52:54:00:12:34:56"}]\n',  # noqa: E501
         "vms.c.nics[0].mac: 52:54:00:12:34:56 is also vms.b.nics[0]'s"),
    ],
)  # fmt: skip
def test_bad_lab_files_name_the_key(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_lab(text, tmp_path)
    assert message in str(e.value)


def test_prefixed_output_keeps_partial_lines_and_switches_cleanly() -> None:
    out: list[bytes] = []
    p = PrefixedOutput(out.append, ["a", "bb"])
    p.feed("a", b"one\ntw")
    p.feed("a", b"o\n=> ")
    p.feed("bb", b"hello\n")
    assert b"".join(out) == b"a  | one\na  | two\na  | => \nbb | hello\n"


def test_hv_up_runs_a_two_vm_linux_lab(linux_image: il.LinuxImage, tmp_path: Path) -> None:
    lab = tmp_path / "ping.toml"
    lab.write_text(
        GOOD.replace('hv.run="ping -c 5 10.0.0.2"', 'hv.run="ping -c 2 -i 0.2 10.0.0.2; poweroff"')
    )
    r = hv_up(lab, "--exit-code-from", "a")
    assert r.returncode == 0, r.stderr
    assert "a | 2 packets transmitted, 2 received, 0% packet loss" in r.stdout, r.stdout[-1500:]
    assert any(line.startswith("b | ") for line in r.stdout.splitlines())
    assert (tmp_path / "lan.pcapng").stat().st_size > 0  # relative to the lab file, flushed


def test_hv_up_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    lab = tmp_path / "bad.toml"
    lab.write_text(
        GOOD.replace('switch = "lan", ip = "10.0.0.2/24"', 'switch = "lna", ip = "10.0.0.2/24"')
    )
    r = subprocess.run(
        [sys.executable, "-m", "hv.cli", "up", str(lab)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 4
    assert r.stderr.strip() == 'hv: vms.b.nics[0].switch: no switch named "lna" (switches: lan)'


def test_hv_demo_runs_firmware_guests_on_a_network(tmp_path: Path) -> None:
    """The README's main job: five firmware guests find each other by ARP, ping and exchange
    UDP over virtio-net; the capture is read back by tshark."""
    import shutil

    r = subprocess.run(
        [sys.executable, "-m", "hv.cli", "demo", "--pings", "4", "--datagrams", "500"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    out = r.stdout
    assert "ping 10.0.0.2: 4 sent, 4 received" in out and "ping 10.0.0.4: 4 sent, 4 received" in out
    assert "udp to 10.0.0.4:7: 500 sent, 500 echoed, 0 lost" in out
    assert "b.eth0" in out and "capture: demo.pcapng" in out
    tshark = shutil.which("tshark")
    assert tshark
    t = subprocess.run(
        [tshark, "-r", str(tmp_path / "demo.pcapng"), "-Y", "icmp.type == 0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(t.stdout.splitlines()) == 8  # 2 clients x 4 echo replies
    # the frame count it prints is the file's
    printed = re.search(r"capture: demo.pcapng \((\d+) frames\)", out)
    assert printed is not None, out[-500:]
    t = subprocess.run(
        [tshark, "-r", str(tmp_path / "demo.pcapng"), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    in_file = len(t.stdout.splitlines())
    assert in_file > 1000 and int(printed[1]) == in_file


def test_firmware_guests_in_a_lab_file(tmp_path: Path) -> None:
    lab = tmp_path / "fw.toml"
    lab.write_text(
        "[switches.lan]\n"
        '[vms.s]\nkernel = "udpecho"\nappend = "ip=10.0.0.2/24"\nnics = [{switch = "lan"}]\n'
        '[vms.g]\nkernel = "udpgen"\nappend = "ip=10.0.0.3/24 peer=10.0.0.2 count=300 size=1000"\n'
        'nics = [{switch = "lan"}]\n'
    )
    r = hv_up(lab, "--exit-code-from", "g")
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr
    assert "g | udpgen: 10.0.0.2:7: 300 sent, 300 echoed, 0 lost" in r.stdout


async def test_a_flooding_guest_costs_bounded_memory_and_the_others_keep_working() -> None:
    """f floods echo server s2 with datagrams as fast as it can (a window far beyond what s2
    can take): s2's NIC drops and counts the excess, its backlog stays bounded, and the ping
    pair c -> s on the same switch still gets every reply."""
    import trio

    from hv.lab import run_lab
    from hv.virtio._net import RX_BACKLOG

    text = (
        "[switches.lan]\n"
        '[vms.s]\nkernel = "udpecho"\nappend = "ip=10.0.0.2/24"\nnics = [{switch = "lan"}]\n'
        '[vms.s2]\nkernel = "udpecho"\nappend = "ip=10.0.0.4/24"\nnics = [{switch = "lan"}]\n'
        '[vms.f]\nkernel = "udpgen"\nnics = [{switch = "lan"}]\n'
        'append = "ip=10.0.0.5/24 peer=10.0.0.4 count=5000 window=5000 size=1400"\n'
        '[vms.c]\nkernel = "ping"\nnics = [{switch = "lan"}]\n'
        'append = "ip=10.0.0.3/24 peer=10.0.0.2 count=10 interval=20"\n'
    )
    spec = parse_lab(text, Path.cwd())
    async with trio.open_nursery() as nursery:

        async def lab(task_status: trio.TaskStatus[object]) -> None:
            await run_lab(spec, None, until=frozenset({"c", "f"}), task_status=task_status)

        run = await nursery.start(lab)

        def c_and_f_done() -> bool:
            nic = run.vms["s2"].machine.slots[0].backend  # type: ignore[attr-defined]
            assert len(nic.backlog) <= RX_BACKLOG  # at every look, not only at the end
            return {"c", "f"} <= run.exits.keys()  # type: ignore[attr-defined,no-any-return]

        await wait_until(c_and_f_done, "c and f to end", timeout=60)
    c, s2 = run.vms["c"], run.vms["s2"]  # type: ignore[attr-defined]
    assert b"10 sent, 10 received" in c.console.transcript
    # Nothing vanished: every frame the switch gave s2's NIC went into the guest's buffers,
    # waits in the bounded backlog, or was dropped and counted.
    port = next(p for p in run.switches["lan"].ports.values() if p.name == "s2.eth0")  # type: ignore[attr-defined]
    nic = s2.machine.slots[0].backend
    st = s2.stats
    accounted = st.get("s2.eth0.rx_frames", 0) + st.get("s2.eth0.rx_dropped", 0)
    assert port.counters.tx_frames == accounted + len(nic.backlog)
    assert port.counters.tx_frames >= 5000


ROUTER = """
[switches.left]
[switches.right]

[vms.r]
kernel = "linux"
append = 'hv.run="echo 1 > /proc/sys/net/ipv4/ip_forward"'
nics = [{ switch = "left", ip = "10.0.1.1/24" }, { switch = "right", ip = "10.0.2.1/24" }]

[vms.h1]
kernel = "linux"
append = 'hv.run="sleep 1; ping -c 3 -i 0.2 10.0.2.2; poweroff"'
nics = [{ switch = "left", ip = "10.0.1.2/24", gateway = "10.0.1.1" }]

[vms.h2]
kernel = "linux"
nics = [{ switch = "right", ip = "10.0.2.2/24", gateway = "10.0.2.1" }]
"""


def test_a_linux_guest_with_two_nics_routes_between_two_switches(
    linux_image: il.LinuxImage, tmp_path: Path
) -> None:
    lab = tmp_path / "router.toml"
    lab.write_text(ROUTER)
    r = hv_up(lab, "--exit-code-from", "h1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "h1 | 3 packets transmitted, 3 received, 0% packet loss" in r.stdout, r.stdout[-2000:]
    assert "ttl=63" in r.stdout  # one hop: the router forwarded it


def test_gateways_reach_the_command_line_and_must_be_in_the_subnet(tmp_path: Path) -> None:
    lab = parse_lab(ROUTER, tmp_path)
    assert nic_cmdline(lab.vms["h1"].nics) == "ip=10.0.1.2::10.0.1.1:255.255.255.0::eth0:off"
    with pytest.raises(ConfigError, match=r"vms.h1.nics\[0\].gateway: 10.9.9.9 is not in"):
        parse_lab(ROUTER.replace('gateway = "10.0.1.1"', 'gateway = "10.9.9.9"'), tmp_path)


def test_two_linux_guests_move_tcp_and_udp(linux_image: il.LinuxImage, tmp_path: Path) -> None:
    lab = tmp_path / "traffic.toml"
    lab.write_text(
        "[switches.lan]\n"
        '[vms.a]\nkernel = "linux"\nnics = [{ switch = "lan", ip = "10.0.0.1/24" }]\n'
        "append = 'hv.run=\"sleep 1; traffic send -t 10.0.0.2 4000000; "
        "traffic send -u -b 20 10.0.0.2 500000; poweroff\"'\n"
        '[vms.b]\nkernel = "linux"\nnics = [{ switch = "lan", ip = "10.0.0.2/24" }]\n'
        "append = 'hv.run=\"traffic recv -t -1; traffic recv -u -1\"'\n"
    )
    r = hv_up(lab, "--exit-code-from", "a")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "b | traffic: received from 10.0.0.1: 4000000 bytes" in r.stdout, r.stdout[-2000:]
    assert "b | traffic: received 500000 bytes" in r.stdout


def test_hv_demo_with_linux_guests(linux_image: il.LinuxImage, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hv.cli", "demo", "--linux", "--pings", "2", "--datagrams", "400"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert r.stdout.count("ping: 2 sent, 2 received") == 2, r.stdout[-2000:]
    assert "tcp: 2000000 bytes in" in r.stdout
    assert (tmp_path / "demo.pcapng").stat().st_size > 2_000_000


def test_ctrl_c_stops_hv_up_cleanly_with_its_capture_flushed(tmp_path: Path) -> None:
    import signal
    import time

    lab = tmp_path / "long.toml"
    lab.write_text(
        '[switches.lan]\ncapture = "long.pcapng"\n'
        '[vms.a]\nkernel = "ping"\n'
        'append = "ip=10.0.0.1/24 peer=10.0.0.2 count=100000 interval=5"\n'
        'nics = [{ switch = "lan" }]\n'
        '[vms.b]\nkernel = "udpecho"\nappend = "ip=10.0.0.2/24"\nnics = [{ switch = "lan" }]\n'
    )
    with subprocess.Popen(
        [sys.executable, "-m", "hv.cli", "up", str(lab)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as p:
        assert p.stdout is not None
        seen = b""
        deadline = time.monotonic() + 30
        while b"seq=5 " not in seen and time.monotonic() < deadline:
            seen += p.stdout.read1(4096)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert b"stopped by SIGINT" in err and b"Traceback" not in err
    import shutil

    tshark = shutil.which("tshark")
    assert tshark
    t = subprocess.run(
        [tshark, "-r", str(tmp_path / "long.pcapng"), "-Y", "icmp.type == 0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert len(t.stdout.splitlines()) >= 5


def sigterm_caught(pid: int) -> bool:
    """Has process ``pid`` a handler for SIGTERM yet (SigCgt in /proc/PID/status)?"""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def test_sigterm_stops_hv_run() -> None:

    with subprocess.Popen(
        [sys.executable, "-m", "hv.cli", "run", "cpu", "--append", "iters=100000000"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as p:
        wait_until_sync(lambda: sigterm_caught(p.pid), "hv to handle SIGTERM")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert b"Traceback" not in err


def test_a_nic_can_have_a_capture_of_its_own(tmp_path: Path) -> None:
    import shutil

    lab = tmp_path / "cap.toml"
    lab.write_text(
        '[switches.lan]\ncapture = "lan.pcapng"\n'
        '[vms.s]\nkernel = "udpecho"\nappend = "ip=10.0.0.2/24"\nnics = [{switch = "lan"}]\n'
        '[vms.a]\nkernel = "ping"\nappend = "ip=10.0.0.1/24 peer=10.0.0.2 count=3"\n'
        'nics = [{switch = "lan", capture = "a.pcapng"}]\n'
        '[vms.g]\nkernel = "udpgen"\nappend = "ip=10.0.0.3/24 peer=10.0.0.2 count=50"\n'
        'nics = [{switch = "lan"}]\n'
    )
    r = hv_up(lab, "--exit-code-from", "g")
    assert r.returncode == 0, r.stdout[-1500:] + r.stderr
    tshark = shutil.which("tshark")
    assert tshark

    def rows(name: str) -> list[str]:
        return subprocess.run(
            [tshark, "-r", str(tmp_path / name), "-T", "fields", "-e", "frame.interface_name",
             "-e", "ip.src", "-e", "ip.dst", "-Y", "ip"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.splitlines()  # fmt: skip

    mine = rows("a.pcapng")
    assert mine and all(row.startswith("a.eth0\t") for row in mine)
    assert all("10.0.0.1" in row for row in mine)  # only a's traffic, both ways
    assert any(row.endswith("10.0.0.2\t10.0.0.1") for row in mine)  # the replies a was given
    assert len(rows("lan.pcapng")) > len(mine) + 90  # the switch saw g's 100 datagrams too


VLANS = """
[switches.lan]
[switches.wan]
[[links]]
a = "lan"
b = "wan"

[vms.b]
kernel = "udpecho"
nics = [{ switch = "wan", ip = "10.0.0.2/24", vlan = 10 }]
[vms.c]
kernel = "udpecho"
nics = [{ switch = "wan", ip = "10.0.0.3/24", vlan = 20 }]
[vms.a]
kernel = "ping"
append = "peer=10.0.0.2 count=3 interval=20"
nics = [{ switch = "lan", ip = "10.0.0.1/24", vlan = 10 }]
[vms.x]
kernel = "ping"
append = "peer=10.0.0.3 count=2 interval=20"
nics = [{ switch = "lan", ip = "10.0.0.4/24", vlan = 10 }]
"""


async def test_vlans_across_linked_switches_in_a_lab(tmp_path: Path) -> None:
    """a (VLAN 10 on lan) reaches b (VLAN 10 on wan) across the link; x (VLAN 10) never
    reaches c, which is in VLAN 20."""
    spec = parse_lab(VLANS, tmp_path)
    out: list[bytes] = []
    with trio.fail_after(60):
        status = await run_lab(spec, out.append, until=frozenset({"a", "x"}))
    text = b"".join(out).decode()
    assert "ping: 10.0.0.2: 3 sent, 3 received" in text, text[-2000:]
    assert "ping: 10.0.0.3: 2 sent, 0 received" in text, text[-2000:]
    assert status != 0  # x's pings were not answered


def test_lab_network_errors_name_the_key(tmp_path: Path) -> None:
    def err(text: str) -> str:
        with pytest.raises(ConfigError) as e:
            parse_lab(text, tmp_path)
        return str(e.value)

    vm = '[vms.a]\nkernel = "ping"\n'
    loop = "[switches.a]\n[switches.b]\n[switches.c]\n" + "".join(
        f'[[links]]\na = "{x}"\nb = "{y}"\n' for x, y in (("a", "b"), ("b", "c"), ("c", "a"))
    )
    assert err(loop + vm).startswith("links[2]: this link closes a loop (c - b - a - c)")
    assert "no switch named" in err('[switches.a]\n[[links]]\na = "a"\nb = "z"\n' + vm)
    sub = '[switches.lan]\nsubnet = "10.0.0.0/24"\ndhcp = { pool = "10.0.0.100-10.0.0.110" }\n'
    assert err(sub + vm + 'nics = [{ switch = "lan", ip = "10.0.1.5" }]\n') == (
        "vms.a.nics[0].ip: 10.0.1.5 is outside switch lan's subnet 10.0.0.0/24"
    )
    assert "inside switch lan's DHCP pool" in err(
        sub + vm + 'nics = [{ switch = "lan", ip = "10.0.0.105" }]\n'
    )
    assert "services' address" in err(sub + vm + 'nics = [{ switch = "lan", ip = "10.0.0.1" }]\n')
    assert "dhcp needs a DHCP server" in err(
        "[switches.lan]\n" + vm + 'nics = [{ switch = "lan", ip = "dhcp" }]\n'
    )
    assert "need switches.lan.subnet" in err("[switches.lan]\ndns = true\n" + vm)
    assert "not a host of" in err(
        '[switches.lan]\nsubnet = "10.0.0.0/24"\ndhcp = { pool = "10.0.0.100-10.0.1.2" }\n' + vm
    )
    assert "VLAN id" in err("[switches.lan]\n" + vm + 'nics = [{ switch = "lan", vlan = 5000 }]\n')
    assert "interface name" in err('[switches.lan]\ntap = "a-very-long-tap-name"\n' + vm)


IMPAIRED = """
[switches.lan]
[switches.wan]
[[links]]
a = "lan"
b = "wan"
impair = { delay = "5ms", seed = 3 }

[vms.b]
kernel = "udpecho"
nics = [{ switch = "wan", ip = "10.0.0.2/24" }]
[vms.a]
kernel = "ping"
append = "peer=10.0.0.2 count=4 interval=10"
nics = [{ switch = "lan", ip = "10.0.0.1/24", impair = { delay = "20ms" } }]
"""


async def test_impairment_sits_on_the_cable_both_ways(tmp_path: Path) -> None:
    """20 ms on a's NIC and 5 ms on the link, each way: every RTT is at least 50 ms, and the
    impairment can be changed while the lab runs."""
    spec = parse_lab(IMPAIRED, tmp_path)
    out: list[bytes] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(run_lab, spec, out.append)
            assert set(run.impairments) == {"links[0]", "a.eth0"}
            await run.vms["a"].wait()
            run.impairments["links[0]"].set(delay=0.05)  # live, other settings kept
            assert run.impairments["links[0]"].egress.impairment.seed == 3
            nursery.cancel_scope.cancel()
    text = b"".join(out).decode()
    m = re.search(r"4 sent, 4 received, rtt min/avg/max = (\d+)/(\d+)/(\d+) us", text)
    assert m, text[-2000:]
    assert 50_000 <= int(m[1]) < 80_000
    c = run.impairments["a.eth0"]
    assert c.egress.counters["frames_out"] >= 5 and c.ingress.counters["frames_out"] >= 5


def test_dhcp_is_checked_over_links_and_vlans(tmp_path: Path) -> None:
    """ip = "dhcp" needs a DHCP server the NIC's frames reach: on its switch or on one cabled
    to it ([[links]]), in VLAN 1 (the built-in services answer untagged frames only)."""
    lan = '[switches.lan]\nsubnet = "10.0.0.0/24"\ndhcp = true\n[switches.wan]\n[switches.dmz]\n'
    link = '[[links]]\na = "wan"\nb = "lan"\n'
    vm = '[vms.a]\nkernel = "ping"\n'
    spec = parse_lab(lan + link + vm + 'nics = [{ switch = "wan", ip = "dhcp" }]\n', tmp_path)
    assert spec.vms["a"].nics[0].ip == "dhcp"
    trunked = link + "vlans = [10]\n"
    assert parse_lab(lan + trunked + vm + 'nics = [{ switch = "wan", ip = "dhcp" }]\n', tmp_path)
    with pytest.raises(ConfigError) as e:
        parse_lab(lan + link + vm + 'nics = [{ switch = "dmz", ip = "dhcp" }]\n', tmp_path)
    assert str(e.value).startswith("vms.a.nics[0].ip: dhcp needs a DHCP server on switch dmz")
    with pytest.raises(ConfigError) as e:
        parse_lab(lan + link + vm + 'nics = [{ switch = "wan", ip = "dhcp", vlan = 10 }]\n',
                  tmp_path)  # fmt: skip
    assert str(e.value).startswith("vms.a.nics[0].ip: dhcp needs a DHCP server")
    assert "VLAN 10" in str(e.value)
