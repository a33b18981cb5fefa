"""A VM's disks in code: ``VmConfig(disks=[Disk(backend, serial="...")])``.

A ``Disk`` is an opened ``blockdev`` backend (``await blockdev.open_disk("x.qcow2,snapshot")``)
behind a virtio-blk device; the caller opens it and closes it after the VM has stopped (the
lab runner and ``hv run --disk`` do both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from hv._errors import ConfigError

if TYPE_CHECKING:
    from blockdev import BlockBackend
    from hv.board._device import Device

SERIAL_MAX = 20  # bytes: VIRTIO_BLK_T_GET_ID


@dataclass(frozen=True)
class Disk:
    backend: BlockBackend
    serial: str | None = None

    def __post_init__(self) -> None:
        if self.serial is not None and (
            len(self.serial.encode()) > SERIAL_MAX or not self.serial.isascii()
        ):
            raise ConfigError(f"disk serial {self.serial!r}: at most {SERIAL_MAX} ASCII bytes")

    def device(self, vm: str, index: int) -> Device:
        """The virtio-blk device for this disk, named ``VM.vdX`` (vda, vdb, ...)."""
        from hv.virtio._blk import virtio_blk

        return virtio_blk(f"{vm}.vd{chr(ord('a') + index)}", self.backend, self.serial)


async def open_disks(
    specs: Sequence[str],
    base: Path | None = None,
    owner: str | None = None,
    backing_dirs: Sequence[str | Path] = (),
) -> list[Disk]:
    """Open ``--disk`` specs (``FILE[,ro][,format=raw|qcow2][,snapshot][,serial=ID]``); a bad
    spec or file, or one in use (one writer or any number of readers per image), is a
    ConfigError naming it. ``owner`` (``vms.a``) names the disks in the errors of others who
    find them in use (``vms.a.disks[0]``; default ``--disk SPEC``). qcow2 backing files are
    followed into each image's folder and ``backing_dirs`` (``blockdev.open_disk``). On an
    error, what was opened is closed again."""
    from blockdev import BlockError
    from blockdev.open import open_disk, parse_disk_spec

    disks: list[Disk] = []
    try:
        for i, text in enumerate(specs):
            name = f"{owner}.disks[{i}]" if owner is not None else f"--disk {text}"
            try:
                spec = parse_disk_spec(text)
                backend = await open_disk(spec, base, owner=name, backing_dirs=backing_dirs)
            except (ValueError, BlockError) as e:
                raise ConfigError(str(e)) from None
            disks.append(Disk(backend, spec.serial))
    except BaseException:
        await close_disks(disks)
        raise
    return disks


async def close_disks(disks: Sequence[Disk]) -> None:
    with trio.CancelScope(shield=True):
        for disk in disks:
            await disk.backend.close()
