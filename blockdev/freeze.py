"""Disks in snapshots: ``freeze`` a running disk into a snapshot directory, ``open_frozen`` it
again (a private overlay per restore or clone), and refuse snapshot directories that point
where they should not.

Theory of operation. A frozen disk is one file in the snapshot directory, ``NAME.raw`` or
``NAME.qcow2``, that holds the disk as it was at the freeze and is never written again. What
the running VM writes, it writes where it always did: the freeze copies the disk's *writable
top layer* and leaves the VM's backend alone. The read-only layers below (a base image under a
``,snapshot`` overlay, the backing chain of a qcow2 image) are not copied: the frozen file's
backing chain names them by absolute path, and the entry records each one's size and
modification time, so a restore refuses a base that has changed since. By backend:

- a writable raw file: a sparse copy (``NAME.raw``);
- a writable qcow2 image, the temporary overlay of a ``,snapshot`` disk included (its file is
  already unlinked; the copy reads the open descriptor): a copy of the image file
  (``NAME.qcow2``) whose backing file name is rewritten to the absolute path of the image
  the VM has open below it;
- a read-only disk (``ro``): nothing to copy; an empty qcow2 overlay over it (``NAME.qcow2``);
- a ``MemoryDisk``, or any other backend: its bytes, sparse (``NAME.raw``).

The copy is ``FICLONE`` (a reflink: O(1) on btrfs, XFS, bcachefs) where the file system can,
else ``copy_file_range`` over the data extents ``SEEK_DATA``/``SEEK_HOLE`` find, so holes stay
holes and nothing passes through user space. A qcow2 image writes its metadata back first,
under its lock. The copy is not synced: it is exact without that, and ``sync_frozen`` makes
it durable once the VM runs again.

Why a copy, and not a switch of the running VM to a new overlay over its frozen file (QEMU's
external snapshot, which copies nothing). Measured on the development machine (2 vCPUs, ext4
without reflink, page cache warm; ``python bench/freeze.py``,
3 invocations of 5 runs each; milliseconds; 50 MiB written in 64 KiB pieces scattered over
1 GiB, 8 MiB in the overlay)::

                                 copy: paused   then fsync   switch: flush   then paused
    raw, 1 GiB sparse               22-28          38-57         39-48            3-10
    qcow2, 1 GiB                    48-73          30-33         32-52            2-5
    ,snapshot overlay (qcow2)       10-28           6-14         (none: its file is unlinked,
                                                                   so it must be copied anyway)

The qcow2 copy's pause includes writing its metadata back (about 30 ms: the data is synced
before the L2 tables that point at it); a switch needs that flush too before another reader
may use the frozen file, but could leave it until the VM runs again, pausing it 2-10 ms.
A switch is faster by 20-45 ms at these sizes, and grows nothing with the data; it was
still not chosen, because of what it does to the disk the user named. After a switch
``data.img`` is the snapshot's (the VM must never write it again, and neither may the next
``hv up`` of the same lab, which would silently change every snapshot taken of it), while the
VM's later writes go to an overlay somewhere else: the user's disk silently stops receiving
writes at the first snapshot. Each further snapshot adds a layer to the chain (64 at most)
and each read walks it; and the overlay files the snapshots depend on would live outside the
snapshot directory, in a run's state. The copy keeps the disk's meaning, keeps the snapshot
directory whole (one file per disk, plus read-only bases), and its cost is what the top layer
holds: the guest's writes since boot for a ``,snapshot`` disk (the lab's usual disk, and the
Debian images'), everything for a writable raw or qcow2 image. On a file system with reflinks
that cost is O(1) too; on ext4 a writable image with gigabytes written pauses the VM for about
half a second per GiB (say so in the docs: use ``,snapshot`` disks, or XFS/btrfs).

Restore: ``open_frozen`` makes a fresh qcow2 overlay in a directory the caller names whose
backing file is the frozen file, opened read-only: writes never reach the snapshot, and each
restore and each clone gets its own (N clones: N small files, each growing only with what its
guest writes). Hostile snapshot directories: the entry's file must be a plain name of a
regular file (not a symlink) in the snapshot directory, in the format and of the size the
entry says; its backing chain is followed by ``qcow2.follow_backing`` with the snapshot
directory and the caller's ``backing_dirs`` as the only allowed folders (no loops, no block
devices, no host file nobody named), and every file of the chain outside the snapshot
directory must be one the entry recorded, unchanged since.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from blockdev._base import SECTOR, BlockBackend, BlockError
from blockdev.memory import MemoryDisk
from blockdev.qcow2 import (
    EXT_END,
    MAX_BACKING_NAME,
    Qcow2Image,
    create_qcow2,
    detect_format,
    image_info,
    open_image,
    parse_header,
)
from blockdev.raw import RawFile

__all__ = ["BaseFile", "FrozenDisk", "freeze", "open_frozen", "sync_frozen"]

FICLONE = 0x40049409  # ioctl: share the source's extents (a reflink)
COPY_CHUNK = 64 << 20  # bytes one copy_file_range call may move
ZERO_CHUNK = 1 << 20  # generic backends are read and written in pieces this big
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class BaseFile:
    """A read-only file of a frozen disk's backing chain, outside the snapshot directory: its
    absolute path, and its size and modification time at the freeze."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FrozenDisk:
    """What a snapshot records of a disk: the file in the snapshot directory (a plain name),
    its format, the disk's size, its serial, whether the VM had it read-only, and the base
    files below it (``BaseFile``, nearest first)."""

    file: str
    format: str
    size: int
    serial: str | None = None
    read_only: bool = False
    bases: tuple[BaseFile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "format": self.format,
            "size": self.size,
            "serial": self.serial,
            "read_only": self.read_only,
            "bases": [[b.path, b.size, b.mtime_ns] for b in self.bases],
        }

    @classmethod
    def from_json(cls, value: object, where: str = "disk") -> FrozenDisk:
        """Read an entry written by ``to_json`` from a file anyone may have written:
        ``BlockError`` naming the bad field."""

        def bad(what: str) -> BlockError:
            return BlockError(f"{where}: {what}")

        if not isinstance(value, dict):
            raise bad("not a table")
        if set(value) != {"file", "format", "size", "serial", "read_only", "bases"}:
            raise bad(f"fields {sorted(value)} are not those of a disk entry")
        file, fmt, size = value["file"], value["format"], value["size"]
        serial, read_only, bases = value["serial"], value["read_only"], value["bases"]
        if not isinstance(file, str) or not _NAME.fullmatch(file):
            raise bad(f"file {file!r} is not a plain file name in the snapshot directory")
        if fmt not in ("raw", "qcow2"):
            raise bad(f"format {fmt!r} is not raw or qcow2")
        if type(size) is not int or size < 0 or size % SECTOR or size >= 1 << 63:
            raise bad(f"size {size!r} is not a disk size")
        if serial is not None and not isinstance(serial, str):
            raise bad("serial is not text")
        if type(read_only) is not bool:
            raise bad("read_only is not true or false")
        if not isinstance(bases, list) or len(bases) > 64:
            raise bad("bases is not a list of at most 64 files")
        out = []
        for i, base in enumerate(bases):
            ok = isinstance(base, list) and len(base) == 3
            if ok:
                path, bsize, mtime = base
                ok = isinstance(path, str) and os.path.isabs(path) and "\0" not in path
                ok = ok and type(bsize) is int and type(mtime) is int and bsize >= 0
            if not ok:
                raise bad(f"bases[{i}] is not [absolute path, size, mtime_ns]")
            out.append(BaseFile(path, bsize, mtime))
        return cls(file, fmt, size, serial, read_only, tuple(out))


# -- freezing -----------------------------------------------------------------------------


def _layer_fd(backend: BlockBackend) -> int:
    return backend._io.fd  # type: ignore[attr-defined, no-any-return]


def _fd_path(fd: int) -> str:
    """The absolute path the kernel has for an open file (what it was opened as, resolved)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _bases(backend: BlockBackend | None) -> tuple[BaseFile, ...]:
    """The read-only files of a backing chain, nearest first, as they are open now."""
    out = []
    while backend is not None:
        if not isinstance(backend, (RawFile, Qcow2Image)):
            raise BlockError(f"{backend.describe()}: a backing disk that is not a file")
        fd = _layer_fd(backend)
        st = os.fstat(fd)
        out.append(BaseFile(_fd_path(fd), os.lseek(fd, 0, os.SEEK_END), st.st_mtime_ns))
        backend = backend.backing if isinstance(backend, Qcow2Image) else None
    return tuple(out)


def _create(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    except FileExistsError:
        raise BlockError(f"{path}: already exists (one snapshot per directory)") from None
    except OSError as exc:
        raise BlockError(f"{path}: cannot create: {exc.strerror}") from exc


def copy_file(src: int, dst: int, length: int) -> str:
    """Copy ``length`` bytes of open file ``src`` to the new file ``dst`` (blocking): a
    reflink where the file system shares extents, else its data extents with
    ``copy_file_range`` (holes stay holes; a file without SEEK_DATA is copied whole, all-zero
    pieces skipped). Says which it did: ``"reflink"`` or ``"copy"``."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return "reflink"
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
            raise
    os.ftruncate(dst, length)
    at = 0
    while at < length:
        try:
            data = os.lseek(src, at, os.SEEK_DATA)
            hole = min(os.lseek(src, data, os.SEEK_HOLE), length)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data past ``at``
                break
            if exc.errno != errno.EINVAL:
                raise
            _copy_dense(src, dst, at, length)
            break
        _copy_range(src, dst, data, hole - data)
        at = hole
    return "copy"


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(
                src, dst, min(COPY_CHUNK, length - done), offset + done, offset + done
            )
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            _copy_dense(src, dst, offset + done, offset + length)
            return
        if n == 0:  # the source is shorter than it was: the rest reads as zeroes
            return
        done += n


def _copy_dense(src: int, dst: int, start: int, end: int) -> None:
    at = start
    while at < end:
        data = os.pread(src, min(ZERO_CHUNK, end - at), at)
        if not data:
            return
        if data.count(0) != len(data):
            view = memoryview(data)
            while view:
                view = view[os.pwrite(dst, view, at + len(data) - len(view)) :]
        at += len(data)


def _extensions_end(first: bytes, header_length: int) -> int:
    """Where a qcow2 header's extensions end (after the end marker) in its first cluster."""
    at = header_length
    while at + 8 <= len(first):
        kind, length = struct.unpack_from(">II", first, at)
        at += 8
        if kind == EXT_END:
            return at
        at += (length + 7) & ~7
    return at


def set_backing_name(fd: int, path: str, name: str) -> None:
    """Rewrite the backing file name in the header of the qcow2 image open as ``fd``
    (blocking; ``qemu-img rebase -u``): the name goes right after the header extensions,
    where qemu and ``create_qcow2`` put it, and must fit in the first cluster."""
    start = os.pread(fd, 2 << 20, 0)
    header = parse_header(start, path)
    first = start[: header.cluster_size].ljust(header.cluster_size, b"\0")
    encoded = os.fsencode(name)
    at = _extensions_end(first, header.header_length)
    if not encoded or len(encoded) > MAX_BACKING_NAME or at + len(encoded) > len(first):
        raise BlockError(f"{path}: backing file name {name!r} does not fit in the header")
    old_end = header.backing_file_offset + header.backing_file_size
    clear = bytes(max(0, old_end - at))
    if clear:
        os.pwrite(fd, clear, at)
    os.pwrite(fd, encoded, at)
    os.pwrite(fd, struct.pack(">QI", at, len(encoded)), 8)


def _freeze_file(layer: RawFile | Qcow2Image, path: str) -> str:
    """Copy the writable top layer into ``path`` (blocking); rebase a qcow2 copy's backing
    name onto the absolute path of the file the VM has open below it."""
    src = _layer_fd(layer)
    dst = _create(path)
    try:
        how = copy_file(src, dst, os.lseek(src, 0, os.SEEK_END))
        if isinstance(layer, Qcow2Image) and layer.backing is not None:
            below = _fd_path(_layer_fd(layer.backing))
            if layer.header.backing_file != below:
                set_backing_name(dst, path, below)
    except BaseException:
        os.close(dst)
        os.unlink(path)
        raise
    os.close(dst)
    return how


def _write_pages(path: str, size: int, pages: list[tuple[int, bytes]]) -> None:
    fd = _create(path)
    try:
        os.ftruncate(fd, size)
        for offset, data in pages:
            if data.count(0) != len(data):
                os.pwrite(fd, data, offset)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


async def _read_all(backend: BlockBackend) -> list[tuple[int, bytes]]:
    out = []
    for offset in range(0, backend.size, ZERO_CHUNK):
        data = await backend.read(offset, min(ZERO_CHUNK, backend.size - offset))
        if data.count(0) != len(data):
            out.append((offset, data))
    return out


async def freeze(
    backend: BlockBackend,
    snapshot_dir: str | os.PathLike[str],
    name: str,
    *,
    serial: str | None = None,
) -> FrozenDisk:
    """Write the disk ``backend`` holds now into ``snapshot_dir`` as ``NAME.raw`` or
    ``NAME.qcow2`` (``name``: letters, digits, ``_.-``), and return the entry to record.
    The backend goes on as it was. Call it with no request in flight on the disk (the VM
    paused, its virtio-blk drained); a qcow2 image is locked for the copy. ``BlockError``
    if the file cannot be written or exists already."""
    if not _NAME.fullmatch(name):
        raise BlockError(f"disk name {name!r}: use letters, digits and _.- (at most 64)")
    where = os.fspath(snapshot_dir)
    if isinstance(backend, (RawFile, Qcow2Image)) and not backend.read_only:
        fmt = "raw" if isinstance(backend, RawFile) else "qcow2"
        path = os.path.join(where, f"{name}.{fmt}")
        below = backend.backing if isinstance(backend, Qcow2Image) else None
        bases = await trio.to_thread.run_sync(_bases, below)  # (refuses what is not a file)
        if isinstance(backend, Qcow2Image):
            async with backend._lock:  # its metadata on file, and no request until copied
                backend._check_open()
                await backend._writeback()
                await trio.to_thread.run_sync(_freeze_file, backend, path)
        else:
            await trio.to_thread.run_sync(_freeze_file, backend, path)
        return FrozenDisk(f"{name}.{fmt}", fmt, backend.size, serial, False, bases)
    if isinstance(backend, (RawFile, Qcow2Image)):  # read-only: nothing changes it
        path = os.path.join(where, f"{name}.qcow2")
        bases = await trio.to_thread.run_sync(_bases, backend)
        fmt = "raw" if isinstance(backend, RawFile) else "qcow2"

        def overlay() -> None:
            if os.path.lexists(path):
                raise BlockError(f"{path}: already exists (one snapshot per directory)")
            create_qcow2(path, backend.size, bases[0].path, fmt)
            os.chmod(path, 0o444)

        await trio.to_thread.run_sync(overlay)
        return FrozenDisk(f"{name}.qcow2", "qcow2", backend.size, serial, True, bases)
    # a MemoryDisk (its pages, taken now), or a backend of unknown kind (read whole)
    await backend.flush()
    if isinstance(backend, MemoryDisk):
        pages = backend.pages()
    else:
        pages = await _read_all(backend)
    path = os.path.join(where, f"{name}.raw")
    await trio.to_thread.run_sync(_write_pages, path, backend.size, pages)
    return FrozenDisk(f"{name}.raw", "raw", backend.size, serial, backend.read_only)


async def sync_frozen(snapshot_dir: str | os.PathLike[str], entries: Sequence[FrozenDisk]) -> None:
    """Make the frozen files and the directory durable (``fsync``): ``freeze`` leaves that
    out, since it is not needed for the copy to be exact, and the VM need not stay paused
    for it. ``BlockError`` if the host fails."""
    where = os.fspath(snapshot_dir)

    def fsync(path: str, flags: int) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BlockError(f"{path}: cannot sync: {exc.strerror}") from exc

    def sync() -> None:
        for entry in entries:
            fsync(os.path.join(where, entry.file), os.O_NOFOLLOW)
        fsync(where, os.O_DIRECTORY)

    await trio.to_thread.run_sync(sync)


# -- restoring ------------------------------------------------------------------------------


def _check_frozen(entry: FrozenDisk, snapshot_dir: str, backing_dirs: Sequence[str]) -> str:
    """The frozen file's path, once it and its backing chain are what ``entry`` says
    (blocking); ``BlockError`` saying what is not."""
    where = os.path.join(snapshot_dir, entry.file)
    if not _NAME.fullmatch(entry.file):
        raise BlockError(f"{entry.file!r}: not a plain file name in the snapshot directory")
    try:
        mode = os.lstat(where).st_mode
    except FileNotFoundError:
        raise BlockError(f"{where}: the snapshot's disk file is missing") from None
    except OSError as exc:
        raise BlockError(f"{where}: {exc.strerror}") from exc
    if stat.S_ISLNK(mode):
        raise BlockError(f"{where}: a symlink (a snapshot's disk is a file in its directory)")
    if not stat.S_ISREG(mode):
        raise BlockError(f"{where}: not a regular file")
    fmt = detect_format(where)
    if fmt != entry.format:
        raise BlockError(f"{where}: the snapshot says {entry.format}, the file is {fmt}")
    info = image_info(where, backing_dirs)  # follow_backing: loops, folders, devices
    if info["virtual_size"] != entry.size:
        size = info["virtual_size"]
        raise BlockError(f"{where}: {size} bytes, but the snapshot says {entry.size}")
    recorded = {b.path: b for b in entry.bases}
    below = info["backing_chain"]
    for image in below:
        real = os.path.realpath(image["filename"])
        base = recorded.get(real)
        if base is None:
            raise BlockError(f"{where}: backing file {real} is not one the snapshot recorded")
        st = os.stat(real)
        size = os.path.getsize(real) if stat.S_ISREG(st.st_mode) else base.size
        if size != base.size or st.st_mtime_ns != base.mtime_ns:
            raise BlockError(
                f"{where}: backing file {real} has changed since the snapshot was taken "
                "(size or modification time), so the snapshot's disk is lost"
            )
    if len(below) != len(entry.bases):
        raise BlockError(
            f"{where}: its backing chain has {len(below)} files, the snapshot recorded "
            f"{len(entry.bases)}"
        )
    return where


async def open_frozen(
    entry: FrozenDisk,
    snapshot_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    backing_dirs: Sequence[str | os.PathLike[str]] = (),
    owner: str | None = None,
) -> Qcow2Image:
    """Open the frozen disk ``entry`` of ``snapshot_dir`` for a restored VM: a new qcow2
    overlay in ``work_dir`` (``NAME-XXXX.qcow2``; the caller removes it when done) over the
    frozen file, opened read-only, so writes never reach the snapshot. Read-only if the VM
    had the disk read-only. Base files outside the snapshot directory must lie in one of
    ``backing_dirs`` (or be named there) and be unchanged. ``BlockError`` saying what is
    wrong."""
    snap = os.path.abspath(os.fspath(snapshot_dir))
    dirs = [os.fspath(d) for d in backing_dirs]
    frozen_path = await trio.to_thread.run_sync(_check_frozen, entry, snap, dirs)
    frozen = await open_image(
        frozen_path, entry.format, read_only=True, owner=owner, backing_dirs=dirs
    )
    try:
        stem = entry.file.rsplit(".", 1)[0]

        def create() -> str:
            try:
                fd, path = tempfile.mkstemp(
                    prefix=f"{stem}-", suffix=".qcow2", dir=os.fspath(work_dir)
                )
            except OSError as exc:
                raise BlockError(f"{work_dir}: cannot create an overlay: {exc.strerror}") from exc
            os.close(fd)
            try:
                create_qcow2(path, entry.size, frozen_path, entry.format, overwrite=True)
            except BaseException:
                os.unlink(path)
                raise
            return path

        overlay = await trio.to_thread.run_sync(create)
        return await Qcow2Image.open(overlay, entry.read_only, backing=frozen, owner=owner)
    except BaseException:
        await frozen.close()
        raise


# -- the measurement in the module docstring ----------------------------------------------
