"""Declared counters: each device names the counter keys it may use, once, beside its code
(as Firecracker's ``metrics.rs`` declares each device's metrics).

``Counters`` is a ``collections.Counter`` that refuses a key its device did not declare: a
misspelt or new key is a host bug, raised (``HostError``) where it is written, so the VM that
hit it stops naming the device, and the tests that drive each device find it. Reads of any
key give 0, as a ``Counter``'s do; copies (``Counter(c)``) are plain counters.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from hv._errors import HostError

# Every device counts the guest's misuse it caught (``Device.guest_error``).
DEVICE_COUNTERS = frozenset({"guest_errors"})


class Counters(collections.Counter[str]):
    """A device's counters, restricted to ``declared`` keys (plus ``guest_errors``)."""

    def __init__(self, owner: str, declared: Iterable[str]) -> None:
        super().__init__()
        self.owner = owner
        self.declared = frozenset(declared) | DEVICE_COUNTERS

    def __setitem__(self, key: str, value: int) -> None:
        if key not in self.declared:
            raise HostError(f"{self.owner}: counter {key!r} is not declared")
        super().__setitem__(key, value)
