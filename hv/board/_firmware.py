"""The hypervisor as the guest's M-mode firmware: what the SBI and the vCPU's exception path
ask of the board (``SbiPlatform`` for ``hv.riscv._sbi``, ``Firmware`` for the vCPU), one per
hart.

It owns no state: console bytes go to ``ConsoleIo``, timers and IPIs to the harts'
``HartInterrupts``, and shutdown, reboot, the harts' states (HSM) and fences to the board
(the machine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hv._status import StopKind
from hv.board._console_io import ConsoleIo
from hv.board._interrupts import HartInterrupts
from hv.hw import Clock, GuestMemory
from hv.riscv import ResetKind, Sbi


class Board(Protocol):
    """The machine, as the firmware sees it: power, and the harts (``hv.riscv._sbi``'s
    bit sets of hart ids)."""

    def stop(self, kind: StopKind, reason: str) -> None: ...

    def request_reboot(self) -> None: ...

    def send_ipi(self, harts: int) -> None: ...

    def flush_tlb(self, harts: int) -> bool: ...

    def fence_i(self, harts: int) -> bool: ...

    def hart_start(self, hart: int, addr: int, opaque: int) -> int: ...

    def hart_stop(self, hart: int) -> int: ...

    def hart_status(self, hart: int) -> int: ...

    def hart_suspend(self, hart: int, resume: tuple[int, int] | None) -> None: ...

    def valid_entry(self, addr: int) -> bool: ...

    def read_ulong(self, hart: int, vaddr: int) -> int | None: ...


class BoardFirmware:
    def __init__(
        self,
        mem: GuestMemory,
        console: ConsoleIo,
        interrupts: HartInterrupts,
        clock: Clock,
        board: Board,
        hartid: int = 0,
        harts: int = 1,
        shared: Sbi | None = None,
    ) -> None:
        self.mem = mem  # the DBCN console reads and writes guest buffers
        self.console = console
        self.interrupts = interrupts
        self.clock = clock
        self.board = board
        self.hartid = hartid
        self.harts = harts
        # One Sbi per hart (its FWFT state), counting into the first hart's counters.
        self.sbi = Sbi(self) if shared is None else Sbi(self, shared.counters, shared.calls)

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

    def send_ipi(self, harts: int) -> None:
        if harts == 1 << self.hartid:
            self.interrupts.send_ipi()
        else:
            self.board.send_ipi(harts)

    def clear_ipi(self) -> None:
        self.interrupts.clear_ipi()

    def flush_tlb(self, harts: int) -> bool:
        return self.board.flush_tlb(harts)

    def fence_i(self, harts: int) -> bool:
        return self.board.fence_i(harts)

    def reset(self, kind: ResetKind, failure: bool, reason: str) -> None:
        if kind is ResetKind.SHUTDOWN:
            self.board.stop(StopKind.FAILURE if failure else StopKind.POWEROFF, reason)
        else:
            self.board.request_reboot()

    def hart_start(self, hart: int, addr: int, opaque: int) -> int:
        return self.board.hart_start(hart, addr, opaque)

    def hart_stop(self) -> int:
        return self.board.hart_stop(self.hartid)

    def hart_status(self, hart: int) -> int:
        return self.board.hart_status(hart)

    def hart_suspend(self, resume: tuple[int, int] | None) -> None:
        self.board.hart_suspend(self.hartid, resume)

    def valid_entry(self, addr: int) -> bool:
        return self.board.valid_entry(addr)

    def read_ulong(self, vaddr: int) -> int | None:
        return self.board.read_ulong(self.hartid, vaddr)
