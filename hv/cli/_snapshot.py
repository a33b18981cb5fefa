"""``hv snapshot LAB [VM] PATH``: a running lab's snapshot (or one VM's) through its control
socket (the ``snapshot`` op, docs/CONTROL.md); ``hv up --restore PATH`` goes on from it."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hv.cli._control import EXIT_FAILED, ask_lab


def add_parsers(sub: Any) -> None:
    """``hv snapshot`` (``sub``: the subparsers)."""
    p = sub.add_parser(
        "snapshot",
        help="save a running lab (or one of its VMs) to go on from later",
        description=(
            "Write a snapshot of running lab LAB into folder PATH (made if missing): every "
            "VM's harts, devices and RAM, the switches' tables, the cables' frames in flight, "
            "the services' leases and the lab's clock. 'hv up --restore PATH' goes on from "
            "that instant; on virtual time it is the same run as one never snapshotted. With "
            "VM, only that VM, into the file PATH (a folder: VM.hvsnap in it), which "
            "hv.restore(PATH) runs again. The lab holds still while it is written "
            "(docs/SNAPSHOTS.md)."
        ),
    )
    p.add_argument("lab", metavar="LAB")
    p.add_argument("what", nargs="+", metavar="[VM] PATH", help="the folder (or VM and file)")


def snapshot_command(args: argparse.Namespace) -> int:
    from hv._errors import ConfigError

    if len(args.what) > 2:
        raise ConfigError("hv snapshot LAB [VM] PATH: at most a VM and a path")
    vm = args.what[0] if len(args.what) == 2 else None
    path = os.path.abspath(args.what[-1])
    request: dict[str, Any] = {"path": path}
    if vm is not None:
        request["vm"] = vm
    answer = ask_lab(args, "snapshot", request)
    if answer is None:
        return EXIT_FAILED
    size = answer["bytes"]
    when = f" at lab time {answer['lab_ps'] / 1e12:.6f} s" if answer.get("lab_ps") else ""
    print(f"{answer['path']}: {size / 2**20:.1f} MiB{when}, held {answer['paused_ms']:g} ms")
    return 0
