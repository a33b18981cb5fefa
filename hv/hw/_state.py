"""Saved state: how a part of the machine says what it is, and reads it back from a file.

Every stateful part (a device, a hart, the clock) gives ``save_state() -> State``, a dict of
JSON values (ints, strings, bools, None, lists, dicts) and ``bytes``, and takes it back with
``load_state(Fields)``. A snapshot file is input from anyone (hv.hw._snapfile): ``Fields``
reads one dict of it, checks every value's type and range as it goes, and raises
``SnapshotError`` naming the value (``virtio-net0.queues[1].last_avail: 70000 is out of range
0..65535``). A part never trusts a value it did not check; what it cannot check (guest
bytes: RAM, a frame) is the guest's own business.

``encode``/``decode`` turn a ``State`` into bytes and back: JSON, with ``bytes`` as
``{"$b": base64}``. Not pickle: unpickling a hostile file runs its code.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

from hv._errors import SnapshotError

State = dict[str, Any]

U64 = (1 << 64) - 1
# The most a state section may hold once decoded (RAM and disks are not state sections).
STATE_MAX = 64 << 20
_BYTES_TAG = "$b"


def _default(obj: object) -> object:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {_BYTES_TAG: base64.b64encode(bytes(obj)).decode("ascii")}
    raise TypeError(f"a saved state holds {type(obj).__name__}, which has no encoding")


def encode(state: State) -> bytes:
    """A state as bytes (compact JSON; keys in their insertion order)."""
    return json.dumps(state, default=_default, separators=(",", ":"), allow_nan=False).encode()


def _hook(d: dict[str, Any]) -> Any:
    if len(d) == 1 and _BYTES_TAG in d:
        v = d[_BYTES_TAG]
        if not isinstance(v, str):
            raise SnapshotError("a bytes value is not base64 text")
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise SnapshotError(f"a bytes value is not base64: {e}") from None
    return d


def _reject_constant(name: str) -> Any:
    raise SnapshotError(f"a number is {name}")


def decode(data: bytes, where: str) -> State:
    """Bytes back to a state dict; anything else raises ``SnapshotError`` naming ``where``."""
    if len(data) > STATE_MAX:
        raise SnapshotError(f"{where}: {len(data)} bytes of state is more than {STATE_MAX}")
    try:
        out = json.loads(data, object_hook=_hook, parse_constant=_reject_constant)
    except SnapshotError as e:
        raise SnapshotError(f"{where}: {e}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise SnapshotError(f"{where}: not a saved state ({e.__class__.__name__}: {e})") from None
    if not isinstance(out, dict):
        raise SnapshotError(f"{where}: not a saved state (a {type(out).__name__}, not a table)")
    return out


# The methods below shadow these names in the class body.
_Int: TypeAlias = int
_Str: TypeAlias = str
_Bytes: TypeAlias = bytes
_Bool: TypeAlias = bool
_List: TypeAlias = list
_Float: TypeAlias = float


class Fields:
    """One dict of saved state, read with checks. ``where`` names it in errors."""

    __slots__ = ("_d", "where")

    def __init__(self, d: object, where: _Str) -> None:
        if not isinstance(d, dict):
            raise SnapshotError(f"{where}: expected a table, found {_kind(d)}")
        self._d: Mapping[_Str, Any] = d
        self.where = where

    def fail(self, key: _Str, why: _Str) -> SnapshotError:
        """The error for a bad ``key`` (raise it)."""
        return SnapshotError(f"{self.where}.{key}: {why}")

    def has(self, key: _Str) -> _Bool:
        return key in self._d

    def given(self, key: _Str) -> _Bool:
        """Present and not None."""
        return self._d.get(key) is not None

    def table(self) -> dict[_Str, Any]:
        """The dict itself, for a reader that checks it its own way (a lab's tables)."""
        return dict(self._d)

    def keys(self) -> Iterator[_Str]:
        return iter(self._d)

    def _get(self, key: _Str) -> Any:
        if key not in self._d:
            raise self.fail(key, "missing")
        return self._d[key]

    def int(self, key: _Str, lo: _Int = 0, hi: _Int = U64) -> _Int:
        v = self._get(key)
        if type(v) is not int:
            raise self.fail(key, f"expected an integer, found {_kind(v)}")
        if not lo <= v <= hi:
            raise self.fail(key, f"{v} is out of range {lo}..{hi}")
        return v

    def opt_int(self, key: _Str, lo: _Int = 0, hi: _Int = U64) -> _Int | None:
        return None if self._d.get(key) is None else self.int(key, lo, hi)

    def float(self, key: _Str) -> _Float:
        v = self._get(key)
        if type(v) not in (int, float) or v != v or v in (math.inf, -math.inf):
            raise self.fail(key, f"expected a number, found {_kind(v)}")
        return _Float(v)

    def bool(self, key: _Str) -> _Bool:
        v = self._get(key)
        if type(v) is not bool:
            raise self.fail(key, f"expected true or false, found {_kind(v)}")
        return v

    def str(self, key: _Str, max_len: _Int = 4096) -> _Str:
        v = self._get(key)
        if not isinstance(v, str):
            raise self.fail(key, f"expected text, found {_kind(v)}")
        if len(v) > max_len:
            raise self.fail(key, f"{len(v)} characters is more than {max_len}")
        return v

    def choice(
        self, key: _Str, allowed: Iterator[_Str] | tuple[_Str, ...] | frozenset[_Str]
    ) -> _Str:
        v = self.str(key)
        options = tuple(allowed)
        if v not in options:
            raise self.fail(key, f"{v!r} is not one of {', '.join(options)}")
        return v

    def bytes(self, key: _Str, max_len: _Int = STATE_MAX, length: _Int | None = None) -> _Bytes:
        v = self._get(key)
        if not isinstance(v, bytes):
            raise self.fail(key, f"expected bytes, found {_kind(v)}")
        if length is not None and len(v) != length:
            raise self.fail(key, f"{len(v)} bytes, expected {length}")
        if len(v) > max_len:
            raise self.fail(key, f"{len(v)} bytes is more than {max_len}")
        return v

    def opt_bytes(self, key: _Str, max_len: _Int = STATE_MAX) -> _Bytes | None:
        return None if self._d.get(key) is None else self.bytes(key, max_len)

    def list(self, key: _Str, max_len: _Int) -> _List[Any]:
        v = self._get(key)
        if not isinstance(v, list):
            raise self.fail(key, f"expected a list, found {_kind(v)}")
        if len(v) > max_len:
            raise self.fail(key, f"{len(v)} entries is more than {max_len}")
        return v

    def ints(
        self, key: _Str, max_len: _Int, lo: _Int = 0, hi: _Int = U64, length: _Int | None = None
    ) -> _List[_Int]:
        v = self.list(key, max_len)
        if length is not None and len(v) != length:
            raise self.fail(key, f"{len(v)} entries, expected {length}")
        for i, x in enumerate(v):
            if type(x) is not int or not lo <= x <= hi:
                raise self.fail(f"{key}[{i}]", f"{x!r} is not an integer in {lo}..{hi}")
        return v

    def sub(self, key: _Str) -> Fields:
        return Fields(self._get(key), f"{self.where}.{key}")

    def subs(self, key: _Str, max_len: _Int, length: _Int | None = None) -> _List[Fields]:
        v = self.list(key, max_len)
        if length is not None and len(v) != length:
            raise self.fail(key, f"{len(v)} entries, expected {length}")
        return [Fields(x, f"{self.where}.{key}[{i}]") for i, x in enumerate(v)]

    def check(self, ok: _Bool, key: _Str, why: _Str) -> None:
        """Raise the error for ``key`` unless ``ok`` (a rule between values)."""
        if not ok:
            raise self.fail(key, why)


def _kind(v: object) -> str:
    if v is None:
        return "nothing"
    names = {bool: "true/false", int: "an integer", str: "text", list: "a list", dict: "a table"}
    return names.get(type(v), type(v).__name__)


# Their names on hv.hw's face.
encode_state = encode
decode_state = decode
