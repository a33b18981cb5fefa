"""The generated device tree, parsed back with the `fdt` package (and checked by dtc if present)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import fdt
import pytest

from hv._errors import ConfigError
from hv.board._fdt import DeviceTreeSpec, build_device_tree
from hv.hw._platform import (
    PLIC_BASE,
    PLIC_SIZE,
    RAM_BASE,
    TEST_BASE,
    TIMEBASE_HZ,
    UART0_BASE,
    UART0_IRQ,
    VIRTIO_SLOTS,
    virtio_slot_base,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
UART = "/soc/serial@10000000"


def build(**kw: Any) -> Any:
    kw.setdefault("ram_base", RAM_BASE)
    kw.setdefault("ram_size", 128 * MIB)
    kw.setdefault("bootargs", "console=ttyS0 earlycon")
    kw.setdefault("initrd", None)
    blob = build_device_tree(DeviceTreeSpec(**kw))
    assert isinstance(blob, bytes)
    return fdt.parse_dtb(blob)


def words(tree: Any, path: str, name: str) -> list[int]:
    prop = tree.get_node(path).get_property(name)
    assert isinstance(prop, fdt.PropWords), f"{path}:{name} is {prop!r}"
    return list(prop.data)


def strings(tree: Any, path: str, name: str) -> list[str]:
    prop = tree.get_node(path).get_property(name)
    assert isinstance(prop, fdt.PropStrings), f"{path}:{name} is {prop!r}"
    return list(prop.data)


def u64(cells: list[int]) -> int:
    assert len(cells) == 2
    return (cells[0] << 32) | cells[1]


def flag(tree: Any, path: str, name: str) -> bool:
    prop = tree.get_node(path).get_property(name)
    return prop is not None and type(prop) is fdt.Property  # an empty property


def phandle(tree: Any, path: str) -> int:
    (value,) = words(tree, path, "phandle")
    return value


def test_header_and_root() -> None:
    blob = build_device_tree(DeviceTreeSpec(ram_base=RAM_BASE, ram_size=128 * MIB))
    assert blob[:4] == bytes.fromhex("d00dfeed")
    assert int.from_bytes(blob[4:8], "big") == len(blob)  # totalsize
    tree = fdt.parse_dtb(blob)
    assert tree.header.version == 17
    assert tree.entries == []  # no memory reservations
    assert words(tree, "/", "#address-cells") == [2]
    assert words(tree, "/", "#size-cells") == [2]
    assert strings(tree, "/", "compatible") == ["riscv-virtio"]
    assert strings(tree, "/", "model")[0].startswith("riscv-virtio")
    assert not tree.exist_node("/soc/clint@2000000")  # the timer comes from SBI


@pytest.mark.parametrize("size", [16 * MIB, 128 * MIB, 4 * GIB, 16 * GIB])
def test_memory_node(size: int) -> None:
    tree = build(ram_size=size)
    assert strings(tree, "/memory@80000000", "device_type") == ["memory"]
    reg = words(tree, "/memory@80000000", "reg")
    assert u64(reg[:2]) == RAM_BASE
    assert u64(reg[2:]) == size


def test_chosen_bootargs_and_stdout_path() -> None:
    tree = build(bootargs="console=ttyS0 root=/dev/vda rw quiet")
    assert strings(tree, "/chosen", "bootargs") == ["console=ttyS0 root=/dev/vda rw quiet"]
    assert strings(tree, "/chosen", "stdout-path") == [UART]
    assert tree.exist_node(UART)  # stdout-path names a real node
    assert strings(tree, "/aliases", "serial0") == [UART]
    assert not tree.exist_property("linux,initrd-start", "/chosen")
    assert not tree.exist_property("linux,initrd-end", "/chosen")


def test_empty_bootargs_are_left_out() -> None:
    tree = build(bootargs="")
    assert not tree.exist_property("bootargs", "/chosen")
    assert strings(tree, "/chosen", "stdout-path") == [UART]


@pytest.mark.parametrize(
    ("ram_size", "initrd"),
    [
        (128 * MIB, (0x8740_0000, 0x8790_1234)),
        (8 * GIB, (0x2_7F00_0000, 0x2_7FC0_0000)),  # above 4 GiB: both cells matter
    ],
)
def test_initrd_is_64_bit(ram_size: int, initrd: tuple[int, int]) -> None:
    tree = build(ram_size=ram_size, initrd=initrd)
    start = words(tree, "/chosen", "linux,initrd-start")
    end = words(tree, "/chosen", "linux,initrd-end")
    assert len(start) == 2 and len(end) == 2
    assert (u64(start), u64(end)) == initrd


def test_size_does_not_depend_on_initrd_values() -> None:
    # Callers build once with placeholders to learn the size, then again with the real range.
    spec = DeviceTreeSpec(
        ram_base=RAM_BASE, ram_size=GIB, bootargs="x", initrd=(RAM_BASE, RAM_BASE + 1)
    )
    other = DeviceTreeSpec(
        ram_base=RAM_BASE, ram_size=GIB, bootargs="x", initrd=(0xBF00_0000, 0xBFE0_0000)
    )
    assert len(build_device_tree(spec)) == len(build_device_tree(other))


def test_cpus() -> None:
    tree = build()
    assert words(tree, "/cpus", "#address-cells") == [1]
    assert words(tree, "/cpus", "#size-cells") == [0]
    assert words(tree, "/cpus", "timebase-frequency") == [TIMEBASE_HZ]
    assert TIMEBASE_HZ == 10_000_000
    cpu = "/cpus/cpu@0"
    assert strings(tree, cpu, "device_type") == ["cpu"]
    assert words(tree, cpu, "reg") == [0]
    assert strings(tree, cpu, "status") == ["okay"]
    assert strings(tree, cpu, "compatible") == ["riscv"]
    assert strings(tree, cpu, "riscv,isa") == ["rv64imafdc"]
    assert strings(tree, cpu, "mmu-type") == ["riscv,sv57"]
    intc = f"{cpu}/interrupt-controller"
    assert strings(tree, intc, "compatible") == ["riscv,cpu-intc"]
    assert words(tree, intc, "#interrupt-cells") == [1]
    assert flag(tree, intc, "interrupt-controller")
    assert phandle(tree, intc) > 0
    assert not tree.exist_node("/cpus/cpu@1")
    assert words(tree, "/cpus/cpu-map/cluster0/core0", "cpu") == [phandle(tree, cpu)]


def test_cpu_options() -> None:
    tree = build(isa="rv64imafdc_zicsr_zifencei", mmu_type="riscv,sv48", timebase_hz=1_000_000)
    assert strings(tree, "/cpus/cpu@0", "riscv,isa") == ["rv64imafdc_zicsr_zifencei"]
    assert strings(tree, "/cpus/cpu@0", "mmu-type") == ["riscv,sv48"]
    assert words(tree, "/cpus", "timebase-frequency") == [1_000_000]


def test_soc_bus() -> None:
    tree = build()
    assert strings(tree, "/soc", "compatible") == ["simple-bus"]
    assert flag(tree, "/soc", "ranges")
    assert words(tree, "/soc", "#address-cells") == [2]
    assert words(tree, "/soc", "#size-cells") == [2]


def test_plic() -> None:
    tree = build()
    plic = f"/soc/plic@{PLIC_BASE:x}"
    assert plic == "/soc/plic@c000000"
    assert strings(tree, plic, "compatible") == ["sifive,plic-1.0.0", "riscv,plic0"]
    reg = words(tree, plic, "reg")
    assert (u64(reg[:2]), u64(reg[2:])) == (PLIC_BASE, PLIC_SIZE)
    assert flag(tree, plic, "interrupt-controller")
    assert words(tree, plic, "#interrupt-cells") == [1]
    assert words(tree, plic, "#address-cells") == [0]
    assert words(tree, plic, "riscv,ndev") == [95]
    intc = phandle(tree, "/cpus/cpu@0/interrupt-controller")
    # context 0: hart 0 M-mode external (11); context 1: hart 0 S-mode external (9)
    assert words(tree, plic, "interrupts-extended") == [intc, 11, intc, 9]


def test_uart() -> None:
    tree = build()
    plic = phandle(tree, "/soc/plic@c000000")
    assert strings(tree, UART, "compatible") == ["ns16550a"]
    assert u64(words(tree, UART, "reg")[:2]) == UART0_BASE
    assert words(tree, UART, "clock-frequency") == [3_686_400]
    assert words(tree, UART, "interrupts") == [UART0_IRQ] == [10]
    assert words(tree, UART, "interrupt-parent") == [plic]


def test_test_device_and_power_nodes() -> None:
    tree = build()
    test = f"/soc/test@{TEST_BASE:x}"
    assert test == "/soc/test@100000"
    assert strings(tree, test, "compatible") == ["sifive,test1", "sifive,test0", "syscon"]
    assert u64(words(tree, test, "reg")[:2]) == TEST_BASE
    test_ph = phandle(tree, test)
    assert strings(tree, "/poweroff", "compatible") == ["syscon-poweroff"]
    assert words(tree, "/poweroff", "regmap") == [test_ph]
    assert words(tree, "/poweroff", "offset") == [0]
    assert words(tree, "/poweroff", "value") == [0x5555]
    assert strings(tree, "/reboot", "compatible") == ["syscon-reboot"]
    assert words(tree, "/reboot", "regmap") == [test_ph]
    assert words(tree, "/reboot", "offset") == [0]
    assert words(tree, "/reboot", "value") == [0x7777]


def virtio_nodes(tree: Any) -> list[str]:
    return [n.name for n in tree.get_node("/soc").nodes if n.name.startswith("virtio_mmio@")]


def test_virtio_slots() -> None:
    tree = build(virtio_slots=(7, 0, 3))
    plic = phandle(tree, "/soc/plic@c000000")
    assert virtio_nodes(tree) == [
        "virtio_mmio@10001000",
        "virtio_mmio@10004000",
        "virtio_mmio@10008000",
    ]
    for slot in (0, 3, 7):
        path = f"/soc/virtio_mmio@{virtio_slot_base(slot):x}"
        assert strings(tree, path, "compatible") == ["virtio,mmio"]
        reg = words(tree, path, "reg")
        assert (u64(reg[:2]), u64(reg[2:])) == (0x1000_1000 + slot * 0x1000, 0x1000)
        assert words(tree, path, "interrupts") == [1 + slot]
        assert words(tree, path, "interrupt-parent") == [plic]


def test_no_virtio_slots_means_no_virtio_nodes() -> None:
    assert virtio_nodes(build()) == []


def test_two_harts() -> None:
    tree = build(hart_count=2)
    intc0 = phandle(tree, "/cpus/cpu@0/interrupt-controller")
    intc1 = phandle(tree, "/cpus/cpu@1/interrupt-controller")
    assert intc0 != intc1
    assert words(tree, "/cpus/cpu@1", "reg") == [1]
    assert words(tree, "/soc/plic@c000000", "interrupts-extended") == [
        *(intc0, 11, intc0, 9),
        *(intc1, 11, intc1, 9),
    ]
    assert words(tree, "/cpus/cpu-map/cluster0/core1", "cpu") == [phandle(tree, "/cpus/cpu@1")]


def test_phandles_are_unique() -> None:
    tree = build(hart_count=3, virtio_slots=tuple(range(VIRTIO_SLOTS)))
    seen = [
        words(tree, path, "phandle")[0]
        for path, _nodes, props in tree.walk()
        if any(p.name == "phandle" for p in props)
    ]
    assert len(seen) == 3 * 2 + 2  # cpu + intc per hart, plic, test
    assert len(set(seen)) == len(seen)
    assert 0 not in seen


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"bootargs": "console=ttyS0\nroot=/dev/vda"}, "printable ASCII"),
        ({"bootargs": "caf\u00e9"}, "printable ASCII"),
        ({"virtio_slots": (8,)}, "virtio slot 8 out of range"),
        ({"virtio_slots": (1, 1)}, "twice"),
        ({"initrd": (0x1000, 0x2000)}, "outside RAM"),
        ({"initrd": (0x8100_0000, 0x8100_0000)}, "empty or outside RAM"),
        ({"initrd": (0x87F0_0000, 0x8810_0000)}, "outside RAM"),
        ({"hart_count": 0}, "hart count"),
        ({"ram_size": 0}, "not a valid memory region"),
        ({"isa": ""}, "ISA string is empty"),
    ],
)
def test_bad_specs_are_config_errors(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(**kw)


# CI installs dtc (.ci/run); only a developer machine without it may skip.
@pytest.mark.skipif(
    shutil.which("dtc") is None and not os.environ.get("CI"),
    reason="dtc (device-tree-compiler) not installed: apt-get install device-tree-compiler",
)
def test_dtc_decompiles_without_warnings(tmp_path: Path) -> None:
    spec = DeviceTreeSpec(
        ram_base=RAM_BASE,
        ram_size=256 * MIB,
        bootargs="console=ttyS0 earlycon=sbi",
        initrd=(0x8F00_0000, 0x8F80_0000),
        virtio_slots=(0, 1, 2),
        hart_count=2,
    )
    dtb = tmp_path / "virt.dtb"
    dtb.write_bytes(build_device_tree(spec))
    proc = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", str(dtb)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no errors and no warnings
    assert 'stdout-path = "/soc/serial@10000000";' in proc.stdout
    assert "linux,initrd-start = <0x00 0x8f000000>;" in proc.stdout
    assert "virtio_mmio@10003000" in proc.stdout
