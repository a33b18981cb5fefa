"""qcow2 images (version 3, and version 2), read and write, with backing files.

Hand-written, because no maintained Python library reads *and* writes qcow2. The nearest,
libyal's libqcow (C, with Python bindings: libqcow-python, Debian's python3-libqcow), reads
only; other packages parse the header or run qemu-img in a subprocess. The format is small
enough to own. ``qemu-img`` (check, compare, convert, create, map, and qemu-io) is the
oracle the tests hold this module to.

The format, in one paragraph. A header (cluster 0) says the virtual size, the cluster size
(``1 << cluster_bits``, 512 bytes to 2 MiB; 64 KiB by default) and where two trees live. The
*mapping* tree: an L1 table of 64-bit entries, each the host offset of an L2 table (one
cluster of 64-bit entries), each entry mapping one guest cluster to a host cluster, or to
"zero" (flag bit 0), or to "compressed data at this byte offset, this many sectors" (bit 62),
or to nothing (read the backing file, or zeroes). Bit 63 ("copied") says the host cluster's
refcount is exactly 1, so it may be written in place. The *refcount* tree: a refcount table
of 64-bit entries, each the offset of a refcount block (one cluster of 2**refcount_order-bit
counters, 16 bits by default), counting the references to every host cluster; a cluster is
free when its count is 0. Header extensions after the header name the backing file's format
and the feature bits.

Write ordering (what makes a killed process, or a power cut after a flush, leave an image
``qemu-img check`` passes; leaked clusters are allowed, corruption is not). The invariant:
*on disk, every reference (L1 -> L2 table, L2 -> data, refcount table -> block) points at a
cluster whose on-disk refcount is already non-zero and whose contents are already written.*
This is strict ordering without lazy refcounts (no dirty bit), kept like this:

- Guest data goes to the file when it is written: in place into a cluster this image owns
  (copied flag), or into a newly allocated cluster, whole (the untouched part of the cluster
  copied from what it read as before: the backing file, zeroes, the decompressed cluster).
  A newly allocated cluster is unreferenced on disk until the flush below, so writing it
  cannot hurt whatever the file says now.
- Metadata (L2 tables, refcount blocks, L1 and refcount-table entries) is changed in memory
  and written back by ``flush`` in dependency order, each class stable before the next:
  (1) refcount blocks (and a relocated, grown refcount table), (2) refcount-table entries or
  the header fields that point at the new table, (3) L2 tables, (4) L1 entries, each step
  that has anything to write preceded by ``fdatasync`` (unless nothing was written since the
  last one), and one ``fdatasync`` at the end.
  So data and refcounts are stable before the L2 entries that use them, L2 tables before the
  L1 entries that point at them.
- Freeing is the reverse: a cluster a write or a discard stops referencing is kept allocated
  until the flush has made the unreferencing L2 table stable; then its refcount is decremented
  (a decrement lost in a crash is a leak, never a dangling reference), and only then may it be
  allocated again.
- A killed process loses only what it had not flushed: the metadata it held in memory. Each
  system call it did issue landed in the page cache in program order, which the steps above
  make safe at every point.

The metadata held in memory is bounded: only the L1 entries the virtual size uses are read
(a header may claim more: qemu keeps a larger L1 when it shrinks an image), clean L2 tables
and refcount blocks are cached in bounded LRUs; when too many are dirty, a write starts a
flush of its own first. A writable image also keeps the set of clusters that hold metadata,
and refuses (``BlockIOError``, "corrupt") a data write that would land on one, as qemu's
overlap check does, so wrong refcounts or L2 entries in a damaged image cannot make a write
destroy its metadata; nor does a free: a cluster an L2 entry stops referencing is not
decremented if it is metadata (a compressed entry pointing into the header, say), only
counted (``free_of_metadata``). A writable open refuses (``BlockError`` naming the offset)
refcount blocks that are shared by two refcount-table entries, lie past the end of the file
or on other metadata, and L2 tables on the L1 or refcount table, so the refcount blocks are
distinct clusters of the file and an allocation scans at most that many. Allocation starts
at a free hint (every cluster below it is in use: it moves past each refcount block found
full and back on a free), each block is searched in C, and the scan lets other tasks run
after each full block.

Refused (``BlockError``, naming the feature): encryption, external data files, compression
other than zlib (zstd), extended L2 entries (subclusters), unknown incompatible feature bits;
opening writable an image that has internal snapshots, or is marked dirty (lazy refcounts)
or corrupt (those open read-only). Compressed clusters are read (raw deflate, as
``qemu-img convert -c`` writes them) and, when written to, replaced by a normal cluster;
this module never writes compressed clusters. Unknown autoclear feature bits are cleared on
a writable open (that is what they are for: a persistent dirty bitmap is no longer valid).

All file I/O goes through ``blockdev.raw.FileIO``: worker threads, except reads the page
cache answers without blocking (RWF_NOWAIT). One ``trio.Lock`` per image serialises
requests (each request is a few cache lookups and one or two batches of I/O), and
``create_qcow2``, ``image_info`` and ``read_header`` are blocking functions for a CLI, or
for a thread.
"""

from __future__ import annotations

import array
import collections
import math
import os
import re
import stat
import struct
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

import trio

from blockdev._base import SECTOR, BlockBackend, BlockError, BlockIOError
from blockdev.raw import Chunk, FileIO, RawFile, open_checked, open_fd

__all__ = [
    "MAGIC",
    "BackingChainError",
    "Header",
    "Qcow2Image",
    "create_qcow2",
    "detect_format",
    "follow_backing",
    "image_info",
    "open_image",
    "parse_header",
    "read_header",
]

MAGIC = b"QFI\xfb"
StrPath: TypeAlias = str | os.PathLike[str]

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1
OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # L1 and L2 entries: host offset, bits 9..55
REFT_OFFSET_MASK = 0xFFFF_FFFF_FFFF_FE00

MAX_L1_BYTES = 32 << 20  # as qemu (QCOW_MAX_L1_SIZE)
MAX_REFTABLE_BYTES = 8 << 20  # as qemu (QCOW_MAX_REFTABLE_SIZE)
MAX_HOST_OFFSET = 1 << 56
MAX_BACKING_NAME = 1023
MAX_CHAIN = 64
BACKING_OWNER = " (backing file)"  # added to an owner's name for its backing files

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4

FEATURE_NAMES: dict[tuple[int, int], str] = {
    (0, 0): "dirty",
    (0, 1): "corrupt",
    (0, 2): "external data file",
    (0, 3): "compression type",
    (0, 4): "extended L2 entries",
    (1, 0): "lazy refcounts",
    (2, 0): "bitmaps",
    (2, 1): "raw external data",
}
_KIND = {0: "incompatible", 1: "compatible", 2: "autoclear"}

L2_CACHE_TABLES = 64
REFBLOCK_CACHE = 64
DIRTY_LIMIT = 48  # dirty L2 tables or refcount blocks before a write flushes first
PENDING_FREE_LIMIT = 1 << 16
DECOMPRESSED_CACHE = 8

_LITTLE = sys.byteorder == "little"
_U32 = "I" if array.array("I").itemsize == 4 else "L"
_REFCOUNT_TYPECODES = {3: "B", 4: "H", 5: _U32, 6: "Q"}
assert array.array("Q").itemsize == 8 and array.array("H").itemsize == 2


def _narrow_zero_class(order: int) -> re.Pattern[bytes]:
    """For counters of ``1 << order`` bits (order 0..2, packed into bytes): a pattern that
    matches a byte holding at least one zero counter (so a scan runs in C, not per entry)."""
    bits = 1 << order
    mask = (1 << bits) - 1
    hits = [
        value
        for value in range(256)
        if any(not (value >> shift) & mask for shift in range(0, 8, bits))
    ]
    return re.compile(b"[" + b"".join(b"\\x%02x" % value for value in hits) + b"]")


_ZERO_COUNTER = {order: _narrow_zero_class(order) for order in range(3)}
_ZERO_BYTE = re.compile(b"\\x00")


def _u64_array(raw: bytes) -> array.array[int]:
    table = array.array("Q")
    table.frombytes(raw)
    if _LITTLE:
        table.byteswap()
    return table


def _u64_bytes(table: array.array[int]) -> bytes:
    if not _LITTLE:
        return table.tobytes()
    copy = table[:]
    copy.byteswap()
    return copy.tobytes()


# -- the header --------------------------------------------------------------------------


@dataclass
class Header:
    """A parsed qcow2 header (and its extensions)."""

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = 72
    compression_type: int = 0
    backing_file: str | None = None
    backing_format: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)
    extensions: list[int] = field(default_factory=list)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    def feature(self, kind: int, bit: int) -> str:
        name = self.feature_names.get((kind, bit)) or FEATURE_NAMES.get((kind, bit))
        return f"{name or 'unknown'} ({_KIND[kind]} bit {bit})"


_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes
_V3 = struct.Struct(">QQQII")  # 32 more: features, refcount_order, header_length


def parse_header(data: bytes, path: str = "image") -> Header:
    """Parse a qcow2 header from the image's first bytes (its whole first cluster; what is
    missing reads as zeroes). ``BlockError`` for anything that is not a sound qcow2 header."""
    if len(data) < _V2.size or data[:4] != MAGIC:
        raise BlockError(f"{path}: not a qcow2 image (no QFI\\xfb magic)")
    (
        _magic,
        version,
        backing_file_offset,
        backing_file_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = _V2.unpack_from(data)
    if version not in (2, 3):
        raise BlockError(f"{path}: qcow2 version {version} is not supported (2 and 3 are)")
    if not 9 <= cluster_bits <= 21:
        raise BlockError(f"{path}: qcow2 cluster_bits {cluster_bits} is out of range (9..21)")
    header = Header(
        version,
        backing_file_offset,
        backing_file_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        snapshots_offset,
    )
    cluster_size = header.cluster_size
    first = data[:cluster_size].ljust(cluster_size, b"\0")  # past the end of the file: zeroes
    if version == 3:
        (
            header.incompatible,
            header.compatible,
            header.autoclear,
            header.refcount_order,
            header.header_length,
        ) = _V3.unpack_from(first, _V2.size)
        if not 104 <= header.header_length <= cluster_size:
            raise BlockError(f"{path}: qcow2 header_length {header.header_length} is invalid")
        if header.header_length > 104:
            header.compression_type = first[104]
        if header.refcount_order > 6:
            raise BlockError(f"{path}: qcow2 refcount_order {header.refcount_order} is invalid")
    if crypt_method:
        raise BlockError(
            f"{path}: encrypted qcow2 images (crypt_method {crypt_method}) are not supported"
        )
    # the virtual size and the mapping tree
    if size % SECTOR:
        raise BlockError(f"{path}: virtual size {size} is not a multiple of {SECTOR} bytes")
    if l1_size * 8 > MAX_L1_BYTES:
        raise BlockError(f"{path}: L1 table of {l1_size} entries is too large")
    l2_entries = cluster_size // 8
    if l1_size * l2_entries * cluster_size < size:
        raise BlockError(f"{path}: L1 table ({l1_size} entries) is too small for {size} bytes")
    if l1_table_offset % cluster_size or l1_table_offset >= MAX_HOST_OFFSET:
        raise BlockError(f"{path}: L1 table offset {l1_table_offset:#x} is invalid")
    if l1_size and not l1_table_offset:
        raise BlockError(f"{path}: L1 table offset 0 is invalid")
    # header extensions: from the end of the header to the end of the first cluster
    offset = header.header_length
    while offset + 8 <= cluster_size:  # (a first cluster full to the end needs no end marker)
        ext_type, ext_len = struct.unpack_from(">II", first, offset)
        offset += 8
        if ext_type == EXT_END:
            break
        if offset + ext_len > len(first):
            raise BlockError(
                f"{path}: qcow2 header extension {ext_type:#x} runs past the first cluster"
            )
        body = first[offset : offset + ext_len]
        header.extensions.append(ext_type)
        if ext_type == EXT_BACKING_FORMAT:
            header.backing_format = body.split(b"\0", 1)[0].decode("ascii", "replace")
        elif ext_type == EXT_FEATURE_TABLE:
            for at in range(0, ext_len - 47, 48):
                kind, bit = body[at], body[at + 1]
                name = body[at + 2 : at + 48].split(b"\0", 1)[0].decode("utf-8", "replace")
                if kind in _KIND and bit < 64:
                    header.feature_names[(kind, bit)] = name
        offset += (ext_len + 7) & ~7
    # the backing file's name
    if backing_file_offset:
        end = backing_file_offset + backing_file_size
        if backing_file_size > MAX_BACKING_NAME or end > len(first) or not backing_file_size:
            raise BlockError(f"{path}: backing file name ({backing_file_size} bytes) is invalid")
        raw = first[backing_file_offset:end]
        if b"\0" in raw:
            raise BlockError(f"{path}: backing file name contains NUL")
        header.backing_file = os.fsdecode(raw)
    return header


def _l1_entries(header: Header) -> int:
    """How many L1 entries the virtual size uses: the only ones read. (``l1_size`` may be
    larger: qemu keeps it when it shrinks an image, and a hostile header can claim 4M
    entries for a 1 MiB disk; what lies past the virtual size is never loaded.)"""
    covers = header.cluster_size * (header.cluster_size // 8)
    return min(header.l1_size, -(-header.size // covers))


def check_features(header: Header, path: str, read_only: bool) -> None:
    """Refuse (``BlockError``) what this module cannot open (read-only, or writable)."""
    known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT
    for bit in range(64):
        if header.incompatible & (1 << bit) and not (1 << bit) & known:
            what = header.feature(0, bit)
            if 1 << bit == INCOMPAT_COMPRESSION:
                what += f", compression_type {header.compression_type}"
                if header.compression_type == 1:
                    what += " (zstd)"
            raise BlockError(f"{path}: unsupported qcow2 feature: {what}")
    if header.compression_type and not header.incompatible & INCOMPAT_COMPRESSION:
        raise BlockError(f"{path}: compression_type {header.compression_type} without its bit")
    if read_only:
        return
    if header.incompatible & INCOMPAT_DIRTY:
        raise BlockError(
            f"{path}: the image is marked dirty (lazy refcounts, not closed cleanly): "
            "repair it with 'qemu-img check -r all', or open it read-only"
        )
    if header.incompatible & INCOMPAT_CORRUPT:
        raise BlockError(
            f"{path}: the image is marked corrupt: check it with 'qemu-img check', "
            "or open it read-only"
        )
    if header.nb_snapshots:
        raise BlockError(
            f"{path}: has {header.nb_snapshots} internal snapshot(s): writing to it is not "
            "supported (open it read-only, or with snapshot)"
        )
    if (
        not header.refcount_table_clusters
        or header.refcount_table_offset % header.cluster_size
        or not 0 < header.refcount_table_offset < MAX_HOST_OFFSET
    ):
        raise BlockError(f"{path}: the refcount table's location is invalid")
    if header.refcount_table_clusters * header.cluster_size > MAX_REFTABLE_BYTES:
        raise BlockError(f"{path}: the refcount table is too large")


def read_header(path: str) -> Header:
    """Read and parse ``path``'s qcow2 header (blocking; ``BlockError`` if it is not one)."""
    fd, _st = open_checked(path, os.O_RDONLY)
    try:
        with os.fdopen(fd, "rb") as f:
            start = f.read(_V2.size)
            if len(start) >= 24 and start[:4] == MAGIC:
                cluster_bits = struct.unpack_from(">I", start, 20)[0]
                if 9 <= cluster_bits <= 21:
                    start += f.read((1 << cluster_bits) - len(start))
    except OSError as exc:
        raise BlockError(f"{path}: {exc.strerror}") from exc
    return parse_header(start, path)


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"qcow2"`` if the file starts with the qcow2 magic, else ``"raw"`` (blocking);
    ``BlockError`` naming the path if it cannot be read."""
    name = os.fspath(path)
    fd, _st = open_checked(name, os.O_RDONLY)
    try:
        with os.fdopen(fd, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise BlockError(f"{name}: {exc.strerror}") from exc
    return "qcow2" if magic == MAGIC else "raw"


def resolve_backing(image: str, name: str) -> str:
    """The path of backing file ``name`` as the header of ``image`` says it: relative names
    are relative to the image's directory; ``file:`` is the only protocol."""
    colon, slash = name.find(":"), name.find("/")
    if colon > 0 and (slash < 0 or colon < slash):
        protocol = name[:colon]
        if protocol != "file":
            raise BlockError(f"{image}: backing file {name!r}: protocol {protocol}: not supported")
        name = name[colon + 1 :]
    if os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(os.path.abspath(image)), name)


class BackingChainError(BlockError):
    """A backing chain hv will not follow (a loop, too deep, outside the allowed folders); the
    message names the whole chain, so it is not wrapped again on the way up."""


Chain = tuple[tuple[str, str], ...]  # (path, real path) of each image, the top one first


def follow_backing(chain: Chain, name: str, backing_dirs: Sequence[StrPath] = ()) -> str:
    """The path of backing file ``name`` of the last image in ``chain``, if hv may follow it
    (blocking: it looks at the file). A downloaded image must not read host files into the
    guest (``/etc/shadow``, ``/dev/sda``), so a backing file must be a regular file in the
    top image's folder (or below it) or in one of ``backing_dirs``, where the real path
    counts (``..`` and symlinks cannot lead out); a block device, or any file elsewhere, only
    where ``backing_dirs`` names it exactly. ``BackingChainError`` naming the chain, else."""
    path = resolve_backing(chain[-1][0], name)
    real = os.path.realpath(path)
    names = " -> ".join([*(n for n, _ in chain), name if path == name else f"{name} ({path})"])
    if any(real == seen for _, seen in chain):
        raise BackingChainError(f"backing loop: {names}")
    if len(chain) > MAX_CHAIN:
        raise BackingChainError(f"{names}: backing chain is deeper than {MAX_CHAIN} images")
    roots = [os.path.realpath(os.path.dirname(os.path.abspath(chain[0][0])))]
    named: set[str] = set()
    for entry in backing_dirs:
        allowed = os.path.realpath(entry)
        (roots.append if os.path.isdir(allowed) else named.add)(allowed)
    if real in named:
        return path
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        where = os.path.dirname(real)
        raise BackingChainError(
            f"{names}: backing file outside the image's folder; "
            f"pass --backing-dir {where} to allow it (lab files: backing_dirs)"
        )
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return path  # opening it says what is wrong
    if not stat.S_ISREG(mode):
        kind = "a block device" if stat.S_ISBLK(mode) else "not a regular file"
        hint = f"; pass --backing-dir {real} to allow it" if stat.S_ISBLK(mode) else ""
        if stat.S_ISFIFO(mode):
            kind = "a FIFO"
        raise BackingChainError(f"{names}: backing file is {kind}{hint}")
    return path


# -- caches and refcount blocks -------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class _Cache(Generic[K, V]):
    """A bounded LRU whose dirty entries are pinned (never evicted) until cleaned."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[K, V] = collections.OrderedDict()
        self.dirty: dict[K, None] = {}

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V, dirty: bool = False) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if dirty:
            self.dirty[key] = None
        if len(self._items) > self.capacity:
            for old in list(self._items):
                if len(self._items) <= self.capacity:
                    break
                if old not in self.dirty and old != key:
                    del self._items[old]

    def mark_dirty(self, key: K) -> None:
        assert key in self._items
        self.dirty[key] = None

    def dirty_items(self) -> list[tuple[K, V]]:
        return [(key, self._items[key]) for key in self.dirty]

    def clean(self, keys: Sequence[K]) -> None:
        for key in keys:
            self.dirty.pop(key, None)

    def clear(self) -> None:
        self._items.clear()
        self.dirty.clear()


class _Refblock:
    """One refcount block: ``entries`` counters of ``1 << order`` bits, big-endian (and for
    orders below 3, packed into bytes lowest bits first, as qemu does)."""

    def __init__(self, order: int, raw: bytes) -> None:
        self.order = order
        self.bits = 1 << order
        self.max = (1 << self.bits) - 1
        self.entries = len(raw) * 8 // self.bits
        self.wide: array.array[int] | None = None
        self.narrow = bytearray()
        if order >= 3:
            self.wide = array.array(_REFCOUNT_TYPECODES[order])
            self.wide.frombytes(raw)
            if _LITTLE and order > 3:
                self.wide.byteswap()
        else:
            self.narrow = bytearray(raw)

    def get(self, i: int) -> int:
        if self.wide is not None:
            return self.wide[i]
        per = 8 // self.bits
        return (self.narrow[i // per] >> (self.bits * (i % per))) & self.max

    def set(self, i: int, value: int) -> None:
        if self.wide is not None:
            self.wide[i] = value
            return
        per = 8 // self.bits
        shift = self.bits * (i % per)
        byte = self.narrow[i // per] & ~(self.max << shift)
        self.narrow[i // per] = byte | (value << shift)

    def find_zero(self, start: int) -> int:
        """The first index >= start whose refcount is 0, or -1 (a search in C: a full block
        of a million 1-bit counters costs microseconds, not a second of Python)."""
        if self.wide is not None:
            if self.order == 3:
                found = _ZERO_BYTE.search(self.wide, start)
                return found.start() if found else -1
            try:
                return self.wide.index(0, start)
            except ValueError:
                return -1
        per = 8 // self.bits
        i = start
        while i % per and i < self.entries:  # the rest of a partly-scanned byte
            if not self.get(i):
                return i
            i += 1
        found = _ZERO_COUNTER[self.order].search(self.narrow, i // per)
        if found is None:
            return -1
        first = found.start() * per
        return next(i for i in range(first, first + per) if not self.get(i))

    def tobytes(self) -> bytes:
        if self.wide is None:
            return bytes(self.narrow)
        if _LITTLE and self.order > 3:
            copy = self.wide[:]
            copy.byteswap()
            return copy.tobytes()
        return self.wide.tobytes()


def _corrupt(path: str, what: str) -> BlockIOError:
    return BlockIOError(f"{path}: corrupt qcow2 image: {what}")


def _metadata_clusters(
    path: str, header: Header, l1: array.array[int], rt: array.array[int], file_size: int
) -> set[int]:
    """The clusters of a writable image that hold metadata: the header, the L1 table, the
    refcount table, the L2 tables ``l1`` points at and the refcount blocks ``rt`` points at.
    Refuses (``BlockError``, naming the offset) what ``qemu-img check`` calls corrupt and
    what would make allocation scans unbounded: a refcount block that is not cluster-
    aligned, lies past the end of the file, is shared by two refcount-table entries, or
    overlaps other metadata; an L2 table on the L1 or the refcount table. So the refcount
    blocks are distinct clusters of the file. Blocking (Python loops over the tables)."""
    cb = header.cluster_bits
    cs = 1 << cb
    l1_first = header.l1_table_offset >> cb
    l1_end = (header.l1_table_offset + header.l1_size * 8 + cs - 1) >> cb
    rt_first = header.refcount_table_offset >> cb
    rt_end = rt_first + header.refcount_table_clusters

    def fixed(cluster: int) -> str | None:
        if cluster == 0:
            return "the header"
        if l1_first <= cluster < l1_end:
            return "the L1 table"
        if rt_first <= cluster < rt_end:
            return "the refcount table"
        return None

    def refuse(what: str) -> BlockError:
        return BlockError(
            f"{path}: corrupt qcow2 image: {what}; check it with 'qemu-img check', "
            "or open it read-only"
        )

    l2_tables: set[int] = set()
    for i, entry in enumerate(l1):
        offset = entry & OFFSET_MASK
        if offset:
            where = fixed(offset >> cb)
            if where:
                raise refuse(f"L2 table at {offset:#x} (L1 entry {i}) overlaps {where}")
            l2_tables.add(offset >> cb)
    blocks: dict[int, int] = {}
    for i, entry in enumerate(rt):
        offset = entry & REFT_OFFSET_MASK
        if not offset:
            continue
        what = f"refcount block at {offset:#x} (refcount table entry {i})"
        if offset % cs:
            raise refuse(f"refcount block offset {offset:#x} (entry {i}) is not cluster-aligned")
        if offset + cs > file_size:
            raise refuse(f"{what} is past the end of the file ({file_size} bytes)")
        cluster = offset >> cb
        first = blocks.setdefault(cluster, i)
        if first != i:
            raise refuse(
                f"refcount block at {offset:#x} is referenced by refcount table entries "
                f"{first} and {i}"
            )
        where = fixed(cluster) or ("an L2 table" if cluster in l2_tables else None)
        if where:
            raise refuse(f"{what} overlaps {where}")
    meta = l2_tables
    meta.add(0)
    meta.update(range(l1_first, l1_end))
    meta.update(range(rt_first, rt_end))
    meta.update(blocks)
    return meta


# -- the backend -----------------------------------------------------------------------------


class Qcow2Image(BlockBackend):
    """An open qcow2 image: ``await Qcow2Image.open(path, read_only=False)``."""

    def __init__(
        self,
        io: FileIO,
        header: Header,
        l1: array.array[int],
        backing: BlockBackend | None,
        read_only: bool,
        l2_cache_tables: int,
    ) -> None:
        super().__init__(header.size, read_only)
        self._io = io
        self.path = io.path
        self.header = header
        self.backing = backing
        self.label: str | None = None
        self._cbits = header.cluster_bits
        self._cs = header.cluster_size
        self._l2_entries = self._cs // 8
        self._v3 = header.version >= 3
        self._l1 = l1
        self._l1_dirty: set[int] = set()
        self._l2: _Cache[int, array.array[int]] = _Cache(l2_cache_tables)
        self._decompressed: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        csize_bits = self._cbits - 8
        self._csize_shift = 62 - csize_bits
        self._csize_mask = (1 << csize_bits) - 1
        self._coffset_mask = (1 << self._csize_shift) - 1
        # the refcount tree (loaded by a writable open)
        self._rt = array.array("Q")
        self._rt_offset = header.refcount_table_offset
        self._rt_clusters = header.refcount_table_clusters
        self._rt_disk_entries = 0
        self._rt_dirty: set[int] = set()
        self._new_rt: tuple[int, int] | None = None  # a grown table, not yet in the header
        self._rb: _Cache[int, _Refblock] = _Cache(REFBLOCK_CACHE)
        self._per_block = self._cs * 8 >> header.refcount_order
        self._pending_free: list[int] = []
        self._meta: set[int] = set()
        self._hint = 0  # every cluster below it is in use
        self._lock = trio.Lock()
        self._closed = False

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        read_only: bool = False,
        *,
        backing: BlockBackend | None = None,
        l2_cache_tables: int = L2_CACHE_TABLES,
        owner: str | None = None,
        backing_dirs: Sequence[StrPath] = (),
        _chain: Chain = (),
    ) -> Qcow2Image:
        """Open ``path``. Its backing chain is opened read-only (``backing`` replaces the
        header's backing file and is then owned, and closed, by the image), where
        ``follow_backing`` allows, with ``backing_dirs``. ``owner`` names the user in errors
        of others who find it (or its backing files) in use."""
        name = os.fspath(path)
        fd, _size = await trio.to_thread.run_sync(lambda: open_fd(name, read_only, owner=owner))
        io = FileIO(fd, name)
        own_backing: BlockBackend | None = None
        try:
            start = await io.read(0, _V2.size)
            cluster_bits = struct.unpack_from(">I", start, 20)[0]
            if start[:4] == MAGIC and 9 <= cluster_bits <= 21:
                start = await io.read(0, 1 << cluster_bits)  # past the end: zeroes
            header = parse_header(start, name)
            check_features(header, name, read_only)
            raw_l1 = await io.read(header.l1_table_offset, _l1_entries(header) * 8)
            l1 = _u64_array(raw_l1)
            if backing is None and header.backing_file is not None:
                chain = (*_chain, (name, os.path.realpath(name)))
                own_backing = await _open_backing(name, header, chain, owner, backing_dirs)
            image = cls(io, header, l1, backing or own_backing, read_only, max(2, l2_cache_tables))
            if not read_only:
                await image._load_refcounts()
        except BaseException:
            io.close()
            if own_backing is not None:
                await own_backing.close()
            raise
        return image

    async def _load_refcounts(self) -> None:
        header = self.header
        raw = await self._io.read(self._rt_offset, self._rt_clusters * self._cs)
        self._rt = _u64_array(raw)
        self._rt_disk_entries = len(self._rt)
        # the clusters that hold metadata: no data write may land on one (qemu's overlap
        # check; it catches images whose refcounts or L2 entries are wrong). Up to a million
        # table entries, in Python: in a thread, not on the event loop.
        fd, l1, rt = self._io.fd, self._l1, self._rt

        def check() -> set[int]:
            return _metadata_clusters(self.path, header, l1, rt, os.lseek(fd, 0, os.SEEK_END))

        self._meta = await self._io.run("check the metadata", check)
        if self._v3 and header.autoclear:
            # unknown to this writer: clear them, as the spec asks (a bitmap is now stale)
            await self._io.write_many([(88, bytes(8))])
            await self._io.sync()
            header.autoclear = 0

    # -- the mapping -------------------------------------------------------------------------

    async def _load_l2(self, offset: int) -> array.array[int]:
        table = self._l2.get(offset)
        if table is None:
            if offset % self._cs or offset >= MAX_HOST_OFFSET:
                raise _corrupt(self.path, f"L2 table offset {offset:#x} is not cluster-aligned")
            table = _u64_array(await self._io.read(offset, self._cs))
            self._l2.put(offset, table)
            self.counters["l2_misses"] += 1
        return table

    async def _entry(self, vc: int) -> int:
        """The L2 entry of guest cluster ``vc`` (0 if it has no L2 table)."""
        l1_index, l2_index = divmod(vc, self._l2_entries)
        l2_offset = self._l1[l1_index] & OFFSET_MASK
        if not l2_offset:
            return 0
        return (await self._load_l2(l2_offset))[l2_index]

    def _host(self, entry: int) -> int:
        host = entry & OFFSET_MASK
        if host % self._cs:
            raise _corrupt(self.path, f"data cluster offset {host:#x} is not cluster-aligned")
        return host

    def _compressed_range(self, entry: int) -> tuple[int, int]:
        """(host byte offset, length) of a compressed cluster's data."""
        offset = entry & self._coffset_mask
        sectors = ((entry >> self._csize_shift) & self._csize_mask) + 1
        return offset, (offset & ~511) + sectors * 512 - offset

    def _clusters_of(self, entry: int) -> list[int]:
        """The host clusters an L2 entry holds a reference to."""
        if entry & OFLAG_COMPRESSED:
            offset, length = self._compressed_range(entry)
            first = (offset & ~511) >> self._cbits
            last = (offset + length - 1) >> self._cbits
            return list(range(first, last + 1))
        host = entry & OFFSET_MASK
        return [host >> self._cbits] if host else []

    async def _decompress(self, entry: int) -> bytes:
        data = self._decompressed.get(entry)
        if data is not None:
            self._decompressed.move_to_end(entry)
            return data
        offset, length = self._compressed_range(entry)
        packed = await self._io.read(offset, length)
        inflater = zlib.decompressobj(-12)
        try:
            data = inflater.decompress(packed, self._cs)
        except zlib.error as exc:
            raise _corrupt(self.path, f"compressed cluster at {offset:#x}: {exc}") from None
        if len(data) != self._cs:
            raise _corrupt(self.path, f"compressed cluster at {offset:#x} is short")
        self._decompressed[entry] = data
        if len(self._decompressed) > DECOMPRESSED_CACHE:
            self._decompressed.popitem(last=False)
        self.counters["decompressed_clusters"] += 1
        return data

    def _backing_zero(self, vc: int) -> bool:
        return self.backing is None or vc * self._cs >= self.backing.size

    async def _read_backing(self, offset: int, length: int) -> bytes:
        if self.backing is None:
            return bytes(length)
        have = max(0, min(length, self.backing.size - offset))
        if not have:
            return bytes(length)
        data = await self.backing.read(offset, have)
        return data + bytes(length - have) if have < length else data

    # -- reading -----------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        self.check(offset, length)
        async with self._lock:
            self._check_open()
            data = await self._read_locked(offset, length)
        self.counters["read_bytes"] += length
        return data

    async def _read_locked(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        cs = self._cs
        host_runs: list[list[int]] = []  # [host offset, length, position in out]
        backing_runs: list[list[int]] = []  # [guest offset, length, position in out]
        pos = 0
        while pos < length:
            guest = offset + pos
            vc, within = divmod(guest, cs)
            n = min(cs - within, length - pos)
            entry = await self._entry(vc)
            if entry & OFLAG_COMPRESSED:
                data = await self._decompress(entry)
                out[pos : pos + n] = data[within : within + n]
            elif self._v3 and entry & OFLAG_ZERO:
                pass
            elif entry & OFFSET_MASK:
                _extend(host_runs, self._host(entry) + within, n, pos)
            elif self.backing is not None:
                _extend(backing_runs, guest, n, pos)
            pos += n
        if host_runs:
            pieces = await self._io.read_many([(h, n) for h, n, _ in host_runs])
            for (_, n, at), data in zip(host_runs, pieces, strict=True):
                out[at : at + n] = data
        for guest, n, at in backing_runs:
            out[at : at + n] = await self._read_backing(guest, n)
        return bytes(out)

    # -- the refcount tree ---------------------------------------------------------------------

    async def _refblock(self, index: int) -> _Refblock | None:
        if index >= len(self._rt):
            return None
        offset = self._rt[index] & REFT_OFFSET_MASK
        if not offset:
            return None
        block = self._rb.get(index)
        if block is None:
            if offset % self._cs or offset >= MAX_HOST_OFFSET:
                raise _corrupt(self.path, f"refcount block offset {offset:#x} is invalid")
            raw = await self._io.read(offset, self._cs)
            block = _Refblock(self.header.refcount_order, raw)
            self._rb.put(index, block)
        return block

    async def _refcount(self, cluster: int) -> int:
        index, at = divmod(cluster, self._per_block)
        block = await self._refblock(index)
        return block.get(at) if block is not None else 0

    def _new_refblock(self, index: int) -> None:
        """A refcount block for clusters [index * per_block, ...), placed at the first of
        them (all free: no block counted them) and counting itself."""
        cluster = index * self._per_block
        if cluster in self._meta:
            raise _corrupt(self.path, f"no refcount block counts metadata cluster {cluster}")
        block = _Refblock(self.header.refcount_order, bytes(self._cs))
        block.set(0, 1)
        if index >= len(self._rt):
            self._rt.extend([0] * (index + 1 - len(self._rt)))
        self._rt[index] = cluster << self._cbits
        self._meta.add(cluster)
        if index < self._rt_disk_entries:
            self._rt_dirty.add(index)
        self._rb.put(index, block, dirty=True)
        self.counters["refblocks_allocated"] += 1

    async def _find_free(self, count: int) -> int:
        """The first run of ``count`` free clusters at or after the hint. The hint moves past
        every refcount block found full (so no later request scans it again, until a free
        below it moves the hint back), and other tasks run after each such block: a request
        holds the event loop for at most one block's scan (a search in C) at a time. The
        scan ends: the open checked that the refcount blocks are distinct clusters of the
        file, so there are no more full blocks than the file has clusters."""
        cluster = self._hint
        first_free = True
        while True:
            index, at = divmod(cluster, self._per_block)
            block = await self._refblock(index)
            if block is not None:
                found = block.find_zero(at)
                self.counters["refblocks_scanned"] += 1
                if found < 0:
                    cluster = (index + 1) * self._per_block
                    if first_free:
                        self._hint = cluster
                    await trio.lowlevel.checkpoint()
                    continue
                cluster = index * self._per_block + found
            if first_free:
                self._hint = cluster
                first_free = False
            for extra in range(1, count):
                if await self._refcount(cluster + extra):
                    cluster += extra + 1
                    break
            else:
                return cluster

    async def _alloc(self, count: int = 1) -> int:
        """Allocate ``count`` contiguous clusters (refcount 0 -> 1, in memory); their index."""
        while True:
            start = await self._find_free(count)
            if (start + count) << self._cbits > MAX_HOST_OFFSET:
                raise BlockIOError(f"{self.path}: the image file is full (2^56 bytes)")
            missing = False
            for index in range(
                start // self._per_block, (start + count - 1) // self._per_block + 1
            ):
                if await self._refblock(index) is None:
                    self._new_refblock(index)
                    missing = True
            if not missing:
                break
        for cluster in range(start, start + count):
            if cluster in self._meta:
                raise _corrupt(self.path, f"metadata cluster {cluster} has refcount 0")
        for cluster in range(start, start + count):
            index, at = divmod(cluster, self._per_block)
            block = await self._refblock(index)
            assert block is not None
            block.set(at, 1)
            self._rb.mark_dirty(index)
        if start == self._hint:
            self._hint = start + count
        self.counters["clusters_allocated"] += count
        return start

    async def _decref(self, cluster: int) -> None:
        index, at = divmod(cluster, self._per_block)
        block = await self._refblock(index)
        if block is None or not block.get(at):
            self.counters["free_of_free_cluster"] += 1  # an inconsistent image: leave it
            return
        value = block.get(at) - 1
        block.set(at, value)
        self._rb.mark_dirty(index)
        if not value:
            self._hint = min(self._hint, cluster)

    async def _owned(self, entry: int) -> bool:
        """May the (uncompressed, allocated) cluster of ``entry`` be written in place?"""
        if entry & OFLAG_COPIED:
            return True
        host = self._host(entry)
        refcount = await self._refcount(host >> self._cbits)
        if not refcount:
            raise _corrupt(self.path, f"data cluster {host:#x} is in use but has refcount 0")
        return refcount == 1

    # -- writing -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BlockIOError(f"{self.path}: the image is closed")

    async def _maybe_writeback(self) -> None:
        if (
            len(self._l2.dirty) > DIRTY_LIMIT
            or len(self._rb.dirty) > DIRTY_LIMIT
            or len(self._pending_free) > PENDING_FREE_LIMIT
        ):
            self.counters["early_writebacks"] += 1
            await self._writeback()

    async def _l2_for_write(self, vc: int) -> tuple[int, int]:
        """(L2 table offset, index) for guest cluster ``vc``, allocating the table."""
        l1_index, l2_index = divmod(vc, self._l2_entries)
        l1_entry = self._l1[l1_index]
        offset = l1_entry & OFFSET_MASK
        if not offset:
            offset = await self._alloc(1) << self._cbits
            self._meta.add(offset >> self._cbits)
            self._l2.put(offset, array.array("Q", bytes(self._cs)), dirty=True)
            self._l1[l1_index] = offset | OFLAG_COPIED
            self._l1_dirty.add(l1_index)
            self.counters["l2_allocated"] += 1
        elif not l1_entry & OFLAG_COPIED:
            if offset % self._cs:
                raise _corrupt(self.path, f"L2 table offset {offset:#x} is not cluster-aligned")
            refcount = await self._refcount(offset >> self._cbits)
            if refcount != 1:
                raise _corrupt(self.path, f"L2 table {offset:#x} has refcount {refcount}")
            self._l1[l1_index] = offset | OFLAG_COPIED
            self._l1_dirty.add(l1_index)
        return offset, l2_index

    async def _cluster_content(self, vc: int, entry: int) -> bytes:
        """What guest cluster ``vc`` (L2 entry ``entry``) reads as, whole."""
        if entry & OFLAG_COMPRESSED:
            return await self._decompress(entry)
        if self._v3 and entry & OFLAG_ZERO:
            return bytes(self._cs)
        if entry & OFFSET_MASK:
            return await self._io.read(self._host(entry), self._cs)
        return await self._read_backing(vc << self._cbits, self._cs)

    async def write(self, offset: int, data: Chunk) -> None:
        self.check(offset, len(data), write=True)
        async with self._lock:
            self._check_open()
            await self._maybe_writeback()
            await self._write_locked(offset, memoryview(data).cast("B"))
        self.counters["write_bytes"] += len(data)

    async def _write_locked(self, offset: int, data: memoryview) -> None:
        cs = self._cs
        plan: list[tuple[int, int, int, int]] = []  # (L2 offset, index, new entry, old entry)
        tables: dict[int, array.array[int]] = {}
        runs: list[tuple[int, list[Chunk]]] = []
        fresh: list[int] = []
        pos = 0
        try:
            while pos < len(data):
                guest = offset + pos
                vc, within = divmod(guest, cs)
                n = min(cs - within, len(data) - pos)
                piece = data[pos : pos + n]
                whole = n == cs
                l2_offset, l2_index = await self._l2_for_write(vc)
                table = tables[l2_offset] = await self._load_l2(l2_offset)
                entry = table[l2_index]
                if (
                    not entry & OFLAG_COMPRESSED
                    and entry & OFFSET_MASK
                    and await self._owned(entry)
                ):
                    host = self._host(entry)
                    if host >> self._cbits in self._meta:
                        raise _corrupt(self.path, f"data cluster {host:#x} is metadata")
                    if self._v3 and entry & OFLAG_ZERO:  # an allocated zero cluster
                        if whole:
                            _extend_write(runs, host, piece)
                        else:
                            buf = bytearray(cs)
                            buf[within : within + n] = piece
                            _extend_write(runs, host, buf)
                        plan.append((l2_offset, l2_index, host | OFLAG_COPIED, 0))
                    else:
                        _extend_write(runs, host + within, piece)
                        if not entry & OFLAG_COPIED:
                            plan.append((l2_offset, l2_index, entry | OFLAG_COPIED, 0))
                else:
                    if whole:
                        content: Chunk = piece
                    else:
                        buf = bytearray(await self._cluster_content(vc, entry))
                        buf[within : within + n] = piece
                        content = buf
                        self.counters["cow_bytes"] += cs - n
                    cluster = await self._alloc(1)
                    fresh.append(cluster)
                    host = cluster << self._cbits
                    _extend_write(runs, host, content)
                    plan.append((l2_offset, l2_index, host | OFLAG_COPIED, entry))
                pos += n
            await self._io.writev_many(runs)
        except BaseException:
            # nothing on disk refers to the fresh clusters: free them now
            for cluster in fresh:
                index, at = divmod(cluster, self._per_block)
                block = self._rb.get(index)
                if block is not None and block.get(at):
                    block.set(at, block.get(at) - 1)
                    self._hint = min(self._hint, cluster)
            raise
        for l2_offset, l2_index, new, old in plan:
            self._set_entry(l2_offset, tables[l2_offset], l2_index, new)
            if old:
                self._pending_free.extend(self._clusters_of(old))

    def _set_entry(self, l2_offset: int, held: array.array[int], index: int, value: int) -> None:
        table = self._l2.get(l2_offset)
        if table is None:  # evicted (it was clean) since the request looked it up
            table = held
        table[index] = value
        self._l2.put(l2_offset, table, dirty=True)

    async def discard(self, offset: int, length: int) -> None:
        """As ``write_zeroes``: the range reads as zeroes afterwards, and whole clusters go
        back to the free pool (the image file keeps its size)."""
        self.check(offset, length, write=True)
        async with self._lock:
            self._check_open()
            await self._maybe_writeback()
            await self._zero_locked(offset, length)
        self.counters["discard_bytes"] += length

    async def write_zeroes(self, offset: int, length: int) -> None:
        self.check(offset, length, write=True)
        async with self._lock:
            self._check_open()
            await self._maybe_writeback()
            await self._zero_locked(offset, length)
        self.counters["zeroed_bytes"] += length

    async def _zero_locked(self, offset: int, length: int) -> None:
        cs = self._cs
        pos = 0
        while pos < length:
            guest = offset + pos
            vc, within = divmod(guest, cs)
            n = min(cs - within, length - pos)
            l1_index = vc // self._l2_entries
            if not self._l1[l1_index] & OFFSET_MASK and self._backing_zero(vc):
                # no L2 table and nothing behind it: the rest of its range reads as zeroes
                end = min((l1_index + 1) * self._l2_entries * cs, offset + length)
                pos = end - offset
                continue
            if within == 0 and (n == cs or guest + n == self.size):
                await self._zero_cluster(vc)
            elif not await self._reads_zero(vc):
                await self._write_locked(guest, memoryview(bytes(n)))
            pos += n
            if len(self._pending_free) > PENDING_FREE_LIMIT:
                await self._writeback()

    async def _reads_zero(self, vc: int) -> bool:
        entry = await self._entry(vc)
        if entry & OFLAG_COMPRESSED:
            return False
        if self._v3 and entry & OFLAG_ZERO:
            return True
        return not entry & OFFSET_MASK and self._backing_zero(vc)

    async def _zero_cluster(self, vc: int) -> None:
        backing_zero = self._backing_zero(vc)
        if backing_zero and not self._l1[vc // self._l2_entries] & OFFSET_MASK:
            return  # no L2 table, nothing behind it: it reads as zeroes
        if self._v3:
            new = OFLAG_ZERO
        elif backing_zero:
            new = 0
        else:  # version 2 has no zero flag: write zeroes over the backing file's data
            start = vc << self._cbits
            await self._write_locked(start, memoryview(bytes(min(self._cs, self.size - start))))
            return
        l2_offset, l2_index = await self._l2_for_write(vc)
        table = await self._load_l2(l2_offset)
        entry = table[l2_index]
        if entry == new or (not entry and backing_zero):
            return
        self._set_entry(l2_offset, table, l2_index, new)
        self._pending_free.extend(self._clusters_of(entry))

    # -- flushing ------------------------------------------------------------------------------

    async def flush(self) -> None:
        if self.read_only:
            return
        async with self._lock:
            self._check_open()
            await self._writeback()
        self.counters["flushes"] += 1

    async def _relocate_reftable(self) -> tuple[int, int]:
        """Allocate a larger refcount table (in memory): its (offset, clusters)."""
        clusters = max(self._rt_clusters * 2, 1)
        while True:
            clusters = max(clusters, math.ceil((len(self._rt) + 1) * 8 / self._cs))
            if clusters * self._cs > MAX_REFTABLE_BYTES:
                raise BlockIOError(f"{self.path}: the refcount table would exceed 8 MiB")
            start = await self._alloc(clusters)
            self._meta.update(range(start, start + clusters))
            if clusters * self._cs // 8 >= len(self._rt):
                break
            for cluster in range(start, start + clusters):  # never referenced: free now
                await self._decref(cluster)
                self._meta.discard(cluster)
            clusters *= 2
        self._rt.extend([0] * (clusters * self._cs // 8 - len(self._rt)))
        return start << self._cbits, clusters

    async def _writeback(self, final: bool = False) -> None:
        """Write the dirty metadata back in dependency order (see the module docstring)."""
        io = self._io
        if self._new_rt is not None and self._new_rt[1] * self._cs // 8 < len(self._rt):
            # an interrupted flush grew the table, and it has outgrown that since: it was
            # never in the header, so it is free right now
            first = self._new_rt[0] >> self._cbits
            for cluster in range(first, first + self._new_rt[1]):
                await self._decref(cluster)
                self._meta.discard(cluster)
            self._new_rt = None
        if self._new_rt is None and len(self._rt) > self._rt_disk_entries:
            self._new_rt = await self._relocate_reftable()
        relocated = self._new_rt
        # (1) refcount blocks, and the new refcount table
        blocks = self._rb.dirty_items()
        writes: list[tuple[int, Chunk]] = [
            (self._rt[i] & REFT_OFFSET_MASK, block.tobytes()) for i, block in blocks
        ]
        if relocated:
            writes.append((relocated[0], _u64_bytes(self._rt)))
        if writes:
            await io.write_many(sorted(writes))
            self._rb.clean([i for i, _ in blocks])
        # (2) what points at refcount blocks: table entries, or the header's table fields
        if relocated:
            writes = [(48, struct.pack(">QI", *relocated))]
        else:
            writes = [
                (self._rt_offset + i * 8, struct.pack(">Q", self._rt[i]))
                for i in sorted(self._rt_dirty)
            ]
        if writes:
            if io.unsynced:
                await io.sync()
            await io.write_many(writes)
            self._rt_dirty.clear()
        if relocated:
            first = self._rt_offset >> self._cbits
            self._pending_free.extend(range(first, first + self._rt_clusters))
            self._meta.difference_update(range(first, first + self._rt_clusters))
            self._new_rt = None
            self._rt_offset, self._rt_clusters = relocated
            self._rt_disk_entries = len(self._rt)
            self.header.refcount_table_offset, self.header.refcount_table_clusters = relocated
            self.counters["reftable_grown"] += 1
        # (3) L2 tables
        tables = self._l2.dirty_items()
        if tables:
            if io.unsynced:
                await io.sync()
            await io.write_many([(offset, _u64_bytes(table)) for offset, table in tables])
            self._l2.clean([offset for offset, _ in tables])
        # (4) L1 entries
        if self._l1_dirty:
            if io.unsynced:
                await io.sync()
            writes = []
            for first, last in _runs(sorted(self._l1_dirty)):
                chunk = _u64_bytes(self._l1[first : last + 1])
                writes.append((self.header.l1_table_offset + first * 8, chunk))
            await io.write_many(writes)
            self._l1_dirty.clear()
        if io.unsynced:
            await io.sync()
            self.counters["syncs"] += 1
        # (5) what is no longer referenced on disk is free now (one at a time: _decref's only
        # await comes before its change, so an interrupted flush frees nothing twice)
        if self._pending_free:
            self._decompressed.clear()
            while self._pending_free:
                cluster = self._pending_free[-1]
                if cluster in self._meta:
                    # a corrupt L2 entry (say a compressed one whose offset points into the
                    # header) claimed a metadata cluster as its data: the metadata keeps
                    # its count; the entry is gone, so qemu-img check finds nothing left
                    self.counters["free_of_metadata"] += 1
                else:
                    await self._decref(cluster)
                self._pending_free.pop()
            blocks = self._rb.dirty_items()
            await io.write_many(
                sorted((self._rt[i] & REFT_OFFSET_MASK, block.tobytes()) for i, block in blocks)
            )
            self._rb.clean([i for i, _ in blocks])
            if final:
                await io.sync()

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if not self.read_only:
                async with self._lock:
                    await self._writeback(final=True)
        finally:
            self._closed = True
            self._io.close()
            self._l2.clear()
            self._rb.clear()
            if self.backing is not None:
                await self.backing.close()

    def describe(self) -> str:
        what = self.label or f"qcow2 {self.path}"
        ro = ", ro" if self.read_only else ""
        over = f" over {self.backing.describe()}" if self.backing is not None else ""
        return f"{what} ({self.size} bytes{ro}){over}"


def _extend(runs: list[list[int]], start: int, length: int, pos: int) -> None:
    """Add (start, length, pos) to ``runs``, merging with the last run when contiguous."""
    if runs:
        last = runs[-1]
        if last[0] + last[1] == start and last[2] + last[1] == pos:
            last[1] += length
            return
    runs.append([start, length, pos])


def _extend_write(runs: list[tuple[int, list[Chunk]]], start: int, data: Chunk) -> None:
    if runs:
        at, buffers = runs[-1]
        if at + sum(len(b) for b in buffers) == start:
            buffers.append(data)
            return
    runs.append((start, [data]))


def _runs(indices: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Sorted indices as (first, last) runs of consecutive numbers."""
    first = last = indices[0]
    for i in indices[1:]:
        if i != last + 1:
            yield first, last
            first = i
        last = i
    yield first, last


async def _open_backing(
    image: str,
    header: Header,
    chain: Chain,
    owner: str | None,
    backing_dirs: Sequence[StrPath],
) -> BlockBackend:
    assert header.backing_file is not None
    name = header.backing_file
    path = await trio.to_thread.run_sync(follow_backing, chain, name, backing_dirs)
    fmt = header.backing_format
    if fmt is None:
        fmt = await trio.to_thread.run_sync(detect_format, path)
    try:
        if owner is not None and not owner.endswith(BACKING_OWNER):
            owner += BACKING_OWNER
        return await open_image(
            path, fmt, read_only=True, owner=owner, backing_dirs=backing_dirs, _chain=chain
        )
    except BackingChainError:
        raise
    except BlockError as exc:
        inner = str(exc)
        inner = inner.removeprefix(f"{path}: ")
        where = "" if path == header.backing_file else f" ({path})"
        raise BlockError(f"{image}: backing file {header.backing_file!r}{where}: {inner}") from exc


async def open_image(
    path: str | os.PathLike[str],
    fmt: str,
    read_only: bool = False,
    *,
    probed: bool = False,
    owner: str | None = None,
    backing_dirs: Sequence[StrPath] = (),
    _chain: Chain = (),
) -> BlockBackend:
    """Open ``path`` as ``fmt`` (``raw`` or ``qcow2``); ``owner`` as for ``RawFile.open``,
    ``backing_dirs`` as for ``Qcow2Image.open``."""
    if fmt == "raw":
        return await RawFile.open(path, read_only, probed=probed, owner=owner)
    if fmt == "qcow2":
        return await Qcow2Image.open(
            path, read_only, owner=owner, backing_dirs=backing_dirs, _chain=_chain
        )
    raise BlockError(f"{os.fspath(path)}: image format {fmt!r} is not supported (raw, qcow2)")


# -- creating and describing images ----------------------------------------------------------


def read_virtual_size(path: StrPath, fmt: str) -> int:
    """The disk size of image ``path`` in format ``fmt`` (blocking)."""
    return int(_describe(os.fspath(path), fmt)["virtual_size"])


def create_qcow2(
    path: str | os.PathLike[str],
    size: int | None,
    backing: str | os.PathLike[str] | None = None,
    backing_format: str | None = None,
    cluster_size: int = 65536,
    *,
    overwrite: bool = False,
) -> None:
    """Create a qcow2 (version 3) image of ``size`` bytes (``None``: the backing file's size),
    empty, over ``backing`` (its name is stored as given: a relative name is relative to the
    new image's directory), 16-bit refcounts. Blocking: from async code run it in a thread.
    Refuses to replace an existing file unless ``overwrite``."""
    name = os.fspath(path)
    if cluster_size & (cluster_size - 1) or not 512 <= cluster_size <= 2 << 20:
        raise BlockError(f"{name}: cluster size {cluster_size} is not a power of two, 512..2M")
    cluster_bits = cluster_size.bit_length() - 1
    backing_name = None
    if backing is not None:
        backing_name = os.fspath(backing)
        if not backing_name or len(os.fsencode(backing_name)) > MAX_BACKING_NAME:
            raise BlockError(f"{name}: backing file name is empty or too long")
        backing_path = resolve_backing(name, backing_name)
        detected = detect_format(backing_path)
        if backing_format is None:
            backing_format = detected
        elif backing_format not in ("raw", "qcow2"):
            raise BlockError(f"{name}: backing format {backing_format!r} is not raw or qcow2")
        elif backing_format == "qcow2" and detected != "qcow2":
            raise BlockError(f"{name}: backing file {backing_path} is not a qcow2 image")
        if size is None:
            size = read_virtual_size(backing_path, backing_format)
    elif backing_format is not None:
        raise BlockError(f"{name}: a backing format without a backing file")
    if size is None:
        raise BlockError(f"{name}: a size is needed (there is no backing file to take it from)")
    if size < 0 or size % SECTOR:
        raise BlockError(f"{name}: a disk's size must be a multiple of {SECTOR} bytes, not {size}")
    l2_entries = cluster_size // 8
    l1_size = max(1, math.ceil(size / (cluster_size * l2_entries)))
    if l1_size * 8 > MAX_L1_BYTES:
        raise BlockError(f"{name}: {size} bytes is too large for {cluster_size}-byte clusters")
    l1_clusters = math.ceil(l1_size * 8 / cluster_size)
    per_block = cluster_size * 8 // 16
    rt_clusters = blocks = 1
    while True:
        total = 1 + rt_clusters + blocks + l1_clusters
        need_blocks = math.ceil(total / per_block)
        need_rt = math.ceil(need_blocks * 8 / cluster_size)
        if need_blocks <= blocks and need_rt <= rt_clusters:
            break
        blocks, rt_clusters = max(blocks, need_blocks), max(rt_clusters, need_rt)
    rt_offset = cluster_size
    blocks_offset = rt_offset + rt_clusters * cluster_size
    l1_offset = blocks_offset + blocks * cluster_size
    # header extensions, then the backing file's name, all in cluster 0
    extensions = b""
    if backing_format is not None:
        extensions += _extension(EXT_BACKING_FORMAT, backing_format.encode())
    features = b"".join(
        struct.pack(">BB46s", kind, bit, text.encode())
        for (kind, bit), text in FEATURE_NAMES.items()
    )
    name_bytes = os.fsencode(backing_name) if backing_name is not None else b""
    table = _extension(EXT_FEATURE_TABLE, features)
    if 112 + len(extensions) + len(table) + 8 + len(name_bytes) <= cluster_size:
        extensions += table  # optional: only when it fits
    extensions += struct.pack(">II", EXT_END, 0)
    backing_offset = 112 + len(extensions) if name_bytes else 0
    if 112 + len(extensions) + len(name_bytes) > cluster_size:
        raise BlockError(f"{name}: the backing file name does not fit in the first cluster")
    header = _V2.pack(
        MAGIC,
        3,
        backing_offset,
        len(name_bytes),
        cluster_bits,
        size,
        0,
        l1_size,
        l1_offset,
        rt_offset,
        rt_clusters,
        0,
        0,
    ) + _V3.pack(0, 0, 0, 4, 112)
    header += bytes(112 - len(header))  # compression_type 0 (zlib) and padding
    first = header + extensions + name_bytes
    reftable = b"".join(struct.pack(">Q", blocks_offset + i * cluster_size) for i in range(blocks))
    counts = struct.pack(f">{total}H", *([1] * total))
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(name, flags, 0o644)
    except FileExistsError:
        raise BlockError(f"{name}: already exists") from None
    except OSError as exc:
        raise BlockError(f"{name}: cannot create: {exc.strerror}") from exc
    try:
        for offset, data in ((0, first), (rt_offset, reftable), (blocks_offset, counts)):
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, offset + len(data) - len(view)) :]
        os.ftruncate(fd, l1_offset + l1_clusters * cluster_size)
        os.fsync(fd)
    except OSError as exc:
        raise BlockError(f"{name}: cannot write: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack(">II", kind, len(body)) + body + bytes(-len(body) % 8)


def create_image(
    path: str | os.PathLike[str],
    fmt: str,
    size: int | None,
    *,
    backing: str | os.PathLike[str] | None = None,
    backing_format: str | None = None,
    cluster_size: int = 65536,
    overwrite: bool = False,
) -> None:
    """Create a ``raw`` or ``qcow2`` image (blocking); what ``hv disk create`` calls."""
    from blockdev.raw import create_raw

    if fmt == "qcow2":
        create_qcow2(path, size, backing, backing_format, cluster_size, overwrite=overwrite)
    elif fmt == "raw":
        if backing is not None:
            raise BlockError(f"{os.fspath(path)}: a raw image cannot have a backing file")
        if size is None:
            raise BlockError(f"{os.fspath(path)}: a size is needed")
        create_raw(path, size, overwrite=overwrite)
    else:
        raise BlockError(f"{os.fspath(path)}: image format {fmt!r} is not supported")


def image_info(path: StrPath, backing_dirs: Sequence[StrPath] = ()) -> dict[str, Any]:
    """What ``hv disk info`` shows (blocking): filename, format, virtual_size, disk_size
    (bytes allocated on the host: st_blocks * 512), cluster_size (None for raw),
    backing_file and backing_format (as the header says), and backing_chain: one
    ``{"filename", "format", "virtual_size"}`` per backing image, nearest first, followed
    as ``open_image`` follows it (``follow_backing``: ``BackingChainError`` where it
    would not)."""
    name = os.fspath(path)
    info = _describe(name, detect_format(name))
    chain: list[dict[str, Any]] = []
    seen: Chain = ((name, os.path.realpath(name)),)
    current = info
    while current["backing_file"] is not None:
        backing = follow_backing(seen, current["backing_file"], backing_dirs)
        seen = (*seen, (backing, os.path.realpath(backing)))
        current = _describe(backing, current["backing_format"] or detect_format(backing))
        chain.append({k: current[k] for k in ("filename", "format", "virtual_size")})
    info["backing_chain"] = chain
    return info


def _describe(path: str, fmt: str) -> dict[str, Any]:
    fd, st = open_checked(path, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)  # a block device's st_size is 0
    except OSError as exc:
        raise BlockError(f"{path}: cannot find its size: {exc.strerror}") from exc
    finally:
        os.close(fd)
    info: dict[str, Any] = {
        "filename": path,
        "format": fmt,
        "virtual_size": size,
        "disk_size": st.st_blocks * 512,
        "cluster_size": None,
        "backing_file": None,
        "backing_format": None,
    }
    if fmt == "qcow2":
        header = read_header(path)
        info.update(
            virtual_size=header.size,
            cluster_size=header.cluster_size,
            version=header.version,
            refcount_bits=1 << header.refcount_order,
            backing_file=header.backing_file,
            backing_format=header.backing_format,
            snapshots=header.nb_snapshots,
            dirty=bool(header.incompatible & INCOMPAT_DIRTY),
            corrupt=bool(header.incompatible & INCOMPAT_CORRUPT),
        )
    return info
