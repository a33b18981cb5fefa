"""The device protocol: what a device on the hv-virt board implements, and what it is given.

A device sees offsets into its own MMIO window, its interrupt line, guest memory through the
bounds-checked DMA accessor, a way to wake the VM and a way to start async work in the VM's
own nursery; never the vCPU, never an absolute address. The board (``Machine``) owns the
objects: a reboot calls ``reset()`` (device state back to power-on), it does not rebuild them,
so backends, counters and references survive. A device gets that context (``attach``) when
the VM starts, its nursery open: ``ctx.spawn(work)`` starts the work there at once.

Placement: the platform devices (PLIC, UART, test finisher) sit at their fixed hv-virt
addresses; every device in ``MachineConfig.devices`` gets the next virtio-mmio slot
(base ``0x1000_1000 + n * 0x1000``, IRQ ``1 + n``) and a ``virtio,mmio`` node in the device tree.

Blame: a ``GuestError`` raised from an MMIO access is the guest's doing. The vCPU hands it to
``guest_error``, which counts it and lets the device set its own error state (virtio:
DEVICE_NEEDS_RESET); the VM goes on. Any other exception is a host bug and stops that VM
with a host error naming the device.
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from hv._errors import GuestError, HostError
from hv.hw._bus import IrqLine
from hv.hw._counters import Counters
from hv.hw._memory import GuestMemory
from hv.hw._state import Fields, State

AsyncWork = Callable[[], Awaitable[None]]


class Completion(Protocol):
    """A completion the device promised for a time of the guest's (``DeviceTime.expect``)."""

    def ready(self, fn: Callable[[], None]) -> None:
        """The host work is done: at the promised time, ``fn`` completes it to the guest."""
        ...


class DeviceTime(Protocol):
    """The guest's time, for a device of a virtual-time VM (``DeviceContext.time``; None in
    real time, where everything happens when it happens). See docs/TIME.md."""

    def now_ps(self) -> int:
        """The guest's time now, in picoseconds on the lab's timeline."""
        ...

    def send(self, fn: Callable[[], None]) -> None:
        """Something leaves the VM now (a frame): ``fn`` hands it on at this time, when the
        lab's timeline gets there."""
        ...

    def receive(self, fn: Callable[[], None], *, bounded: bool = True) -> None:
        """Something reaches the VM from the lab now (a frame): ``fn`` gives it to the device
        when the guest's time gets to its arrival (now plus the cable's latency). What waits
        so is bounded (a flooded guest's frames beyond it are dropped and counted);
        ``bounded=False`` for a change of state the host makes (a cable's link going down),
        which must not be lost and which the device coalesces."""
        ...

    def host_input(self, fn: Callable[[], None]) -> None:
        """Input from the host reaches the VM now (vsock data a host task sent): ``fn``
        gives it to the device when the guest next runs, at its time then; a guest asleep
        with nothing due wakes at the lab's newest time, as for typed console input."""
        ...

    def expect(self, due_ps: int) -> Completion:
        """Host work started now is to complete to the guest at ``due_ps`` (a modelled
        latency): the guest does not get past that time until it is ready."""
        ...


@dataclass(frozen=True)
class DeviceContext:
    """What the board gives a device when the VM starts (``Machine.start``)."""

    name: str
    memory: GuestMemory  # guest RAM, bounds-checked: the device's DMA accessor
    irq: IrqLine  # the device's interrupt line (level), into the PLIC
    wake: Callable[[], None]  # wake the VM if it sleeps (a rising IRQ already does)
    spawn: Callable[[AsyncWork], None]  # run async work in the VM's nursery
    # End the running slice at the next block: the device did something other tasks (another
    # VM it sent a frame to) should see now, not when this guest's slice would have ended.
    end_slice: Callable[[], None] = lambda: None
    # Virtual time: the guest's clock and the lab's timeline (None: real time).
    time: DeviceTime | None = None


class Device(abc.ABC):
    """A device on the board (subclass it; the MMIO handlers and ``reset`` are required)."""

    #: bytes of MMIO window the device decodes, from its base
    mmio_size = 0x1000
    #: the counter keys the device may use (``hv.hw._counters``; ``guest_errors`` is always
    #: in); None: free-form counters (a device of the embedding application's own)
    COUNTERS: ClassVar[frozenset[str] | None] = None

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters: collections.Counter[str] = (
            collections.Counter() if self.COUNTERS is None else Counters(name, self.COUNTERS)
        )
        self._ctx: DeviceContext | None = None

    @property
    def ctx(self) -> DeviceContext:
        if self._ctx is None:
            raise HostError(f"device {self.name} is not attached to a machine")
        return self._ctx

    def attach(self, ctx: DeviceContext) -> None:
        """Called once, when the VM starts (its nursery open, before the guest runs); a
        device may start its async work here with ``ctx.spawn``."""
        self._ctx = ctx

    @abc.abstractmethod
    def reset(self) -> None:
        """Back to the power-on state (the board calls it on every reboot); keep counters."""

    @abc.abstractmethod
    def mmio_read(self, offset: int, size: int) -> int: ...

    @abc.abstractmethod
    def mmio_write(self, offset: int, size: int, value: int) -> None: ...

    def close(self) -> None:  # noqa: B027 (optional)
        """The machine is done (its RAM and vCPU are going): drop what refers to the guest,
        so late work (a frame, a completion) is dropped instead of touching it."""

    def after_slice(self) -> None:  # noqa: B027 (optional: most devices have none)
        """Work after each time slice (batched completions, flushing), on the VM's thread."""

    async def settle(self) -> None:  # noqa: B027 (optional: most devices have none)
        """Before a snapshot (the VM paused between slices): finish the host work under way
        (a disk request's I/O), so that what ``save_state`` and ``save_call`` see is
        complete. Most devices have none."""

    def save_state(self) -> State:
        """What a snapshot keeps of the device (hv.hw._state): everything the guest can see
        that ``reset`` would change, so that ``load_state`` on a new device of the same
        configuration continues the run bit for bit. Called between slices, the VM paused,
        its device work settled (``settle``). Not counters: a restored VM counts afresh."""
        raise HostError(f"device {self.name} ({type(self).__name__}) cannot be snapshotted")

    def load_state(self, st: Fields) -> None:
        """Take back ``save_state``'s state, on a device built from the same configuration
        and attached (``attach``) but never run. ``st`` comes from a file anyone may have
        written: check every value (``Fields`` does types and ranges; the device checks
        the rules between them) and raise ``SnapshotError`` rather than keep a bad one."""
        raise HostError(f"device {self.name} ({type(self).__name__}) cannot be restored")

    def save_call(self, fn: Callable[[], None]) -> State | None:
        """A call this device left pending on the guest's timeline (virtual time: a frame
        it sent, ``DeviceTime.send``; one on its way to it, ``receive``; a completion,
        ``expect``) as state, or None if ``fn`` is not one of its own. A snapshot saves
        each pending call through the device that made it."""
        return None

    def load_call(self, st: Fields) -> Callable[[], None]:
        """The call ``save_call`` saved, made again on this (restored) device."""
        raise st.fail("call", f"device {self.name} has no saved calls")

    def guest_error(self, err: GuestError) -> None:
        """The guest misused the device (the vCPU caught ``err`` from an MMIO access)."""
        self.counters["guest_errors"] += 1

    def stats(self) -> Mapping[str, int]:
        return self.counters
