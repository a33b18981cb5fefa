"""Labs: switches and VMs described in a TOML file (``_spec``) and run together (``_runner``):
what ``hv up`` runs, callable from trio as ``run_lab(load_lab(path))``; served to other
processes through a control socket (``_control``, its protocol in ``_protocol``).

The names below load on first use, so that a control client (``hv ps``), which imports
``hv.lab._protocol``, does not load the VM machinery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hv.lab._api import Lab, open_lab
    from hv.lab._runner import LabRun, run_lab
    from hv.lab._spec import LabSpec, NicSpec, SwitchSpec, VmSpec, load_lab, parse_lab

_LAZY = {
    "Lab": "hv.lab._api",
    "open_lab": "hv.lab._api",
    "LabRun": "hv.lab._runner",
    "run_lab": "hv.lab._runner",
    "LabSpec": "hv.lab._spec",
    "NicSpec": "hv.lab._spec",
    "SwitchSpec": "hv.lab._spec",
    "VmSpec": "hv.lab._spec",
    "load_lab": "hv.lab._spec",
    "parse_lab": "hv.lab._spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hv.lab' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Lab",
    "LabRun",
    "LabSpec",
    "NicSpec",
    "SwitchSpec",
    "VmSpec",
    "load_lab",
    "open_lab",
    "parse_lab",
    "run_lab",
]
