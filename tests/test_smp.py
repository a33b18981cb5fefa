"""SMP guests: ``smp = N`` harts sharing RAM, started through SBI HSM (hv/board/_machine.py).

The configuration reaches the machine from every door (``VmConfig``, ``hv run --smp``, a lab's
``smp``), the device tree lists every hart and its PLIC contexts, and the bundled ``smp`` guest
(HSM, IPIs, remote fences, AMOs and LR/SC racing across harts) passes under hv and under
qemu-system-riscv64 with OpenSBI, the reference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import fdt
import pytest

from hv import ConfigError, VmConfig
from hv.board import MachineConfig
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
