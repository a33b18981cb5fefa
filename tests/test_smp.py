"""SMP guests: ``smp = N`` harts sharing RAM, started through SBI HSM (hv/board/_machine.py).

The configuration reaches the machine from every door (``VmConfig``, ``hv run --smp``, a lab's
``smp``), the device tree lists every hart and its PLIC contexts, and the bundled ``smp`` guest
(HSM, IPIs, remote fences, AMOs and LR/SC racing across harts) passes under hv and under
qemu-system-riscv64 with OpenSBI, the reference.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import fdt
import pytest
import trio
from test_guest_dhcp import run_qemu

from hv import ConfigError, StopInfo, StopKind, Vm, VmConfig, run_vm
from hv.board import MachineConfig
from hv.build._guests import build_guest
from hv.lab import parse_lab

REPO = Path(__file__).resolve().parent.parent


def hv(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "hv.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode()
    )


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("smp", [0, 9, -1, True, "2"])
def test_smp_out_of_range_is_a_config_error(smp: object) -> None:
    with pytest.raises(ConfigError, match=r"use 1 to 8"):
        VmConfig(kernel=b"x", smp=smp)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"use 1 to 8"):
        MachineConfig(kernel=b"x", smp=smp)  # type: ignore[arg-type]


def test_vm_config_passes_smp_to_the_machine() -> None:
    assert VmConfig(kernel=b"\0" * 16, smp=3).machine_config().smp == 3
    assert VmConfig(kernel=b"\0" * 16).machine_config().smp == 1


def test_lab_smp_key(tmp_path: Path) -> None:
    vm = '[vms.a]\nkernel = "hello"\n'
    assert parse_lab(vm, tmp_path).vms["a"].smp == 1
    assert parse_lab(f"{vm}smp = 4\n", tmp_path).vms["a"].smp == 4
    for value in ("0", "9", "true", '"4"', "2.0"):
        with pytest.raises(ConfigError) as e:
            parse_lab(f"{vm}smp = {value}\n", tmp_path)
        assert str(e.value).startswith("vms.a.smp: "), str(e.value)
        assert "1..8" in str(e.value)


@pytest.mark.parametrize("value", ["0", "9", "many"])
def test_run_smp_out_of_range_is_a_usage_error(value: str, tmp_path: Path) -> None:
    r = hv("run", "hello", "--smp", value, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--smp" in r.stderr and "Traceback" not in r.stderr


def test_run_help_documents_smp(tmp_path: Path) -> None:
    r = hv("run", "--help", cwd=tmp_path)
    assert "--smp N" in r.stdout and "harts" in r.stdout


def test_device_tree_of_an_smp_machine(tmp_path: Path) -> None:
    out = tmp_path / "smp.dtb"
    r = hv("run", "hello", "--smp", "4", "--dtb-out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tree = fdt.parse_dtb(out.read_bytes())
    contexts: list[int] = []
    for h in range(4):
        cpu = f"/cpus/cpu@{h:x}"
        assert list(tree.get_property("reg", cpu).data) == [h]
        assert tree.get_property("riscv,isa", cpu).value == "rv64imafdc"
        assert tree.get_property("status", cpu).value == "okay"
        intc = tree.get_property("phandle", f"{cpu}/interrupt-controller").value
        contexts += [intc, 11, intc, 9]  # context 2h: M-external, 2h + 1: S-external
    assert not tree.exist_node("/cpus/cpu@4")
    assert list(tree.get_property("interrupts-extended", "/soc/plic@c000000").data) == contexts
    assert tree.get_property("riscv,ndev", "/soc/plic@c000000").value == 95
    if shutil.which("dtc") is None and not os.environ.get("CI"):
        return  # (CI installs dtc)
    proc = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", str(out)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.count('device_type = "cpu";') == 4


# -- the smp guest: under hv, and under qemu + OpenSBI (the reference) ---------------------

SUMMARY = re.compile(r"^smp: (\d+) passed, (\d+) failed$", re.M)
CHECK = re.compile(r"^(PASS|FAIL) (\w+)", re.M)


def checks(out: str) -> list[tuple[str, str]]:
    return CHECK.findall(out)


def assert_all_passed(out: str) -> list[tuple[str, str]]:
    summary = SUMMARY.search(out)
    assert summary is not None, out[-3000:]
    found = checks(out)
    assert [c for c in found if c[0] == "FAIL"] == [], out[-3000:]
    assert int(summary.group(2)) == 0 and int(summary.group(1)) == len(found)
    return found


async def run_smp(smp: int, cmdline: str = "", **kw: Any) -> tuple[StopInfo, str]:
    config = VmConfig(kernel=build_guest("smp"), smp=smp, cmdline=cmdline, name="smp", **kw)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            vm: Vm = await nursery.start(run_vm, config)
            info = await vm.wait()
    return info, vm.console.transcript.decode(errors="replace")


# the checks a machine of 4 harts runs, by name (each hart's own counted)
EXPECTED = {
    "harts", "status_stopped", "hart_start", "status_after_start", "hart_entered",
    "start_registers", "status_started", "start_started_hart", "start_bad_hartid",
    "status_bad_hartid", "status_self", "race_finished", "amoadd_w", "amoadd_d", "lr_sc",
    "ipi_mask", "ipi_base", "ipi_all", "ipi_legacy", "ipi_own_stvec", "ipi_bad_base",
    "remote_fence_i", "remote_fence_i_all", "remote_fence_i_bad_base", "remote_sfence_vma",
    "remote_sfence_vma_all", "remote_sfence_vma_asid", "remote_sfence_vma_bad_base",
    "suspend_retentive_status", "suspend_retentive_resumes", "status_after_resume",
    "suspend_non_retentive_status", "suspend_non_retentive_resumes",
    "status_after_non_retentive", "hart_stop", "hart_restart", "status_restarted", "fwft",
    "lr_sc_lost_to_store",
}  # fmt: skip


@pytest.mark.parametrize(("smp", "clock"), [(2, "real"), (4, "real"), (4, "virtual"), (8, "real")])
async def test_smp_guest_passes(smp: int, clock: Literal["real", "virtual"]) -> None:
    info, out = await run_smp(smp, quantum=10_000, clock=clock)
    found = assert_all_passed(out)
    assert {name for _, name in found} == EXPECTED
    assert sum(name == "hart_start" for _, name in found) == smp - 1
    assert f"smp: {smp} harts, booted on hart 0" in out
    assert info.kind is StopKind.POWEROFF, info


@pytest.mark.parametrize("jobs", [1, None])
async def test_smp_guest_hostile_and_strict_checks(jobs: int | None) -> None:
    """Bad HSM calls get their error codes (the machine runs on), and, with the harts in turn,
    a hart's reservation is lost when another hart stored the same value (qemu's sc only
    compares values; so does hv's with harts on parallel threads: a host compare-and-exchange,
    as QEMU's MTTCG, docs/SCALING.md)."""
    strict = " strict" if jobs == 1 else ""
    info, out = await run_smp(3, "hostile" + strict, jobs=jobs)
    found = {name for _, name in assert_all_passed(out)}
    assert ("lr_sc_lost_to_same_value_store" in found) == bool(strict)
    assert {n for n in found if n.startswith("hostile_")} == {
        "hostile_start_bad_address", "hostile_start_odd_address", "hostile_start_huge_hartid",
        "hostile_start_hartid_minus_1", "hostile_ipi_mask_beyond",
        "hostile_sfence_wrapping_range", "hostile_suspend_bad_address",
        "hostile_suspend_reserved_type", "hostile_hart_still_stopped",
    }  # fmt: skip
    assert info.kind is StopKind.POWEROFF, info


async def test_smp_virtual_time_repeats_byte_for_byte() -> None:
    """Two runs of an SMP guest on virtual time print the same bytes (its times included)."""
    runs = [await run_smp(2, clock="virtual", quantum=5_000) for _ in range(2)]
    assert runs[0][1] == runs[1][1]
    assert "smp: done at tick " in runs[0][1]
    assert_all_passed(runs[0][1])


def test_smp_guest_under_qemu_agrees() -> None:
    """The reference: qemu-system-riscv64 -M virt -smp 4 with OpenSBI runs the same guest,
    and every check hv runs passes there too, the same number of times."""
    out = run_qemu(build_guest("smp"), "", "-smp", "4")
    found = assert_all_passed(out)
    assert {name for _, name in found} == EXPECTED
    boot = re.search(r"smp: 4 harts, booted on hart (\d)", out)
    assert boot is not None, out[-2000:]
    hv_out = trio.run(lambda: run_smp(4, quantum=10_000))[1]
    assert sorted(found) == sorted(checks(hv_out))


# -- the PLIC's per-hart contexts, U-Boot ------------------------------------------------


def test_plic_has_two_contexts_per_hart() -> None:
    from hv.devices._plic import CLAIM_OFFSET, CONTEXT_BASE, CONTEXT_STRIDE, ENABLE_BASE, Plic

    changes: list[tuple[int, bool]] = []
    plic = Plic(lambda ctx, level: changes.append((ctx, level)), harts=4)
    plic.mmio_write(4 * 5, 4, 1)  # source 5: priority 1
    plic.mmio_write(ENABLE_BASE + 0x80 * 7, 4, 1 << 5)  # context 7: hart 3's S-mode
    plic.irq_line(5)(True)
    assert changes == [(7, True)]
    assert plic.mmio_read(CONTEXT_BASE + CONTEXT_STRIDE * 3 + CLAIM_OFFSET, 4) == 0  # hart 1 M
    assert plic.mmio_read(CONTEXT_BASE + CONTEXT_STRIDE * 7 + CLAIM_OFFSET, 4) == 5
    assert changes == [(7, True), (7, False)]
    plic.mmio_read(CONTEXT_BASE + CONTEXT_STRIDE * 8 + CLAIM_OFFSET, 4)  # no context 8
    assert plic.counters["bad_read"] == 1


UBOOT = Path("/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin")


@pytest.mark.parametrize("smp", [2, 4])
async def test_uboot_boots_on_an_smp_machine(smp: int) -> None:
    """U-Boot (S-mode, Debian's qemu build) lists every hart of the tree and powers off."""
    if not UBOOT.is_file():
        if os.environ.get("CI"):
            pytest.fail("CI needs u-boot-qemu (.ci/linux-deps.sh)")
        pytest.skip("needs Debian's u-boot-qemu")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            vm: Vm = await nursery.start(run_vm, VmConfig(kernel=UBOOT, smp=smp))
            await vm.console.wait_for(b"=> ")
            await vm.console.send_all(b"fdt addr $fdtcontroladdr; fdt list /cpus\r")
            await vm.console.wait_for(b"cpu-map")
            await vm.console.send_all(b"poweroff\r")
            info = await vm.wait()
    out = vm.console.transcript.decode(errors="replace")
    assert [f"cpu@{h}" in out for h in range(smp + 1)] == [True] * smp + [False]
    assert info.kind is StopKind.POWEROFF, info


def test_smp_bench_runs() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "smp.py"), "--iters", "100000", "--repeat", "1",
         "--harts", "1,2"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "harts",
        "mode",
        "host",
        "s",
        "guest",
        "Minsn",
        "MIPS",
        "vs",
        "1",
        "hart",
    ]
    # 1 and 2 harts, each in turn and in parallel
    assert [line.split()[:2] for line in lines[1:]] == [
        ["1", "in"], ["1", "parallel"], ["2", "in"], ["2", "parallel"]
    ]  # fmt: skip


LINUX_SMP_RUN = (
    "nproc; grep -c ^processor /proc/cpuinfo; grep ^hart /proc/cpuinfo; "
    "grep -c ^cpu[0-9] /proc/stat; "
    "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done & "
    "j=0; while [ $j -lt 3000 ]; do j=$((j+1)); done & wait; echo burned; poweroff"
)


@pytest.mark.parametrize(
    ("jobs", "clock"), [(None, "real"), (1, "real"), (None, "virtual")], ids=str
)
async def test_linux_boots_on_four_harts(
    linux_image: Any, jobs: int | None, clock: Literal["real", "virtual"]
) -> None:
    """Linux brings up every hart through SBI HSM (harts in parallel on real time by
    default; in turn with one job, or on virtual time): nproc says 4."""
    config = VmConfig(
        kernel=linux_image.kernel,
        initrd=linux_image.initrd,
        cmdline=f'{linux_image.cmdline} hv.run="{LINUX_SMP_RUN}"',
        name="linux",
        smp=4,
        jobs=jobs,
        clock=clock,
    )
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            vm = await nursery.start(run_vm, config)
            info = await vm.wait()
    out = vm.console.transcript.decode(errors="replace").replace("\r", "")
    assert info.kind is StopKind.POWEROFF, out[-2000:]
    assert "smp: Brought up 1 node, 4 CPUs" in out, out[-3000:]
    assert re.search(r"^4\n4\n", out, re.M), out[-1500:]
    assert re.findall(r"^hart\s*: (\d)", out, re.M) == ["0", "1", "2", "3"], out[-1500:]
    # /proc/stat's cpu lines (a kernel message may come between: a loaded host)
    assert re.search(r"^hart\t\t: 3\n(?:\[.*\n)*4\n", out, re.M), out[-1500:]
    assert "\nburned\n" in out, out[-1500:]
    bad = re.findall(r".*(?:WARNING|BUG:|Oops|stall|failed to come online).*", out)
    assert not bad, bad
