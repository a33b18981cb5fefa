"""qcow2, held to qemu-img: images hv writes pass ``qemu-img check`` and ``qemu-img compare``
with the bytes they should hold; images qemu makes (backing files, compressed clusters, small
clusters, version 2, zero clusters) hv reads byte-exact; refused features are named; a
killed writer leaves no corruption and keeps what it flushed; random operation sequences
match a memory model; mutated headers open or fail with ``BlockError``, nothing else."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import blockdev
from blockdev import (
    BlockBackend,
    BlockError,
    BlockIOError,
    MemoryDisk,
    Qcow2Image,
    RawFile,
    create_qcow2,
    image_info,
    open_disk,
)
from blockdev import qcow2 as q

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-img") and shutil.which("qemu-io")),
    reason="qemu-img and qemu-io (qemu-utils) are the oracle",
)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def qemu_img(*args: object, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)
    assert result.returncode in ok, (args, result.returncode, result.stdout, result.stderr)
    return result


def qemu_io(image: Path, *commands: str, fmt: str = "qcow2") -> None:
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    result = subprocess.run([*argv, str(image)], capture_output=True, text=True)
    assert result.returncode == 0 and "rror" not in result.stdout + result.stderr, result


def check(image: Path) -> None:
    """qemu-img check: no errors and no leaks."""
    result = qemu_img("check", image)
    assert "No errors were found on the image." in result.stdout, result.stdout


def as_raw(image: Path) -> bytes:
    """What qemu reads from ``image``, whole."""
    out = image.with_name(image.name + ".oracle.raw")
    qemu_img("convert", "-O", "raw", image, out)
    data = out.read_bytes()
    out.unlink()
    return data


def compare(image: Path, expected: bytes) -> None:
    """qemu-img compare ``image`` with a raw file holding ``expected``."""
    raw = image.with_name(image.name + ".expected.raw")
    raw.write_bytes(expected)
    result = qemu_img("compare", "-f", "qcow2", "-F", "raw", image, raw, ok=(0, 1))
    raw.unlink()
    assert result.returncode == 0, result.stdout


async def read_all(disk: BlockBackend) -> bytes:
    parts = []
    for offset in range(0, disk.size, MiB):
        parts.append(await disk.read(offset, min(MiB, disk.size - offset)))
    return b"".join(parts)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Model:
    """The bytes a disk should hold, and the same operations applied to a disk."""

    def __init__(self, disk: BlockBackend, data: bytes) -> None:
        self.disk = disk
        self.data = bytearray(data)

    async def write(self, offset: int, data: bytes) -> None:
        await self.disk.write(offset, data)
        self.data[offset : offset + len(data)] = data

    async def zero(self, offset: int, length: int, discard: bool = False) -> None:
        if discard:
            await self.disk.discard(offset, length)
        else:
            await self.disk.write_zeroes(offset, length)
        self.data[offset : offset + length] = bytes(length)

    async def random_ops(self, rng: random.Random, count: int, cluster: int) -> None:
        size = self.disk.size
        for _ in range(count):
            offset = rng.randrange(0, size - 1)
            if rng.random() < 0.3:
                offset -= offset % cluster
            length = min(size - offset, rng.choice([1, 511, 4096, cluster, 3 * cluster + 17]))
            kind = rng.random()
            if kind < 0.7:
                await self.write(offset, rng.randbytes(length))
            else:
                await self.zero(offset, length, discard=kind < 0.85)
            if rng.random() < 0.1:
                await self.disk.flush()


# -- images hv writes, qemu checks ---------------------------------------------------------


@pytest.mark.parametrize("cluster_size", [512, 4096, 65536])
async def test_hv_image_passes_check_and_compare(tmp_path: Path, cluster_size: int) -> None:
    image = tmp_path / "hv.qcow2"
    create_qcow2(image, 3 * MiB, cluster_size=cluster_size)
    check(image)
    disk = await Qcow2Image.open(image)
    model = Model(disk, bytes(disk.size))
    await model.random_ops(random.Random(cluster_size), 120, cluster_size)
    assert await read_all(disk) == model.data
    await disk.close()
    check(image)
    compare(image, bytes(model.data))
    info = json.loads(qemu_img("info", "--output=json", image).stdout)
    assert info["cluster-size"] == cluster_size and info["virtual-size"] == 3 * MiB


@pytest.mark.parametrize("backing_format", ["raw", "qcow2"])
async def test_hv_writes_over_a_backing_file(tmp_path: Path, backing_format: str) -> None:
    rng = random.Random(7)
    base_bytes = rng.randbytes(2 * MiB)
    raw = tmp_path / "base.raw"
    raw.write_bytes(base_bytes)
    if backing_format == "qcow2":
        base = tmp_path / "base.qcow2"
        qemu_img("convert", "-O", "qcow2", raw, base)
    else:
        base = raw
    image = tmp_path / "top.qcow2"
    create_qcow2(image, None, backing=base.name, backing_format=backing_format)
    base_hash = sha(base)
    info = json.loads(qemu_img("info", "--output=json", image).stdout)
    assert info["backing-filename"] == base.name
    assert info["backing-filename-format"] == backing_format
    disk = await Qcow2Image.open(image)
    assert disk.size == 2 * MiB and disk.backing is not None
    model = Model(disk, base_bytes)
    await model.random_ops(rng, 100, 65536)
    await disk.flush()
    assert await read_all(disk) == model.data
    await disk.close()
    check(image)
    compare(image, bytes(model.data))
    assert sha(base) == base_hash  # the backing file is only read


async def test_partial_write_copies_the_rest_of_the_cluster_from_the_backing(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x11" * MiB)
    image = tmp_path / "top.qcow2"
    create_qcow2(image, MiB, backing=base, backing_format="raw")
    disk = await Qcow2Image.open(image)
    await disk.write(65536 + 100, b"\x22" * 10)
    await disk.close()
    data = as_raw(image)
    assert data[65536:65636] == b"\x11" * 100
    assert data[65636:65646] == b"\x22" * 10
    assert data[65646 : 2 * 65536] == b"\x11" * (65536 - 110)
    check(image)


async def test_refcount_table_grows(tmp_path: Path) -> None:
    # 512-byte clusters: a refcount block covers 128 KiB, the first table 8 MiB of file
    image = tmp_path / "small.qcow2"
    create_qcow2(image, 12 * MiB, cluster_size=512)
    disk = await Qcow2Image.open(image)
    model = Model(disk, bytes(disk.size))
    rng = random.Random(3)
    for offset in range(0, 10 * MiB, 256 * 1024):
        await model.write(offset, rng.randbytes(256 * 1024))
    await model.random_ops(rng, 40, 512)
    assert disk.counters["reftable_grown"] >= 1
    await disk.close()
    check(image)
    compare(image, bytes(model.data))
    header = q.read_header(str(image))
    assert header.refcount_table_clusters > 1


async def test_metadata_caches_small_and_early_writebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(q, "DIRTY_LIMIT", 2)
    monkeypatch.setattr(q, "REFBLOCK_CACHE", 2)
    image = tmp_path / "cache.qcow2"
    create_qcow2(image, 8 * MiB, cluster_size=4096)  # an L2 table covers 2 MiB
    disk = await Qcow2Image.open(image, l2_cache_tables=2)
    model = Model(disk, bytes(disk.size))
    await model.random_ops(random.Random(11), 150, 4096)
    assert disk.counters["early_writebacks"] > 0 and disk.counters["l2_misses"] > 4
    assert await read_all(disk) == model.data
    await disk.close()
    check(image)
    compare(image, bytes(model.data))


async def test_discard_frees_clusters_for_reuse(tmp_path: Path) -> None:
    image = tmp_path / "reuse.qcow2"
    create_qcow2(image, 4 * MiB)
    disk = await Qcow2Image.open(image)
    await disk.write(0, b"\x01" * (2 * MiB))
    await disk.flush()
    end = os.path.getsize(image)
    await disk.discard(0, 2 * MiB)
    assert await disk.read(0, 2 * MiB) == bytes(2 * MiB)
    await disk.flush()  # now the clusters are free
    await disk.write(2 * MiB, b"\x02" * (2 * MiB))
    await disk.close()
    assert os.path.getsize(image) == end  # the freed clusters were used again
    check(image)
    compare(image, bytes(2 * MiB) + b"\x02" * (2 * MiB))


async def test_zeroes_hide_the_backing_file(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\xee" * MiB)
    image = tmp_path / "top.qcow2"
    create_qcow2(image, MiB, backing=base, backing_format="raw")
    disk = await Qcow2Image.open(image)
    await disk.write_zeroes(0, 3 * 65536 + 1000)  # three whole clusters and a part
    await disk.discard(5 * 65536, 65536)
    expected = bytearray(b"\xee" * MiB)
    expected[: 3 * 65536 + 1000] = bytes(3 * 65536 + 1000)
    expected[5 * 65536 : 6 * 65536] = bytes(65536)
    assert await read_all(disk) == expected
    await disk.close()
    check(image)
    compare(image, bytes(expected))
    qemu_map = json.loads(qemu_img("map", "--output=json", image).stdout)
    assert any(m["start"] == 0 and m["zero"] and m["depth"] == 0 for m in qemu_map)


async def test_flush_orders_refcounts_then_l2_then_l1(tmp_path: Path) -> None:
    image = tmp_path / "order.qcow2"
    create_qcow2(image, 4 * MiB)
    disk = await Qcow2Image.open(image)
    events: list[tuple[str, int]] = []
    io = disk._io
    real_write_many, real_writev_many, real_sync = io.write_many, io.writev_many, io.sync

    async def write_many(pieces: Any) -> None:
        events.extend(("write", offset) for offset, _ in pieces)
        await real_write_many(pieces)

    async def writev_many(runs: Any) -> None:
        events.extend(("write", offset) for offset, _ in runs)
        await real_writev_many(runs)

    async def sync() -> None:
        events.append(("sync", 0))
        await real_sync()

    io.write_many, io.writev_many, io.sync = write_many, writev_many, sync  # type: ignore[method-assign]
    await disk.write(3 * MiB + 5, b"data")  # a new L2 table, a new data cluster
    refblock = disk._rt[0] & q.REFT_OFFSET_MASK
    l2_table = disk._l1[0] & q.OFFSET_MASK
    data = (await disk._entry(3 * MiB // 65536)) & q.OFFSET_MASK
    l1_entry = disk.header.l1_table_offset
    assert events == [("write", data)]  # only the data, before the flush
    await disk.flush()
    assert events == [
        ("write", data),
        ("write", refblock),  # refcounts for the data cluster and the L2 table
        ("sync", 0),  # data and refcounts stable before anything points at them
        ("write", l2_table),
        ("sync", 0),
        ("write", l1_entry),
        ("sync", 0),
    ]
    events.clear()
    await disk.discard(3 * MiB, 65536)  # the data cluster is freed after its L2 entry
    await disk.flush()
    assert events == [("write", l2_table), ("sync", 0), ("write", refblock)]
    await disk.close()
    check(image)


async def test_a_write_never_lands_on_metadata(tmp_path: Path) -> None:
    image = tmp_path / "bad.qcow2"
    create_qcow2(image, MiB, cluster_size=4096)
    disk = await Qcow2Image.open(image)
    await disk.write(0, b"x" * 4096)
    await disk.close()
    header = q.read_header(str(image))
    data = bytearray(image.read_bytes())
    l2 = struct.unpack_from(">Q", data, header.l1_table_offset)[0] & q.OFFSET_MASK
    # the first L2 entry now claims the L1 table's cluster as its data
    struct.pack_into(">Q", data, l2, header.l1_table_offset | q.OFLAG_COPIED)
    image.write_bytes(data)
    disk = await Qcow2Image.open(image)
    with pytest.raises(BlockIOError, match=r"corrupt qcow2 image: data cluster .* is metadata"):
        await disk.write(0, b"\xff" * 4096)
    await disk.close()
    assert image.read_bytes() == data


# -- images qemu makes, hv reads ---------------------------------------------------------


async def test_reads_qemu_written_image(tmp_path: Path) -> None:
    image = tmp_path / "q.qcow2"
    qemu_img("create", "-f", "qcow2", image, "4M")
    qemu_io(image, "write -P 0xab 0 64k", "write -P 0xcd 100k 10k", "write -P 0x5a 3M 1M")
    disk = await Qcow2Image.open(image, read_only=True)
    data = await read_all(disk)
    await disk.close()
    assert data == as_raw(image)
    assert data[:65536] == b"\xab" * 65536 and data[102400:112640] == b"\xcd" * 10240


@pytest.mark.parametrize("backing_format", ["raw", "qcow2"])
async def test_reads_qemu_image_over_backing(tmp_path: Path, backing_format: str) -> None:
    base = tmp_path / f"base.{backing_format}"
    qemu_img("create", "-f", backing_format, base, "2M")
    qemu_io(base, "write -P 0x11 0 2M", fmt=backing_format)
    image = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", backing_format, image)
    qemu_io(image, "write -P 0x22 64k 4k", "write -z 1M 128k", "write -P 0x33 1536k 1")
    disk = await Qcow2Image.open(image, read_only=True)
    data = await read_all(disk)
    await disk.close()
    assert data == as_raw(image)
    assert data[:65536] == b"\x11" * 65536
    assert data[65536:69632] == b"\x22" * 4096 and data[69632:131072] == b"\x11" * 61440
    assert data[MiB : MiB + 131072] == bytes(131072)


async def test_reads_and_rewrites_compressed_clusters(tmp_path: Path) -> None:
    rng = random.Random(5)
    content = b"".join(bytes([rng.randrange(4)]) * rng.randrange(1, 300) for _ in range(40000))[
        : 3 * MiB
    ]
    raw = tmp_path / "plain.raw"
    raw.write_bytes(content)
    image = tmp_path / "packed.qcow2"
    qemu_img("convert", "-c", "-O", "qcow2", raw, image)
    assert "compressed" in qemu_img("check", image).stdout
    disk = await Qcow2Image.open(image, read_only=True)
    assert await read_all(disk) == content
    await disk.close()
    disk = await Qcow2Image.open(image)
    model = Model(disk, content)
    await model.write(65536 + 7, b"new data in a compressed cluster")
    await model.zero(4 * 65536, 65536)
    await model.random_ops(rng, 30, 65536)
    assert disk.counters["decompressed_clusters"] > 0
    await disk.close()
    check(image)  # the compressed clusters' refcounts were dropped, not leaked
    compare(image, bytes(model.data))


@pytest.mark.parametrize(
    "options",
    [
        "cluster_size=4096",
        "cluster_size=512",
        "cluster_size=2M",
        "refcount_bits=1",
        "refcount_bits=8",
        "refcount_bits=64",
        "compat=0.10",
        "cluster_size=4096,lazy_refcounts=on",
    ],
)
async def test_qemu_image_options_read_and_write(tmp_path: Path, options: str) -> None:
    image = tmp_path / "opt.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", options, image, "3M")
    qemu_io(image, "write -P 0xab 0 64k", "write -P 0x77 2M 5000")
    expected = as_raw(image)
    disk = await Qcow2Image.open(image)
    assert await read_all(disk) == expected
    model = Model(disk, expected)
    cluster = disk.header.cluster_size
    await model.random_ops(random.Random(options), 60, cluster)
    await disk.close()
    check(image)
    compare(image, bytes(model.data))


async def test_backing_chain_of_three_relative_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    base = tmp_path / "sub" / "base.raw"
    base.write_bytes(b"\x01" * (2 * MiB))
    mid = tmp_path / "sub" / "mid.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid)
    qemu_img("create", "-f", "qcow2", "-b", "sub/mid.qcow2", "-F", "qcow2", top)
    qemu_io(mid, "write -P 0x02 64k 64k")
    qemu_io(top, "write -P 0x03 96k 4k")
    monkeypatch.chdir("/")  # relative names are relative to each image, not to the cwd
    disk = await Qcow2Image.open(top, read_only=True)
    data = await read_all(disk)
    assert data == as_raw(top)
    assert data[:65536] == b"\x01" * 65536
    assert data[65536:98304] == b"\x02" * 32768
    assert data[98304:102400] == b"\x03" * 4096
    assert "mid.qcow2" in disk.describe() and "base.raw" in disk.describe()
    await disk.close()
    info = image_info(top)
    assert [Path(i["filename"]).name for i in info["backing_chain"]] == ["mid.qcow2", "base.raw"]
    assert [i["format"] for i in info["backing_chain"]] == ["qcow2", "raw"]
    assert info["format"] == "qcow2" and info["virtual_size"] == 2 * MiB
    assert info["cluster_size"] == 65536 and info["disk_size"] > 0


async def test_backing_loop(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-f", "qcow2", b, "1M")
    qemu_img("create", "-f", "qcow2", "-b", b.name, "-F", "qcow2", a)
    qemu_img("rebase", "-u", "-b", a.name, "-F", "qcow2", b)
    with pytest.raises(BlockError, match=r"backing loop: .*a\.qcow2 -> .*b\.qcow2 -> .*a\.qcow2"):
        await Qcow2Image.open(a, read_only=True)
    with pytest.raises(BlockError, match="backing loop"):
        image_info(a)
    qemu_img("rebase", "-u", "-b", a.name, "-F", "qcow2", a)  # itself
    with pytest.raises(BlockError, match="backing loop"):
        await open_disk(f"{a},ro")


async def test_missing_backing_file(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(MiB))
    image = tmp_path / "top.qcow2"
    create_qcow2(image, None, backing="base.raw")
    base.unlink()
    with pytest.raises(BlockError, match=r"backing file 'base.raw'.*no such file"):
        await Qcow2Image.open(image)


@pytest.mark.parametrize(
    ("options", "feature"),
    [
        (["-o", "extended_l2=on"], "extended L2 entries"),
        (["-o", "compression_type=zstd"], "zstd"),
        (["-o", "data_file={tmp}/data.raw"], "external data file"),
    ],
)
async def test_unsupported_features_are_refused(
    tmp_path: Path, options: list[str], feature: str
) -> None:
    image = tmp_path / "x.qcow2"
    qemu_img("create", "-f", "qcow2", *(o.format(tmp=tmp_path) for o in options), image, "1M")
    for read_only in (True, False):
        with pytest.raises(BlockError, match=feature):
            await Qcow2Image.open(image, read_only=read_only)


async def test_unknown_feature_bits_and_encryption(tmp_path: Path) -> None:
    image = tmp_path / "x.qcow2"
    create_qcow2(image, MiB)
    data = bytearray(image.read_bytes())
    struct.pack_into(">I", data, 32, 2)  # crypt_method LUKS (qemu takes seconds to make one)
    image.write_bytes(data)
    with pytest.raises(BlockError, match=r"encrypted qcow2 images \(crypt_method 2\)"):
        await Qcow2Image.open(image, read_only=True)
    struct.pack_into(">I", data, 32, 0)
    struct.pack_into(">Q", data, 72, 1 << 9)  # an incompatible bit no one knows
    image.write_bytes(data)
    with pytest.raises(BlockError, match=r"unknown \(incompatible bit 9\)"):
        await Qcow2Image.open(image, read_only=True)
    struct.pack_into(">Q", data, 72, 0)
    struct.pack_into(">Q", data, 80, 1 << 20)  # compatible: ignored
    struct.pack_into(">Q", data, 88, 1 << 7)  # autoclear: a writer clears it
    image.write_bytes(data)
    before = sha(image)
    disk = await Qcow2Image.open(image, read_only=True)
    await disk.close()
    assert sha(image) == before
    disk = await Qcow2Image.open(image)
    await disk.write(0, b"x" * 512)
    await disk.close()
    assert q.read_header(str(image)).autoclear == 0
    check(image)


async def test_dirty_corrupt_and_snapshots_open_read_only(tmp_path: Path) -> None:
    image = tmp_path / "x.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 0x42 0 4k")
    qemu_img("snapshot", "-c", "first", image)
    with pytest.raises(BlockError, match="internal snapshot"):
        await Qcow2Image.open(image)
    disk = await Qcow2Image.open(image, read_only=True)
    assert await disk.read(0, 4096) == b"\x42" * 4096
    await disk.close()
    over = await open_disk(f"{image},snapshot")  # an overlay takes the writes
    await over.write(0, b"\x43" * 4096)
    assert await over.read(0, 4096) == b"\x43" * 4096
    await over.close()
    for bit, word in ((0, "dirty"), (1, "corrupt")):
        other = tmp_path / f"{word}.qcow2"
        create_qcow2(other, MiB)
        data = bytearray(other.read_bytes())
        struct.pack_into(">Q", data, 72, 1 << bit)
        other.write_bytes(data)
        with pytest.raises(BlockError, match=word):
            await Qcow2Image.open(other)
        disk = await Qcow2Image.open(other, read_only=True)
        assert await disk.read(0, 512) == bytes(512)
        await disk.close()


async def test_read_only_never_writes(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(os.urandom(MiB))
    image = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base.name, "-F", "raw", image)
    qemu_io(image, "write -P 0x01 0 100k")
    before = sha(image), sha(base), os.stat(image).st_mtime_ns
    disk = await Qcow2Image.open(image, read_only=True)
    await read_all(disk)
    with pytest.raises(ValueError, match="read-only"):
        await disk.write(0, b"x")
    with pytest.raises(ValueError, match="read-only"):
        await disk.discard(0, 512)
    await disk.flush()
    await disk.close()
    assert (sha(image), sha(base), os.stat(image).st_mtime_ns) == before


async def test_concurrent_requests(tmp_path: Path) -> None:
    image = tmp_path / "c.qcow2"
    create_qcow2(image, 4 * MiB, cluster_size=4096)
    disk = await Qcow2Image.open(image)
    chunks = {i: bytes([i + 1]) * 12288 for i in range(64)}

    async def writer(i: int) -> None:
        await disk.write(i * 65536 + 1000, chunks[i])

    async with trio.open_nursery() as nursery:
        for i in chunks:
            nursery.start_soon(writer, i)
    results: dict[int, bytes] = {}

    async def reader(i: int) -> None:
        results[i] = await disk.read(i * 65536 + 1000, 12288)

    async with trio.open_nursery() as nursery:
        for i in chunks:
            nursery.start_soon(reader, i)
    assert results == chunks
    await disk.close()
    check(image)


async def test_full_file_system_is_an_io_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)])
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        image = mnt / "full.qcow2"
        create_qcow2(image, 4 * MiB)
        disk = await Qcow2Image.open(image)
        with pytest.raises(BlockIOError, match="ENOSPC"):
            for offset in range(0, 4 * MiB, 256 * 1024):
                await disk.write(offset, b"\x5a" * 256 * 1024)
                await disk.flush()
        with contextlib.suppress(BlockIOError):
            await disk.close()
        result = qemu_img("check", image, ok=(0, 3))  # leaks at most, no corruption
        assert "ERROR" not in result.stdout, result.stdout
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- crash consistency ---------------------------------------------------------------------

CHILD = r"""
import random, sys, trio
sys.stdout.reconfigure(line_buffering=True)
from blockdev import Qcow2Image

async def main(path, seed):
    disk = await Qcow2Image.open(path)
    rng = random.Random(seed)
    size, cluster = disk.size, disk.header.cluster_size
    print("ready")
    while True:
        for _ in range(rng.randrange(1, 6)):
            offset = rng.randrange(0, size - 1)
            if rng.random() < 0.3:
                offset -= offset % cluster
            length = min(size - offset, rng.choice([1, 4096, cluster, rng.randrange(1, 200000)]))
            fill = rng.randrange(1, 256)
            if rng.random() < 0.85:
                print(f"W {offset} {length} {fill}")
                await disk.write(offset, bytes([fill]) * length)
            else:
                print(f"Z {offset} {length} 0")
                await disk.write_zeroes(offset, length)
        await disk.flush()
        print("F")

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def verify_after_crash(actual: bytes, before: bytes, lines: list[str]) -> bytes:
    """``actual`` holds everything flushed (the ops up to the last F line) and, where later
    ops wrote, each byte is the flushed value or one of theirs. Returns ``actual``."""
    ops = [line.split() for line in lines if line and line != "ready"]
    flushed = max((i for i, op in enumerate(ops) if op == ["F"]), default=-1)
    model = bytearray(before)
    for op in ops[: flushed + 1]:
        if op[0] in ("W", "Z"):
            offset, length, fill = map(int, op[1:])
            model[offset : offset + length] = bytes([fill]) * length
    later = [tuple(map(int, op[1:])) for op in ops[flushed + 1 :] if op[0] in ("W", "Z")]
    edges = sorted({0, len(model)} | {o for o, _, _ in later} | {o + n for o, n, _ in later})
    for start, end in itertools.pairwise(edges):
        if actual[start:end] == model[start:end]:
            continue
        allowed = {fill for o, n, fill in later if o <= start and end <= o + n}
        assert allowed, f"flushed data lost at {start}..{end}"
        for i in range(start, end):
            assert actual[i] == model[i] or actual[i] in allowed, f"byte {i}: {actual[i]}"
    return actual


@pytest.mark.parametrize("cluster_size", [65536, 512])
def test_killed_writer_leaves_a_consistent_image(tmp_path: Path, cluster_size: int) -> None:
    rng = random.Random(cluster_size)
    base = tmp_path / "base.raw"
    base_bytes = rng.randbytes(2 * MiB)
    base.write_bytes(base_bytes)
    image = tmp_path / "crash.qcow2"
    create_qcow2(image, None, backing=base, backing_format="raw", cluster_size=cluster_size)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    content = base_bytes
    flushes = 0
    for round_ in range(4):
        with subprocess.Popen(
            [sys.executable, str(script), str(image), str(round_)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        ) as child:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.05, 0.4))  # the kill comes at a random moment: the test
            child.kill()
            rest = child.stdout.read()
        lines = rest.split("\n")[:-1]  # whole lines only
        flushes += lines.count("F")
        result = qemu_img("check", image, ok=(0, 3))  # 3: leaked clusters, allowed
        assert "ERROR" not in result.stdout, result.stdout
        content = verify_after_crash(as_raw(image), content, lines)
    assert flushes > 0  # the child got to flush, so the check above checked something


# -- a memory model -------------------------------------------------------------------------

SIZE = 256 * 1024 + 1536  # not a whole number of clusters

op = st.one_of(
    st.tuples(st.just("w"), st.integers(0, SIZE - 1), st.integers(1, 70000), st.integers(0, 255)),
    st.tuples(st.just("z"), st.integers(0, SIZE - 1), st.integers(1, 140000), st.just(0)),
    st.tuples(st.just("d"), st.integers(0, SIZE - 1), st.integers(1, 140000), st.just(0)),
    st.tuples(st.just("f"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
)


async def run_model(
    directory: Path, ops: list[tuple[str, int, int, int]], backing: bool, cluster_size: int
) -> None:
    image = directory / "m.qcow2"
    rng = random.Random(len(ops))
    initial = bytes(SIZE)
    if backing:
        base = directory / "base.raw"
        initial = rng.randbytes(SIZE - 4096)  # a backing file smaller than the image
        base.write_bytes(initial)
        initial += bytes(4096)
        create_qcow2(image, SIZE, backing=base, backing_format="raw", cluster_size=cluster_size)
    else:
        create_qcow2(image, SIZE, cluster_size=cluster_size)
    model = MemoryDisk(SIZE, data=initial)
    disk: BlockBackend = await Qcow2Image.open(image, l2_cache_tables=2)
    for kind, offset, length, fill in ops:
        length = min(length, SIZE - offset)
        if kind == "w":
            data = bytes([fill]) * length
            await disk.write(offset, data)
            await model.write(offset, data)
        elif kind in "zd":
            await (disk.write_zeroes if kind == "z" else disk.discard)(offset, length)
            await model.write_zeroes(offset, length)
        elif kind == "f":
            await disk.flush()
        else:
            await disk.close()
            disk = await Qcow2Image.open(image, l2_cache_tables=2)
    assert await disk.read(0, SIZE) == await model.read(0, SIZE)
    await disk.close()
    check(image)
    disk = await Qcow2Image.open(image, read_only=True)
    assert await disk.read(0, SIZE) == await model.read(0, SIZE)
    await disk.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op, max_size=20),
    backing=st.booleans(),
    cluster_size=st.sampled_from([512, 4096, 65536]),
)
def test_random_operations_match_a_memory_model(
    ops: list[tuple[str, int, int, int]], backing: bool, cluster_size: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        trio.run(run_model, Path(directory), ops, backing, cluster_size)


# -- fuzzed images --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_seed_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small image (4 KiB clusters) with a raw backing file, compressed clusters, a zero
    cluster and plain data."""
    directory = tmp_path_factory.mktemp("fuzz")
    base = directory / "base.raw"
    base.write_bytes(b"\x99" * (256 * 1024))
    plain = directory / "plain.raw"
    plain.write_bytes(b"".join(bytes([i % 7]) * 4096 for i in range(64)))
    image = directory / "seed.qcow2"
    qemu_img(
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        "-B",
        "base.raw",
        "-F",
        "raw",
        plain,
        image,
    )
    qemu_io(image, "write -P 0x12 0 8k", "write -z 64k 8k", "write -P 0x34 100k 3k")
    assert "compressed" in qemu_img("check", image).stdout
    return image


async def open_fuzzed(path: Path, read_only: bool) -> None:
    with trio.fail_after(20):
        try:
            disk = await Qcow2Image.open(path, read_only=read_only)
        except BlockError:
            return
        try:
            await disk.read(0, min(disk.size, 512 * 1024))
            await disk.read(disk.size - min(disk.size, 65536), min(disk.size, 65536))
            if not read_only and disk.size >= 8192:
                await disk.write(disk.size // 2 - 4096 + 11, b"\xab" * 5000)
                await disk.write_zeroes(0, 8192)
                await disk.flush()
        except BlockError:
            pass
        finally:
            with contextlib.suppress(BlockError):
                await disk.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutations=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 111), st.integers(0, 8 * 4096 - 1), st.integers(0, 1 << 20)),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=6,
    ),
    read_only=st.booleans(),
)
def test_mutated_images_open_or_fail_cleanly(
    fuzz_seed_image: Path, mutations: list[tuple[int, int]], read_only: bool
) -> None:
    directory = fuzz_seed_image.parent
    data = bytearray(fuzz_seed_image.read_bytes())
    for position, value in mutations:
        data[position % len(data)] = value
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".qcow2") as tmp:
        tmp.write(data)
        tmp.flush()
        trio.run(open_fuzzed, Path(tmp.name), read_only)


# -- creating, describing -------------------------------------------------------------------


def test_create_qcow2_checks_its_arguments(tmp_path: Path) -> None:
    image = tmp_path / "c.qcow2"
    with pytest.raises(BlockError, match="multiple of 512"):
        create_qcow2(image, 1000)
    with pytest.raises(BlockError, match="power of two"):
        create_qcow2(image, MiB, cluster_size=3000)
    with pytest.raises(BlockError, match="a size is needed"):
        create_qcow2(image, None)
    with pytest.raises(BlockError, match="no such file"):
        create_qcow2(image, MiB, backing=tmp_path / "nothing.raw")
    raw = tmp_path / "r.raw"
    raw.write_bytes(bytes(MiB))
    with pytest.raises(BlockError, match="not a qcow2 image"):
        create_qcow2(image, MiB, backing=raw, backing_format="qcow2")
    create_qcow2(image, 0)
    with pytest.raises(BlockError, match="already exists"):
        create_qcow2(image, MiB)
    create_qcow2(image, 3 * MiB, overwrite=True, cluster_size=512, backing=raw)
    info = json.loads(qemu_img("info", "--output=json", image).stdout)
    assert info["virtual-size"] == 3 * MiB and info["backing-filename-format"] == "raw"
    check(image)
    blockdev.create_image(tmp_path / "r2.raw", "raw", 5 * 512)
    assert (tmp_path / "r2.raw").stat().st_size == 2560
    with pytest.raises(BlockError, match="backing"):
        blockdev.create_image(tmp_path / "r3.raw", "raw", 512, backing=raw)


def test_image_info(tmp_path: Path) -> None:
    raw = tmp_path / "r.raw"
    raw.write_bytes(b"\x01" * MiB)
    info = image_info(raw)
    assert info["format"] == "raw" and info["virtual_size"] == MiB
    assert info["cluster_size"] is None and info["backing_chain"] == []
    assert info["disk_size"] == os.stat(raw).st_blocks * 512
    image = tmp_path / "i.qcow2"
    create_qcow2(image, 2 * MiB, backing=raw, cluster_size=4096)
    info = image_info(image)
    assert info["format"] == "qcow2" and info["virtual_size"] == 2 * MiB
    assert info["cluster_size"] == 4096 and info["backing_file"] == str(raw)
    assert info["backing_format"] == "raw" and info["version"] == 3
    assert info["backing_chain"] == [{"filename": str(raw), "format": "raw", "virtual_size": MiB}]
    with pytest.raises(BlockError, match="no such file"):
        image_info(tmp_path / "nope")


async def test_raw_backing_through_open_disk(tmp_path: Path) -> None:
    raw = tmp_path / "r.raw"
    raw.write_bytes(b"\x05" * MiB)
    image = tmp_path / "i.qcow2"
    create_qcow2(image, MiB, backing=raw)
    disk = await open_disk(str(image))
    assert isinstance(disk, Qcow2Image) and isinstance(disk.backing, RawFile)
    assert disk.backing.read_only
    assert await disk.read(MiB - 512, 512) == b"\x05" * 512
    await disk.close()


# -- hostile metadata: aliased refcount blocks, long allocation scans, a huge L1, frees ------

_HEAD_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
_HEAD_V3 = struct.Struct(">QQQII")


def handmade_image(
    path: Path,
    *,
    cluster_bits: int,
    size: int,
    l1_size: int,
    l1_offset: int,
    rt_offset: int,
    rt_clusters: int,
    refcount_order: int,
    pieces: dict[int, bytes],
    length: int,
) -> None:
    """A version-3 image written field by field: the header, then ``pieces`` (offset: bytes),
    the file ``length`` bytes long."""
    header = _HEAD_V2.pack(
        q.MAGIC, 3, 0, 0, cluster_bits, size, 0, l1_size, l1_offset, rt_offset, rt_clusters, 0, 0
    )
    header += _HEAD_V3.pack(0, 0, 0, refcount_order, 104) + bytes(8)  # then the end extension
    with open(path, "wb") as f:
        f.write(header)
        for offset, data in sorted(pieces.items()):
            f.seek(offset)
            f.write(data)
        f.truncate(length)


def tiny_image(path: Path, refcount_table: list[int], pieces: dict[int, bytes]) -> None:
    """A 1 MiB disk, 512-byte clusters, 1-bit refcounts: the header, the refcount table
    (cluster 1, holding ``refcount_table``), the L1 table (cluster 3), ``pieces``; 5
    clusters of file."""
    cs = 512
    table = struct.pack(f">{len(refcount_table)}Q", *refcount_table)
    handmade_image(
        path,
        cluster_bits=9,
        size=MiB,
        l1_size=32,
        l1_offset=3 * cs,
        rt_offset=cs,
        rt_clusters=1,
        refcount_order=0,
        pieces={cs: table, **pieces},
        length=5 * cs,
    )


async def test_aliased_refcount_blocks_are_refused_at_open(tmp_path: Path) -> None:
    image = tmp_path / "alias.qcow2"
    tiny_image(image, [0x400] * 64, {0x400: b"\xff" * 512})  # 64 entries, one full block
    result = qemu_img("check", image, ok=(2,))  # qemu: corrupt
    assert "ERROR" in result.stdout + result.stderr
    with trio.fail_after(10):
        with pytest.raises(BlockError, match=r"refcount block at 0x400 .*entries 0 and 1"):
            await Qcow2Image.open(image)
    disk = await Qcow2Image.open(image, read_only=True)  # reading needs no refcounts
    assert await disk.read(0, 4096) == bytes(4096)
    await disk.close()


@pytest.mark.parametrize(
    ("table", "blocks", "match"),
    [
        ([2 * 512, 9 * 512], {2 * 512: b"\x0f"}, r"refcount block at 0x1200 .*past the end"),
        (
            [2 * 512, 4 * 512],
            {2 * 512: b"\x1f", 3 * 512: struct.pack(">Q", 4 * 512 | q.OFLAG_COPIED)},
            r"refcount block at 0x800 .*overlaps an L2 table",
        ),
        ([512], {}, r"refcount block at 0x200 .*overlaps the refcount table"),
        ([3 * 512], {}, r"refcount block at 0x600 .*overlaps the L1 table"),
    ],
)
async def test_misplaced_refcount_blocks_are_refused_at_open(
    tmp_path: Path, table: list[int], blocks: dict[int, bytes], match: str
) -> None:
    image = tmp_path / "misplaced.qcow2"
    tiny_image(image, table, blocks)
    qemu_img("check", image, ok=(2,))  # qemu agrees: corrupt
    with pytest.raises(BlockError, match=match):
        await Qcow2Image.open(image)


async def test_an_l2_table_on_other_metadata_is_refused_at_open(tmp_path: Path) -> None:
    image = tmp_path / "l2.qcow2"
    create_qcow2(image, MiB)
    data = bytearray(image.read_bytes())
    header = q.read_header(str(image))
    struct.pack_into(">Q", data, header.l1_table_offset, header.refcount_table_offset)
    image.write_bytes(data)
    qemu_img("check", image, ok=(2,))
    with pytest.raises(BlockError, match=r"L2 table at 0x10000 .*overlaps the refcount table"):
        await Qcow2Image.open(image)


async def test_long_allocation_scans_leave_the_event_loop_free(tmp_path: Path) -> None:
    """Eight distinct, full 1-bit refcount blocks (64 KiB clusters: each counts 524,288
    clusters): the first allocation scans them all, without stalling a neighbour task,
    and the next allocation does not scan them again."""
    cs, blocks = 65536, 8
    image = tmp_path / "full.qcow2"
    table = [(2 + i) * cs for i in range(blocks)]
    handmade_image(
        image,
        cluster_bits=16,
        size=MiB,
        l1_size=1,
        l1_offset=(2 + blocks) * cs,
        rt_offset=cs,
        rt_clusters=1,
        refcount_order=0,
        pieces={cs: struct.pack(f">{blocks}Q", *table)}
        | {offset: b"\xff" * cs for offset in table},
        length=(3 + blocks) * cs,
    )
    disk = await Qcow2Image.open(image)
    late: list[float] = []

    async def neighbour() -> None:
        for _ in range(100):
            start = trio.current_time()
            await trio.sleep(0.01)
            late.append(trio.current_time() - start - 0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(neighbour)
        with trio.fail_after(30):
            await disk.write(0, b"\x5a" * cs)
            await disk.flush()
    scanned = disk.counters["refblocks_scanned"]
    assert scanned >= blocks
    await disk.write(cs, b"\x5b" * cs)  # the free hint is past the full blocks now
    assert disk.counters["refblocks_scanned"] - scanned <= 1
    await disk.close()
    assert sorted(late)[98] < 0.05, sorted(late)[-5:]  # p99 lateness of a 10 ms sleep
    disk = await Qcow2Image.open(image, read_only=True)
    assert await disk.read(0, 2 * cs) == b"\x5a" * cs + b"\x5b" * cs
    await disk.close()


def huge_l1_image(path: Path, entries: int) -> None:
    """A 1 MiB disk (64 KiB clusters: one L1 entry is enough) whose header claims an L1
    table of ``entries`` entries, all but the first distinct offsets past the file."""
    import array
    import math

    cs = 65536
    l1 = array.array("Q", [0] + [((i + 16) * cs) | q.OFLAG_COPIED for i in range(1, entries)])
    if sys.byteorder == "little":
        l1.byteswap()
    l1_clusters = math.ceil(entries * 8 / cs)
    counts = struct.pack(f">{3 + l1_clusters}H", *[1] * (3 + l1_clusters))
    handmade_image(
        path,
        cluster_bits=16,
        size=MiB,
        l1_size=entries,
        l1_offset=3 * cs,
        rt_offset=cs,
        rt_clusters=1,
        refcount_order=4,
        pieces={cs: struct.pack(">Q", 2 * cs), 2 * cs: counts, 3 * cs: l1.tobytes()},
        length=(3 + l1_clusters) * cs,
    )


async def test_an_l1_table_larger_than_the_disk_is_read_only_as_far_as_it_needs(
    tmp_path: Path,
) -> None:
    import tracemalloc

    small = tmp_path / "small-l1.qcow2"
    huge_l1_image(small, 4096)
    result = qemu_img("check", small, ok=(2,))  # qemu: those L1 entries are corrupt
    assert "ERROR" in result.stdout + result.stderr
    image = tmp_path / "huge-l1.qcow2"
    huge_l1_image(image, 4 << 20)  # qemu's maximum: 32 MiB of L1 for a 1 MiB disk
    for read_only in (True, False):
        tracemalloc.start()
        try:
            with trio.fail_after(20):
                disk = await Qcow2Image.open(image, read_only=read_only)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * MiB, (read_only, peak)
        assert len(disk._l1) == 1
        assert await disk.read(0, MiB) == bytes(MiB)
        if not read_only:
            await disk.write(4096, b"\x11" * 4096)
            assert await disk.read(0, 8192) == bytes(4096) + b"\x11" * 4096
        await disk.close()


async def test_a_qemu_shrunk_image_with_a_larger_l1_opens_and_writes(tmp_path: Path) -> None:
    """Why a larger L1 is not refused: qemu leaves it so when it shrinks an image."""
    image = tmp_path / "shrunk.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", image, "8M")
    qemu_io(image, "write -P 0x21 0 64k", "write -P 0x22 6M 64k")
    qemu_img("resize", "--shrink", image, "1M")
    header = q.read_header(str(image))
    assert header.l1_size == 256  # 8 MiB worth; 1 MiB needs 32
    disk = await Qcow2Image.open(image)
    assert await disk.read(0, 65536) == b"\x21" * 65536
    await disk.write(65536, b"\x23" * 4096)
    await disk.close()
    check(image)
    compare(image, b"\x21" * 65536 + b"\x23" * 4096 + bytes(MiB - 65536 - 4096))


async def test_freeing_a_compressed_cluster_that_points_at_metadata_frees_nothing(
    tmp_path: Path,
) -> None:
    image = tmp_path / "bogus.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1M")
    qemu_io(image, "write -P 0x77 0 64k")
    header = q.read_header(str(image))
    data = bytearray(image.read_bytes())
    l2 = struct.unpack_from(">Q", data, header.l1_table_offset)[0] & q.OFFSET_MASK
    refblock = struct.unpack_from(">Q", data, header.refcount_table_offset)[0]
    # guest clusters 1..4: "compressed data, one sector" in the header, the refcount block,
    # the L1 table and the L2 table itself
    targets = [0x200, refblock + 0x200, header.l1_table_offset + 0x200, l2 + 0x200]
    for vc, target in enumerate(targets, start=1):
        struct.pack_into(">Q", data, l2 + vc * 8, q.OFLAG_COMPRESSED | target)
    image.write_bytes(data)
    qemu_img("check", image, ok=(2,))  # qemu: corrupt (those clusters are referenced twice)
    disk = await Qcow2Image.open(image)
    await disk.discard(65536, 65536)
    await disk.write_zeroes(2 * 65536, 65536)
    await disk.write(3 * 65536, b"\x33" * 65536)
    await disk.discard(4 * 65536, 65536)
    await disk.flush()
    assert disk.counters["free_of_metadata"] == 4
    await disk.close()
    check(image)  # every metadata cluster still counted once: no errors, no leaks
    assert q.read_header(str(image)).size == MiB
    expected = b"\x77" * 65536 + bytes(2 * 65536) + b"\x33" * 65536 + bytes(MiB - 4 * 65536)
    compare(image, expected)


# -- where backing names may lead -------------------------------------------------------------


def a_block_device(tmp_path: Path) -> Path:
    """A block device node (made here as root, else one of the host's)."""
    if os.geteuid() == 0:
        node = tmp_path / "blk"
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(7, 0))  # a loop device
        return node
    found = [p for p in Path("/dev").iterdir() if p.is_block_device()]
    assert found, "no block device to test with"
    return found[0]


async def test_backing_files_stay_in_the_images_folder(tmp_path: Path) -> None:
    """A downloaded image must not read host files into the guest: a backing name may lead
    only into the image's folder (or below), or where the user allows it."""
    vm, outside = tmp_path / "vm", tmp_path / "outside"
    (vm / "sub").mkdir(parents=True)
    outside.mkdir()
    secret = outside / "secret.raw"
    secret.write_bytes(b"\x42" * MiB)
    (vm / "link.raw").symlink_to(secret)
    top = vm / "top.qcow2"
    for name in ("../outside/secret.raw", str(secret), "link.raw", "file:../outside/secret.raw"):
        qemu_img("create", "-f", "qcow2", "-u", "-b", name, "-F", "raw", top, "1M")
        refusal = rf"top\.qcow2 -> {name}.*: backing file outside the image's folder; pass "
        with pytest.raises(BlockError, match=refusal + f"--backing-dir {outside} to allow it"):
            await open_disk(f"{top},ro")
        with pytest.raises(BlockError, match=refusal):
            image_info(top)
        for allow in (outside, secret):  # the folder, or the file itself
            disk = await open_disk(f"{top},ro", backing_dirs=[allow])
            assert await disk.read(0, 512) == b"\x42" * 512
            await disk.close()
            info = image_info(top, backing_dirs=[allow])
            assert [Path(b["filename"]).name for b in info["backing_chain"]] == [Path(name).name]
    # two steps: the chain is in the error
    qemu_img("create", "-f", "qcow2", "-u", "-b", "../../outside/secret.raw", "-F", "raw",
             vm / "sub" / "mid.qcow2", "1M")  # fmt: skip
    qemu_img("create", "-f", "qcow2", "-u", "-b", "sub/mid.qcow2", "-F", "qcow2", top, "1M")
    chain = r"top\.qcow2 -> .*vm/sub/mid\.qcow2 -> \.\./\.\./outside/secret\.raw \(.*\): "
    with pytest.raises(BlockError, match=chain + "backing file outside"):
        await Qcow2Image.open(top, read_only=True)
    with pytest.raises(BlockError, match=chain + "backing file outside"):
        image_info(top)
    disk = await open_disk(f"{top},ro,backing-dir={outside}")  # the spec's own allow-list
    await disk.close()


async def test_devices_and_fifos_are_no_backing_files(tmp_path: Path) -> None:
    device = a_block_device(tmp_path)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", device, "-F", "raw", top, "1M")
    with pytest.raises(
        BlockError, match=rf"backing file is a block device; pass --backing-dir {device}"
    ):
        await open_disk(f"{top},ro", backing_dirs=[tmp_path])  # in an allowed folder: not enough
    with pytest.raises(BlockError, match="block device"):
        image_info(top)
    info = image_info(top, backing_dirs=[device])  # named: allowed
    assert info["backing_chain"][0]["filename"] == str(device)
    qemu_img("create", "-f", "qcow2", "-u", "-b", "/dev/zero", "-F", "raw", top, "1M")
    with pytest.raises(BlockError, match="backing file is not a regular file"):
        await open_disk(f"{top},ro", backing_dirs=["/dev"])
    os.mkfifo(tmp_path / "fifo")
    qemu_img("create", "-f", "qcow2", "-u", "-b", "fifo", "-F", "raw", top, "1M")
    with trio.fail_after(20), pytest.raises(BlockError, match="backing file is a FIFO"):
        await open_disk(f"{top},ro")
