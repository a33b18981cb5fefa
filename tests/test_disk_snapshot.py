"""Disks in snapshots, held to qemu-img: a frozen disk is what the disk held at the freeze
(``qemu-img compare`` against a copy taken then), whatever the VM writes after; restores and
clones read it through private overlays ``qemu-img check`` passes, independent of each other
and of the snapshot; hostile snapshot directories are refused with a clear error."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from blockdev import (
    BlockBackend,
    BlockError,
    FrozenDisk,
    MemoryDisk,
    create_qcow2,
    create_raw,
    freeze,
    open_disk,
    open_frozen,
    sync_frozen,
)

MiB = 1 << 20
SIZE = 64 * MiB


def qemu_img(*args: object, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True)
    assert result.returncode in ok, (args, result.returncode, result.stdout, result.stderr)
    return result


def check(image: Path) -> None:
    result = qemu_img("check", image)
    assert "No errors were found on the image." in result.stdout, result.stdout


def same(a: Path, b: Path, fmt_a: str, fmt_b: str = "raw") -> bool:
    """qemu-img compare: 0 identical, 1 different."""
    return qemu_img("compare", "-f", fmt_a, "-F", fmt_b, a, b, ok=(0, 1)).returncode == 0


def as_raw(image: Path, out: Path) -> Path:
    """What qemu reads from ``image``, as a raw file (the copy taken at the freeze)."""
    qemu_img("convert", "-O", "raw", image, out)
    return out


async def scribble(disk: BlockBackend, seed: int, count: int = 40) -> None:
    """Known data at scattered, unaligned places."""
    rng = random.Random(seed)
    for _ in range(count):
        length = rng.randrange(1, 200) * 512
        offset = rng.randrange(0, disk.size - length) // 512 * 512
        await disk.write(offset, rng.randbytes(length))


async def reference(disk: BlockBackend, path: Path) -> Path:
    """The disk's bytes now, read through the backend, as a raw file."""
    with path.open("wb") as f:
        for offset in range(0, disk.size, 4 * MiB):
            f.write(await disk.read(offset, min(4 * MiB, disk.size - offset)))
    return path


def mkdirs(tmp: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        (tmp / name).mkdir()
        out.append(tmp / name)
    return out


# -- freezing: the frozen view is the disk at the freeze ------------------------------------


async def freeze_then_write(tmp: Path, spec: str, fmt_on_file: str) -> None:
    snap, work = mkdirs(tmp, "snap", "work")
    disk = await open_disk(spec)
    await scribble(disk, 1)
    at_freeze = await reference(disk, tmp / "at-freeze.raw")
    entry = await freeze(disk, snap, "vda")
    await scribble(disk, 2)  # the VM goes on writing where it did
    await sync_frozen(snap, [entry])
    after = await reference(disk, tmp / "after.raw")
    await disk.close()
    frozen = snap / entry.file
    assert entry.format == fmt_on_file and frozen.name == f"vda.{fmt_on_file}"
    assert entry.size == SIZE
    if fmt_on_file == "qcow2":
        check(frozen)
    assert same(frozen, at_freeze, entry.format)
    assert not same(frozen, after, entry.format)  # the later writes are not in it
    # a restore reads the frozen content and writes only its overlay; twice, the same
    for _ in range(2):
        restored = await open_frozen(entry, snap, work, backing_dirs=[tmp])
        assert await restored.read(0, SIZE) == at_freeze.read_bytes()
        await scribble(restored, 3)
        await restored.close()
        check(Path(restored.path))
    assert same(frozen, at_freeze, entry.format)
    assert len(list(work.iterdir())) == 2


async def test_raw_file(tmp_path: Path) -> None:
    create_raw(tmp_path / "d.raw", SIZE)
    await freeze_then_write(tmp_path, f"{tmp_path / 'd.raw'},format=raw", "raw")
    # sparse: the copy holds the data written, not the whole disk
    assert os.stat(tmp_path / "snap" / "vda.raw").st_blocks * 512 < 16 * MiB


async def test_qcow2_with_backing_chain(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(random.Random(9).randbytes(SIZE))
    create_qcow2(tmp_path / "mid.qcow2", None, "base.raw", "raw")  # relative names
    create_qcow2(tmp_path / "top.qcow2", None, "mid.qcow2", "qcow2")
    mid = await open_disk(str(tmp_path / "mid.qcow2"))
    await scribble(mid, 7)
    await mid.close()
    await freeze_then_write(tmp_path, str(tmp_path / "top.qcow2"), "qcow2")
    # the copy names its backing file by absolute path (its own folder has no mid.qcow2)
    info = json.loads(qemu_img("info", "--output=json", tmp_path / "snap" / "vda.qcow2").stdout)
    assert info["backing-filename"] == str(tmp_path / "mid.qcow2")


async def test_snapshot_overlay(tmp_path: Path) -> None:
    """A ``,snapshot`` disk: its overlay is an unlinked file, copied from its descriptor."""
    create_qcow2(tmp_path / "base.qcow2", SIZE)
    base = await open_disk(str(tmp_path / "base.qcow2"))
    await scribble(base, 5)
    await base.close()
    await freeze_then_write(tmp_path, f"{tmp_path / 'base.qcow2'},snapshot", "qcow2")


async def test_read_only_disk(tmp_path: Path) -> None:
    raw = tmp_path / "ro.raw"
    raw.write_bytes(random.Random(4).randbytes(SIZE))
    snap, work = mkdirs(tmp_path, "snap", "work")
    disk = await open_disk(f"{raw},ro,format=raw")
    entry = await freeze(disk, snap, "vdb", serial="data")
    await disk.close()
    assert entry.read_only and entry.serial == "data" and entry.file == "vdb.qcow2"
    check(snap / "vdb.qcow2")
    assert same(snap / "vdb.qcow2", raw, "qcow2")
    restored = await open_frozen(entry, snap, work, backing_dirs=[tmp_path])
    assert restored.read_only and await restored.read(0, SIZE) == raw.read_bytes()
    await restored.close()


async def test_memory_disk(tmp_path: Path) -> None:
    snap, work = mkdirs(tmp_path, "snap", "work")
    disk = MemoryDisk(SIZE + 512)  # not a whole page at the end
    await scribble(disk, 6)
    await disk.write(SIZE - 512, b"\xaa" * 1024)
    at_freeze = await reference(disk, tmp_path / "at-freeze.raw")
    entry = await freeze(disk, snap, "vdc")
    await scribble(disk, 8)
    assert entry.file == "vdc.raw" and entry.size == SIZE + 512
    assert (snap / "vdc.raw").stat().st_size == SIZE + 512
    assert same(snap / "vdc.raw", at_freeze, "raw")
    restored = await open_frozen(entry, snap, work)
    assert await restored.read(0, SIZE + 512) == at_freeze.read_bytes()
    await restored.close()


async def test_clones_are_independent(tmp_path: Path) -> None:
    """Many clones of one snapshot: each its own overlay; what one writes no other sees."""
    snap, work = mkdirs(tmp_path, "snap", "work")
    disk = MemoryDisk(SIZE)
    await disk.write(0, b"frozen" * 100)
    entry = await freeze(disk, snap, "vda")
    clones = [await open_frozen(entry, snap, work) for _ in range(4)]
    for i, clone in enumerate(clones):
        await clone.write(0, f"clone {i}".encode())
    for i, clone in enumerate(clones):
        assert (await clone.read(0, 12)) == f"clone {i}".encode() + (b"frozen" * 2)[7:12]
    async with trio.open_nursery() as nursery:
        for clone in clones:
            nursery.start_soon(clone.close)
    overlays = sorted(work.iterdir())
    assert len(overlays) == 4
    for overlay in overlays:
        check(overlay)
    assert (snap / "vda.raw").read_bytes()[:600] == b"frozen" * 100


async def test_entry_round_trip_and_refusals(tmp_path: Path) -> None:
    snap, _work = mkdirs(tmp_path, "snap", "work")
    with pytest.raises(BlockError, match="disk name"):
        await freeze(MemoryDisk(512), snap, "../vda")
    entry = await freeze(MemoryDisk(512), snap, "vda")
    assert FrozenDisk.from_json(json.loads(json.dumps(entry.to_json()))) == entry
    with pytest.raises(BlockError, match="already exists"):
        await freeze(MemoryDisk(512), snap, "vda")
    bad = {**entry.to_json(), "size": 513}
    with pytest.raises(BlockError, match="size 513"):
        FrozenDisk.from_json(bad)
    with pytest.raises(BlockError, match="not a plain file name"):
        FrozenDisk.from_json({**entry.to_json(), "file": "../etc/passwd"})
    with pytest.raises(BlockError, match="not a plain file name"):
        FrozenDisk.from_json({**entry.to_json(), "file": "/etc/passwd"})
    with pytest.raises(BlockError, match="absolute path"):
        FrozenDisk.from_json({**entry.to_json(), "bases": [["rel", 1, 2]]})
    with pytest.raises(BlockError, match="fields"):
        FrozenDisk.from_json({**entry.to_json(), "extra": 1})


# -- hostile snapshot directories -----------------------------------------------------------


async def test_hostile_snapshot_directories(tmp_path: Path) -> None:
    snap, work, elsewhere = mkdirs(tmp_path, "snap", "work", "elsewhere")
    secret = elsewhere / "secret.raw"
    secret.write_bytes(b"host secret".ljust(SIZE, b"\0"))

    async def refused(entry: FrozenDisk, match: str, dirs: tuple[Path, ...] = ()) -> None:
        with pytest.raises(BlockError, match=match):
            await open_frozen(entry, snap, work, backing_dirs=dirs)
        assert not list(work.iterdir())  # nothing left behind

    # a symlink in the snapshot directory to a host file
    (snap / "link.raw").symlink_to(secret)
    await refused(FrozenDisk("link.raw", "raw", SIZE), "symlink")
    # a name that is not a plain file name (an entry built in code, not read)
    await refused(FrozenDisk("../elsewhere/secret.raw", "raw", SIZE), "plain file name")
    await refused(FrozenDisk("missing.raw", "raw", SIZE), "missing")
    # a qcow2 whose backing file is a host file nobody named
    create_qcow2(snap / "steal.qcow2", SIZE, str(secret), "raw")
    await refused(FrozenDisk("steal.qcow2", "qcow2", SIZE), "outside the image's folder")
    # ... even when the entry records it: the caller's backing_dirs decide
    st = secret.stat()
    recorded = [[str(secret), st.st_size, st.st_mtime_ns]]
    rec = FrozenDisk.from_json(
        {**FrozenDisk("steal.qcow2", "qcow2", SIZE).to_json(), "bases": recorded}
    )
    await refused(rec, "outside the image's folder")
    # named by the caller but not recorded by the snapshot
    unrecorded = FrozenDisk("steal.qcow2", "qcow2", SIZE)
    await refused(unrecorded, "not one the snapshot recorded", (elsewhere,))
    # recorded and allowed, but changed since the freeze
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    await refused(rec, "changed since the snapshot", (elsewhere,))
    # a backing loop inside the snapshot directory
    create_qcow2(snap / "a.qcow2", SIZE)
    create_qcow2(snap / "b.qcow2", SIZE, "a.qcow2", "qcow2")
    _point_backing(snap / "a.qcow2", "b.qcow2")
    await refused(FrozenDisk("b.qcow2", "qcow2", SIZE), "backing loop")
    # the format or the size is not what the entry says
    create_raw(snap / "plain.raw", SIZE)
    await refused(FrozenDisk("plain.raw", "qcow2", SIZE), "says qcow2, the file is raw")
    await refused(FrozenDisk("plain.raw", "raw", SIZE * 2), "snapshot says")
    # a directory, not a file
    (snap / "dir.raw").mkdir()
    await refused(FrozenDisk("dir.raw", "raw", SIZE), "not a regular file")


def _point_backing(image: Path, name: str) -> None:
    """Give ``image`` the backing file ``name`` (rewriting its header: qemu-img rebase -u)."""
    qemu_img("rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", name, image)


def test_qemu_img_is_here() -> None:
    assert shutil.which("qemu-img"), "qemu-img (qemu-utils) is the oracle of these tests"


# -- hv's Disk: what a VM snapshot calls ---------------------------------------------------


async def test_vm_disks_freeze_and_restore(tmp_path: Path) -> None:
    from hv import Disk
    from hv._disk import close_disks, freeze_disks, open_frozen_disks, sync_disks
    from hv._errors import SnapshotError

    snap, work = mkdirs(tmp_path, "snap", "work")
    create_raw(tmp_path / "data.raw", SIZE)
    raw = await open_disk(f"{tmp_path / 'data.raw'},format=raw")
    disks = [Disk(MemoryDisk(SIZE), serial="scratch"), Disk(raw, serial="data")]
    await disks[0].backend.write(0, b"first")
    await disks[1].backend.write(4096, b"second")
    entries = await freeze_disks(disks, snap, prefix="a-")
    await disks[1].backend.write(4096, b"SECOND")
    await sync_disks(snap, entries)
    await close_disks(disks)
    assert sorted(p.name for p in snap.iterdir()) == ["a-vda.raw", "a-vdb.raw"]
    restored = await open_frozen_disks(json.loads(json.dumps(entries)), snap, work)
    assert [d.serial for d in restored] == ["scratch", "data"]
    assert await restored[0].backend.read(0, 5) == b"first"
    assert await restored[1].backend.read(4096, 6) == b"second"
    await close_disks(restored)
    hostile = [entries[0], {**entries[1], "file": "../data.raw"}]
    with pytest.raises(SnapshotError, match=r"restored VM.disks\[1\].*plain file name"):
        await open_frozen_disks(hostile, snap, work)
    assert len(list(work.iterdir())) == 2  # the refused attempt's first overlay is gone


async def test_backing_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    """A qcow2 image over a MemoryDisk has no file to name as the frozen copy's backing."""
    from blockdev import Qcow2Image

    snap, _ = mkdirs(tmp_path, "snap", "work")
    create_qcow2(tmp_path / "top.qcow2", SIZE)
    image = await Qcow2Image.open(tmp_path / "top.qcow2", backing=MemoryDisk(SIZE))
    with pytest.raises(BlockError, match="not a file"):
        await freeze(image, snap, "vda")
    await image.close()
    assert not list(snap.iterdir())
