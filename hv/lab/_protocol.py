"""The control protocol of a running lab: what the server (``hv.lab._control``) and the
client (``hv.cli._control``) share. docs/CONTROL.md is the protocol's description.

- Where labs live: one folder per user (``labs_dir``; 0700, ours: ``private_labs_dir``) with
  ``NAME.sock``, ``NAME.lock`` and ``NAME.log`` per lab (``LabPaths``). The lock file, held
  while the lab runs, holds its pid and lab file (``lock_holder``), so a second lab of the
  name is refused with both (``already_running``) without a connection.
- The record of labs that ended (``ended.json`` beside that folder), for ``hv ps -a``.
- Who may connect: the lab's owner only (``peer_credentials``, ``refusal``).
- The framing: JSON objects, one a line, then (``console``, ``capture``) a byte stream.
  ``LineBuffer`` cuts lines out of what arrives, the same for the blocking client and the
  trio server.

Theory of operation of ``LineBuffer`` (as h11's ``ReceiveBuffer``): bytes go in with
``feed`` as they arrive, in chunks of any size; ``next_line`` takes the first complete line
out (without its newline), or says there is none yet (None); ``feed(b"")`` is the end of the
stream, after which None means "no more lines" (``closed``). A line longer than
``max_line`` raises ``LineTooLong`` as soon as that many bytes have come without a newline,
so a peer cannot make either end hold an unbounded line. What follows the last line taken
(the start of a byte stream, or a partial line at the end) is ``rest()``. Searches for the
newline resume where the last one stopped, so a line fed a byte at a time costs linear time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hv._errors import HostError, HvError

if TYPE_CHECKING:
    import trio

PROTOCOL = "hvfabric-control"
VERSION = 1
OPS = (
    "hello", "ps", "stats", "stop", "down", "console", "capture", "netem", "agent", "link",
    "snapshot",
)  # fmt: skip
MAX_LINE = 64 << 10  # longest line either end reads
SUN_PATH_MAX = 107  # bytes in a Unix socket's path (sun_path is 108, NUL-terminated)
# How ``hv up -d`` tells the lab it starts where its log is (shown by ``hv ps``).
LOG_ENV = "HV_CONTROL_LOG"
ENDED_KEEP = 32  # ended labs remembered for hv ps -a (the newest)


class ControlError(HvError):
    """A control request failed: no such lab, VM or switch; the lab refused; it went away."""


class LineTooLong(ControlError):
    """More than ``max_line`` bytes came without a newline."""


# -- the framing ---------------------------------------------------------------------------


class LineBuffer:
    """Newline-framed lines out of a byte stream, without I/O (see the module docstring)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.closed = False  # the stream has ended (feed(b""))
        self._buf = bytearray()
        self._searched = 0  # bytes already known to hold no newline

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Bytes as they arrived; ``b""``: the end of the stream."""
        if not data:
            self.closed = True
        self._buf += data

    def next_line(self) -> bytes | None:
        """The next complete line, without its newline; None if none is complete (yet, or
        ever: see ``closed``). ``LineTooLong`` if ``max_line`` bytes hold no newline."""
        end = self._buf.find(b"\n", self._searched)
        if end < 0:
            self._searched = len(self._buf)
            if len(self._buf) > self.max_line:
                raise LineTooLong(f"a line longer than {self.max_line} bytes")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        self._searched = 0
        return line

    def has_line(self) -> bool:
        return self._buf.find(b"\n", self._searched) >= 0

    def rest(self) -> bytes:
        """Everything not taken as a line (and empties the buffer)."""
        data = bytes(self._buf)
        self._buf.clear()
        self._searched = 0
        return data


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
    fix = f"set XDG_RUNTIME_DIR to a folder of your own, or remove {path}"
    if not stat.S_ISDIR(st.st_mode):
        raise HostError(f"{path} is not a directory: cannot put lab control sockets there ({fix})")
    if st.st_uid != os.getuid():
        raise HostError(
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): refusing to "
            f"put lab control sockets there ({fix})"
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


def lock_text(pid: int, file: Path | None) -> bytes:
    """What a running lab writes into its lock file: its pid, and its lab file."""
    return json.dumps({"pid": pid, "file": str(file) if file is not None else None}).encode()


def lock_holder(lock: Path) -> dict[str, Any] | None:
    """``{"pid", "file"}`` of the lab holding ``lock`` (None: unknown, or starting up)."""
    try:
        holder = json.loads(lock.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return holder if isinstance(holder, dict) else None


def already_running(name: str, hello: dict[str, Any] | None) -> str:
    """The error for a second lab of a name (``hello``: the first one's pid and file)."""
    who = f"pid {hello['pid']}" if hello and "pid" in hello else "starting up?"
    file = f" from {hello['file']}" if hello and hello.get("file") else ""
    return (
        f"a lab named {name!r} is already running ({who}{file}; socket {LabPaths.of(name).sock}"
        f"): attach with 'hv console {name} VM', end it with 'hv down {name}', or give this "
        'one another name (-p NAME, or name = "..." in the lab file)'
    )


# -- ended labs (hv ps -a) ----------------------------------------------------------------


def _ended_file() -> Path:
    """The record of ended labs: ``ended.json`` beside the sockets' folder."""
    return labs_dir().parent / "ended.json"


def ended_labs() -> list[dict[str, Any]]:
    """The labs that ended (their last ``ps``, with ``status`` and ``ended``), oldest first;
    [] if there is no record or it is damaged."""
    try:
        entries = json.loads(_ended_file().read_text())
    except (OSError, ValueError, RecursionError):
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]


def ended_lab(name: str) -> dict[str, Any] | None:
    return next((e for e in reversed(ended_labs()) if e["name"] == name), None)


def _update_ended(change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Rewrite the record with ``change(entries)``, under its lock (labs end concurrently)."""
    private_labs_dir()
    path = _ended_file()
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        entries = change(ended_labs())[-ENDED_KEEP:]
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entries, default=str))
        os.replace(tmp, path)
    finally:
        os.close(fd)


def record_ended(entry: dict[str, Any]) -> None:
    """Remember a lab that ended (the newest ``ENDED_KEEP`` are kept, one per name)."""
    _update_ended(lambda old: [e for e in old if e["name"] != entry["name"]] + [entry])


def forget_ended(name: str) -> None:
    _update_ended(lambda old: [e for e in old if e["name"] != name])


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
