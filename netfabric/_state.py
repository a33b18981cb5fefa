"""What the fabric's saved state is read through (a snapshot of a lab: hv.lab).

netfabric imports nothing of hv, so a fabric object's ``load_state`` takes any reader with
this shape; hv passes its ``hv.hw.Fields``, which checks each value's type and range as it
is read and raises hv's ``SnapshotError`` naming it. ``save_state`` returns a dict of JSON
values and ``bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeAlias

U64 = (1 << 64) - 1


# The methods below shadow these names in the class body.
_Int: TypeAlias = int
_Str: TypeAlias = str
_Bytes: TypeAlias = bytes
_Bool: TypeAlias = bool
_List: TypeAlias = list
_Float: TypeAlias = float


class StateReader(Protocol):
    where: _Str

    def fail(self, key: _Str, why: _Str) -> Exception: ...

    def has(self, key: _Str) -> _Bool: ...

    def given(self, key: _Str) -> _Bool: ...

    def keys(self) -> Iterator[_Str]: ...

    def int(self, key: _Str, lo: _Int = 0, hi: _Int = U64) -> _Int: ...

    def opt_int(self, key: _Str, lo: _Int = 0, hi: _Int = U64) -> _Int | None: ...

    def float(self, key: _Str) -> _Float: ...

    def bool(self, key: _Str) -> _Bool: ...

    def str(self, key: _Str, max_len: _Int = 4096) -> _Str: ...

    def bytes(self, key: _Str, max_len: _Int = ..., length: _Int | None = None) -> _Bytes: ...

    def opt_bytes(self, key: _Str, max_len: _Int = ...) -> _Bytes | None: ...

    def list(self, key: _Str, max_len: _Int) -> _List[Any]: ...

    def ints(
        self, key: _Str, max_len: _Int, lo: _Int = 0, hi: _Int = U64, length: _Int | None = None
    ) -> _List[_Int]: ...

    def sub(self, key: _Str) -> StateReader: ...

    def subs(
        self, key: _Str, max_len: _Int, length: _Int | None = None
    ) -> Sequence[StateReader]: ...

    def check(self, ok: _Bool, key: _Str, why: _Str) -> None: ...
