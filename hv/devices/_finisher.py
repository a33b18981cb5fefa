"""The QEMU ``sifive,test1`` finisher: how a guest powers off (with a status) or resets.

A guest writes one 32-bit word at offset 0. Its low 16 bits pick the action and, for a failure,
the high 16 bits are the exit code; ``on_finish`` hears about it and the VM decides what to do.
The device has no readable state: reads return 0. Every other access is counted, never raised.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from hv.hw import TEST_SIZE, Device, Fields, State

# Low-16-bit command codes, as in QEMU's hw/misc/sifive_test.c and Linux's syscon-poweroff DT.
FINISHER_FAIL = 0x3333
FINISHER_PASS = 0x5555
FINISHER_RESET = 0x7777


class FinishKind(enum.Enum):
    POWEROFF_PASS = enum.auto()
    POWEROFF_FAIL = enum.auto()
    RESET = enum.auto()


_COMMANDS = {
    FINISHER_PASS: FinishKind.POWEROFF_PASS,
    FINISHER_FAIL: FinishKind.POWEROFF_FAIL,
    FINISHER_RESET: FinishKind.RESET,
}


class Finisher(Device):
    """The finisher; calls ``on_finish(kind, code)`` for each valid command.

    ``code`` is the guest's exit status for ``POWEROFF_FAIL`` (the value's high 16 bits, which a
    guest may leave at 0) and 0 otherwise. Its device name stays ``test`` (the counters read
    ``test.poweroff_pass`` ...), the name QEMU's board gives it.
    """

    mmio_size = TEST_SIZE
    COUNTERS = frozenset(
        {
            "poweroff_pass",  # the commands, by FinishKind
            "poweroff_fail",
            "reset",
            "bad_command",  # a word whose low 16 bits are no command
            "bad_read",  # any read (the device has nothing to read)
            "bad_write",  # not a 32-bit write at offset 0
        }
    )

    def __init__(self, on_finish: Callable[[FinishKind, int], None]) -> None:
        super().__init__("test")
        self._on_finish = on_finish

    def reset(self) -> None:
        pass  # no state: each write acts at once

    def save_state(self) -> State:
        return {}  # no state: each write acts at once

    def load_state(self, st: Fields) -> None:
        pass

    def mmio_read(self, offset: int, size: int) -> int:
        self.counters["bad_read"] += 1
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset != 0 or size != 4:
            self.counters["bad_write"] += 1
            return
        value &= 0xFFFF_FFFF
        kind = _COMMANDS.get(value & 0xFFFF)
        if kind is None:
            self.counters["bad_command"] += 1
            return
        self.counters[kind.name.lower()] += 1
        self._on_finish(kind, value >> 16 if kind is FinishKind.POWEROFF_FAIL else 0)
