"""The split virtqueue's device side (hv.virtio._queue) against a driver in plain memory
(hv.virtio.testing): direct and indirect chains, the used ring, interrupt suppression with
and without EVENT_IDX, and every hostile shape, fuzzed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv import GuestError
from hv.hw._memory import GuestMemory
from hv.virtio._queue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    MAX_CHAIN_BYTES,
    QueueError,
    Virtqueue,
)
from hv.virtio.testing import DriverQueue

RAM, SIZE = 0x8000_0000, 1 << 20
RINGS, HEAP = RAM + 0x1000, RAM + 0x10000


@pytest.fixture
def mem() -> GuestMemory:
    return GuestMemory(RAM, SIZE)


def test_a_direct_chain_round_trip(mem: GuestMemory) -> None:
    drv = DriverQueue(mem, 8, RINGS, HEAP)
    q = drv.device_queue()
    assert q.pop() is None
    head = drv.add(readable=[b"hello ", b"world"], writable=[4, 100])
    chain = q.pop()
    assert chain is not None and chain.head == head
    assert chain.read(mem) == b"hello world" and chain.writable_len == 104
    assert chain.write(mem, b"abcdefgh") == 8
    q.push(chain.head, 8)
    assert q.needs_interrupt()
    (used,) = drv.take_used()
    assert (used.head, used.written, used.data) == (head, 8, b"abcdefgh")
    assert q.pop() is None


def test_indirect_chains_and_many_rounds(mem: GuestMemory) -> None:
    drv = DriverQueue(mem, 4, RINGS, HEAP)
    q = drv.device_queue()
    for i in range(200):  # the indexes wrap the ring many times
        drv.add(readable=[bytes([i % 256]) * 3], writable=[2], indirect=i % 2 == 0)
        chain = q.pop()
        assert chain is not None and chain.read(mem) == bytes([i % 256]) * 3
        q.push(chain.head, chain.write(mem, b"ok"))
        assert [u.data for u in drv.take_used()] == [b"ok"]


def test_no_interrupt_flag_and_event_idx(mem: GuestMemory) -> None:
    drv = DriverQueue(mem, 8, RINGS, HEAP)
    q = drv.device_queue()
    drv.set_no_interrupt(True)
    drv.add(readable=[b"x"])
    c = q.pop()
    assert c is not None
    q.push(c.head, 0)
    assert not q.needs_interrupt()

    mem2 = GuestMemory(RAM, SIZE)
    drv = DriverQueue(mem2, 8, RINGS, HEAP, event_idx=True)
    q = drv.device_queue()
    drv.set_used_event(2)  # interrupt when the used index passes 2 (after the third)
    wants = []
    for _ in range(4):
        drv.add(readable=[b"y"])
        c = q.pop()
        assert c is not None
        q.push(c.head, 0)
        wants.append(q.needs_interrupt())
    assert wants == [False, False, True, False]
    assert mem2.read_u16(drv.used + 4 + 8 * 8) == 4  # avail_event follows the device


def desc(mem: GuestMemory, table: int, i: int, addr: int, n: int, flags: int, nxt: int) -> None:
    mem.write(table + 16 * i, struct.pack("<QIHH", addr, n, flags, nxt))


def make_avail(drv: DriverQueue, head: int) -> None:
    drv.make_available(head)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda m, d: desc(m, d.desc, 0, HEAP, 8, DESC_F_NEXT, 0), "loops"),
        (lambda m, d: desc(m, d.desc, 0, HEAP, 8, DESC_F_NEXT, 9), "outside the table"),
        (lambda m, d: desc(m, d.desc, 0, RAM + SIZE - 4, 8, 0, 0), "outside guest RAM"),
        (lambda m, d: desc(m, d.desc, 0, 0x1000, 8, 0, 0), "outside guest RAM"),
        (
            lambda m, d: (
                desc(m, d.desc, 0, HEAP, 8, DESC_F_WRITE | DESC_F_NEXT, 1),
                desc(m, d.desc, 1, HEAP + 16, 8, 0, 0),
            ),
            "device-readable descriptor after a device-writable",
        ),
        (lambda m, d: desc(m, d.desc, 0, HEAP, 0, DESC_F_INDIRECT, 0), "indirect table of 0"),
        (lambda m, d: desc(m, d.desc, 0, HEAP, 24, DESC_F_INDIRECT, 0), "indirect table of 24"),
        (
            lambda m, d: desc(m, d.desc, 0, HEAP, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1),
            "NEXT set",
        ),
        (
            lambda m, d: (
                desc(m, d.desc, 0, HEAP, 16, DESC_F_INDIRECT, 0),
                desc(m, HEAP, 0, HEAP + 64, 16, DESC_F_INDIRECT, 0),
            ),
            "inside an indirect table",
        ),
        (
            lambda m, d: (
                desc(m, d.desc, 0, HEAP, 32, DESC_F_INDIRECT, 0),
                desc(m, HEAP, 0, HEAP + 64, 8, DESC_F_NEXT, 0),
                desc(m, HEAP, 1, HEAP + 64, 8, DESC_F_NEXT, 0),
            ),
            "loops",
        ),
        (
            lambda m, d: (
                desc(m, d.desc, 0, HEAP, MAX_CHAIN_BYTES, DESC_F_NEXT, 1),
                desc(m, d.desc, 1, HEAP, 16, 0, 0),
            ),
            "outside guest RAM",
        ),
    ],
)
def test_hostile_chains_are_queue_errors(mem: GuestMemory, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    drv = DriverQueue(mem, 8, RINGS, HEAP)
    q = drv.device_queue()
    setup(mem, drv)
    make_avail(drv, 0)
    with pytest.raises(QueueError, match=message):
        q.pop()


def test_an_available_index_far_ahead_is_a_queue_error(mem: GuestMemory) -> None:
    drv = DriverQueue(mem, 8, RINGS, HEAP)
    q = drv.device_queue()
    mem.write_u16(drv.avail + 2, 9)
    with pytest.raises(QueueError, match="ran 9 ahead"):
        q.pop()


def test_a_head_outside_the_table_is_a_queue_error(mem: GuestMemory) -> None:
    drv = DriverQueue(mem, 8, RINGS, HEAP)
    q = drv.device_queue()
    make_avail(drv, 8)
    with pytest.raises(QueueError, match="chain head 8"):
        q.pop()


@pytest.mark.parametrize(
    ("size", "desc_at", "message"),
    [
        (6, RINGS, "not a power of two"),
        (0, RINGS, "not a power of two"),
        (65536, RINGS, "not a power of two"),
        (8, RINGS + 8, "not 16-byte aligned"),
        (8, RAM + SIZE - 64, "outside guest RAM"),
    ],
)
def test_bad_queue_layouts_are_refused(
    mem: GuestMemory, size: int, desc_at: int, message: str
) -> None:
    with pytest.raises(QueueError, match=message):
        Virtqueue(mem, size, desc_at, RINGS + 0x800, RINGS + 0xC00)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    descs=st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1) | st.integers(RAM, RAM + SIZE),
            st.integers(0, 2**32 - 1) | st.integers(0, 4096),
            st.integers(0, 7),
            st.integers(0, 15),
        ),
        min_size=8,
        max_size=8,
    ),
    heads=st.lists(st.integers(0, 2**16 - 1) | st.integers(0, 9), min_size=1, max_size=12),
    avail_idx=st.integers(0, 2**16 - 1) | st.integers(0, 12),
)
def test_fuzzed_queues_end_in_a_chain_or_a_guest_error(
    descs: list[tuple[int, int, int, int]], heads: list[int], avail_idx: int
) -> None:
    mem = GuestMemory(RAM, SIZE)
    drv = DriverQueue(mem, 8, RINGS, HEAP)
    for i, (addr, n, flags, nxt) in enumerate(descs):
        desc(mem, drv.desc, i, addr, n, flags, nxt)
    for i, h in enumerate(heads[:8]):
        mem.write_u16(drv.avail + 4 + 2 * i, h)
    mem.write_u16(drv.avail + 2, avail_idx)
    q = drv.device_queue()
    for _ in range(10):
        try:
            chain = q.pop()
        except GuestError:
            return  # the device would count it and need a reset
        if chain is None:
            return
        assert len(chain.readable) + len(chain.writable) <= 8 * 8 + 8
        for addr, n in chain.readable + chain.writable:
            assert mem.contains(addr, n)
        q.push(chain.head, chain.write(mem, b"z" * 16))
