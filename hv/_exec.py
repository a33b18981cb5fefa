"""``vm.exec()``, ``vm.copy_in()``, ``vm.copy_out()``: the host's side of the guest agent.

Every Linux guest of hv's image runs ``hv-agent`` (hv/images/linux/userland/agent.c), started
by init before the network, listening on virtio-vsock port ``AGENT_PORT``. No network address
is involved, so exec works in a guest whose network is down. docs/EXEC.md is the protocol's
description for people; this is its code.

The protocol. One request per connection; the connection ends with it. Everything is a
frame: ``u8 type, u32 length (big-endian), length bytes``, the length at most ``FRAME_MAX``
(1 MiB) either way; a peer that sends a longer one, or an unknown type, has broken the
protocol and the connection is dropped.

The host's first frame is the request:

- ``X`` exec: ``u8 flags`` (1: input follows, 2: a pty), ``u16 rows, u16 cols`` (the pty's
  size; 0: the default), ``u16 argc, u16 envc``, then NUL-ended strings: the working folder
  (empty: the agent's, ``/``), ``argc`` arguments (``argv[0]`` is looked up in ``PATH``),
  ``envc`` ``KEY=VALUE`` (added to the agent's environment, replacing a variable of the same
  name).
- ``P`` put a file: ``u32 mode``, the path, NUL. The file's bytes follow as ``i`` frames and
  a ``c``; the agent writes ``PATH.hv-cp-PID-SLOT`` and renames it into place at the end, so a
  copy cut short leaves no half file.
- ``G`` get a file: the path, NUL.

Then, host to agent: ``i`` input bytes (the command's stdin, a put file's bytes), ``c`` end
of input, ``w`` the pty's new size (``u16 rows, u16 cols``), ``k`` a signal (``u8``) for the
command. Agent to host: ``o`` stdout (a pty's output; a got file's bytes), ``e`` stderr,
``m`` a got file's mode (``u32``), ``x`` the end: ``u8 how`` (0: exited, 1: killed by a
signal) and ``u32`` its code or signal (0 for a put or get that worked), ``r`` an error
instead: ``u32 errno`` and a message (the command could not start: ``ENOENT``; no such
file).

Flow control is the stream's: each side reads the next frame only when it has done with the
last, so 10 MB of output streams in 64 KiB frames with a bounded amount in flight, and a
host that stops reading holds the command (its pipe fills). A host that goes away ends the
request: the agent kills the command (and a pty's session) and goes on.

``FrameReader`` and the request builders are sans-IO: the trio ``Agent`` here (over
virtio-vsock, or any stream: the tests run the agent, built for the host, on a Unix socket)
and the blocking client of ``hv exec`` / ``hv cp`` (hv/cli/_exec.py, through the lab's
control socket) share them.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from hv._errors import HvError

AGENT_PORT = 1000  # the agent's AF_VSOCK port (HV_AGENT_PORT in userland/hv.h)
FRAME_MAX = 1 << 20  # the longest frame payload either side takes (HV_FRAME_MAX)
CHUNK = 64 << 10  # input sent a frame at a time
MAX_OUTPUT = 256 << 20  # what exec() collects of each of stdout and stderr at most
READY_TIMEOUT = 60.0  # how long a first exec waits for the guest's agent to answer
RETRY_S = 0.02  # between connection attempts while the agent is not listening yet

HEADER = struct.Struct(">BI")

# host -> agent
EXEC, PUT, GET = b"X"[0], b"P"[0], b"G"[0]
INPUT, INPUT_END, WINSIZE, SIGNAL = b"i"[0], b"c"[0], b"w"[0], b"k"[0]
# agent -> host
STDOUT, STDERR, MODE, EXIT, ERROR = b"o"[0], b"e"[0], b"m"[0], b"x"[0], b"r"[0]
_ANSWERS = frozenset({STDOUT, STDERR, MODE, EXIT, ERROR})
_REQUESTS = frozenset({EXEC, PUT, GET, INPUT, INPUT_END, WINSIZE, SIGNAL})


class ExecError(HvError):
    """A command or copy in a guest failed before it could give an exit status: it could
    not start (``errno``: ``ENOENT`` for no such program or file), the agent is missing or
    went away, it broke the protocol, or it took too long."""

    def __init__(self, message: str, errno: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.detail = detail if detail is not None else message  # without where it happened


class AgentUnavailable(ExecError):
    """No agent answers in the guest: the VM has no vsock device, it stopped, the agent is
    not running (killed), or it did not come up in time."""


class ExecTimeout(ExecError, TimeoutError):
    """The command did not end within ``timeout`` (it was killed)."""


class ProtocolError(ExecError):
    """The agent broke the protocol (a frame too long, of an unknown type, cut short)."""


@dataclass(frozen=True)
class ExecResult:
    returncode: int  # the exit code; -N if a signal N killed it (as subprocess)
    stdout: bytes
    stderr: bytes

    def check_returncode(self) -> None:
        if self.returncode != 0:
            raise CommandFailed(self)


class CommandFailed(ExecError):
    """``exec(..., check=True)`` of a command that did not exit 0."""

    def __init__(self, result: ExecResult) -> None:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        super().__init__(
            f"the command exited {result.returncode}" + (f": {tail[0]}" if tail else "")
        )
        self.result = result


# -- the frames (sans-IO) -----------------------------------------------------------------


def frame(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > FRAME_MAX:
        raise ValueError(f"a frame of {len(payload)} bytes (at most {FRAME_MAX})")
    return HEADER.pack(kind, len(payload)) + payload


def _z(text: str | bytes, what: str) -> bytes:
    data = os.fsencode(text)
    if b"\0" in data:
        raise ValueError(f"{what} contains a NUL byte: {text!r}")
    return data + b"\0"


def exec_request(
    argv: Sequence[str | bytes],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bool = False,
    tty: bool = False,
    rows: int = 0,
    cols: int = 0,
) -> bytes:
    """The ``X`` frame that runs ``argv`` (see the module docstring)."""
    if not argv:
        raise ValueError("exec needs a command (argv is empty)")
    env = dict(env or {})
    for key in env:
        if not key or "=" in key:
            raise ValueError(f"an environment variable's name may not be {key!r}")
    if len(argv) > 0xFFFF or len(env) > 0xFFFF:
        raise ValueError("too many arguments or variables (at most 65535 each)")
    flags = (1 if stdin else 0) | (2 if tty else 0)
    head = struct.pack(">BHHHH", flags, min(rows, 0xFFFF), min(cols, 0xFFFF), len(argv), len(env))
    body = _z(cwd or "", "cwd") + b"".join(_z(a, "an argument") for a in argv)
    body += b"".join(_z(f"{k}={v}", "the environment") for k, v in env.items())
    return frame(EXEC, head + body)


def put_request(path: str, mode: int) -> bytes:
    return frame(PUT, struct.pack(">I", mode & 0o7777) + _z(path, "the path"))


def get_request(path: str) -> bytes:
    return frame(GET, _z(path, "the path"))


def input_frames(data: bytes) -> list[bytes]:
    return [frame(INPUT, data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]


def winsize_frame(rows: int, cols: int) -> bytes:
    return frame(WINSIZE, struct.pack(">HH", min(rows, 0xFFFF), min(cols, 0xFFFF)))


def signal_frame(sig: int) -> bytes:
    return frame(SIGNAL, bytes([sig & 0xFF]))


@dataclass(frozen=True)
class Output:
    fd: int  # 1 stdout, 2 stderr
    data: bytes


@dataclass(frozen=True)
class Exited:
    returncode: int  # code, or -signal

    @property
    def status(self) -> int:
        """As a shell gives it: the code, or 128 + the signal."""
        return self.returncode if self.returncode >= 0 else 128 - self.returncode


@dataclass(frozen=True)
class Failed:
    errno: int
    message: str


@dataclass(frozen=True)
class Mode:
    mode: int


Event = Output | Exited | Failed | Mode


class FrameReader:
    """The agent's answer frames out of the bytes that arrive, without I/O: ``feed`` them (in
    pieces of any size; ``b""`` at the end), then ``next_event`` until it gives None. At most
    one frame (``FRAME_MAX``) is held; a longer or unknown one raises ``ProtocolError``, and
    so does an end in the middle of a frame. ``requests=True`` reads the host's frames
    instead (for tests and a fake agent)."""

    def __init__(self, requests: bool = False) -> None:
        self._buf = bytearray()
        self.closed = False
        self._kinds = _REQUESTS if requests else _ANSWERS

    def feed(self, data: bytes) -> None:
        if not data:
            self.closed = True
        self._buf += data

    def next_frame(self) -> tuple[int, bytes] | None:
        if len(self._buf) < HEADER.size:
            if self.closed and self._buf:
                raise ProtocolError("the agent's answer ends in the middle of a frame")
            return None
        kind, length = HEADER.unpack_from(self._buf)
        if kind not in self._kinds:
            raise ProtocolError(f"the agent sent a frame of unknown type {kind:#04x}")
        if length > FRAME_MAX:
            raise ProtocolError(f"the agent sent a frame of {length} bytes (at most {FRAME_MAX})")
        end = HEADER.size + length
        if len(self._buf) < end:
            if self.closed:
                raise ProtocolError("the agent's answer ends in the middle of a frame")
            return None
        payload = bytes(self._buf[HEADER.size : end])
        del self._buf[:end]
        return kind, payload

    def next_event(self) -> Event | None:
        got = self.next_frame()
        if got is None:
            return None
        kind, p = got
        if kind == STDOUT:
            return Output(1, p)
        if kind == STDERR:
            return Output(2, p)
        if kind == MODE and len(p) == 4:
            return Mode(struct.unpack(">I", p)[0])
        if kind == EXIT and len(p) == 5:
            how, value = struct.unpack(">BI", p)
            return Exited(-value if how else value)
        if kind == ERROR and len(p) >= 4:
            (err,) = struct.unpack_from(">I", p)
            return Failed(err, p[4:].decode(errors="replace"))
        raise ProtocolError(f"the agent sent a malformed {chr(kind)!r} frame ({len(p)} bytes)")


# -- the agent over a trio stream -----------------------------------------------------------


class _Stream(Protocol):
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...
    async def aclose(self) -> None: ...


Connect = Callable[[], Awaitable[_Stream]]


class Process:
    """A command running in the guest (``Agent.open_exec``): send it input, resize its pty,
    signal it, and read its events (``Output``, then one ``Exited``)."""

    def __init__(self, stream: _Stream, where: str) -> None:
        self._stream = stream
        self._reader = FrameReader()
        self._send_lock = trio.Lock()
        self.where = where
        self.returncode: int | None = None

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self._stream.send_all(data)

    async def send_input(self, data: bytes) -> None:
        for f in input_frames(data):
            await self._send(f)

    async def close_input(self) -> None:
        await self._send(frame(INPUT_END))

    async def resize(self, rows: int, cols: int) -> None:
        await self._send(winsize_frame(rows, cols))

    async def signal(self, sig: int) -> None:
        await self._send(signal_frame(sig))

    async def next_event(self) -> Output | Exited | Mode | None:
        """The next event; None after ``Exited``. ``ExecError`` if the command could not
        start; ``AgentUnavailable`` if the agent went away without an exit status."""
        if self.returncode is not None:
            return None
        while True:
            event = self._reader.next_event()
            if event is not None:
                break
            if self._reader.closed:
                raise AgentUnavailable(
                    f"the agent in {self.where} closed the connection before the command "
                    "ended (was it killed, or the VM stopped?)"
                )
            try:
                data = await self._stream.receive_some(CHUNK * 4)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                raise AgentUnavailable(f"the connection to {self.where}'s agent broke: {e}") from e
            self._reader.feed(bytes(data))
        if isinstance(event, Failed):
            raise ExecError(f"{self.where}: {event.message}", event.errno, event.message)
        if isinstance(event, Exited):
            self.returncode = event.returncode
        return event

    async def events(self) -> AsyncIterator[Output | Exited | Mode]:
        while (event := await self.next_event()) is not None:
            yield event


class Agent:
    """The guest agent of one VM, reached through ``connect`` (a new stream per request)."""

    def __init__(self, connect: Connect, where: str = "the guest") -> None:
        self._connect = connect
        self.where = where

    @contextlib.asynccontextmanager
    async def open_exec(
        self,
        argv: Sequence[str | bytes],
        *,
        stdin: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        tty: bool = False,
        rows: int = 0,
        cols: int = 0,
    ) -> AsyncIterator[Process]:
        """Start ``argv``; the ``Process`` for the block. Leaving the block closes the
        connection, and the agent kills a command still running."""
        request = exec_request(argv, env=env, cwd=cwd, stdin=stdin, tty=tty, rows=rows, cols=cols)
        stream = await self._connect()
        try:
            proc = Process(stream, self.where)
            await proc._send(request)
            yield proc
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def exec(
        self,
        *argv: str | bytes,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        check: bool = False,
        max_output: int = MAX_OUTPUT,
    ) -> ExecResult:
        """Run ``argv`` in the guest to its end: its exit code, stdout and stderr."""
        out: list[bytes] = []
        err: list[bytes] = []
        sizes = [0, 0]
        code: int | None = None
        try:
            with _deadline(timeout, f"{argv[0]!r} in {self.where}" if argv else self.where):
                async with (
                    self.open_exec(argv, stdin=stdin is not None, env=env, cwd=cwd) as p,
                    trio.open_nursery() as nursery,
                ):
                    if stdin is not None:
                        nursery.start_soon(_feed, p, stdin)
                    async for event in p.events():
                        if isinstance(event, Output):
                            sizes[event.fd - 1] += len(event.data)
                            if sizes[event.fd - 1] > max_output:
                                raise ExecError(
                                    f"{argv[0]!r} in {self.where} wrote more than "
                                    f"{max_output} bytes to its "
                                    f"{'stdout' if event.fd == 1 else 'stderr'}"
                                )
                            (out if event.fd == 1 else err).append(event.data)
                        elif isinstance(event, Exited):
                            code = event.returncode
                    nursery.cancel_scope.cancel()
        except* ExecError as group:
            raise group.exceptions[0] from None
        assert code is not None
        result = ExecResult(code, b"".join(out), b"".join(err))
        if check:
            result.check_returncode()
        return result

    async def copy_in(self, local: str | os.PathLike[str], guest_path: str) -> None:
        """Copy the local file into the guest (a ``guest_path`` ending in ``/``: into that
        folder, under the file's name). The file keeps its mode bits."""
        src = Path(local)
        if guest_path.endswith("/"):
            guest_path += src.name
        try:
            f = src.open("rb")
            mode = os.fstat(f.fileno()).st_mode
        except OSError as e:
            raise ExecError(f"cannot read {src}: {e.strerror or e}", e.errno) from None
        with f:
            stream = await self._connect()
            try:
                await stream.send_all(put_request(guest_path, mode))
                proc = Process(stream, self.where)
                failed: ExecError | None = None
                async with trio.open_nursery() as nursery:

                    async def send() -> None:
                        with contextlib.suppress(trio.BrokenResourceError, OSError):
                            while chunk := f.read(CHUNK):
                                await proc._send(frame(INPUT, chunk))
                            await proc.close_input()

                    nursery.start_soon(send)
                    try:
                        while await proc.next_event() is not None:
                            pass
                    except ExecError as e:
                        failed = e
                    nursery.cancel_scope.cancel()
                if failed is not None:
                    raise ExecError(
                        f"copy to {self.where}: {failed.detail}", failed.errno
                    ) from None
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    async def copy_out(self, guest_path: str, local: str | os.PathLike[str]) -> None:
        """Copy a file out of the guest to ``local`` (a folder: into it, under the file's
        name), with its mode bits. Written to a temporary name, then renamed into place."""
        dst = Path(local)
        if dst.is_dir():
            dst = dst / Path(guest_path).name
        tmp = dst.with_name(f".{dst.name}.hv-cp-{os.getpid()}")
        stream = await self._connect()
        try:
            await stream.send_all(get_request(guest_path))
            proc = Process(stream, self.where)
            mode: int | None = None
            with tmp.open("wb") as f:
                try:
                    async for event in proc.events():
                        if isinstance(event, Output):
                            f.write(event.data)
                        elif isinstance(event, Mode):
                            mode = event.mode
                except ExecError as e:
                    raise ExecError(f"copy from {self.where}: {e.detail}", e.errno) from None
            if mode is not None:
                tmp.chmod(mode)
            tmp.replace(dst)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            with contextlib.suppress(Exception):
                await stream.aclose()


async def _feed(proc: Process, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await proc.send_input(data)
        await proc.close_input()


@contextlib.contextmanager
def _deadline(timeout: float | None, what: str) -> Any:
    if timeout is None:
        yield
        return
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        raise ExecTimeout(f"{what} did not end within {timeout:g} s (it was killed)") from None


# -- the agent of a VM, over virtio-vsock ---------------------------------------------------


class _VmLike(Protocol):  # hv.Vm, as this module needs it (no import: no cycle with hv._vm)
    name: str
    _agent: Any

    @property
    def vsock(self) -> Any: ...  # hv.virtio.VirtioVsock | None


class VmAgent(Agent):
    """``Agent`` of a VM: connects over its virtio-vsock device to ``AGENT_PORT``.

    Until the agent has answered once, a refused connection means it is not up yet (the
    guest boots): retried every ``RETRY_S`` for up to ``ready_timeout``. Once it has answered,
    a refusal means it is gone (killed): an error at once, never a wait."""

    def __init__(self, vm: _VmLike, ready_timeout: float = READY_TIMEOUT) -> None:
        super().__init__(self._vsock_connect, f"VM {vm.name}")
        self.vm = vm
        self.ready_timeout = ready_timeout
        self.seen = False  # the agent has answered once

    async def connect(self, ready_timeout: float | None = None) -> _Stream:
        """A connection to the agent (a request goes on it); waits for the agent to come up
        for ``ready_timeout`` (default: this agent's) if it has not answered yet."""
        return await self._vsock_connect(ready_timeout)

    async def _vsock_connect(self, ready_timeout: float | None = None) -> _Stream:
        from hv.virtio import VsockRefused, VsockUnavailable  # (the device's module)

        vm = self.vm
        wait = self.ready_timeout if ready_timeout is None else ready_timeout
        dev = vm.vsock
        if dev is None:
            raise AgentUnavailable(
                f"VM {vm.name} has no vsock device, so no agent to run commands: give it "
                "one (VmConfig(vsock=True); a Linux kernel gets one while a virtio slot is free)"
            )
        deadline = time.monotonic() + wait
        with trio.move_on_after(wait):
            while True:
                try:
                    await dev.wait_ready()
                    stream = await dev.connect(AGENT_PORT)
                except VsockRefused:
                    if self.seen:
                        raise AgentUnavailable(
                            f"the agent in VM {vm.name} is not running any more (killed?): "
                            "nothing listens on vsock port "
                            f"{AGENT_PORT}; start it in the guest with 'hv-agent &'"
                        ) from None
                except VsockUnavailable as e:
                    raise AgentUnavailable(
                        f"VM {vm.name} cannot be reached over vsock: {e}"
                    ) from None
                else:
                    self.seen = True
                    return stream  # type: ignore[no-any-return]
                if time.monotonic() > deadline:
                    break
                await trio.sleep(RETRY_S)
        raise AgentUnavailable(
            f"no agent answered in VM {vm.name} within {wait:g} s (vsock port "
            f"{AGENT_PORT}): is it a Linux guest of hv's image, booted to its init?"
        )


def agent_of(vm: _VmLike) -> VmAgent:
    """The VM's agent (one per VM: it remembers whether the agent has answered)."""
    agent = getattr(vm, "_agent", None)
    if agent is None:
        agent = vm._agent = VmAgent(vm)
    return agent
