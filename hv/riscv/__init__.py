"""The RISC-V architecture as the hypervisor sees it, sans-IO: instruction decoding and the
guest page walk (``_traps``), and the SBI, the hypervisor's hypercall layer (``_sbi``).
"""
