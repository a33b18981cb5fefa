"""Labs: switches and VMs described in a TOML file (``_spec``) and run together (``_runner``):
what ``hv up`` runs, callable from trio as ``run_lab(load_lab(path))``; served to other
processes through a control socket (``_control``, its protocol in ``_protocol``).

The names below load on first use, so that a control client (``hv ps``), which imports
``hv.lab._protocol``, does not load the VM machinery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hv._lazy import face_attribute

if TYPE_CHECKING:
    from hv.lab._api import Lab, as_spec, open_lab
    from hv.lab._control import ControlServer
    from hv.lab._demo import run_demo
    from hv.lab._hosts import for_host
    from hv.lab._impair import parse_changes
    from hv.lab._logs import Follower, log_names
    from hv.lab._protocol import (
        ENDED_KEEP,
        LOG_ENV,
        ControlError,
        LabPaths,
        LineBuffer,
        LineTooLong,
        already_running,
        ended_lab,
        ended_labs,
        lock_holder,
        private_labs_dir,
        running_labs,
    )
    from hv.lab._runner import LabRun, Output, open_tap, run_lab, services_config
    from hv.lab._shards import Mesh, Shards, assign_shards, launch_argv, mpi_rank, mpi_size
    from hv.lab._snapshot import LabRestore, LabSnapshotInfo
    from hv.lab._spec import (
        LabSpec,
        NicSpec,
        SwitchSpec,
        VmSpec,
        check_captures,
        check_lab_name,
        load_lab,
        parse_lab,
        parse_switch,
        with_clock,
    )
    from hv.lab._stats import cable_counters_text, duration_text, render_snapshot, settings_text
    from hv.lab._view import LiveConsole, live_view, view_mode

_LAZY = {
    "LabSnapshotInfo": "hv.lab._snapshot",
    "LabRestore": "hv.lab._snapshot",
    "Lab": "hv.lab._api",
    "as_spec": "hv.lab._api",
    "open_lab": "hv.lab._api",
    "ControlServer": "hv.lab._control",
    "run_demo": "hv.lab._demo",
    "for_host": "hv.lab._hosts",
    "parse_changes": "hv.lab._impair",
    "Follower": "hv.lab._logs",
    "log_names": "hv.lab._logs",
    "ControlError": "hv.lab._protocol",
    "ENDED_KEEP": "hv.lab._protocol",
    "LOG_ENV": "hv.lab._protocol",
    "LabPaths": "hv.lab._protocol",
    "LineBuffer": "hv.lab._protocol",
    "LineTooLong": "hv.lab._protocol",
    "already_running": "hv.lab._protocol",
    "ended_lab": "hv.lab._protocol",
    "ended_labs": "hv.lab._protocol",
    "lock_holder": "hv.lab._protocol",
    "private_labs_dir": "hv.lab._protocol",
    "running_labs": "hv.lab._protocol",
    "LabRun": "hv.lab._runner",
    "Output": "hv.lab._runner",
    "open_tap": "hv.lab._runner",
    "run_lab": "hv.lab._runner",
    "services_config": "hv.lab._runner",
    "Mesh": "hv.lab._shards",
    "Shards": "hv.lab._shards",
    "assign_shards": "hv.lab._shards",
    "launch_argv": "hv.lab._shards",
    "mpi_rank": "hv.lab._shards",
    "mpi_size": "hv.lab._shards",
    "LabSpec": "hv.lab._spec",
    "NicSpec": "hv.lab._spec",
    "SwitchSpec": "hv.lab._spec",
    "VmSpec": "hv.lab._spec",
    "check_captures": "hv.lab._spec",
    "check_lab_name": "hv.lab._spec",
    "load_lab": "hv.lab._spec",
    "parse_lab": "hv.lab._spec",
    "parse_switch": "hv.lab._spec",
    "with_clock": "hv.lab._spec",
    "cable_counters_text": "hv.lab._stats",
    "duration_text": "hv.lab._stats",
    "render_snapshot": "hv.lab._stats",
    "settings_text": "hv.lab._stats",
    "LiveConsole": "hv.lab._view",
    "live_view": "hv.lab._view",
    "view_mode": "hv.lab._view",
}


def __getattr__(name: str) -> Any:
    return face_attribute(__name__, _LAZY, globals(), name)


__all__ = [
    "ENDED_KEEP",
    "LOG_ENV",
    "ControlError",
    "ControlServer",
    "Follower",
    "Lab",
    "LabPaths",
    "LabRestore",
    "LabRun",
    "LabSnapshotInfo",
    "LabSpec",
    "LineBuffer",
    "LineTooLong",
    "LiveConsole",
    "Mesh",
    "NicSpec",
    "Output",
    "Shards",
    "SwitchSpec",
    "VmSpec",
    "already_running",
    "as_spec",
    "assign_shards",
    "cable_counters_text",
    "check_captures",
    "check_lab_name",
    "duration_text",
    "ended_lab",
    "ended_labs",
    "for_host",
    "launch_argv",
    "live_view",
    "load_lab",
    "lock_holder",
    "log_names",
    "mpi_rank",
    "mpi_size",
    "open_lab",
    "open_tap",
    "parse_changes",
    "parse_lab",
    "parse_switch",
    "private_labs_dir",
    "render_snapshot",
    "run_demo",
    "run_lab",
    "running_labs",
    "services_config",
    "settings_text",
    "view_mode",
    "with_clock",
]
