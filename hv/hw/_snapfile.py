"""The snapshot file: a versioned header, a table of named sections, and their bytes.

Hand-written (no maintained library has a container with page-aligned, mappable sections).
Layout, little-endian::

    0   8  magic  b"\\x89HVSNAP\\n"
    8   2  format major    10  2  format minor
    12  4  sections (n)    16  8  file size      24  4  CRC-32 of bytes 0..24 and the table
    28  4  zero
    32  n * 48: a section each: name (24 bytes, ASCII, NUL-padded), flags (4), CRC-32 (4),
        offset (8), length (8)

A *state* section (flags 0) holds encoded state (hv.hw._state) and is checked against its
CRC when read. A *pages* section (flags 1) is guest RAM: it starts on a page boundary so it
can be mapped copy-on-write straight from the file (``map_pages``: a restored or cloned guest
costs only the pages it writes), its zero pages are holes in a sparse file, and it has no
CRC (checking 128 MiB would cost more than the whole restore; RAM is the guest's own bytes,
which no host code interprets).

Every read is bounded by the file's size and the table is checked before anything is used: a
truncated, corrupt or foreign file raises ``SnapshotError`` saying what is wrong. A major
version this hv does not know is refused with a message saying which hv wrote it; a newer
minor version adds sections an older reader ignores.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hv._errors import SnapshotError

MAGIC = b"\x89HVSNAP\n"
MAJOR = 1
MINOR = 0
SECTIONS_MAX = 256
NAME_MAX = 24
FLAG_PAGES = 1
PAGE = mmap.PAGESIZE
_HEAD = struct.Struct("<8sHHIQI4x")
_ENTRY = struct.Struct("<24sIIQQ")
# Zero-page scan granularity when writing pages (a zero chunk is one compare).
_CHUNK = 64 << 10
_ZERO_CHUNK = bytes(_CHUNK)
_ZERO_PAGE = bytes(PAGE)


@dataclass(frozen=True)
class Section:
    name: str
    flags: int
    crc: int
    offset: int
    length: int

    @property
    def pages(self) -> bool:
        return bool(self.flags & FLAG_PAGES)


def _name_ok(name: str) -> bool:
    return 0 < len(name) <= NAME_MAX and name.isascii() and name.isprintable()


def write_snapshot(
    path: str | os.PathLike[str],
    state: Iterable[tuple[str, bytes]],
    pages: Iterable[tuple[str, memoryview]] = (),
    *,
    durable: bool = True,
) -> int:
    """Write a snapshot file at ``path`` (atomically: a temporary name, then renamed);
    returns the bytes it takes on disk (RAM's zero pages are holes). ``durable`` syncs it
    to disk before the rename."""
    path = Path(path)
    state = [(n, bytes(b)) for n, b in state]
    page_list = list(pages)
    names = [n for n, _ in state] + [n for n, _ in page_list]
    for n in names:
        if not _name_ok(n):
            raise ValueError(f"bad section name {n!r}")
    if len(set(names)) != len(names) or len(names) > SECTIONS_MAX:
        raise ValueError("section names must be unique, and at most 256")
    table_end = _HEAD.size + _ENTRY.size * len(names)
    entries: list[Section] = []
    off = table_end
    for n, b in state:
        entries.append(Section(n, 0, zlib.crc32(b), off, len(b)))
        off += len(b)
    for n, mv in page_list:
        off = -(-off // PAGE) * PAGE
        entries.append(Section(n, FLAG_PAGES, 0, off, len(mv)))
        off += len(mv)
    size = off
    table = b"".join(
        _ENTRY.pack(e.name.encode(), e.flags, e.crc, e.offset, e.length) for e in entries
    )
    head0 = _HEAD.pack(MAGIC, MAJOR, MINOR, len(entries), size, 0)[:24]
    head = _HEAD.pack(MAGIC, MAJOR, MINOR, len(entries), size, zlib.crc32(table, zlib.crc32(head0)))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, head + table, 0)
        for e, (_, b) in zip(entries, state, strict=False):
            os.pwrite(fd, b, e.offset)
        for e, (_, mv) in zip(entries[len(state) :], page_list, strict=True):
            _write_sparse(fd, e.offset, mv)
        os.ftruncate(fd, size)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    used = os.fstat(fd).st_blocks * 512
    os.close(fd)
    os.replace(tmp, path)
    return used


def _write_sparse(fd: int, base: int, mv: memoryview) -> None:
    """Write ``mv`` at ``base`` leaving its zero pages as holes (runs of non-zero pages are
    one write each)."""
    n = len(mv)
    run = -1  # start of the run of non-zero pages being gathered
    pos = 0
    while pos < n:
        end = min(n, pos + _CHUNK)
        chunk = mv[pos:end].tobytes()  # (a memoryview compares item by item: 30x slower)
        if chunk == _ZERO_CHUNK[: end - pos]:
            if run >= 0:
                os.pwrite(fd, mv[run:pos], base + run)
                run = -1
            pos = end
            continue
        for p in range(pos, end, PAGE):
            q = min(end, p + PAGE)
            zero = chunk[p - pos : q - pos] == _ZERO_PAGE[: q - p]
            if zero and run >= 0:
                os.pwrite(fd, mv[run:p], base + run)
                run = -1
            elif not zero and run < 0:
                run = p
        pos = end
    if run >= 0:
        os.pwrite(fd, mv[run:n], base + run)


class SnapshotFile:
    """A snapshot file opened for reading: its table checked, its sections read on demand."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SnapshotError(f"{self.path}: cannot open the snapshot: {e.strerror}") from None
        try:
            self.sections = self._read_table()
        except BaseException:
            os.close(self._fd)
            raise

    def _fail(self, why: str) -> SnapshotError:
        return SnapshotError(f"{self.path}: {why}")

    def _read_table(self) -> dict[str, Section]:
        st = os.fstat(self._fd)
        if not os.path.isfile(self.path) and not _is_regular(st.st_mode):
            raise self._fail("not a regular file")
        size = st.st_size
        head = os.pread(self._fd, _HEAD.size, 0)
        if head[: len(MAGIC)] != MAGIC:
            raise self._fail(
                f"not an hv snapshot (it starts with {head[:8]!r}; an hv snapshot starts with "
                f"{MAGIC!r})"
            )
        if len(head) < _HEAD.size:
            raise self._fail(f"truncated: {size} bytes, shorter than the header")
        _, major, minor, count, declared, crc = _HEAD.unpack(head)
        if major != MAJOR:
            newer = "a newer" if major > MAJOR else "an older"
            raise self._fail(
                f"snapshot format {major}.{minor}, written by {newer} hv; this hv reads format "
                f"{MAJOR}.x (use the hv that wrote it, or take the snapshot again)"
            )
        if count > SECTIONS_MAX:
            raise self._fail(f"the header names {count} sections (at most {SECTIONS_MAX})")
        if size < declared:
            raise self._fail(f"truncated: {size} bytes, the header says {declared}")
        table = os.pread(self._fd, _ENTRY.size * count, _HEAD.size)
        if len(table) != _ENTRY.size * count:
            raise self._fail("truncated in its section table")
        if zlib.crc32(table, zlib.crc32(head[:24])) != crc:
            raise self._fail("its header is corrupt (CRC mismatch)")
        out: dict[str, Section] = {}
        table_end = _HEAD.size + len(table)
        for i in range(count):
            raw, flags, scrc, off, length = _ENTRY.unpack_from(table, i * _ENTRY.size)
            try:
                name = raw.rstrip(b"\0").decode("ascii")
            except UnicodeDecodeError:
                raise self._fail(f"section {i} has a name that is not ASCII") from None
            if not _name_ok(name) or name in out:
                raise self._fail(f"section {i}: bad or repeated name {name!r}")
            if flags & ~FLAG_PAGES:
                raise self._fail(f"section {name}: unknown flags {flags:#x}")
            if off < table_end or off + length > declared:
                raise self._fail(
                    f"section {name}: bytes {off}..{off + length} lie outside the file's "
                    f"{table_end}..{declared}"
                )
            if flags & FLAG_PAGES and off % PAGE:
                raise self._fail(f"section {name}: pages at {off}, not on a page boundary")
            out[name] = Section(name, flags, scrc, off, length)
        return out

    def __contains__(self, name: str) -> bool:
        return name in self.sections

    def __iter__(self) -> Iterator[str]:
        return iter(self.sections)

    def _section(self, name: str) -> Section:
        s = self.sections.get(name)
        if s is None:
            raise self._fail(f"has no {name!r} section (it holds: {', '.join(self.sections)})")
        return s

    def read(self, name: str, max_len: int) -> bytes:
        """A state section's bytes, CRC-checked."""
        s = self._section(name)
        if s.pages:
            raise self._fail(f"section {name} holds pages, not state")
        if s.length > max_len:
            raise self._fail(f"section {name}: {s.length} bytes is more than {max_len}")
        data = os.pread(self._fd, s.length, s.offset)
        if len(data) != s.length:
            raise self._fail(f"section {name} is truncated")
        if zlib.crc32(data) != s.crc:
            raise self._fail(f"section {name} is corrupt (CRC mismatch)")
        return data

    def map_pages(self, name: str, length: int) -> mmap.mmap:
        """A pages section mapped copy-on-write (``MAP_PRIVATE``): reads come from the file
        (shared with every other mapping of it), writes go to private pages."""
        s = self._section(name)
        if not s.pages:
            raise self._fail(f"section {name} holds state, not pages")
        if s.length != length:
            raise self._fail(f"section {name}: {s.length} bytes, expected {length}")
        return mmap.mmap(
            self._fd,
            length,
            flags=mmap.MAP_PRIVATE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
            offset=s.offset,
        )

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
