"""Linux's own virtio-vsock and virtio-rng drivers on hv's devices: the guest's
vmw_vsock_virtio_transport binds; the host connects to the guest's ``vsockecho`` and echoes
1 MiB; the guest's ``vsockcat`` reaches a host listener; a connect to a port nobody listens on
is refused at once; /dev/hwrng gives bytes from virtio_rng. On real time, then the same VM on
virtual time (host input stamped as it arrives, a guest asleep in wfi woken by it)."""

from __future__ import annotations

import hashlib
import re

import pytest
import trio

import hv
from hv.build import _image_linux as il
from hv.virtio import VsockRefused

PROMPT = re.compile(rb"\n[^\n]*# $")
BOOT_TIMEOUT = 60


async def run(vm: hv.Vm, command: str, timeout: float = 30) -> str:
    await vm.console.send_all(command + "\n")
    with trio.fail_after(timeout):
        out = await vm.console.wait_for(PROMPT)
    lines = out.decode(errors="replace").replace("\r", "").split("\n")
    return "\n".join(lines[1:-1])


async def echo_mib(vm: hv.Vm) -> None:
    dev = vm.vsock
    assert dev is not None
    stream = await dev.connect(5000)
    data = bytes(i * 7 % 251 for i in range(1 << 20))
    got = hashlib.sha256()
    n = 0

    async def sender() -> None:
        await stream.send_all(data)
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        while chunk := await stream.receive_some():
            got.update(chunk)
            n += len(chunk)
    assert n == len(data) and got.digest() == hashlib.sha256(data).digest()
    await stream.aclose()


@pytest.mark.parametrize("clock", ["real", "virtual"])
async def test_linux_vsock_and_rng(linux_image: il.LinuxImage, clock: str) -> None:
    config = hv.VmConfig(
        kernel=linux_image.kernel,
        initrd=linux_image.initrd,
        cmdline=linux_image.cmdline,
        name="linux",
        clock=clock,  # type: ignore[arg-type]
    )
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, config)
        dev = vm.vsock
        assert dev is not None
        with trio.fail_after(BOOT_TIMEOUT):
            await dev.wait_ready()  # the kernel's driver bound and set DRIVER_OK
            await vm.console.wait_for(PROMPT)
        # virtio-rng: the kernel picked it, and it reads
        assert "virtio_rng" in await run(vm, "cat /sys/class/misc/hw_random/rng_current")
        out = await run(vm, "dd if=/dev/hwrng of=/dev/null bs=64 count=1")
        assert "1+0 records in" in out or "64 bytes" in out, out
        assert vm.stats["linux.rng.bytes"] >= 64
        # host -> guest: 1 MiB through the guest's echo, unchanged
        await vm.console.send_all("vsockecho 5000 &\n")
        with trio.fail_after(30):
            await vm.console.wait_for("listening on port 5000")
        with trio.fail_after(60):
            await echo_mib(vm)
        # nobody listens: refused, quickly
        with trio.fail_after(5), pytest.raises(VsockRefused):
            await dev.connect(5001)
        # guest -> host
        listener = dev.listen(9000)
        await vm.console.send_all("vsockcat 2 9000 hello-host\n")
        with trio.fail_after(30):
            stream = await listener.accept()
            assert await stream.receive_some() == b"hello-host"
            await stream.send_all(b"hello-guest\n")
            assert await stream.receive_some() == b""  # its shutdown(SHUT_WR)
            await stream.aclose()
            await vm.console.wait_for("hello-guest")
            await vm.console.wait_for(PROMPT)
        stats = vm.stats
        assert stats["linux.vsock.connections_out"] == 1
        assert stats["linux.vsock.refused_out"] == 1
        assert stats["linux.vsock.connections_in"] == 1
        mistakes = ("guest_errors", "needs_reset", "bad_", "unknown_", "credit_overrun")
        assert not {k: n for k, n in stats.items() if k.startswith("linux.vsock.") and n and
                    any(m in k for m in mistakes)}  # fmt: skip
        vm.stop()
