"""``hv exec LAB VM -- CMD...`` and ``hv cp``: commands and files in a running lab's guests,
through the lab's control socket (its ``agent`` op relays a connection to the VM's guest
agent; the frames are hv/_exec.py's, read by its sans-IO ``FrameReader``). docs/EXEC.md.

Exit statuses: the command's (a signal N: 128 + N, as a shell's); a command that cannot
start: 127 (no such program) or 126, as a shell's and ``docker exec``'s; no such lab or VM,
no agent, a copy that fails: 1 (as the other commands that drive a lab); a bad command line:
4 (hv/_status.py's ``BAD_INPUT``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from hv._exec import (
    CHUNK,
    INPUT,
    INPUT_END,
    READY_TIMEOUT,
    Exited,
    Failed,
    FrameReader,
    Mode,
    Output,
    ProtocolError,
    exec_request,
    frame,
    get_request,
    put_request,
    winsize_frame,
)
from hv._status import EXIT_STATUS, StopKind
from hv.cli._control import EXIT_FAILED, Connection, resolve_lab
from hv.cli._terminal import EXIT_OUTPUT_CLOSED, raw_terminal
from hv.lab import ControlError

COMMANDS = ("exec", "cp")
EXIT_BAD_INPUT = EXIT_STATUS[StopKind.BAD_INPUT]
EXIT_CANNOT_RUN = 126  # the command exists but cannot run (as a shell's)
EXIT_NOT_FOUND = 127  # no such command
# LAB:VM:/path (the guest's path is absolute: a local path with colons cannot be mistaken)
REMOTE = re.compile(r"^([A-Za-z0-9_.-]+):([A-Za-z0-9_.-]+):(/.*)$")


def add_parsers(sub: Any) -> None:
    ex = sub.add_parser(
        "exec",
        help="run a command in a VM of a running lab (its guest agent)",
        description=(
            "Run CMD in VM of lab LAB, as docker exec does: its stdout and stderr are ours, "
            "and hv exec ends with its exit status. -i forwards our stdin; -t gives it a pty "
            "(our terminal raw, its size followed). Needs a Linux guest of hv's image with a "
            "vsock device (its agent starts at boot); the network is not involved."
        ),
    )
    ex.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    ex.add_argument("-t", "--tty", action="store_true", help="run it on a pty")
    ex.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                    help="set an environment variable (repeatable)")  # fmt: skip
    ex.add_argument("-w", "--workdir", metavar="DIR", help="the folder it runs in")
    ex.add_argument(
        "--wait",
        type=float,
        default=READY_TIMEOUT,
        metavar="S",
        help=f"how long to wait for the guest's agent to come up (default {READY_TIMEOUT:g})",
    )
    ex.add_argument("lab", metavar="LAB")
    ex.add_argument("vm", metavar="VM")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...")
    cp = sub.add_parser(
        "cp",
        help="copy a file into or out of a VM of a running lab",
        description=(
            "Copy a file between this host and a VM of a running lab: hv cp LOCAL "
            "LAB:VM:/PATH, or hv cp LAB:VM:/PATH LOCAL (the guest's path is absolute; one "
            "ending in / or a local folder takes the file's name). The mode bits go along; "
            "the file appears whole or not at all."
        ),
    )
    cp.add_argument("src", metavar="SRC")
    cp.add_argument("dst", metavar="DST")


def exec_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "exec":
            return _exec(args)
        return _cp(args)
    except _BadInput as e:
        print(f"hv: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ControlError, ProtocolError) as e:
        print(f"hv: {e}", file=sys.stderr)
        return EXIT_FAILED


class _BadInput(Exception):
    pass


def _open_agent(lab: str, vm: str, wait: float) -> Connection:
    conn = Connection.open(resolve_lab(lab), timeout=10.0)
    try:
        conn.sock.settimeout(wait + 10.0)
        conn.request("agent", vm=vm, timeout=wait)
        conn.sock.settimeout(None)
    except BaseException:
        conn.close()
        raise
    return conn


class _Sender:
    """Frames to the agent from several threads (stdin, the window-size handler): whole."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, data: bytes) -> bool:
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True


def _events(conn: Connection, reader: FrameReader) -> Any:
    """The agent's events as they arrive (``FrameReader`` over the blocking socket)."""
    early = conn.buffered()
    if early:  # (b"" would mean the end)
        reader.feed(early)
    while True:
        event = reader.next_event()
        if event is not None:
            yield event
            continue
        if reader.closed:
            return
        try:
            data = conn.sock.recv(CHUNK * 4)
        except OSError:
            data = b""
        reader.feed(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise _BadInput("hv exec LAB VM -- CMD...: name the command to run")
    env = {}
    for item in args.env:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise _BadInput(f"-e {item!r}: give KEY=VALUE")
        env[key] = value
    tty = args.tty and os.isatty(1)
    if tty and "TERM" not in env:
        env["TERM"] = os.environ.get("TERM", "xterm")
    rows, cols = _size(1) if tty else (0, 0)
    try:
        request = exec_request(cmd, env=env, cwd=args.workdir, stdin=args.interactive, tty=tty,
                               rows=rows, cols=cols)  # fmt: skip
    except ValueError as e:
        raise _BadInput(str(e)) from None
    conn = _open_agent(args.lab, args.vm, args.wait)
    where = f"{conn.name}/{args.vm}"
    sender = _Sender(conn.sock)
    try:
        sender.send(request)
        if tty:
            signal.signal(signal.SIGWINCH, lambda *_: sender.send(winsize_frame(*_size(1))))
        if args.interactive:
            threading.Thread(target=_forward_stdin, args=(sender,), daemon=True).start()
        raw = raw_terminal(0) if tty and args.interactive else contextlib.nullcontext(False)
        with raw:
            status = _run(conn, where)
    except KeyboardInterrupt:
        return 130  # closing the connection ends the command
    finally:
        conn.close()
    return status


def _run(conn: Connection, where: str) -> int:
    try:
        for event in _events(conn, FrameReader()):
            if isinstance(event, Output):
                _write_all(event.fd, event.data)
            elif isinstance(event, Exited):
                return event.status
            elif isinstance(event, Failed):
                print(f"hv: {where}: {event.message}", file=sys.stderr)
                return EXIT_NOT_FOUND if event.errno == errno.ENOENT else EXIT_CANNOT_RUN
    except BrokenPipeError:
        return EXIT_OUTPUT_CLOSED
    print(f"hv: the agent in {where} went away before the command ended (was it killed, or "
          "the VM stopped?)", file=sys.stderr)  # fmt: skip
    return EXIT_FAILED


def _forward_stdin(sender: _Sender) -> None:
    try:
        while data := os.read(0, CHUNK):
            if not sender.send(frame(INPUT, data)):
                return
    except OSError:
        pass
    sender.send(frame(INPUT_END))


def _size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 24, 80
    return size.lines, size.columns


def _cp(args: argparse.Namespace) -> int:
    src, dst = REMOTE.match(args.src), REMOTE.match(args.dst)
    if bool(src) == bool(dst):
        raise _BadInput(
            "hv cp: one side is in a VM, LAB:VM:/PATH (an absolute path), the other here: "
            "hv cp FILE LAB:VM:/PATH, or hv cp LAB:VM:/PATH FILE"
        )
    if dst:
        return _copy_in(Path(args.src), dst.group(1), dst.group(2), dst.group(3))
    assert src is not None
    return _copy_out(src.group(1), src.group(2), src.group(3), Path(args.dst))


def _copy_in(local: Path, lab: str, vm: str, path: str) -> int:
    if path.endswith("/"):
        path += local.name
    try:
        f = local.open("rb")
        mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise _BadInput(f"cannot read {local}: {e.strerror or e}") from None
    with f, _open_agent(lab, vm, READY_TIMEOUT) as conn:
        sender = _Sender(conn.sock)
        if sender.send(put_request(path, mode)):
            while chunk := f.read(CHUNK):
                if not sender.send(frame(INPUT, chunk)):
                    break  # the agent refused (its error follows)
            else:
                sender.send(frame(INPUT_END))
        return _copy_end(conn, f"{conn.name}/{vm}", None)


def _copy_out(lab: str, vm: str, path: str, local: Path) -> int:
    if local.is_dir():
        local = local / Path(path).name
    tmp = local.with_name(f".{local.name}.hv-cp-{os.getpid()}")
    try:
        out = tmp.open("wb")
    except OSError as e:
        raise _BadInput(f"cannot write {local}: {e.strerror or e}") from None
    try:
        with out, _open_agent(lab, vm, READY_TIMEOUT) as conn:
            conn.sock.sendall(get_request(path))
            status = _copy_end(conn, f"{conn.name}/{vm}", out)
        if status == 0:
            tmp.replace(local)
        return status
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _copy_end(conn: Connection, where: str, out: Any) -> int:
    for event in _events(conn, FrameReader()):
        if isinstance(event, Output) and out is not None:
            out.write(event.data)
        elif isinstance(event, Mode) and out is not None:
            os.fchmod(out.fileno(), event.mode)
        elif isinstance(event, Exited):
            return 0
        elif isinstance(event, Failed):
            print(f"hv: {where}: {event.message}", file=sys.stderr)
            return EXIT_FAILED
    print(f"hv: the agent in {where} went away before the copy ended", file=sys.stderr)
    return EXIT_FAILED
