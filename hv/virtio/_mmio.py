"""The virtio-mmio transport, version 2 (virtio 1.x, section 4.2), as a board device.

Theory of operation. The transport only decodes registers; what the device *is* lives in a
``VirtioBackend`` (device id, features, config space, what to do with its queues). The
driver's side of the handshake, in order: reset (write 0 to Status), ACKNOWLEDGE, DRIVER,
read DeviceFeatures (two 32-bit halves, by DeviceFeaturesSel), write DriverFeatures, set
FEATURES_OK and read it back (the transport refuses features the device does not offer, and
a driver without VIRTIO_F_VERSION_1: a legacy driver), set up each queue (QueueSel, QueueNum,
the three ring addresses, QueueReady), then DRIVER_OK: the backend is activated with its
``Virtqueue`` objects. A write to QueueNotify hands that queue to the backend; the backend
hands used buffers back and the transport raises the interrupt (InterruptStatus bit 0) when
the driver wants one. Config space reads go to the backend; ConfigGeneration changes with it.

Blame. A driver that breaks the rules (a ring outside RAM, a looped chain, a bad register
access) is the guest's doing: the transport counts it, sets DEVICE_NEEDS_RESET in Status and
raises a configuration-change interrupt, as the spec says, and the VM goes on. Until the
driver resets the device, notifications are ignored.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Callable, Sequence

from hv._errors import GuestError, HostError
from hv.hw import Device, Fields, GuestMemory, State
from hv.virtio._queue import MAX_QUEUE_SIZE, QueueError, Virtqueue

MAGIC = 0x7472_6976  # "virt"
VERSION = 2
VENDOR_ID = 0x4846_5648  # "HVFH"

STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 64
STATUS_FAILED = 128

F_VERSION_1 = 1 << 32
F_RING_INDIRECT_DESC = 1 << 28
F_RING_EVENT_IDX = 1 << 29

INT_USED = 1
INT_CONFIG = 2

# Register offsets.
R_MAGIC, R_VERSION, R_DEVICE_ID, R_VENDOR_ID = 0x000, 0x004, 0x008, 0x00C
R_DEVICE_FEATURES, R_DEVICE_FEATURES_SEL = 0x010, 0x014
R_DRIVER_FEATURES, R_DRIVER_FEATURES_SEL = 0x020, 0x024
R_QUEUE_SEL, R_QUEUE_NUM_MAX, R_QUEUE_NUM, R_QUEUE_READY = 0x030, 0x034, 0x038, 0x044
R_QUEUE_NOTIFY = 0x050
R_INTERRUPT_STATUS, R_INTERRUPT_ACK = 0x060, 0x064
R_STATUS = 0x070
R_QUEUE_DESC_LOW, R_QUEUE_DESC_HIGH = 0x080, 0x084
R_QUEUE_DRIVER_LOW, R_QUEUE_DRIVER_HIGH = 0x090, 0x094
R_QUEUE_DEVICE_LOW, R_QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4
R_CONFIG_GENERATION = 0x0FC
CONFIG = 0x100


class VirtioBackend(abc.ABC):
    """What a virtio device is, behind the transport (net, block, console...)."""

    device_id: int = 0
    queue_max: int = 256

    def __init__(self) -> None:
        self.transport: VirtioMmio | None = None

    @property
    @abc.abstractmethod
    def features(self) -> int:
        """Device feature bits (VIRTIO_F_VERSION_1 is added by the transport)."""

    @property
    @abc.abstractmethod
    def num_queues(self) -> int: ...

    def config(self) -> bytes:
        """The device-specific config space as it reads now."""
        return b""

    def config_write(self, offset: int, data: bytes) -> None:  # noqa: B027 (optional)
        """The driver wrote the config space (most fields are read-only: ignore)."""

    @abc.abstractmethod
    def activate(self, mem: GuestMemory, queues: Sequence[Virtqueue], features: int) -> None:
        """DRIVER_OK: the negotiated features and the queues the driver set up."""

    @abc.abstractmethod
    def notify(self, queue: int) -> None:
        """The driver made buffers available on ``queue``."""

    def reset(self) -> None:  # noqa: B027 (optional)
        """The device was reset (Status 0, or a board reboot): drop queue state."""

    def after_slice(self) -> None:  # noqa: B027 (optional)
        """Batched work after each slice (the transport's after_slice calls it)."""

    def save_state(self) -> State:
        """The backend's part of a snapshot (the transport saves the rings' positions)."""
        raise HostError(f"virtio device {type(self).__name__} cannot be snapshotted")

    def load_state(
        self, st: Fields, mem: GuestMemory | None, queues: Sequence[Virtqueue], features: int
    ) -> None:
        """Take back ``save_state``'s state. ``mem`` and ``queues`` are what ``activate``
        gave (None and () if the driver had not brought the device up), ``features`` the
        negotiated ones: unlike ``activate``, touch neither guest memory nor the guest."""
        raise HostError(f"virtio device {type(self).__name__} cannot be restored")

    def save_call(self, fn: Callable[[], None]) -> State | None:
        """A call of this backend pending on the guest's timeline, as state (hv.hw.Device)."""
        return None

    def load_call(self, st: Fields) -> Callable[[], None]:
        raise st.fail("call", f"{type(self).__name__} has no saved calls")


class _QueueConfig:
    def __init__(self) -> None:
        self.num = 0
        self.ready = False
        self.desc = self.driver = self.device = 0


class VirtioMmio(Device):
    """A virtio-mmio slot holding ``backend``."""

    mmio_size = 0x200
    # The transport's own counters; the backend's come beside them in ``stats()``.
    COUNTERS = frozenset(
        {
            "notifies",  # QueueNotify writes
            "notify_while_stopped",  # ... before DRIVER_OK or while it needs a reset
            "resets",  # Status 0 written (a driver's device reset)
            "features_refused",  # FEATURES_OK refused (e.g. a legacy driver without VERSION_1)
            "features_ignored",  # DriverFeatures written after FEATURES_OK, or past word 1
            "queue_sel_invalid",  # a queue register written with QueueSel past the queues
            "config_out_of_range",  # a config space access past its end
            "read_unknown",  # a read of no register
            "write_unknown",  # a write to no register
            "needs_reset",  # DEVICE_NEEDS_RESET set for a broken rule (also guest_errors)
        }
    )

    def __init__(self, name: str, backend: VirtioBackend) -> None:
        super().__init__(name)
        self.backend = backend
        backend.transport = self
        self.reset_transport()

    # -- state -------------------------------------------------------------------------------

    def reset_transport(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.config_generation = 0
        self.queues_cfg = [_QueueConfig() for _ in range(self.backend.num_queues)]
        self.queues: list[Virtqueue] = []
        self._irq_level = False

    def close(self) -> None:
        """The machine is done: reset (the backend lets go of guest memory and its queues),
        so a late frame or completion is dropped rather than written into released RAM."""
        self.reset()

    def reset(self) -> None:
        self.backend.reset()
        self.reset_transport()
        self._drive_irq()

    # -- snapshots ---------------------------------------------------------------------------

    def save_state(self) -> State:
        """The registers, each queue's configuration, the rings' positions once the driver
        brought the device up and the backend's state."""
        n = len(self.queues_cfg)
        return {
            "status": self.status,
            "device_features_sel": self.device_features_sel,
            "driver_features_sel": self.driver_features_sel,
            "driver_features": self.driver_features,
            "queue_sel": self.queue_sel,
            "interrupt_status": self.interrupt_status,
            "config_generation": self.config_generation,
            "queues_cfg": [
                {
                    "num": q.num,
                    "ready": q.ready,
                    "desc": q.desc,
                    "driver": q.driver,
                    "device": q.device,
                }
                for q in self.queues_cfg
            ],
            # (a DRIVER_OK with queues not ready left some: NEEDS_RESET, none in use)
            "queues": [q.save_state() for q in self.queues if len(self.queues) == n],
            "backend": self.backend.save_state(),
        }

    def load_state(self, st: Fields) -> None:
        u32 = 0xFFFF_FFFF
        status = st.int("status", 0, 0xFF)
        driver_features = st.int("driver_features")
        if status & STATUS_FEATURES_OK:
            st.check(
                not driver_features & ~self.device_features,
                "driver_features",
                f"{driver_features:#x} has features the device does not offer",
            )
            st.check(bool(driver_features & F_VERSION_1), "driver_features", "no VERSION_1")
        interrupt_status = st.int("interrupt_status", 0, INT_USED | INT_CONFIG)
        n = len(self.queues_cfg)
        cfgs = []
        for qst in st.subs("queues_cfg", n, length=n):
            q = _QueueConfig()
            q.num = qst.int("num", 0, u32)
            q.ready = qst.bool("ready")
            q.desc, q.driver, q.device = (qst.int(k) for k in ("desc", "driver", "device"))
            cfgs.append(q)
        saved_queues = st.subs("queues", n)
        driver_ok = status & (STATUS_DRIVER_OK | STATUS_FEATURES_OK) == (
            STATUS_DRIVER_OK | STATUS_FEATURES_OK
        )
        if saved_queues or (driver_ok and not status & STATUS_NEEDS_RESET):
            st.check(driver_ok, "queues", "rings without DRIVER_OK and FEATURES_OK")
            st.check(len(saved_queues) == n, "queues", f"{len(saved_queues)} of {n} queues")
        mem = self.ctx.memory
        event_idx = bool(driver_features & F_RING_EVENT_IDX)
        queues: list[Virtqueue] = []
        for i, (q, qst) in enumerate(zip(cfgs, saved_queues, strict=False)):
            st.check(q.ready, f"queues_cfg[{i}].ready", "false for a queue in use")
            try:
                vq = Virtqueue(mem, q.num, q.desc, q.driver, q.device, event_idx)
            except QueueError as e:
                raise st.fail(f"queues_cfg[{i}]", str(e)) from None
            vq.load_state(qst)
            queues.append(vq)
        self.status = status
        self.device_features_sel = st.int("device_features_sel", 0, u32)
        self.driver_features_sel = st.int("driver_features_sel", 0, u32)
        self.driver_features = driver_features
        self.queue_sel = st.int("queue_sel", 0, u32)
        self.config_generation = st.int("config_generation", 0, u32)
        self.queues_cfg = cfgs
        self.queues = queues
        self.backend.load_state(
            st.sub("backend"), mem if queues else None, queues, driver_features if queues else 0
        )
        self.interrupt_status = interrupt_status
        self._drive_irq()

    def save_call(self, fn: Callable[[], None]) -> State | None:
        return self.backend.save_call(fn)

    def load_call(self, st: Fields) -> Callable[[], None]:
        return self.backend.load_call(st)

    @property
    def device_features(self) -> int:
        return self.backend.features | F_VERSION_1

    @property
    def running(self) -> bool:
        return bool(self.status & STATUS_DRIVER_OK) and not self.status & STATUS_NEEDS_RESET

    # -- for the backend ---------------------------------------------------------------------

    def signal_used(self, queue: int) -> None:
        """The backend pushed used buffers on ``queue``: interrupt if the driver wants it."""
        if self.queues[queue].needs_interrupt():
            self.interrupt_status |= INT_USED
            self._drive_irq()

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFFFF_FFFF
        self.interrupt_status |= INT_CONFIG
        self._drive_irq()

    def needs_reset(self, err: GuestError) -> None:
        """The driver broke a rule: DEVICE_NEEDS_RESET, a config interrupt, a counter."""
        self.counters["guest_errors"] += 1
        self.counters["needs_reset"] += 1
        self.last_error = str(err)
        if not self.status & STATUS_NEEDS_RESET:
            self.status |= STATUS_NEEDS_RESET
            self.config_changed()

    def guest_error(self, err: GuestError) -> None:
        self.needs_reset(err)

    def stats(self) -> collections.Counter[str]:
        """The transport's counters and the backend's (frames, drops...)."""
        out = collections.Counter(self.counters)
        backend_stats = getattr(self.backend, "stats", None)
        out.update(
            backend_stats() if callable(backend_stats) else getattr(self.backend, "counters", {})
        )
        return out

    def _drive_irq(self) -> None:
        level = bool(self.interrupt_status)
        if level != self._irq_level and self._ctx is not None:
            self._irq_level = level
            self.ctx.irq(level)

    def after_slice(self) -> None:
        if self.running:
            try:
                self.backend.after_slice()
            except GuestError as e:
                self.needs_reset(e)

    # -- registers ---------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if offset >= CONFIG:
            data = self.backend.config()
            off = offset - CONFIG
            chunk = data[off : off + size]
            if len(chunk) != size:
                self.counters["config_out_of_range"] += 1
                return 0
            return int.from_bytes(chunk, "little")
        if size != 4 or offset % 4:
            raise GuestError(f"{size}-byte register read at {offset:#x} (32-bit only)")
        q = self._queue_cfg()
        if offset == R_MAGIC:
            return MAGIC
        if offset == R_VERSION:
            return VERSION
        if offset == R_DEVICE_ID:
            return self.backend.device_id
        if offset == R_VENDOR_ID:
            return VENDOR_ID
        if offset == R_DEVICE_FEATURES:
            if self.device_features_sel > 1:
                return 0
            return (self.device_features >> (32 * self.device_features_sel)) & 0xFFFF_FFFF
        if offset == R_QUEUE_NUM_MAX:
            return min(self.backend.queue_max, MAX_QUEUE_SIZE) if q is not None else 0
        if offset == R_QUEUE_READY:
            return int(q.ready) if q is not None else 0
        if offset == R_INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == R_STATUS:
            return self.status
        if offset == R_CONFIG_GENERATION:
            return self.config_generation
        self.counters["read_unknown"] += 1
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset >= CONFIG:
            self.backend.config_write(offset - CONFIG, value.to_bytes(size, "little"))
            return
        if size != 4 or offset % 4:
            raise GuestError(f"{size}-byte register write at {offset:#x} (32-bit only)")
        if offset == R_STATUS:
            self._write_status(value & 0xFF)
        elif offset == R_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == R_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == R_DRIVER_FEATURES:
            if self.status & STATUS_FEATURES_OK or self.driver_features_sel > 1:
                self.counters["features_ignored"] += 1
                return
            shift = 32 * self.driver_features_sel
            mask = 0xFFFF_FFFF << shift
            self.driver_features = (self.driver_features & ~mask) | ((value << shift) & mask)
        elif offset == R_QUEUE_SEL:
            self.queue_sel = value
        elif offset == R_QUEUE_NOTIFY:
            self._notify(value & 0xFFFF)
        elif offset == R_INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._drive_irq()
        elif offset in _QUEUE_REGS:
            self._write_queue(offset, value)
        else:
            self.counters["write_unknown"] += 1

    def _queue_cfg(self) -> _QueueConfig | None:
        if self.queue_sel < len(self.queues_cfg):
            return self.queues_cfg[self.queue_sel]
        return None

    def _write_queue(self, offset: int, value: int) -> None:
        q = self._queue_cfg()
        if q is None:
            self.counters["queue_sel_invalid"] += 1
            return
        if self.status & STATUS_DRIVER_OK:
            raise GuestError("queue set up changed after DRIVER_OK")
        if offset == R_QUEUE_NUM:
            q.num = value
        elif offset == R_QUEUE_READY:
            q.ready = bool(value & 1)
        else:
            field, high = _QUEUE_REGS[offset]
            old = getattr(q, field)
            if high:
                setattr(q, field, (old & 0xFFFF_FFFF) | (value << 32))
            else:
                setattr(q, field, (old & ~0xFFFF_FFFF) | value)

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.counters["resets"] += 1
            self.reset()
            return
        new = value & ~self.status
        if new & STATUS_FEATURES_OK:
            ok = not self.driver_features & ~self.device_features
            if not self.driver_features & F_VERSION_1:
                ok = False  # a legacy driver: this is a modern-only transport
            if not ok:
                self.counters["features_refused"] += 1
                value &= ~STATUS_FEATURES_OK
        self.status = (self.status & STATUS_NEEDS_RESET) | value
        if new & STATUS_DRIVER_OK and self.status & STATUS_FEATURES_OK:
            self._activate()

    def _activate(self) -> None:
        mem = self.ctx.memory
        event_idx = bool(self.driver_features & F_RING_EVENT_IDX)
        try:
            self.queues = [
                Virtqueue(mem, q.num, q.desc, q.driver, q.device, event_idx)
                for q in self.queues_cfg
                if q.ready
            ]
            if len(self.queues) != len(self.queues_cfg):
                raise GuestError(
                    f"DRIVER_OK with {len(self.queues)} of {len(self.queues_cfg)} queues ready"
                )
            self.backend.activate(mem, self.queues, self.driver_features)
        except GuestError as e:
            self.needs_reset(e)

    def _notify(self, queue: int) -> None:
        self.counters["notifies"] += 1
        if not self.running:
            self.counters["notify_while_stopped"] += 1
            return
        if queue >= len(self.queues):
            raise GuestError(f"notify for queue {queue} (the device has {len(self.queues)})")
        try:
            self.backend.notify(queue)
        except GuestError as e:
            self.needs_reset(e)


_QUEUE_REGS: dict[int, tuple[str, bool]] = {
    R_QUEUE_NUM: ("num", False),
    R_QUEUE_READY: ("ready", False),
    R_QUEUE_DESC_LOW: ("desc", False),
    R_QUEUE_DESC_HIGH: ("desc", True),
    R_QUEUE_DRIVER_LOW: ("driver", False),
    R_QUEUE_DRIVER_HIGH: ("driver", True),
    R_QUEUE_DEVICE_LOW: ("device", False),
    R_QUEUE_DEVICE_HIGH: ("device", True),
}
