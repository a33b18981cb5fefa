"""The switch's TFTP server: read-only, from one host directory, sans-IO.

Theory of operation. RFC 1350 with option negotiation (RFC 2347): ``blksize`` (RFC 2348,
capped so a block fits the path MTU: 1468 bytes on a 1500-byte link, which is what U-Boot's
``tftpboot`` asks for), ``tsize`` (RFC 2349: the file's size, so a client can show progress
and check room), ``timeout`` (RFC 2349) and ``windowsize`` (RFC 7440, capped at
``WINDOW_MAX`` blocks). A read request (RRQ to port 69) opens the file and starts a transfer
on a port of its own (the transfer ID, as a real server's new socket would be): an OACK if
any option was accepted, else DATA 1. Each ACK of the window's last block sends the next
window; an ACK of an earlier block of the window restarts the window after it (RFC 7440);
a duplicate ACK is not answered with a duplicate window (the Sorcerer's Apprentice fix of
RFC 1123 4.2.3.1), except with a window above one block, where it is how a client reports a
lost first block. The transfer ends with the ACK of the short last block (possibly empty);
block numbers wrap from 65535 to 0 past 32 MiB at 512-byte blocks (U-Boot and Linux
clients expect 0).

Time is the caller's: ``tick(now)`` retransmits what was not acknowledged within the
timeout and abandons a transfer after ``retries`` silent timeouts; ``next_deadline()`` says
when to call it. Files are read a block at a time with ``os.pread`` (a retransmission reads
again; nothing is cached), so a 1 GiB image costs no memory; ``netascii`` mode converts line
ends on the fly and keeps only the current window.

Only files under the root are served: names with ``..`` components, absolute names and
symlinks that lead out of the root are refused with "access violation", as are files that
are not regular (a FIFO cannot stall the server: files are opened non-blocking and checked).
Write requests get "access violation" too: the server is read-only. At most
``MAX_TRANSFERS`` run at once (a guest cannot exhaust the host's file descriptors), each
closed when it ends, times out, or the client sends an ERROR.

Slots against a client that never ACKs: one client address holds at most ``MAX_PER_CLIENT``
transfers at once (the next RRQ gets an ERROR, ``tftp_client_limit``), and a ``timeout``
option above ``TIMEOUT_MAX`` seconds is refused by leaving it out of the OACK (RFC 2349 lets
a server only accept the client's value or decline it; ``tftp_timeout_refused``), so the
server's own timeout applies. A silent transfer is abandoned after ``retries`` timeouts of at
most ``TIMEOUT_MAX`` seconds (a minute at most, not 255 s x 5 retries), freeing its slot.
"""

from __future__ import annotations

import collections
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any, NamedTuple

from netfabric._state import StateReader
from netfabric.services._ip import Datagram, Malformed
from netfabric.services.config import TFTP_BLKSIZE_MAX, ServicesConfig

PORT = 69
RRQ, WRQ, DATA, ACK, ERROR, OACK = range(1, 7)
ERR_UNDEFINED, ERR_NOT_FOUND, ERR_ACCESS, ERR_ILLEGAL, ERR_UNKNOWN_TID = 0, 1, 2, 4, 5
DEFAULT_BLKSIZE = 512
WINDOW_MAX = 64
MAX_TRANSFERS = 64  # transfers at once per switch (each holds a file descriptor)
MAX_PER_CLIENT = 4  # of those, transfers at once from one client address
TIMEOUT_MAX = 10  # the longest RFC 2349 ``timeout`` a client may ask for, in seconds
PORT_FIRST, PORT_LAST = 49152, 65535  # our transfer IDs: the dynamic port range
UDP_IP_TFTP_HEADERS = 20 + 8 + 4  # what a DATA packet adds to a block


def error_packet(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode("ascii", "replace") + b"\0"


def parse_request(payload: bytes) -> tuple[bytes, str, dict[str, bytes]]:
    """An RRQ/WRQ's file name, mode (lower case) and options (lower-case names; the first
    of a repeated one wins)."""
    fields = payload[2:].split(b"\0")
    if len(fields) < 3 or fields[-1] != b"" or not fields[0]:
        raise Malformed("tftp_bad_request")
    fields.pop()
    name, mode, rest = fields[0], fields[1], fields[2:]
    if len(rest) % 2:
        rest.pop()  # a trailing option name without a value: ignored
    try:
        mode_s = mode.decode("ascii").lower()
        options: dict[str, bytes] = {}
        for i in range(0, len(rest), 2):
            options.setdefault(rest[i].decode("ascii").lower(), rest[i + 1])
    except UnicodeDecodeError:
        raise Malformed("tftp_bad_request") from None
    return name, mode_s, options


def _int(value: bytes | None, low: int, high: int, *, cap: bool = True) -> int | None:
    """An option's value if it is a number in low..high (above: ``high`` if ``cap``)."""
    if value is None or not value.isdigit() or len(value) > 10:
        return None
    n = int(value)
    if n < low or (n > high and not cap):
        return None
    return min(n, high)


class _Refusal(NamedTuple):
    code: int
    message: str


class _Octet:
    """Blocks of a file as they are."""

    def __init__(self, fd: int, blksize: int) -> None:
        self.fd, self.blksize = fd, blksize

    def block(self, n: int) -> bytes:
        return os.pread(self.fd, self.blksize, (n - 1) * self.blksize)

    def forget(self, upto: int) -> None:
        pass


class _Netascii:
    """Blocks of a file with line ends in netascii (LF -> CR LF, CR -> CR NUL), made in
    order; the blocks not yet acknowledged are kept for retransmission."""

    def __init__(self, fd: int, blksize: int) -> None:
        self.fd, self.blksize = fd, blksize
        self.pos = 0
        self.pending = bytearray()
        self.eof = False
        self.next = 1
        self.blocks: dict[int, bytes] = {}

    def block(self, n: int) -> bytes:
        while self.next <= n:
            while len(self.pending) < self.blksize and not self.eof:
                chunk = os.pread(self.fd, 65536, self.pos)
                self.pos += len(chunk)
                self.eof = not chunk
                self.pending += chunk.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
            self.blocks[self.next] = bytes(self.pending[: self.blksize])
            del self.pending[: self.blksize]
            self.next += 1
        return self.blocks.get(n, b"")

    def forget(self, upto: int) -> None:
        for k in [k for k in self.blocks if k <= upto]:
            del self.blocks[k]


@dataclass(eq=False)
class _Transfer:
    mac: bytes
    ip: bytes
    client_port: int
    port: int
    fd: int
    name: bytes
    source: _Octet | _Netascii
    blksize: int
    windowsize: int
    timeout: float
    deadline: float
    oack: bytes | None = None  # sent, not yet acknowledged (block 0)
    acked: int = 0  # the last block acknowledged (absolute number, from 1)
    sent: int = 0  # the last block sent
    last: int | None = None  # the final (short) block's number, once read
    tries: int = 0

    def datagram(self, payload: bytes) -> Datagram:
        return Datagram(self.mac, self.ip, self.port, self.client_port, payload)

    def window(self) -> list[Datagram]:
        """The blocks after the last acknowledged one, a window's worth (or the OACK)."""
        if self.oack is not None:
            return [self.datagram(self.oack)]
        out = []
        n = self.acked + 1
        end = self.acked + self.windowsize
        if self.last is not None:
            end = min(end, self.last)
        while n <= end:
            data = self.source.block(n)
            if len(data) < self.blksize:
                self.last = end = n
            out.append(self.datagram(struct.pack("!HH", DATA, n & 0xFFFF) + data))
            n += 1
        self.sent = max(self.sent, end)
        return out


class TftpServer:
    def __init__(
        self, config: ServicesConfig, counters: collections.Counter[str] | None = None
    ) -> None:
        if config.tftp_root is None:
            raise ValueError("the services' configuration has no TFTP root")
        self.counters: collections.Counter[str] = (
            counters if counters is not None else collections.Counter()
        )
        self.root = os.path.realpath(config.tftp_root)
        self.max_blksize = min(TFTP_BLKSIZE_MAX, config.mtu - UDP_IP_TFTP_HEADERS)
        self.timeout = config.tftp_timeout
        self.retries = config.tftp_retries
        self.transfers: dict[int, _Transfer] = {}  # by our port
        self._by_client: dict[tuple[bytes, int], _Transfer] = {}
        self._per_address: collections.Counter[bytes] = collections.Counter()
        self._next_port = PORT_FIRST

    def serves(self, port: int) -> bool:
        return port == PORT or port in self.transfers

    def next_deadline(self) -> float | None:
        return min((t.deadline for t in self.transfers.values()), default=None)

    def close(self) -> None:
        for t in list(self.transfers.values()):
            self._end(t)

    # -- saved state (a lab's snapshot) -------------------------------------------------------

    def save_state(self) -> dict[str, Any]:
        """The next transfer port (it is in every reply). Transfers under way are not saved:
        each holds an open host file, and a restored lab's server starts without them (a
        client still in one gets no answer to its ACKs, times out and asks again, as after
        a lost server); ``transfers`` says how many there were."""
        return {"next_port": self._next_port, "transfers": len(self.transfers)}

    def load_state(self, st: StateReader) -> None:
        """Take back ``save_state``'s: the next port; transfers under way here end."""
        next_port = st.int("next_port", PORT_FIRST, PORT_LAST)
        st.int("transfers", 0, MAX_TRANSFERS)
        self.close()
        self._next_port = next_port

    # -- packets -----------------------------------------------------------------------------

    def handle(
        self, mac: bytes, ip: bytes, sport: int, dport: int, payload: bytes, now: float
    ) -> list[Datagram]:
        if len(payload) < 4 or sport == 0:
            raise Malformed("tftp_short")
        op = int.from_bytes(payload[:2], "big")
        if dport == PORT:
            if op == RRQ:
                return self._rrq(mac, ip, sport, payload, now)
            if op == WRQ:
                parse_request(payload)
                self.counters["tftp_wrq_refused"] += 1
                return [self._error_to(mac, ip, sport, ERR_ACCESS, "access violation: read-only")]
            raise Malformed("tftp_not_a_request")
        t = self.transfers.get(dport)
        if t is None:
            self.counters["tftp_no_transfer"] += 1
            return []
        if (ip, sport) != (t.ip, t.client_port):  # RFC 1350: not this transfer's client
            self.counters["tftp_unknown_tid"] += 1
            err = error_packet(ERR_UNKNOWN_TID, "unknown transfer ID")
            return [Datagram(mac, ip, dport, sport, err)]
        if op == ACK:
            return self._ack(t, int.from_bytes(payload[2:4], "big"), now)
        if op == ERROR:
            self.counters["tftp_client_error"] += 1
            self._end(t)
            return []
        raise Malformed("tftp_unexpected_opcode")

    def tick(self, now: float) -> list[Datagram]:
        out: list[Datagram] = []
        for t in [t for t in self.transfers.values() if t.deadline <= now]:
            t.tries += 1
            if t.tries > self.retries:
                self.counters["tftp_timeouts"] += 1
                self._end(t)
                continue
            self.counters["tftp_retransmits"] += 1
            out += self._window(t)
            t.deadline = now + t.timeout
        return out

    # -- a transfer's life ----------------------------------------------------------------

    def _rrq(self, mac: bytes, ip: bytes, sport: int, payload: bytes, now: float) -> list[Datagram]:
        name, mode, options = parse_request(payload)
        self.counters["tftp_rrq"] += 1
        old = self._by_client.get((ip, sport))
        if old is not None:
            if old.name == name and old.acked == 0:  # the client repeated its request
                self.counters["tftp_duplicate_rrq"] += 1
                return []
            self._end(old)
        if mode not in ("octet", "netascii"):
            return [self._error_to(mac, ip, sport, ERR_ILLEGAL, f"mode {mode!r} not supported")]
        if len(self.transfers) >= MAX_TRANSFERS:
            self.counters["tftp_busy"] += 1
            return [self._error_to(mac, ip, sport, ERR_UNDEFINED, "too many transfers")]
        if self._per_address[ip] >= MAX_PER_CLIENT:
            self.counters["tftp_client_limit"] += 1
            return [self._error_to(mac, ip, sport, ERR_UNDEFINED, "too many transfers")]
        opened = self._open(name)
        if isinstance(opened, _Refusal):
            self.counters["tftp_refused"] += 1
            return [self._error_to(mac, ip, sport, opened.code, opened.message)]
        fd, size = opened
        accepted: dict[str, int] = {}
        blksize = _int(options.get("blksize"), 8, self.max_blksize)
        if blksize is not None:
            accepted["blksize"] = blksize
        if mode == "octet" and _int(options.get("tsize"), 0, 0) is not None:
            accepted["tsize"] = size
        timeout = _int(options.get("timeout"), 1, 255, cap=False)
        if timeout is not None and timeout > TIMEOUT_MAX:
            self.counters["tftp_timeout_refused"] += 1
            timeout = None
        if timeout is not None:
            accepted["timeout"] = timeout
        window = _int(options.get("windowsize"), 1, WINDOW_MAX)
        if window is not None:
            accepted["windowsize"] = window
        bs = blksize or DEFAULT_BLKSIZE
        source = _Octet(fd, bs) if mode == "octet" else _Netascii(fd, bs)
        t = _Transfer(
            mac, ip, sport, self._port(), fd, name, source, bs, window or 1,
            float(timeout) if timeout is not None else self.timeout, now,
        )  # fmt: skip
        if accepted:
            t.oack = struct.pack("!H", OACK) + b"".join(
                k.encode() + b"\0" + str(v).encode() + b"\0" for k, v in accepted.items()
            )
        self.transfers[t.port] = t
        self._by_client[(ip, sport)] = t
        self._per_address[ip] += 1
        return self._send(t, now)

    def _ack(self, t: _Transfer, block: int, now: float) -> list[Datagram]:
        if t.oack is not None:
            if block != 0:
                self.counters["tftp_stray_ack"] += 1
                return []
            t.oack = None
            return self._send(t, now)
        n = t.acked + ((block - t.acked) & 0xFFFF)  # the block it means, modulo 65536
        if n == t.acked:
            self.counters["tftp_duplicate_ack"] += 1
            # With one block in flight a duplicate ACK is no news (the Sorcerer's Apprentice);
            # with a window it says the window's first block was lost.
            return self._send(t, now) if t.windowsize > 1 else []
        if n > t.sent:
            self.counters["tftp_stray_ack"] += 1
            return []
        t.acked = n
        t.source.forget(n)
        if n == t.last:
            self.counters["tftp_done"] += 1
            self._end(t)
            return []
        return self._send(t, now)

    def _send(self, t: _Transfer, now: float) -> list[Datagram]:
        t.tries = 0
        t.deadline = now + t.timeout
        return self._window(t)

    def _window(self, t: _Transfer) -> list[Datagram]:
        try:
            return t.window()
        except OSError:  # the host's file went bad under us (EIO, a truncated mount)
            self.counters["tftp_read_errors"] += 1
            self._end(t)
            return [t.datagram(error_packet(ERR_UNDEFINED, "read error"))]

    def _end(self, t: _Transfer) -> None:
        if self.transfers.get(t.port) is t:
            del self.transfers[t.port]
            self._per_address[t.ip] -= 1
            if not self._per_address[t.ip]:
                del self._per_address[t.ip]
        if self._by_client.get((t.ip, t.client_port)) is t:
            del self._by_client[(t.ip, t.client_port)]
        os.close(t.fd)

    def _port(self) -> int:
        while True:
            port = self._next_port
            self._next_port = PORT_FIRST if port >= PORT_LAST else port + 1
            if port not in self.transfers:
                return port

    def _error_to(self, mac: bytes, ip: bytes, sport: int, code: int, message: str) -> Datagram:
        """An ERROR for a request, from a fresh port as a new transfer would use."""
        return Datagram(mac, ip, self._port(), sport, error_packet(code, message))

    # -- files -----------------------------------------------------------------------------

    def _open(self, name: bytes) -> tuple[int, int] | _Refusal:
        """(fd, size) of the file ``name`` under the root, or why not."""
        text = name.decode("utf-8", "surrogateescape")
        if text.startswith("/") or ".." in text.split("/"):
            return _Refusal(ERR_ACCESS, "access violation: outside the TFTP root")
        path = os.path.realpath(os.path.join(self.root, text))
        if os.path.commonpath([self.root, path]) != self.root:
            return _Refusal(ERR_ACCESS, "access violation: outside the TFTP root")
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except (FileNotFoundError, NotADirectoryError):
            return _Refusal(ERR_NOT_FOUND, "file not found")
        except PermissionError:
            return _Refusal(ERR_ACCESS, "access violation: permission denied")
        except (OSError, ValueError) as e:  # e.g. ENAMETOOLONG, ELOOP, an embedded NUL
            return _Refusal(ERR_ACCESS, f"access violation: {type(e).__name__}")
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return _Refusal(ERR_UNDEFINED, "cannot read the file")
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return _Refusal(ERR_ACCESS, "access violation: not a regular file")
        return fd, st.st_size
