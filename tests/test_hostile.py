"""Hostile guests and careless users: each case here once broke a rule (issue: eight defects
found by probing main) and must now end in a clear error, a counter or the guest's own fault,
never a host traceback, a hang, a lost byte or a status of 0 for a failure."""

from __future__ import annotations

import trio
from conftest import FINISHER, raw_binary
from rvasm import addi, auipc, bne, csrr, csrw, jal, jalr, li32, sw

from hv import StopKind, Vm, VmConfig, run_vm

T0, T1, T2, T3 = 5, 6, 7, 28
CSR_STVEC, CSR_SCAUSE, CSR_STVAL = 0x105, 0x142, 0x143
UART = 0x1000_0000


async def run_to_end(config: VmConfig, timeout: float = 20) -> tuple[Vm, object]:
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            vm: Vm = await nursery.start(run_vm, config)
            info = await vm.wait()
    return vm, info


def fetch_from_device_kernel() -> bytes:
    """Jumps into the UART's window; the handler checks scause = 1 (instruction access
    fault) and stval = the UART's address, then powers off (pass) or fails with a code."""
    body = [*li32(T0, UART), jalr(0, T0, 0)]
    handler = [
        csrr(T1, CSR_SCAUSE),
        addi(T2, 0, 1),
        *li32(T3, FINISHER),
        bne(T1, T2, 32),  # -> fail code 2
        csrr(T1, CSR_STVAL),
        *li32(T2, UART),
        bne(T1, T2, 28),  # -> fail code 3
        *li32(T2, 0x5555),
        sw(T2, T3, 0),
        *li32(T2, (2 << 16) | 0x3333),
        sw(T2, T3, 0),
        *li32(T2, (3 << 16) | 0x3333),
        sw(T2, T3, 0),
        jal(0, 0),
    ]
    prologue = 3
    return raw_binary(
        [
            auipc(T0, 0),
            addi(T0, T0, 4 * (prologue + len(body))),
            csrw(CSR_STVEC, T0),
            *body,
            *handler,
        ]
    )


async def test_a_fetch_from_a_device_window_is_an_access_fault_for_the_guest() -> None:
    vm, info = await run_to_end(VmConfig(kernel=fetch_from_device_kernel()))
    assert info.kind is StopKind.POWEROFF, info  # the guest's handler saw cause 1, stval UART
    assert vm.stats["trap_cause_1"] == 1
