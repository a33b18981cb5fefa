"""virtio-blk (virtio 1.x, section 5.2): a VM's disk, over any ``blockdev.BlockBackend``.

Theory of operation. One request queue. Each chain is one request: a 16-byte device-readable
header (type u32, reserved u32, sector u64), the data, and a final device-writable status
byte. Parsing is sans-IO and pure (``parse_request``): the chain's bytes are a stream, framed
by length only (the driver may split or merge descriptors as it likes), so the header is the
first 16 readable bytes, the data the rest of the readable bytes (OUT, DISCARD, WRITE_ZEROES)
or the writable bytes before the last (IN, GET_ID), and the status byte the chain's last
writable byte. The device then checks the request against the disk (range, read-only) and
hands it to the backend in a task of the VM's nursery (``DeviceContext.spawn``): the guest
keeps running while the host does the I/O. The task's completion writes the read data and
the status byte, pushes the chain on the used ring and raises the interrupt; it runs between
slices, not inside an MMIO access, so it also wakes the VM (``ctx.wake``) in case the guest
waits in ``wfi``. Completions come in any order (the spec allows it).

Bounds. At most ``MAX_IN_FLIGHT`` requests and ``MAX_IN_FLIGHT_BYTES`` of data are with the
backend at once (one request is always admitted, whatever its size); past that the device
stops taking chains and leaves them in the ring until a request completes. The in-flight
count covers requests of earlier generations too (see reset), so a guest that resets the
device in a loop cannot pile up host work.

Blame. A malformed request (no status byte, a short header, data in the wrong direction, a
length that is not whole sectors, a bad discard segment list) is answered with IOERR or
UNSUPP, as the spec says, and counted (``bad_requests`` and one counter per reason); a range
past the end of the disk or a write to a read-only disk is IOERR. A chain that breaks the
virtqueue's own rules (``QueueError``) sets DEVICE_NEEDS_RESET, as for virtio-net. The host's
I/O failing (``BlockIOError``) is IOERR for that request and a log line; the VM goes on. Any
other exception from a backend is a host bug and stops the VM (the VM's device-task rule).

Reset. The device reset (Status 0, or a reboot) bumps a generation number; a request that
completes after it belongs to the old generation and is discarded without touching guest
memory (the backend's I/O itself is not cancelled: a half-done write is worse than a late
one, and the disk's contents under requests in flight at a reset are undefined anyway).
"""

from __future__ import annotations

import collections
import functools
import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from blockdev import BlockBackend, BlockIOError
from blockdev.open import check_serial
from hv._errors import GuestError
from hv._log import get_logger
from hv.hw import Completion, Counters, Fields, GuestMemory, State
from hv.virtio._mmio import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, VirtioBackend, VirtioMmio
from hv.virtio._queue import MAX_CHAIN_BYTES, MAX_QUEUE_SIZE, DescriptorChain, Virtqueue

log = get_logger("hv.virtio.blk")

DEVICE_ID_BLK = 2
SECTOR = 512

# Feature bits (5.2.3).
F_SIZE_MAX = 1 << 1
F_SEG_MAX = 1 << 2
F_RO = 1 << 5
F_BLK_SIZE = 1 << 6
F_FLUSH = 1 << 9
F_DISCARD = 1 << 13
F_WRITE_ZEROES = 1 << 14

# Request types and status values (5.2.6).
T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13
S_OK = 0
S_IOERR = 1
S_UNSUPP = 2
TYPE_NAMES = {
    T_IN: "in",
    T_OUT: "out",
    T_FLUSH: "flush",
    T_GET_ID: "get_id",
    T_DISCARD: "discard",
    T_WRITE_ZEROES: "write_zeroes",
}

HEADER_LEN = 16
SEGMENT_LEN = 16  # struct virtio_blk_discard_write_zeroes
WRITE_ZEROES_F_UNMAP = 1
ID_BYTES = 20

# What the config space tells the driver. seg_max * size_max stays under the virtqueue's
# MAX_CHAIN_BYTES (16 MiB), so a driver that honours them never builds a chain the queue
# refuses; blk_size 512 keeps Linux's logical block size at one sector.
QUEUE_MAX = 256
SIZE_MAX = 128 << 10
SEG_MAX = 126
BLK_SIZE = SECTOR
MAX_DISCARD_SECTORS = 1 << 21  # 1 GiB per segment
MAX_DISCARD_SEG = 32
DISCARD_SECTOR_ALIGNMENT = 8  # 4 KiB: a hint for how the driver splits
MAX_WRITE_ZEROES_SECTORS = 1 << 21
MAX_WRITE_ZEROES_SEG = 32

# Requests with the backend at once, and their data (one request is always admitted).
MAX_IN_FLIGHT = 64
MAX_IN_FLIGHT_BYTES = 32 << 20
# Host I/O errors logged one by one before the log thins out to one in LOG_EVERY.
LOG_FIRST, LOG_EVERY = 10, 1000

_HEADER = struct.Struct("<IIQ")
_SEGMENT = struct.Struct("<QII")
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3xIII")

Buffers = tuple[tuple[int, int], ...]  # (guest address, length)


@dataclass(frozen=True)
class Segment:
    """One range of a DISCARD or WRITE_ZEROES request."""

    sector: int
    num_sectors: int
    flags: int


@dataclass(frozen=True)
class BlkRequest:
    """A well-formed request, parsed from its chain (not yet checked against the disk)."""

    head: int
    type: int
    sector: int
    data: Buffers  # device-readable for OUT, device-writable for IN and GET_ID, else ()
    status_addr: int
    segments: tuple[Segment, ...] = ()  # DISCARD and WRITE_ZEROES

    @property
    def data_len(self) -> int:
        return sum(n for _, n in self.data)


# Why a request is malformed (BadRequest.reason); each is counted as bad_REASON.
BAD_REASONS = frozenset(
    {
        "no_status",  # no device-writable byte for the status
        "short_header",  # fewer readable bytes than the 16-byte header
        "unsupported_type",  # a request type the device does not know
        "bad_direction",  # data readable where it must be writable, or the reverse
        "unaligned_length",  # data that is not whole sectors
        "bad_segments",  # a discard/write-zeroes segment list of the wrong length
        "too_many_segments",  # more segments than the device's limit
        "bad_flags",  # unknown segment flags, or unmap on a discard
    }
)

# virtio-blk's counters (the transport's are beside them in VirtioMmio.stats()).
BLK_COUNTERS = frozenset(
    {
        # done, by type: requests and bytes
        "reads",
        "read_bytes",
        "writes",
        "write_bytes",
        "flushes",
        "discards",
        "discard_bytes",
        "write_zeroes",
        "write_zeroes_bytes",
        "get_ids",
        # the guest's mistakes: malformed requests (all, and one counter per reason) ...
        "bad_requests",
        *(f"bad_{reason}" for reason in BAD_REASONS),
        # ... and well-formed ones this disk refuses
        "out_of_range",  # past the end of the disk
        "not_negotiated",  # discard or write-zeroes without its feature
        "segment_too_long",  # a segment past the sector limit
        "read_only",  # a write to a read-only disk
        # answers: status bytes written
        "ioerr",
        "unsupp",
        # the host side
        "throttled",  # chains left in the ring: too much in flight
        "in_flight_peak",  # most requests with the backend at once
        "host_io_errors",  # the backend's I/O failed (BlockIOError): IOERR
        "discarded_completions",  # done after a reset (an older generation): dropped
        "reset_in_flight",  # requests in flight when the device was reset
    }
)


@dataclass(frozen=True)
class BadRequest:
    """A request the device answers at once with ``status`` (``status_addr`` None: the chain
    has no status byte, so it goes back with nothing written). ``reason``: its counter."""

    head: int
    status_addr: int | None
    status: int
    reason: str


def _trim(bufs: Sequence[tuple[int, int]], skip: int = 0, drop: int = 0) -> Buffers:
    """``bufs`` without their first ``skip`` and last ``drop`` bytes (empty buffers gone)."""
    out: list[tuple[int, int]] = []
    total = sum(n for _, n in bufs)
    end = total - drop
    pos = 0
    for addr, n in bufs:
        lo, hi = max(pos, skip), min(pos + n, end)
        if hi > lo:
            out.append((addr + lo - pos, hi - lo))
        pos += n
    return tuple(out)


def _read(mem: GuestMemory, bufs: Sequence[tuple[int, int]], limit: int) -> bytes:
    """The first ``limit`` bytes of ``bufs`` (empty buffers on the way are skipped)."""
    out = bytearray()
    for addr, n in bufs:
        if len(out) >= limit:
            break
        out += mem.read(addr, min(n, limit - len(out)))
    return bytes(out)


def parse_request(
    chain: DescriptorChain,
    mem: GuestMemory,
    max_discard_seg: int = MAX_DISCARD_SEG,
    max_write_zeroes_seg: int = MAX_WRITE_ZEROES_SEG,
) -> BlkRequest | BadRequest:
    """The request ``chain`` carries, or the status it is answered with if it is malformed.
    Reads the header and any segment list from ``mem``; writes nothing. The chain's buffers
    were checked by the queue (inside RAM, readable before writable)."""
    head = chain.head
    last = next(((a, n) for a, n in reversed(chain.writable) if n), None)
    if last is None:
        return BadRequest(head, None, S_IOERR, "no_status")
    status_addr = last[0] + last[1] - 1
    readable_len = chain.readable_len
    if readable_len < HEADER_LEN:
        return BadRequest(head, status_addr, S_IOERR, "short_header")
    rtype, _reserved, sector = _HEADER.unpack(_read(mem, chain.readable, HEADER_LEN))
    rdata = _trim(chain.readable, skip=HEADER_LEN)
    wdata = _trim(chain.writable, drop=1)
    if rtype not in TYPE_NAMES:
        return BadRequest(head, status_addr, S_UNSUPP, "unsupported_type")

    def bad(reason: str, status: int = S_IOERR) -> BadRequest:
        return BadRequest(head, status_addr, status, reason)

    if rtype == T_IN:
        if rdata:
            return bad("bad_direction")
        if sum(n for _, n in wdata) % SECTOR:
            return bad("unaligned_length")
        return BlkRequest(head, rtype, sector, wdata, status_addr)
    if rtype == T_OUT:
        if wdata:
            return bad("bad_direction")
        if (readable_len - HEADER_LEN) % SECTOR:
            return bad("unaligned_length")
        return BlkRequest(head, rtype, sector, rdata, status_addr)
    if rtype == T_FLUSH:
        if rdata or wdata:
            return bad("bad_direction")
        return BlkRequest(head, rtype, sector, (), status_addr)
    if rtype == T_GET_ID:
        if rdata or not wdata:
            return bad("bad_direction")
        return BlkRequest(head, rtype, sector, wdata, status_addr)
    # DISCARD, WRITE_ZEROES: a list of 16-byte segments
    if wdata:
        return bad("bad_direction")
    seg_bytes = readable_len - HEADER_LEN
    if seg_bytes == 0 or seg_bytes % SEGMENT_LEN:
        return bad("bad_segments")
    max_seg = max_discard_seg if rtype == T_DISCARD else max_write_zeroes_seg
    if seg_bytes // SEGMENT_LEN > max_seg:
        return bad("too_many_segments")
    raw = _read(mem, rdata, seg_bytes)
    segments = tuple(Segment(*s) for s in _SEGMENT.iter_unpack(raw))
    allowed = 0 if rtype == T_DISCARD else WRITE_ZEROES_F_UNMAP
    if any(s.flags & ~allowed for s in segments):
        return bad("bad_flags", S_UNSUPP)  # 5.2.6.2: unknown flags, or unmap on a discard
    return BlkRequest(head, rtype, sector, (), status_addr, segments)


@dataclass
class _Work:
    """A request with the backend: what to write back when it completes."""

    req: BlkRequest
    generation: int
    cost: int  # bytes counted against MAX_IN_FLIGHT_BYTES
    payload: bytes = b""  # OUT: the data, copied from the guest when the request was taken


# Virtual time: what a request costs the guest, whatever the host's disk takes (a fast SSD's
# figures: 50 us a request, 1 GB/s). The guest waits for a slower host; it never sees it.
DISK_LATENCY_PS = 50_000_000
DISK_PS_PER_BYTE = 1_000


def modelled_latency_ps(work: _Work) -> int:
    """The guest-visible time of a request in virtual time: fixed cost plus transfer."""
    nbytes = work.req.data_len if work.req.type == T_IN else len(work.payload)
    return DISK_LATENCY_PS + nbytes * DISK_PS_PER_BYTE


class VirtioBlk(VirtioBackend):
    """A virtio-blk device over ``disk``; ``serial`` is what GET_ID answers (ASCII, at most
    20 bytes)."""

    device_id = DEVICE_ID_BLK
    queue_max = QUEUE_MAX

    def __init__(self, disk: BlockBackend, serial: str = "") -> None:
        super().__init__()
        raw = check_serial(serial)  # printable ASCII, at most ID_BYTES
        self.disk = disk
        self.serial = serial
        self._id = raw.ljust(ID_BYTES, b"\0")
        self.counters: collections.Counter[str] = Counters("virtio-blk", BLK_COUNTERS)
        self._mem: GuestMemory | None = None
        self._queue: Virtqueue | None = None
        self._features = 0
        self.generation = 0
        self.in_flight = 0  # requests with the backend, of any generation
        self.in_flight_bytes = 0
        # the same, with their tickets (virtual time), for a snapshot to replay
        self._works: dict[int, tuple[_Work, Completion | None]] = {}
        self._work_ids = itertools.count()

    # -- what the driver sees ----------------------------------------------------------------

    @property
    def features(self) -> int:
        f = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES
        if self.disk.read_only:
            f |= F_RO
        return f | F_RING_EVENT_IDX | F_RING_INDIRECT_DESC

    @property
    def num_queues(self) -> int:
        return 1

    def config(self) -> bytes:
        return _CONFIG.pack(
            self.disk.size // SECTOR,  # capacity
            SIZE_MAX,
            SEG_MAX,
            0, 0, 0,  # geometry: none (no F_GEOMETRY)
            BLK_SIZE,
            0, 0, 0, 0,  # topology: none (no F_TOPOLOGY)
            0,  # writeback (no F_CONFIG_WCE)
            0,  # unused0
            1,  # num_queues (no F_MQ: one)
            MAX_DISCARD_SECTORS,
            MAX_DISCARD_SEG,
            DISCARD_SECTOR_ALIGNMENT,
            MAX_WRITE_ZEROES_SECTORS,
            MAX_WRITE_ZEROES_SEG,
            1,  # write_zeroes_may_unmap
            0, 0, 0,  # secure erase: none
        )  # fmt: skip

    def stats(self) -> collections.Counter[str]:
        """The counters, and the requests and bytes in flight now."""
        out = collections.Counter(self.counters)
        out["in_flight"] = self.in_flight
        out["in_flight_bytes"] = self.in_flight_bytes
        return out

    # -- transport callbacks -----------------------------------------------------------------

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], features: int) -> None:
        self.generation += 1
        self._mem, self._queue, self._features = mem, queues[0], features

    def reset(self) -> None:
        if self.in_flight:
            self.counters["reset_in_flight"] += self.in_flight
        self.generation += 1
        self._mem, self._queue, self._features = None, None, 0

    def notify(self, queue: int) -> None:
        self._take()

    # -- snapshots ---------------------------------------------------------------------------

    def save_state(self) -> State:
        """The generation and the requests still with the host (``in_flight``), to be
        issued again on restore (replay: reads and writes of the same bytes to the same
        place, a flush, a discard are all idempotent, and the disk is saved as it was when
        the snapshot was taken, with or without each one). A request whose host work is
        done but whose completion waits for its time (virtual time) is a pending call
        instead: ``save_call``."""
        works = []
        for work, ticket in self._works.values():
            w = _work_state(work)
            w["due_ps"] = getattr(ticket, "due_ps", None)
            works.append(w)
        return {"generation": self.generation, "in_flight": works}

    def load_state(
        self, st: Fields, mem: GuestMemory | None, queues: Sequence[Virtqueue], features: int
    ) -> None:
        generation = st.int("generation")
        # (what _load_work checks requests against: the queue's size, the features)
        self._mem, self._queue, self._features = mem, queues[0] if queues else None, features
        works = [
            (self._load_work(w, generation), w.opt_int("due_ps"))
            for w in st.subs("in_flight", MAX_IN_FLIGHT)
        ]
        st.check(
            sum(w.cost for w, _ in works) <= MAX_IN_FLIGHT_BYTES + MAX_CHAIN_BYTES,
            "in_flight",
            "more bytes in flight than the device allows",
        )
        self.generation = generation
        for work, due_ps in works:  # replayed: with the host again, completed as usual
            self._start(work, due_ps)

    def save_call(self, fn: Callable[[], None]) -> State | None:
        if isinstance(fn, functools.partial) and fn.func == self._complete:
            work, status, data = fn.args
            return {"call": "complete", "work": _work_state(work), "status": status, "data": data}
        return None

    def load_call(self, st: Fields) -> Callable[[], None]:
        st.choice("call", ("complete",))
        work = self._load_work(st.sub("work"), self.generation)
        status = st.int("status", S_OK, S_IOERR)
        data = st.bytes("data", work.req.data_len if work.req.type == T_IN else 0)
        return functools.partial(self._complete, work, status, data)

    def _load_work(self, st: Fields, generation: int) -> _Work:
        """A saved request, checked as ``parse_request`` and ``_check`` would have."""
        assert self.transport is not None
        mem = self.transport.ctx.memory
        size = self._queue.size if self._queue is not None else MAX_QUEUE_SIZE
        head = st.int("head", 0, size - 1)
        rtype = st.choice("type", tuple(TYPE_NAMES.values()))
        t = next(k for k, v in TYPE_NAMES.items() if v == rtype)
        st.check(t != T_GET_ID, "type", "get_id is answered at once, never in flight")
        sector = st.int("sector")
        data: list[tuple[int, int]] = []
        for i, (addr, n) in enumerate(_pairs(st, "data", MAX_QUEUE_SIZE)):
            st.check(mem.contains(addr, n), f"data[{i}]", f"{addr:#x}+{n:#x} is outside RAM")
            data.append((addr, n))
        total = sum(n for _, n in data)
        st.check(total <= MAX_CHAIN_BYTES, "data", f"{total} bytes is more than a chain holds")
        st.check(total % SECTOR == 0, "data", f"{total} bytes is not whole sectors")
        st.check(not data or t in (T_IN, T_OUT), "data", f"a {rtype} request carries no data")
        status_addr = st.int("status_addr")
        st.check(mem.contains(status_addr), "status_addr", f"{status_addr:#x} is outside RAM")
        max_seg = MAX_DISCARD_SEG if t == T_DISCARD else MAX_WRITE_ZEROES_SEG
        segs = st.subs("segments", max_seg if t in (T_DISCARD, T_WRITE_ZEROES) else 0)
        segments = tuple(
            Segment(g.int("sector"), g.int("num_sectors", 0, 0xFFFF_FFFF), g.int("flags", 0, 1))
            for g in segs
        )
        st.check(
            t != T_DISCARD or not any(g.flags for g in segments), "segments", "unmap on a discard"
        )
        payload = st.bytes("payload", total if t == T_OUT else 0)
        st.check(t != T_OUT or len(payload) == total, "payload", "not the request's length")
        work_generation = st.int("generation", 0, generation)
        req = BlkRequest(head, t, sector, tuple(data), status_addr, segments)
        refused = self._check(req)  # out of the disk's range, read-only, not negotiated
        st.check(refused is None, "sector", f"a request this disk refuses (status {refused})")
        return _Work(req, work_generation, total, payload)

    # -- taking requests ---------------------------------------------------------------------

    def _running(self) -> bool:
        t = self.transport
        return t is not None and t.running and self._queue is not None

    def _take(self) -> None:
        """Take chains while there is room in flight; answer the bad ones at once."""
        if not self._running():
            return
        q, mem, transport = self._queue, self._mem, self.transport
        assert q is not None and mem is not None and transport is not None
        answered = started = False
        while self.in_flight < MAX_IN_FLIGHT:
            chain = q.pop()  # a QueueError goes up: the transport sets NEEDS_RESET
            if chain is None:
                break
            parsed = parse_request(chain, mem)
            if isinstance(parsed, BadRequest):
                self._count_bad(parsed.reason)
                self._answer(q, mem, parsed.head, parsed.status_addr, parsed.status)
                answered = True
                continue
            status = self._check(parsed)
            if status is not None:
                self._answer(q, mem, parsed.head, parsed.status_addr, status)
                answered = True
                continue
            if parsed.type == T_GET_ID:
                n = min(parsed.data_len, ID_BYTES)
                _scatter(mem, parsed.data, self._id[:n])
                self.counters["get_ids"] += 1
                self._answer(q, mem, parsed.head, parsed.status_addr, S_OK, n)
                answered = True
                continue
            cost = parsed.data_len
            if self.in_flight and self.in_flight_bytes + cost > MAX_IN_FLIGHT_BYTES:
                q.unpop(1)  # taken again when something completes
                self.counters["throttled"] += 1
                break
            payload = _read(mem, parsed.data, cost) if parsed.type == T_OUT else b""
            self._start(_Work(parsed, self.generation, cost, payload))
            started = True
        else:
            if q.pending():
                self.counters["throttled"] += 1
        if answered:
            self._signal()
        if started:
            transport.ctx.end_slice()  # let the I/O tasks run now, not after the slice

    def _count_bad(self, reason: str) -> None:
        self.counters["bad_requests"] += 1
        self.counters[f"bad_{reason}"] += 1

    def _check(self, req: BlkRequest) -> int | None:
        """The status a well-formed request fails with against this disk, or None."""
        size, rtype = self.disk.size, req.type
        if rtype in (T_IN, T_OUT):
            if req.sector * SECTOR + req.data_len > size:
                self.counters["out_of_range"] += 1
                return S_IOERR
        elif rtype in (T_DISCARD, T_WRITE_ZEROES):
            bit = F_DISCARD if rtype == T_DISCARD else F_WRITE_ZEROES
            if not self._features & bit:
                self.counters["not_negotiated"] += 1
                return S_UNSUPP
            limit = MAX_DISCARD_SECTORS if rtype == T_DISCARD else MAX_WRITE_ZEROES_SECTORS
            for s in req.segments:
                if s.num_sectors > limit:
                    self.counters["segment_too_long"] += 1
                    return S_IOERR
                if (s.sector + s.num_sectors) * SECTOR > size:
                    self.counters["out_of_range"] += 1
                    return S_IOERR
        if rtype in (T_OUT, T_DISCARD, T_WRITE_ZEROES) and self.disk.read_only:
            self.counters["read_only"] += 1
            return S_IOERR
        return None

    def _answer(
        self,
        q: Virtqueue,
        mem: GuestMemory,
        head: int,
        status_addr: int | None,
        status: int,
        data_written: int = 0,
    ) -> None:
        """Write the status byte (if there is one) and hand the chain back."""
        if status_addr is None:
            q.push(head, 0)
            return
        if status == S_IOERR:
            self.counters["ioerr"] += 1
        elif status == S_UNSUPP:
            self.counters["unsupp"] += 1
        mem.write(status_addr, bytes((status,)))
        q.push(head, data_written + 1)

    def _signal(self) -> None:
        assert self.transport is not None
        self.transport.signal_used(0)

    # -- doing them --------------------------------------------------------------------------

    def _start(self, work: _Work, due_ps: int | None = None) -> None:
        assert self.transport is not None
        self.in_flight += 1
        self.in_flight_bytes += work.cost
        self.counters["in_flight_peak"] = max(self.counters["in_flight_peak"], self.in_flight)

        ctx = self.transport.ctx
        vt = ctx.time
        if due_ps is None and vt is not None:
            due_ps = vt.now_ps() + modelled_latency_ps(work)
        ticket = vt.expect(due_ps) if vt is not None and due_ps is not None else None
        key = next(self._work_ids)
        self._works[key] = (work, ticket)

        async def run() -> None:
            await self._run(work, ticket, key)

        ctx.spawn(run)

    async def _run(self, work: _Work, ticket: Completion | None = None, key: int = -1) -> None:
        try:
            status, data = await self._execute(work)
        finally:  # cancelled too (the VM stops): the slot is free
            self.in_flight -= 1
            self.in_flight_bytes -= work.cost
            self._works.pop(key, None)
        if ticket is None:
            self._complete(work, status, data)
        else:  # virtual time: the guest sees it at the modelled time, however long it took
            ticket.ready(functools.partial(self._complete, work, status, data))

    async def _execute(self, work: _Work) -> tuple[int, bytes]:
        req, disk = work.req, self.disk
        offset = req.sector * SECTOR
        rtype = req.type
        try:
            if rtype == T_IN:
                data = await disk.read(offset, req.data_len) if req.data_len else b""
                return S_OK, data
            if rtype == T_OUT:
                if work.payload:
                    await disk.write(offset, work.payload)
            elif rtype == T_FLUSH:
                await disk.flush()
            elif rtype == T_DISCARD:
                for s in req.segments:
                    await disk.discard(s.sector * SECTOR, s.num_sectors * SECTOR)
            else:  # T_WRITE_ZEROES
                for s in req.segments:
                    await disk.write_zeroes(s.sector * SECTOR, s.num_sectors * SECTOR)
            return S_OK, b""
        except BlockIOError as e:
            self.counters["host_io_errors"] += 1
            n = self.counters["host_io_errors"]
            if n <= LOG_FIRST or n % LOG_EVERY == 0:
                log.warning(
                    "host I/O error",
                    device=self.transport.name if self.transport else "?",
                    op=TYPE_NAMES[rtype],
                    sector=req.sector,
                    bytes=req.data_len,
                    error=str(e),
                    errors=n,
                )
            return S_IOERR, b""

    def _complete(self, work: _Work, status: int, data: bytes) -> None:
        """Back on the guest's side: data, status byte, used ring, interrupt, wake-up."""
        if work.generation != self.generation or not self._running():
            self.counters["discarded_completions"] += 1
            self._kick()
            return
        q, mem, transport = self._queue, self._mem, self.transport
        assert q is not None and mem is not None and transport is not None
        req = work.req
        written = 0
        try:
            if status == S_OK:
                self._count_done(req)
                if req.type == T_IN:
                    _scatter(mem, req.data, data)
                    written = len(data)
            self._answer(q, mem, req.head, req.status_addr, status, written)
            self._signal()
        except GuestError as e:
            transport.needs_reset(e)
            return
        transport.ctx.wake()
        self._kick()

    def _count_done(self, req: BlkRequest) -> None:
        c = self.counters
        if req.type == T_IN:
            c["reads"] += 1
            c["read_bytes"] += req.data_len
        elif req.type == T_OUT:
            c["writes"] += 1
            c["write_bytes"] += req.data_len
        elif req.type == T_FLUSH:
            c["flushes"] += 1
        elif req.type == T_DISCARD:
            c["discards"] += 1
            c["discard_bytes"] += sum(s.num_sectors for s in req.segments) * SECTOR
        else:
            c["write_zeroes"] += 1
            c["write_zeroes_bytes"] += sum(s.num_sectors for s in req.segments) * SECTOR

    def _kick(self) -> None:
        """A slot came free: take what the driver left in the ring meanwhile."""
        if not self._running():
            return
        assert self.transport is not None
        try:
            self._take()
        except GuestError as e:
            self.transport.needs_reset(e)


def _work_state(work: _Work) -> State:
    req = work.req
    return {
        "head": req.head,
        "type": TYPE_NAMES[req.type],
        "sector": req.sector,
        "data": [[addr, n] for addr, n in req.data],
        "status_addr": req.status_addr,
        "segments": [
            {"sector": g.sector, "num_sectors": g.num_sectors, "flags": g.flags}
            for g in req.segments
        ],
        "payload": work.payload,
        "generation": work.generation,
    }


def _pairs(st: Fields, key: str, max_len: int) -> list[tuple[int, int]]:
    """A list of [address, length] pairs (u64, u32)."""
    out = []
    for i, v in enumerate(st.list(key, max_len)):
        ok = isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v)
        ok = ok and 0 <= v[0] <= (1 << 64) - 1 and 0 <= v[1] <= 0xFFFF_FFFF
        st.check(ok, f"{key}[{i}]", f"{v!r} is not an [address, length] pair")
        out.append((v[0], v[1]))
    return out


def _scatter(mem: GuestMemory, bufs: Buffers, data: bytes) -> None:
    view = memoryview(data)
    done = 0
    for addr, n in bufs:
        if done >= len(view):
            break
        take = min(n, len(view) - done)
        mem.write(addr, view[done : done + take])
        done += take


def virtio_blk(name: str, disk: BlockBackend, serial: str | None = None) -> VirtioMmio:
    """A virtio-blk disk for ``VmConfig.devices`` over ``disk`` (a ``blockdev`` backend);
    GET_ID answers ``serial`` (default ``hv-NAME``, cut to 20 bytes)."""
    if serial is None:
        serial = f"hv-{name}"[:ID_BYTES]
    return VirtioMmio(name, VirtioBlk(disk, serial))
