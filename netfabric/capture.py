"""pcapng capture: one interface per switch port (named ``VM.ethN``), nanosecond timestamps.

Hand-written rather than scapy's ``PcapWriter``: this is on the fabric's hot path (every frame
of a captured switch), where building a scapy packet costs tens of microseconds a frame, and
scapy writes classic pcap with one link type and no interface names. The format (the pcapng
specification, draft-ietf-opsawg-pcapng): a Section Header Block, an Interface Description
Block per port (link type Ethernet, ``if_name``, ``if_tsresol`` = 9: nanoseconds), then an
Enhanced Packet Block per frame. Blocks are little-endian, 32-bit aligned, and carry their
length at both ends. Records are built with ``struct`` into a buffer and written in batches
(``flush``: the owner flushes at least every second and at exit, so a killed process leaves a
file that readers accept up to the last flush).
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from netfabric._state import StateReader

if TYPE_CHECKING:
    from netfabric.frame import Frame

SHB = 0x0A0D0D0A
IDB = 0x00000001
EPB = 0x00000006
ISB = 0x00000005
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
OPT_END = 0
OPT_SHB_USERAPPL = 4
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9
OPT_ISB_IFDROP = 5
STATS_BLOCK = 40  # bytes of an Interface Statistics Block with isb_ifdrop
# Buffered bytes that trigger a write by themselves.
FLUSH_BYTES = 1 << 20

_EPB_HEAD = struct.Struct("<IIIIIII")
_U32 = struct.Struct("<I")


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(_pad(len(value)))


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + _U32.pack(total)


class PcapngWriter:
    """Writes a pcapng section to ``out`` (a binary file); ``write`` takes whole frames."""

    def __init__(self, out: BinaryIO, application: str = "hvfabric") -> None:
        self.out = out
        self._buf: list[bytes] = []
        self._buffered = 0
        self.interfaces: list[str] = []
        self.frames = 0
        self.closed = False
        opts = _option(OPT_SHB_USERAPPL, application.encode()) + _option(OPT_END, b"")
        body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + opts
        self._append(_block(SHB, body))

    def _append(self, data: bytes) -> None:
        self._buf.append(data)
        self._buffered += len(data)
        if self._buffered >= FLUSH_BYTES:
            self.flush()

    def add_interface(self, name: str, snaplen: int = 0) -> int:
        """A new interface (a switch port); returns its id for ``write``."""
        opts = (
            _option(OPT_IF_NAME, name.encode())
            + _option(OPT_IF_TSRESOL, bytes([9]))
            + _option(OPT_END, b"")
        )
        self._append(_block(IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen) + opts))
        self.interfaces.append(name)
        return len(self.interfaces) - 1

    def write(self, iface: int, frame: bytes | bytearray | memoryview, ts_ns: int) -> None:
        if not 0 <= iface < len(self.interfaces):
            raise ValueError(f"no interface {iface} in this capture")
        n = len(frame)
        pad = _pad(n)
        total = 32 + n + pad
        head = _EPB_HEAD.pack(
            EPB, total, iface, (ts_ns >> 32) & 0xFFFF_FFFF, ts_ns & 0xFFFF_FFFF, n, n
        )
        self._buf.append(head)
        self._buf.append(bytes(frame))
        self._buf.append(bytes(pad) + _U32.pack(total) if pad else _U32.pack(total))
        self._buffered += total
        self.frames += 1
        if self._buffered >= FLUSH_BYTES:
            self.flush()

    def write_drops(self, iface: int, dropped: int, ts_ns: int) -> None:
        """An Interface Statistics Block: ``dropped`` frames lost on ``iface`` so far (as
        ``isb_ifdrop``: Wireshark shows it in the capture file's properties)."""
        if not 0 <= iface < len(self.interfaces):
            raise ValueError(f"no interface {iface} in this capture")
        opts = _option(OPT_ISB_IFDROP, struct.pack("<Q", dropped)) + _option(OPT_END, b"")
        head = struct.pack("<III", iface, (ts_ns >> 32) & 0xFFFF_FFFF, ts_ns & 0xFFFF_FFFF)
        self._append(_block(ISB, head + opts))

    def save_state(self) -> dict[str, Any]:
        """What the writer knows of its section that a restored one must match: its
        interfaces, in id order. Nothing else in the bytes it writes depends on the past
        (timestamps are the caller's, absolute), so a restored switch's capture, a new file,
        holds the same frames from the snapshot's time on; ``frames`` counts what that file
        holds and starts again at 0."""
        return {"interfaces": list(self.interfaces)}

    def load_state(self, st: StateReader) -> None:
        """Check ``save_state``'s against this writer: the same interfaces (a restored
        switch adds one per port, in the same order), or ``st.fail``."""
        names = st.list("interfaces", len(self.interfaces))
        st.check(
            names == self.interfaces, "interfaces",
            f"the snapshot's capture has interfaces {names!r:.200}, this one"
            f" {self.interfaces!r:.200}",
        )  # fmt: skip

    def flush(self) -> None:
        if self._buf:
            self.out.write(b"".join(self._buf))
            self._buf.clear()
            self._buffered = 0
        self.out.flush()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True


class CaptureError(Exception):
    """A capture file that cannot be written (the message names it and says why)."""


def open_capture(path: Path, application: str = "hvfabric") -> tuple[BinaryIO, PcapngWriter]:
    """A new capture in ``path`` (created, or an existing regular file truncated), its
    section header already written: a file that cannot take it fails here, not at the first
    flush. Anything but a regular file is refused before it is opened for writing: a FIFO
    would block the open until a reader came, a device would take the frames."""
    name = str(path)
    try:
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise CaptureError(f"capture {name!r} is not a regular file")
        # O_NONBLOCK: a FIFO put there since the check fails (ENXIO) instead of blocking;
        # truncated only once fstat says it is a regular file.
        flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(path, flags, 0o666)
    except (OSError, ValueError) as e:
        raise CaptureError(f"cannot write capture {name!r}: {_why(e)}") from None
    out = os.fdopen(fd, "wb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CaptureError(f"capture {name!r} is not a regular file")
        os.ftruncate(fd, 0)
        writer = PcapngWriter(out, application)
        writer.flush()
    except BaseException as e:
        with contextlib.suppress(OSError):  # closes the file though its flush fails again
            out.close()
        if isinstance(e, OSError):
            raise CaptureError(f"cannot write capture {name!r}: {_why(e)}") from None
        raise
    return out, writer


class PortCapture:
    """A pcapng file of one port's traffic, as a listener on the port (``SwitchPort``
    opens one for ``capture=``): one interface named for the port, every frame as the wire
    carries it (an offloaded one as its segments). A ``CaptureError`` if ``path`` cannot be
    written."""

    def __init__(self, path: Path, name: str) -> None:
        self._file, self.writer = open_capture(path)
        self.writer.add_interface(name)

    def __call__(self, port_id: int, frame: Frame, ts_ns: int) -> None:
        if self.writer.closed:
            return
        for wire in frame.wire():
            self.writer.write(0, wire, ts_ns)

    def flush(self) -> None:
        if not self.writer.closed:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self._file.close()


def _why(e: OSError | ValueError) -> str:
    return (e.strerror if isinstance(e, OSError) else None) or str(e)
