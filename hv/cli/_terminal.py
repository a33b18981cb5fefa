"""A terminal as a guest's console: its keys raw (``raw_terminal``) and the Ctrl-A escape
(``EscapeKeys``), for ``hv run``, ``hv up --attach`` and ``hv console``."""

from __future__ import annotations

import contextlib
import os
import termios
from collections.abc import Iterator

ESCAPE = 0x01  # Ctrl-A, then 'x' quits (as in QEMU's -nographic console)
# Exit status when the reader of hv's output went away (as a Unix tool killed by SIGPIPE).
EXIT_OUTPUT_CLOSED = 128 + 13


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[bool]:
    """Keys reach the guest as typed (no line editing, echo or Ctrl-C signal on the host); on a
    pipe, nothing changes. Output processing stays on, so a guest's bare LF starts a new line
    at the left margin."""
    if not os.isatty(fd):
        yield False
        return
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[0] &= ~(termios.ICRNL | termios.IXON | termios.INLCR | termios.IGNCR | termios.BRKINT)
    mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0
    try:
        termios.tcsetattr(fd, termios.TCSANOW, mode)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class EscapeKeys:
    """A terminal's keys on their way to a console: Ctrl-A x means quit (detach), Ctrl-A
    Ctrl-A sends one Ctrl-A, Ctrl-A and any other key send both. An escape split across two
    reads is kept for the next."""

    def __init__(self) -> None:
        self.escape = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to send, and whether Ctrl-A x came (what followed it is dropped)."""
        out = bytearray()
        for byte in data:
            if self.escape:
                self.escape = False
                if byte in b"xX":
                    return bytes(out), True
                out += bytes([ESCAPE]) if byte == ESCAPE else bytes([ESCAPE, byte])
            elif byte == ESCAPE:
                self.escape = True
            else:
                out.append(byte)
        return bytes(out), False
