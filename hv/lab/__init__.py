"""Labs: switches and VMs described in a TOML file (``_spec``) and run together (``_runner``):
what ``hv up`` runs, callable from trio as ``run_lab(load_lab(path))``."""

from hv.lab._api import Lab, open_lab
from hv.lab._runner import LabRun, run_lab
from hv.lab._spec import LabSpec, NicSpec, SwitchSpec, VmSpec, load_lab, parse_lab

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
