"""A VM's console as an async byte stream for the host side.

Guest output is appended to a transcript; readers either take it in order
(``receive_some``) or wait for a pattern (``wait_for``). Input goes to the machine, which hands
it to the UART (or SBI getchar) as the guest makes room.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import trio

# Transcript bytes kept for ``wait_for`` and ``transcript``: older output is dropped past this.
TRANSCRIPT_LIMIT = 8 << 20


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

    # -- machine side ----------------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        if not data:
            return
        self._buf += data
        excess = len(self._buf) - TRANSCRIPT_LIMIT
        if excess > 0:
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

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        """The next output bytes, in order; b"" once the VM has stopped and all is read."""
        while True:
            start = max(self._read, self._base)
            end = self._base + len(self._buf)
            if end > start:
                n = min(end - start, max_bytes)
                self._read = start + n
                off = start - self._base
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
        while True:
            start = max(self._match, self._base)
            m = rx.search(self._buf, start - self._base)
            if m is not None:
                self._match = self._base + m.end()
                return bytes(self._buf[start - self._base : m.end()])
            if self._closed:
                raise EOFError(f"console closed before {rx.pattern!r} appeared")
            await self._wait_change()
