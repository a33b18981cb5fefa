"""Opening a disk from its spec:
``FILE[,ro][,format=raw|qcow2][,snapshot][,serial=ID][,backing-dir=DIR]...``.

``parse_disk_spec`` turns the text (``hv run --disk``, a lab's TOML) into a ``DiskSpec``;
``open_disk`` opens it: the format is detected from the file's first bytes when not given
(``QFI\\xfb``: qcow2, anything else: raw; a probed raw image refuses writes that would make it
look like qcow2), read-only with ``ro``, and with ``snapshot`` the image is opened read-only
under a temporary qcow2 overlay that takes the writes and is gone when the disk is closed
(QEMU's ``-snapshot``): any number of VMs can boot from one base image. A qcow2 image's
backing files are followed only into the image's own folder and the ``backing-dir`` folders
(``blockdev.qcow2.follow_backing``). A comma in FILE is written twice (``a,,b.img`` is the
file ``a,b.img``), as in QEMU.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from blockdev._base import BlockBackend, BlockError
from blockdev.qcow2 import Qcow2Image, create_qcow2, detect_format, open_image

__all__ = [
    "FORMATS",
    "SERIAL_MAX",
    "DiskSpec",
    "check_serial",
    "detect_format",
    "open_disk",
    "parse_disk_spec",
]

FORMATS = ("raw", "qcow2")
SERIAL_MAX = 20  # bytes: what VIRTIO_BLK_T_GET_ID answers
KNOWN = "ro, format=, snapshot, serial=, backing-dir="


def check_serial(serial: str) -> bytes:
    """A disk's serial number (what virtio-blk's GET_ID answers) as its bytes: printable
    ASCII, at most ``SERIAL_MAX`` bytes; a ``ValueError`` saying why not."""
    if not serial.isascii():
        raise ValueError(f"serial {serial!r} is not ASCII (a serial is printable ASCII)")
    if not serial.isprintable():
        raise ValueError(f"serial {serial!r} is not printable (a serial is printable ASCII)")
    if len(serial) > SERIAL_MAX:
        raise ValueError(f"serial {serial!r} is {len(serial)} bytes, longer than {SERIAL_MAX}")
    return serial.encode("ascii")


@dataclass(frozen=True)
class DiskSpec:
    """A disk to open: ``parse_disk_spec``'s result, or built in code (a lab file's table);
    a ``ValueError`` if the format or the serial cannot be."""

    path: str
    read_only: bool = False
    format: str | None = None  # None: detect
    snapshot: bool = False
    serial: str | None = None
    backing_dirs: tuple[str, ...] = ()  # more folders backing files may be in

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("no file name")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be raw or qcow2, not {self.format!r}")
        if self.serial is not None:
            check_serial(self.serial)
        if not all(self.backing_dirs):
            raise ValueError("backing-dir needs a value")

    def __str__(self) -> str:
        parts = [self.path.replace(",", ",,")]
        if self.read_only:
            parts.append("ro")
        if self.format:
            parts.append(f"format={self.format}")
        if self.snapshot:
            parts.append("snapshot")
        if self.serial is not None:
            parts.append(f"serial={self.serial.replace(',', ',,')}")
        parts += [f"backing-dir={d.replace(',', ',,')}" for d in self.backing_dirs]
        return ",".join(parts)


def _split(text: str) -> list[str]:
    """Split at commas; a doubled comma is a comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text.startswith(",,", i):
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def parse_disk_spec(text: str) -> DiskSpec:
    """``FILE[,ro][,format=raw|qcow2][,snapshot][,serial=ID][,backing-dir=DIR]...`` ->
    ``DiskSpec``; ``ValueError`` naming the bad part."""
    where = f"--disk {text!r}"
    path, *options = _split(text)
    read_only = snapshot = False
    fmt: str | None = None
    serial: str | None = None
    backing_dirs: list[str] = []
    seen: set[str] = set()
    for option in options:
        key, eq, value = option.partition("=")
        if not option:
            raise ValueError(f"{where}: empty option (known: {KNOWN})")
        if key == "backing-dir" and value:
            backing_dirs.append(value)
            continue
        if key in seen:
            raise ValueError(f"{where}: {key} given twice")
        seen.add(key)
        if key in ("ro", "snapshot"):
            if eq:
                raise ValueError(f"{where}: {key} takes no value (not {option!r})")
            if key == "ro":
                read_only = True
            else:
                snapshot = True
        elif key == "format" and eq:
            fmt = value
        elif key == "serial" and eq:
            serial = value
        elif key in ("format", "serial", "backing-dir"):
            raise ValueError(f"{where}: {key} needs a value ({key}=...)")
        else:
            raise ValueError(f"{where}: unknown option {option} (known: {KNOWN})")
    try:
        return DiskSpec(path, read_only, fmt, snapshot, serial, tuple(backing_dirs))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


async def open_disk(
    spec: DiskSpec | str,
    base_dir: str | os.PathLike[str] | None = None,
    *,
    owner: str | None = None,
    backing_dirs: Sequence[str | os.PathLike[str]] = (),
) -> BlockBackend:
    """Open the disk ``spec`` says (a relative FILE is relative to ``base_dir``, else to the
    current directory). ``BlockError`` naming the file for what cannot be opened, or what is
    in use: one writer or any number of readers (``ro``, ``snapshot``, backing files) per
    image, here and across processes, QEMU's included (``blockdev.raw.lock_image``).
    ``owner`` names this user in the errors of others (``vms.a.disks[0]``). Backing files
    may be in FILE's folder, the spec's ``backing-dir`` folders and ``backing_dirs`` (all
    relative to ``base_dir``, as FILE)."""
    if isinstance(spec, str):
        spec = parse_disk_spec(spec)

    def where(name: str | os.PathLike[str]) -> str:
        name = os.fspath(name)
        if base_dir is not None and not os.path.isabs(name):
            return os.path.join(os.fspath(base_dir), name)
        return name

    path = where(spec.path)
    dirs = [where(d) for d in (*spec.backing_dirs, *backing_dirs)]
    detected = await trio.to_thread.run_sync(detect_format, path)
    if spec.format == "qcow2" and detected != "qcow2":
        raise BlockError(f"{path}: format=qcow2, but the file is not a qcow2 image (no magic)")
    fmt = spec.format or detected
    read_only = spec.read_only or spec.snapshot
    probed = spec.format is None
    disk = await open_image(path, fmt, read_only, probed=probed, owner=owner, backing_dirs=dirs)
    if not spec.snapshot or spec.read_only:
        return disk
    try:
        return await _snapshot(disk, path, fmt, owner)
    except BaseException:
        await disk.close()
        raise


async def _snapshot(base: BlockBackend, path: str, fmt: str, owner: str | None) -> Qcow2Image:
    """A temporary qcow2 overlay over ``base`` (read-only): created in $TMPDIR, opened, and
    unlinked at once, so it goes away with its file descriptor, even if hv is killed."""
    try:
        fd, overlay = tempfile.mkstemp(prefix="hv-snapshot-", suffix=".qcow2")
    except OSError as exc:
        where = tempfile.gettempdir()
        raise BlockError(f"{path}: cannot create a snapshot overlay in {where}: {exc}") from exc
    os.close(fd)
    try:
        await trio.to_thread.run_sync(
            lambda: create_qcow2(overlay, base.size, os.path.abspath(path), fmt, overwrite=True)
        )
        image = await Qcow2Image.open(overlay, backing=base, owner=owner)
    finally:
        os.unlink(overlay)
    image.label = f"snapshot overlay (deleted {overlay})"
    return image
