"""virtio-blk: the device against a driver in plain memory (config space, every request type,
every malformed request with its exact status byte, the in-flight bound, reset with I/O in
flight, host I/O errors), random chains fuzzed; then the bundled ``blktest`` guest in a VM,
writing, flushing and reading back a disk, and a second VM verifying what the first wrote;
and Linux's own virtio_blk driver on the device."""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hv
from blockdev import BlockIOError, MemoryDisk
from hv.build import _image_linux as il
from hv.hw._device import DeviceContext
from hv.hw._memory import GuestMemory
from hv.virtio import _blk as B
from hv.virtio import _mmio as M
from hv.virtio import virtio_blk
from hv.virtio._queue import DESC_F_NEXT, DESC_F_WRITE
from hv.virtio.testing import DriverQueue, activate

RAM, SIZE = 0x8000_0000, 1 << 20
DISK = 1 << 20  # 2048 sectors
ALL = (
    B.F_SIZE_MAX | B.F_SEG_MAX | B.F_BLK_SIZE | B.F_FLUSH | B.F_DISCARD | B.F_WRITE_ZEROES
) | M.F_VERSION_1


class GatedDisk(MemoryDisk):
    """A MemoryDisk whose I/O waits until ``gate`` is set (requests stay in flight)."""

    def __init__(self, size: int, read_only: bool = False) -> None:
        super().__init__(size, read_only)
        self.gate = trio.Event()

    async def read(self, offset: int, length: int) -> bytes:
        await self.gate.wait()
        return await super().read(offset, length)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        await self.gate.wait()
        await super().write(offset, data)


class FailingDisk(MemoryDisk):
    """A MemoryDisk whose host I/O fails while ``failing`` is set."""

    failing = False

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.failing:
            raise BlockIOError("EIO: the host disk failed")
        await super().write(offset, data)

    async def flush(self) -> None:
        if self.failing:
            raise BlockIOError("EIO: fdatasync failed")
        await super().flush()


class Blk:
    """A VirtioBlk behind its transport, attached to plain memory; its I/O tasks run in
    ``nursery``; driven by hand as a guest driver would."""

    def __init__(
        self,
        nursery: trio.Nursery,
        disk: MemoryDisk | None = None,
        features: int = ALL,
        qsize: int = 16,
        mem_size: int = SIZE,
        serial: str = "hv-disk0",
    ) -> None:
        self.mem = GuestMemory(RAM, mem_size)
        self.disk = disk if disk is not None else MemoryDisk(DISK)
        self.blk = B.VirtioBlk(self.disk, serial)
        self.dev = M.VirtioMmio("vda", self.blk)
        self.irq: list[bool] = []
        self.wakes = 0
        self.dev.attach(
            DeviceContext("vda", self.mem, self.irq.append, self._wake, nursery.start_soon)
        )
        self.features = features
        self.qsize = qsize
        self.handshake()

    def _wake(self) -> None:
        self.wakes += 1

    def handshake(self) -> None:
        event_idx = bool(self.features & M.F_RING_EVENT_IDX)
        self.q = DriverQueue(self.mem, self.qsize, RAM + 0x1000, RAM + 0x10000, event_idx)
        activate(self.dev, self.features, [self.q])
        assert self.dev.running

    def config(self) -> bytes:
        return bytes(self.dev.mmio_read(M.CONFIG + i, 1) for i in range(72))

    def submit(
        self,
        rtype: int,
        sector: int = 0,
        out: Sequence[bytes] = (),
        into: Sequence[int] = (),
        status: bool = True,
        header: bytes | None = None,
    ) -> tuple[int, list[tuple[int, int]]]:
        """Make a request available: header, device-readable ``out`` buffers, writable
        buffers of the ``into`` sizes and a status byte. Returns (head, writable buffers)."""
        hdr = struct.pack("<IIQ", rtype, 0, sector) if header is None else header
        head = self.q.add([hdr, *out], [*into, *([1] if status else [])])
        wbufs = list(self.q._chains[head][1])
        for addr, n in wbufs:
            self.mem.write(addr, b"\xee" * n)  # what the device did not write shows
        return head, wbufs

    def notify(self) -> None:
        self.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, 0)

    async def request(
        self, rtype: int, sector: int = 0, out: Sequence[bytes] = (), into: Sequence[int] = ()
    ) -> tuple[int, bytes]:
        """One request to completion: (status byte, data read)."""
        head, wbufs = self.submit(rtype, sector, out, into)
        self.notify()
        await trio.testing.wait_all_tasks_blocked()
        used = self.q.take_used()
        assert [u.head for u in used] == [head]
        addr, n = wbufs[-1]
        status = self.mem.read(addr + n - 1, 1)[0]
        return status, used[0].data[: used[0].written - 1]


def pattern(sectors: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(sectors * B.SECTOR))


def segment(sector: int, num: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, num, flags)


# -- config space and features -----------------------------------------------------------------


async def test_config_space_and_features(nursery: trio.Nursery) -> None:
    b = Blk(nursery, MemoryDisk(DISK))
    cfg = b.config()
    capacity, size_max, seg_max = struct.unpack_from("<QII", cfg)
    assert (capacity, size_max, seg_max) == (DISK // 512, B.SIZE_MAX, B.SEG_MAX)
    assert struct.unpack_from("<I", cfg, 20)[0] == 512  # blk_size
    assert struct.unpack_from("<IIIII", cfg, 36) == (
        B.MAX_DISCARD_SECTORS,
        B.MAX_DISCARD_SEG,
        B.DISCARD_SECTOR_ALIGNMENT,
        B.MAX_WRITE_ZEROES_SECTORS,
        B.MAX_WRITE_ZEROES_SEG,
    )
    assert cfg[56] == 1 and cfg[33] == 0 and cfg[57:60] == bytes(3)  # may_unmap, padding
    assert b.dev.mmio_read(M.CONFIG + 72, 4) == 0  # past the end: zero, counted
    assert b.dev.mmio_read(M.R_DEVICE_ID, 4) == 2
    feats = b.dev.device_features
    want = ALL | M.F_RING_EVENT_IDX | M.F_RING_INDIRECT_DESC
    assert feats == want and not feats & B.F_RO
    ro = B.VirtioBlk(MemoryDisk(DISK, read_only=True))
    assert ro.features & B.F_RO
    with pytest.raises(ValueError, match="longer than 20"):
        B.VirtioBlk(MemoryDisk(DISK), "x" * 21)
    with pytest.raises(ValueError, match="not ASCII"):
        B.VirtioBlk(MemoryDisk(DISK), "dïsk")
    dev = virtio_blk("vdb", MemoryDisk(DISK))
    assert isinstance(dev.backend, B.VirtioBlk) and dev.backend.serial == "hv-vdb"
    assert dev.name == "vdb"


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("event_idx", [False, True])
async def test_write_flush_read_round_trip(nursery: trio.Nursery, event_idx: bool) -> None:
    feats = ALL | (M.F_RING_EVENT_IDX if event_idx else 0)
    b = Blk(nursery, features=feats)
    data = pattern(8)
    # data split over descriptors of odd sizes: framing is by length only
    status, _ = await b.request(B.T_OUT, 100, out=[data[:700], data[700:3000], data[3000:]])
    assert status == B.S_OK
    assert await b.disk.read(100 * 512, len(data)) == data
    assert (await b.request(B.T_FLUSH))[0] == B.S_OK
    status, got = await b.request(B.T_IN, 100, into=[1000, 3096])
    assert status == B.S_OK and got == data
    s = b.blk.stats()
    assert (s["writes"], s["reads"], s["flushes"]) == (1, 1, 1)
    assert (s["write_bytes"], s["read_bytes"], s["in_flight"]) == (4096, 4096, 0)
    assert b.disk.counters["flushes"] == 1
    assert b.irq[-1] is True and b.wakes >= 3
    assert b.dev.stats()["reads"] == 1  # the transport's stats include the device's


async def test_header_and_status_in_one_buffer_each_way(nursery: trio.Nursery) -> None:
    """The header merged with the data in one readable descriptor; data and status in one
    writable descriptor (VIRTIO_F_ANY_LAYOUT is part of virtio 1.x)."""
    b = Blk(nursery)
    data = pattern(2, seed=5)
    head = b.q.add([struct.pack("<IIQ", B.T_OUT, 0, 3) + data], [1])
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert b.q.take_used()[0].data == b"\x00"
    head = b.q.add([struct.pack("<IIQ", B.T_IN, 0, 3)], [1025])
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    (used,) = b.q.take_used()
    assert used.head == head and used.written == 1025 and used.data == data + b"\x00"


async def test_get_id(nursery: trio.Nursery) -> None:
    b = Blk(nursery, serial="hv-disk0")
    status, got = await b.request(B.T_GET_ID, into=[20])
    assert status == B.S_OK and got == b"hv-disk0" + bytes(12)
    status, got = await b.request(B.T_GET_ID, into=[4])  # a short buffer: cut
    assert status == B.S_OK and got == b"hv-d"
    full = Blk(nursery, serial="s" * 20)
    assert (await full.request(B.T_GET_ID, into=[64]))[1] == b"s" * 20  # no NUL at 20


async def test_discard_and_write_zeroes(nursery: trio.Nursery) -> None:
    disk = MemoryDisk(DISK, data=b"\xff" * DISK)
    b = Blk(nursery, disk)
    segs = segment(0, 8) + segment(1000, 16)
    assert (await b.request(B.T_WRITE_ZEROES, out=[segs]))[0] == B.S_OK
    assert await disk.read(0, 4096) == bytes(4096)
    assert await disk.read(4096, 512) == b"\xff" * 512
    assert await disk.read(1000 * 512, 16 * 512) == bytes(16 * 512)
    unmap = segment(200, 8, B.WRITE_ZEROES_F_UNMAP)
    assert (await b.request(B.T_WRITE_ZEROES, out=[unmap]))[0] == B.S_OK
    assert await disk.read(200 * 512, 4096) == bytes(4096)
    assert (await b.request(B.T_DISCARD, out=[segment(300, 128)]))[0] == B.S_OK
    s = b.blk.stats()
    assert (s["write_zeroes"], s["discards"], s["discard_bytes"]) == (2, 1, 128 * 512)


async def test_discard_not_negotiated_is_unsupp(nursery: trio.Nursery) -> None:
    b = Blk(nursery, features=M.F_VERSION_1 | B.F_FLUSH)
    assert (await b.request(B.T_DISCARD, out=[segment(0, 8)]))[0] == B.S_UNSUPP
    assert (await b.request(B.T_WRITE_ZEROES, out=[segment(0, 8)]))[0] == B.S_UNSUPP


# -- hostile requests --------------------------------------------------------------------------


async def test_past_the_end_is_ioerr(nursery: trio.Nursery) -> None:
    b = Blk(nursery, MemoryDisk(DISK, data=b"\x11" * DISK))
    last = DISK // 512
    assert (await b.request(B.T_IN, last - 1, into=[1024]))[0] == B.S_IOERR
    assert (await b.request(B.T_OUT, last, out=[bytes(512)]))[0] == B.S_IOERR
    assert (await b.request(B.T_IN, 1 << 60, into=[512]))[0] == B.S_IOERR
    assert (await b.request(B.T_WRITE_ZEROES, out=[segment(last - 4, 8)]))[0] == B.S_IOERR
    assert (await b.request(B.T_DISCARD, out=[segment(1 << 62, 1)]))[0] == B.S_IOERR
    assert (await b.request(B.T_IN, last - 1, into=[512]))[0] == B.S_OK  # the last sector
    assert b.blk.counters["out_of_range"] == 5 and b.blk.counters["ioerr"] == 5
    assert await b.disk.read(DISK - 4096, 4096) == b"\x11" * 4096


async def test_writes_to_a_read_only_disk_are_ioerr(nursery: trio.Nursery) -> None:
    disk = MemoryDisk(DISK, read_only=True, data=b"\x22" * 4096)
    b = Blk(nursery, disk, features=ALL | B.F_RO)
    assert (await b.request(B.T_OUT, 0, out=[bytes(512)]))[0] == B.S_IOERR
    assert (await b.request(B.T_WRITE_ZEROES, out=[segment(0, 8)]))[0] == B.S_IOERR
    assert (await b.request(B.T_DISCARD, out=[segment(0, 8)]))[0] == B.S_IOERR
    assert (await b.request(B.T_IN, 0, into=[512]))[1] == b"\x22" * 512
    assert (await b.request(B.T_FLUSH))[0] == B.S_OK
    assert b.blk.counters["read_only"] == 3 and await disk.read(0, 512) == b"\x22" * 512


async def test_unknown_type_is_unsupp(nursery: trio.Nursery) -> None:
    b = Blk(nursery)
    for rtype in (2, 3, 5, 10, 14, 0x8000_0000, 0xFFFF_FFFF):
        assert (await b.request(rtype, into=[512]))[0] == B.S_UNSUPP
    assert b.blk.counters["bad_unsupported_type"] == 7 and b.blk.counters["unsupp"] == 7


HOSTILE: list[tuple[str, dict[str, Any], int, str]] = [
    ("short header", {"header": b"\x00" * 15}, B.S_IOERR, "short_header"),
    ("no header", {"header": b""}, B.S_IOERR, "short_header"),
    ("read with readable data", {"rtype": B.T_IN, "out": [bytes(512)]}, B.S_IOERR,
     "bad_direction"),
    ("write with writable data", {"rtype": B.T_OUT, "into": [512]}, B.S_IOERR, "bad_direction"),
    ("flush with data", {"rtype": B.T_FLUSH, "out": [bytes(512)]}, B.S_IOERR, "bad_direction"),
    ("get_id without room", {"rtype": B.T_GET_ID}, B.S_IOERR, "bad_direction"),
    ("get_id with readable data", {"rtype": B.T_GET_ID, "out": [b"x"], "into": [20]},
     B.S_IOERR, "bad_direction"),
    ("read of 511 bytes", {"rtype": B.T_IN, "into": [511]}, B.S_IOERR, "unaligned_length"),
    ("write of 513 bytes", {"rtype": B.T_OUT, "out": [bytes(513)]}, B.S_IOERR,
     "unaligned_length"),
    ("discard without segments", {"rtype": B.T_DISCARD}, B.S_IOERR, "bad_segments"),
    ("discard of 20 bytes", {"rtype": B.T_DISCARD, "out": [segment(0, 1) + b"1234"]},
     B.S_IOERR, "bad_segments"),
    ("write zeroes of 8 bytes", {"rtype": B.T_WRITE_ZEROES, "out": [bytes(8)]}, B.S_IOERR,
     "bad_segments"),
    ("discard with unmap", {"rtype": B.T_DISCARD, "out": [segment(0, 1, 1)]}, B.S_UNSUPP,
     "bad_flags"),
    ("discard with a reserved flag", {"rtype": B.T_DISCARD, "out": [segment(0, 1, 4)]},
     B.S_UNSUPP, "bad_flags"),
    ("write zeroes with a reserved flag",
     {"rtype": B.T_WRITE_ZEROES, "out": [segment(0, 1, 1 << 31)]}, B.S_UNSUPP, "bad_flags"),
    ("too many discard segments",
     {"rtype": B.T_DISCARD, "out": [segment(0, 1) * (B.MAX_DISCARD_SEG + 1)]}, B.S_IOERR,
     "too_many_segments"),
    ("discard segment too long",
     {"rtype": B.T_DISCARD, "out": [segment(0, B.MAX_DISCARD_SECTORS + 1)]}, B.S_IOERR,
     "segment_too_long"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [pytest.param(kw, st_, r, id=name) for name, kw, st_, r in HOSTILE],
)
async def test_malformed_requests(
    nursery: trio.Nursery, kwargs: dict[str, Any], status: int, reason: str
) -> None:
    disk = MemoryDisk(16 << 30 if reason == "segment_too_long" else DISK, data=b"\x33" * 4096)
    b = Blk(nursery, disk)
    kw = {"rtype": B.T_IN, **kwargs}
    head, wbufs = b.submit(kw.pop("rtype"), **kw)
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    (used,) = b.q.take_used()
    addr, n = wbufs[-1]
    assert used.head == head and used.written == 1
    assert b.mem.read(addr + n - 1, 1)[0] == status
    for a, m in wbufs[:-1]:  # data buffers untouched
        assert b.mem.read(a, m) == b"\xee" * m
    c = b.blk.counters
    if reason in ("segment_too_long",):
        assert c[reason] == 1
    else:
        assert c["bad_requests"] == 1 and c[f"bad_{reason}"] == 1
    assert await disk.read(0, 4096) == b"\x33" * 4096 and disk.counters["write_bytes"] == 0
    assert b.dev.running  # answered, not a reason to reset
    assert (await b.request(B.T_IN, 0, into=[512]))[1] == b"\x33" * 512


async def test_chain_without_a_status_byte(nursery: trio.Nursery) -> None:
    b = Blk(nursery)
    head, _ = b.submit(B.T_OUT, 0, out=[bytes(512)], status=False)
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert [(u.head, u.written) for u in b.q.take_used()] == [(head, 0)]
    head, _ = b.submit(B.T_IN, 0, into=[0, 0], status=False)  # only empty writable buffers
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert [(u.head, u.written) for u in b.q.take_used()] == [(head, 0)]
    head = b.q.add([struct.pack("<IIQ", B.T_FLUSH, 0, 0), b"\xee"], [])  # status readable
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert [(u.head, u.written) for u in b.q.take_used()] == [(head, 0)]
    assert b.blk.counters["bad_no_status"] == 3 and b.disk.counters["write_bytes"] == 0
    assert b.disk.counters["flushes"] == 0
    assert b.dev.running


async def test_queue_rule_broken_needs_reset(nursery: trio.Nursery) -> None:
    b = Blk(nursery)
    b.q.write_desc(b.q.desc, 0, RAM + 0x10000, 16, DESC_F_NEXT, 0)  # a chain looping on itself
    b.q.make_available(0)
    b.notify()
    assert b.dev.status & M.STATUS_NEEDS_RESET and b.dev.counters["needs_reset"] == 1
    b.handshake()
    assert (await b.request(B.T_FLUSH))[0] == B.S_OK


# -- in flight, reset, host errors -------------------------------------------------------------


async def test_requests_in_flight_are_bounded(nursery: trio.Nursery) -> None:
    disk = GatedDisk(DISK)
    b = Blk(nursery, disk, qsize=256)
    heads = [b.submit(B.T_IN, i, into=[512])[0] for i in range(B.MAX_IN_FLIGHT + 6)]
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert b.blk.in_flight == B.MAX_IN_FLIGHT and b.q.take_used() == []
    assert b.blk._queue is not None and b.blk._queue.pending() == 6  # left in the ring
    # the guest keeps going meanwhile: a flush is not gated but waits for a slot too
    flush, _ = b.submit(B.T_FLUSH)
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert b.blk.in_flight == B.MAX_IN_FLIGHT and b.blk.counters["throttled"] >= 1
    disk.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    used = b.q.take_used()
    assert sorted(u.head for u in used) == sorted([*heads, flush]) and b.blk.in_flight == 0
    assert b.blk.counters["in_flight_peak"] == B.MAX_IN_FLIGHT


async def test_bytes_in_flight_are_bounded(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(B, "MAX_IN_FLIGHT_BYTES", 8192)
    disk = GatedDisk(DISK)
    b = Blk(nursery, disk)
    for i in range(4):
        b.submit(B.T_OUT, 8 * i, out=[pattern(8, seed=i)])
    b.submit(B.T_OUT, 64, out=[pattern(32)])  # larger than the budget on its own
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert (b.blk.in_flight, b.blk.in_flight_bytes) == (2, 8192)
    disk.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(b.q.take_used()) == 5 and b.blk.in_flight_bytes == 0
    for i in range(4):
        assert await disk.read(8 * i * 512, 4096) == pattern(8, seed=i)
    assert await disk.read(64 * 512, 32 * 512) == pattern(32)


async def test_reset_with_io_in_flight_writes_nothing_afterwards(nursery: trio.Nursery) -> None:
    disk = GatedDisk(DISK)
    await MemoryDisk.write(disk, 0, b"\x44" * 8192)
    b = Blk(nursery, disk)
    for i in range(4):
        b.submit(B.T_IN, i * 2, into=[1024])
    b.submit(B.T_OUT, 8, out=[bytes(512)])
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert b.blk.in_flight == 5
    b.dev.mmio_write(M.R_STATUS, 4, 0)  # the driver resets the device
    before = b.mem.read(RAM, SIZE)
    irqs = len(b.irq)
    disk.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert b.mem.read(RAM, SIZE) == before  # no data, status or used ring written
    assert b.blk.counters["discarded_completions"] == 5 and b.blk.in_flight == 0
    assert len(b.irq) == irqs
    b.handshake()  # and the device works again
    assert (await b.request(B.T_IN, 0, into=[512]))[1] == b"\x44" * 512


async def test_reset_then_new_requests_share_the_in_flight_bound(nursery: trio.Nursery) -> None:
    disk = GatedDisk(DISK)
    b = Blk(nursery, disk, qsize=256)
    for i in range(B.MAX_IN_FLIGHT):
        b.submit(B.T_IN, i, into=[512])
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    b.handshake()  # reset and set up again: the old requests still run on the host
    head, _ = b.submit(B.T_IN, 0, into=[512])
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert b.blk.in_flight == B.MAX_IN_FLIGHT and b.q.take_used() == []
    disk.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert [u.head for u in b.q.take_used()] == [head]


async def test_host_io_error_is_ioerr_and_the_device_goes_on(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def warning(self, event: str, **kw: Any) -> None:
            lines.append((event, kw))

    monkeypatch.setattr(B, "log", Log())
    disk = FailingDisk(DISK)
    b = Blk(nursery, disk)
    disk.failing = True
    assert (await b.request(B.T_OUT, 4, out=[pattern(1)]))[0] == B.S_IOERR
    assert (await b.request(B.T_FLUSH))[0] == B.S_IOERR
    assert b.blk.counters["host_io_errors"] == 2 and b.blk.counters["ioerr"] == 2
    assert lines[0][0] == "host I/O error"
    assert lines[0][1]["op"] == "out" and lines[0][1]["sector"] == 4
    assert "EIO" in lines[0][1]["error"] and lines[0][1]["device"] == "vda"
    disk.failing = False
    assert (await b.request(B.T_OUT, 4, out=[pattern(1)]))[0] == B.S_OK
    assert (await b.request(B.T_FLUSH))[0] == B.S_OK
    assert b.dev.running and await disk.read(4 * 512, 512) == pattern(1)


async def test_a_backend_bug_is_not_swallowed(nursery: trio.Nursery) -> None:
    """Anything but BlockIOError from the backend is a host bug: it leaves the device's task
    (in a VM, that stops the VM with a host error naming the device)."""

    class Broken(MemoryDisk):
        async def flush(self) -> None:
            raise RuntimeError("backend bug")

    caught: list[BaseException] = []

    async def guarded(work: Any) -> None:
        try:
            await work()
        except RuntimeError as e:
            caught.append(e)

    b = Blk(nursery, Broken(DISK))
    b.dev._ctx = DeviceContext(
        "vda", b.mem, b.irq.append, lambda: None, lambda w: nursery.start_soon(guarded, w)
    )
    b.submit(B.T_FLUSH)
    b.notify()
    await trio.testing.wait_all_tasks_blocked()
    assert [str(e) for e in caught] == ["backend bug"] and b.blk.in_flight == 0


# -- fuzz --------------------------------------------------------------------------------------

FUZZ_RAM = 1 << 18
HEAP = RAM + 0x8000
CANARY = bytes((i * 13 + 5) & 0xFF for i in range(RAM + FUZZ_RAM - HEAP))

_types = st.sampled_from([B.T_IN, B.T_OUT, B.T_FLUSH, B.T_GET_ID, B.T_DISCARD, B.T_WRITE_ZEROES])
_structured_header = st.builds(
    lambda t, r, s: struct.pack("<IIQ", t, r, s),
    st.one_of(_types, _types, _types, st.integers(0, 0xFFFF_FFFF)),
    st.one_of(st.just(0), st.integers(0, 0xFFFF_FFFF)),
    st.one_of(st.integers(0, 140), st.integers(0, 140), st.integers(0, (1 << 64) - 1)),
)
_header = st.one_of(_structured_header, _structured_header, _structured_header,
                    st.binary(max_size=24))  # fmt: skip
_segment = st.builds(
    lambda sec, n, f: struct.pack("<QII", sec, n, f),
    st.one_of(st.integers(0, 140), st.integers(0, (1 << 64) - 1)),
    st.one_of(st.integers(0, 16), st.integers(0, 0xFFFF_FFFF)),
    st.one_of(st.just(0), st.just(1), st.integers(0, 0xFFFF_FFFF)),
)
_length = st.one_of(st.sampled_from([0, 1, 16, 20, 32, 511, 512, 1024]), st.integers(0, 2100))
_readable = st.one_of(  # a data descriptor's (length, content repeated to fill it)
    st.tuples(_length, st.binary(min_size=1, max_size=64)),
    st.lists(_segment, min_size=1, max_size=3).map(lambda segs: (16 * len(segs), b"".join(segs))),
)


@st.composite
def _good_chain(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed request of each type (it may still run past the disk's end)."""
    rtype = draw(_types)
    sector, n = draw(st.integers(0, 140)), draw(st.integers(0, 4))
    readable: list[tuple[int, bytes]] = []
    writable: list[int] = []
    if rtype == B.T_IN:
        writable = [512 * n]
    elif rtype == B.T_OUT:
        readable = [(512 * n, draw(st.binary(min_size=1, max_size=8)))]
    elif rtype == B.T_GET_ID:
        writable = [draw(st.integers(1, 40))]
    elif rtype in (B.T_DISCARD, B.T_WRITE_ZEROES):
        segs = draw(st.lists(st.tuples(st.integers(0, 130), st.integers(0, 8)), min_size=1,
                             max_size=3))  # fmt: skip
        raw = b"".join(struct.pack("<QII", a, k, 0) for a, k in segs)
        readable = [(len(raw), raw)]
    return {
        "header": struct.pack("<IIQ", rtype, 0, sector),
        "split": draw(st.integers(0, 24)),
        "readable": readable,
        "writable": writable,
        "status": True,
        "disorder": False,
    }


_random_chain = st.fixed_dictionaries(
    {
        "header": _header,
        "split": st.integers(0, 24),  # the header in two descriptors, cut here
        "readable": st.lists(_readable, max_size=3),
        "writable": st.lists(_length, max_size=3),
        "status": st.booleans(),  # a last 1-byte writable descriptor
        "disorder": st.integers(0, 7).map(lambda x: x == 0),  # a writable one moved early
    }
)
_chain = st.one_of(_good_chain(), _random_chain)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains=st.lists(_chain, min_size=1, max_size=5), event_idx=st.booleans())
async def test_fuzz_random_chains(chains: list[dict[str, Any]], event_idx: bool) -> None:
    """Random layouts and header bytes: never a host exception; every chain the device hands
    back with a writable last byte has status 0, 1 or 2 there; no byte outside the chains'
    writable buffers (and the used ring) changes."""
    async with trio.open_nursery() as nursery:
        feats = ALL | (M.F_RING_EVENT_IDX if event_idx else 0)
        b = Blk(nursery, MemoryDisk(64 << 10), features=feats, mem_size=FUZZ_RAM)
        heap = HEAP
        writable: list[tuple[int, int]] = []
        status_of: dict[int, int | None] = {}
        index = 0
        b.mem.write(HEAP, CANARY)
        for c in chains:
            header: bytes = c["header"]
            cut = min(c["split"], len(header))
            layout: list[tuple[int, bool, bytes]] = [(cut, False, header[:cut])]
            if cut < len(header):
                layout.append((len(header) - cut, False, header[cut:]))
            layout += [(n, False, content) for n, content in c["readable"]]
            wr = [(n, True, b"") for n in c["writable"]] + ([(1, True, b"")] if c["status"] else [])
            if c["disorder"] and wr:
                layout.insert(len(layout) - 1, wr.pop(0))
            layout += wr
            if index + len(layout) > b.q.size:
                break
            head = index
            last_w: int | None = None
            for i, (n, w, content) in enumerate(layout):
                addr = heap
                heap += (n + 15) & ~15 or 16
                if not w:
                    b.mem.write(addr, (content * (n // max(len(content), 1) + 1))[:n])
                else:
                    writable.append((addr, n))
                    if n:
                        last_w = addr + n - 1
                more = i + 1 < len(layout)
                flags = (DESC_F_WRITE if w else 0) | (DESC_F_NEXT if more else 0)
                b.q.write_desc(b.q.desc, index, addr, n, flags, index + 1 if more else 0)
                index += 1
            # the status byte the device would use: the last byte of the last non-empty
            # writable buffer, if the chain's writable buffers all come last
            status_of[head] = last_w
            b.q.make_available(head)
        before = b.mem.read(RAM, FUZZ_RAM)
        b.notify()
        await trio.testing.wait_all_tasks_blocked()
        after = b.mem.read(RAM, FUZZ_RAM)
        used_lo = b.q.used - RAM
        allowed = sorted([(used_lo, used_lo + 6 + 8 * b.q.size + 2)] +
                         [(a - RAM, a - RAM + n) for a, n in writable])  # fmt: skip
        pos = 0
        for lo, hi in [*allowed, (FUZZ_RAM, FUZZ_RAM)]:
            assert before[pos:lo] == after[pos:lo], f"a write outside the chains at {pos}..{lo}"
            pos = max(pos, hi)
        assert b.blk.in_flight == 0
        if b.dev.status & M.STATUS_NEEDS_RESET:
            event("needs reset")
        else:
            idx = b.mem.read_u16(b.q.used + 2)
            assert idx == len(status_of)  # every chain answered
            for k in range(idx):
                head = b.mem.read_u32(b.q.used + 4 + 8 * k)
                written = b.mem.read_u32(b.q.used + 8 + 8 * k)
                last = status_of[head]
                if last is not None:
                    assert after[last - RAM] in (0, 1, 2)
                    assert written >= 1
                    event(f"status {after[last - RAM]}")
                else:
                    assert written == 0
        nursery.cancel_scope.cancel()


# -- the blktest guest in a VM -----------------------------------------------------------------


async def _boot(disk: MemoryDisk, cmdline: str, timeout: float = 30) -> tuple[hv.StopInfo, str]:
    config = hv.VmConfig(
        kernel=hv.guest_path("blktest"),
        name="blk",
        mem_size=32 << 20,
        cmdline=cmdline,
        devices=(virtio_blk("vda", disk, serial="hv-disk0"),),
    )
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            vm: hv.Vm = await nursery.start(hv.run_vm, config)
            info = await vm.wait()
    return info, vm.console.transcript.decode(errors="replace")


def _blktest_pattern(sectors: int, seed: int) -> bytes:
    """What blktest writes (see hv/guests/blktest/main.c): per 64-bit word w of the disk,
    splitmix64(seed ^ (w * 0x9e3779b97f4a7c15))."""
    out = bytearray()
    mask = (1 << 64) - 1
    for w in range(sectors * 512 // 8):
        z = (seed ^ (w * 0x9E3779B97F4A7C15)) & mask
        z = (z + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out += (z ^ (z >> 31)).to_bytes(8, "little")
    return bytes(out)


async def test_blktest_guest_writes_flushes_and_reads_back() -> None:
    disk = MemoryDisk(4 << 20)
    info, out = await _boot(disk, "blk.sectors=2048 blk.seed=7")
    assert info.exit_code == 0, out
    assert (
        "blktest: virtio-blk at 0x10001000: 8192 sectors (4 MiB), blk_size 512, rw, "
        "serial hv-disk0" in out
    )
    assert (
        "blktest: wrote 2048 sectors, flushed, read back 2048 sectors: ok (serial hv-disk0)" in out
    )
    assert await disk.read(0, 2048 * 512) == _blktest_pattern(2048, 7)
    assert await disk.read(2048 * 512, 512) == bytes(512)  # nothing past N sectors
    assert disk.counters["flushes"] == 1
    # another VM on the same disk verifies what the first wrote; a wrong seed fails
    info, out = await _boot(disk, "blk.mode=verify blk.sectors=2048 blk.seed=7")
    assert info.exit_code == 0, out
    assert "blktest: verified 2048 sectors: ok (serial hv-disk0)" in out
    info, out = await _boot(disk, "blk.mode=verify blk.sectors=16 blk.seed=8")
    assert info.exit_code != 0
    assert "blktest: verify failed at sector 0" in out


async def test_blktest_write_flush_hang_mode() -> None:
    disk = MemoryDisk(1 << 20)
    config = hv.VmConfig(
        kernel=hv.guest_path("blktest"),
        mem_size=32 << 20,
        cmdline="blk.mode=write-flush-hang blk.sectors=64 blk.seed=3",
        devices=(virtio_blk("vda", disk),),
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vm: hv.Vm = await nursery.start(hv.run_vm, config)
            await vm.console.wait_for(b"blktest: flushed\n")
            await trio.testing.wait_all_tasks_blocked()  # the VM waits: the guest hangs in wfi
            assert vm.state is hv.VmState.RUNNING  # for good: a test kills it
            vm.stop("done")
    assert await disk.read(0, 64 * 512) == _blktest_pattern(64, 3)
    assert disk.counters["flushes"] == 1


async def test_blktest_without_a_disk_fails() -> None:
    config = hv.VmConfig(kernel=hv.guest_path("blktest"), mem_size=32 << 20)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vm: hv.Vm = await nursery.start(hv.run_vm, config)
            info = await vm.wait()
    assert info.exit_code != 0
    assert b"blk: no virtio-blk device in the device tree" in vm.console.transcript


# -- Linux's virtio_blk driver -----------------------------------------------------------------

LINUX_PROMPT = re.compile(rb"\n[^\n]*# $")


async def test_linux_reads_and_writes_the_disk(linux_image: il.LinuxImage) -> None:
    """The unmodified Linux 6.1 driver: it probes the disk (capacity, serial, limits from the
    config space), reads what the host put there and writes through to the backend (fsync:
    a FLUSH)."""
    img = linux_image
    disk = MemoryDisk(8 << 20, data=pattern(8, seed=9))
    config = hv.VmConfig(
        kernel=img.kernel,
        initrd=img.initrd,
        cmdline=img.cmdline,
        name="linux",
        devices=(virtio_blk("vda", disk, serial="hv-linux-disk"),),
    )

    async def run(vm: hv.Vm, command: str) -> str:
        await vm.console.send_all(command + "\n")
        out = await vm.console.wait_for(LINUX_PROMPT)
        return out.decode(errors="replace").replace("\r", "")

    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, config)
        with trio.fail_after(90):
            await vm.console.wait_for(LINUX_PROMPT)
            sysfs = await run(vm, "cat /sys/block/vda/size /sys/block/vda/serial")
            limits = await run(
                vm, "cat /sys/block/vda/queue/max_segments /sys/block/vda/queue/discard_max_bytes"
            )
            copy = await run(vm, "dd if=/dev/vda of=/dev/vda bs=4096 count=1 seek=1 conv=fsync")
        stats = vm.stats
        vm.stop()
    assert "16384\n" in sysfs and "hv-linux-disk" in sysfs
    assert f"{B.SEG_MAX}\n{B.MAX_DISCARD_SECTORS * 512}\n" in limits
    assert "1+0 records out" in copy, copy
    assert await disk.read(4096, 4096) == pattern(8, seed=9)
    assert stats["vda.writes"] >= 1 and stats["vda.flushes"] >= 1
    assert stats.get("vda.bad_requests", 0) == 0 and stats.get("vda.needs_reset", 0) == 0
