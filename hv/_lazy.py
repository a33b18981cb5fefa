"""Lazy package faces: a package's ``__init__`` names what other packages use, and each name
loads its private module on first use, so that importing one module of a package (the ``hv``
command's control client, say) does not load the others (the CPU engine, the machine)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def face_attribute(
    package: str, table: Mapping[str, str], namespace: dict[str, Any], name: str
) -> Any:
    """The module ``__getattr__`` of a lazy face: ``name`` from the module ``table`` gives
    for it, kept in the package's ``namespace`` once loaded."""
    module = table.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value
