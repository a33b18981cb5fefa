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

from hv._errors import ConfigError, HostError

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
