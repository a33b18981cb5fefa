"""Progress of the long builds (the fast engine, the guests, the Linux image) on stderr.

A build reports through a ``Progress`` callable, one message at a time. A message that starts
with a step count, ``[n/m] text`` (or ``[n/~m]`` for an estimated total, ``[n]`` for none),
is a step: :class:`StderrProgress` rewrites one line in place for steps on a terminal and
prints every step as a line of its own anywhere else (a CI log, a pipe, a file). The counts
come from the build tools' own output: ninja's ``[n/m]`` lines (:func:`ninja_step`), kbuild's
``  CC      path.o`` lines (:func:`kbuild_step`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

Progress = Callable[[str], None]

_STEP = re.compile(r"^\[\d+(?:/~?\d+)?\] ")
_NINJA = re.compile(r"^\[(\d+)/(\d+)\] (.*)$")
# kbuild's quiet output: two spaces, the command's short name, its target (`  CC      x.o`).
_KBUILD = re.compile(r"^  ([A-Z][A-Z0-9_-]*) +(\S.*)$")


def step_line(done: int, total: int | None, text: str, *, estimated: bool = False) -> str:
    """``[done/total] text``; ``[done/~total]`` for an estimate, ``[done]`` without one."""
    if total is None or done > total:
        return f"[{done}] {text}"
    return f"[{done}/{'~' if estimated else ''}{total}] {text}"


def is_step(message: str) -> bool:
    return _STEP.match(message) is not None


def ninja_step(line: str) -> tuple[int, int, str] | None:
    """(done, total, what) from a line of ninja's output, or None for any other line."""
    m = _NINJA.match(line.rstrip("\n"))
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3)


def kbuild_step(line: str) -> str | None:
    """``CC kernel/fork.o`` from kbuild's ``  CC      kernel/fork.o``, or None."""
    m = _KBUILD.match(line.rstrip("\n"))
    if m is None:
        return None
    return f"{m.group(1)} {m.group(2)}"


class StderrProgress:
    """A ``Progress`` that writes to stderr (or ``stream``): one updating line for steps on a
    terminal, one line per step elsewhere. ``prefix`` starts every line; ``clock`` adds the
    seconds since the start (``[  12.3s] ``)."""

    def __init__(
        self,
        prefix: str = "",
        *,
        clock: bool = False,
        stream: TextIO | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if terminal is None:
            try:
                terminal = self.stream.isatty()
            except (AttributeError, ValueError):
                terminal = False
        self.terminal = terminal
        self.prefix = prefix
        self.clock = clock
        self.start = time.monotonic()
        self._open = False  # a step line is on screen without its newline

    def _head(self) -> str:
        stamp = f"[{time.monotonic() - self.start:6.1f}s] " if self.clock else ""
        return f"{stamp}{self.prefix}"

    def __call__(self, message: str) -> None:
        text = self._head() + message
        if self.terminal and is_step(message) and "\n" not in message:
            width = shutil.get_terminal_size((100, 24)).columns - 1
            self.stream.write("\r\x1b[K" + text[:width])
            self._open = True
        else:
            self.close()
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End an updating line (its last state stays on screen)."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def run_logged(
    cmd: Sequence[str],
    *,
    cwd: Path | None,
    log: Path,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``cmd`` with its output (stdout and stderr) appended to ``log``, calling
    ``on_line`` with each line as it comes; the exit status. OSError if it cannot start."""
    with log.open("ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
        )
        assert proc.stdout is not None
        with proc.stdout:
            for raw in proc.stdout:
                out.write(raw)
                on_line(raw.decode(errors="replace").rstrip("\n"))
        return proc.wait()
