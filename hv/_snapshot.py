"""A VM's snapshot: what is written (``save``), and what a restored VM starts from.

A snapshot file (hv.hw._snapfile) of one VM holds:

- ``meta``: what hv wrote it, and the VM's configuration (RAM, harts, clock, the devices'
  kinds in slot order): ``hv.restore`` builds a ``VmConfig`` from it;
- ``state``: the machine (harts, clock, every device: ``Machine.save_state``) and, on
  virtual time, what waits on the VM's timeline (frames on their way in, completions due,
  host input), each call saved through the device that made it (``Device.save_call``);
- ``ram``: guest RAM, page-aligned, its zero pages holes; a restored VM maps it
  copy-on-write (``MAP_PRIVATE``), so RAM it never writes is the file's pages, shared by
  every VM restored from the same file;
- ``kernel``, ``initrd``: what a reboot of the restored VM boots again.

A VM is snapshotted between two slices: on real time it is paused for the time it takes;
on virtual time its timeline holds between two rounds, so the snapshot is at one instant of
the lab's time, and a restore continues the same run (docs/SNAPSHOTS.md).
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hv._errors import HostError, SnapshotError
from hv._timeline import Ticket, Timeline
from hv.board import Machine, device_kind
from hv.hw import Fields, SnapshotFile, State, VirtualClock, write_snapshot
from hv.hw import decode_state as decode
from hv.hw import encode_state as encode


class Vm(Protocol):
    """What this module reads and sets of a ``hv._vm.Vm`` (which imports this module)."""

    name: str
    machine: Machine
    _timeline: Timeline | None
    _tickets: list[tuple[int, int, Ticket]]
    _inbox: list[tuple[int, int, Callable[[], None]]]
    _host_input: list[Callable[[], None]]
    _vt_sleeping: bool
    _vt_input: bool
    _vt_seq: itertools.count[int]
    _member: Any

    @property
    def config(self) -> Any: ...


KIND_VM = "vm"
# The most a ``meta`` or ``state`` section may hold; a kernel or initrd section.
META_MAX = 1 << 20
STATE_MAX = 64 << 20
IMAGE_MAX = 1 << 30
# Pending calls a VM's timeline may hold (its inbox is bounded: VT_INBOX_MAX).
CALLS_MAX = 1 << 16


@dataclass(frozen=True)
class SnapshotInfo:
    """What ``Vm.snapshot`` wrote: the file, its size on disk, how long the guest was held."""

    path: Path
    bytes: int
    paused_s: float


def _hv_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hvfabric")
    except PackageNotFoundError:
        return "unknown"


def meta_of(vm: Vm) -> State:
    c = vm.config
    m = vm.machine
    return {
        "kind": KIND_VM,
        "hv": _hv_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "name": vm.name,
        "mem_size": m.mem.size,
        "smp": len(m.harts),
        "clock": "virtual" if isinstance(m.clock, VirtualClock) else "real",
        "mips": c.mips,
        "quantum": c.quantum,
        "cmdline": c.cmdline,
        "seed": c.seed,
        "stop_on_panic": c.stop_on_panic,
        "devices": [device_kind(d) for d in m.devices],
        "nics": len(c.nics),
        "disks": len(c.disks),
        "vsock": any(k.endswith(":VirtioVsock") for k in map(device_kind, m.devices)),
        "rng": any(k.endswith(":VirtioRng") for k in map(device_kind, m.devices)),
        "initrd": m.config.initrd is not None,
    }


def save_call(m: Machine, fn: Callable[[], None]) -> State:
    """A call pending on the timeline, as state: which device (by slot order) made it."""
    for i, dev in enumerate(m.devices):
        st = dev.save_call(fn)
        if st is not None:
            return {"device": i, "call": st}
    raise HostError(f"a pending call ({fn!r}) belongs to none of the VM's devices")


def load_call(m: Machine, st: Fields) -> Callable[[], None]:
    i = st.int("device", 0, len(m.devices) - 1)
    return m.devices[i].load_call(st.sub("call"))


def state_of(vm: Vm) -> State:
    """The VM's state (its machine, and on virtual time what waits on its timeline)."""
    m = vm.machine
    vt: State | None = None
    if vm._timeline is not None:
        for _, _, t in vm._tickets:
            if not t.done or t.fn is None:
                raise HostError("a disk completion's host work is not done (settle first)")
        vt = {
            "sleeping": vm._vt_sleeping,
            "input": vm._vt_input,
            "inbox": [{"at": at, **save_call(m, fn)} for at, _, fn in sorted(vm._inbox)],
            "tickets": [
                {"at": at, **save_call(m, t.fn)}  # type: ignore[arg-type]
                for at, _, t in sorted(vm._tickets, key=lambda e: e[:2])
            ],
            "host_input": [save_call(m, fn) for fn in vm._host_input],
            # What it sent that the lab's fabric has not taken yet, in the order it will.
            "posted": [
                {"at": at, **save_call(m, fn)}
                for at, who, fn in vm._timeline.pending()
                if who is vm._member
            ],
        }
    return {"machine": m.save_state(), "vt": vt}


def load_state(vm: Vm, st: Fields, *, clone: bool = False) -> None:
    """Take back ``state_of``'s state on a VM restored from the snapshot (its devices
    attached, nothing run). A ``clone`` (restored under another name) joins a timeline of
    its own: the frames that were on their way to or from the VM it was are dropped, and
    its clock moves to the timeline's time (the guest's own time goes on unchanged)."""
    m = vm.machine
    m.load_state(st.sub("machine"))
    if vm._timeline is None:
        st.check(not st.given("vt"), "vt", "a real-time VM restored from a virtual-time one")
        return
    st.check(st.given("vt"), "vt", "a virtual-time VM restored from a real-time one")
    vt = st.sub("vt")
    vm._vt_sleeping = vt.bool("sleeping")
    vm._vt_input = vt.bool("input")
    clock = m.clock
    assert isinstance(clock, VirtualClock)
    shift = 0
    if clone:
        shift = vm._timeline.frontier_ps(skip=vm._member) - clock.ps
        clock.ps += shift
        clock.origin_ps += shift
    for e in vt.subs("inbox", CALLS_MAX):
        at = e.int("at", 0, 1 << 62)
        if not clone:
            heapq.heappush(vm._inbox, (at, next(vm._vt_seq), load_call(m, e)))
    for e in vt.subs("tickets", CALLS_MAX):
        at = e.int("at", 0, 1 << 62) + shift
        ticket = Ticket(at)
        ticket.ready(load_call(m, e))
        heapq.heappush(vm._tickets, (at, next(vm._vt_seq), ticket))
    vm._host_input = [load_call(m, e) for e in vt.subs("host_input", CALLS_MAX)]
    for e in vt.subs("posted", CALLS_MAX):
        at = e.int("at", 0, 1 << 62)
        if not clone:
            vm._timeline.post(vm._member, at, load_call(m, e))


def disk_prefix(path: Path) -> str:
    """The name the files of a VM's disks start with beside its snapshot file."""
    stem = "".join(c if c.isalnum() or c in "_.-" else "_" for c in path.stem)
    return f"{stem}-"


def write_vm(
    vm: Vm, path: Path, *, disks: list[dict[str, object]] | None = None, durable: bool = True
) -> int:
    """Write the VM's snapshot file (the VM quiet between slices, its disks frozen beside
    it: ``disks`` their entries; the caller's job)."""
    m = vm.machine
    state = state_of(vm)
    meta = meta_of(vm)
    meta["disk_files"] = disks or []
    sections = [("meta", encode(meta)), ("state", encode(state))]
    sections.append(("kernel", bytes(m.config.kernel)))
    if m.config.initrd is not None:
        sections.append(("initrd", bytes(m.config.initrd)))
    return write_snapshot(path, sections, [("ram", m.mem.view)], durable=durable)


# -- restoring ---------------------------------------------------------------------------


class Restoring:
    """A snapshot file being restored into a new VM: opened and checked when the VM is made,
    its state loaded when the VM starts (``load``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = SnapshotFile(path)
        try:
            self.meta = read_meta(self.file)
        except BaseException:
            self.file.close()
            raise

    def ram(self, size: int) -> Any:
        return self.file.map_pages("ram", size)

    def check(self, m: Machine) -> None:
        """The machine built from the VM's configuration is the one the snapshot holds."""
        meta = self.meta
        mine = [device_kind(d) for d in m.devices]
        theirs = meta.list("devices", 64)
        if theirs != mine:
            raise SnapshotError(
                f"{self.path}: the snapshot's devices ({', '.join(map(str, theirs))}) are not "
                f"this VM's ({', '.join(mine)}): give it the same NICs and disks"
            )

    def load(self, vm: Vm) -> None:
        """Load the VM's state; under another name than the snapshot's, as a clone."""
        try:
            st = decode(self.file.read("state", STATE_MAX), f"{self.path}: state")
            clone = self.meta.str("name", 200) != vm.name
            load_state(vm, Fields(st, "state"), clone=clone)
        finally:
            self.file.close()


def read_meta(f: SnapshotFile) -> Fields:
    meta = Fields(decode(f.read("meta", META_MAX), f"{f.path}: meta"), "meta")
    kind = meta.str("kind", 32)
    if kind != KIND_VM:
        raise SnapshotError(f"{f.path}: a snapshot of a {kind}, not of one VM")
    return meta


def restore_fields(path: Path) -> dict[str, Any]:
    """The ``VmConfig`` fields of a VM restored from the snapshot at ``path``
    (``hv.restore``)."""
    with SnapshotFile(path) as f:
        meta = read_meta(f)
        kernel, initrd = _images(f, meta.bool("initrd"))
    return {
        "kernel": kernel,
        "initrd": initrd,
        "mem_size": meta.int("mem_size", 1, 1 << 40),
        "cmdline": meta.str("cmdline", 1 << 16),
        "quantum": meta.int("quantum", 1, 1 << 40),
        "name": meta.str("name", 200),
        "stop_on_panic": meta.bool("stop_on_panic"),
        "clock": meta.choice("clock", ("real", "virtual")),
        "mips": meta.int("mips", 1, 1 << 40),
        "seed": meta.opt_int("seed", -(1 << 63), 1 << 64),
        "smp": meta.int("smp", 1, 64),
        "vsock": meta.bool("vsock"),
        "rng": meta.bool("rng"),
        "restore": path,
    }


def disk_entries(path: Path) -> list[Any]:
    """The frozen disks a VM's snapshot recorded (files beside it: hv._disk)."""
    with SnapshotFile(path) as f:
        meta = read_meta(f)
    return meta.list("disk_files", 26 * 27) if meta.has("disk_files") else []


# The kernel and initrd of the files restored last: only a reboot of the restored VM needs
# them, and reading and checking their MiB was most of a restore's time; restoring one file
# again (a test each, clones) takes them from here. Keyed by the open file's identity and
# change time, and the sections' places and CRCs: a file written since is read again.
_images_kept: dict[tuple[object, ...], tuple[bytes, bytes | None]] = {}
IMAGES_KEPT = 2


def _images(f: SnapshotFile, with_initrd: bool) -> tuple[bytes, bytes | None]:
    st = os.fstat(f._fd)
    names = ("kernel", "initrd") if with_initrd else ("kernel",)
    key: tuple[object, ...] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    key += tuple(f.sections.get(name) for name in names)
    images = _images_kept.pop(key, None)
    if images is None:
        kernel = f.read("kernel", IMAGE_MAX)
        images = kernel, f.read("initrd", IMAGE_MAX) if with_initrd else None
    _images_kept[key] = images  # the newest last
    while len(_images_kept) > IMAGES_KEPT:
        del _images_kept[next(iter(_images_kept))]
    return images
