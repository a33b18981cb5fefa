"""The guest agent and its protocol (hv/_exec.py, userland/agent.c), without a guest: the
agent built for this host listens on a Unix socket, and the same ``Agent`` client that talks
to it over virtio-vsock in a VM talks to it here. The sans-IO frame reader is tested on its
own. Real guests: tests/test_exec_guest.py."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from hv._exec import (
    FRAME_MAX,
    Agent,
    AgentUnavailable,
    CommandFailed,
    ExecError,
    ExecTimeout,
    Exited,
    FrameReader,
    Output,
    ProtocolError,
    exec_request,
    frame,
)
from tests.helpers import host_userland, wait_until, wait_until_sync

TEN_MB = 10_000_000


@pytest.fixture(scope="module")
def hvbox() -> Path:
    return host_userland()


@pytest.fixture
def agent_sock(hvbox: Path, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["hv-agent", "-u", str(sock)], executable=hvbox, cwd=tmp_path)
    try:
        wait_until_sync(sock.exists, "the agent's socket", timeout=10)
        yield sock, proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def agent(agent_sock: tuple[Path, subprocess.Popen[bytes]]) -> Agent:
    sock, _ = agent_sock

    async def connect() -> trio.SocketStream:
        return await trio.open_unix_socket(str(sock))

    return Agent(connect, "the test agent")


async def test_exit_status_stdout_stderr_separate(agent: Agent) -> None:
    r = await agent.exec("sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")


async def test_ten_megabytes_of_stdout_unchanged(agent: Agent) -> None:
    r = await agent.exec("sh", "-c", f"yes 0123456789abcdef | head -c {TEN_MB}")
    assert r.returncode == 0
    expected = (b"0123456789abcdef\n" * (TEN_MB // 17 + 1))[:TEN_MB]
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(expected).hexdigest()


async def test_stdin_env_cwd(agent: Agent, tmp_path: Path) -> None:
    data = os.urandom(300_000)  # several input frames; cat echoes it back
    r = await agent.exec("cat", stdin=data)
    assert r.stdout == data
    r = await agent.exec("sh", "-c", 'echo "$GREETING"; pwd', env={"GREETING": "hi"}, cwd="/tmp")
    assert r.stdout == b"hi\n/tmp\n"


async def test_a_command_that_ignores_its_input_ends(agent: Agent) -> None:
    r = await agent.exec("true", stdin=os.urandom(3_000_000))
    assert r.returncode == 0


async def test_signal_and_check(agent: Agent) -> None:
    r = await agent.exec("sh", "-c", "kill -9 $$")
    assert r.returncode == -signal.SIGKILL
    with pytest.raises(CommandFailed, match="exited 1: nope"):
        await agent.exec("sh", "-c", "echo nope >&2; exit 1", check=True)


async def test_no_such_program_or_folder(agent: Agent) -> None:
    with pytest.raises(ExecError, match="cannot run no-such-program: No such file") as e:
        await agent.exec("no-such-program")
    assert e.value.errno == 2
    with pytest.raises(ExecError, match="cannot change to /nowhere"):
        await agent.exec("true", cwd="/nowhere")


async def test_pty(agent: Agent) -> None:
    async with agent.open_exec(["sh", "-c", "tty; stty size"], tty=True, rows=33, cols=101) as p:
        out = b"".join([e.data async for e in p.events() if isinstance(e, Output)])
    assert p.returncode == 0
    lines = out.replace(b"\r", b"").split(b"\n")
    assert lines[0].startswith(b"/dev/pts/"), out
    assert lines[1] == b"33 101", out


async def test_pty_input_and_resize(agent: Agent) -> None:
    async with agent.open_exec(["sh", "-c", "read x; stty size; echo got $x"], stdin=True,
                               tty=True, rows=10, cols=20) as p:  # fmt: skip
        await p.resize(40, 132)
        await p.send_input(b"hello\n")
        out = b"".join([e.data async for e in p.events() if isinstance(e, Output)])
    assert b"40 132" in out and b"got hello" in out, out


async def test_concurrent_execs(agent: Agent) -> None:
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        results[i] = (await agent.exec("sh", "-c", f"sleep 0.2; echo {i}")).stdout

    async with trio.open_nursery() as n:
        for i in range(6):
            n.start_soon(one, i)
    assert results == {i: f"{i}\n".encode() for i in range(6)}


async def test_timeout_kills_the_command(agent: Agent, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(ExecTimeout, match=r"did not end within 0\.5 s"):
        await agent.exec("sh", "-c", f"echo $$ > {pidfile}; exec sleep 60", timeout=0.5)
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    await wait_until(gone, "the timed-out command to be killed", timeout=10)


async def test_host_that_stops_reading_holds_the_command_then_leaving_kills_it(
    agent: Agent, tmp_path: Path
) -> None:
    """Back-pressure: a reader that takes nothing lets only a bounded amount through (the
    pipe and socket buffers); going away ends the command; the agent goes on."""
    count = tmp_path / "count"
    script = f"i=0; while :; do echo line; i=$((i+1)); echo $i > {count}; done"
    async with agent.open_exec(["sh", "-c", script]):
        await wait_until(count.exists, "the command to start")
        await wait_until(lambda: int(count.read_text() or 0) > 10, "output", timeout=10)
        with trio.move_on_after(1.0):  # it blocks on the full pipe: the count stops
            while True:
                before = count.read_text()
                await trio.sleep(0.2)
                if count.read_text() == before:
                    break
        held = int(count.read_text() or 0)
        assert held * 5 < 8 << 20, f"{held} lines went out with nobody reading"
    r = await agent.exec("echo", "still here")
    assert r.stdout == b"still here\n"


async def test_copy_in_and_out_binary(agent: Agent, tmp_path: Path) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(3 * FRAME_MAX + 12345))
    src.chmod(0o751)
    guest = tmp_path / "guest"
    guest.mkdir()
    await agent.copy_in(src, f"{guest}/")
    assert (guest / "blob.bin").read_bytes() == src.read_bytes()
    assert (guest / "blob.bin").stat().st_mode & 0o777 == 0o751
    back = tmp_path / "back"
    back.mkdir()
    await agent.copy_out(f"{guest}/blob.bin", back)
    assert (
        hashlib.sha256((back / "blob.bin").read_bytes()).digest()
        == hashlib.sha256(src.read_bytes()).digest()
    )
    assert (back / "blob.bin").stat().st_mode & 0o777 == 0o751
    assert [p.name for p in back.iterdir()] == ["blob.bin"]  # no temporary left


async def test_copy_errors_are_clear(agent: Agent, tmp_path: Path) -> None:
    with pytest.raises(ExecError, match="/no/such/file: No such file or directory") as e:
        await agent.copy_out("/no/such/file", tmp_path / "x")
    assert e.value.errno == 2
    assert not list(tmp_path.glob("*x*"))
    src = tmp_path / "f"
    src.write_bytes(b"data" * 100_000)
    with pytest.raises(ExecError, match="copy to the test agent: /no/such/dir/f: No such file"):
        await agent.copy_in(src, "/no/such/dir/f")


async def test_agent_killed_mid_command(
    agent: Agent, agent_sock: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    """The agent dies while it serves a request: the client says so, it does not hang."""
    async with agent.open_exec(["sh", "-c", "echo started; exec sleep 60"]) as p:
        event = await p.next_event()
        assert event == Output(1, b"started\n")
        agent_sock[1].kill()
        with trio.fail_after(10), pytest.raises(AgentUnavailable, match="closed the connection"):
            await p.next_event()


def _children(pid: int) -> list[str]:
    """The processes whose parent is ``pid``: their states (R, S, Z...)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (d / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[1]) == pid:
                    out.append(fields[0])
    return out


async def test_one_agent_process_serves_concurrent_requests_and_reaps(
    agent: Agent, agent_sock: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The agent serves every connection in one process (no process per request): many
    requests at once, of every kind, each gets its own answer; a connection whose host stops
    reading holds only its own command; every command is reaped (no zombie, no child left)."""
    pid = agent_sock[1].pid
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(300_000))
    results: dict[str, object] = {}

    async def one(i: int) -> None:
        kind = i % 5
        if kind == 0:
            results[f"echo{i}"] = (await agent.exec("sh", "-c", f"echo {i}; exit {i % 7}")).stdout
        elif kind == 1:
            data = str(i).encode() * 50_000
            results[f"cat{i}"] = (await agent.exec("cat", stdin=data)).stdout == data
        elif kind == 2:
            async with agent.open_exec(["tty"], tty=True) as p:
                out = b"".join([e.data async for e in p.events() if isinstance(e, Output)])
            results[f"tty{i}"] = out.startswith(b"/dev/pts/")
        elif kind == 3:
            await agent.copy_out(str(blob), tmp_path / f"back{i}")
            results[f"get{i}"] = (tmp_path / f"back{i}").read_bytes() == blob.read_bytes()
        else:
            await agent.copy_in(blob, str(tmp_path / f"put{i}"))
            results[f"put{i}"] = (tmp_path / f"put{i}").read_bytes() == blob.read_bytes()

    with trio.fail_after(60):
        async with (
            agent.open_exec(["sh", "-c", "while :; do echo line; done"]),  # held: nobody reads
            trio.open_nursery() as n,
        ):
            for i in range(25):
                n.start_soon(one, i)
    want: dict[str, object] = {}
    for i in range(25):
        kind = ("echo", "cat", "tty", "get", "put")[i % 5]
        want[f"{kind}{i}"] = f"{i}\n".encode() if kind == "echo" else True
    assert results == want
    await wait_until(lambda: _children(pid) == [], "every command to be reaped", timeout=10)


async def test_commands_get_default_signals_and_an_empty_mask(agent: Agent) -> None:
    """The agent ignores SIGPIPE and blocks SIGCHLD; its commands get neither."""
    r = await agent.exec("sh", "-c", "kill -PIPE $$; echo survived")
    assert r.returncode == -signal.SIGPIPE, r
    r = await agent.exec("sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status")
    assert r.stdout.split() == [b"SigBlk:", b"0" * 16, b"SigIgn:", b"0" * 16], r


# -- the sans-IO frames ----------------------------------------------------------------------


def test_frame_reader_pieces() -> None:
    r = FrameReader()
    data = frame(b"o"[0], b"abc") + frame(b"x"[0], struct.pack(">BI", 0, 7))
    for i in range(len(data)):  # a byte at a time
        r.feed(data[i : i + 1])
    assert r.next_event() == Output(1, b"abc")
    assert r.next_event() == Exited(7)
    assert r.next_event() is None


def test_frame_reader_bounds() -> None:
    r = FrameReader()
    r.feed(struct.pack(">BI", b"o"[0], FRAME_MAX + 1))
    with pytest.raises(ProtocolError, match="frame of 1048577 bytes"):
        r.next_event()
    r = FrameReader()
    r.feed(struct.pack(">BI", 0x99, 1) + b"z")
    with pytest.raises(ProtocolError, match="unknown type 0x99"):
        r.next_event()
    r = FrameReader()
    r.feed(frame(b"o"[0], b"abcdef")[:-2])
    r.feed(b"")
    with pytest.raises(ProtocolError, match="middle of a frame"):
        r.next_event()
    r = FrameReader()
    r.feed(frame(b"x"[0], b"\0"))
    with pytest.raises(ProtocolError, match="malformed 'x' frame"):
        r.next_event()


def test_exec_request_layout() -> None:
    f = exec_request(["sh", "-c", ""], env={"A": "1"}, cwd="/tmp", stdin=True, tty=True,
                     rows=24, cols=80)  # fmt: skip
    kind, length = struct.unpack(">BI", f[:5])
    assert (kind, length) == (b"X"[0], len(f) - 5)
    assert f[5:14] == struct.pack(">BHHHH", 3, 24, 80, 3, 1)
    assert f[14:] == b"/tmp\0sh\0-c\0\0A=1\0"
    with pytest.raises(ValueError, match="NUL"):
        exec_request(["a\0b"])
    with pytest.raises(ValueError, match="empty"):
        exec_request([])


# -- fuzz: what a hostile agent sends -------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            # well-formed headers of every type and of lengths around the bound
            st.builds(
                lambda kind, n, tail: struct.pack(">BI", kind, n) + tail,
                st.integers(0, 255),
                st.sampled_from([0, 1, 4, 5, 64, FRAME_MAX, FRAME_MAX + 1, 0xFFFFFFFF]),
                st.binary(max_size=16),
            ),
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_fuzz_frame_reader_raises_only_protocol_errors(chunks: list[bytes], end: bool) -> None:
    """Any bytes in any pieces: events or ProtocolError, never another exception, and the
    reader never holds more than one frame plus the piece that just came."""
    r = FrameReader()
    try:
        for chunk in [*chunks, b""] if end else chunks:
            r.feed(chunk)
            while r.next_event() is not None:
                pass
            assert len(r._buf) <= 5 + FRAME_MAX + max(len(chunk), 1)
    except ProtocolError:
        pass
