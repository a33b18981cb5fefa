"""The hypervisor as the guest's M-mode firmware: what the SBI and the vCPU's exception path
ask of the board (``SbiPlatform`` for ``hv.riscv._sbi``, ``Firmware`` for the vCPU).

It owns no state: console bytes go to ``ConsoleIo``, timers and IPIs to ``HartInterrupts``,
and shutdown, reboot and suspend to the board's ``Power`` (the machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hv._status import StopKind
from hv.board._console_io import ConsoleIo
from hv.board._interrupts import HartInterrupts
from hv.hw import Clock, GuestMemory
from hv.riscv import ResetKind, Sbi


class Power(Protocol):
    def stop(self, kind: StopKind, reason: str) -> None: ...

    def request_reboot(self) -> None: ...

    def suspend(self) -> None: ...

    def flush_tlb(self) -> None: ...


class BoardFirmware:
    def __init__(
        self,
        mem: GuestMemory,
        console: ConsoleIo,
        interrupts: HartInterrupts,
        clock: Clock,
        power: Power,
    ) -> None:
        self.mem = mem  # the DBCN console reads and writes guest buffers
        self.console = console
        self.interrupts = interrupts
        self.clock = clock
        self.power = power
        self.sbi = Sbi(self)

    # -- for the vCPU ------------------------------------------------------------------------

    def sbi_call(self, eid: int, fid: int, args: Sequence[int]) -> tuple[int, int] | None:
        return self.sbi.call(eid, fid, args)

    def time_ticks(self) -> int:
        return self.clock.ticks()

    # -- SbiPlatform -----------------------------------------------------------------------

    def console_write(self, data: bytes) -> bool:
        return self.console.write(data)

    def console_read(self, limit: int) -> bytes:
        return self.console.read(limit)

    def set_timer(self, deadline: int) -> None:
        self.interrupts.set_timer(deadline)

    def send_ipi(self) -> None:
        self.interrupts.send_ipi()

    def clear_ipi(self) -> None:
        self.interrupts.clear_ipi()

    def flush_tlb(self) -> None:
        self.power.flush_tlb()

    def reset(self, kind: ResetKind, failure: bool, reason: str) -> None:
        if kind is ResetKind.SHUTDOWN:
            self.power.stop(StopKind.FAILURE if failure else StopKind.POWEROFF, reason)
        else:
            self.power.request_reboot()

    def hart_suspend(self) -> None:
        self.power.suspend()
