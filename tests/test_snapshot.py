"""Snapshots (issue 21): a VM or a lab saved between two slices and restored goes on bit for
bit; the file format refuses what is not a snapshot it can read."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from scapy.utils import PcapNgReader
from test_parallel import LAB

import hv
from hv import VmConfig, run_vm
from hv.build import guest_path
from hv.lab import LabRestore, run_lab
from hv.lab._spec import parse_lab

# The lab of test_parallel: DHCP, an impaired link with loss, jitter and a rate limit, UDP
# and ping across it, and two compute guests with no NIC.
UNTIL = frozenset({"gen", "pinger", "c1", "c2"})


def _frames(path: Path) -> list[tuple[int, bytes]]:
    """A capture's packets as scapy reads them: (timestamp ns, bytes)."""
    with PcapNgReader(str(path)) as r:
        return [(int(p.time * 10**9), bytes(p)) for p in r]


def _outcome(run: Any, folder: Path) -> dict[str, Any]:
    return {
        "exits": {n: (e.kind, e.exit_code, e.reason) for n, e in run.exits.items()},
        "consoles": {n: vm.console.transcript for n, vm in run.vms.items()},
        "lan": _frames(folder / "lan.pcapng"),
        "wan": _frames(folder / "wan.pcapng"),
    }


async def _lab(
    folder: Path, snap: Path | None = None, *, at: bytes = b"", restore: Path | None = None
) -> tuple[dict[str, Any], int | None]:
    """Run the lab to its end; with ``snap``, snapshot it once VM gen printed ``at``."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = LabRestore(restore) if restore is not None else None
    spec = saved.spec() if saved is not None else parse_lab(LAB, folder, "snap")
    lab_ps = None
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(functools.partial(run_lab, spec, until=UNTIL, restore=saved))
            if snap is not None:
                await run.vms["gen"].console.wait_for(at)
                info = await run.snapshot(snap)
                lab_ps = info.lab_ps
            await run.wait()
    return _outcome(run, folder), lab_ps


async def test_a_lab_restored_goes_on_as_the_uninterrupted_run(tmp_path: Path) -> None:
    whole, _ = await _lab(tmp_path / "whole")
    # The same run, snapshotted once the generator has its address: it is not disturbed.
    taken, lab_ps = await _lab(tmp_path / "taken", tmp_path / "snap", at=b"dhcp: eth0 bound")
    assert taken == whole
    assert lab_ps is not None and lab_ps > 0
    # Restored: its captures are written from the snapshot's time on, where the uninterrupted
    # run's were (the restored lab's files are where the lab's were: move those first).
    shutil.move(tmp_path / "taken", tmp_path / "taken-done")
    again, _ = await _lab(tmp_path / "taken", restore=tmp_path / "snap")
    assert again["exits"] == whole["exits"]
    for name, text in again["consoles"].items():
        assert whole["consoles"][name].endswith(text), name
    assert b"120 sent" in again["consoles"]["gen"]  # (most of its run came after the snapshot)
    for cap in ("lan", "wan"):
        tail = again[cap]
        assert tail, cap
        assert whole[cap][-len(tail) :] == tail, cap
        # ... and it is all of the frames after the lab's time at the snapshot (the fabric had
        # taken every frame of that instant before it)
        assert [f for f in whole[cap] if f[0] * 1000 > lab_ps] == tail


async def test_a_vm_restored_on_virtual_time_ends_at_the_same_instant(tmp_path: Path) -> None:
    config = VmConfig(kernel=guest_path("cpu"), cmdline="iters=60", clock="virtual", name="c")
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, config)
        await trio.sleep(0)  # (it runs: the snapshot is taken somewhere in its run)
        info = await vm.snapshot(tmp_path / "c.hvsnap")
        await vm.wait()
    async with trio.open_nursery() as nursery:
        again = await nursery.start(run_vm, hv.restore(info.path))
        await again.wait()
    assert again.exit == vm.exit
    assert again.machine.clock.ps == vm.machine.clock.ps
    assert vm.console.transcript.endswith(again.console.transcript)
    assert b"checksum: 0x" in again.console.transcript


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:20], "truncated"),
        (lambda b: b"GIF89a" + b[6:], "not an hv snapshot"),
        (lambda b: b[:8] + b"\x02" + b[9:], "written by a newer hv"),
        (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "corrupt"),
        (lambda b: b[: len(b) // 2], "truncated"),
    ],
)
async def test_a_damaged_snapshot_is_refused_with_a_clear_error(
    tmp_path: Path, damage: Any, message: str
) -> None:
    config = VmConfig(kernel=guest_path("echo"), clock="virtual", name="h", mem_size=16 << 20)
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, config)
        info = await vm.snapshot(tmp_path / "h.hvsnap")
        vm.stop()
    bad = tmp_path / "bad.hvsnap"
    bad.write_bytes(damage(info.path.read_bytes()))
    with pytest.raises(hv.SnapshotError, match=message):
        hv.restore(bad)


async def test_a_snapshot_of_a_vm_that_stops_meanwhile_says_so(tmp_path: Path) -> None:
    config = VmConfig(kernel=guest_path("echo"), clock="virtual", name="h", mem_size=16 << 20)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, config)
            vm.stop()  # (it stops within a slice: the snapshot asked for now finds it stopped)
            with pytest.raises(hv.StateError, match="stopped"):
                await vm.snapshot(tmp_path / "h.hvsnap")
    assert not (tmp_path / "h.hvsnap").exists()


async def test_clones_of_one_snapshot_each_run_it_from_there(tmp_path: Path) -> None:
    config = VmConfig(kernel=guest_path("cpu"), cmdline="iters=60", clock="virtual", name="c")
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(run_vm, config)
        info = await vm.snapshot(tmp_path / "c.hvsnap")
        await vm.wait()
    lab = 'clock = "virtual"\n[vms.w]\nclone = { from = "c.hvsnap", count = 4 }\n'
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(run_lab, parse_lab(lab, tmp_path, "clones"))
            assert sorted(run.vms) == ["w-1", "w-2", "w-3", "w-4"]
            await run.wait()
    # each clone ran the rest of the original's run, from the snapshot on
    for clone in run.vms.values():
        assert clone.exit == vm.exit
        assert vm.console.transcript.endswith(clone.console.transcript)
        assert b"checksum: 0x" in clone.console.transcript
    assert info.path.is_file()  # (the clones never write their snapshot)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('clone = { from = "c.hvsnap", count = 0 }', "count: 0 is not a number of clones"),
        ("clone = { count = 2 }", "from: missing"),
        ('clone = { from = "c.hvsnap" }\nkernel = "cpu"', "kernel: a clone's kernel is its"),
        ('clone = { from = "c.hvsnap", size = 2 }', "size"),
    ],
)
def test_a_bad_clone_table_is_refused(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(hv.ConfigError, match=message):
        parse_lab(f"[vms.w]\n{table}\n", tmp_path, "bad")


async def test_a_clone_from_a_file_that_is_no_snapshot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.hvsnap").write_bytes(b"#!/bin/sh\n" * 10)
    lab = parse_lab('[vms.w]\nclone = { from = "c.hvsnap", count = 2 }\n', tmp_path, "bad")
    with pytest.raises(hv.ConfigError, match=r"vms.w-1: .*not an hv snapshot"):
        await run_lab(lab)


def test_hv_snapshot_and_hv_up_restore(tmp_path: Path) -> None:
    """The command line: a running lab saved (whole, and one VM), taken down, and brought
    back from its snapshot with `hv up --restore`; bad uses are one line each."""
    from test_control import Host

    host = Host()
    try:
        lab = host.lab_file("keep", 'clock = "virtual"\n[vms.e]\nkernel = "echo"\n'
                            '[vms.c]\nkernel = "cpu"\nappend = "iters=100000000"\n')  # fmt: skip
        r = host.hv("up", "-d", str(lab))
        assert r.returncode == 0, r.stderr
        name = "hv-keep"
        snap = tmp_path / "snap"
        r = host.hv("snapshot", name, str(snap))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{snap}: ") and " MiB" in r.stdout, r.stdout
        assert sorted(p.name for p in (snap / "vms").iterdir()) == ["c.hvsnap", "e.hvsnap"]
        r = host.hv("snapshot", name, "e", str(tmp_path))
        assert r.returncode == 0 and (tmp_path / "e.hvsnap").is_file(), r.stderr
        r = host.hv("snapshot", name, "nosuch", str(tmp_path))
        assert r.returncode == 1 and "no VM named 'nosuch'" in r.stderr, r.stderr
        assert host.hv("down", name).returncode == 0
        r = host.hv("up", "--restore", str(snap), str(lab))
        assert r.returncode == 4 and "takes no LAB.toml" in r.stderr, r.stderr
        r = host.hv("up", "-d", "--restore", str(tmp_path))
        assert r.returncode != 0 and "not a lab snapshot" in (r.stderr + r.stdout), r.stderr
        r = host.hv("up", "-d", "--restore", str(snap))
        assert r.returncode == 0, r.stderr
        vms = host.vms(name)
        assert sorted(vms) == ["c", "e"] and vms["c"]["state"] == "running", vms
        assert host.hv("down", name).returncode == 0
    finally:
        host.cleanup()


async def test_a_linux_guest_snapshotted_mid_disk_write_finishes_it_restored(
    tmp_path: Path, linux_image: Any
) -> None:
    """A guest writing 8 MiB to its disk (dd, fsync) is snapshotted while the write is under
    way: its disk's frozen file holds part of it; restored, the guest goes on and its disk
    ends with all of it."""
    from blockdev.open import DiskSpec, open_disk
    from blockdev.raw import create_raw

    size = 8 << 20
    pattern = (b"0123456789abcdef\n" * (size // 17 + 1))[:size]
    create_raw(tmp_path / "data.img", 16 << 20)
    backend = await open_disk(DiskSpec(str(tmp_path / "data.img")), owner="test")
    config = VmConfig(
        kernel=linux_image.kernel, initrd=linux_image.initrd, cmdline=linux_image.cmdline,
        clock="virtual", name="w", disks=(hv.Disk(backend),),
    )  # fmt: skip
    snap = tmp_path / "snap" / "w.hvsnap"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, config)
            write = (
                f"yes 0123456789abcdef | head -c {size} > /tmp/p; (dd if=/tmp/p of=/dev/vda "
                "bs=64k conv=fsync 2>/dev/null; echo done > /tmp/done) >/dev/null 2>&1 </dev/null &"
            )
            assert (await vm.exec("sh", "-c", write)).returncode == 0
            await vm.snapshot(snap)
            vm.stop()
        await backend.close()
        frozen = (tmp_path / "snap" / "w-vda.raw").read_bytes()[:size]
        assert frozen != pattern  # the write was under way
        disks = await hv.restore_disks(snap, tmp_path / "work")
        async with trio.open_nursery() as nursery:
            again = await nursery.start(run_vm, hv.restore(snap, disks=tuple(disks)))
            while b"done" not in (await again.exec("cat", "/tmp/done")).stdout:
                await trio.sleep(0.01)
            r = await again.exec("sh", "-c", f"head -c {size} /dev/vda | md5sum")
            again.stop()
    import hashlib

    assert r.stdout.split()[0].decode() == hashlib.md5(pattern).hexdigest()


async def test_a_real_time_lab_is_paused_for_its_snapshot_and_restores(tmp_path: Path) -> None:
    lab = parse_lab(
        'clock = "real"\n[switches.lan]\n[vms.s]\nkernel = "udpecho"\nappend = "ip=10.0.0.2/24"\n'
        'nics = [{ switch = "lan" }]\n[vms.p]\nkernel = "ping"\n'
        'append = "ip=10.0.0.3/24 peer=10.0.0.2 count=1000000 interval=20"\n'
        'nics = [{ switch = "lan" }]\n',
        tmp_path,
        "rt",
    )
    assert lab.clock == "real"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = await nursery.start(run_lab, lab)
            await run.vms["p"].console.wait_for(b"seq=2 ")
            info = await run.snapshot(tmp_path / "snap")
            assert info.lab_ps is None
            # every VM runs on after it (resumed)
            await run.vms["p"].console.wait_for(b"seq=4 ")
            run.stop()
        saved = LabRestore(tmp_path / "snap")
        again = await nursery_run(saved)
    text = again.vms["p"].console.transcript
    # the restored pinger goes on from its sequence number, and is answered
    assert b"reply from 10.0.0.2" in text and b"seq=1 " not in text, text


async def nursery_run(saved: LabRestore) -> Any:
    async with trio.open_nursery() as nursery:
        run = await nursery.start(functools.partial(run_lab, saved.spec(), restore=saved))
        await run.vms["p"].console.wait_for(b"reply from 10.0.0.2")
        run.stop()
    return run


async def test_a_linux_guest_on_two_harts_restores_with_both(
    tmp_path: Path, linux_image: Any
) -> None:
    config = VmConfig(
        kernel=linux_image.kernel, initrd=linux_image.initrd, cmdline=linux_image.cmdline,
        clock="virtual", name="two", smp=2,
    )  # fmt: skip
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, config)
            assert (await vm.exec("nproc")).stdout == b"2\n"
            info = await vm.snapshot(tmp_path / "two.hvsnap")
            vm.stop()
        async with trio.open_nursery() as nursery:
            again = await nursery.start(run_vm, hv.restore(info.path))
            assert len(again.machine.harts) == 2
            # both harts run work again: two processes at once, each on a hart of its own
            r = await again.exec(
                "sh",
                "-c",
                "nproc; (stress -n 200 >/dev/null &); stress -n 200 >/dev/null; "
                "wait; grep -c processor /proc/cpuinfo",
            )
            again.stop()
    assert r.returncode == 0 and r.stdout == b"2\n2\n", r
    assert all(h.vcpu.stats.guest_insns > 0 for h in again.machine.harts)
