"""Each VM's console of a lab, kept on disk for ``hv logs`` (while the lab runs and after).

The lab's control server (``hv.lab._control``) writes every byte a VM's console prints to
``logs/NAME/VM.log`` beside the record of ended labs (``$XDG_RUNTIME_DIR/hvfabric/``, 0700,
or ``/tmp/hvfabric-$UID/``). A log is bounded: when the next write would take it past
``LOG_CAP`` bytes, it is renamed ``VM.log.1`` (replacing the one before) and a new one is
started, so a VM keeps its newest 1-2 MiB (at most ``2 * LOG_CAP`` bytes on disk) however much
it prints: a guest printing forever cannot fill the disk. Logs are cleared when a lab of that
name starts again, and removed with the lab's entry in the record of ended labs (``hv ps -a``
keeps the newest ``ENDED_KEEP``).

Reading (``hv logs``) needs no connection to the lab: ``read_log`` gives what is on disk,
``Follower`` what is written after, across a rotation. Nothing here loads the VM machinery.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

from hv.lab._protocol import labs_dir

LOG_CAP = 1 << 20  # bytes in VM.log before it becomes VM.log.1 (so at most 2 MiB a VM)
SUFFIX = ".log"


def logs_root(folder: Path | None = None) -> Path:
    """The folder of every lab's logs: ``logs`` in ``folder`` (default: beside the labs'
    sockets' folder, where ``ended.json`` is)."""
    return (folder if folder is not None else labs_dir().parent) / "logs"


def logs_dir(lab: str, folder: Path | None = None) -> Path:
    """Where lab ``lab`` keeps its VMs' console logs."""
    return logs_root(folder) / lab


def log_names(lab: str, folder: Path | None = None) -> list[str]:
    """The VMs that have a log, by name."""
    try:
        entries = os.listdir(logs_dir(lab, folder))
    except OSError:
        return []
    return sorted(e[: -len(SUFFIX)] for e in entries if e.endswith(SUFFIX))


def clear_logs(lab: str, folder: Path | None = None) -> None:
    shutil.rmtree(logs_dir(lab, folder), ignore_errors=True)


def prune_logs(keep: set[str], folder: Path | None = None) -> None:
    """Remove the logs of every lab not in ``keep`` (running or remembered as ended)."""
    root = logs_root(folder)
    with contextlib.suppress(OSError):
        for entry in os.listdir(root):
            if entry not in keep:
                shutil.rmtree(root / entry, ignore_errors=True)


class ConsoleLog:
    """One VM's console log file, bounded by rotation (see the module)."""

    def __init__(self, lab: str, vm: str, folder: Path | None = None, cap: int = LOG_CAP) -> None:
        d = logs_dir(lab, folder)
        d.parent.mkdir(mode=0o700, exist_ok=True)
        d.mkdir(mode=0o700, exist_ok=True)
        self.path = d / f"{vm}{SUFFIX}"
        self.cap = cap
        self.rotations = 0
        self._file: BinaryIO | None = self.path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        if self._file is None:
            return
        try:
            while data:
                if self._size >= self.cap:
                    self._rotate()
                chunk = data[: self.cap - self._size]
                self._file.write(chunk)
                self._size += len(chunk)
                data = data[len(chunk) :]
            self._file.flush()
        except OSError:  # a full or vanished disk: the lab goes on without its log
            self.close()

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = self.path.open("ab")
        self._size = 0
        self.rotations += 1

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def read_log(lab: str, vm: str, folder: Path | None = None) -> bytes:
    """What is on disk of ``vm``'s console: the rotated part, then the current file."""
    follower = Follower(lab, vm, folder)
    try:
        return follower.backlog()
    finally:
        follower.close()


class Follower:
    """One VM's log: ``backlog()`` (what is on disk now), then ``read()`` (what is written
    after, also across a rotation), without a byte lost or repeated between the two."""

    def __init__(self, lab: str, vm: str, folder: Path | None = None) -> None:
        self.path = logs_dir(lab, folder) / f"{vm}{SUFFIX}"
        self._file: BinaryIO | None = None
        self._open(at_end=True)
        self._start = self._file.tell() if self._file is not None else 0

    def _open(self, at_end: bool) -> None:
        try:
            self._file = self.path.open("rb")
        except OSError:
            self._file = None
            return
        if at_end:
            self._file.seek(0, os.SEEK_END)

    def backlog(self) -> bytes:
        """The rotated part and the current file up to where ``read`` starts."""
        out = b""
        with contextlib.suppress(OSError):
            out = self.path.with_name(self.path.name + ".1").read_bytes()
        if self._file is not None:
            out += os.pread(self._file.fileno(), self._start, 0)
        return out

    def read(self) -> bytes:
        """What was written since the last call (b"" if nothing)."""
        if self._file is None:
            self._open(at_end=False)
            return self._file.read() if self._file is not None else b""
        out = self._file.read()
        try:
            now = os.stat(self.path)
        except OSError:
            return out
        held = os.fstat(self._file.fileno())
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):  # rotated
            out += self._file.read()
            self._file.close()
            self._open(at_end=False)
            if self._file is not None:
                out += self._file.read()
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
