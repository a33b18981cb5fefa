"""A raw disk image: a regular file (or a block device) whose bytes are the disk's bytes.

Theory of operation. Every request is positional I/O (``os.pread``/``os.pwrite``: no shared
file offset, so requests may overlap freely) run in a worker thread with
``trio.to_thread.run_sync``; a ``trio.CapacityLimiter`` (8 threads, per disk) bounds how many
threads one disk occupies. One exception, for reads: ``preadv(..., RWF_NOWAIT)`` is tried on
the event loop first. The kernel answers it from the page cache or refuses with EAGAIN, never
blocking on the device; a miss (or a partial hit) goes to a thread. ``NOWAIT_READS = False``
turns that off. ``flush`` is ``os.fdatasync`` in a thread: it returns once everything
written before it is on stable storage. ``discard`` punches a hole
(``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`` through ctypes, since Python's
``os`` has no fallocate with a mode); where the file system cannot, it does nothing, because
a discard is only a hint. ``write_zeroes`` tries ``FALLOC_FL_ZERO_RANGE``, then a punched
hole (which reads back as zeroes), then writes zeroes. Every ``OSError`` from the host
becomes a ``BlockIOError`` whose message names the errno (``ENOSPC``, ``EIO``, ...), so the
device can answer VIRTIO_BLK_S_IOERR and log why. Cancelling a request waits for its thread,
so a write is never left in flight behind the caller's back.

Why threads, and not io_uring. Measured on the development machine (2 vCPUs, Linux 6.18,
ext4, page-cache-hot reads, microseconds per read, the range over several runs; run
``python -c "from blockdev.raw import _bench; _bench()"`` for the first four)::

                                                4 KiB      64 KiB
    blocking os.pread (it stalls the event loop)    1          5-7
    trio.to_thread.run_sync(os.pread)            70-210     120-300
    ... eight requests in flight, per request    46-160     70-160
    FileIO.read: RWF_NOWAIT hit on the loop       6-8       11-15
    io_uring (liburing via ctypes) + eventfd +
      trio.lowlevel.wait_readable                16-27

A thread hop costs about 100 us, mostly waking threads across CPUs. io_uring costs about a
fifth of that and was still not chosen. Python has no io_uring in its standard library and
no maintained binding, so using it means hand-written ctypes over liburing's ring structs
(their layout changes between liburing versions; the measurement above needed an offset
peculiar to liburing 2.3) and memory ordering on shared rings, done from Python. It is also
disabled in many places a hypervisor runs (Docker's default seccomp profile,
``kernel.io_uring_disabled``, hardened kernels), so a thread fallback is needed anyway.
Finally, the cost that matters is per guest request, not per 4 KiB. Guests issue 64 KiB to
1 MiB requests, one hop each, and the virtio-blk device model alone costs tens of
microseconds per request. The hot case io_uring would win, reads the page cache already
holds (many VMs booting one base image), is what RWF_NOWAIT serves at 6-15 us without a
thread. Buffered writes with RWF_NOWAIT are refused by ext4 (EOPNOTSUPP), so writes always
take a thread. Doing blocking reads on the event loop is no option: one cache miss on a busy
disk would stall every vCPU and NIC of the fabric.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from blockdev._base import SECTOR, BlockBackend, BlockError, BlockIOError

__all__ = ["RawFile", "create_raw"]

T = TypeVar("T")

THREADS = 8  # worker threads one disk may occupy
IOV_MAX = 1024
QCOW2_MAGIC = b"QFI\xfb"
MAX_OFFSET = (1 << 63) - 1  # off_t
NOWAIT_READS = True  # try reads from the page cache on the event loop first (RWF_NOWAIT)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# errnos that mean "this file system (or kernel) cannot do that fallocate mode"
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTTY, errno.ENODEV}

Chunk = bytes | bytearray | memoryview


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int

    def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
        """0, or raises OSError (errno from libc)."""
        if fn(fd, mode, offset, length) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return 0

    return fallocate


_fallocate = _load_fallocate()


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")


# glibc's malloc hands allocations above 128 KiB back to the kernel when they are freed, so
# every 1 MiB read buffer was faulted in again, page by page (480 minor faults a request,
# about 2 ms of the event loop's time). Keeping big buffers in the heap (mmap threshold 8 MiB,
# trim threshold 32 MiB) made cold 1 MiB reads by a Linux guest 1.2-1.8x faster
# (bench/disk.py, docs/BENCHMARKS.md). Once per process, glibc only; harmless elsewhere.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_tuned = False


def _tune_malloc() -> None:
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, 8 << 20)
    mallopt(_M_TRIM_THRESHOLD, 32 << 20)


class FileIO:
    """A file descriptor and the way to use it off the event loop (shared by ``RawFile`` and
    the qcow2 backend): every method runs its system calls in a worker thread under the
    disk's limiter and turns ``OSError`` into ``BlockIOError``, except that a read first tries
    ``preadv(RWF_NOWAIT)`` on the event loop, which the kernel answers from the page cache or
    refuses (EAGAIN) without blocking; what it did not read goes to a thread."""

    def __init__(self, fd: int, path: str, threads: int = THREADS) -> None:
        _tune_malloc()
        self.fd = fd
        self.path = path
        self.limiter = trio.CapacityLimiter(threads)
        self.nowait = NOWAIT_READS and hasattr(os, "RWF_NOWAIT")  # off if the fs refuses it
        self.counters: collections.Counter[str] = collections.Counter()
        self.unsynced = False  # written to since the last fdatasync

    def _error(self, what: str, exc: OSError) -> BlockIOError:
        return BlockIOError(f"{self.path}: {what}: {errno_name(exc)} ({exc.strerror})")

    async def run(self, what: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except OSError as exc:
            raise self._error(what, exc) from exc

    def _try_nowait(self, offset: int, length: int) -> bytes | None:
        """The whole range from the page cache, without blocking, or None."""
        buf = bytearray(length)
        try:
            got = os.preadv(self.fd, [buf], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                self.nowait = False
                return None
            raise self._error(f"read {length} bytes at {offset}", exc) from exc
        if got != length:  # partly cached, or the end of the file: a thread does it all
            return None
        self.counters["nowait_reads"] += 1
        return bytes(buf)

    def _range(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > MAX_OFFSET:
            raise BlockIOError(f"{self.path}: {length} bytes at {offset}: beyond any file")

    async def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (past the end of the file: zeroes)."""
        self._range(offset, length)
        if self.nowait and length:
            data = self._try_nowait(offset, length)
            if data is not None:
                await trio.lowlevel.checkpoint()
                return data
        return await self.run(f"read {length} bytes at {offset}", self.pread, offset, length)

    async def read_many(self, pieces: Sequence[tuple[int, int]]) -> list[bytes]:
        """Several reads, in one thread hop for those the page cache could not answer."""
        for offset, length in pieces:
            self._range(offset, length)
        out: list[bytes | None] = [None] * len(pieces)
        if self.nowait:
            for i, (offset, length) in enumerate(pieces):
                if not self.nowait:
                    break
                out[i] = self._try_nowait(offset, length) if length else b""
        missing = [i for i, data in enumerate(out) if data is None]
        if missing:
            todo = [pieces[i] for i in missing]
            what = f"read {sum(n for _, n in todo)} bytes at {todo[0][0]}"
            for i, data in zip(missing, await self.run(what, self.pread_many, todo), strict=True):
                out[i] = data
        else:
            await trio.lowlevel.checkpoint()
        return [data if data is not None else b"" for data in out]

    async def write(self, offset: int, data: Chunk) -> None:
        self._range(offset, len(data))
        self.unsynced = True
        await self.run(f"write {len(data)} bytes at {offset}", self.pwrite, offset, data)

    async def write_many(self, pieces: Sequence[tuple[int, Chunk]]) -> None:
        """Several writes in one thread hop (in order)."""
        for offset, data in pieces:
            self._range(offset, len(data))
        if pieces:
            self.unsynced = True
            what = f"write {sum(len(d) for _, d in pieces)} bytes at {pieces[0][0]}"
            await self.run(what, self.pwrite_many, pieces)

    async def writev_many(self, runs: Sequence[tuple[int, Sequence[Chunk]]]) -> None:
        for offset, buffers in runs:
            self._range(offset, sum(len(b) for b in buffers))
        if runs:
            self.unsynced = True
            size = sum(len(b) for _, bufs in runs for b in bufs)
            await self.run(f"write {size} bytes at {runs[0][0]}", self.pwritev_many, runs)

    async def sync(self) -> None:
        self.unsynced = False  # (set before: a write racing this sync sets it again)
        try:
            await self.run("flush (fdatasync)", os.fdatasync, self.fd)
        except BaseException:
            self.unsynced = True
            raise

    # -- blocking helpers (a worker thread runs these) --------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; what lies past the end of the file reads as zeroes."""
        data = os.pread(self.fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(self.fd, length - got, offset + got)
            if not more:
                parts.append(bytes(length - got))
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def pread_many(self, pieces: Sequence[tuple[int, int]]) -> list[bytes]:
        return [self.pread(offset, length) for offset, length in pieces]

    def pwrite(self, offset: int, data: Chunk) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], offset + done)

    def pwrite_many(self, pieces: Sequence[tuple[int, Chunk]]) -> None:
        for offset, data in pieces:
            self.pwrite(offset, data)

    def pwritev_many(self, runs: Sequence[tuple[int, Sequence[Chunk]]]) -> None:
        """Each run is buffers to write back to back from an offset: one ``pwritev`` each."""
        for offset, buffers in runs:
            for first in range(0, len(buffers), IOV_MAX):
                part = buffers[first : first + IOV_MAX]
                total = sum(len(b) for b in part)
                done = os.pwritev(self.fd, part, offset)
                if done < total:  # short: finish piece by piece
                    at = 0
                    for buf in part:
                        if at + len(buf) > done:
                            skip = max(0, done - at)
                            self.pwrite(offset + at + skip, memoryview(buf).cast("B")[skip:])
                        at += len(buf)
                offset += total

    def close(self) -> None:
        close_fd(self.fd)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_kind(path: str, mode: int, block_ok: bool) -> None:
    if stat.S_ISDIR(mode):
        raise BlockError(f"{path}: is a directory, not a disk image")
    if stat.S_ISREG(mode) or (block_ok and stat.S_ISBLK(mode)):
        return
    kind = next((what for test, what in _KINDS if test(mode)), "not a file")
    allowed = "a regular file or a block device" if block_ok else "a regular file"
    raise BlockError(f"{path}: not {allowed} ({kind})")


def open_checked(path: str, flags: int, *, block_ok: bool = True) -> tuple[int, os.stat_result]:
    """Open an image file (blocking, but never for long): ``(fd, its stat)``, or
    ``BlockError`` saying what is wrong with ``path``. Only a regular file (or a block
    device, when ``block_ok``) is opened: ``stat`` refuses the rest before any ``open`` (a
    character device may act on open), and the open itself is ``O_NONBLOCK``, so a FIFO put
    there in between cannot hang it (a blocking open of a FIFO waits for a writer, in a
    thread no signal reaches); ``fstat`` then checks what was opened."""
    if "\0" in path:
        raise BlockError(f"{path!r}: a file name cannot contain NUL")
    try:
        _check_kind(path, os.stat(path).st_mode, block_ok)
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BlockError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BlockError(f"{path}: is a directory, not a disk image") from None
    except OSError as exc:
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        denied = exc.errno in (errno.EROFS, errno.EACCES)
        hint = " (open it read-only: ,ro)" if writable and denied else ""
        raise BlockError(f"{path}: cannot open: {exc.strerror}{hint}") from exc
    try:
        st = os.fstat(fd)
        _check_kind(path, st.st_mode, block_ok)
        os.set_blocking(fd, True)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise BlockError(f"{path}: {exc.strerror}") from exc
        raise
    return fd, st


def open_fd(
    path: str, read_only: bool, *, owner: str | None = None, block_ok: bool = True
) -> tuple[int, int]:
    """Open a disk image file (blocking): ``(fd, size in bytes)``, or ``BlockError`` saying
    what is wrong with ``path`` (missing, a directory, not a file or block device, no
    permission, in use: see ``lock_image``). ``owner`` names the user in this process's
    registry of open images (``vms.a.disks[0]``). The size is not checked here; close the fd
    with ``close_fd``."""
    fd, st = open_checked(path, os.O_RDONLY if read_only else os.O_RDWR, block_ok=block_ok)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        os.close(fd)
        raise BlockError(f"{path}: cannot find its size: {exc.strerror}") from exc
    try:
        lock_image(fd, path, st, not read_only, owner)
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def close_fd(fd: int) -> None:
    """Close an image's fd (its locks go with it) and forget it in the registry."""
    with _registry_lock:
        _registry.pop(fd, None)
    os.close(fd)


# -- image locks ------------------------------------------------------------------------------
#
# Two writers on one image corrupt it (each keeps its own metadata in memory), and a reader
# beside a writer sees a mix. So every image hv opens is locked as QEMU locks it
# (block/file-posix.c, raw_apply_lock_bytes and raw_check_lock_bytes), and hv and qemu see
# each other: a shared OFD lock on byte 100 + P for each permission P the user holds, and on
# byte 200 + P for each permission it does not share. A user may open the image if nobody
# holds byte 200 + P for a permission it wants, nor byte 100 + P for one it refuses to share.
# Locks are taken first and checked after, so two users opening at once cannot both win.
# OFD locks (not classic POSIX ones) belong to the open file, not the process: two disks in
# one process conflict just as two processes do, and closing one fd drops only its locks.
# OFD locks name no owner (F_OFD_GETLK says pid -1), so a registry of the images this process
# has open names the holder when it is here.

LOCK_PERM_BASE = 100
LOCK_SHARED_BASE = 200
PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE = range(4)
# (permissions held, permissions not shared): a writer, and a reader (also a backing file)
_WRITER = ((PERM_CONSISTENT_READ, PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE),
           (PERM_WRITE, PERM_RESIZE))  # fmt: skip
_READER = ((PERM_CONSISTENT_READ,), (PERM_WRITE, PERM_RESIZE))


class _Flock(ctypes.Structure):
    _fields_ = [
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    ]


_registry_lock = threading.Lock()
# fd -> ((st_dev, st_ino), owner, writable) for every image this process has open
_registry: dict[int, tuple[tuple[int, int], str | None, bool]] = {}


def _lock_byte(fd: int, cmd: int, kind: int, offset: int) -> _Flock:
    lock = _Flock(kind, os.SEEK_SET, offset, 1, 0)
    got = fcntl.fcntl(fd, cmd, bytes(lock))
    return _Flock.from_buffer_copy(got)


def _others_hold(fd: int, offset: int) -> _Flock | None:
    """The lock someone else holds on byte ``offset``, or None."""
    got = _lock_byte(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK, offset)
    return None if got.l_type == fcntl.F_UNLCK else got


def lock_image(
    fd: int, path: str, st: os.stat_result, writable: bool, owner: str | None = None
) -> None:
    """Take QEMU's locks for a writer or a reader on ``fd`` and register it; ``BlockError``
    naming the holder if another user of the image (here or in another process) conflicts.
    Where the file system has no OFD locks, the image is used unlocked, as QEMU does."""
    held, unshared = _WRITER if writable else _READER
    key = (st.st_dev, st.st_ino)
    try:
        for perm in held:
            _lock_byte(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, LOCK_PERM_BASE + perm)
        for perm in unshared:
            _lock_byte(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, LOCK_SHARED_BASE + perm)
        conflict = any(_others_hold(fd, LOCK_SHARED_BASE + p) for p in held) or any(
            _others_hold(fd, LOCK_PERM_BASE + p) for p in unshared
        )
        writer = _others_hold(fd, LOCK_PERM_BASE + PERM_WRITE) if conflict else None
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):  # a conflicting write lock: not QEMU's
            raise BlockError(f"{path}: in use: another process has it locked") from None
        conflict, writer = False, None  # no OFD locks here (EINVAL, ENOLCK, EOPNOTSUPP)
    with _registry_lock:
        if conflict:
            here = [(o, w) for k, o, w in _registry.values() if k == key]
            if writer is not None:
                here = [(o, w) for o, w in here if w]
            names = [o for o, _ in here if o]
            if names:
                who = names[0]
            elif here:
                who = "another disk in this process"
            elif writer is not None and writer.l_pid > 0:
                who = f"process {writer.l_pid}"
            else:
                who = "another process or VM in this process"
        else:
            _registry[fd] = (key, owner, writable)
    if not conflict:
        return
    if writer is not None:
        hint = "one writer at a time: stop that one first"
        if not writable:
            hint = "it would change under this reader: stop that one first"
        raise BlockError(f"{path}: in use: {who} has it open for writing ({hint})")
    raise BlockError(
        f"{path}: in use: {who} has it open read-only, so it cannot be written "
        "(use ,ro or ,snapshot)"
    )


class RawFile(BlockBackend):
    """A raw image: ``await RawFile.open(path, read_only=False)``."""

    def __init__(self, io: FileIO, size: int, read_only: bool, probed: bool = False) -> None:
        super().__init__(size, read_only)
        self._io = io
        self.path = io.path
        self.probed = probed
        self._punch = _fallocate is not None
        self._zero_range = _fallocate is not None
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        read_only: bool = False,
        *,
        probed: bool = False,
        owner: str | None = None,
    ) -> RawFile:
        """Open ``path``. ``probed``: the format was guessed (no ``format=raw``), so refuse
        writes that would make the file start with the qcow2 magic; otherwise the guest could
        turn its disk into a qcow2 image whose backing file is any host file, opened as such
        next time (qemu restricts probed raw images the same way). ``owner`` names the user
        in errors of others who find it in use."""
        name = os.fspath(path)
        fd, size = await trio.to_thread.run_sync(lambda: open_fd(name, read_only, owner=owner))
        if size % SECTOR:
            close_fd(fd)
            raise BlockError(f"{name}: its size ({size} bytes) is not a multiple of {SECTOR} bytes")
        return cls(FileIO(fd, name), size, read_only, probed)

    async def read(self, offset: int, length: int) -> bytes:
        self.check(offset, length)
        data = await self._io.read(offset, length)
        self.counters["read_bytes"] += length
        return data

    async def write(self, offset: int, data: Chunk) -> None:
        self.check(offset, len(data), write=True)
        if self.probed and offset < len(QCOW2_MAGIC) and len(data):
            head = bytearray(await self._io.read(0, len(QCOW2_MAGIC)))
            end = min(len(head), offset + len(data))
            head[offset:end] = memoryview(data).cast("B")[: end - offset]
            if head == QCOW2_MAGIC:
                raise BlockIOError(
                    f"{self.path}: refusing to write a qcow2 header into a raw image whose "
                    "format was probed (give format=raw to allow it)"
                )
        await self._io.write(offset, data)
        self.counters["write_bytes"] += len(data)

    async def flush(self) -> None:
        if self.read_only:
            return
        await self._io.sync()
        self.counters["flushes"] += 1

    def _fallocate(self, mode: int, offset: int, length: int) -> bool:
        """Blocking: True if done, False if the file system cannot (raises other errors)."""
        assert _fallocate is not None
        try:
            _fallocate(self._io.fd, mode, offset, length)
        except OSError as exc:
            if exc.errno in _UNSUPPORTED:
                return False
            raise
        return True

    async def discard(self, offset: int, length: int) -> None:
        self.check(offset, length, write=True)
        if not length or not self._punch:
            return
        what = f"discard {length} bytes at {offset}"
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        self._punch = await self._io.run(what, self._fallocate, mode, offset, length)
        self.counters["discard_bytes"] += length

    async def write_zeroes(self, offset: int, length: int) -> None:
        self.check(offset, length, write=True)
        if not length:
            return
        what = f"write zeroes to {length} bytes at {offset}"
        if self._zero_range:
            mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
            if await self._io.run(what, self._fallocate, mode, offset, length):
                self.counters["zeroed_bytes"] += length
                return
            self._zero_range = False
        if self._punch:
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            if await self._io.run(what, self._fallocate, mode, offset, length):
                self.counters["zeroed_bytes"] += length
                return
            self._punch = False
        await super().write_zeroes(offset, length)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._io.close()

    def describe(self) -> str:
        return f"raw {self.path} ({self.size} bytes{', ro' if self.read_only else ''})"


def create_raw(path: str | os.PathLike[str], size: int, *, overwrite: bool = False) -> None:
    """Create a sparse raw image of ``size`` bytes (a multiple of 512). Blocking; refuses to
    replace an existing file unless ``overwrite``."""
    name = os.fspath(path)
    if size < 0 or size % SECTOR:
        raise BlockError(f"{name}: a disk's size must be a multiple of {SECTOR} bytes, not {size}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(name, flags, 0o644)
    except FileExistsError:
        raise BlockError(f"{name}: already exists") from None
    except OSError as exc:
        raise BlockError(f"{name}: cannot create: {exc.strerror}") from exc
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise BlockError(f"{name}: cannot set its size: {exc.strerror}") from exc
    finally:
        os.close(fd)


# -- the measurement in the module docstring ------------------------------------------------


def _bench(count: int = 5000) -> None:  # pragma: no cover - a tool, not a test
    """Per-read cost, page cache hot: blocking pread; one to_thread hop; eight in flight;
    ``FileIO.read`` (preadv RWF_NOWAIT on the loop, a thread only on a miss)."""
    import tempfile
    import time

    with tempfile.NamedTemporaryFile() as tmp:
        tmp.write(os.urandom(16 << 20))
        tmp.flush()
        fd = tmp.fileno()
        for size in (4096, 65536):
            offsets = [(i * 7919 % ((16 << 20) // size)) * size for i in range(count)]
            start = time.perf_counter()
            for offset in offsets:
                os.pread(fd, size, offset)
            blocking = (time.perf_counter() - start) / count

            async def threaded(offsets: list[int] = offsets, size: int = size) -> float:
                limiter = trio.CapacityLimiter(THREADS)
                start = time.perf_counter()
                for offset in offsets:
                    await trio.to_thread.run_sync(os.pread, fd, size, offset, limiter=limiter)
                return (time.perf_counter() - start) / count

            async def parallel(offsets: list[int] = offsets, size: int = size) -> float:
                limiter = trio.CapacityLimiter(THREADS)

                async def worker(part: list[int]) -> None:
                    for offset in part:
                        await trio.to_thread.run_sync(os.pread, fd, size, offset, limiter=limiter)

                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for i in range(THREADS):
                        nursery.start_soon(worker, offsets[i::THREADS])
                return (time.perf_counter() - start) / count

            async def nowait(offsets: list[int] = offsets, size: int = size) -> float:
                io = FileIO(fd, tmp.name)
                start = time.perf_counter()
                for offset in offsets:
                    await io.read(offset, size)
                return (time.perf_counter() - start) / count

            one, many, fast = trio.run(threaded), trio.run(parallel), trio.run(nowait)
            print(
                f"{size // 1024:3d} KiB reads: blocking pread {blocking * 1e6:6.1f} us, "
                f"to_thread {one * 1e6:6.1f} us, to_thread x{THREADS} {many * 1e6:6.1f} us, "
                f"FileIO.read (RWF_NOWAIT) {fast * 1e6:6.1f} us"
            )
