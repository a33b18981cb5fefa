"""The board's vocabulary, below everything that uses it: guest memory and the DMA accessor
(``_memory``), the MMIO bus and IRQ lines (``_bus``), the device protocol (``_device``), the
platform map (``_platform``) and the guest clock (``_clock``). Devices, the RISC-V layer, the
engine and virtio depend on it; the board assembles them on top.
"""
