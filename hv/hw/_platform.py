"""The ``hv-virt`` riscv64 platform: QEMU-virt-shaped memory map and interrupt numbers.

Everything a guest can find at a fixed address lives here, so the device tree, the bus and the
loader agree by construction.
"""

from __future__ import annotations

# Physical memory map (as on QEMU's riscv64 `virt` board).
TEST_BASE = 0x0010_0000  # sifive,test1 finisher: power-off / reboot
TEST_SIZE = 0x1000
PLIC_BASE = 0x0C00_0000
PLIC_SIZE = 0x0060_0000
UART0_BASE = 0x1000_0000
UART0_SIZE = 0x1000  # registers use 8 bytes; the mapping is a page
UART0_IRQ = 10
VIRTIO_BASE = 0x1000_1000
VIRTIO_STRIDE = 0x1000
VIRTIO_SLOTS = 8
VIRTIO_IRQ_BASE = 1  # slot n raises IRQ 1 + n
RAM_BASE = 0x8000_0000
KERNEL_ADDR = 0x8020_0000  # S-mode kernels are entered here (OpenSBI fw_jump convention)

PLIC_NUM_SOURCES = 96  # as on QEMU virt (sources 1..95)
PLIC_CONTEXT_M = 0  # hart 0 M-mode external interrupt (11) -- listed for compatibility only
PLIC_CONTEXT_S = 1  # hart 0 S-mode external interrupt (9) -- the one that raises SEIP
# Hart h's contexts are 2h (M-mode, listed only) and 2h + 1 (S-mode: its SEIP), as on QEMU virt.

# Harts per machine (``smp``): each is an engine of its own over the same RAM and devices.
SMP_MAX = 8

TIMEBASE_HZ = 10_000_000  # `timebase-frequency`, as on QEMU virt

# RAM size limits for `--mem`: Linux needs a few MiB; Unicorn maps RAM as one host buffer.
MEM_MIN = 16 * 1024 * 1024
MEM_MAX = 16 * 1024 * 1024 * 1024
MEM_DEFAULT = 128 * 1024 * 1024


def virtio_slot_base(n: int) -> int:
    """Physical base address of virtio-mmio slot ``n`` (0-based)."""
    if not 0 <= n < VIRTIO_SLOTS:
        raise ValueError(f"virtio slot {n} out of range 0..{VIRTIO_SLOTS - 1}")
    return VIRTIO_BASE + n * VIRTIO_STRIDE


# Scheduling. Instructions per slice: about a millisecond of guest time; short enough for timer
# latency and fairness, long enough that the per-slice cost (tens of microseconds) stays small.
DEFAULT_QUANTUM = 2_000_000
QUANTUM_MIN = 1_000
QUANTUM_MAX = 1_000_000_000
