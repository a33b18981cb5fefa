"""blockdev: the raw file backend (round trips, holes, errors, a full file system), disk specs
(``FILE[,ro][,format=...][,snapshot][,serial=...]``) and ``open_disk`` (format detection,
read-only, snapshot overlays)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from blockdev import (
    BlockError,
    BlockIOError,
    DiskSpec,
    Qcow2Image,
    RawFile,
    create_qcow2,
    create_raw,
    detect_format,
    open_disk,
    parse_disk_spec,
)

MiB = 1 << 20


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def raw_image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    create_raw(path, 4 * MiB)
    return path


# -- RawFile ----------------------------------------------------------------------------


async def test_raw_round_trips(raw_image: Path) -> None:
    disk = await RawFile.open(raw_image)
    assert disk.size == 4 * MiB and not disk.read_only
    data = os.urandom(100_000)
    await disk.write(12345, data)
    assert await disk.read(12345, len(data)) == data
    assert await disk.read(0, 12345) == bytes(12345)
    await disk.write(4 * MiB - 3, b"end")
    assert await disk.read(4 * MiB - 3, 3) == b"end"
    await disk.flush()
    assert disk.counters["flushes"] == 1 and disk.counters["write_bytes"] == len(data) + 3
    await disk.close()
    content = raw_image.read_bytes()
    assert content[12345 : 12345 + len(data)] == data and content[-3:] == b"end"
    with pytest.raises(ValueError, match="outside the disk"):
        await disk.read(4 * MiB - 1, 2)


async def test_raw_reads_from_the_page_cache_and_from_threads(raw_image: Path) -> None:
    raw_image.write_bytes(os.urandom(4 * MiB))
    expected = raw_image.read_bytes()
    disk = await RawFile.open(raw_image, read_only=True)
    assert await disk.read(MiB, 65536) == expected[MiB : MiB + 65536]
    hot = disk._io.counters["nowait_reads"]
    disk._io.nowait = False  # every read through a worker thread
    assert await disk.read(3 * MiB + 7, 5000) == expected[3 * MiB + 7 : 3 * MiB + 5007]
    assert disk._io.counters["nowait_reads"] == hot
    await disk.close()
    assert hot >= 1  # the file was just written: it is in the page cache


async def test_raw_discard_and_write_zeroes(raw_image: Path) -> None:
    raw_image.write_bytes(b"\xff" * (4 * MiB))
    disk = await RawFile.open(raw_image)
    await disk.discard(MiB, MiB)  # a punched hole reads as zeroes
    await disk.write_zeroes(3 * MiB + 100, 1000)
    assert await disk.read(MiB, MiB) == bytes(MiB)
    assert await disk.read(3 * MiB, 2000) == b"\xff" * 100 + bytes(1000) + b"\xff" * 900
    assert await disk.read(0, MiB) == b"\xff" * MiB
    await disk.close()
    assert os.path.getsize(raw_image) == 4 * MiB  # discard keeps the size
    assert os.stat(raw_image).st_blocks * 512 < 4 * MiB  # and the hole is a hole


async def test_raw_without_fallocate(raw_image: Path) -> None:
    raw_image.write_bytes(b"\xff" * (4 * MiB))
    disk = await RawFile.open(raw_image)
    disk._punch = disk._zero_range = False  # a file system that cannot punch holes
    await disk.discard(0, MiB)  # a hint: nothing happens
    assert await disk.read(0, 512) == b"\xff" * 512
    await disk.write_zeroes(100, MiB + 5)  # written as zeroes
    assert await disk.read(0, MiB + 200) == b"\xff" * 100 + bytes(MiB + 5) + b"\xff" * 95
    assert disk.counters["write_bytes"] == MiB + 5
    await disk.close()


async def test_raw_open_errors(tmp_path: Path) -> None:
    with pytest.raises(BlockError, match=r"nothing\.raw: no such file"):
        await RawFile.open(tmp_path / "nothing.raw")
    with pytest.raises(BlockError, match="is a directory"):
        await RawFile.open(tmp_path)
    odd = tmp_path / "odd.raw"
    odd.write_bytes(bytes(1000))
    with pytest.raises(BlockError, match=r"1000 bytes\) is not a multiple of 512"):
        await RawFile.open(odd)
    with pytest.raises(BlockError, match="not a regular file or a block device"):
        await RawFile.open("/dev/null")
    with pytest.raises(BlockError, match="NUL"):
        await RawFile.open("a\0b")


async def test_raw_read_only(raw_image: Path) -> None:
    before = sha(raw_image)
    disk = await RawFile.open(raw_image, read_only=True)
    assert fcntl.fcntl(disk._io.fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    with pytest.raises(ValueError, match="read-only"):
        await disk.write(0, b"x")
    with pytest.raises(ValueError, match="read-only"):
        await disk.write_zeroes(0, 512)
    await disk.flush()
    await disk.close()
    assert sha(raw_image) == before


async def test_raw_io_errors_name_the_errno(raw_image: Path) -> None:
    disk = await RawFile.open(raw_image)
    os.close(disk._io.fd)  # the descriptor goes away under the disk: EBADF
    disk._io.fd = os.open("/dev/null", os.O_RDONLY)
    with pytest.raises(BlockIOError, match=r"write 3 bytes at 0: EBADF"):
        await disk.write(0, b"abc")
    await disk.close()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_raw_full_file_system_is_enospc(small_tmpfs: Path) -> None:
    path = small_tmpfs / "big.raw"
    create_raw(path, 4 * MiB)  # sparse: fits until written
    disk = await RawFile.open(path)
    await disk.write(0, b"\x01" * 65536)
    with pytest.raises(BlockIOError, match=r"big\.raw: write 2097152 bytes at 65536: ENOSPC"):
        await disk.write(65536, b"\x02" * (2 * MiB))
    assert await disk.read(0, 65536) == b"\x01" * 65536  # the disk still works
    await disk.close()


async def test_probed_raw_refuses_a_qcow2_header(raw_image: Path) -> None:
    disk = await open_disk(str(raw_image))  # format probed
    assert isinstance(disk, RawFile) and disk.probed
    with pytest.raises(BlockIOError, match="qcow2 header"):
        await disk.write(0, b"QFI\xfb" + bytes(508))
    await disk.write(2, b"I\xfa")  # harmless bytes at the start are fine
    await disk.write(0, b"QF")
    with pytest.raises(BlockIOError, match="qcow2 header"):
        await disk.write(3, b"\xfb")
    await disk.close()
    disk = await open_disk(f"{raw_image},format=raw")  # the user said raw: anything goes
    await disk.write(0, b"QFI\xfb")
    await disk.close()
    assert detect_format(raw_image) == "qcow2"


async def test_raw_concurrent_requests(raw_image: Path) -> None:
    disk = await RawFile.open(raw_image)
    blocks = {i: bytes([i]) * 8192 for i in range(1, 100)}

    async def write(i: int) -> None:
        await disk.write(i * 8192, blocks[i])

    async with trio.open_nursery() as nursery:
        for i in blocks:
            nursery.start_soon(write, i)
    assert await disk.read(8192, 99 * 8192) == b"".join(blocks.values())
    await disk.close()


def test_create_raw(tmp_path: Path) -> None:
    path = tmp_path / "new.raw"
    create_raw(path, 10 * MiB)
    assert path.stat().st_size == 10 * MiB and path.stat().st_blocks == 0
    with pytest.raises(BlockError, match="already exists"):
        create_raw(path, MiB)
    create_raw(path, MiB, overwrite=True)
    assert path.stat().st_size == MiB
    with pytest.raises(BlockError, match="multiple of 512"):
        create_raw(tmp_path / "bad.raw", 1000)


# -- disk specs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("x.img", DiskSpec("x.img")),
        ("x.img,ro", DiskSpec("x.img", read_only=True)),
        ("/a/b.qcow2,format=qcow2,snapshot", DiskSpec("/a/b.qcow2", format="qcow2", snapshot=True)),
        ("d.raw,serial=disk-1,format=raw", DiskSpec("d.raw", format="raw", serial="disk-1")),
        ("a,,b.img,ro", DiskSpec("a,b.img", read_only=True)),
        ("x,serial=" + "s" * 20, DiskSpec("x", serial="s" * 20)),
        ("x,serial=", DiskSpec("x", serial="")),
        ("x,backing-dir=/a,,b,backing-dir=c", DiskSpec("x", backing_dirs=("/a,b", "c"))),
    ],
)
def test_parse_disk_spec(text: str, spec: DiskSpec) -> None:
    assert parse_disk_spec(text) == spec
    assert parse_disk_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "x.img,foo",
            "--disk 'x.img,foo': unknown option foo "
            "(known: ro, format=, snapshot, serial=, backing-dir=)",
        ),
        ("x.img,format=vmdk", "format must be raw or qcow2, not 'vmdk'"),
        ("x.img,format", "format needs a value"),
        ("x.img,backing-dir=", "backing-dir needs a value"),
        ("x.img,ro=yes", "ro takes no value"),
        ("x.img,ro,ro", "ro given twice"),
        ("x.img,serial=" + "s" * 21, "is 21 bytes, longer than 20"),
        ("x.img,serial=d\u00e9j\u00e0", "is not ASCII (a serial is printable ASCII)"),
        ("x.img,serial=a\tb", "is not printable (a serial is printable ASCII)"),
        (",ro", "no file name"),
        ("", "no file name"),
        ("x.img,", "empty option"),
    ],
)
def test_parse_disk_spec_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=r"^--disk ") as info:
        parse_disk_spec(text)
    assert error in str(info.value)


# -- open_disk ----------------------------------------------------------------------------


async def test_open_disk_detects_the_format(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    create_raw(raw, MiB)
    image = tmp_path / "d.qcow2"
    create_qcow2(image, 2 * MiB)
    assert detect_format(raw) == "raw" and detect_format(image) == "qcow2"
    disk = await open_disk(str(image))
    assert isinstance(disk, Qcow2Image) and disk.size == 2 * MiB and not disk.read_only
    await disk.close()
    disk = await open_disk("d.raw,ro", base_dir=tmp_path)
    assert isinstance(disk, RawFile) and disk.read_only and disk.size == MiB
    await disk.close()
    disk = await open_disk(DiskSpec("d.qcow2", format="raw"), base_dir=tmp_path)
    assert isinstance(disk, RawFile)  # asked for: the qcow2 file's bytes
    await disk.close()


async def test_open_disk_errors(tmp_path: Path) -> None:
    raw = tmp_path / "d.raw"
    create_raw(raw, MiB)
    with pytest.raises(BlockError, match=r"d\.raw: format=qcow2, but the file is not a qcow2"):
        await open_disk(f"{raw},format=qcow2")
    with pytest.raises(BlockError, match=r"missing\.img: no such file"):
        await open_disk(str(tmp_path / "missing.img"))
    odd = tmp_path / "odd.raw"
    odd.write_bytes(bytes(513))
    with pytest.raises(BlockError, match="not a multiple of 512"):
        await open_disk(str(odd))
    with pytest.raises(BlockError, match="is a directory"):
        await open_disk(str(tmp_path))
    with pytest.raises(ValueError, match="unknown option"):
        await open_disk(f"{raw},bogus")


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_snapshot_overlays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\x07" * (2 * MiB))
    base = raw
    if fmt == "qcow2":
        base = tmp_path / "base.qcow2"
        create_qcow2(base, None, backing=raw)
    before = sha(base)
    first = await open_disk(f"{base},snapshot")
    second = await open_disk(f"{base},snapshot")
    assert list(scratch.iterdir()) == []  # the overlays are unlinked already
    assert isinstance(first, Qcow2Image) and "snapshot overlay" in first.describe()
    await first.write(1000, b"first")
    await second.write(1000, b"other")
    await first.write_zeroes(MiB, 65536)
    await first.flush()
    assert await first.read(998, 8) == b"\x07\x07first\x07"
    assert await second.read(998, 8) == b"\x07\x07other\x07"
    assert await first.read(MiB, 65536) == bytes(65536)
    assert await second.read(MiB, 65536) == b"\x07" * 65536
    await first.close()
    await second.close()
    assert sha(base) == before  # the base image never changed
    again = await open_disk(f"{base},snapshot")
    assert await again.read(998, 8) == b"\x07" * 8  # nothing was kept
    await again.close()
    assert list(scratch.iterdir()) == []


async def test_snapshot_with_ro_is_just_read_only(tmp_path: Path) -> None:
    raw = tmp_path / "base.raw"
    create_raw(raw, MiB)
    disk = await open_disk(f"{raw},ro,snapshot")
    assert isinstance(disk, RawFile) and disk.read_only
    await disk.close()


async def test_overlay_creation_failure_closes_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "does-not-exist"))
    raw = tmp_path / "base.raw"
    create_raw(raw, MiB)
    opened: list[RawFile] = []
    real_open = RawFile.open

    async def spy(*args: object, **kwargs: object) -> RawFile:
        disk = await real_open(*args, **kwargs)  # type: ignore[arg-type]
        opened.append(disk)
        return disk

    monkeypatch.setattr(RawFile, "open", spy)
    with pytest.raises(BlockError, match=r"cannot create a snapshot overlay in .*does-not-exist"):
        await open_disk(f"{raw},snapshot")
    assert len(opened) == 1 and opened[0]._closed  # the base was opened, then closed


# -- image locks (QEMU's OFD lock bytes) ------------------------------------------------------

HOLDER = r"""
import sys, trio
from blockdev import open_disk

async def main(spec):
    disk = await open_disk(spec)
    print("ready", flush=True)
    await trio.to_thread.run_sync(sys.stdin.read)  # hold it until stdin closes
    await disk.close()

trio.run(main, sys.argv[1])
"""


def make_image(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / f"d.{fmt}"
    (create_raw if fmt == "raw" else create_qcow2)(path, MiB)
    return path


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_a_second_writer_is_refused_in_one_process(tmp_path: Path, fmt: str) -> None:
    path = make_image(tmp_path, fmt)
    first = await open_disk(str(path), owner="vms.a.disks[0]")
    await first.write(0, b"a" * 512)
    await first.flush()
    for spec in (str(path), f"{path},ro", f"{path},snapshot"):
        with pytest.raises(BlockError, match=r"vms\.a\.disks\[0\] has it open for writing"):
            await open_disk(spec, owner="vms.b.disks[0]")
    await first.close()
    # readers share: any number of ro and snapshot users, but then no writer
    readers = [await open_disk(f"{path},ro"), await open_disk(f"{path},snapshot", owner="x")]
    with pytest.raises(BlockError, match=r"x has it open read-only.*\(use ,ro or ,snapshot\)"):
        await open_disk(str(path))
    for reader in readers:
        await reader.close()
    again = await open_disk(str(path))  # every lock went with its disk
    assert await again.read(0, 512) == b"a" * 512
    await again.close()


async def test_a_backing_file_is_shared_but_not_writable(tmp_path: Path) -> None:
    base = make_image(tmp_path, "raw")
    top = tmp_path / "top.qcow2"
    create_qcow2(top, None, backing=base.name)
    overlay = await open_disk(str(top), owner="vms.a.disks[0]")
    reader = await open_disk(f"{base},ro")
    with pytest.raises(BlockError, match=r"vms\.a\.disks\[0\] \(backing file\) has it open"):
        await open_disk(str(base))
    await reader.close()
    await overlay.close()
    writer = await open_disk(str(base))
    with pytest.raises(BlockError, match=r"d\.raw.* has it open for writing"):
        await open_disk(str(top))  # its backing file cannot be read while being written
    await writer.close()


def hold(spec: str) -> subprocess.Popen[str]:
    """A second process that opens ``spec`` and holds it until its stdin closes."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen(["python3", "-c", HOLDER, spec], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def release(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    child.stdout.close()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_a_writer_in_another_process_is_refused(tmp_path: Path, fmt: str) -> None:
    path = make_image(tmp_path, fmt)
    child = hold(str(path))
    try:
        for spec in (str(path), f"{path},ro"):
            with pytest.raises(
                BlockError, match="another process or VM in this process has it open for writing"
            ):
                await open_disk(spec)
    finally:
        release(child)
    child = hold(f"{path},ro")
    try:
        with pytest.raises(BlockError, match=r"another process .* has it open read-only"):
            await open_disk(str(path))
        reader = await open_disk(f"{path},snapshot")  # readers share
        await reader.close()
    finally:
        release(child)
    disk = await open_disk(str(path))
    await disk.close()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
async def test_qemu_and_hv_see_each_others_locks(tmp_path: Path, fmt: str) -> None:
    path = make_image(tmp_path, fmt)
    disk = await open_disk(str(path))
    write = ["qemu-io", "-f", fmt, "-c", "write 0 512", str(path)]
    refused = subprocess.run(write, capture_output=True, text=True)
    assert refused.returncode != 0 and 'Failed to get "write" lock' in refused.stderr
    if fmt == "qcow2":  # qemu's raw readers share writes; its qcow2 readers do not
        info = subprocess.run(["qemu-img", "info", str(path)], capture_output=True, text=True)
        assert info.returncode != 0 and 'Failed to get shared "write" lock' in info.stderr
    await disk.close()
    assert subprocess.run(write, capture_output=True).returncode == 0
    qemu = subprocess.Popen(["qemu-io", "-f", fmt, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert qemu.stdin is not None and qemu.stdout is not None
    try:
        qemu.stdin.write("write -P 0x5a 0 512\n")
        qemu.stdin.flush()
        with trio.fail_after(30):
            while "wrote 512" not in await trio.to_thread.run_sync(qemu.stdout.readline):
                pass
        with pytest.raises(BlockError, match="has it open for writing"):
            await open_disk(f"{path},ro")
    finally:
        qemu.stdin.close()
        qemu.wait(timeout=30)
        qemu.stdout.close()
    disk = await open_disk(f"{path},ro")
    assert await disk.read(0, 512) == b"\x5a" * 512
    await disk.close()
