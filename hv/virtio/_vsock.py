"""virtio-vsock (virtio 1.2, section 5.10): a socket channel between the host and the guest
that needs no network, and the host's end of it as trio streams.

Theory of operation. Three queues: rx (0, host to guest), tx (1, guest to host), event (2).
Config space is the guest's CID (le64); the host is CID 2. Features: VERSION_1 and
VIRTIO_VSOCK_F_STREAM (no SEQPACKET; a driver that knows no feature bits gets stream
sockets, as the spec says). Every packet is the 44-byte ``virtio_vsock_hdr`` and its
payload; the device reads a tx chain's readable bytes as one stream (the driver may split
the header from the payload, or not) and writes rx packets into a chain's writable bytes.

Connections are keyed by (host port, guest port). The host opens one with
``await dev.connect(port)`` (REQUEST from an ephemeral host port; the guest's RESPONSE
makes a ``VsockStream``, its RST raises ``VsockRefused``); it accepts the guest's with
``dev.listen(port)`` and ``await listener.accept()``. A REQUEST to a port nobody listens on,
and any packet of no known connection, is answered with RST. Closing is the spec's: SHUTDOWN
with RCV|SEND, and the peer's RST ends it (a guest that never sends that RST keeps the slot
until a new connection needs it: then the device sends the RST itself, the spec's
"implementation-specific amount of time"). Shutting down one way: ``send_eof`` is
SHUTDOWN(SEND); the guest's SHUTDOWN(SEND) is ``receive_some`` returning b"", its
SHUTDOWN(RCV) makes ``send_all`` raise ``trio.BrokenResourceError``, as does an RST.

Credit (5.10.6.3). Every packet carries the sender's ``buf_alloc`` and ``fwd_cnt``. The
device never sends a connection more payload than the guest's last advertised free space
(``buf_alloc - (tx_cnt - fwd_cnt)``); what waits for credit stays in the connection's
outgoing buffer and goes when a CREDIT_UPDATE (or any packet) brings more. Our own side
advertises ``BUF_ALLOC`` per connection and ``fwd_cnt`` = the bytes the host has read; a
CREDIT_UPDATE goes to the guest when the host's reading has freed half of it (or on the
guest's CREDIT_REQUEST). A guest that sends past our credit broke the rule: RST, counted
(``credit_overrun``).

Bounds (hostile guests, docs/HOSTILE.md): at most ``MAX_CONNECTIONS`` (256) connections
per device (a REQUEST beyond is answered with RST and counted, ``connections_full``);
``BUF_ALLOC`` (256 KiB) of guest data buffered per connection for the host to read;
``OUT_MAX`` (256 KiB) of host data per connection waiting for the guest's credit or rx
buffers (``send_all`` waits beyond that); ``MAX_REPLIES`` (256) RSTs to stray packets
waiting for rx buffers (more are dropped, ``replies_dropped``); ``LISTEN_BACKLOG`` (64)
connections per listener not yet accepted (more are refused). Per connection the other
control packets are flags, not a queue, so a guest that posts no rx buffers costs at most
these. A tx chain is read only as far as its header's ``len`` (at most 64 KiB of payload
counts: a longer packet is past any credit we give).

Virtual time. What the guest sends reaches the host streams at once (as console output);
what the host sends, or reading that frees credit, is host input: in virtual time it is
handed to the guest through ``DeviceTime.host_input``, at the guest's time when it next runs
(a guest asleep in ``wfi`` with nothing due wakes at the lab's newest time), as typed
console input is; nothing here ever waits in the lab's timeline.

Reset. A device reset (the driver writes Status 0, a reboot, the VM stopping) breaks every
open stream (``trio.BrokenResourceError``) and makes pending ``connect`` calls raise
``VsockUnavailable``; listeners stay. The guest's driver then starts from nothing, so no
event is due; ``transport_reset()`` is the host dropping every connection while the driver
runs: it sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, and the guest's
driver closes its connections and reads the CID again (5.10.6.6).
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio

from hv._errors import GuestError, HostError
from hv.hw import Counters, Fields, GuestMemory, State
from hv.virtio._mmio import VirtioBackend, VirtioMmio
from hv.virtio._queue import Virtqueue

DEVICE_ID_VSOCK = 19
F_STREAM = 1 << 0
HOST_CID = 2
RX, TX, EVENT = 0, 1, 2
TYPE_STREAM = 1

OP_INVALID = 0
OP_REQUEST = 1
OP_RESPONSE = 2
OP_RST = 3
OP_SHUTDOWN = 4
OP_RW = 5
OP_CREDIT_UPDATE = 6
OP_CREDIT_REQUEST = 7
SHUTDOWN_RCV = 1
SHUTDOWN_SEND = 2
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND
EVENT_TRANSPORT_RESET = 0

HDR = struct.Struct("<QQIIIHHIII")  # src_cid dst_cid src_port dst_port len type op flags
HDR_LEN = HDR.size  # 44                buf_alloc fwd_cnt
U32 = 0xFFFF_FFFF

# Bounds (the module docstring says why).
MAX_CONNECTIONS = 256
BUF_ALLOC = 256 << 10
OUT_MAX = 256 << 10
MAX_PKT = 64 << 10  # payload per packet, at most (Linux's own limit)
MAX_REPLIES = 256
LISTEN_BACKLOG = 64
# Connections a snapshot tells the guest were reset, at most (more are left to the guest's
# own timeouts): the table's and those closed with their RST still to send.
SAVED_RESETS_MAX = 4 * MAX_CONNECTIONS
# Ephemeral host ports for connect() (Linux's own range for its ephemeral vsock ports).
EPHEMERAL_LO, EPHEMERAL_HI = 49152, 65535
RECEIVE_DEFAULT = 64 << 10

VSOCK_COUNTERS = frozenset(
    {
        "tx_packets",  # packets the guest sent (tx queue), well-formed or not
        "tx_bytes",  # payload bytes of the guest's RW packets, taken
        "rx_packets",  # packets put in the guest's rx queue
        "rx_bytes",  # payload bytes of them
        "connections_in",  # guest -> host connections accepted (RESPONSE sent)
        "connections_out",  # host -> guest connections the guest accepted
        "refused_in",  # guest REQUESTs answered with RST (no listener, backlog full...)
        "refused_out",  # host connects the guest answered with RST
        "resets_in",  # RSTs the guest sent on a live connection
        "resets_out",  # RSTs the device sent (replies and aborts)
        "events",  # TRANSPORT_RESET events put in the event queue
        # the guest's mistakes
        "bad_header",  # a tx chain shorter than the 44-byte header: dropped
        "bad_src_cid",  # not from the guest's CID: dropped
        "bad_type",  # not a stream packet: RST
        "bad_length",  # len past the chain's bytes: dropped (RST if it had a connection)
        "bad_op",  # an op that makes no sense there: RST
        "unknown_cid",  # to a CID other than the host: RST
        "unknown_connection",  # a packet of no connection: RST
        "credit_overrun",  # more data than our advertised credit: RST
        "data_after_shutdown",  # RW after the guest's own SHUTDOWN(SEND): RST
        "rx_bad_buffer",  # an rx buffer with no room for a header (or for data, when data
        # waits): given back empty
        # bounds
        "connections_full",  # a connection refused: MAX_CONNECTIONS live
        "evicted",  # a closing connection the guest never finished: RST to free its slot
        "replies_dropped",  # an RST reply dropped: MAX_REPLIES wait for rx buffers
        "backlog_full",  # a guest connection refused: its listener's backlog is full
    }
)


class VsockError(HostError):
    """A vsock connection the host asked for cannot be had."""


class VsockRefused(VsockError):
    """The guest answered a connect with RST: nothing listens on that port."""


class VsockUnavailable(VsockError):
    """The guest's vsock driver is not up (not yet, reset, or the VM stopped)."""


@dataclass
class _Conn:
    """One connection, as the device keeps it (the host's ``VsockStream`` reads it)."""

    host_port: int
    guest_port: int
    state: str = "connecting"  # connecting, established, closing, closed
    # what the guest told us: its receive buffer, and how much of what we sent it consumed
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    tx_cnt: int = 0  # payload bytes sent to the guest (u32, free-running)
    fwd_cnt: int = 0  # payload bytes the host read (u32, free-running)
    last_fwd_sent: int = 0  # the fwd_cnt the guest last heard
    # control packets due: flags, so a connection's backlog is bounded whatever the guest does
    need_request: bool = False
    need_response: bool = False
    need_credit: bool = False
    need_rst: bool = False
    shutdown_due: int = 0  # SHUTDOWN flags to send once ``outbuf`` has drained
    shutdown_sent: int = 0
    peer_shutdown: int = 0  # the guest's SHUTDOWN flags
    queued: bool = False  # in the device's ready queue
    error: str | None = None  # why it broke (RST, reset)
    refused: bool = False  # connect(): the guest answered RST
    connected: bool = False  # connect(): the guest answered RESPONSE
    host_closed: bool = False  # aclose()d: incoming data is dropped

    def __post_init__(self) -> None:
        self.inbuf = bytearray()  # guest -> host, not yet read
        self.outbuf = bytearray()  # host -> guest, not yet sent
        self._event = trio.Event()

    @property
    def key(self) -> tuple[int, int]:
        return (self.host_port, self.guest_port)

    def changed(self) -> None:
        """Wake whoever waits on this connection (they look again)."""
        self._event.set()
        self._event = trio.Event()

    async def wait_change(self) -> None:
        await self._event.wait()

    def credit(self) -> int:
        """Payload bytes the guest has room for now."""
        in_flight = (self.tx_cnt - self.peer_fwd_cnt) & U32
        return max(0, self.peer_buf_alloc - in_flight)

    def has_work(self) -> bool:
        if self.need_rst or self.need_request or self.need_response or self.need_credit:
            return True
        if self.state != "established" and self.state != "closing":
            return False
        if self.outbuf and not self.peer_shutdown & SHUTDOWN_RCV and self.credit() > 0:
            return True
        return bool(self.shutdown_due & ~self.shutdown_sent) and not self.outbuf


class VirtioVsock(VirtioBackend):
    """The virtio-vsock device of a guest whose CID is ``guest_cid`` (every VM is a machine
    of its own: all of them may be CID 3)."""

    device_id = DEVICE_ID_VSOCK
    queue_max = 256

    def __init__(self, guest_cid: int = 3) -> None:
        super().__init__()
        if not 3 <= guest_cid < U32:
            raise ValueError(f"guest CID {guest_cid}: 0, 1, 2 and 0xffffffff are reserved")
        self.guest_cid = guest_cid
        self.counters: collections.Counter[str] = Counters("virtio-vsock", VSOCK_COUNTERS)
        self._mem: GuestMemory | None = None
        self._queues: Sequence[Virtqueue] = ()
        self._conns: dict[tuple[int, int], _Conn] = {}
        self._ready: collections.deque[_Conn] = collections.deque()
        self._replies: collections.deque[bytes] = collections.deque()
        self._listeners: dict[int, VsockListener] = {}
        self._next_port = EPHEMERAL_LO
        self._event_due = False
        self._kick_pending = False
        self._in_notify = False
        self._up = trio.Event()

    # -- what the driver sees ----------------------------------------------------------------

    @property
    def features(self) -> int:
        return F_STREAM

    @property
    def num_queues(self) -> int:
        return 3

    def config(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    def stats(self) -> collections.Counter[str]:
        out = collections.Counter(self.counters)
        out["connections"] = len(self._conns)
        out["buffered_bytes"] = sum(len(c.inbuf) + len(c.outbuf) for c in self._conns.values())
        return out

    # -- transport callbacks -----------------------------------------------------------------

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], features: int) -> None:
        self._mem, self._queues = mem, queues
        self._up.set()

    def reset(self) -> None:
        self._mem, self._queues = None, ()
        self._break_all("the guest's vsock device was reset")
        self._event_due = False
        if self._up.is_set():
            self._up = trio.Event()

    def notify(self, queue: int) -> None:
        self._in_notify = True
        try:
            if queue == TX:
                self._transmit()
            elif queue == EVENT:
                self._send_event()
            self._pump()
        finally:
            self._in_notify = False

    @property
    def running(self) -> bool:
        t = self.transport
        return t is not None and t.running and self._mem is not None

    # -- the host's side ---------------------------------------------------------------------

    async def wait_ready(self) -> None:
        """Return once the guest's driver has brought the device up (DRIVER_OK); after a
        reset, only when it has done so again."""
        while not self.running:
            if self._up.is_set():  # up, but broken (DEVICE_NEEDS_RESET): the next time
                self._up = trio.Event()
            await self._up.wait()

    async def connect(self, port: int) -> VsockStream:
        """Open a connection to the guest's ``port`` from an ephemeral host port. Raises
        ``VsockRefused`` if the guest answers RST (nothing listens), ``VsockUnavailable`` if
        the driver is not up or the device is reset meanwhile. Waits for the guest's answer
        as long as it takes: bound it with trio's cancel scopes (cancelling sends RST)."""
        _check_port(port)
        if not self.running:
            raise VsockUnavailable("the guest's vsock driver is not up")
        if not self._make_room():
            raise VsockUnavailable(f"{MAX_CONNECTIONS} vsock connections are open already")
        conn = _Conn(self._ephemeral(port), port)
        conn.need_request = True
        self._conns[conn.key] = conn
        self._schedule(conn)
        self._kick()
        try:
            while conn.state == "connecting":
                await conn.wait_change()
        except BaseException:
            if conn.state == "connecting":
                conn.need_request = False
                self._abort(conn)
            raise
        if conn.refused:
            raise VsockRefused(f"the guest refused a vsock connection to port {port}")
        if not conn.connected:
            raise VsockUnavailable(f"vsock connection to port {port}: {conn.error}")
        self.counters["connections_out"] += 1
        return VsockStream(self, conn)

    def listen(self, port: int) -> VsockListener:
        """Accept the guest's connections to host port ``port`` (``await accept()``)."""
        _check_port(port)
        if port in self._listeners:
            raise VsockError(f"vsock port {port} has a listener already")
        listener = VsockListener(self, port)
        self._listeners[port] = listener
        return listener

    def transport_reset(self) -> None:
        """Drop every connection while the driver runs: streams break, and the guest gets a
        TRANSPORT_RESET event, so it drops its side too."""
        self._break_all("the host reset the vsock transport")
        if self.running:
            self._event_due = True
            self._kick()

    # -- snapshots ---------------------------------------------------------------------------

    def save_state(self) -> State:
        """Connections are not saved: their host ends are tasks of the host program, which a
        snapshot cannot hold. Saved: every connection the guest may know of (as host and
        guest port), for the restored device to reset (RST); the RSTs answering stray
        packets, a TRANSPORT_RESET event due, and the next ephemeral port. Listeners are
        the host program's: they stay with it (it listens again on the restored device)."""
        keys = list(self._conns)
        keys += [c.key for c in self._ready if c.need_rst and c.key not in self._conns]
        return {
            "resets": [list(k) for k in dict.fromkeys(keys)][:SAVED_RESETS_MAX],
            "replies": list(self._replies),
            "event_due": self._event_due,
            "next_port": self._next_port,
        }

    def load_state(
        self, st: Fields, mem: GuestMemory | None, queues: Sequence[Virtqueue], features: int
    ) -> None:
        """Every saved connection becomes an RST due to the guest (its sockets see the
        connection reset, as after the host's end went away), sent when the guest next
        runs (virtual time: as host input; real time: at once, from the VM's nursery)."""
        resets = []
        for i, v in enumerate(st.list("resets", SAVED_RESETS_MAX)):
            ok = isinstance(v, list) and len(v) == 2
            ok = ok and all(type(x) is int and 0 <= x <= U32 for x in v)
            st.check(ok, f"resets[{i}]", f"{v!r} is not a [host port, guest port] pair")
            resets.append((v[0], v[1]))
        replies = st.list("replies", MAX_REPLIES)
        for i, r in enumerate(replies):
            ok = isinstance(r, bytes) and len(r) == HDR_LEN
            st.check(ok, f"replies[{i}]", f"not a {HDR_LEN}-byte packet header")
        event_due = st.bool("event_due")
        self._next_port = st.int("next_port", EPHEMERAL_LO, EPHEMERAL_HI)
        self._mem, self._queues = mem, queues
        self._replies = collections.deque(replies)
        self._event_due = event_due and mem is not None
        for host_port, guest_port in resets:
            conn = _Conn(host_port, guest_port, state="closed", need_rst=True)
            conn.error = "the VM was restored from a snapshot"
            self._schedule(conn)
        if mem is not None:
            self._up.set()
            if self._ready or self._replies or self._event_due:
                self._restore_kick()

    def _restore_kick(self) -> None:
        t = self.transport
        assert t is not None
        vt = t.ctx.time
        if vt is not None:
            self._kick_pending = True
            vt.host_input(self._kicked)
            return

        async def pump() -> None:  # not inside load_state: the other devices load first
            self._pump_guarded()

        t.ctx.spawn(pump)

    def save_call(self, fn: Callable[[], None]) -> State | None:
        return {"call": "kick"} if fn == self._kicked else None

    def load_call(self, st: Fields) -> Callable[[], None]:
        st.choice("call", ("kick",))
        self._kick_pending = True
        return self._kicked

    # -- internals: connections --------------------------------------------------------------

    def _ephemeral(self, guest_port: int) -> int:
        for _ in range(EPHEMERAL_HI - EPHEMERAL_LO + 1):
            port = self._next_port
            self._next_port = port + 1 if port < EPHEMERAL_HI else EPHEMERAL_LO
            if (port, guest_port) not in self._conns:
                return port
        raise VsockUnavailable("no free ephemeral vsock port")  # pragma: no cover (bounded)

    def _make_room(self) -> bool:
        """Is there a slot for one more connection? Evict the oldest closing one if not."""
        if len(self._conns) < MAX_CONNECTIONS:
            return True
        for conn in self._conns.values():
            if conn.state == "closing":
                self.counters["evicted"] += 1
                self._abort(conn)
                return True
        self.counters["connections_full"] += 1
        return False

    def _abort(self, conn: _Conn) -> None:
        """Send the guest an RST for ``conn`` and forget it."""
        conn.need_rst = True
        self._drop(conn, conn.error or "the connection was aborted")
        self._schedule(conn)
        self._kick()

    def _drop(self, conn: _Conn, why: str) -> None:
        """The connection is over: out of the table; its stream sees ``why``."""
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        if conn.error is None and conn.state != "closed":
            conn.error = why
        conn.state = "closed"
        conn.outbuf.clear()
        conn.changed()

    def _break_all(self, why: str) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn, why)
        for listener in self._listeners.values():
            for conn in listener.drain():
                self._drop(conn, why)
        self._ready.clear()
        self._replies.clear()

    def _schedule(self, conn: _Conn) -> None:
        if not conn.queued and conn.has_work():
            conn.queued = True
            self._ready.append(conn)

    def _kick(self) -> None:
        """Host input for the guest (data, credit, a connect): into the rx queue, now in
        real time, at the guest's next run in virtual time."""
        t = self.transport
        if t is None or t._ctx is None or self._in_notify:
            return  # (in a notify, its own pump comes next)
        vt = t.ctx.time
        if vt is None:
            self._pump_guarded()
        elif not self._kick_pending:
            self._kick_pending = True
            vt.host_input(self._kicked)

    def _kicked(self) -> None:
        self._kick_pending = False
        self._pump_guarded()

    def _pump_guarded(self) -> None:
        try:
            self._pump()
        except GuestError as e:  # its queue is broken: its fault, set NEEDS_RESET
            if self.transport is not None:
                self.transport.needs_reset(e)

    # -- guest to host -----------------------------------------------------------------------

    def _transmit(self) -> None:
        mem, q = self._mem, self._queues[TX]
        assert mem is not None
        taken = False
        while (chain := q.pop()) is not None:
            taken = True
            head = chain.read(mem, HDR_LEN)
            payload: bytes | None = b""
            if len(head) == HDR_LEN:
                length = HDR.unpack(head)[4]
                if length > MAX_PKT:
                    payload = None  # longer than any packet a driver may send
                elif length:
                    payload = chain.read(mem, HDR_LEN + length)[HDR_LEN:]
            q.push(chain.head, 0)
            self.counters["tx_packets"] += 1
            self._packet(head, payload)
        if taken:
            assert self.transport is not None
            self.transport.signal_used(TX)
            self.transport.ctx.end_slice()  # the host's tasks see it now

    def _packet(self, head: bytes, payload: bytes | None) -> None:
        c = self.counters
        if len(head) < HDR_LEN:
            c["bad_header"] += 1
            return
        (src_cid, dst_cid, src_port, dst_port, length, ptype, op, flags, buf_alloc, fwd_cnt) = (
            HDR.unpack(head)
        )
        if src_cid != self.guest_cid:
            c["bad_src_cid"] += 1
            return
        if op == OP_RST and (dst_cid != HOST_CID or ptype != TYPE_STREAM):
            return  # never answer an RST
        if dst_cid != HOST_CID:
            c["unknown_cid"] += 1
            self._reply_rst(head)
            return
        if ptype != TYPE_STREAM:
            c["bad_type"] += 1
            self._reply_rst(head)
            return
        conn = self._conns.get((dst_port, src_port))
        if payload is None or len(payload) < length:
            c["bad_length"] += 1
            if conn is not None:
                self._abort(conn)
            return
        if conn is None:
            if op == OP_REQUEST:
                self._request(src_port, dst_port, buf_alloc, fwd_cnt, head)
            elif op != OP_RST:
                c["unknown_connection"] += 1
                self._reply_rst(head)
            return
        conn.peer_buf_alloc, conn.peer_fwd_cnt = buf_alloc, fwd_cnt
        self._op(conn, op, flags, payload)
        self._schedule(conn)  # credit may have come, or a reply is due

    def _request(
        self, guest_port: int, host_port: int, buf_alloc: int, fwd_cnt: int, head: bytes
    ) -> None:
        listener = self._listeners.get(host_port)
        if listener is None or listener.closed:
            self.counters["refused_in"] += 1
            self._reply_rst(head)
            return
        if len(listener.backlog) >= LISTEN_BACKLOG:
            self.counters["backlog_full"] += 1
            self.counters["refused_in"] += 1
            self._reply_rst(head)
            return
        if not self._make_room():
            self.counters["refused_in"] += 1
            self._reply_rst(head)
            return
        conn = _Conn(host_port, guest_port, state="established")
        conn.peer_buf_alloc, conn.peer_fwd_cnt = buf_alloc, fwd_cnt
        conn.need_response = True
        self._conns[conn.key] = conn
        self._schedule(conn)
        self.counters["connections_in"] += 1
        listener.arrived(conn)

    def _op(self, conn: _Conn, op: int, flags: int, payload: bytes) -> None:
        c = self.counters
        if op == OP_RST:
            if conn.state == "connecting":
                conn.refused = True
                c["refused_out"] += 1
            elif conn.state == "established":
                c["resets_in"] += 1
            self._drop(conn, "the guest reset the connection")
            return
        if conn.state == "connecting":
            if op == OP_RESPONSE:
                conn.state = "established"
                conn.connected = True
                conn.changed()
            else:
                c["bad_op"] += 1
                self._abort(conn)
            return
        if op == OP_RW:
            self._data(conn, payload)
        elif op == OP_CREDIT_UPDATE:
            conn.changed()  # a writer waiting for room may go on
        elif op == OP_CREDIT_REQUEST:
            conn.need_credit = True
        elif op == OP_SHUTDOWN:
            conn.peer_shutdown |= flags & SHUTDOWN_BOTH
            if conn.peer_shutdown & SHUTDOWN_RCV:
                conn.outbuf.clear()  # it will not read: what waits is lost, as on a socket
            if conn.peer_shutdown == SHUTDOWN_BOTH:
                # The guest is done: our RST ends the connection (5.10.6.5). What it sent
                # before stays readable.
                conn.need_rst = True
                self._forget(conn)
            conn.changed()
        else:  # REQUEST on a live connection, RESPONSE when connected, INVALID, unknown
            c["bad_op"] += 1
            self._abort(conn)

    def _forget(self, conn: _Conn) -> None:
        """Out of the table, its stream keeps what it received (read, then EOF)."""
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        conn.state = "closed"
        conn.outbuf.clear()

    def _data(self, conn: _Conn, payload: bytes) -> None:
        c = self.counters
        if conn.peer_shutdown & SHUTDOWN_SEND:
            c["data_after_shutdown"] += 1
            self._abort(conn)
            return
        if len(conn.inbuf) + len(payload) > BUF_ALLOC:
            c["credit_overrun"] += 1
            conn.error = "the guest sent past its credit (reset)"
            self._abort(conn)
            return
        c["tx_bytes"] += len(payload)
        if conn.host_closed:  # nobody reads: consumed at once
            conn.fwd_cnt = (conn.fwd_cnt + len(payload)) & U32
            return
        if payload:
            conn.inbuf += payload
            conn.changed()

    def _reply_rst(self, head: bytes) -> None:
        """An RST answering the guest's packet ``head`` (addresses swapped)."""
        _, dst_cid, src_port, dst_port, *_ = HDR.unpack(head)
        if len(self._replies) >= MAX_REPLIES:
            self.counters["replies_dropped"] += 1
            return
        # from whom the guest addressed (a CID other than the host's too: its connect fails)
        self._replies.append(
            HDR.pack(dst_cid, self.guest_cid, dst_port, src_port, 0, TYPE_STREAM, OP_RST, 0, 0, 0)
        )

    # -- host to guest -----------------------------------------------------------------------

    def _pump(self) -> None:
        """Fill the guest's rx buffers with what is due: replies, then the connections in
        turn (one packet each, round robin), while it has buffers."""
        if not self.running:
            return
        if self._event_due:
            self._send_event()
        mem, q = self._mem, self._queues[RX]
        assert mem is not None and self.transport is not None
        filled = False
        while self._replies or self._ready:
            chain = q.pop()
            if chain is None:
                break
            room = chain.writable_len
            if room < HDR_LEN:  # not even a header fits
                self.counters["rx_bad_buffer"] += 1
                q.push(chain.head, 0)
                filled = True
                continue
            pkt = self._next_packet(room)
            if pkt is None:
                if room == HDR_LEN and self._ready:  # data waits; a header-only buffer
                    self.counters["rx_bad_buffer"] += 1  # would stall the ring: give it back
                    q.push(chain.head, 0)
                    filled = True
                    continue
                q.unpop(1)
                break
            n = chain.write(mem, pkt)
            q.push(chain.head, n)
            filled = True
            self.counters["rx_packets"] += 1
            self.counters["rx_bytes"] += len(pkt) - HDR_LEN
        if filled:
            self.transport.signal_used(RX)

    def _next_packet(self, room: int) -> bytes | None:
        if self._replies:
            self.counters["resets_out"] += 1
            return self._replies.popleft()
        for _ in range(len(self._ready)):  # each once: one may have nothing that fits
            conn = self._ready.popleft()
            conn.queued = False
            pkt = self._conn_packet(conn, room)
            self._schedule(conn)
            if pkt is not None:
                return pkt
        return None

    def _conn_packet(self, conn: _Conn, room: int) -> bytes | None:
        """The next packet of ``conn`` that fits in ``room`` bytes (None: nothing due)."""
        if conn.need_rst:
            conn.need_rst = conn.need_request = conn.need_response = conn.need_credit = False
            self.counters["resets_out"] += 1
            return self._header(conn, OP_RST)
        if conn.need_request:
            conn.need_request = False
            return self._header(conn, OP_REQUEST)
        if conn.need_response:
            conn.need_response = False
            return self._header(conn, OP_RESPONSE)
        if conn.state not in ("established", "closing"):
            conn.need_credit = False
            return None
        if conn.outbuf and not conn.peer_shutdown & SHUTDOWN_RCV:
            n = min(len(conn.outbuf), conn.credit(), room - HDR_LEN, MAX_PKT)
            if n > 0:
                data = bytes(conn.outbuf[:n])
                del conn.outbuf[:n]
                conn.tx_cnt = (conn.tx_cnt + n) & U32
                conn.need_credit = False
                conn.changed()  # a writer waiting for room may go on
                return self._header(conn, OP_RW, n) + data
        if conn.need_credit:
            conn.need_credit = False
            return self._header(conn, OP_CREDIT_UPDATE)
        due = conn.shutdown_due & ~conn.shutdown_sent
        if due and not conn.outbuf:
            conn.shutdown_sent |= conn.shutdown_due
            return self._header(conn, OP_SHUTDOWN, flags=conn.shutdown_sent)
        return None

    def _header(self, conn: _Conn, op: int, length: int = 0, flags: int = 0) -> bytes:
        conn.last_fwd_sent = conn.fwd_cnt
        return HDR.pack(
            HOST_CID,
            self.guest_cid,
            conn.host_port,
            conn.guest_port,
            length,
            TYPE_STREAM,
            op,
            flags,
            BUF_ALLOC,
            conn.fwd_cnt,
        )

    def _send_event(self) -> None:
        if not self._event_due or not self.running:
            return
        mem, q = self._mem, self._queues[EVENT]
        assert mem is not None and self.transport is not None
        chain = q.pop()
        if chain is None:
            return  # sent when the driver posts an event buffer
        self._event_due = False
        n = chain.write(mem, struct.pack("<I", EVENT_TRANSPORT_RESET))
        q.push(chain.head, n)
        self.counters["events"] += 1
        self.transport.signal_used(EVENT)

    # -- for the streams ---------------------------------------------------------------------

    def _consumed(self, conn: _Conn, n: int) -> None:
        """The host read ``n`` bytes: credit the guest when half our buffer came free."""
        conn.fwd_cnt = (conn.fwd_cnt + n) & U32
        if conn.state == "established":
            told_free = BUF_ALLOC - len(conn.inbuf) - ((conn.fwd_cnt - conn.last_fwd_sent) & U32)
            if told_free < BUF_ALLOC // 2:
                conn.need_credit = True
                self._schedule(conn)
                self._kick()

    def _queue_out(self, conn: _Conn) -> None:
        self._schedule(conn)
        self._kick()

    def _close(self, conn: _Conn) -> None:
        """The host closed its stream: drain what it sent, then SHUTDOWN both ways and wait
        for the guest's RST (or evict it when the slot is needed)."""
        conn.host_closed = True
        conn.fwd_cnt = (conn.fwd_cnt + len(conn.inbuf)) & U32
        conn.inbuf.clear()
        if conn.state == "established":
            conn.state = "closing"
            conn.shutdown_due = SHUTDOWN_BOTH
            self._schedule(conn)
            self._kick()
        elif conn.state == "closed" and conn.need_rst:
            self._schedule(conn)
            self._kick()


class VsockListener:
    """The guest's connections to one host port (``VirtioVsock.listen``)."""

    def __init__(self, dev: VirtioVsock, port: int) -> None:
        self._dev = dev
        self.port = port
        self.backlog: collections.deque[_Conn] = collections.deque()
        self.closed = False
        self._event = trio.Event()

    def arrived(self, conn: _Conn) -> None:
        self.backlog.append(conn)
        self._event.set()
        self._event = trio.Event()

    def drain(self) -> list[_Conn]:
        out = list(self.backlog)
        self.backlog.clear()
        return out

    async def accept(self) -> VsockStream:
        """The next connection the guest opened to this port (in the order they came)."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError("the vsock listener is closed")
            while self.backlog:
                conn = self.backlog.popleft()
                if conn.state == "established":
                    await trio.lowlevel.checkpoint()
                    return VsockStream(self._dev, conn)
            await self._event.wait()

    async def aclose(self) -> None:
        """Stop listening; connections not accepted yet are reset."""
        if not self.closed:
            self.closed = True
            if self._dev._listeners.get(self.port) is self:
                del self._dev._listeners[self.port]
            for conn in self.drain():
                self._dev._abort(conn)
            self._event.set()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> VsockListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class VsockStream(trio.abc.HalfCloseableStream):
    """One vsock connection, the host's end: a trio stream (``send_all``, ``receive_some``,
    ``send_eof``, ``aclose``). ``receive_some`` returns b"" once the guest shut down its
    sending side or closed; an RST or a device reset raises ``trio.BrokenResourceError``."""

    def __init__(self, dev: VirtioVsock, conn: _Conn) -> None:
        self._dev = dev
        self._conn = conn
        self._closed = False
        self._eof_sent = False
        self._sending = False
        self._receiving = False

    @property
    def port(self) -> int:
        """The guest's port of the connection."""
        return self._conn.guest_port

    @property
    def host_port(self) -> int:
        return self._conn.host_port

    def _check_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the vsock stream is closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof was called on this vsock stream")
        c = self._conn
        if c.error is not None:
            raise trio.BrokenResourceError(c.error)
        if c.state == "closed" or c.peer_shutdown & SHUTDOWN_RCV:
            raise trio.BrokenResourceError("the guest no longer receives on this connection")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this vsock stream")
        self._sending = True
        try:
            view = memoryview(data).cast("B")
            done = 0
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                self._check_send()
                c = self._conn
                if done >= len(view):
                    break
                room = OUT_MAX - len(c.outbuf)
                if room > 0:
                    take = min(room, len(view) - done)
                    c.outbuf += view[done : done + take]
                    done += take
                    self._dev._queue_out(c)
                    continue
                await c.wait_change()
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        c = self._conn
        while len(c.outbuf) >= OUT_MAX and c.state != "closed" and not self._closed:
            await c.wait_change()
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("the vsock stream is closed")
        if self._eof_sent:
            return
        self._eof_sent = True
        c = self._conn
        if c.state == "established":
            c.shutdown_due |= SHUTDOWN_SEND
            self._dev._queue_out(c)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = RECEIVE_DEFAULT
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this vsock stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            c = self._conn
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the vsock stream is closed")
                if c.inbuf:
                    data = bytes(c.inbuf[:max_bytes])
                    del c.inbuf[:max_bytes]
                    self._dev._consumed(c, len(data))
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                if c.error is not None:
                    raise trio.BrokenResourceError(c.error)
                if c.peer_shutdown & SHUTDOWN_SEND or c.state == "closed":
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                await c.wait_change()
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._dev._close(self._conn)
            self._conn.changed()
        await trio.lowlevel.checkpoint()


def _check_port(port: int) -> None:
    if not 0 <= port <= U32:
        raise ValueError(f"vsock port {port} is not a 32-bit port number")


def virtio_vsock(name: str, guest_cid: int = 3) -> VirtioMmio:
    """A virtio-vsock device for ``VmConfig.devices`` (``VmConfig(vsock=True)`` adds one)."""
    return VirtioMmio(name, VirtioVsock(guest_cid))
