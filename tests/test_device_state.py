"""Every device of the hv-virt board through a snapshot: saved mid-work (a frame in the NIC's
backlog, a disk request in flight, UART input buffered, a PLIC interrupt claimed), encoded,
decoded and loaded on a fresh device of the same configuration, then driven the same way as
the original: the two must answer alike. The calls a device leaves pending on a virtual-time
timeline go through save_call/load_call. Hostile states (mutated, garbage, out of range)
raise SnapshotError naming the value, never anything else."""

from __future__ import annotations

import contextlib
import copy
import functools
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_virtio_blk import GatedDisk

from blockdev import MemoryDisk
from hv._errors import SnapshotError
from hv._timeline import Ticket
from hv.devices._finisher import Finisher
from hv.devices._plic import CLAIM_OFFSET, CONTEXT_BASE, CONTEXT_STRIDE, ENABLE_BASE, Plic
from hv.devices._uart import FCR, IER, IIR, LSR, RBR, Uart16550
from hv.hw._device import DeviceContext
from hv.hw._memory import GuestMemory
from hv.hw._state import Fields, State, decode, encode
from hv.virtio import _blk as B
from hv.virtio import _mmio as M
from hv.virtio import _net as N
from hv.virtio import _rng as R
from hv.virtio import _vsock as V
from hv.virtio.testing import DriverQueue, Used, activate
from netfabric.frame import Frame
from netfabric.offload import GSO_TCPV4, Offload

RAM, SIZE = 0x8000_0000, 4 << 20
MAC = bytes.fromhex("525400000001")
FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def through_file(state: State, where: str) -> Fields:
    """What a snapshot file gives back: encoded, decoded, read with checks."""
    return Fields(decode(encode(state), where), where)


# -- the platform devices --------------------------------------------------------------------


class PlicRig:
    def __init__(self) -> None:
        self.changes: list[tuple[int, bool]] = []
        self.plic = Plic(lambda ctx, level: self.changes.append((ctx, level)), harts=2)
        self.lines = {src: self.plic.irq_line(src) for src in (1, 5, 10, 40, 95)}

    def w(self, off: int, value: int) -> None:
        self.plic.mmio_write(off, 4, value)

    def r(self, off: int) -> int:
        return self.plic.mmio_read(off, 4)

    def claim(self, ctx: int) -> int:
        return self.r(CONTEXT_BASE + CONTEXT_STRIDE * ctx + CLAIM_OFFSET)

    def complete(self, ctx: int, src: int) -> None:
        self.w(CONTEXT_BASE + CONTEXT_STRIDE * ctx + CLAIM_OFFSET, src)

    def output(self) -> list[bool]:
        return [self.plic.output(c) for c in range(self.plic.contexts)]


def plic_mid_work() -> PlicRig:
    p = PlicRig()
    for src, prio in ((1, 3), (5, 5), (10, 1), (40, 7), (95, 2)):
        p.w(4 * src, prio)
    for ctx in (1, 3):
        p.w(ENABLE_BASE + 0x80 * ctx, 0xFFFF_FFFF)
        p.w(ENABLE_BASE + 0x80 * ctx + 4, 0xFFFF_FFFF)
        p.w(ENABLE_BASE + 0x80 * ctx + 8, 0xFFFF_FFFF)
    p.w(CONTEXT_BASE + CONTEXT_STRIDE * 3, 2)  # hart 1's S-mode threshold
    for src in (1, 5, 40, 95):
        p.lines[src](True)
    assert p.claim(1) == 40  # claimed, in service, not completed
    return p


def test_plic_round_trip_with_a_claimed_interrupt() -> None:
    a = plic_mid_work()
    b = PlicRig()
    b.plic.load_state(through_file(a.plic.save_state(), "plic"))
    assert b.output() == a.output() and b.changes == [(1, True), (3, True)]
    # the same driving from here: identical answers
    script: list[Callable[[PlicRig], object]] = [
        lambda p: p.claim(3),
        lambda p: p.claim(1),
        lambda p: p.complete(1, 40),
        lambda p: p.claim(1),
        lambda p: p.lines[40](False),
        lambda p: p.lines[10](True),
        lambda p: [p.r(0x1000 + 4 * i) for i in range(3)],
        lambda p: p.claim(1),
        lambda p: p.claim(3),
        lambda p: p.output(),
    ]
    for step in script:
        assert step(a) == step(b)
    assert a.changes[-4:] == b.changes[-4:]


def test_uart_round_trip_with_input_buffered() -> None:
    def make() -> tuple[Uart16550, list[bool]]:
        levels: list[bool] = []
        return Uart16550(levels.append), levels

    a, la = make()
    a.mmio_write(FCR, 1, 0x81)  # FIFO on, trigger 8
    a.mmio_write(IER, 1, 0x03)
    assert a.feed(b"hello world, more than sixteen") == 16
    a.mmio_write(0, 1, ord("x"))  # transmitted, not yet taken by the host
    assert a.mmio_read(RBR, 1) == ord("h")
    b, lb = make()
    b.load_state(through_file(a.save_state(), "uart0"))
    assert lb == [True] and la[-1] is True
    assert b.take_output() == a.take_output() == b"x"
    for _ in range(20):
        for reg in (IIR, LSR, RBR):
            assert a.mmio_read(reg, 1) == b.mmio_read(reg, 1)
    assert a.feed(b"again") == b.feed(b"again") == 5
    assert [a.mmio_read(RBR, 1) for _ in range(6)] == [b.mmio_read(RBR, 1) for _ in range(6)]
    assert la[-1] == lb[-1]


def test_uart_saved_while_the_host_held_it_busy_comes_back_ready_with_thre() -> None:
    a = Uart16550(lambda level: None)
    a.mmio_write(IER, 1, 0x02)
    assert a.mmio_read(IIR, 1) == 0x02  # THRE reported (and cleared)
    a.set_tx_ready(False)
    b = Uart16550(lambda level: None)
    b.load_state(through_file(a.save_state(), "uart0"))
    assert b.mmio_read(LSR, 1) & 0x60 == 0x60 and b.mmio_read(IIR, 1) == 0x02


def test_finisher_has_no_state() -> None:
    f = Finisher(lambda kind, code: None)
    assert f.save_state() == {}
    f.load_state(through_file({}, "test"))


# -- virtio: a driver in plain memory, copied for the restored device ------------------------


class FakeTime:
    """A virtual-time VM's DeviceTime, recording what the devices leave pending."""

    def __init__(self) -> None:
        self.now = 1_000_000
        self.sent: list[Callable[[], None]] = []
        self.received: list[Callable[[], None]] = []
        self.inputs: list[Callable[[], None]] = []
        self.tickets: list[Ticket] = []

    def now_ps(self) -> int:
        return self.now

    def send(self, fn: Callable[[], None]) -> None:
        self.sent.append(fn)

    def receive(self, fn: Callable[[], None], *, bounded: bool = True) -> None:
        self.received.append(fn)

    def host_input(self, fn: Callable[[], None]) -> None:
        self.inputs.append(fn)

    def expect(self, due_ps: int) -> Ticket:
        t = Ticket(due_ps)
        self.tickets.append(t)
        return t


class Rig:
    """A virtio device behind its transport, its driver's queues in plain memory."""

    def __init__(
        self,
        backend: M.VirtioBackend,
        sizes: Sequence[int],
        features: int = 0,
        spawn: Callable[[Any], None] | None = None,
        time: FakeTime | None = None,
        mem: GuestMemory | None = None,
        queues: Sequence[DriverQueue] | None = None,
    ) -> None:
        self.mem = mem or GuestMemory(RAM, SIZE)
        self.backend = backend
        self.dev = M.VirtioMmio("dev0", backend)
        self.irq: list[bool] = []
        self.spawned: list[Any] = []
        self.time = time
        self.dev.attach(
            DeviceContext(
                "dev0",
                self.mem,
                self.irq.append,
                lambda: None,
                spawn or self.spawned.append,
                time=time,
            )
        )
        if queues is None:
            queues = [
                DriverQueue(self.mem, n, RAM + 0x1000 + 0x4000 * i, RAM + 0x100000 * (i + 1))
                for i, n in enumerate(sizes)
            ]
            assert activate(self.dev, M.F_VERSION_1 | features, queues) == 0x0F
        self.queues = list(queues)

    def notify(self, q: int) -> None:
        self.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, q)

    def twin(self, backend: M.VirtioBackend, **kw: Any) -> Rig:
        """A fresh device of the same configuration on a copy of this RAM and driver, with
        this device's state loaded through the file format."""
        mem = GuestMemory(RAM, SIZE)
        mem.write(RAM, self.mem.read(RAM, SIZE))
        queues = []
        for q in self.queues:
            q2 = copy.copy(q)
            q2.mem, q2._free, q2._chains = mem, list(q._free), copy.deepcopy(q._chains)
            queues.append(q2)
        other = Rig(backend, (), mem=mem, queues=queues, **kw)
        other.dev.load_state(through_file(self.dev.save_state(), "dev0"))
        return other

    def registers(self) -> list[int]:
        regs = (M.R_STATUS, M.R_INTERRUPT_STATUS, M.R_CONFIG_GENERATION, M.R_QUEUE_READY)
        return [self.dev.mmio_read(r, 4) for r in regs]


def used(rig: Rig) -> list[list[Used]]:
    return [q.take_used() for q in rig.queues]


def eth(n: int, fill: int = 0) -> bytes:
    return MAC + bytes.fromhex("525400000002") + b"\x08\x00" + bytes([fill]) * n


# -- virtio-net ----------------------------------------------------------------------------


def net_mid_work(time: FakeTime | None = None) -> tuple[Rig, list[bytes]]:
    out: list[bytes] = []
    net = N.VirtioNet(MAC)
    net.connect(lambda f: out.append(f.data))
    feats = N.F_MRG_RXBUF | N.F_GUEST_CSUM | M.F_RING_EVENT_IDX
    rig = Rig(net, (16, 16), feats, time=time)
    for i in range(3):  # no rx buffers yet: the frames wait in the backlog
        net._arrive(Frame(eth(60 + i, i)))
    net._arrive(Frame(eth(100, 9), Offload(True, 34, 16)))
    assert len(net.backlog) == 4
    return rig, out


def drive_net(rig: Rig, out: list[bytes]) -> tuple[Any, ...]:
    rx, tx = rig.queues
    for _ in range(3):
        rx.add((), [2048])
    rig.notify(N.RX)
    tx.add([bytes(N.HDR_LEN), eth(70, 7)])
    rig.notify(N.TX)
    first = used(rig)
    rx.add((), [2048])
    rx.add((), [2048])
    rig.notify(N.RX)
    assert isinstance(rig.backend, N.VirtioNet)
    return first, used(rig), list(out), rig.registers(), list(rig.backend.backlog and [1])


def test_net_round_trip_with_frames_in_the_backlog() -> None:
    a, out_a = net_mid_work()
    out_b: list[bytes] = []
    net_b = N.VirtioNet(MAC)
    net_b.connect(lambda f: out_b.append(f.data))
    b = a.twin(net_b)
    assert [f.data for f in net_b.backlog] == [f.data for f in a.backend.backlog]  # type: ignore[attr-defined]
    ra, rb = drive_net(a, out_a), drive_net(b, out_b)
    assert ra == rb and len(ra[0][0]) == 3 and len(ra[1][0]) == 1 and out_b == [eth(70, 7)]


def test_net_pending_timeline_calls_are_saved_as_data() -> None:
    ta, tb = FakeTime(), FakeTime()
    a, out_a = net_mid_work(ta)
    net_a = a.backend
    assert isinstance(net_a, N.VirtioNet)
    net_a.deliver(Frame(eth(80, 3), Offload(True, 34, 16, GSO_TCPV4, 1000, 54)))
    net_a.set_link(False)
    a.queues[1].add([bytes(N.HDR_LEN), eth(50, 5)])
    a.notify(N.TX)
    pending = [*ta.sent, *ta.received]
    assert len(pending) == 3
    out_b: list[bytes] = []
    net_b = N.VirtioNet(MAC)
    net_b.connect(lambda f: out_b.append(f.data))
    b = a.twin(net_b, time=tb)
    calls = []
    for fn in pending:
        saved = a.dev.save_call(fn)
        assert saved is not None
        calls.append(b.dev.load_call(through_file(saved, "dev0.call")))
    assert a.dev.save_call(lambda: None) is None
    for fn in pending:
        fn()
    for fn in calls:
        fn()
    assert out_a[-1:] == out_b == [eth(50, 5)]
    assert net_b.link_up is net_a.link_up is False
    assert [(f.data, f.offload) for f in net_b.backlog] == [
        (f.data, f.offload) for f in net_a.backlog
    ]
    assert a.registers() == b.registers()


# -- virtio-blk ----------------------------------------------------------------------------


DISK = 1 << 20


def blk_submit(rig: Rig, rtype: int, sector: int, out: bytes = b"", into: int = 0) -> None:
    hdr = struct.pack("<IIQ", rtype, 0, sector)
    rig.queues[0].add([hdr, *([out] if out else [])], [*([into] if into else []), 1])
    rig.notify(0)


def blk_feats() -> int:
    return B.F_FLUSH | B.F_DISCARD | B.F_WRITE_ZEROES | M.F_RING_EVENT_IDX


async def test_blk_round_trip_with_requests_in_flight(nursery: trio.Nursery) -> None:
    disk_a = GatedDisk(DISK)
    await MemoryDisk.write(disk_a, 0, bytes(range(256)) * 64)
    a = Rig(B.VirtioBlk(disk_a), (16,), blk_feats(), spawn=nursery.start_soon)
    blk_submit(a, B.T_IN, 0, into=4096)
    blk_submit(a, B.T_OUT, 16, out=b"\xab" * 1024)
    await trio.testing.wait_all_tasks_blocked()
    assert a.backend.in_flight == 2  # type: ignore[attr-defined]
    # the restored disk is the disk as it was (the snapshot's frozen disk)
    disk_b = GatedDisk(DISK)
    await MemoryDisk.write(disk_b, 0, await MemoryDisk.read(disk_a, 0, DISK))
    b = a.twin(B.VirtioBlk(disk_b), spawn=nursery.start_soon)
    assert b.backend.in_flight == 2  # type: ignore[attr-defined]
    for rig, disk in ((a, disk_a), (b, disk_b)):
        disk.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        blk_submit(rig, B.T_IN, 16, into=1024)
        await trio.testing.wait_all_tasks_blocked()
    ua, ub = used(a), used(b)
    for u in (ua, ub):  # real time: the two in flight complete in the host's (trio's) order
        u[0][:2] = sorted(u[0][:2], key=lambda x: x.head)
    assert ua == ub and len(ua[0]) == 3 and ua[0][2].data[:1024] == b"\xab" * 1024
    [read] = [u for u in ua[0] if u.written == 4097]
    assert read.data[:4096] == bytes(range(256)) * 16
    assert a.registers() == b.registers() and a.irq[-1] == b.irq[-1]
    assert await MemoryDisk.read(disk_a, 0, DISK) == await MemoryDisk.read(disk_b, 0, DISK)


async def test_blk_completion_waiting_for_its_time_is_saved_and_rebuilt(
    nursery: trio.Nursery,
) -> None:
    ta, tb = FakeTime(), FakeTime()
    disk = MemoryDisk(DISK)
    await disk.write(512, b"\x5a" * 512)
    a = Rig(B.VirtioBlk(disk), (16,), blk_feats(), spawn=nursery.start_soon, time=ta)
    blk_submit(a, B.T_IN, 1, into=512)
    blk_submit(a, B.T_FLUSH, 0)
    await trio.testing.wait_all_tasks_blocked()
    assert [t.done for t in ta.tickets] == [True, True] and not used(a)[0]
    b = a.twin(B.VirtioBlk(disk), spawn=nursery.start_soon, time=tb)
    rebuilt = []
    for t in ta.tickets:
        assert t.fn is not None
        saved = a.dev.save_call(t.fn)
        assert saved is not None and saved["call"] == "complete"
        rebuilt.append(b.dev.load_call(through_file(saved, "dev0.call")))
    for t, fn in zip(ta.tickets, rebuilt, strict=True):
        assert t.fn is not None
        t.fn()
        fn()
    ua, ub = used(a), used(b)
    assert ua == ub and ua[0][0].data[:512] == b"\x5a" * 512 and len(ua[0]) == 2
    assert a.registers() == b.registers()


# -- virtio-rng ----------------------------------------------------------------------------


def test_rng_continues_the_seeded_stream() -> None:
    a = Rig(R.VirtioRng(seed="lab/vm/virtio-rng"), (8,))
    for _ in range(3):
        a.queues[0].add((), [100])
    a.notify(0)
    assert len(used(a)[0]) == 3

    def draw(rig: Rig) -> bytes:
        rig.queues[0].add((), [64])
        rig.notify(0)
        return used(rig)[0][0].data

    fresh = Rig(R.VirtioRng(seed="lab/vm/virtio-rng"), (8,))
    b = a.twin(R.VirtioRng(seed="lab/vm/virtio-rng"))
    got_b = draw(b)
    assert got_b == draw(a) and got_b != draw(fresh)
    unseeded = R.VirtioRng()
    with pytest.raises(SnapshotError, match=r"dev0\.backend\.seeded"):
        a.twin(unseeded)


# -- virtio-vsock --------------------------------------------------------------------------


def vsock_hdr(op: int, src_port: int, dst_port: int, length: int = 0) -> bytes:
    return V.HDR.pack(3, V.HOST_CID, src_port, dst_port, length, V.TYPE_STREAM, op, 0, 1 << 16, 0)


async def test_vsock_connections_are_reset_on_restore_and_listeners_stay() -> None:
    vs = V.VirtioVsock(3)
    a = Rig(vs, (16, 16, 4), spawn=lambda w: None)
    listener = vs.listen(5000)
    a.queues[0].add((), [4096])  # one rx buffer: the RESPONSE takes it
    a.notify(V.RX)
    a.queues[1].add([vsock_hdr(V.OP_REQUEST, 1234, 5000)])
    a.notify(V.TX)
    a.queues[1].add([vsock_hdr(V.OP_RW, 77, 9, 0)])  # a stray: its RST waits for a buffer
    a.notify(V.TX)
    [resp] = used(a)[0]
    assert V.HDR.unpack(resp.data[: V.HDR_LEN])[6] == V.OP_RESPONSE
    state = a.dev.save_state()
    assert state["backend"]["resets"] == [[5000, 1234]] and len(state["backend"]["replies"]) == 1
    tb = FakeTime()
    b = a.twin(V.VirtioVsock(3), time=tb)
    assert len(tb.inputs) == 1  # the restored device asks to run when the guest does
    for _ in range(2):
        b.queues[0].add((), [4096])
    tb.inputs.pop()()
    got = [V.HDR.unpack(u.data[: V.HDR_LEN]) for u in used(b)[0]]
    assert [(p[2], p[3], p[6]) for p in got] == [(9, 77, V.OP_RST), (5000, 1234, V.OP_RST)]
    assert b.registers() == a.registers()
    # the original goes on: its listener still has the connection
    stream = await listener.accept()
    assert stream.port == 1234
    # a pending kick is a saved call
    assert b.dev.save_call(b.backend._kicked) == {"call": "kick"}  # type: ignore[attr-defined]


# -- hostile states --------------------------------------------------------------------------


def _paths(v: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*at, k))
    elif isinstance(v, list):
        for i, x in enumerate(v[:8]):
            out += _paths(x, (*at, i))
    return out


def _mutate(state: State, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    d = decode(encode(state), "x")
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return d


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.sampled_from([0, 1, 2, 3, 7, 8, 255, 256, 0xFFFF, 0x10000, 1 << 32, 1 << 64, -1])
    | st.text(max_size=8)
    | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def _only_snapshot_errors(load: Callable[[Fields], object], state: Any, data: Any) -> None:
    paths = _paths(state)
    path = data.draw(st.sampled_from(paths))
    mutated = _mutate(state, path, data.draw(values)) if path else data.draw(values)
    with contextlib.suppress(SnapshotError):  # anything else fails the test
        load(Fields(mutated, "dev"))


@FUZZ
@given(st.data())
def test_fuzz_plic_and_uart_states(data: Any) -> None:
    p = plic_mid_work()
    _only_snapshot_errors(PlicRig().plic.load_state, p.plic.save_state(), data)
    u = Uart16550(lambda level: None)
    u.feed(b"abc")
    _only_snapshot_errors(Uart16550(lambda level: None).load_state, u.save_state(), data)


def _blk_in_flight() -> Rig:
    a = Rig(B.VirtioBlk(MemoryDisk(DISK)), (16,), blk_feats())
    blk_submit(a, B.T_OUT, 3, out=b"\x01" * 512)
    blk_submit(a, B.T_DISCARD, 0, out=struct.pack("<QII", 8, 8, 0))
    assert a.backend.in_flight == 2  # type: ignore[attr-defined]
    return a


def _virtio_cases() -> list[tuple[Rig, Callable[[], M.VirtioBackend]]]:
    rng = Rig(R.VirtioRng(seed="s"), (8,))
    vs = Rig(V.VirtioVsock(3), (8, 8, 4), spawn=lambda w: None)
    vs.queues[1].add([vsock_hdr(V.OP_RW, 77, 9, 0)])
    vs.notify(V.TX)
    return [
        (net_mid_work()[0], lambda: N.VirtioNet(MAC)),
        (_blk_in_flight(), lambda: B.VirtioBlk(MemoryDisk(DISK))),
        (rng, lambda: R.VirtioRng(seed="s")),
        (vs, lambda: V.VirtioVsock(3)),
    ]


@FUZZ
@given(st.data())
def test_fuzz_virtio_states(data: Any) -> None:
    for rig, make in _virtio_cases():
        fresh = Rig(make(), (), mem=GuestMemory(RAM, SIZE), queues=[], spawn=lambda w: None)
        _only_snapshot_errors(fresh.dev.load_state, rig.dev.save_state(), data)


@FUZZ
@given(st.data())
def test_fuzz_saved_calls(data: Any) -> None:
    t = FakeTime()
    a, _ = net_mid_work(t)
    a.backend.deliver(Frame(eth(60)))  # type: ignore[attr-defined]
    net_call = a.dev.save_call(t.received[0])
    blk = _blk_in_flight()
    work = next(iter(blk.backend._works.values()))[0]  # type: ignore[attr-defined]
    blk_call = blk.dev.save_call(functools.partial(blk.backend._complete, work, 0, b""))  # type: ignore[attr-defined]
    for rig, saved in ((a, net_call), (blk, blk_call)):
        assert saved is not None
        _only_snapshot_errors(rig.dev.load_call, saved, data)


def _fail(load: Callable[[Fields], object], state: State, match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        load(through_file(state, "dev0"))


def test_driver_ok_with_a_queue_not_ready_round_trips() -> None:
    """The guest's mistake (DRIVER_OK with one of two queues ready: NEEDS_RESET) is a state
    too, restored as it was; the driver's reset brings the device back."""
    a = Rig(N.VirtioNet(MAC), (), queues=[])
    rx = DriverQueue(a.mem, 8, RAM + 0x1000, RAM + 0x10000)
    tx = DriverQueue(a.mem, 8, RAM + 0x2000, RAM + 0x20000)
    assert activate(a.dev, M.F_VERSION_1, [rx]) & M.STATUS_NEEDS_RESET  # tx never ready
    assert len(a.dev.queues) == 1
    b = a.twin(N.VirtioNet(MAC))
    assert b.registers() == a.registers() and not b.dev.running
    assert activate(b.dev, M.F_VERSION_1, [rx, tx]) == 0x0F


def test_out_of_range_sizes_and_indices_are_refused_naming_the_field() -> None:
    a, _ = net_mid_work()
    good = a.dev.save_state()

    def fresh() -> Rig:
        return Rig(N.VirtioNet(MAC), (), queues=[], spawn=lambda w: None)

    def edit(fn: Callable[[State], None]) -> State:
        s = decode(encode(good), "x")
        fn(s)
        return s

    cases: list[tuple[Callable[[State], None], str]] = [
        (lambda s: s["queues"][0].update(last_avail=70000), r"dev0\.queues\[0\]\.last_avail"),
        (lambda s: s["queues_cfg"][1].update(num=3), r"dev0\.queues_cfg\[1\]: queue size 3"),
        (lambda s: s["queues_cfg"][0].update(desc=0x1000), r"queues_cfg\[0\].*outside guest RAM"),
        (lambda s: s["queues_cfg"][0].update(num=1 << 33), r"queues_cfg\[0\]\.num"),
        (lambda s: s.update(queues=s["queues"][:1]), r"dev0\.queues: 1 of 2"),
        (lambda s: s.update(interrupt_status=4), r"dev0\.interrupt_status"),
        (lambda s: s.update(driver_features=1 << 63), r"dev0\.driver_features"),
        (
            lambda s: s["backend"].update(backlog=[{"data": b"x" * 70000}] * 2),
            r"dev0\.backend\.backlog\[0\]\.data: 70000 bytes",
        ),
        (
            lambda s: s["backend"]["backlog"][3]["offload"].update(gso_type=4),
            r"backlog\[3\]\.offload\.gso_type",
        ),
    ]
    for change, match in cases:
        _fail(fresh().dev.load_state, edit(change), match)
    uart = Uart16550(lambda level: None)
    s = uart.save_state()
    _fail(uart.load_state, {**s, "rx": b"x" * 2}, r"dev0\.rx: 2 bytes is more than 1")
    _fail(uart.load_state, {**s, "fifo_enabled": True, "rx": b"x" * 17}, r"dev0\.rx")
    _fail(uart.load_state, {**s, "rx_trigger": 5}, r"dev0\.rx_trigger")
    plic = plic_mid_work().plic
    ps = plic.save_state()
    _fail(plic.load_state, {**ps, "priority": [0] * 95 + [8]}, r"dev0\.priority\[95\]")
    _fail(plic.load_state, {**ps, "contexts": 2}, r"dev0\.contexts: 2, this PLIC has 4")
    _fail(plic.load_state, {**ps, "asserted": 1 << 96}, r"dev0\.asserted")
    blk = _blk_in_flight()
    bs = blk.dev.save_state()
    work = bs["backend"]["in_flight"][0]
    fresh_blk = Rig(B.VirtioBlk(MemoryDisk(DISK)), (), queues=[], spawn=lambda w: None)
    for key, value, match in (
        ("head", 16, r"in_flight\[0\]\.head: 16 is out of range 0\.\.15"),
        ("sector", DISK // 512, r"in_flight\[0\]\.sector"),
        ("status_addr", 0x1000, r"in_flight\[0\]\.status_addr"),
        ("data", [[RAM + SIZE - 256, 512]], r"in_flight\[0\]\.data\[0\]"),
        ("payload", b"x", r"in_flight\[0\]\.payload"),
    ):
        bad = decode(encode(bs), "x")
        bad["backend"]["in_flight"][0] = {**work, key: value}
        _fail(fresh_blk.dev.load_state, bad, match)
    r = random.Random(1)
    rng = Rig(R.VirtioRng(seed="s"), (8,))
    rs = rng.dev.save_state()
    rs["backend"]["generator"][-1] = 625 + r.randrange(3)
    _fail(Rig(R.VirtioRng(seed="s"), (), queues=[]).dev.load_state, rs, r"generator")


# -- Linux's own drivers -------------------------------------------------------------------


async def test_linux_devices_state_loads_on_a_fresh_machine(linux_image: Any) -> None:
    """A booted Linux guest (virtio-blk, -vsock, -rng in use by its drivers; virtual time):
    every device's state, saved between slices with the guest paused, passes the checks
    and loads on the devices of a fresh machine of the same configuration, which then
    read the same registers."""
    import re

    import hv

    config = hv.VmConfig(
        kernel=linux_image.kernel,
        initrd=linux_image.initrd,
        cmdline=linux_image.cmdline,
        name="linux",
        clock="virtual",
        seed=5,
        disks=(hv.Disk(MemoryDisk(1 << 20)),),
    )
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, config)
        with trio.fail_after(60):
            await vm.console.wait_for(re.compile(rb"\n[^\n]*# $"))
            await vm.console.send_all("dd if=/dev/hwrng of=/dev/null bs=64 count=2\n")
            await vm.console.wait_for(re.compile(rb"\n[^\n]*# $"))
            vm.pause()
            while vm.state is not hv.VmState.PAUSED:
                await trio.sleep(0.01)
        saved = [(d, through_file(d.save_state(), d.name)) for d in vm.machine.devices]
        regs = {d.name: _regs(d) for d in vm.machine.devices if isinstance(d, M.VirtioMmio)}
        plic = vm.machine.plic.save_state()
        vm.stop()
    assert len(regs) == 3 and all(r[0] == 0x0F for r in regs.values())
    fresh = hv.Vm(config).machine
    fresh.start(lambda name, work: None)
    for (old, st_), new in zip(saved, fresh.devices, strict=True):
        assert new.name == old.name
        new.load_state(st_)
        if isinstance(new, M.VirtioMmio):
            assert _regs(new) == regs[new.name]
    assert fresh.plic.save_state() == plic


def _regs(dev: M.VirtioMmio) -> list[int]:
    return [dev.mmio_read(r, 4) for r in (M.R_STATUS, M.R_INTERRUPT_STATUS, M.R_CONFIG_GENERATION)]
