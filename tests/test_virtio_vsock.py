"""virtio-vsock and virtio-rng: the devices against a driver in plain memory (handshake, data
both ways, credit, shutdown, RST for strays and overruns, reset, the event queue, bounds),
arbitrary chains and headers fuzzed; then Linux's own drivers on them in a VM
(test_linux_vsock_rng)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hv.hw._device import DeviceContext
from hv.hw._memory import GuestMemory
from hv.virtio import _mmio as M
from hv.virtio import _rng as R
from hv.virtio import _vsock as V
from hv.virtio._queue import DESC_F_NEXT, DESC_F_WRITE
from hv.virtio.testing import DriverQueue, activate

RAM, SIZE = 0x8000_0000, 8 << 20
CID = 3
FEATS = M.F_VERSION_1


def hdr(
    op: int,
    src_port: int = 1000,
    dst_port: int = 5000,
    length: int = 0,
    flags: int = 0,
    buf_alloc: int = 1 << 18,
    fwd_cnt: int = 0,
    src_cid: int = CID,
    dst_cid: int = V.HOST_CID,
    ptype: int = V.TYPE_STREAM,
) -> bytes:
    return V.HDR.pack(
        src_cid, dst_cid, src_port, dst_port, length, ptype, op, flags, buf_alloc, fwd_cnt
    )


class Pkt:
    def __init__(self, raw: bytes) -> None:
        f = V.HDR.unpack(raw[: V.HDR_LEN])
        (self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.len, self.type,
         self.op, self.flags, self.buf_alloc, self.fwd_cnt) = f  # fmt: skip
        self.data = raw[V.HDR_LEN :]
        assert len(self.data) == self.len

    def __repr__(self) -> str:
        return f"Pkt(op={self.op}, {self.src_port}->{self.dst_port}, len={self.len})"


class Vsock:
    """A VirtioVsock behind its transport on plain memory, driven as a guest driver would."""

    def __init__(self, qsize: int = 64, rx_buffers: int = 16, rx_size: int = 4096 + 44) -> None:
        self.mem = GuestMemory(RAM, SIZE)
        self.vs = V.VirtioVsock(CID)
        self.dev = M.VirtioMmio("vsock", self.vs)
        self.irq: list[bool] = []
        self.dev.attach(DeviceContext("vsock", self.mem, self.irq.append, lambda: None, _nospawn))
        self.qsize = qsize
        self.rx_size = rx_size
        self.up(rx_buffers)

    def up(self, rx_buffers: int = 16) -> None:
        n = self.qsize
        self.rxq = DriverQueue(self.mem, n, RAM + 0x1000, RAM + 0x100000)
        self.txq = DriverQueue(self.mem, n, RAM + 0x4000, RAM + 0x300000)
        self.evq = DriverQueue(self.mem, n, RAM + 0x8000, RAM + 0x700000)
        assert activate(self.dev, FEATS, [self.rxq, self.txq, self.evq]) == 0x0F
        self.post_rx(rx_buffers)

    def post_rx(self, n: int, size: int | None = None) -> None:
        for _ in range(n):
            self.rxq.add((), [size or self.rx_size])
        self.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, V.RX)

    def send(self, *packets: bytes, split: bool = False) -> None:
        """The guest transmits: each packet one chain (header and payload apart if split)."""
        for p in packets:
            parts = [p[: V.HDR_LEN], p[V.HDR_LEN :]] if split and len(p) > V.HDR_LEN else [p]
            self.txq.add(parts, ())
        self.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, V.TX)
        assert len(self.txq.take_used()) == len(packets)

    def received(self, repost: bool = True) -> list[Pkt]:
        """Packets the device put in rx since the last call (their buffers posted again)."""
        used = self.rxq.take_used()
        out = [Pkt(u.data) for u in used]
        if repost and used:
            self.post_rx(len(used))
        return out


def _nospawn(work: Any) -> None:
    raise AssertionError("virtio-vsock starts no tasks")


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def start_connect(v: Vsock, nursery: trio.Nursery, port: int) -> list[object]:
    """``connect(port)`` in a task: the list gets its stream or its VsockError."""
    out: list[object] = []

    async def run() -> None:
        try:
            out.append(await v.vs.connect(port))
        except V.VsockError as e:
            out.append(e)

    nursery.start_soon(run)
    return out


async def open_out(v: Vsock, nursery: trio.Nursery, port: int = 5000) -> tuple[V.VsockStream, Pkt]:
    """A host -> guest connection the guest accepts: (the stream, the REQUEST it saw)."""
    got = start_connect(v, nursery, port)
    await settle()
    [req] = v.received()
    assert (req.op, req.src_cid, req.dst_cid, req.dst_port) == (V.OP_REQUEST, 2, CID, port)
    assert req.buf_alloc == V.BUF_ALLOC and req.fwd_cnt == 0
    v.send(hdr(V.OP_RESPONSE, src_port=port, dst_port=req.src_port))
    await settle()
    assert isinstance(got[0], V.VsockStream)
    return got[0], req


# -- handshake and config ------------------------------------------------------------------------


async def test_config_space_and_features() -> None:
    v = Vsock()
    assert v.dev.mmio_read(M.R_DEVICE_ID, 4) == 19
    assert v.dev.device_features == V.F_STREAM | M.F_VERSION_1
    assert bytes(v.dev.mmio_read(M.CONFIG + i, 1) for i in range(8)) == struct.pack("<Q", CID)
    with pytest.raises(ValueError, match="reserved"):
        V.VirtioVsock(2)


async def test_connect_and_data_both_ways(nursery: trio.Nursery) -> None:
    v = Vsock()
    await v.vs.wait_ready()
    stream, req = await open_out(v, nursery)
    assert v.vs.counters["connections_out"] == 1
    hp = req.src_port
    assert V.EPHEMERAL_LO <= hp <= V.EPHEMERAL_HI
    # host -> guest
    await stream.send_all(b"hello guest")
    [p] = v.received()
    assert (p.op, p.data, p.src_port, p.dst_port) == (V.OP_RW, b"hello guest", hp, 5000)
    # guest -> host, header and payload in one descriptor or two
    v.send(hdr(V.OP_RW, 5000, hp, length=5) + b"hello")
    v.send(hdr(V.OP_RW, 5000, hp, length=6) + b" world", split=True)
    assert await stream.receive_some() == b"hello world"
    assert v.vs.counters["tx_bytes"] == 11 and v.vs.counters["rx_bytes"] == 11
    # a big send is cut to the guest's buffers (4096 bytes of payload each)
    big = bytes(range(256)) * 40
    await stream.send_all(big)
    got = v.received()
    assert [len(p.data) for p in got] == [4096, 4096, 2048]
    assert b"".join(p.data for p in got) == big


async def test_connect_refused_and_unavailable(nursery: trio.Nursery) -> None:
    v = Vsock()
    refused = start_connect(v, nursery, 7)
    await settle()
    [req] = v.received()
    v.send(hdr(V.OP_RST, 7, req.src_port))
    await settle()
    assert isinstance(refused[0], V.VsockRefused)
    assert v.vs.counters["refused_out"] == 1
    # no driver: unavailable at once
    v.dev.mmio_write(M.R_STATUS, 4, 0)
    with pytest.raises(V.VsockUnavailable, match="not up"):
        await v.vs.connect(7)


async def test_listen_accept_and_stray_rst(nursery: trio.Nursery) -> None:
    v = Vsock()
    listener = v.vs.listen(9000)
    v.send(hdr(V.OP_REQUEST, 1234, 9000))
    [resp] = v.received()
    assert (resp.op, resp.src_port, resp.dst_port, resp.dst_cid) == (V.OP_RESPONSE, 9000, 1234, 3)
    with trio.fail_after(5):
        stream = await listener.accept()
    v.send(hdr(V.OP_RW, 1234, 9000, length=3) + b"abc")
    assert await stream.receive_some() == b"abc"
    await stream.send_all(b"xyz")
    [p] = v.received()
    assert (p.op, p.data) == (V.OP_RW, b"xyz")
    # a port nobody listens on, and packets of no connection: RST, counted
    v.send(hdr(V.OP_REQUEST, 1235, 9001), hdr(V.OP_RW, 1, 2, length=1) + b"x")
    rst = v.received()
    assert [(p.op, p.src_port, p.dst_port) for p in rst] == [
        (V.OP_RST, 9001, 1235),
        (V.OP_RST, 2, 1),
    ]
    assert v.vs.counters["refused_in"] == 1 and v.vs.counters["unknown_connection"] == 1
    # an RST is never answered; another CID gets an RST from that CID; other types too
    v.send(hdr(V.OP_RST, 1, 2))
    assert v.received() == []
    v.send(hdr(V.OP_REQUEST, 1, 2, dst_cid=7), hdr(V.OP_REQUEST, 1, 9000, ptype=2))
    a, b = v.received()
    assert (a.op, a.src_cid, b.op) == (V.OP_RST, 7, V.OP_RST)
    assert v.vs.counters["unknown_cid"] == 1 and v.vs.counters["bad_type"] == 1
    with pytest.raises(V.VsockError, match="already"):
        v.vs.listen(9000)


async def test_credit_host_stops_at_guest_credit(nursery: trio.Nursery) -> None:
    v = Vsock()
    got = start_connect(v, nursery, 80)
    await settle()
    [req] = v.received()
    hp = req.src_port
    v.send(hdr(V.OP_RESPONSE, 80, hp, buf_alloc=1000))
    await settle()
    stream = got[0]
    assert isinstance(stream, V.VsockStream)
    await stream.send_all(b"a" * 2500)
    assert sum(p.len for p in v.received()) == 1000  # exactly the guest's credit
    assert v.received() == []
    v.send(hdr(V.OP_CREDIT_UPDATE, 80, hp, buf_alloc=1000, fwd_cnt=600))
    assert sum(p.len for p in v.received()) == 600
    v.send(hdr(V.OP_CREDIT_UPDATE, 80, hp, buf_alloc=2000, fwd_cnt=600))
    assert sum(p.len for p in v.received()) == 900  # all the rest
    # the guest asks: it gets our credit
    v.send(hdr(V.OP_CREDIT_REQUEST, 80, hp))
    [cu] = v.received()
    assert (cu.op, cu.buf_alloc, cu.fwd_cnt) == (V.OP_CREDIT_UPDATE, V.BUF_ALLOC, 0)


async def test_credit_update_when_host_reads_and_overrun(nursery: trio.Nursery) -> None:
    v = Vsock()
    stream, req = await open_out(v, nursery)
    hp = req.src_port
    chunk = b"z" * 65536
    for _ in range(3):  # 192 KiB: the guest thinks 64 KiB are left
        v.send(hdr(V.OP_RW, 5000, hp, length=len(chunk)) + chunk)
    assert v.received() == []
    n = 0
    while n < 3 * 65536:
        n += len(await stream.receive_some(1 << 20))
    [cu] = v.received()
    assert (cu.op, cu.fwd_cnt) == (V.OP_CREDIT_UPDATE, 3 * 65536)
    # past the credit: RST, counted, the stream broken
    for _ in range(6):  # 4 fill our buffer, the 5th overruns it, the 6th is a stray
        v.send(hdr(V.OP_RW, 5000, hp, length=len(chunk)) + chunk)
    assert [p.op for p in v.received()] == [V.OP_RST, V.OP_RST]  # the overrun, then a stray
    assert v.vs.counters["credit_overrun"] == 1
    with pytest.raises(trio.BrokenResourceError):
        while True:
            await stream.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"x")


async def test_shutdown_both_ways(nursery: trio.Nursery) -> None:
    v = Vsock()
    stream, req = await open_out(v, nursery)
    hp = req.src_port
    # the guest stops sending: EOF after its data
    v.send(hdr(V.OP_RW, 5000, hp, length=2) + b"ok", hdr(V.OP_SHUTDOWN, 5000, hp, flags=2))
    assert await stream.receive_some() == b"ok"
    assert await stream.receive_some() == b""
    # we still send; send_eof goes after the data
    await stream.send_all(b"last")
    await stream.send_eof()
    a, b = v.received()
    assert (a.op, a.data, b.op, b.flags) == (V.OP_RW, b"last", V.OP_SHUTDOWN, V.SHUTDOWN_SEND)
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"more")
    # the guest closes: we answer RST
    v.send(hdr(V.OP_SHUTDOWN, 5000, hp, flags=3))
    [r] = v.received()
    assert r.op == V.OP_RST
    assert v.vs.stats()["connections"] == 0
    # host close: SHUTDOWN(RCV|SEND), the guest's RST ends it
    s2, req2 = await open_out(v, nursery, 5001)
    await s2.aclose()
    [sd] = v.received()
    assert (sd.op, sd.flags) == (V.OP_SHUTDOWN, 3)
    assert v.vs.stats()["connections"] == 1
    v.send(hdr(V.OP_RST, 5001, req2.src_port))
    assert v.vs.stats()["connections"] == 0 and v.received() == []


async def test_guest_rst_breaks_pending_calls(nursery: trio.Nursery) -> None:
    v = Vsock()
    stream, req = await open_out(v, nursery)
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await stream.receive_some()
        except trio.BrokenResourceError as e:
            errors.append(e)

    nursery.start_soon(reader)
    await settle()
    v.send(hdr(V.OP_RST, 5000, req.src_port))
    await settle()
    assert len(errors) == 1 and v.vs.counters["resets_in"] == 1


async def test_reset_breaks_streams_and_ready_again(nursery: trio.Nursery) -> None:
    v = Vsock()
    stream, _ = await open_out(v, nursery)
    pending = start_connect(v, nursery, 6000)
    await settle()
    ready = trio.Event()

    async def waiter() -> None:
        await v.vs.wait_ready()
        ready.set()

    v.dev.mmio_write(M.R_STATUS, 4, 0)  # the driver resets the device
    nursery.start_soon(waiter)
    await settle()
    assert isinstance(pending[0], V.VsockUnavailable)
    with pytest.raises(trio.BrokenResourceError, match="reset"):
        await stream.receive_some()
    assert not ready.is_set()
    v.up()
    await settle()
    assert ready.is_set()
    s2, _ = await open_out(v, nursery)  # works again
    await s2.send_all(b"again")
    assert [p.data for p in v.received()] == [b"again"]


async def test_transport_reset_event() -> None:
    v = Vsock()
    v.vs.transport_reset()  # no event buffer yet: it waits for one
    assert v.vs.counters["events"] == 0
    v.evq.add((), [4])
    v.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, V.EVENT)
    [u] = v.evq.take_used()
    assert u.data == struct.pack("<I", V.EVENT_TRANSPORT_RESET)
    assert v.vs.counters["events"] == 1


async def test_bounds_without_rx_buffers() -> None:
    """A guest that posts no rx buffers and sends strays: at most MAX_REPLIES wait."""
    v = Vsock(rx_buffers=0, qsize=256)
    for i in range(V.MAX_REPLIES + 50):
        v.send(hdr(V.OP_RW, i, 1, length=0))
    assert len(v.vs._replies) == V.MAX_REPLIES
    assert v.vs.counters["replies_dropped"] == 50
    v.post_rx(10)
    assert len(v.received(repost=False)) == 10


async def test_connection_limit(nursery: trio.Nursery) -> None:
    v = Vsock(qsize=256)
    v.vs.listen(1)
    for i in range(V.MAX_CONNECTIONS + 1):
        v.send(hdr(V.OP_REQUEST, 10_000 + i, 1))
        v.received()
    assert v.vs.stats()["connections"] <= V.MAX_CONNECTIONS
    assert v.vs.counters["refused_in"] >= 1


# -- virtio-rng ------------------------------------------------------------------------------


def _rng(source: R.Source | None = None) -> tuple[M.VirtioMmio, DriverQueue, GuestMemory]:
    mem = GuestMemory(RAM, 1 << 20)
    dev = M.VirtioMmio("rng", R.VirtioRng(source))
    dev.attach(DeviceContext("rng", mem, lambda level: None, lambda: None, _nospawn))
    q = DriverQueue(mem, 16, RAM + 0x1000, RAM + 0x10000)
    assert activate(dev, FEATS, [q]) == 0x0F
    return dev, q, mem


async def test_rng_fills_buffers_and_is_bounded() -> None:
    dev, q, _ = _rng()
    assert dev.mmio_read(M.R_DEVICE_ID, 4) == 4
    q.add((), [64])
    q.add((), [R.MAX_REQUEST + 100])
    q.add((), [0])
    dev.mmio_write(M.R_QUEUE_NOTIFY, 4, 0)
    a, b, c = q.take_used()
    assert a.written == 64 and len(set(a.data)) > 8
    assert b.written == R.MAX_REQUEST  # at most MAX_REQUEST per request
    assert c.written == 0
    assert dev.stats()["bytes"] == 64 + R.MAX_REQUEST


async def test_rng_seeded_is_deterministic() -> None:
    outs = []
    for seed in ("1/vm", "1/vm", "2/vm"):
        dev, q, _ = _rng(R.seeded_source(seed))
        q.add((), [32])
        dev.mmio_write(M.R_QUEUE_NOTIFY, 4, 0)
        outs.append(q.take_used()[0].data)
    assert outs[0] == outs[1] != outs[2]


# -- fuzz -------------------------------------------------------------------------------------

_ops = st.one_of(st.integers(0, 8), st.integers(0, 0xFFFF))
_header = st.builds(
    hdr,
    _ops,
    st.sampled_from([1000, 1001, 0xFFFF_FFFF]),
    st.sampled_from([5000, 9000, 1]),
    st.one_of(st.integers(0, 80), st.integers(0, 0xFFFF_FFFF)),
    st.integers(0, 3),
    st.integers(0, 0xFFFF_FFFF),
    st.integers(0, 0xFFFF_FFFF),
    st.sampled_from([CID, CID, 2, 0xFFFF_FFFF_FFFF_FFFF]),
    st.sampled_from([2, 2, 7]),
    st.sampled_from([1, 1, 2, 0]),
)
_packet = st.one_of(
    st.tuples(_header, st.binary(max_size=80)).map(lambda t: t[0] + t[1]),
    st.binary(max_size=60),
)
_chain = st.fixed_dictionaries(
    {
        "data": _packet,
        "split": st.integers(0, 60),
        "writable": st.lists(st.integers(0, 64), max_size=2),  # wrong direction too
        "queue": st.sampled_from([V.TX, V.TX, V.TX, V.RX, V.EVENT]),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains=st.lists(_chain, min_size=1, max_size=8), host=st.booleans())
async def test_fuzz_vsock_chains(chains: list[dict[str, Any]], host: bool) -> None:
    """Arbitrary chains and headers on every queue: never a host exception; only counters,
    RSTs and DEVICE_NEEDS_RESET; no byte outside the chains' writable buffers (and the
    used rings) changes."""
    v = Vsock(rx_buffers=4, qsize=16)
    v.vs.listen(9000)
    stream: V.VsockStream | None = None
    async with trio.open_nursery() as nursery:
        if host:
            stream, _ = await open_out(v, nursery)
            await stream.send_all(b"h" * 5000)
        heap = RAM + 0x600000
        queues = {V.RX: v.rxq, V.TX: v.txq, V.EVENT: v.evq}
        writable: list[tuple[int, int]] = []
        for c in chains:
            q: DriverQueue = queues[c["queue"]]
            data: bytes = c["data"]
            cut = min(c["split"], len(data))
            parts = [(data[:cut], False), (data[cut:], False)] + [
                (bytes(n), True) for n in c["writable"]
            ]
            parts = [p for p in parts if p[0] or p[1]] or [(b"", False)]
            if not q._free or len(q._free) < len(parts):
                break
            descs = [q._free.pop(0) for _ in parts]
            for i, (buf, w) in enumerate(parts):
                addr = heap
                heap += (len(buf) + 15) & ~15 or 16
                v.mem.write(addr, buf)
                if w:
                    writable.append((addr, len(buf)))
                more = i + 1 < len(parts)
                flags = (DESC_F_WRITE if w else 0) | (DESC_F_NEXT if more else 0)
                q.write_desc(q.desc, descs[i], addr, len(buf), flags, descs[i + 1] if more else 0)
            q.make_available(descs[0])
            before = v.mem.read(RAM + 0x600000, heap - RAM - 0x600000)
            v.dev.mmio_write(M.R_QUEUE_NOTIFY, 4, c["queue"])
            after = v.mem.read(RAM + 0x600000, heap - RAM - 0x600000)
            for i, (x, y) in enumerate(zip(before, after, strict=True)):
                if x != y:
                    addr = RAM + 0x600000 + i
                    assert any(a <= addr < a + n for a, n in writable), hex(addr)
        await settle()
        if v.dev.status & M.STATUS_NEEDS_RESET:
            event("needs reset")
        s = v.vs.stats()
        assert s["connections"] <= V.MAX_CONNECTIONS
        assert s["buffered_bytes"] <= 2 * V.BUF_ALLOC
        for k, n in v.dev.stats().items():
            if n and k not in ("tx_packets", "rx_packets", "notifies", "connections"):
                event(k)
        nursery.cancel_scope.cancel()


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(0, 70000), st.booleans()), min_size=1, max_size=6))
async def test_fuzz_rng_chains(sizes: Sequence[tuple[int, bool]]) -> None:
    """Any buffer sizes, readable ones too: never a host exception; at most MAX_REQUEST a
    request."""
    dev, q, _ = _rng()
    for n, readable in sizes:
        q.add([bytes(n)] if readable else (), [n])
    dev.mmio_write(M.R_QUEUE_NOTIFY, 4, 0)
    if not dev.status & M.STATUS_NEEDS_RESET:
        for u, (n, _) in zip(q.take_used(), sizes, strict=True):
            assert u.written == min(n, R.MAX_REQUEST)


# -- wiring: which VMs get the devices -----------------------------------------------------------


def _backends(config: Any) -> list[str]:
    from hv import Vm

    return [type(getattr(d, "backend", d)).__name__ for d in Vm(config).machine.slots.values()]


def test_linux_vms_get_vsock_and_rng_last(linux_image: Any, guest_elfs: Any) -> None:
    from blockdev import MemoryDisk
    from hv import Disk, VmConfig

    linux = VmConfig(kernel=linux_image.kernel, name="l", disks=(Disk(MemoryDisk(1 << 20)),))
    assert _backends(linux) == ["VirtioBlk", "VirtioVsock", "VirtioRng"]
    assert _backends(VmConfig(kernel=linux_image.kernel, vsock=False)) == ["VirtioRng"]
    # firmware guests keep their slots unless asked
    assert _backends(VmConfig(kernel=guest_elfs["hello"])) == []
    assert _backends(VmConfig(kernel=guest_elfs["hello"], vsock=True)) == ["VirtioVsock"]
    # all slots taken: automatic ones step aside, an explicit one is a clear error
    full = tuple(Disk(MemoryDisk(1 << 20)) for _ in range(8))
    assert "VirtioVsock" not in _backends(VmConfig(kernel=linux_image.kernel, disks=full))
    from hv import ConfigError

    with pytest.raises(ConfigError, match="virtio slots"):
        _backends(VmConfig(kernel=linux_image.kernel, disks=full, rng=True))


def test_rng_seed_in_virtual_time(guest_elfs: Any) -> None:
    """Virtual time: the lab's seed and the VM's name give the rng's bytes; real time does
    not repeat."""
    from hv import Vm, VmConfig

    def first(**kw: Any) -> bytes:
        vm = Vm(VmConfig(kernel=guest_elfs["hello"], rng=True, **kw))
        [dev] = vm.machine.slots.values()
        src: R.Source = dev.backend.source  # type: ignore[attr-defined]
        return src(32)

    a = first(clock="virtual", seed=7, name="a")
    assert a == first(clock="virtual", seed=7, name="a")
    assert a != first(clock="virtual", seed=8, name="a")
    assert a != first(clock="virtual", seed=7, name="b")
    assert first(name="a") != first(name="a")  # os.urandom
