"""Platform devices, sans-IO: the PLIC (``_plic``), the 16550A UART (``_uart``) and the
sifive test finisher (``_finisher``). They see offsets, an IRQ line and callbacks, never the vCPU.
"""
