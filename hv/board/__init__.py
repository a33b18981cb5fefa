"""The hv-virt board: the platform map (``_platform``), guest memory (``_memory``), the MMIO
bus (``_bus``), the device tree (``_fdt``), the kernel loader (``_loader``) and the machine
that wires devices, firmware and the vCPU together (``_machine``).
"""
