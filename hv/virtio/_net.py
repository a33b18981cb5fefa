"""virtio-net (virtio 1.x, section 5.1): the device behind a VM's NIC, sans-IO.

Theory of operation. Queue 0 is receive, queue 1 transmit. Every buffer starts with the
12-byte ``virtio_net_hdr`` (VERSION_1 always has ``num_buffers``). On a TX notify the device
takes each chain, strips the header and hands the frame to its send end (a callable it is
given with ``connect``: in a VM, a ``netfabric.ports.nic.NicPort``'s ``send``); RX frames
from the link (its deliver end, ``deliver``) wait in a bounded backlog until the driver has
posted buffers, then go in with a zeroed header and ``num_buffers`` = 1; with MRG_RXBUF
negotiated a frame bigger than one buffer spreads over as many as it needs (``num_buffers``
of them, published together), so a 64 KiB segment fits in the page-sized buffers Linux posts
instead of 64 KiB chains per slot. What the guest has no
room for past ``RX_BACKLOG`` frames is dropped and counted (``rx_dropped``), so a silent or
flooded guest costs bounded host memory.

Features: EVENT_IDX (a driver that sleeps until the next frame asks for one interrupt, not
one per frame), MAC (the configured address in config space), STATUS (link up/down, settable from
the host: ``set_link``), MTU, and the offloads that make guest-to-guest TCP cheap: CSUM and
HOST_TSO4 (the guest sends partial checksums and TCP segments up to 64 KiB) and GUEST_CSUM,
GUEST_TSO4 (it takes them). An offloaded frame crosses the switch once, as a
``netfabric.frame.Frame`` with its ``netfabric.offload.Offload``; a receiver that did not
negotiate the offload gets its wire form (segmented, checksums filled in), as does a capture.

The device knows nothing of switches or ports (the machine never imports the fabric beyond
the frame and offload vocabulary): ``hv.Nic`` builds it and its port and joins them.
"""

from __future__ import annotations

import collections
import functools
import struct
from collections.abc import Callable, Sequence

from hv._errors import GuestError
from hv.hw import Counters, DeviceTime, Fields, GuestMemory, State
from hv.virtio._mmio import F_RING_EVENT_IDX, VirtioBackend, VirtioMmio
from hv.virtio._queue import DescriptorChain, QueueError, Virtqueue
from netfabric.frame import Frame
from netfabric.offload import GSO_NONE, GSO_TCPV4, Offload

DEVICE_ID_NET = 1
F_CSUM = 1 << 0
F_GUEST_CSUM = 1 << 1
F_GUEST_TSO4 = 1 << 7
F_HOST_TSO4 = 1 << 11
F_MTU = 1 << 3
F_MAC = 1 << 5
F_MRG_RXBUF = 1 << 15
F_STATUS = 1 << 16
STATUS_LINK_UP = 1
HDR_LEN = 12
RX, TX = 0, 1
# Frames waiting for the guest's RX buffers, at most.
RX_BACKLOG = 256
MAX_FRAME = 65536 + HDR_LEN
# Frames a saved backlog may hold: RX_BACKLOG, and the wire frames of one cut up in front.
SAVED_BACKLOG_MAX = RX_BACKLOG + MAX_FRAME

_HDR = struct.Struct(
    "<BBHHHHH"
)  # flags, gso_type, hdr_len, gso_size, csum_start/offset, num_buffers
_HDR_RX = _HDR.pack(0, 0, 0, 0, 0, 0, 1)  # num_buffers = 1
HDR_F_NEEDS_CSUM = 1
GSO_ECN = 0x80


# virtio-net's counters (the transport's are beside them in VirtioMmio.stats()).
NET_COUNTERS = frozenset(
    {
        "tx_frames",  # frames the guest sent, as it sent them (a TSO frame once)
        "tx_bytes",
        "tx_offloaded",  # ... of which carried a checksum or segmentation offload
        "tx_runt",  # shorter than an Ethernet header: dropped
        "tx_gso_unsupported",  # a segmentation type hv does not carry: dropped
        "tx_link_down",  # sent while the link was down: dropped
        "rx_frames",  # frames put in the guest's RX queue
        "rx_bytes",
        "rx_merged",  # ... of which spread over several buffers (MRG_RXBUF)
        "rx_resolved",  # offloaded frames cut or checksummed for a driver that can't take them
        "rx_dropped",  # the backlog was full: the guest posts buffers too slowly
        "rx_too_small",  # a frame no ring could ever hold
        "rx_link_down",  # arrived while the link was down: dropped
    }
)


class VirtioNet(VirtioBackend):
    device_id = DEVICE_ID_NET
    queue_max = 256

    def __init__(self, mac: bytes, mtu: int = 1500) -> None:
        super().__init__()
        if len(mac) != 6 or mac[0] & 1:
            raise ValueError(f"NIC MAC {mac.hex(':')} is not a unicast address")
        self.mac = mac
        self.mtu = mtu
        self.link_up = True
        self._link_wanted = True  # what the host last set (set_link)
        self._link_on_way = False  # virtual time: a change on its way to the guest
        self._send: Callable[[Frame], None] = _unconnected  # the send end: connect()
        self.backlog: collections.deque[Frame] = collections.deque()
        self.counters: collections.Counter[str] = Counters("virtio-net", NET_COUNTERS)
        self._mem: GuestMemory | None = None
        self._queues: Sequence[Virtqueue] = ()
        # what the guest's driver takes (negotiated)
        self.guest_csum = self.guest_tso4 = self.mergeable = False

    def connect(self, send: Callable[[Frame], None]) -> None:
        """Where the frames the guest sends go (a port's ``send``); until then, nowhere."""
        self._send = send

    @property
    def features(self) -> int:
        offloads = F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_HOST_TSO4
        return F_MAC | F_STATUS | F_MTU | F_MRG_RXBUF | F_RING_EVENT_IDX | offloads

    @property
    def num_queues(self) -> int:
        return 2

    def config(self) -> bytes:
        status = STATUS_LINK_UP if self.link_up else 0
        return self.mac + struct.pack("<HHH", status, 1, self.mtu)

    def set_link(self, up: bool) -> None:
        """The cable's link state, set from the host: STATUS's link bit and a config-change
        interrupt (Linux's driver then reports carrier loss at once, NO-CARRIER); while it
        is down the device sends and takes nothing (counted: ``tx_link_down``,
        ``rx_link_down``). In virtual time the change reaches the guest as a frame does, at
        the lab's time plus the cable's latency, after the frames the fabric handed it before
        (a change that finds one on its way rides with it: a flap quicker than the latency
        never reaches the guest)."""
        self._link_wanted = up
        vt = self._time()
        if vt is None:
            self._apply_link()
        elif not self._link_on_way:
            self._link_on_way = True
            vt.receive(self._apply_link, bounded=False)

    def _apply_link(self) -> None:
        self._link_on_way = False
        up = self._link_wanted
        if up != self.link_up:
            self.link_up = up
            if self.transport is not None:
                self.transport.config_changed()

    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], features: int) -> None:
        self._negotiated(mem, queues, features)
        self._fill_rx()

    def _negotiated(self, mem: GuestMemory | None, queues: Sequence[Virtqueue], f: int) -> None:
        self._mem, self._queues = mem, queues
        self.guest_csum = bool(f & F_GUEST_CSUM)
        self.guest_tso4 = self.guest_csum and bool(f & F_GUEST_TSO4)
        self.mergeable = bool(f & F_MRG_RXBUF)

    # -- snapshots ---------------------------------------------------------------------------

    def save_state(self) -> State:
        """The link (as the guest sees it, as the host last set it, whether a change is on
        its way) and the receive backlog. The offloads the guest takes follow from the
        negotiated features (the transport's); the MAC and MTU are the configuration's, kept
        for the record: a restored device (a clone's) has its own."""
        return {
            "mac": self.mac,
            "mtu": self.mtu,
            "link_up": self.link_up,
            "link_wanted": self._link_wanted,
            "link_on_way": self._link_on_way,
            "backlog": [_frame_state(f) for f in self.backlog],
        }

    def load_state(
        self, st: Fields, mem: GuestMemory | None, queues: Sequence[Virtqueue], features: int
    ) -> None:
        st.bytes("mac", length=6)
        st.int("mtu", 0, 0xFFFF)
        link = [st.bool(key) for key in ("link_up", "link_wanted", "link_on_way")]
        backlog = [_load_frame(f) for f in st.subs("backlog", SAVED_BACKLOG_MAX)]
        self.link_up, self._link_wanted, self._link_on_way = link
        self.backlog = collections.deque(backlog)
        self._negotiated(mem, queues, features)

    def save_call(self, fn: Callable[[], None]) -> State | None:
        if fn == self._apply_link:
            return {"call": "link"}
        if isinstance(fn, functools.partial) and len(fn.args) == 1:
            frame = fn.args[0]
            if fn.func == self._emit:
                return {"call": "send", "frame": _frame_state(frame)}
            if fn.func == self._arrive:
                return {"call": "arrive", "frame": _frame_state(frame)}
        return None

    def load_call(self, st: Fields) -> Callable[[], None]:
        call = st.choice("call", ("link", "send", "arrive"))
        if call == "link":
            self._link_on_way = True
            return self._apply_link
        frame = _load_frame(st.sub("frame"))
        return functools.partial(self._emit if call == "send" else self._arrive, frame)

    def reset(self) -> None:
        self._mem, self._queues = None, ()
        self.backlog.clear()

    def notify(self, queue: int) -> None:
        if queue == TX:
            self._transmit()
        else:
            self._fill_rx()

    def _transmit(self) -> None:
        mem, q = self._mem, self._queues[TX]
        assert mem is not None and self.transport is not None
        sent: list[tuple[bytes, Offload | None]] = []
        while (chain := q.pop()) is not None:
            data = chain.read(mem, MAX_FRAME)
            q.push(chain.head, 0)
            if len(data) <= HDR_LEN:
                self.counters["tx_runt"] += 1
                continue
            flags, gso, hdr_len, gso_size, start, offset, _ = _HDR.unpack_from(data)
            off = None
            if flags & HDR_F_NEEDS_CSUM or gso & ~GSO_ECN:
                gso_type = GSO_TCPV4 if gso & ~GSO_ECN == GSO_TCPV4 else GSO_NONE
                if gso & ~GSO_ECN and gso_type == GSO_NONE:
                    self.counters["tx_gso_unsupported"] += 1
                    continue
                off = Offload(
                    bool(flags & HDR_F_NEEDS_CSUM), start, offset, gso_type, gso_size, hdr_len
                )
                self.counters["tx_offloaded"] += 1
            sent.append((data[HDR_LEN:], off))
        self.transport.signal_used(TX)
        vt = self._time()
        for frame, off in sent:  # after the used ring is written: delivery may re-enter us
            self.counters["tx_frames"] += 1
            self.counters["tx_bytes"] += len(frame)
            if not self.link_up:
                self.counters["tx_link_down"] += 1
            elif vt is None:
                self._send(Frame(frame, off))
            else:  # virtual time: it enters the switch when the lab's timeline gets there
                vt.send(functools.partial(self._emit, Frame(frame, off)))
        if sent:  # let the receivers run now rather than after the rest of our slice
            self.transport.ctx.end_slice()

    def _emit(self, frame: Frame) -> None:
        """Virtual time: the frame enters the fabric (at its time on the lab's timeline)."""
        self._send(frame)

    def _takes(self, off: Offload) -> bool:
        return (not off.needs_csum or self.guest_csum) and (
            off.gso_type == GSO_NONE or self.guest_tso4
        )

    def _time(self) -> DeviceTime | None:
        t = self.transport
        return t.ctx.time if t is not None and t._ctx is not None else None

    def deliver(self, frame: Frame) -> None:
        """A frame from the link for this guest (the deliver end; an offloaded one as its
        wire frames if the guest can't take it: segmented, checksums filled in). In virtual
        time it reaches the guest after the cable's latency, in the guest's time."""
        vt = self._time()
        if vt is not None:
            vt.receive(functools.partial(self._arrive, frame))
        else:
            self._arrive(frame)

    def _arrive(self, frame: Frame) -> None:
        if not self.link_up:
            self.counters["rx_link_down"] += 1
            return
        off = frame.offload
        if off is not None and not self._takes(off):
            self.counters["rx_resolved"] += 1
            for wire in frame.wire():
                self._queue(Frame(wire))
        else:
            self._queue(frame)
        try:
            self._fill_rx()
        except GuestError as e:  # this guest's queue is broken: its fault, not the sender's
            if self.transport is not None:
                self.transport.needs_reset(e)

    def _queue(self, frame: Frame) -> None:
        if len(self.backlog) >= RX_BACKLOG:
            self.counters["rx_dropped"] += 1
            return
        self.backlog.append(frame)

    def _fill_rx(self) -> None:
        mem = self._mem
        if mem is None or not self._queues or self.transport is None or not self.transport.running:
            return
        q = self._queues[RX]
        filled = False
        while self.backlog:
            head = self.backlog[0]
            frame, off = head.data, head.offload
            if self.mergeable:
                chains = self._take_buffers(q, HDR_LEN + len(frame))
                if chains is None:
                    break
            else:
                chain = q.pop()
                if chain is None:
                    break
                chains = [chain]
            self.backlog.popleft()
            filled = True
            if sum(c.writable_len for c in chains) < HDR_LEN + len(frame):  # never fits
                for chain in chains:
                    q.push(chain.head, 0)
                if off is not None:  # a big offloaded frame in small buffers: cut it up
                    self.backlog.extendleft(Frame(w) for w in reversed(head.wire()))
                else:
                    self.counters["rx_too_small"] += 1
                continue
            hdr = _HDR_RX if off is None else _offload_header(off)
            if len(chains) > 1:  # num_buffers (the header says 1)
                hdr = hdr[:10] + len(chains).to_bytes(2, "little")
            data = memoryview(hdr + frame)
            done = 0
            for chain in chains:  # all written before the guest runs again: published together
                n = chain.write(mem, data[done:])
                q.push(chain.head, n)
                done += n
            self.counters["rx_frames"] += 1
            self.counters["rx_bytes"] += len(frame)
            if len(chains) > 1:
                self.counters["rx_merged"] += 1
        if filled:
            self.transport.signal_used(RX)

    def _take_buffers(self, q: Virtqueue, need: int) -> list[DescriptorChain] | None:
        """Enough available chains for ``need`` bytes (mergeable buffers), or None (all
        given back) if the driver has not posted that much yet; a whole ring's worth if even
        that is too small (the frame can never fit)."""
        chains: list[DescriptorChain] = []
        room = 0
        while room < need:
            if len(chains) == q.size:
                return chains
            chain = q.pop()
            if chain is None:
                q.unpop(len(chains))
                return None
            if not chain.writable_len:
                q.unpop(len(chains) + 1)
                raise QueueError("a receive buffer with no device-writable space")
            chains.append(chain)
            room += chain.writable_len
        return chains


def _offload_header(off: Offload) -> bytes:
    flags = HDR_F_NEEDS_CSUM if off.needs_csum else 0
    return _HDR.pack(
        flags, off.gso_type, off.hdr_len, off.gso_size, off.csum_start, off.csum_offset, 1
    )


def _frame_state(frame: Frame) -> State:
    """A frame as state: its bytes, and its ``offload`` only if it has one."""
    off = frame.offload
    if off is None:
        return {"data": frame.data}
    return {
        "data": frame.data,
        "offload": {
            "needs_csum": off.needs_csum,
            "csum_start": off.csum_start,
            "csum_offset": off.csum_offset,
            "gso_type": off.gso_type,
            "gso_size": off.gso_size,
            "hdr_len": off.hdr_len,
        },
    }


def _load_frame(st: Fields) -> Frame:
    """A saved frame; its offload's numbers are the u16s a driver's header holds (the
    fabric takes any: it handles a guest's nonsense), its segmentation one hv carries."""
    data = st.bytes("data", MAX_FRAME)
    if not st.has("offload"):
        return Frame(data)
    o = st.sub("offload")
    gso = o.int("gso_type", 0, GSO_TCPV4)
    nums = [o.int(k, 0, 0xFFFF) for k in ("csum_start", "csum_offset", "gso_size", "hdr_len")]
    off = Offload(o.bool("needs_csum"), nums[0], nums[1], gso, nums[2], nums[3])
    return Frame(data, off)


def _unconnected(frame: Frame) -> None:
    pass


def virtio_net(name: str, mac: bytes, *, mtu: int = 1500) -> VirtioMmio:
    """A virtio-net NIC for ``VmConfig.devices``, not yet connected to anything (``hv.Nic``
    makes one plugged into a switch; or ``connect`` its ``VirtioNet`` to a send end and hand
    frames to its ``deliver``)."""
    return VirtioMmio(name, VirtioNet(mac, mtu))
