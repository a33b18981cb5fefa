"""The guest's flattened device tree (DTB), shaped like QEMU's riscv64 ``virt`` board.

Linux, U-Boot's S-mode build and RTOSes built for ``virt`` discover the machine from this tree:
memory, harts, the PLIC, the 16550A UART, the test/finisher device and the virtio-mmio slots
that hold a device. Addresses and interrupt numbers come from :mod:`hv.hw._platform`, so the tree
and the bus agree by construction.

The blob is encoded by the ``fdt`` package from PyPI. It has no type hints, so every use of it
stays inside this module behind small typed helpers.

Phandles: for hart ``n`` the cpu node is ``2n + 1`` and its interrupt controller ``2n + 2``;
the PLIC and the test device follow. The blob's size depends only on which properties exist,
not on their values, so a caller can build it once with placeholder initrd addresses to learn
its size, plan the layout, and build it again with the real ones: both blobs have equal length.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import printable
from typing import Any

import fdt

from hv._errors import ConfigError
from hv.hw import (
    PLIC_BASE,
    PLIC_NUM_SOURCES,
    PLIC_SIZE,
    TEST_BASE,
    TEST_SIZE,
    TIMEBASE_HZ,
    UART0_BASE,
    UART0_IRQ,
    UART0_SIZE,
    VIRTIO_IRQ_BASE,
    VIRTIO_SLOTS,
    VIRTIO_STRIDE,
    virtio_slot_base,
)

# Values the device tree carries that are not addresses (as on QEMU virt).
UART_CLOCK_HZ = 3_686_400  # ns16550a input clock: 115200 baud x 32
FINISHER_PASS = 0x5555  # written to the test device: power off
FINISHER_RESET = 0x7777  # written to the test device: reboot
IRQ_M_EXT = 11  # mcause interrupt number of the machine external interrupt
IRQ_S_EXT = 9  # mcause interrupt number of the supervisor external interrupt

MODEL = "riscv-virtio,hv-virt"
UART_PATH = f"/soc/serial@{UART0_BASE:x}"
DTB_VERSION = 17
MAX_HARTS = 64  # far beyond what a Python vCPU wants; keeps phandles and contexts sane

_U32 = 0xFFFF_FFFF

# An item of the ``fdt`` package's tree (a Node or a Property); the package is untyped.
_Item = Any


@dataclass(frozen=True)
class DeviceTreeSpec:
    """What the device tree describes: one VM's memory, harts, command line and devices."""

    ram_base: int
    ram_size: int
    bootargs: str = ""
    initrd: tuple[int, int] | None = None  # (start, end), physical, end exclusive
    virtio_slots: tuple[int, ...] = ()  # slots (0-based) that hold a device
    isa: str = "rv64imafdc"
    # Unicorn's hart walks Sv39, Sv48 and Sv57 tables; Linux 6.1 probes satp and takes the
    # largest whatever the tree says, so the tree says what the hart really does.
    mmu_type: str = "riscv,sv57"
    timebase_hz: int = TIMEBASE_HZ
    hart_count: int = 1


def build_device_tree(spec: DeviceTreeSpec) -> bytes:
    """Encode ``spec`` as a DTB (version 17) that a ``virt``-board guest understands."""
    _validate(spec)
    cpu_phandle = [2 * h + 1 for h in range(spec.hart_count)]
    intc_phandle = [2 * h + 2 for h in range(spec.hart_count)]
    plic_phandle = 2 * spec.hart_count + 1
    test_phandle = plic_phandle + 1

    root = _node(
        "/",
        _words("#address-cells", 2),
        _words("#size-cells", 2),
        _strings("compatible", "riscv-virtio"),
        _strings("model", MODEL),
        _chosen(spec),
        _node("aliases", _strings("serial0", UART_PATH)),
        _node(
            f"memory@{spec.ram_base:x}",
            _strings("device_type", "memory"),
            _reg(spec.ram_base, spec.ram_size),
        ),
        _cpus(spec, cpu_phandle, intc_phandle),
        _soc(spec, intc_phandle, plic_phandle, test_phandle),
        _node(
            "poweroff",
            _strings("compatible", "syscon-poweroff"),
            _words("regmap", test_phandle),
            _words("offset", 0),
            _words("value", FINISHER_PASS),
        ),
        _node(
            "reboot",
            _strings("compatible", "syscon-reboot"),
            _words("regmap", test_phandle),
            _words("offset", 0),
            _words("value", FINISHER_RESET),
        ),
    )
    # Pass `entries` explicitly: the package's default is a list shared by every FDT object,
    # which parse_dtb appends memory reservations to.
    tree = fdt.FDT(entries=[])
    tree.header.version = DTB_VERSION
    tree.header.boot_cpuid_phys = 0
    tree.root = root
    blob = tree.to_dtb()
    if not isinstance(blob, bytes):  # pragma: no cover - the package always returns bytes
        raise TypeError(f"fdt.to_dtb returned {type(blob).__name__}")
    return blob


def _validate(spec: DeviceTreeSpec) -> None:
    if spec.ram_base < 0 or spec.ram_size <= 0 or spec.ram_base + spec.ram_size > 1 << 64:
        raise ConfigError(
            f"RAM {spec.ram_size:#x} bytes at {spec.ram_base:#x} is not a valid memory region"
        )
    if not 1 <= spec.hart_count <= MAX_HARTS:
        raise ConfigError(f"hart count {spec.hart_count} must be between 1 and {MAX_HARTS}")
    if not 0 < spec.timebase_hz <= _U32:
        raise ConfigError(f"timebase frequency {spec.timebase_hz} Hz does not fit in 32 bits")
    _check_text("kernel command line (bootargs)", spec.bootargs, allow_empty=True)
    _check_text("ISA string", spec.isa, allow_empty=False)
    _check_text("MMU type", spec.mmu_type, allow_empty=False)
    if len(set(spec.virtio_slots)) != len(spec.virtio_slots):
        raise ConfigError(f"virtio slots {list(spec.virtio_slots)} list a slot twice")
    for slot in spec.virtio_slots:
        if not 0 <= slot < VIRTIO_SLOTS:
            raise ConfigError(f"virtio slot {slot} out of range 0..{VIRTIO_SLOTS - 1}")
    if spec.initrd is not None:
        start, end = spec.initrd
        ram_end = spec.ram_base + spec.ram_size
        if not spec.ram_base <= start < end <= ram_end:
            raise ConfigError(
                f"initrd {start:#x}..{end:#x} is empty or outside RAM "
                f"{spec.ram_base:#x}..{ram_end:#x}"
            )


# The longest text property hv writes (bootargs): as U-Boot's and far beyond Linux's riscv
# COMMAND_LINE_SIZE (1024); a longer one is a mistake, and checking it costs time.
TEXT_LIMIT = 64 << 10


def _check_text(what: str, text: str, *, allow_empty: bool) -> None:
    if not text and not allow_empty:
        raise ConfigError(f"{what} is empty")
    if len(text) > TEXT_LIMIT:
        raise ConfigError(f"{what} is {len(text)} characters long; the limit is {TEXT_LIMIT}")
    bad = sorted({c for c in text if c not in printable or c in "\r\n\t\x0b\x0c"})
    if bad:
        raise ConfigError(
            f"{what} {text!r} contains {', '.join(repr(c) for c in bad)}; "
            "use printable ASCII characters only"
        )


def _chosen(spec: DeviceTreeSpec) -> _Item:
    items: list[_Item] = []
    if spec.bootargs:  # the package cannot encode an empty string; Linux treats absent as empty
        items.append(_strings("bootargs", spec.bootargs))
    items.append(_strings("stdout-path", UART_PATH))
    if spec.initrd is not None:
        items.append(_u64("linux,initrd-start", spec.initrd[0]))
        items.append(_u64("linux,initrd-end", spec.initrd[1]))
    return _node("chosen", *items)


def _cpus(spec: DeviceTreeSpec, cpu_phandle: list[int], intc_phandle: list[int]) -> _Item:
    harts = [
        _node(
            f"cpu@{h:x}",
            _strings("device_type", "cpu"),
            _words("reg", h),
            _strings("status", "okay"),
            _strings("compatible", "riscv"),
            _strings("riscv,isa", spec.isa),
            _strings("mmu-type", spec.mmu_type),
            _words("phandle", cpu_phandle[h]),
            _node(
                "interrupt-controller",
                _strings("compatible", "riscv,cpu-intc"),
                _words("#interrupt-cells", 1),
                _words("#address-cells", 0),  # quiets dtc's interrupt_provider check
                _flag("interrupt-controller"),
                _words("phandle", intc_phandle[h]),
            ),
        )
        for h in range(spec.hart_count)
    ]
    cores = [_node(f"core{h}", _words("cpu", cpu_phandle[h])) for h in range(spec.hart_count)]
    return _node(
        "cpus",
        _words("#address-cells", 1),
        _words("#size-cells", 0),
        _words("timebase-frequency", spec.timebase_hz),
        *harts,
        _node("cpu-map", _node("cluster0", *cores)),
    )


def _soc(
    spec: DeviceTreeSpec, intc_phandle: list[int], plic_phandle: int, test_phandle: int
) -> _Item:
    # PLIC context 2h is hart h's M-mode external interrupt, 2h + 1 its S-mode one
    # (hart 0: PLIC_CONTEXT_M and PLIC_CONTEXT_S), in the order of `interrupts-extended`.
    contexts: list[int] = []
    for intc in intc_phandle:
        contexts += [intc, IRQ_M_EXT, intc, IRQ_S_EXT]
    virtio = [
        _node(
            f"virtio_mmio@{virtio_slot_base(slot):x}",
            _strings("compatible", "virtio,mmio"),
            _reg(virtio_slot_base(slot), VIRTIO_STRIDE),
            _words("interrupts", VIRTIO_IRQ_BASE + slot),
            _words("interrupt-parent", plic_phandle),
        )
        for slot in sorted(spec.virtio_slots)
    ]
    return _node(
        "soc",
        _words("#address-cells", 2),
        _words("#size-cells", 2),
        _strings("compatible", "simple-bus"),
        _flag("ranges"),
        _node(
            f"test@{TEST_BASE:x}",
            _strings("compatible", "sifive,test1", "sifive,test0", "syscon"),
            _reg(TEST_BASE, TEST_SIZE),
            _words("phandle", test_phandle),
        ),
        _node(
            f"plic@{PLIC_BASE:x}",
            _strings("compatible", "sifive,plic-1.0.0", "riscv,plic0"),
            _reg(PLIC_BASE, PLIC_SIZE),
            _flag("interrupt-controller"),
            _words("#interrupt-cells", 1),
            _words("#address-cells", 0),
            _words("riscv,ndev", PLIC_NUM_SOURCES - 1),
            _words("interrupts-extended", *contexts),
            _words("phandle", plic_phandle),
        ),
        _node(
            f"serial@{UART0_BASE:x}",
            _strings("compatible", "ns16550a"),
            _reg(UART0_BASE, UART0_SIZE),
            _words("clock-frequency", UART_CLOCK_HZ),
            _words("interrupts", UART0_IRQ),
            _words("interrupt-parent", plic_phandle),
        ),
        *virtio,
    )


# --- typed wrappers around the untyped `fdt` package -------------------------------------------


def _node(name: str, *items: _Item) -> _Item:
    return fdt.Node(name, *items)


def _words(name: str, *values: int) -> _Item:
    for v in values:
        if not 0 <= v <= _U32:
            raise ValueError(f"{name}: {v:#x} does not fit in a 32-bit cell")
    return fdt.PropWords(name, *values)


def _u64(name: str, value: int) -> _Item:
    return _words(name, *_cells64(value))


def _reg(base: int, size: int) -> _Item:
    return _words("reg", *_cells64(base), *_cells64(size))


def _strings(name: str, *values: str) -> _Item:
    return fdt.PropStrings(name, *values)


def _flag(name: str) -> _Item:
    return fdt.Property(name)


def _cells64(value: int) -> tuple[int, int]:
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{value:#x} does not fit in 64 bits")
    return value >> 32, value & _U32
