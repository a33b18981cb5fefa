"""A VM's console as an async byte stream for the host side.

Guest output is appended to a transcript; readers either take it in order
(``receive_some``) or wait for a pattern (``wait_for``). Input goes to the machine, which hands
it to the UART (or SBI getchar) as the guest makes room.

Nothing is lost to a reader: once anyone has called ``receive_some``, the console is
flow-controlled. When the unread backlog passes ``BACKLOG_HIGH`` the VM holds the guest
back (its UART says busy, SBI console writes wait), and lets it go on once the reader is
under ``BACKLOG_LOW``; so a slow reader (``hv run > slow-disk``) slows the guest instead of
dropping output. Without a streaming reader (an API user that only calls ``wait_for`` or
reads ``transcript``), the guest is never held back: the transcript keeps the last
``TRANSCRIPT_LIMIT`` bytes and counts what it drops (``dropped``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import trio

# Transcript bytes kept for ``wait_for`` and ``transcript``: older output is dropped past this.
TRANSCRIPT_LIMIT = 8 << 20
# Unread bytes at which a streaming reader holds the guest back, and at which it lets go.
BACKLOG_HIGH = 1 << 20
BACKLOG_LOW = 256 << 10


class Console:
    """Guest console: ``await receive_some()``, ``await send_all(b)``, ``await wait_for(s)``."""

    def __init__(self, feed: Callable[[bytes], None]) -> None:
        self._feed = feed
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0] in the whole output
        self._read = 0  # absolute offset up to which receive_some() has read
        self._match = 0  # absolute offset from which wait_for() searches
        self._changed = trio.Event()
        self._closed = False
        self.streaming = False  # someone reads with receive_some: flow control applies
        # wait_for calls in progress (a script talking to the guest): in virtual time the
        # guest then stops after output until the script has reacted (docs/TIME.md)
        self.matchers = 0
        self.dropped = 0  # bytes dropped from the transcript that a reader had not read
        self.on_drained: Callable[[], None] = lambda: None  # the backlog fell under LOW

    # -- machine side ----------------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        if not data:
            return
        self._buf += data
        excess = len(self._buf) - TRANSCRIPT_LIMIT
        if excess > 0:
            unread_lost = min(excess, max(0, self._base + excess - self._read))
            if self.streaming:
                self.dropped += unread_lost
            del self._buf[:excess]
            self._base += excess
        self._notify()

    def _close(self) -> None:
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        # Wake everyone waiting on the current event and start a new one. Readers check the
        # buffer and await the event with no checkpoint in between, so no wake-up is lost.
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    # -- host side -------------------------------------------------------------------------

    @property
    def transcript(self) -> bytes:
        """All output kept so far (up to TRANSCRIPT_LIMIT bytes)."""
        return bytes(self._buf)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backlog(self) -> int:
        """Bytes a streaming reader has not read yet (0 without one)."""
        if not self.streaming:
            return 0
        return self._base + len(self._buf) - max(self._read, self._base)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """The next output bytes, in order; b"" once the VM has stopped and all is read.
        The first call makes the console flow-controlled (see the module docstring)."""
        self.streaming = True
        while True:
            start = max(self._read, self._base)
            end = self._base + len(self._buf)
            if end > start:
                n = min(end - start, max_bytes)
                self._read = start + n
                off = start - self._base
                if self.backlog < BACKLOG_LOW:
                    self.on_drained()
                return bytes(self._buf[off : off + n])
            if self._closed:
                return b""
            await self._wait_change()

    async def send_all(self, data: bytes | str) -> None:
        """Type ``data`` at the guest's console."""
        if isinstance(data, str):
            data = data.encode()
        self._feed(data)
        await trio.lowlevel.checkpoint()

    async def wait_for(self, pattern: bytes | str | re.Pattern[bytes]) -> bytes:
        """Wait until ``pattern`` appears in output after the previous match; return the
        output up to and including it. Raises EOFError if the VM stops first. Use
        ``trio.fail_after`` for a timeout."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        self.matchers += 1
        try:
            while True:
                start = max(self._match, self._base)
                m = rx.search(self._buf, start - self._base)
                if m is not None:
                    self._match = self._base + m.end()
                    return bytes(self._buf[start - self._base : m.end()])
                if self._closed:
                    raise EOFError(f"console closed before {rx.pattern!r} appeared")
                await self._wait_change()
        finally:
            self.matchers -= 1
