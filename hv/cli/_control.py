"""Driving running labs from another process: ``hv up -d``, ``hv ps``, ``hv console``,
``hv capture``, ``hv stop``, ``hv down``, ``hv logs``; and the client side of the control protocol.

Each lab that ``hv up`` runs serves a control socket (``hv.lab._control``; what both ends
share, where the sockets are and how lines are framed, is ``hv.lab._protocol``; the protocol
is in docs/CONTROL.md). The client is kept light: ``hv ps`` does not load the VM machinery.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hv._errors import ConfigError
from hv.cli._terminal import EXIT_OUTPUT_CLOSED, EscapeKeys, raw_terminal
from hv.lab import (
    ENDED_KEEP,
    LOG_ENV,
    ControlError,
    LabPaths,
    LineBuffer,
    LineTooLong,
    already_running,
    ended_lab,
    ended_labs,
    lock_holder,
    private_labs_dir,
    running_labs,
)

if TYPE_CHECKING:
    from hv.lab import LabRestore, LabSpec

COMMANDS = ("ps", "stats", "console", "stop", "down", "capture", "top", "logs")
EXIT_FAILED = 1  # no such lab, VM or switch; the lab refused or went away
EXIT_HOST = 3  # hv up -d: the lab did not come up in time
START_TIMEOUT = 120.0  # seconds hv up -d waits for a lab to answer by default
NAME_MAX = 32  # characters in a lab's name (as a name = "..." in a lab file may have)


# -- lab names ----------------------------------------------------------------------------


def default_lab_name(path: Path) -> str:
    """A lab file's name when neither ``-p`` nor ``name = "..."`` gives one: its folder's
    name and its own stem (``~/net/lab.toml`` -> ``net-lab``), lowercased, without the
    characters a name may not have (as compose names a project after its folder), cut to
    ``NAME_MAX``: the same file name in two folders makes two labs."""

    def clean(text: str) -> str:
        return re.sub(r"^[^a-z]+", "", re.sub(r"[^a-z0-9_-]", "", text.lower()))

    path = Path(os.path.abspath(path))
    stem = clean(path.stem)[:NAME_MAX] or "lab"
    folder = clean(path.parent.name)[: NAME_MAX - len(stem) - 1].rstrip("-_")
    return f"{folder}-{stem}" if folder else stem


def load_named(path: Path, project: str | None, args: argparse.Namespace | None = None) -> LabSpec:
    """The lab in ``path`` under its name: ``-p NAME``, else the file's ``name = "..."``,
    else ``default_lab_name``; with ``hv up``'s ``args``, its ``--clock``, ``--seed`` and
    ``--mips`` in place of the file's, and with ``--host NAME`` that host's part of a lab over
    ``[hosts]`` (named ``NAME-HOST`` unless ``-p`` says otherwise: two hosts' parts may run on
    one machine, in two network namespaces)."""
    from dataclasses import replace

    from hv.lab import check_lab_name, for_host, load_lab, with_clock

    spec = load_lab(
        path, default_name=default_lab_name(path), clock=args.clock if args is not None else None
    )
    if project is not None:
        spec = replace(spec, name=check_lab_name(project, "-p/--project-name"))
    if args is not None:
        spec = with_clock(
            spec, args.clock, args.seed, args.mips, jobs=getattr(args, "jobs", None), option="--"
        )
        host = getattr(args, "host", None)
        if host is not None:
            spec = for_host(spec, host)
            if project is None:
                name = f"{spec.name[: NAME_MAX - len(host) - 1].rstrip('-_')}-{host}"
                spec = replace(spec, name=check_lab_name(name, "--host"))
    return spec


def clock_arguments(args: argparse.Namespace) -> list[str]:
    """``hv up``'s ``--clock``, ``--seed``, ``--mips`` and ``--jobs`` as given, to pass on."""
    out = []
    for key in ("clock", "seed", "mips", "jobs"):
        if getattr(args, key, None) is not None:
            out += [f"--{key}", str(getattr(args, key))]
    return out


def lab_file_name(path: Path) -> str | None:
    """The name lab file ``path`` runs under without ``-p`` (None if it cannot be read)."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    name = doc.get("name")
    return name if isinstance(name, str) else default_lab_name(path)


def ask_lab(args: Any, op: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """Ask running lab ``args.lab`` (resolved in place: ``resolve_lab``) the request ``op``
    (``hv netem``, ``hv link``): its answer, without ``ok``; None once its error is printed
    (the command then ends with EXIT_FAILED)."""
    try:
        args.lab = resolve_lab(args.lab)  # a name, the lab file, or its stem
        with Connection.open(args.lab) as conn:
            answer = conn.request(op, **request)
    except ControlError as e:
        print(f"hv: {e}", file=sys.stderr)
        return None
    answer.pop("ok", None)
    return answer


def resolve_lab(text: str) -> str:
    """The running (or ended) lab that LAB on the command line means: its full name; the
    path of its lab file; or its file's stem when one running lab has it (``hv console lab
    a`` for lab ``net-lab`` of ``~/net/lab.toml``). Unknown names are returned as they are
    (the caller says that no such lab runs)."""
    running = running_labs()
    if text in running:
        return text
    if os.sep in text or text.endswith(".toml"):
        name = lab_file_name(Path(text))
        if name is not None:
            return name
    found = []
    for name in running:
        with contextlib.suppress(ControlError, OSError):
            with Connection.open(name, timeout=5.0) as conn:
                file = conn.request("ps").get("file")
            if isinstance(file, str) and Path(file).stem == text:
                found.append((name, file))
    if not found and ended_lab(text) is None:
        ended = [(e["name"], e.get("file")) for e in ended_labs()]
        found = [(n, f) for n, f in ended if isinstance(f, str) and Path(f).stem == text][-1:]
    if len(found) > 1:
        which = ", ".join(f"{name} ({file})" for name, file in found)
        raise ControlError(f"{len(found)} running labs have a file named {text!r}: {which}; "
                           "name one of them")  # fmt: skip
    return found[0][0] if found else text


# -- the client side -----------------------------------------------------------------------


class Connection:
    """A blocking connection to a lab's control socket: ``request`` sends one line and reads
    one back; ``readline`` and ``buffered`` for what comes after (events, a stream)."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self._lines = LineBuffer()

    @classmethod
    def open(cls, name: str, timeout: float | None = 10.0) -> Connection:
        path = LabPaths.of(name).sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            labs = [n for n in running_labs() if n != name]
            also = f" (running: {', '.join(labs)})" if labs else ""
            raise ControlError(f"no lab named {name!r} is running{also}") from None
        except PermissionError:
            sock.close()
            raise ControlError(f"permission denied: {path} is not yours") from None
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot reach lab {name!r} at {path}: {e.strerror or e}") from None
        return cls(sock, name)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as e:
            # The server may have answered before we asked and closed (a refusal): say that.
            answer = self._pending()
            if answer is not None and answer.get("ok") is False and "error" in answer:
                raise ControlError(str(answer["error"])) from None
            raise self._lost(e) from None

    def _pending(self) -> dict[str, Any] | None:
        """An answer line already received, without waiting; None if there is none."""
        with contextlib.suppress(OSError):
            while not self._lines.has_line() and len(self._lines) <= self._lines.max_line:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
                self._lines.feed(data)
                if not data:
                    break
        with contextlib.suppress(ControlError):
            if self._lines.has_line():
                return self.read_message()
        return None

    def _lost(self, e: OSError) -> ControlError:
        if isinstance(e, TimeoutError):
            return ControlError(f"lab {self.name} did not answer in time")
        return ControlError(f"lab {self.name} went away ({e.strerror or e})")

    def readline(self) -> bytes | None:
        """The next line (without its newline); None at the end of the connection."""
        while True:
            try:
                line = self._lines.next_line()
            except LineTooLong:
                raise ControlError(f"lab {self.name}: an answer line is too long") from None
            if line is not None or self._lines.closed:
                return line
            try:
                data = self.sock.recv(65536)
            except OSError as e:
                raise self._lost(e) from None
            self._lines.feed(data)

    def read_message(self) -> dict[str, Any] | None:
        line = self.readline()
        if line is None:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            raise ControlError(f"lab {self.name}: not a JSON answer: {line[:80]!r}") from None
        if not isinstance(message, dict):
            raise ControlError(f"lab {self.name}: not a JSON object: {line[:80]!r}")
        return message

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send ``{"op": op, **args}``; the answer (a ControlError if it is an error)."""
        self.send({"op": op, **args})
        answer = self.read_message()
        if answer is None:
            raise ControlError(f"lab {self.name} closed the connection (has it ended?)")
        if not answer.get("ok"):
            raise ControlError(str(answer.get("error", "the request failed")))
        return answer

    def buffered(self) -> bytes:
        """Bytes received after the last line read (the start of a stream)."""
        return self._lines.rest()


def probe(name: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The ``hello`` of lab ``name`` if something answers on its socket, else None."""
    try:
        with Connection.open(name, timeout) as conn:
            return conn.request("hello")
    except (ControlError, OSError):
        return None


# -- the commands --------------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """``hv ps``, ``console``, ``stop``, ``down``, ``capture`` (``sub``: the subparsers)."""
    ps = sub.add_parser(
        "ps",
        help="list the running labs and their VMs",
        description=(
            "List the labs this user runs (hv up, in the foreground or with -d) and each VM's "
            "state, uptime and exit."
        ),
    )
    ps.add_argument("lab", nargs="?", metavar="LAB", help="only this lab")
    ps.add_argument(
        "-a", "--all", action="store_true", help=f"the labs that ended too (the last {ENDED_KEEP})"
    )
    ps.add_argument("--json", action="store_true", help='print {"labs": [...]} as JSON')

    stats = sub.add_parser(
        "stats",
        help="a running lab's counters",
        description=(
            "Print lab LAB's counters since it started: per VM, per switch port (frames as "
            "the devices sent them and as the wire carries them, where an offloaded TCP frame "
            "is its segments; drops by cause, the switch's and the port's cable's: loss, "
            "queue, mtu), and per impaired cable and direction (settings and counters). "
            "Plain lines, or --json."
        ),
    )
    stats.add_argument("lab", metavar="LAB")
    stats.add_argument("--json", action="store_true", help="the stats answer, as JSON")

    top = sub.add_parser(
        "top",
        help="a running lab's live view: VMs and ports, refreshed",
        description=(
            "Show lab LAB's VMs (state, guest MIPS, exits/s, CPU share) and switch ports "
            "(frames/s, bytes/s, drops), refreshed every --interval seconds: a table on a "
            "terminal, plain lines otherwise. It ends when the lab does, or on Ctrl-C."
        ),
    )
    top.add_argument("lab", metavar="LAB")
    top.add_argument("--interval", type=float, default=1.0, metavar="S", help="default 1 s")
    top.add_argument("--count", type=int, metavar="N", help="stop after N refreshes")

    console = sub.add_parser(
        "console",
        help="attach to a VM's console in a running lab",
        description=(
            "Attach this terminal to VM's console in lab LAB: its recent output, then what it "
            "prints, and what you type goes to it. On a terminal, Ctrl-A x detaches (the VM "
            "goes on; Ctrl-A Ctrl-A sends Ctrl-A); from a pipe, input is sent as it comes. "
            "It ends when the VM stops, with the VM's exit status (0 after a detach)."
        ),
    )
    console.add_argument("lab", metavar="LAB")
    console.add_argument("vm", metavar="VM")
    console.add_argument(
        "--tail",
        type=int,
        default=4096,
        metavar="BYTES",
        help="recent output to show first (default 4096, at most 65536; 0: none)",
    )

    logs = sub.add_parser(
        "logs",
        help="every VM's console output of a lab, prefixed by VM name (also after it ended)",
        description=(
            "Print what the consoles of lab LAB's VMs (or of VM only) printed, each line "
            "prefixed with its VM's name (coloured on a terminal), from the logs the lab keeps "
            "on disk: the newest 1-2 MiB of each VM, kept after the lab ends (hv ps -a). With "
            "-f, go on printing what they print until the lab ends."
        ),
    )
    logs.add_argument("lab", metavar="LAB")
    logs.add_argument("vm", metavar="VM", nargs="?")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the lab ends")
    logs.add_argument(
        "-n", "--tail", type=int, metavar="N", help="only the last N lines of each VM first"
    )
    logs.add_argument("--no-color", action="store_true", help="no colours, even on a terminal")

    stop = sub.add_parser(
        "stop",
        help="stop VMs of a running lab (all by default)",
        description=(
            "Stop VMs of lab LAB (every VM if none is named) and wait until they have stopped. "
            "The lab ends when its last VM stops."
        ),
    )
    stop.add_argument("lab", metavar="LAB")
    stop.add_argument("vms", nargs="*", metavar="VM")

    down = sub.add_parser(
        "down",
        help="stop a running lab and wait for its end",
        description=(
            "Stop every VM of lab LAB and wait until the lab has ended. A lab that is not "
            "running (it ended, or never ran) is already down: status 0."
        ),
    )
    down.add_argument("lab", metavar="LAB")

    capture = sub.add_parser(
        "capture",
        help="stream a switch's traffic live as pcapng",
        description=(
            "Capture every frame on switch SWITCH of lab LAB from now on, as a pcapng stream "
            "(one interface per port): 'hv capture LAB SWITCH | wireshark -k -i -', or "
            "-w FILE. It ends on Ctrl-C, when the reader goes away, when the lab ends or "
            "after --duration. If the reader falls behind, frames are dropped (counted in hv "
            "ps --json), never the lab slowed down."
        ),
    )
    capture.add_argument("lab", metavar="LAB")
    capture.add_argument("switch", metavar="SWITCH")
    capture.add_argument(
        "-w", "--write", default="-", metavar="FILE", help="write here (default -: stdout)"
    )
    capture.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this many seconds"
    )


def control_command(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "lab", None) is not None:  # every command's LAB: a name, file, stem
            args.lab = resolve_lab(args.lab)
        if args.command == "ps":
            return _ps(args)
        if args.command == "console":
            return _console(args)
        if args.command == "stop":
            return _stop(args)
        if args.command == "down":
            return _down(args)
        if args.command == "capture":
            return _capture(args)
        if args.command == "stats":
            return _stats(args)
        if args.command == "top":
            return _top(args)
        if args.command == "logs":
            return _logs(args)
    except ControlError as e:
        print(f"hv: {e}", file=sys.stderr)
        return EXIT_FAILED
    raise AssertionError(args.command)  # pragma: no cover


def human_duration(seconds: float) -> str:
    """12s, 3m04s, 1h02m, 2d03h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def exit_text(exit: dict[str, Any] | None) -> str:
    if not exit:
        return "-"
    return f"{exit['code']} ({exit['reason']})"


def gather(only: str | None = None) -> list[dict[str, Any]]:
    """The ``ps`` of each running lab (or of ``only``); labs that do not answer are left out."""
    labs = []
    for name in [only] if only is not None else running_labs():
        try:
            with Connection.open(name, timeout=5.0) as conn:
                answer = conn.request("ps")
        except ControlError:
            if only is not None:
                raise
            continue  # a stale socket, or a lab that just ended
        answer.pop("ok", None)
        labs.append(answer)
    return labs


def ps_table(labs: list[dict[str, Any]]) -> list[str]:
    rows = [("LAB", "VM", "KERNEL", "STATE", "UPTIME", "EXIT")]
    for lab in labs:
        for vm in lab["vms"]:
            rows.append(
                (lab["name"], vm["name"], vm["kernel"], vm["state"],
                 human_duration(vm["uptime"]), exit_text(vm["exit"]))
            )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]


def _ps(args: argparse.Namespace) -> int:
    labs = gather(args.lab) if not args.all or args.lab is None else []
    if args.all:
        if args.lab is not None and not labs:
            with contextlib.suppress(ControlError):
                labs = gather(args.lab)
        running = {lab["name"] for lab in labs}
        labs += [
            e for e in ended_labs() if e["name"] not in running and args.lab in (None, e["name"])
        ]
    if args.json:
        print(json.dumps({"labs": labs}, indent=2))
        return 0
    if not labs:
        print("no labs are running (start one with: hv up -d LAB.toml)")
        return 0
    for line in ps_table(labs):
        print(line.rstrip())
    print()
    for lab in labs:  # where each came from, and where to reach it
        if lab.get("state") == "ended":
            where = f"ended, status {lab.get('status')}"
        else:
            where = f"socket {lab.get('socket')}"
        print(f"{lab['name']}: {lab.get('file') or '-'} ({where})")
    return 0


def _stop(args: argparse.Namespace) -> int:
    with Connection.open(args.lab, timeout=None) as conn:
        answer = conn.request("stop", vm=args.vms or None)
    for vm in answer["stopped"]:
        print(f"{args.lab}/{vm['name']}: {vm['state']}, exit {exit_text(vm['exit'])}")
    return 0


def _down(args: argparse.Namespace) -> int:
    """Idempotent, as compose's: a lab that is not running is down already (status 0)."""
    try:
        with Connection.open(args.lab, timeout=None) as conn:
            conn.request("down")
            status = None
            while (message := conn.read_message()) is not None:
                if message.get("event") == "ended":
                    status = message.get("status")
    except ControlError as e:
        if not _gone(args.lab, e):
            raise
        record = ended_lab(args.lab)
        if record is None:
            print(f"no lab named {args.lab!r} is running")
        else:
            print(f"lab {args.lab} is already down (it ended with status {record.get('status')})")
        return 0
    ended = f" (status {status})" if status is not None else ""
    print(f"lab {args.lab} is down{ended}")
    return 0


def _gone(name: str, error: ControlError) -> bool:
    """Whether ``error`` means lab ``name`` is not running (it ended, or it never ran)."""
    if str(error).startswith("permission denied"):
        return False
    return probe(name) is None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _console(args: argparse.Namespace) -> int:
    try:
        conn = Connection.open(args.lab, timeout=10.0)
    except ControlError:
        ended = ended_lab(args.lab)
        if ended is None:
            raise
        raise ControlError(f"lab {args.lab} has ended (status {ended.get('status')})") from None
    detached = threading.Event()
    last = b"\n"  # the last byte written: messages start on a line of their own
    stdin_ok = _fd_open(0)
    interactive = stdin_ok and os.isatty(0)
    try:
        conn.request("console", vm=args.vm, tail=max(0, args.tail))
        conn.sock.settimeout(None)
        if interactive:
            print(f"hv: attached to {args.lab}/{args.vm}; Ctrl-A x detaches", file=sys.stderr)

        def keys() -> None:
            filt = EscapeKeys()
            try:
                while data := os.read(0, 1024):
                    quit_ = False
                    if interactive:
                        data, quit_ = filt.feed(data)
                    if data:
                        conn.sock.sendall(data)
                    if quit_:
                        detached.set()
                        conn.sock.shutdown(socket.SHUT_RDWR)
                        return
                conn.sock.shutdown(socket.SHUT_WR)  # EOF: no more input; the output goes on
            except OSError:
                return

        with raw_terminal(0) if interactive else contextlib.nullcontext(False):
            if stdin_ok:
                threading.Thread(target=keys, name="hv-console-keys", daemon=True).start()
            data = conn.buffered()
            try:
                while True:
                    if data:
                        _write_all(1, data)
                        last = data[-1:]
                    try:
                        data = conn.sock.recv(65536)
                    except OSError:
                        break  # detached (the socket was shut down), or the lab went away
                    if not data:
                        break
            except OSError:  # stdout: its reader went away
                return EXIT_OUTPUT_CLOSED
    finally:
        conn.close()
    newline = "\n" if last != b"\n" and os.isatty(2) else ""
    if detached.is_set():
        print(f"{newline}hv: detached from {args.lab}/{args.vm} (it goes on)", file=sys.stderr)
        return 0
    why, status = _why_ended(args.lab, args.vm)
    print(f"{newline}hv: {why}", file=sys.stderr)
    return status


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _why_ended(lab: str, vm: str) -> tuple[str, int]:
    """What happened to a VM whose console closed (it stopped, or its lab ended), and the
    status ``hv console`` ends with: the VM's."""
    try:
        with Connection.open(lab, timeout=5.0) as conn:
            answer: dict[str, Any] | None = conn.request("ps")
    except ControlError:
        answer = ended_lab(lab)  # it ended meanwhile: its record says how
    for info in answer.get("vms", []) if answer is not None else []:
        if info.get("name") == vm and info.get("exit"):
            code = info["exit"].get("code")
            return (f"{lab}/{vm} stopped, exit {exit_text(info['exit'])}",
                    code if isinstance(code, int) else EXIT_FAILED)  # fmt: skip
    if answer is None or answer.get("state") == "ended":
        return f"lab {lab} has ended", EXIT_FAILED
    return f"the console of {lab}/{vm} was closed", EXIT_FAILED


class PcapngBlocks:
    """Cuts a pcapng byte stream into whole blocks (each carries its length at offset 4), so
    that what is written is a readable file whenever the capture stops; ``dropped`` adds up
    the frames the lab reports it dropped for this client (Interface Statistics Blocks)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._drops: dict[int, int] = {}  # interface -> frames dropped so far

    @property
    def dropped(self) -> int:
        return sum(self._drops.values())

    def _statistics(self, block: bytes) -> None:
        """An Interface Statistics Block: note its isb_ifdrop (option 5), if it has one."""
        (iface,) = struct.unpack_from("<I", block, 8)
        at, end = 20, len(block) - 4
        while at + 4 <= end:
            code, size = struct.unpack_from("<HH", block, at)
            if code == 0:
                break
            if code == 5 and size == 8 and at + 12 <= end:
                self._drops[iface] = struct.unpack_from("<Q", block, at + 4)[0]
            at += 4 + size + (-size % 4)

    def feed(self, data: bytes) -> bytes:
        """The whole blocks that ``data`` completes; the rest waits for more."""
        self._buf += data
        end = 0
        while len(self._buf) - end >= 12:
            (length,) = struct.unpack_from("<I", self._buf, end + 4)
            if length < 12 or length % 4:
                raise ControlError(f"the capture stream is not pcapng (block length {length})")
            if len(self._buf) - end < length:
                break
            if struct.unpack_from("<I", self._buf, end)[0] == 5 and length >= 24:
                self._statistics(bytes(self._buf[end : end + length]))
            end += length
        out = bytes(self._buf[:end])
        del self._buf[:end]
        return out


def _capture(args: argparse.Namespace) -> int:
    import signal

    to_stdout = args.write == "-"
    if to_stdout and _fd_open(1) and os.isatty(1):
        raise ControlError(
            "refusing to write pcapng to a terminal: use -w FILE, or pipe it "
            f"(hv capture {args.lab} {args.switch} | wireshark -k -i -)"
        )
    conn = Connection.open(args.lab, timeout=10.0)
    written = 0
    blocks = PcapngBlocks()

    def interrupted(sig: int, frame: object) -> None:
        raise KeyboardInterrupt

    saved = signal.signal(signal.SIGTERM, interrupted)  # as Ctrl-C: the file ends cleanly
    try:
        conn.request("capture", switch=args.switch)
        try:
            fd = (
                1
                if to_stdout
                else os.open(args.write, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            )
        except OSError as e:
            raise ControlError(f"cannot write {args.write}: {e.strerror or e}") from None
        deadline = time.monotonic() + args.duration if args.duration is not None else None
        try:
            data = conn.buffered()
            while True:
                whole = blocks.feed(data)
                if whole:
                    _write_all(fd, whole)
                    written += len(whole)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    conn.sock.settimeout(left)
                else:
                    conn.sock.settimeout(None)
                try:
                    data = conn.sock.recv(1 << 16)
                except TimeoutError:
                    break
                if not data:
                    break  # the lab ended
        except KeyboardInterrupt:
            pass
        except (BrokenPipeError, ConnectionResetError):
            pass  # the reader went away: the capture is over
        finally:
            if not to_stdout:
                os.close(fd)
    finally:
        signal.signal(signal.SIGTERM, saved)
        conn.close()
    if not to_stdout:
        print(f"hv: {written} bytes of {args.lab}/{args.switch} to {args.write}", file=sys.stderr)
    if blocks.dropped:
        print(
            f"hv: the lab dropped {blocks.dropped} frames this capture did not read in time",
            file=sys.stderr,
        )
    return 0


def _stats(args: argparse.Namespace) -> int:
    with Connection.open(args.lab) as conn:
        answer = conn.request("stats")
    if args.json:
        print(json.dumps(answer["stats"], indent=2))
        return 0
    from hv.lab import render_snapshot

    for line in render_snapshot(answer["stats"]):
        print(line)
    return 0


def _top(args: argparse.Namespace) -> int:
    import trio

    from hv.lab import live_view

    conn = Connection.open(args.lab)
    left = [args.count + 1 if args.count is not None else -1]

    async def sample() -> dict[str, Any] | None:
        if left[0] == 0:
            return None
        left[0] -= 1
        try:
            answer = await trio.to_thread.run_sync(conn.request, "stats")
        except ControlError:
            return None  # the lab has ended
        stats: dict[str, Any] = answer["stats"]
        return stats

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def view() -> None:
                    await live_view(sample, interval=args.interval, terminal=sys.stdout.isatty())
                    nursery.cancel_scope.cancel()

                nursery.start_soon(view)
                async for _ in signals:
                    nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        conn.close()
    return 0


# -- hv up -d ------------------------------------------------------------------------------


def up_spec(args: argparse.Namespace) -> tuple[LabSpec, LabRestore | None]:
    """The lab ``hv up`` runs: its file's (``load_named``), or with ``--restore DIR`` the
    snapshot's (its tables, clock, seed and rate), and that snapshot."""
    from hv.lab import LabRestore

    if args.restore is None:
        if args.lab is None:
            raise ConfigError("hv up: name the lab file (hv up LAB.toml), or --restore DIR")
        return load_named(Path(args.lab), args.project_name, args), None
    if args.lab is not None:
        raise ConfigError("hv up --restore DIR takes no LAB.toml (the snapshot has the lab)")
    if getattr(args, "shards", None) or getattr(args, "host", None) is not None:
        raise ConfigError("--restore: a restored lab runs in one process, on one host")
    if args.clock is not None or args.seed is not None or args.mips is not None:
        raise ConfigError("--restore: the lab goes on with the clock, seed and mips it had")
    restore = LabRestore(args.restore)
    return restore.spec(args.project_name, getattr(args, "jobs", None)), restore


def up_detached(args: argparse.Namespace) -> int:
    """``hv up -d LAB.toml``: start the lab in the background (its output to NAME.log next
    to its socket), wait until it answers on its socket, say how to reach it."""
    from hv.lab import check_captures

    if args.attach is not None:
        raise ConfigError("--attach and -d do not go together: attach later with hv console LAB VM")
    spec, restore = up_spec(args)
    check_captures(spec, args.force)  # said here, in one line, rather than in the log
    folder = private_labs_dir()
    paths = LabPaths.of(spec.name, folder)
    hello = probe(spec.name)
    if hello is not None:
        raise ConfigError(already_running(spec.name, hello))
    what = (
        [str(Path(args.lab).resolve())]
        if restore is None
        else ["--restore", str(restore.folder.resolve())]
    )
    argv = [sys.executable, "-m", "hv.cli", "up", *what, "-p", spec.name]
    if args.exit_code_from is not None:
        argv += ["--exit-code-from", args.exit_code_from]
    if args.force:
        argv.append("--force")
    argv += clock_arguments(args)
    if getattr(args, "host", None) is not None:
        argv += ["--host", args.host]
    if getattr(args, "view", None) == "on":  # --stats: rates every second, into the log
        argv.append("--stats")
    argv += ["--log-level", args.log_level] + (["--log-json"] if args.log_json else [])
    env = dict(os.environ)
    env[LOG_ENV] = str(paths.log)
    logfd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, logfd, 1),
                (os.POSIX_SPAWN_DUP2, logfd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(logfd)
    deadline = time.monotonic() + args.start_timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                if code == 0:  # it ran to its end before it could be reached
                    print(f"lab {spec.name} ran and ended (status 0); its output: {paths.log}")
                    return 0
                print(f"hv: lab {spec.name} ended before it was up (status {code}); "
                      f"the end of its log ({paths.log}):", file=sys.stderr)  # fmt: skip
                for line in _tail(paths.log, 20):
                    print(f"  {line}", file=sys.stderr)
                return code if code > 0 else 3
            hello = probe(spec.name, timeout=1.0)
            if hello is not None and hello.get("pid") == pid:
                break
            if time.monotonic() > deadline:
                _end(pid)
                print(f"hv: lab {spec.name} did not come up within {args.start_timeout:g} s "
                      "(--start-timeout); it was stopped. The end of its log "
                      f"({paths.log}):", file=sys.stderr)  # fmt: skip
                for line in _tail(paths.log, 20):
                    print(f"  {line}", file=sys.stderr)
                return EXIT_HOST
            time.sleep(0.05)
    except KeyboardInterrupt:
        _end(pid)
        print("hv: interrupted; the lab was stopped", file=sys.stderr)
        return 130
    name = spec.name
    vms, switches = list(spec.vms), list(spec.switches)
    print(
        f"lab {name} is up (pid {pid}): {len(vms)} VM{'s' * (len(vms) != 1)} "
        f"({', '.join(vms)}), {len(switches)} switch{'es' * (len(switches) != 1)}"
        + (f" ({', '.join(switches)})" if switches else "")
    )
    print(f"  hv ps {name}                    its VMs: state, uptime, exit")
    print(f"  hv console {name} VM            attach to a console (Ctrl-A x detaches)")
    print(f"  hv capture {name} SWITCH -w -   live pcapng (| wireshark -k -i -)")
    print(f"  hv stop {name} [VM...]          stop VMs")
    print(f"  hv down {name}                  stop the lab")
    print(f"log: {paths.log}")
    print(f"socket: {paths.sock}")
    return 0


def _end(pid: int) -> None:
    """Stop a lab that hv up -d started (SIGTERM: it ends cleanly), and reap it."""
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)


def start_timeout(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("the start timeout must be more than 0 seconds")
    return seconds


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


# -- hv logs ------------------------------------------------------------------------------

_COLOURS = (36, 33, 32, 35, 34, 91, 92, 93, 94, 95, 96)  # as compose: one per VM, in turn
FOLLOW_POLL = 0.1  # seconds between looks at the logs with -f


def _lab_alive(lab: str) -> bool:
    """Does lab ``lab`` still run (its lock file is there and its process lives)?"""
    lock = LabPaths.of(lab).lock
    if not lock.exists():
        return False
    holder = lock_holder(lock)
    if holder is None or not isinstance(holder.get("pid"), int):
        return True  # starting up
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LogPrinter:
    """Lines of several VMs' output, each prefixed with ``VM | `` (the names padded to one
    width, coloured when ``colour``); a VM's partial line waits for its end."""

    def __init__(self, names: list[str], colour: bool) -> None:
        width = max(map(len, names), default=1)
        self.prefix = {}
        for i, name in enumerate(names):
            text = f"{name:<{width}} | "
            if colour:
                text = f"\x1b[{_COLOURS[i % len(_COLOURS)]}m{text}\x1b[0m"
            self.prefix[name] = text.encode()
        self.partial: dict[str, bytes] = dict.fromkeys(names, b"")

    def feed(self, name: str, data: bytes, *, tail: int | None = None) -> None:
        lines = (self.partial[name] + data).split(b"\n")
        self.partial[name] = lines.pop()
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        if lines:
            _write_all(
                1, b"".join(self.prefix[name] + line.rstrip(b"\r") + b"\n" for line in lines)
            )

    def flush(self, name: str) -> None:
        """Print ``name``'s unfinished line (a prompt) as a line of its own."""
        if self.partial[name]:
            self.feed(name, b"\n")


def _logs(args: argparse.Namespace) -> int:
    from hv.lab import Follower, log_names

    lab = args.lab
    alive = _lab_alive(lab)
    names = log_names(lab)
    if not names:
        if alive or ended_lab(lab) is not None:
            raise ControlError(f"lab {lab} has no console logs (it ran with an older hv?)")
        raise ControlError(f"no lab named {lab}, running or ended (hv ps -a lists them)")
    if args.vm is not None:
        if args.vm not in names:
            raise ControlError(f"lab {lab} has no VM named {args.vm} (VMs: {', '.join(names)})")
        names = [args.vm]
    if args.tail is not None and args.tail < 0:
        raise ConfigError("--tail: give a number of lines, 0 or more")
    colour = not args.no_color and not os.environ.get("NO_COLOR") and os.isatty(1)
    out = LogPrinter(names, colour)
    followers = {name: Follower(lab, name) for name in names}
    try:
        for name, f in followers.items():
            out.feed(name, f.backlog(), tail=args.tail)
            if not (args.follow and alive):
                out.flush(name)
        while args.follow and alive:
            alive = _lab_alive(lab)  # before the last read: what it printed is on disk
            for name, f in followers.items():
                if data := f.read():
                    out.feed(name, data)
            if alive:
                time.sleep(FOLLOW_POLL)
        if args.follow:
            for name in names:
                out.flush(name)
    except BrokenPipeError:
        return EXIT_OUTPUT_CLOSED
    finally:
        for f in followers.values():
            f.close()
    return 0
