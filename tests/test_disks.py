"""Disks end to end: `hv disk create/info`, `hv run --disk` with the firmware blktest guest
(raw and qcow2, checked by qemu-img), durability across a real SIGKILL, bad specs, Linux's
virtio_blk and ext4 on a host-made image (e2fsck and debugfs as the oracles), Debian's
U-Boot reading and writing a disk, and 100 guests booting from one base image with
`snapshot` overlays."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from blockdev import MemoryDisk
from hv._disk import Disk, close_disks, open_disks
from hv._errors import ConfigError, HostError
from hv.lab import parse_lab
from hv.lab._runner import run_lab

HV = [sys.executable, "-m", "hv.cli"]


def hv(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HV, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)  # fmt: skip


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("qemu-img")
    assert exe, "qemu-img (qemu-utils) is needed: .ci/linux-deps.sh installs it"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def test_hv_disk_create_and_info(tmp_path: Path) -> None:
    base, top = tmp_path / "base.img", tmp_path / "top.qcow2"
    assert hv("disk", "create", str(base), "8M").returncode == 0
    assert base.stat().st_size == 8 << 20
    r = hv("disk", "create", str(top), "--backing", str(base))
    assert r.returncode == 0, r.stderr
    info = json.loads(hv("disk", "info", str(top), "--json").stdout)
    assert info["format"] == "qcow2" and info["virtual_size"] == 8 << 20
    assert [b["format"] for b in info["backing_chain"]] == ["raw"]
    assert qemu_img("check", str(top)).returncode == 0
    text = hv("disk", "info", str(top)).stdout
    assert "format:        qcow2" in text and "backing 0:" in text
    bad = hv("disk", "create", str(tmp_path / "x.img"), "1000")
    assert bad.returncode != 0 and "not a multiple of 512" in bad.stderr


def test_blktest_writes_raw_and_qcow2_and_qemu_img_agrees(tmp_path: Path) -> None:
    raw, q = tmp_path / "d.img", tmp_path / "d.qcow2"
    hv("disk", "create", str(raw), "4M")
    hv("disk", "create", str(q), "4M", "--format", "qcow2")
    for disk in (raw, q):
        r = hv("run", "blktest", "--mem", "16M", "--disk", f"{disk},serial=disk-{disk.suffix[1:]}",
               "--append", "blk.sectors=2048 blk.seed=7")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert (
            "read back 2048 sectors: ok" in r.stdout
            and f"serial disk-{disk.suffix[1:]}" in r.stdout
        )
        v = hv("run", "blktest", "--mem", "16M", "--disk", f"{disk},ro",
               "--append", "blk.mode=verify blk.sectors=2048 blk.seed=7")  # fmt: skip
        assert "verified 2048 sectors: ok" in v.stdout, v.stdout + v.stderr
    assert qemu_img("check", str(q)).returncode == 0
    same = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw), str(q))
    assert same.returncode == 0, same.stdout + same.stderr


def hanging_writer(disk: Path, sectors: int) -> subprocess.Popen[bytes]:
    """`hv run blktest` that writes ``sectors`` to ``disk``, flushes, says so and hangs."""
    p = subprocess.Popen([*HV, "run", "blktest", "--mem", "16M", "--disk", str(disk), "--append",
                          f"blk.mode=write-flush-hang blk.sectors={sectors} blk.seed=3"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    out = b""
    deadline = time.monotonic() + 60
    assert p.stdout is not None
    while b"blktest: flushed" not in out:
        assert time.monotonic() < deadline and p.poll() is None, out
        out += os.read(p.stdout.fileno(), 4096)
    return p


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_flushed_data_survives_sigkill(tmp_path: Path, fmt: str) -> None:
    """The guest writes, flushes, says so and hangs; hv is SIGKILLed; the data is there."""
    disk = tmp_path / f"d.{fmt}"
    hv("disk", "create", str(disk), "8M", "--format", fmt)
    p = hanging_writer(disk, 8192)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    if fmt == "qcow2":
        check = qemu_img("check", str(disk))
        assert check.returncode in (0, 3), check.stdout  # leaked clusters allowed, no corruption
    v = hv("run", "blktest", "--mem", "16M", "--disk", f"{disk},ro",
           "--append", "blk.mode=verify blk.sectors=8192 blk.seed=3")  # fmt: skip
    assert "verified 8192 sectors: ok" in v.stdout, v.stdout + v.stderr


def test_bad_disk_specs_are_clear_errors(tmp_path: Path) -> None:
    raw = tmp_path / "r.img"
    raw.write_bytes(bytes(4096))
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(1000))
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    hv("disk", "create", str(a), "1M", "--format", "qcow2")
    hv("disk", "create", str(b), "--backing", str(a))
    # a backing loop: a's header made to point at b
    r = qemu_img("rebase", "-u", "-b", str(b), "-F", "qcow2", str(a))
    assert r.returncode == 0, r.stderr
    for spec, msg in (
        (str(tmp_path / "missing.img"), "missing.img"),
        (f"{raw},format=qcow2", "not a qcow2 image"),
        (str(odd), "512"),
        (str(b), "backing loop"),
        (f"{raw},bogus", "unknown option bogus"),
    ):
        r = hv("run", "blktest", "--mem", "16M", "--disk", spec)
        assert r.returncode == 4 and msg in r.stderr, (spec, r.stderr)


def test_linux_mounts_a_host_made_ext4_image(tmp_path: Path, linux_image: Any) -> None:
    img = tmp_path / "fs.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img), "32M"], check=True)
    hello = tmp_path / "hello.txt"
    hello.write_text("written by the host\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {hello} hello.txt", str(img)], check=True,
                   capture_output=True)  # fmt: skip
    run = ("mkdir /mnt; mount -t ext4 /dev/vda /mnt; cat /mnt/hello.txt; "
           "echo written by the guest > /mnt/guest.txt; "
           "dd if=/dev/zero of=/mnt/zeros bs=65536 count=64 conv=fsync; ls /mnt; "
           "umount /mnt; poweroff")  # fmt: skip
    r = hv("run", "linux", "--disk", str(img), "--append",
           f'console=ttyS0 quiet hv.run="{run}"')  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "written by the host" in r.stdout and "guest.txt" in r.stdout, r.stdout[-3000:]
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    cat = subprocess.run(["debugfs", "-R", "cat guest.txt", str(img)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert cat.stdout == "written by the guest\n"
    stat = subprocess.run(["debugfs", "-R", "stat zeros", str(img)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "Size: 4194304" in stat.stdout


BASE_SECTORS = 2048


async def test_100_guests_boot_from_one_base_with_snapshot_overlays(tmp_path: Path) -> None:
    """One raw base image with blktest's pattern; 100 guests at once each overwrite it with
    their own pattern through their own `snapshot` overlay and read that back; the base is
    unchanged afterwards."""
    base = tmp_path / "base.img"
    r = hv("disk", "create", str(base), "2M")
    r = hv("run", "blktest", "--mem", "16M", "--disk", str(base),
           "--append", f"blk.sectors={BASE_SECTORS} blk.seed=1")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    vms = "".join(
        f'[vms.g{i}]\nkernel = "blktest"\nmem = "16M"\ndisks = ["base.img,snapshot"]\n'
        f'append = "blk.sectors=512 blk.seed={i + 100}"\n'
        for i in range(100)
    )
    spec = parse_lab(vms, tmp_path)
    out: list[bytes] = []
    with trio.fail_after(120):
        status = await run_lab(spec, out.append)
    text = b"".join(out).decode()
    assert status == 0, text[-2000:]
    assert len(re.findall(r"read back 512 sectors: ok", text)) == 100
    assert hashlib.sha256(base.read_bytes()).hexdigest() == digest


# -- one writer per image ---------------------------------------------------------------------


def test_a_lab_naming_a_writable_disk_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.img").write_bytes(bytes(1 << 20))
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.img").symlink_to("data.img")
    ok = {"ro": "data.img,ro", "snap": "data.img,snapshot"}
    parse_lab(
        "".join(f'[vms.{k}]\nkernel = "blktest"\ndisks = ["{v}"]\n' for k, v in ok.items()),
        tmp_path,
    )  # fmt: skip  readers share
    for first, second in (
        ('"data.img"', '"sub/../data.img"'),
        ('"data.img"', '"link.img,ro"'),
        ('{ file = "data.img", snapshot = true }', '"./data.img"'),
    ):
        lab = (f'[vms.a]\nkernel = "blktest"\ndisks = ["other.img", {first}]\n'
               f'[vms.b]\nkernel = "blktest"\ndisks = [{second}]\n')  # fmt: skip
        with pytest.raises(ConfigError, match=r"vms\.b\.disks\[0\]: .* is also vms\.a\.disks\[1\]"):
            parse_lab(lab, tmp_path)
    lab = '[vms.a]\nkernel = "blktest"\ndisks = ["data.img", "data.img,ro"]\n'
    with pytest.raises(ConfigError, match=r"vms\.a\.disks\[1\]: .* is also vms\.a\.disks\[0\]"):
        parse_lab(lab, tmp_path)


async def test_open_disks_names_the_vm_that_holds_a_disk(tmp_path: Path) -> None:
    for fmt in ("raw", "qcow2"):
        image = tmp_path / f"d.{fmt}"
        assert hv("disk", "create", str(image), "1M", "--format", fmt).returncode == 0
        held = await open_disks([str(image)], owner="vms.a")
        with pytest.raises(ConfigError, match=r"vms\.a\.disks\[0\] has it open for writing"):
            await open_disks([f"{image},snapshot"], owner="vms.b")
        await close_disks(held)
        await close_disks(await open_disks([str(image)], owner="vms.b"))


def test_hv_run_refuses_a_disk_another_hv_writes(tmp_path: Path) -> None:
    image = tmp_path / "d.qcow2"
    hv("disk", "create", str(image), "4M", "--format", "qcow2")
    p = hanging_writer(image, 64)
    try:
        r = hv("run", "blktest", "--mem", "16M", "--disk", str(image))
        assert r.returncode == 4, r.stdout + r.stderr
        assert "another process or VM in this process has it open for writing" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        p.kill()
        p.wait()
        assert p.stdout is not None
        p.stdout.close()


# -- FIFOs and other non-files ----------------------------------------------------------------


def test_fifos_are_refused_at_every_entry_point(tmp_path: Path) -> None:
    """A FIFO opened blocking waits for a writer forever (in a thread no signal reaches):
    each entry point must refuse it at once, exit 4, one line. The timeout makes a
    regression fail instead of hang."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    top = tmp_path / "top.qcow2"
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(1 << 20))
    assert hv("disk", "create", str(top), "--backing", "base.raw").returncode == 0
    base.unlink()
    os.mkfifo(base)  # the backing file is now a FIFO
    (tmp_path / "lab.toml").write_text('[vms.a]\nkernel = "blktest"\ndisks = ["fifo"]\n')
    for args, what in (
        (("run", "blktest", "--mem", "16M", "--disk", str(fifo)), "fifo: not a regular file"),
        (("run", "blktest", "--mem", "16M", "--disk", f"{fifo},format=raw"), "(a FIFO)"),
        (("run", "blktest", "--mem", "16M", "--disk", str(top)), "base.raw"),
        (("disk", "info", str(fifo)), "(a FIFO)"),
        (("disk", "info", str(top)), "base.raw"),
        (("disk", "create", str(tmp_path / "new.qcow2"), "--backing", str(fifo)), "(a FIFO)"),
        (("up", str(tmp_path / "lab.toml")), "vms.a.disks[0]: "),
    ):
        r = hv(*args, timeout=60)
        assert r.returncode == 4, (args, r.stdout, r.stderr)
        assert what in r.stderr and "FIFO" in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


# -- backing files outside the image's folder -------------------------------------------------


async def test_backing_dir_on_the_command_line_and_in_labs(tmp_path: Path) -> None:
    vm, images = tmp_path / "vm", tmp_path / "images"
    vm.mkdir()
    images.mkdir()
    base = images / "base.raw"
    assert hv("disk", "create", str(base), "1M").returncode == 0
    top = vm / "top.qcow2"
    r = hv("disk", "create", str(top), "--backing", str(base))
    assert r.returncode == 0 and f"needs --backing-dir {images}" in r.stderr, r.stderr
    refusal = (f"hv: {top} -> {base}: backing file outside the image's folder; "
               f"pass --backing-dir {images} to allow it")  # fmt: skip
    for args in (("disk", "info", str(top)), ("run", "blktest", "--disk", str(top))):
        r = hv(*args)
        assert r.returncode == 4 and r.stderr.startswith(refusal), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = hv("disk", "info", str(top), "--backing-dir", str(images))
    assert r.returncode == 0 and f"chain:         {top} -> {base}" in r.stdout, r.stdout + r.stderr
    info = json.loads(hv("disk", "info", str(top), "--backing-dir", str(images), "--json").stdout)
    assert [b["filename"] for b in info["backing_chain"]] == [str(base)]
    r = hv("run", "blktest", "--mem", "16M", "--disk", str(top), "--backing-dir", str(images),
           "--append", "blk.sectors=64 blk.seed=5")  # fmt: skip
    assert r.returncode == 0 and "read back 64 sectors: ok" in r.stdout, r.stdout + r.stderr
    lab = '[vms.a]\nkernel = "blktest"\ndisks = [{ file = "top.qcow2", backing_dirs = [%s] }]\n'
    with pytest.raises(ConfigError, match=r"vms\.a\.disks\[0\]\.backing_dirs: expected a list"):
        parse_lab(lab % "1", vm)
    with pytest.raises(ConfigError, match="backing file outside the image's folder"):
        await open_disks(parse_lab(lab % "", vm).vms["a"].disks, vm)
    disks = await open_disks(parse_lab(lab % '"../images"', vm).vms["a"].disks, vm)
    await close_disks(disks)


# -- many disks, and disks that fail to close ------------------------------------------------


def test_too_many_disks_is_one_line(tmp_path: Path) -> None:
    image = tmp_path / "d.img"
    image.write_bytes(bytes(1 << 20))
    for n in (9, 33):
        disks = [a for _ in range(n) for a in ("--disk", f"{image},ro")]
        r = hv("run", "blktest", "--mem", "16M", *disks)
        assert r.returncode == 4 and "8 virtio slots" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    many = ", ".join(['"d.img,ro"'] * 33)
    lab = f'[vms.a]\nkernel = "blktest"\nnics = []\ndisks = [{many}]\n'
    with pytest.raises(ConfigError, match=r"vms\.a\.disks: 33 disks.*8 virtio slots"):
        parse_lab(lab, tmp_path)
    names = [Disk(MemoryDisk(512)).device("a", i).name for i in (0, 25, 26, 32, 701, 702)]
    assert names == ["a.vda", "a.vdz", "a.vdaa", "a.vdag", "a.vdzz", "a.vdaaa"]  # as Linux


class FailingClose(MemoryDisk):
    def __init__(self, code: int) -> None:
        super().__init__(512)
        self.code = code

    async def close(self) -> None:
        await super().close()
        raise OSError(self.code, os.strerror(self.code))


async def test_every_disk_is_closed_and_each_failure_reported() -> None:
    closed: list[int] = []

    class Tracked(MemoryDisk):
        async def close(self) -> None:
            closed.append(id(self))

    good = [Tracked(512) for _ in range(3)]
    backends = [good[0], FailingClose(errno.ENOSPC), good[1], FailingClose(errno.EFBIG), good[2]]
    disks = [Disk(b, serial=f"s{i}") for i, b in enumerate(backends)]
    with pytest.raises(HostError) as info:
        await close_disks(disks)
    assert sorted(closed) == sorted(map(id, good))  # closed despite the failures before them
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and "2 disks failed to close" in lines[0], lines
    assert "ENOSPC" in lines[1] and "EFBIG" in lines[2], lines
