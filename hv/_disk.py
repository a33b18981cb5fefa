"""A VM's disks in code: ``VmConfig(disks=[Disk(backend, serial="...")])``.

A ``Disk`` is an opened ``blockdev`` backend (``await blockdev.open_disk("x.qcow2,snapshot")``)
behind a virtio-blk device; the caller opens it and closes it after the VM has stopped (the
lab runner and ``hv run --disk`` do both).

In a snapshot, ``freeze_disks`` writes each disk as it is into the snapshot directory and
returns the entries to record (JSON values); ``open_frozen_disks`` opens them again for a
restored VM or a clone, each over a private overlay (``blockdev.freeze``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from hv._errors import ConfigError, HostError, SnapshotError

if TYPE_CHECKING:
    from blockdev import BlockBackend, DiskSpec
    from hv.hw import Device


@dataclass(frozen=True)
class Disk:
    backend: BlockBackend
    serial: str | None = None

    def __post_init__(self) -> None:
        from blockdev.open import check_serial

        try:
            if self.serial is not None:
                check_serial(self.serial)
        except ValueError as e:
            raise ConfigError(f"disk {e}") from None

    def device(self, vm: str, index: int) -> Device:
        """The virtio-blk device for this disk, named ``VM.vdX`` (vda, vdb, ...)."""
        from hv.virtio import virtio_blk

        return virtio_blk(f"{vm}.vd{disk_letters(index)}", self.backend, self.serial)


def disk_letters(index: int) -> str:
    """Linux's disk names: 0 -> a, 25 -> z, 26 -> aa, 701 -> zz, 702 -> aaa."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


async def open_disks(
    specs: Sequence[str | DiskSpec],
    base: Path | None = None,
    owner: str | None = None,
    backing_dirs: Sequence[str | Path] = (),
) -> list[Disk]:
    """Open disks: ``--disk`` specs (``FILE[,ro][,format=raw|qcow2][,snapshot][,serial=ID]``)
    or ``DiskSpec``s (a lab's, read from its file); a bad spec or file, or one in use (one
    writer or any number of readers per image), is a ConfigError naming it. ``owner``
    (``vms.a``) names the disks in the errors of others who find them in use
    (``vms.a.disks[0]``; default ``--disk SPEC``). qcow2 backing files are followed into each
    image's folder and ``backing_dirs`` (``blockdev.open_disk``). On an error, what was
    opened is closed again."""
    from blockdev import BlockError
    from blockdev.open import open_disk, parse_disk_spec

    disks: list[Disk] = []
    try:
        for i, text in enumerate(specs):
            name = f"{owner}.disks[{i}]" if owner is not None else f"--disk {text}"
            try:
                spec = parse_disk_spec(text) if isinstance(text, str) else text
                backend = await open_disk(spec, base, owner=name, backing_dirs=backing_dirs)
            except (ValueError, BlockError) as e:  # a lab's disk: say which key
                raise ConfigError(f"{name}: {e}" if owner is not None else str(e)) from None
            disks.append(Disk(backend, spec.serial))
    except BaseException:
        await close_disks(disks)
        raise
    return disks


async def freeze_disks(
    disks: Sequence[Disk], snapshot_dir: str | os.PathLike[str], prefix: str = ""
) -> list[dict[str, object]]:
    """Freeze every disk into ``snapshot_dir`` as ``PREFIXvda.raw``, ``PREFIXvdb.qcow2``, ...
    (``prefix``: letters, digits, ``_.-``; one per VM when several share a directory) and
    return the entries to record, in order. Call it with the VM paused and its disks drained
    (no request in flight), then ``sync_disks`` once it runs again. A ``HostError`` if a
    file cannot be written."""
    from blockdev import BlockError, freeze

    entries: list[dict[str, object]] = []
    for i, disk in enumerate(disks):
        name = f"{prefix}vd{disk_letters(i)}"
        try:
            entry = await freeze(disk.backend, snapshot_dir, name, serial=disk.serial)
        except BlockError as e:
            raise HostError(f"snapshot of disk {name}: {e}") from None
        entries.append(entry.to_json())
    return entries


async def sync_disks(snapshot_dir: str | os.PathLike[str], entries: Sequence[object]) -> None:
    """Make what ``freeze_disks`` wrote durable (fsync; the VM need not be paused)."""
    from blockdev import BlockError, FrozenDisk, sync_frozen

    try:
        frozen = [FrozenDisk.from_json(e, f"disks[{i}]") for i, e in enumerate(entries)]
        await sync_frozen(snapshot_dir, frozen)
    except BlockError as e:
        raise HostError(f"snapshot's disks: {e}") from None


async def open_frozen_disks(
    entries: Sequence[object],
    snapshot_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    backing_dirs: Sequence[str | os.PathLike[str]] = (),
    owner: str = "restored VM",
) -> list[Disk]:
    """The disks a snapshot recorded (``freeze_disks``'s entries, read from the snapshot),
    each over a new private qcow2 overlay in ``work_dir`` (the caller removes those), so
    neither the snapshot nor any other restore or clone sees what this VM writes. Base images
    outside the snapshot directory must lie in ``backing_dirs``, unchanged since the
    snapshot. A ``SnapshotError`` naming the disk and saying what is wrong (a hostile or
    damaged snapshot directory is refused); on an error, what was opened is closed again
    and its overlays removed."""
    from blockdev import BlockError, FrozenDisk, open_frozen

    disks: list[Disk] = []
    try:
        for i, value in enumerate(entries):
            where = f"{owner}.disks[{i}]"
            try:
                entry = FrozenDisk.from_json(value, where)
                backend = await open_frozen(
                    entry, snapshot_dir, work_dir, backing_dirs=backing_dirs, owner=where
                )
            except BlockError as e:
                raise SnapshotError(f"snapshot disk: {e}") from None
            disks.append(Disk(backend, entry.serial))
    except BaseException:
        await close_disks(disks)
        for disk in disks:
            with contextlib.suppress(OSError):
                os.unlink(disk.backend.path)  # type: ignore[attr-defined]
        raise
    return disks


async def close_disks(disks: Sequence[Disk]) -> None:
    """Close every disk, even when some fail (a qcow2 image writes its metadata back when
    closed, so stopping at the first failure would leave the others' unwritten); then a
    ``HostError`` with one line per disk that failed (ENOSPC, EFBIG, EIO)."""
    from blockdev import BlockError

    failed: list[str] = []
    bug: BaseException | None = None
    with trio.CancelScope(shield=True):
        for disk in disks:
            try:
                await disk.backend.close()
            except (BlockError, OSError) as e:
                what = e if isinstance(e, BlockError) else _os_error(e)
                failed.append(f"  {disk.backend.describe()}: {what}")
            except Exception as e:  # a host bug: its traceback, once every disk is closed
                bug = bug or e
    if bug is not None:
        raise bug
    if failed:
        what = "a disk" if len(failed) == 1 else f"{len(failed)} disks"
        lines = "\n".join(failed)
        raise HostError(f"{what} failed to close (the last writes may be lost):\n{lines}")


def _os_error(e: OSError) -> str:
    import errno

    return f"{errno.errorcode.get(e.errno or 0, e.errno)} ({e.strerror})"
