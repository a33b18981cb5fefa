"""The pytest plugin's session snapshots: ``hv_snapshot`` boots a guest once per session and
configuration and snapshots it when it is ready; ``hv_vm(restore=...)`` starts each test's
VM from that snapshot.

Three tests restore the same booted Linux guest: each writes a file in the guest and finds
none of the others' (each starts from the snapshot, not from what the previous test left);
each finds the file the session's boot wrote before the snapshot, a console without the
kernel's boot, and a guest clock that went on from the snapshot's (it advanced by no more
than the test's own run: no boot happened in the test).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import hv
from hv.pytest_plugin import SessionSnapshot, SnapshotFactory, SnapshotNotReady

WHO = ("a", "b", "c")


async def prepare(vm: hv.Vm) -> None:
    """The session's guest, made ready: its uptime when it was, in a file of its own."""
    await vm.exec("sh", "-c", "mkdir /tmp/marks && cat /proc/uptime > /tmp/at-snapshot", check=True)


@pytest.fixture(scope="session")
def booted(hv_snapshot: SnapshotFactory, linux_image: Any) -> SessionSnapshot:
    return hv_snapshot(kernel="linux", mem="128M", ready=prepare)


def uptime(line: str) -> float:
    return float(line.split()[0])


@pytest.mark.parametrize("who", WHO)
async def test_each_test_starts_from_the_session_snapshot(
    hv_vm: Any, booted: SessionSnapshot, who: str
) -> None:
    t0 = time.monotonic()
    vm = await hv_vm(restore=booted, name=f"restored-{who}")
    script = f"ls /tmp/marks; echo {who} > /tmp/marks/{who}; cat /tmp/at-snapshot /proc/uptime"
    r = await vm.exec("sh", "-c", script, check=True)
    elapsed = time.monotonic() - t0
    lines = r.stdout.decode().splitlines()
    assert lines[:-2] == []  # no other test's mark: each test starts from the snapshot
    at_snapshot, now = uptime(lines[-2]), uptime(lines[-1])
    # The guest's clock went on from the snapshot's: no boot in this test (its console has
    # none either), and the guest spent no more time than the test's run since then.
    assert 0 < at_snapshot <= now <= booted.guest_s + elapsed
    assert b"Linux version" not in vm.console.transcript
    assert (await vm.exec("cat", f"/tmp/marks/{who}", check=True)).stdout == f"{who}\n".encode()


async def test_the_same_configuration_is_the_same_snapshot(
    hv_snapshot: SnapshotFactory, booted: SessionSnapshot
) -> None:
    assert hv_snapshot(kernel="linux", mem="128M", ready=prepare) is booted
    assert booted.path.stat().st_blocks * 512 == booted.bytes  # (on disk: RAM has holes)
    assert len(hv_snapshot.snapshots) >= 1


async def test_a_snapshot_taken_from_a_test_with_nics(
    hv_snapshot: SnapshotFactory, hv_vm: Any
) -> None:
    """Called from a test (its boot in a thread and trio run of its own); the NIC's switch
    there is a private one, and the restored VM answers on the test's."""
    nic = {"switch": "lan", "ip": "10.0.0.2/24"}
    snap = hv_snapshot(kernel="udpecho", mem="16M", nics=[nic], ready=b"udpecho: echoing")
    echo = await hv_vm(restore=snap, nics=[nic])
    assert echo.name == "udpecho"
    ping = await hv_vm(
        kernel="ping",
        mem="16M",
        append="peer=10.0.0.2 count=2",
        nics=[{"switch": "lan", "ip": "10.0.0.1/24"}],
    )
    assert (await ping.wait()).exit_code == 0
    assert b"udpecho: echoing" not in echo.console.transcript  # it did not start again


async def test_a_guest_never_ready_is_a_clear_error(
    hv_snapshot: SnapshotFactory, hv_vm: Any
) -> None:
    with pytest.raises(
        SnapshotNotReady,
        match=r"VM hello was never ready, its console never showed .*: it stopped: poweroff",
    ) as e:
        hv_snapshot(kernel="hello", mem="16M", ready=b"not a line hello prints")
    assert "  | " in str(e.value)  # its console's last lines
    with pytest.raises(SnapshotNotReady) as again:  # not booted again
        hv_snapshot(kernel="hello", mem="16M", ready=b"not a line hello prints")
    assert again.value is e.value
    with pytest.raises(TypeError, match="give only name=, nics= and disks="):
        await hv_vm(restore="any.hvsnap", kernel="hello")


async def test_restoring_a_file_again_reuses_its_images_until_it_is_replaced(
    tmp_path: Path, guest_elfs: dict[str, Path]
) -> None:
    """A restore reads and checks the kernel and initrd only a reboot needs: restoring the
    same file again (a test each, clones) takes them from the last restore, and a file
    replaced since (a new snapshot at that path) is read again."""
    path = tmp_path / "s.hvsnap"
    for kernel in ("sleep", "echo"):
        config = hv.VmConfig(kernel=guest_elfs[kernel], mem_size=16 << 20, name=kernel)
        async with hv.open_vm(config) as vm:
            await vm.console.wait_for(b"\n")
            await vm.snapshot(path, durable=False)
        first = hv.restore(path).kernel
        assert first == guest_elfs[kernel].read_bytes()
        assert hv.restore(path).kernel is first
