"""The live view: snapshots and rates of a real lab (a busy guest's MIPS, traffic on the
ports, CPU shares), the plain line format, the rich table, ``hv up --stats`` off a terminal
(and today's console-only output without it), and ``hv up`` on a terminal (a pty): the table
refreshes below the consoles' lines."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.live import Live

import hv
from hv import Lab
from hv.lab._stats import rates, snapshot
from hv.lab._view import LiveConsole, live_view, render_lines, render_table, view_mode

REPO = Path(__file__).resolve().parent.parent

# An echo server, a pinger and a CPU-bound guest on one switch.
LAB = """
[switches.lan]

[vms.s]
kernel = "udpecho"
mem = "16M"
append = "ip=10.0.0.2/24"
nics = [{ switch = "lan" }]

[vms.a]
kernel = "ping"
mem = "16M"
append = "ip=10.0.0.1/24 peer=10.0.0.2 count=COUNT interval=100"
nics = [{ switch = "lan" }]
"""


def lab_file(tmp_path: Path, count: int = 15) -> Path:
    path = tmp_path / "view.toml"
    path.write_text('name = "view"\n' + LAB.replace("COUNT", str(count)))
    return path


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("TTY_", "FORCE_COLOR"))}
    e.pop("COLUMNS", None)
    e.pop("LINES", None)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return {**e, **extra}


# -- snapshots and rates of a real lab -----------------------------------------------------


async def test_snapshot_and_rates_of_a_running_lab() -> None:
    lab = (
        Lab("busy")
        .switch("lan")
        .vm("s", kernel="udpecho", mem="16M", append="ip=10.0.0.2/24", nics=["lan"])
        .vm("a", kernel="ping", mem="16M", nics=["lan"],
            append="ip=10.0.0.1/24 peer=10.0.0.2 count=1000 interval=5")
        .vm("c", kernel="cpu", mem="16M", append="iters=1000000000")
    )  # fmt: skip
    async with hv.open_lab(lab) as run:
        await run.vms["a"].console.wait_for(b"reply from")
        first = snapshot(run)
        await trio.sleep(0.5)  # the measurement: rates over an interval of wall time
        cur = snapshot(run)
        assert json.loads(json.dumps(cur)) == cur  # JSON-able as it is
        r = rates(first, cur)
    assert cur["lab"] == "busy" and list(cur["vms"]) == ["s", "a", "c"]
    assert 0.4 < r["interval"] < 2
    c = r["vms"]["c"]
    assert c["state"] == "running" and c["mips"] > 1, c  # busy: many instructions a second
    assert c["insns_counter"] in ("blocks", "estimate", "exact")
    for v in r["vms"].values():
        assert 0 <= v["cpu"] <= 1.2, v  # a share of one host CPU
        assert v["exits_per_s"] > 0 and v["uptime"] > 0
    assert 0 < r["total"]["cpu"] <= 1.2  # every VM runs on the one trio thread
    assert c["cpu"] > r["vms"]["s"]["cpu"]  # the busy guest gets most of it
    ports = {p["name"]: p for p in r["switches"]["lan"]["ports"]}
    assert set(ports) == {"s.eth0", "a.eth0"}
    for p in ports.values():  # pings every 5 ms, each way
        assert p["rx_fps"] > 20 and p["tx_fps"] > 20 and p["rx_bps"] > 20 * 60, p
        assert p["drops"] == 0 and p["drops_per_s"] == 0
    # counters are cumulative: a later snapshot never has less
    vm = cur["vms"]["a"]
    assert vm["guest_insns"] >= first["vms"]["a"]["guest_insns"] and vm["host_ns"] > 0
    assert vm["exits"] >= vm["exits_native"] and vm["slices"] > 0
    # the lab has ended: every VM stopped, with its exit
    end = snapshot(run)
    assert all(v["state"] == "stopped" and v["exit"] is not None for v in end["vms"].values())
    assert end["vms"]["c"]["uptime"] is None and end["vms"]["c"]["exit"]["kind"] == "stopped"


# -- the plain lines and the table (made-up snapshots) -------------------------------------


def made_up(
    t: float, insns: int, frames: int, drops: int = 0, stopped: bool = False, tso: int = 0
) -> Any:
    """A snapshot; ``tso``: frames of 45 segments among those the port sent (rx), and cable
    drops by loss on its cable ``c``."""
    snap: dict[str, Any] = {
        "lab": "demo",
        "time": t,
        "vms": {
            "a": {
                "name": "a",
                "state": "stopped" if stopped else "running",
                "uptime": None if stopped else t - 100,
                "guest_insns": insns,
                "insns_counter": "blocks",
                "exits": insns // 1000,
                "exits_native": 0,
                "slices": 10,
                "host_ns": int((t - 100) * 0.25e9),
                "exit": {"kind": "poweroff", "reason": "shut down", "code": 0} if stopped else None,
            }
        },
        "switches": {
            "lan": {
                "name": "lan",
                "ports": [
                    {
                        "id": 0,
                        "name": "a.eth0",
                        "rx_frames": frames,
                        "rx_bytes": frames * 100,
                        "tx_frames": frames // 2,
                        "tx_bytes": frames * 50,
                        "drops": drops,
                        "drops_by": {"dest_down": drops} if drops else {},
                    }
                ],
            }
        },
    }
    if tso:
        port = snap["switches"]["lan"]["ports"][0]
        port |= {
            "rx_wire_frames": frames + 44 * tso,
            "rx_wire_bytes": frames * 100 + 44 * 54 * tso,
            "tx_wire_frames": frames // 2,
            "tx_wire_bytes": frames * 50,
            "drops": drops + tso,
            "drops_by": {"dest_down": drops, "loss": tso},
            "cable": "c",
            "cable_counts": {"duplicated": 0, "corrupted": 1, "reordered": 0},
        }
    return snap


def test_rates_and_the_plain_line_format() -> None:
    prev = made_up(102.0, 10_000_000, 100)
    cur = made_up(104.0, 256_000_000, 300, drops=4)
    r = rates(prev, cur)
    assert r["vms"]["a"]["mips"] == 123.0 and r["vms"]["a"]["cpu"] == 0.25
    assert render_lines(r) == [
        "lab demo interval=2.00s running=1/1 mips=123.0 exits/s=123000 cpu=25%",
        "vm a running mips=123.0 exits/s=123000 cpu=25% uptime=4.0s",
        "port lan a.eth0 rx=100/s rx_bytes=10000/s tx=50/s tx_bytes=5000/s drops=2/s "
        "drops_total=4 rx_wire=100/s tx_wire=50/s drops_by=dest_down:4",
    ]
    # offloaded frames (each 45 on the wire) and a cable's drops by cause
    r = rates(made_up(102.0, 0, 100, tso=10), made_up(104.0, 0, 300, drops=4, tso=30))
    assert render_lines(r)[2] == (
        "port lan a.eth0 rx=100/s rx_bytes=10000/s tx=50/s tx_bytes=5000/s drops=12/s "
        "drops_total=34 rx_wire=540/s tx_wire=50/s drops_by=dest_down:4,loss:30 cable=c "
        "duplicated=0 corrupted=1 reordered=0"
    )
    end = rates(cur, made_up(105.0, 256_000_000, 300, drops=4, stopped=True))
    assert render_lines(end)[1] == (
        'vm a stopped mips=0.0 exits/s=0 cpu=25% uptime=- exit=0 kind=poweroff reason="shut down"'
    )
    # no previous snapshot (the first frame): every rate is 0
    first = rates(None, cur)
    assert first["interval"] == 0 and first["vms"]["a"]["mips"] == 0
    assert render_lines(first)[2].startswith("port lan a.eth0 rx=0/s rx_bytes=0/s tx=0/s")


def test_the_table_names_the_lab_its_vms_and_ports() -> None:
    r = rates(made_up(102.0, 0, 0), made_up(103.0, 50_000_000, 2000, drops=1))
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(render_table(r))
    text = out.getvalue()
    assert "lab demo" in text and "ports" in text
    row = next(line for line in text.splitlines() if " a " in line and "running" in line)
    assert "50.0" in row and "25%" in row  # MIPS and CPU share
    port = next(line for line in text.splitlines() if "a.eth0" in line)
    assert "2.0 k" in port and "200.0 kB" in port  # frames/s and bytes/s
    assert "wire" not in port  # nothing offloaded: one figure
    r = rates(made_up(102.0, 0, 0), made_up(103.0, 0, 2000, drops=1, tso=100))
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(render_table(r))
    port = next(line for line in out.getvalue().splitlines() if "a.eth0" in line)
    assert "2.0 k (6.4 k wire)" in port, port  # as sent, and on the wire
    assert "a.eth0 (c)" in port and "dest_down 1, loss 100, corrupted 1" in port, port


def test_view_modes() -> None:
    assert view_mode(None, terminal=True) == "table"
    assert view_mode("off", terminal=True) is None
    assert view_mode(None, terminal=False) is None  # hv up off a terminal: consoles only
    assert view_mode("on", terminal=False) == "lines"


# -- the console stream and the view loop --------------------------------------------------


def test_live_console_writes_through_without_a_table_and_batches_lines_with_one() -> None:
    raw: list[bytes] = []
    out = LiveConsole(raw.append)
    out.write(b"a | prompt$ ")
    out.write_lines(["vm a running"])  # ends the open console line first
    assert b"".join(raw) == b"a | prompt$ \nvm a running\n"
    screen = io.StringIO()
    console = Console(file=screen, width=80, force_terminal=True, color_system=None)
    with Live(console=console, auto_refresh=False) as live:
        out.attach(live)
        out.show(render_table(rates(None, made_up(102.0, 0, 0))))
        out.write(b"a | one\r\na | tw")
        out.write(b"o\na | \xc3")  # a UTF-8 character cut in two
        out.write(b"\xa9t\xc3\xa9 (partial)")
        out.flush()
        assert "a | one\na | two\n" in screen.getvalue().replace("\r", "")
        assert "a | été (partial)" in screen.getvalue()  # shown above the table, unfinished
        out.detach()
    assert screen.getvalue().count("lab demo") >= 1
    out.write(b"after\n")
    assert raw[-1] == b"after\n"


async def test_live_view_off_a_terminal_prints_the_lines_every_interval() -> None:
    """hv top's way: snapshots from a function (a control socket), lines on a pipe."""
    samples = [made_up(100.0 + i, i * 1_000_000, i * 10) for i in range(4)]
    printed: list[list[str]] = []

    async def source() -> Any:
        return samples.pop(0) if samples else None  # None: the lab is gone

    with trio.fail_after(5):
        await live_view(source, None, 0.01, terminal=False, print_lines=printed.append)
    assert len(printed) == 3
    assert all(block[0].startswith("lab demo interval=1.00s running=1/1") for block in printed)
    assert printed[-1][1] == "vm a running mips=1.0 exits/s=1000 cpu=25% uptime=3.0s"


# -- hv up: off a terminal and on one ------------------------------------------------------

VM_LINE = re.compile(
    r"^vm (s|a) (running|stopped) mips=[\d.]+ exits/s=\d+ cpu=\d+% uptime=(-|[\d.]+s)"
)
PORT_LINE = re.compile(
    r"^port lan (s|a)\.eth0 rx=(\d+)/s rx_bytes=\d+/s tx=(\d+)/s tx_bytes=\d+/s "
    r"drops=\d+/s drops_total=\d+ rx_wire=(\d+)/s tx_wire=(\d+)/s$"
)


def hv_up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hv.cli", "up", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        check=False,
    )


def test_hv_up_stats_off_a_terminal_prints_lines_between_the_consoles(tmp_path: Path) -> None:
    lab = lab_file(tmp_path)
    # every wall second: on real time the 15 pings take 1.5 s (virtual time: far less)
    r = hv_up(str(lab), "--stats", "--clock", "real", "--exit-code-from", "a")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    lines = r.stdout.splitlines()
    assert "a | ping: 10.0.0.2: 15 sent, 15 received" in r.stdout
    headers = [line for line in lines if line.startswith("lab view ")]
    assert len(headers) >= 2, r.stdout  # every second, and once at the end
    vms = [line for line in lines if line.startswith("vm ")]
    assert vms and all(VM_LINE.match(line) for line in vms), vms
    ports = [m for line in lines if (m := PORT_LINE.match(line))]
    assert len(ports) == 2 * len(headers)
    assert any(int(m[2]) > 0 and int(m[3]) > 0 for m in ports)  # the pings, every 100 ms
    assert all((m[2], m[3]) == (m[4], m[5]) for m in ports)  # nothing offloaded: the same
    assert lines[-3].startswith("vm a stopped") and "exit=0 kind=poweroff" in lines[-3]
    assert all(line.startswith(("s | ", "a | ", "lab ", "vm ", "port ")) for line in lines)


def test_hv_up_off_a_terminal_prints_only_the_consoles(tmp_path: Path) -> None:
    r = hv_up(str(lab_file(tmp_path, count=3)), "--exit-code-from", "a")
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(("s | ", "a | ")) for line in r.stdout.splitlines()), r.stdout


def run_on_a_pty(*args: str, timeout: float = 60) -> tuple[int, str]:
    """``hv up ARGS`` with stdout on a pty (120 x 40): its exit status and what it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with subprocess.Popen(
        [sys.executable, "-m", "hv.cli", "up", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env(TERM="xterm-256color"),
    ) as p:
        os.close(slave)
        out = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 1)
                if not ready:
                    if p.poll() is not None:
                        break
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the pty's other side is closed
                    break
                if not data:
                    break
                out += data
        finally:
            os.close(master)
            status = p.wait(timeout=30)
        assert p.stderr is not None
        err = p.stderr.read().decode()
    assert "Traceback" not in err, err
    return status, out.decode(errors="replace")


def test_hv_up_on_a_terminal_shows_the_table_below_the_consoles(tmp_path: Path) -> None:
    status, out = run_on_a_pty(str(lab_file(tmp_path)), "--exit-code-from", "a")
    assert status == 0, out[-3000:]
    assert "a | ping: reply from 10.0.0.2: seq=1 " in out and "s | udpecho: echoing" in out
    assert "a | ping: 10.0.0.2: 15 sent, 15 received" in out
    assert out.count("lab view") >= 2  # drawn, then redrawn as it refreshes
    assert "rx frames/s" in out and "a.eth0" in out and "\x1b[" in out  # a rich table
    tail = out[out.rindex("lab view") :]  # the last table, left on the screen
    assert "stopped" in tail and "SBI system reset" in tail
    assert "a | ping" not in tail  # the console lines are above it


def test_hv_up_no_view_on_a_terminal(tmp_path: Path) -> None:
    status, out = run_on_a_pty(
        str(lab_file(tmp_path, count=2)), "--exit-code-from", "a", "--no-view"
    )
    assert status == 0, out
    assert "a | ping: 10.0.0.2: 2 sent, 2 received" in out and "lab view" not in out
