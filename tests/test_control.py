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
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import wait_until_sync

from hv.cli._control import Connection, PcapngBlocks, human_duration
from hv.lab._protocol import (
    ControlError,
    LabPaths,
    LineBuffer,
    LineTooLong,
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
        """``hv/NAME.toml``: lab ``hv-NAME`` (folder and file) unless the text names it."""
        path = self.root / "hv" / f"{name}.toml"
        path.parent.mkdir(exist_ok=True)
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
        yield h, "hv-fw"
    finally:
        h.cleanup()


# -- one detached lab, several clients -----------------------------------------------------


def test_hv_up_d_starts_the_lab_in_the_background_and_says_how_to_reach_it(
    fw: tuple[Host, str],
) -> None:
    h, name = fw
    (lab,) = h.ps()
    assert lab["name"] == name and lab["file"] == str(h.root / "hv" / "fw.toml")
    assert lab["state"] == "running" and _alive(lab["pid"])
    assert lab["log"] == str(h.labs / "hv-fw.log") and lab["switches"] == ["lan"]
    assert lab["socket"] == str(h.labs / "hv-fw.sock")
    assert [(vm["name"], vm["kernel"]) for vm in lab["vms"]] == [
        ("s", "udpecho"), ("c", "ping"), ("e", "echo")
    ]  # fmt: skip
    assert all(vm["state"] == "running" and vm["exit"] is None for vm in lab["vms"])
    # the socket: in a folder only its owner may enter, itself owner-only
    sock = h.labs / "hv-fw.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    for folder in (h.labs, h.labs.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # the text form, and the consoles in the log
    r = h.hv("ps")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["LAB", "VM", "KERNEL", "STATE", "UPTIME", "EXIT"]
    assert lines[1].split()[:4] == ["hv-fw", "s", "udpecho", "running"]
    assert f"hv-fw: {h.root}/hv/fw.toml (socket {sock})" in lines
    wait_until_sync(
        lambda: b"c | ping: reply from 10.0.0.2" in (h.labs / "hv-fw.log").read_bytes(),
        what="a ping reply in the lab's log",
    )


def test_hv_console_shows_recent_output_then_live_output(fw: tuple[Host, str]) -> None:
    h, name = fw
    wait_until_sync(lambda: b"seq=20 " in (h.labs / "hv-fw.log").read_bytes(), what="20 pings")
    with h.popen("console", name, "c", "--tail", "300", stdin=subprocess.DEVNULL) as proc:
        try:
            out = read_until(proc, b"ping: reply from 10.0.0.2")
            assert out.startswith(b"ping: reply from")  # the tail starts at a line's start
            first = int(out.split(b"seq=")[1].split()[0])
            # recent output only: 300 bytes hold about 6 of these lines, and seq 20 was out
            # (live lines may follow the tail in the same read, so its length is not checked)
            assert first >= 14
            later = f"seq={first + 10} ".encode()
            if later not in out:  # the first read may already hold it (a fast guest)
                read_until(proc, later)  # then live: more replies
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
        until(b"hv: detached from hv-fw/e (it goes on)")
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
        assert b"hv-fw/e stopped, exit 0" in proc.stderr.read()
    e = h.vms(name)["e"]
    assert e["state"] == "stopped" and e["exit"]["code"] == 0 and e["exit"]["kind"] == "poweroff"


def test_hv_capture_streams_pcapng_live(fw: tuple[Host, str]) -> None:
    h, name = fw
    tshark = shutil.which("tshark")
    assert tshark
    # to a file, stopped by Ctrl-C once it holds a ping and its reply: a whole pcapng file
    out = h.root / "live.pcapng"

    def ping_and_reply() -> bool:  # hv capture writes whole blocks only: readable at any time
        t = subprocess.run(
            [tshark, "-r", str(out), "-T", "fields", "-e", "frame.interface_name", "-e",
             "icmp.type"], capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return "c.eth0\t8" in t.stdout and "s.eth0\t0" in t.stdout

    with h.popen("capture", name, "lan", "-w", str(out)) as proc:
        wait_until_sync(lambda: out.exists() and ping_and_reply(), "a ping and reply captured", 30)
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
        r = h.hv(*args, str(h.root / "hv" / "fw.toml"))
        assert r.returncode == 4
        assert f"a lab named 'hv-fw' is already running (pid {lab['pid']} from " in r.stderr
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
            conn.sock.sendall(b"[" * 30000 + b"]" * 30000 + b"\n")  # deeper than json recurses
            assert conn.read_message() == {"ok": False, "error": "not JSON: one object a line"}
            assert conn.request("ps")["name"] == name  # the connection goes on
        r = h.hv("console", "nolab", "e")
        assert r.returncode == 1 and "no lab named 'nolab' is running (running: hv-fw)" in r.stderr
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
        f"permission denied: lab {name} belongs to uid 0; you are uid {NOBODY}"
    )
    assert h.ps(name)[0]["refused"] == 1
    assert h.vms(name)["s"]["state"] == "running"


# -- labs of their own ---------------------------------------------------------------------


def test_hv_stop_stops_a_vm_and_hv_down_ends_the_lab(host: Host) -> None:
    lab = host.lab_file("pair")
    r = host.hv("up", "-d", str(lab))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lab hv-pair is up" in r.stdout and "hv console hv-pair VM" in r.stdout
    assert f"socket: {host.labs / 'hv-pair.sock'}" in r.stdout
    (info,) = host.ps("pair")
    pid = info["pid"]
    r = host.hv("stop", "pair", "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hv-pair/c: stopped, exit 130 (stopped by hv stop)"
    vms = host.vms("pair")
    assert vms["c"]["state"] == "stopped" and vms["c"]["exit"]["kind"] == "stopped"
    assert vms["s"]["state"] == "running" and vms["e"]["state"] == "running"
    # a console attached meanwhile ends with the lab
    with host.popen("console", "pair", "s", stdin=subprocess.DEVNULL) as console:
        read_until(console, b"udpecho: echoing on port 7")
        r = host.hv("down", "pair")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "lab hv-pair is down (status 130)"
        assert not (host.labs / "hv-pair.sock").exists()  # gone when hv down returns
        assert console.wait(10) == 130  # the VM's status
        assert console.stderr is not None
        said = console.stderr.read()  # why it ended: from the lab, or its record once gone
        assert said == b"hv: hv-pair/s stopped, exit 130 (the lab was taken down (hv down))\n"
    wait_until_sync(lambda: not _alive(pid), what="the lab's process to end")
    r = host.hv("ps")
    assert r.returncode == 0 and r.stdout.strip().startswith("no labs are running")
    assert host.ps() == []
    log = (host.labs / "hv-pair.log").read_text()
    assert "s | udpecho: echoing on port 7" in log and "c | ping: reply" in log


def test_a_lab_that_ends_by_itself_removes_its_socket(host: Host) -> None:
    """A lab's name is its file's stem unless the file names it."""
    text = 'name = "short"\n' + LAB.replace("count=1000000", "count=25")
    lab = host.lab_file("some-file", text)
    r = host.hv("up", "-d", str(lab), "--exit-code-from", "c")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("lab short is up") or "ran and ended" in r.stdout
    sock = host.labs / "short.sock"
    wait_until_sync(lambda: not sock.exists(), timeout=30, what="the lab to end")
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
    dead.bind(str(folder / "hv-fw.sock"))
    dead.close()  # the file stays, nobody listens
    assert (folder / "hv-fw.sock").exists()
    r = host.hv("up", "-d", str(host.lab_file("fw")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert host.ps("fw")[0]["state"] == "running"
    # hv stop without a VM: all of them, answered though that ends the lab
    r = host.hv("stop", "fw")
    assert r.returncode == 0, r.stderr
    assert [line.split(":")[0] for line in r.stdout.splitlines()] == [
        "hv-fw/s",
        "hv-fw/c",
        "hv-fw/e",
    ]
    assert all(", exit 130 (stopped by hv stop)" in line for line in r.stdout.splitlines())
    wait_until_sync(lambda: not (folder / "hv-fw.sock").exists(), what="the lab to end")
    assert not (folder / "hv-fw.lock").exists()


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


def test_the_control_client_does_not_load_the_vm_machinery() -> None:
    """hv ps stays light: the client imports the lab's protocol, not the lab's runner."""
    code = "import sys, hv.cli._control; print(sorted(m for m in sys.modules if m in WATCH))"
    watch = "WATCH = {'hv._vm', 'hv.lab._runner', 'hv.lab._spec', 'unicorn'}; "
    r = subprocess.run([sys.executable, "-c", watch + code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_line_buffer_cuts_lines_split_across_chunks() -> None:
    lines = LineBuffer()
    lines.feed(b'{"op": "he')
    assert lines.next_line() is None and not lines.closed
    lines.feed(b'llo"}')
    assert lines.next_line() is None
    lines.feed(b"\n")
    assert lines.next_line() == b'{"op": "hello"}' and len(lines) == 0


def test_line_buffer_takes_several_lines_from_one_chunk_then_the_stream() -> None:
    lines = LineBuffer()
    lines.feed(b"one\ntwo\n\nthree\nconsole bytes \x00\xff")
    assert [lines.next_line() for _ in range(4)] == [b"one", b"two", b"", b"three"]
    assert lines.next_line() is None
    assert lines.rest() == b"console bytes \x00\xff" and lines.rest() == b""


def test_line_buffer_refuses_a_line_over_its_limit() -> None:
    lines = LineBuffer(max_line=8)
    lines.feed(b"12345678")
    assert lines.next_line() is None  # at the limit: it may still end
    lines.feed(b"9")
    with pytest.raises(LineTooLong, match="longer than 8 bytes"):
        lines.next_line()
    lines = LineBuffer(max_line=8)
    lines.feed(b"12345678\nabc")  # a full-length line is fine
    assert lines.next_line() == b"12345678" and lines.next_line() is None


def test_line_buffer_at_eof_keeps_a_partial_line_as_the_rest() -> None:
    lines = LineBuffer()
    lines.feed(b"last\npart")
    lines.feed(b"")
    assert lines.closed
    assert lines.next_line() == b"last"
    assert lines.next_line() is None  # the stream ended: no more lines, ever
    assert lines.rest() == b"part"


def test_line_buffer_fed_a_byte_at_a_time_searches_each_byte_once() -> None:
    lines = LineBuffer()
    for byte in b"x" * 1000:
        lines.feed(bytes([byte]))
        assert lines.next_line() is None
    assert lines._searched == 1000  # resumed, not rescanned from the start
    lines.feed(b"\n")
    assert lines.next_line() == b"x" * 1000


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
    from netfabric.switch import Switch

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


# -- labs that end at once -----------------------------------------------------------------


def _quick_lab(folder: Path, code: int) -> str:
    """A lab whose only VM reports failure ``code`` at its first instructions."""
    from conftest import finisher_kernel

    kernel = folder / f"fail{code}.bin"
    kernel.write_bytes(finisher_kernel((code << 16) | 0x3333))
    return f'[vms.a]\nkernel = "{kernel}"\n'


async def test_a_lab_that_ends_at_once_exits_with_its_status_every_time(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab may end (and close its socket) before the task that accepts clients first
    runs: 200 times the same code path hv up takes, each must end with the VM's status."""
    from hv.lab._control import ControlServer
    from hv.lab._runner import run_lab
    from hv.lab._spec import parse_lab

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(host.runtime))
    spec = parse_lab(_quick_lab(host.root, 3), host.root, "quick")
    for _ in range(200):
        with trio.fail_after(30), ControlServer(spec) as control:
            async with trio.open_nursery() as nursery:
                run = await nursery.start(run_lab, spec)
                assert await control.serve(run) == 3
    assert list(host.labs.iterdir()) == []  # nothing left behind: no socket, no lock
    r = host.hv("up", str(host.lab_file("quick", _quick_lab(host.root, 5))))
    assert r.returncode == 5, r.stdout + r.stderr
    assert "Traceback" not in r.stderr


# -- ended labs: hv console's status, hv down twice, hv ps -a ------------------------------

ENDING = """
[vms.e]
kernel = "echo"

[vms.f]
kernel = "fault"
append = "mode=handler"
"""


def test_console_exits_with_the_vms_status_and_down_is_idempotent(host: Host) -> None:
    r = host.hv("up", "-d", str(host.lab_file("ending", ENDING)))
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until_sync(lambda: host.vms("ending")["f"]["state"] == "stopped", what="f to stop")
    r = host.hv("console", "ending", "f", stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stdout + r.stderr  # f's status, not 0
    assert "unhandled trap" in r.stdout and "hv-ending/f stopped, exit 1" in r.stderr
    with host.popen("console", "ending", "e", stdin=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        read_until(proc, b"echo: ready")
        proc.stdin.write(b"q")
        proc.stdin.close()
        assert proc.wait(20) == 0  # e powered off: 0
    # the lab ended by itself (its last VM stopped): hv down says so, and is content
    wait_until_sync(lambda: not (host.labs / "hv-ending.sock").exists(), what="the lab to end")
    for _ in range(2):
        r = host.hv("down", "ending")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "lab hv-ending is already down (it ended with status 1)"
    r = host.hv("down", "neverwas")
    assert r.returncode == 0 and r.stdout.strip() == "no lab named 'neverwas' is running"
    # hv ps lists running labs; hv ps -a the ended ones too, with their status
    assert host.ps() == []
    r = host.hv("ps", "-a")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows[0] == ["LAB", "VM", "KERNEL", "STATE", "UPTIME", "EXIT"]
    assert rows[1][:4] == ["hv-ending", "e", "echo", "stopped"] and rows[1][5] == "0"
    assert rows[2][:4] == ["hv-ending", "f", "fault", "stopped"] and rows[2][5] == "1"
    r = host.hv("ps", "-a", "--json")
    (lab,) = json.loads(r.stdout)["labs"]
    assert lab["name"] == "hv-ending" and lab["state"] == "ended" and lab["status"] == 1
    # a console of an ended lab: its status
    r = host.hv("console", "ending", "f")
    assert r.returncode == 1 and "lab hv-ending has ended (status 1)" in r.stderr


def test_ended_labs_are_kept_boundedly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hv.lab._protocol import ENDED_KEEP, ended_labs, forget_ended, record_ended

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    for i in range(ENDED_KEEP + 5):
        record_ended({"name": f"lab{i}", "status": i, "vms": []})
    record_ended({"name": "lab7", "status": 70, "vms": []})  # a name ends again: one entry
    kept = ended_labs()
    assert len(kept) == ENDED_KEEP and kept[-1] == {"name": "lab7", "status": 70, "vms": []}
    assert [e["name"] for e in kept].count("lab7") == 1 and kept[0]["name"] == "lab5"
    forget_ended("lab7")
    assert "lab7" not in [e["name"] for e in ended_labs()]
    (tmp_path / "hvfabric" / "ended.json").write_text("{not json")  # damaged: starts afresh
    assert ended_labs() == []
    record_ended({"name": "x", "status": 0, "vms": []})
    assert [e["name"] for e in ended_labs()] == ["x"]


# -- smaller: another user's lab, start timeout, a squatted folder -------------------------


def test_a_refusal_is_reported_even_when_the_server_closed_first() -> None:
    """The server answers another user's connection at once and closes: the client's
    request then meets a broken pipe, but the answer waits in its buffer."""
    a, b = socket.socketpair(socket.AF_UNIX)
    a.sendall(b'{"ok": false, "error": "permission denied: lab x belongs to uid 1"}\n')
    a.close()
    with Connection(b, "x") as conn, pytest.raises(ControlError, match=r"^permission denied"):
        conn.request("down")


async def test_hv_down_and_stop_of_another_users_lab_say_permission_denied(
    host: Host, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hv.cli._control import control_command
    from hv.cli._main import build_parser
    from hv.lab._control import ControlServer
    from hv.lab._runner import run_lab
    from hv.lab._spec import parse_lab

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(host.runtime))
    spec = parse_lab('[vms.e]\nkernel = "echo"\n', host.root, "theirs")
    with trio.fail_after(60), ControlServer(spec) as control:
        control.uid = os.getuid() + 1  # as if another user ran it
        async with trio.open_nursery() as nursery:
            run = await nursery.start(run_lab, spec)
            await nursery.start(control.serve, run)
            for _ in range(5):
                for command in (["down", "theirs"], ["stop", "theirs"]):
                    args = build_parser().parse_args(command)
                    assert await trio.to_thread.run_sync(control_command, args) == 1
                    said = capsys.readouterr().err.splitlines()[-1]  # after the lab's log
                    assert said.startswith("hv: permission denied: lab theirs belongs to uid")
            run.stop()
    assert control.refused == 10


def test_hv_up_d_gives_up_after_its_start_timeout(host: Host) -> None:
    lab = host.lab_file("slow")
    r = host.hv("up", "-d", "--start-timeout", "0.01", str(lab))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "lab hv-slow did not come up within 0.01 s (--start-timeout); it was stopped" in r.stderr
    assert host.ps() == [] and not (host.labs / "hv-slow.lock").exists()
    r = host.hv("up", "-d", "--start-timeout", "-1", str(lab))
    assert r.returncode == 2 and "--start-timeout" in r.stderr


def test_a_squatted_labs_folder_says_what_to_do(tmp_path: Path) -> None:
    from hv._errors import HostError
    from hv.lab._protocol import _private_dir

    squat = tmp_path / "hvfabric-1000"
    squat.mkdir(mode=0o755)
    os.chown(squat, NOBODY, NOBODY)
    with pytest.raises(HostError) as e:
        _private_dir(squat)
    assert f"{squat} belongs to uid {NOBODY}" in str(e.value)
    assert "set XDG_RUNTIME_DIR to a folder of your own, or remove" in str(e.value)


# -- hv up --attach on a terminal ----------------------------------------------------------


class Terminal:
    """``hv ARGS`` on a new pty that is its controlling terminal (so Ctrl-C there is a
    SIGINT, as in a shell); ``slave`` is kept to read the terminal's modes."""

    def __init__(self, host: Host, *args: str) -> None:
        import pty

        self.master, self.slave = pty.openpty()
        self.saved = termios.tcgetattr(self.slave)
        wrapper = (
            "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
            "os.execv(sys.executable, [sys.executable, '-m', 'hv.cli', *sys.argv[1:]])"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, *args], env=host.env, start_new_session=True,
            stdin=self.slave, stdout=self.slave, stderr=self.slave,
        )  # fmt: skip
        self.got = b""

    def until(self, wanted: bytes, timeout: float = 30, since: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.got[since:]:
            assert time.monotonic() < deadline, f"{wanted!r} not in {self.got[-600:]!r}"
            if select.select([self.master], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    self.got += os.read(self.master, 65536)

    def modes(self) -> list[Any]:
        return termios.tcgetattr(self.slave)

    def raw(self) -> bool:
        lflag = self.modes()[3]
        return not lflag & termios.ISIG and not lflag & termios.ICANON

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:  # keep reading: a full pty would block its writer
            assert time.monotonic() < deadline, f"hv did not end: {self.got[-600:]!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):
                    self.got += os.read(self.master, 65536)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.mark.parametrize("leave", ["detach", "vm-stops"])
def test_hv_up_attach_detaches_and_gives_the_terminal_back(host: Host, leave: str) -> None:
    """Ctrl-A x detaches (the VM and the lab go on), or the attached VM stops: either way the
    terminal is as it was (cooked, Ctrl-C a signal again), and Ctrl-C then stops the lab."""
    lab = host.lab_file("att")
    t = Terminal(host, "up", str(lab), "--attach", "e", "--no-view")
    try:
        t.until(b"e | echo: ready")
        t.until(b"Ctrl-A x detaches")
        assert t.raw()  # attached: keys go to e as typed
        os.write(t.master, b"hi")
        t.until(b"e | hi")
        if leave == "detach":
            os.write(t.master, b"\x01x")
            t.until(b"hv: detached from e (the lab goes on; Ctrl-C stops it)")
        else:
            os.write(t.master, b"q")  # the echo guest powers off
            t.until(b"hv: e stopped, exit 0 (the lab goes on; Ctrl-C stops it)")
        wait_until_sync(lambda: not t.raw(), what="the terminal to be given back")
        assert t.modes() == t.saved
        t.until(b"c | ping: reply", since=len(t.got))  # the lab goes on
        os.write(t.master, b"\x03")  # Ctrl-C: a SIGINT now, not a byte for a VM
        assert t.wait() == 130
        assert b"hv: stopped by SIGINT" in t.got
        assert t.modes() == t.saved
        assert not select.select([t.slave], [], [], 0)[0]  # no key was left for the shell
    finally:
        t.close()
    assert host.ps() == []


# -- lab names: folder and file, or -p -----------------------------------------------------


def test_the_same_file_name_in_two_folders_makes_two_labs(host: Host) -> None:
    """A lab is named after its folder and file (``one/fw.toml``: ``one-fw``), or ``-p``;
    every command that takes LAB takes that name, the file's path, or the file's stem when
    one running lab has it."""
    one, two = host.root / "one", host.root / "two"
    for folder in (one, two):
        folder.mkdir()
        (folder / "fw.toml").write_text(LAB)
    for folder in (one, two):
        r = host.hv("up", "-d", str(folder / "fw.toml"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith(f"lab {folder.name}-fw is up")
        assert f"socket: {host.labs / f'{folder.name}-fw.sock'}" in r.stdout
    r = host.hv("up", "-d", "-p", "mine", str(one / "fw.toml"))  # a project name of its own
    assert r.returncode == 0 and r.stdout.startswith("lab mine is up"), r.stdout + r.stderr
    assert {lab["name"]: lab["file"] for lab in host.ps()} == {
        "mine": str(one / "fw.toml"), "one-fw": str(one / "fw.toml"), "two-fw": str(two / "fw.toml")
    }  # fmt: skip
    # the stem is ambiguous now: the error names the labs it could mean
    r = host.hv("stats", "fw")
    assert r.returncode == 1
    assert "3 running labs have a file named 'fw': " in r.stderr and "two-fw (" in r.stderr
    r = host.hv("console", "nolab", "e")
    assert r.returncode == 1
    assert "no lab named 'nolab' is running (running: mine, one-fw, two-fw)" in r.stderr
    # by full name, by path (relative to where hv runs), and by stem once it is unique
    assert host.hv("stop", "mine").returncode == 0
    wait_until_sync(lambda: not (host.labs / "mine.sock").exists(), what="lab mine to end")
    r = host.hv("stop", "fw.toml", "e", cwd=two)
    assert r.returncode == 0 and r.stdout.startswith("two-fw/e: stopped"), r.stdout + r.stderr
    r = host.hv("down", "one-fw")
    assert r.returncode == 0 and r.stdout.strip() == "lab one-fw is down (status 130)"
    for command in ("ps", "top", "stats", "console", "capture", "stop", "down"):
        args = {"console": ["e"], "capture": ["lan", "--duration", "0.1", "-w", "x.pcapng"],
                "top": ["--count", "1"], "stop": ["e"]}.get(command, [])  # fmt: skip
        r = host.hv(command, "fw", *args, stdin=subprocess.DEVNULL, cwd=host.root)
        assert r.returncode in (0, 130), (command, r.stdout, r.stderr)  # e stopped: 130
        assert "no lab named" not in r.stderr and "two-fw" in r.stdout + r.stderr, command


def test_default_lab_names() -> None:
    from hv.cli._control import default_lab_name

    assert default_lab_name(Path("/home/me/net/lab.toml")) == "net-lab"
    assert default_lab_name(Path("/srv/My Project.v2/Core_Lab.toml")) == "myprojectv2-core_lab"
    assert default_lab_name(Path("/lab.toml")) == "lab"
    assert default_lab_name(Path("/x/2024/9.toml")) == "lab"  # a name starts with a letter
    long = default_lab_name(Path("/" + "f" * 50 + "/" + "s" * 20 + ".toml"))
    assert long == "f" * 11 + "-" + "s" * 20 and len(long) == 32


# -- live capture listeners: how many, and how much each may hold --------------------------

LOAD = LAB.split("[vms.c]")[0] + (  # the echo server, and udpgen at full speed
    '[vms.g]\nkernel = "udpgen"\nnics = [{ switch = "lan" }]\n'
    'append = "ip=10.0.0.3/24 peer=10.0.0.2 count=100000000 size=1400 window=8"\n'
)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for {pid}")


def _capture_client(h: Host, lab: str, switch: str) -> tuple[socket.socket, dict[str, Any]]:
    """A raw client of the control protocol that asks for a capture, then never reads."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the lab's buffer fills, not ours
    s.settimeout(30)
    s.connect(str(h.labs / f"{lab}.sock"))
    s.sendall(json.dumps({"op": "capture", "switch": switch}).encode() + b"\n")
    line = b""
    while not line.endswith(b"\n"):
        byte = s.recv(1)
        assert byte, "the lab closed the connection without an answer"
        line += byte
    return s, json.loads(line)


def test_live_captures_that_never_read_are_capped_in_number_and_memory(host: Host) -> None:
    """A lab under load (udpgen at full speed) and 8 capture clients that never read: each
    holds at most its buffer (the lab's RSS grows by a few MiB, not 8 MiB a client), frames
    beyond it are dropped and counted, and a 9th listener on the switch is refused."""
    from hv.lab._control import CAPTURE_BUFFER, CAPTURES_PER_SWITCH

    r = host.hv("up", "-d", str(host.lab_file("load", LOAD)))
    assert r.returncode == 0, r.stdout + r.stderr
    (lab,) = host.ps("load")
    pid = lab["pid"]

    def frames() -> int:
        r = host.hv("stats", "load", "--json")
        assert r.returncode == 0, r.stderr
        ports = json.loads(r.stdout)["switches"]["lan"]["ports"]
        return sum(p["rx_frames"] for p in (ports.values() if isinstance(ports, dict) else ports))

    wait_until_sync(lambda: frames() > 20_000, timeout=60, what="traffic")
    before = _rss(pid)
    clients = [_capture_client(host, "hv-load", "lan") for _ in range(CAPTURES_PER_SWITCH)]
    try:
        assert all(answer["ok"] for _, answer in clients)
        extra, answer = _capture_client(host, "hv-load", "lan")
        extra.close()
        assert not answer["ok"] and "8 live captures" in answer["error"], answer

        def all_full() -> bool:
            (lab,) = host.ps("load")
            caps = lab["captures"]
            return len(caps) == CAPTURES_PER_SWITCH and all(c["dropped"] > 100 for c in caps)

        wait_until_sync(all_full, timeout=90, what="every capture buffer full and dropping")
        grown = _rss(pid) - before
        # a chunk being sent and a buffer filling per client, and slack for the rest (8
        # clients of 8 MiB buffers grew it by 64 MiB)
        assert 2 * CAPTURES_PER_SWITCH * CAPTURE_BUFFER <= 16 << 20
        assert grown < 32 << 20, f"{grown / 2**20:.1f} MiB"
    finally:
        for s, _ in clients:
            s.close()
    assert host.hv("down", "load").returncode == 0


async def test_a_capture_client_learns_how_many_frames_were_dropped() -> None:
    """Frames dropped for a slow client are reported in the stream: an Interface Statistics
    Block (isb_ifdrop, as Wireshark shows it) before the first frame after the drops, and at
    the end; ``PcapngBlocks`` (what ``hv capture`` reads with) adds them up."""
    from hv.lab._control import LiveCapture
    from netfabric.switch import Switch

    sw = Switch("lan")
    a = sw.open_port("a")
    sw.open_port("b")
    cap = LiveCapture(sw, limit=5_000)
    sw.add_listener(cap)
    frame = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x00" + bytes(986)
    blocks = PcapngBlocks()
    for _ in range(10):
        a.send(frame)
    assert cap.dropped == 6
    stream = blocks.feed(await cap.box.get() or b"")  # the client resumes reading
    assert blocks.dropped == 0
    a.send(frame)
    stream += blocks.feed(await cap.box.get() or b"")
    assert blocks.dropped == 6 and cap.packets == 5
    for _ in range(10):
        a.send(frame)
    cap.close()
    while (chunk := await cap.box.get()) is not None:
        stream += blocks.feed(chunk)
    assert blocks.dropped == cap.dropped > 6 and cap.packets + cap.dropped == 21
    t = subprocess.run(
        ["tshark", "-r", "-", "-T", "fields", "-e", "frame.number"],
        input=stream, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert len(t.stdout.split()) == cap.packets  # the statistics blocks are valid pcapng
