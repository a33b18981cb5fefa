"""The control socket of a running lab: what ``hv ps``, ``hv console``, ``hv capture``,
``hv stop`` and ``hv down`` talk to from another process (docs/CONTROL.md is the protocol).

Each lab that ``hv up`` runs listens on one Unix socket, ``$XDG_RUNTIME_DIR/hvfabric/labs/
NAME.sock`` (or ``/tmp/hvfabric-$UID/labs/NAME.sock`` without a runtime directory). Only its
owner can use it: the directories are 0700 and the socket 0600, and the server also checks
each client's uid (SO_PEERCRED) when it connects, refusing (and counting) any other. A lock
file next to the socket (``NAME.lock``, held while the lab runs) makes a lab name unique: a
second ``hv up`` of the same name is refused, and a socket left behind by a lab that died is
replaced. The socket and the lock file are removed when the lab ends.

Requests and responses are JSON objects, one a line. ``console`` and ``capture`` turn the
connection into a byte stream after their response (console bytes both ways; a live pcapng
file of a switch). Nothing a client does can slow the lab down: console output and capture
data for a client wait in a bounded buffer, and what does not fit is dropped and counted.

The server owns the VMs' console output while the lab runs: it prints it (prefixed by VM
name, as ``hv up`` always did) and hands it to attached consoles, keeping a tail of each for
the next client to attach, and writes each to a bounded log file on disk for ``hv logs``
(``hv.lab._logs``), which outlives the lab.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, cast

import trio

from hv._errors import ConfigError, HostError, HvError
from hv._exec import AGENT_PORT, CHUNK, READY_TIMEOUT, ExecError, agent_of
from hv._log import get_logger
from hv._status import StopInfo
from hv._vm import Vm, VmState
from hv.lab._link import link
from hv.lab._logs import ConsoleLog, clear_logs, prune_logs
from hv.lab._netem import netem
from hv.lab._protocol import (
    LOG_ENV,
    OPS,
    PROTOCOL,
    SUN_PATH_MAX,
    VERSION,
    ControlError,
    LabPaths,
    LineBuffer,
    LineTooLong,
    already_running,
    ended_labs,
    forget_ended,
    lock_holder,
    lock_text,
    peer_credentials,
    private_labs_dir,
    record_ended,
    refusal,
    running_labs,
)
from hv.lab._runner import LabRun, Output, PrefixedOutput
from hv.lab._spec import LabSpec
from hv.lab._stats import snapshot
from netfabric.capture import STATS_BLOCK, PcapngWriter
from netfabric.frame import Frame
from netfabric.switch import Switch

log = get_logger("hv.control")

TAIL_KEPT = 64 << 10  # console output kept per VM for the next client that attaches
TAIL_DEFAULT = 4096  # what a console client gets of it unless it asks for more or less
CONSOLE_BUFFER = 1 << 20  # console output a client may lag behind before bytes are dropped
CAPTURE_BUFFER = 1 << 20  # capture data a client may lag behind before frames are dropped
CAPTURES_PER_SWITCH = 8  # live capture clients at once on one switch
CAPTURES_PER_LAB = 32  # and on all the lab's switches
STOP_WAIT = 10.0  # how long ``stop`` waits for the VMs to stop before answering


# -- the server's buffers ------------------------------------------------------------------


class Outbox:
    """Bytes on their way to one client: bounded; what would overflow is dropped (counted)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._event = trio.Event()
        self.closed = False
        self.dropped = 0  # bytes (console) or frames (capture) dropped
        self.sent = 0

    def room(self, n: int) -> bool:
        return len(self._buf) + n <= self.limit

    def push(self, data: bytes, *, force: bool = False) -> bool:
        if self.closed:
            return False
        if not force and not self.room(len(data)):
            self.dropped += len(data)
            return False
        self._buf += data
        self._event.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def get(self) -> bytes | None:
        """What is waiting (at least one byte); None once closed and empty."""
        while True:
            if self._buf:
                data = bytes(self._buf)
                self._buf.clear()
                self.sent += len(data)
                return data
            if self.closed:
                return None
            await self._event.wait()
            self._event = trio.Event()


class ConsoleFan:
    """A VM's console output: printed, kept (a tail), and copied to every attached client."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.tail = bytearray()
        self.clients: set[Outbox] = set()
        self.ended = False
        self.dropped = 0  # bytes dropped for clients that lagged (all clients, all time)
        self.attached = 0  # clients attached, all time

    def feed(self, data: bytes) -> None:
        self.tail += data
        if len(self.tail) > TAIL_KEPT:
            del self.tail[: len(self.tail) - TAIL_KEPT]
        for box in self.clients:
            before = box.dropped
            box.push(data)
            self.dropped += box.dropped - before

    def end(self) -> None:
        self.ended = True
        for box in self.clients:
            box.close()
        self.clients.clear()

    def attach(self, tail: int) -> Outbox:
        """A new client's outbox: up to ``tail`` bytes of recent output (from a line's start
        when there is one), then what comes."""
        box = Outbox(CONSOLE_BUFFER)
        recent = bytes(self.tail[-tail:]) if tail > 0 else b""
        if 0 < tail < len(self.tail):
            cut = recent.find(b"\n")
            if 0 <= cut < len(recent) - 1:
                recent = recent[cut + 1 :]
        if recent:
            box.push(recent, force=True)
        self.attached += 1
        if self.ended:
            box.close()
        else:
            self.clients.add(box)
        return box

    def detach(self, box: Outbox) -> None:
        self.clients.discard(box)


class _OutboxFile:
    """The file a PcapngWriter writes to: the outbox (room was checked per frame)."""

    def __init__(self, box: Outbox) -> None:
        self.box = box

    def write(self, data: bytes) -> int:
        self.box.push(data, force=True)
        return len(data)

    def flush(self) -> None:
        pass


class LiveCapture:
    """A switch listener that writes a pcapng stream for one client: a section header, an
    interface per port (ports plugged in later get theirs when they first send), then a
    packet per frame; frames that do not fit the client's buffer are dropped and counted.
    The client learns of drops in the stream: an Interface Statistics Block per interface
    that dropped (``isb_ifdrop``: its drops so far) before the next frame that fits, and at
    the end."""

    def __init__(self, switch: Switch, limit: int = CAPTURE_BUFFER) -> None:
        self.switch = switch
        self.box = Outbox(limit)
        self.writer = PcapngWriter(cast(BinaryIO, _OutboxFile(self.box)))
        self._iface: dict[int, int] = {}
        for pid in list(switch.ports):
            self._interface(pid)
        self.writer.flush()
        self.packets = 0
        self.dropped = 0
        self._drops: dict[int, int] = {}  # interface -> frames dropped, all time
        self._unreported = False

    def _interface(self, port_id: int) -> int:
        port = self.switch.ports.get(port_id)
        iface = self._iface[port_id] = self.writer.add_interface(
            port.name if port is not None else f"port{port_id}"
        )
        return iface

    def __call__(self, port_id: int, frame: Frame, ts: int) -> None:
        if self.box.closed:
            return
        iface = self._iface.get(port_id)
        if iface is None:
            iface = self._interface(port_id)
        for wire in frame.wire():
            report = STATS_BLOCK * len(self._drops) if self._unreported else 0
            if not self.box.room(len(wire) + 36 + report):
                self.dropped += 1
                self._drops[iface] = self._drops.get(iface, 0) + 1
                self._unreported = True
                continue
            if self._unreported:
                self._report(ts)
            self.writer.write(iface, wire, ts)
            self.packets += 1
        self.writer.flush()

    def _report(self, ts: int) -> None:
        for iface, n in self._drops.items():
            self.writer.write_drops(iface, n, ts)
        self._unreported = False

    def close(self) -> None:
        self.switch.remove_listener(self)
        if self._unreported and not self.box.closed:
            self._report(time.time_ns())  # past the limit: a few small blocks, once
        self.writer.flush()
        self.box.close()


# -- the server ----------------------------------------------------------------------------


def _exit(info: StopInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"code": info.exit_code, "kind": info.kind.value, "reason": info.reason}


class _Lines:
    """Request lines from a client's stream (``LineBuffer``); ``rest`` is what came after the
    last one."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = LineBuffer()

    async def line(self) -> bytes | None:
        while True:
            try:
                line = self.buffer.next_line()
            except LineTooLong:
                raise ControlError(
                    f"request line longer than {self.buffer.max_line} bytes"
                ) from None
            if line is not None or self.buffer.closed:
                return line
            self.buffer.feed(await self.stream.receive_some(65536))

    def rest(self) -> bytes:
        return self.buffer.rest()


async def _send(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(message, default=str).encode() + b"\n")


class ControlServer:
    """A lab's control socket, for the lab's life.

        with ControlServer(spec, path) as control:        # claims the name (or refuses)
            async with trio.open_nursery() as nursery:
                run = await nursery.start(run_lab, spec)  # the lab, its consoles unread
                status = await control.serve(run, output) # the socket, until the lab ends

    Console output goes to ``output`` (prefixed by VM name) and to attached clients.
    """

    def __init__(self, spec: LabSpec, file: Path | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.file = file.resolve() if file is not None else None
        self.log_file = os.environ.pop(LOG_ENV, None)
        self.paths: LabPaths | None = None
        self.pid = os.getpid()
        self.uid = os.getuid()
        self.started = time.time()
        self.run: LabRun | None = None
        self.refused = 0
        self.consoles: dict[str, ConsoleFan] = {}
        self.logs: dict[str, ConsoleLog] = {}  # each VM's console on disk (hv logs)
        self.captures: set[LiveCapture] = set()
        self.stopped_at: dict[str, float] = {}
        self.ending = False
        self._lock_fd: int | None = None
        self._listener: trio.SocketListener | None = None
        self._accepting = trio.CancelScope()
        self._closed = trio.Event()  # the socket is gone: the lab has ended
        self._streaming = 0  # clients being served a stream or waiting for the end
        self._fans_left = 0
        self._recorded = False  # in the record of ended labs (hv ps -a)

    # -- claiming the name ---------------------------------------------------------------

    def __enter__(self) -> ControlServer:
        self.claim()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def claim(self) -> None:
        """Take the lab's name: its lock, then clear a stale socket. A ConfigError if a lab of
        that name is running already."""
        folder = private_labs_dir()
        self.paths = paths = LabPaths.of(self.name, folder)
        if len(os.fsencode(paths.sock)) > SUN_PATH_MAX:
            raise HostError(
                f"the control socket's path {str(paths.sock)!r} is longer than a Unix socket "
                f"allows ({SUN_PATH_MAX} bytes): set XDG_RUNTIME_DIR to a shorter folder"
            )
        while True:
            fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise HostError(f"cannot lock {paths.lock}: {e.strerror or e}") from None
                raise ConfigError(already_running(self.name, lock_holder(paths.lock))) from None
            # The lab that held it may have removed the file meanwhile (release): then this
            # lock is on a file nobody else will look at; take the one at the path instead.
            held = os.fstat(fd)
            try:
                now = os.stat(paths.lock)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, lock_text(self.pid, self.file))
        self._lock_fd = fd
        with contextlib.suppress(FileNotFoundError):  # a lab that died left it: nobody answers
            os.unlink(paths.sock)
        with contextlib.suppress(OSError, HostError):  # the name runs again: not ended
            forget_ended(self.name)
        clear_logs(self.name, folder.parent)  # nor are its old logs this run's

    def release(self) -> None:
        if self.run is not None:  # ended without _finish (cancelled: Ctrl-C, SIGTERM)
            self._record_end(self.run.status if self.run.status is not None else 130)
        self._close_socket()
        if self._lock_fd is not None:
            if self.paths is not None:  # removed while held (see claim), then let go
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.paths.lock)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _close_socket(self) -> None:
        if self._listener is not None:
            self._listener.socket.close()
            self._listener = None
            if self.paths is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.paths.sock)

    async def _bind(self) -> trio.SocketListener:
        assert self.paths is not None, "claim() the name first"
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = str(self.paths.sock)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            await sock.bind(path)
            os.chmod(path, 0o600)  # the folder is 0700 already: nobody else got in meanwhile
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise HostError(f"cannot listen on {path}: {e.strerror or e}") from None
        self._listener = listener = trio.SocketListener(sock)
        return listener

    # -- running -------------------------------------------------------------------------

    async def serve(
        self,
        run: LabRun,
        output: Output | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> int:
        """Serve the socket for ``run`` until the lab ends; the lab's status. ``run`` is what
        ``hv.lab.run_lab(spec)`` started, without an output of its own: the VMs' consoles are
        the server's, printed to ``output`` (prefixed by VM name) and handed to clients.
        Started (``nursery.start``) once the socket listens."""
        if run.spec.name != self.name:
            raise ValueError(f"this control socket is lab {self.name}'s, not {run.spec.name}'s")
        self.spec = run.spec
        if self._lock_fd is None:
            self.claim()
        async with trio.open_nursery() as nursery:
            self.run = run
            self.started = time.time()
            prefixed = PrefixedOutput(output, list(run.vms)) if output is not None else None
            for name, vm in run.vms.items():
                fan = self.consoles[name] = ConsoleFan(vm)
                try:
                    self.logs[name] = ConsoleLog(
                        self.name, name, self.paths.sock.parent.parent if self.paths else None
                    )
                except OSError as e:
                    log.warning("no console log", lab=self.name, vm=name, error=str(e))
                self._fans_left += 1
                nursery.start_soon(self._pump_console, name, fan, prefixed)
            listener = await self._bind()
            nursery.start_soon(self._accept, listener)
            log.info("control socket", lab=self.name, path=str(self.paths and self.paths.sock))
            task_status.started()
            status = await run.wait()
            await self._finish()
            nursery.cancel_scope.cancel()
        return status

    async def _pump_console(self, name: str, fan: ConsoleFan, out: PrefixedOutput | None) -> None:
        vm = fan.vm
        try:
            while data := await vm.console.receive_some():
                if out is not None:
                    out.feed(name, data)
                fan.feed(data)
                if name in self.logs:
                    self.logs[name].write(data)
        finally:
            fan.end()
            if name in self.logs:
                self.logs[name].close()
            self._fans_left -= 1
        await vm.wait()
        self.stopped_at.setdefault(name, time.time())

    async def _finish(self) -> None:
        """The lab has ended: the rest of its output reaches clients, the socket goes, clients
        that wait for the end are told, streams are flushed and closed."""
        self.ending = True
        with trio.move_on_after(5):
            while self._fans_left:
                await trio.sleep(0.01)
        self._accepting.cancel()
        assert self.run is not None and self.run.status is not None
        self._record_end(self.run.status)  # before the socket goes: a client finds one or other
        self._close_socket()
        for cap in list(self.captures):
            cap.close()
        self._closed.set()
        with trio.move_on_after(3):
            while self._streaming:
                await trio.sleep(0.01)

    def _record_end(self, status: int) -> None:
        """Remember the lab's end (its last ps and status) for hv ps -a, hv console, hv down."""
        if self._recorded or self.run is None:
            return
        self._recorded = True
        entry = {**self.ps(), "state": "ended", "status": status, "ended": round(time.time(), 3)}
        entry["uptime"] = round(entry["ended"] - self.started, 3)
        try:
            record_ended(entry)
            # logs go with the lab's entry: those of labs no longer remembered, nor running
            keep = {e["name"] for e in ended_labs()} | set(running_labs()) | {self.name}
            prune_logs(keep, self.paths.sock.parent.parent if self.paths else None)
        except (OSError, HostError) as e:
            log.warning("cannot record the lab's end", lab=self.name, error=str(e))

    async def _accept(self, listener: trio.SocketListener) -> None:
        """Serve clients until the lab ends. The lab may have ended (and closed ``listener``)
        before this task first runs: then there is nobody to serve."""
        async with trio.open_nursery() as clients:
            with self._accepting:
                while not self._closed.is_set():
                    try:
                        stream = await listener.accept()
                    except trio.ClosedResourceError:
                        return
                    except OSError as e:  # out of file descriptors, ...: try again shortly
                        log.warning("accept failed", lab=self.name, error=str(e))
                        await trio.sleep(0.1)
                        continue
                    clients.start_soon(self._client, stream)

    async def _client(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve(stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away
        except* ControlError as group:
            with contextlib.suppress(Exception):
                await _send(stream, {"ok": False, "error": str(group.exceptions[0])})
        except* Exception as group:
            log.error("control client failed", lab=self.name, error=repr(group.exceptions[0]))
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        pid, uid, _ = peer_credentials(stream.socket)
        why = refusal(uid, self.uid, self.name)
        if why is not None:
            self.refused += 1
            log.warning("control client refused", lab=self.name, uid=uid, pid=pid)
            await _send(stream, {"ok": False, "error": why})
            return
        lines = _Lines(stream)
        while (line := await lines.line()) is not None:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, or nested deeper than it reads
                await _send(stream, {"ok": False, "error": "not JSON: one object a line"})
                continue
            if not isinstance(request, dict):
                await _send(stream, {"ok": False, "error": "a request is a JSON object"})
                continue
            op = request.get("op")
            if op == "console":
                return await self._console(stream, lines, request)
            if op == "capture":
                return await self._capture(stream, request)
            if op == "down":
                return await self._down(stream)
            if op == "agent":
                return await self._agent(stream, lines, request)
            try:
                answer = await self._simple(op, request)
            except ControlError as e:
                answer = {"ok": False, "error": str(e)}
            await _send(stream, answer)

    async def _simple(self, op: object, request: dict[str, Any]) -> dict[str, Any]:
        if op == "hello":
            return {"ok": True, "protocol": PROTOCOL, "version": VERSION, "lab": self.name,
                    "pid": self.pid, "ops": list(OPS),
                    "file": str(self.file) if self.file is not None else None}  # fmt: skip
        if op == "ps":
            return {"ok": True, **self.ps()}
        if op == "stats":
            return {"ok": True, "stats": self.stats()}
        if op == "netem":
            return {"ok": True, **self.netem(request)}
        if op == "link":
            return {"ok": True, **self.link(request)}
        if op == "snapshot":
            return {"ok": True, **(await self.snapshot(request))}
        if op == "stop":  # answered even when it ends the lab (the last VMs stopped)
            with self._stream():
                return {"ok": True, "stopped": await self._stop(request.get("vm"))}
        known = ", ".join(OPS)
        raise ControlError(f"unknown op {op!r} (ops: {known})")

    # -- the requests --------------------------------------------------------------------

    def _vm(self, name: object) -> Vm:
        assert self.run is not None
        if not isinstance(name, str) or name not in self.run.vms:
            raise ControlError(
                f"lab {self.name} has no VM named {name!r} (VMs: {', '.join(self.run.vms)})"
            )
        return self.run.vms[name]

    def vm_info(self, name: str) -> dict[str, Any]:
        assert self.run is not None
        vm = self.run.vms[name]
        end = self.stopped_at.get(name)
        info = vm.exit if vm.state is VmState.STOPPED else None
        fan = self.consoles.get(name)
        return {
            "name": name,
            "kernel": self.spec.vms[name].kernel,
            "state": vm.state.value,
            "uptime": round((end if end is not None else time.time()) - self.started, 3),
            "exit": _exit(info),
            "consoles": len(fan.clients) if fan is not None else 0,
        }

    def ps(self) -> dict[str, Any]:
        assert self.run is not None
        return {
            "name": self.name,
            "file": str(self.file) if self.file is not None else None,
            "socket": str(self.paths.sock) if self.paths is not None else None,
            "pid": self.pid,
            "started": round(self.started, 3),
            "uptime": round(time.time() - self.started, 3),
            "state": "ending" if self.ending else "running",
            "log": self.log_file,
            "switches": list(self.run.switches),
            "refused": self.refused,
            "captures": [
                {"switch": c.switch.name, "packets": c.packets, "dropped": c.dropped}
                for c in self.captures
            ],
            "console_dropped": {n: f.dropped for n, f in self.consoles.items() if f.dropped},
            "vms": [self.vm_info(name) for name in self.run.vms],
        }

    def stats(self) -> dict[str, Any]:
        """``hv.lab._stats.snapshot`` of the lab."""
        assert self.run is not None
        return snapshot(self.run)

    async def snapshot(self, request: dict[str, Any]) -> dict[str, Any]:
        """``{"op": "snapshot", "path": ABSOLUTE, "vm": NAME?}``: the lab's snapshot into the
        folder ``path``, or one VM's into the file ``path`` (a folder: NAME.hvsnap in it)."""
        assert self.run is not None
        path = request.get("path")
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise ControlError("snapshot: path must be an absolute path")
        target = Path(path)
        try:
            if request.get("vm") is not None:
                vm = self._vm(request.get("vm"))
                if target.is_dir():
                    target = target / f"{vm.name}.hvsnap"
                info = await vm.snapshot(target)
                return {"path": str(info.path), "bytes": info.bytes,
                        "paused_ms": round(info.paused_s * 1e3, 1), "lab_ps": None}  # fmt: skip
            lab = await self.run.snapshot(target)
        except (HvError, OSError) as e:
            raise ControlError(f"snapshot: {e}") from None
        return {"path": str(lab.path), "bytes": lab.bytes,
                "paused_ms": round(lab.paused_s * 1e3, 1), "lab_ps": lab.lab_ps}  # fmt: skip

    def netem(self, request: dict[str, Any]) -> dict[str, Any]:
        """Show or change an impaired cable (``hv.lab._netem.netem``)."""
        return self._cable_op(netem, request)

    def link(self, request: dict[str, Any]) -> dict[str, Any]:
        """Show a cable's link state or set it (``hv.lab._link.link``)."""
        return self._cable_op(link, request)

    def _cable_op(
        self, op: Callable[[LabRun, dict[str, Any]], dict[str, Any]], request: dict[str, Any]
    ) -> dict[str, Any]:
        """``op(run, request)``: a bad name or value is the client's error."""
        assert self.run is not None
        try:
            return op(self.run, request)
        except (LookupError, ValueError) as e:
            raise ControlError(str(e.args[0]) if e.args else str(e)) from None

    async def _stop(self, which: object) -> list[dict[str, Any]]:
        assert self.run is not None
        if which is None:
            names = list(self.run.vms)
        elif isinstance(which, list):
            names = [self._vm(n).name for n in which]
        else:
            names = [self._vm(which).name]
        for name in names:
            self.run.vms[name].stop("stopped by hv stop")
        with trio.move_on_after(STOP_WAIT):
            for name in names:
                await self.run.vms[name].wait()
                self.stopped_at.setdefault(name, time.time())
        return [self.vm_info(name) for name in names]

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        self._streaming += 1
        try:
            yield
        finally:
            self._streaming -= 1

    async def _down(self, stream: trio.SocketStream) -> None:
        assert self.run is not None
        with self._stream():
            self.ending = True
            self.run.stop("the lab was taken down (hv down)")
            await _send(stream, {"ok": True, "lab": self.name, "pid": self.pid})
            await self._closed.wait()
            await _send(stream, {"event": "ended", "status": self.run.status})

    async def _console(
        self, stream: trio.SocketStream, lines: _Lines, request: dict[str, Any]
    ) -> None:
        vm = self._vm(request.get("vm"))
        tail = request.get("tail", TAIL_DEFAULT)
        if not isinstance(tail, int) or isinstance(tail, bool) or tail < 0:
            raise ControlError("tail: a number of bytes (0 or more)")
        fan = self.consoles[vm.name]
        box = fan.attach(min(tail, TAIL_KEPT))
        with self._stream():
            try:
                await _send(stream, {"ok": True, "vm": vm.name, "state": vm.state.value})
                typed = lines.rest()
                async with trio.open_nursery() as nursery:

                    async def keys(data: bytes) -> None:
                        while True:
                            if data and vm.state is not VmState.STOPPED:
                                await vm.console.send_all(data)
                            data = await stream.receive_some(4096)
                            if not data:
                                return  # no more input; the output goes on

                    nursery.start_soon(keys, typed)
                    while (chunk := await box.get()) is not None:
                        await stream.send_all(chunk)
                    nursery.cancel_scope.cancel()
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await stream.send_eof()
            finally:
                fan.detach(box)

    async def _agent(
        self, stream: trio.SocketStream, lines: _Lines, request: dict[str, Any]
    ) -> None:
        """``hv exec``, ``hv cp``: a connection to the VM's guest agent, relayed byte for byte
        (the client speaks the agent's protocol, hv/_exec.py; the relay reads a direction only
        as fast as the other end takes it). Either end closing ends both."""
        vm = self._vm(request.get("vm"))
        wait = request.get("timeout", READY_TIMEOUT)
        if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= 3600:
            raise ControlError("timeout: seconds to wait for the agent (0 to 3600)")
        if vm.state is VmState.STOPPED:
            raise ControlError(f"VM {vm.name} of lab {self.name} has stopped: no agent to reach")
        with self._stream():
            try:
                agent = await agent_of(vm).connect(float(wait))
            except ExecError as e:
                raise ControlError(str(e)) from None
            try:
                await _send(stream, {"ok": True, "vm": vm.name, "port": AGENT_PORT})
                early = lines.rest()
                async with trio.open_nursery() as nursery:

                    async def up() -> None:
                        with contextlib.suppress(trio.BrokenResourceError, OSError):
                            if early:
                                await agent.send_all(early)
                            while data := await stream.receive_some(CHUNK * 4):
                                await agent.send_all(data)
                        nursery.cancel_scope.cancel()  # the client went away: so does the request

                    nursery.start_soon(up)
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        while data := await agent.receive_some(CHUNK * 4):
                            await stream.send_all(data)
                    nursery.cancel_scope.cancel()
            finally:
                with contextlib.suppress(Exception):
                    await agent.aclose()

    async def _capture(self, stream: trio.SocketStream, request: dict[str, Any]) -> None:
        assert self.run is not None
        name = request.get("switch")
        if not isinstance(name, str) or name not in self.run.switches:
            known = ", ".join(self.run.switches) or "none"
            raise ControlError(f"lab {self.name} has no switch named {name!r} (switches: {known})")
        sw = self.run.switches[name]
        on_switch = sum(1 for c in self.captures if c.switch is sw)
        if on_switch >= CAPTURES_PER_SWITCH:
            raise ControlError(
                f"switch {name} has {on_switch} live captures already (at most "
                f"{CAPTURES_PER_SWITCH} a switch): stop one, or capture to a file with "
                "'capture =' in the lab file"
            )
        if len(self.captures) >= CAPTURES_PER_LAB:
            raise ControlError(
                f"lab {self.name} has {len(self.captures)} live captures already (at most "
                f"{CAPTURES_PER_LAB} a lab): stop one first"
            )
        with self._stream():
            await _send(
                stream,
                {"ok": True, "switch": name, "ports": [p.name for p in sw.ports.values()]},
            )
            cap = LiveCapture(sw)
            self.captures.add(cap)
            sw.add_listener(cap)
            try:
                async with trio.open_nursery() as nursery:

                    async def until_closed() -> None:
                        while await stream.receive_some(4096):
                            pass  # a capture client has nothing to say; its end ends it
                        cap.close()

                    nursery.start_soon(until_closed)
                    while (chunk := await cap.box.get()) is not None:
                        await stream.send_all(chunk)
                    nursery.cancel_scope.cancel()
            finally:
                cap.close()
                self.captures.discard(cap)
