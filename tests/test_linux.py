"""A real riscv64 Linux 6.1 kernel under hv: boot, shell, stress, poweroff, reboot, panic.

The image comes from `hv image build linux`, which the test command (`bash .ci/test`) runs
before pytest starts (cached: only the first run pays for it).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio

import hv
from hv.build import _image_linux as il

PROMPT = re.compile(rb"\n[^\n]*# $")
BOOT_TIMEOUT = 60

# Lines in a boot log that mean our platform misbehaved (clock, interrupts, RCU, a crash).
BAD_LOG = re.compile(
    r"WARNING|BUG:|Oops|Call Trace|stall|soft lockup|unstable|spurious|nobody cared|"
    r"timed out|timeout|hung task|clocksource.*(skew|unstable)|Unable to handle",
)


def config(img: il.LinuxImage, cmdline: str | None = None) -> hv.VmConfig:
    return hv.VmConfig(
        kernel=img.kernel, initrd=img.initrd, cmdline=cmdline or img.cmdline, name="linux"
    )


async def _boot(img: il.LinuxImage, nursery: trio.Nursery, cmdline: str | None = None) -> hv.Vm:
    vm: hv.Vm = await nursery.start(hv.run_vm, config(img, cmdline))
    with trio.fail_after(BOOT_TIMEOUT):
        await vm.console.wait_for("Run /init as init process")
        await vm.console.wait_for(PROMPT)
    return vm


async def run(vm: hv.Vm, command: str, timeout: float = 30) -> str:
    """Type a command at the shell; return its output (without the echo and the prompt)."""
    await vm.console.send_all(command + "\n")
    with trio.fail_after(timeout):
        out = await vm.console.wait_for(PROMPT)
    text = out.decode(errors="replace").replace("\r", "")
    lines = text.split("\n")
    return "\n".join(lines[1:-1])  # drop the echoed command and the new prompt


@pytest.fixture
async def linux_vm(linux_image: il.LinuxImage) -> AsyncIterator[hv.Vm]:
    async with trio.open_nursery() as nursery:
        vm = await _boot(linux_image, nursery)
        yield vm
        vm.stop()


async def test_boots_to_a_shell_prompt(linux_vm: hv.Vm) -> None:
    log = linux_vm.console.transcript.decode(errors="replace")
    assert "Linux version 6.1" in log
    assert "SBI specification v2.0 detected" in log
    assert "ttyS0 at MMIO 0x10000000" in log
    assert linux_vm.state is hv.VmState.RUNNING


async def test_boot_log_has_no_platform_warnings(linux_vm: hv.Vm) -> None:
    log = linux_vm.console.transcript.decode(errors="replace")
    bad = [line for line in log.splitlines() if BAD_LOG.search(line)]
    assert not bad, "boot log complains:\n" + "\n".join(bad)


async def test_command_output(linux_vm: hv.Vm) -> None:
    assert (await run(linux_vm, "echo hv-marker-42")).strip() == "hv-marker-42"
    assert "riscv64" in await run(linux_vm, "uname -a")
    cpuinfo = await run(linux_vm, "cat /proc/cpuinfo")
    # The kernel's paging mode is the one the device tree advertises (hv.board._fdt: Sv57).
    assert "rv64imafdc" in cpuinfo and "sv57" in cpuinfo


async def test_user_space_stress_completes(linux_vm: hv.Vm) -> None:
    out = await run(linux_vm, "stress -n 300 -p 32", timeout=120)
    assert re.search(r"stress: 300 iterations in [\d.]+ s, 0 failures", out), out
    faults = int(re.search(r"(\d+) minor page faults", out).group(1))  # type: ignore[union-attr]
    assert faults >= 300 * 32


async def test_poweroff_exits_zero(linux_image: il.LinuxImage) -> None:
    async with trio.open_nursery() as nursery:
        vm = await _boot(linux_image, nursery)
        await vm.console.send_all("poweroff\n")
        with trio.fail_after(30):
            info = await vm.wait()
    assert info.kind == hv.StopKind.POWEROFF and info.exit_code == 0, info


async def test_reboot_restarts_the_guest(linux_image: il.LinuxImage) -> None:
    async with trio.open_nursery() as nursery:
        vm = await _boot(linux_image, nursery)
        await vm.console.send_all("reboot\n")
        with trio.fail_after(BOOT_TIMEOUT):
            await vm.console.wait_for("reboot: Restarting system")
            await vm.console.wait_for("Linux version 6.1")  # a fresh boot
            await vm.console.wait_for("Run /init as init process")
            await vm.console.wait_for(PROMPT)
        assert vm.state is hv.VmState.RUNNING
        assert (await run(vm, "echo after-reboot")).strip() == "after-reboot"
        await vm.console.send_all("poweroff\n")
        with trio.fail_after(30):
            info = await vm.wait()
    assert info.exit_code == 0


async def test_kernel_panic_stops_with_a_clear_failure(linux_image: il.LinuxImage) -> None:
    cmdline = f"{linux_image.cmdline} rdinit=/no/such/init"
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, config(linux_image, cmdline))
        with trio.fail_after(BOOT_TIMEOUT):
            info = await vm.wait()
    assert info.kind == hv.StopKind.FAILURE and info.exit_code == 1, info
    assert "Kernel panic" in info.reason and "VFS" in info.reason


def test_hv_run_linux_from_the_command_line(linux_image: il.LinuxImage) -> None:
    # stdin stays open until the prompt is reached, so the command is typed at the shell.
    proc = subprocess.Popen(
        [sys.executable, "-m", "hv.cli", "run", "linux"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""
    while not PROMPT.search(seen):
        chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
        assert chunk, f"hv exited before the prompt: {seen[-500:]!r}"
        seen += chunk
    proc.stdin.write(b"echo cli-ok\npoweroff\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"cli-ok" in out and b"reboot: Power down" in out


# ---------------------------------------------------------------- busybox (issue 19)


async def test_busybox_shell_and_tools(linux_vm: hv.Vm) -> None:
    assert (await run(linux_vm, "echo $((6 * 7)) | head -n 1")).strip() == "42"
    # (short command lines: the line editor wraps long ones on the console)
    for path in ("/usr/bin/nc", "/usr/bin/wget", "/usr/bin/nslookup", "/usr/bin/head",
                 "/sbin/udhcpc", "/bin/vi", "/usr/sbin/httpd"):  # fmt: skip
        assert (await run(linux_vm, f"readlink -f {path}")).strip() == "/bin/busybox", path
    # every applet busybox itself lists has its link, but the ones hvbox keeps (init, ip,
    # ping, dd, true, false: hv/build/_busybox.py OURS) and /linuxrc
    await run(linux_vm, "busybox --list-full > /tmp/l")
    missing = await run(linux_vm, "while read p; do [ -e /$p ] || echo /$p; done < /tmp/l")
    assert sorted(missing.split()) == ["/linuxrc", "/sbin/init", "/sbin/ip"], missing
    for name in ("ping", "dd", "true", "ip"):
        assert (await run(linux_vm, f"readlink /bin/{name}")).strip() == "hvbox", name
    assert "function" in await run(linux_vm, "type ping")
    # in the shell, hvbox's ping wins (its summary line is what labs read)
    ping = await run(linux_vm, "ping -c 1 127.0.0.1")
    assert "1 packets transmitted, 1 received" in ping, ping


async def test_hv_run_is_busybox_sh_with_our_ping(linux_image: il.LinuxImage) -> None:
    run_ = "echo sum=$((2+3)); ping -c 1 127.0.0.1; poweroff"
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(
            hv.run_vm, config(linux_image, f'{linux_image.cmdline} hv.run="{run_}"')
        )
        with trio.fail_after(BOOT_TIMEOUT):
            info = await vm.wait()
    out = vm.console.transcript.decode(errors="replace")
    assert info.exit_code == 0 and "sum=5" in out, out[-1500:]
    assert "1 packets transmitted, 1 received" in out, out[-1500:]


async def test_hosts_and_resolv_conf_from_the_command_line(linux_image: il.LinuxImage) -> None:
    cmdline = (
        f"{linux_image.cmdline} hostname=web nameserver=10.0.0.1 nameserver=10.0.0.9 "
        'hv.domain=lab hv.run="cat /etc/hosts /etc/resolv.conf; hostname; poweroff"'
    )
    async with trio.open_nursery() as nursery:
        vm: hv.Vm = await nursery.start(hv.run_vm, config(linux_image, cmdline))
        with trio.fail_after(BOOT_TIMEOUT):
            await vm.wait()
    out = vm.console.transcript.decode(errors="replace").replace("\r", "")
    assert "127.0.0.1\tlocalhost\n" in out and "127.0.1.1\tweb.lab web\n" in out, out[-800:]
    assert "search lab\nnameserver 10.0.0.1\nnameserver 10.0.0.9\n" in out, out[-800:]
    assert "\nweb\n" in out


async def test_the_guest_has_the_wall_clock(linux_image: il.LinuxImage) -> None:
    """No RTC: hv passes hv.time= and init sets the clock; the host's time on real time, a
    fixed date on virtual time (so a run repeats). At 1970-01-01 real daemons break."""
    import time

    from hv.hw._clock import VIRTUAL_EPOCH

    async with trio.open_nursery() as nursery:
        vm = await _boot(linux_image, nursery)
        guest = int(await run(vm, "date -u +%s"))
        assert abs(guest - time.time()) < 120, guest
        vm.stop()
    cfg = dataclasses.replace(config(linux_image), clock="virtual")
    async with trio.open_nursery() as nursery:
        vm = await nursery.start(hv.run_vm, cfg)
        with trio.fail_after(BOOT_TIMEOUT):
            await vm.console.wait_for(PROMPT)
        guest = int(await run(vm, "date -u +%s"))
        assert VIRTUAL_EPOCH <= guest < VIRTUAL_EPOCH + 60, guest
        # a reboot is given the clock again, at the lab's time: it does not go back
        await run(vm, "sleep 3")
        await vm.console.send_all("reboot\n")
        with trio.fail_after(BOOT_TIMEOUT):
            await vm.console.wait_for("Run /init as init process")
            await vm.console.wait_for(PROMPT)
        again = int(await run(vm, "date -u +%s"))
        assert guest + 3 <= again < guest + 60, (guest, again)
        vm.stop()
