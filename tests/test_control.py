"""Driving a running lab from other processes through its control socket: ``hv up -d``, then
``hv ps``, ``hv console``, ``hv capture``, ``hv stop``, ``hv down`` as separate processes; a
second lab of the same name refused, a stale socket replaced, another user refused (by the
folder's permissions, and by the server's own SO_PEERCRED check); and the server's bounded
buffers (a slow client drops, the lab never waits)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from hv.cli._control import (
    Connection,
    ControlError,
    LabPaths,
    PcapngBlocks,
    human_duration,
    labs_dir,
    peer_credentials,
    refusal,
)

LAB = """
[switches.lan]

[vms.s]
kernel = "udpecho"
append = "ip=10.0.0.2/24"
nics = [{ switch = "lan" }]

[vms.c]
kernel = "ping"
append = "ip=10.0.0.3/24 peer=10.0.0.2 count=1000000 interval=20"
nics = [{ switch = "lan" }]

[vms.e]
kernel = "echo"
"""

NOBODY = 65534


class Host:
    """A private runtime folder (XDG_RUNTIME_DIR) for this test's labs, and ``hv`` run in it
    as a separate process; every lab still running at the end is taken down, or killed."""

    def __init__(self) -> None:
        # short: a Unix socket's path has at most 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="hvctl", dir="/tmp"))
        self.runtime = self.root / "run"
        self.runtime.mkdir(mode=0o700)
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime)}

    @property
    def labs(self) -> Path:
        return self.runtime / "hvfabric" / "labs"

    def lab_file(self, name: str, text: str = LAB) -> Path:
        path = self.root / f"{name}.toml"
        path.write_text(text)
        return path

    def hv(self, *args: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hv.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env,
            **kw,
        )

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "hv.cli", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kw,
        )

    def ps(self, lab: str | None = None) -> list[dict[str, Any]]:
        r = self.hv("ps", "--json", *([lab] if lab else []))
        assert r.returncode == 0, r.stderr
        labs: list[dict[str, Any]] = json.loads(r.stdout)["labs"]
        return labs

    def vms(self, lab: str) -> dict[str, dict[str, Any]]:
        (found,) = self.ps(lab)
        return {vm["name"]: vm for vm in found["vms"]}

    def cleanup(self) -> None:
        for sock in self.labs.glob("*.sock") if self.labs.is_dir() else []:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.hv("down", sock.stem, timeout=30)
        for lock in self.labs.glob("*.lock") if self.labs.is_dir() else []:
            with contextlib.suppress(ValueError, OSError):
                pid = int(lock.read_text().split()[0])
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """The process runs (a zombie no longer does: nothing may reap it in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def read_until(proc: subprocess.Popen[bytes], wanted: bytes, timeout: float = 20) -> bytes:
    """Read ``proc``'s stdout until ``wanted`` appears (AssertionError after ``timeout``)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while wanted not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} not seen in {got[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            data = os.read(fd, 65536)
            assert data, f"EOF before {wanted!r}: {got[-500:]!r}"
            got += data
    return got


def wait_for(condition: Any, timeout: float = 15, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture(scope="module")
def fw() -> Iterator[tuple[Host, str]]:
    """One detached lab for the tests that look at it: two ping peers and an echo guest."""
    h = Host()
    try:
        r = h.hv("up", "-d", str(h.lab_file("fw")))
        assert r.returncode == 0, r.stdout + r.stderr
        yield h, "fw"
    finally:
        h.cleanup()


# -- one detached lab, several clients -----------------------------------------------------


def test_hv_up_d_starts_the_lab_in_the_background_and_says_how_to_reach_it(
    fw: tuple[Host, str],
) -> None:
    h, name = fw
    (lab,) = h.ps()
    assert lab["name"] == name and lab["file"] == str(h.root / "fw.toml")
    assert lab["state"] == "running" and _alive(lab["pid"])
    assert lab["log"] == str(h.labs / "fw.log") and lab["switches"] == ["lan"]
    assert [(vm["name"], vm["kernel"]) for vm in lab["vms"]] == [
        ("s", "udpecho"), ("c", "ping"), ("e", "echo")
    ]  # fmt: skip
    assert all(vm["state"] == "running" and vm["exit"] is None for vm in lab["vms"])
    # the socket: in a folder only its owner may enter, itself owner-only
    sock = h.labs / "fw.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    for folder in (h.labs, h.labs.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # the text form, and the consoles in the log
    r = h.hv("ps")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["LAB", "VM", "KERNEL", "STATE", "UPTIME", "EXIT"]
    assert lines[1].split()[:4] == ["fw", "s", "udpecho", "running"]
    wait_for(lambda: b"c | ping: reply from 10.0.0.2" in (h.labs / "fw.log").read_bytes())


def test_hv_console_shows_recent_output_then_live_output(fw: tuple[Host, str]) -> None:
    h, name = fw
    wait_for(lambda: b"seq=20 " in (h.labs / "fw.log").read_bytes(), what="20 pings")
    with h.popen("console", name, "c", "--tail", "300", stdin=subprocess.DEVNULL) as proc:
        try:
            out = read_until(proc, b"ping: reply from 10.0.0.2")
            assert out.startswith(b"ping: reply from")  # the tail starts at a line's start
            first = int(out.split(b"seq=")[1].split()[0])
            # recent output only: 300 bytes hold about 6 of these lines, and seq 20 was out
            # (live lines may follow the tail in the same read, so its length is not checked)
            assert first >= 14
            read_until(proc, f"seq={first + 10} ".encode())  # then live: more replies
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


def test_hv_console_on_a_terminal_is_raw_and_ctrl_a_x_detaches(fw: tuple[Host, str]) -> None:
    """On a terminal: keys go to the VM as typed (no line editing, no echo by the host);
    Ctrl-A x detaches, and the VM goes on."""
    import pty

    h, name = fw
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hv.cli", "console", name, "e"],
        env=h.env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    got = b""

    def until(wanted: bytes) -> None:
        nonlocal got
        deadline = time.monotonic() + 20
        while wanted not in got:
            assert time.monotonic() < deadline, f"{wanted!r} not in {got[-300:]!r}"
            if select.select([master], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    got += os.read(master, 4096)

    try:
        until(b"Ctrl-A x detaches")
        until(b"echo: ready")
        os.write(master, b"raw")  # no newline: a cooked terminal would hold it back
        until(b"raw")
        os.write(master, b"\x01x")
        until(b"hv: detached from fw/e (it goes on)")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert got.count(b"raw") == 1  # the guest echoed it; the host's terminal did not
    assert h.vms(name)["e"]["state"] == "running"


def test_hv_console_types_at_the_vm_and_ends_when_it_stops(fw: tuple[Host, str]) -> None:
    """The echo guest echoes what is typed; 'q' makes it shut down, which ends the console."""
    h, name = fw
    with h.popen("console", name, "e", stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        read_until(proc, b"echo: ready")  # the recent output: it printed that on boot
        proc.stdin.write(b"hello hv")
        proc.stdin.flush()
        read_until(proc, b"hello hv")
        proc.stdin.write(b"q")
        proc.stdin.close()
        read_until(proc, b"echo: bye")
        assert proc.wait(20) == 0
        assert proc.stderr is not None
        assert b"fw/e stopped, exit 0" in proc.stderr.read()
    e = h.vms(name)["e"]
    assert e["state"] == "stopped" and e["exit"]["code"] == 0 and e["exit"]["kind"] == "poweroff"


def test_hv_capture_streams_pcapng_live(fw: tuple[Host, str]) -> None:
    h, name = fw
    tshark = shutil.which("tshark")
    assert tshark
    # to a file, stopped by Ctrl-C after a second: a whole pcapng file
    out = h.root / "live.pcapng"
    with h.popen("capture", name, "lan", "-w", str(out)) as proc:
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    t = subprocess.run(
        [tshark, "-r", str(out), "-T", "fields", "-e", "frame.interface_name", "-e", "icmp.type"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in t.stdout.splitlines()]
    assert ["c.eth0", "8"] in rows and ["s.eth0", "0"] in rows, t.stdout[:500]  # echo, reply
    # to stdout for a reader that goes when it has enough (as wireshark -k -i - would)
    pipe = subprocess.Popen(
        [sys.executable, "-m", "hv.cli", "capture", name, "lan"], env=h.env, stdout=subprocess.PIPE
    )
    with pipe:
        t2 = subprocess.run(
            [tshark, "-r", "-", "-c", "6", "-Y", "icmp"],
            stdin=pipe.stdout, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert pipe.stdout is not None
        pipe.stdout.close()
        assert pipe.wait(20) == 0  # the reader went away: the capture ends quietly
    assert t2.stdout.count("ICMP") >= 1, t2.stdout + t2.stderr
    # --duration, and a switch that is not there
    r = h.hv("capture", name, "lan", "-w", str(h.root / "d.pcapng"), "--duration", "0.5")
    assert r.returncode == 0 and (h.root / "d.pcapng").stat().st_size > 100
    r = h.hv("capture", name, "wan", "-w", str(h.root / "x.pcapng"))
    assert r.returncode == 1 and "no switch named 'wan' (switches: lan)" in r.stderr


def test_a_second_lab_of_the_same_name_is_refused(fw: tuple[Host, str]) -> None:
    h, name = fw
    (lab,) = h.ps(name)
    for args in (("up", "-d"), ("up",)):
        r = h.hv(*args, str(h.root / "fw.toml"))
        assert r.returncode == 4
        assert f"a lab named 'fw' is already running (pid {lab['pid']})" in r.stderr
    assert h.ps(name)[0]["pid"] == lab["pid"]  # the first one goes on


def test_hv_top_prints_the_live_view_as_lines_off_a_terminal(fw: tuple[Host, str]) -> None:
    h, name = fw
    r = h.hv("top", name, "--interval", "0.3", "--count", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert sum(line.startswith(f"lab {name} ") for line in lines) == 2, r.stdout
    vm_lines = [line for line in lines if line.startswith("vm c running ")]
    assert len(vm_lines) == 2 and "mips=" in vm_lines[0] and "exits/s=" in vm_lines[0]
    assert any(line.startswith("port lan c.eth0 rx=") for line in lines), r.stdout


def test_stats_and_protocol_errors(fw: tuple[Host, str]) -> None:
    h, name = fw
    r = h.hv("stats", name, "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["lab"] == name and set(stats["vms"]) == {"s", "c", "e"}
    assert "lan" in stats["switches"]
    env_before = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(h.runtime)  # this process as a client, too
    try:
        with Connection.open(name) as conn:
            hello = conn.request("hello")
            assert hello["protocol"] == "hvfabric-control" and hello["version"] == 1
            assert "console" in hello["ops"]
            with pytest.raises(ControlError, match="unknown op 'dance'"):
                conn.request("dance")
            with pytest.raises(ControlError, match="no VM named 'zz'"):
                conn.request("stop", vm="zz")
            conn.sock.sendall(b"not json\n")
            assert conn.read_message() == {"ok": False, "error": "not JSON: one object a line"}
            assert conn.request("ps")["name"] == name  # the connection goes on
        r = h.hv("console", "nolab", "e")
        assert r.returncode == 1 and "no lab named 'nolab' is running (running: fw)" in r.stderr
    finally:
        if env_before is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = env_before


def _connect_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    """Another user (uid 65534) connects to ``path`` and asks for ps."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(path)!r})\n"
        "except OSError as e:\n"
        "    print('connect:', type(e).__name__); sys.exit(0)\n"
        's.sendall(b\'{"op": "ps"}\\n\')\n'
        "print('answer:', s.recv(65536).decode().strip())\n"
    )
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-I", "-S", "-c", code],
        capture_output=True, text=True, timeout=30, check=True, cwd="/",
    )  # fmt: skip


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_another_user_is_refused(fw: tuple[Host, str]) -> None:
    h, name = fw
    sock = h.labs / f"{name}.sock"
    # the folders are 0700: another user cannot even reach the socket
    assert _connect_as_nobody(sock).stdout.strip() == "connect: PermissionError"
    # with the folders and the socket opened up, the server's own check refuses
    folders = [h.root, h.runtime, h.labs.parent, h.labs]
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [*folders, sock]}
    try:
        for p in folders:
            p.chmod(0o711)
        sock.chmod(0o666)
        out = _connect_as_nobody(sock).stdout.strip()
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert out.startswith("answer: ")
    answer = json.loads(out.removeprefix("answer: "))
    assert answer["ok"] is False
    assert answer["error"].startswith(
        f"permission denied: lab fw belongs to uid 0; you are uid {NOBODY}"
    )
    assert h.ps(name)[0]["refused"] == 1
    assert h.vms(name)["s"]["state"] == "running"


# -- labs of their own ---------------------------------------------------------------------


def test_hv_stop_stops_a_vm_and_hv_down_ends_the_lab(host: Host) -> None:
    lab = host.lab_file("pair")
    r = host.hv("up", "-d", str(lab))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lab pair is up" in r.stdout and "hv console pair VM" in r.stdout
    (info,) = host.ps("pair")
    pid = info["pid"]
    r = host.hv("stop", "pair", "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pair/c: stopped, exit 130 (stopped by hv stop)"
    vms = host.vms("pair")
    assert vms["c"]["state"] == "stopped" and vms["c"]["exit"]["kind"] == "stopped"
    assert vms["s"]["state"] == "running" and vms["e"]["state"] == "running"
    # a console attached meanwhile ends with the lab
    with host.popen("console", "pair", "s", stdin=subprocess.DEVNULL) as console:
        read_until(console, b"udpecho: echoing on port 7")
        r = host.hv("down", "pair")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "lab pair is down (status 130)"
        assert not (host.labs / "pair.sock").exists()  # gone when hv down returns
        assert console.wait(10) == 0
        assert console.stderr is not None
        said = console.stderr.read()  # why it ended: seen before or after the socket went
        assert said in (
            b"hv: lab pair has ended\n",
            b"hv: pair/s stopped, exit 130 (the lab was taken down (hv down))\n",
        )
    wait_for(lambda: not _alive(pid), what="the lab's process to end")
    r = host.hv("ps")
    assert r.returncode == 0 and r.stdout.strip().startswith("no labs are running")
    assert host.ps() == []
    log = (host.labs / "pair.log").read_text()
    assert "s | udpecho: echoing on port 7" in log and "c | ping: reply" in log


def test_a_lab_that_ends_by_itself_removes_its_socket(host: Host) -> None:
    """A lab's name is its file's stem unless the file names it."""
    text = 'name = "short"\n' + LAB.replace("count=1000000", "count=25")
    lab = host.lab_file("some-file", text)
    r = host.hv("up", "-d", str(lab), "--exit-code-from", "c")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("lab short is up") or "ran and ended" in r.stdout
    sock = host.labs / "short.sock"
    wait_for(lambda: not sock.exists(), timeout=30, what="the lab to end")
    log = (host.labs / "short.log").read_text()
    assert "c | ping: 10.0.0.2: 25 sent, 25 received" in log
    r = host.hv("up", "-d", str(lab), "--exit-code-from", "c")  # the name is free again
    assert r.returncode == 0, r.stdout + r.stderr
    host.hv("down", "short")


def test_a_stale_socket_is_replaced(host: Host) -> None:
    """A lab that was killed leaves its socket: nobody answers there, so the next one of that
    name replaces it."""
    folder = host.labs
    folder.mkdir(parents=True, mode=0o700)
    folder.parent.chmod(0o700)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(folder / "fw.sock"))
    dead.close()  # the file stays, nobody listens
    assert (folder / "fw.sock").exists()
    r = host.hv("up", "-d", str(host.lab_file("fw")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert host.ps("fw")[0]["state"] == "running"
    # hv stop without a VM: all of them, answered though that ends the lab
    r = host.hv("stop", "fw")
    assert r.returncode == 0, r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == ["fw/s", "fw/c", "fw/e"]
    assert all(", exit 130 (stopped by hv stop)" in line for line in r.stdout.splitlines())
    wait_for(lambda: not (folder / "fw.sock").exists(), what="the lab to end")
    assert not (folder / "fw.lock").exists()


def test_hv_up_d_reports_a_bad_file_and_starts_nothing(host: Host) -> None:
    lab = host.lab_file("bad", LAB.replace('switch = "lan"', 'switch = "lna"', 1))
    r = host.hv("up", "-d", str(lab))
    assert r.returncode == 4
    assert r.stderr.strip() == 'hv: vms.s.nics[0].switch: no switch named "lna" (switches: lan)'
    assert host.ps() == []
    r = host.hv("up", "-d", "--attach", "e", str(host.lab_file("fw")))
    assert r.returncode == 4 and "--attach and -d do not go together" in r.stderr
    # a lab that fails as it starts: its log's end is shown
    lab = host.lab_file("nokernel", LAB.replace('kernel = "echo"', 'kernel = "/nonexistent"'))
    r = host.hv("up", "-d", str(lab))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "ended before it was up" in r.stderr and "/nonexistent" in r.stderr


# -- the pieces ----------------------------------------------------------------------------


def test_only_the_owner_may_drive_a_lab() -> None:
    assert refusal(1000, 1000, "x") is None
    why = refusal(1001, 1000, "x")
    assert why is not None and why.startswith("permission denied: lab x belongs to uid 1000")
    assert refusal(0, 1000, "x") is not None  # not even root
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        pid, uid, gid = peer_credentials(a)
        assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())


def test_where_the_sockets_are(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert labs_dir() == tmp_path / "hvfabric" / "labs"
    assert LabPaths.of("x").sock == tmp_path / "hvfabric" / "labs" / "x.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert labs_dir() == Path(f"/tmp/hvfabric-{os.getuid()}/labs")
    assert [human_duration(s) for s in (5, 64, 3725, 90000)] == ["5s", "1m04s", "1h02m", "1d01h"]


def test_pcapng_blocks_are_written_whole() -> None:
    blocks = PcapngBlocks()
    block = (
        (1).to_bytes(4, "little")
        + (16).to_bytes(4, "little")
        + b"abcd"
        + (16).to_bytes(4, "little")
    )
    assert blocks.feed(block[:5]) == b""
    assert blocks.feed(block[5:] + block[:3]) == block
    assert blocks.feed(block[3:]) == block
    with pytest.raises(ControlError):
        blocks.feed(b"\0" * 4 + (13).to_bytes(4, "little") + b"\0" * 8)


async def test_a_slow_capture_client_drops_frames_and_never_holds_the_switch(
    tmp_path: Path,
) -> None:
    from scapy.utils import PcapNgReader  # type: ignore[import-untyped]

    from hv.lab._control import LiveCapture
    from netfabric.fabric import Switch

    sw = Switch("lan")
    a, b = sw.open_port("a"), sw.open_port("b")
    cap = LiveCapture(sw, limit=20_000)
    sw.add_listener(cap)
    frame = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x00" + bytes(986)
    for _ in range(100):  # nobody reads: the first ~19 fit, the rest are dropped
        a.send(frame)
    c = sw.open_port("c")  # a port plugged in later gets its interface when it first sends
    c.send(frame)
    sw.remove_listener(cap)
    a.send(frame)  # no longer seen
    assert 10 < cap.packets < 25 and cap.packets + cap.dropped == 101
    assert b.counters.tx_frames == 102  # the switch went on delivering every frame
    cap.close()
    data = b""
    while (chunk := await cap.box.get()) is not None:
        data += chunk
    path = tmp_path / "c.pcapng"
    path.write_bytes(data)
    with PcapNgReader(str(path)) as reader:
        packets = list(reader)
    assert len(packets) == cap.packets


async def test_a_console_client_gets_the_tail_from_a_line_start_then_live_output() -> None:
    from hv.lab._control import CONSOLE_BUFFER, ConsoleFan, Outbox

    fan = ConsoleFan(vm=None)  # type: ignore[arg-type]
    fan.feed(b"first line\nsecond line\nthird")
    box = fan.attach(tail=15)  # "line\nthird": from the start of the line in it
    fan.feed(b" line\n")
    assert await box.get() == b"third line\n"
    fan.feed(b"x" * (CONSOLE_BUFFER - 10))
    fan.feed(b"y" * 100)  # the client has not read: what does not fit is dropped, counted
    assert box.dropped == 100 and fan.dropped == 100
    late = fan.attach(tail=0)
    fan.end()
    with trio.fail_after(1):
        assert await box.get() == b"x" * (CONSOLE_BUFFER - 10)
        assert await box.get() is None
        assert await late.get() is None
    assert isinstance(fan.attach(tail=4), Outbox)  # after the end: the tail, then the end
