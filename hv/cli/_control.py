"""Driving running labs from another process: ``hv up -d``, ``hv ps``, ``hv console``,
``hv capture``, ``hv stop``, ``hv down``; and the client side of the control protocol.

Each lab that ``hv up`` runs serves a control socket (``hv.lab._control``; the protocol is in
docs/CONTROL.md). This module holds what both ends share (where the sockets are, the peer
credential check) and the client, which is kept light: ``hv ps`` does not load the VM
machinery.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hv._errors import ConfigError, HostError, HvError

if TYPE_CHECKING:
    import trio

PROTOCOL = "hvfabric-control"
VERSION = 1
OPS = ("hello", "ps", "stats", "stop", "down", "console", "capture", "netem")
MAX_LINE = 64 << 10  # longest line either end reads
SUN_PATH_MAX = 107  # bytes in a Unix socket's path (sun_path is 108, NUL-terminated)
# How ``hv up -d`` tells the lab it starts where its log is (shown by ``hv ps``).
LOG_ENV = "HV_CONTROL_LOG"
COMMANDS = ("ps", "stats", "console", "stop", "down", "capture", "top")
EXIT_FAILED = 1  # no such lab, VM or switch; the lab refused or went away


class ControlError(HvError):
    """A control request failed: no such lab, VM or switch; the lab refused; it went away."""


# -- where labs live -----------------------------------------------------------------------


def labs_dir() -> Path:
    """The folder of this user's lab sockets (not created: see ``private_labs_dir``)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base) and os.path.isdir(base):
        return Path(base) / "hvfabric" / "labs"
    return Path(f"/tmp/hvfabric-{os.getuid()}") / "labs"


def _private_dir(path: Path) -> None:
    """``path`` exists, is a real directory of ours, and nobody else may enter it."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise HostError(f"{path} is not a directory: cannot put lab control sockets there")
    if st.st_uid != os.getuid():
        raise HostError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): refusing to "
            "put lab control sockets there"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def private_labs_dir() -> Path:
    """``labs_dir()``, created if need be: it and the folder it is in are 0700 and ours."""
    path = labs_dir()
    try:
        _private_dir(path.parent)
        _private_dir(path)
    except OSError as e:
        raise HostError(f"cannot make {path}: {e.strerror or e}") from None
    return path


@dataclass(frozen=True)
class LabPaths:
    sock: Path
    lock: Path
    log: Path

    @classmethod
    def of(cls, name: str, folder: Path | None = None) -> LabPaths:
        folder = folder if folder is not None else labs_dir()
        return cls(folder / f"{name}.sock", folder / f"{name}.lock", folder / f"{name}.log")


def running_labs() -> list[str]:
    """The names of the labs with a socket in this user's folder (some may be stale)."""
    try:
        names = sorted(p.stem for p in labs_dir().glob("*.sock"))
    except OSError:
        return []
    return names


# -- peer credentials ----------------------------------------------------------------------

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def refusal(peer_uid: int, owner_uid: int, lab: str) -> str | None:
    """Why a client of uid ``peer_uid`` may not drive a lab of ``owner_uid`` (None: it may).
    Only the lab's owner may: not another user, not even root."""
    if peer_uid == owner_uid:
        return None
    return (
        f"permission denied: lab {lab} belongs to uid {owner_uid}; you are uid {peer_uid} "
        "(only a lab's owner may drive it)"
    )


# -- the client side -----------------------------------------------------------------------


class Connection:
    """A blocking connection to a lab's control socket: ``request`` sends one line and reads
    one back; ``readline`` and ``buffered`` for what comes after (events, a stream)."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self._buf = bytearray()

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
            raise self._lost(e) from None

    def _lost(self, e: OSError) -> ControlError:
        if isinstance(e, TimeoutError):
            return ControlError(f"lab {self.name} did not answer in time")
        return ControlError(f"lab {self.name} went away ({e.strerror or e})")

    def readline(self) -> bytes | None:
        """The next line (without its newline); None at the end of the connection."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > MAX_LINE:
                raise ControlError(f"lab {self.name}: an answer line is too long")
            try:
                data = self.sock.recv(65536)
            except OSError as e:
                raise self._lost(e) from None
            if not data:
                return None
            self._buf += data

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
        data = bytes(self._buf)
        self._buf.clear()
        return data


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
            "It ends when the VM stops."
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
        description="Stop every VM of lab LAB and wait until the lab has ended.",
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
    labs = gather(args.lab)
    if args.json:
        print(json.dumps({"labs": labs}, indent=2))
        return 0
    if not labs:
        print("no labs are running (start one with: hv up -d LAB.toml)")
        return 0
    for line in ps_table(labs):
        print(line.rstrip())
    return 0


def _stop(args: argparse.Namespace) -> int:
    with Connection.open(args.lab, timeout=None) as conn:
        answer = conn.request("stop", vm=args.vms or None)
    for vm in answer["stopped"]:
        print(f"{args.lab}/{vm['name']}: {vm['state']}, exit {exit_text(vm['exit'])}")
    return 0


def _down(args: argparse.Namespace) -> int:
    with Connection.open(args.lab, timeout=None) as conn:
        conn.request("down")
        status = None
        while (message := conn.read_message()) is not None:
            if message.get("event") == "ended":
                status = message.get("status")
    ended = f" (status {status})" if status is not None else ""
    print(f"lab {args.lab} is down{ended}")
    return 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _console(args: argparse.Namespace) -> int:
    from hv.cli._main import EXIT_OUTPUT_CLOSED, EscapeKeys, _raw_terminal

    conn = Connection.open(args.lab, timeout=10.0)
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

        with _raw_terminal(0) if interactive else contextlib.nullcontext(False):
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
    else:
        print(f"{newline}hv: {_why_ended(args.lab, args.vm)}", file=sys.stderr)
    return 0


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _why_ended(lab: str, vm: str) -> str:
    """What happened to a VM whose console closed: it stopped, or its lab ended."""
    try:
        with Connection.open(lab, timeout=5.0) as conn:
            answer = conn.request("ps")
    except ControlError:
        return f"lab {lab} has ended"
    for info in answer.get("vms", []):
        if info.get("name") == vm and info.get("exit"):
            return f"{lab}/{vm} stopped, exit {exit_text(info['exit'])}"
    return f"the console of {lab}/{vm} was closed"


class PcapngBlocks:
    """Cuts a pcapng byte stream into whole blocks (each carries its length at offset 4), so
    that what is written is a readable file whenever the capture stops."""

    def __init__(self) -> None:
        self._buf = bytearray()

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
    return 0


def _stats(args: argparse.Namespace) -> int:
    with Connection.open(args.lab) as conn:
        answer = conn.request("stats")
    if args.json:
        print(json.dumps(answer["stats"], indent=2))
        return 0
    from hv.lab._stats import render_snapshot

    for line in render_snapshot(answer["stats"]):
        print(line)
    return 0


def _top(args: argparse.Namespace) -> int:
    import trio

    from hv.lab._view import live_view

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


def up_detached(args: argparse.Namespace) -> int:
    """``hv up -d LAB.toml``: start the lab in the background (its output to NAME.log next
    to its socket), wait until it answers on its socket, say how to reach it."""
    from hv.lab._spec import load_lab

    if args.attach is not None:
        raise ConfigError("--attach and -d do not go together: attach later with hv console LAB VM")
    lab = Path(args.lab)
    spec = load_lab(lab)
    folder = private_labs_dir()
    paths = LabPaths.of(spec.name, folder)
    hello = probe(spec.name)
    if hello is not None:
        raise ConfigError(
            f"a lab named {spec.name!r} is already running (pid {hello.get('pid')}): attach "
            f"with 'hv console {spec.name} VM', end it with 'hv down {spec.name}', or give "
            'this one another name (name = "..." in the lab file)'
        )
    argv = [sys.executable, "-m", "hv.cli", "up", str(lab.resolve())]
    if args.exit_code_from is not None:
        argv += ["--exit-code-from", args.exit_code_from]
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
            time.sleep(0.05)
    except KeyboardInterrupt:
        os.kill(pid, 15)
        os.waitpid(pid, 0)
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
    return 0


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
