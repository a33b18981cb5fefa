"""Declared counters: each platform and virtio device names its counter keys (hv.hw._counters).

The counters object refuses an undeclared key, so every test that drives a device checks the
keys it reaches; this file checks the declarations themselves, and the keys written anywhere
in each device's source (the paths tests may not reach) against them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blockdev import MemoryDisk
from hv import HostError
from hv.devices._finisher import Finisher
from hv.devices._plic import Plic
from hv.devices._uart import Uart16550
from hv.hw._counters import Counters
from hv.hw._device import Device
from hv.virtio._blk import BAD_REASONS, BLK_COUNTERS, VirtioBlk
from hv.virtio._mmio import VirtioMmio
from hv.virtio._net import NET_COUNTERS, VirtioNet

ROOT = Path(__file__).resolve().parent.parent


def test_counters_refuse_an_undeclared_key() -> None:
    c = Counters("dev0", {"hits"})
    c["hits"] += 2
    c["guest_errors"] += 1  # every device's
    assert c["misses"] == 0  # reading any key is a Counter's read
    with pytest.raises(HostError, match=r"dev0: counter 'misses' is not declared"):
        c["misses"] += 1
    assert dict(c) == {"hits": 2, "guest_errors": 1}


def test_a_device_without_a_declaration_keeps_free_counters() -> None:
    class Mine(Device):
        def reset(self) -> None:
            pass

        def mmio_read(self, offset: int, size: int) -> int:
            return 0

        def mmio_write(self, offset: int, size: int, value: int) -> None:
            self.counters["anything"] += 1

    dev = Mine("mine")
    dev.mmio_write(0, 4, 0)
    assert dev.counters["anything"] == 1 and not isinstance(dev.counters, Counters)


def _devices() -> dict[str, tuple[object, frozenset[str]]]:
    blk = VirtioBlk(MemoryDisk(1 << 20), "d")
    return {
        "hv/devices/_plic.py": (Plic(lambda ctx, level: None), Plic.COUNTERS),
        "hv/devices/_uart.py": (Uart16550(lambda level: None), Uart16550.COUNTERS),
        "hv/devices/_finisher.py": (Finisher(lambda kind, code: None), Finisher.COUNTERS),
        "hv/virtio/_mmio.py": (VirtioMmio("vda", blk), VirtioMmio.COUNTERS),
        "hv/virtio/_blk.py": (blk, BLK_COUNTERS),
        "hv/virtio/_net.py": (VirtioNet(bytes.fromhex("525400123456")), NET_COUNTERS),
    }


@pytest.mark.parametrize("path", sorted(_devices()))
def test_each_device_declares_every_key_its_source_writes(path: str) -> None:
    dev, declared = _devices()[path]
    counters = dev.counters  # type: ignore[attr-defined]
    assert isinstance(counters, Counters) and counters.declared >= declared
    source = (ROOT / path).read_text()
    written = set(re.findall(r'(?:counters|\bc)\["([a-z_]+)"\]', source))
    assert written, "the pattern finds the counter writes"
    assert written - counters.declared == set()


def test_every_bad_request_reason_is_declared() -> None:
    source = (ROOT / "hv/virtio/_blk.py").read_text()
    reasons = set(re.findall(r'bad\("([a-z_]+)"', source))
    reasons |= set(re.findall(r'BadRequest\(head, \w+, \w+, "([a-z_]+)"\)', source))
    assert len(reasons) >= 8 and reasons <= BAD_REASONS
