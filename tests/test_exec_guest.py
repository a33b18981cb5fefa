"""``vm.exec``, ``copy_in``, ``copy_out`` in a real Linux guest (the fast image built from this
tree: its init starts hv-agent) over virtio-vsock, and ``hv exec`` / ``hv cp`` through a lab
run by ``hv up -d``. The protocol's corners without a guest: tests/test_exec.py."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import hv
from hv._exec import AgentUnavailable, ExecError, Output

TEN_MB = 10_000_000


def _config(img: Any, name: str = "g") -> hv.VmConfig:
    return hv.VmConfig(kernel=img.kernel, initrd=img.initrd, cmdline=img.cmdline, name=name)


@pytest.fixture
async def guest(linux_image: Any) -> AsyncIterator[hv.Vm]:
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, _config(linux_image))
        yield vm
        vm.stop()


async def test_exit_status_stdout_stderr_stdin(guest: hv.Vm) -> None:
    with trio.fail_after(60):  # the first exec waits for the guest to boot
        r = await guest.exec("sh", "-c", "echo out; cat /nope; exit 3")
    assert (r.returncode, r.stdout) == (3, b"out\n")
    assert b"/nope" in r.stderr and b"out" not in r.stderr
    data = os.urandom(200_000)
    r = await guest.exec("cat", stdin=data, timeout=30)
    assert r.stdout == data
    with pytest.raises(ExecError, match="cannot run nonesuch: No such file") as e:
        await guest.exec("nonesuch")
    assert e.value.errno == 2


async def test_ten_megabytes_both_ways_unchanged(guest: hv.Vm, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(TEN_MB))
    blob.chmod(0o640)
    with trio.fail_after(120):
        await guest.copy_in(blob, "/tmp/")
        r = await guest.exec("cat", "/tmp/blob")
        assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(blob.read_bytes()).digest()
        await guest.copy_out("/tmp/blob", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == blob.read_bytes()
    assert (tmp_path / "back").stat().st_mode & 0o777 == 0o640
    with pytest.raises(ExecError, match="/tmp/nope: No such file"):
        await guest.copy_out("/tmp/nope", tmp_path / "nope")


async def test_pty(guest: hv.Vm) -> None:
    with trio.fail_after(60):
        async with guest.open_exec(["tty"], tty=True, rows=30, cols=100) as p:
            out = b"".join([e.data async for e in p.events() if isinstance(e, Output)])
    assert out.strip().startswith(b"/dev/pts/"), out
    assert (await guest.exec("tty")).stdout == b"not a tty\n"


async def test_exec_needs_no_network(linux_image: Any) -> None:
    """A guest with a NIC whose link is set down: exec goes on (vsock is not the network)."""
    cfg = _config(linux_image)
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
        with trio.fail_after(60):
            r = await vm.exec("sh", "-c", "ip link set lo down; ip link")
            assert r.returncode == 0
            assert (await vm.exec("echo", "still")).stdout == b"still\n"
        vm.stop()


async def test_exec_works_in_a_guest_whose_network_is_broken(linux_image: Any) -> None:
    """A guest with a NIC on a switch, its network broken on purpose (eth0 down, its address
    gone): exec and copies go on, over vsock."""
    from netfabric.switch import Switch

    async with trio.open_nursery() as nursery:
        lan = await nursery.start(Switch("lan").run)
        cfg = hv.VmConfig(
            kernel=linux_image.kernel,
            initrd=linux_image.initrd,
            cmdline=linux_image.cmdline,
            name="broken",
            nics=(hv.Nic(lan, ip="10.0.0.2/24"),),
        )
        vm: hv.Vm = await nursery.start(hv.run_vm, cfg)
        with trio.fail_after(60):
            before = (await vm.exec("ip", "addr", check=True)).stdout.decode()
            assert "10.0.0.2" in before, before
            await vm.exec("ip", "link", "set", "eth0", "down", check=True)
            # the address flushed: SIOCSIFADDR 0.0.0.0 removes it (the applet has no flush;
            # it then fails to set a netmask on no address, so no check)
            await vm.exec("ip", "addr", "add", "0.0.0.0/0", "dev", "eth0")
            after = (await vm.exec("ip", "addr", check=True)).stdout.decode()
            eth0 = after[after.index("eth0") :]
            assert "10.0.0.2" not in after and "UP" not in eth0.split("\n")[0], after
            r = await vm.exec("sh", "-c", "echo still here; exit 5")
            assert (r.returncode, r.stdout) == (5, b"still here\n")
            assert (await vm.exec("cat", stdin=b"x" * 100_000)).stdout == b"x" * 100_000
        vm.stop()
        nursery.cancel_scope.cancel()


async def test_killed_agent_is_a_clear_error_at_once(guest: hv.Vm) -> None:
    with trio.fail_after(60):
        ps = (await guest.exec("ps", "-o", "pid,ppid,args")).stdout.decode()
    agent = [line.split() for line in ps.splitlines() if line.endswith(" hv-agent")]
    (pid,) = [f[0] for f in agent if f[1] == "1"]  # one process serves every request
    with trio.fail_after(5), pytest.raises(AgentUnavailable, match="closed the connection"):
        await guest.exec("kill", "-9", pid)  # the agent serving it dies under it
    with trio.fail_after(5), pytest.raises(AgentUnavailable, match="not running any more"):
        await guest.exec("true")


async def test_the_pytest_plugins_vms_have_exec(hv_vm: Any) -> None:
    vm = await hv_vm(kernel="linux", name="p")
    with trio.fail_after(60):
        r = await vm.exec("uname", "-a", check=True)
    assert r.stdout.startswith(b"Linux ")
