"""A lab's snapshot: a folder holding the lab and each of its VMs at one instant.

Layout of the folder (``LabRun.snapshot(dir)``, ``hv snapshot LAB DIR``)::

    lab.hvsnap          the lab: its tables (as the lab file gave them), its clock, seed and
                        rate, the lab's time, and the fabric (switches' tables, cables'
                        frames in flight and generators, the services' leases)
    vms/NAME.hvsnap     each VM (hv._snapshot): harts, devices, RAM, what waits on its
                        timeline (frames on their way, completions, frames it sent)

On virtual time the lab's timeline holds between two rounds while the snapshot is taken, so
everything in it is at one instant of the lab's time, and ``hv up --restore DIR`` (or
``open_lab(..., restore=DIR)``) continues the same run: the same frames at the same times
(docs/SNAPSHOTS.md). On real time every VM is paused for it, one after another in the lab's
order, and resumed after.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import trio

from hv._errors import ConfigError, SnapshotError, StateError
from hv.hw import Fields, SnapshotFile, write_snapshot
from hv.hw import decode_state as decode
from hv.hw import encode_state as encode
from hv.lab._fabric_state import save_fabric

if TYPE_CHECKING:
    from hv._timeline import Timeline
    from hv._vm import Vm
    from hv.lab._spec import LabSpec


class LabRun(Protocol):
    """What this module reads of a running lab (``hv.lab._runner.LabRun``)."""

    spec: LabSpec
    vms: dict[str, Vm]
    switches: dict[str, Any]
    impairments: dict[str, Any]
    services: dict[str, Any]
    vxlan: dict[str, Any]
    timeline: Timeline | None
    shards: Any


LAB_FILE = "lab.hvsnap"
VM_DIR = "vms"
KIND_LAB = "lab"
META_MAX = 16 << 20
STATE_MAX = 256 << 20


@dataclass(frozen=True)
class LabSnapshotInfo:
    """What ``LabRun.snapshot`` wrote: the folder, its bytes on disk, how long the lab was
    held, and the lab's time (ps; None on real time)."""

    path: Path
    bytes: int
    paused_s: float
    lab_ps: int | None


def vm_file(folder: Path, name: str) -> Path:
    return folder / VM_DIR / f"{name}.hvsnap"


def _plain(value: Any) -> Any:
    """The lab's tables as JSON values (paths as text)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(f"a lab key holds {type(value).__name__}, which a snapshot cannot keep")


def _check_snapshottable(run: LabRun) -> None:
    if run.shards is not None:
        raise ConfigError(
            "a lab over several processes (shards) cannot be snapshotted yet: run it in one"
        )
    if run.vxlan or run.spec.hosts:
        raise ConfigError("a lab with VXLAN uplinks or [hosts] cannot be snapshotted")
    stopped = [n for n, vm in run.vms.items() if vm.machine.stop_info is not None]
    if stopped:
        raise StateError(
            f"VM {', '.join(stopped)} stopped", "a lab whose VMs all run (a snapshot holds them)"
        )


async def snapshot_lab(run: LabRun, folder: Path, *, durable: bool = True) -> LabSnapshotInfo:
    _check_snapshottable(run)
    folder = Path(folder)
    (folder / VM_DIR).mkdir(parents=True, exist_ok=True)
    tl = run.timeline
    started = trio.current_time()
    if tl is not None:
        async with tl.held():
            size = await _write(run, folder, durable)
            lab_ps: int | None = tl.now_ps
    else:
        vms = list(run.vms.values())
        was = {vm.name: vm._pause_requested for vm in vms}
        for vm in vms:
            vm.pause()
        try:
            for vm in vms:
                await vm._wait_paused()
            size = await _write(run, folder, durable)
        finally:
            for vm in vms:
                if not was[vm.name] and vm.machine.stop_info is None:
                    vm.resume()
        lab_ps = None
    return LabSnapshotInfo(folder, size, trio.current_time() - started, lab_ps)


async def _write(run: LabRun, folder: Path, durable: bool) -> int:
    _check_snapshottable(run)
    spec = run.spec
    size = 0
    for name, vm in run.vms.items():
        size += (await vm._snapshot_now(vm_file(folder, name), durable)).bytes
    tl = run.timeline
    meta = {
        "kind": KIND_LAB,
        "hv": _version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "name": spec.name,
        "base": str(spec.base),
        "doc": _plain(spec.doc) if spec.doc is not None else None,
        "clock": spec.clock,
        "seed": spec.seed,
        "mips": spec.mips,
        "lookahead_ps": spec.lookahead_ps,
        "vms": list(run.vms),
    }
    state = {
        "timeline": tl.save_clock() if tl is not None else None,
        "fabric": save_fabric(run),
    }
    size += write_snapshot(
        folder / LAB_FILE, [("meta", encode(meta)), ("state", encode(state))], durable=durable
    )
    return size


def _version() -> str:
    from hv._snapshot import _hv_version

    return _hv_version()


class LabRestore:
    """A lab snapshot folder opened to restore: its tables and what its state needs."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        path = self.folder / LAB_FILE
        if not path.is_file():
            raise SnapshotError(
                f"{self.folder}: not a lab snapshot (no {LAB_FILE}; `hv snapshot LAB DIR` "
                "writes one)"
            )
        with SnapshotFile(path) as f:
            self.meta = Fields(decode(f.read("meta", META_MAX), f"{path}: meta"), "meta")
            self._state = f.read("state", STATE_MAX)
        self.path = path
        kind = self.meta.str("kind", 32)
        if kind != KIND_LAB:
            raise SnapshotError(f"{path}: a snapshot of a {kind}, not of a lab")
        self.vms = [str(n) for n in self.meta.list("vms", 1 << 20)]
        for name in self.vms:
            p = vm_file(self.folder, name)
            if p.is_symlink() or not p.is_file():
                raise SnapshotError(f"{self.folder}: VM {name!r} has no snapshot at {p}")

    def spec_doc(self) -> tuple[dict[str, Any], Path]:
        if not self.meta.given("doc"):
            raise SnapshotError(f"{self.path}: the lab's tables are missing")
        doc = self.meta.sub("doc").table()  # checked by parse_doc, as any lab file is
        return doc, Path(self.meta.str("base"))

    def spec(self, name: str | None = None, jobs: int | None = None) -> LabSpec:
        """The lab to build again: its tables, under their name (or ``name``), with the
        clock, seed and rate it ran with."""
        from hv.lab._spec import check_lab_name, parse_doc

        doc, base = self.spec_doc()
        m = self.meta
        clock = m.choice("clock", ("real", "virtual"))
        spec = parse_doc(doc, base, m.str("name", 200), clock=clock)
        spec = dataclasses.replace(spec, name=check_lab_name(m.str("name", 200), "name"))
        spec = dataclasses.replace(
            spec,
            seed=m.opt_int("seed", -(1 << 63), 1 << 64),
            mips=m.int("mips", 1, 1 << 40),
            lookahead_ps=m.int("lookahead_ps", 1, 1 << 62),
            jobs=jobs,
        )
        if name is not None:
            spec = dataclasses.replace(spec, name=check_lab_name(name, "-p/--project-name"))
        return spec

    def state(self) -> Fields:
        return Fields(decode(self._state, f"{self.path}: state"), "state")
