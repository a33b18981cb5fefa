"""The virtio-mmio transport (hv.virtio._mmio) driven as a guest driver would, register by
register, with a small echo backend and a driver-side queue in plain memory; then in a real
VM's device tree. Hostile drivers end in DEVICE_NEEDS_RESET and a counter, never a raise."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import hv
from hv import GuestError
from hv.hw._device import DeviceContext
from hv.hw._memory import GuestMemory
from hv.virtio import _mmio as M
from hv.virtio._queue import Virtqueue
from hv.virtio.testing import DriverQueue, activate

RAM, SIZE = 0x8000_0000, 1 << 20


class Echo(M.VirtioBackend):
    """Queue 0 (TX): whatever the driver sends comes back on queue 1 (RX), upper-cased."""

    device_id = 0x7F  # not a real virtio device id
    queue_max = 16

    def __init__(self) -> None:
        super().__init__()
        self.queues: Sequence[Virtqueue] = ()
        self.mem: GuestMemory | None = None
        self.activations = 0

    @property
    def features(self) -> int:
        return M.F_RING_EVENT_IDX | M.F_RING_INDIRECT_DESC

    @property
    def num_queues(self) -> int:
        return 2

    def config(self) -> bytes:
        return b"ECHO\x01\x00\x00\x00"

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], features: int) -> None:
        self.mem, self.queues = mem, queues
        self.activations += 1

    def notify(self, queue: int) -> None:
        assert self.mem is not None and self.transport is not None
        tx, rx = self.queues
        while (out := tx.pop()) is not None:
            data = out.read(self.mem).upper()
            tx.push(out.head, 0)
            back = rx.pop()
            if back is not None:
                rx.push(back.head, back.write(self.mem, data))
        self.transport.signal_used(0)
        self.transport.signal_used(1)


class Board:
    """A transport attached to plain memory, with its IRQ line recorded."""

    def __init__(self) -> None:
        self.mem = GuestMemory(RAM, SIZE)
        self.irq: list[bool] = []
        self.backend = Echo()
        self.dev = M.VirtioMmio("echo", self.backend)
        self.dev.attach(
            DeviceContext("echo", self.mem, self.irq.append, lambda: None, lambda work: None)
        )

    def r(self, off: int) -> int:
        return self.dev.mmio_read(off, 4)

    def w(self, off: int, value: int) -> None:
        self.dev.mmio_write(off, 4, value)


def queues(b: Board, event_idx: bool = False) -> list[DriverQueue]:
    return [
        DriverQueue(b.mem, 8, RAM + 0x1000, RAM + 0x10000, event_idx),
        DriverQueue(b.mem, 8, RAM + 0x2000, RAM + 0x40000, event_idx),
    ]


def test_identity_registers() -> None:
    b = Board()
    assert (b.r(M.R_MAGIC), b.r(M.R_VERSION), b.r(M.R_DEVICE_ID)) == (M.MAGIC, 2, 0x7F)
    b.w(M.R_DEVICE_FEATURES_SEL, 1)
    assert b.r(M.R_DEVICE_FEATURES) & 1  # VERSION_1 is bit 32
    b.w(M.R_DEVICE_FEATURES_SEL, 0)
    assert b.r(M.R_DEVICE_FEATURES) == M.F_RING_EVENT_IDX | M.F_RING_INDIRECT_DESC
    assert b.dev.mmio_read(M.CONFIG, 4) == int.from_bytes(b"ECHO", "little")
    assert b.dev.mmio_read(M.CONFIG + 4, 1) == 1


def test_a_full_handshake_and_traffic_with_interrupts() -> None:
    b = Board()
    tx, rx = queues(b)
    status = activate(b.dev, M.F_VERSION_1 | M.F_RING_INDIRECT_DESC, [tx, rx])
    assert status == 0x0F and b.backend.activations == 1
    for sel in (0, 1):
        b.w(M.R_QUEUE_SEL, sel)
        assert b.r(M.R_QUEUE_NUM_MAX) == 16
    rx.add(writable=[64])
    tx.add(readable=[b"hello"])
    b.w(M.R_QUEUE_NOTIFY, 0)
    assert [u.data for u in rx.take_used()] == [b"HELLO"]
    assert b.r(M.R_INTERRUPT_STATUS) == M.INT_USED and b.irq == [True]
    b.w(M.R_INTERRUPT_ACK, M.INT_USED)
    assert b.irq == [True, False]


def test_features_outside_the_offer_or_without_version_1_are_refused() -> None:
    b = Board()
    status = activate(b.dev, M.F_VERSION_1 | (1 << 40), queues(b))
    assert not status & M.STATUS_FEATURES_OK
    b = Board()
    status = activate(b.dev, M.F_RING_INDIRECT_DESC, queues(b))  # a legacy driver
    assert not status & M.STATUS_FEATURES_OK and b.dev.counters["features_refused"] == 1


def test_a_bad_ring_at_driver_ok_needs_a_reset() -> None:
    b = Board()
    tx, rx = queues(b)
    tx.used = RAM + SIZE + 0x1000  # outside RAM
    status = activate(b.dev, M.F_VERSION_1, [tx, rx])
    assert status & M.STATUS_NEEDS_RESET
    assert b.r(M.R_INTERRUPT_STATUS) & M.INT_CONFIG
    assert b.dev.counters["needs_reset"] == 1
    b.w(M.R_QUEUE_NOTIFY, 0)  # ignored until the driver resets the device
    assert b.dev.counters["notify_while_stopped"] == 1
    b.w(M.R_STATUS, 0)
    assert b.r(M.R_STATUS) == 0 and b.r(M.R_INTERRUPT_STATUS) == 0


def test_a_looping_chain_needs_a_reset_and_nothing_raises() -> None:
    b = Board()
    tx, rx = queues(b)
    assert activate(b.dev, M.F_VERSION_1, [tx, rx]) == 0x0F
    tx.write_desc(tx.desc, 0, RAM + 0x10000, 8, 1, 0)  # NEXT -> itself
    tx.make_available(0)
    b.w(M.R_QUEUE_NOTIFY, 0)
    assert b.r(M.R_STATUS) & M.STATUS_NEEDS_RESET
    assert "loops" in b.dev.last_error


def test_bad_register_accesses_are_the_guests_error() -> None:
    b = Board()
    with pytest.raises(GuestError):
        b.dev.mmio_read(M.R_STATUS, 1)
    with pytest.raises(GuestError):
        b.dev.mmio_write(M.R_STATUS + 2, 4, 1)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 0x1FF), st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**32 - 1)),
        max_size=60,
    )
)
def test_fuzzed_register_traffic_raises_only_guest_errors(ops: list[tuple[int, int, int]]) -> None:
    b = Board()
    for off, size, value in ops:
        try:
            if value & 1:
                b.dev.mmio_read(off, size)
            else:
                b.dev.mmio_write(off, size, value & ((1 << (8 * size)) - 1))
        except GuestError:
            b.dev.guest_error(GuestError("fuzz"))


async def test_a_virtio_slot_in_a_real_vm_is_in_its_device_tree() -> None:
    dev = M.VirtioMmio("echo", Echo())
    cfg = hv.VmConfig(kernel=hv.guest_path("hello"), cmdline="fdt=1", devices=(dev,))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
            info = await vm.wait()
    assert info.exit_code == 0
    assert (
        b"fdt: virtio,mmio virtio_mmio@10001000 reg=0x10001000+0x1000 irq=1"
        in vm.console.transcript
    )
